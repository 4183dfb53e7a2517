//! Named counters: each rule of an accounting chain (`rx_<if>`, `tx_<if>`)
//! counts twice, in a counter of its own and in a counter object of its
//! table named after the chain and the rule
//! ([`crate::counters::counter_name`]). Reading the counts is one dump of
//! the table's objects, which the kernel fills at a fraction of the cost
//! of the rules (a rule's message carries every expression and the
//! comment), without listing the chains first. The rule's own counter is
//! for its deletion by someone else (`flush ruleset`): the kernel announces
//! a deleted rule with its expressions, counts included, but a deleted
//! object without its data, and the writer's monitor carries those counts
//! over. Both start together at the same counts, so they agree; a named
//! counter no rule uses any more (its rules flushed by someone else, their
//! counts carried already) is not read.

use super::wire::{self, MsgBuilder, Reply};
use super::{nfproto, table_name};
use crate::counters::{sample_of_counter, CounterParseError, CounterSample};
use crate::model::{Family, Table};

/// `enum nf_tables_msg_types`, the object messages.
pub mod msg {
    pub const NEWOBJ: u16 = 18;
    pub const GETOBJ: u16 = 19;
    pub const DELOBJ: u16 = 20;
}

/// `enum nft_object_attributes`.
mod obj_attr {
    pub const TABLE: u16 = 1;
    pub const NAME: u16 = 2;
    pub const TYPE: u16 = 3;
    pub const DATA: u16 = 4;
    pub const USE: u16 = 5;
}

/// `NFT_OBJECT_COUNTER`.
pub const OBJECT_COUNTER: u32 = 1;

/// `enum nft_counter_attributes`.
mod counter_attr {
    pub const BYTES: u16 = 1;
    pub const PACKETS: u16 = 2;
}

/// The table the accounting chains are in.
pub const TABLE: Table = Table::Mangle;

/// `NEWOBJ` of counter `name` starting at `(packets, bytes)`. Without
/// `NLM_F_EXCL`: a counter that exists already is left as it is, counts
/// included (an accounting rule added again after a flush of its chain
/// goes on counting where it stopped).
pub fn new_counter(
    seq: u32,
    family: Family,
    name: &str,
    (packets, bytes): (u64, u64),
) -> MsgBuilder {
    let mut m = MsgBuilder::nft(msg::NEWOBJ, wire::NLM_F_CREATE, seq, nfproto(family));
    m.str(obj_attr::TABLE, table_name(TABLE));
    m.str(obj_attr::NAME, name);
    m.be32(obj_attr::TYPE, OBJECT_COUNTER);
    let data = m.nest(obj_attr::DATA);
    m.be64(counter_attr::BYTES, bytes);
    m.be64(counter_attr::PACKETS, packets);
    m.end(data);
    m
}

/// `DELOBJ` of counter `name`.
pub fn del_counter(seq: u32, family: Family, name: &str) -> MsgBuilder {
    let mut m = MsgBuilder::nft(msg::DELOBJ, 0, seq, nfproto(family));
    m.str(obj_attr::TABLE, table_name(TABLE));
    m.str(obj_attr::NAME, name);
    m.be32(obj_attr::TYPE, OBJECT_COUNTER);
    m
}

/// The dump request's attributes for the objects of the accounting table.
pub fn dump_filter() -> [(u16, &'static str); 1] {
    [(obj_attr::TABLE, table_name(TABLE))]
}

/// A counter object as announced or dumped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counter {
    pub family: Family,
    pub table: String,
    pub name: String,
    pub packets: u64,
    pub bytes: u64,
    /// How many rules count into it, when the kernel said.
    pub uses: Option<u32>,
}

/// The counter one object message is, if it is a counter's.
pub fn parse_counter(r: &Reply) -> Option<Counter> {
    let family = super::family_of(r.family)?;
    if wire::attr_be32(&r.attrs, obj_attr::TYPE)? != OBJECT_COUNTER {
        return None;
    }
    let data = wire::attr(&r.attrs, obj_attr::DATA)?;
    Some(Counter {
        family,
        table: wire::attr_str(&r.attrs, obj_attr::TABLE)?,
        name: wire::attr_str(&r.attrs, obj_attr::NAME)?,
        packets: wire::attr_be64(data, counter_attr::PACKETS)?,
        bytes: wire::attr_be64(data, counter_attr::BYTES)?,
        uses: wire::attr_be32(&r.attrs, obj_attr::USE),
    })
}

/// The samples of the accounting counters among `counters` (those of
/// patchpanel's accounting table that a rule uses); a counter there that
/// is an accounting chain's but not named as patchpanel names them is an
/// error.
pub fn samples_of(counters: &[Counter]) -> Result<Vec<CounterSample>, CounterParseError> {
    let mut samples = Vec::new();
    for c in counters {
        if c.table != table_name(TABLE) || c.uses == Some(0) {
            continue;
        }
        if let Some(s) = sample_of_counter(c.family, &c.name, c.packets, c.bytes)? {
            samples.push(s);
        }
    }
    Ok(samples)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::counters::{counter_name, Direction};
    use crate::model::{Match, Rule, Target};
    use crate::TrafficSource;

    fn reply_of(m: MsgBuilder) -> Reply {
        let bytes = m.finish();
        let (ty, seq, payload) = wire::split_messages(&bytes).unwrap().remove(0);
        Reply::from_message(ty, seq, &payload).unwrap()
    }

    #[test]
    fn a_counter_message_parses_back_as_its_sample() {
        let rule = Rule::new(Target::Return).with(Match::mark(0x400, 0x3f00));
        let name = counter_name("rx_eth0", &rule).unwrap();
        assert_eq!(name, "rx_eth0/0x400");
        let c = parse_counter(&reply_of(new_counter(1, Family::V6, &name, (3, 180)))).unwrap();
        assert_eq!(
            c,
            Counter {
                family: Family::V6,
                table: "patchpanel_mangle".into(),
                name,
                packets: 3,
                bytes: 180,
                uses: None,
            }
        );
        let samples = samples_of(&[c]).unwrap();
        assert_eq!(samples.len(), 1);
        assert_eq!(samples[0].direction, Direction::Rx);
        assert_eq!(samples[0].ifname, "eth0");
        assert_eq!(samples[0].source, Some(TrafficSource::System));
        assert_eq!((samples[0].packets, samples[0].bytes), (3, 180));
        // The rule that counts the rest.
        let any = counter_name("tx_mbimmux0.1", &Rule::new(Target::Count)).unwrap();
        assert_eq!(any, "tx_mbimmux0.1/any");
        let s = sample_of_counter(Family::V4, &any, 1, 2).unwrap().unwrap();
        assert_eq!(
            (s.direction, s.ifname.as_str(), s.source),
            (Direction::Tx, "mbimmux0.1", None)
        );
    }

    #[test]
    fn only_accounting_rules_have_counter_names() {
        for rule in [
            Rule::new(Target::Accept).with(Match::mark(0x400, 0x3f00)),
            Rule::new(Target::Return).with(Match::mark(0x400, 0xffff)),
            Rule::new(Target::Return).with(Match::not_mark(0x400, 0x3f00)),
            Rule::new(Target::Return),
        ] {
            assert_eq!(counter_name("rx_eth0", &rule), None, "{rule:?}");
        }
    }

    #[test]
    fn counters_not_named_as_ours_are_skipped_or_refused() {
        let counter = |table: &str, name: &str| Counter {
            family: Family::V4,
            table: table.into(),
            name: name.into(),
            packets: 1,
            bytes: 2,
            uses: Some(1),
        };
        // Another table's, or not an accounting chain's: not ours.
        for c in [
            counter("filter", "rx_eth0/0x400"),
            counter("patchpanel_mangle", "hits"),
            counter("patchpanel_mangle", "rx_/0x400"),
            counter("patchpanel_mangle", "PREROUTING_eth0/0x400"),
            // No rule counts into it: its counts went with its rules.
            Counter {
                uses: Some(0),
                ..counter("patchpanel_mangle", "rx_eth0/0x400")
            },
        ] {
            assert_eq!(samples_of(std::slice::from_ref(&c)).unwrap(), [], "{c:?}");
        }
        // An accounting chain's with a tag patchpanel never writes: an
        // error, never a silent zero.
        for name in ["rx_eth0/0x401", "rx_eth0/0x3f00", "rx_eth0/400", "rx_eth0/"] {
            assert!(
                samples_of(&[counter("patchpanel_mangle", name)]).is_err(),
                "{name}"
            );
        }
    }
}
