//! Kernel tier for the datapath writer: each operation and its undo, run by
//! the real writer binary inside a test namespace and checked with
//! independent tools (`ip -j`, `ip rule`, `iptables-save`, `nsenter`).
//!
//! A test that changes the kernel takes a [`kernel_snapshot`] first and,
//! after the undo (the matching delete step, a best-effort teardown plan,
//! a rolled-back atomic plan or `RemoveOwned`), requires the same snapshot
//! again, line for line; a refusal must leave it unchanged too. Namespaces
//! the writer names carry a per-test prefix and are removed when the test
//! ends, also when it fails. Each test runs its own writer in its own
//! namespace, so nextest runs them in parallel.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use patchpanel_firewall::guest::{connected_namespace, connected_namespace_teardown, Mode};
use patchpanel_firewall::{guest, TrafficSource};
use patchpanel_ipc::datapath::{
    self as dp, ApplyMode, Plan, PlanReport, RouteKind, RouteSpec, RuleSpec, Step, Sysctl,
};
use patchpanel_ipc::{HelperError, IfName, NetnsName, MAX_MESSAGE_SIZE};
use patchpanel_tests::world::kernel_snapshot;
use patchpanel_tests::writer_client::{exec_in_named, snapshot_diff, NetnsPrefix, WriterClient};
use patchpanel_tests::Netns;
use serde_json::Value;

/// How long the kernel may take to settle (carrier, link-local addresses)
/// before a snapshot counts.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(5);

const HOST_MAC: dp::Mac = [0x02, 0x50, 0x50, 0x00, 0x00, 0x01];
const PEER_MAC: dp::Mac = [0x02, 0x50, 0x50, 0x00, 0x00, 0x02];

// ---------------------------------------------------------------------------
// Fixture: a namespace, a prefix, a configured writer.

/// Fields drop in order: the writer, then the prefix's namespaces, then the
/// test namespace.
struct Fixture {
    writer: WriterClient,
    prefix: NetnsPrefix,
    netns: Netns,
}

impl Fixture {
    fn new() -> Fixture {
        let netns = Netns::new().expect("test namespace");
        // No IPv6 duplicate address detection: addresses would change
        // state ("tentative") between two snapshots.
        for key in [
            "net.ipv6.conf.all.accept_dad=0",
            "net.ipv6.conf.default.accept_dad=0",
        ] {
            netns.exec_ok(&["sysctl", "-qw", key]).expect("disable DAD");
        }
        let prefix = NetnsPrefix::new();
        let writer = WriterClient::configured(&netns, prefix.as_str()).expect("start the writer");
        Fixture {
            writer,
            prefix,
            netns,
        }
    }

    /// With patchpanel's chains and jumps in place.
    fn with_firewall() -> Fixture {
        let mut f = Fixture::new();
        f.setup_firewall();
        f
    }

    fn setup_firewall(&mut self) {
        let answer = self
            .writer
            .request(patchpanel_ipc::Request::SetupFirewall(
                patchpanel_firewall::LayoutConfig::default(),
            ))
            .expect("SetupFirewall");
        assert!(
            answer.is_ok(),
            "SetupFirewall: {answer:?}\n{}",
            self.writer.log()
        );
    }

    fn ns(&self, suffix: &str) -> NetnsName {
        self.prefix.name(suffix)
    }

    /// Applies `steps` as one plan in `mode` and returns the writer's verdict.
    fn try_apply(&mut self, mode: ApplyMode, steps: Vec<Step>) -> Result<PlanReport, HelperError> {
        self.writer
            .apply(plan(mode, steps))
            .expect("the writer answers")
    }

    /// Applies `steps` atomically; they must succeed.
    fn apply(&mut self, steps: Vec<Step>) -> PlanReport {
        let answer = self.try_apply(ApplyMode::Atomic, steps);
        answer.unwrap_or_else(|e| panic!("plan failed: {e}\n{}", self.writer.log()))
    }

    /// Applies `steps` atomically; they must be refused.
    fn apply_refused(&mut self, steps: Vec<Step>) -> HelperError {
        match self.try_apply(ApplyMode::Atomic, steps) {
            Ok(report) => panic!("plan accepted: {report:?}"),
            Err(e) => e,
        }
    }

    /// A best-effort teardown plan; every step must succeed.
    fn teardown(&mut self, steps: Vec<Step>) {
        let report = self
            .try_apply(ApplyMode::BestEffort, steps)
            .expect("a best-effort plan is answered with a report");
        assert!(
            report.failures.is_empty(),
            "teardown failures: {:?}\n{}",
            report.failures,
            self.writer.log()
        );
    }

    /// A snapshot taken once the kernel has stopped changing on its own.
    fn settled_snapshot(&self) -> String {
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        let mut last = kernel_snapshot(&self.netns).expect("snapshot");
        loop {
            std::thread::sleep(Duration::from_millis(200));
            let now = kernel_snapshot(&self.netns).expect("snapshot");
            if now == last || Instant::now() > deadline {
                return now;
            }
            last = now;
        }
    }

    /// Waits for the snapshot to equal `before` and fails with a line diff
    /// if it does not.
    fn assert_snapshot_is(&self, before: &str) {
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        loop {
            let after = kernel_snapshot(&self.netns).expect("snapshot");
            if after == before {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "the kernel differs from before the test:\n{}",
                    snapshot_diff(before, &after)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `ip -j <args>` in the test namespace.
    fn ip_json(&self, args: &[&str]) -> Value {
        let mut argv = vec!["ip", "-j"];
        argv.extend_from_slice(args);
        json(&self.netns.exec_ok(&argv).expect("ip -j"))
    }

    fn exec(&self, argv: &[&str]) -> String {
        self.netns
            .exec_ok(argv)
            .unwrap_or_else(|e| panic!("{argv:?}: {e:#}"))
    }

    fn sysctl(&self, key: &str) -> String {
        self.exec(&["sysctl", "-n", key]).trim().to_string()
    }

    /// A veth pair whose both ends are in the writer's namespace, up, with
    /// `host` holding `addr`: a link to hang routes on.
    fn up_veth(&mut self, host: &str, peer: &str, addr: (IpAddr, u8)) {
        self.apply(vec![
            veth(host, peer, dp::Netns::Host),
            link_up(dp::Netns::Host, host),
            link_up(dp::Netns::Host, peer),
            add_address(dp::Netns::Host, host, addr.0, addr.1),
        ]);
        wait_for("the veth to come up", || {
            self.ip_json(&["link", "show", "dev", host])[0]["operstate"] == "UP"
        });
    }
}

fn plan(mode: ApplyMode, steps: Vec<Step>) -> Plan {
    Plan {
        label: "writer_kernel test".to_string(),
        mode,
        steps,
    }
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

fn wait_for(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    while !ready() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn ifname(name: &str) -> IfName {
    IfName::new(name).expect("interface name")
}

fn v4(s: &str) -> IpAddr {
    IpAddr::V4(s.parse::<Ipv4Addr>().expect("IPv4 address"))
}

fn v6(s: &str) -> IpAddr {
    IpAddr::V6(s.parse::<Ipv6Addr>().expect("IPv6 address"))
}

fn mac_text(mac: dp::Mac) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn veth(host: &str, peer: &str, peer_netns: dp::Netns) -> Step {
    Step::CreateVeth {
        host: ifname(host),
        peer: ifname(peer),
        peer_netns,
        host_mac: HOST_MAC,
        peer_mac: PEER_MAC,
    }
}

fn delete_link(netns: dp::Netns, name: &str) -> Step {
    Step::DeleteLink {
        netns,
        name: ifname(name),
    }
}

fn link_up(netns: dp::Netns, link: &str) -> Step {
    Step::LinkUp {
        netns,
        link: ifname(link),
        multicast: false,
    }
}

fn add_address(netns: dp::Netns, link: &str, addr: IpAddr, prefix_len: u8) -> Step {
    Step::AddAddress {
        netns,
        link: ifname(link),
        addr,
        prefix_len,
    }
}

fn route(dst: IpAddr, prefix_len: u8, gateway: Option<IpAddr>, dev: &str, table: u32) -> RouteSpec {
    RouteSpec {
        dst,
        prefix_len,
        gateway,
        dev: Some(ifname(dev)),
        table,
        metric: None,
        kind: RouteKind::Unicast,
    }
}

fn fwmark_rule(ipv6: bool) -> RuleSpec {
    RuleSpec {
        ipv6,
        priority: 1234,
        fwmark: Some((0x0001_0000, 0xffff_0000)),
        iif: None,
        oif: None,
        src: None,
        dst: None,
        table: 1002,
        suppress_prefixlen: None,
    }
}

fn suppress_rule(ipv6: bool) -> RuleSpec {
    RuleSpec {
        ipv6,
        priority: 1010,
        fwmark: None,
        iif: None,
        oif: None,
        src: None,
        dst: None,
        table: 254,
        suppress_prefixlen: Some(0),
    }
}

fn arc_ns0() -> guest::Namespace {
    guest::Namespace {
        host_ifname: ifname("arc_ns0"),
        host_ipv4: Ipv4Addr::new(100, 115, 92, 129),
        peer_ipv4: Ipv4Addr::new(100, 115, 92, 130),
        ipv6: Some((
            "fd00:5050::1".parse().expect("v6"),
            "fd00:5050::2".parse().expect("v6"),
        )),
        source: TrafficSource::User,
        mode: Mode::User,
    }
}

/// A refusal of what a D-Bus caller sent (a pid and its namespace).
fn expect_invalid_argument(e: &HelperError) -> &str {
    match e {
        HelperError::InvalidArgument(msg) => msg,
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
}

/// A refusal of what the manager asked (its names, objects that are not
/// patchpanel's): never the caller's fault.
fn expect_refused(e: &HelperError) -> &str {
    match e {
        HelperError::Refused(msg) => msg,
        other => panic!("expected Refused, got {other:?}"),
    }
}

/// Lines of `ip rule` (both families) that mention `needle`.
fn rule_lines(f: &Fixture, needle: &str) -> Vec<String> {
    let mut lines = Vec::new();
    for family in ["-4", "-6"] {
        lines.extend(
            f.exec(&["ip", family, "rule", "show"])
                .lines()
                .filter(|l| l.contains(needle))
                .map(|l| format!("{family} {}", l.trim())),
        );
    }
    lines
}

// ---------------------------------------------------------------------------
// Processes for AttachNetns.

/// A child process killed and reaped on drop.
struct Sleeper {
    child: Child,
}

impl Sleeper {
    /// `unshare --net sleep 60`: a process in a namespace of its own.
    fn in_new_netns() -> Sleeper {
        let own = ns_inode(std::process::id());
        let s = Sleeper::spawn(Command::new("unshare").args(["--net", "sleep", "60"]));
        wait_for("the child to enter its namespace", || {
            s.try_ns_inode().is_some_and(|ino| ino != own)
        });
        s
    }

    /// `nsenter --net=<netns> sleep 60`: a process in `netns`.
    fn in_netns(netns: &Netns) -> Sleeper {
        let want = netns.inode().expect("namespace inode");
        let s = Sleeper::spawn(
            Command::new("nsenter")
                .arg(format!("--net={}", netns.path().display()))
                .args(["--", "sleep", "60"]),
        );
        wait_for("the child to enter the namespace", || {
            s.try_ns_inode() == Some(want)
        });
        s
    }

    fn spawn(cmd: &mut Command) -> Sleeper {
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn the child");
        Sleeper { child }
    }

    fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).expect("pid")
    }

    fn try_ns_inode(&self) -> Option<u64> {
        std::fs::metadata(format!("/proc/{}/ns/net", self.pid()))
            .ok()
            .map(|m| m.ino())
    }

    fn pidfd(&self) -> OwnedFd {
        pidfd_open(self.pid())
    }
}

impl Drop for Sleeper {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn ns_inode(pid: u32) -> u64 {
    std::fs::metadata(format!("/proc/{pid}/ns/net"))
        .expect("stat /proc/<pid>/ns/net")
        .ino()
}

fn pidfd_open(pid: i32) -> OwnedFd {
    // SAFETY: pidfd_open takes a pid and flags, no pointers.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    assert!(
        fd >= 0,
        "pidfd_open({pid}): {}",
        std::io::Error::last_os_error()
    );
    let fd = i32::try_from(fd).expect("fd number");
    // SAFETY: the kernel just returned this descriptor to us; nobody else owns it.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

fn attach(name: &NetnsName, pid: i32) -> Step {
    Step::AttachNetns {
        name: name.clone(),
        pid,
        pidfd: 0,
        owner_uid: None,
    }
}

fn netns_file(name: &NetnsName) -> std::path::PathBuf {
    std::path::Path::new("/run/netns").join(name.as_str())
}

// ---------------------------------------------------------------------------
// Namespaces.

#[test]
fn create_netns_makes_a_fresh_named_namespace_and_delete_netns_removes_it() {
    let mut f = Fixture::new();
    let before = f.settled_snapshot();
    let name = f.ns("a");

    f.apply(vec![Step::CreateNetns { name: name.clone() }]);

    assert_eq!(f.prefix.entries().expect("list"), vec![name.to_string()]);
    let inode = std::fs::metadata(netns_file(&name)).expect("stat").ino();
    assert_ne!(inode, f.netns.inode().expect("inode"));
    let links = json(&exec_in_named(name.as_str(), &["ip", "-j", "link"]).expect("ip link"));
    let names: Vec<&str> = links
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|l| l["ifname"].as_str())
        .collect();
    assert_eq!(names, ["lo"], "a new namespace holds only lo");

    f.apply(vec![Step::DeleteNetns { name }]);

    assert!(f.prefix.entries().expect("list").is_empty());
    f.assert_snapshot_is(&before);
}

#[test]
fn attach_netns_names_the_namespace_of_a_pinned_child_process() {
    let mut f = Fixture::new();
    let before = f.settled_snapshot();
    let child = Sleeper::in_new_netns();
    let pidfd = child.pidfd();
    let name = f.ns("attached");

    let answer = f
        .writer
        .apply_with_fds(
            plan(ApplyMode::Atomic, vec![attach(&name, child.pid())]),
            &[pidfd.as_fd()],
        )
        .expect("the writer answers");

    answer.unwrap_or_else(|e| panic!("attach refused: {e}\n{}", f.writer.log()));
    let named = std::fs::metadata(netns_file(&name)).expect("stat").ino();
    assert_eq!(named, child.try_ns_inode().expect("child's namespace"));

    f.apply(vec![Step::DeleteNetns { name }]);

    assert!(f.prefix.entries().expect("list").is_empty());
    assert!(
        child.try_ns_inode().is_some(),
        "deleting the name must not harm the process"
    );
    f.assert_snapshot_is(&before);
}

#[test]
fn attach_netns_refuses_a_process_in_the_writers_own_namespace() {
    let mut f = Fixture::new();
    let child = Sleeper::in_netns(&f.netns);
    let pidfd = child.pidfd();
    let name = f.ns("own");

    let answer = f
        .writer
        .apply_with_fds(
            plan(ApplyMode::Atomic, vec![attach(&name, child.pid())]),
            &[pidfd.as_fd()],
        )
        .expect("the writer answers");

    let err = answer.expect_err("attached the writer's own namespace");
    let msg = expect_invalid_argument(&err);
    assert!(msg.contains("own network namespace"), "{msg}");
    assert!(f.prefix.entries().expect("list").is_empty());
}

#[test]
fn attach_netns_refuses_a_pidfd_that_belongs_to_another_process() {
    let mut f = Fixture::new();
    let named = Sleeper::in_new_netns();
    let other = Sleeper::in_new_netns();
    let other_pidfd = other.pidfd();
    let name = f.ns("swapped");

    let answer = f
        .writer
        .apply_with_fds(
            plan(ApplyMode::Atomic, vec![attach(&name, named.pid())]),
            &[other_pidfd.as_fd()],
        )
        .expect("the writer answers");

    let err = answer.expect_err("attached with another process's pidfd");
    let msg = expect_invalid_argument(&err);
    assert!(
        msg.contains(&format!("refers to pid {}", other.pid())),
        "{msg}"
    );
    assert!(f.prefix.entries().expect("list").is_empty());
}

#[test]
fn attach_netns_refuses_the_pidfd_of_an_exited_process() {
    let mut f = Fixture::new();
    let mut child = Sleeper::in_new_netns();
    let pid = child.pid();
    let pidfd = child.pidfd();
    child.child.kill().expect("kill the child");
    child.child.wait().expect("reap the child");
    let name = f.ns("exited");

    let answer = f
        .writer
        .apply_with_fds(
            plan(ApplyMode::Atomic, vec![attach(&name, pid)]),
            &[pidfd.as_fd()],
        )
        .expect("the writer answers");

    let err = answer.expect_err("attached an exited process");
    let msg = expect_invalid_argument(&err);
    assert!(msg.contains("exited"), "{msg}");
    assert!(f.prefix.entries().expect("list").is_empty());
}

#[test]
fn attach_netns_refuses_a_request_without_its_pidfd() {
    let mut f = Fixture::new();
    let child = Sleeper::in_new_netns();
    let name = f.ns("nofd");

    let err = f.apply_refused(vec![attach(&name, child.pid())]);

    let msg = expect_refused(&err);
    assert!(msg.contains("no pidfd"), "{msg}");
    assert!(f.prefix.entries().expect("list").is_empty());
}

// ---------------------------------------------------------------------------
// Links.

#[test]
fn create_veth_puts_the_peer_in_a_named_namespace_with_macs_and_alias() {
    let mut f = Fixture::new();
    let before = f.settled_snapshot();
    let ns = f.ns("veth");

    f.apply(vec![
        Step::CreateNetns { name: ns.clone() },
        veth("ppv0", "ppv0p", dp::Netns::Named(ns.clone())),
    ]);

    let host = &f.ip_json(&["link", "show", "dev", "ppv0"])[0];
    assert_eq!(host["address"], mac_text(HOST_MAC));
    assert_eq!(host["ifalias"], "patchpanel");
    assert!(
        host["link_netnsid"].is_number(),
        "the peer is elsewhere: {host}"
    );
    let peer = &json(
        &exec_in_named(ns.as_str(), &["ip", "-j", "link", "show", "dev", "ppv0p"]).expect("ip"),
    )[0];
    assert_eq!(peer["address"], mac_text(PEER_MAC));
    assert_eq!(peer["ifalias"], "patchpanel");
    assert!(
        f.exec(&["ip", "-o", "link", "show"])
            .lines()
            .all(|l| !l.contains("ppv0p")),
        "the peer must not be in the writer's namespace"
    );

    f.teardown(vec![
        delete_link(dp::Netns::Host, "ppv0"),
        Step::DeleteNetns { name: ns },
    ]);

    f.assert_snapshot_is(&before);
    assert!(f.prefix.entries().expect("list").is_empty());
}

#[test]
fn delete_link_removes_both_ends_of_a_veth() {
    let mut f = Fixture::new();
    let before = f.settled_snapshot();
    let ns = f.ns("del");
    f.apply(vec![
        Step::CreateNetns { name: ns.clone() },
        veth("ppd0", "ppd0p", dp::Netns::Named(ns.clone())),
    ]);

    f.apply(vec![delete_link(dp::Netns::Host, "ppd0")]);

    // The reaper deletes it after the plan's answer (and not within 2 ms
    // of a plan's end): polled.
    assert_links_gone(&f, &["ppd0"]);
    let peer_links = exec_in_named(ns.as_str(), &["ip", "-o", "link", "show"]).expect("ip");
    assert!(
        !peer_links.contains("ppd0p"),
        "the peer survived: {peer_links}"
    );
    f.apply(vec![Step::DeleteNetns { name: ns }]);
    f.assert_snapshot_is(&before);
}

#[test]
fn delete_link_refuses_a_link_without_the_patchpanel_alias() {
    let mut f = Fixture::new();
    f.exec(&[
        "ip", "link", "add", "theirs0", "type", "veth", "peer", "name", "theirs1",
    ]);
    let before = f.settled_snapshot();

    let err = f.apply_refused(vec![delete_link(dp::Netns::Host, "theirs0")]);

    let msg = expect_refused(&err);
    assert!(msg.contains("theirs0"), "{msg}");
    assert_eq!(
        f.ip_json(&["link", "show", "dev", "theirs0"])[0]["ifname"],
        "theirs0"
    );
    f.assert_snapshot_is(&before);
}

#[test]
fn delete_link_refuses_a_link_with_another_alias() {
    let mut f = Fixture::new();
    f.exec(&[
        "ip", "link", "add", "theirs0", "type", "veth", "peer", "name", "theirs1",
    ]);
    f.exec(&["ip", "link", "set", "theirs0", "alias", "patchpanel-not"]);
    let before = f.settled_snapshot();

    let err = f.apply_refused(vec![delete_link(dp::Netns::Host, "theirs0")]);

    expect_refused(&err);
    f.assert_snapshot_is(&before);
}

/// Asserts that none of `names` is listed any more, polled for up to 10 s
/// (the reaper deletes after the plan's answer).
fn assert_links_gone(f: &Fixture, names: &[&str]) {
    let left = || -> Vec<String> {
        let listed = f.exec(&["ip", "-o", "link", "show"]);
        names
            .iter()
            .filter(|n| listed.contains(&format!(": {n}:")) || listed.contains(&format!(": {n}@")))
            .map(|n| n.to_string())
            .collect()
    };
    let gone = patchpanel_tests::wait::poll_until(Duration::from_secs(10), || {
        left().is_empty().then_some(())
    });
    assert!(
        gone.is_some(),
        "still listed: {:?}\n{}",
        left(),
        f.writer.log()
    );
}

#[test]
fn links_deleted_together_go_in_one_group_and_a_strangers_link_in_that_group_stays() {
    let mut f = Fixture::new();
    let before = f.settled_snapshot();
    let ours = ["ppg0", "ppg1", "ppg2", "ppgbr"];
    let build = |f: &mut Fixture| {
        f.apply(vec![
            veth("ppg0", "ppg0p", dp::Netns::Host),
            veth("ppg1", "ppg1p", dp::Netns::Host),
            veth("ppg2", "ppg2p", dp::Netns::Host),
            Step::CreateBridge {
                name: IfName::new("ppgbr").unwrap(),
            },
        ]);
    };
    let delete_all = |f: &mut Fixture| {
        f.apply(
            ours.iter()
                .map(|n| delete_link(dp::Netns::Host, n))
                .collect(),
        );
    };

    build(&mut f);
    delete_all(&mut f);
    assert_links_gone(&f, &ours);
    assert!(
        !f.writer.log().contains("device group"),
        "{}",
        f.writer.log()
    );
    f.assert_snapshot_is(&before);

    // Another program's links in the groups the reaper's workers use (one
    // each, 0x70707270 + slot): the kernel would delete them with ours, so
    // ours go one by one and theirs stay.
    for slot in 0..4u32 {
        let (name, peer) = (format!("theirs{slot}"), format!("theirs{slot}p"));
        f.exec(&[
            "ip", "link", "add", &name, "type", "veth", "peer", "name", &peer,
        ]);
        let group = (0x7070_7270 + slot).to_string();
        f.exec(&["ip", "link", "set", &name, "group", &group]);
    }
    build(&mut f);
    delete_all(&mut f);
    assert_links_gone(&f, &ours);
    let log = f.writer.log();
    assert!(log.contains(" also holds theirs"), "{log}");
    for slot in 0..4 {
        let name = format!("theirs{slot}");
        assert_eq!(
            f.ip_json(&["link", "show", "dev", &name])[0]["ifname"],
            name
        );
    }
}

// ---------------------------------------------------------------------------
// Addresses and link state.

#[test]
fn add_address_sets_ipv4_with_its_broadcast_and_ipv6() {
    let mut f = Fixture::new();
    let before = f.settled_snapshot();
    f.apply(vec![veth("ppa0", "ppa0p", dp::Netns::Host)]);

    f.apply(vec![
        add_address(dp::Netns::Host, "ppa0", v4("100.115.92.129"), 30),
        add_address(dp::Netns::Host, "ppa0", v6("fd00:5050::1"), 64),
    ]);

    let addrs = f.ip_json(&["addr", "show", "dev", "ppa0"]);
    let infos = addrs[0]["addr_info"].as_array().expect("addr_info");
    let inet = infos
        .iter()
        .find(|a| a["family"] == "inet")
        .unwrap_or_else(|| panic!("no IPv4 address: {addrs}"));
    assert_eq!(inet["local"], "100.115.92.129");
    assert_eq!(inet["prefixlen"], 30);
    assert_eq!(inet["broadcast"], "100.115.92.131");
    assert!(
        infos.iter().any(|a| a["family"] == "inet6"
            && a["local"] == "fd00:5050::1"
            && a["prefixlen"] == 64),
        "no IPv6 address: {addrs}"
    );

    f.teardown(vec![delete_link(dp::Netns::Host, "ppa0")]);
    f.assert_snapshot_is(&before);
}

#[test]
fn add_address_is_rolled_back_when_a_later_step_fails() {
    let mut f = Fixture::new();
    f.apply(vec![veth("ppa0", "ppa0p", dp::Netns::Host)]);
    let before = f.settled_snapshot();

    let err = f.apply_refused(vec![
        add_address(dp::Netns::Host, "ppa0", v4("100.115.92.129"), 30),
        add_address(dp::Netns::Host, "ppa0", v6("fd00:5050::1"), 64),
        add_address(dp::Netns::Host, "nosuch0", v4("10.9.9.9"), 24),
    ]);

    assert!(err.to_string().contains("nosuch0"), "{err}");
    f.assert_snapshot_is(&before);
}

#[test]
fn a_rolled_back_add_address_keeps_an_address_that_was_already_there() {
    let mut f = Fixture::new();
    f.exec(&[
        "ip", "link", "add", "theirs0", "type", "veth", "peer", "name", "theirs1",
    ]);
    f.exec(&["ip", "addr", "add", "10.1.1.1/24", "dev", "theirs0"]);
    let before = f.settled_snapshot();

    f.apply_refused(vec![
        add_address(dp::Netns::Host, "theirs0", v4("10.1.1.1"), 24),
        add_address(dp::Netns::Host, "nosuch0", v4("10.9.9.9"), 24),
    ]);

    f.assert_snapshot_is(&before);
}

#[test]
fn link_up_brings_a_link_up_with_multicast_off() {
    let mut f = Fixture::new();
    let before = f.settled_snapshot();
    f.apply(vec![veth("ppl0", "ppl0p", dp::Netns::Host)]);
    let flags = |f: &Fixture| f.ip_json(&["link", "show", "dev", "ppl0"])[0]["flags"].clone();
    assert!(flags(&f)
        .as_array()
        .expect("flags")
        .contains(&"MULTICAST".into()));

    f.apply(vec![link_up(dp::Netns::Host, "ppl0")]);

    let flags = flags(&f);
    let flags = flags.as_array().expect("flags");
    assert!(flags.contains(&"UP".into()), "{flags:?}");
    assert!(!flags.contains(&"MULTICAST".into()), "{flags:?}");
    f.teardown(vec![delete_link(dp::Netns::Host, "ppl0")]);
    f.assert_snapshot_is(&before);
}

#[test]
fn a_rolled_back_link_up_restores_the_link_flags_it_found() {
    let mut f = Fixture::new();
    f.apply(vec![veth("ppl0", "ppl0p", dp::Netns::Host)]);
    let flags = |f: &Fixture| f.ip_json(&["link", "show", "dev", "ppl0"])[0]["flags"].clone();
    let before = flags(&f);

    f.apply_refused(vec![
        link_up(dp::Netns::Host, "ppl0"),
        add_address(dp::Netns::Host, "nosuch0", v4("10.9.9.9"), 24),
    ]);

    // Only the flags: the first up also gives the link a qdisc for good.
    assert_eq!(flags(&f), before);
}

// ---------------------------------------------------------------------------
// Routes.

/// The routes to `dst` that `ip -j <family> route show table <table>`
/// prints.
fn routes_to(f: &Fixture, family: &str, table: &str, dst: &str) -> Vec<Value> {
    let routes = f.ip_json(&[family, "route", "show", "table", table]);
    routes
        .as_array()
        .expect("array")
        .iter()
        .filter(|r| r["dst"] == dst)
        .cloned()
        .collect()
}

#[test]
fn add_route_in_the_main_table_carries_proto_157_and_delete_route_removes_it() {
    let mut f = Fixture::new();
    f.up_veth("ppr0", "ppr0p", (v4("100.115.92.129"), 30));
    f.apply(vec![add_address(
        dp::Netns::Host,
        "ppr0",
        v6("fd00:5050::1"),
        64,
    )]);
    let before = f.settled_snapshot();
    let via_gateway = route(
        v4("203.0.113.0"),
        24,
        Some(v4("100.115.92.130")),
        "ppr0",
        254,
    );
    let on_link = route(v4("198.51.100.0"), 24, None, "ppr0", 254);
    let mut ipv6 = route(v6("fd00:7777::"), 48, None, "ppr0", 254);
    ipv6.metric = Some(512);

    f.apply(vec![
        Step::AddRoute {
            netns: dp::Netns::Host,
            route: via_gateway.clone(),
        },
        Step::AddRoute {
            netns: dp::Netns::Host,
            route: on_link.clone(),
        },
        Step::AddRoute {
            netns: dp::Netns::Host,
            route: ipv6.clone(),
        },
    ]);

    let r = routes_to(&f, "-4", "main", "203.0.113.0/24");
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!(r[0]["gateway"], "100.115.92.130");
    assert_eq!(r[0]["dev"], "ppr0");
    assert_eq!(r[0]["protocol"], "157");
    let r = routes_to(&f, "-4", "main", "198.51.100.0/24");
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!(r[0]["protocol"], "157");
    assert_eq!(r[0]["scope"], "link");
    let r = routes_to(&f, "-6", "main", "fd00:7777::/48");
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!(r[0]["protocol"], "157");
    assert_eq!(r[0]["metric"], 512);

    f.apply(vec![
        Step::DeleteRoute {
            netns: dp::Netns::Host,
            route: via_gateway,
        },
        Step::DeleteRoute {
            netns: dp::Netns::Host,
            route: on_link,
        },
        Step::DeleteRoute {
            netns: dp::Netns::Host,
            route: ipv6,
        },
    ]);

    f.assert_snapshot_is(&before);
}

#[test]
fn add_route_in_a_named_namespace_carries_proto_157_and_delete_route_removes_it() {
    let mut f = Fixture::new();
    let before = f.settled_snapshot();
    let ns = f.ns("routes");
    let inside = dp::Netns::Named(ns.clone());
    f.apply(vec![
        Step::CreateNetns { name: ns.clone() },
        veth("ppn0", "ppn0p", inside.clone()),
        link_up(dp::Netns::Host, "ppn0"),
        link_up(inside.clone(), "ppn0p"),
        add_address(inside.clone(), "ppn0p", v4("100.115.92.130"), 30),
    ]);
    let ns_routes = || exec_in_named(ns.as_str(), &["ip", "-4", "route", "show", "table", "all"]);
    let ns_before = ns_routes().expect("routes");
    let default = route(v4("0.0.0.0"), 0, Some(v4("100.115.92.129")), "ppn0p", 254);

    f.apply(vec![Step::AddRoute {
        netns: inside.clone(),
        route: default.clone(),
    }]);

    let routes = json(&exec_in_named(ns.as_str(), &["ip", "-j", "-4", "route"]).expect("ip"));
    let default_routes: Vec<&Value> = routes
        .as_array()
        .expect("array")
        .iter()
        .filter(|r| r["dst"] == "default")
        .collect();
    assert_eq!(default_routes.len(), 1, "{routes}");
    assert_eq!(default_routes[0]["gateway"], "100.115.92.129");
    assert_eq!(default_routes[0]["protocol"], "157");
    assert!(
        routes_to(&f, "-4", "main", "default").is_empty(),
        "the route leaked into the writer's namespace"
    );

    f.apply(vec![Step::DeleteRoute {
        netns: inside,
        route: default,
    }]);

    assert_eq!(ns_routes().expect("routes"), ns_before);
    f.teardown(vec![
        delete_link(dp::Netns::Host, "ppn0"),
        Step::DeleteNetns { name: ns },
    ]);
    f.assert_snapshot_is(&before);
}

#[test]
fn delete_route_leaves_alone_a_foreign_route_to_the_same_destination() {
    let mut f = Fixture::new();
    f.up_veth("ppr0", "ppr0p", (v4("100.115.92.129"), 30));
    f.exec(&["ip", "route", "add", "198.51.100.0/24", "dev", "ppr0"]);
    f.exec(&["ip", "-6", "route", "add", "fd00:7777::/48", "dev", "ppr0"]);
    let before = f.settled_snapshot();

    f.apply(vec![
        Step::DeleteRoute {
            netns: dp::Netns::Host,
            route: route(v4("198.51.100.0"), 24, None, "ppr0", 254),
        },
        Step::DeleteRoute {
            netns: dp::Netns::Host,
            route: route(v6("fd00:7777::"), 48, None, "ppr0", 254),
        },
    ]);

    f.assert_snapshot_is(&before);
}

#[test]
fn add_route_refuses_to_replace_a_foreign_route_to_the_same_destination() {
    let mut f = Fixture::new();
    f.up_veth("ppr0", "ppr0p", (v4("100.115.92.129"), 30));
    f.exec(&["ip", "route", "add", "198.51.100.0/24", "dev", "ppr0"]);
    let before = f.settled_snapshot();

    let err = f.apply_refused(vec![Step::AddRoute {
        netns: dp::Netns::Host,
        route: route(
            v4("198.51.100.0"),
            24,
            Some(v4("100.115.92.130")),
            "ppr0",
            254,
        ),
    }]);

    let msg = expect_refused(&err);
    assert!(msg.contains("not patchpanel's"), "{msg}");
    f.assert_snapshot_is(&before);
}

#[test]
fn a_rolled_back_add_route_puts_back_the_route_of_ours_it_replaced() {
    let mut f = Fixture::new();
    f.up_veth("ppr0", "ppr0p", (v4("100.115.92.129"), 29));
    f.apply(vec![Step::AddRoute {
        netns: dp::Netns::Host,
        route: route(
            v4("198.51.100.0"),
            24,
            Some(v4("100.115.92.130")),
            "ppr0",
            254,
        ),
    }]);
    let before = f.settled_snapshot();

    f.apply_refused(vec![
        Step::AddRoute {
            netns: dp::Netns::Host,
            route: route(
                v4("198.51.100.0"),
                24,
                Some(v4("100.115.92.131")),
                "ppr0",
                254,
            ),
        },
        add_address(dp::Netns::Host, "nosuch0", v4("10.9.9.9"), 24),
    ]);

    let r = routes_to(&f, "-4", "main", "198.51.100.0/24");
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!(r[0]["gateway"], "100.115.92.130");
    f.assert_snapshot_is(&before);
}

// ---------------------------------------------------------------------------
// Rules.

#[test]
fn add_rule_with_fwmark_and_mask_shows_proto_157_and_delete_rule_removes_it() {
    let mut f = Fixture::new();
    let before = f.settled_snapshot();

    f.apply(vec![
        Step::AddRule(fwmark_rule(false)),
        Step::AddRule(fwmark_rule(true)),
    ]);

    assert_eq!(
        rule_lines(&f, "1234:"),
        [
            "-4 1234:\tfrom all fwmark 0x10000/0xffff0000 lookup 1002 proto 157",
            "-6 1234:\tfrom all fwmark 0x10000/0xffff0000 lookup 1002 proto 157",
        ]
    );
    let rules = f.ip_json(&["rule", "show", "pref", "1234"]);
    assert_eq!(rules[0]["protocol"], "157", "{rules}");

    f.apply(vec![
        Step::DeleteRule(fwmark_rule(false)),
        Step::DeleteRule(fwmark_rule(true)),
    ]);

    assert!(rule_lines(&f, "1234:").is_empty());
    f.assert_snapshot_is(&before);
}

#[test]
fn add_rule_with_suppress_prefixlength_shows_proto_157_and_delete_rule_removes_it() {
    let mut f = Fixture::new();
    let before = f.settled_snapshot();

    f.apply(vec![
        Step::AddRule(suppress_rule(false)),
        Step::AddRule(suppress_rule(true)),
    ]);

    assert_eq!(
        rule_lines(&f, "1010:"),
        [
            "-4 1010:\tfrom all lookup main suppress_prefixlength 0 proto 157",
            "-6 1010:\tfrom all lookup main suppress_prefixlength 0 proto 157",
        ]
    );

    f.apply(vec![
        Step::DeleteRule(suppress_rule(false)),
        Step::DeleteRule(suppress_rule(true)),
    ]);

    assert!(rule_lines(&f, "1010:").is_empty());
    f.assert_snapshot_is(&before);
}

#[test]
fn delete_rule_leaves_alone_a_foreign_rule_with_the_same_selectors() {
    let mut f = Fixture::new();
    f.exec(&[
        "ip",
        "rule",
        "add",
        "pref",
        "1234",
        "fwmark",
        "0x10000/0xffff0000",
        "lookup",
        "1002",
    ]);
    let before = f.settled_snapshot();

    f.apply(vec![Step::DeleteRule(fwmark_rule(false))]);

    assert_eq!(
        rule_lines(&f, "1234:"),
        ["-4 1234:\tfrom all fwmark 0x10000/0xffff0000 lookup 1002"]
    );
    f.assert_snapshot_is(&before);
}

#[test]
fn a_rolled_back_add_rule_keeps_the_identical_rule_an_earlier_plan_added() {
    let mut f = Fixture::new();
    f.apply(vec![Step::AddRule(fwmark_rule(false))]);
    let before = f.settled_snapshot();

    f.apply_refused(vec![
        Step::AddRule(fwmark_rule(false)),
        add_address(dp::Netns::Host, "nosuch0", v4("10.9.9.9"), 24),
    ]);

    f.assert_snapshot_is(&before);
}

// ---------------------------------------------------------------------------
// Sysctls.

#[test]
fn set_sysctl_reports_the_value_it_replaced_and_writing_it_back_restores_it() {
    let mut f = Fixture::new();
    assert_eq!(f.sysctl("net.ipv4.ip_forward"), "0");

    let report = f.apply(vec![Step::SetSysctl {
        netns: dp::Netns::Host,
        sysctl: Sysctl::Ipv4Forward,
        value: "1".into(),
    }]);

    assert_eq!(
        report.replaced_sysctls,
        [(dp::Netns::Host, Sysctl::Ipv4Forward, "0".to_string())]
    );
    assert_eq!(f.sysctl("net.ipv4.ip_forward"), "1");

    let report = f.apply(vec![Step::SetSysctl {
        netns: dp::Netns::Host,
        sysctl: Sysctl::Ipv4Forward,
        value: "0".into(),
    }]);

    assert_eq!(
        report.replaced_sysctls,
        [(dp::Netns::Host, Sysctl::Ipv4Forward, "1".to_string())]
    );
    assert_eq!(f.sysctl("net.ipv4.ip_forward"), "0");
}

#[test]
fn set_sysctl_refuses_a_value_that_is_not_a_small_integer() {
    let mut f = Fixture::new();
    let old = f.sysctl("net.ipv4.ip_default_ttl");

    let err = f.apply_refused(vec![Step::SetSysctl {
        netns: dp::Netns::Host,
        sysctl: Sysctl::Ipv4DefaultTtl,
        value: "1; rm -rf /".into(),
    }]);

    expect_refused(&err);
    assert_eq!(f.sysctl("net.ipv4.ip_default_ttl"), old);
}

#[test]
fn set_sysctl_in_a_named_namespace_leaves_the_writers_namespace_alone() {
    let mut f = Fixture::new();
    let ns = f.ns("ttl");
    f.apply(vec![Step::CreateNetns { name: ns.clone() }]);
    let ours = f.sysctl("net.ipv4.ip_default_ttl");

    let report = f.apply(vec![Step::SetSysctl {
        netns: dp::Netns::Named(ns.clone()),
        sysctl: Sysctl::Ipv4DefaultTtl,
        value: "65".into(),
    }]);

    assert_eq!(
        report.replaced_sysctls,
        [(
            dp::Netns::Named(ns.clone()),
            Sysctl::Ipv4DefaultTtl,
            "64".to_string()
        )]
    );
    let inside =
        exec_in_named(ns.as_str(), &["sysctl", "-n", "net.ipv4.ip_default_ttl"]).expect("sysctl");
    assert_eq!(inside.trim(), "65");
    assert_eq!(f.sysctl("net.ipv4.ip_default_ttl"), ours);
    f.apply(vec![Step::DeleteNetns { name: ns }]);
}

#[test]
fn a_rolled_back_set_sysctl_writes_the_old_value_back() {
    let mut f = Fixture::new();
    assert_eq!(f.sysctl("net.ipv6.conf.all.forwarding"), "0");

    f.apply_refused(vec![
        Step::SetSysctl {
            netns: dp::Netns::Host,
            sysctl: Sysctl::Ipv6Forwarding,
            value: "1".into(),
        },
        add_address(dp::Netns::Host, "nosuch0", v4("10.9.9.9"), 24),
    ]);

    assert_eq!(f.sysctl("net.ipv6.conf.all.forwarding"), "0");
}

// ---------------------------------------------------------------------------
// SyncTable.

/// `(dst, protocol)` of every route in table 1002, sorted.
fn table_1002(f: &Fixture) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for family in ["-4", "-6"] {
        let routes = f.ip_json(&[family, "route", "show", "table", "1002"]);
        for r in routes.as_array().expect("array") {
            out.push((
                r["dst"].as_str().unwrap_or("?").to_string(),
                // `ip -j route` leaves out the default protocol, boot.
                r["protocol"].as_str().unwrap_or("boot").to_string(),
            ));
        }
    }
    out.sort();
    out
}

fn pair(dst: &str, proto: &str) -> (String, String) {
    (dst.to_string(), proto.to_string())
}

#[test]
fn sync_table_sets_exactly_the_listed_routes_and_leaves_foreign_ones_alone() {
    let mut f = Fixture::new();
    f.up_veth("ppu0", "ppu0p", (v4("100.64.0.2"), 24));
    f.exec(&[
        "ip",
        "route",
        "add",
        "192.0.2.0/24",
        "dev",
        "ppu0",
        "table",
        "1002",
    ]);
    let before = f.settled_snapshot();
    let default = route(v4("0.0.0.0"), 0, Some(v4("100.64.0.1")), "ppu0", 1002);
    let subnet = route(v4("100.64.0.0"), 24, None, "ppu0", 1002);
    let ula = route(v6("fd00:64::"), 64, None, "ppu0", 1002);
    let wide = route(v4("10.0.0.0"), 8, None, "ppu0", 1002);

    f.apply(vec![Step::SyncTable {
        table: 1002,
        routes: vec![default.clone(), subnet, ula],
    }]);

    assert_eq!(
        table_1002(&f),
        [
            pair("100.64.0.0/24", "157"),
            pair("192.0.2.0/24", "boot"),
            pair("default", "157"),
            pair("fd00:64::/64", "157"),
        ]
    );

    f.apply(vec![Step::SyncTable {
        table: 1002,
        routes: vec![default, wide],
    }]);

    assert_eq!(
        table_1002(&f),
        [
            pair("10.0.0.0/8", "157"),
            pair("192.0.2.0/24", "boot"),
            pair("default", "157"),
        ]
    );

    f.apply(vec![Step::SyncTable {
        table: 1002,
        routes: Vec::new(),
    }]);

    assert_eq!(table_1002(&f), [pair("192.0.2.0/24", "boot")]);
    f.assert_snapshot_is(&before);
}

#[test]
fn sync_table_refuses_to_replace_a_foreign_route_and_changes_nothing() {
    let mut f = Fixture::new();
    f.up_veth("ppu0", "ppu0p", (v4("100.64.0.2"), 24));
    f.exec(&[
        "ip",
        "route",
        "add",
        "default",
        "via",
        "100.64.0.1",
        "table",
        "1002",
    ]);
    let before = f.settled_snapshot();

    let err = f.apply_refused(vec![Step::SyncTable {
        table: 1002,
        routes: vec![
            route(v4("100.64.0.0"), 24, None, "ppu0", 1002),
            route(v4("0.0.0.0"), 0, Some(v4("100.64.0.254")), "ppu0", 1002),
        ],
    }]);

    let msg = expect_refused(&err);
    assert!(msg.contains("not patchpanel's"), "{msg}");
    f.assert_snapshot_is(&before);
}

#[test]
fn sync_table_refuses_a_table_below_1000() {
    let mut f = Fixture::new();
    let before = f.settled_snapshot();

    let err = f.apply_refused(vec![Step::SyncTable {
        table: 254,
        routes: Vec::new(),
    }]);

    expect_refused(&err);
    f.assert_snapshot_is(&before);
}

// ---------------------------------------------------------------------------
// Firewall.

/// The lines of `after` that are not in `before` and the lines of `before`
/// that are not in `after`.
fn added_and_removed(before: &str, after: &str) -> (Vec<String>, Vec<String>) {
    let diff = snapshot_diff(before, after);
    let added = diff
        .lines()
        .filter_map(|l| l.strip_prefix("+ "))
        .map(str::to_string)
        .collect();
    let removed = diff
        .lines()
        .filter_map(|l| l.strip_prefix("- "))
        .map(str::to_string)
        .collect();
    (added, removed)
}

#[test]
fn firewall_step_applies_a_connected_namespace_batch_and_its_teardown_removes_it() {
    let mut f = Fixture::with_firewall();
    let before = f.settled_snapshot();
    let ns = arc_ns0();

    f.apply(vec![Step::Firewall(connected_namespace(&ns))]);

    let after = kernel_snapshot(&f.netns).expect("snapshot");
    let (added, removed) = added_and_removed(&before, &after);
    assert!(removed.is_empty(), "removed: {removed:#?}");
    assert!(
        added.iter().all(|l| l.contains("arc_ns0")),
        "added lines that are not about arc_ns0: {added:#?}"
    );
    for want in [
        ":PREROUTING_arc_ns0 -",
        "-A guest_forward -i arc_ns0 -j ACCEPT",
        "-A skip_apply_vpn_mark -o arc_ns0 -j ACCEPT",
        "-A PREROUTING_arc_ns0 -s 100.115.92.130/32 -d 100.115.92.129/32 -j ACCEPT",
        "-A PREROUTING_arc_ns0 -s fd00:5050::2/128 -d fd00:5050::1/128 -j ACCEPT",
    ] {
        assert!(
            added.iter().any(|l| l == want),
            "{want:?} missing from the added lines: {added:#?}"
        );
    }
    let v4 = f.netns.firewall_save(false, Some("mangle")).expect("v4");
    let v6 = f.netns.firewall_save(true, Some("mangle")).expect("v6");
    for save in [&v4, &v6] {
        assert!(
            save.lines()
                .any(|l| l.contains("-i arc_ns0") && l.contains("-j PREROUTING_arc_ns0")),
            "no jump to PREROUTING_arc_ns0:\n{save}"
        );
    }

    f.apply(vec![Step::Firewall(
        connected_namespace_teardown(&ns).expect("invertible"),
    )]);

    f.assert_snapshot_is(&before);
}

#[test]
fn a_firewall_batch_that_fails_leaves_none_of_its_rules_behind() {
    let mut f = Fixture::with_firewall();
    let before = f.settled_snapshot();
    let mut batch = connected_namespace(&arc_ns0());
    // Deleting a rule that is not there makes the batch fail after the
    // changes before it.
    batch.extend(
        connected_namespace_teardown(&guest::Namespace {
            host_ifname: ifname("arc_ns9"),
            ..arc_ns0()
        })
        .expect("invertible"),
    );

    let err = f.apply_refused(vec![Step::Firewall(batch)]);

    assert!(matches!(err, HelperError::Os { .. }), "{err:?}");
    f.assert_snapshot_is(&before);
}

// ---------------------------------------------------------------------------
// Atomic plans.

#[test]
fn an_atomic_plan_that_fails_midway_leaves_the_kernel_as_before() {
    let mut f = Fixture::with_firewall();
    let before = f.settled_snapshot();
    let ns = f.ns("atomic");
    let inside = dp::Netns::Named(ns.clone());

    let err = f.apply_refused(vec![
        Step::CreateNetns { name: ns.clone() },
        veth("arc_ns0", "ppat0p", inside.clone()),
        add_address(dp::Netns::Host, "arc_ns0", v4("100.115.92.129"), 30),
        Step::Firewall(connected_namespace(&arc_ns0())),
        link_up(dp::Netns::Host, "arc_ns0"),
        Step::AddRule(fwmark_rule(false)),
        add_address(inside, "nosuch0", v4("100.115.92.130"), 30),
    ]);

    let text = err.to_string();
    assert!(
        text.contains("100.115.92.130/30") && text.contains("nosuch0"),
        "the error does not name the failing step: {text}"
    );
    f.assert_snapshot_is(&before);
    assert!(f.prefix.entries().expect("list").is_empty());
}

#[test]
fn a_best_effort_plan_runs_every_step_and_reports_each_failure() {
    let mut f = Fixture::new();
    let before = f.settled_snapshot();

    let report = f
        .try_apply(
            ApplyMode::BestEffort,
            vec![
                add_address(dp::Netns::Host, "nosuch0", v4("10.9.9.9"), 24),
                Step::AddRule(fwmark_rule(false)),
                add_address(dp::Netns::Host, "nosuch1", v4("10.9.9.9"), 24),
            ],
        )
        .expect("a best-effort plan is answered with a report");

    assert_eq!(report.failures.len(), 2, "{:?}", report.failures);
    assert!(
        report.failures[0].starts_with("step 1:"),
        "{:?}",
        report.failures
    );
    assert!(
        report.failures[1].starts_with("step 3:"),
        "{:?}",
        report.failures
    );
    assert_eq!(rule_lines(&f, "1234:").len(), 1, "step 2 ran");
    f.apply(vec![Step::DeleteRule(fwmark_rule(false))]);
    f.assert_snapshot_is(&before);
}

// ---------------------------------------------------------------------------
// RemoveOwned.

#[test]
fn remove_owned_restores_the_kernel_and_keeps_what_others_added() {
    let mut f = Fixture::new();
    // The host's own things, which must survive.
    for argv in [
        &[
            "ip", "link", "add", "host0", "type", "veth", "peer", "name", "host1",
        ][..],
        &["ip", "link", "set", "host0", "up"],
        &["ip", "link", "set", "host1", "up"],
        &["ip", "addr", "add", "192.0.2.1/24", "dev", "host0"],
        &[
            "ip", "rule", "add", "pref", "3000", "fwmark", "0x1", "lookup", "100",
        ],
        &[
            "ip",
            "route",
            "add",
            "198.51.100.0/24",
            "via",
            "192.0.2.254",
            "table",
            "100",
        ],
        &["iptables", "-A", "FORWARD", "-i", "host0", "-j", "ACCEPT"],
        &[
            "iptables",
            "-t",
            "mangle",
            "-A",
            "PREROUTING",
            "-i",
            "host0",
            "-j",
            "MARK",
            "--set-mark",
            "1",
        ],
        &[
            "iptables",
            "-t",
            "nat",
            "-A",
            "POSTROUTING",
            "-o",
            "host0",
            "-j",
            "MASQUERADE",
        ],
        &["ip6tables", "-A", "FORWARD", "-i", "host0", "-j", "ACCEPT"],
        &[
            "ip6tables",
            "-t",
            "mangle",
            "-A",
            "PREROUTING",
            "-i",
            "host0",
            "-j",
            "MARK",
            "--set-mark",
            "1",
        ],
        &[
            "ip6tables",
            "-t",
            "nat",
            "-A",
            "POSTROUTING",
            "-o",
            "host0",
            "-j",
            "MASQUERADE",
        ],
    ] {
        f.exec(argv);
    }
    wait_for("host0 to come up", || {
        f.ip_json(&["link", "show", "dev", "host0"])[0]["operstate"] == "UP"
    });
    let before = f.settled_snapshot();
    f.setup_firewall();
    let ns1 = f.ns("one");
    let ns2 = f.ns("two");
    let inside = dp::Netns::Named(ns1.clone());
    let ns = arc_ns0();
    let uplink = ifname("host0");
    f.apply(vec![
        Step::CreateNetns { name: ns1.clone() },
        Step::CreateNetns { name: ns2.clone() },
        veth("arc_ns0", "arc_ns0p", inside.clone()),
        veth("ppo0", "ppo0p", dp::Netns::Host),
        add_address(dp::Netns::Host, "arc_ns0", v4("100.115.92.129"), 30),
        add_address(inside.clone(), "arc_ns0p", v4("100.115.92.130"), 30),
        link_up(dp::Netns::Host, "arc_ns0"),
        link_up(inside.clone(), "arc_ns0p"),
        Step::AddRoute {
            netns: inside,
            route: route(
                v4("0.0.0.0"),
                0,
                Some(v4("100.115.92.129")),
                "arc_ns0p",
                254,
            ),
        },
        Step::AddRoute {
            netns: dp::Netns::Host,
            route: route(
                v4("10.50.0.0"),
                16,
                Some(v4("100.115.92.130")),
                "arc_ns0",
                254,
            ),
        },
        Step::SyncTable {
            table: 1002,
            routes: vec![route(
                v4("0.0.0.0"),
                0,
                Some(v4("192.0.2.254")),
                "host0",
                1002,
            )],
        },
        Step::AddRule(fwmark_rule(false)),
        Step::AddRule(fwmark_rule(true)),
        Step::AddRule(suppress_rule(false)),
        Step::Firewall(connected_namespace(&ns)),
        Step::Firewall(guest::uplink_pinning(&uplink, 1002)),
        Step::Firewall(patchpanel_firewall::counters::accounting_chains(&uplink)),
        Step::Firewall(patchpanel_firewall::counters::accounting_jumps(&uplink)),
    ]);
    assert_eq!(f.prefix.entries().expect("list").len(), 2);

    let report = f
        .writer
        .remove_owned(false)
        .expect("the writer answers")
        .unwrap_or_else(|e| panic!("RemoveOwned: {e}"));

    assert!(report.failures.is_empty(), "{:?}", report.failures);
    f.assert_snapshot_is(&before);
    assert!(
        f.prefix.entries().expect("list").is_empty(),
        "namespaces with the prefix are left"
    );
}

/// On a host with no firewall at all, `iptables-nft` has to create the
/// built-in tables to hold patchpanel's hooks; those empty tables (no
/// rules, ACCEPT policies) are all that stays after `RemoveOwned`.
#[test]
fn remove_owned_on_a_host_without_a_firewall_leaves_only_empty_builtin_tables() {
    let mut f = Fixture::new();
    let before = f.settled_snapshot();
    f.setup_firewall();

    let report = f
        .writer
        .remove_owned(false)
        .expect("the writer answers")
        .unwrap_or_else(|e| panic!("RemoveOwned: {e}"));

    assert!(report.failures.is_empty(), "{:?}", report.failures);
    let after = kernel_snapshot(&f.netns).expect("snapshot");
    let (added, removed) = added_and_removed(&before, &after);
    assert!(removed.is_empty(), "removed: {removed:#?}");
    let builtin_chains = ["PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"];
    for line in &added {
        let empty_table_line = ["*filter", "*mangle", "*nat", "COMMIT"].contains(&line.as_str())
            || builtin_chains
                .iter()
                .any(|c| *line == format!(":{c} ACCEPT"));
        assert!(
            empty_table_line,
            "left behind: {line:?}\nall added: {added:#?}"
        );
    }
}

#[test]
fn remove_owned_keeps_the_accounting_chains_when_asked() {
    let mut f = Fixture::with_firewall();
    let uplink = ifname("eth9");
    f.apply(vec![
        Step::Firewall(patchpanel_firewall::counters::accounting_chains(&uplink)),
        Step::Firewall(patchpanel_firewall::counters::accounting_jumps(&uplink)),
    ]);

    let report = f
        .writer
        .remove_owned(true)
        .expect("the writer answers")
        .unwrap_or_else(|e| panic!("RemoveOwned: {e}"));

    assert!(report.failures.is_empty(), "{:?}", report.failures);
    for (save, v6) in [("iptables-save", false), ("ip6tables-save", true)] {
        let text = f.netns.firewall_save(v6, Some("mangle")).expect(save);
        assert!(
            text.contains(":rx_eth9"),
            "{save}: rx_eth9 is gone:\n{text}"
        );
        assert!(
            text.contains(":tx_eth9"),
            "{save}: tx_eth9 is gone:\n{text}"
        );
        assert!(
            !text.contains("-j rx_eth9") && !text.contains("-j tx_eth9"),
            "{save}: the jumps stay:\n{text}"
        );
    }
}

// ---------------------------------------------------------------------------
// Bad input.

#[test]
fn apply_before_configure_writer_is_refused() {
    let netns = Netns::new().expect("test namespace");
    let prefix = NetnsPrefix::new();
    let mut writer = WriterClient::spawn(&netns).expect("start the writer");

    let answer = writer
        .apply(plan(
            ApplyMode::Atomic,
            vec![Step::CreateNetns {
                name: prefix.name("early"),
            }],
        ))
        .expect("the writer answers");

    let err = answer.expect_err("applied before ConfigureWriter");
    let msg = expect_refused(&err);
    assert!(msg.contains("not been configured"), "{msg}");
    assert!(prefix.entries().expect("list").is_empty());
}

#[test]
fn a_step_naming_a_namespace_without_the_prefix_is_refused_and_changes_nothing() {
    let mut f = Fixture::new();
    let before = f.settled_snapshot();
    let foreign = NetnsName::new(&format!("pptforeign{}", std::process::id())).expect("name");

    let err = f.apply_refused(vec![
        veth("ppf0", "ppf0p", dp::Netns::Host),
        Step::CreateNetns {
            name: foreign.clone(),
        },
    ]);

    let msg = expect_refused(&err);
    assert!(msg.contains("is not patchpanel's"), "{msg}");
    assert!(!netns_file(&foreign).exists());
    f.assert_snapshot_is(&before);
}

#[test]
fn delete_netns_refuses_a_namespace_without_the_prefix_and_it_survives() {
    let mut f = Fixture::new();
    let theirs = NetnsName::new(f.netns.name()).expect("name");

    let err = f.apply_refused(vec![Step::DeleteNetns {
        name: theirs.clone(),
    }]);

    expect_refused(&err);
    assert!(netns_file(&theirs).exists(), "the test namespace is gone");
}

#[test]
fn a_malformed_packet_is_dropped_and_the_writer_keeps_serving() {
    let mut f = Fixture::new();

    f.writer.send_raw(&[0xff, 0xff, 0xff, 0xff]).expect("send");

    assert!(
        !f.writer
            .has_message_within(Duration::from_millis(300))
            .expect("poll"),
        "the writer answered a packet that has no request id"
    );
    f.apply(vec![Step::CreateNetns {
        name: f.ns("after"),
    }]);
    assert!(
        f.writer.log().contains("dropped a bad message"),
        "the writer did not report the bad packet:\n{}",
        f.writer.log()
    );
}

#[test]
fn an_oversize_packet_is_dropped_and_the_writer_keeps_serving() {
    let mut f = Fixture::new();

    f.writer
        .send_raw(&vec![0u8; MAX_MESSAGE_SIZE + 100])
        .expect("send");

    assert!(
        !f.writer
            .has_message_within(Duration::from_millis(300))
            .expect("poll"),
        "the writer answered a packet that has no request id"
    );
    f.apply(vec![Step::CreateNetns {
        name: f.ns("after"),
    }]);
    let log = f.writer.log();
    assert!(
        log.contains("dropped a bad message") && log.contains("larger than"),
        "the writer did not report the oversize packet:\n{log}"
    );
}
