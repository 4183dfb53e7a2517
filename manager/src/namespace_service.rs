//! ConnectNamespace as the daemon runs it: admit a call (quota, pid,
//! addresses, lifeline), have it recorded, build it through the writer,
//! and tear namespaces down when their lifelines close, the daemon stops,
//! or their pinned uplink comes back with a new ifindex. The policy is
//! [`crate::namespaces`]'s; this module sequences it, and every branch
//! leaves the state, the pools and the lifelines as they were.

use std::collections::BTreeMap;
use std::os::fd::{AsFd, OwnedFd};

use log::{error, info, warn};
use patchpanel_ipc::datapath::{ApplyMode, Plan, Step};
use patchpanel_proto::network_device_changed_signal::Event as DeviceEvent;
use prost::Message as _;

use crate::env::{next_operation, Env};
use crate::error::CallError;
use crate::lifeline::{Guarded, LifelineWatcher};
use crate::namespaces::{self, ConnectedNamespace, NamespaceRequest};
use crate::pids;
use crate::routing::RoutingMode;

/// A decoded and checked ConnectNamespace call.
#[derive(Debug)]
pub struct Connect {
    pub request: NamespaceRequest,
    pub lifeline: OwnedFd,
    /// The caller's unique bus name and uid.
    pub client: String,
    pub uid: u32,
    pub op: u64,
}

/// Site settings ConnectNamespace follows.
#[derive(Debug, Clone)]
pub struct Settings {
    pub netns_prefix: String,
    pub namespaces_per_uid: u32,
}

/// A namespace that got its addresses and its lifeline watch, not yet
/// built.
#[derive(Debug)]
pub struct Admitted {
    pub ns: ConnectedNamespace,
    pidfd: Option<OwnedFd>,
    op: u64,
}

/// Checks the call against what the caller already holds, pins its pid,
/// allocates names and addresses, and watches the lifeline (before
/// anything is set up: without a watch nobody would ever remove the
/// namespace). Nothing stays allocated or watched on error.
pub fn admit(
    env: &mut Env<'_>,
    held: &BTreeMap<u32, ConnectedNamespace>,
    next_id: &mut u32,
    lifelines: &mut LifelineWatcher,
    settings: &Settings,
    call: Connect,
) -> Result<Admitted, CallError> {
    namespaces::check_quota(held.values(), call.uid, settings.namespaces_per_uid)?;
    let pidfd = if call.request.pid == -1 {
        None
    } else {
        Some(pids::pin(call.request.pid, call.uid)?)
    };
    let ctx = namespaces::Context {
        id: *next_id,
        netns_prefix: &settings.netns_prefix,
        uplinks: env.uplinks,
        client: call.client,
        client_uid: Some(call.uid),
    };
    let ns = namespaces::allocate(&call.request, &ctx, env.addrs)?;
    *next_id += 1;
    // A lifeline that is already dead fires at the next wake-up, once the
    // namespace is recorded.
    if let Err(e) = lifelines.watch(call.lifeline, Guarded::Namespace(ns.id)) {
        namespaces::release(&ns, env.addrs);
        return Err(if e.raw_os_error() == Some(libc::EPERM) {
            CallError::InvalidArgument(format!(
                "ConnectNamespace: the lifeline cannot be watched (not a pipe or socket?): {e}"
            ))
        } else {
            CallError::Failed(format!("cannot watch the lifeline: {e}"))
        });
    }
    Ok(Admitted {
        ns,
        pidfd,
        op: call.op,
    })
}

/// Gives back what [`admit`] took (the call goes no further).
pub fn abandon(env: &mut Env<'_>, lifelines: &mut LifelineWatcher, admitted: Admitted) {
    lifelines.forget(Guarded::Namespace(admitted.ns.id));
    namespaces::release(&admitted.ns, env.addrs);
}

/// Builds an admitted namespace, which the state already holds. On
/// failure it is taken out of `namespaces` again and everything [`admit`]
/// took is given back; the writer undid its own steps.
pub fn build(
    env: &mut Env<'_>,
    namespaces: &mut BTreeMap<u32, ConnectedNamespace>,
    lifelines: &mut LifelineWatcher,
    admitted: Admitted,
) -> Result<Vec<u8>, CallError> {
    let Admitted { ns, pidfd, op } = admitted;
    let plan = namespaces::connect_plan(&ns, format!("ConnectNamespace op {op}"));
    let fds: Vec<_> = pidfd.iter().map(|f| f.as_fd()).collect();
    if let Err(e) = env.apply(plan, &fds) {
        lifelines.forget(Guarded::Namespace(ns.id));
        namespaces.remove(&ns.id);
        namespaces::release(&ns, env.addrs);
        return Err(e);
    }
    info!(
        "ConnectNamespace op {op}: {} for {} (uid {}, pid {}): {} {} <-> {} {} ({:?})",
        ns.netns,
        ns.client,
        ns.client_uid.unwrap_or_default(),
        ns.pid,
        ns.host_ifname,
        ns.host_addr(),
        ns.peer_ifname,
        ns.peer_addr(),
        ns.mode
    );
    if ns.route_on_vpn {
        env.emit(ns.device(), DeviceEvent::DeviceAdded);
    }
    let response = namespaces::response(&ns);
    namespaces.insert(ns.id, ns);
    Ok(response.encode_to_vec())
}

/// Removes namespaces, a bounded group per writer plan (lifelines that
/// closed together, or the daemon stopping).
pub fn disconnect(
    env: &mut Env<'_>,
    namespaces: &mut BTreeMap<u32, ConnectedNamespace>,
    lifelines: &mut LifelineWatcher,
    ids: &[u32],
    why: &str,
) {
    for group in ids.chunks(namespaces::TEARDOWN_GROUP) {
        disconnect_group(env, namespaces, lifelines, group, why);
    }
}

fn disconnect_group(
    env: &mut Env<'_>,
    namespaces: &mut BTreeMap<u32, ConnectedNamespace>,
    lifelines: &mut LifelineWatcher,
    ids: &[u32],
    why: &str,
) {
    let list: Vec<ConnectedNamespace> = ids
        .iter()
        .filter_map(|id| namespaces.get(id).cloned())
        .collect();
    if list.is_empty() {
        return;
    }
    let names = list
        .iter()
        .map(|n| n.netns.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let mut clients: Vec<&str> = list.iter().map(|n| n.client.as_str()).collect();
    clients.dedup();
    let clients = clients.join(", ");
    let op = next_operation();
    let removed = namespaces::disconnect_many_plan(&list, format!("disconnect {names} op {op}"))
        .map_err(CallError::from)
        .and_then(|plan| env.apply(plan, &[]));
    match removed {
        Ok(report) if report.failures.is_empty() => {
            info!("disconnect op {op} for {clients}: {names} removed: {why}")
        }
        Ok(report) => warn!(
            "disconnect op {op} for {clients}: {names} removed ({why}) with {} error(s): {}",
            report.failures.len(),
            report.failures.join("; ")
        ),
        Err(e) => {
            // The writer never ran the plan: keep the namespaces (and their
            // addresses) in the state, so that the next stop or start
            // removes them instead of leaking them.
            error!(
                "disconnect op {op} for {clients}: {names} could not be removed ({why}): {e}; kept for removal at the next stop or start"
            );
            for ns in &list {
                lifelines.forget(Guarded::Namespace(ns.id));
            }
            return;
        }
    }
    for ns in &list {
        lifelines.forget(Guarded::Namespace(ns.id));
        namespaces.remove(&ns.id);
        namespaces::release(ns, env.addrs);
        if ns.route_on_vpn {
            env.emit(ns.device(), DeviceEvent::DeviceRemoved);
        }
    }
}

/// Namespaces pinned to `uplink` whose routing tag carries an old ifindex
/// get their rules rebuilt for the new one.
pub fn repin(
    env: &mut Env<'_>,
    namespaces: &mut BTreeMap<u32, ConnectedNamespace>,
    uplink: &patchpanel_ipc::IfName,
    ifindex: u32,
) {
    let stale: Vec<u32> = namespaces
        .values()
        .filter(|ns| {
            ns.mode
                .pinned_to(uplink.as_str())
                .is_some_and(|old| old != ifindex)
        })
        .map(|ns| ns.id)
        .collect();
    for id in stale {
        let Some(old) = namespaces.get(&id).cloned() else {
            continue;
        };
        let mut new = old.clone();
        new.mode = RoutingMode::Pinned {
            uplink: uplink.clone(),
            ifindex,
        };
        let repinned = namespaces::namespace_firewall_teardown(&old)
            .map_err(CallError::from)
            .and_then(|teardown| {
                env.apply(
                    Plan {
                        label: format!("re-pin {} to {uplink} (ifindex {ifindex})", old.netns),
                        mode: ApplyMode::Atomic,
                        steps: vec![
                            Step::Firewall(teardown),
                            Step::Firewall(namespaces::namespace_firewall(&new)),
                        ],
                    },
                    &[],
                )
            });
        match repinned {
            Ok(_) => {
                info!("{} follows {uplink} to ifindex {ifindex}", old.netns);
                namespaces.insert(id, new);
            }
            Err(e) => warn!("{}: cannot follow {uplink}: {e}", old.netns),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::env::{Effects, FakeDatapath};
    use crate::uplinks::UplinkView;
    use patchpanel_addr::AddressManager;

    struct World {
        datapath: FakeDatapath,
        addrs: AddressManager,
        uplinks: UplinkView,
        effects: Effects,
        namespaces: BTreeMap<u32, ConnectedNamespace>,
        next_id: u32,
        lifelines: LifelineWatcher,
        _poll: mio::Poll,
    }

    impl World {
        fn new() -> World {
            let poll = mio::Poll::new().expect("poll");
            let lifelines =
                LifelineWatcher::new(poll.registry().try_clone().expect("registry"), 100);
            World {
                datapath: FakeDatapath::default(),
                addrs: AddressManager::new(),
                uplinks: UplinkView::default(),
                effects: Effects::default(),
                namespaces: BTreeMap::new(),
                next_id: 0,
                lifelines,
                _poll: poll,
            }
        }

        /// Admits a new namespace for `uid`; the first element is the end
        /// of its lifeline the client keeps.
        fn admit(&mut self, uid: u32) -> (OwnedFd, Result<Admitted, CallError>) {
            let settings = Settings {
                netns_prefix: "pp-".into(),
                namespaces_per_uid: 2,
            };
            let (keep, lifeline) = crate::lifeline::test_pipe();
            let call = Connect {
                request: namespaces::parse_request(&patchpanel_proto::ConnectNamespaceRequest {
                    pid: -1,
                    ..Default::default()
                })
                .expect("request"),
                lifeline,
                client: ":1.7".into(),
                uid,
                op: 1,
            };
            let mut env = Env::new(
                &mut self.datapath,
                &mut self.addrs,
                &self.uplinks,
                &mut self.effects,
            );
            let admitted = admit(
                &mut env,
                &self.namespaces,
                &mut self.next_id,
                &mut self.lifelines,
                &settings,
                call,
            );
            (keep, admitted)
        }

        /// Admits, records and builds a namespace, as the dispatcher does.
        fn connect(&mut self, uid: u32) -> (Result<Vec<u8>, CallError>, OwnedFd) {
            let (keep, admitted) = self.admit(uid);
            let admitted = match admitted {
                Ok(a) => a,
                Err(e) => return (Err(e), keep),
            };
            self.namespaces.insert(admitted.ns.id, admitted.ns.clone());
            let mut env = Env::new(
                &mut self.datapath,
                &mut self.addrs,
                &self.uplinks,
                &mut self.effects,
            );
            let built = build(
                &mut env,
                &mut self.namespaces,
                &mut self.lifelines,
                admitted,
            );
            (built, keep)
        }
    }

    #[test]
    fn a_connected_namespace_is_built_by_one_plan_and_recorded() {
        let mut w = World::new();
        let (result, _keep) = w.connect(1000);
        assert!(result.is_ok(), "{result:?}");
        assert_eq!(w.datapath.plan_labels(), ["ConnectNamespace op 1"]);
        assert_eq!(w.namespaces.len(), 1);
        assert_eq!(w.lifelines.watched(), 1);
        assert_eq!(w.addrs.allocations().len(), 1);
    }

    #[test]
    fn a_plan_the_writer_refuses_leaves_nothing_allocated_watched_or_recorded() {
        let mut w = World::new();
        w.datapath
            .fail_next(CallError::Failed("create veth failed".into()));
        let (result, _keep) = w.connect(1000);
        assert_eq!(result, Err(CallError::Failed("create veth failed".into())));
        assert!(w.namespaces.is_empty());
        assert_eq!(w.lifelines.watched(), 0);
        assert!(w.addrs.allocations().is_empty());
        // The next one gets the same subnet: it really went back.
        let (result, _keep) = w.connect(1000);
        assert!(result.is_ok());
        assert_eq!(w.addrs.allocations().len(), 1);
    }

    #[test]
    fn a_refused_quota_touches_nothing() {
        let mut w = World::new();
        let (_a, _ka) = w.connect(1000);
        let (_b, _kb) = w.connect(1000);
        let sent = w.datapath.requests.len();
        let (result, _kc) = w.connect(1000);
        assert!(matches!(result, Err(CallError::Failed(m)) if m.contains("already holds 2")));
        assert_eq!(w.datapath.requests.len(), sent, "nothing was sent");
        assert_eq!(w.namespaces.len(), 2);
        assert_eq!(w.lifelines.watched(), 2);
    }

    #[test]
    fn abandoning_an_admitted_namespace_gives_everything_back() {
        let mut w = World::new();
        let (_keep, admitted) = w.admit(0);
        let admitted = admitted.expect("admitted");
        let mut env = Env::new(&mut w.datapath, &mut w.addrs, &w.uplinks, &mut w.effects);
        abandon(&mut env, &mut w.lifelines, admitted);
        assert!(w.addrs.allocations().is_empty());
        assert_eq!(w.lifelines.watched(), 0);
        assert!(w.datapath.requests.is_empty());
    }

    #[test]
    fn a_teardown_the_writer_never_ran_keeps_the_namespace_for_the_next_stop() {
        let mut w = World::new();
        let (_r, _keep) = w.connect(1000);
        let id = *w.namespaces.keys().next().expect("one");
        w.datapath
            .fail_next(CallError::Failed("writer gone".into()));
        let mut env = Env::new(&mut w.datapath, &mut w.addrs, &w.uplinks, &mut w.effects);
        disconnect(&mut env, &mut w.namespaces, &mut w.lifelines, &[id], "test");
        assert!(w.namespaces.contains_key(&id), "kept");
        assert_eq!(w.addrs.allocations().len(), 1, "its subnet too");
        assert_eq!(
            w.lifelines.watched(),
            0,
            "its lifeline is not watched twice"
        );
    }
}
