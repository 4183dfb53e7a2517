//! The kernel's side of an uplink: ifindex, state, addresses and default
//! routes, as plain data ([`KernelView`]) so that turning it into
//! [`Uplink`]s and picking the default network is tested without a kernel.
//! [`KernelWatcher`] fills it from rtnetlink.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use std::os::fd::{AsRawFd, RawFd};

use patchpanel_rtnl::{
    Family, LinkRef, MonitorGroups, Route, RouteType, Rtnl, RtnlError, RtnlEvent, RtnlMonitor,
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
/// Every wake-up with at least one notification re-dumps links, addresses
/// and routes instead of applying the notifications one by one: the kernel
/// removes IPv4 routes of a link that goes down without telling anyone, an
/// [`RtnlEvent::Overrun`] needs a re-dump anyway, and a host has a handful
/// of links. The monitor is opened before the first dump so no change falls
/// between the two.
#[derive(Debug)]
pub(crate) struct KernelWatcher {
    rtnl: Rtnl,
    monitor: RtnlMonitor,
    view: KernelView,
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
        let view = dump(&rtnl)?;
        Ok(KernelWatcher {
            rtnl,
            monitor,
            view,
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
        self.view = dump(&self.rtnl)?;
        Ok(true)
    }

    /// The state as of the last dump.
    pub fn view(&self) -> &KernelView {
        &self.view
    }
}

/// Links, addresses and the default routes of every table.
fn dump(rtnl: &Rtnl) -> Result<KernelView, UplinkError> {
    let links = rtnl
        .links()
        .map_err(netlink("dump links"))?
        .into_iter()
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
    Ok(KernelView {
        links,
        addrs,
        default_routes,
    })
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
}
