//! Routes, in the main table and in the per-interface tables patchpanel's
//! policy routing uses (ids above 255, so always sent as `RTA_TABLE`).
//!
//! Adds use `NLM_F_CREATE | NLM_F_REPLACE`, so setting a route is idempotent
//! and converges on the requested gateway/device; deletes of a route that is
//! not there are `Ok(false)`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use neli::consts::nl::NlmF;
use neli::consts::rtnl::{RtAddrFamily, RtScope, RtTable, Rta, Rtm, RtmF, Rtn, Rtprot};
use neli::rtnl::{Rtmsg, RtmsgBuilder};
use neli::types::{Buffer, RtBuffer};

use crate::address::relabel;
use crate::error::{Result, RtnlError};
use crate::socket::{benign, Rtnl};
use crate::wire::{self, attr, attr_iter, RawMsg};
use crate::{validate_prefix, Family};

// linux/rtnetlink.h
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RTA_PRIORITY: u16 = 6;
const RTA_TABLE: u16 = 15;
/// The main routing table.
pub const RT_TABLE_MAIN: u32 = 254;

/// An interface named either way: callers configuring routes know names,
/// dumps report indexes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum LinkRef {
    /// By interface name (resolved when the request is sent).
    Name(String),
    /// By interface index.
    Index(u32),
}

impl From<&str> for LinkRef {
    fn from(name: &str) -> Self {
        LinkRef::Name(name.to_string())
    }
}

impl From<u32> for LinkRef {
    fn from(index: u32) -> Self {
        LinkRef::Index(index)
    }
}

/// `rtm_scope`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RouteScope {
    /// `RT_SCOPE_UNIVERSE`: via a gateway (the default).
    Universe,
    /// `RT_SCOPE_SITE`.
    Site,
    /// `RT_SCOPE_LINK`: directly on-link (what `ip route add ... dev X` picks).
    Link,
    /// `RT_SCOPE_HOST`: local addresses.
    Host,
    /// `RT_SCOPE_NOWHERE`.
    Nowhere,
    /// Any other value.
    Other(u8),
}

impl RouteScope {
    fn to_u8(self) -> u8 {
        match self {
            RouteScope::Universe => libc::RT_SCOPE_UNIVERSE,
            RouteScope::Site => libc::RT_SCOPE_SITE,
            RouteScope::Link => libc::RT_SCOPE_LINK,
            RouteScope::Host => libc::RT_SCOPE_HOST,
            RouteScope::Nowhere => libc::RT_SCOPE_NOWHERE,
            RouteScope::Other(v) => v,
        }
    }

    fn from_u8(v: u8) -> Self {
        match v {
            libc::RT_SCOPE_UNIVERSE => RouteScope::Universe,
            libc::RT_SCOPE_SITE => RouteScope::Site,
            libc::RT_SCOPE_LINK => RouteScope::Link,
            libc::RT_SCOPE_HOST => RouteScope::Host,
            libc::RT_SCOPE_NOWHERE => RouteScope::Nowhere,
            v => RouteScope::Other(v),
        }
    }
}

/// `rtm_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RouteType {
    /// A normal route (the default).
    Unicast,
    /// A local address.
    Local,
    /// A broadcast address.
    Broadcast,
    /// Silently drop.
    Blackhole,
    /// Drop with ICMP unreachable.
    Unreachable,
    /// Drop with ICMP prohibited.
    Prohibit,
    /// Continue the lookup in the next rule.
    Throw,
    /// Any other value.
    Other(u8),
}

impl RouteType {
    fn to_u8(self) -> u8 {
        match self {
            RouteType::Unicast => libc::RTN_UNICAST,
            RouteType::Local => libc::RTN_LOCAL,
            RouteType::Broadcast => libc::RTN_BROADCAST,
            RouteType::Blackhole => libc::RTN_BLACKHOLE,
            RouteType::Unreachable => libc::RTN_UNREACHABLE,
            RouteType::Prohibit => libc::RTN_PROHIBIT,
            RouteType::Throw => libc::RTN_THROW,
            RouteType::Other(v) => v,
        }
    }

    fn from_u8(v: u8) -> Self {
        match v {
            libc::RTN_UNICAST => RouteType::Unicast,
            libc::RTN_LOCAL => RouteType::Local,
            libc::RTN_BROADCAST => RouteType::Broadcast,
            libc::RTN_BLACKHOLE => RouteType::Blackhole,
            libc::RTN_UNREACHABLE => RouteType::Unreachable,
            libc::RTN_PROHIBIT => RouteType::Prohibit,
            libc::RTN_THROW => RouteType::Throw,
            v => RouteType::Other(v),
        }
    }
}

/// A route. The family is the family of `dst`.
///
/// Dumps report multipath routes (`RTA_MULTIPATH`) without their next hops
/// (no gateway, no oif); patchpanel installs only single-path routes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Route {
    /// Destination network address (host bits must be zero).
    pub dst: IpAddr,
    /// Destination prefix length (0 for a default route).
    pub prefix_len: u8,
    /// Next hop, of the same family as `dst`.
    pub gateway: Option<IpAddr>,
    /// Output interface.
    pub oif: Option<LinkRef>,
    /// Routing table id (254 is main).
    pub table: u32,
    /// `RTA_PRIORITY` (the metric).
    pub metric: Option<u32>,
    /// Scope; set [`RouteScope::Link`] for on-link routes without a gateway.
    pub scope: RouteScope,
    /// Route type.
    pub kind: RouteType,
    /// `rtm_protocol` (who installed it); adds default to `RTPROT_BOOT` as
    /// iproute2, and deletes match it.
    pub protocol: u8,
}

impl Route {
    /// A unicast route to `dst/prefix_len` in the main table, scope universe,
    /// no gateway, device or metric yet.
    pub fn new(dst: IpAddr, prefix_len: u8) -> Self {
        Route {
            dst,
            prefix_len,
            gateway: None,
            oif: None,
            table: RT_TABLE_MAIN,
            metric: None,
            scope: RouteScope::Universe,
            kind: RouteType::Unicast,
            protocol: libc::RTPROT_BOOT,
        }
    }

    /// The default route of a family (`0.0.0.0/0` or `::/0`).
    pub fn default_route(family: Family) -> Self {
        let dst = match family {
            Family::V4 => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            Family::V6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        };
        Route::new(dst, 0)
    }

    /// The route's address family.
    pub fn family(&self) -> Family {
        Family::of(&self.dst)
    }

    fn describe(&self) -> String {
        let mut s = format!("{}/{} table {}", self.dst, self.prefix_len, self.table);
        if let Some(gw) = self.gateway {
            s.push_str(&format!(" via {gw}"));
        }
        match &self.oif {
            Some(LinkRef::Name(n)) => s.push_str(&format!(" dev {n}")),
            Some(LinkRef::Index(i)) => s.push_str(&format!(" dev #{i}")),
            None => {}
        }
        if let Some(m) = self.metric {
            s.push_str(&format!(" metric {m}"));
        }
        s
    }

    fn validate(&self) -> Result<()> {
        validate_prefix("route", &self.dst, self.prefix_len)?;
        if let Some(gw) = self.gateway {
            if Family::of(&gw) != self.family() {
                return Err(RtnlError::invalid(
                    "route",
                    self.describe(),
                    "gateway family differs from destination family",
                ));
            }
        }
        Ok(())
    }
}

/// Header table byte: ids above 255 only fit in `RTA_TABLE`.
pub(crate) fn header_table(table: u32) -> u8 {
    u8::try_from(table).unwrap_or(libc::RT_TABLE_UNSPEC)
}

/// `RTM_NEWROUTE`/`RTM_DELROUTE` body. For deletes, the scope is a wildcard
/// and the protocol is `route.protocol`: the kernel then deletes only a
/// route of that protocol (of any protocol with `RTPROT_UNSPEC`).
pub(crate) fn route_request(
    route: &Route,
    oif: Option<u32>,
    delete: bool,
) -> std::result::Result<Rtmsg, String> {
    let mut attrs = RtBuffer::<Rta, Buffer>::new();
    attrs.push(attr(Rta::Table, route.table)?);
    if route.prefix_len > 0 || !route.dst.is_unspecified() {
        attrs.push(attr(Rta::Dst, wire::ip_bytes(&route.dst).as_slice())?);
    }
    if let Some(gw) = &route.gateway {
        attrs.push(attr(Rta::Gateway, wire::ip_bytes(gw).as_slice())?);
    }
    if let Some(index) = oif {
        attrs.push(attr(Rta::Oif, index)?);
    }
    if let Some(metric) = route.metric {
        attrs.push(attr(Rta::Priority, metric)?);
    }
    let (protocol, scope) = if delete {
        (route.protocol, libc::RT_SCOPE_NOWHERE)
    } else {
        (route.protocol, route.scope.to_u8())
    };
    RtmsgBuilder::default()
        .rtm_family(RtAddrFamily::from(route.family().af()))
        .rtm_dst_len(route.prefix_len)
        .rtm_src_len(0)
        .rtm_tos(0)
        .rtm_table(RtTable::from(header_table(route.table)))
        .rtm_protocol(Rtprot::from(protocol))
        .rtm_scope(RtScope::from(scope))
        .rtm_type(Rtn::from(route.kind.to_u8()))
        .rtm_flags(RtmF::empty())
        .rtattrs(attrs)
        .build()
        .map_err(|e| e.to_string())
}

/// Parses an `RTM_NEWROUTE`/`RTM_DELROUTE` body; `None` for other families
/// and for cached (cloned) routes.
pub(crate) fn parse_route(payload: &[u8]) -> std::result::Result<Option<Route>, String> {
    let msg: Rtmsg = wire::decode(payload)?;
    let af: u8 = (*msg.rtm_family()).into();
    let Some(family) = Family::from_af(af) else {
        return Ok(None);
    };
    if msg.rtm_flags().contains(RtmF::CLONED) {
        return Ok(None);
    }
    let mut route = Route::default_route(family);
    route.prefix_len = *msg.rtm_dst_len();
    route.table = u32::from(u8::from(*msg.rtm_table()));
    route.protocol = (*msg.rtm_protocol()).into();
    route.scope = RouteScope::from_u8((*msg.rtm_scope()).into());
    route.kind = RouteType::from_u8((*msg.rtm_type()).into());
    for (ty, value) in attr_iter(msg.rtattrs()) {
        match ty {
            RTA_DST => route.dst = wire::ip_of("RTA_DST", af, value)?,
            RTA_GATEWAY => route.gateway = Some(wire::ip_of("RTA_GATEWAY", af, value)?),
            RTA_OIF => route.oif = Some(LinkRef::Index(wire::u32_of("RTA_OIF", value)?)),
            RTA_PRIORITY => route.metric = Some(wire::u32_of("RTA_PRIORITY", value)?),
            RTA_TABLE => route.table = wire::u32_of("RTA_TABLE", value)?,
            _ => {}
        }
    }
    Ok(Some(route))
}

fn parse_route_msg(m: &RawMsg<'_>) -> std::result::Result<Option<Route>, String> {
    if m.ty == libc::RTM_NEWROUTE {
        parse_route(m.payload)
    } else {
        Ok(None)
    }
}

impl Rtnl {
    /// Adds or replaces the route (`NLM_F_CREATE | NLM_F_REPLACE`).
    pub fn add_route(&self, route: &Route) -> Result<()> {
        route.validate()?;
        let op = format!("add route {}", route.describe());
        let oif = match &route.oif {
            Some(LinkRef::Name(n)) => Some(self.ifindex(n).map_err(|e| relabel(e, &op))?),
            Some(LinkRef::Index(i)) => Some(*i),
            None => None,
        };
        let body = route_request(route, oif, false).map_err(|detail| RtnlError::Encode {
            op: op.clone(),
            detail,
        })?;
        self.ack(&op, Rtm::Newroute, NlmF::CREATE | NlmF::REPLACE, body)
    }

    /// Deletes the route if it has `route.protocol` (any route with
    /// `RTPROT_UNSPEC`): `Ok(false)` if there was no such route (or its
    /// output device no longer exists).
    pub fn delete_route(&self, route: &Route) -> Result<bool> {
        route.validate()?;
        let op = format!("delete route {}", route.describe());
        let oif = match &route.oif {
            Some(LinkRef::Name(n)) => match self.link(n)? {
                Some(link) => Some(link.index),
                None => return Ok(false),
            },
            Some(LinkRef::Index(i)) => Some(*i),
            None => None,
        };
        let body = route_request(route, oif, true).map_err(|detail| RtnlError::Encode {
            op: op.clone(),
            detail,
        })?;
        // IPv4 says ESRCH, IPv6 says ENOENT.
        benign(
            self.ack(&op, Rtm::Delroute, NlmF::empty(), body),
            &[libc::ESRCH, libc::ENOENT],
        )
    }

    /// Routes of `family`, in table `table` or in every table with `None`.
    /// Cached routes are left out.
    pub fn routes(&self, family: Family, table: Option<u32>) -> Result<Vec<Route>> {
        let op = format!("dump {family:?} routes");
        let all = self.dump(
            &op,
            Rtm::Getroute,
            || {
                RtmsgBuilder::default()
                    .rtm_family(RtAddrFamily::from(family.af()))
                    .rtm_dst_len(0)
                    .rtm_src_len(0)
                    .rtm_tos(0)
                    .rtm_table(RtTable::Unspec)
                    .rtm_protocol(Rtprot::Unspec)
                    .rtm_scope(RtScope::Universe)
                    .rtm_type(Rtn::Unspec)
                    .build()
                    .map_err(|e| e.to_string())
            },
            parse_route_msg,
        )?;
        Ok(all
            .into_iter()
            .filter(|r| r.family() == family && table.is_none() || table == Some(r.table))
            .collect())
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

    fn bytes<T: ToBytes>(t: &T) -> Vec<u8> {
        let mut c = Cursor::new(Vec::new());
        t.to_bytes(&mut c).unwrap();
        c.into_inner()
    }

    #[test]
    fn uapi_constants_match_neli() {
        assert_eq!(RTA_DST, u16::from(Rta::Dst));
        assert_eq!(RTA_OIF, u16::from(Rta::Oif));
        assert_eq!(RTA_GATEWAY, u16::from(Rta::Gateway));
        assert_eq!(RTA_PRIORITY, u16::from(Rta::Priority));
        assert_eq!(RTA_TABLE, u16::from(Rta::Table));
    }

    #[test]
    fn table_above_255_goes_only_in_rta_table() {
        let mut r = Route::default_route(Family::V4);
        r.gateway = Some("100.115.92.5".parse().unwrap());
        r.table = 1005;
        let b = bytes(&route_request(&r, Some(7), false).unwrap());
        // rtmsg: family, dst_len 0, src_len, tos, table UNSPEC, proto BOOT,
        // scope universe, type unicast, flags 0.
        let mut expected = vec![libc::AF_INET as u8, 0, 0, 0, 0, 3, 0, 1];
        expected.extend_from_slice(&0u32.to_ne_bytes());
        expected.extend(rta(15, &1005u32.to_ne_bytes()));
        expected.extend(rta(5, &[100, 115, 92, 5]));
        expected.extend(rta(4, &7u32.to_ne_bytes()));
        assert_eq!(b, expected);
    }

    #[test]
    fn delete_request_wildcards_the_scope_and_keeps_the_protocol() {
        let mut r = Route::new("10.1.0.0".parse().unwrap(), 16);
        r.metric = Some(10);
        r.scope = RouteScope::Link;
        r.protocol = 157;
        let b = bytes(&route_request(&r, None, true).unwrap());
        assert_eq!(&b[..8], &[libc::AF_INET as u8, 16, 0, 0, 254, 157, 255, 1]);
        r.protocol = libc::RTPROT_UNSPEC;
        let b = bytes(&route_request(&r, None, true).unwrap());
        assert_eq!(&b[..8], &[libc::AF_INET as u8, 16, 0, 0, 254, 0, 255, 1]);
        let mut attrs = rta(15, &254u32.to_ne_bytes());
        attrs.extend(rta(1, &[10, 1, 0, 0]));
        attrs.extend(rta(6, &10u32.to_ne_bytes()));
        assert_eq!(&b[12..], attrs.as_slice());
    }

    fn newroute(af: u8, dst_len: u8, table: u8, flags: u32, attrs: &[Vec<u8>]) -> Vec<u8> {
        let mut v = vec![af, dst_len, 0, 0, table, 4, 253, 1];
        v.extend_from_slice(&flags.to_ne_bytes());
        for a in attrs {
            v.extend_from_slice(a);
        }
        v
    }

    #[test]
    fn parse_route_prefers_rta_table_and_reads_every_field() {
        let gw: Ipv6Addr = "fe80::1".parse().unwrap();
        let dst: Ipv6Addr = "fd00:1::".parse().unwrap();
        let p = newroute(
            libc::AF_INET6 as u8,
            64,
            0,
            0,
            &[
                rta(15, &1005u32.to_ne_bytes()),
                rta(1, &dst.octets()),
                rta(5, &gw.octets()),
                rta(4, &3u32.to_ne_bytes()),
                rta(6, &1024u32.to_ne_bytes()),
            ],
        );
        let r = parse_route(&p).unwrap().unwrap();
        assert_eq!(
            r,
            Route {
                dst: IpAddr::V6(dst),
                prefix_len: 64,
                gateway: Some(IpAddr::V6(gw)),
                oif: Some(LinkRef::Index(3)),
                table: 1005,
                metric: Some(1024),
                scope: RouteScope::Link,
                kind: RouteType::Unicast,
                protocol: 4,
            }
        );
    }

    #[test]
    fn parse_route_without_dst_is_a_default_route() {
        let p = newroute(libc::AF_INET as u8, 0, 254, 0, &[]);
        let r = parse_route(&p).unwrap().unwrap();
        assert_eq!(r.dst, IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        assert_eq!(r.table, 254);
    }

    #[test]
    fn parse_route_skips_cloned_routes() {
        let p = newroute(libc::AF_INET6 as u8, 128, 254, libc::RTM_F_CLONED, &[]);
        assert_eq!(parse_route(&p).unwrap(), None);
    }

    #[test]
    fn parse_route_rejects_a_gateway_of_the_wrong_family() {
        let p = newroute(libc::AF_INET as u8, 0, 254, 0, &[rta(5, &[0; 16])]);
        assert!(parse_route(&p).is_err());
    }

    #[test]
    fn route_with_mixed_families_is_refused() {
        let mut r = Route::default_route(Family::V6);
        r.gateway = Some("10.0.0.1".parse().unwrap());
        assert!(r.validate().is_err());
    }
}
