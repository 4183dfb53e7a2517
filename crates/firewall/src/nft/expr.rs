//! One [`Rule`] as nf_tables expressions: pure, byte-exact, tested against
//! what the kernel accepts in `tests/tests/nft_backend.rs`.
//!
//! Registers: 1 and 2 (16-byte registers); the verdict register 0.
//! Values loaded by `meta`/`ct` sit in host byte order, values loaded by
//! `payload` in network byte order, as the kernel stores them.

use std::net::IpAddr;

use super::wire::{
    MsgBuilder, NFPROTO_IPV4, NFPROTO_IPV6, NFTA_EXPR_DATA, NFTA_EXPR_NAME, NFTA_LIST_ELEM,
};
use crate::fwmark::ACCEPTED_MARK;
use crate::model::{CtStates, Family, IfMatch, Match, Protocol, Rule, Table, Target};

const REG_VERDICT: u32 = 0;
const REG1: u32 = 1;
const REG2: u32 = 2;

const NF_DROP: i32 = 0;
const NF_ACCEPT: i32 = 1;
const NFT_JUMP: i32 = -3;
const NFT_RETURN: i32 = -5;

const CMP_EQ: u32 = 0;
const CMP_NEQ: u32 = 1;
const CMP_LTE: u32 = 3;

const META_MARK: u32 = 3;
const META_IIFNAME: u32 = 6;
const META_OIFNAME: u32 = 7;
const META_SKUID: u32 = 10;
const META_L4PROTO: u32 = 16;
const META_CGROUP: u32 = 23;

const CT_STATE: u32 = 0;
const CT_MARK: u32 = 3;

const BASE_NETWORK: u32 = 1;
const BASE_TRANSPORT: u32 = 2;

const BITWISE_MASK_XOR: u32 = 0;

const XT_CONNMARK_SAVE: u8 = 1;
const XT_CONNMARK_RESTORE: u8 = 2;

const NAT_DNAT: u32 = 1;
const REJECT_ICMP_UNREACH: u32 = 0;
const SOCKET_WILDCARD: u32 = 2;

const IFNAMSIZ: usize = 16;

/// What cannot be expressed (never reached for a validated rule).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot express {what} in nf_tables")]
pub struct Unsupported {
    pub what: String,
}

/// How an accounting rule counts: in a counter of its own starting at
/// `start` (packets, bytes), whose final counts a deletion announces, and
/// in the named counter `name`, which reads are of.
#[derive(Debug, Clone, Copy)]
pub struct Accounting<'a> {
    pub name: &'a str,
    pub start: (u64, u64),
}

/// Appends the expressions of `rule` (as used in `family`) to `m`, inside
/// an open `NFTA_RULE_EXPRESSIONS` nest. `accounting`: count as an
/// accounting rule; a `Count` rule without it gets a counter of its own.
/// An accept in the filter table also sets [`ACCEPTED_MARK`].
pub fn compile(
    m: &mut MsgBuilder,
    rule: &Rule,
    family: Family,
    table: Table,
    accounting: Option<Accounting<'_>>,
) -> Result<(), Unsupported> {
    let mut e = Exprs { m };
    for mt in &rule.matches {
        e.matcher(mt, family)?;
    }
    match accounting {
        Some(Accounting {
            name,
            start: (packets, bytes),
        }) => {
            e.expr("counter", |m| {
                if (packets, bytes) != (0, 0) {
                    m.be64(1, bytes); // NFTA_COUNTER_BYTES
                    m.be64(2, packets); // NFTA_COUNTER_PACKETS
                }
            });
            e.expr("objref", |m| {
                m.be32(1, super::objects::OBJECT_COUNTER); // NFTA_OBJREF_IMM_TYPE
                m.str(2, name); // NFTA_OBJREF_IMM_NAME
            });
        }
        None if rule.target == Target::Count => e.expr("counter", |_| {}),
        None => {}
    }
    if table == Table::Filter && rule.target == Target::Accept {
        e.meta_load(META_MARK, REG1);
        e.bitwise(
            REG1,
            &(!ACCEPTED_MARK).to_ne_bytes(),
            &ACCEPTED_MARK.to_ne_bytes(),
        );
        e.meta_set(META_MARK, REG1);
    }
    e.target(&rule.target, family);
    Ok(())
}

/// One part of a port set's key, in the order of the key: each part
/// fills whole 32-bit registers, as nft's concatenations do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyField {
    /// `iifname` (16 bytes).
    Iifname,
    /// `oifname` (16 bytes).
    Oifname,
    /// `meta l4proto` (1 byte in a 4-byte register).
    L4proto,
    /// `th dport` (2 bytes, network order, in a 4-byte register).
    Dport,
    /// `ip daddr` (4 bytes).
    Ipv4Daddr,
}

impl KeyField {
    /// The bytes it takes in a key.
    pub fn bytes(self) -> usize {
        match self {
            KeyField::Iifname | KeyField::Oifname => IFNAMSIZ,
            KeyField::L4proto | KeyField::Dport | KeyField::Ipv4Daddr => 4,
        }
    }

    /// nft's datatype number (`enum datatypes`), for `nft list`.
    pub fn datatype(self) -> u32 {
        match self {
            KeyField::Iifname | KeyField::Oifname => 41, // TYPE_IFNAME
            KeyField::L4proto => 12,                     // TYPE_INET_PROTOCOL
            KeyField::Dport => 13,                       // TYPE_INET_SERVICE
            KeyField::Ipv4Daddr => 7,                    // TYPE_IPADDR
        }
    }
}

/// The length of `struct xt_comment_info`.
pub const XT_COMMENT_LEN: usize = 256;

/// The narrow accept exactly as iptables-nft writes `-m mark --mark M/M -m
/// comment --comment C -j ACCEPT`: the mark match, the comment as the xt
/// `comment` match (nft_compat), a counter, the verdict.
pub fn compile_narrow_accept(m: &mut MsgBuilder, mark: u32, comment: &str) {
    let mut e = Exprs { m };
    e.meta_load(META_MARK, REG1);
    e.bitwise(REG1, &mark.to_ne_bytes(), &0u32.to_ne_bytes());
    e.cmp(CMP_EQ, &mark.to_ne_bytes());
    let mut info = [0u8; XT_COMMENT_LEN];
    let bytes = comment.as_bytes();
    let n = bytes.len().min(XT_COMMENT_LEN - 1);
    info[..n].copy_from_slice(&bytes[..n]);
    e.expr("match", |m| {
        m.str(1, "comment"); // NFTA_MATCH_NAME
        m.be32(2, 0); // NFTA_MATCH_REV
        m.attr(3, &info); // NFTA_MATCH_INFO
    });
    e.expr("counter", |_| {});
    e.verdict(NF_ACCEPT, None);
}

/// The narrow accept in nftables' own words, for tables iptables-nft does
/// not manage: `meta mark & M == M counter accept` (its comment rides as
/// the rule's userdata).
pub fn compile_native_narrow_accept(m: &mut MsgBuilder, mark: u32) {
    let mut e = Exprs { m };
    e.meta_load(META_MARK, REG1);
    e.bitwise(REG1, &mark.to_ne_bytes(), &0u32.to_ne_bytes());
    e.cmp(CMP_EQ, &mark.to_ne_bytes());
    e.expr("counter", |_| {});
    e.verdict(NF_ACCEPT, None);
}

/// What a port set's lookup rule does with a packet whose key is in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LookupAction {
    /// A set: accept (marking the packet, as any filter accept does).
    Accept,
    /// A map to `ipv4_addr . inet_service`: DNAT there.
    Dnat4,
}

/// `NFT_REG32_00`: the first 32-bit register (the same bytes as `NFT_REG_1`).
const REG32_00: u32 = 8;

/// The expressions of a port set's one rule: match the conntrack states
/// of `guard`, if any, load the key's parts into consecutive registers,
/// look them up in `set` (created in the same transaction as `set_id`, if
/// given), then act.
pub fn compile_lookup(
    m: &mut MsgBuilder,
    fields: &[KeyField],
    set: &str,
    set_id: Option<u32>,
    table: Table,
    action: LookupAction,
    guard: Option<CtStates>,
) {
    let mut e = Exprs { m };
    if let Some(states) = guard {
        let ct = Match::ConnState(crate::model::CtStateMatch {
            states,
            negate: false,
        });
        // A conntrack state match compiles the same in either family.
        if let Err(err) = e.matcher(&ct, Family::V4) {
            unreachable!("a ct state match always compiles: {err}");
        }
    }
    let mut reg = REG32_00;
    for field in fields {
        match field {
            KeyField::Iifname => e.meta_load(META_IIFNAME, reg),
            KeyField::Oifname => e.meta_load(META_OIFNAME, reg),
            KeyField::L4proto => e.meta_load(META_L4PROTO, reg),
            KeyField::Dport => e.payload_to(BASE_TRANSPORT, 2, 2, reg),
            KeyField::Ipv4Daddr => e.payload_to(BASE_NETWORK, 16, 4, reg),
        }
        reg += (field.bytes() / 4) as u32;
    }
    e.expr("lookup", |m| {
        m.str(1, set); // NFTA_LOOKUP_SET
        m.be32(2, REG1); // NFTA_LOOKUP_SREG
        if action == LookupAction::Dnat4 {
            m.be32(3, REG1); // NFTA_LOOKUP_DREG
        }
        if let Some(id) = set_id {
            m.be32(4, id); // NFTA_LOOKUP_SET_ID
        }
    });
    match action {
        LookupAction::Accept => {
            if table == Table::Filter {
                e.meta_load(META_MARK, REG1);
                e.bitwise(
                    REG1,
                    &(!ACCEPTED_MARK).to_ne_bytes(),
                    &ACCEPTED_MARK.to_ne_bytes(),
                );
                e.meta_set(META_MARK, REG1);
            }
            e.verdict(NF_ACCEPT, None);
        }
        LookupAction::Dnat4 => {
            // The value: the address in the first register, the port in
            // the next.
            e.expr("nat", |m| {
                m.be32(1, NAT_DNAT); // NFTA_NAT_TYPE
                m.be32(2, u32::from(NFPROTO_IPV4)); // NFTA_NAT_FAMILY
                m.be32(3, REG32_00); // NFTA_NAT_REG_ADDR_MIN
                m.be32(5, REG32_00 + 1); // NFTA_NAT_REG_PROTO_MIN
            });
        }
    }
}

struct Exprs<'a> {
    m: &'a mut MsgBuilder,
}

fn op(negate: bool) -> u32 {
    if negate {
        CMP_NEQ
    } else {
        CMP_EQ
    }
}

impl Exprs<'_> {
    fn expr(&mut self, name: &str, data: impl FnOnce(&mut MsgBuilder)) {
        let elem = self.m.nest(NFTA_LIST_ELEM);
        self.m.str(NFTA_EXPR_NAME, name);
        let d = self.m.nest(NFTA_EXPR_DATA);
        data(self.m);
        self.m.end(d);
        self.m.end(elem);
    }

    fn data_value(m: &mut MsgBuilder, ty: u16, value: &[u8]) {
        let n = m.nest(ty);
        m.attr(1, value); // NFTA_DATA_VALUE
        m.end(n);
    }

    fn meta_load(&mut self, key: u32, dreg: u32) {
        self.expr("meta", |m| {
            m.be32(1, dreg); // NFTA_META_DREG
            m.be32(2, key); // NFTA_META_KEY
        });
    }

    fn meta_set(&mut self, key: u32, sreg: u32) {
        self.expr("meta", |m| {
            m.be32(2, key);
            m.be32(3, sreg); // NFTA_META_SREG
        });
    }

    fn ct_load(&mut self, key: u32, dreg: u32) {
        self.expr("ct", |m| {
            m.be32(1, dreg); // NFTA_CT_DREG
            m.be32(2, key); // NFTA_CT_KEY
        });
    }

    fn ct_set(&mut self, key: u32, sreg: u32) {
        self.expr("ct", |m| {
            m.be32(2, key);
            m.be32(4, sreg); // NFTA_CT_SREG
        });
    }

    fn payload(&mut self, base: u32, offset: u32, len: u32) {
        self.payload_to(base, offset, len, REG1);
    }

    fn payload_to(&mut self, base: u32, offset: u32, len: u32, dreg: u32) {
        self.expr("payload", |m| {
            m.be32(1, dreg); // NFTA_PAYLOAD_DREG
            m.be32(2, base);
            m.be32(3, offset);
            m.be32(4, len);
        });
    }

    fn cmp(&mut self, op: u32, value: &[u8]) {
        self.expr("cmp", |m| {
            m.be32(1, REG1); // NFTA_CMP_SREG
            m.be32(2, op);
            Self::data_value(m, 3, value);
        });
    }

    /// `reg = (reg & mask) ^ xor`.
    fn bitwise(&mut self, reg: u32, mask: &[u8], xor: &[u8]) {
        self.expr("bitwise", |m| {
            m.be32(1, reg); // SREG
            m.be32(2, reg); // DREG
            m.be32(3, mask.len() as u32); // LEN
            m.be32(6, BITWISE_MASK_XOR); // OP
            Self::data_value(m, 4, mask);
            Self::data_value(m, 5, xor);
        });
    }

    fn verdict(&mut self, code: i32, chain: Option<&str>) {
        self.expr("immediate", |m| {
            m.be32(1, REG_VERDICT); // NFTA_IMMEDIATE_DREG
            let data = m.nest(2); // NFTA_IMMEDIATE_DATA
            let v = m.nest(2); // NFTA_DATA_VERDICT
            m.be32(1, code as u32); // NFTA_VERDICT_CODE
            if let Some(chain) = chain {
                m.str(2, chain); // NFTA_VERDICT_CHAIN
            }
            m.end(v);
            m.end(data);
        });
    }

    fn immediate(&mut self, dreg: u32, value: &[u8]) {
        self.expr("immediate", |m| {
            m.be32(1, dreg);
            Self::data_value(m, 2, value);
        });
    }

    fn ifname(&mut self, key: u32, i: &IfMatch) {
        self.meta_load(key, REG1);
        let name = i.name.as_str().as_bytes();
        if i.wildcard {
            self.cmp(op(i.negate), name);
        } else {
            let mut padded = [0u8; IFNAMSIZ];
            padded[..name.len()].copy_from_slice(name);
            self.cmp(op(i.negate), &padded);
        }
    }

    fn addr(&mut self, family: Family, source: bool, cidr: &crate::model::Cidr, negate: bool) {
        let (offset, bytes): (u32, Vec<u8>) = match (family, cidr.addr()) {
            (Family::V4, IpAddr::V4(a)) => (if source { 12 } else { 16 }, a.octets().to_vec()),
            (_, IpAddr::V6(a)) => (if source { 8 } else { 24 }, a.octets().to_vec()),
            (Family::V6, IpAddr::V4(a)) => (if source { 12 } else { 16 }, a.octets().to_vec()),
        };
        let len = bytes.len();
        self.payload(BASE_NETWORK, offset, len as u32);
        let prefix = usize::from(cidr.prefix_len());
        if prefix < len * 8 {
            let mut mask = vec![0u8; len];
            for (i, b) in mask.iter_mut().enumerate() {
                let bits = prefix.saturating_sub(i * 8).min(8);
                *b = if bits == 0 { 0 } else { 0xffu8 << (8 - bits) };
            }
            self.bitwise(REG1, &mask, &vec![0u8; len]);
        }
        self.cmp(op(negate), &bytes);
    }

    fn matcher(&mut self, mt: &Match, family: Family) -> Result<(), Unsupported> {
        match mt {
            Match::InInterface(i) => self.ifname(META_IIFNAME, i),
            Match::OutInterface(i) => self.ifname(META_OIFNAME, i),
            Match::Source(a) => self.addr(family, true, &a.cidr, a.negate),
            Match::Destination(a) => self.addr(family, false, &a.cidr, a.negate),
            Match::Protocol(p) => {
                self.meta_load(META_L4PROTO, REG1);
                let number: u8 = match p {
                    Protocol::Tcp => 6,
                    Protocol::Udp => 17,
                    Protocol::Icmp => 1,
                    Protocol::Icmpv6 => 58,
                };
                self.cmp(CMP_EQ, &[number]);
            }
            Match::SourcePort(port) => {
                self.payload(BASE_TRANSPORT, 0, 2);
                self.cmp(CMP_EQ, &port.to_be_bytes());
            }
            Match::DestinationPort(port) => {
                self.payload(BASE_TRANSPORT, 2, 2);
                self.cmp(CMP_EQ, &port.to_be_bytes());
            }
            Match::TcpFlags(f) => {
                self.payload(BASE_TRANSPORT, 13, 1);
                self.bitwise(REG1, &[f.mask.0], &[0]);
                self.cmp(op(f.negate), &[f.set.0]);
            }
            Match::Mark(mm) => {
                self.meta_load(META_MARK, REG1);
                if mm.mask != u32::MAX {
                    self.bitwise(REG1, &mm.mask.to_ne_bytes(), &0u32.to_ne_bytes());
                }
                self.cmp(op(mm.negate), &mm.value.to_ne_bytes());
            }
            Match::ConnState(s) => {
                self.ct_load(CT_STATE, REG1);
                self.bitwise(
                    REG1,
                    &ct_state_bits(s.states).to_ne_bytes(),
                    &0u32.to_ne_bytes(),
                );
                // Any of the states: the masked value is not zero.
                self.cmp(if s.negate { CMP_EQ } else { CMP_NEQ }, &0u32.to_ne_bytes());
            }
            Match::SocketNoWildcard => {
                // `-m socket --nowildcard`: a socket is found, wildcard-bound
                // ones included. The lookup breaks the rule when there is
                // none; the flag itself is 0 or 1.
                self.expr("socket", |m| {
                    m.be32(1, SOCKET_WILDCARD); // NFTA_SOCKET_KEY
                    m.be32(2, REG1); // NFTA_SOCKET_DREG
                });
                self.cmp(CMP_LTE, &[1]);
            }
            Match::UidOwner { uid, negate } => {
                self.meta_load(META_SKUID, REG1);
                self.cmp(op(*negate), &uid.to_ne_bytes());
            }
            Match::Cgroup { classid } => {
                self.meta_load(META_CGROUP, REG1);
                self.cmp(CMP_EQ, &classid.to_ne_bytes());
            }
        }
        Ok(())
    }

    /// `-j CONNMARK --save-mark`/`--restore-mark` with masks, as the xt
    /// target through nft_compat (what iptables-nft itself does): native
    /// expressions would need the two-register `bitwise` of Linux 6.13,
    /// which the `nft` of Debian 12 cannot print (it aborts listing).
    /// `struct xt_connmark_tginfo2`, revision 2.
    fn connmark_copy(&mut self, mode: u8, ctmask: u32, nfmask: u32) {
        let mut info = Vec::with_capacity(16);
        info.extend_from_slice(&0u32.to_ne_bytes()); // ctmark
        info.extend_from_slice(&ctmask.to_ne_bytes());
        info.extend_from_slice(&nfmask.to_ne_bytes());
        info.extend_from_slice(&[0, 0, mode, 0]); // shift_dir, shift_bits, mode, pad
        self.expr("target", |m| {
            m.str(1, "CONNMARK"); // NFTA_TARGET_NAME
            m.be32(2, 2); // NFTA_TARGET_REV
            m.attr(3, &info); // NFTA_TARGET_INFO
        });
    }

    fn target(&mut self, target: &Target, family: Family) {
        match target {
            Target::Accept => self.verdict(NF_ACCEPT, None),
            Target::Drop => self.verdict(NF_DROP, None),
            Target::Return => self.verdict(NFT_RETURN, None),
            Target::Jump(chain) => self.verdict(NFT_JUMP, Some(chain.as_str())),
            Target::Reject => {
                let code: u8 = match family {
                    Family::V4 => 3, // ICMP_PORT_UNREACH
                    Family::V6 => 4, // ICMPV6_PORT_UNREACH
                };
                self.expr("reject", |m| {
                    m.be32(1, REJECT_ICMP_UNREACH);
                    m.attr(2, &[code]);
                });
            }
            // (mark & ~mask) ^ value; with value inside mask (validated),
            // --set-mark's OR is the same XOR.
            Target::SetMark { value, mask } | Target::SetXmark { value, mask } => {
                self.meta_load(META_MARK, REG1);
                self.bitwise(REG1, &(!mask).to_ne_bytes(), &value.to_ne_bytes());
                self.meta_set(META_MARK, REG1);
            }
            Target::ConnmarkSet { value, mask } => {
                self.ct_load(CT_MARK, REG1);
                self.bitwise(REG1, &(!mask).to_ne_bytes(), &value.to_ne_bytes());
                self.ct_set(CT_MARK, REG1);
            }
            Target::ConnmarkRestore { mask } => {
                self.connmark_copy(XT_CONNMARK_RESTORE, *mask, *mask)
            }
            Target::ConnmarkRestoreMasks { nfmask, ctmask } => {
                self.connmark_copy(XT_CONNMARK_RESTORE, *ctmask, *nfmask)
            }
            Target::ConnmarkSave { mask } => self.connmark_copy(XT_CONNMARK_SAVE, *mask, *mask),
            Target::Masquerade => self.expr("masq", |_| {}),
            Target::Dnat { addr, port } => {
                let (nfproto, bytes) = match addr {
                    IpAddr::V4(a) => (NFPROTO_IPV4, a.octets().to_vec()),
                    IpAddr::V6(a) => (NFPROTO_IPV6, a.octets().to_vec()),
                };
                self.immediate(REG1, &bytes);
                if let Some(port) = port {
                    self.immediate(REG2, &port.to_be_bytes());
                }
                self.expr("nat", |m| {
                    m.be32(1, NAT_DNAT); // NFTA_NAT_TYPE
                    m.be32(2, u32::from(nfproto)); // NFTA_NAT_FAMILY
                    m.be32(3, REG1); // NFTA_NAT_REG_ADDR_MIN
                    if port.is_some() {
                        m.be32(5, REG2); // NFTA_NAT_REG_PROTO_MIN
                    }
                });
            }
            Target::Count => {}
        }
    }
}

/// iptables' conntrack state bits as nf_tables' `ct state` bits
/// (`NF_CT_STATE_BIT(ctinfo)`, invalid 1, untracked 64).
pub fn ct_state_bits(states: CtStates) -> u32 {
    let mut bits = 0;
    for (flag, nft) in [
        (CtStates::INVALID, 1u32),
        (CtStates::ESTABLISHED, 2),
        (CtStates::RELATED, 4),
        (CtStates::NEW, 8),
        (CtStates::UNTRACKED, 64),
    ] {
        if states.0 & flag.0 != 0 {
            bits |= nft;
        }
    }
    bits
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Cidr, Comment};
    use patchpanel_names::IfName;

    fn names(rule: &Rule, family: Family) -> Vec<String> {
        counted_names(rule, family, None)
    }

    fn counted_names(rule: &Rule, family: Family, counter: Option<&str>) -> Vec<String> {
        let mut m = MsgBuilder::nft(0, 0, 0, 0);
        let n = m.nest(4);
        let accounting = counter.map(|name| Accounting {
            name,
            start: (0, 0),
        });
        compile(&mut m, rule, family, Table::Nat, accounting).unwrap();
        m.end(n);
        let bytes = m.finish();
        let body = &bytes[20..];
        let (_, list) = super::super::wire::attrs(body).next().unwrap();
        super::super::wire::attrs(list)
            .map(|(_, e)| super::super::wire::attr_str(e, NFTA_EXPR_NAME).unwrap())
            .collect()
    }

    #[test]
    fn an_accept_on_an_interface_is_a_load_a_compare_and_a_verdict() {
        let rule = Rule::new(Target::Accept).with(Match::iif(&IfName::new("eth0").unwrap()));
        assert_eq!(names(&rule, Family::V4), ["meta", "cmp", "immediate"]);
    }

    #[test]
    fn a_filter_accept_marks_the_packet_first() {
        let mut m = MsgBuilder::nft(0, 0, 0, 0);
        let n = m.nest(4);
        compile(
            &mut m,
            &Rule::new(Target::Accept),
            Family::V4,
            Table::Filter,
            None,
        )
        .unwrap();
        m.end(n);
        let bytes = m.finish();
        let (_, list) = super::super::wire::attrs(&bytes[20..]).next().unwrap();
        let names: Vec<String> = super::super::wire::attrs(list)
            .map(|(_, e)| super::super::wire::attr_str(e, NFTA_EXPR_NAME).unwrap())
            .collect();
        assert_eq!(names, ["meta", "bitwise", "meta", "immediate"]);
    }

    #[test]
    fn a_prefix_is_masked_and_a_host_is_not() {
        let net = Cidr::new("100.115.92.0".parse().unwrap(), 24).unwrap();
        let rule = Rule::new(Target::Masquerade).with(Match::src(net));
        assert_eq!(
            names(&rule, Family::V4),
            ["payload", "bitwise", "cmp", "masq"]
        );
        let host = Cidr::host("100.115.92.6".parse().unwrap());
        let rule = Rule::new(Target::Drop).with(Match::dst(host));
        assert_eq!(names(&rule, Family::V4), ["payload", "cmp", "immediate"]);
    }

    #[test]
    fn connmark_copies_go_through_the_xt_target() {
        let rule = Rule::new(Target::ConnmarkRestore { mask: 0xffff0000 })
            .commented(Comment::new("x").unwrap());
        assert_eq!(names(&rule, Family::V6), ["target"]);
    }

    #[test]
    fn a_count_rule_is_only_a_counter() {
        assert_eq!(names(&Rule::new(Target::Count), Family::V4), ["counter"]);
    }

    #[test]
    fn an_accounting_rule_counts_itself_and_into_its_named_counter_before_its_verdict() {
        let count = Rule::new(Target::Count);
        assert_eq!(
            counted_names(&count, Family::V4, Some("rx_eth0/any")),
            ["counter", "objref"]
        );
        let tagged = Rule::new(Target::Return).with(Match::mark(0x400, 0x3f00));
        assert_eq!(
            counted_names(&tagged, Family::V6, Some("rx_eth0/0x400")),
            ["meta", "bitwise", "cmp", "counter", "objref", "immediate"]
        );
    }

    #[test]
    fn ct_states_map_to_nf_tables_bits() {
        assert_eq!(
            ct_state_bits(CtStates::ESTABLISHED.union(CtStates::RELATED)),
            6
        );
        assert_eq!(ct_state_bits(CtStates::NEW), 8);
        assert_eq!(ct_state_bits(CtStates::INVALID), 1);
    }
}
