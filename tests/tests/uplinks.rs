//! Uplink tracking end to end: what the daemon builds for the host's uplinks,
//! read back from its namespace with `ip -j`, `sysctl` and `iptables-save`.
//!
//! * Netlink mode (no shill on the bus): every link named like an uplink gets
//!   a routing table (ifindex + 1000) with its subnet and default route, the
//!   ip rules of reference §4.12 (1000 main suppress_prefixlength 0;
//!   1010 + 10·rank by fwmark tag, oif, iif and source address; 32765
//!   catch-all to the default uplink's table), all tagged proto 157,
//!   `accept_ra=2`, and connection pinning chains `POSTROUTING_<uplink>` in
//!   mangle; the daemon follows uplinks coming, going and coming back.
//! * Shill mode (a fake `org.chromium.flimflam` on the test's bus): shill
//!   says which links are uplinks; patchpanel pins connections but leaves
//!   tables and rules to shill.

use std::collections::BTreeSet;
use std::fmt::Debug;
use std::process::Command;
use std::time::Duration;

use patchpanel_client::{Client, Error as ClientError, Lifeline};
use patchpanel_proto::{ConnectNamespaceRequest, ConnectNamespaceResponse};
use patchpanel_tests::fake_shill::FakeShill;
use patchpanel_tests::world::{Internet, World, GATEWAY, REMOTE_HOST, UPLINK_ADDR};
use patchpanel_tests::{poll_until, Daemon, DaemonOptions, Netns, PrivateBus};
use serde_json::Value;

/// How long the daemon may take to follow a kernel or shill change.
const CONVERGE: Duration = Duration::from_secs(15);
/// How long a clean stop may take.
const STOP: Duration = Duration::from_secs(15);

/// The second uplink's addresses: `wlan0` in the daemon's namespace, `up1`
/// in the upstream one.
const WLAN_ADDR: &str = "198.51.100.2";
const WLAN_GATEWAY: &str = "198.51.100.1";

// ---------------------------------------------------------------------------
// Reading the daemon's namespace.

fn ip_json(netns: &Netns, argv: &[&str]) -> Vec<Value> {
    let out = netns
        .exec_ok(argv)
        .unwrap_or_else(|e| panic!("{argv:?}: {e:#}"));
    if out.trim().is_empty() {
        return Vec::new();
    }
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{argv:?}: {e}: {out}"))
}

fn field<'a>(v: &'a Value, name: &str) -> Option<&'a str> {
    v.get(name).and_then(Value::as_str)
}

/// `lines` as a set; a line seen n > 1 times is marked ` (xn)`, so that a
/// duplicate never compares equal to an expectation.
fn counted(lines: Vec<String>) -> BTreeSet<String> {
    let mut counts = std::collections::BTreeMap::<String, usize>::new();
    for line in lines {
        *counts.entry(line).or_default() += 1;
    }
    counts
        .into_iter()
        .map(|(line, n)| match n {
            1 => line,
            n => format!("{line} (x{n})"),
        })
        .collect()
}

/// Every ip rule tagged proto 157, IPv4 and IPv6, one line each, e.g.
/// `v4 1010 oif eth0 lookup 1002`.
fn owned_rules(netns: &Netns) -> BTreeSet<String> {
    let mut rules = Vec::new();
    for (family, argv) in [
        ("v4", &["ip", "-j", "rule", "show"][..]),
        ("v6", &["ip", "-6", "-j", "rule", "show"]),
    ] {
        for r in ip_json(netns, argv) {
            if field(&r, "protocol") != Some("157") {
                continue;
            }
            let mut line = format!("{family} {}", r["priority"]);
            if let (Some(mark), Some(mask)) = (field(&r, "fwmark"), field(&r, "fwmask")) {
                line.push_str(&format!(" fwmark {mark}/{mask}"));
            }
            if let Some(src) = field(&r, "src").filter(|s| *s != "all") {
                line.push_str(&format!(" from {src}"));
                if let Some(len) = r.get("srclen") {
                    line.push_str(&format!("/{len}"));
                }
            }
            for key in ["iif", "oif"] {
                if let Some(dev) = field(&r, key) {
                    line.push_str(&format!(" {key} {dev}"));
                }
            }
            line.push_str(&format!(" lookup {}", field(&r, "table").unwrap_or("?")));
            if let Some(len) = r.get("suppress_prefixlen") {
                line.push_str(&format!(" suppress_prefixlength {len}"));
            }
            rules.push(line);
        }
    }
    counted(rules)
}

/// Every route tagged proto 157 in any table, e.g.
/// `table 1002 default via 192.0.2.1 dev eth0`.
fn owned_routes(netns: &Netns) -> BTreeSet<String> {
    let mut routes = Vec::new();
    for argv in [
        &["ip", "-j", "route", "show", "table", "all"][..],
        &["ip", "-6", "-j", "route", "show", "table", "all"],
    ] {
        for r in ip_json(netns, argv) {
            if field(&r, "protocol") != Some("157") {
                continue;
            }
            let mut line = format!(
                "table {} {}",
                field(&r, "table").unwrap_or("main"),
                field(&r, "dst").unwrap_or("?")
            );
            if let Some(gw) = field(&r, "gateway") {
                line.push_str(&format!(" via {gw}"));
            }
            if let Some(dev) = field(&r, "dev") {
                line.push_str(&format!(" dev {dev}"));
            }
            routes.push(line);
        }
    }
    counted(routes)
}

/// The mangle lines (IPv4 and IPv6, counters stripped) of `ifname`'s
/// connection pinning: its chain `POSTROUTING_<ifname>`, the rules in it and
/// the jump to it, and the CONNMARK restore on input from `ifname` (not
/// other features' rules for the uplink, such as traffic accounting).
fn pinning(netns: &Netns, ifname: &str) -> BTreeSet<String> {
    let chain = format!("POSTROUTING_{ifname}");
    let mut lines = Vec::new();
    for (family, v6) in [("v4", false), ("v6", true)] {
        let out = netns
            .firewall_save(v6, Some("mangle"))
            .unwrap_or_else(|e| panic!("{family} firewall: {e:#}"));
        for line in out.lines().filter(|l| !l.starts_with('#')) {
            let line = match line.strip_prefix(':') {
                Some(decl) => format!(":{}", decl.split_whitespace().next().unwrap_or("")),
                None => line.to_string(),
            };
            let words: Vec<&str> = line.split_whitespace().collect();
            let in_chain = words
                .iter()
                .any(|w| *w == chain || *w == format!(":{chain}"));
            let restore = words.contains(&ifname) && words.contains(&"--restore-mark");
            if in_chain || restore {
                lines.push(format!("{family} {line}"));
            }
        }
    }
    counted(lines)
}

/// Every line of `iptables-save` and `ip6tables-save`.
fn firewall(netns: &Netns) -> String {
    let mut out = String::new();
    for v6 in [false, true] {
        out.push_str(&netns.firewall_save(v6, None).expect("firewall"));
    }
    out
}

fn accept_ra(netns: &Netns, ifname: &str) -> String {
    netns
        .exec_ok(&["sysctl", "-n", &format!("net.ipv6.conf.{ifname}.accept_ra")])
        .expect("sysctl")
        .trim()
        .to_string()
}

fn set_accept_ra(netns: &Netns, ifname: &str, value: &str) {
    netns
        .exec_ok(&[
            "sysctl",
            "-qw",
            &format!("net.ipv6.conf.{ifname}.accept_ra={value}"),
        ])
        .expect("sysctl -w");
}

fn ifindex(netns: &Netns, name: &str) -> u32 {
    let links = ip_json(netns, &["ip", "-j", "link", "show", "dev", name]);
    links
        .first()
        .and_then(|l| l["ifindex"].as_u64())
        .unwrap_or_else(|| panic!("no ifindex for {name}: {links:?}")) as u32
}

/// Everything worth seeing when an expectation is not met.
fn dump(netns: &Netns) -> String {
    let mut out = String::new();
    for argv in [
        &["ip", "-o", "link", "show"][..],
        &["ip", "-o", "addr", "show"],
        &["ip", "rule", "show"],
        &["ip", "-6", "rule", "show"],
        &["ip", "route", "show", "table", "all"],
        &["iptables-save", "-t", "mangle"],
    ] {
        out.push_str(&format!(
            "## {}\n{}\n",
            argv.join(" "),
            netns.exec_ok(argv).unwrap_or_else(|e| format!("{e:#}"))
        ));
    }
    out
}

/// Polls `observe` until it returns `expected`; panics with both, their
/// difference and the namespace's state otherwise.
fn wait_for<T: PartialEq + Debug>(
    what: &str,
    netns: &Netns,
    expected: &T,
    mut observe: impl FnMut() -> T,
) {
    let mut last = None;
    let done = poll_until(CONVERGE, || {
        let now = observe();
        let ok = now == *expected;
        last = Some(now);
        ok.then_some(())
    });
    if done.is_none() {
        panic!(
            "{what}: not as expected within {CONVERGE:?}\nexpected: {expected:#?}\nlast seen: {last:#?}\n{}",
            dump(netns)
        );
    }
}

fn wait_for_set(
    what: &str,
    netns: &Netns,
    expected: &BTreeSet<String>,
    observe: impl FnMut() -> BTreeSet<String>,
) {
    wait_for(what, netns, expected, observe);
}

// ---------------------------------------------------------------------------
// What the daemon should build (netlink mode).

fn set(lines: &[String]) -> BTreeSet<String> {
    lines.iter().cloned().collect()
}

fn union(sets: &[&BTreeSet<String>]) -> BTreeSet<String> {
    sets.iter().flat_map(|s| s.iter().cloned()).collect()
}

/// Present whenever patchpanel manages uplink routing.
fn main_rules() -> BTreeSet<String> {
    set(&[
        "v4 1000 lookup main suppress_prefixlength 0".into(),
        "v6 1000 lookup main suppress_prefixlength 0".into(),
    ])
}

/// The rules selecting `ifname`'s table at its rank.
fn uplink_rules(ifname: &str, ifindex: u32, rank: u32, addr: &str) -> BTreeSet<String> {
    let table = 1000 + ifindex;
    let priority = 1010 + 10 * rank;
    set(&[
        format!(
            "v4 {priority} fwmark 0x{:x}/0xffff0000 lookup {table}",
            table << 16
        ),
        format!("v4 {priority} oif {ifname} lookup {table}"),
        format!("v4 {priority} iif {ifname} lookup {table}"),
        format!("v4 {priority} from {addr} lookup {table}"),
    ])
}

/// The catch-all to the default uplink's table.
fn catch_all(ifindex: u32) -> BTreeSet<String> {
    set(&[format!("v4 32765 lookup {}", 1000 + ifindex)])
}

/// `ifname`'s table: its /24 and its default route.
fn uplink_routes(ifname: &str, ifindex: u32, subnet: &str, gateway: &str) -> BTreeSet<String> {
    let table = 1000 + ifindex;
    set(&[
        format!("table {table} {subnet} dev {ifname}"),
        format!("table {table} default via {gateway} dev {ifname}"),
    ])
}

/// Connection pinning for `ifname` (reference §4.6), IPv4 and IPv6.
fn expected_pinning(ifname: &str, ifindex: u32) -> BTreeSet<String> {
    let chain = format!("POSTROUTING_{ifname}");
    let tag = (1000 + ifindex) << 16;
    let mut lines = BTreeSet::new();
    for family in ["v4", "v6"] {
        for line in [
            format!(":{chain}"),
            format!("-A {chain} -j CONNMARK --set-xmark 0x{tag:x}/0xffff0000"),
            format!("-A {chain} -j CONNMARK --save-mark --nfmask 0x3f00 --ctmask 0x3f00"),
            format!("-A patchpanel_POSTROUTING -o {ifname} -j {chain}"),
            format!(
                "-A patchpanel_PREROUTING -i {ifname} -j CONNMARK --restore-mark --nfmask 0x3f00 --ctmask 0x3f00"
            ),
        ] {
            lines.insert(format!("{family} {line}"));
        }
    }
    lines
}

/// Everything eth0 gets as the only (default) uplink.
fn eth0_only(netns: &Netns) -> (u32, BTreeSet<String>, BTreeSet<String>) {
    let eth0 = ifindex(netns, "eth0");
    let rules = union(&[
        &main_rules(),
        &uplink_rules("eth0", eth0, 0, UPLINK_ADDR),
        &catch_all(eth0),
    ]);
    let routes = uplink_routes("eth0", eth0, "192.0.2.0/24", GATEWAY);
    (eth0, rules, routes)
}

// ---------------------------------------------------------------------------
// Changing the daemon's namespace.

/// Runs `ip ARGS` on the host side (for commands naming two namespaces).
fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A second uplink `wlan0` to the upstream namespace (peer `up1`), on
/// 198.51.100.0/24, with a default route worse than eth0's.
fn plug_wlan0(netns: &Netns, internet: &Internet) {
    let upstream = internet.upstream.name();
    ip(&[
        "-n",
        netns.name(),
        "link",
        "add",
        "wlan0",
        "type",
        "veth",
        "peer",
        "name",
        "up1",
        "netns",
        upstream,
    ]);
    ip(&[
        "-n",
        upstream,
        "addr",
        "add",
        &format!("{WLAN_GATEWAY}/24"),
        "dev",
        "up1",
    ]);
    ip(&["-n", upstream, "link", "set", "up1", "up"]);
    ip(&[
        "-n",
        netns.name(),
        "addr",
        "add",
        &format!("{WLAN_ADDR}/24"),
        "dev",
        "wlan0",
    ]);
    ip(&["-n", netns.name(), "link", "set", "wlan0", "up"]);
    ip(&[
        "-n",
        netns.name(),
        "route",
        "add",
        "default",
        "via",
        WLAN_GATEWAY,
        "dev",
        "wlan0",
        "metric",
        "100",
    ]);
}

fn unplug(netns: &Netns, ifname: &str) {
    ip(&["-n", netns.name(), "link", "del", ifname]);
}

// ---------------------------------------------------------------------------
// ConnectNamespace.

fn pinned_to(device: &str) -> ConnectNamespaceRequest {
    ConnectNamespaceRequest {
        pid: -1,
        outbound_physical_device: device.into(),
        ..Default::default()
    }
}

fn connect(
    bus: &PrivateBus,
    request: &ConnectNamespaceRequest,
) -> Result<(ConnectNamespaceResponse, Lifeline), ClientError> {
    Client::connect_to(bus.address())
        .expect("client")
        .connect_namespace(request)
}

fn assert_unknown_uplink(bus: &PrivateBus, device: &str) {
    match connect(bus, &pinned_to(device)) {
        Err(ClientError::InvalidArgument(m)) => {
            assert!(m.contains("not a known uplink"), "{device}: {m}")
        }
        Err(other) => panic!("{device}: expected InvalidArgument, got {other:?}"),
        Ok((resp, _)) => panic!("{device} was accepted: {resp:?}"),
    }
}

/// Pings the upstream host from the daemon-made namespace `name`, with a
/// few tries.
fn reaches_upstream(name: &str) -> bool {
    poll_until(Duration::from_secs(10), || {
        let out = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{name}"))
            .args(["--", "ping", "-c", "1", "-W", "2", REMOTE_HOST])
            .output()
            .ok()?;
        out.status.success().then_some(())
    })
    .is_some()
}

/// Waits until the daemon wrote `needle` to its log.
fn wait_log(daemon: &Daemon, needle: &str) {
    let seen = poll_until(CONVERGE, || daemon.log().contains(needle).then_some(()));
    assert!(
        seen.is_some(),
        "{needle:?} not in the log:\n{}",
        daemon.log()
    );
}

// ---------------------------------------------------------------------------
// Netlink mode.

#[test]
fn netlink_mode_gives_an_uplink_its_table_rules_accept_ra_and_pinning() {
    let world = World::start().expect("world");
    wait_log(&world.daemon, "uplinks from netlink");
    let (eth0, rules, routes) = eth0_only(&world.netns);

    wait_for_set("rules", &world.netns, &rules, || owned_rules(&world.netns));
    wait_for_set("routes", &world.netns, &routes, || {
        owned_routes(&world.netns)
    });
    wait_for_set(
        "pinning",
        &world.netns,
        &expected_pinning("eth0", eth0),
        || pinning(&world.netns, "eth0"),
    );
    assert_eq!(accept_ra(&world.netns, "eth0"), "2");
    // The host's own main table is left as it was.
    let main = world
        .netns
        .exec_ok(&["ip", "route", "show", "table", "main"])
        .expect("ip route");
    assert!(
        main.contains(&format!("default via {GATEWAY} dev eth0")),
        "{main}"
    );
}

#[test]
fn a_second_uplink_ranks_next_and_its_removal_takes_exactly_its_state() {
    let world = World::start().expect("world");
    let (eth0, eth0_rules, eth0_routes) = eth0_only(&world.netns);
    wait_for_set("eth0 rules", &world.netns, &eth0_rules, || {
        owned_rules(&world.netns)
    });
    let eth0_pinning = expected_pinning("eth0", eth0);

    plug_wlan0(&world.netns, &world.internet);
    let wlan0 = ifindex(&world.netns, "wlan0");
    assert_ne!(wlan0, eth0);
    // eth0 keeps the default route (metric 0): wlan0 ranks second.
    let both_rules = union(&[&eth0_rules, &uplink_rules("wlan0", wlan0, 1, WLAN_ADDR)]);
    let both_routes = union(&[
        &eth0_routes,
        &uplink_routes("wlan0", wlan0, "198.51.100.0/24", WLAN_GATEWAY),
    ]);
    wait_for_set("rules with wlan0", &world.netns, &both_rules, || {
        owned_rules(&world.netns)
    });
    wait_for_set("routes with wlan0", &world.netns, &both_routes, || {
        owned_routes(&world.netns)
    });
    wait_for_set(
        "wlan0 pinning",
        &world.netns,
        &expected_pinning("wlan0", wlan0),
        || pinning(&world.netns, "wlan0"),
    );
    wait_for("wlan0 accept_ra", &world.netns, &"2".to_string(), || {
        accept_ra(&world.netns, "wlan0")
    });
    assert_eq!(pinning(&world.netns, "eth0"), eth0_pinning);

    unplug(&world.netns, "wlan0");
    wait_for_set("rules without wlan0", &world.netns, &eth0_rules, || {
        owned_rules(&world.netns)
    });
    wait_for_set("routes without wlan0", &world.netns, &eth0_routes, || {
        owned_routes(&world.netns)
    });
    wait_for_set("wlan0 pinning gone", &world.netns, &BTreeSet::new(), || {
        pinning(&world.netns, "wlan0")
    });
    assert_eq!(pinning(&world.netns, "eth0"), eth0_pinning);
    assert_eq!(accept_ra(&world.netns, "eth0"), "2");
}

#[test]
fn the_default_route_decides_the_ranks_and_the_catch_all() {
    let world = World::start().expect("world");
    let eth0 = ifindex(&world.netns, "eth0");
    plug_wlan0(&world.netns, &world.internet);
    let wlan0 = ifindex(&world.netns, "wlan0");
    let routes = union(&[
        &uplink_routes("eth0", eth0, "192.0.2.0/24", GATEWAY),
        &uplink_routes("wlan0", wlan0, "198.51.100.0/24", WLAN_GATEWAY),
    ]);
    let eth0_default = union(&[
        &main_rules(),
        &uplink_rules("eth0", eth0, 0, UPLINK_ADDR),
        &uplink_rules("wlan0", wlan0, 1, WLAN_ADDR),
        &catch_all(eth0),
    ]);
    wait_for_set("eth0 first", &world.netns, &eth0_default, || {
        owned_rules(&world.netns)
    });
    wait_for_set("both tables", &world.netns, &routes, || {
        owned_routes(&world.netns)
    });

    // Only wlan0 keeps a default route in main: it becomes the default
    // network, ranks first and takes the catch-all.
    world
        .netns
        .exec_ok(&[
            "ip", "route", "del", "default", "via", GATEWAY, "dev", "eth0",
        ])
        .expect("ip route del");
    let wlan0_default = union(&[
        &main_rules(),
        &uplink_rules("wlan0", wlan0, 0, WLAN_ADDR),
        &uplink_rules("eth0", eth0, 1, UPLINK_ADDR),
        &catch_all(wlan0),
    ]);
    wait_for_set("wlan0 first", &world.netns, &wlan0_default, || {
        owned_rules(&world.netns)
    });
    // eth0's table keeps its default route: it is still a usable uplink.
    assert_eq!(owned_routes(&world.netns), routes);

    world
        .netns
        .exec_ok(&[
            "ip", "route", "add", "default", "via", GATEWAY, "dev", "eth0",
        ])
        .expect("ip route add");
    wait_for_set("eth0 first again", &world.netns, &eth0_default, || {
        owned_rules(&world.netns)
    });
    assert_eq!(owned_routes(&world.netns), routes);
}

#[test]
fn an_uplink_back_with_a_new_ifindex_moves_to_a_new_table() {
    let world = World::start().expect("world");
    let (old, old_rules, old_routes) = eth0_only(&world.netns);
    wait_for_set("rules", &world.netns, &old_rules, || {
        owned_rules(&world.netns)
    });
    wait_for_set("routes", &world.netns, &old_routes, || {
        owned_routes(&world.netns)
    });

    world.internet.unplug(&world.netns).expect("unplug");
    // Without uplinks only the static "lookup main" rules stay.
    wait_for_set("rules without eth0", &world.netns, &main_rules(), || {
        owned_rules(&world.netns)
    });
    wait_for_set(
        "routes without eth0",
        &world.netns,
        &BTreeSet::new(),
        || owned_routes(&world.netns),
    );
    wait_for_set(
        "pinning without eth0",
        &world.netns,
        &BTreeSet::new(),
        || pinning(&world.netns, "eth0"),
    );

    world.internet.plug(&world.netns).expect("plug");
    let (new, new_rules, new_routes) = eth0_only(&world.netns);
    assert_ne!(new, old, "the kernel reused eth0's ifindex");
    wait_for_set("rules for the new eth0", &world.netns, &new_rules, || {
        owned_rules(&world.netns)
    });
    wait_for_set("routes for the new eth0", &world.netns, &new_routes, || {
        owned_routes(&world.netns)
    });
    wait_for_set(
        "pinning for the new eth0",
        &world.netns,
        &expected_pinning("eth0", new),
        || pinning(&world.netns, "eth0"),
    );
    wait_for(
        "accept_ra of the new eth0",
        &world.netns,
        &"2".to_string(),
        || accept_ra(&world.netns, "eth0"),
    );
    let rules = world.netns.exec_ok(&["ip", "rule", "show"]).expect("rules");
    assert!(
        !rules.contains(&format!("lookup {}", 1000 + old)),
        "{rules}"
    );
}

#[test]
fn an_uplink_down_and_up_again_gets_its_table_back() {
    let world = World::start().expect("world");
    let (eth0, rules, routes) = eth0_only(&world.netns);
    wait_for_set("routes", &world.netns, &routes, || {
        owned_routes(&world.netns)
    });

    // Down: the kernel flushes every route through eth0, the main default
    // route included, so eth0 is no longer the default network.
    world
        .netns
        .exec_ok(&["ip", "link", "set", "eth0", "down"])
        .expect("down");
    let no_default = union(&[&main_rules(), &uplink_rules("eth0", eth0, 0, UPLINK_ADDR)]);
    wait_for_set("rules while down", &world.netns, &no_default, || {
        owned_rules(&world.netns)
    });
    wait_for_set("routes while down", &world.netns, &BTreeSet::new(), || {
        owned_routes(&world.netns)
    });

    // Up again, and the host's network manager puts the default route back.
    world
        .netns
        .exec_ok(&["ip", "link", "set", "eth0", "up"])
        .expect("up");
    world
        .netns
        .exec_ok(&[
            "ip", "route", "replace", "default", "via", GATEWAY, "dev", "eth0",
        ])
        .expect("default route");
    wait_for_set("rules when up", &world.netns, &rules, || {
        owned_rules(&world.netns)
    });
    wait_for_set("routes when up", &world.netns, &routes, || {
        owned_routes(&world.netns)
    });
    assert_eq!(
        pinning(&world.netns, "eth0"),
        expected_pinning("eth0", eth0)
    );
}

#[test]
fn a_link_without_an_uplink_prefix_gets_nothing() {
    let world = World::start().expect("world");
    let (eth0, eth0_rules, eth0_routes) = eth0_only(&world.netns);
    wait_for_set("rules", &world.netns, &eth0_rules, || {
        owned_rules(&world.netns)
    });
    let upstream = world.internet.upstream.name();
    ip(&[
        "-n",
        world.netns.name(),
        "link",
        "add",
        "foo0",
        "type",
        "veth",
        "peer",
        "name",
        "up2",
        "netns",
        upstream,
    ]);
    world
        .netns
        .exec_ok(&["ip", "addr", "add", "10.99.0.2/24", "dev", "foo0"])
        .expect("addr");
    world
        .netns
        .exec_ok(&["ip", "link", "set", "foo0", "up"])
        .expect("up");
    ip(&["-n", upstream, "link", "set", "up2", "up"]);
    let foo0 = ifindex(&world.netns, "foo0");
    // The daemon handles kernel events in order: once wlan0, added after
    // foo0, has its state, foo0's events have been seen too.
    plug_wlan0(&world.netns, &world.internet);
    let wlan0 = ifindex(&world.netns, "wlan0");
    let rules = union(&[&eth0_rules, &uplink_rules("wlan0", wlan0, 1, WLAN_ADDR)]);
    wait_for_set("rules with wlan0", &world.netns, &rules, || {
        owned_rules(&world.netns)
    });
    wait_for_set(
        "wlan0 pinning",
        &world.netns,
        &expected_pinning("wlan0", wlan0),
        || pinning(&world.netns, "wlan0"),
    );

    assert_eq!(pinning(&world.netns, "foo0"), BTreeSet::new());
    assert_eq!(
        pinning(&world.netns, "eth0"),
        expected_pinning("eth0", eth0)
    );
    let routes = owned_routes(&world.netns);
    assert!(
        routes
            .iter()
            .all(|r| !r.contains("foo0") && !r.contains(&format!("table {} ", 1000 + foo0))),
        "{routes:#?}"
    );
    assert!(
        owned_rules(&world.netns)
            .iter()
            .all(|r| !r.contains("foo0") && !r.contains(&format!("lookup {}", 1000 + foo0))),
        "{}",
        dump(&world.netns)
    );
    assert!(owned_routes(&world.netns).is_superset(&eth0_routes));
    assert_eq!(accept_ra(&world.netns, "foo0"), "1");
    // And it is no outbound device either.
    assert_unknown_uplink(&world.bus, "foo0");
}

#[test]
fn a_clean_stop_removes_uplink_routing_and_restores_accept_ra() {
    let netns = Netns::new().expect("netns");
    let internet = Internet::attach(&netns).expect("internet");
    // A value of the host's own, to be given back.
    set_accept_ra(&netns, "eth0", "0");
    let bus = PrivateBus::start().expect("bus");
    let mut daemon = Daemon::start_with(&netns, &bus, DaemonOptions::default()).expect("daemon");
    daemon.wait_ready().expect("ready");
    let (eth0, rules, _) = eth0_only(&netns);
    wait_for_set("rules", &netns, &rules, || owned_rules(&netns));
    wait_for_set("pinning", &netns, &expected_pinning("eth0", eth0), || {
        pinning(&netns, "eth0")
    });
    assert_eq!(accept_ra(&netns, "eth0"), "2");
    plug_wlan0(&netns, &internet);
    let wlan0_before = "1"; // a new link's default
    wait_for("wlan0 accept_ra", &netns, &"2".to_string(), || {
        accept_ra(&netns, "wlan0")
    });
    let wlan0 = ifindex(&netns, "wlan0");
    wait_for_set(
        "wlan0 pinning",
        &netns,
        &expected_pinning("wlan0", wlan0),
        || pinning(&netns, "wlan0"),
    );
    let (_resp, _lifeline) = connect(&bus, &pinned_to("wlan0")).expect("ConnectNamespace");

    let status = daemon.stop_cleanly(STOP).expect("stop");
    assert!(status.success(), "{status:?}\n{}", daemon.log());

    assert_eq!(owned_rules(&netns), BTreeSet::new(), "{}", dump(&netns));
    assert_eq!(owned_routes(&netns), BTreeSet::new(), "{}", dump(&netns));
    let fw = patchpanel_tests::netns::without_table_marker(&firewall(&netns));
    assert!(
        !fw.contains("patchpanel") && !fw.contains("POSTROUTING_"),
        "{fw}"
    );
    assert_eq!(pinning(&netns, "eth0"), BTreeSet::new());
    assert_eq!(pinning(&netns, "wlan0"), BTreeSet::new());
    assert_eq!(accept_ra(&netns, "eth0"), "0");
    assert_eq!(accept_ra(&netns, "wlan0"), wlan0_before);
    // Nothing but (possibly empty) tables, built-in chains and the traffic
    // accounting chains `rx_<uplink>`/`tx_<uplink>` remains: a clean stop
    // keeps the counters, on purpose, for the next run.
    let accounting = |l: &str| {
        let chain = l
            .strip_prefix("-A ")
            .or_else(|| l.strip_prefix(':'))
            .unwrap_or("");
        chain.starts_with("rx_") || chain.starts_with("tx_")
    };
    let leftovers: Vec<&str> = fw
        .lines()
        .filter(|l| l.starts_with("-A") || (l.starts_with(':') && l.contains(" - ")))
        .filter(|l| !accounting(l))
        .collect();
    assert_eq!(leftovers, Vec::<&str>::new(), "{fw}");
    drop(daemon);
    drop(bus);
    drop(internet);
}

#[test]
fn a_successor_of_a_crashed_daemon_rebuilds_the_same_routing_and_restores_accept_ra() {
    let netns = Netns::new().expect("netns");
    let _internet = Internet::attach(&netns).expect("internet");
    set_accept_ra(&netns, "eth0", "0");
    let bus = PrivateBus::start().expect("bus");
    let mut crashed = Daemon::start(&netns, &bus).expect("daemon");
    crashed.wait_ready().expect("ready");
    let (eth0, rules, routes) = eth0_only(&netns);
    wait_for_set("rules", &netns, &rules, || owned_rules(&netns));
    wait_for("accept_ra", &netns, &"2".to_string(), || {
        accept_ra(&netns, "eth0")
    });
    crashed.signal(libc::SIGKILL).expect("SIGKILL");
    crashed
        .wait_exit(STOP)
        .expect("wait")
        .expect("the manager did not die");

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
    // Exactly one of each: the leftovers were removed, not added to.
    wait_for_set("rules after the restart", &netns, &rules, || {
        owned_rules(&netns)
    });
    wait_for_set("routes after the restart", &netns, &routes, || {
        owned_routes(&netns)
    });
    wait_for_set(
        "pinning after the restart",
        &netns,
        &expected_pinning("eth0", eth0),
        || pinning(&netns, "eth0"),
    );
    assert_eq!(accept_ra(&netns, "eth0"), "2");

    let status = successor.stop_cleanly(STOP).expect("stop");
    assert!(status.success(), "{status:?}\n{}", successor.log());
    assert_eq!(owned_rules(&netns), BTreeSet::new());
    assert_eq!(owned_routes(&netns), BTreeSet::new());
    assert_eq!(
        accept_ra(&netns, "eth0"),
        "0",
        "the value from before the first daemon must come back\n{}",
        successor.log()
    );
    drop(successor);
    drop(crashed);
}

// ---------------------------------------------------------------------------
// Shill mode.

/// A daemon whose uplinks come from a fake shill. Fields drop in order: the
/// daemon stops before shill leaves, shill leaves before the bus goes.
#[derive(Debug)]
struct ShillWorld {
    daemon: Daemon,
    shill: FakeShill,
    bus: PrivateBus,
    internet: Internet,
    netns: Netns,
}

impl ShillWorld {
    /// The namespace with eth0 to the upstream one, a bus where shill
    /// already lists eth0 (ethernet, the default service's device), and the
    /// daemon started with `--uplinks=<mode>`.
    fn start(mode: &str) -> ShillWorld {
        let netns = Netns::new().expect("netns");
        let internet = Internet::attach(&netns).expect("internet");
        let bus = PrivateBus::start().expect("bus");
        let shill =
            FakeShill::start_with_default(bus.address(), "eth0", "ethernet").expect("fake shill");
        let mut daemon = Daemon::start_with(
            &netns,
            &bus,
            DaemonOptions {
                extra_args: vec![format!("--uplinks={mode}")],
                ..Default::default()
            },
        )
        .expect("daemon");
        daemon.wait_ready().expect("ready");
        ShillWorld {
            daemon,
            shill,
            bus,
            internet,
            netns,
        }
    }

    /// Waits until the daemon pins connections on `ifname`: it took
    /// `ifname` as an uplink.
    fn wait_uplink(&self, ifname: &str) {
        let index = ifindex(&self.netns, ifname);
        wait_for_set(
            &format!("{ifname} pinning"),
            &self.netns,
            &expected_pinning(ifname, index),
            || pinning(&self.netns, ifname),
        );
    }

    fn wait_not_uplink(&self, ifname: &str) {
        wait_for_set(
            &format!("{ifname} pinning gone"),
            &self.netns,
            &BTreeSet::new(),
            || pinning(&self.netns, ifname),
        );
    }

    /// Shill owns the uplinks' tables and rules: patchpanel made none, and
    /// left accept_ra alone.
    fn assert_no_uplink_routing(&self) {
        assert_eq!(
            owned_rules(&self.netns),
            BTreeSet::new(),
            "{}",
            dump(&self.netns)
        );
        assert_eq!(
            owned_routes(&self.netns),
            BTreeSet::new(),
            "{}",
            dump(&self.netns)
        );
        assert_eq!(accept_ra(&self.netns, "eth0"), "1");
    }
}

#[test]
fn shill_mode_pins_connections_and_leaves_routing_to_shill() {
    let world = ShillWorld::start("shill");
    wait_log(&world.daemon, "uplinks from shill");
    world.wait_uplink("eth0");
    world.assert_no_uplink_routing();

    let (resp, _lifeline) = connect(&world.bus, &pinned_to("eth0")).expect("ConnectNamespace");
    assert!(
        reaches_upstream(&resp.netns_name),
        "no ping through NAT\n{}",
        dump(&world.netns)
    );
    world.assert_no_uplink_routing();

    assert_unknown_uplink(&world.bus, "wlan7");
    // A link named like an uplink that shill does not list is none.
    plug_wlan0(&world.netns, &world.internet);
    assert_unknown_uplink(&world.bus, "wlan0");
    assert_eq!(pinning(&world.netns, "wlan0"), BTreeSet::new());
}

#[test]
fn a_device_shill_adds_or_drops_follows_as_an_outbound_device() {
    let mut world = ShillWorld::start("shill");
    world.wait_uplink("eth0");
    plug_wlan0(&world.netns, &world.internet);

    world.shill.add_device("wlan0", "wifi").expect("add wlan0");
    world.wait_uplink("wlan0");
    let (resp, _wlan) = connect(&world.bus, &pinned_to("wlan0")).expect("pinned to wlan0");
    assert!(reaches_upstream(&resp.netns_name));

    world.shill.remove_device("eth0").expect("remove eth0");
    world.wait_not_uplink("eth0");
    assert_unknown_uplink(&world.bus, "eth0");
    // The other uplink stays.
    assert_eq!(
        pinning(&world.netns, "wlan0"),
        expected_pinning("wlan0", ifindex(&world.netns, "wlan0"))
    );
    connect(&world.bus, &pinned_to("wlan0")).expect("wlan0 still an uplink");
    world.assert_no_uplink_routing();

    // Shill leaving the bus takes every uplink with it.
    world.shill.stop();
    world.wait_not_uplink("wlan0");
    assert_unknown_uplink(&world.bus, "wlan0");
}

#[test]
fn auto_mode_picks_shill_when_its_name_is_owned() {
    let world = ShillWorld::start("auto");
    wait_log(&world.daemon, "uplinks from shill");
    world.wait_uplink("eth0");
    world.assert_no_uplink_routing();
    let (resp, _lifeline) = connect(&world.bus, &pinned_to("eth0")).expect("ConnectNamespace");
    assert!(reaches_upstream(&resp.netns_name));
}
