//! `bench-ndproxy`: the NS->NA round trip through the ND proxy seen from
//! the upstream host, p50/p99, and the NS answered per second, for
//! `ndproxyd`, `ndppd` and the kernel's own proxy entries (the limit), in
//! the same run. Run as root, normally through `bench/run ndproxy`; see
//! `bench/README.md`.
//!
//! Exit status: 0 when every requested setup was measured, 1 otherwise.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Result};
use clap::{Parser, ValueEnum};
use patchpanel_bench::interrupt;
use patchpanel_bench::ndproxy::{self, Params, Setup, SetupSamples};
use patchpanel_bench::report::{self, Point, Row};
use patchpanel_bench::stats::{millis, Summary};

#[derive(Debug, Parser)]
#[command(
    about = "Benchmark ndproxyd's NS->NA round trip and answer rate against ndppd and the kernel"
)]
struct Args {
    /// Probes per latency series (also the guest's fresh addresses).
    #[arg(long, default_value_t = 200,
          value_parser = clap::value_parser!(u32).range(1..=ndproxy::MAX_PROBES as i64))]
    probes: u32,
    /// Unmeasured probes before the same-target series.
    #[arg(long, default_value_t = 5)]
    warmup: u32,
    /// NS kept in flight during the rate series.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=1024))]
    window: u32,
    /// Seconds the rate series runs.
    #[arg(long, default_value_t = 2.0)]
    rate_seconds: f64,
    /// Measure one setup only.
    #[arg(long, value_enum)]
    only: Option<Only>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Only {
    Ndproxyd,
    Ndppd,
    Kernel,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(err) => {
            eprintln!("bench-ndproxy: {err:#}");
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
    interrupt::install()?;
    let params = Params {
        probes: args.probes as usize,
        warmup: args.warmup as usize,
        window: args.window as usize,
        rate_time: Duration::from_secs_f64(args.rate_seconds),
    };
    let load_at_start = report::load_average();
    let mut ok = true;
    let mut results: Vec<(Setup, Option<SetupSamples>)> = Vec::new();
    for setup in Setup::ALL {
        let wanted = match args.only {
            None => true,
            Some(Only::Ndproxyd) => setup == Setup::Ndproxyd,
            Some(Only::Ndppd) => setup == Setup::Ndppd,
            Some(Only::Kernel) => setup == Setup::Kernel,
        };
        if !wanted {
            results.push((setup, None));
            continue;
        }
        interrupt::check()?;
        eprintln!(
            "measuring {} ({} probes same target, {} fresh targets, {:.1} s of NS with {} in flight)...",
            setup.name(),
            params.probes,
            params.probes,
            args.rate_seconds,
            params.window
        );
        match ndproxy::measure(setup, params) {
            Ok(samples) => {
                eprintln!(
                    "{}: {} probe(s) unanswered, {} NS given up on in the rate series; NAs came from {}",
                    setup.name(),
                    samples.lost,
                    samples.rate_lost,
                    describe_sources(&samples)
                );
                results.push((setup, Some(samples)));
            }
            Err(err) => {
                eprintln!("bench-ndproxy: {} failed: {err:#}", setup.name());
                ok = false;
                results.push((setup, None));
            }
        }
    }
    print!("{}", render(&results));
    println!(
        "{}",
        report::machine_line(load_at_start, report::load_average())
    );
    Ok(ok)
}

/// Who sent the NAs: the targets themselves (relayed from the guest) or
/// the listed addresses (a proxy answering itself).
fn describe_sources(samples: &SetupSamples) -> String {
    let mut own = 0;
    let mut others = Vec::new();
    for source in &samples.sources {
        if *source == ndproxy::WARM_TARGET
            || (0..samples.fresh_target.len() + samples.lost)
                .any(|i| *source == ndproxy::fresh_target(i))
        {
            own += 1;
        } else {
            others.push(source.to_string());
        }
    }
    let mut parts = Vec::new();
    if own > 0 {
        parts.push(format!(
            "the guest's own addresses ({own} of them: relayed)"
        ));
    }
    if !others.is_empty() {
        parts.push(others.join(", "));
    }
    parts.join(" and ")
}

fn render(results: &[(Setup, Option<SetupSamples>)]) -> String {
    let get = |setup: Setup| {
        results
            .iter()
            .find(|(s, _)| *s == setup)
            .and_then(|(_, samples)| samples.as_ref())
    };
    let label = |setup: Setup, what: &str| {
        let note = match (setup, what) {
            (Setup::Ndppd, "same target") => " (from its cache)",
            _ => "",
        };
        format!("{} NS->NA, {what}{note}", setup.name())
    };
    let mut rows = Vec::new();
    for what in ["same target", "fresh target"] {
        for setup in Setup::ALL {
            let samples = get(setup).map(|s| {
                if what == "same target" {
                    &s.same_target[..]
                } else {
                    &s.fresh_target[..]
                }
            });
            rows.push(Row::new(label(setup, what), samples));
        }
    }
    let summary = |i: usize| rows[i].summary;
    let pair = |peer: usize| {
        [
            Point {
                label: "same target".into(),
                patchpanel: summary(0),
                peer: summary(peer),
            },
            Point {
                label: "fresh target".into(),
                patchpanel: summary(3),
                peer: summary(3 + peer),
            },
        ]
    };
    let rate = |setup: Setup| get(setup).map(|s| s.rate);
    let show_rate = |r: Option<f64>| r.map_or_else(|| "n/a".to_string(), |r| format!("{r:.0}"));
    let rate_ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
        _ => "n/a".to_string(),
    };
    let added = |a: Option<Summary>, b: Option<Summary>| match (a, b) {
        (Some(a), Some(b)) => format!("{:+.1} us", 1000.0 * (millis(a.p50) - millis(b.p50))),
        _ => "n/a".to_string(),
    };
    format!(
        "{}\n{}\n{}\nadded over the kernel (p50): ndproxyd same target {}, fresh target {} ; ndppd same target {}, fresh target {}\n\
         NS answered per second: ndproxyd {}, ndppd {}, kernel {} ; ratio ndproxyd/ndppd: {} ; ndproxyd/kernel: {}\n",
        report::table_micros(&rows),
        report::ratios_line("latency", "ndproxyd/ndppd", &pair(1)),
        report::ratios_line("latency", "ndproxyd/kernel", &pair(2)),
        added(summary(0), summary(2)),
        added(summary(3), summary(5)),
        added(summary(1), summary(2)),
        added(summary(4), summary(5)),
        show_rate(rate(Setup::Ndproxyd)),
        show_rate(rate(Setup::Ndppd)),
        show_rate(rate(Setup::Kernel)),
        rate_ratio(rate(Setup::Ndproxyd), rate(Setup::Ndppd)),
        rate_ratio(rate(Setup::Ndproxyd), rate(Setup::Kernel)),
    )
}
