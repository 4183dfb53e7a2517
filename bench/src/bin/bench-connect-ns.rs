//! `bench-connect-ns`: ConnectNamespace round trip and lifeline teardown,
//! p50/p99, alone and with 100 namespaces connected, next to netavark's
//! setup/teardown of a container on a bridge network. Run as root, normally
//! through `bench/run`; see `bench/README.md`.
//!
//! Exit status: 0 when every requested series was measured (whether or not
//! the targets were met: the last lines say PASS or FAIL), 1 otherwise.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};
use patchpanel_bench::netavark::{self, NetavarkSamples};
use patchpanel_bench::patchpanel::{self, PatchpanelSamples};
use patchpanel_bench::report::{self, Comparison, Row};
use patchpanel_bench::{interrupt, FirewallArg};

#[derive(Debug, Parser)]
#[command(about = "Benchmark ConnectNamespace and lifeline teardown against netavark")]
struct Args {
    /// Measured iterations per series.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..))]
    iterations: u32,
    /// Unmeasured iterations before each series (first-use costs).
    #[arg(long, default_value_t = 2)]
    warmup: u32,
    /// Namespaces (containers) held connected for the loaded series.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u16).range(1..=1000))]
    loaded: u16,
    /// The netavark binary.
    #[arg(long, default_value = netavark::DEFAULT_BINARY)]
    netavark: PathBuf,
    /// Measure one side only.
    #[arg(long, value_enum)]
    only: Option<Side>,
    /// patchpanel's firewall backend(s), side by side in this run.
    #[arg(long, value_enum, default_value_t = FirewallArg::Both)]
    firewall: FirewallArg,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Side {
    Patchpanel,
    Netavark,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(err) => {
            eprintln!("bench-connect-ns: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Measures what `args` asks for and prints the table; `Ok(false)` when a
/// side failed (its error is printed, its rows say n/a).
fn run(args: &Args) -> Result<bool> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        bail!("must run as root (it creates network namespaces and starts patchpaneld)");
    }
    interrupt::install()?;
    let iterations = args.iterations as usize;
    let warmup = args.warmup as usize;
    let loaded = args.loaded;
    let mut ok = true;
    let load_at_start = report::load_average();

    let netavark = if args.only != Some(Side::Patchpanel) {
        eprintln!("measuring netavark ({iterations} iterations, then with {loaded} containers)...");
        let result = u8::try_from(loaded)
            .map_err(|_| {
                anyhow::anyhow!(
                    "netavark's side holds at most 200 containers; use --only patchpanel for {loaded}"
                )
            })
            .and_then(|loaded| netavark::measure(&args.netavark, iterations, warmup, loaded))
            .context("netavark side failed");
        report_failure(&result, &mut ok);
        result.ok()
    } else {
        None
    };
    let mut patchpanel = Vec::new();
    if args.only != Some(Side::Netavark) {
        for backend in args.firewall.backends() {
            interrupt::check()?;
            eprintln!(
                "measuring patchpanel, {backend} backend ({iterations} iterations, then with {loaded} namespaces)..."
            );
            patchpanel_bench::use_firewall_backend(backend);
            let result = patchpanel::measure(iterations, warmup, usize::from(loaded))
                .with_context(|| format!("patchpanel side ({backend}) failed"));
            report_failure(&result, &mut ok);
            for problem in result.iter().flat_map(|s| &s.cleanup_problems) {
                eprintln!("bench-connect-ns: patchpanel side: {problem}");
                ok = false;
            }
            patchpanel.push((*backend, result.ok()));
        }
    }
    if patchpanel.is_empty() {
        patchpanel.push(("-", None));
    }
    for (backend, samples) in &patchpanel {
        println!("## patchpanel firewall backend: {backend}");
        print!(
            "{}",
            render(samples.as_ref(), netavark.as_ref(), usize::from(loaded))
        );
        let teardown = samples
            .as_ref()
            .and_then(|s| patchpanel_bench::stats::Summary::of(&s.alone.teardown).map(|x| x.p50));
        if let Some(p50) = teardown {
            println!(
                "teardown p50 @1 ({backend}): {:.2} ms (target <= 20 ms: {})",
                p50.as_secs_f64() * 1e3,
                if p50.as_millis() <= 20 {
                    "PASS"
                } else {
                    "FAIL"
                }
            );
        }
    }
    println!(
        "{}",
        report::machine_line(load_at_start, report::load_average())
    );
    Ok(ok)
}

fn report_failure<T>(result: &Result<T>, ok: &mut bool) {
    if let Err(err) = result {
        eprintln!("bench-connect-ns: {err:#}");
        *ok = false;
    }
}

fn render(pp: Option<&PatchpanelSamples>, nv: Option<&NetavarkSamples>, loaded: usize) -> String {
    let at = |n: usize| format!("@{n}");
    let (one, many) = (at(1), at(loaded));
    let rows = [
        Row::new(
            format!("patchpanel connect {one}"),
            pp.map(|s| &s.alone.connect[..]),
        ),
        Row::new(
            format!("patchpanel connect {many}"),
            pp.map(|s| &s.loaded.connect[..]),
        ),
        Row::new(
            format!("netavark setup {one}"),
            nv.map(|s| &s.setup_alone[..]),
        ),
        Row::new(
            format!("netavark setup {many}"),
            nv.map(|s| &s.setup_loaded[..]),
        ),
        Row::new(
            format!("patchpanel teardown {one}"),
            pp.map(|s| &s.alone.teardown[..]),
        ),
        Row::new(
            format!("patchpanel teardown {many}"),
            pp.map(|s| &s.loaded.teardown[..]),
        ),
        Row::new(
            format!("netavark teardown {one}"),
            nv.map(|s| &s.teardown_alone[..]),
        ),
        Row::new(
            format!("netavark teardown {many}"),
            nv.map(|s| &s.teardown_loaded[..]),
        ),
        Row::new(
            format!("patchpanel /run/netns gone {one}"),
            pp.map(|s| &s.alone.netns_gone[..]),
        ),
        Row::new(
            format!("patchpanel /run/netns gone {many}"),
            pp.map(|s| &s.loaded.netns_gone[..]),
        ),
        Row::new(
            format!("patchpanel host veth gone {one}"),
            pp.map(|s| &s.alone.veth_gone[..]),
        ),
        Row::new(
            format!("patchpanel host veth gone {many}"),
            pp.map(|s| &s.loaded.veth_gone[..]),
        ),
        Row::new(
            "(nsenter alone, in netavark rows)",
            nv.map(|s| &s.nsenter[..]),
        ),
    ];
    let summary = |i: usize| rows[i].summary;
    let connect = Comparison {
        patchpanel_alone: summary(0),
        patchpanel_loaded: summary(1),
        netavark_alone: summary(2),
    };
    let teardown = Comparison {
        patchpanel_alone: summary(4),
        patchpanel_loaded: summary(5),
        netavark_alone: summary(6),
    };
    format!(
        "{}\n{}\n{}\n",
        report::table(&rows),
        report::verdict("connect", loaded, &connect),
        report::verdict("teardown", loaded, &teardown),
    )
}
