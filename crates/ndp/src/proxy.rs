//! The forwarding engine: given the proxied link pairs, what the host
//! knows about its links (MACs, its own addresses, neighbours) and one
//! received packet, decide where copies go, how each is rewritten, and
//! which guest address was seen. No sockets and no clock: the caller feeds
//! events and the current time, so every rule is a plain unit test.
//!
//! Rules (RFC 4389, as patchpanel's original proxy applies them):
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
//! * guest addresses are learned on downlinks from NA targets, NS sources
//!   and, for DAD probes (source `::`), NS targets; only global and unique
//!   local ones are reported, at most once per [`REPORT_INTERVAL`] each;
//! * the destination MAC of a copy is the multicast MAC for a multicast
//!   destination, else the neighbour's MAC on the outgoing link (from the
//!   kernel's table or learned from packets), else the all-nodes MAC,
//!   which every IPv6 node accepts.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::Ipv6Addr;
use std::time::{Duration, Instant};

use crate::packet::{
    is_global_or_ula, multicast_mac, NdError, NdPacket, NdType, Rewrite, ALL_NODES,
};

/// How often the same guest address on the same downlink is reported
/// again. The manager de-duplicates; repeating now and then lets it
/// recover from a failed route install.
pub const REPORT_INTERVAL: Duration = Duration::from_secs(30);
/// Bound on remembered reports and on neighbours learned from packets.
pub const MAX_ENTRIES: usize = 4096;
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
}

/// What to do with one received packet.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Outcome {
    /// The message type, when the packet parsed.
    pub nd_type: Option<NdType>,
    /// Copies to send.
    pub sends: Vec<Outgoing>,
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

/// The engine's state. See the module documentation.
#[derive(Debug, Default)]
pub struct Proxy {
    pairs: BTreeSet<(u32, u32)>,
    macs: HashMap<u32, [u8; 6]>,
    local: HashMap<u32, HashSet<Ipv6Addr>>,
    neighbors: HashMap<(u32, Ipv6Addr), NeighborEntry>,
    learned_neighbors: usize,
    reported: HashMap<Guest, Instant>,
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

    /// Stops proxying the pair; `false` if it was not proxied.
    pub fn stop(&mut self, uplink: u32, downlink: u32) -> bool {
        let removed = self.pairs.remove(&(uplink, downlink));
        if removed && !self.uses(downlink) {
            self.reported.retain(|g, _| g.ifindex != downlink);
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
    /// stay until stopped).
    pub fn forget_link(&mut self, ifindex: u32) {
        self.macs.remove(&ifindex);
        self.local.remove(&ifindex);
        self.neighbors.retain(|&(i, _), _| i != ifindex);
        self.learned_neighbors = self.neighbors.values().filter(|e| !e.from_kernel).count();
        self.reported.retain(|g, _| g.ifindex != ifindex);
    }

    /// Records one of the host's own addresses.
    pub fn add_local_address(&mut self, ifindex: u32, addr: Ipv6Addr) {
        self.local.entry(ifindex).or_default().insert(addr);
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

    fn learn_neighbor(&mut self, ifindex: u32, addr: Ipv6Addr, mac: [u8; 6]) {
        let key = (ifindex, addr);
        match self.neighbors.get_mut(&key) {
            Some(e) => e.mac = mac,
            None => {
                if self.learned_neighbors >= MAX_ENTRIES {
                    self.neighbors.retain(|_, e| e.from_kernel);
                    self.learned_neighbors = 0;
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

    /// Whether `addr` is one of the host's own addresses as seen from
    /// `ifindex` (link-local ones only on that link).
    fn is_local(&self, ifindex: u32, addr: &Ipv6Addr) -> bool {
        if addr.is_multicast() || addr.is_unspecified() {
            return false;
        }
        if is_link_local(addr) {
            return self.local.get(&ifindex).is_some_and(|s| s.contains(addr));
        }
        self.local.values().any(|s| s.contains(addr))
    }

    fn is_downlink(&self, ifindex: u32) -> bool {
        self.pairs.iter().any(|&(_, down)| down == ifindex)
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

    /// The guest address a packet from a downlink reveals, if any.
    fn guest_address(nd: &NdPacket<'_>) -> Option<Ipv6Addr> {
        let addr = match nd.nd_type() {
            NdType::NeighborAdvertisement => nd.target()?,
            NdType::NeighborSolicitation => {
                let src = nd.source();
                if src.is_unspecified() {
                    nd.target()?
                } else {
                    src
                }
            }
            NdType::RouterSolicitation | NdType::RouterAdvertisement => return None,
        };
        is_global_or_ula(&addr).then_some(addr)
    }

    fn report(&mut self, guest: Guest, now: Instant) -> bool {
        if let Some(last) = self.reported.get(&guest) {
            if now.saturating_duration_since(*last) < REPORT_INTERVAL {
                return false;
            }
        }
        if self.reported.len() >= MAX_ENTRIES {
            self.reported
                .retain(|_, t| now.saturating_duration_since(*t) < REPORT_INTERVAL);
            if self.reported.len() >= MAX_ENTRIES {
                self.reported.clear();
            }
        }
        self.reported.insert(guest, now);
        true
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

        let src = nd.source();
        if let Some(mac) = rx.src_mac {
            if !src.is_unspecified() && !src.is_multicast() {
                self.learn_neighbor(rx.ifindex, src, mac);
            }
        }
        let mut outcome = Outcome {
            nd_type: Some(ty),
            ..Outcome::default()
        };
        if self.is_downlink(rx.ifindex) {
            if let Some(addr) = Self::guest_address(&nd) {
                let guest = Guest {
                    ifindex: rx.ifindex,
                    addr,
                };
                if self.report(guest, now) {
                    outcome.learned = Some(guest);
                }
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
        let targets = self.targets(ty, rx.ifindex);
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
    use super::*;
    use crate::packet::{icmpv6_checksum, RA_FLAG_PROXY};

    const UP: u32 = 2;
    const DOWN: u32 = 3;
    const DOWN2: u32 = 4;
    const UP_MAC: [u8; 6] = [2, 0, 0, 0, 0xaa, 1];
    const DOWN_MAC: [u8; 6] = [2, 0, 0, 0, 0xbb, 1];
    const DOWN2_MAC: [u8; 6] = [2, 0, 0, 0, 0xcc, 1];
    const GUEST_MAC: [u8; 6] = [2, 0, 0, 0, 0, 2];
    const ROUTER_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];

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

    fn ns(src: &str, dst: &str, target: &str, mac: Option<[u8; 6]>) -> Vec<u8> {
        let mut body = vec![0; 4];
        body.extend_from_slice(&a(target).octets());
        if let Some(mac) = mac {
            body.extend(slla(mac));
        }
        nd(135, src, dst, &body)
    }

    fn na(src: &str, dst: &str, target: &str, mac: [u8; 6]) -> Vec<u8> {
        let mut body = vec![0x60, 0, 0, 0];
        body.extend_from_slice(&a(target).octets());
        body.extend_from_slice(&[2, 1]);
        body.extend_from_slice(&mac);
        nd(136, src, dst, &body)
    }

    fn proxy() -> Proxy {
        let mut p = Proxy::new();
        p.start(UP, DOWN).unwrap();
        p.set_link_mac(UP, Some(UP_MAC));
        p.set_link_mac(DOWN, Some(DOWN_MAC));
        p.set_link_mac(DOWN2, Some(DOWN2_MAC));
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
        let pkt = ns(
            "2001:db8::1",
            "ff02::1:ff00:5",
            "2001:db8::5",
            Some(ROUTER_MAC),
        );
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
        let pkt = ns(
            "2001:db8::5",
            "ff02::1:ff00:1",
            "2001:db8::1",
            Some(GUEST_MAC),
        );
        let o = p.handle(&rx(DOWN, &pkt), now());
        assert_eq!(sent_to(&o), vec![UP, DOWN2]);
    }

    #[test]
    fn unicast_na_goes_to_the_mac_learned_from_the_solicitation() {
        let mut p = proxy();
        // The router asks for the guest; the reply goes back to it.
        let ask = ns(
            "2001:db8::1",
            "ff02::1:ff00:5",
            "2001:db8::5",
            Some(ROUTER_MAC),
        );
        p.handle(&rx(UP, &ask), now());
        let reply = na("2001:db8::5", "2001:db8::1", "2001:db8::5", GUEST_MAC);
        let o = p.handle(&rx(DOWN, &reply), now());
        assert_eq!(sent_to(&o), vec![UP]);
        assert_eq!(o.sends[0].dst_mac, ROUTER_MAC);
        assert_eq!(o.sends[0].packet[66..72], UP_MAC, "TLLA is ours");
    }

    #[test]
    fn unicast_to_an_unknown_neighbor_goes_to_the_all_nodes_mac() {
        let mut p = proxy();
        let pkt = na("2001:db8::5", "2001:db8::77", "2001:db8::5", GUEST_MAC);
        let o = p.handle(&rx(DOWN, &pkt), now());
        assert_eq!(o.sends[0].dst_mac, ALL_NODES_MAC);
    }

    #[test]
    fn kernel_neighbors_resolve_unicast_destinations_per_link() {
        let mut p = proxy();
        let mac = [2, 9, 9, 9, 9, 9];
        p.set_kernel_neighbor(UP, a("2001:db8::77"), Some(mac));
        p.set_kernel_neighbor(DOWN2, a("2001:db8::77"), Some([2, 8, 8, 8, 8, 8]));
        let pkt = na("2001:db8::5", "2001:db8::77", "2001:db8::5", GUEST_MAC);
        let o = p.handle(&rx(DOWN, &pkt), now());
        assert_eq!(o.sends[0].dst_mac, mac);
        p.set_kernel_neighbor(UP, a("2001:db8::77"), None);
        let o = p.handle(&rx(DOWN, &pkt), now());
        assert_eq!(o.sends[0].dst_mac, ALL_NODES_MAC);
    }

    #[test]
    fn na_target_on_a_downlink_is_learned() {
        let mut p = proxy();
        let pkt = na("2001:db8::5", "ff02::1", "2001:db8::5", GUEST_MAC);
        let o = p.handle(&rx(DOWN, &pkt), now());
        assert_eq!(
            o.learned,
            Some(Guest {
                ifindex: DOWN,
                addr: a("2001:db8::5")
            })
        );
    }

    #[test]
    fn ns_source_on_a_downlink_is_learned() {
        let mut p = proxy();
        let pkt = ns("fd00::5", "ff02::1:ff00:1", "fd00::1", Some(GUEST_MAC));
        let o = p.handle(&rx(DOWN, &pkt), now());
        assert_eq!(o.learned.map(|g| g.addr), Some(a("fd00::5")));
    }

    #[test]
    fn dad_probe_target_on_a_downlink_is_learned() {
        let mut p = proxy();
        let pkt = ns("::", "ff02::1:ff00:5", "2001:db8::5", None);
        let o = p.handle(&rx(DOWN, &pkt), now());
        assert_eq!(o.learned.map(|g| g.addr), Some(a("2001:db8::5")));
        assert_eq!(sent_to(&o), vec![UP], "DAD probes are relayed too");
    }

    #[test]
    fn link_local_guest_addresses_are_not_learned() {
        let mut p = proxy();
        let pkt = ns("::", "ff02::1:ff00:5", "fe80::5", None);
        assert_eq!(p.handle(&rx(DOWN, &pkt), now()).learned, None);
    }

    #[test]
    fn a_guest_is_reported_again_only_after_the_interval() {
        let mut p = proxy();
        let pkt = na("2001:db8::5", "ff02::1", "2001:db8::5", GUEST_MAC);
        let t0 = now();
        assert!(p.handle(&rx(DOWN, &pkt), t0).learned.is_some());
        assert!(p
            .handle(&rx(DOWN, &pkt), t0 + Duration::from_secs(1))
            .learned
            .is_none());
        assert!(p
            .handle(&rx(DOWN, &pkt), t0 + REPORT_INTERVAL)
            .learned
            .is_some());
    }

    #[test]
    fn a_restarted_pair_reports_its_guests_again() {
        let mut p = proxy();
        let pkt = na("2001:db8::5", "ff02::1", "2001:db8::5", GUEST_MAC);
        let t0 = now();
        p.handle(&rx(DOWN, &pkt), t0);
        p.stop(UP, DOWN);
        p.start(UP, DOWN).unwrap();
        assert!(p.handle(&rx(DOWN, &pkt), t0).learned.is_some());
    }

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
        let pkt = na("2001:db8::5", "2001:db8::1", "2001:db8::5", GUEST_MAC);
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
        p.add_local_address(DOWN, a("fe80::aa"));
        let pkt = na("2001:db8::5", "fe80::aa", "2001:db8::5", GUEST_MAC);
        let o = p.handle(&rx(DOWN, &pkt), now());
        assert_eq!(o.dropped, Some(Dropped::ForHost));
        assert!(o.learned.is_some(), "the guest is still learned");
    }

    #[test]
    fn a_link_local_address_of_another_link_is_not_the_hosts() {
        let mut p = proxy();
        p.add_local_address(UP, a("fe80::aa"));
        let pkt = na("2001:db8::5", "fe80::aa", "2001:db8::5", GUEST_MAC);
        assert_eq!(sent_to(&p.handle(&rx(DOWN, &pkt), now())), vec![UP]);
    }

    #[test]
    fn solicitations_for_a_host_address_stay_on_the_host() {
        let mut p = proxy();
        p.add_local_address(UP, a("2001:db8::aa"));
        let pkt = ns(
            "2001:db8::1",
            "ff02::1:ff00:aa",
            "2001:db8::aa",
            Some(ROUTER_MAC),
        );
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
    fn pairs_must_name_two_different_links() {
        let mut p = Proxy::new();
        assert_eq!(p.start(0, 3), Err(PairError::ZeroIndex));
        assert_eq!(p.start(3, 3), Err(PairError::SameLink(3)));
        assert_eq!(p.start(2, 3), Ok(true));
        assert_eq!(p.start(2, 3), Ok(false), "idempotent");
        assert_eq!(p.links(), BTreeSet::from([2, 3]));
    }
}
