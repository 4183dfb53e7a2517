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

/// What `TagSocket` may change in a socket's mark: the routing tag and the
/// VPN policy bits. The socket's other bits (source, QoS, ...) stay.
pub const SOCKET_TAG_MASK: u32 = ROUTING_MASK | VPN_MASK;

/// How a tagged socket's traffic treats the VPN.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum VpnPolicy {
    /// No VPN bit: the routing of the socket's owner decides.
    Default,
    /// [`ROUTE_ON_VPN`].
    RouteOnVpn,
    /// [`BYPASS_VPN`].
    BypassVpn,
}

/// What `TagSocket` puts into a socket's mark, under [`SOCKET_TAG_MASK`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SocketTag {
    /// The network (its interface index) whose routing tag the socket gets.
    network: Option<u32>,
    vpn: VpnPolicy,
}

impl SocketTag {
    /// A tag, unless it asks for the VPN and a network at once (the
    /// original refuses that too: the two routings contradict).
    pub fn new(network: Option<u32>, vpn: VpnPolicy) -> Result<SocketTag, &'static str> {
        if network.is_some() && vpn == VpnPolicy::RouteOnVpn {
            return Err("ROUTE_ON_VPN and a network_id cannot be asked for together");
        }
        if network
            .is_some_and(|ifindex| ifindex == 0 || ifindex > u32::from(u16::MAX) - TABLE_ID_OFFSET)
        {
            return Err("the network_id is out of range");
        }
        Ok(SocketTag { network, vpn })
    }

    pub fn network(self) -> Option<u32> {
        self.network
    }

    pub fn vpn(self) -> VpnPolicy {
        self.vpn
    }

    /// The bits under [`SOCKET_TAG_MASK`].
    pub fn bits(self) -> u32 {
        let routing = self.network.map(routing_tag_for_ifindex).unwrap_or(0);
        let vpn = match self.vpn {
            VpnPolicy::Default => 0,
            VpnPolicy::RouteOnVpn => ROUTE_ON_VPN,
            VpnPolicy::BypassVpn => BYPASS_VPN,
        };
        routing | vpn
    }

    /// `old` with its routing and VPN bits replaced by this tag's.
    pub fn retag(self, old: u32) -> u32 {
        (old & !SOCKET_TAG_MASK) | self.bits()
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

    #[test]
    fn socket_tags_set_only_routing_and_vpn_bits() {
        let bypass = SocketTag::new(None, VpnPolicy::BypassVpn).unwrap();
        assert_eq!(bypass.bits(), 0x4000);
        // Source and QoS bits of the old mark stay; old routing/VPN bits go.
        assert_eq!(
            bypass.retag(0x03ea_8000 | 0x2100 | 0x20 | 1),
            0x4000 | 0x2100 | 0x20 | 1
        );
        let on_vpn = SocketTag::new(None, VpnPolicy::RouteOnVpn).unwrap();
        assert_eq!(on_vpn.retag(0), 0x8000);
        let eth0 = SocketTag::new(Some(2), VpnPolicy::Default).unwrap();
        assert_eq!(eth0.bits(), 0x03ea_0000);
        assert_eq!(eth0.retag(0x4000 | 0x0400), 0x03ea_0400);
        let eth0_bypass = SocketTag::new(Some(2), VpnPolicy::BypassVpn).unwrap();
        assert_eq!(eth0_bypass.retag(0xffff_ffff), 0x03ea_4000 | 0x3fff);
        let plain = SocketTag::new(None, VpnPolicy::Default).unwrap();
        assert_eq!(plain.retag(0xffff_ffff), 0x3fff);
        assert_eq!(SOCKET_TAG_MASK, 0xffff_c000);
    }

    #[test]
    fn socket_tag_keeps_what_it_was_made_of() {
        let tag = SocketTag::new(Some(7), VpnPolicy::BypassVpn).unwrap();
        assert_eq!((tag.network(), tag.vpn()), (Some(7), VpnPolicy::BypassVpn));
        let tag = SocketTag::new(None, VpnPolicy::RouteOnVpn).unwrap();
        assert_eq!((tag.network(), tag.vpn()), (None, VpnPolicy::RouteOnVpn));
    }

    #[test]
    fn socket_tag_refuses_vpn_with_a_network_and_out_of_range_networks() {
        assert!(SocketTag::new(Some(2), VpnPolicy::RouteOnVpn).is_err());
        assert!(SocketTag::new(Some(0), VpnPolicy::Default).is_err());
        assert!(SocketTag::new(Some(64535), VpnPolicy::Default).is_ok());
        assert!(SocketTag::new(Some(64536), VpnPolicy::Default).is_err());
        assert_eq!(
            SocketTag::new(Some(64535), VpnPolicy::Default)
                .unwrap()
                .bits(),
            0xffff_0000
        );
    }
}
