//! `SetVpnLockdown`: while on, traffic that asked for the VPN (the
//! route-on-VPN mark: sockets shill or Chrome tagged `ROUTE_ON_VPN`) is
//! rejected wherever it would leave other than through the VPN
//! (`patchpanel_firewall::vpn`). One firewall transaction each way; kept in
//! the state, re-applied by a restarted daemon (shill does not send it
//! again) and by a rebuild of the firewall.

use log::info;
use patchpanel_ipc::datapath::{ApplyMode, Plan, Step};
use patchpanel_proto::SetVpnLockdownResponse;
use prost::Message;

use crate::env::Env;
use crate::error::CallError;

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
