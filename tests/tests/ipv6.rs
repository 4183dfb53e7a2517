//! IPv6 for guests through the daemon's ndproxy helper: the upstream
//! namespace runs radvd advertising 2001:db8:1::/64; a connected namespace
//! gets a SLAAC address in it through the proxy, ping6 works both ways, the
//! upstream host sees the host's MAC for the guest, and a killed ndproxy
//! comes back without any new D-Bus call.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use patchpanel_client::Client;
use patchpanel_proto::ConnectNamespaceRequest;
use patchpanel_tests::world::World;
use patchpanel_tests::{poll_until, Helper};

const UPSTREAM_HOST: &str = "2001:db8:1::1";
const PREFIX: &str = "2001:db8:1:";
const SLAAC_TIMEOUT: Duration = Duration::from_secs(30);

const RADVD_CONF: &str = "interface up0 {
    AdvSendAdvert on;
    MinRtrAdvInterval 3;
    MaxRtrAdvInterval 4;
    prefix 2001:db8:1::/64 { AdvOnLink on; AdvAutonomous on; };
};
";

/// radvd in the upstream namespace, killed on drop; its config and pid
/// file live in `_dir`, removed after it.
struct Radvd {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for Radvd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn radvd(world: &World) -> Radvd {
    let up = &world.internet.upstream;
    up.exec_ok(&[
        "ip",
        "addr",
        "add",
        &format!("{UPSTREAM_HOST}/64"),
        "dev",
        "up0",
        "nodad",
    ])
    .expect("upstream v6");
    up.exec_ok(&["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"])
        .expect("forwarding");
    let dir = tempfile::tempdir().expect("dir");
    let conf = dir.path().join("radvd.conf");
    std::fs::write(&conf, RADVD_CONF).expect("conf");
    let child = Command::new("nsenter")
        .arg(format!("--net={}", up.path().display()))
        .args(["radvd", "-n", "-m", "stderr", "-C"])
        .arg(&conf)
        .arg("-p")
        .arg(dir.path().join("radvd.pid"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("radvd");
    Radvd { child, _dir: dir }
}

/// The global address in 2001:db8:1::/64 of `dev` inside named netns `ns`.
fn global_address(ns: &str, dev: &str) -> Option<String> {
    let out = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{ns}"))
        .args([
            "ip", "-6", "-j", "addr", "show", "dev", dev, "scope", "global",
        ])
        .output()
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    v.get(0)?["addr_info"]
        .as_array()?
        .iter()
        .filter_map(|a| a["local"].as_str())
        .find(|a| a.starts_with(PREFIX) && !a.contains("tentative"))
        .map(String::from)
}

fn ping6(ns: &str, to: &str) -> bool {
    Command::new("nsenter")
        .arg(format!("--net=/run/netns/{ns}"))
        .args(["ping", "-6", "-c", "1", "-W", "2", to])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

fn eth0_mac(world: &World) -> String {
    let j = world
        .netns
        .exec_ok(&["ip", "-j", "link", "show", "eth0"])
        .expect("ip");
    let v: serde_json::Value = serde_json::from_str(&j).expect("json");
    v[0]["address"].as_str().expect("mac").to_string()
}

#[test]
fn a_connected_namespace_gets_a_global_ipv6_address_through_the_proxy() {
    let world = World::start().expect("world");
    let _radvd = radvd(&world);
    let (ns, _lifeline) = Client::connect_to(world.bus.address())
        .expect("client")
        .connect_namespace(&ConnectNamespaceRequest {
            pid: -1,
            ..Default::default()
        })
        .expect("connect");
    let guest = poll_until(SLAAC_TIMEOUT, || {
        global_address(&ns.netns_name, &ns.peer_ifname)
    })
    .unwrap_or_else(|| panic!("no SLAAC address in the guest\n{}", world.daemon.log()));
    let up = world.internet.upstream.name().to_string();
    let reachable = poll_until(Duration::from_secs(15), || {
        (ping6(&ns.netns_name, UPSTREAM_HOST) && ping6(&up, &guest)).then_some(())
    });
    assert!(
        reachable.is_some(),
        "ping6 guest <-> upstream failed for {guest}"
    );
    let neigh = world
        .internet
        .upstream
        .exec_ok(&["ip", "-6", "neigh", "show", &guest])
        .expect("neigh");
    assert!(
        neigh.contains(&eth0_mac(&world)),
        "upstream must resolve the guest to the host's MAC: {neigh}"
    );
    let routes = world
        .netns
        .exec_ok(&["ip", "-6", "route", "show", &format!("{guest}/128")])
        .expect("routes");
    assert!(
        routes.contains(&ns.host_ifname) && routes.contains("proto 157"),
        "{routes}"
    );
}

#[test]
fn a_killed_ndproxy_comes_back_and_proxying_resumes_without_a_new_call() {
    let world = World::start().expect("world");
    let _radvd = radvd(&world);
    let (ns, _lifeline) = Client::connect_to(world.bus.address())
        .expect("client")
        .connect_namespace(&ConnectNamespaceRequest {
            pid: -1,
            ..Default::default()
        })
        .expect("connect");
    let guest = poll_until(SLAAC_TIMEOUT, || {
        global_address(&ns.netns_name, &ns.peer_ifname)
    })
    .expect("SLAAC address");
    let old = world.daemon.tree().expect("tree").helper(Helper::NdProxy);
    // SAFETY: kill takes integers only.
    unsafe { libc::kill(old as i32, libc::SIGKILL) };
    let new = poll_until(Duration::from_secs(5), || {
        let p = world.daemon.tree().ok()?.helper(Helper::NdProxy);
        (p != old).then_some(p)
    })
    .expect("ndproxy respawned");
    assert_ne!(new, old);
    // The upstream host forgets the guest; resolving it again needs the
    // proxy to answer the neighbour solicitation.
    let up = world.internet.upstream.name().to_string();
    world
        .internet
        .upstream
        .exec_ok(&["ip", "-6", "neigh", "flush", "dev", "up0"])
        .expect("flush");
    let back = poll_until(Duration::from_secs(15), || ping6(&up, &guest).then_some(()));
    assert!(
        back.is_some(),
        "no IPv6 to the guest after ndproxy respawned"
    );
}

#[test]
fn a_vm_behind_its_tap_gets_a_global_ipv6_address_through_the_proxy() {
    let world = World::start().expect("world");
    let _radvd = radvd(&world);
    let vm = Client::connect_to(world.bus.address())
        .expect("client")
        .terminavm_startup(7)
        .expect("TerminaVmStartup");
    let host = patchpanel_proto::ipv4_from_addr4(&vm.gateway_ipv4_address).expect("gateway");
    let guest_v4 = patchpanel_proto::ipv4_from_addr4(&vm.ipv4_address).expect("address");
    let fake = patchpanel_tests::vm::FakeVm::boot(
        &world.netns,
        &vm.tap_device_ifname,
        "eth0",
        &guest_v4.to_string(),
        30,
        &host.to_string(),
    )
    .expect("fake VM");
    let guest_ns = fake.netns().name().to_string();
    let guest = poll_until(SLAAC_TIMEOUT, || global_address(&guest_ns, "eth0"))
        .unwrap_or_else(|| panic!("no SLAAC address in the VM\n{}", world.daemon.log()));
    let up = world.internet.upstream.name().to_string();
    let reachable = poll_until(Duration::from_secs(15), || {
        (ping6(&guest_ns, UPSTREAM_HOST) && ping6(&up, &guest)).then_some(())
    });
    assert!(
        reachable.is_some(),
        "ping6 VM <-> upstream failed for {guest}"
    );
    drop(fake);
    Client::connect_to(world.bus.address())
        .expect("client")
        .terminavm_shutdown(7)
        .expect("shutdown");
}
