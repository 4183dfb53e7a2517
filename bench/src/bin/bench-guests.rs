//! `bench-guests`: `TerminaVmStartup` until the TAP is usable and
//! `ArcStartup` with three uplinks until ARC's devices are in place (and
//! both shutdowns), p50/p99, interleaved iteration by iteration with
//! netavark attaching a container to one bridge network and to three in
//! one call. Run as root, normally through `bench/run guests`; see
//! `bench/README.md`.
//!
//! Exit status: 0 when every requested series was measured, 1 otherwise.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::{Parser, ValueEnum};
use patchpanel_bench::guests::{self, GuestSamples, Plan};
use patchpanel_bench::report::{self, Point, Row};
use patchpanel_bench::{interrupt, netavark};

#[derive(Debug, Parser)]
#[command(
    about = "Benchmark TerminaVmStartup and ArcStartup (3 uplinks) against netavark setting up bridge networks"
)]
struct Args {
    /// Measured iterations per series.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..=10000))]
    iterations: u32,
    /// Unmeasured iterations before each series (first-use costs).
    #[arg(long, default_value_t = 2)]
    warmup: u32,
    /// The netavark binary.
    #[arg(long, default_value = netavark::DEFAULT_BINARY)]
    netavark: PathBuf,
    /// Measure one side only.
    #[arg(long, value_enum)]
    only: Option<Side>,
    /// Measure one guest only.
    #[arg(long, value_enum)]
    guest: Option<Guest>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Side {
    Patchpanel,
    Netavark,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Guest {
    Termina,
    Arc,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(err) => {
            eprintln!("bench-guests: {err:#}");
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
    let plan = Plan {
        iterations: args.iterations as usize,
        warmup: args.warmup as usize,
        patchpanel: args.only != Some(Side::Netavark),
        netavark: args.only != Some(Side::Patchpanel),
        termina: args.guest != Some(Guest::Arc),
        arc: args.guest != Some(Guest::Termina),
    };
    let load_at_start = report::load_average();
    eprintln!(
        "measuring {} iterations per series (Termina, then ARC with 3 uplinks; patchpanel and netavark interleaved)...",
        plan.iterations
    );
    let mut ok = true;
    let samples = match guests::measure(plan, &args.netavark) {
        Ok(samples) => Some(samples),
        Err(err) => {
            eprintln!("bench-guests: {err:#}");
            ok = false;
            None
        }
    };
    for problem in samples.iter().flat_map(|s| &s.cleanup_problems) {
        eprintln!("bench-guests: patchpanel side: {problem}");
        ok = false;
    }
    print!("{}", render(samples.as_ref()));
    println!(
        "{}",
        report::machine_line(load_at_start, report::load_average())
    );
    Ok(ok)
}

fn render(samples: Option<&GuestSamples>) -> String {
    let termina = samples.and_then(|s| s.termina.as_ref());
    let arc = samples.and_then(|s| s.arc.as_ref());
    let one = samples.and_then(|s| s.netavark_one.as_ref());
    let three = samples.and_then(|s| s.netavark_three.as_ref());
    let rows = [
        Row::new(
            "patchpanel TerminaVmStartup answer",
            termina.map(|s| &s.answer[..]),
        ),
        Row::new(
            "patchpanel TerminaVmStartup -> TAP usable",
            termina.map(|s| &s.usable[..]),
        ),
        Row::new("netavark setup, 1 network", one.map(|s| &s.setup[..])),
        Row::new(
            "patchpanel TerminaVmShutdown answer",
            termina.map(|s| &s.shutdown[..]),
        ),
        Row::new(
            "patchpanel TerminaVmShutdown -> TAP gone",
            termina.map(|s| &s.gone[..]),
        ),
        Row::new("netavark teardown, 1 network", one.map(|s| &s.teardown[..])),
        Row::new(
            "patchpanel ArcStartup answer (3 uplinks)",
            arc.map(|s| &s.answer[..]),
        ),
        Row::new(
            "patchpanel ArcStartup -> 3 devices in place",
            arc.map(|s| &s.usable[..]),
        ),
        Row::new(
            "netavark setup, 3 networks in one call",
            three.map(|s| &s.setup[..]),
        ),
        Row::new(
            "patchpanel ArcShutdown answer",
            arc.map(|s| &s.shutdown[..]),
        ),
        Row::new(
            "patchpanel ArcShutdown -> ARC's 4 veths gone",
            arc.map(|s| &s.gone[..]),
        ),
        Row::new(
            "netavark teardown, 3 networks",
            three.map(|s| &s.teardown[..]),
        ),
        Row::new(
            "ConnectNamespace during ArcShutdown's deletions",
            arc.filter(|s| !s.connect_during.is_empty())
                .map(|s| &s.connect_during[..]),
        ),
        Row::new(
            "ConnectNamespace alone (its normal time)",
            arc.filter(|s| !s.connect_alone.is_empty())
                .map(|s| &s.connect_alone[..]),
        ),
        Row::new(
            "(nsenter alone, in netavark rows)",
            samples
                .filter(|s| !s.nsenter.is_empty())
                .map(|s| &s.nsenter[..]),
        ),
    ];
    let summary = |i: usize| rows[i].summary;
    let point = |label: &str, patchpanel: usize, peer: usize| Point {
        label: label.into(),
        patchpanel: summary(patchpanel),
        peer: summary(peer),
    };
    format!(
        "{}\n{}\n{}\n{}\n",
        report::table(&rows),
        report::ratios_line(
            "Termina (vs 1 network)",
            "patchpanel/netavark",
            &[
                point("startup usable", 1, 2),
                point("startup answer", 0, 2),
                point("shutdown gone", 4, 5),
            ]
        ),
        report::ratios_line(
            "ARC 3 uplinks (vs 3 networks)",
            "patchpanel/netavark",
            &[
                point("startup in place", 7, 8),
                point("startup answer", 6, 8),
                point("shutdown gone", 10, 11),
            ]
        ),
        report::ratios_line(
            "ConnectNamespace during ArcShutdown's deletions (vs alone)",
            "during/alone",
            &[point("answer", 12, 13)]
        ),
    )
}
