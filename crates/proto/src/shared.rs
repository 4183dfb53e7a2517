//! Messages used inside several requests, responses and signals.
//!
//! Field comments give the protobuf field number and, for addresses, which of
//! the two encodings of [`crate::net_order`] the field uses.

use std::net::{IpAddr, Ipv4Addr};

use crate::net_order::{ipv4_from_addr4, ipv4_from_net_u32, ipv4_to_addr4, ipv4_to_net_u32};

/// An IPv4 subnet: base address and prefix length.
///
/// The original first carried the base address as `u32 net-order` in field 1
/// and later moved it to `addr4` bytes in field 3, keeping field 1 for old
/// clients. Servers must fill both; [`IPv4Subnet::new`] does.
#[derive(Clone, PartialEq, prost::Message)]
pub struct IPv4Subnet {
    /// 1: base address, `u32 net-order`. Deprecated: kept for old clients;
    /// read [`IPv4Subnet::addr`] (through [`IPv4Subnet::addr_v4`]) instead.
    #[prost(uint32, tag = "1")]
    pub base_addr: u32,
    /// 2: prefix length in bits.
    #[prost(uint32, tag = "2")]
    pub prefix_len: u32,
    /// 3: base address, `addr4`.
    #[prost(bytes = "vec", tag = "3")]
    pub addr: Vec<u8>,
}

impl IPv4Subnet {
    /// A subnet with both the deprecated field 1 and field 3 set to `addr`.
    pub fn new(addr: Ipv4Addr, prefix_len: u32) -> Self {
        Self {
            base_addr: ipv4_to_net_u32(addr),
            prefix_len,
            addr: ipv4_to_addr4(addr),
        }
    }

    /// The base address: from field 3, or from the deprecated field 1 when a
    /// peer left field 3 empty. `None` if field 3 is neither empty nor 4 bytes.
    pub fn addr_v4(&self) -> Option<Ipv4Addr> {
        if self.addr.is_empty() {
            Some(ipv4_from_net_u32(self.base_addr))
        } else {
            ipv4_from_addr4(&self.addr)
        }
    }
}

/// An IPv4 or IPv6 address with a prefix length.
#[derive(Clone, PartialEq, prost::Message)]
pub struct IPAddrCIDR {
    /// 1: the address, 4 bytes (IPv4) or 16 bytes (IPv6), network order.
    #[prost(bytes = "vec", tag = "1")]
    pub addr: Vec<u8>,
    /// 2: prefix length in bits.
    #[prost(int32, tag = "2")]
    pub prefix_len: i32,
}

impl IPAddrCIDR {
    /// `addr/prefix_len`, with the address in its 4- or 16-byte form.
    pub fn new(addr: IpAddr, prefix_len: i32) -> Self {
        let addr = match addr {
            IpAddr::V4(v4) => v4.octets().to_vec(),
            IpAddr::V6(v6) => v6.octets().to_vec(),
        };
        Self { addr, prefix_len }
    }

    /// The address, or `None` unless field 1 is 4 or 16 bytes long.
    pub fn ip(&self) -> Option<IpAddr> {
        if let Ok(octets) = <[u8; 4]>::try_from(self.addr.as_slice()) {
            Some(IpAddr::from(octets))
        } else if let Ok(octets) = <[u8; 16]>::try_from(self.addr.as_slice()) {
            Some(IpAddr::from(octets))
        } else {
            None
        }
    }
}

/// A virtual device patchpanel created for a guest (ARC, a VM) and, when the
/// guest follows one physical uplink, that uplink.
#[derive(Clone, PartialEq, prost::Message)]
pub struct NetworkDevice {
    /// 1: host-side interface name (e.g. `arc_eth0`, `vmtap0`).
    #[prost(string, tag = "1")]
    pub ifname: String,
    /// 2: the guest's IPv4 address, `u32 net-order`.
    #[prost(uint32, tag = "2")]
    pub ipv4_addr: u32,
    /// 3: the subnet shared by host and guest.
    #[prost(message, optional, tag = "3")]
    pub ipv4_subnet: Option<IPv4Subnet>,
    /// 4: which kind of guest, a [`network_device::GuestType`].
    #[prost(enumeration = "network_device::GuestType", tag = "4")]
    pub guest_type: i32,
    /// 5: the physical uplink this device follows; empty if none.
    #[prost(string, tag = "5")]
    pub phys_ifname: String,
    /// 6: the host's IPv4 address on the subnet, `u32 net-order`.
    #[prost(uint32, tag = "6")]
    pub host_ipv4_addr: u32,
    /// 7: interface name inside the guest.
    #[prost(string, tag = "7")]
    pub guest_ifname: String,
    /// 8: the DNS proxy's IPv4 address for this guest, `addr4`; empty if none.
    #[prost(bytes = "vec", tag = "8")]
    pub dns_proxy_ipv4_addr: Vec<u8>,
    /// 9: the DNS proxy's IPv6 address, 16 bytes; empty if none.
    #[prost(bytes = "vec", tag = "9")]
    pub dns_proxy_ipv6_addr: Vec<u8>,
    /// 10: technology of the physical uplink, a
    /// [`network_device::TechnologyType`].
    #[prost(enumeration = "network_device::TechnologyType", tag = "10")]
    pub technology_type: i32,
}

/// Enums nested in [`NetworkDevice`].
pub mod network_device {
    proto_enum! {
        /// The kind of guest a [`super::NetworkDevice`] serves.
        pub enum GuestType {
            Unknown = 0 => "UNKNOWN",
            /// ARC++ (Android in a container).
            Arc = 1 => "ARC",
            /// ARCVM (Android in a VM).
            Arcvm = 2 => "ARCVM",
            /// Crostini's Termina VM.
            TerminaVm = 3 => "TERMINA_VM",
            /// Parallels (Plugin VM).
            ParallelsVm = 4 => "PARALLELS_VM",
            /// A namespace connected with `ConnectNamespace` (since
            /// 2025-10 in the original's schema).
            ConnectedNs = 5 => "CONNECTED_NS",
        }
    }

    proto_enum! {
        /// Technology of the physical uplink a device follows.
        pub enum TechnologyType {
            UnknownTechnology = 0 => "UNKNOWN_TECHNOLOGY",
            Cellular = 1 => "CELLULAR",
            Ethernet = 2 => "ETHERNET",
            Wifi = 3 => "WIFI",
        }
    }
}

/// Bytes and packets counted for one (source, device, IP family) triple.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TrafficCounter {
    /// 1: bytes received.
    #[prost(uint64, tag = "1")]
    pub rx_bytes: u64,
    /// 2: bytes sent.
    #[prost(uint64, tag = "2")]
    pub tx_bytes: u64,
    /// 3: packets received.
    #[prost(uint64, tag = "3")]
    pub rx_packets: u64,
    /// 4: packets sent.
    #[prost(uint64, tag = "4")]
    pub tx_packets: u64,
    /// 5: who generated the traffic, a [`traffic_counter::Source`].
    #[prost(enumeration = "traffic_counter::Source", tag = "5")]
    pub source: i32,
    /// 6: the physical or VPN interface the traffic went through.
    #[prost(string, tag = "6")]
    pub device: String,
    /// 7: a [`traffic_counter::IpFamily`].
    #[prost(enumeration = "traffic_counter::IpFamily", tag = "7")]
    pub ip_family: i32,
}

/// Enums nested in [`TrafficCounter`].
pub mod traffic_counter {
    proto_enum! {
        /// Who generated the traffic. Numbering as in the original since
        /// late 2023.
        pub enum Source {
            Unknown = 0 => "UNKNOWN",
            Chrome = 1 => "CHROME",
            User = 2 => "USER",
            UpdateEngine = 3 => "UPDATE_ENGINE",
            System = 4 => "SYSTEM",
            Vpn = 5 => "VPN",
            Arc = 6 => "ARC",
            BorealisVm = 7 => "BOREALIS_VM",
            BruschettaVm = 8 => "BRUSCHETTA_VM",
            CrostiniVm = 9 => "CROSTINI_VM",
            ParallelsVm = 10 => "PARALLELS_VM",
            Tethering = 11 => "TETHERING",
            WifiDirect = 12 => "WIFI_DIRECT",
            WifiLohs = 13 => "WIFI_LOHS",
        }
    }

    proto_enum! {
        /// IP family of the counted traffic.
        pub enum IpFamily {
            None = 0 => "NONE",
            Ipv4 = 1 => "IPV4",
            Ipv6 = 2 => "IPV6",
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv6Addr;

    use super::*;

    #[test]
    fn ipv4_subnet_new_fills_deprecated_field_and_addr() {
        let subnet = IPv4Subnet::new(Ipv4Addr::new(100, 115, 92, 4), 30);

        assert_eq!(subnet.base_addr.to_le_bytes(), [100, 115, 92, 4]);
        assert_eq!(subnet.addr, vec![100, 115, 92, 4]);
        assert_eq!(subnet.prefix_len, 30);
    }

    #[test]
    fn ipv4_subnet_addr_v4_prefers_field_3() {
        let subnet = IPv4Subnet {
            base_addr: ipv4_to_net_u32(Ipv4Addr::new(10, 0, 0, 0)),
            prefix_len: 24,
            addr: vec![100, 115, 92, 0],
        };

        assert_eq!(subnet.addr_v4(), Some(Ipv4Addr::new(100, 115, 92, 0)));
    }

    #[test]
    fn ipv4_subnet_addr_v4_falls_back_to_field_1_when_field_3_is_empty() {
        let subnet = IPv4Subnet {
            base_addr: ipv4_to_net_u32(Ipv4Addr::new(100, 115, 92, 0)),
            prefix_len: 24,
            addr: Vec::new(),
        };

        assert_eq!(subnet.addr_v4(), Some(Ipv4Addr::new(100, 115, 92, 0)));
    }

    #[test]
    fn ipv4_subnet_addr_v4_rejects_a_wrong_length_field_3() {
        let subnet = IPv4Subnet {
            addr: vec![100, 115, 92],
            ..Default::default()
        };

        assert_eq!(subnet.addr_v4(), None);
    }

    #[test]
    fn ip_addr_cidr_keeps_4_or_16_bytes() {
        let v4 = IPAddrCIDR::new(IpAddr::V4(Ipv4Addr::new(192, 168, 1, 2)), 24);
        let v6 = IPAddrCIDR::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 128);

        assert_eq!(v4.addr, vec![192, 168, 1, 2]);
        assert_eq!(v4.ip(), Some(IpAddr::V4(Ipv4Addr::new(192, 168, 1, 2))));
        assert_eq!(v6.addr.len(), 16);
        assert_eq!(v6.ip(), Some(IpAddr::V6(Ipv6Addr::LOCALHOST)));
        assert_eq!(
            IPAddrCIDR {
                addr: vec![1, 2, 3],
                prefix_len: 8
            }
            .ip(),
            None
        );
    }

    #[test]
    fn enum_getters_map_unknown_numbers_to_the_default() {
        let device = NetworkDevice {
            guest_type: 99,
            ..Default::default()
        };

        assert_eq!(device.guest_type(), network_device::GuestType::Unknown);
        assert!(network_device::GuestType::try_from(99).is_err());
    }

    #[test]
    fn enum_str_names_round_trip() {
        let source = traffic_counter::Source::UpdateEngine;

        assert_eq!(source.as_str_name(), "UPDATE_ENGINE");
        assert_eq!(
            traffic_counter::Source::from_str_name("UPDATE_ENGINE"),
            Some(source)
        );
        assert_eq!(
            traffic_counter::Source::from_str_name("update_engine"),
            None
        );
    }
}

/// The IP configuration of a network, as shill sends it in
/// `ConfigureNetwork` (`NetworkConfig` of the original).
#[derive(Clone, PartialEq, prost::Message)]
pub struct NetworkConfig {
    /// 1: the IPv4 address and prefix.
    #[prost(message, optional, tag = "1")]
    pub ipv4_address: Option<IPAddrCIDR>,
    /// 2: the IPv4 broadcast address, `addr4`.
    #[prost(bytes = "vec", optional, tag = "2")]
    pub ipv4_broadcast: Option<Vec<u8>>,
    /// 3: the IPv4 gateway, `addr4`.
    #[prost(bytes = "vec", optional, tag = "3")]
    pub ipv4_gateway: Option<Vec<u8>>,
    /// 4: IPv6 addresses and prefixes.
    #[prost(message, repeated, tag = "4")]
    pub ipv6_addresses: Vec<IPAddrCIDR>,
    /// 5: the IPv6 gateway, 16 bytes.
    #[prost(bytes = "vec", optional, tag = "5")]
    pub ipv6_gateway: Option<Vec<u8>>,
    /// 6: whether the IPv4 default route goes to this network.
    #[prost(bool, tag = "6")]
    pub ipv4_default_route: bool,
    /// 7: an IPv6 blackhole default route (a VPN without IPv6).
    #[prost(bool, tag = "7")]
    pub ipv6_blackhole_route: bool,
    /// 8: prefixes that must not be routed here.
    #[prost(message, repeated, tag = "8")]
    pub excluded_route_prefixes: Vec<IPAddrCIDR>,
    /// 9: prefixes routed here (split tunnel).
    #[prost(message, repeated, tag = "9")]
    pub included_route_prefixes: Vec<IPAddrCIDR>,
    /// 10: classless static routes (RFC 3442, DHCP option 121).
    #[prost(message, repeated, tag = "10")]
    pub rfc3442_routes: Vec<Route>,
    /// 11: DNS servers, 4 or 16 bytes each.
    #[prost(bytes = "vec", repeated, tag = "11")]
    pub dns_servers: Vec<Vec<u8>>,
    /// 12: DNS search domains.
    #[prost(string, repeated, tag = "12")]
    pub dns_search_domains: Vec<String>,
    /// 13: the MTU.
    #[prost(int32, optional, tag = "13")]
    pub mtu: Option<i32>,
    /// 14: the captive portal URI (RFC 8910).
    #[prost(string, optional, tag = "14")]
    pub captive_portal_uri: Option<String>,
    /// 15: IPv6 prefixes delegated to this host.
    #[prost(message, repeated, tag = "15")]
    pub ipv6_delegated_prefixes: Vec<IPAddrCIDR>,
    /// 16: the NAT64 prefix (RFC 8781).
    #[prost(message, optional, tag = "16")]
    pub pref64: Option<IPAddrCIDR>,
}

/// One classless static route of [`NetworkConfig`] (`NetworkConfig.Route`
/// of the original).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Route {
    /// 1: the destination.
    #[prost(message, optional, tag = "1")]
    pub prefix: Option<IPAddrCIDR>,
    /// 2: the gateway, `addr4`.
    #[prost(bytes = "vec", tag = "2")]
    pub gateway: Vec<u8>,
}

/// Where a network ranks among shill's networks.
#[derive(Clone, PartialEq, prost::Message)]
pub struct NetworkPriority {
    /// 1: the default network (may be a VPN).
    #[prost(bool, tag = "1")]
    pub is_primary_logical: bool,
    /// 2: the default physical network.
    #[prost(bool, tag = "2")]
    pub is_primary_physical: bool,
    /// 3: the network whose DNS servers the system uses.
    #[prost(bool, tag = "3")]
    pub is_primary_for_dns: bool,
    /// 4: rank, 0 first.
    #[prost(uint32, tag = "4")]
    pub ranking_order: u32,
}
