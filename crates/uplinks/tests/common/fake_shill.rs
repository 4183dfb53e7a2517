//! A fake shill on a private bus: Manager `/`, Devices and Services with
//! `GetProperties`, and `PropertyChanged` on demand. Runs in its own thread
//! with its own connection; dropping it (or [`FakeShill::stop`]) closes the
//! connection, so the bus announces that shill left.

use std::collections::BTreeMap;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use dbus::arg::{PropMap, RefArg, Variant};
use dbus::blocking::LocalConnection;
use dbus::channel::{Channel, Sender as _};
use dbus::{Message, Path};
use dbus_crossroads::{Crossroads, IfaceBuilder};

const SERVICE: &str = "org.chromium.flimflam";
const MANAGER: &str = "org.chromium.flimflam.Manager";
const DEVICE: &str = "org.chromium.flimflam.Device";
const SERVICE_IFACE: &str = "org.chromium.flimflam.Service";

/// A property value (kept `Send` so commands can cross threads).
#[derive(Debug, Clone)]
pub enum Value {
    Str(String),
    Path(String),
    Paths(Vec<String>),
}

impl Value {
    fn to_variant(&self) -> Variant<Box<dyn RefArg>> {
        match self {
            Value::Str(s) => Variant(Box::new(s.clone())),
            Value::Path(p) => Variant(Box::new(path(p))),
            Value::Paths(ps) => Variant(Box::new(ps.iter().map(|p| path(p)).collect::<Vec<_>>())),
        }
    }
}

fn path(p: &str) -> Path<'static> {
    Path::new(p.to_string()).expect("valid object path")
}

/// One object: which shill interface it implements and its properties.
#[derive(Debug, Clone)]
struct Object {
    interface: &'static str,
    props: BTreeMap<String, Value>,
}

impl Object {
    fn prop_map(&self) -> PropMap {
        self.props
            .iter()
            .map(|(k, v)| (k.clone(), v.to_variant()))
            .collect()
    }
}

enum Command {
    Set {
        path: String,
        name: String,
        value: Value,
    },
}

/// The world the fake starts with: eth0 (ethernet) and wlan0 (wifi), the
/// default service `/service/1` on eth0 and `/service/2` on wlan0.
fn initial_objects() -> Vec<(String, Object)> {
    let obj = |interface, props: &[(&str, Value)]| Object {
        interface,
        props: props
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect(),
    };
    let s = |v: &str| Value::Str(v.into());
    let p = |v: &str| Value::Path(v.into());
    vec![
        (
            "/".into(),
            obj(
                MANAGER,
                &[
                    (
                        "Devices",
                        Value::Paths(vec!["/device/eth0".into(), "/device/wlan0".into()]),
                    ),
                    ("DefaultService", p("/service/1")),
                    ("State", s("online")),
                ],
            ),
        ),
        (
            "/device/eth0".into(),
            obj(DEVICE, &[("Interface", s("eth0")), ("Type", s("ethernet"))]),
        ),
        (
            "/device/wlan0".into(),
            obj(DEVICE, &[("Interface", s("wlan0")), ("Type", s("wifi"))]),
        ),
        (
            "/service/1".into(),
            obj(
                SERVICE_IFACE,
                &[("Device", p("/device/eth0")), ("Type", s("ethernet"))],
            ),
        ),
        (
            "/service/2".into(),
            obj(
                SERVICE_IFACE,
                &[("Device", p("/device/wlan0")), ("Type", s("wifi"))],
            ),
        ),
    ]
}

/// The running fake.
#[derive(Debug)]
pub struct FakeShill {
    commands: Option<mpsc::Sender<Command>>,
    thread: Option<JoinHandle<()>>,
}

impl FakeShill {
    /// Connects to `address`, owns `org.chromium.flimflam` and serves the
    /// initial world. Returns once the name is owned.
    pub fn start(address: &str) -> FakeShill {
        let (commands, rx) = mpsc::channel();
        let (ready_tx, ready_rx) = mpsc::channel();
        let address = address.to_string();
        let thread = std::thread::spawn(move || serve(&address, rx, ready_tx));
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("fake shill did not start");
        FakeShill {
            commands: Some(commands),
            thread: Some(thread),
        }
    }

    /// Sets a property and emits `PropertyChanged` for it.
    pub fn set(&self, path: &str, name: &str, value: Value) {
        self.commands
            .as_ref()
            .expect("running")
            .send(Command::Set {
                path: path.into(),
                name: name.into(),
                value,
            })
            .expect("fake shill thread is gone");
    }

    /// Leaves the bus (the connection is closed).
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        drop(self.commands.take());
        if let Some(t) = self.thread.take() {
            t.join().expect("fake shill thread panicked");
        }
    }
}

impl Drop for FakeShill {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn serve(address: &str, rx: mpsc::Receiver<Command>, ready: mpsc::Sender<()>) {
    let mut channel = Channel::open_private(address).expect("fake shill: connect");
    channel.register().expect("fake shill: hello");
    let conn = LocalConnection::from(channel);
    conn.request_name(SERVICE, false, true, false)
        .expect("fake shill: request name");

    let mut cr = Crossroads::new();
    let mut ifaces = BTreeMap::new();
    for name in [MANAGER, DEVICE, SERVICE_IFACE] {
        let token = cr.register(name, |b: &mut IfaceBuilder<Object>| {
            b.method(
                "GetProperties",
                (),
                ("properties",),
                |_, obj: &mut Object, ()| Ok((obj.prop_map(),)),
            );
            b.signal::<(String, Variant<Box<dyn RefArg>>), _>("PropertyChanged", ("name", "value"));
        });
        ifaces.insert(name, token);
    }
    for (p, obj) in initial_objects() {
        cr.insert(path(&p), &[ifaces[obj.interface]], obj);
    }
    ready.send(()).expect("test is gone");

    loop {
        loop {
            match rx.try_recv() {
                Ok(Command::Set {
                    path: p,
                    name,
                    value,
                }) => {
                    let obj: &mut Object = cr.data_mut(&path(&p)).expect("known object");
                    obj.props.insert(name.clone(), value.clone());
                    let signal = Message::new_signal(p.clone(), obj.interface, "PropertyChanged")
                        .expect("signal")
                        .append2(name, value.to_variant());
                    conn.send(signal).expect("send signal");
                }
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => return,
            }
        }
        conn.channel()
            .read_write(Some(Duration::from_millis(20)))
            .expect("fake shill: bus gone");
        while let Some(msg) = conn.channel().pop_message() {
            let _ = cr.handle_message(msg, &conn);
        }
        conn.channel().flush();
    }
}
