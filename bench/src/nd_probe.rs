//! A raw ICMPv6 socket inside another network namespace that sends
//! Neighbor Solicitations and times the Neighbor Advertisements that come
//! back, without the kernel's neighbour cache in the way.
//!
//! The socket is opened by a short-lived thread that entered the
//! namespace (a socket stays in the namespace it was made in), bound to
//! the interface and to a source address there, with hop limit 255 (ND
//! drops anything else) and an `ICMP6_FILTER` passing only NAs. The kernel
//! computes the ICMPv6 checksum of raw ICMPv6 sockets. Each NS goes to the
//! target's solicited-node multicast group with the sender's MAC in a
//! source link-layer address option, as the kernel's own would; since the
//! probe never consults the sender's neighbour cache, no entry needs
//! flushing between probes.

use std::fs::File;
use std::io;
use std::net::Ipv6Addr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};

use crate::link_probe::setns_net;

const ND_NEIGHBOR_SOLICIT: u8 = 135;
const ND_NEIGHBOR_ADVERT: u8 = 136;
/// `ICMP6_FILTER` (linux/icmpv6.h).
const ICMP6_FILTER: libc::c_int = 1;
/// The only hop limit Neighbor Discovery accepts (RFC 4861 §7.1.2).
pub const ND_HOP_LIMIT: u8 = 255;
/// The Solicited flag of an NA.
const NA_SOLICITED: u8 = 0x40;

/// A Neighbor Advertisement received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Advert {
    /// The IPv6 source (who answered: the target itself, relayed, or a
    /// proxy's own address).
    pub source: Ipv6Addr,
    pub target: Ipv6Addr,
    pub solicited: bool,
    /// The IPv6 hop limit it arrived with. Neighbor Discovery accepts only
    /// 255 (RFC 4861 §7.1.2): anything less was forwarded by a router on
    /// the way, and a real host's kernel discards it.
    pub hop_limit: u8,
}

/// The probe socket.
#[derive(Debug)]
pub struct NdProbe {
    socket: OwnedFd,
    ifindex: u32,
    mac: [u8; 6],
    /// NAs for the awaited target that [`NdProbe::round_trip`] ignored
    /// because their hop limit was not 255.
    forwarded: std::cell::Cell<usize>,
}

impl NdProbe {
    /// A probe on `ifname` (index `ifindex`, MAC `mac`) inside the namespace
    /// bound at `netns`, sending from `source` (an address of `ifname`).
    pub fn open(
        netns: &Path,
        ifname: &str,
        ifindex: u32,
        mac: [u8; 6],
        source: Ipv6Addr,
    ) -> Result<NdProbe> {
        let path = netns.to_path_buf();
        let name = ifname.to_string();
        let socket = std::thread::spawn(move || -> io::Result<OwnedFd> {
            let ns = File::open(&path)?;
            setns_net(ns.as_fd())?;
            open_socket(&name, ifindex, source)
        })
        .join()
        .map_err(|_| anyhow!("the thread entering {} panicked", netns.display()))?
        .with_context(|| {
            format!(
                "cannot open a raw ICMPv6 socket on {ifname} inside {}",
                netns.display()
            )
        })?;
        Ok(NdProbe {
            socket,
            ifindex,
            mac,
            forwarded: std::cell::Cell::new(0),
        })
    }

    /// Sends one NS for `target` to its solicited-node group.
    pub fn send_ns(&self, target: Ipv6Addr) -> Result<()> {
        let packet = neighbor_solicitation(target, self.mac);
        let dst = sockaddr(solicited_node(target), self.ifindex);
        // SAFETY: sendto reads `packet` and the sockaddr_in6, both alive for
        // the call, with their true lengths.
        let rc = unsafe {
            libc::sendto(
                self.socket.as_raw_fd(),
                packet.as_ptr().cast(),
                packet.len(),
                0,
                (&dst as *const libc::sockaddr_in6).cast(),
                std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error()).context("cannot send a neighbor solicitation");
        }
        Ok(())
    }

    /// The next NA, waiting at most `timeout`; `None` on timeout.
    pub fn recv(&self, timeout: Duration) -> Result<Option<Advert>> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if !wait_readable(self.socket.as_fd(), left)? {
                return Ok(None);
            }
            if let Some(advert) = self.read(0)? {
                return Ok(Some(advert));
            }
        }
    }

    /// Drops every NA already queued (late answers of an earlier probe).
    pub fn drain(&self) -> Result<usize> {
        let mut dropped = 0;
        loop {
            match self.read(libc::MSG_DONTWAIT) {
                Ok(Some(_)) => dropped += 1,
                Ok(None) => {}
                Err(err) => {
                    let would_block = err
                        .downcast_ref::<io::Error>()
                        .is_some_and(|e| e.kind() == io::ErrorKind::WouldBlock);
                    if would_block {
                        return Ok(dropped);
                    }
                    return Err(err);
                }
            }
        }
    }

    /// Sends an NS for `target` and waits for an NA for it that a host's
    /// Neighbor Discovery would accept (solicited, hop limit 255): the round
    /// trip, and the NA; `None` when none came within `timeout`. NAs for
    /// the target with a lower hop limit (forwarded by a router: the
    /// guest's own answer routed by the middle host's kernel, which U's
    /// kernel would discard) are ignored and counted
    /// ([`NdProbe::forwarded`]).
    pub fn round_trip(
        &self,
        target: Ipv6Addr,
        timeout: Duration,
    ) -> Result<Option<(Duration, Advert)>> {
        let started = Instant::now();
        self.send_ns(target)?;
        loop {
            let left = timeout.saturating_sub(started.elapsed());
            match self.recv(left)? {
                None => return Ok(None),
                Some(advert) if advert.target == target && advert.solicited => {
                    if advert.hop_limit != ND_HOP_LIMIT {
                        self.forwarded.set(self.forwarded.get() + 1);
                        continue;
                    }
                    return Ok(Some((started.elapsed(), advert)));
                }
                Some(_) => {}
            }
        }
    }

    /// How many NAs [`NdProbe::round_trip`] ignored so far for a hop limit
    /// below 255.
    pub fn forwarded(&self) -> usize {
        self.forwarded.get()
    }

    /// One datagram; `Ok(None)` for one that is not a valid NA.
    fn read(&self, flags: libc::c_int) -> Result<Option<Advert>> {
        let mut buf = [0u8; 1500];
        // SAFETY: sockaddr_in6 is plain old data; all zeroes is valid.
        let mut from: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
        // Room for one IPV6_HOPLIMIT control message (an int), u64-aligned.
        let mut control = [0u64; 8];
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // SAFETY: msghdr is plain old data; all zeroes is valid.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_name = (&mut from as *mut libc::sockaddr_in6).cast();
        msg.msg_namelen = std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&control) as _;
        // SAFETY: recvmsg writes at most iov_len bytes into buf, at most
        // msg_namelen bytes into `from` and at most msg_controllen bytes
        // into `control`, all alive for the call.
        let n = unsafe { libc::recvmsg(self.socket.as_raw_fd(), &mut msg, flags) };
        if n < 0 {
            return Err(io::Error::last_os_error().into());
        }
        let mut hop_limit = 0u8;
        // SAFETY: the CMSG_* macros walk the control buffer the kernel
        // filled in, within msg_controllen.
        unsafe {
            let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
            while !cmsg.is_null() {
                if (*cmsg).cmsg_level == libc::IPPROTO_IPV6
                    && (*cmsg).cmsg_type == libc::IPV6_HOPLIMIT
                {
                    let value =
                        std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::c_int>());
                    hop_limit = u8::try_from(value).unwrap_or(0);
                }
                cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
            }
        }
        let source = Ipv6Addr::from(from.sin6_addr.s6_addr);
        Ok(parse_advert(&buf[..n as usize], source, hop_limit))
    }
}

/// An NS for `target` with a source link-layer address option `mac`; the
/// checksum is left to the kernel.
pub fn neighbor_solicitation(target: Ipv6Addr, mac: [u8; 6]) -> [u8; 32] {
    let mut p = [0u8; 32];
    p[0] = ND_NEIGHBOR_SOLICIT;
    p[8..24].copy_from_slice(&target.octets());
    p[24] = 1; // source link-layer address
    p[25] = 1; // in units of 8 bytes
    p[26..32].copy_from_slice(&mac);
    p
}

/// `target`'s solicited-node multicast group, ff02::1:ffXX:XXXX.
pub fn solicited_node(target: Ipv6Addr) -> Ipv6Addr {
    let o = target.octets();
    let mut g = [0u8; 16];
    g[0] = 0xff;
    g[1] = 0x02;
    g[11] = 0x01;
    g[12] = 0xff;
    g[13..16].copy_from_slice(&o[13..16]);
    Ipv6Addr::from(g)
}

/// An ICMPv6 message as an NA, if it is one.
pub fn parse_advert(icmp: &[u8], source: Ipv6Addr, hop_limit: u8) -> Option<Advert> {
    if icmp.len() < 24 || icmp[0] != ND_NEIGHBOR_ADVERT || icmp[1] != 0 {
        return None;
    }
    let target: [u8; 16] = icmp[8..24].try_into().ok()?;
    Some(Advert {
        source,
        target: Ipv6Addr::from(target),
        solicited: icmp[4] & NA_SOLICITED != 0,
        hop_limit,
    })
}

fn sockaddr(addr: Ipv6Addr, scope_id: u32) -> libc::sockaddr_in6 {
    // SAFETY: sockaddr_in6 is plain old data; all zeroes is valid.
    let mut sa: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
    sa.sin6_family = libc::AF_INET6 as libc::sa_family_t;
    sa.sin6_addr.s6_addr = addr.octets();
    sa.sin6_scope_id = scope_id;
    sa
}

fn open_socket(ifname: &str, ifindex: u32, source: Ipv6Addr) -> io::Result<OwnedFd> {
    // SAFETY: socket() takes plain integers and returns a new descriptor.
    let fd = unsafe {
        libc::socket(
            libc::AF_INET6,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::IPPROTO_ICMPV6,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor that nothing else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let hops: libc::c_int = 255;
    set_option(
        &socket,
        libc::IPPROTO_IPV6,
        libc::IPV6_MULTICAST_HOPS,
        &hops,
    )?;
    set_option(&socket, libc::IPPROTO_IPV6, libc::IPV6_UNICAST_HOPS, &hops)?;
    let index = ifindex as libc::c_int;
    set_option(&socket, libc::IPPROTO_IPV6, libc::IPV6_MULTICAST_IF, &index)?;
    let loop_off: libc::c_int = 0;
    set_option(
        &socket,
        libc::IPPROTO_IPV6,
        libc::IPV6_MULTICAST_LOOP,
        &loop_off,
    )?;
    // Block every ICMPv6 type but NA (a set bit blocks the type).
    let mut filter = [u32::MAX; 8];
    filter[usize::from(ND_NEIGHBOR_ADVERT >> 5)] &= !(1u32 << (ND_NEIGHBOR_ADVERT & 31));
    set_option(&socket, libc::IPPROTO_ICMPV6, ICMP6_FILTER, &filter)?;
    // Each datagram's hop limit as ancillary data.
    let on: libc::c_int = 1;
    set_option(&socket, libc::IPPROTO_IPV6, libc::IPV6_RECVHOPLIMIT, &on)?;
    let mut name = ifname.as_bytes().to_vec();
    name.push(0);
    // SAFETY: SO_BINDTODEVICE reads the NUL-terminated name of the given
    // length from a buffer alive for the call.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_BINDTODEVICE,
            name.as_ptr().cast(),
            name.len() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    let local = sockaddr(source, 0);
    // SAFETY: bind reads the sockaddr_in6 of the given length, alive for
    // the call.
    let rc = unsafe {
        libc::bind(
            socket.as_raw_fd(),
            (&local as *const libc::sockaddr_in6).cast(),
            std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(socket)
}

fn set_option<T>(
    socket: &OwnedFd,
    level: libc::c_int,
    name: libc::c_int,
    value: &T,
) -> io::Result<()> {
    // SAFETY: setsockopt reads size_of::<T>() bytes from `value`, alive for
    // the call.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            name,
            (value as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Whether `fd` becomes readable within `timeout`.
fn wait_readable(fd: BorrowedFd<'_>, timeout: Duration) -> Result<bool> {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // Round up so that a sub-millisecond wait is not a busy zero-timeout.
    let ms = timeout.as_micros().div_ceil(1000).min(i32::MAX as u128) as libc::c_int;
    loop {
        // SAFETY: poll reads and writes the one pollfd we pass.
        let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
        if rc >= 0 {
            return Ok(rc > 0);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err).context("poll on the probe socket failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_solicited_node_group_keeps_the_last_24_bits() {
        let target: Ipv6Addr = "2001:db8:1::12:3456".parse().expect("address");

        assert_eq!(
            solicited_node(target),
            "ff02::1:ff12:3456".parse::<Ipv6Addr>().expect("group")
        );
    }

    #[test]
    fn a_solicitation_carries_the_target_and_the_source_mac() {
        let target: Ipv6Addr = "2001:db8:1::100".parse().expect("address");

        let ns = neighbor_solicitation(target, [2, 0, 0, 0, 0, 1]);

        assert_eq!(ns[0], 135);
        assert_eq!(&ns[8..24], &target.octets());
        assert_eq!(&ns[24..32], &[1, 1, 2, 0, 0, 0, 0, 1]);
    }

    #[test]
    fn an_advert_is_parsed_with_its_flags_and_anything_else_is_not() {
        let target: Ipv6Addr = "2001:db8:1::100".parse().expect("address");
        let mut na = [0u8; 24];
        na[0] = 136;
        na[4] = 0x60; // solicited, override
        na[8..24].copy_from_slice(&target.octets());

        let advert = parse_advert(&na, Ipv6Addr::LOCALHOST, 255).expect("an NA");

        assert_eq!(advert.target, target);
        assert!(advert.solicited);
        let mut ns = na;
        ns[0] = 135;
        assert_eq!(parse_advert(&ns, Ipv6Addr::LOCALHOST, 255), None);
        assert_eq!(parse_advert(&na[..20], Ipv6Addr::LOCALHOST, 255), None);
    }
}
