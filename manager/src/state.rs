//! The manager's state: every guest network it built and every kernel
//! setting it changed, as one serializable value (DESIGN.md §9).
//!
//! It is saved atomically (write to a temporary file, fsync, rename) after
//! every change, so a crashed manager's successor knows what to tear down
//! or adopt, and a clean stop knows which sysctls to restore.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use patchpanel_addr::{GuestSubnet, Ipv6Subnet, MacAddr};
use patchpanel_ipc::datapath::{Netns, Sysctl};
use patchpanel_ipc::{IfName, NetnsName};
use patchpanel_proto::{network_device::GuestType, GetDevicesResponse, NetworkDevice};
use serde::{Deserialize, Serialize};

use crate::routing::{RoutingMode, TrafficSource};

/// Bumped when the file's shape changes incompatibly; a file of another
/// version is treated like a missing one (everything owned is removed).
pub const STATE_VERSION: u32 = 1;

/// A private IPv6 /64 given to a connected namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StaticIpv6 {
    pub subnet: Ipv6Subnet,
    pub host: Ipv6Addr,
    pub peer: Ipv6Addr,
}

/// One ConnectNamespace client's namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectedNamespace {
    pub id: u32,
    /// The client's pid, or -1 when patchpanel created the namespace.
    pub pid: i32,
    pub netns: NetnsName,
    pub host_ifname: IfName,
    pub peer_ifname: IfName,
    pub subnet: GuestSubnet,
    pub host_mac: MacAddr,
    pub peer_mac: MacAddr,
    pub mode: RoutingMode,
    pub source: TrafficSource,
    pub route_on_vpn: bool,
    pub ipv6: Option<StaticIpv6>,
    /// Bus name and uid of the caller, for logs.
    pub client: String,
    /// Asked of the bus only when the caller named an existing pid.
    #[serde(default)]
    pub client_uid: Option<u32>,
}

impl ConnectedNamespace {
    pub fn host_addr(&self) -> Ipv4Addr {
        self.subnet.host()
    }

    pub fn peer_addr(&self) -> Ipv4Addr {
        self.subnet.guest()
    }

    pub fn device(&self) -> NetworkDevice {
        let subnet = &self.subnet.subnet;
        NetworkDevice {
            ifname: self.host_ifname.to_string(),
            ipv4_addr: patchpanel_proto::ipv4_to_net_u32(self.peer_addr()),
            ipv4_subnet: Some(patchpanel_proto::IPv4Subnet::new(
                subnet.base(),
                u32::from(subnet.prefix_len()),
            )),
            guest_type: GuestType::Unknown as i32,
            phys_ifname: match &self.mode {
                RoutingMode::Pinned { uplink, .. } => uplink.to_string(),
                _ => String::new(),
            },
            host_ipv4_addr: patchpanel_proto::ipv4_to_net_u32(self.host_addr()),
            guest_ifname: self.peer_ifname.to_string(),
            ..Default::default()
        }
    }
}

/// Everything that must survive the manager.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub version: u32,
    /// Next ConnectNamespace id (names are never reused within a run).
    pub next_namespace_id: u32,
    pub namespaces: BTreeMap<u32, ConnectedNamespace>,
    /// Sysctls patchpanel changed, with the value it found first.
    pub sysctl_originals: Vec<(Netns, Sysctl, String)>,
    /// Active ModifyPortRule rules, in creation order.
    pub port_rules: Vec<crate::port_rules::PortRule>,
    /// The running ARC (container or VM), if any.
    #[serde(default)]
    pub arc: Option<crate::guests::ArcGuest>,
    /// Running Termina and Parallels VMs, in start order.
    #[serde(default)]
    pub vms: Vec<crate::guests::VmGuest>,
}

impl Default for State {
    fn default() -> Self {
        State {
            version: STATE_VERSION,
            next_namespace_id: 0,
            namespaces: BTreeMap::new(),
            sysctl_originals: Vec::new(),
            port_rules: Vec::new(),
            arc: None,
            vms: Vec::new(),
        }
    }
}

impl State {
    pub fn devices(&self) -> GetDevicesResponse {
        let mut devices: Vec<NetworkDevice> =
            self.namespaces.values().map(|n| n.device()).collect();
        if let Some(arc) = &self.arc {
            devices.extend(crate::guests::arc_devices(arc));
        }
        devices.extend(self.vms.iter().map(crate::guests::vm_device));
        GetDevicesResponse { devices }
    }

    /// Remembers the first value seen for a sysctl; later changes of the
    /// same key keep the original.
    pub fn record_sysctl_original(&mut self, netns: Netns, sysctl: Sysctl, value: String) {
        if netns != Netns::Host {
            // Values inside client namespaces die with them.
            return;
        }
        if !self
            .sysctl_originals
            .iter()
            .any(|(n, s, _)| *n == netns && *s == sysctl)
        {
            self.sysctl_originals.push((netns, sysctl, value));
        }
    }
}

/// Where the state lives on disk.
#[derive(Debug, Clone)]
pub struct StateFile {
    path: PathBuf,
}

/// What was found at start.
#[derive(Debug)]
pub enum Loaded {
    /// No file: a clean start.
    Missing,
    /// A previous manager's state.
    Found(Box<State>),
    /// A file that could not be used; the reason is logged and the file is
    /// treated as missing.
    Unusable(String),
}

impl StateFile {
    pub fn new(dir: &Path) -> StateFile {
        StateFile {
            path: dir.join("state"),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn load(&self) -> Loaded {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Loaded::Missing,
            Err(e) => return Loaded::Unusable(format!("cannot read {}: {e}", self.path.display())),
        };
        match serde_json::from_str::<State>(&text) {
            Ok(s) if s.version == STATE_VERSION => Loaded::Found(Box::new(s)),
            Ok(s) => Loaded::Unusable(format!(
                "{} has version {}, this build writes {STATE_VERSION}",
                self.path.display(),
                s.version
            )),
            Err(e) => Loaded::Unusable(format!("{} is not valid: {e}", self.path.display())),
        }
    }

    /// Writes `state` atomically. On failure (e.g. no space left) the
    /// previous file stays as it was and the partial temporary is removed,
    /// giving its blocks back.
    pub fn save(&self, state: &State) -> std::io::Result<()> {
        let tmp = self.path.with_extension("tmp");
        let text = serde_json::to_vec_pretty(state).map_err(std::io::Error::other)?;
        let written = (|| {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&tmp)?;
            f.write_all(&text)?;
            f.sync_all()
        })();
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        std::fs::rename(&tmp, &self.path)
    }

    pub fn remove(&self) -> std::io::Result<()> {
        match std::fs::remove_file(&self.path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_saved_state_loads_back_equal() {
        let dir = std::env::temp_dir().join(format!("pp-state-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = StateFile::new(&dir);
        let mut state = State {
            next_namespace_id: 7,
            ..Default::default()
        };
        state.record_sysctl_original(Netns::Host, Sysctl::Ipv4Forward, "0".into());
        file.save(&state).unwrap();
        match file.load() {
            Loaded::Found(s) => assert_eq!(*s, state),
            other => panic!("{other:?}"),
        }
        file.remove().unwrap();
        assert!(matches!(file.load(), Loaded::Missing));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_garbled_state_file_is_unusable_not_fatal() {
        let dir = std::env::temp_dir().join(format!("pp-state-test2-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = StateFile::new(&dir);
        std::fs::write(file.path(), b"{not json").unwrap();
        assert!(matches!(file.load(), Loaded::Unusable(_)));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_first_sysctl_value_seen_is_kept() {
        let mut state = State::default();
        state.record_sysctl_original(Netns::Host, Sysctl::Ipv4Forward, "0".into());
        state.record_sysctl_original(Netns::Host, Sysctl::Ipv4Forward, "1".into());
        assert_eq!(
            state.sysctl_originals,
            vec![(Netns::Host, Sysctl::Ipv4Forward, "0".to_string())]
        );
    }
}
