//! The guests as the D-Bus API shows them: startup answers, and devices
//! for GetDevices and NetworkDeviceChanged.

use patchpanel_addr::GuestSubnet;
use patchpanel_proto::network_device::GuestType;
use patchpanel_proto::{
    ipv4_to_addr4, ipv4_to_net_u32, ArcVmStartupResponse, BorealisVmStartupResponse,
    BruschettaVmStartupResponse, IPv4Subnet, NetworkDevice, PluginVmStartupResponse,
    TerminaVmStartupResponse,
};

use super::arc::{ArcDevice, ArcGuest};
use super::vm::VmGuest;

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

/// `BruschettaVmStartup`'s answer.
pub fn bruschetta_response(vm: &VmGuest) -> BruschettaVmStartupResponse {
    BruschettaVmStartupResponse {
        tap_device_ifname: vm.tap.to_string(),
        ipv4_subnet: Some(subnet_proto(&vm.subnet)),
        ipv4_address: ipv4_to_addr4(vm.subnet.guest()),
        gateway_ipv4_address: ipv4_to_addr4(vm.subnet.host()),
    }
}

/// `BorealisVmStartup`'s answer (the same fields as Bruschetta's).
pub fn borealis_response(vm: &VmGuest) -> BorealisVmStartupResponse {
    let r = bruschetta_response(vm);
    BorealisVmStartupResponse {
        tap_device_ifname: r.tap_device_ifname,
        ipv4_subnet: r.ipv4_subnet,
        ipv4_address: r.ipv4_address,
        gateway_ipv4_address: r.gateway_ipv4_address,
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
