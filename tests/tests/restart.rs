//! Start, crash and cleanup (DESIGN.md §9): a crashed daemon's successor and
//! `patchpaneld --cleanup` remove what the old one left behind.

use std::process::Command;
use std::time::Duration;

use patchpanel_client::Client;
use patchpanel_proto::ConnectNamespaceRequest;
use patchpanel_tests::world::{Internet, REMOTE_HOST};
use patchpanel_tests::{bin_path, Daemon, DaemonOptions, Netns, PrivateBus};

fn new_namespace() -> ConnectNamespaceRequest {
    ConnectNamespaceRequest {
        pid: -1,
        ..Default::default()
    }
}

/// The id at the end of a connected namespace's name.
fn netns_index(name: &str) -> u32 {
    name.rsplit('_')
        .next()
        .unwrap_or_default()
        .parse()
        .unwrap_or_else(|_| panic!("no index at the end of {name:?}"))
}

fn exists(name: &str) -> bool {
    std::path::Path::new("/run/netns").join(name).exists()
}

fn traces(netns: &Netns) -> Vec<String> {
    let mut found = Vec::new();
    let links = netns.exec_ok(&["ip", "-o", "link"]).expect("ip link");
    if links.contains("arc_ns") {
        found.push(format!("links: {links}"));
    }
    for argv in [
        &["ip", "rule"][..],
        &["ip", "-6", "rule"],
        &["ip", "route", "show", "table", "all"],
    ] {
        let out = netns.exec_ok(argv).expect("ip");
        if out.contains("proto 157") {
            found.push(format!("{}: {out}", argv.join(" ")));
        }
    }
    for tool in ["iptables-save", "ip6tables-save"] {
        let out =
            patchpanel_tests::netns::without_table_marker(&netns.exec_ok(&[tool]).expect(tool));
        if out.contains("patchpanel") || out.contains("arc_ns") {
            found.push(format!("{tool}: {out}"));
        }
    }
    found
}

/// A daemon with one connected namespace, then SIGKILL: the tree dies with
/// the manager and everything it built stays in the kernel.
fn crashed_daemon(netns: &Netns, bus: &PrivateBus) -> (Daemon, String) {
    let mut daemon = Daemon::start(netns, bus).expect("daemon");
    daemon.wait_ready().expect("ready");
    let client = Client::connect_to(bus.address()).expect("client");
    let (resp, lifeline) = client.connect_namespace(&new_namespace()).expect("connect");
    daemon.signal(libc::SIGKILL).expect("SIGKILL");
    daemon
        .wait_exit(Duration::from_secs(5))
        .expect("wait")
        .expect("the manager did not die");
    // Let the spawner and helpers follow their parent.
    std::thread::sleep(Duration::from_millis(300));
    drop(lifeline);
    assert!(
        exists(&resp.netns_name),
        "the namespace should survive a crash"
    );
    assert!(!traces(netns).is_empty());
    (daemon, resp.netns_name)
}

#[test]
fn a_successor_removes_what_a_crashed_daemon_left_and_serves_again() {
    let netns = Netns::new().expect("netns");
    let _internet = Internet::attach(&netns).expect("internet");
    let bus = PrivateBus::start().expect("bus");
    let (crashed, leftover) = crashed_daemon(&netns, &bus);

    let mut successor = Daemon::start_with(
        &netns,
        &bus,
        DaemonOptions {
            successor_of: Some((
                crashed.state_dir().to_path_buf(),
                crashed.netns_prefix().to_string(),
            )),
            ..Default::default()
        },
    )
    .expect("successor");
    successor.wait_ready().expect("ready");
    assert!(!exists(&leftover), "{leftover} survived the restart");
    let client = Client::connect_to(bus.address()).expect("client");
    assert!(client.get_devices().expect("devices").is_empty());
    let (resp, _lifeline) = client.connect_namespace(&new_namespace()).expect("connect");
    assert_ne!(resp.netns_name, leftover, "names are not reused");
    let out = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", resp.netns_name))
        .args(["ping", "-c", "1", "-W", "3", REMOTE_HOST])
        .output()
        .expect("ping");
    assert!(out.status.success(), "no connectivity after the restart");
    // The successor read the crashed daemon's state: it went on with its
    // namespace ids instead of starting again at the leftover's.
    assert!(
        netns_index(&resp.netns_name) > netns_index(&leftover),
        "{} after {leftover}",
        resp.netns_name
    );
    drop(successor);
    drop(crashed);
}

#[test]
fn cleanup_removes_everything_a_crashed_daemon_left() {
    let netns = Netns::new().expect("netns");
    let _internet = Internet::attach(&netns).expect("internet");
    netns
        .exec_ok(&["sysctl", "-qw", "net.ipv4.ip_forward=0"])
        .expect("sysctl");
    let bus = PrivateBus::start().expect("bus");
    let (crashed, leftover) = crashed_daemon(&netns, &bus);

    let out = Command::new("nsenter")
        .arg(format!("--net={}", netns.path().display()))
        .arg("--")
        .arg(bin_path("patchpaneld").expect("patchpaneld"))
        .args(["--cleanup", "--log-to-stderr", "--config"])
        .arg(crashed.config_path())
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .output()
        .expect("patchpaneld --cleanup");
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "--cleanup failed: {log}");
    assert!(!exists(&leftover), "{leftover} survived --cleanup");
    let left = traces(&netns);
    assert!(left.is_empty(), "left behind: {left:#?}\n{log}");
    let fwd = netns
        .exec_ok(&["sysctl", "-n", "net.ipv4.ip_forward"])
        .expect("sysctl");
    assert_eq!(fwd.trim(), "0", "--cleanup restores the sysctls it found");
    assert!(!crashed.state_dir().join("state").exists());
    drop(crashed);
}

#[test]
fn cleanup_on_a_clean_machine_is_a_no_op() {
    let netns = Netns::new().expect("netns");
    let before = netns.firewall_save(false, None).expect("save");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("pp.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = \"{}\"\nnetns_prefix = \"pptc{}-\"\n",
            dir.path().join("state").display(),
            std::process::id()
        ),
    )
    .expect("config");
    let out = Command::new("nsenter")
        .arg(format!("--net={}", netns.path().display()))
        .arg("--")
        .arg(bin_path("patchpaneld").expect("patchpaneld"))
        .args(["--cleanup", "--log-to-stderr", "--config"])
        .arg(&config)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .output()
        .expect("patchpaneld --cleanup");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let after = netns.firewall_save(false, None).expect("save");
    let strip = |s: &str| {
        s.lines()
            .filter(|l| !l.starts_with('#'))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(strip(&after), strip(&before));
}

#[test]
fn another_firewall_that_drops_forwarded_traffic_is_warned_about_at_start() {
    let netns = Netns::new().expect("netns");
    netns
        .exec_ok(&["nft", "add", "table", "inet", "hostfw"])
        .expect("nft table");
    netns
        .exec_ok(&[
            "nft",
            "add chain inet hostfw forward { type filter hook forward priority 0; policy drop; }",
        ])
        .expect("nft chain");
    let bus = PrivateBus::start().expect("bus");
    let mut daemon = Daemon::start(&netns, &bus).expect("daemon");
    daemon.wait_ready().expect("ready");
    let log = daemon.log();
    assert!(
        log.contains("inet hostfw forward") && log.contains("will drop guest traffic"),
        "{log}"
    );
    drop(daemon);
    // The host's table is not patchpanel's: it is still there.
    let tables = netns.exec_ok(&["nft", "list", "tables"]).expect("nft");
    assert!(tables.contains("inet hostfw"), "{tables}");
}
