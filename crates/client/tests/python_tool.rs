//! `tests/tools/connect_ns.py`, the stock-tool (dbus-python) ConnectNamespace
//! client: its hand-written protobuf encoder and decoder agree with prost,
//! and against the fake service it sends a lifeline, prints the response and
//! hangs up when it lets go.

use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use patchpanel_client::fake::{wait_for_hangup, FakeService};
use patchpanel_proto::traffic_counter::Source;
use patchpanel_proto::{
    ipv4_to_net_u32, names, ConnectNamespaceRequest, ConnectNamespaceResponse, IPv4Subnet,
};
use patchpanel_tests::PrivateBus;
use prost::Message as _;
use serde_json::{json, Value};

const PYTHON: &str = "/usr/bin/python3";
const WAIT: Duration = Duration::from_secs(10);
const HANGUP: Duration = Duration::from_secs(1);

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/tools/connect_ns.py")
}

fn run_script(args: &[&str]) -> std::process::Output {
    Command::new(PYTHON)
        .arg(script())
        .args(args)
        .output()
        .expect("runs /usr/bin/python3")
}

fn encoded_by_script(args: &[&str]) -> ConnectNamespaceRequest {
    let mut all = vec!["--encode-only"];
    all.extend_from_slice(args);
    let out = run_script(&all);
    assert!(out.status.success(), "{out:?}");
    let hex = String::from_utf8(out.stdout).expect("hex is ASCII");
    let bytes: Vec<u8> = (0..hex.trim().len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex.trim()[i..i + 2], 16).expect("hex digits"))
        .collect();
    ConnectNamespaceRequest::decode(bytes.as_slice())
        .expect("prost decodes what the script encoded")
}

fn decoded_by_script(response: &ConnectNamespaceResponse) -> Value {
    let hex: String = response
        .encode_to_vec()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let out = run_script(&["--decode-only", &hex]);
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).expect("the script prints JSON")
}

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

fn namespace_json() -> Value {
    json!({
        "netns_name": "connected_netns_0",
        "host_ifname": "arc_ns0",
        "host_ipv4_address": "100.115.92.129",
        "peer_ifname": "peer0",
        "peer_ipv4_address": "100.115.92.130",
        "ipv4_subnet": "100.115.92.128/30",
    })
}

/// The script, started against `bus`, killed if the test ends first.
struct Script(Child);

impl Script {
    fn start(bus: &PrivateBus, args: &[&str]) -> Script {
        let child = Command::new(PYTHON)
            .arg(script())
            .args(args)
            .env("DBUS_SYSTEM_BUS_ADDRESS", bus.address())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("runs /usr/bin/python3");
        Script(child)
    }

    /// The first stdout line, or None if none came within [`WAIT`].
    fn first_line(&mut self) -> Option<String> {
        let stdout = self.0.stdout.take()?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        rx.recv_timeout(WAIT).ok().filter(|l| !l.is_empty())
    }

    fn stderr(&mut self) -> String {
        let mut text = String::new();
        if let Some(mut err) = self.0.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut err, &mut text);
        }
        text
    }
}

impl Drop for Script {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn script_encodes_an_all_default_request_as_pid_minus_one() {
    let request = encoded_by_script(&[]);

    assert_eq!(
        request,
        ConnectNamespaceRequest {
            pid: -1,
            ..Default::default()
        }
    );
}

#[test]
fn script_encodes_every_field_as_prost_decodes_it() {
    let request = encoded_by_script(&[
        "--pid",
        "1234",
        "--outbound",
        "eth0",
        "--allow-user-traffic",
        "--route-on-vpn",
        "--source",
        "Crostini_VM",
        "--static-ipv6",
    ]);

    assert_eq!(
        request,
        ConnectNamespaceRequest {
            pid: 1234,
            outbound_physical_device: "eth0".into(),
            allow_user_traffic: true,
            route_on_vpn: true,
            traffic_source: Source::CrostiniVm as i32,
            static_ipv6: true,
        }
    );
}

#[test]
fn script_maps_source_names_like_the_cli() {
    assert_eq!(
        encoded_by_script(&["--source", "tether_downstream"]).traffic_source,
        Source::Tethering as i32
    );
    assert_eq!(
        encoded_by_script(&["--source", "ARC_VPN"]).traffic_source,
        Source::Vpn as i32
    );
    assert_eq!(
        encoded_by_script(&["--source", "13"]).traffic_source,
        Source::WifiLohs as i32
    );
}

#[test]
fn script_decodes_a_response_to_the_cli_json_keys() {
    assert_eq!(decoded_by_script(&namespace_response()), namespace_json());
}

#[test]
fn script_reads_the_deprecated_subnet_field_when_addr_is_missing() {
    let mut response = namespace_response();
    response.ipv4_subnet = Some(IPv4Subnet {
        base_addr: ipv4_to_net_u32(Ipv4Addr::new(100, 115, 92, 128)),
        prefix_len: 30,
        addr: Vec::new(),
    });

    assert_eq!(
        decoded_by_script(&response)["ipv4_subnet"],
        "100.115.92.128/30"
    );
}

#[test]
fn script_rejects_a_truncated_response() {
    let out = run_script(&["--decode-only", "0a05"]);

    assert_eq!(out.status.code(), Some(1), "{out:?}");
}

#[test]
fn script_prints_the_response_and_hangs_up_when_stdin_closes() {
    let bus = PrivateBus::start().unwrap();
    let fake = FakeService::builder()
        .reply(names::CONNECT_NAMESPACE, &namespace_response())
        .start(bus.address())
        .unwrap();
    let mut script = Script::start(&bus, &["--source", "system"]);

    let line = script.first_line().expect("a JSON line");

    assert_eq!(
        serde_json::from_str::<Value>(&line).unwrap(),
        namespace_json()
    );
    let call = fake.wait_for_call(names::CONNECT_NAMESPACE, WAIT).unwrap();
    assert_eq!(
        ConnectNamespaceRequest::decode(call.request.as_slice()).unwrap(),
        ConnectNamespaceRequest {
            pid: -1,
            traffic_source: Source::System as i32,
            ..Default::default()
        }
    );
    let fd = call.fd.expect("a lifeline");
    assert!(!wait_for_hangup(fd.as_fd(), Duration::from_millis(200)).unwrap());
    drop(script.0.stdin.take());
    assert!(wait_for_hangup(fd.as_fd(), HANGUP).unwrap());
    assert!(script.0.wait().unwrap().success());
}

#[test]
fn script_releases_on_sigterm_and_exits_zero() {
    let bus = PrivateBus::start().unwrap();
    let fake = FakeService::builder()
        .reply(names::CONNECT_NAMESPACE, &namespace_response())
        .start(bus.address())
        .unwrap();
    let mut script = Script::start(&bus, &[]);
    script.first_line().expect("a JSON line");
    let fd = fake
        .wait_for_call(names::CONNECT_NAMESPACE, WAIT)
        .and_then(|call| call.fd)
        .unwrap();

    let killed = Command::new("kill")
        .args(["-TERM", &script.0.id().to_string()])
        .status()
        .unwrap();

    assert!(killed.success());
    assert!(wait_for_hangup(fd.as_fd(), HANGUP).unwrap());
    assert!(script.0.wait().unwrap().success());
    assert!(script.stderr().contains("released"));
}

#[test]
fn script_reports_the_servers_refusal_and_exits_one() {
    let bus = PrivateBus::start().unwrap();
    let _fake = FakeService::builder()
        .error(
            names::CONNECT_NAMESPACE,
            names::ERROR_INVALID_ARGUMENT,
            "ConnectNamespace: bad outbound interface",
        )
        .start(bus.address())
        .unwrap();
    let mut script = Script::start(&bus, &["--outbound", "no such if"]);

    let status = script.0.wait().unwrap();

    assert_eq!(status.code(), Some(1));
    let stderr = script.stderr();
    assert!(
        stderr.contains(names::ERROR_INVALID_ARGUMENT) && stderr.contains("bad outbound interface"),
        "{stderr}"
    );
}
