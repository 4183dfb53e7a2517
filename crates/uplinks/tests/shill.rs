//! The shill source against a fake shill on a private bus, with veth
//! `eth0`/`wlan0` links in the test's own network namespace.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

mod common;

use std::time::Duration;

use common::fake_shill::{FakeShill, Value};
use common::{add_link, brief, collect_until, ends_with, enter_private_netns, ifindex, ip};
use dbus::arg::{RefArg, Variant};
use dbus::blocking::Connection;
use dbus::channel::{Channel, Sender as _};
use dbus::{Message, Path};
use patchpanel_tests::PrivateBus;
use patchpanel_uplinks::{
    open, shill_is_running, IfName, Mode, ShillUplinks, Technology, UplinkConfig, UplinkEvent,
    UplinkSource,
};

fn name(n: &str) -> IfName {
    IfName::new(n).unwrap()
}

/// A namespace with the links the fake shill names, and a bus with the fake.
fn world() -> (PrivateBus, FakeShill) {
    enter_private_netns();
    for link in ["eth0", "wlan0"] {
        add_link(link);
        ip(&["link", "set", link, "up"]);
    }
    let bus = PrivateBus::start().unwrap();
    let shill = FakeShill::start(bus.address());
    (bus, shill)
}

fn started(bus: &PrivateBus) -> ShillUplinks {
    let mut source = ShillUplinks::open(Some(bus.address())).unwrap();
    let events = collect_until(
        &mut source,
        ends_with(UplinkEvent::DefaultChanged(Some(name("eth0")))),
    );
    let (eth0, wlan0) = (ifindex("eth0"), ifindex("wlan0"));
    assert_eq!(
        brief(&events),
        [
            format!("+eth0#{eth0}"),
            format!("+wlan0#{wlan0}"),
            "*eth0".into()
        ]
    );
    source
}

#[test]
fn shill_devices_are_added_with_their_technology_then_the_default() {
    let (bus, _shill) = world();
    let mut source = ShillUplinks::open(Some(bus.address())).unwrap();

    let events = collect_until(
        &mut source,
        ends_with(UplinkEvent::DefaultChanged(Some(name("eth0")))),
    );

    let added: Vec<(&str, u32, Technology)> = events
        .iter()
        .filter_map(|e| match e {
            UplinkEvent::Added(u) => Some((u.name.as_str(), u.ifindex, u.technology)),
            _ => None,
        })
        .collect();
    assert_eq!(
        added,
        [
            ("eth0", ifindex("eth0"), Technology::Ethernet),
            ("wlan0", ifindex("wlan0"), Technology::Wifi)
        ]
    );
    assert_eq!(events.len(), 3, "{events:#?}");
    assert_eq!(source.default_uplink().unwrap().name.as_str(), "eth0");
    assert_eq!(source.uplinks().len(), 2);
}

#[test]
fn default_service_change_moves_the_default_to_its_device() {
    let (bus, shill) = world();
    let mut source = started(&bus);

    shill.set("/", "DefaultService", Value::Path("/service/2".into()));
    let events = collect_until(
        &mut source,
        ends_with(UplinkEvent::DefaultChanged(Some(name("wlan0")))),
    );

    assert_eq!(brief(&events), ["*wlan0"]);
}

#[test]
fn default_service_root_path_means_no_default() {
    let (bus, shill) = world();
    let mut source = started(&bus);

    shill.set("/", "DefaultService", Value::Path("/".into()));
    let events = collect_until(&mut source, ends_with(UplinkEvent::DefaultChanged(None)));

    assert_eq!(brief(&events), ["*none"]);
    assert_eq!(source.default_uplink(), None);
}

#[test]
fn devices_removed_and_added_by_shill_are_reported() {
    let (bus, shill) = world();
    let mut source = started(&bus);
    let eth0 = ifindex("eth0");

    shill.set("/", "Devices", Value::Paths(vec!["/device/wlan0".into()]));
    let removed = collect_until(&mut source, |e| !e.is_empty());
    shill.set(
        "/",
        "Devices",
        Value::Paths(vec!["/device/wlan0".into(), "/device/eth0".into()]),
    );
    let added = collect_until(
        &mut source,
        ends_with(UplinkEvent::DefaultChanged(Some(name("eth0")))),
    );

    // eth0 was the default service's device: without it there is no default.
    assert_eq!(brief(&removed), [format!("-eth0#{eth0}"), "*none".into()]);
    assert_eq!(brief(&added), [format!("+eth0#{eth0}"), "*eth0".into()]);
}

#[test]
fn kernel_address_changes_are_reported_in_shill_mode() {
    let (bus, _shill) = world();
    let mut source = started(&bus);

    ip(&["addr", "add", "192.168.7.2/24", "dev", "wlan0"]);
    let events = collect_until(&mut source, |e| {
        e.iter()
            .any(|e| matches!(e, UplinkEvent::Changed(u) if !u.ipv4.is_empty()))
    });

    let UplinkEvent::Changed(wlan0) = events.last().unwrap() else {
        panic!("{events:#?}")
    };
    assert_eq!(wlan0.name.as_str(), "wlan0");
    assert_eq!(wlan0.ipv4, [("192.168.7.2".parse().unwrap(), 24)]);
    assert!(events
        .iter()
        .all(|e| matches!(e, UplinkEvent::Changed(u) if u.name.as_str() == "wlan0")));
}

#[test]
fn shill_leaving_removes_every_uplink_and_its_return_adds_them_again() {
    let (bus, shill) = world();
    let mut source = started(&bus);
    let (eth0, wlan0) = (ifindex("eth0"), ifindex("wlan0"));

    shill.stop();
    let gone = collect_until(&mut source, ends_with(UplinkEvent::DefaultChanged(None)));
    let _shill = FakeShill::start(bus.address());
    let back = collect_until(
        &mut source,
        ends_with(UplinkEvent::DefaultChanged(Some(name("eth0")))),
    );

    assert_eq!(
        brief(&gone),
        [
            format!("-eth0#{eth0}"),
            format!("-wlan0#{wlan0}"),
            "*none".into()
        ]
    );
    assert_eq!(
        brief(&back),
        [
            format!("+eth0#{eth0}"),
            format!("+wlan0#{wlan0}"),
            "*eth0".into()
        ]
    );
}

#[test]
fn shill_source_started_before_shill_waits_for_it() {
    enter_private_netns();
    add_link("eth0");
    add_link("wlan0");
    let bus = PrivateBus::start().unwrap();
    let mut source = ShillUplinks::open(Some(bus.address())).unwrap();
    assert_eq!(collect_until(&mut source, |_| true), []);

    let _shill = FakeShill::start(bus.address());
    let events = collect_until(
        &mut source,
        ends_with(UplinkEvent::DefaultChanged(Some(name("eth0")))),
    );

    assert_eq!(brief(&events).len(), 3, "{events:#?}");
}

#[test]
fn auto_mode_picks_shill_when_it_owns_its_name_and_netlink_otherwise() {
    enter_private_netns();
    let bus = PrivateBus::start().unwrap();
    let config = UplinkConfig {
        bus_address: Some(bus.address().to_string()),
        ..UplinkConfig::default()
    };

    assert!(!shill_is_running(Some(bus.address())).unwrap());
    assert_eq!(open(Mode::Auto, &config).unwrap().name(), "netlink");
    let _shill = FakeShill::start(bus.address());
    assert!(shill_is_running(Some(bus.address())).unwrap());
    assert_eq!(open(Mode::Auto, &config).unwrap().name(), "shill");
}

#[test]
fn auto_mode_without_a_bus_is_netlink() {
    enter_private_netns();
    let config = UplinkConfig {
        bus_address: Some("unix:path=/nonexistent/bus".into()),
        ..UplinkConfig::default()
    };

    assert_eq!(open(Mode::Auto, &config).unwrap().name(), "netlink");
    assert!(open(Mode::Shill, &config).is_err());
}

/// Another client of the bus that sends signals by unicast, which pass any
/// match rule; only their sender (stamped by the bus) tells them apart.
struct Impostor {
    conn: Connection,
}

impl Impostor {
    fn connect(bus: &PrivateBus) -> Impostor {
        let mut channel = Channel::open_private(bus.address()).unwrap();
        channel.register().unwrap();
        Impostor {
            conn: Connection::from(channel),
        }
    }

    fn name(&self) -> String {
        self.conn.unique_name().to_string()
    }

    fn bus_call<R: dbus::arg::ReadAll>(&self, method: &str, args: impl dbus::arg::AppendAll) -> R {
        self.conn
            .with_proxy(
                "org.freedesktop.DBus",
                "/org/freedesktop/DBus",
                Duration::from_secs(5),
            )
            .method_call("org.freedesktop.DBus", method, args)
            .unwrap()
    }

    fn shill(&self) -> String {
        let (owner,): (String,) = self.bus_call("GetNameOwner", ("org.chromium.flimflam",));
        owner
    }

    /// The source's connection: the one that is neither shill nor this.
    fn source(&self) -> String {
        let (names,): (Vec<String>,) = self.bus_call("ListNames", ());
        let others: Vec<String> = names
            .into_iter()
            .filter(|n| n.starts_with(':') && *n != self.name() && *n != self.shill())
            .collect();
        assert_eq!(others.len(), 1, "{others:?}");
        others[0].clone()
    }

    /// Sends `msg` to `destination`, then makes a round trip to the bus, so
    /// that it is routed before anything shill sends afterwards.
    fn send_to(&self, destination: &str, mut msg: Message) {
        msg.set_destination(Some(destination.to_string().into()));
        self.conn.send(msg).unwrap();
        let _: (String,) = self.bus_call("GetId", ());
    }

    fn name_owner_changed(&self, destination: &str, old: &str, new: &str) {
        let msg = Message::new_signal(
            "/org/freedesktop/DBus",
            "org.freedesktop.DBus",
            "NameOwnerChanged",
        )
        .unwrap()
        .append3("org.chromium.flimflam", old, new);
        self.send_to(destination, msg);
    }

    fn manager_property(&self, destination: &str, name: &str, value: Box<dyn RefArg>) {
        let msg = Message::new_signal("/", "org.chromium.flimflam.Manager", "PropertyChanged")
            .unwrap()
            .append2(name, Variant(value));
        self.send_to(destination, msg);
    }
}

#[test]
fn a_shill_left_the_bus_did_not_send_changes_nothing() {
    let (bus, shill) = world();
    let mut source = started(&bus);
    let impostor = Impostor::connect(&bus);

    impostor.name_owner_changed(&impostor.source(), &impostor.shill(), "");
    shill.set("/", "DefaultService", Value::Path("/service/2".into()));
    let events = collect_until(
        &mut source,
        ends_with(UplinkEvent::DefaultChanged(Some(name("wlan0")))),
    );

    assert_eq!(brief(&events), ["*wlan0"]);
    assert_eq!(source.uplinks().len(), 2);
}

#[test]
fn a_takeover_the_bus_did_not_send_is_ignored_and_shill_still_obeyed() {
    let (bus, shill) = world();
    let mut source = started(&bus);
    let impostor = Impostor::connect(&bus);
    let target = impostor.source();

    impostor.name_owner_changed(&target, &impostor.shill(), &impostor.name());
    impostor.manager_property(
        &target,
        "Devices",
        Box::new(vec![Path::new("/device/wlan0").unwrap()]),
    );
    impostor.manager_property(
        &target,
        "DefaultService",
        Box::new(Path::new("/service/2").unwrap()),
    );
    shill.set("/", "DefaultService", Value::Path("/".into()));
    let events = collect_until(&mut source, ends_with(UplinkEvent::DefaultChanged(None)));

    assert_eq!(brief(&events), ["*none"]);
    assert_eq!(source.uplinks().len(), 2);
}
