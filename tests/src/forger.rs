//! A hostile local user on the test's bus: signals it sends by unicast to
//! chosen connections, as another uid (`nobody`), with the system Python's
//! `dbus` module (`python3-dbus`, installed by `scripts/bootstrap`).
//!
//! A unicast signal passes the stock system policy (signals are allowed) and
//! reaches its destination whatever match rules the destination added; the
//! bus stamps the forger's own unique name as its sender, which is the only
//! thing that gives a forgery away.

use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use dbus::blocking::Connection;
use dbus::channel::Channel;
use serde_json::{json, Value};

/// One argument of a forged signal, with the type it is sent as.
#[derive(Debug, Clone)]
pub enum Arg {
    /// `s`.
    Str(String),
    /// `s`: the forger's own unique name (known once it has connected).
    OwnName,
    /// `o`.
    Path(String),
    /// `ao`.
    Paths(Vec<String>),
    /// `ay`.
    Bytes(Vec<u8>),
    /// `v` holding the inner argument.
    Variant(Box<Arg>),
}

impl Arg {
    fn signature(&self) -> String {
        match self {
            Arg::Str(_) | Arg::OwnName => "s".into(),
            Arg::Path(_) => "o".into(),
            Arg::Paths(_) => "ao".into(),
            Arg::Bytes(_) => "ay".into(),
            Arg::Variant(_) => "v".into(),
        }
    }

    fn to_json(&self) -> Value {
        match self {
            Arg::Str(s) => json!({ "s": s }),
            Arg::OwnName => json!({ "own_name": true }),
            Arg::Path(p) => json!({ "o": p }),
            Arg::Paths(ps) => json!({ "ao": ps }),
            Arg::Bytes(b) => json!({ "ay": b }),
            Arg::Variant(inner) => json!({ "v": inner.to_json() }),
        }
    }
}

/// What the forger does, in order, on one connection.
#[derive(Debug, Clone)]
pub enum Step {
    /// Sends a signal to `destination` (a unique name) by unicast.
    Signal {
        destination: String,
        path: String,
        interface: String,
        member: String,
        args: Vec<Arg>,
    },
    /// Waits (for the target to act on what it got so far).
    Sleep(Duration),
}

impl Step {
    /// A unicast signal.
    pub fn signal(
        destination: &str,
        path: &str,
        interface: &str,
        member: &str,
        args: Vec<Arg>,
    ) -> Step {
        Step::Signal {
            destination: destination.into(),
            path: path.into(),
            interface: interface.into(),
            member: member.into(),
            args,
        }
    }

    fn to_json(&self) -> Value {
        match self {
            Step::Signal {
                destination,
                path,
                interface,
                member,
                args,
            } => json!({
                "destination": destination,
                "path": path,
                "interface": interface,
                "member": member,
                "signature": args.iter().map(Arg::signature).collect::<String>(),
                "args": args.iter().map(Arg::to_json).collect::<Vec<_>>(),
            }),
            Step::Sleep(d) => json!({ "sleep": d.as_secs_f64() }),
        }
    }
}

/// Sends each step, then makes a round trip to the bus, so that when this
/// returns the bus has routed every forged signal (anything sent afterwards
/// reaches a target after them).
const SCRIPT: &str = r#"
import json, sys, time
import dbus, dbus.lowlevel

bus = dbus.bus.BusConnection(sys.argv[1])
me = bus.get_unique_name()

def value(a):
    (kind, x), = a.items()
    if kind == "s": return dbus.String(x)
    if kind == "own_name": return dbus.String(me)
    if kind == "o": return dbus.ObjectPath(x)
    if kind == "ao": return dbus.Array([dbus.ObjectPath(p) for p in x], signature="o")
    if kind == "ay": return dbus.ByteArray(bytes(x))
    if kind == "v": return value(x)
    raise ValueError(kind)

for step in json.loads(sys.argv[2]):
    if "sleep" in step:
        bus.flush()
        time.sleep(step["sleep"])
        continue
    msg = dbus.lowlevel.SignalMessage(step["path"], step["interface"], step["member"])
    msg.set_destination(step["destination"])
    if step["args"]:
        msg.append(*[value(a) for a in step["args"]], signature=step["signature"])
    bus.send_message(msg)
bus.flush()
bus.call_blocking("org.freedesktop.DBus", "/org/freedesktop/DBus",
                  "org.freedesktop.DBus", "GetId", "", [])
print(me)
"#;

/// Runs `steps` as `user` (its primary group, no others) on the bus at
/// `address`; returns the forger's unique name once the bus has routed
/// every signal.
pub fn forge_as(user: &str, address: &str, steps: &[Step]) -> Result<String> {
    let group = primary_group(user)?;
    let spec = Value::Array(steps.iter().map(Step::to_json).collect()).to_string();
    let out = Command::new("setpriv")
        .args(["--reuid", user, "--regid", &group, "--clear-groups", "--"])
        .args(["/usr/bin/python3", "-c", SCRIPT, address, &spec])
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .output()
        .context("cannot run the forger (setpriv python3)")?;
    if !out.status.success() {
        bail!(
            "the forger failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn primary_group(user: &str) -> Result<String> {
    let out = Command::new("id")
        .args(["-g", user])
        .output()
        .context("cannot run id")?;
    if !out.status.success() {
        bail!("no user {user} (scripts/bootstrap creates the test users)");
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The unique names of every connection of `uid` on the bus at `address`,
/// as a local user finds them (`ListNames` + `GetConnectionUnixUser`).
pub fn connections_of_uid(address: &str, uid: u32) -> Result<Vec<String>> {
    let mut channel =
        Channel::open_private(address).with_context(|| format!("cannot connect to {address}"))?;
    channel.register().context("Hello")?;
    let conn = Connection::from(channel);
    let bus = conn.with_proxy(
        "org.freedesktop.DBus",
        "/org/freedesktop/DBus",
        Duration::from_secs(5),
    );
    let (names,): (Vec<String>,) = bus
        .method_call("org.freedesktop.DBus", "ListNames", ())
        .context("ListNames")?;
    let mut found = Vec::new();
    for name in names.into_iter().filter(|n| n.starts_with(':')) {
        let owner: Result<(u32,), _> =
            bus.method_call("org.freedesktop.DBus", "GetConnectionUnixUser", (&name,));
        // A connection may close between the two calls.
        if let Ok((owner,)) = owner {
            if owner == uid {
                found.push(name);
            }
        }
    }
    Ok(found)
}

/// The unique name that owns `name` on the bus at `address` (`None`: no
/// owner).
pub fn name_owner(address: &str, name: &str) -> Result<Option<String>> {
    let mut channel =
        Channel::open_private(address).with_context(|| format!("cannot connect to {address}"))?;
    channel.register().context("Hello")?;
    let conn = Connection::from(channel);
    let bus = conn.with_proxy(
        "org.freedesktop.DBus",
        "/org/freedesktop/DBus",
        Duration::from_secs(5),
    );
    let owner: Result<(String,), dbus::Error> =
        bus.method_call("org.freedesktop.DBus", "GetNameOwner", (name,));
    match owner {
        Ok((owner,)) => Ok(Some(owner)),
        Err(e) if e.name() == Some("org.freedesktop.DBus.Error.NameHasNoOwner") => Ok(None),
        Err(e) => Err(e).context("GetNameOwner"),
    }
}

/// The uid of `user`.
pub fn uid_of(user: &str) -> Result<u32> {
    let out = Command::new("id")
        .args(["-u", user])
        .output()
        .context("cannot run id")?;
    if !out.status.success() {
        bail!("no user {user}");
    }
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .with_context(|| format!("uid of {user}"))
}
