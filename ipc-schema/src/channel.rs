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
}
