//! MAC addresses for guest-facing interfaces.
//!
//! Most interfaces get a fresh random, locally administered unicast MAC. ARCVM
//! instead needs MACs that are the same on every boot (the guest keys its
//! network configuration on them), so those come from the fixed
//! `42:37:05:13:17:<index>` family, and random MACs are kept out of that
//! family so the two can never collide.

use std::collections::HashSet;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::{AddrError, RandomSource, MAX_RANDOM_ATTEMPTS};

/// First five bytes of every stable MAC; the last byte is the index.
pub const STABLE_MAC_PREFIX: [u8; 5] = [0x42, 0x37, 0x05, 0x13, 0x17];

/// Bit 0 of the first byte: set means group (multicast) address.
const MULTICAST_BIT: u8 = 0x01;
/// Bit 1 of the first byte: set means locally administered.
const LOCAL_BIT: u8 = 0x02;

/// An Ethernet MAC address. Displayed and serialised as `aa:bb:cc:dd:ee:ff`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// The six octets.
    pub const fn octets(&self) -> [u8; 6] {
        self.0
    }

    /// Whether the locally administered bit is set.
    pub const fn is_locally_administered(&self) -> bool {
        self.0[0] & LOCAL_BIT != 0
    }

    /// Whether the multicast (group) bit is set.
    pub const fn is_multicast(&self) -> bool {
        self.0[0] & MULTICAST_BIT != 0
    }

    /// Whether this is one of the stable `42:37:05:13:17:xx` addresses.
    pub fn is_stable(&self) -> bool {
        self.0[..5] == STABLE_MAC_PREFIX
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl FromStr for MacAddr {
    type Err = AddrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parse_error = || AddrError::Parse {
            input: s.to_owned(),
            expected: "a MAC address aa:bb:cc:dd:ee:ff",
        };
        let mut octets = [0u8; 6];
        let mut parts = s.split(':');
        for octet in &mut octets {
            let part = parts.next().ok_or_else(parse_error)?;
            if part.len() != 2 {
                return Err(parse_error());
            }
            *octet = u8::from_str_radix(part, 16).map_err(|_| parse_error())?;
        }
        if parts.next().is_some() {
            return Err(parse_error());
        }
        Ok(Self(octets))
    }
}

impl From<MacAddr> for String {
    fn from(mac: MacAddr) -> Self {
        mac.to_string()
    }
}

impl TryFrom<String> for MacAddr {
    type Error = AddrError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

/// Hands out random MACs that it has not handed out before.
///
/// The generator only keeps the bookkeeping; randomness is passed in so one
/// [`RandomSource`] can serve several allocators.
#[derive(Debug, Default, Clone)]
pub struct MacGenerator {
    issued: HashSet<MacAddr>,
}

impl MacGenerator {
    /// A generator that has issued nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The stable MAC `42:37:05:13:17:<index>`.
    pub const fn stable(index: u8) -> MacAddr {
        let p = STABLE_MAC_PREFIX;
        MacAddr([p[0], p[1], p[2], p[3], p[4], index])
    }

    /// A random unicast, locally administered MAC that this generator has
    /// not issued before and that is not in the stable family.
    pub fn random(&mut self, rng: &mut dyn RandomSource) -> Result<MacAddr, AddrError> {
        for _ in 0..MAX_RANDOM_ATTEMPTS {
            let mut octets = [0u8; 6];
            rng.fill(&mut octets)?;
            octets[0] = (octets[0] & !MULTICAST_BIT) | LOCAL_BIT;
            let mac = MacAddr(octets);
            if mac.is_stable() {
                continue;
            }
            if self.issued.insert(mac) {
                return Ok(mac);
            }
        }
        Err(AddrError::RandomRetriesExhausted {
            what: "MAC address",
            attempts: MAX_RANDOM_ATTEMPTS,
        })
    }

    /// Records `mac` as issued (re-adoption after restart). Returns `false`
    /// if it already was.
    pub fn mark_issued(&mut self, mac: MacAddr) -> bool {
        self.issued.insert(mac)
    }

    /// Forgets `mac` once its interface is gone, so long-running daemons do
    /// not accumulate every MAC ever made. Returns `false` if it was unknown.
    pub fn forget(&mut self, mac: &MacAddr) -> bool {
        self.issued.remove(mac)
    }

    /// Whether `mac` is currently recorded as issued.
    pub fn is_issued(&self, mac: &MacAddr) -> bool {
        self.issued.contains(mac)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::random::ScriptedRandom;
    use crate::SeededRandom;

    #[test]
    fn stable_mac_is_the_fixed_prefix_with_the_index_last() {
        let mac = MacGenerator::stable(3);

        assert_eq!(mac.to_string(), "42:37:05:13:17:03");
    }

    #[test]
    fn random_mac_is_locally_administered_unicast() {
        // 0xff would be multicast and universally administered as drawn.
        let mut rng = ScriptedRandom::new(&[&[0xff, 1, 2, 3, 4, 5]]);

        let mac = MacGenerator::new()
            .random(&mut rng)
            .expect("script has bytes");

        assert_eq!(mac.octets(), [0xfe, 1, 2, 3, 4, 5]);
        assert!(mac.is_locally_administered() && !mac.is_multicast());
    }

    #[test]
    fn random_mac_never_repeats_one_already_issued() {
        let draw: &[u8] = &[0x02, 9, 9, 9, 9, 9];
        let mut rng = ScriptedRandom::new(&[draw, draw, &[0x06, 1, 1, 1, 1, 1]]);
        let mut macs = MacGenerator::new();
        let first = macs.random(&mut rng).expect("script has bytes");

        let second = macs.random(&mut rng).expect("script has bytes");

        assert_ne!(first, second);
        assert_eq!(second.to_string(), "06:01:01:01:01:01");
    }

    #[test]
    fn random_mac_skips_the_stable_family() {
        let stable: &[u8] = &[0x42, 0x37, 0x05, 0x13, 0x17, 0x01];
        let mut rng = ScriptedRandom::new(&[stable, &[0x0a, 0, 0, 0, 0, 1]]);

        let mac = MacGenerator::new()
            .random(&mut rng)
            .expect("script has bytes");

        assert_eq!(mac.to_string(), "0a:00:00:00:00:01");
    }

    #[test]
    fn random_mac_gives_up_when_the_source_only_repeats() {
        let draw: &[u8] = &[0x02, 9, 9, 9, 9, 9];
        let script: Vec<&[u8]> = vec![draw; 1 + MAX_RANDOM_ATTEMPTS as usize];
        let mut rng = ScriptedRandom::new(&script);
        let mut macs = MacGenerator::new();
        macs.random(&mut rng).expect("first draw is new");

        let err = macs.random(&mut rng);

        assert!(matches!(err, Err(AddrError::RandomRetriesExhausted { .. })));
    }

    #[test]
    fn random_macs_from_a_real_sequence_are_distinct() {
        let mut rng = SeededRandom::new(1);
        let mut macs = MacGenerator::new();

        let drawn: HashSet<MacAddr> = (0..1000)
            .map(|_| macs.random(&mut rng))
            .collect::<Result<_, _>>()
            .expect("seeded source never fails");

        assert_eq!(drawn.len(), 1000);
    }

    #[test]
    fn forget_lets_a_mac_be_issued_again() {
        let draw: &[u8] = &[0x02, 9, 9, 9, 9, 9];
        let mut rng = ScriptedRandom::new(&[draw, draw]);
        let mut macs = MacGenerator::new();
        let first = macs.random(&mut rng).expect("script has bytes");
        macs.forget(&first);

        let again = macs.random(&mut rng).expect("script has bytes");

        assert_eq!(first, again);
    }

    #[test]
    fn parse_round_trips_display() {
        let mac: MacAddr = "42:37:05:13:17:0a".parse().expect("valid MAC");

        assert_eq!(mac.to_string(), "42:37:05:13:17:0a");
    }

    #[test]
    fn parse_rejects_a_short_address() {
        assert!("42:37:05:13:17".parse::<MacAddr>().is_err());
    }

    #[test]
    fn a_universally_administered_mac_is_not_locally_administered() {
        let mac: MacAddr = "00:1a:11:22:33:44".parse().expect("valid MAC");

        assert!(!mac.is_locally_administered());
    }

    #[test]
    fn a_group_mac_is_multicast() {
        let mac: MacAddr = "01:00:5e:00:00:fb".parse().expect("valid MAC");

        assert!(mac.is_multicast());
    }

    #[test]
    fn mac_serializes_as_colon_separated_hex() {
        let json = serde_json::to_string(&MacGenerator::stable(10)).expect("serialise");

        assert_eq!(json, "\"42:37:05:13:17:0a\"");
    }

    #[test]
    fn mark_issued_reports_a_new_mac_as_new() {
        let mut macs = MacGenerator::new();

        assert!(macs.mark_issued(MacGenerator::stable(1)));
    }

    #[test]
    fn mark_issued_reports_a_mac_issued_before() {
        let mut macs = MacGenerator::new();
        macs.mark_issued(MacGenerator::stable(1));

        assert!(!macs.mark_issued(MacGenerator::stable(1)));
    }

    #[test]
    fn is_issued_tells_issued_macs_from_others() {
        let mut macs = MacGenerator::new();
        macs.mark_issued(MacGenerator::stable(1));

        assert_eq!(
            (
                macs.is_issued(&MacGenerator::stable(1)),
                macs.is_issued(&MacGenerator::stable(2))
            ),
            (true, false)
        );
    }
}
