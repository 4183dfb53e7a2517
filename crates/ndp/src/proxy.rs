//! The forwarding engine: given the proxied link pairs, what the host
//! knows about its links (MACs, its own addresses and their prefixes,
//! neighbours) and one received packet, decide where copies go, how each
//! is rewritten, and which guest address was seen. No sockets and no
//! clock: the caller feeds events and the current time, so every rule is a
//! plain unit test.
//!
//! Relaying (RFC 4389, as patchpanel's original proxy applies it):
//! * a pair is (uplink, downlink); RS go downlink -> uplink, RA go
//!   uplink -> downlinks (to ff02::1, so one solicited RA teaches every
//!   guest), NS and NA go both ways and between downlinks of the same
//!   uplink (guests on different downlinks share the uplink's /64);
//! * only frames addressed to this host at L2 are relayed (host, broadcast,
//!   multicast): never our own output, never a frame seen only because an
//!   interface is promiscuous, never a VLAN-tagged frame (packet sockets
//!   also see tagged frames of VLANs riding on the uplink);
//! * a packet for one of the host's own addresses is not relayed (the
//!   kernel answers it), nor an NS for one of them;
//! * the destination MAC of a copy is the multicast MAC for a multicast
//!   destination, else the neighbour's MAC on the outgoing link (from the
//!   kernel's table or learned from packets), else the all-nodes MAC,
//!   which every IPv6 node accepts.
//!
//! Which addresses a guest may use. A packet from a downlink *claims* an
//! address: an NA its target, an NS or RS its source, a DAD probe (NS from
//! `::`) its target. Relayed, such a packet makes the LAN and the other
//! guests send that address's traffic to this host, and a reported address
//! gets a host route to the guest, so the claim is checked first:
//! * a global or unique local address must lie inside an on-link prefix of
//!   the downlink's uplink, must not be one of the host's own addresses (on
//!   any link), must not be a known neighbour on the uplink (resolved in the
//!   kernel's table, the source of a packet received there, or the target
//!   of an NA received there), and must not be held by another downlink.
//!   The uplink's on-link prefixes are those of its own global or ULA
//!   addresses, of its routes without a gateway, and of the on-link (L)
//!   prefixes of the RAs received there and relayed to the guests, for
//!   their valid lifetime; of length [`MIN_ON_LINK_PREFIX`] to 127 (a
//!   shorter one would put a large part of the Internet "on-link"). The
//!   RAs matter: the kernel announces the SLAAC address it makes from an
//!   RA only after its own DAD, a second or two after the guest got the
//!   same RA through the proxy, and it may ignore an RA altogether (while
//!   the uplink's link-local address is still tentative) that the proxy
//!   relayed;
//! * a new claim is tentative ([`crate::claims`]): the proxy sends a DAD
//!   probe for it on the uplink (the guest's own DAD probe serves when that
//!   is what claimed it) and confirms it [`DAD_WAIT`] later unless someone
//!   on the LAN answered; then it is reported, and the first claimer keeps
//!   it. Claims per downlink are bounded and rate-limited;
//! * a link-local address is not held or reported, but must not be the
//!   host's on the uplink or the downlink, nor a known neighbour on the
//!   uplink (the router's);
//! * any other address (multicast, loopback, ...) is refused.
//!
//! A refused packet is neither relayed nor learned from, and counted
//! ([`Proxy::refusals`]), except that a refused DAD probe is relayed only
//! towards the holder (the uplink for a LAN neighbour, the other guest's
//! downlink), so the holder defends and the guest's DAD fails as it would
//! on a shared link. While a claim is tentative, the claimer's NA and NS
//! that use the address are held back (not relayed); ND retransmits.

use std::collections::{BTreeSet, HashMap};
use std::net::Ipv6Addr;
use std::time::Instant;

use crate::claims::{Claims, Owner};
pub use crate::claims::{
    Refusal, Refusals, CLAIM_BURST, CLAIM_REFILL, DAD_WAIT, MAX_CLAIMS_PER_DOWNLINK,
    REPORT_INTERVAL,
};
use crate::packet::{
    icmpv6_checksum, is_global_or_ula, multicast_mac, NdError, NdPacket, NdType, Rewrite,
    ALL_NODES, IPPROTO_ICMPV6, ND_HOP_LIMIT, OPT_PREFIX_INFO, OPT_TARGET_LINK_ADDR,
};

/// Bound on neighbours learned from packets.
pub const MAX_ENTRIES: usize = 4096;
/// The shortest prefix that counts as on-link for claims.
pub const MIN_ON_LINK_PREFIX: u8 = 32;
/// On-link prefixes remembered per uplink from its RAs.
pub const MAX_RA_PREFIXES: usize = 32;
/// Where a unicast copy goes when the neighbour's MAC is unknown.
pub const ALL_NODES_MAC: [u8; 6] = [0x33, 0x33, 0, 0, 0, 1];

// linux/if_packet.h sll_pkttype values.
const PACKET_HOST: u8 = 0;
const PACKET_BROADCAST: u8 = 1;
const PACKET_MULTICAST: u8 = 2;

/// A pair the proxy refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PairError {
    /// Index 0 names no interface.
    #[error("interface index 0 names no link")]
    ZeroIndex,
    /// A link cannot be proxied to itself.
    #[error("uplink and downlink are the same link (index {0})")]
    SameLink(u32),
}

/// One packet as the socket delivered it.
#[derive(Debug, Clone, Copy)]
pub struct Received<'a> {
    /// Receiving interface.
    pub ifindex: u32,
    /// `sll_pkttype`.
    pub pkttype: u8,
    /// Sender's MAC.
    pub src_mac: Option<[u8; 6]>,
    /// VLAN id, for a tagged frame.
    pub vlan_id: Option<u16>,
    /// Whether the checksum field is final (and so can be verified).
    pub checksum_ready: bool,
    /// The IPv6 packet.
    pub packet: &'a [u8],
}

/// One copy to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    /// Interface to send on.
    pub ifindex: u32,
    /// Link-layer destination.
    pub dst_mac: [u8; 6],
    /// The rewritten IPv6 packet.
    pub packet: Vec<u8>,
}

/// A guest address seen on a downlink.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Guest {
    /// The downlink.
    pub ifindex: u32,
    /// The guest's global or unique local address.
    pub addr: Ipv6Addr,
}

/// Why a packet was not relayed (anywhere).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dropped {
    /// Sent by this host (`PACKET_OUTGOING`) or looped back.
    OwnOutput,
    /// Addressed to another host at L2 (seen in promiscuous mode).
    NotForThisHost,
    /// A VLAN-tagged frame.
    Vlan(u16),
    /// Received on a link no pair uses.
    NotProxied,
    /// Not a valid RS/RA/NS/NA.
    Invalid(NdError),
    /// For one of the host's own addresses: the kernel answers it.
    ForHost,
    /// No pair relays this type from this link (an RA from a guest, an RS
    /// from the uplink).
    NoTarget,
    /// From a guest, using an address it may not use.
    Refused(Refusal),
    /// From a guest, using an address whose claim is still tentative.
    Tentative,
}

/// What to do with one received packet.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Outcome {
    /// The message type, when the packet parsed.
    pub nd_type: Option<NdType>,
    /// Copies to send (rewrites of the received packet).
    pub sends: Vec<Outgoing>,
    /// DAD probes of the proxy's own, for a new claim.
    pub probes: Vec<Outgoing>,
    /// A guest address to report.
    pub learned: Option<Guest>,
    /// Why nothing was sent, if so.
    pub dropped: Option<Dropped>,
    /// Target links skipped because their MAC is unknown.
    pub no_mac: Vec<u32>,
}

impl Outcome {
    fn dropped(nd_type: Option<NdType>, why: Dropped) -> Outcome {
        Outcome {
            nd_type,
            dropped: Some(why),
            ..Outcome::default()
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct NeighborEntry {
    mac: [u8; 6],
    from_kernel: bool,
}

/// What a packet from a downlink may do with the address it claims.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Judgement {
    /// A link-local address nobody else has: relay, nothing to hold.
    Free,
    /// The downlink holds it; `report` when it is due to be reported.
    Held { report: bool },
    /// The claim waits for the probe; `probe_on` the uplinks to probe when
    /// this packet started it.
    Tentative { probe_on: Vec<u32> },
    /// Refused; `holder` is where a DAD probe for it may still go.
    Refused { why: Refusal, holder: Vec<u32> },
}

/// The engine's state. See the module documentation.
#[derive(Debug, Default)]
pub struct Proxy {
    pairs: BTreeSet<(u32, u32)>,
    macs: HashMap<u32, [u8; 6]>,
    /// The host's own addresses per link, with their prefix lengths.
    local: HashMap<u32, HashMap<Ipv6Addr, u8>>,
    /// Prefixes routed without a gateway, per link.
    on_link: HashMap<u32, BTreeSet<(Ipv6Addr, u8)>>,
    /// On-link prefixes from the RAs received on a link, until they expire.
    ra_prefixes: HashMap<u32, HashMap<(Ipv6Addr, u8), Instant>>,
    neighbors: HashMap<(u32, Ipv6Addr), NeighborEntry>,
    learned_neighbors: usize,
    claims: Claims,
    refusals: Refusals,
}

/// Whether (`uplink`, `downlink`) can be proxied: two different links.
pub fn check_pair(uplink: u32, downlink: u32) -> Result<(), PairError> {
    if uplink == 0 || downlink == 0 {
        return Err(PairError::ZeroIndex);
    }
    if uplink == downlink {
        return Err(PairError::SameLink(uplink));
    }
    Ok(())
}

fn is_link_local(addr: &Ipv6Addr) -> bool {
    addr.segments()[0] & 0xffc0 == 0xfe80
}

/// Whether `addr` lies in the global or ULA prefix `prefix`/`len`, of
/// length [`MIN_ON_LINK_PREFIX`] to 127 (other lengths define no on-link
/// prefix worth the name).
fn in_prefix(addr: &Ipv6Addr, prefix: &Ipv6Addr, len: u8) -> bool {
    if !(MIN_ON_LINK_PREFIX..128).contains(&len) || !is_global_or_ula(prefix) {
        return false;
    }
    let mask = u128::MAX << (128 - u32::from(len));
    u128::from(*addr) & mask == u128::from(*prefix) & mask
}

/// The address a packet from a downlink claims, and whether the packet is
/// a DAD probe.
fn claimed_address(nd: &NdPacket<'_>) -> Option<(Ipv6Addr, bool)> {
    let src = nd.source();
    match nd.nd_type() {
        NdType::NeighborAdvertisement => Some((nd.target()?, false)),
        NdType::NeighborSolicitation if src.is_unspecified() => Some((nd.target()?, true)),
        NdType::NeighborSolicitation => Some((src, false)),
        NdType::RouterSolicitation if src.is_unspecified() => None,
        NdType::RouterSolicitation => Some((src, false)),
        NdType::RouterAdvertisement => None,
    }
}

/// The solicited-node multicast address of `addr` (RFC 4291 §2.7.1).
fn solicited_node(addr: &Ipv6Addr) -> Ipv6Addr {
    let o = addr.octets();
    Ipv6Addr::from([
        0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, o[13], o[14], o[15],
    ])
}

/// A DAD probe for `target`: an NS from `::` to its solicited-node group,
/// without options (RFC 4862 §5.4.2). Whoever holds the address answers
/// with an NA to all nodes.
pub fn dad_probe(target: &Ipv6Addr) -> Vec<u8> {
    let src = Ipv6Addr::UNSPECIFIED;
    let dst = solicited_node(target);
    let mut icmp = vec![
        NdType::NeighborSolicitation.icmp_type(),
        0,
        0,
        0,
        0,
        0,
        0,
        0,
    ];
    icmp.extend_from_slice(&target.octets());
    let sum = icmpv6_checksum(&src, &dst, &icmp);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
    let mut packet = vec![0x60, 0, 0, 0];
    packet.extend_from_slice(&(icmp.len() as u16).to_be_bytes());
    packet.extend_from_slice(&[IPPROTO_ICMPV6, ND_HOP_LIMIT]);
    packet.extend_from_slice(&src.octets());
    packet.extend_from_slice(&dst.octets());
    packet.extend_from_slice(&icmp);
    packet
}

/// The on-link prefixes an RA advertises: (prefix, length, valid lifetime
/// in seconds) of each Prefix Information option with the L flag.
fn ra_on_link_prefixes(nd: &NdPacket<'_>) -> Vec<(Ipv6Addr, u8, u32)> {
    const FLAG_ON_LINK: u8 = 0x80;
    nd.options()
        .filter(|o| o.kind == OPT_PREFIX_INFO && o.bytes.len() == 32)
        .filter(|o| o.bytes[3] & FLAG_ON_LINK != 0)
        .filter_map(|o| {
            let valid = u32::from_be_bytes(o.bytes[4..8].try_into().ok()?);
            let prefix: [u8; 16] = o.bytes[16..32].try_into().ok()?;
            Some((Ipv6Addr::from(prefix), o.bytes[2], valid))
        })
        .collect()
}

/// The Target Link-Layer Address option of an NA, when Ethernet-sized.
fn target_mac(nd: &NdPacket<'_>) -> Option<[u8; 6]> {
    nd.options()
        .find(|o| o.kind == OPT_TARGET_LINK_ADDR && o.bytes.len() == 8)
        .and_then(|o| o.bytes[2..8].try_into().ok())
}

impl Proxy {
    /// An engine with no pairs.
    pub fn new() -> Proxy {
        Proxy::default()
    }

    /// Starts proxying between `uplink` and `downlink`; `Ok(false)` if the
    /// pair was already proxied.
    pub fn start(&mut self, uplink: u32, downlink: u32) -> Result<bool, PairError> {
        check_pair(uplink, downlink)?;
        Ok(self.pairs.insert((uplink, downlink)))
    }

    /// Stops proxying the pair; `false` if it was not proxied. A downlink
    /// no pair uses any more loses its claims.
    pub fn stop(&mut self, uplink: u32, downlink: u32) -> bool {
        let removed = self.pairs.remove(&(uplink, downlink));
        if removed && !self.is_downlink(downlink) {
            self.claims.forget_downlink(downlink);
        }
        removed
    }

    /// The proxied pairs, (uplink, downlink).
    pub fn pairs(&self) -> impl Iterator<Item = (u32, u32)> + '_ {
        self.pairs.iter().copied()
    }

    /// Whether any pair uses the link, on either side.
    pub fn uses(&self, ifindex: u32) -> bool {
        self.pairs
            .iter()
            .any(|&(up, down)| up == ifindex || down == ifindex)
    }

    /// Every link some pair uses.
    pub fn links(&self) -> BTreeSet<u32> {
        self.pairs.iter().flat_map(|&(u, d)| [u, d]).collect()
    }

    /// Records a link's MAC (`None`: it has none worth using).
    pub fn set_link_mac(&mut self, ifindex: u32, mac: Option<[u8; 6]>) {
        match mac {
            Some(mac) => {
                self.macs.insert(ifindex, mac);
            }
            None => {
                self.macs.remove(&ifindex);
            }
        }
    }

    /// Forgets everything known about a link that went away (its pairs
    /// stay until stopped), and the claims of guests behind it.
    pub fn forget_link(&mut self, ifindex: u32) {
        self.macs.remove(&ifindex);
        self.local.remove(&ifindex);
        self.on_link.remove(&ifindex);
        self.ra_prefixes.remove(&ifindex);
        self.neighbors.retain(|&(i, _), _| i != ifindex);
        self.learned_neighbors = self.neighbors.values().filter(|e| !e.from_kernel).count();
        self.claims.forget_downlink(ifindex);
    }

    /// Records one of the host's own addresses and the length of its
    /// on-link prefix.
    pub fn add_local_address(&mut self, ifindex: u32, addr: Ipv6Addr, prefix_len: u8) {
        self.local
            .entry(ifindex)
            .or_default()
            .insert(addr, prefix_len);
    }

    /// Forgets one of the host's own addresses.
    pub fn remove_local_address(&mut self, ifindex: u32, addr: Ipv6Addr) {
        if let Some(set) = self.local.get_mut(&ifindex) {
            set.remove(&addr);
        }
    }

    /// Forgets every host address (before a re-dump).
    pub fn clear_local_addresses(&mut self) {
        self.local.clear();
    }

    /// Records a route to `prefix`/`len` through `ifindex` without a
    /// gateway: the prefix is on-link there.
    pub fn add_on_link_route(&mut self, ifindex: u32, prefix: Ipv6Addr, len: u8) {
        self.on_link
            .entry(ifindex)
            .or_default()
            .insert((prefix, len));
    }

    /// Forgets an on-link route.
    pub fn remove_on_link_route(&mut self, ifindex: u32, prefix: Ipv6Addr, len: u8) {
        if let Some(set) = self.on_link.get_mut(&ifindex) {
            set.remove(&(prefix, len));
        }
    }

    /// Forgets every on-link route (before a re-dump).
    pub fn clear_on_link_routes(&mut self) {
        self.on_link.clear();
    }

    /// Records the on-link prefixes of an RA received on `ifindex` (a
    /// valid lifetime of 0 withdraws one), at most [`MAX_RA_PREFIXES`].
    fn learn_ra_prefixes(&mut self, ifindex: u32, nd: &NdPacket<'_>, now: Instant) {
        let prefixes = ra_on_link_prefixes(nd);
        if prefixes.is_empty() {
            return;
        }
        let known = self.ra_prefixes.entry(ifindex).or_default();
        known.retain(|_, expires| *expires > now);
        for (prefix, len, valid) in prefixes {
            if valid == 0 {
                known.remove(&(prefix, len));
            } else if known.len() < MAX_RA_PREFIXES || known.contains_key(&(prefix, len)) {
                let lifetime = std::time::Duration::from_secs(u64::from(valid));
                known.insert((prefix, len), now + lifetime);
            }
        }
    }

    /// Whether `addr` lies in an on-link prefix of `ifindex` at `now`.
    fn is_on_link(&self, ifindex: u32, addr: &Ipv6Addr, now: Instant) -> bool {
        let by_address = self
            .local
            .get(&ifindex)
            .is_some_and(|own| own.iter().any(|(a, &len)| in_prefix(addr, a, len)));
        let by_route = self
            .on_link
            .get(&ifindex)
            .is_some_and(|routes| routes.iter().any(|(p, len)| in_prefix(addr, p, *len)));
        let by_ra = self.ra_prefixes.get(&ifindex).is_some_and(|prefixes| {
            prefixes
                .iter()
                .any(|((p, len), expires)| *expires > now && in_prefix(addr, p, *len))
        });
        by_address || by_route || by_ra
    }

    /// Records a neighbour from the kernel's table; `None` removes it.
    pub fn set_kernel_neighbor(&mut self, ifindex: u32, addr: Ipv6Addr, mac: Option<[u8; 6]>) {
        let key = (ifindex, addr);
        let old = match mac {
            Some(mac) => self.neighbors.insert(
                key,
                NeighborEntry {
                    mac,
                    from_kernel: true,
                },
            ),
            None => self.neighbors.remove(&key),
        };
        if old.is_some_and(|e| !e.from_kernel) {
            self.learned_neighbors -= 1;
        }
    }

    /// Forgets the kernel's neighbours (before a re-dump); those learned
    /// from packets stay.
    pub fn clear_kernel_neighbors(&mut self) {
        self.neighbors.retain(|_, e| !e.from_kernel);
    }

    /// Learns a neighbour from a packet. At the bound, the entries learned
    /// on the same link go first, so a guest that makes up source
    /// addresses cannot flush what was learned on the uplink.
    fn learn_neighbor(&mut self, ifindex: u32, addr: Ipv6Addr, mac: [u8; 6]) {
        let key = (ifindex, addr);
        match self.neighbors.get_mut(&key) {
            Some(e) => e.mac = mac,
            None => {
                if self.learned_neighbors >= MAX_ENTRIES {
                    self.neighbors
                        .retain(|&(i, _), e| e.from_kernel || i != ifindex);
                    self.learned_neighbors =
                        self.neighbors.values().filter(|e| !e.from_kernel).count();
                    if self.learned_neighbors >= MAX_ENTRIES {
                        self.neighbors.retain(|_, e| e.from_kernel);
                        self.learned_neighbors = 0;
                    }
                }
                self.neighbors.insert(
                    key,
                    NeighborEntry {
                        mac,
                        from_kernel: false,
                    },
                );
                self.learned_neighbors += 1;
            }
        }
    }

    /// The MAC of `addr` on `ifindex`, if known.
    pub fn neighbor_mac(&self, ifindex: u32, addr: &Ipv6Addr) -> Option<[u8; 6]> {
        self.neighbors.get(&(ifindex, *addr)).map(|e| e.mac)
    }

    /// Packets refused so far, per reason.
    pub fn refusals(&self) -> Refusals {
        self.refusals
    }

    /// The downlink holding `addr` (confirmed claims only).
    pub fn holder(&self, addr: &Ipv6Addr) -> Option<u32> {
        match self.claims.owner(addr) {
            Some(Owner::Confirmed(d)) => Some(d),
            _ => None,
        }
    }

    /// When [`Proxy::tick`] has work: the end of the earliest tentative
    /// claim's wait.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.claims.next_deadline()
    }

    /// Confirms the tentative claims whose wait is over and that nothing
    /// contradicted meanwhile; returns them, to be reported.
    pub fn tick(&mut self, now: Instant) -> Vec<Guest> {
        let mut confirmed = Vec::new();
        for (downlink, addr) in self.claims.due(now) {
            let verdict = self
                .static_refusal(downlink, &addr, now)
                .and_then(|uplinks| match self.known_on(&uplinks, &addr) {
                    true => Err(Refusal::UplinkNeighbor),
                    false => Ok(()),
                });
            match verdict {
                Ok(()) => {
                    self.claims.confirm(&addr, now);
                    confirmed.push(Guest {
                        ifindex: downlink,
                        addr,
                    });
                }
                Err(why) => {
                    self.claims.revoke_tentative(&addr);
                    self.refusals.count(why);
                }
            }
        }
        confirmed
    }

    /// Whether `addr` is one of the host's own addresses as seen from
    /// `ifindex` (link-local ones only on that link).
    fn is_local(&self, ifindex: u32, addr: &Ipv6Addr) -> bool {
        if addr.is_multicast() || addr.is_unspecified() {
            return false;
        }
        if is_link_local(addr) {
            return self
                .local
                .get(&ifindex)
                .is_some_and(|s| s.contains_key(addr));
        }
        self.local.values().any(|s| s.contains_key(addr))
    }

    /// Whether some pair has `ifindex` as its downlink.
    pub fn is_downlink(&self, ifindex: u32) -> bool {
        self.pairs.iter().any(|&(_, down)| down == ifindex)
    }

    /// The uplinks `downlink` is paired with.
    fn uplinks_of(&self, downlink: u32) -> Vec<u32> {
        self.pairs
            .iter()
            .filter(|&&(_, down)| down == downlink)
            .map(|&(up, _)| up)
            .collect()
    }

    /// Whether `addr` is a known neighbour on one of `uplinks`.
    fn known_on(&self, uplinks: &[u32], addr: &Ipv6Addr) -> bool {
        uplinks
            .iter()
            .any(|&up| self.neighbors.contains_key(&(up, *addr)))
    }

    /// The checks of a global or ULA claim that depend on the host alone:
    /// not the host's, inside an on-link prefix of the downlink's
    /// uplink(s). Returns those uplinks.
    fn static_refusal(
        &self,
        downlink: u32,
        addr: &Ipv6Addr,
        now: Instant,
    ) -> Result<Vec<u32>, Refusal> {
        if self.is_local(downlink, addr) {
            return Err(Refusal::HostAddress);
        }
        let uplinks: Vec<u32> = self
            .uplinks_of(downlink)
            .into_iter()
            .filter(|&up| self.is_on_link(up, addr, now))
            .collect();
        if uplinks.is_empty() {
            return Err(Refusal::OffLink);
        }
        Ok(uplinks)
    }

    /// What a packet from `downlink` may do with the address it claims.
    fn judge(&mut self, downlink: u32, addr: Ipv6Addr, now: Instant) -> Judgement {
        let refused = |why, holder| Judgement::Refused { why, holder };
        if is_link_local(&addr) {
            let uplinks = self.uplinks_of(downlink);
            if self.is_local(downlink, &addr) || uplinks.iter().any(|&u| self.is_local(u, &addr)) {
                return refused(Refusal::HostAddress, Vec::new());
            }
            if self.known_on(&uplinks, &addr) {
                return refused(Refusal::UplinkNeighbor, uplinks);
            }
            return Judgement::Free;
        }
        if !is_global_or_ula(&addr) {
            return refused(Refusal::NotUnicast, Vec::new());
        }
        let uplinks = match self.static_refusal(downlink, &addr, now) {
            Ok(uplinks) => uplinks,
            Err(why) => return refused(why, Vec::new()),
        };
        match self.claims.owner(&addr) {
            Some(owner) if owner.downlink() != downlink => {
                refused(Refusal::OtherGuest, vec![owner.downlink()])
            }
            Some(Owner::Confirmed(_)) => Judgement::Held {
                report: self.claims.seen(&addr, now),
            },
            Some(Owner::Tentative(_)) => {
                if self.known_on(&uplinks, &addr) {
                    self.claims.revoke_tentative(&addr);
                    return refused(Refusal::UplinkNeighbor, uplinks);
                }
                self.claims.seen(&addr, now);
                Judgement::Tentative {
                    probe_on: Vec::new(),
                }
            }
            None => {
                if self.known_on(&uplinks, &addr) {
                    return refused(Refusal::UplinkNeighbor, uplinks);
                }
                match self.claims.begin(downlink, addr, now) {
                    Ok(()) => Judgement::Tentative { probe_on: uplinks },
                    Err(why) => refused(why, Vec::new()),
                }
            }
        }
    }

    /// What a packet received on an uplink teaches: an RA's on-link
    /// prefixes; an NA's target is a LAN neighbour (unless a guest holds it:
    /// the first claimer keeps its address), and a tentative claim of it or
    /// of the sender's address fails.
    fn learn_from_uplink(&mut self, rx: &Received<'_>, nd: &NdPacket<'_>, now: Instant) {
        if nd.nd_type() == NdType::RouterAdvertisement {
            self.learn_ra_prefixes(rx.ifindex, nd, now);
        }
        let src = nd.source();
        if is_global_or_ula(&src) && self.claims.revoke_tentative(&src) {
            self.refusals.count(Refusal::UplinkNeighbor);
        }
        if nd.nd_type() != NdType::NeighborAdvertisement {
            return;
        }
        let Some(target) = nd.target() else { return };
        if !is_global_or_ula(&target) && !is_link_local(&target) {
            return;
        }
        if self.claims.revoke_tentative(&target) {
            self.refusals.count(Refusal::UplinkNeighbor);
        }
        if self.holder(&target).is_some() {
            return;
        }
        if let Some(mac) = target_mac(nd).or(rx.src_mac) {
            self.learn_neighbor(rx.ifindex, target, mac);
        }
    }

    /// The links a packet of type `ty` received on `ifindex` is relayed to.
    fn targets(&self, ty: NdType, ifindex: u32) -> BTreeSet<u32> {
        let mut out = BTreeSet::new();
        for &(up, down) in &self.pairs {
            match ty {
                NdType::RouterSolicitation => {
                    if down == ifindex {
                        out.insert(up);
                    }
                }
                NdType::RouterAdvertisement => {
                    if up == ifindex {
                        out.insert(down);
                    }
                }
                NdType::NeighborSolicitation | NdType::NeighborAdvertisement => {
                    if up == ifindex {
                        out.insert(down);
                    }
                    if down == ifindex {
                        out.insert(up);
                        // Other downlinks of the same uplink.
                        out.extend(
                            self.pairs
                                .iter()
                                .filter(|&&(u, _)| u == up)
                                .map(|&(_, d)| d),
                        );
                    }
                }
            }
        }
        out.remove(&ifindex);
        out
    }

    /// DAD probes for `addr` on `uplinks` (those with a known MAC).
    fn probes(&self, addr: &Ipv6Addr, uplinks: &[u32]) -> Vec<Outgoing> {
        let packet = dad_probe(addr);
        let dst_mac = multicast_mac(&solicited_node(addr)).unwrap_or(ALL_NODES_MAC);
        uplinks
            .iter()
            .filter(|up| self.macs.contains_key(up))
            .map(|&ifindex| Outgoing {
                ifindex,
                dst_mac,
                packet: packet.clone(),
            })
            .collect()
    }

    /// Decides what to do with one received packet.
    pub fn handle(&mut self, rx: &Received<'_>, now: Instant) -> Outcome {
        match rx.pkttype {
            PACKET_HOST | PACKET_BROADCAST | PACKET_MULTICAST => {}
            // PACKET_OUTGOING and PACKET_LOOPBACK are our own; anything
            // else was for another host.
            libc::PACKET_OUTGOING | libc::PACKET_LOOPBACK => {
                return Outcome::dropped(None, Dropped::OwnOutput)
            }
            _ => return Outcome::dropped(None, Dropped::NotForThisHost),
        }
        if let Some(id) = rx.vlan_id.filter(|&id| id != 0) {
            return Outcome::dropped(None, Dropped::Vlan(id));
        }
        if !self.uses(rx.ifindex) {
            return Outcome::dropped(None, Dropped::NotProxied);
        }
        let nd = match NdPacket::parse(rx.packet) {
            Ok(nd) => nd,
            Err(e) => return Outcome::dropped(None, Dropped::Invalid(e)),
        };
        let ty = nd.nd_type();
        if rx.checksum_ready {
            if let Err(e) = nd.verify_checksum() {
                return Outcome::dropped(Some(ty), Dropped::Invalid(e));
            }
        }

        let mut outcome = Outcome {
            nd_type: Some(ty),
            ..Outcome::default()
        };
        // Links to relay to instead of the usual ones.
        let mut only: Option<BTreeSet<u32>> = None;
        if self.is_downlink(rx.ifindex) {
            if let Some((addr, dad)) = claimed_address(&nd) {
                match self.judge(rx.ifindex, addr, now) {
                    Judgement::Free => {}
                    Judgement::Held { report } => {
                        if report {
                            outcome.learned = Some(Guest {
                                ifindex: rx.ifindex,
                                addr,
                            });
                        }
                    }
                    // The relayed probe asks the LAN for us.
                    Judgement::Tentative { .. } if dad => {}
                    Judgement::Tentative { probe_on } => {
                        outcome.probes = self.probes(&addr, &probe_on);
                        outcome.dropped = Some(Dropped::Tentative);
                        return outcome;
                    }
                    Judgement::Refused { why, holder } => {
                        self.refusals.count(why);
                        if !dad || holder.is_empty() {
                            outcome.dropped = Some(Dropped::Refused(why));
                            return outcome;
                        }
                        only = Some(holder.into_iter().collect());
                    }
                }
            }
        } else {
            self.learn_from_uplink(rx, &nd, now);
        }

        let src = nd.source();
        if let Some(mac) = rx.src_mac {
            if !src.is_unspecified() && !src.is_multicast() {
                self.learn_neighbor(rx.ifindex, src, mac);
            }
        }

        let dst = nd.destination();
        let for_host = self.is_local(rx.ifindex, &dst)
            || (ty == NdType::NeighborSolicitation
                && nd.target().is_some_and(|t| self.is_local(rx.ifindex, &t)));
        if for_host {
            outcome.dropped = Some(Dropped::ForHost);
            return outcome;
        }
        let targets = only.unwrap_or_else(|| self.targets(ty, rx.ifindex));
        if targets.is_empty() {
            outcome.dropped = Some(Dropped::NoTarget);
            return outcome;
        }
        let new_dst = (ty == NdType::RouterAdvertisement).then_some(ALL_NODES);
        let final_dst = new_dst.unwrap_or(dst);
        for target in targets {
            let Some(&mac) = self.macs.get(&target) else {
                outcome.no_mac.push(target);
                continue;
            };
            let dst_mac = multicast_mac(&final_dst)
                .or_else(|| self.neighbor_mac(target, &final_dst))
                .unwrap_or(ALL_NODES_MAC);
            let mut packet = Vec::with_capacity(rx.packet.len());
            nd.rewrite(
                &Rewrite {
                    mac,
                    destination: new_dst,
                },
                &mut packet,
            );
            outcome.sends.push(Outgoing {
                ifindex: target,
                dst_mac,
                packet,
            });
        }
        outcome
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::packet::RA_FLAG_PROXY;

    const UP: u32 = 2;
    const DOWN: u32 = 3;
    const DOWN2: u32 = 4;
    const UP_MAC: [u8; 6] = [2, 0, 0, 0, 0xaa, 1];
    const DOWN_MAC: [u8; 6] = [2, 0, 0, 0, 0xbb, 1];
    const DOWN2_MAC: [u8; 6] = [2, 0, 0, 0, 0xcc, 1];
    const GUEST_MAC: [u8; 6] = [2, 0, 0, 0, 0, 2];
    const ROUTER_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
    /// The host's own addresses on the uplink: 2001:db8::/64 and fd00::/64
    /// are on-link there.
    const UP_ADDR: &str = "2001:db8::ff";
    const UP_ULA: &str = "fd00::ff";
    const GUEST: &str = "2001:db8::5";
    const ROUTER: &str = "2001:db8::1";

    fn a(s: &str) -> Ipv6Addr {
        s.parse().expect("address")
    }

    /// Builds an ND packet with a valid checksum.
    fn nd(ty: u8, src: &str, dst: &str, body: &[u8]) -> Vec<u8> {
        let (src, dst) = (a(src), a(dst));
        let mut icmp = vec![ty, 0, 0, 0];
        icmp.extend_from_slice(body);
        let sum = icmpv6_checksum(&src, &dst, &icmp);
        icmp[2..4].copy_from_slice(&sum.to_be_bytes());
        let mut p = vec![0x60, 0, 0, 0];
        p.extend_from_slice(&(icmp.len() as u16).to_be_bytes());
        p.extend_from_slice(&[58, 255]);
        p.extend_from_slice(&src.octets());
        p.extend_from_slice(&dst.octets());
        p.extend_from_slice(&icmp);
        p
    }

    fn slla(mac: [u8; 6]) -> Vec<u8> {
        let mut o = vec![1, 1];
        o.extend_from_slice(&mac);
        o
    }

    fn rs(src: &str) -> Vec<u8> {
        let mut body = vec![0; 4];
        body.extend(slla(GUEST_MAC));
        nd(133, src, "ff02::2", &body)
    }

    fn ra(dst: &str) -> Vec<u8> {
        let mut body = vec![64, 0, 0, 30, 0, 0, 0, 0, 0, 0, 0, 0];
        body.extend(slla(ROUTER_MAC));
        nd(134, "fe80::1", dst, &body)
    }

    /// An RA with one Prefix Information option.
    fn ra_with_prefix(prefix: &str, len: u8, flags: u8, valid: u32) -> Vec<u8> {
        let mut body = vec![64, 0, 0, 30, 0, 0, 0, 0, 0, 0, 0, 0];
        body.extend_from_slice(&[3, 4, len, flags]);
        body.extend_from_slice(&valid.to_be_bytes());
        body.extend_from_slice(&valid.to_be_bytes());
        body.extend_from_slice(&[0; 4]);
        body.extend_from_slice(&a(prefix).octets());
        nd(134, "fe80::1", "ff02::1", &body)
    }

    fn ns(src: &str, dst: &str, target: &str, mac: Option<[u8; 6]>) -> Vec<u8> {
        let mut body = vec![0; 4];
        body.extend_from_slice(&a(target).octets());
        if let Some(mac) = mac {
            body.extend(slla(mac));
        }
        nd(135, src, dst, &body)
    }

    fn dad(target: &str) -> Vec<u8> {
        let dst = solicited_node(&a(target)).to_string();
        ns("::", &dst, target, None)
    }

    fn na(src: &str, dst: &str, target: &str, mac: [u8; 6]) -> Vec<u8> {
        let mut body = vec![0x60, 0, 0, 0];
        body.extend_from_slice(&a(target).octets());
        body.extend_from_slice(&[2, 1]);
        body.extend_from_slice(&mac);
        nd(136, src, dst, &body)
    }

    /// An unsolicited NA from a guest for `target`, as the review's forger
    /// sent it.
    fn forged_na(target: &str) -> Vec<u8> {
        na("fe80::1:2", "ff02::1", target, GUEST_MAC)
    }

    fn proxy() -> Proxy {
        let mut p = Proxy::new();
        p.start(UP, DOWN).unwrap();
        p.set_link_mac(UP, Some(UP_MAC));
        p.set_link_mac(DOWN, Some(DOWN_MAC));
        p.set_link_mac(DOWN2, Some(DOWN2_MAC));
        p.add_local_address(UP, a(UP_ADDR), 64);
        p.add_local_address(UP, a(UP_ULA), 64);
        p.add_local_address(UP, a("fe80::aa:1"), 64);
        p
    }

    fn rx(ifindex: u32, packet: &[u8]) -> Received<'_> {
        Received {
            ifindex,
            pkttype: PACKET_MULTICAST,
            src_mac: Some(if ifindex == UP { ROUTER_MAC } else { GUEST_MAC }),
            vlan_id: None,
            checksum_ready: true,
            packet,
        }
    }

    fn now() -> Instant {
        Instant::now()
    }

    fn sent_to(o: &Outcome) -> Vec<u32> {
        o.sends.iter().map(|s| s.ifindex).collect()
    }

    /// Has `downlink` claim `addr` with a DAD probe at `t` and confirms it
    /// after the wait; returns the time it was confirmed.
    fn claim(p: &mut Proxy, downlink: u32, addr: &str, t: Instant) -> Instant {
        let o = p.handle(&rx(downlink, &dad(addr)), t);
        assert_eq!(o.dropped, None, "DAD probe for {addr}: {o:?}");
        let later = t + DAD_WAIT;
        assert!(
            p.tick(later).contains(&Guest {
                ifindex: downlink,
                addr: a(addr)
            }),
            "{addr} not confirmed"
        );
        later
    }

    fn guest(ifindex: u32, addr: &str) -> Guest {
        Guest {
            ifindex,
            addr: a(addr),
        }
    }

    // --- Relaying.

    #[test]
    fn rs_from_a_guest_goes_to_the_uplink_with_the_uplink_mac() {
        let mut p = proxy();
        let pkt = rs("fe80::2");
        let o = p.handle(&rx(DOWN, &pkt), now());
        assert_eq!(sent_to(&o), vec![UP]);
        let out = &o.sends[0];
        assert_eq!(out.dst_mac, [0x33, 0x33, 0, 0, 0, 2]);
        assert_eq!(out.packet[50..56], UP_MAC);
    }

    #[test]
    fn rs_from_the_uplink_is_not_relayed() {
        let mut p = proxy();
        let pkt = rs("fe80::1");
        let o = p.handle(&rx(UP, &pkt), now());
        assert_eq!(o.dropped, Some(Dropped::NoTarget));
        assert!(o.sends.is_empty());
    }

    #[test]
    fn ra_from_the_uplink_goes_to_all_downlinks_at_all_nodes() {
        let mut p = proxy();
        p.start(UP, DOWN2).unwrap();
        let pkt = ra("fe80::2");
        let o = p.handle(&rx(UP, &pkt), now());
        assert_eq!(sent_to(&o), vec![DOWN, DOWN2]);
        for out in &o.sends {
            assert_eq!(out.dst_mac, [0x33, 0x33, 0, 0, 0, 1]);
            let nd = NdPacket::parse(&out.packet).unwrap();
            assert_eq!(nd.destination(), ALL_NODES);
            assert_eq!(out.packet[45] & RA_FLAG_PROXY, RA_FLAG_PROXY);
            assert_eq!(out.packet[44], 65);
            nd.verify_checksum().unwrap();
        }
        assert_eq!(o.sends[0].packet[58..64], DOWN_MAC);
        assert_eq!(o.sends[1].packet[58..64], DOWN2_MAC);
    }

    #[test]
    fn ra_from_a_guest_is_not_relayed() {
        let mut p = proxy();
        let pkt = ra("ff02::1");
        let o = p.handle(&rx(DOWN, &pkt), now());
        assert_eq!(o.dropped, Some(Dropped::NoTarget));
    }

    #[test]
    fn ns_from_the_uplink_goes_to_the_downlinks() {
        let mut p = proxy();
        p.start(UP, DOWN2).unwrap();
        let pkt = ns(ROUTER, "ff02::1:ff00:5", GUEST, Some(ROUTER_MAC));
        let o = p.handle(&rx(UP, &pkt), now());
        assert_eq!(sent_to(&o), vec![DOWN, DOWN2]);
        assert_eq!(o.sends[0].dst_mac, [0x33, 0x33, 0xff, 0, 0, 5]);
        assert!(o.learned.is_none(), "nothing is learned on the uplink");
    }

    #[test]
    fn ns_from_a_guest_goes_to_the_uplink_and_the_other_downlinks() {
        let mut p = proxy();
        p.start(UP, DOWN2).unwrap();
        p.start(9, 10).unwrap();
        let t = claim(&mut p, DOWN, GUEST, now());
        let pkt = ns(GUEST, "ff02::1:ff00:1", ROUTER, Some(GUEST_MAC));
        let o = p.handle(&rx(DOWN, &pkt), t);
        assert_eq!(sent_to(&o), vec![UP, DOWN2]);
    }

    #[test]
    fn ns_for_the_router_from_a_guests_link_local_address_is_relayed() {
        let mut p = proxy();
        let pkt = ns("fe80::2", "ff02::1:ff00:1", ROUTER, Some(GUEST_MAC));
        let o = p.handle(&rx(DOWN, &pkt), now());
        assert_eq!(sent_to(&o), vec![UP]);
        assert_eq!(o.learned, None);
    }

    #[test]
    fn unicast_na_goes_to_the_mac_learned_from_the_solicitation() {
        let mut p = proxy();
        let t = claim(&mut p, DOWN, GUEST, now());
        // The router asks for the guest; the reply goes back to it.
        let ask = ns(ROUTER, "ff02::1:ff00:5", GUEST, Some(ROUTER_MAC));
        p.handle(&rx(UP, &ask), t);
        let reply = na(GUEST, ROUTER, GUEST, GUEST_MAC);
        let o = p.handle(&rx(DOWN, &reply), t);
        assert_eq!(sent_to(&o), vec![UP]);
        assert_eq!(o.sends[0].dst_mac, ROUTER_MAC);
        assert_eq!(o.sends[0].packet[66..72], UP_MAC, "TLLA is ours");
    }

    #[test]
    fn unicast_to_an_unknown_neighbor_goes_to_the_all_nodes_mac() {
        let mut p = proxy();
        let t = claim(&mut p, DOWN, GUEST, now());
        let pkt = na(GUEST, "2001:db8::77", GUEST, GUEST_MAC);
        let o = p.handle(&rx(DOWN, &pkt), t);
        assert_eq!(o.sends[0].dst_mac, ALL_NODES_MAC);
    }

    #[test]
    fn kernel_neighbors_resolve_unicast_destinations_per_link() {
        let mut p = proxy();
        let t = claim(&mut p, DOWN, GUEST, now());
        let mac = [2, 9, 9, 9, 9, 9];
        p.set_kernel_neighbor(UP, a("2001:db8::77"), Some(mac));
        p.set_kernel_neighbor(DOWN2, a("2001:db8::77"), Some([2, 8, 8, 8, 8, 8]));
        let pkt = na(GUEST, "2001:db8::77", GUEST, GUEST_MAC);
        let o = p.handle(&rx(DOWN, &pkt), t);
        assert_eq!(o.sends[0].dst_mac, mac);
        p.set_kernel_neighbor(UP, a("2001:db8::77"), None);
        let o = p.handle(&rx(DOWN, &pkt), t);
        assert_eq!(o.sends[0].dst_mac, ALL_NODES_MAC);
    }

    // --- Claims: what a guest may use, and when it is reported.

    #[test]
    fn a_guests_dad_probe_is_relayed_and_its_address_reported_after_the_wait() {
        let mut p = proxy();
        let t0 = now();
        let o = p.handle(&rx(DOWN, &dad(GUEST)), t0);
        assert_eq!(sent_to(&o), vec![UP], "DAD probes are relayed");
        assert!(o.probes.is_empty(), "the relayed probe is the probe");
        assert_eq!(o.learned, None, "not before the wait");
        assert_eq!(p.next_deadline(), Some(t0 + DAD_WAIT));
        assert!(p.tick(t0 + DAD_WAIT / 2).is_empty());
        assert_eq!(p.tick(t0 + DAD_WAIT), vec![guest(DOWN, GUEST)]);
        assert_eq!(p.holder(&a(GUEST)), Some(DOWN));
        assert_eq!(p.next_deadline(), None);
    }

    #[test]
    fn a_new_claim_by_na_sends_a_probe_and_holds_the_na_back() {
        let mut p = proxy();
        let o = p.handle(&rx(DOWN, &forged_na(GUEST)), now());
        assert_eq!(o.dropped, Some(Dropped::Tentative));
        assert!(o.sends.is_empty(), "not relayed while tentative");
        assert_eq!(o.probes.len(), 1);
        let probe = &o.probes[0];
        assert_eq!(probe.ifindex, UP);
        assert_eq!(probe.dst_mac, [0x33, 0x33, 0xff, 0, 0, 5]);
        assert_eq!(probe.packet, dad(GUEST), "a DAD probe from ::");
    }

    #[test]
    fn a_repeated_na_during_the_wait_sends_no_second_probe() {
        let mut p = proxy();
        let t0 = now();
        p.handle(&rx(DOWN, &forged_na(GUEST)), t0);
        let o = p.handle(&rx(DOWN, &forged_na(GUEST)), t0);
        assert_eq!(o.dropped, Some(Dropped::Tentative));
        assert!(o.probes.is_empty());
    }

    #[test]
    fn an_ns_from_a_new_guest_address_waits_for_the_probe_then_flows() {
        let mut p = proxy();
        let t0 = now();
        let pkt = ns("fd00::5", "ff02::1:ff00:1", "fd00::1", Some(GUEST_MAC));
        let o = p.handle(&rx(DOWN, &pkt), t0);
        assert_eq!(o.dropped, Some(Dropped::Tentative));
        assert_eq!(p.tick(t0 + DAD_WAIT), vec![guest(DOWN, "fd00::5")]);
        let o = p.handle(&rx(DOWN, &pkt), t0 + DAD_WAIT);
        assert_eq!(sent_to(&o), vec![UP], "the retransmission is relayed");
    }

    #[test]
    fn link_local_guest_addresses_are_relayed_but_not_claimed() {
        let mut p = proxy();
        let o = p.handle(&rx(DOWN, &dad("fe80::5")), now());
        assert_eq!(sent_to(&o), vec![UP]);
        assert_eq!(o.learned, None);
        assert_eq!(p.next_deadline(), None);
    }

    #[test]
    fn a_held_address_is_reported_again_only_after_the_interval() {
        let mut p = proxy();
        let t = claim(&mut p, DOWN, GUEST, now());
        let pkt = na(GUEST, "ff02::1", GUEST, GUEST_MAC);
        let o = p.handle(&rx(DOWN, &pkt), t + Duration::from_secs(1));
        assert_eq!(sent_to(&o), vec![UP]);
        assert_eq!(o.learned, None);
        let o = p.handle(&rx(DOWN, &pkt), t + REPORT_INTERVAL);
        assert_eq!(o.learned, Some(guest(DOWN, GUEST)));
    }

    #[test]
    fn a_restarted_pair_claims_and_reports_its_guests_again() {
        let mut p = proxy();
        let t = claim(&mut p, DOWN, GUEST, now());
        p.stop(UP, DOWN);
        p.start(UP, DOWN).unwrap();
        assert_eq!(p.holder(&a(GUEST)), None);
        claim(&mut p, DOWN, GUEST, t);
    }

    #[test]
    fn na_for_an_off_link_address_is_neither_relayed_nor_reported() {
        let mut p = proxy();
        let t0 = now();
        let o = p.handle(&rx(DOWN, &forged_na("2001:db8:ffff::53")), t0);
        assert_eq!(o.dropped, Some(Dropped::Refused(Refusal::OffLink)));
        assert!(o.sends.is_empty() && o.probes.is_empty());
        assert!(p.tick(t0 + DAD_WAIT).is_empty());
        assert_eq!(p.refusals().get(Refusal::OffLink), 1);
    }

    #[test]
    fn an_on_link_route_of_the_uplink_makes_its_prefix_claimable() {
        let mut p = proxy();
        let t0 = now();
        let addr = "2001:db8:2::5";
        assert_eq!(
            p.handle(&rx(DOWN, &dad(addr)), t0).dropped,
            Some(Dropped::Refused(Refusal::OffLink))
        );
        p.add_on_link_route(UP, a("2001:db8:2::"), 64);
        claim(&mut p, DOWN, addr, t0);
        p.remove_on_link_route(UP, a("2001:db8:2::"), 64);
        assert_eq!(
            p.handle(&rx(DOWN, &forged_na(addr)), t0).dropped,
            Some(Dropped::Refused(Refusal::OffLink))
        );
    }

    #[test]
    fn an_ra_relayed_from_the_uplink_makes_its_on_link_prefix_claimable_for_its_lifetime() {
        let mut p = proxy();
        let t0 = now();
        let addr = "2001:db8:3::5";
        let o = p.handle(&rx(UP, &ra_with_prefix("2001:db8:3::", 64, 0xc0, 10)), t0);
        assert_eq!(sent_to(&o), vec![DOWN]);
        claim(&mut p, DOWN, addr, t0);
        let later = t0 + Duration::from_secs(10);
        assert_eq!(
            p.handle(&rx(DOWN, &forged_na("2001:db8:3::6")), later)
                .dropped,
            Some(Dropped::Refused(Refusal::OffLink)),
            "expired"
        );
    }

    #[test]
    fn only_on_link_ra_prefixes_from_an_uplink_count() {
        let mut p = proxy();
        let t0 = now();
        // Autonomous but not on-link; and an on-link one from a guest.
        p.handle(&rx(UP, &ra_with_prefix("2001:db8:3::", 64, 0x40, 600)), t0);
        p.handle(
            &rx(DOWN, &ra_with_prefix("2001:db8:4::", 64, 0xc0, 600)),
            t0,
        );
        for off in ["2001:db8:3::5", "2001:db8:4::5"] {
            assert_eq!(
                p.handle(&rx(DOWN, &forged_na(off)), t0).dropped,
                Some(Dropped::Refused(Refusal::OffLink)),
                "{off}"
            );
        }
    }

    #[test]
    fn an_ra_with_a_zero_lifetime_withdraws_its_prefix() {
        let mut p = proxy();
        let t0 = now();
        p.handle(&rx(UP, &ra_with_prefix("2001:db8:3::", 64, 0xc0, 600)), t0);
        p.handle(&rx(UP, &ra_with_prefix("2001:db8:3::", 64, 0xc0, 0)), t0);
        assert_eq!(
            p.handle(&rx(DOWN, &forged_na("2001:db8:3::5")), t0).dropped,
            Some(Dropped::Refused(Refusal::OffLink))
        );
    }

    #[test]
    fn ra_prefixes_per_uplink_are_bounded() {
        let mut p = proxy();
        let t0 = now();
        for i in 0..(MAX_RA_PREFIXES as u16 + 5) {
            let prefix = format!("2001:db8:100:{i:x}::");
            p.handle(&rx(UP, &ra_with_prefix(&prefix, 64, 0xc0, 600)), t0);
        }
        assert_eq!(p.ra_prefixes[&UP].len(), MAX_RA_PREFIXES);
    }

    #[test]
    fn a_short_on_link_prefix_claims_nothing() {
        let mut p = proxy();
        p.add_on_link_route(UP, a("2000::"), 3);
        p.add_on_link_route(UP, a("2001:db8::"), MIN_ON_LINK_PREFIX - 1);
        p.handle(&rx(UP, &ra_with_prefix("2606::", 16, 0xc0, 600)), now());
        p.add_local_address(UP, a("2001:db9::ff"), 16);
        for off in ["2001:db8:ffff::53", "2001:db9:1::53", "2606:4700::1111"] {
            assert_eq!(
                p.handle(&rx(DOWN, &forged_na(off)), now()).dropped,
                Some(Dropped::Refused(Refusal::OffLink)),
                "{off}"
            );
        }
    }

    #[test]
    fn a_prefix_is_on_link_only_on_the_downlinks_own_uplink() {
        let mut p = proxy();
        p.start(9, DOWN2).unwrap();
        p.set_link_mac(9, Some([2, 0, 0, 0, 0x99, 1]));
        let o = p.handle(&rx(DOWN2, &forged_na(GUEST)), now());
        assert_eq!(o.dropped, Some(Dropped::Refused(Refusal::OffLink)));
    }

    #[test]
    fn na_for_the_hosts_own_address_is_refused() {
        let mut p = proxy();
        p.add_local_address(DOWN2, a("2001:db8::d2"), 128);
        for host in [UP_ADDR, "2001:db8::d2"] {
            let o = p.handle(&rx(DOWN, &forged_na(host)), now());
            assert_eq!(
                o.dropped,
                Some(Dropped::Refused(Refusal::HostAddress)),
                "{host}"
            );
            assert!(o.sends.is_empty());
        }
    }

    #[test]
    fn na_for_a_kernel_neighbor_of_the_uplink_is_refused() {
        let mut p = proxy();
        p.set_kernel_neighbor(UP, a(ROUTER), Some(ROUTER_MAC));
        let o = p.handle(&rx(DOWN, &forged_na(ROUTER)), now());
        assert_eq!(o.dropped, Some(Dropped::Refused(Refusal::UplinkNeighbor)));
        assert!(o.sends.is_empty() && o.probes.is_empty());
    }

    #[test]
    fn na_for_a_sender_seen_on_the_uplink_is_refused() {
        let mut p = proxy();
        let ask = ns(ROUTER, "ff02::1:ff00:5", GUEST, Some(ROUTER_MAC));
        p.handle(&rx(UP, &ask), now());
        let o = p.handle(&rx(DOWN, &forged_na(ROUTER)), now());
        assert_eq!(o.dropped, Some(Dropped::Refused(Refusal::UplinkNeighbor)));
    }

    #[test]
    fn an_answer_to_the_probe_on_the_uplink_revokes_the_tentative_claim() {
        let mut p = proxy();
        let t0 = now();
        assert_eq!(p.handle(&rx(DOWN, &forged_na(ROUTER)), t0).probes.len(), 1);
        // The router defends its address, to all nodes.
        let defence = na("fe80::1", "ff02::1", ROUTER, ROUTER_MAC);
        let o = p.handle(&rx(UP, &defence), t0);
        assert_eq!(sent_to(&o), vec![DOWN], "the defence reaches the guest");
        assert!(p.tick(t0 + DAD_WAIT).is_empty(), "never confirmed");
        assert_eq!(p.neighbor_mac(UP, &a(ROUTER)), Some(ROUTER_MAC));
        let o = p.handle(&rx(DOWN, &forged_na(ROUTER)), t0 + DAD_WAIT);
        assert_eq!(o.dropped, Some(Dropped::Refused(Refusal::UplinkNeighbor)));
        assert_eq!(p.refusals().get(Refusal::UplinkNeighbor), 2);
    }

    #[test]
    fn a_lan_neighbor_appearing_during_the_wait_stops_the_confirmation() {
        let mut p = proxy();
        let t0 = now();
        p.handle(&rx(DOWN, &dad(GUEST)), t0);
        p.set_kernel_neighbor(UP, a(GUEST), Some(ROUTER_MAC));
        assert!(p.tick(t0 + DAD_WAIT).is_empty());
        assert_eq!(p.holder(&a(GUEST)), None);
    }

    #[test]
    fn the_first_claimer_keeps_its_address_against_a_later_lan_announcement() {
        let mut p = proxy();
        let t = claim(&mut p, DOWN, GUEST, now());
        let rival = na(GUEST, "ff02::1", GUEST, ROUTER_MAC);
        p.handle(&rx(UP, &rival), t);
        assert_eq!(p.holder(&a(GUEST)), Some(DOWN));
        let o = p.handle(&rx(DOWN, &forged_na(GUEST)), t);
        assert_eq!(sent_to(&o), vec![UP]);
    }

    #[test]
    fn na_for_another_guests_address_is_refused_and_not_relayed_to_it() {
        let mut p = proxy();
        p.start(UP, DOWN2).unwrap();
        let t = claim(&mut p, DOWN2, GUEST, now());
        let o = p.handle(&rx(DOWN, &forged_na(GUEST)), t);
        assert_eq!(o.dropped, Some(Dropped::Refused(Refusal::OtherGuest)));
        assert!(o.sends.is_empty());
        assert!(p.tick(t + DAD_WAIT).is_empty());
        assert_eq!(p.holder(&a(GUEST)), Some(DOWN2));
    }

    #[test]
    fn a_tentative_claim_of_another_guest_also_wins() {
        let mut p = proxy();
        p.start(UP, DOWN2).unwrap();
        let t0 = now();
        p.handle(&rx(DOWN2, &dad(GUEST)), t0);
        let o = p.handle(&rx(DOWN, &forged_na(GUEST)), t0);
        assert_eq!(o.dropped, Some(Dropped::Refused(Refusal::OtherGuest)));
        assert_eq!(p.tick(t0 + DAD_WAIT), vec![guest(DOWN2, GUEST)]);
    }

    #[test]
    fn a_dad_probe_for_another_guests_address_goes_only_to_that_guest() {
        let mut p = proxy();
        p.start(UP, DOWN2).unwrap();
        let t = claim(&mut p, DOWN2, GUEST, now());
        let o = p.handle(&rx(DOWN, &dad(GUEST)), t);
        assert_eq!(sent_to(&o), vec![DOWN2], "so the holder defends it");
        assert_eq!(o.learned, None);
    }

    #[test]
    fn a_dad_probe_for_a_lan_neighbors_address_goes_only_to_the_uplink() {
        let mut p = proxy();
        p.start(UP, DOWN2).unwrap();
        p.set_kernel_neighbor(UP, a(ROUTER), Some(ROUTER_MAC));
        let o = p.handle(&rx(DOWN, &dad(ROUTER)), now());
        assert_eq!(sent_to(&o), vec![UP]);
        assert_eq!(p.next_deadline(), None, "no claim");
    }

    #[test]
    fn a_dad_probe_for_an_unclaimable_address_is_dropped() {
        let mut p = proxy();
        for target in ["2001:db8:ffff::53", UP_ADDR] {
            let o = p.handle(&rx(DOWN, &dad(target)), now());
            assert!(o.sends.is_empty(), "{target}: {o:?}");
        }
    }

    #[test]
    fn ns_from_an_unclaimable_global_source_is_dropped() {
        let mut p = proxy();
        for src in ["2001:db8:ffff::53", UP_ADDR] {
            let pkt = ns(src, "ff02::1:ff00:1", ROUTER, Some(GUEST_MAC));
            let o = p.handle(&rx(DOWN, &pkt), now());
            assert!(
                matches!(o.dropped, Some(Dropped::Refused(_))),
                "{src}: {o:?}"
            );
            assert!(o.sends.is_empty());
        }
    }

    #[test]
    fn rs_from_an_unclaimable_global_source_is_dropped() {
        let mut p = proxy();
        let o = p.handle(&rx(DOWN, &rs("2001:db8:ffff::53")), now());
        assert_eq!(o.dropped, Some(Dropped::Refused(Refusal::OffLink)));
    }

    #[test]
    fn na_for_the_routers_link_local_address_is_refused() {
        let mut p = proxy();
        // The router's RA teaches its link-local address.
        p.handle(&rx(UP, &ra("ff02::1")), now());
        let o = p.handle(&rx(DOWN, &forged_na("fe80::1")), now());
        assert_eq!(o.dropped, Some(Dropped::Refused(Refusal::UplinkNeighbor)));
        assert!(o.sends.is_empty());
    }

    #[test]
    fn na_for_the_hosts_link_local_addresses_is_refused() {
        let mut p = proxy();
        p.add_local_address(DOWN, a("fe80::bb:1"), 64);
        for host in ["fe80::aa:1", "fe80::bb:1"] {
            let o = p.handle(&rx(DOWN, &forged_na(host)), now());
            assert_eq!(
                o.dropped,
                Some(Dropped::Refused(Refusal::HostAddress)),
                "{host}"
            );
        }
    }

    #[test]
    fn claims_of_multicast_or_loopback_addresses_are_refused() {
        let mut p = proxy();
        for target in ["ff02::1", "::1", "::ffff:192.0.2.1"] {
            let o = p.handle(&rx(DOWN, &forged_na(target)), now());
            assert_eq!(
                o.dropped,
                Some(Dropped::Refused(Refusal::NotUnicast)),
                "{target}"
            );
        }
    }

    #[test]
    fn a_claim_outside_a_prefix_the_uplink_lost_is_refused() {
        let mut p = proxy();
        let t = claim(&mut p, DOWN, GUEST, now());
        p.remove_local_address(UP, a(UP_ADDR));
        let o = p.handle(&rx(DOWN, &forged_na(GUEST)), t);
        assert_eq!(o.dropped, Some(Dropped::Refused(Refusal::OffLink)));
    }

    #[test]
    fn new_claims_are_rate_limited_per_downlink() {
        let mut p = proxy();
        let t0 = now();
        let mut probes = 0;
        for i in 0..100u32 {
            let target = format!("2001:db8::1:{i:x}");
            probes += p.handle(&rx(DOWN, &forged_na(&target)), t0).probes.len();
        }
        assert_eq!(probes, CLAIM_BURST as usize);
        assert_eq!(
            p.refusals().get(Refusal::RateLimited),
            100 - u64::from(CLAIM_BURST)
        );
        assert_eq!(p.tick(t0 + DAD_WAIT).len(), CLAIM_BURST as usize);
    }

    #[test]
    fn claims_per_downlink_are_bounded_however_long_the_flood() {
        let mut p = proxy();
        let mut t = now();
        let mut reported = 0;
        for i in 0..(MAX_CLAIMS_PER_DOWNLINK as u32 * 3) {
            t += CLAIM_REFILL;
            let target = format!("2001:db8::1:{i:x}");
            p.handle(&rx(DOWN, &forged_na(&target)), t);
            reported += p.tick(t + DAD_WAIT).len();
        }
        assert_eq!(reported, MAX_CLAIMS_PER_DOWNLINK);
        assert!(p.refusals().get(Refusal::Full) > 0);
    }

    #[test]
    fn a_stopped_downlink_releases_its_claims_to_another_guest() {
        let mut p = proxy();
        p.start(UP, DOWN2).unwrap();
        let t = claim(&mut p, DOWN, GUEST, now());
        p.stop(UP, DOWN);
        claim(&mut p, DOWN2, GUEST, t);
    }

    #[test]
    fn a_vanished_downlink_releases_its_claims() {
        let mut p = proxy();
        claim(&mut p, DOWN, GUEST, now());
        p.forget_link(DOWN);
        assert_eq!(p.holder(&a(GUEST)), None);
    }

    #[test]
    fn the_dad_probe_is_a_valid_neighbor_solicitation_from_the_unspecified_address() {
        let target = a("2001:db8::1:2:3");
        let bytes = dad_probe(&target);
        let nd = NdPacket::parse(&bytes).expect("parses");
        nd.verify_checksum().expect("checksum");
        assert_eq!(nd.nd_type(), NdType::NeighborSolicitation);
        assert_eq!(nd.source(), Ipv6Addr::UNSPECIFIED);
        assert_eq!(nd.destination(), a("ff02::1:ff02:3"));
        assert_eq!(nd.target(), Some(target));
        assert_eq!(nd.options().count(), 0);
    }

    // --- Filtering by link-layer type and link.

    #[test]
    fn our_own_output_is_ignored() {
        let mut p = proxy();
        let pkt = rs("fe80::2");
        let mut r = rx(DOWN, &pkt);
        r.pkttype = libc::PACKET_OUTGOING;
        assert_eq!(p.handle(&r, now()).dropped, Some(Dropped::OwnOutput));
    }

    #[test]
    fn frames_for_other_hosts_are_ignored() {
        let mut p = proxy();
        let pkt = na(GUEST, ROUTER, GUEST, GUEST_MAC);
        let mut r = rx(DOWN, &pkt);
        r.pkttype = libc::PACKET_OTHERHOST;
        let o = p.handle(&r, now());
        assert_eq!(o.dropped, Some(Dropped::NotForThisHost));
        assert!(o.learned.is_none());
    }

    #[test]
    fn vlan_tagged_frames_are_ignored() {
        let mut p = proxy();
        let pkt = ra("ff02::1");
        let mut r = rx(UP, &pkt);
        r.vlan_id = Some(100);
        assert_eq!(p.handle(&r, now()).dropped, Some(Dropped::Vlan(100)));
    }

    #[test]
    fn priority_tagged_frames_are_relayed() {
        let mut p = proxy();
        let pkt = ra("ff02::1");
        let mut r = rx(UP, &pkt);
        r.vlan_id = Some(0);
        assert_eq!(sent_to(&p.handle(&r, now())), vec![DOWN]);
    }

    #[test]
    fn packets_on_other_links_are_ignored() {
        let mut p = proxy();
        let pkt = ra("ff02::1");
        assert_eq!(
            p.handle(&rx(7, &pkt), now()).dropped,
            Some(Dropped::NotProxied)
        );
    }

    #[test]
    fn a_stopped_pair_relays_nothing() {
        let mut p = proxy();
        assert!(p.stop(UP, DOWN));
        assert!(!p.stop(UP, DOWN));
        let pkt = ra("ff02::1");
        assert_eq!(
            p.handle(&rx(UP, &pkt), now()).dropped,
            Some(Dropped::NotProxied)
        );
    }

    #[test]
    fn invalid_packets_are_dropped_with_the_reason() {
        let mut p = proxy();
        let mut pkt = ra("ff02::1");
        pkt[7] = 64;
        let o = p.handle(&rx(UP, &pkt), now());
        assert!(matches!(
            o.dropped,
            Some(Dropped::Invalid(NdError::HopLimit { .. }))
        ));
    }

    #[test]
    fn a_bad_checksum_is_dropped_unless_hardware_still_owes_it() {
        let mut p = proxy();
        let mut pkt = ra("ff02::1");
        pkt[42] ^= 0xff;
        let o = p.handle(&rx(UP, &pkt), now());
        assert!(matches!(
            o.dropped,
            Some(Dropped::Invalid(NdError::BadChecksum { .. }))
        ));
        let mut r = rx(UP, &pkt);
        r.checksum_ready = false;
        let o = p.handle(&r, now());
        assert_eq!(sent_to(&o), vec![DOWN]);
        NdPacket::parse(&o.sends[0].packet)
            .unwrap()
            .verify_checksum()
            .unwrap();
    }

    #[test]
    fn packets_for_the_hosts_link_local_address_stay_on_the_host() {
        let mut p = proxy();
        p.add_local_address(DOWN, a("fe80::bb:1"), 64);
        let t = claim(&mut p, DOWN, GUEST, now());
        let pkt = na(GUEST, "fe80::bb:1", GUEST, GUEST_MAC);
        let o = p.handle(&rx(DOWN, &pkt), t + REPORT_INTERVAL);
        assert_eq!(o.dropped, Some(Dropped::ForHost));
        assert_eq!(o.learned, Some(guest(DOWN, GUEST)), "still reported");
    }

    #[test]
    fn a_link_local_address_of_another_link_is_not_the_hosts() {
        let mut p = proxy();
        let t = claim(&mut p, DOWN, GUEST, now());
        let pkt = na(GUEST, "fe80::aa:1", GUEST, GUEST_MAC);
        assert_eq!(sent_to(&p.handle(&rx(DOWN, &pkt), t)), vec![UP]);
    }

    #[test]
    fn solicitations_for_a_host_address_stay_on_the_host() {
        let mut p = proxy();
        p.add_local_address(UP, a("2001:db8::aa"), 64);
        let pkt = ns(ROUTER, "ff02::1:ff00:aa", "2001:db8::aa", Some(ROUTER_MAC));
        assert_eq!(
            p.handle(&rx(UP, &pkt), now()).dropped,
            Some(Dropped::ForHost)
        );
        p.remove_local_address(UP, a("2001:db8::aa"));
        assert_eq!(sent_to(&p.handle(&rx(UP, &pkt), now())), vec![DOWN]);
    }

    #[test]
    fn a_target_without_a_known_mac_is_skipped() {
        let mut p = proxy();
        p.set_link_mac(UP, None);
        let pkt = rs("fe80::2");
        let o = p.handle(&rx(DOWN, &pkt), now());
        assert!(o.sends.is_empty());
        assert_eq!(o.no_mac, vec![UP]);
    }

    #[test]
    fn a_forgotten_link_loses_its_neighbors() {
        let mut p = proxy();
        p.set_kernel_neighbor(UP, a("2001:db8::77"), Some([2, 9, 9, 9, 9, 9]));
        p.forget_link(UP);
        assert_eq!(p.neighbor_mac(UP, &a("2001:db8::77")), None);
    }

    #[test]
    fn learned_neighbors_are_bounded() {
        let mut p = proxy();
        for i in 0..(MAX_ENTRIES as u32 + 10) {
            let addr =
                Ipv6Addr::from(0x2001_0db8_0000_0000_0000_0000_0000_0000u128 + u128::from(i));
            p.learn_neighbor(DOWN, addr, GUEST_MAC);
        }
        assert!(p.neighbors.len() <= MAX_ENTRIES);
        assert_eq!(p.learned_neighbors, p.neighbors.len());
    }

    #[test]
    fn a_guest_filling_the_neighbor_cache_does_not_flush_the_uplinks() {
        let mut p = proxy();
        p.learn_neighbor(UP, a(ROUTER), ROUTER_MAC);
        for i in 0..(MAX_ENTRIES as u32 + 10) {
            let addr = Ipv6Addr::from(0xfe80_u128 << 112 | u128::from(i));
            p.learn_neighbor(DOWN, addr, GUEST_MAC);
        }
        assert_eq!(p.neighbor_mac(UP, &a(ROUTER)), Some(ROUTER_MAC));
        assert_eq!(p.learned_neighbors, p.neighbors.len());
    }

    #[test]
    fn pairs_must_name_two_different_links() {
        let mut p = Proxy::new();
        assert_eq!(p.start(0, 3), Err(PairError::ZeroIndex));
        assert_eq!(p.start(3, 3), Err(PairError::SameLink(3)));
        assert_eq!(p.start(2, 3), Ok(true));
        assert_eq!(p.start(2, 3), Ok(false), "idempotent");
        assert_eq!(p.links(), BTreeSet::from([2, 3]));
    }
}
