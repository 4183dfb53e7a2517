//! Typed datapath operations: what the manager asks the datapath writer to
//! do to the kernel.
//!
//! The manager turns one D-Bus operation into one [`Plan`]; the writer
//! re-validates every step, applies them in order and, for an
//! [`ApplyMode::Atomic`] plan, undoes the steps already applied when one
//! fails, so a refused or failed operation leaves nothing behind. Teardown
//! plans run in [`ApplyMode::BestEffort`]: every step is attempted and every
//! failure reported.
//!
//! Only things patchpanel owns can be removed: links carrying its alias,
//! namespaces whose name starts with its prefix, routes and rules tagged
//! with its routing protocol number, its own firewall chains. The writer
//! checks this itself; the manager's word is not enough.
//!
//! `ConfigureNetwork` changes links patchpanel does not own (shill's), only
//! through the `*Uplink*` steps: the link is named by index and name, only
//! addresses the writer itself added are removed, routes only go into that
//! link's table (ifindex + 1000).

use std::net::{IpAddr, Ipv4Addr};

use serde::{Deserialize, Serialize};

use crate::names::{IfName, NetnsName};
use patchpanel_firewall::Batch;

/// A MAC address.
pub type Mac = [u8; 6];

/// `IFLA_IFALIAS` of every link patchpanel creates: the mark that makes a
/// link patchpanel's to remove.
pub const LINK_ALIAS: &str = "patchpanel";

/// Routing protocol number (`rtm_protocol`, `FRA_PROTOCOL`) of every route
/// and ip rule patchpanel installs: `ip route show proto 157`. The kernel
/// matches it on delete, so a removal can only hit patchpanel's entries.
pub const ROUTE_PROTOCOL: u8 = 157;

/// Where a step acts: the daemon's own namespace or a named one patchpanel
/// created or attached.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Netns {
    Host,
    Named(NetnsName),
}

/// The sysctls patchpanel may change, and nothing else.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Sysctl {
    /// `net/ipv4/ip_forward`
    Ipv4Forward,
    /// `net/ipv6/conf/all/forwarding`
    Ipv6Forwarding,
    /// `net/ipv6/conf/all/proxy_ndp`
    Ipv6ProxyNdp,
    /// `net/ipv4/ip_default_ttl` (65 inside connected namespaces)
    Ipv4DefaultTtl,
    /// `net/ipv6/conf/<if>/hop_limit`
    Ipv6HopLimit(IfName),
    /// `net/ipv6/conf/<if>/accept_ra`
    Ipv6AcceptRa(IfName),
    /// `net/ipv4/conf/<if>/route_localnet`
    RouteLocalnet(IfName),
    /// `net/netfilter/nf_conntrack_helper`
    ConntrackHelper,
}

impl Sysctl {
    /// The path below `/proc/sys`.
    pub fn key(&self) -> String {
        match self {
            Sysctl::Ipv4Forward => "net/ipv4/ip_forward".into(),
            Sysctl::Ipv6Forwarding => "net/ipv6/conf/all/forwarding".into(),
            Sysctl::Ipv6ProxyNdp => "net/ipv6/conf/all/proxy_ndp".into(),
            Sysctl::Ipv4DefaultTtl => "net/ipv4/ip_default_ttl".into(),
            Sysctl::Ipv6HopLimit(i) => format!("net/ipv6/conf/{i}/hop_limit"),
            Sysctl::Ipv6AcceptRa(i) => format!("net/ipv6/conf/{i}/accept_ra"),
            Sysctl::RouteLocalnet(i) => format!("net/ipv4/conf/{i}/route_localnet"),
            Sysctl::ConntrackHelper => "net/netfilter/nf_conntrack_helper".into(),
        }
    }
}

/// What a route does with the packets it matches (`rtm_type`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum RouteKind {
    /// Forwarded (through `gateway` and/or out of `dev`).
    #[default]
    Unicast,
    /// The lookup leaves this table and goes on with the next ip rule
    /// (excluded prefixes of a network).
    Throw,
    /// Dropped silently (a VPN's IPv6 when it carries none).
    Blackhole,
    /// Dropped with an ICMP unreachable.
    Unreachable,
}

/// A route patchpanel installs (tagged with its routing protocol number).
/// A route that is not [`RouteKind::Unicast`] has no gateway and no device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteSpec {
    pub dst: IpAddr,
    pub prefix_len: u8,
    pub gateway: Option<IpAddr>,
    pub dev: Option<IfName>,
    /// Routing table id; 254 is main.
    pub table: u32,
    pub metric: Option<u32>,
    pub kind: RouteKind,
}

/// A link patchpanel does not own (shill's uplink, for `ConfigureNetwork`),
/// named twice: the writer refuses a step whose index and name are not the
/// same link, so a link renamed or replaced since the caller looked is
/// never touched.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UplinkRef {
    pub ifindex: u32,
    pub name: IfName,
}

impl UplinkRef {
    /// The per-network routing table: ifindex + 1000.
    pub fn table(&self) -> u32 {
        self.ifindex.saturating_add(UPLINK_TABLE_OFFSET)
    }
}

/// Per-network routing tables are ifindex + this.
pub const UPLINK_TABLE_OFFSET: u32 = 1000;

/// An address on an uplink; IPv4 with its broadcast address (the subnet's
/// when `None`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UplinkAddress {
    pub addr: IpAddr,
    pub prefix_len: u8,
    pub broadcast: Option<Ipv4Addr>,
}

/// An ip rule patchpanel installs (tagged with its routing protocol number).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RuleSpec {
    pub ipv6: bool,
    pub priority: u32,
    pub fwmark: Option<(u32, u32)>,
    pub iif: Option<IfName>,
    pub oif: Option<IfName>,
    pub src: Option<(IpAddr, u8)>,
    pub dst: Option<(IpAddr, u8)>,
    pub table: u32,
    pub suppress_prefixlen: Option<u32>,
}

/// One change to the kernel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Step {
    /// `ip netns add`. Undo: delete it.
    CreateNetns {
        name: NetnsName,
    },
    /// `ip netns attach NAME PID`. The process is pinned by a pidfd sent
    /// beside the request (fd index `pidfd`): the writer refuses if the
    /// process has exited (the pid could have been reused), and refuses
    /// pid 1's namespace and its own. With `owner_uid`, the namespace must
    /// also belong to a user namespace other than the writer's own, owned
    /// by that uid: one the caller could have made itself (a non-root
    /// caller never gets a namespace root made, e.g. for a service with
    /// systemd's `PrivateNetwork=`). Undo: delete the name.
    AttachNetns {
        name: NetnsName,
        pid: i32,
        pidfd: u8,
        owner_uid: Option<u32>,
    },
    /// Removes a named namespace (the name must carry the prefix).
    DeleteNetns {
        name: NetnsName,
    },
    /// A veth pair: `host` in the daemon's namespace, `peer` created directly
    /// in `peer_netns`; both marked as patchpanel's. Undo: delete `host`.
    CreateVeth {
        host: IfName,
        peer: IfName,
        peer_netns: Netns,
        host_mac: Mac,
        peer_mac: Mac,
    },
    /// Deletes a link patchpanel created (it must carry patchpanel's alias).
    DeleteLink {
        netns: Netns,
        name: IfName,
    },
    /// Adds an address (with the subnet's broadcast for IPv4). Undo: remove it.
    AddAddress {
        netns: Netns,
        link: IfName,
        addr: IpAddr,
        prefix_len: u8,
    },
    /// Removes an address, if present, from `lo` or a link patchpanel
    /// owns (the writer refuses any other). Not undone: for best-effort
    /// plans.
    DeleteAddress {
        netns: Netns,
        link: IfName,
        addr: IpAddr,
        prefix_len: u8,
    },
    /// Brings a link up, setting multicast on or off. Undo: down.
    LinkUp {
        netns: Netns,
        link: IfName,
        multicast: bool,
    },
    /// Undo: delete the route.
    AddRoute {
        netns: Netns,
        route: RouteSpec,
    },
    DeleteRoute {
        netns: Netns,
        route: RouteSpec,
    },
    /// Undo: delete the rule.
    AddRule(RuleSpec),
    DeleteRule(RuleSpec),
    /// Writes a sysctl. The reply reports the value it replaced so the
    /// manager can restore it on stop. Undo: write the old value back.
    SetSysctl {
        netns: Netns,
        sysctl: Sysctl,
        value: String,
    },
    /// Makes routing table `table` hold exactly `routes` (all through
    /// `dev`): what shill would do for an uplink. Routes patchpanel put
    /// there before and that are not listed are removed.
    SyncTable {
        table: u32,
        routes: Vec<RouteSpec>,
    },
    /// One firewall batch (both families), rendered by the writer for its
    /// backend. Undo: the inverse batch.
    Firewall(Batch),
    /// Creates the accounting chains `rx_<if>`/`tx_<if>` unless they exist
    /// (they outlive patchpanel so counts persist). No undo.
    EnsureAccounting(IfName),
    /// Waits (at most `timeout_ms`) until these host links are gone: a
    /// deleted namespace takes its end of a veth pair, and the kernel
    /// removes both ends asynchronously, many namespaces per RCU grace
    /// period, much faster than deleting each link. Never fails; a link
    /// still present afterwards is for a following DeleteLink.
    AwaitLinksGone {
        names: Vec<IfName>,
        timeout_ms: u32,
    },
    /// A persistent TAP for a VM in the daemon's namespace, marked as
    /// patchpanel's, with `mac`, owned by the VM user the writer was
    /// configured with ([`WriterConfig::tap_owner_uid`]), or with `user`
    /// by that user, who must be one of [`WriterConfig::user_tap_owners`]
    /// (the manager cannot choose any other owner). Never attaches to an
    /// existing device. Undo: delete it.
    CreateTap {
        name: IfName,
        mac: Mac,
        user: Option<u32>,
    },
    /// A bridge in the daemon's namespace, marked as patchpanel's. Undo:
    /// delete it.
    CreateBridge {
        name: IfName,
    },
    /// Enslaves `link` to the bridge `master`, or frees it with `None`
    /// (daemon's namespace; both must be patchpanel's). Undo: the previous
    /// master.
    SetMaster {
        link: IfName,
        master: Option<IfName>,
    },
    /// Fails unless link `name` exists and is patchpanel's: re-adopting a
    /// guest after a restart. No undo.
    ExpectLink {
        netns: Netns,
        name: IfName,
    },
    /// `ConfigureNetwork`: makes the addresses of one family (`ipv6`) that
    /// patchpanel added to the uplink `link` (daemon's namespace) exactly
    /// `addrs`. The writer remembers which addresses it added there and
    /// removes only those: an address that was already on the link (shill's,
    /// an administrator's) is never removed, and listing it does not make
    /// it patchpanel's. At most [`MAX_UPLINK_ITEMS`]. Undo: the previous
    /// set of patchpanel's addresses.
    SyncUplinkAddresses {
        link: UplinkRef,
        ipv6: bool,
        addrs: Vec<UplinkAddress>,
    },
    /// `ConfigureNetwork`: makes the routes of one family (`ipv6`) that
    /// patchpanel put in the uplink's table (`link.table()`) exactly
    /// `routes`. Every route must be in that table, of that family, and go
    /// out of `link` or nowhere (throw, blackhole, unreachable); a route
    /// that is not patchpanel's is never replaced (refused) nor removed.
    /// At most [`MAX_UPLINK_ITEMS`] * 4. Undo: patchpanel's previous routes.
    SyncUplinkRoutes {
        link: UplinkRef,
        ipv6: bool,
        routes: Vec<RouteSpec>,
    },
    /// `ConfigureNetwork`: the uplink's MTU (68..=65535). The writer
    /// remembers the MTU it found before its first change, for
    /// [`Step::ClearUplink`]. Undo: the MTU it replaced.
    SetUplinkMtu {
        link: UplinkRef,
        mtu: u32,
    },
    /// `ConfigureNetwork` with `AREA_CLEAR`: removes from the uplink what
    /// patchpanel put there: the addresses the writer added (both
    /// families), its routes in the uplink's table, its ip rules that look
    /// up that table or name the link as `iif`/`oif`, and puts back the
    /// MTU it found before its first change. Nothing else. No undo.
    ClearUplink {
        link: UplinkRef,
    },
    /// `NeighborReachabilityEvent`'s active probe: makes the kernel check
    /// that `addr` (a unicast address, a gateway or DNS server of the
    /// network on `link`) still answers: a valid neighbour entry is set to
    /// `NUD_PROBE`, an address without one is resolved; static entries are
    /// left alone. The result shows in the neighbour table's notifications.
    /// No undo.
    ProbeNeighbor {
        link: UplinkRef,
        addr: IpAddr,
    },
}

/// Most addresses in one [`Step::SyncUplinkAddresses`] (routes: 4 times
/// as many).
pub const MAX_UPLINK_ITEMS: usize = 64;

/// How failures are handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ApplyMode {
    /// Stop at the first failure and undo what was applied, in reverse.
    Atomic,
    /// Attempt every step, report every failure (teardown).
    BestEffort,
}

/// The steps of one operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// What the plan is for, for logs (e.g. "ConnectNamespace op 12").
    pub label: String,
    pub mode: ApplyMode,
    pub steps: Vec<Step>,
}

/// What a writer did with a plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanReport {
    /// Old values of the sysctls the plan wrote, in plan order.
    pub replaced_sysctls: Vec<(Netns, Sysctl, String)>,
    /// BestEffort: one line per failed step.
    pub failures: Vec<String>,
}

/// What the writer needs to know before it applies anything.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriterConfig {
    /// Names of patchpanel's namespaces start with this.
    pub netns_prefix: String,
    /// Where named namespaces live (`/run/netns`).
    pub netns_dir: String,
    /// Owner of the TAPs made for VMs (the `crosvm` user); `None` when that
    /// user does not exist, and then no TAP is made.
    pub tap_owner_uid: Option<u32>,
    /// Users who may own the TAP of a VM of their own (config `vm_owners`,
    /// resolved at the daemon's start); never root.
    pub user_tap_owners: Vec<u32>,
    /// The firewall backend.
    pub firewall: patchpanel_firewall::FirewallChoice,
}

/// The subnet broadcast address of an IPv4 address/prefix.
pub fn broadcast(addr: Ipv4Addr, prefix_len: u8) -> Ipv4Addr {
    let host_bits = 32u32.saturating_sub(u32::from(prefix_len.min(32)));
    let mask = if host_bits == 32 {
        0
    } else {
        u32::MAX << host_bits
    };
    Ipv4Addr::from(u32::from(addr) | !mask)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcast_of_a_slash_30() {
        assert_eq!(
            broadcast(Ipv4Addr::new(100, 115, 92, 129), 30),
            Ipv4Addr::new(100, 115, 92, 131)
        );
        assert_eq!(
            broadcast(Ipv4Addr::new(10, 0, 0, 1), 0),
            Ipv4Addr::new(255, 255, 255, 255)
        );
        assert_eq!(
            broadcast(Ipv4Addr::new(10, 0, 0, 1), 32),
            Ipv4Addr::new(10, 0, 0, 1)
        );
    }

    #[test]
    fn sysctl_keys_are_under_net() {
        let eth0 = IfName::new("eth0").unwrap();
        assert_eq!(
            Sysctl::Ipv6AcceptRa(eth0).key(),
            "net/ipv6/conf/eth0/accept_ra"
        );
        assert_eq!(Sysctl::Ipv4Forward.key(), "net/ipv4/ip_forward");
    }

    #[test]
    fn a_step_naming_a_namespace_round_trips() {
        let step = Step::CreateNetns {
            name: NetnsName::new("connected_netns_0").unwrap(),
        };

        let bytes = crate::encode(&step).expect("encodes");

        assert_eq!(crate::decode::<Step>(&bytes).expect("decodes"), step);
    }
}
