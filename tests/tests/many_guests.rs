//! The CI form of the 1,000-guest benchmark (`bench/run connect-ns --loaded
//! 1000`): 100 connected namespaces at once, from a pool sized by config.
//! Every one gets its own addresses and reaches the internet host through
//! NAT, the daemon lists and counts them all, and releasing them all at
//! once leaves the kernel as it was, with nothing left in the netns
//! directory or the pool (a second round gets the same addresses).

use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use patchpanel_client::{Client, Lifeline};
use patchpanel_proto::{ConnectNamespaceRequest, ConnectNamespaceResponse};
use patchpanel_tests::world::{kernel_snapshot, settled_kernel_snapshot, World, REMOTE_HOST};
use patchpanel_tests::{poll_until, DaemonOptions};

const GUESTS: usize = 100;
/// Room for the guests: 128 /30s at 100.115.96.0/23, clear of the
/// default pools.
const POOL: &str = "[pools.netns]\nbase = \"100.115.96.0\"\nprefix_len = 30\ncount = 128\n";

fn connect_all(c: &Client) -> Vec<(ConnectNamespaceResponse, Lifeline)> {
    (0..GUESTS)
        .map(|i| {
            c.connect_namespace(&ConnectNamespaceRequest {
                pid: -1,
                ..Default::default()
            })
            .unwrap_or_else(|e| panic!("namespace {i}: {e}"))
        })
        .collect()
}

/// One ping from each namespace, all at once; the namespaces that got no
/// reply.
fn silent(names: &[String]) -> Vec<String> {
    let children: Vec<(String, Child)> = names
        .iter()
        .map(|n| {
            let child = Command::new("nsenter")
                .arg(format!("--net=/run/netns/{n}"))
                .args(["--", "ping", "-c", "1", "-W", "5", REMOTE_HOST])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("ping");
            (n.clone(), child)
        })
        .collect();
    children
        .into_iter()
        .filter_map(|(n, mut child)| {
            let ok = child.wait().map(|s| s.success()).unwrap_or(false);
            (!ok).then_some(n)
        })
        .collect()
}

#[test]
fn a_hundred_namespaces_at_once_all_work_and_all_go() {
    let world = World::start_with(DaemonOptions {
        extra_config: POOL.to_string(),
        ..Default::default()
    })
    .expect("world");
    let before = kernel_snapshot(&world.netns).expect("snapshot");
    let c = Client::connect_to(world.bus.address())
        .expect("client")
        .with_timeout(Duration::from_secs(60));

    let held = connect_all(&c);
    let names: Vec<String> = held.iter().map(|(r, _)| r.netns_name.clone()).collect();
    let peers: BTreeSet<u32> = held.iter().map(|(r, _)| r.peer_ipv4_address).collect();
    assert_eq!(peers.len(), GUESTS, "every namespace has its own address");
    assert_eq!(c.get_devices().expect("GetDevices").len(), GUESTS);

    // Every guest works: a ping through NAT from each (a second chance for
    // the few whose first ping met ARP/neighbour set-up).
    let mut failed = silent(&names);
    if !failed.is_empty() {
        failed = silent(&failed);
    }
    assert!(
        failed.is_empty(),
        "no reply from {} namespace(s): {failed:?}",
        failed.len()
    );
    let counters = c
        .get_traffic_counters::<&str>(&[])
        .expect("GetTrafficCounters");
    assert!(
        counters.iter().any(|k| k.tx_packets >= GUESTS as u64),
        "the pings are counted: {counters:?}"
    );

    // All released at once: nothing is left.
    drop(held);
    let gone = poll_until(Duration::from_secs(60), || {
        c.get_devices().ok().filter(|d| d.is_empty()).map(|_| ())
    });
    assert!(gone.is_some(), "devices left:\n{}", world.daemon.log());
    let after = settled_kernel_snapshot(&world.netns, &before);
    assert_eq!(after, before, "the kernel is as before");
    let left: Vec<String> = std::fs::read_dir("/run/netns")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(world.daemon.netns_prefix()))
                .collect()
        })
        .unwrap_or_default();
    assert!(left.is_empty(), "namespaces left: {left:?}");

    // The pool got every address back: a second round gets the same ones.
    let again = connect_all(&c);
    let peers_again: BTreeSet<u32> = again.iter().map(|(r, _)| r.peer_ipv4_address).collect();
    assert_eq!(peers_again, peers);
}
