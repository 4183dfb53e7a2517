//! `SetVpnLockdown`: while on, traffic that asked for the VPN (the
//! route-on-VPN mark: sockets shill or Chrome tagged `ROUTE_ON_VPN`) is
//! rejected wherever it would leave other than through the VPN
//! (`patchpanel_firewall::vpn`). One firewall transaction each way; kept in
//! the state, re-applied by a restarted daemon (shill does not send it
//! again) and by a rebuild of the firewall.

use log::{info, warn};
use patchpanel_firewall::guest::{downstream, downstream_teardown, Downstream, Inbound, Mode};
use patchpanel_firewall::{Batch, TrafficSource};
use patchpanel_ipc::datapath::{ApplyMode, Plan, Step};
use patchpanel_ipc::{IfName, Request};
use patchpanel_proto::SetVpnLockdownResponse;
use prost::Message;

use crate::env::{Datapath, Env};
use crate::error::CallError;
use crate::guests::ArcGuest;
use crate::network_service::ConfiguredNetworks;

/// The firewall change that turns lockdown on (`true`) or off.
fn plan(enable: bool, label: String) -> Result<Plan, CallError> {
    let on = patchpanel_firewall::vpn::lockdown();
    let batch = if enable {
        on
    } else {
        on.inverse().map_err(CallError::from)?
    };
    Ok(Plan {
        label,
        mode: ApplyMode::Atomic,
        steps: vec![Step::Firewall(batch)],
    })
}

/// Serves one `SetVpnLockdown`; asking for the state it is in changes
/// nothing.
pub fn set_lockdown(
    env: &mut Env<'_>,
    lockdown: &mut bool,
    enable: bool,
    client: &str,
    op: u64,
) -> Result<Vec<u8>, CallError> {
    if *lockdown != enable {
        let word = if enable { "on" } else { "off" };
        env.apply(plan(enable, format!("VPN lockdown {word} op {op}"))?, &[])?;
        *lockdown = enable;
        info!(
            "VPN lockdown {word} ({client}, op {op}): traffic marked for the VPN {}",
            if enable {
                "is rejected unless it leaves through the VPN"
            } else {
                "follows routing again"
            }
        );
    }
    Ok(SetVpnLockdownResponse {}.encode_to_vec())
}

/// After a restart: the previous run's lockdown, on again.
pub fn readopt(env: &mut Env<'_>, lockdown: &mut bool, previous: bool) {
    if !previous {
        return;
    }
    match plan(true, "re-adopt VPN lockdown".into()).and_then(|p| env.apply(p, &[])) {
        Ok(_) => {
            *lockdown = true;
            info!("VPN lockdown re-adopted: on");
        }
        Err(e) => log::error!(
            "VPN lockdown could not be turned on again: {e}; shill's next SetVpnLockdown will"
        ),
    }
}

/// ARC's management bridge (arcbr0) routed to the default VPN while ARC
/// runs (the original's `StartRoutingDevice(vpn, arcbr0, ARC)`): what ARC
/// sends through arc0, its host-VPN passthrough, leaves through the VPN,
/// source ARC, masqueraded. ARC's per-network devices stay pinned to their
/// physical networks (Android routes its own VPN apps), and ARC ignores
/// lockdown (its traffic carries no route-on-VPN intent), as upstream.
pub fn arc_vpn_batch(bridge: &IfName, vpn_table: u32) -> Batch {
    downstream(&arc_vpn_downstream(bridge, vpn_table))
}

fn arc_vpn_downstream(bridge: &IfName, vpn_table: u32) -> Downstream {
    Downstream {
        ifname: bridge.clone(),
        source: TrafficSource::Arc,
        mode: Mode::Pinned { table: vpn_table },
        inbound: Inbound::ReturnOnly,
        snat_ipv6: false,
        peer: None,
    }
}

/// What [`arc_vpn_batch`] is applied for, if anything. Reconciled in the
/// dispatcher's tail from ARC and the configured networks.
#[derive(Debug, Default)]
pub struct ArcVpn {
    applied: Option<(IfName, u32)>,
}

impl ArcVpn {
    pub fn reconcile(
        &mut self,
        arc: Option<&ArcGuest>,
        networks: &ConfiguredNetworks,
        datapath: &mut dyn Datapath,
    ) {
        let wanted = match (arc, networks.default_vpn()) {
            (Some(arc), Some((_, table))) => Some((arc.arc0.bridge.clone(), table)),
            _ => None,
        };
        if wanted == self.applied {
            return;
        }
        let mut batch = Batch::new();
        if let Some((bridge, table)) = &self.applied {
            match downstream_teardown(&arc_vpn_downstream(bridge, *table)) {
                Ok(off) => batch.extend(off),
                Err(e) => warn!("ARC to the VPN: cannot undo {bridge}'s routing: {e}"),
            }
        }
        if let Some((bridge, table)) = &wanted {
            batch.extend(arc_vpn_batch(bridge, *table));
        }
        let plan = Plan {
            label: match &wanted {
                Some((bridge, table)) => format!("route {bridge} to the VPN (table {table})"),
                None => "ARC no longer routed to a VPN".into(),
            },
            mode: ApplyMode::Atomic,
            steps: vec![Step::Firewall(batch)],
        };
        match datapath.call(Request::Apply(plan), &[]) {
            Ok(_) => {
                match &wanted {
                    Some((bridge, table)) => {
                        info!("ARC's {bridge} is routed to the default VPN (table {table})")
                    }
                    None => info!("ARC's management bridge is no longer routed to a VPN"),
                }
                self.applied = wanted;
            }
            Err(e) => warn!("ARC to the VPN: {e}; tried again after the next event"),
        }
    }
}
