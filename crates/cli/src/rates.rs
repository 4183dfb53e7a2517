//! `counters --watch`: rates between two readings of GetTrafficCounters,
//! per uplink and source (both IP families added up). Pure.

use std::collections::BTreeMap;
use std::time::Duration;

use patchpanel_proto::TrafficCounter;
use serde::Serialize;

use crate::output::{table, CounterJson};

/// One row of a `counters --watch` report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RateJson {
    pub device: String,
    pub source: String,
    pub rx_bytes_per_sec: f64,
    pub tx_bytes_per_sec: f64,
    pub rx_packets_per_sec: f64,
    pub tx_packets_per_sec: f64,
    /// Totals at the end of the interval.
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub tx_packets: u64,
}

/// One `counters --watch --json` line.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RatesJson {
    /// Seconds between the two readings.
    pub interval_secs: f64,
    pub rates: Vec<RateJson>,
}

#[derive(Debug, Default, Clone, Copy)]
struct Totals([u64; 4]);

fn totals(counters: &[TrafficCounter]) -> BTreeMap<(String, String), Totals> {
    let mut out: BTreeMap<(String, String), Totals> = BTreeMap::new();
    for counter in counters {
        let c = CounterJson::from(counter);
        let t = out.entry((c.device, c.source)).or_default();
        for (sum, value) in
            t.0.iter_mut()
                .zip([c.rx_bytes, c.tx_bytes, c.rx_packets, c.tx_packets])
        {
            *sum = sum.saturating_add(value);
        }
    }
    out
}

/// Rates from `before` to `after`, `elapsed` apart, sorted by device and
/// source. A counter seen only in `after` counts from zero; one that went
/// down (chains recreated) counts from zero again.
pub fn rates(before: &[TrafficCounter], after: &[TrafficCounter], elapsed: Duration) -> RatesJson {
    let before = totals(before);
    let secs = elapsed.as_secs_f64().max(f64::EPSILON);
    let rates = totals(after)
        .into_iter()
        .map(|((device, source), now)| {
            let then = before.get(&(device.clone(), source.clone())).copied();
            let delta = |i: usize| {
                let old = then.map_or(0, |t| t.0[i]);
                let d = if now.0[i] >= old {
                    now.0[i] - old
                } else {
                    now.0[i]
                };
                d as f64 / secs
            };
            RateJson {
                rx_bytes_per_sec: delta(0),
                tx_bytes_per_sec: delta(1),
                rx_packets_per_sec: delta(2),
                tx_packets_per_sec: delta(3),
                rx_bytes: now.0[0],
                tx_bytes: now.0[1],
                rx_packets: now.0[2],
                tx_packets: now.0[3],
                device,
                source,
            }
        })
        .collect();
    RatesJson {
        interval_secs: secs,
        rates,
    }
}

/// One `counters --watch` report for people.
pub fn rates_table(report: &RatesJson) -> String {
    if report.rates.is_empty() {
        return format!(
            "no traffic counters (interval {:.1}s)\n",
            report.interval_secs
        );
    }
    let rate = |v: f64| format!("{v:.1}");
    let rows = report
        .rates
        .iter()
        .map(|r| {
            vec![
                r.device.clone(),
                r.source.clone(),
                rate(r.rx_bytes_per_sec),
                rate(r.tx_bytes_per_sec),
                rate(r.rx_packets_per_sec),
                rate(r.tx_packets_per_sec),
                r.rx_bytes.to_string(),
                r.tx_bytes.to_string(),
            ]
        })
        .collect();
    table(
        &[
            "DEVICE", "SOURCE", "RX_B/S", "TX_B/S", "RX_PKT/S", "TX_PKT/S", "RX_BYTES", "TX_BYTES",
        ],
        rows,
    )
}

#[cfg(test)]
mod tests {
    use patchpanel_proto::traffic_counter::{IpFamily, Source};

    use super::*;

    fn counter(device: &str, source: Source, family: IpFamily, rx: u64, tx: u64) -> TrafficCounter {
        TrafficCounter {
            rx_bytes: rx,
            tx_bytes: tx,
            rx_packets: rx / 100,
            tx_packets: tx / 100,
            source: source as i32,
            device: device.into(),
            ip_family: family as i32,
        }
    }

    #[test]
    fn rates_are_the_difference_over_the_interval_with_families_added() {
        let before = [
            counter("eth0", Source::Arc, IpFamily::Ipv4, 1000, 500),
            counter("eth0", Source::Arc, IpFamily::Ipv6, 1000, 0),
        ];
        let after = [
            counter("eth0", Source::Arc, IpFamily::Ipv4, 3000, 900),
            counter("eth0", Source::Arc, IpFamily::Ipv6, 3000, 100),
        ];

        let report = rates(&before, &after, Duration::from_secs(2));

        assert_eq!(report.interval_secs, 2.0);
        let r = &report.rates[0];
        assert_eq!((r.device.as_str(), r.source.as_str()), ("eth0", "ARC"));
        assert_eq!(r.rx_bytes_per_sec, 2000.0);
        assert_eq!(r.tx_bytes_per_sec, 250.0);
        assert_eq!(r.rx_packets_per_sec, 20.0);
        assert_eq!(r.rx_bytes, 6000);
    }

    #[test]
    fn a_new_counter_counts_from_zero_and_a_reset_one_from_zero_again() {
        let before = [counter("eth0", Source::System, IpFamily::Ipv4, 5000, 5000)];
        let after = [
            counter("eth0", Source::System, IpFamily::Ipv4, 100, 100),
            counter("wlan0", Source::Chrome, IpFamily::Ipv4, 400, 0),
        ];

        let report = rates(&before, &after, Duration::from_secs(1));

        assert_eq!(report.rates.len(), 2);
        assert_eq!(report.rates[0].rx_bytes_per_sec, 100.0);
        assert_eq!(report.rates[1].device, "wlan0");
        assert_eq!(report.rates[1].rx_bytes_per_sec, 400.0);
    }

    #[test]
    fn rows_are_sorted_by_device_then_source() {
        let after = [
            counter("wlan0", Source::Chrome, IpFamily::Ipv4, 1, 1),
            counter("eth0", Source::User, IpFamily::Ipv4, 1, 1),
            counter("eth0", Source::Arc, IpFamily::Ipv4, 1, 1),
        ];

        let report = rates(&[], &after, Duration::from_secs(1));

        let keys: Vec<(&str, &str)> = report
            .rates
            .iter()
            .map(|r| (r.device.as_str(), r.source.as_str()))
            .collect();
        assert_eq!(
            keys,
            [("eth0", "ARC"), ("eth0", "USER"), ("wlan0", "CHROME")]
        );
    }

    #[test]
    fn rates_table_has_one_row_per_device_and_source() {
        let report = RatesJson {
            interval_secs: 1.0,
            rates: vec![RateJson {
                device: "eth0".into(),
                source: "ARC".into(),
                rx_bytes_per_sec: 1536.25,
                tx_bytes_per_sec: 0.0,
                rx_packets_per_sec: 2.0,
                tx_packets_per_sec: 0.0,
                rx_bytes: 9000,
                tx_bytes: 0,
                rx_packets: 10,
                tx_packets: 0,
            }],
        };

        let text = rates_table(&report);

        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("DEVICE  SOURCE  RX_B/S"), "{text}");
        assert!(lines[1].starts_with("eth0    ARC     1536.2"), "{text}");
    }
}
