//! `bench-dhcp`: DHCP lease round trips and leases per second through
//! patchpanel's dhcp-server vs dnsmasq configured the same way. Run as
//! root, normally through `bench/run dhcp`; see `bench/README.md`.
//!
//! Exit status: 0 when both servers were measured, 1 otherwise.

use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::Parser;
use patchpanel_bench::{dhcp, interrupt, report};

#[derive(Debug, Parser)]
#[command(about = "DHCP: patchpanel's dhcp-server vs dnsmasq")]
struct Args {
    /// Timed exchanges (DISCOVER..ACK) per server.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(10..=100_000))]
    exchanges: u32,
    /// Seconds of back-to-back exchanges for the rate.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=60))]
    rate_seconds: u64,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("bench-dhcp: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        bail!("must run as root (it starts patchpaneld and dnsmasq in network namespaces)");
    }
    interrupt::install()?;
    let load_at_start = report::load_average();
    let samples = dhcp::measure(args.exchanges as usize, args.rate_seconds)?;
    print!("{}", dhcp::render(&samples));
    println!(
        "{}",
        report::machine_line(load_at_start, report::load_average())
    );
    Ok(())
}
