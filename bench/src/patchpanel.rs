//! The measured side: `ConnectNamespace` round trips and lifeline teardowns
//! against a real `patchpaneld` in a private [`World`].
//!
//! Connect: from just before the call to its answer. The daemon answers only
//! once the datapath is in place, so the answer is when the namespace is
//! usable; each answer is checked (outside the timing) to name a namespace
//! and a host veth that exist, and the first one of each series must also
//! reach the upstream host through NAT.
//!
//! Teardown: from dropping the lifeline until both the named namespace
//! (`/run/netns/<name>`) and the host-side veth in the daemon's namespace
//! are gone, polled every [`TEARDOWN_POLL`]. Before the next iteration the
//! benchmark also waits (untimed) for `GetDevices` to be back to its
//! baseline, so that one teardown's tail never overlaps the next connect.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use patchpanel_client::proto::{ConnectNamespaceRequest, ConnectNamespaceResponse};
use patchpanel_client::{Client, Lifeline};
use patchpanel_tests::netns::NETNS_RUN_DIR;
use patchpanel_tests::world::{World, REMOTE_HOST};
use patchpanel_tests::DaemonOptions;

use crate::interrupt;
use crate::link_probe::LinkProbe;
use crate::world::in_world;

/// Off the clock after each teardown. The host veth and the namespace's
/// name are gone within milliseconds of the lifeline closing, but the
/// kernel goes on destroying the namespace in the background (its
/// `cleanup_net` work and RCU barriers), which takes longer the more
/// namespaces there are; a connect issued meanwhile shares the CPUs with
/// it (connect @1000 23 ms without this pause against 16 ms with it, same
/// binaries). That is the teardown's cost, not the next connect's. (Until
/// bf1e314 the pause also covered the grace period the next connect's
/// `CONNMARK` rules waited for; they no longer exist.)
pub const BETWEEN_CYCLES: Duration = Duration::from_millis(60);

/// How often teardown completion is checked.
pub const TEARDOWN_POLL: Duration = Duration::from_micros(200);
/// How long a teardown may take before the benchmark gives up.
pub const TEARDOWN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the daemon may take to report the baseline device count again.
pub const SETTLE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long releasing all the loaded namespaces at once may take (also the
/// D-Bus call timeout meanwhile: the daemon may be busy for seconds).
pub const RELEASE_ALL_TIMEOUT: Duration = Duration::from_secs(120);

/// A `[pools.netns]` with room for the loaded namespaces plus the measured
/// one: 256 /30s at 100.115.96.0/22, clear of the default pools in
/// 100.115.92.0/23.
pub const NETNS_POOL_CONFIG: &str =
    "[pools.netns]\nbase = \"100.115.96.0\"\nprefix_len = 30\ncount = 256\n";

/// The same pool with room for 1,024 namespaces (100.115.96.0/20), for the
/// 1,000-guest form of the benchmark.
pub const NETNS_POOL_CONFIG_1024: &str =
    "[pools.netns]\nbase = \"100.115.96.0\"\nprefix_len = 30\ncount = 1024\n";

/// What the patchpanel side measured.
#[derive(Debug, Default)]
pub struct PatchpanelSamples {
    /// With no other namespace connected.
    pub alone: Series,
    /// With the loaded namespaces connected.
    pub loaded: Series,
    /// What the daemon's shutdown at the end found wrong (the numbers stand,
    /// but the run failed).
    pub cleanup_problems: Vec<String>,
}

/// One series of connect/teardown pairs.
#[derive(Debug, Default)]
pub struct Series {
    /// `ConnectNamespace` round trips.
    pub connect: Vec<Duration>,
    /// Lifeline closed to both the namespace and the host veth gone.
    pub teardown: Vec<Duration>,
    /// Lifeline closed to `/run/netns/<name>` gone (part of `teardown`).
    pub netns_gone: Vec<Duration>,
    /// Lifeline closed to the host veth gone (part of `teardown`).
    pub veth_gone: Vec<Duration>,
}

impl Series {
    fn push(&mut self, connect: Duration, teardown: Teardown) {
        self.connect.push(connect);
        self.teardown
            .push(teardown.netns_gone.max(teardown.veth_gone));
        self.netns_gone.push(teardown.netns_gone);
        self.veth_gone.push(teardown.veth_gone);
    }
}

/// When each trace of a released namespace was first seen gone.
#[derive(Debug, Clone, Copy)]
struct Teardown {
    netns_gone: Duration,
    veth_gone: Duration,
}

/// A connected namespace, held by its lifeline.
#[derive(Debug)]
struct Connected {
    response: ConnectNamespaceResponse,
    lifeline: Lifeline,
}

/// The daemon, a client and a probe into the daemon's namespace.
struct Bench<'w> {
    world: &'w World,
    client: Client,
    probe: LinkProbe,
}

/// Starts a daemon with a pool for `loaded + 1` namespaces and measures
/// `iterations` connect/teardown pairs after `warmup` unmeasured ones, first
/// alone, then with `loaded` namespaces held connected.
pub fn measure(iterations: usize, warmup: usize, loaded: usize) -> Result<PatchpanelSamples> {
    if loaded + 1 > 1024 {
        bail!("the benchmark's pool holds 1,024 namespaces; {loaded} loaded is too many");
    }
    interrupt::check()?;
    let options = DaemonOptions {
        extra_config: if loaded + 1 > 256 {
            NETNS_POOL_CONFIG_1024
        } else {
            NETNS_POOL_CONFIG
        }
        .into(),
        ..Default::default()
    };
    let (mut samples, problem) = in_world(options, |world| {
        measure_in(world, iterations, warmup, loaded)
    })?;
    samples.cleanup_problems.extend(problem);
    Ok(samples)
}

fn measure_in(
    world: &World,
    iterations: usize,
    warmup: usize,
    loaded: usize,
) -> Result<PatchpanelSamples> {
    let mut bench = Bench {
        world,
        client: Client::connect_to(world.bus.address()).context("cannot connect to the bus")?,
        probe: LinkProbe::in_netns(&world.netns.path())?,
    };
    let mut samples = PatchpanelSamples::default();

    let baseline = bench.device_count()?;
    for i in 0..warmup + iterations {
        let (connect, teardown) = bench
            .cycle(i == 0, baseline)
            .with_context(|| format!("iteration {i} with no other namespace"))?;
        if i >= warmup {
            samples.alone.push(connect, teardown);
        }
    }

    let mut background = Vec::with_capacity(loaded);
    for _ in 0..loaded {
        let (_, connected) = bench
            .connect()
            .with_context(|| format!("connecting loaded namespace {}", background.len()))?;
        background.push(connected);
    }
    let loaded_baseline = bench.device_count()?;
    if loaded_baseline != baseline + loaded {
        bail!("GetDevices lists {loaded_baseline} devices with {loaded} namespaces connected");
    }
    for i in 0..warmup + iterations {
        let (connect, teardown) = bench
            .cycle(i == 0, loaded_baseline)
            .with_context(|| format!("iteration {i} with {loaded} namespaces connected"))?;
        if i >= warmup {
            samples.loaded.push(connect, teardown);
        }
    }

    // Release the loaded namespaces at once and wait for the daemon to
    // finish, so that it stops with nothing left to clean (its Drop checks
    // that). Not a measured series, but worth a line: the daemon may not
    // answer D-Bus calls while it works through the backlog. A failure here
    // does not void the numbers above.
    let started = Instant::now();
    drop(background);
    bench.client.set_timeout(RELEASE_ALL_TIMEOUT);
    match bench.wait_for_device_count(baseline, RELEASE_ALL_TIMEOUT) {
        Ok(()) => eprintln!(
            "patchpanel: releasing {loaded} namespaces at once took {:.0} ms",
            started.elapsed().as_secs_f64() * 1000.0
        ),
        Err(err) => samples
            .cleanup_problems
            .push(format!("releasing {loaded} namespaces at once: {err:#}")),
    }
    Ok(samples)
}

impl Bench<'_> {
    /// One connect/teardown pair; `check` adds the NAT ping.
    fn cycle(&self, check: bool, baseline: usize) -> Result<(Duration, Teardown)> {
        let (connect, connected) = self.connect()?;
        if check {
            self.ping_through_nat(&connected.response)?;
        }
        let netns = connected.response.netns_name.clone();
        let teardown = self.teardown(connected)?;
        self.wait_for_device_count(baseline, SETTLE_TIMEOUT)
            .with_context(|| format!("waiting for the daemon to forget {netns}"))?;
        std::thread::sleep(BETWEEN_CYCLES);
        Ok((connect, teardown))
    }

    /// `ConnectNamespace` for a new named namespace: the round trip, and the
    /// namespace after checking that what the answer names exists.
    fn connect(&self) -> Result<(Duration, Connected)> {
        interrupt::check()?;
        let request = ConnectNamespaceRequest {
            pid: -1,
            ..Default::default()
        };
        let started = Instant::now();
        let (response, lifeline) = self
            .client
            .connect_namespace(&request)
            .context("ConnectNamespace failed")?;
        let elapsed = started.elapsed();

        if response.netns_name.is_empty() {
            bail!("ConnectNamespace(pid -1) answered without a namespace name: {response:?}");
        }
        if !netns_path(&response.netns_name).exists() {
            bail!(
                "ConnectNamespace answered before {} existed",
                netns_path(&response.netns_name).display()
            );
        }
        if !self.probe.exists(&response.host_ifname)? {
            bail!(
                "ConnectNamespace answered before the host veth {} existed",
                response.host_ifname
            );
        }
        Ok((elapsed, Connected { response, lifeline }))
    }

    /// Drops the lifeline and polls until the namespace and the host veth
    /// are gone, noting when each went.
    fn teardown(&self, connected: Connected) -> Result<Teardown> {
        interrupt::check()?;
        let Connected { response, lifeline } = connected;
        let netns = netns_path(&response.netns_name);
        let (mut netns_gone, mut veth_gone) = (None, None);
        let started = Instant::now();
        drop(lifeline);
        loop {
            let now = started.elapsed();
            if netns_gone.is_none() && !netns.exists() {
                netns_gone = Some(now);
            }
            if veth_gone.is_none() && !self.probe.exists(&response.host_ifname)? {
                veth_gone = Some(now);
            }
            if let (Some(netns_gone), Some(veth_gone)) = (netns_gone, veth_gone) {
                return Ok(Teardown {
                    netns_gone,
                    veth_gone,
                });
            }
            if now > TEARDOWN_TIMEOUT {
                bail!(
                    "{} or {} still present {TEARDOWN_TIMEOUT:?} after the lifeline closed",
                    netns.display(),
                    response.host_ifname
                );
            }
            std::thread::sleep(TEARDOWN_POLL);
        }
    }

    fn ping_through_nat(&self, response: &ConnectNamespaceResponse) -> Result<()> {
        let out = self
            .world
            .exec_in(
                &response.netns_name,
                &["ping", "-c", "1", "-W", "3", REMOTE_HOST],
            )
            .context("cannot run ping")?;
        if !out.status.success() {
            bail!(
                "namespace {} cannot reach {REMOTE_HOST} through NAT: {}",
                response.netns_name,
                String::from_utf8_lossy(&out.stdout).trim()
            );
        }
        Ok(())
    }

    fn device_count(&self) -> Result<usize> {
        Ok(self
            .client
            .get_devices()
            .context("GetDevices failed")?
            .len())
    }

    fn wait_for_device_count(&self, expected: usize, timeout: Duration) -> Result<()> {
        let started = Instant::now();
        loop {
            interrupt::check()?;
            let count = self.device_count()?;
            if count == expected {
                return Ok(());
            }
            if started.elapsed() > timeout {
                bail!(
                    "GetDevices still lists {count} devices after {timeout:?}, expected {expected}"
                );
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

fn netns_path(name: &str) -> PathBuf {
    Path::new(NETNS_RUN_DIR).join(name)
}
