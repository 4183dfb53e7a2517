//! `ndproxyd UPLINK DOWNLINK`: the neighbour discovery proxy on its own,
//! for a machine without patchpanel's manager (inside a VM, between its
//! `eth0` and a container bridge). It runs as root and does itself what
//! the manager does for the helper:
//!
//! * `accept_ra=2` on the uplink (keep learning the uplink's prefix and
//!   default route with forwarding on), `all/forwarding=1`, and
//!   `proxy_ndp=1` on the uplink;
//! * waits for the downlink to appear (`--wait-secs`, 60 by default, then
//!   gives up so the init system can restart it), and follows it if it is
//!   deleted and created again;
//! * for every guest address the proxy learns on the downlink (the same
//!   engine and rule as the helper: inside the uplink's on-link prefixes,
//!   nobody else's, bounded and rate-limited), a /128 route to the
//!   downlink (so the host forwards to the guest instead of back out of the
//!   uplink's on-link /64) and a proxy neighbour entry on the uplink (so
//!   the kernel answers the uplink's solicitations for it too);
//!   at most [`MAX_CLAIMS_PER_DOWNLINK`] of them: a new one replaces the
//!   one reported least recently;
//! * on SIGTERM or SIGINT, removes the routes and proxy entries it added;
//!   all-multicast on both links is released with its socket.

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read};
use std::net::{IpAddr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use log::{error, info, warn, LevelFilter};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use patchpanel_ndp::proxy::MAX_CLAIMS_PER_DOWNLINK;
use patchpanel_ndp::{Forwarder, Notice, Tokens};
use patchpanel_rtnl::{sysctl, validate_ifname, LinkRef, Route, Rtnl};

const SIGNALS: Token = Token(0);
const TOKENS: Tokens = Tokens {
    packets: Token(1),
    links: Token(2),
    neighbors: Token(3),
};

/// Relay IPv6 neighbour discovery between an uplink and a downlink and
/// route the guests' addresses to the downlink.
#[derive(Debug, Parser)]
#[command(name = "ndproxyd", version)]
struct Args {
    /// Interface facing the router (its RAs are relayed to the downlink).
    uplink: String,
    /// Interface facing the guests (may appear later).
    downlink: String,
    /// How long to wait for the downlink to appear at start, in seconds.
    #[arg(long, default_value_t = 60)]
    wait_secs: u64,
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
        "ndproxyd",
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

/// What this process installed and must remove again.
struct Daemon {
    rtnl: Rtnl,
    forwarder: Forwarder,
    uplink_name: String,
    uplink: u32,
    downlink_name: String,
    downlink: Option<u32>,
    /// Guest addresses with a route and a proxy entry, and when each was
    /// last reported.
    guests: BTreeMap<Ipv6Addr, Instant>,
}

fn run(args: &Args) -> Result<()> {
    validate_ifname(&args.uplink).context("uplink")?;
    validate_ifname(&args.downlink).context("downlink")?;
    if args.uplink == args.downlink {
        bail!("uplink and downlink are both {}", args.uplink);
    }
    let rtnl = Rtnl::new().context("rtnetlink socket")?;
    let uplink = rtnl
        .ifindex(&args.uplink)
        .with_context(|| format!("uplink {}", args.uplink))?;
    // accept_ra first: once forwarding is on, accept_ra=1 ignores RAs.
    for (key, value) in [
        (format!("net/ipv6/conf/{}/accept_ra", args.uplink), "2"),
        ("net/ipv6/conf/all/forwarding".to_string(), "1"),
        (format!("net/ipv6/conf/{}/proxy_ndp", args.uplink), "1"),
    ] {
        sysctl::write(None, &key, value).with_context(|| format!("sysctl {key}={value}"))?;
    }
    let forwarder = Forwarder::open().context("opening the proxy's sockets")?;

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

    let mut daemon = Daemon {
        rtnl,
        forwarder,
        uplink_name: args.uplink.clone(),
        uplink,
        downlink_name: args.downlink.clone(),
        downlink: None,
        guests: BTreeMap::new(),
    };
    daemon
        .forwarder
        .register(poll.registry(), TOKENS)
        .context("epoll")?;
    let result = daemon.serve(
        &mut poll,
        &mut signal_rx,
        Duration::from_secs(args.wait_secs),
    );
    daemon.teardown();
    result
}

impl Daemon {
    fn serve(&mut self, poll: &mut Poll, signals: &mut UnixStream, wait: Duration) -> Result<()> {
        match self.forwarder.link_index(&self.downlink_name) {
            Some(index) => self.attach(index),
            None => info!(
                "waiting up to {}s for downlink {}",
                wait.as_secs(),
                self.downlink_name
            ),
        }
        // Only the first appearance has a deadline; once seen, a downlink
        // that goes away is waited for indefinitely.
        let deadline = Instant::now() + wait;
        let mut ever_attached = self.downlink.is_some();
        let mut events = Events::with_capacity(16);
        loop {
            let wait_for_downlink = (!ever_attached).then_some(deadline);
            let timeout = [wait_for_downlink, self.forwarder.next_deadline()]
                .into_iter()
                .flatten()
                .min()
                .map(|d| d.saturating_duration_since(Instant::now()));
            if let Err(e) = poll.poll(&mut events, timeout) {
                if e.kind() == ErrorKind::Interrupted {
                    continue;
                }
                return Err(e).context("epoll_wait");
            }
            for event in events.iter() {
                if event.token() == SIGNALS {
                    let mut buf = [0u8; 16];
                    while matches!(signals.read(&mut buf), Ok(n) if n > 0) {}
                    info!("signal received; stopping");
                    return Ok(());
                }
                let notices = self
                    .forwarder
                    .ready(event.token())
                    .context("proxy socket")?;
                for notice in notices {
                    self.on_notice(notice)?;
                }
            }
            let now = Instant::now();
            if self.forwarder.next_deadline().is_some_and(|d| now >= d) {
                for notice in self.forwarder.tick(now) {
                    self.on_notice(notice)?;
                }
            }
            ever_attached |= self.downlink.is_some();
            if !ever_attached && Instant::now() >= deadline {
                bail!(
                    "downlink {} did not appear within {}s",
                    self.downlink_name,
                    wait.as_secs()
                );
            }
        }
    }

    fn attach(&mut self, index: u32) {
        match self.forwarder.start(self.uplink, index) {
            Ok(_) => {
                self.downlink = Some(index);
                info!(
                    "relaying between {} and {}",
                    self.uplink_name, self.downlink_name
                );
            }
            Err(e) => warn!("cannot proxy to {}: {e}", self.downlink_name),
        }
    }

    fn detach(&mut self) {
        let Some(index) = self.downlink.take() else {
            return;
        };
        self.forwarder.stop(self.uplink, index);
        // The routes left with the link; the proxy entries are on the uplink.
        for addr in std::mem::take(&mut self.guests).into_keys() {
            if let Err(e) = self
                .rtnl
                .delete_proxy_neighbor(IpAddr::V6(addr), self.uplink)
            {
                warn!("{e}");
            }
        }
        info!("downlink {} went away; waiting for it", self.downlink_name);
    }

    fn on_notice(&mut self, notice: Notice) -> Result<()> {
        match notice {
            Notice::Guest(guest) if Some(guest.ifindex) == self.downlink => {
                self.add_guest(guest.ifindex, guest.addr)
            }
            Notice::Guest(_) => {}
            Notice::LinkAdded { ifindex, name } => {
                if Some(ifindex) == self.downlink && name != self.downlink_name {
                    self.detach();
                } else if self.downlink.is_none() && name == self.downlink_name {
                    self.attach(ifindex);
                }
            }
            Notice::LinkRemoved { ifindex, .. } => {
                if ifindex == self.uplink {
                    bail!("uplink {} went away", self.uplink_name);
                }
                if Some(ifindex) == self.downlink {
                    self.detach();
                }
            }
        }
        Ok(())
    }

    fn add_guest(&mut self, downlink: u32, addr: Ipv6Addr) {
        let known = self.guests.contains_key(&addr);
        if !known && self.guests.len() >= MAX_CLAIMS_PER_DOWNLINK {
            let oldest = self.guests.iter().min_by_key(|(_, t)| **t).map(|(a, _)| *a);
            if let Some(old) = oldest {
                self.remove_guest(downlink, old);
            }
        }
        let mut route = Route::new(IpAddr::V6(addr), 128);
        route.oif = Some(LinkRef::Index(downlink));
        if let Err(e) = self.rtnl.add_route(&route) {
            warn!("guest {addr}: {e}");
            return;
        }
        if let Err(e) = self.rtnl.add_proxy_neighbor(IpAddr::V6(addr), self.uplink) {
            warn!("guest {addr}: {e}");
        }
        if self.guests.insert(addr, Instant::now()).is_none() {
            info!(
                "guest {addr} on {}: /128 route and proxy entry on {} installed",
                self.downlink_name, self.uplink_name
            );
        }
    }

    /// Removes one guest's route and proxy entry (to make room).
    fn remove_guest(&mut self, downlink: u32, addr: Ipv6Addr) {
        self.guests.remove(&addr);
        let mut route = Route::new(IpAddr::V6(addr), 128);
        route.oif = Some(LinkRef::Index(downlink));
        if let Err(e) = self.rtnl.delete_route(&route) {
            warn!("guest {addr}: {e}");
        }
        if let Err(e) = self
            .rtnl
            .delete_proxy_neighbor(IpAddr::V6(addr), self.uplink)
        {
            warn!("guest {addr}: {e}");
        }
        info!(
            "guest {addr} on {}: removed to make room",
            self.downlink_name
        );
    }

    /// Removes what this process installed; keeps going after an error and
    /// logs each.
    fn teardown(&mut self) {
        let downlink = self.downlink;
        for addr in std::mem::take(&mut self.guests).into_keys() {
            if let Some(index) = downlink {
                let mut route = Route::new(IpAddr::V6(addr), 128);
                route.oif = Some(LinkRef::Index(index));
                if let Err(e) = self.rtnl.delete_route(&route) {
                    warn!("{e}");
                }
            }
            if let Err(e) = self
                .rtnl
                .delete_proxy_neighbor(IpAddr::V6(addr), self.uplink)
            {
                warn!("{e}");
            }
        }
        self.forwarder.stop_all();
    }
}
