//! `bench-mcast`: mDNS through `mcastd`, next to avahi-daemon's reflector
//! and to the kernel's direct path (the floor), in the same run: the
//! query -> answer round trip across the forwarder (and what it adds over
//! the direct path), and the mDNS records forwarded per second each way.
//! Run as root, normally through `bench/run mcast`; see `bench/README.md`.
//!
//! Exit status: 0 when every requested setup was measured, 1 otherwise.

use std::fmt::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Result};
use clap::{Parser, ValueEnum};
use patchpanel_bench::interrupt;
use patchpanel_bench::mcast::{self, Direction, Params, Results, Setup, SetupSamples};
use patchpanel_bench::report::{self, Point, Row};
use patchpanel_bench::stats::Summary;

/// The targets: mcastd's rate at least twice avahi's, and what it
/// adds to a round trip over the direct path under 100 us at p50.
const RATE_TARGET: f64 = 2.0;
const ADDED_P50_TARGET_US: f64 = 100.0;

#[derive(Debug, Parser)]
#[command(
    about = "Benchmark mcastd's mDNS forwarding (round trip, records per second) against avahi-daemon's reflector and the direct path"
)]
struct Args {
    /// Measured round trips per setup.
    #[arg(long, default_value_t = 1000,
          value_parser = clap::value_parser!(u32).range(1..=mcast::MAX_PROBES as i64))]
    probes: u32,
    /// Unmeasured round trips per setup first.
    #[arg(long, default_value_t = 20)]
    warmup: u32,
    /// Offered rates of the rate series: responses per second, or `max`.
    #[arg(long, default_value = "2000,20000,50000,max")]
    offered: String,
    /// Seconds each rate series sends.
    #[arg(long, default_value_t = 2.0)]
    rate_seconds: f64,
    /// Measure one setup only.
    #[arg(long, value_enum)]
    only: Option<Only>,
    /// Rate series in one direction only.
    #[arg(long, value_enum)]
    direction: Option<OnlyDirection>,
    /// Print the forwarders' logs to stderr at the end.
    #[arg(long)]
    show_logs: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Only {
    Mcastd,
    Avahi,
    Direct,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum OnlyDirection {
    Outbound,
    Inbound,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(err) => {
            eprintln!("bench-mcast: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<bool> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        bail!("must run as root (it creates network namespaces)");
    }
    if !(0.1..=600.0).contains(&args.rate_seconds) {
        bail!("--rate-seconds must be 0.1 to 600");
    }
    let offered = mcast::parse_offered(&args.offered)?;
    interrupt::install()?;
    let setups = match args.only {
        None => Setup::ALL.to_vec(),
        Some(Only::Mcastd) => vec![Setup::Mcastd],
        Some(Only::Avahi) => vec![Setup::Avahi],
        Some(Only::Direct) => vec![Setup::Direct],
    };
    let directions = match args.direction {
        None => Direction::ALL.to_vec(),
        Some(OnlyDirection::Outbound) => vec![Direction::Outbound],
        Some(OnlyDirection::Inbound) => vec![Direction::Inbound],
    };
    let params = Params {
        setups,
        probes: args.probes as usize,
        warmup: args.warmup as usize,
        offered,
        rate_time: Duration::from_secs_f64(args.rate_seconds),
        directions,
        show_logs: args.show_logs,
    };
    let load_at_start = report::load_average();
    let results = mcast::measure(&params)?;
    let mut ok = true;
    for (setup, result) in &results {
        match result {
            Ok(s) => eprintln!(
                "{}: {} of {} round trips unanswered",
                setup.name(),
                s.lost,
                params.probes
            ),
            Err(e) => {
                ok = false;
                eprintln!("bench-mcast: {} failed: {e:#}", setup.name());
            }
        }
    }
    print!("{}", render(&results, &params));
    println!(
        "{}",
        report::machine_line(load_at_start, report::load_average())
    );
    Ok(ok)
}

fn render(results: &Results, params: &Params) -> String {
    let get = |setup: Setup| -> Option<&SetupSamples> {
        results
            .iter()
            .find(|(s, _)| *s == setup)
            .and_then(|(_, r)| r.as_ref().ok())
    };
    let mut out = String::new();
    let rows: Vec<Row> = Setup::ALL
        .iter()
        .map(|&s| {
            Row::new(
                format!("{}, query -> answer round trip", s.name()),
                get(s).map(|x| &x.round_trip[..]),
            )
        })
        .collect();
    out.push_str(&report::table_micros(&rows));
    out.push('\n');

    let width = Setup::ALL.iter().map(|s| s.name().len()).max().unwrap_or(0)
        + " LAN->guest @ 20000/s".len();
    let _ = writeln!(
        out,
        "{:width$}  {:>10}  {:>10}  {:>7}  {:>9}  {:>12}",
        "mDNS responses, 1 fresh A record each",
        "sent/s",
        "received/s",
        "loss %",
        "records/",
        "CPU us/rec"
    );
    let _ = writeln!(
        out,
        "{:width$}  {:>10}  {:>10}  {:>7}  {:>9}  {:>12}",
        "", "", "", "", "datagram", ""
    );
    for &direction in &params.directions {
        for &offered in &params.offered {
            for setup in Setup::ALL {
                let label = format!(
                    "{} {} @ {}",
                    setup.name(),
                    direction.name(),
                    offered.label()
                );
                match get(setup).and_then(|s| s.rate(direction, offered)) {
                    Some(r) => {
                        let per_datagram = if r.datagrams == 0 {
                            "-".to_string()
                        } else {
                            format!(
                                "{:.2}",
                                (r.received + r.duplicates) as f64 / r.datagrams as f64
                            )
                        };
                        let cpu = match r.cpu {
                            Some(cpu) if r.received > 0 => {
                                format!("{:.1}", cpu.as_secs_f64() * 1e6 / r.received as f64)
                            }
                            Some(_) => "n/a".to_string(),
                            None => "-".to_string(),
                        };
                        let _ = writeln!(
                            out,
                            "{label:width$}  {:>10.0}  {:>10.0}  {:>7.1}  {:>9}  {:>12}",
                            r.sent_rate(),
                            r.received_rate(),
                            r.loss_percent(),
                            per_datagram,
                            cpu
                        );
                    }
                    None => {
                        let _ = writeln!(
                            out,
                            "{label:width$}  {:>10}  {:>10}  {:>7}  {:>9}  {:>12}",
                            "n/a", "n/a", "n/a", "-", "-"
                        );
                    }
                }
            }
        }
    }
    out.push('\n');

    let summary = |setup: Setup| -> Option<Summary> { rows[index(setup)].summary };
    for peer in [Setup::Avahi, Setup::Direct] {
        let _ = writeln!(
            out,
            "{}",
            report::ratios_line(
                "round trip",
                &format!("mcastd/{}", short(peer)),
                &[Point {
                    label: "p50".into(),
                    patchpanel: summary(Setup::Mcastd),
                    peer: summary(peer),
                }],
            )
        );
    }
    let added = |setup: Setup| -> (Option<f64>, Option<f64>) {
        match (summary(setup), summary(Setup::Direct)) {
            (Some(a), Some(d)) => (
                Some(micros(a.p50) - micros(d.p50)),
                Some(micros(a.p99) - micros(d.p99)),
            ),
            _ => (None, None),
        }
    };
    let show = |v: Option<f64>| v.map_or_else(|| "n/a".to_string(), |v| format!("{v:+.1} us"));
    let (mcastd_p50, mcastd_p99) = added(Setup::Mcastd);
    let (avahi_p50, avahi_p99) = added(Setup::Avahi);
    let _ = writeln!(
        out,
        "added over direct: mcastd p50 {} (target < {ADDED_P50_TARGET_US} us: {}), p99 {} ; avahi p50 {}, p99 {}",
        show(mcastd_p50),
        verdict(mcastd_p50.map(|v| v < ADDED_P50_TARGET_US)),
        show(mcastd_p99),
        show(avahi_p50),
        show(avahi_p99),
    );
    let paired = |setup: Setup| match (get(setup), get(Setup::Direct)) {
        (Some(a), Some(d)) => mcast::paired_added_micros(&a.rounds, &d.rounds),
        _ => None,
    };
    let _ = writeln!(
        out,
        "added over direct, median of round-by-round differences: mcastd {}, avahi {}",
        show(paired(Setup::Mcastd)),
        show(paired(Setup::Avahi)),
    );

    // The rate verdict compares the highest rate each one reached in a
    // direction, whatever the offered rate that took.
    let best = |setup: Setup, direction: Direction| -> Option<f64> {
        let s = get(setup)?;
        s.rates
            .iter()
            .filter(|r| r.direction == direction)
            .map(|r| r.received_rate())
            .reduce(f64::max)
    };
    let mut parts = Vec::new();
    for &direction in &params.directions {
        let ratio = match (
            best(Setup::Mcastd, direction),
            best(Setup::Avahi, direction),
        ) {
            (Some(a), Some(b)) if b > 0.0 => Some(a / b),
            _ => None,
        };
        parts.push(format!(
            "{}: {} ({})",
            direction.name(),
            ratio.map_or_else(|| "n/a".to_string(), |r| format!("{r:.2}")),
            verdict(ratio.map(|r| r >= RATE_TARGET))
        ));
    }
    let _ = writeln!(
        out,
        "rate (best received/s): ratio mcastd/avahi {} (target >= {RATE_TARGET})",
        parts.join(" ; ")
    );
    let mut direct_parts = Vec::new();
    for &direction in &params.directions {
        let show =
            |s: Setup| best(s, direction).map_or_else(|| "n/a".to_string(), |r| format!("{r:.0}"));
        direct_parts.push(format!(
            "{}: mcastd {}, avahi {}, direct {}",
            direction.name(),
            show(Setup::Mcastd),
            show(Setup::Avahi),
            show(Setup::Direct)
        ));
    }
    let _ = writeln!(out, "best received/s {}", direct_parts.join(" ; "));
    out
}

fn index(setup: Setup) -> usize {
    Setup::ALL.iter().position(|s| *s == setup).unwrap_or(0)
}

fn short(setup: Setup) -> &'static str {
    match setup {
        Setup::Mcastd => "mcastd",
        Setup::Avahi => "avahi",
        Setup::Direct => "direct",
    }
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn verdict(ok: Option<bool>) -> &'static str {
    match ok {
        Some(true) => "PASS",
        Some(false) => "FAIL",
        None => "n/a",
    }
}
