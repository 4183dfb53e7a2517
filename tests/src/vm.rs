//! Fake guests for end-to-end tests, each with a real kernel network stack.
//!
//! * [`FakeVm`]: a guest namespace with a TAP `eth<N>` whose frames are
//!   relayed to and from the persistent TAP patchpanel made (the
//!   `pp-test-vm` binary does what crosvm's virtio-net would).
//! * [`FakeContainer`]: a process in its own network namespace, standing
//!   in for the ARC container whose pid `ArcStartup` receives.
//!
//! Both remove what they made on drop (processes killed, namespaces
//! deleted), also when the test panics.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::command::{output, run_ok};
use crate::{bin_path, poll_until, Netns};

/// A VM: a guest namespace and the relay between its TAP and patchpanel's.
/// Fields drop in order: the relay is killed before the namespace goes.
#[derive(Debug)]
pub struct FakeVm {
    relay: Child,
    guest: Netns,
    ifname: String,
}

impl FakeVm {
    /// Plugs a guest into `tap` (in `daemon_netns`): the guest side is
    /// `ifname` in a new namespace, down and unaddressed.
    pub fn attach(daemon_netns: &Netns, tap: &str, ifname: &str) -> Result<FakeVm> {
        let guest = Netns::new()?;
        let mut relay = Command::new(bin_path("pp-test-vm")?)
            .arg(daemon_netns.path())
            .arg(tap)
            .arg(guest.path())
            .arg(ifname)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .context("cannot start pp-test-vm")?;
        let mut line = String::new();
        let read = relay
            .stdout
            .take()
            .map(|out| BufReader::new(out).read_line(&mut line));
        if line.trim() != "ready" {
            let _ = relay.kill();
            let status = relay.wait();
            bail!("pp-test-vm {tap} did not get ready ({read:?}, {status:?})");
        }
        Ok(FakeVm {
            relay,
            guest,
            ifname: ifname.to_string(),
        })
    }

    /// Like [`FakeVm::attach`], then gives the guest interface `addr/prefix`,
    /// brings it up and routes everything through `gateway`.
    pub fn boot(
        daemon_netns: &Netns,
        tap: &str,
        ifname: &str,
        addr: &str,
        prefix_len: u8,
        gateway: &str,
    ) -> Result<FakeVm> {
        let vm = FakeVm::attach(daemon_netns, tap, ifname)?;
        vm.configure(addr, prefix_len, gateway)?;
        Ok(vm)
    }

    /// Addresses the guest interface, brings it up, default route via
    /// `gateway`.
    pub fn configure(&self, addr: &str, prefix_len: u8, gateway: &str) -> Result<()> {
        let cidr = format!("{addr}/{prefix_len}");
        self.guest
            .exec_ok(&["ip", "addr", "add", &cidr, "dev", &self.ifname])?;
        self.guest
            .exec_ok(&["ip", "link", "set", &self.ifname, "up"])?;
        self.guest.exec_ok(&[
            "ip",
            "route",
            "add",
            "default",
            "via",
            gateway,
            "dev",
            &self.ifname,
        ])?;
        Ok(())
    }

    /// The guest's namespace.
    pub fn netns(&self) -> &Netns {
        &self.guest
    }

    /// Runs `argv` inside the guest.
    pub fn exec(&self, argv: &[&str]) -> Result<Output> {
        self.guest.exec(argv)
    }

    /// Whether the relay still runs (it exits when patchpanel deletes the
    /// TAP under it).
    pub fn relay_running(&mut self) -> bool {
        matches!(self.relay.try_wait(), Ok(None))
    }
}

impl Drop for FakeVm {
    fn drop(&mut self) {
        let _ = self.relay.kill();
        let _ = self.relay.wait();
    }
}

/// A process alone in a new network namespace (`unshare --net sleep`),
/// as the ARC container's init is. Killed on drop.
#[derive(Debug)]
pub struct FakeContainer {
    child: Child,
}

impl FakeContainer {
    pub fn start() -> Result<FakeContainer> {
        let child = Command::new("unshare")
            .args(["--net", "sleep", "600"])
            .stdin(Stdio::null())
            .spawn()
            .context("cannot start unshare")?;
        let container = FakeContainer { child };
        let pid = container.pid();
        // unshare execs sleep once the namespace is made.
        poll_until(Duration::from_secs(5), || {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
            (comm.trim() == "sleep").then_some(())
        })
        .context("the container process did not start")?;
        Ok(container)
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    fn nsenter(&self, argv: &[&str]) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.args(["-t", &self.pid().to_string(), "-n", "--"])
            .args(argv);
        cmd
    }

    /// Runs `argv` in the container's namespace, whatever its status.
    pub fn exec(&self, argv: &[&str]) -> Result<Output> {
        output(&mut self.nsenter(argv))
    }

    /// Runs `argv` in the container's namespace; fails unless it exits 0.
    pub fn exec_ok(&self, argv: &[&str]) -> Result<String> {
        let out = run_ok(&mut self.nsenter(argv))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// A command to run in the container's namespace (e.g. a server).
    pub fn command(&self, argv: &[&str]) -> Command {
        self.nsenter(argv)
    }

    /// What Android does with an interface patchpanel configured: up, and
    /// (if `gateway` is given) the default route through it.
    pub fn bring_up(&self, ifname: &str, gateway: Option<&str>) -> Result<()> {
        self.exec_ok(&["ip", "link", "set", "lo", "up"])?;
        self.exec_ok(&["ip", "link", "set", ifname, "up"])?;
        if let Some(gw) = gateway {
            self.exec_ok(&[
                "ip", "route", "replace", "default", "via", gw, "dev", ifname,
            ])?;
        }
        Ok(())
    }
}

impl Drop for FakeContainer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TAP `name` in `netns` (without packet information or headers), open:
/// the guest's end of a VM that a stand-in relays to, passed to it as an
/// inherited descriptor. The TAP goes when the last descriptor closes.
pub fn guest_tap(netns: &Netns, name: &str) -> Result<std::fs::File> {
    let path = netns.path();
    let name = name.to_string();
    // setns moves only the calling thread: a thread of its own makes the
    // TAP in the guest's namespace and leaves this one where it was.
    std::thread::spawn(move || -> Result<std::fs::File> {
        use std::os::fd::AsRawFd;
        let ns = std::fs::File::open(&path).context("open the guest namespace")?;
        // SAFETY: setns with a namespace fd valid for the call.
        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            bail!("setns: {}", std::io::Error::last_os_error());
        }
        Ok(patchpanel_rtnl::tun::open_tap(
            &name,
            libc::IFF_TAP | libc::IFF_NO_PI,
        )?)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the thread making the guest TAP panicked"))?
}
