//! One end of a manager <-> helper `SOCK_SEQPACKET` socket pair.
//!
//! A packet holds one encoded message and at most [`MAX_FDS`] descriptors.
//! Receiving never allocates more than [`MAX_MESSAGE_SIZE`] bytes: a larger
//! packet is truncated by the kernel, detected with `MSG_TRUNC`, and reported
//! as an error (the descriptors that came with it are closed).

use std::io;
use std::mem::{size_of, MaybeUninit};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use serde::{de::DeserializeOwned, Serialize};

use crate::codec::{self, CodecError};
use crate::{MAX_FDS, MAX_MESSAGE_SIZE};

#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error("peer closed the channel")]
    Closed,
    #[error("no message is waiting")]
    WouldBlock,
    #[error("packet larger than {MAX_MESSAGE_SIZE} bytes")]
    Oversize,
    #[error("more than {MAX_FDS} descriptors in one packet")]
    TooManyFds,
    #[error("empty packet")]
    EmptyPacket,
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error("socket error: {0}")]
    Io(#[from] io::Error),
}

impl ChannelError {
    /// Whether the channel can still be used after this error.
    ///
    /// A malformed packet is the peer's fault but does not desynchronise a
    /// packet socket; the caller decides whether to keep talking.
    pub fn is_fatal(&self) -> bool {
        matches!(self, ChannelError::Closed | ChannelError::Io(_))
    }
}

/// A decoded message and the descriptors that came with it.
#[derive(Debug)]
pub struct Received<T> {
    pub msg: T,
    pub fds: Vec<OwnedFd>,
}

/// One end of a `SOCK_SEQPACKET` pair.
#[derive(Debug)]
pub struct Channel {
    fd: OwnedFd,
}

const CMSG_BUF_LEN: usize = 128;

impl Channel {
    /// Creates a connected pair; both ends are close-on-exec.
    pub fn pair() -> io::Result<(Channel, Channel)> {
        let mut fds = [0 as RawFd; 2];
        // SAFETY: `fds` is a valid array of two ints for socketpair to fill.
        let rc = unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
                0,
                fds.as_mut_ptr(),
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: socketpair succeeded, so both descriptors are open and ours.
        let (a, b) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        Ok((Channel { fd: a }, Channel { fd: b }))
    }

    /// Wraps an inherited descriptor (a helper's `--ipc-fd`). Fails unless it
    /// is a `SOCK_SEQPACKET` socket, so a wrong number is caught at start.
    pub fn from_fd(fd: OwnedFd) -> io::Result<Channel> {
        let mut ty: libc::c_int = 0;
        let mut len = size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: `ty` and `len` are valid for writes of the sizes given.
        let rc = unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_TYPE,
                (&mut ty as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        if ty != libc::SOCK_SEQPACKET {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("fd {} is not a SOCK_SEQPACKET socket", fd.as_raw_fd()),
            ));
        }
        Ok(Channel { fd })
    }

    pub fn into_fd(self) -> OwnedFd {
        self.fd
    }

    /// Switches the socket to non-blocking mode (for use in a mio loop).
    pub fn set_nonblocking(&self, on: bool) -> io::Result<()> {
        // SAFETY: F_GETFL/F_SETFL on a descriptor we own.
        unsafe {
            let flags = libc::fcntl(self.fd.as_raw_fd(), libc::F_GETFL);
            if flags < 0 {
                return Err(io::Error::last_os_error());
            }
            let flags = if on {
                flags | libc::O_NONBLOCK
            } else {
                flags & !libc::O_NONBLOCK
            };
            if libc::fcntl(self.fd.as_raw_fd(), libc::F_SETFL, flags) < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    }

    /// Sends one message with optional descriptors.
    pub fn send<T: Serialize>(&self, msg: &T, fds: &[BorrowedFd<'_>]) -> Result<(), ChannelError> {
        let bytes = codec::encode(msg)?;
        self.send_raw(&bytes, fds)
    }

    /// Sends pre-encoded bytes as one packet. Exposed for tests and fuzzing
    /// of the receiving side.
    pub fn send_raw(&self, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> Result<(), ChannelError> {
        if fds.len() > MAX_FDS {
            return Err(ChannelError::TooManyFds);
        }
        let mut iov = libc::iovec {
            iov_base: bytes.as_ptr() as *mut libc::c_void,
            iov_len: bytes.len(),
        };
        let mut cmsg_buf = [0u64; CMSG_BUF_LEN / 8];
        // SAFETY: an all-zero msghdr is a valid empty header.
        let mut hdr: libc::msghdr = unsafe { MaybeUninit::zeroed().assume_init() };
        hdr.msg_iov = &mut iov;
        hdr.msg_iovlen = 1;
        if !fds.is_empty() {
            let payload = (fds.len() * size_of::<RawFd>()) as u32;
            // SAFETY: CMSG_SPACE is a pure size computation.
            let space = unsafe { libc::CMSG_SPACE(payload) } as usize;
            debug_assert!(space <= CMSG_BUF_LEN);
            hdr.msg_control = cmsg_buf.as_mut_ptr().cast();
            hdr.msg_controllen = space as _;
            // SAFETY: msg_control points at `space` zeroed, aligned bytes, so
            // CMSG_FIRSTHDR returns a header inside it with room for `payload`.
            unsafe {
                let cmsg = libc::CMSG_FIRSTHDR(&hdr);
                (*cmsg).cmsg_level = libc::SOL_SOCKET;
                (*cmsg).cmsg_type = libc::SCM_RIGHTS;
                (*cmsg).cmsg_len = libc::CMSG_LEN(payload) as _;
                let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                for (i, fd) in fds.iter().enumerate() {
                    data.add(i).write_unaligned(fd.as_raw_fd());
                }
            }
        }
        loop {
            // SAFETY: `hdr` points at live buffers for the duration of the call.
            let n = unsafe { libc::sendmsg(self.fd.as_raw_fd(), &hdr, libc::MSG_NOSIGNAL) };
            if n >= 0 {
                return Ok(());
            }
            let err = io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EPIPE) | Some(libc::ECONNRESET) => return Err(ChannelError::Closed),
                Some(libc::EAGAIN) => return Err(ChannelError::WouldBlock),
                _ => return Err(ChannelError::Io(err)),
            }
        }
    }

    /// Receives and decodes one message.
    ///
    /// `Err(WouldBlock)` on a non-blocking socket with nothing queued;
    /// `Err(Closed)` once the peer is gone.
    pub fn recv<T: DeserializeOwned>(&self) -> Result<Received<T>, ChannelError> {
        let (bytes, fds) = self.recv_raw()?;
        let msg = codec::decode(&bytes)?;
        Ok(Received { msg, fds })
    }

    /// Receives one packet without decoding it.
    pub fn recv_raw(&self) -> Result<(Vec<u8>, Vec<OwnedFd>), ChannelError> {
        let mut buf = vec![0u8; MAX_MESSAGE_SIZE];
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        let mut cmsg_buf = [0u64; CMSG_BUF_LEN / 8];
        // SAFETY: an all-zero msghdr is a valid empty header.
        let mut hdr: libc::msghdr = unsafe { MaybeUninit::zeroed().assume_init() };
        hdr.msg_iov = &mut iov;
        hdr.msg_iovlen = 1;
        hdr.msg_control = cmsg_buf.as_mut_ptr().cast();
        hdr.msg_controllen = CMSG_BUF_LEN as _;
        let n = loop {
            // SAFETY: `hdr` points at live buffers of the lengths it states.
            let n = unsafe {
                libc::recvmsg(
                    self.fd.as_raw_fd(),
                    &mut hdr,
                    libc::MSG_CMSG_CLOEXEC | libc::MSG_TRUNC,
                )
            };
            if n >= 0 {
                break n as usize;
            }
            let err = io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EAGAIN) => return Err(ChannelError::WouldBlock),
                Some(libc::ECONNRESET) => return Err(ChannelError::Closed),
                _ => return Err(ChannelError::Io(err)),
            }
        };
        // Take ownership of every descriptor first, so that they are closed
        // on every error path below.
        let mut fds = Vec::new();
        // SAFETY: the kernel filled `msg_controllen` bytes of `cmsg_buf` with
        // well-formed control messages; CMSG_* walk only inside them.
        unsafe {
            let mut cmsg = libc::CMSG_FIRSTHDR(&hdr);
            while !cmsg.is_null() {
                if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                    let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                    let header = libc::CMSG_LEN(0) as usize;
                    let count = ((*cmsg).cmsg_len as usize - header) / size_of::<RawFd>();
                    for i in 0..count {
                        fds.push(OwnedFd::from_raw_fd(data.add(i).read_unaligned()));
                    }
                }
                cmsg = libc::CMSG_NXTHDR(&hdr, cmsg);
            }
        }
        if n == 0 && fds.is_empty() {
            // A packet socket reads 0 both at EOF and for an empty packet
            // (which no encoder of ours produces); only a hang-up is EOF.
            return Err(if self.peer_hung_up() {
                ChannelError::Closed
            } else {
                ChannelError::EmptyPacket
            });
        }
        if n > MAX_MESSAGE_SIZE || hdr.msg_flags & libc::MSG_TRUNC != 0 {
            return Err(ChannelError::Oversize);
        }
        if hdr.msg_flags & libc::MSG_CTRUNC != 0 || fds.len() > MAX_FDS {
            return Err(ChannelError::TooManyFds);
        }
        buf.truncate(n);
        Ok((buf, fds))
    }
}

impl Channel {
    fn peer_hung_up(&self) -> bool {
        let mut pfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLRDHUP,
            revents: 0,
        };
        // SAFETY: one valid pollfd, zero timeout.
        let n = unsafe { libc::poll(&mut pfd, 1, 0) };
        n < 0 || pfd.revents & (libc::POLLHUP | libc::POLLRDHUP | libc::POLLERR) != 0
    }
}

impl AsFd for Channel {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for Channel {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::*;
    use std::io::{Read, Write};

    fn ping(id: u64) -> ManagerMessage {
        ManagerMessage::Request {
            id,
            body: Request::Ping { nonce: id * 2 },
        }
    }

    #[test]
    fn message_crosses_the_pair() {
        let (a, b) = Channel::pair().expect("pair");
        a.send(&ping(5), &[]).expect("send");
        let got: Received<ManagerMessage> = b.recv().expect("recv");
        assert_eq!(got.msg, ping(5));
        assert!(got.fds.is_empty());
    }

    #[test]
    fn descriptors_cross_the_pair_and_stay_usable() {
        let (a, b) = Channel::pair().expect("pair");
        let (mut r, w) = std::io::pipe().expect("pipe");
        a.send(&ping(1), &[w.as_fd()]).expect("send");
        drop(w);
        let got: Received<ManagerMessage> = b.recv().expect("recv");
        assert_eq!(got.fds.len(), 1);
        let mut passed = std::fs::File::from(got.fds.into_iter().next().expect("fd"));
        passed.write_all(b"hi").expect("write through passed fd");
        drop(passed);
        let mut s = String::new();
        r.read_to_string(&mut s).expect("read");
        assert_eq!(s, "hi");
    }

    #[test]
    fn received_descriptors_are_close_on_exec() {
        let (a, b) = Channel::pair().expect("pair");
        let (_r, w) = std::io::pipe().expect("pipe");
        a.send(&ping(1), &[w.as_fd()]).expect("send");
        let got: Received<ManagerMessage> = b.recv().expect("recv");
        // SAFETY: F_GETFD on a descriptor we own.
        let flags = unsafe { libc::fcntl(got.fds[0].as_raw_fd(), libc::F_GETFD) };
        assert_eq!(flags & libc::FD_CLOEXEC, libc::FD_CLOEXEC);
    }

    #[test]
    fn more_than_max_fds_is_refused_at_send() {
        let (a, _b) = Channel::pair().expect("pair");
        let (_r, w) = std::io::pipe().expect("pipe");
        let many: Vec<_> = (0..MAX_FDS + 1).map(|_| w.as_fd()).collect();
        assert!(matches!(
            a.send(&ping(1), &many),
            Err(ChannelError::TooManyFds)
        ));
    }

    #[test]
    fn max_fds_are_accepted() {
        let (a, b) = Channel::pair().expect("pair");
        let (_r, w) = std::io::pipe().expect("pipe");
        let many: Vec<_> = (0..MAX_FDS).map(|_| w.as_fd()).collect();
        a.send(&ping(1), &many).expect("send");
        let got: Received<ManagerMessage> = b.recv().expect("recv");
        assert_eq!(got.fds.len(), MAX_FDS);
    }

    #[test]
    fn oversize_packet_is_an_error_and_the_channel_survives() {
        let (a, b) = Channel::pair().expect("pair");
        a.send_raw(&vec![0u8; MAX_MESSAGE_SIZE + 100], &[])
            .expect("kernel accepts the big packet");
        a.send(&ping(2), &[]).expect("send");
        assert!(matches!(
            b.recv::<ManagerMessage>(),
            Err(ChannelError::Oversize)
        ));
        assert_eq!(b.recv::<ManagerMessage>().expect("next").msg, ping(2));
    }

    #[test]
    fn garbage_packet_is_a_decode_error_and_the_channel_survives() {
        let (a, b) = Channel::pair().expect("pair");
        a.send_raw(&[0xff, 0xff, 0xff], &[]).expect("send");
        a.send(&ping(3), &[]).expect("send");
        let err = b.recv::<ManagerMessage>().expect_err("garbage decoded");
        assert!(matches!(err, ChannelError::Codec(_)));
        assert!(!err.is_fatal());
        assert_eq!(b.recv::<ManagerMessage>().expect("next").msg, ping(3));
    }

    #[test]
    fn empty_packet_is_an_error_not_a_hang_up() {
        let (a, b) = Channel::pair().expect("pair");
        a.send_raw(&[], &[]).expect("send");
        a.send(&ping(4), &[]).expect("send");
        let err = b.recv::<ManagerMessage>().expect_err("empty decoded");
        assert!(matches!(err, ChannelError::EmptyPacket), "{err:?}");
        assert!(!err.is_fatal());
        assert_eq!(b.recv::<ManagerMessage>().expect("next").msg, ping(4));
    }

    #[test]
    fn peer_close_reads_as_closed() {
        let (a, b) = Channel::pair().expect("pair");
        drop(a);
        assert!(matches!(
            b.recv::<ManagerMessage>(),
            Err(ChannelError::Closed)
        ));
    }

    #[test]
    fn nonblocking_empty_channel_would_block() {
        let (_a, b) = Channel::pair().expect("pair");
        b.set_nonblocking(true).expect("nonblocking");
        assert!(matches!(
            b.recv::<ManagerMessage>(),
            Err(ChannelError::WouldBlock)
        ));
    }

    #[test]
    fn from_fd_refuses_a_stream_socket() {
        let (s, _t) = std::os::unix::net::UnixStream::pair().expect("pair");
        assert!(Channel::from_fd(OwnedFd::from(s)).is_err());
    }

    /// Sends `fds` beside `bytes` without the sender's [`MAX_FDS`] check,
    /// as a misbehaving peer could.
    fn send_fds_unchecked(ch: &Channel, bytes: &[u8], fds: &[RawFd]) {
        let mut iov = libc::iovec {
            iov_base: bytes.as_ptr() as *mut libc::c_void,
            iov_len: bytes.len(),
        };
        let payload = std::mem::size_of_val(fds) as u32;
        let mut cmsg_buf = vec![0u64; 64];
        // SAFETY: an all-zero msghdr is a valid empty header.
        let mut hdr: libc::msghdr = unsafe { MaybeUninit::zeroed().assume_init() };
        hdr.msg_iov = &mut iov;
        hdr.msg_iovlen = 1;
        hdr.msg_control = cmsg_buf.as_mut_ptr().cast();
        // SAFETY: CMSG_SPACE is a pure size computation.
        let space = unsafe { libc::CMSG_SPACE(payload) } as usize;
        assert!(space <= cmsg_buf.len() * 8, "test sends too many fds");
        hdr.msg_controllen = space as _;
        // SAFETY: msg_control points at `space` zeroed, aligned bytes, so
        // CMSG_FIRSTHDR returns a header inside it with room for `payload`;
        // `hdr` points at live buffers for the duration of sendmsg.
        let n = unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&hdr);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(payload) as _;
            let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
            for (i, fd) in fds.iter().enumerate() {
                data.add(i).write_unaligned(*fd);
            }
            libc::sendmsg(ch.as_raw_fd(), &hdr, libc::MSG_NOSIGNAL)
        };
        assert!(n >= 0, "sendmsg: {}", io::Error::last_os_error());
    }

    fn is_nonblocking(ch: &Channel) -> bool {
        // SAFETY: F_GETFL on a descriptor the channel owns.
        let flags = unsafe { libc::fcntl(ch.as_raw_fd(), libc::F_GETFL) };
        assert!(flags >= 0, "F_GETFL: {}", io::Error::last_os_error());
        flags & libc::O_NONBLOCK != 0
    }

    /// Sends pings on a non-blocking `ch` until its peer's queue is full.
    fn fill(ch: &Channel) {
        ch.set_nonblocking(true).expect("nonblocking");
        // A blocking channel would block here forever instead of failing.
        assert!(is_nonblocking(ch), "set_nonblocking(true) had no effect");
        for id in 0.. {
            match ch.send(&ping(id), &[]) {
                Ok(()) => assert!(id < 1_000_000, "the queue never filled"),
                Err(ChannelError::WouldBlock) => break,
                Err(e) => panic!("filling the channel: {e}"),
            }
        }
    }

    extern "C" fn do_nothing(_: libc::c_int) {}

    /// Makes SIGUSR1 interrupt a blocked system call with EINTR (a handler
    /// without `SA_RESTART`), as any signal a daemon handles may.
    fn make_sigusr1_interrupt_syscalls() {
        // SAFETY: a zeroed sigaction with an empty mask, no flags and a
        // handler that touches nothing is valid; SIGUSR1 is not used
        // otherwise in these tests.
        unsafe {
            let mut sa: libc::sigaction = MaybeUninit::zeroed().assume_init();
            sa.sa_sigaction = do_nothing as extern "C" fn(libc::c_int) as usize;
            libc::sigemptyset(&mut sa.sa_mask);
            assert_eq!(libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut()), 0);
        }
    }

    /// Signals `thread` a few times, giving it time to block in between.
    fn interrupt<T>(thread: &std::thread::JoinHandle<T>) {
        use std::os::unix::thread::JoinHandleExt;
        for _ in 0..20 {
            std::thread::sleep(std::time::Duration::from_millis(10));
            // SAFETY: the thread is not joined yet, so its pthread_t is
            // valid; SIGUSR1's handler does nothing.
            unsafe { libc::pthread_kill(thread.as_pthread_t(), libc::SIGUSR1) };
        }
    }

    #[test]
    fn a_closed_channel_is_fatal() {
        assert!(ChannelError::Closed.is_fatal());
    }

    #[test]
    fn a_socket_error_is_fatal() {
        assert!(ChannelError::Io(io::Error::from_raw_os_error(libc::EBADF)).is_fatal());
    }

    #[test]
    fn a_full_channel_is_not_fatal() {
        assert!(!ChannelError::WouldBlock.is_fatal());
    }

    #[test]
    fn from_fd_accepts_a_seqpacket_socket_and_it_still_works() {
        let (a, b) = Channel::pair().expect("pair");

        let a = Channel::from_fd(a.into_fd()).expect("a SOCK_SEQPACKET socket");

        a.send(&ping(7), &[]).expect("send");
        assert_eq!(b.recv::<ManagerMessage>().expect("recv").msg, ping(7));
    }

    #[test]
    fn from_fd_reports_the_os_error_for_a_descriptor_that_is_no_socket() {
        let (r, _w) = std::io::pipe().expect("pipe");

        let err = Channel::from_fd(OwnedFd::from(r)).expect_err("a pipe is no socket");

        assert_eq!(err.raw_os_error(), Some(libc::ENOTSOCK));
    }

    #[test]
    fn as_raw_fd_is_the_socket_descriptor() {
        let (a, _b) = Channel::pair().expect("pair");

        assert_eq!(a.as_raw_fd(), a.as_fd().as_raw_fd());
    }

    #[test]
    fn set_nonblocking_twice_stays_nonblocking() {
        let (a, _b) = Channel::pair().expect("pair");
        a.set_nonblocking(true).expect("nonblocking");

        a.set_nonblocking(true).expect("nonblocking");

        assert!(is_nonblocking(&a));
    }

    #[test]
    fn set_nonblocking_off_makes_the_channel_blocking_again() {
        let (a, _b) = Channel::pair().expect("pair");
        a.set_nonblocking(true).expect("nonblocking");

        a.set_nonblocking(false).expect("blocking");

        assert!(!is_nonblocking(&a));
    }

    #[test]
    fn set_nonblocking_off_changes_no_other_flag() {
        let (a, _b) = Channel::pair().expect("pair");
        // SAFETY: F_GETFL on a descriptor the channel owns.
        let before = unsafe { libc::fcntl(a.as_raw_fd(), libc::F_GETFL) };

        a.set_nonblocking(false).expect("blocking");

        // SAFETY: as above.
        let after = unsafe { libc::fcntl(a.as_raw_fd(), libc::F_GETFL) };
        assert_eq!(after, before);
    }

    #[test]
    fn sending_to_a_closed_peer_reads_as_closed() {
        let (a, b) = Channel::pair().expect("pair");
        drop(b);

        let err = a.send(&ping(1), &[]).expect_err("peer is gone");

        assert!(matches!(err, ChannelError::Closed), "{err:?}");
    }

    #[test]
    fn sending_on_a_full_nonblocking_channel_would_block() {
        let (a, _b) = Channel::pair().expect("pair");
        fill(&a);

        let err = a.send(&ping(1), &[]).expect_err("queue is full");

        assert!(matches!(err, ChannelError::WouldBlock), "{err:?}");
        assert!(!err.is_fatal());
    }

    #[test]
    fn a_peer_closing_with_unread_messages_reads_as_closed() {
        let (a, b) = Channel::pair().expect("pair");
        a.send(&ping(1), &[]).expect("send");
        drop(b);

        let err = a.recv::<ManagerMessage>().expect_err("peer is gone");

        assert!(matches!(err, ChannelError::Closed), "{err:?}");
    }

    #[test]
    fn a_signal_during_a_blocking_recv_does_not_fail_it() {
        make_sigusr1_interrupt_syscalls();
        let (a, b) = Channel::pair().expect("pair");
        let receiver = std::thread::spawn(move || b.recv::<ManagerMessage>());
        interrupt(&receiver);

        a.send(&ping(6), &[]).expect("send");
        // Should the message never arrive, the receiver sees the close
        // instead of blocking forever.
        drop(a);

        let got = receiver.join().expect("receiver thread");
        assert_eq!(got.expect("recv retried after EINTR").msg, ping(6));
    }

    #[test]
    fn a_signal_during_a_blocking_send_does_not_fail_it() {
        make_sigusr1_interrupt_syscalls();
        let (a, b) = Channel::pair().expect("pair");
        fill(&a);
        a.set_nonblocking(false).expect("blocking");
        let last = ping(1_000_000_000);
        let sender = std::thread::spawn({
            let last = last.clone();
            move || a.send(&last, &[])
        });
        interrupt(&sender);

        // Read everything: the kernel may wake a blocked sender only once
        // most of the queue is drained. The sender's error, if any, closes
        // its end, which ends this loop too.
        let last_bytes = codec::encode(&last).expect("encode");
        while let Ok((bytes, _)) = b.recv_raw() {
            if bytes == last_bytes {
                break;
            }
        }
        // Should the sender still be blocked, the close wakes it with an
        // error instead of leaving the test hanging.
        drop(b);

        let sent = sender.join().expect("sender thread");
        assert!(sent.is_ok(), "{sent:?}");
    }

    #[test]
    fn a_packet_of_exactly_max_message_size_is_received_whole() {
        let (a, b) = Channel::pair().expect("pair");
        a.send_raw(&vec![7u8; MAX_MESSAGE_SIZE], &[]).expect("send");

        let (bytes, fds) = b.recv_raw().expect("fits");

        assert_eq!((bytes.len(), fds.len()), (MAX_MESSAGE_SIZE, 0));
    }

    #[test]
    fn a_packet_one_byte_over_max_message_size_is_oversize() {
        let (a, b) = Channel::pair().expect("pair");
        a.send_raw(&vec![7u8; MAX_MESSAGE_SIZE + 1], &[])
            .expect("kernel accepts the big packet");

        let err = b.recv_raw().expect_err("too big");

        assert!(matches!(err, ChannelError::Oversize), "{err:?}");
    }

    #[test]
    fn more_than_max_fds_from_a_peer_are_refused_at_receive() {
        let (a, b) = Channel::pair().expect("pair");
        let (_r, w) = std::io::pipe().expect("pipe");
        let bytes = codec::encode(&ping(1)).expect("encode");
        send_fds_unchecked(&a, &bytes, &[w.as_raw_fd(); MAX_FDS + 1]);

        let err = b.recv::<ManagerMessage>().expect_err("too many fds");

        assert!(matches!(err, ChannelError::TooManyFds), "{err:?}");
    }

    #[test]
    fn a_packet_whose_descriptors_were_cut_off_is_refused() {
        let (a, b) = Channel::pair().expect("pair");
        let (_r, w) = std::io::pipe().expect("pipe");
        let bytes = codec::encode(&ping(1)).expect("encode");
        // More than fit in the receiver's control buffer: MSG_CTRUNC.
        send_fds_unchecked(&a, &bytes, &[w.as_raw_fd(); 2 * CMSG_BUF_LEN / 4]);

        let err = b.recv::<ManagerMessage>().expect_err("descriptors cut off");

        assert!(matches!(err, ChannelError::TooManyFds), "{err:?}");
    }

    #[test]
    fn credentials_beside_a_message_are_not_taken_for_descriptors() {
        let (a, b) = Channel::pair().expect("pair");
        let on: libc::c_int = 1;
        // SAFETY: `on` is a valid c_int for the length given.
        let rc = unsafe {
            libc::setsockopt(
                b.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PASSCRED,
                (&on as *const libc::c_int).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0, "SO_PASSCRED: {}", io::Error::last_os_error());
        a.send(&ping(8), &[]).expect("send");

        let got: Received<ManagerMessage> = b.recv().expect("recv");

        assert!(got.fds.is_empty(), "{:?}", got.fds);
    }

    #[test]
    fn a_peer_that_shut_down_its_sending_side_reads_as_closed() {
        let (a, b) = Channel::pair().expect("pair");
        // SAFETY: shutdown on a descriptor the channel owns.
        let rc = unsafe { libc::shutdown(a.as_raw_fd(), libc::SHUT_WR) };
        assert_eq!(rc, 0, "shutdown: {}", io::Error::last_os_error());

        let err = b.recv::<ManagerMessage>().expect_err("peer sends no more");

        assert!(matches!(err, ChannelError::Closed), "{err:?}");
    }

    #[test]
    fn pair_reports_running_out_of_descriptors() {
        // In a child process, so the lowered limit starves no other test.
        // The child only makes system calls and exits: no allocation, no
        // unwinding (it may be a copy of a multi-threaded process).
        // SAFETY: see above; the parent only waits for the child.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork: {}", io::Error::last_os_error());
        if pid == 0 {
            let mut limit = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            // SAFETY: getrlimit and setrlimit with a valid rlimit; lowering
            // the soft limit (the hard one unchanged) is always allowed.
            let lowered = unsafe {
                libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && {
                    limit.rlim_cur = 0;
                    libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0
                }
            };
            let code = if !lowered {
                3
            } else {
                match Channel::pair() {
                    Err(e) if e.raw_os_error() == Some(libc::EMFILE) => 0,
                    Err(_) => 2,
                    Ok(pair) => {
                        // Never close what a broken pair() may have wrapped.
                        std::mem::forget(pair);
                        1
                    }
                }
            };
            // SAFETY: ends the child without running anything of the parent's.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: waits for the child forked above.
        let waited = unsafe { libc::waitpid(pid, &mut status, 0) };
        assert_eq!(waited, pid, "waitpid: {}", io::Error::last_os_error());

        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "child status {status:#x} (exit 1: pair() succeeded, 2: another error, 3: setrlimit)"
        );
    }
}
