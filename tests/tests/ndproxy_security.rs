//! A hostile guest against the ND proxy (security review findings 1 and 2):
//!
//! ```text
//!  upstream (radvd, 2001:db8:1::/64, router 2001:db8:1::1)
//!     up0 === eth0  [patchpaneld: ndproxy helper]  arc_nsN === guest namespaces
//! ```
//!
//! The guests are namespaces connected with `ConnectNamespace`, which get a
//! SLAAC address through the proxy. The attacker writes Ethernet frames on
//! its own interface with an `AF_PACKET` socket (Python, as root inside its
//! namespace, as the review did with scapy):
//! * forged Neighbor Advertisements (override flag, its own MAC) for the
//!   LAN router, an off-link host, the host's own global address and the
//!   other guest's address must get no route on the host and must not be
//!   relayed to the LAN, while the attacker's own SLAAC address stays
//!   routed;
//! * 5,000 NAs for random addresses in the uplink's /64 while another client
//!   calls GetDevices: the daemon and its ND proxy stay up, the routes stay
//!   within the per-downlink bound and no call takes seconds;
//! * the ND proxy killed again and again while serving (as a guest that can
//!   crash it would) is respawned each time and never makes the manager exit
//!   the tree;
//! * the ND proxy helper, driven directly, survives a manager that stops
//!   reading its channel, and every answer arrives, in order, once it reads
//!   again.
//!
//! Every namespace and process is removed on drop, also on failure.

use std::collections::BTreeSet;
use std::io::Read;
use std::os::fd::AsFd;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use patchpanel_client::Client;
use patchpanel_ipc::{
    Channel, ChannelError, Hello, HelperMessage, ManagerMessage, Reply, Request, Role,
    PROTOCOL_VERSION,
};
use patchpanel_proto::{ConnectNamespaceRequest, ConnectNamespaceResponse};
use patchpanel_tests::procfs::send_signal;
use patchpanel_tests::world::World;
use patchpanel_tests::{poll_until, traffic, BusClient, DirectHelper, Helper, Netns, ProcIdentity};
use serde_json::Value;

const PREFIX: &str = "2001:db8:1:";
const ROUTER: &str = "2001:db8:1::1";
const OFF_LINK_HOST: &str = "2001:db8:ffff::53";
/// The IPv6 source of every forged packet: a relayed copy keeps it, so the
/// upstream listener can tell a relayed forgery from anything else.
const FORGED_SOURCE: &str = "fe80::1:2";
/// The ND proxy's and the manager's per-downlink bound.
const MAX_ROUTES_PER_DOWNLINK: usize = 64;
const SLAAC_TIMEOUT: Duration = Duration::from_secs(30);
/// Generous: a claim is confirmed after 0.5 s and its route follows.
const SETTLE: Duration = Duration::from_secs(5);

const RADVD_CONF: &str = "interface up0 {
    AdvSendAdvert on;
    MinRtrAdvInterval 3;
    MaxRtrAdvInterval 4;
    prefix 2001:db8:1::/64 { AdvOnLink on; AdvAutonomous on; };
};
";

/// radvd in the upstream namespace, killed on drop.
struct Radvd {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for Radvd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn radvd(world: &World) -> Radvd {
    let up = &world.internet.upstream;
    up.exec_ok(&[
        "ip",
        "addr",
        "add",
        &format!("{ROUTER}/64"),
        "dev",
        "up0",
        "nodad",
    ])
    .expect("upstream v6");
    up.exec_ok(&["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"])
        .expect("forwarding");
    let dir = tempfile::tempdir().expect("dir");
    let conf = dir.path().join("radvd.conf");
    std::fs::write(&conf, RADVD_CONF).expect("conf");
    let child = Command::new("nsenter")
        .arg(format!("--net={}", up.path().display()))
        .args(["radvd", "-n", "-m", "stderr", "-C"])
        .arg(&conf)
        .arg("-p")
        .arg(dir.path().join("radvd.pid"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("radvd");
    Radvd { child, _dir: dir }
}

/// A global address in 2001:db8:1::/64 of `dev` in the namespace reached by
/// `nsenter --net=<path>`, once DAD is over.
fn global_address(netns_path: &str, dev: &str) -> Option<String> {
    let out = Command::new("nsenter")
        .arg(format!("--net={netns_path}"))
        .args([
            "ip", "-6", "-j", "addr", "show", "dev", dev, "scope", "global",
        ])
        .output()
        .ok()?;
    let v: Value = serde_json::from_slice(&out.stdout).ok()?;
    v.get(0)?["addr_info"]
        .as_array()?
        .iter()
        .filter(|a| a["tentative"].as_bool() != Some(true))
        .filter_map(|a| a["local"].as_str())
        .find(|a| a.starts_with(PREFIX))
        .map(String::from)
}

/// The /128 routes patchpanel installed in the daemon's namespace, as
/// (destination, device).
fn guest_routes(world: &World) -> Vec<(String, String)> {
    let out = world
        .netns
        .exec_ok(&["ip", "-6", "-j", "route", "show", "proto", "157"])
        .expect("ip route");
    let v: Value = serde_json::from_str(&out).unwrap_or(Value::Array(vec![]));
    v.as_array()
        .map(|routes| {
            routes
                .iter()
                .filter_map(|r| {
                    Some((
                        r["dst"].as_str()?.to_string(),
                        r["dev"].as_str()?.to_string(),
                    ))
                })
                .collect()
        })
        .unwrap_or_default()
}

fn route_dev(world: &World, addr: &str) -> Option<String> {
    guest_routes(world)
        .into_iter()
        .find(|(dst, _)| dst == addr)
        .map(|(_, dev)| dev)
}

/// Connects a namespace and waits for its SLAAC address.
fn guest(
    world: &World,
) -> (
    ConnectNamespaceResponse,
    patchpanel_client::Lifeline,
    String,
) {
    let (ns, lifeline) = Client::connect_to(world.bus.address())
        .expect("client")
        .connect_namespace(&ConnectNamespaceRequest {
            pid: -1,
            ..Default::default()
        })
        .expect("connect");
    let path = format!("/run/netns/{}", ns.netns_name);
    let addr = poll_until(SLAAC_TIMEOUT, || global_address(&path, &ns.peer_ifname))
        .unwrap_or_else(|| panic!("no SLAAC address in the guest\n{}", world.daemon.log()));
    (ns, lifeline, addr)
}

/// The Python that builds an unsolicited NA (override flag, TLLA = the
/// sender's MAC) from FORGED_SOURCE to ff02::1, as an Ethernet frame.
fn na_builder(ifname: &str) -> String {
    format!(
        r#"import socket, struct, os, time
def csum(b):
    if len(b) % 2: b += b'\0'
    s = sum(struct.unpack('!%dH' % (len(b) // 2), b))
    while s >> 16: s = (s & 0xffff) + (s >> 16)
    return ~s & 0xffff
sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
sock.bind(('{ifname}', 0))
mac = sock.getsockname()[4]
src = socket.inet_pton(socket.AF_INET6, '{FORGED_SOURCE}')
dst = socket.inet_pton(socket.AF_INET6, 'ff02::1')
def na(target):
    icmp = bytearray(struct.pack('!BBHI', 136, 0, 0, 0x20000000) + target + bytes([2, 1]) + mac)
    pseudo = src + dst + struct.pack('!I', len(icmp)) + b'\0\0\0\x3a'
    icmp[2:4] = struct.pack('!H', csum(pseudo + bytes(icmp)))
    ip = struct.pack('!IHBB', 0x60000000, len(icmp), 58, 255) + src + dst
    return b'\x33\x33\x00\x00\x00\x01' + mac + b'\x86\xdd' + ip + bytes(icmp)
"#
    )
}

/// Sends forged NAs for `targets` from the guest, three rounds.
fn send_forged_nas(ns: &ConnectNamespaceResponse, targets: &[&str]) {
    let list = targets
        .iter()
        .map(|t| format!("'{t}'"))
        .collect::<Vec<_>>()
        .join(", ");
    let script = format!(
        "{}\nfor _ in range(3):\n    for t in [{list}]:\n        sock.send(na(socket.inet_pton(socket.AF_INET6, t)))\n    time.sleep(0.3)\n",
        na_builder(&ns.peer_ifname)
    );
    let out = traffic::run(&ns.netns_name, 0, &script).expect("python3");
    assert!(
        out.status.success(),
        "forging NAs failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Sends `count` NAs for random addresses in 2001:db8:1::/64 from the
/// guest, about 1,000 a second.
fn flood(ns: &ConnectNamespaceResponse, count: usize) -> Child {
    let script = format!(
        "{}\nprefix = socket.inet_pton(socket.AF_INET6, '2001:db8:1::')[:8]\n\
         for i in range({count}):\n    sock.send(na(prefix + os.urandom(8)))\n    \
         if i % 100 == 99: time.sleep(0.1)\nprint('done', flush=True)\n",
        na_builder(&ns.peer_ifname)
    );
    traffic::spawn(&ns.netns_name, &script).expect("python3")
}

/// Records, in the upstream namespace, every NA that arrives on up0 from
/// FORGED_SOURCE (what the DUT relayed of the forgeries): one target per
/// line.
fn upstream_na_listener(world: &World) -> Child {
    let script = format!(
        r#"import socket
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x86dd))
s.bind(('up0', 0))
forged = socket.inet_pton(socket.AF_INET6, '{FORGED_SOURCE}')
print('listening', flush=True)
while True:
    data, addr = s.recvfrom(4096)
    if addr[2] == socket.PACKET_OUTGOING: continue
    ip = data[14:]
    if len(ip) < 64 or ip[6] != 58 or ip[40] != 136 or ip[8:24] != forged: continue
    print(socket.inet_ntop(socket.AF_INET6, ip[48:64]), flush=True)
"#
    );
    traffic::listener(world.internet.upstream.name(), &script).expect("listener")
}

fn stop_and_read(mut child: Child) -> String {
    let _ = child.kill();
    let _ = child.wait();
    let mut out = String::new();
    if let Some(mut stdout) = child.stdout.take() {
        let _ = stdout.read_to_string(&mut out);
    }
    out
}

#[test]
fn forged_nas_for_addresses_the_guest_may_not_claim_are_neither_routed_nor_relayed() {
    let world = World::start().expect("world");
    let _radvd = radvd(&world);
    let (victim, _victim_lifeline, victim_addr) = guest(&world);
    let (attacker, _attacker_lifeline, attacker_addr) = guest(&world);
    let dut_addr = poll_until(SLAAC_TIMEOUT, || {
        global_address(&world.netns.path().display().to_string(), "eth0")
    })
    .expect("the DUT's own global address");
    let routed = poll_until(SETTLE, || {
        (route_dev(&world, &victim_addr).as_deref() == Some(victim.host_ifname.as_str())
            && route_dev(&world, &attacker_addr).as_deref() == Some(attacker.host_ifname.as_str()))
        .then_some(())
    });
    assert!(
        routed.is_some(),
        "the guests' own addresses are not routed: {:?}\n{}",
        guest_routes(&world),
        world.daemon.log()
    );
    let listener = upstream_na_listener(&world);
    let forged = [
        ROUTER,
        OFF_LINK_HOST,
        dut_addr.as_str(),
        victim_addr.as_str(),
    ];

    send_forged_nas(&attacker, &forged);
    // Long enough for a claim to be confirmed and routed, had it been.
    std::thread::sleep(SETTLE);

    let routes = guest_routes(&world);
    let relayed = stop_and_read(listener);
    for target in [ROUTER, OFF_LINK_HOST, dut_addr.as_str()] {
        assert!(
            !routes.iter().any(|(dst, _)| dst == target),
            "{target} routed to a guest: {routes:?}\n{}",
            world.daemon.log()
        );
    }
    assert_eq!(
        route_dev(&world, &victim_addr).as_deref(),
        Some(victim.host_ifname.as_str()),
        "the victim's address was taken: {routes:?}"
    );
    assert_eq!(
        route_dev(&world, &attacker_addr).as_deref(),
        Some(attacker.host_ifname.as_str()),
        "the attacker's own SLAAC address must stay routed: {routes:?}"
    );
    let relayed: BTreeSet<&str> = relayed.lines().map(str::trim).collect();
    for target in forged {
        assert!(
            !relayed.contains(target),
            "the forged NA for {target} reached the LAN: {relayed:?}"
        );
    }
}

#[test]
fn an_na_flood_keeps_the_daemon_up_the_routes_bounded_and_get_devices_fast() {
    let mut world = World::start().expect("world");
    let _radvd = radvd(&world);
    let (attacker, _lifeline, attacker_addr) = guest(&world);
    let ndproxy = world.daemon.tree().expect("tree").helper(Helper::NdProxy);
    let ndproxy = ProcIdentity::of(ndproxy).expect("ndproxy");
    // GetDevices from another client, all along.
    let stop = Arc::new(AtomicBool::new(false));
    let caller = {
        let stop = stop.clone();
        let address = world.bus.address().to_string();
        std::thread::spawn(move || {
            let client = BusClient::connect(&address).expect("bus client");
            let mut latencies = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                let result = client.get_devices();
                latencies.push((t.elapsed(), result.is_ok()));
                std::thread::sleep(Duration::from_millis(20));
            }
            latencies
        })
    };

    let mut sender = flood(&attacker, 5000);
    let mut line = String::new();
    if let Some(mut out) = sender.stdout.take() {
        let _ = out.read_to_string(&mut line);
    }
    let _ = sender.wait();
    // Give the last claims time to be confirmed and routed.
    std::thread::sleep(SETTLE);
    stop.store(true, Ordering::Relaxed);
    let latencies = caller.join().expect("GetDevices thread");

    assert_eq!(line.trim(), "done", "the flood did not run");
    let routes = guest_routes(&world);
    let mine = routes
        .iter()
        .filter(|(_, dev)| *dev == attacker.host_ifname)
        .count();
    let slowest = latencies.iter().map(|(d, _)| *d).max().unwrap_or_default();
    let failed = latencies.iter().filter(|(_, ok)| !ok).count();
    eprintln!(
        "flood: {mine} routes to the guest; ND proxy {}; daemon {}; {} GetDevices calls, slowest {slowest:?}, {failed} failed",
        if ndproxy.is_gone() { "died" } else { "up" },
        match world.daemon.try_exit_status() {
            Ok(None) => "up".to_string(),
            other => format!("gone ({other:?})"),
        },
        latencies.len()
    );
    assert_eq!(
        world.daemon.try_exit_status().expect("poll"),
        None,
        "the daemon exited\n{}",
        world.daemon.log()
    );
    assert!(
        !ndproxy.is_gone(),
        "the ND proxy died under the flood\n{}",
        world.daemon.log()
    );
    assert!(
        mine <= MAX_ROUTES_PER_DOWNLINK,
        "{mine} routes to the flooding guest (of {} in all)",
        routes.len()
    );
    assert_eq!(
        route_dev(&world, &attacker_addr).as_deref(),
        Some(attacker.host_ifname.as_str()),
        "the guest's own address lost its route"
    );
    assert!(
        latencies.len() > 10,
        "too few GetDevices calls: {latencies:?}"
    );
    assert_eq!(failed, 0, "GetDevices failed during the flood");
    assert!(
        slowest < Duration::from_secs(2),
        "GetDevices took {slowest:?} during the flood"
    );
}

#[test]
fn an_nd_proxy_killed_again_and_again_while_serving_never_takes_the_tree_down() {
    let mut world = World::start().expect("world");
    let manager = world.daemon.pid();
    // More deaths in a row than a broken helper is allowed (six), each
    // after the instance is up and answered its replay, within 30 s.
    for round in 0..8 {
        let old = world.daemon.tree().expect("tree").helper(Helper::NdProxy);
        let old = ProcIdentity::of(old).expect("identity");
        send_signal(old.pid, libc::SIGKILL).expect("SIGKILL ndproxy");
        let new = poll_until(Duration::from_secs(10), || {
            let new = world.daemon.tree().ok()?.helper(Helper::NdProxy);
            // One "is up" line per instance: the first and one per kill so
            // far. (Counted, not looked up by pid: a helper's Hello can
            // arrive before the spawner reports its pid, and the line then
            // says "pid unknown".)
            let log = world.daemon.log();
            let ups = log
                .lines()
                .filter(|l| {
                    l.contains("patchpanel-ndproxy (pid ") && l.contains(") is up; replayed")
                })
                .count();
            let started = log.contains(&format!("patchpanel-ndproxy started as pid {new}"));
            (new != old.pid && old.is_gone() && started && ups >= round + 2).then_some(new)
        });
        assert!(
            new.is_some(),
            "round {round}: no new ND proxy\n{}",
            world.daemon.log()
        );
        // Let it answer its replay: it is serving.
        std::thread::sleep(Duration::from_millis(500));
    }

    let log = world.daemon.log();
    assert!(
        !log.contains("giving up on patchpanel-ndproxy"),
        "the manager gave up\n{log}"
    );
    assert_eq!(
        world.daemon.try_exit_status().expect("poll"),
        None,
        "the manager exited the tree\n{log}"
    );
    assert_eq!(world.daemon.pid(), manager);
}

/// The next message on a non-blocking channel, waiting up to `timeout`.
fn recv_within(channel: &Channel, timeout: Duration) -> Option<HelperMessage> {
    let deadline = Instant::now() + timeout;
    loop {
        match channel.recv::<HelperMessage>() {
            Ok(r) => return Some(r.msg),
            Err(ChannelError::WouldBlock) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(_) => return None,
        }
    }
}

#[test]
fn the_nd_proxy_helper_survives_a_manager_that_stops_reading_and_loses_no_answer() {
    let netns = Netns::new().expect("netns");
    let mut helper = DirectHelper::spawn(&netns, Helper::NdProxy, &[]).expect("helper");
    let fd = helper
        .ipc()
        .expect("ipc")
        .as_fd()
        .try_clone_to_owned()
        .expect("dup");
    let channel = Channel::from_fd(fd).expect("channel");
    channel.set_nonblocking(true).expect("nonblocking");
    let hello = recv_within(&channel, Duration::from_secs(10));
    assert!(
        matches!(hello, Some(HelperMessage::Hello(ref h)) if h.role == Role::NdProxy),
        "{hello:?}; log:\n{}",
        helper.log()
    );
    channel
        .send(
            &ManagerMessage::Hello(Hello {
                protocol_version: PROTOCOL_VERSION,
                role: Role::Manager,
            }),
            &[],
        )
        .expect("hello");

    // Far more requests than the channel holds answers, none read.
    let mut sent = 0u64;
    for nonce in 1..=600u64 {
        let request = ManagerMessage::Request {
            id: nonce,
            body: Request::Ping { nonce },
        };
        match channel.send(&request, &[]) {
            Ok(()) => sent = nonce,
            Err(ChannelError::WouldBlock) => {
                // The helper is behind on reading: let it catch up.
                std::thread::sleep(Duration::from_millis(50));
                if channel.send(&request, &[]).is_err() {
                    break;
                }
                sent = nonce;
            }
            Err(e) => panic!("send: {e}"),
        }
    }
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        helper.try_exit_status().expect("poll"),
        None,
        "the helper died of backpressure; log:\n{}",
        helper.log()
    );

    let mut answered = Vec::new();
    while let Some(msg) = recv_within(&channel, Duration::from_secs(5)) {
        if let HelperMessage::Response { id, result } = msg {
            assert_eq!(result, Ok(Reply::Pong { nonce: id }));
            answered.push(id);
        }
        if answered.len() as u64 == sent {
            break;
        }
    }
    assert!(sent > 300, "only {sent} requests went out");
    assert_eq!(
        answered,
        (1..=sent).collect::<Vec<_>>(),
        "answers lost or reordered; log:\n{}",
        helper.log()
    );
    assert_eq!(helper.try_exit_status().expect("poll"), None);
}
