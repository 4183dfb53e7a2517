//! The ND proxy against real kernels, in three namespaces:
//!
//! ```text
//!  upstream                 middle                          guest
//!  up0 2001:db8:1::1/64 === mid-up  [ndproxyd]  mid-dn === g0 (SLAAC)
//!  radvd: 2001:db8:1::/64
//! ```
//!
//! The upstream namespace is a router (radvd advertising 2001:db8:1::/64)
//! with a host address in that prefix; the middle runs the proxy between
//! its uplink and downlink; the guest must get an address in the uplink's
//! /64 from the relayed RA and reach the upstream host (and be reached by
//! it) through the middle. `ndproxyd` is tested alone (it installs its own
//! routes); the sandboxed helper `patchpanel-ndproxy` is driven over its
//! IPC socket the way the manager would, under its seccomp filter.
//!
//! Every test makes and removes its own namespaces and processes, also on
//! failure. Waits are generous: RAs come every 3–4 s, DAD takes a second.

use std::net::Ipv6Addr;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use patchpanel_ipc::{
    Channel, ChannelError, Event, Hello, HelperError, HelperMessage, ManagerMessage, Reply,
    Request, Role, PROTOCOL_VERSION,
};
use patchpanel_tests::{bin_path, poll_until, DirectHelper, Helper, Netns, Spawned};
use serde_json::Value;

const PREFIX: &str = "2001:db8:1::";
const UPSTREAM_HOST: &str = "2001:db8:1::1";
/// Time for the guest to get a usable global address.
const SLAAC_TIMEOUT: Duration = Duration::from_secs(30);
/// Time for a state change that follows a packet or a start/stop.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(15);
/// Time a process gets to exit after SIGTERM.
const EXIT_TIMEOUT: Duration = Duration::from_secs(10);

const RADVD_CONF: &str = "interface up0 {
    AdvSendAdvert on;
    MinRtrAdvInterval 3;
    MaxRtrAdvInterval 4;
    AdvCurHopLimit 64;
    prefix 2001:db8:1::/64 { AdvOnLink on; AdvAutonomous on; };
};
";

// ---------------------------------------------------------------------------
// The three namespaces.

/// Upstream, middle and guest namespaces with radvd running upstream.
/// Field order is drop order: radvd stops before the namespaces go.
struct World {
    radvd: Option<Spawned>,
    up: Netns,
    mid: Netns,
    guest: Netns,
    dir: tempfile::TempDir,
}

impl World {
    /// Everything but the downlink, which [`World::add_downlink`] makes.
    fn new() -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("ppt-ndp-").tempdir()?;
        let mut world = World {
            radvd: None,
            up: Netns::new()?,
            mid: Netns::new()?,
            guest: Netns::new()?,
            dir,
        };
        let mid_name = world.mid.name().to_string();
        ip(
            &world.up,
            &[
                "link", "add", "up0", "type", "veth", "peer", "name", "mid-up", "netns", &mid_name,
            ],
        )?;
        ip(
            &world.up,
            &["addr", "add", &format!("{UPSTREAM_HOST}/64"), "dev", "up0"],
        )?;
        world
            .up
            .exec_ok(&["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"])?;
        ip(&world.up, &["link", "set", "up0", "up"])?;
        ip(&world.mid, &["link", "set", "mid-up", "up"])?;

        let conf = world.dir.path().join("radvd.conf");
        std::fs::write(&conf, RADVD_CONF)?;
        let radvd = find_tool("radvd")?;
        let argv = vec![
            radvd,
            "-n".into(),
            "-m".into(),
            "stderr".into(),
            "-C".into(),
            conf.display().to_string(),
            "-p".into(),
            world.dir.path().join("radvd.pid").display().to_string(),
        ];
        let log = world.dir.path().join("radvd.log");
        world.radvd = Some(Spawned::start("radvd", &world.up, &argv, log)?);
        Ok(world)
    }

    /// The veth mid-dn (middle) <-> g0 (guest), both up.
    fn add_downlink(&self) -> Result<()> {
        let guest = self.guest.name().to_string();
        ip(
            &self.mid,
            &[
                "link", "add", "mid-dn", "type", "veth", "peer", "name", "g0", "netns", &guest,
            ],
        )?;
        ip(&self.mid, &["link", "set", "mid-dn", "up"])?;
        ip(&self.guest, &["link", "set", "g0", "up"])?;
        Ok(())
    }

    fn log_path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn start_ndproxyd(&self, extra: &[&str]) -> Result<Spawned> {
        let mut argv = vec![
            bin_path("ndproxyd")?.display().to_string(),
            "mid-up".into(),
            "mid-dn".into(),
            "--log-to-stderr".into(),
            "--log-level".into(),
            "debug".into(),
        ];
        argv.extend(extra.iter().map(|s| s.to_string()));
        Spawned::start("ndproxyd", &self.mid, &argv, self.log_path("ndproxyd.log"))
    }

    /// The guest's global address in the prefix once DAD has finished.
    fn wait_guest_address(&self) -> Ipv6Addr {
        poll_until(SLAAC_TIMEOUT, || guest_global_address(&self.guest)).unwrap_or_else(|| {
            panic!(
                "the guest got no address in {PREFIX}/64; {}",
                self.describe()
            )
        })
    }

    /// Kernel state of the three namespaces, for failure messages.
    fn describe(&self) -> String {
        let mut s = String::new();
        for (name, ns) in [
            ("upstream", &self.up),
            ("middle", &self.mid),
            ("guest", &self.guest),
        ] {
            for argv in [
                &["ip", "-6", "addr"][..],
                &["ip", "-6", "route"][..],
                &["ip", "-6", "neigh"][..],
            ] {
                let out = ns
                    .exec(argv)
                    .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                    .unwrap_or_else(|e| e.to_string());
                s.push_str(&format!("\n--- {name}: {}\n{out}", argv.join(" ")));
            }
        }
        s
    }
}

fn ip(ns: &Netns, args: &[&str]) -> Result<String> {
    let mut argv = vec!["ip"];
    argv.extend_from_slice(args);
    ns.exec_ok(&argv)
}

fn ip_json(ns: &Netns, args: &[&str]) -> Result<Value> {
    let mut argv = vec!["-j"];
    argv.extend_from_slice(args);
    let out = ip(ns, &argv)?;
    if out.trim().is_empty() {
        return Ok(Value::Array(Vec::new()));
    }
    serde_json::from_str(&out).with_context(|| format!("ip -j {args:?}: {out}"))
}

fn find_tool(name: &str) -> Result<String> {
    for dir in ["/usr/sbin", "/sbin", "/usr/bin", "/usr/local/sbin"] {
        let path = PathBuf::from(dir).join(name);
        if path.is_file() {
            return Ok(path.display().to_string());
        }
    }
    bail!("{name} is not installed (scripts/bootstrap installs it)")
}

fn guest_global_address(guest: &Netns) -> Option<Ipv6Addr> {
    let v = ip_json(
        guest,
        &["-6", "addr", "show", "dev", "g0", "scope", "global"],
    )
    .ok()?;
    let prefix: Ipv6Addr = PREFIX.parse().ok()?;
    v.as_array()?
        .iter()
        .flat_map(|l| l["addr_info"].as_array().cloned().unwrap_or_default())
        .filter(|a| a["tentative"].as_bool() != Some(true))
        .filter_map(|a| a["local"].as_str()?.parse::<Ipv6Addr>().ok())
        .find(|a| a.segments()[..4] == prefix.segments()[..4])
}

fn link(ns: &Netns, name: &str) -> Value {
    let v = ip_json(ns, &["-d", "link", "show", "dev", name]).expect("ip -d -j link");
    v[0].clone()
}

fn mac_of(ns: &Netns, name: &str) -> String {
    link(ns, name)["address"]
        .as_str()
        .expect("link address")
        .to_string()
}

fn ifindex_of(ns: &Netns, name: &str) -> u32 {
    link(ns, name)["ifindex"].as_u64().expect("ifindex") as u32
}

/// The kernel's all-multicast count (`IFLA_ALLMULTI`, `ip -d link`).
fn allmulti(ns: &Netns, name: &str) -> u64 {
    link(ns, name)["allmulti"]
        .as_u64()
        .expect("`ip -d -j link` has no allmulti count: kernel without IFLA_ALLMULTI?")
}

/// Pings `to` from `ns`, retrying for a while (neighbour resolution through
/// the proxy takes a moment the first time).
fn ping(ns: &Netns, to: &str) -> bool {
    poll_until(SETTLE_TIMEOUT, || {
        let out = ns.exec(&["ping", "-6", "-c", "1", "-W", "2", to]).ok()?;
        out.status.success().then_some(())
    })
    .is_some()
}

fn neighbor_mac(ns: &Netns, dev: &str, addr: &str) -> Option<String> {
    let v = ip_json(ns, &["-6", "neigh", "show", "dev", dev]).ok()?;
    v.as_array()?
        .iter()
        .find(|n| n["dst"].as_str() == Some(addr))
        .and_then(|n| n["lladdr"].as_str().map(str::to_string))
}

fn host_route_dev(ns: &Netns, addr: &str) -> Option<String> {
    let v = ip_json(ns, &["-6", "route", "show", &format!("{addr}/128")]).ok()?;
    v.as_array()?
        .iter()
        .find(|r| r["dst"].as_str() == Some(addr))
        .and_then(|r| r["dev"].as_str().map(str::to_string))
}

fn proxy_entries(ns: &Netns) -> Vec<(String, String)> {
    let v = ip_json(ns, &["-6", "neigh", "show", "proxy"]).expect("ip neigh show proxy");
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|n| {
                    Some((
                        n["dst"].as_str()?.to_string(),
                        n["dev"].as_str()?.to_string(),
                    ))
                })
                .collect()
        })
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------
// ndproxyd

#[test]
fn ndproxyd_gives_the_guest_an_address_in_the_uplink_prefix_and_routes_both_ways() {
    let world = World::new().expect("world");
    world.add_downlink().expect("downlink");
    let _ndproxyd = world.start_ndproxyd(&[]).expect("ndproxyd");

    let guest = world.wait_guest_address();

    assert!(
        ping(&world.guest, UPSTREAM_HOST),
        "guest -> upstream fails;{}",
        world.describe()
    );
    assert!(
        ping(&world.up, &guest.to_string()),
        "upstream -> guest fails;{}",
        world.describe()
    );
}

#[test]
fn ndproxyd_relays_ras_with_cur_hop_limit_plus_one_and_its_own_mac() {
    let world = World::new().expect("world");
    world.add_downlink().expect("downlink");
    let _ndproxyd = world.start_ndproxyd(&[]).expect("ndproxyd");
    world.wait_guest_address();

    let routes = ip_json(&world.guest, &["-6", "route", "show", "default"]).expect("routes");
    let default = &routes[0];
    assert_eq!(default["protocol"], "ra", "{routes}");
    assert_eq!(
        default["metrics"][0]["hoplimit"], 65,
        "radvd says 64: {routes}"
    );
    let router = default["gateway"].as_str().expect("gateway").to_string();
    let mid_dn = mac_of(&world.mid, "mid-dn");
    assert_eq!(
        neighbor_mac(&world.guest, "g0", &router).as_deref(),
        Some(mid_dn.as_str()),
        "the router's link-layer address must be the middle's downlink;{}",
        world.describe()
    );
}

#[test]
fn ndproxyd_makes_upstream_resolve_the_guest_to_the_middles_mac() {
    let world = World::new().expect("world");
    world.add_downlink().expect("downlink");
    let _ndproxyd = world.start_ndproxyd(&[]).expect("ndproxyd");
    let guest = world.wait_guest_address().to_string();

    assert!(
        ping(&world.up, &guest),
        "upstream -> guest fails;{}",
        world.describe()
    );

    let mid_up = mac_of(&world.mid, "mid-up");
    assert_eq!(
        neighbor_mac(&world.up, "up0", &guest).as_deref(),
        Some(mid_up.as_str()),
        "{}",
        world.describe()
    );
}

#[test]
fn ndproxyd_installs_a_host_route_and_a_proxy_entry_per_guest_and_removes_them_on_sigterm() {
    let world = World::new().expect("world");
    world.add_downlink().expect("downlink");
    let mut ndproxyd = world.start_ndproxyd(&[]).expect("ndproxyd");
    let guest = world.wait_guest_address().to_string();

    let route = poll_until(SETTLE_TIMEOUT, || host_route_dev(&world.mid, &guest));
    assert_eq!(route.as_deref(), Some("mid-dn"), "{}", world.describe());
    let entry = (guest.clone(), "mid-up".to_string());
    assert!(
        poll_until(SETTLE_TIMEOUT, || proxy_entries(&world.mid)
            .contains(&entry)
            .then_some(()))
        .is_some(),
        "no proxy entry for {guest} on mid-up: {:?}",
        proxy_entries(&world.mid)
    );

    let status = ndproxyd.terminate().expect("ndproxyd exits");
    assert!(status.success(), "ndproxyd exited with {status}");
    assert_eq!(
        host_route_dev(&world.mid, &guest),
        None,
        "{}",
        world.describe()
    );
    assert!(!proxy_entries(&world.mid).contains(&entry));
}

#[test]
fn ndproxyd_holds_allmulti_on_both_links_while_running() {
    let world = World::new().expect("world");
    world.add_downlink().expect("downlink");
    assert_eq!(allmulti(&world.mid, "mid-up"), 0);
    assert_eq!(allmulti(&world.mid, "mid-dn"), 0);

    let mut ndproxyd = world.start_ndproxyd(&[]).expect("ndproxyd");
    let held = poll_until(SETTLE_TIMEOUT, || {
        (allmulti(&world.mid, "mid-up") >= 1 && allmulti(&world.mid, "mid-dn") >= 1).then_some(())
    });
    assert!(held.is_some(), "allmulti not set: {}", ndproxyd.log());

    ndproxyd.terminate().expect("ndproxyd exits");
    assert_eq!(allmulti(&world.mid, "mid-up"), 0);
    assert_eq!(allmulti(&world.mid, "mid-dn"), 0);
}

#[test]
fn ndproxyd_sets_the_uplink_sysctls() {
    let world = World::new().expect("world");
    world.add_downlink().expect("downlink");
    let ndproxyd = world.start_ndproxyd(&[]).expect("ndproxyd");

    let read = |key: &str| {
        world
            .mid
            .exec_ok(&["sysctl", "-n", key])
            .map(|s| s.trim().to_string())
            .unwrap_or_default()
    };
    let set = poll_until(SETTLE_TIMEOUT, || {
        (read("net.ipv6.conf.mid-up.accept_ra") == "2"
            && read("net.ipv6.conf.all.forwarding") == "1"
            && read("net.ipv6.conf.mid-up.proxy_ndp") == "1")
            .then_some(())
    });
    assert!(set.is_some(), "sysctls not set; log:\n{}", ndproxyd.log());
}

#[test]
fn ndproxyd_waits_for_a_downlink_that_appears_later() {
    let world = World::new().expect("world");
    let mut ndproxyd = world
        .start_ndproxyd(&["--wait-secs", "60"])
        .expect("ndproxyd");
    let waiting = poll_until(SETTLE_TIMEOUT, || {
        ndproxyd.log().contains("waiting").then_some(())
    });
    assert!(waiting.is_some(), "log:\n{}", ndproxyd.log());

    world.add_downlink().expect("downlink");

    let guest = world.wait_guest_address();
    assert!(ping(&world.guest, UPSTREAM_HOST), "{}", world.describe());
    assert!(ping(&world.up, &guest.to_string()), "{}", world.describe());
    assert_eq!(ndproxyd.try_exit().expect("poll"), None);
}

#[test]
fn ndproxyd_gives_up_when_the_downlink_never_appears() {
    let world = World::new().expect("world");
    let mut ndproxyd = world
        .start_ndproxyd(&["--wait-secs", "1"])
        .expect("ndproxyd");

    let status = poll_until(SETTLE_TIMEOUT, || ndproxyd.try_exit().ok().flatten());

    let status = status.unwrap_or_else(|| panic!("still running; log:\n{}", ndproxyd.log()));
    assert!(!status.success());
    assert!(
        ndproxyd.log().contains("did not appear"),
        "{}",
        ndproxyd.log()
    );
}

#[test]
fn ndproxyd_refuses_a_missing_uplink() {
    let world = World::new().expect("world");
    let argv = vec![
        bin_path("ndproxyd")
            .expect("ndproxyd")
            .display()
            .to_string(),
        "nosuch0".into(),
        "mid-dn".into(),
        "--log-to-stderr".into(),
    ];
    let mut ndproxyd =
        Spawned::start("ndproxyd", &world.mid, &argv, world.log_path("nd.log")).expect("start");

    let status = poll_until(SETTLE_TIMEOUT, || ndproxyd.try_exit().ok().flatten());

    let status = status.expect("ndproxyd keeps running without its uplink");
    assert!(!status.success());
    assert!(ndproxyd.log().contains("nosuch0"), "{}", ndproxyd.log());
}

// ---------------------------------------------------------------------------
// The sandboxed helper, driven as the manager drives it.

/// The manager's end of a helper's IPC socket.
struct Manager {
    channel: Channel,
    next_id: u64,
    events: Vec<Event>,
}

impl Manager {
    fn connect(helper: &DirectHelper) -> Result<Self> {
        let fd = helper
            .ipc()
            .context("IPC closed")?
            .as_fd()
            .try_clone_to_owned()
            .context("dup IPC fd")?;
        let channel = Channel::from_fd(fd)?;
        channel.set_nonblocking(true)?;
        let mut m = Manager {
            channel,
            next_id: 1,
            events: Vec::new(),
        };
        let hello = m.recv(SETTLE_TIMEOUT)?;
        match hello {
            HelperMessage::Hello(h) if h.role == Role::NdProxy => {}
            other => bail!("expected the helper's Hello, got {other:?}"),
        }
        m.send(&ManagerMessage::Hello(Hello {
            protocol_version: PROTOCOL_VERSION,
            role: Role::Manager,
        }))?;
        Ok(m)
    }

    fn send(&self, msg: &ManagerMessage) -> Result<()> {
        self.channel.send(msg, &[])?;
        Ok(())
    }

    /// The next message, or `None` after `timeout`.
    fn try_recv(&mut self, timeout: Duration) -> Result<Option<HelperMessage>> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.channel.recv::<HelperMessage>() {
                Ok(r) => return Ok(Some(r.msg)),
                Err(ChannelError::WouldBlock) => {}
                Err(e) => bail!("helper channel: {e}"),
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn recv(&mut self, timeout: Duration) -> Result<HelperMessage> {
        self.try_recv(timeout)?
            .context("no message from the helper")
    }

    fn request(&mut self, body: Request) -> Result<Result<Reply, HelperError>> {
        let id = self.next_id;
        self.next_id += 1;
        self.send(&ManagerMessage::Request { id, body })?;
        loop {
            match self.recv(SETTLE_TIMEOUT)? {
                HelperMessage::Response { id: got, result } if got == id => return Ok(result),
                HelperMessage::Event(e) => self.events.push(e),
                other => bail!("unexpected {other:?}"),
            }
        }
    }

    /// Waits for a NeighborDetected event matching `want`.
    fn wait_neighbor(&mut self, want: impl Fn(u32, Ipv6Addr) -> bool) -> Option<(u32, Ipv6Addr)> {
        let matches = |e: &Event| match *e {
            Event::NeighborDetected { ifindex, addr } => {
                let addr = Ipv6Addr::from(addr);
                want(ifindex, addr).then_some((ifindex, addr))
            }
            _ => None,
        };
        if let Some(found) = self.events.iter().find_map(matches) {
            return Some(found);
        }
        poll_until(SLAAC_TIMEOUT, || {
            match self.try_recv(Duration::from_millis(200)) {
                Ok(Some(HelperMessage::Event(e))) => {
                    let found = matches(&e);
                    self.events.push(e);
                    found
                }
                _ => None,
            }
        })
    }
}

fn start_request(up: u32, down: u32) -> Request {
    Request::NdProxyStart {
        uplink_ifindex: up,
        downlink_ifindex: down,
    }
}

fn stop_request(up: u32, down: u32) -> Request {
    Request::NdProxyStop {
        uplink_ifindex: up,
        downlink_ifindex: down,
    }
}

/// The world with the middle prepared as the manager would (forwarding on,
/// accept_ra=2 on the uplink) and the helper running there under its
/// enforced seccomp filter.
fn world_with_helper() -> (World, DirectHelper, Manager, u32, u32) {
    let world = World::new().expect("world");
    world.add_downlink().expect("downlink");
    world
        .mid
        .exec_ok(&["sysctl", "-qw", "net.ipv6.conf.mid-up.accept_ra=2"])
        .expect("accept_ra");
    world
        .mid
        .exec_ok(&["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"])
        .expect("forwarding");
    let helper = DirectHelper::spawn(&world.mid, Helper::NdProxy, &[]).expect("helper");
    let manager =
        Manager::connect(&helper).unwrap_or_else(|e| panic!("{e:#}; log:\n{}", helper.log()));
    let up = ifindex_of(&world.mid, "mid-up");
    let down = ifindex_of(&world.mid, "mid-dn");
    (world, helper, manager, up, down)
}

#[test]
fn helper_reports_the_guest_and_relays_both_ways_once_the_route_is_in() {
    let (world, mut helper, mut manager, up, down) = world_with_helper();

    let reply = manager.request(start_request(up, down)).expect("request");
    assert_eq!(reply, Ok(Reply::Done), "log:\n{}", helper.log());
    let guest = world.wait_guest_address();
    let seen = manager.wait_neighbor(|i, a| i == down && a == guest);
    assert!(
        seen.is_some(),
        "no NeighborDetected for {guest}: {:?}; log:\n{}",
        manager.events,
        helper.log()
    );
    // What the manager does on NeighborDetected, through the writer.
    ip(
        &world.mid,
        &[
            "-6",
            "route",
            "replace",
            &format!("{guest}/128"),
            "dev",
            "mid-dn",
        ],
    )
    .expect("route");

    assert!(ping(&world.guest, UPSTREAM_HOST), "{}", world.describe());
    assert!(ping(&world.up, &guest.to_string()), "{}", world.describe());
    assert_eq!(
        helper.try_exit_status().expect("poll"),
        None,
        "log:\n{}",
        helper.log()
    );
}

#[test]
fn helper_start_and_stop_are_idempotent_and_drive_allmulti() {
    let (world, mut helper, mut manager, up, down) = world_with_helper();

    for _ in 0..2 {
        assert_eq!(
            manager.request(start_request(up, down)).expect("start"),
            Ok(Reply::Done)
        );
    }
    assert_eq!(allmulti(&world.mid, "mid-up"), 1);
    assert_eq!(allmulti(&world.mid, "mid-dn"), 1);
    for _ in 0..2 {
        assert_eq!(
            manager.request(stop_request(up, down)).expect("stop"),
            Ok(Reply::Done)
        );
    }
    assert_eq!(allmulti(&world.mid, "mid-up"), 0);
    assert_eq!(allmulti(&world.mid, "mid-dn"), 0);
    assert_eq!(
        helper.try_exit_status().expect("poll"),
        None,
        "log:\n{}",
        helper.log()
    );
}

#[test]
fn helper_refuses_unknown_or_identical_links() {
    let (_world, mut helper, mut manager, up, _down) = world_with_helper();

    let missing = manager.request(start_request(up, 9999)).expect("request");
    assert!(
        matches!(missing, Err(HelperError::Refused(_))),
        "{missing:?}"
    );
    let same = manager.request(start_request(up, up)).expect("request");
    assert!(matches!(same, Err(HelperError::Refused(_))), "{same:?}");
    assert_eq!(
        helper.try_exit_status().expect("poll"),
        None,
        "log:\n{}",
        helper.log()
    );
}

#[test]
fn helper_releases_allmulti_when_the_manager_goes_away() {
    let (world, mut helper, mut manager, up, down) = world_with_helper();
    assert_eq!(
        manager.request(start_request(up, down)).expect("start"),
        Ok(Reply::Done)
    );
    assert_eq!(allmulti(&world.mid, "mid-dn"), 1);

    drop(manager);
    helper.close_ipc();
    let status = helper.wait_exit(EXIT_TIMEOUT).expect("wait");

    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}; log:\n{}",
        helper.log()
    );
    assert_eq!(allmulti(&world.mid, "mid-up"), 0);
    assert_eq!(allmulti(&world.mid, "mid-dn"), 0);
}
