//! Termina, Parallels, Bruschetta and Borealis VMs: their TAP, subnets and
//! MAC, and the plans that start, stop and re-adopt them.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};

use patchpanel_addr::{AddressManager, GuestPool, GuestSubnet, MacAddr};
use patchpanel_firewall::guest::{downstream, Downstream, Inbound, Mode};
use patchpanel_firewall::{Batch, InverseError};
use patchpanel_ipc::datapath::{ApplyMode, Netns, Plan, RouteKind, RouteSpec, Step, Sysctl};
use patchpanel_ipc::IfName;
use patchpanel_proto::network_device::GuestType;
use serde::{Deserialize, Serialize};

use crate::error::CallError;
use crate::routing::{TrafficSource, MAIN_TABLE};

use super::failed;
use super::names::*;

/// Which VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum VmKind {
    /// Crostini's Termina (`TerminaVmStartup`, id = cid).
    Termina,
    /// Parallels (`PluginVmStartup` / `ParallelsVmStartup`).
    Parallels,
    /// A third-party VM (`BruschettaVmStartup`): Termina's pool without an
    /// LXD subnet, and isolated (nothing new reaches it, even from the
    /// host).
    Bruschetta,
    /// Steam (`BorealisVmStartup`, id = cid): Termina's pool without an
    /// LXD subnet.
    Borealis,
}

impl VmKind {
    pub fn name(self) -> &'static str {
        match self {
            VmKind::Termina => "Termina VM",
            VmKind::Parallels => "Parallels VM",
            VmKind::Bruschetta => "Bruschetta VM",
            VmKind::Borealis => "Borealis VM",
        }
    }

    fn source(self) -> TrafficSource {
        match self {
            VmKind::Termina => TrafficSource::CrostiniVm,
            VmKind::Parallels => TrafficSource::ParallelsVm,
            VmKind::Bruschetta => TrafficSource::BruschettaVm,
            VmKind::Borealis => TrafficSource::BorealisVm,
        }
    }

    /// Bruschetta and Borealis are `TERMINA_VM` in `GetDevices`, as the
    /// original reports them (its schema has no type of their own).
    pub(super) fn guest_type(self) -> GuestType {
        match self {
            VmKind::Termina | VmKind::Bruschetta | VmKind::Borealis => GuestType::TerminaVm,
            VmKind::Parallels => GuestType::ParallelsVm,
        }
    }

    fn pool(self) -> GuestPool {
        match self {
            VmKind::Termina | VmKind::Bruschetta | VmKind::Borealis => GuestPool::TerminaVm,
            VmKind::Parallels => GuestPool::ParallelsVm,
        }
    }

    /// Who may open connections to the VM.
    fn inbound(self) -> Inbound {
        match self {
            VmKind::Bruschetta => Inbound::Isolated,
            VmKind::Termina | VmKind::Parallels | VmKind::Borealis => Inbound::Open,
        }
    }
}

/// A running VM.
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
    /// A user's own VM (config `vm_owners`); `None`: the VM user's
    /// (concierge's).
    #[serde(default)]
    pub user: Option<VmUser>,
}

/// The user a VM of their own belongs to: the TAP is theirs, and the VM's
/// network goes when the process that asked for it exits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct VmUser {
    pub uid: u32,
    pub process: crate::pids::Owner,
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
        user: None,
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
        inbound: vm.kind.inbound(),
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
        kind: RouteKind::Unicast,
    })
}

/// A VM's start: the TAP with the host address, up; Termina's LXD route
/// through the VM; the firewall. Atomic.
pub fn vm_start_plan(vm: &VmGuest, label: String) -> Plan {
    let mut steps = vec![
        Step::CreateTap {
            name: vm.tap.clone(),
            mac: vm.mac.0,
            user: vm.user.map(|u| u.uid),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guests::test_support::*;

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
}
