//! The proxy at work: the packet socket, the kernel's view of links,
//! addresses and neighbours, and the [`Proxy`] engine, driven from a mio
//! loop. Shared by the sandboxed helper (`patchpanel-ndproxy`) and the
//! standalone `ndproxyd`.
//!
//! Everything the engine needs per packet is cached here from netlink —
//! link MACs from `RTM_NEWLINK`, the host's IPv6 addresses and their
//! prefixes from `RTM_NEWADDR`, on-link prefixes (IPv6 routes without a
//! gateway) from `RTM_NEWROUTE`, neighbours from `RTM_NEWNEIGH` — after one
//! dump at start, so no packet costs an ioctl or a table dump. A
//! notification overrun (`ENOBUFS`) re-dumps the affected tables.
//!
//! All sockets are opened by [`Forwarder::open`], before the helper's
//! seccomp filter is installed; afterwards only reads, writes, sends and
//! `setsockopt` (all-multicast membership) are needed.
//!
//! The engine has timed work (confirming tentative claims); the owner's
//! loop waits at most until [`Forwarder::next_deadline`] and then calls
//! [`Forwarder::tick`]. Refused guest packets are logged as one summary
//! line per [`SUMMARY_INTERVAL`] at most, whatever the rate.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::io;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use log::{debug, info, trace, warn};
use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};
use patchpanel_rtnl::neigh::{NeighborEvent, NeighborMonitor};
use patchpanel_rtnl::{
    Family, Link, LinkRef, MonitorGroups, Route, RouteType, Rtnl, RtnlError, RtnlEvent, RtnlMonitor,
};

use crate::claims::Refusals;
use crate::proxy::{check_pair, Dropped, Guest, Outgoing, PairError, Proxy, Received};
use crate::socket::{PacketSocket, MAX_PACKET};

/// Socket receive buffer asked for the monitors, so a burst of neighbour
/// changes on a busy uplink does not overrun them.
const MONITOR_BUFFER: usize = 1 << 20;
/// At most one log line about refused guest packets per this interval.
pub const SUMMARY_INTERVAL: Duration = Duration::from_secs(10);

/// What failed, with which input.
#[derive(Debug, thiserror::Error)]
pub enum ForwarderError {
    /// A system call on the packet socket failed.
    #[error("{op}: {source}")]
    Socket {
        op: String,
        #[source]
        source: io::Error,
    },
    /// A netlink request or the monitors failed.
    #[error(transparent)]
    Rtnl(#[from] RtnlError),
    /// The request named a link that does not exist.
    #[error("no link with index {0}")]
    NoSuchLink(u32),
    /// The request named an impossible pair.
    #[error(transparent)]
    Pair(#[from] PairError),
}

impl ForwarderError {
    fn socket(op: impl Into<String>, source: io::Error) -> Self {
        ForwarderError::Socket {
            op: op.into(),
            source,
        }
    }

    /// The errno behind the error, when there is one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            ForwarderError::Socket { source, .. } => source.raw_os_error(),
            ForwarderError::Rtnl(e) => e.errno(),
            ForwarderError::NoSuchLink(_) => Some(libc::ENODEV),
            ForwarderError::Pair(_) => Some(libc::EINVAL),
        }
    }
}

/// Something the owner of the forwarder may act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// A guest address was seen on a downlink.
    Guest(Guest),
    /// A link appeared or was renamed.
    LinkAdded { ifindex: u32, name: String },
    /// A link went away.
    LinkRemoved { ifindex: u32, name: String },
}

/// The tokens the forwarder's three sockets use in the caller's loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tokens {
    pub packets: Token,
    pub links: Token,
    pub neighbors: Token,
}

/// See the module documentation.
pub struct Forwarder {
    proxy: Proxy,
    socket: PacketSocket,
    rtnl: Rtnl,
    links: RtnlMonitor,
    neighbors: NeighborMonitor,
    names: HashMap<u32, String>,
    allmulti: BTreeSet<u32>,
    tokens: Option<Tokens>,
    buf: Vec<u8>,
    /// When refusals were last logged, and their counts then.
    logged: (Instant, Refusals),
}

impl fmt::Debug for Forwarder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Forwarder")
            .field("pairs", &self.pairs())
            .field("allmulti", &self.allmulti)
            .field("socket", &self.socket)
            .field("tokens", &self.tokens)
            .finish_non_exhaustive()
    }
}

impl Forwarder {
    /// Opens the packet socket (needs CAP_NET_RAW) and the netlink sockets
    /// in the calling thread's network namespace, and reads the current
    /// links, addresses and neighbours.
    pub fn open() -> Result<Forwarder, ForwarderError> {
        let socket =
            PacketSocket::open().map_err(|e| ForwarderError::socket("packet socket", e))?;
        let links = RtnlMonitor::new(
            MonitorGroups::LINK | MonitorGroups::IPV6_IFADDR | MonitorGroups::IPV6_ROUTE,
        )?;
        let neighbors = NeighborMonitor::new()?;
        for (what, r) in [
            ("link", links.set_recv_buffer_size(MONITOR_BUFFER)),
            ("neighbour", neighbors.set_recv_buffer_size(MONITOR_BUFFER)),
        ] {
            if let Err(e) = r {
                debug!("{what} monitor keeps its default buffer: {e}");
            }
        }
        let mut fwd = Forwarder {
            proxy: Proxy::new(),
            socket,
            rtnl: Rtnl::new()?,
            links,
            neighbors,
            names: HashMap::new(),
            allmulti: BTreeSet::new(),
            tokens: None,
            buf: vec![0u8; MAX_PACKET],
            logged: (Instant::now(), Refusals::default()),
        };
        // Subscribed before the dumps, so no change falls between them.
        fwd.reload_links()?;
        fwd.reload_neighbors()?;
        Ok(fwd)
    }

    /// Registers the three sockets with the caller's poll.
    pub fn register(&mut self, registry: &Registry, tokens: Tokens) -> io::Result<()> {
        for (fd, token) in [
            (self.socket.as_raw_fd(), tokens.packets),
            (self.links.as_raw_fd(), tokens.links),
            (self.neighbors.as_raw_fd(), tokens.neighbors),
        ] {
            registry.register(&mut SourceFd(&fd), token, Interest::READABLE)?;
        }
        self.tokens = Some(tokens);
        Ok(())
    }

    /// Whether `token` is one of the forwarder's.
    pub fn owns(&self, token: Token) -> bool {
        self.tokens
            .is_some_and(|t| token == t.packets || token == t.links || token == t.neighbors)
    }

    /// The index of the link named `name`, from the cache.
    pub fn link_index(&self, name: &str) -> Option<u32> {
        self.names
            .iter()
            .find(|(_, n)| n.as_str() == name)
            .map(|(&i, _)| i)
    }

    fn describe(&self, ifindex: u32) -> String {
        match self.names.get(&ifindex) {
            Some(name) => format!("{name} (#{ifindex})"),
            None => format!("#{ifindex}"),
        }
    }

    /// The proxied pairs, (uplink, downlink).
    pub fn pairs(&self) -> Vec<(u32, u32)> {
        self.proxy.pairs().collect()
    }

    /// Starts proxying between `uplink` and `downlink` and puts both in
    /// all-multicast mode. `Ok(false)` if the pair was already proxied.
    pub fn start(&mut self, uplink: u32, downlink: u32) -> Result<bool, ForwarderError> {
        if self.proxy.pairs().any(|p| p == (uplink, downlink)) {
            return Ok(false);
        }
        // Validate the pair before touching anything.
        check_pair(uplink, downlink)?;
        for index in [uplink, downlink] {
            if !self.names.contains_key(&index) {
                // The link may be newer than our last notification.
                self.reload_links()?;
                if !self.names.contains_key(&index) {
                    return Err(ForwarderError::NoSuchLink(index));
                }
            }
        }
        let mut joined = Vec::new();
        for index in [uplink, downlink] {
            if self.allmulti.contains(&index) {
                continue;
            }
            if let Err(e) = self.socket.join_allmulti(index) {
                for j in joined {
                    let _ = self.socket.leave_allmulti(j);
                    self.allmulti.remove(&j);
                }
                return Err(ForwarderError::socket(
                    format!("all-multicast on {}", self.describe(index)),
                    e,
                ));
            }
            self.allmulti.insert(index);
            joined.push(index);
        }
        let started = self.proxy.start(uplink, downlink)?;
        info!(
            "proxying ND between uplink {} and downlink {}",
            self.describe(uplink),
            self.describe(downlink)
        );
        Ok(started)
    }

    /// Stops proxying the pair and releases all-multicast on links no
    /// other pair uses. `false` if the pair was not proxied. Never fails:
    /// a link that is gone has released its memberships already.
    pub fn stop(&mut self, uplink: u32, downlink: u32) -> bool {
        if !self.proxy.stop(uplink, downlink) {
            return false;
        }
        info!(
            "stopped proxying ND between uplink {} and downlink {}",
            self.describe(uplink),
            self.describe(downlink)
        );
        for index in [uplink, downlink] {
            if self.proxy.uses(index) || !self.allmulti.remove(&index) {
                continue;
            }
            if let Err(e) = self.socket.leave_allmulti(index) {
                // EADDRNOTAVAIL / ENODEV: the kernel dropped it with the link.
                debug!("releasing all-multicast on {}: {e}", self.describe(index));
            }
        }
        true
    }

    /// Stops every pair.
    pub fn stop_all(&mut self) {
        for (up, down) in self.pairs() {
            self.stop(up, down);
        }
    }

    /// Handles readiness of one of the forwarder's tokens.
    pub fn ready(&mut self, token: Token) -> Result<Vec<Notice>, ForwarderError> {
        let Some(tokens) = self.tokens else {
            return Ok(Vec::new());
        };
        if token == tokens.packets {
            self.read_packets()
        } else if token == tokens.links {
            self.read_link_events()
        } else if token == tokens.neighbors {
            self.read_neighbor_events()?;
            Ok(Vec::new())
        } else {
            Ok(Vec::new())
        }
    }

    /// When [`Forwarder::tick`] has work next.
    pub fn next_deadline(&self) -> Option<Instant> {
        let summary =
            (self.proxy.refusals() != self.logged.1).then_some(self.logged.0 + SUMMARY_INTERVAL);
        [self.proxy.next_deadline(), summary]
            .into_iter()
            .flatten()
            .min()
    }

    /// Does the engine's timed work: confirms the claims whose wait is
    /// over (returned as notices) and logs the refusal summary when due.
    pub fn tick(&mut self, now: Instant) -> Vec<Notice> {
        let notices = self
            .proxy
            .tick(now)
            .into_iter()
            .map(|guest| {
                debug!("guest {} on {}", guest.addr, self.describe(guest.ifindex));
                Notice::Guest(guest)
            })
            .collect();
        self.log_refusals(now);
        notices
    }

    /// Packets refused so far, per reason.
    pub fn refusals(&self) -> Refusals {
        self.proxy.refusals()
    }

    fn log_refusals(&mut self, now: Instant) {
        let counts = self.proxy.refusals();
        if counts == self.logged.1 || now < self.logged.0 + SUMMARY_INTERVAL {
            return;
        }
        let new = counts.since(&self.logged.1);
        warn!(
            "refused {} guest ND packet(s) in the last {:.0?} for addresses the guests may not use ({new}); {} since start",
            new.total(),
            now.saturating_duration_since(self.logged.0),
            counts.total()
        );
        self.logged = (now, counts);
    }

    fn send_copy(&self, ty: &str, out: &Outgoing) {
        if let Err(e) = self.socket.send(out.ifindex, out.dst_mac, &out.packet) {
            match e.raw_os_error() {
                Some(libc::ENETDOWN) | Some(libc::ENXIO) | Some(libc::ENODEV) => {
                    debug!("{} is down: {e}", self.describe(out.ifindex))
                }
                // A full queue drops this copy; ND retransmits.
                Some(libc::EAGAIN) | Some(libc::ENOBUFS) => {
                    debug!("sending {ty} on {}: {e}", self.describe(out.ifindex))
                }
                _ => warn!("sending {ty} on {}: {e}", self.describe(out.ifindex)),
            }
        }
    }

    fn read_packets(&mut self) -> Result<Vec<Notice>, ForwarderError> {
        let mut notices = Vec::new();
        loop {
            let info = match self.socket.recv(&mut self.buf) {
                Ok(Some(info)) => info,
                Ok(None) => break,
                // A link of ours went down under the read; nothing is lost.
                Err(e) if e.raw_os_error() == Some(libc::ENETDOWN) => continue,
                Err(e) => return Err(ForwarderError::socket("receive", e)),
            };
            if info.truncated {
                debug!("dropped a packet larger than {MAX_PACKET} bytes");
                continue;
            }
            if self.proxy.is_downlink(info.ifindex) {
                // A guest's claim is judged against every prefix the kernel
                // has announced so far: the route for an RA's prefix is
                // queued on the other socket as the RA arrives, and the
                // guest's DAD probe for its SLAAC address may come back
                // before that socket is next read. One non-blocking read.
                notices.extend(self.read_link_events()?);
            }
            let rx = Received {
                ifindex: info.ifindex,
                pkttype: info.pkttype,
                src_mac: info.src_mac,
                vlan_id: info.vlan_id,
                checksum_ready: info.checksum_ready,
                packet: &self.buf[..info.len],
            };
            let outcome = self.proxy.handle(&rx, Instant::now());
            let ty = outcome.nd_type.map_or("packet", |t| t.abbrev());
            match &outcome.dropped {
                None => {}
                Some(Dropped::Invalid(e)) => {
                    debug!("dropped {ty} from {}: {e}", self.describe(info.ifindex))
                }
                Some(why) => trace!(
                    "not relaying {ty} from {}: {why:?}",
                    self.describe(info.ifindex)
                ),
            }
            for index in &outcome.no_mac {
                debug!(
                    "not relaying {ty} to {}: its MAC is unknown",
                    self.describe(*index)
                );
            }
            for out in &outcome.sends {
                trace!(
                    "relaying {ty} from {} to {}",
                    self.describe(info.ifindex),
                    self.describe(out.ifindex)
                );
                self.send_copy(ty, out);
            }
            for probe in &outcome.probes {
                trace!(
                    "probing the uplink {} for a new guest address",
                    self.describe(probe.ifindex)
                );
                self.send_copy("DAD probe", probe);
            }
            if let Some(guest) = outcome.learned {
                debug!("guest {} on {}", guest.addr, self.describe(guest.ifindex));
                notices.push(Notice::Guest(guest));
            }
        }
        self.log_refusals(Instant::now());
        Ok(notices)
    }

    fn read_link_events(&mut self) -> Result<Vec<Notice>, ForwarderError> {
        let mut notices = Vec::new();
        for event in self.links.read_events()? {
            match event {
                RtnlEvent::NewLink(link) => self.update_link(link, &mut notices),
                RtnlEvent::DelLink(link) => self.remove_link(link.index, &mut notices),
                RtnlEvent::NewAddress(a) => {
                    if let IpAddr::V6(addr) = a.addr {
                        self.proxy.add_local_address(a.ifindex, addr, a.prefix_len);
                    }
                }
                RtnlEvent::DelAddress(a) => {
                    if let IpAddr::V6(addr) = a.addr {
                        self.proxy.remove_local_address(a.ifindex, addr);
                    }
                }
                RtnlEvent::Overrun => {
                    warn!("link notifications overran; re-reading links, addresses and routes");
                    notices.extend(self.reload_links()?);
                }
                RtnlEvent::NewRoute(r) => {
                    if let Some((ifindex, prefix, len)) = on_link_prefix(&r) {
                        if self.proxy.uses(ifindex) && len < 128 {
                            debug!("{prefix}/{len} is on-link on {}", self.describe(ifindex));
                        }
                        self.proxy.add_on_link_route(ifindex, prefix, len);
                    }
                }
                RtnlEvent::DelRoute(r) => {
                    if let Some((ifindex, prefix, len)) = on_link_prefix(&r) {
                        self.proxy.remove_on_link_route(ifindex, prefix, len);
                    }
                }
            }
        }
        Ok(notices)
    }

    fn update_link(&mut self, link: Link, notices: &mut Vec<Notice>) {
        self.proxy.set_link_mac(link.index, link.mac);
        if self.names.get(&link.index) != Some(&link.name) {
            self.names.insert(link.index, link.name.clone());
            notices.push(Notice::LinkAdded {
                ifindex: link.index,
                name: link.name,
            });
        }
    }

    fn remove_link(&mut self, index: u32, notices: &mut Vec<Notice>) {
        self.proxy.forget_link(index);
        // The kernel drops a departing link's memberships itself.
        self.allmulti.remove(&index);
        if let Some(name) = self.names.remove(&index) {
            if self.proxy.uses(index) {
                info!("proxied link {name} (#{index}) went away");
            }
            notices.push(Notice::LinkRemoved {
                ifindex: index,
                name,
            });
        }
    }

    /// Re-reads links, the host's IPv6 addresses and on-link routes;
    /// returns what changed.
    fn reload_links(&mut self) -> Result<Vec<Notice>, ForwarderError> {
        let links = self.rtnl.links()?;
        let addresses = self.rtnl.addresses(None)?;
        let routes = self.rtnl.routes(Family::V6, None)?;
        let mut notices = Vec::new();
        let present: BTreeSet<u32> = links.iter().map(|l| l.index).collect();
        let gone: Vec<u32> = self
            .names
            .keys()
            .filter(|i| !present.contains(i))
            .copied()
            .collect();
        for index in gone {
            self.remove_link(index, &mut notices);
        }
        for link in links {
            self.update_link(link, &mut notices);
        }
        self.proxy.clear_local_addresses();
        for a in addresses {
            if let IpAddr::V6(addr) = a.addr {
                self.proxy.add_local_address(a.ifindex, addr, a.prefix_len);
            }
        }
        self.proxy.clear_on_link_routes();
        for (ifindex, prefix, len) in routes.iter().filter_map(on_link_prefix) {
            self.proxy.add_on_link_route(ifindex, prefix, len);
        }
        Ok(notices)
    }

    fn read_neighbor_events(&mut self) -> Result<(), ForwarderError> {
        for event in self.neighbors.read_events()? {
            match event {
                NeighborEvent::New(n) => {
                    if let IpAddr::V6(addr) = n.addr {
                        if n.proxy {
                            continue;
                        }
                        let mac = if n.is_resolved() { n.mac } else { None };
                        self.proxy.set_kernel_neighbor(n.ifindex, addr, mac);
                    }
                }
                NeighborEvent::Del(n) => {
                    if let IpAddr::V6(addr) = n.addr {
                        if !n.proxy {
                            self.proxy.set_kernel_neighbor(n.ifindex, addr, None);
                        }
                    }
                }
                NeighborEvent::Overrun => {
                    warn!("neighbour notifications overran; re-reading the neighbour table");
                    self.reload_neighbors()?;
                }
            }
        }
        Ok(())
    }

    fn reload_neighbors(&mut self) -> Result<(), ForwarderError> {
        let table = self.rtnl.neighbors(Family::V6)?;
        self.proxy.clear_kernel_neighbors();
        for n in table {
            if let (IpAddr::V6(addr), true) = (n.addr, n.is_resolved()) {
                self.proxy.set_kernel_neighbor(n.ifindex, addr, n.mac);
            }
        }
        Ok(())
    }
}

/// The on-link prefix a route stands for: an IPv6 unicast route through a
/// link without a gateway (any table: shill keeps them in per-link tables).
fn on_link_prefix(route: &Route) -> Option<(u32, std::net::Ipv6Addr, u8)> {
    let (IpAddr::V6(prefix), None, Some(LinkRef::Index(ifindex)), RouteType::Unicast) =
        (route.dst, route.gateway, route.oif.as_ref(), route.kind)
    else {
        return None;
    };
    Some((*ifindex, prefix, route.prefix_len))
}
