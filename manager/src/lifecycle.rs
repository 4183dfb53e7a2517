//! The datapath's lifecycle: the first start once the writer is up (clean
//! up after a previous run, set up the firewall, re-adopt what a crashed
//! run left, turn forwarding on), the cleanup-only run, the clean stop, and
//! following the uplinks.
//!
//! Start saves the state at points of its own (a crash half-way must still
//! let the next run restore the sysctls); every other change is saved by
//! the dispatcher's tail.

use anyhow::{anyhow, bail};
use log::{error, info, warn};
use patchpanel_firewall::LayoutConfig;
use patchpanel_ipc::datapath::{ApplyMode, Netns, Plan, Step, Sysctl};
use patchpanel_ipc::{IfName, NetnsName, Reply, Request};
use patchpanel_uplinks::UplinkEvent;

use crate::env::Env;
use crate::guest_service::{self, Guests};
use crate::lifeline::LifelineWatcher;
use crate::namespaces::ConnectedNamespace;
use crate::port_rules::PortPolicy;
use crate::state::{Loaded, State, StateFile};
use crate::uplinks::UplinkView;
use crate::{
    dns_service, namespace_service, network_service, port_rule_service, routing, vpn_service,
};

/// What start sets up.
#[derive(Debug, Clone, Copy)]
pub struct Setup<'a> {
    pub layout: &'a LayoutConfig,
    pub port_policy: &'a PortPolicy,
    pub manage_uplink_routing: bool,
    /// The root-namespace DNS proxies' IPv6 addresses on `lo`.
    pub dns_proxy_loopback: bool,
}

/// The previous run's state, if it left a usable one.
fn previous(store: &StateFile) -> Option<State> {
    match store.load() {
        Loaded::Missing => None,
        Loaded::Found(s) => Some(*s),
        Loaded::Unusable(why) => {
            warn!("{why}; removing every leftover patchpanel owns");
            None
        }
    }
}

/// Takes over what the previous run knew must be restored or removed:
/// its sysctl originals and its namespace ids. Its namespaces (their
/// lifelines died with it) are not removed one plan each: the start's
/// cleanup that follows ([`remove_owned`]) removes all of them at once
/// with everything else patchpanel owns and keeps nothing of theirs (the
/// whole firewall, their links, routes and rules, their names under the
/// netns directory); a plan per namespace made a restart with 100 of them
/// take half a second.
fn inherit(state: &mut State, prev: &State) {
    info!(
        "previous state found: {} namespace(s) tied to lifelines that died with the old manager; the cleanup removes them",
        prev.namespaces.len()
    );
    state.sysctl_originals = prev.sysctl_originals.clone();
    state.next_namespace_id = prev.next_namespace_id;
}

/// The first time the writer is up: clean up after a previous run, set up
/// the firewall, re-adopt the previous run's port rules and guests, and
/// turn forwarding on. An error is fatal. The firewall's setup request is
/// for the caller to put in the writer's replay log.
pub fn start(
    env: &mut Env<'_>,
    state: &mut State,
    store: &StateFile,
    lifelines: &mut LifelineWatcher,
    setup: &Setup<'_>,
) -> anyhow::Result<Request> {
    let previous = previous(store);
    if let Some(prev) = &previous {
        inherit(state, prev);
    }
    // A crash restart keeps the previous guests' links to re-adopt them.
    let (keep_links, keep_netns) = previous
        .as_ref()
        .map(guest_service::leftovers)
        .unwrap_or_default();
    remove_owned(env, true, keep_links, keep_netns, false)?;
    let firewall = Request::SetupFirewall(setup.layout.clone());
    env.call(firewall.clone())
        .map_err(|e| anyhow!("cannot set up the firewall: {e}"))?;
    if setup.dns_proxy_loopback {
        if let Err(e) = env.apply(dns_service::loopback_plan(true), &[]) {
            warn!("the DNS proxies' addresses cannot be put on lo: {e}");
        }
    }
    if let Some(prev) = &previous {
        port_rule_service::readopt(
            env,
            &mut state.port_rules,
            &prev.port_rules,
            setup.port_policy,
        );
        guest_service::readopt(
            env,
            Guests {
                arc: &mut state.arc,
                arc_bridges: &mut state.arc_bridges,
                vms: &mut state.vms,
            },
            lifelines,
            prev,
        );
        vpn_service::readopt(env, &mut state.vpn_lockdown, prev.vpn_lockdown);
        dns_service::readopt(
            env,
            &mut state.dns_redirections,
            &prev.dns_redirections,
            lifelines,
        );
        state.chrome = prev.chrome.clone();
        if !prev.networks.is_empty() {
            if setup.manage_uplink_routing {
                warn!(
                    "the previous run held networks configured by shill; with uplinks = netlink \
                     patchpanel builds the uplinks' routing itself, so they are not re-applied"
                );
            } else {
                state.networks = prev.networks.clone();
                network_service::readopt(env, &mut state.networks);
            }
        }
    }
    // The journal says what this run holds from now on.
    if let Err(e) = store.save_port_rules(&state.port_rules) {
        error!(
            "cannot save the port rules next to {}: {e}; a restart would not re-apply them",
            store.path().display()
        );
    }
    let steps = [Sysctl::Ipv4Forward, Sysctl::Ipv6Forwarding]
        .into_iter()
        .map(|sysctl| Step::SetSysctl {
            netns: Netns::Host,
            sysctl,
            value: "1".into(),
        })
        .collect();
    env.apply(
        Plan {
            label: "start: forwarding on".into(),
            mode: ApplyMode::Atomic,
            steps,
        },
        &[],
    )
    .map_err(|e| anyhow!("cannot turn forwarding on: {e}"))?;
    checkpoint(env, state, store);
    for step in routing::uplink_steps_all(env.uplinks, setup.manage_uplink_routing) {
        apply_quietly(env, "uplink routing", step);
    }
    // The uplinks' accept_ra originals were just recorded: a crash from here
    // on must still let the next run restore them.
    checkpoint(env, state, store);
    // A re-adopted ARC follows the uplinks that changed meanwhile.
    guest_service::arc_follow_uplinks(env, &mut state.arc, &mut state.arc_bridges);
    Ok(firewall)
}

/// `--cleanup`: removes everything patchpanel owns, the accounting chains
/// included, restores the sysctls the previous run changed, and forgets
/// its state.
pub fn clean_up(env: &mut Env<'_>, state: &mut State, store: &StateFile) -> anyhow::Result<()> {
    if let Some(prev) = previous(store) {
        inherit(state, &prev);
    }
    remove_owned(env, false, Vec::new(), Vec::new(), true)?;
    remove_loopback_proxies(env);
    restore_sysctls(env, state);
    if let Err(e) = store.remove() {
        warn!("cannot remove {}: {e}", store.path().display());
    }
    Ok(())
}

/// The DNS proxies' addresses on `lo` go at a stop and a cleanup (whether
/// or not this run put them there: they are patchpanel's by convention).
fn remove_loopback_proxies(env: &mut Env<'_>) {
    if let Err(e) = env.apply(dns_service::loopback_plan(false), &[]) {
        warn!("the DNS proxies' addresses cannot be removed from lo: {e}");
    }
}

/// A clean stop: every namespace and guest goes, then everything owned but
/// the accounting chains; the sysctls are restored and the state file
/// removed.
pub fn stop(
    env: &mut Env<'_>,
    state: &mut State,
    store: &StateFile,
    lifelines: &mut LifelineWatcher,
) {
    let ids: Vec<u32> = state.namespaces.keys().copied().collect();
    namespace_service::disconnect(
        env,
        &mut state.namespaces,
        lifelines,
        &ids,
        "patchpanel is stopping",
    );
    guest_service::stop_all(
        env,
        Guests {
            arc: &mut state.arc,
            arc_bridges: &mut state.arc_bridges,
            vms: &mut state.vms,
        },
        "patchpanel is stopping",
    );
    if let Err(e) = remove_owned(env, true, Vec::new(), Vec::new(), true) {
        warn!("{e}");
    }
    remove_loopback_proxies(env);
    restore_sysctls(env, state);
    // shill does not configure its networks or lockdown again when
    // patchpanel comes back: they stay for the next start (and go with
    // `--cleanup`).
    // Nor does Chrome send its notifications again. DNS redirection rules
    // end here: dns-proxy asks again when the name has an owner again.
    let kept = State {
        networks: std::mem::take(&mut state.networks),
        vpn_lockdown: state.vpn_lockdown,
        chrome: std::mem::take(&mut state.chrome),
        ..State::default()
    };
    state.dns_redirections = Default::default();
    let result = if kept.networks.is_empty() && !kept.vpn_lockdown && kept.chrome.is_default() {
        store.remove()
    } else {
        store.save(&kept)
    };
    if let Err(e) = result {
        warn!("cannot update {}: {e}", store.path().display());
    }
}

/// Follows one uplink change: per-uplink routing (netlink mode), and
/// namespaces pinned to an uplink that came back with a new ifindex.
/// `before` is the view before the change; `env`'s is after.
pub fn follow_uplink(
    env: &mut Env<'_>,
    namespaces: &mut std::collections::BTreeMap<u32, ConnectedNamespace>,
    before: &UplinkView,
    event: &UplinkEvent,
    manage_uplink_routing: bool,
) {
    match routing::uplink_steps_for_event(before, env.uplinks, event, manage_uplink_routing) {
        Ok(steps) => {
            for step in steps {
                apply_quietly(env, "uplink routing", step);
            }
        }
        Err(e) => error!("uplink routing for {event}: {e}"),
    }
    if let UplinkEvent::Added(u) = event {
        namespace_service::repin(env, namespaces, &u.name, u.ifindex);
    }
}

/// Absorbs the sysctl values replaced so far and saves the state.
fn checkpoint(env: &mut Env<'_>, state: &mut State, store: &StateFile) {
    for (netns, sysctl, old) in env.take_replaced_sysctls() {
        state.record_sysctl_original(netns, sysctl, old);
    }
    if let Err(e) = store.save(state) {
        error!(
            "cannot save {}: {e}; a restart would not know what to clean up",
            store.path().display()
        );
    }
}

fn remove_owned(
    env: &mut Env<'_>,
    keep_accounting: bool,
    keep_links: Vec<IfName>,
    keep_netns: Vec<NetnsName>,
    wait: bool,
) -> anyhow::Result<()> {
    match env.call(Request::RemoveOwned {
        keep_links,
        keep_netns,
        keep_accounting,
        wait,
    }) {
        Ok(Reply::Applied(r)) if r.failures.is_empty() => Ok(()),
        Ok(Reply::Applied(r)) => {
            warn!(
                "removing leftovers: {} error(s): {}",
                r.failures.len(),
                r.failures.join("; ")
            );
            Ok(())
        }
        Ok(other) => bail!("removing leftovers: unexpected answer {other:?}"),
        Err(e) => bail!("removing leftovers: {e}"),
    }
}

/// Writes back the sysctl values found before patchpanel changed them.
/// Sent as a plain request: what it replaces are patchpanel's own values,
/// not originals to remember.
fn restore_sysctls(env: &mut Env<'_>, state: &mut State) {
    let steps: Vec<Step> = state
        .sysctl_originals
        .iter()
        .map(|(netns, sysctl, value)| Step::SetSysctl {
            netns: netns.clone(),
            sysctl: sysctl.clone(),
            value: value.clone(),
        })
        .collect();
    if steps.is_empty() {
        return;
    }
    let plan = Plan {
        label: "stop: restore sysctls".into(),
        mode: ApplyMode::BestEffort,
        steps,
    };
    match env.call(Request::Apply(plan)) {
        Ok(Reply::Applied(r)) if !r.failures.is_empty() => {
            warn!("restoring sysctls: {}", r.failures.join("; "))
        }
        Ok(_) => state.sysctl_originals.clear(),
        Err(e) => warn!("restoring sysctls: {e}"),
    }
}

/// Applies one best-effort step, logging failures.
fn apply_quietly(env: &mut Env<'_>, what: &str, step: Step) {
    let plan = Plan {
        label: what.to_string(),
        mode: ApplyMode::BestEffort,
        steps: vec![step],
    };
    match env.apply(plan, &[]) {
        Ok(r) if !r.failures.is_empty() => warn!("{what}: {}", r.failures.join("; ")),
        Ok(_) => {}
        Err(e) => warn!("{what}: {e}"),
    }
}
