//! Keeps `proto/patchpanel_service.proto` and `docs/dbus-api.md` in step
//! with the hand-written Rust messages.
//!
//! The `.proto` file is parsed line by line (`message X {`, `enum E {`,
//! `[repeated] <type> <name> = <number>;`, `NAME = <number>;`, `}`); anything
//! else fails the test, so the parser cannot silently skip a field. Each
//! field is then checked against Rust by encoding a message with only that
//! field set and reading the key of the first (only) encoded field: its
//! number must be the `.proto` number and its wire type must fit the
//! `.proto` type. A struct literal without `..Default::default()` lists every
//! Rust field, so a Rust field missing from the table fails to compile.

use prost::Message;

use crate::methods::{
    configure_network_request, modify_port_rule_request, set_dns_redirection_rule_request,
    set_feature_flag_request, set_vpn_intent_request, socket_connection_event, tag_socket_request,
    traffic_annotation,
};
use crate::shared::{network_device, traffic_counter};
use crate::signals::{neighbor_reachability_event_signal, network_device_changed_signal};
use crate::*;

const PROTO_FILE: &str = include_str!("../proto/patchpanel_service.proto");

// ---- Rust side ----

/// A value that is not the proto3 default, so that it gets encoded.
trait Probe {
    fn probe() -> Self;
}

impl Probe for i32 {
    fn probe() -> Self {
        1
    }
}

impl Probe for u32 {
    fn probe() -> Self {
        1
    }
}

impl Probe for u64 {
    fn probe() -> Self {
        1
    }
}

impl Probe for bool {
    fn probe() -> Self {
        true
    }
}

impl Probe for String {
    fn probe() -> Self {
        "x".to_string()
    }
}

impl Probe for Vec<u8> {
    fn probe() -> Self {
        vec![1]
    }
}

impl Probe for Vec<String> {
    fn probe() -> Self {
        vec!["x".to_string()]
    }
}

impl Probe for Vec<NetworkDevice> {
    fn probe() -> Self {
        vec![NetworkDevice::default()]
    }
}

impl Probe for Vec<TrafficCounter> {
    fn probe() -> Self {
        vec![TrafficCounter::default()]
    }
}

impl Probe for Vec<Vec<u8>> {
    fn probe() -> Self {
        vec![vec![1]]
    }
}

impl Probe for Vec<IPAddrCIDR> {
    fn probe() -> Self {
        vec![IPAddrCIDR::default()]
    }
}

impl Probe for Vec<Route> {
    fn probe() -> Self {
        vec![Route::default()]
    }
}

impl<T: Default> Probe for Option<T> {
    fn probe() -> Self {
        Some(T::default())
    }
}

/// One Rust field, encoded alone.
struct RustField {
    message: &'static str,
    field: &'static str,
    encoded: Vec<u8>,
}

macro_rules! rust_messages {
    ($( $msg:ident { $($field:ident),* $(,)? } )*) => {
        fn rust_message_names() -> Vec<&'static str> {
            vec![$(stringify!($msg)),*]
        }

        // Single-field messages make `..Default::default()` redundant.
        #[allow(clippy::needless_update)]
        fn rust_fields() -> Vec<RustField> {
            let mut fields = Vec::new();
            $($(
                let message = $msg { $field: Probe::probe(), ..Default::default() };
                let field = stringify!($field);
                fields.push(RustField {
                    message: stringify!($msg),
                    field: field.strip_prefix("r#").unwrap_or(field),
                    encoded: message.encode_to_vec(),
                });
            )*)*
            fields
        }

        /// Builds every message with every field set (no `..Default`: a
        /// field missing from the table is a compile error) and checks that
        /// it survives encode + decode.
        fn round_trip_every_message_with_every_field_set() {
            $(
                let message = $msg { $($field: Probe::probe()),* };
                let decoded = $msg::decode(message.encode_to_vec().as_slice())
                    .expect(concat!(stringify!($msg), " decodes"));
                assert_eq!(decoded, message);
            )*
        }
    };
}

rust_messages! {
    IPv4Subnet { base_addr, prefix_len, addr }
    IPAddrCIDR { addr, prefix_len }
    NetworkDevice {
        ifname, ipv4_addr, ipv4_subnet, guest_type, phys_ifname, host_ipv4_addr,
        guest_ifname, dns_proxy_ipv4_addr, dns_proxy_ipv6_addr, technology_type,
    }
    TrafficCounter {
        rx_bytes, tx_bytes, rx_packets, tx_packets, source, device, ip_family,
    }
    ArcStartupRequest { pid }
    ArcStartupResponse {}
    ArcShutdownRequest { pid }
    ArcShutdownResponse {}
    ArcVmStartupRequest { cid }
    ArcVmStartupResponse { arc0_ipv4_address, tap_device_ifnames }
    ArcVmShutdownRequest { cid }
    ArcVmShutdownResponse {}
    TerminaVmStartupRequest { cid }
    TerminaVmStartupResponse {
        tap_device_ifname, ipv4_subnet, ipv4_address, gateway_ipv4_address,
        container_ipv4_subnet, container_ipv4_address,
    }
    TerminaVmShutdownRequest { cid }
    TerminaVmShutdownResponse {}
    PluginVmStartupRequest { id, subnet_index }
    PluginVmStartupResponse { tap_device_ifname, ipv4_subnet, ipv4_address }
    PluginVmShutdownRequest { id }
    PluginVmShutdownResponse {}
    BruschettaVmStartupRequest { id }
    BruschettaVmStartupResponse {
        tap_device_ifname, ipv4_subnet, ipv4_address, gateway_ipv4_address,
    }
    BruschettaVmShutdownRequest { id }
    BruschettaVmShutdownResponse {}
    BorealisVmStartupRequest { id }
    BorealisVmStartupResponse {
        tap_device_ifname, ipv4_subnet, ipv4_address, gateway_ipv4_address,
    }
    BorealisVmShutdownRequest { id }
    BorealisVmShutdownResponse {}
    ConnectNamespaceRequest {
        pid, outbound_physical_device, allow_user_traffic, route_on_vpn,
        traffic_source, static_ipv6,
    }
    ConnectNamespaceResponse {
        ipv4_subnet, peer_ifname, peer_ipv4_address, host_ifname,
        host_ipv4_address, netns_name,
    }
    GetDevicesRequest {}
    GetDevicesResponse { devices }
    TrafficCountersRequest { devices }
    TrafficCountersResponse { counters }
    ModifyPortRuleRequest {
        op, r#type, proto, input_ifname, input_dst_ip, input_dst_port, dst_ip,
        dst_port,
    }
    ModifyPortRuleResponse { success }
    SetVpnIntentRequest { policy }
    SetVpnIntentResponse { success }
    SetVpnLockdownRequest { enable_vpn_lockdown }
    SetVpnLockdownResponse {}
    SetDnsRedirectionRuleRequest {
        r#type, input_ifname, proxy_address, nameservers, host_ifname,
    }
    SetDnsRedirectionRuleResponse { success }
    TagSocketRequest { network_id, vpn_policy, traffic_annotation }
    TrafficAnnotation { host_id }
    TagSocketResponse { success }
    ConfigureNetworkRequest {
        ifindex, ifname, area, network_config, technology, priority, session_id,
    }
    ConfigureNetworkResponse { success }
    NetworkConfig {
        ipv4_address, ipv4_broadcast, ipv4_gateway, ipv6_addresses, ipv6_gateway,
        ipv4_default_route, ipv6_blackhole_route, excluded_route_prefixes,
        included_route_prefixes, rfc3442_routes, dns_servers, dns_search_domains,
        mtu, captive_portal_uri, ipv6_delegated_prefixes, pref64,
    }
    Route { prefix, gateway }
    NetworkPriority {
        is_primary_logical, is_primary_physical, is_primary_for_dns, ranking_order,
    }
    NetworkDeviceChangedSignal { device, event }
    NeighborReachabilityEventSignal { ifindex, ip_addr, role, r#type }
    NetworkConfigurationChangedSignal {}
    NotifyAndroidInteractiveStateRequest { interactive }
    NotifyAndroidInteractiveStateResponse {}
    NotifyAndroidWifiMulticastLockChangeRequest { held }
    NotifyAndroidWifiMulticastLockChangeResponse {}
    SocketConnectionEvent { saddr, sport, daddr, dport, proto, event, category }
    NotifySocketConnectionEventRequest { msg }
    NotifySocketConnectionEventResponse {}
    NotifyARCVPNSocketConnectionEventRequest { msg }
    NotifyARCVPNSocketConnectionEventResponse {}
    SetFeatureFlagRequest { flag, enabled }
    SetFeatureFlagResponse { enabled }
}

macro_rules! rust_enums {
    ($( $msg:literal . $name:literal => $ty:ty, )*) => {
        /// `(message, enum)` of every Rust enum.
        fn rust_enum_names() -> Vec<(&'static str, &'static str)> {
            vec![$(($msg, $name)),*]
        }

        /// `Some(.proto name of value)` (or `Some(None)` if the enum has no
        /// such value), `None` if there is no such Rust enum.
        fn rust_enum_value(message: &str, name: &str, value: i32) -> Option<Option<&'static str>> {
            $(
                if message == $msg && name == $name {
                    return Some(<$ty>::try_from(value).ok().map(|v| v.as_str_name()));
                }
            )*
            None
        }
    };
}

rust_enums! {
    "NetworkDevice"."GuestType" => network_device::GuestType,
    "NetworkDevice"."TechnologyType" => network_device::TechnologyType,
    "TrafficCounter"."Source" => traffic_counter::Source,
    "TrafficCounter"."IpFamily" => traffic_counter::IpFamily,
    "ModifyPortRuleRequest"."Operation" => modify_port_rule_request::Operation,
    "ModifyPortRuleRequest"."RuleType" => modify_port_rule_request::RuleType,
    "ModifyPortRuleRequest"."Protocol" => modify_port_rule_request::Protocol,
    "SetVpnIntentRequest"."VpnRoutingPolicy" => set_vpn_intent_request::VpnRoutingPolicy,
    "SetDnsRedirectionRuleRequest"."RuleType" => set_dns_redirection_rule_request::RuleType,
    "TagSocketRequest"."VpnRoutingPolicy" => tag_socket_request::VpnRoutingPolicy,
    "TrafficAnnotation"."Id" => traffic_annotation::Id,
    "ConfigureNetworkRequest"."NetworkTechnology" => configure_network_request::NetworkTechnology,
    "NetworkDeviceChangedSignal"."Event" => network_device_changed_signal::Event,
    "NeighborReachabilityEventSignal"."Role" => neighbor_reachability_event_signal::Role,
    "NeighborReachabilityEventSignal"."EventType" => neighbor_reachability_event_signal::EventType,
    "SocketConnectionEvent"."IpProtocol" => socket_connection_event::IpProtocol,
    "SocketConnectionEvent"."SocketEvent" => socket_connection_event::SocketEvent,
    "SocketConnectionEvent"."QosCategory" => socket_connection_event::QosCategory,
    "SetFeatureFlagRequest"."FeatureFlag" => set_feature_flag_request::FeatureFlag,
}

// ---- .proto side ----

#[derive(Debug)]
struct ProtoField {
    message: String,
    ty: String,
    name: String,
    repeated: bool,
    number: u32,
}

#[derive(Debug)]
struct ProtoEnumValue {
    message: String,
    enum_name: String,
    name: String,
    number: i32,
}

#[derive(Debug, Default)]
struct ProtoSchema {
    messages: Vec<String>,
    /// `(message, enum)` pairs.
    enums: Vec<(String, String)>,
    fields: Vec<ProtoField>,
    enum_values: Vec<ProtoEnumValue>,
}

enum Block {
    Message(String),
    Enum { message: String, name: String },
}

/// Splits `lhs = number ...;` into `lhs` and the number.
fn split_assignment<T: std::str::FromStr>(line: &str, lineno: usize) -> (&str, T) {
    let (lhs, rhs) = line
        .split_once('=')
        .unwrap_or_else(|| panic!("line {lineno}: expected `=`: {line}"));
    assert!(line.ends_with(';'), "line {lineno}: expected `;`: {line}");
    let digits: String = rhs
        .trim()
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    let number = digits
        .parse()
        .unwrap_or_else(|_| panic!("line {lineno}: expected a number: {line}"));
    (lhs.trim(), number)
}

fn parse_proto(text: &str) -> ProtoSchema {
    let mut schema = ProtoSchema::default();
    let mut stack: Vec<Block> = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let lineno = index + 1;
        let line = raw.split("//").next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("message ") {
            assert!(
                stack.is_empty(),
                "line {lineno}: nested message unsupported"
            );
            let name = rest.trim_end_matches(['{', '}', ' ']).to_string();
            schema.messages.push(name.clone());
            if !line.ends_with("{}") {
                stack.push(Block::Message(name));
            }
        } else if let Some(rest) = line.strip_prefix("enum ") {
            let Some(Block::Message(message)) = stack.last() else {
                panic!("line {lineno}: enum outside a message");
            };
            let message = message.clone();
            let name = rest.trim_end_matches(['{', ' ']).to_string();
            schema.enums.push((message.clone(), name.clone()));
            stack.push(Block::Enum { message, name });
        } else if line == "}" {
            stack
                .pop()
                .unwrap_or_else(|| panic!("line {lineno}: unbalanced `}}`"));
        } else {
            match stack.last() {
                None if line == "syntax = \"proto3\";" || line == "package patchpanel;" => {}
                None => panic!("line {lineno}: unexpected top-level line: {line}"),
                Some(Block::Enum { message, name }) => {
                    let (value_name, number) = split_assignment::<i32>(line, lineno);
                    schema.enum_values.push(ProtoEnumValue {
                        message: message.clone(),
                        enum_name: name.clone(),
                        name: value_name.to_string(),
                        number,
                    });
                }
                Some(Block::Message(message)) => {
                    let (lhs, number) = split_assignment::<u32>(line, lineno);
                    let tokens: Vec<&str> = lhs.split_whitespace().collect();
                    let (repeated, ty, name) = match tokens.as_slice() {
                        [ty, name] => (false, *ty, *name),
                        ["repeated", ty, name] => (true, *ty, *name),
                        // proto3 `optional`: presence is tracked, the
                        // encoding is the plain field's.
                        ["optional", ty, name] => (false, *ty, *name),
                        _ => panic!("line {lineno}: unexpected field: {line}"),
                    };
                    schema.fields.push(ProtoField {
                        message: message.clone(),
                        ty: ty.to_string(),
                        name: name.to_string(),
                        repeated,
                        number,
                    });
                }
            }
        }
    }
    assert!(stack.is_empty(), "unclosed block at end of file");
    schema
}

/// Protobuf wire type a field of `.proto` type `field.ty` is encoded with.
fn expected_wire_type(schema: &ProtoSchema, field: &ProtoField) -> u8 {
    const VARINT: u8 = 0;
    const LEN: u8 = 2;
    if field.repeated {
        // Repeated strings and messages; repeated scalars are packed in
        // proto3, which is also length-delimited.
        return LEN;
    }
    let is_enum = schema.enums.iter().any(|(message, name)| {
        (*message == field.message && *name == field.ty) || format!("{message}.{name}") == field.ty
    });
    match field.ty.as_str() {
        "int32" | "int64" | "uint32" | "uint64" | "bool" => VARINT,
        "string" | "bytes" => LEN,
        _ if is_enum => VARINT,
        ty if schema.messages.iter().any(|m| m == ty) => LEN,
        ty => panic!("{}.{}: unknown type {ty}", field.message, field.name),
    }
}

/// Reads the key (field number, wire type) at the start of `bytes`.
fn first_key(bytes: &[u8]) -> (u32, u8) {
    let mut key: u64 = 0;
    for (i, byte) in bytes.iter().enumerate().take(5) {
        key |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            let number = u32::try_from(key >> 3).expect("field number fits u32");
            return (number, (key & 7) as u8);
        }
    }
    panic!("no complete key in {bytes:?}");
}

// ---- Tests ----

/// Every disagreement between the `.proto` text and the Rust code.
fn schema_mismatches(proto_text: &str) -> Vec<String> {
    let schema = parse_proto(proto_text);
    let rust = rust_fields();
    let mut mismatches = Vec::new();

    let mut in_proto = schema.messages.clone();
    let mut in_rust: Vec<String> = rust_message_names().into_iter().map(String::from).collect();
    in_proto.sort();
    in_rust.sort();
    if in_proto != in_rust {
        mismatches.push(format!(
            "messages differ: .proto {in_proto:?}, Rust {in_rust:?}"
        ));
    }

    for field in &schema.fields {
        let name = format!("{}.{}", field.message, field.name);
        let Some(rust_field) = rust
            .iter()
            .find(|f| f.message == field.message && f.field == field.name)
        else {
            mismatches.push(format!("{name} is not in Rust"));
            continue;
        };
        let (number, wire_type) = first_key(&rust_field.encoded);
        if number != field.number {
            mismatches.push(format!(
                "{name}: Rust tag {number}, .proto number {}",
                field.number
            ));
        }
        if wire_type != expected_wire_type(&schema, field) {
            mismatches.push(format!(
                "{name}: wire type {wire_type} does not fit `{}`",
                field.ty
            ));
        }
    }
    for rust_field in &rust {
        let listed = schema
            .fields
            .iter()
            .any(|f| f.message == rust_field.message && f.name == rust_field.field);
        if !listed {
            mismatches.push(format!(
                "{}.{} is not in the .proto file",
                rust_field.message, rust_field.field
            ));
        }
    }

    for value in &schema.enum_values {
        let name = format!("{}.{}.{}", value.message, value.enum_name, value.name);
        match rust_enum_value(&value.message, &value.enum_name, value.number) {
            None => mismatches.push(format!("{name}: no such Rust enum")),
            Some(rust) if rust != Some(value.name.as_str()) => mismatches.push(format!(
                "{name} = {}: Rust has {rust:?} there",
                value.number
            )),
            Some(_) => {}
        }
    }
    for (message, name) in rust_enum_names() {
        let in_proto = schema
            .enum_values
            .iter()
            .filter(|v| v.message == message && v.enum_name == name)
            .count();
        let in_rust = (-1..=256)
            .filter(|&n| matches!(rust_enum_value(message, name, n), Some(Some(_))))
            .count();
        if in_proto != in_rust {
            mismatches.push(format!(
                "{message}.{name}: {in_proto} values in .proto, {in_rust} in Rust"
            ));
        }
    }
    mismatches
}

#[test]
fn proto_file_matches_rust_messages_fields_and_enums() {
    let mismatches = schema_mismatches(PROTO_FILE);

    assert!(mismatches.is_empty(), "{mismatches:#?}");
}

#[test]
fn schema_check_catches_a_wrong_field_number() {
    let edited = PROTO_FILE.replace("  bool route_on_vpn = 4;", "  bool route_on_vpn = 7;");
    assert_ne!(edited, PROTO_FILE);

    let mismatches = schema_mismatches(&edited);

    assert_eq!(
        mismatches,
        ["ConnectNamespaceRequest.route_on_vpn: Rust tag 4, .proto number 7"]
    );
}

#[test]
fn schema_check_catches_a_wrong_wire_type() {
    let edited = PROTO_FILE.replace("  uint32 cid = 1;", "  string cid = 1;");
    assert_ne!(edited, PROTO_FILE);

    let mismatches = schema_mismatches(&edited);

    assert!(!mismatches.is_empty());
    assert!(
        mismatches.iter().all(|m| m.contains("cid: wire type")),
        "{mismatches:#?}"
    );
}

#[test]
fn schema_check_catches_a_wrong_enum_value() {
    let edited = PROTO_FILE.replace("    DEVICE_REMOVED = 2;", "    DEVICE_REMOVED = 3;");
    assert_ne!(edited, PROTO_FILE);

    let mismatches = schema_mismatches(&edited);

    assert_eq!(
        mismatches,
        ["NetworkDeviceChangedSignal.Event.DEVICE_REMOVED = 3: Rust has None there"]
    );
}

#[test]
fn schema_check_catches_a_field_missing_from_the_proto_file() {
    let edited = PROTO_FILE.replace("  bool static_ipv6 = 6;\n", "");
    assert_ne!(edited, PROTO_FILE);

    let mismatches = schema_mismatches(&edited);

    assert_eq!(
        mismatches,
        ["ConnectNamespaceRequest.static_ipv6 is not in the .proto file"]
    );
}

#[test]
fn every_message_round_trips_with_every_field_set() {
    round_trip_every_message_with_every_field_set();
}

#[test]
fn every_method_names_messages_that_exist() {
    let messages = rust_message_names();

    for spec in names::METHODS {
        assert!(messages.contains(&spec.request), "{}", spec.request);
        assert!(messages.contains(&spec.response), "{}", spec.response);
    }
}

#[test]
fn dbus_reference_doc_mentions_every_method_message_and_error() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/dbus-api.md");
    let doc = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));

    let mut expected: Vec<&str> = vec![
        names::SERVICE,
        names::PATH,
        names::ERROR_INVALID_ARGUMENT,
        names::ERROR_FAILED,
        names::NETWORK_DEVICE_CHANGED,
        names::NEIGHBOR_REACHABILITY_EVENT,
    ];
    expected.extend(names::METHODS.iter().map(|spec| spec.name));
    expected.extend(rust_message_names());
    for word in expected {
        assert!(
            doc.contains(word),
            "docs/dbus-api.md does not mention {word}"
        );
    }
}
