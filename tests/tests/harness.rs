//! Tests of the harness itself, against the real kernel and a real bus but a
//! fake PatchPanel service, so they pass or fail independently of the daemon.

use std::ffi::CString;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;

use dbus::blocking::Connection;
use dbus::channel::{Channel, MatchingReceiver, Sender};
use dbus::message::MatchRule;
use dbus::strings::ErrorName;
use patchpanel_tests::dbus_client::{
    dbus_send_bytes, dbus_send_string, ERROR_INVALID_ARGUMENT, SERVICE,
};
use patchpanel_tests::procfs::netns_inode;
use patchpanel_tests::{dbus_send_get_devices, BusClient, MethodError, Netns, PrivateBus};

/// A stand-in for patchpaneld on a bus: answers every method call with its
/// `ay` argument echoed back, and anything else with InvalidArgument.
struct EchoService {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl EchoService {
    fn start(address: &str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = mpsc::channel();
        let address = address.to_string();
        let stop_flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut channel = Channel::open_private(&address).expect("connect");
            channel.register().expect("register");
            let conn = Connection::from(channel);
            conn.request_name(SERVICE, false, true, true)
                .expect("own the name");
            conn.start_receive(
                MatchRule::new_method_call(),
                Box::new(|call, conn| {
                    let reply = match call.read1::<Vec<u8>>() {
                        Ok(bytes) => call.method_return().append1(bytes),
                        Err(_) => call.error(
                            &ErrorName::new(ERROR_INVALID_ARGUMENT).expect("error name"),
                            &CString::new("expected ay").expect("message"),
                        ),
                    };
                    let _ = conn.send(reply);
                    true
                }),
            );
            ready_tx.send(()).expect("signal readiness");
            while !stop_flag.load(Ordering::SeqCst) {
                conn.process(Duration::from_millis(50)).expect("process");
            }
        });
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("echo service ready");
        Self {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for EchoService {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[test]
fn netns_has_lo_up_and_is_deleted_on_drop() {
    let netns = Netns::new().expect("netns");
    let path = netns.path();

    let lo = netns
        .exec_ok(&["ip", "-o", "link", "show", "lo"])
        .expect("ip link");

    assert!(path.exists(), "{} missing", path.display());
    assert!(lo.contains(",UP"), "lo is not up: {lo}");
    assert_ne!(
        netns.inode().expect("inode"),
        netns_inode(std::process::id()).expect("own netns"),
        "the test namespace is the test process's own"
    );
    drop(netns);
    assert!(!path.exists(), "{} survives the drop", path.display());
}

#[test]
fn private_bus_is_reachable_by_the_unprivileged_user() {
    let bus = PrivateBus::start().expect("bus");

    let out = Command::new("setpriv")
        .args([
            "--reuid=patchpaneld",
            "--regid=patchpaneld",
            "--clear-groups",
            "dbus-send",
        ])
        .arg(format!("--bus={}", bus.address()))
        .args([
            "--print-reply",
            "--dest=org.freedesktop.DBus",
            "/org/freedesktop/DBus",
            "org.freedesktop.DBus.ListNames",
        ])
        .output()
        .expect("run setpriv dbus-send");

    assert!(
        out.status.success(),
        "as patchpaneld: {}{}",
        String::from_utf8_lossy(&out.stderr),
        bus.log()
    );
}

#[test]
fn private_bus_is_removed_on_drop() {
    let bus = PrivateBus::start().expect("bus");
    let socket = bus.socket_path().to_path_buf();

    drop(bus);

    assert!(
        !Path::new(&socket).exists(),
        "{} survives",
        socket.display()
    );
}

#[test]
fn stock_client_reads_every_byte_array_form() {
    let bus = PrivateBus::start().expect("bus");
    let _service = EchoService::start(bus.address());
    let binary: Vec<u8> = (0..=255).collect();

    assert_eq!(dbus_send_get_devices(bus.address()), Ok(vec![]));
    assert_eq!(
        dbus_send_bytes(bus.address(), "GetDevices", b"abc"),
        Ok(b"abc".to_vec())
    );
    assert_eq!(
        dbus_send_bytes(bus.address(), "GetDevices", b"ab\0"),
        Ok(b"ab\0".to_vec())
    );
    assert_eq!(
        dbus_send_bytes(bus.address(), "GetDevices", &binary),
        Ok(binary)
    );
}

#[test]
fn stock_client_reports_the_error_name() {
    let bus = PrivateBus::start().expect("bus");
    let _service = EchoService::start(bus.address());

    let err = dbus_send_string(bus.address(), "GetDevices", "x").expect_err("must fail");

    assert_eq!(
        MethodError::from_dbus_send_stderr(&err),
        Some(MethodError {
            name: ERROR_INVALID_ARGUMENT.to_string(),
            message: "expected ay".to_string(),
        }),
        "dbus-send said {err:?}"
    );
}

#[test]
fn bus_client_gets_bytes_and_error_names() {
    let bus = PrivateBus::start().expect("bus");
    let _service = EchoService::start(bus.address());
    let client = BusClient::connect(bus.address()).expect("client");

    assert_eq!(client.get_devices(), Ok(vec![]));
    assert_eq!(
        client.call_bytes("GetDevices", &[0xff, 0x00]),
        Ok(vec![0xff, 0x00])
    );
    let err = client
        .call_string("GetDevices", "x")
        .expect_err("must fail");
    assert_eq!(err.name, ERROR_INVALID_ARGUMENT);
    assert_eq!(client.name_has_owner(SERVICE), Ok(true));
}

#[test]
fn bus_client_without_service_gets_service_unknown() {
    let bus = PrivateBus::start().expect("bus");
    let client = BusClient::connect(bus.address()).expect("client");

    let err = client.get_devices().expect_err("nobody owns the name");

    assert_eq!(err.name, "org.freedesktop.DBus.Error.ServiceUnknown");
}
