//! A fake shill (`org.chromium.flimflam`) on a test's private bus, for the
//! daemon's shill uplink mode.
//!
//! It serves what patchpanel reads from shill: the Manager at `/` with its
//! `Devices` and `DefaultService`, Devices with `Interface` and `Type`, and
//! Services with `Device`, each through `GetProperties`, and announces every
//! change with `PropertyChanged` the way shill does. It runs in its own
//! thread on its own connection; every change returns once the signal is on
//! the wire. Dropping it (or [`FakeShill::stop`]) closes the connection, so
//! the bus announces that shill left.
//!
//! Devices live at `/device/<ifname>` and services at `/service/<ifname>`.

use std::collections::BTreeMap;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use dbus::arg::{PropMap, RefArg, Variant};
use dbus::blocking::LocalConnection;
use dbus::channel::{Channel, Sender as _};
use dbus::{Message, MessageType, Path};

/// shill's bus name.
pub const SERVICE: &str = "org.chromium.flimflam";
/// The Manager's interface (at `/`).
pub const MANAGER_INTERFACE: &str = "org.chromium.flimflam.Manager";
/// A Device's interface.
pub const DEVICE_INTERFACE: &str = "org.chromium.flimflam.Device";
/// A Service's interface.
pub const SERVICE_INTERFACE: &str = "org.chromium.flimflam.Service";

/// How long starting (owning the name) and each change may take.
const TIMEOUT: Duration = Duration::from_secs(10);

/// A property value. Plain data, so that it can cross to the fake's thread.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Str(String),
    Path(String),
    Paths(Vec<String>),
}

impl Value {
    fn to_variant(&self) -> Result<Variant<Box<dyn RefArg>>> {
        Ok(match self {
            Value::Str(s) => Variant(Box::new(s.clone())),
            Value::Path(p) => Variant(Box::new(object_path(p)?)),
            Value::Paths(ps) => Variant(Box::new(
                ps.iter()
                    .map(|p| object_path(p))
                    .collect::<Result<Vec<_>>>()?,
            )),
        })
    }
}

fn object_path(p: &str) -> Result<Path<'static>> {
    Path::new(p.to_string()).map_err(|e| anyhow!("bad object path {p:?}: {e}"))
}

/// The object path of the Device for `ifname`.
pub fn device_path(ifname: &str) -> String {
    format!("/device/{ifname}")
}

/// The object path of the Service on `ifname`.
pub fn service_path(ifname: &str) -> String {
    format!("/service/{ifname}")
}

/// One exported object: its shill interface and properties.
#[derive(Debug, Clone)]
struct Object {
    interface: &'static str,
    props: BTreeMap<String, Value>,
}

impl Object {
    fn prop_map(&self) -> Result<PropMap> {
        self.props
            .iter()
            .map(|(k, v)| Ok((k.clone(), v.to_variant()?)))
            .collect()
    }
}

/// A change, applied in the fake's thread.
#[derive(Debug)]
enum Command {
    /// Exports (or replaces) an object, without a signal (shill exports an
    /// object before it lists it).
    Export { path: String, object: Object },
    /// Stops exporting an object, without a signal.
    Unexport { path: String },
    /// Sets a property and emits `PropertyChanged`.
    Set {
        path: String,
        name: String,
        value: Value,
    },
}

/// The running fake.
#[derive(Debug)]
pub struct FakeShill {
    commands: Option<mpsc::Sender<(Command, mpsc::Sender<Result<()>>)>>,
    thread: Option<JoinHandle<()>>,
    /// The devices listed in the Manager's `Devices`, in order.
    devices: Vec<String>,
}

impl FakeShill {
    /// Connects to the bus at `address`, owns `org.chromium.flimflam` and
    /// serves a Manager without devices or default service. Returns once the
    /// name is owned.
    pub fn start(address: &str) -> Result<FakeShill> {
        let (commands, rx) = mpsc::channel();
        let (ready_tx, ready_rx) = mpsc::channel();
        let address = address.to_string();
        let thread = std::thread::Builder::new()
            .name("fake-shill".into())
            .spawn(move || serve(&address, rx, ready_tx))
            .context("cannot start the fake shill's thread")?;
        let ready = ready_rx
            .recv_timeout(TIMEOUT)
            .map_err(|e| anyhow!("the fake shill did not start: {e}"));
        let mut fake = FakeShill {
            commands: Some(commands),
            thread: Some(thread),
            devices: Vec::new(),
        };
        if let Err(e) = ready.and_then(|r| r) {
            fake.shutdown();
            return Err(e);
        }
        Ok(fake)
    }

    /// Like [`FakeShill::start`], then adds `ifname` as a Device of type
    /// `kind` (`ethernet`, `wifi`, ...) and makes its Service the default.
    pub fn start_with_default(address: &str, ifname: &str, kind: &str) -> Result<FakeShill> {
        let mut fake = FakeShill::start(address)?;
        fake.add_device(ifname, kind)?;
        fake.set_default(Some(ifname))?;
        Ok(fake)
    }

    fn send(&self, command: Command) -> Result<()> {
        let (ack_tx, ack_rx) = mpsc::channel();
        self.commands
            .as_ref()
            .context("the fake shill is stopped")?
            .send((command, ack_tx))
            .map_err(|_| anyhow!("the fake shill's thread is gone"))?;
        ack_rx
            .recv_timeout(TIMEOUT)
            .map_err(|e| anyhow!("the fake shill did not apply a change: {e}"))?
    }

    /// Sets property `name` of the object at `path` and emits
    /// `PropertyChanged` for it.
    pub fn set_property(&self, path: &str, name: &str, value: Value) -> Result<()> {
        self.send(Command::Set {
            path: path.into(),
            name: name.into(),
            value,
        })
    }

    /// Exports the Device `/device/<ifname>` (`Interface`, `Type`) and
    /// appends it to the Manager's `Devices`.
    pub fn add_device(&mut self, ifname: &str, kind: &str) -> Result<()> {
        let path = device_path(ifname);
        self.send(Command::Export {
            path: path.clone(),
            object: Object {
                interface: DEVICE_INTERFACE,
                props: BTreeMap::from([
                    ("Interface".to_string(), Value::Str(ifname.into())),
                    ("Type".to_string(), Value::Str(kind.into())),
                ]),
            },
        })?;
        self.devices.retain(|d| *d != path);
        self.devices.push(path);
        self.set_property("/", "Devices", Value::Paths(self.devices.clone()))
    }

    /// Removes `/device/<ifname>` from the Manager's `Devices`, then stops
    /// exporting it.
    pub fn remove_device(&mut self, ifname: &str) -> Result<()> {
        let path = device_path(ifname);
        self.devices.retain(|d| *d != path);
        self.set_property("/", "Devices", Value::Paths(self.devices.clone()))?;
        self.send(Command::Unexport { path })
    }

    /// Makes the Service on `ifname` (exported on the way, its `Device`
    /// pointing at `/device/<ifname>`) the Manager's `DefaultService`, or
    /// sets `/` (no default service).
    pub fn set_default(&self, ifname: Option<&str>) -> Result<()> {
        let Some(ifname) = ifname else {
            return self.set_property("/", "DefaultService", Value::Path("/".into()));
        };
        let path = service_path(ifname);
        self.send(Command::Export {
            path: path.clone(),
            object: Object {
                interface: SERVICE_INTERFACE,
                props: BTreeMap::from([
                    ("Device".to_string(), Value::Path(device_path(ifname))),
                    ("State".to_string(), Value::Str("online".into())),
                ]),
            },
        })?;
        self.set_property("/", "DefaultService", Value::Path(path))
    }

    /// Leaves the bus (the connection is closed); later changes fail.
    pub fn stop(&mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        drop(self.commands.take());
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                eprintln!("harness: the fake shill's thread panicked");
            }
        }
    }
}

impl Drop for FakeShill {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn connect(address: &str) -> Result<LocalConnection> {
    let mut channel = Channel::open_private(address)
        .map_err(|e| anyhow!("fake shill: cannot connect to {address}: {e}"))?;
    channel
        .register()
        .map_err(|e| anyhow!("fake shill: Hello: {e}"))?;
    let conn = LocalConnection::from(channel);
    conn.request_name(SERVICE, false, true, true)
        .map_err(|e| anyhow!("fake shill: cannot own {SERVICE}: {e}"))?;
    Ok(conn)
}

fn serve(
    address: &str,
    commands: mpsc::Receiver<(Command, mpsc::Sender<Result<()>>)>,
    ready: mpsc::Sender<Result<()>>,
) {
    let conn = match connect(address) {
        Ok(c) => c,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let mut objects = BTreeMap::from([(
        "/".to_string(),
        Object {
            interface: MANAGER_INTERFACE,
            props: BTreeMap::from([
                ("Devices".to_string(), Value::Paths(Vec::new())),
                ("DefaultService".to_string(), Value::Path("/".into())),
            ]),
        },
    )]);
    if ready.send(Ok(())).is_err() {
        return;
    }
    loop {
        loop {
            match commands.try_recv() {
                Ok((command, ack)) => {
                    let result = apply(&conn, &mut objects, command);
                    conn.channel().flush();
                    let _ = ack.send(result);
                }
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => return,
            }
        }
        if conn
            .channel()
            .read_write(Some(Duration::from_millis(20)))
            .is_err()
        {
            eprintln!("harness: the fake shill lost its bus");
            return;
        }
        while let Some(msg) = conn.channel().pop_message() {
            if msg.msg_type() == MessageType::MethodCall {
                if let Some(reply) = answer(&objects, &msg) {
                    let _ = conn.send(reply);
                }
            }
        }
        conn.channel().flush();
    }
}

fn apply(
    conn: &LocalConnection,
    objects: &mut BTreeMap<String, Object>,
    command: Command,
) -> Result<()> {
    match command {
        Command::Export { path, object } => {
            objects.insert(path, object);
        }
        Command::Unexport { path } => {
            objects.remove(&path);
        }
        Command::Set { path, name, value } => {
            let object = objects
                .get_mut(&path)
                .with_context(|| format!("fake shill: no object at {path}"))?;
            object.props.insert(name.clone(), value.clone());
            let signal = Message::new_signal(path.clone(), object.interface, "PropertyChanged")
                .map_err(|e| anyhow!("fake shill: signal at {path}: {e}"))?
                .append2(name, value.to_variant()?);
            conn.send(signal)
                .map_err(|()| anyhow!("fake shill: cannot send PropertyChanged"))?;
        }
    }
    Ok(())
}

/// The reply to a method call: `GetProperties` on an exported object, an
/// error for anything else.
fn answer(objects: &BTreeMap<String, Object>, call: &Message) -> Option<Message> {
    if call.get_no_reply() {
        return None;
    }
    let path = call.path().map(|p| p.to_string()).unwrap_or_default();
    let member = call.member().map(|m| m.to_string()).unwrap_or_default();
    let interface = call.interface().map(|i| i.to_string());
    let error = |name: &str, text: &str| {
        let name = dbus::strings::ErrorName::new(name.to_string()).ok()?;
        let text = std::ffi::CString::new(text).ok()?;
        Some(call.error(&name, &text))
    };
    let Some(object) = objects.get(&path) else {
        return error(
            "org.freedesktop.DBus.Error.UnknownObject",
            &format!("no object at {path}"),
        );
    };
    let interface_matches = interface.as_deref().is_none_or(|i| i == object.interface);
    if member != "GetProperties" || !interface_matches {
        return error(
            "org.freedesktop.DBus.Error.UnknownMethod",
            &format!("{path} has no method {member}"),
        );
    }
    match object.prop_map() {
        Ok(props) => Some(call.method_return().append1(props)),
        Err(e) => error("org.freedesktop.DBus.Error.Failed", &format!("{e:#}")),
    }
}
