//! ARC end to end, container and VM: a real daemon with an uplink, a fake
//! container (a process in its own namespace) or a fake ARCVM (relays on
//! its TAPs), real packets out through NAT and in through the automatic
//! DNAT, devices that follow the uplink, signals, refusals, and shutdowns
//! that leave nothing behind.

use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use patchpanel_client::{Client, Error as ClientError};
use patchpanel_proto::network_device::{GuestType, TechnologyType};
use patchpanel_proto::network_device_changed_signal::Event;
use patchpanel_proto::{ipv4_from_addr4, ipv4_from_net_u32, NetworkDevice};
use patchpanel_tests::vm::{FakeContainer, FakeVm};
use patchpanel_tests::world::{
    kernel_snapshot, settled_kernel_snapshot, World, REMOTE_HOST, UPLINK_ADDR,
};
use patchpanel_tests::{poll_until, Netns};

const SIGNAL_TIMEOUT: Duration = Duration::from_secs(10);
/// ARC's address for the first Ethernet uplink, and its bridge's.
const ARC_ETH0: &str = "100.115.92.6";
const ARC_ETH0_GATEWAY: &str = "100.115.92.5";

fn client(world: &World) -> Client {
    Client::connect_to(world.bus.address()).expect("client")
}

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

/// The kernel state `before` plus what a stopped ARC keeps for the next
/// one: the `bridges`, up, addressed, with their routes and no port.
/// Anything else new or missing fails.
fn assert_only_bridges_kept(after: &str, before: &str, bridges: &[&str]) {
    let b: std::collections::BTreeSet<&str> = before.lines().collect();
    let a: std::collections::BTreeSet<&str> = after.lines().collect();
    let gone: Vec<&&str> = b.difference(&a).collect();
    let is_bridges = |line: &str| {
        !line.contains(" master ")
            && !line.starts_with('-')
            && bridges.iter().any(|br| {
                line.contains(&format!(": {br}:"))
                    || line.contains(&format!(": {br} "))
                    || line.contains(&format!("dev {br} "))
                    || line.ends_with(&format!("dev {br}"))
            })
    };
    let unexpected: Vec<&&str> = a.difference(&b).filter(|l| !is_bridges(l)).collect();
    assert!(
        gone.is_empty() && unexpected.is_empty(),
        "kernel state changed beyond the kept bridges {bridges:?}:\n  missing now: {gone:#?}\n  new: {unexpected:#?}"
    );
    for br in bridges {
        assert!(
            a.iter().any(|l| l.contains(&format!(": {br}:"))),
            "{br} was not kept:\n{after}"
        );
    }
}

fn link_json(netns: &Netns, name: &str) -> Option<serde_json::Value> {
    let out = netns
        .exec(&["ip", "-j", "-d", "addr", "show", "dev", name])
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    Some(v[0].clone())
}

fn has_addr(link: &serde_json::Value, addr: &str, prefix_len: u64) -> bool {
    link["addr_info"].as_array().is_some_and(|a| {
        a.iter()
            .any(|i| i["local"] == addr && i["prefixlen"] == prefix_len)
    })
}

/// A server process, killed on drop (also when the test fails).
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A one-connection TCP server: answers `tag` and prints the peer's
/// address. `cmd` runs it in the right namespace.
fn tcp_server(mut cmd: Command, addr: &str, port: u16, tag: &str) -> Server {
    let script = format!(
        "import socket\n\
         s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
         s.bind(('{addr}',{port})); s.listen(1); s.settimeout(30)\n\
         print('listening', flush=True)\n\
         c,a=s.accept(); print(a[0], flush=True); c.sendall(b'{tag}'); c.close()\n"
    );
    let mut server = Server(
        cmd.args(["/usr/bin/python3", "-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("server"),
    );
    let mut line = String::new();
    BufReader::new(server.0.stdout.as_mut().expect("stdout"))
        .read_line(&mut line)
        .expect("read");
    assert_eq!(line.trim(), "listening");
    server
}

/// What the server printed (the peer address); the server is reaped.
fn peer_of(mut server: Server) -> String {
    let mut out = String::new();
    std::io::Read::read_to_string(server.0.stdout.as_mut().expect("stdout"), &mut out)
        .expect("read");
    out.trim().to_string()
}

/// Connects from the upstream host (its address 203.0.113.1) to
/// `addr:port`; returns what it read.
fn connect_from_upstream(world: &World, addr: &str, port: u16) -> Result<String, String> {
    let script = format!(
        "import socket\n\
         c=socket.create_connection(('{addr}',{port}),timeout=5,source_address=('{REMOTE_HOST}',0))\n\
         print(c.recv(16).decode())\n"
    );
    let out = world
        .internet
        .upstream
        .exec(&["/usr/bin/python3", "-c", &script])
        .expect("client");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).to_string())
    }
}

fn in_namespace(netns: &Netns) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", netns.name()]);
    cmd
}

fn ping_ok(mut attempt: impl FnMut() -> bool) -> bool {
    poll_until(Duration::from_secs(10), || attempt().then_some(())).is_some()
}

fn container_pings(container: &FakeContainer, to: &str) -> bool {
    ping_ok(|| {
        container
            .exec(&["ping", "-c", "1", "-W", "2", to])
            .is_ok_and(|o| o.status.success())
    })
}

fn vm_pings(vm: &FakeVm, to: &str) -> bool {
    ping_ok(|| {
        vm.exec(&["ping", "-c", "1", "-W", "2", to])
            .is_ok_and(|o| o.status.success())
    })
}

/// ARC container started and its eth0 brought up as Android would.
fn started_container(world: &World) -> FakeContainer {
    let container = FakeContainer::start().expect("container");
    client(world)
        .arc_startup(container.pid())
        .expect("ArcStartup");
    container
        .bring_up("eth0", Some(ARC_ETH0_GATEWAY))
        .expect("bring up eth0");
    container
}

#[test]
fn the_arc_container_gets_its_networks_and_reaches_the_upstream_host_through_nat() {
    let world = World::start().expect("world");
    let container = FakeContainer::start().expect("container");
    client(&world)
        .arc_startup(container.pid())
        .expect("ArcStartup");

    // Inside ARC: arc0 and one interface named after the uplink, addressed
    // and left down for Android.
    let inside = container.exec_ok(&["ip", "-j", "addr"]).expect("ip");
    let inside: serde_json::Value = serde_json::from_str(&inside).expect("json");
    let find = |name: &str| {
        inside
            .as_array()
            .and_then(|a| a.iter().find(|l| l["ifname"] == name).cloned())
            .unwrap_or_else(|| panic!("no {name} in ARC: {inside}"))
    };
    let arc0 = find("arc0");
    assert!(has_addr(&arc0, "100.115.92.2", 30), "{arc0}");
    let eth0 = find("eth0");
    assert!(has_addr(&eth0, ARC_ETH0, 30), "{eth0}");
    assert!(
        !eth0["flags"]
            .as_array()
            .is_some_and(|f| f.iter().any(|x| x == "UP")),
        "{eth0}"
    );
    assert!(
        eth0["flags"]
            .as_array()
            .is_some_and(|f| f.iter().any(|x| x == "MULTICAST")),
        "{eth0}"
    );
    // On the host: the bridges with the host addresses, the veths in them.
    let arcbr0 = link_json(&world.netns, "arcbr0").expect("arcbr0");
    assert!(has_addr(&arcbr0, "100.115.92.1", 30), "{arcbr0}");
    let bridge = link_json(&world.netns, "arc_eth0").expect("arc_eth0");
    assert!(has_addr(&bridge, ARC_ETH0_GATEWAY, 30), "{bridge}");
    let veth = link_json(&world.netns, "vetheth0").expect("vetheth0");
    assert_eq!(veth["master"], "arc_eth0", "{veth}");
    assert_eq!(
        link_json(&world.netns, "vetharc0").expect("vetharc0")["master"],
        "arcbr0"
    );

    container
        .bring_up("eth0", Some(ARC_ETH0_GATEWAY))
        .expect("bring up");
    assert!(container_pings(&container, REMOTE_HOST));
    let server = tcp_server(
        in_namespace(&world.internet.upstream),
        REMOTE_HOST,
        8090,
        "hi",
    );
    let script = format!(
        "import socket\nprint(socket.create_connection(('{REMOTE_HOST}',8090),timeout=5).recv(8).decode())\n"
    );
    let got = container
        .exec_ok(&["/usr/bin/python3", "-c", &script])
        .expect("connect");
    assert_eq!(got.trim(), "hi");
    assert_eq!(peer_of(server), UPLINK_ADDR, "ARC leaves through NAT");
}

#[test]
fn inbound_connections_reach_arc_unless_the_host_listens_on_the_port() {
    let world = World::start().expect("world");
    let container = started_container(&world);

    // Only ARC listens on 9000: the connection is ARC's, from the real peer.
    let arc_server = tcp_server(container.command(&[]), "0.0.0.0", 9000, "arc");
    assert_eq!(
        connect_from_upstream(&world, UPLINK_ADDR, 9000).as_deref(),
        Ok("arc")
    );
    assert_eq!(peer_of(arc_server), REMOTE_HOST);

    // Both listen on 9001: the host keeps its own port.
    let arc_server = tcp_server(container.command(&[]), "0.0.0.0", 9001, "arc");
    let host_server = tcp_server(in_namespace(&world.netns), "0.0.0.0", 9001, "host");
    assert_eq!(
        connect_from_upstream(&world, UPLINK_ADDR, 9001).as_deref(),
        Ok("host")
    );
    assert_eq!(peer_of(host_server), REMOTE_HOST);
    drop(arc_server);

    let nat = world
        .netns
        .firewall_save(false, Some("nat"))
        .expect("iptables-save");
    let expected = [
        "-A apply_auto_dnat_to_arc -i eth0 -m socket --nowildcard -j ACCEPT",
        "-A apply_auto_dnat_to_arc -i eth0 -p tcp -j DNAT --to-destination 100.115.92.6",
        "-A apply_auto_dnat_to_arc -i eth0 -p udp -j DNAT --to-destination 100.115.92.6",
    ];
    let ours: Vec<&str> = nat
        .lines()
        .filter(|l| l.starts_with("-A apply_auto_dnat_to_arc"))
        .collect();
    assert_eq!(ours, expected, "{nat}");
}

fn next_change(changes: &mut patchpanel_client::DeviceChanges<'_>) -> (Event, NetworkDevice) {
    let signal = changes
        .next_timeout(SIGNAL_TIMEOUT)
        .expect("watch")
        .expect("no NetworkDeviceChanged signal");
    (signal.event(), signal.device.expect("device"))
}

#[test]
fn arc_devices_are_listed_signalled_and_follow_the_uplink() {
    let world = World::start().expect("world");
    let watcher = client(&world);
    let mut changes = watcher.watch_device_changes().expect("watch");
    let container = started_container(&world);

    let (event, added) = next_change(&mut changes);
    assert_eq!(event, Event::DeviceAdded);
    assert_eq!(added.ifname, "arc_eth0");
    assert_eq!(added.phys_ifname, "eth0");
    assert_eq!(added.guest_ifname, "eth0");
    assert_eq!(added.guest_type(), GuestType::Arc);
    assert_eq!(added.technology_type(), TechnologyType::Ethernet);
    assert_eq!(
        ipv4_from_net_u32(added.ipv4_addr),
        ARC_ETH0.parse::<Ipv4Addr>().unwrap()
    );
    assert_eq!(
        ipv4_from_net_u32(added.host_ipv4_addr),
        ARC_ETH0_GATEWAY.parse::<Ipv4Addr>().unwrap()
    );
    assert_eq!(
        added.ipv4_subnet.as_ref().and_then(|s| s.addr_v4()),
        Some(Ipv4Addr::new(100, 115, 92, 4))
    );
    // arc0 is not a device clients see.
    assert_eq!(client(&world).get_devices().expect("GetDevices"), [added]);

    world.internet.unplug(&world.netns).expect("unplug");
    let (event, removed) = next_change(&mut changes);
    assert_eq!(
        (event, removed.ifname.as_str()),
        (Event::DeviceRemoved, "arc_eth0")
    );
    assert!(poll_until(Duration::from_secs(5), || link_json(
        &world.netns,
        "arc_eth0"
    )
    .is_none()
    .then_some(()))
    .is_some());
    assert!(client(&world).get_devices().expect("GetDevices").is_empty());

    world.internet.plug(&world.netns).expect("plug");
    let (event, again) = next_change(&mut changes);
    assert_eq!(
        (event, again.ifname.as_str()),
        (Event::DeviceAdded, "arc_eth0")
    );
    // Android brings the new interface up again.
    container
        .bring_up("eth0", Some(ARC_ETH0_GATEWAY))
        .expect("bring up");
    assert!(
        container_pings(&container, REMOTE_HOST),
        "no connectivity after the uplink came back"
    );

    // Stopped, ARC keeps arc_eth0 for the next start; it goes with eth0.
    client(&world)
        .arc_shutdown(container.pid())
        .expect("ArcShutdown");
    assert!(link_json(&world.netns, "arc_eth0").is_some(), "kept");
    world.internet.unplug(&world.netns).expect("unplug");
    assert!(
        poll_until(Duration::from_secs(5), || link_json(
            &world.netns,
            "arc_eth0"
        )
        .is_none()
        .then_some(()))
        .is_some(),
        "the kept bridge outlived its uplink\n{}",
        world.daemon.log()
    );
    assert!(
        link_json(&world.netns, "arcbr0").is_some(),
        "arcbr0 has no uplink"
    );
}

#[test]
fn arc_shutdown_keeps_only_its_bridges_and_a_restart_gets_the_same_networks_on_them() {
    let mut world = World::start().expect("world");
    let c = client(&world);
    let before = kernel_snapshot(&world.netns).expect("snapshot");
    let container = started_container(&world);
    assert!(container_pings(&container, REMOTE_HOST));
    let bridge_index = |name: &str| link_json(&world.netns, name).map(|l| l["ifindex"].clone());
    let (arcbr0, arc_eth0) = (bridge_index("arcbr0"), bridge_index("arc_eth0"));

    c.arc_shutdown(container.pid()).expect("ArcShutdown");

    // Everything but the bridges is gone: veths, rules, the namespace name.
    let kept = ["arcbr0", "arc_eth0"];
    let mut after = kernel_snapshot(&world.netns).expect("snapshot");
    for _ in 0..100 {
        if !after.contains(" master ") {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        after = kernel_snapshot(&world.netns).expect("snapshot");
    }
    assert_only_bridges_kept(&after, &before, &kept);
    assert!(has_addr(
        &link_json(&world.netns, "arc_eth0").expect("kept"),
        ARC_ETH0_GATEWAY,
        30
    ));
    let netns: Vec<String> = std::fs::read_dir("/run/netns")
        .expect("/run/netns")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(world.daemon.netns_prefix()))
        .collect();
    assert!(netns.is_empty(), "{netns:?}");
    // The container's own interfaces went with the veth pairs.
    let inside = container.exec_ok(&["ip", "-o", "link"]).expect("ip");
    assert!(
        !inside.contains("eth0") && !inside.contains("arc0"),
        "{inside}"
    );
    assert!(c.get_devices().expect("GetDevices").is_empty());

    // A second ARC (a new container) gets the same subnets, on the same
    // bridges.
    let second = started_container(&world);
    assert!(container_pings(&second, REMOTE_HOST));
    let devices = c.get_devices().expect("GetDevices");
    assert_eq!(devices.len(), 1);
    assert_eq!(
        ipv4_from_net_u32(devices[0].ipv4_addr).to_string(),
        ARC_ETH0
    );
    assert_eq!(bridge_index("arcbr0"), arcbr0, "arcbr0 was made anew");
    assert_eq!(bridge_index("arc_eth0"), arc_eth0, "arc_eth0 was made anew");
    let bridge = link_json(&world.netns, "arc_eth0").expect("bridge");
    assert!(has_addr(&bridge, ARC_ETH0_GATEWAY, 30), "{bridge}");
    assert_eq!(
        bridge["addr_info"]
            .as_array()
            .map(|a| a.iter().filter(|i| i["family"] == "inet").count()),
        Some(1),
        "one IPv4 address: {bridge}"
    );

    // The kept bridges go when patchpanel stops.
    c.arc_shutdown(second.pid()).expect("ArcShutdown");
    world
        .daemon
        .stop_cleanly(Duration::from_secs(30))
        .expect("stop");
    for name in kept {
        assert_eq!(
            link_json(&world.netns, name),
            None,
            "{name} outlived patchpanel"
        );
    }
}

#[test]
fn a_second_arc_startup_replaces_the_first() {
    let world = World::start().expect("world");
    let first = started_container(&world);
    let second = started_container(&world);

    assert!(container_pings(&second, REMOTE_HOST));
    let left = first.exec_ok(&["ip", "-o", "link"]).expect("ip");
    assert!(
        !left.contains("eth0"),
        "the first ARC kept its link: {left}"
    );
    assert_eq!(client(&world).get_devices().expect("GetDevices").len(), 1);
    // The stale shutdown of the first one is harmless.
    client(&world)
        .arc_shutdown(first.pid())
        .expect("ArcShutdown");
    assert!(client(&world).get_devices().expect("GetDevices").is_empty());
}

#[test]
fn arcvm_gets_six_crosvm_taps_and_its_uplink_network() {
    let world = World::start().expect("world");
    let c = client(&world);
    let before = kernel_snapshot(&world.netns).expect("snapshot");
    let resp = c.arcvm_startup(33).expect("ArcVmStartup");

    assert_eq!(
        ipv4_from_addr4(&resp.arc0_ipv4_address),
        Some(Ipv4Addr::new(100, 115, 92, 2))
    );
    let taps: Vec<String> = (0..6).map(|i| format!("vmtap{i}")).collect();
    assert_eq!(resp.tap_device_ifnames, taps);
    for (i, tap) in taps.iter().enumerate() {
        let link = link_json(&world.netns, tap).expect("tap");
        assert_eq!(
            link["address"],
            format!("42:37:05:13:17:{:02x}", i + 1),
            "stable MACs in slot order: {link}"
        );
        assert_eq!(link["linkinfo"]["info_data"]["user"], "crosvm", "{link}");
        assert_eq!(link["linkinfo"]["info_data"]["persist"], true, "{link}");
    }
    assert_eq!(
        link_json(&world.netns, "vmtap0").expect("tap")["master"],
        "arcbr0"
    );
    // eth0 (Ethernet) gets the first Ethernet slot: TAP 1, eth1 in the VM.
    assert_eq!(
        link_json(&world.netns, "vmtap1").expect("tap")["master"],
        "arc_eth0"
    );
    let devices = c.get_devices().expect("GetDevices");
    assert_eq!(devices.len(), 1, "{devices:?}");
    assert_eq!(devices[0].guest_type(), GuestType::Arcvm);
    assert_eq!(devices[0].guest_ifname, "eth1");
    assert_eq!(devices[0].ifname, "arc_eth0");

    let vm = FakeVm::boot(
        &world.netns,
        "vmtap1",
        "eth1",
        ARC_ETH0,
        30,
        ARC_ETH0_GATEWAY,
    )
    .expect("vm");
    assert!(
        vm_pings(&vm, REMOTE_HOST),
        "ARCVM cannot reach {REMOTE_HOST}"
    );
    let server = tcp_server(in_namespace(vm.netns()), "0.0.0.0", 9100, "arcvm");
    assert_eq!(
        connect_from_upstream(&world, UPLINK_ADDR, 9100).as_deref(),
        Ok("arcvm"),
        "inbound traffic is sent to ARCVM"
    );
    assert_eq!(peer_of(server), REMOTE_HOST);
    drop(vm);

    // Another cid's shutdown is ignored.
    c.arcvm_shutdown(34).expect("ArcVmShutdown");
    assert!(link_json(&world.netns, "vmtap0").is_some());
    assert_eq!(c.get_devices().expect("GetDevices").len(), 1);

    c.arcvm_shutdown(33).expect("ArcVmShutdown");
    let mut after = kernel_snapshot(&world.netns).expect("snapshot");
    for _ in 0..100 {
        if !after.contains("vmtap") {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        after = kernel_snapshot(&world.netns).expect("snapshot");
    }
    assert_only_bridges_kept(&after, &before, &["arcbr0", "arc_eth0"]);
    assert!(c.get_devices().expect("GetDevices").is_empty());
}

#[test]
fn arcvm_and_vms_share_no_tap() {
    let world = World::start().expect("world");
    let c = client(&world);
    let termina = c.terminavm_startup(4).expect("TerminaVmStartup");
    let arcvm = c.arcvm_startup(5).expect("ArcVmStartup");
    assert_eq!(termina.tap_device_ifname, "vmtap0");
    assert!(!arcvm
        .tap_device_ifnames
        .contains(&termina.tap_device_ifname));
    c.arcvm_shutdown(5).expect("ArcVmShutdown");
    c.terminavm_shutdown(4).expect("TerminaVmShutdown");
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
    assert!(c.get_devices().expect("GetDevices").is_empty());
}

#[test]
fn bad_arc_requests_are_refused_and_change_nothing() {
    let world = World::start().expect("world");
    assert_refused(&world, |c| c.arc_startup(1), "pid 1");
    assert_refused(&world, |c| c.arc_startup(0), "not a process id");
    assert_refused(&world, |c| c.arc_startup(4_000_000), "no process with pid");
    assert_refused(
        &world,
        |c| c.arc_startup(std::process::id() as i32),
        "host's network namespace",
    );
    assert_refused(
        &world,
        |c| c.arcvm_startup(0).map(|_| ()),
        "0 is not a valid id",
    );
    // Still serving.
    let container = started_container(&world);
    assert!(container_pings(&container, REMOTE_HOST));
}

#[test]
fn tap_names_skip_links_of_other_programs() {
    let world = World::start().expect("world");
    world
        .netns
        .exec_ok(&["ip", "tuntap", "add", "vmtap1", "mode", "tap"])
        .expect("foreign tap");

    let resp = client(&world).arcvm_startup(41).expect("ArcVmStartup");

    assert_eq!(
        resp.tap_device_ifnames,
        ["vmtap0", "vmtap2", "vmtap3", "vmtap4", "vmtap5", "vmtap6"]
    );
    assert!(link_json(&world.netns, "vmtap1")
        .expect("vmtap1")
        .get("ifalias")
        .is_none());
    client(&world).arcvm_shutdown(41).expect("ArcVmShutdown");
    assert!(
        link_json(&world.netns, "vmtap1").is_some(),
        "not ours to delete"
    );
}

#[test]
fn an_arcvm_startup_that_fails_halfway_is_rolled_back() {
    let world = World::start().expect("world");
    let c = client(&world);
    // Someone else's bridge with the name of ARC's bridge for eth0: the six
    // TAPs and arcbr0 are made before the writer refuses to take it over.
    world
        .netns
        .exec_ok(&["ip", "link", "add", "arc_eth0", "type", "bridge"])
        .expect("foreign bridge");
    let before = kernel_snapshot(&world.netns).expect("snapshot");

    let result = c.arcvm_startup(40);

    assert!(
        // The name is patchpanel's choice, not the caller's mistake.
        matches!(&result, Err(ClientError::Failed(m)) if m.contains("arc_eth0 already exists")),
        "{result:?}"
    );
    assert_same_kernel_state(&settled_kernel_snapshot(&world.netns, &before), &before);
    assert!(c.get_devices().expect("GetDevices").is_empty());
    world
        .netns
        .exec_ok(&["ip", "link", "del", "arc_eth0"])
        .expect("delete the foreign bridge");
    let resp = c.arcvm_startup(40).expect("ArcVmStartup");
    assert_eq!(
        resp.tap_device_ifnames[0], "vmtap0",
        "the TAP names were freed"
    );
    assert_eq!(c.get_devices().expect("GetDevices").len(), 1);
    c.arcvm_shutdown(40).expect("ArcVmShutdown");
}

#[test]
fn an_explicit_port_forward_wins_over_the_automatic_dnat_to_arc() {
    use patchpanel_proto::modify_port_rule_request::{Operation, Protocol, RuleType};
    let world = World::start().expect("world");
    let container = started_container(&world);
    let _arc_server = tcp_server(container.command(&[]), "0.0.0.0", 9100, "arc");
    let c = client(&world);
    let (ns, _lifeline) = c
        .connect_namespace(&patchpanel_proto::ConnectNamespaceRequest {
            pid: -1,
            ..Default::default()
        })
        .expect("ConnectNamespace");
    let guest = patchpanel_proto::ipv4_from_net_u32(ns.peer_ipv4_address);
    let forwarded = patchpanel_tests::traffic::reply_server(
        &ns.netns_name,
        &guest.to_string(),
        9100,
        "forwarded",
    )
    .expect("server in the namespace");
    assert_eq!(
        connect_from_upstream(&world, UPLINK_ADDR, 9100).as_deref(),
        Ok("arc"),
        "without a forward, ARC's automatic DNAT takes the port"
    );
    let mut rule = patchpanel_proto::ModifyPortRuleRequest {
        op: Operation::Create as i32,
        r#type: RuleType::Forwarding as i32,
        proto: Protocol::Tcp as i32,
        input_ifname: "eth0".into(),
        input_dst_port: 9100,
        dst_ip: guest.to_string(),
        dst_port: 9100,
        ..Default::default()
    };
    c.modify_port_rule(&rule).expect("create");
    assert_eq!(
        connect_from_upstream(&world, UPLINK_ADDR, 9100).as_deref(),
        Ok("forwarded")
    );
    rule.op = Operation::Delete as i32;
    c.modify_port_rule(&rule).expect("delete");
    // ARC's test server answers one connection: a new one for the last check.
    let _arc_server = tcp_server(container.command(&[]), "0.0.0.0", 9100, "arc");
    assert_eq!(
        connect_from_upstream(&world, UPLINK_ADDR, 9100).as_deref(),
        Ok("arc")
    );
    patchpanel_tests::traffic::stop(forwarded);
}
