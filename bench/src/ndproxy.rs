//! The ND proxy's NS->NA round trip and answer rate, for three ways of
//! answering an upstream host's Neighbor Solicitations for a guest's
//! address behind a middle host, each in fresh namespaces:
//!
//! ```text
//!  upstream U                 middle M                        guest G
//!  up0 2001:db8:1::1/64 === mid-up  [proxy]  mid-dn === g0 2001:db8:1::100/128
//!                                                          2001:db8:1::1:<i>/128
//! ```
//!
//! * [`Setup::Ndproxyd`]: `ndproxyd mid-up mid-dn` in M relays the NS to
//!   the guest and the guest's NA back. ndproxyd also installs a kernel
//!   proxy entry on `mid-up` for each guest it learns (with `proxy_ndp=1`),
//!   so that M's kernel answers too, after its random `proxy_delay` (up to
//!   0.8 s by default): once the warm-up has taught ndproxyd the first
//!   guest address, the benchmark sets `mid-up`'s `proxy_ndp` back to 0, so
//!   that every answer measured is ndproxyd's relay (each NA must come from
//!   the guest's own address, which a kernel proxy answer does not).
//! * [`Setup::Ndppd`]: `ndppd` in M with `proxy mid-up { rule
//!   2001:db8:1::/64 { iface mid-dn } }` and the guest addresses routed
//!   to `mid-dn` (one /128 each, as ndproxyd installs them):
//!   ndppd asks the guest with its own NS, then answers itself, and keeps
//!   the answer in its session cache (`ttl`, 30 s by default) so that
//!   repeated NS for the same target are answered from the cache.
//! * [`Setup::Kernel`]: M with `proxy_ndp=1` and `proxy_delay=0` on
//!   `mid-up` and static `ip -6 neigh add proxy <addr> dev mid-up` entries
//!   (and the /128 routes): the kernel answers itself, the limit.
//!
//! In every setup M has forwarding on and 2001:db8:1::/64 on-link on
//! `mid-up`, as an RA would give it.
//!
//! The probe is a raw ICMPv6 socket in U ([`crate::nd_probe`]). Series per
//! setup: `same target` (NS for 2001:db8:1::100 over and over), `fresh
//! target` (NS for a different guest address each time, so nothing can
//! come from a cache) and the answer rate: NS for the same target kept
//! [`Params::window`] in flight for [`Params::rate_time`], one more sent
//! per NA received.
//!
//! Only an NA that U's kernel would accept counts: solicited, hop limit
//! 255 (RFC 4861 §7.1.2). The guest answers U's NS with a unicast NA to
//! U, which M's kernel (forwarding on, U's prefix on-link on `mid-up`)
//! also *routes* to U, with hop limit 254, a few microseconds before
//! ndproxyd's relayed copy; until the probe checked the hop limit, every
//! ndproxyd answer it timed was that routed copy, which a real host
//! discards. Those are ignored now and counted (on stderr).
//!
//! An address no guest has claimed yet is not answered by ndproxyd at
//! once, by design (`crates/ndp/src/claims.rs`): the guest's NA is held
//! back while the claim is tentative (`DAD_WAIT`, 500 ms),
//! and new claims are rate-limited per downlink. So ndproxyd's `fresh
//! target` series gets no answer within [`PROBE_TIMEOUT`]; it is abandoned
//! after [`FRESH_GIVE_UP`] lost probes in a row and its row says `n/a`.

use std::fs::File;
use std::net::Ipv6Addr;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use patchpanel_rtnl::Rtnl;
use patchpanel_tests::{bin_path, Netns};
use tempfile::TempDir;

use crate::interrupt;
use crate::nd_probe::{Advert, NdProbe, ND_HOP_LIMIT};
use crate::traffic_counters::ip_batch;

/// The upstream host's address (the probes' source).
pub const UPSTREAM_HOST: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 1);
/// The guest address the `same target` series and the rate ask for.
pub const WARM_TARGET: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 0x100);
/// The proxied prefix.
pub const PREFIX: &str = "2001:db8:1::/64";
/// The most probes per series (one fresh guest address each).
pub const MAX_PROBES: usize = 4096;
/// Where the Debian package installs ndppd.
pub const NDPPD: &str = "/usr/sbin/ndppd";
/// How long one probe waits for its NA.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a proxy may take to answer the first probe after it starts.
pub const START_TIMEOUT: Duration = Duration::from_secs(15);
/// The fresh-target series stops after this many probes in a row got no
/// NA.
pub const FRESH_GIVE_UP: usize = 5;
/// During the rate series: no NA for this long and the window is refilled
/// (the outstanding NS are counted lost).
pub const RATE_STALL: Duration = Duration::from_millis(20);

/// The `fresh target` address `i`: 2001:db8:1::1:<i>.
pub fn fresh_target(i: usize) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 1, i as u16)
}

/// Who answers in M.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setup {
    Ndproxyd,
    Ndppd,
    Kernel,
}

impl Setup {
    pub const ALL: [Setup; 3] = [Setup::Ndproxyd, Setup::Ndppd, Setup::Kernel];

    pub fn name(self) -> &'static str {
        match self {
            Setup::Ndproxyd => "ndproxyd",
            Setup::Ndppd => "ndppd",
            Setup::Kernel => "kernel proxy",
        }
    }
}

/// What to measure.
#[derive(Debug, Clone, Copy)]
pub struct Params {
    /// Probes per latency series.
    pub probes: usize,
    /// Unmeasured probes before each series.
    pub warmup: usize,
    /// NS in flight during the rate series.
    pub window: usize,
    /// How long the rate series runs.
    pub rate_time: Duration,
}

/// One setup's numbers.
#[derive(Debug, Default)]
pub struct SetupSamples {
    pub same_target: Vec<Duration>,
    pub fresh_target: Vec<Duration>,
    /// Probes that got no NA within [`PROBE_TIMEOUT`].
    pub lost: usize,
    /// NA answered per second in the rate series.
    pub rate: f64,
    /// NS counted lost in the rate series.
    pub rate_lost: usize,
    /// The distinct sources of the NAs measured.
    pub sources: Vec<Ipv6Addr>,
}

/// Measures `setup` in fresh namespaces, removed before returning.
pub fn measure(setup: Setup, params: Params) -> Result<SetupSamples> {
    if params.probes == 0 || params.probes > MAX_PROBES {
        bail!("probes must be 1 to {MAX_PROBES}");
    }
    interrupt::check()?;
    let mut topology = Topology::new(params.probes)?;
    topology.start(setup)?;
    let probe = topology.probe()?;

    // The first answer after the start may take a while (ndproxyd waits
    // for its links, ndppd reads its config): warm up until one arrives.
    let started = Instant::now();
    loop {
        interrupt::check()?;
        if probe.round_trip(WARM_TARGET, PROBE_TIMEOUT / 5)?.is_some() {
            break;
        }
        topology.check_alive()?;
        if started.elapsed() > START_TIMEOUT {
            bail!(
                "{} did not answer an NS for {WARM_TARGET} within {START_TIMEOUT:?}{}",
                setup.name(),
                topology.proxy_log()
            );
        }
    }
    if setup == Setup::Ndproxyd {
        // Only ndproxyd's relay answers from now on (see the module doc).
        topology.sysctl("net.ipv6.conf.mid-up.proxy_ndp=0")?;
        topology.sysctl("net.ipv6.conf.all.proxy_ndp=0")?;
    }

    let mut samples = SetupSamples::default();
    let record = |samples: &mut SetupSamples, advert: &Advert| -> Result<()> {
        if setup == Setup::Ndproxyd && advert.source != advert.target {
            bail!(
                "an NA for {} came from {}, not relayed from the guest",
                advert.target,
                advert.source
            );
        }
        if !samples.sources.contains(&advert.source) {
            samples.sources.push(advert.source);
        }
        Ok(())
    };
    for i in 0..params.warmup + params.probes {
        interrupt::check()?;
        probe.drain()?;
        match probe.round_trip(WARM_TARGET, PROBE_TIMEOUT)? {
            Some((elapsed, advert)) => {
                record(&mut samples, &advert)?;
                if i >= params.warmup {
                    samples.same_target.push(elapsed);
                }
            }
            None => samples.lost += 1,
        }
    }
    if samples.lost * 10 > params.probes {
        bail!(
            "{} left {} of {} same-target probes unanswered{}",
            setup.name(),
            samples.lost,
            params.probes + params.warmup,
            topology.proxy_log()
        );
    }
    let same_forwarded = probe.forwarded();
    // A proxy that answers no fresh target at all (ndproxyd holds back the
    // answer for an address no guest has claimed yet, see the module doc)
    // would cost PROBE_TIMEOUT per probe: give up after a few in a row.
    let (mut fresh_lost, mut in_a_row) = (0usize, 0usize);
    for i in 0..params.probes {
        interrupt::check()?;
        probe.drain()?;
        match probe.round_trip(fresh_target(i), PROBE_TIMEOUT)? {
            Some((elapsed, advert)) => {
                record(&mut samples, &advert)?;
                samples.fresh_target.push(elapsed);
                in_a_row = 0;
            }
            None => {
                fresh_lost += 1;
                in_a_row += 1;
                if in_a_row >= FRESH_GIVE_UP {
                    eprintln!(
                        "{}: no NA with hop limit 255 for {FRESH_GIVE_UP} fresh targets in a row; fresh-target series abandoned after {} probes",
                        setup.name(),
                        i + 1
                    );
                    break;
                }
            }
        }
    }
    samples.lost += fresh_lost;
    eprintln!(
        "{}: NAs ignored for a hop limit below 255 (the guest's answer forwarded by M's kernel): {} during the same-target series, {} during the fresh-target series; fresh targets unanswered: {}",
        setup.name(),
        same_forwarded,
        probe.forwarded() - same_forwarded,
        fresh_lost
    );
    interrupt::check()?;
    probe.drain()?;
    let (rate, rate_lost) = answer_rate(&probe, params.window, params.rate_time)?;
    samples.rate = rate;
    samples.rate_lost = rate_lost;
    topology.check_alive()?;
    Ok(samples)
}

/// Keeps `window` NS for [`WARM_TARGET`] in flight for `time`: NAs per
/// second, and the NS given up on.
fn answer_rate(probe: &NdProbe, window: usize, time: Duration) -> Result<(f64, usize)> {
    let started = Instant::now();
    let (mut answered, mut lost) = (0usize, 0usize);
    for _ in 0..window {
        probe.send_ns(WARM_TARGET)?;
    }
    let mut outstanding = window;
    while started.elapsed() < time {
        match probe.recv(RATE_STALL)? {
            // Only what a host would accept: the guest's answer forwarded by
            // M's kernel (hop limit 254) would count twice for ndproxyd.
            Some(advert) if advert.target == WARM_TARGET && advert.hop_limit == ND_HOP_LIMIT => {
                answered += 1;
                outstanding = outstanding.saturating_sub(1);
                if outstanding < window {
                    probe.send_ns(WARM_TARGET)?;
                    outstanding += 1;
                }
            }
            Some(_) => {}
            None => {
                lost += outstanding;
                for _ in 0..window {
                    probe.send_ns(WARM_TARGET)?;
                }
                outstanding = window;
            }
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    Ok((answered as f64 / elapsed, lost))
}

/// A process started in a namespace with `nsenter --net=`: SIGTERM on
/// drop, SIGKILL if it has not exited 5 s later.
#[derive(Debug)]
struct Spawned {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Spawned {
    fn start(name: &str, netns: &Netns, argv: &[String], log: PathBuf) -> Result<Spawned> {
        let out = File::create(&log).with_context(|| format!("cannot create {}", log.display()))?;
        let child = Command::new("nsenter")
            .arg(format!("--net={}", netns.path().display()))
            .arg("--")
            .args(argv)
            .stdin(Stdio::null())
            .stdout(out.try_clone().context("cannot duplicate the log file")?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("cannot start {name}: {argv:?}"))?;
        Ok(Spawned {
            name: name.to_string(),
            child,
            log,
        })
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            if let Ok(pid) = i32::try_from(self.child.id()) {
                // SAFETY: kill takes integers only; the pid is our unreaped
                // child.
                unsafe { libc::kill(pid, libc::SIGTERM) };
            }
            let deadline = Instant::now() + Duration::from_secs(5);
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if matches!(self.child.try_wait(), Ok(None)) {
                eprintln!("bench: {} ignored SIGTERM; killing it", self.name);
                let _ = self.child.kill();
            }
        }
        let _ = self.child.wait();
    }
}

/// The three namespaces. Field order is drop order: the proxy stops before
/// the namespaces (and with them every link, route and entry) go, and the
/// directory (config, log) last.
struct Topology {
    proxy: Option<Spawned>,
    up: Netns,
    mid: Netns,
    guest: Netns,
    dir: TempDir,
    /// How many fresh targets the guest holds.
    fresh: usize,
}

impl Topology {
    /// U, M and G wired as in the module doc, the guest holding
    /// [`WARM_TARGET`] and `fresh` fresh targets, every link-local address
    /// past duplicate address detection.
    fn new(fresh: usize) -> Result<Topology> {
        let dir = tempfile::Builder::new()
            .prefix("pp-bench-ndp-")
            .tempdir()
            .context("cannot create a directory")?;
        let topology = Topology {
            proxy: None,
            up: Netns::new()?,
            mid: Netns::new()?,
            guest: Netns::new()?,
            dir,
            fresh,
        };
        let (mid, guest) = (topology.mid.name(), topology.guest.name());
        ip_batch(
            &topology.up,
            &format!(
                "link add up0 type veth peer name mid-up netns {mid}\n\
                 addr add {UPSTREAM_HOST}/64 dev up0 nodad\nlink set up0 up\n"
            ),
        )?;
        ip_batch(
            &topology.mid,
            &format!(
                "link add mid-dn type veth peer name g0 netns {guest}\n\
                 link set mid-up up\nlink set mid-dn up\n\
                 route add {PREFIX} dev mid-up\n"
            ),
        )?;
        let mut guest_side = format!("addr add {WARM_TARGET}/128 dev g0 nodad\n");
        for i in 0..fresh {
            guest_side.push_str(&format!("addr add {}/128 dev g0 nodad\n", fresh_target(i)));
        }
        guest_side.push_str("link set g0 up\n");
        ip_batch(&topology.guest, &guest_side)?;
        topology.sysctl("net.ipv6.conf.all.forwarding=1")?;
        for ns in [&topology.up, &topology.mid, &topology.guest] {
            wait_for_dad(ns)?;
        }
        Ok(topology)
    }

    /// Starts `setup` in M.
    fn start(&mut self, setup: Setup) -> Result<()> {
        match setup {
            Setup::Ndproxyd => {
                let argv = vec![
                    bin_path("ndproxyd")?.display().to_string(),
                    "mid-up".into(),
                    "mid-dn".into(),
                    "--log-to-stderr".into(),
                ];
                let log = self.dir.path().join("ndproxyd.log");
                self.proxy = Some(Spawned::start("ndproxyd", &self.mid, &argv, log)?);
            }
            Setup::Ndppd => {
                if !PathBuf::from(NDPPD).is_file() {
                    bail!("{NDPPD} does not exist (install the Debian package `ndppd`)");
                }
                self.route_guests()?;
                let conf = self.dir.path().join("ndppd.conf");
                std::fs::write(
                    &conf,
                    format!(
                        "proxy mid-up {{\n    rule {PREFIX} {{\n        iface mid-dn\n    }}\n}}\n"
                    ),
                )
                .with_context(|| format!("cannot write {}", conf.display()))?;
                let argv = vec![NDPPD.to_string(), "-c".into(), conf.display().to_string()];
                let log = self.dir.path().join("ndppd.log");
                self.proxy = Some(Spawned::start("ndppd", &self.mid, &argv, log)?);
            }
            Setup::Kernel => {
                self.route_guests()?;
                self.sysctl("net.ipv6.conf.mid-up.proxy_ndp=1")?;
                self.sysctl("net.ipv6.neigh.mid-up.proxy_delay=0")?;
                let mut entries = format!("neigh add proxy {WARM_TARGET} dev mid-up\n");
                for i in 0..self.fresh {
                    entries.push_str(&format!("neigh add proxy {} dev mid-up\n", fresh_target(i)));
                }
                ip_batch(&self.mid, &entries)?;
            }
        }
        Ok(())
    }

    /// The probe in U.
    fn probe(&self) -> Result<NdProbe> {
        let ns = File::open(self.up.path())
            .with_context(|| format!("cannot open {}", self.up.path().display()))?;
        let rtnl = Rtnl::in_netns(ns.as_fd()).context("cannot open rtnetlink in U")?;
        let link = rtnl
            .link("up0")?
            .context("up0 is missing from the upstream namespace")?;
        let mac = link.mac.context("up0 has no MAC")?;
        NdProbe::open(&self.up.path(), "up0", link.index, mac, UPSTREAM_HOST)
    }

    /// A /128 route to `mid-dn` in M for each guest address, as ndproxyd
    /// installs them for the guests it learns.
    fn route_guests(&self) -> Result<()> {
        let mut routes = format!("route add {WARM_TARGET}/128 dev mid-dn\n");
        for i in 0..self.fresh {
            routes.push_str(&format!("route add {}/128 dev mid-dn\n", fresh_target(i)));
        }
        ip_batch(&self.mid, &routes)
    }

    fn sysctl(&self, setting: &str) -> Result<()> {
        self.mid.exec_ok(&["sysctl", "-qw", setting])?;
        Ok(())
    }

    /// Fails when the proxy process has exited.
    fn check_alive(&mut self) -> Result<()> {
        let log = self.proxy_log();
        if let Some(proxy) = self.proxy.as_mut() {
            if let Some(status) = proxy.child.try_wait().context("cannot poll the proxy")? {
                bail!("{} exited ({status}){log}", proxy.name);
            }
        }
        Ok(())
    }

    /// The proxy's log, for error messages.
    fn proxy_log(&self) -> String {
        self.proxy.as_ref().map_or_else(String::new, |p| {
            let text = std::fs::read_to_string(&p.log).unwrap_or_default();
            format!("\n----- {} log -----\n{}----- end -----", p.name, text)
        })
    }
}

/// Waits until no IPv6 address in `ns` is tentative.
fn wait_for_dad(ns: &Netns) -> Result<()> {
    let started = Instant::now();
    loop {
        interrupt::check()?;
        if ns
            .exec_ok(&["ip", "-6", "addr", "show", "tentative"])?
            .trim()
            .is_empty()
        {
            return Ok(());
        }
        if started.elapsed() > START_TIMEOUT {
            bail!("addresses in {} still tentative", ns.name());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_targets_are_distinct_and_in_the_prefix_but_not_the_warm_one() {
        let a = fresh_target(0);
        let b = fresh_target(MAX_PROBES - 1);

        assert_ne!(a, b);
        assert_ne!(a, WARM_TARGET);
        assert_eq!(a.segments()[..4], WARM_TARGET.segments()[..4]);
        assert_eq!(b.segments()[..4], UPSTREAM_HOST.segments()[..4]);
    }
}
