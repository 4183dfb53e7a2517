//! Logs an operator can read (issue 13): each state-changing call and each
//! event it causes is one INFO line naming the operation id and the
//! caller, with values written as an operator would write them (no Rust
//! `Debug` dumps of structs), and no line of several kilobytes.

use std::time::Duration;

use patchpanel_client::Client;
use patchpanel_proto::modify_port_rule_request::{Operation, Protocol, RuleType};
use patchpanel_proto::{ConnectNamespaceRequest, ModifyPortRuleRequest};
use patchpanel_tests::poll_until;
use patchpanel_tests::world::World;

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

/// The daemon's INFO line containing every one of `needles`; fails with
/// the whole log otherwise.
fn line_with(log: &str, needles: &[&str]) -> String {
    log.lines()
        .find(|l| l.contains(" INFO ") && needles.iter().all(|n| l.contains(n)))
        .map(str::to_string)
        .unwrap_or_else(|| panic!("no INFO line with {needles:?} in the log:\n{log}"))
}

/// `op <n>` is in `line` (a number, not just the word).
fn has_op_id(line: &str) -> bool {
    line.split("op ")
        .skip(1)
        .any(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
}

#[test]
fn each_call_and_its_events_are_one_readable_line_with_the_op_id_and_the_caller() {
    let world = World::start().expect("world");
    let client = Client::connect_to(world.bus.address()).expect("client");
    let me = client.unique_name();

    let (response, lifeline) = client
        .connect_namespace(&ConnectNamespaceRequest {
            pid: -1,
            ..Default::default()
        })
        .expect("connect");
    client
        .modify_port_rule(&access_rule(Operation::Create, 9292))
        .expect("create rule");
    client
        .modify_port_rule(&access_rule(Operation::Delete, 9292))
        .expect("delete rule");
    client.terminavm_startup(7).expect("termina");
    client.terminavm_shutdown(7).expect("termina down");
    // A refused call is logged too, with its op id and the caller.
    let refused = client.modify_port_rule(&access_rule(Operation::Create, 0));
    assert!(refused.is_err(), "port 0 was accepted");
    drop(lifeline);
    let netns = response.netns_name.clone();
    poll_until(Duration::from_secs(10), || {
        world
            .daemon
            .log()
            .contains(&format!("{netns} removed"))
            .then_some(())
    })
    .expect("the lifeline's teardown is logged");

    let log = world.daemon.log();
    let expected: [(&str, Vec<&str>); 6] = [
        (
            "ConnectNamespace",
            vec!["ConnectNamespace op ", &me, &netns],
        ),
        (
            "ModifyPortRule create",
            vec!["ModifyPortRule op ", &me, "created ACCESS tcp/9292 on eth0"],
        ),
        (
            "ModifyPortRule delete",
            vec!["ModifyPortRule op ", &me, "deleted ACCESS tcp/9292 on eth0"],
        ),
        ("TerminaVmStartup", vec!["Termina", "started (op ", &me]),
        (
            "TerminaVmShutdown",
            vec!["Termina", "stopped (shutdown op ", &me],
        ),
        (
            "lifeline teardown",
            vec!["disconnect op ", &me, &netns, "removed"],
        ),
    ];
    for (what, needles) in &expected {
        let line = line_with(&log, needles);
        assert!(has_op_id(&line), "{what}: no op id in {line:?}");
    }
    let refusal = log
        .lines()
        .find(|l| l.contains("ModifyPortRule from") && l.contains("refused"))
        .unwrap_or_else(|| panic!("the refusal is not logged:\n{log}"));
    assert!(
        refusal.contains(&me) && has_op_id(refusal),
        "refusal without caller or op id: {refusal:?}"
    );

    // Readable: no struct dumps at INFO, no line of kilobytes.
    for line in log.lines().filter(|l| l.contains(" INFO ")) {
        assert!(line.len() <= 400, "a {}-byte INFO line: {line}", line.len());
        for dump in [" { ", "Some(", "IfName(", "NetnsName("] {
            assert!(!line.contains(dump), "a Debug dump at INFO: {line}");
        }
    }
}
