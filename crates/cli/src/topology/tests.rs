use std::net::Ipv4Addr;

use patchpanel_proto::network_device::{GuestType, TechnologyType};
use patchpanel_proto::{ipv4_to_net_u32, IPv4Subnet, NetworkDevice};
use serde_json::Value;

use super::kernel::{parse_iptables_save, Family, Firewall, KernelState};
use super::render::{dot, tree};
use super::*;

const LINKS: &str = r#"[
 {"ifindex":1,"ifname":"lo","operstate":"UNKNOWN","address":"00:00:00:00:00:00"},
 {"ifindex":2,"ifname":"eth0","operstate":"UP","address":"e2:5e:b1:81:1e:f9","linkinfo":{"info_kind":"veth"}},
 {"ifindex":3,"ifname":"vmtap0","operstate":"DOWN","linkinfo":{"info_kind":"tun"}},
 {"ifindex":7,"ifname":"vetheth0","operstate":"LOWERLAYERDOWN","master":"arc_eth0","linkinfo":{"info_kind":"veth"}},
 {"ifindex":8,"ifname":"arc_eth0","operstate":"DOWN","linkinfo":{"info_kind":"bridge"}}
]"#;
const ADDRS: &str = r#"[
 {"ifname":"eth0","addr_info":[{"family":"inet","local":"192.0.2.2","prefixlen":24,"scope":"global"},
                               {"family":"inet6","local":"fe80::1","prefixlen":64,"scope":"link"}]},
 {"ifname":"vmtap0","addr_info":[{"family":"inet","local":"100.115.92.25","prefixlen":30,"scope":"global"}]},
 {"ifname":"arc_eth0","addr_info":[{"family":"inet","local":"100.115.92.5","prefixlen":30,"scope":"global"}]}
]"#;
const ROUTES: &str = r#"[
 {"dst":"default","gateway":"192.0.2.1","dev":"eth0","table":"1002","protocol":"157"},
 {"dst":"default","gateway":"192.0.2.1","dev":"eth0"},
 {"dst":"100.115.92.4/30","dev":"arc_eth0","protocol":"kernel","scope":"link"},
 {"dst":"100.115.92.24/30","dev":"vmtap0","protocol":"kernel"},
 {"dst":"100.115.92.192/28","gateway":"100.115.92.26","dev":"vmtap0","protocol":"157"},
 {"type":"local","dst":"100.115.92.25","dev":"vmtap0","table":"local","protocol":"kernel"}
]"#;
const RULES: &str = r#"[
 {"priority":0,"src":"all","table":"local"},
 {"priority":1010,"src":"192.0.2.2","table":"1002"},
 {"priority":1010,"src":"all","fwmark":"0x3ea0000","fwmask":"0xffff0000","table":"1002"},
 {"priority":32766,"src":"all","table":"main"}
]"#;
const SAVE: &str = "\
*mangle
:PREROUTING ACCEPT [0:0]
:patchpanel_PREROUTING - [0:0]
:PREROUTING_vmtap0 - [0:0]
:PREROUTING_arc_eth0 - [0:0]
:POSTROUTING_eth0 - [0:0]
:patchpanel_POSTROUTING - [0:0]
:apply_vpn_mark - [0:0]
-A PREROUTING -j patchpanel_PREROUTING
-A patchpanel_PREROUTING -i vmtap0 -j PREROUTING_vmtap0
-A patchpanel_PREROUTING -i arc_eth0 -j PREROUTING_arc_eth0
-A PREROUTING_vmtap0 -j MARK --set-xmark 0x1/0x1
-A PREROUTING_vmtap0 -j MARK --set-xmark 0x2100/0x3f00
-A PREROUTING_vmtap0 -j apply_vpn_mark
-A PREROUTING_arc_eth0 -j MARK --set-xmark 0x2000/0x3f00
-A PREROUTING_arc_eth0 -j MARK --set-xmark 0x3ea0000/0xffff0000
-A patchpanel_POSTROUTING -o eth0 -j POSTROUTING_eth0
-A POSTROUTING_eth0 -j CONNMARK --set-xmark 0x3ea0000/0xffff0000
COMMIT
*filter
:guest_forward - [0:0]
-A guest_forward -o vmtap0 -j ACCEPT
-A guest_forward -i arc_eth0 -j ACCEPT
COMMIT
";

fn kernel(with_firewall: bool) -> KernelState {
    let mut firewall = Firewall::default();
    parse_iptables_save(SAVE, Family::V4, &mut firewall);
    parse_iptables_save(
        "*filter\n:guest_forward - [0:0]\n-A guest_forward -o vmtap0 -j ACCEPT\nCOMMIT\n",
        Family::V6,
        &mut firewall,
    );
    KernelState {
        links: serde_json::from_str(LINKS).unwrap(),
        addrs: serde_json::from_str(ADDRS).unwrap(),
        routes: serde_json::from_str::<Vec<IpRoute>>(ROUTES)
            .unwrap()
            .into_iter()
            .map(|r| (Family::V4, r))
            .collect(),
        rules: serde_json::from_str::<Vec<IpRule>>(RULES)
            .unwrap()
            .into_iter()
            .map(|r| (Family::V4, r))
            .collect(),
        firewall: with_firewall.then_some(firewall),
        notes: if with_firewall {
            Vec::new()
        } else {
            vec!["firewall chains and fwmarks left out: iptables-save: Permission denied".into()]
        },
    }
}

fn devices() -> Vec<NetworkDevice> {
    vec![
        NetworkDevice {
            ifname: "vmtap0".into(),
            phys_ifname: "vmtap0".into(),
            guest_type: GuestType::TerminaVm as i32,
            ipv4_subnet: Some(IPv4Subnet::new(Ipv4Addr::new(100, 115, 92, 24), 30)),
            host_ipv4_addr: ipv4_to_net_u32(Ipv4Addr::new(100, 115, 92, 25)),
            ipv4_addr: ipv4_to_net_u32(Ipv4Addr::new(100, 115, 92, 26)),
            ..Default::default()
        },
        NetworkDevice {
            ifname: "arc_eth0".into(),
            phys_ifname: "eth0".into(),
            guest_ifname: "eth0".into(),
            guest_type: GuestType::Arc as i32,
            technology_type: TechnologyType::Ethernet as i32,
            ipv4_subnet: Some(IPv4Subnet::new(Ipv4Addr::new(100, 115, 92, 4), 30)),
            host_ipv4_addr: ipv4_to_net_u32(Ipv4Addr::new(100, 115, 92, 5)),
            ipv4_addr: ipv4_to_net_u32(Ipv4Addr::new(100, 115, 92, 6)),
            ..Default::default()
        },
    ]
}

fn guest<'a>(t: &'a Topology, name: &str) -> &'a Guest {
    t.guests.iter().find(|g| g.device.ifname == name).unwrap()
}

#[test]
fn the_uplink_is_the_link_with_a_default_route_and_not_a_guest() {
    let t = assemble(&devices(), &kernel(true));

    assert_eq!(t.default_uplink.as_deref(), Some("eth0"));
    let names: Vec<&str> = t.uplinks.iter().map(|u| u.ifname.as_str()).collect();
    assert_eq!(names, ["eth0"]);
    assert_eq!(t.uplinks[0].addresses, ["192.0.2.2/24"]);
}

#[test]
fn uplink_rules_are_those_of_its_routing_table() {
    let t = assemble(&devices(), &kernel(true));

    let selectors: Vec<&str> = t.uplinks[0]
        .rules
        .iter()
        .map(|r| r.selector.as_str())
        .collect();
    assert_eq!(selectors, ["from 192.0.2.2", "fwmark 0x3ea0000/0xffff0000"]);
    assert!(t.uplinks[0].routes.iter().any(|r| r.table == "1002"));
}

#[test]
fn a_guest_pinned_to_an_uplink_hangs_under_it_and_others_follow_the_default() {
    let t = assemble(&devices(), &kernel(true));

    let arc = guest(&t, "arc_eth0");
    assert_eq!(arc.uplink.as_deref(), Some("eth0"));
    assert!(!arc.follows_default);
    let vm = guest(&t, "vmtap0");
    assert_eq!(vm.uplink.as_deref(), Some("eth0"));
    assert!(vm.follows_default);
}

#[test]
fn bridge_members_are_listed_and_their_routes_kept_without_local_noise() {
    let t = assemble(&devices(), &kernel(true));

    assert_eq!(guest(&t, "arc_eth0").members[0].ifname, "vetheth0");
    let vm_routes: Vec<&str> = guest(&t, "vmtap0")
        .routes
        .iter()
        .map(|r| r.dst.as_str())
        .collect();
    assert_eq!(vm_routes, ["100.115.92.24/30", "100.115.92.192/28"]);
}

#[test]
fn guest_fwmarks_come_from_the_chains_its_interface_jumps_to() {
    let t = assemble(&devices(), &kernel(true));

    let vm = guest(&t, "vmtap0");
    let marks: Vec<(&str, &str)> = vm
        .fwmarks
        .iter()
        .map(|m| (m.value.as_str(), m.meaning.as_str()))
        .collect();
    assert_eq!(
        marks,
        [
            ("0x1", "masquerade (legacy SNAT bit)"),
            ("0x2100", "source CrostiniVm")
        ]
    );
    assert_eq!(vm.fwmarks[1].chain, "mangle/PREROUTING_vmtap0");
    let arc = guest(&t, "arc_eth0");
    assert!(
        arc.fwmarks
            .iter()
            .any(|m| m.meaning == "routing table 1002"),
        "{arc:?}"
    );
}

#[test]
fn chains_include_jump_targets_and_merge_families() {
    let t = assemble(&devices(), &kernel(true));

    let vm = guest(&t, "vmtap0");
    let chains: Vec<String> = vm
        .chains
        .iter()
        .map(|c| format!("{}/{}", c.table, c.chain))
        .collect();
    assert_eq!(
        chains,
        [
            "filter/guest_forward",
            "mangle/PREROUTING_vmtap0",
            "mangle/apply_vpn_mark",
            "mangle/patchpanel_PREROUTING"
        ]
    );
    let forward = vm
        .chains
        .iter()
        .find(|c| c.chain == "guest_forward")
        .unwrap();
    assert_eq!(forward.families, ["ipv4", "ipv6"]);
    // arc_eth0's rule in guest_forward is not vmtap0's, and its chain is not.
    assert!(!chains.iter().any(|c| c.contains("arc_eth0")));
    let uplink_chains: Vec<&str> = t.uplinks[0]
        .chains
        .iter()
        .map(|c| c.chain.as_str())
        .collect();
    assert_eq!(
        uplink_chains,
        ["POSTROUTING_eth0", "patchpanel_POSTROUTING"]
    );
    assert_eq!(t.uplinks[0].fwmarks[0].kind, "connmark");
}

#[test]
fn without_the_firewall_chains_are_empty_and_a_note_says_why() {
    let t = assemble(&devices(), &kernel(false));

    assert!(!t.firewall_read);
    assert!(t
        .guests
        .iter()
        .all(|g| g.chains.is_empty() && g.fwmarks.is_empty()));
    assert!(
        tree(&t).contains("notes:\n  firewall chains"),
        "{}",
        tree(&t)
    );
}

#[test]
fn a_phys_ifname_missing_from_the_kernel_is_an_uplink_without_a_link() {
    let mut devs = devices();
    devs[1].phys_ifname = "wlan0".into();

    let t = assemble(&devs, &kernel(true));

    let wlan = t.uplinks.iter().find(|u| u.ifname == "wlan0").unwrap();
    assert!(wlan.link.is_none());
    assert!(
        tree(&t).contains("uplink wlan0 (not in the kernel)"),
        "{}",
        tree(&t)
    );
}

#[test]
fn without_an_uplink_guests_get_their_own_root() {
    let mut k = kernel(true);
    k.routes.retain(|(_, r)| r.dst != "default");

    let t = assemble(&devices()[..1], &k);
    let text = tree(&t);

    assert_eq!(t.default_uplink, None);
    assert!(
        text.starts_with("guests without an uplink\n└─ guest vmtap0 TERMINA_VM"),
        "{text}"
    );
}

#[test]
fn tree_puts_guests_under_their_uplink_with_box_drawing() {
    let text = tree(&assemble(&devices(), &kernel(true)));

    assert!(
        text.starts_with(
            "uplink eth0 (veth, UP, ifindex 2, e2:5e:b1:81:1e:f9) [default network]\n"
        ),
        "{text}"
    );
    assert!(
        text.contains(
            "├─ guest vmtap0 TERMINA_VM (tun, DOWN, ifindex 3) [follows the default network]\n"
        ),
        "{text}"
    );
    assert!(
        text.contains("└─ guest arc_eth0 ARC (bridge, DOWN, ifindex 8)\n"),
        "{text}"
    );
    assert!(text.contains("│  ├─ fwmarks\n"), "{text}");
    assert!(
        text.contains(
            "mark 0x2100/0x3f00 source CrostiniVm (set in mangle/PREROUTING_vmtap0, ipv4)"
        ),
        "{text}"
    );
    assert!(text.lines().all(|l| !l.ends_with(' ')), "{text:?}");
}

#[test]
fn empty_topology_says_so() {
    let t = assemble(&[], &KernelState::default());

    assert_eq!(tree(&t), "no uplinks and no guest devices\n");
}

#[test]
fn dot_has_a_node_per_uplink_and_guest_and_an_edge_to_the_uplink() {
    let text = dot(&assemble(&devices(), &kernel(true)));

    assert!(text.starts_with("digraph patchpanel {\n"), "{text}");
    assert!(text.ends_with("}\n"), "{text}");
    assert!(text.contains("\"uplink:eth0\" [label=\"uplink eth0\\n192.0.2.2/24\\ndefault network\", shape=box3d];"), "{text}");
    assert!(
        text.contains("\"guest:vmtap0\" -> \"uplink:eth0\" [style=dashed, label=\"default\"];"),
        "{text}"
    );
    assert!(
        text.contains("\"guest:arc_eth0\" -> \"uplink:eth0\";"),
        "{text}"
    );
    assert!(
        text.contains("\"link:vetheth0\" -> \"guest:arc_eth0\" [arrowhead=none];"),
        "{text}"
    );
}

#[test]
fn dot_escapes_quotes_in_labels() {
    let mut devs = devices();
    devs[0].ifname = "we\"ird".into();

    let text = dot(&assemble(&devs, &kernel(true)));

    assert!(text.contains("\"guest:we\\\"ird\""), "{text}");
}

#[test]
fn json_has_the_documented_keys() {
    let value: Value = serde_json::to_value(assemble(&devices(), &kernel(true))).unwrap();

    assert_eq!(value["default_uplink"], "eth0");
    assert_eq!(value["firewall_read"], true);
    assert_eq!(value["uplinks"][0]["ifname"], "eth0");
    assert_eq!(value["uplinks"][0]["link"]["kind"], "veth");
    let vm = &value["guests"][0];
    assert_eq!(vm["device"]["ifname"], "vmtap0");
    assert_eq!(vm["uplink"], "eth0");
    assert_eq!(vm["follows_default"], true);
    assert_eq!(vm["addresses"][0], "100.115.92.25/30");
    assert_eq!(vm["routes"][1]["gateway"], "100.115.92.26");
    assert_eq!(vm["fwmarks"][1]["mask"], "0x3f00");
    assert_eq!(vm["chains"][0]["families"][1], "ipv6");
}

#[test]
fn mark_meanings_follow_the_fwmark_layout() {
    assert_eq!(mark_meaning(0x2200, 0x3f00), "source ParallelsVm");
    assert_eq!(mark_meaning(0x3ea_0000, 0xffff_0000), "routing table 1002");
    assert_eq!(mark_meaning(0x8000, 0xc000), "route on VPN");
    assert_eq!(mark_meaning(0x5, 0xff), "");
}

#[test]
fn uplink_groups_come_in_order_routes_rules_fwmarks_chains() {
    let mut k = kernel(true);
    k.addrs.retain(|a| a.ifname != "eth0");

    let text = tree(&assemble(&devices(), &k));

    let at = |group: &str| {
        text.find(&format!("─ {group}\n"))
            .unwrap_or_else(|| panic!("no {group} in {text}"))
    };
    assert!(at("routes") < at("ip rules"), "{text}");
    assert!(at("ip rules") < at("fwmarks"), "{text}");
    assert!(at("fwmarks") < at("chains"), "{text}");
}
