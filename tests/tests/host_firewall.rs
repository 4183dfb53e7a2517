//! Living with a host firewall that changes after patchpanel started (issue
//! 22), end to end with either firewall backend: a connected namespace, a
//! Termina VM, an ACCESS rule for a host listener and a FORWARDING rule to
//! a server in the namespace all work; then another program changes the
//! rule set in the daemon's namespace (Docker's FORWARD DROP, ufw's INPUT
//! DROP, `nft flush ruleset`, nftables.service's restart, a full
//! `iptables-restore`) and, without any D-Bus call, everything works again
//! within 2 s, the host's own drops still drop the rest, and the host's own
//! rules are exactly what the same commands leave in a twin namespace
//! without patchpanel. A peer that deletes patchpanel's table over and
//! over is not fought in a loop; counters never go back across a flush.
//!
//! One situation differs by backend: the iptables backend's accepts carry
//! no mark, so a native nftables table with a drop policy (nftables.service
//! made strict) drops guest traffic whatever patchpanel does; with that
//! backend the test checks that the daemon rebuilds its own firewall and
//! says so, and a ruleset whose policies accept is tested with both.

use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use patchpanel_client::{Client, Lifeline};
use patchpanel_proto::modify_port_rule_request::{Operation, Protocol, RuleType};
use patchpanel_proto::traffic_counter::{IpFamily, Source};
use patchpanel_proto::{
    ipv4_from_addr4, ipv4_from_net_u32, ConnectNamespaceRequest, ModifyPortRuleRequest,
    TrafficCounter,
};
use patchpanel_tests::daemon::firewall_backend;
use patchpanel_tests::host_rules::host_rules;
use patchpanel_tests::vm::FakeVm;
use patchpanel_tests::world::{World, REMOTE_HOST, UPLINK_ADDR};
use patchpanel_tests::{poll_until, traffic, Netns};

/// How soon after a change everything must work again (the bound).
const RECOVERY: Duration = Duration::from_secs(2);
/// A server on the remote host the guests reach through NAT.
const REMOTE_PORT: u16 = 7000;
/// A host listener opened with ACCESS.
const ACCESS_PORT: u16 = 9090;
/// A host listener without ACCESS: the host's own INPUT drop keeps it closed.
const CLOSED_PORT: u16 = 9191;
/// FORWARDING: the uplink's port to the namespace's server.
const FORWARDED_PORT: u16 = 8080;
const GUEST_PORT: u16 = 8000;
/// One probe's timeout while waiting for the recovery.
const PROBE: Duration = Duration::from_millis(300);

/// A process killed on drop (also when the test fails).
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Everything patchpanel serves, working. Fields drop in order: the servers
/// and the VM go before the namespace is disconnected and the daemon stops.
struct Scene {
    _servers: Vec<Killed>,
    vm: FakeVm,
    _lifeline: Lifeline,
    /// The connected namespace.
    ns: String,
    world: World,
    /// Where the same host commands run without patchpanel.
    twin: Netns,
}

impl Scene {
    fn start() -> Scene {
        let world = World::start().expect("world");
        let client = Client::connect_to(world.bus.address()).expect("client");
        let (ns, lifeline) = client
            .connect_namespace(&ConnectNamespaceRequest {
                pid: -1,
                ..Default::default()
            })
            .expect("ConnectNamespace");
        let guest_ip = ipv4_from_net_u32(ns.peer_ipv4_address).to_string();
        let termina = client.terminavm_startup(7).expect("TerminaVmStartup");
        let vm_addr = ipv4_from_addr4(&termina.ipv4_address).expect("VM address");
        let vm_gateway = ipv4_from_addr4(&termina.gateway_ipv4_address).expect("VM gateway");
        let vm = FakeVm::boot(
            &world.netns,
            &termina.tap_device_ifname,
            "eth0",
            &vm_addr.to_string(),
            30,
            &vm_gateway.to_string(),
        )
        .expect("VM");
        let upstream = world.internet.upstream.name().to_string();
        let host = world.netns.name().to_string();
        let servers = vec![
            server(&upstream, REMOTE_HOST, REMOTE_PORT, "remote"),
            server(&host, "0.0.0.0", ACCESS_PORT, "host"),
            server(&host, "0.0.0.0", CLOSED_PORT, "other"),
            server(&ns.netns_name, &guest_ip, GUEST_PORT, "guest"),
        ];
        let mut access = port_rule(RuleType::Access, ACCESS_PORT);
        access.input_ifname = "eth0".into();
        client.modify_port_rule(&access).expect("ACCESS");
        let mut forward = port_rule(RuleType::Forwarding, FORWARDED_PORT);
        forward.input_ifname = "eth0".into();
        forward.dst_ip = guest_ip;
        forward.dst_port = GUEST_PORT.into();
        client.modify_port_rule(&forward).expect("FORWARDING");
        let scene = Scene {
            _servers: servers,
            vm,
            _lifeline: lifeline,
            ns: ns.netns_name,
            world,
            twin: Netns::new().expect("twin namespace"),
        };
        // The first packets wait for ARP on both sides of the VM's relay.
        let failing = poll_until(Duration::from_secs(10), || {
            scene
                .failing(Duration::from_secs(1))
                .is_empty()
                .then_some(())
        });
        assert!(
            failing.is_some(),
            "{:?}",
            scene.failing(Duration::from_secs(2))
        );
        assert_eq!(scene.fetch_closed_port(Duration::from_secs(2)), "other");
        scene
    }

    fn upstream(&self) -> &str {
        self.world.internet.upstream.name()
    }

    /// What does not work, probed all at once with `timeout` each.
    fn failing(&self, timeout: Duration) -> Vec<String> {
        let ping = |netns: &str| {
            let secs = format!("{:.1}", timeout.as_secs_f64());
            traffic_ok(
                Command::new("ip")
                    .args(["netns", "exec", netns])
                    .args(["ping", "-c", "1", "-W", &secs, REMOTE_HOST])
                    .output()
                    .map(|o| o.status.success()),
            )
        };
        let fetch = |netns: &str, addr: &str, port: u16, want: &str| match traffic::fetch_within(
            netns, 0, addr, port, timeout,
        ) {
            Ok(got) if got == want => None,
            Ok(got) => Some(got),
            Err(e) => Some(format!("{e:#}")),
        };
        let (ns, vm, up) = (self.ns.as_str(), self.vm.netns().name(), self.upstream());
        let (ping, fetch) = (&ping, &fetch);
        std::thread::scope(|s| {
            let probes = [
                ("namespace ping", s.spawn(move || ping(ns))),
                ("VM ping", s.spawn(move || ping(vm))),
                (
                    "namespace TCP",
                    s.spawn(move || fetch(ns, REMOTE_HOST, REMOTE_PORT, "remote")),
                ),
                (
                    "VM TCP",
                    s.spawn(move || fetch(vm, REMOTE_HOST, REMOTE_PORT, "remote")),
                ),
                (
                    "ACCESS",
                    s.spawn(move || fetch(up, UPLINK_ADDR, ACCESS_PORT, "host")),
                ),
                (
                    "FORWARDING",
                    s.spawn(move || fetch(up, UPLINK_ADDR, FORWARDED_PORT, "guest")),
                ),
            ];
            probes
                .into_iter()
                .filter_map(|(what, probe)| match probe.join() {
                    Ok(None) => None,
                    Ok(Some(why)) => Some(format!("{what}: {why}")),
                    Err(_) => Some(format!("{what}: the probe panicked")),
                })
                .collect()
        })
    }

    /// Runs `change` on the host, then waits for everything to work again:
    /// the time from the change to the start of the first round of probes
    /// that all passed, which must start within [`RECOVERY`].
    fn change_and_recover(&self, what: &str, change: impl Fn(&Netns)) -> Duration {
        let t0 = Instant::now();
        change(&self.world.netns);
        loop {
            let started = t0.elapsed();
            let failing = self.failing(PROBE);
            if failing.is_empty() {
                eprintln!(
                    "after {what}: a round of probes started {started:?} after the change all passed (done {:?} after it)",
                    t0.elapsed()
                );
                change(&self.twin);
                return started;
            }
            assert!(
                started < RECOVERY,
                "after {what}, still failing {started:?} later: {failing:?}\nthe daemon's log:\n{}",
                self.world.daemon.log()
            );
        }
    }

    /// The reply of the port without ACCESS, seen from upstream.
    fn fetch_closed_port(&self, timeout: Duration) -> String {
        traffic::fetch_within(self.upstream(), 0, UPLINK_ADDR, CLOSED_PORT, timeout)
            .expect("client")
    }

    /// The host's rules are what the same commands made without
    /// patchpanel, patchpanel's objects aside; they show `shows`.
    fn assert_host_rules_as_in_twin(&self, what: &str, shows: &str) {
        let ours = host_rules(&self.world.netns).expect("host rules");
        let twin = host_rules(&self.twin).expect("twin rules");
        assert!(
            twin.contains(shows),
            "the listing misses {shows:?} after {what}:\n{twin}"
        );
        assert!(
            ours == twin,
            "after {what} the host's own rules differ from the same commands' without patchpanel:\n\
             --- with patchpanel\n{ours}\n--- without\n{twin}"
        );
    }

    /// The daemon's lines saying what it found and did.
    fn log_lines(&self, needle: &str) -> Vec<String> {
        self.world
            .daemon
            .log()
            .lines()
            .filter(|l| l.contains(needle))
            .map(str::to_string)
            .collect()
    }

    fn report_rebuilds(&self, what: &str) {
        let lines = self.log_lines("host firewall changed by");
        assert!(
            !lines.is_empty(),
            "after {what} the daemon logged no host firewall change:\n{}",
            self.world.daemon.log()
        );
        for l in lines {
            eprintln!("after {what}: {l}");
        }
    }
}

fn traffic_ok(result: std::io::Result<bool>) -> Option<String> {
    match result {
        Ok(true) => None,
        Ok(false) => Some("no answer".into()),
        Err(e) => Some(e.to_string()),
    }
}

fn server(netns: &str, addr: &str, port: u16, reply: &str) -> Killed {
    Killed(traffic::reply_server(netns, addr, port, reply).expect("server"))
}

fn port_rule(ty: RuleType, port: u16) -> ModifyPortRuleRequest {
    ModifyPortRuleRequest {
        op: Operation::Create as i32,
        r#type: ty as i32,
        proto: Protocol::Tcp as i32,
        input_dst_port: port.into(),
        ..Default::default()
    }
}

fn run(netns: &Netns, argv: &[&str]) {
    netns
        .exec_ok(argv)
        .unwrap_or_else(|e| panic!("{argv:?}: {e:#}"));
}

/// `text` in a temporary file, for `nft -f` and `iptables-restore`.
fn file_with(text: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().expect("temporary file");
    file.write_all(text.as_bytes()).expect("write");
    file
}

fn path_of(file: &tempfile::NamedTempFile) -> &str {
    file.path().to_str().expect("a UTF-8 temporary path")
}

#[test]
fn docker_forward_drop_is_lived_with() {
    let scene = Scene::start();
    scene.change_and_recover("iptables -P FORWARD DROP", |n| {
        run(n, &["iptables", "-P", "FORWARD", "DROP"])
    });
    scene.assert_host_rules_as_in_twin("iptables -P FORWARD DROP", ":FORWARD DROP\n");
    scene.report_rebuilds("FORWARD DROP");
}

#[test]
fn ufw_input_drop_opens_access_ports_only() {
    let scene = Scene::start();
    scene.change_and_recover("ufw's INPUT DROP", |n| {
        run(n, &["iptables", "-P", "INPUT", "DROP"]);
        run(n, &["iptables", "-I", "INPUT", "-i", "lo", "-j", "ACCEPT"]);
        run(
            n,
            &[
                "iptables",
                "-I",
                "INPUT",
                "-m",
                "conntrack",
                "--ctstate",
                "ESTABLISHED,RELATED",
                "-j",
                "ACCEPT",
            ],
        );
    });
    assert_eq!(scene.fetch_closed_port(Duration::from_secs(1)), "timeout");
    scene.assert_host_rules_as_in_twin(
        "ufw's INPUT DROP",
        "-A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n-A INPUT -i lo -j ACCEPT\n",
    );
    scene.report_rebuilds("INPUT DROP");
}

#[test]
fn a_flushed_ruleset_is_rebuilt_without_a_dbus_call() {
    let scene = Scene::start();
    scene.change_and_recover("nft flush ruleset", |n| {
        run(n, &["nft", "flush", "ruleset"])
    });
    scene.assert_host_rules_as_in_twin("nft flush ruleset", "");
    scene.report_rebuilds("flush ruleset");
}

/// Debian's /etc/nftables.conf made strict: what `systemctl restart
/// nftables` loads.
const NFTABLES_CONF: &str = "flush ruleset

table inet filter {
	chain input {
		type filter hook input priority filter; policy drop;
		ct state established,related accept
		iif \"lo\" accept
		tcp dport 22 accept
	}
	chain forward {
		type filter hook forward priority filter; policy drop;
	}
	chain output {
		type filter hook output priority filter; policy accept;
	}
}
";

#[test]
fn a_restarted_nftables_service_is_lived_with_and_keeps_its_drops() {
    let scene = Scene::start();
    let conf = file_with(NFTABLES_CONF);
    if firewall_backend() == "iptables" {
        the_iptables_backend_reports_a_native_drop_policy(&scene, &conf);
        return;
    }
    // Started after patchpanel, then restarted: each time the file flushes
    // the whole rule set and re-creates only the host's own table.
    for what in ["nftables.service start", "nftables.service restart"] {
        scene.change_and_recover(what, |n| run(n, &["nft", "-f", path_of(&conf)]));
        assert_eq!(
            scene.fetch_closed_port(Duration::from_secs(1)),
            "timeout",
            "after {what} the host's input drop must still drop a port without ACCESS"
        );
        scene.assert_host_rules_as_in_twin(
            what,
            "policy drop;\nct state established,related accept\n",
        );
    }
    scene.report_rebuilds("nftables.service");
}

/// The iptables backend accepts in iptables' own chains, and its accepts
/// carry no mark for a narrow accept in another table to let through: a
/// native table's drop policy drops guest traffic and ACCESS ports, and
/// the daemon says so (`firewall_backend = "nftables"` lives with it).
/// What it still does: rebuild its own firewall after the flush, and
/// leave the host's table as loaded.
fn the_iptables_backend_reports_a_native_drop_policy(
    scene: &Scene,
    conf: &tempfile::NamedTempFile,
) {
    let changes = |s: &Scene| s.log_lines("host firewall changed by").len();
    let before = changes(scene);
    run(&scene.world.netns, &["nft", "-f", path_of(conf)]);
    run(&scene.twin, &["nft", "-f", path_of(conf)]);
    poll_until(RECOVERY, || (changes(scene) > before).then_some(()))
        .unwrap_or_else(|| panic!("no check after the change:\n{}", scene.world.daemon.log()));
    let line = scene
        .log_lines("host firewall changed by")
        .pop()
        .unwrap_or_default();
    for said in [
        "inet filter input (hook input, priority 0) has policy drop: it drops the guest traffic",
        "inet filter forward (hook forward, priority 0) has policy drop",
        "rebuilt from the state",
    ] {
        assert!(line.contains(said), "{said:?} not in {line}");
    }
    let saved = scene.world.netns.exec_ok(&["iptables-save"]).expect("save");
    assert!(
        saved.contains("-A FORWARD -m comment --comment patchpanel -j patchpanel_FORWARD"),
        "patchpanel's firewall is rebuilt:\n{saved}"
    );
    let host = scene
        .world
        .netns
        .exec_ok(&["nft", "list", "table", "inet", "filter"])
        .expect("nft list");
    assert!(!host.contains("patchpanel"), "no narrow accept:\n{host}");
    scene.assert_host_rules_as_in_twin("nftables.service start", "policy drop;\n");
    assert!(!scene.failing(PROBE).is_empty(), "guests are dropped");
    assert_eq!(scene.fetch_closed_port(Duration::from_secs(1)), "timeout");
}

/// Debian's stock /etc/nftables.conf with a drop rule of the host's own:
/// the policies accept.
const NFTABLES_CONF_ACCEPTING: &str = "flush ruleset

table inet filter {
	chain input {
		type filter hook input priority filter; policy accept;
		tcp dport 9191 drop
	}
	chain forward {
		type filter hook forward priority filter; policy accept;
	}
	chain output {
		type filter hook output priority filter; policy accept;
	}
}
";

#[test]
fn a_restarted_nftables_service_with_accepting_policies_keeps_guests_and_its_drop() {
    let scene = Scene::start();
    let conf = file_with(NFTABLES_CONF_ACCEPTING);
    scene.change_and_recover("nftables.service start (policy accept)", |n| {
        run(n, &["nft", "-f", path_of(&conf)])
    });
    assert_eq!(scene.fetch_closed_port(Duration::from_secs(1)), "timeout");
    scene.assert_host_rules_as_in_twin(
        "nftables.service start (policy accept)",
        "tcp dport 9191 drop\n",
    );
    scene.report_rebuilds("nftables.service (policy accept)");
}

/// A full `iptables-save` of a host (netfilter-persistent's rules.v4).
const RULES_V4: &str = "*filter
:INPUT DROP [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
:host-input - [0:0]
-A INPUT -i lo -j ACCEPT
-A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A INPUT -j host-input
-A FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A host-input -p tcp -m tcp --dport 22 -j ACCEPT
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE
COMMIT
*mangle
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
-A POSTROUTING -o eth9 -p udp -m udp --dport 68 -j CHECKSUM --checksum-fill
COMMIT
";

#[test]
fn a_full_iptables_restore_is_lived_with_and_keeps_its_drops() {
    let scene = Scene::start();
    let rules = file_with(RULES_V4);
    scene.change_and_recover("iptables-restore", |n| {
        run(n, &["iptables-restore", path_of(&rules)])
    });
    assert_eq!(scene.fetch_closed_port(Duration::from_secs(1)), "timeout");
    scene.assert_host_rules_as_in_twin(
        "iptables-restore",
        "-A host-input -p tcp -m tcp --dport 22 -j ACCEPT\n",
    );
    scene.report_rebuilds("iptables-restore");
}

/// A peer that deletes patchpanel's NAT table whenever it is there, until
/// dropped.
fn start_table_deleter(netns: &Netns) -> Killed {
    // With the iptables backend, patchpanel's NAT is in iptables' own table.
    let table = match firewall_backend() {
        "iptables" => "nat",
        _ => "patchpanel_nat",
    };
    let script =
        format!("while true; do nft delete table ip {table} 2>/dev/null; sleep 0.05; done");
    Killed(
        Command::new("ip")
            .args(["netns", "exec", netns.name(), "sh", "-c", &script])
            .stdin(Stdio::null())
            .spawn()
            .expect("the peer"),
    )
}

/// `4s`, `500ms`: a `Duration` as `{:?}` writes it.
fn parse_debug_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let (number, unit) = text.split_at(text.find(|c: char| c.is_ascii_alphabetic())?);
    let n: f64 = number.parse().ok()?;
    let secs = match unit {
        "s" => n,
        "ms" => n / 1e3,
        "µs" | "us" => n / 1e6,
        "ns" => n / 1e9,
        _ => return None,
    };
    Some(Duration::from_secs_f64(secs))
}

#[test]
fn a_peer_that_keeps_deleting_our_table_is_not_fought_in_a_loop() {
    let scene = Scene::start();
    // Each rebuild, done or failed (with the iptables backend one fails
    // when the peer deletes the table under it), logs this.
    let rebuilds = |s: &Scene| s.log_lines("patchpanel's firewall was ").len();
    let before = rebuilds(&scene);
    let bus = scene.world.bus.address().to_string();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let peer_time = Duration::from_secs(5);

    // The peer deletes the table for a while; meanwhile a client asks
    // GetDevices every 100 ms and times the answers.
    let (latencies, stopped_at) = std::thread::scope(|s| {
        let asker = s.spawn(|| {
            let client = Client::connect_to(&bus)
                .expect("client")
                .with_timeout(Duration::from_secs(10));
            let mut latencies = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let t = Instant::now();
                let answer = client.get_devices().map(|d| d.len());
                latencies.push((t.elapsed(), answer));
                std::thread::sleep(Duration::from_millis(100));
            }
            latencies
        });
        let peer = start_table_deleter(&scene.world.netns);
        std::thread::sleep(peer_time);
        drop(peer);
        let stopped_at = Instant::now();
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        (asker.join().expect("the asker"), stopped_at)
    });

    let rebuilt = rebuilds(&scene) - before;
    eprintln!("{rebuilt} rebuild(s) while the peer deleted the table for {peer_time:?}");
    assert!(
        rebuilt >= 3,
        "{rebuilt} rebuilds in {peer_time:?}: the daemon did not restore its firewall:\n{}",
        scene.world.daemon.log()
    );
    assert!(
        rebuilt <= 10,
        "{rebuilt} rebuilds in {peer_time:?}: the daemon fights the peer in a loop"
    );
    let slowest = latencies.iter().map(|(t, _)| *t).max().unwrap_or_default();
    eprintln!(
        "GetDevices answered {} times, the slowest in {slowest:?}",
        latencies.len()
    );
    assert!(latencies.len() >= 10, "{latencies:?}");
    for (took, answer) in &latencies {
        assert!(
            matches!(answer, Ok(2)) && *took < Duration::from_secs(2),
            "GetDevices while the peer fought: {answer:?} in {took:?}"
        );
    }
    let warnings = scene.log_lines("keeps undoing patchpanel's firewall");
    let backoff = warnings
        .last()
        .and_then(|l| l.rsplit("the next rebuild waits ").next())
        .and_then(parse_debug_duration)
        .unwrap_or_else(|| {
            panic!(
                "no warning about the peer with its backoff:\n{}",
                scene.world.daemon.log()
            )
        });
    eprintln!("the last backoff: {backoff:?}; the warning: {warnings:?}");

    // Once the peer is gone, the firewall comes back after the backoff.
    let deadline = backoff + RECOVERY;
    loop {
        let failing = scene.failing(PROBE);
        if failing.is_empty() {
            eprintln!(
                "after the peer stopped: everything works again {:?} later (backoff {backoff:?})",
                stopped_at.elapsed()
            );
            break;
        }
        assert!(
            stopped_at.elapsed() < deadline,
            "{:?} after the peer stopped, still failing: {failing:?}\n{}",
            stopped_at.elapsed(),
            scene.world.daemon.log()
        );
    }
}

/// Bytes each counted transfer sends.
const PAYLOAD: usize = 200_000;
const SINK_PORT: u16 = 9000;

/// Sends PAYLOAD bytes to the sink from namespace `netns`.
fn send(netns: &str) {
    let out = traffic::run(
        netns,
        0,
        &format!(
            "import socket\n\
             c=socket.create_connection(('{REMOTE_HOST}',{SINK_PORT}),timeout=5)\n\
             c.sendall(b'x'*{PAYLOAD}); c.shutdown(socket.SHUT_WR); c.recv(1); c.close()\n"
        ),
    )
    .expect("send");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn counters(client: &Client) -> Vec<TrafficCounter> {
    client
        .get_traffic_counters(&["eth0"])
        .expect("GetTrafficCounters")
}

/// The namespace's IPv4 counter (source System, as ConnectNamespace's
/// default).
fn namespace_counter(client: &Client) -> TrafficCounter {
    let all = counters(client);
    all.iter()
        .find(|c| c.source == Source::System as i32 && c.ip_family == IpFamily::Ipv4 as i32)
        .cloned()
        .unwrap_or_else(|| panic!("no System IPv4 counter: {all:#?}"))
}

/// No counter of `after` is below its value in `before`.
fn assert_never_back(before: &[TrafficCounter], after: &[TrafficCounter]) {
    for b in before {
        let a = after
            .iter()
            .find(|a| a.source == b.source && a.ip_family == b.ip_family && a.device == b.device);
        assert!(
            a.is_some_and(|a| a.rx_bytes >= b.rx_bytes
                && a.tx_bytes >= b.tx_bytes
                && a.rx_packets >= b.rx_packets
                && a.tx_packets >= b.tx_packets),
            "a counter went back: {b:?} -> {a:?}"
        );
    }
}

#[test]
fn traffic_counters_keep_counting_across_a_flush() {
    let world = World::start().expect("world");
    let client = Client::connect_to(world.bus.address()).expect("client");
    let sink = Killed(
        traffic::listener(
            world.internet.upstream.name(),
            &format!(
                "import socket\n\
                 s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
                 s.bind(('{REMOTE_HOST}',{SINK_PORT})); s.listen(8)\n\
                 print('listening', flush=True)\n\
                 while True:\n    c,a=s.accept()\n    while c.recv(65536): pass\n    c.close()\n"
            ),
        )
        .expect("sink"),
    );
    let (ns, _lifeline) = client
        .connect_namespace(&ConnectNamespaceRequest {
            pid: -1,
            ..Default::default()
        })
        .expect("ConnectNamespace");
    let rules = file_with(RULES_V4);
    // Both remove the accounting chains with everything else: the first
    // every table, the second iptables' mangle table (where the iptables
    // backend keeps them) and filter and nat.
    let flushes: [(&str, Vec<&str>); 2] = [
        ("nft flush ruleset", vec!["nft", "flush", "ruleset"]),
        (
            "iptables-restore",
            vec!["iptables-restore", path_of(&rules)],
        ),
    ];
    for (what, argv) in flushes {
        send(&ns.netns_name);
        let read = counters(&client);
        let first = namespace_counter(&client);
        // Counted by the kernel after the last read, before the flush.
        send(&ns.netns_name);

        run(&world.netns, &argv);
        // Until the namespace reaches the remote host again (the
        // accounting chains come back with the rest); no failure here:
        // the counts say.
        let _ = poll_until(Duration::from_secs(5), || {
            world
                .exec_in(
                    &ns.netns_name,
                    &["ping", "-c", "1", "-W", "0.5", REMOTE_HOST],
                )
                .ok()
                .filter(|o| o.status.success())
        });

        let after_flush = counters(&client);
        assert_never_back(&read, &after_flush);
        let second = namespace_counter(&client);
        eprintln!(
            "{what}: tx {} bytes at the last read, {} after the flush ({PAYLOAD} sent in between)",
            first.tx_bytes, second.tx_bytes
        );
        assert!(
            second.tx_bytes >= first.tx_bytes + PAYLOAD as u64,
            "what was sent between the last read and {what} is kept: {first:?} -> {second:?}"
        );

        send(&ns.netns_name);
        let third = namespace_counter(&client);
        assert_never_back(&after_flush, &counters(&client));
        assert!(
            third.tx_bytes >= second.tx_bytes + PAYLOAD as u64,
            "after {what} the rebuilt accounting counts on: {second:?} -> {third:?}"
        );
    }
    drop(sink);
}
