//! The forwarding engine: one set of sockets per link, one mio registry,
//! no threads. Used by the `patchpanel-mcast-forwarder` helper (pairs from
//! the manager) and by the standalone `mcastd` (pairs from its command
//! line).
//!
//! A *pair* is (uplink, downlink, directions). For each link in some pair
//! the forwarder keeps a group socket per protocol and family (see
//! [`crate::socket`]) and, for broadcast, one raw socket. A datagram that
//! arrives
//! * on an uplink goes to every downlink paired with it inbound;
//! * on a downlink whose pair is outbound goes to the uplink (IPv4 mDNS
//!   responses with the guest's A records rewritten to the uplink's
//!   address, [`crate::packet::Rewriter`]) and to the other downlinks of
//!   that uplink that are inbound (unchanged: guests reach each other's
//!   private addresses).
//!
//! Where a link's datagrams go is worked out when pairs or links change
//! (a [`Route`] per link), not per datagram.
//!
//! At rate: a readable socket is read [`socket::BATCH`] datagrams at a
//! time (`recvmmsg`), and the copies they make are queued and sent per
//! socket [`socket::BATCH`] at a time (`sendmmsg`) once the batch is
//! handled. The receive slots, the send queue, the rewrite's working
//! memory and the echo memory are allocated once (or grow to a high-water
//! mark) and reused: nothing is allocated per datagram. A link's IPv4
//! configuration (for `mcastd`, the uplink's address of the rewrite; for
//! broadcast, the links' addresses) is read once per batch, not per
//! datagram. One socket is read at most [`MAX_BATCHES_PER_WAKE`] batches
//! in a row; then it is re-armed and the other ready sockets (another
//! guest, the manager's channel) go first.
//!
//! What one guest may cost the forwarder is bounded: its IPv4 mDNS to the
//! LAN is charged to a per-downlink budget ([`crate::budget`]); beyond it,
//! and for messages longer than RFC 6762 allows
//! ([`crate::packet::MAX_MDNS_MESSAGE`]), the LAN copy is dropped and
//! counted ([`Stats::mdns_over_budget`], [`Stats::mdns_too_long`]). What
//! the kernel drops because a socket's receive buffer was full is counted
//! too ([`Stats::receive_overflows`]); the receive buffers are asked to be
//! [`RECEIVE_BUFFER`] bytes (capped by `net.core.rmem_max`).
//!
//! A query that expects a unicast answer (a legacy mDNS query from a port
//! other than 5353, an SSDP M-SEARCH) is sent on each egress link from a
//! fresh *session* socket that lives for [`SESSION_LIFETIME`]; whatever is
//! answered to it is sent back from the ingress link's group socket to the
//! querier's own address and port.
//!
//! Loops: our sends never loop back to our sockets (multicast loopback off,
//! every socket pinned to one link), the ingress link is never an egress
//! link, and a datagram identical to one we sent on a link in the last
//! [`ECHO_WINDOW`] is dropped when it arrives on that link (a reflector
//! elsewhere sending our copy back; identical mDNS questions and answers
//! within a second are suppressed by mDNS itself, RFC 6762 §7.3, 7.4);
//! see [`crate::echo`].

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV6};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};

use crate::broadcast;
use crate::budget::{MdnsBudget, TokenBucket};
use crate::echo::EchoMemory;
pub use crate::echo::ECHO_WINDOW;
use crate::packet::{
    classify_ssdp, is_legacy_mdns_query, Rewriter, Rewritten, Ssdp, MAX_MDNS_MESSAGE, MDNS_PORT,
    MDNS_V4, MDNS_V6, SSDP_PORT, SSDP_V4, SSDP_V6,
};
use crate::socket::{self, Family, RecvBatch, V4Config, BATCH};

mod send;
mod types;

use send::SendQueue;
pub use types::*;

/// How long a session socket waits for unicast answers (SSDP's MX is at
/// most 5 s, UDA 1.1 §1.3.2; legacy mDNS resolvers wait less).
pub const SESSION_LIFETIME: Duration = Duration::from_secs(6);
/// At most this many session sockets at once; the oldest goes first.
pub const MAX_SESSIONS: usize = 256;
/// At most one warning per downlink this often about its dropped mDNS.
const DROP_WARNING_EVERY: Duration = Duration::from_secs(10);
/// A receive slot: larger than any UDP payload, so nothing is cut (a
/// datagram that still is, is counted and dropped, never forwarded cut).
/// The [`socket::BATCH`] slots are one zeroed allocation whose pages are
/// touched only as far as datagrams fill them.
const BUFFER: usize = 65536 + 1;
/// The receive buffer each socket asks for (`SO_RCVBUF`; the kernel caps
/// it at `net.core.rmem_max` and doubles it). The default, 208 KiB, holds
/// about 270 short mDNS datagrams (each costs its ~770-byte sk_buff):
/// 5 ms at 50,000 a second, less than a busy 2-CPU machine may keep the
/// forwarder from running. 1 MiB asked (2 MiB once doubled) holds about
/// 2,700.
pub const RECEIVE_BUFFER: usize = 1 << 20;
/// One socket is read at most this many batches in a row per wake-up.
pub const MAX_BATCHES_PER_WAKE: usize = 8;
/// Copies queued at most before they are sent (a multiple of
/// [`socket::BATCH`]).
const QUEUE_LEN: usize = 2 * BATCH;
/// Bytes queued at most before the queue is sent: more than the longest
/// datagram (an IPv4 packet for the raw socket, 65,535 bytes).
const QUEUE_BYTES: usize = 256 * 1024;

/// Where a link's datagrams go, worked out when pairs or links change
/// ([`Forwarder::rebuild_routes`]).
#[derive(Debug, Default)]
struct Route {
    /// The link is an uplink: `copies` are its inbound downlinks, and a
    /// query from it that expects a unicast answer gets a session whose
    /// answers are rewritten on their way back to the LAN.
    uplink: bool,
    /// For an uplink, the IPv4 address its (first) pair gives for the
    /// rewrite; None: read it from the link.
    uplink_ipv4: Option<Ipv4Addr>,
    /// The links that get an unchanged copy: an uplink's inbound
    /// downlinks; for an outbound downlink, the other inbound downlinks of
    /// its uplink.
    copies: Vec<Arc<str>>,
    /// For a downlink whose pair is outbound: where it crosses to the LAN.
    to_lan: Option<ToLan>,
}

#[derive(Debug)]
struct Link {
    name: Arc<str>,
    ifindex: u32,
    group: BTreeMap<(Protocol, Family), (Token, OwnedFd)>,
    /// Broadcast: the packet socket that receives and the raw socket
    /// that sends.
    raw: Option<(Token, OwnedFd, OwnedFd)>,
    route: Arc<Route>,
    /// The link's IPv4 configuration as read during batch `.0`
    /// ([`Forwarder::v4`]).
    v4: Cell<Option<(u64, Option<V4Config>)>>,
}

impl Link {
    /// The sockets that receive.
    fn receiving(&self) -> impl Iterator<Item = RawFd> + '_ {
        self.group
            .values()
            .map(|(_, fd)| fd.as_raw_fd())
            .chain(self.raw.as_ref().map(|(_, rx, _)| rx.as_raw_fd()))
    }
}

#[derive(Debug)]
struct Session {
    fd: OwnedFd,
    protocol: Protocol,
    family: Family,
    /// The link the query came in on; answers leave from its group socket.
    ingress: Arc<str>,
    /// The querier.
    querier: SocketAddr,
    /// Answers go from a guest to the LAN: rewrite their A records.
    rewrite: Option<ToLan>,
    expires: Instant,
}

/// Where a guest's mDNS crosses to the LAN.
#[derive(Debug, Clone)]
struct ToLan {
    uplink: Arc<str>,
    downlink: Arc<str>,
}

/// What goes to the LAN in place of a guest's IPv4 mDNS message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outbound {
    Unchanged,
    /// The rewritten message is in [`Forwarder::scratch`].
    Rewritten,
    Dropped,
}

/// A downlink's budget and when its drops were last logged.
#[derive(Debug)]
struct Budget {
    bucket: TokenBucket,
    warned: Option<Instant>,
}

#[derive(Debug, Clone)]
enum Source {
    Group {
        link: Arc<str>,
        protocol: Protocol,
        family: Family,
    },
    Raw {
        link: Arc<str>,
    },
    Session,
}

/// What a queued copy is, for what is done once it is sent.
#[derive(Debug, Clone, Copy)]
enum Kind {
    /// A relayed datagram: remembered as ours on its link (the echo
    /// guard) by the digest of its payload.
    Relayed { digest: u64 },
    /// A unicast answer back to a querier.
    Reply,
}

/// The forwarder; see the module comment.
#[derive(Debug)]
pub struct Forwarder {
    registry: Registry,
    protocols: Protocols,
    next_token: usize,
    /// An AF_INET socket for the SIOCGIF* address queries.
    ctl: OwnedFd,
    pairs: BTreeMap<String, Pair>,
    links: BTreeMap<String, Link>,
    sources: HashMap<Token, Source>,
    sessions: HashMap<Token, Session>,
    session_order: VecDeque<Token>,
    /// What we sent where, for the echo guard.
    echo: EchoMemory,
    last_error: HashMap<String, i32>,
    /// What each downlink may send through the rewrite.
    mdns_budget: MdnsBudget,
    /// By downlink: what its guest may still send through the rewrite.
    budgets: HashMap<String, Budget>,
    stats: Stats,
    /// What the kernel dropped on sockets closed since.
    closed_overflows: u64,
    /// What each receiving socket asks for as its receive buffer.
    receive_buffer: usize,
    /// Whether the receive buffer the kernel gave was logged.
    receive_buffer_logged: bool,
    batch: RecvBatch,
    queue: SendQueue,
    rewriter: Rewriter,
    /// A rewritten message or a built broadcast packet.
    scratch: Vec<u8>,
    /// Counts the batches handled; a link's IPv4 configuration is read
    /// once per batch.
    generation: u64,
    /// When the batch under way was received.
    now: Instant,
}

fn os(what: impl Into<String>) -> impl FnOnce(io::Error) -> ForwarderError {
    let what = what.into();
    move |source| ForwarderError::Os { what, source }
}

/// Whether a datagram asks for an answer to its own address and port.
fn wants_unicast_answer(protocol: Protocol, payload: &[u8], from: &SocketAddr) -> bool {
    match protocol {
        Protocol::Mdns => is_legacy_mdns_query(payload, from.port()),
        Protocol::Ssdp => classify_ssdp(payload) == Ssdp::Search,
    }
}

fn group_addr(protocol: Protocol, family: Family, ifindex: u32) -> SocketAddr {
    match protocol.group(family) {
        IpAddr::V4(g) => SocketAddr::new(g.into(), protocol.port()),
        IpAddr::V6(g) => SocketAddr::V6(SocketAddrV6::new(g, protocol.port(), 0, ifindex)),
    }
}

impl Forwarder {
    /// A forwarder with no pairs; its sockets will be registered with
    /// `registry` under tokens from `first_token` up.
    pub fn new(
        registry: &Registry,
        first_token: usize,
        protocols: Protocols,
    ) -> Result<Forwarder, ForwarderError> {
        let registry = registry
            .try_clone()
            .map_err(os("clone the epoll registry"))?;
        // A UDP socket on no port, only for the address ioctls.
        // SAFETY: plain socket(2); the fd returned is new and owned here.
        let ctl = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if ctl < 0 {
            return Err(os("open a control socket")(io::Error::last_os_error()));
        }
        // SAFETY: `ctl` was just returned by socket(2) and is owned by no one else.
        let ctl = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(ctl) };
        Ok(Forwarder {
            registry,
            protocols,
            next_token: first_token,
            ctl,
            pairs: BTreeMap::new(),
            links: BTreeMap::new(),
            sources: HashMap::new(),
            sessions: HashMap::new(),
            session_order: VecDeque::new(),
            echo: EchoMemory::default(),
            last_error: HashMap::new(),
            mdns_budget: MdnsBudget::DEFAULT,
            budgets: HashMap::new(),
            stats: Stats::default(),
            closed_overflows: 0,
            receive_buffer: RECEIVE_BUFFER,
            receive_buffer_logged: false,
            batch: RecvBatch::new(BUFFER),
            queue: SendQueue::with_capacity(),
            rewriter: Rewriter::default(),
            scratch: Vec::with_capacity(BUFFER),
            generation: 0,
            now: Instant::now(),
        })
    }

    /// The counters; [`Stats::receive_overflows`] is read from the
    /// sockets now.
    pub fn stats(&self) -> Stats {
        let open: u64 = self
            .links
            .values()
            .flat_map(Link::receiving)
            .chain(self.sessions.values().map(|s| s.fd.as_raw_fd()))
            .map(|fd| socket::drops(fd).map_or(0, u64::from))
            .sum();
        Stats {
            receive_overflows: self.closed_overflows + open,
            ..self.stats
        }
    }

    /// Changes what each downlink's IPv4 mDNS to the LAN may amount to
    /// ([`MdnsBudget::DEFAULT`] otherwise); every downlink starts afresh.
    pub fn set_mdns_budget(&mut self, budget: MdnsBudget) {
        self.mdns_budget = budget;
        self.budgets.clear();
    }

    /// Changes the receive buffer each socket asks for
    /// ([`RECEIVE_BUFFER`] otherwise), of the sockets open and to come.
    pub fn set_receive_buffer(&mut self, bytes: usize) {
        self.receive_buffer = bytes;
        self.receive_buffer_logged = false;
        let fds: Vec<(RawFd, Arc<str>)> = self
            .links
            .values()
            .flat_map(|l| l.receiving().map(|fd| (fd, l.name.clone())))
            .collect();
        for (fd, name) in fds {
            self.size_receive_buffer(fd, &name);
        }
    }

    /// The pairs forwarded now, by downlink.
    pub fn pairs(&self) -> &BTreeMap<String, Pair> {
        &self.pairs
    }

    /// Starts (or replaces) the pair of `pair.downlink`. Idempotent.
    pub fn start(&mut self, pair: Pair) -> Result<(), ForwarderError> {
        if pair.uplink == pair.downlink {
            return Err(ForwarderError::Pair(format!(
                "{} cannot be paired with itself",
                pair.uplink
            )));
        }
        if self.pairs.contains_key(&pair.uplink)
            || self.pairs.values().any(|p| p.uplink == pair.downlink)
        {
            return Err(ForwarderError::Pair(format!(
                "{} -> {}: a link is either an uplink or a downlink",
                pair.uplink, pair.downlink
            )));
        }
        if self.pairs.get(&pair.downlink) == Some(&pair) {
            return Ok(());
        }
        for name in [&pair.uplink, &pair.downlink] {
            if !self.links.contains_key(name.as_str()) {
                let link = self.open_link(name)?;
                self.links.insert(name.clone(), link);
            }
        }
        info!(
            "forwarding {} {} {} (uplink IPv4 {})",
            pair.uplink,
            match (pair.inbound, pair.outbound) {
                (true, true) => "<->",
                (true, false) => "->",
                (false, true) => "<-",
                (false, false) => "(no direction)",
            },
            pair.downlink,
            pair.uplink_ipv4
                .map_or("read from the link".to_string(), |a| a.to_string())
        );
        self.pairs.insert(pair.downlink.clone(), pair);
        self.close_unused_links();
        self.rebuild_routes();
        Ok(())
    }

    /// Stops the pair of `downlink`, if any; closes the sockets of links
    /// no pair uses any more.
    pub fn stop(&mut self, downlink: &str) {
        self.budgets.remove(downlink);
        if let Some(p) = self.pairs.remove(downlink) {
            info!(
                "stopped forwarding {} - {} ({})",
                p.uplink,
                p.downlink,
                self.stats()
            );
        }
        self.close_unused_links();
        self.rebuild_routes();
    }

    /// Rebuilds the sockets of links whose index changed (deleted and
    /// created again) and forgets the pairs whose links are gone. For
    /// `mcastd`; the helper is told by the manager instead.
    pub fn refresh(&mut self) {
        let stale: Vec<String> = self
            .links
            .iter()
            .filter(|(name, link)| socket::ifindex(name) != Some(link.ifindex))
            .map(|(name, _)| name.clone())
            .collect();
        if stale.is_empty() {
            return;
        }
        for name in stale {
            self.close_link(&name);
            match self.open_link(&name) {
                Ok(link) => {
                    info!("{name} was re-created; its sockets were rebuilt");
                    self.links.insert(name, link);
                }
                Err(e) => {
                    warn!("{name} is gone ({e}); its pairs wait for it");
                }
            }
        }
        self.rebuild_routes();
    }

    /// Whether every link of every pair has its sockets.
    pub fn complete(&self) -> bool {
        self.pairs
            .values()
            .all(|p| self.links.contains_key(&p.uplink) && self.links.contains_key(&p.downlink))
    }

    /// Opens the sockets of links that pairs need and lack (after a
    /// [`Forwarder::refresh`] found them gone).
    pub fn reopen_missing(&mut self) {
        let missing: Vec<String> = self
            .pairs
            .values()
            .flat_map(|p| [p.uplink.clone(), p.downlink.clone()])
            .filter(|n| !self.links.contains_key(n))
            .collect();
        for name in missing {
            if self.links.contains_key(&name) {
                continue;
            }
            if let Ok(link) = self.open_link(&name) {
                info!("{name} is back; forwarding on it again");
                self.links.insert(name, link);
            }
        }
        self.rebuild_routes();
    }

    /// Works out every link's [`Route`] from the pairs.
    fn rebuild_routes(&mut self) {
        let pairs = &self.pairs;
        for (name, link) in self.links.iter_mut() {
            let mut route = Route::default();
            let mut as_uplink = pairs.values().filter(|p| p.uplink == *name).peekable();
            if let Some(first) = as_uplink.peek() {
                route.uplink = true;
                route.uplink_ipv4 = first.uplink_ipv4;
                route.copies = as_uplink
                    .filter(|p| p.inbound)
                    .map(|p| Arc::from(p.downlink.as_str()))
                    .collect();
            } else if let Some(pair) = pairs.get(name).filter(|p| p.outbound) {
                route.copies = pairs
                    .values()
                    .filter(|p| p.uplink == pair.uplink && p.downlink != *name && p.inbound)
                    .map(|p| Arc::from(p.downlink.as_str()))
                    .collect();
                route.to_lan = Some(ToLan {
                    uplink: Arc::from(pair.uplink.as_str()),
                    downlink: link.name.clone(),
                });
            }
            link.route = Arc::new(route);
        }
    }

    fn token(&mut self) -> Token {
        let t = Token(self.next_token);
        self.next_token += 1;
        t
    }

    fn register(&mut self, fd: &OwnedFd, source: Option<Source>) -> Result<Token, ForwarderError> {
        let token = self.token();
        self.registry
            .register(&mut SourceFd(&fd.as_raw_fd()), token, Interest::READABLE)
            .map_err(os("epoll_ctl"))?;
        if let Some(s) = source {
            self.sources.insert(token, s);
        }
        Ok(token)
    }

    /// Asks for [`Forwarder::receive_buffer`] on a receiving socket; says
    /// once what the kernel gave.
    fn size_receive_buffer(&mut self, fd: RawFd, link: &str) {
        match socket::set_receive_buffer(fd, self.receive_buffer) {
            Ok(got) if !self.receive_buffer_logged => {
                self.receive_buffer_logged = true;
                if got < self.receive_buffer.saturating_mul(2) {
                    info!(
                        "receive buffers of {got} bytes ({} asked; net.core.rmem_max is lower)",
                        self.receive_buffer
                    );
                } else {
                    debug!("receive buffers of {got} bytes");
                }
            }
            Ok(_) => {}
            Err(e) => warn!("{link}: cannot size a receive buffer: {e}"),
        }
    }

    fn open_link(&mut self, name: &str) -> Result<Link, ForwarderError> {
        let ifindex =
            socket::ifindex(name).ok_or_else(|| ForwarderError::NoSuchLink(name.to_string()))?;
        let shared: Arc<str> = Arc::from(name);
        let mut link = Link {
            name: shared.clone(),
            ifindex,
            group: BTreeMap::new(),
            raw: None,
            route: Arc::default(),
            v4: Cell::new(None),
        };
        let protocols: Vec<Protocol> = self.protocols.multicast().collect();
        for protocol in protocols {
            for family in [Family::V4, Family::V6] {
                let opened = socket::udp(
                    family,
                    name,
                    ifindex,
                    protocol.port(),
                    Some(protocol.group(family)),
                    protocol.ttl(),
                );
                match opened {
                    Ok(fd) => {
                        self.size_receive_buffer(fd.as_raw_fd(), name);
                        let source = Source::Group {
                            link: shared.clone(),
                            protocol,
                            family,
                        };
                        let token = self.register(&fd, Some(source))?;
                        link.group.insert((protocol, family), (token, fd));
                    }
                    // A link without IPv6 (disabled) still forwards IPv4,
                    // as upstream does; the reverse too.
                    Err(e) => warn!("{name}: no {} {family:?} socket: {e}", protocol.name()),
                }
            }
        }
        if self.protocols.broadcast {
            let opened = socket::packet_broadcast(ifindex)
                .and_then(|rx| Ok((rx, socket::raw_sender(name)?)));
            match opened {
                Ok((rx, tx)) => {
                    self.size_receive_buffer(rx.as_raw_fd(), name);
                    let token = self.register(
                        &rx,
                        Some(Source::Raw {
                            link: shared.clone(),
                        }),
                    )?;
                    link.raw = Some((token, rx, tx));
                }
                Err(e) => warn!("{name}: no broadcast sockets: {e}"),
            }
        }
        if link.group.is_empty() && link.raw.is_none() {
            for (_, (token, _)) in std::mem::take(&mut link.group) {
                self.sources.remove(&token);
            }
            return Err(ForwarderError::Os {
                what: format!("{name}: no socket could be opened"),
                source: io::Error::last_os_error(),
            });
        }
        debug!("{name} (#{ifindex}): {} group sockets", link.group.len());
        Ok(link)
    }

    fn close_link(&mut self, name: &str) {
        let Some(link) = self.links.remove(name) else {
            return;
        };
        self.closed_overflows += link
            .receiving()
            .map(|fd| socket::drops(fd).map_or(0, u64::from))
            .sum::<u64>();
        let raw = link.raw.map(|(token, rx, _tx)| (token, rx));
        for (token, fd) in link.group.into_values().chain(raw) {
            let _ = self.registry.deregister(&mut SourceFd(&fd.as_raw_fd()));
            self.sources.remove(&token);
        }
        let gone: Vec<Token> = self
            .sessions
            .iter()
            .filter(|(_, s)| &*s.ingress == name)
            .map(|(t, _)| *t)
            .collect();
        for t in gone {
            self.close_session(t);
        }
    }

    fn close_unused_links(&mut self) {
        let unused: Vec<String> = self
            .links
            .keys()
            .filter(|n| {
                !self
                    .pairs
                    .values()
                    .any(|p| &p.uplink == *n || &p.downlink == *n)
            })
            .cloned()
            .collect();
        for name in unused {
            self.close_link(&name);
        }
    }

    fn close_session(&mut self, token: Token) {
        if let Some(s) = self.sessions.remove(&token) {
            let _ = self.registry.deregister(&mut SourceFd(&s.fd.as_raw_fd()));
            self.closed_overflows += socket::drops(s.fd.as_raw_fd()).map_or(0, u64::from);
        }
        self.sources.remove(&token);
    }

    fn expire(&mut self, now: Instant) {
        while let Some(&t) = self.session_order.front() {
            match self.sessions.get(&t) {
                Some(s) if s.expires > now && self.sessions.len() <= MAX_SESSIONS => break,
                _ => {
                    self.session_order.pop_front();
                    self.close_session(t);
                }
            }
        }
        self.echo.expire(now);
    }

    fn source_fd(&self, source: &Source, token: Token) -> Option<RawFd> {
        match source {
            Source::Group {
                link,
                protocol,
                family,
            } => self
                .links
                .get(&**link)
                .and_then(|l| l.group.get(&(*protocol, *family)))
                .map(|(_, fd)| fd.as_raw_fd()),
            Source::Raw { link } => self
                .links
                .get(&**link)
                .and_then(|l| l.raw.as_ref())
                .map(|(_, rx, _)| rx.as_raw_fd()),
            Source::Session => self.sessions.get(&token).map(|s| s.fd.as_raw_fd()),
        }
    }

    /// Handles a readable socket; false if the token is not the
    /// forwarder's.
    pub fn ready(&mut self, token: Token) -> bool {
        let Some(source) = self.sources.get(&token).cloned() else {
            return false;
        };
        let Some(fd) = self.source_fd(&source, token) else {
            return true;
        };
        let mut batch = std::mem::take(&mut self.batch);
        let mut batches = 0;
        // Edge-triggered: read until a batch comes back short (the socket
        // was empty then; a datagram arriving later is a new edge).
        loop {
            let n = match socket::recv_batch(fd, &mut batch) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // ENETDOWN and friends: the link went down under us.
                    debug!("receive: {e}");
                    break;
                }
            };
            if n == 0 {
                break;
            }
            self.generation = self.generation.wrapping_add(1);
            self.now = Instant::now();
            self.expire(self.now);
            if matches!(source, Source::Session) && !self.sessions.contains_key(&token) {
                // Expired: its socket is closed.
                break;
            }
            for i in 0..n {
                let Some((got, payload)) = batch.get(i) else {
                    continue;
                };
                if got.outgoing {
                    // Our own relayed copies, and what the host itself sends.
                    continue;
                }
                self.stats.received += 1;
                if got.truncated {
                    self.stats.truncated += 1;
                    warn!(
                        "dropped a datagram from {} longer than {} bytes",
                        got.from, BUFFER
                    );
                    continue;
                }
                match &source {
                    Source::Group {
                        link,
                        protocol,
                        family,
                    } => self.on_group(link, *protocol, *family, payload, got.from),
                    Source::Raw { link } => self.on_raw(link, payload),
                    Source::Session => self.on_session(token, payload, got.from),
                }
            }
            self.flush();
            batches += 1;
            if n < BATCH {
                break;
            }
            if batches >= MAX_BATCHES_PER_WAKE {
                // Let the other ready sockets go first: re-arming makes
                // epoll report this one again, after them, if it still
                // holds datagrams.
                if let Err(e) =
                    self.registry
                        .reregister(&mut SourceFd(&fd), token, Interest::READABLE)
                {
                    warn!("epoll_ctl: {e}");
                }
                break;
            }
        }
        self.batch = batch;
        true
    }

    fn is_echo(&mut self, ifindex: u32, digest: u64) -> bool {
        if self.echo.contains(ifindex, digest, self.now) {
            self.stats.echoes += 1;
            true
        } else {
            false
        }
    }

    /// The link's IPv4 configuration, read from the link once per batch.
    fn v4(&self, link: &str) -> Option<V4Config> {
        let Some(l) = self.links.get(link) else {
            return socket::v4_config(self.ctl.as_raw_fd(), link);
        };
        match l.v4.get() {
            Some((generation, config)) if generation == self.generation => config,
            _ => {
                let config = socket::v4_config(self.ctl.as_raw_fd(), link);
                l.v4.set(Some((self.generation, config)));
                config
            }
        }
    }

    fn uplink_v4(&self, uplink: &str) -> Option<Ipv4Addr> {
        self.links
            .get(uplink)
            .and_then(|l| l.route.uplink_ipv4)
            .or_else(|| self.v4(uplink).map(|c| c.addr))
    }

    /// What goes to the LAN for an IPv4 mDNS message that `guest` sent on
    /// `to.downlink`: the message with the guest's A records carrying the
    /// uplink's address (left in [`Forwarder::scratch`]), or unchanged, or
    /// (over budget, too long) nothing.
    fn outbound_mdns(&mut self, payload: &[u8], guest: IpAddr, to: &ToLan) -> Outbound {
        let IpAddr::V4(guest) = guest else {
            return Outbound::Unchanged;
        };
        let now = self.now;
        let mdns_budget = self.mdns_budget;
        if !self.budgets.contains_key(&*to.downlink) {
            self.budgets.insert(
                to.downlink.to_string(),
                Budget {
                    bucket: mdns_budget.bucket(now),
                    warned: None,
                },
            );
        }
        let Some(budget) = self.budgets.get_mut(&*to.downlink) else {
            return Outbound::Unchanged;
        };
        let cost = u64::try_from(payload.len()).unwrap_or(u64::MAX);
        if !budget.bucket.take(cost, now) {
            self.stats.mdns_over_budget += 1;
            if Self::may_warn(budget, now) {
                warn!(
                    "{}: mDNS to the LAN over {} bytes/s: dropped ({} so far)",
                    to.downlink, mdns_budget.bytes_per_second, self.stats.mdns_over_budget
                );
            }
            return Outbound::Dropped;
        }
        let Some(uplink_v4) = self.uplink_v4(&to.uplink) else {
            return Outbound::Unchanged;
        };
        match self
            .rewriter
            .rewrite_into(payload, guest, uplink_v4, &mut self.scratch)
        {
            Rewritten::Rewritten { count } => {
                self.stats.rewritten += 1;
                debug!("rewrote {count} A records {guest} -> {uplink_v4}");
                Outbound::Rewritten
            }
            Rewritten::Unchanged => Outbound::Unchanged,
            Rewritten::Unparsable => {
                self.stats.unparsable += 1;
                Outbound::Unchanged
            }
            Rewritten::TooLong { len } => {
                self.stats.mdns_too_long += 1;
                if let Some(budget) = self.budgets.get_mut(&*to.downlink) {
                    if Self::may_warn(budget, now) {
                        warn!(
                            "{}: dropped a {len}-byte mDNS message (RFC 6762 allows {}; {} so far)",
                            to.downlink, MAX_MDNS_MESSAGE, self.stats.mdns_too_long
                        );
                    }
                }
                Outbound::Dropped
            }
        }
    }

    /// Whether a drop on this downlink may be logged now (one line per
    /// [`DROP_WARNING_EVERY`], so that a flood does not flood the log).
    fn may_warn(budget: &mut Budget, now: Instant) -> bool {
        let due = budget
            .warned
            .is_none_or(|at| now.duration_since(at) >= DROP_WARNING_EVERY);
        if due {
            budget.warned = Some(now);
        }
        due
    }

    fn on_group(
        &mut self,
        link: &Arc<str>,
        protocol: Protocol,
        family: Family,
        payload: &[u8],
        from: SocketAddr,
    ) {
        let Some((ifindex, route)) = self
            .links
            .get(&**link)
            .map(|l| (l.ifindex, l.route.clone()))
        else {
            return;
        };
        let digest = self.echo.digest(payload);
        if self.is_echo(ifindex, digest) {
            return;
        }
        let unicast = wants_unicast_answer(protocol, payload, &from);
        if route.uplink {
            // From the LAN to every inbound guest.
            for d in &route.copies {
                // A guest's unicast answer to a LAN query goes to the LAN:
                // rewrite it like its multicast answers.
                let session = unicast.then(|| {
                    let rewrite = ToLan {
                        uplink: link.clone(),
                        downlink: d.clone(),
                    };
                    (link, from, Some(rewrite))
                });
                self.send_copy(d, protocol, family, payload, digest, session);
            }
            if route.copies.is_empty() {
                self.stats.unrouted += 1;
            }
            return;
        }
        let Some(to) = &route.to_lan else {
            self.stats.unrouted += 1;
            return;
        };
        for d in &route.copies {
            let session = unicast.then_some((link, from, None));
            self.send_copy(d, protocol, family, payload, digest, session);
        }
        let outbound = if protocol == Protocol::Mdns && family == Family::V4 {
            self.outbound_mdns(payload, from.ip(), to)
        } else {
            Outbound::Unchanged
        };
        let session = unicast.then_some((link, from, None));
        match outbound {
            Outbound::Unchanged => {
                self.send_copy(&to.uplink, protocol, family, payload, digest, session);
            }
            Outbound::Rewritten => {
                let out = std::mem::take(&mut self.scratch);
                let digest = self.echo.digest(&out);
                self.send_copy(&to.uplink, protocol, family, &out, digest, session);
                self.scratch = out;
            }
            Outbound::Dropped => {}
        }
    }

    fn on_session(&mut self, token: Token, payload: &[u8], from: SocketAddr) {
        let Some(s) = self.sessions.get(&token) else {
            return;
        };
        let (protocol, family, querier) = (s.protocol, s.family, s.querier);
        let ingress = s.ingress.clone();
        let rewrite = s.rewrite.clone();
        let outbound = match (&rewrite, protocol, family) {
            (Some(to), Protocol::Mdns, Family::V4) => self.outbound_mdns(payload, from.ip(), to),
            _ => Outbound::Unchanged,
        };
        if outbound == Outbound::Dropped {
            return;
        }
        let Some((fd, ifindex)) = self.links.get(&*ingress).and_then(|l| {
            l.group
                .get(&(protocol, family))
                .map(|(_, fd)| (fd.as_raw_fd(), l.ifindex))
        }) else {
            return;
        };
        if outbound == Outbound::Rewritten {
            let out = std::mem::take(&mut self.scratch);
            self.enqueue(fd, querier, &out, ingress, ifindex, Kind::Reply);
            self.scratch = out;
        } else {
            self.enqueue(fd, querier, payload, ingress, ifindex, Kind::Reply);
        }
    }

    fn on_raw(&mut self, link: &str, packet: &[u8]) {
        let Some((ifindex, route)) = self.links.get(link).map(|l| (l.ifindex, l.route.clone()))
        else {
            return;
        };
        let d = match broadcast::parse(packet) {
            Ok(d) => d,
            Err(_) => {
                self.stats.broadcast_ignored += 1;
                return;
            }
        };
        let digest = self.echo.digest(d.payload);
        if self.is_echo(ifindex, digest) {
            return;
        }
        let Some(here) = self.v4(link) else {
            self.stats.broadcast_ignored += 1;
            return;
        };
        if !broadcast::is_broadcast_on(d.dst, here.broadcast) || d.src == here.addr {
            // Not a broadcast of this link, or the host's own.
            self.stats.broadcast_ignored += 1;
            return;
        }
        if route.uplink {
            // LAN -> guests, the sender's address and port preserved.
            for guest_link in &route.copies {
                let to = broadcast::retarget(d.dst, self.v4(guest_link).and_then(|c| c.broadcast));
                let mut copy = std::mem::take(&mut self.scratch);
                broadcast::build_into(&broadcast::Datagram { dst: to, ..d }, &mut copy);
                self.send_raw(guest_link, &copy, to, digest);
                self.scratch = copy;
            }
            if route.copies.is_empty() {
                self.stats.unrouted += 1;
            }
            return;
        }
        // A copy we relayed from the LAN keeps the LAN source: it is not
        // the guest's, so it does not go back.
        let Some(to_lan) = route.to_lan.as_ref().filter(|_| here.contains(d.src)) else {
            self.stats.broadcast_ignored += 1;
            return;
        };
        let Some(up) = self.v4(&to_lan.uplink) else {
            self.stats.broadcast_ignored += 1;
            return;
        };
        let to = broadcast::retarget(d.dst, up.broadcast);
        let mut copy = std::mem::take(&mut self.scratch);
        broadcast::build_into(
            &broadcast::Datagram {
                src: up.addr,
                dst: to,
                ttl: 64,
                id: 0,
                ..d
            },
            &mut copy,
        );
        self.send_raw(&to_lan.uplink, &copy, to, digest);
        self.scratch = copy;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn which_datagrams_want_a_unicast_answer() {
        let query = [0u8, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        let from = |port| SocketAddr::new(Ipv4Addr::new(100, 115, 92, 2).into(), port);
        assert!(wants_unicast_answer(Protocol::Mdns, &query, &from(41000)));
        assert!(!wants_unicast_answer(Protocol::Mdns, &query, &from(5353)));
        assert!(wants_unicast_answer(
            Protocol::Ssdp,
            b"M-SEARCH * HTTP/1.1\r\n\r\n",
            &from(1900)
        ));
        assert!(!wants_unicast_answer(
            Protocol::Ssdp,
            b"NOTIFY * HTTP/1.1\r\n\r\n",
            &from(1900)
        ));
    }
}
