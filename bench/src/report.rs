//! The printed result: one row per measured series, then the ratios and the
//! issue's targets (p50 under 20 ms; at most 1.5x slower with the load than
//! without), or, for the benchmarks without targets, the ratios to the peer
//! and the growth of each side ([`scaling_line`]).

use std::fmt::Write as _;
use std::time::Duration;

use crate::stats::Summary;

/// The p50 every patchpanel series should stay under.
pub const P50_TARGET: Duration = Duration::from_millis(20);
/// How much slower the loaded p50 may be than the unloaded one.
pub const SCALING_TARGET: f64 = 1.5;

/// One line of the table; `None` when the series was not measured.
#[derive(Debug, Clone)]
pub struct Row {
    pub label: String,
    pub summary: Option<Summary>,
}

impl Row {
    pub fn new(label: impl Into<String>, samples: Option<&[Duration]>) -> Row {
        Row {
            label: label.into(),
            summary: samples.and_then(Summary::of),
        }
    }
}

/// The table of p50/p99 in milliseconds and sample counts.
pub fn table(rows: &[Row]) -> String {
    table_in(rows, "ms", 1000.0, 2)
}

/// The table of p50/p99 in microseconds (one decimal), for series of a
/// few microseconds.
pub fn table_micros(rows: &[Row]) -> String {
    table_in(rows, "us", 1_000_000.0, 1)
}

fn table_in(rows: &[Row], unit: &str, per_second: f64, decimals: usize) -> String {
    let width = rows
        .iter()
        .map(|r| r.label.len())
        .max()
        .unwrap_or(0)
        .max(10);
    let mut out = String::new();
    let (p50, p99) = (format!("p50 {unit}"), format!("p99 {unit}"));
    let _ = writeln!(out, "{:width$}  {p50:>8}  {p99:>8}  {:>5}", "", "n");
    for row in rows {
        match row.summary {
            Some(s) => {
                let _ = writeln!(
                    out,
                    "{:width$}  {:>8.decimals$}  {:>8.decimals$}  {:>5}",
                    row.label,
                    s.p50.as_secs_f64() * per_second,
                    s.p99.as_secs_f64() * per_second,
                    s.count
                );
            }
            None => {
                let _ = writeln!(
                    out,
                    "{:width$}  {:>8}  {:>8}  {:>5}",
                    row.label, "n/a", "n/a", "-"
                );
            }
        }
    }
    out
}

/// The p50s one verdict line compares: patchpanel alone and loaded, and
/// netavark alone.
#[derive(Debug, Clone, Copy)]
pub struct Comparison {
    pub patchpanel_alone: Option<Summary>,
    pub patchpanel_loaded: Option<Summary>,
    pub netavark_alone: Option<Summary>,
}

/// `ratio patchpanel/netavark <what> @1: x.xx ; @N/@1 patchpanel: x.xx
/// (target <= 1.5: PASS); p50 target < 20 ms: PASS`. The p50 target must
/// hold both alone and loaded.
pub fn verdict(what: &str, loaded: usize, c: &Comparison) -> String {
    let p50 = |s: Option<Summary>| s.map(|s| s.p50);
    let versus_netavark = ratio(p50(c.patchpanel_alone), p50(c.netavark_alone));
    let scaling = ratio(p50(c.patchpanel_loaded), p50(c.patchpanel_alone));
    let scaling_verdict = scaling.map(|r| pass(r <= SCALING_TARGET));
    let target_verdict = match (p50(c.patchpanel_alone), p50(c.patchpanel_loaded)) {
        (Some(a), Some(b)) => Some(pass(a < P50_TARGET && b < P50_TARGET)),
        _ => None,
    };
    format!(
        "ratio patchpanel/netavark {what} @1: {} ; @{loaded}/@1 patchpanel: {} (target <= {SCALING_TARGET}: {}); p50 target < {} ms: {}",
        number(versus_netavark),
        number(scaling),
        scaling_verdict.unwrap_or("n/a"),
        P50_TARGET.as_millis(),
        target_verdict.unwrap_or("n/a"),
    )
}

/// One point of a scaling comparison: its label (`#500`, `@10`) and the
/// p50/p99 of both sides there.
#[derive(Debug, Clone)]
pub struct Point {
    pub label: String,
    pub patchpanel: Option<Summary>,
    pub peer: Option<Summary>,
}

/// `<what>: ratio patchpanel/<peer> #1: x.xx ; #500: x.xx ; #1000: x.xx ;
/// #1000/#1 patchpanel: x.xx, <peer>: x.xx`: the p50 ratio at each point,
/// then how much each side's p50 grew from the first point to the last.
pub fn scaling_line(what: &str, peer: &str, points: &[Point]) -> String {
    let p50 = |s: Option<Summary>| s.map(|s| s.p50);
    let mut out = format!("{what}: ratio patchpanel/{peer}");
    for (i, point) in points.iter().enumerate() {
        let separator = if i == 0 { "" } else { " ;" };
        let _ = write!(
            out,
            "{separator} {}: {}",
            point.label,
            number(ratio(p50(point.patchpanel), p50(point.peer)))
        );
    }
    if let (Some(first), Some(last)) = (points.first(), points.last()) {
        if points.len() > 1 {
            let _ = write!(
                out,
                " ; {}/{} patchpanel: {}, {peer}: {}",
                last.label,
                first.label,
                number(ratio(p50(last.patchpanel), p50(first.patchpanel))),
                number(ratio(p50(last.peer), p50(first.peer))),
            );
        }
    }
    out
}

/// `<what>: ratio <pair> <label>: x.xx (p99 x.xx) ; ...`: the p50 ratio
/// (and the p99 ratio) of the measured side (`patchpanel` in [`Point`]) to
/// its peer at each point, without growth (for points that are different
/// operations, not a scale). `pair` names both, e.g. `patchpanel/netavark`.
pub fn ratios_line(what: &str, pair: &str, points: &[Point]) -> String {
    let mut out = format!("{what}: ratio {pair}");
    for (i, point) in points.iter().enumerate() {
        let separator = if i == 0 { "" } else { " ;" };
        let _ = write!(
            out,
            "{separator} {}: {} (p99 {})",
            point.label,
            number(ratio(
                point.patchpanel.map(|s| s.p50),
                point.peer.map(|s| s.p50)
            )),
            number(ratio(
                point.patchpanel.map(|s| s.p99),
                point.peer.map(|s| s.p99)
            )),
        );
    }
    out
}

/// The 1-minute load average, from `/proc/loadavg`.
pub fn load_average() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    text.split_whitespace().next()?.parse().ok()
}

/// CPUs and load before and after: other work on the machine skews the
/// numbers, and a reader comparing runs should know.
pub fn machine_line(start: Option<f64>, end: Option<f64>) -> String {
    let cpus = std::thread::available_parallelism().map_or(0, usize::from);
    let load = |l: Option<f64>| l.map_or_else(|| "?".to_string(), |l| format!("{l:.2}"));
    format!(
        "machine: {cpus} CPUs; 1-min load average {} at start, {} at end",
        load(start),
        load(end)
    )
}

fn ratio(a: Option<Duration>, b: Option<Duration>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if !b.is_zero() => Some(a.as_secs_f64() / b.as_secs_f64()),
        _ => None,
    }
}

fn number(value: Option<f64>) -> String {
    value.map_or_else(|| "n/a".to_string(), |v| format!("{v:.2}"))
}

fn pass(ok: bool) -> &'static str {
    if ok {
        "PASS"
    } else {
        "FAIL"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(p50_ms: u64, p99_ms: u64) -> Option<Summary> {
        Some(Summary {
            count: 50,
            p50: Duration::from_millis(p50_ms),
            p99: Duration::from_millis(p99_ms),
        })
    }

    #[test]
    fn the_table_prints_milliseconds_with_two_decimals() {
        let rows = [Row {
            label: "patchpanel connect @1".into(),
            summary: summary(12, 15),
        }];

        let text = table(&rows);

        assert!(
            text.contains("patchpanel connect @1     12.00     15.00     50"),
            "{text}"
        );
    }

    #[test]
    fn the_micros_table_prints_microseconds_with_one_decimal() {
        let rows = [Row {
            label: "kernel proxy NS->NA".into(),
            summary: Some(Summary {
                count: 200,
                p50: Duration::from_nanos(3_450),
                p99: Duration::from_micros(12),
            }),
        }];

        let text = table_micros(&rows);

        assert!(text.contains("p50 us    p99 us"), "{text}");
        assert!(
            text.contains("kernel proxy NS->NA       3.5      12.0    200"),
            "{text}"
        );
    }

    #[test]
    fn an_unmeasured_series_prints_as_not_available() {
        let text = table(&[Row::new("netavark setup @1", None)]);

        assert!(text.contains("netavark setup @1"), "{text}");
        assert!(text.contains("n/a"), "{text}");
    }

    #[test]
    fn verdict_passes_fast_flat_series() {
        let line = verdict(
            "connect",
            100,
            &Comparison {
                patchpanel_alone: summary(10, 12),
                patchpanel_loaded: summary(12, 14),
                netavark_alone: summary(40, 50),
            },
        );

        assert_eq!(
            line,
            "ratio patchpanel/netavark connect @1: 0.25 ; @100/@1 patchpanel: 1.20 \
             (target <= 1.5: PASS); p50 target < 20 ms: PASS"
        );
    }

    #[test]
    fn verdict_fails_a_loaded_p50_over_the_target() {
        let line = verdict(
            "connect",
            100,
            &Comparison {
                patchpanel_alone: summary(15, 16),
                patchpanel_loaded: summary(25, 30),
                netavark_alone: summary(30, 40),
            },
        );

        assert!(
            line.ends_with("(target <= 1.5: FAIL); p50 target < 20 ms: FAIL"),
            "{line}"
        );
    }

    #[test]
    fn scaling_line_gives_ratios_per_point_and_growth_per_side() {
        let line = scaling_line(
            "create",
            "naive",
            &[
                Point {
                    label: "#1".into(),
                    patchpanel: summary(4, 5),
                    peer: summary(8, 9),
                },
                Point {
                    label: "#1000".into(),
                    patchpanel: summary(6, 7),
                    peer: summary(24, 30),
                },
            ],
        );

        assert_eq!(
            line,
            "create: ratio patchpanel/naive #1: 0.50 ; #1000: 0.25 ; \
             #1000/#1 patchpanel: 1.50, naive: 3.00"
        );
    }

    #[test]
    fn ratios_line_gives_p50_and_p99_ratios_per_point() {
        let line = ratios_line(
            "Termina",
            "patchpanel/netavark",
            &[
                Point {
                    label: "startup".into(),
                    patchpanel: summary(5, 10),
                    peer: summary(20, 20),
                },
                Point {
                    label: "shutdown".into(),
                    patchpanel: None,
                    peer: summary(8, 9),
                },
            ],
        );

        assert_eq!(
            line,
            "Termina: ratio patchpanel/netavark startup: 0.25 (p99 0.50) ; shutdown: n/a (p99 n/a)"
        );
    }

    #[test]
    fn scaling_line_with_one_side_missing_says_not_available() {
        let line = scaling_line(
            "delete",
            "naive",
            &[
                Point {
                    label: "#1".into(),
                    patchpanel: None,
                    peer: summary(8, 9),
                },
                Point {
                    label: "#2".into(),
                    patchpanel: None,
                    peer: summary(8, 9),
                },
            ],
        );

        assert_eq!(
            line,
            "delete: ratio patchpanel/naive #1: n/a ; #2: n/a ; #2/#1 patchpanel: n/a, naive: 1.00"
        );
    }

    #[test]
    fn verdict_without_patchpanel_numbers_says_not_available() {
        let line = verdict(
            "connect",
            100,
            &Comparison {
                patchpanel_alone: None,
                patchpanel_loaded: None,
                netavark_alone: summary(30, 40),
            },
        );

        assert_eq!(
            line,
            "ratio patchpanel/netavark connect @1: n/a ; @100/@1 patchpanel: n/a \
             (target <= 1.5: n/a); p50 target < 20 ms: n/a"
        );
    }
}
