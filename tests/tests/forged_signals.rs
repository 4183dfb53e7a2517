//! Signals forged by a local user (`nobody`) and sent by unicast to the
//! daemon's and a client's connections, on a private bus that runs the stock
//! system defaults, `upstart/org.chromium.PatchPanel.conf` and a policy for
//! shill's name like shill's own (root may own it, anyone may call it).
//! Such a signal passes the bus: signals are allowed, and a unicast one
//! reaches its destination whatever match rules it added. Only the sender,
//! which the bus stamps, gives it away (security review, findings 3 and 8).
//!
//! * Shill mode: a forged `NameOwnerChanged` saying shill left, or that the
//!   forger is shill now, followed by the forger's `PropertyChanged`: the
//!   daemon's uplinks (read back as ARC's devices, one per uplink, with
//!   `GetDevices`) and its default network (read back as the uplink the
//!   multicast forwarder serves a Termina VM on, from `ss`) do not move,
//!   and the real shill is still obeyed.
//! * The client library's subscription (what `patchpanel monitor` prints):
//!   a forged `NetworkDeviceChanged` is not reported, the daemon's are.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use patchpanel_client::{Client, Signal};
use patchpanel_proto::network_device_changed_signal::Event;
use patchpanel_proto::{names, NetworkDevice, NetworkDeviceChangedSignal};
use patchpanel_tests::fake_shill::{self, FakeShill};
use patchpanel_tests::forger::{self, Arg, Step};
use patchpanel_tests::vm::FakeContainer;
use patchpanel_tests::world::Internet;
use patchpanel_tests::{poll_until, Daemon, DaemonOptions, Netns, PrivateBus};
use prost::Message as _;

/// How long the daemon may take to follow shill.
const CONVERGE: Duration = Duration::from_secs(15);
/// How long the daemon has to act on the forger's `NameOwnerChanged` before
/// the forger goes on (the review's attack waited too).
const ACT: Duration = Duration::from_secs(1);
/// How long a subscription must stay quiet to count as drained.
const QUIET: Duration = Duration::from_secs(1);
/// The local user who forges.
const FORGER: &str = "nobody";

const DBUS_NAME: &str = "org.freedesktop.DBus";
const DBUS_PATH: &str = "/org/freedesktop/DBus";

/// Shill's own policy, as much as these tests need: root owns the name,
/// anyone calls it.
const SHILL_POLICY: &str = r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN"
  "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <policy user="root">
    <allow own="org.chromium.flimflam"/>
  </policy>
  <policy context="default">
    <allow send_destination="org.chromium.flimflam"/>
  </policy>
</busconfig>
"#;

fn project_policy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../upstart/org.chromium.PatchPanel.conf")
}

/// A bus with the stock system defaults, the project's policy and shill's.
fn policy_bus(scratch: &Path) -> PrivateBus {
    let shill_policy = scratch.join("org.chromium.flimflam.conf");
    std::fs::write(&shill_policy, SHILL_POLICY).expect("write shill's policy");
    PrivateBus::start_with_policy(&[&project_policy(), &shill_policy]).expect("bus")
}

/// The daemon in shill mode with two uplinks, eth0 (ethernet, the default
/// service's) and wlan0 (wifi). Fields drop in order: ARC's process, the
/// daemon, shill, the bus, the namespaces.
#[derive(Debug)]
struct ShillWorld {
    container: Option<FakeContainer>,
    daemon: Daemon,
    shill: FakeShill,
    bus: PrivateBus,
    _internet: Internet,
    netns: Netns,
    _scratch: tempfile::TempDir,
}

impl ShillWorld {
    fn start() -> ShillWorld {
        let scratch = tempfile::tempdir().expect("tempdir");
        let netns = Netns::new().expect("netns");
        let internet = Internet::attach(&netns).expect("internet");
        netns
            .exec_ok(&[
                "ip", "link", "add", "wlan0", "type", "veth", "peer", "name", "p-wlan0",
            ])
            .expect("wlan0");
        for link in ["wlan0", "p-wlan0"] {
            netns
                .exec_ok(&["ip", "link", "set", link, "up"])
                .expect("link up");
        }
        let bus = policy_bus(scratch.path());
        let mut shill = FakeShill::start(bus.address()).expect("fake shill");
        shill.add_device("eth0", "ethernet").expect("eth0");
        shill.add_device("wlan0", "wifi").expect("wlan0");
        shill.set_default(Some("eth0")).expect("default eth0");
        let mut daemon = Daemon::start_with(
            &netns,
            &bus,
            DaemonOptions {
                extra_args: vec!["--uplinks=shill".into()],
                ..Default::default()
            },
        )
        .expect("daemon");
        daemon.wait_ready().expect("ready");
        ShillWorld {
            container: None,
            daemon,
            shill,
            bus,
            _internet: internet,
            netns,
            _scratch: scratch,
        }
    }

    /// Starts ARC: each uplink gets its ARC device.
    fn start_arc(&mut self) {
        let container = FakeContainer::start().expect("container");
        self.client()
            .arc_startup(container.pid())
            .expect("ArcStartup");
        self.container = Some(container);
        self.wait_arc_devices(&[("arc_eth0", "eth0"), ("arc_wlan0", "wlan0")]);
    }

    /// Starts a Termina VM (without ARC, its multicast is the only one
    /// forwarded: on the default uplink).
    fn start_termina(&self) {
        self.client()
            .terminavm_startup(7)
            .expect("TerminaVmStartup");
        self.wait_default_uplink(Some("eth0"));
    }

    fn client(&self) -> Client {
        Client::connect_to(self.bus.address()).expect("client")
    }

    /// ARC's devices as `ifname(uplink)`, from `GetDevices`.
    fn arc_devices(&self) -> BTreeSet<String> {
        self.client()
            .get_devices()
            .expect("GetDevices")
            .iter()
            .filter(|d| d.ifname.starts_with("arc_"))
            .map(|d| format!("{}({})", d.ifname, d.phys_ifname))
            .collect()
    }

    /// Waits until ARC's devices are `expected`; panics with what was seen.
    fn wait_arc_devices(&self, expected: &[(&str, &str)]) {
        let expected: BTreeSet<String> = expected
            .iter()
            .map(|(ifname, uplink)| format!("{ifname}({uplink})"))
            .collect();
        let mut last = BTreeSet::new();
        let done = poll_until(CONVERGE, || {
            last = self.arc_devices();
            (last == expected).then_some(())
        });
        assert!(
            done.is_some(),
            "ARC devices: expected {expected:?}, last seen {last:?}\ndaemon log:\n{}",
            self.daemon.log()
        );
    }

    /// The uplinks the multicast forwarder has an mDNS socket on, besides
    /// the VM's TAP: with only a VM running, the default uplink.
    fn vm_multicast_uplinks(&self) -> BTreeSet<String> {
        let out = self.netns.exec_ok(&["ss", "-H", "-uan"]).expect("ss");
        out.lines()
            .filter_map(|line| line.split_whitespace().nth(3))
            .filter_map(|local| local.strip_suffix(":5353")?.split_once('%'))
            .map(|(_, ifname)| ifname.to_string())
            .filter(|ifname| !ifname.starts_with("vmtap"))
            .collect()
    }

    /// Waits until the VM's multicast is forwarded on `uplink` only (on
    /// none for `None`).
    fn wait_default_uplink(&self, uplink: Option<&str>) {
        let expected: BTreeSet<String> = uplink.into_iter().map(String::from).collect();
        let mut last = BTreeSet::new();
        let done = poll_until(CONVERGE, || {
            last = self.vm_multicast_uplinks();
            (last == expected).then_some(())
        });
        assert!(
            done.is_some(),
            "VM multicast uplinks: expected {expected:?}, last seen {last:?}\ndaemon log:\n{}",
            self.daemon.log()
        );
    }

    /// The daemon's connections, as a local user finds them.
    fn daemon_connections(&self) -> Vec<String> {
        let uid = forger::uid_of("patchpaneld").expect("uid of patchpaneld");
        let names = forger::connections_of_uid(self.bus.address(), uid).expect("connections");
        assert!(!names.is_empty(), "the daemon has no connection");
        names
    }

    fn shill_unique_name(&self) -> String {
        forger::name_owner(self.bus.address(), fake_shill::SERVICE)
            .expect("GetNameOwner")
            .expect("shill owns its name")
    }
}

/// `NameOwnerChanged(org.chromium.flimflam, old, new)` to `destination`.
fn name_owner_changed(destination: &str, old: &str, new: Arg) -> Step {
    Step::signal(
        destination,
        DBUS_PATH,
        DBUS_NAME,
        "NameOwnerChanged",
        vec![
            Arg::Str(fake_shill::SERVICE.into()),
            Arg::Str(old.into()),
            new,
        ],
    )
}

/// Shill's Manager `PropertyChanged(name, value)` to `destination`.
fn manager_property(destination: &str, name: &str, value: Arg) -> Step {
    Step::signal(
        destination,
        "/",
        fake_shill::MANAGER_INTERFACE,
        "PropertyChanged",
        vec![Arg::Str(name.into()), Arg::Variant(Box::new(value))],
    )
}

/// Every `NetworkDeviceChanged` the daemon sends from now until the
/// subscription has been quiet for a second, as `+ifname` / `-ifname`.
fn device_changes(signals: &mut patchpanel_client::DeviceChanges<'_>) -> Vec<String> {
    let mut seen = Vec::new();
    while let Some(change) = signals.next_timeout(QUIET).expect("signal") {
        let sign = if change.event == Event::DeviceAdded as i32 {
            "+"
        } else {
            "-"
        };
        let ifname = change.device.map(|d| d.ifname).unwrap_or_default();
        seen.push(format!("{sign}{ifname}"));
    }
    seen
}

#[test]
fn a_forged_shill_left_from_a_local_user_drops_no_uplink() {
    let mut world = ShillWorld::start();
    world.start_arc();
    let watcher = world.client();
    let mut changes = watcher.watch_device_changes().expect("subscribe");
    let shill = world.shill_unique_name();
    let steps: Vec<Step> = world
        .daemon_connections()
        .iter()
        .map(|c| name_owner_changed(c, &shill, Arg::Str(String::new())))
        .collect();

    forger::forge_as(FORGER, world.bus.address(), &steps).expect("forge");
    // Everything shill says from now on reaches the daemon after the forgery.
    world
        .shill
        .remove_device("wlan0")
        .expect("shill drops wlan0");

    world.wait_arc_devices(&[("arc_eth0", "eth0")]);
    // Nothing came and went on the way (no flap).
    assert_eq!(device_changes(&mut changes), ["-arc_wlan0"]);
}

#[test]
fn a_forged_takeover_by_a_local_user_is_ignored_and_shills_devices_still_obeyed() {
    let mut world = ShillWorld::start();
    world.start_arc();
    let shill = world.shill_unique_name();
    let connections = world.daemon_connections();
    let mut steps: Vec<Step> = connections
        .iter()
        .map(|c| name_owner_changed(c, &shill, Arg::OwnName))
        .collect();
    steps.push(Step::Sleep(ACT));
    for c in &connections {
        steps.push(manager_property(
            c,
            "Devices",
            Arg::Paths(vec![fake_shill::device_path("wlan0")]),
        ));
        steps.push(manager_property(
            c,
            "DefaultService",
            Arg::Path(fake_shill::service_path("wlan0")),
        ));
    }

    forger::forge_as(FORGER, world.bus.address(), &steps).expect("forge");
    world
        .shill
        .remove_device("wlan0")
        .expect("shill drops wlan0");

    world.wait_arc_devices(&[("arc_eth0", "eth0")]);
}

#[test]
fn a_forged_takeover_by_a_local_user_is_ignored_and_shills_default_still_obeyed() {
    let world = ShillWorld::start();
    world.start_termina();
    let shill = world.shill_unique_name();
    let connections = world.daemon_connections();
    let mut steps: Vec<Step> = connections
        .iter()
        .map(|c| name_owner_changed(c, &shill, Arg::OwnName))
        .collect();
    steps.push(Step::Sleep(ACT));
    for c in &connections {
        // "/": no default network.
        steps.push(manager_property(c, "DefaultService", Arg::Path("/".into())));
    }

    forger::forge_as(FORGER, world.bus.address(), &steps).expect("forge");
    world
        .shill
        .set_default(Some("wlan0"))
        .expect("shill picks wlan0");

    world.wait_default_uplink(Some("wlan0"));
}

// ---------------------------------------------------------------------------
// The client library's subscription.

fn termina_device_added(signal: &Signal) -> Option<String> {
    match signal {
        Signal::NetworkDeviceChanged(NetworkDeviceChangedSignal {
            device: Some(device),
            event,
        }) if *event == Event::DeviceAdded as i32 => Some(device.ifname.clone()),
        _ => None,
    }
}

#[test]
fn a_subscription_reports_the_daemons_signals_and_not_a_local_users_forgery() {
    let scratch = tempfile::tempdir().expect("tempdir");
    let netns = Netns::new().expect("netns");
    let bus = policy_bus(scratch.path());
    let mut daemon = Daemon::start(&netns, &bus).expect("daemon");
    daemon.wait_ready().expect("ready");
    let watcher = Client::connect_to(bus.address()).expect("client");
    let mut signals = watcher.watch_signals().expect("subscribe");
    let forged = NetworkDeviceChangedSignal {
        device: Some(NetworkDevice {
            ifname: "SPOOFED0".into(),
            ..Default::default()
        }),
        event: Event::DeviceAdded as i32,
    };
    let forgery = Step::signal(
        &watcher.unique_name(),
        names::PATH,
        names::INTERFACE,
        names::NETWORK_DEVICE_CHANGED,
        vec![Arg::Bytes(forged.encode_to_vec())],
    );

    forger::forge_as(FORGER, bus.address(), &[forgery]).expect("forge");
    let vm = Client::connect_to(bus.address())
        .expect("client")
        .terminavm_startup(7)
        .expect("TerminaVmStartup");

    let first = signals
        .next_timeout(CONVERGE)
        .expect("signal")
        .unwrap_or_else(|| panic!("no signal\ndaemon log:\n{}", daemon.log()));
    assert_eq!(
        termina_device_added(&first).as_deref(),
        Some(vm.tap_device_ifname.as_str()),
        "first signal reported: {first:?}"
    );
}
