//! Smoke test of following the host's firewall (issue 22); the full suite
//! is built on it.

use std::time::Duration;

use patchpanel_client::Client;
use patchpanel_proto::ConnectNamespaceRequest;
use patchpanel_tests::poll_until;
use patchpanel_tests::world::{World, REMOTE_HOST};

fn ping(world: &World, netns: &str) -> bool {
    world
        .exec_in(netns, &["ping", "-c", "1", "-W", "1", REMOTE_HOST])
        .map(|o| o.status.success())
        .unwrap_or(false)
}

#[test]
fn a_flushed_ruleset_is_rebuilt_without_a_dbus_call() {
    let world = World::start().expect("world");
    let c = Client::connect_to(world.bus.address()).expect("client");
    let (ns, _lifeline) = c
        .connect_namespace(&ConnectNamespaceRequest {
            pid: -1,
            ..Default::default()
        })
        .expect("connect");
    assert!(ping(&world, &ns.netns_name));
    world
        .netns
        .exec_ok(&["nft", "flush", "ruleset"])
        .expect("flush");
    poll_until(Duration::from_secs(2), || {
        ping(&world, &ns.netns_name).then_some(())
    })
    .expect("the guest reaches the internet again within 2 s");
}
