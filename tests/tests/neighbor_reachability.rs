//! `NeighborReachabilityEvent` on the real kernel: a fake shill lists eth0
//! (a veth to an upstream namespace whose `up0` is the gateway 192.0.2.1)
//! and configures it with that gateway, which is also its first DNS
//! server, a second on-link DNS server nobody holds (192.0.2.53) and an
//! off-link one (8.8.8.8). The daemon probes every 2 s
//! (`neighbor_probe_seconds`) instead of 60.
//!
//! The gateway answers: REACHABLE (GATEWAY_AND_DNS_SERVER); 192.0.2.53
//! never does: FAILED (DNS_SERVER), once however often it is probed. ARP
//! dropped in the upstream namespace: FAILED; let through again:
//! REACHABLE. Exactly one signal per transition, none for the off-link
//! server; after a clear nothing is watched any more.

use std::time::{Duration, Instant};

use patchpanel_client::{Client, Signal};
use patchpanel_proto::configure_network_request as area;
use patchpanel_proto::neighbor_reachability_event_signal::{EventType, Role};
use patchpanel_proto::{ConfigureNetworkRequest, NeighborReachabilityEventSignal};
use patchpanel_tests::shill_world::{self, ShillWorld};
use patchpanel_tests::world::GATEWAY;
use patchpanel_tests::PrivateBus;

fn start() -> ShillWorld {
    ShillWorld::start("neighbor_probe_seconds = 2\n").expect("a daemon following a fake shill")
}

/// What the tests do to the world beyond the shared harness.
trait Gateway {
    fn gateway_deaf(&self, deaf: bool);
    fn neigh(&self) -> String;
}

impl Gateway for ShillWorld {
    /// Drops (or lets through again) every ARP packet the gateway receives.
    fn gateway_deaf(&self, deaf: bool) {
        let commands: &[&[&str]] = if deaf {
            &[
                &["nft", "add", "table", "arp", "pp_deaf"],
                &[
                    "nft",
                    "add",
                    "chain",
                    "arp",
                    "pp_deaf",
                    "drop_all",
                    "{ type filter hook input priority 0; policy drop; }",
                ],
            ]
        } else {
            &[&["nft", "delete", "table", "arp", "pp_deaf"]]
        };
        for argv in commands {
            self.internet
                .upstream
                .exec_ok(argv)
                .expect("nft in the upstream namespace");
        }
    }

    fn neigh(&self) -> String {
        self.netns
            .exec_ok(&["ip", "-4", "neigh", "show", "dev", "eth0"])
            .unwrap_or_default()
    }
}

fn wait_both_names(bus: &PrivateBus) {
    shill_world::wait_both_names(bus).expect("both names");
}

fn v4(s: &str) -> Vec<u8> {
    s.parse::<std::net::Ipv4Addr>()
        .expect("test value")
        .octets()
        .to_vec()
}

/// shill's Ethernet configuration, with the gateway as first DNS server, an
/// on-link one nobody holds and an off-link one, no MTU.
fn ethernet(ifindex: i32, area: u32) -> ConfigureNetworkRequest {
    let mut req = shill_world::ethernet_request(ifindex, "eth0", area);
    let config = req.network_config.as_mut().expect("a config");
    config.dns_servers = vec![v4(GATEWAY), v4("192.0.2.53"), v4("8.8.8.8")];
    config.mtu = None;
    req
}

const FULL: u32 = shill_world::FULL_AREA & !area::AREA_MTU;

fn configure(bus: &PrivateBus, req: &ConfigureNetworkRequest) {
    let reply =
        shill_world::configure(bus, req).unwrap_or_else(|e| panic!("ConfigureNetwork: {e}"));
    assert_eq!(reply, [0x08, 0x01], "success = true");
}

/// (address, role, type) of one signal.
type Seen = (String, Role, EventType);

fn seen(s: &NeighborReachabilityEventSignal) -> Seen {
    (
        s.ip_addr.clone(),
        Role::try_from(s.role).expect("a role"),
        EventType::try_from(s.r#type).expect("a type"),
    )
}

/// Every `NeighborReachabilityEvent` that arrives within `within`
/// (checking that it names `ifindex`), until `done` holds for what came so
/// far.
fn collect(
    signals: &mut patchpanel_client::Signals<'_>,
    ifindex: i32,
    within: Duration,
    mut done: impl FnMut(&[Seen]) -> bool,
) -> Vec<Seen> {
    let deadline = Instant::now() + within;
    let mut got = Vec::new();
    while !done(&got) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match signals.next_timeout(left).expect("signals") {
            Some(Signal::NeighborReachabilityEvent(s)) => {
                assert_eq!(s.ifindex, ifindex, "{s:?}");
                got.push(seen(&s));
            }
            Some(_) => {}
            None => break,
        }
    }
    got
}

fn gw(t: EventType) -> Seen {
    (GATEWAY.to_string(), Role::GatewayAndDnsServer, t)
}

#[test]
fn gateway_and_dns_servers_are_reported_once_per_transition() {
    let world = start();
    wait_both_names(&world.bus);
    let watcher = Client::connect_to(world.bus.address()).expect("client");
    let mut signals = watcher.watch_signals().expect("subscribe");
    let ifindex = world.ifindex("eth0");
    configure(&world.bus, &ethernet(ifindex, FULL));

    // The gateway answers the first probe; 192.0.2.53 never does.
    let dns = ("192.0.2.53".to_string(), Role::DnsServer, EventType::Failed);
    let first = collect(&mut signals, ifindex, Duration::from_secs(20), |got| {
        got.len() >= 2
    });
    assert!(
        first.len() == 2 && first.contains(&gw(EventType::Reachable)) && first.contains(&dns),
        "first signals: {first:?}\nneighbours: {}\ndaemon log:\n{}",
        world.neigh(),
        world.daemon.log()
    );

    // The gateway goes deaf: FAILED once the probes go unanswered.
    world.gateway_deaf(true);
    let failed = collect(&mut signals, ifindex, Duration::from_secs(30), |got| {
        !got.is_empty()
    });
    assert_eq!(
        failed,
        [gw(EventType::Failed)],
        "neighbours: {}\ndaemon log:\n{}",
        world.neigh(),
        world.daemon.log()
    );

    // It answers again: REACHABLE.
    world.gateway_deaf(false);
    let back = collect(&mut signals, ifindex, Duration::from_secs(30), |got| {
        !got.is_empty()
    });
    assert_eq!(
        back,
        [gw(EventType::Reachable)],
        "neighbours: {}\ndaemon log:\n{}",
        world.neigh(),
        world.daemon.log()
    );

    // Probes every 2 s change nothing reported: no second REACHABLE for
    // the gateway, no second FAILED for 192.0.2.53, nothing for 8.8.8.8.
    let quiet = collect(&mut signals, ifindex, Duration::from_secs(7), |_| false);
    assert_eq!(quiet, [], "daemon log:\n{}", world.daemon.log());
    assert!(
        !world.neigh().contains("8.8.8.8"),
        "the off-link DNS server was probed: {}",
        world.neigh()
    );

    // Cleared: nothing is watched any more, so a deaf gateway is not news.
    configure(&world.bus, &ethernet(ifindex, area::AREA_CLEAR));
    world.gateway_deaf(true);
    let after_clear = collect(&mut signals, ifindex, Duration::from_secs(8), |_| false);
    assert_eq!(after_clear, [], "daemon log:\n{}", world.daemon.log());
}
