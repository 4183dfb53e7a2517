//! The connection and one method per D-Bus method.

use std::fmt;
use std::os::fd::OwnedFd;
use std::time::Duration;

use dbus::blocking::Connection;
use dbus::channel::{BusType, Channel};
use dbus::strings::Member;
use dbus::Message;
use patchpanel_proto::{
    names, set_feature_flag_request::FeatureFlag, ArcShutdownRequest, ArcShutdownResponse,
    ArcStartupRequest, ArcStartupResponse, ArcVmShutdownRequest, ArcVmShutdownResponse,
    ArcVmStartupRequest, ArcVmStartupResponse, BorealisVmShutdownRequest,
    BorealisVmShutdownResponse, BorealisVmStartupRequest, BorealisVmStartupResponse,
    BruschettaVmShutdownRequest, BruschettaVmShutdownResponse, BruschettaVmStartupRequest,
    BruschettaVmStartupResponse, ConnectNamespaceRequest, ConnectNamespaceResponse,
    GetDevicesRequest, GetDevicesResponse, ModifyPortRuleRequest, ModifyPortRuleResponse,
    NetworkDevice, NotifyAndroidWifiMulticastLockChangeRequest,
    NotifyAndroidWifiMulticastLockChangeResponse, PluginVmShutdownRequest,
    PluginVmShutdownResponse, PluginVmStartupRequest, PluginVmStartupResponse,
    SetDnsRedirectionRuleRequest, SetDnsRedirectionRuleResponse, SetFeatureFlagRequest,
    SetFeatureFlagResponse, TagSocketRequest, TagSocketResponse, TerminaVmShutdownRequest,
    TerminaVmShutdownResponse, TerminaVmStartupRequest, TerminaVmStartupResponse, TrafficCounter,
    TrafficCountersRequest, TrafficCountersResponse,
};

use crate::error::{short_type_name, Error};
use crate::lifeline::Lifeline;
use crate::watch::{DeviceChanges, Signals};

/// How long a call waits for its answer unless told otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// A private connection to the bus patchpaneld serves on.
pub struct Client {
    pub(crate) conn: Connection,
    timeout: Duration,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("unique_name", &self.unique_name())
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// Which bus name a [`Client::tag_socket`] goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TagVia {
    /// `org.chromium.SocketService`, served by its own helper process.
    SocketService,
    /// `org.chromium.PatchPanel`, through the manager.
    PatchPanel,
}

impl Client {
    /// Connects to the system bus (`DBUS_SYSTEM_BUS_ADDRESS` if set).
    pub fn connect() -> Result<Client, Error> {
        let channel = Channel::get_private(BusType::System).map_err(|err| Error::Connect {
            address: std::env::var("DBUS_SYSTEM_BUS_ADDRESS").ok(),
            message: err.message().unwrap_or("unknown error").to_string(),
        })?;
        Ok(Self::from_channel(channel))
    }

    /// Connects to the bus at `address` (e.g. `unix:path=/run/dbus/x`).
    pub fn connect_to(address: &str) -> Result<Client, Error> {
        let connect_error = |err: dbus::Error| Error::Connect {
            address: Some(address.to_string()),
            message: err.message().unwrap_or("unknown error").to_string(),
        };
        let mut channel = Channel::open_private(address).map_err(connect_error)?;
        channel.register().map_err(connect_error)?;
        Ok(Self::from_channel(channel))
    }

    fn from_channel(channel: Channel) -> Client {
        Client {
            conn: Connection::from(channel),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// The same client with another per-call timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> Client {
        self.timeout = timeout;
        self
    }

    /// Sets the per-call timeout.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// The per-call timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// This connection's unique bus name (`:1.42`), as the server logs it.
    pub fn unique_name(&self) -> String {
        self.conn.unique_name().to_string()
    }

    /// Calls `method` with `request` (and `fd`, for the `ay h` methods) and
    /// decodes the answer as a `Resp`.
    pub fn call<Req, Resp>(
        &self,
        method: &str,
        request: &Req,
        fd: Option<OwnedFd>,
    ) -> Result<Resp, Error>
    where
        Req: prost::Message,
        Resp: prost::Message + Default,
    {
        let member =
            Member::new(method).map_err(|_| Error::InvalidMethodName(method.to_string()))?;
        let mut msg = Message::method_call(
            &names::SERVICE.into(),
            &names::PATH.into(),
            &names::INTERFACE.into(),
            &member,
        )
        .append1(request.encode_to_vec());
        if let Some(fd) = fd {
            // libdbus duplicates the descriptor into the message; ours closes
            // here and the message's copy when the message is sent and freed.
            msg = msg.append1(fd);
        }
        let reply = self
            .conn
            .channel()
            .send_with_reply_and_block(msg, self.timeout)
            .map_err(|err| Error::from_call(method, self.timeout, &err))?;
        let bytes: Vec<u8> = reply.read1().map_err(|err| Error::UnexpectedArguments {
            what: format!("{method} reply"),
            reason: err.to_string(),
        })?;
        Resp::decode(bytes.as_slice()).map_err(|source| Error::Decode {
            message: short_type_name::<Resp>(),
            source,
        })
    }

    /// `ConnectNamespace`: connects the namespace of `request.pid` (or a new
    /// named one for pid -1) to the host. The namespace stays connected for
    /// as long as the returned [`Lifeline`] lives.
    pub fn connect_namespace(
        &self,
        request: &ConnectNamespaceRequest,
    ) -> Result<(ConnectNamespaceResponse, Lifeline), Error> {
        let (lifeline, write_end) = Lifeline::pair().map_err(Error::Pipe)?;
        let response: ConnectNamespaceResponse =
            self.call(names::CONNECT_NAMESPACE, request, Some(write_end))?;
        if response.host_ifname.is_empty() || response.peer_ifname.is_empty() {
            return Err(empty_response(names::CONNECT_NAMESPACE));
        }
        Ok((response, lifeline))
    }

    /// `TagSocket`: sets the routing tag and VPN bits of `socket`'s mark,
    /// through `org.chromium.SocketService` (as shill and dns-proxy call
    /// it) or `org.chromium.PatchPanel` (as Chrome does). Tag a socket
    /// before connecting it.
    pub fn tag_socket(
        &self,
        socket: std::os::fd::BorrowedFd<'_>,
        request: &TagSocketRequest,
        via: TagVia,
    ) -> Result<(), Error> {
        let socket = socket.try_clone_to_owned().map_err(Error::Pipe)?;
        let (service, path, interface) = match via {
            TagVia::SocketService => (
                names::SOCKET_SERVICE_NAME,
                names::SOCKET_SERVICE_PATH,
                names::SOCKET_SERVICE_INTERFACE,
            ),
            TagVia::PatchPanel => (names::SERVICE, names::PATH, names::INTERFACE),
        };
        let msg = Message::method_call(
            &service.into(),
            &path.into(),
            &interface.into(),
            &Member::from(names::TAG_SOCKET),
        )
        .append2(prost::Message::encode_to_vec(request), socket);
        let reply = self
            .conn
            .channel()
            .send_with_reply_and_block(msg, self.timeout)
            .map_err(|err| Error::from_call(names::TAG_SOCKET, self.timeout, &err))?;
        let bytes: Vec<u8> = reply.read1().map_err(|err| Error::UnexpectedArguments {
            what: "TagSocket reply".into(),
            reason: err.to_string(),
        })?;
        let response =
            <TagSocketResponse as prost::Message>::decode(bytes.as_slice()).map_err(|source| {
                Error::Decode {
                    message: "TagSocketResponse",
                    source,
                }
            })?;
        if response.success {
            Ok(())
        } else {
            Err(Error::Failed(
                "TagSocket: the server answered success = false".into(),
            ))
        }
    }

    /// `GetDevices`: every guest device patchpanel manages.
    pub fn get_devices(&self) -> Result<Vec<NetworkDevice>, Error> {
        let response: GetDevicesResponse =
            self.call(names::GET_DEVICES, &GetDevicesRequest {}, None)?;
        Ok(response.devices)
    }

    /// `GetTrafficCounters` for `devices` (empty: all of them).
    pub fn get_traffic_counters<S: AsRef<str>>(
        &self,
        devices: &[S],
    ) -> Result<Vec<TrafficCounter>, Error> {
        let request = TrafficCountersRequest {
            devices: devices.iter().map(|d| d.as_ref().to_string()).collect(),
        };
        let response: TrafficCountersResponse =
            self.call(names::GET_TRAFFIC_COUNTERS, &request, None)?;
        Ok(response.counters)
    }

    /// `ModifyPortRule`. A response with `success: false` (how the original
    /// patchpanel refuses) is reported as [`Error::Failed`].
    pub fn modify_port_rule(&self, request: &ModifyPortRuleRequest) -> Result<(), Error> {
        let response: ModifyPortRuleResponse = self.call(names::MODIFY_PORT_RULE, request, None)?;
        if !response.success {
            return Err(Error::Failed(format!(
                "{}: the server answered success=false without a reason",
                names::MODIFY_PORT_RULE
            )));
        }
        Ok(())
    }

    /// `ArcStartup` for the container whose init is `pid`.
    pub fn arc_startup(&self, pid: i32) -> Result<(), Error> {
        let _: ArcStartupResponse =
            self.call(names::ARC_STARTUP, &ArcStartupRequest { pid }, None)?;
        Ok(())
    }

    /// `ArcShutdown`.
    pub fn arc_shutdown(&self, pid: i32) -> Result<(), Error> {
        let _: ArcShutdownResponse =
            self.call(names::ARC_SHUTDOWN, &ArcShutdownRequest { pid }, None)?;
        Ok(())
    }

    /// `ArcVmStartup` for the VM with vsock context id `cid`.
    pub fn arcvm_startup(&self, cid: u32) -> Result<ArcVmStartupResponse, Error> {
        let response: ArcVmStartupResponse =
            self.call(names::ARC_VM_STARTUP, &ArcVmStartupRequest { cid }, None)?;
        if response.tap_device_ifnames.is_empty() {
            return Err(empty_response(names::ARC_VM_STARTUP));
        }
        Ok(response)
    }

    /// `ArcVmShutdown`.
    pub fn arcvm_shutdown(&self, cid: u32) -> Result<(), Error> {
        let _: ArcVmShutdownResponse =
            self.call(names::ARC_VM_SHUTDOWN, &ArcVmShutdownRequest { cid }, None)?;
        Ok(())
    }

    /// `TerminaVmStartup` for the VM with vsock context id `cid`.
    pub fn terminavm_startup(&self, cid: u32) -> Result<TerminaVmStartupResponse, Error> {
        let response: TerminaVmStartupResponse = self.call(
            names::TERMINA_VM_STARTUP,
            &TerminaVmStartupRequest { cid },
            None,
        )?;
        if response.tap_device_ifname.is_empty() {
            return Err(empty_response(names::TERMINA_VM_STARTUP));
        }
        Ok(response)
    }

    /// `TerminaVmShutdown`.
    pub fn terminavm_shutdown(&self, cid: u32) -> Result<(), Error> {
        let _: TerminaVmShutdownResponse = self.call(
            names::TERMINA_VM_SHUTDOWN,
            &TerminaVmShutdownRequest { cid },
            None,
        )?;
        Ok(())
    }

    /// `BruschettaVmStartup` for the VM `id`.
    pub fn bruschettavm_startup(&self, id: u64) -> Result<BruschettaVmStartupResponse, Error> {
        let response: BruschettaVmStartupResponse = self.call(
            names::BRUSCHETTA_VM_STARTUP,
            &BruschettaVmStartupRequest { id },
            None,
        )?;
        if response.tap_device_ifname.is_empty() {
            return Err(empty_response(names::BRUSCHETTA_VM_STARTUP));
        }
        Ok(response)
    }

    /// `BruschettaVmShutdown`.
    pub fn bruschettavm_shutdown(&self, id: u64) -> Result<(), Error> {
        let _: BruschettaVmShutdownResponse = self.call(
            names::BRUSCHETTA_VM_SHUTDOWN,
            &BruschettaVmShutdownRequest { id },
            None,
        )?;
        Ok(())
    }

    /// `BorealisVmStartup` for the VM `id` (its cid).
    pub fn borealisvm_startup(&self, id: u32) -> Result<BorealisVmStartupResponse, Error> {
        let response: BorealisVmStartupResponse = self.call(
            names::BOREALIS_VM_STARTUP,
            &BorealisVmStartupRequest { id },
            None,
        )?;
        if response.tap_device_ifname.is_empty() {
            return Err(empty_response(names::BOREALIS_VM_STARTUP));
        }
        Ok(response)
    }

    /// `BorealisVmShutdown`.
    pub fn borealisvm_shutdown(&self, id: u32) -> Result<(), Error> {
        let _: BorealisVmShutdownResponse = self.call(
            names::BOREALIS_VM_SHUTDOWN,
            &BorealisVmShutdownRequest { id },
            None,
        )?;
        Ok(())
    }

    /// `SetDnsRedirectionRule`: the rule holds for as long as the returned
    /// [`Lifeline`] lives.
    pub fn set_dns_redirection_rule(
        &self,
        request: &SetDnsRedirectionRuleRequest,
    ) -> Result<Lifeline, Error> {
        let (lifeline, write_end) = Lifeline::pair().map_err(Error::Pipe)?;
        let response: SetDnsRedirectionRuleResponse =
            self.call(names::SET_DNS_REDIRECTION_RULE, request, Some(write_end))?;
        if !response.success {
            return Err(empty_response(names::SET_DNS_REDIRECTION_RULE));
        }
        Ok(lifeline)
    }

    /// `NotifyAndroidWifiMulticastLockChange`, as Chrome sends it.
    pub fn notify_wifi_multicast_lock(&self, held: bool) -> Result<(), Error> {
        let _: NotifyAndroidWifiMulticastLockChangeResponse = self.call(
            names::NOTIFY_ANDROID_WIFI_MULTICAST_LOCK_CHANGE,
            &NotifyAndroidWifiMulticastLockChangeRequest { held },
            None,
        )?;
        Ok(())
    }

    /// `SetFeatureFlag`: the flag's value before the call.
    pub fn set_feature_flag(&self, flag: FeatureFlag, enabled: bool) -> Result<bool, Error> {
        let response: SetFeatureFlagResponse = self.call(
            names::SET_FEATURE_FLAG,
            &SetFeatureFlagRequest {
                flag: flag as i32,
                enabled,
            },
            None,
        )?;
        Ok(response.enabled)
    }

    /// `PluginVmStartup`: `subnet_index` is 1-based, 0 for any free subnet.
    pub fn pluginvm_startup(
        &self,
        id: u64,
        subnet_index: i32,
    ) -> Result<PluginVmStartupResponse, Error> {
        self.plugin_vm_startup_as(names::PLUGIN_VM_STARTUP, id, subnet_index)
    }

    /// `PluginVmShutdown`.
    pub fn pluginvm_shutdown(&self, id: u64) -> Result<(), Error> {
        self.plugin_vm_shutdown_as(names::PLUGIN_VM_SHUTDOWN, id)
    }

    /// `ParallelsVmStartup`, the other name of `PluginVmStartup`.
    pub fn parallelsvm_startup(
        &self,
        id: u64,
        subnet_index: i32,
    ) -> Result<PluginVmStartupResponse, Error> {
        self.plugin_vm_startup_as(names::PARALLELS_VM_STARTUP, id, subnet_index)
    }

    /// `ParallelsVmShutdown`, the other name of `PluginVmShutdown`.
    pub fn parallelsvm_shutdown(&self, id: u64) -> Result<(), Error> {
        self.plugin_vm_shutdown_as(names::PARALLELS_VM_SHUTDOWN, id)
    }

    fn plugin_vm_startup_as(
        &self,
        method: &str,
        id: u64,
        subnet_index: i32,
    ) -> Result<PluginVmStartupResponse, Error> {
        let request = PluginVmStartupRequest { id, subnet_index };
        let response: PluginVmStartupResponse = self.call(method, &request, None)?;
        if response.tap_device_ifname.is_empty() {
            return Err(empty_response(method));
        }
        Ok(response)
    }

    fn plugin_vm_shutdown_as(&self, method: &str, id: u64) -> Result<(), Error> {
        let _: PluginVmShutdownResponse =
            self.call(method, &PluginVmShutdownRequest { id }, None)?;
        Ok(())
    }

    /// Subscribes to `NetworkDeviceChanged`; the subscription ends when the
    /// returned [`DeviceChanges`] is dropped.
    pub fn watch_device_changes(&self) -> Result<DeviceChanges<'_>, Error> {
        DeviceChanges::subscribe_device_changes(self)
    }

    /// Subscribes to every signal of `org.chromium.PatchPanel`; the
    /// subscription ends when the returned [`Signals`] is dropped.
    pub fn watch_signals(&self) -> Result<Signals<'_>, Error> {
        Signals::subscribe_all(self)
    }
}

/// The original patchpanel answers a failed startup with an all-default
/// response; a successful one always names an interface.
fn empty_response(method: &str) -> Error {
    Error::Failed(format!(
        "{method}: the server answered an empty response (how the original patchpanel fails)"
    ))
}
