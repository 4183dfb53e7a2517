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
use serde::{Deserialize, Serialize};

use crate::fwmark::{TrafficSource, SOURCE_MASK};
use crate::layout::root_chain;
use crate::model::{
    Batch, BuiltinChain, Change, Family, InterfaceChainPrefix, Match, OwnedChain, Rule, Table,
    Target,
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

/// Traffic direction of an accounting chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Direction {
    Rx,
    Tx,
}

/// One counting rule's totals, read back from the kernel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CounterSample {
    pub family: Family,
    pub direction: Direction,
    /// The uplink of `rx_<if>` / `tx_<if>`.
    pub ifname: String,
    /// `None`: the catch-all rule (untagged traffic).
    pub source: Option<TrafficSource>,
    pub packets: u64,
    pub bytes: u64,
}

/// A counter dump that does not look like what patchpanel wrote.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unexpected line in the accounting dump: {line:?} ({why})")]
pub struct CounterParseError {
    pub line: String,
    pub why: &'static str,
}

/// The name of the named counter an accounting rule of `chain` counts
/// into (the nftables backend): `<chain>/<tag>`, `<tag>` the source mark
/// in hex (`0x400`) or `any` for the rule that counts the rest. `None`
/// for a rule that is not one patchpanel puts in an accounting chain.
/// (`/` is in no interface name, so the chain's end is unambiguous.)
pub fn counter_name(chain: &str, rule: &Rule) -> Option<String> {
    match (rule.matches.as_slice(), &rule.target) {
        ([], Target::Count) => Some(format!("{chain}/{ANY_SOURCE}")),
        ([Match::Mark(m)], Target::Return) if !m.negate && m.mask == SOURCE_MASK => {
            Some(format!("{chain}/{:#x}", m.value))
        }
        _ => None,
    }
}

/// The name of the counter of `chain`'s rule for `source` (`None`: the
/// rule that counts the rest), as [`counter_name`] names it.
pub fn counter_name_of_source(chain: &str, source: Option<TrafficSource>) -> String {
    match source {
        None => format!("{chain}/{ANY_SOURCE}"),
        Some(s) => format!("{chain}/{:#x}", s.fwmark()),
    }
}

/// The tag of the counter of an accounting chain's last rule.
const ANY_SOURCE: &str = "any";

/// The sample a named counter is ([`counter_name`]); `Ok(None)` for a
/// name of no accounting chain (not ours), an error for an accounting
/// chain's counter patchpanel did not name so.
pub fn sample_of_counter(
    family: Family,
    name: &str,
    packets: u64,
    bytes: u64,
) -> Result<Option<CounterSample>, CounterParseError> {
    let err = |why| CounterParseError {
        line: name.to_string(),
        why,
    };
    let Some((chain, tag)) = name.rsplit_once('/') else {
        return Ok(None);
    };
    let Some((direction, ifname)) = accounting_interface(chain) else {
        return Ok(None);
    };
    let source = if tag == ANY_SOURCE {
        None
    } else {
        let value = tag
            .strip_prefix("0x")
            .and_then(|hex| u32::from_str_radix(hex, 16).ok())
            .ok_or_else(|| err("counter tag is not a hexadecimal mark"))?;
        if value & !SOURCE_MASK != 0 {
            return Err(err("counter tag is not a source mark"));
        }
        Some(TrafficSource::from_fwmark(value).ok_or_else(|| err("unknown source mark"))?)
    };
    Ok(Some(CounterSample {
        family,
        direction,
        ifname: ifname.to_string(),
        source,
        packets,
        bytes,
    }))
}

/// The direction and uplink of an accounting chain's name: `rx_<if>` or
/// `tx_<if>` with `<if>` a valid interface name (`rx_` alone, or `tx_a b`,
/// is someone else's chain: found by fuzzing, `-A tx_` gave a sample with
/// an empty device name).
fn accounting_interface(chain: &str) -> Option<(Direction, &str)> {
    let (direction, ifname) = if let Some(i) = chain.strip_prefix("rx_") {
        (Direction::Rx, i)
    } else if let Some(i) = chain.strip_prefix("tx_") {
        (Direction::Tx, i)
    } else {
        return None;
    };
    IfName::new(ifname).ok().map(|_| (direction, ifname))
}

/// Parses `iptables-save -c -t mangle` output (machine-readable counters:
/// `[packets:bytes] -A chain spec`) and returns the samples of the
/// accounting chains. Every rule of an `rx_`/`tx_` chain must be one that
/// patchpanel writes; anything else is an error, never a silent zero.
pub fn parse_counters(text: &str, family: Family) -> Result<Vec<CounterSample>, CounterParseError> {
    let mut samples = Vec::new();
    for line in text.lines() {
        let line = line.trim_end();
        let Some(rest) = line.strip_prefix('[') else {
            continue;
        };
        let err = |why| CounterParseError {
            line: line.to_string(),
            why,
        };
        let (counts, rule) = rest
            .split_once("] ")
            .ok_or_else(|| err("no ']' after the counters"))?;
        let Some(rule) = rule.strip_prefix("-A ") else {
            continue;
        };
        let (chain, spec) = match rule.split_once(' ') {
            Some((c, s)) => (c, s.trim()),
            None => (rule, ""),
        };
        let Some((direction, ifname)) = accounting_interface(chain) else {
            continue;
        };
        let (p, b) = counts
            .split_once(':')
            .ok_or_else(|| err("counters are not packets:bytes"))?;
        let packets = p.parse().map_err(|_| err("packet count is not a number"))?;
        let bytes = b.parse().map_err(|_| err("byte count is not a number"))?;
        let source = if spec.is_empty() {
            None
        } else {
            let mark = spec
                .strip_prefix("-m mark --mark ")
                .and_then(|s| s.strip_suffix(" -j RETURN"))
                .and_then(|s| s.strip_suffix("/0x3f00"))
                .ok_or_else(|| err("not an accounting rule"))?;
            let value = u32::from_str_radix(mark.trim_start_matches("0x"), 16)
                .map_err(|_| err("mark is not hexadecimal"))?;
            Some(TrafficSource::from_fwmark(value).ok_or_else(|| err("unknown source mark"))?)
        };
        samples.push(CounterSample {
            family,
            direction,
            ifname: ifname.to_string(),
            source,
            packets,
            bytes,
        });
    }
    Ok(samples)
}

#[cfg(test)]
mod parse_tests {
    use super::*;

    #[test]
    fn chains_not_named_after_an_interface_are_not_ours() {
        let text =
            "[5:0] -A tx_\n[1:2] -A rx_a\tb\n[3:4] -A rx_0123456789abcdef\n[7:8] -A rx_eth0\n";
        let samples = parse_counters(text, Family::V4).unwrap();
        assert_eq!(samples.len(), 1, "{samples:?}");
        assert_eq!(samples[0].ifname, "eth0");
        assert_eq!((samples[0].packets, samples[0].bytes), (7, 8));
    }

    const DUMP: &str = "# Generated by iptables-save v1.8.9 (nf_tables)\n*mangle\n\
:PREROUTING ACCEPT [10:1000]\n:rx_eth0 - [0:0]\n:tx_eth0 - [0:0]\n\
[3:180] -A patchpanel_INPUT -i eth0 -j rx_eth0\n\
[5:500] -A rx_eth0 -m mark --mark 0x400/0x3f00 -j RETURN\n\
[0:0] -A rx_eth0 -m mark --mark 0x100/0x3f00 -j RETURN\n\
[2:120] -A rx_eth0\n\
[7:7000] -A tx_eth0 -m mark --mark 0x2000/0x3f00 -j RETURN\n\
[1:60] -A tx_eth0\nCOMMIT\n";

    #[test]
    fn samples_of_the_accounting_chains_are_read() {
        let s = parse_counters(DUMP, Family::V4).unwrap();
        assert_eq!(s.len(), 5);
        assert_eq!(
            s[0],
            CounterSample {
                family: Family::V4,
                direction: Direction::Rx,
                ifname: "eth0".into(),
                source: Some(TrafficSource::System),
                packets: 5,
                bytes: 500,
            }
        );
        assert_eq!(s[2].source, None);
        assert_eq!((s[2].packets, s[2].bytes), (2, 120));
        assert_eq!(s[3].direction, Direction::Tx);
        assert_eq!(s[3].source, Some(TrafficSource::Arc));
    }

    #[test]
    fn a_foreign_rule_in_an_accounting_chain_is_an_error() {
        let bad = "[1:2] -A rx_eth0 -p tcp -j ACCEPT\n";
        assert!(parse_counters(bad, Family::V4).is_err());
    }

    #[test]
    fn garbled_counters_are_an_error_not_a_zero() {
        for bad in [
            "[x:2] -A rx_eth0\n",
            "[12] -A rx_eth0\n",
            "[1:2 -A rx_eth0\n",
        ] {
            assert!(parse_counters(bad, Family::V4).is_err(), "{bad}");
        }
        let unknown = "[1:2] -A tx_eth0 -m mark --mark 0x3f00/0x3f00 -j RETURN\n";
        assert!(parse_counters(unknown, Family::V4).is_err());
    }

    #[test]
    fn chains_other_than_rx_and_tx_are_ignored() {
        let other = "[1:2] -A PREROUTING_arc_ns0 -j MARK --set-xmark 0x1/0x1\n";
        assert!(parse_counters(other, Family::V4).unwrap().is_empty());
    }
}
