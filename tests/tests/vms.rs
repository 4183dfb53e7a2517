//! Termina and Parallels VMs end to end: a real daemon, the persistent TAP
//! it makes opened by a fake VM (a relay into a guest namespace, as crosvm
//! would), real packets through patchpanel's NAT, signals, refusals, and
//! shutdowns that leave nothing behind.

use std::net::Ipv4Addr;
use std::time::Duration;

use patchpanel_client::{Client, Error as ClientError};
use patchpanel_proto::network_device::GuestType;
use patchpanel_proto::network_device_changed_signal::Event;
use patchpanel_proto::{ipv4_from_addr4, ipv4_from_net_u32};
use patchpanel_tests::vm::FakeVm;
use patchpanel_tests::world::{
    kernel_snapshot, settled_kernel_snapshot, World, REMOTE_HOST, UPLINK_ADDR,
};
use patchpanel_tests::{poll_until, DaemonOptions};

const SIGNAL_TIMEOUT: Duration = Duration::from_secs(10);

fn client(world: &World) -> Client {
    Client::connect_to(world.bus.address()).expect("client")
}

fn addr4(bytes: &[u8]) -> Ipv4Addr {
    ipv4_from_addr4(bytes).expect("4-byte address")
}

/// Fails with the lines that differ between two kernel snapshots.
fn assert_same_kernel_state(after: &str, before: &str) {
    if after == before {
        return;
    }
    let b: std::collections::BTreeSet<&str> = before.lines().collect();
    let a: std::collections::BTreeSet<&str> = after.lines().collect();
    let gone: Vec<&&str> = b.difference(&a).collect();
    let new: Vec<&&str> = a.difference(&b).collect();
    panic!("kernel state changed:\n  missing now: {gone:#?}\n  new: {new:#?}");
}

fn ping(vm: &FakeVm, to: &str) -> bool {
    // The first packets may wait for ARP on both sides of the relay.
    poll_until(Duration::from_secs(10), || {
        vm.exec(&["ping", "-c", "1", "-W", "2", to])
            .ok()
            .filter(|o| o.status.success())
            .map(|_| ())
    })
    .is_some()
}

/// A server process, killed on drop (also when the test fails).
struct Server(std::process::Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The address the upstream host sees for a TCP connection from the VM.
fn peer_seen_upstream(world: &World, vm: &FakeVm, port: u16) -> String {
    let server = format!(
        "import socket\n\
         s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
         s.bind(('{REMOTE_HOST}',{port})); s.listen(1); s.settimeout(20)\n\
         print('listening', flush=True)\n\
         c,a=s.accept(); print(a[0], flush=True); c.close()\n"
    );
    let mut child = Server(
        std::process::Command::new("ip")
            .args(["netns", "exec", world.internet.upstream.name()])
            .args(["/usr/bin/python3", "-c", &server])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("server"),
    );
    let mut out = std::io::BufReader::new(child.0.stdout.take().expect("stdout"));
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).expect("read");
    assert_eq!(line.trim(), "listening");
    let connect = format!(
        "import socket\nsocket.create_connection(('{REMOTE_HOST}',{port}),timeout=10).close()\n"
    );
    let status = vm
        .exec(&["/usr/bin/python3", "-c", &connect])
        .expect("client");
    let mut seen = String::new();
    std::io::BufRead::read_line(&mut out, &mut seen).expect("read");
    drop(child);
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    seen.trim().to_string()
}

#[test]
fn a_termina_vm_reaches_the_upstream_host_through_nat() {
    let world = World::start().expect("world");
    let resp = client(&world)
        .terminavm_startup(7)
        .expect("TerminaVmStartup");

    assert_eq!(resp.tap_device_ifname, "vmtap0");
    let subnet = resp.ipv4_subnet.as_ref().expect("subnet");
    assert_eq!(subnet.addr_v4(), Some(Ipv4Addr::new(100, 115, 92, 24)));
    assert_eq!(subnet.prefix_len, 30);
    assert_eq!(
        addr4(&resp.gateway_ipv4_address),
        Ipv4Addr::new(100, 115, 92, 25)
    );
    assert_eq!(addr4(&resp.ipv4_address), Ipv4Addr::new(100, 115, 92, 26));
    let lxd = resp.container_ipv4_subnet.as_ref().expect("LXD subnet");
    assert_eq!(lxd.addr_v4(), Some(Ipv4Addr::new(100, 115, 92, 192)));
    assert_eq!(lxd.prefix_len, 28);
    assert_eq!(
        addr4(&resp.container_ipv4_address),
        Ipv4Addr::new(100, 115, 92, 193)
    );

    let vm = FakeVm::boot(
        &world.netns,
        &resp.tap_device_ifname,
        "eth0",
        "100.115.92.26",
        30,
        "100.115.92.25",
    )
    .expect("vm");
    assert!(ping(&vm, REMOTE_HOST), "the VM cannot reach {REMOTE_HOST}");
    assert_eq!(
        peer_seen_upstream(&world, &vm, 8081),
        UPLINK_ADDR,
        "the upstream side must see the uplink address"
    );
}

#[test]
fn a_termina_tap_belongs_to_crosvm_and_routes_the_lxd_subnet_through_the_vm() {
    let world = World::start().expect("world");
    let resp = client(&world)
        .terminavm_startup(3)
        .expect("TerminaVmStartup");
    let tap = &resp.tap_device_ifname;

    let shown = world
        .netns
        .exec_ok(&["ip", "-j", "-d", "link", "show", "dev", tap])
        .expect("ip link");
    let v: serde_json::Value = serde_json::from_str(&shown).expect("json");
    let info = &v[0]["linkinfo"]["info_data"];
    assert_eq!(info["type"], "tap", "{shown}");
    assert_eq!(info["persist"], true, "{shown}");
    assert_eq!(info["pi"], false, "{shown}");
    // `ip` names the owner when it resolves the uid.
    assert_eq!(info["user"], "crosvm", "{shown}");
    assert_eq!(v[0]["ifalias"], "patchpanel", "{shown}");
    let routes = world
        .netns
        .exec_ok(&["ip", "route", "show", "100.115.92.192/28"])
        .expect("ip route");
    assert!(
        routes.contains(&format!("via 100.115.92.26 dev {tap}")) && routes.contains("proto 157"),
        "{routes}"
    );
}

#[test]
fn termina_shutdown_leaves_nothing_behind_and_frees_the_subnets() {
    let world = World::start().expect("world");
    let c = client(&world);
    let before = kernel_snapshot(&world.netns).expect("snapshot");
    let first = c.terminavm_startup(9).expect("TerminaVmStartup");
    let vm = FakeVm::boot(
        &world.netns,
        &first.tap_device_ifname,
        "eth0",
        "100.115.92.26",
        30,
        "100.115.92.25",
    )
    .expect("vm");
    assert!(ping(&vm, REMOTE_HOST));
    drop(vm);

    c.terminavm_shutdown(9).expect("TerminaVmShutdown");

    assert_same_kernel_state(&settled_kernel_snapshot(&world.netns, &before), &before);
    assert!(c.get_devices().expect("GetDevices").is_empty());
    let again = c.terminavm_startup(10).expect("TerminaVmStartup");
    assert_eq!(again.tap_device_ifname, first.tap_device_ifname);
    assert_eq!(again.ipv4_subnet, first.ipv4_subnet);
    assert_eq!(again.container_ipv4_subnet, first.container_ipv4_subnet);
}

#[test]
fn vms_are_listed_and_signalled() {
    let world = World::start().expect("world");
    let watcher = client(&world);
    let mut changes = watcher.watch_device_changes().expect("watch");
    let c = client(&world);
    let termina = c.terminavm_startup(5).expect("TerminaVmStartup");
    let parallels = c.parallelsvm_startup(77, 0).expect("ParallelsVmStartup");

    for (tap, kind) in [
        (&termina.tap_device_ifname, GuestType::TerminaVm),
        (&parallels.tap_device_ifname, GuestType::ParallelsVm),
    ] {
        let added = changes
            .next_timeout(SIGNAL_TIMEOUT)
            .expect("watch")
            .expect("no DEVICE_ADDED");
        assert_eq!(added.event(), Event::DeviceAdded);
        let d = added.device.expect("device");
        assert_eq!(&d.ifname, tap);
        assert_eq!(d.guest_type(), kind);
    }
    let devices = c.get_devices().expect("GetDevices");
    assert_eq!(devices.len(), 2, "{devices:?}");
    let t = devices
        .iter()
        .find(|d| d.guest_type() == GuestType::TerminaVm)
        .expect("termina");
    assert_eq!(t.ifname, termina.tap_device_ifname);
    assert_eq!(t.phys_ifname, termina.tap_device_ifname);
    assert_eq!(t.guest_ifname, "");
    assert_eq!(ipv4_from_net_u32(t.ipv4_addr), addr4(&termina.ipv4_address));
    assert_eq!(
        ipv4_from_net_u32(t.host_ipv4_addr),
        addr4(&termina.gateway_ipv4_address)
    );
    assert_eq!(t.ipv4_subnet, termina.ipv4_subnet);

    c.terminavm_shutdown(5).expect("TerminaVmShutdown");
    let removed = changes
        .next_timeout(SIGNAL_TIMEOUT)
        .expect("watch")
        .expect("no DEVICE_REMOVED");
    assert_eq!(removed.event(), Event::DeviceRemoved);
    assert_eq!(
        removed.device.expect("device").ifname,
        termina.tap_device_ifname
    );
    c.parallelsvm_shutdown(77).expect("ParallelsVmShutdown");
    let removed = changes
        .next_timeout(SIGNAL_TIMEOUT)
        .expect("watch")
        .expect("no DEVICE_REMOVED");
    assert_eq!(removed.event(), Event::DeviceRemoved);
    assert!(c.get_devices().expect("GetDevices").is_empty());
}

#[test]
fn a_parallels_vm_reaches_the_upstream_host_and_keeps_an_explicit_subnet() {
    let world = World::start().expect("world");
    let c = client(&world);
    let before = kernel_snapshot(&world.netns).expect("snapshot");
    // PluginVmStartup and ParallelsVmStartup are the same method.
    let resp = c.pluginvm_startup(1234, 3).expect("PluginVmStartup");
    let subnet = resp.ipv4_subnet.as_ref().expect("subnet");
    assert_eq!(subnet.addr_v4(), Some(Ipv4Addr::new(100, 115, 93, 16)));
    assert_eq!(subnet.prefix_len, 29);
    assert_eq!(addr4(&resp.ipv4_address), Ipv4Addr::new(100, 115, 93, 18));
    let shown = world
        .netns
        .exec_ok(&["ip", "-j", "link", "show", "dev", &resp.tap_device_ifname])
        .expect("ip link");
    assert!(
        shown.contains("\"address\":\"42:37:05:13:17:03\""),
        "an explicit index gives the stable MAC of that index: {shown}"
    );

    let vm = FakeVm::boot(
        &world.netns,
        &resp.tap_device_ifname,
        "eth0",
        "100.115.93.18",
        29,
        "100.115.93.17",
    )
    .expect("vm");
    assert!(ping(&vm, REMOTE_HOST), "the VM cannot reach {REMOTE_HOST}");
    assert_eq!(peer_seen_upstream(&world, &vm, 8082), UPLINK_ADDR);
    drop(vm);

    // Started again with the same id: the old one goes first, and the
    // index is free again for it.
    let again = c.parallelsvm_startup(1234, 3).expect("ParallelsVmStartup");
    assert_eq!(again.ipv4_subnet, resp.ipv4_subnet);
    assert_eq!(c.get_devices().expect("GetDevices").len(), 1);
    // Any free subnet: the first one.
    let other = c.parallelsvm_startup(99, 0).expect("ParallelsVmStartup");
    assert_eq!(
        other.ipv4_subnet.as_ref().and_then(|s| s.addr_v4()),
        Some(Ipv4Addr::new(100, 115, 93, 0))
    );
    assert_ne!(other.tap_device_ifname, again.tap_device_ifname);
    c.parallelsvm_shutdown(1234).expect("ParallelsVmShutdown");
    c.pluginvm_shutdown(99).expect("PluginVmShutdown");
    assert_same_kernel_state(&settled_kernel_snapshot(&world.netns, &before), &before);
}

fn assert_refused(
    world: &World,
    call: impl FnOnce(&Client) -> Result<(), ClientError>,
    needle: &str,
) {
    let c = client(world);
    let before = kernel_snapshot(&world.netns).expect("snapshot");
    match call(&c) {
        Err(ClientError::InvalidArgument(m)) => {
            assert!(m.contains(needle), "{needle:?} not in {m:?}")
        }
        other => panic!("expected InvalidArgument containing {needle:?}, got {other:?}"),
    }
    assert_same_kernel_state(&settled_kernel_snapshot(&world.netns, &before), &before);
}

#[test]
fn bad_vm_requests_are_refused_and_change_nothing() {
    let world = World::start().expect("world");
    let running = client(&world)
        .parallelsvm_startup(1, 2)
        .expect("ParallelsVmStartup");
    let devices = client(&world).get_devices().expect("GetDevices");

    assert_refused(
        &world,
        |c| c.terminavm_startup(0).map(|_| ()),
        "0 is not a valid id",
    );
    assert_refused(
        &world,
        |c| c.parallelsvm_startup(0, 0).map(|_| ()),
        "0 is not a valid id",
    );
    assert_refused(
        &world,
        |c| c.parallelsvm_startup(5, -1).map(|_| ()),
        "negative",
    );
    assert_refused(
        &world,
        |c| c.parallelsvm_startup(5, 33).map(|_| ()),
        "subnet_index",
    );
    assert_refused(
        &world,
        |c| c.parallelsvm_startup(5, 2).map(|_| ()),
        "subnet_index",
    );
    assert_refused(
        &world,
        |c| c.terminavm_shutdown(42),
        "no Termina VM with id 42",
    );
    assert_refused(
        &world,
        |c| c.parallelsvm_shutdown(42),
        "no Parallels VM with id 42",
    );
    // A Termina VM and a Parallels VM with the same id are different VMs.
    assert_refused(
        &world,
        |c| c.terminavm_shutdown(1),
        "no Termina VM with id 1",
    );
    assert_refused(
        &world,
        |c| c.arcvm_startup(0).map(|_| ()),
        "0 is not a valid id",
    );

    assert_eq!(client(&world).get_devices().expect("GetDevices"), devices);
    assert!(!running.tap_device_ifname.is_empty());
}

#[test]
fn a_clean_stop_removes_every_vm() {
    let mut world = World::start_with(DaemonOptions::default()).expect("world");
    let c = client(&world);
    let termina = c.terminavm_startup(8).expect("TerminaVmStartup");
    let parallels = c.parallelsvm_startup(8, 0).expect("ParallelsVmStartup");
    let status = world
        .daemon
        .stop_cleanly(Duration::from_secs(10))
        .expect("stop");
    assert!(status.success(), "{status:?}");
    let links = world.netns.exec_ok(&["ip", "-o", "link"]).expect("ip");
    for tap in [&termina.tap_device_ifname, &parallels.tap_device_ifname] {
        assert!(!links.contains(tap.as_str()), "{tap} survived: {links}");
    }
    let routes = world
        .netns
        .exec_ok(&["ip", "route", "show", "table", "all"])
        .expect("ip route");
    assert!(!routes.contains("proto 157"), "{routes}");
}

#[test]
fn a_startup_that_fails_halfway_is_rolled_back_and_frees_its_addresses() {
    let world = World::start().expect("world");
    let c = client(&world);
    // A route of the host's own to the subnet the LXD container would get:
    // the TAP, its address and link state are made before the writer
    // refuses to replace that route, so all of them must be undone.
    world
        .netns
        .exec_ok(&["ip", "route", "add", "100.115.92.192/28", "dev", "eth0"])
        .expect("host route");
    let before = kernel_snapshot(&world.netns).expect("snapshot");

    let result = c.terminavm_startup(5);

    assert!(
        matches!(
            &result,
            Err(ClientError::Failed(m) | ClientError::InvalidArgument(m))
                if m.contains("not patchpanel's")
        ),
        "{result:?}"
    );
    assert_same_kernel_state(&settled_kernel_snapshot(&world.netns, &before), &before);
    assert!(c.get_devices().expect("GetDevices").is_empty());

    world
        .netns
        .exec_ok(&["ip", "route", "del", "100.115.92.192/28", "dev", "eth0"])
        .expect("host route");
    let resp = c.terminavm_startup(5).expect("TerminaVmStartup");
    assert_eq!(resp.tap_device_ifname, "vmtap0");
    assert_eq!(
        resp.ipv4_subnet.as_ref().and_then(|s| s.addr_v4()),
        Some(Ipv4Addr::new(100, 115, 92, 24)),
        "the failed startup returned its subnet"
    );
}
