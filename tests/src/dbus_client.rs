//! Driving `org.chromium.PatchPanel` over the private bus, two ways:
//! the stock `dbus-send` tool (what an operator or a shell script would use),
//! and a `dbus-rs` client for raw calls whose errors are read by name.

use std::collections::HashMap;
use std::fmt;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use dbus::blocking::Connection;
use dbus::channel::Channel;
use dbus::Message;

use crate::command::output;

pub const SERVICE: &str = "org.chromium.PatchPanel";
pub const OBJECT_PATH: &str = "/org/chromium/PatchPanel";
pub const INTERFACE: &str = "org.chromium.PatchPanel";
pub const ERROR_INVALID_ARGUMENT: &str = "org.chromium.PatchPanel.Error.InvalidArgument";
pub const ERROR_FAILED: &str = "org.chromium.PatchPanel.Error.Failed";

/// How long one method call may take before the client gives up.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// A D-Bus error reply (or a client-side failure, named like one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MethodError {
    pub name: String,
    pub message: String,
}

impl MethodError {
    /// Reads `Error <name>: <message>` as printed by `dbus-send` on stderr.
    pub fn from_dbus_send_stderr(stderr: &str) -> Option<Self> {
        let line = stderr
            .lines()
            .find_map(|l| l.trim().strip_prefix("Error "))?;
        let (name, message) = line.split_once(':').unwrap_or((line, ""));
        Some(Self {
            name: name.trim().to_string(),
            message: message.trim().to_string(),
        })
    }
}

impl fmt::Display for MethodError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.name, self.message)
    }
}

impl std::error::Error for MethodError {}

impl From<dbus::Error> for MethodError {
    fn from(err: dbus::Error) -> Self {
        Self {
            name: err.name().unwrap_or("(no error name)").to_string(),
            message: err.message().unwrap_or_default().to_string(),
        }
    }
}

/// A private connection to a bus, calling PatchPanel methods with raw arguments.
pub struct BusClient {
    conn: Connection,
    address: String,
}

impl fmt::Debug for BusClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BusClient")
            .field("address", &self.address)
            .field("unique_name", &self.conn.unique_name().to_string())
            .finish()
    }
}

impl BusClient {
    /// Opens and registers a private connection to the bus at `address`.
    pub fn connect(address: &str) -> Result<Self> {
        let mut channel = Channel::open_private(address)
            .with_context(|| format!("cannot connect to the bus at {address}"))?;
        channel
            .register()
            .with_context(|| format!("cannot register on the bus at {address}"))?;
        Ok(Self {
            conn: Connection::from(channel),
            address: address.to_string(),
        })
    }

    /// Calls `method` with one `ay` argument; returns the `ay` reply.
    pub fn call_bytes(&self, method: &str, request: &[u8]) -> Result<Vec<u8>, MethodError> {
        let proxy = self.conn.with_proxy(SERVICE, OBJECT_PATH, CALL_TIMEOUT);
        let (reply,): (Vec<u8>,) = proxy.method_call(INTERFACE, method, (request.to_vec(),))?;
        Ok(reply)
    }

    /// Calls `method` with one `s` argument instead of the `ay` it expects.
    pub fn call_string(&self, method: &str, argument: &str) -> Result<Vec<u8>, MethodError> {
        let proxy = self.conn.with_proxy(SERVICE, OBJECT_PATH, CALL_TIMEOUT);
        let (reply,): (Vec<u8>,) = proxy.method_call(INTERFACE, method, (argument.to_string(),))?;
        Ok(reply)
    }

    /// `GetDevices` with an empty request; returns the serialized response.
    pub fn get_devices(&self) -> Result<Vec<u8>, MethodError> {
        self.call_bytes("GetDevices", &[])
    }

    /// A call to PatchPanel's `member` without arguments, for a caller to
    /// append any (also wrong ones) to.
    pub fn method_call(member: &str) -> Result<Message, MethodError> {
        Message::new_method_call(SERVICE, OBJECT_PATH, INTERFACE, member).map_err(|e| MethodError {
            name: "(client) bad method call".to_string(),
            message: e,
        })
    }

    /// Sends a ready-made `msg` and waits up to [`CALL_TIMEOUT`] for the
    /// reply: the method return, or the error reply as a [`MethodError`].
    pub fn call_message(&self, msg: Message) -> Result<Message, MethodError> {
        Ok(self
            .conn
            .channel()
            .send_with_reply_and_block(msg, CALL_TIMEOUT)?)
    }

    /// Sends `calls` pipelined: up to `window` of them are in flight at
    /// once (sent without waiting for replies), and every reply is
    /// collected, in the order of `calls`. Fails if no reply at all arrives
    /// for `idle_timeout`, or the connection breaks.
    pub fn pipeline(
        &self,
        calls: impl IntoIterator<Item = Message>,
        window: usize,
        idle_timeout: Duration,
    ) -> Result<Vec<Result<Message, MethodError>>> {
        let channel = self.conn.channel();
        let mut calls = calls.into_iter().enumerate();
        let mut pending: HashMap<u32, usize> = HashMap::new();
        let mut results: Vec<Option<Result<Message, MethodError>>> = Vec::new();
        let mut exhausted = false;
        loop {
            while !exhausted && pending.len() < window.max(1) {
                let Some((i, msg)) = calls.next() else {
                    exhausted = true;
                    break;
                };
                let serial = channel
                    .send(msg)
                    .map_err(|()| anyhow::anyhow!("cannot send call {i}: out of memory"))?;
                pending.insert(serial, i);
                results.push(None);
            }
            if pending.is_empty() {
                break;
            }
            channel.flush();
            let Some(mut reply) = channel
                .blocking_pop_message(idle_timeout)
                .context("the bus connection broke during the pipeline")?
            else {
                bail!(
                    "no reply for {idle_timeout:?} with {} call(s) in flight ({} answered)",
                    pending.len(),
                    results.iter().filter(|r| r.is_some()).count()
                );
            };
            let Some(i) = reply.get_reply_serial().and_then(|s| pending.remove(&s)) else {
                continue; // a signal, or a reply to something else
            };
            results[i] = Some(match reply.as_result() {
                Ok(_) => Ok(reply),
                Err(err) => Err(err.into()),
            });
        }
        Ok(results
            .into_iter()
            .map(|r| r.expect("every call was answered"))
            .collect())
    }

    /// Sends `calls` at once with the NO_REPLY_EXPECTED flag, without
    /// waiting for anything (the bus limits pending replies per
    /// connection, not calls that expect none); returns how many were
    /// sent once they are all written to the socket.
    pub fn send_without_replies(&self, calls: impl IntoIterator<Item = Message>) -> Result<usize> {
        let channel = self.conn.channel();
        let mut sent = 0;
        for mut msg in calls {
            msg.set_no_reply(true);
            channel
                .send(msg)
                .map_err(|()| anyhow::anyhow!("cannot send call {sent}: out of memory"))?;
            sent += 1;
        }
        channel.flush();
        Ok(sent)
    }

    /// The introspection XML of PatchPanel's object.
    pub fn introspect(&self) -> Result<String, MethodError> {
        let proxy = self.conn.with_proxy(SERVICE, OBJECT_PATH, CALL_TIMEOUT);
        let (xml,): (String,) =
            proxy.method_call("org.freedesktop.DBus.Introspectable", "Introspect", ())?;
        Ok(xml)
    }

    /// Whether `name` currently has an owner on the bus.
    pub fn name_has_owner(&self, name: &str) -> Result<bool, MethodError> {
        let proxy = self.conn.with_proxy(
            "org.freedesktop.DBus",
            "/org/freedesktop/DBus",
            CALL_TIMEOUT,
        );
        let (owned,): (bool,) =
            proxy.method_call("org.freedesktop.DBus", "NameHasOwner", (name.to_string(),))?;
        Ok(owned)
    }
}

/// `msg` without its INTERFACE header field, which the D-Bus spec makes
/// optional for method calls (dbus-rs always sets one). The field's code
/// is changed to an unknown one, which receivers must ignore and the bus
/// drops when it forwards the message. Not for messages carrying fds.
pub fn without_interface(msg: Message) -> Result<Message> {
    const INTERFACE_FIELD: [u8; 4] = [2, 1, b's', 0];
    // libdbus does not load a message without a serial; the connection
    // keeps one it is given, and replies are matched to it.
    static SERIAL: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1 << 30);
    let mut msg = msg;
    msg.set_serial(SERIAL.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    let mut bytes = Vec::new();
    msg.marshal(|chunk| {
        bytes.extend_from_slice(chunk);
        Ok::<(), ()>(())
    })
    .map_err(|()| anyhow::anyhow!("cannot marshal {msg:?}"))?;
    // The header fields array starts at 16; its structs are 8-aligned.
    let at = (16..bytes.len().saturating_sub(4))
        .step_by(8)
        .find(|&i| bytes[i..i + 4] == INTERFACE_FIELD)
        .context("no interface field in the message")?;
    bytes[at] = 0x7f;
    Message::demarshal(&bytes).map_err(|e| anyhow::anyhow!("cannot demarshal: {e}"))
}

/// `GetDevices` with an empty request through `dbus-send`; returns the reply
/// bytes, or what `dbus-send` printed on failure.
pub fn dbus_send_get_devices(bus_address: &str) -> Result<Vec<u8>, String> {
    dbus_send_bytes(bus_address, "GetDevices", &[])
}

/// Calls `method` with `request` as `array:byte:` through `dbus-send`.
pub fn dbus_send_bytes(bus_address: &str, method: &str, request: &[u8]) -> Result<Vec<u8>, String> {
    let bytes: Vec<String> = request.iter().map(u8::to_string).collect();
    dbus_send(
        bus_address,
        method,
        &format!("array:byte:{}", bytes.join(",")),
    )
}

/// Calls `method` with a `string:` argument through `dbus-send`.
pub fn dbus_send_string(
    bus_address: &str,
    method: &str,
    argument: &str,
) -> Result<Vec<u8>, String> {
    dbus_send(bus_address, method, &format!("string:{argument}"))
}

fn dbus_send(bus_address: &str, method: &str, argument: &str) -> Result<Vec<u8>, String> {
    let mut cmd = Command::new("dbus-send");
    cmd.arg(format!("--bus={bus_address}"))
        .arg("--print-reply")
        .arg(format!("--reply-timeout={}", CALL_TIMEOUT.as_millis()))
        .arg(format!("--dest={SERVICE}"))
        .arg(OBJECT_PATH)
        .arg(format!("{INTERFACE}.{method}"))
        .arg(argument);
    let out = output(&mut cmd).map_err(|err| format!("{err:#}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stderr).trim(),
            stdout.trim()
        ));
    }
    parse_byte_array_reply(&stdout)
}

/// Reads the one `array of bytes` in a `dbus-send --print-reply` output.
///
/// `dbus-send` prints a byte array in one of four forms: an empty one as a
/// generic empty array (`array [` newline `]`); as a quoted string when every
/// byte is printable ASCII; the same with ` + \0` when only the last byte is
/// NUL; and otherwise as hex: `array of bytes [` newline, rows of `%02x`, `]`.
pub fn parse_byte_array_reply(stdout: &str) -> Result<Vec<u8>, String> {
    const MARKER: &str = "array of bytes ";
    const EMPTY: &str = "array [";
    let Some(start) = stdout.find(MARKER) else {
        let empty = stdout
            .find(EMPTY)
            .map(|at| &stdout[at + EMPTY.len()..])
            .is_some_and(|rest| rest.trim() == "]");
        return if empty {
            Ok(Vec::new())
        } else {
            Err(format!("no byte array in dbus-send output {stdout:?}"))
        };
    };
    let rest = &stdout[start + MARKER.len()..];
    if let Some(hex) = rest.strip_prefix('[') {
        let end = hex
            .find(']')
            .ok_or_else(|| format!("unterminated byte array in {stdout:?}"))?;
        return hex[..end]
            .split_whitespace()
            .map(|b| u8::from_str_radix(b, 16).map_err(|e| format!("bad byte {b:?}: {e}")))
            .collect();
    }
    if let Some(quoted) = rest.strip_prefix('"') {
        let line = quoted.lines().next().unwrap_or_default();
        let (text, nul) = match line.strip_suffix("\" + \\0") {
            Some(text) => (text, true),
            None => (
                line.strip_suffix('"')
                    .ok_or_else(|| format!("unterminated string form in {stdout:?}"))?,
                false,
            ),
        };
        let mut bytes = text.as_bytes().to_vec();
        if nul {
            bytes.push(0);
        }
        return Ok(bytes);
    }
    Err(format!("unknown byte array form in {stdout:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str =
        "method return time=1700000000.1 sender=:1.0 -> destination=:1.3 serial=5 reply_serial=2\n";

    #[test]
    fn empty_array_is_printed_as_a_generic_empty_array() {
        let out = format!("{HEADER}   array [\n   ]\n");
        assert_eq!(parse_byte_array_reply(&out), Ok(vec![]));
    }

    #[test]
    fn non_empty_generic_array_is_not_a_byte_array() {
        let out = format!("{HEADER}   array [\n      string \"x\"\n   ]\n");
        assert!(parse_byte_array_reply(&out).is_err());
    }

    #[test]
    fn printable_bytes_are_printed_as_a_string() {
        let out = format!("{HEADER}   array of bytes \"a\"b\"\n");
        assert_eq!(parse_byte_array_reply(&out), Ok(b"a\"b".to_vec()));
    }

    #[test]
    fn trailing_nul_is_printed_as_plus_backslash_zero() {
        let out = format!("{HEADER}   array of bytes \"ab\" + \\0\n");
        assert_eq!(parse_byte_array_reply(&out), Ok(b"ab\0".to_vec()));
    }

    #[test]
    fn binary_bytes_are_printed_as_hex_rows() {
        let out = format!(
            "{HEADER}   array of bytes [\n      0a 02 08 01 00 ff 10 11 12 13 14 15 16 17 18 19\n      \
             1a\n   ]\n"
        );
        let mut expected = vec![0x0a, 0x02, 0x08, 0x01, 0x00, 0xff];
        expected.extend(0x10..=0x1a);
        assert_eq!(parse_byte_array_reply(&out), Ok(expected));
    }

    #[test]
    fn output_without_a_byte_array_is_an_error() {
        assert!(parse_byte_array_reply(HEADER).is_err());
    }

    #[test]
    fn dbus_send_error_line_gives_name_and_message() {
        let stderr =
            "Error org.chromium.PatchPanel.Error.InvalidArgument: cannot decode: bad tag\n";
        assert_eq!(
            MethodError::from_dbus_send_stderr(stderr),
            Some(MethodError {
                name: ERROR_INVALID_ARGUMENT.to_string(),
                message: "cannot decode: bad tag".to_string(),
            })
        );
    }
}
