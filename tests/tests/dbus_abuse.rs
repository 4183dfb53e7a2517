//! Abuse of the D-Bus API (issue 14): every method exported on
//! `org.chromium.PatchPanel` gets malformed protobuf, wrong argument types,
//! missing, extra and dead file descriptors, 10 MiB payloads, invalid enum
//! values, out-of-range ports, bad interface names, injection strings and
//! unknown pids; one client floods the daemon with 10,000 pipelined calls,
//! 10,000 at once and then without pause for two seconds.
//!
//! Each bad call must get the documented answer (docs/dbus-api.md: a D-Bus
//! error, `InvalidArgument` for the caller's mistakes; a few calls document
//! success, e.g. a shutdown of a guest that does not run), the daemon and
//! its helpers must stay up (same pids), another client must still be
//! served, and the kernel state of the daemon's namespace (links, addresses,
//! routes, rules, the nftables ruleset and, with the iptables backend, the
//! iptables rules; the daemon's named namespaces) must be unchanged
//! afterwards.

use std::collections::BTreeSet;
use std::fs::File;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dbus::arg::Variant;
use dbus::Message;
use patchpanel_client::Lifeline;
use patchpanel_proto::{
    names, ArcShutdownRequest, ArcStartupRequest, ArcVmShutdownRequest, ArcVmStartupRequest,
    ConnectNamespaceRequest, GetDevicesResponse, ModifyPortRuleRequest, PluginVmShutdownRequest,
    PluginVmStartupRequest, TerminaVmShutdownRequest, TerminaVmStartupRequest,
    TrafficCountersRequest, TrafficCountersResponse,
};
use patchpanel_tests::dbus_client::{without_interface, ERROR_INVALID_ARGUMENT};
use patchpanel_tests::snapshot::{assert_unchanged, KernelState};
use patchpanel_tests::world::World;
use patchpanel_tests::{poll_until, BusClient, MethodError, ProcessTree};
use prost::Message as _;

const UNKNOWN_METHOD: &str = "org.freedesktop.DBus.Error.UnknownMethod";
const UNKNOWN_OBJECT: &str = "org.freedesktop.DBus.Error.UnknownObject";

/// Every method the daemon exports (`IMPLEMENTED` in
/// manager/src/dbus_service.rs); checked against its introspection data.
const EXPORTED: [&str; 27] = [
    names::GET_DEVICES,
    names::CONNECT_NAMESPACE,
    names::MODIFY_PORT_RULE,
    names::GET_TRAFFIC_COUNTERS,
    names::ARC_STARTUP,
    names::ARC_SHUTDOWN,
    names::ARC_VM_STARTUP,
    names::ARC_VM_SHUTDOWN,
    names::TERMINA_VM_STARTUP,
    names::TERMINA_VM_SHUTDOWN,
    names::PLUGIN_VM_STARTUP,
    names::PLUGIN_VM_SHUTDOWN,
    names::PARALLELS_VM_STARTUP,
    names::PARALLELS_VM_SHUTDOWN,
    names::TAG_SOCKET,
    names::CONFIGURE_NETWORK,
    names::SET_VPN_LOCKDOWN,
    names::BRUSCHETTA_VM_STARTUP,
    names::BRUSCHETTA_VM_SHUTDOWN,
    names::BOREALIS_VM_STARTUP,
    names::BOREALIS_VM_SHUTDOWN,
    names::SET_DNS_REDIRECTION_RULE,
    names::NOTIFY_ANDROID_INTERACTIVE_STATE,
    names::NOTIFY_ANDROID_WIFI_MULTICAST_LOCK_CHANGE,
    names::NOTIFY_SOCKET_CONNECTION_EVENT,
    names::NOTIFY_ARC_VPN_SOCKET_CONNECTION_EVENT,
    names::SET_FEATURE_FLAG,
];

/// 10 MiB.
const HUGE: usize = 10 << 20;

/// How long the daemon may take to undo something a closed lifeline
/// guarded.
const TEARDOWN_TIMEOUT: Duration = Duration::from_secs(5);

fn takes_fd(method: &str) -> bool {
    names::method(method)
        .unwrap_or_else(|| panic!("{method} is not a method of the interface"))
        .takes_fd
}

fn request_type(method: &str) -> &'static str {
    names::method(method)
        .unwrap_or_else(|| panic!("{method} is not a method of the interface"))
        .request
}

/// A world whose kernel state and process tree are remembered at the start
/// and checked at the end.
struct Bed {
    world: World,
    before: KernelState,
    tree: ProcessTree,
}

impl Bed {
    fn start() -> Bed {
        let world = World::start().expect("world");
        let before = KernelState::take_settled(
            &world.netns,
            world.daemon.netns_prefix(),
            Duration::from_secs(10),
        )
        .expect("state");
        let tree = world
            .daemon
            .wait_for_tree(Duration::from_secs(10), |_| true)
            .expect("tree");
        Bed {
            world,
            before,
            tree,
        }
    }

    fn client(&self) -> BusClient {
        self.world.daemon.client().expect("client")
    }

    fn state(&self) -> KernelState {
        KernelState::take(&self.world.netns, self.world.daemon.netns_prefix()).expect("state")
    }

    /// Fails unless the kernel state is the one at the start right now.
    fn assert_unchanged(&self, what: &str) {
        assert_unchanged(&self.before, &self.state(), what);
    }

    /// Waits up to [`TEARDOWN_TIMEOUT`] for the kernel state to be the one
    /// at the start again, and for `GetDevices` to list nothing.
    fn assert_back_to_start(&self, what: &str) {
        let client = self.client();
        let mut last = None;
        let settled = poll_until(TEARDOWN_TIMEOUT, || {
            let state = self.state();
            let settled = state.diff(&self.before).is_none() && no_devices(&client);
            last = Some(state);
            settled.then_some(())
        });
        if settled.is_none() {
            assert!(
                no_devices(&client),
                "{what}: GetDevices still lists devices"
            );
            assert_unchanged(&self.before, &last.expect("a snapshot"), what);
        }
    }

    /// The closing checks: nothing is left (after a moment for lifelines
    /// that closed), a new client is served, and the daemon and helpers
    /// are the ones of the start (nothing crashed and was respawned).
    fn finish(self, what: &str) {
        self.assert_back_to_start(what);
        let tree = self.world.daemon.tree().expect("tree");
        assert_eq!(
            tree, self.tree,
            "{what}: the process tree changed (a process died and was respawned?)"
        );
    }
}

fn no_devices(client: &BusClient) -> bool {
    let bytes = client.get_devices().expect("GetDevices");
    GetDevicesResponse::decode(bytes.as_slice())
        .expect("GetDevicesResponse")
        .devices
        .is_empty()
}

/// A call to `method` whose body is `request` as `ay`, and, for the methods
/// that take one, a fresh lifeline (the caller's end is returned: the call
/// is not refused for want of a live lifeline).
fn call_with(method: &str, request: Vec<u8>) -> (Message, Option<Lifeline>) {
    // A slice, not a Vec: dbus-rs appends a Vec<u8> byte by byte.
    let msg = BusClient::method_call(method)
        .expect("method call")
        .append1(request.as_slice());
    if takes_fd(method) {
        let (lifeline, write_end) = Lifeline::pair().expect("pipe");
        (msg.append1(write_end), Some(lifeline))
    } else {
        (msg, None)
    }
}

/// Calls `method` with `request` (and a live lifeline if it takes one).
fn call(client: &BusClient, method: &str, request: Vec<u8>) -> Result<Vec<u8>, MethodError> {
    let (msg, lifeline) = call_with(method, request);
    let reply = client.call_message(msg);
    drop(lifeline);
    let reply = reply?;
    let bytes: Vec<u8> = reply
        .read1::<&[u8]>()
        .map(<[u8]>::to_vec)
        .map_err(|e| MethodError {
            name: "(test) the reply is not one ay".into(),
            message: e.to_string(),
        })?;
    Ok(bytes)
}

/// What a call must get.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// `InvalidArgument` whose message contains the text.
    Invalid(&'static str),
    /// A successful reply holding zero bytes (an all-default response).
    Empty,
    /// A successful reply (its content is checked by the caller).
    Success,
}

#[track_caller]
fn check(what: &str, result: &Result<Vec<u8>, MethodError>, expect: Expect) {
    match (expect, result) {
        (Expect::Invalid(needle), Err(e)) if e.name == ERROR_INVALID_ARGUMENT => {
            assert!(e.message.contains(needle), "{what}: {needle:?} not in {e}")
        }
        (Expect::Empty, Ok(bytes)) => assert!(bytes.is_empty(), "{what}: {bytes:?}"),
        (Expect::Success, Ok(_)) => {}
        _ => panic!("{what}: expected {expect:?}, got {}", describe(result)),
    }
}

fn describe(result: &Result<Vec<u8>, MethodError>) -> String {
    match result {
        Ok(bytes) if bytes.len() > 64 => format!("a reply of {} bytes", bytes.len()),
        Ok(bytes) => format!("the reply {bytes:?}"),
        Err(e) => format!("the error {e}"),
    }
}

/// The method names of our interface in introspection XML.
fn introspected_methods(xml: &str) -> BTreeSet<String> {
    let start = xml
        .find(&format!("<interface name=\"{}\">", names::INTERFACE))
        .expect("our interface is introspected");
    let end = start + xml[start..].find("</interface>").expect("interface end");
    xml[start..end]
        .split("<method name=\"")
        .skip(1)
        .filter_map(|rest| rest.split('"').next())
        .map(str::to_string)
        .collect()
}

#[test]
fn every_method_refuses_malformed_protobuf() {
    let bed = Bed::start();
    let c = bed.client();
    let exported: BTreeSet<String> = EXPORTED.iter().map(|m| m.to_string()).collect();
    assert_eq!(
        introspected_methods(&c.introspect().expect("Introspect")),
        exported,
        "the suite must cover exactly the exported methods"
    );

    // Bytes that are no protobuf message at all, whatever its fields.
    let garbage: &[(&str, &[u8])] = &[
        ("a truncated varint", &[0x08, 0x80]),
        ("field number 0", &[0x00]),
        ("wire type 7", &[0x0f]),
        ("wire type 6", &[0x0e]),
        ("a length past the end", &[0x0a, 0x05, 0x01]),
        (
            "a length of 2^63",
            &[0x0a, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f],
        ),
        ("an unterminated group", &[0x0b]),
        ("a group end without a start", &[0x0c]),
        (
            "an 11-byte varint",
            &[
                0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
            ],
        ),
        (
            "a tag past 2^32",
            &[0xff, 0xff, 0xff, 0xff, 0xff, 0x0f, 0x00],
        ),
    ];
    for method in EXPORTED {
        for (what, bytes) in garbage {
            let result = call(&c, method, bytes.to_vec());
            check(
                &format!("{method} with {what}"),
                &result,
                Expect::Invalid(request_type(method)),
            );
        }
    }

    // Well-formed protobuf, but field 1 or a string has the wrong wire type
    // or is not UTF-8. (GetDevicesRequest has no fields: anything there
    // is an unknown field and ignored.)
    let field_1_as_bytes = vec![0x0a, 0x01, 0x31];
    let field_1_as_varint = vec![0x08, 0x01];
    let field_1_as_fixed32 = vec![0x0d, 1, 2, 3, 4];
    let wrong_types: Vec<(&str, &str, Vec<u8>)> = EXPORTED
        .iter()
        .filter(|m| **m != names::GET_DEVICES)
        .flat_map(|m| {
            let field_1_wrong = if *m == names::GET_TRAFFIC_COUNTERS {
                field_1_as_varint.clone()
            } else {
                field_1_as_bytes.clone()
            };
            [
                (*m, "field 1 with the wrong wire type", field_1_wrong),
                (*m, "field 1 as fixed32", field_1_as_fixed32.clone()),
            ]
        })
        .chain([
            (
                names::CONNECT_NAMESPACE,
                "a device name that is not UTF-8",
                vec![0x12, 0x02, 0xc3, 0x28],
            ),
            (
                names::MODIFY_PORT_RULE,
                "an interface name that is not UTF-8",
                vec![0x22, 0x01, 0xff],
            ),
            (
                names::MODIFY_PORT_RULE,
                "an address that is not UTF-8",
                vec![0x3a, 0x02, 0xed, 0xa0],
            ),
            (
                names::GET_TRAFFIC_COUNTERS,
                "a device name that is not UTF-8",
                vec![0x0a, 0x02, 0xff, 0xfe],
            ),
        ])
        .collect();
    for (method, what, bytes) in wrong_types {
        let result = call(&c, method, bytes);
        check(
            &format!("{method} with {what}"),
            &result,
            Expect::Invalid(request_type(method)),
        );
    }
    // GetDevices ignores unknown fields, as proto3 requires.
    let result = call(&c, names::GET_DEVICES, field_1_as_bytes);
    check("GetDevices with an unknown field", &result, Expect::Success);
    bed.finish("malformed protobuf");
}

/// Bodies with the wrong argument types (never `ay`, `ay h`).
fn wrong_bodies(member: &str) -> Vec<(&'static str, Message)> {
    let m = || BusClient::method_call(member).expect("method call");
    let null = || OwnedFd::from(File::open("/dev/null").expect("/dev/null"));
    vec![
        ("()", m()),
        ("(s)", m().append1("hello")),
        ("(u)", m().append1(1u32)),
        ("(i)", m().append1(-1i32)),
        ("(ai)", m().append1(vec![1i32, 2])),
        ("(as)", m().append1(vec!["eth0".to_string()])),
        ("(ayay)", m().append2(vec![1u8], vec![2u8])),
        ("(ays)", m().append2(vec![8u8, 1], "x")),
        ("((ay))", m().append1((vec![8u8, 1],))),
        ("(v)", m().append1(Variant(vec![8u8, 1]))),
        ("(aay)", m().append1(vec![vec![8u8, 1]])),
        ("(h)", m().append1(null())),
        ("(hay)", m().append2(null(), vec![8u8, 1])),
        ("(ayu)", m().append2(vec![8u8, 1], 3u32)),
        ("(ayhh)", m().append3(vec![8u8, 1], null(), null())),
    ]
}

#[test]
fn every_method_refuses_wrong_argument_types_and_missing_or_extra_fds() {
    let bed = Bed::start();
    let c = bed.client();
    for method in EXPORTED {
        let expected = if takes_fd(method) {
            "takes (ayh)"
        } else {
            "takes (ay)"
        };
        let mut bodies = wrong_bodies(method);
        // The other kind's right signature: an fd too many, or missing.
        let ay = BusClient::method_call(method)
            .expect("method call")
            .append1(vec![8u8, 1]);
        if takes_fd(method) {
            bodies.push(("(ay) without the lifeline", ay));
        } else {
            let (_keep, write_end) = Lifeline::pair().expect("pipe");
            bodies.push(("(ayh) with an extra fd", ay.append1(write_end)));
        }
        for (what, body) in bodies {
            let result = c.call_message(body).map(|_| Vec::new());
            check(
                &format!("{method} with {what}"),
                &result,
                Expect::Invalid(expected),
            );
        }
    }

    // Names that are not served.
    for member in ["DropEverything", "getdevices", "GetDevices2"] {
        let msg = BusClient::method_call(member)
            .expect("method call")
            .append1(Vec::<u8>::new());
        let err = c.call_message(msg).expect_err(member);
        assert_eq!(err.name, UNKNOWN_METHOD, "{member}: {err}");
    }
    // A method of the interface this build does not serve, with its own
    // signature.
    let (_keep, write_end) = Lifeline::pair().expect("pipe");
    let msg = BusClient::method_call(names::SET_VPN_INTENT)
        .expect("method call")
        .append2(Vec::<u8>::new(), write_end);
    let err = c.call_message(msg).expect_err("SetVpnIntent");
    assert_eq!(err.name, UNKNOWN_METHOD, "SetVpnIntent: {err}");
    // Another object path.
    let msg = Message::new_method_call(
        names::SERVICE,
        "/org/chromium/PatchPanel/x",
        names::INTERFACE,
        names::GET_DEVICES,
    )
    .expect("method call")
    .append1(Vec::<u8>::new());
    let err = c.call_message(msg).expect_err("another path");
    assert!(
        err.name == UNKNOWN_OBJECT || err.name == UNKNOWN_METHOD,
        "another path: {err}"
    );
    // No interface at all (the D-Bus spec allows that): served by member.
    let msg = BusClient::method_call(names::GET_DEVICES)
        .expect("method call")
        .append1(Vec::<u8>::new());
    let reply = c
        .call_message(without_interface(msg).expect("no interface"))
        .expect("GetDevices without an interface");
    assert_eq!(reply.read1::<Vec<u8>>().expect("ay"), Vec::<u8>::new());
    for (what, msg, expect) in [
        (
            "GetDevices",
            BusClient::method_call(names::GET_DEVICES)
                .expect("method call")
                .append1(vec![0u8]),
            ERROR_INVALID_ARGUMENT,
        ),
        (
            "ModifyPortRule",
            BusClient::method_call(names::MODIFY_PORT_RULE)
                .expect("method call")
                .append1(
                    ModifyPortRuleRequest {
                        input_dst_port: 65536,
                        ..access_rule()
                    }
                    .encode_to_vec(),
                ),
            ERROR_INVALID_ARGUMENT,
        ),
        (
            "ConnectNamespace",
            BusClient::method_call(names::CONNECT_NAMESPACE)
                .expect("method call")
                .append1(Vec::<u8>::new()),
            ERROR_INVALID_ARGUMENT,
        ),
        (
            "GetDevices2",
            BusClient::method_call("GetDevices2")
                .expect("method call")
                .append1(Vec::<u8>::new()),
            UNKNOWN_METHOD,
        ),
    ] {
        let err = c
            .call_message(without_interface(msg).expect("no interface"))
            .expect_err(what);
        assert_eq!(err.name, expect, "{what} without an interface: {err}");
    }
    bed.finish("wrong argument types");
}

/// A `ConnectNamespace` for a new namespace with `fd` as its lifeline.
fn connect_with_fd(c: &BusClient, fd: OwnedFd) -> Result<Vec<u8>, MethodError> {
    let request = ConnectNamespaceRequest {
        pid: -1,
        ..Default::default()
    };
    let msg = BusClient::method_call(names::CONNECT_NAMESPACE)
        .expect("method call")
        .append2(request.encode_to_vec(), fd);
    let reply = c.call_message(msg)?;
    Ok(reply.read1().expect("ay"))
}

#[test]
fn connect_namespace_with_a_dead_or_unwatchable_lifeline_leaves_nothing_behind() {
    let bed = Bed::start();
    let c = bed.client();

    // The lifeline's other end is already closed: documented as no error,
    // the namespace is connected and goes right after the reply (the
    // hang-up is pending when the daemon starts watching).
    let (lifeline, write_end) = Lifeline::pair().expect("pipe");
    drop(lifeline);
    let result = connect_with_fd(&c, write_end);
    check(
        "a lifeline whose reader was closed",
        &result,
        Expect::Success,
    );
    bed.assert_back_to_start("a lifeline whose reader was closed");

    // The same with the read end of a pipe whose writer is gone.
    let (read_end, write_end) = pipe();
    drop(write_end);
    let result = connect_with_fd(&c, read_end);
    check(
        "a lifeline whose writer was closed",
        &result,
        Expect::Success,
    );
    bed.assert_back_to_start("a lifeline whose writer was closed");

    // A socket whose peer is gone.
    let (mine, theirs) = std::os::unix::net::UnixStream::pair().expect("socketpair");
    drop(mine);
    let result = connect_with_fd(&c, OwnedFd::from(theirs));
    check("a socket lifeline without peer", &result, Expect::Success);
    bed.assert_back_to_start("a socket lifeline without peer");

    // Descriptors that cannot be watched at all (epoll refuses regular
    // files, directories and /dev/null): refused, and nothing is left.
    // (The daemon used to set the namespace up first and then leave it
    // behind, with its subnet back in the pool.)
    let file = tempfile::tempfile().expect("tempfile");
    let dir = File::open("/").expect("/");
    let null = File::open("/dev/null").expect("/dev/null");
    for (what, fd) in [
        ("a regular file", OwnedFd::from(file)),
        ("a directory", OwnedFd::from(dir)),
        ("/dev/null", OwnedFd::from(null)),
    ] {
        let result = connect_with_fd(&c, fd);
        check(
            &format!("{what} as the lifeline"),
            &result,
            Expect::Invalid("lifeline cannot be watched"),
        );
        bed.assert_unchanged(&format!("{what} as the lifeline"));
        assert!(no_devices(&c), "{what} as the lifeline: a device is listed");
    }

    // Still serving: a real lifeline works, and its namespace goes with it.
    let (lifeline, write_end) = Lifeline::pair().expect("pipe");
    connect_with_fd(&c, write_end).expect("ConnectNamespace with a good lifeline");
    assert!(!no_devices(&c), "the namespace is listed");
    drop(lifeline);
    bed.finish("dead lifelines");
}

fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills the two-int array it is given.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(rc, 0, "pipe2: {}", std::io::Error::last_os_error());
    use std::os::fd::FromRawFd;
    // SAFETY: both descriptors were just created and are owned by nobody else.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

/// A valid encoding of an all-default request padded to `size` bytes with
/// one unknown length-delimited field (number 1000).
fn padded_with_unknown_field(size: usize) -> Vec<u8> {
    let tag = (1000u32 << 3) | 2;
    let mut out = Vec::with_capacity(size);
    prost::encoding::encode_varint(u64::from(tag), &mut out);
    // Leave room for the length's own varint (4 bytes for < 2^28).
    let len = size - out.len() - 4;
    prost::encoding::encode_varint(len as u64, &mut out);
    out.resize(size, b'A');
    out
}

/// What an all-default request gets, method by method (docs/dbus-api.md).
fn default_request_outcome(method: &str) -> Expect {
    match method {
        names::GET_DEVICES | names::GET_TRAFFIC_COUNTERS => Expect::Success,
        // "when no container runs it only logs"; a cid other than the
        // running VM's is ignored.
        names::ARC_SHUTDOWN | names::ARC_VM_SHUTDOWN => Expect::Empty,
        names::CONNECT_NAMESPACE | names::ARC_STARTUP => Expect::Invalid("pid"),
        names::ARC_VM_STARTUP | names::TERMINA_VM_STARTUP => Expect::Invalid("cid"),
        names::TERMINA_VM_SHUTDOWN => Expect::Invalid("is running"),
        names::PLUGIN_VM_STARTUP
        | names::PLUGIN_VM_SHUTDOWN
        | names::PARALLELS_VM_STARTUP
        | names::PARALLELS_VM_SHUTDOWN => Expect::Invalid("id"),
        names::MODIFY_PORT_RULE => Expect::Invalid("proto"),
        // The suite sends a pipe where the socket goes.
        names::TAG_SOCKET => Expect::Invalid("not a socket"),
        names::CONFIGURE_NETWORK => Expect::Invalid("ifindex"),
        // Lockdown off while it is off: nothing to do.
        names::SET_VPN_LOCKDOWN => Expect::Empty,
        names::BRUSCHETTA_VM_STARTUP | names::BOREALIS_VM_STARTUP => Expect::Invalid("id"),
        names::BRUSCHETTA_VM_SHUTDOWN | names::BOREALIS_VM_SHUTDOWN => {
            Expect::Invalid("is running")
        }
        names::SET_DNS_REDIRECTION_RULE => Expect::Invalid("rule type"),
        // Not interactive, the lock not held: what Chrome may say.
        names::NOTIFY_ANDROID_INTERACTIVE_STATE
        | names::NOTIFY_ANDROID_WIFI_MULTICAST_LOCK_CHANGE => Expect::Empty,
        names::NOTIFY_SOCKET_CONNECTION_EVENT | names::NOTIFY_ARC_VPN_SOCKET_CONNECTION_EVENT => {
            Expect::Invalid("missing")
        }
        // WIFI_QOS off, and it was off: the previous value false is an
        // all-default response.
        names::SET_FEATURE_FLAG => Expect::Empty,
        other => panic!("no expectation for {other}"),
    }
}

#[test]
fn every_method_survives_10_mib_payloads() {
    let bed = Bed::start();
    let c = bed.client();
    let started = Instant::now();
    let garbage = vec![0xffu8; HUGE];
    let padded = padded_with_unknown_field(HUGE);
    for method in EXPORTED {
        let result = call(&c, method, garbage.clone());
        check(
            &format!("{method} with 10 MiB of 0xff"),
            &result,
            Expect::Invalid(request_type(method)),
        );
        // Valid protobuf: an all-default request and 10 MiB of an unknown
        // field, which proto3 skips.
        let result = call(&c, method, padded.clone());
        check(
            &format!("{method} with a 10 MiB unknown field"),
            &result,
            default_request_outcome(method),
        );
    }

    // 10 MiB in a string field.
    let long = "e".repeat(HUGE);
    let result = call(
        &c,
        names::CONNECT_NAMESPACE,
        ConnectNamespaceRequest {
            pid: -1,
            outbound_physical_device: long.clone(),
            ..Default::default()
        }
        .encode_to_vec(),
    );
    check(
        "ConnectNamespace with a 10 MiB device name",
        &result,
        Expect::Invalid("outbound_physical_device"),
    );
    let result = call(
        &c,
        names::MODIFY_PORT_RULE,
        ModifyPortRuleRequest {
            input_ifname: long.clone(),
            ..access_rule()
        }
        .encode_to_vec(),
    );
    check(
        "ModifyPortRule with a 10 MiB interface name",
        &result,
        Expect::Invalid("input_ifname"),
    );
    let result = call(
        &c,
        names::MODIFY_PORT_RULE,
        ModifyPortRuleRequest {
            input_dst_ip: long.clone(),
            ..access_rule()
        }
        .encode_to_vec(),
    );
    check(
        "ModifyPortRule with a 10 MiB address",
        &result,
        Expect::Invalid("input_dst_ip"),
    );
    let result = call(
        &c,
        names::GET_TRAFFIC_COUNTERS,
        TrafficCountersRequest {
            devices: vec![long],
        }
        .encode_to_vec(),
    );
    check(
        "GetTrafficCounters with a 10 MiB device name",
        &result,
        Expect::Invalid("devices"),
    );
    // 10 MiB of valid device names, 1.7 million of them but only 100
    // different ones: each is reported once. (The list used to go to the
    // writer as it was, which did not fit in an IPC packet and got the
    // writer restarted.)
    let many = TrafficCountersRequest {
        devices: (0..HUGE / 6).map(|i| format!("e{}", i % 100)).collect(),
    }
    .encode_to_vec();
    let result = call(&c, names::GET_TRAFFIC_COUNTERS, many).expect("1.7 million devices");
    let counters = TrafficCountersResponse::decode(result.as_slice()).expect("decode");
    assert!(counters.counters.is_empty(), "{counters:?}");
    eprintln!(
        "figures: {} 10 MiB calls answered in {:.1?}",
        2 * EXPORTED.len() + 5,
        started.elapsed()
    );
    bed.finish("10 MiB payloads");
}

fn access_rule() -> ModifyPortRuleRequest {
    ModifyPortRuleRequest {
        op: 1,     // CREATE
        r#type: 1, // ACCESS
        proto: 1,  // TCP
        input_ifname: "eth0".into(),
        input_dst_port: 8080,
        ..Default::default()
    }
}

fn forwarding_rule() -> ModifyPortRuleRequest {
    ModifyPortRuleRequest {
        r#type: 3, // FORWARDING
        dst_ip: "100.115.92.130".into(),
        dst_port: 8000,
        ..access_rule()
    }
}

/// Strings that must never reach a command line or a ruleset.
const INJECTIONS: &[&str] = &[
    "eth0 -j ACCEPT",
    "eth0;reboot",
    "eth0\n-A INPUT -j ACCEPT",
    "eth0' ; nft flush ruleset ; '",
    "$(reboot)",
    "`id`",
    "-j",
    "../../etc",
    "eth0\0",
    "eth0 ",
    "eth0/1",
    "eeeeeeeeeeeeeeee", // 16 bytes, one more than IFNAMSIZ allows
    ".",
    "..",
    "eth0\u{202e}",
];

#[test]
fn invalid_values_injections_and_unknown_pids_are_refused() {
    let bed = Bed::start();
    let c = bed.client();
    let daemon_pid = bed.world.daemon.pid() as i32;
    let own_pid = std::process::id() as i32;
    let mut cases: Vec<(String, &str, Vec<u8>, Expect)> = Vec::new();
    let mut case = |what: String, method: &'static str, bytes: Vec<u8>, expect: Expect| {
        cases.push((what, method, bytes, expect));
    };

    // Pids: not a pid, pid 1, unknown, the daemon, the host's namespace.
    let bad_pids: &[(i32, &str)] = &[
        (0, "not a process id"),
        (-2, "not a process id"),
        (i32::MIN, "not a process id"),
        (1, "pid 1"),
        (4_000_000, "no process with pid"),
        (i32::MAX, "no process with pid"),
        (daemon_pid, "patchpanel itself"),
        (own_pid, "host's network namespace"),
    ];
    for &(pid, needle) in bad_pids {
        case(
            format!("ConnectNamespace pid {pid}"),
            names::CONNECT_NAMESPACE,
            ConnectNamespaceRequest {
                pid,
                ..Default::default()
            }
            .encode_to_vec(),
            Expect::Invalid(needle),
        );
        case(
            format!("ArcStartup pid {pid}"),
            names::ARC_STARTUP,
            ArcStartupRequest { pid }.encode_to_vec(),
            Expect::Invalid(needle),
        );
        // ARC is not running: the shutdown only logs (documented).
        case(
            format!("ArcShutdown pid {pid}"),
            names::ARC_SHUTDOWN,
            ArcShutdownRequest { pid }.encode_to_vec(),
            Expect::Empty,
        );
    }
    case(
        "ArcStartup pid -1".into(),
        names::ARC_STARTUP,
        ArcStartupRequest { pid: -1 }.encode_to_vec(),
        Expect::Invalid("pid"),
    );

    // ConnectNamespace: devices, enum values, combinations.
    let ns = |f: &dyn Fn(&mut ConnectNamespaceRequest)| {
        let mut r = ConnectNamespaceRequest {
            pid: -1,
            ..Default::default()
        };
        f(&mut r);
        r.encode_to_vec()
    };
    for &name in INJECTIONS {
        case(
            format!("ConnectNamespace device {name:?}"),
            names::CONNECT_NAMESPACE,
            ns(&|r| r.outbound_physical_device = name.into()),
            Expect::Invalid("outbound_physical_device"),
        );
    }
    case(
        "ConnectNamespace unknown uplink".into(),
        names::CONNECT_NAMESPACE,
        ns(&|r| r.outbound_physical_device = "wlan7".into()),
        Expect::Invalid("not a known uplink"),
    );
    case(
        "ConnectNamespace route_on_vpn with a device".into(),
        names::CONNECT_NAMESPACE,
        ns(&|r| {
            r.outbound_physical_device = "eth0".into();
            r.route_on_vpn = true;
        }),
        Expect::Invalid("route_on_vpn"),
    );
    for source in [14, 999, -1, i32::MAX, i32::MIN] {
        case(
            format!("ConnectNamespace traffic_source {source}"),
            names::CONNECT_NAMESPACE,
            ns(&|r| r.traffic_source = source),
            Expect::Invalid("traffic_source"),
        );
    }

    // VMs: id 0, bad subnet indexes, unknown ids on shutdown.
    case(
        "ArcVmStartup cid 0".into(),
        names::ARC_VM_STARTUP,
        ArcVmStartupRequest { cid: 0 }.encode_to_vec(),
        Expect::Invalid("cid"),
    );
    for cid in [0, 7, u32::MAX] {
        // Documented: a cid other than the running VM's is ignored.
        case(
            format!("ArcVmShutdown cid {cid} (not running)"),
            names::ARC_VM_SHUTDOWN,
            ArcVmShutdownRequest { cid }.encode_to_vec(),
            Expect::Empty,
        );
    }
    case(
        "TerminaVmStartup cid 0".into(),
        names::TERMINA_VM_STARTUP,
        TerminaVmStartupRequest { cid: 0 }.encode_to_vec(),
        Expect::Invalid("cid"),
    );
    for cid in [0, 7, u32::MAX] {
        case(
            format!("TerminaVmShutdown cid {cid} (not running)"),
            names::TERMINA_VM_SHUTDOWN,
            TerminaVmShutdownRequest { cid }.encode_to_vec(),
            Expect::Invalid("is running"),
        );
    }
    for method in [names::PLUGIN_VM_STARTUP, names::PARALLELS_VM_STARTUP] {
        case(
            format!("{method} id 0"),
            method,
            PluginVmStartupRequest {
                id: 0,
                subnet_index: 0,
            }
            .encode_to_vec(),
            Expect::Invalid("id"),
        );
        for index in [-1, 33, i32::MAX, i32::MIN] {
            case(
                format!("{method} subnet_index {index}"),
                method,
                PluginVmStartupRequest {
                    id: 5,
                    subnet_index: index,
                }
                .encode_to_vec(),
                Expect::Invalid("subnet_index"),
            );
        }
    }
    for method in [names::PLUGIN_VM_SHUTDOWN, names::PARALLELS_VM_SHUTDOWN] {
        for id in [0, 5, u64::MAX] {
            case(
                format!("{method} id {id} (not running)"),
                method,
                PluginVmShutdownRequest { id }.encode_to_vec(),
                Expect::Invalid("id"),
            );
        }
    }

    // ModifyPortRule: enums, ports, names, addresses, forwarding targets.
    let rule = |base: ModifyPortRuleRequest, f: &dyn Fn(&mut ModifyPortRuleRequest)| {
        let mut r = base;
        f(&mut r);
        r.encode_to_vec()
    };
    for op in [0, 3, -1, i32::MAX] {
        case(
            format!("ModifyPortRule op {op}"),
            names::MODIFY_PORT_RULE,
            rule(access_rule(), &|r| r.op = op),
            Expect::Invalid("op"),
        );
    }
    for ty in [0, 4, -7] {
        case(
            format!("ModifyPortRule type {ty}"),
            names::MODIFY_PORT_RULE,
            rule(access_rule(), &|r| r.r#type = ty),
            Expect::Invalid("type"),
        );
    }
    for proto in [0, 3, 6, 17, -1] {
        case(
            format!("ModifyPortRule proto {proto}"),
            names::MODIFY_PORT_RULE,
            rule(access_rule(), &|r| r.proto = proto),
            Expect::Invalid("proto"),
        );
    }
    for (ty, base) in [
        ("ACCESS", access_rule()),
        (
            "LOCKDOWN",
            ModifyPortRuleRequest {
                r#type: 2,
                input_ifname: String::new(),
                ..access_rule()
            },
        ),
        ("FORWARDING", forwarding_rule()),
    ] {
        for port in [0, 65536, u32::MAX] {
            case(
                format!("ModifyPortRule {ty} port {port}"),
                names::MODIFY_PORT_RULE,
                rule(base.clone(), &|r| r.input_dst_port = port),
                Expect::Invalid("port"),
            );
        }
    }
    for port in [0, 65536, u32::MAX] {
        case(
            format!("ModifyPortRule FORWARDING dst_port {port}"),
            names::MODIFY_PORT_RULE,
            rule(forwarding_rule(), &|r| r.dst_port = port),
            Expect::Invalid("port"),
        );
    }
    for &name in INJECTIONS {
        for (ty, base) in [("ACCESS", access_rule()), ("FORWARDING", forwarding_rule())] {
            case(
                format!("ModifyPortRule {ty} input_ifname {name:?}"),
                names::MODIFY_PORT_RULE,
                rule(base, &|r| r.input_ifname = name.into()),
                Expect::Invalid("input_ifname"),
            );
        }
    }
    let bad_addresses = [
        "1.2.3.4 -j ACCEPT",
        "1.2.3.4;reboot",
        "256.1.1.1",
        "1.2.3",
        "0x7f.0.0.1",
        "100.115.92.130/24",
        " 100.115.92.130",
    ];
    for addr in bad_addresses {
        case(
            format!("ModifyPortRule ACCESS input_dst_ip {addr:?}"),
            names::MODIFY_PORT_RULE,
            rule(access_rule(), &|r| r.input_dst_ip = addr.into()),
            Expect::Invalid("input_dst_ip"),
        );
        case(
            format!("ModifyPortRule LOCKDOWN input_dst_ip {addr:?}"),
            names::MODIFY_PORT_RULE,
            rule(access_rule(), &|r| {
                r.r#type = 2;
                r.input_ifname = String::new();
                r.input_dst_ip = addr.into();
            }),
            Expect::Invalid("input_dst_ip"),
        );
        case(
            format!("ModifyPortRule ACCESS dst_ip {addr:?} (unused)"),
            names::MODIFY_PORT_RULE,
            rule(access_rule(), &|r| r.dst_ip = addr.into()),
            Expect::Invalid("dst_ip"),
        );
        case(
            format!("ModifyPortRule FORWARDING dst_ip {addr:?}"),
            names::MODIFY_PORT_RULE,
            rule(forwarding_rule(), &|r| r.dst_ip = addr.into()),
            Expect::Invalid("dst_ip"),
        );
    }
    for target in [
        "",
        "8.8.8.8",
        "192.0.2.1",
        "127.0.0.1",
        "0.0.0.0",
        "255.255.255.255",
        "::1",
        "100.115.92.130%eth0",
    ] {
        case(
            format!("ModifyPortRule FORWARDING to {target:?}"),
            names::MODIFY_PORT_RULE,
            rule(forwarding_rule(), &|r| r.dst_ip = target.into()),
            Expect::Invalid("dst_ip"),
        );
    }
    case(
        "ModifyPortRule DELETE of a rule that does not exist".into(),
        names::MODIFY_PORT_RULE,
        rule(access_rule(), &|r| r.op = 2),
        Expect::Invalid("no such rule"),
    );

    // GetTrafficCounters: device names.
    for &name in INJECTIONS.iter().chain(&[""]) {
        case(
            format!("GetTrafficCounters device {name:?}"),
            names::GET_TRAFFIC_COUNTERS,
            TrafficCountersRequest {
                devices: vec!["eth0".into(), name.into()],
            }
            .encode_to_vec(),
            Expect::Invalid("devices"),
        );
    }

    // More different names than the writer is asked for at once (5,000
    // used to get the writer restarted).
    for n in [257, 5_000] {
        case(
            format!("GetTrafficCounters for {n} different devices"),
            names::GET_TRAFFIC_COUNTERS,
            TrafficCountersRequest {
                devices: (0..n).map(|i| format!("d{i}")).collect(),
            }
            .encode_to_vec(),
            Expect::Invalid("more than 256 different names"),
        );
    }

    let count = cases.len();
    for (what, method, bytes, expect) in cases {
        let result = call(&c, method, bytes);
        check(&what, &result, expect);
    }
    // A device name that is valid but unknown has no counters.
    let result = call(
        &c,
        names::GET_TRAFFIC_COUNTERS,
        TrafficCountersRequest {
            devices: vec!["wlan9".into()],
        }
        .encode_to_vec(),
    )
    .expect("GetTrafficCounters for an unknown device");
    let counters = TrafficCountersResponse::decode(result.as_slice()).expect("decode");
    assert!(counters.counters.is_empty(), "{counters:?}");
    eprintln!("figures: {count} invalid requests refused");
    bed.finish("invalid values");
}

/// The number of calls of the flood.
const FLOOD: usize = 10_000;
/// Calls in flight at once: the bus refuses more than 128 pending replies
/// per connection (dbus-daemon's default `max_replies_per_connection`)
/// with `LimitsExceeded` itself, before patchpaneld sees them.
const FLOOD_WINDOW: usize = 100;
/// How long the flood without pause lasts.
const SUSTAINED: Duration = Duration::from_secs(2);

/// Call `i` of a flood: a mix of cheap calls, valid ones, malformed
/// bytes, wrong signatures and invalid rules (refused before the writer is
/// asked), and what it must get.
fn flood_call(i: usize) -> (Message, Expect) {
    let call = |member| BusClient::method_call(member).expect("method call");
    match i % 10 {
        0 => (
            call(names::GET_DEVICES).append1(vec![0u8]),
            Expect::Invalid("GetDevicesRequest"),
        ),
        1 => (
            call(names::GET_DEVICES).append1("ay?"),
            Expect::Invalid("takes (ay)"),
        ),
        2 => (
            call(names::MODIFY_PORT_RULE).append1(
                ModifyPortRuleRequest {
                    input_dst_port: 0,
                    ..access_rule()
                }
                .encode_to_vec(),
            ),
            Expect::Invalid("port"),
        ),
        3 => (
            call(names::CONNECT_NAMESPACE).append1(Vec::<u8>::new()),
            Expect::Invalid("takes (ayh)"),
        ),
        _ => (
            call(names::GET_DEVICES).append1(Vec::<u8>::new()),
            Expect::Success,
        ),
    }
}

#[test]
fn floods_of_10000_calls_are_answered_and_another_client_is_served() {
    let bed = Bed::start();
    let flooder = bed.client();

    // Another client calls GetDevices in a loop all along.
    let flooding = Arc::new(AtomicBool::new(true));
    let other = {
        let flooding = Arc::clone(&flooding);
        let client = bed.client();
        std::thread::spawn(move || {
            let mut latencies = Vec::new();
            while flooding.load(Ordering::SeqCst) {
                let started = Instant::now();
                client.get_devices()?;
                latencies.push(started.elapsed());
                std::thread::sleep(Duration::from_millis(10));
            }
            Ok::<_, MethodError>(latencies)
        })
    };

    // 1. Pipelined: every reply is collected and checked.
    let (calls, expected): (Vec<Message>, Vec<Expect>) = (0..FLOOD).map(flood_call).unzip();
    let started = Instant::now();
    let replies = flooder
        .pipeline(calls, FLOOD_WINDOW, Duration::from_secs(10))
        .expect("every call of the flood is answered");
    let pipelined = started.elapsed();
    assert_eq!(replies.len(), FLOOD);
    for (i, (reply, expect)) in replies.into_iter().zip(expected).enumerate() {
        let result = reply.map(|m| m.read1::<&[u8]>().expect("ay").to_vec());
        check(&format!("call {i} of the flood"), &result, expect);
    }

    // 2. All at once, without waiting: calls that expect no reply are not
    // limited by the bus. A last call with a reply comes after them all.
    let started = Instant::now();
    let sent = flooder
        .send_without_replies((0..FLOOD).map(|i| flood_call(i).0))
        .expect("send");
    assert_eq!(sent, FLOOD);
    let last = flooder
        .call_message(
            BusClient::method_call(names::GET_DEVICES)
                .expect("method call")
                .append1(Vec::<u8>::new()),
        )
        .expect("the call after 10,000 unanswered ones");
    let burst = started.elapsed();
    assert_eq!(last.read1::<&[u8]>().expect("ay"), &[] as &[u8]);

    // 3. Without pause: batches of 1,000 calls without replies for
    // SUSTAINED, as fast as the bus takes them.
    let sustained = {
        let flooder = bed.client();
        std::thread::spawn(move || {
            let started = Instant::now();
            let mut sent = 0;
            while started.elapsed() < SUSTAINED {
                sent += flooder
                    .send_without_replies((0..1000).map(|i| flood_call(i).0))
                    .expect("send");
            }
            let last = flooder.call_message(
                BusClient::method_call(names::GET_DEVICES)
                    .expect("method call")
                    .append1(Vec::<u8>::new()),
            );
            (sent, started.elapsed(), last.map(|_| ()))
        })
    };
    let (sent, sustained_for, last) = sustained.join().expect("the flooding thread");
    last.expect("the flooder's own call after the sustained flood");

    flooding.store(false, Ordering::SeqCst);
    let latencies = other
        .join()
        .expect("the other client's thread")
        .expect("the other client was served during the floods");
    let max = latencies.iter().max().copied().unwrap_or_default();
    eprintln!(
        "figures: {FLOOD} pipelined calls ({FLOOD_WINDOW} in flight) answered in {pipelined:.2?} \
         ({:.0} calls/s); {FLOOD} calls sent at once served in {burst:.2?} ({:.0} calls/s); \
         {sent} calls sent without pause served in {sustained_for:.2?} ({:.0} calls/s); \
         the other client made {} calls meanwhile, the slowest took {max:.1?}",
        FLOOD as f64 / pipelined.as_secs_f64(),
        FLOOD as f64 / burst.as_secs_f64(),
        sent as f64 / sustained_for.as_secs_f64(),
        latencies.len()
    );
    assert!(
        latencies.len() >= 10,
        "the other client got too few answers during the floods: {latencies:?}"
    );
    bed.finish("the flood");
}
