//! The host's uplinks (physical networks) and which one is the default
//! network, for the unprivileged manager.
//!
//! Two sources sit behind [`UplinkSource`]:
//! - [`ShillUplinks`]: shill (`org.chromium.flimflam`) decides which
//!   interfaces are uplinks, their technology and the default network; the
//!   kernel gives their ifindex, state and addresses.
//! - [`NetlinkUplinks`]: without shill, every link whose name starts with a
//!   configured prefix is an uplink, whatever its driver; the default network
//!   holds the default route.
//!
//! Both build a [`Snapshot`] after every wake-up and report the difference
//! with the previous one ([`diff`], a pure function), so a consumer sees the
//! same event stream whatever the source. The first [`UplinkSource::process`]
//! reports everything present as [`UplinkEvent::Added`]: a consumer has a
//! single code path.
//!
//! The manager's event loop is single-threaded (mio): each source exposes its
//! descriptors, never blocks on a peer (shill is queried asynchronously) and
//! drains everything on each call, because libdbus is level-triggered.

mod diff;
mod kernel;
mod netlink;
mod shill;

use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::RawFd;

pub use patchpanel_ipc::IfName;

pub use diff::{diff, Snapshot};
pub use netlink::NetlinkUplinks;
pub use shill::{shill_is_running, ShillUplinks};

/// What kind of network an uplink is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Technology {
    Ethernet,
    Wifi,
    Cellular,
    Vpn,
    Unknown,
}

impl Technology {
    /// From shill's Device `Type` property.
    pub fn from_shill_type(kind: &str) -> Technology {
        match kind {
            "ethernet" => Technology::Ethernet,
            "wifi" => Technology::Wifi,
            "cellular" => Technology::Cellular,
            "vpn" => Technology::Vpn,
            _ => Technology::Unknown,
        }
    }

    /// From an interface name, the way netlink mode guesses it: `eth`/`en`/`usb`
    /// are Ethernet, `wlan`/`mlan`/`wl` Wi-Fi, `wwan` cellular, `tun`/`ppp`/`wg` VPN.
    pub fn from_ifname(name: &str) -> Technology {
        const TABLE: &[(&str, Technology)] = &[
            ("wwan", Technology::Cellular),
            ("wlan", Technology::Wifi),
            ("mlan", Technology::Wifi),
            ("wl", Technology::Wifi),
            ("eth", Technology::Ethernet),
            ("en", Technology::Ethernet),
            ("usb", Technology::Ethernet),
            ("tun", Technology::Vpn),
            ("ppp", Technology::Vpn),
            ("wg", Technology::Vpn),
        ];
        TABLE
            .iter()
            .find(|(prefix, _)| name.starts_with(prefix))
            .map_or(Technology::Unknown, |(_, t)| *t)
    }
}

/// One uplink as the kernel sees it right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uplink {
    /// Validated on the way in: a kernel name that [`IfName`] refuses is
    /// never an uplink.
    pub name: IfName,
    pub ifindex: u32,
    /// Administratively up (`IFF_UP`).
    pub up: bool,
    /// Sorted, without duplicates.
    pub ipv4: Vec<(Ipv4Addr, u8)>,
    /// Sorted, without duplicates; link-local addresses included.
    pub ipv6: Vec<(Ipv6Addr, u8)>,
    /// The gateway of the best IPv4 default route out of this link, in the
    /// main table or in the link's own table (ifindex + 1000, where shill
    /// puts it).
    pub gateway4: Option<Ipv4Addr>,
    pub technology: Technology,
}

impl std::fmt::Display for Uplink {
    /// One short line for logs: `eth0 #2 up ethernet 192.0.2.2/24 gw 192.0.2.1, 1 IPv6`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} #{} {} {:?}",
            self.name,
            self.ifindex,
            if self.up { "up" } else { "down" },
            self.technology
        )?;
        for (addr, len) in &self.ipv4 {
            write!(f, " {addr}/{len}")?;
        }
        if let Some(gw) = self.gateway4 {
            write!(f, " gw {gw}")?;
        }
        write!(f, ", {} IPv6", self.ipv6.len())
    }
}

impl std::fmt::Display for UplinkEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UplinkEvent::Added(u) => write!(f, "added {u}"),
            UplinkEvent::Changed(u) => write!(f, "changed {u}"),
            UplinkEvent::Removed(u) => write!(f, "removed {} #{}", u.name, u.ifindex),
            UplinkEvent::DefaultChanged(Some(name)) => write!(f, "default is now {name}"),
            UplinkEvent::DefaultChanged(None) => write!(f, "no default uplink"),
        }
    }
}

/// A change of the uplink set, in the order a consumer should apply them:
/// all `Removed`, then `Added`, then `Changed`, then `DefaultChanged`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UplinkEvent {
    Added(Uplink),
    /// Addresses, up state, gateway or technology changed. An uplink that came
    /// back with a new ifindex is `Removed` then `Added` instead.
    Changed(Uplink),
    Removed(Uplink),
    /// The default network is now this uplink (always one that was `Added`),
    /// or there is none. Also sent when the default uplink came back with a
    /// new ifindex.
    DefaultChanged(Option<IfName>),
}

/// Why a source failed.
#[derive(Debug, thiserror::Error)]
pub enum UplinkError {
    #[error("cannot connect to the D-Bus bus{}: {message}", address.as_deref().map(|a| format!(" at {a}")).unwrap_or_default())]
    BusConnect {
        address: Option<String>,
        message: String,
    },
    #[error("D-Bus call {call} failed: {message}")]
    BusCall { call: String, message: String },
    #[error("the D-Bus connection was lost")]
    BusLost,
    #[error("rtnetlink: {context}: {source}")]
    Netlink {
        context: &'static str,
        #[source]
        source: patchpanel_rtnl::RtnlError,
    },
    #[error("invalid uplink prefix {0:?}")]
    BadPrefix(String),
}

/// A source of uplinks for the manager's event loop.
pub trait UplinkSource {
    /// Descriptors to register as READABLE; call [`Self::process`] when any
    /// of them is readable.
    fn fds(&self) -> Vec<RawFd>;
    /// Reads everything pending and returns what changed since the last
    /// call. Never blocks; may be called when nothing is pending. An error
    /// means the source is unusable (its socket is gone).
    fn process(&mut self) -> Result<Vec<UplinkEvent>, UplinkError>;
    /// The uplinks as last reported by [`Self::process`], sorted by name.
    fn uplinks(&self) -> Vec<Uplink>;
    /// The default uplink as last reported by [`Self::process`].
    fn default_uplink(&self) -> Option<Uplink>;
    /// `"shill"` or `"netlink"`, for logs.
    fn name(&self) -> &'static str;
}

/// Which source to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Shill when `org.chromium.flimflam` has an owner on the bus, else netlink.
    #[default]
    Auto,
    Shill,
    Netlink,
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Mode, String> {
        match s {
            "auto" => Ok(Mode::Auto),
            "shill" => Ok(Mode::Shill),
            "netlink" => Ok(Mode::Netlink),
            other => Err(format!(
                "unknown uplink mode {other:?} (auto, shill or netlink)"
            )),
        }
    }
}

/// The interface-name prefixes that make a link an uplink in netlink mode.
pub const DEFAULT_PREFIXES: &[&str] = &["eth", "wlan", "mlan", "usb", "wwan", "en", "wl"];

/// How to find uplinks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UplinkConfig {
    /// Netlink mode: a link is an uplink when its name starts with one of
    /// these.
    pub prefixes: Vec<String>,
    /// The bus where shill lives; `None` is the system bus
    /// (`DBUS_SYSTEM_BUS_ADDRESS` is honoured).
    pub bus_address: Option<String>,
}

impl Default for UplinkConfig {
    fn default() -> Self {
        UplinkConfig {
            prefixes: DEFAULT_PREFIXES.iter().map(|p| p.to_string()).collect(),
            bus_address: None,
        }
    }
}

/// Opens the source `mode` asks for. In `Auto` mode a bus that cannot be
/// reached means netlink.
pub fn open(mode: Mode, config: &UplinkConfig) -> Result<Box<dyn UplinkSource>, UplinkError> {
    let use_shill = match mode {
        Mode::Shill => true,
        Mode::Netlink => false,
        Mode::Auto => match shill_is_running(config.bus_address.as_deref()) {
            Ok(running) => running,
            Err(e) => {
                log::info!("uplinks: no bus to ask about shill ({e}); using netlink");
                false
            }
        },
    };
    if use_shill {
        Ok(Box::new(ShillUplinks::open(config.bus_address.as_deref())?))
    } else {
        Ok(Box::new(NetlinkUplinks::open(&config.prefixes)?))
    }
}
