//! Kernel tier for `ConfigureNetwork`'s datapath: the plans of
//! `patchpaneld::network_config` for a real request, applied by the real
//! writer binary inside a test namespace to a veth that patchpanel did not
//! create (standing for shill's link), read back with `ip -j`, then
//! cleared; the kernel must be as it was before, line for line, with what
//! was there before (an address added by hand) still there.

use std::time::{Duration, Instant};

use patchpanel_ipc::datapath::{
    ApplyMode, Plan, RouteKind, RouteSpec, Step, UplinkAddress, UplinkRef,
};
use patchpanel_ipc::{HelperError, IfName};
use patchpanel_proto::configure_network_request::{self as area, NetworkTechnology};
use patchpanel_proto::{ConfigureNetworkRequest, IPAddrCIDR, NetworkConfig, NetworkPriority};
use patchpanel_tests::world::kernel_snapshot;
use patchpanel_tests::writer_client::{snapshot_diff, NetnsPrefix, WriterClient};
use patchpanel_tests::Netns;
use patchpaneld::network_config::{self, Networks};
use serde_json::Value;

const SETTLE_TIMEOUT: Duration = Duration::from_secs(5);

/// Drops in order: the writer, the prefix, the namespace.
struct Fixture {
    writer: WriterClient,
    _prefix: NetnsPrefix,
    netns: Netns,
    /// eth9's index.
    ifindex: u32,
}

impl Fixture {
    /// A namespace with "shill's" link eth9 (a veth to eth9p, both up,
    /// no alias) holding an address an administrator added by hand.
    fn new() -> Fixture {
        let netns = Netns::new().expect("test namespace");
        for argv in [
            &["sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0"][..],
            &["sysctl", "-qw", "net.ipv6.conf.default.accept_dad=0"],
            &[
                "ip", "link", "add", "eth9", "type", "veth", "peer", "name", "eth9p",
            ],
            &["ip", "link", "set", "eth9", "up"],
            &["ip", "link", "set", "eth9p", "up"],
            &["ip", "addr", "add", "198.51.100.5/24", "dev", "eth9"],
        ] {
            netns
                .exec_ok(argv)
                .unwrap_or_else(|e| panic!("{argv:?}: {e:#}"));
        }
        let prefix = NetnsPrefix::new();
        let writer = WriterClient::configured(&netns, prefix.as_str()).expect("start the writer");
        let mut f = Fixture {
            writer,
            _prefix: prefix,
            netns,
            ifindex: 0,
        };
        f.ifindex = f.ip_json(&["link", "show", "dev", "eth9"])[0]["ifindex"]
            .as_u64()
            .expect("ifindex") as u32;
        wait_for("eth9 to come up", || {
            f.ip_json(&["link", "show", "dev", "eth9"])[0]["operstate"] == "UP"
        });
        f
    }

    fn table(&self) -> String {
        (self.ifindex + 1000).to_string()
    }

    fn link(&self) -> UplinkRef {
        UplinkRef {
            ifindex: self.ifindex,
            name: IfName::new("eth9").expect("test value"),
        }
    }

    fn ip_json(&self, args: &[&str]) -> Value {
        let mut argv = vec!["ip", "-j"];
        argv.extend_from_slice(args);
        let text = self
            .netns
            .exec_ok(&argv)
            .unwrap_or_else(|e| panic!("{argv:?}: {e:#}"));
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
    }

    fn try_apply(&mut self, plan: Plan) -> Result<(), HelperError> {
        let report = self.writer.apply(plan).expect("the writer answers")?;
        assert!(
            report.failures.is_empty(),
            "failures: {:?}\n{}",
            report.failures,
            self.writer.log()
        );
        Ok(())
    }

    fn apply_all(&mut self, plans: Vec<Plan>) {
        for plan in plans {
            let label = plan.label.clone();
            if let Err(e) = self.try_apply(plan) {
                panic!("plan {label}: {e}\n{}", self.writer.log());
            }
        }
    }

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

    fn assert_snapshot_is(&self, before: &str) {
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        loop {
            let after = kernel_snapshot(&self.netns).expect("snapshot");
            if after == before {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "the kernel differs from before:\n{}",
                    snapshot_diff(before, &after)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `ip -j addr show dev eth9`'s addresses as "addr/len".
    fn addresses(&self) -> Vec<String> {
        self.ip_json(&["addr", "show", "dev", "eth9"])[0]["addr_info"]
            .as_array()
            .expect("addr_info")
            .iter()
            .map(|a| {
                format!(
                    "{}/{}",
                    a["local"].as_str().expect("test value"),
                    a["prefixlen"]
                )
            })
            .collect()
    }

    fn mtu(&self) -> u64 {
        self.ip_json(&["link", "show", "dev", "eth9"])[0]["mtu"]
            .as_u64()
            .expect("mtu")
    }
}

fn wait_for(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    while !ready() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn cidr(addr: &str, len: i32) -> IPAddrCIDR {
    IPAddrCIDR::new(addr.parse().expect("test value"), len)
}

/// A typical Ethernet network on eth9: 192.0.2.10/24 via 192.0.2.1, an
/// IPv6 address and gateway, MTU 1400, primary.
fn ethernet(ifindex: u32, ipv4: &str) -> ConfigureNetworkRequest {
    ConfigureNetworkRequest {
        ifindex: ifindex as i32,
        ifname: "eth9".into(),
        area: area::AREA_ALL,
        network_config: Some(NetworkConfig {
            ipv4_address: Some(cidr(ipv4, 24)),
            ipv4_gateway: Some(vec![192, 0, 2, 1]),
            ipv6_addresses: vec![cidr("2001:db8::10", 64)],
            ipv6_gateway: Some(
                "fe80::1"
                    .parse::<std::net::Ipv6Addr>()
                    .expect("test value")
                    .octets()
                    .to_vec(),
            ),
            ipv4_default_route: true,
            excluded_route_prefixes: vec![cidr("203.0.113.0", 24)],
            mtu: Some(1400),
            ..Default::default()
        }),
        technology: NetworkTechnology::Ethernet as i32,
        priority: Some(NetworkPriority {
            is_primary_logical: true,
            is_primary_physical: true,
            is_primary_for_dns: true,
            ranking_order: 0,
        }),
        session_id: 1,
    }
}

fn configure(f: &mut Fixture, req: &ConfigureNetworkRequest, networks: &Networks) -> Networks {
    let spec = network_config::parse(req).expect("valid request");
    let (plans, after) = network_config::plans(&spec, networks, "ConfigureNetwork test");
    f.apply_all(plans);
    after
}

fn clear(f: &mut Fixture, networks: &Networks) {
    let out = network_config::clear_plan(&f.link(), networks);
    f.apply_all(vec![Plan {
        label: "clear".into(),
        mode: ApplyMode::BestEffort,
        steps: out.steps,
    }]);
    assert_eq!(out.networks, Networks::default());
}

fn rules(f: &Fixture, family: &str) -> Vec<Value> {
    f.ip_json(&[family, "rule", "show"])
        .as_array()
        .expect("rules")
        .iter()
        .filter(|r| r["protocol"] == "157" || r["protocol"] == 157)
        .cloned()
        .collect()
}

#[test]
fn a_typical_ethernet_configuration_applies_and_clear_restores_the_kernel() {
    let mut f = Fixture::new();
    let ifindex = f.ifindex;
    let before = f.settled_snapshot();
    let networks = configure(
        &mut f,
        &ethernet(ifindex, "192.0.2.10"),
        &Networks::default(),
    );

    // Addresses: ours with its broadcast, and the administrator's.
    let addrs = f.addresses();
    for want in ["192.0.2.10/24", "2001:db8::10/64", "198.51.100.5/24"] {
        assert!(addrs.contains(&want.to_string()), "{want} in {addrs:?}");
    }
    let info = f.ip_json(&["-4", "addr", "show", "dev", "eth9"]);
    let ours = info[0]["addr_info"]
        .as_array()
        .expect("test value")
        .iter()
        .find(|a| a["local"] == "192.0.2.10")
        .expect("192.0.2.10")
        .clone();
    assert_eq!(ours["broadcast"], "192.0.2.255");

    // Routes of table ifindex+1000, all proto 157.
    let table = f.table();
    let v4 = f.ip_json(&["-4", "route", "show", "table", &table]);
    let v4 = v4.as_array().expect("routes");
    assert!(
        v4.iter()
            .any(|r| r["dst"] == "default" && r["gateway"] == "192.0.2.1" && r["dev"] == "eth9"),
        "{v4:#?}"
    );
    assert!(
        v4.iter()
            .any(|r| r["dst"] == "203.0.113.0/24" && r["type"] == "throw"),
        "{v4:#?}"
    );
    assert!(v4.iter().all(|r| r["protocol"] == "157"), "{v4:#?}");
    let v6 = f.ip_json(&["-6", "route", "show", "table", &table]);
    let v6 = v6.as_array().expect("routes");
    assert!(
        v6.iter()
            .any(|r| r["dst"] == "default" && r["gateway"] == "fe80::1" && r["dev"] == "eth9"),
        "{v6:#?}"
    );
    assert!(v6.iter().all(|r| r["protocol"] == "157"), "{v6:#?}");

    // Routing policy.
    let r4 = rules(&f, "-4");
    let t: u64 = table.parse().expect("test value");
    let has = |rules: &[Value], pred: &dyn Fn(&Value) -> bool| rules.iter().any(pred);
    assert!(
        has(&r4, &|r| r["priority"] == 1010
            && r["fwmark"] == format!("{:#x}", t << 16)
            && r["table"] == table),
        "{r4:#?}"
    );
    assert!(has(&r4, &|r| r["priority"] == 1010 && r["oif"] == "eth9"));
    assert!(has(&r4, &|r| r["priority"] == 1010 && r["iif"] == "eth9"));
    assert!(has(&r4, &|r| r["priority"] == 1010 && r["src"] == "192.0.2.10"));
    assert!(has(&r4, &|r| r["priority"] == 1000 && r["table"] == "main"));
    assert!(has(&r4, &|r| r["priority"] == 32765
        && r["table"] == table
        && r.get("fwmark").is_none()));
    assert!(has(&r4, &|r| r["priority"] == 32763
        && r["fwmark"] == "0x4000"
        && r["fwmask"] == "0xc000"));
    let r6 = rules(&f, "-6");
    assert!(has(&r6, &|r| r["priority"] == 1010
        && r["src"] == "2001:db8::10"));
    assert!(has(&r6, &|r| r["priority"] == 32765 && r["table"] == table));
    // 1010: fwmark, oif, iif, from; 1000 main; 32763 bypass; 32765 catch-all.
    assert_eq!(r4.len(), 7, "{r4:#?}");
    assert_eq!(r6.len(), 7, "{r6:#?}");

    assert_eq!(f.mtu(), 1400);

    clear(&mut f, &networks);
    f.assert_snapshot_is(&before);
    assert!(f.addresses().contains(&"198.51.100.5/24".to_string()));
}

#[test]
fn an_address_that_was_there_before_is_not_patchpanels_to_remove() {
    let mut f = Fixture::new();
    let before = f.settled_snapshot();
    let mut req = ethernet(f.ifindex, "198.51.100.5");
    req.network_config
        .as_mut()
        .expect("test value")
        .ipv4_gateway = Some(vec![198, 51, 100, 1]);
    let networks = configure(&mut f, &req, &Networks::default());
    assert!(f.addresses().contains(&"198.51.100.5/24".to_string()));
    clear(&mut f, &networks);
    f.assert_snapshot_is(&before);
}

#[test]
fn a_new_address_replaces_only_patchpanels_old_one() {
    let mut f = Fixture::new();
    let ifindex = f.ifindex;
    let n = configure(
        &mut f,
        &ethernet(ifindex, "192.0.2.10"),
        &Networks::default(),
    );
    let mut req = ethernet(f.ifindex, "192.0.2.20");
    req.area &= !area::AREA_CLEAR;
    let n = configure(&mut f, &req, &n);
    let addrs = f.addresses();
    assert!(addrs.contains(&"192.0.2.20/24".to_string()), "{addrs:?}");
    assert!(!addrs.contains(&"192.0.2.10/24".to_string()), "{addrs:?}");
    assert!(addrs.contains(&"198.51.100.5/24".to_string()), "{addrs:?}");
    let r4 = rules(&f, "-4");
    assert!(r4.iter().any(|r| r["src"] == "192.0.2.20"));
    assert!(!r4.iter().any(|r| r["src"] == "192.0.2.10"), "{r4:#?}");
    clear(&mut f, &n);
}

#[test]
fn a_plan_whose_ifindex_and_name_disagree_is_refused_and_changes_nothing() {
    let mut f = Fixture::new();
    let before = f.settled_snapshot();
    let peer = f.ip_json(&["link", "show", "dev", "eth9p"])[0]["ifindex"]
        .as_u64()
        .expect("test value") as u32;
    let spec = network_config::parse(&ethernet(peer, "192.0.2.10")).expect("valid");
    let out = network_config::plan(&spec, &Networks::default());
    let err = f
        .try_apply(Plan {
            label: "mismatch".into(),
            mode: ApplyMode::Atomic,
            steps: out.steps,
        })
        .expect_err("refused");
    match err {
        HelperError::InvalidArgument(msg) => assert!(msg.contains("eth9 has index"), "{msg}"),
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
    f.assert_snapshot_is(&before);
}

#[test]
fn an_atomic_plan_that_meets_a_foreign_route_rolls_back_every_step() {
    let mut f = Fixture::new();
    let table = f.table();
    f.netns
        .exec_ok(&[
            "ip",
            "route",
            "add",
            "10.0.0.0/8",
            "dev",
            "eth9",
            "table",
            &table,
        ])
        .expect("foreign route");
    let before = f.settled_snapshot();
    let mut req = ethernet(f.ifindex, "192.0.2.10");
    req.area &= !area::AREA_CLEAR;
    req.network_config
        .as_mut()
        .expect("test value")
        .included_route_prefixes = vec![cidr("10.0.0.0", 8)];
    let spec = network_config::parse(&req).expect("valid");
    let out = network_config::plan(&spec, &Networks::default());
    let err = f
        .try_apply(Plan {
            label: "rollback".into(),
            mode: ApplyMode::Atomic,
            steps: out.steps,
        })
        .expect_err("a foreign route is never replaced");
    match err {
        HelperError::Refused(msg) => assert!(msg.contains("it is not patchpanel's"), "{msg}"),
        other => panic!("expected Refused, got {other:?}"),
    }
    f.assert_snapshot_is(&before);
}

#[test]
fn uplink_steps_refuse_what_is_not_this_links() {
    let mut f = Fixture::new();
    let before = f.settled_snapshot();
    let link = f.link();
    let out_of_peer = RouteSpec {
        dst: "10.0.0.0".parse().expect("test value"),
        prefix_len: 8,
        gateway: None,
        dev: Some(IfName::new("eth9p").expect("test value")),
        table: link.table(),
        metric: None,
        kind: RouteKind::Unicast,
    };
    let other_table = RouteSpec {
        dev: Some(link.name.clone()),
        table: 254,
        ..out_of_peer.clone()
    };
    let lo = UplinkRef {
        ifindex: 1,
        name: IfName::new("lo").expect("test value"),
    };
    for step in [
        Step::SyncUplinkRoutes {
            link: link.clone(),
            ipv6: false,
            routes: vec![out_of_peer],
        },
        Step::SyncUplinkRoutes {
            link: link.clone(),
            ipv6: false,
            routes: vec![other_table],
        },
        Step::SetUplinkMtu {
            link: link.clone(),
            mtu: 67,
        },
        Step::SetUplinkMtu {
            link: lo.clone(),
            mtu: 1400,
        },
        Step::SyncUplinkAddresses {
            link: link.clone(),
            ipv6: false,
            addrs: vec![UplinkAddress {
                addr: "2001:db8::1".parse().expect("test value"),
                prefix_len: 64,
                broadcast: None,
            }],
        },
        Step::ClearUplink { link: lo },
    ] {
        let what = format!("{step:?}");
        match f.try_apply(Plan {
            label: "refused".into(),
            mode: ApplyMode::Atomic,
            steps: vec![step],
        }) {
            // lo comes from the caller (shill's ifindex and name): its
            // mistake; the rest are the manager's.
            Err(HelperError::InvalidArgument(m)) if what.contains("\"lo\"") => {
                assert!(m.contains("lo is not an uplink"), "{what}: {m}")
            }
            Err(HelperError::Refused(_)) if !what.contains("\"lo\"") => {}
            other => panic!("{what}: {other:?}"),
        }
    }
    f.assert_snapshot_is(&before);
}

#[test]
fn remove_owned_leaves_an_uplinks_addresses_and_mtu_and_removes_its_routes_and_rules() {
    let mut f = Fixture::new();
    let ifindex = f.ifindex;
    let _ = configure(
        &mut f,
        &ethernet(ifindex, "192.0.2.10"),
        &Networks::default(),
    );
    let report = f
        .writer
        .remove_owned(false)
        .expect("the writer answers")
        .expect("RemoveOwned");
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    assert!(rules(&f, "-4").is_empty());
    assert!(rules(&f, "-6").is_empty());
    let table = f.table();
    assert_eq!(
        f.ip_json(&["-4", "route", "show", "table", &table]),
        serde_json::json!([])
    );
    assert!(f.addresses().contains(&"192.0.2.10/24".to_string()));
    assert_eq!(f.mtu(), 1400);
}

#[test]
fn each_uplink_step_is_undone_when_a_later_step_fails() {
    let mut f = Fixture::new();
    let before = f.settled_snapshot();
    let link = f.link();
    let lo = UplinkRef {
        ifindex: 1,
        name: IfName::new("lo").expect("test value"),
    };
    let steps = vec![
        Step::SyncUplinkAddresses {
            link: link.clone(),
            ipv6: false,
            addrs: vec![UplinkAddress {
                addr: "192.0.2.10".parse().expect("test value"),
                prefix_len: 24,
                broadcast: None,
            }],
        },
        Step::SyncUplinkAddresses {
            link: link.clone(),
            ipv6: true,
            addrs: vec![UplinkAddress {
                addr: "2001:db8::10".parse().expect("test value"),
                prefix_len: 64,
                broadcast: None,
            }],
        },
        Step::SyncUplinkRoutes {
            link: link.clone(),
            ipv6: false,
            routes: vec![
                RouteSpec {
                    dst: "0.0.0.0".parse().expect("test value"),
                    prefix_len: 0,
                    gateway: Some("192.0.2.1".parse().expect("test value")),
                    dev: Some(link.name.clone()),
                    table: link.table(),
                    metric: None,
                    kind: RouteKind::Unicast,
                },
                RouteSpec {
                    dst: "203.0.113.0".parse().expect("test value"),
                    prefix_len: 24,
                    gateway: None,
                    dev: None,
                    table: link.table(),
                    metric: None,
                    kind: RouteKind::Unreachable,
                },
            ],
        },
        Step::SyncUplinkRoutes {
            link: link.clone(),
            ipv6: true,
            routes: vec![RouteSpec {
                dst: "::".parse().expect("test value"),
                prefix_len: 0,
                gateway: None,
                dev: None,
                table: link.table(),
                metric: None,
                kind: RouteKind::Blackhole,
            }],
        },
        Step::SetUplinkMtu {
            link: link.clone(),
            mtu: 1400,
        },
        // Fails: everything above is undone, in reverse.
        Step::SetUplinkMtu {
            link: lo,
            mtu: 1400,
        },
    ];
    let err = f
        .try_apply(Plan {
            label: "undo".into(),
            mode: ApplyMode::Atomic,
            steps,
        })
        .expect_err("lo is refused");
    assert!(matches!(err, HelperError::InvalidArgument(_)), "{err:?}");
    f.assert_snapshot_is(&before);
    assert_eq!(f.mtu(), 1500);
}

#[test]
fn a_primary_vpn_routes_on_link_throws_exclusions_blackholes_ipv6_and_clears() {
    let mut f = Fixture::new();
    f.netns
        .exec_ok(&[
            "ip", "link", "add", "tun9", "type", "veth", "peer", "name", "tun9p",
        ])
        .expect("tun9");
    f.netns
        .exec_ok(&["ip", "link", "set", "tun9", "up"])
        .expect("tun9 up");
    let ifindex = f.ip_json(&["link", "show", "dev", "tun9"])[0]["ifindex"]
        .as_u64()
        .expect("ifindex") as u32;
    let before = f.settled_snapshot();
    let req = ConfigureNetworkRequest {
        ifindex: ifindex as i32,
        ifname: "tun9".into(),
        area: area::AREA_ALL,
        network_config: Some(NetworkConfig {
            ipv4_address: Some(cidr("10.8.0.2", 32)),
            ipv4_default_route: true,
            ipv6_blackhole_route: true,
            excluded_route_prefixes: vec![cidr("198.51.100.0", 24)],
            mtu: Some(1380),
            ..Default::default()
        }),
        technology: NetworkTechnology::Vpn as i32,
        priority: Some(NetworkPriority {
            is_primary_logical: true,
            ..Default::default()
        }),
        session_id: 2,
    };
    let networks = configure(&mut f, &req, &Networks::default());
    let table = (ifindex + 1000).to_string();
    let v4 = f.ip_json(&["-4", "route", "show", "table", &table]);
    let v4 = v4.as_array().expect("routes");
    assert!(
        v4.iter()
            .any(|r| r["dst"] == "default" && r["dev"] == "tun9" && r.get("gateway").is_none()),
        "{v4:#?}"
    );
    assert!(
        v4.iter()
            .any(|r| r["dst"] == "198.51.100.0/24" && r["type"] == "throw"),
        "{v4:#?}"
    );
    let v6 = f.ip_json(&["-6", "route", "show", "table", &table]);
    let v6 = v6.as_array().expect("routes");
    assert!(
        v6.iter()
            .any(|r| r["dst"] == "default" && r["type"] == "blackhole"),
        "{v6:#?}"
    );
    for family in ["-4", "-6"] {
        let r = rules(&f, family);
        // fwmark and oif at 10, route-on-VPN at 32764; no from/iif rules,
        // no lookup main, no catch-all (not the primary physical network).
        assert_eq!(r.len(), 3, "{family}: {r:#?}");
        assert!(r
            .iter()
            .any(|r| r["priority"] == 10 && r["oif"] == "tun9" && r["table"] == table));
        assert!(r.iter().any(|r| r["priority"] == 32764
            && r["fwmark"] == "0x8000"
            && r["fwmask"] == "0xc000"
            && r["table"] == table));
    }
    assert_eq!(
        f.ip_json(&["link", "show", "dev", "tun9"])[0]["mtu"],
        serde_json::json!(1380)
    );
    let out = network_config::clear_plan(
        &UplinkRef {
            ifindex,
            name: IfName::new("tun9").expect("name"),
        },
        &networks,
    );
    f.apply_all(vec![Plan {
        label: "clear".into(),
        mode: ApplyMode::BestEffort,
        steps: out.steps,
    }]);
    f.assert_snapshot_is(&before);
}

/// The state of eth9's neighbour entry for `addr`, as `ip -j neigh` says
/// it ("" without one).
fn neigh_state(f: &Fixture, addr: &str) -> String {
    f.ip_json(&["neigh", "show", "dev", "eth9", "to", addr])
        .as_array()
        .and_then(|a| a.first())
        .and_then(|n| n["state"].as_array())
        .map(|s| {
            s.iter()
                .filter_map(|v| v.as_str())
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

fn probe(f: &mut Fixture, link: UplinkRef, addr: &str) -> Result<(), HelperError> {
    f.try_apply(Plan {
        label: "probe".into(),
        mode: ApplyMode::Atomic,
        steps: vec![Step::ProbeNeighbor {
            link,
            addr: addr.parse().expect("test value"),
        }],
    })
}

#[test]
fn probe_neighbor_resolves_reprobes_and_leaves_static_entries_alone() {
    let mut f = Fixture::new();
    let eth9 = f.link();
    // Nobody holds 198.51.100.1 yet: resolving it fails.
    probe(&mut f, eth9.clone(), "198.51.100.1").expect("probe");
    wait_for("198.51.100.1 to fail", || {
        neigh_state(&f, "198.51.100.1") == "FAILED"
    });
    // The peer, moved to a namespace of its own, takes it: the next probe
    // resolves it again.
    let peer = Netns::new().expect("peer namespace");
    f.netns
        .exec_ok(&["ip", "link", "set", "eth9p", "netns", peer.name()])
        .expect("move the peer");
    for argv in [
        &["ip", "addr", "add", "198.51.100.1/24", "dev", "eth9p"][..],
        &["ip", "link", "set", "eth9p", "up"],
    ] {
        peer.exec_ok(argv)
            .unwrap_or_else(|e| panic!("{argv:?}: {e:#}"));
    }
    wait_for("eth9 to come up again", || {
        f.ip_json(&["link", "show", "dev", "eth9"])[0]["operstate"] == "UP"
    });
    probe(&mut f, eth9.clone(), "198.51.100.1").expect("probe");
    wait_for("198.51.100.1 to be reachable", || {
        neigh_state(&f, "198.51.100.1") == "REACHABLE"
    });
    // A valid entry is set to PROBE and comes back REACHABLE.
    probe(&mut f, eth9.clone(), "198.51.100.1").expect("probe");
    wait_for("198.51.100.1 to be reachable again", || {
        neigh_state(&f, "198.51.100.1") == "REACHABLE"
    });
    // An administrator's static entry is not touched.
    f.netns
        .exec_ok(&[
            "ip",
            "neigh",
            "add",
            "198.51.100.7",
            "lladdr",
            "02:00:00:00:00:07",
            "dev",
            "eth9",
            "nud",
            "permanent",
        ])
        .expect("static entry");
    probe(&mut f, eth9.clone(), "198.51.100.7").expect("probe");
    assert_eq!(neigh_state(&f, "198.51.100.7"), "PERMANENT");

    // Refused: not unicast, not this link, lo.
    let wrong_index = UplinkRef {
        ifindex: f.ifindex + 100,
        name: IfName::new("eth9").expect("test value"),
    };
    let lo = UplinkRef {
        ifindex: 1,
        name: IfName::new("lo").expect("test value"),
    };
    for (link, addr) in [
        (eth9.clone(), "224.0.0.1"),
        (eth9.clone(), "255.255.255.255"),
        (eth9.clone(), "0.0.0.0"),
        (eth9.clone(), "::ffff:198.51.100.1"),
    ] {
        match probe(&mut f, link, addr) {
            Err(HelperError::Refused(m)) => assert!(m.contains("not a unicast"), "{addr}: {m}"),
            other => panic!("{addr}: {other:?}"),
        }
    }
    for link in [wrong_index, lo] {
        match probe(&mut f, link.clone(), "198.51.100.1") {
            Err(HelperError::InvalidArgument(_)) => {}
            other => panic!("{link:?}: {other:?}"),
        }
    }
}
