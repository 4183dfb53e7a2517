//! `ConfigureNetwork`: shill's configuration of its networks (addresses,
//! routes in table ifindex+1000, MTU, the routing-policy rules), applied
//! through the writer from [`network_config`]'s plans, and kept in the
//! state so that a restarted daemon puts it back (shill does not re-send).
//!
//! Served when the uplinks come from shill. In netlink mode (a generic
//! host) patchpanel builds each uplink's table and rules itself and there
//! is no shill to send this; a call there is refused as `Failed`, with the
//! reason, rather than having two owners of the same table.

use std::collections::BTreeMap;

use log::{info, warn};
use patchpanel_ipc::datapath::ApplyMode;
use patchpanel_proto::ConfigureNetworkResponse;
use prost::Message;
use serde::{Deserialize, Serialize};

use patchpanel_ipc::datapath::{Plan, Step};
use patchpanel_ipc::IfName;
use patchpanel_proto::configure_network_request as area;

use crate::env::Env;
use crate::error::CallError;
use crate::network_config::{self, NetworkSpec, Networks, Technology};

/// The configured networks: what the writer holds (rules per network) and
/// the requests that made it, per ifindex, in order, each reduced to the
/// areas no later request replaced. Their areas are disjoint, so a network
/// keeps at most one request per area bit however often shill calls.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfiguredNetworks {
    pub applied: Networks,
    pub requests: BTreeMap<u32, Vec<NetworkSpec>>,
}

impl ConfiguredNetworks {
    pub fn is_empty(&self) -> bool {
        self.applied.by_ifindex.is_empty() && self.requests.is_empty()
    }

    /// The VPN that is the default logical network (its routing policy
    /// says so), with its routing table.
    pub fn default_vpn(&self) -> Option<(IfName, u32)> {
        self.requests
            .values()
            .flatten()
            .find(|s| {
                s.area & area::AREA_ROUTING_POLICY != 0
                    && s.technology == Technology::Vpn
                    && s.priority.primary_logical
            })
            .map(|s| (s.link.name.clone(), s.link.table()))
    }

    /// Records `spec` as applied: a clear forgets the network's earlier
    /// requests; every earlier request loses the areas `spec` sets again.
    fn record(&mut self, spec: &NetworkSpec, applied: Networks) {
        self.applied = applied;
        let kept = self.requests.entry(spec.link.ifindex).or_default();
        if spec.area & area::AREA_CLEAR != 0 {
            kept.clear();
        }
        let replaced = spec.area & !area::AREA_CLEAR;
        for earlier in kept.iter_mut() {
            earlier.area &= !replaced;
        }
        kept.retain(|s| s.area != 0);
        let mut mine = spec.clone();
        mine.area = replaced;
        if mine.area != 0 {
            kept.push(mine);
        }
        if kept.is_empty() {
            self.requests.remove(&spec.link.ifindex);
        }
    }
}

/// Serves one `ConfigureNetwork`.
pub fn configure(
    env: &mut Env<'_>,
    networks: &mut ConfiguredNetworks,
    served: bool,
    spec: NetworkSpec,
    op: u64,
) -> Result<Vec<u8>, CallError> {
    if !served {
        return Err(CallError::Failed(
            "ConfigureNetwork: patchpanel builds the uplinks' routing itself here (uplinks = netlink); \
             it takes network configurations only with uplinks = shill"
                .into(),
        ));
    }
    let label = format!(
        "ConfigureNetwork {} #{} op {op}",
        spec.link.name, spec.link.ifindex
    );
    let (mut plans, after) = network_config::plans(&spec, &networks.applied, &label);
    let vpn_before = networks.default_vpn();
    let vpn_after = {
        let mut next = networks.clone();
        next.record(&spec, after.clone());
        next.default_vpn()
    };
    if vpn_before != vpn_after {
        with_vpn_routing(&mut plans, vpn_before.as_ref(), vpn_after.as_ref(), &label)?;
    }
    let mut cleared = None;
    for plan in plans {
        let mode = plan.mode;
        match env.apply(plan, &[]) {
            Ok(report) if report.failures.is_empty() => {}
            Ok(report) => warn!("{label}: {}", report.failures.join("; ")),
            Err(e) if mode == ApplyMode::BestEffort => warn!("{label}: clear: {e}"),
            Err(e) => {
                // The writer rolled the atomic plan back; a clear before it
                // (best effort) stands.
                if let Some(c) = cleared.take() {
                    networks.record(&clear_only(&spec), c);
                }
                return Err(e);
            }
        }
        if mode == ApplyMode::BestEffort {
            cleared = Some(network_config::clear_plan(&spec.link, &networks.applied).networks);
        }
    }
    networks.record(&spec, after);
    if vpn_before != vpn_after {
        match &vpn_after {
            Some((vpn, _)) => info!(
                "{label}: {vpn} is the default network: guests and sockets that follow the user's routing go through it"
            ),
            None => info!("{label}: no VPN is the default network any more"),
        }
    }
    info!(
        "{label}: applied (area {:#x}, {:?}{})",
        spec.area,
        spec.technology,
        if spec.priority.primary_physical {
            ", primary physical"
        } else {
            ""
        }
    );
    Ok(ConfigureNetworkResponse { success: true }.encode_to_vec())
}

/// Puts the VPN routing change into the plans, in the order that never
/// lets tagged traffic out of the wrong door: the old VPN's routing goes
/// first (before any of its routes and rules), the new one's last (after
/// its routes and rules), each in the same plan as the routing change.
fn with_vpn_routing(
    plans: &mut Vec<Plan>,
    before: Option<&(IfName, u32)>,
    after: Option<&(IfName, u32)>,
    label: &str,
) -> Result<(), CallError> {
    if plans.is_empty() {
        plans.push(Plan {
            label: label.to_string(),
            mode: ApplyMode::Atomic,
            steps: Vec::new(),
        });
    }
    if let Some((vpn, table)) = before {
        let off = patchpanel_firewall::vpn::routing(vpn, *table).inverse()?;
        plans[0].steps.insert(0, Step::Firewall(off));
    }
    if let Some((vpn, table)) = after {
        let last = plans.len() - 1;
        plans[last]
            .steps
            .push(Step::Firewall(patchpanel_firewall::vpn::routing(
                vpn, *table,
            )));
    }
    Ok(())
}

fn clear_only(spec: &NetworkSpec) -> NetworkSpec {
    let mut c = spec.clone();
    c.area = area::AREA_CLEAR;
    c
}

/// After a restart: the start removed every route and rule patchpanel
/// owned; the kept requests put the configured networks back, in order.
/// What fails is logged and dropped (the link may be gone).
pub fn readopt(env: &mut Env<'_>, networks: &mut ConfiguredNetworks) {
    let kept = std::mem::take(&mut networks.requests);
    networks.applied = Networks::default();
    for (ifindex, specs) in kept {
        for spec in specs {
            let label = format!("re-adopt network {} #{ifindex}", spec.link.name);
            let (plans, after) = network_config::plans(&spec, &networks.applied, &label);
            let mut ok = true;
            for plan in plans {
                if let Err(e) = env.apply(plan, &[]) {
                    warn!("{label}: {e}; dropped (shill configures it again when it reconnects)");
                    ok = false;
                    break;
                }
            }
            if ok {
                networks.record(&spec, after);
            }
        }
    }
    if let Some((vpn, table)) = networks.default_vpn() {
        let plan = Plan {
            label: format!("re-adopt VPN routing through {vpn}"),
            mode: ApplyMode::Atomic,
            steps: vec![Step::Firewall(patchpanel_firewall::vpn::routing(
                &vpn, table,
            ))],
        };
        if let Err(e) = env.apply(plan, &[]) {
            log::error!("VPN routing through {vpn} could not be re-applied: {e}");
        }
    }
    let count = networks.requests.len();
    if count > 0 {
        info!("re-adopted {count} network(s) configured by shill");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(area: u32) -> NetworkSpec {
        let req = patchpanel_proto::ConfigureNetworkRequest {
            ifindex: 2,
            ifname: "eth0".into(),
            area,
            network_config: Some(patchpanel_proto::NetworkConfig {
                ipv4_address: Some(patchpanel_proto::IPAddrCIDR {
                    addr: vec![192, 0, 2, 2],
                    prefix_len: 24,
                }),
                ipv4_gateway: Some(vec![192, 0, 2, 1]),
                ipv4_default_route: true,
                mtu: Some(1400),
                ..Default::default()
            }),
            technology: 2,
            priority: Some(patchpanel_proto::NetworkPriority {
                is_primary_physical: true,
                is_primary_logical: true,
                ..Default::default()
            }),
            session_id: 1,
        };
        network_config::parse(&req).expect("valid")
    }

    #[test]
    fn later_requests_take_over_the_areas_they_set_and_a_clear_forgets() {
        let mut n = ConfiguredNetworks::default();
        n.record(
            &spec(area::AREA_IPV4_ADDRESS | area::AREA_MTU),
            Networks::default(),
        );
        n.record(
            &spec(area::AREA_MTU | area::AREA_ROUTING_POLICY),
            Networks::default(),
        );
        let kept: Vec<u32> = n.requests[&2].iter().map(|s| s.area).collect();
        assert_eq!(
            kept,
            [
                area::AREA_IPV4_ADDRESS,
                area::AREA_MTU | area::AREA_ROUTING_POLICY
            ]
        );
        n.record(
            &spec(area::AREA_CLEAR | area::AREA_IPV4_ROUTE),
            Networks::default(),
        );
        let kept: Vec<u32> = n.requests[&2].iter().map(|s| s.area).collect();
        assert_eq!(kept, [area::AREA_IPV4_ROUTE]);
        n.record(&spec(area::AREA_CLEAR), Networks::default());
        assert!(n.requests.is_empty(), "{n:?}");
    }

    #[test]
    fn kept_requests_have_disjoint_areas_whatever_shill_sends() {
        let bits = [
            area::AREA_IPV4_ADDRESS,
            area::AREA_IPV4_ROUTE,
            area::AREA_MTU,
            area::AREA_ROUTING_POLICY,
            area::AREA_IPV4_ADDRESS | area::AREA_MTU,
            area::AREA_CLEAR | area::AREA_IPV4_ROUTE,
        ];
        let mut n = ConfiguredNetworks::default();
        for i in 0..200usize {
            n.record(
                &spec(bits[(i * 7 + i / 3) % bits.len()]),
                Networks::default(),
            );
            let kept = n.requests.get(&2).cloned().unwrap_or_default();
            let mut seen = 0u32;
            for s in &kept {
                assert_eq!(seen & s.area, 0, "overlapping areas: {kept:?}");
                assert_ne!(s.area, 0);
                seen |= s.area;
            }
            assert!(kept.len() <= 4, "{kept:?}");
        }
    }
}
