//! A worker thread living inside another network namespace, for the naive
//! peers that run `iptables` once per step.
//!
//! The network namespace is per thread, and a child process inherits the
//! namespace of the thread that spawns it. So the naive peers spawn their
//! `iptables` processes from a thread that entered the namespace once with
//! `setns`, the way a daemon running inside that namespace would: no
//! `nsenter` or `ip netns exec` in front of every process (those would add a
//! process start, and `ip netns exec` a mount namespace, to every number),
//! and the spawn stays `posix_spawn` (no `pre_exec` hook that would force a
//! `fork`). Each job is timed inside the thread, so the channel hop is not
//! in the numbers.

use std::fs::File;
use std::os::fd::AsFd;
use std::path::Path;
use std::sync::mpsc;
use std::thread::JoinHandle;

use anyhow::{anyhow, Context, Result};

use crate::link_probe::setns_net;

type Job = Box<dyn FnOnce() + Send>;

/// A thread inside a network namespace that runs closures on request.
/// Dropping it ends the thread (after its current job), which drops the
/// namespace reference the thread held; drop it before deleting the
/// namespace.
#[derive(Debug)]
pub struct NetnsThread {
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
    netns: String,
}

impl NetnsThread {
    /// A thread inside the namespace bound at `netns` (e.g. `/run/netns/x`).
    pub fn enter(netns: &Path) -> Result<NetnsThread> {
        let path = netns.to_path_buf();
        let (jobs, queue) = mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = mpsc::sync_channel::<std::io::Result<()>>(1);
        let thread = std::thread::Builder::new()
            .name("bench-netns".into())
            .spawn(move || {
                let entered = File::open(&path).and_then(|ns| setns_net(ns.as_fd()));
                let ok = entered.is_ok();
                let _ = ready_tx.send(entered);
                if !ok {
                    return;
                }
                for job in queue {
                    job();
                }
            })
            .context("cannot start a thread")?;
        let worker = NetnsThread {
            jobs: Some(jobs),
            thread: Some(thread),
            netns: netns.display().to_string(),
        };
        ready_rx
            .recv()
            .map_err(|_| anyhow!("the thread entering {} died", worker.netns))?
            .with_context(|| format!("cannot enter {}", worker.netns))?;
        Ok(worker)
    }

    /// Runs `job` on the thread, inside the namespace, and returns its result.
    pub fn run<T, F>(&self, job: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let (done_tx, done_rx) = mpsc::sync_channel(1);
        self.jobs
            .as_ref()
            .ok_or_else(|| anyhow!("the thread in {} has stopped", self.netns))?
            .send(Box::new(move || {
                let _ = done_tx.send(job());
            }))
            .map_err(|_| anyhow!("the thread in {} has stopped", self.netns))?;
        done_rx
            .recv()
            .map_err(|_| anyhow!("a job in {} panicked", self.netns))
    }
}

impl Drop for NetnsThread {
    fn drop(&mut self) {
        // Closing the queue ends the thread's loop.
        drop(self.jobs.take());
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                eprintln!("bench: the thread in {} panicked", self.netns);
            }
        }
    }
}
