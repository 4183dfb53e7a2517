//! The client against an in-process fake patchpaneld on a private bus: what
//! goes on the wire, how answers and errors come back, and that a lifeline
//! reaches the server and hangs up when dropped.

use std::net::Ipv4Addr;
use std::os::fd::AsFd;
use std::time::Duration;

use dbus::channel::Channel;
use patchpanel_client::fake::{wait_for_hangup, FakeService};
use patchpanel_client::{Client, Error, Signal};
use patchpanel_proto::modify_port_rule_request::{Operation, Protocol, RuleType};
use patchpanel_proto::network_device::GuestType;
use patchpanel_proto::network_device_changed_signal::Event;
use patchpanel_proto::traffic_counter::Source;
use patchpanel_proto::{
    ipv4_to_net_u32, names, ConnectNamespaceRequest, ConnectNamespaceResponse, GetDevicesResponse,
    IPv4Subnet, ModifyPortRuleRequest, ModifyPortRuleResponse, NeighborReachabilityEventSignal,
    NetworkDevice, NetworkDeviceChangedSignal, TerminaVmStartupResponse, TrafficCounter,
    TrafficCountersRequest, TrafficCountersResponse,
};
use patchpanel_tests::PrivateBus;
use prost::Message as _;

const WAIT: Duration = Duration::from_secs(5);
/// The harness's allowance for a lifeline hang-up to be seen (DESIGN §4).
const HANGUP: Duration = Duration::from_secs(1);

fn namespace_response() -> ConnectNamespaceResponse {
    ConnectNamespaceResponse {
        ipv4_subnet: Some(IPv4Subnet::new(Ipv4Addr::new(100, 115, 92, 128), 30)),
        peer_ifname: "peer0".into(),
        peer_ipv4_address: ipv4_to_net_u32(Ipv4Addr::new(100, 115, 92, 130)),
        host_ifname: "arc_ns0".into(),
        host_ipv4_address: ipv4_to_net_u32(Ipv4Addr::new(100, 115, 92, 129)),
        netns_name: "connected_netns_0".into(),
    }
}

fn device(ifname: &str) -> NetworkDevice {
    NetworkDevice {
        ifname: ifname.into(),
        guest_ifname: "eth0".into(),
        guest_type: GuestType::TerminaVm as i32,
        ipv4_subnet: Some(IPv4Subnet::new(Ipv4Addr::new(100, 115, 92, 24), 30)),
        host_ipv4_addr: ipv4_to_net_u32(Ipv4Addr::new(100, 115, 92, 25)),
        ipv4_addr: ipv4_to_net_u32(Ipv4Addr::new(100, 115, 92, 26)),
        ..Default::default()
    }
}

fn client(bus: &PrivateBus) -> Client {
    Client::connect_to(bus.address()).expect("client connects to the private bus")
}

#[test]
fn connect_namespace_sends_the_request_with_a_lifeline_and_decodes_the_response() {
    let bus = PrivateBus::start().unwrap();
    let fake = FakeService::builder()
        .reply(names::CONNECT_NAMESPACE, &namespace_response())
        .start(bus.address())
        .unwrap();
    let request = ConnectNamespaceRequest {
        pid: -1,
        outbound_physical_device: "eth0".into(),
        route_on_vpn: true,
        traffic_source: Source::CrostiniVm as i32,
        ..Default::default()
    };

    let (response, _lifeline) = client(&bus).connect_namespace(&request).unwrap();

    assert_eq!(response, namespace_response());
    let call = fake.wait_for_call(names::CONNECT_NAMESPACE, WAIT).unwrap();
    assert_eq!(
        ConnectNamespaceRequest::decode(call.request.as_slice()).unwrap(),
        request
    );
    assert!(call.fd.is_some(), "ConnectNamespace arrived without an fd");
}

#[test]
fn server_copy_of_the_lifeline_is_quiet_while_the_lifeline_lives() {
    let bus = PrivateBus::start().unwrap();
    let fake = FakeService::builder()
        .reply(names::CONNECT_NAMESPACE, &namespace_response())
        .start(bus.address())
        .unwrap();

    let (_response, lifeline) = client(&bus)
        .connect_namespace(&ConnectNamespaceRequest::default())
        .unwrap();

    let fd = fake
        .wait_for_call(names::CONNECT_NAMESPACE, WAIT)
        .and_then(|call| call.fd)
        .unwrap();
    assert!(!wait_for_hangup(fd.as_fd(), Duration::from_millis(200)).unwrap());
    drop(lifeline);
}

#[test]
fn dropping_the_lifeline_hangs_up_the_servers_copy() {
    let bus = PrivateBus::start().unwrap();
    let fake = FakeService::builder()
        .reply(names::CONNECT_NAMESPACE, &namespace_response())
        .start(bus.address())
        .unwrap();
    let (_response, lifeline) = client(&bus)
        .connect_namespace(&ConnectNamespaceRequest::default())
        .unwrap();
    let fd = fake
        .wait_for_call(names::CONNECT_NAMESPACE, WAIT)
        .and_then(|call| call.fd)
        .unwrap();

    drop(lifeline);

    assert!(wait_for_hangup(fd.as_fd(), HANGUP).unwrap());
}

#[test]
fn lifeline_into_fd_keeps_the_namespace_until_the_fd_closes() {
    let bus = PrivateBus::start().unwrap();
    let fake = FakeService::builder()
        .reply(names::CONNECT_NAMESPACE, &namespace_response())
        .start(bus.address())
        .unwrap();
    let (_response, lifeline) = client(&bus)
        .connect_namespace(&ConnectNamespaceRequest::default())
        .unwrap();
    let fd = fake
        .wait_for_call(names::CONNECT_NAMESPACE, WAIT)
        .and_then(|call| call.fd)
        .unwrap();

    let read_end = lifeline.into_fd();

    assert!(!wait_for_hangup(fd.as_fd(), Duration::from_millis(200)).unwrap());
    drop(read_end);
    assert!(wait_for_hangup(fd.as_fd(), HANGUP).unwrap());
}

#[test]
fn empty_connect_namespace_response_is_a_failure() {
    let bus = PrivateBus::start().unwrap();
    let fake = FakeService::builder()
        .reply_bytes(names::CONNECT_NAMESPACE, Vec::new())
        .start(bus.address())
        .unwrap();

    let err = client(&bus)
        .connect_namespace(&ConnectNamespaceRequest::default())
        .unwrap_err();

    assert!(
        matches!(&err, Error::Failed(m) if m.contains("empty response")),
        "{err:?}"
    );
    // The lifeline was dropped with the error: the server's copy hangs up.
    let fd = fake
        .wait_for_call(names::CONNECT_NAMESPACE, WAIT)
        .and_then(|call| call.fd)
        .unwrap();
    assert!(wait_for_hangup(fd.as_fd(), HANGUP).unwrap());
}

#[test]
fn invalid_argument_from_the_server_keeps_its_message() {
    let bus = PrivateBus::start().unwrap();
    let _fake = FakeService::builder()
        .error(
            names::CONNECT_NAMESPACE,
            names::ERROR_INVALID_ARGUMENT,
            "ConnectNamespace: pid 1 is not yours",
        )
        .start(bus.address())
        .unwrap();

    let err = client(&bus)
        .connect_namespace(&ConnectNamespaceRequest {
            pid: 1,
            ..Default::default()
        })
        .unwrap_err();

    assert!(
        matches!(&err, Error::InvalidArgument(m) if m == "ConnectNamespace: pid 1 is not yours"),
        "{err:?}"
    );
}

#[test]
fn failed_from_the_server_keeps_its_message() {
    let bus = PrivateBus::start().unwrap();
    let _fake = FakeService::builder()
        .error(
            names::GET_DEVICES,
            names::ERROR_FAILED,
            "helper unavailable",
        )
        .start(bus.address())
        .unwrap();

    let err = client(&bus).get_devices().unwrap_err();

    assert!(
        matches!(&err, Error::Failed(m) if m == "helper unavailable"),
        "{err:?}"
    );
}

#[test]
fn call_without_a_daemon_is_service_unknown() {
    let bus = PrivateBus::start().unwrap();

    let err = client(&bus).get_devices().unwrap_err();

    assert!(matches!(err, Error::ServiceUnknown), "{err:?}");
}

#[test]
fn method_the_service_lacks_is_unknown_method() {
    let bus = PrivateBus::start().unwrap();
    let _fake = FakeService::builder().start(bus.address()).unwrap();

    let err = client(&bus).get_traffic_counters::<&str>(&[]).unwrap_err();

    assert!(
        matches!(&err, Error::UnknownMethod { method, .. } if method == names::GET_TRAFFIC_COUNTERS),
        "{err:?}"
    );
}

#[test]
fn call_to_a_silent_service_times_out() {
    let bus = PrivateBus::start().unwrap();
    // Owns the name and never reads its socket.
    let mut silent = Channel::open_private(bus.address()).unwrap();
    silent.register().unwrap();
    let silent = dbus::blocking::Connection::from(silent);
    silent
        .request_name(names::SERVICE, false, false, true)
        .unwrap();

    let err = client(&bus)
        .with_timeout(Duration::from_millis(300))
        .get_devices()
        .unwrap_err();

    assert!(matches!(err, Error::Timeout { .. }), "{err:?}");
}

#[test]
fn malformed_reply_is_a_decode_error_naming_the_message() {
    let bus = PrivateBus::start().unwrap();
    let _fake = FakeService::builder()
        .reply_bytes(names::GET_DEVICES, vec![0x0a, 0x05, 0x01])
        .start(bus.address())
        .unwrap();

    let err = client(&bus).get_devices().unwrap_err();

    assert!(
        matches!(
            err,
            Error::Decode {
                message: "GetDevicesResponse",
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn get_devices_decodes_every_device() {
    let bus = PrivateBus::start().unwrap();
    let _fake = FakeService::builder()
        .reply(
            names::GET_DEVICES,
            &GetDevicesResponse {
                devices: vec![device("vmtap0"), device("vmtap1")],
            },
        )
        .start(bus.address())
        .unwrap();

    let devices = client(&bus).get_devices().unwrap();

    assert_eq!(devices, vec![device("vmtap0"), device("vmtap1")]);
}

#[test]
fn get_traffic_counters_sends_the_device_names() {
    let bus = PrivateBus::start().unwrap();
    let counter = TrafficCounter {
        rx_bytes: 10,
        tx_bytes: 20,
        source: Source::Chrome as i32,
        device: "eth0".into(),
        ..Default::default()
    };
    let fake = FakeService::builder()
        .reply(
            names::GET_TRAFFIC_COUNTERS,
            &TrafficCountersResponse {
                counters: vec![counter.clone()],
            },
        )
        .start(bus.address())
        .unwrap();

    let counters = client(&bus)
        .get_traffic_counters(&["eth0", "wlan0"])
        .unwrap();

    assert_eq!(counters, vec![counter]);
    let call = fake
        .wait_for_call(names::GET_TRAFFIC_COUNTERS, WAIT)
        .unwrap();
    assert_eq!(
        TrafficCountersRequest::decode(call.request.as_slice())
            .unwrap()
            .devices,
        ["eth0", "wlan0"]
    );
    assert!(call.fd.is_none());
}

#[test]
fn modify_port_rule_answered_with_success_false_is_a_failure() {
    let bus = PrivateBus::start().unwrap();
    let _fake = FakeService::builder()
        .reply(
            names::MODIFY_PORT_RULE,
            &ModifyPortRuleResponse { success: false },
        )
        .start(bus.address())
        .unwrap();
    let request = ModifyPortRuleRequest {
        op: Operation::Create as i32,
        r#type: RuleType::Access as i32,
        proto: Protocol::Tcp as i32,
        input_dst_port: 8080,
        ..Default::default()
    };

    let err = client(&bus).modify_port_rule(&request).unwrap_err();

    assert!(matches!(err, Error::Failed(_)), "{err:?}");
}

#[test]
fn modify_port_rule_answered_with_success_is_ok() {
    let bus = PrivateBus::start().unwrap();
    let fake = FakeService::builder()
        .reply(
            names::MODIFY_PORT_RULE,
            &ModifyPortRuleResponse { success: true },
        )
        .start(bus.address())
        .unwrap();
    let request = ModifyPortRuleRequest {
        op: Operation::Delete as i32,
        r#type: RuleType::Forwarding as i32,
        proto: Protocol::Udp as i32,
        input_ifname: "eth0".into(),
        input_dst_port: 5000,
        dst_ip: "100.115.92.6".into(),
        dst_port: 5001,
        ..Default::default()
    };

    client(&bus).modify_port_rule(&request).unwrap();

    let call = fake.wait_for_call(names::MODIFY_PORT_RULE, WAIT).unwrap();
    assert_eq!(
        ModifyPortRuleRequest::decode(call.request.as_slice()).unwrap(),
        request
    );
}

#[test]
fn parallels_and_plugin_vm_startup_call_their_own_method_names() {
    let bus = PrivateBus::start().unwrap();
    let response = patchpanel_proto::PluginVmStartupResponse {
        tap_device_ifname: "vmtap3".into(),
        ..Default::default()
    };
    let fake = FakeService::builder()
        .reply(names::PARALLELS_VM_STARTUP, &response)
        .reply(names::PLUGIN_VM_STARTUP, &response)
        .start(bus.address())
        .unwrap();
    let client = client(&bus);

    assert_eq!(client.parallelsvm_startup(7, 1).unwrap(), response);
    assert_eq!(client.pluginvm_startup(8, 0).unwrap(), response);

    assert!(fake
        .wait_for_call(names::PARALLELS_VM_STARTUP, WAIT)
        .is_some());
    assert!(fake.wait_for_call(names::PLUGIN_VM_STARTUP, WAIT).is_some());
}

#[test]
fn termina_vm_startup_with_an_empty_response_is_a_failure() {
    let bus = PrivateBus::start().unwrap();
    let _fake = FakeService::builder()
        .reply(
            names::TERMINA_VM_STARTUP,
            &TerminaVmStartupResponse::default(),
        )
        .start(bus.address())
        .unwrap();

    let err = client(&bus).terminavm_startup(3).unwrap_err();

    assert!(matches!(err, Error::Failed(_)), "{err:?}");
}

#[test]
fn connect_honours_dbus_system_bus_address() {
    let bus = PrivateBus::start().unwrap();
    let _fake = FakeService::builder()
        .reply(names::GET_DEVICES, &GetDevicesResponse::default())
        .start(bus.address())
        .unwrap();
    // nextest runs each test in its own process, so this does not leak.
    std::env::set_var("DBUS_SYSTEM_BUS_ADDRESS", bus.address());

    let devices = Client::connect().unwrap().get_devices().unwrap();

    assert!(devices.is_empty());
}

#[test]
fn watch_yields_device_changes_in_order() {
    let bus = PrivateBus::start().unwrap();
    let fake = FakeService::builder().start(bus.address()).unwrap();
    let client = client(&bus);
    let mut changes = client.watch_device_changes().unwrap();
    let added = NetworkDeviceChangedSignal {
        device: Some(device("vmtap0")),
        event: Event::DeviceAdded as i32,
    };
    let removed = NetworkDeviceChangedSignal {
        event: Event::DeviceRemoved as i32,
        ..added.clone()
    };

    fake.emit_device_changed(&added).unwrap();
    fake.emit_device_changed(&removed).unwrap();

    assert_eq!(changes.next_timeout(WAIT).unwrap(), Some(added));
    assert_eq!(changes.next().unwrap().unwrap(), removed);
}

#[test]
fn watch_signals_yields_every_signal_decoded_by_member() {
    let bus = PrivateBus::start().unwrap();
    let fake = FakeService::builder().start(bus.address()).unwrap();
    let client = client(&bus);
    let mut signals = client.watch_signals().unwrap();
    let changed = NetworkDeviceChangedSignal {
        device: Some(device("vmtap0")),
        event: Event::DeviceAdded as i32,
    };
    let neighbor = NeighborReachabilityEventSignal {
        ifindex: 4,
        ip_addr: "192.0.2.1".into(),
        ..Default::default()
    };

    fake.emit_device_changed(&changed).unwrap();
    fake.emit_signal(names::NEIGHBOR_REACHABILITY_EVENT, neighbor.encode_to_vec())
        .unwrap();
    fake.emit_signal("Unheard", vec![7]).unwrap();

    assert_eq!(
        signals.next_timeout(WAIT).unwrap(),
        Some(Signal::NetworkDeviceChanged(changed))
    );
    assert_eq!(
        signals.next_timeout(WAIT).unwrap(),
        Some(Signal::NeighborReachabilityEvent(neighbor))
    );
    let other = signals.next_timeout(WAIT).unwrap().unwrap();
    assert_eq!(other.member(), "Unheard");
    assert_eq!(
        other,
        Signal::Other {
            member: "Unheard".into(),
            payload: vec![7]
        }
    );
}

#[test]
fn watch_device_changes_ignores_other_signals() {
    let bus = PrivateBus::start().unwrap();
    let fake = FakeService::builder().start(bus.address()).unwrap();
    let client = client(&bus);
    let mut changes = client.watch_device_changes().unwrap();
    let changed = NetworkDeviceChangedSignal {
        device: Some(device("vmtap0")),
        event: Event::DeviceAdded as i32,
    };

    fake.emit_signal("Unheard", vec![7]).unwrap();
    fake.emit_device_changed(&changed).unwrap();

    assert_eq!(changes.next_timeout(WAIT).unwrap(), Some(changed));
}

#[test]
fn watch_reports_a_malformed_signal_and_goes_on() {
    let bus = PrivateBus::start().unwrap();
    let fake = FakeService::builder().start(bus.address()).unwrap();
    let client = client(&bus);
    let mut changes = client.watch_device_changes().unwrap();
    let added = NetworkDeviceChangedSignal {
        device: Some(device("vmtap0")),
        event: Event::DeviceAdded as i32,
    };

    fake.emit_device_changed_bytes(vec![0x0a, 0x09]).unwrap();
    fake.emit_device_changed(&added).unwrap();

    assert!(matches!(
        changes.next_timeout(WAIT),
        Err(Error::Decode {
            message: "NetworkDeviceChangedSignal",
            ..
        })
    ));
    assert_eq!(changes.next_timeout(WAIT).unwrap(), Some(added));
}

#[test]
fn watch_times_out_without_signals() {
    let bus = PrivateBus::start().unwrap();
    let _fake = FakeService::builder().start(bus.address()).unwrap();
    let client = client(&bus);
    let mut changes = client.watch_device_changes().unwrap();

    assert_eq!(
        changes.next_timeout(Duration::from_millis(200)).unwrap(),
        None
    );
}

#[test]
fn watch_ignores_the_signal_from_another_sender() {
    let bus = PrivateBus::start().unwrap();
    let _fake = FakeService::builder().start(bus.address()).unwrap();
    let client = client(&bus);
    let mut changes = client.watch_device_changes().unwrap();
    let mut impostor = Channel::open_private(bus.address()).unwrap();
    impostor.register().unwrap();
    let signal = dbus::Message::signal(
        &names::PATH.into(),
        &names::INTERFACE.into(),
        &names::NETWORK_DEVICE_CHANGED.into(),
    )
    .append1(
        NetworkDeviceChangedSignal {
            device: Some(device("evil0")),
            event: Event::DeviceAdded as i32,
        }
        .encode_to_vec(),
    );

    impostor.send(signal).unwrap();
    impostor.flush();

    assert_eq!(
        changes.next_timeout(Duration::from_millis(300)).unwrap(),
        None
    );
}

#[test]
fn watch_ignores_a_signal_sent_to_it_alone_by_another_sender() {
    let bus = PrivateBus::start().unwrap();
    let fake = FakeService::builder().start(bus.address()).unwrap();
    let client = client(&bus);
    let mut changes = client.watch_device_changes().unwrap();
    let mut impostor = Channel::open_private(bus.address()).unwrap();
    impostor.register().unwrap();
    let forged = NetworkDeviceChangedSignal {
        device: Some(device("evil0")),
        event: Event::DeviceAdded as i32,
    };
    let real = NetworkDeviceChangedSignal {
        device: Some(device("vmtap0")),
        event: Event::DeviceAdded as i32,
    };
    let mut signal = dbus::Message::signal(
        &names::PATH.into(),
        &names::INTERFACE.into(),
        &names::NETWORK_DEVICE_CHANGED.into(),
    )
    .append1(forged.encode_to_vec());
    signal.set_destination(Some(client.unique_name().into()));

    impostor.send(signal).unwrap();
    // A round trip to the bus: the forgery is routed before the real one.
    impostor
        .send_with_reply_and_block(
            dbus::Message::new_method_call(
                "org.freedesktop.DBus",
                "/org/freedesktop/DBus",
                "org.freedesktop.DBus",
                "GetId",
            )
            .unwrap(),
            WAIT,
        )
        .unwrap();
    fake.emit_device_changed(&real).unwrap();

    assert_eq!(changes.next_timeout(WAIT).unwrap(), Some(real));
    assert_eq!(
        changes.next_timeout(Duration::from_millis(300)).unwrap(),
        None
    );
}

#[test]
fn watch_follows_the_service_to_its_next_owner() {
    let bus = PrivateBus::start().unwrap();
    let first = FakeService::builder().start(bus.address()).unwrap();
    let client = client(&bus);
    let mut signals = client.watch_signals().unwrap();
    let changed = NetworkDeviceChangedSignal {
        device: Some(device("vmtap0")),
        event: Event::DeviceAdded as i32,
    };

    drop(first);
    let second = FakeService::builder().start(bus.address()).unwrap();
    second.emit_device_changed(&changed).unwrap();

    assert_eq!(
        signals.next_timeout(WAIT).unwrap(),
        Some(Signal::NetworkDeviceChanged(changed))
    );
}

#[test]
fn watch_started_before_the_service_reports_its_signals() {
    let bus = PrivateBus::start().unwrap();
    let client = client(&bus);
    let mut changes = client.watch_device_changes().unwrap();
    let changed = NetworkDeviceChangedSignal {
        device: Some(device("vmtap0")),
        event: Event::DeviceAdded as i32,
    };

    let fake = FakeService::builder().start(bus.address()).unwrap();
    fake.emit_device_changed(&changed).unwrap();

    assert_eq!(changes.next_timeout(WAIT).unwrap(), Some(changed));
}

#[test]
fn two_subscriptions_on_one_client_each_see_every_signal() {
    let bus = PrivateBus::start().unwrap();
    let fake = FakeService::builder().start(bus.address()).unwrap();
    let client = client(&bus);
    let mut changes = client.watch_device_changes().unwrap();
    let mut signals = client.watch_signals().unwrap();
    let changed = NetworkDeviceChangedSignal {
        device: Some(device("vmtap0")),
        event: Event::DeviceAdded as i32,
    };

    fake.emit_device_changed(&changed).unwrap();

    assert_eq!(
        signals.next_timeout(WAIT).unwrap(),
        Some(Signal::NetworkDeviceChanged(changed.clone()))
    );
    assert_eq!(changes.next_timeout(WAIT).unwrap(), Some(changed));
}
