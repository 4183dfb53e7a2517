//! Policy routing rules: patchpanel steers traffic into per-interface tables
//! by fwmark (with a mask, since the mark's bits are shared with other
//! features), by input interface, and uses `suppress_prefixlength` so that
//! a table's default route does not override more specific main routes.
//!
//! Only `FR_ACT_TO_TBL` ("lookup table N") rules are created; dumps report
//! other rules too, with the table the kernel gives (0 for non-lookup actions).

use std::net::IpAddr;

use neli::consts::nl::NlmF;
use neli::consts::rtnl::{FrAct, Frattr, Frf, RtAddrFamily, RtTable, Rtm};
use neli::rtnl::{Fibmsg, FibmsgBuilder};
use neli::types::{Buffer, RtBuffer};

use crate::error::{Result, RtnlError};
use crate::route::header_table;
use crate::socket::{benign, Rtnl};
use crate::wire::{self, attr, attr_iter, RawMsg};
use crate::{validate_ifname, validate_prefix, Family};

// linux/fib_rules.h
const FRA_DST: u16 = 1;
const FRA_SRC: u16 = 2;
const FRA_IIFNAME: u16 = 3;
const FRA_PRIORITY: u16 = 6;
const FRA_FWMARK: u16 = 10;
const FRA_SUPPRESS_PREFIXLEN: u16 = 14;
const FRA_TABLE: u16 = 15;
const FRA_FWMASK: u16 = 16;
const FRA_OIFNAME: u16 = 17;
const FRA_PROTOCOL: u16 = 21;

/// A policy routing rule (`ip rule`), action "lookup `table`".
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Rule {
    /// Address family the rule applies to.
    pub family: Family,
    /// Preference (lower is evaluated first).
    pub priority: u32,
    /// `fwmark value/mask`.
    pub fwmark: Option<(u32, u32)>,
    /// Input interface (`iif`).
    pub iif: Option<String>,
    /// Output interface (`oif`).
    pub oif: Option<String>,
    /// Source prefix (`from`).
    pub src: Option<(IpAddr, u8)>,
    /// Destination prefix (`to`).
    pub dst: Option<(IpAddr, u8)>,
    /// Table to look up.
    pub table: u32,
    /// `suppress_prefixlength`: ignore routes of this table with a prefix
    /// this short or shorter.
    pub suppress_prefixlen: Option<u32>,
    /// `FRA_PROTOCOL`: who installed the rule (`ip rule ... proto N`). 0
    /// leaves it unset. The kernel matches it on delete when non-zero.
    pub protocol: u8,
}

impl Rule {
    /// "from all lookup `table`" at `priority`; fill in selectors after.
    pub fn new(family: Family, priority: u32, table: u32) -> Self {
        Rule {
            family,
            priority,
            fwmark: None,
            iif: None,
            oif: None,
            src: None,
            dst: None,
            table,
            suppress_prefixlen: None,
            protocol: 0,
        }
    }

    fn describe(&self) -> String {
        let mut s = format!("{:?} pref {}", self.family, self.priority);
        if let Some((a, l)) = self.src {
            s.push_str(&format!(" from {a}/{l}"));
        }
        if let Some((a, l)) = self.dst {
            s.push_str(&format!(" to {a}/{l}"));
        }
        if let Some((m, k)) = self.fwmark {
            s.push_str(&format!(" fwmark {m:#x}/{k:#x}"));
        }
        if let Some(i) = &self.iif {
            s.push_str(&format!(" iif {i}"));
        }
        if let Some(o) = &self.oif {
            s.push_str(&format!(" oif {o}"));
        }
        s.push_str(&format!(" lookup {}", self.table));
        if let Some(p) = self.suppress_prefixlen {
            s.push_str(&format!(" suppress_prefixlength {p}"));
        }
        s
    }

    fn validate(&self) -> Result<()> {
        for name in [&self.iif, &self.oif].into_iter().flatten() {
            validate_ifname(name)?;
        }
        for (addr, len) in [self.src, self.dst].into_iter().flatten() {
            validate_prefix("rule", &addr, len)?;
            if Family::of(&addr) != self.family {
                return Err(RtnlError::invalid(
                    "rule",
                    self.describe(),
                    "address family differs from the rule's family",
                ));
            }
        }
        Ok(())
    }
}

/// `RTM_NEWRULE`/`RTM_DELRULE` body.
pub(crate) fn rule_request(rule: &Rule) -> std::result::Result<Fibmsg, String> {
    let mut attrs = RtBuffer::<Frattr, Buffer>::new();
    attrs.push(attr(Frattr::Priority, rule.priority)?);
    attrs.push(attr(Frattr::Table, rule.table)?);
    if let Some((mark, mask)) = rule.fwmark {
        attrs.push(attr(Frattr::Fwmark, mark)?);
        attrs.push(attr(Frattr::Fwmask, mask)?);
    }
    if let Some(iif) = &rule.iif {
        attrs.push(attr(Frattr::Iifname, iif.as_str())?);
    }
    if let Some(oif) = &rule.oif {
        attrs.push(attr(Frattr::Oifname, oif.as_str())?);
    }
    if let Some((a, _)) = &rule.src {
        attrs.push(attr(Frattr::Src, wire::ip_bytes(a).as_slice())?);
    }
    if let Some((a, _)) = &rule.dst {
        attrs.push(attr(Frattr::Dst, wire::ip_bytes(a).as_slice())?);
    }
    if let Some(p) = rule.suppress_prefixlen {
        attrs.push(attr(Frattr::SuppressPrefixlen, p)?);
    }
    if rule.protocol != 0 {
        attrs.push(attr(Frattr::Protocol, rule.protocol)?);
    }
    FibmsgBuilder::default()
        .fib_family(RtAddrFamily::from(rule.family.af()))
        .fib_dst_len(rule.dst.map_or(0, |(_, l)| l))
        .fib_src_len(rule.src.map_or(0, |(_, l)| l))
        .fib_tos(0)
        .fib_table(RtTable::from(header_table(rule.table)))
        .fib_action(FrAct::FrActToTbl)
        .fib_flags(Frf::empty())
        .rtattrs(attrs)
        .build()
        .map_err(|e| e.to_string())
}

/// Parses an `RTM_NEWRULE` body; `None` for families other than IPv4/IPv6.
pub(crate) fn parse_rule(payload: &[u8]) -> std::result::Result<Option<Rule>, String> {
    let msg: Fibmsg = wire::decode(payload)?;
    let af: u8 = (*msg.fib_family()).into();
    let Some(family) = Family::from_af(af) else {
        return Ok(None);
    };
    let mut rule = Rule::new(family, 0, u32::from(u8::from(*msg.fib_table())));
    let (mut mark, mut mask) = (None, None);
    for (ty, value) in attr_iter(msg.rtattrs()) {
        match ty {
            FRA_PRIORITY => rule.priority = wire::u32_of("FRA_PRIORITY", value)?,
            FRA_TABLE => rule.table = wire::u32_of("FRA_TABLE", value)?,
            FRA_FWMARK => mark = Some(wire::u32_of("FRA_FWMARK", value)?),
            FRA_FWMASK => mask = Some(wire::u32_of("FRA_FWMASK", value)?),
            FRA_IIFNAME => rule.iif = Some(wire::str_of(value)),
            FRA_OIFNAME => rule.oif = Some(wire::str_of(value)),
            FRA_SRC => rule.src = Some((wire::ip_of("FRA_SRC", af, value)?, *msg.fib_src_len())),
            FRA_DST => rule.dst = Some((wire::ip_of("FRA_DST", af, value)?, *msg.fib_dst_len())),
            FRA_PROTOCOL => rule.protocol = value.first().copied().unwrap_or(0),
            FRA_SUPPRESS_PREFIXLEN => {
                // The kernel stores "unset" as -1 (and older kernels dump it).
                let v = wire::u32_of("FRA_SUPPRESS_PREFIXLEN", value)?;
                rule.suppress_prefixlen = (v != u32::MAX).then_some(v);
            }
            _ => {}
        }
    }
    if mark.is_some() || mask.is_some() {
        // A mark without a mask means "all bits" to the kernel.
        rule.fwmark = Some((mark.unwrap_or(0), mask.unwrap_or(u32::MAX)));
    }
    Ok(Some(rule))
}

fn parse_rule_msg(m: &RawMsg<'_>) -> std::result::Result<Option<Rule>, String> {
    if m.ty == libc::RTM_NEWRULE {
        parse_rule(m.payload)
    } else {
        Ok(None)
    }
}

impl Rtnl {
    /// Adds the rule: `Ok(false)` if an identical rule already exists.
    pub fn add_rule(&self, rule: &Rule) -> Result<bool> {
        rule.validate()?;
        let op = format!("add rule {}", rule.describe());
        let body = rule_request(rule).map_err(|detail| RtnlError::Encode {
            op: op.clone(),
            detail,
        })?;
        benign(
            self.ack(&op, Rtm::Newrule, NlmF::CREATE | NlmF::EXCL, body),
            &[libc::EEXIST],
        )
    }

    /// Deletes the rule: `Ok(false)` if there was no such rule.
    pub fn delete_rule(&self, rule: &Rule) -> Result<bool> {
        rule.validate()?;
        let op = format!("delete rule {}", rule.describe());
        let body = rule_request(rule).map_err(|detail| RtnlError::Encode {
            op: op.clone(),
            detail,
        })?;
        benign(
            self.ack(&op, Rtm::Delrule, NlmF::empty(), body),
            &[libc::ENOENT],
        )
    }

    /// Every rule of `family`, in kernel order.
    pub fn rules(&self, family: Family) -> Result<Vec<Rule>> {
        let op = format!("dump {family:?} rules");
        let all = self.dump(
            &op,
            Rtm::Getrule,
            || {
                FibmsgBuilder::default()
                    .fib_family(RtAddrFamily::from(family.af()))
                    .fib_dst_len(0)
                    .fib_src_len(0)
                    .fib_tos(0)
                    .fib_table(RtTable::Unspec)
                    .fib_action(FrAct::Unspec)
                    .build()
                    .map_err(|e| e.to_string())
            },
            parse_rule_msg,
        )?;
        Ok(all.into_iter().filter(|r| r.family == family).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use neli::ToBytes;
    use std::io::Cursor;

    fn rta(ty: u16, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&((4 + payload.len()) as u16).to_ne_bytes());
        v.extend_from_slice(&ty.to_ne_bytes());
        v.extend_from_slice(payload);
        while v.len() % 4 != 0 {
            v.push(0);
        }
        v
    }

    #[test]
    fn uapi_constants_match_neli() {
        assert_eq!(FRA_DST, u16::from(Frattr::Dst));
        assert_eq!(FRA_SRC, u16::from(Frattr::Src));
        assert_eq!(FRA_IIFNAME, u16::from(Frattr::Iifname));
        assert_eq!(FRA_PRIORITY, u16::from(Frattr::Priority));
        assert_eq!(FRA_FWMARK, u16::from(Frattr::Fwmark));
        assert_eq!(FRA_SUPPRESS_PREFIXLEN, u16::from(Frattr::SuppressPrefixlen));
        assert_eq!(FRA_TABLE, u16::from(Frattr::Table));
        assert_eq!(FRA_FWMASK, u16::from(Frattr::Fwmask));
        assert_eq!(FRA_OIFNAME, u16::from(Frattr::Oifname));
    }

    #[test]
    fn fwmark_rule_request_matches_iproute2_layout() {
        let mut rule = Rule::new(Family::V4, 1010, 1005);
        rule.fwmark = Some((0x3ea0000, 0xffff0000));
        rule.iif = Some("eth0".into());
        let mut c = Cursor::new(Vec::new());
        rule_request(&rule).unwrap().to_bytes(&mut c).unwrap();
        // fib_rule_hdr: family, dst_len, src_len, tos, table(0: >255),
        // res1, res2, action TO_TBL(1), flags u32.
        let mut expected = vec![libc::AF_INET as u8, 0, 0, 0, 0, 0, 0, 1];
        expected.extend_from_slice(&0u32.to_ne_bytes());
        expected.extend(rta(6, &1010u32.to_ne_bytes()));
        expected.extend(rta(15, &1005u32.to_ne_bytes()));
        expected.extend(rta(10, &0x3ea0000u32.to_ne_bytes()));
        expected.extend(rta(16, &0xffff0000u32.to_ne_bytes()));
        expected.extend(rta(3, b"eth0\0"));
        assert_eq!(c.into_inner(), expected);
    }

    fn newrule(af: u8, dst_len: u8, table: u8, attrs: &[Vec<u8>]) -> Vec<u8> {
        let mut v = vec![af, dst_len, 0, 0, table, 0, 0, 1];
        v.extend_from_slice(&0u32.to_ne_bytes());
        for a in attrs {
            v.extend_from_slice(a);
        }
        v
    }

    #[test]
    fn parse_rule_reads_selectors_and_suppress_prefixlen() {
        let dst: std::net::Ipv6Addr = "fd00::".parse().unwrap();
        let p = newrule(
            libc::AF_INET6 as u8,
            8,
            254,
            &[
                rta(6, &32765u32.to_ne_bytes()),
                rta(15, &254u32.to_ne_bytes()),
                rta(1, &dst.octets()),
                rta(17, b"arc0\0"),
                rta(14, &0u32.to_ne_bytes()),
            ],
        );
        let r = parse_rule(&p).unwrap().unwrap();
        let mut expected = Rule::new(Family::V6, 32765, 254);
        expected.dst = Some((IpAddr::V6(dst), 8));
        expected.oif = Some("arc0".into());
        expected.suppress_prefixlen = Some(0);
        assert_eq!(r, expected);
    }

    #[test]
    fn parse_rule_treats_minus_one_suppress_prefixlen_as_unset() {
        let p = newrule(
            libc::AF_INET as u8,
            0,
            254,
            &[rta(14, &u32::MAX.to_ne_bytes())],
        );
        assert_eq!(parse_rule(&p).unwrap().unwrap().suppress_prefixlen, None);
    }

    #[test]
    fn parse_rule_with_mask_only_has_mark_zero() {
        let p = newrule(
            libc::AF_INET as u8,
            0,
            254,
            &[rta(16, &0xffu32.to_ne_bytes())],
        );
        assert_eq!(parse_rule(&p).unwrap().unwrap().fwmark, Some((0, 0xff)));
    }

    #[test]
    fn parse_rule_without_priority_is_priority_zero() {
        let p = newrule(libc::AF_INET as u8, 0, 255, &[]);
        let r = parse_rule(&p).unwrap().unwrap();
        assert_eq!((r.priority, r.table), (0, 255));
    }

    #[test]
    fn rule_with_an_address_of_the_other_family_is_refused() {
        let mut rule = Rule::new(Family::V4, 1, 1005);
        rule.src = Some(("fd00::".parse().unwrap(), 8));
        assert!(rule.validate().is_err());
    }
}
