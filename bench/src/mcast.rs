//! mDNS through the multicast forwarder, next to avahi-daemon's reflector
//! and to the kernel's direct path, all three built at once and measured in
//! the same run:
//!
//! ```text
//!  LAN (upstream)               middle                        guest
//!  up0 192.168.50.1/24 === mid-up 192.168.50.2  mid-dn 10.77.0.1/24 === g0 10.77.0.2/24
//!                                [mcastd | avahi-daemon]
//!
//!  direct: up0 192.168.50.1/24 ============================= g0 192.168.50.3/24
//! ```
//!
//! * [`Setup::Mcastd`]: `mcastd --mdns mid-up mid-dn` in the middle.
//! * [`Setup::Avahi`]: `avahi-daemon` in the middle, reflector on, IPv4
//!   only, `allow-interfaces=mid-up,mid-dn`, no D-Bus, nothing published,
//!   its own config file, no chroot and no privilege drop, in a private
//!   mount namespace with a tmpfs on `/run` (its pid file and socket go
//!   there, not into the host's `/run/avahi-daemon`).
//! * [`Setup::Direct`]: the two peers on one veth, no forwarder: the
//!   kernel's own cost, the floor.
//!
//! The middle has no route between the two links: whatever the far peer
//! sees crossed the forwarder.
//!
//! Two measurements, both with the peers of [`crate::mdns_peer`]:
//!
//! * *round trip*: the LAN peer asks `q<n>.local` A (a fresh name every
//!   time, so that no cache and no duplicate suppression on either
//!   reflector can answer it), a responder thread on the guest link
//!   answers with an A record, and the LAN peer times from its send to
//!   the answer. The setups take turns probe by probe (the order rotating
//!   every round), so a slow moment of the machine hits all three.
//! * *rate*: one peer sends responses with one fresh A record each
//!   (`h<n>.local`) at an offered rate for a while, the other counts the
//!   distinct records that arrive (a reflector may pack several into one
//!   packet, so records are counted, not datagrams), for each direction
//!   (guest -> LAN: announcements of a guest's services, the path where
//!   mcastd rewrites A records; LAN -> guest) and offered rate. Unique
//!   names matter here too: avahi does not send again a record it sent on
//!   a link in the last 500 ms (its response scheduler's history, with a
//!   TTL at least half as long), and answers a reflected query from its
//!   cache of the other link as well, so repeated packets would measure
//!   its suppression and its cache, not its forwarding. (mcastd drops only
//!   datagrams identical to one it sent on the link they arrive on, its
//!   loop guard, which no peer here does.)

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use patchpanel_tests::{bin_path, poll_until, Netns, Spawned};
use tempfile::TempDir;

use crate::adb::process_cpu;
use crate::interrupt;
use crate::mdns_peer::{self, name_number, numbered_name, MdnsSocket};
use crate::traffic_counters::ip_batch;

/// Where the Debian package installs avahi-daemon.
pub const AVAHI_DAEMON: &str = "/usr/sbin/avahi-daemon";
/// How long a setup may take to relay its first round trip.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long one round-trip probe waits for its answer.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// How long the counter keeps counting after the sender stopped.
pub const RATE_GRACE: Duration = Duration::from_millis(500);
/// The most round-trip probes per setup.
pub const MAX_PROBES: usize = 100_000;

/// Who relays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setup {
    Mcastd,
    Avahi,
    Direct,
}

impl Setup {
    pub const ALL: [Setup; 3] = [Setup::Mcastd, Setup::Avahi, Setup::Direct];

    pub fn name(self) -> &'static str {
        match self {
            Setup::Mcastd => "mcastd",
            Setup::Avahi => "avahi-daemon reflector",
            Setup::Direct => "direct (same link)",
        }
    }

    /// The guest peer's address (what it puts in its A records).
    fn guest_address(self) -> Ipv4Addr {
        match self {
            Setup::Direct => Ipv4Addr::new(192, 168, 50, 3),
            _ => Ipv4Addr::new(10, 77, 0, 2),
        }
    }
}

/// Which way the rate series sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Guest -> LAN: a guest announcing itself.
    Outbound,
    /// LAN -> guest.
    Inbound,
}

impl Direction {
    pub const ALL: [Direction; 2] = [Direction::Outbound, Direction::Inbound];

    pub fn name(self) -> &'static str {
        match self {
            Direction::Outbound => "guest->LAN",
            Direction::Inbound => "LAN->guest",
        }
    }
}

/// An offered rate of the rate series.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offered {
    /// This many responses per second, paced.
    PerSecond(u32),
    /// As fast as the sender can.
    Max,
}

impl Offered {
    pub fn label(self) -> String {
        match self {
            Offered::PerSecond(n) => format!("{n}/s"),
            Offered::Max => "max".to_string(),
        }
    }
}

/// Parses `1000,10000,max`.
pub fn parse_offered(list: &str) -> Result<Vec<Offered>> {
    let mut out = Vec::new();
    for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let offered = if part == "max" {
            Offered::Max
        } else {
            let n: u32 = part
                .parse()
                .with_context(|| format!("{part:?} is not a rate (a number or `max`)"))?;
            if !(1..=10_000_000).contains(&n) {
                bail!("an offered rate must be 1 to 10000000 per second, not {n}");
            }
            Offered::PerSecond(n)
        };
        out.push(offered);
    }
    if out.is_empty() {
        bail!("no offered rate given");
    }
    Ok(out)
}

/// What to measure.
#[derive(Debug, Clone)]
pub struct Params {
    pub setups: Vec<Setup>,
    /// Measured round trips per setup.
    pub probes: usize,
    /// Unmeasured round trips per setup first.
    pub warmup: usize,
    /// The offered rates of the rate series, each for `rate_time`.
    pub offered: Vec<Offered>,
    pub rate_time: Duration,
    pub directions: Vec<Direction>,
    /// Print each forwarder's log to stderr at the end.
    pub show_logs: bool,
}

/// One rate series.
#[derive(Debug, Clone)]
pub struct RateSample {
    pub direction: Direction,
    pub offered: Offered,
    /// Responses sent (`sendto` succeeded).
    pub sent: u64,
    /// `sendto` failures (ENOBUFS and the like), not counted as sent.
    pub send_errors: u64,
    /// Distinct records that arrived on the far side.
    pub received: u64,
    /// Records that arrived more than once.
    pub duplicates: u64,
    /// Datagrams that carried them.
    pub datagrams: u64,
    /// From the first send to the last send.
    pub send_time: Duration,
    /// The forwarder's CPU time during the series (`None` for direct).
    pub cpu: Option<Duration>,
    /// The sending thread's CPU time (its `sendto`s, and the kernel's
    /// delivery of each datagram to the next hop, which runs in its
    /// context).
    pub sender_cpu: Duration,
    /// The counting thread's CPU time, until [`RATE_GRACE`] after the
    /// last send.
    pub counter_cpu: Duration,
}

impl RateSample {
    /// Sent per second.
    pub fn sent_rate(&self) -> f64 {
        per_second(self.sent, self.send_time)
    }

    /// Distinct records received per second of sending.
    pub fn received_rate(&self) -> f64 {
        per_second(self.received, self.send_time)
    }

    /// The share of sent records that never arrived, in percent.
    pub fn loss_percent(&self) -> f64 {
        if self.sent == 0 {
            return 0.0;
        }
        100.0 * self.sent.saturating_sub(self.received) as f64 / self.sent as f64
    }
}

fn per_second(n: u64, time: Duration) -> f64 {
    if time.is_zero() {
        0.0
    } else {
        n as f64 / time.as_secs_f64()
    }
}

/// One setup's numbers.
#[derive(Debug, Default)]
pub struct SetupSamples {
    pub round_trip: Vec<Duration>,
    /// Each measured round, in order: the round trip, or `None` when lost.
    /// The setups took turns round by round, so round `i` of two setups
    /// was measured at nearly the same moment.
    pub rounds: Vec<Option<Duration>>,
    /// Round trips without an answer within [`PROBE_TIMEOUT`].
    pub lost: usize,
    pub rates: Vec<RateSample>,
}

impl SetupSamples {
    pub fn rate(&self, direction: Direction, offered: Offered) -> Option<&RateSample> {
        self.rates
            .iter()
            .find(|r| r.direction == direction && r.offered == offered)
    }
}

/// The result per setup: its samples or why it failed.
pub type Results = Vec<(Setup, Result<SetupSamples>)>;

/// Builds every setup of `params`, measures them, removes them.
pub fn measure(params: &Params) -> Result<Results> {
    if params.probes == 0 || params.probes > MAX_PROBES {
        bail!("probes must be 1 to {MAX_PROBES}");
    }
    let mut worlds: Vec<(Setup, Result<World>)> = Vec::new();
    for &setup in &params.setups {
        interrupt::check()?;
        eprintln!("starting {}...", setup.name());
        let world = World::new(setup).and_then(|mut w| {
            w.start()?;
            w.warm_up()?;
            Ok(w)
        });
        if let Err(e) = &world {
            eprintln!("bench-mcast: {} failed to start: {e:#}", setup.name());
        }
        worlds.push((setup, world));
    }
    let mut samples: Vec<(Setup, Result<SetupSamples>)> = worlds
        .iter()
        .map(|(setup, w)| {
            let s = match w {
                Ok(_) => Ok(SetupSamples::default()),
                Err(e) => Err(anyhow::anyhow!("{e:#}")),
            };
            (*setup, s)
        })
        .collect();
    let live: Vec<(usize, &World)> = worlds
        .iter()
        .enumerate()
        .filter_map(|(i, (_, w))| w.as_ref().ok().map(|w| (i, w)))
        .collect();

    eprintln!(
        "round trips: {} warm-up + {} measured per setup, interleaved...",
        params.warmup, params.probes
    );
    let outcome = round_trips(&live, params)?;
    for (&(i, _), trips) in live.iter().zip(outcome) {
        if let Ok(s) = samples[i].1.as_mut() {
            s.round_trip = trips.samples;
            s.rounds = trips.rounds;
            s.lost = trips.lost;
        }
    }

    for (k, &offered) in params.offered.iter().enumerate() {
        for &direction in &params.directions {
            // Rotate the order, so that no setup always goes first.
            for j in 0..live.len() {
                interrupt::check()?;
                let (i, world) = live[(j + k) % live.len()];
                eprintln!(
                    "rate: {} {} offered {} for {:.1} s...",
                    world.setup.name(),
                    direction.name(),
                    offered.label(),
                    params.rate_time.as_secs_f64()
                );
                match world.rate(direction, offered, params.rate_time) {
                    Ok(rate) => {
                        eprintln!(
                            "  sent {} ({} send errors), {} records arrived in {} datagrams, {} duplicates; \
                             CPU over {:.2} s of sending: sender {:.2} s, counter {:.2} s, forwarder {}",
                            rate.sent,
                            rate.send_errors,
                            rate.received,
                            rate.datagrams,
                            rate.duplicates,
                            rate.send_time.as_secs_f64(),
                            rate.sender_cpu.as_secs_f64(),
                            rate.counter_cpu.as_secs_f64(),
                            rate.cpu
                                .map_or("-".to_string(), |c| format!("{:.2} s", c.as_secs_f64()))
                        );
                        if let Ok(s) = samples[i].1.as_mut() {
                            s.rates.push(rate);
                        }
                    }
                    Err(e) => samples[i].1 = Err(e),
                }
                // Let queues empty before the next series.
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }

    for (i, world) in &live {
        if let Err(e) = world.check_alive() {
            samples[*i].1 = Err(e);
        }
    }
    if params.show_logs {
        for (_, world) in worlds.iter_mut() {
            let Ok(world) = world else { continue };
            let Some(forwarder) = world.forwarder.as_mut() else {
                continue;
            };
            // Stopped first, so that the log ends with what the forwarder
            // says at exit (mcastd: its counters, drops by reason).
            let _ = forwarder.terminate();
            eprintln!("{}:{}", world.setup.name(), world.forwarder_log());
        }
    }
    Ok(samples)
}

/// One world's round trips.
#[derive(Debug, Default)]
struct Trips {
    samples: Vec<Duration>,
    rounds: Vec<Option<Duration>>,
    lost: usize,
}

/// Interleaved round trips, in the order of `live`.
fn round_trips(live: &[(usize, &World)], params: &Params) -> Result<Vec<Trips>> {
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let responders: Vec<_> = live
            .iter()
            .map(|(_, w)| scope.spawn(|| respond(&w.guest_socket, w.setup.guest_address(), &stop)))
            .collect();
        let mut out: Vec<Trips> = live.iter().map(|_| Trips::default()).collect();
        let result = (|| -> Result<()> {
            for n in 0..params.warmup + params.probes {
                // The order rotates every round, so that no setup always
                // follows the same one.
                for j in 0..live.len() {
                    let k = (j + n) % live.len();
                    let world = live[k].1;
                    interrupt::check()?;
                    let got = round_trip(&world.lan_socket, &world.names, PROBE_TIMEOUT)?;
                    if n < params.warmup {
                        continue;
                    }
                    out[k].rounds.push(got);
                    match got {
                        Some(rtt) => out[k].samples.push(rtt),
                        None => out[k].lost += 1,
                    }
                }
            }
            Ok(())
        })();
        stop.store(true, Ordering::Relaxed);
        for responder in responders {
            match responder.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(e),
                Err(_) => bail!("a responder thread panicked"),
            }
        }
        result.map(|()| out)
    })
}

/// The guest's responder: answers every question for a `q<n>.local` name
/// with an A record for `address`, until `stop`.
fn respond(socket: &MdnsSocket, address: Ipv4Addr, stop: &AtomicBool) -> Result<()> {
    let mut buf = vec![0u8; 9000];
    while !stop.load(Ordering::Relaxed) {
        let Some((len, _)) = socket.recv(&mut buf, Duration::from_millis(20))? else {
            continue;
        };
        let Some(message) = mdns_peer::parse(&buf[..len]) else {
            continue;
        };
        if message.is_response {
            continue;
        }
        for name in &message.questions {
            if name_number("q", name).is_some() {
                // A full socket buffer only loses this answer; the probe
                // counts it lost.
                let _ = socket.send(&mdns_peer::response(name, address));
            }
        }
    }
    Ok(())
}

/// One query for a fresh name from the LAN peer, timed until its answer;
/// `None` when none came within `timeout`.
fn round_trip(
    socket: &MdnsSocket,
    names: &AtomicU64,
    timeout: Duration,
) -> Result<Option<Duration>> {
    socket.drain()?;
    let name = numbered_name("q", names.fetch_add(1, Ordering::Relaxed));
    let query = mdns_peer::query(&name);
    let mut buf = vec![0u8; 9000];
    let started = Instant::now();
    socket
        .send(&query)
        .with_context(|| format!("cannot send a query on {}", socket.link()))?;
    let deadline = started + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(None);
        }
        let Some((len, _)) = socket.recv(&mut buf, left)? else {
            return Ok(None);
        };
        let elapsed = started.elapsed();
        if let Some(message) = mdns_peer::parse(&buf[..len]) {
            if message.a_records.iter().any(|(n, _)| *n == name) {
                return Ok(Some(elapsed));
            }
        }
    }
}

/// One topology and its forwarder. Field order is drop order: the
/// sockets and the forwarder go before the namespaces, the directory
/// (config, log) last.
struct World {
    setup: Setup,
    /// Numbers every name sent in this world, so that no name repeats
    /// across probes and series.
    names: AtomicU64,
    lan_socket: MdnsSocket,
    guest_socket: MdnsSocket,
    forwarder: Option<Spawned>,
    // Held for their lifetime only: dropping them deletes the links.
    _lan: Netns,
    middle: Option<Netns>,
    _guest: Netns,
    dir: TempDir,
}

impl World {
    fn new(setup: Setup) -> Result<World> {
        let dir = tempfile::Builder::new()
            .prefix("pp-bench-mcast-")
            .tempdir()
            .context("cannot create a directory")?;
        let lan = Netns::new()?;
        let guest = Netns::new()?;
        let middle = match setup {
            Setup::Direct => None,
            _ => Some(Netns::new()?),
        };
        for ns in std::iter::once(&lan)
            .chain(middle.as_ref())
            .chain(std::iter::once(&guest))
        {
            // No IPv6 at all: nothing is measured over it, and the links
            // carry no traffic of their own (no DAD, no router
            // solicitations, no IPv6 mDNS).
            ns.exec_ok(&["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"])?;
            ns.exec_ok(&["sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1"])?;
        }
        match &middle {
            Some(mid) => {
                ip_batch(
                    &lan,
                    &format!(
                        "link add up0 type veth peer name mid-up netns {}\n\
                         addr add 192.168.50.1/24 brd + dev up0\nlink set up0 up\n",
                        mid.name()
                    ),
                )?;
                ip_batch(
                    mid,
                    &format!(
                        "link add mid-dn type veth peer name g0 netns {}\n\
                         addr add 192.168.50.2/24 brd + dev mid-up\n\
                         addr add 10.77.0.1/24 brd + dev mid-dn\n\
                         link set mid-up up\nlink set mid-dn up\n",
                        guest.name()
                    ),
                )?;
                ip_batch(
                    &guest,
                    &format!(
                        "addr add {}/24 brd + dev g0\nlink set g0 up\n",
                        setup.guest_address()
                    ),
                )?;
            }
            None => {
                ip_batch(
                    &lan,
                    &format!(
                        "link add up0 type veth peer name g0 netns {}\n\
                         addr add 192.168.50.1/24 brd + dev up0\nlink set up0 up\n",
                        guest.name()
                    ),
                )?;
                ip_batch(
                    &guest,
                    &format!(
                        "addr add {}/24 brd + dev g0\nlink set g0 up\n",
                        setup.guest_address()
                    ),
                )?;
            }
        }
        let lan_socket = MdnsSocket::open(&lan.path(), "up0")?;
        let guest_socket = MdnsSocket::open(&guest.path(), "g0")?;
        Ok(World {
            setup,
            names: AtomicU64::new(0),
            lan_socket,
            guest_socket,
            forwarder: None,
            _lan: lan,
            middle,
            _guest: guest,
            dir,
        })
    }

    /// Starts the forwarder in the middle.
    fn start(&mut self) -> Result<()> {
        let Some(mid) = &self.middle else {
            return Ok(());
        };
        match self.setup {
            Setup::Direct => {}
            Setup::Mcastd => {
                let mut argv = vec![
                    bin_path("mcastd")?.display().to_string(),
                    "--mdns".into(),
                    "--log-to-stderr".into(),
                    "--stats-secs".into(),
                    "0".into(),
                ];
                argv.extend(mcastd_extra_args());
                argv.extend(["mid-up".into(), "mid-dn".into()]);
                let log = self.dir.path().join("mcastd.log");
                let mut d = Spawned::start("mcastd", mid, &argv, log)?;
                let ready = poll_until(Duration::from_secs(10), || {
                    d.log().contains("mcastd: ").then_some(())
                });
                if ready.is_none() {
                    bail!("mcastd did not start: {:?}\n{}", d.try_exit(), d.log());
                }
                self.forwarder = Some(d);
            }
            Setup::Avahi => {
                if !PathBuf::from(AVAHI_DAEMON).is_file() {
                    bail!(
                        "{AVAHI_DAEMON} does not exist (install the Debian package `avahi-daemon`)"
                    );
                }
                let conf = self.dir.path().join("avahi-daemon.conf");
                std::fs::write(&conf, avahi_config("mid-up", "mid-dn"))
                    .with_context(|| format!("cannot write {}", conf.display()))?;
                // A private mount namespace with its own /run: avahi's pid
                // file and socket (/run/avahi-daemon/) stay out of the
                // host's, and a second avahi elsewhere is no obstacle.
                let script = format!(
                    "mount -t tmpfs -o mode=0755 pp-bench-avahi /run && exec {AVAHI_DAEMON} \
                     --file={} --no-drop-root --no-chroot --no-rlimits",
                    conf.display()
                );
                let argv = vec![
                    "unshare".into(),
                    "--mount".into(),
                    "--propagation".into(),
                    "private".into(),
                    "--".into(),
                    "sh".into(),
                    "-c".into(),
                    script,
                ];
                let log = self.dir.path().join("avahi-daemon.log");
                let mut d = Spawned::start("avahi-daemon", mid, &argv, log)?;
                let ready = poll_until(START_TIMEOUT, || {
                    let log = d.log();
                    (log.contains("Server startup complete")
                        || d.try_exit().ok().flatten().is_some())
                    .then_some(())
                });
                if ready.is_none() || d.try_exit()?.is_some() {
                    bail!(
                        "avahi-daemon did not start: {:?}\n{}",
                        d.try_exit(),
                        d.log()
                    );
                }
                self.forwarder = Some(d);
            }
        }
        Ok(())
    }

    /// Round trips until one is answered: the forwarder has joined the
    /// groups on both links.
    fn warm_up(&mut self) -> Result<()> {
        let stop = AtomicBool::new(false);
        let started = Instant::now();
        std::thread::scope(|scope| {
            let responder =
                scope.spawn(|| respond(&self.guest_socket, self.setup.guest_address(), &stop));
            let result = (|| -> Result<()> {
                loop {
                    interrupt::check()?;
                    if round_trip(&self.lan_socket, &self.names, Duration::from_millis(200))?
                        .is_some()
                    {
                        return Ok(());
                    }
                    self.check_alive()?;
                    if started.elapsed() > START_TIMEOUT {
                        bail!(
                            "no query was answered through {} within {START_TIMEOUT:?}{}",
                            self.setup.name(),
                            self.forwarder_log()
                        );
                    }
                }
            })();
            stop.store(true, Ordering::Relaxed);
            match responder.join() {
                Ok(r) => r?,
                Err(_) => bail!("the responder thread panicked"),
            }
            result
        })
    }

    /// One rate series.
    fn rate(&self, direction: Direction, offered: Offered, time: Duration) -> Result<RateSample> {
        let (sender, counter) = match direction {
            Direction::Outbound => (&self.guest_socket, &self.lan_socket),
            Direction::Inbound => (&self.lan_socket, &self.guest_socket),
        };
        let address = match direction {
            Direction::Outbound => self.setup.guest_address(),
            Direction::Inbound => Ipv4Addr::new(192, 168, 50, 1),
        };
        sender.drain()?;
        counter.drain()?;
        let cpu_before = self.forwarder_cpu()?;
        let first = self.names.load(Ordering::Relaxed);
        let sending = AtomicBool::new(true);
        let (send, sender_cpu, count) = std::thread::scope(|scope| {
            let count = scope.spawn(|| {
                let before = thread_cpu();
                let count = count_records(counter, &sending);
                (count, thread_cpu().saturating_sub(before))
            });
            let before = thread_cpu();
            let send = blast(sender, &self.names, address, offered, time);
            let sender_cpu = thread_cpu().saturating_sub(before);
            sending.store(false, Ordering::Relaxed);
            let count = count.join().unwrap_or_else(|_| {
                (
                    Err(anyhow::anyhow!("the counter thread panicked")),
                    Duration::ZERO,
                )
            });
            (send, sender_cpu, count)
        });
        let (count, counter_cpu) = count;
        let (sent, send_errors, send_time) = send?;
        let (seen, duplicates, datagrams) = count?;
        let last = first + sent + send_errors;
        let received = seen.iter().filter(|n| (first..last).contains(n)).count() as u64;
        let cpu = match (cpu_before, self.forwarder_cpu()?) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a)),
            _ => None,
        };
        self.check_alive()?;
        Ok(RateSample {
            direction,
            offered,
            sent,
            send_errors,
            received,
            duplicates,
            datagrams,
            send_time,
            cpu,
            sender_cpu,
            counter_cpu,
        })
    }

    fn forwarder_cpu(&self) -> Result<Option<Duration>> {
        self.forwarder
            .as_ref()
            .map(|f| process_cpu(f.pid(), false))
            .transpose()
    }

    /// Fails when the forwarder has exited.
    fn check_alive(&self) -> Result<()> {
        if let Some(f) = &self.forwarder {
            // Spawned::try_exit needs &mut; /proc says enough.
            let stat =
                std::fs::read_to_string(format!("/proc/{}/stat", f.pid())).unwrap_or_default();
            let state = stat
                .rfind(')')
                .and_then(|i| stat[i + 1..].split_whitespace().next());
            if matches!(state, None | Some("Z") | Some("X")) {
                bail!("{} exited{}", self.setup.name(), self.forwarder_log());
            }
        }
        Ok(())
    }

    fn forwarder_log(&self) -> String {
        self.forwarder.as_ref().map_or_else(String::new, |f| {
            format!("\n----- log -----\n{}----- end -----", f.log())
        })
    }
}

/// Where extra mcastd flags may be given, whitespace-separated (for
/// experiments: `--mdns-budget 100000000`, `--receive-buffer 106496`).
pub const MCASTD_ARGS_ENV: &str = "PATCHPANEL_BENCH_MCASTD_ARGS";

/// The extra mcastd flags of [`MCASTD_ARGS_ENV`].
fn mcastd_extra_args() -> Vec<String> {
    std::env::var(MCASTD_ARGS_ENV)
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// avahi-daemon's configuration: the reflector between `a` and `b`, IPv4
/// only, nothing of its own on the wire (no publishing, no wide-area).
pub fn avahi_config(a: &str, b: &str) -> String {
    format!(
        "[server]\n\
         use-ipv4=yes\n\
         use-ipv6=no\n\
         allow-interfaces={a},{b}\n\
         enable-dbus=no\n\
         \n\
         [wide-area]\n\
         enable-wide-area=no\n\
         \n\
         [publish]\n\
         disable-publishing=yes\n\
         \n\
         [reflector]\n\
         enable-reflector=yes\n\
         reflect-ipv=no\n"
    )
}

/// The calling thread's CPU time.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a live timespec; CLOCK_THREAD_CPUTIME_ID always exists.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } != 0 {
        return Duration::ZERO;
    }
    Duration::new(
        ts.tv_sec.max(0) as u64,
        ts.tv_nsec.clamp(0, 999_999_999) as u32,
    )
}

/// Sends responses with fresh `h<n>.local` A `address` records at
/// `offered` for `time`: (sent, send errors, time from first to last).
fn blast(
    socket: &MdnsSocket,
    names: &AtomicU64,
    address: Ipv4Addr,
    offered: Offered,
    time: Duration,
) -> Result<(u64, u64, Duration)> {
    let (mut sent, mut errors) = (0u64, 0u64);
    let started = Instant::now();
    let mut last = started;
    loop {
        let now = Instant::now();
        let elapsed = now - started;
        if elapsed >= time {
            break;
        }
        let due = match offered {
            Offered::Max => sent + errors + 64,
            Offered::PerSecond(r) => (elapsed.as_secs_f64() * f64::from(r)) as u64 + 1,
        };
        if sent + errors >= due {
            std::thread::sleep(Duration::from_micros(50));
            continue;
        }
        while sent + errors < due {
            let n = names.fetch_add(1, Ordering::Relaxed);
            let packet = mdns_peer::response(&numbered_name("h", n), address);
            match socket.send(&packet) {
                Ok(()) => sent += 1,
                Err(_) => errors += 1,
            }
        }
        last = Instant::now();
        if errors > 0 && sent == 0 && elapsed > Duration::from_millis(500) {
            bail!("every send on {} fails", socket.link());
        }
    }
    Ok((sent, errors, last - started))
}

/// Counts the distinct `h<n>.local` records arriving on `socket` until
/// `sending` is false and then [`RATE_GRACE`] has passed: (the numbers
/// seen, duplicates, datagrams).
fn count_records(socket: &MdnsSocket, sending: &AtomicBool) -> Result<(HashSet<u64>, u64, u64)> {
    let mut seen = HashSet::new();
    let (mut duplicates, mut datagrams) = (0u64, 0u64);
    let mut buf = vec![0u8; 9000];
    let mut stopped_at: Option<Instant> = None;
    loop {
        if stopped_at.is_none() && !sending.load(Ordering::Relaxed) {
            stopped_at = Some(Instant::now());
        }
        if stopped_at.is_some_and(|at| at.elapsed() >= RATE_GRACE) {
            break;
        }
        let Some((len, _)) = socket.recv(&mut buf, Duration::from_millis(50))? else {
            continue;
        };
        let Some(message) = mdns_peer::parse(&buf[..len]) else {
            continue;
        };
        let mut any = false;
        for (name, _) in &message.a_records {
            if let Some(n) = name_number("h", name) {
                any = true;
                if !seen.insert(n) {
                    duplicates += 1;
                }
            }
        }
        if any {
            datagrams += 1;
        }
    }
    Ok((seen, duplicates, datagrams))
}

/// The median of the round-by-round differences `a[i] - b[i]` in
/// microseconds (rounds lost on either side skipped): what `a` adds over
/// `b`, with the machine's slow moments, which hit both in the same round,
/// taken out. `None` without a common round.
pub fn paired_added_micros(a: &[Option<Duration>], b: &[Option<Duration>]) -> Option<f64> {
    let mut diffs: Vec<f64> = a
        .iter()
        .zip(b)
        .filter_map(|(x, y)| Some(x.as_ref()?.as_secs_f64() - y.as_ref()?.as_secs_f64()))
        .map(|d| d * 1e6)
        .collect();
    if diffs.is_empty() {
        return None;
    }
    diffs.sort_by(f64::total_cmp);
    // Nearest rank, as in crate::stats: the lower middle of an even count.
    Some(diffs[(diffs.len() - 1) / 2])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offered_rates_parse_numbers_and_max() {
        assert_eq!(
            parse_offered("1000, 20000,max").expect("parses"),
            [
                Offered::PerSecond(1000),
                Offered::PerSecond(20000),
                Offered::Max
            ]
        );
    }

    #[test]
    fn offered_rates_reject_zero_words_and_nothing() {
        assert!(parse_offered("0").is_err());
        assert!(parse_offered("fast").is_err());
        assert!(parse_offered(" , ").is_err());
    }

    #[test]
    fn loss_is_the_share_of_sent_records_that_never_arrived() {
        let sample = RateSample {
            direction: Direction::Outbound,
            offered: Offered::Max,
            sent: 1000,
            send_errors: 0,
            received: 750,
            duplicates: 0,
            datagrams: 700,
            send_time: Duration::from_millis(500),
            cpu: None,
            sender_cpu: Duration::ZERO,
            counter_cpu: Duration::ZERO,
        };

        assert_eq!(sample.loss_percent(), 25.0);
        assert_eq!(sample.sent_rate(), 2000.0);
        assert_eq!(sample.received_rate(), 1500.0);
    }

    #[test]
    fn avahi_is_configured_as_an_ipv4_reflector_on_the_two_links_only() {
        let conf = avahi_config("mid-up", "mid-dn");

        assert!(conf.contains("enable-reflector=yes\n"), "{conf}");
        assert!(conf.contains("allow-interfaces=mid-up,mid-dn\n"), "{conf}");
        assert!(conf.contains("use-ipv6=no\n"), "{conf}");
        assert!(conf.contains("enable-dbus=no\n"), "{conf}");
        assert!(conf.contains("disable-publishing=yes\n"), "{conf}");
    }

    #[test]
    fn paired_added_latency_is_the_median_difference_of_common_rounds() {
        let us = |v: u64| Some(Duration::from_micros(v));
        let forwarder = [us(50), us(900), None, us(60), us(55)];
        let direct = [us(20), us(870), us(25), None, us(30)];

        let added = paired_added_micros(&forwarder, &direct).expect("common rounds");

        // Differences 30, 30, 25: the median is 30.
        assert!((added - 30.0).abs() < 1e-6, "{added}");
        assert_eq!(paired_added_micros(&[None], &direct[..1]), None);
    }
}
