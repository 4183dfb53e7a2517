//! A private system-type D-Bus daemon per test.
//!
//! The daemon under test drops to an unprivileged user, so the socket directory
//! is world-traversable (0755). By default the policy lets every user connect,
//! own names and exchange messages: most tests check patchpanel, not a bus
//! policy. [`PrivateBus::start_with_policy`] instead starts a bus with the
//! stock system bus defaults (deny owning and method calls, allow replies and
//! signals) plus `<include>`d policy files, for the tests of
//! `upstart/org.chromium.PatchPanel.conf`. The socket is a path (not an
//! abstract name) so that it is reachable from any network namespace.

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
        Self::start_config(|socket| bus_config(socket, OPEN_POLICY))
    }

    /// Starts a bus whose policy is the stock system bus's defaults plus the
    /// given files, as `<include>`s (what `/etc/dbus-1/system.d/*.conf` are
    /// on a real system bus), and waits until its socket accepts connections.
    pub fn start_with_policy(includes: &[&Path]) -> Result<Self> {
        let mut policy = SYSTEM_DEFAULT_POLICY.to_string();
        for include in includes {
            policy.push_str(&format!("  <include>{}</include>\n", include.display()));
        }
        Self::start_config(|socket| bus_config(socket, &policy))
    }

    /// Like [`PrivateBus::start`], with `rules` (policy elements such as
    /// `<deny send_member="GetDevices"/>`) appended to the allow-everything
    /// policy, so that they override it: for tests of callers the bus
    /// refuses.
    pub fn start_with_rules(rules: &str) -> Result<Self> {
        let policy = OPEN_POLICY.replace("  </policy>\n", &format!("    {rules}\n  </policy>\n"));
        Self::start_config(|socket| bus_config(socket, &policy))
    }

    fn start_config(config_text: impl FnOnce(&Path) -> String) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("ppt-bus-")
            .tempdir()
            .context("cannot create the bus directory")?;
        std::fs::set_permissions(dir.path(), Permissions::from_mode(0o755))
            .context("cannot make the bus directory reachable")?;
        let socket = dir.path().join("system_bus_socket");
        let address = format!("unix:path={}", socket.display());
        let config = dir.path().join("bus.conf");
        std::fs::write(&config, config_text(&socket))
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

/// Everything to everyone.
const OPEN_POLICY: &str = r#"  <policy context="default">
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
  </policy>
"#;

/// The default context of Debian's `/usr/share/dbus-1/system.conf`: anyone
/// may connect and talk to the bus itself; owning names and sending method
/// calls need a hole punched by an included file; requested replies and
/// signals pass.
const SYSTEM_DEFAULT_POLICY: &str = r#"  <policy context="default">
    <allow user="*"/>
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
    <allow send_destination="org.freedesktop.DBus"
           send_interface="org.freedesktop.DBus"/>
    <allow send_destination="org.freedesktop.DBus"
           send_interface="org.freedesktop.DBus.Introspectable"/>
    <allow send_destination="org.freedesktop.DBus"
           send_interface="org.freedesktop.DBus.Properties"/>
    <deny send_destination="org.freedesktop.DBus"
          send_interface="org.freedesktop.DBus"
          send_member="UpdateActivationEnvironment"/>
  </policy>
"#;

/// A system-type bus configuration listening on `socket` with `policy`, with
/// EXTERNAL (uid) authentication.
fn bus_config(socket: &Path, policy: &str) -> String {
    format!(
        r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
{policy}</busconfig>
"#,
        socket = socket.display()
    )
}
