//! ADB sideloading opens the host's ADB relay to a Termina VM, and nothing
//! else of the host's loopback (security review finding 4). With
//! `adb_allowed = true` and ARC running, a VM's `adb connect arc`
//! (100.115.92.2:5555) is sent to the relay; a VM that routes 127.0.0.0/8
//! through its gateway (it is root in its VM) must still not reach a
//! service the host bound to 127.0.0.1 only.

use std::time::Duration;

use patchpanel_client::Client;
use patchpanel_tests::traffic;
use patchpanel_tests::vm::{FakeContainer, FakeVm};
use patchpanel_tests::world::{Internet, World};
use patchpanel_tests::{poll_until, Daemon, DaemonOptions, Netns, PrivateBus};

const ADB_ON: &str = "adb_allowed = true\n";

/// A port of the host's that only loopback should reach.
const LOOPBACK_ONLY_PORT: u16 = 6312;

struct Stop(Option<std::process::Child>);

impl Drop for Stop {
    fn drop(&mut self) {
        if let Some(child) = self.0.take() {
            traffic::stop(child);
        }
    }
}

fn adb_world() -> World {
    World::start_with(DaemonOptions {
        extra_config: ADB_ON.into(),
        ..Default::default()
    })
    .expect("world")
}

fn started_arc(bus: &PrivateBus) -> FakeContainer {
    let container = FakeContainer::start().expect("container");
    Client::connect_to(bus.address())
        .expect("client")
        .arc_startup(container.pid())
        .expect("ArcStartup");
    container.bring_up("arc0", None).expect("arc0 up");
    container
}

/// A Termina VM whose guest, root in its VM, routes 127.0.0.0/8 through its
/// gateway (the host) and lets its kernel send such packets out.
fn hostile_termina(dut: &Netns, bus: &PrivateBus) -> (FakeVm, String) {
    let vm = Client::connect_to(bus.address())
        .expect("client")
        .terminavm_startup(7)
        .expect("TerminaVmStartup");
    let addr = patchpanel_proto::ipv4_from_addr4(&vm.ipv4_address).expect("address");
    let gateway = patchpanel_proto::ipv4_from_addr4(&vm.gateway_ipv4_address).expect("gateway");
    let guest = FakeVm::boot(
        dut,
        &vm.tap_device_ifname,
        "eth0",
        &addr.to_string(),
        30,
        &gateway.to_string(),
    )
    .expect("vm");
    for sysctl in [
        "net.ipv4.conf.all.route_localnet=1",
        "net.ipv4.conf.eth0.route_localnet=1",
    ] {
        guest
            .netns()
            .exec_ok(&["sysctl", "-qw", sysctl])
            .expect(sysctl);
    }
    // Its own 127.0.0.1 gone (no local 127/8 route): 127.0.0.1 goes out.
    guest
        .netns()
        .exec_ok(&["ip", "addr", "del", "127.0.0.1/8", "dev", "lo"])
        .expect("lo's address");
    guest
        .netns()
        .exec_ok(&[
            "ip",
            "route",
            "add",
            "127.0.0.0/8",
            "via",
            &gateway.to_string(),
            "dev",
            "eth0",
        ])
        .expect("route 127/8 via the gateway");
    (guest, vm.tap_device_ifname)
}

/// ARC's adbd: answers `adbd` on 5555.
fn adbd(arc: &FakeContainer) -> Stop {
    Stop(Some(
        traffic::reply_server(
            &format!("/proc/{}/ns/net", arc.pid()),
            "0.0.0.0",
            5555,
            "adbd",
        )
        .expect("adbd"),
    ))
}

/// A service of the host's bound to 127.0.0.1 only.
fn loopback_service(dut: &Netns) -> Stop {
    Stop(Some(
        traffic::reply_server(
            dut.name(),
            "127.0.0.1",
            LOOPBACK_ONLY_PORT,
            "loopback-only-secret",
        )
        .expect("loopback service"),
    ))
}

#[test]
fn a_sideloading_vm_reaches_the_adb_relay_but_no_other_loopback_service_of_the_host() {
    let world = adb_world();
    let arc = started_arc(&world.bus);
    let _adbd = adbd(&arc);
    let _secret = loopback_service(&world.netns);
    let (vm, _tap) = hostile_termina(&world.netns, &world.bus);
    let guest = vm.netns().name();

    // The control: the host itself reaches its service.
    assert_eq!(
        traffic::fetch(world.netns.name(), 0, "127.0.0.1", LOOPBACK_ONLY_PORT).expect("fetch"),
        "loopback-only-secret"
    );
    // `adb connect arc` from the VM: ARC's adbd, through the relay.
    assert_eq!(
        traffic::fetch(guest, 0, "100.115.92.2", 5555).expect("fetch"),
        "adbd"
    );
    // The host's loopback-only service: not from the VM.
    assert_eq!(
        traffic::fetch(guest, 0, "127.0.0.1", LOOPBACK_ONLY_PORT).expect("fetch"),
        "timeout"
    );
}

#[test]
fn a_tap_an_earlier_version_opened_to_loopback_is_closed_by_the_successor() {
    let dut = Netns::new().expect("netns");
    let _internet = Internet::attach(&dut).expect("internet");
    let bus = PrivateBus::start().expect("bus");
    let options = || DaemonOptions {
        extra_config: ADB_ON.into(),
        ..Default::default()
    };
    let mut crashed = Daemon::start_with(&dut, &bus, options()).expect("daemon");
    crashed.wait_ready().expect("ready");
    let arc = started_arc(&bus);
    let _adbd = adbd(&arc);
    let _secret = loopback_service(&dut);
    let (vm, tap) = hostile_termina(&dut, &bus);
    let guest = vm.netns().name();
    // What earlier versions set on a sideloading TAP: the attack works.
    let key = format!("net.ipv4.conf.{tap}.route_localnet");
    dut.exec_ok(&["sysctl", "-qw", &format!("{key}=1")])
        .expect("sysctl");
    assert_eq!(
        traffic::fetch(guest, 0, "127.0.0.1", LOOPBACK_ONLY_PORT).expect("fetch"),
        "loopback-only-secret"
    );

    crashed.signal(libc::SIGKILL).expect("SIGKILL");
    crashed
        .wait_exit(Duration::from_secs(5))
        .expect("wait")
        .expect("the manager did not die");
    let mut successor = Daemon::start_with(
        &dut,
        &bus,
        DaemonOptions {
            successor_of: Some((
                crashed.state_dir().to_path_buf(),
                crashed.netns_prefix().to_string(),
            )),
            ..options()
        },
    )
    .expect("successor");
    successor.wait_ready().expect("ready");

    assert_eq!(
        dut.exec_ok(&["sysctl", "-n", &key]).expect("sysctl").trim(),
        "0"
    );
    assert_eq!(
        traffic::fetch(guest, 0, "127.0.0.1", LOOPBACK_ONLY_PORT).expect("fetch"),
        "timeout"
    );
    // ADB works again once the successor's relay listens.
    let adb = poll_until(Duration::from_secs(10), || {
        let got = traffic::fetch(guest, 0, "100.115.92.2", 5555).ok()?;
        (got == "adbd").then_some(())
    });
    assert!(adb.is_some(), "{}", successor.log());
    drop(vm);
    drop(successor);
    drop(crashed);
}
