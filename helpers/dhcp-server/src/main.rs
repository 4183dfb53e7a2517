//! `patchpanel-dhcp-server`: DHCPv4 for guest links, as a sandboxed helper
//! (uid patchpaneld, CAP_NET_BIND_SERVICE only: port 67).
//!
//! The manager says which links to serve and with what
//! ([`Request::DhcpServe`], replacing an earlier config of the same link;
//! [`Request::DhcpStop`]; both idempotent and replayed to a respawned
//! helper, so a restart keeps serving with no D-Bus call). Each link gets a
//! UDP socket on port 67 pinned to the link (`SO_BINDTODEVICE`), so it
//! hears only that link's clients and its broadcast replies leave only
//! through it. [`patchpanel_dhcp::Server`] decides each answer; every drop
//! is counted by reason and the counts are logged when the helper stops
//! and, at most once a minute, when drops happen.

use std::collections::BTreeMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use log::{info, warn};
use mio::net::UdpSocket as MioUdp;
use mio::{Interest, Registry, Token};
use patchpanel_dhcp::{
    Destination, DropReason, LinkConfig, Outcome, Server, CLIENT_PORT, SERVER_PORT,
};
use patchpanel_helper_runtime::Service;
use patchpanel_ipc::{Event, HelperError, IfName, Reply, Request};
use patchpanel_sandbox::Process;

/// The links' tokens start here (0 is the manager channel).
const FIRST_TOKEN: usize = 1;
/// How often drop counts may be logged.
const DROP_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// One served link.
#[derive(Debug)]
struct Link {
    name: IfName,
    socket: MioUdp,
    server: Server,
}

#[derive(Debug, Default)]
struct DhcpServer {
    registry: Option<Registry>,
    links: BTreeMap<Token, Link>,
    next_token: usize,
    /// Answers sent, by message type name.
    answered: BTreeMap<&'static str, u64>,
    dropped: BTreeMap<DropReason, u64>,
    /// Replies the kernel refused to send.
    send_errors: u64,
    last_drop_log: Option<Instant>,
}

fn os_error(operation: String, e: &io::Error) -> HelperError {
    HelperError::Os {
        operation,
        errno: e.raw_os_error(),
        message: e.to_string(),
    }
}

/// A UDP socket on 0.0.0.0:67 that hears and sends on `ifname` only.
fn link_socket(ifname: &IfName) -> io::Result<UdpSocket> {
    // SAFETY: plain socket(2); the result is checked.
    let fd = unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let set = |level: libc::c_int, name: libc::c_int, value: &[u8]| -> io::Result<()> {
        // SAFETY: `value` is valid for its length during the call.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                level,
                name,
                value.as_ptr().cast(),
                value.len() as libc::socklen_t,
            )
        };
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    };
    let one = 1i32.to_ne_bytes();
    // Other servers may have port 67 on other links (libvirt's dnsmasq).
    set(libc::SOL_SOCKET, libc::SO_REUSEADDR, &one)?;
    set(libc::SOL_SOCKET, libc::SO_BROADCAST, &one)?;
    set(
        libc::SOL_SOCKET,
        libc::SO_BINDTODEVICE,
        ifname.as_str().as_bytes(),
    )?;
    // SAFETY: sockaddr_in is plain data; zeroes are the wildcard address.
    let mut addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    addr.sin_family = libc::AF_INET as libc::sa_family_t;
    addr.sin_port = SERVER_PORT.to_be();
    // SAFETY: `addr` is a valid sockaddr_in for the call.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(UdpSocket::from(fd))
}

impl DhcpServer {
    fn serve(&mut self, ifname: &IfName, config: &LinkConfig) -> Result<Reply, HelperError> {
        config
            .check()
            .map_err(|e| HelperError::Refused(format!("DHCP on {ifname}: {e}")))?;
        if let Some(link) = self.links.values_mut().find(|l| l.name == *ifname) {
            if link.server.config() != config {
                info!("DHCP on {ifname}: now {}", describe(config));
                link.server.reconfigure(config.clone());
            }
            return Ok(Reply::Done);
        }
        let registry = self
            .registry
            .as_ref()
            .ok_or_else(|| HelperError::Refused("the DHCP server is not running".into()))?;
        let socket =
            link_socket(ifname).map_err(|e| os_error(format!("DHCP socket on {ifname}"), &e))?;
        let mut socket = MioUdp::from_std(socket);
        let token = Token(FIRST_TOKEN + self.next_token);
        self.next_token += 1;
        registry
            .register(&mut socket, token, Interest::READABLE)
            .map_err(|e| os_error(format!("epoll for {ifname}"), &e))?;
        info!("DHCP on {ifname}: {}", describe(config));
        self.links.insert(
            token,
            Link {
                name: ifname.clone(),
                socket,
                server: Server::new(config.clone()),
            },
        );
        Ok(Reply::Done)
    }

    fn stop(&mut self, ifname: &IfName) {
        let Some(token) = self
            .links
            .iter()
            .find(|(_, l)| l.name == *ifname)
            .map(|(t, _)| *t)
        else {
            return;
        };
        if let Some(mut link) = self.links.remove(&token) {
            if let Some(r) = &self.registry {
                let _ = r.deregister(&mut link.socket);
            }
            info!("DHCP on {ifname} stopped");
        }
    }

    /// Drains one link's socket.
    fn serve_link(&mut self, token: Token) {
        let Some(link) = self.links.get_mut(&token) else {
            return;
        };
        // One datagram more than a request may be: an oversized one is
        // seen as such (MSG_TRUNC is not needed to tell).
        let mut buf = [0u8; patchpanel_dhcp::MAX_REQUEST + 1];
        loop {
            let (len, from) = match link.socket.recv_from(&mut buf) {
                Ok(r) => r,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    warn!("DHCP on {}: receive: {e}", link.name);
                    break;
                }
            };
            match link.server.handle(&buf[..len], Instant::now()) {
                Outcome::Reply { bytes, to, kind } => {
                    let dest = match to {
                        Destination::Broadcast => {
                            SocketAddrV4::new(Ipv4Addr::BROADCAST, CLIENT_PORT)
                        }
                        Destination::Unicast(a) => SocketAddrV4::new(a, CLIENT_PORT),
                    };
                    match link.socket.send_to(&bytes, dest.into()) {
                        Ok(_) => {
                            *self.answered.entry(message_name(kind)).or_default() += 1;
                        }
                        Err(e) => {
                            self.send_errors += 1;
                            warn!(
                                "DHCP on {}: send to {dest} (asked from {from}): {e}",
                                link.name
                            );
                        }
                    }
                }
                Outcome::Done => {}
                Outcome::Dropped(why) => {
                    *self.dropped.entry(why).or_default() += 1;
                    let now = Instant::now();
                    if self
                        .last_drop_log
                        .is_none_or(|t| now.duration_since(t) >= DROP_LOG_INTERVAL)
                    {
                        self.last_drop_log = Some(now);
                        warn!(
                            "DHCP on {}: dropped a request from {from} ({}); {}",
                            link.name,
                            why.name(),
                            drops(&self.dropped)
                        );
                    }
                }
            }
        }
    }
}

fn message_name(kind: patchpanel_dhcp::MessageType) -> &'static str {
    use patchpanel_dhcp::MessageType as M;
    match kind {
        M::Offer => "offers",
        M::Ack => "acks",
        M::Nak => "naks",
        _ => "other",
    }
}

fn drops(d: &BTreeMap<DropReason, u64>) -> String {
    let total: u64 = d.values().sum();
    let parts: Vec<String> = d.iter().map(|(k, v)| format!("{} {v}", k.name())).collect();
    format!("{total} dropped so far ({})", parts.join(", "))
}

fn describe(c: &LinkConfig) -> String {
    format!(
        "{}/{} via {}, DNS {}, MTU {}, lease {} s",
        c.client,
        c.prefix_len,
        c.server,
        if c.dns.is_empty() {
            "none".to_string()
        } else {
            c.dns
                .iter()
                .map(|a| a.to_string())
                .collect::<Vec<_>>()
                .join(" ")
        },
        c.mtu.map_or("default".to_string(), |m| m.to_string()),
        c.lease_secs
    )
}

impl Service for DhcpServer {
    fn handle(
        &mut self,
        request: &Request,
        _fds: Vec<OwnedFd>,
    ) -> Option<Result<Reply, HelperError>> {
        Some(match request {
            Request::DhcpServe { ifname, config } => self.serve(ifname, config),
            Request::DhcpStop { ifname } => {
                self.stop(ifname);
                Ok(Reply::Done)
            }
            _ => return None,
        })
    }

    fn start(&mut self, registry: &Registry) -> Result<(), String> {
        self.registry = Some(registry.try_clone().map_err(|e| format!("epoll: {e}"))?);
        Ok(())
    }

    fn ready(&mut self, token: Token) -> Result<Vec<Event>, String> {
        self.serve_link(token);
        Ok(Vec::new())
    }
}

impl Drop for DhcpServer {
    fn drop(&mut self) {
        let answered: Vec<String> = self
            .answered
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        info!(
            "DHCP server: {} answered ({}), {}, send errors {}",
            self.answered.values().sum::<u64>(),
            answered.join(", "),
            drops(&self.dropped),
            self.send_errors
        );
    }
}

fn main() -> ExitCode {
    patchpanel_helper_runtime::run(Process::DhcpServer, DhcpServer::default())
}
