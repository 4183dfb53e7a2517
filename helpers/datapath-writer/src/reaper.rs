//! Link deletions off the request path.
//!
//! `RTM_DELLINK` of a TAP, a veth or a bridge blocks its caller for one or
//! more kernel grace periods (15-50 ms each, measured; a bridge the most),
//! and a guest's teardown deletes up to eight links. The checks stay where
//! they were (the link must be patchpanel's, looked up by name, in the
//! writer's thread, so a refusal is still the plan's error); the deletion
//! itself, by interface index, goes to one reaper thread, and the plan
//! goes on at once.
//!
//! The thread deletes what is queued together: the veths and TAPs waiting
//! (at most [`BATCH`]) are put in one device group and deleted with one
//! `RTM_DELLINK` of that group, which the kernel unregisters as one batch:
//! the rtnl lock is held ~1.5 ms for four veths, and the RCU barrier that
//! follows (15-40 ms, lock released) is waited once for all. A bridge is
//! deleted alone: its deletion waits for an RCU barrier while holding the
//! rtnl lock (`br_multicast_dev_del`, ~26 ms each here), so bridges deleted
//! together would stall every other request's link change for all of them
//! at once. Each batch runs on a worker thread of its own (at most
//! [`WORKERS`] at once): the links are unlisted long before the syscall
//! returns from its barrier, and the next batch does not wait for it.
//!
//! A link waiting for the reaper keeps its name until the kernel drops it:
//! a step that creates a link of that name waits for it first
//! ([`Reaper::wait_for`]), and a creation the kernel refuses with EEXIST is
//! retried once every pending deletion is done ([`Reaper::drain`]): the
//! peer of a deleted veth may be the name a new pair wants in the same
//! container namespace.
//!
//! A deletion starts neither while a plan runs nor within [`QUIET`] after
//! one ends: a group delete holds the rtnl lock, and the request a caller
//! sends as soon as a teardown is answered would wait for it.
//!
//! The threads live in the writer's own network namespace (the daemon's:
//! only [`Netns::Host`](patchpanel_ipc::datapath::Netns) links are reaped)
//! under the writer's seccomp filter, which they inherit.

use std::collections::BTreeMap;
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use patchpanel_rtnl::{Link, Rtnl};

/// How long a step waits for a name to be freed, or the writer's exit for
/// the queue to empty. A deletion takes tens of milliseconds.
pub const WAIT: Duration = Duration::from_secs(5);

/// At most this many links are deleted in one group: the kernel holds the
/// rtnl lock while it unlists them, and a plan that arrives meanwhile
/// waits that long.
pub const BATCH: usize = 64;

/// Deletions in flight at once. A deletion's syscall returns only after
/// the kernel's RCU barrier (15-40 ms), long after its links are unlisted
/// (~1.5 ms for veths): a batch queued meanwhile starts on another worker
/// instead of waiting for that barrier (one ConnectNamespace released
/// after another waited for the previous one's).
const WORKERS: usize = 4;

/// How long after a plan the reaper waits before it starts a deletion:
/// a group delete holds the rtnl lock (~1.5 ms for four veths), and a
/// request that comes right after a teardown (the next one a caller
/// sends once the answer is in) would wait for it. Another plan within
/// this time restarts the wait when it ends.
pub const QUIET: Duration = Duration::from_millis(2);

/// The device group a worker gives the links it deletes together ("pprp"
/// plus the worker's slot: two workers never share a group). A link of
/// another program found in it stops the group delete (see
/// [`delete_together`]).
const GROUP: u32 = 0x7070_7270;

#[derive(Debug, Clone)]
struct Job {
    index: u32,
    name: String,
    /// A bridge, deleted on its own (see the module documentation).
    alone: bool,
}

/// Names waiting for the kernel, with how many jobs hold each.
#[derive(Debug, Default)]
struct Pending {
    names: BTreeMap<String, usize>,
    /// A plan runs: the thread starts no deletion until it ends, so that a
    /// request that arrives during a teardown waits for the deletions
    /// already in progress at most, not for each queued one in turn.
    paused: bool,
    /// The worker slots with a deletion in flight.
    busy: [bool; WORKERS],
    /// When the last plan ended.
    plan_ended: Option<Instant>,
}

impl Pending {
    /// Whether a deletion may start now: no plan runs, and none ended
    /// within [`QUIET`].
    fn quiet(&self) -> bool {
        !self.paused && self.plan_ended.is_none_or(|t| t.elapsed() >= QUIET)
    }

    fn free_slot(&self) -> Option<usize> {
        self.busy.iter().position(|b| !b)
    }
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

    /// A free worker slot, now busy (waiting for one up to [`WAIT`]; after
    /// that, slot 0 is shared rather than the deletions held).
    fn take_slot(&self) -> usize {
        if !self.wait_until(WAIT, |p| p.free_slot().is_some()) {
            warn!("link reaper: every worker still busy after {WAIT:?}");
        }
        let mut p = self.lock();
        let slot = p.free_slot().unwrap_or(0);
        p.busy[slot] = true;
        slot
    }

    fn free(&self, slot: usize) {
        if let Some(b) = self.lock().busy.get_mut(slot) {
            *b = false;
        }
        self.changed.notify_all();
    }

    /// Waits (at most `timeout`) until [`Pending::quiet`]: the condition
    /// variable is not told when the quiet time runs out, so this sleeps
    /// for what is left of it.
    fn wait_quiet(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut p = self.lock();
        while !p.quiet() && Instant::now() < deadline {
            let left = match (p.paused, p.plan_ended) {
                (false, Some(t)) => QUIET.saturating_sub(t.elapsed()),
                _ => deadline.saturating_duration_since(Instant::now()),
            };
            p = self
                .changed
                .wait_timeout(p, left.max(Duration::from_micros(100)))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
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
        let mut p = self.shared.lock();
        if p.paused && !paused {
            p.plan_ended = Some(Instant::now());
        }
        p.paused = paused;
        drop(p);
        self.shared.changed.notify_all();
    }

    /// Queues the deletion of `link` (already checked to be patchpanel's).
    /// Without a reaper thread (it cannot be started) the link is deleted
    /// when it is released, in line, as before.
    pub fn delete(&mut self, host: &Rtnl, link: &Link) {
        let job = Job {
            index: link.index,
            name: link.name.clone(),
            alone: link.kind.as_deref() == Some("bridge"),
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
                    while let Ok(first) = rx.recv() {
                        // Not while a plan runs, nor right after one
                        // (bounded: plans that keep coming for longer than
                        // WAIT do not hold deletions forever).
                        shared.wait_quiet(WAIT);
                        let slot = shared.take_slot();
                        let jobs: Vec<Job> = std::iter::once(first)
                            .chain(rx.try_iter().take(BATCH - 1))
                            .collect();
                        let worker = Arc::clone(&shared);
                        let batch = jobs.clone();
                        let spawned = std::thread::Builder::new()
                            .name(format!("reaper-{slot}"))
                            .spawn(move || run_batch(slot, &batch, &worker));
                        if let Err(e) = spawned {
                            debug!("link reaper: no worker thread ({e}); deleting in the reaper");
                            run_batch(slot, &jobs, &shared);
                        }
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

/// One worker's batch, on a socket of its own: the veths and TAPs
/// together, then each bridge alone; then the slot is free again.
fn run_batch(slot: usize, jobs: &[Job], shared: &Shared) {
    match Rtnl::new() {
        Ok(rtnl) => {
            let (alone, together): (Vec<&Job>, Vec<&Job>) = jobs.iter().partition(|j| j.alone);
            delete_together(&rtnl, GROUP + slot as u32, &together);
            for job in &together {
                shared.done(&job.name);
            }
            for job in alone {
                delete_one(&rtnl, job);
                shared.done(&job.name);
            }
        }
        Err(e) => {
            warn!(
                "link reaper: no rtnetlink socket ({e}); {} link(s) not deleted",
                jobs.len()
            );
            for job in jobs {
                shared.done(&job.name);
            }
        }
    }
    shared.free(slot);
}

fn delete_one(rtnl: &Rtnl, job: &Job) {
    let started = Instant::now();
    match rtnl.delete_link_index(job.index) {
        Ok(_) => debug!(
            "deleted {} (#{}) in {:?}",
            job.name,
            job.index,
            started.elapsed()
        ),
        Err(e) => warn!("cannot delete {} (#{}): {e}", job.name, job.index),
    }
}

/// Deletes `jobs` with one group delete, or one by one when there is a
/// single one, when the group cannot be used, or when a link that is not
/// one of them is in the group (another program's: the kernel would
/// delete it too).
fn delete_together(rtnl: &Rtnl, group: u32, jobs: &[&Job]) {
    if jobs.len() < 2 {
        jobs.iter().for_each(|j| delete_one(rtnl, j));
        return;
    }
    let started = Instant::now();
    let mut grouped = Vec::new();
    for job in jobs {
        match rtnl.set_group_index(job.index, group) {
            Ok(true) => grouped.push(job.index),
            // Gone already (its namespace took it, or the kernel was first).
            Ok(false) => {}
            Err(e) => {
                debug!(
                    "cannot put {} (#{}) in the reaper's group ({e}); deleting it alone",
                    job.name, job.index
                );
                delete_one(rtnl, job);
            }
        }
    }
    if grouped.is_empty() {
        return;
    }
    let strangers: Vec<String> = match rtnl.links() {
        Ok(links) => links
            .into_iter()
            .filter(|l| l.group == group && !grouped.contains(&l.index))
            .map(|l| format!("{} (#{})", l.name, l.index))
            .collect(),
        Err(e) => vec![format!("unknown (cannot list links: {e})")],
    };
    if !strangers.is_empty() {
        warn!(
            "device group {group:#x} also holds {}: deleting patchpanel's links one by one instead",
            strangers.join(", ")
        );
    } else {
        match rtnl.delete_link_group(group) {
            Ok(_) => {
                let names: Vec<&str> = jobs
                    .iter()
                    .filter(|j| grouped.contains(&j.index))
                    .map(|j| j.name.as_str())
                    .collect();
                info!(
                    "deleted {} in one group delete ({:?})",
                    names.join(", "),
                    started.elapsed()
                );
                return;
            }
            Err(e) => {
                warn!("cannot delete device group {group:#x} ({e}); deleting its links one by one")
            }
        }
    }
    for job in jobs.iter().filter(|j| grouped.contains(&j.index)) {
        delete_one(rtnl, job);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deletions_wait_for_a_quiet_moment_after_a_plan() {
        let mut p = Pending::default();
        assert!(p.quiet(), "no plan ever ran");
        p.paused = true;
        assert!(!p.quiet(), "a plan runs");
        p.paused = false;
        p.plan_ended = Some(Instant::now());
        assert!(!p.quiet(), "a plan just ended");
        p.plan_ended = Instant::now().checked_sub(QUIET * 2);
        assert!(p.quiet(), "the last plan ended {:?} ago", QUIET * 2);
    }

    #[test]
    fn the_end_of_a_plan_is_when_the_quiet_time_counts_from() {
        let mut reaper = Reaper::default();
        reaper.hold();
        assert!(reaper.shared.lock().plan_ended.is_none());
        reaper.release(None);
        let ended = reaper.shared.lock().plan_ended;
        assert!(ended.is_some_and(|t| t.elapsed() < WAIT), "{ended:?}");
        assert!(!reaper.shared.lock().paused);
    }
}
