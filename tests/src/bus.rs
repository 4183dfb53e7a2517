//! A private system-type D-Bus daemon per test.
//!
//! The daemon under test drops to an unprivileged user, so the socket directory
//! is world-traversable (0755) and the policy lets every user connect, own names
//! and exchange messages: the tests check patchpanel, not a bus policy. The
//! socket is a path (not an abstract name) so that it is reachable from any
//! network namespace.

use std::fs::{File, Permissions};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tempfile::TempDir;

use crate::wait::poll_until;

/// How long `dbus-daemon` may take to create its socket.
const START_TIMEOUT: Duration = Duration::from_secs(5);

/// A running `dbus-daemon --nofork` with its own socket; killed on drop.
#[derive(Debug)]
pub struct PrivateBus {
    child: Child,
    socket: PathBuf,
    address: String,
    dir: TempDir,
}

impl PrivateBus {
    /// Starts the bus and waits until its socket accepts connections.
    pub fn start() -> Result<Self> {
        Self::start_with_policy("")
    }

    /// Like [`PrivateBus::start`], with `rules` (policy elements such as
    /// `<deny send_member="GetDevices"/>`) appended to the allow-everything
    /// default policy, so that they override it: for tests of callers the
    /// bus refuses.
    pub fn start_with_policy(rules: &str) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("ppt-bus-")
            .tempdir()
            .context("cannot create the bus directory")?;
        std::fs::set_permissions(dir.path(), Permissions::from_mode(0o755))
            .context("cannot make the bus directory reachable")?;
        let socket = dir.path().join("system_bus_socket");
        let address = format!("unix:path={}", socket.display());
        let config = dir.path().join("bus.conf");
        std::fs::write(&config, bus_config(&socket, rules))
            .with_context(|| format!("cannot write {}", config.display()))?;
        let log_path = dir.path().join("bus.log");
        let log = File::create(&log_path)
            .with_context(|| format!("cannot create {}", log_path.display()))?;
        let child = Command::new("dbus-daemon")
            .arg("--nofork")
            .arg("--nopidfile")
            .arg(format!("--config-file={}", config.display()))
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("cannot duplicate the bus log")?)
            .stderr(log)
            .spawn()
            .context("cannot start dbus-daemon (is the dbus-daemon package installed?)")?;
        let mut bus = Self {
            child,
            socket,
            address,
            dir,
        };
        bus.wait_for_socket()?;
        Ok(bus)
    }

    /// The address for `DBUS_SYSTEM_BUS_ADDRESS` and `dbus-send --bus=`.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// The bus socket's path.
    pub fn socket_path(&self) -> &Path {
        &self.socket
    }

    /// What `dbus-daemon` printed so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("bus.log")).unwrap_or_default()
    }

    fn wait_for_socket(&mut self) -> Result<()> {
        let mut exited = None;
        let ready = poll_until(START_TIMEOUT, || {
            if let Ok(Some(status)) = self.child.try_wait() {
                exited = Some(status);
                return Some(false);
            }
            UnixStream::connect(&self.socket).ok().map(|_| true)
        });
        match (ready, exited) {
            (Some(true), _) => Ok(()),
            (_, Some(status)) => bail!("dbus-daemon exited ({status}): {}", self.log()),
            _ => bail!(
                "dbus-daemon did not create {} within {START_TIMEOUT:?}: {}",
                self.socket.display(),
                self.log()
            ),
        }
    }
}

impl Drop for PrivateBus {
    fn drop(&mut self) {
        if let Err(err) = self.child.kill() {
            eprintln!("harness: cannot kill dbus-daemon: {err}");
        }
        if let Err(err) = self.child.wait() {
            eprintln!("harness: cannot reap dbus-daemon: {err}");
        }
    }
}

/// A system-type bus configuration listening on `socket`, allowing everything
/// to everyone but what `rules` deny, with EXTERNAL (uid) authentication.
fn bus_config(socket: &Path, rules: &str) -> String {
    format!(
        r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_type="method_call"/>
    <allow send_type="method_return"/>
    <allow send_type="error"/>
    <allow send_type="signal"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
    {rules}
  </policy>
</busconfig>
"#,
        socket = socket.display(),
    )
}
