use super::*;
use patchpanel_proto::{NetworkConfig, NetworkPriority, Route};

fn cidr(addr: &str, len: i32) -> IPAddrCIDR {
    IPAddrCIDR::new(addr.parse().unwrap(), len)
}

fn v4(s: &str) -> Vec<u8> {
    s.parse::<Ipv4Addr>().unwrap().octets().to_vec()
}

fn v6(s: &str) -> Vec<u8> {
    s.parse::<Ipv6Addr>().unwrap().octets().to_vec()
}

/// A typical Ethernet network: 192.0.2.10/24 via 192.0.2.1, one IPv6
/// address, MTU 1400, primary.
fn ethernet(area: u32) -> ConfigureNetworkRequest {
    ConfigureNetworkRequest {
        ifindex: 2,
        ifname: "eth0".into(),
        area,
        network_config: Some(NetworkConfig {
            ipv4_address: Some(cidr("192.0.2.10", 24)),
            ipv4_gateway: Some(v4("192.0.2.1")),
            ipv6_addresses: vec![cidr("2001:db8::10", 64)],
            ipv6_gateway: Some(v6("fe80::1")),
            ipv4_default_route: true,
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
        session_id: 7,
    }
}

fn vpn(area: u32) -> ConfigureNetworkRequest {
    ConfigureNetworkRequest {
        ifindex: 9,
        ifname: "tun0".into(),
        area,
        network_config: Some(NetworkConfig {
            ipv4_address: Some(cidr("10.8.0.2", 32)),
            ipv4_default_route: true,
            ipv6_blackhole_route: true,
            excluded_route_prefixes: vec![cidr("198.51.100.0", 24)],
            ..Default::default()
        }),
        technology: NetworkTechnology::Vpn as i32,
        priority: Some(NetworkPriority {
            is_primary_logical: true,
            is_primary_physical: false,
            is_primary_for_dns: true,
            ranking_order: 0,
        }),
        session_id: 8,
    }
}

fn spec(req: &ConfigureNetworkRequest) -> NetworkSpec {
    parse(req).expect("valid request")
}

fn kinds(steps: &[Step]) -> Vec<&'static str> {
    steps
        .iter()
        .map(|s| match s {
            Step::SyncUplinkAddresses { ipv6: false, .. } => "addr4",
            Step::SyncUplinkAddresses { ipv6: true, .. } => "addr6",
            Step::SyncUplinkRoutes { ipv6: false, .. } => "routes4",
            Step::SyncUplinkRoutes { ipv6: true, .. } => "routes6",
            Step::SetUplinkMtu { .. } => "mtu",
            Step::AddRule(_) => "add-rule",
            Step::DeleteRule(_) => "del-rule",
            Step::ClearUplink { .. } => "clear",
            Step::AddRoute { .. } => "route",
            _ => "other",
        })
        .collect()
}

// ---- parse ---------------------------------------------------------------

#[test]
fn a_typical_ethernet_request_parses_to_typed_values() {
    let s = spec(&ethernet(area::AREA_ALL));
    assert_eq!(s.link.ifindex, 2);
    assert_eq!(s.link.name.as_str(), "eth0");
    assert_eq!(s.link.table(), 1002);
    assert_eq!(s.ipv4_address, Some((Ipv4Addr::new(192, 0, 2, 10), 24)));
    assert_eq!(s.ipv4_gateway, Some(Ipv4Addr::new(192, 0, 2, 1)));
    assert_eq!(s.mtu, Some(1400));
    assert_eq!(s.technology, Technology::Ethernet);
    assert!(s.priority.primary_physical);
}

#[test]
fn dns_servers_are_kept_unicast_and_once_each() {
    let s = spec(&with_config(|c| {
        c.dns_servers = vec![v4("192.0.2.53"), v6("2001:db8::53"), v4("192.0.2.53")]
    }));
    assert_eq!(
        s.dns_servers,
        vec![
            IpAddr::V4(Ipv4Addr::new(192, 0, 2, 53)),
            "2001:db8::53".parse::<IpAddr>().unwrap()
        ]
    );
    for (bad, why) in [
        (v4("0.0.0.0"), "not a unicast"),
        (v4("224.0.0.251"), "not a unicast"),
        (vec![1, 2, 3], "3 bytes"),
    ] {
        let e = refused(&with_config(|c| {
            c.dns_servers = vec![v4("192.0.2.53"), bad]
        }));
        assert!(
            e.starts_with("network_config.dns_servers[1]") && e.contains(why),
            "{e}"
        );
    }
}

fn refused(req: &ConfigureNetworkRequest) -> String {
    match parse(req) {
        Ok(s) => panic!("accepted: {s:?}"),
        Err(e) => e,
    }
}

fn with_config(f: impl FnOnce(&mut NetworkConfig)) -> ConfigureNetworkRequest {
    let mut req = ethernet(area::AREA_ALL);
    f(req.network_config.as_mut().unwrap());
    req
}

#[test]
fn a_link_index_must_be_positive() {
    for ifindex in [0, -1, i32::MIN] {
        let req = ConfigureNetworkRequest {
            ifindex,
            ..ethernet(area::AREA_ALL)
        };
        assert!(refused(&req).starts_with("ifindex:"), "{ifindex}");
    }
}

#[test]
fn an_interface_name_with_an_injection_is_refused() {
    for name in [
        "eth0 -j ACCEPT",
        "",
        "eth0;reboot",
        "a-very-long-name-indeed",
        "../x",
    ] {
        let req = ConfigureNetworkRequest {
            ifname: name.into(),
            ..ethernet(area::AREA_ALL)
        };
        assert!(refused(&req).starts_with("ifname:"), "{name:?}");
    }
}

#[test]
fn unknown_area_bits_are_refused() {
    let req = ethernet(area::AREA_ALL | 1 << 20);
    assert_eq!(refused(&req), "area: unknown bits 0x100000");
}

#[test]
fn an_unknown_technology_is_refused() {
    let req = ConfigureNetworkRequest {
        technology: 17,
        ..ethernet(area::AREA_ALL)
    };
    assert_eq!(refused(&req), "technology: unknown value 17");
}

#[test]
fn a_rank_beyond_the_bound_is_refused() {
    let mut req = ethernet(area::AREA_ALL);
    req.priority.as_mut().unwrap().ranking_order = MAX_RANK + 1;
    assert!(refused(&req).starts_with("priority.ranking_order:"));
}

#[test]
fn addresses_of_the_wrong_size_or_family_are_refused() {
    let e = refused(&with_config(|c| {
        c.ipv4_address = Some(IPAddrCIDR {
            addr: vec![1, 2, 3],
            prefix_len: 24,
        })
    }));
    assert!(
        e.starts_with("network_config.ipv4_address.addr: 3 bytes"),
        "{e}"
    );
    let e = refused(&with_config(|c| {
        c.ipv4_address = Some(cidr("2001:db8::1", 64))
    }));
    assert!(
        e.starts_with("network_config.ipv4_address.addr: an IPv6"),
        "{e}"
    );
    let e = refused(&with_config(|c| {
        c.ipv6_addresses = vec![cidr("192.0.2.1", 24)]
    }));
    assert!(
        e.starts_with("network_config.ipv6_addresses[0].addr: an IPv4"),
        "{e}"
    );
    let e = refused(&with_config(|c| {
        c.included_route_prefixes = vec![IPAddrCIDR {
            addr: vec![0; 5],
            prefix_len: 0,
        }]
    }));
    assert!(
        e.starts_with("network_config.included_route_prefixes[0].addr: 5 bytes"),
        "{e}"
    );
}

#[test]
fn prefix_lengths_out_of_range_for_the_family_are_refused() {
    let e = refused(&with_config(|c| {
        c.ipv4_address = Some(cidr("192.0.2.10", 33))
    }));
    assert_eq!(
        e,
        "network_config.ipv4_address.prefix_len: 33 is out of range 1..=32"
    );
    let e = refused(&with_config(|c| {
        c.ipv4_address = Some(cidr("192.0.2.10", 0))
    }));
    assert!(e.contains("0 is out of range 1..=32"), "{e}");
    let e = refused(&with_config(|c| {
        c.ipv6_addresses = vec![cidr("2001:db8::1", 64), cidr("2001:db8::2", 129)]
    }));
    assert_eq!(
        e,
        "network_config.ipv6_addresses[1].prefix_len: 129 is out of range 1..=128"
    );
    let e = refused(&with_config(|c| {
        c.excluded_route_prefixes = vec![cidr("10.0.0.0", -1)]
    }));
    assert!(
        e.starts_with("network_config.excluded_route_prefixes[0].prefix_len"),
        "{e}"
    );
}

#[test]
fn gateways_must_be_of_their_family() {
    let e = refused(&with_config(|c| c.ipv4_gateway = Some(v6("fe80::1"))));
    assert!(e.starts_with("network_config.ipv4_gateway: an IPv6"), "{e}");
    let e = refused(&with_config(|c| c.ipv6_gateway = Some(v4("192.0.2.1"))));
    assert!(e.starts_with("network_config.ipv6_gateway: an IPv4"), "{e}");
    let e = refused(&with_config(|c| c.ipv4_gateway = Some(v4("224.0.0.1"))));
    assert!(
        e.starts_with("network_config.ipv4_gateway: 224.0.0.1 is not"),
        "{e}"
    );
    let e = refused(&with_config(|c| {
        c.rfc3442_routes = vec![Route {
            prefix: Some(cidr("203.0.113.0", 24)),
            gateway: v6("fe80::1"),
        }]
    }));
    assert!(
        e.starts_with("network_config.rfc3442_routes[0].gateway: an IPv6"),
        "{e}"
    );
    let e = refused(&with_config(|c| {
        c.rfc3442_routes = vec![Route {
            prefix: Some(cidr("2001:db8::", 32)),
            gateway: v4("192.0.2.1"),
        }]
    }));
    assert!(
        e.starts_with("network_config.rfc3442_routes[0].prefix.addr"),
        "{e}"
    );
}

#[test]
fn the_mtu_must_be_in_range_and_fit_ipv6() {
    for m in [67, 65536, -1, 0] {
        let e = refused(&with_config(|c| c.mtu = Some(m)));
        assert!(e.starts_with("network_config.mtu:"), "{m}: {e}");
    }
    let e = refused(&with_config(|c| c.mtu = Some(1279)));
    assert!(e.contains("below 1280"), "{e}");
    // Without IPv6 addresses a small MTU is fine.
    let ok = with_config(|c| {
        c.mtu = Some(576);
        c.ipv6_addresses.clear();
    });
    assert_eq!(spec(&ok).mtu, Some(576));
}

#[test]
fn lists_are_bounded() {
    let many = vec![cidr("10.0.0.0", 8); MAX_ITEMS + 1];
    let e = refused(&with_config(|c| c.included_route_prefixes = many.clone()));
    assert_eq!(
        e,
        format!("network_config.included_route_prefixes: 65 entries, at most {MAX_ITEMS}")
    );
    let e = refused(&with_config(|c| {
        c.ipv6_addresses = vec![cidr("2001:db8::1", 64); MAX_ITEMS + 1]
    }));
    assert!(e.starts_with("network_config.ipv6_addresses: 65"), "{e}");
    let e = refused(&with_config(|c| {
        c.dns_servers = vec![v4("192.0.2.53"); MAX_ITEMS + 1]
    }));
    assert!(e.starts_with("network_config.dns_servers: 65"), "{e}");
    let ok = with_config(|c| c.excluded_route_prefixes = vec![cidr("10.0.0.0", 8); MAX_ITEMS]);
    assert_eq!(spec(&ok).excluded_routes.len(), MAX_ITEMS);
}

#[test]
fn route_prefixes_lose_their_host_bits() {
    let s = spec(&with_config(|c| {
        c.included_route_prefixes = vec![cidr("10.1.2.3", 8), cidr("2001:db8::77", 32)]
    }));
    assert_eq!(
        s.included_routes,
        vec![
            ("10.0.0.0".parse().unwrap(), 8),
            ("2001:db8::".parse().unwrap(), 32)
        ]
    );
}

#[test]
fn a_request_without_config_or_priority_is_an_empty_network() {
    let req = ConfigureNetworkRequest {
        ifindex: 3,
        ifname: "wlan0".into(),
        area: area::AREA_CLEAR,
        ..Default::default()
    };
    let s = spec(&req);
    assert_eq!(s.ipv4_address, None);
    assert_eq!(s.priority, Priority::default());
    assert_eq!(s.technology, Technology::Unknown);
}

// ---- plan: each area bit alone -------------------------------------------

#[test]
fn the_ipv4_address_bit_alone_syncs_the_ipv4_address() {
    let s = spec(&ethernet(area::AREA_IPV4_ADDRESS));
    let out = plan(&s, &Networks::default());
    assert_eq!(
        out.steps,
        vec![Step::SyncUplinkAddresses {
            link: s.link.clone(),
            ipv6: false,
            addrs: vec![UplinkAddress {
                addr: "192.0.2.10".parse().unwrap(),
                prefix_len: 24,
                broadcast: None,
            }],
        }]
    );
    assert_eq!(out.networks, Networks::default());
}

#[test]
fn the_ipv4_address_bit_without_an_address_removes_patchpanels() {
    let s = spec(&with_config(|c| c.ipv4_address = None));
    let s = NetworkSpec {
        area: area::AREA_IPV4_ADDRESS,
        ..s
    };
    assert_eq!(
        plan(&s, &Networks::default()).steps,
        vec![Step::SyncUplinkAddresses {
            link: s.link.clone(),
            ipv6: false,
            addrs: vec![],
        }]
    );
}

#[test]
fn the_ipv4_route_bit_alone_has_no_default_route() {
    let s = spec(&ethernet(area::AREA_IPV4_ROUTE));
    let out = plan(&s, &Networks::default());
    assert_eq!(kinds(&out.steps), vec!["routes4"]);
    let Step::SyncUplinkRoutes { routes, .. } = &out.steps[0] else {
        unreachable!()
    };
    assert!(routes.is_empty(), "{routes:?}");
}

#[test]
fn the_ipv4_default_route_bit_alone_does_nothing() {
    // As upstream: the default route is one of the IPv4 routes.
    let s = spec(&ethernet(area::AREA_IPV4_DEFAULT_ROUTE));
    assert!(plan(&s, &Networks::default()).steps.is_empty());
}

#[test]
fn ipv4_routes_with_the_default_route_bit_route_the_table_via_the_gateway() {
    let s = spec(&ethernet(
        area::AREA_IPV4_ROUTE | area::AREA_IPV4_DEFAULT_ROUTE,
    ));
    let out = plan(&s, &Networks::default());
    assert_eq!(
        out.steps,
        vec![Step::SyncUplinkRoutes {
            link: s.link.clone(),
            ipv6: false,
            routes: vec![RouteSpec {
                dst: "0.0.0.0".parse().unwrap(),
                prefix_len: 0,
                gateway: Some("192.0.2.1".parse().unwrap()),
                dev: Some(IfName::new("eth0").unwrap()),
                table: 1002,
                metric: None,
                kind: RouteKind::Unicast,
            }],
        }]
    );
    // Not when the config does not want the default route here.
    let s = NetworkSpec {
        ipv4_default_route: false,
        ..s
    };
    let Step::SyncUplinkRoutes { routes, .. } = &plan(&s, &Networks::default()).steps[0] else {
        unreachable!()
    };
    assert!(routes.is_empty());
}

#[test]
fn the_ipv6_address_bit_alone_syncs_the_ipv6_addresses() {
    let s = spec(&ethernet(area::AREA_IPV6_ADDRESS));
    let out = plan(&s, &Networks::default());
    assert_eq!(
        out.steps,
        vec![Step::SyncUplinkAddresses {
            link: s.link.clone(),
            ipv6: true,
            addrs: vec![UplinkAddress {
                addr: "2001:db8::10".parse().unwrap(),
                prefix_len: 64,
                broadcast: None,
            }],
        }]
    );
}

#[test]
fn the_ipv6_route_bit_alone_has_no_default_route() {
    let s = spec(&ethernet(area::AREA_IPV6_ROUTE));
    let out = plan(&s, &Networks::default());
    assert_eq!(
        out.steps,
        vec![Step::SyncUplinkRoutes {
            link: s.link.clone(),
            ipv6: true,
            routes: vec![],
        }]
    );
}

#[test]
fn the_ipv6_default_route_goes_via_the_ipv6_gateway() {
    let s = spec(&ethernet(
        area::AREA_IPV6_ROUTE | area::AREA_IPV6_DEFAULT_ROUTE,
    ));
    let Step::SyncUplinkRoutes { routes, .. } = &plan(&s, &Networks::default()).steps[0] else {
        unreachable!()
    };
    assert_eq!(routes.len(), 1);
    assert_eq!(routes[0].dst, "::".parse::<IpAddr>().unwrap());
    assert_eq!(routes[0].gateway, Some("fe80::1".parse().unwrap()));
    assert_eq!(routes[0].table, 1002);
    assert_eq!(routes[0].kind, RouteKind::Unicast);
    assert!(plan(
        &spec(&ethernet(area::AREA_IPV6_DEFAULT_ROUTE)),
        &Networks::default()
    )
    .steps
    .is_empty());
}

#[test]
fn the_routing_policy_bit_alone_adds_the_networks_rules_and_records_them() {
    let s = spec(&ethernet(area::AREA_ROUTING_POLICY));
    let out = plan(&s, &Networks::default());
    assert!(out.steps.iter().all(|s| matches!(s, Step::AddRule(_))));
    let added: BTreeSet<RuleSpec> = out
        .steps
        .iter()
        .map(|s| match s {
            Step::AddRule(r) => r.clone(),
            _ => unreachable!(),
        })
        .collect();
    assert_eq!(added, network_rules(&s));
    assert_eq!(out.networks.by_ifindex[&2].rules, added);
}

#[test]
fn the_dns_bit_alone_does_nothing() {
    let s = spec(&ethernet(area::AREA_DNS));
    let out = plan(&s, &Networks::default());
    assert!(out.steps.is_empty());
    let (plans, _) = plans(&s, &Networks::default(), "t");
    assert!(plans.is_empty());
}

#[test]
fn the_mtu_bit_alone_sets_the_mtu_and_defaults_to_1500() {
    let s = spec(&ethernet(area::AREA_MTU));
    assert_eq!(
        plan(&s, &Networks::default()).steps,
        vec![Step::SetUplinkMtu {
            link: s.link.clone(),
            mtu: 1400
        }]
    );
    let s = NetworkSpec { mtu: None, ..s };
    assert_eq!(
        plan(&s, &Networks::default()).steps,
        vec![Step::SetUplinkMtu {
            link: s.link.clone(),
            mtu: 1500
        }]
    );
}

#[test]
fn every_bit_comes_in_upstreams_order() {
    let s = spec(&ethernet(area::AREA_ALL & !area::AREA_CLEAR));
    let k = kinds(&plan(&s, &Networks::default()).steps);
    let mut dedup = k.clone();
    dedup.dedup();
    assert_eq!(
        dedup,
        vec!["addr4", "routes4", "addr6", "routes6", "add-rule", "mtu"]
    );
}

// ---- clear ---------------------------------------------------------------

#[test]
fn the_clear_bit_alone_clears_the_link_and_removes_its_rules() {
    let s = spec(&ethernet(area::AREA_ROUTING_POLICY));
    let configured = plan(&s, &Networks::default()).networks;
    let req = ethernet(area::AREA_CLEAR);
    let s = spec(&req);
    let (plans, after) = plans(&s, &configured, "clear");
    assert_eq!(plans.len(), 1);
    assert_eq!(plans[0].mode, ApplyMode::BestEffort);
    let k = kinds(&plans[0].steps);
    assert_eq!(k.last(), Some(&"clear"));
    assert!(k[..k.len() - 1].iter().all(|k| *k == "del-rule"), "{k:?}");
    assert_eq!(k.len() - 1, configured.rules().len());
    assert_eq!(after, Networks::default());
}

#[test]
fn clear_then_apply_is_two_plans() {
    let s = spec(&ethernet(area::AREA_ALL));
    let (plans, after) = plans(&s, &Networks::default(), "c");
    assert_eq!(plans.len(), 2);
    assert_eq!(kinds(&plans[0].steps), vec!["clear"]);
    assert_eq!(plans[1].mode, ApplyMode::Atomic);
    assert_eq!(after.by_ifindex[&2].rules, network_rules(&s));
}

#[test]
fn clearing_one_network_keeps_the_shared_rules_another_wants() {
    let eth = spec(&ethernet(area::AREA_ROUTING_POLICY));
    let mut wifi_req = ethernet(area::AREA_ROUTING_POLICY);
    wifi_req.ifindex = 3;
    wifi_req.ifname = "wlan0".into();
    let wifi = spec(&wifi_req);
    let n = plan(&eth, &Networks::default()).networks;
    let n = plan(&wifi, &n).networks;
    let out = clear_plan(&eth.link, &n);
    for step in &out.steps {
        if let Step::DeleteRule(r) = step {
            assert_eq!(r.table, 1002, "only eth0's rules go: {r:?}");
        }
    }
    assert!(out
        .networks
        .rules()
        .is_superset(&main_rules().into_iter().collect()));
}

// ---- rules: priorities ---------------------------------------------------

fn at(rules: &BTreeSet<RuleSpec>, priority: u32) -> Vec<&RuleSpec> {
    rules.iter().filter(|r| r.priority == priority).collect()
}

#[test]
fn a_primary_physical_network_has_upstreams_rules() {
    let s = spec(&ethernet(area::AREA_ALL));
    let rules = network_rules(&s);
    let own = at(&rules, 1010);
    // fwmark, oif, iif for both families, from for each address.
    assert_eq!(own.len(), 8, "{own:#?}");
    assert!(own
        .iter()
        .any(|r| r.fwmark == Some((1002 << 16, 0xffff_0000)) && !r.ipv6));
    assert!(own
        .iter()
        .any(|r| r.fwmark == Some((1002 << 16, 0xffff_0000)) && r.ipv6));
    assert!(own
        .iter()
        .any(|r| r.src == Some(("192.0.2.10".parse().unwrap(), 32))));
    assert!(own
        .iter()
        .any(|r| r.src == Some(("2001:db8::10".parse().unwrap(), 128))));
    assert_eq!(own.iter().filter(|r| r.iif.is_some()).count(), 2);
    assert_eq!(own.iter().filter(|r| r.oif.is_some()).count(), 2);
    assert!(own.iter().all(|r| r.table == 1002));
    assert_eq!(at(&rules, 1000).len(), 2, "lookup main, both families");
    assert!(at(&rules, 1000).iter().all(|r| r.table == 254));
    let catch_all = at(&rules, 32765);
    assert_eq!(catch_all.len(), 2);
    assert!(catch_all
        .iter()
        .all(|r| r.table == 1002 && r.fwmark.is_none()));
    let bypass = at(&rules, 32763);
    assert_eq!(bypass.len(), 2);
    assert!(bypass
        .iter()
        .all(|r| r.fwmark == Some((0x4000, 0xc000)) && r.table == 1002));
    assert!(at(&rules, 32764).is_empty(), "no route-on-VPN rule");
}

#[test]
fn a_secondary_physical_network_ranks_after_and_has_no_shared_rules() {
    let mut req = ethernet(area::AREA_ALL);
    req.priority = Some(NetworkPriority {
        ranking_order: 2,
        ..Default::default()
    });
    let rules = network_rules(&spec(&req));
    assert!(rules.iter().all(|r| r.priority == 1030), "{rules:#?}");
}

#[test]
fn a_vpn_ranks_before_main_without_source_or_iif_rules() {
    let s = spec(&vpn(area::AREA_ALL));
    let rules = network_rules(&s);
    let own = at(&rules, 10);
    assert_eq!(own.len(), 4, "fwmark and oif, both families: {own:#?}");
    assert!(own.iter().all(|r| r.iif.is_none() && r.src.is_none()));
    assert!(own.iter().all(|r| r.table == 1009));
    let on_vpn = at(&rules, 32764);
    assert_eq!(on_vpn.len(), 2);
    assert!(on_vpn
        .iter()
        .all(|r| r.fwmark == Some((0x8000, 0xc000)) && r.table == 1009));
    assert!(at(&rules, 1000).is_empty());
    assert!(at(&rules, 32765).is_empty());
    assert!(at(&rules, 32763).is_empty());
    // A VPN that is not the primary logical network: no route-on-VPN.
    let mut req = vpn(area::AREA_ALL);
    req.priority = Some(NetworkPriority {
        ranking_order: 1,
        ..Default::default()
    });
    let rules = network_rules(&spec(&req));
    assert!(rules.iter().all(|r| r.priority == 20), "{rules:#?}");
}

#[test]
fn rfc3442_destinations_get_a_rule_and_a_route() {
    let s = spec(&with_config(|c| {
        c.rfc3442_routes = vec![
            Route {
                prefix: Some(cidr("203.0.113.0", 24)),
                gateway: v4("192.0.2.254"),
            },
            Route {
                prefix: Some(cidr("198.51.100.7", 32)),
                gateway: v4("0.0.0.0"),
            },
        ]
    }));
    let rules = network_rules(&s);
    let dst = at(&rules, RFC3442_RULE_PRIORITY);
    assert_eq!(dst.len(), 2);
    assert!(dst
        .iter()
        .any(|r| r.dst == Some(("203.0.113.0".parse().unwrap(), 24))));
    let routes = ipv4_routes(&s);
    assert!(routes
        .iter()
        .any(|r| r.dst == "203.0.113.0".parse::<IpAddr>().unwrap()
            && r.gateway == Some("192.0.2.254".parse().unwrap())));
    assert!(routes
        .iter()
        .any(|r| r.dst == "198.51.100.7".parse::<IpAddr>().unwrap()
            && r.gateway.is_none()
            && r.dev.is_some()));
}

#[test]
fn a_new_rank_moves_the_rules() {
    let s = spec(&ethernet(area::AREA_ROUTING_POLICY));
    let n = plan(&s, &Networks::default()).networks;
    let mut req = ethernet(area::AREA_ROUTING_POLICY);
    req.priority = Some(NetworkPriority {
        ranking_order: 1,
        ..Default::default()
    });
    let out = plan(&spec(&req), &n);
    let k = kinds(&out.steps);
    let first_delete = k.iter().position(|k| *k == "del-rule").expect("deletes");
    assert!(k[first_delete..].iter().all(|k| *k == "del-rule"), "{k:?}");
    assert!(k[..first_delete].iter().all(|k| *k == "add-rule"), "{k:?}");
    // No more primary: lookup main, catch-all and bypass rules go too.
    let deleted: Vec<&RuleSpec> = out
        .steps
        .iter()
        .filter_map(|s| match s {
            Step::DeleteRule(r) => Some(r),
            _ => None,
        })
        .collect();
    assert!(deleted.iter().any(|r| r.priority == 1000));
    assert!(deleted.iter().any(|r| r.priority == 32765));
}

// ---- routes --------------------------------------------------------------

#[test]
fn an_on_link_route_to_the_gateway_only_when_it_is_outside_the_subnet() {
    let inside = spec(&ethernet(area::AREA_IPV4_ROUTE));
    assert!(ipv4_routes(&inside).iter().all(|r| r.prefix_len != 32));
    let outside = spec(&with_config(|c| c.ipv4_gateway = Some(v4("192.0.3.1"))));
    let routes = ipv4_routes(&outside);
    let onlink: Vec<&RouteSpec> = routes.iter().filter(|r| r.prefix_len == 32).collect();
    assert_eq!(onlink.len(), 1);
    assert_eq!(onlink[0].dst, "192.0.3.1".parse::<IpAddr>().unwrap());
    assert_eq!(onlink[0].gateway, None);
    assert_eq!(onlink[0].dev.as_ref().unwrap().as_str(), "eth0");
    assert!(in_subnet(
        Ipv4Addr::new(10, 0, 0, 5),
        8,
        Ipv4Addr::new(10, 255, 0, 1)
    ));
    assert!(!in_subnet(
        Ipv4Addr::new(10, 0, 0, 5),
        31,
        Ipv4Addr::new(10, 0, 0, 7)
    ));
}

#[test]
fn a_vpn_throws_excluded_prefixes_and_blackholes_ipv6() {
    let s = spec(&vpn(area::AREA_ALL));
    let routes = ipv4_routes(&s);
    assert!(routes.iter().any(|r| r.kind == RouteKind::Throw
        && r.dst == "198.51.100.0".parse::<IpAddr>().unwrap()
        && r.prefix_len == 24
        && r.dev.is_none()));
    // Default route without gateway: on-link out of the tunnel.
    assert!(routes
        .iter()
        .any(|r| r.prefix_len == 0 && r.gateway.is_none() && r.dev.is_some()));
    let v6 = ipv6_routes(&s);
    assert_eq!(v6.len(), 1);
    assert_eq!(v6[0].kind, RouteKind::Blackhole);
    assert_eq!(v6[0].table, 1009);
    // IPv4 routes alone still blackhole IPv6, as upstream.
    let only4 = NetworkSpec {
        area: area::AREA_IPV4_ROUTE,
        ..s
    };
    let k = kinds(&plan(&only4, &Networks::default()).steps);
    assert_eq!(k, vec!["routes4", "route"]);
}

#[test]
fn included_prefixes_go_via_the_gateway() {
    let s = spec(&with_config(|c| {
        c.included_route_prefixes = vec![cidr("172.16.0.0", 12), cidr("2001:db8:1::", 48)]
    }));
    let r4 = ipv4_routes(&s);
    assert!(r4
        .iter()
        .any(|r| r.dst == "172.16.0.0".parse::<IpAddr>().unwrap()
            && r.gateway == Some("192.0.2.1".parse().unwrap())));
    let r6 = ipv6_routes(&s);
    assert!(r6
        .iter()
        .any(|r| r.prefix_len == 48 && r.gateway == Some("fe80::1".parse().unwrap())));
}

#[test]
fn a_spec_round_trips_through_the_state_format() {
    let s = spec(&vpn(area::AREA_ALL));
    let n = plan(&s, &Networks::default()).networks;
    let text = serde_json::to_string(&(&s, &n)).unwrap();
    let back: (NetworkSpec, Networks) = serde_json::from_str(&text).unwrap();
    assert_eq!(back, (s, n));
}

// ---- sizes and seeds -----------------------------------------------------

/// A request at every bound: the plans still fit one IPC message and the
/// writer's limits.
#[test]
fn the_largest_valid_request_makes_plans_that_fit_one_message() {
    let req = with_config(|c| {
        c.ipv6_addresses = (0..MAX_ITEMS)
            .map(|i| cidr(&format!("2001:db8::{:x}", i + 1), 64))
            .collect();
        c.excluded_route_prefixes = (0..MAX_ITEMS)
            .map(|i| cidr(&format!("10.{i}.0.0"), 16))
            .collect();
        c.included_route_prefixes = (0..MAX_ITEMS)
            .map(|i| cidr(&format!("2001:db8:{:x}::", i + 1), 48))
            .collect();
        c.rfc3442_routes = (0..MAX_ITEMS)
            .map(|i| Route {
                prefix: Some(cidr(&format!("172.16.{i}.0"), 24)),
                gateway: v4("192.0.2.254"),
            })
            .collect();
    });
    let s = spec(&req);
    assert!(ipv4_routes(&s).len() <= 4 * patchpanel_ipc::datapath::MAX_UPLINK_ITEMS);
    assert!(ipv6_routes(&s).len() <= 4 * patchpanel_ipc::datapath::MAX_UPLINK_ITEMS);
    let (plans, _) = plans(&s, &Networks::default(), "big");
    assert_eq!(plans.len(), 2);
    for plan in plans {
        let bytes = patchpanel_ipc::encode(&patchpanel_ipc::Request::Apply(plan)).expect("encodes");
        assert!(
            bytes.len() <= patchpanel_ipc::MAX_MESSAGE_SIZE,
            "{} bytes",
            bytes.len()
        );
    }
}

/// The fuzz seeds (fuzz/make-seeds.py) are what they say.
#[test]
fn the_fuzz_seeds_decode_and_validate_as_named() {
    use patchpanel_proto::decode_request;
    let seed = |bytes: &'static [u8]| {
        assert_eq!(bytes[0], 16, "method byte of ConfigureNetwork");
        decode_request::<ConfigureNetworkRequest>(&bytes[1..]).expect("decodes")
    };
    let eth = spec(&seed(include_bytes!(
        "../../../fuzz/seeds/dbus_requests/configure-network"
    )));
    assert_eq!(eth.area, area::AREA_ALL);
    assert_eq!(eth.rfc3442_routes.len(), 1);
    assert_eq!(eth.mtu, Some(1400));
    let vpn = spec(&seed(include_bytes!(
        "../../../fuzz/seeds/dbus_requests/configure-network-vpn"
    )));
    assert_eq!(vpn.technology, Technology::Vpn);
    let clear = spec(&seed(include_bytes!(
        "../../../fuzz/seeds/dbus_requests/configure-network-clear"
    )));
    assert_eq!(clear.area, area::AREA_CLEAR);
    let inject = seed(include_bytes!(
        "../../../fuzz/seeds/dbus_requests/configure-network-inject"
    ));
    assert!(parse(&inject).unwrap_err().starts_with("ifname:"));
}
