//! How answers are shown: tables and text for people, one JSON object per
//! line for scripts. Pure functions from protobuf messages to strings, so the
//! shapes are unit-tested without a bus.
//!
//! Addresses are printed as dotted text whatever their wire encoding
//! (`addr4` or `u32 net-order`); enum values as their `.proto` names, or as
//! the number when this build does not know it.

use std::net::{Ipv4Addr, Ipv6Addr};

use patchpanel_client::Signal;
use patchpanel_proto::neighbor_reachability_event_signal::{EventType, Role};
use patchpanel_proto::network_device::{GuestType, TechnologyType};
use patchpanel_proto::network_device_changed_signal::Event;
use patchpanel_proto::traffic_counter::{IpFamily, Source};
use patchpanel_proto::{
    ipv4_from_addr4, ipv4_from_net_u32, ArcVmStartupResponse, BorealisVmStartupResponse,
    BruschettaVmStartupResponse, ConnectNamespaceResponse, IPv4Subnet,
    NeighborReachabilityEventSignal, NetworkDevice, NetworkDeviceChangedSignal,
    PluginVmStartupResponse, TerminaVmStartupResponse, TrafficCounter,
};
use serde::Serialize;

/// What `connect-ns` prints. The same keys as `tests/tools/connect_ns.py`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NamespaceJson {
    pub netns_name: String,
    pub host_ifname: String,
    pub host_ipv4_address: Option<String>,
    pub peer_ifname: String,
    pub peer_ipv4_address: Option<String>,
    pub ipv4_subnet: Option<String>,
}

impl From<&ConnectNamespaceResponse> for NamespaceJson {
    fn from(response: &ConnectNamespaceResponse) -> Self {
        Self {
            netns_name: response.netns_name.clone(),
            host_ifname: response.host_ifname.clone(),
            host_ipv4_address: net_u32(response.host_ipv4_address),
            peer_ifname: response.peer_ifname.clone(),
            peer_ipv4_address: net_u32(response.peer_ipv4_address),
            ipv4_subnet: response.ipv4_subnet.as_ref().and_then(subnet),
        }
    }
}

/// One device of `devices --json` and `watch --json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeviceJson {
    pub ifname: String,
    pub guest_ifname: String,
    pub guest_type: String,
    pub phys_ifname: String,
    pub technology_type: String,
    pub ipv4_subnet: Option<String>,
    pub host_ipv4_addr: Option<String>,
    pub guest_ipv4_addr: Option<String>,
    pub dns_proxy_ipv4_addr: Option<String>,
    pub dns_proxy_ipv6_addr: Option<String>,
}

impl From<&NetworkDevice> for DeviceJson {
    fn from(device: &NetworkDevice) -> Self {
        Self {
            ifname: device.ifname.clone(),
            guest_ifname: device.guest_ifname.clone(),
            guest_type: enum_name(
                device.guest_type,
                GuestType::try_from(device.guest_type).map(|v| v.as_str_name()),
            ),
            phys_ifname: device.phys_ifname.clone(),
            technology_type: enum_name(
                device.technology_type,
                TechnologyType::try_from(device.technology_type).map(|v| v.as_str_name()),
            ),
            ipv4_subnet: device.ipv4_subnet.as_ref().and_then(subnet),
            host_ipv4_addr: net_u32(device.host_ipv4_addr),
            guest_ipv4_addr: net_u32(device.ipv4_addr),
            dns_proxy_ipv4_addr: ipv4_from_addr4(&device.dns_proxy_ipv4_addr)
                .map(|a| a.to_string()),
            dns_proxy_ipv6_addr: <[u8; 16]>::try_from(device.dns_proxy_ipv6_addr.as_slice())
                .ok()
                .map(|octets| Ipv6Addr::from(octets).to_string()),
        }
    }
}

/// `devices --json`.
#[derive(Debug, Serialize)]
pub struct DevicesJson {
    pub devices: Vec<DeviceJson>,
}

/// One counter of `counters --json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CounterJson {
    pub device: String,
    pub source: String,
    pub ip_family: String,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub tx_packets: u64,
}

impl From<&TrafficCounter> for CounterJson {
    fn from(counter: &TrafficCounter) -> Self {
        Self {
            device: counter.device.clone(),
            source: enum_name(
                counter.source,
                Source::try_from(counter.source).map(|v| v.as_str_name()),
            ),
            ip_family: enum_name(
                counter.ip_family,
                IpFamily::try_from(counter.ip_family).map(|v| v.as_str_name()),
            ),
            rx_bytes: counter.rx_bytes,
            tx_bytes: counter.tx_bytes,
            rx_packets: counter.rx_packets,
            tx_packets: counter.tx_packets,
        }
    }
}

/// `counters --json`.
#[derive(Debug, Serialize)]
pub struct CountersJson {
    pub counters: Vec<CounterJson>,
}

/// One line of `watch --json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeviceChangeJson {
    pub event: String,
    pub device: Option<DeviceJson>,
}

impl From<&NetworkDeviceChangedSignal> for DeviceChangeJson {
    fn from(signal: &NetworkDeviceChangedSignal) -> Self {
        Self {
            event: enum_name(
                signal.event,
                Event::try_from(signal.event).map(|v| v.as_str_name()),
            ),
            device: signal.device.as_ref().map(DeviceJson::from),
        }
    }
}

/// One line of `monitor --json`: `signal` is the D-Bus member, the other
/// keys are the decoded payload's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SignalJson {
    pub signal: String,
    #[serde(flatten)]
    pub body: SignalBody,
}

/// The payload of a [`SignalJson`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum SignalBody {
    DeviceChanged(DeviceChangeJson),
    Neighbor(NeighborJson),
    /// A signal this build cannot decode: its payload in hex.
    Other {
        payload_hex: String,
    },
}

/// `NeighborReachabilityEvent`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NeighborJson {
    pub ifindex: i32,
    pub ip_addr: String,
    pub role: String,
    #[serde(rename = "type")]
    pub event_type: String,
}

impl From<&NeighborReachabilityEventSignal> for NeighborJson {
    fn from(signal: &NeighborReachabilityEventSignal) -> Self {
        Self {
            ifindex: signal.ifindex,
            ip_addr: signal.ip_addr.clone(),
            role: enum_name(
                signal.role,
                Role::try_from(signal.role).map(|v| v.as_str_name()),
            ),
            event_type: enum_name(
                signal.r#type,
                EventType::try_from(signal.r#type).map(|v| v.as_str_name()),
            ),
        }
    }
}

impl From<&Signal> for SignalJson {
    fn from(signal: &Signal) -> Self {
        let body = match signal {
            Signal::NetworkDeviceChanged(s) => SignalBody::DeviceChanged(DeviceChangeJson::from(s)),
            Signal::NeighborReachabilityEvent(s) => SignalBody::Neighbor(NeighborJson::from(s)),
            Signal::Other { payload, .. } => SignalBody::Other {
                payload_hex: payload.iter().map(|b| format!("{b:02x}")).collect(),
            },
        };
        Self {
            signal: signal.member().to_string(),
            body,
        }
    }
}

/// One `monitor` line for people: the member, then the payload.
pub fn signal_text(signal: &Signal) -> String {
    match signal {
        Signal::NetworkDeviceChanged(s) => {
            format!("{} {}", signal.member(), device_change_text(s))
        }
        Signal::NeighborReachabilityEvent(s) => {
            let n = NeighborJson::from(s);
            format!(
                "{} ifindex={} ip={} role={} type={}",
                signal.member(),
                n.ifindex,
                n.ip_addr,
                n.role,
                n.event_type
            )
        }
        Signal::Other { member, payload } => format!("{member} ({} bytes)", payload.len()),
    }
}

/// What `vm start`, `vm stop`, `arc start` and `arc stop` print with
/// `--json`. `guest` is `termina`, `plugin`, `arcvm` or `arc`; the keys that
/// do not apply to a guest are left out.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct GuestJson {
    pub guest: &'static str,
    /// `started` or `stopped`.
    pub action: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tap_device_ifname: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tap_device_ifnames: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ipv4_subnet: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ipv4_address: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gateway_ipv4_address: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_ipv4_subnet: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_ipv4_address: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arc0_ipv4_address: Option<String>,
    /// `arc start`: the ARC devices GetDevices lists right after.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub devices: Option<Vec<DeviceJson>>,
}

impl GuestJson {
    pub fn termina(cid: u32, r: &TerminaVmStartupResponse) -> Self {
        Self {
            guest: "termina",
            action: "started",
            cid: Some(cid),
            tap_device_ifname: Some(r.tap_device_ifname.clone()),
            ipv4_subnet: r.ipv4_subnet.as_ref().and_then(subnet),
            ipv4_address: addr4(&r.ipv4_address),
            gateway_ipv4_address: addr4(&r.gateway_ipv4_address),
            container_ipv4_subnet: r.container_ipv4_subnet.as_ref().and_then(subnet),
            container_ipv4_address: addr4(&r.container_ipv4_address),
            ..Default::default()
        }
    }

    pub fn plugin(id: u64, r: &PluginVmStartupResponse) -> Self {
        Self {
            guest: "plugin",
            action: "started",
            id: Some(id),
            tap_device_ifname: Some(r.tap_device_ifname.clone()),
            ipv4_subnet: r.ipv4_subnet.as_ref().and_then(subnet),
            ipv4_address: addr4(&r.ipv4_address),
            ..Default::default()
        }
    }

    pub fn bruschetta(id: u64, r: &BruschettaVmStartupResponse) -> Self {
        Self {
            id: Some(id),
            ..Self::tap_with_gateway(
                "bruschetta",
                &r.tap_device_ifname,
                r.ipv4_subnet.as_ref(),
                &r.ipv4_address,
                &r.gateway_ipv4_address,
            )
        }
    }

    pub fn borealis(cid: u32, r: &BorealisVmStartupResponse) -> Self {
        Self {
            cid: Some(cid),
            ..Self::tap_with_gateway(
                "borealis",
                &r.tap_device_ifname,
                r.ipv4_subnet.as_ref(),
                &r.ipv4_address,
                &r.gateway_ipv4_address,
            )
        }
    }

    /// A started VM with one TAP, its subnet, its address and gateway.
    fn tap_with_gateway(
        guest: &'static str,
        tap: &str,
        ipv4_subnet: Option<&IPv4Subnet>,
        address: &[u8],
        gateway: &[u8],
    ) -> Self {
        Self {
            guest,
            action: "started",
            tap_device_ifname: Some(tap.to_string()),
            ipv4_subnet: ipv4_subnet.and_then(subnet),
            ipv4_address: addr4(address),
            gateway_ipv4_address: addr4(gateway),
            ..Default::default()
        }
    }

    pub fn arcvm(cid: u32, r: &ArcVmStartupResponse) -> Self {
        Self {
            guest: "arcvm",
            action: "started",
            cid: Some(cid),
            tap_device_ifnames: Some(r.tap_device_ifnames.clone()),
            arc0_ipv4_address: addr4(&r.arc0_ipv4_address),
            ..Default::default()
        }
    }

    pub fn arc(pid: i32, devices: &[NetworkDevice]) -> Self {
        Self {
            guest: "arc",
            action: "started",
            pid: Some(pid),
            devices: Some(
                devices
                    .iter()
                    .filter(|d| d.guest_type() == GuestType::Arc)
                    .map(DeviceJson::from)
                    .collect(),
            ),
            ..Default::default()
        }
    }

    /// A stop: the guest and its key only.
    pub fn stopped(
        guest: &'static str,
        cid: Option<u32>,
        id: Option<u64>,
        pid: Option<i32>,
    ) -> Self {
        Self {
            guest,
            action: "stopped",
            cid,
            id,
            pid,
            ..Default::default()
        }
    }
}

/// `vm`/`arc` for people: a title line, then one `key: value` line per
/// field that has a value.
pub fn guest_text(g: &GuestJson) -> String {
    let what = match g.guest {
        "termina" => "Termina VM",
        "plugin" => "Plugin VM",
        "arcvm" => "ARCVM",
        "bruschetta" => "Bruschetta VM",
        "borealis" => "Borealis VM",
        _ => "ARC container",
    };
    let key = match (g.cid, g.id, g.pid) {
        (Some(cid), _, _) => format!("cid {cid}"),
        (_, Some(id), _) => format!("id {id}"),
        (_, _, Some(pid)) => format!("pid {pid}"),
        _ => String::new(),
    };
    let mut out = format!("{} {what} {key}\n", g.action);
    let mut field = |name: &str, value: &Option<String>| {
        if let Some(value) = value {
            out.push_str(&format!("{:<20}{value}\n", format!("{name}:")));
        }
    };
    field("tap", &g.tap_device_ifname);
    field("taps", &g.tap_device_ifnames.as_ref().map(|t| t.join(" ")));
    field("subnet", &g.ipv4_subnet);
    field("address", &g.ipv4_address);
    field("gateway", &g.gateway_ipv4_address);
    field("container subnet", &g.container_ipv4_subnet);
    field("container address", &g.container_ipv4_address);
    field("arc0 address", &g.arc0_ipv4_address);
    if let Some(devices) = &g.devices {
        if devices.is_empty() {
            out.push_str("no ARC devices yet (they follow the uplinks)\n");
        }
        for d in devices {
            out.push_str(&format!(
                "device:             {} uplink={} guest={} {} host={}\n",
                d.ifname,
                dash(d.phys_ifname.clone()),
                dash(d.guest_ifname.clone()),
                opt(d.guest_ipv4_addr.clone()),
                opt(d.host_ipv4_addr.clone()),
            ));
        }
    }
    out
}

/// An `addr4` field; empty or malformed is `None`.
fn addr4(bytes: &[u8]) -> Option<String> {
    ipv4_from_addr4(bytes).map(|a| a.to_string())
}

/// One JSON object, on one line.
pub fn json_line<T: Serialize>(value: &T) -> String {
    // Serializing these plain structs cannot fail (no maps with non-string
    // keys, no custom serializers); fall back to an error object regardless.
    serde_json::to_string(value)
        .unwrap_or_else(|err| format!("{{\"error\":{:?}}}", err.to_string()))
}

/// `connect-ns` for people.
pub fn namespace_text(ns: &NamespaceJson, pid: Option<i32>) -> String {
    let netns = match (ns.netns_name.as_str(), pid) {
        ("", Some(pid)) => format!("(network namespace of pid {pid})"),
        ("", None) => "-".to_string(),
        (name, _) => name.to_string(),
    };
    let addr = |a: &Option<String>| a.clone().unwrap_or_else(|| "-".into());
    format!(
        "netns:  {netns}\nhost:   {} {}\npeer:   {} {}\nsubnet: {}\n",
        ns.host_ifname,
        addr(&ns.host_ipv4_address),
        ns.peer_ifname,
        addr(&ns.peer_ipv4_address),
        addr(&ns.ipv4_subnet),
    )
}

/// `devices` for people.
pub fn devices_table(devices: &[NetworkDevice]) -> String {
    if devices.is_empty() {
        return "no guest devices\n".into();
    }
    let rows = devices
        .iter()
        .map(DeviceJson::from)
        .map(|d| {
            vec![
                d.ifname,
                dash(d.guest_ifname),
                d.guest_type,
                dash(d.phys_ifname),
                opt(d.ipv4_subnet),
                opt(d.host_ipv4_addr),
                opt(d.guest_ipv4_addr),
                d.technology_type,
                opt(d.dns_proxy_ipv4_addr),
            ]
        })
        .collect();
    table(
        &[
            "IFNAME",
            "GUEST_IFNAME",
            "TYPE",
            "UPLINK",
            "SUBNET",
            "HOST_ADDR",
            "GUEST_ADDR",
            "TECHNOLOGY",
            "DNS_PROXY",
        ],
        rows,
    )
}

/// `counters` for people.
pub fn counters_table(counters: &[TrafficCounter]) -> String {
    if counters.is_empty() {
        return "no traffic counters\n".into();
    }
    let rows = counters
        .iter()
        .map(CounterJson::from)
        .map(|c| {
            vec![
                c.device,
                c.source,
                c.ip_family,
                c.rx_bytes.to_string(),
                c.tx_bytes.to_string(),
                c.rx_packets.to_string(),
                c.tx_packets.to_string(),
            ]
        })
        .collect();
    table(
        &[
            "DEVICE",
            "SOURCE",
            "FAMILY",
            "RX_BYTES",
            "TX_BYTES",
            "RX_PACKETS",
            "TX_PACKETS",
        ],
        rows,
    )
}

/// One `watch` line for people.
pub fn device_change_text(signal: &NetworkDeviceChangedSignal) -> String {
    let change = DeviceChangeJson::from(signal);
    match change.device {
        None => format!("{} (no device)", change.event),
        Some(d) => format!(
            "{} {} guest={} type={} uplink={} subnet={} host={} guest_addr={}",
            change.event,
            d.ifname,
            dash(d.guest_ifname),
            d.guest_type,
            dash(d.phys_ifname),
            opt(d.ipv4_subnet),
            opt(d.host_ipv4_addr),
            opt(d.guest_ipv4_addr),
        ),
    }
}

/// Left-aligned columns separated by two spaces, no trailing blanks.
pub(crate) fn table(headers: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, (cell, width)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<width$}  "));
            }
        }
        out.trim_end().to_string() + "\n"
    };
    let mut out = line(headers.to_vec());
    for row in &rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

/// A `u32 net-order` address; 0 (unset) is `None`.
fn net_u32(value: u32) -> Option<String> {
    (value != 0).then(|| ipv4_from_net_u32(value).to_string())
}

/// `base/prefix`, from the `addr4` field or the deprecated one.
fn subnet(subnet: &IPv4Subnet) -> Option<String> {
    let base: Ipv4Addr = subnet.addr_v4()?;
    (!(base.is_unspecified() && subnet.prefix_len == 0))
        .then(|| format!("{base}/{}", subnet.prefix_len))
}

fn enum_name<E>(value: i32, known: Result<&'static str, E>) -> String {
    known.map_or_else(|_| value.to_string(), str::to_string)
}

fn dash(text: String) -> String {
    if text.is_empty() {
        "-".into()
    } else {
        text
    }
}

fn opt(text: Option<String>) -> String {
    text.unwrap_or_else(|| "-".into())
}

#[cfg(test)]
mod tests {
    use patchpanel_proto::ipv4_to_net_u32;
    use serde_json::{json, Value};

    use super::*;

    fn response() -> ConnectNamespaceResponse {
        ConnectNamespaceResponse {
            ipv4_subnet: Some(IPv4Subnet::new(Ipv4Addr::new(100, 115, 92, 128), 30)),
            peer_ifname: "peer0".into(),
            peer_ipv4_address: ipv4_to_net_u32(Ipv4Addr::new(100, 115, 92, 130)),
            host_ifname: "arc_ns0".into(),
            host_ipv4_address: ipv4_to_net_u32(Ipv4Addr::new(100, 115, 92, 129)),
            netns_name: "connected_netns_0".into(),
        }
    }

    fn device() -> NetworkDevice {
        NetworkDevice {
            ifname: "vmtap0".into(),
            ipv4_addr: ipv4_to_net_u32(Ipv4Addr::new(100, 115, 92, 26)),
            ipv4_subnet: Some(IPv4Subnet::new(Ipv4Addr::new(100, 115, 92, 24), 30)),
            guest_type: GuestType::TerminaVm as i32,
            phys_ifname: String::new(),
            host_ipv4_addr: ipv4_to_net_u32(Ipv4Addr::new(100, 115, 92, 25)),
            guest_ifname: "eth0".into(),
            dns_proxy_ipv4_addr: vec![100, 115, 92, 27],
            dns_proxy_ipv6_addr: Vec::new(),
            technology_type: TechnologyType::Wifi as i32,
        }
    }

    fn parsed(line: &str) -> Value {
        assert!(!line.contains('\n'), "not one line: {line}");
        serde_json::from_str(line).unwrap()
    }

    #[test]
    fn namespace_json_has_dotted_addresses_and_the_subnet() {
        let line = json_line(&NamespaceJson::from(&response()));

        assert_eq!(
            parsed(&line),
            json!({
                "netns_name": "connected_netns_0",
                "host_ifname": "arc_ns0",
                "host_ipv4_address": "100.115.92.129",
                "peer_ifname": "peer0",
                "peer_ipv4_address": "100.115.92.130",
                "ipv4_subnet": "100.115.92.128/30",
            })
        );
    }

    #[test]
    fn namespace_json_without_addresses_has_nulls() {
        let ns = NamespaceJson::from(&ConnectNamespaceResponse {
            host_ifname: "h".into(),
            peer_ifname: "p".into(),
            ..Default::default()
        });

        assert_eq!(ns.host_ipv4_address, None);
        assert_eq!(ns.ipv4_subnet, None);
    }

    #[test]
    fn namespace_text_names_the_pid_when_no_netns_was_created() {
        let ns = NamespaceJson::from(&ConnectNamespaceResponse {
            netns_name: String::new(),
            ..response()
        });

        let text = namespace_text(&ns, Some(42));

        assert!(
            text.starts_with("netns:  (network namespace of pid 42)\n"),
            "{text}"
        );
        assert!(text.contains("host:   arc_ns0 100.115.92.129\n"), "{text}");
        assert!(text.contains("subnet: 100.115.92.128/30\n"), "{text}");
    }

    #[test]
    fn devices_json_names_enums_and_decodes_both_address_encodings() {
        let line = json_line(&DevicesJson {
            devices: vec![DeviceJson::from(&device())],
        });

        assert_eq!(
            parsed(&line),
            json!({"devices": [{
                "ifname": "vmtap0",
                "guest_ifname": "eth0",
                "guest_type": "TERMINA_VM",
                "phys_ifname": "",
                "technology_type": "WIFI",
                "ipv4_subnet": "100.115.92.24/30",
                "host_ipv4_addr": "100.115.92.25",
                "guest_ipv4_addr": "100.115.92.26",
                "dns_proxy_ipv4_addr": "100.115.92.27",
                "dns_proxy_ipv6_addr": null,
            }]})
        );
    }

    #[test]
    fn unknown_enum_numbers_are_printed_as_numbers() {
        let json = DeviceJson::from(&NetworkDevice {
            guest_type: 42,
            ..device()
        });

        assert_eq!(json.guest_type, "42");
    }

    #[test]
    fn devices_table_has_a_header_and_one_row_per_device() {
        let text = devices_table(&[device(), device()]);

        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("IFNAME  GUEST_IFNAME  TYPE"), "{text}");
        assert!(
            lines[1].starts_with("vmtap0  eth0          TERMINA_VM"),
            "{text}"
        );
        assert!(lines[1].contains("100.115.92.24/30"), "{text}");
        assert!(lines.iter().all(|l| !l.ends_with(' ')), "{text:?}");
    }

    #[test]
    fn empty_device_list_says_so() {
        assert_eq!(devices_table(&[]), "no guest devices\n");
    }

    #[test]
    fn counters_json_names_source_and_family() {
        let counter = TrafficCounter {
            rx_bytes: 1,
            tx_bytes: 2,
            rx_packets: 3,
            tx_packets: 4,
            source: Source::CrostiniVm as i32,
            device: "eth0".into(),
            ip_family: IpFamily::Ipv6 as i32,
        };

        let line = json_line(&CountersJson {
            counters: vec![CounterJson::from(&counter)],
        });

        assert_eq!(
            parsed(&line),
            json!({"counters": [{
                "device": "eth0", "source": "CROSTINI_VM", "ip_family": "IPV6",
                "rx_bytes": 1, "tx_bytes": 2, "rx_packets": 3, "tx_packets": 4,
            }]})
        );
    }

    #[test]
    fn device_change_json_has_event_and_device() {
        let signal = NetworkDeviceChangedSignal {
            device: Some(device()),
            event: Event::DeviceRemoved as i32,
        };

        let value = parsed(&json_line(&DeviceChangeJson::from(&signal)));

        assert_eq!(value["event"], "DEVICE_REMOVED");
        assert_eq!(value["device"]["ifname"], "vmtap0");
    }

    #[test]
    fn device_change_text_starts_with_the_event_and_interface() {
        let signal = NetworkDeviceChangedSignal {
            device: Some(device()),
            event: Event::DeviceAdded as i32,
        };

        let text = device_change_text(&signal);

        assert!(
            text.starts_with("DEVICE_ADDED vmtap0 guest=eth0 type=TERMINA_VM"),
            "{text}"
        );
    }

    fn termina_response() -> TerminaVmStartupResponse {
        TerminaVmStartupResponse {
            tap_device_ifname: "vmtap0".into(),
            ipv4_subnet: Some(IPv4Subnet::new(Ipv4Addr::new(100, 115, 92, 24), 30)),
            ipv4_address: vec![100, 115, 92, 26],
            gateway_ipv4_address: vec![100, 115, 92, 25],
            container_ipv4_subnet: Some(IPv4Subnet::new(Ipv4Addr::new(100, 115, 92, 192), 28)),
            container_ipv4_address: vec![100, 115, 92, 193],
        }
    }

    #[test]
    fn termina_json_has_every_address_and_no_keys_of_other_guests() {
        let value = parsed(&json_line(&GuestJson::termina(7, &termina_response())));

        assert_eq!(
            value,
            json!({
                "guest": "termina", "action": "started", "cid": 7,
                "tap_device_ifname": "vmtap0",
                "ipv4_subnet": "100.115.92.24/30",
                "ipv4_address": "100.115.92.26",
                "gateway_ipv4_address": "100.115.92.25",
                "container_ipv4_subnet": "100.115.92.192/28",
                "container_ipv4_address": "100.115.92.193",
            })
        );
    }

    #[test]
    fn arcvm_json_lists_the_taps_in_order() {
        let response = ArcVmStartupResponse {
            arc0_ipv4_address: vec![100, 115, 92, 2],
            tap_device_ifnames: vec!["vmtap1".into(), "vmtap2".into()],
        };

        let value = parsed(&json_line(&GuestJson::arcvm(5, &response)));

        assert_eq!(value["tap_device_ifnames"], json!(["vmtap1", "vmtap2"]));
        assert_eq!(value["arc0_ipv4_address"], "100.115.92.2");
    }

    #[test]
    fn stop_json_has_the_guest_and_its_key_only() {
        let value = parsed(&json_line(&GuestJson::stopped(
            "plugin",
            None,
            Some(3),
            None,
        )));

        assert_eq!(
            value,
            json!({"guest": "plugin", "action": "stopped", "id": 3})
        );
    }

    #[test]
    fn arc_start_keeps_only_arc_devices() {
        let arc = NetworkDevice {
            ifname: "arc_eth0".into(),
            guest_type: GuestType::Arc as i32,
            ..device()
        };

        let guest = GuestJson::arc(42, &[device(), arc]);

        let devices = guest.devices.as_ref().unwrap();
        assert_eq!(devices.len(), 1);
        assert_eq!(devices[0].ifname, "arc_eth0");
        assert!(guest_text(&guest).starts_with("started ARC container pid 42\ndevice:"));
    }

    #[test]
    fn guest_text_aligns_one_field_per_line() {
        let text = guest_text(&GuestJson::termina(7, &termina_response()));

        assert_eq!(
            text,
            "started Termina VM cid 7\n\
             tap:                vmtap0\n\
             subnet:             100.115.92.24/30\n\
             address:            100.115.92.26\n\
             gateway:            100.115.92.25\n\
             container subnet:   100.115.92.192/28\n\
             container address:  100.115.92.193\n"
        );
    }

    #[test]
    fn unknown_signals_are_printed_by_member_with_their_size() {
        let signal = Signal::Other {
            member: "Future".into(),
            payload: vec![0xab, 0x01],
        };

        assert_eq!(signal_text(&signal), "Future (2 bytes)");
        assert_eq!(
            parsed(&json_line(&SignalJson::from(&signal))),
            json!({"signal": "Future", "payload_hex": "ab01"})
        );
    }
}
