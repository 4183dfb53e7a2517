//! Routing policy: how a guest's traffic finds its uplink (upstream-core
//! §4.4, §4.5, §4.12), as pure functions from state to datapath steps.
//!
//! * Guests: the routing mode a downstream interface's traffic follows
//!   ([`RoutingMode`]) and its traffic source.
//! * Uplinks (netlink mode only; shill owns this otherwise): one routing
//!   table per uplink (ifindex + 1000) and the ip rules that select it by
//!   fwmark, output interface, source address and input interface.
//!
//! One deliberate difference from ChromeOS: on a generic host the main
//! table keeps the default route, so the "lookup main" rule at priority
//! 1000 uses `suppress_prefixlength 0` — main answers for everything but
//! its default route, exactly what it holds on ChromeOS.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};

use patchpanel_firewall::{Batch, InverseError, TrafficSource as Mark};
use patchpanel_ipc::datapath::{Netns, RouteKind, RouteSpec, RuleSpec, Step, Sysctl};
use patchpanel_ipc::IfName;
use patchpanel_proto::traffic_counter::Source;
use patchpanel_uplinks::{Uplink, UplinkEvent};
use serde::{Deserialize, Serialize};

use crate::uplinks::UplinkView;

pub use patchpanel_firewall::TrafficSource;

/// The main routing table.
pub const MAIN_TABLE: u32 = 254;
/// Per-uplink tables are ifindex + this.
pub const TABLE_OFFSET: u32 = patchpanel_ipc::datapath::UPLINK_TABLE_OFFSET;
/// "lookup main suppress_prefixlength 0".
pub const MAIN_RULE_PRIORITY: u32 = 1000;
/// Physical uplink rules: this + 10 x rank.
pub const UPLINK_RULE_PRIORITY: u32 = 1010;
/// Catch-all to the default uplink's table.
pub const CATCH_ALL_PRIORITY: u32 = 32765;

/// Which uplink a guest's traffic leaves through.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RoutingMode {
    /// Pinned to one uplink (explicit outbound device); the tag is that
    /// uplink's table.
    Pinned { uplink: IfName, ifindex: u32 },
    /// Follows the default physical network.
    System,
    /// Follows the default logical network, VPN included.
    User,
}

impl RoutingMode {
    /// The ifindex a pinned mode recorded for `uplink`.
    pub fn pinned_to(&self, uplink: &str) -> Option<u32> {
        match self {
            RoutingMode::Pinned { uplink: u, ifindex } if u.as_str() == uplink => Some(*ifindex),
            _ => None,
        }
    }
}

/// The fwmark source for a D-Bus traffic source; `UNKNOWN` means
/// `SYSTEM` (upstream behaviour). `None` for sources a namespace cannot
/// claim.
pub fn source_from_proto(source: Source) -> Option<TrafficSource> {
    Some(match source {
        Source::Unknown | Source::System => Mark::System,
        Source::Chrome => Mark::Chrome,
        Source::User => Mark::User,
        Source::UpdateEngine => Mark::UpdateEngine,
        Source::Vpn => Mark::HostVpn,
        Source::Arc => Mark::Arc,
        Source::BorealisVm => Mark::BorealisVm,
        Source::BruschettaVm => Mark::BruschettaVm,
        Source::CrostiniVm => Mark::CrostiniVm,
        Source::ParallelsVm => Mark::ParallelsVm,
        Source::Tethering => Mark::TetherDownstream,
        Source::WifiDirect => Mark::WifiDirect,
        Source::WifiLohs => Mark::WifiLohs,
    })
}

fn table_of(u: &Uplink) -> u32 {
    u.ifindex + TABLE_OFFSET
}

/// A rule of `family` at `priority` that looks up `table`, matching
/// everything until a selector is set.
pub fn rule(ipv6: bool, priority: u32, table: u32) -> RuleSpec {
    RuleSpec {
        ipv6,
        priority,
        fwmark: None,
        iif: None,
        oif: None,
        src: None,
        dst: None,
        table,
        suppress_prefixlen: None,
    }
}

/// "lookup main suppress_prefixlength 0" at 1000, both families: main
/// answers for everything but a default route (ChromeOS's main table has
/// none, so there this is upstream's plain `lookup main`).
pub fn main_rules() -> [RuleSpec; 2] {
    [false, true].map(|ipv6| RuleSpec {
        suppress_prefixlen: Some(0),
        ..rule(ipv6, MAIN_RULE_PRIORITY, MAIN_TABLE)
    })
}

/// The catch-all to the default network's table.
pub fn catch_all_rule(ipv6: bool, table: u32) -> RuleSpec {
    rule(ipv6, CATCH_ALL_PRIORITY, table)
}

/// The rules that select one network's `table` at `priority`, for each
/// family in `families`: its routing tag (`fwmark table<<16/0xffff0000`),
/// `oif`, with `iif` also `iif`, and `from <addr>` (a host prefix) for each
/// of `sources` (of any family). Shared by netlink mode's uplinks and
/// `ConfigureNetwork`.
pub fn table_rules(
    table: u32,
    priority: u32,
    ifname: &IfName,
    families: &[bool],
    iif: bool,
    sources: &[IpAddr],
) -> Vec<RuleSpec> {
    let mut rules = Vec::new();
    for &ipv6 in families {
        let base = rule(ipv6, priority, table);
        rules.push(RuleSpec {
            fwmark: Some((table << 16, 0xffff_0000)),
            ..base.clone()
        });
        rules.push(RuleSpec {
            oif: Some(ifname.clone()),
            ..base.clone()
        });
        if iif {
            rules.push(RuleSpec {
                iif: Some(ifname.clone()),
                ..base
            });
        }
    }
    for addr in sources {
        let len = if addr.is_ipv4() { 32 } else { 128 };
        rules.push(RuleSpec {
            src: Some((*addr, len)),
            ..rule(addr.is_ipv6(), priority, table)
        });
    }
    rules
}

/// The ip rules patchpanel wants for the uplinks in `view`.
pub fn desired_rules(view: &UplinkView) -> BTreeSet<RuleSpec> {
    let mut rules: BTreeSet<RuleSpec> = main_rules().into_iter().collect();
    for u in view.all() {
        let priority = UPLINK_RULE_PRIORITY + 10 * view.rank(u.name.as_str());
        let sources: Vec<IpAddr> = u.ipv4.iter().map(|(a, _)| IpAddr::V4(*a)).collect();
        rules.extend(table_rules(
            table_of(u),
            priority,
            &u.name,
            &[false],
            true,
            &sources,
        ));
    }
    if let Some(d) = view.default_uplink() {
        rules.insert(catch_all_rule(false, table_of(d)));
    }
    rules
}

/// The routes of an uplink's table: its connected subnets and its default
/// route.
pub fn uplink_table(u: &Uplink) -> Vec<RouteSpec> {
    let dev = u.name.clone();
    let table = table_of(u);
    let mut routes: Vec<RouteSpec> = u
        .ipv4
        .iter()
        .map(|(addr, len)| RouteSpec {
            dst: IpAddr::V4(network(*addr, *len)),
            prefix_len: *len,
            gateway: None,
            dev: Some(dev.clone()),
            table,
            metric: None,
            kind: RouteKind::Unicast,
        })
        .collect();
    if let Some(gw) = u.gateway4 {
        routes.push(RouteSpec {
            dst: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            prefix_len: 0,
            gateway: Some(IpAddr::V4(gw)),
            dev: Some(dev),
            table,
            metric: None,
            kind: RouteKind::Unicast,
        });
    }
    routes
}

fn network(addr: Ipv4Addr, len: u8) -> Ipv4Addr {
    let mask = if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len.min(32)))
    };
    Ipv4Addr::from(u32::from(addr) & mask)
}

/// Everything for the uplinks present at start.
pub fn uplink_steps_all(view: &UplinkView, manage: bool) -> Vec<Step> {
    let mut steps = Vec::new();
    for u in view.all() {
        steps.push(Step::EnsureAccounting(u.name.clone()));
        steps.push(Step::Firewall(pinning(u)));
        if manage {
            steps.extend(uplink_link_steps(u));
        }
    }
    if manage {
        steps.extend(desired_rules(view).into_iter().map(Step::AddRule));
    }
    steps
}

/// Connection pinning (reference §4.6): connections leaving through the
/// uplink remember it and their source; and the jumps to the uplink's
/// accounting chains (reference §6).
pub fn pinning(u: &Uplink) -> Batch {
    let mut batch = patchpanel_firewall::guest::uplink_pinning(&u.name, table_of(u));
    batch.extend(patchpanel_firewall::counters::accounting_jumps(&u.name));
    batch
}

fn uplink_link_steps(u: &Uplink) -> Vec<Step> {
    vec![
        Step::SetSysctl {
            netns: Netns::Host,
            sysctl: Sysctl::Ipv6AcceptRa(u.name.clone()),
            value: "2".into(),
        },
        Step::SyncTable {
            table: table_of(u),
            routes: uplink_table(u),
        },
    ]
}

/// What to change after `event` turned `before` into `after`.
pub fn uplink_steps_for_event(
    before: &UplinkView,
    after: &UplinkView,
    event: &UplinkEvent,
    manage: bool,
) -> Result<Vec<Step>, InverseError> {
    let mut steps = Vec::new();
    match event {
        UplinkEvent::Added(u) => {
            steps.push(Step::EnsureAccounting(u.name.clone()));
            steps.push(Step::Firewall(pinning(u)));
        }
        UplinkEvent::Removed(u) => steps.push(Step::Firewall(pinning(u).inverse()?)),
        _ => {}
    }
    if !manage {
        return Ok(steps);
    }
    match event {
        UplinkEvent::Added(u) | UplinkEvent::Changed(u) => steps.extend(uplink_link_steps(u)),
        UplinkEvent::Removed(u) => steps.push(Step::SyncTable {
            table: table_of(u),
            routes: Vec::new(),
        }),
        UplinkEvent::DefaultChanged(_) => {}
    }
    let old = desired_rules(before);
    let new = desired_rules(after);
    steps.extend(old.difference(&new).cloned().map(Step::DeleteRule));
    steps.extend(new.difference(&old).cloned().map(Step::AddRule));
    Ok(steps)
}

#[cfg(test)]
mod tests {
    use super::*;
    use patchpanel_uplinks::Technology;

    fn uplink(name: &str, ifindex: u32, addr: [u8; 4], gw: Option<[u8; 4]>) -> Uplink {
        Uplink {
            name: IfName::new(name).unwrap(),
            ifindex,
            up: true,
            ipv4: vec![(Ipv4Addr::from(addr), 24)],
            ipv6: vec![],
            gateway4: gw.map(Ipv4Addr::from),
            technology: Technology::Ethernet,
        }
    }

    fn view(uplinks: &[Uplink], default: Option<&str>) -> UplinkView {
        let mut v = UplinkView::default();
        for u in uplinks {
            v.apply(&UplinkEvent::Added(u.clone()));
        }
        v.apply(&UplinkEvent::DefaultChanged(
            default.map(|d| IfName::new(d).unwrap()),
        ));
        v
    }

    #[test]
    fn an_uplink_table_holds_its_subnet_and_default_route() {
        let u = uplink("eth0", 2, [192, 0, 2, 10], Some([192, 0, 2, 1]));
        let routes = uplink_table(&u);
        assert_eq!(routes.len(), 2);
        assert_eq!(routes[0].dst, IpAddr::V4(Ipv4Addr::new(192, 0, 2, 0)));
        assert_eq!(routes[0].prefix_len, 24);
        assert_eq!(routes[0].table, 1002);
        assert_eq!(
            routes[1].gateway,
            Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)))
        );
    }

    #[test]
    fn rules_select_the_uplink_table_by_mark_oif_iif_and_source() {
        let v = view(
            &[uplink("eth0", 2, [192, 0, 2, 10], Some([192, 0, 2, 1]))],
            Some("eth0"),
        );
        let rules: Vec<RuleSpec> = desired_rules(&v).into_iter().collect();
        let for_table: Vec<&RuleSpec> = rules.iter().filter(|r| r.table == 1002).collect();
        assert!(for_table
            .iter()
            .any(|r| r.fwmark == Some((0x03ea_0000, 0xffff_0000)) && r.priority == 1010));
        assert!(for_table
            .iter()
            .any(|r| r.oif.as_ref().map(|i| i.as_str()) == Some("eth0")));
        assert!(for_table
            .iter()
            .any(|r| r.iif.as_ref().map(|i| i.as_str()) == Some("eth0")));
        assert!(for_table
            .iter()
            .any(|r| r.src == Some((IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10)), 32))));
        assert!(for_table.iter().any(|r| r.priority == CATCH_ALL_PRIORITY));
        assert!(rules
            .iter()
            .any(|r| r.table == MAIN_TABLE && r.suppress_prefixlen == Some(0) && !r.ipv6));
    }

    #[test]
    fn a_second_uplink_ranks_after_the_default() {
        let v = view(
            &[
                uplink("eth0", 2, [192, 0, 2, 10], None),
                uplink("wlan0", 3, [198, 51, 100, 10], None),
            ],
            Some("wlan0"),
        );
        assert_eq!(v.rank("wlan0"), 0);
        assert_eq!(v.rank("eth0"), 1);
        let rules: Vec<RuleSpec> = desired_rules(&v).into_iter().collect();
        assert!(rules.iter().any(|r| r.table == 1002 && r.priority == 1020));
        assert!(rules.iter().any(|r| r.table == 1003 && r.priority == 1010));
    }

    #[test]
    fn removing_an_uplink_deletes_exactly_its_rules_and_empties_its_table() {
        let eth0 = uplink("eth0", 2, [192, 0, 2, 10], Some([192, 0, 2, 1]));
        let before = view(std::slice::from_ref(&eth0), Some("eth0"));
        let event = UplinkEvent::Removed(eth0);
        let mut after = before.clone();
        after.apply(&event);
        after.apply(&UplinkEvent::DefaultChanged(None));
        let steps = uplink_steps_for_event(&before, &after, &event, true).expect("steps");
        assert!(steps.contains(&Step::SyncTable {
            table: 1002,
            routes: vec![]
        }));
        assert!(
            matches!(steps[0], Step::Firewall(_)),
            "pinning removed first"
        );
        let deleted = steps
            .iter()
            .filter(|s| matches!(s, Step::DeleteRule(_)))
            .count();
        assert_eq!(deleted, 5, "{steps:#?}");
        assert!(!steps.iter().any(|s| matches!(s, Step::AddRule(_))));
    }

    #[test]
    fn shill_mode_leaves_uplink_routing_alone() {
        let v = view(&[uplink("eth0", 2, [192, 0, 2, 10], None)], Some("eth0"));
        let steps = uplink_steps_all(&v, false);
        assert!(
            steps
                .iter()
                .all(|s| matches!(s, Step::Firewall(_) | Step::EnsureAccounting(_))),
            "{steps:#?}"
        );
    }
}
