//! The fwmark bit layout shared with ip rules and traffic accounting
//! (upstream-core §4.4). The values are a contract: shill-era ip rules,
//! accounting and tests read the same bits.
//!
//! ```text
//! bits 31..16  routing tag = table id (ifindex + 1000)   mask 0xffff0000
//! bits 15..14  VPN policy (0x8000 route on VPN, 0x4000 bypass)  0xc000
//! bits 13..8   traffic source                             0x3f00
//! bits  7..5   QoS category                               0x00e0
//! bit   0      legacy SNAT (MASQUERADE) bit               0x0001
//! ```

use serde::{Deserialize, Serialize};

/// Routing tag bits.
pub const ROUTING_MASK: u32 = 0xffff_0000;
/// VPN policy bits.
pub const VPN_MASK: u32 = 0x0000_c000;
/// "Route this on the VPN" intent.
pub const ROUTE_ON_VPN: u32 = 0x0000_8000;
/// "Bypass the VPN" intent.
pub const BYPASS_VPN: u32 = 0x0000_4000;
/// Traffic source bits.
pub const SOURCE_MASK: u32 = 0x0000_3f00;
/// QoS category bits.
pub const QOS_MASK: u32 = 0x0000_00e0;
/// Legacy SNAT bit: packets carrying it are masqueraded on the way out.
pub const SNAT_MARK: u32 = 0x0000_0001;
/// Set by the nftables backend on every packet one of its filter chains
/// accepts, so that a narrow `-m mark --mark 0x10/0x10 -j ACCEPT` in
/// iptables' own filter chain lets it through a DROP policy there (an
/// accept in one nf_tables base chain does not bind another).
pub const ACCEPTED_MARK: u32 = 0x0000_0010;

/// Per-uplink routing tables are numbered ifindex + this.
pub const TABLE_ID_OFFSET: u32 = 1000;

/// The routing tag for routing table `table` (`table << 16`).
pub fn routing_tag(table: u32) -> u32 {
    table << 16
}

/// The routing tag of the uplink with interface index `ifindex`:
/// `(ifindex + 1000) << 16`; eth0 with ifindex 2 gives 0x03ea0000.
pub fn routing_tag_for_ifindex(ifindex: u32) -> u32 {
    routing_tag(ifindex + TABLE_ID_OFFSET)
}

/// Where traffic comes from, as carried in fwmark bits 13..8. Forwarded
/// (guest) sources have bit 13 set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum TrafficSource {
    Unknown,
    Chrome,
    User,
    UpdateEngine,
    System,
    HostVpn,
    Arc,
    CrostiniVm,
    ParallelsVm,
    TetherDownstream,
    ArcVpn,
    BruschettaVm,
    BorealisVm,
    WifiDirect,
    WifiLohs,
}

impl TrafficSource {
    /// Every source, in the accounting order of upstream `kAllSources`
    /// (the order of the rules in `rx_<if>`/`tx_<if>`), then `Unknown`.
    pub const ACCOUNTING_ORDER: [TrafficSource; 14] = [
        TrafficSource::Chrome,
        TrafficSource::User,
        TrafficSource::UpdateEngine,
        TrafficSource::System,
        TrafficSource::HostVpn,
        TrafficSource::Arc,
        TrafficSource::BorealisVm,
        TrafficSource::BruschettaVm,
        TrafficSource::CrostiniVm,
        TrafficSource::ParallelsVm,
        TrafficSource::TetherDownstream,
        TrafficSource::WifiDirect,
        TrafficSource::WifiLohs,
        TrafficSource::ArcVpn,
    ];

    /// The source's value within [`SOURCE_MASK`].
    pub fn fwmark(self) -> u32 {
        match self {
            TrafficSource::Unknown => 0,
            TrafficSource::Chrome => 0x100,
            TrafficSource::User => 0x200,
            TrafficSource::UpdateEngine => 0x300,
            TrafficSource::System => 0x400,
            TrafficSource::HostVpn => 0x500,
            TrafficSource::Arc => 0x2000,
            TrafficSource::CrostiniVm => 0x2100,
            TrafficSource::ParallelsVm => 0x2200,
            TrafficSource::TetherDownstream => 0x2300,
            TrafficSource::ArcVpn => 0x2400,
            TrafficSource::BruschettaVm => 0x2500,
            TrafficSource::BorealisVm => 0x2600,
            TrafficSource::WifiDirect => 0x2700,
            TrafficSource::WifiLohs => 0x2800,
        }
    }

    /// The source whose fwmark value is `mark & SOURCE_MASK`.
    pub fn from_fwmark(mark: u32) -> Option<TrafficSource> {
        let bits = mark & SOURCE_MASK;
        if bits == 0 {
            return Some(TrafficSource::Unknown);
        }
        TrafficSource::ACCOUNTING_ORDER
            .into_iter()
            .find(|s| s.fwmark() == bits)
    }

    /// Whether this source is forwarded guest traffic (bit 13).
    pub fn is_forwarded(self) -> bool {
        self.fwmark() & 0x2000 != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eth0_with_ifindex_2_has_routing_tag_0x03ea0000() {
        assert_eq!(routing_tag_for_ifindex(2), 0x03ea_0000);
    }

    #[test]
    fn source_values_match_the_upstream_table() {
        let expected = [
            (TrafficSource::Unknown, 0),
            (TrafficSource::Chrome, 0x100),
            (TrafficSource::User, 0x200),
            (TrafficSource::UpdateEngine, 0x300),
            (TrafficSource::System, 0x400),
            (TrafficSource::HostVpn, 0x500),
            (TrafficSource::Arc, 0x2000),
            (TrafficSource::CrostiniVm, 0x2100),
            (TrafficSource::ParallelsVm, 0x2200),
            (TrafficSource::TetherDownstream, 0x2300),
            (TrafficSource::ArcVpn, 0x2400),
            (TrafficSource::BruschettaVm, 0x2500),
            (TrafficSource::BorealisVm, 0x2600),
            (TrafficSource::WifiDirect, 0x2700),
            (TrafficSource::WifiLohs, 0x2800),
        ];
        for (source, value) in expected {
            assert_eq!(source.fwmark(), value, "{source:?}");
            assert_eq!(TrafficSource::from_fwmark(value), Some(source));
            assert_eq!(source.fwmark() & !SOURCE_MASK, 0);
        }
    }

    #[test]
    fn only_guest_sources_are_forwarded() {
        assert!(TrafficSource::Arc.is_forwarded());
        assert!(TrafficSource::WifiLohs.is_forwarded());
        assert!(!TrafficSource::System.is_forwarded());
        assert!(!TrafficSource::Unknown.is_forwarded());
    }
}
