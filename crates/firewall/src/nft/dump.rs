//! Reading nf_tables back: rules and chains as dumped, their counters,
//! and the fuzz entry point that runs every reply parser.

use super::*;

/// A rule as read back: its handle, spec and counter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DumpedRule {
    pub family: Family,
    pub table: Table,
    pub chain: String,
    pub handle: u64,
    pub spec: String,
    pub counter: Option<(u64, u64)>,
}

/// A chain as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DumpedChain {
    pub family: Family,
    pub table: Table,
    pub name: String,
    pub is_base: bool,
}

/// The counter samples of a family's dumped mangle rules: those of the
/// accounting chains, read by the parser of `iptables-save -c` lines
/// (each rule's comment is its iptables spec).
pub(super) fn counters_of(
    family: Family,
    rules: &[DumpedRule],
) -> Result<Vec<CounterSample>, FirewallError> {
    let mut text = String::new();
    for r in rules {
        if !is_accounting_chain(&r.chain) {
            continue;
        }
        let (p, b) = r.counter.unwrap_or((0, 0));
        text.push_str(&format!("[{p}:{b}] -A {} {}\n", r.chain, r.spec));
    }
    crate::counters::parse_counters(&text, family)
        .map_err(|source| FirewallError::NftCounters { source })
}

/// Entry point for the fuzz targets (`fuzz/`): a datagram from nf_tables
/// through every parser of dump replies, echoes and notifications the
/// backend has (rules, their counters, set elements, the narrow accept,
/// iptables' rules, the monitor's transactions and lost counts). Returns
/// how many messages one of them understood. Not for other use.
#[doc(hidden)]
pub fn fuzz_replies(buf: &[u8]) -> usize {
    let transactions = monitor::Assembler::default().feed(buf);
    let noticed: usize = transactions
        .iter()
        .map(|t| t.notices.len() + t.lost_counters.len() + t.lost_iptables_counters.len())
        .sum();
    let Ok(messages) = wire::split_messages(buf) else {
        return noticed;
    };
    let replies: Vec<Reply> = messages
        .iter()
        .filter_map(|(ty, seq, payload)| Reply::from_message(*ty, *seq, payload))
        .collect();
    let mut understood = noticed;
    let mut rules = Vec::new();
    for r in &replies {
        let _ = r.nft_type();
        if let Some(rule) = parse_rule(r) {
            rules.push(rule);
            understood += 1;
        }
        understood += sets::parse_elements(r).len();
        understood += usize::from(is_narrow_accept(r));
        understood += usize::from(iptables_rule(r).is_some());
        if let Some(counter) = super::objects::parse_counter(r) {
            understood += super::objects::samples_of(&[counter]).map_or(1, |s| 1 + s.len());
        }
    }
    for family in Family::ALL {
        let mine: Vec<DumpedRule> = rules
            .iter()
            .filter(|r| r.family == family)
            .cloned()
            .collect();
        if let Ok(samples) = counters_of(family, &mine) {
            understood += samples.len();
        }
    }
    understood
}

pub(super) fn parse_rule(r: &Reply) -> Option<DumpedRule> {
    let family = family_of(r.family)?;
    let table = table_of(&wire::attr_str(&r.attrs, rule_attr::TABLE)?)?;
    let chain = wire::attr_str(&r.attrs, rule_attr::CHAIN)?;
    let handle = wire::attr_be64(&r.attrs, rule_attr::HANDLE)?;
    let spec = wire::attr(&r.attrs, rule_attr::USERDATA)
        .and_then(spec_of_userdata)
        .unwrap_or_default();
    let mut counter = None;
    if let Some(list) = wire::attr(&r.attrs, rule_attr::EXPRESSIONS) {
        for (_, e) in wire::attrs(list) {
            if wire::attr_str(e, wire::NFTA_EXPR_NAME).as_deref() == Some("counter") {
                let data = wire::attr(e, wire::NFTA_EXPR_DATA).unwrap_or(&[]);
                let bytes = wire::attr_be64(data, 1).unwrap_or(0);
                let packets = wire::attr_be64(data, 2).unwrap_or(0);
                counter = Some((packets, bytes));
            }
        }
    }
    Some(DumpedRule {
        family,
        table,
        chain,
        handle,
        spec,
        counter,
    })
}
