//! The kernel's side of an uplink: ifindex, state, addresses and default
//! routes, as plain data ([`KernelView`]) so that turning it into
//! [`Uplink`]s and picking the default network is tested without a kernel.
//! [`KernelWatcher`] fills it from rtnetlink.

use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, Ipv4Addr};

use std::os::fd::{AsRawFd, RawFd};

use patchpanel_ipc::datapath::LINK_ALIAS;
use patchpanel_rtnl::{
    Family, Link, LinkRef, MonitorGroups, Route, RouteType, Rtnl, RtnlError, RtnlEvent, RtnlMonitor,
};

use crate::{IfName, Technology, Uplink, UplinkError};

/// The main routing table (`RT_TABLE_MAIN`).
pub(crate) const RT_TABLE_MAIN: u32 = 254;

/// Offset of shill's per-interface routing tables (reference §4.12).
pub(crate) const INTERFACE_TABLE_OFFSET: u32 = 1000;

/// One link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KernelLink {
    pub ifindex: u32,
    pub name: String,
    pub up: bool,
    pub loopback: bool,
}

/// One address on a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KernelAddr {
    pub ifindex: u32,
    pub addr: IpAddr,
    pub prefix_len: u8,
}

/// One default route (destination `0.0.0.0/0` or `::/0`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DefaultRoute {
    pub table: u32,
    pub oif: Option<u32>,
    pub gateway: Option<IpAddr>,
    pub metric: u32,
    pub ipv6: bool,
}

/// Everything the sources need from the kernel, as of the last dump.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct KernelView {
    pub links: Vec<KernelLink>,
    pub addrs: Vec<KernelAddr>,
    pub default_routes: Vec<DefaultRoute>,
}

impl KernelView {
    /// The link called `name`, if the kernel has it.
    pub fn link(&self, name: &str) -> Option<&KernelLink> {
        self.links.iter().find(|l| l.name == name)
    }

    /// The uplink for the link `name`, or `None` if the kernel has no such
    /// link or its name is not a valid [`IfName`].
    pub fn uplink(&self, name: &str, technology: Technology) -> Option<Uplink> {
        let link = self.link(name)?;
        let name = match IfName::new(&link.name) {
            Ok(n) => n,
            Err(e) => {
                log::warn!("uplinks: ignoring link {}: {e}", link.ifindex);
                return None;
            }
        };
        let mut ipv4 = Vec::new();
        let mut ipv6 = Vec::new();
        for a in self.addrs.iter().filter(|a| a.ifindex == link.ifindex) {
            match a.addr {
                IpAddr::V4(v4) => ipv4.push((v4, a.prefix_len)),
                IpAddr::V6(v6) => ipv6.push((v6, a.prefix_len)),
            }
        }
        ipv4.sort();
        ipv4.dedup();
        ipv6.sort();
        ipv6.dedup();
        let own_table = link.ifindex.saturating_add(INTERFACE_TABLE_OFFSET);
        let gateway4 = self
            .default_routes
            .iter()
            .filter(|r| !r.ipv6 && r.oif == Some(link.ifindex))
            .filter(|r| r.table == RT_TABLE_MAIN || r.table == own_table)
            .filter_map(|r| match r.gateway {
                Some(IpAddr::V4(gw)) => Some((r.table != RT_TABLE_MAIN, r.metric, gw)),
                _ => None,
            })
            .min()
            .map(|(_, _, gw): (bool, u32, Ipv4Addr)| gw);
        Some(Uplink {
            name,
            ifindex: link.ifindex,
            up: link.up,
            ipv4,
            ipv6,
            gateway4,
            technology,
        })
    }

    /// The uplink holding the best default route of the main table among
    /// `uplinks`: IPv4 first (lowest metric), else IPv6. Ties go to the
    /// lower ifindex so the answer does not depend on dump order.
    pub fn default_by_route<'a>(
        &self,
        uplinks: impl Iterator<Item = &'a Uplink>,
    ) -> Option<IfName> {
        let by_index: BTreeMap<u32, &IfName> = uplinks.map(|u| (u.ifindex, &u.name)).collect();
        let best = |ipv6: bool| {
            self.default_routes
                .iter()
                .filter(|r| r.ipv6 == ipv6 && r.table == RT_TABLE_MAIN)
                .filter_map(|r| {
                    let oif = r.oif?;
                    by_index.get(&oif).map(|name| (r.metric, oif, *name))
                })
                .min()
                .map(|(_, _, name)| name.clone())
        };
        best(false).or_else(|| best(true))
    }
}

/// Whether `fd` has bytes waiting, without consuming them.
pub(crate) fn socket_has_data(fd: RawFd) -> bool {
    let mut b = 0u8;
    // SAFETY: a 1-byte non-blocking peek into a local buffer; `fd` is a
    // socket this crate owns.
    let n = unsafe {
        libc::recv(
            fd,
            (&mut b as *mut u8).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    n > 0
}

/// Kernel state kept current from an rtnetlink monitor.
///
/// A wake-up with a notification about anything but patchpanel's own links
/// re-dumps links, addresses and routes instead of applying the
/// notifications one by one: the kernel removes IPv4 routes of a link that
/// goes down without telling anyone, an [`RtnlEvent::Overrun`] needs a
/// re-dump anyway, and a host has a handful of uplinks. Notifications that
/// only concern links patchpanel created (they carry [`LINK_ALIAS`] and are
/// never uplinks) are not worth a dump, which grows with the number of guest
/// links: at 100 connected namespaces each one took ~2 ms of the manager's
/// loop, ahead of the next lifeline or call. The monitor is opened before
/// the first dump so no change falls between the two.
#[derive(Debug)]
pub(crate) struct KernelWatcher {
    rtnl: Rtnl,
    monitor: RtnlMonitor,
    view: KernelView,
    /// The ifindexes of the links carrying [`LINK_ALIAS`].
    ours: HashSet<u32>,
}

/// Receive buffer for the monitor: room for a burst of guest veths coming
/// and going before we read.
const MONITOR_BUFFER: usize = 1 << 20;

fn netlink(context: &'static str) -> impl FnOnce(RtnlError) -> UplinkError {
    move |source| UplinkError::Netlink { context, source }
}

impl KernelWatcher {
    /// Opens the monitor and the request socket in the calling thread's
    /// network namespace, and dumps the current state.
    pub fn open() -> Result<KernelWatcher, UplinkError> {
        let monitor = RtnlMonitor::new(MonitorGroups::ALL).map_err(netlink("open the monitor"))?;
        if let Err(e) = monitor.set_recv_buffer_size(MONITOR_BUFFER) {
            log::warn!("uplinks: {e}; overruns will cost a re-dump");
        }
        let rtnl = Rtnl::new().map_err(netlink("open the request socket"))?;
        let (view, ours) = dump(&rtnl)?;
        Ok(KernelWatcher {
            rtnl,
            monitor,
            view,
            ours,
        })
    }

    /// The monitor socket, to register READABLE.
    pub fn fd(&self) -> RawFd {
        self.monitor.as_raw_fd()
    }

    /// Drains the monitor; re-dumps if anything was read. Returns whether
    /// it did.
    pub fn process(&mut self) -> Result<bool, UplinkError> {
        let events = self
            .monitor
            .read_events()
            .map_err(netlink("read the monitor"))?;
        if events.is_empty() {
            return Ok(false);
        }
        if events.contains(&RtnlEvent::Overrun) {
            log::info!("uplinks: rtnetlink notifications were lost; re-dumping");
        }
        let view = &self.view;
        let viewed = |index: u32| view.links.iter().any(|l| l.ifindex == index);
        match only_ours(&events, &self.ours, &viewed) {
            // The view has none of our links: it stays as it is.
            Some(ours) => self.ours = ours,
            None => (self.view, self.ours) = dump(&self.rtnl)?,
        }
        Ok(true)
    }

    /// The state as of the last dump.
    pub fn view(&self) -> &KernelView {
        &self.view
    }
}

fn is_ours(link: &Link) -> bool {
    link.alias.as_deref() == Some(LINK_ALIAS)
}

/// When every event of `events` concerns a link patchpanel created (known
/// in `ours`, or labelled in this batch), the links of ours after them;
/// `None` when something else changed (or notifications were lost) and the
/// view needs a re-dump. A link is ours as its last notification in the
/// batch says (the first one of a new veth comes before its label); a
/// default route never counts as ours, nor does a link the view has (it
/// was labelled after a dump saw it, and must leave the view).
fn only_ours(
    events: &[RtnlEvent],
    ours: &HashSet<u32>,
    viewed: &dyn Fn(u32) -> bool,
) -> Option<HashSet<u32>> {
    let mut known = ours.clone();
    for e in events {
        if let RtnlEvent::NewLink(l) = e {
            if !is_ours(l) {
                known.remove(&l.index);
            } else if viewed(l.index) {
                return None;
            } else {
                known.insert(l.index);
            }
        }
    }
    let of_ours = |e: &RtnlEvent| match e {
        RtnlEvent::NewLink(l) => known.contains(&l.index),
        RtnlEvent::DelLink(l) => known.contains(&l.index) || is_ours(l),
        RtnlEvent::NewAddress(a) | RtnlEvent::DelAddress(a) => known.contains(&a.ifindex),
        RtnlEvent::NewRoute(r) | RtnlEvent::DelRoute(r) => {
            r.prefix_len != 0 && matches!(r.oif, Some(LinkRef::Index(i)) if known.contains(&i))
        }
        RtnlEvent::Overrun => false,
    };
    if !events.iter().all(of_ours) {
        return None;
    }
    // In order: a link deleted and then created again stays known.
    for e in events {
        match e {
            RtnlEvent::NewLink(l) if is_ours(l) => {
                known.insert(l.index);
            }
            RtnlEvent::DelLink(l) => {
                known.remove(&l.index);
            }
            _ => {}
        }
    }
    Some(known)
}

/// Links, addresses and the default routes of every table, and which links
/// are patchpanel's own. The view leaves patchpanel's links and their
/// addresses out: they are never uplinks, whatever their name.
fn dump(rtnl: &Rtnl) -> Result<(KernelView, HashSet<u32>), UplinkError> {
    let links = rtnl.links().map_err(netlink("dump links"))?;
    let ours: HashSet<u32> = links
        .iter()
        .filter(|l| is_ours(l))
        .map(|l| l.index)
        .collect();
    let links = links
        .into_iter()
        .filter(|l| !ours.contains(&l.index))
        .map(|l| KernelLink {
            ifindex: l.index,
            loopback: l.name == "lo",
            name: l.name,
            up: l.up,
        })
        .collect();
    let addrs = rtnl
        .addresses(None)
        .map_err(netlink("dump addresses"))?
        .into_iter()
        .filter(|a| !ours.contains(&a.ifindex))
        .map(|a| KernelAddr {
            ifindex: a.ifindex,
            addr: a.addr,
            prefix_len: a.prefix_len,
        })
        .collect();
    let mut default_routes = Vec::new();
    for family in [Family::V4, Family::V6] {
        let routes = rtnl.routes(family, None).map_err(netlink("dump routes"))?;
        default_routes.extend(routes.into_iter().filter_map(default_route));
    }
    Ok((
        KernelView {
            links,
            addrs,
            default_routes,
        },
        ours,
    ))
}

/// A unicast route to `0.0.0.0/0` or `::/0`, as a [`DefaultRoute`].
fn default_route(r: Route) -> Option<DefaultRoute> {
    if r.prefix_len != 0 || r.kind != RouteType::Unicast {
        return None;
    }
    let oif = match r.oif {
        Some(LinkRef::Index(i)) => Some(i),
        _ => None,
    };
    Some(DefaultRoute {
        table: r.table,
        oif,
        gateway: r.gateway,
        metric: r.metric.unwrap_or(0),
        ipv6: r.dst.is_ipv6(),
    })
}

#[cfg(test)]
mod tests {
    use std::net::Ipv6Addr;

    use patchpanel_rtnl::AddressInfo;

    use super::*;

    fn link(ifindex: u32, name: &str) -> KernelLink {
        KernelLink {
            ifindex,
            name: name.into(),
            up: true,
            loopback: false,
        }
    }

    fn route(table: u32, oif: u32, gw: &str, metric: u32) -> DefaultRoute {
        let gateway: IpAddr = gw.parse().unwrap();
        DefaultRoute {
            table,
            oif: Some(oif),
            gateway: Some(gateway),
            metric,
            ipv6: gateway.is_ipv6(),
        }
    }

    fn view() -> KernelView {
        KernelView {
            links: vec![link(1, "lo"), link(2, "eth0"), link(3, "wlan0")],
            addrs: vec![
                KernelAddr {
                    ifindex: 2,
                    addr: "192.168.1.2".parse().unwrap(),
                    prefix_len: 24,
                },
                KernelAddr {
                    ifindex: 2,
                    addr: "fe80::1".parse().unwrap(),
                    prefix_len: 64,
                },
                KernelAddr {
                    ifindex: 2,
                    addr: "10.0.0.2".parse().unwrap(),
                    prefix_len: 8,
                },
                KernelAddr {
                    ifindex: 3,
                    addr: "172.16.0.5".parse().unwrap(),
                    prefix_len: 16,
                },
            ],
            default_routes: vec![],
        }
    }

    #[test]
    fn uplink_collects_its_own_addresses_sorted() {
        let u = view().uplink("eth0", Technology::Ethernet).unwrap();

        assert_eq!(u.ifindex, 2);
        assert_eq!(
            u.ipv4,
            vec![
                (Ipv4Addr::new(10, 0, 0, 2), 8),
                (Ipv4Addr::new(192, 168, 1, 2), 24)
            ]
        );
        assert_eq!(u.ipv6, vec![("fe80::1".parse::<Ipv6Addr>().unwrap(), 64)]);
        assert_eq!(u.gateway4, None);
    }

    #[test]
    fn uplink_of_a_missing_link_is_none() {
        assert_eq!(view().uplink("eth1", Technology::Ethernet), None);
    }

    #[test]
    fn uplink_with_an_unsafe_name_is_refused() {
        let mut v = view();
        v.links.push(link(9, "eth0 -j ACCEPT"));

        assert_eq!(v.uplink("eth0 -j ACCEPT", Technology::Ethernet), None);
    }

    #[test]
    fn gateway_prefers_the_main_table_then_the_lowest_metric() {
        let mut v = view();
        v.default_routes = vec![
            route(1002, 2, "192.168.1.254", 0),
            route(RT_TABLE_MAIN, 2, "192.168.1.1", 100),
            route(RT_TABLE_MAIN, 2, "192.168.1.3", 50),
            route(RT_TABLE_MAIN, 3, "172.16.0.1", 0),
        ];

        let u = v.uplink("eth0", Technology::Ethernet).unwrap();

        assert_eq!(u.gateway4, Some(Ipv4Addr::new(192, 168, 1, 3)));
    }

    #[test]
    fn gateway_comes_from_the_interface_table_when_main_has_none() {
        let mut v = view();
        v.default_routes = vec![
            route(1002, 2, "192.168.1.254", 0),
            route(1005, 2, "192.168.1.77", 0),
        ];

        let u = v.uplink("eth0", Technology::Ethernet).unwrap();

        assert_eq!(u.gateway4, Some(Ipv4Addr::new(192, 168, 1, 254)));
    }

    #[test]
    fn default_is_the_uplink_with_the_lowest_ipv4_metric() {
        let mut v = view();
        v.default_routes = vec![
            route(RT_TABLE_MAIN, 2, "192.168.1.1", 600),
            route(RT_TABLE_MAIN, 3, "172.16.0.1", 100),
            route(RT_TABLE_MAIN, 2, "fe80::1", 1),
        ];
        let uplinks = [
            v.uplink("eth0", Technology::Ethernet).unwrap(),
            v.uplink("wlan0", Technology::Wifi).unwrap(),
        ];

        assert_eq!(
            v.default_by_route(uplinks.iter()).unwrap().as_str(),
            "wlan0"
        );
    }

    #[test]
    fn default_falls_back_to_ipv6_without_an_ipv4_default_route() {
        let mut v = view();
        v.default_routes = vec![
            route(RT_TABLE_MAIN, 3, "fe80::1", 1024),
            route(1002, 2, "192.168.1.1", 0),
        ];
        let uplinks = [
            v.uplink("eth0", Technology::Ethernet).unwrap(),
            v.uplink("wlan0", Technology::Wifi).unwrap(),
        ];

        assert_eq!(
            v.default_by_route(uplinks.iter()).unwrap().as_str(),
            "wlan0"
        );
    }

    #[test]
    fn default_route_through_a_non_uplink_is_no_default() {
        let mut v = view();
        v.links.push(link(4, "foo0"));
        v.default_routes = vec![route(RT_TABLE_MAIN, 4, "10.1.1.1", 0)];
        let uplinks = [v.uplink("eth0", Technology::Ethernet).unwrap()];

        assert_eq!(v.default_by_route(uplinks.iter()), None);
    }

    fn rlink(index: u32, name: &str, alias: Option<&str>) -> Link {
        Link {
            index,
            name: name.into(),
            alias: alias.map(String::from),
            mac: None,
            up: true,
            running: true,
            multicast: true,
            allmulti: false,
            kind: Some("veth".into()),
            mtu: 1500,
            master: None,
            group: 0,
        }
    }

    fn addr(ifindex: u32, a: &str) -> AddressInfo {
        AddressInfo {
            ifindex,
            addr: a.parse().unwrap(),
            prefix_len: 30,
        }
    }

    fn on_link(index: u32, dst: &str, prefix_len: u8) -> Route {
        let mut r = Route::new(dst.parse().unwrap(), prefix_len);
        r.oif = Some(LinkRef::Index(index));
        r
    }

    const OURS: Option<&str> = Some(LINK_ALIAS);

    #[test]
    fn a_new_guest_veth_labelled_in_the_same_batch_needs_no_dump() {
        // What a ConnectNamespace setup sends: the veth (not labelled yet),
        // its label, its address and its connected route.
        let events = [
            RtnlEvent::NewLink(rlink(7, "arc_ns0", None)),
            RtnlEvent::NewLink(rlink(7, "arc_ns0", OURS)),
            RtnlEvent::NewAddress(addr(7, "100.115.92.129")),
            RtnlEvent::NewRoute(on_link(7, "100.115.92.128", 30)),
        ];
        let ours = only_ours(&events, &HashSet::new(), &|_| false).expect("only ours");
        assert_eq!(ours, HashSet::from([7]));
    }

    #[test]
    fn a_guest_veth_going_away_needs_no_dump_and_is_forgotten() {
        let events = [
            RtnlEvent::DelAddress(addr(7, "100.115.92.129")),
            RtnlEvent::DelRoute(on_link(7, "fe80::", 64)),
            RtnlEvent::DelLink(rlink(7, "arc_ns0", OURS)),
        ];
        let ours = only_ours(&events, &HashSet::from([7, 8]), &|_| false).expect("only ours");
        assert_eq!(ours, HashSet::from([8]));
    }

    #[test]
    fn anything_about_another_link_needs_a_dump() {
        let ours = HashSet::from([7]);
        for other in [
            RtnlEvent::NewLink(rlink(2, "eth0", None)),
            RtnlEvent::DelLink(rlink(2, "eth0", None)),
            RtnlEvent::NewAddress(addr(2, "192.168.1.2")),
            RtnlEvent::DelAddress(addr(2, "192.168.1.2")),
            RtnlEvent::NewRoute(on_link(2, "0.0.0.0", 0)),
            RtnlEvent::DelRoute(on_link(2, "192.168.1.0", 24)),
            RtnlEvent::Overrun,
        ] {
            let events = [RtnlEvent::NewAddress(addr(7, "100.115.92.129")), other];
            assert_eq!(
                only_ours(&events, &ours, &|_| false),
                None,
                "{:?}",
                events[1]
            );
        }
    }

    #[test]
    fn a_default_route_or_a_route_without_an_index_needs_a_dump_even_on_our_link() {
        let ours = HashSet::from([7]);
        let default = on_link(7, "0.0.0.0", 0);
        assert_eq!(
            only_ours(&[RtnlEvent::NewRoute(default)], &ours, &|_| false),
            None
        );
        let mut by_name = on_link(7, "10.0.0.0", 8);
        by_name.oif = Some(LinkRef::Name("arc_ns0".into()));
        assert_eq!(
            only_ours(&[RtnlEvent::NewRoute(by_name)], &ours, &|_| false),
            None
        );
        let mut no_oif = on_link(7, "10.0.0.0", 8);
        no_oif.oif = None;
        assert_eq!(
            only_ours(&[RtnlEvent::DelRoute(no_oif)], &ours, &|_| false),
            None
        );
    }

    #[test]
    fn a_link_of_ours_that_loses_its_label_needs_a_dump() {
        let ours = HashSet::from([7]);
        let events = [
            RtnlEvent::NewLink(rlink(7, "arc_ns0", OURS)),
            RtnlEvent::NewLink(rlink(7, "eth9", None)),
        ];
        assert_eq!(only_ours(&events, &ours, &|_| false), None);
        // An unlabelled first notification with no label after it is not ours.
        let events = [RtnlEvent::NewLink(rlink(9, "arc_ns1", None))];
        assert_eq!(only_ours(&events, &HashSet::new(), &|_| false), None);
    }

    #[test]
    fn a_link_labelled_after_a_dump_saw_it_needs_a_dump() {
        let events = [RtnlEvent::NewLink(rlink(9, "eth5", OURS))];
        assert_eq!(only_ours(&events, &HashSet::new(), &|i| i == 9), None);
        // Once ours, later notifications about it do not.
        let ours = HashSet::from([9]);
        assert_eq!(only_ours(&events, &ours, &|_| false), Some(ours.clone()));
    }
}
