//! Android's Wi-Fi multicast lock (`NotifyAndroidWifiMulticastLockChange`,
//! as Chrome sends it): on a Wi-Fi uplink, an mDNS query from the LAN
//! reaches ARC only while the lock is held (not at start); the change
//! survives a kill -9 of the mcast-forwarder (its replay log), and ARC's
//! own queries reach the LAN either way. (Ethernet uplinks forward inbound
//! always: `mcast.rs`.)

use std::time::Duration;

use patchpanel_client::Client;
use patchpanel_proto::ipv4_from_net_u32;
use patchpanel_tests::fake_shill::FakeShill;
use patchpanel_tests::mcast;
use patchpanel_tests::shill_world::start_daemon;
use patchpanel_tests::vm::FakeContainer;
use patchpanel_tests::world::{Internet, GATEWAY, UPLINK_ADDR};
use patchpanel_tests::{poll_until, Helper, Netns, PrivateBus};

/// Asks the LAN for `android.local` for `secs` seconds: the A records of
/// the first answer, or `None`.
fn lan_query(internet: &Internet, secs: u32) -> Option<Vec<String>> {
    let q = mcast::mdns_query(
        internet.upstream.name(),
        "up0",
        "224.0.0.251",
        "android.local",
        false,
        secs,
    )
    .expect("query");
    q.line(Duration::from_secs(u64::from(secs) + 5))
        .map(|line| line.split_whitespace().skip(3).map(String::from).collect())
}

#[test]
fn inbound_mdns_reaches_arc_on_wifi_only_while_the_lock_is_held() {
    let netns = Netns::new().expect("netns");
    let internet = Internet::attach(&netns).expect("internet");
    let bus = PrivateBus::start().expect("bus");
    let _shill = FakeShill::start_with_default(bus.address(), "eth0", "wifi").expect("shill");
    let daemon = start_daemon(&netns, &bus, None, "").expect("daemon");
    let c = Client::connect_to(bus.address()).expect("client");

    let container = FakeContainer::start().expect("container");
    c.arc_startup(container.pid()).expect("ArcStartup");
    // ARC's device for eth0 follows shill's Device.
    let device = poll_until(Duration::from_secs(10), || {
        c.get_devices()
            .ok()?
            .into_iter()
            .find(|d| d.ifname == "arc_eth0")
    })
    .expect("arc_eth0");
    // A Wi-Fi slot of ARC's (not Ethernet's 100.115.92.4/30).
    let arc_addr = ipv4_from_net_u32(device.ipv4_addr).to_string();
    let gateway = ipv4_from_net_u32(device.host_ipv4_addr).to_string();
    container.bring_up("eth0", Some(&gateway)).expect("eth0 up");
    let arc_net = format!("/proc/{}/ns/net", container.pid());
    assert_eq!(
        device.technology_type,
        patchpanel_proto::network_device::TechnologyType::Wifi as i32
    );
    let _responder = mcast::mdns_responder(
        &arc_net,
        "eth0",
        "224.0.0.251",
        "android.local",
        &arc_addr,
        0,
    )
    .expect("responder");

    // Not held (the state at start): the LAN's query never reaches ARC.
    assert_eq!(lan_query(&internet, 4), None, "answered without the lock");
    // ARC's own queries still reach the LAN (the answers, multicast, are
    // inbound: Android needs the lock to receive them, as on a phone).
    let printer = mcast::mdns_responder(
        internet.upstream.name(),
        "up0",
        "224.0.0.251",
        "printer.local",
        GATEWAY,
        0,
    )
    .expect("LAN responder");
    let _q = mcast::mdns_query(&arc_net, "eth0", "224.0.0.251", "printer.local", false, 15)
        .expect("ARC's query");
    let line = printer
        .line(Duration::from_secs(20))
        .expect("ARC's query did not reach the LAN");
    assert!(
        line.starts_with(&format!("query from {UPLINK_ADDR}")),
        "{line}"
    );

    c.notify_wifi_multicast_lock(true).expect("lock held");
    let answer = lan_query(&internet, 15)
        .unwrap_or_else(|| panic!("no answer with the lock held; log:\n{}", daemon.log()));
    assert_eq!(answer, [UPLINK_ADDR]);

    // The forwarder dies: its successor gets the pair, lock included, from
    // the replay log.
    let old = daemon.tree().expect("tree").helper(Helper::McastForwarder);
    // SAFETY: kill takes integers only.
    unsafe { libc::kill(old as i32, libc::SIGKILL) };
    poll_until(Duration::from_secs(10), || {
        let p = daemon.tree().ok()?.helper(Helper::McastForwarder);
        (p != old && p != 0).then_some(p)
    })
    .expect("mcast-forwarder respawned");
    assert_eq!(
        lan_query(&internet, 15),
        Some(vec![UPLINK_ADDR.to_string()])
    );

    c.notify_wifi_multicast_lock(false).expect("lock released");
    assert_eq!(
        lan_query(&internet, 4),
        None,
        "answered after the lock was released"
    );
    // Released again: no change, no error.
    c.notify_wifi_multicast_lock(false)
        .expect("lock released twice");
    c.arc_shutdown(container.pid()).expect("ArcShutdown");
}
