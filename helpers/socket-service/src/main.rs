//! `patchpanel-socket-service`: owns `org.chromium.SocketService` and
//! serves its one method, `TagSocket`, on its own bus connection, so a
//! caller never waits behind the manager (whose loop may be waiting on a
//! datapath batch). It holds CAP_NET_ADMIN only, for `SO_MARK`.
//!
//! From the manager it gets the networks a tag may name
//! ([`Request::SocketNetworks`], replayed after a respawn) and the sockets
//! of `TagSocket` calls that arrived on `org.chromium.PatchPanel`
//! ([`Request::TagSocket`]).

use std::collections::BTreeSet;
use std::os::fd::{AsFd, OwnedFd, RawFd};
use std::process::ExitCode;
use std::time::Duration;

use dbus::blocking::LocalConnection;
use dbus::channel::{BusType, Channel};
use dbus::strings::ErrorName;
use dbus::Message;
use log::{debug, error, info, warn};
use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};
use patchpanel_helper_runtime::Service;
use patchpanel_ipc::{Event, HelperError, Reply, Request};
use patchpanel_proto::{names, TagSocketResponse};
use patchpanel_sandbox::Process;
use patchpanel_socket_service::{apply, parse, Action, ApplyError};
use prost::Message as _;

const BUS: Token = Token(1);

const INTROSPECTION: &str = r#"<!DOCTYPE node PUBLIC "-//freedesktop//DTD D-BUS Object Introspection 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/introspect.dtd">
<node>
  <interface name="org.chromium.SocketService">
    <method name="TagSocket">
      <arg name="request" type="ay" direction="in"/>
      <arg name="socket_fd" type="h" direction="in"/>
      <arg name="response" type="ay" direction="out"/>
    </method>
  </interface>
  <interface name="org.freedesktop.DBus.Introspectable">
    <method name="Introspect">
      <arg name="xml_data" type="s" direction="out"/>
    </method>
  </interface>
</node>
"#;

struct Bus {
    conn: LocalConnection,
    fd: RawFd,
}

#[derive(Default)]
struct SocketService {
    bus: Option<Bus>,
    networks: BTreeSet<u32>,
}

impl Service for SocketService {
    fn handle(
        &mut self,
        request: &Request,
        fds: Vec<OwnedFd>,
    ) -> Option<Result<Reply, HelperError>> {
        Some(match request {
            Request::SocketNetworks(list) => {
                self.networks = list.iter().copied().collect();
                debug!("networks a tag may name: {:?}", self.networks);
                Ok(Reply::Done)
            }
            Request::TagSocket(tag) => match fds.as_slice() {
                [socket] => match apply(socket.as_fd(), *tag, &self.networks) {
                    Ok((old, new)) => {
                        debug!("TagSocket (PatchPanel): mark {old:#x} -> {new:#x}");
                        Ok(Reply::Done)
                    }
                    Err(ApplyError::Invalid(why)) => Err(HelperError::InvalidArgument(why)),
                    Err(ApplyError::Os(operation, e)) => Err(HelperError::Os {
                        operation: operation.into(),
                        errno: e.raw_os_error(),
                        message: e.to_string(),
                    }),
                },
                _ => Err(HelperError::Refused(format!(
                    "TagSocket takes exactly one socket, got {} descriptors",
                    fds.len()
                ))),
            },
            _ => return None,
        })
    }

    fn start(&mut self, registry: &Registry) -> Result<(), String> {
        // Not fatal: TagSocket through org.chromium.PatchPanel works all the
        // same, and the manager must not lose every guest to a missing
        // policy file.
        match own_name() {
            Ok(bus) => {
                registry
                    .register(&mut SourceFd(&bus.fd), BUS, Interest::READABLE)
                    .map_err(|e| format!("epoll: {e}"))?;
                info!("owning {} on the system bus", names::SOCKET_SERVICE_NAME);
                self.bus = Some(bus);
            }
            Err(e) => error!(
                "{e}; shill and dns-proxy built since mid-2024 wait for this name before they use patchpanel \
                 (install upstart/org.chromium.SocketService.conf as /etc/dbus-1/system.d/org.chromium.SocketService.conf)"
            ),
        }
        Ok(())
    }

    fn ready(&mut self, token: Token) -> Result<Vec<Event>, String> {
        if token == BUS {
            self.drain()?;
        }
        Ok(Vec::new())
    }
}

impl SocketService {
    /// Reads until libdbus and the socket are empty (libdbus is
    /// level-triggered, mio edge-triggered), answering every call.
    fn drain(&mut self) -> Result<(), String> {
        let Some(bus) = self.bus.as_ref() else {
            return Ok(());
        };
        loop {
            bus.conn
                .channel()
                .read_write(Some(Duration::ZERO))
                .map_err(|()| "the system bus connection was lost".to_string())?;
            while let Some(msg) = bus.conn.channel().pop_message() {
                if let Some(reply) = answer(&msg, &self.networks) {
                    if bus.conn.channel().send(reply).is_err() {
                        return Err("the system bus connection was lost".into());
                    }
                }
            }
            bus.conn.channel().flush();
            if !socket_has_data(bus.fd) {
                return Ok(());
            }
        }
    }
}

/// Connects to the system bus and takes the service's name.
fn own_name() -> Result<Bus, String> {
    let mut channel = Channel::get_private(BusType::System).map_err(|e| {
        format!(
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
    use dbus::blocking::stdintf::org_freedesktop_dbus::RequestNameReply;
    let reply = conn
        .request_name(names::SOCKET_SERVICE_NAME, false, false, true)
        .map_err(|e| {
            format!(
                "cannot own {}: {}",
                names::SOCKET_SERVICE_NAME,
                e.message().unwrap_or("unknown error")
            )
        })?;
    if reply != RequestNameReply::PrimaryOwner {
        return Err(format!(
            "cannot own {}: another process owns it",
            names::SOCKET_SERVICE_NAME
        ));
    }
    Ok(Bus { conn, fd })
}

/// The reply to one message; `None` for what needs none (signals, replies,
/// calls that asked for no reply).
fn answer(msg: &Message, networks: &BTreeSet<u32>) -> Option<Message> {
    if msg.msg_type() != dbus::MessageType::MethodCall {
        return None;
    }
    let reply = match (msg.interface().as_deref(), msg.member().as_deref()) {
        (Some("org.freedesktop.DBus.Introspectable") | None, Some("Introspect")) => {
            msg.method_return().append1(INTROSPECTION)
        }
        (Some("org.freedesktop.DBus.Peer") | None, Some("Ping")) => msg.method_return(),
        (Some(names::SOCKET_SERVICE_INTERFACE) | None, Some(names::TAG_SOCKET)) => {
            tag_socket(msg, networks)
        }
        (interface, member) => error(
            msg,
            "org.freedesktop.DBus.Error.UnknownMethod",
            &format!(
                "{}.{} is not a method of {}",
                interface.unwrap_or("?"),
                member.unwrap_or("?"),
                names::SOCKET_SERVICE_NAME
            ),
        ),
    };
    (!msg.get_no_reply()).then_some(reply)
}

fn tag_socket(msg: &Message, networks: &BTreeSet<u32>) -> Message {
    let caller = msg.sender().map(|s| s.to_string()).unwrap_or_default();
    let (bytes, socket) = match msg.read2::<Vec<u8>, OwnedFd>() {
        Ok(args) => args,
        Err(_) => {
            warn!("TagSocket from {caller} refused: arguments are not (ay h)");
            return error(
                msg,
                names::SOCKET_SERVICE_ERROR_INVALID_ARGUMENT,
                "TagSocket takes (ay h): a serialized TagSocketRequest protobuf and the socket",
            );
        }
    };
    let outcome = parse(&bytes)
        .map_err(ApplyError::Invalid)
        .and_then(|action| match action {
            Action::LeaveAlone => Ok(None),
            Action::Tag(tag) => apply(socket.as_fd(), tag, networks).map(Some),
        });
    match outcome {
        Ok(marks) => {
            match marks {
                Some((old, new)) => debug!("TagSocket from {caller}: mark {old:#x} -> {new:#x}"),
                None => debug!("TagSocket from {caller}: annotated, socket left alone"),
            }
            let response = TagSocketResponse { success: true };
            msg.method_return().append1(response.encode_to_vec())
        }
        Err(ApplyError::Invalid(why)) => {
            warn!("TagSocket from {caller} refused: {why}");
            error(msg, names::SOCKET_SERVICE_ERROR_INVALID_ARGUMENT, &why)
        }
        Err(e) => {
            warn!("TagSocket from {caller} failed: {e}");
            error(msg, names::SOCKET_SERVICE_ERROR_FAILED, &e.to_string())
        }
    }
}

fn error(msg: &Message, name: &str, text: &str) -> Message {
    let name = ErrorName::new(name)
        .unwrap_or_else(|_| ErrorName::from("org.freedesktop.DBus.Error.Failed"));
    let text = std::ffi::CString::new(text.replace('\0', " ")).unwrap_or_default();
    msg.error(&name, &text)
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

fn main() -> ExitCode {
    patchpanel_helper_runtime::run(Process::SocketService, SocketService::default())
}
