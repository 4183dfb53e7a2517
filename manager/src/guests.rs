//! Guest policy: ARC (container or VM), Termina and Parallels VMs
//! (upstream-core §4.7, §4.8). Pure: given state and a request, choose
//! names, addresses and MACs and turn them into datapath plans; the manager
//! ([`crate::guest_service`]) carries the plans to the writer.
//!
//! * ARC holds six address configs ("slots") for as long as it runs: slot 0
//!   is the management network (`arcbr0` 100.115.92.1 <-> `arc0`
//!   100.115.92.2), slots 1–5 serve uplinks: two for Ethernet, two for
//!   Wi-Fi, one for cellular, as upstream. Each uplink gets a bridge
//!   `arc_<uplink>` with the slot's host address and, for the container, a
//!   veth into the container named after the uplink; for ARCVM, the slot's
//!   TAP (all six are made at start, in slot order, so the VM sees them as
//!   `eth0`..`eth5`). ARC's traffic is pinned to the uplink it came in on,
//!   and unsolicited inbound traffic on that uplink is sent to ARC.
//! * A Termina VM gets a TAP with the host address of a /30 and an LXD /28
//!   routed through the VM; a Parallels VM a TAP on a /29 of
//!   100.115.93.0/24 (an explicit index keeps its subnet and MAC across
//!   runs). VM traffic follows the default network.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};

use patchpanel_addr::{AddressManager, GuestPool, GuestSubnet, MacAddr};
use patchpanel_firewall::auto_dnat::{auto_dnat, AutoDnatTarget};
use patchpanel_firewall::guest::{downstream, Downstream, Inbound, Mode};
use patchpanel_firewall::{Batch, InverseError};
use patchpanel_ipc::datapath::{ApplyMode, Netns, Plan, RouteSpec, Step, Sysctl};
use patchpanel_ipc::{IfName, NetnsName};
use patchpanel_proto::network_device::{GuestType, TechnologyType};
use patchpanel_proto::{
    ipv4_to_addr4, ipv4_to_net_u32, ArcVmStartupResponse, IPv4Subnet, NetworkDevice,
    PluginVmStartupResponse, TerminaVmStartupResponse,
};
use patchpanel_uplinks::{Technology, Uplink};
use serde::{Deserialize, Serialize};

use crate::error::CallError;
use crate::routing::{TrafficSource, MAIN_TABLE, TABLE_OFFSET};

/// Name of the ARC container's namespace, after the configured prefix.
pub const ARC_NETNS: &str = "arc_netns";
/// ARC's management bridge.
pub const ARC0_BRIDGE: &str = "arcbr0";
/// The container end of the management veth pair, on the host.
pub const ARC0_VETH: &str = "vetharc0";
/// The management interface inside ARC.
pub const ARC0_GUEST: &str = "arc0";
/// VM TAPs are `vmtap<N>`, lowest free N first.
pub const TAP_PREFIX: &str = "vmtap";
/// Slot 0 (arc0) and one per uplink technology slot.
pub const ARC_SLOTS: u32 = 6;

/// The uplink technologies ARC serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ArcTechnology {
    Ethernet,
    Wifi,
    Cellular,
}

impl ArcTechnology {
    /// `None` for the kinds ARC does not attach to (VPNs, unknown links).
    pub fn of(t: Technology) -> Option<ArcTechnology> {
        match t {
            Technology::Ethernet => Some(ArcTechnology::Ethernet),
            Technology::Wifi => Some(ArcTechnology::Wifi),
            Technology::Cellular => Some(ArcTechnology::Cellular),
            Technology::Vpn | Technology::Unknown => None,
        }
    }

    /// The slots (1-based, in the ARC net pool) kept for this technology.
    pub fn slots(self) -> &'static [u32] {
        match self {
            ArcTechnology::Ethernet => &[1, 2],
            ArcTechnology::Wifi => &[3, 4],
            ArcTechnology::Cellular => &[5],
        }
    }

    fn proto(self) -> TechnologyType {
        match self {
            ArcTechnology::Ethernet => TechnologyType::Ethernet,
            ArcTechnology::Wifi => TechnologyType::Wifi,
            ArcTechnology::Cellular => TechnologyType::Cellular,
        }
    }
}

/// Which ARC runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ArcKind {
    /// ARC++: the container's init `pid`, its namespace attached as `netns`.
    Container { pid: i32, netns: NetnsName },
    /// ARCVM with vsock context id `cid`.
    Vm { cid: u32 },
}

/// One of ARC's address configs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArcSlot {
    pub subnet: GuestSubnet,
    /// The guest's MAC: stable for ARCVM, random (new every start) for the
    /// container.
    pub mac: MacAddr,
    /// ARCVM: the slot's TAP.
    pub tap: Option<IfName>,
}

/// The uplink an ARC device serves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArcUplink {
    pub name: IfName,
    /// Its routing table is ifindex + 1000.
    pub ifindex: u32,
    pub technology: ArcTechnology,
}

/// One ARC network: a bridge on the host and the guest's link on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArcDevice {
    /// `None` for the management device (arc0).
    pub uplink: Option<ArcUplink>,
    /// Index into [`ArcGuest::slots`].
    pub slot: u32,
    pub bridge: IfName,
    /// The link enslaved to the bridge: the container veth's host end, or
    /// ARCVM's TAP.
    pub host_ifname: IfName,
    /// The interface name inside ARC.
    pub guest_ifname: IfName,
    /// Container only: the MAC of the veth's host end.
    pub host_mac: Option<MacAddr>,
}

/// A running ARC and its networks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArcGuest {
    pub kind: ArcKind,
    /// Slot 0 is arc0's; the others serve uplinks. Held while ARC runs.
    pub slots: Vec<ArcSlot>,
    pub arc0: ArcDevice,
    /// By uplink name.
    pub devices: BTreeMap<String, ArcDevice>,
    /// The uid of the caller that started ARC (absent in state files of
    /// earlier versions). Only root, or that same uid, may replace it; a
    /// non-root caller's container must live in a network namespace of a
    /// user namespace it owns.
    #[serde(default)]
    pub started_by: Option<u32>,
}

impl ArcGuest {
    pub fn is_vm(&self) -> bool {
        matches!(self.kind, ArcKind::Vm { .. })
    }

    fn slot(&self, device: &ArcDevice) -> Option<&ArcSlot> {
        self.slots.get(device.slot as usize)
    }

    /// Every host link ARC owns: the container's namespace side is not
    /// listed (it lives in `arc_netns`).
    pub fn host_links(&self) -> Vec<IfName> {
        let mut links = vec![self.arc0.bridge.clone()];
        links.extend(self.devices.values().map(|d| d.bridge.clone()));
        match self.kind {
            ArcKind::Container { .. } => {
                links.push(self.arc0.host_ifname.clone());
                links.extend(self.devices.values().map(|d| d.host_ifname.clone()));
            }
            ArcKind::Vm { .. } => links.extend(self.slots.iter().filter_map(|s| s.tap.clone())),
        }
        links
    }

    /// ARCVM's TAPs in the order the VM gets them.
    pub fn taps(&self) -> Vec<IfName> {
        self.slots.iter().filter_map(|s| s.tap.clone()).collect()
    }
}

/// Which VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum VmKind {
    /// Crostini's Termina (`TerminaVmStartup`, id = cid).
    Termina,
    /// Parallels (`PluginVmStartup` / `ParallelsVmStartup`).
    Parallels,
}

impl VmKind {
    pub fn name(self) -> &'static str {
        match self {
            VmKind::Termina => "Termina VM",
            VmKind::Parallels => "Parallels VM",
        }
    }

    fn source(self) -> TrafficSource {
        match self {
            VmKind::Termina => TrafficSource::CrostiniVm,
            VmKind::Parallels => TrafficSource::ParallelsVm,
        }
    }

    fn guest_type(self) -> GuestType {
        match self {
            VmKind::Termina => GuestType::TerminaVm,
            VmKind::Parallels => GuestType::ParallelsVm,
        }
    }

    fn pool(self) -> GuestPool {
        match self {
            VmKind::Termina => GuestPool::TerminaVm,
            VmKind::Parallels => GuestPool::ParallelsVm,
        }
    }
}

/// A running Termina or Parallels VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmGuest {
    pub kind: VmKind,
    pub id: u64,
    pub tap: IfName,
    pub mac: MacAddr,
    /// Whether `mac` came from the random generator (and goes back to it).
    pub random_mac: bool,
    /// Host at offset 1 (on the TAP), VM at offset 2.
    pub subnet: GuestSubnet,
    /// Termina: the LXD container subnet routed through the VM.
    pub lxd: Option<GuestSubnet>,
    /// Termina with ADB allowed: `adb connect arc` from the VM reaches the
    /// host's ADB relay (DNAT to the TAP's host address, port 5555).
    #[serde(default)]
    pub adb_sideload: bool,
}

impl VmGuest {
    pub fn label(&self) -> String {
        format!("{} {}", self.kind.name(), self.id)
    }

    /// The LXD container's address (offset 1 of its /28).
    pub fn container_addr(&self) -> Option<Ipv4Addr> {
        self.lxd.and_then(|l| l.subnet.addr_at(1))
    }
}

fn failed(what: &str, e: impl std::fmt::Display) -> CallError {
    CallError::Failed(format!("{what}: {e}"))
}

fn ifname(name: &str) -> Result<IfName, CallError> {
    IfName::new(name).map_err(|e| failed("interface name", e))
}

/// `prefix` + `ifname`, cut to 15 bytes keeping the last character (the
/// interface number, usually), as upstream names ARC's links.
pub fn prefixed_ifname(prefix: &str, ifname: &str) -> String {
    let mut name = format!("{prefix}{ifname}");
    if name.len() > IFNAME_MAX_LEN {
        name.truncate(IFNAME_MAX_LEN);
        if let Some(last) = ifname.chars().last() {
            name.pop();
            name.push(last);
        }
    }
    name
}

/// `IFNAMSIZ - 1`.
const IFNAME_MAX_LEN: usize = 15;

/// The lowest `vmtap<N>` not in `taken`.
pub fn free_tap_name(taken: &BTreeSet<String>) -> IfName {
    let mut n = 0u32;
    loop {
        let name = format!("{TAP_PREFIX}{n}");
        if !taken.contains(&name) {
            // "vmtap" + at most 10 digits fits in 15 bytes.
            if let Ok(i) = IfName::new(&name) {
                return i;
            }
        }
        n += 1;
    }
}

/// Every TAP name held by a guest.
pub fn taken_taps(arc: Option<&ArcGuest>, vms: &[VmGuest]) -> BTreeSet<String> {
    let mut taken: BTreeSet<String> = vms.iter().map(|v| v.tap.to_string()).collect();
    if let Some(arc) = arc {
        taken.extend(arc.taps().iter().map(|t| t.to_string()));
    }
    taken
}

/// A vsock context id: 0 is not one.
pub fn check_id(what: &str, id: u64) -> Result<(), CallError> {
    if id == 0 {
        return Err(CallError::InvalidArgument(format!(
            "{what} 0 is not a valid id"
        )));
    }
    Ok(())
}

/// A Parallels `subnet_index` as it arrives on the wire: 0 means any,
/// 1..=count that subnet, anything else is refused.
pub fn parallels_index(addrs: &AddressManager, raw: i32) -> Result<Option<u32>, CallError> {
    if raw < 0 {
        return Err(CallError::InvalidArgument(format!(
            "subnet_index {raw} is negative (0 asks for any free subnet)"
        )));
    }
    addrs
        .requested_index(GuestPool::ParallelsVm, i64::from(raw))
        .map_err(|e| CallError::InvalidArgument(format!("subnet_index: {e}")))
}

/// Whether `uid` may replace the running `arc`: root may, and so may the
/// uid that started it. One started by an earlier version (who started it
/// unknown) only root may replace.
pub fn may_replace_arc(arc: &ArcGuest, uid: u32) -> Result<(), CallError> {
    if uid == 0 || arc.started_by == Some(uid) {
        return Ok(());
    }
    let what = if arc.is_vm() {
        "ARCVM"
    } else {
        "the ARC container"
    };
    Err(CallError::Failed(format!(
        "{what} is running, started by {}; uid {uid} may not replace it (only root or the same user may)",
        match arc.started_by {
            Some(0) => "root".to_string(),
            Some(u) => format!("uid {u}"),
            None => "an earlier patchpanel".to_string(),
        }
    )))
}

/// Takes ARC's six configs from the pools (slot 0 from the arc0 pool,
/// slots 1–5 from the ARC net pool at fixed indices), MACs, and for ARCVM
/// the TAP names. Nothing stays allocated on error.
pub fn arc_allocate(
    kind: ArcKind,
    addrs: &mut AddressManager,
    taken: &BTreeSet<String>,
) -> Result<ArcGuest, CallError> {
    let is_vm = matches!(kind, ArcKind::Vm { .. });
    let mut slots: Vec<ArcSlot> = Vec::new();
    let mut taken = taken.clone();
    let net_count = addrs
        .pool_config(GuestPool::ArcNet)
        .count
        .min(ARC_SLOTS - 1);
    let result = (|| {
        for slot in 0..=net_count {
            let subnet = if slot == 0 {
                addrs.mark_allocated(GuestPool::Arc0, 1)
            } else {
                addrs.mark_allocated(GuestPool::ArcNet, slot)
            }
            .map_err(|e| failed("ARC address", e))?;
            let mac = if is_vm {
                // 42:37:05:13:17:01 for arc0, then 02..06.
                AddressManager::stable_mac(slot as u8 + 1)
            } else {
                match addrs.random_mac() {
                    Ok(m) => m,
                    Err(e) => {
                        let _ = addrs.release_ipv4(subnet.pool, subnet.index);
                        return Err(failed("ARC MAC address", e));
                    }
                }
            };
            let tap = is_vm.then(|| {
                let t = free_tap_name(&taken);
                taken.insert(t.to_string());
                t
            });
            slots.push(ArcSlot { subnet, mac, tap });
        }
        Ok(())
    })();
    if let Err(e) = result {
        release_slots(&slots, is_vm, addrs);
        return Err(e);
    }
    let arc0 = match &kind {
        ArcKind::Container { .. } => {
            let host_mac = match addrs.random_mac() {
                Ok(m) => m,
                Err(e) => {
                    release_slots(&slots, is_vm, addrs);
                    return Err(failed("ARC MAC address", e));
                }
            };
            ArcDevice {
                uplink: None,
                slot: 0,
                bridge: ifname(ARC0_BRIDGE)?,
                host_ifname: ifname(ARC0_VETH)?,
                guest_ifname: ifname(ARC0_GUEST)?,
                host_mac: Some(host_mac),
            }
        }
        ArcKind::Vm { .. } => ArcDevice {
            uplink: None,
            slot: 0,
            bridge: ifname(ARC0_BRIDGE)?,
            host_ifname: slots[0]
                .tap
                .clone()
                .ok_or_else(|| failed("ARCVM", "no TAP"))?,
            guest_ifname: ifname(ARC0_GUEST)?,
            host_mac: None,
        },
    };
    Ok(ArcGuest {
        kind,
        slots,
        arc0,
        devices: BTreeMap::new(),
        started_by: None,
    })
}

fn release_slots(slots: &[ArcSlot], is_vm: bool, addrs: &mut AddressManager) {
    for s in slots {
        let _ = addrs.release_ipv4(s.subnet.pool, s.subnet.index);
        if !is_vm {
            addrs.forget_mac(&s.mac);
        }
    }
}

/// Returns ARC's configs and MACs.
pub fn arc_release(arc: &ArcGuest, addrs: &mut AddressManager) {
    release_slots(&arc.slots, arc.is_vm(), addrs);
    for d in std::iter::once(&arc.arc0).chain(arc.devices.values()) {
        if let Some(m) = &d.host_mac {
            addrs.forget_mac(m);
        }
    }
}

/// Re-takes what a previous run's ARC held; on error nothing stays taken.
pub fn arc_adopt(arc: &ArcGuest, addrs: &mut AddressManager) -> Result<(), CallError> {
    for (i, s) in arc.slots.iter().enumerate() {
        if let Err(e) = addrs.adopt(&s.subnet) {
            release_slots(&arc.slots[..i], arc.is_vm(), addrs);
            return Err(failed("ARC's addresses", e));
        }
        if !arc.is_vm() {
            addrs.adopt_mac(s.mac);
        }
    }
    for d in std::iter::once(&arc.arc0).chain(arc.devices.values()) {
        if let Some(m) = d.host_mac {
            addrs.adopt_mac(m);
        }
    }
    Ok(())
}

/// The device ARC would get for `uplink`: `Ok(None)` when ARC does not
/// serve its technology or every slot of that technology is taken.
pub fn arc_device(
    arc: &ArcGuest,
    uplink: &Uplink,
    addrs: &mut AddressManager,
) -> Result<Option<ArcDevice>, CallError> {
    let Some(technology) = ArcTechnology::of(uplink.technology) else {
        return Ok(None);
    };
    let used: BTreeSet<u32> = arc.devices.values().map(|d| d.slot).collect();
    let Some(slot) = technology
        .slots()
        .iter()
        .copied()
        .find(|s| !used.contains(s) && (*s as usize) < arc.slots.len())
    else {
        return Ok(None);
    };
    let bridge = ifname(&prefixed_ifname("arc_", uplink.name.as_str()))?;
    if arc.devices.values().any(|d| d.bridge == bridge) {
        return Err(failed(
            "ARC device",
            format!("{bridge} already serves another uplink"),
        ));
    }
    let (host_ifname, guest_ifname, host_mac) = match &arc.kind {
        ArcKind::Container { .. } => (
            ifname(&prefixed_ifname("veth", uplink.name.as_str()))?,
            uplink.name.clone(),
            Some(
                addrs
                    .random_mac()
                    .map_err(|e| failed("ARC MAC address", e))?,
            ),
        ),
        ArcKind::Vm { .. } => (
            arc.slots[slot as usize]
                .tap
                .clone()
                .ok_or_else(|| failed("ARCVM", format!("slot {slot} has no TAP")))?,
            ifname(&format!("eth{slot}"))?,
            None,
        ),
    };
    Ok(Some(ArcDevice {
        uplink: Some(ArcUplink {
            name: uplink.name.clone(),
            ifindex: uplink.ifindex,
            technology,
        }),
        slot,
        bridge,
        host_ifname,
        guest_ifname,
        host_mac,
    }))
}

/// Returns a removed device's MAC.
pub fn arc_device_release(device: &ArcDevice, addrs: &mut AddressManager) {
    if let Some(m) = &device.host_mac {
        addrs.forget_mac(m);
    }
}

/// Which devices must go and which uplinks need one so that ARC serves
/// exactly the current uplinks: a device whose uplink vanished or came
/// back with another ifindex goes (and is made again).
pub fn arc_reconcile<'a>(
    arc: &ArcGuest,
    uplinks: impl Iterator<Item = &'a Uplink>,
) -> (Vec<String>, Vec<&'a Uplink>) {
    let current: Vec<&Uplink> = uplinks.collect();
    let stale: Vec<String> = arc
        .devices
        .iter()
        .filter(|(name, d)| {
            !current.iter().any(|u| {
                u.name.as_str() == name.as_str()
                    && d.uplink.as_ref().is_some_and(|a| a.ifindex == u.ifindex)
            })
        })
        .map(|(name, _)| name.clone())
        .collect();
    let missing: Vec<&Uplink> = current
        .into_iter()
        .filter(|u| {
            !arc.devices.contains_key(u.name.as_str()) || stale.contains(&u.name.to_string())
        })
        .collect();
    (stale, missing)
}

/// The firewall of an uplink device: forwarding, marks pinned to the
/// uplink, and the inbound DNAT to ARC. arc0 has none.
pub fn arc_device_firewall(arc: &ArcGuest, device: &ArcDevice) -> Batch {
    let (Some(uplink), Some(slot)) = (&device.uplink, arc.slot(device)) else {
        return Batch::new();
    };
    let mut batch = downstream(&Downstream {
        ifname: device.bridge.clone(),
        source: TrafficSource::Arc,
        mode: Mode::Pinned {
            table: uplink.ifindex + TABLE_OFFSET,
        },
        inbound: Inbound::Open,
        snat_ipv6: false,
        peer: None,
    });
    batch.extend(auto_dnat(
        AutoDnatTarget::Arc,
        &uplink.name,
        slot.subnet.guest(),
    ));
    batch
}

fn arc_netns(arc: &ArcGuest) -> Option<Netns> {
    match &arc.kind {
        ArcKind::Container { netns, .. } => Some(Netns::Named(netns.clone())),
        ArcKind::Vm { .. } => None,
    }
}

/// The steps that build one device (arc0 included): the container's veth
/// with the guest end addressed and left down for Android to bring up
/// (ARCVM's TAP exists already), the bridge with the host address, the
/// link enslaved, then the firewall.
fn arc_device_steps(arc: &ArcGuest, device: &ArcDevice) -> Vec<Step> {
    let Some(slot) = arc.slot(device) else {
        return Vec::new();
    };
    let prefix_len = slot.subnet.subnet.prefix_len();
    let mut steps = Vec::new();
    if let Some(inside) = arc_netns(arc) {
        steps.push(Step::CreateVeth {
            host: device.host_ifname.clone(),
            peer: device.guest_ifname.clone(),
            peer_netns: inside.clone(),
            host_mac: device.host_mac.map(|m| m.0).unwrap_or(slot.mac.0),
            peer_mac: slot.mac.0,
        });
        steps.push(Step::AddAddress {
            netns: inside,
            link: device.guest_ifname.clone(),
            addr: IpAddr::V4(slot.subnet.guest()),
            prefix_len,
        });
    }
    steps.push(Step::CreateBridge {
        name: device.bridge.clone(),
    });
    steps.push(Step::AddAddress {
        netns: Netns::Host,
        link: device.bridge.clone(),
        addr: IpAddr::V4(slot.subnet.host()),
        prefix_len,
    });
    steps.push(Step::LinkUp {
        netns: Netns::Host,
        link: device.bridge.clone(),
        multicast: true,
    });
    steps.push(Step::SetMaster {
        link: device.host_ifname.clone(),
        master: Some(device.bridge.clone()),
    });
    steps.push(Step::LinkUp {
        netns: Netns::Host,
        link: device.host_ifname.clone(),
        multicast: true,
    });
    let batch = arc_device_firewall(arc, device);
    if !batch.is_empty() {
        steps.push(Step::Firewall(batch));
    }
    steps
}

/// The steps that remove one device: firewall first, then the bridge (its
/// port leaves with it) and the container's veth. ARCVM's TAP stays.
fn arc_device_teardown_steps(
    arc: &ArcGuest,
    device: &ArcDevice,
) -> Result<Vec<Step>, InverseError> {
    let mut steps = Vec::new();
    let batch = arc_device_firewall(arc, device);
    if !batch.is_empty() {
        steps.push(Step::Firewall(batch.inverse()?));
    }
    steps.push(Step::DeleteLink {
        netns: Netns::Host,
        name: device.bridge.clone(),
    });
    if !arc.is_vm() {
        steps.push(Step::DeleteLink {
            netns: Netns::Host,
            name: device.host_ifname.clone(),
        });
    }
    Ok(steps)
}

/// Everything ARC holds in the firewall (arc0 and each device), as a
/// rebuild from the state needs it.
pub fn arc_firewall(arc: &ArcGuest) -> Batch {
    let mut batch = arc_device_firewall(arc, &arc.arc0);
    for device in arc.devices.values() {
        batch.extend(arc_device_firewall(arc, device));
    }
    batch
}

/// ARC's start: attach the container's namespace (the pidfd rides as fd
/// 0) or make ARCVM's TAPs, then arc0 and one device per entry of
/// `arc.devices`. Atomic.
pub fn arc_start_plan(arc: &ArcGuest, label: String) -> Plan {
    let mut steps = Vec::new();
    match &arc.kind {
        ArcKind::Container { pid, netns } => steps.push(Step::AttachNetns {
            name: netns.clone(),
            pid: *pid,
            pidfd: 0,
            owner_uid: arc.started_by.filter(|&uid| uid != 0),
        }),
        ArcKind::Vm { .. } => {
            for slot in &arc.slots {
                if let Some(tap) = &slot.tap {
                    steps.push(Step::CreateTap {
                        name: tap.clone(),
                        mac: slot.mac.0,
                    });
                    steps.push(Step::LinkUp {
                        netns: Netns::Host,
                        link: tap.clone(),
                        multicast: true,
                    });
                }
            }
        }
    }
    steps.extend(arc_device_steps(arc, &arc.arc0));
    for device in arc.devices.values() {
        steps.extend(arc_device_steps(arc, device));
    }
    Plan {
        label,
        mode: ApplyMode::Atomic,
        steps,
    }
}

/// Adds one uplink device to a running ARC. Atomic.
pub fn arc_device_plan(arc: &ArcGuest, device: &ArcDevice, label: String) -> Plan {
    Plan {
        label,
        mode: ApplyMode::Atomic,
        steps: arc_device_steps(arc, device),
    }
}

/// Removes one uplink device. Best effort.
pub fn arc_device_removal_plan(
    arc: &ArcGuest,
    device: &ArcDevice,
    label: String,
) -> Result<Plan, InverseError> {
    Ok(Plan {
        label,
        mode: ApplyMode::BestEffort,
        steps: arc_device_teardown_steps(arc, device)?,
    })
}

/// Removes everything ARC has: devices, arc0, then the TAPs or the
/// namespace name. Best effort.
pub fn arc_stop_plan(arc: &ArcGuest, label: String) -> Result<Plan, InverseError> {
    let mut steps = Vec::new();
    for device in arc.devices.values() {
        steps.extend(arc_device_teardown_steps(arc, device)?);
    }
    steps.extend(arc_device_teardown_steps(arc, &arc.arc0)?);
    match &arc.kind {
        ArcKind::Container { netns, .. } => steps.push(Step::DeleteNetns {
            name: netns.clone(),
        }),
        ArcKind::Vm { .. } => {
            for tap in arc.taps() {
                steps.push(Step::DeleteLink {
                    netns: Netns::Host,
                    name: tap,
                });
            }
        }
    }
    Ok(Plan {
        label,
        mode: ApplyMode::BestEffort,
        steps,
    })
}

/// After a restart: ARC's host links must still be there and ours; its
/// firewall is applied again. Atomic.
pub fn arc_readopt_plan(arc: &ArcGuest, label: String) -> Plan {
    let mut steps: Vec<Step> = arc
        .host_links()
        .into_iter()
        .map(|name| Step::ExpectLink {
            netns: Netns::Host,
            name,
        })
        .collect();
    for device in arc.devices.values() {
        let batch = arc_device_firewall(arc, device);
        if !batch.is_empty() {
            steps.push(Step::Firewall(batch));
        }
    }
    Plan {
        label,
        mode: ApplyMode::Atomic,
        steps,
    }
}

/// `ArcVmStartup`'s answer: arc0's guest address and the TAPs in order.
pub fn arcvm_response(arc: &ArcGuest) -> ArcVmStartupResponse {
    ArcVmStartupResponse {
        arc0_ipv4_address: arc
            .slots
            .first()
            .map(|s| ipv4_to_addr4(s.subnet.guest()))
            .unwrap_or_default(),
        tap_device_ifnames: arc.taps().iter().map(|t| t.to_string()).collect(),
    }
}

fn subnet_proto(s: &GuestSubnet) -> IPv4Subnet {
    IPv4Subnet::new(s.subnet.base(), u32::from(s.subnet.prefix_len()))
}

/// ARC's devices as GetDevices lists them (arc0 is not listed).
pub fn arc_devices(arc: &ArcGuest) -> Vec<NetworkDevice> {
    arc.devices
        .values()
        .filter_map(|d| arc_device_proto(arc, d))
        .collect()
}

/// One ARC uplink device as GetDevices and NetworkDeviceChanged show it.
pub fn arc_device_proto(arc: &ArcGuest, device: &ArcDevice) -> Option<NetworkDevice> {
    let slot = arc.slot(device)?;
    let uplink = device.uplink.as_ref()?;
    Some(NetworkDevice {
        ifname: device.bridge.to_string(),
        phys_ifname: uplink.name.to_string(),
        guest_ifname: device.guest_ifname.to_string(),
        ipv4_addr: ipv4_to_net_u32(slot.subnet.guest()),
        host_ipv4_addr: ipv4_to_net_u32(slot.subnet.host()),
        ipv4_subnet: Some(subnet_proto(&slot.subnet)),
        guest_type: if arc.is_vm() {
            GuestType::Arcvm
        } else {
            GuestType::Arc
        } as i32,
        technology_type: uplink.technology.proto() as i32,
        ..Default::default()
    })
}

/// Takes a VM's subnet (and Termina's LXD subnet), MAC and TAP name.
/// Nothing stays allocated on error.
pub fn vm_allocate(
    kind: VmKind,
    id: u64,
    index: Option<u32>,
    addrs: &mut AddressManager,
    taken: &BTreeSet<String>,
) -> Result<VmGuest, CallError> {
    let subnet = addrs
        .allocate_ipv4(kind.pool(), index)
        .map_err(|e| match e {
            patchpanel_addr::AddrError::IndexTaken { .. } => {
                CallError::InvalidArgument(format!("subnet_index: {e}"))
            }
            _ => failed(&format!("no subnet for the {}", kind.name()), e),
        })?;
    let release = |addrs: &mut AddressManager| {
        let _ = addrs.release_ipv4(subnet.pool, subnet.index);
    };
    let lxd = if kind == VmKind::Termina {
        match addrs.allocate_ipv4(GuestPool::LxdContainer, None) {
            Ok(s) => Some(s),
            Err(e) => {
                release(addrs);
                return Err(failed("no subnet for the LXD container", e));
            }
        }
    } else {
        None
    };
    // An explicit Parallels index keeps its MAC across runs (upstream).
    let (mac, random_mac) = match index {
        Some(i) => (AddressManager::stable_mac(i as u8), false),
        None => match addrs.random_mac() {
            Ok(m) => (m, true),
            Err(e) => {
                release(addrs);
                if let Some(l) = lxd {
                    let _ = addrs.release_ipv4(l.pool, l.index);
                }
                return Err(failed("no MAC address", e));
            }
        },
    };
    Ok(VmGuest {
        kind,
        id,
        tap: free_tap_name(taken),
        mac,
        random_mac,
        subnet,
        lxd,
        adb_sideload: false,
    })
}

/// Returns a VM's subnets and MAC.
pub fn vm_release(vm: &VmGuest, addrs: &mut AddressManager) {
    let _ = addrs.release_ipv4(vm.subnet.pool, vm.subnet.index);
    if let Some(l) = &vm.lxd {
        let _ = addrs.release_ipv4(l.pool, l.index);
    }
    if vm.random_mac {
        addrs.forget_mac(&vm.mac);
    }
}

/// Re-takes what a previous run's VM held; on error nothing stays taken.
pub fn vm_adopt(vm: &VmGuest, addrs: &mut AddressManager) -> Result<(), CallError> {
    addrs
        .adopt(&vm.subnet)
        .map_err(|e| failed("the VM's address", e))?;
    if let Some(l) = &vm.lxd {
        if let Err(e) = addrs.adopt(l) {
            let _ = addrs.release_ipv4(vm.subnet.pool, vm.subnet.index);
            return Err(failed("the VM's LXD subnet", e));
        }
    }
    if vm.random_mac {
        addrs.adopt_mac(vm.mac);
    }
    Ok(())
}

/// The firewall of a VM's TAP: forwarding both ways, SNAT, its source,
/// and routing that follows the default network.
pub fn vm_firewall(vm: &VmGuest) -> Batch {
    let mut batch = downstream(&Downstream {
        ifname: vm.tap.clone(),
        source: vm.kind.source(),
        mode: Mode::User,
        inbound: Inbound::Open,
        snat_ipv6: false,
        peer: None,
    });
    if vm.adb_sideload {
        batch.extend(patchpanel_firewall::auto_dnat::adb_sideload(
            &vm.tap,
            ARC_ADB_ADDR,
            vm.subnet.host(),
            ADB_PORT,
        ));
    }
    batch
}

/// adbd's port, on the host (the relay) and in ARC.
pub const ADB_PORT: u16 = 5555;

/// Where Crostini's `adb connect arc` goes: ARC's fixed arc0 address, as
/// upstream hard-codes it.
pub const ARC_ADB_ADDR: Ipv4Addr = Ipv4Addr::new(100, 115, 92, 2);

/// `route_localnet=0` on a sideloading VM's TAP, when it is adopted again:
/// earlier versions sent sideloading to 127.0.0.1 and set it to 1, which
/// let the VM reach every service on the host's loopback (security review
/// finding 4). The DNAT now goes to the TAP's own address, which needs no
/// such sysctl, and a new TAP starts with it off.
fn no_route_localnet(vm: &VmGuest) -> Option<Step> {
    vm.adb_sideload.then(|| Step::SetSysctl {
        netns: Netns::Host,
        sysctl: Sysctl::RouteLocalnet(vm.tap.clone()),
        value: "0".into(),
    })
}

fn lxd_route(vm: &VmGuest) -> Option<RouteSpec> {
    let lxd = vm.lxd?;
    Some(RouteSpec {
        dst: IpAddr::V4(lxd.subnet.base()),
        prefix_len: lxd.subnet.prefix_len(),
        gateway: Some(IpAddr::V4(vm.subnet.guest())),
        dev: Some(vm.tap.clone()),
        table: MAIN_TABLE,
        metric: None,
    })
}

/// A VM's start: the TAP with the host address, up; Termina's LXD route
/// through the VM; the firewall. Atomic.
pub fn vm_start_plan(vm: &VmGuest, label: String) -> Plan {
    let mut steps = vec![
        Step::CreateTap {
            name: vm.tap.clone(),
            mac: vm.mac.0,
        },
        Step::AddAddress {
            netns: Netns::Host,
            link: vm.tap.clone(),
            addr: IpAddr::V4(vm.subnet.host()),
            prefix_len: vm.subnet.subnet.prefix_len(),
        },
        Step::LinkUp {
            netns: Netns::Host,
            link: vm.tap.clone(),
            multicast: true,
        },
    ];
    if let Some(route) = lxd_route(vm) {
        steps.push(Step::AddRoute {
            netns: Netns::Host,
            route,
        });
    }
    steps.push(Step::Firewall(vm_firewall(vm)));
    Plan {
        label,
        mode: ApplyMode::Atomic,
        steps,
    }
}

/// A VM's stop: firewall, route, then the TAP. Best effort.
pub fn vm_stop_plan(vm: &VmGuest, label: String) -> Result<Plan, InverseError> {
    let mut steps = vec![Step::Firewall(vm_firewall(vm).inverse()?)];
    if let Some(route) = lxd_route(vm) {
        steps.push(Step::DeleteRoute {
            netns: Netns::Host,
            route,
        });
    }
    steps.push(Step::DeleteLink {
        netns: Netns::Host,
        name: vm.tap.clone(),
    });
    Ok(Plan {
        label,
        mode: ApplyMode::BestEffort,
        steps,
    })
}

/// After a restart: the TAP must still be there and ours; its route and
/// firewall are applied again (a restart removes every route and rule).
/// Atomic.
pub fn vm_readopt_plan(vm: &VmGuest, label: String) -> Plan {
    let mut steps = vec![Step::ExpectLink {
        netns: Netns::Host,
        name: vm.tap.clone(),
    }];
    if let Some(route) = lxd_route(vm) {
        steps.push(Step::AddRoute {
            netns: Netns::Host,
            route,
        });
    }
    steps.extend(no_route_localnet(vm));
    steps.push(Step::Firewall(vm_firewall(vm)));
    Plan {
        label,
        mode: ApplyMode::Atomic,
        steps,
    }
}

/// `TerminaVmStartup`'s answer.
pub fn termina_response(vm: &VmGuest) -> TerminaVmStartupResponse {
    TerminaVmStartupResponse {
        tap_device_ifname: vm.tap.to_string(),
        ipv4_subnet: Some(subnet_proto(&vm.subnet)),
        ipv4_address: ipv4_to_addr4(vm.subnet.guest()),
        gateway_ipv4_address: ipv4_to_addr4(vm.subnet.host()),
        container_ipv4_subnet: vm.lxd.as_ref().map(subnet_proto),
        container_ipv4_address: vm.container_addr().map(ipv4_to_addr4).unwrap_or_default(),
    }
}

/// `PluginVmStartup`'s (and `ParallelsVmStartup`'s) answer.
pub fn parallels_response(vm: &VmGuest) -> PluginVmStartupResponse {
    PluginVmStartupResponse {
        tap_device_ifname: vm.tap.to_string(),
        ipv4_subnet: Some(subnet_proto(&vm.subnet)),
        ipv4_address: ipv4_to_addr4(vm.subnet.guest()),
    }
}

/// A VM as GetDevices and NetworkDeviceChanged show it: the TAP is both
/// `ifname` and `phys_ifname` (it follows no particular uplink), no guest
/// interface name.
pub fn vm_device(vm: &VmGuest) -> NetworkDevice {
    NetworkDevice {
        ifname: vm.tap.to_string(),
        phys_ifname: vm.tap.to_string(),
        guest_ifname: String::new(),
        ipv4_addr: ipv4_to_net_u32(vm.subnet.guest()),
        host_ipv4_addr: ipv4_to_net_u32(vm.subnet.host()),
        ipv4_subnet: Some(subnet_proto(&vm.subnet)),
        guest_type: vm.kind.guest_type() as i32,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use patchpanel_addr::SeededRandom;

    fn addrs() -> AddressManager {
        AddressManager::new().with_random_source(Box::new(SeededRandom::new(11)))
    }

    fn uplink(name: &str, ifindex: u32, technology: Technology) -> Uplink {
        Uplink {
            name: IfName::new(name).unwrap(),
            ifindex,
            up: true,
            ipv4: vec![],
            ipv6: vec![],
            gateway4: None,
            technology,
        }
    }

    fn container() -> ArcKind {
        ArcKind::Container {
            pid: 4242,
            netns: NetnsName::new("pp-arc_netns").unwrap(),
        }
    }

    fn kinds(plan: &Plan) -> Vec<&'static str> {
        plan.steps
            .iter()
            .map(|s| match s {
                Step::AttachNetns { .. } => "attach",
                Step::CreateVeth { .. } => "veth",
                Step::CreateTap { .. } => "tap",
                Step::CreateBridge { .. } => "bridge",
                Step::AddAddress { .. } => "addr",
                Step::LinkUp { .. } => "up",
                Step::SetMaster { .. } => "master",
                Step::AddRoute { .. } => "route",
                Step::DeleteRoute { .. } => "delroute",
                Step::Firewall(_) => "firewall",
                Step::DeleteLink { .. } => "dellink",
                Step::DeleteNetns { .. } => "delnetns",
                Step::ExpectLink { .. } => "expect",
                _ => "other",
            })
            .collect()
    }

    #[test]
    fn long_names_keep_their_last_character() {
        assert_eq!(prefixed_ifname("arc_", "eth0"), "arc_eth0");
        assert_eq!(prefixed_ifname("veth", "wlan0"), "vethwlan0");
        assert_eq!(
            prefixed_ifname("arc_", "enx0123456789ab"),
            "arc_enx0123456b"
        );
        assert_eq!(prefixed_ifname("arc_", "enx0123456789ab").len(), 15);
    }

    #[test]
    fn tap_names_take_the_lowest_free_number() {
        let taken: BTreeSet<String> = ["vmtap0", "vmtap2"].map(String::from).into();
        assert_eq!(free_tap_name(&taken).as_str(), "vmtap1");
        assert_eq!(free_tap_name(&BTreeSet::new()).as_str(), "vmtap0");
    }

    #[test]
    fn arc_holds_arc0_and_five_uplink_slots_with_upstream_addresses() {
        let mut a = addrs();
        let arc = arc_allocate(container(), &mut a, &BTreeSet::new()).unwrap();
        let subnets: Vec<String> = arc
            .slots
            .iter()
            .map(|s| s.subnet.subnet.to_string())
            .collect();
        assert_eq!(
            subnets,
            [
                "100.115.92.0/30",
                "100.115.92.4/30",
                "100.115.92.8/30",
                "100.115.92.12/30",
                "100.115.92.16/30",
                "100.115.92.20/30"
            ]
        );
        assert_eq!(arc.arc0.host_ifname.as_str(), "vetharc0");
        assert_eq!(arc.arc0.bridge.as_str(), "arcbr0");
        assert!(arc.slots.iter().all(|s| s.tap.is_none()));
        // Random, locally administered MACs for the container.
        assert!(arc.slots.iter().all(|s| s.mac.0[0] & 0x02 != 0));
    }

    #[test]
    fn arcvm_gets_six_taps_with_stable_macs_in_slot_order() {
        let mut a = addrs();
        let taken: BTreeSet<String> = ["vmtap0"].map(String::from).into();
        let arc = arc_allocate(ArcKind::Vm { cid: 3 }, &mut a, &taken).unwrap();
        let taps: Vec<String> = arc.taps().iter().map(|t| t.to_string()).collect();
        assert_eq!(
            taps,
            ["vmtap1", "vmtap2", "vmtap3", "vmtap4", "vmtap5", "vmtap6"]
        );
        for (i, s) in arc.slots.iter().enumerate() {
            assert_eq!(s.mac, AddressManager::stable_mac(i as u8 + 1));
        }
        assert_eq!(arc.arc0.host_ifname.as_str(), "vmtap1");
        let response = arcvm_response(&arc);
        assert_eq!(response.arc0_ipv4_address, vec![100, 115, 92, 2]);
        assert_eq!(response.tap_device_ifnames, taps);
    }

    #[test]
    fn only_root_or_its_starter_replaces_arc() {
        let mut a = addrs();
        let mut arc = arc_allocate(container(), &mut a, &BTreeSet::new()).unwrap();
        arc.started_by = Some(0);
        assert_eq!(may_replace_arc(&arc, 0), Ok(()));
        assert!(matches!(
            may_replace_arc(&arc, 600),
            Err(CallError::Failed(m)) if m.contains("started by root; uid 600 may not")
        ));
        arc.started_by = Some(600);
        assert_eq!(may_replace_arc(&arc, 600), Ok(()));
        assert!(may_replace_arc(&arc, 601).is_err());
        arc.started_by = None;
        assert!(
            may_replace_arc(&arc, 600).is_err(),
            "unknown starter: root only"
        );
        assert_eq!(may_replace_arc(&arc, 0), Ok(()));
    }

    #[test]
    fn a_non_root_starters_container_must_be_in_its_own_user_namespace() {
        let mut a = addrs();
        let mut arc = arc_allocate(container(), &mut a, &BTreeSet::new()).unwrap();
        arc.started_by = Some(1000);
        assert!(matches!(
            arc_start_plan(&arc, "t".into()).steps[0],
            Step::AttachNetns {
                owner_uid: Some(1000),
                ..
            }
        ));
        arc.started_by = Some(0);
        assert!(matches!(
            arc_start_plan(&arc, "t".into()).steps[0],
            Step::AttachNetns {
                owner_uid: None,
                ..
            }
        ));
    }

    #[test]
    fn arc_release_returns_every_slot() {
        let mut a = addrs();
        let arc = arc_allocate(container(), &mut a, &BTreeSet::new()).unwrap();
        assert!(arc_allocate(container(), &mut a, &BTreeSet::new()).is_err());
        arc_release(&arc, &mut a);
        assert!(a.allocations().is_empty());
        assert!(arc_allocate(container(), &mut a, &BTreeSet::new()).is_ok());
    }

    #[test]
    fn uplinks_get_the_slots_of_their_technology() {
        let mut a = addrs();
        let mut arc = arc_allocate(container(), &mut a, &BTreeSet::new()).unwrap();
        for (name, index, tech) in [
            ("eth0", 2, Technology::Ethernet),
            ("wlan0", 3, Technology::Wifi),
            ("eth1", 4, Technology::Ethernet),
        ] {
            let d = arc_device(&arc, &uplink(name, index, tech), &mut a)
                .unwrap()
                .unwrap();
            arc.devices.insert(name.to_string(), d);
        }
        let slot = |n: &str| arc.devices[n].slot;
        assert_eq!((slot("eth0"), slot("eth1"), slot("wlan0")), (1, 2, 3));
        let eth0 = &arc.devices["eth0"];
        assert_eq!(eth0.bridge.as_str(), "arc_eth0");
        assert_eq!(eth0.host_ifname.as_str(), "vetheth0");
        assert_eq!(eth0.guest_ifname.as_str(), "eth0");
        // A third Ethernet uplink finds no free slot; a VPN is not served.
        assert!(
            arc_device(&arc, &uplink("eth2", 5, Technology::Ethernet), &mut a)
                .unwrap()
                .is_none()
        );
        assert!(
            arc_device(&arc, &uplink("tun0", 6, Technology::Vpn), &mut a)
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn arcvm_devices_use_the_slots_tap_and_eth_names() {
        let mut a = addrs();
        let arc = arc_allocate(ArcKind::Vm { cid: 3 }, &mut a, &BTreeSet::new()).unwrap();
        let d = arc_device(&arc, &uplink("wlan0", 3, Technology::Wifi), &mut a)
            .unwrap()
            .unwrap();
        assert_eq!(d.slot, 3);
        assert_eq!(d.host_ifname.as_str(), "vmtap3");
        assert_eq!(d.guest_ifname.as_str(), "eth3");
        assert_eq!(d.host_mac, None);
        let proto = arc_device_proto(&arc, &d).unwrap();
        assert_eq!(proto.guest_type(), GuestType::Arcvm);
        assert_eq!(proto.technology_type(), TechnologyType::Wifi);
        assert_eq!(proto.ifname, "arc_wlan0");
        assert_eq!(proto.phys_ifname, "wlan0");
    }

    #[test]
    fn the_container_start_plan_attaches_then_builds_arc0_then_each_device() {
        let mut a = addrs();
        let mut arc = arc_allocate(container(), &mut a, &BTreeSet::new()).unwrap();
        let d = arc_device(&arc, &uplink("eth0", 2, Technology::Ethernet), &mut a)
            .unwrap()
            .unwrap();
        arc.devices.insert("eth0".into(), d);
        let plan = arc_start_plan(&arc, "t".into());
        assert_eq!(plan.mode, ApplyMode::Atomic);
        let device = ["veth", "addr", "bridge", "addr", "up", "master", "up"];
        let mut expected = vec!["attach"];
        expected.extend(device);
        expected.extend(device);
        expected.push("firewall");
        assert_eq!(kinds(&plan), expected);
        assert!(matches!(
            plan.steps[0],
            Step::AttachNetns {
                pid: 4242,
                pidfd: 0,
                ..
            }
        ));
        // The guest end is addressed inside the container and not brought up.
        assert!(!plan.steps.iter().any(|s| matches!(
            s,
            Step::LinkUp {
                netns: Netns::Named(_),
                ..
            }
        )));
        match &plan.steps[9] {
            Step::AddAddress {
                netns,
                link,
                addr,
                prefix_len,
            } => {
                assert!(matches!(netns, Netns::Named(_)));
                assert_eq!(link.as_str(), "eth0");
                assert_eq!(*addr, IpAddr::V4(Ipv4Addr::new(100, 115, 92, 6)));
                assert_eq!(*prefix_len, 30);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_uplink_device_is_pinned_to_its_uplink_and_gets_the_inbound_dnat() {
        let mut a = addrs();
        let mut arc = arc_allocate(container(), &mut a, &BTreeSet::new()).unwrap();
        let d = arc_device(&arc, &uplink("eth0", 2, Technology::Ethernet), &mut a)
            .unwrap()
            .unwrap();
        arc.devices.insert("eth0".into(), d.clone());
        let batch = arc_device_firewall(&arc, &d);
        batch.validate().unwrap();
        let v4 = patchpanel_firewall::render::render(&batch, patchpanel_firewall::Family::V4);
        for line in [
            "-A guest_forward -o arc_eth0 -j ACCEPT",
            "-A guest_forward -i arc_eth0 -j ACCEPT",
            "-A PREROUTING_arc_eth0 -j MARK --set-mark 0x2000/0x3f00",
            "-A PREROUTING_arc_eth0 -j MARK --set-mark 0x3ea0000/0xffff0000",
            "-A apply_auto_dnat_to_arc -i eth0 -m socket --nowildcard -j ACCEPT",
            "-A apply_auto_dnat_to_arc -i eth0 -p tcp -j DNAT --to-destination 100.115.92.6",
        ] {
            assert!(v4.contains(line), "{line} missing from\n{v4}");
        }
        // arc0 has no rules of its own.
        assert!(arc_device_firewall(&arc, &arc.arc0).is_empty());
    }

    #[test]
    fn the_stop_plan_removes_rules_then_links_then_the_namespace_name() {
        let mut a = addrs();
        let mut arc = arc_allocate(container(), &mut a, &BTreeSet::new()).unwrap();
        let d = arc_device(&arc, &uplink("eth0", 2, Technology::Ethernet), &mut a)
            .unwrap()
            .unwrap();
        arc.devices.insert("eth0".into(), d);
        let plan = arc_stop_plan(&arc, "t".into()).expect("plan");
        assert_eq!(plan.mode, ApplyMode::BestEffort);
        assert_eq!(
            kinds(&plan),
            ["firewall", "dellink", "dellink", "dellink", "dellink", "delnetns"]
        );
    }

    #[test]
    fn arcvm_stop_keeps_no_tap() {
        let mut a = addrs();
        let arc = arc_allocate(ArcKind::Vm { cid: 9 }, &mut a, &BTreeSet::new()).unwrap();
        let plan = arc_stop_plan(&arc, "t".into()).expect("plan");
        let deleted: Vec<String> = plan
            .steps
            .iter()
            .filter_map(|s| match s {
                Step::DeleteLink { name, .. } => Some(name.to_string()),
                _ => None,
            })
            .collect();
        assert_eq!(
            deleted,
            ["arcbr0", "vmtap0", "vmtap1", "vmtap2", "vmtap3", "vmtap4", "vmtap5"]
        );
    }

    #[test]
    fn reconcile_replaces_a_device_whose_uplink_changed_ifindex() {
        let mut a = addrs();
        let mut arc = arc_allocate(container(), &mut a, &BTreeSet::new()).unwrap();
        let eth0 = uplink("eth0", 2, Technology::Ethernet);
        let d = arc_device(&arc, &eth0, &mut a).unwrap().unwrap();
        arc.devices.insert("eth0".into(), d);

        let same = [eth0.clone()];
        let (stale, missing) = arc_reconcile(&arc, same.iter());
        assert!(stale.is_empty() && missing.is_empty());

        let moved = [
            uplink("eth0", 7, Technology::Ethernet),
            uplink("wlan0", 8, Technology::Wifi),
        ];
        let (stale, missing) = arc_reconcile(&arc, moved.iter());
        assert_eq!(stale, ["eth0"]);
        let names: Vec<&str> = missing.iter().map(|u| u.name.as_str()).collect();
        assert_eq!(names, ["eth0", "wlan0"]);

        let (stale, missing) = arc_reconcile(&arc, std::iter::empty());
        assert_eq!(stale, ["eth0"]);
        assert!(missing.is_empty());
    }

    #[test]
    fn termina_gets_a_slash_30_an_lxd_slash_28_and_a_route_through_the_vm() {
        let mut a = addrs();
        let vm = vm_allocate(VmKind::Termina, 7, None, &mut a, &BTreeSet::new()).unwrap();
        assert_eq!(vm.tap.as_str(), "vmtap0");
        assert_eq!(vm.subnet.subnet.to_string(), "100.115.92.24/30");
        assert_eq!(vm.lxd.unwrap().subnet.to_string(), "100.115.92.192/28");
        assert!(vm.random_mac);
        let plan = vm_start_plan(&vm, "t".into());
        assert_eq!(kinds(&plan), ["tap", "addr", "up", "route", "firewall"]);
        match &plan.steps[3] {
            Step::AddRoute { route, .. } => {
                assert_eq!(route.dst, IpAddr::V4(Ipv4Addr::new(100, 115, 92, 192)));
                assert_eq!(route.prefix_len, 28);
                assert_eq!(
                    route.gateway,
                    Some(IpAddr::V4(Ipv4Addr::new(100, 115, 92, 26)))
                );
                assert_eq!(route.dev.as_ref().map(|d| d.as_str()), Some("vmtap0"));
            }
            other => panic!("{other:?}"),
        }
        let r = termina_response(&vm);
        assert_eq!(r.ipv4_address, vec![100, 115, 92, 26]);
        assert_eq!(r.gateway_ipv4_address, vec![100, 115, 92, 25]);
        assert_eq!(r.container_ipv4_address, vec![100, 115, 92, 193]);
        assert_eq!(
            kinds(&vm_stop_plan(&vm, "t".into()).expect("plan")),
            ["firewall", "delroute", "dellink"]
        );
    }

    #[test]
    fn a_vm_follows_the_default_network_as_its_source() {
        let mut a = addrs();
        let vm = vm_allocate(VmKind::Parallels, 7, None, &mut a, &BTreeSet::new()).unwrap();
        let v4 =
            patchpanel_firewall::render::render(&vm_firewall(&vm), patchpanel_firewall::Family::V4);
        assert!(v4.contains("-A guest_forward -o vmtap0 -j ACCEPT"), "{v4}");
        assert!(
            v4.contains("-A PREROUTING_vmtap0 -j MARK --set-mark 0x2200/0x3f00"),
            "{v4}"
        );
        assert!(
            v4.contains("-A PREROUTING_vmtap0 -j apply_vpn_mark"),
            "{v4}"
        );
        let t = vm_allocate(VmKind::Termina, 8, None, &mut a, &BTreeSet::new()).unwrap();
        let v4 =
            patchpanel_firewall::render::render(&vm_firewall(&t), patchpanel_firewall::Family::V4);
        assert!(v4.contains("--set-mark 0x2100/0x3f00"), "{v4}");
    }

    #[test]
    fn a_parallels_index_picks_its_subnet_and_stable_mac() {
        let mut a = addrs();
        let index = parallels_index(&a, 3).unwrap();
        let vm = vm_allocate(VmKind::Parallels, 1, index, &mut a, &BTreeSet::new()).unwrap();
        assert_eq!(vm.subnet.subnet.to_string(), "100.115.93.16/29");
        assert_eq!(vm.mac, AddressManager::stable_mac(3));
        assert!(!vm.random_mac);
        assert!(vm.lxd.is_none());
        assert_eq!(
            kinds(&vm_start_plan(&vm, "t".into())),
            ["tap", "addr", "up", "firewall"]
        );
        // Taken: a second VM asking for it is told so.
        assert!(matches!(
            vm_allocate(VmKind::Parallels, 2, index, &mut a, &BTreeSet::new()),
            Err(CallError::InvalidArgument(m)) if m.contains("subnet_index")
        ));
        vm_release(&vm, &mut a);
        assert!(vm_allocate(VmKind::Parallels, 2, index, &mut a, &BTreeSet::new()).is_ok());
    }

    #[test]
    fn bad_indices_and_ids_are_invalid_arguments() {
        let a = addrs();
        assert_eq!(parallels_index(&a, 0).unwrap(), None);
        assert_eq!(parallels_index(&a, 32).unwrap(), Some(32));
        for raw in [-1, 33, i32::MIN, i32::MAX] {
            assert!(
                matches!(parallels_index(&a, raw), Err(CallError::InvalidArgument(_))),
                "{raw}"
            );
        }
        assert!(matches!(
            check_id("cid", 0),
            Err(CallError::InvalidArgument(_))
        ));
        assert!(check_id("cid", 1).is_ok());
    }

    #[test]
    fn vm_devices_name_the_tap_twice_and_no_guest_interface() {
        let mut a = addrs();
        let vm = vm_allocate(VmKind::Termina, 7, None, &mut a, &BTreeSet::new()).unwrap();
        let d = vm_device(&vm);
        assert_eq!(
            (d.ifname.as_str(), d.phys_ifname.as_str()),
            ("vmtap0", "vmtap0")
        );
        assert_eq!(d.guest_ifname, "");
        assert_eq!(d.guest_type(), GuestType::TerminaVm);
        assert_eq!(
            patchpanel_proto::ipv4_from_net_u32(d.ipv4_addr),
            Ipv4Addr::new(100, 115, 92, 26)
        );
    }

    #[test]
    fn a_sideloading_vm_goes_to_the_relay_on_its_tap_address_without_route_localnet() {
        let mut a = addrs();
        let mut vm = vm_allocate(VmKind::Termina, 7, None, &mut a, &BTreeSet::new()).unwrap();
        vm.adb_sideload = true;
        let plan = vm_start_plan(&vm, "t".into());
        // No sysctl at all: route_localnet on the TAP would open the host's
        // whole loopback to the VM (review finding 4).
        assert_eq!(kinds(&plan), ["tap", "addr", "up", "route", "firewall"]);
        let v4 =
            patchpanel_firewall::render::render(&vm_firewall(&vm), patchpanel_firewall::Family::V4);
        assert!(
            v4.contains(
                "-A ingress_port_forwarding -i vmtap0 -d 100.115.92.2/32 -p tcp --dport 5555 \
                 -j DNAT --to-destination 100.115.92.25:5555"
            ),
            "{v4}"
        );
        assert!(!v4.contains("127."), "{v4}");
        // Adopted again (maybe from a version that set it): turned off.
        let readopt = vm_readopt_plan(&vm, "t".into());
        assert!(readopt.steps.iter().any(|s| matches!(
            s,
            Step::SetSysctl { sysctl: Sysctl::RouteLocalnet(tap), value, .. }
                if tap.as_str() == "vmtap0" && value == "0"
        )));
    }

    #[test]
    fn readoption_expects_the_links_and_applies_rules_again() {
        let mut a = addrs();
        let vm = vm_allocate(VmKind::Termina, 7, None, &mut a, &BTreeSet::new()).unwrap();
        assert_eq!(
            kinds(&vm_readopt_plan(&vm, "t".into())),
            ["expect", "route", "firewall"]
        );
        let mut arc = arc_allocate(ArcKind::Vm { cid: 2 }, &mut a, &BTreeSet::new()).unwrap();
        let d = arc_device(&arc, &uplink("eth0", 2, Technology::Ethernet), &mut a)
            .unwrap()
            .unwrap();
        arc.devices.insert("eth0".into(), d);
        let plan = arc_readopt_plan(&arc, "t".into());
        assert_eq!(plan.mode, ApplyMode::Atomic);
        let expects = plan
            .steps
            .iter()
            .filter(|s| matches!(s, Step::ExpectLink { .. }))
            .count();
        // arcbr0, arc_eth0 and six TAPs.
        assert_eq!(expects, 8);
        assert!(matches!(plan.steps.last(), Some(Step::Firewall(_))));
        // Adoption into a fresh address manager takes the same subnets.
        let mut fresh = addrs();
        arc_adopt(&arc, &mut fresh).unwrap();
        vm_adopt(&vm, &mut fresh).unwrap();
        assert_eq!(fresh.allocations().len(), 8);
    }
}
