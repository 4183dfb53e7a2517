//! Chrome's notifications (reference upstream-clients §3.8, §3.9): Android's
//! interactive state, the Wi-Fi multicast lock, ARC's socket events and
//! the feature flags. Chrome discards every answer; what matters is what
//! each one changes:
//!
//! * the multicast lock: inbound mDNS and SSDP from Wi-Fi uplinks reach ARC
//!   only while Android holds it (off at start, as upstream); the mcast
//!   service reads [`ChromeState::wifi_multicast_lock`] every time it
//!   reconciles, and its pairs are in the forwarder's replay log;
//! * the feature flags are kept and their previous value returned; there
//!   is no Wi-Fi QoS or CLAT datapath for them to switch
//!   (docs/compatibility.md);
//! * the interactive state is kept (upstream ignores it too);
//! * an ARC VPN socket event gives that connection the ARC_VPN source in
//!   its conntrack mark (through the writer, over ctnetlink), so its
//!   traffic is counted as VPN, not ARC, as upstream; other socket events
//!   are checked and logged (the Wi-Fi QoS they drive upstream is not
//!   built: docs/compatibility.md).
//!
//! All of it is in the state file and survives a restart or a clean stop:
//! Chrome sends each only when it changes.

use std::net::{IpAddr, SocketAddr};

use log::info;
use patchpanel_firewall::conntrack::{Flow, MarkUpdate};
use patchpanel_firewall::fwmark::SOURCE_MASK;
use patchpanel_firewall::TrafficSource;
use patchpanel_ipc::{Reply, Request};
use patchpanel_proto::set_feature_flag_request::FeatureFlag;
use patchpanel_proto::socket_connection_event::{IpProtocol, QosCategory, SocketEvent};
use patchpanel_proto::{SetFeatureFlagResponse, SocketConnectionEvent};
use prost::Message as _;
use serde::{Deserialize, Serialize};

use crate::env::Env;
use crate::error::CallError;
use crate::guests::ArcGuest;

/// What Chrome told patchpanel.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChromeState {
    /// `NotifyAndroidInteractiveState`; `None` until Chrome says.
    #[serde(default)]
    pub android_interactive: Option<bool>,
    /// `NotifyAndroidWifiMulticastLockChange`.
    #[serde(default)]
    pub wifi_multicast_lock: bool,
    /// `SetFeatureFlag(WIFI_QOS)`.
    #[serde(default)]
    pub wifi_qos: bool,
    /// `SetFeatureFlag(CLAT)`.
    #[serde(default)]
    pub clat: bool,
}

impl ChromeState {
    pub fn is_default(&self) -> bool {
        *self == ChromeState::default()
    }
}

/// `NotifyAndroidInteractiveState`.
pub fn interactive(state: &mut ChromeState, interactive: bool, client: &str) -> Vec<u8> {
    if state.android_interactive != Some(interactive) {
        info!(
            "Android is {} ({client})",
            if interactive {
                "interactive"
            } else {
                "not interactive"
            }
        );
        state.android_interactive = Some(interactive);
    }
    patchpanel_proto::NotifyAndroidInteractiveStateResponse {}.encode_to_vec()
}

/// `NotifyAndroidWifiMulticastLockChange`: the mcast service follows at
/// the end of the event.
pub fn multicast_lock(state: &mut ChromeState, held: bool, client: &str) -> Vec<u8> {
    if state.wifi_multicast_lock != held {
        info!(
            "Android's Wi-Fi multicast lock {} ({client}): inbound mDNS/SSDP from Wi-Fi uplinks to ARC {}",
            if held { "held" } else { "released" },
            if held { "forwarded" } else { "no longer forwarded" }
        );
        state.wifi_multicast_lock = held;
    }
    patchpanel_proto::NotifyAndroidWifiMulticastLockChangeResponse {}.encode_to_vec()
}

/// `SetFeatureFlag`: the flag's value before.
pub fn set_feature_flag(
    state: &mut ChromeState,
    flag: FeatureFlag,
    enabled: bool,
    client: &str,
) -> Vec<u8> {
    let (slot, name) = match flag {
        FeatureFlag::WifiQos => (&mut state.wifi_qos, "WIFI_QOS"),
        FeatureFlag::Clat => (&mut state.clat, "CLAT"),
    };
    let previous = std::mem::replace(slot, enabled);
    if previous != enabled {
        info!(
            "feature {name} {} ({client}); this build has no datapath for it",
            if enabled { "enabled" } else { "disabled" }
        );
    }
    SetFeatureFlagResponse { enabled: previous }.encode_to_vec()
}

/// A socket event, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketEventSpec {
    pub source: (IpAddr, u16),
    pub destination: (IpAddr, u16),
    pub tcp: bool,
    pub open: bool,
    pub category: QosCategory,
}

impl std::fmt::Display for SocketEventSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let addr = |(a, p): (IpAddr, u16)| match a {
            IpAddr::V4(a) => format!("{a}:{p}"),
            IpAddr::V6(a) => format!("[{a}]:{p}"),
        };
        write!(
            f,
            "{} {} {} -> {} ({})",
            if self.open { "open" } else { "close" },
            if self.tcp { "tcp" } else { "udp" },
            addr(self.source),
            addr(self.destination),
            self.category.as_str_name()
        )
    }
}

fn addr(field: &str, bytes: &[u8]) -> Result<IpAddr, String> {
    match bytes.len() {
        4 => Ok(IpAddr::from(<[u8; 4]>::try_from(bytes).expect("4 bytes"))),
        16 => Ok(IpAddr::from(<[u8; 16]>::try_from(bytes).expect("16 bytes"))),
        n => Err(format!("{field} has {n} bytes (4 or 16)")),
    }
}

fn port(field: &str, value: i32) -> Result<u16, String> {
    u16::try_from(value)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("{field} {value} is not a port (1..65535)"))
}

/// Checks a `NotifySocketConnectionEvent` or
/// `NotifyARCVPNSocketConnectionEvent` message.
pub fn parse_socket_event(msg: Option<&SocketConnectionEvent>) -> Result<SocketEventSpec, String> {
    let msg = msg.ok_or("no event (field msg is missing)")?;
    let saddr = addr("saddr", &msg.saddr)?;
    let daddr = addr("daddr", &msg.daddr)?;
    if saddr.is_ipv4() != daddr.is_ipv4() {
        return Err(format!(
            "saddr {saddr} and daddr {daddr} are of different families"
        ));
    }
    let tcp = match IpProtocol::try_from(msg.proto) {
        Ok(IpProtocol::Tcp) => true,
        Ok(IpProtocol::Udp) => false,
        _ => return Err(format!("proto {} is neither TCP nor UDP", msg.proto)),
    };
    let open = match SocketEvent::try_from(msg.event) {
        Ok(SocketEvent::Open) => true,
        Ok(SocketEvent::Close) => false,
        _ => return Err(format!("event {} is neither OPEN nor CLOSE", msg.event)),
    };
    let category = QosCategory::try_from(msg.category)
        .map_err(|_| format!("unknown QoS category {}", msg.category))?;
    Ok(SocketEventSpec {
        source: (saddr, port("sport", msg.sport)?),
        destination: (daddr, port("dport", msg.dport)?),
        tcp,
        open,
        category,
    })
}

/// Whether `addr` can be ARC's own: one of its IPv4 guest addresses, or
/// any IPv6 address while ARC runs (its SLAAC addresses are Android's).
fn is_arcs(arc: Option<&ArcGuest>, addr: IpAddr) -> bool {
    match (arc, addr) {
        (None, _) => false,
        (Some(arc), IpAddr::V4(a)) => arc.slots.iter().any(|s| s.subnet.guest() == a),
        (Some(_), IpAddr::V6(_)) => true,
    }
}

/// `NotifySocketConnectionEvent` (`arc_vpn` false) or
/// `NotifyARCVPNSocketConnectionEvent`. The socket must be ARC's. An ARC
/// VPN socket that opens gets the ARC_VPN source in its conntrack mark; a
/// connection the kernel does not track (yet: a UDP socket that has sent
/// nothing) is logged and left, as Chrome cannot act on an error anyway.
pub fn socket_event(
    env: &mut Env<'_>,
    arc: Option<&ArcGuest>,
    arc_vpn: bool,
    event: &SocketEventSpec,
    client: &str,
) -> Result<Vec<u8>, CallError> {
    let what = if arc_vpn { "ARC VPN" } else { "ARC" };
    if !is_arcs(arc, event.source.0) {
        return Err(CallError::InvalidArgument(format!(
            "{what} socket event: {} is not an address of ARC{}",
            event.source.0,
            if arc.is_none() {
                " (ARC is not running)"
            } else {
                ""
            }
        )));
    }
    log::debug!("{what} socket {event} ({client})");
    if !arc_vpn {
        return Ok(patchpanel_proto::NotifySocketConnectionEventResponse {}.encode_to_vec());
    }
    if event.open {
        let update = MarkUpdate {
            flow: Flow {
                tcp: event.tcp,
                src: SocketAddr::new(event.source.0, event.source.1),
                dst: SocketAddr::new(event.destination.0, event.destination.1),
            },
            value: TrafficSource::ArcVpn.fwmark(),
            mask: SOURCE_MASK,
        };
        match env.call(Request::UpdateConnmark(update)) {
            Ok(Reply::ConnmarkUpdated { found: true }) => {
                info!("{} counted as ARC_VPN ({client})", update.flow)
            }
            Ok(Reply::ConnmarkUpdated { found: false }) => info!(
                "{} is not tracked by the kernel (yet): not counted as ARC_VPN",
                update.flow
            ),
            Ok(other) => {
                return Err(CallError::Failed(format!(
                    "the writer answered {other:?} to a conntrack mark update"
                )))
            }
            Err(e) => return Err(e),
        }
    }
    Ok(patchpanel_proto::NotifyARCVPNSocketConnectionEventResponse {}.encode_to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> SocketConnectionEvent {
        SocketConnectionEvent {
            saddr: vec![100, 115, 92, 6],
            sport: 40000,
            daddr: vec![8, 8, 8, 8],
            dport: 443,
            proto: IpProtocol::Tcp as i32,
            event: SocketEvent::Open as i32,
            category: QosCategory::RealtimeInteractive as i32,
        }
    }

    #[test]
    fn a_good_event_parses() {
        let e = parse_socket_event(Some(&event())).unwrap();
        assert_eq!(
            e.to_string(),
            "open tcp 100.115.92.6:40000 -> 8.8.8.8:443 (REALTIME_INTERACTIVE)"
        );
    }

    #[test]
    fn bad_events_are_refused() {
        assert!(parse_socket_event(None).unwrap_err().contains("missing"));
        type Change = fn(&mut SocketConnectionEvent);
        let cases: [(Change, &str); 7] = [
            (|e| e.saddr = vec![1, 2, 3], "3 bytes"),
            (|e| e.daddr = vec![0; 16], "different families"),
            (|e| e.sport = 0, "sport 0"),
            (|e| e.dport = 70000, "dport 70000"),
            (|e| e.proto = 0, "proto 0"),
            (|e| e.event = 3, "event 3"),
            (|e| e.category = 9, "category 9"),
        ];
        for (change, why) in cases {
            let mut e = event();
            change(&mut e);
            let err = parse_socket_event(Some(&e)).unwrap_err();
            assert!(err.contains(why), "{err} lacks {why}");
        }
    }

    #[test]
    fn feature_flags_answer_the_previous_value() {
        let mut s = ChromeState::default();
        let previous = |b: Vec<u8>| {
            SetFeatureFlagResponse::decode(b.as_slice())
                .unwrap()
                .enabled
        };
        assert!(!previous(set_feature_flag(
            &mut s,
            FeatureFlag::WifiQos,
            true,
            "c"
        )));
        assert!(previous(set_feature_flag(
            &mut s,
            FeatureFlag::WifiQos,
            true,
            "c"
        )));
        assert!(!previous(set_feature_flag(
            &mut s,
            FeatureFlag::Clat,
            false,
            "c"
        )));
        assert!(s.wifi_qos && !s.clat);
        assert!(previous(set_feature_flag(
            &mut s,
            FeatureFlag::WifiQos,
            false,
            "c"
        )));
        assert!(s.is_default());
    }

    #[test]
    fn the_lock_and_the_interactive_state_are_kept() {
        let mut s = ChromeState::default();
        multicast_lock(&mut s, true, "c");
        interactive(&mut s, false, "c");
        assert!(s.wifi_multicast_lock);
        assert_eq!(s.android_interactive, Some(false));
    }
}
