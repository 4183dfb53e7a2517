//! ARC (container or VM): its six address configs ("slots"), one device
//! per served uplink, and the plans that build, extend, remove and re-adopt
//! it.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use patchpanel_addr::{AddressManager, GuestPool, GuestSubnet, MacAddr};
use patchpanel_firewall::auto_dnat::{auto_dnat, AutoDnatTarget};
use patchpanel_firewall::guest::{downstream, Downstream, Inbound, Mode};
use patchpanel_firewall::{Batch, InverseError};
use patchpanel_ipc::datapath::{ApplyMode, Netns, Plan, Step};
use patchpanel_ipc::{IfName, NetnsName};
use patchpanel_proto::network_device::TechnologyType;
use patchpanel_uplinks::{Technology, Uplink};
use serde::{Deserialize, Serialize};

use crate::error::CallError;
use crate::routing::{TrafficSource, TABLE_OFFSET};

use super::names::*;
use super::{failed, ifname};

/// Name of the ARC container's namespace, after the configured prefix.
pub const ARC_NETNS: &str = "arc_netns";
/// ARC's management bridge.
pub const ARC0_BRIDGE: &str = "arcbr0";
/// The container end of the management veth pair, on the host.
pub const ARC0_VETH: &str = "vetharc0";
/// The management interface inside ARC.
pub const ARC0_GUEST: &str = "arc0";
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

    pub(super) fn proto(self) -> TechnologyType {
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

    pub(super) fn slot(&self, device: &ArcDevice) -> Option<&ArcSlot> {
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
///
/// A bridge in `reuse` (kept from ARC's previous run, see
/// [`super::arc_bridges`]) is expected instead of made; its address and
/// state are set again all the same (steps that find them done change
/// nothing and undo nothing).
fn arc_device_steps(arc: &ArcGuest, device: &ArcDevice, reuse: &BTreeSet<IfName>) -> Vec<Step> {
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
    if reuse.contains(&device.bridge) {
        steps.push(Step::ExpectLink {
            netns: Netns::Host,
            name: device.bridge.clone(),
        });
    } else {
        steps.push(Step::CreateBridge {
            name: device.bridge.clone(),
        });
    }
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
/// port leaves with it) unless it is kept for ARC's next start, and the
/// container's veth. ARCVM's TAP stays.
fn arc_device_teardown_steps(
    arc: &ArcGuest,
    device: &ArcDevice,
    bridges: Bridges,
) -> Result<Vec<Step>, InverseError> {
    let mut steps = Vec::new();
    let batch = arc_device_firewall(arc, device);
    if !batch.is_empty() {
        steps.push(Step::Firewall(batch.inverse()?));
    }
    if bridges == Bridges::Delete {
        steps.push(Step::DeleteLink {
            netns: Netns::Host,
            name: device.bridge.clone(),
        });
    }
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

/// What a stop does with ARC's bridges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bridges {
    /// Kept, with their addresses, for ARC's next start (see
    /// [`super::arc_bridges`]).
    Keep,
    Delete,
}

/// ARC's start: attach the container's namespace (the pidfd rides as fd
/// 0) or make ARCVM's TAPs, then arc0 and one device per entry of
/// `arc.devices`, on the kept bridges of `reuse` where there are. Atomic.
pub fn arc_start_plan(arc: &ArcGuest, reuse: &BTreeSet<IfName>, label: String) -> Plan {
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
                        user: None,
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
    steps.extend(arc_device_steps(arc, &arc.arc0, reuse));
    for device in arc.devices.values() {
        steps.extend(arc_device_steps(arc, device, reuse));
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
        steps: arc_device_steps(arc, device, &BTreeSet::new()),
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
        steps: arc_device_teardown_steps(arc, device, Bridges::Delete)?,
    })
}

/// Removes everything ARC has: devices, arc0 (their bridges only with
/// [`Bridges::Delete`]), then the TAPs or the namespace name. Best effort.
pub fn arc_stop_plan(
    arc: &ArcGuest,
    bridges: Bridges,
    label: String,
) -> Result<Plan, InverseError> {
    let mut steps = Vec::new();
    for device in arc.devices.values() {
        steps.extend(arc_device_teardown_steps(arc, device, bridges)?);
    }
    steps.extend(arc_device_teardown_steps(arc, &arc.arc0, bridges)?);
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

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use patchpanel_proto::network_device::GuestType;

    use super::*;
    use crate::guests::test_support::*;

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
            arc_start_plan(&arc, &BTreeSet::new(), "t".into()).steps[0],
            Step::AttachNetns {
                owner_uid: Some(1000),
                ..
            }
        ));
        arc.started_by = Some(0);
        assert!(matches!(
            arc_start_plan(&arc, &BTreeSet::new(), "t".into()).steps[0],
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
        let plan = arc_start_plan(&arc, &BTreeSet::new(), "t".into());
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
        let plan = arc_stop_plan(&arc, Bridges::Delete, "t".into()).expect("plan");
        assert_eq!(plan.mode, ApplyMode::BestEffort);
        assert_eq!(
            kinds(&plan),
            ["firewall", "dellink", "dellink", "dellink", "dellink", "delnetns"]
        );
        // ArcShutdown keeps the bridges: only the veths go.
        let plan = arc_stop_plan(&arc, Bridges::Keep, "t".into()).expect("plan");
        assert_eq!(kinds(&plan), ["firewall", "dellink", "dellink", "delnetns"]);
        assert_eq!(links_of(&plan, "dellink"), ["vetheth0", "vetharc0"]);
    }

    #[test]
    fn arcvm_stop_keeps_no_tap() {
        let mut a = addrs();
        let arc = arc_allocate(ArcKind::Vm { cid: 9 }, &mut a, &BTreeSet::new()).unwrap();
        let plan = arc_stop_plan(&arc, Bridges::Delete, "t".into()).expect("plan");
        assert_eq!(
            links_of(&plan, "dellink"),
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
