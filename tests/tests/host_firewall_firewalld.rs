//! Living with firewalld (issue 22): Debian's firewalld runs in the daemon's
//! namespace on the test's bus ([`patchpanel_tests::firewalld`]), with its
//! default zone `public`, whose forward and input chains end in a reject.
//!
//! * Guests reach the internet through firewalld's chains (patchpanel's
//!   narrow accept at their top), and again within 2 s of a
//!   `firewall-cmd --reload`, which deletes and recreates firewalld's table,
//!   with no call to patchpanel.
//! * firewalld's `Reloaded` signal asks for a check of the host firewall
//!   only when firewalld's owner sends it: a local user's unicast
//!   `Reloaded` (and `NameOwnerChanged` naming itself firewalld) asks for
//!   nothing.
//!
//! A check leaves the firewall as it was when firewalld's own nf_tables
//! changes were followed already, so the only trace of a check asked for by
//! `Reloaded` is the daemon's log line for it ("host firewall changed by
//! ... firewalld reloaded: ..."): the last two tests read the log.

use std::time::Duration;

use patchpanel_client::{Client, Lifeline};
use patchpanel_proto::ConnectNamespaceRequest;
use patchpanel_tests::firewalld::{self, Firewalld};
use patchpanel_tests::forger::{self, Arg, Step};
use patchpanel_tests::poll_until;
use patchpanel_tests::world::{World, REMOTE_HOST};

/// How a check asked for by firewalld's `Reloaded` names its cause in the
/// daemon's log (`FIREWALLD_RELOADED` in manager/src/dbus_service.rs).
const RELOAD_CAUSE: &str = "firewalld reloaded";
/// The start of the daemon's line for a check of the host firewall.
const CHECK_LINE: &str = "host firewall changed by ";
/// How long the daemon may take to notice firewalld, or act on a signal.
const NOTICE: Duration = Duration::from_secs(10);
/// How long a forged signal is given to (wrongly) cause a check; the check
/// would run at most 100 ms after the signal.
const ACT: Duration = Duration::from_secs(1);
/// The local user who forges.
const FORGER: &str = "nobody";

fn ping(world: &World, netns: &str) -> bool {
    world
        .exec_in(netns, &["ping", "-c", "1", "-W", "1", REMOTE_HOST])
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// A connected namespace (its name and lifeline) that reaches the internet.
fn connected(world: &World) -> (String, Lifeline) {
    let client = Client::connect_to(world.bus.address()).expect("client");
    let (ns, lifeline) = client
        .connect_namespace(&ConnectNamespaceRequest {
            pid: -1,
            ..Default::default()
        })
        .expect("connect");
    assert!(
        ping(world, &ns.netns_name),
        "the guest reaches the internet"
    );
    (ns.netns_name, lifeline)
}

/// firewalld's chain `name` in its table, as `nft list` prints it.
fn firewalld_chain(world: &World, name: &str) -> String {
    world
        .netns
        .exec_ok(&["nft", "list", "chain", "inet", "firewalld", name])
        .expect("firewalld's chain")
}

/// The daemon's log lines after the first `from` bytes.
fn log_since(world: &World, from: usize) -> Vec<String> {
    world
        .daemon
        .log()
        .get(from..)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// The daemon's checks of the host firewall asked for by `Reloaded`, after
/// the first `from` bytes of its log.
fn reload_checks(world: &World, from: usize) -> Vec<String> {
    log_since(world, from)
        .into_iter()
        .filter(|l| l.contains(CHECK_LINE) && l.contains(RELOAD_CAUSE))
        .collect()
}

/// Waits until the daemon knows firewalld's owner and the guest gets
/// through firewalld's chains.
fn settle(world: &World, netns: &str) {
    poll_until(NOTICE, || {
        world
            .daemon
            .log()
            .contains("firewalld is on the bus as")
            .then_some(())
    })
    .unwrap_or_else(|| panic!("the daemon finds firewalld:\n{}", world.daemon.log()));
    if iptables_backend() {
        // firewalld's native tables drop what the iptables backend accepts
        // (docs/operations.md); the signal handling is the same.
        return;
    }
    poll_until(NOTICE, || ping(world, netns).then_some(()))
        .expect("the guest reaches the internet through firewalld's chains");
}

fn iptables_backend() -> bool {
    patchpanel_tests::daemon::firewall_backend() == "iptables"
}

#[test]
fn guests_reach_the_internet_under_firewalld_and_again_within_2s_of_its_reload() {
    let world = World::start().expect("world");
    let (netns, _lifeline) = connected(&world);
    let firewalld = Firewalld::start(&world.netns, &world.bus).expect("firewalld");

    settle(&world, &netns);
    if iptables_backend() {
        // The documented limit: the iptables backend's accepts carry no
        // mark, so nothing is added to firewalld's chains, the guest stays
        // cut off, and the log names the chain that drops.
        let named = poll_until(NOTICE, || {
            let log = world.daemon.log();
            log.lines()
                .any(|l| {
                    l.contains("host firewall changed by") && l.contains("firewalld filter_FORWARD")
                })
                .then_some(())
        });
        assert!(
            named.is_some(),
            "the log names firewalld's forward chain:\n{}",
            world.daemon.log()
        );
        assert!(!firewalld_chain(&world, "filter_FORWARD").contains("comment \"patchpanel\""));
        assert!(!ping(&world, &netns), "the guest is dropped by firewalld");
        return;
    }
    let forward = firewalld_chain(&world, "filter_FORWARD");
    assert!(
        forward.contains("comment \"patchpanel\""),
        "patchpanel's narrow accept is in firewalld's forward chain:\n{forward}"
    );
    assert!(
        forward
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty() && !l.contains('}'))
            .is_some_and(|l| l.contains("reject")),
        "firewalld's forward chain ends with a reject (what the accept gets past):\n{forward}"
    );

    firewalld.reload().expect("reload");
    poll_until(Duration::from_secs(2), || {
        ping(&world, &netns).then_some(())
    })
    .expect("the guest reaches the internet again within 2 s of the reload");
    let forward = firewalld_chain(&world, "filter_FORWARD");
    assert!(
        forward.contains("comment \"patchpanel\""),
        "the narrow accept is back in firewalld's new forward chain:\n{forward}"
    );
}

#[test]
fn firewallds_reloaded_signal_asks_for_a_check() {
    let world = World::start().expect("world");
    let (netns, _lifeline) = connected(&world);
    let firewalld = Firewalld::start(&world.netns, &world.bus).expect("firewalld");
    settle(&world, &netns);
    let from = world.daemon.log().len();

    firewalld.reload().expect("reload");

    poll_until(NOTICE, || {
        (!reload_checks(&world, from).is_empty()).then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "a check asked for by firewalld's Reloaded:\n{}",
            log_since(&world, from).join("\n")
        )
    });
}

#[test]
fn a_forged_reloaded_from_a_local_user_asks_for_no_check() {
    let world = World::start().expect("world");
    let (netns, _lifeline) = connected(&world);
    let firewalld = Firewalld::start(&world.netns, &world.bus).expect("firewalld");
    settle(&world, &netns);
    let owner = forger::name_owner(world.bus.address(), firewalld::SERVICE)
        .expect("GetNameOwner")
        .expect("firewalld owns its name");
    let uid = forger::uid_of("patchpaneld").expect("uid of patchpaneld");
    let connections = forger::connections_of_uid(world.bus.address(), uid).expect("connections");
    assert!(!connections.is_empty(), "the daemon has no connection");
    let from = world.daemon.log().len();

    // To each of the daemon's connections: the bus's word that the forger
    // owns firewalld's name now, then the forger's Reloaded.
    let steps: Vec<Step> = connections
        .iter()
        .flat_map(|c| {
            [
                Step::signal(
                    c,
                    "/org/freedesktop/DBus",
                    "org.freedesktop.DBus",
                    "NameOwnerChanged",
                    vec![
                        Arg::Str(firewalld::SERVICE.into()),
                        Arg::Str(owner.clone()),
                        Arg::OwnName,
                    ],
                ),
                Step::signal(c, firewalld::PATH, firewalld::INTERFACE, "Reloaded", vec![]),
            ]
        })
        .collect();
    forger::forge_as(FORGER, world.bus.address(), &steps).expect("forge");

    // The daemon got them (it says so) and asked for no check.
    poll_until(NOTICE, || {
        log_since(&world, from)
            .iter()
            .any(|l| l.contains("signal(s) about firewalld that neither the bus nor"))
            .then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "the daemon reports the forgery:\n{}",
            log_since(&world, from).join("\n")
        )
    });
    std::thread::sleep(ACT);
    assert_eq!(
        reload_checks(&world, from),
        Vec::<String>::new(),
        "no check for a forged Reloaded"
    );
    // firewalld itself is still believed.
    firewalld.reload().expect("reload");
    poll_until(NOTICE, || {
        (!reload_checks(&world, from).is_empty()).then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "a check asked for by firewalld's own Reloaded:\n{}",
            log_since(&world, from).join("\n")
        )
    });
}
