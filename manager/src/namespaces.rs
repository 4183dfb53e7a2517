//! ConnectNamespace policy: validate a request, choose names, addresses and
//! a routing mode, and turn the result into datapath plans (upstream-core
//! §4.9). Owns [`ConnectedNamespace`], the record the state keeps of each.
//! Pure: the manager feeds it state and carries its plans to the writer.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use patchpanel_addr::{AddressManager, GuestPool, GuestSubnet, Ipv6Subnet, MacAddr};
use patchpanel_firewall::{Batch, InverseError};
use patchpanel_ipc::datapath::{ApplyMode, Netns, Plan, RouteKind, RouteSpec, Step, Sysctl};
use patchpanel_ipc::{IfName, NetnsName};
use patchpanel_proto::network_device::GuestType;
use patchpanel_proto::{
    traffic_counter::Source, ConnectNamespaceRequest, ConnectNamespaceResponse, NetworkDevice,
};
use serde::{Deserialize, Serialize};

use crate::error::CallError;

/// Connected namespaces' host-side veths are `arc_ns<id>` (upstream's names).
pub const HOST_IFNAME_PREFIX: &str = "arc_ns";
use crate::routing::{self, RoutingMode, TrafficSource, TABLE_OFFSET};
use crate::uplinks::UplinkView;

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
            guest_type: GuestType::ConnectedNs as i32,
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

/// The firewall changes that route and account a connected namespace.
pub fn namespace_firewall(ns: &ConnectedNamespace) -> Batch {
    patchpanel_firewall::guest::connected_namespace(&firewall_namespace(ns))
}

/// The changes that remove [`namespace_firewall`]'s rules.
pub fn namespace_firewall_teardown(ns: &ConnectedNamespace) -> Result<Batch, InverseError> {
    patchpanel_firewall::guest::connected_namespace_teardown(&firewall_namespace(ns))
}

fn firewall_namespace(ns: &ConnectedNamespace) -> patchpanel_firewall::guest::Namespace {
    patchpanel_firewall::guest::Namespace {
        host_ifname: ns.host_ifname.clone(),
        host_ipv4: ns.host_addr(),
        peer_ipv4: ns.peer_addr(),
        ipv6: ns.ipv6.as_ref().map(|v| (v.host, v.peer)),
        source: ns.source,
        mode: match &ns.mode {
            RoutingMode::Pinned { ifindex, .. } => patchpanel_firewall::guest::Mode::Pinned {
                table: ifindex + TABLE_OFFSET,
            },
            RoutingMode::System => patchpanel_firewall::guest::Mode::System,
            RoutingMode::User => patchpanel_firewall::guest::Mode::User,
        },
    }
}

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
    pub client_uid: Option<u32>,
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
    let host_ifname = IfName::new(&format!("{HOST_IFNAME_PREFIX}{}", ctx.id))
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

/// Refuses one more namespace for a non-root `uid` that already holds
/// `quota` of them: one client that exits with its lifeline handed to a
/// longer-lived process cannot keep the whole pool. Root is not limited.
pub fn check_quota<'a>(
    held: impl IntoIterator<Item = &'a ConnectedNamespace>,
    uid: u32,
    quota: u32,
) -> Result<(), CallError> {
    if uid == 0 {
        return Ok(());
    }
    let count = held
        .into_iter()
        .filter(|ns| ns.client_uid == Some(uid))
        .count();
    if count >= quota as usize {
        return Err(CallError::Failed(format!(
            "uid {uid} already holds {count} connected namespace(s), the most one user may (namespaces_per_uid = {quota}); close a lifeline first"
        )));
    }
    Ok(())
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
            // Root may connect any namespace but the host's; anyone else
            // only one of a user namespace of their own.
            owner_uid: ns.client_uid.filter(|&uid| uid != 0),
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
            kind: RouteKind::Unicast,
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
                kind: RouteKind::Unicast,
            },
        });
    }
    steps.push(Step::Firewall(namespace_firewall(ns)));
    Plan {
        label,
        mode: ApplyMode::Atomic,
        steps,
    }
}

/// How long a teardown waits for the kernel to remove the veth pairs of
/// deleted namespaces before deleting what is left explicitly (a process
/// still inside a namespace keeps it, and its veth, alive).
pub const LINKS_GONE_TIMEOUT_MS: u32 = 250;

/// Up to this many created namespaces released together, their host veths
/// are deleted explicitly right after the names: the kernel unlists a
/// deleted link at once (the call returns a grace period later), while a
/// namespace left to the kernel takes its veth along only after its
/// asynchronous cleanup, 1-2 grace periods later (~35 ms here). More at
/// once are left to the kernel, which removes them all in one cleanup
/// (10 in ~110 ms, against ~20 ms each one by one).
pub const EXPLICIT_LINK_DELETES: usize = 2;

/// Most namespaces removed by one plan: the plan stays far below the IPC
/// message limit and one firewall batch stays small.
pub const TEARDOWN_GROUP: usize = 16;

/// The steps that remove a namespace.
pub fn disconnect_plan(ns: &ConnectedNamespace, label: String) -> Result<Plan, InverseError> {
    disconnect_many_plan(std::slice::from_ref(ns), label)
}

/// The steps that remove several namespaces at once (lifelines that closed
/// together): firewall rules first, in one batch; then the names of the
/// namespaces patchpanel created, whose deletion takes their veth pairs
/// along (waited for when there are many, see [`EXPLICIT_LINK_DELETES`]);
/// then every link still there, and the names of attached namespaces
/// (their processes keep the namespaces).
pub fn disconnect_many_plan(
    namespaces: &[ConnectedNamespace],
    label: String,
) -> Result<Plan, InverseError> {
    let mut firewall = patchpanel_firewall::Batch::new();
    for ns in namespaces {
        firewall.extend(namespace_firewall_teardown(ns)?);
    }
    let mut steps = vec![Step::Firewall(firewall)];
    let created: Vec<&ConnectedNamespace> = namespaces.iter().filter(|n| n.pid == -1).collect();
    for ns in &created {
        steps.push(Step::DeleteNetns {
            name: ns.netns.clone(),
        });
    }
    if created.len() > EXPLICIT_LINK_DELETES {
        steps.push(Step::AwaitLinksGone {
            names: created.iter().map(|n| n.host_ifname.clone()).collect(),
            timeout_ms: LINKS_GONE_TIMEOUT_MS,
        });
    }
    for ns in namespaces {
        steps.push(Step::DeleteLink {
            netns: Netns::Host,
            name: ns.host_ifname.clone(),
        });
    }
    for ns in namespaces.iter().filter(|n| n.pid != -1) {
        steps.push(Step::DeleteNetns {
            name: ns.netns.clone(),
        });
    }
    Ok(Plan {
        label,
        mode: ApplyMode::BestEffort,
        steps,
    })
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

/// Connected namespaces for tests.
#[cfg(test)]
pub(crate) mod test_support {
    use super::*;

    /// What ConnectNamespace builds for `req` as namespace `id`, from `addrs`.
    pub fn allocated(
        req: &ConnectNamespaceRequest,
        id: u32,
        addrs: &mut AddressManager,
    ) -> ConnectedNamespace {
        let parsed = parse_request(req).expect("request");
        let view = UplinkView::default();
        let ctx = Context {
            id,
            netns_prefix: "pp-",
            uplinks: &view,
            client: ":1.1".into(),
            client_uid: None,
        };
        allocate(&parsed, &ctx, addrs).expect("allocate")
    }

    /// Namespaces 0..`count`, as ConnectNamespace calls of pid -1 make them.
    pub fn connected(count: u32) -> Vec<ConnectedNamespace> {
        let mut addrs = AddressManager::new()
            .with_random_source(Box::new(patchpanel_addr::SeededRandom::new(3)));
        let request = ConnectNamespaceRequest {
            pid: -1,
            ..Default::default()
        };
        (0..count)
            .map(|id| allocated(&request, id, &mut addrs))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use patchpanel_addr::SeededRandom;

    fn addrs() -> AddressManager {
        AddressManager::new().with_random_source(Box::new(SeededRandom::new(7)))
    }

    fn request(pid: i32) -> ConnectNamespaceRequest {
        ConnectNamespaceRequest {
            pid,
            ..Default::default()
        }
    }

    fn build(req: &ConnectNamespaceRequest, id: u32, a: &mut AddressManager) -> ConnectedNamespace {
        super::test_support::allocated(req, id, a)
    }

    #[test]
    fn unknown_traffic_source_means_system() {
        let r = parse_request(&request(-1)).unwrap();
        assert_eq!(r.source, TrafficSource::System);
    }

    #[test]
    fn names_and_addresses_follow_the_id_and_the_netns_pool() {
        let mut a = addrs();
        let ns = build(&request(-1), 3, &mut a);
        assert_eq!(ns.netns.as_str(), "pp-connected_netns_3");
        assert_eq!(ns.host_ifname.as_str(), "arc_ns3");
        assert_eq!(ns.peer_ifname.as_str(), "veth3");
        assert_eq!(ns.host_addr(), Ipv4Addr::new(100, 115, 92, 129));
        assert_eq!(ns.peer_addr(), Ipv4Addr::new(100, 115, 92, 130));
        assert_eq!(ns.mode, RoutingMode::System);
        assert!(ns.host_mac.0[0] & 0x02 != 0, "locally administered");
    }

    #[test]
    fn released_subnets_are_handed_out_again() {
        let mut a = addrs();
        let first = build(&request(-1), 0, &mut a);
        let second = build(&request(-1), 1, &mut a);
        assert_ne!(first.subnet, second.subnet);
        release(&first, &mut a);
        let third = build(&request(-1), 2, &mut a);
        assert_eq!(third.subnet, first.subnet);
    }

    #[test]
    fn the_pool_runs_out_with_a_clear_error() {
        let mut a = addrs();
        let parsed = parse_request(&request(-1)).unwrap();
        let view = UplinkView::default();
        let mut last = None;
        for id in 0..17 {
            let ctx = Context {
                id,
                netns_prefix: "pp-",
                uplinks: &view,
                client: String::new(),
                client_uid: None,
            };
            last = Some(allocate(&parsed, &ctx, &mut a));
        }
        match last {
            Some(Err(CallError::Failed(m))) => assert!(m.contains("no address"), "{m}"),
            other => panic!("the 17th namespace should not fit in 16 /30s: {other:?}"),
        }
    }

    fn owned_by(uid: Option<u32>, id: u32, a: &mut AddressManager) -> ConnectedNamespace {
        let mut ns = build(&request(-1), id, a);
        ns.client_uid = uid;
        ns
    }

    #[test]
    fn a_user_gets_up_to_the_quota_and_no_more() {
        let mut a = addrs();
        let held: Vec<_> = (0..3).map(|i| owned_by(Some(1000), i, &mut a)).collect();
        assert_eq!(check_quota(&held, 1000, 4), Ok(()));
        assert!(matches!(
            check_quota(&held, 1000, 3),
            Err(CallError::Failed(m)) if m.contains("uid 1000 already holds 3")
        ));
    }

    #[test]
    fn the_quota_counts_only_the_callers_own_namespaces() {
        let mut a = addrs();
        let mut held: Vec<_> = (0..4)
            .map(|i| owned_by(Some(2000 + i), i, &mut a))
            .collect();
        held.push(owned_by(None, 9, &mut a));
        assert_eq!(check_quota(&held, 2000, 2), Ok(()));
        assert_eq!(check_quota(&held, 1000, 1), Ok(()));
    }

    #[test]
    fn root_is_not_limited() {
        let mut a = addrs();
        let held: Vec<_> = (0..5).map(|i| owned_by(Some(0), i, &mut a)).collect();
        assert_eq!(check_quota(&held, 0, 1), Ok(()));
    }

    #[test]
    fn a_non_root_clients_pid_must_be_in_a_namespace_of_its_own_user() {
        let mut a = addrs();
        let mut ns = build(&request(4242), 0, &mut a);
        ns.client_uid = Some(1000);
        let plan = connect_plan(&ns, "t".into());
        assert!(matches!(
            plan.steps[0],
            Step::AttachNetns {
                owner_uid: Some(1000),
                ..
            }
        ));
        ns.client_uid = Some(0);
        let plan = connect_plan(&ns, "t".into());
        assert!(matches!(
            plan.steps[0],
            Step::AttachNetns {
                owner_uid: None,
                ..
            }
        ));
    }

    #[test]
    fn a_new_namespace_plan_creates_then_wires_then_routes() {
        let mut a = addrs();
        let ns = build(&request(-1), 0, &mut a);
        let plan = connect_plan(&ns, "t".into());
        assert_eq!(plan.mode, ApplyMode::Atomic);
        let kinds: Vec<&str> = plan
            .steps
            .iter()
            .map(|s| match s {
                Step::CreateNetns { .. } => "netns",
                Step::CreateVeth { .. } => "veth",
                Step::AddAddress { .. } => "addr",
                Step::LinkUp { .. } => "up",
                Step::SetSysctl { .. } => "sysctl",
                Step::AddRoute { .. } => "route",
                Step::Firewall(_) => "firewall",
                _ => "other",
            })
            .collect();
        assert_eq!(
            kinds,
            ["netns", "veth", "addr", "addr", "up", "up", "sysctl", "route", "firewall"]
        );
        match &plan.steps[7] {
            Step::AddRoute { netns, route } => {
                assert_eq!(*netns, Netns::Named(ns.netns.clone()));
                assert_eq!(route.prefix_len, 0);
                assert_eq!(route.gateway, Some(IpAddr::V4(ns.host_addr())));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_pid_is_attached_through_the_pidfd_beside_the_request() {
        let mut a = addrs();
        let ns = build(&request(4242), 0, &mut a);
        let plan = connect_plan(&ns, "t".into());
        assert!(matches!(
            plan.steps[0],
            Step::AttachNetns {
                pid: 4242,
                pidfd: 0,
                ..
            }
        ));
    }

    #[test]
    fn static_ipv6_adds_ula_addresses_hop_limit_and_a_default_route() {
        let mut a = addrs();
        let mut req = request(-1);
        req.static_ipv6 = true;
        let ns = build(&req, 0, &mut a);
        let v6 = ns.ipv6.clone().unwrap();
        assert_eq!(v6.subnet.prefix_len(), 64);
        assert_ne!(v6.host, v6.peer);
        let plan = connect_plan(&ns, "t".into());
        let v6_addrs = plan
            .steps
            .iter()
            .filter(|s| {
                matches!(
                    s,
                    Step::AddAddress {
                        addr: IpAddr::V6(_),
                        ..
                    }
                )
            })
            .count();
        assert_eq!(v6_addrs, 2);
        assert!(plan.steps.iter().any(|s| matches!(
            s,
            Step::SetSysctl {
                sysctl: Sysctl::Ipv6HopLimit(_),
                ..
            }
        )));
        assert!(plan.steps.iter().any(|s| matches!(
            s,
            Step::AddRoute { route, .. } if route.dst.is_ipv6()
        )));
    }

    #[test]
    fn a_created_namespace_loses_its_name_then_its_link() {
        let mut a = addrs();
        let ns = build(&request(-1), 0, &mut a);
        let plan = disconnect_plan(&ns, "t".into()).expect("plan");
        assert_eq!(plan.mode, ApplyMode::BestEffort);
        assert!(matches!(plan.steps[0], Step::Firewall(_)));
        assert!(matches!(plan.steps[1], Step::DeleteNetns { .. }));
        assert!(matches!(plan.steps[2], Step::DeleteLink { .. }));
        assert_eq!(plan.steps.len(), 3);
    }

    #[test]
    fn an_attached_namespace_loses_its_link_then_its_name() {
        let mut a = addrs();
        let ns = build(&request(4242), 0, &mut a);
        let plan = disconnect_plan(&ns, "t".into()).expect("plan");
        assert!(matches!(plan.steps[0], Step::Firewall(_)));
        assert!(matches!(plan.steps[1], Step::DeleteLink { .. }));
        assert!(matches!(plan.steps[2], Step::DeleteNetns { .. }));
        assert_eq!(plan.steps.len(), 3);
    }

    #[test]
    fn a_teardown_group_fits_one_ipc_message() {
        let mut a = AddressManager::with_overrides([(
            GuestPool::Netns,
            patchpanel_addr::PoolConfig {
                base: Ipv4Addr::new(100, 115, 96, 0),
                prefix_len: 30,
                count: 64,
            },
        )])
        .unwrap();
        let mut req = request(4242);
        req.static_ipv6 = true;
        let list: Vec<ConnectedNamespace> = (0..TEARDOWN_GROUP as u32)
            .map(|i| build(&req, 1_000_000 + i, &mut a))
            .collect();
        let plan = disconnect_many_plan(&list, "t".repeat(2000)).expect("plan");
        let msg = patchpanel_ipc::ManagerMessage::Request {
            id: u64::MAX,
            body: patchpanel_ipc::Request::Apply(plan),
        };
        let bytes = patchpanel_ipc::encode(&msg).expect("fits");
        assert!(
            bytes.len() < patchpanel_ipc::MAX_MESSAGE_SIZE / 2,
            "{}",
            bytes.len()
        );
    }

    #[test]
    fn namespaces_released_together_share_one_firewall_batch() {
        let mut a = addrs();
        let list: Vec<ConnectedNamespace> =
            (0..3).map(|i| build(&request(-1), i, &mut a)).collect();
        let plan = disconnect_many_plan(&list, "t".into()).expect("plan");
        let firewall = plan
            .steps
            .iter()
            .filter(|s| matches!(s, Step::Firewall(_)))
            .count();
        assert_eq!(firewall, 1);
        match &plan.steps[4] {
            Step::AwaitLinksGone { names, .. } => assert_eq!(names.len(), 3),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_requests_are_invalid_arguments() {
        let mut r = request(-1);
        r.outbound_physical_device = "eth0 -j ACCEPT".into();
        assert!(matches!(
            parse_request(&r),
            Err(CallError::InvalidArgument(_))
        ));
        let mut r = request(-1);
        r.outbound_physical_device = "eth0".into();
        r.route_on_vpn = true;
        assert!(matches!(
            parse_request(&r),
            Err(CallError::InvalidArgument(_))
        ));
        assert!(matches!(
            parse_request(&request(-7)),
            Err(CallError::InvalidArgument(_))
        ));
        let mut r = request(-1);
        r.traffic_source = 99;
        assert!(matches!(
            parse_request(&r),
            Err(CallError::InvalidArgument(_))
        ));
    }

    #[test]
    fn an_unknown_outbound_device_is_refused_with_the_known_ones() {
        let mut a = addrs();
        let mut r = request(-1);
        r.outbound_physical_device = "wlan9".into();
        let parsed = parse_request(&r).unwrap();
        let view = UplinkView::default();
        let ctx = Context {
            id: 0,
            netns_prefix: "pp-",
            uplinks: &view,
            client: String::new(),
            client_uid: None,
        };
        match allocate(&parsed, &ctx, &mut a) {
            Err(CallError::InvalidArgument(m)) => assert!(m.contains("not a known uplink"), "{m}"),
            other => panic!("{other:?}"),
        }
        // Nothing was taken from the pool.
        assert_eq!(build(&request(-1), 1, &mut a).subnet.index, 1);
    }
}
