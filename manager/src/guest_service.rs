//! The guest lifecycles as the manager runs them: ARC (`ArcStartup`,
//! `ArcVmStartup`...), Termina and Parallels VMs. Decodes and checks each
//! call, asks [`crate::guests`] for names, addresses and plans, sends the
//! plans to the writer, keeps the state file and emits
//! `NetworkDeviceChanged`. ARC's devices follow the uplinks; after a crash
//! the previous run's guests are re-adopted.

use std::collections::BTreeSet;
use std::os::fd::{AsFd, OwnedFd};

use log::{error, info, warn};
use patchpanel_ipc::datapath::{Plan, PlanReport};
use patchpanel_ipc::{IfName, NetnsName};
use patchpanel_proto::network_device_changed_signal::Event as DeviceEvent;
use patchpanel_proto::{names, NetworkDevice, NetworkDeviceChangedSignal};
use patchpanel_uplinks::Uplink;
use prost::Message as _;

use crate::dbus_service;
use crate::error::CallError;
use crate::guests::{self, ArcKind, VmGuest, VmKind};
use crate::manager::Manager;
use crate::pids;
use crate::state::State;

/// The D-Bus methods served here.
pub const METHODS: &[&str] = &[
    names::ARC_STARTUP,
    names::ARC_SHUTDOWN,
    names::ARC_VM_STARTUP,
    names::ARC_VM_SHUTDOWN,
    names::TERMINA_VM_STARTUP,
    names::TERMINA_VM_SHUTDOWN,
    names::PLUGIN_VM_STARTUP,
    names::PLUGIN_VM_SHUTDOWN,
    names::PARALLELS_VM_STARTUP,
    names::PARALLELS_VM_SHUTDOWN,
];

fn request<T: prost::Message + Default>(
    call: &dbus::Message,
    method: &str,
) -> Result<T, CallError> {
    let bytes: &[u8] = call
        .read1()
        .map_err(|e| CallError::InvalidArgument(format!("{method}: {e}")))?;
    patchpanel_proto::decode_request::<T>(bytes)
        .map_err(|e| CallError::InvalidArgument(format!("{method}: {e}")))
}

/// The names of the links in the daemon's namespace, read without
/// privileges. TAP names avoid them: a `vmtap<N>` of another program is
/// never asked for (the writer would refuse it anyway). Empty if the
/// kernel cannot be read; the writer's check still stands.
fn kernel_links() -> BTreeSet<String> {
    match patchpanel_rtnl::Rtnl::new().and_then(|r| r.links()) {
        Ok(links) => links.into_iter().map(|l| l.name).collect(),
        Err(e) => {
            warn!("cannot list the links to choose TAP names: {e}");
            BTreeSet::new()
        }
    }
}

fn log_report(what: &str, result: Result<PlanReport, CallError>) {
    match result {
        Ok(r) if r.failures.is_empty() => {}
        Ok(r) => warn!(
            "{what}: {} error(s): {}",
            r.failures.len(),
            r.failures.join("; ")
        ),
        Err(e) => error!("{what}: {e}"),
    }
}

impl Manager {
    /// Serves one of [`METHODS`].
    pub(crate) fn guest_call(
        &mut self,
        member: &str,
        call: &dbus::Message,
        op: u64,
    ) -> Result<Vec<u8>, CallError> {
        match member {
            names::ARC_STARTUP => self.arc_startup(call, op),
            names::ARC_SHUTDOWN => self.arc_shutdown(call, op),
            names::ARC_VM_STARTUP => self.arcvm_startup(call, op),
            names::ARC_VM_SHUTDOWN => self.arcvm_shutdown(call, op),
            names::TERMINA_VM_STARTUP => self.termina_startup(call, op),
            names::TERMINA_VM_SHUTDOWN => self.termina_shutdown(call, op),
            names::PLUGIN_VM_STARTUP | names::PARALLELS_VM_STARTUP => {
                self.parallels_startup(member, call, op)
            }
            names::PLUGIN_VM_SHUTDOWN | names::PARALLELS_VM_SHUTDOWN => {
                self.parallels_shutdown(member, call, op)
            }
            other => Err(CallError::Unsupported(format!(
                "{other} is not a guest method"
            ))),
        }
    }

    fn arc_startup(&mut self, call: &dbus::Message, op: u64) -> Result<Vec<u8>, CallError> {
        let req: patchpanel_proto::ArcStartupRequest = request(call, names::ARC_STARTUP)?;
        let client = dbus_service::sender(call);
        let uid = match &mut self.dbus {
            Some(d) => d
                .caller_uid(&client)
                .map_err(|e| CallError::Failed(format!("{e:#}")))?,
            None => return Err(CallError::Failed("no bus".into())),
        };
        let pidfd = pids::pin(req.pid, uid)?;
        let netns = NetnsName::new(&format!(
            "{}{}",
            self.options.netns_prefix,
            guests::ARC_NETNS
        ))
        .map_err(|e| CallError::Failed(format!("namespace name: {e}")))?;
        if self.state.arc.is_some() {
            self.may_replace_arc(uid)?;
            warn!("ArcStartup op {op}: ARC is already running (did it crash?); stopping it first");
            self.stop_arc("ARC starts again");
        }
        self.start_arc(
            ArcKind::Container {
                pid: req.pid,
                netns,
            },
            Some(pidfd),
            uid,
            op,
        )?;
        info!(
            "ArcStartup op {op} from {client} (uid {uid}): ARC container pid {} attached",
            req.pid
        );
        Ok(patchpanel_proto::ArcStartupResponse {}.encode_to_vec())
    }

    fn arc_shutdown(&mut self, call: &dbus::Message, op: u64) -> Result<Vec<u8>, CallError> {
        let _req: patchpanel_proto::ArcShutdownRequest = request(call, names::ARC_SHUTDOWN)?;
        match self.state.arc.as_ref().map(|a| a.kind.clone()) {
            Some(ArcKind::Container { pid, .. }) => {
                self.stop_arc(&format!("ArcShutdown op {op}"));
                info!("ArcShutdown op {op}: ARC container (pid {pid}) removed");
            }
            Some(ArcKind::Vm { cid }) => warn!(
                "ArcShutdown op {op}: ARCVM (cid {cid}) is running, not the container; ignored"
            ),
            None => warn!("ArcShutdown op {op}: ARC was not running; nothing to do"),
        }
        Ok(patchpanel_proto::ArcShutdownResponse {}.encode_to_vec())
    }

    fn arcvm_startup(&mut self, call: &dbus::Message, op: u64) -> Result<Vec<u8>, CallError> {
        let req: patchpanel_proto::ArcVmStartupRequest = request(call, names::ARC_VM_STARTUP)?;
        guests::check_id("cid", u64::from(req.cid))?;
        self.require_vm_user()?;
        let client = dbus_service::sender(call);
        let uid = match &mut self.dbus {
            Some(d) => d
                .caller_uid(&client)
                .map_err(|e| CallError::Failed(format!("{e:#}")))?,
            None => return Err(CallError::Failed("no bus".into())),
        };
        if self.state.arc.is_some() {
            self.may_replace_arc(uid)?;
            warn!(
                "ArcVmStartup op {op}: ARC is already running (did it crash?); stopping it first"
            );
            self.stop_arc("ARC starts again");
        }
        self.start_arc(ArcKind::Vm { cid: req.cid }, None, uid, op)?;
        let arc = self
            .state
            .arc
            .as_ref()
            .ok_or_else(|| CallError::Failed("ARCVM vanished during its start".into()))?;
        let response = guests::arcvm_response(arc);
        info!(
            "ArcVmStartup op {op} from {}: ARCVM cid {} on [{}]",
            dbus_service::sender(call),
            req.cid,
            response.tap_device_ifnames.join(", ")
        );
        Ok(response.encode_to_vec())
    }

    fn arcvm_shutdown(&mut self, call: &dbus::Message, op: u64) -> Result<Vec<u8>, CallError> {
        let req: patchpanel_proto::ArcVmShutdownRequest = request(call, names::ARC_VM_SHUTDOWN)?;
        match self.state.arc.as_ref().map(|a| a.kind.clone()) {
            Some(ArcKind::Vm { cid }) if cid == req.cid => {
                self.stop_arc(&format!("ArcVmShutdown op {op}"));
                info!("ArcVmShutdown op {op}: ARCVM cid {cid} removed");
            }
            // The stop of an old VM may arrive after a new one started:
            // only the running cid stops it (upstream does the same).
            Some(ArcKind::Vm { cid }) => warn!(
                "ArcVmShutdown op {op}: cid {} does not match the running ARCVM (cid {cid}); ignored",
                req.cid
            ),
            Some(ArcKind::Container { pid, .. }) => warn!(
                "ArcVmShutdown op {op}: the ARC container (pid {pid}) runs, not ARCVM; ignored"
            ),
            None => warn!("ArcVmShutdown op {op}: ARCVM was not running; nothing to do"),
        }
        Ok(patchpanel_proto::ArcVmShutdownResponse {}.encode_to_vec())
    }

    /// A running ARC may be replaced by root or by the uid that started
    /// it: crosvm's ArcVmStartup must not tear down the container root's
    /// ARC setup attached.
    fn may_replace_arc(&self, uid: u32) -> Result<(), CallError> {
        let Some(arc) = &self.state.arc else {
            return Ok(());
        };
        guests::may_replace_arc(arc, uid)
    }

    fn require_vm_user(&self) -> Result<(), CallError> {
        if self.options.writer.tap_owner_uid.is_none() {
            return Err(CallError::Failed(
                "there is no crosvm user to own the VM's TAP devices (scripts/bootstrap creates it)"
                    .into(),
            ));
        }
        Ok(())
    }

    /// Builds ARC with a device for every uplink it serves.
    fn start_arc(
        &mut self,
        kind: ArcKind,
        pidfd: Option<OwnedFd>,
        started_by: u32,
        op: u64,
    ) -> Result<(), CallError> {
        let mut taken = guests::taken_taps(None, &self.state.vms);
        taken.extend(kernel_links());
        let mut arc = guests::arc_allocate(kind, &mut self.addrs, &taken)?;
        arc.started_by = Some(started_by);
        let what = if arc.is_vm() {
            "ArcVmStartup"
        } else {
            "ArcStartup"
        };
        for uplink in self.uplinks.all() {
            match guests::arc_device(&arc, uplink, &mut self.addrs) {
                Ok(Some(device)) => {
                    arc.devices.insert(uplink.name.to_string(), device);
                }
                Ok(None) => info!(
                    "{what} op {op}: no ARC device for uplink {} ({:?}): technology not served or no free slot",
                    uplink.name, uplink.technology
                ),
                Err(e) => warn!("{what} op {op}: no ARC device for uplink {}: {e}", uplink.name),
            }
        }
        let plan = guests::arc_start_plan(&arc, format!("{what} op {op}"));
        let fds: Vec<_> = pidfd.iter().map(|f| f.as_fd()).collect();
        if let Err(e) = self.apply(plan, &fds) {
            for device in arc.devices.values() {
                guests::arc_device_release(device, &mut self.addrs);
            }
            guests::arc_release(&arc, &mut self.addrs);
            return Err(e);
        }
        for device in arc.devices.values() {
            if let Some(d) = guests::arc_device_proto(&arc, device) {
                self.emit_device(d, DeviceEvent::DeviceAdded);
            }
            info!(
                "{what} op {op}: ARC device {} ({} <-> {} {}) for uplink {}",
                device.bridge,
                device.host_ifname,
                device.guest_ifname,
                arc.slots[device.slot as usize].subnet.guest(),
                device
                    .uplink
                    .as_ref()
                    .map(|u| u.name.as_str())
                    .unwrap_or("-")
            );
        }
        self.state.arc = Some(arc);
        self.save_state();
        Ok(())
    }

    /// Removes ARC (its lifecycle ended, it starts again, or patchpanel
    /// stops) and returns its addresses.
    pub(crate) fn stop_arc(&mut self, why: &str) {
        let Some(arc) = self.state.arc.take() else {
            return;
        };
        for device in arc.devices.values() {
            if let Some(d) = guests::arc_device_proto(&arc, device) {
                self.emit_device(d, DeviceEvent::DeviceRemoved);
            }
        }
        let plan = guests::arc_stop_plan(&arc, format!("stop ARC: {why}"));
        log_report(&format!("removing ARC ({why})"), self.apply(plan, &[]));
        for device in arc.devices.values() {
            guests::arc_device_release(device, &mut self.addrs);
        }
        guests::arc_release(&arc, &mut self.addrs);
        self.save_state();
    }

    /// Makes ARC's devices match the uplinks: one per served uplink, none
    /// for uplinks that went away (or came back with another ifindex).
    pub(crate) fn arc_follow_uplinks(&mut self) {
        let Some(arc) = &self.state.arc else {
            return;
        };
        let (stale, missing) = guests::arc_reconcile(arc, self.uplinks.all());
        let missing: Vec<Uplink> = missing.into_iter().cloned().collect();
        if stale.is_empty() && missing.is_empty() {
            return;
        }
        for name in stale {
            self.remove_arc_device(&name);
        }
        for uplink in missing {
            self.add_arc_device(&uplink);
        }
        self.save_state();
    }

    fn remove_arc_device(&mut self, uplink: &str) {
        let Some(arc) = self.state.arc.as_mut() else {
            return;
        };
        let Some(device) = arc.devices.remove(uplink) else {
            return;
        };
        let arc = arc.clone();
        if let Some(d) = guests::arc_device_proto(&arc, &device) {
            self.emit_device(d, DeviceEvent::DeviceRemoved);
        }
        let op = dbus_service::next_operation();
        let plan = guests::arc_device_removal_plan(
            &arc,
            &device,
            format!("ARC device {} op {op}: {uplink} is gone", device.bridge),
        );
        log_report(
            &format!("removing ARC device {}", device.bridge),
            self.apply(plan, &[]),
        );
        guests::arc_device_release(&device, &mut self.addrs);
        info!(
            "ARC device {} removed (op {op}): uplink {uplink} is gone",
            device.bridge
        );
    }

    fn add_arc_device(&mut self, uplink: &Uplink) {
        let Some(arc) = self.state.arc.clone() else {
            return;
        };
        let device = match guests::arc_device(&arc, uplink, &mut self.addrs) {
            Ok(Some(d)) => d,
            Ok(None) => {
                info!(
                    "no ARC device for uplink {} ({:?}): technology not served or no free slot",
                    uplink.name, uplink.technology
                );
                return;
            }
            Err(e) => {
                warn!("no ARC device for uplink {}: {e}", uplink.name);
                return;
            }
        };
        let op = dbus_service::next_operation();
        let plan = guests::arc_device_plan(
            &arc,
            &device,
            format!("ARC device {} op {op} for {}", device.bridge, uplink.name),
        );
        if let Err(e) = self.apply(plan, &[]) {
            warn!("ARC device for uplink {}: {e}", uplink.name);
            guests::arc_device_release(&device, &mut self.addrs);
            return;
        }
        info!(
            "ARC device {} added (op {op}) for uplink {}",
            device.bridge, uplink.name
        );
        if let Some(d) = guests::arc_device_proto(&arc, &device) {
            self.emit_device(d, DeviceEvent::DeviceAdded);
        }
        if let Some(arc) = self.state.arc.as_mut() {
            arc.devices.insert(uplink.name.to_string(), device);
        }
    }

    fn termina_startup(&mut self, call: &dbus::Message, op: u64) -> Result<Vec<u8>, CallError> {
        let req: patchpanel_proto::TerminaVmStartupRequest =
            request(call, names::TERMINA_VM_STARTUP)?;
        guests::check_id("cid", u64::from(req.cid))?;
        self.require_vm_user()?;
        let vm = self.start_vm(VmKind::Termina, u64::from(req.cid), None, op, call)?;
        Ok(guests::termina_response(&vm).encode_to_vec())
    }

    fn termina_shutdown(&mut self, call: &dbus::Message, op: u64) -> Result<Vec<u8>, CallError> {
        let req: patchpanel_proto::TerminaVmShutdownRequest =
            request(call, names::TERMINA_VM_SHUTDOWN)?;
        self.shutdown_vm(VmKind::Termina, u64::from(req.cid), op, call)?;
        Ok(patchpanel_proto::TerminaVmShutdownResponse {}.encode_to_vec())
    }

    fn parallels_startup(
        &mut self,
        method: &str,
        call: &dbus::Message,
        op: u64,
    ) -> Result<Vec<u8>, CallError> {
        let req: patchpanel_proto::PluginVmStartupRequest = request(call, method)?;
        guests::check_id("id", req.id)?;
        let index = guests::parallels_index(&self.addrs, req.subnet_index)?;
        self.require_vm_user()?;
        let vm = self.start_vm(VmKind::Parallels, req.id, index, op, call)?;
        Ok(guests::parallels_response(&vm).encode_to_vec())
    }

    fn parallels_shutdown(
        &mut self,
        method: &str,
        call: &dbus::Message,
        op: u64,
    ) -> Result<Vec<u8>, CallError> {
        let req: patchpanel_proto::PluginVmShutdownRequest = request(call, method)?;
        self.shutdown_vm(VmKind::Parallels, req.id, op, call)?;
        Ok(patchpanel_proto::PluginVmShutdownResponse {}.encode_to_vec())
    }

    /// Starts a VM; one already running with the same id is stopped first.
    fn start_vm(
        &mut self,
        kind: VmKind,
        id: u64,
        index: Option<u32>,
        op: u64,
        call: &dbus::Message,
    ) -> Result<VmGuest, CallError> {
        if let Some(pos) = self.vm_position(kind, id) {
            warn!(
                "{} {id} is already running (did it crash?); stopping it first",
                kind.name()
            );
            self.stop_vm(pos, "it starts again");
        }
        let mut taken = guests::taken_taps(self.state.arc.as_ref(), &self.state.vms);
        taken.extend(kernel_links());
        let mut vm = guests::vm_allocate(kind, id, index, &mut self.addrs, &taken)?;
        vm.adb_sideload = kind == VmKind::Termina && self.adb.policy.allowed;
        let plan = guests::vm_start_plan(&vm, format!("start {} op {op}", vm.label()));
        if let Err(e) = self.apply(plan, &[]) {
            guests::vm_release(&vm, &mut self.addrs);
            return Err(e);
        }
        info!(
            "{} started (op {op} from {}): {} {} <-> {}{}",
            vm.label(),
            dbus_service::sender(call),
            vm.tap,
            vm.subnet.host(),
            vm.subnet.guest(),
            vm.lxd
                .map(|l| format!(", LXD {} via the VM", l.subnet))
                .unwrap_or_default()
        );
        self.emit_device(guests::vm_device(&vm), DeviceEvent::DeviceAdded);
        self.state.vms.push(vm.clone());
        self.save_state();
        Ok(vm)
    }

    fn vm_position(&self, kind: VmKind, id: u64) -> Option<usize> {
        self.state
            .vms
            .iter()
            .position(|v| v.kind == kind && v.id == id)
    }

    fn shutdown_vm(
        &mut self,
        kind: VmKind,
        id: u64,
        op: u64,
        call: &dbus::Message,
    ) -> Result<(), CallError> {
        let pos = self.vm_position(kind, id).ok_or_else(|| {
            CallError::InvalidArgument(format!("no {} with id {id} is running", kind.name()))
        })?;
        self.stop_vm(
            pos,
            &format!("shutdown op {op} from {}", dbus_service::sender(call)),
        );
        Ok(())
    }

    /// Removes the VM at `pos` of the state and returns its addresses.
    fn stop_vm(&mut self, pos: usize, why: &str) {
        if pos >= self.state.vms.len() {
            return;
        }
        let vm = self.state.vms.remove(pos);
        self.emit_device(guests::vm_device(&vm), DeviceEvent::DeviceRemoved);
        let plan = guests::vm_stop_plan(&vm, format!("stop {}: {why}", vm.label()));
        log_report(
            &format!("removing {} ({why})", vm.label()),
            self.apply(plan, &[]),
        );
        guests::vm_release(&vm, &mut self.addrs);
        info!("{} stopped ({why})", vm.label());
        self.save_state();
    }

    /// A clean stop: every guest goes.
    pub(crate) fn stop_guests(&mut self, why: &str) {
        self.stop_arc(why);
        while !self.state.vms.is_empty() {
            let last = self.state.vms.len() - 1;
            self.stop_vm(last, why);
        }
    }

    /// The links and namespace of a previous run's guests, kept by the
    /// start's cleanup so that they can be re-adopted.
    pub(crate) fn guest_leftovers(prev: &State) -> (Vec<IfName>, Vec<NetnsName>) {
        let mut links: Vec<IfName> = prev.vms.iter().map(|v| v.tap.clone()).collect();
        let mut netns = Vec::new();
        if let Some(arc) = &prev.arc {
            links.extend(arc.host_links());
            if let ArcKind::Container { netns: n, .. } = &arc.kind {
                netns.push(n.clone());
            }
        }
        (links, netns)
    }

    /// A crash restart: guests whose links survived get their addresses
    /// back and their rules applied again; the others are removed.
    pub(crate) fn readopt_guests(&mut self, prev: &State) {
        if let Some(arc) = &prev.arc {
            let adopted = guests::arc_adopt(arc, &mut self.addrs).and_then(|()| {
                self.apply(guests::arc_readopt_plan(arc, "re-adopt ARC".into()), &[])
                    .map_err(|e| {
                        guests::arc_release(arc, &mut self.addrs);
                        e.to_string()
                    })
            });
            match adopted {
                Ok(_) => {
                    info!(
                        "re-adopted ARC of the previous run ({} device(s))",
                        arc.devices.len()
                    );
                    self.state.arc = Some(arc.clone());
                }
                Err(e) => {
                    warn!("ARC of the previous run cannot be re-adopted ({e}); removing it");
                    self.apply_teardown(guests::arc_stop_plan(
                        arc,
                        "remove the previous ARC".into(),
                    ));
                }
            }
        }
        for vm in &prev.vms {
            let adopted = guests::vm_adopt(vm, &mut self.addrs).and_then(|()| {
                self.apply(
                    guests::vm_readopt_plan(vm, format!("re-adopt {}", vm.label())),
                    &[],
                )
                .map_err(|e| {
                    guests::vm_release(vm, &mut self.addrs);
                    e.to_string()
                })
            });
            match adopted {
                Ok(_) => {
                    info!(
                        "re-adopted {} of the previous run on {}",
                        vm.label(),
                        vm.tap
                    );
                    self.state.vms.push(vm.clone());
                }
                Err(e) => {
                    warn!(
                        "{} of the previous run cannot be re-adopted ({e}); removing it",
                        vm.label()
                    );
                    self.apply_teardown(guests::vm_stop_plan(
                        vm,
                        format!("remove the previous {}", vm.label()),
                    ));
                }
            }
        }
        self.save_state();
    }

    /// Removes what is left of a guest that could not be re-adopted: its
    /// links and routes. Its rules went with the start's cleanup already.
    fn apply_teardown(&mut self, mut plan: Plan) {
        plan.steps
            .retain(|s| !matches!(s, patchpanel_ipc::datapath::Step::Firewall(_)));
        let label = plan.label.clone();
        log_report(&label, self.apply(plan, &[]));
    }

    fn emit_device(&self, device: NetworkDevice, event: DeviceEvent) {
        let signal = NetworkDeviceChangedSignal {
            device: Some(device),
            event: event as i32,
        };
        if let Some(dbus) = &self.dbus {
            dbus.emit(names::NETWORK_DEVICE_CHANGED, signal.encode_to_vec());
        }
    }
}
