//! The request/reply engine: one `NETLINK_ROUTE` socket bound to one network
//! namespace, with sequence numbers, acks and dumps.
//!
//! Every non-dump request carries `NLM_F_ACK`, so success is confirmed by the
//! kernel rather than assumed, and a failure comes back as the ack's errno.
//! Dumps end with `NLMSG_DONE` (which carries the dump's errno), and a dump
//! the kernel marks `NLM_F_DUMP_INTR` (the table changed underneath it) is
//! retried. Replies whose sequence number is not the current request's (left
//! over from a request abandoned by an error) are skipped.

use std::cell::Cell;
use std::fmt;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};

use neli::consts::nl::NlmF;
use neli::consts::rtnl::Rtm;
use neli::consts::socket::{Msg, NlFamily};
use neli::socket::NlSocket;
use neli::utils::Groups;
use neli::{Size, ToBytes};

use crate::error::{Result, RtnlError};
use crate::sys;
use crate::wire::{self, RawMsg};

/// Receive buffer size. The kernel sizes dump datagrams to at most 32 KiB
/// (`netlink_dump`), so this never truncates one.
pub(crate) const RECV_BUF: usize = 64 * 1024;
/// How often a dump interrupted by a concurrent change is retried.
const DUMP_ATTEMPTS: usize = 5;

/// Opens a `NETLINK_ROUTE` socket in the calling thread's network namespace,
/// joined to the multicast groups in the `RTMGRP_*` bitmask `groups`.
pub(crate) fn open_route_socket(groups: u32) -> Result<NlSocket> {
    let sock = NlSocket::connect(NlFamily::Route, None, Groups::new_bitmask(groups))
        .map_err(|e| RtnlError::sys("open NETLINK_ROUTE socket", e))?;
    // Extended acks give the kernel's reason ("Attribute failed policy
    // validation") alongside the errno; worth having in every error.
    sock.enable_ext_ack(true)
        .map_err(|e| RtnlError::sys("enable NETLINK_EXT_ACK", e))?;
    Ok(sock)
}

/// A synchronous rtnetlink handle bound to one network namespace.
///
/// Not `Sync`: requests on one socket must not interleave. Open one per
/// thread (or per namespace) instead.
pub struct Rtnl {
    sock: NlSocket,
    seq: Cell<u32>,
}

impl fmt::Debug for Rtnl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rtnl")
            .field("fd", &self.sock.as_raw_fd())
            .field("seq", &self.seq.get())
            .finish()
    }
}

impl Rtnl {
    /// A socket in the calling thread's network namespace.
    pub fn new() -> Result<Self> {
        Ok(Self::from_socket(open_route_socket(0)?))
    }

    /// A socket in the network namespace `ns` (an fd of `/proc/<pid>/ns/net`
    /// or a named netns file). The socket is created on a short-lived thread
    /// that joins `ns`; the calling thread never changes namespace. Needs
    /// CAP_SYS_ADMIN.
    pub fn in_netns(ns: BorrowedFd<'_>) -> Result<Self> {
        let sock = sys::in_netns(ns, "open NETLINK_ROUTE socket in netns", || {
            open_route_socket(0)
        })?;
        Ok(Self::from_socket(sock))
    }

    fn from_socket(sock: NlSocket) -> Self {
        // Start from a non-zero sequence so a stray reply with seq 0 (as the
        // kernel uses for notifications) is never mistaken for ours.
        Rtnl {
            sock,
            seq: Cell::new(1),
        }
    }

    fn next_seq(&self) -> u32 {
        let seq = self.seq.get().wrapping_add(1).max(1);
        self.seq.set(seq);
        seq
    }

    fn send(&self, op: &str, bytes: &[u8]) -> Result<()> {
        loop {
            match self.sock.send(bytes, Msg::empty()) {
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(RtnlError::sys(format!("{op}: send"), e)),
            }
        }
    }

    fn recv(&self, op: &str, buf: &mut [u8]) -> Result<usize> {
        loop {
            match self.sock.recv(&mut *buf, Msg::empty()) {
                Ok((n, _)) => return Ok(n),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(RtnlError::sys(format!("{op}: recv"), e)),
            }
        }
    }

    /// Sends one request and reads replies until its ack (or, for a dump,
    /// its `NLMSG_DONE`). `on_reply` sees every other message for this
    /// request. Returns whether the kernel flagged the dump as interrupted.
    fn exchange<P>(
        &self,
        op: &str,
        ty: Rtm,
        flags: NlmF,
        body: P,
        on_reply: &mut dyn FnMut(&RawMsg<'_>) -> std::result::Result<(), String>,
    ) -> Result<bool>
    where
        P: Size + ToBytes + fmt::Debug,
    {
        let dump = flags.contains(NlmF::DUMP);
        let mut flags = flags | NlmF::REQUEST;
        if !dump {
            flags |= NlmF::ACK;
        }
        let seq = self.next_seq();
        let bytes = wire::encode(ty, flags, seq, body).map_err(|detail| RtnlError::Encode {
            op: op.to_string(),
            detail,
        })?;
        self.send(op, &bytes)?;

        let malformed = |detail: String| RtnlError::Malformed {
            op: op.to_string(),
            detail,
        };
        let mut buf = vec![0u8; RECV_BUF];
        let mut interrupted = false;
        // A reply that does not parse is remembered, and the rest of the
        // exchange is still drained so the socket is clean for the next request.
        let mut first_bad: Option<String> = None;
        loop {
            let n = self.recv(op, &mut buf)?;
            if n == 0 {
                return Err(malformed("socket returned end of file".into()));
            }
            let msgs = wire::split_messages(&buf[..n]).map_err(malformed)?;
            for m in msgs {
                if m.seq != seq {
                    continue;
                }
                match i32::from(m.ty) {
                    libc::NLMSG_ERROR | libc::NLMSG_DONE => {
                        let (errno, message) =
                            wire::parse_status(m.ty, m.flags, m.payload).map_err(malformed)?;
                        if errno != 0 {
                            return Err(RtnlError::Kernel {
                                op: op.to_string(),
                                errno,
                                message,
                            });
                        }
                        if dump && i32::from(m.ty) == libc::NLMSG_ERROR {
                            // An ack inside a dump (not sent by current
                            // kernels): the dump still ends with DONE.
                            continue;
                        }
                        return match first_bad {
                            Some(detail) => Err(malformed(detail)),
                            None => Ok(interrupted),
                        };
                    }
                    libc::NLMSG_NOOP | libc::NLMSG_OVERRUN => {}
                    _ => {
                        if m.flags & libc::NLM_F_DUMP_INTR as u16 != 0 {
                            interrupted = true;
                        }
                        if first_bad.is_none() {
                            if let Err(detail) = on_reply(&m) {
                                first_bad = Some(detail);
                            }
                        }
                    }
                }
            }
        }
    }

    /// A request answered only by an ack.
    pub(crate) fn ack<P>(&self, op: &str, ty: Rtm, flags: NlmF, body: P) -> Result<()>
    where
        P: Size + ToBytes + fmt::Debug,
    {
        self.exchange(op, ty, flags, body, &mut |_| Ok(()))
            .map(|_| ())
    }

    /// A non-dump request that returns messages before its ack (a `GET` of
    /// one object).
    pub(crate) fn get<P, T>(
        &self,
        op: &str,
        ty: Rtm,
        body: P,
        parse: impl Fn(&RawMsg<'_>) -> std::result::Result<Option<T>, String>,
    ) -> Result<Vec<T>>
    where
        P: Size + ToBytes + fmt::Debug,
    {
        let mut out = Vec::new();
        self.exchange(op, ty, NlmF::empty(), body, &mut |m| {
            if let Some(t) = parse(m)? {
                out.push(t);
            }
            Ok(())
        })?;
        Ok(out)
    }

    /// A dump; `body` builds the request (called again when the dump is
    /// retried after an interruption).
    pub(crate) fn dump<P, T>(
        &self,
        op: &str,
        ty: Rtm,
        body: impl Fn() -> std::result::Result<P, String>,
        parse: impl Fn(&RawMsg<'_>) -> std::result::Result<Option<T>, String>,
    ) -> Result<Vec<T>>
    where
        P: Size + ToBytes + fmt::Debug,
    {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut out = Vec::new();
            let request = body().map_err(|detail| RtnlError::Encode {
                op: op.to_string(),
                detail,
            })?;
            let interrupted = self.exchange(op, ty, NlmF::DUMP, request, &mut |m| {
                if let Some(t) = parse(m)? {
                    out.push(t);
                }
                Ok(())
            })?;
            if !interrupted || attempt >= DUMP_ATTEMPTS {
                if interrupted {
                    return Err(RtnlError::Kernel {
                        op: op.to_string(),
                        errno: libc::EINTR,
                        message: Some(format!("dump interrupted {attempt} times in a row")),
                    });
                }
                return Ok(out);
            }
        }
    }
}

impl AsRawFd for Rtnl {
    fn as_raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
}

/// Maps a kernel errno that means "already so" to `Ok(false)`.
pub(crate) fn benign(res: Result<()>, errnos: &[i32]) -> Result<bool> {
    match res {
        Ok(()) => Ok(true),
        Err(RtnlError::Kernel { errno, .. }) if errnos.contains(&errno) => Ok(false),
        Err(e) => Err(e),
    }
}
