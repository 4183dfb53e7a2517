//! The relay engine: accepts on a listening socket handed in by the
//! manager and copies bytes both ways between each client and ARC's adbd.
//!
//! One mio loop for every connection (no thread per connection, unlike
//! upstream). Each direction has its own 256 KiB buffer and is pumped
//! independently: a stalled writer only stops reading from its own source.
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

/// Bytes buffered per direction of a connection.
const BUFFER: usize = 256 * 1024;

/// The listener's token; connections use the tokens above it.
pub const LISTENER: Token = Token(1);
const FIRST_CONN: usize = 2;

/// One direction of a relayed connection.
#[derive(Debug)]
struct Pipe {
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    /// The source said EOF.
    eof: bool,
    /// EOF was passed on to the destination.
    shut: bool,
}

impl Pipe {
    fn new() -> Pipe {
        Pipe {
            buf: vec![0; BUFFER].into_boxed_slice(),
            start: 0,
            end: 0,
            eof: false,
            shut: false,
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

/// Moves what `from` has to `to` until one of them would block.
fn pump(pipe: &mut Pipe, from: RawFd, to: RawFd) -> Pumped {
    loop {
        while pipe.start < pipe.end {
            match send(to, &pipe.buf[pipe.start..pipe.end]) {
                Ok(n) => pipe.start += n,
                Err(e) if would_block(&e) => return Pumped::Open,
                Err(e) => return Pumped::Failed(e),
            }
        }
        pipe.start = 0;
        pipe.end = 0;
        if pipe.eof {
            if !pipe.shut {
                pipe.shut = true;
                // SAFETY: shutdown(2) on a socket this relay owns.
                if unsafe { libc::shutdown(to, libc::SHUT_WR) } < 0 {
                    let e = io::Error::last_os_error();
                    if e.raw_os_error() != Some(libc::ENOTCONN) {
                        return Pumped::Failed(e);
                    }
                }
            }
            return Pumped::Open;
        }
        match recv(from, &mut pipe.buf) {
            Ok(0) => pipe.eof = true,
            Ok(n) => pipe.end = n,
            Err(e) if would_block(&e) => return Pumped::Open,
            Err(e) => return Pumped::Failed(e),
        }
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
                    up: Pipe::new(),
                    down: Pipe::new(),
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

    fn close(&mut self, id: usize, why: &str) {
        if let Some(conn) = self.conns.remove(&id) {
            let _ = self
                .registry
                .deregister(&mut SourceFd(&conn.client.as_raw_fd()));
            let _ = self
                .registry
                .deregister(&mut SourceFd(&conn.adbd.as_raw_fd()));
            debug!("ADB connection {id} closed: {why}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_admits_up_to_max_connections() {
        assert!(admits(0, 1));
        assert!(!admits(1, 1));
        assert!(admits(99, 100));
        assert!(!admits(100, 100));
    }

    #[test]
    fn data_crosses_both_ways_with_half_close() {
        use std::io::{Read, Write};
        let adbd = std::net::TcpListener::bind("127.0.0.1:0").expect("adbd");
        let front = std::net::TcpListener::bind("127.0.0.1:0").expect("front");
        let port = front.local_addr().expect("addr").port();
        let target = AdbTarget::Tcp(adbd.local_addr().expect("addr"));
        let mut poll = mio::Poll::new().expect("poll");
        let mut relay = Relay::new(poll.registry().try_clone().expect("registry"));
        relay
            .listen(OwnedFd::from(front), target, 4)
            .expect("listen");
        let echo = std::thread::spawn(move || {
            let (mut s, _) = adbd.accept().expect("accept");
            let mut all = Vec::new();
            s.read_to_end(&mut all).expect("read");
            s.write_all(&all).expect("write");
        });
        let client = std::thread::spawn(move || {
            let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
            let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
            c.write_all(&data).expect("send");
            c.shutdown(std::net::Shutdown::Write).expect("shutdown");
            let mut back = Vec::new();
            c.read_to_end(&mut back).expect("recv");
            back == data
        });
        let mut events = mio::Events::with_capacity(64);
        while !client.is_finished() {
            poll.poll(&mut events, Some(std::time::Duration::from_millis(100)))
                .expect("poll");
            for e in events.iter() {
                relay.ready(e.token());
            }
        }
        assert!(client.join().expect("client"));
        echo.join().expect("echo");
        assert_eq!(relay.active(), 0);
    }
}
