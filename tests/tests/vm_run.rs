//! `patchpanel vm run -- COMMAND` run by a local user, as on a generic host:
//! the CLI runs as `pp-client` (a member of the patchpanel group) in the
//! daemon's namespace, against the project's bus policy, with
//! `pp-test-qemu` standing in for qemu (it takes the TAP as qemu does and
//! relays its frames to a guest namespace where a real kernel stack
//! answers). With `vm_owners` naming the user the TAP is the user's own,
//! a stock guest configures itself by DHCP and reaches the internet, and the
//! network is gone when the VM exits, or when the CLI is killed (also across
//! a crash of the daemon); a user not in `vm_owners` never gets a TAP of
//! their own.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::Duration;

use patchpanel_client::Client;
use patchpanel_tests::dhcp::{field, pings, udhcpc, udhcpc_script};
use patchpanel_tests::forger::uid_of;
use patchpanel_tests::policy::{primary_group, GROUP_MEMBER};
use patchpanel_tests::vm::guest_tap;
use patchpanel_tests::world::{kernel_snapshot, World, REMOTE_HOST};
use patchpanel_tests::{bin_path, poll_until, DaemonOptions, Netns};

const DNS: &str = "192.0.2.53";
/// The descriptor number the guest's TAP has in the stand-in.
const GUEST_FD: i32 = 5;

fn config(owners: &str) -> String {
    format!("guest_dhcp = true\nguest_dns = [\"{DNS}\"]\nvm_owners = [{owners}]\n")
}

fn world(owners: &str) -> World {
    World::start_with_policy(DaemonOptions {
        extra_config: config(owners),
        ..Default::default()
    })
    .expect("world")
}

/// A running `patchpanel vm run`: the CLI, its stdin (the stand-in's: closing
/// it ends the VM) and its stderr in a file.
struct VmRun {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<std::process::ChildStdout>,
    stderr: tempfile::NamedTempFile,
}

impl VmRun {
    /// `patchpanel vm run -- argv` as `user` in the daemon's namespace;
    /// `guest` becomes descriptor [`GUEST_FD`] of the stand-in.
    fn start(world: &World, user: &str, argv: &[&str], guest: Option<&File>) -> VmRun {
        let stderr = tempfile::NamedTempFile::new().expect("stderr file");
        let group = primary_group(user).expect("group");
        // /dev/net/tun is mode 0666 on a stock host (udev's rule); in CI's
        // container it is 0600. The CLI gets a private /dev/net with a node
        // as a stock host has it, in a mount namespace of its own.
        let mut cmd = Command::new("unshare");
        cmd.args(["--mount", "--propagation", "private", "--", "sh", "-c"])
            .arg(
                "mount -t tmpfs -o mode=755 pp-test-dev-net /dev/net && \
                 mknod -m 666 /dev/net/tun c 10 200 && exec \"$@\"",
            )
            .args(["sh", "nsenter"])
            .arg(format!("--net={}", world.netns.path().display()))
            .args(["--", "setpriv", "--reuid", user, "--regid", &group])
            .args(["--init-groups", "--"])
            .arg(bin_path("patchpanel").expect("patchpanel"))
            .args(["vm", "run", "--"])
            .args(argv)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("DBUS_SYSTEM_BUS_ADDRESS", world.daemon.bus_address())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr.reopen().expect("stderr"));
        if let Some(g) = guest {
            let fd = g.as_raw_fd();
            // SAFETY: dup2 is async-signal-safe; the new descriptor is
            // inherited (dup2 clears close-on-exec).
            unsafe {
                cmd.pre_exec(move || {
                    if libc::dup2(fd, GUEST_FD) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut child = cmd.spawn().expect("patchpanel vm run");
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        VmRun {
            child,
            stdin,
            stdout,
            stderr,
        }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.stderr.path()).unwrap_or_default()
    }

    /// The stand-in's `ready <tap> <pid>` line.
    fn ready(&mut self) -> (String, i32) {
        let mut line = String::new();
        let _ = self.stdout.read_line(&mut line);
        let mut words = line.split_whitespace();
        match (words.next(), words.next(), words.next()) {
            (Some("ready"), Some(tap), Some(pid)) => (tap.to_string(), pid.parse().expect("pid")),
            _ => panic!(
                "the VM did not start: {line:?}\n{}\n{:?}",
                self.stderr(),
                self.child.try_wait()
            ),
        }
    }

    /// Closes the VM's stdin (it exits) and waits for the CLI.
    fn end(&mut self) -> std::process::ExitStatus {
        drop(self.stdin.take());
        self.wait()
    }

    fn wait(&mut self) -> std::process::ExitStatus {
        poll_until(Duration::from_secs(20), || {
            self.child.try_wait().ok().flatten()
        })
        .unwrap_or_else(|| panic!("vm run did not exit:\n{}", self.stderr()))
    }
}

impl Drop for VmRun {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn link_json(world: &World, tap: &str) -> Option<serde_json::Value> {
    let out = world
        .netns
        .exec(&["ip", "-j", "-d", "link", "show", "dev", tap])
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    Some(v[0].clone())
}

fn assert_kernel_is(world: &World, before: &str) {
    let settled = poll_until(Duration::from_secs(10), || {
        (kernel_snapshot(&world.netns).ok()? == before).then_some(())
    });
    if settled.is_none() {
        let after = kernel_snapshot(&world.netns).expect("snapshot");
        panic!(
            "the kernel differs:\n{}\n{}",
            patchpanel_tests::writer_client::snapshot_diff(before, &after),
            world.daemon.log()
        );
    }
}

fn stand_in() -> String {
    bin_path("pp-test-qemu")
        .expect("pp-test-qemu")
        .display()
        .to_string()
}

#[test]
fn a_users_vm_gets_its_own_tap_configures_itself_and_its_network_goes_with_it() {
    let world = world(&format!("\"{GROUP_MEMBER}\""));
    let before = kernel_snapshot(&world.netns).expect("snapshot");
    let guest = Netns::new().expect("guest namespace");
    let guest_end = guest_tap(&guest, "eth0").expect("guest TAP");
    let qemu = stand_in();
    let guest_fd = GUEST_FD.to_string();
    let mut run = VmRun::start(
        &world,
        GROUP_MEMBER,
        &[
            &qemu,
            "-m",
            "1G",
            "-netdev",
            "tap,id=net0,fd={fd}",
            "-device",
            "virtio-net-pci,netdev=net0",
            "-pp-guest-fd",
            &guest_fd,
            "-pp-exit",
            "7",
        ],
        Some(&guest_end),
    );
    drop(guest_end);
    let (tap, _) = run.ready();

    // The user's own TAP, as the daemon lists it.
    let link = link_json(&world, &tap).expect("the TAP exists");
    // `ip` names the owner when the user database knows it.
    let owner = &link["linkinfo"]["info_data"]["user"];
    let uid = uid_of(GROUP_MEMBER).expect("uid");
    assert!(*owner == GROUP_MEMBER || *owner == uid, "{link}");
    let devices = Client::connect_to(world.daemon.bus_address())
        .expect("client")
        .get_devices()
        .expect("GetDevices");
    let device = devices
        .iter()
        .find(|d| d.ifname == tap)
        .unwrap_or_else(|| panic!("{tap} not in {devices:?}"));
    let allocated = patchpanel_proto::ipv4_from_net_u32(device.ipv4_addr).to_string();

    // The guest configures itself: a stock image's DHCP client.
    guest
        .exec_ok(&["ip", "link", "set", "eth0", "up"])
        .expect("eth0 up");
    let dir = tempfile::tempdir().expect("dir");
    let out = udhcpc(guest.name(), "eth0", &udhcpc_script(dir.path()));
    let lease = out
        .lines()
        .find(|l| l.starts_with("lease bound"))
        .unwrap_or_else(|| panic!("no lease:\n{out}\n{}", world.daemon.log()));
    assert_eq!(field(lease, "ip"), Some(allocated.as_str()), "{lease}");
    assert_eq!(field(lease, "dns"), Some(DNS), "{lease}");
    assert!(field(lease, "router").is_some(), "{lease}");
    assert!(
        pings(guest.name(), REMOTE_HOST),
        "the guest reaches the internet host through NAT"
    );

    // The VM exits: so does vm run, with its status, and the network goes.
    let status = run.end();
    assert_eq!(status.code(), Some(7), "{}", run.stderr());
    assert!(
        run.stderr().contains(&format!("{tap} removed")),
        "{}",
        run.stderr()
    );
    assert_kernel_is(&world, &before);
}

#[test]
fn a_killed_vm_run_takes_its_network_along_even_across_a_daemon_crash() {
    let owners = format!("\"{GROUP_MEMBER}\"");
    let mut world = world(&owners);
    // A plain qemu command line: vm run appends the netdev with its
    // descriptor (the stand-in under qemu's name).
    let dir = tempfile::Builder::new()
        .prefix("ppt-qemu-")
        .tempdir()
        .expect("dir");
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");
    let qemu = dir.path().join("qemu-system-x86_64");
    std::os::unix::fs::symlink(stand_in(), &qemu).expect("symlink");
    let qemu = qemu.display().to_string();
    let mut run = VmRun::start(&world, GROUP_MEMBER, &[&qemu, "-m", "1G"], None);
    let (tap, _) = run.ready();
    assert!(link_json(&world, &tap).is_some());

    // The daemon crashes; its successor re-adopts the VM and watches the
    // same process.
    let successor = world
        .crash_and_succeed(&config(&owners))
        .expect("successor");
    let devices = Client::connect_to(successor.bus_address())
        .expect("client")
        .get_devices()
        .expect("GetDevices");
    assert!(
        devices.iter().any(|d| d.ifname == tap),
        "{tap} re-adopted: {devices:?}\n{}",
        successor.log()
    );

    // kill -9 of vm run: it cannot stop the network itself; the daemon does.
    run.child.kill().expect("kill vm run");
    let _ = run.child.wait();
    let gone = poll_until(Duration::from_secs(10), || {
        link_json(&world, &tap).is_none().then_some(())
    });
    assert!(gone.is_some(), "{tap} still there:\n{}", successor.log());
    let logged = poll_until(Duration::from_secs(5), || {
        successor
            .log()
            .contains("that started it exited")
            .then_some(())
    });
    assert!(logged.is_some(), "{}", successor.log());
    let snapshot = kernel_snapshot(&world.netns).expect("snapshot");
    assert!(!snapshot.contains(&tap), "{snapshot}");
    // The stand-in, now without a TAP, ends when its stdin closes (drop).
}

#[test]
fn a_user_not_in_vm_owners_never_gets_a_tap_of_their_own() {
    let world = world("");
    let before = kernel_snapshot(&world.netns).expect("snapshot");
    let qemu = stand_in();
    let mut run = VmRun::start(
        &world,
        GROUP_MEMBER,
        &[&qemu, "-netdev", "tap,id=net0,fd={fd}"],
        None,
    );
    let status = run.wait();
    assert_eq!(status.code(), Some(1), "{}", run.stderr());
    assert!(run.stderr().contains("is not yours"), "{}", run.stderr());
    // The network vm run asked for went again, and nothing else changed.
    assert_kernel_is(&world, &before);
}
