//! `bench-adb`: ADB over TCP to ARC through `patchpaneld`'s relay, next to
//! `socat` relaying from the same place and to the kernel forwarding the
//! connection itself, in the same run: bulk throughput each way, the relay
//! process's CPU seconds per GB, and connect + one request/answer p50/p99.
//! Run as root, normally through `bench/run adb`; see `bench/README.md`.
//!
//! Exit status: 0 when every requested path was measured, 1 otherwise.

use std::fmt::Write as _;
use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::{Parser, ValueEnum};
use patchpanel_bench::adb::{self, AdbSamples, Direction, Params, Path};
use patchpanel_bench::interrupt;
use patchpanel_bench::report::{self, Point, Row};

/// The targets, patchpanel against socat.
const THROUGHPUT_TARGET: f64 = 1.5;
const CPU_TARGET: f64 = 0.5;

#[derive(Debug, Parser)]
#[command(
    about = "Benchmark patchpaneld's ADB relay (throughput, CPU per GB, connect latency) against socat and a direct connection"
)]
struct Args {
    /// MiB per bulk transfer (each way, each round, each path).
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..=65536))]
    mib: u64,
    /// Bulk transfers per path and direction (the paths' order rotates).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    rounds: u32,
    /// Measured connections per path (connect + one 32-byte round trip).
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..=100000))]
    connections: u32,
    /// Unmeasured connections per path first.
    #[arg(long, default_value_t = 10)]
    warmup: u32,
    /// Measure one path only.
    #[arg(long, value_enum)]
    only: Option<Only>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Only {
    Patchpanel,
    Socat,
    Direct,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(err) => {
            eprintln!("bench-adb: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<bool> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        bail!("must run as root (it creates network namespaces and starts patchpaneld)");
    }
    interrupt::install()?;
    let paths: &'static [Path] = match args.only {
        None => &Path::ALL,
        Some(Only::Patchpanel) => &[Path::Patchpanel],
        Some(Only::Socat) => &[Path::Socat],
        Some(Only::Direct) => &[Path::Direct],
    };
    let params = Params {
        bytes: args.mib << 20,
        rounds: args.rounds as usize,
        connections: args.connections as usize,
        warmup: args.warmup as usize,
        paths,
    };
    let load_at_start = report::load_average();
    eprintln!(
        "measuring {} ({} MiB each way x {} rounds, then {} connections each, interleaved)...",
        paths
            .iter()
            .map(|p| p.name())
            .collect::<Vec<_>>()
            .join(", "),
        args.mib,
        args.rounds,
        args.connections
    );
    let mut ok = true;
    let samples = match adb::measure(params) {
        Ok(samples) => Some(samples),
        Err(err) => {
            eprintln!("bench-adb: {err:#}");
            ok = false;
            None
        }
    };
    for problem in samples.iter().flat_map(|s| &s.cleanup_problems) {
        eprintln!("bench-adb: patchpanel side: {problem}");
        ok = false;
    }
    print!("{}", render(samples.as_ref(), args));
    println!(
        "{}",
        report::machine_line(load_at_start, report::load_average())
    );
    Ok(ok)
}

/// One path's bulk numbers in one direction: median, min and max Gbit/s
/// over the rounds, and CPU seconds per GB over all of them.
#[derive(Debug, Clone, Copy, Default)]
struct BulkNumbers {
    median: Option<f64>,
    min: Option<f64>,
    max: Option<f64>,
    cpu_per_gb: Option<f64>,
    rounds: usize,
}

fn bulk_numbers(samples: Option<&AdbSamples>, path: Path, direction: Direction) -> BulkNumbers {
    let Some(samples) = samples else {
        return BulkNumbers::default();
    };
    let Some(bulk) = samples.get(path).map(|s| s.bulk(direction)) else {
        return BulkNumbers::default();
    };
    let rates: Vec<f64> = bulk
        .times
        .iter()
        .filter_map(|t| adb::gbit_per_second(samples.bytes, *t))
        .collect();
    BulkNumbers {
        median: adb::median(&rates),
        min: rates.iter().copied().reduce(f64::min),
        max: rates.iter().copied().reduce(f64::max),
        cpu_per_gb: bulk
            .cpu
            .and_then(|cpu| adb::cpu_per_gb(cpu, samples.bytes * bulk.times.len() as u64)),
        rounds: bulk.times.len(),
    }
}

fn render(samples: Option<&AdbSamples>, args: &Args) -> String {
    let label = |path: Path, direction: Direction| {
        let way = match direction {
            Direction::Upload => "upload LAN->ARC",
            Direction::Download => "download ARC->LAN",
        };
        let how = match path {
            Path::Patchpanel => "patchpanel relay",
            Path::Socat => "socat",
            Path::Direct => "direct (kernel DNAT)",
        };
        format!("{how}, {way}")
    };
    let mut out = String::new();
    let width = Direction::ALL
        .iter()
        .flat_map(|&d| Path::ALL.map(|p| label(p, d).len()))
        .max()
        .unwrap_or(0);
    let number = |v: Option<f64>, decimals: usize| {
        v.map_or_else(|| "n/a".to_string(), |v| format!("{v:.decimals$}"))
    };
    let _ = writeln!(
        out,
        "{:width$}  {:>8}  {:>6}  {:>6}  {:>9}  {:>6}",
        format!("bulk, {} MiB each", args.mib),
        "Gbit/s",
        "min",
        "max",
        "CPU s/GB",
        "rounds"
    );
    for direction in Direction::ALL {
        for path in Path::ALL {
            let n = bulk_numbers(samples, path, direction);
            let cpu = if path == Path::Direct {
                "-".to_string()
            } else {
                number(n.cpu_per_gb, 3)
            };
            let _ = writeln!(
                out,
                "{:width$}  {:>8}  {:>6}  {:>6}  {:>9}  {:>6}",
                label(path, direction),
                number(n.median, 2),
                number(n.min, 2),
                number(n.max, 2),
                cpu,
                n.rounds
            );
        }
    }
    out.push('\n');

    let connect = |path: Path| samples.and_then(|s| s.get(path)).map(|s| &s.connect[..]);
    let rows: Vec<Row> = Path::ALL
        .iter()
        .map(|&p| {
            let how = match p {
                Path::Patchpanel => "patchpanel relay",
                Path::Socat => "socat",
                Path::Direct => "direct (kernel DNAT)",
            };
            Row::new(format!("{how}, connect + 32 B round trip"), connect(p))
        })
        .collect();
    out.push_str(&report::table_micros(&rows));

    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    };
    let verdict = |r: Option<f64>, ok: fn(f64) -> bool| {
        r.map_or("n/a", |r| if ok(r) { "PASS" } else { "FAIL" })
    };
    let per_direction = |what: &dyn Fn(Direction) -> (Option<f64>, &'static str)| {
        Direction::ALL
            .iter()
            .map(|&d| {
                let (value, verdict) = what(d);
                if verdict.is_empty() {
                    format!("{}: {}", d.name(), number(value, 2))
                } else {
                    format!("{}: {} ({verdict})", d.name(), number(value, 2))
                }
            })
            .collect::<Vec<_>>()
            .join(" ; ")
    };
    let throughput = |a: Path, b: Path, d: Direction| {
        ratio(
            bulk_numbers(samples, a, d).median,
            bulk_numbers(samples, b, d).median,
        )
    };
    let cpu = |d: Direction| {
        ratio(
            bulk_numbers(samples, Path::Patchpanel, d).cpu_per_gb,
            bulk_numbers(samples, Path::Socat, d).cpu_per_gb,
        )
    };
    let _ = writeln!(
        out,
        "throughput: ratio patchpanel/socat {} (target >= {THROUGHPUT_TARGET})",
        per_direction(&|d| {
            let r = throughput(Path::Patchpanel, Path::Socat, d);
            (r, verdict(r, |r| r >= THROUGHPUT_TARGET))
        })
    );
    let _ = writeln!(
        out,
        "CPU per GB: ratio patchpanel/socat {} (target < {CPU_TARGET})",
        per_direction(&|d| {
            let r = cpu(d);
            (r, verdict(r, |r| r < CPU_TARGET))
        })
    );
    let _ = writeln!(
        out,
        "throughput vs direct: ratio patchpanel/direct {} ; socat/direct {}",
        per_direction(&|d| (throughput(Path::Patchpanel, Path::Direct, d), "")),
        per_direction(&|d| (throughput(Path::Socat, Path::Direct, d), "")),
    );
    let summary = |i: usize| rows[i].summary;
    for (peer, index) in [("socat", 1), ("direct", 2)] {
        let _ = writeln!(
            out,
            "{}",
            report::ratios_line(
                "connect",
                &format!("patchpanel/{peer}"),
                &[Point {
                    label: "p50".into(),
                    patchpanel: summary(0),
                    peer: summary(index),
                }],
            )
        );
    }
    out
}
