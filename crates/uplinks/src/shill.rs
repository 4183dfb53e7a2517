//! Uplinks as shill sees them: the Manager's `Devices` (each Device's
//! `Interface` and `Type`) and the `Device` of its `DefaultService`.
//!
//! Every query to shill is asynchronous (a hung shill must not hang the
//! manager): [`ShillState`] is the bookkeeping — what shill said, which
//! replies are awaited — and says which queries to send next; [`ShillUplinks`]
//! does the I/O. A snapshot is only rebuilt when no reply is awaited, so a
//! half-known state (a new default service whose device is not known yet)
//! never reaches the consumer. When shill leaves the bus every uplink is
//! removed; when it comes back everything is fetched again.
//!
//! Who may say what ([`judge`]): any local user can send a signal to this
//! connection by unicast, past the bus-side match rules, so each signal is
//! judged by its sender, which the bus stamps and a client cannot forge.
//! `NameOwnerChanged` counts only from the bus itself, and even then only as
//! a hint: shill's owner is asked for again (`GetNameOwner`) and only the
//! answer changes anything; an answer naming the owner already known changes
//! nothing. Shill's `PropertyChanged` counts only from the unique name that
//! answer gave, and shill's queries go to that unique name. Everything else is
//! dropped, counted and reported at most once a minute.

use std::collections::{BTreeMap, HashMap};
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

use dbus::arg::{PropMap, RefArg, Variant};
use dbus::channel::{BusType, Channel};
use dbus::{Message, MessageType};

use crate::kernel::KernelWatcher;
use crate::{diff, IfName, Snapshot, Technology, Uplink, UplinkError, UplinkEvent, UplinkSource};

pub(crate) const SERVICE: &str = "org.chromium.flimflam";
pub(crate) const MANAGER_INTERFACE: &str = "org.chromium.flimflam.Manager";
pub(crate) const DEVICE_INTERFACE: &str = "org.chromium.flimflam.Device";
pub(crate) const SERVICE_INTERFACE: &str = "org.chromium.flimflam.Service";
pub(crate) const PROPERTY_CHANGED: &str = "PropertyChanged";
pub(crate) const MANAGER_PATH: &str = "/";

const DBUS_NAME: &str = "org.freedesktop.DBus";
const DBUS_PATH: &str = "/org/freedesktop/DBus";

/// How long a blocking call to the bus daemon itself may take (never to shill).
const BUS_DAEMON_TIMEOUT: Duration = Duration::from_secs(5);

/// A reply that has not come after this long is given up on, so that one lost
/// reply does not freeze the snapshot.
const REPLY_PATIENCE: Duration = Duration::from_secs(10);

/// At most one warning about dropped forgeries per this long (each one is
/// logged at debug level).
const FORGERY_WARNING_INTERVAL: Duration = Duration::from_secs(60);

/// The bus's answer when a name has no owner.
const NAME_HAS_NO_OWNER: &str = "org.freedesktop.DBus.Error.NameHasNoOwner";

/// A query whose reply [`ShillState`] waits for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Query {
    NameOwner,
    Manager,
    Device(String),
    Service(String),
}

/// What shill told us about one Device.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct DeviceInfo {
    pub interface: Option<String>,
    pub kind: Option<String>,
}

/// What is known of shill, as plain data.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ShillState {
    /// Shill's unique bus name; signals from anyone else are ignored.
    pub owner: Option<String>,
    /// Device object path → properties (empty until its reply comes).
    pub devices: BTreeMap<String, DeviceInfo>,
    /// `None` for shill's "/" (no default service).
    pub default_service: Option<String>,
    /// The default service's `Device`.
    pub default_device: Option<String>,
}

fn is_no_object(path: &str) -> bool {
    path.is_empty() || path == "/"
}

fn str_of(v: &dyn RefArg) -> Option<String> {
    v.as_str().map(str::to_string)
}

fn paths_of(v: &dyn RefArg) -> Option<Vec<String>> {
    v.as_iter()?
        .map(|p| p.as_str().map(str::to_string))
        .collect()
}

impl ShillState {
    /// The bus says shill's name is owned by `owner` (`None`: nobody, shill
    /// is not running). `None` when that is the owner already known: nothing
    /// is forgotten. Otherwise everything is forgotten and the queries to
    /// start over with are returned.
    pub fn on_owner(&mut self, owner: Option<String>) -> Option<Vec<Query>> {
        let owner = owner.filter(|o| !o.is_empty());
        if owner == self.owner {
            return None;
        }
        *self = ShillState {
            owner: owner.clone(),
            ..ShillState::default()
        };
        Some(match owner {
            Some(_) => vec![Query::Manager],
            None => vec![],
        })
    }

    /// A Manager property (from `GetProperties` or `PropertyChanged`).
    pub fn on_manager_property(&mut self, name: &str, value: &dyn RefArg) -> Vec<Query> {
        match name {
            "Devices" => {
                let Some(paths) = paths_of(value) else {
                    log::warn!("uplinks: shill Manager Devices is not a list of paths");
                    return vec![];
                };
                let mut queries = Vec::new();
                let mut devices = BTreeMap::new();
                for path in paths {
                    let info = match self.devices.remove(&path) {
                        Some(info) => info,
                        None => {
                            queries.push(Query::Device(path.clone()));
                            DeviceInfo::default()
                        }
                    };
                    devices.insert(path, info);
                }
                self.devices = devices;
                queries
            }
            "DefaultService" => {
                let service = str_of(value).filter(|p| !is_no_object(p));
                if service == self.default_service {
                    return vec![];
                }
                self.default_service = service.clone();
                self.default_device = None;
                service.map(Query::Service).into_iter().collect()
            }
            _ => vec![],
        }
    }

    /// A Device property; devices not (or no longer) listed are ignored.
    pub fn on_device_property(&mut self, path: &str, name: &str, value: &dyn RefArg) {
        let Some(info) = self.devices.get_mut(path) else {
            return;
        };
        match name {
            "Interface" => info.interface = str_of(value),
            "Type" => info.kind = str_of(value),
            _ => {}
        }
    }

    /// A Service property; only the default service's `Device` matters.
    pub fn on_service_property(&mut self, path: &str, name: &str, value: &dyn RefArg) {
        if name == "Device" && self.default_service.as_deref() == Some(path) {
            self.default_device = str_of(value).filter(|p| !is_no_object(p));
        }
    }

    /// Uplinks: shill's devices that the kernel has; the default: the
    /// default service's device.
    pub fn snapshot(&self, uplink: impl Fn(&str, Technology) -> Option<Uplink>) -> Snapshot {
        let uplinks: Vec<Uplink> = self
            .devices
            .values()
            .filter_map(|d| {
                let interface = d.interface.as_deref()?;
                let kind = d.kind.as_deref()?;
                uplink(interface, Technology::from_shill_type(kind))
            })
            .collect();
        let default = self
            .default_device
            .as_ref()
            .and_then(|d| self.devices.get(d))
            .and_then(|d| d.interface.as_deref())
            .and_then(|i| IfName::new(i).ok());
        Snapshot::new(uplinks, default)
    }
}

/// The parts of a signal's header that say whether it may be believed.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct SignalHeader<'a> {
    /// Stamped by the bus: a unique name, or `org.freedesktop.DBus` for the
    /// bus's own signals. No client can send as another.
    pub sender: Option<&'a str>,
    pub path: Option<&'a str>,
    pub interface: Option<&'a str>,
    pub member: Option<&'a str>,
    /// The first argument when it is a string (the name in `NameOwnerChanged`).
    pub arg0: Option<&'a str>,
}

/// What a signal on shill's connection is, given who sent it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The bus says shill's name changed hands. A hint only: ask the bus who
    /// owns it now ([`Query::NameOwner`]) and believe the answer.
    OwnerHint,
    /// A `PropertyChanged` from shill's current owner: apply it.
    FromShill,
    /// A shill signal from someone else while the owner is being asked for
    /// (at start, or after a hint): it may be the next owner's, whose state
    /// is fetched in full once the answer comes, so it is dropped quietly.
    Early,
    /// A signal this source follows, from someone who may not send it: a
    /// `NameOwnerChanged` the bus did not send, or shill's signal from
    /// anyone but shill's owner.
    Forged,
    /// Nothing this source follows (`NameAcquired`, other interfaces).
    Unrelated,
}

/// Judges a signal: `owner` is shill's unique name as the bus last
/// answered, `confirming` whether that question is out again.
pub(crate) fn judge(owner: Option<&str>, confirming: bool, signal: &SignalHeader<'_>) -> Verdict {
    match (signal.interface, signal.member) {
        (Some(DBUS_NAME), Some("NameOwnerChanged")) => {
            if signal.sender != Some(DBUS_NAME) || signal.path != Some(DBUS_PATH) {
                Verdict::Forged
            } else if signal.arg0 == Some(SERVICE) {
                Verdict::OwnerHint
            } else {
                Verdict::Unrelated
            }
        }
        (
            Some(MANAGER_INTERFACE | DEVICE_INTERFACE | SERVICE_INTERFACE),
            Some(PROPERTY_CHANGED),
        ) => match (owner, signal.sender) {
            (Some(owner), Some(sender)) if owner == sender => Verdict::FromShill,
            _ if confirming => Verdict::Early,
            _ => Verdict::Forged,
        },
        _ => Verdict::Unrelated,
    }
}

/// Whether a reply to a query sent to `asked` may be believed: it must come
/// from `asked`, except that the bus answers for a destination that is gone.
/// (The bus already refuses replies nobody asked for; this also keeps an old
/// shill's late answers out.)
pub(crate) fn reply_trusted(asked: &str, sender: Option<&str>, error: bool) -> bool {
    sender == Some(asked) || (error && sender == Some(DBUS_NAME))
}

/// Forged signals dropped: all counted, at most one warning per
/// [`FORGERY_WARNING_INTERVAL`] (each is logged at debug level).
#[derive(Debug, Default)]
pub(crate) struct Forgeries {
    pub total: u64,
    unreported: u64,
    last_warning: Option<Instant>,
}

impl Forgeries {
    /// Counts one more; when a warning is due, returns how many it covers
    /// (this one and those not warned about yet).
    pub fn record(&mut self, now: Instant) -> Option<u64> {
        self.total += 1;
        self.unreported += 1;
        let due = self
            .last_warning
            .is_none_or(|last| now.saturating_duration_since(last) >= FORGERY_WARNING_INTERVAL);
        if !due {
            return None;
        }
        self.last_warning = Some(now);
        Some(std::mem::take(&mut self.unreported))
    }
}

/// Whether `org.chromium.flimflam` has an owner on the bus at `address`
/// (`None`: the system bus).
pub fn shill_is_running(address: Option<&str>) -> Result<bool, UplinkError> {
    let channel = connect(address)?;
    let msg = bus_call("NameHasOwner")?.append1(SERVICE);
    let reply = channel
        .send_with_reply_and_block(msg, BUS_DAEMON_TIMEOUT)
        .map_err(|e| call_error("NameHasOwner", &e))?;
    reply.read1::<bool>().map_err(|e| UplinkError::BusCall {
        call: "NameHasOwner".into(),
        message: e.to_string(),
    })
}

fn connect(address: Option<&str>) -> Result<Channel, UplinkError> {
    let connected = match address {
        Some(a) => Channel::open_private(a).and_then(|mut c| c.register().map(|()| c)),
        None => Channel::get_private(BusType::System),
    };
    connected.map_err(|e| UplinkError::BusConnect {
        address: address
            .map(str::to_string)
            .or_else(|| std::env::var("DBUS_SYSTEM_BUS_ADDRESS").ok()),
        message: e.message().unwrap_or("unknown error").to_string(),
    })
}

fn call_error(call: &str, e: &dbus::Error) -> UplinkError {
    UplinkError::BusCall {
        call: call.to_string(),
        message: format!(
            "{}: {}",
            e.name().unwrap_or("?"),
            e.message().unwrap_or("no message")
        ),
    }
}

fn bus_call(method: &str) -> Result<Message, UplinkError> {
    Message::new_method_call(DBUS_NAME, DBUS_PATH, DBUS_NAME, method).map_err(|e| {
        UplinkError::BusCall {
            call: method.into(),
            message: e,
        }
    })
}

/// The shill source: a private bus connection plus the kernel watcher.
pub struct ShillUplinks {
    channel: Channel,
    fd: RawFd,
    kernel: KernelWatcher,
    state: ShillState,
    /// Serial → what it answers, whom it was sent to and when.
    pending: HashMap<u32, Pending>,
    reported: Snapshot,
    forgeries: Forgeries,
}

/// A query whose reply is awaited.
#[derive(Debug)]
struct Pending {
    query: Query,
    /// The destination: the bus, or shill's unique name.
    asked: String,
    since: Instant,
}

impl std::fmt::Debug for ShillUplinks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShillUplinks")
            .field("fd", &self.fd)
            .field("state", &self.state)
            .field("pending", &self.pending)
            .field("forgeries", &self.forgeries.total)
            .finish()
    }
}

impl ShillUplinks {
    /// Connects to the bus at `address` (`None`: the system bus), subscribes
    /// to shill's signals and asks who owns shill's name. Nothing is known
    /// until [`UplinkSource::process`] has read the replies.
    pub fn open(address: Option<&str>) -> Result<ShillUplinks, UplinkError> {
        let kernel = KernelWatcher::open()?;
        let mut channel = connect(address)?;
        channel.set_watch_enabled(true);
        let fd = channel.watch().fd;
        let mut rules = vec![format!(
            "type='signal',sender='{DBUS_NAME}',path='{DBUS_PATH}',interface='{DBUS_NAME}',\
             member='NameOwnerChanged',arg0='{SERVICE}'"
        )];
        for interface in [MANAGER_INTERFACE, DEVICE_INTERFACE, SERVICE_INTERFACE] {
            rules.push(format!(
                "type='signal',sender='{SERVICE}',interface='{interface}',member='{PROPERTY_CHANGED}'"
            ));
        }
        for rule in rules {
            let msg = bus_call("AddMatch")?.append1(rule);
            channel
                .send_with_reply_and_block(msg, BUS_DAEMON_TIMEOUT)
                .map_err(|e| call_error("AddMatch", &e))?;
        }
        let mut source = ShillUplinks {
            channel,
            fd,
            kernel,
            state: ShillState::default(),
            pending: HashMap::new(),
            reported: Snapshot::default(),
            forgeries: Forgeries::default(),
        };
        source.send(Query::NameOwner)?;
        source.channel.flush();
        Ok(source)
    }

    /// Sends `query`: to the bus, or to the unique name of shill's owner (so
    /// that only that owner answers; nothing is asked while there is none).
    fn send(&mut self, query: Query) -> Result<(), UplinkError> {
        let (path, interface, method) = match &query {
            Query::NameOwner => (DBUS_PATH, DBUS_NAME, "GetNameOwner"),
            Query::Manager => (MANAGER_PATH, MANAGER_INTERFACE, "GetProperties"),
            Query::Device(p) => (p.as_str(), DEVICE_INTERFACE, "GetProperties"),
            Query::Service(p) => (p.as_str(), SERVICE_INTERFACE, "GetProperties"),
        };
        let destination = match (&query, &self.state.owner) {
            (Query::NameOwner, _) => DBUS_NAME.to_string(),
            (_, Some(owner)) => owner.clone(),
            (_, None) => return Ok(()),
        };
        let mut msg = match Message::new_method_call(&*destination, path, interface, method) {
            Ok(m) => m,
            Err(e) => {
                // A path from shill that libdbus refuses: nothing to ask.
                log::warn!("uplinks: cannot query {path} {interface}.{method}: {e}");
                return Ok(());
            }
        };
        if query == Query::NameOwner {
            msg = msg.append1(SERVICE);
        }
        let serial = self.channel.send(msg).map_err(|()| UplinkError::BusLost)?;
        self.pending.insert(
            serial,
            Pending {
                query,
                asked: destination,
                since: Instant::now(),
            },
        );
        Ok(())
    }

    /// Whether the bus has been asked who owns shill's name and not answered.
    fn confirming_owner(&self) -> bool {
        self.pending.values().any(|p| p.query == Query::NameOwner)
    }

    fn send_all(&mut self, queries: Vec<Query>) -> Result<(), UplinkError> {
        for q in queries {
            self.send(q)?;
        }
        Ok(())
    }

    /// The bus answered who owns shill's name.
    fn on_owner(&mut self, owner: Option<String>) -> Result<(), UplinkError> {
        let Some(queries) = self.state.on_owner(owner) else {
            log::debug!("uplinks: shill's owner is unchanged");
            return Ok(());
        };
        match &self.state.owner {
            Some(o) => log::info!("uplinks: shill is on the bus as {o}"),
            None => log::info!("uplinks: shill is not on the bus"),
        }
        // Replies from a previous shill would describe a world that is gone.
        self.pending.retain(|_, p| p.query == Query::NameOwner);
        self.send_all(queries)
    }

    /// Drops a signal its sender may not send: counted, logged.
    fn forged(&mut self, signal: &SignalHeader<'_>) {
        let what = format!(
            "{}.{} at {} from {}",
            signal.interface.unwrap_or("?"),
            signal.member.unwrap_or("?"),
            signal.path.unwrap_or("?"),
            signal.sender.unwrap_or("?"),
        );
        log::debug!("uplinks: ignored {what}: not sent by the bus or shill's owner");
        if let Some(n) = self.forgeries.record(Instant::now()) {
            log::warn!(
                "uplinks: ignored {n} signal(s) that neither the bus nor shill's owner sent \
                 (latest: {what}; {} since start)",
                self.forgeries.total
            );
        }
    }

    fn handle(&mut self, msg: Message) -> Result<(), UplinkError> {
        match msg.msg_type() {
            MessageType::MethodReturn | MessageType::Error => self.handle_reply(msg),
            MessageType::Signal => self.handle_signal(msg),
            MessageType::MethodCall => Ok(()),
        }
    }

    fn handle_reply(&mut self, mut msg: Message) -> Result<(), UplinkError> {
        let Some(serial) = msg.get_reply_serial() else {
            return Ok(());
        };
        let Some(pending) = self.pending.get(&serial) else {
            return Ok(());
        };
        let error = msg.msg_type() == MessageType::Error;
        if !reply_trusted(&pending.asked, msg.sender().as_deref(), error) {
            log::warn!(
                "uplinks: ignored an answer to {:?} from {}, not from {}",
                pending.query,
                msg.sender().as_deref().unwrap_or("?"),
                pending.asked
            );
            return Ok(());
        }
        let Some(Pending { query, .. }) = self.pending.remove(&serial) else {
            return Ok(());
        };
        if let Err(e) = msg.as_result() {
            match query {
                // No owner: shill is not running (yet), or left.
                Query::NameOwner if e.name() == Some(NAME_HAS_NO_OWNER) => {
                    return self.on_owner(None)
                }
                Query::NameOwner => log::warn!(
                    "uplinks: cannot learn who owns shill's name: {}",
                    call_error("GetNameOwner", &e)
                ),
                q => log::warn!(
                    "uplinks: shill query {q:?} failed: {}",
                    call_error("GetProperties", &e)
                ),
            }
            return Ok(());
        }
        if query == Query::NameOwner {
            return match msg.read1::<&str>() {
                Ok(owner) => self.on_owner(Some(owner.to_string())),
                Err(e) => {
                    log::warn!("uplinks: the bus answered GetNameOwner with {e}");
                    Ok(())
                }
            };
        }
        let props: PropMap = match msg.read1() {
            Ok(p) => p,
            Err(e) => {
                log::warn!("uplinks: shill answered {query:?} with bad properties: {e}");
                return Ok(());
            }
        };
        // Devices before DefaultService is not needed for correctness, but
        // sorted keys keep the query order stable.
        let mut props: Vec<(String, Variant<Box<dyn RefArg>>)> = props.into_iter().collect();
        props.sort_by(|a, b| a.0.cmp(&b.0));
        match query {
            Query::Manager => {
                for (name, value) in props {
                    let queries = self.state.on_manager_property(&name, &*value.0);
                    self.send_all(queries)?;
                }
            }
            Query::Device(path) => {
                for (name, value) in props {
                    self.state.on_device_property(&path, &name, &*value.0);
                }
            }
            Query::Service(path) => {
                for (name, value) in props {
                    self.state.on_service_property(&path, &name, &*value.0);
                }
            }
            Query::NameOwner => {}
        }
        Ok(())
    }

    fn handle_signal(&mut self, msg: Message) -> Result<(), UplinkError> {
        let (sender, path, interface, member) =
            (msg.sender(), msg.path(), msg.interface(), msg.member());
        let signal = SignalHeader {
            sender: sender.as_deref(),
            path: path.as_deref(),
            interface: interface.as_deref(),
            member: member.as_deref(),
            arg0: msg.get1::<&str>(),
        };
        let confirming = self.confirming_owner();
        match judge(self.state.owner.as_deref(), confirming, &signal) {
            Verdict::OwnerHint => {
                log::debug!("uplinks: the bus says shill's name changed hands; asking who has it");
                // An answer still to come was given after this change.
                if !confirming {
                    self.send(Query::NameOwner)?;
                }
                Ok(())
            }
            Verdict::FromShill => self.on_property_changed(&msg),
            Verdict::Early => {
                log::debug!(
                    "uplinks: ignored {} from {} while asking who owns shill's name",
                    signal.member.unwrap_or("?"),
                    signal.sender.unwrap_or("?")
                );
                Ok(())
            }
            Verdict::Forged => {
                self.forged(&signal);
                Ok(())
            }
            Verdict::Unrelated => Ok(()),
        }
    }

    /// Applies a `PropertyChanged` that shill's owner sent.
    fn on_property_changed(&mut self, msg: &Message) -> Result<(), UplinkError> {
        let interface = msg.interface();
        let Ok((name, value)) = msg.read2::<&str, Variant<Box<dyn RefArg>>>() else {
            log::warn!("uplinks: malformed shill PropertyChanged");
            return Ok(());
        };
        let path = msg.path().map(|p| p.to_string()).unwrap_or_default();
        match interface.as_deref() {
            Some(MANAGER_INTERFACE) if path == MANAGER_PATH => {
                let queries = self.state.on_manager_property(name, &*value.0);
                self.send_all(queries)?;
            }
            Some(DEVICE_INTERFACE) => self.state.on_device_property(&path, name, &*value.0),
            Some(SERVICE_INTERFACE) => self.state.on_service_property(&path, name, &*value.0),
            _ => {}
        }
        Ok(())
    }

    /// Reads until libdbus and the socket are both empty (libdbus buffers;
    /// mio will not wake us again for what it already read).
    fn drain_bus(&mut self) -> Result<(), UplinkError> {
        loop {
            self.channel
                .read_write(Some(Duration::ZERO))
                .map_err(|()| UplinkError::BusLost)?;
            while let Some(msg) = self.channel.pop_message() {
                self.handle(msg)?;
            }
            self.channel.flush();
            if !crate::kernel::socket_has_data(self.fd) {
                return Ok(());
            }
        }
    }

    /// True when no reply is awaited (lost ones are forgotten after
    /// [`REPLY_PATIENCE`]).
    fn settled(&mut self) -> bool {
        let now = Instant::now();
        self.pending.retain(|_, p| {
            let waiting = now.duration_since(p.since) < REPLY_PATIENCE;
            if !waiting {
                log::warn!(
                    "uplinks: {} did not answer {:?}; going on without it",
                    p.asked,
                    p.query
                );
            }
            waiting
        });
        self.pending.is_empty()
    }
}

impl UplinkSource for ShillUplinks {
    fn fds(&self) -> Vec<RawFd> {
        vec![self.fd, self.kernel.fd()]
    }

    fn process(&mut self) -> Result<Vec<UplinkEvent>, UplinkError> {
        self.drain_bus()?;
        self.kernel.process()?;
        if !self.settled() {
            return Ok(vec![]);
        }
        let view = self.kernel.view();
        let next = self.state.snapshot(|name, tech| view.uplink(name, tech));
        let events = diff(&self.reported, &next);
        self.reported = next;
        Ok(events)
    }

    fn uplinks(&self) -> Vec<Uplink> {
        self.reported.uplinks.values().cloned().collect()
    }

    fn default_uplink(&self) -> Option<Uplink> {
        self.reported.default_uplink().cloned()
    }

    fn name(&self) -> &'static str {
        "shill"
    }
}

#[cfg(test)]
mod tests {
    use dbus::Path;

    use super::*;

    fn path(p: &str) -> Path<'static> {
        Path::new(p.to_string()).unwrap()
    }

    fn paths(ps: &[&str]) -> Vec<Path<'static>> {
        ps.iter().map(|p| path(p)).collect()
    }

    fn uplink(name: &str, tech: Technology) -> Option<Uplink> {
        Some(Uplink {
            name: IfName::new(name).ok()?,
            ifindex: 1 + name.len() as u32,
            up: true,
            ipv4: vec![],
            ipv6: vec![],
            gateway4: None,
            technology: tech,
        })
    }

    /// A state where shill listed eth0 and wlan0 and eth0's service is default.
    fn known() -> ShillState {
        let mut s = ShillState::default();
        s.on_owner(Some(":1.7".into()));
        s.on_manager_property("Devices", &paths(&["/device/eth0", "/device/wlan0"]));
        s.on_device_property("/device/eth0", "Interface", &"eth0".to_string());
        s.on_device_property("/device/eth0", "Type", &"ethernet".to_string());
        s.on_device_property("/device/wlan0", "Interface", &"wlan0".to_string());
        s.on_device_property("/device/wlan0", "Type", &"wifi".to_string());
        s.on_manager_property("DefaultService", &path("/service/1"));
        s.on_service_property("/service/1", "Device", &path("/device/eth0"));
        s
    }

    #[test]
    fn shill_appearing_asks_for_the_manager_properties() {
        let mut s = ShillState::default();

        assert_eq!(s.on_owner(Some(":1.7".into())), Some(vec![Query::Manager]));
        assert_eq!(s.owner.as_deref(), Some(":1.7"));
    }

    #[test]
    fn the_owner_confirmed_again_forgets_nothing() {
        let mut s = known();

        assert_eq!(s.on_owner(Some(":1.7".into())), None);
        assert_eq!(s, known());
    }

    #[test]
    fn a_new_owner_forgets_the_old_ones_devices_and_asks_again() {
        let mut s = known();

        assert_eq!(s.on_owner(Some(":1.8".into())), Some(vec![Query::Manager]));
        assert_eq!(s.owner.as_deref(), Some(":1.8"));
        assert!(s.devices.is_empty());
        assert!(s.snapshot(uplink).uplinks.is_empty());
    }

    fn name_owner_changed<'a>(sender: &'a str, name: &'a str) -> SignalHeader<'a> {
        SignalHeader {
            sender: Some(sender),
            path: Some(DBUS_PATH),
            interface: Some(DBUS_NAME),
            member: Some("NameOwnerChanged"),
            arg0: Some(name),
        }
    }

    fn property_changed(sender: &str) -> SignalHeader<'_> {
        SignalHeader {
            sender: Some(sender),
            path: Some(MANAGER_PATH),
            interface: Some(MANAGER_INTERFACE),
            member: Some(PROPERTY_CHANGED),
            arg0: Some("DefaultService"),
        }
    }

    #[test]
    fn name_owner_changed_from_the_bus_about_shill_is_a_hint() {
        let signal = name_owner_changed(DBUS_NAME, SERVICE);

        assert_eq!(judge(Some(":1.7"), false, &signal), Verdict::OwnerHint);
        assert_eq!(judge(None, true, &signal), Verdict::OwnerHint);
    }

    #[test]
    fn name_owner_changed_from_a_client_is_forged() {
        let signal = name_owner_changed(":1.66", SERVICE);

        assert_eq!(judge(Some(":1.7"), false, &signal), Verdict::Forged);
        assert_eq!(judge(None, true, &signal), Verdict::Forged);
    }

    #[test]
    fn name_owner_changed_from_the_bus_on_another_path_is_forged() {
        let signal = SignalHeader {
            path: Some("/"),
            ..name_owner_changed(DBUS_NAME, SERVICE)
        };

        assert_eq!(judge(Some(":1.7"), false, &signal), Verdict::Forged);
    }

    #[test]
    fn name_owner_changed_about_another_name_is_unrelated() {
        let signal = name_owner_changed(DBUS_NAME, ":1.66");

        assert_eq!(judge(Some(":1.7"), false, &signal), Verdict::Unrelated);
    }

    #[test]
    fn property_changed_from_shills_owner_is_applied() {
        assert_eq!(
            judge(Some(":1.7"), false, &property_changed(":1.7")),
            Verdict::FromShill
        );
        // Shill's owner goes on being believed while the bus is asked again.
        assert_eq!(
            judge(Some(":1.7"), true, &property_changed(":1.7")),
            Verdict::FromShill
        );
    }

    #[test]
    fn property_changed_from_anyone_else_is_forged() {
        assert_eq!(
            judge(Some(":1.7"), false, &property_changed(":1.66")),
            Verdict::Forged
        );
        assert_eq!(
            judge(None, false, &property_changed(":1.66")),
            Verdict::Forged
        );
        let no_sender = SignalHeader {
            sender: None,
            ..property_changed(":1.7")
        };
        assert_eq!(judge(Some(":1.7"), false, &no_sender), Verdict::Forged);
    }

    #[test]
    fn property_changed_from_another_while_asking_for_the_owner_is_early() {
        assert_eq!(
            judge(Some(":1.7"), true, &property_changed(":1.8")),
            Verdict::Early
        );
        assert_eq!(judge(None, true, &property_changed(":1.8")), Verdict::Early);
    }

    #[test]
    fn every_shill_interface_needs_the_owner() {
        for interface in [MANAGER_INTERFACE, DEVICE_INTERFACE, SERVICE_INTERFACE] {
            let signal = SignalHeader {
                interface: Some(interface),
                ..property_changed(":1.66")
            };
            assert_eq!(
                judge(Some(":1.7"), false, &signal),
                Verdict::Forged,
                "{interface}"
            );
        }
    }

    #[test]
    fn other_signals_are_unrelated() {
        let signal = SignalHeader {
            interface: Some("org.example.Other"),
            ..property_changed(":1.66")
        };
        assert_eq!(judge(Some(":1.7"), false, &signal), Verdict::Unrelated);
        let acquired = SignalHeader {
            member: Some("NameAcquired"),
            ..name_owner_changed(DBUS_NAME, ":1.3")
        };
        assert_eq!(judge(Some(":1.7"), false, &acquired), Verdict::Unrelated);
    }

    #[test]
    fn a_reply_counts_only_from_whom_was_asked_or_a_bus_error() {
        assert!(reply_trusted(":1.7", Some(":1.7"), false));
        assert!(reply_trusted(":1.7", Some(":1.7"), true));
        assert!(reply_trusted(DBUS_NAME, Some(DBUS_NAME), false));
        assert!(reply_trusted(":1.7", Some(DBUS_NAME), true));

        assert!(!reply_trusted(":1.7", Some(":1.66"), false));
        assert!(!reply_trusted(":1.7", Some(":1.66"), true));
        assert!(!reply_trusted(":1.7", Some(DBUS_NAME), false));
        assert!(!reply_trusted(DBUS_NAME, Some(":1.66"), false));
        assert!(!reply_trusted(":1.7", None, true));
    }

    #[test]
    fn forgeries_are_all_counted_and_warned_about_once_a_minute() {
        let mut f = Forgeries::default();
        let start = Instant::now();

        assert_eq!(f.record(start), Some(1));
        assert_eq!(f.record(start + Duration::from_secs(1)), None);
        assert_eq!(f.record(start + Duration::from_secs(59)), None);
        assert_eq!(f.record(start + FORGERY_WARNING_INTERVAL), Some(3));
        assert_eq!(f.record(start + FORGERY_WARNING_INTERVAL), None);
        assert_eq!(f.total, 5);
    }

    #[test]
    fn new_devices_are_queried_and_known_ones_are_not() {
        let mut s = known();

        let queries = s.on_manager_property(
            "Devices",
            &paths(&["/device/eth0", "/device/wlan0", "/device/wwan0"]),
        );

        assert_eq!(queries, vec![Query::Device("/device/wwan0".into())]);
        assert_eq!(s.devices["/device/eth0"].interface.as_deref(), Some("eth0"));
    }

    #[test]
    fn a_new_default_service_is_queried_and_forgets_the_old_device() {
        let mut s = known();

        let queries = s.on_manager_property("DefaultService", &path("/service/2"));

        assert_eq!(queries, vec![Query::Service("/service/2".into())]);
        assert_eq!(s.default_device, None);
    }

    #[test]
    fn default_service_root_path_means_no_default() {
        let mut s = known();

        let queries = s.on_manager_property("DefaultService", &path("/"));

        assert_eq!(queries, vec![]);
        assert_eq!(s.default_service, None);
        assert_eq!(s.snapshot(uplink).default, None);
    }

    #[test]
    fn snapshot_has_shill_devices_with_their_technology_and_default() {
        let snap = known().snapshot(uplink);

        let names: Vec<(&str, Technology)> = snap
            .uplinks
            .values()
            .map(|u| (u.name.as_str(), u.technology))
            .collect();
        assert_eq!(
            names,
            vec![("eth0", Technology::Ethernet), ("wlan0", Technology::Wifi)]
        );
        assert_eq!(snap.default.as_ref().map(IfName::as_str), Some("eth0"));
    }

    #[test]
    fn devices_the_kernel_does_not_have_are_left_out() {
        let snap = known().snapshot(|name, tech| {
            if name == "wlan0" {
                None
            } else {
                uplink(name, tech)
            }
        });

        assert_eq!(snap.uplinks.len(), 1);
        assert!(snap.uplinks.keys().all(|n| n.as_str() == "eth0"));
    }

    #[test]
    fn a_device_without_its_properties_yet_is_not_an_uplink() {
        let mut s = known();
        s.on_manager_property("Devices", &paths(&["/device/eth0", "/device/new"]));

        let snap = s.snapshot(uplink);

        assert_eq!(snap.uplinks.len(), 1);
    }

    #[test]
    fn a_removed_device_ignores_later_property_changes() {
        let mut s = known();
        s.on_manager_property("Devices", &paths(&["/device/eth0"]));

        s.on_device_property("/device/wlan0", "Interface", &"wlan1".to_string());

        assert!(!s.devices.contains_key("/device/wlan0"));
    }

    #[test]
    fn only_the_default_service_moves_the_default_device() {
        let mut s = known();

        s.on_service_property("/service/9", "Device", &path("/device/wlan0"));
        assert_eq!(s.default_device.as_deref(), Some("/device/eth0"));

        s.on_service_property("/service/1", "Device", &path("/device/wlan0"));
        assert_eq!(s.default_device.as_deref(), Some("/device/wlan0"));
    }

    #[test]
    fn shill_leaving_forgets_everything() {
        let mut s = known();

        let queries = s.on_owner(None);

        assert_eq!(queries, Some(vec![]));
        assert_eq!(s, ShillState::default());
        assert!(s.snapshot(uplink).uplinks.is_empty());
    }

    #[test]
    fn shill_types_map_to_technologies() {
        assert_eq!(
            Technology::from_shill_type("ethernet"),
            Technology::Ethernet
        );
        assert_eq!(Technology::from_shill_type("wifi"), Technology::Wifi);
        assert_eq!(
            Technology::from_shill_type("cellular"),
            Technology::Cellular
        );
        assert_eq!(Technology::from_shill_type("vpn"), Technology::Vpn);
        assert_eq!(Technology::from_shill_type("loopback"), Technology::Unknown);
    }
}
