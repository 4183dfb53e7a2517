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
use dbus_crossroads::{Context, Crossroads};
use log::{info, warn};
use patchpanel_proto::names;
use prost::Message as _;

use crate::state::State;

static OPERATION_ID: AtomicU64 = AtomicU64::new(1);

fn next_operation() -> u64 {
    OPERATION_ID.fetch_add(1, Ordering::Relaxed)
}

fn caller(ctx: &Context) -> String {
    ctx.message()
        .sender()
        .map(|s| s.to_string())
        .unwrap_or_else(|| "<unknown>".into())
}

/// Logs a refused call and turns it into an `InvalidArgument` D-Bus error.
pub fn invalid_argument(
    ctx: &Context,
    method: &str,
    op: u64,
    what: impl std::fmt::Display,
) -> MethodErr {
    warn!("{method} from {} (op {op}) refused: {what}", caller(ctx));
    MethodErr::from((names::ERROR_INVALID_ARGUMENT, format!("{method}: {what}")))
}

/// The connection and the method table.
pub struct DbusService {
    conn: LocalConnection,
    cr: Crossroads,
    fd: RawFd,
}

impl std::fmt::Debug for DbusService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DbusService").field("fd", &self.fd).finish()
    }
}

impl DbusService {
    /// Connects to the system bus (`DBUS_SYSTEM_BUS_ADDRESS` is honoured)
    /// and builds the method table. The name is requested later, once the
    /// helpers are up, so that owning it means "ready".
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
        let iface = cr.register(names::INTERFACE, |b| {
            b.method(
                names::GET_DEVICES,
                ("request",),
                ("response",),
                |ctx: &mut Context, state: &mut State, (request,): (Vec<u8>,)| {
                    let op = next_operation();
                    patchpanel_proto::decode_request::<patchpanel_proto::GetDevicesRequest>(
                        &request,
                    )
                    .map_err(|e| invalid_argument(ctx, names::GET_DEVICES, op, e))?;
                    Ok((state.devices().encode_to_vec(),))
                },
            );
        });
        cr.insert(names::PATH, &[iface], State::default());
        Ok(DbusService { conn, cr, fd })
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

    /// Reads, dispatches and writes until libdbus and the socket are empty.
    /// An error means the bus connection is gone.
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
                // A bug in one handler must not take the service down: answer
                // that call with Failed and keep serving.
                let member = msg.member().map(|m| m.to_string()).unwrap_or_default();
                let failed = if msg.msg_type() == dbus::MessageType::MethodCall {
                    internal_error(&msg)
                } else {
                    None
                };
                let handled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    // Err: not a method call (a signal or a stray reply);
                    // nothing to answer.
                    let _ = self.cr.handle_message(msg, &self.conn);
                }));
                if handled.is_err() {
                    log::error!("handler for {member} panicked; answered Failed");
                    if let Some(reply) = failed {
                        let _ = self.conn.channel().send(reply);
                    }
                }
            }
            self.conn.channel().flush();
            if !socket_has_data(self.fd) {
                return Ok(());
            }
        }
    }
}

/// A call to one of our methods with arguments other than `ay` (`ay h` for
/// methods with a lifeline) is bad input: answer `InvalidArgument` naming
/// the expected signature, instead of the generic error crossroads gives.
fn wrong_signature(msg: &dbus::Message) -> Option<dbus::Message> {
    if msg.msg_type() != dbus::MessageType::MethodCall
        || msg.interface().as_deref() != Some(names::INTERFACE)
    {
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

/// The reply for a call whose handler failed unexpectedly.
fn internal_error(msg: &dbus::Message) -> Option<dbus::Message> {
    let name = dbus::strings::ErrorName::new(names::ERROR_FAILED).ok()?;
    let text = std::ffi::CString::new("internal error; see the patchpaneld log").ok()?;
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
