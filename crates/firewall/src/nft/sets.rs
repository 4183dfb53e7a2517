//! Port rules as set elements: the rules ModifyPortRule adds (ACCESS and
//! FORWARDING) all have one shape per chain, so instead of one rule each
//! they are elements of a few sets and maps, each looked up by one rule
//! that setup puts in the chain. The same holds for each guest's
//! `guest_forward -i <guest> -j ACCEPT` (set `guest_in`), its reply
//! accept `guest_forward -o <guest> -m conntrack --ctstate
//! RELATED,ESTABLISHED -j ACCEPT` (`guest_out`, the state matched by the
//! lookup rule) and a namespace's `skip_apply_vpn_mark -o <if> -j ACCEPT`
//! (`vpn_skip_out`): a guest's start then adds no rule to the filter
//! table at all. Adding or removing one is then a set
//! element change, whose commit costs the same whatever the number of
//! rules: a chain of rules is copied and validated whole by the kernel at
//! every commit that changes it.
//!
//! Each element carries its rule's iptables spec as its comment (`nft
//! list` shows it, dumps read it back as that rule) and, when the same rule
//! was added more than once (two forwards to one guest port), how many
//! times. The lookup rule's comment is `@` and the set's name.
//!
//! LOCKDOWN rules (a reject unless the socket's uid is the one allowed)
//! stay rules: a set cannot say "any uid but this one", and there are few.

use std::net::{IpAddr, Ipv4Addr};

use super::expr::{self, KeyField, LookupAction};
use super::wire::{self, rule_attr, MsgBuilder, Reply};
use super::{nfproto, table_name, userdata, UDATA_COMMENT};
use crate::layout::{
    GUEST_FORWARD, INGRESS_PORT_FIREWALL, INGRESS_PORT_FORWARDING, SKIP_APPLY_VPN_MARK,
};
use crate::model::{Change, CtStates, Family, Match, Protocol, Rule, Table, Target};
use crate::render::rule_spec;

/// `enum nf_tables_msg_types`, the set messages.
pub mod msg {
    pub const NEWSET: u16 = 9;
    pub const GETSET: u16 = 10;
    pub const DELSET: u16 = 11;
    pub const NEWSETELEM: u16 = 12;
    pub const GETSETELEM: u16 = 13;
    pub const DELSETELEM: u16 = 14;
}

/// `enum nft_set_attributes`.
mod set_attr {
    pub const TABLE: u16 = 1;
    pub const NAME: u16 = 2;
    pub const FLAGS: u16 = 3;
    pub const KEY_TYPE: u16 = 4;
    pub const KEY_LEN: u16 = 5;
    pub const DATA_TYPE: u16 = 6;
    pub const DATA_LEN: u16 = 7;
    pub const ID: u16 = 10;
    pub const USERDATA: u16 = 13;
}

/// The set's userdata telling `nft` the key is in host byte order
/// (`NFTNL_UDATA_SET_KEYBYTEORDER` = `BYTEORDER_HOST_ENDIAN`): without it
/// `nft list` prints the elements of a set keyed by an interface name
/// alone as `""` (a concatenation's parts carry their own order).
fn host_order_key_udata() -> Vec<u8> {
    let mut u = vec![0, 4];
    u.extend_from_slice(&1u32.to_ne_bytes());
    u
}

/// `enum nft_set_elem_list_attributes` and `nft_set_elem_attributes`.
mod elem_attr {
    pub const LIST_TABLE: u16 = 1;
    pub const LIST_SET: u16 = 2;
    pub const LIST_ELEMENTS: u16 = 3;
    pub const KEY: u16 = 1;
    pub const DATA: u16 = 2;
    pub const USERDATA: u16 = 6;
    /// `NFTA_DATA_VALUE`, inside KEY and DATA.
    pub const DATA_VALUE: u16 = 1;
}

const NFT_SET_MAP: u32 = 0x8;

/// nft's width of one datatype in a concatenated type number.
const TYPE_BITS: u32 = 6;

/// An element's use count, after its comment in the userdata (a type
/// libnftnl does not know and `nft` ignores).
const UDATA_COUNT: u8 = 0x70;

/// The longest spec an element's userdata holds next to its count (the
/// kernel takes 256 bytes).
const MAX_ELEM_SPEC_LEN: usize = 240;

/// The data of a DNAT map: `ipv4_addr . inet_service`.
const DNAT_DATA: [KeyField; 2] = [KeyField::Ipv4Daddr, KeyField::Dport];

/// One set (or map) holding port rules of one shape.
#[derive(Debug, PartialEq, Eq)]
pub struct PortSet {
    pub name: &'static str,
    pub table: Table,
    pub families: &'static [Family],
    pub chain: &'static str,
    /// The key's parts, in the key's order.
    pub key: &'static [KeyField],
    pub action: LookupAction,
    /// The model adds these rules with `-I chain 1` (else `-A chain`).
    pub inserted_first: bool,
    /// The rules' `-m conntrack --ctstate` (matched by the lookup rule).
    pub guard: Option<CtStates>,
}

/// `RELATED,ESTABLISHED`, a reply accept's states.
const REPLIES: CtStates = CtStates(CtStates::RELATED.0 | CtStates::ESTABLISHED.0);

/// The port sets a table of the layout holds: those whose chain it has.
pub(super) fn of_layout(
    want: &crate::layout::TableLayout,
) -> impl Iterator<Item = &'static PortSet> + '_ {
    PORT_SETS.iter().filter(move |s| {
        s.table == want.table
            && s.families.contains(&want.family)
            && want.chains.iter().any(|c| c.chain.as_str() == s.chain)
    })
}

/// Every port set, in the order their lookup rules stand in their chains
/// (a forward to a given host address before a forward of any). The last
/// one is not a port rule's: `guest_forward -i <guest> -j ACCEPT`, one per
/// guest interface, so that a guest's start or stop adds an element
/// instead of a rule to a chain that has one per guest (the chain holds
/// accepts only, so where its lookup rule stands changes nothing).
pub static PORT_SETS: [PortSet; 8] = [
    PortSet {
        name: "port_access",
        table: Table::Filter,
        families: &Family::ALL,
        chain: INGRESS_PORT_FIREWALL,
        key: &[KeyField::L4proto, KeyField::Dport],
        action: LookupAction::Accept,
        inserted_first: true,
        guard: None,
    },
    PortSet {
        name: "port_access_if",
        table: Table::Filter,
        families: &Family::ALL,
        chain: INGRESS_PORT_FIREWALL,
        key: &[KeyField::L4proto, KeyField::Dport, KeyField::Iifname],
        action: LookupAction::Accept,
        inserted_first: true,
        guard: None,
    },
    PortSet {
        name: "port_forward_accept",
        table: Table::Filter,
        families: &[Family::V4],
        chain: GUEST_FORWARD,
        key: &[
            KeyField::Iifname,
            KeyField::L4proto,
            KeyField::Ipv4Daddr,
            KeyField::Dport,
        ],
        action: LookupAction::Accept,
        inserted_first: false,
        guard: None,
    },
    PortSet {
        name: "port_forward_dst",
        table: Table::Nat,
        families: &[Family::V4],
        chain: INGRESS_PORT_FORWARDING,
        key: &[
            KeyField::Iifname,
            KeyField::L4proto,
            KeyField::Ipv4Daddr,
            KeyField::Dport,
        ],
        action: LookupAction::Dnat4,
        inserted_first: true,
        guard: None,
    },
    PortSet {
        name: "port_forward",
        table: Table::Nat,
        families: &[Family::V4],
        chain: INGRESS_PORT_FORWARDING,
        key: &[KeyField::Iifname, KeyField::L4proto, KeyField::Dport],
        action: LookupAction::Dnat4,
        inserted_first: true,
        guard: None,
    },
    PortSet {
        name: "guest_in",
        table: Table::Filter,
        families: &Family::ALL,
        chain: GUEST_FORWARD,
        key: &[KeyField::Iifname],
        action: LookupAction::Accept,
        inserted_first: false,
        guard: None,
    },
    PortSet {
        name: "guest_out",
        table: Table::Filter,
        families: &Family::ALL,
        chain: GUEST_FORWARD,
        key: &[KeyField::Oifname],
        action: LookupAction::Accept,
        inserted_first: false,
        guard: Some(REPLIES),
    },
    // The chain holds accepts only (DNS proxy and namespace exemptions).
    PortSet {
        name: "vpn_skip_out",
        table: Table::Mangle,
        families: &Family::ALL,
        chain: SKIP_APPLY_VPN_MARK,
        key: &[KeyField::Oifname],
        action: LookupAction::Accept,
        inserted_first: false,
        guard: None,
    },
];

impl PortSet {
    /// The comment of its lookup rule.
    pub fn lookup_spec(&self) -> String {
        format!("@{}", self.name)
    }

    fn key_len(&self) -> usize {
        self.key.iter().map(|f| f.bytes()).sum()
    }
}

fn concat_type(fields: &[KeyField]) -> u32 {
    fields
        .iter()
        .fold(0, |acc, f| (acc << TYPE_BITS) | f.datatype())
}

/// The set whose lookup rule has comment `spec`, if any.
pub fn by_lookup_spec(spec: &str) -> Option<&'static PortSet> {
    let name = spec.strip_prefix('@')?;
    PORT_SETS.iter().find(|s| s.name == name)
}

/// A port rule change as a set element change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElementChange {
    pub set: &'static PortSet,
    pub key: Vec<u8>,
    pub data: Option<Vec<u8>>,
    pub spec: String,
    pub add: bool,
}

/// The parts of a rule a port set can key on.
#[derive(Default)]
struct Parts<'a> {
    iif: Option<&'a str>,
    oif: Option<&'a str>,
    states: Option<CtStates>,
    proto: Option<u8>,
    dport: Option<u16>,
    daddr: Option<Ipv4Addr>,
}

fn parts(rule: &Rule) -> Option<Parts<'_>> {
    let mut p = Parts::default();
    for m in &rule.matches {
        match m {
            Match::InInterface(i) if !i.wildcard && !i.negate => {
                p.iif = Some(i.name.as_str());
            }
            Match::OutInterface(i) if !i.wildcard && !i.negate => {
                p.oif = Some(i.name.as_str());
            }
            Match::ConnState(c) if !c.negate => p.states = Some(c.states),
            Match::Protocol(Protocol::Tcp) => p.proto = Some(6),
            Match::Protocol(Protocol::Udp) => p.proto = Some(17),
            Match::DestinationPort(port) => p.dport = Some(*port),
            Match::Destination(a) if !a.negate && a.cidr.prefix_len() == 32 => {
                match a.cidr.addr() {
                    IpAddr::V4(addr) => p.daddr = Some(addr),
                    IpAddr::V6(_) => return None,
                }
            }
            _ => return None,
        }
    }
    Some(p)
}

fn encode(fields: &[KeyField], p: &Parts<'_>) -> Option<Vec<u8>> {
    let mut key = Vec::new();
    for f in fields {
        match f {
            KeyField::Iifname | KeyField::Oifname => {
                let name = if *f == KeyField::Iifname {
                    p.iif?
                } else {
                    p.oif?
                };
                let mut padded = [0u8; 16];
                padded
                    .get_mut(..name.len())?
                    .copy_from_slice(name.as_bytes());
                key.extend_from_slice(&padded);
            }
            KeyField::L4proto => key.extend_from_slice(&[p.proto?, 0, 0, 0]),
            KeyField::Dport => {
                let [hi, lo] = p.dport?.to_be_bytes();
                key.extend_from_slice(&[hi, lo, 0, 0]);
            }
            KeyField::Ipv4Daddr => key.extend_from_slice(&p.daddr?.octets()),
        }
    }
    Some(key)
}

/// The set element a change of the model is, if it is a port rule's.
pub fn classify(family: Family, change: &Change) -> Option<ElementChange> {
    let (table, chain, rule, add, first) = match change {
        Change::Insert {
            table,
            chain,
            position,
            rule,
        } => (*table, chain, rule, true, Some(*position == 1)),
        Change::Append { table, chain, rule } => (*table, chain, rule, true, Some(false)),
        Change::Delete { table, chain, rule } => (*table, chain, rule, false, None),
        _ => return None,
    };
    let p = parts(rule)?;
    let present = [
        (KeyField::Iifname, p.iif.is_some()),
        (KeyField::Oifname, p.oif.is_some()),
        (KeyField::L4proto, p.proto.is_some()),
        (KeyField::Dport, p.dport.is_some()),
        (KeyField::Ipv4Daddr, p.daddr.is_some()),
    ];
    let set = PORT_SETS.iter().find(|s| {
        s.table == table
            && s.chain == chain.as_str()
            && s.families.contains(&family)
            && first.is_none_or(|f| f == s.inserted_first)
            && s.guard == p.states
            && present
                .iter()
                .all(|(field, here)| s.key.contains(field) == *here)
    })?;
    let data = match (set.action, &rule.target) {
        (LookupAction::Accept, Target::Accept) => None,
        (
            LookupAction::Dnat4,
            Target::Dnat {
                addr: IpAddr::V4(addr),
                port: Some(port),
            },
        ) => {
            let [hi, lo] = port.to_be_bytes();
            let mut d = addr.octets().to_vec();
            d.extend_from_slice(&[hi, lo, 0, 0]);
            Some(d)
        }
        _ => return None,
    };
    let spec = rule_spec(rule);
    if spec.len() > MAX_ELEM_SPEC_LEN {
        return None;
    }
    Some(ElementChange {
        set,
        key: encode(set.key, &p)?,
        data,
        spec,
        add,
    })
}

/// `NEWSET` of `set` (no error if it exists), known in its transaction as `id`.
pub fn new_set(seq: u32, family: Family, set: &PortSet, id: u32) -> MsgBuilder {
    let mut m = MsgBuilder::nft(msg::NEWSET, wire::NLM_F_CREATE, seq, nfproto(family));
    m.str(set_attr::TABLE, table_name(set.table));
    m.str(set_attr::NAME, set.name);
    let map = set.action == LookupAction::Dnat4;
    m.be32(set_attr::FLAGS, if map { NFT_SET_MAP } else { 0 });
    m.be32(set_attr::KEY_TYPE, concat_type(set.key));
    m.be32(set_attr::KEY_LEN, set.key_len() as u32);
    if map {
        m.be32(set_attr::DATA_TYPE, concat_type(&DNAT_DATA));
        m.be32(
            set_attr::DATA_LEN,
            DNAT_DATA.iter().map(|f| f.bytes()).sum::<usize>() as u32,
        );
    }
    m.be32(set_attr::ID, id);
    if set.key == [KeyField::Iifname] || set.key == [KeyField::Oifname] {
        m.attr(set_attr::USERDATA, &host_order_key_udata());
    }
    m
}

/// `DELSET` of `set`, its elements with it.
pub fn del_set(seq: u32, family: Family, set: &PortSet) -> MsgBuilder {
    let mut m = MsgBuilder::nft(msg::DELSET, 0, seq, nfproto(family));
    m.str(set_attr::TABLE, table_name(set.table));
    m.str(set_attr::NAME, set.name);
    m
}

/// The lookup rule of `set`: appended to its chain, or put first.
pub fn lookup_rule(
    seq: u32,
    family: Family,
    set: &PortSet,
    set_id: Option<u32>,
    append: bool,
) -> MsgBuilder {
    let mut flags = wire::NLM_F_CREATE;
    if append {
        flags |= wire::NLM_F_APPEND;
    }
    let mut m = MsgBuilder::nft(wire::msg::NEWRULE, flags, seq, nfproto(family));
    m.str(rule_attr::TABLE, table_name(set.table));
    m.str(rule_attr::CHAIN, set.chain);
    let n = m.nest(rule_attr::EXPRESSIONS);
    expr::compile_lookup(
        &mut m, set.key, set.name, set_id, set.table, set.action, set.guard,
    );
    m.end(n);
    m.attr(rule_attr::USERDATA, &userdata(&set.lookup_spec()));
    m
}

fn elem_message(msg_type: u16, flags: u16, seq: u32, family: Family, set: &PortSet) -> MsgBuilder {
    let mut m = MsgBuilder::nft(msg_type, flags, seq, nfproto(family));
    m.str(elem_attr::LIST_TABLE, table_name(set.table));
    m.str(elem_attr::LIST_SET, set.name);
    m
}

fn value(m: &mut MsgBuilder, ty: u16, bytes: &[u8]) {
    let n = m.nest(ty);
    m.attr(elem_attr::DATA_VALUE, bytes);
    m.end(n);
}

/// One element as it is (or will be) in the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Element {
    pub data: Option<Vec<u8>>,
    pub spec: String,
    /// How many times the same rule was added.
    pub count: u32,
}

fn elem_userdata(e: &Element) -> Vec<u8> {
    let mut u = userdata(&e.spec);
    if e.count > 1 {
        u.push(UDATA_COUNT);
        u.push(4);
        u.extend_from_slice(&e.count.to_be_bytes());
    }
    u
}

/// `NEWSETELEM` of one element; fails if the key is there already.
pub fn new_elem(seq: u32, family: Family, set: &PortSet, key: &[u8], e: &Element) -> MsgBuilder {
    let mut m = elem_message(
        msg::NEWSETELEM,
        wire::NLM_F_CREATE | wire::NLM_F_EXCL,
        seq,
        family,
        set,
    );
    let list = m.nest(elem_attr::LIST_ELEMENTS);
    let el = m.nest(wire::NFTA_LIST_ELEM);
    value(&mut m, elem_attr::KEY, key);
    if let Some(data) = &e.data {
        value(&mut m, elem_attr::DATA, data);
    }
    m.attr(elem_attr::USERDATA, &elem_userdata(e));
    m.end(el);
    m.end(list);
    m
}

/// `DELSETELEM` of the element with `key`.
pub fn del_elem(seq: u32, family: Family, set: &PortSet, key: &[u8]) -> MsgBuilder {
    let mut m = elem_message(msg::DELSETELEM, 0, seq, family, set);
    let list = m.nest(elem_attr::LIST_ELEMENTS);
    let el = m.nest(wire::NFTA_LIST_ELEM);
    value(&mut m, elem_attr::KEY, key);
    m.end(el);
    m.end(list);
    m
}

/// The dump request's attributes for the elements of `set`.
pub fn dump_filter(set: &PortSet) -> [(u16, &'static str); 2] {
    [
        (elem_attr::LIST_TABLE, table_name(set.table)),
        (elem_attr::LIST_SET, set.name),
    ]
}

/// The elements of one reply of an element dump: (key, element).
pub fn parse_elements(r: &Reply) -> Vec<(Vec<u8>, Element)> {
    let mut out = Vec::new();
    let Some(list) = wire::attr(&r.attrs, elem_attr::LIST_ELEMENTS) else {
        return out;
    };
    for (_, el) in wire::attrs(list) {
        let Some(key) =
            wire::attr(el, elem_attr::KEY).and_then(|k| wire::attr(k, elem_attr::DATA_VALUE))
        else {
            continue;
        };
        let data = wire::attr(el, elem_attr::DATA)
            .and_then(|d| wire::attr(d, elem_attr::DATA_VALUE))
            .map(<[u8]>::to_vec);
        let (spec, count) = wire::attr(el, elem_attr::USERDATA)
            .map(parse_userdata)
            .unwrap_or_default();
        out.push((
            key.to_vec(),
            Element {
                data,
                spec,
                count: count.max(1),
            },
        ));
    }
    out
}

/// (comment, count) of an element's userdata.
fn parse_userdata(u: &[u8]) -> (String, u32) {
    let (mut spec, mut count) = (String::new(), 1);
    let mut rest = u;
    while rest.len() >= 2 {
        let (ty, len) = (rest[0], usize::from(rest[1]));
        let Some(value) = rest.get(2..2 + len) else {
            break;
        };
        match ty {
            UDATA_COMMENT => {
                let end = value.iter().position(|&b| b == 0).unwrap_or(value.len());
                spec = String::from_utf8_lossy(&value[..end]).into_owned();
            }
            UDATA_COUNT => {
                if let Ok(b) = <[u8; 4]>::try_from(value) {
                    count = u32::from_be_bytes(b);
                }
            }
            _ => {}
        }
        rest = &rest[2 + len..];
    }
    (spec, count)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::{self, Forwarding, PortProtocol};
    use patchpanel_names::IfName;

    fn eth0() -> IfName {
        IfName::new("eth0").unwrap()
    }

    fn only(batch: &crate::Batch, family: Family) -> Vec<Option<ElementChange>> {
        batch
            .changes(family)
            .iter()
            .map(|c| classify(family, c))
            .collect()
    }

    #[test]
    fn an_access_rule_is_an_element_of_the_access_sets_in_both_families() {
        let with_if = ports::access(PortProtocol::Tcp, 5555, Some(&eth0())).unwrap();
        for family in Family::ALL {
            let Ok([Some(e)]) = <[_; 1]>::try_from(only(&with_if, family)) else {
                panic!("one element");
            };
            assert_eq!(e.set.name, "port_access_if");
            let mut key = vec![6, 0, 0, 0, 0x15, 0xb3, 0, 0];
            key.extend_from_slice(b"eth0\0\0\0\0\0\0\0\0\0\0\0\0");
            assert_eq!(e.key, key);
            assert_eq!(e.data, None);
            assert_eq!(e.spec, "-p tcp --dport 5555 -i eth0 -j ACCEPT");
            assert!(e.add);
        }
        let any = ports::access(PortProtocol::Udp, 53, None).unwrap();
        let Ok([Some(e)]) = <[_; 1]>::try_from(only(&any.inverse().unwrap(), Family::V6)) else {
            panic!("one element");
        };
        assert_eq!(e.set.name, "port_access");
        assert_eq!(e.key, [17, 0, 0, 0, 0, 53, 0, 0]);
        assert!(!e.add);
    }

    #[test]
    fn a_forward_is_a_dnat_map_element_and_an_accept_set_element() {
        let f = Forwarding {
            proto: PortProtocol::Tcp,
            ifname: eth0(),
            input_dst: None,
            input_port: 8022,
            dst: Ipv4Addr::new(100, 115, 92, 6),
            dst_port: 22,
        };
        let batch = ports::forwarding(&f).unwrap();
        let elements: Vec<ElementChange> = only(&batch, Family::V4).into_iter().flatten().collect();
        let names: Vec<&str> = elements.iter().map(|e| e.set.name).collect();
        assert_eq!(names.len(), 2);
        let dnat = elements
            .iter()
            .find(|e| e.set.name == "port_forward")
            .unwrap();
        assert_eq!(
            dnat.data.as_deref(),
            Some(&[100, 115, 92, 6, 0, 22, 0, 0][..])
        );
        assert!(names.contains(&"port_forward_accept"));
        let to_addr = ports::forwarding(&Forwarding {
            input_dst: Some(Ipv4Addr::new(192, 0, 2, 10)),
            ..f
        })
        .unwrap();
        assert!(only(&to_addr, Family::V4)
            .iter()
            .flatten()
            .any(|e| e.set.name == "port_forward_dst"));
    }

    #[test]
    fn other_rules_of_the_same_chains_stay_rules() {
        // LOCKDOWN: a negated uid cannot be a key.
        let lockdown = ports::lockdown(PortProtocol::Tcp, 8080, 1000).unwrap();
        assert!(only(&lockdown, Family::V4).iter().all(Option::is_none));
        // ADB sideloading appends its DNAT (not `-I 1`), to the relay.
        let adb = crate::auto_dnat::adb_sideload(
            &eth0(),
            Ipv4Addr::new(100, 115, 92, 2),
            Ipv4Addr::new(100, 115, 92, 25),
            5555,
        );
        assert!(only(&adb, Family::V4).iter().all(Option::is_none));
        // A drop in the accept chain, or an accept at position 2.
        let rule = Rule::new(Target::Drop)
            .with(Match::Protocol(Protocol::Tcp))
            .with(Match::DestinationPort(1));
        let chain = crate::layout::named(INGRESS_PORT_FIREWALL);
        for change in [
            Change::Insert {
                table: Table::Filter,
                chain: chain.clone(),
                position: 1,
                rule: rule.clone(),
            },
            Change::Insert {
                table: Table::Filter,
                chain,
                position: 2,
                rule: Rule {
                    target: Target::Accept,
                    ..rule
                },
            },
        ] {
            assert_eq!(classify(Family::V4, &change), None);
        }
    }

    #[test]
    fn a_namespaces_accepts_are_elements_and_its_mangle_chain_stays_rules() {
        let ns = crate::guest::Namespace {
            host_ifname: IfName::new("arc_ns3").unwrap(),
            host_ipv4: Ipv4Addr::new(100, 115, 92, 129),
            peer_ipv4: Ipv4Addr::new(100, 115, 92, 130),
            ipv6: None,
            source: crate::TrafficSource::System,
            mode: crate::guest::Mode::System,
        };
        let batch = crate::guest::connected_namespace(&ns);
        for family in Family::ALL {
            let elements: Vec<ElementChange> = only(&batch, family).into_iter().flatten().collect();
            let sets: Vec<(&str, &str)> = elements
                .iter()
                .map(|e| (e.set.name, e.spec.as_str()))
                .collect();
            assert_eq!(
                sets,
                [
                    ("vpn_skip_out", "-o arc_ns3 -j ACCEPT"),
                    (
                        "guest_out",
                        "-o arc_ns3 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"
                    ),
                    ("guest_in", "-i arc_ns3 -j ACCEPT"),
                ],
                "{family}"
            );
            for e in &elements {
                assert_eq!(&e.key[..7], b"arc_ns3");
                assert_eq!(e.key.len(), 16);
                assert!(e.add);
            }
            // Nothing of the filter table stays a rule; the mangle chain
            // and its jump do.
            let rules: Vec<&Change> = batch
                .changes(family)
                .iter()
                .filter(|c| classify(family, c).is_none())
                .collect();
            assert!(
                rules.iter().all(|c| c.table() == Table::Mangle),
                "{rules:?}"
            );
        }
        // The inverse removes the elements.
        let inverse = batch.inverse().unwrap();
        let removed: Vec<ElementChange> =
            only(&inverse, Family::V4).into_iter().flatten().collect();
        assert_eq!(removed.len(), 3);
        assert!(removed.iter().all(|e| !e.add));
    }

    #[test]
    fn an_open_guests_accept_and_an_isolated_guests_drops_stay_rules() {
        let eth = IfName::new("vmtap3").unwrap();
        // `-o X -j ACCEPT` in guest_forward (an open guest): no state, so
        // not a `guest_out` element.
        let open = Change::Append {
            table: Table::Filter,
            chain: crate::layout::named(GUEST_FORWARD),
            rule: Rule::new(Target::Accept).with(Match::oif(&eth)),
        };
        assert_eq!(classify(Family::V4, &open), None);
        // Other states than a reply's, or negated: rules.
        for (states, negate) in [(CtStates::NEW, false), (REPLIES, true)] {
            let change = Change::Append {
                table: Table::Filter,
                chain: crate::layout::named(GUEST_FORWARD),
                rule: Rule::new(Target::Accept)
                    .with(Match::oif(&eth))
                    .with(Match::ConnState(crate::model::CtStateMatch {
                        states,
                        negate,
                    })),
            };
            assert_eq!(classify(Family::V6, &change), None, "{states:?} {negate}");
        }
    }

    #[test]
    fn userdata_keeps_the_spec_and_the_count() {
        let e = Element {
            data: None,
            spec: "-p tcp --dport 1 -j ACCEPT".into(),
            count: 3,
        };
        assert_eq!(parse_userdata(&elem_userdata(&e)), (e.spec.clone(), 3));
        let once = Element { count: 1, ..e };
        assert_eq!(
            parse_userdata(&elem_userdata(&once)),
            (once.spec.clone(), 1)
        );
    }

    #[test]
    fn set_types_are_nfts_concatenations() {
        // What `nft add map ... { type ifname . inet_proto . inet_service :
        // ipv4_addr . inet_service; }` sends.
        assert_eq!(concat_type(PORT_SETS[4].key), 0x0002_930d);
        assert_eq!(PORT_SETS[4].key_len(), 24);
        assert_eq!(concat_type(&DNAT_DATA), 0x1cd);
    }
}
