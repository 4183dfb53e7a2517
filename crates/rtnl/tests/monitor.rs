//! Kernel tests for the multicast monitor, each in its own network namespace.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

mod common;

use std::os::fd::{AsFd, AsRawFd};
use std::time::{Duration, Instant};

use common::{in_fresh_netns, NetnsDir};
use patchpanel_rtnl::{
    netns, Family, MonitorGroups, Route, RouteScope, Rtnl, RtnlEvent, RtnlMonitor,
};

/// Reads events until `done` is satisfied or 5 s pass, waiting with poll(2)
/// on the monitor's fd the way the manager's event loop would.
fn collect_until(mon: &mut RtnlMonitor, done: impl Fn(&[RtnlEvent]) -> bool) -> Vec<RtnlEvent> {
    let mut all = Vec::new();
    let start = Instant::now();
    while !done(&all) {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "timed out; saw {all:?}"
        );
        let mut pfd = libc::pollfd {
            fd: mon.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        unsafe { libc::poll(&mut pfd, 1, 100) };
        all.extend(mon.read_events().unwrap());
    }
    all
}

#[test]
fn monitor_sees_a_link_created_and_deleted_and_a_route_added() {
    in_fresh_netns(|| {
        let mut mon = RtnlMonitor::new(MonitorGroups::ALL).unwrap();
        assert!(
            mon.read_events().unwrap().is_empty(),
            "nothing happened yet"
        );
        let rtnl = Rtnl::new().unwrap();

        rtnl.create_bridge("br0", "patchpanel").unwrap();
        rtnl.set_up("br0", true).unwrap();
        let mut r = Route::new("10.77.0.0".parse().unwrap(), 16);
        r.oif = Some("br0".into());
        r.scope = RouteScope::Link;
        r.table = 1005;
        rtnl.add_route(&r).unwrap();
        rtnl.add_address("br0", "10.78.0.1".parse().unwrap(), 24, None)
            .unwrap();
        // IPv4 does not announce routes flushed with their device, so the
        // route is deleted explicitly to see RTM_DELROUTE.
        rtnl.delete_route(&r).unwrap();
        rtnl.delete_link("br0").unwrap();

        let events = collect_until(&mut mon, |ev| {
            ev.iter()
                .any(|e| matches!(e, RtnlEvent::DelLink(l) if l.name == "br0"))
        });
        let created = events.iter().find_map(|e| match e {
            RtnlEvent::NewLink(l) if l.name == "br0" => Some(l),
            _ => None,
        });
        let created = created.unwrap_or_else(|| panic!("no NewLink br0 in {events:?}"));
        assert_eq!(created.alias, None, "first NewLink precedes the alias");
        assert!(events.iter().any(
            |e| matches!(e, RtnlEvent::NewLink(l) if l.name == "br0" && l.alias.as_deref() == Some("patchpanel"))
        ));
        assert!(
            events.iter().any(|e| matches!(e,
                RtnlEvent::NewRoute(x) if x.table == 1005 && x.dst == r.dst && x.prefix_len == 16)),
            "{events:?}"
        );
        assert!(
            events.iter().any(|e| matches!(e,
                RtnlEvent::NewAddress(a) if a.addr == "10.78.0.1".parse::<std::net::IpAddr>().unwrap())),
            "{events:?}"
        );
        assert!(
            events
                .iter()
                .any(|e| matches!(e, RtnlEvent::DelRoute(x) if x.table == 1005)),
            "{events:?}"
        );
        // Deleting the link took its address with it.
        assert!(
            events.iter().any(|e| matches!(e, RtnlEvent::DelAddress(_))),
            "{events:?}"
        );
        assert!(!events.contains(&RtnlEvent::Overrun));
    });
}

#[test]
fn monitor_only_reports_the_groups_it_joined() {
    in_fresh_netns(|| {
        let mut mon = RtnlMonitor::new(MonitorGroups::IPV4_ROUTE).unwrap();
        let rtnl = Rtnl::new().unwrap();
        rtnl.create_bridge("br1", "pp").unwrap();
        rtnl.set_up("br1", true).unwrap();
        let mut r = Route::default_route(Family::V4);
        r.oif = Some("br1".into());
        r.scope = RouteScope::Link;
        r.table = 1006;
        rtnl.add_route(&r).unwrap();
        let events = collect_until(&mut mon, |ev| {
            ev.iter()
                .any(|e| matches!(e, RtnlEvent::NewRoute(x) if x.table == 1006))
        });
        assert!(
            events
                .iter()
                .all(|e| matches!(e, RtnlEvent::NewRoute(_) | RtnlEvent::DelRoute(_))),
            "{events:?}"
        );
    });
}

#[test]
fn monitor_reports_overrun_when_the_kernel_drops_notifications() {
    in_fresh_netns(|| {
        let mut mon = RtnlMonitor::new(MonitorGroups::LINK).unwrap();
        // The smallest receive buffer the kernel allows (a few KiB).
        mon.set_recv_buffer_size(0).unwrap();
        let rtnl = Rtnl::new().unwrap();
        for i in 0..50 {
            let name = format!("ovr{i}");
            rtnl.create_bridge(&name, "pp").unwrap();
            rtnl.delete_link(&name).unwrap();
        }
        let events = mon.read_events().unwrap();
        assert!(events.contains(&RtnlEvent::Overrun), "{events:?}");
        // The socket still works after the overrun.
        assert!(mon.read_events().unwrap().is_empty());
        rtnl.create_bridge("after", "pp").unwrap();
        let events = collect_until(&mut mon, |ev| {
            ev.iter()
                .any(|e| matches!(e, RtnlEvent::NewLink(l) if l.name == "after"))
        });
        assert!(!events.contains(&RtnlEvent::Overrun), "{events:?}");
    });
}

#[test]
fn monitor_in_another_namespace_sees_only_that_namespace() {
    in_fresh_netns(|| {
        let dir = NetnsDir::new();
        let ns = netns::create_named(&dir.path, "watched").unwrap();
        let mut mon = RtnlMonitor::in_netns(ns.as_fd(), MonitorGroups::LINK).unwrap();
        Rtnl::new().unwrap().create_bridge("here0", "pp").unwrap();
        Rtnl::in_netns(ns.as_fd())
            .unwrap()
            .create_bridge("there0", "pp")
            .unwrap();
        let events = collect_until(&mut mon, |ev| {
            ev.iter()
                .any(|e| matches!(e, RtnlEvent::NewLink(l) if l.name == "there0"))
        });
        assert!(
            !events
                .iter()
                .any(|e| matches!(e, RtnlEvent::NewLink(l) if l.name == "here0")),
            "{events:?}"
        );
    });
}

#[test]
fn releasing_a_bridge_port_is_not_reported_as_the_link_going_away() {
    in_fresh_netns(|| {
        let rtnl = Rtnl::new().unwrap();
        rtnl.create_bridge("br0", "pp").unwrap();
        rtnl.create_veth("vh0", "vp0", None, "pp").unwrap();
        let mut mon = RtnlMonitor::new(MonitorGroups::LINK).unwrap();
        rtnl.set_master("vh0", Some("br0")).unwrap();
        rtnl.set_master("vh0", None).unwrap();
        // A later change marks the end of the port events (alias changes
        // are not announced, state changes are).
        rtnl.set_up("vh0", true).unwrap();
        let events = collect_until(&mut mon, |ev| {
            ev.iter()
                .any(|e| matches!(e, RtnlEvent::NewLink(l) if l.name == "vh0" && l.up))
        });
        assert!(
            !events.iter().any(|e| matches!(e, RtnlEvent::DelLink(_))),
            "{events:?}"
        );
        assert!(rtnl.link("vh0").unwrap().is_some());
    });
}
