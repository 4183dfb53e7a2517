//! The `patchpanel` binary against the fake service on a private bus: what
//! it sends, what it prints, its exit codes, and that `connect-ns` holds the
//! lifeline until a signal and then releases it.

use std::io::{BufRead, BufReader, Read};
use std::net::Ipv4Addr;
use std::os::fd::AsFd;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use patchpanel_client::fake::{wait_for_hangup, FakeService};
use patchpanel_proto::modify_port_rule_request::{Operation, Protocol, RuleType};
use patchpanel_proto::neighbor_reachability_event_signal::{EventType, Role};
use patchpanel_proto::network_device::GuestType;
use patchpanel_proto::network_device_changed_signal::Event;
use patchpanel_proto::traffic_counter::Source;
use patchpanel_proto::{
    ipv4_to_net_u32, names, ConnectNamespaceRequest, ConnectNamespaceResponse, GetDevicesResponse,
    IPv4Subnet, ModifyPortRuleRequest, ModifyPortRuleResponse, NeighborReachabilityEventSignal,
    NetworkDevice, NetworkDeviceChangedSignal,
};
use patchpanel_tests::PrivateBus;
use prost::Message as _;
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_patchpanel");
const WAIT: Duration = Duration::from_secs(10);
const HANGUP: Duration = Duration::from_secs(1);

fn namespace_response() -> ConnectNamespaceResponse {
    ConnectNamespaceResponse {
        ipv4_subnet: Some(IPv4Subnet::new(Ipv4Addr::new(100, 115, 92, 128), 30)),
        peer_ifname: "peer0".into(),
        peer_ipv4_address: ipv4_to_net_u32(Ipv4Addr::new(100, 115, 92, 130)),
        host_ifname: "arc_ns0".into(),
        host_ipv4_address: ipv4_to_net_u32(Ipv4Addr::new(100, 115, 92, 129)),
        netns_name: "connected_netns_0".into(),
    }
}

fn device() -> NetworkDevice {
    NetworkDevice {
        ifname: "vmtap0".into(),
        guest_ifname: "eth0".into(),
        guest_type: GuestType::TerminaVm as i32,
        ipv4_subnet: Some(IPv4Subnet::new(Ipv4Addr::new(100, 115, 92, 24), 30)),
        host_ipv4_addr: ipv4_to_net_u32(Ipv4Addr::new(100, 115, 92, 25)),
        ipv4_addr: ipv4_to_net_u32(Ipv4Addr::new(100, 115, 92, 26)),
        ..Default::default()
    }
}

fn patchpanel(bus: &PrivateBus) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.env("DBUS_SYSTEM_BUS_ADDRESS", bus.address());
    cmd
}

fn run(bus: &PrivateBus, args: &[&str]) -> Output {
    patchpanel(bus)
        .args(args)
        .output()
        .expect("runs patchpanel")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A long-running `patchpanel`, killed if the test ends first.
struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Running {
    fn start(bus: &PrivateBus, args: &[&str]) -> Running {
        let mut child = patchpanel(bus)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("runs patchpanel");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Running { child, lines }
    }

    fn line(&self) -> String {
        self.lines.recv_timeout(WAIT).expect("a line on stdout")
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("runs kill");
        assert!(status.success());
    }

    /// Exit code and the rest of stdout and stderr.
    fn finish(mut self) -> (Option<i32>, Vec<String>, String) {
        let status = self.child.wait().expect("waits for patchpanel");
        let rest = self.lines.iter().collect();
        let mut err = String::new();
        if let Some(mut stderr) = self.child.stderr.take() {
            stderr.read_to_string(&mut err).expect("reads stderr");
        }
        (status.code(), rest, err)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn devices_json_prints_the_servers_devices() {
    let bus = PrivateBus::start().unwrap();
    let _fake = FakeService::builder()
        .reply(
            names::GET_DEVICES,
            &GetDevicesResponse {
                devices: vec![device()],
            },
        )
        .start(bus.address())
        .unwrap();

    let out = run(&bus, &["devices", "--json"]);

    assert!(out.status.success(), "{}", stderr(&out));
    let value: Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(value["devices"][0]["ifname"], "vmtap0");
    assert_eq!(value["devices"][0]["guest_type"], "TERMINA_VM");
    assert_eq!(value["devices"][0]["host_ipv4_addr"], "100.115.92.25");
}

#[test]
fn devices_prints_a_table() {
    let bus = PrivateBus::start().unwrap();
    let _fake = FakeService::builder()
        .reply(
            names::GET_DEVICES,
            &GetDevicesResponse {
                devices: vec![device()],
            },
        )
        .start(bus.address())
        .unwrap();

    let out = run(&bus, &["devices"]);

    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.starts_with("IFNAME"), "{text}");
    assert!(text.contains("vmtap0"), "{text}");
}

#[test]
fn connect_ns_json_prints_one_line_holds_and_releases_on_sigterm() {
    let bus = PrivateBus::start().unwrap();
    let fake = FakeService::builder()
        .reply(names::CONNECT_NAMESPACE, &namespace_response())
        .start(bus.address())
        .unwrap();
    let running = Running::start(
        &bus,
        &[
            "connect-ns",
            "--json",
            "--outbound",
            "eth0",
            "--source",
            "Crostini_VM",
            "--route-on-vpn",
        ],
    );

    let line = running.line();

    assert_eq!(
        serde_json::from_str::<Value>(&line).unwrap(),
        json!({
            "netns_name": "connected_netns_0",
            "host_ifname": "arc_ns0",
            "host_ipv4_address": "100.115.92.129",
            "peer_ifname": "peer0",
            "peer_ipv4_address": "100.115.92.130",
            "ipv4_subnet": "100.115.92.128/30",
        })
    );
    let call = fake.wait_for_call(names::CONNECT_NAMESPACE, WAIT).unwrap();
    assert_eq!(
        ConnectNamespaceRequest::decode(call.request.as_slice()).unwrap(),
        ConnectNamespaceRequest {
            pid: -1,
            outbound_physical_device: "eth0".into(),
            route_on_vpn: true,
            traffic_source: Source::CrostiniVm as i32,
            ..Default::default()
        }
    );
    let fd = call.fd.expect("a lifeline");
    assert!(!wait_for_hangup(fd.as_fd(), Duration::from_millis(300)).unwrap());

    running.signal("TERM");

    assert!(wait_for_hangup(fd.as_fd(), HANGUP).unwrap());
    let (code, rest, err) = running.finish();
    assert_eq!(code, Some(0));
    assert!(rest.is_empty(), "stdout after the JSON line: {rest:?}");
    assert!(err.contains("releasing connected_netns_0"), "{err}");
}

#[test]
fn connect_ns_text_names_interfaces_and_releases_on_sigint() {
    let bus = PrivateBus::start().unwrap();
    let fake = FakeService::builder()
        .reply(names::CONNECT_NAMESPACE, &namespace_response())
        .start(bus.address())
        .unwrap();
    let running = Running::start(&bus, &["connect-ns", "--pid", "1"]);

    let text: Vec<String> = (0..5).map(|_| running.line()).collect();

    assert_eq!(text[0], "netns:  connected_netns_0");
    assert_eq!(text[1], "host:   arc_ns0 100.115.92.129");
    assert_eq!(text[2], "peer:   peer0 100.115.92.130");
    assert_eq!(text[3], "subnet: 100.115.92.128/30");
    let fd = fake
        .wait_for_call(names::CONNECT_NAMESPACE, WAIT)
        .and_then(|call| call.fd)
        .unwrap();

    running.signal("INT");

    assert!(wait_for_hangup(fd.as_fd(), HANGUP).unwrap());
    let (code, rest, _) = running.finish();
    assert_eq!(code, Some(0));
    assert_eq!(rest, ["releasing connected_netns_0 (SIGINT)"]);
}

#[test]
fn connect_ns_refused_prints_the_servers_reason_and_exits_one() {
    let bus = PrivateBus::start().unwrap();
    let _fake = FakeService::builder()
        .error(
            names::CONNECT_NAMESPACE,
            names::ERROR_INVALID_ARGUMENT,
            "ConnectNamespace: pid 1 is not yours",
        )
        .start(bus.address())
        .unwrap();

    let out = run(&bus, &["connect-ns", "--pid", "1"]);

    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        "patchpanel: cannot connect the namespace: ConnectNamespace: pid 1 is not yours\n"
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn counters_against_a_server_without_the_method_exits_one() {
    let bus = PrivateBus::start().unwrap();
    let _fake = FakeService::builder().start(bus.address()).unwrap();

    let out = run(&bus, &["counters", "eth0"]);

    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.starts_with("patchpanel: cannot read the traffic counters: ")
            && err.contains(names::GET_TRAFFIC_COUNTERS),
        "{err}"
    );
}

#[test]
fn port_rule_create_forwarding_sends_the_whole_rule() {
    let bus = PrivateBus::start().unwrap();
    let fake = FakeService::builder()
        .reply(
            names::MODIFY_PORT_RULE,
            &ModifyPortRuleResponse { success: true },
        )
        .start(bus.address())
        .unwrap();

    let out = run(
        &bus,
        &[
            "port-rule",
            "create",
            "forwarding",
            "--proto",
            "udp",
            "--ifname",
            "eth0",
            "--port",
            "5353",
            "--dst-ip",
            "100.115.92.6",
            "--dst-port",
            "53",
        ],
    );

    assert!(out.status.success(), "{}", stderr(&out));
    let call = fake.wait_for_call(names::MODIFY_PORT_RULE, WAIT).unwrap();
    assert_eq!(
        ModifyPortRuleRequest::decode(call.request.as_slice()).unwrap(),
        ModifyPortRuleRequest {
            op: Operation::Create as i32,
            r#type: RuleType::Forwarding as i32,
            proto: Protocol::Udp as i32,
            input_ifname: "eth0".into(),
            input_dst_ip: String::new(),
            input_dst_port: 5353,
            dst_ip: "100.115.92.6".into(),
            dst_port: 53,
        }
    );
}

#[test]
fn port_rule_failure_prints_the_servers_reason() {
    let bus = PrivateBus::start().unwrap();
    let _fake = FakeService::builder()
        .error(
            names::MODIFY_PORT_RULE,
            names::ERROR_FAILED,
            "ModifyPortRule: iptables refused the rule",
        )
        .start(bus.address())
        .unwrap();

    let out = run(
        &bus,
        &[
            "port-rule",
            "delete",
            "access",
            "--proto",
            "tcp",
            "--port",
            "80",
        ],
    );

    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        "patchpanel: cannot delete the access rule: ModifyPortRule: iptables refused the rule\n"
    );
}

#[test]
fn usage_error_exits_two_without_calling() {
    let bus = PrivateBus::start().unwrap();
    let fake = FakeService::builder()
        .reply(
            names::MODIFY_PORT_RULE,
            &ModifyPortRuleResponse { success: true },
        )
        .start(bus.address())
        .unwrap();

    let out = run(
        &bus,
        &[
            "port-rule",
            "create",
            "forwarding",
            "--proto",
            "tcp",
            "--port",
            "80",
        ],
    );

    assert_eq!(out.status.code(), Some(2));
    assert!(fake
        .wait_for_call(names::MODIFY_PORT_RULE, Duration::from_millis(200))
        .is_none());
}

#[test]
fn without_a_daemon_the_error_says_it_is_not_running_and_exits_three() {
    let bus = PrivateBus::start().unwrap();

    let out = run(&bus, &["devices"]);

    assert_eq!(out.status.code(), Some(3));
    assert!(
        stderr(&out)
            .starts_with("patchpanel: cannot list the guest devices: patchpaneld is not running"),
        "{}",
        stderr(&out)
    );
}

/// Emits with `emit` until `running` prints a line (the CLI subscribes
/// asynchronously); that line.
fn first_line(running: &Running, mut emit: impl FnMut()) -> String {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        emit();
        if let Ok(line) = running.lines.recv_timeout(Duration::from_millis(100)) {
            return line;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "nothing printed within {WAIT:?}"
        );
    }
}

#[test]
fn monitor_json_prints_every_signal_of_the_interface_decoded() {
    let bus = PrivateBus::start().unwrap();
    let fake = FakeService::builder().start(bus.address()).unwrap();
    let monitor = Running::start(&bus, &["monitor", "--json"]);
    let neighbor = NeighborReachabilityEventSignal {
        ifindex: 3,
        ip_addr: "192.0.2.1".into(),
        role: Role::Gateway as i32,
        r#type: EventType::Reachable as i32,
    };

    let first = first_line(&monitor, || {
        fake.emit_signal(names::NEIGHBOR_REACHABILITY_EVENT, neighbor.encode_to_vec())
            .unwrap()
    });
    fake.emit_device_changed(&NetworkDeviceChangedSignal {
        device: Some(device()),
        event: Event::DeviceAdded as i32,
    })
    .unwrap();
    fake.emit_signal("SomethingNew", vec![1, 2, 0xff]).unwrap();
    // Skip the neighbour events the first loop may have queued.
    let mut later = Vec::new();
    while later.len() < 2 {
        let value: Value = serde_json::from_str(&monitor.line()).unwrap();
        if value["signal"] != "NeighborReachabilityEvent" {
            later.push(value);
        }
    }
    monitor.signal("TERM");
    let (code, _, err) = monitor.finish();

    assert_eq!(
        serde_json::from_str::<Value>(&first).unwrap(),
        json!({"signal": "NeighborReachabilityEvent", "ifindex": 3, "ip_addr": "192.0.2.1",
               "role": "GATEWAY", "type": "REACHABLE"})
    );
    assert_eq!(later[0]["signal"], "NetworkDeviceChanged");
    assert_eq!(later[0]["event"], "DEVICE_ADDED");
    assert_eq!(later[0]["device"]["ifname"], "vmtap0");
    assert_eq!(
        later[1],
        json!({"signal": "SomethingNew", "payload_hex": "0102ff"})
    );
    assert_eq!(code, Some(0), "{err}");
}

#[test]
fn monitor_text_names_the_signal_then_the_payload() {
    let bus = PrivateBus::start().unwrap();
    let fake = FakeService::builder().start(bus.address()).unwrap();
    let monitor = Running::start(&bus, &["monitor", "--count", "1"]);
    let signal = NetworkDeviceChangedSignal {
        device: Some(device()),
        event: Event::DeviceRemoved as i32,
    };

    let line = first_line(&monitor, || fake.emit_device_changed(&signal).unwrap());
    let (code, _, err) = monitor.finish();

    assert_eq!(code, Some(0), "{err}");
    assert!(
        line.starts_with("NetworkDeviceChanged DEVICE_REMOVED vmtap0 guest=eth0 type=TERMINA_VM"),
        "{line}"
    );
}

#[test]
fn watch_json_prints_each_device_change() {
    let bus = PrivateBus::start().unwrap();
    let fake = FakeService::builder().start(bus.address()).unwrap();
    let running = Running::start(&bus, &["watch", "--json", "--count", "1"]);
    let signal = NetworkDeviceChangedSignal {
        device: Some(device()),
        event: Event::DeviceAdded as i32,
    };

    // The watcher subscribes asynchronously: emit until it has seen one.
    let deadline = std::time::Instant::now() + WAIT;
    let line = loop {
        fake.emit_device_changed(&signal).unwrap();
        if let Ok(line) = running.lines.recv_timeout(Duration::from_millis(100)) {
            break line;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "watch printed no signal within {WAIT:?}"
        );
    };

    let value: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(value["event"], "DEVICE_ADDED");
    assert_eq!(value["device"]["ifname"], "vmtap0");
    let (code, _, err) = running.finish();
    assert_eq!(code, Some(0), "{err}");
}

#[test]
fn watch_exits_zero_on_sigterm() {
    let bus = PrivateBus::start().unwrap();
    let _fake = FakeService::builder().start(bus.address()).unwrap();
    let running = Running::start(&bus, &["watch"]);
    std::thread::sleep(Duration::from_millis(300));

    running.signal("TERM");

    let (code, _, err) = running.finish();
    assert_eq!(code, Some(0), "{err}");
}
