//! VPN lockdown (`SetVpnLockdown`): while on, traffic that asked for the VPN
//! (the route-on-VPN bit, reference §3.4) is rejected wherever it would
//! leave; `vpn_accept`, which `vpn_egress_filters` runs first, lets through
//! what goes out of the VPN itself. The chains and their jumps from OUTPUT
//! and FORWARD are part of the layout; lockdown is one rule in
//! `vpn_lockdown`, both families.

use crate::fwmark::{ROUTE_ON_VPN, VPN_MASK};
use crate::layout::{named, VPN_LOCKDOWN};
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
}
