//! GetTrafficCounters end to end: known byte counts sent from a connected
//! namespace and from local processes of tagged uids show up per source and
//! family; counts survive a manager restart.

use std::process::Child;
use std::time::Duration;

use patchpanel_client::Client;
use patchpanel_proto::traffic_counter::{IpFamily, Source};
use patchpanel_proto::{ConnectNamespaceRequest, TrafficCounter};
use patchpanel_tests::world::{World, REMOTE_HOST};
use patchpanel_tests::{poll_until, traffic, Daemon, DaemonOptions};

/// Bytes each test sends; headers add a few percent on top.
const PAYLOAD: usize = 200_000;

/// A sink in the upstream namespace that reads until EOF, repeatedly.
fn sink(world: &World, port: u16) -> Child {
    traffic::listener(
        world.internet.upstream.name(),
        &format!(
            "import socket\n\
             s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
             s.bind(('{REMOTE_HOST}',{port})); s.listen(8)\n\
             print('listening', flush=True)\n\
             while True:\n    c,a=s.accept()\n    while c.recv(65536): pass\n    c.close()\n"
        ),
    )
    .expect("sink")
}

/// Sends PAYLOAD bytes to the sink from namespace `netns` as `uid`.
fn send(netns: &str, uid: u32, port: u16) {
    let out = traffic::run(
        netns,
        uid,
        &format!(
            "import socket\n\
             c=socket.create_connection(('{REMOTE_HOST}',{port}),timeout=5)\n\
             c.sendall(b'x'*{PAYLOAD}); c.shutdown(socket.SHUT_WR); c.recv(1); c.close()\n"
        ),
    )
    .expect("send");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn counters(world: &World) -> Vec<TrafficCounter> {
    Client::connect_to(world.bus.address())
        .expect("client")
        .get_traffic_counters(&["eth0"])
        .expect("GetTrafficCounters")
}

fn find(c: &[TrafficCounter], source: Source, family: IpFamily) -> Option<TrafficCounter> {
    c.iter()
        .find(|c| c.source == source as i32 && c.ip_family == family as i32 && c.device == "eth0")
        .cloned()
}

/// tx must cover the payload, with at most 15% of headers on top.
fn assert_tx_about(c: &TrafficCounter, at_least: u64) {
    assert!(
        c.tx_bytes >= at_least && c.tx_bytes <= at_least + at_least * 15 / 100 + 20_000,
        "tx {} for a payload of {at_least}: {c:?}",
        c.tx_bytes
    );
    assert!(
        c.rx_bytes > 0,
        "the replies (ACKs) are counted as rx: {c:?}"
    );
}

#[test]
fn a_namespace_is_counted_under_its_traffic_source() {
    let world = World::start().expect("world");
    let server = sink(&world, 9000);
    let (ns, _lifeline) = Client::connect_to(world.bus.address())
        .expect("client")
        .connect_namespace(&ConnectNamespaceRequest {
            pid: -1,
            traffic_source: Source::Arc as i32,
            ..Default::default()
        })
        .expect("connect");
    send(&ns.netns_name, 0, 9000);
    let c = counters(&world);
    let arc = find(&c, Source::Arc, IpFamily::Ipv4).unwrap_or_else(|| panic!("{c:#?}"));
    assert_tx_about(&arc, PAYLOAD as u64);
    traffic::stop(server);
}

#[test]
fn local_traffic_is_counted_by_uid() {
    let world = World::start_with(DaemonOptions {
        extra_config: "[traffic_sources]\nnobody = \"user\"\n".into(),
        ..Default::default()
    })
    .expect("world");
    let server = sink(&world, 9001);
    let host = world.netns.name().to_string();
    send(&host, 65534, 9001);
    send(&host, 0, 9001);
    send(&host, 0, 9001);
    let c = counters(&world);
    let user = find(&c, Source::User, IpFamily::Ipv4).unwrap_or_else(|| panic!("{c:#?}"));
    assert_tx_about(&user, PAYLOAD as u64);
    let system = find(&c, Source::System, IpFamily::Ipv4).unwrap_or_else(|| panic!("{c:#?}"));
    assert_tx_about(&system, 2 * PAYLOAD as u64);
    traffic::stop(server);
}

#[test]
fn counters_survive_a_manager_restart() {
    let mut world = World::start().expect("world");
    let server = sink(&world, 9002);
    let host = world.netns.name().to_string();
    send(&host, 0, 9002);
    let before = find(&counters(&world), Source::System, IpFamily::Ipv4).expect("counted");
    world.daemon.signal(libc::SIGTERM).expect("SIGTERM");
    world
        .daemon
        .wait_exit(Duration::from_secs(10))
        .expect("wait");
    let mut again = Daemon::start_with(
        &world.netns,
        &world.bus,
        DaemonOptions {
            successor_of: Some((
                world.daemon.state_dir().to_path_buf(),
                world.daemon.netns_prefix().to_string(),
            )),
            ..Default::default()
        },
    )
    .expect("restart");
    again.wait_ready().expect("ready");
    let after = poll_until(Duration::from_secs(5), || {
        find(&counters(&world), Source::System, IpFamily::Ipv4)
    })
    .expect("counted after the restart");
    assert!(
        after.tx_bytes >= before.tx_bytes,
        "the counts went back: {before:?} -> {after:?}"
    );
    drop(again);
    traffic::stop(server);
}

#[test]
fn unknown_or_malformed_devices_are_refused() {
    let world = World::start().expect("world");
    let c = Client::connect_to(world.bus.address()).expect("client");
    match c.get_traffic_counters(&["eth0 -j ACCEPT"]) {
        Err(patchpanel_client::Error::InvalidArgument(m)) => assert!(m.contains("devices"), "{m}"),
        other => panic!("{other:?}"),
    }
    // A device without traffic has no counters (not an error).
    assert!(c
        .get_traffic_counters(&["wlan7"])
        .expect("counters")
        .is_empty());
}

#[test]
fn a_vm_is_counted_as_crostini() {
    let world = World::start().expect("world");
    let server = sink(&world, 9003);
    let c = Client::connect_to(world.bus.address()).expect("client");
    let vm = c.terminavm_startup(11).expect("TerminaVmStartup");
    let host = patchpanel_proto::ipv4_from_addr4(&vm.gateway_ipv4_address).expect("gateway");
    let guest = patchpanel_proto::ipv4_from_addr4(&vm.ipv4_address).expect("address");
    let fake = patchpanel_tests::vm::FakeVm::boot(
        &world.netns,
        &vm.tap_device_ifname,
        "eth0",
        &guest.to_string(),
        30,
        &host.to_string(),
    )
    .expect("fake VM");
    send(fake.netns().name(), 0, 9003);
    let counted = counters(&world);
    let crostini = find(&counted, Source::CrostiniVm, IpFamily::Ipv4)
        .unwrap_or_else(|| panic!("{counted:#?}"));
    assert_tx_about(&crostini, PAYLOAD as u64);
    drop(fake);
    c.terminavm_shutdown(11).expect("shutdown");
    traffic::stop(server);
}
