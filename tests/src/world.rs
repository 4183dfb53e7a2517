//! A small internet for end-to-end tests: the daemon's namespace with an
//! uplink `eth0`, and an "upstream" namespace acting as the router and the
//! remote host.
//!
//! ```text
//!   daemon netns                         upstream netns
//!   eth0 192.0.2.2/24  <---- veth ---->  up0 192.0.2.1/24
//!   default via 192.0.2.1                lo  203.0.113.1/32 (the "internet host")
//! ```
//!
//! The upstream namespace has no route to the guests' 100.115.92.0/23, so a
//! guest reaches 203.0.113.1 only through patchpanel's NAT, and the remote
//! side sees the uplink address 192.0.2.2 as the source.

use std::process::Command;

use anyhow::{Context, Result};

use crate::command::run_ok;
use crate::{Daemon, DaemonOptions, Netns, PrivateBus};

/// The remote host's address, inside the upstream namespace.
pub const REMOTE_HOST: &str = "203.0.113.1";
/// The uplink's address in the daemon's namespace.
pub const UPLINK_ADDR: &str = "192.0.2.2";
/// The upstream router's address.
pub const GATEWAY: &str = "192.0.2.1";

/// Two namespaces wired as above.
#[derive(Debug)]
pub struct Internet {
    pub upstream: Netns,
}

impl Internet {
    /// Builds the upstream namespace and the uplink `eth0` inside `netns`.
    pub fn attach(netns: &Netns) -> Result<Internet> {
        let upstream = Netns::new()?;
        let internet = Internet { upstream };
        internet.plug(netns)?;
        internet.upstream.exec_ok(&[
            "ip",
            "addr",
            "add",
            &format!("{REMOTE_HOST}/32"),
            "dev",
            "lo",
        ])?;
        Ok(internet)
    }

    /// (Re)creates the uplink veth `eth0` <-> `up0` with its addresses and
    /// the default route.
    pub fn plug(&self, netns: &Netns) -> Result<()> {
        run_ok(Command::new("ip").args([
            "-n",
            netns.name(),
            "link",
            "add",
            "eth0",
            "type",
            "veth",
            "peer",
            "name",
            "up0",
            "netns",
            self.upstream.name(),
        ]))
        .context("cannot create the uplink veth")?;
        netns.exec_ok(&[
            "ip",
            "addr",
            "add",
            &format!("{UPLINK_ADDR}/24"),
            "dev",
            "eth0",
        ])?;
        netns.exec_ok(&["ip", "link", "set", "eth0", "up"])?;
        self.upstream.exec_ok(&[
            "ip",
            "addr",
            "replace",
            &format!("{GATEWAY}/24"),
            "dev",
            "up0",
        ])?;
        self.upstream.exec_ok(&["ip", "link", "set", "up0", "up"])?;
        netns.exec_ok(&[
            "ip", "route", "replace", "default", "via", GATEWAY, "dev", "eth0",
        ])?;
        Ok(())
    }

    /// Removes the uplink (its peer goes with it).
    pub fn unplug(&self, netns: &Netns) -> Result<()> {
        netns.exec_ok(&["ip", "link", "del", "eth0"])?;
        Ok(())
    }
}

/// A daemon whose namespace is connected to an [`Internet`]. Fields drop in
/// order: daemon, bus, internet, namespace.
#[derive(Debug)]
pub struct World {
    pub daemon: Daemon,
    pub bus: PrivateBus,
    pub internet: Internet,
    pub netns: Netns,
    /// The bus policy files the bus was started with, if any.
    policy_dir: Option<tempfile::TempDir>,
}

impl World {
    pub fn start() -> Result<World> {
        World::start_with(DaemonOptions::default())
    }

    pub fn start_with(options: DaemonOptions) -> Result<World> {
        let netns = Netns::new()?;
        let internet = Internet::attach(&netns)?;
        let bus = PrivateBus::start()?;
        let mut daemon = Daemon::start_with(&netns, &bus, options)?;
        daemon.wait_ready()?;
        Ok(World {
            daemon,
            bus,
            internet,
            netns,
            policy_dir: None,
        })
    }

    /// A world whose bus runs the stock system bus defaults and the
    /// project's own policy ([`crate::policy`]), as a real host's system
    /// bus would: callers other than root get only their methods.
    pub fn start_with_policy(options: DaemonOptions) -> Result<World> {
        let dir = tempfile::Builder::new()
            .prefix("ppt-policy-")
            .tempdir()
            .context("policy directory")?;
        let policy = crate::policy::write_test_policy(dir.path())?;
        let socket_policy = crate::policy::write_test_socket_service_policy(dir.path())?;
        let netns = Netns::new()?;
        let internet = Internet::attach(&netns)?;
        let bus = PrivateBus::start_with_policy(&[&policy, &socket_policy])?;
        let mut daemon = Daemon::start_with(&netns, &bus, options)?;
        daemon.wait_ready()?;
        Ok(World {
            daemon,
            bus,
            internet,
            netns,
            policy_dir: Some(dir),
        })
    }

    /// Whether the bus runs the project's policy.
    pub fn has_policy(&self) -> bool {
        self.policy_dir.is_some()
    }

    /// kill -9 of the manager (the tree dies with it), then a successor
    /// that reads its state, ready; `extra_config` as the first had it.
    /// The first stays in `daemon` (its files are the successor's).
    pub fn crash_and_succeed(&mut self, extra_config: &str) -> Result<Daemon> {
        self.daemon.signal(libc::SIGKILL)?;
        self.daemon
            .wait_exit(std::time::Duration::from_secs(5))?
            .context("the manager did not die")?;
        std::thread::sleep(std::time::Duration::from_millis(300));
        let mut successor = Daemon::start_with(
            &self.netns,
            &self.bus,
            DaemonOptions {
                successor_of: Some((
                    self.daemon.state_dir().to_path_buf(),
                    self.daemon.netns_prefix().to_string(),
                )),
                extra_config: extra_config.to_string(),
                ..Default::default()
            },
        )?;
        successor.wait_ready()?;
        Ok(successor)
    }

    /// Runs `argv` inside the named namespace `name` (one the daemon made).
    pub fn exec_in(&self, name: &str, argv: &[&str]) -> Result<std::process::Output> {
        crate::command::output(
            Command::new("nsenter")
                .arg(format!("--net=/run/netns/{name}"))
                .arg("--")
                .args(argv),
        )
    }
}

/// [`kernel_snapshot`] once it equals `expected`, or after 10 s the last
/// one taken: the writer deletes links after it answers (its reaper), so a
/// teardown's kernel state settles shortly after the call returns.
pub fn settled_kernel_snapshot(netns: &Netns, expected: &str) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let now = kernel_snapshot(netns).unwrap_or_default();
        if now == expected || std::time::Instant::now() > deadline {
            return now;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// A snapshot of everything patchpanel could touch in a namespace, for
/// before/after comparisons: links, addresses, routes of all tables, ip
/// rules, iptables and ip6tables rules (without counters).
pub fn kernel_snapshot(netns: &Netns) -> Result<String> {
    // An IPv6 address still in duplicate address detection would finish it
    // between two snapshots (and add its local routes): wait for it first.
    let settled = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !netns
        .exec_ok(&["ip", "-6", "-o", "addr", "show", "tentative"])?
        .trim()
        .is_empty()
        && std::time::Instant::now() < settled
    {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let mut out = String::new();
    for argv in [
        &["ip", "-o", "link", "show"][..],
        &["ip", "-o", "addr", "show"],
        &["ip", "route", "show", "table", "all"],
        &["ip", "-6", "route", "show", "table", "all"],
        &["ip", "rule", "show"],
        &["ip", "-6", "rule", "show"],
        &["iptables-save"],
        &["ip6tables-save"],
    ] {
        let text = match argv {
            ["iptables-save"] => netns.firewall_save(false, None)?,
            ["ip6tables-save"] => netns.firewall_save(true, None)?,
            _ => netns.exec_ok(argv)?,
        };
        out.push_str(&format!("## {}\n", argv.join(" ")));
        for line in text.lines() {
            // Comments carry timestamps; counters change with traffic.
            if line.starts_with('#') {
                continue;
            }
            let line = strip_counters(line);
            out.push_str(&line);
            out.push('\n');
        }
    }
    Ok(out)
}

fn strip_counters(line: &str) -> String {
    // ":CHAIN POLICY [p:b]" -> ":CHAIN POLICY"
    if line.starts_with(':') {
        if let Some(i) = line.find(" [") {
            return line[..i].to_string();
        }
    }
    line.to_string()
}
