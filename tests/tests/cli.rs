//! The `patchpanel` CLI end to end: the built binary against a real daemon
//! on a private bus, in a namespace with an uplink, each command's `--json`
//! parsed, the kernel state it reports checked against `ip`/`iptables`, and
//! the exit codes scripts rely on (docs/cli.md).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use patchpanel_client::Client;
use patchpanel_tests::vm::FakeContainer;
use patchpanel_tests::world::{World, REMOTE_HOST};
use patchpanel_tests::{bin_path, poll_until, Daemon, Netns, PrivateBus};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(10);

fn cli_path() -> PathBuf {
    bin_path("patchpanel").expect("the patchpanel binary (cargo build --workspace --bins)")
}

/// `patchpanel` on `bus`, in the test's own (root) network namespace.
fn cli(bus: &str) -> Command {
    let mut cmd = Command::new(cli_path());
    cmd.env("DBUS_SYSTEM_BUS_ADDRESS", bus);
    cmd
}

/// `patchpanel` on the world's bus, inside the daemon's namespace (where
/// `topology` must read the kernel).
fn cli_in(world: &World) -> Command {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net={}", world.netns.path().display()))
        .arg("--")
        .arg(cli_path())
        .env("DBUS_SYSTEM_BUS_ADDRESS", world.bus.address());
    cmd
}

fn run(mut cmd: Command, args: &[&str]) -> Output {
    cmd.args(args).output().expect("runs patchpanel")
}

fn ok(world: &World, args: &[&str]) -> String {
    let out = run(cli_in(world), args);
    assert!(
        out.status.success(),
        "patchpanel {args:?} exited {:?}: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

fn json(world: &World, args: &[&str]) -> Value {
    let text = ok(world, args);
    assert_eq!(text.lines().count(), 1, "not one line: {text}");
    serde_json::from_str(&text).unwrap_or_else(|err| panic!("{err}: {text}"))
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn client(world: &World) -> Client {
    Client::connect_to(world.bus.address()).expect("client")
}

fn ifnames(devices: &Value) -> Vec<String> {
    devices["devices"]
        .as_array()
        .expect("devices array")
        .iter()
        .map(|d| d["ifname"].as_str().expect("ifname").to_string())
        .collect()
}

/// A long-running `patchpanel`, its stdout lines on a channel; killed if the
/// test ends first.
struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Running {
    fn start(mut cmd: Command, args: &[&str]) -> Running {
        let mut child = cmd
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("runs patchpanel");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Running { child, lines }
    }

    fn json_line(&self) -> Value {
        let line = self.lines.recv_timeout(WAIT).expect("a line on stdout");
        serde_json::from_str(&line).unwrap_or_else(|err| panic!("{err}: {line}"))
    }

    fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("runs kill");
        assert!(status.success());
    }

    fn wait(mut self) -> (Option<i32>, String) {
        let status = self.child.wait().expect("waits for patchpanel");
        let mut err = String::new();
        if let Some(mut stderr) = self.child.stderr.take() {
            std::io::Read::read_to_string(&mut stderr, &mut err).expect("stderr");
        }
        (status.code(), err)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---- vm and arc ----

#[test]
fn vm_start_termina_prints_the_tap_and_addresses_and_devices_lists_it() {
    let world = World::start().expect("world");

    let started = json(&world, &["vm", "start", "termina", "--cid", "7", "--json"]);

    assert_eq!(started["guest"], "termina");
    assert_eq!(started["action"], "started");
    assert_eq!(started["cid"], 7);
    assert_eq!(started["tap_device_ifname"], "vmtap0");
    assert_eq!(started["ipv4_subnet"], "100.115.92.24/30");
    assert_eq!(started["ipv4_address"], "100.115.92.26");
    assert_eq!(started["gateway_ipv4_address"], "100.115.92.25");
    assert_eq!(started["container_ipv4_subnet"], "100.115.92.192/28");
    assert_eq!(started["container_ipv4_address"], "100.115.92.193");
    let devices = json(&world, &["devices", "--json"]);
    assert_eq!(ifnames(&devices), ["vmtap0"]);
    assert_eq!(devices["devices"][0]["guest_type"], "TERMINA_VM");
    assert!(world
        .netns
        .exec_ok(&["ip", "link", "show", "vmtap0"])
        .is_ok());
}

#[test]
fn vm_stop_termina_removes_the_tap() {
    let world = World::start().expect("world");
    ok(&world, &["vm", "start", "termina", "--cid", "7"]);

    let stopped = json(&world, &["vm", "stop", "termina", "--cid", "7", "--json"]);

    assert_eq!(
        stopped,
        serde_json::json!({"guest": "termina", "action": "stopped", "cid": 7})
    );
    assert!(ifnames(&json(&world, &["devices", "--json"])).is_empty());
    assert!(world
        .netns
        .exec_ok(&["ip", "link", "show", "vmtap0"])
        .is_err());
}

#[test]
fn vm_start_termina_text_names_the_tap_and_the_container_subnet() {
    let world = World::start().expect("world");

    let text = ok(&world, &["vm", "start", "termina", "--cid", "3"]);

    assert!(text.starts_with("started Termina VM cid 3\n"), "{text}");
    assert!(text.contains("tap:                vmtap0\n"), "{text}");
    assert!(
        text.contains("container subnet:   100.115.92.192/28\n"),
        "{text}"
    );
}

#[test]
fn vm_start_plugin_with_a_subnet_index_gets_that_subnet() {
    let world = World::start().expect("world");

    let started = json(
        &world,
        &[
            "vm",
            "start",
            "plugin",
            "--id",
            "12",
            "--subnet-index",
            "2",
            "--json",
        ],
    );
    let stopped = json(&world, &["vm", "stop", "plugin", "--id", "12", "--json"]);

    assert_eq!(started["guest"], "plugin");
    assert_eq!(started["id"], 12);
    assert_eq!(started["ipv4_subnet"], "100.115.93.8/29");
    assert_eq!(started["ipv4_address"], "100.115.93.10");
    assert!(started["tap_device_ifname"]
        .as_str()
        .unwrap()
        .starts_with("vmtap"));
    assert_eq!(stopped["action"], "stopped");
    assert_eq!(stopped["id"], 12);
}

#[test]
fn vm_start_arcvm_prints_arc0_and_six_taps_in_order() {
    let world = World::start().expect("world");

    let started = json(&world, &["vm", "start", "arcvm", "--cid", "33", "--json"]);
    let taps: Vec<&str> = started["tap_device_ifnames"]
        .as_array()
        .expect("taps")
        .iter()
        .map(|t| t.as_str().expect("tap"))
        .collect();
    let stopped = json(&world, &["vm", "stop", "arcvm", "--cid", "33", "--json"]);

    assert_eq!(started["arc0_ipv4_address"], "100.115.92.2");
    assert_eq!(
        taps,
        ["vmtap0", "vmtap1", "vmtap2", "vmtap3", "vmtap4", "vmtap5"]
    );
    assert_eq!(stopped["guest"], "arcvm");
    assert!(ifnames(&json(&world, &["devices", "--json"])).is_empty());
}

#[test]
fn arc_start_prints_the_arc_device_of_the_uplink_and_arc_stop_removes_it() {
    let world = World::start().expect("world");
    let container = FakeContainer::start().expect("container");
    let pid = container.pid().to_string();

    let started = json(&world, &["arc", "start", "--pid", &pid, "--json"]);
    let stopped = json(&world, &["arc", "stop", "--pid", &pid, "--json"]);

    assert_eq!(started["guest"], "arc");
    assert_eq!(started["pid"], container.pid());
    let device = &started["devices"][0];
    assert_eq!(device["ifname"], "arc_eth0");
    assert_eq!(device["phys_ifname"], "eth0");
    assert_eq!(device["guest_type"], "ARC");
    assert_eq!(device["guest_ipv4_addr"], "100.115.92.6");
    assert_eq!(stopped["action"], "stopped");
    assert!(ifnames(&json(&world, &["devices", "--json"])).is_empty());
}

#[test]
fn stopping_a_vm_that_is_not_running_exits_one_with_the_servers_reason() {
    let world = World::start().expect("world");

    let out = run(cli_in(&world), &["vm", "stop", "termina", "--cid", "99"]);

    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).starts_with("patchpanel: cannot stop the Termina VM's network: "),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("99"), "{}", stderr(&out));
}

// ---- connect-ns, port-rule, counters ----

#[test]
fn connect_ns_json_holds_the_namespace_until_sigterm() {
    let world = World::start().expect("world");
    let running = Running::start(cli_in(&world), &["connect-ns", "--json"]);

    let ns = running.json_line();
    let listed = json(&world, &["devices", "--json"]);
    running.terminate();
    let (code, err) = running.wait();

    let netns = ns["netns_name"].as_str().expect("netns_name");
    assert!(netns.starts_with(world.daemon.netns_prefix()), "{ns}");
    assert_eq!(ifnames(&listed), [ns["host_ifname"].as_str().unwrap()]);
    assert_eq!(code, Some(0), "{err}");
    let gone = poll_until(WAIT, || {
        ifnames(&json(&world, &["devices", "--json"]))
            .is_empty()
            .then_some(())
    });
    assert!(gone.is_some(), "the namespace outlived the CLI");
}

#[test]
fn port_rule_create_and_delete_change_the_firewall() {
    let world = World::start().expect("world");
    let rule = "-A ingress_port_firewall -i eth0 -p tcp -m tcp --dport 8080 -j ACCEPT";
    let args = [
        "access", "--proto", "tcp", "--port", "8080", "--ifname", "eth0",
    ];

    let created = ok(&world, &[&["port-rule", "create"][..], &args].concat());
    let with = world.netns.firewall_save(false, Some("filter")).unwrap();
    let deleted = ok(&world, &[&["port-rule", "delete"][..], &args].concat());
    let without = world.netns.firewall_save(false, Some("filter")).unwrap();

    assert_eq!(created, "created access rule\n");
    assert!(with.contains(rule), "{with}");
    assert_eq!(deleted, "deleted access rule\n");
    assert!(!without.contains(rule), "{without}");
}

/// Pings the remote host from a connected namespace in the background.
fn pinger(world: &World, netns: &str) -> Child {
    Command::new("nsenter")
        .arg(format!("--net=/run/netns/{netns}"))
        .args([
            "--",
            "ping",
            "-q",
            "-c",
            "25",
            "-i",
            "0.2",
            "-s",
            "1000",
            REMOTE_HOST,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|err| panic!("ping from {netns} in {world:?}: {err}"))
}

#[test]
fn counters_json_and_watch_rates_count_a_namespaces_traffic_on_the_uplink() {
    let world = World::start().expect("world");
    let c = client(&world);
    let (ns, _lifeline) = c
        .connect_namespace(&patchpanel_proto::ConnectNamespaceRequest {
            pid: -1,
            ..Default::default()
        })
        .expect("ConnectNamespace");
    let mut ping = pinger(&world, &ns.netns_name);

    let watch = run(
        cli_in(&world),
        &[
            "counters",
            "--watch",
            "--interval",
            "0.5",
            "--count",
            "4",
            "--json",
            "eth0",
        ],
    );
    let _ = ping.kill();
    let _ = ping.wait();
    let totals = json(&world, &["counters", "--json", "eth0"]);

    assert!(watch.status.success(), "{}", stderr(&watch));
    let reports: Vec<Value> = String::from_utf8_lossy(&watch.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert_eq!(reports.len(), 4);
    assert!(reports
        .iter()
        .all(|r| r["interval_secs"].as_f64().is_some_and(|s| s >= 0.5)));
    let busy = reports
        .iter()
        .flat_map(|r| r["rates"].as_array().unwrap())
        .find(|r| {
            r["device"] == "eth0"
                && r["source"] == "SYSTEM"
                && r["tx_bytes_per_sec"].as_f64().unwrap() > 1000.0
                && r["tx_packets_per_sec"].as_f64().unwrap() > 0.0
        });
    assert!(busy.is_some(), "no outgoing rate in {reports:?}");
    let counters = totals["counters"].as_array().expect("counters");
    assert!(
        counters
            .iter()
            .any(|c| c["source"] == "SYSTEM" && c["tx_packets"].as_u64().unwrap() > 0),
        "{totals}"
    );
}

// ---- topology ----

/// A world with a Termina VM and a connected namespace.
fn populated_world() -> (World, patchpanel_client::Lifeline) {
    let world = World::start().expect("world");
    let c = client(&world);
    c.terminavm_startup(7).expect("TerminaVmStartup");
    let (_, lifeline) = c
        .connect_namespace(&patchpanel_proto::ConnectNamespaceRequest {
            pid: -1,
            ..Default::default()
        })
        .expect("ConnectNamespace");
    (world, lifeline)
}

fn guest<'a>(topology: &'a Value, ifname: &str) -> &'a Value {
    topology["guests"]
        .as_array()
        .expect("guests")
        .iter()
        .find(|g| g["device"]["ifname"] == ifname)
        .unwrap_or_else(|| panic!("no guest {ifname} in {topology}"))
}

#[test]
fn topology_json_places_the_guests_under_the_uplink_with_kernel_state() {
    let (world, _lifeline) = populated_world();

    let t = json(&world, &["topology", "--json"]);

    assert_eq!(t["default_uplink"], "eth0");
    assert_eq!(t["firewall_read"], true);
    let uplinks = t["uplinks"].as_array().expect("uplinks");
    assert_eq!(uplinks.len(), 1, "{t}");
    let eth0 = &uplinks[0];
    assert_eq!(eth0["ifname"], "eth0");
    assert_eq!(eth0["addresses"], serde_json::json!(["192.0.2.2/24"]));
    assert!(
        eth0["routes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["dst"] == "default" && r["gateway"] == "192.0.2.1"),
        "{eth0}"
    );
    let chain_names = |v: &Value| -> Vec<String> {
        v["chains"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                format!(
                    "{}/{}",
                    c["table"].as_str().unwrap(),
                    c["chain"].as_str().unwrap()
                )
            })
            .collect()
    };
    assert!(
        chain_names(eth0).contains(&"mangle/tx_eth0".to_string()),
        "{eth0}"
    );

    let vm = guest(&t, "vmtap0");
    assert_eq!(vm["uplink"], "eth0");
    assert_eq!(vm["follows_default"], true);
    assert_eq!(vm["link"]["kind"], "tun");
    assert_eq!(vm["addresses"], serde_json::json!(["100.115.92.25/30"]));
    assert!(
        vm["routes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["dst"] == "100.115.92.192/28" && r["gateway"] == "100.115.92.26"),
        "{vm}"
    );
    assert!(
        vm["fwmarks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["value"] == "0x2100"
                && m["mask"] == "0x3f00"
                && m["meaning"] == "source CrostiniVm"),
        "{vm}"
    );
    let vm_chains = chain_names(vm);
    assert!(
        vm_chains.contains(&"mangle/PREROUTING_vmtap0".to_string()),
        "{vm_chains:?}"
    );
    assert!(
        vm_chains.contains(&"filter/guest_forward".to_string()),
        "{vm_chains:?}"
    );

    let ns = t["guests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["device"]["guest_type"] == "CONNECTED_NS")
        .expect("the connected namespace");
    assert_eq!(ns["link"]["kind"], "veth");
    assert!(
        ns["fwmarks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["meaning"] == "source System"),
        "{ns}"
    );
}

#[test]
fn topology_text_is_a_tree_of_the_uplink_and_its_guests() {
    let (world, _lifeline) = populated_world();

    let text = ok(&world, &["topology"]);

    assert!(
        text.starts_with("uplink eth0 (veth, UP, ifindex "),
        "{text}"
    );
    assert!(text.contains("[default network]\n"), "{text}");
    assert!(text.contains("─ guest vmtap0 TERMINA_VM (tun, "), "{text}");
    assert!(text.contains("[follows the default network]"), "{text}");
    assert!(
        text.contains("mark 0x2100/0x3f00 source CrostiniVm (set in mangle/PREROUTING_vmtap0"),
        "{text}"
    );
    assert!(!text.contains("notes:"), "{text}");
}

#[test]
fn topology_dot_is_accepted_by_graphviz() {
    let has_dot = Command::new("dot")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_dot {
        eprintln!("skipped: `dot` (graphviz) is not installed; scripts/bootstrap installs it");
        return;
    }
    let (world, _lifeline) = populated_world();
    let graph = ok(&world, &["topology", "--dot"]);

    let mut dot = Command::new("dot")
        .arg("-Tsvg")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("dot");
    std::io::Write::write_all(&mut dot.stdin.take().unwrap(), graph.as_bytes()).unwrap();
    let out = dot.wait_with_output().unwrap();

    assert!(
        out.status.success(),
        "dot refused:\n{}\n{graph}",
        stderr(&out)
    );
    assert!(
        stderr(&out).is_empty(),
        "dot warned:\n{}\n{graph}",
        stderr(&out)
    );
    let svg = String::from_utf8_lossy(&out.stdout);
    assert!(svg.contains("<svg"), "{svg}");
    assert!(svg.contains("vmtap0"), "{svg}");
    assert!(svg.contains("uplink eth0"), "{svg}");
}

#[test]
fn topology_as_an_unprivileged_user_leaves_the_firewall_out_with_a_note() {
    let (world, _lifeline) = populated_world();
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net={}", world.netns.path().display()))
        .args([
            "--",
            "setpriv",
            "--reuid=nobody",
            "--regid=nogroup",
            "--clear-groups",
            "--",
        ])
        .arg(cli_path())
        .env("DBUS_SYSTEM_BUS_ADDRESS", world.bus.address());

    let out = run(cmd, &["topology", "--json"]);

    assert!(out.status.success(), "{}", stderr(&out));
    let t: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(t["firewall_read"], false);
    assert!(guest(&t, "vmtap0")["chains"].as_array().unwrap().is_empty());
    // Links and addresses need no privilege.
    assert_eq!(guest(&t, "vmtap0")["addresses"][0], "100.115.92.25/30");
    let notes = t["notes"].to_string();
    assert!(
        notes.contains("iptables-save") && notes.contains("need root"),
        "{notes}"
    );
}

// ---- monitor and watch ----

/// Starts a guest with `start` until `running` prints a line for which
/// `is_added` holds, and returns that line. The CLI subscribes
/// asynchronously, so a start may come before it listens: then `stop` and
/// try again. Signals arrive in order, so once the added line is seen no
/// older line is still on the way.
fn until_added(
    running: &Running,
    is_added: impl Fn(&str) -> bool,
    start: impl Fn(),
    stop: impl Fn(),
) -> String {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        start();
        while let Ok(line) = running.lines.recv_timeout(Duration::from_millis(300)) {
            if is_added(&line) {
                return line;
            }
        }
        stop();
        assert!(
            std::time::Instant::now() < deadline,
            "no device added line within {WAIT:?}"
        );
    }
}

#[test]
fn monitor_json_prints_a_vms_device_added_and_removed() {
    let world = World::start().expect("world");
    let monitor = Running::start(cli_in(&world), &["monitor", "--json"]);
    let c = client(&world);
    let added = until_added(
        &monitor,
        |line| line.contains("\"DEVICE_ADDED\""),
        || {
            c.terminavm_startup(5).expect("TerminaVmStartup");
        },
        || c.terminavm_shutdown(5).expect("TerminaVmShutdown"),
    );

    c.terminavm_shutdown(5).expect("TerminaVmShutdown");
    let removed = monitor.json_line();
    monitor.terminate();
    let (code, err) = monitor.wait();

    let added: Value = serde_json::from_str(&added).expect("json");
    assert_eq!(added["signal"], "NetworkDeviceChanged");
    assert_eq!(added["event"], "DEVICE_ADDED");
    // vmtap0 unless a start before the monitor was listening was undone
    // and its TAP is still being deleted: then the next name.
    let tap = added["device"]["ifname"].as_str().unwrap_or_default();
    assert!(tap.starts_with("vmtap"), "{added}");
    assert_eq!(added["device"]["guest_type"], "TERMINA_VM");
    assert_eq!(removed["signal"], "NetworkDeviceChanged");
    assert_eq!(removed["event"], "DEVICE_REMOVED");
    assert_eq!(removed["device"]["ifname"], tap);
    assert_eq!(code, Some(0), "{err}");
}

#[test]
fn watch_text_prints_one_line_per_device_change() {
    let world = World::start().expect("world");
    let watch = Running::start(cli_in(&world), &["watch"]);
    let c = client(&world);

    let added = until_added(
        &watch,
        |line| line.starts_with("DEVICE_ADDED"),
        || {
            c.pluginvm_startup(4, 0).expect("PluginVmStartup");
        },
        || c.pluginvm_shutdown(4).expect("PluginVmShutdown"),
    );
    c.pluginvm_shutdown(4).expect("PluginVmShutdown");
    let removed = watch.lines.recv_timeout(WAIT).expect("a line");
    watch.terminate();
    let (code, err) = watch.wait();

    // vmtap0 unless a start before the watch was listening was undone and
    // its TAP is still being deleted: then the next name.
    let tap = added.split_whitespace().nth(1).unwrap_or_default();
    assert!(tap.starts_with("vmtap"), "{added}");
    assert!(
        added.starts_with(&format!(
            "DEVICE_ADDED {tap} guest=- type=PARALLELS_VM uplink={tap} subnet=100.115.93.0/29"
        )),
        "{added}"
    );
    assert!(
        removed.starts_with(&format!("DEVICE_REMOVED {tap} ")),
        "{removed}"
    );
    assert_eq!(code, Some(0), "{err}");
}

// ---- exit codes ----

#[test]
fn without_a_daemon_on_the_bus_calls_exit_three_and_say_it_is_not_running() {
    let bus = PrivateBus::start().expect("bus");

    for args in [
        &["devices", "--json"][..],
        &["counters"],
        &["topology", "--json"],
        &["vm", "start", "termina", "--cid", "3"],
        &["arc", "stop", "--pid", "1234"],
        &[
            "port-rule",
            "create",
            "access",
            "--proto",
            "udp",
            "--port",
            "53",
        ],
    ] {
        let out = run(cli(bus.address()), args);

        assert_eq!(out.status.code(), Some(3), "{args:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("patchpaneld is not running"),
            "{args:?}: {}",
            stderr(&out)
        );
        assert!(out.stdout.is_empty(), "{args:?}");
    }
}

#[test]
fn without_a_bus_the_exit_code_is_three() {
    let out = run(cli("unix:path=/nonexistent/ppt-no-bus"), &["devices"]);

    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("cannot connect to the system bus"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_call_the_bus_policy_denies_exits_four() {
    let netns = Netns::new().expect("netns");
    let bus = PrivateBus::start_with_rules(
        r#"<deny send_destination="org.chromium.PatchPanel" send_interface="org.chromium.PatchPanel" send_member="TerminaVmStartup"/>"#,
    )
    .expect("bus");
    let mut daemon = Daemon::start(&netns, &bus).expect("daemon");
    daemon.wait_ready().expect("ready");

    let denied = run(
        cli(bus.address()),
        &["vm", "start", "termina", "--cid", "3"],
    );
    let allowed = run(cli(bus.address()), &["devices", "--json"]);

    assert_eq!(denied.status.code(), Some(4), "{}", stderr(&denied));
    assert!(
        stderr(&denied)
            .contains("the bus policy does not allow this user to call TerminaVmStartup"),
        "{}",
        stderr(&denied)
    );
    assert!(allowed.status.success(), "{}", stderr(&allowed));
    drop(daemon);
}

#[test]
fn a_usage_error_exits_two_without_a_bus() {
    let out = run(
        cli("unix:path=/nonexistent/ppt-no-bus"),
        &["vm", "start", "termina"],
    );

    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--cid"), "{}", stderr(&out));
}
