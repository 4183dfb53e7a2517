//! An in-process stand-in for patchpaneld, for tests (feature
//! `fake-service`).
//!
//! It owns `org.chromium.PatchPanel` on a test bus, answers each method with
//! a reply fixed in advance, records every call (request bytes and any file
//! descriptor, which it keeps open, as the real daemon keeps a lifeline) and
//! emits signals on request. Tests of the client and of the
//! CLI use it while the daemon does not implement a method yet, and to
//! produce answers (errors, malformed bytes) the daemon never gives.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use dbus::blocking::stdintf::org_freedesktop_dbus::RequestNameReply;
use dbus::blocking::Connection;
use dbus::channel::{Channel, MatchingReceiver, Sender as _};
use dbus::message::{MatchRule, MessageType};
use dbus::strings::ErrorName;
use dbus::Message;
use patchpanel_proto::names;

use crate::Error;

/// How often the serving thread looks for commands between bus messages.
const TICK: Duration = Duration::from_millis(10);

/// What the fake answers to one method.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// A method return carrying these bytes as its `ay`.
    Bytes(Vec<u8>),
    /// A D-Bus error reply.
    Error {
        /// The error name, e.g. [`names::ERROR_FAILED`].
        name: String,
        /// Its message.
        message: String,
    },
}

/// One call the fake received.
#[derive(Debug)]
pub struct ReceivedCall {
    /// The D-Bus member.
    pub method: String,
    /// The caller's unique bus name.
    pub sender: String,
    /// The `ay` argument.
    pub request: Vec<u8>,
    /// The `h` argument, if the call had one: the fake's own copy.
    pub fd: Option<OwnedFd>,
}

/// Sets up the replies of a [`FakeService`].
#[derive(Debug, Default)]
pub struct FakeServiceBuilder {
    replies: HashMap<String, Reply>,
}

impl FakeServiceBuilder {
    /// Answer `method` with `response`, encoded.
    pub fn reply<M: prost::Message>(self, method: &str, response: &M) -> Self {
        self.reply_bytes(method, response.encode_to_vec())
    }

    /// Answer `method` with these bytes (e.g. a malformed response).
    pub fn reply_bytes(mut self, method: &str, bytes: Vec<u8>) -> Self {
        self.replies.insert(method.to_string(), Reply::Bytes(bytes));
        self
    }

    /// Answer `method` with the D-Bus error `name`.
    pub fn error(mut self, method: &str, name: &str, message: &str) -> Self {
        self.replies.insert(
            method.to_string(),
            Reply::Error {
                name: name.to_string(),
                message: message.to_string(),
            },
        );
        self
    }

    /// Connects to the bus at `address`, takes the service name and starts
    /// answering on a thread of its own.
    pub fn start(self, address: &str) -> Result<FakeService, Error> {
        let (ready_tx, ready_rx) = mpsc::channel();
        let (commands, command_rx) = mpsc::channel();
        let calls = Arc::new(CallLog::default());
        let log = Arc::clone(&calls);
        let address = address.to_string();
        let replies = self.replies;
        let thread = std::thread::Builder::new()
            .name("fake-patchpanel".into())
            .spawn(move || serve(&address, replies, log, command_rx, ready_tx))
            .map_err(|err| Error::DBus {
                method: "fake service".into(),
                name: "spawn".into(),
                message: err.to_string(),
            })?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(FakeService {
                commands,
                thread: Some(thread),
                calls,
            }),
            Ok(Err(err)) => {
                let _ = thread.join();
                Err(err)
            }
            Err(_) => {
                let _ = thread.join();
                Err(Error::DBus {
                    method: "fake service".into(),
                    name: "thread".into(),
                    message: "the serving thread died before it was ready".into(),
                })
            }
        }
    }
}

/// A running fake patchpaneld; stops (and releases the name and every kept
/// descriptor) on drop.
#[derive(Debug)]
pub struct FakeService {
    commands: Sender<Command>,
    thread: Option<JoinHandle<()>>,
    calls: Arc<CallLog>,
}

impl FakeService {
    /// A builder with no replies: every method answers `UnknownMethod`.
    pub fn builder() -> FakeServiceBuilder {
        FakeServiceBuilder::default()
    }

    /// Waits up to `timeout` for a call of `method` and removes it from the
    /// log.
    pub fn wait_for_call(&self, method: &str, timeout: Duration) -> Option<ReceivedCall> {
        self.calls.take(method, timeout)
    }

    /// Emits `NetworkDeviceChanged` with `signal` and waits until it is
    /// written to the bus.
    pub fn emit_device_changed(
        &self,
        signal: &patchpanel_proto::NetworkDeviceChangedSignal,
    ) -> Result<(), Error> {
        self.emit_device_changed_bytes(prost::Message::encode_to_vec(signal))
    }

    /// Emits `NetworkDeviceChanged` with these bytes (e.g. malformed ones).
    pub fn emit_device_changed_bytes(&self, bytes: Vec<u8>) -> Result<(), Error> {
        self.emit_signal(names::NETWORK_DEVICE_CHANGED, bytes)
    }

    /// Emits the signal `member` of the interface with these bytes as its
    /// `ay` and waits until it is written to the bus.
    pub fn emit_signal(&self, member: &str, bytes: Vec<u8>) -> Result<(), Error> {
        let (done_tx, done_rx) = mpsc::channel();
        let stopped = || Error::DBus {
            method: "fake service".into(),
            name: "stopped".into(),
            message: "the fake service is not running".into(),
        };
        self.commands
            .send(Command::Emit(member.to_string(), bytes, done_tx))
            .map_err(|_| stopped())?;
        match done_rx.recv_timeout(Duration::from_secs(5)) {
            Ok(result) => result,
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => Err(stopped()),
        }
    }
}

impl Drop for FakeService {
    fn drop(&mut self) {
        let _ = self.commands.send(Command::Stop);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Waits up to `timeout` for the write end of a lifeline to report that the
/// read end closed (`POLLERR`, as a pipe's write end does); `Ok(false)` if it
/// did not.
pub fn wait_for_hangup(fd: BorrowedFd<'_>, timeout: Duration) -> io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        // POLLERR and POLLHUP are always reported; asking for nothing else
        // keeps a writable pipe from waking us.
        events: 0,
        revents: 0,
    };
    let millis = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: one valid pollfd, count 1.
    let rc = unsafe { libc::poll(&mut pfd, 1, millis) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(pfd.revents & (libc::POLLERR | libc::POLLHUP) != 0)
}

enum Command {
    Emit(String, Vec<u8>, Sender<Result<(), Error>>),
    Stop,
}

#[derive(Debug, Default)]
struct CallLog {
    calls: Mutex<Vec<ReceivedCall>>,
    arrived: Condvar,
}

impl CallLog {
    fn push(&self, call: ReceivedCall) {
        self.calls
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(call);
        self.arrived.notify_all();
    }

    fn take(&self, method: &str, timeout: Duration) -> Option<ReceivedCall> {
        let deadline = Instant::now() + timeout;
        let mut calls = self.calls.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if let Some(at) = calls.iter().position(|c| c.method == method) {
                return Some(calls.remove(at));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            calls = self
                .arrived
                .wait_timeout(calls, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

fn serve(
    address: &str,
    replies: HashMap<String, Reply>,
    log: Arc<CallLog>,
    commands: Receiver<Command>,
    ready: Sender<Result<(), Error>>,
) {
    let conn = match connect_and_own_name(address) {
        Ok(conn) => conn,
        Err(err) => {
            let _ = ready.send(Err(err));
            return;
        }
    };
    conn.start_receive(
        MatchRule::new_method_call(),
        Box::new(move |msg, conn| {
            let call = receive(&msg);
            let reply = answer(&msg, &replies, &call.method);
            log.push(call);
            let _ = conn.send(reply);
            true
        }),
    );
    let _ = ready.send(Ok(()));
    loop {
        match commands.try_recv() {
            Ok(Command::Emit(member, bytes, done)) => {
                let _ = done.send(emit(&conn, &member, bytes));
            }
            Ok(Command::Stop) | Err(TryRecvError::Disconnected) => return,
            Err(TryRecvError::Empty) => {}
        }
        if conn.process(TICK).is_err() {
            return;
        }
    }
}

fn connect_and_own_name(address: &str) -> Result<Connection, Error> {
    let connect_error = |err: dbus::Error| Error::Connect {
        address: Some(address.to_string()),
        message: err.message().unwrap_or_default().to_string(),
    };
    let mut channel = Channel::open_private(address).map_err(connect_error)?;
    channel.register().map_err(connect_error)?;
    let conn = Connection::from(channel);
    let reply = conn
        .request_name(names::SERVICE, false, false, true)
        .map_err(|err| Error::from_call("RequestName", Duration::ZERO, &err))?;
    if reply != RequestNameReply::PrimaryOwner {
        return Err(Error::DBus {
            method: "RequestName".into(),
            name: "NotPrimaryOwner".into(),
            message: format!("{} is owned by someone else", names::SERVICE),
        });
    }
    Ok(conn)
}

fn receive(msg: &Message) -> ReceivedCall {
    let mut args = msg.iter_init();
    let request: Vec<u8> = args.read().unwrap_or_default();
    let fd: Option<OwnedFd> = args.read().ok();
    ReceivedCall {
        method: msg.member().map(|m| m.to_string()).unwrap_or_default(),
        sender: msg.sender().map(|s| s.to_string()).unwrap_or_default(),
        request,
        fd,
    }
}

fn answer(msg: &Message, replies: &HashMap<String, Reply>, method: &str) -> Message {
    let ours = msg.msg_type() == MessageType::MethodCall
        && msg.interface().as_deref() == Some(names::INTERFACE);
    match replies.get(method).filter(|_| ours) {
        Some(Reply::Bytes(bytes)) => msg.method_return().append1(bytes.clone()),
        Some(Reply::Error { name, message }) => error_reply(msg, name, message),
        None => error_reply(
            msg,
            "org.freedesktop.DBus.Error.UnknownMethod",
            &format!("the fake service has no reply for {method}"),
        ),
    }
}

fn error_reply(msg: &Message, name: &str, message: &str) -> Message {
    let name = ErrorName::new(name)
        .unwrap_or_else(|_| ErrorName::from("org.freedesktop.DBus.Error.Failed"));
    let text = std::ffi::CString::new(message.replace('\0', " ")).unwrap_or_default();
    msg.error(&name, &text)
}

fn emit(conn: &Connection, member: &str, bytes: Vec<u8>) -> Result<(), Error> {
    let member = dbus::strings::Member::new(member)
        .map_err(|_| Error::InvalidMethodName(member.to_string()))?;
    let signal =
        Message::signal(&names::PATH.into(), &names::INTERFACE.into(), &member).append1(bytes);
    conn.send(signal).map_err(|()| Error::DBus {
        method: member.to_string(),
        name: "send".into(),
        message: "cannot queue the signal".into(),
    })?;
    conn.channel().flush();
    Ok(())
}
