//! D-Bus names of the service: where it lives, what it answers, what it
//! emits and which errors it returns.
//!
//! These strings are part of the compatibility contract with existing
//! clients, the bus policy in `upstart/` and the tests; keeping them in one
//! place means a typo fails to compile instead of failing at run time.

/// Well-known bus name the daemon owns.
pub const SERVICE: &str = "org.chromium.PatchPanel";
/// Object path of the single exported object.
pub const PATH: &str = "/org/chromium/PatchPanel";
/// Interface of every method and signal.
pub const INTERFACE: &str = "org.chromium.PatchPanel";

/// Method `ArcStartup`.
pub const ARC_STARTUP: &str = "ArcStartup";
/// Method `ArcShutdown`.
pub const ARC_SHUTDOWN: &str = "ArcShutdown";
/// Method `ArcVmStartup`.
pub const ARC_VM_STARTUP: &str = "ArcVmStartup";
/// Method `ArcVmShutdown`.
pub const ARC_VM_SHUTDOWN: &str = "ArcVmShutdown";
/// Method `TerminaVmStartup`.
pub const TERMINA_VM_STARTUP: &str = "TerminaVmStartup";
/// Method `TerminaVmShutdown`.
pub const TERMINA_VM_SHUTDOWN: &str = "TerminaVmShutdown";
/// Method `PluginVmStartup`.
pub const PLUGIN_VM_STARTUP: &str = "PluginVmStartup";
/// Method `PluginVmShutdown`.
pub const PLUGIN_VM_SHUTDOWN: &str = "PluginVmShutdown";
/// Method `ParallelsVmStartup`, same messages and behavior as
/// [`PLUGIN_VM_STARTUP`].
pub const PARALLELS_VM_STARTUP: &str = "ParallelsVmStartup";
/// Method `ParallelsVmShutdown`, same messages and behavior as
/// [`PLUGIN_VM_SHUTDOWN`].
pub const PARALLELS_VM_SHUTDOWN: &str = "ParallelsVmShutdown";
/// Method `ConnectNamespace` (request + lifeline fd).
pub const CONNECT_NAMESPACE: &str = "ConnectNamespace";
/// Method `GetDevices`.
pub const GET_DEVICES: &str = "GetDevices";
/// Method `GetTrafficCounters`.
pub const GET_TRAFFIC_COUNTERS: &str = "GetTrafficCounters";
/// Method `ModifyPortRule`.
pub const MODIFY_PORT_RULE: &str = "ModifyPortRule";
/// Method `SetVpnIntent` (request + socket fd; later scope).
pub const SET_VPN_INTENT: &str = "SetVpnIntent";
/// Method `SetVpnLockdown` (later scope).
pub const SET_VPN_LOCKDOWN: &str = "SetVpnLockdown";
/// Method `SetDnsRedirectionRule` (request + lifeline fd; later scope).
pub const SET_DNS_REDIRECTION_RULE: &str = "SetDnsRedirectionRule";
/// Method `TagSocket` (request + the socket to tag), on both
/// `org.chromium.PatchPanel` and `org.chromium.SocketService`.
pub const TAG_SOCKET: &str = "TagSocket";
/// Method `ConfigureNetwork` (shill).
pub const CONFIGURE_NETWORK: &str = "ConfigureNetwork";

/// Method `BruschettaVmStartup` (concierge).
pub const BRUSCHETTA_VM_STARTUP: &str = "BruschettaVmStartup";
/// Method `BruschettaVmShutdown` (concierge).
pub const BRUSCHETTA_VM_SHUTDOWN: &str = "BruschettaVmShutdown";
/// Method `BorealisVmStartup` (concierge).
pub const BOREALIS_VM_STARTUP: &str = "BorealisVmStartup";
/// Method `BorealisVmShutdown` (concierge).
pub const BOREALIS_VM_SHUTDOWN: &str = "BorealisVmShutdown";
/// Method `NotifyAndroidInteractiveState` (Chrome).
pub const NOTIFY_ANDROID_INTERACTIVE_STATE: &str = "NotifyAndroidInteractiveState";
/// Method `NotifyAndroidWifiMulticastLockChange` (Chrome).
pub const NOTIFY_ANDROID_WIFI_MULTICAST_LOCK_CHANGE: &str = "NotifyAndroidWifiMulticastLockChange";
/// Method `NotifySocketConnectionEvent` (Chrome).
pub const NOTIFY_SOCKET_CONNECTION_EVENT: &str = "NotifySocketConnectionEvent";
/// Method `NotifyARCVPNSocketConnectionEvent` (Chrome).
pub const NOTIFY_ARC_VPN_SOCKET_CONNECTION_EVENT: &str = "NotifyARCVPNSocketConnectionEvent";
/// Method `SetFeatureFlag` (Chrome).
pub const SET_FEATURE_FLAG: &str = "SetFeatureFlag";

/// Bus name of the socket service, owned by patchpanel's socket helper.
pub const SOCKET_SERVICE_NAME: &str = "org.chromium.SocketService";
/// Object path of the socket service.
pub const SOCKET_SERVICE_PATH: &str = "/org/chromium/SocketService";
/// Interface of the socket service.
pub const SOCKET_SERVICE_INTERFACE: &str = "org.chromium.SocketService";
/// The socket service's error for a request that is malformed or names
/// something that does not exist.
pub const SOCKET_SERVICE_ERROR_INVALID_ARGUMENT: &str =
    "org.chromium.SocketService.Error.InvalidArgument";
/// The socket service's error for a valid request the kernel refused.
pub const SOCKET_SERVICE_ERROR_FAILED: &str = "org.chromium.SocketService.Error.Failed";

/// Signal `NetworkDeviceChanged`, payload
/// [`crate::NetworkDeviceChangedSignal`].
pub const NETWORK_DEVICE_CHANGED: &str = "NetworkDeviceChanged";
/// Signal `NetworkConfigurationChanged` (empty payload,
/// [`crate::NetworkConfigurationChangedSignal`]): ARC's DNS proxy addresses
/// in `GetDevices` changed.
pub const NETWORK_CONFIGURATION_CHANGED: &str = "NetworkConfigurationChanged";
/// Signal `NeighborReachabilityEvent`, payload
/// [`crate::NeighborReachabilityEventSignal`].
pub const NEIGHBOR_REACHABILITY_EVENT: &str = "NeighborReachabilityEvent";

/// Error for a request that is malformed or asks for something invalid.
pub const ERROR_INVALID_ARGUMENT: &str = "org.chromium.PatchPanel.Error.InvalidArgument";
/// Error for a valid request that could not be carried out (kernel or
/// internal failure).
pub const ERROR_FAILED: &str = "org.chromium.PatchPanel.Error.Failed";

/// How a method is called: its name, whether a file descriptor follows the
/// request bytes, and the names of its request and response messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MethodSpec {
    /// D-Bus member name.
    pub name: &'static str,
    /// `true` if the signature is `ay h` rather than `ay`.
    pub takes_fd: bool,
    /// Protobuf message name of the request.
    pub request: &'static str,
    /// Protobuf message name of the response.
    pub response: &'static str,
}

const fn spec(
    name: &'static str,
    takes_fd: bool,
    request: &'static str,
    response: &'static str,
) -> MethodSpec {
    MethodSpec {
        name,
        takes_fd,
        request,
        response,
    }
}

/// Every method of the interface, in the order of the reference document.
pub const METHODS: &[MethodSpec] = &[
    spec(
        ARC_STARTUP,
        false,
        "ArcStartupRequest",
        "ArcStartupResponse",
    ),
    spec(
        ARC_SHUTDOWN,
        false,
        "ArcShutdownRequest",
        "ArcShutdownResponse",
    ),
    spec(
        ARC_VM_STARTUP,
        false,
        "ArcVmStartupRequest",
        "ArcVmStartupResponse",
    ),
    spec(
        ARC_VM_SHUTDOWN,
        false,
        "ArcVmShutdownRequest",
        "ArcVmShutdownResponse",
    ),
    spec(
        TERMINA_VM_STARTUP,
        false,
        "TerminaVmStartupRequest",
        "TerminaVmStartupResponse",
    ),
    spec(
        TERMINA_VM_SHUTDOWN,
        false,
        "TerminaVmShutdownRequest",
        "TerminaVmShutdownResponse",
    ),
    spec(
        PLUGIN_VM_STARTUP,
        false,
        "PluginVmStartupRequest",
        "PluginVmStartupResponse",
    ),
    spec(
        PLUGIN_VM_SHUTDOWN,
        false,
        "PluginVmShutdownRequest",
        "PluginVmShutdownResponse",
    ),
    spec(
        PARALLELS_VM_STARTUP,
        false,
        "PluginVmStartupRequest",
        "PluginVmStartupResponse",
    ),
    spec(
        PARALLELS_VM_SHUTDOWN,
        false,
        "PluginVmShutdownRequest",
        "PluginVmShutdownResponse",
    ),
    spec(
        BRUSCHETTA_VM_STARTUP,
        false,
        "BruschettaVmStartupRequest",
        "BruschettaVmStartupResponse",
    ),
    spec(
        BRUSCHETTA_VM_SHUTDOWN,
        false,
        "BruschettaVmShutdownRequest",
        "BruschettaVmShutdownResponse",
    ),
    spec(
        BOREALIS_VM_STARTUP,
        false,
        "BorealisVmStartupRequest",
        "BorealisVmStartupResponse",
    ),
    spec(
        BOREALIS_VM_SHUTDOWN,
        false,
        "BorealisVmShutdownRequest",
        "BorealisVmShutdownResponse",
    ),
    spec(
        CONNECT_NAMESPACE,
        true,
        "ConnectNamespaceRequest",
        "ConnectNamespaceResponse",
    ),
    spec(
        GET_DEVICES,
        false,
        "GetDevicesRequest",
        "GetDevicesResponse",
    ),
    spec(
        GET_TRAFFIC_COUNTERS,
        false,
        "TrafficCountersRequest",
        "TrafficCountersResponse",
    ),
    spec(
        MODIFY_PORT_RULE,
        false,
        "ModifyPortRuleRequest",
        "ModifyPortRuleResponse",
    ),
    spec(
        SET_VPN_INTENT,
        true,
        "SetVpnIntentRequest",
        "SetVpnIntentResponse",
    ),
    spec(
        SET_VPN_LOCKDOWN,
        false,
        "SetVpnLockdownRequest",
        "SetVpnLockdownResponse",
    ),
    spec(
        SET_DNS_REDIRECTION_RULE,
        true,
        "SetDnsRedirectionRuleRequest",
        "SetDnsRedirectionRuleResponse",
    ),
    spec(TAG_SOCKET, true, "TagSocketRequest", "TagSocketResponse"),
    spec(
        CONFIGURE_NETWORK,
        false,
        "ConfigureNetworkRequest",
        "ConfigureNetworkResponse",
    ),
    spec(
        NOTIFY_ANDROID_INTERACTIVE_STATE,
        false,
        "NotifyAndroidInteractiveStateRequest",
        "NotifyAndroidInteractiveStateResponse",
    ),
    spec(
        NOTIFY_ANDROID_WIFI_MULTICAST_LOCK_CHANGE,
        false,
        "NotifyAndroidWifiMulticastLockChangeRequest",
        "NotifyAndroidWifiMulticastLockChangeResponse",
    ),
    spec(
        NOTIFY_SOCKET_CONNECTION_EVENT,
        false,
        "NotifySocketConnectionEventRequest",
        "NotifySocketConnectionEventResponse",
    ),
    spec(
        NOTIFY_ARC_VPN_SOCKET_CONNECTION_EVENT,
        false,
        "NotifyARCVPNSocketConnectionEventRequest",
        "NotifyARCVPNSocketConnectionEventResponse",
    ),
    spec(
        SET_FEATURE_FLAG,
        false,
        "SetFeatureFlagRequest",
        "SetFeatureFlagResponse",
    ),
];

/// The [`MethodSpec`] of the method called `name`, if the interface has one.
pub fn method(name: &str) -> Option<&'static MethodSpec> {
    METHODS.iter().find(|spec| spec.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_names_are_unique() {
        for (i, a) in METHODS.iter().enumerate() {
            for b in &METHODS[i + 1..] {
                assert_ne!(a.name, b.name);
            }
        }
    }

    #[test]
    fn methods_with_a_file_descriptor_are_those_of_the_reference() {
        let with_fd: Vec<&str> = METHODS
            .iter()
            .filter(|spec| spec.takes_fd)
            .map(|spec| spec.name)
            .collect();

        assert_eq!(
            with_fd,
            [
                CONNECT_NAMESPACE,
                SET_VPN_INTENT,
                SET_DNS_REDIRECTION_RULE,
                TAG_SOCKET
            ]
        );
    }

    #[test]
    fn parallels_methods_share_the_plugin_vm_messages() {
        let plugin = method(PLUGIN_VM_STARTUP).expect("listed");
        let parallels = method(PARALLELS_VM_STARTUP).expect("listed");

        assert_eq!(
            (plugin.request, plugin.response),
            (parallels.request, parallels.response)
        );
    }

    #[test]
    fn error_names_live_under_the_interface() {
        assert_eq!(
            ERROR_INVALID_ARGUMENT,
            format!("{INTERFACE}.Error.InvalidArgument")
        );
        assert_eq!(ERROR_FAILED, format!("{INTERFACE}.Error.Failed"));
    }

    #[test]
    fn unknown_method_has_no_spec() {
        assert_eq!(method("CreateTetheredNetwork"), None);
    }
}
