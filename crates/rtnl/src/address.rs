//! Interface addresses: the IPv4 gateway addresses patchpanel puts on its
//! bridges and veths, and the IPv6 ones of ConnectNamespace.
//!
//! Adds use `NLM_F_EXCL` so the kernel says whether the address was already
//! there (`Ok(false)`), which keeps repeated setup idempotent without
//! silently changing an address someone else configured.

use std::net::{IpAddr, Ipv4Addr};

use neli::consts::nl::NlmF;
use neli::consts::rtnl::{Ifa, IfaF, RtAddrFamily, RtScope, Rtm};
use neli::rtnl::{Ifaddrmsg, IfaddrmsgBuilder};
use neli::types::{Buffer, RtBuffer};

use crate::error::{Result, RtnlError};
use crate::socket::{benign, Rtnl};
use crate::wire::{self, attr, attr_iter, RawMsg};
use crate::{validate_prefix, Family};

// linux/if_addr.h
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;

/// An address on an interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AddressInfo {
    /// Index of the interface carrying the address.
    pub ifindex: u32,
    /// The (local) address.
    pub addr: IpAddr,
    /// Prefix length of the on-link subnet.
    pub prefix_len: u8,
}

/// Parses an `RTM_NEWADDR`/`RTM_DELADDR` body; `None` for families other
/// than IPv4/IPv6.
pub(crate) fn parse_address(payload: &[u8]) -> std::result::Result<Option<AddressInfo>, String> {
    let msg: Ifaddrmsg = wire::decode(payload)?;
    let af: u8 = (*msg.ifa_family()).into();
    if Family::from_af(af).is_none() {
        return Ok(None);
    }
    let (mut local, mut address) = (None, None);
    for (ty, value) in attr_iter(msg.rtattrs()) {
        match ty {
            IFA_LOCAL => local = Some(wire::ip_of("IFA_LOCAL", af, value)?),
            IFA_ADDRESS => address = Some(wire::ip_of("IFA_ADDRESS", af, value)?),
            _ => {}
        }
    }
    // On point-to-point links IFA_ADDRESS is the peer; IFA_LOCAL is ours.
    // IPv6 usually sends only IFA_ADDRESS.
    let addr = local.or(address).ok_or_else(|| {
        format!(
            "address on ifindex {} has neither IFA_LOCAL nor IFA_ADDRESS",
            msg.ifa_index()
        )
    })?;
    Ok(Some(AddressInfo {
        ifindex: *msg.ifa_index(),
        addr,
        prefix_len: *msg.ifa_prefixlen(),
    }))
}

fn parse_address_msg(m: &RawMsg<'_>) -> std::result::Result<Option<AddressInfo>, String> {
    if m.ty == libc::RTM_NEWADDR {
        parse_address(m.payload)
    } else {
        Ok(None)
    }
}

/// `RTM_NEWADDR`/`RTM_DELADDR` body. IFA_LOCAL and IFA_ADDRESS are both the
/// address, as iproute2 sends them for a non-point-to-point address.
pub(crate) fn address_request(
    ifindex: u32,
    addr: &IpAddr,
    prefix_len: u8,
    broadcast: Option<Ipv4Addr>,
) -> std::result::Result<Ifaddrmsg, String> {
    let mut attrs = RtBuffer::<Ifa, Buffer>::new();
    attrs.push(attr(Ifa::Local, wire::ip_bytes(addr).as_slice())?);
    attrs.push(attr(Ifa::Address, wire::ip_bytes(addr).as_slice())?);
    if let Some(b) = broadcast {
        attrs.push(attr(Ifa::Broadcast, &b.octets()[..])?);
    }
    IfaddrmsgBuilder::default()
        .ifa_family(RtAddrFamily::from(Family::of(addr).af()))
        .ifa_prefixlen(prefix_len)
        .ifa_flags(IfaF::empty())
        .ifa_scope(RtScope::Universe)
        .ifa_index(ifindex)
        .rtattrs(attrs)
        .build()
        .map_err(|e| e.to_string())
}

impl Rtnl {
    /// Adds `addr/prefix_len` to link `name` (with an IPv4 `broadcast`
    /// address if given): `Ok(true)` if added, `Ok(false)` if it was already
    /// there.
    pub fn add_address(
        &self,
        name: &str,
        addr: IpAddr,
        prefix_len: u8,
        broadcast: Option<Ipv4Addr>,
    ) -> Result<bool> {
        validate_prefix("address", &addr, prefix_len)?;
        let op = format!("add address {addr}/{prefix_len} on {name}");
        if broadcast.is_some() && addr.is_ipv6() {
            return Err(RtnlError::invalid(
                "address",
                format!("{addr}/{prefix_len}"),
                "IPv6 addresses have no broadcast address",
            ));
        }
        let ifindex = self.ifindex(name).map_err(|e| relabel(e, &op))?;
        let body = address_request(ifindex, &addr, prefix_len, broadcast).map_err(|detail| {
            RtnlError::Encode {
                op: op.clone(),
                detail,
            }
        })?;
        benign(
            self.ack(&op, Rtm::Newaddr, NlmF::CREATE | NlmF::EXCL, body),
            &[libc::EEXIST],
        )
    }

    /// Removes `addr/prefix_len` from link `name`: `Ok(false)` if the
    /// address (or the link) was not there.
    pub fn delete_address(&self, name: &str, addr: IpAddr, prefix_len: u8) -> Result<bool> {
        validate_prefix("address", &addr, prefix_len)?;
        let op = format!("delete address {addr}/{prefix_len} from {name}");
        let Some(link) = self.link(name)? else {
            return Ok(false);
        };
        let body = address_request(link.index, &addr, prefix_len, None).map_err(|detail| {
            RtnlError::Encode {
                op: op.clone(),
                detail,
            }
        })?;
        benign(
            self.ack(&op, Rtm::Deladdr, NlmF::empty(), body),
            &[libc::EADDRNOTAVAIL],
        )
    }

    /// Addresses of link `name`, or of every link with `None`.
    pub fn addresses(&self, name: Option<&str>) -> Result<Vec<AddressInfo>> {
        let ifindex = match name {
            Some(n) => Some(self.ifindex(n)?),
            None => None,
        };
        let all = self.dump(
            "dump addresses",
            Rtm::Getaddr,
            || {
                IfaddrmsgBuilder::default()
                    .ifa_family(RtAddrFamily::Unspecified)
                    .ifa_prefixlen(0)
                    .ifa_scope(RtScope::Universe)
                    .ifa_index(0)
                    .build()
                    .map_err(|e| e.to_string())
            },
            parse_address_msg,
        )?;
        Ok(all
            .into_iter()
            .filter(|a| match ifindex {
                Some(i) => a.ifindex == i,
                None => true,
            })
            .collect())
    }
}

/// Re-labels a lookup failure with the operation that needed the link.
pub(crate) fn relabel(e: RtnlError, op: &str) -> RtnlError {
    match e {
        RtnlError::NoSuchLink { name, .. } => RtnlError::NoSuchLink {
            op: op.to_string(),
            name,
        },
        e => e,
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
        assert_eq!(IFA_ADDRESS, u16::from(Ifa::Address));
        assert_eq!(IFA_LOCAL, u16::from(Ifa::Local));
    }

    #[test]
    fn ipv4_request_has_local_address_and_broadcast() {
        let msg = address_request(
            4,
            &"100.115.92.1".parse().unwrap(),
            30,
            Some("100.115.92.3".parse().unwrap()),
        )
        .unwrap();
        let mut c = Cursor::new(Vec::new());
        msg.to_bytes(&mut c).unwrap();
        let mut expected = vec![libc::AF_INET as u8, 30, 0, 0];
        expected.extend_from_slice(&4u32.to_ne_bytes());
        expected.extend(rta(2, &[100, 115, 92, 1]));
        expected.extend(rta(1, &[100, 115, 92, 1]));
        expected.extend(rta(4, &[100, 115, 92, 3]));
        assert_eq!(c.into_inner(), expected);
    }

    fn newaddr(af: u8, plen: u8, index: u32, attrs: &[Vec<u8>]) -> Vec<u8> {
        let mut v = vec![af, plen, 0, 0];
        v.extend_from_slice(&index.to_ne_bytes());
        for a in attrs {
            v.extend_from_slice(a);
        }
        v
    }

    #[test]
    fn parse_prefers_local_over_peer_address() {
        let p = newaddr(
            libc::AF_INET as u8,
            32,
            3,
            &[rta(1, &[10, 0, 0, 2]), rta(2, &[10, 0, 0, 1])],
        );
        let a = parse_address(&p).unwrap().unwrap();
        assert_eq!(a.addr, "10.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!((a.ifindex, a.prefix_len), (3, 32));
    }

    #[test]
    fn parse_ipv6_uses_ifa_address() {
        let v6: std::net::Ipv6Addr = "fd00::1".parse().unwrap();
        let p = newaddr(libc::AF_INET6 as u8, 64, 2, &[rta(1, &v6.octets())]);
        let a = parse_address(&p).unwrap().unwrap();
        assert_eq!(a.addr, IpAddr::V6(v6));
    }

    #[test]
    fn parse_rejects_an_address_of_the_wrong_length() {
        let p = newaddr(libc::AF_INET6 as u8, 64, 2, &[rta(1, &[1, 2, 3, 4])]);
        assert!(parse_address(&p).is_err());
    }

    #[test]
    fn parse_skips_other_families() {
        let p = newaddr(libc::AF_PACKET as u8, 0, 2, &[]);
        assert_eq!(parse_address(&p).unwrap(), None);
    }
}
