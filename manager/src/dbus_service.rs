//! The D-Bus adaptor: reads `org.chromium.PatchPanel` calls off the bus,
//! decodes and validates each into a typed [`Call`] (one variant per
//! method, its request and descriptors included), and encodes answers and
//! signals ([`Bus`]). What a call does is the services' business; this
//! module only translates between the wire and them.
//!
//! libdbus is level-triggered and mio edge-triggered, so [`DbusService::dispatch`]
//! drains everything buffered and then peeks at the socket until it is empty
//! (the recipe of dbus-rs issue #254).
//!
//! The same connection follows firewalld ([`FirewalldWatch`]): its
//! `Reloaded` signal asks for a check of the host firewall (issue 22), in
//! case a reload's nf_tables notifications were not enough (an overrun, a
//! backend patchpanel cannot see). Any local user can send a signal to this
//! connection by unicast, past the match rules, so a `Reloaded` counts only
//! from the unique name that owns `org.fedoraproject.FirewallD1` as the bus
//! answered `GetNameOwner`; `NameOwnerChanged` counts only from the bus, and
//! only as a reason to ask again.

use std::os::fd::{OwnedFd, RawFd};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context as _};
use dbus::blocking::LocalConnection;
use dbus::channel::{BusType, Channel};
use dbus::MethodErr;
use dbus_crossroads::Crossroads;
use log::{info, warn};
use patchpanel_ipc::IfName;
use patchpanel_proto::names;
use patchpanel_proto::{NeighborReachabilityEventSignal, NetworkDeviceChangedSignal};
use prost::Message as _;

use crate::env::next_operation;
use crate::error::CallError;
use crate::guest_service::VmCaller;
use crate::guests::VmUser;
use crate::namespace_service::Connect;
use crate::port_rules::{PortOp, PortPolicy};
use crate::{counters, guests, lifeline, namespaces};

/// The methods this build serves, by name: the one list that decoding and
/// the introspection table follow. Other methods of the interface answer
/// `UnknownMethod`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    GetDevices,
    ConnectNamespace,
    ModifyPortRule,
    GetTrafficCounters,
    ArcStartup,
    ArcShutdown,
    ArcVmStartup,
    ArcVmShutdown,
    TerminaVmStartup,
    TerminaVmShutdown,
    /// `ParallelsVmStartup`, or its old name `PluginVmStartup`.
    ParallelsVmStartup,
    ParallelsVmShutdown,
    TagSocket,
    ConfigureNetwork,
    SetVpnLockdown,
    BruschettaVmStartup,
    BruschettaVmShutdown,
    BorealisVmStartup,
    BorealisVmShutdown,
    SetDnsRedirectionRule,
    NotifyAndroidInteractiveState,
    NotifyAndroidWifiMulticastLockChange,
    NotifySocketConnectionEvent,
    NotifyArcVpnSocketConnectionEvent,
    SetFeatureFlag,
}

impl Method {
    pub fn of(name: &str) -> Option<Method> {
        Some(match name {
            names::GET_DEVICES => Method::GetDevices,
            names::CONNECT_NAMESPACE => Method::ConnectNamespace,
            names::MODIFY_PORT_RULE => Method::ModifyPortRule,
            names::GET_TRAFFIC_COUNTERS => Method::GetTrafficCounters,
            names::ARC_STARTUP => Method::ArcStartup,
            names::ARC_SHUTDOWN => Method::ArcShutdown,
            names::ARC_VM_STARTUP => Method::ArcVmStartup,
            names::ARC_VM_SHUTDOWN => Method::ArcVmShutdown,
            names::TERMINA_VM_STARTUP => Method::TerminaVmStartup,
            names::TERMINA_VM_SHUTDOWN => Method::TerminaVmShutdown,
            names::PLUGIN_VM_STARTUP | names::PARALLELS_VM_STARTUP => Method::ParallelsVmStartup,
            names::PLUGIN_VM_SHUTDOWN | names::PARALLELS_VM_SHUTDOWN => Method::ParallelsVmShutdown,
            names::TAG_SOCKET => Method::TagSocket,
            names::CONFIGURE_NETWORK => Method::ConfigureNetwork,
            names::SET_VPN_LOCKDOWN => Method::SetVpnLockdown,
            names::BRUSCHETTA_VM_STARTUP => Method::BruschettaVmStartup,
            names::BRUSCHETTA_VM_SHUTDOWN => Method::BruschettaVmShutdown,
            names::BOREALIS_VM_STARTUP => Method::BorealisVmStartup,
            names::BOREALIS_VM_SHUTDOWN => Method::BorealisVmShutdown,
            names::SET_DNS_REDIRECTION_RULE => Method::SetDnsRedirectionRule,
            names::NOTIFY_ANDROID_INTERACTIVE_STATE => Method::NotifyAndroidInteractiveState,
            names::NOTIFY_ANDROID_WIFI_MULTICAST_LOCK_CHANGE => {
                Method::NotifyAndroidWifiMulticastLockChange
            }
            names::NOTIFY_SOCKET_CONNECTION_EVENT => Method::NotifySocketConnectionEvent,
            names::NOTIFY_ARC_VPN_SOCKET_CONNECTION_EVENT => {
                Method::NotifyArcVpnSocketConnectionEvent
            }
            names::SET_FEATURE_FLAG => Method::SetFeatureFlag,
            _ => return None,
        })
    }
}

/// A decoded and checked call: what a service needs, nothing of the wire.
#[derive(Debug)]
pub enum Call {
    GetDevices,
    ConnectNamespace(Connect),
    ModifyPortRule(PortOp),
    /// The interfaces asked for; empty means every uplink.
    GetTrafficCounters(Vec<IfName>),
    /// The container's pid, and the caller's uid (who may attach which
    /// process, and who may replace ARC later).
    ArcStartup {
        pid: i32,
        uid: u32,
    },
    ArcShutdown,
    ArcVmStartup {
        cid: u32,
        uid: u32,
    },
    ArcVmShutdown {
        cid: u32,
    },
    TerminaVmStartup {
        cid: u32,
        caller: VmCaller,
    },
    TerminaVmShutdown {
        cid: u32,
        caller: VmCaller,
    },
    ParallelsVmStartup {
        id: u64,
        subnet_index: i32,
        caller: VmCaller,
    },
    ParallelsVmShutdown {
        id: u64,
        caller: VmCaller,
    },
    /// Turn VPN lockdown on or off.
    SetVpnLockdown(bool),
    /// shill's configuration of one of its networks.
    ConfigureNetwork(Box<crate::network_config::NetworkSpec>),
    /// What to do, and the socket to do it to (not a lifeline).
    TagSocket {
        action: patchpanel_socket_service::Action,
        socket: OwnedFd,
    },
    BruschettaVmStartup {
        id: u64,
        caller: VmCaller,
    },
    BruschettaVmShutdown {
        id: u64,
        caller: VmCaller,
    },
    BorealisVmStartup {
        id: u32,
        caller: VmCaller,
    },
    BorealisVmShutdown {
        id: u32,
        caller: VmCaller,
    },
    /// A DNS redirection rule, its lifeline and who asked.
    SetDnsRedirectionRule(crate::dns_service::SetRule),
    AndroidInteractiveState(bool),
    /// Android holds (`true`) or released the Wi-Fi multicast lock.
    WifiMulticastLock(bool),
    /// A socket event of ARC (`arc_vpn`: of Android's VPN app).
    SocketConnectionEvent {
        arc_vpn: bool,
        event: crate::chrome_service::SocketEventSpec,
    },
    SetFeatureFlag {
        flag: patchpanel_proto::set_feature_flag_request::FeatureFlag,
        enabled: bool,
    },
}

impl Call {
    /// Whether the call only reads: it changes no state, so the tail that
    /// follows a call (reconciling the helpers, saving the state, both
    /// linear in the number of guests) has nothing to do.
    pub fn reads_only(&self) -> bool {
        matches!(self, Call::GetDevices | Call::GetTrafficCounters(_))
    }
}

/// One call off the bus: the message to answer, who sent it, the id of
/// its log lines, and the call itself, or why it was refused before
/// reaching a service.
#[derive(Debug)]
pub struct Incoming {
    pub message: dbus::Message,
    pub method: String,
    pub client: String,
    pub op: u64,
    pub call: Result<Call, CallError>,
}

/// Where answers and signals go: the bus, or a recorder in unit tests.
pub trait Bus {
    /// Answers `call` with `result`.
    fn reply(&mut self, call: &dbus::Message, result: Result<Vec<u8>, CallError>);
    /// Emits `NetworkDeviceChanged`.
    fn device_changed(&mut self, signal: NetworkDeviceChangedSignal);
    /// Emits `NeighborReachabilityEvent`.
    fn neighbor_reachability(&mut self, signal: NeighborReachabilityEventSignal);
    /// Emits `NetworkConfigurationChanged`.
    fn network_configuration_changed(&mut self);
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
    firewalld: FirewalldWatch,
    /// firewalld's accepted `Reloaded` signals not yet taken by the manager.
    firewalld_reloaded: bool,
    forgeries: Forgeries,
    /// Uids whose VM startups get a VM of their own (config `vm_owners`).
    vm_owners: std::collections::BTreeSet<u32>,
}

/// How many peers' uids are remembered.
const UID_CACHE: usize = 1024;

const DBUS_NAME: &str = "org.freedesktop.DBus";
const DBUS_PATH: &str = "/org/freedesktop/DBus";
/// The bus's answer when a name has no owner.
const NAME_HAS_NO_OWNER: &str = "org.freedesktop.DBus.Error.NameHasNoOwner";
/// firewalld's name, object and interface (the same string as the name).
pub const FIREWALLD: &str = "org.fedoraproject.FirewallD1";
const FIREWALLD_PATH: &str = "/org/fedoraproject/FirewallD1";
/// What firewalld emits once a reload has rebuilt its rules.
const RELOADED: &str = "Reloaded";
/// How a check asked for by firewalld's `Reloaded` is described in the log.
pub const FIREWALLD_RELOADED: &str = "firewalld reloaded";
/// At most one warning about dropped forgeries per this long (each one is
/// logged at debug level).
const FORGERY_WARNING_INTERVAL: Duration = Duration::from_secs(60);

impl std::fmt::Debug for DbusService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DbusService").field("fd", &self.fd).finish()
    }
}

impl DbusService {
    /// Connects to the system bus (`DBUS_SYSTEM_BUS_ADDRESS` is honoured)
    /// and builds the introspection table. The name is requested later,
    /// once the helpers are up, so that owning it means "ready".
    /// `vm_owners`: the uids whose VM startups get a VM of their own.
    pub fn connect(vm_owners: std::collections::BTreeSet<u32>) -> anyhow::Result<DbusService> {
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
                    .filter(|m| Method::of(m.name).is_some())
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
                b.signal::<(Vec<u8>,), _>(names::NEIGHBOR_REACHABILITY_EVENT, ("signal",));
                b.signal::<(Vec<u8>,), _>(names::NETWORK_CONFIGURATION_CHANGED, ("signal",));
            },
        );
        cr.insert(names::PATH, &[iface], ());
        let mut service = DbusService {
            conn,
            cr,
            fd,
            calls: Vec::new(),
            uids: std::collections::HashMap::new(),
            firewalld: FirewalldWatch::default(),
            firewalld_reloaded: false,
            forgeries: Forgeries::default(),
            vm_owners,
        };
        // Not fatal: patchpanel still follows the rule set itself.
        if let Err(e) = service.follow_firewalld() {
            warn!("firewalld's reloads will not be followed: {e:#}");
        }
        Ok(service)
    }

    /// Subscribes to firewalld's `Reloaded` and to its name changing hands,
    /// and asks who owns its name (the answer comes through `dispatch`).
    fn follow_firewalld(&mut self) -> anyhow::Result<()> {
        for rule in [
            format!(
                "type='signal',sender='{DBUS_NAME}',path='{DBUS_PATH}',interface='{DBUS_NAME}',\
                 member='NameOwnerChanged',arg0='{FIREWALLD}'"
            ),
            format!(
                "type='signal',sender='{FIREWALLD}',path='{FIREWALLD_PATH}',\
                 interface='{FIREWALLD}',member='{RELOADED}'"
            ),
        ] {
            let proxy = self
                .conn
                .with_proxy(DBUS_NAME, DBUS_PATH, Duration::from_secs(5));
            let () = proxy
                .method_call(DBUS_NAME, "AddMatch", (rule.as_str(),))
                .with_context(|| format!("AddMatch {rule}"))?;
        }
        self.ask_firewalld_owner()
    }

    /// Sends `GetNameOwner` for firewalld's name without waiting.
    fn ask_firewalld_owner(&mut self) -> anyhow::Result<()> {
        let msg = dbus::Message::new_method_call(DBUS_NAME, DBUS_PATH, DBUS_NAME, "GetNameOwner")
            .map_err(|e| anyhow!("GetNameOwner: {e}"))?
            .append1(FIREWALLD);
        let serial = self
            .conn
            .channel()
            .send(msg)
            .map_err(|()| anyhow!("the system bus connection was lost"))?;
        self.conn.channel().flush();
        self.firewalld.asked(serial);
        Ok(())
    }

    /// Whether firewalld said it reloaded since the last call: the manager
    /// then checks the host firewall.
    pub fn take_firewalld_reloaded(&mut self) -> bool {
        std::mem::take(&mut self.firewalld_reloaded)
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
                    if self.conn.channel().send(reply).is_err() {
                        warn!("cannot answer a call with the wrong arguments: the bus connection was lost");
                    }
                    continue;
                }
                if is_ours(&msg) {
                    self.calls.push(msg);
                    continue;
                }
                match msg.msg_type() {
                    dbus::MessageType::Signal => {
                        self.on_signal(&msg);
                        continue;
                    }
                    dbus::MessageType::MethodReturn | dbus::MessageType::Error
                        if self.firewalld.awaits(msg.get_reply_serial()) =>
                    {
                        self.on_firewalld_owner(msg);
                        continue;
                    }
                    _ => {}
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

    /// A signal on the connection: firewalld's, the bus's about firewalld's
    /// name, or anything else (ignored).
    fn on_signal(&mut self, msg: &dbus::Message) {
        let (sender, path, interface, member) =
            (msg.sender(), msg.path(), msg.interface(), msg.member());
        let signal = SignalHeader {
            sender: sender.as_deref(),
            path: path.as_deref(),
            interface: interface.as_deref(),
            member: member.as_deref(),
            arg0: msg.get1::<&str>(),
        };
        match self.firewalld.on_signal(&signal) {
            FirewalldAction::Check => {
                info!(
                    "firewalld ({}) reloaded: the host firewall will be checked",
                    signal.sender.unwrap_or("?")
                );
                self.firewalld_reloaded = true;
            }
            FirewalldAction::AskOwner => {
                log::debug!("the bus says firewalld's name changed hands; asking who has it");
                if let Err(e) = self.ask_firewalld_owner() {
                    warn!("cannot ask who owns firewalld's name: {e:#}");
                }
            }
            FirewalldAction::Forged => {
                let what = format!(
                    "{}.{} at {} from {}",
                    signal.interface.unwrap_or("?"),
                    signal.member.unwrap_or("?"),
                    signal.path.unwrap_or("?"),
                    signal.sender.unwrap_or("?"),
                );
                log::debug!("ignored {what}: not sent by the bus or firewalld's owner");
                if let Some(n) = self.forgeries.record(Instant::now()) {
                    warn!(
                        "ignored {n} signal(s) about firewalld that neither the bus nor \
                         firewalld's owner sent (latest: {what}; {} since start)",
                        self.forgeries.total
                    );
                }
            }
            FirewalldAction::Nothing => {}
        }
    }

    /// The bus answered who owns firewalld's name.
    fn on_firewalld_owner(&mut self, mut msg: dbus::Message) {
        let serial = msg.get_reply_serial();
        // Only the bus answers a call to the bus (it refuses replies nobody
        // asked for); checked all the same.
        if msg.sender().as_deref() != Some(DBUS_NAME) {
            warn!(
                "ignored an answer to GetNameOwner from {}",
                msg.sender().as_deref().unwrap_or("?")
            );
            return;
        }
        let owner = match msg.as_result() {
            Ok(reply) => match reply.read1::<&str>() {
                Ok(owner) => Some(owner.to_string()),
                Err(e) => {
                    warn!("the bus answered GetNameOwner({FIREWALLD}) with {e}");
                    self.firewalld.unanswered(serial);
                    return;
                }
            },
            Err(e) if e.name() == Some(NAME_HAS_NO_OWNER) => None,
            Err(e) => {
                warn!(
                    "cannot learn who owns {FIREWALLD}: {}",
                    e.message().unwrap_or("unknown error")
                );
                self.firewalld.unanswered(serial);
                return;
            }
        };
        let before = self.firewalld.owner().map(str::to_string);
        let check = self.firewalld.on_owner(serial, owner);
        match self.firewalld.owner() {
            now if now == before.as_deref() => {}
            Some(o) => info!("firewalld is on the bus as {o}; following its reloads"),
            None => info!("firewalld is not on the bus"),
        }
        if check {
            info!("firewalld reloaded as it took its name: the host firewall will be checked");
            self.firewalld_reloaded = true;
        }
    }

    /// The calls queued by [`Self::dispatch`], oldest first, each decoded
    /// and checked. Learning a caller's uid is a blocking round trip to the
    /// bus (once per client connection): the caller must
    /// [`Self::dispatch`] again before sleeping.
    pub fn take_calls(&mut self, policy: &PortPolicy) -> Vec<Incoming> {
        std::mem::take(&mut self.calls)
            .into_iter()
            .map(|message| {
                let op = next_operation();
                let method = message.member().map(|m| m.to_string()).unwrap_or_default();
                let client = sender(&message);
                let call = match Method::of(&method) {
                    Some(m) => self.decode(m, &method, &message, &client, op, policy),
                    None => Err(CallError::Unsupported(format!(
                        "{method} is not implemented by this patchpanel"
                    ))),
                };
                Incoming {
                    message,
                    method,
                    client,
                    op,
                    call,
                }
            })
            .collect()
    }

    /// Decodes `message`, a call of `method` (whose signature
    /// [`Self::dispatch`] checked), and validates what needs no state.
    fn decode(
        &mut self,
        method: Method,
        name: &str,
        message: &dbus::Message,
        client: &str,
        op: u64,
        policy: &PortPolicy,
    ) -> Result<Call, CallError> {
        let invalid =
            |e: &dyn std::fmt::Display| CallError::InvalidArgument(format!("{name}: {e}"));
        let bytes: &[u8] = message.get1().ok_or_else(|| invalid(&"no request"))?;
        fn proto<T: prost::Message + Default>(
            bytes: &[u8],
            invalid: impl Fn(&dyn std::fmt::Display) -> CallError,
        ) -> Result<T, CallError> {
            patchpanel_proto::decode_request::<T>(bytes).map_err(|e| invalid(&e))
        }
        Ok(match method {
            Method::GetDevices => {
                proto::<patchpanel_proto::GetDevicesRequest>(bytes, invalid)?;
                Call::GetDevices
            }
            Method::ConnectNamespace => {
                let (_, lifeline): (&[u8], dbus::arg::OwnedFd) =
                    message.read2().map_err(|e| invalid(&e))?;
                let lifeline: OwnedFd = lifeline;
                let request = namespaces::parse_request(&proto::<
                    patchpanel_proto::ConnectNamespaceRequest,
                >(bytes, invalid)?)?;
                lifeline::check_kind(&lifeline).map_err(|e| invalid(&e))?;
                // The uid decides the quota and, for an existing pid, which
                // processes and namespaces the caller may connect.
                let uid = self.caller_uid_for_call(client)?;
                Call::ConnectNamespace(Connect {
                    request,
                    lifeline,
                    client: client.to_string(),
                    uid,
                    op,
                })
            }
            Method::ModifyPortRule => Call::ModifyPortRule(crate::port_rules::parse(
                &proto::<patchpanel_proto::ModifyPortRuleRequest>(bytes, invalid)?,
                policy,
            )?),
            Method::GetTrafficCounters => {
                Call::GetTrafficCounters(counters::parse_request(&proto::<
                    patchpanel_proto::TrafficCountersRequest,
                >(
                    bytes, invalid
                )?)?)
            }
            Method::ArcStartup => {
                let req = proto::<patchpanel_proto::ArcStartupRequest>(bytes, invalid)?;
                let uid = self.caller_uid_for_call(client)?;
                Call::ArcStartup { pid: req.pid, uid }
            }
            Method::ArcShutdown => {
                proto::<patchpanel_proto::ArcShutdownRequest>(bytes, invalid)?;
                Call::ArcShutdown
            }
            Method::ArcVmStartup => {
                let req = proto::<patchpanel_proto::ArcVmStartupRequest>(bytes, invalid)?;
                guests::check_id("cid", u64::from(req.cid))?;
                let uid = self.caller_uid_for_call(client)?;
                Call::ArcVmStartup { cid: req.cid, uid }
            }
            Method::ArcVmShutdown => {
                let req = proto::<patchpanel_proto::ArcVmShutdownRequest>(bytes, invalid)?;
                Call::ArcVmShutdown { cid: req.cid }
            }
            Method::TerminaVmStartup => {
                let req = proto::<patchpanel_proto::TerminaVmStartupRequest>(bytes, invalid)?;
                guests::check_id("cid", u64::from(req.cid))?;
                Call::TerminaVmStartup {
                    cid: req.cid,
                    caller: self.vm_caller(client, true)?,
                }
            }
            Method::TerminaVmShutdown => {
                let req = proto::<patchpanel_proto::TerminaVmShutdownRequest>(bytes, invalid)?;
                Call::TerminaVmShutdown {
                    cid: req.cid,
                    caller: self.vm_caller(client, false)?,
                }
            }
            Method::ParallelsVmStartup => {
                let req = proto::<patchpanel_proto::PluginVmStartupRequest>(bytes, invalid)?;
                guests::check_id("id", req.id)?;
                Call::ParallelsVmStartup {
                    id: req.id,
                    subnet_index: req.subnet_index,
                    caller: self.vm_caller(client, true)?,
                }
            }
            Method::ParallelsVmShutdown => {
                let req = proto::<patchpanel_proto::PluginVmShutdownRequest>(bytes, invalid)?;
                Call::ParallelsVmShutdown {
                    id: req.id,
                    caller: self.vm_caller(client, false)?,
                }
            }
            Method::TagSocket => {
                let (_, socket): (&[u8], dbus::arg::OwnedFd) =
                    message.read2().map_err(|e| invalid(&e))?;
                let action = patchpanel_socket_service::parse(bytes).map_err(|e| invalid(&e))?;
                Call::TagSocket { action, socket }
            }
            Method::SetVpnLockdown => Call::SetVpnLockdown(
                proto::<patchpanel_proto::SetVpnLockdownRequest>(bytes, invalid)?
                    .enable_vpn_lockdown,
            ),
            Method::ConfigureNetwork => {
                let req = proto::<patchpanel_proto::ConfigureNetworkRequest>(bytes, invalid)?;
                Call::ConfigureNetwork(Box::new(
                    crate::network_config::parse(&req).map_err(|e| invalid(&e))?,
                ))
            }
            Method::BruschettaVmStartup => {
                let req = proto::<patchpanel_proto::BruschettaVmStartupRequest>(bytes, invalid)?;
                guests::check_id("id", req.id)?;
                Call::BruschettaVmStartup {
                    id: req.id,
                    caller: self.vm_caller(client, true)?,
                }
            }
            Method::BruschettaVmShutdown => Call::BruschettaVmShutdown {
                id: proto::<patchpanel_proto::BruschettaVmShutdownRequest>(bytes, invalid)?.id,
                caller: self.vm_caller(client, false)?,
            },
            Method::BorealisVmStartup => {
                let req = proto::<patchpanel_proto::BorealisVmStartupRequest>(bytes, invalid)?;
                guests::check_id("id", u64::from(req.id))?;
                Call::BorealisVmStartup {
                    id: req.id,
                    caller: self.vm_caller(client, true)?,
                }
            }
            Method::BorealisVmShutdown => Call::BorealisVmShutdown {
                id: proto::<patchpanel_proto::BorealisVmShutdownRequest>(bytes, invalid)?.id,
                caller: self.vm_caller(client, false)?,
            },
            Method::SetDnsRedirectionRule => {
                let (_, lifeline): (&[u8], dbus::arg::OwnedFd) =
                    message.read2().map_err(|e| invalid(&e))?;
                let lifeline: OwnedFd = lifeline;
                let request = crate::dns_service::parse(&proto::<
                    patchpanel_proto::SetDnsRedirectionRuleRequest,
                >(bytes, invalid)?)?;
                lifeline::check_kind(&lifeline).map_err(|e| invalid(&e))?;
                // Who asked, to keep the rule across a restart of ours
                // while that process lives; without it the rule still
                // works, it only does not outlive this run.
                let owner = match self.caller_pid(client) {
                    Ok(pid) => crate::dns_service::Owner::of(pid),
                    Err(e) => {
                        warn!("{name} from {client}: {e:#}; the rule will not outlive this run");
                        None
                    }
                };
                Call::SetDnsRedirectionRule(crate::dns_service::SetRule {
                    request,
                    lifeline,
                    owner,
                })
            }
            Method::NotifyAndroidInteractiveState => Call::AndroidInteractiveState(
                proto::<patchpanel_proto::NotifyAndroidInteractiveStateRequest>(bytes, invalid)?
                    .interactive,
            ),
            Method::NotifyAndroidWifiMulticastLockChange => Call::WifiMulticastLock(
                proto::<patchpanel_proto::NotifyAndroidWifiMulticastLockChangeRequest>(
                    bytes, invalid,
                )?
                .held,
            ),
            Method::NotifySocketConnectionEvent => {
                let req =
                    proto::<patchpanel_proto::NotifySocketConnectionEventRequest>(bytes, invalid)?;
                Call::SocketConnectionEvent {
                    arc_vpn: false,
                    event: crate::chrome_service::parse_socket_event(req.msg.as_ref())
                        .map_err(|e| invalid(&e))?,
                }
            }
            Method::NotifyArcVpnSocketConnectionEvent => {
                let req = proto::<patchpanel_proto::NotifyARCVPNSocketConnectionEventRequest>(
                    bytes, invalid,
                )?;
                Call::SocketConnectionEvent {
                    arc_vpn: true,
                    event: crate::chrome_service::parse_socket_event(req.msg.as_ref())
                        .map_err(|e| invalid(&e))?,
                }
            }
            Method::SetFeatureFlag => {
                let req = proto::<patchpanel_proto::SetFeatureFlagRequest>(bytes, invalid)?;
                let flag =
                    patchpanel_proto::set_feature_flag_request::FeatureFlag::try_from(req.flag)
                        .map_err(|_| invalid(&format!("unknown feature flag {}", req.flag)))?;
                Call::SetFeatureFlag {
                    flag,
                    enabled: req.enabled,
                }
            }
        })
    }

    /// Who starts (`starts`) or stops a VM: the caller's uid, and for a
    /// start by one of `vm_owners`, the process the VM will live with (the
    /// bus names it; without it a user's VM is refused, since nothing
    /// would remove it).
    fn vm_caller(&mut self, client: &str, starts: bool) -> Result<VmCaller, CallError> {
        let uid = self.caller_uid_for_call(client)?;
        if !starts || !self.vm_owners.contains(&uid) {
            return Ok(VmCaller { uid, user: None });
        }
        let pid = self
            .caller_pid(client)
            .map_err(|e| CallError::Failed(format!("{e:#}; a VM of one's own needs it")))?;
        let process = crate::pids::Owner::of(pid).ok_or_else(|| {
            CallError::InvalidArgument(format!("process {pid} that asked has exited"))
        })?;
        Ok(VmCaller {
            uid,
            user: Some(VmUser { uid, process }),
        })
    }

    fn caller_uid_for_call(&mut self, client: &str) -> Result<u32, CallError> {
        self.caller_uid(client)
            .map_err(|e| CallError::Failed(format!("{e:#}")))
    }

    /// Sends `message`; a connection that cannot take it is logged (the
    /// next read reports a lost connection).
    fn send(&self, message: dbus::Message, what: &str) {
        if self.conn.channel().send(message).is_err() {
            warn!("cannot send {what}: the system bus connection was lost");
        }
        self.conn.channel().flush();
    }

    /// The uid of a bus peer, from the bus daemon (once per peer).
    ///
    /// The call blocks, and while it waits libdbus reads whatever else
    /// arrives into its own queue, where the socket's readiness no longer
    /// shows it: the caller must [`Self::dispatch`] again before the loop
    /// sleeps (`on_dbus` does).
    /// The pid of a bus peer, from the bus daemon (not cached: asked only
    /// by `SetDnsRedirectionRule`). Blocks as [`Self::caller_uid`] does.
    pub fn caller_pid(&mut self, sender: &str) -> anyhow::Result<u32> {
        let proxy = self.conn.with_proxy(
            "org.freedesktop.DBus",
            "/org/freedesktop/DBus",
            Duration::from_secs(5),
        );
        let (pid,): (u32,) = proxy
            .method_call(
                "org.freedesktop.DBus",
                "GetConnectionUnixProcessID",
                (sender,),
            )
            .with_context(|| format!("cannot learn the pid of {sender}"))?;
        Ok(pid)
    }

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

impl Bus for DbusService {
    /// Answers `call` with `result` (a serialized response or an error),
    /// unless the caller said it expects no reply (the bus would refuse
    /// the answer and log one line per call).
    fn reply(&mut self, call: &dbus::Message, result: Result<Vec<u8>, CallError>) {
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
                    Err(e) => {
                        warn!("cannot build the error {name}: {e}");
                        return;
                    }
                }
            }
        };
        self.send(reply, "an answer");
    }

    fn device_changed(&mut self, signal: NetworkDeviceChangedSignal) {
        match dbus::Message::new_signal(
            names::PATH,
            names::INTERFACE,
            names::NETWORK_DEVICE_CHANGED,
        ) {
            Ok(m) => self.send(
                m.append1(signal.encode_to_vec().as_slice()),
                names::NETWORK_DEVICE_CHANGED,
            ),
            Err(e) => warn!("cannot build signal {}: {e}", names::NETWORK_DEVICE_CHANGED),
        }
    }

    fn neighbor_reachability(&mut self, signal: NeighborReachabilityEventSignal) {
        match dbus::Message::new_signal(
            names::PATH,
            names::INTERFACE,
            names::NEIGHBOR_REACHABILITY_EVENT,
        ) {
            Ok(m) => self.send(
                m.append1(signal.encode_to_vec().as_slice()),
                names::NEIGHBOR_REACHABILITY_EVENT,
            ),
            Err(e) => warn!(
                "cannot build signal {}: {e}",
                names::NEIGHBOR_REACHABILITY_EVENT
            ),
        }
    }
    fn network_configuration_changed(&mut self) {
        match dbus::Message::new_signal(
            names::PATH,
            names::INTERFACE,
            names::NETWORK_CONFIGURATION_CHANGED,
        ) {
            Ok(m) => self.send(
                m.append1(
                    patchpanel_proto::NetworkConfigurationChangedSignal {}
                        .encode_to_vec()
                        .as_slice(),
                ),
                names::NETWORK_CONFIGURATION_CHANGED,
            ),
            Err(e) => warn!(
                "cannot build signal {}: {e}",
                names::NETWORK_CONFIGURATION_CHANGED
            ),
        }
    }
}

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

/// The parts of a signal's header that say whether it may be believed.
#[derive(Debug, Clone, Copy, Default)]
pub struct SignalHeader<'a> {
    /// Stamped by the bus: a unique name, or `org.freedesktop.DBus` for the
    /// bus's own signals. No client can send as another.
    pub sender: Option<&'a str>,
    pub path: Option<&'a str>,
    pub interface: Option<&'a str>,
    pub member: Option<&'a str>,
    /// The first argument when it is a string (the name in `NameOwnerChanged`).
    pub arg0: Option<&'a str>,
}

/// What a signal is, given who sent it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FirewalldVerdict {
    /// The bus says firewalld's name changed hands. A hint only: ask the
    /// bus who owns it now and believe the answer.
    OwnerHint,
    /// firewalld's current owner says it reloaded.
    Reloaded,
    /// A `Reloaded` from someone else while the bus is being asked who owns
    /// the name: believed only if the answer names its sender.
    Early,
    /// A signal about firewalld from someone who may not send it: a
    /// `NameOwnerChanged` the bus did not send, or a `Reloaded` from anyone
    /// but firewalld's owner.
    Forged,
    /// Nothing firewalld-related.
    Unrelated,
}

/// Judges a signal: `owner` is firewalld's unique name as the bus last
/// answered, `asking` whether that question is out again.
pub fn judge_firewalld(
    owner: Option<&str>,
    asking: bool,
    signal: &SignalHeader<'_>,
) -> FirewalldVerdict {
    match (signal.interface, signal.member) {
        (Some(DBUS_NAME), Some("NameOwnerChanged")) if signal.arg0 == Some(FIREWALLD) => {
            if signal.sender == Some(DBUS_NAME) && signal.path == Some(DBUS_PATH) {
                FirewalldVerdict::OwnerHint
            } else {
                FirewalldVerdict::Forged
            }
        }
        (Some(FIREWALLD), Some(RELOADED)) => match (owner, signal.sender) {
            (Some(owner), Some(sender)) if owner == sender => {
                if signal.path == Some(FIREWALLD_PATH) {
                    FirewalldVerdict::Reloaded
                } else {
                    FirewalldVerdict::Unrelated
                }
            }
            _ if asking => FirewalldVerdict::Early,
            _ => FirewalldVerdict::Forged,
        },
        _ => FirewalldVerdict::Unrelated,
    }
}

/// What the adaptor does about a signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FirewalldAction {
    /// Ask the bus who owns firewalld's name.
    AskOwner,
    /// Check the host firewall.
    Check,
    /// Count and report a forgery.
    Forged,
    Nothing,
}

/// How many senders of an early `Reloaded` are remembered while the bus is
/// asked who owns firewalld's name.
const EARLY_SENDERS: usize = 8;

/// What is known of firewalld on the bus, as plain data.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FirewalldWatch {
    /// firewalld's unique name; `Reloaded` from anyone else is ignored.
    owner: Option<String>,
    /// The serial of the `GetNameOwner` call waiting for its answer.
    asking: Option<u32>,
    /// Senders of a `Reloaded` that came while asking.
    early: Vec<String>,
}

impl FirewalldWatch {
    /// firewalld's unique name, as the bus last answered.
    pub fn owner(&self) -> Option<&str> {
        self.owner.as_deref()
    }

    /// `GetNameOwner` was sent as `serial`.
    pub fn asked(&mut self, serial: u32) {
        self.asking = Some(serial);
    }

    /// Whether a reply to `reply_serial` is the answer waited for.
    pub fn awaits(&self, reply_serial: Option<u32>) -> bool {
        reply_serial.is_some() && reply_serial == self.asking
    }

    /// The question got no usable answer: the owner stays as it was.
    pub fn unanswered(&mut self, reply_serial: Option<u32>) {
        if self.awaits(reply_serial) {
            self.asking = None;
            self.early.clear();
        }
    }

    /// The bus answered `reply_serial`: firewalld's name is owned by `owner`
    /// (`None`: nobody). True when a `Reloaded` that came while asking was
    /// the new owner's: the host firewall is to be checked.
    pub fn on_owner(&mut self, reply_serial: Option<u32>, owner: Option<String>) -> bool {
        if !self.awaits(reply_serial) {
            return false;
        }
        self.asking = None;
        self.owner = owner.filter(|o| !o.is_empty());
        let early = std::mem::take(&mut self.early);
        self.owner
            .as_ref()
            .is_some_and(|o| early.iter().any(|e| e == o))
    }

    /// A signal arrived: what to do.
    pub fn on_signal(&mut self, signal: &SignalHeader<'_>) -> FirewalldAction {
        let asking = self.asking.is_some();
        match judge_firewalld(self.owner.as_deref(), asking, signal) {
            // An answer still to come was given after this change.
            FirewalldVerdict::OwnerHint if asking => FirewalldAction::Nothing,
            FirewalldVerdict::OwnerHint => FirewalldAction::AskOwner,
            FirewalldVerdict::Reloaded => FirewalldAction::Check,
            FirewalldVerdict::Early => {
                if let Some(sender) = signal.sender {
                    if self.early.len() < EARLY_SENDERS && !self.early.iter().any(|e| e == sender) {
                        self.early.push(sender.to_string());
                    }
                }
                FirewalldAction::Nothing
            }
            FirewalldVerdict::Forged => FirewalldAction::Forged,
            FirewalldVerdict::Unrelated => FirewalldAction::Nothing,
        }
    }
}

/// Forged signals dropped: all counted, at most one warning per
/// [`FORGERY_WARNING_INTERVAL`].
#[derive(Debug, Default)]
struct Forgeries {
    total: u64,
    unreported: u64,
    last_warning: Option<Instant>,
}

impl Forgeries {
    /// Counts one more; when a warning is due, returns how many it covers.
    fn record(&mut self, now: Instant) -> Option<u64> {
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

#[cfg(test)]
mod tests {
    use super::*;

    const OWNER: &str = ":1.7";

    fn reloaded(sender: &str) -> SignalHeader<'_> {
        SignalHeader {
            sender: Some(sender),
            path: Some(FIREWALLD_PATH),
            interface: Some(FIREWALLD),
            member: Some(RELOADED),
            arg0: None,
        }
    }

    fn name_owner_changed(sender: &str) -> SignalHeader<'_> {
        SignalHeader {
            sender: Some(sender),
            path: Some(DBUS_PATH),
            interface: Some(DBUS_NAME),
            member: Some("NameOwnerChanged"),
            arg0: Some(FIREWALLD),
        }
    }

    /// A watch that knows firewalld as [`OWNER`].
    fn watching() -> FirewalldWatch {
        let mut w = FirewalldWatch::default();
        w.asked(1);
        assert!(!w.on_owner(Some(1), Some(OWNER.into())));
        w
    }

    #[test]
    fn reloaded_from_firewallds_owner_is_believed() {
        assert_eq!(
            judge_firewalld(Some(OWNER), false, &reloaded(OWNER)),
            FirewalldVerdict::Reloaded
        );
    }

    #[test]
    fn reloaded_from_another_connection_is_forged() {
        assert_eq!(
            judge_firewalld(Some(OWNER), false, &reloaded(":1.66")),
            FirewalldVerdict::Forged
        );
    }

    #[test]
    fn reloaded_while_firewalld_is_not_on_the_bus_is_forged() {
        assert_eq!(
            judge_firewalld(None, false, &reloaded(":1.66")),
            FirewalldVerdict::Forged
        );
    }

    #[test]
    fn reloaded_from_the_owner_on_another_path_is_not_firewallds_reload() {
        let signal = SignalHeader {
            path: Some("/org/fedoraproject/FirewallD1/config"),
            ..reloaded(OWNER)
        };
        assert_eq!(
            judge_firewalld(Some(OWNER), false, &signal),
            FirewalldVerdict::Unrelated
        );
    }

    #[test]
    fn name_owner_changed_from_the_bus_is_a_hint() {
        assert_eq!(
            judge_firewalld(Some(OWNER), false, &name_owner_changed(DBUS_NAME)),
            FirewalldVerdict::OwnerHint
        );
    }

    #[test]
    fn name_owner_changed_from_a_client_is_forged() {
        assert_eq!(
            judge_firewalld(Some(OWNER), false, &name_owner_changed(":1.66")),
            FirewalldVerdict::Forged
        );
    }

    #[test]
    fn name_owner_changed_about_another_name_is_unrelated() {
        let signal = SignalHeader {
            arg0: Some("org.chromium.flimflam"),
            ..name_owner_changed(DBUS_NAME)
        };
        assert_eq!(
            judge_firewalld(Some(OWNER), false, &signal),
            FirewalldVerdict::Unrelated
        );
    }

    #[test]
    fn the_owners_reload_asks_for_a_check_and_a_forgers_does_not() {
        let mut w = watching();
        assert_eq!(w.on_signal(&reloaded(OWNER)), FirewalldAction::Check);
        assert_eq!(w.on_signal(&reloaded(":1.66")), FirewalldAction::Forged);
    }

    #[test]
    fn a_hint_asks_the_bus_once_and_only_its_answer_changes_the_owner() {
        let mut w = watching();
        assert_eq!(
            w.on_signal(&name_owner_changed(DBUS_NAME)),
            FirewalldAction::AskOwner
        );
        w.asked(2);
        assert_eq!(
            w.on_signal(&name_owner_changed(DBUS_NAME)),
            FirewalldAction::Nothing,
            "the answer to come was given after this change"
        );
        assert_eq!(w.owner(), Some(OWNER), "believed until the bus answers");
        assert!(!w.on_owner(Some(2), Some(":1.8".into())));
        assert_eq!(w.owner(), Some(":1.8"));
        assert_eq!(w.on_signal(&reloaded(OWNER)), FirewalldAction::Forged);
        assert_eq!(w.on_signal(&reloaded(":1.8")), FirewalldAction::Check);
    }

    #[test]
    fn a_reply_to_another_call_does_not_change_the_owner() {
        let mut w = watching();
        w.asked(2);
        assert!(!w.awaits(Some(3)));
        assert!(!w.on_owner(Some(3), Some(":1.66".into())));
        assert_eq!(w.owner(), Some(OWNER));
    }

    #[test]
    fn firewalld_leaving_makes_its_old_names_reload_forged() {
        let mut w = watching();
        w.asked(2);
        assert!(!w.on_owner(Some(2), None));
        assert_eq!(w.owner(), None);
        assert_eq!(w.on_signal(&reloaded(OWNER)), FirewalldAction::Forged);
    }

    #[test]
    fn an_early_reload_counts_once_the_bus_names_its_sender() {
        let mut w = FirewalldWatch::default();
        w.asked(1);
        assert_eq!(w.on_signal(&reloaded(":1.8")), FirewalldAction::Nothing);
        assert!(w.on_owner(Some(1), Some(":1.8".into())));
    }

    #[test]
    fn an_early_reload_from_another_sender_is_dropped_with_the_answer() {
        let mut w = FirewalldWatch::default();
        w.asked(1);
        assert_eq!(w.on_signal(&reloaded(":1.66")), FirewalldAction::Nothing);
        assert!(!w.on_owner(Some(1), Some(":1.8".into())));
        w.asked(2);
        assert!(
            !w.on_owner(Some(2), Some(":1.66".into())),
            "forgotten with the answer it waited for"
        );
    }

    #[test]
    fn an_unanswered_question_keeps_the_owner() {
        let mut w = watching();
        w.asked(2);
        w.unanswered(Some(2));
        assert!(!w.awaits(Some(2)));
        assert_eq!(w.owner(), Some(OWNER));
    }

    #[test]
    fn forgeries_are_all_counted_and_warned_about_once_a_minute() {
        let mut f = Forgeries::default();
        let t0 = Instant::now();
        assert_eq!(f.record(t0), Some(1));
        assert_eq!(f.record(t0 + Duration::from_secs(1)), None);
        assert_eq!(f.record(t0 + FORGERY_WARNING_INTERVAL), Some(2));
        assert_eq!(f.total, 3);
    }
}
