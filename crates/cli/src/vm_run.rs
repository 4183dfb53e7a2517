//! `patchpanel vm run -- COMMAND`: a VM's network for as long as the VM
//! runs.
//!
//! The network is started (TerminaVmStartup or PluginVmStartup), the TAP is
//! handed to COMMAND (by name, or as a descriptor this process opens as
//! qemu would), COMMAND runs as a child, and the network is stopped when it
//! exits. For a user in the daemon's `vm_owners` the TAP belongs to that
//! user, and the daemon watches this process: if it is killed before it
//! can stop the network, the daemon stops it.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, ExitStatus};

use anyhow::{Context, Result};
use patchpanel_client::Client;
use signal_hook::consts::SIGCHLD;
use signal_hook::iterator::Signals;

use crate::args::{RunKind, VmRunArgs};
use crate::output::GuestJson;

/// The netdev id given to qemu when the arguments are appended.
const NETDEV_ID: &str = "patchpanel0";

/// What `vm run` got from the daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmNetwork {
    pub tap: String,
    /// The VM's address with its prefix length, e.g. `100.115.92.26/30`.
    pub address: String,
    pub gateway: Option<String>,
}

impl VmNetwork {
    fn from_json(g: &GuestJson) -> Result<VmNetwork> {
        let tap = g
            .tap_device_ifname
            .clone()
            .filter(|t| !t.is_empty())
            .context("the daemon answered without a TAP")?;
        let prefix = g
            .ipv4_subnet
            .as_deref()
            .and_then(|s| s.split_once('/'))
            .map(|(_, p)| p.to_string())
            .unwrap_or_else(|| "32".into());
        Ok(VmNetwork {
            tap,
            address: format!("{}/{prefix}", g.ipv4_address.clone().unwrap_or_default()),
            gateway: g.gateway_ipv4_address.clone(),
        })
    }
}

/// How COMMAND gets the TAP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    pub argv: Vec<String>,
    /// Whether this process opens the TAP and passes the descriptor.
    pub needs_fd: bool,
}

/// COMMAND with `{tap}` and `{fd}` replaced; with neither and a qemu
/// command, the netdev and device arguments appended.
pub fn invocation(command: &[String], tap: &str, fd: i32) -> Invocation {
    let uses_fd = command.iter().any(|a| a.contains("{fd}"));
    let uses_tap = command.iter().any(|a| a.contains("{tap}"));
    let mut argv: Vec<String> = command
        .iter()
        .map(|a| a.replace("{tap}", tap).replace("{fd}", &fd.to_string()))
        .collect();
    let is_qemu = command
        .first()
        .and_then(|p| std::path::Path::new(p).file_name())
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("qemu-system-"));
    let append = !uses_fd && !uses_tap && is_qemu;
    if append {
        argv.extend([
            "-netdev".to_string(),
            format!("tap,id={NETDEV_ID},fd={fd}"),
            "-device".to_string(),
            format!("virtio-net-pci,netdev={NETDEV_ID}"),
        ]);
    }
    Invocation {
        argv,
        needs_fd: uses_fd || append,
    }
}

/// Opens the TAP `name` as qemu does (no packet information, virtio-net
/// headers): allowed to its owner, or with CAP_NET_ADMIN.
fn open_tap(name: &str) -> Result<File> {
    let flags = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR;
    patchpanel_rtnl::tun::open_tap(name, flags).map_err(|e| match e.errno() {
        Some(libc::EACCES) => anyhow::anyhow!(
            "cannot open /dev/net/tun: {e} (it is mode 0666 on most hosts; `ls -l /dev/net/tun`)"
        ),
        Some(libc::EPERM) => anyhow::anyhow!(
            "cannot open TAP {name}: it is not yours (the daemon gives a user's own TAP only \
             to users in its vm_owners; others need CAP_NET_ADMIN)"
        ),
        _ => anyhow::anyhow!("cannot open TAP {name}: {e}"),
    })
}

/// Clears close-on-exec, so that COMMAND inherits `fd`.
fn inheritable(fd: &File) -> Result<()> {
    // SAFETY: F_SETFD on a descriptor we own.
    if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, 0) } != 0 {
        return Err(std::io::Error::last_os_error()).context("cannot pass the TAP on");
    }
    Ok(())
}

/// The network's start, by kind.
fn start(client: &Client, kind: RunKind, id: u32) -> Result<VmNetwork> {
    let json = match kind {
        RunKind::Termina => client
            .terminavm_startup(id)
            .map(|r| GuestJson::termina(id, &r))
            .context("cannot start the Termina VM's network")?,
        RunKind::Plugin => client
            .pluginvm_startup(u64::from(id), 0)
            .map(|r| GuestJson::plugin(u64::from(id), &r))
            .context("cannot start the Plugin VM's network")?,
    };
    VmNetwork::from_json(&json)
}

fn stop(client: &Client, kind: RunKind, id: u32) -> Result<()> {
    match kind {
        RunKind::Termina => client
            .terminavm_shutdown(id)
            .context("cannot stop the Termina VM's network"),
        RunKind::Plugin => client
            .pluginvm_shutdown(u64::from(id))
            .context("cannot stop the Plugin VM's network"),
    }
}

/// What `vm run` ends with: COMMAND's status as an exit code (128 + the
/// signal that killed it).
fn exit_code(status: ExitStatus) -> u8 {
    match (status.code(), status.signal()) {
        (Some(c), _) => u8::try_from(c).unwrap_or(1),
        (None, Some(s)) => u8::try_from(128 + s).unwrap_or(1),
        _ => 1,
    }
}

/// Runs `vm run`; returns the exit code. `signals` has SIGINT, SIGTERM and
/// SIGHUP; they are passed on to COMMAND, which decides when to exit.
pub fn run(client: &Client, args: &VmRunArgs, mut signals: Signals) -> Result<u8> {
    let id = args.id.unwrap_or_else(std::process::id);
    // Before COMMAND starts, so that its exit is never missed.
    signals
        .add_signal(SIGCHLD)
        .context("cannot watch for the VM's exit")?;
    let net = start(client, args.kind, id)?;
    let result = run_with(&net, args, &mut signals);
    let stopped = stop(client, args.kind, id);
    let code = result?;
    stopped?;
    eprintln!("patchpanel: {} removed", net.tap);
    Ok(code)
}

fn run_with(net: &VmNetwork, args: &VmRunArgs, signals: &mut Signals) -> Result<u8> {
    // The descriptor number COMMAND will see is the one this process gets.
    let tap_file = if invocation(&args.command, &net.tap, 0).needs_fd {
        Some(open_tap(&net.tap)?)
    } else {
        None
    };
    let fd = tap_file.as_ref().map_or(-1, AsRawFd::as_raw_fd);
    let inv = invocation(&args.command, &net.tap, fd);
    if let Some(f) = &tap_file {
        inheritable(f)?;
    }
    eprintln!(
        "patchpanel: {} for the VM: address {}{}; running {}",
        net.tap,
        net.address,
        net.gateway
            .as_ref()
            .map(|g| format!(", gateway {g}"))
            .unwrap_or_default(),
        inv.argv.join(" ")
    );
    let mut cmd = Command::new(&inv.argv[0]);
    cmd.args(&inv.argv[1..])
        .env("PATCHPANEL_TAP", &net.tap)
        .env("PATCHPANEL_VM_ADDRESS", &net.address);
    if let Some(g) = &net.gateway {
        cmd.env("PATCHPANEL_VM_GATEWAY", g);
    }
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot run {}", inv.argv[0]))?;
    // COMMAND holds the TAP now; this process does not keep it open.
    drop(tap_file);
    let pid = child.id() as libc::pid_t;
    loop {
        if let Some(status) = child.try_wait().context("waiting for the VM")? {
            return Ok(exit_code(status));
        }
        for signal in signals.wait() {
            if signal != SIGCHLD {
                // SAFETY: kill(2) on our own child, which has not been
                // reaped (try_wait above found it running).
                unsafe { libc::kill(pid, signal) };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn placeholders_are_replaced_and_say_whether_a_descriptor_is_needed() {
        let i = invocation(
            &strings(&["qemu-system-x86_64", "-netdev", "tap,id=n,fd={fd}"]),
            "vmtap3",
            5,
        );
        assert_eq!(i.argv[2], "tap,id=n,fd=5");
        assert!(i.needs_fd);
        assert_eq!(i.argv.len(), 3, "nothing appended");

        let i = invocation(
            &strings(&[
                "qemu-system-x86_64",
                "-netdev",
                "tap,id=n,ifname={tap},script=no",
            ]),
            "vmtap3",
            5,
        );
        assert_eq!(i.argv[2], "tap,id=n,ifname=vmtap3,script=no");
        assert!(!i.needs_fd, "qemu opens it by name");
    }

    #[test]
    fn a_plain_qemu_command_gets_the_netdev_appended() {
        let i = invocation(
            &strings(&["/usr/bin/qemu-system-aarch64", "-m", "1G"]),
            "vmtap0",
            7,
        );
        assert_eq!(
            i.argv[3..],
            strings(&[
                "-netdev",
                "tap,id=patchpanel0,fd=7",
                "-device",
                "virtio-net-pci,netdev=patchpanel0"
            ])
        );
        assert!(i.needs_fd);
        let i = invocation(&strings(&["my-vm", "--net"]), "vmtap0", 7);
        assert_eq!(i.argv, strings(&["my-vm", "--net"]));
        assert!(!i.needs_fd, "another program finds PATCHPANEL_TAP");
    }

    #[test]
    fn the_exit_code_is_the_commands() {
        assert_eq!(exit_code(ExitStatus::from_raw(7 << 8)), 7);
        assert_eq!(exit_code(ExitStatus::from_raw(libc::SIGKILL)), 137);
    }

    #[test]
    fn the_network_is_read_from_the_answer() {
        let g = GuestJson {
            tap_device_ifname: Some("vmtap2".into()),
            ipv4_subnet: Some("100.115.92.24/30".into()),
            ipv4_address: Some("100.115.92.26".into()),
            gateway_ipv4_address: Some("100.115.92.25".into()),
            ..Default::default()
        };
        assert_eq!(
            VmNetwork::from_json(&g).expect("network"),
            VmNetwork {
                tap: "vmtap2".into(),
                address: "100.115.92.26/30".into(),
                gateway: Some("100.115.92.25".into()),
            }
        );
        assert!(VmNetwork::from_json(&GuestJson::default()).is_err());
    }
}
