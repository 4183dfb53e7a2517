//! What the daemon costs when nothing happens: the memory of every process
//! of its tree (manager, spawner, the four helpers), idle and with guests
//! connected, and how often each process wakes up while idle.
//!
//! Memory is VmRSS (what `top` shows; shared library pages counted in
//! every process) and Pss from `/proc/<pid>/smaps_rollup` (shared pages
//! split between their users, so the total is what the tree really
//! costs). Wake-ups are the voluntary plus involuntary context switches of
//! all a process's threads (`/proc/<pid>/task/*/status`) over the window,
//! per second: each one is the process being scheduled in, by a timer, an
//! event or a preemption.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use patchpanel_client::{Client, Lifeline};
use patchpanel_tests::procfs::{context_switches, rss_kib};
use patchpanel_tests::world::World;
use patchpanel_tests::{DaemonOptions, ProcessTree};

use crate::interrupt;
use crate::patchpanel::NETNS_POOL_CONFIG;
use crate::world::in_world;

/// One process's figures.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProcessCost {
    pub rss_kib: u64,
    pub pss_kib: u64,
    /// Context switches per second over the window.
    pub wakeups_per_s: f64,
}

/// One state of the daemon (idle, or with guests), by process role.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub guests: usize,
    pub processes: BTreeMap<String, ProcessCost>,
    pub window: Duration,
}

impl Snapshot {
    pub fn total_rss_kib(&self) -> u64 {
        self.processes.values().map(|p| p.rss_kib).sum()
    }

    pub fn total_pss_kib(&self) -> u64 {
        self.processes.values().map(|p| p.pss_kib).sum()
    }

    pub fn total_wakeups_per_s(&self) -> f64 {
        self.processes.values().map(|p| p.wakeups_per_s).sum()
    }
}

/// Every process of the tree, by role (the helpers by executable name).
pub fn roles(tree: &ProcessTree) -> BTreeMap<String, u32> {
    let mut all = BTreeMap::from([
        ("manager".to_string(), tree.manager),
        ("spawner".to_string(), tree.spawner),
    ]);
    for (helper, pid) in &tree.helpers {
        all.insert(helper.to_string(), *pid);
    }
    all
}

/// `Pss:` of `/proc/<pid>/smaps_rollup`, in KiB.
pub fn pss_kib(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/smaps_rollup");
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    parse_pss(&text).with_context(|| format!("{path}: no Pss line"))
}

fn parse_pss(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// Sleeps `window` in short steps (so that a stop signal is seen), then
/// returns each process's memory and context switches per second.
fn sample(tree: &ProcessTree, guests: usize, window: Duration) -> Result<Snapshot> {
    let pids = roles(tree);
    let before: BTreeMap<String, u64> = pids
        .iter()
        .map(|(role, pid)| Ok((role.clone(), context_switches(*pid)?)))
        .collect::<Result<_>>()?;
    let started = Instant::now();
    while started.elapsed() < window {
        interrupt::check()?;
        std::thread::sleep(Duration::from_millis(100).min(window));
    }
    let elapsed = started.elapsed();
    let mut processes = BTreeMap::new();
    for (role, pid) in &pids {
        let after = context_switches(*pid)?;
        processes.insert(
            role.clone(),
            ProcessCost {
                rss_kib: rss_kib(*pid)?,
                pss_kib: pss_kib(*pid)?,
                wakeups_per_s: (after - before[role]) as f64 / elapsed.as_secs_f64(),
            },
        );
    }
    Ok(Snapshot {
        guests,
        processes,
        window: elapsed,
    })
}

/// Idle, then with `guests` namespaces connected (lifelines held), each
/// measured over `window` after `settle`.
pub fn measure(guests: usize, window: Duration, settle: Duration) -> Result<Vec<Snapshot>> {
    let options = DaemonOptions {
        extra_config: NETNS_POOL_CONFIG.into(),
        ..Default::default()
    };
    let (snapshots, problem) =
        in_world(options, |world| measure_in(world, guests, window, settle))?;
    if let Some(problem) = problem {
        eprintln!("bench-idle: the daemon's teardown: {problem}");
    }
    Ok(snapshots)
}

fn measure_in(
    world: &World,
    guests: usize,
    window: Duration,
    settle: Duration,
) -> Result<Vec<Snapshot>> {
    let tree = world.daemon.tree()?;
    std::thread::sleep(settle);
    eprintln!("idle: {} s window...", window.as_secs());
    let idle = sample(&tree, 0, window)?;
    let client = Client::connect_to(world.bus.address()).context("cannot reach the daemon")?;
    let mut held: Vec<Lifeline> = Vec::with_capacity(guests);
    for i in 0..guests {
        interrupt::check()?;
        let (_, lifeline) = client
            .connect_namespace(&patchpanel_proto::ConnectNamespaceRequest {
                pid: -1,
                ..Default::default()
            })
            .with_context(|| format!("ConnectNamespace {}", i + 1))?;
        held.push(lifeline);
    }
    std::thread::sleep(settle);
    eprintln!(
        "{guests} namespaces connected: {} s window...",
        window.as_secs()
    );
    let loaded = sample(&tree, guests, window)?;
    let same = world.daemon.tree()?;
    anyhow::ensure!(
        same == tree,
        "the process tree changed during the measurement"
    );
    drop(held);
    Ok(vec![idle, loaded])
}

/// The table: one row per process, then the totals.
pub fn render(backend: &str, snapshots: &[Snapshot]) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let [idle, loaded] = snapshots else {
        return "no measurement\n".into();
    };
    let _ = writeln!(
        out,
        "{backend}: idle ({:.0} s window) and with {} connected namespaces ({:.0} s window)",
        idle.window.as_secs_f64(),
        loaded.guests,
        loaded.window.as_secs_f64()
    );
    let n = loaded.guests;
    let _ = writeln!(
        out,
        "{:<28} {:>9} {:>9} {:>9} {:>9} {:>10} {:>10}",
        "process",
        "RSS KiB",
        format!("RSS {n}"),
        "PSS KiB",
        format!("PSS {n}"),
        "wakeups/s",
        format!("wakeups {n}")
    );
    for (role, a) in &idle.processes {
        let b = loaded.processes.get(role).cloned().unwrap_or_default();
        let _ = writeln!(
            out,
            "{role:<28} {:>9} {:>9} {:>9} {:>9} {:>10.2} {:>10.2}",
            a.rss_kib, b.rss_kib, a.pss_kib, b.pss_kib, a.wakeups_per_s, b.wakeups_per_s
        );
    }
    let _ = writeln!(
        out,
        "{:<28} {:>9} {:>9} {:>9} {:>9} {:>10.2} {:>10.2}",
        "total",
        idle.total_rss_kib(),
        loaded.total_rss_kib(),
        idle.total_pss_kib(),
        loaded.total_pss_kib(),
        idle.total_wakeups_per_s(),
        loaded.total_wakeups_per_s()
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pss_is_read_from_smaps_rollup() {
        let text = "55d0-7ffd ---p 00000000 00:00 0 [rollup]\nRss:  5120 kB\nPss:  1234 kB\nPss_Anon: 800 kB\n";
        assert_eq!(parse_pss(text), Some(1234));
        assert_eq!(parse_pss("Rss: 1 kB\n"), None);
    }

    #[test]
    fn our_own_pss_is_readable() {
        assert!(pss_kib(std::process::id()).expect("pss") > 0);
    }
}
