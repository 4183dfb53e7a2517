//! Guest startup: `TerminaVmStartup` until the VM's TAP is usable and
//! `ArcStartup` with three uplinks until ARC's three devices are in place,
//! each followed by its shutdown, against a real `patchpaneld` in a
//! private [`World`]; interleaved, iteration by iteration, with netavark
//! attaching a container to one bridge network (Termina's peer) and to
//! three bridge networks in one `setup` call (ARC's peer).
//!
//! patchpanel:
//! * *Termina*: `TerminaVmStartup(cid)` from just before the call to the
//!   answer, then, polled over rtnetlink from a socket opened inside the
//!   daemon's namespace, until the TAP named in the answer exists, is up
//!   and carries the host address the answer names (its gateway) with
//!   prefix /30: the moment crosvm could use it. `TerminaVmShutdown(cid)`
//!   likewise: the answer, then until the TAP is gone.
//! * *ARC*: the daemon's namespace has three uplinks, `eth0` (the World's)
//!   and two more veth uplinks `eth1` and `wlan0` to the upstream
//!   namespace, each addressed and up. A fresh container (`unshare --net
//!   sleep`, started off the clock) per iteration; `ArcStartup(pid)` from
//!   just before the call to the answer, then until, for each uplink
//!   `<if>`, the bridge `arc_<if>` exists and is up and the host veth
//!   `veth<if>` exists enslaved to it. `ArcShutdown(pid)`: the answer, then
//!   until its four veths (`vetharc0` and the three `veth<if>`) are gone;
//!   the bridges stay for the next ARC, which puts its veths on them.
//!   Every other iteration instead asks for a namespace right after the
//!   `ArcShutdown` answer, while ARC's links are being deleted, and then
//!   once more when they are gone (its normal time); its wait for the
//!   devices, which would include that call, is not counted.
//!
//! netavark (see [`crate::netavark`]): `setup`/`teardown` of a fresh
//! container namespace, from spawning `nsenter` to netavark's exit.

use std::fs::File;
use std::os::fd::AsFd;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use patchpanel_client::proto::ipv4_from_addr4;
use patchpanel_client::Client;
use patchpanel_rtnl::{Link, Rtnl};
use patchpanel_tests::vm::FakeContainer;
use patchpanel_tests::world::World;
use patchpanel_tests::DaemonOptions;

use crate::interrupt;
use crate::netavark::{BridgeNetwork, MAX_CONTAINER_INDEX};
use crate::traffic_counters::ip_batch;
use crate::world::in_world;

/// ARC's uplinks: the World's `eth0` and the two added here.
pub const ARC_UPLINKS: [&str; 3] = ["eth0", "eth1", "wlan0"];
/// The netavark networks ARC's peer attaches in one call.
pub const ARC_PEER_NETWORKS: u8 = 3;
/// The host address of Termina's TAP has this prefix length.
pub const TAP_PREFIX_LEN: u8 = 30;
/// How often readiness and removal are checked.
pub const POLL: Duration = Duration::from_micros(100);
/// How long a guest's network may take to appear or go.
pub const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the daemon may take to pick up the added uplinks (the first,
/// unmeasured ARC startup waits for all three devices this long).
pub const UPLINK_TIMEOUT: Duration = Duration::from_secs(30);
/// Termina's vsock cids are this plus the iteration.
pub const TERMINA_CID_BASE: u32 = 1000;

/// One guest's series on patchpanel: start and stop, each as the answer
/// and as the kernel state done.
#[derive(Debug, Default)]
pub struct StartStop {
    /// Startup call to its answer.
    pub answer: Vec<Duration>,
    /// Startup call to the network usable.
    pub usable: Vec<Duration>,
    /// Shutdown call to its answer.
    pub shutdown: Vec<Duration>,
    /// Shutdown call to the network gone.
    pub gone: Vec<Duration>,
    /// ARC: a `ConnectNamespace` issued right after the `ArcShutdown`
    /// answer, while the kernel still deletes ARC's links, to its answer.
    pub connect_during: Vec<Duration>,
    /// ARC: the same call once ARC's links are gone (its normal time).
    pub connect_alone: Vec<Duration>,
}

/// One peer series on netavark.
#[derive(Debug, Default)]
pub struct PeerSeries {
    pub setup: Vec<Duration>,
    pub teardown: Vec<Duration>,
}

/// Everything one run measured; `None` for what was not asked for.
#[derive(Debug, Default)]
pub struct GuestSamples {
    pub termina: Option<StartStop>,
    pub arc: Option<StartStop>,
    pub netavark_one: Option<PeerSeries>,
    pub netavark_three: Option<PeerSeries>,
    /// `nsenter --net=<host> -- true`, in every netavark number.
    pub nsenter: Vec<Duration>,
    /// What the daemon's shutdown found wrong (the numbers stand).
    pub cleanup_problems: Vec<String>,
}

/// Which sides and guests to measure.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    pub iterations: usize,
    pub warmup: usize,
    pub patchpanel: bool,
    pub netavark: bool,
    pub termina: bool,
    pub arc: bool,
}

/// Measures `plan`, netavark's binary at `netavark`.
pub fn measure(plan: Plan, netavark: &Path) -> Result<GuestSamples> {
    interrupt::check()?;
    let network = if plan.netavark {
        Some(BridgeNetwork::new(netavark)?)
    } else {
        None
    };
    if !plan.patchpanel {
        let mut samples = GuestSamples::default();
        run_series(plan, None, network.as_ref(), &mut samples)?;
        return Ok(samples);
    }
    let options = DaemonOptions {
        extra_args: vec!["--uplinks=netlink".into()],
        ..Default::default()
    };
    let (mut samples, problem) = in_world(options, |world| {
        let mut samples = GuestSamples::default();
        let daemon = Daemon::new(world)?;
        run_series(plan, Some(&daemon), network.as_ref(), &mut samples)?;
        Ok(samples)
    })?;
    samples.cleanup_problems.extend(problem);
    Ok(samples)
}

/// The Termina series, then the ARC series, each side by side.
fn run_series(
    plan: Plan,
    daemon: Option<&Daemon<'_>>,
    network: Option<&BridgeNetwork>,
    samples: &mut GuestSamples,
) -> Result<()> {
    if let Some(network) = network {
        for _ in 0..plan.iterations {
            interrupt::check()?;
            samples.nsenter.push(network.nsenter_overhead()?);
        }
    }
    let total = plan.warmup + plan.iterations;
    if plan.termina {
        let mut pp = daemon.map(|_| StartStop::default());
        let mut nv = network.map(|_| PeerSeries::default());
        for i in 0..total {
            let measured = i >= plan.warmup;
            if let (Some(daemon), Some(series)) = (daemon, pp.as_mut()) {
                let cid = TERMINA_CID_BASE + u32::try_from(i).unwrap_or(0);
                let cycle = daemon
                    .termina_cycle(cid)
                    .with_context(|| format!("Termina iteration {i}"))?;
                if measured {
                    cycle.push_to(series);
                }
            }
            if let (Some(network), Some(series)) = (network, nv.as_mut()) {
                let (setup, teardown) = peer_cycle(network, 1, i == 0)
                    .with_context(|| format!("netavark 1-network iteration {i}"))?;
                if measured {
                    series.setup.push(setup);
                    series.teardown.push(teardown);
                }
            }
        }
        samples.termina = pp;
        samples.netavark_one = nv;
    }
    if plan.arc {
        if let Some(daemon) = daemon {
            daemon.add_arc_uplinks()?;
            daemon
                .settle_arc()
                .context("waiting for ARC devices on all three uplinks")?;
        }
        let mut pp = daemon.map(|_| StartStop::default());
        let mut nv = network.map(|_| PeerSeries::default());
        for i in 0..total {
            let measured = i >= plan.warmup;
            if let (Some(daemon), Some(series)) = (daemon, pp.as_mut()) {
                // Every other iteration asks for a namespace during the
                // teardown; the others measure the teardown alone.
                let cycle = daemon
                    .arc_cycle(READY_TIMEOUT, i % 2 == 1)
                    .with_context(|| format!("ARC iteration {i}"))?;
                if measured {
                    cycle.push_to(series);
                }
            }
            if let (Some(network), Some(series)) = (network, nv.as_mut()) {
                let (setup, teardown) = peer_cycle(network, ARC_PEER_NETWORKS, i == 0)
                    .with_context(|| format!("netavark 3-network iteration {i}"))?;
                if measured {
                    series.setup.push(setup);
                    series.teardown.push(teardown);
                }
            }
        }
        samples.arc = pp;
        samples.netavark_three = nv;
    }
    Ok(())
}

/// One netavark container on `networks` networks: setup, optionally a ping
/// of the first gateway, teardown.
fn peer_cycle(network: &BridgeNetwork, networks: u8, check: bool) -> Result<(Duration, Duration)> {
    let container = network.container_on(MAX_CONTAINER_INDEX, networks)?;
    let setup = network.setup(&container)?;
    if check {
        network.ping_gateway(&container)?;
    }
    let teardown = network.teardown(&container)?;
    Ok((setup, teardown))
}

/// The times of one patchpanel start/stop.
#[derive(Debug, Clone, Copy)]
struct Cycle {
    answer: Duration,
    usable: Duration,
    shutdown: Duration,
    /// `None` when a ConnectNamespace was asked for during the teardown:
    /// the wait for the devices would include that call's time.
    gone: Option<Duration>,
    /// ARC only: (during the teardown, alone).
    connects: Option<(Duration, Duration)>,
}

impl Cycle {
    fn push_to(self, series: &mut StartStop) {
        series.answer.push(self.answer);
        series.usable.push(self.usable);
        series.shutdown.push(self.shutdown);
        series.gone.extend(self.gone);
        if let Some((during, alone)) = self.connects {
            series.connect_during.push(during);
            series.connect_alone.push(alone);
        }
    }
}

/// `ConnectNamespace` for a new namespace: the time to its answer, and
/// the lifeline (dropping it releases the namespace).
fn timed_connect(client: &Client) -> Result<(Duration, patchpanel_client::Lifeline)> {
    let request = patchpanel_client::proto::ConnectNamespaceRequest {
        pid: -1,
        ..Default::default()
    };
    let started = Instant::now();
    let (_, lifeline) = client
        .connect_namespace(&request)
        .context("ConnectNamespace failed")?;
    Ok((started.elapsed(), lifeline))
}

/// The daemon, a client, and rtnetlink inside the daemon's namespace.
struct Daemon<'w> {
    world: &'w World,
    client: Client,
    rtnl: Rtnl,
}

impl<'w> Daemon<'w> {
    fn new(world: &'w World) -> Result<Daemon<'w>> {
        let path = world.netns.path();
        let ns = File::open(&path).with_context(|| format!("cannot open {}", path.display()))?;
        let rtnl = Rtnl::in_netns(ns.as_fd())
            .with_context(|| format!("cannot open rtnetlink inside {}", path.display()))?;
        Ok(Daemon {
            world,
            client: Client::connect_to(world.bus.address()).context("cannot connect to the bus")?,
            rtnl,
        })
    }

    /// `TerminaVmStartup`, the TAP usable, `TerminaVmShutdown`, the TAP gone.
    fn termina_cycle(&self, cid: u32) -> Result<Cycle> {
        interrupt::check()?;
        let started = Instant::now();
        let response = self
            .client
            .terminavm_startup(cid)
            .context("TerminaVmStartup failed")?;
        let answer = started.elapsed();
        let tap = response.tap_device_ifname.clone();
        let host = ipv4_from_addr4(&response.gateway_ipv4_address).with_context(|| {
            format!("TerminaVmStartup answered without a host address: {response:?}")
        })?;
        let usable = self
            .poll(started, READY_TIMEOUT, || {
                let Some(link) = self.rtnl.link(&tap)? else {
                    return Ok(false);
                };
                if !link.up {
                    return Ok(false);
                }
                let addrs = self.rtnl.addresses(Some(&tap))?;
                Ok(addrs
                    .iter()
                    .any(|a| a.addr == host && a.prefix_len == TAP_PREFIX_LEN))
            })
            .with_context(|| format!("TAP {tap} not up with {host}/{TAP_PREFIX_LEN}"))?;

        interrupt::check()?;
        let started = Instant::now();
        self.client
            .terminavm_shutdown(cid)
            .context("TerminaVmShutdown failed")?;
        let shutdown = started.elapsed();
        let gone = self
            .poll(started, READY_TIMEOUT, || {
                Ok(self.rtnl.link(&tap)?.is_none())
            })
            .with_context(|| format!("TAP {tap} still present after TerminaVmShutdown"))?;
        Ok(Cycle {
            answer,
            usable,
            shutdown,
            gone: Some(gone),
            connects: None,
        })
    }

    /// A fresh container (off the clock), `ArcStartup`, the three devices
    /// in place, `ArcShutdown`, the devices gone.
    fn arc_cycle(&self, ready_timeout: Duration, connect_during: bool) -> Result<Cycle> {
        interrupt::check()?;
        let container = FakeContainer::start()?;
        let pid = container.pid();
        let started = Instant::now();
        self.client.arc_startup(pid).context("ArcStartup failed")?;
        let answer = started.elapsed();
        let usable = self
            .poll(started, ready_timeout, || {
                Ok(arc_missing(&self.rtnl.links()?).is_empty())
            })
            .map_err(|err| {
                let missing = self
                    .rtnl
                    .links()
                    .map(|links| arc_missing(&links).join(", "))
                    .unwrap_or_default();
                err.context(format!("ARC devices missing after ArcStartup: {missing}"))
            })?;

        interrupt::check()?;
        let started = Instant::now();
        self.client
            .arc_shutdown(pid)
            .context("ArcShutdown failed")?;
        let shutdown = started.elapsed();
        // A namespace asked for while the kernel deletes ARC's links.
        let during = if connect_during {
            Some(timed_connect(&self.client)?)
        } else {
            None
        };
        // The bridges stay for the next ARC (patchpanel keeps them, see
        // manager/src/guests/arc_bridges.rs): gone are ARC's links, the
        // three veths and arc0's.
        let gone = self
            .poll(started, READY_TIMEOUT, || {
                let links = self.rtnl.links()?;
                Ok(!links.iter().any(|l| {
                    l.name == ARC0_VETH || ARC_UPLINKS.iter().any(|u| l.name == arc_veth(u))
                }))
            })
            .context("ARC's veths still present after ArcShutdown")?;
        drop(container);
        let Some((during, during_lifeline)) = during else {
            return Ok(Cycle {
                answer,
                usable,
                shutdown,
                gone: Some(gone),
                connects: None,
            });
        };
        let (alone, alone_lifeline) = timed_connect(&self.client)?;
        drop((during_lifeline, alone_lifeline));
        Ok(Cycle {
            answer,
            usable,
            shutdown,
            gone: None,
            connects: Some((during, alone)),
        })
    }

    /// The uplinks `eth1` and `wlan0`: veths to `up1`/`up2` upstream,
    /// 192.0.3.2/24 and 192.0.4.2/24 (peers .1), all up.
    fn add_arc_uplinks(&self) -> Result<()> {
        let upstream = self.world.internet.upstream.name();
        let mut daemon_side = String::new();
        let mut upstream_side = String::new();
        for (i, name) in ARC_UPLINKS.iter().enumerate().skip(1) {
            let net = 2 + i;
            daemon_side.push_str(&format!(
                "link add {name} type veth peer name up{i} netns {upstream}\n\
                 addr add 192.0.{net}.2/24 dev {name}\nlink set {name} up\n"
            ));
            upstream_side.push_str(&format!(
                "addr add 192.0.{net}.1/24 dev up{i}\nlink set up{i} up\n"
            ));
        }
        ip_batch(&self.world.netns, &daemon_side)?;
        ip_batch(&self.world.internet.upstream, &upstream_side)
    }

    /// One unmeasured ARC start/stop that waits for all three devices as
    /// long as the daemon may need to pick up the new uplinks.
    fn settle_arc(&self) -> Result<()> {
        self.arc_cycle(UPLINK_TIMEOUT, false).map(|_| ())
    }

    /// Polls `done` every [`POLL`] until it holds; the time since `started`.
    fn poll(
        &self,
        started: Instant,
        timeout: Duration,
        mut done: impl FnMut() -> Result<bool>,
    ) -> Result<Duration> {
        loop {
            if done()? {
                return Ok(started.elapsed());
            }
            if started.elapsed() > timeout {
                bail!("not done after {timeout:?}");
            }
            std::thread::sleep(POLL);
        }
    }
}

/// ARC's host bridge for uplink `uplink`.
pub fn arc_bridge(uplink: &str) -> String {
    format!("arc_{uplink}")
}

/// The host end of ARC's management veth (arc0's).
pub const ARC0_VETH: &str = "vetharc0";

/// ARC's host veth for uplink `uplink`.
pub fn arc_veth(uplink: &str) -> String {
    format!("veth{uplink}")
}

/// What of ARC's devices is not in place in `links`: per uplink, the
/// bridge up and the veth enslaved to it.
pub fn arc_missing(links: &[Link]) -> Vec<String> {
    let mut missing = Vec::new();
    for uplink in ARC_UPLINKS {
        let bridge = arc_bridge(uplink);
        let veth = arc_veth(uplink);
        match links.iter().find(|l| l.name == bridge) {
            Some(b) if b.up => {
                if !links
                    .iter()
                    .any(|l| l.name == veth && l.master == Some(b.index))
                {
                    missing.push(format!("{veth} in {bridge}"));
                }
            }
            Some(_) => missing.push(format!("{bridge} up")),
            None => missing.push(bridge),
        }
    }
    missing
}
