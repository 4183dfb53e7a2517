//! VPN lockdown (`SetVpnLockdown`): while on, traffic that asked for the VPN
//! (the route-on-VPN bit, reference §3.4) is rejected wherever it would
//! leave; `vpn_accept`, which `vpn_egress_filters` runs first, lets through
//! what goes out of the VPN itself. The chains and their jumps from OUTPUT
//! and FORWARD are part of the layout; lockdown is one rule in
//! `vpn_lockdown`, both families.

use patchpanel_names::IfName;

use crate::fwmark::{routing_tag, ROUTE_ON_VPN, ROUTING_MASK, VPN_MASK};
use crate::layout::{named, APPLY_VPN_MARK, VPN_ACCEPT, VPN_LOCKDOWN};
use crate::model::{Batch, Change, Match, Rule, Table, Target};

/// The lockdown rule: `-A vpn_lockdown -m mark --mark 0x8000/0xc000 -j
/// REJECT`. Its inverse turns lockdown off.
pub fn lockdown() -> Batch {
    let mut batch = Batch::new();
    batch.push_dual(Change::Append {
        table: Table::Filter,
        chain: named(VPN_LOCKDOWN),
        rule: Rule::new(Target::Reject).with(Match::mark(ROUTE_ON_VPN, VPN_MASK)),
    });
    batch
}

/// VPN routing while `vpn` (routing table `table`) is the default logical
/// network (reference §3.4), both families:
///
/// * `apply_vpn_mark` (mangle; reached by packets carrying the route-on-VPN
///   bit: guests that follow the user's routing, sockets tagged
///   `ROUTE_ON_VPN`): a packet that already has a routing tag keeps it
///   (an established connection, a socket tagged for a network), any other
///   gets the VPN's, which the VPN's ip rule routes into its table;
/// * `vpn_accept` (filter, before `vpn_lockdown`): what leaves through the
///   VPN interface is accepted. Matching the interface, not the tag, means
///   a tagged packet that routing sends elsewhere (the VPN's routes are
///   gone) is never accepted here, so lockdown has no leak window.
///
/// Its inverse removes it; one batch, so one transaction with nftables.
pub fn routing(vpn: &IfName, table: u32) -> Batch {
    let mut batch = Batch::new();
    batch.push_dual(Change::Append {
        table: Table::Mangle,
        chain: named(APPLY_VPN_MARK),
        rule: Rule::new(Target::Return).with(Match::not_mark(0, ROUTING_MASK)),
    });
    batch.push_dual(Change::Append {
        table: Table::Mangle,
        chain: named(APPLY_VPN_MARK),
        rule: Rule::new(Target::SetMark {
            value: routing_tag(table),
            mask: ROUTING_MASK,
        }),
    });
    batch.push_dual(Change::Append {
        table: Table::Filter,
        chain: named(VPN_ACCEPT),
        rule: Rule::new(Target::Accept).with(Match::oif(vpn)),
    });
    batch
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Family;

    #[test]
    fn lockdown_rejects_the_route_on_vpn_bit_in_both_families() {
        let batch = lockdown();
        for family in [Family::V4, Family::V6] {
            let changes = if family == Family::V4 {
                &batch.ipv4
            } else {
                &batch.ipv6
            };
            assert_eq!(changes.len(), 1);
            changes[0].validate(family).expect("valid");
            let rendered = crate::render::change_lines(&changes[0]).join("\n");
            assert_eq!(
                rendered, "-A vpn_lockdown -m mark --mark 0x8000/0xc000 -j REJECT",
                "{family:?}"
            );
        }
        assert!(!batch.is_empty());
        assert!(Batch::new().is_empty());
        let off = batch.inverse().expect("lockdown can be turned off");
        assert!(matches!(off.ipv4[0], Change::Delete { .. }));
    }

    #[test]
    fn vpn_routing_tags_untagged_packets_and_accepts_what_leaves_through_the_vpn() {
        let vpn = IfName::new("tun0").unwrap();
        let batch = routing(&vpn, 1009);
        for family in [Family::V4, Family::V6] {
            let changes = if family == Family::V4 {
                &batch.ipv4
            } else {
                &batch.ipv6
            };
            let lines: Vec<String> = changes
                .iter()
                .inspect(|c| c.validate(family).expect("valid"))
                .flat_map(crate::render::change_lines)
                .collect();
            assert_eq!(
                lines,
                [
                    "-A apply_vpn_mark -m mark ! --mark 0x0/0xffff0000 -j RETURN",
                    "-A apply_vpn_mark -j MARK --set-mark 0x3f10000/0xffff0000",
                    "-A vpn_accept -o tun0 -j ACCEPT",
                ],
                "{family:?}"
            );
        }
        assert_eq!(batch.inverse().expect("removable").ipv6.len(), 3);
    }
}
