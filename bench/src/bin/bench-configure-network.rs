//! `bench-configure-network`: TagSocket latency through org.chromium.SocketService
//! and org.chromium.PatchPanel, idle and while the datapath writer is kept
//! busy, next to a direct setsockopt(SO_MARK) and GetDevices. Run as root,
//! normally through `bench/run tag-socket`; see `bench/README.md`.
//!
//! Exit status: 0 when every series was measured, 1 otherwise.

use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::Parser;
use patchpanel_bench::{configure_network, interrupt, report};

#[derive(Debug, Parser)]
#[command(about = "ConfigureNetwork vs one ip process per change; VPN switch with 10 guests")]
struct Args {
    /// Configurations per series.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(5..=10_000))]
    iterations: u32,
    /// Switches to the VPN and back.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=1000))]
    switches: u32,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("bench-configure-network: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        bail!("must run as root (it starts patchpaneld in a network namespace)");
    }
    interrupt::install()?;
    let load_at_start = report::load_average();
    let samples = configure_network::measure(args.iterations as usize, args.switches as usize)?;
    print!("{}", configure_network::render(&samples));
    println!(
        "{}",
        report::machine_line(load_at_start, report::load_average())
    );
    Ok(())
}
