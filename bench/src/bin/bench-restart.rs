//! `bench-restart`: kill -9 of the manager, then its successor serving
//! (`GetDevices` answered, polled every 2 ms from the moment the successor
//! is spawned) with the previous run's guests: `--vms` Termina VMs, which it
//! re-adopts, and `--namespaces` connected namespaces, whose lifelines died
//! with the old manager and which it removes. The floor in the same run: a
//! first start with nothing to restore, timed the same way; and a successor
//! of an idle daemon. Each iteration is a fresh world. Run as root, through
//! `bench/run restart`; see `bench/README.md`.
//!
//! Exit status: 0 when every series was measured, 1 otherwise.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use patchpanel_bench::interrupt;
use patchpanel_bench::patchpanel::NETNS_POOL_CONFIG;
use patchpanel_bench::report::{self, Point, Row};
use patchpanel_client::Client;
use patchpanel_tests::world::Internet;
use patchpanel_tests::{Daemon, DaemonOptions, Netns, PrivateBus};

#[derive(Debug, Parser)]
#[command(
    about = "Measure kill -9 of patchpaneld -> its successor serving, with guests to restore"
)]
struct Args {
    /// Measured iterations (each a fresh world).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=100))]
    iterations: u32,
    /// Termina VMs the crashed daemon held (re-adopted), at most 8 (the
    /// Termina pool).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(0..=8))]
    vms: u32,
    /// Connected namespaces the crashed daemon held (removed).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(0..=250))]
    namespaces: u32,
}

/// How often the bench asks for GetDevices while waiting.
const POLL: Duration = Duration::from_millis(2);
const READY_TIMEOUT: Duration = Duration::from_secs(30);

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("bench-restart: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn options(successor_of: Option<&Daemon>) -> DaemonOptions {
    DaemonOptions {
        extra_config: NETNS_POOL_CONFIG.to_string(),
        successor_of: successor_of
            .map(|d| (d.state_dir().to_path_buf(), d.netns_prefix().to_string())),
        ..Default::default()
    }
}

/// Spawns a daemon and times it until GetDevices answers.
fn start_timed(
    netns: &Netns,
    bus: &PrivateBus,
    options: DaemonOptions,
) -> Result<(Daemon, Duration)> {
    let started = Instant::now();
    let mut daemon = Daemon::start_with(netns, bus, options)?;
    let client = Client::connect_to(bus.address()).context("bus")?;
    loop {
        if client.get_devices().is_ok() {
            let took = started.elapsed();
            daemon.wait_ready()?;
            return Ok((daemon, took));
        }
        if started.elapsed() > READY_TIMEOUT {
            bail!("not serving after {READY_TIMEOUT:?}:\n{}", daemon.log());
        }
        std::thread::sleep(POLL);
    }
}

/// One iteration: (first start, successor of an idle daemon, successor
/// with the guests).
fn iteration(args: &Args) -> Result<(Duration, Duration, Duration)> {
    let netns = Netns::new()?;
    let _internet = Internet::attach(&netns)?;
    let bus = PrivateBus::start()?;
    let (mut first, cold) = start_timed(&netns, &bus, options(None))?;
    first.signal(libc::SIGKILL)?;
    first.wait_exit(Duration::from_secs(5))?;
    let (mut idle, idle_took) = start_timed(&netns, &bus, options(Some(&first)))?;

    let client = Client::connect_to(bus.address()).context("bus")?;
    for i in 0..args.vms {
        client
            .terminavm_startup(100 + i)
            .context("TerminaVmStartup")?;
    }
    let mut held = Vec::new();
    for _ in 0..args.namespaces {
        let request = patchpanel_client::proto::ConnectNamespaceRequest {
            pid: -1,
            ..Default::default()
        };
        held.push(
            client
                .connect_namespace(&request)
                .context("ConnectNamespace")?,
        );
    }
    idle.signal(libc::SIGKILL)?;
    idle.wait_exit(Duration::from_secs(5))?;
    drop(held);
    let (successor, loaded) = start_timed(&netns, &bus, options(Some(&idle)))?;
    let devices = client.get_devices().context("GetDevices")?;
    if devices.len() != args.vms as usize {
        bail!(
            "the successor lists {} devices, not the {} VMs:\n{}",
            devices.len(),
            args.vms,
            successor.log()
        );
    }
    if let Some(line) = successor.log().lines().find(|l| l.contains("serving ")) {
        eprintln!("  {line}");
    }
    drop(successor);
    Ok((cold, idle_took, loaded))
}

fn run(args: &Args) -> Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        bail!("must run as root (it creates network namespaces and starts patchpaneld)");
    }
    interrupt::install()?;
    let load_at_start = report::load_average();
    let (mut cold, mut idle, mut loaded) = (Vec::new(), Vec::new(), Vec::new());
    eprintln!(
        "measuring {} iterations ({} VMs, {} namespaces)...",
        args.iterations, args.vms, args.namespaces
    );
    for i in 0..args.iterations {
        interrupt::check()?;
        let (c, s, l) = iteration(args).with_context(|| format!("iteration {i}"))?;
        cold.push(c);
        idle.push(s);
        loaded.push(l);
    }
    let loaded_label = format!(
        "successor with {} VMs + {} dead namespaces",
        args.vms, args.namespaces
    );
    let rows = [
        Row::new("first start, nothing to restore", Some(&cold[..])),
        Row::new("successor of an idle daemon", Some(&idle[..])),
        Row::new(loaded_label, Some(&loaded[..])),
    ];
    let point = |label: &str, i: usize| Point {
        label: label.into(),
        patchpanel: rows[i].summary,
        peer: rows[0].summary,
    };
    println!(
        "{}\n{}",
        report::table(&rows),
        report::ratios_line(
            "start -> serving",
            "vs first start",
            &[point("idle successor", 1), point("loaded successor", 2)]
        )
    );
    println!(
        "{}",
        report::machine_line(load_at_start, report::load_average())
    );
    Ok(())
}
