//! Uplinks without shill: every link whose name starts with a configured
//! prefix, whatever its driver (a veth called `eth0` in a test namespace is
//! an uplink); the default network is the uplink holding the best default
//! route of the main table (IPv4 first, then IPv6).

use std::os::fd::RawFd;

use crate::kernel::{KernelView, KernelWatcher};
use crate::{diff, Snapshot, Technology, Uplink, UplinkError, UplinkEvent, UplinkSource};

/// The netlink source.
#[derive(Debug)]
pub struct NetlinkUplinks {
    kernel: KernelWatcher,
    prefixes: Vec<String>,
    reported: Snapshot,
}

/// A prefix must be a non-empty piece of a valid interface name.
fn check_prefix(prefix: &str) -> Result<(), UplinkError> {
    if crate::IfName::new(prefix).is_err() {
        return Err(UplinkError::BadPrefix(prefix.to_string()));
    }
    Ok(())
}

/// The uplinks of `view` by name prefix, and the default by route.
pub(crate) fn snapshot(view: &KernelView, prefixes: &[String]) -> Snapshot {
    let uplinks: Vec<Uplink> = view
        .links
        .iter()
        .filter(|l| !l.loopback && prefixes.iter().any(|p| l.name.starts_with(p.as_str())))
        .filter_map(|l| view.uplink(&l.name, Technology::from_ifname(&l.name)))
        .collect();
    let default = view.default_by_route(uplinks.iter());
    Snapshot::new(uplinks, default)
}

impl NetlinkUplinks {
    /// Opens the rtnetlink socket and monitor in the caller's network
    /// namespace and reads the current state; the first
    /// [`UplinkSource::process`] reports it.
    pub fn open(prefixes: &[String]) -> Result<NetlinkUplinks, UplinkError> {
        for p in prefixes {
            check_prefix(p)?;
        }
        Ok(NetlinkUplinks {
            kernel: KernelWatcher::open()?,
            prefixes: prefixes.to_vec(),
            reported: Snapshot::default(),
        })
    }
}

impl UplinkSource for NetlinkUplinks {
    fn fds(&self) -> Vec<RawFd> {
        vec![self.kernel.fd()]
    }

    fn process(&mut self) -> Result<Vec<UplinkEvent>, UplinkError> {
        self.kernel.process()?;
        let next = snapshot(self.kernel.view(), &self.prefixes);
        let events = diff(&self.reported, &next);
        self.reported = next;
        Ok(events)
    }

    fn uplinks(&self) -> Vec<Uplink> {
        self.reported.uplinks.values().cloned().collect()
    }

    fn default_uplink(&self) -> Option<Uplink> {
        self.reported.default_uplink().cloned()
    }

    fn name(&self) -> &'static str {
        "netlink"
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;
    use crate::kernel::{DefaultRoute, KernelLink, RT_TABLE_MAIN};
    use crate::DEFAULT_PREFIXES;

    fn prefixes() -> Vec<String> {
        DEFAULT_PREFIXES.iter().map(|p| p.to_string()).collect()
    }

    fn link(ifindex: u32, name: &str) -> KernelLink {
        KernelLink {
            ifindex,
            name: name.into(),
            up: true,
            loopback: name == "lo",
        }
    }

    fn default_via(oif: u32, gw: &str, metric: u32) -> DefaultRoute {
        let gateway: IpAddr = gw.parse().unwrap();
        DefaultRoute {
            table: RT_TABLE_MAIN,
            oif: Some(oif),
            gateway: Some(gateway),
            metric,
            ipv6: gateway.is_ipv6(),
        }
    }

    fn names(s: &Snapshot) -> Vec<&str> {
        s.uplinks.keys().map(|n| n.as_str()).collect()
    }

    #[test]
    fn links_matching_a_prefix_are_uplinks_and_others_are_not() {
        let view = KernelView {
            links: vec![
                link(1, "lo"),
                link(2, "eth0"),
                link(3, "wlan0"),
                link(4, "foo0"),
                link(5, "enp3s0"),
                link(6, "veth_arc0"),
                link(7, "arcbr0"),
            ],
            ..KernelView::default()
        };

        let snap = snapshot(&view, &prefixes());

        assert_eq!(names(&snap), vec!["enp3s0", "eth0", "wlan0"]);
        assert_eq!(
            snap.uplinks.values().next().unwrap().technology,
            Technology::Ethernet
        );
    }

    #[test]
    fn default_route_through_an_uplink_makes_it_the_default() {
        let view = KernelView {
            links: vec![link(2, "eth0"), link(3, "wlan0"), link(4, "foo0")],
            default_routes: vec![
                default_via(4, "10.9.9.9", 0),
                default_via(3, "172.16.0.1", 600),
            ],
            ..KernelView::default()
        };

        let snap = snapshot(&view, &prefixes());

        assert_eq!(snap.default.as_ref().map(|n| n.as_str()), Some("wlan0"));
    }

    #[test]
    fn custom_prefixes_replace_the_default_ones() {
        let view = KernelView {
            links: vec![link(2, "eth0"), link(4, "foo0")],
            ..KernelView::default()
        };

        let snap = snapshot(&view, &["foo".to_string()]);

        assert_eq!(names(&snap), vec!["foo0"]);
    }

    #[test]
    fn a_prefix_that_is_no_interface_name_is_refused() {
        for bad in ["", "eth 0", "-e"] {
            assert!(
                matches!(check_prefix(bad), Err(UplinkError::BadPrefix(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn names_give_technologies() {
        assert_eq!(Technology::from_ifname("eth0"), Technology::Ethernet);
        assert_eq!(Technology::from_ifname("wlan0"), Technology::Wifi);
        assert_eq!(Technology::from_ifname("mlan0"), Technology::Wifi);
        assert_eq!(Technology::from_ifname("wwan0"), Technology::Cellular);
        assert_eq!(Technology::from_ifname("wlp2s0"), Technology::Wifi);
        assert_eq!(Technology::from_ifname("usb0"), Technology::Ethernet);
        assert_eq!(Technology::from_ifname("foo0"), Technology::Unknown);
    }
}
