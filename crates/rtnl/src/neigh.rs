//! Neighbour table entries: reading the kernel's IPv6/IPv4 neighbour cache,
//! following its changes, and kernel proxy entries (`ip -6 neigh add proxy`).
//!
//! Why it exists: the ND proxy relays unicast neighbour discovery packets
//! and must address them to the right link-layer destination without asking
//! the kernel per packet, so it keeps a copy of the neighbour table fed by a
//! dump and by `RTMGRP_NEIGH` notifications ([`NeighborMonitor`]). The
//! standalone `ndproxyd` also installs proxy entries so the kernel answers
//! neighbour solicitations for guest addresses on the uplink.
//!
//! Kept apart from [`crate::RtnlMonitor`] on purpose: neighbour churn on a
//! busy uplink is far higher than link or route churn, and an overrun of one
//! socket must not force a re-dump of the other's tables.

use std::fmt;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};

use neli::consts::nl::NlmF;
use neli::consts::rtnl::{Nda, Ntf, Nud, RtAddrFamily, Rtm, Rtn};
use neli::rtnl::{Ndmsg, NdmsgBuilder};
use neli::socket::NlSocket;
use neli::types::{Buffer, RtBuffer};

use crate::error::{Result, RtnlError};
use crate::socket::{benign, open_route_socket, Rtnl, RECV_BUF};
use crate::sys;
use crate::wire::{self, attr, attr_iter, RawMsg};
use crate::Family;

// linux/neighbour.h
const NDA_DST: u16 = 1;
const NDA_LLADDR: u16 = 2;

/// `RTMGRP_NEIGH`.
const RTMGRP_NEIGH: u32 = libc::RTMGRP_NEIGH as u32;

/// One entry of the kernel's neighbour table, or a proxy entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Neighbor {
    /// Interface the entry belongs to.
    pub ifindex: u32,
    /// The neighbour's network address.
    pub addr: IpAddr,
    /// Its hardware address, when the kernel knows it and it is a 6-byte
    /// Ethernet-style one.
    pub mac: Option<[u8; 6]>,
    /// `NUD_*` state bits.
    pub state: u16,
    /// A proxy entry (`NTF_PROXY`): the kernel answers solicitations for
    /// `addr` on `ifindex` itself.
    pub proxy: bool,
    /// The neighbour said it is a router (`NTF_ROUTER`).
    pub router: bool,
}

impl Neighbor {
    /// Whether the entry names a reachable (or recently reachable)
    /// neighbour worth sending to: a hardware address and a state of
    /// REACHABLE, STALE, DELAY, PROBE or PERMANENT. NOARP entries
    /// (multicast, loopback) and INCOMPLETE/FAILED ones are not.
    pub fn is_resolved(&self) -> bool {
        let usable =
            u16::from(Nud::REACHABLE | Nud::STALE | Nud::DELAY | Nud::PROBE | Nud::PERMANENT);
        !self.proxy
            && self.mac.is_some()
            && self.state & usable != 0
            && self.state & u16::from(Nud::NOARP) == 0
    }
}

/// Parses an `RTM_NEWNEIGH`/`RTM_DELNEIGH` body; `None` for families other
/// than IPv4/IPv6 (bridge FDB entries share the message type) and for
/// entries without an address.
pub(crate) fn parse_neighbor(payload: &[u8]) -> std::result::Result<Option<Neighbor>, String> {
    let msg: Ndmsg = wire::decode(payload)?;
    let af: u8 = (*msg.ndm_family()).into();
    if Family::from_af(af).is_none() {
        return Ok(None);
    }
    let ifindex = u32::try_from(*msg.ndm_index())
        .map_err(|_| format!("negative ifindex {}", msg.ndm_index()))?;
    let mut addr = None;
    let mut mac = None;
    for (ty, value) in attr_iter(msg.rtattrs()) {
        match ty {
            NDA_DST => addr = Some(wire::ip_of("NDA_DST", af, value)?),
            NDA_LLADDR => mac = <[u8; 6]>::try_from(value).ok(),
            _ => {}
        }
    }
    let Some(addr) = addr else {
        return Ok(None);
    };
    let flags = *msg.ndm_flags();
    Ok(Some(Neighbor {
        ifindex,
        addr,
        mac,
        state: (*msg.ndm_state()).into(),
        proxy: flags.contains(Ntf::PROXY),
        router: flags.contains(Ntf::ROUTER),
    }))
}

fn parse_neighbor_msg(m: &RawMsg<'_>) -> std::result::Result<Option<Neighbor>, String> {
    if m.ty == libc::RTM_NEWNEIGH {
        parse_neighbor(m.payload)
    } else {
        Ok(None)
    }
}

/// `RTM_GETNEIGH` dump request for the neighbour cache (`NTF_PROXY` in the
/// flags would ask for the proxy table instead).
fn dump_request(family: Family) -> std::result::Result<Ndmsg, String> {
    NdmsgBuilder::default()
        .ndm_family(RtAddrFamily::from(family.af()))
        .ndm_index(0)
        .ndm_state(Nud::empty())
        .ndm_flags(Ntf::empty())
        .ndm_type(Rtn::Unspec)
        .build()
        .map_err(|e| e.to_string())
}

/// `RTM_NEWNEIGH`/`RTM_DELNEIGH` body for a proxy entry.
pub(crate) fn proxy_request(addr: &IpAddr, ifindex: u32) -> std::result::Result<Ndmsg, String> {
    let index = i32::try_from(ifindex).map_err(|_| format!("ifindex {ifindex} out of range"))?;
    let mut attrs = RtBuffer::<Nda, Buffer>::new();
    attrs.push(attr(Nda::Dst, wire::ip_bytes(addr).as_slice())?);
    NdmsgBuilder::default()
        .ndm_family(RtAddrFamily::from(Family::of(addr).af()))
        .ndm_index(index)
        .ndm_state(Nud::PERMANENT)
        .ndm_flags(Ntf::PROXY)
        .ndm_type(Rtn::Unspec)
        .rtattrs(attrs)
        .build()
        .map_err(|e| e.to_string())
}

/// What [`Rtnl::probe_neighbor`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// The entry was valid (REACHABLE, STALE, DELAY or PROBE): it is now
    /// PROBE, and the kernel sends unicast probes until the neighbour
    /// answers (REACHABLE) or not (FAILED).
    Probed,
    /// There was no valid entry (none, INCOMPLETE, FAILED): the kernel was
    /// asked to resolve the address (`NTF_USE`), as if a packet were sent.
    Resolving,
    /// A static entry (PERMANENT, NOARP) or a proxy entry: left alone.
    Static,
}

/// `RTM_GETNEIGH` body for one entry (not a dump).
fn get_request(addr: &IpAddr, ifindex: u32) -> std::result::Result<Ndmsg, String> {
    let index = i32::try_from(ifindex).map_err(|_| format!("ifindex {ifindex} out of range"))?;
    let mut attrs = RtBuffer::<Nda, Buffer>::new();
    attrs.push(attr(Nda::Dst, wire::ip_bytes(addr).as_slice())?);
    NdmsgBuilder::default()
        .ndm_family(RtAddrFamily::from(Family::of(addr).af()))
        .ndm_index(index)
        .ndm_state(Nud::empty())
        .ndm_flags(Ntf::empty())
        .ndm_type(Rtn::Unspec)
        .rtattrs(attrs)
        .build()
        .map_err(|e| e.to_string())
}

/// `RTM_NEWNEIGH` body that sets the entry of `addr` on `ifindex` to
/// `NUD_PROBE` (`resolve` false), or asks the kernel to use it
/// (`NTF_USE`: resolve it if it is not valid).
pub(crate) fn probe_request(
    addr: &IpAddr,
    ifindex: u32,
    resolve: bool,
) -> std::result::Result<Ndmsg, String> {
    let index = i32::try_from(ifindex).map_err(|_| format!("ifindex {ifindex} out of range"))?;
    let mut attrs = RtBuffer::<Nda, Buffer>::new();
    attrs.push(attr(Nda::Dst, wire::ip_bytes(addr).as_slice())?);
    let (state, flags) = if resolve {
        (Nud::empty(), Ntf::USE)
    } else {
        (Nud::PROBE, Ntf::empty())
    };
    NdmsgBuilder::default()
        .ndm_family(RtAddrFamily::from(Family::of(addr).af()))
        .ndm_index(index)
        .ndm_state(state)
        .ndm_flags(flags)
        .ndm_type(Rtn::Unspec)
        .rtattrs(attrs)
        .build()
        .map_err(|e| e.to_string())
}

impl Rtnl {
    /// The neighbour cache entry of `addr` on `ifindex`, if any: one
    /// `RTM_GETNEIGH` (Linux 5.0+); a kernel that refuses it gets a dump
    /// of the family instead.
    pub fn neighbor(&self, addr: IpAddr, ifindex: u32) -> Result<Option<Neighbor>> {
        let op = format!("get neighbour {addr} on #{ifindex}");
        let body = get_request(&addr, ifindex).map_err(|detail| RtnlError::Encode {
            op: op.clone(),
            detail,
        })?;
        match self.get(&op, Rtm::Getneigh, body, parse_neighbor_msg) {
            Ok(found) => Ok(found
                .into_iter()
                .find(|n| n.ifindex == ifindex && n.addr == addr)),
            Err(e) if matches!(e.errno(), Some(libc::ENOENT) | Some(libc::ENODEV)) => Ok(None),
            Err(e) if matches!(e.errno(), Some(libc::EINVAL) | Some(libc::EOPNOTSUPP)) => Ok(self
                .neighbors(Family::of(&addr))?
                .into_iter()
                .find(|n| n.ifindex == ifindex && n.addr == addr)),
            Err(e) => Err(e),
        }
    }

    /// Makes the kernel check that `addr` on `ifindex` still answers: a
    /// valid entry is set to `NUD_PROBE` (replaced in place, its hardware
    /// address kept); an address without a valid entry is resolved
    /// (`NTF_USE`, creating the entry if needed). Static and proxy entries
    /// are not touched. Needs CAP_NET_ADMIN.
    pub fn probe_neighbor(&self, addr: IpAddr, ifindex: u32) -> Result<Probe> {
        let current = self.neighbor(addr, ifindex)?;
        let valid = u16::from(Nud::REACHABLE | Nud::STALE | Nud::DELAY | Nud::PROBE);
        let fixed = u16::from(Nud::PERMANENT | Nud::NOARP);
        let (resolve, outcome) = match &current {
            Some(n) if n.proxy || n.state & fixed != 0 => return Ok(Probe::Static),
            Some(n) if n.state & valid != 0 => (false, Probe::Probed),
            _ => (true, Probe::Resolving),
        };
        let op = format!("probe neighbour {addr} on #{ifindex}");
        let body = probe_request(&addr, ifindex, resolve).map_err(|detail| RtnlError::Encode {
            op: op.clone(),
            detail,
        })?;
        let flags = if resolve {
            NlmF::CREATE | NlmF::REPLACE
        } else {
            NlmF::REPLACE
        };
        self.ack(&op, Rtm::Newneigh, flags, body)?;
        Ok(outcome)
    }

    /// The neighbour cache entries of `family` on every interface (not the
    /// proxy entries).
    pub fn neighbors(&self, family: Family) -> Result<Vec<Neighbor>> {
        let op = format!("dump {family:?} neighbours");
        self.dump(
            &op,
            Rtm::Getneigh,
            || dump_request(family),
            parse_neighbor_msg,
        )
    }

    /// Adds a proxy entry: the kernel answers neighbour solicitations for
    /// `addr` received on `ifindex` (for IPv6 only while `proxy_ndp` and
    /// forwarding are on for that interface). Adding an existing entry
    /// succeeds.
    pub fn add_proxy_neighbor(&self, addr: IpAddr, ifindex: u32) -> Result<()> {
        let op = format!("add proxy neighbour {addr} on #{ifindex}");
        let body = proxy_request(&addr, ifindex).map_err(|detail| RtnlError::Encode {
            op: op.clone(),
            detail,
        })?;
        self.ack(&op, Rtm::Newneigh, NlmF::CREATE | NlmF::REPLACE, body)
    }

    /// Removes a proxy entry: `Ok(false)` if there was none (or the
    /// interface is gone).
    pub fn delete_proxy_neighbor(&self, addr: IpAddr, ifindex: u32) -> Result<bool> {
        let op = format!("delete proxy neighbour {addr} on #{ifindex}");
        let body = proxy_request(&addr, ifindex).map_err(|detail| RtnlError::Encode {
            op: op.clone(),
            detail,
        })?;
        benign(
            self.ack(&op, Rtm::Delneigh, NlmF::empty(), body),
            &[libc::ENOENT, libc::ENODEV],
        )
    }
}

/// One neighbour table change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NeighborEvent {
    /// An entry appeared or changed state.
    New(Neighbor),
    /// An entry was removed.
    Del(Neighbor),
    /// Notifications were lost (`ENOBUFS`, or one could not be parsed):
    /// re-dump the table.
    Overrun,
}

/// A non-blocking rtnetlink socket subscribed to `RTMGRP_NEIGH`. Joining
/// the group needs no privilege.
pub struct NeighborMonitor {
    sock: NlSocket,
    buf: Vec<u8>,
}

impl fmt::Debug for NeighborMonitor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NeighborMonitor")
            .field("fd", &self.sock.as_raw_fd())
            .finish()
    }
}

impl NeighborMonitor {
    /// Subscribes in the calling thread's network namespace.
    pub fn new() -> Result<Self> {
        Self::from_socket(open_route_socket(RTMGRP_NEIGH)?)
    }

    /// Subscribes in the network namespace `ns` (needs CAP_SYS_ADMIN).
    pub fn in_netns(ns: BorrowedFd<'_>) -> Result<Self> {
        let sock = sys::in_netns(ns, "open neighbour monitor in netns", || {
            open_route_socket(RTMGRP_NEIGH)
        })?;
        Self::from_socket(sock)
    }

    fn from_socket(sock: NlSocket) -> Result<Self> {
        sock.nonblock()
            .map_err(|e| RtnlError::sys("make neighbour monitor non-blocking", e))?;
        Ok(NeighborMonitor {
            sock,
            buf: vec![0u8; RECV_BUF],
        })
    }

    /// Asks for a larger socket receive buffer (fewer overruns under bursts).
    pub fn set_recv_buffer_size(&self, bytes: usize) -> Result<()> {
        self.sock.set_recv_buffer_size(bytes).map_err(|e| {
            RtnlError::sys(
                format!("set neighbour monitor receive buffer to {bytes}"),
                e,
            )
        })
    }

    /// Reads every pending notification (until the socket would block).
    pub fn read_events(&mut self) -> Result<Vec<NeighborEvent>> {
        crate::monitor::drain(
            &self.sock,
            &mut self.buf,
            "read neighbour monitor",
            NeighborEvent::Overrun,
            decode_datagram,
        )
    }
}

impl AsRawFd for NeighborMonitor {
    fn as_raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
}

/// Turns one received datagram into events; anything unparseable becomes
/// `Overrun` (the caller re-dumps).
fn decode_datagram(buf: &[u8], events: &mut Vec<NeighborEvent>) {
    let Ok(msgs) = wire::split_messages(buf) else {
        events.push(NeighborEvent::Overrun);
        return;
    };
    for m in msgs {
        let event = match m.ty {
            libc::RTM_NEWNEIGH => parse_neighbor(m.payload).map(|n| n.map(NeighborEvent::New)),
            libc::RTM_DELNEIGH => parse_neighbor(m.payload).map(|n| n.map(NeighborEvent::Del)),
            _ => Ok(None),
        };
        match event {
            Ok(Some(e)) => events.push(e),
            Ok(None) => {}
            Err(_) => events.push(NeighborEvent::Overrun),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use neli::ToBytes;
    use std::io::Cursor;
    use std::net::Ipv6Addr;

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

    /// ndmsg: family, pad, pad16, ifindex, state, flags, type.
    fn ndmsg(af: u8, index: i32, state: u16, flags: u8, attrs: &[Vec<u8>]) -> Vec<u8> {
        let mut v = vec![af, 0, 0, 0];
        v.extend_from_slice(&index.to_ne_bytes());
        v.extend_from_slice(&state.to_ne_bytes());
        v.push(flags);
        v.push(0);
        for a in attrs {
            v.extend_from_slice(a);
        }
        v
    }

    fn msg(ty: u16, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&((16 + payload.len()) as u32).to_ne_bytes());
        v.extend_from_slice(&ty.to_ne_bytes());
        v.extend_from_slice(&[0; 10]);
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn uapi_constants_match_neli() {
        assert_eq!(NDA_DST, u16::from(Nda::Dst));
        assert_eq!(NDA_LLADDR, u16::from(Nda::Lladdr));
    }

    #[test]
    fn parse_reads_address_mac_state_and_flags() {
        let addr: Ipv6Addr = "2001:db8:1::5".parse().unwrap();
        let p = ndmsg(
            libc::AF_INET6 as u8,
            4,
            libc::NUD_STALE,
            libc::NTF_ROUTER,
            &[rta(1, &addr.octets()), rta(2, &[2, 0, 0, 0, 0, 7])],
        );
        let n = parse_neighbor(&p).unwrap().unwrap();
        assert_eq!(
            n,
            Neighbor {
                ifindex: 4,
                addr: IpAddr::V6(addr),
                mac: Some([2, 0, 0, 0, 0, 7]),
                state: libc::NUD_STALE,
                proxy: false,
                router: true,
            }
        );
        assert!(n.is_resolved());
    }

    #[test]
    fn incomplete_and_noarp_entries_are_not_resolved() {
        let addr: Ipv6Addr = "fe80::1".parse().unwrap();
        for state in [libc::NUD_INCOMPLETE, libc::NUD_FAILED, libc::NUD_NOARP] {
            let p = ndmsg(
                libc::AF_INET6 as u8,
                2,
                state,
                0,
                &[rta(1, &addr.octets()), rta(2, &[2, 0, 0, 0, 0, 7])],
            );
            assert!(
                !parse_neighbor(&p).unwrap().unwrap().is_resolved(),
                "{state}"
            );
        }
    }

    #[test]
    fn proxy_entries_are_marked_and_never_resolved() {
        let addr: Ipv6Addr = "2001:db8::9".parse().unwrap();
        let p = ndmsg(
            libc::AF_INET6 as u8,
            2,
            libc::NUD_PERMANENT,
            libc::NTF_PROXY,
            &[rta(1, &addr.octets())],
        );
        let n = parse_neighbor(&p).unwrap().unwrap();
        assert!(n.proxy);
        assert!(!n.is_resolved());
    }

    #[test]
    fn bridge_fdb_entries_are_skipped() {
        let p = ndmsg(libc::AF_BRIDGE as u8, 2, libc::NUD_PERMANENT, 0, &[]);
        assert_eq!(parse_neighbor(&p).unwrap(), None);
    }

    #[test]
    fn an_address_of_the_wrong_length_is_malformed() {
        let p = ndmsg(libc::AF_INET6 as u8, 2, 0, 0, &[rta(1, &[1, 2, 3, 4])]);
        assert!(parse_neighbor(&p).is_err());
    }

    #[test]
    fn proxy_request_is_a_permanent_proxy_entry_with_its_address() {
        let addr: Ipv6Addr = "2001:db8:1::5".parse().unwrap();
        let body = proxy_request(&IpAddr::V6(addr), 7).unwrap();
        let mut c = Cursor::new(Vec::new());
        body.to_bytes(&mut c).unwrap();
        let expected = ndmsg(
            libc::AF_INET6 as u8,
            7,
            libc::NUD_PERMANENT,
            libc::NTF_PROXY,
            &[rta(1, &addr.octets())],
        );
        assert_eq!(c.into_inner(), expected);
    }

    #[test]
    fn probe_requests_set_probe_or_ask_to_use_the_entry() {
        let addr: Ipv6Addr = "fe80::1".parse().unwrap();
        let mut c = Cursor::new(Vec::new());
        probe_request(&IpAddr::V6(addr), 3, false)
            .unwrap()
            .to_bytes(&mut c)
            .unwrap();
        let expected = ndmsg(
            libc::AF_INET6 as u8,
            3,
            libc::NUD_PROBE,
            0,
            &[rta(1, &addr.octets())],
        );
        assert_eq!(c.into_inner(), expected);
        let v4 = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));
        let mut c = Cursor::new(Vec::new());
        probe_request(&v4, 4, true)
            .unwrap()
            .to_bytes(&mut c)
            .unwrap();
        let expected = ndmsg(
            libc::AF_INET as u8,
            4,
            0,
            libc::NTF_USE,
            &[rta(1, &[192, 0, 2, 1])],
        );
        assert_eq!(c.into_inner(), expected);
    }

    #[test]
    fn datagram_events_follow_message_types() {
        let addr: Ipv6Addr = "fe80::2".parse().unwrap();
        let body = ndmsg(
            libc::AF_INET6 as u8,
            3,
            libc::NUD_REACHABLE,
            0,
            &[rta(1, &addr.octets()), rta(2, &[2, 0, 0, 0, 0, 8])],
        );
        let mut buf = msg(libc::RTM_NEWNEIGH, &body);
        buf.extend(msg(libc::RTM_DELNEIGH, &body));
        buf.extend(msg(libc::RTM_NEWLINK, &[0; 16]));
        let mut events = Vec::new();
        decode_datagram(&buf, &mut events);
        assert_eq!(events.len(), 2);
        assert!(matches!(&events[0], NeighborEvent::New(n) if n.ifindex == 3));
        assert!(matches!(&events[1], NeighborEvent::Del(n) if n.addr == IpAddr::V6(addr)));
    }

    #[test]
    fn unparseable_notification_is_an_overrun() {
        let mut events = Vec::new();
        decode_datagram(&msg(libc::RTM_NEWNEIGH, &[1, 2]), &mut events);
        assert_eq!(events, vec![NeighborEvent::Overrun]);
    }
}
