//! An IPv4 guest subnet: network address plus prefix, with the fixed offsets
//! patchpanel uses inside it (host side at offset 1, guest at offset 2).

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::AddrError;

/// The longest prefix a guest subnet may have: a /30 still has a network,
/// host, guest and broadcast address.
pub const MAX_GUEST_PREFIX_LEN: u8 = 30;

/// 100.115.92.0/23: every guest pool of the default layout lies inside it, and
/// the firewall treats it as "guest address space".
pub const GUEST_ADDRESS_SPACE: Ipv4Subnet = Ipv4Subnet {
    base: Ipv4Addr::new(100, 115, 92, 0),
    prefix_len: 23,
};

/// A network address and prefix length, e.g. `100.115.92.128/30`.
///
/// The base is always the network address and the prefix at most
/// [`MAX_GUEST_PREFIX_LEN`], so [`host`](Self::host) and
/// [`guest`](Self::guest) always exist. Serialised as CIDR text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct Ipv4Subnet {
    base: Ipv4Addr,
    prefix_len: u8,
}

impl Ipv4Subnet {
    /// Checks that `base` is the network address of a /`prefix_len` with
    /// `prefix_len <= 30`.
    pub fn new(base: Ipv4Addr, prefix_len: u8) -> Result<Self, AddrError> {
        if prefix_len > MAX_GUEST_PREFIX_LEN {
            return Err(AddrError::InvalidPrefixLength {
                prefix_len,
                max: MAX_GUEST_PREFIX_LEN,
            });
        }
        let subnet = Self { base, prefix_len };
        if u32::from(base) & !subnet.mask() != 0 {
            return Err(AddrError::NotNetworkAddress { base, prefix_len });
        }
        Ok(subnet)
    }

    /// Callers guarantee the invariants of [`new`](Self::new).
    pub(crate) const fn new_unchecked(base: Ipv4Addr, prefix_len: u8) -> Self {
        Self { base, prefix_len }
    }

    /// The network address.
    pub const fn base(&self) -> Ipv4Addr {
        self.base
    }

    /// The prefix length.
    pub const fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    fn mask(&self) -> u32 {
        u32::MAX
            .checked_shl(32 - u32::from(self.prefix_len))
            .unwrap_or(0)
    }

    /// The netmask, e.g. 255.255.255.252 for a /30.
    pub fn netmask(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.mask())
    }

    /// Number of addresses covered, network and broadcast included.
    pub fn size(&self) -> u64 {
        1u64 << (32 - u32::from(self.prefix_len))
    }

    /// The address at `offset` from the base, if it is neither the network
    /// (offset 0) nor the broadcast (offset size-1) address.
    pub fn addr_at(&self, offset: u32) -> Option<Ipv4Addr> {
        if offset == 0 || u64::from(offset) >= self.size() - 1 {
            return None;
        }
        // Cannot overflow: offset < size - 1 and base is the network address.
        Some(Ipv4Addr::from(u32::from(self.base) + offset))
    }

    /// The host-side address (bridge, TAP or host veth; the guest's next hop):
    /// offset 1.
    pub fn host(&self) -> Ipv4Addr {
        // Offset 1 is always valid: the prefix is at most /30.
        Ipv4Addr::from(u32::from(self.base) + 1)
    }

    /// The guest-side address: offset 2.
    pub fn guest(&self) -> Ipv4Addr {
        // Offset 2 is always valid: the prefix is at most /30.
        Ipv4Addr::from(u32::from(self.base) + 2)
    }

    /// The broadcast address (last address of the subnet).
    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.base) | !self.mask())
    }

    /// Whether `addr` lies inside this subnet (network and broadcast
    /// included).
    pub fn contains(&self, addr: Ipv4Addr) -> bool {
        u32::from(addr) & self.mask() == u32::from(self.base)
    }

    /// Whether `other` lies entirely inside this subnet.
    pub fn contains_subnet(&self, other: &Ipv4Subnet) -> bool {
        other.prefix_len >= self.prefix_len && self.contains(other.base)
    }
}

impl fmt::Display for Ipv4Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.base, self.prefix_len)
    }
}

impl FromStr for Ipv4Subnet {
    type Err = AddrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parse_error = || AddrError::Parse {
            input: s.to_owned(),
            expected: "an IPv4 subnet in CIDR notation",
        };
        let (addr, len) = s.split_once('/').ok_or_else(parse_error)?;
        let base = addr.parse::<Ipv4Addr>().map_err(|_| parse_error())?;
        let prefix_len = len.parse::<u8>().map_err(|_| parse_error())?;
        Self::new(base, prefix_len)
    }
}

impl From<Ipv4Subnet> for String {
    fn from(subnet: Ipv4Subnet) -> Self {
        subnet.to_string()
    }
}

impl TryFrom<String> for Ipv4Subnet {
    type Error = AddrError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subnet(s: &str) -> Ipv4Subnet {
        s.parse().expect("valid test subnet")
    }

    #[test]
    fn new_rejects_a_base_with_host_bits_set() {
        let err = Ipv4Subnet::new(Ipv4Addr::new(100, 115, 92, 129), 30);

        assert_eq!(
            err,
            Err(AddrError::NotNetworkAddress {
                base: Ipv4Addr::new(100, 115, 92, 129),
                prefix_len: 30
            })
        );
    }

    #[test]
    fn new_rejects_prefixes_longer_than_30() {
        let err = Ipv4Subnet::new(Ipv4Addr::new(10, 0, 0, 0), 31);

        assert!(matches!(
            err,
            Err(AddrError::InvalidPrefixLength { prefix_len: 31, .. })
        ));
    }

    #[test]
    fn display_is_cidr_notation() {
        let s = Ipv4Subnet::new(Ipv4Addr::new(100, 115, 93, 16), 29).expect("valid");

        assert_eq!(s.to_string(), "100.115.93.16/29");
    }

    #[test]
    fn netmask_and_size_follow_the_prefix() {
        let s = subnet("100.115.92.64/28");

        assert_eq!(
            (s.netmask(), s.size()),
            (Ipv4Addr::new(255, 255, 255, 240), 16)
        );
    }

    #[test]
    fn host_and_guest_are_offsets_one_and_two() {
        let s = subnet("100.115.92.0/30");

        assert_eq!(
            (s.host(), s.guest()),
            (
                Ipv4Addr::new(100, 115, 92, 1),
                Ipv4Addr::new(100, 115, 92, 2)
            )
        );
    }

    #[test]
    fn addr_at_excludes_network_and_broadcast() {
        let s = subnet("100.115.92.128/30");

        assert_eq!(
            [s.addr_at(0), s.addr_at(1), s.addr_at(2), s.addr_at(3)],
            [
                None,
                Some(Ipv4Addr::new(100, 115, 92, 129)),
                Some(Ipv4Addr::new(100, 115, 92, 130)),
                None
            ]
        );
    }

    #[test]
    fn contains_is_bounded_by_network_and_broadcast() {
        let s = subnet("100.115.92.64/28");

        assert_eq!(
            [
                s.contains(Ipv4Addr::new(100, 115, 92, 63)),
                s.contains(Ipv4Addr::new(100, 115, 92, 64)),
                s.contains(Ipv4Addr::new(100, 115, 92, 79)),
                s.contains(Ipv4Addr::new(100, 115, 92, 80)),
            ],
            [false, true, true, false]
        );
    }

    #[test]
    fn guest_address_space_is_100_115_92_0_23() {
        assert_eq!(GUEST_ADDRESS_SPACE.to_string(), "100.115.92.0/23");
        assert_eq!(
            GUEST_ADDRESS_SPACE.broadcast(),
            Ipv4Addr::new(100, 115, 93, 255)
        );
    }

    #[test]
    fn parse_rejects_text_without_a_prefix() {
        assert!(matches!(
            "100.115.92.0".parse::<Ipv4Subnet>(),
            Err(AddrError::Parse { .. })
        ));
    }

    #[test]
    fn serde_uses_cidr_text_and_validates_on_the_way_in() {
        let s = subnet("100.115.92.128/30");

        let json = serde_json::to_string(&s).expect("serialise");
        let bad = serde_json::from_str::<Ipv4Subnet>("\"100.115.92.129/30\"");

        assert_eq!(json, "\"100.115.92.128/30\"");
        assert!(bad.is_err());
    }

    #[test]
    fn contains_subnet_accepts_a_smaller_subnet_inside() {
        assert!(GUEST_ADDRESS_SPACE.contains_subnet(&subnet("100.115.92.128/30")));
    }

    #[test]
    fn contains_subnet_accepts_the_subnet_itself() {
        let s = subnet("100.115.92.64/28");

        assert!(s.contains_subnet(&s));
    }

    #[test]
    fn contains_subnet_refuses_a_larger_subnet_around_it() {
        assert!(!subnet("100.115.92.64/28").contains_subnet(&GUEST_ADDRESS_SPACE));
    }

    #[test]
    fn contains_subnet_refuses_a_smaller_subnet_outside() {
        assert!(!GUEST_ADDRESS_SPACE.contains_subnet(&subnet("100.115.94.0/30")));
    }
}
