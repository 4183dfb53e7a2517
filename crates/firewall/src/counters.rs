//! Traffic accounting chains (upstream-core §6).
//!
//! Per uplink `X`, mangle chains `rx_X` and `tx_X` (both families) hold one
//! `-m mark --mark <source>/0x3f00 -j RETURN` rule per traffic source, in
//! upstream's `kAllSources` order, then a rule with no match and no target
//! that counts untagged traffic. The chains are never deleted while
//! patchpanel runs nor at a clean stop, so counts persist; the jumps to
//! them come and go with the uplink. Create the chains only when they are
//! missing ([`FirewallBackend::list_chains`](crate::backend::FirewallBackend::list_chains)).

use patchpanel_names::IfName;

use crate::fwmark::{TrafficSource, SOURCE_MASK};
use crate::layout::root_chain;
use crate::model::{
    Batch, BuiltinChain, Change, InterfaceChainPrefix, Match, OwnedChain, Rule, Table, Target,
};

/// `rx_<if>`.
pub fn rx_chain(ifname: &IfName) -> OwnedChain {
    OwnedChain::interface_chain(InterfaceChainPrefix::Rx, ifname)
}

/// `tx_<if>`.
pub fn tx_chain(ifname: &IfName) -> OwnedChain {
    OwnedChain::interface_chain(InterfaceChainPrefix::Tx, ifname)
}

/// Whether `chain` is an accounting chain (kept across restarts).
pub fn is_accounting_chain(chain: &str) -> bool {
    chain.starts_with(InterfaceChainPrefix::Rx.as_str())
        || chain.starts_with(InterfaceChainPrefix::Tx.as_str())
}

/// The content of an accounting chain.
pub fn accounting_rules() -> Vec<Rule> {
    let mut rules: Vec<Rule> = TrafficSource::ACCOUNTING_ORDER
        .iter()
        .map(|s| Rule::new(Target::Return).with(Match::mark(s.fwmark(), SOURCE_MASK)))
        .collect();
    rules.push(Rule::new(Target::Count));
    rules
}

/// Creates and fills `rx_<if>` and `tx_<if>`, both families.
pub fn accounting_chains(ifname: &IfName) -> Batch {
    let mut batch = Batch::new();
    for chain in [rx_chain(ifname), tx_chain(ifname)] {
        batch.push_dual(Change::NewChain {
            table: Table::Mangle,
            chain: chain.clone(),
        });
        for rule in accounting_rules() {
            batch.push_dual(Change::Append {
                table: Table::Mangle,
                chain: chain.clone(),
                rule,
            });
        }
    }
    batch
}

/// The jumps: `-i X -j rx_X` from INPUT and FORWARD, `-o X -j tx_X` from
/// POSTROUTING (through the root chains), both families.
pub fn accounting_jumps(ifname: &IfName) -> Batch {
    let mut batch = Batch::new();
    for builtin in [BuiltinChain::Input, BuiltinChain::Forward] {
        batch.push_dual(Change::Append {
            table: Table::Mangle,
            chain: root_chain(builtin),
            rule: Rule::new(Target::Jump(rx_chain(ifname))).with(Match::iif(ifname)),
        });
    }
    batch.push_dual(Change::Append {
        table: Table::Mangle,
        chain: root_chain(BuiltinChain::Postrouting),
        rule: Rule::new(Target::Jump(tx_chain(ifname))).with(Match::oif(ifname)),
    });
    batch
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Family;
    use crate::render::render;

    #[test]
    fn accounting_chains_render_in_upstream_source_order() {
        let batch = accounting_chains(&IfName::new("eth0").unwrap());
        batch.validate().unwrap();
        let text = render(&batch, Family::V4);
        let rx: Vec<&str> = text.lines().filter(|l| l.contains(" rx_eth0")).collect();
        assert_eq!(
            rx,
            [
                "-N rx_eth0",
                "-A rx_eth0 -m mark --mark 0x100/0x3f00 -j RETURN",
                "-A rx_eth0 -m mark --mark 0x200/0x3f00 -j RETURN",
                "-A rx_eth0 -m mark --mark 0x300/0x3f00 -j RETURN",
                "-A rx_eth0 -m mark --mark 0x400/0x3f00 -j RETURN",
                "-A rx_eth0 -m mark --mark 0x500/0x3f00 -j RETURN",
                "-A rx_eth0 -m mark --mark 0x2000/0x3f00 -j RETURN",
                "-A rx_eth0 -m mark --mark 0x2600/0x3f00 -j RETURN",
                "-A rx_eth0 -m mark --mark 0x2500/0x3f00 -j RETURN",
                "-A rx_eth0 -m mark --mark 0x2100/0x3f00 -j RETURN",
                "-A rx_eth0 -m mark --mark 0x2200/0x3f00 -j RETURN",
                "-A rx_eth0 -m mark --mark 0x2300/0x3f00 -j RETURN",
                "-A rx_eth0 -m mark --mark 0x2700/0x3f00 -j RETURN",
                "-A rx_eth0 -m mark --mark 0x2800/0x3f00 -j RETURN",
                "-A rx_eth0 -m mark --mark 0x2400/0x3f00 -j RETURN",
                "-A rx_eth0",
            ]
        );
        assert_eq!(render(&batch, Family::V6), text);
    }

    #[test]
    fn accounting_jumps_hang_off_the_mangle_root_chains() {
        let batch = accounting_jumps(&IfName::new("mbimmux0.1").unwrap());
        batch.validate().unwrap();
        assert_eq!(
            render(&batch, Family::V4),
            "\
*mangle
-A patchpanel_INPUT -i mbimmux0.1 -j rx_mbimmux0.1
-A patchpanel_FORWARD -i mbimmux0.1 -j rx_mbimmux0.1
-A patchpanel_POSTROUTING -o mbimmux0.1 -j tx_mbimmux0.1
COMMIT
"
        );
        assert!(is_accounting_chain("rx_mbimmux0.1"));
        assert!(!is_accounting_chain("PREROUTING_eth0"));
    }
}
