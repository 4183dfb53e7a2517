//! The D-Bus adaptor: decodes and validates `org.chromium.PatchPanel` calls
//! and encodes the answers. Policy lives in [`crate::state`]; this module
//! only translates between the wire and it.
//!
//! libdbus is level-triggered and mio edge-triggered, so [`DbusService::dispatch`]
//! drains everything buffered and then peeks at the socket until it is empty
//! (the recipe of dbus-rs issue #254).

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{anyhow, Context as _};
use dbus::blocking::LocalConnection;
use dbus::channel::{BusType, Channel};
use dbus::MethodErr;
use dbus_crossroads::Crossroads;
use log::{info, warn};
use patchpanel_proto::names;

static OPERATION_ID: AtomicU64 = AtomicU64::new(1);

/// A fresh id that ties together the log lines of one D-Bus operation.
pub fn next_operation() -> u64 {
    OPERATION_ID.fetch_add(1, Ordering::Relaxed)
}

/// The connection, the introspection table and the calls waiting for the
/// manager.
pub struct DbusService {
    conn: LocalConnection,
    cr: Crossroads,
    fd: RawFd,
    calls: Vec<dbus::Message>,
    /// Uids of bus peers by unique name. A unique name is never reused
    /// during the bus's life, so an entry is never stale, only unused;
    /// the map is bounded by emptying it when full.
    uids: std::collections::HashMap<String, u32>,
}

/// How many peers' uids are remembered.
const UID_CACHE: usize = 1024;

impl std::fmt::Debug for DbusService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DbusService").field("fd", &self.fd).finish()
    }
}

/// A failed call: the D-Bus error it becomes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallError {
    /// Bad input: `org.chromium.PatchPanel.Error.InvalidArgument`.
    InvalidArgument(String),
    /// Kernel or internal failure: `org.chromium.PatchPanel.Error.Failed`.
    Failed(String),
    /// A method of the interface this build does not serve:
    /// `org.freedesktop.DBus.Error.UnknownMethod`.
    Unsupported(String),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::InvalidArgument(m) | CallError::Failed(m) | CallError::Unsupported(m) => {
                f.write_str(m)
            }
        }
    }
}

impl DbusService {
    /// Connects to the system bus (`DBUS_SYSTEM_BUS_ADDRESS` is honoured)
    /// and builds the introspection table. The name is requested later,
    /// once the helpers are up, so that owning it means "ready".
    pub fn connect() -> anyhow::Result<DbusService> {
        let mut channel = Channel::get_private(BusType::System).map_err(|e| {
            anyhow!(
                "cannot connect to the system bus{}: {}",
                std::env::var("DBUS_SYSTEM_BUS_ADDRESS")
                    .map(|a| format!(" at {a}"))
                    .unwrap_or_default(),
                e.message().unwrap_or("unknown error")
            )
        })?;
        channel.set_watch_enabled(true);
        let fd = channel.watch().fd;
        let conn = LocalConnection::from(channel);
        let mut cr = Crossroads::new();
        // Calls to our interface never reach crossroads (the manager takes
        // them first, see `dispatch`); the table is there for Introspect.
        let iface = cr.register(
            names::INTERFACE,
            |b: &mut dbus_crossroads::IfaceBuilder<()>| {
                for spec in names::METHODS
                    .iter()
                    .filter(|m| IMPLEMENTED.contains(&m.name))
                {
                    if spec.takes_fd {
                        b.method(
                            spec.name,
                            ("request", "fd"),
                            ("response",),
                            |_,
                             _,
                             (_r, _fd): (Vec<u8>, dbus::arg::OwnedFd)|
                             -> Result<(Vec<u8>,), MethodErr> {
                                Err(MethodErr::failed("not routed"))
                            },
                        );
                    } else {
                        b.method(
                            spec.name,
                            ("request",),
                            ("response",),
                            |_, _, (_r,): (Vec<u8>,)| -> Result<(Vec<u8>,), MethodErr> {
                                Err(MethodErr::failed("not routed"))
                            },
                        );
                    }
                }
                b.signal::<(Vec<u8>,), _>(names::NETWORK_DEVICE_CHANGED, ("signal",));
            },
        );
        cr.insert(names::PATH, &[iface], ());
        Ok(DbusService {
            conn,
            cr,
            fd,
            calls: Vec::new(),
            uids: std::collections::HashMap::new(),
        })
    }

    /// The socket to register with mio.
    pub fn fd(&self) -> RawFd {
        self.fd
    }

    /// Claims the service name; fails if another instance owns it.
    pub fn request_name(&self) -> anyhow::Result<()> {
        use dbus::blocking::stdintf::org_freedesktop_dbus::RequestNameReply;
        let reply = self
            .conn
            .request_name(names::SERVICE, false, false, true)
            .with_context(|| format!("cannot request {}", names::SERVICE))?;
        if reply != RequestNameReply::PrimaryOwner {
            anyhow::bail!("{} is already owned by another process", names::SERVICE);
        }
        info!("owning {} on the system bus", names::SERVICE);
        Ok(())
    }

    /// Reads until libdbus and the socket are empty. Calls to our
    /// interface with the right signature are queued for [`Self::take_calls`];
    /// everything else is answered here. An error means the bus
    /// connection is gone.
    pub fn dispatch(&mut self) -> anyhow::Result<()> {
        loop {
            self.conn
                .channel()
                .read_write(Some(Duration::ZERO))
                .map_err(|()| anyhow!("the system bus connection was lost"))?;
            while let Some(msg) = self.conn.channel().pop_message() {
                if let Some(reply) = wrong_signature(&msg) {
                    let _ = self.conn.channel().send(reply);
                    continue;
                }
                if is_ours(&msg) {
                    self.calls.push(msg);
                    continue;
                }
                // Err: not a method call (a signal or a stray reply);
                // nothing to answer.
                let _ = self.cr.handle_message(msg, &self.conn);
            }
            self.conn.channel().flush();
            if !socket_has_data(self.fd) {
                return Ok(());
            }
        }
    }

    /// The calls queued by [`Self::dispatch`], oldest first.
    pub fn take_calls(&mut self) -> Vec<dbus::Message> {
        std::mem::take(&mut self.calls)
    }

    /// Answers `call` with `result` (a serialized response or an error),
    /// unless the caller said it expects no reply (the bus would refuse
    /// the answer and log one line per call).
    pub fn reply(&self, call: &dbus::Message, result: Result<Vec<u8>, CallError>) {
        if call.get_no_reply() {
            return;
        }
        let reply = match result {
            Ok(bytes) => call.method_return().append1(bytes.as_slice()),
            Err(e) => {
                let (name, text) = match &e {
                    CallError::InvalidArgument(m) => (names::ERROR_INVALID_ARGUMENT, m),
                    CallError::Failed(m) => (names::ERROR_FAILED, m),
                    CallError::Unsupported(m) => ("org.freedesktop.DBus.Error.UnknownMethod", m),
                };
                let text = std::ffi::CString::new(text.replace('\0', " "))
                    .unwrap_or_else(|_| c"error".to_owned());
                match dbus::strings::ErrorName::new(name) {
                    Ok(n) => call.error(&n, &text),
                    Err(_) => return,
                }
            }
        };
        let _ = self.conn.channel().send(reply);
        self.conn.channel().flush();
    }

    /// Emits a signal on our object.
    pub fn emit(&self, member: &str, payload: Vec<u8>) {
        match dbus::Message::new_signal(names::PATH, names::INTERFACE, member) {
            Ok(m) => {
                let _ = self.conn.channel().send(m.append1(payload.as_slice()));
                self.conn.channel().flush();
            }
            Err(e) => warn!("cannot build signal {member}: {e}"),
        }
    }

    /// The uid of a bus peer, from the bus daemon (once per peer).
    ///
    /// The call blocks, and while it waits libdbus reads whatever else
    /// arrives into its own queue, where the socket's readiness no longer
    /// shows it: the caller must [`Self::dispatch`] again before the loop
    /// sleeps (`on_dbus` does).
    pub fn caller_uid(&mut self, sender: &str) -> anyhow::Result<u32> {
        if let Some(uid) = self.uids.get(sender) {
            return Ok(*uid);
        }
        let proxy = self.conn.with_proxy(
            "org.freedesktop.DBus",
            "/org/freedesktop/DBus",
            Duration::from_secs(5),
        );
        let (uid,): (u32,) = proxy
            .method_call("org.freedesktop.DBus", "GetConnectionUnixUser", (sender,))
            .with_context(|| format!("cannot learn the uid of {sender}"))?;
        if self.uids.len() >= UID_CACHE {
            self.uids.clear();
        }
        self.uids.insert(sender.to_string(), uid);
        Ok(uid)
    }
}

/// The methods this build serves; the others answer UnknownMethod.
pub const IMPLEMENTED: &[&str] = &[
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
];

/// The sender of a call, for logs.
pub fn sender(msg: &dbus::Message) -> String {
    msg.sender()
        .map(|s| s.to_string())
        .unwrap_or_else(|| "<unknown>".into())
}

/// Whether `msg` is a method call for the manager: on our object, and of
/// our interface, or of no interface (the D-Bus spec lets a caller leave
/// it out) naming one of our methods. Calls on other paths go to
/// crossroads, which answers `UnknownObject` (they used to be served as if
/// they were on our path); an interface-less call used to reach
/// crossroads' placeholder handler and get a bare `Failed`.
fn is_ours(msg: &dbus::Message) -> bool {
    if msg.msg_type() != dbus::MessageType::MethodCall || msg.path().as_deref() != Some(names::PATH)
    {
        return false;
    }
    match msg.interface() {
        Some(interface) => &*interface == names::INTERFACE,
        None => msg.member().is_some_and(|m| names::method(&m).is_some()),
    }
}

/// A call to one of our methods with arguments other than `ay` (`ay h` for
/// methods with a lifeline) is bad input: answer `InvalidArgument` naming
/// the expected signature, instead of the generic error crossroads gives.
fn wrong_signature(msg: &dbus::Message) -> Option<dbus::Message> {
    if !is_ours(msg) {
        return None;
    }
    let member = msg.member()?;
    let spec = names::method(&member)?;
    let expected = if spec.takes_fd { "ayh" } else { "ay" };
    let got = signature_of(msg);
    if got == expected {
        return None;
    }
    warn!(
        "{member} from {} refused: arguments ({got}) instead of ({expected})",
        msg.sender().map(|s| s.to_string()).unwrap_or_default()
    );
    let text = format!(
        "{member} takes ({expected}): a serialized {} protobuf{}; got ({got})",
        spec.request,
        if spec.takes_fd {
            " and a file descriptor"
        } else {
            ""
        }
    );
    let name = dbus::strings::ErrorName::new(names::ERROR_INVALID_ARGUMENT).ok()?;
    let text = std::ffi::CString::new(text).ok()?;
    Some(msg.error(&name, &text))
}

/// The message body's full signature, e.g. "ayh".
fn signature_of(msg: &dbus::Message) -> String {
    let mut it = msg.iter_init();
    let mut sig = String::new();
    // Iter::signature panics past the last argument, so stop on Invalid.
    while it.arg_type() != dbus::arg::ArgType::Invalid {
        sig.push_str(&it.signature());
        if !it.next() {
            break;
        }
    }
    sig
}

fn socket_has_data(fd: RawFd) -> bool {
    let mut b = 0u8;
    // SAFETY: a 1-byte peek into a local buffer.
    let n = unsafe {
        libc::recv(
            fd,
            (&mut b as *mut u8).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    n > 0
}
