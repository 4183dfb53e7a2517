//! `TagSocket` and `org.chromium.SocketService`, as today's clients use
//! them, on a bus running the project's policy (both files):
//!
//! - a client that waits for both bus names (shill's and dns-proxy's client
//!   library since 2024-06) finds them owned;
//! - each VPN policy and a network id land in the caller's socket mark
//!   (read back with getsockopt), through either name, and only the bits of
//!   0xffffc000 change;
//! - what is refused (ROUTE_ON_VPN with a network, an unknown network or
//!   policy, a pipe instead of a socket) is `InvalidArgument` and leaves the
//!   socket as it was; an annotated request answers success and leaves it;
//! - who may call: shill and the `patchpanel` group, not chronos, not
//!   nobody (SocketService), as the policy file says;
//! - a killed socket service comes back, owns the name again, and still
//!   knows the networks (replayed).

use std::process::Command;
use std::time::Duration;

use patchpanel_tests::policy::{command_as, GROUP_MEMBER};
use patchpanel_tests::tree::Helper;
use patchpanel_tests::world::World;
use patchpanel_tests::{poll_until, BusClient, DaemonOptions};
use serde_json::Value;

const INVALID_PP: &str = "org.chromium.PatchPanel.Error.InvalidArgument";
const INVALID_SS: &str = "org.chromium.SocketService.Error.InvalidArgument";

fn tool() -> String {
    concat!(env!("CARGO_MANIFEST_DIR"), "/tools/tag_socket.py").to_string()
}

fn world() -> World {
    World::start_with_policy(DaemonOptions::default()).expect("world with the project's policy")
}

/// Runs the tool as `user` (root: directly) and returns its JSON line.
fn tag(world: &World, user: &str, args: &[&str]) -> Value {
    let mut cmd = if user == "root" {
        let mut c = Command::new(tool());
        c.env("DBUS_SYSTEM_BUS_ADDRESS", world.bus.address());
        c
    } else {
        command_as(user, world.bus.address(), &tool()).expect("command as user")
    };
    let out = cmd.args(args).output().expect("run tag_socket.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "tag_socket.py {args:?} as {user}: {e}; status {:?}, stdout {stdout:?}, stderr {}\nlog:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            world.daemon.log()
        )
    })
}

fn assert_ok(v: &Value, before: u64, after: u64) {
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["before"], before, "{v}");
    assert_eq!(v["after"], after, "{v}");
}

fn assert_refused(v: &Value, error: &str, mark: u64, says: &str) {
    assert_eq!(v["ok"], false, "{v}");
    assert_eq!(v["error"], error, "{v}");
    assert_eq!(v["before"], v["after"], "the mark changed: {v}");
    assert_eq!(v["after"], mark, "{v}");
    assert!(
        v["message"].as_str().unwrap_or_default().contains(says),
        "the error does not say {says:?}: {v}"
    );
}

/// The uplink eth0's interface index in the daemon's namespace.
fn eth0_ifindex(world: &World) -> u32 {
    let out = world
        .netns
        .exec_ok(&["cat", "/sys/class/net/eth0/ifindex"])
        .expect("eth0's ifindex");
    out.trim().parse().expect("an ifindex")
}

#[test]
fn a_current_client_sees_both_names_and_each_policy_lands_in_its_socket_mark() {
    let world = world();
    let client = BusClient::connect(world.bus.address()).expect("client");
    assert!(client.name_has_owner("org.chromium.PatchPanel").unwrap());
    assert!(client.name_has_owner("org.chromium.SocketService").unwrap());

    // shill, through the socket service.
    let v = tag(
        &world,
        "pp-shill",
        &["--service", "socket", "--policy", "bypass_vpn"],
    );
    assert_ok(&v, 0, 0x4000);
    let v = tag(
        &world,
        "pp-shill",
        &["--service", "socket", "--policy", "route_on_vpn"],
    );
    assert_ok(&v, 0, 0x8000);
    // Chrome, through PatchPanel (the manager hands the socket over).
    let v = tag(
        &world,
        "pp-chronos",
        &["--service", "patchpanel", "--policy", "bypass_vpn"],
    );
    assert_ok(&v, 0, 0x4000);
    // The routing tag of the uplink eth0: (ifindex + 1000) << 16. The
    // networks reach the helper after the daemon learns its uplinks.
    let ifindex = eth0_ifindex(&world);
    let routing = u64::from((ifindex + 1000) << 16);
    for service in ["socket", "patchpanel"] {
        let id = ifindex.to_string();
        let mut last = Value::Null;
        let tagged = poll_until(Duration::from_secs(5), || {
            last = tag(
                &world,
                "pp-shill",
                &["--service", service, "--network-id", &id],
            );
            (last["ok"] == true).then_some(())
        });
        assert!(tagged.is_some(), "network {id} via {service}: {last}");
        assert_ok(&last, 0, routing);
        let v = tag(
            &world,
            "pp-shill",
            &[
                "--service",
                service,
                "--network-id",
                &id,
                "--policy",
                "bypass_vpn",
            ],
        );
        assert_ok(&v, 0, routing | 0x4000);
    }
    // Only the routing and VPN bits change: source and other bits stay,
    // and DEFAULT_ROUTING clears an old VPN bit and routing tag.
    let v = tag(
        &world,
        "root",
        &["--preset-mark", "0x03ea8321", "--policy", "default"],
    );
    assert_ok(&v, 0x03ea_8321, 0x0321);
    let v = tag(
        &world,
        "root",
        &["--preset-mark", "0x2101", "--policy", "bypass_vpn"],
    );
    assert_ok(&v, 0x2101, 0x6101);
    // The patchpanel group stands in for shill on generic hosts.
    let v = tag(
        &world,
        GROUP_MEMBER,
        &["--service", "socket", "--policy", "bypass_vpn"],
    );
    assert_ok(&v, 0, 0x4000);
}

#[test]
fn refused_requests_say_why_and_leave_the_socket_alone() {
    let world = world();
    let ifindex = eth0_ifindex(&world).to_string();
    for (service, invalid) in [("socket", INVALID_SS), ("patchpanel", INVALID_PP)] {
        let base = ["--service", service, "--preset-mark", "0x2100"];
        let with = |extra: &[&'static str]| -> Vec<String> {
            base.iter().chain(extra).map(|s| s.to_string()).collect()
        };
        let run = |args: Vec<String>| {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            tag(&world, "root", &args)
        };
        let mut vpn_and_network = with(&["--policy", "route_on_vpn", "--network-id"]);
        vpn_and_network.push(ifindex.clone());
        assert_refused(&run(vpn_and_network), invalid, 0x2100, "ROUTE_ON_VPN");
        assert_refused(
            &run(with(&["--network-id", "999"])),
            invalid,
            0x2100,
            "network_id 999",
        );
        assert_refused(
            &run(with(&["--network-id", "0"])),
            invalid,
            0x2100,
            "network_id 0",
        );
        assert_refused(
            &run(with(&["--policy", "7"])),
            invalid,
            0x2100,
            "vpn_policy 7",
        );
        // An annotated request (shill's portal detector) is answered with
        // success and the socket is left as it was, as the original does.
        let v = run(with(&["--annotation", "1", "--policy", "bypass_vpn"]));
        assert_ok(&v, 0x2100, 0x2100);
        // A pipe is not a socket.
        let v = tag(&world, "root", &["--service", service, "--not-a-socket"]);
        assert_eq!(v["ok"], false, "{v}");
        assert_eq!(v["error"], invalid, "{v}");
        assert!(
            v["message"].as_str().unwrap().contains("not a socket"),
            "{v}"
        );
    }
    // Both services are still there and serving.
    let v = tag(
        &world,
        "root",
        &["--service", "socket", "--policy", "bypass_vpn"],
    );
    assert_ok(&v, 0, 0x4000);
    let v = tag(
        &world,
        "root",
        &["--service", "patchpanel", "--policy", "bypass_vpn"],
    );
    assert_ok(&v, 0, 0x4000);
}

#[test]
fn the_bus_lets_only_shill_root_and_the_group_call_the_socket_service() {
    let world = world();
    for user in ["pp-chronos", "nobody", "pp-devbroker"] {
        let v = tag(
            &world,
            user,
            &["--service", "socket", "--policy", "bypass_vpn"],
        );
        assert_eq!(v["ok"], false, "{user}: {v}");
        assert_eq!(
            v["error"], "org.freedesktop.DBus.Error.AccessDenied",
            "{user}: {v}"
        );
        assert_eq!(v["after"], 0, "{user}: {v}");
    }
    for user in ["pp-shill", GROUP_MEMBER, "root"] {
        let v = tag(
            &world,
            user,
            &["--service", "socket", "--policy", "bypass_vpn"],
        );
        assert_ok(&v, 0, 0x4000);
    }
}

#[test]
fn a_killed_socket_service_owns_its_name_again_and_remembers_the_networks() {
    let world = world();
    let ifindex = eth0_ifindex(&world).to_string();
    let routing = u64::from((eth0_ifindex(&world) + 1000) << 16);
    let first = poll_until(Duration::from_secs(5), || {
        let v = tag(&world, "root", &["--network-id", &ifindex]);
        (v["ok"] == true).then_some(v)
    })
    .expect("the socket service learns eth0");
    assert_ok(&first, 0, routing);

    let old = world
        .daemon
        .tree()
        .expect("tree")
        .helper(Helper::SocketService);
    // SAFETY: kill with a pid of the daemon's tree.
    assert_eq!(unsafe { libc::kill(old as i32, libc::SIGKILL) }, 0);
    world
        .daemon
        .wait_for_tree(Duration::from_secs(5), |t| {
            t.helper(Helper::SocketService) != old
        })
        .expect("socket service respawned");
    let client = BusClient::connect(world.bus.address()).expect("client");
    assert!(
        poll_until(Duration::from_secs(5), || client
            .name_has_owner("org.chromium.SocketService")
            .unwrap_or(false)
            .then_some(()))
        .is_some(),
        "nobody owns org.chromium.SocketService after the respawn; log:\n{}",
        world.daemon.log()
    );
    // Replayed, not re-learned: no uplink changed since.
    let v = tag(&world, "root", &["--network-id", &ifindex]);
    assert_ok(&v, 0, routing);
}
