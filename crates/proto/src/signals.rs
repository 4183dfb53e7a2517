//! Payloads of the signals patchpanel emits (one `ay` argument each).

use crate::shared::NetworkDevice;

/// Payload of `NetworkDeviceChanged`: a guest device appeared or went away.
#[derive(Clone, PartialEq, prost::Message)]
pub struct NetworkDeviceChangedSignal {
    /// 1: the device.
    #[prost(message, optional, tag = "1")]
    pub device: Option<NetworkDevice>,
    /// 2: a [`network_device_changed_signal::Event`].
    #[prost(enumeration = "network_device_changed_signal::Event", tag = "2")]
    pub event: i32,
}

/// Enums nested in [`NetworkDeviceChangedSignal`].
pub mod network_device_changed_signal {
    proto_enum! {
        /// What happened to the device.
        pub enum Event {
            UnknownChange = 0 => "UNKNOWN_CHANGE",
            DeviceAdded = 1 => "DEVICE_ADDED",
            DeviceRemoved = 2 => "DEVICE_REMOVED",
        }
    }
}

/// Payload of `NeighborReachabilityEvent`: a gateway or DNS
/// server on an uplink became reachable or unreachable.
#[derive(Clone, PartialEq, prost::Message)]
pub struct NeighborReachabilityEventSignal {
    /// 1: kernel index of the uplink.
    #[prost(int32, tag = "1")]
    pub ifindex: i32,
    /// 2: the neighbor's address, text.
    #[prost(string, tag = "2")]
    pub ip_addr: String,
    /// 3: a [`neighbor_reachability_event_signal::Role`].
    #[prost(enumeration = "neighbor_reachability_event_signal::Role", tag = "3")]
    pub role: i32,
    /// 4: a [`neighbor_reachability_event_signal::EventType`].
    #[prost(
        enumeration = "neighbor_reachability_event_signal::EventType",
        tag = "4"
    )]
    pub r#type: i32,
}

/// Enums nested in [`NeighborReachabilityEventSignal`].
pub mod neighbor_reachability_event_signal {
    proto_enum! {
        /// What the neighbor is to the uplink.
        pub enum Role {
            InvalidRole = 0 => "INVALID_ROLE",
            Gateway = 1 => "GATEWAY",
            DnsServer = 2 => "DNS_SERVER",
            GatewayAndDnsServer = 3 => "GATEWAY_AND_DNS_SERVER",
        }
    }

    proto_enum! {
        /// What was observed.
        pub enum EventType {
            InvalidEventType = 0 => "INVALID_EVENT_TYPE",
            Failed = 1 => "FAILED",
            Reachable = 2 => "REACHABLE",
        }
    }
}

/// Payload of `NetworkConfigurationChanged` (no fields): ARC's DNS proxy
/// addresses changed; Chrome calls `GetDevices` again.
#[derive(Clone, PartialEq, prost::Message)]
pub struct NetworkConfigurationChangedSignal {}
