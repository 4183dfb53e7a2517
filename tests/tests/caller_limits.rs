//! What a local caller may and may not make patchpanel do (security review
//! findings 5, 6, 7, 9, 10, 11, 15), on a bus running the project's own
//! policy, with callers running as the users it names:
//!
//! - ConnectNamespace(pid) connects only a namespace the caller could have
//!   made itself (a user namespace it owns), never one root made for it
//!   (systemd's `PrivateNetwork=` with `User=`), and never a process with
//!   other privileges than the caller's (a setuid-root program);
//! - a lifeline must be able to report its client's exit, and one user
//!   holds at most `namespaces_per_uid` namespaces;
//! - calls that queue up behind a blocking bus round trip are all answered;
//! - port rules are capped, and FORWARDING goes to guests only;
//! - crosvm cannot replace the ARC container root attached;
//! - calls that expect no reply get none, and the state is private.

use std::io::{BufRead, BufReader};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use patchpanel_client::{Client, Error as ClientError};
use patchpanel_proto::modify_port_rule_request::{Operation, Protocol, RuleType};
use patchpanel_proto::{names, ConnectNamespaceRequest, ModifyPortRuleRequest};
use patchpanel_tests::dbus_client::{ERROR_FAILED, ERROR_INVALID_ARGUMENT};
use patchpanel_tests::policy::{command_as, GROUP_MEMBER};
use patchpanel_tests::snapshot::{assert_unchanged, KernelState};
use patchpanel_tests::vm::FakeContainer;
use patchpanel_tests::world::{World, REMOTE_HOST};
use patchpanel_tests::{poll_until, BusClient, DaemonOptions};
use prost::Message as _;

/// Generous: teardown speed is the benchmark's business.
const TEARDOWN_TIMEOUT: Duration = Duration::from_secs(5);

fn policy_world(extra_config: &str) -> World {
    World::start_with_policy(DaemonOptions {
        extra_config: extra_config.into(),
        ..Default::default()
    })
    .expect("world with the project's bus policy")
}

fn client(world: &World) -> Client {
    Client::connect_to(world.bus.address()).expect("client")
}

fn connect_ns_py() -> String {
    concat!(env!("CARGO_MANIFEST_DIR"), "/tools/connect_ns.py").to_string()
}

/// `tests/tools/connect_ns.py ARGS` run as `user`: holds its namespace
/// until killed; killed on drop.
struct Holder(Child);

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Connects a namespace as `user`. `Ok` holds it (with the JSON line the
/// script printed), `Err` is what the script printed on failure.
fn connect_as(
    world: &World,
    user: &str,
    args: &[&str],
) -> Result<(Holder, serde_json::Value), String> {
    let mut child = command_as(user, world.bus.address(), "/usr/bin/python3")
        .expect("test user")
        .arg(connect_ns_py())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("connect_ns.py");
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().expect("stdout"))
        .read_line(&mut line)
        .expect("read");
    if line.trim().is_empty() {
        let out = child.wait_with_output().expect("wait");
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let v = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
    Ok((Holder(child), v))
}

/// A `sleep` made by `argv` (which ends in `sleep 60`), killed on drop;
/// waits until its `Uid:` line reads `uids`.
struct Guest(Child);

impl Guest {
    fn start(argv: &[&str], uids: &str) -> Guest {
        let child = Command::new(argv[0])
            .args(&argv[1..])
            .spawn()
            .expect("guest process");
        let guest = Guest(child);
        let pid = guest.pid();
        poll_until(Duration::from_secs(5), || {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
            let line = status.lines().find(|l| l.starts_with("Uid:"))?;
            let got: Vec<&str> = line.split_whitespace().skip(1).collect();
            (got.join(" ") == uids && status.contains("Name:\tsleep")).then_some(())
        })
        .unwrap_or_else(|| panic!("{argv:?} did not become a sleep with uids {uids}"));
        guest
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn uid_of(user: &str) -> u32 {
    let out = Command::new("id").args(["-u", user]).output().expect("id");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("uid")
}

#[test]
fn a_user_cannot_connect_a_namespace_root_made_for_it() {
    let world = policy_world("");
    let uid = uid_of(GROUP_MEMBER);
    let uids = format!("{uid} {uid} {uid} {uid}");
    // systemd's PrivateNetwork=yes with User=: root makes the namespace,
    // then the service drops to the user.
    let confined = Guest::start(
        &[
            "unshare",
            "--net",
            "setpriv",
            "--reuid",
            GROUP_MEMBER,
            "--regid",
            GROUP_MEMBER,
            "--clear-groups",
            "sleep",
            "60",
        ],
        &uids,
    );
    let err = connect_as(
        &world,
        GROUP_MEMBER,
        &["--pid", &confined.pid().to_string()],
    )
    .err()
    .expect("a root-made namespace was connected for a user");
    assert!(
        err.contains("InvalidArgument") && err.contains("belongs to the host's user namespace"),
        "{err}"
    );
    assert!(client(&world).get_devices().expect("devices").is_empty());
}

#[test]
fn a_process_with_the_callers_uid_and_root_privileges_is_refused() {
    let world = policy_world("");
    let uid = uid_of(GROUP_MEMBER);
    // What a setuid-root program the caller started looks like.
    let setuid_like = Guest::start(
        &[
            "unshare",
            "--net",
            "setpriv",
            "--ruid",
            GROUP_MEMBER,
            "--euid",
            "0",
            "sleep",
            "60",
        ],
        &format!("{uid} 0 0 0"),
    );
    let err = connect_as(
        &world,
        GROUP_MEMBER,
        &["--pid", &setuid_like.pid().to_string()],
    )
    .err()
    .expect("a process with euid 0 was connected for a user");
    assert!(
        err.contains("InvalidArgument") && err.contains("runs with uid 0 as well"),
        "{err}"
    );
    assert!(client(&world).get_devices().expect("devices").is_empty());
}

#[test]
fn a_user_connects_a_namespace_of_its_own_user_namespace() {
    let world = policy_world("");
    let uid = uid_of(GROUP_MEMBER);
    // Rootless: the user makes a user namespace and a network namespace
    // in it, as podman or a sandboxing tool would.
    let rootless = Guest::start(
        &[
            "setpriv",
            "--reuid",
            GROUP_MEMBER,
            "--regid",
            GROUP_MEMBER,
            "--clear-groups",
            "unshare",
            "--user",
            "--map-root-user",
            "--net",
            "sleep",
            "60",
        ],
        &format!("{uid} {uid} {uid} {uid}"),
    );
    let pid = rootless.pid().to_string();
    let (holder, v) = connect_as(&world, GROUP_MEMBER, &["--pid", &pid]).expect("connect");
    let ping = Command::new("nsenter")
        .args(["-t", &pid, "-n", "ping", "-c", "1", "-W", "3", REMOTE_HOST])
        .output()
        .expect("ping");
    assert!(ping.status.success(), "{ping:?}");
    drop(holder);
    let netns = v["netns_name"].as_str().expect("netns_name").to_string();
    let c = client(&world);
    poll_until(TEARDOWN_TIMEOUT, || {
        (c.get_devices().ok()?.is_empty()
            && !std::path::Path::new("/run/netns").join(&netns).exists())
        .then_some(())
    })
    .expect("the namespace went with its lifeline");
}

/// A descriptor of each kind epoll accepts but that never hangs up.
fn never_firing_fds() -> Vec<(&'static str, OwnedFd)> {
    fn own(fd: i32) -> OwnedFd {
        assert!(fd >= 0, "{}", std::io::Error::last_os_error());
        // SAFETY: a descriptor the kernel just gave us.
        unsafe { OwnedFd::from_raw_fd(fd) }
    }
    // SAFETY: an empty signal set for signalfd.
    let mut mask: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `mask` is a valid sigset_t.
    unsafe { libc::sigemptyset(&mut mask) };
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listener");
    // SAFETY: each call returns a new descriptor or -1 and takes no
    // pointers but the valid `mask`.
    let (eventfd, pidfd, timerfd, signalfd, inotify) = unsafe {
        (
            libc::eventfd(0, libc::EFD_CLOEXEC),
            libc::syscall(libc::SYS_pidfd_open, 1, 0) as i32,
            libc::timerfd_create(libc::CLOCK_MONOTONIC, libc::TFD_CLOEXEC),
            libc::signalfd(-1, &mask, libc::SFD_CLOEXEC),
            libc::inotify_init1(libc::IN_CLOEXEC),
        )
    };
    vec![
        ("eventfd", own(eventfd)),
        ("pidfd", own(pidfd)),
        ("timerfd", own(timerfd)),
        ("signalfd", own(signalfd)),
        ("inotify", own(inotify)),
        ("listening socket", OwnedFd::from(listener)),
    ]
}

#[test]
fn lifelines_that_can_never_fire_are_refused() {
    let world = policy_world("");
    let before = KernelState::take_settled(
        &world.netns,
        world.daemon.netns_prefix(),
        Duration::from_secs(10),
    )
    .expect("state");
    let bus = world.daemon.client().expect("client");
    let request = ConnectNamespaceRequest {
        pid: -1,
        ..Default::default()
    }
    .encode_to_vec();
    for (kind, fd) in never_firing_fds() {
        let msg = BusClient::method_call(names::CONNECT_NAMESPACE)
            .expect("call")
            .append2(request.as_slice(), fd);
        match bus.call_message(msg) {
            Err(e) => assert!(
                e.name == ERROR_INVALID_ARGUMENT && e.message.contains("never report"),
                "{kind}: {e:?}"
            ),
            Ok(_) => panic!("a {kind} was accepted as a lifeline"),
        }
    }
    assert!(client(&world).get_devices().expect("devices").is_empty());
    assert_unchanged(
        &before,
        &KernelState::take(&world.netns, world.daemon.netns_prefix()).expect("state"),
        "after refused lifelines",
    );
}

#[test]
fn one_user_holds_at_most_its_quota_of_namespaces() {
    let world = policy_world("namespaces_per_uid = 2\n");
    let first = connect_as(&world, GROUP_MEMBER, &[]).expect("first");
    let second = connect_as(&world, GROUP_MEMBER, &[]).expect("second");
    let err = connect_as(&world, GROUP_MEMBER, &[])
        .err()
        .expect("a third namespace for the same user");
    assert!(
        err.contains("Failed") && err.contains("already holds 2"),
        "{err}"
    );
    // Another user is still served.
    let other = connect_as(&world, "pp-system-proxy", &[]).expect("another user");
    assert_eq!(client(&world).get_devices().expect("devices").len(), 3);
    // The quota counts what the user holds now.
    drop(first);
    let c = client(&world);
    poll_until(TEARDOWN_TIMEOUT, || {
        (c.get_devices().ok()?.len() == 2).then_some(())
    })
    .expect("the first namespace went with its lifeline");
    let again = connect_as(&world, GROUP_MEMBER, &[]).expect("after one was released");
    drop((second, other, again));
}

#[test]
fn calls_queued_behind_a_blocking_uid_lookup_are_all_answered() {
    let world = policy_world("");
    let request = ConnectNamespaceRequest {
        // Valid, but nobody has it: every call asks the bus who the
        // caller is, then fails to pin the pid.
        pid: 99_999_999,
        ..Default::default()
    }
    .encode_to_vec();
    let started = Instant::now();
    let threads: Vec<_> = (0..20)
        .map(|_| {
            let address = world.daemon.bus_address().to_string();
            let request = request.clone();
            std::thread::spawn(move || {
                let bus = BusClient::connect(&address).expect("client");
                let mut lifelines = Vec::new();
                let calls: Vec<_> = (0..5)
                    .map(|_| {
                        let (lifeline, fd) = patchpanel_client::Lifeline::pair().expect("pipe");
                        lifelines.push(lifeline);
                        BusClient::method_call(names::CONNECT_NAMESPACE)
                            .expect("call")
                            .append2(request.as_slice(), fd)
                    })
                    .collect();
                // Sent all at once: the first one's uid lookup blocks the
                // daemon while the others queue up.
                bus.pipeline(calls, 5, Duration::from_secs(20))
            })
        })
        .collect();
    let mut answered = 0;
    for t in threads {
        let results = t
            .join()
            .expect("thread")
            .expect("every call of the client answered");
        for r in results {
            let e = r.expect_err("a pid nobody has was pinned");
            assert_eq!(e.name, ERROR_INVALID_ARGUMENT, "{e:?}");
            assert!(e.message.contains("no process with pid 99999999"), "{e:?}");
            answered += 1;
        }
    }
    assert_eq!(answered, 100);
    eprintln!(
        "100 calls from 20 clients answered in {:?}",
        started.elapsed()
    );
}

fn access(port: u32, ifname: &str) -> ModifyPortRuleRequest {
    ModifyPortRuleRequest {
        op: Operation::Create as i32,
        r#type: RuleType::Access as i32,
        proto: Protocol::Tcp as i32,
        input_ifname: ifname.into(),
        input_dst_port: port,
        ..Default::default()
    }
}

fn forward(dst: &str) -> ModifyPortRuleRequest {
    ModifyPortRuleRequest {
        op: Operation::Create as i32,
        r#type: RuleType::Forwarding as i32,
        proto: Protocol::Tcp as i32,
        input_ifname: "eth0".into(),
        input_dst_port: 8080,
        dst_ip: dst.into(),
        dst_port: 80,
        ..Default::default()
    }
}

/// A refusal: `invalid` for `InvalidArgument`, else `Failed`.
fn refused_with(result: Result<(), ClientError>, invalid: bool, needle: &str) {
    match (result, invalid) {
        (Err(ClientError::InvalidArgument(m)), true) | (Err(ClientError::Failed(m)), false) => {
            assert!(m.contains(needle), "{needle:?} not in {m:?}")
        }
        (other, _) => panic!("expected a refusal ({needle}), got {other:?}"),
    }
}

fn kernel_state(world: &World) -> KernelState {
    KernelState::take(&world.netns, world.daemon.netns_prefix()).expect("state")
}

#[test]
fn port_rules_are_capped_in_total_and_per_interface() {
    let world = policy_world("max_port_rules = 4\nmax_port_rules_per_interface = 2\n");
    let c = client(&world);
    c.modify_port_rule(&access(1001, "eth0")).expect("1");
    c.modify_port_rule(&access(1002, "eth0")).expect("2");
    let before = kernel_state(&world);
    refused_with(
        c.modify_port_rule(&access(1003, "eth0")),
        false,
        "2 port rules name eth0",
    );
    assert_unchanged(&before, &kernel_state(&world), "after a refused rule");
    c.modify_port_rule(&access(1004, "wlan0")).expect("3");
    c.modify_port_rule(&access(1005, "")).expect("4");
    let before = kernel_state(&world);
    refused_with(
        c.modify_port_rule(&access(1006, "wlan1")),
        false,
        "4 port rules are active",
    );
    assert_unchanged(&before, &kernel_state(&world), "after a refused rule");
    let mut delete = access(1005, "");
    delete.op = Operation::Delete as i32;
    c.modify_port_rule(&delete).expect("delete");
    c.modify_port_rule(&access(1006, "wlan1"))
        .expect("room after a delete");
}

#[test]
fn forwarding_goes_to_guest_addresses_only() {
    let world = policy_world("");
    let c = client(&world);
    for (dst, why) in [
        ("100.115.92.129", "the host's address"),
        ("100.115.92.128", "the network address"),
        ("100.115.92.1", "the host's address"),
        ("100.115.93.255", "the broadcast address"),
    ] {
        refused_with(c.modify_port_rule(&forward(dst)), true, why);
    }
    c.modify_port_rule(&forward("100.115.92.130"))
        .expect("a guest's address");
}

#[test]
fn crosvm_cannot_replace_the_arc_container_root_attached() {
    let world = policy_world("");
    let container = FakeContainer::start().expect("container");
    client(&world)
        .arc_startup(container.pid())
        .expect("ArcStartup as root");
    let devices = client(&world).get_devices().expect("devices");
    assert!(!devices.is_empty());
    let links = |netns: &str| {
        let out = Command::new("ip")
            .args(["-n", netns, "-o", "link"])
            .output()
            .expect("ip");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let arc_netns = format!("{}arc_netns", world.daemon.netns_prefix());
    let inside = links(&arc_netns);
    // ArcVmStartupRequest { cid: 33 }, as crosvm sends it.
    let out = command_as("crosvm", world.bus.address(), "dbus-send")
        .expect("crosvm")
        .args([
            &format!("--bus={}", world.bus.address()),
            "--print-reply",
            &format!("--dest={}", names::SERVICE),
            names::PATH,
            &format!("{}.{}", names::INTERFACE, names::ARC_VM_STARTUP),
            "array:byte:8,33",
        ])
        .output()
        .expect("dbus-send");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && stderr.contains(ERROR_FAILED)
            && stderr.contains("started by root"),
        "{out:?}"
    );
    assert_eq!(client(&world).get_devices().expect("devices"), devices);
    assert_eq!(links(&arc_netns), inside, "the container's links changed");
}

#[test]
fn calls_that_expect_no_reply_get_none_and_the_state_is_private() {
    let world = policy_world("");
    let bus = world.daemon.client().expect("client");
    let calls = (0..50).map(|_| {
        BusClient::method_call(names::GET_DEVICES)
            .expect("call")
            .append1(&[][..] as &[u8])
    });
    assert_eq!(bus.send_without_replies(calls).expect("send"), 50);
    // A call with a reply after them: when it is answered, they were too.
    bus.get_devices().expect("GetDevices");
    let log = world.bus.log();
    assert!(
        !log.contains("requested_reply=\"0\""),
        "the bus refused unrequested replies:\n{log}"
    );
    let (_holder, _) = connect_as(&world, GROUP_MEMBER, &[]).expect("connect");
    let dir = world.daemon.state_dir();
    let mode =
        |p: &std::path::Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode(dir), 0o700, "{}", dir.display());
    assert_eq!(mode(&dir.join("state")), 0o600, "state file");
}
