//! `ConfigureNetwork` (reference upstream-clients §3.2): shill's network
//! configuration of one of its links, as pure functions from the request
//! to datapath steps. No I/O.
//!
//! # Wiring (for the dispatcher)
//!
//! 1. [`parse`] the request; an `Err` names the field that is wrong (answer
//!    the caller with it, apply nothing).
//! 2. Keep one [`Networks`] in the manager's state (and its state file):
//!    the links configured so far and the ip rules each one holds. It is
//!    what the routing-policy rules of one network depend on (the primary
//!    physical network's catch-all, the shared `lookup main` rule), and all
//!    a later clear needs.
//! 3. [`plans`] turns the spec and the current `Networks` into the plans to
//!    send, in order (a best-effort clear when `AREA_CLEAR` is set, then an
//!    atomic plan for the other bits), and the `Networks` to keep once they
//!    are applied. [`plan`] and [`clear_plan`] are the two halves, for a
//!    caller that wants them apart (e.g. [`clear_plan`] alone when shill's
//!    link disappears).
//! 4. If an atomic plan fails, keep the old `Networks`: the writer rolled
//!    everything back. A best-effort clear counts as done whatever it
//!    reports.
//!
//! The writer remembers which addresses it added to each link and removes
//! only those; routes and rules carry patchpanel's protocol number (157).
//! Nothing else has to be kept to clear later.
//!
//! Differences from upstream's NetworkApplier, on purpose:
//!
//! * `from <addr>` rules match the address alone (/32, /128), as netlink
//!   mode's, not the address's whole prefix;
//! * `lookup main` at 1000 carries `suppress_prefixlength 0` (see
//!   [`crate::routing`]; identical on ChromeOS, whose main table has no
//!   default route);
//! * clear puts back the MTU patchpanel found instead of writing 1500;
//! * an IPv6 blackhole route takes the place of an IPv6 default route.
//!
//! Not done (no selector for them in [`RuleSpec`] yet): the VPN's per-uid
//! rules at 32764, the CLAT rule at 32762, and the chronos IPv6 unreachable
//! rule of a secondary Cellular network. DNS (`AREA_DNS`) is a no-op, as
//! upstream's.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use patchpanel_ipc::datapath::{
    ApplyMode, Netns, Plan, RouteKind, RouteSpec, RuleSpec, Step, UplinkAddress, UplinkRef,
};
use patchpanel_ipc::IfName;
use patchpanel_proto::configure_network_request::{self as area, NetworkTechnology};
use patchpanel_proto::{ConfigureNetworkRequest, IPAddrCIDR};
use serde::{Deserialize, Serialize};

use crate::routing::{self, catch_all_rule, main_rules, table_rules};

/// Most entries of each list in a request (addresses, prefixes, routes,
/// DNS servers): a caller cannot make a huge plan.
pub const MAX_ITEMS: usize = 64;
/// Highest `ranking_order`: keeps a VPN's rules before `lookup main`
/// (10 + 10 x 64 < 1000).
pub const MAX_RANK: u32 = 64;
/// The MTU `AREA_MTU` applies when the config has none.
pub const DEFAULT_MTU: u32 = 1500;
/// Smallest MTU of a link with IPv6 (RFC 8200).
pub const IPV6_MIN_MTU: u32 = 1280;

/// VPN rules: this + 10 x rank.
pub const VPN_RULE_PRIORITY: u32 = 10;
/// RFC 3442 destinations (main − 5).
pub const RFC3442_RULE_PRIORITY: u32 = 32761;
/// The bypass-VPN mark to the primary physical network (main − 3).
pub const BYPASS_VPN_PRIORITY: u32 = 32763;
/// The route-on-VPN mark to the VPN that is the primary logical network
/// (main − 2).
pub const ROUTE_ON_VPN_PRIORITY: u32 = 32764;
/// fwmark bits of the VPN policy (reference §3.4).
pub const VPN_POLICY_MASK: u32 = 0xc000;
pub const ROUTE_ON_VPN_MARK: u32 = 0x8000;
pub const BYPASS_VPN_MARK: u32 = 0x4000;

/// Technology of a network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Technology {
    Unknown,
    Cellular,
    Ethernet,
    Vpn,
    Wifi,
}

/// Where a network ranks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Priority {
    pub primary_logical: bool,
    pub primary_physical: bool,
    pub primary_for_dns: bool,
    /// 0 first, at most [`MAX_RANK`].
    pub rank: u32,
}

/// A prefix: an address with its host bits cleared, and a length.
pub type Prefix = (IpAddr, u8);

/// A validated `ConfigureNetworkRequest`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkSpec {
    pub link: UplinkRef,
    /// Known `AREA_*` bits only.
    pub area: u32,
    pub technology: Technology,
    pub priority: Priority,
    /// Address and prefix length (1..=32).
    pub ipv4_address: Option<(Ipv4Addr, u8)>,
    pub ipv4_broadcast: Option<Ipv4Addr>,
    pub ipv4_gateway: Option<Ipv4Addr>,
    /// Addresses and prefix lengths (1..=128).
    pub ipv6_addresses: Vec<(Ipv6Addr, u8)>,
    pub ipv6_gateway: Option<Ipv6Addr>,
    pub ipv4_default_route: bool,
    pub ipv6_blackhole_route: bool,
    pub excluded_routes: Vec<Prefix>,
    pub included_routes: Vec<Prefix>,
    /// Destination (IPv4) and gateway (`None`: on-link).
    pub rfc3442_routes: Vec<((Ipv4Addr, u8), Option<Ipv4Addr>)>,
    pub mtu: Option<u32>,
    /// DNS servers (unicast, at most [`MAX_ITEMS`]): not configured by
    /// patchpanel (`AREA_DNS` is a no-op) but watched in the neighbour
    /// table (`NeighborReachabilityEvent`). Absent in older state files.
    #[serde(default)]
    pub dns_servers: Vec<IpAddr>,
}

impl NetworkSpec {
    fn has(&self, bit: u32) -> bool {
        self.area & bit != 0
    }

    fn is_vpn(&self) -> bool {
        self.technology == Technology::Vpn
    }
}

fn bytes_to_ip(field: &str, bytes: &[u8]) -> Result<IpAddr, String> {
    match bytes.len() {
        4 => Ok(IpAddr::V4(Ipv4Addr::new(
            bytes[0], bytes[1], bytes[2], bytes[3],
        ))),
        16 => {
            let mut a = [0u8; 16];
            a.copy_from_slice(bytes);
            Ok(IpAddr::V6(Ipv6Addr::from(a)))
        }
        n => Err(format!(
            "{field}: {n} bytes, not an IPv4 (4) or IPv6 (16) address"
        )),
    }
}

fn bytes_to_v4(field: &str, bytes: &[u8]) -> Result<Ipv4Addr, String> {
    match bytes_to_ip(field, bytes) {
        Ok(IpAddr::V4(a)) => Ok(a),
        Ok(IpAddr::V6(_)) => Err(format!("{field}: an IPv6 address where IPv4 is needed")),
        Err(e) => Err(e),
    }
}

fn bytes_to_v6(field: &str, bytes: &[u8]) -> Result<Ipv6Addr, String> {
    match bytes_to_ip(field, bytes) {
        Ok(IpAddr::V6(a)) => Ok(a),
        Ok(IpAddr::V4(_)) => Err(format!("{field}: an IPv4 address where IPv6 is needed")),
        Err(e) => Err(e),
    }
}

fn prefix_len(field: &str, addr: &IpAddr, len: i32, min: i32) -> Result<u8, String> {
    let max = if addr.is_ipv4() { 32 } else { 128 };
    if len < min || len > max {
        return Err(format!(
            "{field}.prefix_len: {len} is out of range {min}..={max}"
        ));
    }
    Ok(len as u8)
}

/// `addr` with the bits past `len` cleared.
pub fn network_of(addr: IpAddr, len: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let mask = u32::MAX
                .checked_shl(32 - u32::from(len.min(32)))
                .unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask))
        }
        IpAddr::V6(a) => {
            let mask = u128::MAX
                .checked_shl(128 - u32::from(len.min(128)))
                .unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask))
        }
    }
}

fn cidr(field: &str, c: &IPAddrCIDR, min: i32) -> Result<(IpAddr, u8), String> {
    let addr = bytes_to_ip(&format!("{field}.addr"), &c.addr)?;
    let len = prefix_len(field, &addr, c.prefix_len, min)?;
    Ok((addr, len))
}

fn unicast(field: &str, addr: IpAddr) -> Result<(), String> {
    let bad = addr.is_unspecified()
        || addr.is_multicast()
        || addr.is_loopback()
        || addr == IpAddr::V4(Ipv4Addr::BROADCAST);
    if bad {
        return Err(format!("{field}: {addr} is not a unicast address"));
    }
    Ok(())
}

fn bounded<T>(field: &str, list: &[T]) -> Result<(), String> {
    if list.len() > MAX_ITEMS {
        return Err(format!(
            "{field}: {} entries, at most {MAX_ITEMS}",
            list.len()
        ));
    }
    Ok(())
}

fn prefixes(field: &str, list: &[IPAddrCIDR]) -> Result<Vec<Prefix>, String> {
    bounded(field, list)?;
    list.iter()
        .enumerate()
        .map(|(i, c)| {
            let (addr, len) = cidr(&format!("{field}[{i}]"), c, 0)?;
            Ok((network_of(addr, len), len))
        })
        .collect()
}

/// Validates and types a request. The error says which field is wrong.
pub fn parse(req: &ConfigureNetworkRequest) -> Result<NetworkSpec, String> {
    if req.ifindex <= 0 {
        return Err(format!("ifindex: {} is not a link index", req.ifindex));
    }
    let name = IfName::new(&req.ifname).map_err(|e| format!("ifname: {e}"))?;
    if req.area & !area::AREA_ALL != 0 {
        return Err(format!(
            "area: unknown bits {:#x}",
            req.area & !area::AREA_ALL
        ));
    }
    let technology = match NetworkTechnology::try_from(req.technology) {
        Ok(NetworkTechnology::Unknown) => Technology::Unknown,
        Ok(NetworkTechnology::Cellular) => Technology::Cellular,
        Ok(NetworkTechnology::Ethernet) => Technology::Ethernet,
        Ok(NetworkTechnology::Vpn) => Technology::Vpn,
        Ok(NetworkTechnology::Wifi) => Technology::Wifi,
        Err(_) => return Err(format!("technology: unknown value {}", req.technology)),
    };
    let priority = req.priority.clone().unwrap_or_default();
    if priority.ranking_order > MAX_RANK {
        return Err(format!(
            "priority.ranking_order: {} is above {MAX_RANK}",
            priority.ranking_order
        ));
    }
    let priority = Priority {
        primary_logical: priority.is_primary_logical,
        primary_physical: priority.is_primary_physical,
        primary_for_dns: priority.is_primary_for_dns,
        rank: priority.ranking_order,
    };
    let cfg = req.network_config.clone().unwrap_or_default();

    let ipv4_address = match &cfg.ipv4_address {
        None => None,
        Some(c) => {
            let f = "network_config.ipv4_address";
            let addr = bytes_to_v4(&format!("{f}.addr"), &c.addr)?;
            let len = prefix_len(f, &IpAddr::V4(addr), c.prefix_len, 1)?;
            unicast(f, IpAddr::V4(addr))?;
            Some((addr, len))
        }
    };
    let ipv4_broadcast = cfg
        .ipv4_broadcast
        .as_deref()
        .map(|b| bytes_to_v4("network_config.ipv4_broadcast", b))
        .transpose()?;
    let ipv4_gateway = cfg
        .ipv4_gateway
        .as_deref()
        .map(|b| {
            let f = "network_config.ipv4_gateway";
            let gw = bytes_to_v4(f, b)?;
            unicast(f, IpAddr::V4(gw))?;
            Ok::<_, String>(gw)
        })
        .transpose()?;
    bounded("network_config.ipv6_addresses", &cfg.ipv6_addresses)?;
    let mut ipv6_addresses = Vec::new();
    for (i, c) in cfg.ipv6_addresses.iter().enumerate() {
        let f = format!("network_config.ipv6_addresses[{i}]");
        let addr = bytes_to_v6(&format!("{f}.addr"), &c.addr)?;
        let len = prefix_len(&f, &IpAddr::V6(addr), c.prefix_len, 1)?;
        unicast(&f, IpAddr::V6(addr))?;
        ipv6_addresses.push((addr, len));
    }
    let ipv6_gateway = cfg
        .ipv6_gateway
        .as_deref()
        .map(|b| {
            let f = "network_config.ipv6_gateway";
            let gw = bytes_to_v6(f, b)?;
            unicast(f, IpAddr::V6(gw))?;
            Ok::<_, String>(gw)
        })
        .transpose()?;
    let excluded_routes = prefixes(
        "network_config.excluded_route_prefixes",
        &cfg.excluded_route_prefixes,
    )?;
    let included_routes = prefixes(
        "network_config.included_route_prefixes",
        &cfg.included_route_prefixes,
    )?;
    bounded("network_config.rfc3442_routes", &cfg.rfc3442_routes)?;
    let mut rfc3442_routes = Vec::new();
    for (i, r) in cfg.rfc3442_routes.iter().enumerate() {
        let f = format!("network_config.rfc3442_routes[{i}]");
        let p = r
            .prefix
            .as_ref()
            .ok_or_else(|| format!("{f}.prefix: missing"))?;
        let dst = bytes_to_v4(&format!("{f}.prefix.addr"), &p.addr)?;
        let len = prefix_len(&format!("{f}.prefix"), &IpAddr::V4(dst), p.prefix_len, 0)?;
        let gw = bytes_to_v4(&format!("{f}.gateway"), &r.gateway)?;
        let gw = if gw.is_unspecified() {
            None
        } else {
            unicast(&format!("{f}.gateway"), IpAddr::V4(gw))?;
            Some(gw)
        };
        let IpAddr::V4(dst) = network_of(IpAddr::V4(dst), len) else {
            unreachable!("an IPv4 network of an IPv4 address");
        };
        rfc3442_routes.push(((dst, len), gw));
    }
    bounded("network_config.dns_servers", &cfg.dns_servers)?;
    let mut dns_servers = Vec::new();
    for (i, b) in cfg.dns_servers.iter().enumerate() {
        let f = format!("network_config.dns_servers[{i}]");
        let addr = bytes_to_ip(&f, b)?;
        unicast(&f, addr)?;
        if !dns_servers.contains(&addr) {
            dns_servers.push(addr);
        }
    }
    bounded("network_config.dns_search_domains", &cfg.dns_search_domains)?;
    bounded(
        "network_config.ipv6_delegated_prefixes",
        &cfg.ipv6_delegated_prefixes,
    )?;
    let mtu = match cfg.mtu {
        None => None,
        Some(m) if !(68..=65535).contains(&m) => {
            return Err(format!(
                "network_config.mtu: {m} is out of range 68..=65535"
            ))
        }
        Some(m) => Some(m as u32),
    };
    if let Some(m) = mtu {
        if m < IPV6_MIN_MTU && !ipv6_addresses.is_empty() {
            return Err(format!(
                "network_config.mtu: {m} is below {IPV6_MIN_MTU}, the least IPv6 needs, \
                 with IPv6 addresses in network_config.ipv6_addresses"
            ));
        }
    }
    Ok(NetworkSpec {
        link: UplinkRef {
            ifindex: req.ifindex as u32,
            name,
        },
        area: req.area,
        technology,
        priority,
        ipv4_address,
        ipv4_broadcast,
        ipv4_gateway,
        ipv6_addresses,
        ipv6_gateway,
        ipv4_default_route: cfg.ipv4_default_route,
        ipv6_blackhole_route: cfg.ipv6_blackhole_route,
        excluded_routes,
        included_routes,
        rfc3442_routes,
        mtu,
        dns_servers,
    })
}

/// One configured link, as the manager's state keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    pub link: UplinkRef,
    /// The ip rules this network's routing policy holds (shared ones, such
    /// as `lookup main`, are in every network that wants them).
    pub rules: BTreeSet<RuleSpec>,
}

/// Every link `ConfigureNetwork` configured, by ifindex: the manager's
/// state for this method.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Networks {
    pub by_ifindex: BTreeMap<u32, Applied>,
}

impl Networks {
    /// Every rule the configured networks want (a set: a shared rule once).
    pub fn rules(&self) -> BTreeSet<RuleSpec> {
        self.by_ifindex
            .values()
            .flat_map(|a| a.rules.iter().cloned())
            .collect()
    }
}

/// What to send and what to keep once it is applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub steps: Vec<Step>,
    pub networks: Networks,
}

fn route(dst: IpAddr, len: u8, gateway: Option<IpAddr>, link: &UplinkRef) -> RouteSpec {
    RouteSpec {
        dst,
        prefix_len: len,
        gateway,
        dev: Some(link.name.clone()),
        table: link.table(),
        metric: None,
        kind: RouteKind::Unicast,
    }
}

fn nowhere(dst: IpAddr, len: u8, kind: RouteKind, link: &UplinkRef) -> RouteSpec {
    RouteSpec {
        dst,
        prefix_len: len,
        gateway: None,
        dev: None,
        table: link.table(),
        metric: None,
        kind,
    }
}

/// The IPv6 blackhole default route of a VPN without IPv6.
fn ipv6_blackhole(link: &UplinkRef) -> RouteSpec {
    nowhere(
        IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        0,
        RouteKind::Blackhole,
        link,
    )
}

/// Whether `gw` is on the subnet of `addr/len`.
pub fn in_subnet(addr: Ipv4Addr, len: u8, gw: Ipv4Addr) -> bool {
    network_of(IpAddr::V4(addr), len) == network_of(IpAddr::V4(gw), len)
}

/// The IPv4 routes of table ifindex+1000 (`AREA_IPV4_ROUTE`, with the
/// default route only under `AREA_IPV4_DEFAULT_ROUTE` too).
pub fn ipv4_routes(spec: &NetworkSpec) -> Vec<RouteSpec> {
    let link = &spec.link;
    let gw = spec.ipv4_gateway.map(IpAddr::V4);
    let mut routes = Vec::new();
    if let (Some(g), Some((addr, len))) = (spec.ipv4_gateway, spec.ipv4_address) {
        if !in_subnet(addr, len, g) {
            routes.push(route(IpAddr::V4(g), 32, None, link));
        }
    }
    if spec.has(area::AREA_IPV4_DEFAULT_ROUTE) && spec.ipv4_default_route {
        routes.push(route(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0, gw, link));
    }
    for &(dst, len) in spec.excluded_routes.iter().filter(|(d, _)| d.is_ipv4()) {
        routes.push(nowhere(dst, len, RouteKind::Throw, link));
    }
    for &(dst, len) in spec.included_routes.iter().filter(|(d, _)| d.is_ipv4()) {
        routes.push(route(dst, len, gw, link));
    }
    for &((dst, len), g) in &spec.rfc3442_routes {
        routes.push(route(IpAddr::V4(dst), len, g.map(IpAddr::V4), link));
    }
    routes
}

/// The IPv6 routes of table ifindex+1000 (`AREA_IPV6_ROUTE`, with the
/// default route only under `AREA_IPV6_DEFAULT_ROUTE` too; a blackhole
/// instead when the config asks for one).
pub fn ipv6_routes(spec: &NetworkSpec) -> Vec<RouteSpec> {
    let link = &spec.link;
    let gw = spec.ipv6_gateway.map(IpAddr::V6);
    let mut routes = Vec::new();
    if spec.ipv6_blackhole_route {
        routes.push(ipv6_blackhole(link));
    } else if spec.has(area::AREA_IPV6_DEFAULT_ROUTE) {
        routes.push(route(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0, gw, link));
    }
    for &(dst, len) in spec.excluded_routes.iter().filter(|(d, _)| d.is_ipv6()) {
        routes.push(nowhere(dst, len, RouteKind::Throw, link));
    }
    for &(dst, len) in spec.included_routes.iter().filter(|(d, _)| d.is_ipv6()) {
        routes.push(route(dst, len, gw, link));
    }
    routes
}

/// The ip rules of one network's routing policy (`AREA_ROUTING_POLICY`).
pub fn network_rules(spec: &NetworkSpec) -> BTreeSet<RuleSpec> {
    let table = spec.link.table();
    let vpn = spec.is_vpn();
    let base = if vpn {
        VPN_RULE_PRIORITY
    } else {
        routing::UPLINK_RULE_PRIORITY
    };
    let priority = base + 10 * spec.priority.rank;
    let sources: Vec<IpAddr> = if vpn {
        Vec::new()
    } else {
        spec.ipv4_address
            .iter()
            .map(|(a, _)| IpAddr::V4(*a))
            .chain(spec.ipv6_addresses.iter().map(|(a, _)| IpAddr::V6(*a)))
            .collect()
    };
    let mut rules: BTreeSet<RuleSpec> = table_rules(
        table,
        priority,
        &spec.link.name,
        &[false, true],
        !vpn,
        &sources,
    )
    .into_iter()
    .collect();
    if spec.priority.primary_physical {
        rules.extend(main_rules());
        for ipv6 in [false, true] {
            rules.insert(catch_all_rule(ipv6, table));
            rules.insert(RuleSpec {
                fwmark: Some((BYPASS_VPN_MARK, VPN_POLICY_MASK)),
                ..routing::rule(ipv6, BYPASS_VPN_PRIORITY, table)
            });
        }
    }
    if vpn && spec.priority.primary_logical {
        for ipv6 in [false, true] {
            rules.insert(RuleSpec {
                fwmark: Some((ROUTE_ON_VPN_MARK, VPN_POLICY_MASK)),
                ..routing::rule(ipv6, ROUTE_ON_VPN_PRIORITY, table)
            });
        }
    }
    for &((dst, len), _) in &spec.rfc3442_routes {
        rules.insert(RuleSpec {
            dst: Some((IpAddr::V4(dst), len)),
            ..routing::rule(false, RFC3442_RULE_PRIORITY, table)
        });
    }
    rules
}

/// New rules first, removed ones last: an atomic plan that fails has
/// deleted nothing (a deleted rule has no undo).
fn rule_steps(before: &Networks, after: &Networks) -> (Vec<Step>, Vec<Step>) {
    let old = before.rules();
    let new = after.rules();
    (
        new.difference(&old).cloned().map(Step::AddRule).collect(),
        old.difference(&new)
            .cloned()
            .map(Step::DeleteRule)
            .collect(),
    )
}

/// The steps of every bit of `spec.area` but `AREA_CLEAR` (see
/// [`clear_plan`]), for one atomic plan, in upstream's order: IPv4
/// address, IPv4 routes, IPv6 addresses, IPv6 routes, ip rules, MTU; the
/// rules that go away last.
pub fn plan(spec: &NetworkSpec, networks: &Networks) -> Outcome {
    let link = &spec.link;
    let mut steps = Vec::new();
    if spec.has(area::AREA_IPV4_ADDRESS) {
        steps.push(Step::SyncUplinkAddresses {
            link: link.clone(),
            ipv6: false,
            addrs: spec
                .ipv4_address
                .iter()
                .map(|&(a, len)| UplinkAddress {
                    addr: IpAddr::V4(a),
                    prefix_len: len,
                    broadcast: spec.ipv4_broadcast,
                })
                .collect(),
        });
    }
    if spec.has(area::AREA_IPV4_ROUTE) {
        steps.push(Step::SyncUplinkRoutes {
            link: link.clone(),
            ipv6: false,
            routes: ipv4_routes(spec),
        });
        if spec.ipv6_blackhole_route && !spec.has(area::AREA_IPV6_ROUTE) {
            // Upstream ties the blackhole to the IPv4 routes.
            steps.push(Step::AddRoute {
                netns: Netns::Host,
                route: ipv6_blackhole(link),
            });
        }
    }
    if spec.has(area::AREA_IPV6_ADDRESS) {
        steps.push(Step::SyncUplinkAddresses {
            link: link.clone(),
            ipv6: true,
            addrs: spec
                .ipv6_addresses
                .iter()
                .map(|&(a, len)| UplinkAddress {
                    addr: IpAddr::V6(a),
                    prefix_len: len,
                    broadcast: None,
                })
                .collect(),
        });
    }
    if spec.has(area::AREA_IPV6_ROUTE) {
        steps.push(Step::SyncUplinkRoutes {
            link: link.clone(),
            ipv6: true,
            routes: ipv6_routes(spec),
        });
    }
    let mut after = networks.clone();
    let mut deletes = Vec::new();
    if spec.has(area::AREA_ROUTING_POLICY) {
        after.by_ifindex.insert(
            link.ifindex,
            Applied {
                link: link.clone(),
                rules: network_rules(spec),
            },
        );
        let (adds, dels) = rule_steps(networks, &after);
        steps.extend(adds);
        deletes = dels;
    }
    if spec.has(area::AREA_MTU) {
        steps.push(Step::SetUplinkMtu {
            link: link.clone(),
            mtu: spec.mtu.unwrap_or(DEFAULT_MTU),
        });
    }
    steps.extend(deletes);
    Outcome {
        steps,
        networks: after,
    }
}

/// `AREA_CLEAR` (or shill's link going away): the rules of the network go
/// (the shared ones only if no other network wants them), then the writer
/// removes what patchpanel put on the link. For a best-effort plan.
pub fn clear_plan(link: &UplinkRef, networks: &Networks) -> Outcome {
    let mut after = networks.clone();
    after.by_ifindex.remove(&link.ifindex);
    let (adds, deletes) = rule_steps(networks, &after);
    let mut steps = adds;
    steps.extend(deletes);
    steps.push(Step::ClearUplink { link: link.clone() });
    Outcome {
        steps,
        networks: after,
    }
}

/// The plans for one request, in order (a best-effort clear when
/// `AREA_CLEAR` is set, then an atomic plan for the other bits if any), and
/// the [`Networks`] to keep once all are applied.
pub fn plans(spec: &NetworkSpec, networks: &Networks, label: &str) -> (Vec<Plan>, Networks) {
    let mut out = Vec::new();
    let mut current = networks.clone();
    if spec.has(area::AREA_CLEAR) {
        let c = clear_plan(&spec.link, &current);
        out.push(Plan {
            label: format!("{label} (clear)"),
            mode: ApplyMode::BestEffort,
            steps: c.steps,
        });
        current = c.networks;
    }
    let p = plan(spec, &current);
    if !p.steps.is_empty() {
        out.push(Plan {
            label: label.to_string(),
            mode: ApplyMode::Atomic,
            steps: p.steps,
        });
    }
    (out, p.networks)
}

#[cfg(test)]
mod tests;
