//! IPv6 for guests through the ndproxy helper (RFC 4389; DESIGN §8): the
//! manager tells the helper which downlinks to proxy to which uplink, and
//! installs a /128 route to the downlink (through the writer) for every
//! guest address the helper reports.
//!
//! Pairs are part of the helper's replay log, so a respawned ndproxy
//! resumes without any new D-Bus call. Routes die with their downlink.
//!
//! A reported address is checked again here, against what the manager
//! knows, before it gets a route ([`NdProxyState::admit`]): it must be
//! global or ULA, inside an on-link prefix of the downlink's uplink (from
//! the uplink's own addresses, as the helper's rule), not one of the
//! uplinks' own addresses and not routed to another downlink. The kernel
//! announces the uplink's SLAAC address only after its DAD, so a guest
//! that got the same RA may be reported a second or two before the
//! manager sees the prefix: an address refused as off-link waits (at most
//! [`DEFER_FOR`], at most [`MAX_ROUTES_PER_DOWNLINK`] per downlink) and is
//! checked again after every event. A downlink
//! has at most [`MAX_ROUTES_PER_DOWNLINK`] routes; a new address beyond
//! that replaces the one reported least recently (the helper reports an
//! address in use every 30 s, so only a stale one goes), and its route is
//! removed.
//!
//! Routes are installed without blocking the D-Bus loop: admitted
//! addresses are queued and sent to the writer as one `Apply` at a time,
//! asynchronously ([`NdProxyState::flush_routes`], run after every
//! event); the answer is handled when it comes. A batch that fails is
//! retried one address per plan, so one bad address does not hold back
//! the others. The writer applies requests in order, so these plans and
//! the D-Bus calls' plans never overtake each other.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv6Addr};
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use patchpanel_ipc::datapath::{ApplyMode, Netns, Plan, RouteKind, RouteSpec, Step};
use patchpanel_ipc::{HelperError, IfName, Reply, Request};
use patchpanel_sandbox::Process;

use crate::env::{GuestView, HelperLink};
use crate::helpers::SendError;
use crate::routing::{RoutingMode, MAIN_TABLE};
use crate::uplinks::UplinkView;

/// Routes per downlink: the ND proxy's own bound on the addresses a
/// downlink may claim (`patchpanel_ndp::proxy::MAX_CLAIMS_PER_DOWNLINK`).
pub const MAX_ROUTES_PER_DOWNLINK: usize = 64;
/// Routes per writer request.
const MAX_BATCH: usize = 64;
/// At most one warning about refused addresses per this interval.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);
/// How long an off-link address waits for the uplink's prefix to appear.
pub const DEFER_FOR: Duration = Duration::from_secs(10);

/// Which guest a proxied downlink belongs to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum ProxyKey {
    Namespace(u32),
    /// ARC's bridge for this uplink.
    Arc(String),
    Vm(String, u64),
}

/// One proxied downlink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyPair {
    pub uplink: IfName,
    pub uplink_ifindex: u32,
    pub downlink: IfName,
    pub downlink_ifindex: u32,
}

impl ProxyPair {
    fn replay_key(&self) -> String {
        format!("ndproxy {}->{}", self.uplink_ifindex, self.downlink_ifindex)
    }
}

/// One guest route: an address behind a downlink.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct GuestRoute {
    pub downlink_ifindex: u32,
    pub downlink: IfName,
    pub addr: Ipv6Addr,
}

impl GuestRoute {
    fn spec(&self) -> RouteSpec {
        RouteSpec {
            dst: IpAddr::V6(self.addr),
            prefix_len: 128,
            gateway: None,
            dev: Some(self.downlink.clone()),
            table: MAIN_TABLE,
            metric: None,
            kind: RouteKind::Unicast,
        }
    }
}

/// Why a reported address gets no route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteRefusal {
    /// Not global unicast or ULA.
    NotRoutable,
    /// The downlink is not one the manager proxies.
    UnknownDownlink,
    /// Outside the on-link prefixes of the downlink's uplink.
    OffLink,
    /// One of the uplinks' own addresses.
    HostAddress,
    /// Routed to another downlink (the first one keeps it).
    OtherGuest(IfName),
    /// The downlink's routes are all in flight; nothing can make room.
    Full,
}

impl std::fmt::Display for RouteRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RouteRefusal::NotRoutable => f.write_str("not a global or unique local address"),
            RouteRefusal::UnknownDownlink => f.write_str("not on a proxied downlink"),
            RouteRefusal::OffLink => f.write_str("outside the uplink's on-link prefixes"),
            RouteRefusal::HostAddress => f.write_str("one of the host's own addresses"),
            RouteRefusal::OtherGuest(d) => write!(f, "already routed to {d}"),
            RouteRefusal::Full => write!(
                f,
                "the downlink has {MAX_ROUTES_PER_DOWNLINK} routes being installed"
            ),
        }
    }
}

/// What to do with an admitted address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admitted {
    /// Already routed (or on its way): only its report time moved.
    Known,
    /// Route it, after removing `evict`'s route (to keep the bound).
    New {
        route: GuestRoute,
        evict: Option<GuestRoute>,
    },
}

/// One writer request for guest routes.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Batch {
    Add(Vec<GuestRoute>),
    Remove(Vec<GuestRoute>),
}

/// What the manager knows of the helper's work.
#[derive(Debug, Default)]
pub struct NdProxyState {
    pairs: BTreeMap<ProxyKey, ProxyPair>,
    /// Guest addresses with a route, queued or installed, and when each
    /// was last reported.
    routed: BTreeMap<(u32, Ipv6Addr), Instant>,
    /// Routes to add: batched, then (after a batch failed) one per plan.
    to_add: Vec<GuestRoute>,
    to_add_alone: Vec<GuestRoute>,
    /// Routes to remove (evicted).
    to_remove: Vec<GuestRoute>,
    /// The writer request in flight, and what it carries.
    in_flight: Option<(u64, Batch)>,
    /// Addresses refused as off-link, waiting for the uplink's prefix, and
    /// when they were first reported.
    deferred: BTreeMap<(u32, Ipv6Addr), Instant>,
    /// Refused reports: the count, and when a warning was last logged.
    refused: u64,
    refusal_logged: Option<Instant>,
}

/// The writer's answer to a guest-route plan: every step done, or why not.
fn plan_result(result: Result<Reply, HelperError>) -> Result<(), String> {
    match result {
        Ok(Reply::Applied(report)) if report.failures.is_empty() => Ok(()),
        Ok(Reply::Applied(report)) => Err(report.failures.join("; ")),
        Ok(other) => Err(format!("the writer answered {other:?}")),
        Err(e) => Err(e.to_string()),
    }
}

/// Whether `addr` lies in `prefix`/`len` (1..=127).
fn in_prefix(addr: &Ipv6Addr, prefix: &Ipv6Addr, len: u8) -> bool {
    if !(1..128).contains(&len) {
        return false;
    }
    let mask = u128::MAX << (128 - u32::from(len));
    u128::from(*addr) & mask == u128::from(*prefix) & mask
}

impl NdProxyState {
    /// Decides whether `addr`, reported on downlink `ifindex`, gets a route
    /// (see the module documentation). Pure: the caller carries it out.
    pub fn admit(
        &mut self,
        uplinks: &UplinkView,
        ifindex: u32,
        addr: Ipv6Addr,
        now: Instant,
    ) -> Result<Admitted, RouteRefusal> {
        if !routable(&addr) {
            return Err(RouteRefusal::NotRoutable);
        }
        let pair = self
            .pairs
            .values()
            .find(|p| p.downlink_ifindex == ifindex)
            .ok_or(RouteRefusal::UnknownDownlink)?;
        if uplinks
            .all()
            .any(|u| u.ipv6.iter().any(|(a, _)| *a == addr))
        {
            return Err(RouteRefusal::HostAddress);
        }
        let on_link = uplinks.get(pair.uplink.as_str()).is_some_and(|u| {
            u.ipv6
                .iter()
                .any(|(a, len)| routable(a) && in_prefix(&addr, a, *len))
        });
        if !on_link {
            return Err(RouteRefusal::OffLink);
        }
        if let Some(other) = self
            .routed
            .keys()
            .find(|(i, a)| *a == addr && *i != ifindex)
            .map(|(i, _)| *i)
        {
            let name = self
                .pairs
                .values()
                .find(|p| p.downlink_ifindex == other)
                .map(|p| p.downlink.clone())
                .unwrap_or_else(|| pair.downlink.clone());
            return Err(RouteRefusal::OtherGuest(name));
        }
        if let Some(seen) = self.routed.get_mut(&(ifindex, addr)) {
            *seen = now;
            return Ok(Admitted::Known);
        }
        let route = GuestRoute {
            downlink_ifindex: ifindex,
            downlink: pair.downlink.clone(),
            addr,
        };
        let mine = self.routed.keys().filter(|(i, _)| *i == ifindex).count();
        let mut evict = None;
        if mine >= MAX_ROUTES_PER_DOWNLINK {
            // Only an installed route can go; one on its way stays.
            let pending: BTreeSet<Ipv6Addr> = self.pending_routes().map(|r| r.addr).collect();
            let oldest = self
                .routed
                .iter()
                .filter(|((i, a), _)| *i == ifindex && !pending.contains(a))
                .min_by_key(|(_, t)| **t)
                .map(|((_, a), _)| *a)
                .ok_or(RouteRefusal::Full)?;
            self.routed.remove(&(ifindex, oldest));
            evict = Some(GuestRoute {
                addr: oldest,
                ..route.clone()
            });
        }
        self.routed.insert((ifindex, addr), now);
        Ok(Admitted::New { route, evict })
    }

    /// Keeps an address refused as off-link for another look once the
    /// uplink's addresses change; `false` when the downlink already has
    /// its share waiting (or the address is not on a proxied downlink).
    fn defer(&mut self, ifindex: u32, addr: Ipv6Addr, now: Instant) -> bool {
        if self.deferred.contains_key(&(ifindex, addr)) {
            return true;
        }
        let waiting = self.deferred.keys().filter(|(i, _)| *i == ifindex).count();
        let known = self.pairs.values().any(|p| p.downlink_ifindex == ifindex);
        if !known || waiting >= MAX_ROUTES_PER_DOWNLINK {
            return false;
        }
        self.deferred.insert((ifindex, addr), now);
        true
    }

    /// Looks again at the deferred addresses: admitted ones are queued,
    /// those that waited [`DEFER_FOR`] or fail another check are dropped.
    /// Returns the dropped ones with the reason.
    fn retry_deferred(
        &mut self,
        uplinks: &UplinkView,
        now: Instant,
    ) -> Vec<(u32, Ipv6Addr, RouteRefusal)> {
        let mut dropped = Vec::new();
        for ((ifindex, addr), since) in std::mem::take(&mut self.deferred) {
            match self.admit(uplinks, ifindex, addr, now) {
                Ok(admitted) => self.queue(admitted),
                Err(RouteRefusal::OffLink) if now.saturating_duration_since(since) < DEFER_FOR => {
                    self.deferred.insert((ifindex, addr), since);
                }
                Err(why) => dropped.push((ifindex, addr, why)),
            }
        }
        dropped
    }

    /// Routes queued or in flight.
    fn pending_routes(&self) -> impl Iterator<Item = &GuestRoute> {
        let in_flight = match &self.in_flight {
            Some((_, Batch::Add(routes))) => routes.as_slice(),
            _ => &[],
        };
        self.to_add
            .iter()
            .chain(self.to_add_alone.iter())
            .chain(in_flight.iter())
    }

    /// Queues what [`NdProxyState::admit`] decided.
    fn queue(&mut self, admitted: Admitted) {
        if let Admitted::New { route, evict } = admitted {
            self.to_remove.extend(evict);
            self.to_add.push(route);
        }
    }

    /// The next writer request to send, if none is in flight.
    fn next_batch(&mut self) -> Option<Batch> {
        if self.in_flight.is_some() {
            return None;
        }
        if !self.to_remove.is_empty() {
            let n = self.to_remove.len().min(MAX_BATCH);
            return Some(Batch::Remove(self.to_remove.drain(..n).collect()));
        }
        if !self.to_add_alone.is_empty() {
            return Some(Batch::Add(vec![self.to_add_alone.remove(0)]));
        }
        if !self.to_add.is_empty() {
            let n = self.to_add.len().min(MAX_BATCH);
            return Some(Batch::Add(self.to_add.drain(..n).collect()));
        }
        None
    }

    /// Puts a batch that could not be sent back at the head of its queue.
    /// Only routes still wanted go back (their downlink may have been
    /// forgotten meanwhile).
    fn unsend(&mut self, batch: Batch) {
        match batch {
            Batch::Remove(routes) => {
                self.to_remove.splice(0..0, routes);
            }
            Batch::Add(routes) => {
                let wanted = self.still_wanted(routes);
                self.to_add.splice(0..0, wanted);
            }
        }
    }

    fn still_wanted(&self, routes: Vec<GuestRoute>) -> Vec<GuestRoute> {
        routes
            .into_iter()
            .filter(|r| self.routed.contains_key(&(r.downlink_ifindex, r.addr)))
            .collect()
    }

    /// The writer answered the batch in flight; returns what to log.
    fn answered(&mut self, result: Result<(), String>) -> Vec<String> {
        match self.in_flight.take() {
            Some((_, batch)) => self.settle(batch, result),
            None => Vec::new(),
        }
    }

    /// Records the outcome of `batch`; returns what to log.
    fn settle(&mut self, batch: Batch, result: Result<(), String>) -> Vec<String> {
        let mut log = Vec::new();
        match (batch, result) {
            (Batch::Remove(routes), Ok(())) => {
                for r in routes {
                    log.push(format!(
                        "guest address {} unrouted from {} (room for a newer one)",
                        r.addr, r.downlink
                    ));
                }
            }
            (Batch::Remove(_), Err(e)) => log.push(format!("removing old guest routes: {e}")),
            (Batch::Add(routes), Ok(())) => {
                for r in routes {
                    if self.routed.contains_key(&(r.downlink_ifindex, r.addr)) {
                        log.push(format!("guest address {} routed to {}", r.addr, r.downlink));
                    }
                }
            }
            (Batch::Add(routes), Err(e)) if routes.len() > 1 => {
                log.push(format!(
                    "routing {} guest addresses at once failed ({e}); trying each alone",
                    routes.len()
                ));
                let wanted = self.still_wanted(routes);
                self.to_add_alone.extend(wanted);
            }
            (Batch::Add(routes), Err(e)) => {
                for r in routes {
                    self.routed.remove(&(r.downlink_ifindex, r.addr));
                    log.push(format!(
                        "cannot route guest address {} to {}: {e}",
                        r.addr, r.downlink
                    ));
                }
            }
        }
        log
    }

    /// The writer went away with a batch in flight: it may or may not have
    /// been applied, and adding a route again is harmless, so it is queued
    /// again.
    fn writer_lost(&mut self) {
        if let Some((_, batch)) = self.in_flight.take() {
            self.unsend(batch);
        }
    }

    /// Forgets a downlink's routes (they die with the link).
    fn forget_downlink(&mut self, ifindex: u32) {
        self.routed.retain(|(i, _), _| *i != ifindex);
        self.deferred.retain(|(i, _), _| *i != ifindex);
        self.to_add.retain(|r| r.downlink_ifindex != ifindex);
        self.to_add_alone.retain(|r| r.downlink_ifindex != ifindex);
        self.to_remove.retain(|r| r.downlink_ifindex != ifindex);
    }

    /// Whether `id` is the guest-route request in flight.
    pub fn owns_request(&self, id: u64) -> bool {
        self.in_flight.as_ref().is_some_and(|(i, _)| *i == id)
    }

    /// How many addresses downlink `ifindex` has routed (or on their way).
    pub fn routes_of(&self, ifindex: u32) -> usize {
        self.routed.keys().filter(|(i, _)| *i == ifindex).count()
    }
}

/// Guest addresses worth a route: global unicast or ULA.
pub fn routable(addr: &Ipv6Addr) -> bool {
    let first = addr.segments()[0];
    (first & 0xe000) == 0x2000 || (first & 0xfe00) == 0xfc00
}

/// Every downlink that should be proxied now, with its uplink: connected
/// namespaces without static IPv6 (their pinned uplink, else the default
/// network), ARC's bridges (their own uplink), VM TAPs (the default
/// network).
pub fn wanted_pairs(
    guests: &GuestView<'_>,
    uplinks: &UplinkView,
) -> BTreeMap<ProxyKey, (IfName, u32, IfName)> {
    let default = uplinks
        .default_uplink()
        .map(|u| (u.name.clone(), u.ifindex));
    let mut wanted = BTreeMap::new();
    for ns in guests.namespaces.values().filter(|n| n.ipv6.is_none()) {
        let uplink = match &ns.mode {
            RoutingMode::Pinned { uplink, .. } => uplinks
                .get(uplink.as_str())
                .map(|u| (u.name.clone(), u.ifindex)),
            RoutingMode::System | RoutingMode::User => default.clone(),
        };
        if let Some((name, ifindex)) = uplink {
            wanted.insert(
                ProxyKey::Namespace(ns.id),
                (name, ifindex, ns.host_ifname.clone()),
            );
        }
    }
    if let Some(arc) = guests.arc {
        for device in arc.devices.values() {
            let Some(up) = &device.uplink else { continue };
            if let Some(u) = uplinks.get(up.name.as_str()) {
                wanted.insert(
                    ProxyKey::Arc(up.name.to_string()),
                    (u.name.clone(), u.ifindex, device.bridge.clone()),
                );
            }
        }
    }
    if let Some((name, ifindex)) = default {
        for vm in guests.vms {
            wanted.insert(
                ProxyKey::Vm(vm.kind.name().to_string(), vm.id),
                (name.clone(), ifindex, vm.tap.clone()),
            );
        }
    }
    wanted
}

impl NdProxyState {
    /// Brings the helper's pairs in line with the guests and uplinks:
    /// stops pairs no longer wanted (or re-pointed), starts new ones.
    pub fn reconcile(
        &mut self,
        guests: &GuestView<'_>,
        uplinks: &UplinkView,
        link: &mut dyn HelperLink,
    ) {
        let wanted = wanted_pairs(guests, uplinks);
        let stale: Vec<ProxyKey> = self
            .pairs
            .iter()
            .filter(|(key, pair)| {
                wanted.get(*key).is_none_or(|(_, ifindex, downlink)| {
                    *ifindex != pair.uplink_ifindex || *downlink != pair.downlink
                })
            })
            .map(|(key, _)| key.clone())
            .collect();
        for key in stale {
            self.stop_pair(&key, link);
        }
        let new: Vec<_> = wanted
            .into_iter()
            .filter(|(key, _)| !self.pairs.contains_key(key))
            .collect();
        if new.is_empty() {
            return;
        }
        let rtnl = match patchpanel_rtnl::Rtnl::new() {
            Ok(r) => r,
            Err(e) => {
                warn!("IPv6 proxying: no rtnetlink socket: {e}");
                return;
            }
        };
        for (key, (uplink, uplink_ifindex, downlink)) in new {
            let downlink_ifindex = match rtnl.ifindex(downlink.as_str()) {
                Ok(i) => i,
                Err(e) => {
                    debug!("IPv6 proxying for {key:?}: {downlink}: {e}");
                    continue;
                }
            };
            let pair = ProxyPair {
                uplink,
                uplink_ifindex,
                downlink,
                downlink_ifindex,
            };
            let request = Request::NdProxyStart {
                uplink_ifindex,
                downlink_ifindex,
            };
            // Recorded first: a helper that is restarting gets it on replay.
            link.record_replay(
                Process::NdProxy,
                &pair.replay_key(),
                request.clone(),
                Vec::new(),
            );
            // Not waited for: the call that made the guest answers first
            // (the helper's first start on a fresh bridge took 7.6 ms,
            // measured); a failure comes back to the loop and is logged
            // there, and a helper that restarts gets it on replay.
            match link.send_waiting(Process::NdProxy, request) {
                Ok(_) => info!(
                    "IPv6 neighbour proxying {} <-> {} ({key:?})",
                    pair.uplink, pair.downlink
                ),
                Err(e) => warn!(
                    "IPv6 proxying {} <-> {} not started now ({e:?}); it will be on the helper's next start",
                    pair.uplink, pair.downlink
                ),
            }
            self.pairs.insert(key, pair);
        }
    }

    fn stop_pair(&mut self, key: &ProxyKey, link: &mut dyn HelperLink) {
        let Some(pair) = self.pairs.remove(key) else {
            return;
        };
        link.forget_replay(Process::NdProxy, &pair.replay_key());
        self.forget_downlink(pair.downlink_ifindex);
        let request = Request::NdProxyStop {
            uplink_ifindex: pair.uplink_ifindex,
            downlink_ifindex: pair.downlink_ifindex,
        };
        // Not waited for (see mcast_service: its answer changes nothing).
        if let Err(e) = link.send_waiting(Process::NdProxy, request) {
            debug!("ndproxy stop {} <-> {}: {e:?}", pair.uplink, pair.downlink);
        }
    }

    /// The helper saw a guest use `addr` on downlink `ifindex`: queue its
    /// route if the address passes the manager's own checks. Nothing is
    /// sent here; [`NdProxyState::flush_routes`] does that.
    pub fn on_neighbor_detected(&mut self, uplinks: &UplinkView, ifindex: u32, addr: [u8; 16]) {
        let addr = Ipv6Addr::from(addr);
        let now = Instant::now();
        match self.admit(uplinks, ifindex, addr, now) {
            Ok(admitted) => self.queue(admitted),
            Err(RouteRefusal::OffLink) if self.defer(ifindex, addr, now) => {
                debug!("guest address {addr} on #{ifindex}: waiting for the uplink's prefix");
            }
            Err(why) => self.refused_guest_route(ifindex, addr, &why, now),
        }
    }

    /// Counts a refused address and warns, at most once per interval.
    fn refused_guest_route(
        &mut self,
        ifindex: u32,
        addr: Ipv6Addr,
        why: &RouteRefusal,
        now: Instant,
    ) {
        self.refused += 1;
        let quiet = self
            .refusal_logged
            .is_some_and(|t| now.saturating_duration_since(t) < REFUSAL_LOG_INTERVAL);
        if quiet {
            debug!("no route for guest address {addr} on #{ifindex}: {why}");
        } else {
            self.refusal_logged = Some(now);
            warn!(
                "no route for guest address {addr} on #{ifindex}: {why} ({} refused since start)",
                self.refused
            );
        }
    }

    /// Sends the next batch of guest routes to the writer, unless one is
    /// in flight. Called after every event; never waits.
    pub fn flush_routes(&mut self, uplinks: &UplinkView, link: &mut dyn HelperLink) {
        if !self.deferred.is_empty() {
            let now = Instant::now();
            for (ifindex, addr, why) in self.retry_deferred(uplinks, now) {
                self.refused_guest_route(ifindex, addr, &why, now);
            }
        }
        while let Some(batch) = self.next_batch() {
            if !self.send_guest_routes(batch, link) {
                return;
            }
        }
    }

    /// Sends one batch; `false` when nothing more can be sent now.
    fn send_guest_routes(&mut self, batch: Batch, link: &mut dyn HelperLink) -> bool {
        let (label, mode, steps) = match &batch {
            Batch::Add(routes) => (
                format!("route {} guest address(es)", routes.len()),
                ApplyMode::Atomic,
                routes
                    .iter()
                    .map(|r| Step::AddRoute {
                        netns: Netns::Host,
                        route: r.spec(),
                    })
                    .collect(),
            ),
            Batch::Remove(routes) => (
                format!("unroute {} old guest address(es)", routes.len()),
                ApplyMode::BestEffort,
                routes
                    .iter()
                    .map(|r| Step::DeleteRoute {
                        netns: Netns::Host,
                        route: r.spec(),
                    })
                    .collect(),
            ),
        };
        let plan = Plan { label, mode, steps };
        match link.send(Process::DatapathWriter, Request::Apply(plan)) {
            Ok(id) => {
                self.in_flight = Some((id, batch));
                false
            }
            // Sent again after the next event (the writer's answer, its
            // restart).
            Err(SendError::Busy) => {
                self.unsend(batch);
                false
            }
            Err(SendError::Failed(e)) => {
                for line in self.settle(batch, Err(e)) {
                    warn!("{line}");
                }
                true
            }
        }
    }

    /// The writer answered the guest routes in flight.
    pub fn on_routes_applied(&mut self, result: Result<Reply, HelperError>) {
        let result = plan_result(result);
        let failed = result.is_err();
        for line in self.answered(result) {
            if failed {
                warn!("{line}");
            } else {
                info!("{line}");
            }
        }
    }

    /// The writer died; what it was applying for guests is sent again.
    pub fn on_writer_lost(&mut self) {
        self.writer_lost();
    }
}

#[cfg(test)]
mod tests {
    use patchpanel_ipc::datapath::PlanReport;
    use patchpanel_uplinks::{Technology, Uplink, UplinkEvent};

    use super::*;

    const ETH0: u32 = 2;
    const NS0: u32 = 10;
    const NS1: u32 = 11;

    fn a(s: &str) -> Ipv6Addr {
        s.parse().unwrap()
    }

    fn name(s: &str) -> IfName {
        IfName::new(s).unwrap()
    }

    /// eth0 with 2001:db8:1::ff/64 (and its link-local address).
    fn uplinks() -> UplinkView {
        let mut v = UplinkView::default();
        v.apply(&UplinkEvent::Added(Uplink {
            name: name("eth0"),
            ifindex: ETH0,
            up: true,
            ipv4: vec![],
            ipv6: vec![(a("2001:db8:1::ff"), 64), (a("fe80::ff"), 64)],
            gateway4: None,
            technology: Technology::Ethernet,
        }));
        v
    }

    /// Two connected namespaces proxied to eth0.
    fn state() -> NdProxyState {
        let mut st = NdProxyState::default();
        for (id, ifindex, dev) in [(0, NS0, "arc_ns0"), (1, NS1, "arc_ns1")] {
            st.pairs.insert(
                ProxyKey::Namespace(id),
                ProxyPair {
                    uplink: name("eth0"),
                    uplink_ifindex: ETH0,
                    downlink: name(dev),
                    downlink_ifindex: ifindex,
                },
            );
        }
        st
    }

    fn guest(i: u32) -> Ipv6Addr {
        Ipv6Addr::from(u128::from(a("2001:db8:1::1:0")) + u128::from(i))
    }

    fn route(ifindex: u32, dev: &str, addr: Ipv6Addr) -> GuestRoute {
        GuestRoute {
            downlink_ifindex: ifindex,
            downlink: name(dev),
            addr,
        }
    }

    fn applied() -> Result<(), String> {
        Ok(())
    }

    #[test]
    fn only_global_and_ula_addresses_get_routes() {
        assert!(routable(&"2001:db8:1::5".parse().unwrap()));
        assert!(routable(&"fd00::1".parse().unwrap()));
        assert!(!routable(&"fe80::1".parse().unwrap()));
        assert!(!routable(&"ff02::1".parse().unwrap()));
        assert!(!routable(&"::1".parse().unwrap()));
    }

    #[test]
    fn a_guest_address_in_the_uplink_prefix_is_routed_to_its_downlink() {
        let mut st = state();
        let got = st.admit(&uplinks(), NS0, guest(1), Instant::now());
        assert_eq!(
            got,
            Ok(Admitted::New {
                route: route(NS0, "arc_ns0", guest(1)),
                evict: None
            })
        );
        assert_eq!(st.routes_of(NS0), 1);
    }

    #[test]
    fn a_repeated_report_is_known() {
        let mut st = state();
        let t = Instant::now();
        st.admit(&uplinks(), NS0, guest(1), t).unwrap();
        assert_eq!(st.admit(&uplinks(), NS0, guest(1), t), Ok(Admitted::Known));
    }

    #[test]
    fn an_off_link_address_is_refused() {
        let mut st = state();
        for off in ["2001:db8:ffff::53", "2001:db8:2::5", "fd00::5"] {
            assert_eq!(
                st.admit(&uplinks(), NS0, a(off), Instant::now()),
                Err(RouteRefusal::OffLink),
                "{off}"
            );
        }
    }

    #[test]
    fn an_uplink_without_addresses_has_no_on_link_prefix() {
        let mut st = state();
        assert_eq!(
            st.admit(&UplinkView::default(), NS0, guest(1), Instant::now()),
            Err(RouteRefusal::OffLink)
        );
    }

    #[test]
    fn the_hosts_own_address_is_refused() {
        let mut st = state();
        assert_eq!(
            st.admit(&uplinks(), NS0, a("2001:db8:1::ff"), Instant::now()),
            Err(RouteRefusal::HostAddress)
        );
    }

    #[test]
    fn link_local_multicast_and_unknown_downlinks_are_refused() {
        let mut st = state();
        let t = Instant::now();
        assert_eq!(
            st.admit(&uplinks(), NS0, a("fe80::5"), t),
            Err(RouteRefusal::NotRoutable)
        );
        assert_eq!(
            st.admit(&uplinks(), NS0, a("ff02::1"), t),
            Err(RouteRefusal::NotRoutable)
        );
        assert_eq!(
            st.admit(&uplinks(), 99, guest(1), t),
            Err(RouteRefusal::UnknownDownlink)
        );
    }

    #[test]
    fn another_guests_address_stays_with_the_first() {
        let mut st = state();
        let t = Instant::now();
        st.admit(&uplinks(), NS0, guest(1), t).unwrap();
        assert_eq!(
            st.admit(&uplinks(), NS1, guest(1), t),
            Err(RouteRefusal::OtherGuest(name("arc_ns0")))
        );
        assert_eq!(st.routes_of(NS1), 0);
    }

    #[test]
    fn a_full_downlink_replaces_its_least_recently_reported_route() {
        let mut st = state();
        let t0 = Instant::now();
        for i in 0..MAX_ROUTES_PER_DOWNLINK as u32 {
            let admitted = st
                .admit(
                    &uplinks(),
                    NS0,
                    guest(i),
                    t0 + Duration::from_secs(u64::from(i)),
                )
                .unwrap();
            st.queue(admitted);
        }
        // Everything is installed.
        while let Some(batch) = st.next_batch() {
            st.in_flight = Some((1, batch));
            st.answered(applied());
        }
        let later = t0 + Duration::from_secs(1000);
        st.admit(&uplinks(), NS0, guest(0), later).unwrap();

        let got = st.admit(&uplinks(), NS0, guest(500), later);

        assert_eq!(
            got,
            Ok(Admitted::New {
                route: route(NS0, "arc_ns0", guest(500)),
                evict: Some(route(NS0, "arc_ns0", guest(1))),
            }),
            "guest(0) was reported again; guest(1) is the stalest"
        );
        assert_eq!(st.routes_of(NS0), MAX_ROUTES_PER_DOWNLINK);
    }

    #[test]
    fn routes_still_on_their_way_are_never_evicted() {
        let mut st = state();
        let t = Instant::now();
        for i in 0..MAX_ROUTES_PER_DOWNLINK as u32 {
            let admitted = st.admit(&uplinks(), NS0, guest(i), t).unwrap();
            st.queue(admitted);
        }
        assert_eq!(
            st.admit(&uplinks(), NS0, guest(500), t),
            Err(RouteRefusal::Full)
        );
        assert!(
            st.admit(&uplinks(), NS1, guest(500), t).is_ok(),
            "another downlink is not affected"
        );
    }

    #[test]
    fn admitted_routes_go_to_the_writer_in_one_batch_at_a_time() {
        let mut st = state();
        let t = Instant::now();
        for i in 0..3 {
            let admitted = st.admit(&uplinks(), NS0, guest(i), t).unwrap();
            st.queue(admitted);
        }
        let batch = st.next_batch().expect("a batch");
        assert_eq!(
            batch,
            Batch::Add((0..3).map(|i| route(NS0, "arc_ns0", guest(i))).collect())
        );
        st.in_flight = Some((7, batch));
        let admitted = st.admit(&uplinks(), NS0, guest(3), t).unwrap();
        st.queue(admitted);
        assert_eq!(st.next_batch(), None, "one request in flight at a time");
        assert!(st.owns_request(7));
        st.answered(applied());
        assert_eq!(
            st.next_batch(),
            Some(Batch::Add(vec![route(NS0, "arc_ns0", guest(3))]))
        );
    }

    #[test]
    fn evictions_are_sent_before_new_routes() {
        let mut st = state();
        st.to_add.push(route(NS0, "arc_ns0", guest(2)));
        st.to_remove.push(route(NS0, "arc_ns0", guest(1)));
        assert!(matches!(st.next_batch(), Some(Batch::Remove(_))));
    }

    #[test]
    fn a_failed_batch_is_retried_one_address_at_a_time() {
        let mut st = state();
        let t = Instant::now();
        for i in 0..2 {
            let admitted = st.admit(&uplinks(), NS0, guest(i), t).unwrap();
            st.queue(admitted);
        }
        let batch = st.next_batch().unwrap();
        st.in_flight = Some((1, batch));
        st.answered(Err("EEXIST".into()));
        assert_eq!(
            st.next_batch(),
            Some(Batch::Add(vec![route(NS0, "arc_ns0", guest(0))]))
        );
        st.in_flight = Some((2, Batch::Add(vec![route(NS0, "arc_ns0", guest(0))])));
        st.answered(Err("EINVAL".into()));
        assert_eq!(st.routes_of(NS0), 1, "the failed address is forgotten");
        assert_eq!(
            st.next_batch(),
            Some(Batch::Add(vec![route(NS0, "arc_ns0", guest(1))]))
        );
    }

    #[test]
    fn a_batch_in_flight_when_the_writer_dies_is_sent_again() {
        let mut st = state();
        let admitted = st.admit(&uplinks(), NS0, guest(0), Instant::now()).unwrap();
        st.queue(admitted);
        let batch = st.next_batch().unwrap();
        st.in_flight = Some((1, batch.clone()));
        st.writer_lost();
        assert!(!st.owns_request(1));
        assert_eq!(st.next_batch(), Some(batch));
    }

    #[test]
    fn a_batch_of_a_forgotten_downlink_is_not_sent_again() {
        let mut st = state();
        let t = Instant::now();
        for i in 0..2 {
            let admitted = st.admit(&uplinks(), NS0, guest(i), t).unwrap();
            st.queue(admitted);
        }
        let batch = st.next_batch().unwrap();
        st.in_flight = Some((1, batch.clone()));
        st.forget_downlink(NS0);
        st.answered(Err("ENODEV".into()));
        assert_eq!(st.next_batch(), None, "not retried alone");
        st.in_flight = Some((2, batch));
        st.writer_lost();
        assert_eq!(st.next_batch(), None, "not sent again");
    }

    #[test]
    fn a_forgotten_downlink_drops_its_routes_and_queue() {
        let mut st = state();
        let admitted = st.admit(&uplinks(), NS0, guest(0), Instant::now()).unwrap();
        st.queue(admitted);
        st.forget_downlink(NS0);
        assert_eq!(st.routes_of(NS0), 0);
        assert_eq!(st.next_batch(), None);
    }

    #[test]
    fn an_off_link_address_waits_for_the_uplinks_prefix() {
        let mut st = state();
        let t0 = Instant::now();
        let bare = {
            let mut v = UplinkView::default();
            v.apply(&UplinkEvent::Added(Uplink {
                ipv6: vec![],
                ..uplinks().get("eth0").unwrap().clone()
            }));
            v
        };
        assert_eq!(
            st.admit(&bare, NS0, guest(1), t0),
            Err(RouteRefusal::OffLink)
        );
        assert!(st.defer(NS0, guest(1), t0));
        assert!(st.retry_deferred(&bare, t0).is_empty(), "still waiting");
        assert_eq!(st.next_batch(), None);

        assert!(st
            .retry_deferred(&uplinks(), t0 + Duration::from_secs(2))
            .is_empty());

        assert_eq!(
            st.next_batch(),
            Some(Batch::Add(vec![route(NS0, "arc_ns0", guest(1))]))
        );
        assert!(st.deferred.is_empty());
    }

    #[test]
    fn a_deferred_address_is_dropped_after_the_wait() {
        let mut st = state();
        let t0 = Instant::now();
        st.defer(NS0, a("2001:db8:ffff::53"), t0);
        assert!(st.retry_deferred(&uplinks(), t0).is_empty());
        assert_eq!(
            st.retry_deferred(&uplinks(), t0 + DEFER_FOR),
            vec![(NS0, a("2001:db8:ffff::53"), RouteRefusal::OffLink)]
        );
        assert!(st.deferred.is_empty());
    }

    #[test]
    fn deferred_addresses_are_bounded_per_downlink() {
        let mut st = state();
        let t0 = Instant::now();
        for i in 0..MAX_ROUTES_PER_DOWNLINK as u32 {
            assert!(st.defer(NS0, guest(i), t0));
        }
        assert!(!st.defer(NS0, guest(9999), t0));
        assert!(st.defer(NS1, guest(9999), t0));
        assert!(!st.defer(99, guest(1), t0), "unknown downlink");
    }

    #[test]
    fn a_writer_report_with_failures_is_a_failure() {
        let report = |failures: Vec<String>| {
            Ok(Reply::Applied(PlanReport {
                replaced_sysctls: vec![],
                failures,
            }))
        };
        assert_eq!(plan_result(report(vec![])), Ok(()));
        assert_eq!(
            plan_result(report(vec!["step 1: gone".into()])),
            Err("step 1: gone".into())
        );
        assert!(plan_result(Ok(Reply::Done)).is_err());
        assert!(plan_result(Err(HelperError::InvalidArgument("x".into()))).is_err());
    }
}
