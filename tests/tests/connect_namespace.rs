//! ConnectNamespace end to end: a real daemon in its own namespace with an
//! uplink to an "upstream" namespace, real packets through patchpanel's NAT,
//! lifeline teardown, refusals, uplink changes, stop and cleanup.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use patchpanel_client::{Client, Error as ClientError, Lifeline};
use patchpanel_proto::{ConnectNamespaceRequest, ConnectNamespaceResponse};
use patchpanel_tests::world::{
    kernel_snapshot, settled_kernel_snapshot, World, REMOTE_HOST, UPLINK_ADDR,
};
use patchpanel_tests::{poll_until, traffic, DaemonOptions};

/// Generous: teardown is measured in the benchmark, not here.
const TEARDOWN_TIMEOUT: Duration = Duration::from_secs(5);

fn client(world: &World) -> Client {
    Client::connect_to(world.bus.address()).expect("client")
}

fn new_namespace() -> ConnectNamespaceRequest {
    ConnectNamespaceRequest {
        pid: -1,
        ..Default::default()
    }
}

fn connect(
    world: &World,
    request: &ConnectNamespaceRequest,
) -> (ConnectNamespaceResponse, Lifeline) {
    client(world)
        .connect_namespace(request)
        .expect("ConnectNamespace")
}

fn ping_from(world: &World, netns: &str) -> bool {
    let out = world
        .exec_in(netns, &["ping", "-c", "1", "-W", "3", REMOTE_HOST])
        .expect("ping");
    out.status.success()
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

fn netns_exists(name: &str) -> bool {
    std::path::Path::new("/run/netns").join(name).exists()
}

fn wait_gone(world: &World, netns: &str) {
    let c = client(world);
    let gone = poll_until(TEARDOWN_TIMEOUT, || {
        let devices = c.get_devices().ok()?;
        (devices.is_empty() && !netns_exists(netns)).then_some(())
    });
    assert!(
        gone.is_some(),
        "{netns} still present after the lifeline closed"
    );
}

#[test]
fn a_new_namespace_reaches_the_upstream_host_through_nat() {
    let world = World::start().expect("world");
    let (resp, _lifeline) = connect(&world, &new_namespace());

    assert!(
        resp.netns_name.starts_with(world.daemon.netns_prefix()),
        "{resp:?}"
    );
    assert_eq!(resp.host_ifname, "arc_ns0");
    assert_eq!(resp.peer_ifname, "veth0");
    let subnet = resp.ipv4_subnet.as_ref().expect("subnet");
    assert_eq!(subnet.prefix_len, 30);
    assert_eq!(subnet.addr_v4(), Some("100.115.92.128".parse().unwrap()));
    assert!(
        ping_from(&world, &resp.netns_name),
        "ping through NAT failed"
    );

    let mut server =
        traffic::reply_server(world.internet.upstream.name(), REMOTE_HOST, 8080, "hello")
            .expect("server");
    let reply = traffic::fetch(&resp.netns_name, 0, REMOTE_HOST, 8080).expect("client");
    assert_eq!(reply, "hello");
    let mut peer = String::new();
    BufReader::new(server.stdout.as_mut().expect("stdout"))
        .read_line(&mut peer)
        .expect("read");
    traffic::stop(server);
    assert_eq!(
        peer.trim(),
        UPLINK_ADDR,
        "the upstream side must see the uplink address"
    );
}

#[test]
fn get_devices_lists_a_connected_namespace() {
    let world = World::start().expect("world");
    let (resp, _lifeline) = connect(&world, &new_namespace());
    let devices = client(&world).get_devices().expect("GetDevices");
    assert_eq!(devices.len(), 1);
    assert_eq!(devices[0].ifname, resp.host_ifname);
    assert_eq!(devices[0].guest_ifname, resp.peer_ifname);
    assert_eq!(devices[0].ipv4_addr, resp.peer_ipv4_address);
    assert_eq!(devices[0].host_ipv4_addr, resp.host_ipv4_address);
}

#[test]
fn closing_the_lifeline_removes_every_trace_and_frees_the_subnet() {
    let world = World::start().expect("world");
    let before = kernel_snapshot(&world.netns).expect("snapshot");
    let (resp, lifeline) = connect(&world, &new_namespace());
    assert_ne!(kernel_snapshot(&world.netns).expect("snapshot"), before);

    drop(lifeline);
    wait_gone(&world, &resp.netns_name);
    assert_same_kernel_state(&settled_kernel_snapshot(&world.netns, &before), &before);

    // The subnet went back to the pool: the next namespace gets it again.
    let (again, _l) = connect(&world, &new_namespace());
    assert_eq!(again.ipv4_subnet, resp.ipv4_subnet);
    assert_ne!(again.netns_name, resp.netns_name);
}

#[test]
fn a_killed_client_releases_its_namespace() {
    let world = World::start().expect("world");
    let cli = patchpanel_tests::bin_path("patchpanel").expect("cli");
    let mut child = Command::new(cli)
        .args(["connect-ns", "--json"])
        .env("DBUS_SYSTEM_BUS_ADDRESS", world.bus.address())
        .stdout(Stdio::piped())
        .spawn()
        .expect("patchpanel connect-ns");
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().expect("stdout"))
        .read_line(&mut line)
        .expect("read");
    let v: serde_json::Value = serde_json::from_str(&line).expect("json");
    let netns = v["netns_name"].as_str().expect("netns_name").to_string();
    assert!(ping_from(&world, &netns));
    child.kill().expect("kill");
    child.wait().expect("wait");
    wait_gone(&world, &netns);
}

#[test]
fn a_stock_python_client_can_connect_a_namespace() {
    let world = World::start().expect("world");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tools/connect_ns.py");
    let mut child = Command::new("/usr/bin/python3")
        .arg(script)
        .env("DBUS_SYSTEM_BUS_ADDRESS", world.bus.address())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python");
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().expect("stdout"))
        .read_line(&mut line)
        .expect("read");
    let v: serde_json::Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
    let netns = v["netns_name"].as_str().expect("netns_name").to_string();
    assert!(ping_from(&world, &netns));
    // Closing its stdin makes the script exit, closing the lifeline.
    drop(child.stdin.take());
    child.wait().expect("wait");
    wait_gone(&world, &netns);
}

#[test]
fn an_existing_process_namespace_is_attached_by_pid() {
    let world = World::start().expect("world");
    let mut guest = Command::new("unshare")
        .args(["--net", "sleep", "60"])
        .spawn()
        .expect("unshare");
    // unshare execs sleep in the new namespace once it is set up.
    let pid = guest.id() as i32;
    poll_until(Duration::from_secs(5), || {
        let link = std::fs::read_link(format!("/proc/{pid}/ns/net")).ok()?;
        let own = std::fs::read_link("/proc/self/ns/net").ok()?;
        (link != own).then_some(())
    })
    .expect("guest namespace");
    let (resp, lifeline) = connect(
        &world,
        &ConnectNamespaceRequest {
            pid,
            ..Default::default()
        },
    );
    let out = Command::new("nsenter")
        .args([
            "-t",
            &pid.to_string(),
            "-n",
            "ping",
            "-c",
            "1",
            "-W",
            "3",
            REMOTE_HOST,
        ])
        .output()
        .expect("ping");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    drop(lifeline);
    wait_gone(&world, &resp.netns_name);
    // The client's process and namespace survive the teardown.
    assert!(guest.try_wait().expect("try_wait").is_none());
    guest.kill().expect("kill");
    guest.wait().expect("wait");
}

fn assert_refused(world: &World, request: &ConnectNamespaceRequest, needle: &str) {
    let before = kernel_snapshot(&world.netns).expect("snapshot");
    match client(world).connect_namespace(request) {
        Err(ClientError::InvalidArgument(m)) => {
            assert!(m.contains(needle), "{needle:?} not in {m:?}")
        }
        other => panic!("expected InvalidArgument containing {needle:?}, got {other:?}"),
    }
    assert_same_kernel_state(&settled_kernel_snapshot(&world.netns, &before), &before);
    assert!(client(world).get_devices().expect("devices").is_empty());
}

#[test]
fn bad_requests_are_refused_and_change_nothing() {
    let world = World::start().expect("world");
    let req = |pid: i32, dev: &str| ConnectNamespaceRequest {
        pid,
        outbound_physical_device: dev.to_string(),
        ..Default::default()
    };
    assert_refused(&world, &req(1, ""), "pid 1");
    assert_refused(&world, &req(0, ""), "not a process id");
    assert_refused(&world, &req(4_000_000, ""), "no process with pid");
    assert_refused(
        &world,
        &req(world.daemon.pid() as i32, ""),
        "patchpanel itself",
    );
    // Another process in the daemon's own namespace.
    let mut neighbour = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", world.netns.name()))
        .args(["sleep", "60"])
        .spawn()
        .expect("nsenter");
    let neighbour_pid = neighbour.id() as i32;
    poll_until(Duration::from_secs(5), || {
        let comm = std::fs::read_to_string(format!("/proc/{neighbour_pid}/comm")).ok()?;
        (comm.trim() == "sleep").then_some(())
    })
    .expect("sleep started");
    assert_refused(&world, &req(neighbour_pid, ""), "own network namespace");
    neighbour.kill().expect("kill");
    neighbour.wait().expect("wait");
    // The test process lives in the host's namespace, as pid 1 does.
    assert_refused(
        &world,
        &req(std::process::id() as i32, ""),
        "host's network namespace",
    );
    assert_refused(&world, &req(-1, "wlan7"), "not a known uplink");
    assert_refused(
        &world,
        &req(-1, "eth0 -j ACCEPT"),
        "outbound_physical_device",
    );
    let mut bad_source = req(-1, "");
    bad_source.traffic_source = 999;
    assert_refused(&world, &bad_source, "traffic_source");
    // Still serving.
    let (_resp, _l) = connect(&world, &new_namespace());
}

#[test]
fn malformed_protobuf_is_refused() {
    let world = World::start().expect("world");
    let c = client(&world);
    let (lifeline, write_end) = Lifeline::pair().expect("pipe");
    // Field 1 (pid, an int32) sent as a string: the wire type is wrong.
    #[derive(Clone, PartialEq, prost::Message)]
    struct Malformed {
        #[prost(string, tag = "1")]
        pid: String,
    }
    let result: Result<ConnectNamespaceResponse, _> = c.call(
        patchpanel_proto::names::CONNECT_NAMESPACE,
        &Malformed { pid: "1".into() },
        Some(write_end),
    );
    assert!(
        matches!(result, Err(ClientError::InvalidArgument(_))),
        "{result:?}"
    );
    drop(lifeline);
    assert!(c.get_devices().expect("devices").is_empty());
}

#[test]
fn an_explicit_outbound_device_pins_the_namespace_and_follows_the_uplink() {
    let world = World::start().expect("world");
    let (resp, _lifeline) = connect(
        &world,
        &ConnectNamespaceRequest {
            pid: -1,
            outbound_physical_device: "eth0".into(),
            ..Default::default()
        },
    );
    assert!(ping_from(&world, &resp.netns_name));
    let rules = world.netns.exec_ok(&["ip", "rule", "show"]).expect("rules");
    let table = 1000 + ifindex(&world, "eth0");
    assert!(rules.contains(&format!("lookup {table}")), "{rules}");

    world.internet.unplug(&world.netns).expect("unplug");
    world.internet.plug(&world.netns).expect("plug");
    let new_table = 1000 + ifindex(&world, "eth0");
    assert_ne!(new_table, table);
    let followed = poll_until(Duration::from_secs(5), || {
        let rules = world.netns.exec_ok(&["ip", "rule", "show"]).ok()?;
        let mangle = world.netns.firewall_save(false, Some("mangle")).ok()?;
        let tag = format!("0x{:x}", new_table << 16);
        (rules.contains(&format!("lookup {new_table}")) && mangle.contains(&tag)).then_some(())
    });
    assert!(
        followed.is_some(),
        "rules did not follow eth0's new ifindex"
    );
    // The daemon follows the uplink's events one by one (new link, then its
    // addresses and routes); give it time to converge.
    let reachable = poll_until(Duration::from_secs(10), || {
        ping_from(&world, &resp.netns_name).then_some(())
    });
    if reachable.is_none() {
        let show = |argv: &[&str]| world.netns.exec_ok(argv).unwrap_or_default();
        panic!(
            "no connectivity after the uplink came back\n{}\n{}\n{}",
            show(&["ip", "rule"]),
            show(&["ip", "route", "show", "table", "all"]),
            show(&["iptables-save", "-t", "mangle"])
        );
    }
}

fn ifindex(world: &World, name: &str) -> u32 {
    let j = world
        .netns
        .exec_ok(&["ip", "-j", "link", "show", name])
        .expect("ip");
    let v: serde_json::Value = serde_json::from_str(&j).expect("json");
    v[0]["ifindex"].as_u64().expect("ifindex") as u32
}

#[test]
fn route_on_vpn_namespaces_are_signalled() {
    let world = World::start().expect("world");
    let watcher = client(&world);
    let mut changes = watcher.watch_device_changes().expect("watch");
    let (resp, lifeline) = connect(
        &world,
        &ConnectNamespaceRequest {
            pid: -1,
            route_on_vpn: true,
            ..Default::default()
        },
    );
    let added = changes
        .next_timeout(Duration::from_secs(5))
        .expect("watch")
        .expect("no DEVICE_ADDED signal");
    assert_eq!(added.event, 1, "{added:?}");
    assert_eq!(
        added.device.as_ref().map(|d| d.ifname.as_str()),
        Some(resp.host_ifname.as_str())
    );
    drop(lifeline);
    let removed = changes
        .next_timeout(Duration::from_secs(5))
        .expect("watch")
        .expect("no DEVICE_REMOVED signal");
    assert_eq!(removed.event, 2, "{removed:?}");
}

#[test]
fn a_clean_stop_restores_the_namespace_and_the_sysctls() {
    let world = World::start_with(DaemonOptions::default()).expect("world");
    let (_resp, _lifeline) = connect(&world, &new_namespace());
    let mut world = world;
    let status = world
        .daemon
        .stop_cleanly(Duration::from_secs(10))
        .expect("stop");
    assert!(status.success(), "{status:?}\n{}", world.daemon.log());
    let fw = world
        .netns
        .firewall_save(false, None)
        .expect("iptables-save");
    // Only the marker of the mangle tables patchpanel made may stay (they
    // hold the kept accounting chains; the next stop removes them).
    assert!(
        !patchpanel_tests::netns::without_table_marker(&fw).contains("patchpanel"),
        "{fw}"
    );
    let links = world.netns.exec_ok(&["ip", "-o", "link"]).expect("ip");
    assert!(!links.contains("arc_ns"), "{links}");
    let rules = world.netns.exec_ok(&["ip", "rule", "show"]).expect("rules");
    assert!(
        !rules.contains("proto 157") && !rules.contains("lookup 10"),
        "{rules}"
    );
}

#[test]
fn the_hosts_own_rules_links_and_routes_are_never_touched() {
    // A fixture of host firewall rules in built-in and custom chains, a
    // Docker-like FORWARD DROP policy, and a host link and route.
    let netns = patchpanel_tests::Netns::new().expect("netns");
    // Every table exists on a real host (iptables-nft cannot delete a
    // table once patchpanel's setup created it).
    let fixture = concat!(
        "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT ACCEPT [0:0]\n",
        ":HOSTCHAIN - [0:0]\n-A INPUT -s 10.9.9.9/32 -j DROP\n-A FORWARD -j HOSTCHAIN\n",
        "-A HOSTCHAIN -p tcp -m tcp --dport 22 -j ACCEPT\nCOMMIT\n",
        "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n",
        ":POSTROUTING ACCEPT [0:0]\n-A POSTROUTING -s 10.8.0.0/16 -j MASQUERADE\nCOMMIT\n",
        "*mangle\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n",
        ":OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n",
        "-A POSTROUTING -o hostlink -j TCPMSS --clamp-mss-to-pmtu -p tcp --tcp-flags SYN,RST SYN\nCOMMIT\n"
    );
    let fixture6 = concat!(
        "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT ACCEPT [0:0]\n",
        "-A INPUT -s 2001:db8::9/128 -j DROP\nCOMMIT\n",
        "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n",
        ":POSTROUTING ACCEPT [0:0]\nCOMMIT\n",
        "*mangle\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n",
        ":OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\nCOMMIT\n"
    );
    for (tool, rules) in [
        ("iptables-restore", fixture),
        ("ip6tables-restore", fixture6),
    ] {
        let mut restore = Command::new("ip")
            .args(["netns", "exec", netns.name(), tool])
            .stdin(Stdio::piped())
            .spawn()
            .expect(tool);
        restore
            .stdin
            .take()
            .expect("stdin")
            .write_all(rules.as_bytes())
            .expect("write");
        assert!(restore.wait().expect("wait").success(), "{tool}");
    }
    // (No dummy driver on every kernel: a veth pair stands in for a host link.)
    netns
        .exec_ok(&[
            "ip", "link", "add", "hostlink", "type", "veth", "peer", "name", "hostpeer",
        ])
        .expect("host link");
    netns
        .exec_ok(&["ip", "addr", "add", "10.7.0.1/24", "dev", "hostlink"])
        .expect("addr");
    netns
        .exec_ok(&["ip", "link", "set", "hostlink", "up"])
        .expect("up");
    netns
        .exec_ok(&["ip", "route", "add", "10.6.0.0/16", "via", "10.7.0.2"])
        .expect("route");
    let internet = patchpanel_tests::world::Internet::attach(&netns).expect("internet");
    netns
        .exec_ok(&["sysctl", "-qw", "net.ipv4.ip_forward=0"])
        .expect("sysctl");
    let pristine = kernel_snapshot(&netns).expect("snapshot");

    let bus = patchpanel_tests::PrivateBus::start().expect("bus");
    let mut daemon = patchpanel_tests::Daemon::start(&netns, &bus).expect("daemon");
    daemon.wait_ready().expect("ready");
    let world_client = Client::connect_to(bus.address()).expect("client");
    let (resp, lifeline) = world_client
        .connect_namespace(&new_namespace())
        .expect("connect");
    // Guest traffic is forwarded despite the FORWARD DROP policy.
    let out = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", resp.netns_name))
        .args(["ping", "-c", "1", "-W", "3", REMOTE_HOST])
        .output()
        .expect("ping");
    assert!(out.status.success(), "ping under FORWARD DROP failed");
    let during = netns.firewall_save(false, Some("filter")).expect("save");
    assert!(
        during.contains(":FORWARD DROP"),
        "the policy must stay DROP:\n{during}"
    );
    drop(lifeline);
    assert!(daemon
        .stop_cleanly(Duration::from_secs(10))
        .expect("stop")
        .success());
    // Everything but the accounting chains (kept so counts persist across
    // restarts) is gone.
    let after = kernel_snapshot(&netns).expect("snapshot");
    let accounting = |l: &&str| l.contains("rx_eth0") || l.contains("tx_eth0");
    assert!(after.lines().any(|l| l.starts_with(":rx_eth0")), "{after}");
    let after: String = after
        .lines()
        .filter(|l| !accounting(l))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_same_kernel_state(&after, &pristine);
    let fwd = netns
        .exec_ok(&["sysctl", "-n", "net.ipv4.ip_forward"])
        .expect("sysctl");
    assert_eq!(
        fwd.trim(),
        "0",
        "ip_forward must be restored to its value before the daemon"
    );
    drop(daemon);
    drop(internet);
}

/// Runs the CLI as `nobody` (uid 65534) against the test's bus.
fn cli_as_nobody(world: &World, args: &[&str]) -> Command {
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(patchpanel_tests::bin_path("patchpanel").expect("cli"))
        .args(args)
        .env("DBUS_SYSTEM_BUS_ADDRESS", world.bus.address());
    cmd
}

#[test]
fn a_non_root_caller_cannot_connect_another_users_process() {
    let world = World::start().expect("world");
    // Root's process, in its own namespace.
    let mut guest = Command::new("unshare")
        .args(["--net", "sleep", "60"])
        .spawn()
        .expect("unshare");
    let out = cli_as_nobody(&world, &["connect-ns", "--pid", &guest.id().to_string()])
        .output()
        .expect("patchpanel");
    guest.kill().expect("kill");
    guest.wait().expect("wait");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("belongs to uid 0"), "{stderr}");
    assert!(client(&world).get_devices().expect("devices").is_empty());
}

#[test]
fn a_non_root_caller_can_connect_its_own_process() {
    let world = World::start().expect("world");
    // nobody's process, in a network namespace of a user namespace nobody
    // made (rootless). One root made and handed over is refused
    // (tests/tests/caller_limits.rs).
    let mut guest = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "unshare",
            "--user",
            "--map-root-user",
            "--net",
            "sleep",
            "60",
        ])
        .spawn()
        .expect("unshare");
    let pid = guest.id();
    poll_until(Duration::from_secs(5), || {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        status
            .lines()
            .any(|l| l.starts_with("Uid:") && l.contains("65534"))
            .then_some(())
            .filter(|()| status.contains("Name:\tsleep"))
    })
    .expect("guest dropped to nobody");
    let mut child = cli_as_nobody(&world, &["connect-ns", "--json", "--pid", &pid.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .expect("patchpanel");
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().expect("stdout"))
        .read_line(&mut line)
        .expect("read");
    let v: serde_json::Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
    let netns = v["netns_name"].as_str().expect("netns_name").to_string();
    let ping = Command::new("nsenter")
        .args([
            "-t",
            &pid.to_string(),
            "-n",
            "ping",
            "-c",
            "1",
            "-W",
            "3",
            REMOTE_HOST,
        ])
        .output()
        .expect("ping");
    assert!(ping.status.success());
    child.kill().expect("kill");
    child.wait().expect("wait");
    wait_gone(&world, &netns);
    guest.kill().expect("kill");
    guest.wait().expect("wait");
}

/// `nft list ruleset` with the `table ...` blocks named in `skip` left out.
fn ruleset_without(netns: &patchpanel_tests::Netns, skip: &[&str]) -> (String, Vec<String>) {
    let text = netns.exec_ok(&["nft", "list", "ruleset"]).expect("nft");
    let mut kept = String::new();
    let mut skipped = Vec::new();
    let mut in_skipped = false;
    for line in text.lines() {
        if line.starts_with("table ") {
            in_skipped = skip.iter().any(|t| line == format!("table {t} {{"));
        }
        if in_skipped {
            skipped.push(line.to_string());
        } else {
            kept.push_str(line);
            kept.push('\n');
        }
        if line == "}" {
            in_skipped = false;
        }
    }
    (kept, skipped)
}

/// With either backend: what the start made (tables, base chains) goes at
/// the stop; only the accounting chains stay, in their own table (nftables)
/// or in the mangle tables iptables-nft made (with the marker that says
/// patchpanel made them, for the next stop).
#[test]
fn a_start_and_a_clean_stop_leave_the_ruleset_as_found_but_the_counters() {
    let nft = patchpanel_tests::daemon::firewall_backend() == "nftables";
    let netns = patchpanel_tests::Netns::new().expect("netns");
    // A host firewall of its own, in a table of its own.
    netns
        .exec_ok(&["nft", "add", "table", "inet", "host"])
        .expect("nft");
    netns
        .exec_ok(&[
            "nft",
            "add",
            "chain",
            "inet",
            "host",
            "input",
            "{ type filter hook input priority 0; policy accept; }",
        ])
        .expect("nft");
    // And iptables for a filter table only.
    netns
        .exec_ok(&[
            "ip6tables",
            "-A",
            "INPUT",
            "-s",
            "2001:db8::9",
            "-j",
            "DROP",
        ])
        .expect("ip6tables");
    let _internet = patchpanel_tests::world::Internet::attach(&netns).expect("internet");
    let (before, _) = ruleset_without(&netns, &[]);
    let bus = patchpanel_tests::PrivateBus::start().expect("bus");
    let mut daemon = patchpanel_tests::Daemon::start(&netns, &bus).expect("daemon");
    daemon.wait_ready().expect("ready");
    let client = Client::connect_to(bus.address()).expect("client");
    let (_resp, lifeline) = client.connect_namespace(&new_namespace()).expect("connect");
    drop(lifeline);
    assert!(daemon
        .stop_cleanly(Duration::from_secs(10))
        .expect("stop")
        .success());
    let accounting = if nft {
        ["ip patchpanel_mangle", "ip6 patchpanel_mangle"]
    } else {
        ["ip mangle", "ip6 mangle"]
    };
    let (after, kept) = ruleset_without(&netns, &accounting);
    assert_eq!(after, before, "the ruleset differs after a clean stop");
    // What stays: the accounting chains and their rules, no base chain.
    let chains: Vec<&String> = kept
        .iter()
        .filter(|l| l.trim_start().starts_with("chain "))
        .collect();
    assert!(
        !chains.is_empty(),
        "the accounting chains persist: {kept:#?}"
    );
    assert!(
        chains.iter().all(|l| l.contains("chain rx_eth0 {")
            || l.contains("chain tx_eth0 {")
            || (!nft && l.contains("chain patchpanel_created {"))),
        "{kept:#?}"
    );
    assert!(!kept.iter().any(|l| l.contains(" hook ")), "{kept:#?}");
}
