//! ModifyPortRule end to end: real connections from the upstream namespace
//! to a guest (FORWARDING), to a host listener behind a default-drop INPUT
//! (ACCESS), and to a loopback port from two users (LOCKDOWN); invalid
//! requests change nothing.

use std::time::Duration;

use patchpanel_client::{Client, Error as ClientError};
use patchpanel_proto::modify_port_rule_request::{Operation, Protocol, RuleType};
use patchpanel_proto::{ConnectNamespaceRequest, ModifyPortRuleRequest};
use patchpanel_tests::world::{Internet, World, UPLINK_ADDR};
use patchpanel_tests::{traffic, Daemon, DaemonOptions, Netns, PrivateBus};

fn client(bus: &PrivateBus) -> Client {
    Client::connect_to(bus.address()).expect("client")
}

fn rule(op: Operation, ty: RuleType, port: u32) -> ModifyPortRuleRequest {
    ModifyPortRuleRequest {
        op: op as i32,
        r#type: ty as i32,
        proto: Protocol::Tcp as i32,
        input_dst_port: port,
        ..Default::default()
    }
}

fn forward(op: Operation, port: u32, dst: &str, dst_port: u32) -> ModifyPortRuleRequest {
    ModifyPortRuleRequest {
        input_ifname: "eth0".into(),
        dst_ip: dst.into(),
        dst_port,
        ..rule(op, RuleType::Forwarding, port)
    }
}

fn server(netns: &str, addr: &str, port: u16, reply: &str) -> std::process::Child {
    traffic::reply_server(netns, addr, port, reply).expect("server")
}

/// A daemon, a client, and one connected namespace (the first of the
/// pool: 100.115.92.130) held until the lifeline drops.
fn world_with_a_guest() -> (
    World,
    Client,
    patchpanel_proto::ConnectNamespaceResponse,
    patchpanel_client::Lifeline,
) {
    let world = World::start().expect("world");
    let c = client(&world.bus);
    let (ns, lifeline) = c
        .connect_namespace(&ConnectNamespaceRequest {
            pid: -1,
            ..Default::default()
        })
        .expect("connect");
    (world, c, ns, lifeline)
}

fn fetch(netns: &str, uid: u32, addr: &str, port: u16) -> String {
    traffic::fetch(netns, uid, addr, port).expect("client")
}

#[test]
fn a_forwarded_port_reaches_a_server_in_a_guest_until_deleted() {
    let (world, c, ns, _lifeline) = world_with_a_guest();
    let guest_ip = "100.115.92.130";
    let srv = server(&ns.netns_name, guest_ip, 8000, "guest");
    let upstream = world.internet.upstream.name().to_string();
    assert_eq!(fetch(&upstream, 0, UPLINK_ADDR, 8080), "refused");

    c.modify_port_rule(&forward(Operation::Create, 8080, guest_ip, 8000))
        .expect("create");
    assert_eq!(fetch(&upstream, 0, UPLINK_ADDR, 8080), "guest");

    c.modify_port_rule(&forward(Operation::Delete, 8080, guest_ip, 8000))
        .expect("delete");
    assert_eq!(fetch(&upstream, 0, UPLINK_ADDR, 8080), "refused");
    traffic::stop(srv);
}

/// One datagram to `addr:port` from `netns`: the answer, or `timeout`.
fn udp_ask(netns: &str, addr: &str, port: u16) -> String {
    let out = traffic::run(
        netns,
        0,
        &format!(
            "import socket\n\
             s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(2)\n\
             s.sendto(b'ping', ('{addr}',{port}))\n\
             try: print(s.recvfrom(64)[0].decode())\n\
             except Exception: print('timeout')\n"
        ),
    )
    .expect("client");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// UDP too (with the iptables backend, `-p udp --dport` rules make
/// iptables-nft-restore resolve the port with getaddrinfo(); the writer's
/// seccomp filter must let it).
#[test]
fn a_forwarded_udp_port_reaches_a_server_in_a_guest_until_deleted() {
    let (world, c, ns, _lifeline) = world_with_a_guest();
    let guest_ip = "100.115.92.130";
    // Killed on drop, also when an assertion fails.
    struct Server(std::process::Child);
    impl Drop for Server {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _srv = Server(
        traffic::listener(
            &ns.netns_name,
            &format!(
                "import socket\n\
             s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(('{guest_ip}',5300))\n\
             print('listening', flush=True)\n\
             while True:\n    d,a=s.recvfrom(64); s.sendto(b'guest', a)\n"
            ),
        )
        .expect("udp server"),
    );
    let upstream = world.internet.upstream.name().to_string();
    assert_eq!(udp_ask(&upstream, UPLINK_ADDR, 5300), "timeout");
    let udp = |op| ModifyPortRuleRequest {
        proto: Protocol::Udp as i32,
        ..forward(op, 5300, guest_ip, 5300)
    };
    c.modify_port_rule(&udp(Operation::Create)).expect("create");
    assert_eq!(udp_ask(&upstream, UPLINK_ADDR, 5300), "guest");
    c.modify_port_rule(&udp(Operation::Delete)).expect("delete");
    // A new source port: the old flow's conntrack entry would still be
    // NATed.
    assert_eq!(udp_ask(&upstream, UPLINK_ADDR, 5300), "timeout");
}

#[test]
fn access_opens_a_host_port_under_a_default_drop_input_policy() {
    let netns = Netns::new().expect("netns");
    netns
        .exec_ok(&["iptables", "-P", "INPUT", "DROP"])
        .expect("policy");
    netns
        .exec_ok(&["iptables", "-A", "INPUT", "-i", "lo", "-j", "ACCEPT"])
        .expect("lo");
    let internet = Internet::attach(&netns).expect("internet");
    let bus = PrivateBus::start().expect("bus");
    let mut daemon = Daemon::start(&netns, &bus).expect("daemon");
    daemon.wait_ready().expect("ready");
    let srv = server(netns.name(), "0.0.0.0", 9090, "host");
    let upstream = internet.upstream.name().to_string();
    assert_eq!(fetch(&upstream, 0, UPLINK_ADDR, 9090), "timeout");

    let mut access = rule(Operation::Create, RuleType::Access, 9090);
    access.input_ifname = "eth0".into();
    client(&bus).modify_port_rule(&access).expect("create");
    assert_eq!(fetch(&upstream, 0, UPLINK_ADDR, 9090), "host");
    let v6 = netns.firewall_save(true, Some("filter")).expect("save");
    assert!(
        v6.contains("-A ingress_port_firewall -i eth0 -p tcp -m tcp --dport 9090 -j ACCEPT"),
        "ACCESS covers IPv6 too:\n{v6}"
    );

    access.op = Operation::Delete as i32;
    client(&bus).modify_port_rule(&access).expect("delete");
    assert_eq!(fetch(&upstream, 0, UPLINK_ADDR, 9090), "timeout");
    let policy = netns.firewall_save(false, Some("filter")).expect("save");
    assert!(policy.contains(":INPUT DROP"), "{policy}");
    traffic::stop(srv);
    drop(daemon);
}

#[test]
fn lockdown_lets_only_the_allowed_user_reach_a_loopback_port() {
    let world = World::start_with(DaemonOptions {
        extra_config: "lockdown_user = \"root\"\n".into(),
        ..Default::default()
    })
    .expect("world");
    let ns = world.netns.name().to_string();
    let srv = server(&ns, "127.0.0.1", 7070, "secret");
    assert_eq!(fetch(&ns, 65534, "127.0.0.1", 7070), "secret");
    let c = client(&world.bus);
    c.modify_port_rule(&rule(Operation::Create, RuleType::Lockdown, 7070))
        .expect("create");
    assert_eq!(fetch(&ns, 65534, "127.0.0.1", 7070), "refused");
    assert_eq!(fetch(&ns, 0, "127.0.0.1", 7070), "secret");
    c.modify_port_rule(&rule(Operation::Delete, RuleType::Lockdown, 7070))
        .expect("delete");
    assert_eq!(fetch(&ns, 65534, "127.0.0.1", 7070), "secret");
    traffic::stop(srv);
}

#[test]
fn invalid_port_rules_are_refused_and_change_nothing() {
    let world = World::start().expect("world");
    let c = client(&world.bus);
    let save = || {
        let v4 = world.netns.firewall_save(false, None).expect("save");
        let v6 = world.netns.firewall_save(true, None).expect("save");
        format!("{v4}{v6}")
            .lines()
            .filter(|l| !l.starts_with('#'))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let before = save();
    let guest = "100.115.92.130";
    let mut cases: Vec<(ModifyPortRuleRequest, &str)> = vec![
        (forward(Operation::Create, 0, guest, 80), "0 is not a port"),
        (forward(Operation::Create, 70000, guest, 80), "above 65535"),
        (forward(Operation::Create, 8080, guest, 0), "dst_port 0"),
        (
            forward(Operation::Create, 8080, "8.8.8.8", 80),
            "not a guest address",
        ),
        (
            forward(Operation::Create, 8080, "100.115.92", 80),
            "not an IPv4 address",
        ),
        (forward(Operation::Delete, 8080, guest, 80), "no such rule"),
    ];
    for bad_if in [
        "eth0 -j ACCEPT",
        "eth0'",
        "eth0\"",
        "eth0\n-A INPUT -j ACCEPT",
        " eth0",
    ] {
        let mut r = forward(Operation::Create, 8080, guest, 80);
        r.input_ifname = bad_if.into();
        cases.push((r, "input_ifname"));
    }
    let mut bad_proto = forward(Operation::Create, 8080, guest, 80);
    bad_proto.proto = 3;
    cases.push((bad_proto, "proto"));
    let mut bad_op = forward(Operation::Create, 8080, guest, 80);
    bad_op.op = 0;
    cases.push((bad_op, "op"));
    let mut injected_ip = forward(Operation::Create, 8080, guest, 80);
    injected_ip.input_dst_ip = "1.2.3.4 -j ACCEPT".into();
    cases.push((injected_ip, "input_dst_ip"));
    for (req, needle) in &cases {
        match c.modify_port_rule(req) {
            Err(ClientError::InvalidArgument(m)) => assert!(m.contains(needle), "{needle:?}: {m}"),
            other => panic!("{req:?}: expected InvalidArgument {needle:?}, got {other:?}"),
        }
    }
    assert_eq!(save(), before, "a refused request changed the firewall");

    // A duplicate create is refused and leaves exactly one rule.
    c.modify_port_rule(&forward(Operation::Create, 8080, guest, 80))
        .expect("create");
    let once = save();
    match c.modify_port_rule(&forward(Operation::Create, 8080, guest, 80)) {
        Err(ClientError::InvalidArgument(m)) => assert!(m.contains("already exists"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(save(), once);
    c.modify_port_rule(&forward(Operation::Delete, 8080, guest, 80))
        .expect("delete");
    assert_eq!(save(), before);
}

#[test]
fn port_rules_survive_a_manager_crash() {
    let netns = Netns::new().expect("netns");
    let _internet = Internet::attach(&netns).expect("internet");
    let bus = PrivateBus::start().expect("bus");
    let mut first = Daemon::start(&netns, &bus).expect("daemon");
    first.wait_ready().expect("ready");
    let guest = "100.115.92.130";
    client(&bus)
        .modify_port_rule(&forward(Operation::Create, 8443, guest, 443))
        .expect("create");
    first.signal(libc::SIGKILL).expect("kill");
    first.wait_exit(Duration::from_secs(5)).expect("wait");
    std::thread::sleep(Duration::from_millis(300));
    let mut second = Daemon::start_with(
        &netns,
        &bus,
        DaemonOptions {
            successor_of: Some((
                first.state_dir().to_path_buf(),
                first.netns_prefix().to_string(),
            )),
            ..Default::default()
        },
    )
    .expect("successor");
    second.wait_ready().expect("ready");
    let nat = netns.firewall_save(false, Some("nat")).expect("save");
    assert_eq!(
        nat.matches("--to-destination 100.115.92.130:443").count(),
        1,
        "{nat}"
    );
    // Still known: deleting it works, a second create is a duplicate.
    match client(&bus).modify_port_rule(&forward(Operation::Create, 8443, guest, 443)) {
        Err(ClientError::InvalidArgument(m)) => assert!(m.contains("already exists"), "{m}"),
        other => panic!("{other:?}"),
    }
    client(&bus)
        .modify_port_rule(&forward(Operation::Delete, 8443, guest, 443))
        .expect("delete");
    drop(second);
    drop(first);
}
