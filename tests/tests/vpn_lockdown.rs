//! `SetVpnLockdown`: while on, a connection from a socket tagged
//! `ROUTE_ON_VPN` (TagSocket, as Chrome and shill tag user sockets) is
//! rejected on the host before it leaves (no VPN is up here, so nothing may
//! go out for it), while untagged and `BYPASS_VPN` sockets still connect.
//! Lockdown survives a kill -9 of the manager (the successor puts it back),
//! and a `nft flush ruleset` (the rebuild puts it back); off lets the tagged
//! socket through again.

use std::process::Command;
use std::time::Duration;

use patchpanel_proto::SetVpnLockdownRequest;
use patchpanel_tests::traffic;
use patchpanel_tests::world::{World, REMOTE_HOST};
use patchpanel_tests::{poll_until, BusClient};
use prost::Message as _;
use serde_json::Value;

const PORT: u16 = 7272;
const GREETING: &str = "hello";

fn tool() -> String {
    concat!(env!("CARGO_MANIFEST_DIR"), "/tools/tag_socket.py").to_string()
}

/// Tags a TCP socket with `policy` (via the socket service) and connects it
/// to the internet host from the daemon's namespace: the greeting,
/// `refused` or `timeout`.
fn connect_tagged(world: &World, bus_address: &str, policy: &str) -> String {
    let out = Command::new("nsenter")
        .arg(format!("--net={}", world.netns.path().display()))
        .arg("--")
        .arg(tool())
        .args(["--tcp", "--policy", policy, "--connect"])
        .arg(format!("{REMOTE_HOST}:{PORT}"))
        .env("DBUS_SYSTEM_BUS_ADDRESS", bus_address)
        .output()
        .expect("run tag_socket.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let v: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "tag_socket.py: {e}: {stdout:?} {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert_eq!(v["ok"], true, "TagSocket {policy}: {v}");
    v["connect"].as_str().unwrap_or_default().to_string()
}

fn set_lockdown(bus_address: &str, enable: bool) {
    let request = SetVpnLockdownRequest {
        enable_vpn_lockdown: enable,
    };
    let reply = BusClient::connect(bus_address)
        .expect("client")
        .call_bytes("SetVpnLockdown", &request.encode_to_vec())
        .expect("SetVpnLockdown");
    assert!(
        reply.is_empty(),
        "SetVpnLockdownResponse is empty: {reply:?}"
    );
}

/// Polls until a `policy`-tagged connection gives `want` (the daemon may
/// still be re-applying after a restart or a flush).
fn wait_for(world: &World, bus_address: &str, policy: &str, want: &str, why: &str) {
    let mut last = String::new();
    let ok = poll_until(Duration::from_secs(10), || {
        last = connect_tagged(world, bus_address, policy);
        (last == want).then_some(())
    });
    assert!(ok.is_some(), "{why}: {policy} gave {last:?}, not {want:?}");
}

#[test]
fn lockdown_rejects_vpn_tagged_traffic_and_survives_a_restart_and_a_flush() {
    let mut world = World::start().expect("world");
    let server = traffic::reply_server(world.internet.upstream.name(), REMOTE_HOST, PORT, GREETING)
        .expect("server");
    let bus = world.bus.address().to_string();

    for policy in ["route_on_vpn", "default", "bypass_vpn"] {
        assert_eq!(
            connect_tagged(&world, &bus, policy),
            GREETING,
            "{policy}, lockdown off"
        );
    }
    set_lockdown(&bus, true);
    assert_eq!(connect_tagged(&world, &bus, "route_on_vpn"), "refused");
    assert_eq!(connect_tagged(&world, &bus, "default"), GREETING);
    assert_eq!(connect_tagged(&world, &bus, "bypass_vpn"), GREETING);
    set_lockdown(&bus, true); // again: no change, no error

    // kill -9: the successor reads the state and puts lockdown back.
    let successor = world.crash_and_succeed("").expect("successor");
    assert_eq!(
        connect_tagged(&world, &bus, "route_on_vpn"),
        "refused",
        "lockdown is off after the restart; log:\n{}",
        successor.log()
    );

    // nftables.service's restart: the rebuild puts lockdown back too.
    if patchpanel_tests::daemon::firewall_backend() == "nftables" {
        world
            .netns
            .exec_ok(&["nft", "flush", "ruleset"])
            .expect("flush");
        wait_for(&world, &bus, "route_on_vpn", "refused", "after a flush");
        assert_eq!(connect_tagged(&world, &bus, "default"), GREETING);
    }

    set_lockdown(&bus, false);
    assert_eq!(connect_tagged(&world, &bus, "route_on_vpn"), GREETING);
    traffic::stop(server);
    drop(successor);
}
