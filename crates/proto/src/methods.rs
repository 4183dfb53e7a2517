//! One request and one response message per D-Bus method.
//!
//! Field comments give the protobuf field number. `ParallelsVmStartup` and
//! `ParallelsVmShutdown` are aliases of the `PluginVm*` methods and use the
//! same messages. Messages for the methods beyond the first scope (VPN intent
//! and lockdown, DNS redirection) are at the end.

use crate::shared::{
    traffic_counter, IPv4Subnet, NetworkConfig, NetworkDevice, NetworkPriority, TrafficCounter,
};

/// Request of `ArcStartup`: ARC++ (container) has started.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ArcStartupRequest {
    /// 1: pid of the ARC container's init, whose network namespace gets the
    /// guest end of the ARC devices.
    #[prost(int32, tag = "1")]
    pub pid: i32,
}

/// Response of `ArcStartup` (no fields).
#[derive(Clone, PartialEq, prost::Message)]
pub struct ArcStartupResponse {}

/// Request of `ArcShutdown`: ARC++ has stopped.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ArcShutdownRequest {
    /// 1: pid given to `ArcStartup`.
    #[prost(int32, tag = "1")]
    pub pid: i32,
}

/// Response of `ArcShutdown` (no fields).
#[derive(Clone, PartialEq, prost::Message)]
pub struct ArcShutdownResponse {}

/// Request of `ArcVmStartup`: ARCVM is about to start.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ArcVmStartupRequest {
    /// 1: the VM's vsock context id.
    #[prost(uint32, tag = "1")]
    pub cid: u32,
}

/// Response of `ArcVmStartup`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ArcVmStartupResponse {
    /// 1: the address of ARCVM's management interface (`arc0`), `addr4`.
    #[prost(bytes = "vec", tag = "1")]
    pub arc0_ipv4_address: Vec<u8>,
    /// 2: tap devices to hand to the VM, in the order it should see them.
    #[prost(string, repeated, tag = "2")]
    pub tap_device_ifnames: Vec<String>,
}

/// Request of `ArcVmShutdown`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ArcVmShutdownRequest {
    /// 1: cid given to `ArcVmStartup`.
    #[prost(uint32, tag = "1")]
    pub cid: u32,
}

/// Response of `ArcVmShutdown` (no fields).
#[derive(Clone, PartialEq, prost::Message)]
pub struct ArcVmShutdownResponse {}

/// Request of `TerminaVmStartup`: a Crostini (Termina) VM is about to start.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TerminaVmStartupRequest {
    /// 1: the VM's vsock context id.
    #[prost(uint32, tag = "1")]
    pub cid: u32,
}

/// Response of `TerminaVmStartup`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TerminaVmStartupResponse {
    /// 1: the tap device to hand to the VM.
    #[prost(string, tag = "1")]
    pub tap_device_ifname: String,
    /// 2: the subnet between host and VM.
    #[prost(message, optional, tag = "2")]
    pub ipv4_subnet: Option<IPv4Subnet>,
    /// 3: the VM's address, `addr4`.
    #[prost(bytes = "vec", tag = "3")]
    pub ipv4_address: Vec<u8>,
    /// 4: the VM's gateway (the host end), `addr4`.
    #[prost(bytes = "vec", tag = "4")]
    pub gateway_ipv4_address: Vec<u8>,
    /// 5: the subnet routed to the VM for its LXD container.
    #[prost(message, optional, tag = "5")]
    pub container_ipv4_subnet: Option<IPv4Subnet>,
    /// 6: the container's address, `addr4`.
    #[prost(bytes = "vec", tag = "6")]
    pub container_ipv4_address: Vec<u8>,
}

/// Request of `TerminaVmShutdown`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TerminaVmShutdownRequest {
    /// 1: cid given to `TerminaVmStartup`.
    #[prost(uint32, tag = "1")]
    pub cid: u32,
}

/// Response of `TerminaVmShutdown` (no fields).
#[derive(Clone, PartialEq, prost::Message)]
pub struct TerminaVmShutdownResponse {}

/// Request of `PluginVmStartup` and `ParallelsVmStartup`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PluginVmStartupRequest {
    /// 1: an id chosen by the caller for this VM.
    #[prost(uint64, tag = "1")]
    pub id: u64,
    /// 2: 1-based index of the subnet to use; 0 = any free subnet; negative
    /// values are invalid.
    #[prost(int32, tag = "2")]
    pub subnet_index: i32,
}

/// Response of `PluginVmStartup` and `ParallelsVmStartup`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PluginVmStartupResponse {
    /// 1: the tap device to hand to the VM.
    #[prost(string, tag = "1")]
    pub tap_device_ifname: String,
    /// 2: the subnet between host and VM.
    #[prost(message, optional, tag = "2")]
    pub ipv4_subnet: Option<IPv4Subnet>,
    /// 3: the VM's address, `addr4`.
    #[prost(bytes = "vec", tag = "3")]
    pub ipv4_address: Vec<u8>,
}

/// Request of `PluginVmShutdown` and `ParallelsVmShutdown`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PluginVmShutdownRequest {
    /// 1: id given to `PluginVmStartup`.
    #[prost(uint64, tag = "1")]
    pub id: u64,
}

/// Response of `PluginVmShutdown` and `ParallelsVmShutdown` (no fields).
#[derive(Clone, PartialEq, prost::Message)]
pub struct PluginVmShutdownResponse {}

/// Request of `BruschettaVmStartup`: a third-party (Bruschetta) VM is about
/// to start.
#[derive(Clone, PartialEq, prost::Message)]
pub struct BruschettaVmStartupRequest {
    /// 1: an id chosen by the caller for this VM.
    #[prost(uint64, tag = "1")]
    pub id: u64,
}

/// Response of `BruschettaVmStartup` (and, with the same fields, of
/// `BorealisVmStartup`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct BruschettaVmStartupResponse {
    /// 1: the tap device to hand to the VM.
    #[prost(string, tag = "1")]
    pub tap_device_ifname: String,
    /// 2: the subnet between host and VM.
    #[prost(message, optional, tag = "2")]
    pub ipv4_subnet: Option<IPv4Subnet>,
    /// 3: the VM's address, `addr4`.
    #[prost(bytes = "vec", tag = "3")]
    pub ipv4_address: Vec<u8>,
    /// 4: the VM's gateway (the host end), `addr4`.
    #[prost(bytes = "vec", tag = "4")]
    pub gateway_ipv4_address: Vec<u8>,
}

/// Request of `BruschettaVmShutdown`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct BruschettaVmShutdownRequest {
    /// 1: id given to `BruschettaVmStartup`.
    #[prost(uint64, tag = "1")]
    pub id: u64,
}

/// Response of `BruschettaVmShutdown` (no fields).
#[derive(Clone, PartialEq, prost::Message)]
pub struct BruschettaVmShutdownResponse {}

/// Request of `BorealisVmStartup`: the Borealis (Steam) VM is about to
/// start.
#[derive(Clone, PartialEq, prost::Message)]
pub struct BorealisVmStartupRequest {
    /// 1: the VM's id (its vsock context id); 32 bits, unlike Bruschetta's.
    #[prost(uint32, tag = "1")]
    pub id: u32,
}

/// Response of `BorealisVmStartup`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct BorealisVmStartupResponse {
    /// 1: the tap device to hand to the VM.
    #[prost(string, tag = "1")]
    pub tap_device_ifname: String,
    /// 2: the subnet between host and VM.
    #[prost(message, optional, tag = "2")]
    pub ipv4_subnet: Option<IPv4Subnet>,
    /// 3: the VM's address, `addr4`.
    #[prost(bytes = "vec", tag = "3")]
    pub ipv4_address: Vec<u8>,
    /// 4: the VM's gateway (the host end), `addr4`.
    #[prost(bytes = "vec", tag = "4")]
    pub gateway_ipv4_address: Vec<u8>,
}

/// Request of `BorealisVmShutdown`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct BorealisVmShutdownRequest {
    /// 1: id given to `BorealisVmStartup`.
    #[prost(uint32, tag = "1")]
    pub id: u32,
}

/// Response of `BorealisVmShutdown` (no fields).
#[derive(Clone, PartialEq, prost::Message)]
pub struct BorealisVmShutdownResponse {}

/// Request of `ConnectNamespace`: connect a network namespace to the host
/// with a veth pair. Sent together with a lifeline file descriptor; the
/// namespace is disconnected when the caller's end closes.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ConnectNamespaceRequest {
    /// 1: pid whose network namespace to connect; -1 asks the server to
    /// create a new named namespace instead.
    #[prost(int32, tag = "1")]
    pub pid: i32,
    /// 2: physical uplink to route through; empty = follow the default
    /// network.
    #[prost(string, tag = "2")]
    pub outbound_physical_device: String,
    /// 3: let user traffic (as opposed to system traffic) use the namespace.
    #[prost(bool, tag = "3")]
    pub allow_user_traffic: bool,
    /// 4: route the namespace's traffic through the VPN when one is up.
    #[prost(bool, tag = "4")]
    pub route_on_vpn: bool,
    /// 5: source the namespace's traffic is counted as, a
    /// [`traffic_counter::Source`]; `UNKNOWN` means `SYSTEM`.
    #[prost(enumeration = "traffic_counter::Source", tag = "5")]
    pub traffic_source: i32,
    /// 6: also give the namespace a static IPv6 address.
    #[prost(bool, tag = "6")]
    pub static_ipv6: bool,
}

/// Response of `ConnectNamespace`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ConnectNamespaceResponse {
    /// 1: the subnet of the veth pair.
    #[prost(message, optional, tag = "1")]
    pub ipv4_subnet: Option<IPv4Subnet>,
    /// 2: veth name inside the namespace.
    #[prost(string, tag = "2")]
    pub peer_ifname: String,
    /// 3: address of the namespace end, `u32 net-order`.
    #[prost(uint32, tag = "3")]
    pub peer_ipv4_address: u32,
    /// 4: veth name on the host.
    #[prost(string, tag = "4")]
    pub host_ifname: String,
    /// 5: address of the host end, `u32 net-order`.
    #[prost(uint32, tag = "5")]
    pub host_ipv4_address: u32,
    /// 6: name of the namespace created for pid -1; empty otherwise.
    #[prost(string, tag = "6")]
    pub netns_name: String,
}

/// Request of `GetDevices` (no fields).
#[derive(Clone, PartialEq, prost::Message)]
pub struct GetDevicesRequest {}

/// Response of `GetDevices`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct GetDevicesResponse {
    /// 1: every guest device patchpanel currently manages.
    #[prost(message, repeated, tag = "1")]
    pub devices: Vec<NetworkDevice>,
}

/// Request of `GetTrafficCounters`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TrafficCountersRequest {
    /// 1: interfaces to report; empty = all.
    #[prost(string, repeated, tag = "1")]
    pub devices: Vec<String>,
}

/// Response of `GetTrafficCounters`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TrafficCountersResponse {
    /// 1: one counter per (source, device, IP family).
    #[prost(message, repeated, tag = "1")]
    pub counters: Vec<TrafficCounter>,
}

/// Request of `ModifyPortRule`: open, lock down or forward a port.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ModifyPortRuleRequest {
    /// 1: a [`modify_port_rule_request::Operation`].
    #[prost(enumeration = "modify_port_rule_request::Operation", tag = "1")]
    pub op: i32,
    /// 2: a [`modify_port_rule_request::RuleType`].
    #[prost(enumeration = "modify_port_rule_request::RuleType", tag = "2")]
    pub r#type: i32,
    /// 3: a [`modify_port_rule_request::Protocol`].
    #[prost(enumeration = "modify_port_rule_request::Protocol", tag = "3")]
    pub proto: i32,
    /// 4: interface the traffic arrives on; empty = any (ACCESS only).
    #[prost(string, tag = "4")]
    pub input_ifname: String,
    /// 5: destination address to match, dotted text; empty = any.
    #[prost(string, tag = "5")]
    pub input_dst_ip: String,
    /// 6: destination port to match.
    #[prost(uint32, tag = "6")]
    pub input_dst_port: u32,
    /// 7: FORWARDING only: address to forward to, dotted text.
    #[prost(string, tag = "7")]
    pub dst_ip: String,
    /// 8: FORWARDING only: port to forward to.
    #[prost(uint32, tag = "8")]
    pub dst_port: u32,
}

/// Enums nested in [`ModifyPortRuleRequest`].
pub mod modify_port_rule_request {
    proto_enum! {
        /// Whether to add or remove the rule.
        pub enum Operation {
            InvalidOperation = 0 => "INVALID_OPERATION",
            Create = 1 => "CREATE",
            Delete = 2 => "DELETE",
        }
    }

    proto_enum! {
        /// What the rule does.
        pub enum RuleType {
            InvalidRuleType = 0 => "INVALID_RULE_TYPE",
            /// Accept inbound traffic to the port.
            Access = 1 => "ACCESS",
            /// Only one user may bind the port on loopback.
            Lockdown = 2 => "LOCKDOWN",
            /// Forward inbound traffic to a guest.
            Forwarding = 3 => "FORWARDING",
        }
    }

    proto_enum! {
        /// Transport protocol the rule matches.
        pub enum Protocol {
            InvalidProtocol = 0 => "INVALID_PROTOCOL",
            Tcp = 1 => "TCP",
            Udp = 2 => "UDP",
        }
    }
}

/// Response of `ModifyPortRule`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ModifyPortRuleResponse {
    /// 1: whether the rule was applied.
    #[prost(bool, tag = "1")]
    pub success: bool,
}

/// Request of `SetVpnIntent` (later scope): how traffic of one socket, sent
/// as a file descriptor alongside, should be routed with respect to the VPN.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SetVpnIntentRequest {
    /// 1: a [`set_vpn_intent_request::VpnRoutingPolicy`].
    #[prost(enumeration = "set_vpn_intent_request::VpnRoutingPolicy", tag = "1")]
    pub policy: i32,
}

/// Enums nested in [`SetVpnIntentRequest`].
pub mod set_vpn_intent_request {
    proto_enum! {
        /// Routing policy of a socket with respect to the VPN.
        pub enum VpnRoutingPolicy {
            /// Follow the routing of the socket's owner.
            DefaultRouting = 0 => "DEFAULT_ROUTING",
            RouteOnVpn = 1 => "ROUTE_ON_VPN",
            BypassVpn = 2 => "BYPASS_VPN",
        }
    }
}

/// Response of `SetVpnIntent`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SetVpnIntentResponse {
    /// 1: whether the policy was applied.
    #[prost(bool, tag = "1")]
    pub success: bool,
}

/// Request of `SetVpnLockdown` (later scope).
#[derive(Clone, PartialEq, prost::Message)]
pub struct SetVpnLockdownRequest {
    /// 1: block user traffic that cannot go through the VPN.
    #[prost(bool, tag = "1")]
    pub enable_vpn_lockdown: bool,
}

/// Response of `SetVpnLockdown` (no fields).
#[derive(Clone, PartialEq, prost::Message)]
pub struct SetVpnLockdownResponse {}

/// Request of `SetDnsRedirectionRule` (later scope): send DNS queries to a
/// DNS proxy. Sent with a lifeline file descriptor; the rule goes away when
/// the caller's end closes.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SetDnsRedirectionRuleRequest {
    /// 1: a [`set_dns_redirection_rule_request::RuleType`].
    #[prost(enumeration = "set_dns_redirection_rule_request::RuleType", tag = "1")]
    pub r#type: i32,
    /// 2: interface whose inbound DNS traffic is redirected.
    #[prost(string, tag = "2")]
    pub input_ifname: String,
    /// 3: the proxy's address, text.
    #[prost(string, tag = "3")]
    pub proxy_address: String,
    /// 4: name servers whose queries are redirected, text.
    #[prost(string, repeated, tag = "4")]
    pub nameservers: Vec<String>,
    /// 5: host end of the proxy's namespace.
    #[prost(string, tag = "5")]
    pub host_ifname: String,
}

/// Enums nested in [`SetDnsRedirectionRuleRequest`].
pub mod set_dns_redirection_rule_request {
    proto_enum! {
        /// Which traffic a DNS redirection rule applies to.
        pub enum RuleType {
            InvalidRuleType = 0 => "INVALID_RULE_TYPE",
            Default = 1 => "DEFAULT",
            Arc = 2 => "ARC",
            User = 3 => "USER",
            ExcludeDestination = 4 => "EXCLUDE_DESTINATION",
        }
    }
}

/// Response of `SetDnsRedirectionRule`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SetDnsRedirectionRuleResponse {
    /// 1: whether the rule was applied.
    #[prost(bool, tag = "1")]
    pub success: bool,
}

/// Request of `TagSocket` (on `org.chromium.PatchPanel` and on
/// `org.chromium.SocketService`): mark the socket sent alongside (not a
/// lifeline) for routing. Field numbers as in the original's
/// `patchpanel_service.proto` since 2024-02.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TagSocketRequest {
    /// 1: route the socket's traffic on this network (its routing tag);
    /// absent: no network.
    #[prost(int32, optional, tag = "1")]
    pub network_id: Option<i32>,
    /// 2: a [`tag_socket_request::VpnRoutingPolicy`].
    #[prost(enumeration = "tag_socket_request::VpnRoutingPolicy", tag = "2")]
    pub vpn_policy: i32,
    /// 3: who asks, for auditing; when present the original answers success
    /// and leaves the socket alone.
    #[prost(message, optional, tag = "3")]
    pub traffic_annotation: Option<TrafficAnnotation>,
}

/// Enums nested in [`TagSocketRequest`].
pub mod tag_socket_request {
    proto_enum! {
        /// Routing policy of a socket with respect to the VPN.
        pub enum VpnRoutingPolicy {
            /// Follow the routing of the socket's owner.
            DefaultRouting = 0 => "DEFAULT_ROUTING",
            RouteOnVpn = 1 => "ROUTE_ON_VPN",
            BypassVpn = 2 => "BYPASS_VPN",
        }
    }
}

/// `traffic_annotation.TrafficAnnotation` of the original: which audited
/// caller a socket belongs to.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TrafficAnnotation {
    /// 1: a [`traffic_annotation::Id`].
    #[prost(enumeration = "traffic_annotation::Id", tag = "1")]
    pub host_id: i32,
}

/// Enums nested in [`TrafficAnnotation`].
pub mod traffic_annotation {
    proto_enum! {
        /// The audited callers.
        pub enum Id {
            Unspecified = 0 => "UNSPECIFIED",
            ShillPortalDetector = 1 => "SHILL_PORTAL_DETECTOR",
            ShillCapportClient = 2 => "SHILL_CAPPORT_CLIENT",
            ShillCarrierEntitlement = 3 => "SHILL_CARRIER_ENTITLEMENT",
        }
    }
}

/// Response of `TagSocket`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TagSocketResponse {
    /// 1: whether the socket was tagged as asked.
    #[prost(bool, tag = "1")]
    pub success: bool,
}

/// Request of `ConfigureNetwork` (shill's `Network::ApplyNetworkConfig`):
/// apply the parts of `network_config` that `area` names to the link.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ConfigureNetworkRequest {
    /// 1: the link's index.
    #[prost(int32, tag = "1")]
    pub ifindex: i32,
    /// 2: the link's name; must be the name of `ifindex`.
    #[prost(string, tag = "2")]
    pub ifname: String,
    /// 3: which parts to apply, a bitmask of `configure_network_request::AREA_*`.
    #[prost(uint32, tag = "3")]
    pub area: u32,
    /// 4: the configuration.
    #[prost(message, optional, tag = "4")]
    pub network_config: Option<NetworkConfig>,
    /// 5: a [`configure_network_request::NetworkTechnology`].
    #[prost(
        enumeration = "configure_network_request::NetworkTechnology",
        tag = "5"
    )]
    pub technology: i32,
    /// 6: where the network ranks.
    #[prost(message, optional, tag = "6")]
    pub priority: Option<NetworkPriority>,
    /// 7: shill's id of this connection attempt (logged only).
    #[prost(int32, tag = "7")]
    pub session_id: i32,
}

/// Enums and the `area` bits of [`ConfigureNetworkRequest`].
pub mod configure_network_request {
    /// IPv4 address.
    pub const AREA_IPV4_ADDRESS: u32 = 1 << 0;
    /// IPv4 routes (included prefixes, RFC 3442 routes, the gateway's
    /// on-link route).
    pub const AREA_IPV4_ROUTE: u32 = 1 << 1;
    /// IPv4 default route.
    pub const AREA_IPV4_DEFAULT_ROUTE: u32 = 1 << 2;
    /// IPv6 addresses.
    pub const AREA_IPV6_ADDRESS: u32 = 1 << 8;
    /// IPv6 routes.
    pub const AREA_IPV6_ROUTE: u32 = 1 << 9;
    /// IPv6 default route.
    pub const AREA_IPV6_DEFAULT_ROUTE: u32 = 1 << 10;
    /// ip rules of the routing policy.
    pub const AREA_ROUTING_POLICY: u32 = 1 << 16;
    /// DNS (the original does nothing with it).
    pub const AREA_DNS: u32 = 1 << 17;
    /// MTU.
    pub const AREA_MTU: u32 = 1 << 18;
    /// Remove everything applied before the other bits are applied.
    pub const AREA_CLEAR: u32 = 1 << 31;
    /// Every bit the original defines.
    pub const AREA_ALL: u32 = AREA_IPV4_ADDRESS
        | AREA_IPV4_ROUTE
        | AREA_IPV4_DEFAULT_ROUTE
        | AREA_IPV6_ADDRESS
        | AREA_IPV6_ROUTE
        | AREA_IPV6_DEFAULT_ROUTE
        | AREA_ROUTING_POLICY
        | AREA_DNS
        | AREA_MTU
        | AREA_CLEAR;

    proto_enum! {
        /// Technology of the network.
        pub enum NetworkTechnology {
            Unknown = 0 => "UNKNOWN",
            Cellular = 1 => "CELLULAR",
            Ethernet = 2 => "ETHERNET",
            Vpn = 3 => "VPN",
            Wifi = 4 => "WIFI",
        }
    }
}

/// Response of `ConfigureNetwork`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ConfigureNetworkResponse {
    /// 1: whether everything asked for was applied.
    #[prost(bool, tag = "1")]
    pub success: bool,
}

/// Request of `NotifyAndroidInteractiveState` (Chrome): whether Android's
/// screen is on.
#[derive(Clone, PartialEq, prost::Message)]
pub struct NotifyAndroidInteractiveStateRequest {
    /// 1: Android is interactive.
    #[prost(bool, tag = "1")]
    pub interactive: bool,
}

/// Response of `NotifyAndroidInteractiveState` (no fields).
#[derive(Clone, PartialEq, prost::Message)]
pub struct NotifyAndroidInteractiveStateResponse {}

/// Request of `NotifyAndroidWifiMulticastLockChange` (Chrome): whether an
/// Android app holds the Wi-Fi multicast lock.
#[derive(Clone, PartialEq, prost::Message)]
pub struct NotifyAndroidWifiMulticastLockChangeRequest {
    /// 1: the lock is held.
    #[prost(bool, tag = "1")]
    pub held: bool,
}

/// Response of `NotifyAndroidWifiMulticastLockChange` (no fields).
#[derive(Clone, PartialEq, prost::Message)]
pub struct NotifyAndroidWifiMulticastLockChangeResponse {}

/// A socket of ARC opened or closed, as Chrome's socket monitor saw it.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SocketConnectionEvent {
    /// 1: local address (ARC's, before SNAT), 4 or 16 bytes.
    #[prost(bytes = "vec", tag = "1")]
    pub saddr: Vec<u8>,
    /// 2: local port.
    #[prost(int32, tag = "2")]
    pub sport: i32,
    /// 3: remote address, 4 or 16 bytes.
    #[prost(bytes = "vec", tag = "3")]
    pub daddr: Vec<u8>,
    /// 4: remote port.
    #[prost(int32, tag = "4")]
    pub dport: i32,
    /// 5: a [`socket_connection_event::IpProtocol`].
    #[prost(enumeration = "socket_connection_event::IpProtocol", tag = "5")]
    pub proto: i32,
    /// 6: a [`socket_connection_event::SocketEvent`].
    #[prost(enumeration = "socket_connection_event::SocketEvent", tag = "6")]
    pub event: i32,
    /// 7: a [`socket_connection_event::QosCategory`].
    #[prost(enumeration = "socket_connection_event::QosCategory", tag = "7")]
    pub category: i32,
}

/// Enums nested in [`SocketConnectionEvent`].
pub mod socket_connection_event {
    proto_enum! {
        /// The socket's transport.
        pub enum IpProtocol {
            UnknownProto = 0 => "UNKNOWN_PROTO",
            Tcp = 1 => "TCP",
            Udp = 2 => "UDP",
        }
    }
    proto_enum! {
        /// Opened or closed.
        pub enum SocketEvent {
            UnknownEvent = 0 => "UNKNOWN_EVENT",
            Open = 1 => "OPEN",
            Close = 2 => "CLOSE",
        }
    }
    proto_enum! {
        /// The QoS class Chrome inferred.
        pub enum QosCategory {
            UnknownCategory = 0 => "UNKNOWN_CATEGORY",
            RealtimeInteractive = 1 => "REALTIME_INTERACTIVE",
            MultimediaConferencing = 2 => "MULTIMEDIA_CONFERENCING",
        }
    }
}

/// Request of `NotifySocketConnectionEvent` (Chrome, for Wi-Fi QoS).
#[derive(Clone, PartialEq, prost::Message)]
pub struct NotifySocketConnectionEventRequest {
    /// 1: the event.
    #[prost(message, optional, tag = "1")]
    pub msg: Option<SocketConnectionEvent>,
}

/// Response of `NotifySocketConnectionEvent` (no fields).
#[derive(Clone, PartialEq, prost::Message)]
pub struct NotifySocketConnectionEventResponse {}

/// Request of `NotifyARCVPNSocketConnectionEvent` (Chrome): a socket that
/// Android's own VPN app opened or closed (the original counts its flow
/// as ARC_VPN).
#[derive(Clone, PartialEq, prost::Message)]
pub struct NotifyARCVPNSocketConnectionEventRequest {
    /// 1: the event.
    #[prost(message, optional, tag = "1")]
    pub msg: Option<SocketConnectionEvent>,
}

/// Response of `NotifyARCVPNSocketConnectionEvent` (no fields).
#[derive(Clone, PartialEq, prost::Message)]
pub struct NotifyARCVPNSocketConnectionEventResponse {}

/// Request of `SetFeatureFlag` (Chrome's finch features).
#[derive(Clone, PartialEq, prost::Message)]
pub struct SetFeatureFlagRequest {
    /// 1: a [`set_feature_flag_request::FeatureFlag`].
    #[prost(enumeration = "set_feature_flag_request::FeatureFlag", tag = "1")]
    pub flag: i32,
    /// 2: the new value.
    #[prost(bool, tag = "2")]
    pub enabled: bool,
}

/// Enums nested in [`SetFeatureFlagRequest`].
pub mod set_feature_flag_request {
    proto_enum! {
        /// The features Chrome switches.
        pub enum FeatureFlag {
            WifiQos = 0 => "WIFI_QOS",
            Clat = 1 => "CLAT",
        }
    }
}

/// Response of `SetFeatureFlag`: the flag's value before the call.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SetFeatureFlagResponse {
    /// 1: the previous value.
    #[prost(bool, tag = "1")]
    pub enabled: bool,
}
