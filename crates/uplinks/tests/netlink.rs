//! The netlink source against the kernel, each test in its own network
//! namespace: veth `eth0` (peer `peer0`), `wlan0`, a non-uplink `foo0` (veths too).

#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

mod common;

use std::net::Ipv4Addr;

use common::{add_link, brief, collect_until, ends_with, enter_private_netns, ifindex, ip};
use patchpanel_uplinks::{
    IfName, NetlinkUplinks, Technology, UplinkEvent, UplinkSource, DEFAULT_PREFIXES,
};

fn name(n: &str) -> IfName {
    IfName::new(n).unwrap()
}

fn prefixes() -> Vec<String> {
    DEFAULT_PREFIXES.iter().map(|p| p.to_string()).collect()
}

/// eth0 192.168.1.2/24 with the default route via 192.168.1.1; wlan0
/// 172.16.0.2/16, up, with (if `wlan0_default`) a worse default route;
/// foo0 with its own, better, default route that must not count.
fn world(wlan0_default: bool) {
    enter_private_netns();
    ip(&[
        "link", "add", "eth0", "type", "veth", "peer", "name", "peer0",
    ]);
    add_link("wlan0");
    add_link("foo0");
    for link in ["eth0", "peer0", "wlan0", "foo0"] {
        ip(&["link", "set", link, "up"]);
    }
    ip(&["addr", "add", "192.168.1.2/24", "dev", "eth0"]);
    ip(&["addr", "add", "172.16.0.2/16", "dev", "wlan0"]);
    ip(&["addr", "add", "10.9.0.2/24", "dev", "foo0"]);
    ip(&[
        "route",
        "add",
        "default",
        "via",
        "192.168.1.1",
        "dev",
        "eth0",
        "metric",
        "100",
    ]);
    ip(&[
        "route", "add", "default", "via", "10.9.0.1", "dev", "foo0", "metric", "1",
    ]);
    if wlan0_default {
        ip(&[
            "route",
            "add",
            "default",
            "via",
            "172.16.0.1",
            "dev",
            "wlan0",
            "metric",
            "600",
        ]);
    }
}

fn started() -> NetlinkUplinks {
    let mut source = NetlinkUplinks::open(&prefixes()).unwrap();
    let events = collect_until(
        &mut source,
        ends_with(UplinkEvent::DefaultChanged(Some(name("eth0")))),
    );
    assert_eq!(brief(&events).len(), 3, "{events:#?}");
    source
}

#[test]
fn uplinks_present_at_start_are_added_with_their_state_then_the_default() {
    world(false);
    let mut source = NetlinkUplinks::open(&prefixes()).unwrap();

    let events = collect_until(
        &mut source,
        ends_with(UplinkEvent::DefaultChanged(Some(name("eth0")))),
    );

    let (eth0, wlan0) = (ifindex("eth0"), ifindex("wlan0"));
    assert_eq!(
        brief(&events),
        [
            format!("+eth0#{eth0}"),
            format!("+wlan0#{wlan0}"),
            "*eth0".into()
        ]
    );
    let UplinkEvent::Added(e) = &events[0] else {
        unreachable!()
    };
    assert!(e.up);
    assert_eq!(e.technology, Technology::Ethernet);
    assert_eq!(e.ipv4, [(Ipv4Addr::new(192, 168, 1, 2), 24)]);
    assert_eq!(e.gateway4, Some(Ipv4Addr::new(192, 168, 1, 1)));
    let UplinkEvent::Added(w) = &events[1] else {
        unreachable!()
    };
    assert_eq!(w.technology, Technology::Wifi);
    assert_eq!(w.gateway4, None);
    assert_eq!(source.default_uplink().unwrap().ifindex, eth0);
}

#[test]
fn deleting_the_default_uplink_removes_it_and_leaves_no_default() {
    world(false);
    let mut source = started();
    let eth0 = ifindex("eth0");

    ip(&["link", "del", "eth0"]);
    let events = collect_until(&mut source, ends_with(UplinkEvent::DefaultChanged(None)));

    assert_eq!(brief(&events), [format!("-eth0#{eth0}"), "*none".into()]);
    assert_eq!(source.uplinks().len(), 1);
}

#[test]
fn deleting_the_default_uplink_moves_the_default_to_the_next_default_route() {
    world(true);
    let mut source = started();
    let eth0 = ifindex("eth0");

    ip(&["link", "del", "eth0"]);
    let events = collect_until(
        &mut source,
        ends_with(UplinkEvent::DefaultChanged(Some(name("wlan0")))),
    );

    assert_eq!(brief(&events), [format!("-eth0#{eth0}"), "*wlan0".into()]);
}

#[test]
fn a_recreated_uplink_is_added_with_its_new_ifindex() {
    world(false);
    let mut source = started();
    let old = ifindex("eth0");
    ip(&["link", "del", "eth0"]);
    collect_until(&mut source, ends_with(UplinkEvent::DefaultChanged(None)));

    add_link("eth0");
    let events = collect_until(&mut source, |e| !e.is_empty());

    let new = ifindex("eth0");
    assert_ne!(old, new);
    assert_eq!(brief(&events), [format!("+eth0#{new}")]);
    let UplinkEvent::Added(e) = &events[0] else {
        unreachable!()
    };
    assert!(!e.up);
}

#[test]
fn a_default_route_change_moves_the_default() {
    world(true);
    let mut source = started();

    ip(&[
        "route",
        "del",
        "default",
        "via",
        "192.168.1.1",
        "dev",
        "eth0",
    ]);
    let events = collect_until(&mut source, |e| {
        e.contains(&UplinkEvent::DefaultChanged(Some(name("wlan0"))))
    });

    // eth0 lost its gateway too.
    let eth0 = ifindex("eth0");
    assert_eq!(brief(&events), [format!("~eth0#{eth0}"), "*wlan0".into()]);
    let UplinkEvent::Changed(e) = &events[0] else {
        unreachable!()
    };
    assert_eq!(e.gateway4, None);
}

#[test]
fn link_state_and_address_changes_are_reported_as_changed() {
    world(false);
    let mut source = started();
    let wlan0 = ifindex("wlan0");

    ip(&["link", "set", "wlan0", "down"]);
    let down = collect_until(&mut source, |e| !e.is_empty());
    ip(&["addr", "add", "10.1.1.1/24", "dev", "wlan0"]);
    let addr = collect_until(&mut source, |e| !e.is_empty());

    assert_eq!(brief(&down), [format!("~wlan0#{wlan0}")]);
    assert!(matches!(&down[0], UplinkEvent::Changed(u) if !u.up));
    assert_eq!(brief(&addr), [format!("~wlan0#{wlan0}")]);
    let UplinkEvent::Changed(u) = &addr[0] else {
        unreachable!()
    };
    assert_eq!(
        u.ipv4,
        [
            (Ipv4Addr::new(10, 1, 1, 1), 24),
            (Ipv4Addr::new(172, 16, 0, 2), 16)
        ]
    );
}

#[test]
fn links_that_match_no_prefix_are_never_reported() {
    world(false);
    let mut source = started();

    add_link("bar0");
    ip(&["link", "set", "foo0", "down"]);
    ip(&["link", "del", "foo0"]);
    let events = collect_until(&mut source, |_| true);

    assert_eq!(events, []);
}

#[test]
fn an_uplink_appearing_later_with_a_default_route_becomes_the_default() {
    enter_private_netns();
    let mut source = NetlinkUplinks::open(&prefixes()).unwrap();
    assert_eq!(collect_until(&mut source, |_| true), []);

    add_link("usb0");
    ip(&["link", "set", "usb0", "up"]);
    ip(&["addr", "add", "192.168.42.2/24", "dev", "usb0"]);
    ip(&[
        "route",
        "add",
        "default",
        "via",
        "192.168.42.1",
        "dev",
        "usb0",
    ]);
    let events = collect_until(
        &mut source,
        ends_with(UplinkEvent::DefaultChanged(Some(name("usb0")))),
    );

    assert!(matches!(&events[0], UplinkEvent::Added(u) if u.name.as_str() == "usb0"));
    assert_eq!(
        source.default_uplink().unwrap().gateway4,
        Some(Ipv4Addr::new(192, 168, 42, 1))
    );
}

/// A veth `name` (peer `p<name>`, no uplink) labelled as patchpanel labels
/// the links it creates.
fn add_patchpanel_link(name: &str) {
    let peer = format!("p{name}");
    ip(&["link", "add", name, "type", "veth", "peer", "name", &peer]);
    ip(&["link", "set", name, "alias", "patchpanel"]);
}

#[test]
fn links_patchpanel_created_are_never_uplinks_whatever_their_name() {
    world(false);
    let mut source = started();

    // Created, labelled and configured between two reads: nothing to say.
    add_patchpanel_link("eth5");
    ip(&["link", "set", "eth5", "up"]);
    ip(&["addr", "add", "100.115.92.129/30", "dev", "eth5"]);
    assert_eq!(collect_until(&mut source, |_| true), []);

    // Other links are still seen after it.
    add_link("eth6");
    let events = collect_until(&mut source, |e| !e.is_empty());
    assert!(
        matches!(&events[..], [UplinkEvent::Added(u)] if u.name.as_str() == "eth6"),
        "{events:#?}"
    );

    // Seen before its label (a read fell in between): gone once labelled.
    ip(&[
        "link", "add", "eth7", "type", "veth", "peer", "name", "peth7",
    ]);
    let events = collect_until(&mut source, |e| !e.is_empty());
    assert!(
        matches!(&events[..], [UplinkEvent::Added(u)] if u.name.as_str() == "eth7"),
        "{events:#?}"
    );
    ip(&["link", "set", "eth7", "alias", "patchpanel"]);
    let events = collect_until(&mut source, |e| !e.is_empty());
    assert!(
        matches!(&events[..], [UplinkEvent::Removed(u)] if u.name.as_str() == "eth7"),
        "{events:#?}"
    );

    ip(&["link", "del", "eth5"]);
    ip(&["link", "del", "eth7"]);
    assert_eq!(collect_until(&mut source, |_| true), []);
    assert_eq!(source.uplinks().len(), 3);
}
