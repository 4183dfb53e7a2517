//! Kernel tests for addresses, routes and policy rules, each in its own
//! network namespace, cross-checked with `ip -j`.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

mod common;

use std::net::IpAddr;

use common::{in_fresh_netns, ip_json};
use patchpanel_rtnl::{Family, LinkRef, Route, RouteScope, Rtnl, Rule};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A veth pair with both ends up, so routes through it are usable.
fn veth_up(rtnl: &Rtnl) {
    rtnl.create_veth("vh0", "vp0", None, "pp").unwrap();
    rtnl.set_up("vh0", true).unwrap();
    rtnl.set_up("vp0", true).unwrap();
}

#[test]
fn ipv4_address_add_is_idempotent_and_visible_to_ip() {
    in_fresh_netns(|| {
        let rtnl = Rtnl::new().unwrap();
        veth_up(&rtnl);
        let bcast = "100.115.92.3".parse().unwrap();

        assert!(rtnl
            .add_address("vh0", ip("100.115.92.1"), 30, Some(bcast))
            .unwrap());
        assert!(!rtnl
            .add_address("vh0", ip("100.115.92.1"), 30, Some(bcast))
            .unwrap());

        let index = rtnl.ifindex("vh0").unwrap();
        let addrs = rtnl.addresses(Some("vh0")).unwrap();
        let v4: Vec<_> = addrs.iter().filter(|a| a.addr.is_ipv4()).collect();
        assert_eq!(v4.len(), 1, "{addrs:?}");
        assert_eq!(
            (v4[0].ifindex, v4[0].addr, v4[0].prefix_len),
            (index, ip("100.115.92.1"), 30)
        );
        let shown = ip_json(&["-4", "addr", "show", "dev", "vh0"]);
        let info = &shown[0]["addr_info"][0];
        assert_eq!(info["local"], "100.115.92.1");
        assert_eq!(info["prefixlen"], 30);
        assert_eq!(info["broadcast"], "100.115.92.3");
    });
}

#[test]
fn address_delete_reports_whether_it_existed() {
    in_fresh_netns(|| {
        let rtnl = Rtnl::new().unwrap();
        veth_up(&rtnl);
        rtnl.add_address("vh0", ip("10.9.0.1"), 24, None).unwrap();
        rtnl.add_address("vh0", ip("fd00:9::1"), 64, None).unwrap();

        assert!(rtnl.delete_address("vh0", ip("10.9.0.1"), 24).unwrap());
        assert!(!rtnl.delete_address("vh0", ip("10.9.0.1"), 24).unwrap());
        assert!(rtnl.delete_address("vh0", ip("fd00:9::1"), 64).unwrap());
        assert!(!rtnl.delete_address("vh0", ip("fd00:9::1"), 64).unwrap());
        assert!(!rtnl.delete_address("ghost0", ip("10.9.0.1"), 24).unwrap());

        let left = rtnl.addresses(Some("vh0")).unwrap();
        assert!(
            left.iter()
                .all(|a| a.addr != ip("10.9.0.1") && a.addr != ip("fd00:9::1")),
            "{left:?}"
        );
        assert!(ip_json(&["-4", "addr", "show", "dev", "vh0"])
            .as_array()
            .unwrap()
            .iter()
            .all(|l| l["addr_info"].as_array().unwrap().is_empty()));
    });
}

#[test]
fn ipv6_address_is_listed_for_its_link_only() {
    in_fresh_netns(|| {
        let rtnl = Rtnl::new().unwrap();
        veth_up(&rtnl);
        assert!(rtnl.add_address("vh0", ip("fd00:1::1"), 64, None).unwrap());
        assert!(!rtnl.add_address("vh0", ip("fd00:1::1"), 64, None).unwrap());
        let on_vh0 = rtnl.addresses(Some("vh0")).unwrap();
        assert!(on_vh0
            .iter()
            .any(|a| a.addr == ip("fd00:1::1") && a.prefix_len == 64));
        let on_vp0 = rtnl.addresses(Some("vp0")).unwrap();
        assert!(on_vp0.iter().all(|a| a.addr != ip("fd00:1::1")));
        let all = rtnl.addresses(None).unwrap();
        assert!(all.iter().any(|a| a.addr == ip("fd00:1::1")), "{all:?}");
        let shown = ip_json(&["-6", "addr", "show", "dev", "vh0"]);
        let infos = shown[0]["addr_info"].as_array().unwrap();
        assert!(infos.iter().any(|i| i["local"] == "fd00:1::1"), "{infos:?}");
    });
}

#[test]
fn ipv6_broadcast_is_refused() {
    in_fresh_netns(|| {
        let rtnl = Rtnl::new().unwrap();
        veth_up(&rtnl);
        let err = rtnl
            .add_address("vh0", ip("fd00::1"), 64, Some("1.2.3.4".parse().unwrap()))
            .unwrap_err();
        assert!(matches!(err, patchpanel_rtnl::RtnlError::Invalid { .. }));
    });
}

#[test]
fn address_on_a_missing_link_is_no_such_link() {
    in_fresh_netns(|| {
        let rtnl = Rtnl::new().unwrap();
        let err = rtnl
            .add_address("ghost0", ip("10.0.0.1"), 24, None)
            .unwrap_err();
        assert_eq!(err.errno(), Some(libc::ENODEV));
        assert!(err.to_string().contains("10.0.0.1/24"), "{err}");
    });
}

#[test]
fn routes_in_table_1005_are_added_listed_and_deleted() {
    in_fresh_netns(|| {
        let rtnl = Rtnl::new().unwrap();
        veth_up(&rtnl);
        rtnl.add_address("vh0", ip("100.115.92.1"), 30, None)
            .unwrap();

        let mut default = Route::default_route(Family::V4);
        default.gateway = Some(ip("100.115.92.2"));
        default.oif = Some(LinkRef::from("vh0"));
        default.table = 1005;
        let mut onlink = Route::new(ip("10.20.0.0"), 16);
        onlink.oif = Some("vh0".into());
        onlink.scope = RouteScope::Link;
        onlink.table = 1005;
        onlink.metric = Some(50);

        rtnl.add_route(&default).unwrap();
        rtnl.add_route(&default).unwrap(); // replace: idempotent
        rtnl.add_route(&onlink).unwrap();

        let index = rtnl.ifindex("vh0").unwrap();
        let mut listed = rtnl.routes(Family::V4, Some(1005)).unwrap();
        listed.sort_by_key(|r| r.prefix_len);
        assert_eq!(listed.len(), 2, "{listed:?}");
        assert_eq!(listed[0].gateway, Some(ip("100.115.92.2")));
        assert_eq!(listed[0].oif, Some(LinkRef::Index(index)));
        assert_eq!(listed[0].table, 1005);
        assert_eq!(
            (
                listed[1].dst,
                listed[1].prefix_len,
                listed[1].metric,
                listed[1].scope
            ),
            (ip("10.20.0.0"), 16, Some(50), RouteScope::Link)
        );
        // Not in the main table.
        assert!(rtnl
            .routes(Family::V4, Some(254))
            .unwrap()
            .iter()
            .all(|r| r.table == 254 && r.dst != ip("10.20.0.0")));

        let shown = ip_json(&["route", "show", "table", "1005"]);
        let shown = shown.as_array().unwrap();
        assert_eq!(shown.len(), 2, "{shown:?}");
        let d = shown.iter().find(|r| r["dst"] == "default").unwrap();
        assert_eq!(d["gateway"], "100.115.92.2");
        assert_eq!(d["dev"], "vh0");
        let o = shown.iter().find(|r| r["dst"] == "10.20.0.0/16").unwrap();
        assert_eq!(o["metric"], 50);
        assert_eq!(o["scope"], "link");

        assert!(rtnl.delete_route(&default).unwrap());
        assert!(!rtnl.delete_route(&default).unwrap());
        assert!(rtnl.delete_route(&onlink).unwrap());
        assert!(rtnl.routes(Family::V4, Some(1005)).unwrap().is_empty());
        assert!(ip_json(&["route", "show", "table", "1005"])
            .as_array()
            .unwrap()
            .is_empty());
    });
}

#[test]
fn replace_moves_a_route_to_the_new_gateway() {
    in_fresh_netns(|| {
        let rtnl = Rtnl::new().unwrap();
        veth_up(&rtnl);
        rtnl.add_address("vh0", ip("10.0.0.1"), 24, None).unwrap();
        let mut r = Route::new(ip("192.168.7.0"), 24);
        r.gateway = Some(ip("10.0.0.2"));
        r.table = 1005;
        rtnl.add_route(&r).unwrap();
        r.gateway = Some(ip("10.0.0.3"));
        rtnl.add_route(&r).unwrap();
        let listed = rtnl.routes(Family::V4, Some(1005)).unwrap();
        assert_eq!(listed.len(), 1, "{listed:?}");
        assert_eq!(listed[0].gateway, Some(ip("10.0.0.3")));
    });
}

#[test]
fn ipv6_routes_in_table_1005_round_trip() {
    in_fresh_netns(|| {
        let rtnl = Rtnl::new().unwrap();
        veth_up(&rtnl);
        let mut r = Route::new(ip("fd00:77::"), 64);
        r.oif = Some("vh0".into());
        r.table = 1005;
        r.metric = Some(1024);
        rtnl.add_route(&r).unwrap();
        let listed = rtnl.routes(Family::V6, Some(1005)).unwrap();
        assert_eq!(listed.len(), 1, "{listed:?}");
        assert_eq!((listed[0].dst, listed[0].prefix_len), (ip("fd00:77::"), 64));
        let shown = ip_json(&["-6", "route", "show", "table", "1005"]);
        assert_eq!(shown[0]["dst"], "fd00:77::/64");
        assert_eq!(shown[0]["dev"], "vh0");
        assert!(rtnl.delete_route(&r).unwrap());
        assert!(!rtnl.delete_route(&r).unwrap());
    });
}

#[test]
fn route_delete_through_a_missing_device_is_false() {
    in_fresh_netns(|| {
        let rtnl = Rtnl::new().unwrap();
        let mut r = Route::new(ip("10.1.0.0"), 16);
        r.oif = Some("ghost0".into());
        assert!(!rtnl.delete_route(&r).unwrap());
    });
}

#[test]
fn route_to_an_unreachable_gateway_fails_with_the_kernel_errno() {
    in_fresh_netns(|| {
        let rtnl = Rtnl::new().unwrap();
        veth_up(&rtnl);
        let mut r = Route::default_route(Family::V4);
        r.gateway = Some(ip("203.0.113.1"));
        r.oif = Some("vh0".into());
        r.table = 1005;
        let err = rtnl.add_route(&r).unwrap_err();
        assert_eq!(err.errno(), Some(libc::ENETUNREACH), "{err}");
        // The kernel's extended-ack text comes through.
        assert!(
            matches!(&err, patchpanel_rtnl::RtnlError::Kernel { message: Some(m), .. } if !m.is_empty()),
            "{err}"
        );
        assert!(err.to_string().contains("203.0.113.1"), "{err}");
    });
}

#[test]
fn ipv4_fwmark_rule_with_mask_and_suppress_prefixlength_round_trips() {
    in_fresh_netns(|| {
        let rtnl = Rtnl::new().unwrap();
        let mut rule = Rule::new(Family::V4, 1010, 1005);
        rule.fwmark = Some((0x03ea_0000, 0xffff_0000));
        let mut suppress = Rule::new(Family::V4, 1000, 254);
        suppress.suppress_prefixlen = Some(0);

        assert!(rtnl.add_rule(&rule).unwrap());
        assert!(!rtnl.add_rule(&rule).unwrap());
        assert!(rtnl.add_rule(&suppress).unwrap());

        let rules = rtnl.rules(Family::V4).unwrap();
        assert!(rules.contains(&rule), "{rules:?}");
        assert!(rules.contains(&suppress), "{rules:?}");
        // The kernel's default rules are there too.
        assert!(rules.iter().any(|r| r.priority == 32766 && r.table == 254));

        let shown = ip_json(&["-4", "rule", "show"]);
        let shown = shown.as_array().unwrap();
        let r = shown.iter().find(|r| r["priority"] == 1010).unwrap();
        assert_eq!(r["fwmark"], "0x3ea0000");
        assert_eq!(r["fwmask"], "0xffff0000");
        assert_eq!(r["table"], "1005");
        let s = shown.iter().find(|r| r["priority"] == 1000).unwrap();
        assert_eq!(s["suppress_prefixlen"], 0);
        assert_eq!(s["table"], "main");

        assert!(rtnl.delete_rule(&rule).unwrap());
        assert!(!rtnl.delete_rule(&rule).unwrap());
        assert!(rtnl.delete_rule(&suppress).unwrap());
        assert!(ip_json(&["-4", "rule", "show"])
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["priority"] != 1010 && r["priority"] != 1000));
    });
}

#[test]
fn ipv6_rule_with_iif_source_and_suppress_prefixlength_round_trips() {
    in_fresh_netns(|| {
        let rtnl = Rtnl::new().unwrap();
        let mut rule = Rule::new(Family::V6, 1020, 1005);
        rule.iif = Some("arc_eth0".into());
        rule.src = Some((ip("fd00:5::"), 64));
        rule.suppress_prefixlen = Some(0);
        let mut oif_rule = Rule::new(Family::V6, 1021, 1006);
        oif_rule.oif = Some("vh0".into());
        oif_rule.fwmark = Some((0x100, 0x100));

        assert!(rtnl.add_rule(&rule).unwrap());
        assert!(!rtnl.add_rule(&rule).unwrap());
        assert!(rtnl.add_rule(&oif_rule).unwrap());
        let rules = rtnl.rules(Family::V6).unwrap();
        assert!(rules.contains(&rule), "{rules:?}");
        assert!(rules.contains(&oif_rule), "{rules:?}");
        assert!(rtnl
            .rules(Family::V4)
            .unwrap()
            .iter()
            .all(|r| r.priority != 1020));

        let shown = ip_json(&["-6", "rule", "show"]);
        let r = shown
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["priority"] == 1020)
            .unwrap()
            .clone();
        assert_eq!(r["iif"], "arc_eth0");
        assert_eq!(r["src"], "fd00:5::");
        assert_eq!(r["srclen"], 64);
        assert_eq!(r["suppress_prefixlen"], 0);
        assert_eq!(r["table"], "1005");

        assert!(rtnl.delete_rule(&rule).unwrap());
        assert!(!rtnl.delete_rule(&rule).unwrap());
        assert!(rtnl.delete_rule(&oif_rule).unwrap());
        assert!(rtnl
            .rules(Family::V6)
            .unwrap()
            .iter()
            .all(|r| r.priority < 1000 || r.priority > 1100));
    });
}

#[test]
fn deleting_a_missing_rule_is_false() {
    in_fresh_netns(|| {
        let rtnl = Rtnl::new().unwrap();
        let rule = Rule::new(Family::V4, 4242, 4242);
        assert!(!rtnl.delete_rule(&rule).unwrap());
    });
}
