//! IPv6 for guests through the ndproxy helper (RFC 4389; DESIGN §8): the
//! manager tells the helper which downlinks to proxy to which uplink, and
//! installs a /128 route to the downlink (through the writer) for every
//! guest address the helper reports.
//!
//! Pairs are part of the helper's replay log, so a respawned ndproxy
//! resumes without any new D-Bus call. Routes die with their downlink.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv6Addr};

use log::{debug, info, warn};
use patchpanel_ipc::datapath::{ApplyMode, Netns, Plan, RouteSpec, Step};
use patchpanel_ipc::{IfName, Request};
use patchpanel_sandbox::Process;

use crate::manager::Manager;
use crate::routing::{RoutingMode, MAIN_TABLE};
use crate::state::ConnectedNamespace;

/// One proxied downlink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyPair {
    pub uplink: IfName,
    pub uplink_ifindex: u32,
    pub downlink: IfName,
    pub downlink_ifindex: u32,
}

impl ProxyPair {
    fn replay_key(&self) -> String {
        format!("ndproxy {}->{}", self.uplink_ifindex, self.downlink_ifindex)
    }
}

/// What the manager knows of the helper's work.
#[derive(Debug, Default)]
pub struct NdProxyState {
    /// Namespace id -> its pair.
    pairs: BTreeMap<u32, ProxyPair>,
    /// Guest addresses with a route: (downlink ifindex, address).
    routed: BTreeSet<(u32, Ipv6Addr)>,
}

/// Guest addresses worth a route: global unicast or ULA.
pub fn routable(addr: &Ipv6Addr) -> bool {
    let first = addr.segments()[0];
    (first & 0xe000) == 0x2000 || (first & 0xfe00) == 0xfc00
}

impl Manager {
    /// The uplink a namespace's IPv6 follows: its pinned uplink, else the
    /// default network.
    fn ipv6_uplink(&self, ns: &ConnectedNamespace) -> Option<(IfName, u32)> {
        match &ns.mode {
            RoutingMode::Pinned { uplink, .. } => self
                .uplinks
                .get(uplink.as_str())
                .map(|u| (u.name.clone(), u.ifindex)),
            RoutingMode::System | RoutingMode::User => self
                .uplinks
                .default_uplink()
                .map(|u| (u.name.clone(), u.ifindex)),
        }
    }

    /// Starts proxying for a namespace without static IPv6. Failures are
    /// logged: IPv4 works without it.
    pub(crate) fn start_ndproxy(&mut self, ns: &ConnectedNamespace) {
        if ns.ipv6.is_some() {
            return;
        }
        let Some((uplink, uplink_ifindex)) = self.ipv6_uplink(ns) else {
            debug!("{}: no uplink for IPv6 yet", ns.netns);
            return;
        };
        let downlink_ifindex =
            match patchpanel_rtnl::Rtnl::new().and_then(|r| r.ifindex(ns.host_ifname.as_str())) {
                Ok(i) => i,
                Err(e) => {
                    warn!("{}: cannot find {}: {e}", ns.netns, ns.host_ifname);
                    return;
                }
            };
        let pair = ProxyPair {
            uplink,
            uplink_ifindex,
            downlink: ns.host_ifname.clone(),
            downlink_ifindex,
        };
        let request = Request::NdProxyStart {
            uplink_ifindex,
            downlink_ifindex,
        };
        // Recorded first: a helper that is restarting gets it on replay.
        self.record_replay(Process::NdProxy, &pair.replay_key(), request.clone());
        if let Err(e) = self.call_helper(Process::NdProxy, request, &[]) {
            warn!(
                "{}: IPv6 proxying {} <-> {} not started now ({e}); it will be on the helper's next start",
                ns.netns, pair.uplink, pair.downlink
            );
        } else {
            info!(
                "{}: IPv6 neighbour proxying {} <-> {}",
                ns.netns, pair.uplink, pair.downlink
            );
        }
        self.ndproxy.pairs.insert(ns.id, pair);
    }

    /// Stops proxying for a namespace (it is going away).
    pub(crate) fn stop_ndproxy(&mut self, id: u32) {
        let Some(pair) = self.ndproxy.pairs.remove(&id) else {
            return;
        };
        self.forget_replay(Process::NdProxy, &pair.replay_key());
        self.ndproxy
            .routed
            .retain(|(ifindex, _)| *ifindex != pair.downlink_ifindex);
        let request = Request::NdProxyStop {
            uplink_ifindex: pair.uplink_ifindex,
            downlink_ifindex: pair.downlink_ifindex,
        };
        if let Err(e) = self.call_helper(Process::NdProxy, request, &[]) {
            debug!("ndproxy stop {} <-> {}: {e}", pair.uplink, pair.downlink);
        }
    }

    /// Re-points namespaces whose IPv6 uplink changed (the default network
    /// moved, or an uplink came back with a new ifindex).
    pub(crate) fn follow_ndproxy_uplinks(&mut self) {
        let stale: Vec<u32> = self
            .ndproxy
            .pairs
            .iter()
            .filter(|(id, pair)| {
                let want = self
                    .state
                    .namespaces
                    .get(id)
                    .and_then(|ns| self.ipv6_uplink(ns))
                    .map(|(_, ifindex)| ifindex);
                want != Some(pair.uplink_ifindex)
            })
            .map(|(id, _)| *id)
            .collect();
        let unproxied: Vec<u32> = self
            .state
            .namespaces
            .values()
            .filter(|ns| ns.ipv6.is_none() && !self.ndproxy.pairs.contains_key(&ns.id))
            .map(|ns| ns.id)
            .collect();
        for id in stale.iter().chain(unproxied.iter()) {
            self.stop_ndproxy(*id);
            if let Some(ns) = self.state.namespaces.get(id).cloned() {
                self.start_ndproxy(&ns);
            }
        }
    }

    /// The helper saw a guest use `addr` on downlink `ifindex`: route it.
    pub(crate) fn on_neighbor_detected(&mut self, ifindex: u32, addr: [u8; 16]) {
        let addr = Ipv6Addr::from(addr);
        if !routable(&addr) || self.ndproxy.routed.contains(&(ifindex, addr)) {
            return;
        }
        let Some(pair) = self
            .ndproxy
            .pairs
            .values()
            .find(|p| p.downlink_ifindex == ifindex)
            .cloned()
        else {
            debug!("neighbour {addr} on unknown downlink {ifindex}; ignored");
            return;
        };
        let plan = Plan {
            label: format!("route guest {addr} to {}", pair.downlink),
            mode: ApplyMode::Atomic,
            steps: vec![Step::AddRoute {
                netns: Netns::Host,
                route: RouteSpec {
                    dst: IpAddr::V6(addr),
                    prefix_len: 128,
                    gateway: None,
                    dev: Some(pair.downlink.clone()),
                    table: MAIN_TABLE,
                    metric: None,
                },
            }],
        };
        match self.apply(plan, &[]) {
            Ok(_) => {
                info!("guest address {addr} routed to {}", pair.downlink);
                self.ndproxy.routed.insert((ifindex, addr));
            }
            Err(e) => warn!(
                "cannot route guest address {addr} to {}: {e}",
                pair.downlink
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_global_and_ula_addresses_get_routes() {
        assert!(routable(&"2001:db8:1::5".parse().unwrap()));
        assert!(routable(&"fd00::1".parse().unwrap()));
        assert!(!routable(&"fe80::1".parse().unwrap()));
        assert!(!routable(&"ff02::1".parse().unwrap()));
        assert!(!routable(&"::1".parse().unwrap()));
    }
}
