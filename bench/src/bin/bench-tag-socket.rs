//! `bench-tag-socket`: TagSocket latency through org.chromium.SocketService
//! and org.chromium.PatchPanel, idle and while the datapath writer is kept
//! busy, next to a direct setsockopt(SO_MARK) and GetDevices. Run as root,
//! normally through `bench/run tag-socket`; see `bench/README.md`.
//!
//! Exit status: 0 when every series was measured, 1 otherwise.

use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::Parser;
use patchpanel_bench::{interrupt, report, tag_socket};

#[derive(Debug, Parser)]
#[command(about = "TagSocket latency, idle and with the datapath writer busy")]
struct Args {
    /// Calls per series.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u32).range(10..=100_000))]
    calls: u32,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("bench-tag-socket: {err:#}");
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
    let samples = tag_socket::measure(args.calls as usize)?;
    print!("{}", tag_socket::render(&samples));
    println!(
        "{}",
        report::machine_line(load_at_start, report::load_average())
    );
    Ok(())
}
