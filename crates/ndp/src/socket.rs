//! The proxy's one packet socket: `AF_PACKET`, `SOCK_DGRAM`, IPv6, not
//! bound to an interface, with the ND filter of [`crate::bpf`].
//!
//! `SOCK_DGRAM` means the kernel removes and adds the link-layer header:
//! the proxy reads and writes bare IPv6 packets and names the link with a
//! `sockaddr_ll` (ifindex, and the destination MAC on send). `recvmsg`
//! reports the receiving interface, the packet type (to ignore our own
//! output and frames not addressed to this host), the sender's MAC, and —
//! through `PACKET_AUXDATA` — VLAN tags and whether the checksum is still
//! to be computed by hardware.
//!
//! All-multicast reception uses the socket's `PACKET_MR_ALLMULTI`
//! membership rather than the interface flag: it needs only CAP_NET_RAW,
//! is counted by the kernel (so it never clears an all-multicast mode
//! someone else asked for), and is released by the kernel when the socket
//! closes, even if the process crashes. The kernel reports the count as
//! `IFLA_ALLMULTI` (`ip -d link`: `allmulti N`).
//!
//! This is the only module with `unsafe`: thin wrappers around socket,
//! setsockopt, bind, recvmsg and sendto, each with its `SAFETY` comment.

use std::io;
use std::mem::size_of;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use crate::bpf::{Insn, ND_FILTER};

/// `ETH_P_IPV6` in network byte order, as `sockaddr_ll` and `socket` want it.
const ETH_P_IPV6_BE: u16 = (libc::ETH_P_IPV6 as u16).to_be();

/// Largest packet read: an IPv6 header and the largest payload length.
pub const MAX_PACKET: usize = 40 + 65535;

/// Where a packet came from, as the kernel reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RxInfo {
    /// Bytes received (the IPv6 packet).
    pub len: usize,
    /// The receiving interface.
    pub ifindex: u32,
    /// `sll_pkttype`: `PACKET_HOST`, `PACKET_MULTICAST`, `PACKET_OUTGOING`...
    pub pkttype: u8,
    /// The sender's MAC, for Ethernet-style links.
    pub src_mac: Option<[u8; 6]>,
    /// The VLAN id of a tagged frame (0 for priority-tagged frames).
    pub vlan_id: Option<u16>,
    /// False when the sender left the checksum to hardware
    /// (`TP_STATUS_CSUMNOTREADY`): the packet's checksum field is not final.
    pub checksum_ready: bool,
    /// The packet was longer than the buffer and was cut.
    pub truncated: bool,
}

/// The `AF_PACKET` socket.
#[derive(Debug)]
pub struct PacketSocket {
    fd: OwnedFd,
}

fn check(rc: libc::c_int, what: &str) -> io::Result<libc::c_int> {
    if rc < 0 {
        let e = io::Error::last_os_error();
        Err(io::Error::new(e.kind(), format!("{what}: {e}")))
    } else {
        Ok(rc)
    }
}

fn setsockopt<T>(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: &T,
    what: &str,
) -> io::Result<()> {
    // SAFETY: `value` is a live, initialised `T` borrowed for the call and
    // its exact size is passed; setsockopt only reads it.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (value as *const T).cast(),
            size_of::<T>() as libc::socklen_t,
        )
    };
    check(rc, what).map(|_| ())
}

fn sockaddr_ll(ifindex: u32, mac: Option<[u8; 6]>) -> io::Result<libc::sockaddr_ll> {
    let index = i32::try_from(ifindex)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, format!("ifindex {ifindex}")))?;
    // SAFETY: sockaddr_ll is plain old data; all zeroes is a valid value.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = ETH_P_IPV6_BE;
    sll.sll_ifindex = index;
    if let Some(mac) = mac {
        sll.sll_halen = 6;
        sll.sll_addr[..6].copy_from_slice(&mac);
    }
    Ok(sll)
}

impl PacketSocket {
    /// Opens the socket, attaches the ND filter, asks for aux data, then
    /// binds it to IPv6 on every interface. It is opened with protocol 0
    /// (which receives nothing) and bound only after the filter is in
    /// place, so no unfiltered packet is ever queued. Needs CAP_NET_RAW.
    pub fn open() -> io::Result<PacketSocket> {
        // SAFETY: socket takes integer arguments only.
        let raw = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
            )
        };
        let raw = check(raw, "socket(AF_PACKET, SOCK_DGRAM)")?;
        // SAFETY: socket just returned this descriptor; nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };

        let mut insns: Vec<libc::sock_filter> = ND_FILTER
            .iter()
            .map(|i: &Insn| libc::sock_filter {
                code: i.code,
                jt: i.jt,
                jf: i.jf,
                k: i.k,
            })
            .collect();
        let prog = libc::sock_fprog {
            len: insns.len() as u16,
            filter: insns.as_mut_ptr(),
        };
        // The kernel copies the program during the call; `insns` outlives it.
        setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            &prog,
            "setsockopt(SO_ATTACH_FILTER)",
        )?;
        let on: libc::c_int = 1;
        setsockopt(
            fd.as_raw_fd(),
            libc::SOL_PACKET,
            libc::PACKET_AUXDATA,
            &on,
            "setsockopt(PACKET_AUXDATA)",
        )?;
        let sll = sockaddr_ll(0, None)?;
        // SAFETY: `sll` is a valid sockaddr_ll and its size is passed.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&sll as *const libc::sockaddr_ll).cast(),
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        check(rc, "bind(AF_PACKET, ETH_P_IPV6)")?;
        Ok(PacketSocket { fd })
    }

    /// Reads one packet into `buf`; `Ok(None)` when none is waiting.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<Option<RxInfo>> {
        // SAFETY: all zeroes is a valid sockaddr_ll (plain old data).
        let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        // Room for one tpacket_auxdata control message, 8-byte aligned.
        let mut control = [0u64; 8];
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // SAFETY: all zeroes is a valid msghdr; the pointers are set below.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_name = (&mut from as *mut libc::sockaddr_ll).cast();
        msg.msg_namelen = size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = size_of::<[u64; 8]>();
        let n = loop {
            // SAFETY: every pointer in `msg` refers to a live local (`from`,
            // `iov` -> `buf`, `control`) whose size is given; the kernel
            // writes at most those sizes.
            let n = unsafe { libc::recvmsg(self.fd.as_raw_fd(), &mut msg, libc::MSG_TRUNC) };
            if n >= 0 {
                break n as usize;
            }
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock => return Ok(None),
                _ => return Err(io::Error::new(e.kind(), format!("recvmsg(AF_PACKET): {e}"))),
            }
        };
        let mut info = RxInfo {
            len: n.min(buf.len()),
            ifindex: u32::try_from(from.sll_ifindex).unwrap_or(0),
            pkttype: from.sll_pkttype,
            src_mac: (from.sll_halen == 6).then(|| {
                let mut mac = [0u8; 6];
                mac.copy_from_slice(&from.sll_addr[..6]);
                mac
            }),
            vlan_id: None,
            checksum_ready: true,
            truncated: n > buf.len() || msg.msg_flags & libc::MSG_TRUNC != 0,
        };
        // SAFETY: `msg` was filled by a successful recvmsg; CMSG_FIRSTHDR
        // and CMSG_NXTHDR stay within msg_control/msg_controllen.
        let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(&msg) };
        while !cmsg.is_null() {
            // SAFETY: a non-null pointer from CMSG_FIRSTHDR/NXTHDR points to
            // a complete cmsghdr inside `control`.
            let hdr = unsafe { &*cmsg };
            let data_len = hdr.cmsg_len as usize;
            if hdr.cmsg_level == libc::SOL_PACKET
                && hdr.cmsg_type == libc::PACKET_AUXDATA
                // SAFETY: CMSG_LEN only computes a length.
                && data_len >= unsafe { libc::CMSG_LEN(size_of::<libc::tpacket_auxdata>() as u32) } as usize
            {
                // SAFETY: the length check above shows a whole
                // tpacket_auxdata follows the header; it may be unaligned.
                let aux: libc::tpacket_auxdata =
                    unsafe { std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast()) };
                if aux.tp_status & libc::TP_STATUS_VLAN_VALID != 0 {
                    info.vlan_id = Some(aux.tp_vlan_tci & 0x0fff);
                }
                if aux.tp_status & libc::TP_STATUS_CSUMNOTREADY != 0 {
                    info.checksum_ready = false;
                }
            }
            // SAFETY: as for CMSG_FIRSTHDR above.
            cmsg = unsafe { libc::CMSG_NXTHDR(&msg, cmsg) };
        }
        Ok(Some(info))
    }

    /// Sends `packet` (a whole IPv6 packet) out of `ifindex` to `dst_mac`.
    pub fn send(&self, ifindex: u32, dst_mac: [u8; 6], packet: &[u8]) -> io::Result<()> {
        let sll = sockaddr_ll(ifindex, Some(dst_mac))?;
        loop {
            // SAFETY: `packet` and `sll` are live for the call and their
            // sizes are passed; sendto only reads them.
            let n = unsafe {
                libc::sendto(
                    self.fd.as_raw_fd(),
                    packet.as_ptr().cast(),
                    packet.len(),
                    libc::MSG_DONTWAIT,
                    (&sll as *const libc::sockaddr_ll).cast(),
                    size_of::<libc::sockaddr_ll>() as libc::socklen_t,
                )
            };
            if n >= 0 {
                return Ok(());
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    fn membership(&self, ifindex: u32, add: bool) -> io::Result<()> {
        let index = i32::try_from(ifindex).map_err(|_| {
            io::Error::new(io::ErrorKind::InvalidInput, format!("ifindex {ifindex}"))
        })?;
        let mreq = libc::packet_mreq {
            mr_ifindex: index,
            mr_type: libc::PACKET_MR_ALLMULTI as u16,
            mr_alen: 0,
            mr_address: [0; 8],
        };
        let (name, what) = if add {
            (libc::PACKET_ADD_MEMBERSHIP, "PACKET_ADD_MEMBERSHIP")
        } else {
            (libc::PACKET_DROP_MEMBERSHIP, "PACKET_DROP_MEMBERSHIP")
        };
        setsockopt(
            self.fd.as_raw_fd(),
            libc::SOL_PACKET,
            name,
            &mreq,
            &format!("setsockopt({what} ALLMULTI, ifindex {ifindex})"),
        )
    }

    /// Puts `ifindex` in all-multicast mode for as long as this socket
    /// lives (or until [`PacketSocket::leave_allmulti`]).
    pub fn join_allmulti(&self, ifindex: u32) -> io::Result<()> {
        self.membership(ifindex, true)
    }

    /// Releases this socket's all-multicast hold on `ifindex`.
    pub fn leave_allmulti(&self, ifindex: u32) -> io::Result<()> {
        self.membership(ifindex, false)
    }
}

impl AsRawFd for PacketSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}
