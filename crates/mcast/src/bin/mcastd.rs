//! `mcastd [--mdns] [--ssdp] [--broadcast] UPLINK DOWNLINK...`: the
//! multicast forwarder on its own, for a machine without patchpanel's
//! manager (inside a VM, between its `eth0` and a container bridge), like
//! `ndproxyd`. With none of the protocol flags it forwards mDNS and SSDP;
//! both directions for every downlink unless `--inbound-only` or
//! `--outbound-only`.
//!
//! It waits for links that do not exist yet (`--wait-secs`, 60 by default,
//! then gives up so the init system can restart it), follows links that
//! are deleted and created again, and logs its counters every
//! `--stats-secs` and at exit (SIGTERM, SIGINT). Each downlink's IPv4 mDNS
//! to the LAN may amount to `--mdns-budget` bytes a second (8 MiB by
//! default, as in patchpanel). Each socket asks for a receive buffer of
//! `--receive-buffer` bytes (1 MiB by default, capped by
//! `net.core.rmem_max`). It needs CAP_NET_RAW (device-pinned and raw
//! sockets) and nothing else.

use std::io::{ErrorKind, Read};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use log::{error, info, LevelFilter};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use patchpanel_mcast::{Forwarder, ForwarderError, Pair, Protocols};

const SIGNALS: Token = Token(0);
/// How often links are checked for having been re-created.
const REFRESH: Duration = Duration::from_secs(2);

/// Forward mDNS, SSDP and (optionally) IPv4 broadcast between an uplink
/// and guest links.
#[derive(Debug, Parser)]
#[command(name = "mcastd", version)]
struct Args {
    /// Forward mDNS (224.0.0.251, ff02::fb, port 5353).
    #[arg(long)]
    mdns: bool,
    /// Forward SSDP (239.255.255.250, ff02::c, port 1900).
    #[arg(long)]
    ssdp: bool,
    /// Forward IPv4 broadcast (ports >= 1024).
    #[arg(long)]
    broadcast: bool,
    /// Only uplink -> downlinks.
    #[arg(long, conflicts_with = "outbound_only")]
    inbound_only: bool,
    /// Only downlinks -> uplink.
    #[arg(long)]
    outbound_only: bool,
    /// Interface facing the LAN.
    uplink: String,
    /// Interfaces facing the guests (may appear later).
    #[arg(required = true)]
    downlinks: Vec<String>,
    /// How long to wait for the links to appear at start, in seconds.
    #[arg(long, default_value_t = 60)]
    wait_secs: u64,
    /// IPv4 mDNS each downlink may send to the LAN, in bytes per second;
    /// beyond it (after a burst of a second's worth, at most 1 MiB) it is
    /// dropped and counted.
    #[arg(long, default_value_t = patchpanel_mcast::budget::REWRITE_BYTES_PER_SECOND,
          value_parser = clap::value_parser!(u64).range(1..))]
    mdns_budget: u64,
    /// The receive buffer each socket asks for, in bytes (SO_RCVBUF; the
    /// kernel caps it at net.core.rmem_max). A larger one rides out a
    /// longer stall of the forwarder without loss.
    #[arg(long, default_value_t = patchpanel_mcast::forwarder::RECEIVE_BUFFER as u64,
          value_parser = clap::value_parser!(u64).range(1..=(i32::MAX as u64)))]
    receive_buffer: u64,
    /// Log the counters this often (0: only at exit).
    #[arg(long, default_value_t = 300)]
    stats_secs: u64,
    /// Log to stderr even when syslog is available.
    #[arg(long)]
    log_to_stderr: bool,
    /// Log verbosity: error, warn, info, debug or trace.
    #[arg(long, default_value = "info")]
    log_level: LevelFilter,
}

fn main() -> ExitCode {
    let args = Args::parse();
    patchpanel_logging::init(
        "mcastd",
        patchpanel_logging::Sink::choose(args.log_to_stderr),
        args.log_level,
    );
    patchpanel_logging::log_panics();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<()> {
    for name in std::iter::once(&args.uplink).chain(&args.downlinks) {
        if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains(['/', ' ', '\0']) {
            bail!("{name:?} is not an interface name");
        }
    }
    let protocols = if args.mdns || args.ssdp || args.broadcast {
        Protocols {
            mdns: args.mdns,
            ssdp: args.ssdp,
            broadcast: args.broadcast,
        }
    } else {
        Protocols {
            mdns: true,
            ssdp: true,
            broadcast: false,
        }
    };
    let mut poll = Poll::new().context("epoll")?;
    let (mut signal_rx, signal_tx) = UnixStream::pair().context("signal pipe")?;
    signal_rx.set_nonblocking(true).context("signal pipe")?;
    signal_tx.set_nonblocking(true).context("signal pipe")?;
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        let tx = signal_tx.try_clone().context("signal pipe")?;
        signal_hook::low_level::pipe::register(signal, tx)
            .with_context(|| format!("handler for signal {signal}"))?;
    }
    poll.registry()
        .register(
            &mut SourceFd(&signal_rx.as_raw_fd()),
            SIGNALS,
            Interest::READABLE,
        )
        .context("epoll")?;
    let mut forwarder = Forwarder::new(poll.registry(), 1, protocols)?;
    forwarder.set_receive_buffer(usize::try_from(args.receive_buffer).unwrap_or(usize::MAX));
    forwarder.set_mdns_budget(patchpanel_mcast::budget::MdnsBudget::per_second(
        args.mdns_budget,
    ));
    let pairs: Vec<Pair> = args
        .downlinks
        .iter()
        .map(|d| Pair {
            uplink: args.uplink.clone(),
            downlink: d.clone(),
            uplink_ipv4: None,
            inbound: !args.outbound_only,
            outbound: !args.inbound_only,
        })
        .collect();

    // Wait for the links.
    let deadline = Instant::now() + Duration::from_secs(args.wait_secs);
    let mut pending = pairs.clone();
    let mut events = Events::with_capacity(64);
    loop {
        let mut still = Vec::new();
        for pair in pending {
            match forwarder.start(pair.clone()) {
                Ok(()) => {}
                Err(ForwarderError::NoSuchLink(name)) => {
                    if still.is_empty() {
                        info!("waiting for {name}");
                    }
                    still.push(pair);
                }
                Err(e) => return Err(e).context(format!("{} - {}", pair.uplink, pair.downlink)),
            }
        }
        pending = still;
        if pending.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            bail!(
                "links did not appear within {} s: {:?}",
                args.wait_secs,
                pending.iter().map(|p| &p.downlink).collect::<Vec<_>>()
            );
        }
        poll.poll(&mut events, Some(Duration::from_millis(500)))
            .context("epoll_wait")?;
        if events.iter().any(|e| e.token() == SIGNALS) {
            info!("stopping before the links appeared");
            return Ok(());
        }
    }
    info!(
        "mcastd: {} for {} -> {:?}",
        [
            (protocols.mdns, "mDNS"),
            (protocols.ssdp, "SSDP"),
            (protocols.broadcast, "broadcast")
        ]
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, n)| *n)
        .collect::<Vec<_>>()
        .join(", "),
        args.uplink,
        args.downlinks
    );

    let stats_every = (args.stats_secs > 0).then(|| Duration::from_secs(args.stats_secs));
    let mut next_stats = stats_every.map(|d| Instant::now() + d);
    let mut next_refresh = Instant::now() + REFRESH;
    loop {
        let now = Instant::now();
        let wake = next_stats.map_or(next_refresh, |s| s.min(next_refresh));
        match poll.poll(&mut events, Some(wake.saturating_duration_since(now))) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).context("epoll_wait"),
        }
        for event in events.iter() {
            if event.token() == SIGNALS {
                let mut drain = [0u8; 16];
                while signal_rx.read(&mut drain).is_ok_and(|n| n > 0) {}
                info!("stopping: {}", forwarder.stats());
                return Ok(());
            }
            forwarder.ready(event.token());
        }
        let now = Instant::now();
        if now >= next_refresh {
            forwarder.refresh();
            if !forwarder.complete() {
                forwarder.reopen_missing();
            }
            next_refresh = now + REFRESH;
        }
        if let (Some(at), Some(every)) = (next_stats, stats_every) {
            if now >= at {
                info!("{}", forwarder.stats());
                next_stats = Some(now + every);
            }
        }
    }
}
