//! `ConfigureNetwork` (issue 23), with the daemon following a fake shill:
//!
//! * **configure**: a typical Ethernet configuration (IPv4 address with
//!   broadcast, the subnet and default routes in table ifindex+1000, the
//!   routing-policy rules of both families, MTU) as one D-Bus call, next to
//!   the peer: the same kernel changes made the way the original applies
//!   them, one `ip` process per change, measured in the same run on an
//!   identical link in a namespace of its own;
//! * **VPN switch**: with 10 `route_on_vpn` guests connected, the time from
//!   the `ConfigureNetwork` call that makes a VPN the default network (and
//!   the one that makes it stop being it) until every guest's next TCP
//!   connection to the internet host goes out of the new door (the host's
//!   address answers "vpn" behind the VPN and "physical" behind eth0).
//!   There is no peer for this series: it needs upstream's whole iptables
//!   and routing setup.

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use patchpanel_client::{Client, Lifeline};
use patchpanel_proto::configure_network_request as area;
use patchpanel_proto::{ConfigureNetworkRequest, ConnectNamespaceRequest, NetworkPriority};
use patchpanel_tests::shill_world::{self, ShillWorld};
use patchpanel_tests::world::REMOTE_HOST;
use patchpanel_tests::{poll_until, Netns};

use crate::interrupt;
use crate::netns_thread::NetnsThread;
use crate::report::{self, Row};

/// The target: patchpanel's p50 at most this share of the peer's.
pub const RATIO_TARGET: f64 = 0.1;
const PORT: u16 = 7474;
const GUESTS: usize = 10;

/// What one run measured.
#[derive(Debug, Default)]
pub struct Samples {
    pub configure: Vec<Duration>,
    pub peer: Vec<Duration>,
    pub to_vpn: Vec<Duration>,
    pub from_vpn: Vec<Duration>,
}

const FULL: u32 = shill_world::FULL_AREA;

/// The physical network: shill's typical Ethernet configuration, not the
/// default (logical) network, rank 1 (the VPN is 0).
fn ethernet(ifindex: i32) -> ConfigureNetworkRequest {
    let mut req = shill_world::ethernet_request(ifindex, "eth0", FULL);
    req.priority = Some(NetworkPriority {
        is_primary_physical: true,
        ranking_order: 1,
        ..Default::default()
    });
    req
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip").args(args).output().context("run ip")?;
    if !out.status.success() {
        bail!(
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn ifindex(netns: &Netns, name: &str) -> Result<i32> {
    Ok(netns
        .exec_ok(&["cat", &format!("/sys/class/net/{name}/ifindex")])?
        .trim()
        .parse()?)
}

fn configure(world: &ShillWorld, req: &ConfigureNetworkRequest) -> Result<()> {
    world
        .configure(req)
        .map_err(|e| anyhow::anyhow!("ConfigureNetwork: {e}"))?;
    Ok(())
}

/// The peer: the same kernel state, one `ip` process per change, on `eth0`
/// (index `index`) of namespace `ns`.
fn peer_apply(ns: &str, index: i32) -> Result<()> {
    let table = (index + 1000).to_string();
    let tag = format!("0x{:x}/0xffff0000", (index + 1000) << 16);
    ip(&[
        "-n",
        ns,
        "addr",
        "add",
        "192.0.2.2/24",
        "brd",
        "+",
        "dev",
        "eth0",
    ])?;
    ip(&[
        "-n",
        ns,
        "route",
        "add",
        "192.0.2.0/24",
        "dev",
        "eth0",
        "table",
        &table,
        "proto",
        "157",
    ])?;
    ip(&[
        "-n",
        ns,
        "route",
        "add",
        "default",
        "via",
        "192.0.2.1",
        "dev",
        "eth0",
        "table",
        &table,
        "proto",
        "157",
    ])?;
    for family in ["-4", "-6"] {
        ip(&[
            "-n",
            ns,
            family,
            "rule",
            "add",
            "pref",
            "1000",
            "lookup",
            "main",
            "suppress_prefixlength",
            "0",
            "proto",
            "157",
        ])?;
        ip(&[
            "-n", ns, family, "rule", "add", "pref", "1010", "fwmark", &tag, "lookup", &table,
            "proto", "157",
        ])?;
        ip(&[
            "-n", ns, family, "rule", "add", "pref", "1010", "oif", "eth0", "lookup", &table,
            "proto", "157",
        ])?;
        ip(&[
            "-n", ns, family, "rule", "add", "pref", "1010", "iif", "eth0", "lookup", &table,
            "proto", "157",
        ])?;
        ip(&[
            "-n",
            ns,
            family,
            "rule",
            "add",
            "pref",
            "32763",
            "fwmark",
            "0x4000/0xc000",
            "lookup",
            &table,
            "proto",
            "157",
        ])?;
        ip(&[
            "-n", ns, family, "rule", "add", "pref", "32765", "lookup", &table, "proto", "157",
        ])?;
    }
    ip(&[
        "-n",
        ns,
        "-4",
        "rule",
        "add",
        "pref",
        "1010",
        "from",
        "192.0.2.2",
        "lookup",
        &table,
        "proto",
        "157",
    ])?;
    ip(&["-n", ns, "link", "set", "eth0", "mtu", "1400"])
}

fn peer_clear(ns: &str, index: i32) -> Result<()> {
    let table = (index + 1000).to_string();
    for family in ["-4", "-6"] {
        while ip(&["-n", ns, family, "rule", "del", "proto", "157"]).is_ok() {}
    }
    // The table does not exist before the first apply.
    let _ = ip(&["-n", ns, "route", "flush", "table", &table]);
    ip(&["-n", ns, "addr", "flush", "dev", "eth0"])?;
    ip(&["-n", ns, "link", "set", "eth0", "mtu", "1500"])
}

pub fn measure(iterations: usize, switches: usize) -> Result<Samples> {
    let world = ShillWorld::start(crate::patchpanel::NETNS_POOL_CONFIG)?;
    let result = measure_in(&world, iterations, switches);
    if result.is_err() {
        eprintln!(
            "----- patchpaneld log -----\n{}\n----- end -----",
            world.daemon.log()
        );
    }
    result
}

fn measure_in(world: &ShillWorld, iterations: usize, switches: usize) -> Result<Samples> {
    let (netns, internet, bus) = (&world.netns, &world.internet, &world.bus);
    let eth0 = world.ifindex("eth0");
    let mut s = Samples::default();

    // The peer's link: a veth of its own in a namespace of its own.
    let peer = Netns::new()?;
    ip(&[
        "-n",
        peer.name(),
        "link",
        "add",
        "eth0",
        "type",
        "veth",
        "peer",
        "name",
        "p0",
    ])?;
    ip(&["-n", peer.name(), "link", "set", "eth0", "up"])?;
    let peer_index = ifindex(&peer, "eth0")?;
    let mut clear = ethernet(eth0);
    clear.area = area::AREA_CLEAR;
    eprintln!("configure-network: {iterations} configurations each");
    for _ in 0..iterations {
        configure(world, &clear)?;
        let started = Instant::now();
        configure(world, &ethernet(eth0))?;
        s.configure.push(started.elapsed());
        peer_clear(peer.name(), peer_index)?;
        let started = Instant::now();
        peer_apply(peer.name(), peer_index)?;
        s.peer.push(started.elapsed());
        interrupt::check()?;
    }
    drop(peer);

    // The VPN switch, with 10 guests that follow the user's routing.
    let vpn_server = Netns::new()?;
    ip(&[
        "-n",
        netns.name(),
        "link",
        "add",
        "vpn0",
        "type",
        "veth",
        "peer",
        "name",
        "vs0",
        "netns",
        vpn_server.name(),
    ])?;
    ip(&["-n", netns.name(), "link", "set", "vpn0", "up"])?;
    ip(&[
        "-n",
        vpn_server.name(),
        "addr",
        "add",
        "10.8.0.1/24",
        "dev",
        "vs0",
    ])?;
    ip(&["-n", vpn_server.name(), "link", "set", "vs0", "up"])?;
    ip(&[
        "-n",
        vpn_server.name(),
        "addr",
        "add",
        &format!("{REMOTE_HOST}/32"),
        "dev",
        "lo",
    ])?;
    let vpn0 = world.ifindex("vpn0");
    let servers = [
        (internet.upstream.path(), b"physical".as_slice()),
        (vpn_server.path(), b"vpn".as_slice()),
    ]
    .into_iter()
    .map(|(path, greeting)| Greeter::start(&path, greeting))
    .collect::<Result<Vec<_>>>()?;
    configure(
        world,
        &shill_world::vpn_request(vpn0, FULL & !area::AREA_CLEAR, false),
    )?;
    let pp = Client::connect_to(bus.address())?;
    let mut lifelines: Vec<Lifeline> = Vec::new();
    let mut guests = Vec::new();
    for _ in 0..GUESTS {
        let (resp, lifeline) = pp.connect_namespace(&ConnectNamespaceRequest {
            pid: -1,
            route_on_vpn: true,
            ..Default::default()
        })?;
        lifelines.push(lifeline);
        guests.push(NetnsThread::enter(std::path::Path::new(&format!(
            "/run/netns/{}",
            resp.netns_name
        )))?);
    }
    let target: SocketAddr = format!("{REMOTE_HOST}:{PORT}").parse()?;
    all_use(&guests, target, "physical", Duration::from_secs(10)).context("before the switch")?;
    eprintln!("configure-network: {switches} switches to the VPN and back with {GUESTS} guests");
    let routing_only = area::AREA_ROUTING_POLICY;
    for _ in 0..switches {
        let started = Instant::now();
        configure(world, &shill_world::vpn_request(vpn0, routing_only, true))?;
        all_use(&guests, target, "vpn", Duration::from_secs(10))?;
        s.to_vpn.push(started.elapsed());
        let started = Instant::now();
        configure(world, &shill_world::vpn_request(vpn0, routing_only, false))?;
        all_use(&guests, target, "physical", Duration::from_secs(10))?;
        s.from_vpn.push(started.elapsed());
        interrupt::check()?;
    }
    drop(lifelines);
    drop(servers);
    Ok(s)
}

/// Polls each guest until its next connection is greeted with `want`.
fn all_use(
    guests: &[NetnsThread],
    target: SocketAddr,
    want: &'static str,
    limit: Duration,
) -> Result<()> {
    for (i, guest) in guests.iter().enumerate() {
        let ok = guest.run(move || {
            poll_until(limit, || {
                let mut s = TcpStream::connect_timeout(&target, Duration::from_millis(200)).ok()?;
                s.set_read_timeout(Some(Duration::from_millis(200))).ok()?;
                let mut buf = [0u8; 16];
                let n = s.read(&mut buf).ok()?;
                (&buf[..n] == want.as_bytes()).then_some(())
            })
        })?;
        if ok.is_none() {
            bail!("guest {i} did not use the {want} path within {limit:?}");
        }
    }
    Ok(())
}

/// A TCP server in a namespace answering each connection with a greeting.
struct Greeter {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Greeter {
    fn start(netns: &std::path::Path, greeting: &'static [u8]) -> Result<Greeter> {
        use std::io::Write;
        use std::sync::atomic::{AtomicBool, Ordering};
        let inside = NetnsThread::enter(netns)?;
        let listener = inside.run(|| std::net::TcpListener::bind((REMOTE_HOST, PORT)))??;
        listener.set_nonblocking(true)?;
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut s, _)) => {
                        let _ = s.write_all(greeting);
                    }
                    Err(_) => std::thread::sleep(Duration::from_micros(200)),
                }
            }
        });
        Ok(Greeter {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Greeter {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

pub fn render(s: &Samples) -> String {
    let rows = [
        Row::new(
            "ConfigureNetwork (Ethernet, routing policy, MTU)",
            Some(&s.configure),
        ),
        Row::new(
            "peer: the same with one ip process per change",
            Some(&s.peer),
        ),
        Row::new("VPN becomes default, 10 guests on it", Some(&s.to_vpn)),
        Row::new(
            "VPN stops being default, 10 guests off it",
            Some(&s.from_vpn),
        ),
    ];
    let mut out = report::table(&rows);
    let p50 = |v: &[Duration]| crate::stats::Summary::of(v).map(|s| s.p50);
    if let (Some(ours), Some(peer)) = (p50(&s.configure), p50(&s.peer)) {
        let ratio = ours.as_secs_f64() / peer.as_secs_f64();
        out.push_str(&format!(
            "ConfigureNetwork p50 / peer p50 = {ratio:.3} (target <= {RATIO_TARGET}): {}\n",
            if ratio <= RATIO_TARGET {
                "met"
            } else {
                "NOT met"
            }
        ));
    }
    out
}
