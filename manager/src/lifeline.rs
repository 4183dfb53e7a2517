//! Lifeline file descriptors (DESIGN.md §4): a client keeps the read end of
//! a pipe and sends the write end with its request; when the client closes
//! its end or dies, our copy reports an error/hang-up and the resource tied
//! to it is torn down.
//!
//! The watcher owns the descriptors and their mio registrations; the
//! manager maps a fired token back to what it protects.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd};

use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};

/// Why a descriptor cannot be a lifeline.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LifelineError {
    #[error("the lifeline cannot be watched: a {0} would never report its client's exit (send a pipe end or a stream socket)")]
    Kind(&'static str),
    #[error("the lifeline cannot be watched: a FIFO open for reading and writing holds both ends itself and would never report its client's exit")]
    BothEnds,
    #[error("the lifeline cannot be watched: a {0} socket would never report its client's exit (send a pipe end or a stream socket)")]
    SocketType(&'static str),
    #[error("the lifeline cannot be watched: a listening socket has no peer and would never report its client's exit")]
    Listening,
    #[error("cannot inspect the lifeline: {0}")]
    Io(String),
}

/// Checks that `fd` can report its client's exit: a pipe end or a FIFO
/// open one way, or a stream or seqpacket socket that is not listening.
/// epoll accepts many more (eventfd, pidfd, timerfd, signalfd, inotify, a
/// listening or datagram socket), but those never hang up, and what they
/// guarded would outlive its client. A stream socket that is not (or no
/// longer) connected is fine: it reports a hang-up at once.
pub fn check_kind(fd: &impl AsRawFd) -> Result<(), LifelineError> {
    let fd = fd.as_raw_fd();
    // SAFETY: fstat fills the zeroed stat buffer for a descriptor we hold.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is a valid, writable stat buffer.
    if unsafe { libc::fstat(fd, &mut st) } < 0 {
        return Err(LifelineError::Io(
            std::io::Error::last_os_error().to_string(),
        ));
    }
    match st.st_mode & libc::S_IFMT {
        libc::S_IFIFO => {
            // SAFETY: F_GETFL takes no argument.
            let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
            if flags < 0 {
                return Err(LifelineError::Io(
                    std::io::Error::last_os_error().to_string(),
                ));
            }
            if flags & libc::O_ACCMODE == libc::O_RDWR {
                return Err(LifelineError::BothEnds);
            }
            Ok(())
        }
        libc::S_IFSOCK => {
            match sockopt(fd, libc::SO_TYPE)? {
                libc::SOCK_STREAM | libc::SOCK_SEQPACKET => {}
                libc::SOCK_DGRAM => return Err(LifelineError::SocketType("datagram")),
                libc::SOCK_RAW => return Err(LifelineError::SocketType("raw")),
                _ => return Err(LifelineError::SocketType("non-stream")),
            }
            if sockopt(fd, libc::SO_ACCEPTCONN)? != 0 {
                return Err(LifelineError::Listening);
            }
            Ok(())
        }
        libc::S_IFREG => Err(LifelineError::Kind("regular file")),
        libc::S_IFDIR => Err(LifelineError::Kind("directory")),
        libc::S_IFCHR => Err(LifelineError::Kind("character device")),
        libc::S_IFBLK => Err(LifelineError::Kind("block device")),
        libc::S_IFLNK => Err(LifelineError::Kind("symbolic link")),
        // eventfd, pidfd, timerfd, signalfd, inotify, epoll: anonymous
        // inodes with no file type.
        _ => Err(LifelineError::Kind(
            "kernel object (eventfd, pidfd, timerfd, signalfd, inotify...)",
        )),
    }
}

fn sockopt(fd: i32, name: i32) -> Result<i32, LifelineError> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes one c_int into `value`, bounded by `len`.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            name,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc < 0 {
        return Err(LifelineError::Io(
            std::io::Error::last_os_error().to_string(),
        ));
    }
    Ok(value)
}

/// What a lifeline protects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Guarded {
    Namespace(u32),
    /// A `SetDnsRedirectionRule` rule (after a restart: a pidfd of the
    /// process that asked for it).
    DnsRule(u32),
    /// A user's own VM: a pidfd of the process that started it (the same
    /// process must still own the VM when it fires).
    Vm {
        kind: crate::guests::VmKind,
        id: u64,
        process: crate::pids::Owner,
    },
}

#[derive(Debug)]
pub struct LifelineWatcher {
    registry: Registry,
    base: usize,
    next: usize,
    by_token: HashMap<Token, (Guarded, OwnedFd)>,
}

impl LifelineWatcher {
    /// Tokens handed out are `base` and above, registered with `registry`.
    pub fn new(registry: Registry, base: usize) -> LifelineWatcher {
        LifelineWatcher {
            registry,
            base,
            next: base,
            by_token: HashMap::new(),
        }
    }

    pub fn owns(&self, token: Token) -> bool {
        token.0 >= self.base
    }

    /// Starts watching `fd` for `what`. A descriptor whose peer is already
    /// gone fires at once (epoll reports the pending error on registration).
    pub fn watch(&mut self, fd: OwnedFd, what: Guarded) -> std::io::Result<Token> {
        let token = Token(self.next);
        self.next += 1;
        // Pipes report EPOLLERR (write end, reader gone) or EPOLLHUP (read
        // end, writer gone) whatever the interest; READABLE is the
        // cheapest interest that never busy-fires on a write end.
        self.registry
            .register(&mut SourceFd(&fd.as_raw_fd()), token, Interest::READABLE)?;
        self.by_token.insert(token, (what, fd));
        Ok(token)
    }

    /// The event for `token` fired: stop watching and say what died. `None`
    /// for a token already forgotten (a late event).
    pub fn fired(&mut self, token: Token) -> Option<Guarded> {
        let (what, fd) = self.by_token.remove(&token)?;
        self.deregister(&fd);
        Some(what)
    }

    fn deregister(&self, fd: &OwnedFd) {
        // A descriptor epoll no longer knows (its file closed elsewhere)
        // has nothing left to deregister.
        if let Err(e) = self.registry.deregister(&mut SourceFd(&fd.as_raw_fd())) {
            log::debug!("lifeline fd {}: deregister: {e}", fd.as_raw_fd());
        }
    }

    /// Stops watching without reporting (the resource went away first).
    pub fn forget(&mut self, what: Guarded) {
        let tokens: Vec<Token> = self
            .by_token
            .iter()
            .filter(|(_, (w, _))| *w == what)
            .map(|(t, _)| *t)
            .collect();
        for t in tokens {
            if let Some((_, fd)) = self.by_token.remove(&t) {
                self.deregister(&fd);
            }
        }
    }

    #[cfg(test)]
    pub fn watched(&self) -> usize {
        self.by_token.len()
    }
}

/// Whether a lifeline descriptor's peer is gone (poll reports ERR or HUP).
#[cfg(test)]
fn is_dead(fd: &OwnedFd) -> bool {
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: 0,
        revents: 0,
    };
    // SAFETY: one valid pollfd, zero timeout.
    let n = unsafe { libc::poll(&mut p, 1, 0) };
    n > 0 && (p.revents & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL)) != 0
}

/// A pipe for tests: (the end a client keeps, the lifeline it sends).
#[cfg(test)]
pub fn test_pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two fds on success.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: both fds are fresh and owned by us.
    unsafe {
        (
            std::os::fd::FromRawFd::from_raw_fd(fds[0]),
            std::os::fd::FromRawFd::from_raw_fd(fds[1]),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::FromRawFd;

    fn pipe() -> (OwnedFd, OwnedFd) {
        test_pipe()
    }

    #[test]
    fn closing_the_client_end_fires_the_watch() {
        let mut poll = mio::Poll::new().unwrap();
        let mut w = LifelineWatcher::new(poll.registry().try_clone().unwrap(), 100);
        let (read_end, write_end) = pipe();
        let token = w.watch(write_end, Guarded::Namespace(3)).unwrap();
        let mut events = mio::Events::with_capacity(4);
        poll.poll(&mut events, Some(std::time::Duration::from_millis(50)))
            .unwrap();
        assert!(events.is_empty(), "fired while the client held its end");
        drop(read_end);
        poll.poll(&mut events, Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let fired: Vec<Token> = events.iter().map(|e| e.token()).collect();
        assert_eq!(fired, vec![token]);
        assert_eq!(w.fired(token), Some(Guarded::Namespace(3)));
        assert_eq!(w.fired(token), None);
        assert_eq!(w.watched(), 0);
    }

    fn own(fd: i32) -> OwnedFd {
        assert!(fd >= 0, "{}", std::io::Error::last_os_error());
        // SAFETY: a fresh descriptor we own.
        unsafe { OwnedFd::from_raw_fd(fd) }
    }

    #[test]
    fn pipe_ends_and_connected_stream_sockets_are_lifelines() {
        let (r, w) = pipe();
        assert_eq!(check_kind(&r), Ok(()));
        assert_eq!(check_kind(&w), Ok(()));
        for ty in [libc::SOCK_STREAM, libc::SOCK_SEQPACKET] {
            let mut fds = [0; 2];
            // SAFETY: socketpair fills two fds on success.
            let rc = unsafe { libc::socketpair(libc::AF_UNIX, ty, 0, fds.as_mut_ptr()) };
            assert_eq!(rc, 0);
            let (a, _b) = (own(fds[0]), own(fds[1]));
            assert_eq!(check_kind(&a), Ok(()), "type {ty}");
        }
    }

    #[test]
    fn descriptors_that_never_hang_up_are_refused() {
        // SAFETY: each call creates a new descriptor or returns -1.
        let eventfd = own(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) });
        assert!(matches!(check_kind(&eventfd), Err(LifelineError::Kind(_))));
        // SAFETY: as above.
        let timerfd = own(unsafe { libc::timerfd_create(libc::CLOCK_MONOTONIC, 0) });
        assert!(matches!(check_kind(&timerfd), Err(LifelineError::Kind(_))));
        // SAFETY: as above.
        let inotify = own(unsafe { libc::inotify_init1(libc::IN_CLOEXEC) });
        assert!(matches!(check_kind(&inotify), Err(LifelineError::Kind(_))));
        // SAFETY: pidfd_open of our own pid returns a new descriptor.
        let pidfd = own(unsafe { libc::syscall(libc::SYS_pidfd_open, libc::getpid(), 0) } as i32);
        assert!(matches!(check_kind(&pidfd), Err(LifelineError::Kind(_))));
        let file = std::fs::File::open("/proc/self/status").unwrap();
        assert_eq!(check_kind(&file), Err(LifelineError::Kind("regular file")));
        let dev = std::fs::File::open("/dev/zero").unwrap();
        assert_eq!(
            check_kind(&dev),
            Err(LifelineError::Kind("character device"))
        );
    }

    #[test]
    fn listening_and_datagram_sockets_are_refused() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        assert_eq!(check_kind(&listener), Err(LifelineError::Listening));
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        assert_eq!(check_kind(&udp), Err(LifelineError::SocketType("datagram")));
    }

    #[test]
    fn an_unconnected_stream_socket_is_accepted_and_fires_at_once() {
        // SAFETY: socket returns a new descriptor or -1.
        let unconnected = own(unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0) });
        assert_eq!(check_kind(&unconnected), Ok(()));
        let mut poll = mio::Poll::new().unwrap();
        let mut w = LifelineWatcher::new(poll.registry().try_clone().unwrap(), 100);
        let token = w.watch(unconnected, Guarded::Namespace(1)).unwrap();
        let mut events = mio::Events::with_capacity(4);
        poll.poll(&mut events, Some(std::time::Duration::from_secs(5)))
            .unwrap();
        assert_eq!(
            events.iter().map(|e| e.token()).collect::<Vec<_>>(),
            vec![token]
        );
    }

    #[test]
    fn a_fifo_open_both_ways_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fifo");
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: mkfifo with a valid path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let both = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        assert_eq!(check_kind(&both), Err(LifelineError::BothEnds));
    }

    #[test]
    fn a_lifeline_already_dead_fires_at_once() {
        let mut poll = mio::Poll::new().unwrap();
        let mut w = LifelineWatcher::new(poll.registry().try_clone().unwrap(), 100);
        let (read_end, write_end) = pipe();
        drop(read_end);
        assert!(is_dead(&write_end));
        let token = w.watch(write_end, Guarded::Namespace(1)).unwrap();
        let mut events = mio::Events::with_capacity(4);
        poll.poll(&mut events, Some(std::time::Duration::from_secs(5)))
            .unwrap();
        assert_eq!(
            events.iter().map(|e| e.token()).collect::<Vec<_>>(),
            vec![token]
        );
    }
}
