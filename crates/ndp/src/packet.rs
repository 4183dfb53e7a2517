//! IPv6 neighbour discovery packets (RFC 4861) as an RFC 4389 proxy sees
//! them: parsed and validated in place, then rewritten for another link.
//!
//! Pure functions over byte slices. The input is a bare IPv6 packet (the
//! packet socket is `SOCK_DGRAM`, so the kernel strips the link-layer
//! header). [`NdPacket::parse`] accepts only what a proxy may relay:
//!
//! * an IPv6 header whose payload length matches the bytes received
//!   exactly (no truncated or padded packets),
//! * ICMPv6 directly after it: a packet with any extension header is
//!   refused (RFC 6980 forbids fragmented ND, and the socket filter never
//!   passes one anyway),
//! * a Router/Neighbor Solicitation or Advertisement with code 0 and hop
//!   limit 255 (what RFC 4861 receivers require, so relaying anything else
//!   would only make guests drop it later),
//! * options that are each non-empty and end exactly at the end of the
//!   message.
//!
//! The checksum is verified separately ([`NdPacket::verify_checksum`]),
//! because a packet whose checksum the sender left to hardware cannot be
//! verified; a proxy must never relay a corrupted packet with a freshly
//! computed, valid checksum.
//!
//! [`NdPacket::rewrite`] produces the relayed copy: link-layer address
//! options carry the outgoing interface's MAC; an RA gets the Proxy flag
//! and its Cur Hop Limit field raised by one when non-zero; the destination
//! may be replaced; the ICMPv6 checksum is recomputed over the pseudo-header
//! in network byte order. The IPv6 hop limit is left at 255. The output is
//! always as long as the input.

use std::fmt;
use std::net::Ipv6Addr;

/// Length of the fixed IPv6 header.
pub const IPV6_HEADER_LEN: usize = 40;
/// `IPPROTO_ICMPV6`.
pub const IPPROTO_ICMPV6: u8 = 58;
/// The hop limit every ND packet carries (RFC 4861: proof it is on-link).
pub const ND_HOP_LIMIT: u8 = 255;
/// All-nodes multicast, where relayed RAs go.
pub const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
/// The Proxy flag in the RA flags byte (RFC 4389 §4.1.3.3).
pub const RA_FLAG_PROXY: u8 = 0x04;

/// Source Link-Layer Address option.
pub const OPT_SOURCE_LINK_ADDR: u8 = 1;
/// Target Link-Layer Address option.
pub const OPT_TARGET_LINK_ADDR: u8 = 2;
/// Prefix Information option.
pub const OPT_PREFIX_INFO: u8 = 3;

/// Offsets inside the ICMPv6 message.
const ICMP_CHECKSUM: usize = 2;
const RA_CUR_HOP_LIMIT: usize = 4;
const RA_FLAGS: usize = 5;
const ND_TARGET: usize = 8;

/// Length of an Ethernet link-layer address option (type, length, MAC).
const ETHERNET_LLA_OPTION_LEN: usize = 8;

/// IPv6 extension headers (IANA "IPv6 Extension Header Types"), told apart
/// from other next-header values so the drop reason is precise.
const EXTENSION_HEADERS: [u8; 9] = [0, 43, 44, 50, 51, 60, 135, 139, 140];

/// The four message types a proxy relays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NdType {
    /// Router Solicitation (133).
    RouterSolicitation,
    /// Router Advertisement (134).
    RouterAdvertisement,
    /// Neighbor Solicitation (135).
    NeighborSolicitation,
    /// Neighbor Advertisement (136).
    NeighborAdvertisement,
}

impl NdType {
    /// The type of an ICMPv6 type number, if it is one of the four.
    pub fn from_icmp_type(ty: u8) -> Option<NdType> {
        match ty {
            133 => Some(NdType::RouterSolicitation),
            134 => Some(NdType::RouterAdvertisement),
            135 => Some(NdType::NeighborSolicitation),
            136 => Some(NdType::NeighborAdvertisement),
            _ => None,
        }
    }

    /// The ICMPv6 type number.
    pub fn icmp_type(self) -> u8 {
        match self {
            NdType::RouterSolicitation => 133,
            NdType::RouterAdvertisement => 134,
            NdType::NeighborSolicitation => 135,
            NdType::NeighborAdvertisement => 136,
        }
    }

    /// Length of the fixed part of the message, ICMPv6 header included:
    /// where the options begin.
    pub fn fixed_len(self) -> usize {
        match self {
            NdType::RouterSolicitation => 8,
            NdType::RouterAdvertisement => 16,
            NdType::NeighborSolicitation | NdType::NeighborAdvertisement => 24,
        }
    }

    /// Short name for logs: RS, RA, NS, NA.
    pub fn abbrev(self) -> &'static str {
        match self {
            NdType::RouterSolicitation => "RS",
            NdType::RouterAdvertisement => "RA",
            NdType::NeighborSolicitation => "NS",
            NdType::NeighborAdvertisement => "NA",
        }
    }
}

impl fmt::Display for NdType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.abbrev())
    }
}

/// Why a packet is not one the proxy relays.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NdError {
    /// Fewer bytes than the part named in `what`.
    #[error("{len} bytes is shorter than {what} ({need} bytes)")]
    Truncated {
        what: &'static str,
        len: usize,
        need: usize,
    },
    /// The version nibble is not 6.
    #[error("IP version {0}, not 6")]
    NotIpv6(u8),
    /// The IPv6 payload length disagrees with the bytes received.
    #[error("IPv6 payload length {payload_len} but {actual} bytes follow the header")]
    LengthMismatch { payload_len: usize, actual: usize },
    /// An extension header sits between the IPv6 header and ICMPv6.
    #[error("extension header {0} before ICMPv6")]
    ExtensionHeader(u8),
    /// The next header is not ICMPv6.
    #[error("next header {0} is not ICMPv6")]
    NotIcmpv6(u8),
    /// ICMPv6, but not RS, RA, NS or NA.
    #[error("ICMPv6 type {0} is not RS, RA, NS or NA")]
    NotNd(u8),
    /// RFC 4861 requires code 0.
    #[error("{ty} with code {code}, not 0")]
    NonZeroCode { ty: NdType, code: u8 },
    /// RFC 4861 requires hop limit 255 (the packet was not sent on-link).
    #[error("{ty} with hop limit {hop_limit}, not 255")]
    HopLimit { ty: NdType, hop_limit: u8 },
    /// An option with length 0 (RFC 4861 §4.6: discard the packet).
    #[error("option type {kind} at offset {offset} has length 0")]
    ZeroLengthOption { kind: u8, offset: usize },
    /// An option (or a stray byte) runs past the end of the message.
    #[error("option at offset {offset} needs {len} bytes but the message ends at {end}")]
    OptionOverrun {
        offset: usize,
        len: usize,
        end: usize,
    },
    /// The ICMPv6 checksum does not match the packet.
    #[error("ICMPv6 checksum {found:#06x}, expected {expected:#06x}")]
    BadChecksum { found: u16, expected: u16 },
}

/// How to rewrite a packet for the link it is relayed to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rewrite {
    /// The outgoing interface's MAC, written into link-layer address options.
    pub mac: [u8; 6],
    /// A new IPv6 destination (relayed RAs go to [`ALL_NODES`]).
    pub destination: Option<Ipv6Addr>,
}

/// One option of an ND message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NdOption<'a> {
    /// Offset of the option inside the ICMPv6 message.
    pub offset: usize,
    /// Option type.
    pub kind: u8,
    /// The whole option: type, length and body.
    pub bytes: &'a [u8],
}

/// A validated RS, RA, NS or NA, borrowed from the receive buffer.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct NdPacket<'a> {
    bytes: &'a [u8],
    ty: NdType,
}

impl fmt::Debug for NdPacket<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("NdPacket");
        d.field("type", &self.ty)
            .field("source", &self.source())
            .field("destination", &self.destination());
        if let Some(target) = self.target() {
            d.field("target", &target);
        }
        d.field("len", &self.bytes.len()).finish()
    }
}

fn addr_at(bytes: &[u8], at: usize) -> Ipv6Addr {
    let mut octets = [0u8; 16];
    octets.copy_from_slice(&bytes[at..at + 16]);
    Ipv6Addr::from(octets)
}

impl<'a> NdPacket<'a> {
    /// Validates `bytes` as an IPv6 packet carrying an RS, RA, NS or NA
    /// (everything but the checksum; see the module documentation).
    pub fn parse(bytes: &'a [u8]) -> Result<NdPacket<'a>, NdError> {
        let len = bytes.len();
        if len < IPV6_HEADER_LEN {
            return Err(NdError::Truncated {
                what: "an IPv6 header",
                len,
                need: IPV6_HEADER_LEN,
            });
        }
        let version = bytes[0] >> 4;
        if version != 6 {
            return Err(NdError::NotIpv6(version));
        }
        let payload_len = usize::from(u16::from_be_bytes([bytes[4], bytes[5]]));
        let actual = len - IPV6_HEADER_LEN;
        if payload_len != actual {
            return Err(NdError::LengthMismatch {
                payload_len,
                actual,
            });
        }
        let next_header = bytes[6];
        if next_header != IPPROTO_ICMPV6 {
            return Err(if EXTENSION_HEADERS.contains(&next_header) {
                NdError::ExtensionHeader(next_header)
            } else {
                NdError::NotIcmpv6(next_header)
            });
        }
        let icmp = &bytes[IPV6_HEADER_LEN..];
        if icmp.len() < 4 {
            return Err(NdError::Truncated {
                what: "an ICMPv6 header",
                len: icmp.len(),
                need: 4,
            });
        }
        let ty = NdType::from_icmp_type(icmp[0]).ok_or(NdError::NotNd(icmp[0]))?;
        if icmp.len() < ty.fixed_len() {
            return Err(NdError::Truncated {
                what: match ty {
                    NdType::RouterSolicitation => "a router solicitation",
                    NdType::RouterAdvertisement => "a router advertisement",
                    NdType::NeighborSolicitation => "a neighbor solicitation",
                    NdType::NeighborAdvertisement => "a neighbor advertisement",
                },
                len: icmp.len(),
                need: ty.fixed_len(),
            });
        }
        if icmp[1] != 0 {
            return Err(NdError::NonZeroCode { ty, code: icmp[1] });
        }
        let hop_limit = bytes[7];
        if hop_limit != ND_HOP_LIMIT {
            return Err(NdError::HopLimit { ty, hop_limit });
        }
        check_options(icmp, ty.fixed_len())?;
        Ok(NdPacket { bytes, ty })
    }

    /// The message type.
    pub fn nd_type(&self) -> NdType {
        self.ty
    }

    /// The whole packet.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// The ICMPv6 message (header, fixed part and options).
    pub fn icmp(&self) -> &'a [u8] {
        &self.bytes[IPV6_HEADER_LEN..]
    }

    /// IPv6 source address (`::` in a DAD probe).
    pub fn source(&self) -> Ipv6Addr {
        addr_at(self.bytes, 8)
    }

    /// IPv6 destination address.
    pub fn destination(&self) -> Ipv6Addr {
        addr_at(self.bytes, 24)
    }

    /// The Target Address of an NS or NA.
    pub fn target(&self) -> Option<Ipv6Addr> {
        match self.ty {
            NdType::NeighborSolicitation | NdType::NeighborAdvertisement => {
                Some(addr_at(self.icmp(), ND_TARGET))
            }
            NdType::RouterSolicitation | NdType::RouterAdvertisement => None,
        }
    }

    /// The ICMPv6 checksum field as received.
    pub fn checksum(&self) -> u16 {
        let icmp = self.icmp();
        u16::from_be_bytes([icmp[ICMP_CHECKSUM], icmp[ICMP_CHECKSUM + 1]])
    }

    /// Checks the ICMPv6 checksum against the pseudo-header and message.
    pub fn verify_checksum(&self) -> Result<(), NdError> {
        // A message carrying its checksum sums to zero.
        if icmpv6_checksum(&self.source(), &self.destination(), self.icmp()) == 0 {
            return Ok(());
        }
        let mut zeroed = self.icmp().to_vec();
        zeroed[ICMP_CHECKSUM..ICMP_CHECKSUM + 2].fill(0);
        Err(NdError::BadChecksum {
            found: self.checksum(),
            expected: icmpv6_checksum(&self.source(), &self.destination(), &zeroed),
        })
    }

    /// The options after the fixed part, in order.
    pub fn options(&self) -> Options<'a> {
        Options {
            icmp: self.icmp(),
            offset: self.ty.fixed_len(),
        }
    }

    /// Writes the relayed copy of this packet into `out` (replacing its
    /// contents): see the module documentation for what changes.
    ///
    /// Every Source or Target Link-Layer Address option of Ethernet size
    /// gets `rewrite.mac`, whatever the message type, so no MAC from one
    /// link leaks to another. Options of another size (another link type)
    /// are left alone; receivers on Ethernet ignore them.
    pub fn rewrite(&self, rewrite: &Rewrite, out: &mut Vec<u8>) {
        out.clear();
        out.extend_from_slice(self.bytes);
        let fixed = self.ty.fixed_len();
        let option_offsets: Vec<usize> = self
            .options()
            .filter(|o| {
                (o.kind == OPT_SOURCE_LINK_ADDR || o.kind == OPT_TARGET_LINK_ADDR)
                    && o.bytes.len() == ETHERNET_LLA_OPTION_LEN
            })
            .map(|o| o.offset)
            .collect();
        if let Some(dst) = rewrite.destination {
            out[24..40].copy_from_slice(&dst.octets());
        }
        let icmp = &mut out[IPV6_HEADER_LEN..];
        debug_assert!(icmp.len() >= fixed);
        for offset in option_offsets {
            icmp[offset + 2..offset + 8].copy_from_slice(&rewrite.mac);
        }
        if self.ty == NdType::RouterAdvertisement {
            icmp[RA_FLAGS] |= RA_FLAG_PROXY;
            // 0 means "unspecified" and must stay so; otherwise one more
            // so that guests' packets leave the host (after its forwarding
            // decrement) with the hop limit the router asked for.
            if icmp[RA_CUR_HOP_LIMIT] != 0 {
                icmp[RA_CUR_HOP_LIMIT] = icmp[RA_CUR_HOP_LIMIT].saturating_add(1);
            }
        }
        icmp[ICMP_CHECKSUM..ICMP_CHECKSUM + 2].fill(0);
        let src = addr_at(out, 8);
        let dst = addr_at(out, 24);
        let sum = icmpv6_checksum(&src, &dst, &out[IPV6_HEADER_LEN..]);
        out[IPV6_HEADER_LEN + ICMP_CHECKSUM..IPV6_HEADER_LEN + ICMP_CHECKSUM + 2]
            .copy_from_slice(&sum.to_be_bytes());
    }
}

/// Walks the options of `icmp` from `start`: each must have a non-zero
/// length and end inside the message, and the last must end exactly at
/// the end of the message.
fn check_options(icmp: &[u8], start: usize) -> Result<(), NdError> {
    let end = icmp.len();
    let mut offset = start;
    while offset < end {
        if end - offset < 2 {
            return Err(NdError::OptionOverrun {
                offset,
                len: 2,
                end,
            });
        }
        let len = usize::from(icmp[offset + 1]) * 8;
        if len == 0 {
            return Err(NdError::ZeroLengthOption {
                kind: icmp[offset],
                offset,
            });
        }
        if len > end - offset {
            return Err(NdError::OptionOverrun { offset, len, end });
        }
        offset += len;
    }
    Ok(())
}

/// Iterator over the options of a validated [`NdPacket`].
#[derive(Debug, Clone)]
pub struct Options<'a> {
    icmp: &'a [u8],
    offset: usize,
}

impl<'a> Iterator for Options<'a> {
    type Item = NdOption<'a>;

    fn next(&mut self) -> Option<NdOption<'a>> {
        // The walk was validated by `parse`; the checks here only keep a
        // bug from turning into a panic or an endless loop.
        let header = self.icmp.get(self.offset..self.offset.checked_add(2)?)?;
        let len = usize::from(header[1]) * 8;
        if len == 0 {
            return None;
        }
        let bytes = self.icmp.get(self.offset..self.offset.checked_add(len)?)?;
        let option = NdOption {
            offset: self.offset,
            kind: header[0],
            bytes,
        };
        self.offset += len;
        Some(option)
    }
}

/// The ICMPv6 checksum (RFC 4443 §2.3) of `message` sent from `src` to
/// `dst`: the 16-bit one's complement of the one's complement sum of the
/// pseudo-header (addresses, upper-layer length, next header 58) and the
/// message, all as big-endian 16-bit words, an odd last byte padded with a
/// zero byte. `message` must carry 0 in its checksum field; a message with
/// its real checksum sums to 0.
pub fn icmpv6_checksum(src: &Ipv6Addr, dst: &Ipv6Addr, message: &[u8]) -> u16 {
    let mut sum: u64 = 0;
    sum += sum_words(&src.octets());
    sum += sum_words(&dst.octets());
    let len = message.len() as u64;
    sum += (len >> 16) + (len & 0xffff);
    sum += u64::from(IPPROTO_ICMPV6);
    sum += sum_words(message);
    !fold(sum)
}

fn sum_words(bytes: &[u8]) -> u64 {
    let mut chunks = bytes.chunks_exact(2);
    let mut sum: u64 = chunks
        .by_ref()
        .map(|w| u64::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    if let [last] = chunks.remainder() {
        sum += u64::from(*last) << 8;
    }
    sum
}

fn fold(mut sum: u64) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// The Ethernet multicast MAC of an IPv6 multicast address (RFC 2464 §7:
/// 33:33 and the last four bytes), `None` for unicast addresses.
pub fn multicast_mac(addr: &Ipv6Addr) -> Option<[u8; 6]> {
    if !addr.is_multicast() {
        return None;
    }
    let o = addr.octets();
    Some([0x33, 0x33, o[12], o[13], o[14], o[15]])
}

/// Global unicast (2000::/3) or unique local (fc00::/7): the guest
/// addresses worth a host route. Link-local, multicast and the unspecified
/// address are not.
pub fn is_global_or_ula(addr: &Ipv6Addr) -> bool {
    let first = addr.octets()[0];
    first & 0xe0 == 0x20 || first & 0xfe == 0xfc
}

/// Parses, verifies the checksum and rewrites in one go: what the proxy
/// does to each packet whose checksum is complete.
pub fn translate(packet: &[u8], rewrite: &Rewrite) -> Result<Vec<u8>, NdError> {
    let nd = NdPacket::parse(packet)?;
    nd.verify_checksum()?;
    let mut out = Vec::with_capacity(packet.len());
    nd.rewrite(rewrite, &mut out);
    Ok(out)
}

#[cfg(test)]
mod tests {
    //! Golden packets. The inputs were captured from a Linux 6.18 kernel
    //! and radvd 2.19 on a veth pair (MACs 02:00:00:00:00:01 and :02, the
    //! prefix 2001:db8:1::/64); the expected outputs were computed by an
    //! independent Python script (MAC 02:aa:bb:cc:dd:ee), not by this code.
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        assert_eq!(s.len() & 1, 0, "odd hex length");
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex digit"))
            .collect()
    }

    const MAC: [u8; 6] = [0x02, 0xaa, 0xbb, 0xcc, 0xdd, 0xee];

    fn to_mac() -> Rewrite {
        Rewrite {
            mac: MAC,
            destination: None,
        }
    }

    fn ra_rewrite() -> Rewrite {
        Rewrite {
            mac: MAC,
            destination: Some(ALL_NODES),
        }
    }

    /// RS fe80::ff:fe00:2 -> ff02::2, SLLA 02:00:00:00:00:02.
    const RS: &str = "6000000000103afffe80000000000000000000fffe000002
        ff020000000000000000000000000002 85007b2a00000000 0101020000000002";
    const RS_OUT: &str = "6000000000103afffe80000000000000000000fffe000002
        ff020000000000000000000000000002 8500e0c600000000 010102aabbccddee";

    /// RA fe80::ff:fe00:1 -> ff02::1: cur hop limit 64, no flags, router
    /// lifetime 12 s; PIO 2001:db8:1::/64 (L, A), MTU 1500, SLLA.
    const RA: &str = "600e2dd400403afffe80000000000000000000fffe000001
        ff020000000000000000000000000001 860033d44000000c0000000000000000
        030440c000015180000038400000000020010db8000100000000000000000000
        05010000000005dc 0101020000000001";
    const RA_OUT: &str = "600e2dd400403afffe80000000000000000000fffe000001
        ff020000000000000000000000000001 8600986b4104000c0000000000000000
        030440c000015180000038400000000020010db8000100000000000000000000
        05010000000005dc 010102aabbccddee";
    /// The same RA solicited by unicast to fe80::ff:fe00:2 (another flow
    /// label); relayed to ff02::1 it becomes RA_OUT but for the flow label.
    const RA_UNICAST: &str = "6006c51f00403afffe80000000000000000000fffe000001
        fe80000000000000000000fffe000002 860035554000000c0000000000000000
        030440c000015180000038400000000020010db8000100000000000000000000
        05010000000005dc 0101020000000001";
    const RA_UNICAST_OUT: &str = "6006c51f00403afffe80000000000000000000fffe000001
        ff020000000000000000000000000001 8600986b4104000c0000000000000000
        030440c000015180000038400000000020010db8000100000000000000000000
        05010000000005dc 010102aabbccddee";

    /// NS 2001:db8:1::ff:fe00:2 -> ff02::1:ff00:1 for 2001:db8:1::1, SLLA.
    const NS: &str = "6000000000203aff20010db800010000000000fffe000002
        ff0200000000000000000001ff000001 87001d2500000000
        20010db8000100000000000000000001 0101020000000002";
    const NS_OUT: &str = "6000000000203aff20010db800010000000000fffe000002
        ff0200000000000000000001ff000001 870082c100000000
        20010db8000100000000000000000001 010102aabbccddee";

    /// DAD probe :: -> ff02::1:ff00:2 for 2001:db8:1::ff:fe00:2 with a
    /// Nonce option (RFC 7527) and no SLLA: nothing to rewrite.
    const NS_DAD: &str = "6000000000203aff00000000000000000000000000000000
        ff0200000000000000000001ff000002 8700c32700000000
        20010db800010000000000fffe000002 0e01a0e73399a838";

    /// NA 2001:db8:1::1 -> 2001:db8:1::ff:fe00:2, flags R S O, TLLA.
    const NA: &str = "6000000000203aff20010db8000100000000000000000001
        20010db800010000000000fffe000002 88000b70e0000000
        20010db8000100000000000000000001 0201020000000001";
    const NA_OUT: &str = "6000000000203aff20010db8000100000000000000000001
        20010db800010000000000fffe000002 8800710be0000000
        20010db8000100000000000000000001 020102aabbccddee";

    /// Solicited NA fe80::ff:fe00:2 -> fe80::ff:fe00:1 without options.
    const NA_BARE: &str = "6000000000183afffe80000000000000000000fffe000002
        fe80000000000000000000fffe000001 88003f2540000000
        fe80000000000000000000fffe000002";

    #[test]
    fn captured_packets_carry_checksums_this_code_accepts() {
        for p in [RS, RA, RA_UNICAST, NS, NS_DAD, NA, NA_BARE] {
            let bytes = hex(p);
            let nd = NdPacket::parse(&bytes).expect("parse");
            nd.verify_checksum().expect("kernel-computed checksum");
        }
    }

    #[test]
    fn rs_gets_our_mac_in_its_source_link_layer_option() {
        assert_eq!(translate(&hex(RS), &to_mac()).unwrap(), hex(RS_OUT));
    }

    #[test]
    fn ra_gets_proxy_flag_hop_limit_plus_one_and_our_mac() {
        let out = translate(&hex(RA), &ra_rewrite()).unwrap();
        assert_eq!(out, hex(RA_OUT));
        assert_eq!(out[7], 255, "the IPv6 hop limit stays 255");
        assert_eq!(out[44], 65, "cur hop limit 64 + 1");
        assert_eq!(out[45] & RA_FLAG_PROXY, RA_FLAG_PROXY);
    }

    #[test]
    fn unicast_ra_is_readdressed_to_all_nodes() {
        assert_eq!(
            translate(&hex(RA_UNICAST), &ra_rewrite()).unwrap(),
            hex(RA_UNICAST_OUT)
        );
    }

    #[test]
    fn ns_gets_our_mac_and_keeps_its_target() {
        let out = translate(&hex(NS), &to_mac()).unwrap();
        assert_eq!(out, hex(NS_OUT));
        let nd = NdPacket::parse(&out).unwrap();
        assert_eq!(
            nd.target(),
            Some("2001:db8:1::1".parse::<Ipv6Addr>().unwrap())
        );
    }

    #[test]
    fn dad_probe_without_link_layer_option_is_relayed_unchanged() {
        assert_eq!(translate(&hex(NS_DAD), &to_mac()).unwrap(), hex(NS_DAD));
    }

    #[test]
    fn na_gets_our_mac_in_its_target_link_layer_option() {
        assert_eq!(translate(&hex(NA), &to_mac()).unwrap(), hex(NA_OUT));
    }

    #[test]
    fn na_without_options_is_relayed_unchanged() {
        assert_eq!(translate(&hex(NA_BARE), &to_mac()).unwrap(), hex(NA_BARE));
    }

    #[test]
    fn accessors_read_the_header_fields() {
        let bytes = hex(NS_DAD);
        let nd = NdPacket::parse(&bytes).unwrap();
        assert_eq!(nd.nd_type(), NdType::NeighborSolicitation);
        assert_eq!(nd.source(), Ipv6Addr::UNSPECIFIED);
        assert_eq!(
            nd.destination(),
            "ff02::1:ff00:2".parse::<Ipv6Addr>().unwrap()
        );
        assert_eq!(nd.target(), Some("2001:db8:1::ff:fe00:2".parse().unwrap()));
        let kinds: Vec<u8> = nd.options().map(|o| o.kind).collect();
        assert_eq!(kinds, vec![14]);
    }

    #[test]
    fn ra_options_are_walked_in_order() {
        let bytes = hex(RA);
        let nd = NdPacket::parse(&bytes).unwrap();
        let opts: Vec<(usize, u8, usize)> = nd
            .options()
            .map(|o| (o.offset, o.kind, o.bytes.len()))
            .collect();
        assert_eq!(
            opts,
            vec![(16, OPT_PREFIX_INFO, 32), (48, 5, 8), (56, 1, 8)]
        );
    }

    /// Sets a byte of a golden packet and fixes the checksum, so the test
    /// reaches the check it is about rather than failing on the checksum.
    fn with(packet: &str, at: usize, value: u8) -> Vec<u8> {
        let mut b = hex(packet);
        b[at] = value;
        fix_checksum(&mut b);
        b
    }

    fn fix_checksum(b: &mut [u8]) {
        let src = addr_at(b, 8);
        let dst = addr_at(b, 24);
        b[42] = 0;
        b[43] = 0;
        let sum = icmpv6_checksum(&src, &dst, &b[40..]);
        b[42..44].copy_from_slice(&sum.to_be_bytes());
    }

    #[test]
    fn ra_with_unspecified_cur_hop_limit_keeps_zero() {
        let out = translate(&with(RA, 44, 0), &ra_rewrite()).unwrap();
        assert_eq!(out[44], 0);
    }

    #[test]
    fn ra_cur_hop_limit_255_saturates() {
        let out = translate(&with(RA, 44, 255), &ra_rewrite()).unwrap();
        assert_eq!(out[44], 255);
    }

    #[test]
    fn ra_already_proxied_is_proxied_again() {
        // Cascades (host -> VM -> container) relay RAs with P set.
        let out = translate(&with(RA, 45, RA_FLAG_PROXY), &ra_rewrite()).unwrap();
        assert_eq!(out[45], RA_FLAG_PROXY);
        assert_eq!(out[44], 65);
    }

    #[test]
    fn output_checksum_verifies() {
        for (p, rw) in [
            (RS, to_mac()),
            (RA, ra_rewrite()),
            (NS, to_mac()),
            (NA, to_mac()),
        ] {
            let out = translate(&hex(p), &rw).unwrap();
            NdPacket::parse(&out).unwrap().verify_checksum().unwrap();
        }
    }

    #[test]
    fn a_packet_shorter_than_an_ipv6_header_is_truncated() {
        let b = hex(RS);
        assert_eq!(
            NdPacket::parse(&b[..39]),
            Err(NdError::Truncated {
                what: "an IPv6 header",
                len: 39,
                need: 40
            })
        );
    }

    #[test]
    fn a_packet_cut_short_is_a_length_mismatch() {
        let b = hex(NS);
        assert_eq!(
            NdPacket::parse(&b[..b.len() - 8]),
            Err(NdError::LengthMismatch {
                payload_len: 32,
                actual: 24
            })
        );
    }

    #[test]
    fn trailing_bytes_after_the_payload_are_a_length_mismatch() {
        let mut b = hex(RS);
        b.extend_from_slice(&[0; 8]);
        assert_eq!(
            NdPacket::parse(&b),
            Err(NdError::LengthMismatch {
                payload_len: 16,
                actual: 24
            })
        );
    }

    #[test]
    fn a_payload_length_larger_than_the_buffer_is_a_length_mismatch() {
        let mut b = hex(RS);
        b[4..6].copy_from_slice(&0xffffu16.to_be_bytes());
        assert!(matches!(
            NdPacket::parse(&b),
            Err(NdError::LengthMismatch {
                payload_len: 65535,
                ..
            })
        ));
    }

    #[test]
    fn an_ipv4_packet_is_refused() {
        let mut b = hex(RS);
        b[0] = 0x45;
        assert_eq!(NdPacket::parse(&b), Err(NdError::NotIpv6(4)));
    }

    #[test]
    fn a_hop_by_hop_header_before_icmpv6_is_refused() {
        // An MLD-style hop-by-hop header (router alert) in front of an RS.
        let rs = hex(RS);
        let mut b = rs[..40].to_vec();
        b[6] = 0;
        b[4..6].copy_from_slice(&(16u16 + 8).to_be_bytes());
        b.extend_from_slice(&[58, 0, 5, 2, 0, 0, 1, 0]);
        b.extend_from_slice(&rs[40..]);
        assert_eq!(NdPacket::parse(&b), Err(NdError::ExtensionHeader(0)));
    }

    #[test]
    fn a_fragment_header_is_refused() {
        let mut b = hex(NS);
        b[6] = 44;
        assert_eq!(NdPacket::parse(&b), Err(NdError::ExtensionHeader(44)));
    }

    #[test]
    fn udp_is_not_icmpv6() {
        let mut b = hex(NS);
        b[6] = 17;
        assert_eq!(NdPacket::parse(&b), Err(NdError::NotIcmpv6(17)));
    }

    #[test]
    fn an_echo_request_is_not_nd() {
        let b = with(NS, 40, 128);
        assert_eq!(NdPacket::parse(&b), Err(NdError::NotNd(128)));
    }

    #[test]
    fn a_redirect_is_not_relayed() {
        let b = with(NS, 40, 137);
        assert_eq!(NdPacket::parse(&b), Err(NdError::NotNd(137)));
    }

    #[test]
    fn an_icmpv6_header_cut_short_is_truncated() {
        let mut b = hex(RS)[..42].to_vec();
        b[4..6].copy_from_slice(&2u16.to_be_bytes());
        assert!(matches!(
            NdPacket::parse(&b),
            Err(NdError::Truncated {
                len: 2,
                need: 4,
                ..
            })
        ));
    }

    #[test]
    fn an_ns_without_its_target_is_truncated() {
        let mut b = hex(NS)[..56].to_vec();
        b[4..6].copy_from_slice(&16u16.to_be_bytes());
        assert_eq!(
            NdPacket::parse(&b),
            Err(NdError::Truncated {
                what: "a neighbor solicitation",
                len: 16,
                need: 24
            })
        );
    }

    #[test]
    fn an_ra_shorter_than_its_fixed_part_is_truncated() {
        let mut b = hex(RA)[..52].to_vec();
        b[4..6].copy_from_slice(&12u16.to_be_bytes());
        assert!(matches!(
            NdPacket::parse(&b),
            Err(NdError::Truncated { need: 16, .. })
        ));
    }

    #[test]
    fn a_nonzero_code_is_refused() {
        let b = with(NA, 41, 1);
        assert_eq!(
            NdPacket::parse(&b),
            Err(NdError::NonZeroCode {
                ty: NdType::NeighborAdvertisement,
                code: 1
            })
        );
    }

    #[test]
    fn a_hop_limit_below_255_is_refused() {
        let mut b = hex(RA);
        b[7] = 64;
        assert_eq!(
            NdPacket::parse(&b),
            Err(NdError::HopLimit {
                ty: NdType::RouterAdvertisement,
                hop_limit: 64
            })
        );
    }

    #[test]
    fn an_option_of_length_zero_is_refused() {
        let b = with(NS, 65, 0);
        assert_eq!(
            NdPacket::parse(&b),
            Err(NdError::ZeroLengthOption {
                kind: 1,
                offset: 24
            })
        );
    }

    #[test]
    fn an_option_running_past_the_end_is_refused() {
        let b = with(NS, 65, 2);
        assert_eq!(
            NdPacket::parse(&b),
            Err(NdError::OptionOverrun {
                offset: 24,
                len: 16,
                end: 32
            })
        );
    }

    #[test]
    fn a_stray_byte_after_the_last_option_is_refused() {
        // RS with its SLLA cut to one byte: no room for an option header.
        let mut b = hex(RS)[..49].to_vec();
        b[4..6].copy_from_slice(&9u16.to_be_bytes());
        assert_eq!(
            NdPacket::parse(&b),
            Err(NdError::OptionOverrun {
                offset: 8,
                len: 2,
                end: 9
            })
        );
    }

    #[test]
    fn an_ra_option_overrun_in_the_middle_is_refused() {
        // The MTU option (offset 48) claims 24 bytes where 16 remain.
        let b = with(RA, 40 + 49, 3);
        assert!(matches!(
            NdPacket::parse(&b),
            Err(NdError::OptionOverrun { offset: 48, .. })
        ));
    }

    #[test]
    fn a_corrupted_packet_fails_the_checksum() {
        let mut b = hex(NA);
        b[70] ^= 0x01; // one bit of the TLLA
        let nd = NdPacket::parse(&b).unwrap();
        assert_eq!(
            nd.verify_checksum(),
            Err(NdError::BadChecksum {
                found: 0x0b70,
                expected: 0x0a70
            })
        );
        assert!(matches!(
            translate(&b, &to_mac()),
            Err(NdError::BadChecksum { .. })
        ));
    }

    #[test]
    fn a_longer_link_layer_option_is_left_alone() {
        // A 16-byte SLLA (not Ethernet) in place of RS's 8-byte one.
        let rs = hex(RS);
        let mut b = rs[..48].to_vec();
        b[4..6].copy_from_slice(&24u16.to_be_bytes());
        b.extend_from_slice(&[1, 2, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9]);
        fix_checksum(&mut b);
        let out = translate(&b, &to_mac()).unwrap();
        assert_eq!(out[48..], b[48..]);
    }

    #[test]
    fn checksum_pads_an_odd_last_byte_in_network_order() {
        // ::1 -> ::2, 5-byte message. By hand: 0x0001 + 0x0002 + length
        // 0x0005 + next header 0x003a + 0x8000 + 0x0000 + 0xab00 (the odd
        // byte is the high half) = 0x12b42, folded 0x2b43, inverted 0xd4bc.
        let src = "::1".parse().unwrap();
        let dst = "::2".parse().unwrap();
        assert_eq!(icmpv6_checksum(&src, &dst, &[0x80, 0, 0, 0, 0xab]), 0xd4bc);
    }

    #[test]
    fn multicast_macs_follow_rfc_2464() {
        assert_eq!(multicast_mac(&ALL_NODES), Some([0x33, 0x33, 0, 0, 0, 1]));
        assert_eq!(
            multicast_mac(&"ff02::1:ff12:3456".parse().unwrap()),
            Some([0x33, 0x33, 0xff, 0x12, 0x34, 0x56])
        );
        assert_eq!(multicast_mac(&"fe80::1".parse().unwrap()), None);
    }

    #[test]
    fn only_global_and_unique_local_addresses_are_guest_addresses() {
        for yes in ["2001:db8::1", "3fff::1", "fd00::1", "fc00::1"] {
            assert!(is_global_or_ula(&yes.parse().unwrap()), "{yes}");
        }
        for no in ["fe80::1", "ff02::1", "::", "::1", "4000::1", "fe00::1"] {
            assert!(!is_global_or_ula(&no.parse().unwrap()), "{no}");
        }
    }

    #[test]
    fn nd_types_round_trip_through_their_icmp_type_numbers() {
        for (ty, number) in [
            (NdType::RouterSolicitation, 133),
            (NdType::RouterAdvertisement, 134),
            (NdType::NeighborSolicitation, 135),
            (NdType::NeighborAdvertisement, 136),
        ] {
            assert_eq!(ty.icmp_type(), number, "{ty:?}");
            assert_eq!(NdType::from_icmp_type(number), Some(ty));
        }
    }

    #[test]
    fn nd_types_display_as_rs_ra_ns_na() {
        let shown = [
            NdType::RouterSolicitation,
            NdType::RouterAdvertisement,
            NdType::NeighborSolicitation,
            NdType::NeighborAdvertisement,
        ]
        .map(|ty| ty.to_string());

        assert_eq!(shown, ["RS", "RA", "NS", "NA"]);
    }

    #[test]
    fn the_debug_form_of_an_ns_names_its_type_addresses_and_target() {
        let b = hex(NS);
        let nd = NdPacket::parse(&b).unwrap();

        let text = format!("{nd:?}");

        assert_eq!(
            text,
            "NdPacket { type: NeighborSolicitation, source: 2001:db8:1::ff:fe00:2, \
             destination: ff02::1:ff00:1, target: 2001:db8:1::1, len: 72 }"
        );
    }

    #[test]
    fn as_bytes_is_the_whole_packet() {
        let b = hex(RA);

        assert_eq!(NdPacket::parse(&b).unwrap().as_bytes(), &b[..]);
    }

    #[test]
    fn a_bare_ipv6_header_is_truncated_at_the_icmpv6_header() {
        let mut b = hex(RS)[..40].to_vec();
        b[4..6].copy_from_slice(&0u16.to_be_bytes());

        assert_eq!(
            NdPacket::parse(&b),
            Err(NdError::Truncated {
                what: "an ICMPv6 header",
                len: 0,
                need: 4
            })
        );
    }

    #[test]
    fn a_bare_icmpv6_header_is_truncated_at_the_fixed_part() {
        let mut b = hex(RS)[..44].to_vec();
        b[4..6].copy_from_slice(&4u16.to_be_bytes());

        assert_eq!(
            NdPacket::parse(&b),
            Err(NdError::Truncated {
                what: "a router solicitation",
                len: 4,
                need: 8
            })
        );
    }

    #[test]
    fn an_option_header_with_no_room_for_its_body_is_an_overrun_of_its_length() {
        // RS with its SLLA cut to the two header bytes (type 1, length 1).
        let mut b = hex(RS)[..50].to_vec();
        b[4..6].copy_from_slice(&10u16.to_be_bytes());

        assert_eq!(
            NdPacket::parse(&b),
            Err(NdError::OptionOverrun {
                offset: 8,
                len: 8,
                end: 10
            })
        );
    }
}
