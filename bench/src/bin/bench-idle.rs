//! `bench-idle`: the memory of the daemon's whole process tree idle and
//! with 50 connected namespaces, and each process's wake-ups per second
//! (context switches) in both states. Run as root, normally through
//! `bench/run idle`; see `bench/README.md`.
//!
//! Exit status: 0 when every requested series was measured, 1 otherwise.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Result};
use clap::Parser;
use patchpanel_bench::{idle, interrupt, report, use_firewall_backend, FirewallArg};

#[derive(Debug, Parser)]
#[command(about = "Measure patchpaneld's tree at idle: memory, and wake-ups per second")]
struct Args {
    /// Connected namespaces in the loaded state.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=255))]
    guests: u32,
    /// The measuring window of each state, in seconds.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    seconds: u64,
    /// The wait before each window, in seconds (start-up and connect work
    /// done).
    #[arg(long, default_value_t = 3)]
    settle: u64,
    /// Which firewall backend(s) to measure.
    #[arg(long, value_enum, default_value_t = FirewallArg::Nftables)]
    firewall: FirewallArg,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(err) => {
            eprintln!("bench-idle: {err:#}");
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
    let load_at_start = report::load_average();
    let mut ok = true;
    for backend in args.firewall.backends() {
        use_firewall_backend(backend);
        eprintln!("bench-idle: {backend}");
        match idle::measure(
            args.guests as usize,
            Duration::from_secs(args.seconds),
            Duration::from_secs(args.settle),
        ) {
            Ok(snapshots) => print!("{}", idle::render(backend, &snapshots)),
            Err(err) => {
                eprintln!("bench-idle: {backend}: {err:#}");
                ok = false;
            }
        }
        interrupt::check()?;
    }
    println!(
        "{}",
        report::machine_line(load_at_start, report::load_average())
    );
    Ok(ok)
}
