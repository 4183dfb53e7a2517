//! The guest lifecycles as the daemon runs them: ARC (container and VM),
//! Termina and Parallels VMs. Each call arrives decoded and checked
//! ([`crate::dbus_service::Call`]); this module asks [`crate::guests`] for
//! names, addresses and plans, sends the plans through the [`Env`], keeps
//! the guests' part of the state and queues `NetworkDeviceChanged`. ARC's
//! devices follow the uplinks; after a crash the previous run's guests are
//! re-adopted.

use std::collections::BTreeSet;
use std::os::fd::{AsFd, OwnedFd};

use log::{error, info, warn};
use patchpanel_ipc::datapath::{Plan, PlanReport, Step};
use patchpanel_ipc::{IfName, NetnsName};
use patchpanel_proto::network_device_changed_signal::Event as DeviceEvent;
use patchpanel_uplinks::Uplink;
use prost::Message as _;

use crate::env::{next_operation, Env};
use crate::error::CallError;
use crate::guests::{self, ArcBridges, ArcGuest, ArcKind, VmGuest, VmKind, VmUser};
use crate::lifeline::{Guarded, LifelineWatcher};
use crate::pids;
use crate::state::State;

/// The guests' part of the state.
#[derive(Debug)]
pub struct Guests<'a> {
    pub arc: &'a mut Option<ArcGuest>,
    /// What a stopped ARC left for the next one.
    pub arc_bridges: &'a mut ArcBridges,
    pub vms: &'a mut Vec<VmGuest>,
}

/// Site settings the guests follow.
#[derive(Debug, Clone)]
pub struct Settings {
    pub netns_prefix: String,
    /// Whether there is a VM user to own TAPs.
    pub vm_user: bool,
    /// Uids that may run VMs of their own (config `vm_owners`).
    pub vm_owners: BTreeSet<u32>,
    /// Termina VMs started now may `adb connect` to ARC.
    pub adb_allowed: bool,
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

/// Who asks for a VM: the caller's uid, and when that uid is one of
/// `vm_owners`, the user and process the VM will belong to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmCaller {
    pub uid: u32,
    pub user: Option<VmUser>,
}

fn require_vm_user(settings: &Settings) -> Result<(), CallError> {
    if !settings.vm_user {
        return Err(CallError::Failed(
            "there is no crosvm user to own the VM's TAP devices (scripts/bootstrap creates it)"
                .into(),
        ));
    }
    Ok(())
}

/// `ArcStartup`: attaches the container of `pid`, which `uid` owns (or
/// root's).
pub fn arc_startup(
    env: &mut Env<'_>,
    mut guests: Guests<'_>,
    settings: &Settings,
    pid: i32,
    uid: u32,
    client: &str,
    op: u64,
) -> Result<Vec<u8>, CallError> {
    let pidfd = pids::pin(pid, uid)?;
    let netns = NetnsName::new(&format!("{}{}", settings.netns_prefix, guests::ARC_NETNS))
        .map_err(|e| CallError::Failed(format!("namespace name: {e}")))?;
    replace_running_arc(env, &mut guests, uid, "ArcStartup", op)?;
    start_arc(
        env,
        &mut guests,
        ArcKind::Container { pid, netns },
        Some(pidfd),
        uid,
        op,
    )?;
    info!("ArcStartup op {op} from {client} (uid {uid}): ARC container pid {pid} attached");
    Ok(patchpanel_proto::ArcStartupResponse {}.encode_to_vec())
}

/// `ArcShutdown`.
pub fn arc_shutdown(env: &mut Env<'_>, guests: Guests<'_>, op: u64) -> Vec<u8> {
    match guests.arc.as_ref().map(|a| a.kind.clone()) {
        Some(ArcKind::Container { pid, .. }) => {
            stop_arc(
                env,
                guests.arc,
                Some(guests.arc_bridges),
                &format!("ArcShutdown op {op}"),
            );
            info!("ArcShutdown op {op}: ARC container (pid {pid}) removed");
        }
        Some(ArcKind::Vm { cid }) => {
            warn!("ArcShutdown op {op}: ARCVM (cid {cid}) is running, not the container; ignored")
        }
        None => warn!("ArcShutdown op {op}: ARC was not running; nothing to do"),
    }
    patchpanel_proto::ArcShutdownResponse {}.encode_to_vec()
}

/// `ArcVmStartup` for `cid`, asked by `uid`.
pub fn arcvm_startup(
    env: &mut Env<'_>,
    mut guests: Guests<'_>,
    settings: &Settings,
    cid: u32,
    uid: u32,
    client: &str,
    op: u64,
) -> Result<Vec<u8>, CallError> {
    require_vm_user(settings)?;
    replace_running_arc(env, &mut guests, uid, "ArcVmStartup", op)?;
    start_arc(env, &mut guests, ArcKind::Vm { cid }, None, uid, op)?;
    let arc = guests
        .arc
        .as_ref()
        .ok_or_else(|| CallError::Failed("ARCVM vanished during its start".into()))?;
    let response = guests::arcvm_response(arc);
    info!(
        "ArcVmStartup op {op} from {client}: ARCVM cid {cid} on [{}]",
        response.tap_device_ifnames.join(", ")
    );
    Ok(response.encode_to_vec())
}

/// `ArcVmShutdown` for `cid`.
pub fn arcvm_shutdown(env: &mut Env<'_>, guests: Guests<'_>, cid: u32, op: u64) -> Vec<u8> {
    match guests.arc.as_ref().map(|a| a.kind.clone()) {
        Some(ArcKind::Vm { cid: running }) if running == cid => {
            stop_arc(env, guests.arc, Some(guests.arc_bridges), &format!("ArcVmShutdown op {op}"));
            info!("ArcVmShutdown op {op}: ARCVM cid {cid} removed");
        }
        // The stop of an old VM may arrive after a new one started: only
        // the running cid stops it (upstream does the same).
        Some(ArcKind::Vm { cid: running }) => warn!(
            "ArcVmShutdown op {op}: cid {cid} does not match the running ARCVM (cid {running}); ignored"
        ),
        Some(ArcKind::Container { pid, .. }) => warn!(
            "ArcVmShutdown op {op}: the ARC container (pid {pid}) runs, not ARCVM; ignored"
        ),
        None => warn!("ArcVmShutdown op {op}: ARCVM was not running; nothing to do"),
    }
    patchpanel_proto::ArcVmShutdownResponse {}.encode_to_vec()
}

/// A running ARC (did it crash?) is stopped before a new one starts, if
/// `uid` may replace it.
fn replace_running_arc(
    env: &mut Env<'_>,
    guests: &mut Guests<'_>,
    uid: u32,
    what: &str,
    op: u64,
) -> Result<(), CallError> {
    if let Some(arc) = guests.arc.as_ref() {
        guests::may_replace_arc(arc, uid)?;
        warn!("{what} op {op}: ARC is already running (did it crash?); stopping it first");
        stop_arc(
            env,
            guests.arc,
            Some(guests.arc_bridges),
            "ARC starts again",
        );
    }
    Ok(())
}

/// Builds ARC with a device for every uplink it serves.
fn start_arc(
    env: &mut Env<'_>,
    guests: &mut Guests<'_>,
    kind: ArcKind,
    pidfd: Option<OwnedFd>,
    started_by: u32,
    op: u64,
) -> Result<(), CallError> {
    let mut taken = guests::taken_taps(None, guests.vms);
    let listed = kernel_links();
    taken.extend(listed.iter().cloned());
    let mut arc = guests::arc_allocate(kind, env.addrs, &taken)?;
    arc.started_by = Some(started_by);
    let what = if arc.is_vm() {
        "ArcVmStartup"
    } else {
        "ArcStartup"
    };
    for uplink in env.uplinks.all() {
        match guests::arc_device(&arc, uplink, env.addrs) {
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
    let (reuse, stale) = guests.arc_bridges.take_for(&arc, &listed);
    remove_kept_bridges(
        env,
        &stale,
        &format!("{what} op {op}: the previous ARC's bridges that do not fit"),
    );
    let plan = guests::arc_start_plan(&arc, &reuse, format!("{what} op {op}"));
    let fds: Vec<_> = pidfd.iter().map(|f| f.as_fd()).collect();
    if let Err(e) = env.apply(plan, &fds) {
        for device in arc.devices.values() {
            guests::arc_device_release(device, env.addrs);
        }
        // The bridges it would have reused are still there, as they were.
        guests.arc_bridges.keep_only(&arc, &reuse);
        guests::arc_release(&arc, env.addrs);
        return Err(e);
    }
    for device in arc.devices.values() {
        if let Some(d) = guests::arc_device_proto(&arc, device) {
            env.emit(d, DeviceEvent::DeviceAdded);
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
    *guests.arc = Some(arc);
    Ok(())
}

/// Removes ARC (its lifecycle ended, it starts again, or patchpanel stops)
/// and returns its addresses. With `keep`, its bridges stay there for the
/// next ARC (see [`guests::ArcBridges`]).
pub fn stop_arc(
    env: &mut Env<'_>,
    slot: &mut Option<ArcGuest>,
    keep: Option<&mut ArcBridges>,
    why: &str,
) {
    let Some(arc) = slot.take() else {
        return;
    };
    for device in arc.devices.values() {
        if let Some(d) = guests::arc_device_proto(&arc, device) {
            env.emit(d, DeviceEvent::DeviceRemoved);
        }
    }
    let bridges = if keep.is_some() {
        guests::Bridges::Keep
    } else {
        guests::Bridges::Delete
    };
    let plan = guests::arc_stop_plan(&arc, bridges, format!("stop ARC: {why}"));
    let applied = plan
        .map_err(CallError::from)
        .and_then(|plan| env.apply(plan, &[]));
    if let (Some(kept), Ok(_)) = (keep, &applied) {
        kept.keep(&arc);
    }
    log_report(&format!("removing ARC ({why})"), applied);
    for device in arc.devices.values() {
        guests::arc_device_release(device, env.addrs);
    }
    guests::arc_release(&arc, env.addrs);
}

/// Deletes bridges a stopped ARC kept (`why` labels the plan and the log).
fn remove_kept_bridges(env: &mut Env<'_>, names: &[IfName], why: &str) {
    if names.is_empty() {
        return;
    }
    let list: Vec<&str> = names.iter().map(|n| n.as_str()).collect();
    log_report(
        &format!("removing {} ({why})", list.join(", ")),
        env.apply(
            guests::kept_bridges_removal_plan(names, why.to_string()),
            &[],
        ),
    );
}

/// Makes ARC's devices match the uplinks: one per served uplink, none for
/// uplinks that went away (or came back with another ifindex).
pub fn arc_follow_uplinks(env: &mut Env<'_>, slot: &mut Option<ArcGuest>, kept: &mut ArcBridges) {
    let orphans = kept.take_orphans(env.uplinks.all());
    remove_kept_bridges(env, &orphans, "kept ARC bridges whose uplinks are gone");
    let Some(arc) = slot.as_ref() else {
        return;
    };
    let (stale, missing) = guests::arc_reconcile(arc, env.uplinks.all());
    let missing: Vec<Uplink> = missing.into_iter().cloned().collect();
    for name in stale {
        remove_arc_device(env, slot, &name);
    }
    for uplink in missing {
        add_arc_device(env, slot, &uplink);
    }
}

fn remove_arc_device(env: &mut Env<'_>, slot: &mut Option<ArcGuest>, uplink: &str) {
    let Some(arc) = slot.as_mut() else {
        return;
    };
    let Some(device) = arc.devices.remove(uplink) else {
        return;
    };
    let arc = arc.clone();
    if let Some(d) = guests::arc_device_proto(&arc, &device) {
        env.emit(d, DeviceEvent::DeviceRemoved);
    }
    let op = next_operation();
    let plan = guests::arc_device_removal_plan(
        &arc,
        &device,
        format!("ARC device {} op {op}: {uplink} is gone", device.bridge),
    );
    log_report(
        &format!("removing ARC device {}", device.bridge),
        plan.map_err(CallError::from)
            .and_then(|plan| env.apply(plan, &[])),
    );
    guests::arc_device_release(&device, env.addrs);
    info!(
        "ARC device {} removed (op {op}): uplink {uplink} is gone",
        device.bridge
    );
}

fn add_arc_device(env: &mut Env<'_>, slot: &mut Option<ArcGuest>, uplink: &Uplink) {
    let Some(arc) = slot.clone() else {
        return;
    };
    let device = match guests::arc_device(&arc, uplink, env.addrs) {
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
    let op = next_operation();
    let plan = guests::arc_device_plan(
        &arc,
        &device,
        format!("ARC device {} op {op} for {}", device.bridge, uplink.name),
    );
    if let Err(e) = env.apply(plan, &[]) {
        warn!("ARC device for uplink {}: {e}", uplink.name);
        guests::arc_device_release(&device, env.addrs);
        return;
    }
    info!(
        "ARC device {} added (op {op}) for uplink {}",
        device.bridge, uplink.name
    );
    if let Some(d) = guests::arc_device_proto(&arc, &device) {
        env.emit(d, DeviceEvent::DeviceAdded);
    }
    if let Some(arc) = slot.as_mut() {
        arc.devices.insert(uplink.name.to_string(), device);
    }
}

/// `TerminaVmStartup` for `cid`.
pub fn termina_startup(
    env: &mut Env<'_>,
    guests: Guests<'_>,
    settings: &Settings,
    start: VmStart<'_>,
    cid: u32,
) -> Result<Vec<u8>, CallError> {
    require_vm_user(settings)?;
    let vm = start_vm(
        env,
        guests,
        settings,
        start,
        VmKind::Termina,
        u64::from(cid),
        None,
    )?;
    Ok(guests::termina_response(&vm).encode_to_vec())
}

/// `ParallelsVmStartup` (or `PluginVmStartup`) for `id`.
pub fn parallels_startup(
    env: &mut Env<'_>,
    guests: Guests<'_>,
    settings: &Settings,
    start: VmStart<'_>,
    id: u64,
    subnet_index: i32,
) -> Result<Vec<u8>, CallError> {
    let index = guests::parallels_index(env.addrs, subnet_index)?;
    require_vm_user(settings)?;
    let vm = start_vm(env, guests, settings, start, VmKind::Parallels, id, index)?;
    Ok(guests::parallels_response(&vm).encode_to_vec())
}

/// `BruschettaVmStartup` or `BorealisVmStartup` for `id` (the answer
/// is the caller's to encode: the two messages differ in type only).
pub fn bruschetta_or_borealis_startup(
    env: &mut Env<'_>,
    guests: Guests<'_>,
    settings: &Settings,
    start: VmStart<'_>,
    kind: VmKind,
    id: u64,
) -> Result<Vec<u8>, CallError> {
    require_vm_user(settings)?;
    let vm = start_vm(env, guests, settings, start, kind, id, None)?;
    Ok(match kind {
        VmKind::Borealis => guests::borealis_response(&vm).encode_to_vec(),
        _ => guests::bruschetta_response(&vm).encode_to_vec(),
    })
}

/// `TerminaVmShutdown`, `ParallelsVmShutdown`, `BruschettaVmShutdown`,
/// `BorealisVmShutdown`: the VM `id` of `kind`. A user's own VM is stopped
/// only by that user or root.
pub fn vm_shutdown(
    env: &mut Env<'_>,
    vms: &mut Vec<VmGuest>,
    start: VmStart<'_>,
    kind: VmKind,
    id: u64,
) -> Result<(), CallError> {
    let pos = vm_position(vms, kind, id).ok_or_else(|| {
        CallError::InvalidArgument(format!("no {} with id {id} is running", kind.name()))
    })?;
    if let Some(user) = vms[pos].user {
        if start.caller.uid != user.uid && start.caller.uid != 0 {
            return Err(CallError::InvalidArgument(format!(
                "{} {id} belongs to uid {}, not to the caller (uid {})",
                kind.name(),
                user.uid,
                start.caller.uid
            )));
        }
    }
    stop_vm(
        env,
        vms,
        start.lifelines,
        pos,
        &format!("shutdown op {} from {}", start.op, start.client),
    );
    Ok(())
}

/// A call that starts or stops a VM: who asked, and the lifelines a
/// user's VM is watched with.
#[derive(Debug)]
pub struct VmStart<'a> {
    pub caller: VmCaller,
    pub lifelines: &'a mut LifelineWatcher,
    pub client: &'a str,
    pub op: u64,
}

/// Starts a VM; one already running with the same id is stopped first,
/// unless it or the new one is a user's own (a user's VM runs until its
/// process exits: the id is taken until then).
fn start_vm(
    env: &mut Env<'_>,
    guests: Guests<'_>,
    settings: &Settings,
    start: VmStart<'_>,
    kind: VmKind,
    id: u64,
    index: Option<u32>,
) -> Result<VmGuest, CallError> {
    let VmStart {
        caller,
        lifelines,
        client,
        op,
    } = start;
    if let Some(user) = caller.user {
        if !settings.vm_owners.contains(&user.uid) {
            return Err(CallError::InvalidArgument(format!(
                "uid {} may not own a VM's TAP (not in vm_owners)",
                user.uid
            )));
        }
    }
    if let Some(pos) = vm_position(guests.vms, kind, id) {
        if guests.vms[pos].user.is_some() || caller.user.is_some() {
            return Err(CallError::InvalidArgument(format!(
                "{} {id} is running already{}; choose another id",
                kind.name(),
                guests.vms[pos]
                    .user
                    .map(|u| format!(" (uid {}'s, until process {} exits)", u.uid, u.process.pid))
                    .unwrap_or_default()
            )));
        }
        warn!(
            "{} {id} is already running (did it crash?); stopping it first",
            kind.name()
        );
        stop_vm(env, guests.vms, lifelines, pos, "it starts again");
    }
    // The process a user's VM lives with, pinned before anything is made.
    let pinned = match caller.user {
        Some(user) => Some((
            user,
            user.process.pin().ok_or_else(|| {
                CallError::InvalidArgument(format!(
                    "process {} that asked for the VM has exited",
                    user.process.pid
                ))
            })?,
        )),
        None => None,
    };
    let mut taken = guests::taken_taps(guests.arc.as_ref(), guests.vms);
    taken.extend(kernel_links());
    let mut vm = guests::vm_allocate(kind, id, index, env.addrs, &taken)?;
    vm.adb_sideload = kind == VmKind::Termina && settings.adb_allowed;
    vm.user = caller.user;
    let plan = guests::vm_start_plan(&vm, format!("start {} op {op}", vm.label()));
    if let Err(e) = env.apply(plan, &[]) {
        guests::vm_release(&vm, env.addrs);
        return Err(e);
    }
    guests.vms.push(vm.clone());
    if let Some((user, pidfd)) = pinned {
        if let Err(e) = lifelines.watch(pidfd, vm_lifeline(&vm, user)) {
            let last = guests.vms.len() - 1;
            stop_vm(
                env,
                guests.vms,
                lifelines,
                last,
                "its process cannot be watched",
            );
            return Err(CallError::Failed(format!(
                "cannot watch process {} that asked for the VM: {e}",
                user.process.pid
            )));
        }
    }
    info!(
        "{} started (op {op} from {client}{}): {} {} <-> {}{}",
        vm.label(),
        vm.user
            .map(|u| format!(
                ", uid {}'s own until process {} exits",
                u.uid, u.process.pid
            ))
            .unwrap_or_default(),
        vm.tap,
        vm.subnet.host(),
        vm.subnet.guest(),
        vm.lxd
            .map(|l| format!(", LXD {} via the VM", l.subnet))
            .unwrap_or_default()
    );
    env.emit(guests::vm_device(&vm), DeviceEvent::DeviceAdded);
    Ok(vm)
}

fn vm_lifeline(vm: &VmGuest, user: VmUser) -> Guarded {
    Guarded::Vm {
        kind: vm.kind,
        id: vm.id,
        process: user.process,
    }
}

/// The process that started a user's VM exited: the VM goes, if it is
/// still that process's.
pub fn vm_owner_exited(
    env: &mut Env<'_>,
    vms: &mut Vec<VmGuest>,
    lifelines: &mut LifelineWatcher,
    kind: VmKind,
    id: u64,
    process: crate::pids::Owner,
) {
    if let Some(pos) = vm_position(vms, kind, id) {
        if vms[pos].user.is_some_and(|u| u.process == process) {
            stop_vm(
                env,
                vms,
                lifelines,
                pos,
                &format!("process {} that started it exited", process.pid),
            );
        }
    }
}

fn vm_position(vms: &[VmGuest], kind: VmKind, id: u64) -> Option<usize> {
    vms.iter().position(|v| v.kind == kind && v.id == id)
}

/// Removes the VM at `pos`, and its process's lifeline if it is a user's.
fn stop_vm(
    env: &mut Env<'_>,
    vms: &mut Vec<VmGuest>,
    lifelines: &mut LifelineWatcher,
    pos: usize,
    why: &str,
) {
    if let Some(vm) = remove_vm(env, vms, pos, why) {
        if let Some(user) = vm.user {
            lifelines.forget(vm_lifeline(&vm, user));
        }
    }
}

/// Removes the VM at `pos`, returns its addresses, and says which it was.
fn remove_vm(env: &mut Env<'_>, vms: &mut Vec<VmGuest>, pos: usize, why: &str) -> Option<VmGuest> {
    if pos >= vms.len() {
        return None;
    }
    let vm = vms.remove(pos);
    env.emit(guests::vm_device(&vm), DeviceEvent::DeviceRemoved);
    let plan = guests::vm_stop_plan(&vm, format!("stop {}: {why}", vm.label()));
    log_report(
        &format!("removing {} ({why})", vm.label()),
        plan.map_err(CallError::from)
            .and_then(|plan| env.apply(plan, &[])),
    );
    guests::vm_release(&vm, env.addrs);
    info!("{} stopped ({why})", vm.label());
    Some(vm)
}

/// A clean stop: every guest goes.
pub fn stop_all(env: &mut Env<'_>, guests: Guests<'_>, why: &str) {
    stop_arc(env, guests.arc, None, why);
    // Bridges a previous stop of ARC kept are no guest: they go with every
    // other link patchpanel owns, in the stop's removal that follows.
    guests.arc_bridges.0.clear();
    while !guests.vms.is_empty() {
        let last = guests.vms.len() - 1;
        remove_vm(env, guests.vms, last, why);
    }
}

/// The links and namespace of a previous run's guests, kept by the start's
/// cleanup so that they can be re-adopted.
pub fn leftovers(prev: &State) -> (Vec<IfName>, Vec<NetnsName>) {
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

/// A crash restart: guests whose links survived get their addresses back
/// and their rules applied again; the others are removed, as is a user's
/// VM whose process has exited.
pub fn readopt(
    env: &mut Env<'_>,
    guests: Guests<'_>,
    lifelines: &mut LifelineWatcher,
    prev: &State,
) {
    if let Some(arc) = &prev.arc {
        let adopted = guests::arc_adopt(arc, env.addrs).and_then(|()| {
            env.apply(guests::arc_readopt_plan(arc, "re-adopt ARC".into()), &[])
                .inspect_err(|_| guests::arc_release(arc, env.addrs))
        });
        match adopted {
            Ok(_) => {
                info!(
                    "re-adopted ARC of the previous run ({} device(s))",
                    arc.devices.len()
                );
                *guests.arc = Some(arc.clone());
            }
            Err(e) => {
                warn!("ARC of the previous run cannot be re-adopted ({e}); removing it");
                apply_teardown(
                    env,
                    guests::arc_stop_plan(
                        arc,
                        guests::Bridges::Delete,
                        "remove the previous ARC".into(),
                    ),
                );
            }
        }
    }
    for vm in &prev.vms {
        // A user's VM lives with the process that started it; watched again
        // once its network is back.
        let pinned = match vm.user {
            Some(user) => match user.process.pin() {
                Some(pidfd) => Some((user, pidfd)),
                None => {
                    info!(
                        "{} of the previous run is not re-adopted: process {} that started it has exited",
                        vm.label(),
                        user.process.pid
                    );
                    apply_teardown(
                        env,
                        guests::vm_stop_plan(vm, format!("remove the previous {}", vm.label())),
                    );
                    continue;
                }
            },
            None => None,
        };
        let adopted = guests::vm_adopt(vm, env.addrs).and_then(|()| {
            env.apply(
                guests::vm_readopt_plan(vm, format!("re-adopt {}", vm.label())),
                &[],
            )
            .inspect_err(|_| guests::vm_release(vm, env.addrs))
        });
        match adopted {
            Ok(_) => {
                info!(
                    "re-adopted {} of the previous run on {}",
                    vm.label(),
                    vm.tap
                );
                guests.vms.push(vm.clone());
                if let Some((user, pidfd)) = pinned {
                    if let Err(e) = lifelines.watch(pidfd, vm_lifeline(vm, user)) {
                        let last = guests.vms.len() - 1;
                        stop_vm(
                            env,
                            guests.vms,
                            lifelines,
                            last,
                            &format!("its process cannot be watched: {e}"),
                        );
                    }
                }
            }
            Err(e) => {
                warn!(
                    "{} of the previous run cannot be re-adopted ({e}); removing it",
                    vm.label()
                );
                apply_teardown(
                    env,
                    guests::vm_stop_plan(vm, format!("remove the previous {}", vm.label())),
                );
            }
        }
    }
}

/// Removes what is left of a guest that could not be re-adopted: its links
/// and routes. Its rules went with the start's cleanup already.
fn apply_teardown(env: &mut Env<'_>, plan: Result<Plan, patchpanel_firewall::InverseError>) {
    let mut plan = match plan {
        Ok(plan) => plan,
        Err(e) => {
            error!("cannot remove a guest of the previous run: {e}");
            return;
        }
    };
    plan.steps.retain(|s| !matches!(s, Step::Firewall(_)));
    let label = plan.label.clone();
    log_report(&label, env.apply(plan, &[]));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::env::{Effects, FakeDatapath};
    use crate::uplinks::UplinkView;
    use patchpanel_addr::AddressManager;
    use patchpanel_ipc::Request;

    fn settings() -> Settings {
        Settings {
            netns_prefix: "pp-".into(),
            vm_user: true,
            vm_owners: BTreeSet::from([1000]),
            adb_allowed: false,
        }
    }

    /// A lifeline watcher and the poll it registers with (kept alive).
    fn watcher() -> (mio::Poll, LifelineWatcher) {
        let poll = mio::Poll::new().expect("poll");
        let w = LifelineWatcher::new(poll.registry().try_clone().expect("registry"), 100);
        (poll, w)
    }

    fn call<'a>(caller: VmCaller, lifelines: &'a mut LifelineWatcher) -> VmStart<'a> {
        VmStart {
            caller,
            lifelines,
            client: ":1.9",
            op: 1,
        }
    }

    /// A fresh run (the previous run's addresses not allocated yet)
    /// re-adopting a previous run that held `prev_vm`: what it re-adopted,
    /// how many processes it watches, and whether every address went back.
    fn readopt_one(prev_vm: &VmGuest, datapath: &mut FakeDatapath) -> (Vec<VmGuest>, usize, bool) {
        let mut addrs = AddressManager::new();
        let prev = State {
            vms: vec![prev_vm.clone()],
            ..State::default()
        };
        let uplinks = UplinkView::default();
        let mut effects = Effects::default();
        let (mut arc, mut vms) = (None, Vec::new());
        let (_poll, mut lifelines) = watcher();
        let mut env = Env::new(datapath, &mut addrs, &uplinks, &mut effects);
        readopt(
            &mut env,
            Guests {
                arc: &mut arc,
                arc_bridges: &mut ArcBridges::default(),
                vms: &mut vms,
            },
            &mut lifelines,
            &prev,
        );
        (vms, lifelines.watched(), addrs.allocations().is_empty())
    }

    const CONCIERGE: VmCaller = VmCaller { uid: 0, user: None };

    /// A caller that is one of `vm_owners`, as this test process.
    fn alice() -> VmCaller {
        VmCaller {
            uid: 1000,
            user: Some(VmUser {
                uid: 1000,
                process: crate::pids::Owner::of(std::process::id()).expect("this process"),
            }),
        }
    }

    #[test]
    fn readoption_that_meets_a_vanished_vm_removes_what_is_left_and_keeps_no_address() {
        let mut addrs = AddressManager::new();
        let prev_vm = guests::vm_allocate(VmKind::Termina, 7, None, &mut addrs, &BTreeSet::new())
            .expect("vm");
        let mut datapath = FakeDatapath::default();
        // The re-adoption plan fails: the TAP is gone.
        datapath.fail_next(CallError::Failed("vmtap0: no such device".into()));
        let (vms, _, released) = readopt_one(&prev_vm, &mut datapath);
        assert!(vms.is_empty(), "not re-adopted");
        assert!(released, "its subnet went back");
        let labels = datapath.plan_labels();
        assert_eq!(
            labels,
            [
                format!("re-adopt {}", prev_vm.label()),
                format!("remove the previous {}", prev_vm.label())
            ]
        );
        // The removal carries no firewall step: the start's cleanup took
        // those.
        let Request::Apply(removal) = &datapath.requests[1] else {
            panic!("{:?}", datapath.requests[1]);
        };
        assert!(!removal.steps.iter().any(|s| matches!(s, Step::Firewall(_))));
    }

    #[test]
    fn a_vm_the_writer_refuses_keeps_no_address_and_no_record() {
        let mut addrs = AddressManager::new();
        let mut datapath = FakeDatapath::default();
        datapath.fail_next(CallError::Failed("TUNSETIFF failed".into()));
        let uplinks = UplinkView::default();
        let mut effects = Effects::default();
        let (mut arc, mut vms) = (None, Vec::new());
        let mut env = Env::new(&mut datapath, &mut addrs, &uplinks, &mut effects);
        let (_poll, mut lifelines) = watcher();
        let e = termina_startup(
            &mut env,
            Guests {
                arc: &mut arc,
                arc_bridges: &mut ArcBridges::default(),
                vms: &mut vms,
            },
            &settings(),
            call(CONCIERGE, &mut lifelines),
            7,
        );
        assert!(e.is_err());
        assert!(vms.is_empty());
        assert!(addrs.allocations().is_empty());
        assert!(effects.signals.is_empty(), "no device was announced");
    }

    #[test]
    fn a_users_vm_is_theirs_until_its_process_exits() {
        let mut addrs = AddressManager::new();
        let mut datapath = FakeDatapath::default();
        let uplinks = UplinkView::default();
        let mut effects = Effects::default();
        let (mut arc, mut vms) = (None, Vec::new());
        let mut env = Env::new(&mut datapath, &mut addrs, &uplinks, &mut effects);
        let (_poll, mut lifelines) = watcher();
        let mut kept = ArcBridges::default();
        fn guests<'a>(
            arc: &'a mut Option<ArcGuest>,
            kept: &'a mut ArcBridges,
            vms: &'a mut Vec<VmGuest>,
        ) -> Guests<'a> {
            Guests {
                arc,
                arc_bridges: kept,
                vms,
            }
        }

        termina_startup(
            &mut env,
            guests(&mut arc, &mut kept, &mut vms),
            &settings(),
            call(alice(), &mut lifelines),
            7,
        )
        .expect("alice's VM");
        assert_eq!(vms[0].user.map(|u| u.uid), Some(1000));
        assert_eq!(lifelines.watched(), 1, "watched through this process");

        // A user not in vm_owners never gets a VM of their own.
        let mut mallory = alice();
        if let Some(u) = mallory.user.as_mut() {
            u.uid = 4444;
        }
        let e = termina_startup(
            &mut env,
            guests(&mut arc, &mut kept, &mut vms),
            &settings(),
            call(mallory, &mut lifelines),
            9,
        )
        .expect_err("not an owner");
        assert!(e.to_string().contains("not in vm_owners"), "{e}");
        assert_eq!((vms.len(), lifelines.watched()), (1, 1));

        // Nobody else takes the id over, not even concierge (root).
        let e = termina_startup(
            &mut env,
            guests(&mut arc, &mut kept, &mut vms),
            &settings(),
            call(CONCIERGE, &mut lifelines),
            7,
        )
        .expect_err("the id is taken");
        assert!(e.to_string().contains("uid 1000's"), "{e}");
        // Another user cannot stop it; root can.
        let bob = VmCaller {
            uid: 1001,
            user: None,
        };
        let e = vm_shutdown(
            &mut env,
            &mut vms,
            call(bob, &mut lifelines),
            VmKind::Termina,
            7,
        )
        .expect_err("not bob's");
        assert!(e.to_string().contains("belongs to uid 1000"), "{e}");
        assert_eq!(vms.len(), 1);

        // Its process "exits" (another start time: not this VM's process):
        // nothing happens; the real one: the VM goes.
        let mut other = alice().user.expect("user").process;
        other.start_time += 1;
        vm_owner_exited(
            &mut env,
            &mut vms,
            &mut lifelines,
            VmKind::Termina,
            7,
            other,
        );
        assert_eq!(vms.len(), 1);
        let process = alice().user.expect("user").process;
        vm_owner_exited(
            &mut env,
            &mut vms,
            &mut lifelines,
            VmKind::Termina,
            7,
            process,
        );
        assert!(vms.is_empty());
        assert_eq!(lifelines.watched(), 0);
        assert!(env.addrs.allocations().is_empty());

        // A shutdown by root forgets the lifeline too.
        termina_startup(
            &mut env,
            guests(&mut arc, &mut kept, &mut vms),
            &settings(),
            call(alice(), &mut lifelines),
            8,
        )
        .expect("alice's second VM");
        vm_shutdown(
            &mut env,
            &mut vms,
            call(CONCIERGE, &mut lifelines),
            VmKind::Termina,
            8,
        )
        .expect("root stops it");
        assert_eq!(lifelines.watched(), 0);
        let labels = datapath.plan_labels();
        assert_eq!(labels.len(), 4, "{labels:?}");
        let Request::Apply(start) = &datapath.requests[0] else {
            panic!("{:?}", datapath.requests[0]);
        };
        assert!(
            matches!(
                &start.steps[0],
                Step::CreateTap {
                    user: Some(1000),
                    ..
                }
            ),
            "{:?}",
            start.steps[0]
        );
    }

    #[test]
    fn a_users_vm_of_a_previous_run_goes_when_its_process_has() {
        let mut addrs = AddressManager::new();
        let mut prev_vm =
            guests::vm_allocate(VmKind::Termina, 7, None, &mut addrs, &BTreeSet::new())
                .expect("vm");
        let mut process = alice().user.expect("user").process;
        process.start_time += 1; // not this process: it "exited"
        prev_vm.user = Some(VmUser { uid: 1000, process });
        let mut datapath = FakeDatapath::default();
        let (vms, watched, released) = readopt_one(&prev_vm, &mut datapath);
        assert!(vms.is_empty());
        assert_eq!(watched, 0);
        assert!(released);
        assert_eq!(
            datapath.plan_labels(),
            [format!("remove the previous {}", prev_vm.label())]
        );
    }
}
