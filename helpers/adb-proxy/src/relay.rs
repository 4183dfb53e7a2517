//! The relay engine: accepts on a listening socket handed in by the
//! manager and moves bytes both ways between each client and ARC's adbd.
//!
//! One mio loop for every connection (no thread per connection, unlike
//! upstream). Each direction is pumped independently: a stalled writer only
//! stops reading from its own source. Between two TCP sockets (the
//! container's adbd) a direction goes through a pipe with splice(2): the
//! kernel hands the socket buffers' pages to the pipe and on to the other
//! socket, no byte is copied through user space. Other targets (ARCVM's
//! vsock, a Unix socket) keep a 256 KiB user-space buffer per direction
//! (recv + send), as does a direction whose pipe cannot be had or sized.
//! Sockets are edge-triggered and always drained to EAGAIN, so nothing
//! polls for writability with nothing to send. EOF on one side is passed on
//! as `shutdown(SHUT_WR)` on the other (half-close); a pair closes once both
//! directions are done or either side fails (reset, error, hang-up).

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};

use log::{debug, info, warn};
use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};
use patchpanel_ipc::AdbTarget;

/// Bytes buffered per direction of a connection on the copy path.
const BUFFER: usize = 256 * 1024;

/// The size asked for each splice pipe (`F_SETPIPE_SZ`): 64 page slots, as
/// much as the copy path's buffer when the pages are full. Each slot holds
/// one fragment of a socket buffer, often less than a page, so a default
/// pipe (16 slots) would move little per splice. 32 connections (the
/// default limit) take 4,096 of the 16,384 pages `pipe-user-pages-soft`
/// allows the helper's user; past that limit the kernel refuses the size
/// and the direction falls back to the copy path.
const PIPE_SIZE: usize = 256 * 1024;

/// Empty pipes kept from closed connections for the next ones (two per
/// connection), so that a connect usually creates none.
const SPARE_PIPES: usize = 8;

/// The listener's token; connections use the tokens above it.
pub const LISTENER: Token = Token(1);
const FIRST_CONN: usize = 2;

/// A kernel pipe for splice(2); `held` bytes are in it.
#[derive(Debug)]
struct KernelPipe {
    read: OwnedFd,
    write: OwnedFd,
    held: usize,
}

impl KernelPipe {
    /// A non-blocking pipe of [`PIPE_SIZE`].
    fn new() -> io::Result<KernelPipe> {
        let mut fds = [0 as RawFd; 2];
        // SAFETY: fds has room for the two descriptors pipe2 returns.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: both are new descriptors we own.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // SAFETY: F_SETPIPE_SZ with an integer on a pipe we own.
        if unsafe {
            libc::fcntl(
                write.as_raw_fd(),
                libc::F_SETPIPE_SZ,
                PIPE_SIZE as libc::c_int,
            )
        } < 0
        {
            return Err(io::Error::last_os_error());
        }
        Ok(KernelPipe {
            read,
            write,
            held: 0,
        })
    }
}

/// Where a direction's bytes wait between their source and destination.
#[derive(Debug)]
enum Buffer {
    /// recv(2) into user space, send(2) from there.
    Copy {
        buf: Box<[u8]>,
        start: usize,
        end: usize,
    },
    /// splice(2) from the source into a pipe and from it to the destination.
    Splice(KernelPipe),
}

/// One direction of a relayed connection.
#[derive(Debug)]
struct Pipe {
    buf: Buffer,
    /// The source said EOF.
    eof: bool,
    /// EOF was passed on to the destination.
    shut: bool,
}

impl Pipe {
    fn copy() -> Pipe {
        Pipe::with(Buffer::Copy {
            buf: vec![0; BUFFER].into_boxed_slice(),
            start: 0,
            end: 0,
        })
    }

    fn splice(pipe: KernelPipe) -> Pipe {
        Pipe::with(Buffer::Splice(pipe))
    }

    fn with(buf: Buffer) -> Pipe {
        Pipe {
            buf,
            eof: false,
            shut: false,
        }
    }

    /// The kernel pipe, if it is empty and so reusable.
    fn into_spare(self) -> Option<KernelPipe> {
        match self.buf {
            Buffer::Splice(pipe) if pipe.held == 0 => Some(pipe),
            _ => None,
        }
    }
}

#[derive(Debug)]
struct Conn {
    client: OwnedFd,
    adbd: OwnedFd,
    connected: bool,
    up: Pipe,
    down: Pipe,
}

/// What a pump of one direction found.
enum Pumped {
    Open,
    Failed(io::Error),
}

fn recv(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: buf is a live, writable buffer of the length given.
    let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

fn send(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: buf is a live buffer of the length given; MSG_NOSIGNAL keeps
    // a closed peer from raising SIGPIPE.
    let n = unsafe { libc::send(fd, buf.as_ptr().cast(), buf.len(), libc::MSG_NOSIGNAL) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

fn would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock || e.raw_os_error() == Some(libc::EINTR)
}

/// splice(2) of up to `len` bytes, without blocking on the pipe (the
/// sockets are non-blocking themselves).
fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    // SAFETY: splice(2) between descriptors this relay owns, no offsets.
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// Passes `from`'s EOF on to `to`, once.
fn pass_eof(shut: &mut bool, to: RawFd) -> Pumped {
    if !*shut {
        *shut = true;
        // SAFETY: shutdown(2) on a socket this relay owns.
        if unsafe { libc::shutdown(to, libc::SHUT_WR) } < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::ENOTCONN) {
                return Pumped::Failed(e);
            }
        }
    }
    Pumped::Open
}

/// Moves what `from` has to `to` until one of them would block.
fn pump(pipe: &mut Pipe, from: RawFd, to: RawFd) -> Pumped {
    match &mut pipe.buf {
        Buffer::Copy { buf, start, end } => loop {
            while *start < *end {
                match send(to, &buf[*start..*end]) {
                    Ok(n) => *start += n,
                    Err(e) if would_block(&e) => return Pumped::Open,
                    Err(e) => return Pumped::Failed(e),
                }
            }
            *start = 0;
            *end = 0;
            if pipe.eof {
                return pass_eof(&mut pipe.shut, to);
            }
            match recv(from, buf) {
                Ok(0) => pipe.eof = true,
                Ok(n) => *end = n,
                Err(e) if would_block(&e) => return Pumped::Open,
                Err(e) => return Pumped::Failed(e),
            }
        },
        Buffer::Splice(kernel) => loop {
            // What the pipe holds goes first: while `to` is full, nothing
            // more is taken from `from` (its data waits in its own
            // receive buffer, and TCP's window holds the sender back).
            while kernel.held > 0 {
                match splice(kernel.read.as_raw_fd(), to, kernel.held) {
                    Ok(0) => {
                        return Pumped::Failed(io::Error::new(
                            io::ErrorKind::WriteZero,
                            "splice from the pipe moved nothing",
                        ))
                    }
                    Ok(n) => kernel.held -= n.min(kernel.held),
                    Err(e) if would_block(&e) => return Pumped::Open,
                    Err(e) => return Pumped::Failed(e),
                }
            }
            if pipe.eof {
                return pass_eof(&mut pipe.shut, to);
            }
            // The pipe is empty here, so EAGAIN means `from` has nothing.
            match splice(from, kernel.write.as_raw_fd(), PIPE_SIZE) {
                Ok(0) => pipe.eof = true,
                Ok(n) => kernel.held = n,
                Err(e) if would_block(&e) => return Pumped::Open,
                Err(e) => return Pumped::Failed(e),
            }
        },
    }
}

fn socket_error(fd: RawFd) -> io::Result<()> {
    let mut err: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: err and len are live and sized for SO_ERROR.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            (&mut err as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    if err != 0 {
        return Err(io::Error::from_raw_os_error(err));
    }
    Ok(())
}

/// Starts a non-blocking connection to `target`.
pub fn connect(target: &AdbTarget) -> io::Result<OwnedFd> {
    match target {
        AdbTarget::Tcp(addr) => {
            let stream = mio::net::TcpStream::connect(*addr)?;
            // SAFETY: into_raw_fd hands over ownership of a live socket.
            Ok(unsafe { OwnedFd::from_raw_fd(stream.into_raw_fd()) })
        }
        AdbTarget::Unix(path) => {
            let stream = mio::net::UnixStream::connect(path)?;
            // SAFETY: as above.
            Ok(unsafe { OwnedFd::from_raw_fd(stream.into_raw_fd()) })
        }
        AdbTarget::Vsock { cid, port } => {
            // SAFETY: socket(2) with constant arguments, checked below.
            let fd = unsafe {
                libc::socket(
                    libc::AF_VSOCK,
                    libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                    0,
                )
            };
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: fd is new and ours.
            let socket = unsafe { OwnedFd::from_raw_fd(fd) };
            // SAFETY: all-zero is a valid sockaddr_vm; fields set below.
            let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
            addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
            addr.svm_cid = *cid;
            addr.svm_port = *port;
            // SAFETY: addr is a valid sockaddr_vm of the length given.
            let rc = unsafe {
                libc::connect(
                    socket.as_raw_fd(),
                    (&addr as *const libc::sockaddr_vm).cast(),
                    std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t,
                )
            };
            if rc < 0 {
                let e = io::Error::last_os_error();
                if e.raw_os_error() != Some(libc::EINPROGRESS) {
                    return Err(e);
                }
            }
            Ok(socket)
        }
    }
}

/// Whether a connection to `target` is relayed with splice(2): only TCP to
/// TCP. The client is always TCP (the manager's listener). ARCVM's vsock
/// and Unix sockets keep the copy path: splice into or out of them goes
/// through the kernel's generic copying fallbacks at best, and vsock
/// loopback (to check the transports' behaviour) is not available to
/// every host running this.
pub fn splices(target: &AdbTarget) -> bool {
    matches!(target, AdbTarget::Tcp(_))
}

/// Whether one more connection may be relayed.
pub fn admits(active: usize, max: u32) -> bool {
    active < max as usize
}

fn describe(target: &AdbTarget) -> String {
    match target {
        AdbTarget::Tcp(SocketAddr::V4(a)) => format!("tcp {a}"),
        AdbTarget::Tcp(SocketAddr::V6(a)) => format!("tcp {a}"),
        AdbTarget::Vsock { cid, port } => format!("vsock {cid}:{port}"),
        AdbTarget::Unix(p) => format!("unix {p}"),
    }
}

/// The relay: at most one listener and its connections.
#[derive(Debug)]
pub struct Relay {
    registry: Registry,
    listener: Option<OwnedFd>,
    target: Option<AdbTarget>,
    max: u32,
    conns: HashMap<usize, Conn>,
    next: usize,
    refused: u64,
    /// Empty pipes of closed connections, for the next ones.
    spare: Vec<KernelPipe>,
    /// Why splice was last unavailable (logged once per reason).
    no_splice: Option<String>,
}

impl Relay {
    pub fn new(registry: Registry) -> Relay {
        Relay {
            registry,
            listener: None,
            target: None,
            max: 0,
            conns: HashMap::new(),
            next: 0,
            refused: 0,
            spare: Vec::new(),
            no_splice: None,
        }
    }

    /// Accepts on `listener` from now on, relaying to `target`.
    pub fn listen(&mut self, listener: OwnedFd, target: AdbTarget, max: u32) -> io::Result<()> {
        self.stop();
        // SAFETY: F_GETFL/F_SETFL on a descriptor we own.
        unsafe {
            let flags = libc::fcntl(listener.as_raw_fd(), libc::F_GETFL);
            if flags < 0
                || libc::fcntl(
                    listener.as_raw_fd(),
                    libc::F_SETFL,
                    flags | libc::O_NONBLOCK,
                ) < 0
            {
                return Err(io::Error::last_os_error());
            }
        }
        self.registry.register(
            &mut SourceFd(&listener.as_raw_fd()),
            LISTENER,
            Interest::READABLE,
        )?;
        info!(
            "relaying ADB to {} (at most {max} connections)",
            describe(&target)
        );
        self.listener = Some(listener);
        self.target = Some(target);
        self.max = max;
        // Connections may have queued while nobody accepted.
        self.accept();
        Ok(())
    }

    /// Stops accepting and closes every connection.
    pub fn stop(&mut self) {
        if let Some(l) = self.listener.take() {
            let _ = self.registry.deregister(&mut SourceFd(&l.as_raw_fd()));
            info!(
                "stopped relaying ADB; {} connection(s) closed",
                self.conns.len()
            );
        }
        self.target = None;
        let ids: Vec<usize> = self.conns.keys().copied().collect();
        for id in ids {
            self.close(id, "the relay stopped");
        }
    }

    #[cfg(test)]
    pub fn active(&self) -> usize {
        self.conns.len()
    }

    pub fn ready(&mut self, token: Token) {
        if token == LISTENER {
            self.accept();
            return;
        }
        let Some(id) = token.0.checked_sub(FIRST_CONN).map(|t| t / 2) else {
            return;
        };
        self.service(id);
    }

    fn accept(&mut self) {
        let Some(listener) = self.listener.as_ref().map(|l| l.as_raw_fd()) else {
            return;
        };
        loop {
            // SAFETY: accept4 with no address buffers on our listener.
            let fd = unsafe {
                libc::accept4(
                    listener,
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                )
            };
            if fd < 0 {
                let e = io::Error::last_os_error();
                if !would_block(&e) && e.raw_os_error() != Some(libc::ECONNABORTED) {
                    warn!("accept: {e}");
                }
                if e.raw_os_error() == Some(libc::ECONNABORTED) {
                    continue;
                }
                return;
            }
            // SAFETY: fd is a new connection we own.
            let client = unsafe { OwnedFd::from_raw_fd(fd) };
            if !admits(self.conns.len(), self.max) {
                self.refused += 1;
                warn!(
                    "refused an ADB connection: {} already relayed (limit {}; {} refused so far)",
                    self.conns.len(),
                    self.max,
                    self.refused
                );
                continue;
            }
            let Some(target) = self.target.clone() else {
                return;
            };
            let adbd = match connect(&target) {
                Ok(s) => s,
                Err(e) => {
                    warn!(
                        "ADB connection dropped: cannot reach adbd at {}: {e}",
                        describe(&target)
                    );
                    continue;
                }
            };
            let id = self.next;
            self.next += 1;
            let base = FIRST_CONN + 2 * id;
            let rw = Interest::READABLE | Interest::WRITABLE;
            let registered = self
                .registry
                .register(&mut SourceFd(&client.as_raw_fd()), Token(base), rw)
                .and_then(|_| {
                    self.registry
                        .register(&mut SourceFd(&adbd.as_raw_fd()), Token(base + 1), rw)
                });
            if let Err(e) = registered {
                warn!("ADB connection dropped: epoll: {e}");
                let _ = self.registry.deregister(&mut SourceFd(&client.as_raw_fd()));
                continue;
            }
            let (up, down) = if splices(&target) {
                (self.spliced(), self.spliced())
            } else {
                (Pipe::copy(), Pipe::copy())
            };
            debug!(
                "ADB connection {id} accepted ({} active)",
                self.conns.len() + 1
            );
            self.conns.insert(
                id,
                Conn {
                    client,
                    adbd,
                    connected: false,
                    up,
                    down,
                },
            );
            self.service(id);
        }
    }

    fn service(&mut self, id: usize) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let (c, a) = (conn.client.as_raw_fd(), conn.adbd.as_raw_fd());
        if !conn.connected {
            match socket_error(a) {
                Ok(()) => {}
                Err(e) => return self.close(id, &format!("adbd refused: {e}")),
            }
            // Still connecting: getpeername fails until it completes.
            // SAFETY: an all-zero sockaddr_storage and its length.
            let mut addr: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
            let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            // SAFETY: addr and len are live and sized for any address.
            let rc = unsafe {
                libc::getpeername(
                    a,
                    (&mut addr as *mut libc::sockaddr_storage).cast(),
                    &mut len,
                )
            };
            if rc < 0 {
                return;
            }
            conn.connected = true;
        }
        if let Pumped::Failed(e) = pump(&mut conn.up, c, a) {
            return self.close(id, &format!("client -> adbd: {e}"));
        }
        if let Pumped::Failed(e) = pump(&mut conn.down, a, c) {
            return self.close(id, &format!("adbd -> client: {e}"));
        }
        if conn.up.shut && conn.down.shut {
            self.close(id, "both sides finished");
        }
    }

    /// A direction through a pipe: a spare one, or a new one; the copy
    /// path when no pipe of [`PIPE_SIZE`] can be had.
    fn spliced(&mut self) -> Pipe {
        if let Some(pipe) = self.spare.pop() {
            return Pipe::splice(pipe);
        }
        match KernelPipe::new() {
            Ok(pipe) => Pipe::splice(pipe),
            Err(e) => {
                let why = e.to_string();
                if self.no_splice.as_deref() != Some(why.as_str()) {
                    warn!(
                        "ADB relay copies through user space: no pipe of {PIPE_SIZE} bytes: {why}"
                    );
                    self.no_splice = Some(why);
                }
                Pipe::copy()
            }
        }
    }

    fn close(&mut self, id: usize, why: &str) {
        if let Some(conn) = self.conns.remove(&id) {
            let _ = self
                .registry
                .deregister(&mut SourceFd(&conn.client.as_raw_fd()));
            let _ = self
                .registry
                .deregister(&mut SourceFd(&conn.adbd.as_raw_fd()));
            debug!("ADB connection {id} closed: {why}");
            for pipe in [conn.up, conn.down] {
                if self.spare.len() < SPARE_PIPES {
                    self.spare.extend(pipe.into_spare());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::thread::JoinHandle;
    use std::time::Duration;

    #[test]
    fn the_limit_admits_up_to_max_connections() {
        assert!(admits(0, 1));
        assert!(!admits(1, 1));
        assert!(admits(99, 100));
        assert!(!admits(100, 100));
    }

    #[test]
    fn only_tcp_targets_are_spliced() {
        assert!(splices(&AdbTarget::Tcp(
            "127.0.0.1:5555".parse().expect("addr")
        )));
        assert!(!splices(&AdbTarget::Vsock { cid: 3, port: 5555 }));
        assert!(!splices(&AdbTarget::Unix("/run/adbd".into())));
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    /// A relay on a loopback listener, run by the test thread.
    struct Harness {
        poll: mio::Poll,
        relay: Relay,
        port: u16,
    }

    impl Harness {
        fn new(target: AdbTarget) -> Harness {
            let front = std::net::TcpListener::bind("127.0.0.1:0").expect("front");
            let port = front.local_addr().expect("addr").port();
            let poll = mio::Poll::new().expect("poll");
            let mut relay = Relay::new(poll.registry().try_clone().expect("registry"));
            relay
                .listen(OwnedFd::from(front), target, 4)
                .expect("listen");
            Harness { poll, relay, port }
        }

        /// Runs the relay until `client` has finished; its result.
        fn run<T>(&mut self, client: JoinHandle<T>) -> T {
            let mut events = mio::Events::with_capacity(64);
            while !client.is_finished() {
                self.poll
                    .poll(&mut events, Some(Duration::from_millis(20)))
                    .expect("poll");
                for e in events.iter() {
                    self.relay.ready(e.token());
                }
            }
            client.join().expect("client")
        }

        /// Runs the relay until every connection has closed.
        fn settle(&mut self) {
            let mut events = mio::Events::with_capacity(64);
            for _ in 0..100 {
                if self.relay.active() == 0 {
                    return;
                }
                self.poll
                    .poll(&mut events, Some(Duration::from_millis(20)))
                    .expect("poll");
                for e in events.iter() {
                    self.relay.ready(e.token());
                }
            }
            panic!("{} connection(s) still open", self.relay.active());
        }
    }

    /// adbd's stand-in: reads to EOF, after `stall` without reading, then
    /// echoes everything and closes.
    fn echo_once(stall: Duration) -> impl FnOnce(std::net::TcpStream) {
        move |mut s| {
            std::thread::sleep(stall);
            let mut all = Vec::new();
            s.read_to_end(&mut all).expect("read");
            s.write_all(&all).expect("write");
        }
    }

    /// A client that sends `len` bytes, half-closes and checks the echo.
    fn echo_client(port: u16, len: usize) -> JoinHandle<bool> {
        std::thread::spawn(move || {
            let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
            let data = pattern(len);
            c.write_all(&data).expect("send");
            c.shutdown(std::net::Shutdown::Write).expect("shutdown");
            let mut back = Vec::new();
            c.read_to_end(&mut back).expect("recv");
            back == data
        })
    }

    fn tcp_adbd(
        connections: usize,
        serve: impl Fn(std::net::TcpStream) + Send + 'static,
    ) -> (AdbTarget, JoinHandle<()>) {
        let adbd = std::net::TcpListener::bind("127.0.0.1:0").expect("adbd");
        let target = AdbTarget::Tcp(adbd.local_addr().expect("addr"));
        let thread = std::thread::spawn(move || {
            for _ in 0..connections {
                let (s, _) = adbd.accept().expect("accept");
                serve(s);
            }
        });
        (target, thread)
    }

    #[test]
    fn data_crosses_both_ways_with_half_close() {
        let (target, adbd) = tcp_adbd(1, |s| echo_once(Duration::ZERO)(s));
        let mut h = Harness::new(target);
        assert!(h.run(echo_client(h.port, 3_000_000)));
        adbd.join().expect("adbd");
        h.settle();
        assert_eq!(h.relay.active(), 0);
    }

    #[test]
    fn a_stalled_reader_holds_bytes_in_the_pipe_and_loses_none() {
        // adbd reads nothing for a while: the relay's pipe fills, then the
        // sockets' buffers, then the client blocks; all of it arrives.
        let (target, adbd) = tcp_adbd(1, |s| echo_once(Duration::from_millis(300))(s));
        let mut h = Harness::new(target);
        assert!(h.run(echo_client(h.port, 16 << 20)));
        adbd.join().expect("adbd");
        h.settle();
    }

    #[test]
    fn the_pipes_of_closed_connections_are_reused_empty() {
        let (target, adbd) = tcp_adbd(3, |s| echo_once(Duration::ZERO)(s));
        let mut h = Harness::new(target);
        assert!(h.run(echo_client(h.port, 1_000_000)));
        h.settle();
        assert_eq!(h.relay.spare.len(), 2, "both pipes are kept");
        assert!(h.relay.spare.iter().all(|p| p.held == 0));
        for _ in 0..2 {
            assert!(h.run(echo_client(h.port, 1_000_000)));
            h.settle();
            assert_eq!(h.relay.spare.len(), 2, "the same two pipes again");
        }
        adbd.join().expect("adbd");
    }

    #[test]
    fn an_adbd_that_closes_early_ends_the_connection() {
        // adbd takes 1 byte and resets: the client sees its connection end
        // (reset or EOF), the relay closes the pair.
        let (target, adbd) = tcp_adbd(1, |mut s| {
            let mut b = [0u8; 1];
            s.read_exact(&mut b).expect("read");
        });
        let mut h = Harness::new(target);
        let port = h.port;
        let client = std::thread::spawn(move || {
            let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
            c.set_read_timeout(Some(Duration::from_secs(10)))
                .expect("timeout");
            let data = pattern(8 << 20);
            let _ = c.write_all(&data);
            let mut rest = Vec::new();
            // Ends with EOF or a reset, not with the timeout.
            match c.read_to_end(&mut rest) {
                Ok(_) => true,
                Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
            }
        });
        assert!(h.run(client));
        adbd.join().expect("adbd");
        h.settle();
    }

    #[test]
    fn a_unix_target_is_relayed_on_the_copy_path() {
        let dir = std::env::temp_dir().join(format!("adb-proxy-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("adbd");
        let _ = std::fs::remove_file(&path);
        let adbd = std::os::unix::net::UnixListener::bind(&path).expect("adbd");
        let target = AdbTarget::Unix(path.to_string_lossy().into_owned());
        let server = std::thread::spawn(move || {
            let (mut s, _) = adbd.accept().expect("accept");
            let mut all = Vec::new();
            s.read_to_end(&mut all).expect("read");
            s.write_all(&all).expect("write");
        });
        let mut h = Harness::new(target);
        assert!(h.run(echo_client(h.port, 3_000_000)));
        server.join().expect("adbd");
        h.settle();
        assert!(h.relay.spare.is_empty(), "no pipe for a Unix target");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
