//! Private IPv6 (ULA) subnets for ConnectNamespace.
//!
//! A namespace that asks for static IPv6 gets its own random /64 inside
//! `fd00::/8`, NATed to the uplink. Random prefixes keep namespaces on
//! different devices or boots from agreeing on addresses by accident; this
//! module remembers which /64s and which addresses inside them are in use so
//! none is handed out twice while still in use.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::Ipv6Addr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::{AddrError, RandomSource, MAX_RANDOM_ATTEMPTS};

/// Prefix length of every ULA subnet handed out.
pub const ULA_SUBNET_PREFIX_LEN: u8 = 64;

/// `fd00::/8`: the locally assigned half of the ULA space.
pub const ULA_SPACE: Ipv6Subnet = Ipv6Subnet {
    base: Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0),
    prefix_len: 8,
};

/// `fd64:ffff::/64`: reserved for the DNS proxy's loopback addresses, so it
/// is never handed to a namespace.
pub const DNS_PROXY_ULA_SUBNET: Ipv6Subnet = Ipv6Subnet {
    base: Ipv6Addr::new(0xfd64, 0xffff, 0, 0, 0, 0, 0, 0),
    prefix_len: 64,
};

/// An IPv6 network address and prefix length. Serialised as CIDR text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct Ipv6Subnet {
    base: Ipv6Addr,
    prefix_len: u8,
}

impl Ipv6Subnet {
    /// Checks that `prefix_len <= 128` and `base` has no bits set past it.
    pub fn new(base: Ipv6Addr, prefix_len: u8) -> Result<Self, AddrError> {
        if prefix_len > 128 {
            return Err(AddrError::InvalidIpv6PrefixLength { prefix_len });
        }
        let subnet = Self { base, prefix_len };
        if u128::from(base) & !subnet.mask() != 0 {
            return Err(AddrError::NotIpv6NetworkAddress {
                subnet_text: format!("{base}/{prefix_len}"),
            });
        }
        Ok(subnet)
    }

    /// The network address.
    pub const fn base(&self) -> Ipv6Addr {
        self.base
    }

    /// The prefix length.
    pub const fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    fn mask(&self) -> u128 {
        u128::MAX
            .checked_shl(128 - u32::from(self.prefix_len))
            .unwrap_or(0)
    }

    /// Whether `addr` lies inside this subnet.
    pub fn contains(&self, addr: Ipv6Addr) -> bool {
        u128::from(addr) & self.mask() == u128::from(self.base)
    }

    /// Whether `other` lies entirely inside this subnet.
    pub fn contains_subnet(&self, other: &Ipv6Subnet) -> bool {
        other.prefix_len >= self.prefix_len && self.contains(other.base)
    }
}

impl fmt::Display for Ipv6Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.base, self.prefix_len)
    }
}

impl FromStr for Ipv6Subnet {
    type Err = AddrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parse_error = || AddrError::Parse {
            input: s.to_owned(),
            expected: "an IPv6 subnet in CIDR notation",
        };
        let (addr, len) = s.split_once('/').ok_or_else(parse_error)?;
        let base = addr.parse::<Ipv6Addr>().map_err(|_| parse_error())?;
        let prefix_len = len.parse::<u8>().map_err(|_| parse_error())?;
        Self::new(base, prefix_len)
    }
}

impl From<Ipv6Subnet> for String {
    fn from(subnet: Ipv6Subnet) -> Self {
        subnet.to_string()
    }
}

impl TryFrom<String> for Ipv6Subnet {
    type Error = AddrError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

/// Which ULA /64s are in use, and which addresses inside each.
///
/// Randomness is passed in so one [`RandomSource`] can serve several
/// allocators.
#[derive(Debug, Default, Clone)]
pub struct UlaAllocator {
    subnets: BTreeMap<Ipv6Subnet, HashSet<Ipv6Addr>>,
}

impl UlaAllocator {
    /// An allocator with nothing in use.
    pub fn new() -> Self {
        Self::default()
    }

    /// A random /64 inside `fd00::/8` that is neither in use nor reserved.
    pub fn allocate_subnet(&mut self, rng: &mut dyn RandomSource) -> Result<Ipv6Subnet, AddrError> {
        for _ in 0..MAX_RANDOM_ATTEMPTS {
            let mut octets = [0u8; 16];
            octets[0] = 0xfd;
            rng.fill(&mut octets[1..8])?;
            let subnet = Ipv6Subnet {
                base: Ipv6Addr::from(octets),
                prefix_len: ULA_SUBNET_PREFIX_LEN,
            };
            if self.claim(subnet).is_ok() {
                return Ok(subnet);
            }
        }
        Err(AddrError::RandomRetriesExhausted {
            what: "ULA /64",
            attempts: MAX_RANDOM_ATTEMPTS,
        })
    }

    /// Records `subnet` as in use (re-adoption after restart).
    pub fn mark_allocated(&mut self, subnet: Ipv6Subnet) -> Result<(), AddrError> {
        if subnet.prefix_len != ULA_SUBNET_PREFIX_LEN || !ULA_SPACE.contains_subnet(&subnet) {
            return Err(AddrError::NotUlaSubnet { subnet });
        }
        self.claim(subnet)
    }

    fn claim(&mut self, subnet: Ipv6Subnet) -> Result<(), AddrError> {
        if subnet == DNS_PROXY_ULA_SUBNET || self.subnets.contains_key(&subnet) {
            return Err(AddrError::Ipv6SubnetTaken { subnet });
        }
        self.subnets.insert(subnet, HashSet::new());
        Ok(())
    }

    /// Returns `subnet` and every address given out inside it.
    pub fn release(&mut self, subnet: &Ipv6Subnet) -> Result<(), AddrError> {
        self.subnets
            .remove(subnet)
            .map(|_| ())
            .ok_or(AddrError::Ipv6SubnetNotAllocated { subnet: *subnet })
    }

    /// Whether `subnet` is in use.
    pub fn is_allocated(&self, subnet: &Ipv6Subnet) -> bool {
        self.subnets.contains_key(subnet)
    }

    /// A random address inside the allocated `subnet` that is not its base
    /// address and not one already given out.
    pub fn random_address_in(
        &mut self,
        subnet: &Ipv6Subnet,
        rng: &mut dyn RandomSource,
    ) -> Result<Ipv6Addr, AddrError> {
        let given = self
            .subnets
            .get_mut(subnet)
            .ok_or(AddrError::Ipv6SubnetNotAllocated { subnet: *subnet })?;
        let base = u128::from(subnet.base);
        for _ in 0..MAX_RANDOM_ATTEMPTS {
            let mut bytes = [0u8; 16];
            rng.fill(&mut bytes)?;
            let addr = Ipv6Addr::from(base | (u128::from_be_bytes(bytes) & !subnet.mask()));
            if u128::from(addr) != base && given.insert(addr) {
                return Ok(addr);
            }
        }
        Err(AddrError::RandomRetriesExhausted {
            what: "IPv6 address",
            attempts: MAX_RANDOM_ATTEMPTS,
        })
    }

    /// Records `addr` as given out inside the allocated `subnet`
    /// (re-adoption after restart).
    pub fn mark_address_given(
        &mut self,
        subnet: &Ipv6Subnet,
        addr: Ipv6Addr,
    ) -> Result<(), AddrError> {
        let given = self
            .subnets
            .get_mut(subnet)
            .ok_or(AddrError::Ipv6SubnetNotAllocated { subnet: *subnet })?;
        if !subnet.contains(addr) || addr == subnet.base || !given.insert(addr) {
            return Err(AddrError::Ipv6AddressUnusable {
                subnet: *subnet,
                addr,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::random::ScriptedRandom;
    use crate::SeededRandom;

    const PREFIX_A: &[u8] = &[0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77];
    const PREFIX_B: &[u8] = &[0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07];

    fn subnet(s: &str) -> Ipv6Subnet {
        s.parse().expect("valid test subnet")
    }

    #[test]
    fn allocated_subnet_is_a_64_inside_fd00_8() {
        let mut rng = ScriptedRandom::new(&[PREFIX_A]);

        let s = UlaAllocator::new()
            .allocate_subnet(&mut rng)
            .expect("script has bytes");

        assert_eq!(s.to_string(), "fd11:2233:4455:6677::/64");
    }

    #[test]
    fn allocate_subnet_never_repeats_one_in_use() {
        let mut rng = ScriptedRandom::new(&[PREFIX_A, PREFIX_A, PREFIX_B]);
        let mut ula = UlaAllocator::new();
        let first = ula.allocate_subnet(&mut rng).expect("script has bytes");

        let second = ula.allocate_subnet(&mut rng).expect("script has bytes");

        assert_ne!(first, second);
        assert_eq!(second.to_string(), "fd01:203:405:607::/64");
    }

    #[test]
    fn allocate_subnet_skips_the_dns_proxy_prefix() {
        let dns: &[u8] = &[0x64, 0xff, 0xff, 0, 0, 0, 0];
        let mut rng = ScriptedRandom::new(&[dns, PREFIX_A]);

        let s = UlaAllocator::new()
            .allocate_subnet(&mut rng)
            .expect("script has bytes");

        assert_ne!(s, DNS_PROXY_ULA_SUBNET);
    }

    #[test]
    fn release_makes_a_subnet_available_again() {
        let mut rng = ScriptedRandom::new(&[PREFIX_A, PREFIX_A]);
        let mut ula = UlaAllocator::new();
        let first = ula.allocate_subnet(&mut rng).expect("script has bytes");
        ula.release(&first).expect("allocated");

        let again = ula.allocate_subnet(&mut rng).expect("script has bytes");

        assert_eq!(first, again);
    }

    #[test]
    fn release_rejects_a_subnet_never_allocated() {
        let err = UlaAllocator::new().release(&subnet("fd00:1::/64"));

        assert!(matches!(err, Err(AddrError::Ipv6SubnetNotAllocated { .. })));
    }

    #[test]
    fn random_address_is_never_the_base_address() {
        let mut rng = ScriptedRandom::new(&[PREFIX_A, &[0u8; 16], &[0xffu8; 16]]);
        let mut ula = UlaAllocator::new();
        let s = ula.allocate_subnet(&mut rng).expect("script has bytes");

        let addr = ula
            .random_address_in(&s, &mut rng)
            .expect("script has bytes");

        assert_ne!(addr, s.base());
        assert_eq!(addr.to_string(), "fd11:2233:4455:6677:ffff:ffff:ffff:ffff");
    }

    #[test]
    fn random_address_never_repeats_one_already_given() {
        let mut iid = [0u8; 16];
        iid[15] = 2;
        let mut other = [0u8; 16];
        other[15] = 3;
        let mut rng = ScriptedRandom::new(&[PREFIX_A, &iid, &iid, &other]);
        let mut ula = UlaAllocator::new();
        let s = ula.allocate_subnet(&mut rng).expect("script has bytes");
        let host = ula
            .random_address_in(&s, &mut rng)
            .expect("script has bytes");

        let peer = ula
            .random_address_in(&s, &mut rng)
            .expect("script has bytes");

        assert_ne!(host, peer);
        assert_eq!(peer.to_string(), "fd11:2233:4455:6677::3");
    }

    #[test]
    fn random_address_stays_inside_the_subnet() {
        let mut rng = SeededRandom::new(9);
        let mut ula = UlaAllocator::new();
        let s = ula.allocate_subnet(&mut rng).expect("seeded source");

        let addr = ula.random_address_in(&s, &mut rng).expect("seeded source");

        assert!(s.contains(addr));
    }

    #[test]
    fn random_address_requires_an_allocated_subnet() {
        let mut rng = SeededRandom::new(9);

        let err = UlaAllocator::new().random_address_in(&subnet("fd00:1::/64"), &mut rng);

        assert!(matches!(err, Err(AddrError::Ipv6SubnetNotAllocated { .. })));
    }

    #[test]
    fn mark_allocated_rejects_a_subnet_outside_fd00_8() {
        let err = UlaAllocator::new().mark_allocated(subnet("fc00:1::/64"));

        assert!(matches!(err, Err(AddrError::NotUlaSubnet { .. })));
    }

    #[test]
    fn mark_address_given_rejects_the_base_address() {
        let mut ula = UlaAllocator::new();
        let s = subnet("fd00:1::/64");
        ula.mark_allocated(s).expect("free");

        let err = ula.mark_address_given(&s, s.base());

        assert!(matches!(err, Err(AddrError::Ipv6AddressUnusable { .. })));
    }

    #[test]
    fn ipv6_subnet_rejects_host_bits_past_the_prefix() {
        assert!(matches!(
            "fd00::1/64".parse::<Ipv6Subnet>(),
            Err(AddrError::NotIpv6NetworkAddress { .. })
        ));
    }

    #[test]
    fn ipv6_subnet_keeps_its_prefix_length() {
        assert_eq!(subnet("fd00:1::/64").prefix_len(), 64);
    }

    #[test]
    fn ipv6_subnet_serializes_as_cidr_text() {
        let json = serde_json::to_string(&subnet("fd00:1::/64")).expect("serialise");

        assert_eq!(json, "\"fd00:1::/64\"");
    }

    #[test]
    fn an_allocated_subnet_is_reported_allocated() {
        let mut rng = ScriptedRandom::new(&[PREFIX_A]);
        let mut ula = UlaAllocator::new();

        let s = ula.allocate_subnet(&mut rng).expect("script has bytes");

        assert!(ula.is_allocated(&s));
    }

    #[test]
    fn a_subnet_never_allocated_is_not_reported_allocated() {
        assert!(!UlaAllocator::new().is_allocated(&subnet("fd00:1::/64")));
    }

    #[test]
    fn mark_address_given_accepts_a_new_address_inside_the_subnet() {
        let mut ula = UlaAllocator::new();
        let s = subnet("fd00:1::/64");
        ula.mark_allocated(s).expect("free");

        let result = ula.mark_address_given(&s, "fd00:1::2".parse().expect("valid"));

        assert_eq!(result, Ok(()));
    }

    #[test]
    fn mark_address_given_rejects_an_address_outside_the_subnet() {
        let mut ula = UlaAllocator::new();
        let s = subnet("fd00:1::/64");
        ula.mark_allocated(s).expect("free");

        let err = ula.mark_address_given(&s, "fd00:2::2".parse().expect("valid"));

        assert!(matches!(err, Err(AddrError::Ipv6AddressUnusable { .. })));
    }

    #[test]
    fn mark_address_given_rejects_an_address_given_already() {
        let mut ula = UlaAllocator::new();
        let s = subnet("fd00:1::/64");
        let addr: Ipv6Addr = "fd00:1::2".parse().expect("valid");
        ula.mark_allocated(s).expect("free");
        ula.mark_address_given(&s, addr).expect("new address");

        let err = ula.mark_address_given(&s, addr);

        assert!(matches!(err, Err(AddrError::Ipv6AddressUnusable { .. })));
    }
}
