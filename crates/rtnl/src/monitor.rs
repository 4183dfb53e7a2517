//! Following link, address and route changes as they happen.
//!
//! The manager keeps a picture of the host's interfaces (uplinks appearing,
//! guests' veths going away) without polling. The socket is non-blocking so
//! it can sit in the manager's mio loop; [`RtnlMonitor::read_events`] drains
//! it. When the kernel drops notifications because the socket buffer was
//! full (`ENOBUFS`), that is reported as [`RtnlEvent::Overrun`]: the picture
//! is now wrong in unknown ways and the caller must re-dump. Joining these
//! multicast groups needs no privilege.

use std::fmt;
use std::io;
use std::ops::BitOr;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};

use neli::consts::socket::Msg;
use neli::socket::NlSocket;

use crate::address::{parse_address, AddressInfo};
use crate::error::{Result, RtnlError};
use crate::link::{parse_link, Link};
use crate::route::{parse_route, Route};
use crate::socket::{open_route_socket, RECV_BUF};
use crate::sys;
use crate::wire;

/// A set of `RTMGRP_*` multicast groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MonitorGroups(u32);

impl MonitorGroups {
    /// Link changes (`RTMGRP_LINK`).
    pub const LINK: Self = MonitorGroups(libc::RTMGRP_LINK as u32);
    /// IPv4 address changes (`RTMGRP_IPV4_IFADDR`).
    pub const IPV4_IFADDR: Self = MonitorGroups(libc::RTMGRP_IPV4_IFADDR as u32);
    /// IPv6 address changes (`RTMGRP_IPV6_IFADDR`).
    pub const IPV6_IFADDR: Self = MonitorGroups(libc::RTMGRP_IPV6_IFADDR as u32);
    /// IPv4 route changes (`RTMGRP_IPV4_ROUTE`).
    pub const IPV4_ROUTE: Self = MonitorGroups(libc::RTMGRP_IPV4_ROUTE as u32);
    /// IPv6 route changes (`RTMGRP_IPV6_ROUTE`).
    pub const IPV6_ROUTE: Self = MonitorGroups(libc::RTMGRP_IPV6_ROUTE as u32);
    /// Everything above.
    pub const ALL: Self = MonitorGroups(
        Self::LINK.0
            | Self::IPV4_IFADDR.0
            | Self::IPV6_IFADDR.0
            | Self::IPV4_ROUTE.0
            | Self::IPV6_ROUTE.0,
    );

    /// The `RTMGRP_*` bitmask.
    pub fn bits(self) -> u32 {
        self.0
    }

    /// Whether every group of `other` is in `self`.
    pub fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }
}

impl BitOr for MonitorGroups {
    type Output = Self;
    fn bitor(self, rhs: Self) -> Self {
        MonitorGroups(self.0 | rhs.0)
    }
}

/// One change notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RtnlEvent {
    /// A link appeared or changed.
    NewLink(Link),
    /// A link went away.
    DelLink(Link),
    /// A route was added or replaced.
    NewRoute(Route),
    /// A route was removed.
    DelRoute(Route),
    /// An address was added.
    NewAddress(AddressInfo),
    /// An address was removed.
    DelAddress(AddressInfo),
    /// Notifications were lost (the kernel reported `ENOBUFS`, or one could
    /// not be parsed): re-dump links, addresses and routes.
    Overrun,
}

/// A non-blocking rtnetlink multicast socket.
pub struct RtnlMonitor {
    sock: NlSocket,
    groups: MonitorGroups,
    buf: Vec<u8>,
}

impl fmt::Debug for RtnlMonitor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RtnlMonitor")
            .field("fd", &self.sock.as_raw_fd())
            .field("groups", &self.groups)
            .finish()
    }
}

impl RtnlMonitor {
    /// Subscribes to `groups` in the calling thread's network namespace.
    pub fn new(groups: MonitorGroups) -> Result<Self> {
        Self::from_socket(open_route_socket(groups.bits())?, groups)
    }

    /// Subscribes to `groups` in the network namespace `ns` (needs
    /// CAP_SYS_ADMIN to join it; see [`crate::Rtnl::in_netns`]).
    pub fn in_netns(ns: BorrowedFd<'_>, groups: MonitorGroups) -> Result<Self> {
        let sock = sys::in_netns(ns, "open rtnetlink monitor in netns", || {
            open_route_socket(groups.bits())
        })?;
        Self::from_socket(sock, groups)
    }

    fn from_socket(sock: NlSocket, groups: MonitorGroups) -> Result<Self> {
        sock.nonblock()
            .map_err(|e| RtnlError::sys("make rtnetlink monitor non-blocking", e))?;
        Ok(RtnlMonitor {
            sock,
            groups,
            buf: vec![0u8; RECV_BUF],
        })
    }

    /// Asks for a larger socket receive buffer (fewer overruns under bursts).
    pub fn set_recv_buffer_size(&self, bytes: usize) -> Result<()> {
        self.sock
            .set_recv_buffer_size(bytes)
            .map_err(|e| RtnlError::sys(format!("set monitor receive buffer to {bytes}"), e))
    }

    /// Reads every pending notification (until the socket would block).
    pub fn read_events(&mut self) -> Result<Vec<RtnlEvent>> {
        drain(
            &self.sock,
            &mut self.buf,
            "read rtnetlink monitor",
            RtnlEvent::Overrun,
            decode_datagram,
        )
    }
}

/// Reads a non-blocking notification socket until it would block,
/// decoding each datagram into events. ENOBUFS (the kernel dropped
/// notifications) becomes one `overrun` event: the socket keeps working,
/// and the caller re-reads the state it mirrors.
pub(crate) fn drain<E: PartialEq + Clone>(
    sock: &NlSocket,
    buf: &mut [u8],
    what: &str,
    overrun: E,
    decode: fn(&[u8], &mut Vec<E>),
) -> Result<Vec<E>> {
    let mut events = Vec::new();
    loop {
        match sock.recv(&mut buf[..], Msg::DONTWAIT) {
            Ok((0, _)) => break,
            Ok((n, _)) => decode(&buf[..n], &mut events),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                if events.last() != Some(&overrun) {
                    events.push(overrun.clone());
                }
            }
            Err(e) => return Err(RtnlError::sys(what.to_string(), e)),
        }
    }
    Ok(events)
}

impl AsRawFd for RtnlMonitor {
    fn as_raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
}

/// Turns one received datagram into events. Anything that does not parse
/// becomes `Overrun`: the caller's view is incomplete either way, and a
/// re-dump repairs it.
pub(crate) fn decode_datagram(buf: &[u8], events: &mut Vec<RtnlEvent>) {
    let Ok(msgs) = wire::split_messages(buf) else {
        events.push(RtnlEvent::Overrun);
        return;
    };
    for m in msgs {
        let event = match m.ty {
            libc::RTM_NEWLINK => parse_link(m.payload).map(|l| l.map(RtnlEvent::NewLink)),
            libc::RTM_DELLINK => parse_link(m.payload).map(|l| l.map(RtnlEvent::DelLink)),
            libc::RTM_NEWROUTE => parse_route(m.payload).map(|r| r.map(RtnlEvent::NewRoute)),
            libc::RTM_DELROUTE => parse_route(m.payload).map(|r| r.map(RtnlEvent::DelRoute)),
            libc::RTM_NEWADDR => parse_address(m.payload).map(|a| a.map(RtnlEvent::NewAddress)),
            libc::RTM_DELADDR => parse_address(m.payload).map(|a| a.map(RtnlEvent::DelAddress)),
            _ => Ok(None),
        };
        match event {
            Ok(Some(e)) => events.push(e),
            Ok(None) => {}
            Err(_) => events.push(RtnlEvent::Overrun),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(ty: u16, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&((16 + payload.len()) as u32).to_ne_bytes());
        v.extend_from_slice(&ty.to_ne_bytes());
        v.extend_from_slice(&0u16.to_ne_bytes());
        v.extend_from_slice(&0u32.to_ne_bytes());
        v.extend_from_slice(&0u32.to_ne_bytes());
        v.extend_from_slice(payload);
        while v.len() % 4 != 0 {
            v.push(0);
        }
        v
    }

    #[test]
    fn groups_combine() {
        let g = MonitorGroups::LINK | MonitorGroups::IPV4_ROUTE;
        assert_eq!(g.bits(), 0x41);
        assert!(MonitorGroups::ALL.contains(g));
        assert!(!g.contains(MonitorGroups::IPV6_ROUTE));
    }

    #[test]
    fn datagram_with_a_deladdr_becomes_an_event() {
        let mut payload = vec![libc::AF_INET as u8, 24, 0, 0];
        payload.extend_from_slice(&2u32.to_ne_bytes());
        payload.extend_from_slice(&8u16.to_ne_bytes());
        payload.extend_from_slice(&2u16.to_ne_bytes());
        payload.extend_from_slice(&[10, 0, 0, 1]);
        let mut events = Vec::new();
        decode_datagram(&msg(libc::RTM_DELADDR, &payload), &mut events);
        assert_eq!(
            events,
            vec![RtnlEvent::DelAddress(AddressInfo {
                ifindex: 2,
                addr: "10.0.0.1".parse().unwrap(),
                prefix_len: 24
            })]
        );
    }

    #[test]
    fn unparseable_notification_is_reported_as_overrun() {
        let mut events = Vec::new();
        decode_datagram(&msg(libc::RTM_NEWLINK, &[1, 2, 3]), &mut events);
        assert_eq!(events, vec![RtnlEvent::Overrun]);
    }

    #[test]
    fn other_message_types_are_ignored() {
        let mut events = Vec::new();
        decode_datagram(&msg(libc::RTM_NEWNEIGH, &[0; 12]), &mut events);
        assert!(events.is_empty());
    }
}
