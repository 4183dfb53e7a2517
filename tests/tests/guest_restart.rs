//! Guests across a crash (DESIGN.md §9): the successor of a killed daemon
//! re-adopts the ARC container and the VMs whose links survived, applies
//! their rules again (traffic flows on), and removes those whose links are
//! gone.

use std::time::Duration;

use patchpanel_client::Client;
use patchpanel_proto::network_device::GuestType;
use patchpanel_tests::vm::{FakeContainer, FakeVm};
use patchpanel_tests::world::{Internet, REMOTE_HOST};
use patchpanel_tests::{poll_until, Daemon, DaemonOptions, Netns, PrivateBus};

fn pings(mut exec: impl FnMut() -> bool) -> bool {
    poll_until(Duration::from_secs(10), || exec().then_some(())).is_some()
}

fn crash(daemon: &mut Daemon) {
    daemon.signal(libc::SIGKILL).expect("SIGKILL");
    daemon
        .wait_exit(Duration::from_secs(5))
        .expect("wait")
        .expect("the manager did not die");
    // Let the spawner and helpers follow their parent.
    std::thread::sleep(Duration::from_millis(300));
}

fn successor(netns: &Netns, bus: &PrivateBus, crashed: &Daemon) -> Daemon {
    let mut daemon = Daemon::start_with(
        netns,
        bus,
        DaemonOptions {
            successor_of: Some((
                crashed.state_dir().to_path_buf(),
                crashed.netns_prefix().to_string(),
            )),
            ..Default::default()
        },
    )
    .expect("successor");
    daemon.wait_ready().expect("ready");
    daemon
}

/// A namespace with the internet, a bus and a daemon ready in it, the one
/// that will crash.
fn first_run() -> (Netns, Internet, PrivateBus, Daemon) {
    let netns = Netns::new().expect("netns");
    let internet = Internet::attach(&netns).expect("internet");
    let bus = PrivateBus::start().expect("bus");
    let mut daemon = Daemon::start(&netns, &bus).expect("daemon");
    daemon.wait_ready().expect("ready");
    (netns, internet, bus, daemon)
}

#[test]
fn a_successor_re_adopts_arc_and_vms_and_their_traffic_flows_on() {
    let (netns, _internet, bus, mut crashed) = first_run();
    let c = Client::connect_to(bus.address()).expect("client");
    let container = FakeContainer::start().expect("container");
    c.arc_startup(container.pid()).expect("ArcStartup");
    container
        .bring_up("eth0", Some("100.115.92.5"))
        .expect("bring up");
    let termina = c.terminavm_startup(12).expect("TerminaVmStartup");
    let vm = FakeVm::boot(
        &netns,
        &termina.tap_device_ifname,
        "eth0",
        "100.115.92.26",
        30,
        "100.115.92.25",
    )
    .expect("vm");
    let parallels = c.parallelsvm_startup(13, 2).expect("ParallelsVmStartup");
    let devices_before = c.get_devices().expect("GetDevices");
    assert_eq!(devices_before.len(), 3, "{devices_before:?}");

    crash(&mut crashed);
    let successor = successor(&netns, &bus, &crashed);

    let c = Client::connect_to(bus.address()).expect("client");
    let mut devices = c.get_devices().expect("GetDevices");
    let mut expected = devices_before.clone();
    let key = |d: &patchpanel_proto::NetworkDevice| d.ifname.clone();
    devices.sort_by_key(key);
    expected.sort_by_key(key);
    assert_eq!(devices, expected, "{}", successor.log());
    assert!(
        successor.log().contains("re-adopted ARC"),
        "{}",
        successor.log()
    );
    // Rules were applied again: both guests still get out.
    assert!(pings(|| container
        .exec(&["ping", "-c", "1", "-W", "2", REMOTE_HOST])
        .is_ok_and(|o| o.status.success())));
    assert!(pings(|| vm
        .exec(&["ping", "-c", "1", "-W", "2", REMOTE_HOST])
        .is_ok_and(|o| o.status.success())));
    // The pools know what is taken: a new VM gets another subnet and TAP.
    let other = c.terminavm_startup(14).expect("TerminaVmStartup");
    assert_ne!(other.ipv4_subnet, termina.ipv4_subnet);
    assert_ne!(other.tap_device_ifname, termina.tap_device_ifname);
    assert_ne!(other.tap_device_ifname, parallels.tap_device_ifname);
    // And the re-adopted guests shut down normally.
    c.terminavm_shutdown(12).expect("TerminaVmShutdown");
    c.parallelsvm_shutdown(13).expect("ParallelsVmShutdown");
    c.arc_shutdown(container.pid()).expect("ArcShutdown");
    let left = c.get_devices().expect("GetDevices");
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(left[0].guest_type(), GuestType::TerminaVm);
    drop(vm);
    drop(successor);
    drop(crashed);
}

#[test]
fn a_vm_whose_tap_vanished_during_the_crash_is_removed() {
    let (netns, _internet, bus, mut crashed) = first_run();
    let c = Client::connect_to(bus.address()).expect("client");
    let gone = c.terminavm_startup(21).expect("TerminaVmStartup");
    let kept = c.terminavm_startup(22).expect("TerminaVmStartup");

    crash(&mut crashed);
    netns
        .exec_ok(&["ip", "link", "del", &gone.tap_device_ifname])
        .expect("delete the TAP");
    let successor = successor(&netns, &bus, &crashed);

    let c = Client::connect_to(bus.address()).expect("client");
    let devices = c.get_devices().expect("GetDevices");
    let names: Vec<&str> = devices.iter().map(|d| d.ifname.as_str()).collect();
    assert_eq!(
        names,
        [kept.tap_device_ifname.as_str()],
        "{}",
        successor.log()
    );
    let routes = netns
        .exec_ok(&["ip", "route", "show", "table", "all"])
        .expect("ip route");
    let lxd = |r: &patchpanel_proto::TerminaVmStartupResponse| {
        let s = r.container_ipv4_subnet.as_ref().expect("lxd");
        format!("{}/{}", s.addr_v4().expect("v4"), s.prefix_len)
    };
    assert!(!routes.contains(&lxd(&gone)), "{routes}");
    assert!(routes.contains(&lxd(&kept)), "{routes}");
    // Its subnet is free again: the next VM gets it.
    let next = c.terminavm_startup(23).expect("TerminaVmStartup");
    assert_eq!(next.ipv4_subnet, gone.ipv4_subnet);
    drop(successor);
    drop(crashed);
}

#[test]
fn a_successor_removes_the_bridges_a_stopped_arc_left_and_the_next_arc_gets_new_ones() {
    let (netns, _internet, bus, mut crashed) = first_run();
    let c = Client::connect_to(bus.address()).expect("client");
    let container = FakeContainer::start().expect("container");
    c.arc_startup(container.pid()).expect("ArcStartup");
    c.arc_shutdown(container.pid()).expect("ArcShutdown");
    let links = || netns.exec_ok(&["ip", "-o", "link", "show"]).expect("ip");
    assert!(links().contains(": arc_eth0:"), "kept: {}", links());

    crash(&mut crashed);
    let successor = successor(&netns, &bus, &crashed);
    // Not in the state file: links patchpanel owns that nothing re-adopted.
    let gone = poll_until(Duration::from_secs(10), || {
        let l = links();
        (!l.contains(": arc_eth0:") && !l.contains(": arcbr0:")).then_some(())
    });
    assert!(gone.is_some(), "{}\n{}", links(), successor.log());

    let c = Client::connect_to(bus.address()).expect("client");
    let second = FakeContainer::start().expect("container");
    c.arc_startup(second.pid()).expect("ArcStartup");
    second
        .bring_up("eth0", Some("100.115.92.5"))
        .expect("bring up");
    assert!(
        pings(|| second
            .exec(&["ping", "-c", "1", "-W", "2", REMOTE_HOST])
            .is_ok_and(|o| o.status.success())),
        "ARC on new bridges cannot reach {REMOTE_HOST}\n{}",
        successor.log()
    );
    drop(successor);
    drop(crashed);
}
