//! Link deletions off the request path.
//!
//! `RTM_DELLINK` of a TAP, a veth or a bridge blocks its caller for one or
//! more kernel grace periods (15-50 ms each, measured; a bridge the most),
//! and a guest's teardown deletes up to eight links. The checks stay where
//! they were (the link must be patchpanel's, looked up by name, in the
//! writer's thread, so a refusal is still the plan's error); the deletion
//! itself, by interface index, goes to one reaper thread, one link at a
//! time (a single group delete would hold the rtnl lock for all of them at
//! once and stall other requests' link creations as long), and the plan
//! goes on at once. A link waiting for the reaper keeps its name until the
//! kernel drops it: a step that creates a link of that name waits for it
//! first ([`Reaper::wait_for`]), and a creation the kernel refuses with
//! EEXIST is retried once every pending deletion is done
//! ([`Reaper::drain`]): the peer of a deleted veth may be the name a new
//! pair wants in the same container namespace.
//!
//! The thread lives in the writer's own network namespace (the daemon's:
//! only [`Netns::Host`](patchpanel_ipc::datapath::Netns) links are reaped)
//! under the writer's seccomp filter, which it inherits.

use std::collections::BTreeMap;
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use log::{debug, warn};
use patchpanel_rtnl::Rtnl;

/// How long a step waits for a name to be freed, or the writer's exit for
/// the queue to empty. A deletion takes tens of milliseconds.
pub const WAIT: Duration = Duration::from_secs(5);

#[derive(Debug)]
struct Job {
    index: u32,
    name: String,
}

/// Names waiting for the kernel, with how many jobs hold each.
#[derive(Debug, Default)]
struct Pending {
    names: BTreeMap<String, usize>,
    /// A plan runs: the thread starts no deletion until it ends, so that a
    /// request that arrives during a teardown waits for one deletion in
    /// progress at most, not for each of them in turn.
    paused: bool,
}

#[derive(Debug, Default)]
struct Shared {
    pending: Mutex<Pending>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        // A panic in the reaper cannot leave the map half-updated (each
        // update is one statement): take it as it is.
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn done(&self, name: &str) {
        let mut p = self.lock();
        if let Some(n) = p.names.get_mut(name) {
            *n -= 1;
            if *n == 0 {
                p.names.remove(name);
            }
        }
        self.changed.notify_all();
    }

    /// Waits (at most `timeout`) until `pred` holds for the pending set.
    fn wait_until(&self, timeout: Duration, pred: impl Fn(&Pending) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        let mut p = self.lock();
        while !pred(&p) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            p = self
                .changed
                .wait_timeout(p, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        true
    }
}

/// See the module documentation.
#[derive(Debug, Default)]
pub struct Reaper {
    shared: Arc<Shared>,
    queue: Option<Sender<Job>>,
    thread: Option<JoinHandle<()>>,
    /// While a plan runs, its deletions wait here and go to the thread
    /// when it ends ([`Reaper::release`]): a deletion in progress holds the
    /// rtnl lock, which the plan's own later lookups would queue behind.
    held: Vec<Job>,
    holding: bool,
}

impl Reaper {
    /// A plan starts: its deletions are held until [`Reaper::release`],
    /// and the thread starts no other one meanwhile.
    pub fn hold(&mut self) {
        self.holding = true;
        self.pause(true);
    }

    /// A plan ended: its deletions go to the thread, which goes on.
    pub fn release(&mut self, host: Option<&Rtnl>) {
        self.holding = false;
        for job in std::mem::take(&mut self.held) {
            self.send(host, job);
        }
        self.pause(false);
    }

    fn pause(&self, paused: bool) {
        self.shared.lock().paused = paused;
        self.shared.changed.notify_all();
    }

    /// Queues the deletion of link `index` (`name`, already checked to be
    /// patchpanel's). Without a reaper thread (it cannot be started) the
    /// link is deleted when it is released, in line, as before.
    pub fn delete(&mut self, host: &Rtnl, index: u32, name: &str) {
        let job = Job {
            index,
            name: name.to_string(),
        };
        *self
            .shared
            .lock()
            .names
            .entry(job.name.clone())
            .or_default() += 1;
        if self.holding {
            self.held.push(job);
        } else {
            self.send(Some(host), job);
        }
    }

    fn send(&mut self, host: Option<&Rtnl>, job: Job) {
        let job = match self.queue() {
            Some(queue) => match queue.send(job) {
                Ok(()) => return,
                Err(e) => e.0,
            },
            None => job,
        };
        match host.map(|h| h.delete_link_index(job.index)) {
            Some(Ok(_)) => {}
            Some(Err(e)) => warn!("cannot delete {} (#{}): {e}", job.name, job.index),
            None => warn!(
                "cannot delete {} (#{}): no rtnetlink socket",
                job.name, job.index
            ),
        }
        self.shared.done(&job.name);
    }

    /// Whether `name` is waiting for the kernel.
    pub fn is_pending(&self, name: &str) -> bool {
        self.shared.lock().names.contains_key(name)
    }

    /// Waits until no deletion of `name` is pending (sending it on first
    /// if it was held); `false` after [`WAIT`].
    pub fn wait_for(&mut self, host: Option<&Rtnl>, name: &str) -> bool {
        let holding = self.holding;
        self.release(host);
        let done = self
            .shared
            .wait_until(WAIT, |p| !p.names.contains_key(name));
        if holding {
            self.hold();
        }
        done
    }

    /// Waits until every deletion is done (held ones sent first); `false`
    /// after `timeout`.
    pub fn drain(&mut self, host: Option<&Rtnl>, timeout: Duration) -> bool {
        let holding = self.holding;
        self.release(host);
        let done = self.shared.wait_until(timeout, |p| p.names.is_empty());
        if holding {
            self.hold();
        }
        done
    }

    /// Whether any deletion is queued.
    pub fn busy(&self) -> bool {
        !self.shared.lock().names.is_empty()
    }

    /// The queue, starting the thread on first use.
    fn queue(&mut self) -> Option<&Sender<Job>> {
        if self.queue.is_none() {
            let (tx, rx) = channel::<Job>();
            let shared = Arc::clone(&self.shared);
            let spawned = std::thread::Builder::new()
                .name("reaper".into())
                .spawn(move || {
                    let rtnl = match Rtnl::new() {
                        Ok(r) => Some(r),
                        Err(e) => {
                            warn!("link reaper: no rtnetlink socket ({e}); deleting nothing");
                            None
                        }
                    };
                    for job in rx {
                        // Not while a plan runs (bounded: a plan that takes
                        // longer than WAIT does not hold deletions forever).
                        shared.wait_until(WAIT, |p| !p.paused);
                        let started = Instant::now();
                        match rtnl.as_ref().map(|r| r.delete_link_index(job.index)) {
                            Some(Ok(_)) => debug!(
                                "deleted {} (#{}) in {:?}",
                                job.name,
                                job.index,
                                started.elapsed()
                            ),
                            Some(Err(e)) => {
                                warn!("cannot delete {} (#{}): {e}", job.name, job.index)
                            }
                            None => {}
                        }
                        shared.done(&job.name);
                    }
                });
            match spawned {
                Ok(handle) => {
                    self.queue = Some(tx);
                    self.thread = Some(handle);
                }
                Err(e) => warn!("cannot start the link reaper ({e}); deleting links in line"),
            }
        }
        self.queue.as_ref()
    }
}

impl Drop for Reaper {
    /// The writer is exiting: what was queued is deleted first.
    fn drop(&mut self) {
        self.release(None);
        drop(self.queue.take());
        if !self.shared.wait_until(WAIT, |p| p.names.is_empty()) {
            warn!("link reaper: deletions still pending at exit");
            return;
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
