//! nf_tables over netlink: message building, attribute parsing and the
//! socket that sends one batch (one kernel transaction) or one dump.
//!
//! Only what patchpanel's backend needs; numbers from
//! `include/uapi/linux/netfilter/nf_tables.h` and `nfnetlink.h`.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

pub const NFNL_SUBSYS_NFTABLES: u16 = 10;
pub const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
pub const NFNL_MSG_BATCH_END: u16 = 0x11;

pub const NFPROTO_IPV4: u8 = 2;
pub const NFPROTO_IPV6: u8 = 10;

/// `enum nf_tables_msg_types`.
pub mod msg {
    pub const NEWTABLE: u16 = 0;
    pub const GETTABLE: u16 = 1;
    pub const DELTABLE: u16 = 2;
    pub const NEWCHAIN: u16 = 3;
    pub const GETCHAIN: u16 = 4;
    pub const DELCHAIN: u16 = 5;
    pub const NEWRULE: u16 = 6;
    pub const GETRULE: u16 = 7;
    pub const DELRULE: u16 = 8;
}

pub mod table_attr {
    pub const NAME: u16 = 1;
}

pub mod chain_attr {
    pub const TABLE: u16 = 1;
    pub const NAME: u16 = 3;
    pub const HOOK: u16 = 4;
    pub const POLICY: u16 = 5;
    pub const TYPE: u16 = 7;
    pub const HOOK_NUM: u16 = 1;
    pub const HOOK_PRIORITY: u16 = 2;
}

pub mod rule_attr {
    pub const TABLE: u16 = 1;
    pub const CHAIN: u16 = 2;
    pub const HANDLE: u16 = 3;
    pub const EXPRESSIONS: u16 = 4;
    pub const POSITION: u16 = 6;
    pub const USERDATA: u16 = 7;
    pub const ID: u16 = 9;
    pub const POSITION_ID: u16 = 10;
}

pub const NFTA_LIST_ELEM: u16 = 1;
pub const NFTA_EXPR_NAME: u16 = 1;
pub const NFTA_EXPR_DATA: u16 = 2;

const NLA_F_NESTED: u16 = 0x8000;
const NLA_TYPE_MASK: u16 = 0x3fff;
const NLMSG_HDRLEN: usize = 16;
const NFGENMSG_LEN: usize = 4;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;

pub const NLM_F_REQUEST: u16 = 0x1;
pub const NLM_F_ACK: u16 = 0x4;
pub const NLM_F_ECHO: u16 = 0x8;
pub const NLM_F_DUMP: u16 = 0x300;
pub const NLM_F_EXCL: u16 = 0x200;
pub const NLM_F_CREATE: u16 = 0x400;
pub const NLM_F_APPEND: u16 = 0x800;

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// One netlink message under construction: header, `nfgenmsg`, attributes.
#[derive(Debug, Clone)]
pub struct MsgBuilder {
    buf: Vec<u8>,
}

impl MsgBuilder {
    /// A message of nf_tables type `msg` (or a batch marker when
    /// `subsys_type` is given whole), for `family`.
    pub fn new(nl_type: u16, flags: u16, seq: u32, family: u8, res_id: u16) -> MsgBuilder {
        let mut buf = Vec::with_capacity(256);
        buf.extend_from_slice(&0u32.to_ne_bytes()); // length, set by finish
        buf.extend_from_slice(&nl_type.to_ne_bytes());
        buf.extend_from_slice(&flags.to_ne_bytes());
        buf.extend_from_slice(&seq.to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel's
        buf.push(family);
        buf.push(0); // NFNETLINK_V0
        buf.extend_from_slice(&res_id.to_be_bytes());
        MsgBuilder { buf }
    }

    /// An nf_tables request.
    pub fn nft(msg_type: u16, flags: u16, seq: u32, family: u8) -> MsgBuilder {
        MsgBuilder::new(
            (NFNL_SUBSYS_NFTABLES << 8) | msg_type,
            NLM_F_REQUEST | flags,
            seq,
            family,
            0,
        )
    }

    pub fn attr(&mut self, ty: u16, data: &[u8]) -> &mut Self {
        let len = 4 + data.len();
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(data);
        self.buf.resize(align4(self.buf.len()), 0);
        self
    }

    /// A NUL-terminated string.
    pub fn str(&mut self, ty: u16, s: &str) -> &mut Self {
        let mut data = Vec::with_capacity(s.len() + 1);
        data.extend_from_slice(s.as_bytes());
        data.push(0);
        self.attr(ty, &data)
    }

    pub fn be32(&mut self, ty: u16, v: u32) -> &mut Self {
        self.attr(ty, &v.to_be_bytes())
    }

    pub fn be64(&mut self, ty: u16, v: u64) -> &mut Self {
        self.attr(ty, &v.to_be_bytes())
    }

    /// Opens a nested attribute; close it with [`MsgBuilder::end`].
    pub fn nest(&mut self, ty: u16) -> usize {
        let at = self.buf.len();
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf
            .extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
        at
    }

    pub fn end(&mut self, at: usize) {
        let len = (self.buf.len() - at) as u16;
        self.buf[at..at + 2].copy_from_slice(&len.to_ne_bytes());
    }

    pub fn finish(mut self) -> Vec<u8> {
        let len = self.buf.len() as u32;
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        self.buf
    }
}

/// The attributes of `buf`, as `(type without flags, payload)`. Stops at
/// the first malformed one.
pub fn attrs(buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    let mut rest = buf;
    std::iter::from_fn(move || {
        if rest.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([rest[0], rest[1]]) as usize;
        let ty = u16::from_ne_bytes([rest[2], rest[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > rest.len() {
            return None;
        }
        let payload = &rest[4..len];
        rest = &rest[align4(len).min(rest.len())..];
        Some((ty, payload))
    })
}

pub fn attr(buf: &[u8], ty: u16) -> Option<&[u8]> {
    attrs(buf).find(|(t, _)| *t == ty).map(|(_, p)| p)
}

pub fn attr_str(buf: &[u8], ty: u16) -> Option<String> {
    attr(buf, ty).map(|p| {
        let end = p.iter().position(|&b| b == 0).unwrap_or(p.len());
        String::from_utf8_lossy(&p[..end]).into_owned()
    })
}

pub fn attr_be64(buf: &[u8], ty: u16) -> Option<u64> {
    attr(buf, ty).and_then(|p| Some(u64::from_be_bytes(p.get(..8)?.try_into().ok()?)))
}

pub fn attr_be32(buf: &[u8], ty: u16) -> Option<u32> {
    attr(buf, ty).and_then(|p| Some(u32::from_be_bytes(p.get(..4)?.try_into().ok()?)))
}

/// The first four bytes of `b` as a host-order u32 (0 if shorter).
fn ne_u32(b: &[u8]) -> u32 {
    b.get(..4)
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .map(u32::from_ne_bytes)
        .unwrap_or(0)
}

/// One message received from the kernel.
#[derive(Debug, Clone)]
pub struct Reply {
    pub nl_type: u16,
    /// The `nfgenmsg` family.
    pub family: u8,
    pub seq: u32,
    /// Everything after the `nfgenmsg` (for nf_tables messages).
    pub attrs: Vec<u8>,
}

/// Splits a received datagram into (type, sequence, payload) messages.
pub fn split_messages(buf: &[u8]) -> io::Result<Vec<(u16, u32, Vec<u8>)>> {
    let mut out = Vec::new();
    let mut rest = buf;
    while rest.len() >= NLMSG_HDRLEN {
        let len = ne_u32(&rest[0..4]) as usize;
        if len < NLMSG_HDRLEN || len > rest.len() {
            return Err(io::Error::other("malformed netlink message"));
        }
        let ty = u16::from_ne_bytes([rest[4], rest[5]]);
        let seq = ne_u32(&rest[8..12]);
        out.push((ty, seq, rest[NLMSG_HDRLEN..len].to_vec()));
        rest = &rest[align4(len).min(rest.len())..];
    }
    Ok(out)
}

impl Reply {
    /// A received message other than an error or DONE, if it carries the
    /// `nfgenmsg` header.
    pub fn from_message(nl_type: u16, seq: u32, payload: &[u8]) -> Option<Reply> {
        (payload.len() >= NFGENMSG_LEN).then(|| Reply {
            nl_type,
            family: payload[0],
            seq,
            attrs: payload[NFGENMSG_LEN..].to_vec(),
        })
    }

    /// The nf_tables message type, if it is one.
    pub fn nft_type(&self) -> Option<u16> {
        (self.nl_type >> 8 == NFNL_SUBSYS_NFTABLES).then_some(self.nl_type & 0xff)
    }
}

/// A kernel error for one message of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NlError {
    pub seq: u32,
    pub errno: i32,
}

/// An `AF_NETLINK`/`NETLINK_NETFILTER` socket.
#[derive(Debug)]
pub struct NfSocket {
    fd: OwnedFd,
    seq: u32,
}

impl NfSocket {
    pub fn open() -> io::Result<NfSocket> {
        // SAFETY: plain socket(2); the result is checked.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_NETFILTER,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let sock = NfSocket { fd, seq: 1 };
        // Echoed rules of a large batch come back at once.
        sock.setsockopt(libc::SOL_SOCKET, libc::SO_RCVBUF, 4 << 20);
        sock.setsockopt(libc::SOL_SOCKET, libc::SO_SNDBUF, 4 << 20);
        // Extended acks carry the kernel's message; not needed to work.
        sock.setsockopt(libc::SOL_NETLINK, libc::NETLINK_EXT_ACK, 1);
        let tv = libc::timeval {
            tv_sec: 10,
            tv_usec: 0,
        };
        // SAFETY: tv is a valid timeval for the duration of the call.
        unsafe {
            libc::setsockopt(
                sock.fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                &tv as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            );
        }
        Ok(sock)
    }

    fn setsockopt(&self, level: libc::c_int, name: libc::c_int, value: libc::c_int) {
        // SAFETY: value is a valid c_int for the duration of the call.
        unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                level,
                name,
                &value as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }

    /// Reserves `n` sequence numbers and returns the first.
    pub fn next_seq(&mut self, n: u32) -> u32 {
        let first = self.seq;
        self.seq = self.seq.wrapping_add(n).max(1);
        first
    }

    fn send(&self, buf: &[u8]) -> io::Result<()> {
        // SAFETY: sockaddr_nl is plain data; all zeroes is the kernel's address.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: buf and addr are valid for the call.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                buf.as_ptr() as *const libc::c_void,
                buf.len(),
                0,
                &addr as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        if n as usize != buf.len() {
            return Err(io::Error::other(format!(
                "short netlink send: {n} of {} bytes",
                buf.len()
            )));
        }
        Ok(())
    }

    /// Receives one datagram and splits it into messages.
    fn recv(&self, buf: &mut Vec<u8>) -> io::Result<Vec<(u16, u32, Vec<u8>)>> {
        loop {
            // SAFETY: buf has buf.len() writable bytes.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr() as *mut libc::c_void,
                    buf.len(),
                    libc::MSG_TRUNC,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                if e.kind() == io::ErrorKind::WouldBlock {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "no answer from nf_tables within 10 s",
                    ));
                }
                return Err(e);
            }
            let n = n as usize;
            if n > buf.len() {
                buf.resize(n.next_power_of_two(), 0);
                return Err(io::Error::other(format!(
                    "netlink message of {n} bytes truncated"
                )));
            }
            return split_messages(&buf[..n]);
        }
    }

    /// Sends `messages` (sequence numbers `first_seq..`) as one
    /// transaction. The last one carries `NLM_F_ACK`; every error is
    /// reported by the kernel whatever the flags. Returns the messages the
    /// kernel sent back before the final ack (echoes), or the errors.
    pub fn transact(
        &mut self,
        messages: Vec<Vec<u8>>,
        last_seq: u32,
    ) -> io::Result<Result<Vec<Reply>, Vec<NlError>>> {
        let batch_seq = self.next_seq(2);
        let mut buf = MsgBuilder::new(
            NFNL_MSG_BATCH_BEGIN,
            NLM_F_REQUEST,
            batch_seq,
            0,
            NFNL_SUBSYS_NFTABLES,
        )
        .finish();
        for m in &messages {
            buf.extend_from_slice(m);
        }
        buf.extend_from_slice(
            &MsgBuilder::new(
                NFNL_MSG_BATCH_END,
                NLM_F_REQUEST,
                batch_seq.wrapping_add(1),
                0,
                NFNL_SUBSYS_NFTABLES,
            )
            .finish(),
        );
        self.send(&buf)?;
        let mut errors = Vec::new();
        let mut echoes = Vec::new();
        let mut rbuf = vec![0u8; 1 << 16];
        loop {
            for (ty, seq, payload) in self.recv(&mut rbuf)? {
                if ty == NLMSG_ERROR {
                    let errno = payload
                        .get(..4)
                        .map(|b| ne_u32(b) as i32)
                        .unwrap_or(-libc::EPROTO);
                    if errno != 0 {
                        errors.push(NlError { seq, errno: -errno });
                    }
                    if seq == last_seq {
                        return Ok(if errors.is_empty() {
                            Ok(echoes)
                        } else {
                            Err(errors)
                        });
                    }
                    if errno != 0 && (errno == -libc::ENOBUFS || errno == -libc::ENOMEM) {
                        return Ok(Err(errors));
                    }
                } else if ty != NLMSG_DONE {
                    echoes.extend(Reply::from_message(ty, seq, &payload));
                }
            }
        }
    }

    /// Sends one message that is not part of a batch (`NLM_F_ACK` set by
    /// the caller) and waits for its ack: `Ok(Ok(()))`, or the kernel's
    /// errno.
    pub fn request(&mut self, message: &[u8], seq: u32) -> io::Result<Result<(), i32>> {
        self.send(message)?;
        let mut rbuf = vec![0u8; 1 << 12];
        loop {
            for (ty, rseq, payload) in self.recv(&mut rbuf)? {
                if rseq != seq || ty != NLMSG_ERROR {
                    continue;
                }
                let errno = payload
                    .get(..4)
                    .map(|b| ne_u32(b) as i32)
                    .unwrap_or(-libc::EPROTO);
                return Ok(if errno == 0 { Ok(()) } else { Err(-errno) });
            }
        }
    }

    /// Runs one dump request and returns every object of it.
    pub fn dump(
        &mut self,
        msg_type: u16,
        family: u8,
        attrs: &[(u16, &str)],
    ) -> io::Result<Vec<Reply>> {
        let seq = self.next_seq(1);
        let mut m = MsgBuilder::nft(msg_type, NLM_F_DUMP | NLM_F_ACK, seq, family);
        for (ty, s) in attrs {
            m.str(*ty, s);
        }
        self.send(&m.finish())?;
        let mut out = Vec::new();
        let mut rbuf = vec![0u8; 1 << 16];
        loop {
            for (ty, rseq, payload) in self.recv(&mut rbuf)? {
                if rseq != seq {
                    continue;
                }
                match ty {
                    NLMSG_DONE => return Ok(out),
                    NLMSG_ERROR => {
                        let errno = payload
                            .get(..4)
                            .map(|b| ne_u32(b) as i32)
                            .unwrap_or(-libc::EPROTO);
                        if errno == 0 {
                            return Ok(out);
                        }
                        return Err(io::Error::from_raw_os_error(-errno));
                    }
                    _ => out.extend(Reply::from_message(ty, rseq, &payload)),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_message_has_the_bytes_libnftnl_would_send() {
        let mut m = MsgBuilder::nft(msg::NEWTABLE, NLM_F_CREATE | NLM_F_ACK, 7, NFPROTO_IPV4);
        m.str(table_attr::NAME, "pp");
        let bytes = m.finish();
        let mut want = Vec::new();
        want.extend_from_slice(&28u32.to_ne_bytes());
        want.extend_from_slice(&0x0a00u16.to_ne_bytes());
        want.extend_from_slice(&0x0405u16.to_ne_bytes());
        want.extend_from_slice(&7u32.to_ne_bytes());
        want.extend_from_slice(&0u32.to_ne_bytes());
        want.extend_from_slice(&[2, 0, 0, 0]);
        want.extend_from_slice(&7u16.to_ne_bytes());
        want.extend_from_slice(&1u16.to_ne_bytes());
        want.extend_from_slice(b"pp\0\0");
        assert_eq!(bytes, want);
    }

    #[test]
    fn nested_attributes_parse_back() {
        let mut m = MsgBuilder::nft(msg::NEWRULE, 0, 1, NFPROTO_IPV6);
        let n = m.nest(rule_attr::EXPRESSIONS);
        m.str(NFTA_EXPR_NAME, "counter");
        m.be64(2, 42);
        m.end(n);
        m.str(rule_attr::CHAIN, "c");
        let bytes = m.finish();
        let body = &bytes[NLMSG_HDRLEN + NFGENMSG_LEN..];
        let list: Vec<_> = attrs(body).collect();
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].0, rule_attr::EXPRESSIONS);
        assert_eq!(
            attr_str(list[0].1, NFTA_EXPR_NAME).as_deref(),
            Some("counter")
        );
        assert_eq!(attr_be64(list[0].1, 2), Some(42));
        assert_eq!(attr_str(body, rule_attr::CHAIN).as_deref(), Some("c"));
    }

    #[test]
    fn a_truncated_attribute_ends_the_walk() {
        let buf = [8u8, 0, 1, 0, 1, 2];
        assert_eq!(attrs(&buf).count(), 0);
    }
}
