//! IPv4 broadcast datagrams: parsing what a raw socket receives, and
//! building the copy sent to each guest (source preserved) or to the LAN
//! (source NATed to the host). Pure; golden-tested and fuzzed.

use std::net::Ipv4Addr;

/// Lowest port relayed at either end: system services (DHCP 67/68,
/// NetBIOS 137/138...) stay on their own link.
pub const MIN_PORT: u16 = 1024;

/// Why a received packet is not relayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    #[error("shorter than an IPv4 and a UDP header")]
    Short,
    #[error("not IPv4 with a valid header length")]
    Header,
    #[error("not UDP")]
    NotUdp,
    #[error("a fragment")]
    Fragment,
    #[error("lengths do not match the datagram")]
    Length,
    #[error("a port below 1024")]
    SystemPort,
}

/// A UDP datagram in an IPv4 packet, borrowed from the receive buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Datagram<'a> {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub src_port: u16,
    pub dst_port: u16,
    pub ttl: u8,
    pub tos: u8,
    pub id: u16,
    pub payload: &'a [u8],
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// Parses an IPv4 packet (IP header first, as a raw `IPPROTO_UDP` socket
/// delivers it). Honours IHL (options), rejects fragments (they carry no
/// UDP header or an incomplete one) and lengths that disagree.
pub fn parse(packet: &[u8]) -> Result<Datagram<'_>, Invalid> {
    if packet.len() < 28 {
        return Err(Invalid::Short);
    }
    let ihl = usize::from(packet[0] & 0x0f) * 4;
    if packet[0] >> 4 != 4 || ihl < 20 || packet.len() < ihl + 8 {
        return Err(Invalid::Header);
    }
    if packet[9] != 17 {
        return Err(Invalid::NotUdp);
    }
    let total = usize::from(be16(packet, 2));
    if total < ihl + 8 || total > packet.len() {
        return Err(Invalid::Length);
    }
    let frag = be16(packet, 6);
    if frag & 0x2000 != 0 || frag & 0x1fff != 0 {
        return Err(Invalid::Fragment);
    }
    let udp = &packet[ihl..total];
    let udp_len = usize::from(be16(udp, 4));
    if udp_len < 8 || udp_len > udp.len() {
        return Err(Invalid::Length);
    }
    let (src_port, dst_port) = (be16(udp, 0), be16(udp, 2));
    if src_port < MIN_PORT || dst_port < MIN_PORT {
        return Err(Invalid::SystemPort);
    }
    let ip = |at: usize| Ipv4Addr::new(packet[at], packet[at + 1], packet[at + 2], packet[at + 3]);
    Ok(Datagram {
        src: ip(12),
        dst: ip(16),
        src_port,
        dst_port,
        ttl: packet[8],
        tos: packet[1],
        id: be16(packet, 4),
        payload: &udp[8..udp_len],
    })
}

fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

fn sum_words(bytes: &[u8]) -> u32 {
    let mut sum = 0u32;
    let mut chunks = bytes.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(u16::from_be_bytes([*last, 0]));
    }
    sum
}

/// The UDP checksum of `segment` (header with a zero checksum field, then
/// payload) between `src` and `dst`; 0 is sent as 0xffff (RFC 768).
pub fn udp_checksum(src: Ipv4Addr, dst: Ipv4Addr, segment: &[u8]) -> u16 {
    let mut sum = sum_words(&src.octets()) + sum_words(&dst.octets());
    sum += 17 + segment.len() as u32;
    sum += sum_words(segment);
    match !fold(sum) {
        0 => 0xffff,
        c => c,
    }
}

/// The internet checksum of an IPv4 header.
pub fn ipv4_checksum(header: &[u8]) -> u16 {
    !fold(sum_words(header))
}

/// Builds a complete IPv4+UDP packet (no options, DF clear) for a raw
/// `IP_HDRINCL` socket, each checksum computed from scratch (upstream summed
/// the previous guest's checksum into the next one).
pub fn build(d: &Datagram<'_>) -> Vec<u8> {
    let mut p = Vec::with_capacity(28 + d.payload.len());
    build_into(d, &mut p);
    p
}

/// [`build`] into `p` (cleared first), so that its memory is reused.
pub fn build_into(d: &Datagram<'_>, p: &mut Vec<u8>) {
    let udp_len = 8 + d.payload.len();
    let total = 20 + udp_len;
    p.clear();
    p.extend_from_slice(&[0x45, d.tos]);
    p.extend_from_slice(&(total as u16).to_be_bytes());
    p.extend_from_slice(&d.id.to_be_bytes());
    p.extend_from_slice(&[0, 0, d.ttl, 17, 0, 0]);
    p.extend_from_slice(&d.src.octets());
    p.extend_from_slice(&d.dst.octets());
    let ip_sum = ipv4_checksum(&p[..20]);
    p[10..12].copy_from_slice(&ip_sum.to_be_bytes());
    p.extend_from_slice(&d.src_port.to_be_bytes());
    p.extend_from_slice(&d.dst_port.to_be_bytes());
    p.extend_from_slice(&(udp_len as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(d.payload);
    let udp_sum = udp_checksum(d.src, d.dst, &p[20..]);
    p[26..28].copy_from_slice(&udp_sum.to_be_bytes());
}

/// A link's broadcast address: the one configured (`IFA_BROADCAST`), else
/// the all-ones address of its prefix, as the kernel's broadcast route for
/// an address added without `brd` delivers it; /31 and /32 have none (on a
/// /31 both addresses are hosts, RFC 3021).
pub fn link_broadcast(
    addr: Ipv4Addr,
    netmask: Ipv4Addr,
    configured: Option<Ipv4Addr>,
) -> Option<Ipv4Addr> {
    if let Some(b) = configured.filter(|b| !b.is_unspecified()) {
        return Some(b);
    }
    let mask = u32::from(netmask);
    if mask.leading_ones() >= 31 {
        return None;
    }
    Some(Ipv4Addr::from(u32::from(addr) | !mask))
}

/// Whether `dst` is a broadcast on a link whose own broadcast address is
/// `link_broadcast`: the limited one or the link's directed one.
pub fn is_broadcast_on(dst: Ipv4Addr, link_broadcast: Option<Ipv4Addr>) -> bool {
    dst == Ipv4Addr::BROADCAST || Some(dst) == link_broadcast
}

/// Where a copy of a broadcast is sent on another link: the limited
/// broadcast stays limited, a directed broadcast becomes that link's
/// directed broadcast (or the limited one if it has none).
pub fn retarget(dst: Ipv4Addr, to_link_broadcast: Option<Ipv4Addr>) -> Ipv4Addr {
    if dst == Ipv4Addr::BROADCAST {
        dst
    } else {
        to_link_broadcast.unwrap_or(Ipv4Addr::BROADCAST)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_without_brd_broadcasts_to_the_all_ones_address_of_its_prefix() {
        let a = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        assert_eq!(
            link_broadcast(a("198.51.100.2"), a("255.255.255.0"), None),
            Some(a("198.51.100.255"))
        );
        assert_eq!(
            link_broadcast(a("10.1.2.3"), a("255.255.240.0"), None),
            Some(a("10.1.15.255"))
        );
        assert_eq!(
            link_broadcast(a("100.115.92.5"), a("255.255.255.252"), None),
            Some(a("100.115.92.7"))
        );
    }

    #[test]
    fn a_configured_broadcast_wins() {
        let a = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        assert_eq!(
            link_broadcast(
                a("198.51.100.2"),
                a("255.255.255.0"),
                Some(a("198.51.100.127"))
            ),
            Some(a("198.51.100.127"))
        );
        assert_eq!(
            link_broadcast(
                a("198.51.100.2"),
                a("255.255.255.0"),
                Some(Ipv4Addr::UNSPECIFIED)
            ),
            Some(a("198.51.100.255")),
            "0.0.0.0 is what the kernel reports for none"
        );
    }

    #[test]
    fn point_to_point_prefixes_have_no_broadcast() {
        let a = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        assert_eq!(
            link_broadcast(a("192.0.2.3"), a("255.255.255.254"), None),
            None
        );
        assert_eq!(
            link_broadcast(a("192.0.2.3"), a("255.255.255.255"), None),
            None
        );
        assert!(!is_broadcast_on(
            a("192.0.2.3"),
            link_broadcast(a("192.0.2.3"), a("255.255.255.254"), None)
        ));
    }

    const LAN: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 7);

    fn datagram(payload: &[u8]) -> Datagram<'_> {
        Datagram {
            src: LAN,
            dst: Ipv4Addr::BROADCAST,
            src_port: 40000,
            dst_port: 4445,
            ttl: 64,
            tos: 0,
            id: 0x1234,
            payload,
        }
    }

    /// Verifies a UDP checksum the way a receiver does: the sum over the
    /// pseudo-header and the segment, checksum included, is 0xffff.
    fn udp_verifies(p: &[u8]) -> bool {
        let src = Ipv4Addr::new(p[12], p[13], p[14], p[15]);
        let dst = Ipv4Addr::new(p[16], p[17], p[18], p[19]);
        let seg = &p[20..];
        let sum = sum_words(&src.octets())
            + sum_words(&dst.octets())
            + 17
            + seg.len() as u32
            + sum_words(seg);
        fold(sum) == 0xffff
    }

    #[test]
    fn golden_packet() {
        // "hi" from 192.168.1.7:40000 to 255.255.255.255:4445; checksums
        // computed separately with Python's struct module (RFC 1071 sum).
        let p = build(&datagram(b"hi"));
        assert_eq!(
            p,
            [
                0x45, 0, 0, 30, 0x12, 0x34, 0, 0, 64, 17, 0xa6, 0xec, 192, 168, 1, 7, 255, 255,
                255, 255, 0x9c, 0x40, 0x11, 0x5d, 0, 10, 0x28, 0x24, b'h', b'i'
            ]
        );
        assert_eq!(ipv4_checksum(&p[..20]), 0);
        assert!(udp_verifies(&p));
    }

    #[test]
    fn a_built_packet_parses_back_and_checksums_verify_for_every_destination() {
        let payload: Vec<u8> = (0..=255u8).cycle().take(1001).collect();
        for dst in [
            Ipv4Addr::BROADCAST,
            Ipv4Addr::new(100, 115, 92, 3),
            Ipv4Addr::new(100, 115, 92, 7),
        ] {
            let d = Datagram {
                dst,
                ..datagram(&payload)
            };
            let p = build(&d);
            assert!(udp_verifies(&p), "{dst}");
            assert_eq!(ipv4_checksum(&p[..20]), 0);
            assert_eq!(parse(&p), Ok(d));
        }
    }

    #[test]
    fn building_into_a_used_buffer_gives_the_same_packet() {
        let mut p = build(&datagram(&[7; 300]));
        build_into(&datagram(b"hi"), &mut p);
        assert_eq!(p, build(&datagram(b"hi")));
    }

    #[test]
    fn what_is_not_relayed() {
        let good = build(&datagram(b"payload"));
        assert_eq!(parse(&good[..27]), Err(Invalid::Short));
        let mut v6 = good.clone();
        v6[0] = 0x65;
        assert_eq!(parse(&v6), Err(Invalid::Header));
        let mut tcp = good.clone();
        tcp[9] = 6;
        assert_eq!(parse(&tcp), Err(Invalid::NotUdp));
        for frag in [[0x20, 0], [0, 1]] {
            let mut f = good.clone();
            f[6..8].copy_from_slice(&frag);
            assert_eq!(parse(&f), Err(Invalid::Fragment));
        }
        let mut long = good.clone();
        long[25] = 200; // UDP length beyond the packet
        assert_eq!(parse(&long), Err(Invalid::Length));
        let mut total = good.clone();
        total[3] = 200;
        assert_eq!(parse(&total), Err(Invalid::Length));
        let dhcp = build(&Datagram {
            src_port: 68,
            dst_port: 67,
            ..datagram(b"x")
        });
        assert_eq!(parse(&dhcp), Err(Invalid::SystemPort));
    }

    #[test]
    fn ip_options_are_skipped() {
        let plain = build(&datagram(b"opt"));
        let mut p = plain[..20].to_vec();
        p[0] = 0x46;
        p.extend_from_slice(&[1, 1, 1, 0]); // NOP NOP NOP EOL
        p.extend_from_slice(&plain[20..]);
        let total = p.len() as u16;
        p[2..4].copy_from_slice(&total.to_be_bytes());
        assert_eq!(parse(&p).map(|d| d.payload), Ok(&b"opt"[..]));
    }

    #[test]
    fn broadcast_destinations() {
        let b = Some(Ipv4Addr::new(192, 168, 1, 255));
        assert!(is_broadcast_on(Ipv4Addr::BROADCAST, None));
        assert!(is_broadcast_on(Ipv4Addr::new(192, 168, 1, 255), b));
        assert!(!is_broadcast_on(Ipv4Addr::new(192, 168, 2, 255), b));
        let g = Some(Ipv4Addr::new(100, 115, 92, 3));
        assert_eq!(retarget(Ipv4Addr::BROADCAST, g), Ipv4Addr::BROADCAST);
        assert_eq!(
            retarget(Ipv4Addr::new(192, 168, 1, 255), g),
            Ipv4Addr::new(100, 115, 92, 3)
        );
        assert_eq!(
            retarget(Ipv4Addr::new(192, 168, 1, 255), None),
            Ipv4Addr::BROADCAST
        );
    }
}
