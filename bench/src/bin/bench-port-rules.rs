//! `bench-port-rules`: 1000 port forwards created and deleted one
//! `ModifyPortRule` call at a time (latency around the 1st, 500th and 1000th
//! rule), and `GetTrafficCounters` with 1, 10 and 50 uplinks, each next to
//! the naive way (one `iptables` process per rule; `iptables -L` and
//! `ip6tables -L` parsed) measured call by call in the same run. Run as
//! root, normally through `bench/run port-rules`; see `bench/README.md`.
//!
//! Exit status: 0 when every requested series was measured, 1 otherwise.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};
use patchpanel_bench::port_rules::{self, PortRuleSamples, SideSamples};
use patchpanel_bench::report::{self, Point, Row};
use patchpanel_bench::traffic_counters::{self, CounterSamples};
use patchpanel_bench::world::in_world;
use patchpanel_bench::{interrupt, FirewallArg};
use patchpanel_tests::DaemonOptions;

/// The daemon's configuration beyond the harness's: FORWARDING targets as
/// the defaults have them (the benchmark's rules go to 100.115.92.130),
/// spelled out so that a change of the defaults cannot void the run.
const DAEMON_CONFIG: &str = "forwarding_targets = [\"100.115.92.0/23\"]\n";

#[derive(Debug, Parser)]
#[command(
    about = "Benchmark ModifyPortRule and GetTrafficCounters against one iptables process per rule"
)]
struct Args {
    /// Forwarding rules created (then deleted) one call at a time.
    #[arg(long, default_value_t = port_rules::DEFAULT_RULES as u32,
          value_parser = clap::value_parser!(u32).range(1..=port_rules::MAX_RULES as i64))]
    rules: u32,
    /// Measured GetTrafficCounters calls per uplink count.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..))]
    calls: u32,
    /// Unmeasured calls before each series (create/delete pairs of a
    /// separate rule for the port rules).
    #[arg(long, default_value_t = 2)]
    warmup: u32,
    /// Uplink counts for GetTrafficCounters, rising, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = traffic_counters::DEFAULT_UPLINKS)]
    uplinks: Vec<usize>,
    /// Measure one side only.
    #[arg(long, value_enum)]
    only: Option<Side>,
    /// Measure one part only.
    #[arg(long, value_enum)]
    part: Option<Part>,
    /// patchpanel's firewall backend(s), one after the other in this run,
    /// each next to the naive peer.
    #[arg(long, value_enum, default_value_t = FirewallArg::Both)]
    firewall: FirewallArg,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Side {
    Patchpanel,
    Naive,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Part {
    PortRules,
    Counters,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(err) => {
            eprintln!("bench-port-rules: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// What the run measured; `None` for a part not asked for or failed.
#[derive(Debug, Default)]
struct Measured {
    port_rules: Option<PortRuleSamples>,
    counters: Option<CounterSamples>,
}

/// Measures what `args` asks for and prints the table; `Ok(false)` when a
/// part failed (its error is printed, its rows say n/a).
fn run(args: &Args) -> Result<bool> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        bail!("must run as root (it creates network namespaces and starts patchpaneld)");
    }
    if args.part != Some(Part::PortRules) {
        traffic_counters::check_uplink_counts(&args.uplinks).context("--uplinks")?;
    }
    interrupt::install()?;
    let load_at_start = report::load_average();
    let patchpanel = args.only != Some(Side::Naive);
    let naive = args.only != Some(Side::Patchpanel);
    let (rules, calls, warmup) = (
        args.rules as usize,
        args.calls as usize,
        args.warmup as usize,
    );

    let mut ok = true;
    for backend in args.firewall.backends() {
        interrupt::check()?;
        eprintln!("patchpanel firewall backend: {backend}");
        patchpanel_bench::use_firewall_backend(backend);
        println!("## patchpanel firewall backend: {backend}");
        let options = DaemonOptions {
            extra_config: DAEMON_CONFIG.into(),
            extra_args: vec!["--uplinks=netlink".into()],
            ..Default::default()
        };
        let result = in_world(options, |world| {
            let mut measured = Measured::default();
            if args.part != Some(Part::Counters) {
                eprintln!(
                    "measuring {rules} forwarding rules, created then deleted one at a time..."
                );
                measured.port_rules = Some(
                    port_rules::measure(world, rules, warmup, patchpanel, naive)
                        .context("port rules")?,
                );
            }
            if args.part != Some(Part::PortRules) {
                interrupt::check()?;
                eprintln!(
                    "measuring GetTrafficCounters ({calls} calls each with {} uplinks)...",
                    join(&args.uplinks)
                );
                measured.counters = Some(
                    traffic_counters::measure(
                        world,
                        &args.uplinks,
                        calls,
                        warmup,
                        patchpanel,
                        naive,
                    )
                    .context("traffic counters")?,
                );
            }
            Ok(measured)
        });
        let measured = match result {
            Ok((measured, problem)) => {
                if let Some(problem) = problem {
                    eprintln!("bench-port-rules: the daemon's teardown: {problem}");
                    ok = false;
                }
                measured
            }
            Err(err) => {
                eprintln!("bench-port-rules: {err:#}");
                ok = false;
                Measured::default()
            }
        };

        print!("{}", render(args, &measured));
    }
    println!(
        "{}",
        report::machine_line(load_at_start, report::load_average())
    );
    Ok(ok)
}

/// The table and the comparison lines of the parts asked for (rows of a
/// part or side that was asked for but failed say n/a).
fn render(args: &Args, measured: &Measured) -> String {
    let mut rows = Vec::new();
    let mut lines = Vec::new();
    if args.part != Some(Part::Counters) {
        port_rule_rows(
            args.rules as usize,
            measured.port_rules.as_ref(),
            &mut rows,
            &mut lines,
        );
    }
    if args.part != Some(Part::PortRules) {
        counter_rows(
            &args.uplinks,
            measured.counters.as_ref(),
            &mut rows,
            &mut lines,
        );
    }
    format!("{}\n{}\n", report::table(&rows), lines.join("\n"))
}

type Pick = fn(&SideSamples) -> &[Duration];

/// Per operation: the windows of patchpanel, then of the naive peer; the
/// ratios at each window and the total time of the series.
fn port_rule_rows(
    rules: usize,
    samples: Option<&PortRuleSamples>,
    rows: &mut Vec<Row>,
    lines: &mut Vec<String>,
) {
    let windows = port_rules::windows(rules);
    let patchpanel = samples.and_then(|s| s.patchpanel.as_ref());
    let naive = samples.and_then(|s| s.naive.as_ref());
    let create: Pick = |s| &s.create;
    let delete: Pick = |s| &s.delete;
    for (op, pick) in [("create", create), ("delete", delete)] {
        let window_rows = |side: &str, samples: Option<&SideSamples>| {
            windows
                .iter()
                .map(|w| {
                    Row::new(
                        format!("{side} {op} {}", w.label()),
                        samples.and_then(|s| w.of(pick(s))),
                    )
                })
                .collect::<Vec<_>>()
        };
        let pp = window_rows("patchpanel ModifyPortRule", patchpanel);
        let nv = window_rows("naive 2x iptables", naive);
        let points: Vec<Point> = windows
            .iter()
            .zip(pp.iter().zip(&nv))
            .map(|(w, (pp, nv))| Point {
                label: w.short_label(),
                patchpanel: pp.summary,
                peer: nv.summary,
            })
            .collect();
        lines.push(report::scaling_line(op, "naive", &points));
        let total = |side: Option<&SideSamples>| {
            side.map_or_else(
                || "n/a".to_string(),
                |s| format!("{:.2} s", pick(s).iter().sum::<Duration>().as_secs_f64()),
            )
        };
        lines.push(format!(
            "{op}: all {rules} rules took {} on patchpanel, {} naive",
            total(patchpanel),
            total(naive),
        ));
        rows.extend(pp);
        rows.extend(nv);
    }
}

/// Per uplink count: patchpanel, then the naive peer; the ratios at each
/// count; the cost of one process start.
fn counter_rows(
    uplinks: &[usize],
    samples: Option<&CounterSamples>,
    rows: &mut Vec<Row>,
    lines: &mut Vec<String>,
) {
    let stage = |n: usize| samples.and_then(|c| c.stages.iter().find(|s| s.uplinks == n));
    let at = |n: usize| format!("@{n} uplink{}", if n == 1 { "" } else { "s" });
    let pp: Vec<Row> = uplinks
        .iter()
        .map(|&n| {
            Row::new(
                format!("patchpanel GetTrafficCounters {}", at(n)),
                stage(n).and_then(|s| s.patchpanel.as_deref()),
            )
        })
        .collect();
    let naive_tool = if patchpanel_tests::daemon::firewall_backend() == "nftables" {
        "2x nft list table"
    } else {
        "iptables+ip6tables -L"
    };
    let nv: Vec<Row> = uplinks
        .iter()
        .map(|&n| {
            Row::new(
                format!("naive {naive_tool} {}", at(n)),
                stage(n).and_then(|s| s.naive.as_deref()),
            )
        })
        .collect();
    let points: Vec<Point> = uplinks
        .iter()
        .zip(pp.iter().zip(&nv))
        .map(|(n, (pp, nv))| Point {
            label: format!("@{n}"),
            patchpanel: pp.summary,
            peer: nv.summary,
        })
        .collect();
    lines.push(report::scaling_line("GetTrafficCounters", "naive", &points));
    rows.extend(pp);
    rows.extend(nv);
    rows.push(Row::new(
        "(iptables -V alone: one process start)",
        samples
            .map(|c| &c.process_start[..])
            .filter(|s| !s.is_empty()),
    ));
}

fn join(values: &[usize]) -> String {
    values
        .iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join(",")
}
