//! Chrome's notifications as Chrome sends them: an ARC VPN app's connection
//! named by `NotifyARCVPNSocketConnectionEvent` is counted as VPN from then
//! on (its conntrack mark, over ctnetlink); socket events of sockets that
//! are not ARC's, or malformed, are refused; `SetFeatureFlag` answers the
//! previous value and keeps it across a kill -9 of the manager;
//! `NotifyAndroidInteractiveState` is accepted.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Stdio};

use patchpanel_client::Client;
use patchpanel_proto::set_feature_flag_request::FeatureFlag;
use patchpanel_proto::socket_connection_event::{IpProtocol, QosCategory, SocketEvent};
use patchpanel_proto::traffic_counter::{IpFamily, Source};
use patchpanel_proto::{
    NotifyARCVPNSocketConnectionEventRequest, NotifyAndroidInteractiveStateRequest,
    NotifySocketConnectionEventRequest, SocketConnectionEvent, TrafficCounter,
};
use patchpanel_tests::vm::FakeContainer;
use patchpanel_tests::world::{World, REMOTE_HOST};
use patchpanel_tests::{traffic, BusClient, MethodError};
use prost::Message as _;

const ARC_ETH0: &str = "100.115.92.6";
const ARC_ETH0_GATEWAY: &str = "100.115.92.5";
const PAYLOAD: usize = 300_000;

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn counter(world: &World, source: Source) -> TrafficCounter {
    Client::connect_to(world.bus.address())
        .expect("client")
        .get_traffic_counters(&["eth0"])
        .expect("GetTrafficCounters")
        .into_iter()
        .find(|c| c.source == source as i32 && c.ip_family == IpFamily::Ipv4 as i32)
        .unwrap_or_default()
}

fn event(sport: u16, dport: u16) -> SocketConnectionEvent {
    SocketConnectionEvent {
        saddr: ARC_ETH0
            .parse::<std::net::Ipv4Addr>()
            .expect("address")
            .octets()
            .to_vec(),
        sport: i32::from(sport),
        daddr: REMOTE_HOST
            .parse::<std::net::Ipv4Addr>()
            .expect("address")
            .octets()
            .to_vec(),
        dport: i32::from(dport),
        proto: IpProtocol::Tcp as i32,
        event: SocketEvent::Open as i32,
        category: QosCategory::UnknownCategory as i32,
    }
}

fn notify_vpn(bus: &str, msg: SocketConnectionEvent) -> Result<Vec<u8>, MethodError> {
    BusClient::connect(bus).expect("bus").call_bytes(
        "NotifyARCVPNSocketConnectionEvent",
        &NotifyARCVPNSocketConnectionEventRequest { msg: Some(msg) }.encode_to_vec(),
    )
}

#[test]
fn an_arc_vpn_connection_is_counted_as_vpn_once_chrome_names_it() {
    let world = World::start().expect("world");
    let bus = world.bus.address().to_string();
    let _sink = Running(
        traffic::listener(
            world.internet.upstream.name(),
            &format!(
                "import socket\n\
                 s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
                 s.bind(('{REMOTE_HOST}',9200)); s.listen(8)\n\
                 print('listening', flush=True)\n\
                 while True:\n    c,a=s.accept()\n    while c.recv(65536): pass\n    c.close()\n"
            ),
        )
        .expect("sink"),
    );
    let container = FakeContainer::start().expect("container");
    let c = Client::connect_to(&bus).expect("client");
    c.arc_startup(container.pid()).expect("ArcStartup");
    container
        .bring_up("eth0", Some(ARC_ETH0_GATEWAY))
        .expect("eth0");
    // Android's VPN app: a connection out, held open; it sends when told.
    let mut app = Running(
        container
            .command(&[
                "/usr/bin/python3",
                "-u",
                "-c",
                &format!(
                    "import socket, sys\n\
                     c=socket.create_connection(('{REMOTE_HOST}',9200),timeout=10)\n\
                     print(c.getsockname()[1], flush=True)\n\
                     sys.stdin.readline(); c.sendall(b'x'*{PAYLOAD})\n\
                     c.shutdown(socket.SHUT_WR); c.recv(1); print('sent', flush=True)\n"
                ),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("the app"),
    );
    let mut out = BufReader::new(app.0.stdout.take().expect("stdout"));
    let mut line = String::new();
    out.read_line(&mut line).expect("port");
    let sport: u16 = line.trim().parse().unwrap_or_else(|_| panic!("{line:?}"));
    let vpn_before = counter(&world, Source::Vpn);
    let arc_before = counter(&world, Source::Arc);

    // A flow that does not exist: accepted, nothing counted differently.
    notify_vpn(&bus, event(sport.wrapping_add(1).max(1), 9200)).expect("unknown flow");
    notify_vpn(&bus, event(sport, 9200)).expect("NotifyARCVPNSocketConnectionEvent");
    writeln!(app.0.stdin.as_mut().expect("stdin")).expect("go");
    line.clear();
    out.read_line(&mut line).expect("sent");
    assert_eq!(line.trim(), "sent");

    let vpn = counter(&world, Source::Vpn);
    let arc = counter(&world, Source::Arc);
    assert!(
        vpn.tx_bytes - vpn_before.tx_bytes >= PAYLOAD as u64,
        "the app's payload is not counted as VPN: {vpn_before:?} -> {vpn:?}\n{}",
        world.daemon.log()
    );
    assert!(
        arc.tx_bytes - arc_before.tx_bytes < (PAYLOAD / 10) as u64,
        "the app's payload is still counted as ARC: {arc_before:?} -> {arc:?}"
    );
    assert!(world.daemon.log().contains("counted as ARC_VPN"));
    c.arc_shutdown(container.pid()).expect("ArcShutdown");
}

#[test]
fn socket_events_that_are_not_arcs_or_malformed_are_refused() {
    let world = World::start().expect("world");
    let bus = world.bus.address().to_string();
    // ARC is not running: no socket is ARC's.
    let err = notify_vpn(&bus, event(40000, 443)).expect_err("no ARC");
    assert!(
        err.name.ends_with("InvalidArgument") && err.message.contains("ARC is not running"),
        "{err:?}"
    );
    let container = FakeContainer::start().expect("container");
    Client::connect_to(&bus)
        .expect("client")
        .arc_startup(container.pid())
        .expect("ArcStartup");
    let client = BusClient::connect(&bus).expect("bus");
    let bad: Vec<(SocketConnectionEvent, &str)> = vec![
        (
            SocketConnectionEvent {
                saddr: vec![192, 0, 2, 2],
                ..event(40000, 443)
            },
            "not an address of ARC",
        ),
        (
            SocketConnectionEvent {
                saddr: vec![1, 2, 3],
                ..event(40000, 443)
            },
            "3 bytes",
        ),
        (
            SocketConnectionEvent {
                sport: 0,
                ..event(40000, 443)
            },
            "sport 0",
        ),
        (
            SocketConnectionEvent {
                proto: 7,
                ..event(40000, 443)
            },
            "proto 7",
        ),
    ];
    for (msg, why) in bad {
        for method in [
            "NotifySocketConnectionEvent",
            "NotifyARCVPNSocketConnectionEvent",
        ] {
            let body = NotifySocketConnectionEventRequest {
                msg: Some(msg.clone()),
            }
            .encode_to_vec();
            let err = client.call_bytes(method, &body).expect_err(why);
            assert!(err.message.contains(why), "{method} {why}: {err:?}");
        }
    }
    let err = client
        .call_bytes(
            "NotifySocketConnectionEvent",
            &NotifySocketConnectionEventRequest { msg: None }.encode_to_vec(),
        )
        .expect_err("no msg");
    assert!(err.message.contains("missing"), "{err:?}");
    // A good one of ARC's is accepted (no QoS datapath to change).
    client
        .call_bytes(
            "NotifySocketConnectionEvent",
            &NotifySocketConnectionEventRequest {
                msg: Some(event(40000, 443)),
            }
            .encode_to_vec(),
        )
        .expect("ARC's socket");
    client
        .call_bytes(
            "NotifyAndroidInteractiveState",
            &NotifyAndroidInteractiveStateRequest { interactive: false }.encode_to_vec(),
        )
        .expect("interactive state");
}

#[test]
fn feature_flags_answer_the_previous_value_and_outlive_a_crash() {
    let mut world = World::start().expect("world");
    let c = Client::connect_to(world.bus.address()).expect("client");
    assert!(!c.set_feature_flag(FeatureFlag::WifiQos, true).expect("set"));
    assert!(c
        .set_feature_flag(FeatureFlag::WifiQos, true)
        .expect("again"));
    assert!(!c.set_feature_flag(FeatureFlag::Clat, false).expect("clat"));
    c.notify_wifi_multicast_lock(true).expect("lock");
    // An unknown flag.
    let err = BusClient::connect(world.bus.address())
        .expect("bus")
        .call_bytes("SetFeatureFlag", &[0x08, 0x07])
        .expect_err("flag 7");
    assert!(err.message.contains("unknown feature flag 7"), "{err:?}");

    let successor = world.crash_and_succeed("").expect("successor");
    let c = Client::connect_to(world.bus.address()).expect("client");
    assert!(
        c.set_feature_flag(FeatureFlag::WifiQos, false)
            .expect("after the crash"),
        "WIFI_QOS was forgotten; log:\n{}",
        successor.log()
    );
    drop(successor);
}
