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

/// Which guest a proxied downlink belongs to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum ProxyKey {
    Namespace(u32),
    /// ARC's bridge for this uplink.
    Arc(String),
    Vm(String, u64),
}

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
    pairs: BTreeMap<ProxyKey, ProxyPair>,
    /// Guest addresses with a route: (downlink ifindex, address).
    routed: BTreeSet<(u32, Ipv6Addr)>,
}

/// Guest addresses worth a route: global unicast or ULA.
pub fn routable(addr: &Ipv6Addr) -> bool {
    let first = addr.segments()[0];
    (first & 0xe000) == 0x2000 || (first & 0xfe00) == 0xfc00
}

impl Manager {
    /// Every downlink that should be proxied now, with its uplink: connected
    /// namespaces without static IPv6 (their pinned uplink, else the default
    /// network), ARC's bridges (their own uplink), VM TAPs (the default
    /// network).
    fn wanted_ndproxy(&self) -> BTreeMap<ProxyKey, (IfName, u32, IfName)> {
        let default = self
            .uplinks
            .default_uplink()
            .map(|u| (u.name.clone(), u.ifindex));
        let mut wanted = BTreeMap::new();
        for ns in self.state.namespaces.values().filter(|n| n.ipv6.is_none()) {
            let uplink = match &ns.mode {
                RoutingMode::Pinned { uplink, .. } => self
                    .uplinks
                    .get(uplink.as_str())
                    .map(|u| (u.name.clone(), u.ifindex)),
                RoutingMode::System | RoutingMode::User => default.clone(),
            };
            if let Some((name, ifindex)) = uplink {
                wanted.insert(
                    ProxyKey::Namespace(ns.id),
                    (name, ifindex, ns.host_ifname.clone()),
                );
            }
        }
        if let Some(arc) = &self.state.arc {
            for device in arc.devices.values() {
                let Some(up) = &device.uplink else { continue };
                if let Some(u) = self.uplinks.get(up.name.as_str()) {
                    wanted.insert(
                        ProxyKey::Arc(up.name.to_string()),
                        (u.name.clone(), u.ifindex, device.bridge.clone()),
                    );
                }
            }
        }
        if let Some((name, ifindex)) = default {
            for vm in &self.state.vms {
                wanted.insert(
                    ProxyKey::Vm(vm.kind.name().to_string(), vm.id),
                    (name.clone(), ifindex, vm.tap.clone()),
                );
            }
        }
        wanted
    }

    /// Brings the helper's pairs in line with the guests and uplinks:
    /// stops pairs no longer wanted (or re-pointed), starts new ones.
    /// Called after every D-Bus call, lifeline teardown and uplink change.
    pub(crate) fn sync_ndproxy(&mut self) {
        if !self.datapath_ready {
            return;
        }
        let wanted = self.wanted_ndproxy();
        let stale: Vec<ProxyKey> = self
            .ndproxy
            .pairs
            .iter()
            .filter(|(key, pair)| {
                wanted.get(*key).is_none_or(|(_, ifindex, downlink)| {
                    *ifindex != pair.uplink_ifindex || *downlink != pair.downlink
                })
            })
            .map(|(key, _)| key.clone())
            .collect();
        for key in stale {
            self.stop_ndproxy(&key);
        }
        let new: Vec<_> = wanted
            .into_iter()
            .filter(|(key, _)| !self.ndproxy.pairs.contains_key(key))
            .collect();
        if new.is_empty() {
            return;
        }
        let rtnl = match patchpanel_rtnl::Rtnl::new() {
            Ok(r) => r,
            Err(e) => {
                warn!("IPv6 proxying: no rtnetlink socket: {e}");
                return;
            }
        };
        for (key, (uplink, uplink_ifindex, downlink)) in new {
            let downlink_ifindex = match rtnl.ifindex(downlink.as_str()) {
                Ok(i) => i,
                Err(e) => {
                    debug!("IPv6 proxying for {key:?}: {downlink}: {e}");
                    continue;
                }
            };
            let pair = ProxyPair {
                uplink,
                uplink_ifindex,
                downlink,
                downlink_ifindex,
            };
            let request = Request::NdProxyStart {
                uplink_ifindex,
                downlink_ifindex,
            };
            // Recorded first: a helper that is restarting gets it on replay.
            self.record_replay(Process::NdProxy, &pair.replay_key(), request.clone());
            match self.call_helper(Process::NdProxy, request, &[]) {
                Ok(_) => info!(
                    "IPv6 neighbour proxying {} <-> {} ({key:?})",
                    pair.uplink, pair.downlink
                ),
                Err(e) => warn!(
                    "IPv6 proxying {} <-> {} not started now ({e}); it will be on the helper's next start",
                    pair.uplink, pair.downlink
                ),
            }
            self.ndproxy.pairs.insert(key, pair);
        }
    }

    fn stop_ndproxy(&mut self, key: &ProxyKey) {
        let Some(pair) = self.ndproxy.pairs.remove(key) else {
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
