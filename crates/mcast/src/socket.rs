//! The forwarder's sockets, built with libc because every one needs an
//! option std does not offer (`SO_BINDTODEVICE`, `ip_mreqn`, `IP_HDRINCL`,
//! a socket filter) and receives must report truncation.
//!
//! * a *group* socket per (link, protocol, family): UDP bound to the
//!   wildcard address and the protocol port, pinned to the link with
//!   `SO_BINDTODEVICE`, member of the group on that link, loopback off,
//!   multicast TTL/hop limit set (255 for mDNS, RFC 6762 §11);
//! * a *session* socket: the same but on an ephemeral port and in no group,
//!   used to send one query that expects a unicast answer and to catch it;
//! * for broadcast, per link, a packet socket that receives IPv4
//!   broadcasts (filtered in the kernel) and a raw `IP_HDRINCL` socket that
//!   sends the relayed copies.
//!
//! This is the crate's only module with `unsafe`: thin wrappers, each with
//! its `SAFETY` comment.

use std::ffi::CString;
use std::io;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Whether a group socket speaks IPv4 or IPv6.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    V4,
    V6,
}

fn check(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn setsockopt<T>(fd: RawFd, level: libc::c_int, name: libc::c_int, value: &T) -> io::Result<()> {
    // SAFETY: `value` points at a live `T` of the length passed.
    check(unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (value as *const T).cast(),
            size_of::<T>() as libc::socklen_t,
        )
    })
    .map(|_| ())
}

fn open(domain: libc::c_int, kind: libc::c_int, protocol: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the fd returned is new and owned here.
    let fd = check(unsafe {
        libc::socket(
            domain,
            kind | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            protocol,
        )
    })?;
    // SAFETY: `fd` was just returned by socket(2) and is owned by no one else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn bind_to_device(fd: RawFd, ifname: &str) -> io::Result<()> {
    let name = CString::new(ifname).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let bytes = name.as_bytes_with_nul();
    // SAFETY: the name is NUL-terminated and the length covers it.
    check(unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_BINDTODEVICE,
            bytes.as_ptr().cast(),
            bytes.len() as libc::socklen_t,
        )
    })
    .map(|_| ())
}

fn sockaddr(addr: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut storage: libc::sockaddr_storage = unsafe { zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from(*a.ip()).to_be(),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin) };
            size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin6) };
            size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

fn from_sockaddr(storage: &libc::sockaddr_storage, len: libc::socklen_t) -> Option<SocketAddr> {
    match i32::from(storage.ss_family) {
        libc::AF_INET if len as usize >= size_of::<libc::sockaddr_in>() => {
            // SAFETY: the family and length say the storage holds a sockaddr_in.
            let sin: libc::sockaddr_in =
                unsafe { std::ptr::read((storage as *const libc::sockaddr_storage).cast()) };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)),
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 if len as usize >= size_of::<libc::sockaddr_in6>() => {
            // SAFETY: the family and length say the storage holds a sockaddr_in6.
            let sin6: libc::sockaddr_in6 =
                unsafe { std::ptr::read((storage as *const libc::sockaddr_storage).cast()) };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        // A packet socket's sender is a link-layer address; the IP source
        // is in the packet.
        libc::AF_PACKET => Some(SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), 0)),
        _ => None,
    }
}

/// Whether a packet socket's `sockaddr_ll` says the packet is one this
/// host sent.
fn outgoing(storage: &libc::sockaddr_storage) -> bool {
    if i32::from(storage.ss_family) != libc::AF_PACKET {
        return false;
    }
    // SAFETY: the family says the storage holds a sockaddr_ll.
    let sll: libc::sockaddr_ll =
        unsafe { std::ptr::read((storage as *const libc::sockaddr_storage).cast()) };
    sll.sll_pkttype == libc::PACKET_OUTGOING
}

fn bind(fd: RawFd, addr: &SocketAddr) -> io::Result<()> {
    let (storage, len) = sockaddr(addr);
    // SAFETY: `storage` holds a sockaddr of `len` bytes.
    check(unsafe { libc::bind(fd, (&storage as *const libc::sockaddr_storage).cast(), len) })
        .map(|_| ())
}

/// A UDP socket on `ifname` for one family: bound to the device, loopback
/// off, multicast TTL/hop limit `ttl`, sending on `ifindex`; bound to
/// `port` on the wildcard address (0: ephemeral), and a member of `group`
/// on `ifindex` if given.
pub fn udp(
    family: Family,
    ifname: &str,
    ifindex: u32,
    port: u16,
    group: Option<std::net::IpAddr>,
    ttl: u8,
) -> io::Result<OwnedFd> {
    let domain = match family {
        Family::V4 => libc::AF_INET,
        Family::V6 => libc::AF_INET6,
    };
    let sock = open(domain, libc::SOCK_DGRAM, 0)?;
    let fd = sock.as_raw_fd();
    let one: libc::c_int = 1;
    let zero: libc::c_int = 0;
    let ttl = libc::c_int::from(ttl);
    setsockopt(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, &one)?;
    bind_to_device(fd, ifname)?;
    match family {
        Family::V4 => {
            let mreqn = libc::ip_mreqn {
                imr_multiaddr: libc::in_addr { s_addr: 0 },
                imr_address: libc::in_addr { s_addr: 0 },
                imr_ifindex: ifindex as libc::c_int,
            };
            setsockopt(fd, libc::IPPROTO_IP, libc::IP_MULTICAST_IF, &mreqn)?;
            setsockopt(fd, libc::IPPROTO_IP, libc::IP_MULTICAST_LOOP, &zero)?;
            setsockopt(fd, libc::IPPROTO_IP, libc::IP_MULTICAST_TTL, &ttl)?;
        }
        Family::V6 => {
            setsockopt(fd, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, &one)?;
            let index = ifindex as libc::c_int;
            setsockopt(fd, libc::IPPROTO_IPV6, libc::IPV6_MULTICAST_IF, &index)?;
            setsockopt(fd, libc::IPPROTO_IPV6, libc::IPV6_MULTICAST_LOOP, &zero)?;
            setsockopt(fd, libc::IPPROTO_IPV6, libc::IPV6_MULTICAST_HOPS, &ttl)?;
        }
    }
    let wildcard = match family {
        Family::V4 => SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), port),
        Family::V6 => SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), port),
    };
    bind(fd, &wildcard)?;
    match group {
        Some(std::net::IpAddr::V4(g)) => {
            let mreqn = libc::ip_mreqn {
                imr_multiaddr: libc::in_addr {
                    s_addr: u32::from(g).to_be(),
                },
                imr_address: libc::in_addr { s_addr: 0 },
                imr_ifindex: ifindex as libc::c_int,
            };
            setsockopt(fd, libc::IPPROTO_IP, libc::IP_ADD_MEMBERSHIP, &mreqn)?;
        }
        Some(std::net::IpAddr::V6(g)) => {
            let mreq = libc::ipv6_mreq {
                ipv6mr_multiaddr: libc::in6_addr {
                    s6_addr: g.octets(),
                },
                ipv6mr_interface: ifindex,
            };
            setsockopt(fd, libc::IPPROTO_IPV6, libc::IPV6_ADD_MEMBERSHIP, &mreq)?;
        }
        None => {}
    }
    Ok(sock)
}

/// A classic BPF instruction (`struct sock_filter`).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct Insn {
    code: u16,
    jt: u8,
    jf: u8,
    k: u32,
}

/// Passes IPv4 packets whose destination is 255.255.255.255 or has its two
/// lowest bits set (every directed broadcast of a prefix up to /30 does);
/// userspace then checks the exact directed broadcast of the link. Keeps
/// the uplink's unicast UDP (DNS, QUIC...) from waking the forwarder.
const BROADCAST_FILTER: [Insn; 6] = [
    // ld [16]: the destination address (a SOCK_DGRAM packet socket's data
    // starts at the IP header).
    Insn {
        code: 0x20,
        jt: 0,
        jf: 0,
        k: 16,
    },
    // jeq #255.255.255.255 -> accept
    Insn {
        code: 0x15,
        jt: 3,
        jf: 0,
        k: 0xffff_ffff,
    },
    // and #3
    Insn {
        code: 0x54,
        jt: 0,
        jf: 0,
        k: 3,
    },
    // jeq #3 -> accept, else drop
    Insn {
        code: 0x15,
        jt: 1,
        jf: 0,
        k: 3,
    },
    // ret #0 (drop)
    Insn {
        code: 0x06,
        jt: 0,
        jf: 0,
        k: 0,
    },
    // ret #0x40000 (the whole packet)
    Insn {
        code: 0x06,
        jt: 0,
        jf: 0,
        k: 0x40000,
    },
];

#[repr(C)]
struct Program {
    len: u16,
    filter: *const Insn,
}

/// Drops every packet: the filter of the send-only raw socket.
const DROP_ALL: [Insn; 1] = [Insn {
    code: 0x06,
    jt: 0,
    jf: 0,
    k: 0,
}];

fn attach(fd: RawFd, filter: &[Insn]) -> io::Result<()> {
    let program = Program {
        len: filter.len() as u16,
        filter: filter.as_ptr(),
    };
    setsockopt(fd, libc::SOL_SOCKET, libc::SO_ATTACH_FILTER, &program)
}

/// `ETH_P_IP` in network byte order, as `sockaddr_ll` and `socket` want it.
const ETH_P_IP_BE: u16 = (libc::ETH_P_IP as u16).to_be();

/// The broadcast receive socket of a link: `AF_PACKET`, `SOCK_DGRAM` (bare
/// IPv4 packets), created with protocol 0 so nothing is queued before the
/// filter is attached, then bound to IPv4 on `ifindex`. A packet socket
/// sees broadcasts before netfilter, so the auto-DNAT to ARC on the uplink
/// (which turns an inbound broadcast into a unicast the kernel then refuses
/// to forward) cannot hide them.
pub fn packet_broadcast(ifindex: u32) -> io::Result<OwnedFd> {
    let sock = open(libc::AF_PACKET, libc::SOCK_DGRAM, 0)?;
    let fd = sock.as_raw_fd();
    attach(fd, &BROADCAST_FILTER)?;
    // SAFETY: all-zero is a valid sockaddr_ll.
    let mut sll: libc::sockaddr_ll = unsafe { zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = ETH_P_IP_BE;
    sll.sll_ifindex = ifindex as i32;
    // SAFETY: `sll` is a live sockaddr_ll of the length passed.
    check(unsafe {
        libc::bind(
            fd,
            (&sll as *const libc::sockaddr_ll).cast(),
            size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    })?;
    Ok(sock)
}

/// The broadcast send socket of a link: `AF_INET`, `SOCK_RAW`,
/// `IPPROTO_UDP`, `IP_HDRINCL` (the forwarder writes the IP header, so a
/// LAN sender's source survives), `SO_BROADCAST`, pinned to the link. It
/// receives nothing (a raw UDP socket would get a copy of every UDP
/// datagram to the host): its filter drops all.
pub fn raw_sender(ifname: &str) -> io::Result<OwnedFd> {
    let sock = open(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_UDP)?;
    let fd = sock.as_raw_fd();
    let one: libc::c_int = 1;
    attach(fd, &DROP_ALL)?;
    setsockopt(fd, libc::IPPROTO_IP, libc::IP_HDRINCL, &one)?;
    setsockopt(fd, libc::SOL_SOCKET, libc::SO_BROADCAST, &one)?;
    bind_to_device(fd, ifname)?;
    Ok(sock)
}

/// One datagram received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Received {
    /// Bytes in the buffer.
    pub len: usize,
    /// The sender (for raw sockets: the IP source, port 0).
    pub from: SocketAddr,
    /// The datagram was longer than the buffer; `len` bytes are a prefix.
    pub truncated: bool,
    /// A packet socket's copy of a packet this host sent.
    pub outgoing: bool,
}

/// `sendto`; the whole datagram or an error.
pub fn send_to(fd: RawFd, payload: &[u8], to: &SocketAddr) -> io::Result<()> {
    let (storage, len) = sockaddr(to);
    // SAFETY: `payload` and `storage` are live and their lengths are passed.
    let n = unsafe {
        libc::sendto(
            fd,
            payload.as_ptr().cast(),
            payload.len(),
            0,
            (&storage as *const libc::sockaddr_storage).cast(),
            len,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Datagrams per [`recv_batch`] and at most per [`send_many`]: one
/// `recvmmsg`/`sendmmsg` instead of this many `recvfrom`/`sendto`.
pub const BATCH: usize = 32;

/// What [`recv_batch`] learned of one datagram.
#[derive(Debug, Clone, Copy)]
struct Meta {
    /// The datagram's length (`MSG_TRUNC`: its whole length, even when
    /// longer than the slot).
    len: usize,
    /// The sender's address length.
    addr_len: libc::socklen_t,
    /// `msg_flags`.
    flags: libc::c_int,
}

/// The memory of [`recv_batch`]: [`BATCH`] slots of `slot` bytes and their
/// senders, allocated once and reused for every batch. The slots are one
/// zeroed allocation, so the pages of a slot that only ever holds short
/// datagrams are never touched.
#[derive(Default)]
pub struct RecvBatch {
    slot: usize,
    buf: Vec<u8>,
    addrs: Vec<libc::sockaddr_storage>,
    meta: Vec<Meta>,
    /// Datagrams held from the last [`recv_batch`].
    count: usize,
}

impl std::fmt::Debug for RecvBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecvBatch")
            .field("slot", &self.slot)
            .field("count", &self.count)
            .finish()
    }
}

impl RecvBatch {
    /// [`BATCH`] slots of `slot` bytes each.
    pub fn new(slot: usize) -> RecvBatch {
        // SAFETY: all-zero is a valid sockaddr_storage.
        let empty: libc::sockaddr_storage = unsafe { zeroed() };
        RecvBatch {
            slot,
            buf: vec![0; BATCH * slot],
            addrs: vec![empty; BATCH],
            meta: vec![
                Meta {
                    len: 0,
                    addr_len: 0,
                    flags: 0,
                };
                BATCH
            ],
            count: 0,
        }
    }

    /// How many datagrams the last [`recv_batch`] received.
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Datagram `i` of the last [`recv_batch`]: what is known of it and
    /// its bytes (a prefix when truncated); None past the end, or when
    /// the sender's address is of no family the forwarder knows.
    pub fn get(&self, i: usize) -> Option<(Received, &[u8])> {
        if i >= self.count {
            return None;
        }
        let meta = self.meta[i];
        let storage = &self.addrs[i];
        let from = from_sockaddr(storage, meta.addr_len)?;
        let len = meta.len.min(self.slot);
        let at = i * self.slot;
        Some((
            Received {
                len,
                from,
                truncated: meta.len > self.slot || meta.flags & libc::MSG_TRUNC != 0,
                outgoing: outgoing(storage),
            },
            &self.buf[at..at + len],
        ))
    }
}

/// Receives up to [`BATCH`] datagrams with one `recvmmsg` (`MSG_TRUNC`,
/// so a datagram longer than its slot is seen); how many. `WouldBlock`
/// when none is queued (the socket is non-blocking).
pub fn recv_batch(fd: RawFd, batch: &mut RecvBatch) -> io::Result<usize> {
    batch.count = 0;
    let slots = batch.buf.len().checked_div(batch.slot).unwrap_or(0);
    let vlen = slots
        .min(batch.addrs.len())
        .min(batch.meta.len())
        .min(BATCH);
    if vlen == 0 {
        return Ok(0);
    }
    // SAFETY: all-zero is a valid iovec and mmsghdr (null pointers, zero
    // lengths); every one used is filled in below.
    let mut iovs: [libc::iovec; BATCH] = unsafe { zeroed() };
    // SAFETY: as above.
    let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { zeroed() };
    let base = batch.buf.as_mut_ptr();
    for i in 0..vlen {
        iovs[i] = libc::iovec {
            // SAFETY: slot i lies within `buf` (vlen slots fit in it).
            iov_base: unsafe { base.add(i * batch.slot) }.cast(),
            iov_len: batch.slot,
        };
        let h = &mut hdrs[i].msg_hdr;
        h.msg_name = (&mut batch.addrs[i] as *mut libc::sockaddr_storage).cast();
        h.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        h.msg_iov = &mut iovs[i];
        h.msg_iovlen = 1;
    }
    // SAFETY: every header points at live memory of the lengths given (a
    // slot of `buf`, an entry of `addrs`), which outlives the call; no
    // control buffer; no timeout (the socket is non-blocking).
    let n = unsafe {
        libc::recvmmsg(
            fd,
            hdrs.as_mut_ptr(),
            vlen as libc::c_uint,
            libc::MSG_TRUNC,
            std::ptr::null_mut(),
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let n = n as usize;
    for (meta, h) in batch.meta.iter_mut().zip(&hdrs[..n]) {
        *meta = Meta {
            len: h.msg_len as usize,
            addr_len: h.msg_hdr.msg_namelen,
            flags: h.msg_hdr.msg_flags,
        };
    }
    batch.count = n;
    Ok(n)
}

/// Sends the datagrams of `msgs` (at most [`BATCH`]; more are not looked
/// at) on `fd` with one `sendmmsg`: how many, from the first, were sent
/// whole (at least one), or the error of the first.
pub fn send_many<'a>(
    fd: RawFd,
    msgs: impl Iterator<Item = (&'a SocketAddr, &'a [u8])>,
) -> io::Result<usize> {
    // SAFETY: all-zero is a valid sockaddr_storage, iovec and mmsghdr.
    let mut names: [libc::sockaddr_storage; BATCH] = unsafe { zeroed() };
    // SAFETY: as above.
    let mut iovs: [libc::iovec; BATCH] = unsafe { zeroed() };
    // SAFETY: as above.
    let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { zeroed() };
    let mut lens = [0usize; BATCH];
    let mut n = 0;
    for (to, payload) in msgs.take(BATCH) {
        let (storage, len) = sockaddr(to);
        names[n] = storage;
        iovs[n] = libc::iovec {
            // sendmmsg does not write through it.
            iov_base: payload.as_ptr().cast_mut().cast(),
            iov_len: payload.len(),
        };
        lens[n] = payload.len();
        let h = &mut hdrs[n].msg_hdr;
        h.msg_name = (&mut names[n] as *mut libc::sockaddr_storage).cast();
        h.msg_namelen = len;
        h.msg_iov = &mut iovs[n];
        h.msg_iovlen = 1;
        n += 1;
    }
    if n == 0 {
        return Ok(0);
    }
    // SAFETY: every header points at live memory of the lengths given (the
    // callers' payloads, `names`, `iovs`), which outlives the call.
    let sent = unsafe { libc::sendmmsg(fd, hdrs.as_mut_ptr(), n as libc::c_uint, 0) };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let sent = sent as usize;
    // A datagram socket sends a datagram whole or not at all; say so if
    // one ever was cut.
    if let Some(i) = (0..sent).find(|&i| hdrs[i].msg_len as usize != lens[i]) {
        return if i == 0 {
            Err(io::Error::from(io::ErrorKind::WriteZero))
        } else {
            Ok(i)
        };
    }
    Ok(sent)
}

fn getsockopt_int(fd: RawFd, level: libc::c_int, name: libc::c_int) -> io::Result<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `value` is a live c_int and `len` its size.
    check(unsafe {
        libc::getsockopt(
            fd,
            level,
            name,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    })?;
    Ok(value)
}

/// Asks for a receive buffer of `bytes` (`SO_RCVBUF`: the kernel caps it at
/// `net.core.rmem_max` and doubles it for its bookkeeping; going past the
/// cap, `SO_RCVBUFFORCE`, takes CAP_NET_ADMIN, which the forwarder has
/// not). Returns the size the socket got.
pub fn set_receive_buffer(fd: RawFd, bytes: usize) -> io::Result<usize> {
    let asked = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    setsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, &asked)?;
    receive_buffer(fd)
}

/// The receive buffer of a socket (`SO_RCVBUF`), in bytes.
pub fn receive_buffer(fd: RawFd) -> io::Result<usize> {
    Ok(getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_RCVBUF)?.max(0) as usize)
}

/// `SO_MEMINFO` (asm-generic/socket.h; not in libc).
const SO_MEMINFO: libc::c_int = 55;

/// How many datagrams the kernel dropped on their way into this socket
/// since it was opened: `SK_MEMINFO_DROPS` of `SO_MEMINFO`, the socket's
/// `sk_drops`, which counts a datagram that found the receive buffer full
/// (UDP's `RcvbufErrors`, a packet socket's overrun). Read when the
/// counters are logged, so that counting costs nothing per datagram
/// (`SO_RXQ_OVFL` would put the same number in a control message of every
/// datagram).
pub fn drops(fd: RawFd) -> io::Result<u32> {
    let mut info = [0u32; libc::SK_MEMINFO_DROPS as usize + 1];
    let mut len = std::mem::size_of_val(&info) as libc::socklen_t;
    // SAFETY: `info` is live and `len` its size; the kernel writes at most
    // `len` bytes and says how many.
    check(unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            SO_MEMINFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    })?;
    if (len as usize) < std::mem::size_of_val(&info) {
        return Err(io::Error::from(io::ErrorKind::Unsupported));
    }
    Ok(info[libc::SK_MEMINFO_DROPS as usize])
}

/// The index of a link, if it exists.
pub fn ifindex(ifname: &str) -> Option<u32> {
    let name = CString::new(ifname).ok()?;
    // SAFETY: `name` is NUL-terminated.
    match unsafe { libc::if_nametoindex(name.as_ptr()) } {
        0 => None,
        i => Some(i),
    }
}

/// A link's IPv4 address, netmask and broadcast address (`SIOCGIFADDR`,
/// `SIOCGIFNETMASK`, `SIOCGIFBRDADDR` on `fd`, any AF_INET socket), read
/// per use so DHCP changes are followed without a netlink listener. The
/// broadcast address is [`crate::broadcast::link_broadcast`]'s: the
/// configured one, else the prefix's all-ones address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct V4Config {
    pub addr: Ipv4Addr,
    pub netmask: Ipv4Addr,
    pub broadcast: Option<Ipv4Addr>,
}

impl V4Config {
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let mask = u32::from(self.netmask);
        u32::from(ip) & mask == u32::from(self.addr) & mask
    }
}

fn ifreq_v4(fd: RawFd, ifname: &str, request: libc::c_ulong) -> Option<Ipv4Addr> {
    // SAFETY: all-zero is a valid ifreq.
    let mut req: libc::ifreq = unsafe { zeroed() };
    let bytes = ifname.as_bytes();
    if bytes.len() >= req.ifr_name.len() {
        return None;
    }
    for (d, s) in req.ifr_name.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    // SAFETY: `req` is a live ifreq with a NUL-terminated name; the
    // request is one of the SIOCGIF* that fill ifr_ifru with a sockaddr.
    if unsafe { libc::ioctl(fd, request as _, &mut req) } < 0 {
        return None;
    }
    // SAFETY: the ioctl filled the union with a sockaddr_in.
    let sin: libc::sockaddr_in =
        unsafe { std::ptr::read((&req.ifr_ifru as *const libc::__c_anonymous_ifr_ifru).cast()) };
    Some(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)))
}

/// The link's IPv4 configuration, or None without an IPv4 address.
pub fn v4_config(fd: RawFd, ifname: &str) -> Option<V4Config> {
    let addr = ifreq_v4(fd, ifname, libc::SIOCGIFADDR)?;
    let netmask = ifreq_v4(fd, ifname, libc::SIOCGIFNETMASK)?;
    let configured = ifreq_v4(fd, ifname, libc::SIOCGIFBRDADDR);
    let broadcast = crate::broadcast::link_broadcast(addr, netmask, configured);
    Some(V4Config {
        addr,
        netmask,
        broadcast,
    })
}
