//! GetTrafficCounters (upstream-core §6): the writer reads the accounting
//! rules' totals ([`traffic_counters`] asks it, page by page, through the
//! [`crate::env::Env`]); the rest of this module is pure and turns them
//! into the D-Bus answer, keyed by (device, source, IP family) with rx and
//! tx side by side.

use std::collections::BTreeMap;

use patchpanel_firewall::counters::{CounterSample, Direction};
use patchpanel_firewall::{Family, TrafficSource};
use patchpanel_proto::traffic_counter::{IpFamily, Source};
use patchpanel_proto::TrafficCounter;

/// The most different device names one GetTrafficCounters may ask for
/// (a host has a handful of uplinks; the list goes to the writer in one
/// IPC packet).
pub const MAX_DEVICES: usize = 256;

/// The interface names a GetTrafficCounters request asks for, each once,
/// in order; empty means every uplink. At most [`MAX_DEVICES`] different
/// names: the list sent to the writer has to fit in one IPC packet (a
/// longer one used to get the writer restarted).
pub fn parse_request(
    request: &patchpanel_proto::TrafficCountersRequest,
) -> Result<Vec<patchpanel_ipc::IfName>, crate::error::CallError> {
    use crate::error::CallError;
    let mut wanted = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for d in &request.devices {
        if !seen.insert(d.as_str()) {
            continue;
        }
        if wanted.len() == MAX_DEVICES {
            return Err(CallError::InvalidArgument(format!(
                "GetTrafficCounters: devices: more than {MAX_DEVICES} different names"
            )));
        }
        wanted.push(patchpanel_ipc::IfName::new(d).map_err(|e| {
            CallError::InvalidArgument(format!("GetTrafficCounters: devices: {e}"))
        })?);
    }
    Ok(wanted)
}

/// The D-Bus source of a fwmark source; `None` (untagged) is UNKNOWN.
pub fn proto_source(source: Option<TrafficSource>) -> Source {
    let Some(source) = source else {
        return Source::Unknown;
    };
    match source {
        TrafficSource::Chrome => Source::Chrome,
        TrafficSource::User => Source::User,
        TrafficSource::UpdateEngine => Source::UpdateEngine,
        TrafficSource::System => Source::System,
        TrafficSource::HostVpn | TrafficSource::ArcVpn => Source::Vpn,
        TrafficSource::Arc => Source::Arc,
        TrafficSource::CrostiniVm => Source::CrostiniVm,
        TrafficSource::ParallelsVm => Source::ParallelsVm,
        TrafficSource::TetherDownstream => Source::Tethering,
        TrafficSource::BruschettaVm => Source::BruschettaVm,
        TrafficSource::BorealisVm => Source::BorealisVm,
        TrafficSource::WifiDirect => Source::WifiDirect,
        TrafficSource::WifiLohs => Source::WifiLohs,
        TrafficSource::Unknown => Source::Unknown,
    }
}

/// Sums samples into one counter per (device, source, family), in a
/// stable order; zero counters are left out.
pub fn aggregate(samples: &[CounterSample]) -> Vec<TrafficCounter> {
    let mut by_key: BTreeMap<(String, i32, i32), TrafficCounter> = BTreeMap::new();
    for s in samples {
        let source = proto_source(s.source) as i32;
        let family = match s.family {
            Family::V4 => IpFamily::Ipv4,
            Family::V6 => IpFamily::Ipv6,
        } as i32;
        let c = by_key
            .entry((s.ifname.clone(), source, family))
            .or_insert_with(|| TrafficCounter {
                source,
                device: s.ifname.clone(),
                ip_family: family,
                ..Default::default()
            });
        match s.direction {
            Direction::Rx => {
                c.rx_bytes += s.bytes;
                c.rx_packets += s.packets;
            }
            Direction::Tx => {
                c.tx_bytes += s.bytes;
                c.tx_packets += s.packets;
            }
        }
    }
    by_key
        .into_values()
        .filter(|c| c.rx_bytes + c.tx_bytes + c.rx_packets + c.tx_packets > 0)
        .collect()
}

/// `GetTrafficCounters` as the daemon runs it: the writer's reading of
/// `wanted`'s accounting rules, in pages, plus what was counted before
/// another program flushed them (or a rebuild replaced them).
pub fn traffic_counters(
    env: &mut crate::env::Env<'_>,
    wanted: Vec<patchpanel_ipc::IfName>,
    carried: &[CounterSample],
) -> Result<Vec<u8>, crate::error::CallError> {
    use crate::error::CallError;
    use patchpanel_ipc::{Reply, Request};
    use prost::Message as _;

    let wanted = if wanted.is_empty() {
        env.uplinks.all().map(|u| u.name.clone()).collect()
    } else {
        wanted
    };
    let mut samples = Vec::new();
    let mut offset = 0;
    loop {
        match env.call(Request::ReadCounters {
            ifnames: wanted.clone(),
            offset,
        })? {
            Reply::Counters {
                samples: page,
                next,
            } => {
                samples.extend(page);
                match next {
                    Some(n) if n > offset => offset = n,
                    _ => break,
                }
            }
            other => {
                return Err(CallError::Failed(format!(
                    "GetTrafficCounters: the writer answered {other:?}"
                )))
            }
        }
    }
    samples.extend(
        carried
            .iter()
            .filter(|s| wanted.iter().any(|w| w.as_str() == s.ifname))
            .cloned(),
    );
    Ok(patchpanel_proto::TrafficCountersResponse {
        counters: aggregate(&samples),
    }
    .encode_to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(
        ifname: &str,
        family: Family,
        direction: Direction,
        source: Option<TrafficSource>,
        bytes: u64,
    ) -> CounterSample {
        CounterSample {
            family,
            direction,
            ifname: ifname.into(),
            source,
            packets: bytes / 100,
            bytes,
        }
    }

    #[test]
    fn rx_and_tx_of_one_source_and_family_share_a_counter() {
        let c = aggregate(&[
            sample(
                "eth0",
                Family::V4,
                Direction::Rx,
                Some(TrafficSource::Arc),
                1000,
            ),
            sample(
                "eth0",
                Family::V4,
                Direction::Tx,
                Some(TrafficSource::Arc),
                500,
            ),
            sample(
                "eth0",
                Family::V6,
                Direction::Tx,
                Some(TrafficSource::Arc),
                300,
            ),
        ]);
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].source, Source::Arc as i32);
        assert_eq!(c[0].ip_family, IpFamily::Ipv4 as i32);
        assert_eq!((c[0].rx_bytes, c[0].tx_bytes), (1000, 500));
        assert_eq!((c[0].rx_packets, c[0].tx_packets), (10, 5));
        assert_eq!(c[1].ip_family, IpFamily::Ipv6 as i32);
    }

    #[test]
    fn host_and_arc_vpn_are_both_vpn_and_untagged_is_unknown() {
        let c = aggregate(&[
            sample(
                "eth0",
                Family::V4,
                Direction::Rx,
                Some(TrafficSource::HostVpn),
                100,
            ),
            sample(
                "eth0",
                Family::V4,
                Direction::Rx,
                Some(TrafficSource::ArcVpn),
                100,
            ),
            sample("eth0", Family::V4, Direction::Rx, None, 100),
        ]);
        assert_eq!(c.len(), 2);
        let vpn = c.iter().find(|c| c.source == Source::Vpn as i32).unwrap();
        assert_eq!(vpn.rx_bytes, 200);
        assert!(c.iter().any(|c| c.source == Source::Unknown as i32));
    }

    #[test]
    fn zero_counters_are_left_out() {
        let c = aggregate(&[sample("eth0", Family::V4, Direction::Rx, None, 0)]);
        assert!(c.is_empty());
    }
}
