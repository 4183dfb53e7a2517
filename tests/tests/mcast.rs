//! mDNS, SSDP and IPv4 broadcast for guests through the whole daemon: the
//! manager pairs each guest link with its uplink as guests come and go,
//! the sandboxed mcast-forwarder relays, and a killed forwarder resumes
//! from the replay log with no D-Bus call. The peers are independent
//! Python programs ([`patchpanel_tests::mcast`]); the topology is the
//! usual small internet ([`patchpanel_tests::world`]): the LAN is the
//! upstream namespace, 192.0.2.0/24, and the uplink address is 192.0.2.2.

use std::time::Duration;

use patchpanel_client::Client;
use patchpanel_tests::mcast::{self, Peer};
use patchpanel_tests::vm::{FakeContainer, FakeVm};
use patchpanel_tests::world::{World, GATEWAY, UPLINK_ADDR};
use patchpanel_tests::{poll_until, Helper};

/// ARC's address on its eth0 (the arc_eth0 bridge's guest) and its gateway.
const ARC_ETH0: &str = "100.115.92.6";
const ARC_ETH0_GATEWAY: &str = "100.115.92.5";
const ANSWER_SECS: u32 = 15;
const LINE: Duration = Duration::from_secs(20);

fn arc(world: &World) -> FakeContainer {
    let container = FakeContainer::start().expect("container");
    Client::connect_to(world.bus.address())
        .expect("client")
        .arc_startup(container.pid())
        .expect("ArcStartup");
    container
        .bring_up("eth0", Some(ARC_ETH0_GATEWAY))
        .expect("eth0 up");
    container
}

fn net_of(container: &FakeContainer) -> String {
    format!("/proc/{}/ns/net", container.pid())
}

fn termina(world: &World) -> (FakeVm, String) {
    let vm = Client::connect_to(world.bus.address())
        .expect("client")
        .terminavm_startup(7)
        .expect("TerminaVmStartup");
    let addr = patchpanel_proto::ipv4_from_addr4(&vm.ipv4_address).expect("address");
    let gateway = patchpanel_proto::ipv4_from_addr4(&vm.gateway_ipv4_address).expect("gateway");
    let fake = FakeVm::boot(
        &world.netns,
        &vm.tap_device_ifname,
        "eth0",
        &addr.to_string(),
        30,
        &gateway.to_string(),
    )
    .expect("vm");
    (fake, addr.to_string())
}

fn answer(q: Peer, world: &World) -> Vec<String> {
    let line = q
        .line(LINE)
        .unwrap_or_else(|| panic!("no answer; daemon log:\n{}", world.daemon.log()));
    line.split_whitespace().map(String::from).collect()
}

fn lan_query(world: &World, name: &str) -> Vec<String> {
    let q = mcast::mdns_query(
        world.internet.upstream.name(),
        "up0",
        "224.0.0.251",
        name,
        false,
        ANSWER_SECS,
    )
    .expect("query");
    answer(q, world)
}

#[test]
fn arc_answers_a_lan_query_with_the_uplink_address() {
    let world = World::start().expect("world");
    let arc = arc(&world);
    let _r = mcast::mdns_responder(
        &net_of(&arc),
        "eth0",
        "224.0.0.251",
        "android.local",
        ARC_ETH0,
        0,
    )
    .expect("responder");
    let a = lan_query(&world, "android.local");
    assert_eq!(a[1], UPLINK_ADDR, "{a:?}");
    assert_eq!(a[3..], [UPLINK_ADDR], "{a:?}");
}

#[test]
fn a_termina_vm_answers_a_lan_query_with_the_uplink_address_and_stops_with_the_vm() {
    let world = World::start().expect("world");
    let (vm, addr) = termina(&world);
    let responder = mcast::mdns_responder(
        vm.netns().name(),
        "eth0",
        "224.0.0.251",
        "penguin.local",
        &addr,
        0,
    )
    .expect("responder");
    let a = lan_query(&world, "penguin.local");
    assert_eq!(a[3..], [UPLINK_ADDR], "{a:?}");
    drop(responder);

    Client::connect_to(world.bus.address())
        .expect("client")
        .terminavm_shutdown(7)
        .expect("TerminaVmShutdown");
    let stopped = poll_until(Duration::from_secs(10), || {
        world
            .daemon
            .log()
            .lines()
            .any(|l| l.contains("multicast forwarding eth0 <-> ") && l.ends_with(" stopped"))
            .then_some(())
    });
    assert!(stopped.is_some(), "{}", world.daemon.log());
}

#[test]
fn a_lan_responder_and_a_lan_ssdp_device_are_found_from_arc() {
    let world = World::start().expect("world");
    let arc = arc(&world);
    let up = world.internet.upstream.name();
    let _r = mcast::mdns_responder(up, "up0", "224.0.0.251", "printer.local", GATEWAY, 0)
        .expect("responder");
    let q = mcast::mdns_query(
        &net_of(&arc),
        "eth0",
        "224.0.0.251",
        "printer.local",
        false,
        ANSWER_SECS,
    )
    .expect("query");
    assert_eq!(answer(q, &world)[3..], [GATEWAY]);

    let _device = mcast::ssdp_device(up, "up0", "239.255.255.250").expect("device");
    let s =
        mcast::ssdp_search(&net_of(&arc), "eth0", "239.255.255.250", ANSWER_SECS).expect("search");
    let line = s
        .line(LINE)
        .unwrap_or_else(|| panic!("no SSDP reply; {}", world.daemon.log()));
    assert_eq!(
        line,
        format!("reply {ARC_ETH0_GATEWAY} USN: uuid:test-device")
    );
}

fn wait_for(peer: &Peer, want: &str, world: &World) {
    let found = poll_until(LINE, || {
        peer.line(Duration::from_millis(200)).filter(|l| l == want)
    });
    assert!(
        found.is_some(),
        "no {want:?}; daemon log:\n{}",
        world.daemon.log()
    );
}

#[test]
fn broadcasts_cross_between_the_lan_and_arc() {
    let world = World::start().expect("world");
    let arc = arc(&world);
    let up = world.internet.upstream.name();
    let in_arc = mcast::udp_sink(&net_of(&arc), "eth0", 4445).expect("sink");
    let on_lan = mcast::udp_sink(up, "up0", 4446).expect("sink");
    let _s = mcast::udp_broadcast(up, "up0", "255.255.255.255", 4445, 40000, "to-arc", 25)
        .expect("send");
    wait_for(&in_arc, &format!("got {GATEWAY} 40000 to-arc"), &world);
    let _a = mcast::udp_broadcast(
        &net_of(&arc),
        "eth0",
        "255.255.255.255",
        4446,
        40001,
        "from-arc",
        25,
    )
    .expect("send");
    wait_for(
        &on_lan,
        &format!("got {UPLINK_ADDR} 40001 from-arc"),
        &world,
    );
}

/// The world's uplink address is added without `brd` (as `ip addr add
/// 192.0.2.2/24 dev eth0` does): the kernel still has its broadcast route
/// for 192.0.2.255 and delivers such packets as broadcasts, so they are
/// forwarded too.
#[test]
fn a_directed_broadcast_on_an_uplink_without_brd_reaches_arc() {
    let world = World::start().expect("world");
    let brd = world
        .netns
        .exec_ok(&["ip", "-4", "-o", "addr", "show", "dev", "eth0"])
        .expect("ip");
    assert!(!brd.contains(" brd "), "the uplink has no brd: {brd}");
    let arc = arc(&world);
    let up = world.internet.upstream.name();
    let in_arc = mcast::udp_sink(&net_of(&arc), "eth0", 4445).expect("sink");
    let _s =
        mcast::udp_broadcast(up, "up0", "192.0.2.255", 4445, 40002, "directed", 25).expect("send");
    wait_for(&in_arc, &format!("got {GATEWAY} 40002 directed"), &world);
}

/// On a /31 both addresses are hosts (RFC 3021): a datagram to the
/// prefix's all-ones address is unicast to the host and never forwarded.
#[test]
fn a_point_to_point_uplink_forwards_no_unicast_as_a_broadcast() {
    let world = World::start().expect("world");
    let up = world.internet.upstream.name().to_string();
    for (netns, old, new) in [
        (
            world.netns.name().to_string(),
            "192.0.2.2/24",
            "192.0.2.3/31",
        ),
        (up.clone(), "192.0.2.1/24", "192.0.2.2/31"),
    ] {
        for args in [
            vec!["ip", "-n", &netns, "addr", "del", old, "dev"],
            vec!["ip", "-n", &netns, "addr", "add", new, "dev"],
        ] {
            let dev = if netns == up { "up0" } else { "eth0" };
            let mut full = args.clone();
            full.push(dev);
            let out = std::process::Command::new(full[0])
                .args(&full[1..])
                .output()
                .expect("ip");
            assert!(out.status.success(), "{full:?}: {out:?}");
        }
    }
    let arc = arc(&world);
    let in_arc = mcast::udp_sink(&net_of(&arc), "eth0", 4445).expect("sink");
    // The host listens on the port, so ARC's inbound DNAT leaves unicast
    // to it alone: whatever reaches ARC was forwarded as a broadcast.
    let on_host = mcast::udp_sink(world.netns.name(), "eth0", 4445).expect("host sink");
    // The all-ones address of 192.0.2.2/31 is the daemon's own address.
    let unicast =
        mcast::udp_broadcast(&up, "up0", "192.0.2.3", 4445, 40003, "unicast", 10).expect("send");
    let _ = unicast.finish(Duration::from_secs(10));
    // The control: a limited broadcast sent after them is forwarded.
    let _c = mcast::udp_broadcast(&up, "up0", "255.255.255.255", 4445, 40004, "control", 25)
        .expect("send");
    let mut seen = Vec::new();
    let found = poll_until(LINE, || {
        let line = in_arc.line(Duration::from_millis(200))?;
        seen.push(line.clone());
        line.ends_with("control").then_some(())
    });
    assert!(
        found.is_some(),
        "the control broadcast did not arrive; daemon log:\n{}",
        world.daemon.log()
    );
    assert!(
        !seen.iter().any(|l| l.ends_with("unicast")),
        "a unicast to the /31's all-ones address was forwarded: {seen:?}"
    );
    assert!(
        on_host
            .finish(Duration::from_secs(1))
            .iter()
            .any(|l| l.ends_with("unicast")),
        "the unicast reached the host"
    );
}

#[test]
fn a_killed_forwarder_forwards_again_without_a_new_call() {
    let world = World::start().expect("world");
    let arc = arc(&world);
    let _r = mcast::mdns_responder(
        &net_of(&arc),
        "eth0",
        "224.0.0.251",
        "android.local",
        ARC_ETH0,
        0,
    )
    .expect("responder");
    assert_eq!(lan_query(&world, "android.local")[3..], [UPLINK_ADDR]);

    let old = world
        .daemon
        .tree()
        .expect("tree")
        .helper(Helper::McastForwarder);
    // SAFETY: kill takes integers only.
    unsafe { libc::kill(old as i32, libc::SIGKILL) };
    poll_until(Duration::from_secs(10), || {
        let p = world.daemon.tree().ok()?.helper(Helper::McastForwarder);
        (p != old).then_some(p)
    })
    .expect("mcast-forwarder respawned");
    assert_eq!(lan_query(&world, "android.local")[3..], [UPLINK_ADDR]);
}
