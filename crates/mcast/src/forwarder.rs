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
//!   address, [`crate::packet::rewrite_mdns_a_records`]) and to the other
//!   downlinks of that uplink that are inbound (unchanged: guests reach
//!   each other's private addresses).
//!
//! What one guest may cost the forwarder is bounded: its IPv4 mDNS to the
//! LAN is charged to a per-downlink budget ([`crate::budget`]); beyond it,
//! and for messages longer than RFC 6762 allows
//! ([`crate::packet::MAX_MDNS_MESSAGE`]), the LAN copy is dropped and
//! counted ([`Stats::mdns_over_budget`], [`Stats::mdns_too_long`]).
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
//! within a second are suppressed by mDNS itself, RFC 6762 §7.3, 7.4).

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV6};
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};

use crate::broadcast;
use crate::budget::{MdnsBudget, TokenBucket};
use crate::packet::{
    classify_ssdp, is_legacy_mdns_query, rewrite_mdns_a_records, Rewrite, Ssdp, MDNS_PORT, MDNS_V4,
    MDNS_V6, SSDP_PORT, SSDP_V4, SSDP_V6,
};
use crate::socket::{self, Family, V4Config};

/// How long a session socket waits for unicast answers (SSDP's MX is at
/// most 5 s, UDA 1.1 §1.3.2; legacy mDNS resolvers wait less).
pub const SESSION_LIFETIME: Duration = Duration::from_secs(6);
/// At most this many session sockets at once; the oldest goes first.
pub const MAX_SESSIONS: usize = 256;
/// How long a datagram we sent on a link is remembered as ours.
pub const ECHO_WINDOW: Duration = Duration::from_secs(1);
/// At most one warning per downlink this often about its dropped mDNS.
const DROP_WARNING_EVERY: Duration = Duration::from_secs(10);
/// Receive buffer: larger than any UDP payload, so nothing is cut (a
/// datagram that still is, is counted and dropped, never forwarded cut).
const BUFFER: usize = 65536 + 1;

/// mDNS or SSDP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Mdns,
    Ssdp,
}

impl Protocol {
    pub fn port(self) -> u16 {
        match self {
            Protocol::Mdns => MDNS_PORT,
            Protocol::Ssdp => SSDP_PORT,
        }
    }

    pub fn group(self, family: Family) -> IpAddr {
        match (self, family) {
            (Protocol::Mdns, Family::V4) => MDNS_V4.into(),
            (Protocol::Mdns, Family::V6) => MDNS_V6.into(),
            (Protocol::Ssdp, Family::V4) => SSDP_V4.into(),
            (Protocol::Ssdp, Family::V6) => SSDP_V6.into(),
        }
    }

    /// 255 for mDNS (RFC 6762 §11), 2 for SSDP (UDA 1.1 §1.1.2).
    fn ttl(self) -> u8 {
        match self {
            Protocol::Mdns => 255,
            Protocol::Ssdp => 2,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Protocol::Mdns => "mDNS",
            Protocol::Ssdp => "SSDP",
        }
    }
}

/// What a forwarder relays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Protocols {
    pub mdns: bool,
    pub ssdp: bool,
    pub broadcast: bool,
}

impl Protocols {
    pub const ALL: Protocols = Protocols {
        mdns: true,
        ssdp: true,
        broadcast: true,
    };

    fn multicast(self) -> impl Iterator<Item = Protocol> {
        [(self.mdns, Protocol::Mdns), (self.ssdp, Protocol::Ssdp)]
            .into_iter()
            .filter_map(|(on, p)| on.then_some(p))
    }
}

/// One uplink-downlink pair and its directions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pair {
    pub uplink: String,
    pub downlink: String,
    /// The uplink's IPv4 address for the A-record rewrite; None: read it
    /// from the link for every rewrite.
    pub uplink_ipv4: Option<Ipv4Addr>,
    /// Uplink -> downlink.
    pub inbound: bool,
    /// Downlink -> uplink (and to the other guests).
    pub outbound: bool,
}

/// What went wrong starting a pair.
#[derive(Debug, thiserror::Error)]
pub enum ForwarderError {
    #[error("no link named {0:?}")]
    NoSuchLink(String),
    #[error("{0}")]
    Pair(String),
    #[error("{what}: {source}")]
    Os {
        what: String,
        #[source]
        source: io::Error,
    },
}

impl ForwarderError {
    pub fn errno(&self) -> Option<i32> {
        match self {
            ForwarderError::Os { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

/// Counters since start; [`Forwarder::stats`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Datagrams received on any socket.
    pub received: u64,
    /// Copies sent.
    pub sent: u64,
    /// mDNS responses whose A records were rewritten.
    pub rewritten: u64,
    /// mDNS messages from guests that did not parse (forwarded unchanged).
    pub unparsable: u64,
    /// IPv4 mDNS messages from guests longer than RFC 6762 allows (not
    /// forwarded to the LAN).
    pub mdns_too_long: u64,
    /// IPv4 mDNS messages from guests over their downlink's budget (not
    /// forwarded to the LAN).
    pub mdns_over_budget: u64,
    /// Datagrams longer than the buffer (dropped, not forwarded cut).
    pub truncated: u64,
    /// Copies of our own sends that came back (dropped).
    pub echoes: u64,
    /// Broadcasts not relayed: invalid, fragments, system ports, not ours.
    pub broadcast_ignored: u64,
    /// Session sockets opened for queries that expect a unicast answer.
    pub sessions: u64,
    /// Unicast answers relayed back to the querier.
    pub unicast_replies: u64,
    /// Sends that failed.
    pub send_errors: u64,
}

impl std::fmt::Display for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "received {}, sent {}, rewritten {}, unparsable {}, mDNS too long {}, \
             mDNS over budget {}, truncated {}, echoes {}, broadcasts ignored {}, sessions {}, \
             unicast replies {}, send errors {}",
            self.received,
            self.sent,
            self.rewritten,
            self.unparsable,
            self.mdns_too_long,
            self.mdns_over_budget,
            self.truncated,
            self.echoes,
            self.broadcast_ignored,
            self.sessions,
            self.unicast_replies,
            self.send_errors
        )
    }
}

#[derive(Debug)]
struct Link {
    ifindex: u32,
    group: BTreeMap<(Protocol, Family), (Token, OwnedFd)>,
    /// Broadcast: the packet socket that receives and the raw socket
    /// that sends.
    raw: Option<(Token, OwnedFd, OwnedFd)>,
}

#[derive(Debug)]
struct Session {
    fd: OwnedFd,
    protocol: Protocol,
    family: Family,
    /// The link the query came in on; answers leave from its group socket.
    ingress: String,
    /// The querier.
    querier: SocketAddr,
    /// Answers go from a guest to the LAN: rewrite their A records.
    rewrite: Option<ToLan>,
    expires: Instant,
}

/// Where a guest's mDNS crosses to the LAN.
#[derive(Debug, Clone)]
struct ToLan {
    uplink: String,
    downlink: String,
}

/// What goes to the LAN in place of a guest's IPv4 mDNS message.
#[derive(Debug)]
enum Outbound {
    Unchanged,
    Rewritten(Vec<u8>),
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
        link: String,
        protocol: Protocol,
        family: Family,
    },
    Raw {
        link: String,
    },
    Session,
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
    sent: HashMap<(u32, u64), Instant>,
    sent_order: VecDeque<(Instant, (u32, u64))>,
    last_error: HashMap<String, i32>,
    /// What each downlink may send through the rewrite.
    mdns_budget: MdnsBudget,
    /// By downlink: what its guest may still send through the rewrite.
    budgets: HashMap<String, Budget>,
    stats: Stats,
    buf: Vec<u8>,
}

fn os(what: impl Into<String>) -> impl FnOnce(io::Error) -> ForwarderError {
    let what = what.into();
    move |source| ForwarderError::Os { what, source }
}

fn digest(bytes: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

/// Whether a datagram asks for an answer to its own address and port.
fn wants_unicast_answer(protocol: Protocol, payload: &[u8], from: &SocketAddr) -> bool {
    match protocol {
        Protocol::Mdns => is_legacy_mdns_query(payload, from.port()),
        Protocol::Ssdp => classify_ssdp(payload) == Ssdp::Search,
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
            sent: HashMap::new(),
            sent_order: VecDeque::new(),
            last_error: HashMap::new(),
            mdns_budget: MdnsBudget::DEFAULT,
            budgets: HashMap::new(),
            stats: Stats::default(),
            buf: vec![0; BUFFER],
        })
    }

    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Changes what each downlink's IPv4 mDNS to the LAN may amount to
    /// ([`MdnsBudget::DEFAULT`] otherwise); every downlink starts afresh.
    pub fn set_mdns_budget(&mut self, budget: MdnsBudget) {
        self.mdns_budget = budget;
        self.budgets.clear();
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
        Ok(())
    }

    /// Stops the pair of `downlink`, if any; closes the sockets of links
    /// no pair uses any more.
    pub fn stop(&mut self, downlink: &str) {
        self.budgets.remove(downlink);
        if let Some(p) = self.pairs.remove(downlink) {
            info!(
                "stopped forwarding {} - {} ({})",
                p.uplink, p.downlink, self.stats
            );
        }
        self.close_unused_links();
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

    fn open_link(&mut self, name: &str) -> Result<Link, ForwarderError> {
        let ifindex =
            socket::ifindex(name).ok_or_else(|| ForwarderError::NoSuchLink(name.to_string()))?;
        let mut link = Link {
            ifindex,
            group: BTreeMap::new(),
            raw: None,
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
                        let source = Source::Group {
                            link: name.to_string(),
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
                    let token = self.register(
                        &rx,
                        Some(Source::Raw {
                            link: name.to_string(),
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
        let raw = link.raw.map(|(token, rx, _tx)| (token, rx));
        for (token, fd) in link.group.into_values().chain(raw) {
            let _ = self.registry.deregister(&mut SourceFd(&fd.as_raw_fd()));
            self.sources.remove(&token);
        }
        let gone: Vec<Token> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.ingress == name)
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
        while let Some(&(at, key)) = self.sent_order.front() {
            if now.duration_since(at) < ECHO_WINDOW {
                break;
            }
            self.sent_order.pop_front();
            if self.sent.get(&key) == Some(&at) {
                self.sent.remove(&key);
            }
        }
    }

    /// Handles a readable socket; false if the token is not the
    /// forwarder's.
    pub fn ready(&mut self, token: Token) -> bool {
        let Some(source) = self.sources.get(&token).cloned() else {
            return false;
        };
        let fd = match &source {
            Source::Group {
                link,
                protocol,
                family,
            } => self
                .links
                .get(link)
                .and_then(|l| l.group.get(&(*protocol, *family)))
                .map(|(_, fd)| fd.as_raw_fd()),
            Source::Raw { link } => self
                .links
                .get(link)
                .and_then(|l| l.raw.as_ref())
                .map(|(_, rx, _)| rx.as_raw_fd()),
            Source::Session => self.sessions.get(&token).map(|s| s.fd.as_raw_fd()),
        };
        let Some(fd) = fd else { return true };
        let mut buf = std::mem::take(&mut self.buf);
        // Edge-triggered: drain.
        loop {
            let got = match socket::recv_from(fd, &mut buf) {
                Ok(got) => got,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // ENETDOWN and friends: the link went down under us.
                    debug!("receive: {e}");
                    break;
                }
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
                    got.from,
                    buf.len()
                );
                continue;
            }
            self.expire(Instant::now());
            let payload = &buf[..got.len];
            match &source {
                Source::Group {
                    link,
                    protocol,
                    family,
                } => self.on_group(link, *protocol, *family, payload, got.from),
                Source::Raw { link } => self.on_raw(link, payload),
                Source::Session => {
                    if !self.sessions.contains_key(&token) {
                        break;
                    }
                    self.on_session(token, payload, got.from)
                }
            }
        }
        self.buf = buf;
        true
    }

    fn is_echo(&mut self, ifindex: u32, payload: &[u8]) -> bool {
        let key = (ifindex, digest(payload));
        match self.sent.get(&key) {
            Some(at) if at.elapsed() < ECHO_WINDOW => {
                self.stats.echoes += 1;
                true
            }
            _ => false,
        }
    }

    fn remember_sent(&mut self, ifindex: u32, payload: &[u8]) {
        let now = Instant::now();
        let key = (ifindex, digest(payload));
        self.sent.insert(key, now);
        self.sent_order.push_back((now, key));
    }

    fn note_send(&mut self, link: &str, result: io::Result<()>) {
        match result {
            Ok(()) => {
                self.stats.sent += 1;
                if self.last_error.remove(link).is_some() {
                    info!("{link}: sending works again");
                }
            }
            Err(e) => {
                self.stats.send_errors += 1;
                let errno = e.raw_os_error().unwrap_or(0);
                // One line per new error on a link, not one per packet.
                if self.last_error.insert(link.to_string(), errno) != Some(errno) {
                    warn!("{link}: send failed: {e}");
                }
            }
        }
    }

    fn group_addr(&self, protocol: Protocol, family: Family, ifindex: u32) -> SocketAddr {
        match protocol.group(family) {
            IpAddr::V4(g) => SocketAddr::new(g.into(), protocol.port()),
            IpAddr::V6(g) => SocketAddr::V6(SocketAddrV6::new(g, protocol.port(), 0, ifindex)),
        }
    }

    fn v4(&self, link: &str) -> Option<V4Config> {
        socket::v4_config(self.ctl.as_raw_fd(), link)
    }

    fn uplink_v4(&self, uplink: &str) -> Option<Ipv4Addr> {
        self.pairs
            .values()
            .find(|p| p.uplink == uplink)
            .and_then(|p| p.uplink_ipv4)
            .or_else(|| self.v4(uplink).map(|c| c.addr))
    }

    /// What goes to the LAN for an IPv4 mDNS message that `guest` sent on
    /// `to.downlink`: the message with the guest's A records carrying the
    /// uplink's address, or unchanged, or (over budget, too long) nothing.
    fn outbound_mdns(&mut self, payload: &[u8], guest: IpAddr, to: &ToLan) -> Outbound {
        let IpAddr::V4(guest) = guest else {
            return Outbound::Unchanged;
        };
        let now = Instant::now();
        let mdns_budget = self.mdns_budget;
        let budget = self
            .budgets
            .entry(to.downlink.clone())
            .or_insert_with(|| Budget {
                bucket: mdns_budget.bucket(now),
                warned: None,
            });
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
        match rewrite_mdns_a_records(payload, guest, uplink_v4) {
            Rewrite::Rewritten { bytes, count } => {
                self.stats.rewritten += 1;
                debug!("rewrote {count} A records {guest} -> {uplink_v4}");
                Outbound::Rewritten(bytes)
            }
            Rewrite::Unchanged => Outbound::Unchanged,
            Rewrite::Unparsable => {
                self.stats.unparsable += 1;
                Outbound::Unchanged
            }
            Rewrite::TooLong { len } => {
                self.stats.mdns_too_long += 1;
                if let Some(budget) = self.budgets.get_mut(&to.downlink) {
                    if Self::may_warn(budget, now) {
                        warn!(
                            "{}: dropped a {len}-byte mDNS message (RFC 6762 allows {}; {} so far)",
                            to.downlink,
                            crate::packet::MAX_MDNS_MESSAGE,
                            self.stats.mdns_too_long
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
        link: &str,
        protocol: Protocol,
        family: Family,
        payload: &[u8],
        from: SocketAddr,
    ) {
        let Some(ifindex) = self.links.get(link).map(|l| l.ifindex) else {
            return;
        };
        if self.is_echo(ifindex, payload) {
            return;
        }
        let unicast = wants_unicast_answer(protocol, payload, &from);
        if self.pairs.values().any(|p| p.uplink == link) {
            // From the LAN to every inbound guest.
            let targets: Vec<String> = self
                .pairs
                .values()
                .filter(|p| p.uplink == link && p.inbound)
                .map(|p| p.downlink.clone())
                .collect();
            for d in targets {
                // A guest's unicast answer to a LAN query goes to the LAN:
                // rewrite it like its multicast answers.
                let rewrite = Some(ToLan {
                    uplink: link.to_string(),
                    downlink: d.clone(),
                });
                self.send_copy(
                    &d,
                    protocol,
                    family,
                    payload,
                    unicast.then_some((link, from, rewrite)),
                );
            }
            return;
        }
        let Some(pair) = self.pairs.get(link).cloned() else {
            return;
        };
        if !pair.outbound {
            return;
        }
        let others: Vec<String> = self
            .pairs
            .values()
            .filter(|p| p.uplink == pair.uplink && p.downlink != link && p.inbound)
            .map(|p| p.downlink.clone())
            .collect();
        for d in others {
            self.send_copy(
                &d,
                protocol,
                family,
                payload,
                unicast.then_some((link, from, None)),
            );
        }
        let outbound = if protocol == Protocol::Mdns && family == Family::V4 {
            let to = ToLan {
                uplink: pair.uplink.clone(),
                downlink: pair.downlink.clone(),
            };
            self.outbound_mdns(payload, from.ip(), &to)
        } else {
            Outbound::Unchanged
        };
        let out = match &outbound {
            Outbound::Unchanged => payload,
            Outbound::Rewritten(bytes) => bytes,
            Outbound::Dropped => return,
        };
        self.send_copy(
            &pair.uplink,
            protocol,
            family,
            out,
            unicast.then_some((link, from, None)),
        );
    }

    /// Sends one copy to `egress`'s group: from its group socket, or, for
    /// a query expecting a unicast answer, from a new session socket whose
    /// answers go back through `ingress` to `querier`.
    fn send_copy(
        &mut self,
        egress: &str,
        protocol: Protocol,
        family: Family,
        payload: &[u8],
        session: Option<(&str, SocketAddr, Option<ToLan>)>,
    ) {
        let Some(link) = self.links.get(egress) else {
            return;
        };
        let ifindex = link.ifindex;
        let to = self.group_addr(protocol, family, ifindex);
        let result = match session {
            None => match link.group.get(&(protocol, family)) {
                Some((_, fd)) => socket::send_to(fd.as_raw_fd(), payload, &to),
                None => return,
            },
            Some((ingress, querier, rewrite)) => {
                match socket::udp(family, egress, ifindex, 0, None, protocol.ttl()) {
                    Ok(fd) => {
                        let sent = socket::send_to(fd.as_raw_fd(), payload, &to);
                        match self.register(&fd, Some(Source::Session)) {
                            Ok(token) => {
                                self.stats.sessions += 1;
                                self.sessions.insert(
                                    token,
                                    Session {
                                        fd,
                                        protocol,
                                        family,
                                        ingress: ingress.to_string(),
                                        querier,
                                        rewrite,
                                        expires: Instant::now() + SESSION_LIFETIME,
                                    },
                                );
                                self.session_order.push_back(token);
                                self.expire(Instant::now());
                            }
                            Err(e) => warn!("{egress}: session socket: {e}"),
                        }
                        sent
                    }
                    Err(e) => Err(e),
                }
            }
        };
        if result.is_ok() {
            self.remember_sent(ifindex, payload);
        }
        self.note_send(egress, result);
    }

    fn on_session(&mut self, token: Token, payload: &[u8], from: SocketAddr) {
        let Some(s) = self.sessions.get(&token) else {
            return;
        };
        let (protocol, family, ingress, querier) =
            (s.protocol, s.family, s.ingress.clone(), s.querier);
        let rewrite = s.rewrite.clone();
        let outbound = match (&rewrite, protocol, family) {
            (Some(to), Protocol::Mdns, Family::V4) => self.outbound_mdns(payload, from.ip(), to),
            _ => Outbound::Unchanged,
        };
        let out = match &outbound {
            Outbound::Unchanged => payload,
            Outbound::Rewritten(bytes) => bytes,
            Outbound::Dropped => return,
        };
        let Some(fd) = self
            .links
            .get(&ingress)
            .and_then(|l| l.group.get(&(protocol, family)))
            .map(|(_, fd)| fd.as_raw_fd())
        else {
            return;
        };
        let result = socket::send_to(fd, out, &querier);
        if result.is_ok() {
            self.stats.unicast_replies += 1;
        }
        self.note_send(&ingress, result);
    }

    fn on_raw(&mut self, link: &str, packet: &[u8]) {
        let Some(ifindex) = self.links.get(link).map(|l| l.ifindex) else {
            return;
        };
        let d = match broadcast::parse(packet) {
            Ok(d) => d,
            Err(_) => {
                self.stats.broadcast_ignored += 1;
                return;
            }
        };
        if self.is_echo(ifindex, d.payload) {
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
        if self.pairs.values().any(|p| p.uplink == link) {
            // LAN -> guests, the sender's address and port preserved.
            let targets: Vec<String> = self
                .pairs
                .values()
                .filter(|p| p.uplink == link && p.inbound)
                .map(|p| p.downlink.clone())
                .collect();
            for guest_link in targets {
                let to = broadcast::retarget(d.dst, self.v4(&guest_link).and_then(|c| c.broadcast));
                let copy = broadcast::build(&broadcast::Datagram { dst: to, ..d });
                self.send_raw(&guest_link, &copy, to, d.payload);
            }
            return;
        }
        let Some(pair) = self.pairs.get(link).cloned() else {
            return;
        };
        // A copy we relayed from the LAN keeps the LAN source: it is not
        // the guest's, so it does not go back.
        if !pair.outbound || !here.contains(d.src) {
            self.stats.broadcast_ignored += 1;
            return;
        }
        let Some(up) = self.v4(&pair.uplink) else {
            self.stats.broadcast_ignored += 1;
            return;
        };
        let to = broadcast::retarget(d.dst, up.broadcast);
        let copy = broadcast::build(&broadcast::Datagram {
            src: up.addr,
            dst: to,
            ttl: 64,
            id: 0,
            ..d
        });
        self.send_raw(&pair.uplink, &copy, to, d.payload);
    }

    fn send_raw(&mut self, link: &str, packet: &[u8], to: Ipv4Addr, payload: &[u8]) {
        let Some((ifindex, fd)) = self
            .links
            .get(link)
            .and_then(|l| l.raw.as_ref().map(|(_, _, tx)| (l.ifindex, tx.as_raw_fd())))
        else {
            return;
        };
        let result = socket::send_to(fd, packet, &SocketAddr::new(to.into(), 0));
        if result.is_ok() {
            self.remember_sent(ifindex, payload);
        }
        self.note_send(link, result);
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
