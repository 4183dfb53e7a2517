//! ConnectNamespace policy: validate a request, choose names, addresses and
//! a routing mode, and turn the result into datapath plans (upstream-core
//! §4.9). Pure: the manager feeds it state and carries its plans to the
//! writer.

use std::net::{IpAddr, Ipv4Addr};

use patchpanel_addr::{AddressManager, GuestPool};
use patchpanel_ipc::datapath::{ApplyMode, Netns, Plan, RouteSpec, Step, Sysctl};
use patchpanel_ipc::{IfName, NetnsName};
use patchpanel_proto::{
    traffic_counter::Source, ConnectNamespaceRequest, ConnectNamespaceResponse,
};

use crate::dbus_service::CallError;
use crate::routing::{self, RoutingMode, TrafficSource};
use crate::state::{ConnectedNamespace, StaticIpv6};
use crate::uplinks::UplinkView;

/// A decoded, checked ConnectNamespace request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespaceRequest {
    /// -1: create a new namespace.
    pub pid: i32,
    pub outbound: Option<IfName>,
    pub route_on_vpn: bool,
    pub source: TrafficSource,
    pub static_ipv6: bool,
}

/// Checks the fields that need no system state.
pub fn parse_request(req: &ConnectNamespaceRequest) -> Result<NamespaceRequest, CallError> {
    if req.pid != -1 && req.pid <= 0 {
        return Err(CallError::InvalidArgument(format!(
            "pid {} is not a process id (use -1 for a new namespace)",
            req.pid
        )));
    }
    let outbound =
        if req.outbound_physical_device.is_empty() {
            None
        } else {
            Some(IfName::new(&req.outbound_physical_device).map_err(|e| {
                CallError::InvalidArgument(format!("outbound_physical_device: {e}"))
            })?)
        };
    if outbound.is_some() && req.route_on_vpn {
        return Err(CallError::InvalidArgument(
            "route_on_vpn and an explicit outbound_physical_device exclude each other".into(),
        ));
    }
    let source = Source::try_from(req.traffic_source).map_err(|_| {
        CallError::InvalidArgument(format!(
            "traffic_source {} is not a known source",
            req.traffic_source
        ))
    })?;
    let source = routing::source_from_proto(source).ok_or_else(|| {
        CallError::InvalidArgument(format!(
            "traffic_source {} cannot be used for a namespace",
            req.traffic_source
        ))
    })?;
    Ok(NamespaceRequest {
        pid: req.pid,
        outbound,
        route_on_vpn: req.route_on_vpn,
        source,
        static_ipv6: req.static_ipv6,
    })
}

/// Everything needed to build a namespace besides the request.
#[derive(Debug)]
pub struct Context<'a> {
    pub id: u32,
    pub netns_prefix: &'a str,
    pub uplinks: &'a UplinkView,
    pub client: String,
    pub client_uid: u32,
}

/// Chooses the routing mode, names and addresses. On error nothing stays
/// allocated.
pub fn allocate(
    req: &NamespaceRequest,
    ctx: &Context<'_>,
    addrs: &mut AddressManager,
) -> Result<ConnectedNamespace, CallError> {
    let mode = match &req.outbound {
        Some(name) => {
            let uplink = ctx.uplinks.get(name.as_str()).ok_or_else(|| {
                CallError::InvalidArgument(format!(
                    "outbound_physical_device {name} is not a known uplink (known: {})",
                    ctx.uplinks.names().join(", ")
                ))
            })?;
            RoutingMode::Pinned {
                uplink: name.clone(),
                ifindex: uplink.ifindex,
            }
        }
        None if req.route_on_vpn => RoutingMode::User,
        None => RoutingMode::System,
    };
    let netns = NetnsName::new(&format!("{}connected_netns_{}", ctx.netns_prefix, ctx.id))
        .map_err(|e| CallError::Failed(format!("namespace name: {e}")))?;
    let host_ifname = IfName::new(&format!("arc_ns{}", ctx.id))
        .map_err(|e| CallError::Failed(format!("interface name: {e}")))?;
    let peer_ifname = IfName::new(&format!("veth{}", ctx.id))
        .map_err(|e| CallError::Failed(format!("interface name: {e}")))?;
    let subnet = addrs
        .allocate_ipv4(GuestPool::Netns, None)
        .map_err(|e| CallError::Failed(format!("no address for the namespace: {e}")))?;
    let release = |addrs: &mut AddressManager| {
        let _ = addrs.release_ipv4(subnet.pool, subnet.index);
    };
    let macs = addrs
        .random_mac()
        .and_then(|h| Ok((h, addrs.random_mac()?)));
    let (host_mac, peer_mac) = match macs {
        Ok(m) => m,
        Err(e) => {
            release(addrs);
            return Err(CallError::Failed(format!("no MAC address: {e}")));
        }
    };
    let ipv6 = if req.static_ipv6 {
        let v6 = addrs.allocate_ula_subnet().and_then(|subnet| {
            let host = addrs.random_address_in(&subnet)?;
            let peer = addrs.random_address_in(&subnet)?;
            Ok(StaticIpv6 { subnet, host, peer })
        });
        match v6 {
            Ok(v) => Some(v),
            Err(e) => {
                release(addrs);
                addrs.forget_mac(&host_mac);
                addrs.forget_mac(&peer_mac);
                return Err(CallError::Failed(format!("no IPv6 /64: {e}")));
            }
        }
    } else {
        None
    };
    Ok(ConnectedNamespace {
        id: ctx.id,
        pid: req.pid,
        netns,
        host_ifname,
        peer_ifname,
        subnet,
        host_mac,
        peer_mac,
        mode,
        source: req.source,
        route_on_vpn: req.route_on_vpn,
        ipv6,
        client: ctx.client.clone(),
        client_uid: ctx.client_uid,
    })
}

/// Returns a namespace's addresses to the pools.
pub fn release(ns: &ConnectedNamespace, addrs: &mut AddressManager) {
    let _ = addrs.release_ipv4(ns.subnet.pool, ns.subnet.index);
    addrs.forget_mac(&ns.host_mac);
    addrs.forget_mac(&ns.peer_mac);
    if let Some(v6) = &ns.ipv6 {
        let _ = addrs.release_ula_subnet(&v6.subnet);
    }
}

/// The steps that build a namespace. With a pid, the pidfd rides as fd 0.
pub fn connect_plan(ns: &ConnectedNamespace, label: String) -> Plan {
    let inside = Netns::Named(ns.netns.clone());
    let prefix_len = ns.subnet.subnet.prefix_len();
    let mut steps = vec![if ns.pid == -1 {
        Step::CreateNetns {
            name: ns.netns.clone(),
        }
    } else {
        Step::AttachNetns {
            name: ns.netns.clone(),
            pid: ns.pid,
            pidfd: 0,
        }
    }];
    steps.push(Step::CreateVeth {
        host: ns.host_ifname.clone(),
        peer: ns.peer_ifname.clone(),
        peer_netns: inside.clone(),
        host_mac: ns.host_mac.0,
        peer_mac: ns.peer_mac.0,
    });
    steps.push(Step::AddAddress {
        netns: inside.clone(),
        link: ns.peer_ifname.clone(),
        addr: IpAddr::V4(ns.peer_addr()),
        prefix_len,
    });
    steps.push(Step::AddAddress {
        netns: Netns::Host,
        link: ns.host_ifname.clone(),
        addr: IpAddr::V4(ns.host_addr()),
        prefix_len,
    });
    if let Some(v6) = &ns.ipv6 {
        steps.push(Step::AddAddress {
            netns: inside.clone(),
            link: ns.peer_ifname.clone(),
            addr: IpAddr::V6(v6.peer),
            prefix_len: v6.subnet.prefix_len(),
        });
        steps.push(Step::AddAddress {
            netns: Netns::Host,
            link: ns.host_ifname.clone(),
            addr: IpAddr::V6(v6.host),
            prefix_len: v6.subnet.prefix_len(),
        });
    }
    for (netns, link) in [
        (inside.clone(), ns.peer_ifname.clone()),
        (Netns::Host, ns.host_ifname.clone()),
    ] {
        steps.push(Step::LinkUp {
            netns,
            link,
            multicast: false,
        });
    }
    // One more than the host's default so carriers that drop TTL-64
    // tethered traffic do not drop ours (upstream b/360132462).
    steps.push(Step::SetSysctl {
        netns: inside.clone(),
        sysctl: Sysctl::Ipv4DefaultTtl,
        value: "65".into(),
    });
    if ns.ipv6.is_some() {
        steps.push(Step::SetSysctl {
            netns: inside.clone(),
            sysctl: Sysctl::Ipv6HopLimit(ns.peer_ifname.clone()),
            value: "65".into(),
        });
    }
    steps.push(Step::AddRoute {
        netns: inside.clone(),
        route: RouteSpec {
            dst: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            prefix_len: 0,
            gateway: Some(IpAddr::V4(ns.host_addr())),
            dev: Some(ns.peer_ifname.clone()),
            table: routing::MAIN_TABLE,
            metric: None,
        },
    });
    if let Some(v6) = &ns.ipv6 {
        steps.push(Step::AddRoute {
            netns: inside,
            route: RouteSpec {
                dst: IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
                prefix_len: 0,
                gateway: Some(IpAddr::V6(v6.host)),
                dev: Some(ns.peer_ifname.clone()),
                table: routing::MAIN_TABLE,
                metric: None,
            },
        });
    }
    steps.push(Step::Firewall(routing::namespace_firewall(ns)));
    Plan {
        label,
        mode: ApplyMode::Atomic,
        steps,
    }
}

/// The steps that remove a namespace: firewall first, then the link
/// (which takes its peer along), then the name.
pub fn disconnect_plan(ns: &ConnectedNamespace, label: String) -> Plan {
    Plan {
        label,
        mode: ApplyMode::BestEffort,
        steps: vec![
            Step::Firewall(routing::namespace_firewall_teardown(ns)),
            Step::DeleteLink {
                netns: Netns::Host,
                name: ns.host_ifname.clone(),
            },
            Step::DeleteNetns {
                name: ns.netns.clone(),
            },
        ],
    }
}

/// The D-Bus answer for a built namespace.
pub fn response(ns: &ConnectedNamespace) -> ConnectNamespaceResponse {
    use patchpanel_proto::ipv4_to_net_u32;
    let subnet = &ns.subnet.subnet;
    ConnectNamespaceResponse {
        ipv4_subnet: Some(patchpanel_proto::IPv4Subnet::new(
            subnet.base(),
            u32::from(subnet.prefix_len()),
        )),
        peer_ifname: ns.peer_ifname.to_string(),
        peer_ipv4_address: ipv4_to_net_u32(ns.peer_addr()),
        host_ifname: ns.host_ifname.to_string(),
        host_ipv4_address: ipv4_to_net_u32(ns.host_addr()),
        netns_name: ns.netns.to_string(),
    }
}
