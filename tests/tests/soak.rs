//! Churn (issue 14): many ConnectNamespace create/teardown cycles, with
//! lifelines closed in random order, clients killed with SIGKILL while they
//! hold a lifeline, and Termina VMs started and stopped in between; then
//! nothing may be left: no link, namespace, route, rule or firewall rule,
//! no pool entry, no file descriptor of any process in the tree, and less
//! than 1 MiB of manager RSS growth.
//!
//! `PATCHPANEL_SOAK_CYCLES` sets the number of cycles (100 by default, the
//! CI form; `bench/run soak` runs 1,000); `PATCHPANEL_SOAK_SEED` replays a
//! run (the seed is printed first).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use patchpanel_client::{Client, Lifeline};
use patchpanel_proto::ConnectNamespaceRequest;
use patchpanel_tests::procfs::{fd_count, rss_kib};
use patchpanel_tests::world::{kernel_snapshot, World};
use patchpanel_tests::{bin_path, poll_until, ProcessTree};

/// Generous: lifeline teardown is measured in the benchmarks, not here.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(10);
/// The bound on the manager's RSS growth over the run.
const RSS_GROWTH_LIMIT_KIB: u64 = 1024;
/// At most this many namespaces are open at once (the default netns pool
/// has room for more).
const MAX_OPEN: usize = 4;

/// A small deterministic generator (xorshift64*): enough to shuffle the
/// churn reproducibly without a dependency.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn env_number(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    Some(
        value
            .parse()
            .unwrap_or_else(|e| panic!("{name}={value:?}: {e}")),
    )
}

/// Who holds a namespace's lifeline.
enum Holder {
    /// This process: closing is dropping the read end.
    Lifeline(Lifeline),
    /// A `patchpanel connect-ns` process: closing is SIGKILL.
    Cli(Child),
}

fn connect_cli(bus: &str) -> Child {
    let mut child = Command::new(bin_path("patchpanel").expect("cli"))
        .args(["connect-ns", "--json"])
        .env("DBUS_SYSTEM_BUS_ADDRESS", bus)
        .stdout(Stdio::piped())
        .spawn()
        .expect("patchpanel connect-ns");
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().expect("stdout"))
        .read_line(&mut line)
        .expect("read");
    let v: serde_json::Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("connect-ns printed {line:?}: {e}"));
    assert!(v["netns_name"].is_string(), "{line}");
    child
}

fn close(holder: Holder) {
    match holder {
        Holder::Lifeline(lifeline) => drop(lifeline),
        Holder::Cli(mut child) => {
            child.kill().expect("SIGKILL connect-ns");
            child.wait().expect("reap connect-ns");
        }
    }
}

/// Every process of the tree, by role.
fn processes(tree: &ProcessTree) -> BTreeMap<String, u32> {
    let mut all = BTreeMap::from([
        ("manager".to_string(), tree.manager),
        ("spawner".to_string(), tree.spawner),
    ]);
    for (helper, pid) in &tree.helpers {
        all.insert(helper.to_string(), *pid);
    }
    all
}

fn fd_counts(tree: &ProcessTree) -> BTreeMap<String, usize> {
    processes(tree)
        .into_iter()
        .map(|(role, pid)| (role, fd_count(pid).expect("fd count")))
        .collect()
}

fn our_netns(prefix: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir("/run/netns")
        .expect("/run/netns")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(prefix))
        .collect();
    names.sort();
    names
}

fn diff(after: &str, before: &str) -> Vec<String> {
    let b: std::collections::BTreeSet<&str> = before.lines().collect();
    let a: std::collections::BTreeSet<&str> = after.lines().collect();
    let mut out: Vec<String> = b.difference(&a).map(|l| format!("- {l}")).collect();
    out.extend(a.difference(&b).map(|l| format!("+ {l}")));
    out
}

/// The lines changed in each kind of kernel state, by the sections of a
/// [`kernel_snapshot`]: links, addresses, routes, rules, firewall.
fn section_diffs(after: &str, before: &str) -> Vec<(&'static str, usize)> {
    fn sections(snapshot: &str) -> BTreeMap<&'static str, String> {
        let mut out: BTreeMap<&'static str, String> = BTreeMap::new();
        let mut current = "other";
        for line in snapshot.lines() {
            if let Some(header) = line.strip_prefix("## ") {
                current = if header.contains("link") {
                    "links"
                } else if header.contains("addr") {
                    "addresses"
                } else if header.contains("route") {
                    "routes"
                } else if header.contains("rule") {
                    "ip rules"
                } else {
                    "firewall rules"
                };
                out.entry(current).or_default();
                continue;
            }
            let text = out.entry(current).or_default();
            text.push_str(line);
            text.push('\n');
        }
        out
    }
    let (a, b) = (sections(after), sections(before));
    ["links", "addresses", "routes", "ip rules", "firewall rules"]
        .into_iter()
        .map(|kind| {
            let empty = String::new();
            let n = diff(a.get(kind).unwrap_or(&empty), b.get(kind).unwrap_or(&empty)).len();
            (kind, n)
        })
        .collect()
}

/// One create/teardown of each kind, so that lazily made state (firewall
/// chains, bus match rules, allocator arenas) exists before the baseline.
/// Returns the Termina VM's subnet address, the first of its pool.
fn warm_up(world: &World, client: &Client) -> Option<std::net::Ipv4Addr> {
    let (_, lifeline) = client
        .connect_namespace(&ConnectNamespaceRequest {
            pid: -1,
            ..Default::default()
        })
        .expect("ConnectNamespace");
    close(Holder::Lifeline(lifeline));
    close(Holder::Cli(connect_cli(world.bus.address())));
    let vm = client.terminavm_startup(1).expect("TerminaVmStartup");
    client.terminavm_shutdown(1).expect("TerminaVmShutdown");
    wait_idle(client);
    vm.ipv4_subnet.as_ref().and_then(|s| s.addr_v4())
}

fn wait_idle(client: &Client) {
    poll_until(SETTLE_TIMEOUT, || {
        client.get_devices().ok()?.is_empty().then_some(())
    })
    .expect("devices left after every lifeline closed");
}

#[test]
fn churn_leaves_no_links_namespaces_rules_pool_entries_fds_or_memory_behind() {
    let cycles = env_number("PATCHPANEL_SOAK_CYCLES").unwrap_or(100) as usize;
    let seed = env_number("PATCHPANEL_SOAK_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    eprintln!("soak: {cycles} cycles, seed {seed} (PATCHPANEL_SOAK_SEED={seed} replays it)");
    let mut rng = Rng::new(seed);

    let world = World::start().expect("world");
    let client = Client::connect_to(world.bus.address()).expect("client");
    // Taken once the uplink's IPv6 link-local address has passed DAD (a
    // `tentative` flag would otherwise read as a change).
    let before_kernel = poll_until(SETTLE_TIMEOUT, || {
        let snapshot = kernel_snapshot(&world.netns).expect("snapshot");
        (!snapshot.contains("tentative")).then_some(snapshot)
    })
    .expect("an address stayed tentative");
    let first_vm_subnet = warm_up(&world, &client);
    assert!(first_vm_subnet.is_some(), "the warm-up VM had no subnet");
    let tree = world.daemon.tree().expect("tree");
    // Counted once the warm-up's teardown has settled (fds of a finished
    // call may close a moment after its reply).
    std::thread::sleep(Duration::from_millis(500));
    let fds_before = fd_counts(&tree);
    let rss_before = rss_kib(tree.manager).expect("rss");
    let prefix = world.daemon.netns_prefix().to_string();

    let started = Instant::now();
    let mut open: Vec<Holder> = Vec::new();
    let (mut by_cli, mut by_lifeline, mut vms) = (0, 0, 0);
    let mut vm_running: Option<u32> = None;
    for cycle in 0..cycles {
        // Create one namespace, a fifth of them through a client process
        // that will be killed.
        if rng.below(5) == 0 {
            open.push(Holder::Cli(connect_cli(world.bus.address())));
            by_cli += 1;
        } else {
            let (_, lifeline) = client
                .connect_namespace(&ConnectNamespaceRequest {
                    pid: -1,
                    ..Default::default()
                })
                .unwrap_or_else(|e| panic!("cycle {cycle}: ConnectNamespace: {e}"));
            open.push(Holder::Lifeline(lifeline));
            by_lifeline += 1;
        }
        // Tear down a random one of those open, keeping a few alive.
        while open.len() >= MAX_OPEN || (!open.is_empty() && rng.below(2) == 0) {
            let victim = open.swap_remove(rng.below(open.len()));
            close(victim);
        }
        // A Termina VM comes or goes every tenth cycle or so.
        if rng.below(10) == 0 {
            match vm_running.take() {
                Some(cid) => client
                    .terminavm_shutdown(cid)
                    .unwrap_or_else(|e| panic!("cycle {cycle}: TerminaVmShutdown: {e}")),
                None => {
                    let cid = 100 + cycle as u32;
                    client
                        .terminavm_startup(cid)
                        .unwrap_or_else(|e| panic!("cycle {cycle}: TerminaVmStartup: {e}"));
                    vm_running = Some(cid);
                    vms += 1;
                }
            }
        }
    }
    while !open.is_empty() {
        let victim = open.swap_remove(rng.below(open.len()));
        close(victim);
    }
    if let Some(cid) = vm_running {
        client.terminavm_shutdown(cid).expect("TerminaVmShutdown");
    }
    wait_idle(&client);
    let elapsed = started.elapsed();

    // The tree is the same one: nothing crashed and was respawned.
    let tree_after = world.daemon.tree().expect("tree");
    assert_eq!(
        tree_after, tree,
        "the process tree changed during the churn"
    );
    let leaked_netns = poll_until(SETTLE_TIMEOUT, || {
        let left = our_netns(&prefix);
        left.is_empty().then_some(())
    });
    let netns_left = our_netns(&prefix);
    let after_kernel = kernel_snapshot(&world.netns).expect("snapshot");
    let kernel_diff = diff(&after_kernel, &before_kernel);
    let mut fds_after = fd_counts(&tree_after);
    // A descriptor may outlive its teardown by a moment; wait for them.
    if fds_after != fds_before {
        poll_until(SETTLE_TIMEOUT, || {
            fds_after = fd_counts(&tree_after);
            (fds_after == fds_before).then_some(())
        });
    }
    let rss_after = rss_kib(tree.manager).expect("rss");

    // Every pool entry is free again: the first namespace subnet and the
    // first Termina subnet are handed out again.
    let (resp, lifeline) = client
        .connect_namespace(&ConnectNamespaceRequest {
            pid: -1,
            ..Default::default()
        })
        .expect("ConnectNamespace after the churn");
    let subnet = resp.ipv4_subnet.as_ref().expect("subnet");
    let first_netns_subnet = subnet.addr_v4() == Some("100.115.92.128".parse().unwrap());
    drop(lifeline);
    let vm = client.terminavm_startup(7).expect("TerminaVmStartup");
    let same_vm_subnet = vm.ipv4_subnet.as_ref().and_then(|s| s.addr_v4()) == first_vm_subnet;
    client.terminavm_shutdown(7).expect("TerminaVmShutdown");
    wait_idle(&client);

    let by_section = section_diffs(&after_kernel, &before_kernel);
    let leaked_fds: i64 = fds_before
        .iter()
        .map(|(role, before)| fds_after[role] as i64 - *before as i64)
        .sum();
    println!(
        "soak: {cycles} cycles ({by_lifeline} lifelines closed, {by_cli} clients killed, \
         {vms} Termina VMs) in {:.1} s, seed {seed}",
        elapsed.as_secs_f64()
    );
    println!("{:<34} {:>12}", "cycles", cycles);
    println!("{:<34} {:>12}", "leaked namespaces", netns_left.len());
    for (label, count) in &by_section {
        println!("{:<34} {:>12}", format!("leaked/changed {label}"), count);
    }
    println!(
        "{:<34} {:>12}",
        "leaked pool entries (netns, vm)",
        format!(
            "{}, {}",
            u8::from(!first_netns_subnet),
            u8::from(!same_vm_subnet)
        )
    );
    println!("{:<34} {:>12}", "leaked fds (all processes)", leaked_fds);
    for (role, before) in &fds_before {
        println!(
            "{:<34} {:>12}",
            format!("  fds {role}"),
            format!("{before} -> {}", fds_after[role])
        );
    }
    println!("{:<34} {:>12}", "manager VmRSS before KiB", rss_before);
    println!("{:<34} {:>12}", "manager VmRSS after KiB", rss_after);
    println!(
        "{:<34} {:>12}  (target < {RSS_GROWTH_LIMIT_KIB} KiB)",
        "manager VmRSS growth KiB",
        rss_after as i64 - rss_before as i64
    );

    assert!(
        leaked_netns.is_some(),
        "namespaces left behind: {netns_left:?}"
    );
    assert!(
        kernel_diff.is_empty(),
        "kernel state changed:\n{}",
        kernel_diff.join("\n")
    );
    assert_eq!(fds_after, fds_before, "file descriptors leaked");
    assert!(
        rss_after <= rss_before + RSS_GROWTH_LIMIT_KIB,
        "manager RSS grew from {rss_before} to {rss_after} KiB"
    );
    assert!(first_netns_subnet, "{resp:?}");
    assert!(same_vm_subnet, "{vm:?}");
    assert_eq!(vm.tap_device_ifname, "vmtap0", "{vm:?}");
    wait_idle(&client);
}
