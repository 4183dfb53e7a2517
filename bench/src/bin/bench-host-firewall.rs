//! `bench-host-firewall`: how long guests stay cut off when the host's
//! firewall changes under patchpanel (Docker's FORWARD DROP, a `flush
//! ruleset`), with 10 and 100 connected namespaces, and D-Bus latency
//! while the daemon follows. Run as root, normally through `bench/run
//! host-firewall`; see `bench/README.md`.
//!
//! Exit status: 0 when every requested series was measured, 1 otherwise.

use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::Parser;
use patchpanel_bench::{host_firewall, interrupt, report, use_firewall_backend, FirewallArg};

#[derive(Debug, Parser)]
#[command(about = "Guests' recovery after host firewall changes, and D-Bus latency meanwhile")]
struct Args {
    /// Changes of each kind per guest count.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=1000))]
    changes: u32,
    /// Guest counts to measure with (comma-separated).
    #[arg(long, value_delimiter = ',', default_values_t = [10u32, 100])]
    guests: Vec<u32>,
    /// Which firewall backend(s) to measure.
    #[arg(long, value_enum, default_value_t = FirewallArg::Both)]
    firewall: FirewallArg,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(err) => {
            eprintln!("bench-host-firewall: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<bool> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        bail!("must run as root (it creates network namespaces and starts patchpaneld)");
    }
    if args.guests.iter().any(|&g| g == 0 || g > 255) {
        bail!("--guests: each count must be 1-255");
    }
    interrupt::install()?;
    let load_at_start = report::load_average();
    let mut ok = true;
    for backend in args.firewall.backends() {
        use_firewall_backend(backend);
        let mut all = Vec::new();
        for &guests in &args.guests {
            eprintln!("bench-host-firewall: {backend}, {guests} guests");
            match host_firewall::measure(guests as usize, args.changes as usize) {
                Ok(s) => all.push(s),
                Err(err) => {
                    eprintln!("bench-host-firewall: {backend}, {guests} guests: {err:#}");
                    ok = false;
                }
            }
            interrupt::check()?;
        }
        print!("{}", host_firewall::render(backend, &all));
    }
    println!(
        "{}",
        report::machine_line(load_at_start, report::load_average())
    );
    Ok(ok)
}
