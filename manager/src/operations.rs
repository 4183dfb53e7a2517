//! Where D-Bus calls, lifeline hang-ups and uplink changes become datapath
//! plans: the service layer between the adaptor ([`crate::dbus_service`])
//! and the writer channel. Policy (names, addresses, rules) is delegated to
//! the pure modules [`crate::namespaces`] and [`crate::routing`]; this
//! module sequences allocation, the writer call, state and replies.

use std::os::fd::{AsFd, OwnedFd};

use log::{error, info, warn};
use patchpanel_ipc::datapath::{ApplyMode, Netns, Plan, PlanReport, Step, Sysctl};
use patchpanel_ipc::{Reply, Request};
use patchpanel_proto::names;
use patchpanel_proto::network_device_changed_signal::Event as DeviceEvent;
use patchpanel_proto::NetworkDeviceChangedSignal;
use patchpanel_sandbox::Process;
use prost::Message as _;

use crate::dbus_service;
use crate::error::CallError;
use crate::lifeline::Guarded;
use crate::manager::Manager;
use crate::namespaces::ConnectedNamespace;
use crate::state::{Loaded, PortRuleChange};
use crate::{counters, namespaces, pids, port_rules, routing};

impl Manager {
    /// Reads the bus and serves every queued call, until nothing is left.
    /// A call may make a blocking bus round trip (a caller's uid), during
    /// which libdbus queues later calls internally: the socket is then
    /// empty and edge-triggered epoll would not wake us for them, so the
    /// queue is drained again after every batch. firewalld's `Reloaded`
    /// asks the host firewall's follower for a check (it runs from the
    /// loop's timers, once the burst is over).
    pub(crate) fn on_dbus(&mut self) -> anyhow::Result<()> {
        loop {
            let Some(dbus) = self.dbus.as_mut() else {
                return Ok(());
            };
            dbus.dispatch()?;
            if dbus.take_firewalld_reloaded() {
                self.host_firewall
                    .on_hint(dbus_service::FIREWALLD_RELOADED, std::time::Instant::now());
            }
            let calls = dbus.take_calls();
            if calls.is_empty() {
                return Ok(());
            }
            for call in calls {
                self.on_call(call);
            }
        }
    }

    fn on_call(&mut self, call: dbus::Message) {
        let op = dbus_service::next_operation();
        let member = call.member().map(|m| m.to_string()).unwrap_or_default();
        let sender = dbus_service::sender(&call);
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.route_call(&member, &call, op)
        }));
        let result = match outcome {
            Ok(r) => r,
            Err(_) => {
                error!("{member} from {sender} (op {op}): handler panicked");
                Err(CallError::Failed(
                    "internal error; see the patchpaneld log".into(),
                ))
            }
        };
        if let Err(e) = &result {
            warn!("{member} from {sender} (op {op}) refused: {e}");
        }
        // Guests may have come or gone: IPv6 proxying, multicast and ADB
        // follow before the caller hears back, so that when ArcShutdown
        // returns the ADB port is closed (the reply used to go first, and a
        // client could still connect right after it).
        self.sync_ndproxy();
        self.sync_mcast();
        self.sync_adb();
        if let Some(dbus) = &self.dbus {
            dbus.reply(&call, result);
        }
    }

    fn route_call(
        &mut self,
        member: &str,
        call: &dbus::Message,
        op: u64,
    ) -> Result<Vec<u8>, CallError> {
        if !self.datapath_ready {
            return Err(CallError::Failed(
                "patchpanel is still starting its datapath; try again".into(),
            ));
        }
        match member {
            names::GET_DEVICES => {
                let bytes: &[u8] = call
                    .read1()
                    .map_err(|e| CallError::InvalidArgument(format!("{member}: {e}")))?;
                patchpanel_proto::decode_request::<patchpanel_proto::GetDevicesRequest>(bytes)
                    .map_err(|e| CallError::InvalidArgument(format!("{member}: {e}")))?;
                Ok(self.state.devices().encode_to_vec())
            }
            names::CONNECT_NAMESPACE => self.connect_namespace(call, op),
            names::MODIFY_PORT_RULE => self.modify_port_rule(call, op),
            names::GET_TRAFFIC_COUNTERS => self.get_traffic_counters(call),
            m if crate::guest_service::METHODS.contains(&m) => self.guest_call(m, call, op),
            other => Err(CallError::Unsupported(format!(
                "{other} is not implemented by this patchpanel"
            ))),
        }
    }

    fn connect_namespace(&mut self, call: &dbus::Message, op: u64) -> Result<Vec<u8>, CallError> {
        let (bytes, lifeline): (&[u8], dbus::arg::OwnedFd) = call
            .read2()
            .map_err(|e| CallError::InvalidArgument(format!("ConnectNamespace: {e}")))?;
        let lifeline: OwnedFd = lifeline;
        let request =
            patchpanel_proto::decode_request::<patchpanel_proto::ConnectNamespaceRequest>(bytes)
                .map_err(|e| CallError::InvalidArgument(format!("ConnectNamespace: {e}")))?;
        let request = namespaces::parse_request(&request)?;
        crate::lifeline::check_kind(&lifeline)
            .map_err(|e| CallError::InvalidArgument(format!("ConnectNamespace: {e}")))?;
        let client = dbus_service::sender(call);
        // The caller's uid decides the quota and, for an existing pid,
        // which processes and namespaces it may connect. The bus is asked
        // once per client connection (cached by unique name).
        let uid = match &mut self.dbus {
            Some(d) => d
                .caller_uid(&client)
                .map_err(|e| CallError::Failed(format!("{e:#}")))?,
            None => return Err(CallError::Failed("no bus".into())),
        };
        namespaces::check_quota(
            self.state.namespaces.values(),
            uid,
            self.options.namespaces_per_uid,
        )?;
        let pidfd = if request.pid == -1 {
            None
        } else {
            Some(pids::pin(request.pid, uid)?)
        };
        let id = self.state.next_namespace_id;
        let ctx = namespaces::Context {
            id,
            netns_prefix: &self.options.netns_prefix,
            uplinks: &self.uplinks,
            client: client.clone(),
            client_uid: Some(uid),
        };
        let ns = namespaces::allocate(&request, &ctx, &mut self.addrs)?;
        self.state.next_namespace_id += 1;
        // The lifeline is watched before anything is set up: without a
        // watch nobody would ever remove the namespace, and one that cannot
        // be watched (epoll refuses regular files and directories) is then
        // refused with nothing to undo. A lifeline that is already dead
        // fires at the next wake-up, once the namespace is recorded.
        if let Err(e) =
            self.lifelines
                .watch(self.poll.registry(), lifeline, Guarded::Namespace(ns.id))
        {
            namespaces::release(&ns, &mut self.addrs);
            return Err(if e.raw_os_error() == Some(libc::EPERM) {
                CallError::InvalidArgument(format!(
                    "ConnectNamespace: the lifeline cannot be watched (not a pipe or socket?): {e}"
                ))
            } else {
                CallError::Failed(format!("cannot watch the lifeline: {e}"))
            });
        }
        // Recorded before the kernel is touched: a call whose state cannot
        // be saved (a full state directory) changes nothing, and a crash
        // during the plan leaves its successor a namespace to remove.
        self.state.namespaces.insert(ns.id, ns.clone());
        if let Err(e) = self.try_save_state("ConnectNamespace") {
            self.state.namespaces.remove(&ns.id);
            self.lifelines
                .forget(self.poll.registry(), Guarded::Namespace(ns.id));
            namespaces::release(&ns, &mut self.addrs);
            return Err(e);
        }
        let plan = namespaces::connect_plan(&ns, format!("ConnectNamespace op {op}"));
        let fds: Vec<_> = pidfd.iter().map(|f| f.as_fd()).collect();
        if let Err(e) = self.apply(plan, &fds) {
            self.lifelines
                .forget(self.poll.registry(), Guarded::Namespace(ns.id));
            self.state.namespaces.remove(&ns.id);
            namespaces::release(&ns, &mut self.addrs);
            self.save_state();
            return Err(e);
        }
        info!(
            "ConnectNamespace op {op}: {} for {client} (uid {}, pid {}): {} {} <-> {} {} ({:?})",
            ns.netns,
            uid,
            ns.pid,
            ns.host_ifname,
            ns.host_addr(),
            ns.peer_ifname,
            ns.peer_addr(),
            ns.mode
        );
        let response = namespaces::response(&ns);
        if ns.route_on_vpn {
            self.device_changed(&ns, DeviceEvent::DeviceAdded);
        }
        self.state.namespaces.insert(ns.id, ns);
        self.save_state();
        Ok(response.encode_to_vec())
    }

    /// Removes several namespaces, a bounded group per writer plan
    /// (lifelines that closed together, or the daemon stopping).
    pub(crate) fn disconnect_namespaces(&mut self, ids: &[u32], why: &str) {
        for group in ids.chunks(namespaces::TEARDOWN_GROUP) {
            self.disconnect_group(group, why);
        }
    }

    fn disconnect_group(&mut self, ids: &[u32], why: &str) {
        let list: Vec<ConnectedNamespace> = ids
            .iter()
            .filter_map(|id| self.state.namespaces.get(id).cloned())
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
        let op = dbus_service::next_operation();
        let plan = namespaces::disconnect_many_plan(&list, format!("disconnect {names} op {op}"));
        match self.apply(plan, &[]) {
            Ok(report) if report.failures.is_empty() => {
                info!("disconnect op {op} for {clients}: {names} removed: {why}")
            }
            Ok(report) => warn!(
                "disconnect op {op} for {clients}: {names} removed ({why}) with {} error(s): {}",
                report.failures.len(),
                report.failures.join("; ")
            ),
            Err(e) => {
                // The writer never ran the plan: keep the namespaces (and
                // their addresses) in the state, so that the next stop or
                // start removes them instead of leaking them.
                error!(
                    "disconnect op {op} for {clients}: {names} could not be removed ({why}): {e}; kept for removal at the next stop or start"
                );
                for ns in &list {
                    self.lifelines
                        .forget(self.poll.registry(), Guarded::Namespace(ns.id));
                }
                self.save_state();
                return;
            }
        }
        for ns in &list {
            self.lifelines
                .forget(self.poll.registry(), Guarded::Namespace(ns.id));
            self.state.namespaces.remove(&ns.id);
            namespaces::release(ns, &mut self.addrs);
            if ns.route_on_vpn {
                self.device_changed(ns, DeviceEvent::DeviceRemoved);
            }
        }
        self.save_state();
    }

    /// Lifelines that fired in one wake-up: their namespaces go together.
    pub(crate) fn on_lifelines(&mut self, tokens: Vec<mio::Token>) {
        let ids: Vec<u32> = tokens
            .into_iter()
            .filter_map(|t| {
                self.lifelines
                    .fired(self.poll.registry(), t)
                    .map(|Guarded::Namespace(id)| id)
            })
            .collect();
        self.disconnect_namespaces(&ids, "the client's lifeline closed");
        self.sync_ndproxy();
    }

    fn device_changed(&self, ns: &ConnectedNamespace, event: DeviceEvent) {
        let signal = NetworkDeviceChangedSignal {
            device: Some(ns.device()),
            event: event as i32,
        };
        if let Some(dbus) = &self.dbus {
            dbus.emit(names::NETWORK_DEVICE_CHANGED, signal.encode_to_vec());
        }
    }

    /// Sends a plan to the writer and waits for its answer.
    pub(crate) fn apply(
        &mut self,
        plan: Plan,
        fds: &[std::os::fd::BorrowedFd<'_>],
    ) -> Result<PlanReport, CallError> {
        let label = plan.label.clone();
        match self.call_helper(Process::DatapathWriter, Request::Apply(plan), fds) {
            Ok(Reply::Applied(report)) => {
                for (netns, sysctl, old) in &report.replaced_sysctls {
                    // Set only on TAPs patchpanel creates: it dies with them,
                    // there is nothing to restore at stop.
                    if matches!(sysctl, patchpanel_ipc::datapath::Sysctl::RouteLocalnet(_)) {
                        continue;
                    }
                    self.state
                        .record_sysctl_original(netns.clone(), sysctl.clone(), old.clone());
                }
                Ok(report)
            }
            Ok(other) => Err(CallError::Failed(format!(
                "{label}: the writer answered {other:?}"
            ))),
            Err(e) => Err(e),
        }
    }

    pub(crate) fn save_state(&self) {
        if let Err(e) = self.state_file.save(&self.state) {
            error!(
                "cannot save {}: {e}; a restart would not know what to clean up",
                self.state_file.path().display()
            );
        }
    }

    /// Saves the state for a call that must not go ahead unrecorded: the
    /// error names the file and the cause (e.g. no space left on device).
    pub(crate) fn try_save_state(&self, what: &str) -> Result<(), CallError> {
        self.state_file.save(&self.state).map_err(|e| {
            error!(
                "{what}: cannot save {}: {e}; the call is refused and nothing changed",
                self.state_file.path().display()
            );
            CallError::Failed(format!(
                "{what}: cannot record the change in {}: {e}; nothing was changed",
                self.state_file.path().display()
            ))
        })
    }

    /// The first time the writer is up: clean up after a previous run and
    /// turn forwarding on.
    pub(crate) fn start_datapath(&mut self) -> anyhow::Result<()> {
        let previous = match self.state_file.load() {
            Loaded::Missing => None,
            Loaded::Found(s) => Some(*s),
            Loaded::Unusable(why) => {
                warn!("{why}; removing every leftover patchpanel owns");
                None
            }
        };
        if let Some(prev) = &previous {
            info!(
                "previous state found: {} namespace(s) tied to lifelines that died with the old manager; removing them",
                prev.namespaces.len()
            );
            self.state.sysctl_originals = prev.sysctl_originals.clone();
            self.state.next_namespace_id = prev.next_namespace_id;
            for ns in prev.namespaces.values() {
                let plan = namespaces::disconnect_plan(ns, format!("leftover {}", ns.netns));
                if let Err(e) = self.apply(plan, &[]) {
                    warn!("leftover {}: {e}", ns.netns);
                }
            }
        }
        // A crash restart keeps the previous guests' links to re-adopt them.
        let (keep_links, keep_netns) = match &previous {
            Some(prev) if !self.options.cleanup_only => Manager::guest_leftovers(prev),
            _ => (Vec::new(), Vec::new()),
        };
        self.remove_owned(!self.options.cleanup_only, keep_links, keep_netns)?;
        if self.options.cleanup_only {
            self.restore_sysctls();
            let _ = self.state_file.remove();
            return Ok(());
        }
        let setup = Request::SetupFirewall(self.options.layout.clone());
        match self.call_helper(Process::DatapathWriter, setup.clone(), &[]) {
            Ok(_) => self.record_replay(Process::DatapathWriter, "firewall", setup),
            Err(e) => anyhow::bail!("cannot set up the firewall: {e}"),
        }
        if let Some(prev) = &previous {
            self.readopt_port_rules(&prev.port_rules);
            self.readopt_guests(prev);
        }
        // The journal says what this run holds from now on.
        if let Err(e) = self.state_file.save_port_rules(&self.state.port_rules) {
            error!(
                "cannot save the port rules next to {}: {e}; a restart would not re-apply them",
                self.state_file.path().display()
            );
        }
        let mut steps = Vec::new();
        for sysctl in [Sysctl::Ipv4Forward, Sysctl::Ipv6Forwarding] {
            steps.push(Step::SetSysctl {
                netns: Netns::Host,
                sysctl,
                value: "1".into(),
            });
        }
        self.apply(
            Plan {
                label: "start: forwarding on".into(),
                mode: ApplyMode::Atomic,
                steps,
            },
            &[],
        )
        .map_err(|e| anyhow::anyhow!("cannot turn forwarding on: {e}"))?;
        self.save_state();
        for step in routing::uplink_steps_all(&self.uplinks, self.options.manage_uplink_routing) {
            self.apply_quietly("uplink routing", step);
        }
        // The uplinks' accept_ra originals were just recorded: a crash from
        // here on must still let the successor restore them.
        self.save_state();
        // A re-adopted ARC follows the uplinks that changed meanwhile.
        self.arc_follow_uplinks();
        self.datapath_ready = true;
        self.sync_ndproxy();
        self.sync_mcast();
        self.sync_adb();
        Ok(())
    }

    /// A crash restart: the previous run's port rules are still wanted
    /// (permission_broker holds them), so they are applied again.
    fn readopt_port_rules(&mut self, rules: &[port_rules::PortRule]) {
        for rule in rules {
            let result = port_rules::batch(rule, &self.options.port_policy).and_then(|batch| {
                self.apply(
                    Plan {
                        label: format!("re-adopt port rule {rule}"),
                        mode: ApplyMode::Atomic,
                        steps: vec![Step::Firewall(batch)],
                    },
                    &[],
                )
            });
            match result {
                Ok(_) => self.state.port_rules.push(rule.clone()),
                Err(e) => warn!("port rule {rule} from the previous run not re-applied: {e}"),
            }
        }
        if !rules.is_empty() {
            info!(
                "re-applied {} of {} port rule(s) of the previous run",
                self.state.port_rules.len(),
                rules.len()
            );
        }
    }

    fn modify_port_rule(&mut self, call: &dbus::Message, op: u64) -> Result<Vec<u8>, CallError> {
        let bytes: &[u8] = call
            .read1()
            .map_err(|e| CallError::InvalidArgument(format!("ModifyPortRule: {e}")))?;
        let request =
            patchpanel_proto::decode_request::<patchpanel_proto::ModifyPortRuleRequest>(bytes)
                .map_err(|e| CallError::InvalidArgument(format!("ModifyPortRule: {e}")))?;
        let policy = self.options.port_policy.clone();
        let (rule, batch, create) = match port_rules::parse(&request, &policy)? {
            port_rules::PortOp::Create(rule) => {
                if let Some(why) = port_rules::conflict(&self.state.port_rules, &rule) {
                    return Err(CallError::InvalidArgument(format!("ModifyPortRule: {why}")));
                }
                port_rules::check_limits(&self.state.port_rules, &rule, &policy)?;
                let batch = port_rules::batch(&rule, &policy)?;
                (rule, batch, true)
            }
            port_rules::PortOp::Delete(rule) => {
                if !self.state.port_rules.contains(&rule) {
                    return Err(CallError::InvalidArgument(
                        "ModifyPortRule: no such rule to delete".into(),
                    ));
                }
                let batch = port_rules::batch(&rule, &policy)?
                    .inverse()
                    .map_err(|e| CallError::Failed(format!("ModifyPortRule: {e}")))?;
                (rule, batch, false)
            }
        };
        let undo = batch
            .inverse()
            .map_err(|e| CallError::Failed(format!("ModifyPortRule: {e}")))?;
        self.apply(
            Plan {
                label: format!("ModifyPortRule op {op}"),
                mode: ApplyMode::Atomic,
                steps: vec![Step::Firewall(batch)],
            },
            &[],
        )?;
        let change = if create {
            self.state.port_rules.push(rule.clone());
            PortRuleChange::Added
        } else {
            self.state.port_rules.retain(|r| *r != rule);
            PortRuleChange::Removed
        };
        if let Err(e) = self
            .state_file
            .record_port_rule(change, &rule, &self.state.port_rules)
        {
            // Unrecorded, a rule would outlive a crash unknown (or a
            // deleted one come back): take the change back.
            if create {
                self.state.port_rules.retain(|r| *r != rule);
            } else {
                self.state.port_rules.push(rule.clone());
            }
            let undone = self.apply(
                Plan {
                    label: format!("ModifyPortRule op {op}: undo"),
                    mode: ApplyMode::Atomic,
                    steps: vec![Step::Firewall(undo)],
                },
                &[],
            );
            if let Err(u) = &undone {
                error!("ModifyPortRule op {op}: cannot undo the unrecorded change: {u}");
            }
            let journal = self.state_file.journal_path().display();
            return Err(CallError::Failed(if undone.is_ok() {
                format!("ModifyPortRule: cannot record the change in {journal}: {e}; nothing was changed")
            } else {
                format!("ModifyPortRule: cannot record the change in {journal}: {e}, and cannot undo it in the kernel")
            }));
        }
        info!(
            "ModifyPortRule op {op} from {}: {} {rule}",
            dbus_service::sender(call),
            if create { "created" } else { "deleted" }
        );
        Ok(patchpanel_proto::ModifyPortRuleResponse { success: true }.encode_to_vec())
    }

    fn get_traffic_counters(&mut self, call: &dbus::Message) -> Result<Vec<u8>, CallError> {
        let bytes: &[u8] = call
            .read1()
            .map_err(|e| CallError::InvalidArgument(format!("GetTrafficCounters: {e}")))?;
        let request =
            patchpanel_proto::decode_request::<patchpanel_proto::TrafficCountersRequest>(bytes)
                .map_err(|e| CallError::InvalidArgument(format!("GetTrafficCounters: {e}")))?;
        let mut wanted = counters::parse_request(&request)?;
        if wanted.is_empty() {
            wanted = self
                .uplinks
                .all()
                .map(|u| u.name.clone())
                .collect::<Vec<_>>();
        }
        let mut samples = Vec::new();
        let mut offset = 0;
        loop {
            match self.call_helper(
                Process::DatapathWriter,
                Request::ReadCounters {
                    ifnames: wanted.clone(),
                    offset,
                },
                &[],
            )? {
                Reply::Counters {
                    samples: page,
                    next,
                } => {
                    samples.extend(page);
                    match next {
                        Some(n) if n > offset => offset = n,
                        _ => break,
                    }
                }
                other => {
                    return Err(CallError::Failed(format!(
                        "GetTrafficCounters: the writer answered {other:?}"
                    )))
                }
            }
        }
        // What was counted before another program flushed the accounting
        // rules (or a rebuild replaced them) still counts.
        samples.extend(
            self.state
                .counter_base
                .iter()
                .filter(|s| wanted.iter().any(|w| w.as_str() == s.ifname))
                .cloned(),
        );
        Ok(patchpanel_proto::TrafficCountersResponse {
            counters: counters::aggregate(&samples),
        }
        .encode_to_vec())
    }

    fn remove_owned(
        &mut self,
        keep_accounting: bool,
        keep_links: Vec<patchpanel_ipc::IfName>,
        keep_netns: Vec<patchpanel_ipc::NetnsName>,
    ) -> anyhow::Result<()> {
        match self.call_helper(
            Process::DatapathWriter,
            Request::RemoveOwned {
                keep_links,
                keep_netns,
                keep_accounting,
            },
            &[],
        ) {
            Ok(Reply::Applied(r)) if r.failures.is_empty() => Ok(()),
            Ok(Reply::Applied(r)) => {
                warn!(
                    "removing leftovers: {} error(s): {}",
                    r.failures.len(),
                    r.failures.join("; ")
                );
                Ok(())
            }
            Ok(other) => anyhow::bail!("removing leftovers: unexpected answer {other:?}"),
            Err(e) => anyhow::bail!("removing leftovers: {e}"),
        }
    }

    /// Writes back the sysctl values found before patchpanel changed them.
    fn restore_sysctls(&mut self) {
        let steps: Vec<Step> = self
            .state
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
        match self.call_helper(Process::DatapathWriter, Request::Apply(plan), &[]) {
            Ok(Reply::Applied(r)) if !r.failures.is_empty() => {
                warn!("restoring sysctls: {}", r.failures.join("; "))
            }
            Ok(_) => self.state.sysctl_originals.clear(),
            Err(e) => warn!("restoring sysctls: {e}"),
        }
    }

    /// A clean stop: remove every namespace, everything owned but the
    /// accounting chains, restore sysctls, forget the state file.
    pub(crate) fn stop_datapath(&mut self) {
        if !self.datapath_ready {
            return;
        }
        let ids: Vec<u32> = self.state.namespaces.keys().copied().collect();
        self.disconnect_namespaces(&ids, "patchpanel is stopping");
        self.stop_guests("patchpanel is stopping");
        if let Err(e) = self.remove_owned(true, Vec::new(), Vec::new()) {
            warn!("{e}");
        }
        self.restore_sysctls();
        if let Err(e) = self.state_file.remove() {
            warn!("cannot remove {}: {e}", self.state_file.path().display());
        }
        self.datapath_ready = false;
    }

    /// Applies one best-effort step, logging failures.
    fn apply_quietly(&mut self, what: &str, step: Step) {
        let plan = Plan {
            label: what.to_string(),
            mode: ApplyMode::BestEffort,
            steps: vec![step],
        };
        match self.apply(plan, &[]) {
            Ok(r) if !r.failures.is_empty() => warn!("{what}: {}", r.failures.join("; ")),
            Ok(_) => {}
            Err(e) => warn!("{what}: {e}"),
        }
    }

    /// Follows an uplink change: per-uplink routing (netlink mode) and
    /// namespaces pinned to an uplink that came back with a new ifindex.
    pub(crate) fn on_uplink_events(&mut self, events: Vec<patchpanel_uplinks::UplinkEvent>) {
        for event in events {
            info!("uplink {event}");
            let before = self.uplinks.clone();
            self.uplinks.apply(&event);
            if !self.datapath_ready {
                continue;
            }
            for step in routing::uplink_steps_for_event(
                &before,
                &self.uplinks,
                &event,
                self.options.manage_uplink_routing,
            ) {
                self.apply_quietly("uplink routing", step);
            }
            if let patchpanel_uplinks::UplinkEvent::Added(u) = &event {
                self.repin_namespaces(u.name.as_str(), u.ifindex);
            }
        }
        if self.datapath_ready {
            self.arc_follow_uplinks();
            self.sync_ndproxy();
            self.sync_mcast();
        }
    }

    /// Another program changed the rule set and it went quiet: bring the
    /// narrow accepts in line, and rebuild patchpanel's firewall from the
    /// state if it was touched. One log line says what was found and done.
    pub(crate) fn follow_host_firewall(&mut self, pending: crate::host_firewall::Pending) {
        if !self.datapath_ready {
            return;
        }
        let by = pending.by.join("; ");
        let (coexistence, missing) =
            match self.call_helper(Process::DatapathWriter, Request::CheckFirewall, &[]) {
                Ok(Reply::FirewallChecked {
                    coexistence,
                    missing,
                }) => (coexistence, missing),
                Ok(other) => {
                    warn!("host firewall changed by {by}; the check answered {other:?}");
                    return;
                }
                Err(e) => {
                    warn!(
                        "host firewall changed by {by}, and patchpanel cannot check its own: {e}"
                    );
                    return;
                }
            };
        let mut carried = pending.lost_counters;
        let outcome = if pending.ours || !missing.is_empty() {
            let started = std::time::Instant::now();
            let what = format!(
                "{} connected namespace(s), {} VM(s), ARC {}, {} port rule(s), {} uplink(s)",
                self.state.namespaces.len(),
                self.state.vms.len(),
                if self.state.arc.is_some() {
                    "running"
                } else {
                    "off"
                },
                self.state.port_rules.len(),
                self.uplinks.all().count()
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
            let outcome = match self.rebuild_firewall() {
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
            if let Some(wait) = self.host_firewall.rebuilt(std::time::Instant::now()) {
                warn!(
                    "host firewall: another program keeps undoing patchpanel's firewall ({} rebuilds within {:?}; last by {by}); the next rebuild waits {wait:?}",
                    self.host_firewall.recent_rebuilds(),
                    crate::host_firewall::FLAP_WINDOW
                );
            }
            outcome
        } else {
            "patchpanel's firewall is intact".to_string()
        };
        if !carried.is_empty() {
            crate::host_firewall::carry(&mut self.state.counter_base, &carried);
            self.save_state();
        }
        let coexistence = if coexistence.is_empty() {
            "no narrow accept changed".to_string()
        } else {
            coexistence
        };
        info!("host firewall changed by {by}: {coexistence}; {outcome}");
    }

    /// Replaces whatever is left of patchpanel's firewall with what the
    /// state asks for, in IPC pages; the writer applies them together.
    fn rebuild_firewall(
        &mut self,
    ) -> Result<Vec<patchpanel_firewall::counters::CounterSample>, CallError> {
        let batch =
            crate::host_firewall::desired(&self.state, &self.uplinks, &self.options.port_policy);
        let pages = crate::host_firewall::pages(&batch, REBUILD_PAGE_BYTES);
        let count = pages.len();
        for (i, page) in pages.into_iter().enumerate() {
            let last = i + 1 == count;
            match self.call_helper(
                Process::DatapathWriter,
                Request::RebuildFirewall { page, last },
                &[],
            )? {
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

    /// Namespaces pinned to `uplink` whose routing tag carries an old
    /// ifindex get their rules rebuilt for the new one.
    fn repin_namespaces(&mut self, uplink: &str, ifindex: u32) {
        let stale: Vec<u32> = self
            .state
            .namespaces
            .values()
            .filter(|ns| ns.mode.pinned_to(uplink).is_some_and(|old| old != ifindex))
            .map(|ns| ns.id)
            .collect();
        for id in stale {
            let Some(old) = self.state.namespaces.get(&id).cloned() else {
                continue;
            };
            let mut new = old.clone();
            new.mode = routing::RoutingMode::Pinned {
                uplink: patchpanel_ipc::IfName::new(uplink)
                    .unwrap_or_else(|_| old.host_ifname.clone()),
                ifindex,
            };
            let plan = Plan {
                label: format!("re-pin {} to {uplink} (ifindex {ifindex})", old.netns),
                mode: ApplyMode::Atomic,
                steps: vec![
                    Step::Firewall(namespaces::namespace_firewall_teardown(&old)),
                    Step::Firewall(namespaces::namespace_firewall(&new)),
                ],
            };
            match self.apply(plan, &[]) {
                Ok(_) => {
                    info!("{} follows {uplink} to ifindex {ifindex}", old.netns);
                    self.state.namespaces.insert(id, new);
                }
                Err(e) => warn!("{}: cannot follow {uplink}: {e}", old.netns),
            }
        }
        self.save_state();
    }
}

/// Rebuild pages stay well under the IPC limit with their envelope.
const REBUILD_PAGE_BYTES: usize = 48 * 1024;
