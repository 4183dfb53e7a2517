//! Debian's firewalld (package `firewalld`, installed by `scripts/bootstrap`)
//! inside a test's network namespace, on the test's private bus: it owns
//! `org.fedoraproject.FirewallD1` there (the open policy of
//! [`PrivateBus::start`] lets it) and writes its nf_tables rules in that
//! namespace only.
//!
//! Its configuration is a temporary directory (`--system-config`) holding a
//! `firewalld.conf` that pins what the tests rely on (the nftables backend,
//! the default zone `public`, whose forward chain ends in a reject, and its
//! tables removed at exit), so the host's `/etc/firewalld` is never read or
//! written. `--nofork --nopid`: no pid file, no check for another firewalld
//! (the host may run its own). firewalld also makes `/run/firewalld` for its
//! temporary files: it runs in a mount namespace of its own with a tmpfs on
//! `/run`, so that neither the host nor another test sees it (the writer
//! takes `/run/firewalld` for a sign that the host runs firewalld).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tempfile::TempDir;

use crate::command::output;
use crate::{poll_until, Netns, PrivateBus, Spawned};

/// firewalld's well-known name.
pub const SERVICE: &str = "org.fedoraproject.FirewallD1";
/// Its object and the interface its `Reloaded` comes from.
pub const PATH: &str = "/org/fedoraproject/FirewallD1";
pub const INTERFACE: &str = "org.fedoraproject.FirewallD1";

/// How long firewalld may take to load its configuration and write its
/// rules (a couple of seconds on an idle machine).
const START_TIMEOUT: Duration = Duration::from_secs(60);

const CONFIG: &str = "\
DefaultZone=public
CleanupOnExit=yes
CleanupModulesOnExit=no
Lockdown=no
IPv6_rpfilter=yes
IndividualCalls=no
LogDenied=off
FirewallBackend=nftables
FlushAllOnReload=yes
";

/// A running firewalld; SIGTERM on drop (it then removes its tables), its
/// log printed if the test failed.
#[derive(Debug)]
pub struct Firewalld {
    process: Spawned,
    bus_address: String,
    _dir: TempDir,
}

impl Firewalld {
    /// Starts firewalld in `netns` on `bus` and waits until it answers
    /// `firewall-cmd --state` with "running" (its rules are written).
    pub fn start(netns: &Netns, bus: &PrivateBus) -> Result<Firewalld> {
        let firewalld = Path::new("/usr/sbin/firewalld");
        if !firewalld.exists() {
            bail!("firewalld is not installed (scripts/bootstrap installs it)");
        }
        let dir = tempfile::Builder::new()
            .prefix("ppt-firewalld-")
            .tempdir()
            .context("cannot create firewalld's directory")?;
        let config = dir.path().join("config");
        std::fs::create_dir(&config).context("cannot create firewalld's config dir")?;
        std::fs::write(config.join("firewalld.conf"), CONFIG)
            .context("cannot write firewalld.conf")?;
        let argv: Vec<String> = [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "--",
            "sh",
            "-c",
            "mount -t tmpfs -o mode=0755 firewalld-run /run && exec \"$@\"",
            "sh",
            "env",
            "-i",
            "PATH=/usr/sbin:/usr/bin:/sbin:/bin",
            &format!("DBUS_SYSTEM_BUS_ADDRESS={}", bus.address()),
            "/usr/sbin/firewalld",
            "--nofork",
            "--nopid",
            "--log-target=console",
            "--system-config",
            &config.to_string_lossy(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let process = Spawned::start("firewalld", netns, &argv, dir.path().join("firewalld.log"))?;
        let mut firewalld = Firewalld {
            process,
            bus_address: bus.address().to_string(),
            _dir: dir,
        };
        let mut exited = None;
        let running = poll_until(START_TIMEOUT, || {
            if let Ok(Some(status)) = firewalld.process.try_exit() {
                exited = Some(status);
                return Some(false);
            }
            firewalld
                .firewall_cmd(&["--state"])
                .ok()
                .filter(|o| o.status.success())
                .map(|_| true)
        });
        match (running, exited) {
            (Some(true), _) => Ok(firewalld),
            (_, Some(status)) => bail!("firewalld exited ({status}): {}", firewalld.log()),
            _ => bail!(
                "firewalld was not running within {START_TIMEOUT:?}: {}",
                firewalld.log()
            ),
        }
    }

    /// `firewall-cmd ARGS` against this firewalld (it talks D-Bus only, so
    /// it runs in the test's namespace).
    pub fn firewall_cmd(&self, args: &[&str]) -> Result<std::process::Output> {
        output(
            Command::new("firewall-cmd")
                .args(args)
                .env_clear()
                .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
                .env("DBUS_SYSTEM_BUS_ADDRESS", &self.bus_address),
        )
    }

    /// `firewall-cmd --reload`: firewalld rebuilds its rules from its
    /// configuration and emits `Reloaded`; returns once it has.
    pub fn reload(&self) -> Result<()> {
        let out = self.firewall_cmd(&["--reload"])?;
        if !out.status.success() {
            bail!(
                "firewall-cmd --reload failed ({}): {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// What firewalld printed so far.
    pub fn log(&self) -> String {
        self.process.log()
    }
}
