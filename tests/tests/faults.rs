//! Faults (issue 14): each helper SIGKILLed while traffic flows through a
//! connected namespace, the manager SIGKILLed under load again and again,
//! and a full state directory.
//!
//! - Helpers: ping (IPv4 through NAT and IPv6 to the host side of the
//!   namespace's static /64) and a TCP echo stream keep flowing; the
//!   longest gap around each kill is printed (the target is 2 s;
//!   the test only bounds it at 10 s) and no D-Bus call is made.
//! - Manager: `PATCHPANEL_FAULT_RESTARTS` rounds (3 by default) of
//!   SIGKILL during ConnectNamespace churn; each successor leaves the
//!   kernel exactly as after the first daemon's setup (its Termina VM and
//!   port rule re-adopted, nothing of the killed namespaces left), and
//!   `patchpaneld --cleanup` after the last one leaves the namespace as it
//!   was before the first start.
//! - Full disk: a 64 KiB tmpfs as the state directory, filled up: the
//!   state-changing calls fail naming the cause, the kernel is untouched,
//!   the state file stays as it was and parses.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use patchpanel_client::Client;
use patchpanel_proto::modify_port_rule_request::{Operation, Protocol, RuleType};
use patchpanel_proto::{ConnectNamespaceRequest, ModifyPortRuleRequest};
use patchpanel_tests::procfs::{send_signal, status_number};
use patchpanel_tests::world::{kernel_snapshot, Internet, World, REMOTE_HOST};
use patchpanel_tests::{
    bin_path, poll_until, traffic, Daemon, DaemonOptions, Helper, Netns, PrivateBus, ProcIdentity,
};

/// The test's bound on a traffic gap around a helper kill (the issue's
/// target, 2 s, is reported, not asserted).
const GAP_LIMIT: Duration = Duration::from_secs(10);
const SETTLE: Duration = Duration::from_secs(10);
const ECHO_PORT: u16 = 9400;

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64()
}

fn new_namespace() -> ConnectNamespaceRequest {
    ConnectNamespaceRequest {
        pid: -1,
        ..Default::default()
    }
}

fn set_diff(after: &str, before: &str) -> Vec<String> {
    let b: BTreeSet<&str> = before.lines().collect();
    let a: BTreeSet<&str> = after.lines().collect();
    let mut out: Vec<String> = b.difference(&a).map(|l| format!("- {l}")).collect();
    out.extend(a.difference(&b).map(|l| format!("+ {l}")));
    out
}

fn our_netns(prefix: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir("/run/netns")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(prefix))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// A process printing one line per successful exchange; the wall-clock
/// times of those lines are collected by a reader thread. Killed on drop.
struct Stream {
    label: &'static str,
    child: Child,
    stamps: Arc<Mutex<Vec<f64>>>,
    reader: Option<JoinHandle<()>>,
}

impl Stream {
    fn start(label: &'static str, mut child: Child, parse: fn(&str) -> Option<f64>) -> Stream {
        let stdout = child.stdout.take().expect("stdout");
        let stamps = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&stamps);
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(t) = parse(&line) {
                    sink.lock().expect("stamps").push(t);
                }
            }
        });
        Stream {
            label,
            child,
            stamps,
            reader: Some(reader),
        }
    }

    fn stamps(&self) -> Vec<f64> {
        self.stamps.lock().expect("stamps").clone()
    }

    /// Waits until a line came after `t`.
    fn flowing_after(&self, t: f64, timeout: Duration) -> bool {
        poll_until(timeout, || {
            self.stamps().iter().any(|s| *s > t).then_some(())
        })
        .is_some()
    }

    /// The longest time without a line in `[from, to]`, the edges
    /// counted, and when it began.
    fn longest_gap(&self, from: f64, to: f64) -> (f64, f64) {
        let stamps = self.stamps();
        let mut last = stamps
            .iter()
            .rev()
            .find(|s| **s <= from)
            .copied()
            .unwrap_or(from);
        let mut gap = (0.0, last);
        for s in stamps.iter().filter(|s| **s > from && **s <= to) {
            if s - last > gap.0 {
                gap = (s - last, last);
            }
            last = *s;
        }
        if to - last > gap.0 {
            gap = (to - last, last);
        }
        gap
    }

    fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

/// `ping -D` in named namespace `ns`: a line per reply, 20 per second.
fn ping(ns: &str, v6: bool, to: &str) -> Child {
    Command::new("nsenter")
        .arg(format!("--net=/run/netns/{ns}"))
        .args(["ping", if v6 { "-6" } else { "-4" }])
        .args(["-D", "-n", "-i", "0.05", "-W", "1", to])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("ping")
}

/// `[1733490000.123456] 64 bytes from ...` -> the time.
fn ping_reply(line: &str) -> Option<f64> {
    if !line.contains("bytes from") {
        return None;
    }
    line.strip_prefix('[')?.split(']').next()?.parse().ok()
}

fn echo_server(upstream: &str) -> Child {
    traffic::listener(
        upstream,
        &format!(
            "import socket,threading\n\
             s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
             s.bind(('{REMOTE_HOST}',{ECHO_PORT})); s.listen(4)\n\
             print('listening', flush=True)\n\
             def serve(c):\n    while True:\n        d=c.recv(65536)\n        if not d: break\n        c.sendall(d)\n\
             while True:\n    c,a=s.accept(); threading.Thread(target=serve,args=(c,),daemon=True).start()\n"
        ),
    )
    .expect("echo server")
}

/// One TCP connection through NAT: 4 KiB out and back, a line with the
/// time per round trip, 50 per second.
fn echo_client(ns: &str) -> Child {
    traffic::spawn(
        ns,
        &format!(
            "import socket,time\n\
             c=socket.create_connection(('{REMOTE_HOST}',{ECHO_PORT}),timeout=30)\n\
             while True:\n    c.sendall(b'x'*4096); n=0\n    while n<4096:\n        d=c.recv(65536)\n        if not d: raise SystemExit('closed')\n        n+=len(d)\n    print('%.6f' % time.time(), flush=True); time.sleep(0.02)\n"
        ),
    )
    .expect("echo client")
}

fn stamp_line(line: &str) -> Option<f64> {
    line.trim().parse().ok()
}

/// The namespace's host-side global IPv6 address (its static /64).
fn host_ipv6(netns: &Netns, ifname: &str) -> String {
    let out = netns
        .exec_ok(&[
            "ip", "-6", "-j", "addr", "show", "dev", ifname, "scope", "global",
        ])
        .expect("ip addr");
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    v[0]["addr_info"][0]["local"]
        .as_str()
        .unwrap_or_else(|| panic!("no global IPv6 address on {ifname}: {out}"))
        .to_string()
}

#[test]
fn traffic_survives_each_helper_being_killed_without_a_new_call() {
    let world = World::start().expect("world");
    let client = Client::connect_to(world.bus.address()).expect("client");
    let (ns, _lifeline) = client
        .connect_namespace(&ConnectNamespaceRequest {
            static_ipv6: true,
            ..new_namespace()
        })
        .expect("ConnectNamespace");
    let name = ns.netns_name.clone();
    let host6 = host_ipv6(&world.netns, &ns.host_ifname);
    // The static addresses pass DAD first (ping would exit at once).
    poll_until(SETTLE, || {
        Command::new("nsenter")
            .arg(format!("--net=/run/netns/{name}"))
            .args(["ping", "-6", "-c", "1", "-W", "1", &host6])
            .output()
            .is_ok_and(|o| o.status.success())
            .then_some(())
    })
    .unwrap_or_else(|| panic!("no IPv6 from {name} to {host6}"));
    let _server = KillOnDrop(echo_server(world.internet.upstream.name()));
    let mut streams = [
        Stream::start("ping", ping(&name, false, REMOTE_HOST), ping_reply),
        Stream::start("ping6", ping(&name, true, &host6), ping_reply),
        Stream::start("tcp", echo_client(&name), stamp_line),
    ];
    let start = now();
    for s in &streams {
        assert!(
            s.flowing_after(start, SETTLE),
            "{} never flowed before any kill",
            s.label
        );
    }
    // A second of steady flow before the first kill, so that each gap is
    // measured from traffic that was already flowing.
    std::thread::sleep(Duration::from_secs(1));
    let before = kernel_snapshot(&world.netns).expect("snapshot");

    let mut figures = Vec::new();
    for helper in Helper::ALL {
        let old = world.daemon.tree().expect("tree").helper(helper);
        let old = ProcIdentity::of(old).expect("identity");
        let killed = now();
        send_signal(old.pid, libc::SIGKILL).expect("SIGKILL");
        let tree = world
            .daemon
            .wait_for_tree(SETTLE, |t| t.helper(helper) != old.pid && old.is_gone())
            .unwrap_or_else(|e| panic!("{helper} not respawned: {e:#}\n{}", world.daemon.log()));
        let respawned = now();
        // A helper installs its seccomp filter last, right before it greets
        // the manager: from then on it serves.
        let pid = tree.helper(helper);
        poll_until(SETTLE, || {
            (status_number(pid, "Seccomp").ok() == Some(2)).then_some(())
        })
        .unwrap_or_else(|| {
            panic!(
                "{helper} (pid {pid}) never sandboxed\n{}",
                world.daemon.log()
            )
        });
        let ready = now();
        // A second of traffic with the new helper in place.
        std::thread::sleep(Duration::from_secs(1));
        for s in &streams {
            assert!(
                s.flowing_after(ready, GAP_LIMIT),
                "{}: nothing after {helper} came back",
                s.label
            );
        }
        let to = now();
        for s in &streams {
            let (gap, began) = s.longest_gap(killed - 0.5, to);
            figures.push((
                helper,
                s.label,
                gap,
                began - killed,
                ready - killed,
                respawned - killed,
            ));
            assert!(
                gap < GAP_LIMIT.as_secs_f64(),
                "{}: {gap:.3} s without traffic around the kill of {helper}",
                s.label
            );
        }
    }
    for s in &mut streams {
        assert!(
            s.is_running(),
            "{} stopped (the TCP connection broke?)",
            s.label
        );
    }
    let after = kernel_snapshot(&world.netns).expect("snapshot");
    let changed = set_diff(&after, &before);
    assert!(
        changed.is_empty(),
        "the respawns changed the kernel:\n{}",
        changed.join("\n")
    );

    // Times in ms from the SIGKILL: the longest gap in the stream (and
    // when it began), the new helper's pid seen, its "is up" logged.
    println!(
        "{:<28} {:>6} {:>14} {:>10} {:>11} {:>6}",
        "helper killed", "stream", "longest gap ms", "gap at ms", "respawn ms", "up ms"
    );
    for (helper, label, gap, began, up, respawn) in &figures {
        println!(
            "{:<28} {:>6} {:>14.1} {:>10.1} {:>11.1} {:>6.1}",
            helper.to_string(),
            label,
            gap * 1000.0,
            began * 1000.0,
            respawn * 1000.0,
            up * 1000.0
        );
    }
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Everything `--cleanup` must restore exactly: links, addresses, routes
/// and rules (JSON), the whole ruleset without counters, and forwarding.
fn exact_snapshot(netns: &Netns) -> String {
    let mut out = String::new();
    for argv in [
        &["ip", "-j", "link", "show"][..],
        &["ip", "-j", "addr", "show"],
        &["ip", "-4", "-j", "route", "show", "table", "all"],
        &["ip", "-6", "-j", "route", "show", "table", "all"],
        &["ip", "-4", "-j", "rule", "show"],
        &["ip", "-6", "-j", "rule", "show"],
        &["nft", "-s", "-j", "list", "ruleset"],
        &[
            "sysctl",
            "net.ipv4.ip_forward",
            "net.ipv6.conf.all.forwarding",
        ],
    ] {
        let text = netns.exec_ok(argv).expect("snapshot");
        // One line per JSON object, so that a difference reads as lines.
        let text = match serde_json::from_str::<serde_json::Value>(&text) {
            Ok(serde_json::Value::Array(items)) => items
                .iter()
                .map(|i| i.to_string())
                .collect::<Vec<_>>()
                .join("\n"),
            Ok(serde_json::Value::Object(o)) if o.contains_key("nftables") => o["nftables"]
                .as_array()
                .map(|items| {
                    items
                        .iter()
                        .filter(|i| i.get("metainfo").is_none())
                        .map(|i| i.to_string())
                        .collect::<Vec<_>>()
                        .join("\n")
                })
                .unwrap_or_default(),
            _ => text,
        };
        out.push_str(&format!("## {}\n{text}\n", argv.join(" ")));
    }
    out
}

fn env_number(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(v) => v.parse().unwrap_or_else(|e| panic!("{name}={v:?}: {e}")),
        Err(_) => default,
    }
}

fn access_rule(op: Operation, port: u32) -> ModifyPortRuleRequest {
    ModifyPortRuleRequest {
        op: op as i32,
        r#type: RuleType::Access as i32,
        proto: Protocol::Tcp as i32,
        input_dst_port: port,
        input_ifname: "eth0".into(),
        ..Default::default()
    }
}

/// ConnectNamespace and lifeline drops in a loop until the manager stops
/// answering (or `stop` is set); returns how many calls succeeded.
fn churn(bus: String, stop: Arc<AtomicBool>) -> JoinHandle<usize> {
    std::thread::spawn(move || {
        let Ok(client) = Client::connect_to(&bus) else {
            return 0;
        };
        let mut done = 0;
        let mut held = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            match client.connect_namespace(&new_namespace()) {
                Ok((_, lifeline)) => {
                    held.push(lifeline);
                    if held.len() > 2 {
                        held.remove(0);
                    }
                    done += 1;
                }
                Err(_) => break,
            }
        }
        done
    })
}

#[test]
fn killed_managers_are_reconciled_by_their_successors_and_cleanup_restores_the_start() {
    let restarts = env_number("PATCHPANEL_FAULT_RESTARTS", 3);
    let netns = Netns::new().expect("netns");
    let internet = Internet::attach(&netns).expect("internet");
    netns
        .exec_ok(&["sysctl", "-qw", "net.ipv4.ip_forward=0"])
        .expect("sysctl");
    // The host's own rules in every built-in chain of the tables
    // patchpanel uses, as on a real device. They must survive; and with the
    // iptables (nft) backend they make those tables exist before the start
    // (iptables-nft creates a table's built-in chains on first use, and
    // nobody can tell afterwards whether the host would have).
    let mut host_rules = String::new();
    for tool in ["iptables", "ip6tables"] {
        for (table, chains) in [
            ("filter", &["INPUT", "FORWARD", "OUTPUT"][..]),
            ("nat", &["PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"]),
            (
                "mangle",
                &["PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"],
            ),
        ] {
            for chain in chains {
                host_rules.push_str(&format!(
                    "{tool} -w -t {table} -A {chain} -p udp --dport 9 \
                     -m comment --comment host-rule -j RETURN\n"
                ));
            }
        }
    }
    netns
        .exec_ok(&["sh", "-ec", &host_rules])
        .expect("host rules");
    let bus = PrivateBus::start().expect("bus");
    // The uplink's link-local address must have passed DAD.
    let pristine = poll_until(SETTLE, || {
        let s = exact_snapshot(&netns);
        (!s.contains("tentative")).then_some(s)
    })
    .expect("an address stayed tentative");

    let mut daemons: Vec<Daemon> = Vec::new();
    let mut first = Daemon::start(&netns, &bus).expect("daemon");
    first.wait_ready().expect("ready");
    let (state_dir, prefix) = (
        first.state_dir().to_path_buf(),
        first.netns_prefix().to_string(),
    );
    daemons.push(first);
    let client = Client::connect_to(bus.address()).expect("client");
    let vm = client.terminavm_startup(42).expect("TerminaVmStartup");
    client
        .modify_port_rule(&access_rule(Operation::Create, 9191))
        .expect("ModifyPortRule");
    let settled = kernel_snapshot(&netns).expect("snapshot");
    assert!(settled.contains("9191"), "no port rule:\n{settled}");

    let mut figures = Vec::new();
    for round in 1..=restarts {
        // Load: namespaces held open, a ping through one of them, and
        // ConnectNamespace calls in flight when the manager dies.
        let mut held = Vec::new();
        for _ in 0..3 {
            held.push(
                client
                    .connect_namespace(&new_namespace())
                    .unwrap_or_else(|e| panic!("round {round}: ConnectNamespace: {e}")),
            );
        }
        let _ping = KillOnDrop(ping(&held[0].0.netns_name, false, REMOTE_HOST));
        let stop = Arc::new(AtomicBool::new(false));
        let churner = churn(bus.address().to_string(), Arc::clone(&stop));
        std::thread::sleep(Duration::from_millis(200 + 150 * round as u64 % 400));
        let victim = daemons.last_mut().expect("daemon");
        victim.signal(libc::SIGKILL).expect("SIGKILL the manager");
        victim
            .wait_exit(Duration::from_secs(5))
            .expect("wait")
            .expect("the manager did not die");
        let killed = Instant::now();
        stop.store(true, Ordering::Relaxed);
        let calls = churner.join().expect("churn thread");
        // The spawner and helpers follow their parent.
        std::thread::sleep(Duration::from_millis(300));
        drop(held);

        let mut successor = Daemon::start_with(
            &netns,
            &bus,
            DaemonOptions {
                successor_of: Some((state_dir.clone(), prefix.clone())),
                ..Default::default()
            },
        )
        .expect("successor");
        successor.wait_ready().expect("successor ready");
        let ready = killed.elapsed();
        // Nothing of the killed manager's namespaces is left, and the VM
        // and the port rule are as they were: the kernel reads exactly as
        // it did after the first daemon's setup.
        let mut changed = Vec::new();
        let reconciled = poll_until(SETTLE, || {
            changed = set_diff(&kernel_snapshot(&netns).expect("snapshot"), &settled);
            (changed.is_empty() && our_netns(&prefix).is_empty()).then_some(())
        });
        assert!(
            reconciled.is_some(),
            "round {round}: stale or missing kernel state after the restart \
             (namespaces {:?}):\n{}\n{}",
            our_netns(&prefix),
            changed.join("\n"),
            successor.log()
        );
        let devices = client.get_devices().expect("GetDevices");
        assert!(
            devices.iter().any(|d| d.ifname == vm.tap_device_ifname),
            "round {round}: the VM was not re-adopted: {devices:?}"
        );
        assert_eq!(devices.len(), 1, "round {round}: {devices:?}");
        figures.push((round, calls, ready));
        daemons.push(successor);
    }
    // The successor serves: a namespace gets through NAT.
    {
        let (ns, _lifeline) = client.connect_namespace(&new_namespace()).expect("connect");
        let out = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", ns.netns_name))
            .args(["ping", "-c", "1", "-W", "3", REMOTE_HOST])
            .output()
            .expect("ping");
        assert!(out.status.success(), "no connectivity after the restarts");
    }

    // The last one dies too; --cleanup then restores the start exactly.
    let last = daemons.last_mut().expect("daemon");
    last.signal(libc::SIGKILL).expect("SIGKILL");
    last.wait_exit(Duration::from_secs(5))
        .expect("wait")
        .expect("the manager did not die");
    std::thread::sleep(Duration::from_millis(300));
    let out = Command::new("nsenter")
        .arg(format!("--net={}", netns.path().display()))
        .arg("--")
        .arg(bin_path("patchpaneld").expect("patchpaneld"))
        .args(["--cleanup", "--log-to-stderr", "--config"])
        .arg(last.config_path())
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .output()
        .expect("patchpaneld --cleanup");
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "--cleanup failed: {log}");
    assert!(our_netns(&prefix).is_empty(), "{:?}", our_netns(&prefix));
    let after = exact_snapshot(&netns);
    let changed = set_diff(&after, &pristine);
    assert!(
        changed.is_empty(),
        "--cleanup did not restore the start:\n{}\n{log}",
        changed.join("\n")
    );
    assert_eq!(after, pristine, "same lines, another order");

    println!(
        "{:<6} {:>22} {:>26}",
        "round", "calls before the kill", "kill -> successor ready ms"
    );
    for (round, calls, ready) in &figures {
        println!(
            "{round:<6} {calls:>22} {:>26.0}",
            ready.as_secs_f64() * 1000.0
        );
    }
    // Later daemons first: an earlier one's teardown would sweep the
    // prefix they share.
    while let Some(daemon) = daemons.pop() {
        drop(daemon);
    }
    drop(internet);
}

/// A tmpfs of `size` mounted on a fresh directory, unmounted on drop.
struct TinyTmpfs {
    path: PathBuf,
    _parent: tempfile::TempDir,
}

impl TinyTmpfs {
    fn mount(size: &str) -> TinyTmpfs {
        let parent = tempfile::Builder::new()
            .prefix("ppt-fulldisk-")
            .tempdir()
            .expect("tempdir");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(parent.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        let path = parent.path().join("state");
        std::fs::create_dir(&path).expect("mkdir");
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755"),
                "tmpfs",
            ])
            .arg(&path)
            .output()
            .expect("mount");
        assert!(
            out.status.success(),
            "mount: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        TinyTmpfs {
            path,
            _parent: parent,
        }
    }
}

impl Drop for TinyTmpfs {
    fn drop(&mut self) {
        let status = Command::new("umount").arg("-l").arg(&self.path).status();
        if !matches!(status, Ok(s) if s.success()) {
            eprintln!("cannot unmount {}: {status:?}", self.path.display());
        }
    }
}

/// Fills the filesystem under `dir` (as root: tmpfs reserves nothing).
fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).expect("filler");
    let chunk = vec![0u8; 4096];
    loop {
        match f.write(&chunk) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
            Err(e) => panic!("filling {}: {e}", dir.display()),
        }
    }
    // Partial pages too.
    while let Ok(n) = f.write(&[0u8]) {
        if n == 0 {
            break;
        }
    }
    path
}

fn state_json(dir: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(dir.join("state")).expect("state file");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("corrupt state file ({e}):\n{text}"))
}

/// The port rules the journal next to the state file records: `+rule`
/// and `-rule` lines replayed in order. Every line must be whole and
/// valid JSON: a corrupt journal fails the test.
fn journal_rules(dir: &Path) -> Vec<serde_json::Value> {
    let text = match std::fs::read_to_string(dir.join("port_rules")) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => panic!("journal: {e}"),
    };
    let mut live = Vec::new();
    for line in text.split_inclusive('\n') {
        let line = line
            .strip_suffix('\n')
            .unwrap_or_else(|| panic!("torn journal line {line:?}:\n{text}"));
        let (mark, json) = line.split_at(1);
        let rule: serde_json::Value = serde_json::from_str(json)
            .unwrap_or_else(|e| panic!("corrupt journal line {line:?} ({e}):\n{text}"));
        match mark {
            "+" => live.push(rule),
            "-" => live.retain(|r| *r != rule),
            _ => panic!("journal line {line:?} starts with neither + nor -"),
        }
    }
    live
}

fn read_or_empty(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_default()
}

/// Checks one refusal on the full disk: a clear error, the kernel, the
/// namespaces and both files exactly as before the call.
fn assert_refused_cleanly(
    what: &str,
    result: Result<(), String>,
    world: &World,
    before: &str,
    namespaces: &[String],
    files: &[(PathBuf, Vec<u8>)],
) {
    let err = match result {
        Ok(()) => panic!("{what} succeeded on a full state directory"),
        Err(e) => e,
    };
    assert!(
        err.contains("No space left on device") && err.contains("nothing was changed"),
        "{what}: unclear error: {err}"
    );
    let changed = set_diff(&kernel_snapshot(&world.netns).expect("snapshot"), before);
    assert!(
        changed.is_empty(),
        "{what} was half-applied:\n{}",
        changed.join("\n")
    );
    assert_eq!(our_netns(world.daemon.netns_prefix()), namespaces, "{what}");
    for (path, bytes) in files {
        assert_eq!(
            &read_or_empty(path),
            bytes,
            "{what} changed {}",
            path.display()
        );
    }
}

#[test]
fn a_full_state_directory_refuses_changes_and_applies_none_of_them() {
    let tmpfs = TinyTmpfs::mount("64k");
    let world = World::start_with(DaemonOptions {
        state_dir: Some(tmpfs.path.clone()),
        ..Default::default()
    })
    .expect("world");
    let client = Client::connect_to(world.bus.address()).expect("client");
    let (_, _held) = client.connect_namespace(&new_namespace()).expect("connect");
    client
        .modify_port_rule(&access_rule(Operation::Create, 9292))
        .expect("port rule");
    let state = state_json(&tmpfs.path);
    assert_eq!(state["namespaces"].as_object().map(|m| m.len()), Some(1));
    assert_eq!(journal_rules(&tmpfs.path).len(), 1);

    let filler = fill(&tmpfs.path);
    let prefix = world.daemon.netns_prefix().to_string();
    let namespaces = our_netns(&prefix);
    let files = |dir: &Path| -> Vec<(PathBuf, Vec<u8>)> {
        ["state", "port_rules"]
            .iter()
            .map(|f| (dir.join(f), read_or_empty(&dir.join(f))))
            .collect()
    };

    // A namespace rewrites the whole state file: no room for it.
    let kernel = kernel_snapshot(&world.netns).expect("snapshot");
    let result = client
        .connect_namespace(&new_namespace())
        .map(|_| ())
        .map_err(|e| e.to_string());
    assert_refused_cleanly(
        "ConnectNamespace",
        result,
        &world,
        &kernel,
        &namespaces,
        &files(&tmpfs.path),
    );
    state_json(&tmpfs.path);

    // A port rule appends one line to the journal, which fits as long as
    // the journal's last page has room: those calls are recorded and
    // succeed. The first one that does not fit must be refused whole.
    let mut accepted = vec![9292];
    let mut refused = None;
    for port in 9393..9593 {
        let kernel = kernel_snapshot(&world.netns).expect("snapshot");
        let before = files(&tmpfs.path);
        match client.modify_port_rule(&access_rule(Operation::Create, port)) {
            Ok(()) => {
                accepted.push(port);
                assert_eq!(journal_rules(&tmpfs.path).len(), accepted.len());
            }
            Err(e) => {
                assert_refused_cleanly(
                    &format!("ModifyPortRule create {port}"),
                    Err(e.to_string()),
                    &world,
                    &kernel,
                    &namespaces,
                    &before,
                );
                refused = Some(port);
                break;
            }
        }
    }
    let refused = refused.expect("200 port rules fitted on a full 64 KiB tmpfs");
    assert_eq!(journal_rules(&tmpfs.path).len(), accepted.len());
    state_json(&tmpfs.path);

    // A delete line is as long as the create line that did not fit (same
    // rule shape, a port of as many digits): refused as well.
    let kernel = kernel_snapshot(&world.netns).expect("snapshot");
    let result = client
        .modify_port_rule(&access_rule(Operation::Delete, 9292))
        .map_err(|e| e.to_string());
    assert_refused_cleanly(
        "ModifyPortRule delete",
        result,
        &world,
        &kernel,
        &namespaces,
        &files(&tmpfs.path),
    );
    assert!(
        !tmpfs.path.join("state.tmp").exists() && !tmpfs.path.join("port_rules.tmp").exists(),
        "a partial temporary file was left"
    );

    // Room again: the same calls go through.
    std::fs::remove_file(&filler).expect("rm filler");
    let (_, _second) = client
        .connect_namespace(&new_namespace())
        .expect("connect after freeing space");
    client
        .modify_port_rule(&access_rule(Operation::Create, refused))
        .expect("create after freeing space");
    client
        .modify_port_rule(&access_rule(Operation::Delete, 9292))
        .expect("delete after freeing space");
    let state = state_json(&tmpfs.path);
    assert_eq!(state["namespaces"].as_object().map(|m| m.len()), Some(2));
    assert_eq!(journal_rules(&tmpfs.path).len(), accepted.len());
    drop(world);
    drop(tmpfs);
}
