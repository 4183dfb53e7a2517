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
use patchpanel_proto::configure_network_request::{self as area, NetworkTechnology};
use patchpanel_proto::neighbor_reachability_event_signal::{EventType, Role};
use patchpanel_proto::{
    ConfigureNetworkRequest, IPAddrCIDR, NeighborReachabilityEventSignal, NetworkConfig,
    NetworkPriority,
};
use patchpanel_tests::fake_shill::FakeShill;
use patchpanel_tests::world::{Internet, GATEWAY};
use patchpanel_tests::{poll_until, BusClient, Daemon, DaemonOptions, Netns, PrivateBus};
use prost::Message as _;

/// Fields drop in order: the daemon stops before shill leaves, shill
/// leaves before the bus goes, the namespaces last.
struct ShillWorld {
    daemon: Daemon,
    _shill: FakeShill,
    bus: PrivateBus,
    internet: Internet,
    netns: Netns,
}

impl ShillWorld {
    fn start() -> ShillWorld {
        let netns = Netns::new().expect("netns");
        let internet = Internet::attach(&netns).expect("internet");
        netns
            .exec_ok(&["ip", "addr", "flush", "dev", "eth0"])
            .expect("flush eth0");
        let bus = PrivateBus::start().expect("bus");
        let shill =
            FakeShill::start_with_default(bus.address(), "eth0", "ethernet").expect("fake shill");
        let mut daemon = Daemon::start_with(
            &netns,
            &bus,
            DaemonOptions {
                extra_args: vec!["--uplinks=shill".into()],
                extra_config: "neighbor_probe_seconds = 2\n".into(),
                ..Default::default()
            },
        )
        .expect("daemon");
        daemon.wait_ready().expect("ready");
        ShillWorld {
            daemon,
            _shill: shill,
            bus,
            internet,
            netns,
        }
    }

    fn ifindex(&self) -> i32 {
        self.netns
            .exec_ok(&["cat", "/sys/class/net/eth0/ifindex"])
            .expect("ifindex")
            .trim()
            .parse()
            .expect("a number")
    }

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
    let client = BusClient::connect(bus.address()).expect("client");
    let ready = poll_until(Duration::from_secs(10), || {
        let both = ["org.chromium.PatchPanel", "org.chromium.SocketService"]
            .iter()
            .all(|n| client.name_has_owner(n).unwrap_or(false));
        both.then_some(())
    });
    assert!(ready.is_some(), "both names never had an owner");
}

fn v4(s: &str) -> Vec<u8> {
    s.parse::<std::net::Ipv4Addr>()
        .expect("test value")
        .octets()
        .to_vec()
}

fn ethernet(ifindex: i32, area: u32) -> ConfigureNetworkRequest {
    ConfigureNetworkRequest {
        ifindex,
        ifname: "eth0".into(),
        area,
        network_config: Some(NetworkConfig {
            ipv4_address: Some(IPAddrCIDR {
                addr: v4("192.0.2.2"),
                prefix_len: 24,
            }),
            ipv4_gateway: Some(v4(GATEWAY)),
            ipv4_default_route: true,
            dns_servers: vec![v4(GATEWAY), v4("192.0.2.53"), v4("8.8.8.8")],
            ..Default::default()
        }),
        technology: NetworkTechnology::Ethernet as i32,
        priority: Some(NetworkPriority {
            is_primary_logical: true,
            is_primary_physical: true,
            is_primary_for_dns: true,
            ranking_order: 0,
        }),
        session_id: 7,
    }
}

const FULL: u32 = area::AREA_CLEAR
    | area::AREA_IPV4_ADDRESS
    | area::AREA_IPV4_ROUTE
    | area::AREA_IPV4_DEFAULT_ROUTE
    | area::AREA_ROUTING_POLICY
    | area::AREA_DNS;

fn configure(bus: &PrivateBus, req: &ConfigureNetworkRequest) {
    let reply = BusClient::connect(bus.address())
        .expect("client")
        .call_bytes("ConfigureNetwork", &req.encode_to_vec())
        .unwrap_or_else(|e| panic!("ConfigureNetwork: {}: {}", e.name, e.message));
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
    let world = ShillWorld::start();
    wait_both_names(&world.bus);
    let watcher = Client::connect_to(world.bus.address()).expect("client");
    let mut signals = watcher.watch_signals().expect("subscribe");
    let ifindex = world.ifindex();
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
