//! Following the host firewall as the daemon runs it: once another
//! program's changes went quiet ([`crate::host_firewall::Follower`]), the
//! writer checks patchpanel's firewall and brings the narrow accepts in
//! line; a firewall that was touched is rebuilt from the state, in IPC
//! pages the writer applies together. One log line says what was found
//! and done.

use std::time::Instant;

use log::{info, warn};
use patchpanel_firewall::counters::CounterSample;
use patchpanel_ipc::{Reply, Request};

use crate::env::Env;
use crate::error::CallError;
use crate::host_firewall::{self, Follower, Pending, FLAP_WINDOW};
use crate::port_rules::PortPolicy;
use crate::state::State;

/// Rebuild pages stay well under the IPC limit with their envelope.
const REBUILD_PAGE_BYTES: usize = 48 * 1024;

/// Checks, and rebuilds if needed, after the changes in `pending`. The
/// counts the changes took away join `state.counter_base`.
pub fn follow(
    env: &mut Env<'_>,
    state: &mut State,
    follower: &mut Follower,
    policy: &PortPolicy,
    pending: Pending,
) {
    let by = pending.by.join("; ");
    let (coexistence, missing) = match env.call(Request::CheckFirewall) {
        Ok(Reply::FirewallChecked {
            coexistence,
            missing,
        }) => (coexistence, missing),
        Ok(other) => {
            warn!("host firewall changed by {by}; the check answered {other:?}");
            return;
        }
        Err(e) => {
            warn!("host firewall changed by {by}, and patchpanel cannot check its own: {e}");
            return;
        }
    };
    let mut carried = pending.lost_counters;
    let outcome = if pending.ours || !missing.is_empty() {
        let started = Instant::now();
        let what = format!(
            "{} connected namespace(s), {} VM(s), ARC {}, {} port rule(s), {} uplink(s)",
            state.namespaces.len(),
            state.vms.len(),
            if state.arc.is_some() {
                "running"
            } else {
                "off"
            },
            state.port_rules.len(),
            env.uplinks.all().count()
        );
        let lost = if missing.is_empty() {
            "changed".to_string()
        } else {
            format!(
                "missing {}{}",
                missing
                    .iter()
                    .take(4)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", "),
                if missing.len() > 4 {
                    format!(" and {} more", missing.len() - 4)
                } else {
                    String::new()
                }
            )
        };
        let outcome = match rebuild(env, state, policy) {
            Ok(counts) => {
                carried.extend(counts);
                format!(
                    "patchpanel's firewall was {lost}: rebuilt from the state ({what}) in {:.1?}",
                    started.elapsed()
                )
            }
            Err(e) => format!(
                "patchpanel's firewall was {lost}, and the rebuild failed: {e}; guests may have lost their network until the next change or restart"
            ),
        };
        if let Some(wait) = follower.rebuilt(Instant::now()) {
            warn!(
                "host firewall: another program keeps undoing patchpanel's firewall ({} rebuilds within {FLAP_WINDOW:?}; last by {by}); the next rebuild waits {wait:?}",
                follower.recent_rebuilds(),
            );
        }
        outcome
    } else {
        "patchpanel's firewall is intact".to_string()
    };
    host_firewall::carry(&mut state.counter_base, &carried);
    let coexistence = if coexistence.is_empty() {
        "no narrow accept changed".to_string()
    } else {
        coexistence
    };
    info!("host firewall changed by {by}: {coexistence}; {outcome}");
}

/// Replaces whatever is left of patchpanel's firewall with what the state
/// asks for.
fn rebuild(
    env: &mut Env<'_>,
    state: &State,
    policy: &PortPolicy,
) -> Result<Vec<CounterSample>, CallError> {
    let batch = host_firewall::desired(state, env.uplinks, policy);
    let pages = host_firewall::pages(&batch, REBUILD_PAGE_BYTES);
    let count = pages.len();
    for (i, page) in pages.into_iter().enumerate() {
        let last = i + 1 == count;
        match env.call(Request::RebuildFirewall { page, last })? {
            Reply::Done if !last => {}
            Reply::Rebuilt { carried } if last => return Ok(carried),
            other => {
                return Err(CallError::Failed(format!(
                    "rebuild: the writer answered {other:?} to page {} of {count}",
                    i + 1
                )))
            }
        }
    }
    Err(CallError::Failed("rebuild: nothing was sent".into()))
}
