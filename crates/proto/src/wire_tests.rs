//! Golden encodings and round trips of realistic messages.
//!
//! The golden bytes were worked out by hand from the protobuf encoding rules
//! (key = field number << 3 | wire type, base-128 little-endian varints), not
//! produced by prost, so they check prost's output against the wire format
//! rather than against itself.

use std::net::Ipv4Addr;

use prost::Message;

use crate::methods::modify_port_rule_request::{Operation, Protocol, RuleType};
use crate::shared::network_device::{GuestType, TechnologyType};
use crate::shared::traffic_counter::{IpFamily, Source};
use crate::signals::network_device_changed_signal::Event;
use crate::*;

fn round_trip<T: Message + Default + PartialEq>(message: &T) {
    let bytes = message.encode_to_vec();
    let decoded: T = decode_request(&bytes).expect("own encoding decodes");
    assert_eq!(&decoded, message);
}

fn connect_namespace_request() -> ConnectNamespaceRequest {
    ConnectNamespaceRequest {
        pid: 1234,
        outbound_physical_device: "eth0".to_string(),
        route_on_vpn: true,
        traffic_source: Source::User.into(),
        ..Default::default()
    }
}

#[rustfmt::skip]
const CONNECT_NAMESPACE_REQUEST_GOLDEN: [u8; 13] = [
    0x08, 0xd2, 0x09,                   // 1 pid: varint 1234 = 0b1001_1010010
    0x12, 0x04, b'e', b't', b'h', b'0', // 2 outbound_physical_device: len 4
    // 3 allow_user_traffic: false, omitted
    0x20, 0x01,                         // 4 route_on_vpn: true
    0x28, 0x02,                         // 5 traffic_source: USER
    // 6 static_ipv6: false, omitted
];

fn arc_device() -> NetworkDevice {
    NetworkDevice {
        ifname: "arc_eth0".to_string(),
        ipv4_addr: ipv4_to_net_u32(Ipv4Addr::new(100, 115, 92, 6)),
        ipv4_subnet: Some(IPv4Subnet::new(Ipv4Addr::new(100, 115, 92, 4), 30)),
        guest_type: GuestType::Arc.into(),
        phys_ifname: "eth0".to_string(),
        host_ipv4_addr: ipv4_to_net_u32(Ipv4Addr::new(100, 115, 92, 5)),
        guest_ifname: "eth0".to_string(),
        dns_proxy_ipv4_addr: Vec::new(),
        dns_proxy_ipv6_addr: Vec::new(),
        technology_type: TechnologyType::Ethernet.into(),
    }
}

// 100.115.92.6 as u32 net-order is 0x065c7364 = 106722148; as 7-bit groups
// from the low end: 100, 102, 113, 50 -> e4 e6 f1 32. 100.115.92.5 and
// 100.115.92.4 differ only in the top group: 42 (0x2a) and 34 (0x22).
#[rustfmt::skip]
const GET_DEVICES_RESPONSE_GOLDEN: [u8; 53] = [
    0x0a, 0x33,                         // 1 devices[0]: len 51
    0x0a, 0x08,                         //   1 ifname: len 8
    b'a', b'r', b'c', b'_', b'e', b't', b'h', b'0',
    0x10, 0xe4, 0xe6, 0xf1, 0x32,       //   2 ipv4_addr: 100.115.92.6
    0x1a, 0x0d,                         //   3 ipv4_subnet: len 13
    0x08, 0xe4, 0xe6, 0xf1, 0x22,       //     1 base_addr: 100.115.92.4
    0x10, 0x1e,                         //     2 prefix_len: 30
    0x1a, 0x04, 100, 115, 92, 4,        //     3 addr: len 4
    0x20, 0x01,                         //   4 guest_type: ARC
    0x2a, 0x04, b'e', b't', b'h', b'0', //   5 phys_ifname: len 4
    0x30, 0xe4, 0xe6, 0xf1, 0x2a,       //   6 host_ipv4_addr: 100.115.92.5
    0x3a, 0x04, b'e', b't', b'h', b'0', //   7 guest_ifname: len 4
    // 8, 9 dns proxy addresses: empty, omitted
    0x50, 0x02,                         //   10 technology_type: ETHERNET
];

#[rustfmt::skip]
const MODIFY_PORT_RULE_REQUEST_GOLDEN: [u8; 31] = [
    0x08, 0x01,                         // 1 op: CREATE
    0x10, 0x03,                         // 2 type: FORWARDING
    0x18, 0x01,                         // 3 proto: TCP
    0x22, 0x04, b'e', b't', b'h', b'0', // 4 input_ifname: len 4
    // 5 input_dst_ip: empty, omitted
    0x30, 0x90, 0x3f,                   // 6 input_dst_port: 8080 = 63 * 128 + 16
    0x3a, 0x0c,                         // 7 dst_ip: len 12
    b'1', b'0', b'0', b'.', b'1', b'1', b'5', b'.', b'9', b'2', b'.', b'6',
    0x40, 0x50,                         // 8 dst_port: 80
];

fn forwarding_rule() -> ModifyPortRuleRequest {
    ModifyPortRuleRequest {
        op: Operation::Create.into(),
        r#type: RuleType::Forwarding.into(),
        proto: Protocol::Tcp.into(),
        input_ifname: "eth0".to_string(),
        input_dst_ip: String::new(),
        input_dst_port: 8080,
        dst_ip: "100.115.92.6".to_string(),
        dst_port: 80,
    }
}

#[test]
fn connect_namespace_request_encodes_to_golden_bytes() {
    assert_eq!(
        connect_namespace_request().encode_to_vec(),
        CONNECT_NAMESPACE_REQUEST_GOLDEN
    );
}

#[test]
fn connect_namespace_request_decodes_from_golden_bytes() {
    let request: ConnectNamespaceRequest =
        decode_request(&CONNECT_NAMESPACE_REQUEST_GOLDEN).expect("golden bytes decode");

    assert_eq!(request, connect_namespace_request());
    assert_eq!(request.traffic_source(), Source::User);
}

#[test]
fn get_devices_response_encodes_to_golden_bytes() {
    let response = GetDevicesResponse {
        devices: vec![arc_device()],
    };

    assert_eq!(response.encode_to_vec(), GET_DEVICES_RESPONSE_GOLDEN);
}

#[test]
fn get_devices_response_decodes_from_golden_bytes() {
    let response: GetDevicesResponse =
        decode_request(&GET_DEVICES_RESPONSE_GOLDEN).expect("golden bytes decode");

    assert_eq!(response.devices, vec![arc_device()]);
    assert_eq!(response.devices[0].guest_type(), GuestType::Arc);
    assert_eq!(
        ipv4_from_net_u32(response.devices[0].host_ipv4_addr),
        Ipv4Addr::new(100, 115, 92, 5)
    );
}

#[test]
fn modify_port_rule_request_encodes_to_golden_bytes() {
    assert_eq!(
        forwarding_rule().encode_to_vec(),
        MODIFY_PORT_RULE_REQUEST_GOLDEN
    );
}

#[test]
fn modify_port_rule_request_decodes_from_golden_bytes() {
    let request: ModifyPortRuleRequest =
        decode_request(&MODIFY_PORT_RULE_REQUEST_GOLDEN).expect("golden bytes decode");

    assert_eq!(request, forwarding_rule());
    assert_eq!(request.op(), Operation::Create);
    assert_eq!(request.r#type(), RuleType::Forwarding);
    assert_eq!(request.proto(), Protocol::Tcp);
}

#[test]
fn empty_messages_encode_to_no_bytes() {
    assert!(ArcStartupResponse {}.encode_to_vec().is_empty());
    assert!(GetDevicesRequest {}.encode_to_vec().is_empty());
    assert!(ConnectNamespaceRequest::default()
        .encode_to_vec()
        .is_empty());
}

#[test]
fn realistic_method_messages_round_trip() {
    round_trip(&ArcStartupRequest { pid: 4321 });
    round_trip(&ArcShutdownRequest { pid: 4321 });
    round_trip(&ArcVmStartupRequest { cid: 32 });
    round_trip(&ArcVmStartupResponse {
        arc0_ipv4_address: ipv4_to_addr4(Ipv4Addr::new(100, 115, 92, 2)),
        tap_device_ifnames: vec!["vmtap0".to_string(), "vmtap1".to_string()],
    });
    round_trip(&ArcVmShutdownRequest { cid: 32 });
    round_trip(&TerminaVmStartupRequest { cid: 33 });
    round_trip(&TerminaVmStartupResponse {
        tap_device_ifname: "vmtap2".to_string(),
        ipv4_subnet: Some(IPv4Subnet::new(Ipv4Addr::new(100, 115, 92, 24), 30)),
        ipv4_address: ipv4_to_addr4(Ipv4Addr::new(100, 115, 92, 26)),
        gateway_ipv4_address: ipv4_to_addr4(Ipv4Addr::new(100, 115, 92, 25)),
        container_ipv4_subnet: Some(IPv4Subnet::new(Ipv4Addr::new(100, 115, 92, 192), 28)),
        container_ipv4_address: ipv4_to_addr4(Ipv4Addr::new(100, 115, 92, 193)),
    });
    round_trip(&TerminaVmShutdownRequest { cid: 33 });
    round_trip(&PluginVmStartupRequest {
        id: u64::MAX,
        subnet_index: 1,
    });
    round_trip(&PluginVmStartupResponse {
        tap_device_ifname: "vmtap3".to_string(),
        ipv4_subnet: Some(IPv4Subnet::new(Ipv4Addr::new(100, 115, 93, 0), 29)),
        ipv4_address: ipv4_to_addr4(Ipv4Addr::new(100, 115, 93, 2)),
    });
    round_trip(&PluginVmShutdownRequest { id: u64::MAX });
    round_trip(&ConnectNamespaceRequest {
        pid: -1,
        static_ipv6: true,
        allow_user_traffic: true,
        ..connect_namespace_request()
    });
    round_trip(&ConnectNamespaceResponse {
        ipv4_subnet: Some(IPv4Subnet::new(Ipv4Addr::new(100, 115, 92, 128), 30)),
        peer_ifname: "vpeer0".to_string(),
        peer_ipv4_address: ipv4_to_net_u32(Ipv4Addr::new(100, 115, 92, 130)),
        host_ifname: "arc_ns0".to_string(),
        host_ipv4_address: ipv4_to_net_u32(Ipv4Addr::new(100, 115, 92, 129)),
        netns_name: "connected_netns_0".to_string(),
    });
    round_trip(&TrafficCountersRequest {
        devices: vec!["eth0".to_string(), "wlan0".to_string()],
    });
    round_trip(&TrafficCountersResponse {
        counters: vec![TrafficCounter {
            rx_bytes: u64::MAX,
            tx_bytes: 1 << 40,
            rx_packets: 12,
            tx_packets: 34,
            source: Source::WifiLohs.into(),
            device: "wlan0".to_string(),
            ip_family: IpFamily::Ipv6.into(),
        }],
    });
    round_trip(&forwarding_rule());
    round_trip(&ModifyPortRuleResponse { success: true });
}

#[test]
fn realistic_later_scope_messages_round_trip() {
    use crate::methods::set_dns_redirection_rule_request::RuleType as DnsRuleType;
    use crate::methods::set_vpn_intent_request::VpnRoutingPolicy;
    use crate::signals::neighbor_reachability_event_signal::{EventType, Role};

    round_trip(&SetVpnIntentRequest {
        policy: VpnRoutingPolicy::BypassVpn.into(),
    });
    round_trip(&SetVpnIntentResponse { success: true });
    round_trip(&SetVpnLockdownRequest {
        enable_vpn_lockdown: true,
    });
    round_trip(&SetDnsRedirectionRuleRequest {
        r#type: DnsRuleType::ExcludeDestination.into(),
        input_ifname: "arc_eth0".to_string(),
        proxy_address: "100.115.92.130".to_string(),
        nameservers: vec!["8.8.8.8".to_string(), "2001:4860:4860::8888".to_string()],
        host_ifname: "arc_ns1".to_string(),
    });
    round_trip(&SetDnsRedirectionRuleResponse { success: true });
    round_trip(&NeighborReachabilityEventSignal {
        ifindex: 7,
        ip_addr: "192.168.1.1".to_string(),
        role: Role::GatewayAndDnsServer.into(),
        r#type: EventType::Failed.into(),
    });
}

#[test]
fn network_device_changed_signal_round_trips() {
    let signal = NetworkDeviceChangedSignal {
        device: Some(arc_device()),
        event: Event::DeviceRemoved.into(),
    };

    round_trip(&signal);
    assert_eq!(signal.event(), Event::DeviceRemoved);
}

#[test]
fn shared_types_round_trip() {
    round_trip(&IPv4Subnet::new(Ipv4Addr::new(100, 115, 92, 0), 24));
    round_trip(&IPAddrCIDR::new(
        "fd00::1".parse().expect("valid literal"),
        64,
    ));
    round_trip(&arc_device());
}
