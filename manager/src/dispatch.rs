//! The daemon's state and the one place where events are handled.
//!
//! The loop (`manager.rs`, which only `main` reaches) turns what woke it into an [`Event`];
//! [`Daemon::handle`] routes it to the service that owns it, with
//! disjoint borrows of the state, and then runs the same tail after every
//! event, whatever it was:
//!
//! 1. the forwarders follow the guests and uplinks (ndproxy, mcast, adb:
//!    always all three), and queued guest routes go to the writer;
//! 2. the sysctl values the writer replaced join the ledger;
//! 3. the state is saved, once, if it changed;
//! 4. `NetworkDeviceChanged` and `NeighborReachabilityEvent` signals go
//!    out (the neighbour watch follows the configured networks first);
//! 5. the caller, if any, is answered: last, so that when `ArcShutdown`
//!    returns, the ADB port is closed and the state is on disk.
//!
//! No service remembers to do any of these itself.

use std::time::{Duration, Instant};

use log::{error, info, warn};
use mio::Token;
use patchpanel_addr::AddressManager;
use patchpanel_ipc::Event as HelperNews;
use patchpanel_rtnl::neigh::NeighborEvent;
use patchpanel_sandbox::Process;
use patchpanel_uplinks::UplinkEvent;
use prost::Message as _;

use crate::adb_service::{AdbPolicy, AdbRelay};
use crate::dbus_service::{Bus, Call, Incoming, FIREWALLD_RELOADED};
use crate::dhcp_service::DhcpLinks;
use crate::env::{Effects, Env, GuestView, HelperLink};
use crate::error::CallError;
use crate::firewall_service::HostFirewall;
use crate::guest_service::{self, Guests};
use crate::helpers::HelperEvent;
use crate::lifecycle::{self, Setup};
use crate::lifeline::{Guarded, LifelineWatcher};
use crate::mcast_service::McastForwarding;
use crate::ndproxy_service::NdProxyState;
use crate::neighbor_service::NeighborWatch;
use crate::port_rules::PortPolicy;
use crate::socket_service::{self, SocketNetworks};
use crate::state::{State, StateFile};
use crate::uplinks::UplinkView;
use crate::{
    chrome_service, counters, dns_service, guests, namespace_service, network_service,
    port_rule_service, vpn_service,
};

/// Site settings the daemon follows, fixed at start.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `--cleanup`: remove everything owned, then exit.
    pub cleanup_only: bool,
    /// Netlink mode: patchpanel builds the per-uplink routing tables and
    /// rules that shill would otherwise own.
    pub manage_uplink_routing: bool,
    pub port_policy: PortPolicy,
    pub layout: patchpanel_firewall::LayoutConfig,
    pub adb: AdbPolicy,
    pub namespaces: namespace_service::Settings,
    pub guests: guest_service::Settings,
    /// How often watched gateways and DNS servers are probed
    /// ([`crate::neighbor_service::DEFAULT_PROBE_INTERVAL`]).
    pub neighbor_probe_interval: Duration,
    /// The root-namespace DNS proxies' IPv6 addresses on `lo`.
    pub dns_proxy_loopback: bool,
    /// DHCP for guests: the name servers to announce, or `None` (off).
    pub guest_dhcp: Option<Vec<std::net::Ipv4Addr>>,
}

/// How far the daemon got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Waiting for the writer's first Hello.
    Starting,
    /// The datapath is set up: calls are served.
    DatapathUp,
    /// Every helper is up and the bus name is owned.
    Ready,
    /// Stopped (or cleaned up): nothing more is set up or saved.
    Stopping,
}

/// What woke the loop, as the daemon sees it.
#[derive(Debug)]
pub enum Event {
    /// A call off the bus.
    Call(Incoming),
    /// Lifelines that closed in one wake-up.
    Lifelines(Vec<Token>),
    /// The uplinks changed.
    Uplinks(Vec<UplinkEvent>),
    /// The kernel's neighbour table changed.
    Neighbors(Vec<NeighborEvent>),
    /// Something a helper said or a supervision change.
    Helper(HelperEvent),
    /// Time passed: a host firewall check or a neighbour probe may be due.
    Timers(Instant),
    /// firewalld said it reloaded.
    FirewalldReloaded,
    /// SIGTERM: take everything down.
    Stop,
}

/// What the loop does after an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    /// `--cleanup` is done: exit.
    Exit,
}

/// See the module documentation.
#[derive(Debug)]
pub struct Daemon {
    settings: Settings,
    phase: Phase,
    state: State,
    store: StateFile,
    addrs: AddressManager,
    uplinks: UplinkView,
    lifelines: LifelineWatcher,
    ndproxy: NdProxyState,
    mcast: McastForwarding,
    adb: AdbRelay,
    socket_networks: SocketNetworks,
    arc_vpn: vpn_service::ArcVpn,
    dhcp: DhcpLinks,
    host_firewall: HostFirewall,
    neighbors: NeighborWatch,
    effects: Effects,
    /// The start-up timeline: the writer's Hello, the datapath set up.
    writer_up_at: Option<Instant>,
    datapath_up_at: Option<Instant>,
}

impl Daemon {
    pub fn new(
        settings: Settings,
        store: StateFile,
        addrs: AddressManager,
        uplinks: UplinkView,
        lifelines: LifelineWatcher,
    ) -> Daemon {
        Daemon {
            adb: AdbRelay::new(settings.adb),
            dhcp: DhcpLinks::new(settings.guest_dhcp.clone()),
            neighbors: NeighborWatch::new(settings.neighbor_probe_interval),
            settings,
            phase: Phase::Starting,
            state: State::default(),
            store,
            addrs,
            uplinks,
            lifelines,
            ndproxy: NdProxyState::default(),
            mcast: McastForwarding::default(),
            socket_networks: SocketNetworks::default(),
            arc_vpn: vpn_service::ArcVpn::default(),
            host_firewall: HostFirewall::default(),
            effects: Effects::default(),
            writer_up_at: None,
            datapath_up_at: None,
        }
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Every helper is up and the bus name is owned.
    pub fn mark_ready(&mut self) {
        if self.phase == Phase::DatapathUp {
            self.phase = Phase::Ready;
            let start = crate::env::process_start();
            info!(
                "serving {:.1?} after start (the writer was up at {:.1?}, the datapath set up by {:.1?})",
                start.elapsed(),
                self.writer_up_at.map(|t| t.duration_since(start)).unwrap_or_default(),
                self.datapath_up_at.map(|t| t.duration_since(start)).unwrap_or_default(),
            );
        }
    }

    pub fn port_policy(&self) -> &PortPolicy {
        &self.settings.port_policy
    }

    pub fn owns_lifeline(&self, token: Token) -> bool {
        self.lifelines.owns(token)
    }

    /// When the host firewall's follower or the neighbour probes want to
    /// run next.
    pub fn deadline(&self) -> Option<Instant> {
        [self.host_firewall.deadline(), self.neighbors.deadline()]
            .into_iter()
            .flatten()
            .min()
    }

    /// State file writes so far (for tests: one per event at most).
    pub fn state_writes(&self) -> u64 {
        self.store.writes()
    }

    fn serving(&self) -> bool {
        matches!(self.phase, Phase::DatapathUp | Phase::Ready)
    }

    /// Handles one event, then runs the tail (see the module
    /// documentation). An error is fatal: the daemon cannot set up its
    /// datapath.
    pub fn handle(
        &mut self,
        link: &mut dyn HelperLink,
        bus: &mut dyn Bus,
        event: Event,
    ) -> anyhow::Result<Flow> {
        let mut answer = None;
        let mut flow = Flow::Continue;
        let mut reads_only = false;
        match event {
            Event::Call(incoming) => {
                let Incoming {
                    message,
                    method,
                    client,
                    op,
                    call,
                } = incoming;
                reads_only = call.as_ref().is_ok_and(Call::reads_only) && self.serving();
                let result = call.and_then(|call| self.on_call(link, call, &client, op));
                if let Err(e) = &result {
                    warn!("{method} from {client} (op {op}) refused: {e}");
                }
                answer = Some((message, result));
            }
            Event::Lifelines(tokens) => self.on_lifelines(link, tokens),
            Event::Uplinks(events) => self.on_uplinks(link, events),
            Event::Neighbors(events) => {
                if self.serving() {
                    self.neighbors.on_events(events, link);
                }
            }
            Event::Helper(event) => flow = self.on_helper(link, event)?,
            Event::Timers(now) => {
                if self.serving() {
                    self.host_firewall.on_timers(now, link);
                    self.neighbors.on_timers(now, link);
                }
            }
            Event::FirewalldReloaded => {
                if self.serving() {
                    self.host_firewall
                        .on_hint(FIREWALLD_RELOADED, Instant::now());
                }
            }
            Event::Stop => {
                if self.serving() {
                    let mut env = Env::new(link, &mut self.addrs, &self.uplinks, &mut self.effects);
                    lifecycle::stop(&mut env, &mut self.state, &self.store, &mut self.lifelines);
                    self.phase = Phase::Stopping;
                }
            }
        }
        // A call that only reads changed nothing for the tail to follow.
        if !reads_only {
            self.settle(link, bus);
        }
        if let Some((message, result)) = answer {
            bus.reply(&message, result);
        }
        Ok(flow)
    }

    /// The tail every event ends with.
    fn settle(&mut self, link: &mut dyn HelperLink, bus: &mut dyn Bus) {
        if self.serving() {
            let guests = GuestView {
                namespaces: &self.state.namespaces,
                arc: self.state.arc.as_ref(),
                vms: &self.state.vms,
            };
            self.ndproxy.reconcile(&guests, &self.uplinks, link);
            self.mcast.reconcile(
                &guests,
                &self.uplinks,
                self.state.chrome.wifi_multicast_lock,
                link,
            );
            self.adb.reconcile(self.state.arc.as_ref(), link);
            self.dhcp
                .reconcile(&guests, &self.state.dns_redirections, link);
            self.socket_networks
                .reconcile(&self.uplinks, &self.state.networks, link);
            self.arc_vpn
                .reconcile(self.state.arc.as_ref(), &self.state.networks, link);
            self.ndproxy.flush_routes(&self.uplinks, link);
            self.neighbors
                .reconcile(&self.state.networks, link, Instant::now());
            if !self.state.dns_redirections.is_empty() {
                let guests = GuestView {
                    namespaces: &self.state.namespaces,
                    arc: self.state.arc.as_ref(),
                    vms: &self.state.vms,
                };
                let mut env = Env::new(link, &mut self.addrs, &self.uplinks, &mut self.effects);
                dns_service::forget_gone_guests(
                    &mut env,
                    &mut self.state.dns_redirections,
                    &guests,
                );
            }
        }
        for (netns, sysctl, old) in self.effects.replaced_sysctls.drain(..) {
            self.state.record_sysctl_original(netns, sysctl, old);
        }
        // Before the datapath is up the file is the previous run's (start
        // reads it); once stopped it is gone on purpose.
        if self.serving() {
            save(&self.store, &self.state);
        }
        for signal in self.effects.signals.drain(..) {
            bus.device_changed(signal);
        }
        for signal in self.neighbors.take_signals() {
            bus.neighbor_reachability(signal);
        }
        if std::mem::take(&mut self.effects.network_configuration_changed) {
            bus.network_configuration_changed();
        }
    }

    fn on_call(
        &mut self,
        link: &mut dyn HelperLink,
        call: Call,
        client: &str,
        op: u64,
    ) -> Result<Vec<u8>, CallError> {
        if !self.serving() {
            return Err(CallError::Failed(
                "patchpanel is still starting its datapath; try again".into(),
            ));
        }
        // The socket goes to the socket service as it is: no state.
        let call = match call {
            Call::TagSocket { action, socket } => {
                return socket_service::tag(link, action, socket);
            }
            call => call,
        };
        let Daemon {
            settings,
            state,
            store,
            addrs,
            uplinks,
            lifelines,
            effects,
            ..
        } = self;
        let mut env = Env::new(link, addrs, uplinks, effects);
        let guests = Guests {
            arc: &mut state.arc,
            arc_bridges: &mut state.arc_bridges,
            vms: &mut state.vms,
        };
        let gs = &settings.guests;
        match call {
            Call::GetDevices => Ok(state.devices().encode_to_vec()),
            Call::ConnectNamespace(connect) => {
                let admitted = namespace_service::admit(
                    &mut env,
                    &state.namespaces,
                    &mut state.next_namespace_id,
                    lifelines,
                    &settings.namespaces,
                    connect,
                )?;
                // Recorded before the kernel is touched: a call whose state
                // cannot be saved (a full state directory) changes nothing,
                // and a crash during the plan leaves the next run a
                // namespace to remove.
                state.namespaces.insert(admitted.ns.id, admitted.ns.clone());
                if let Err(e) = store.save(state) {
                    state.namespaces.remove(&admitted.ns.id);
                    namespace_service::abandon(&mut env, lifelines, admitted);
                    error!(
                        "ConnectNamespace op {op}: cannot save {}: {e}; the call is refused and nothing changed",
                        store.path().display()
                    );
                    return Err(CallError::Failed(format!(
                        "ConnectNamespace: cannot record the change in {}: {e}; nothing was changed",
                        store.path().display()
                    )));
                }
                namespace_service::build(&mut env, &mut state.namespaces, lifelines, admitted)
            }
            Call::ModifyPortRule(rule) => port_rule_service::modify(
                &mut env,
                &mut state.port_rules,
                store,
                &settings.port_policy,
                rule,
                client,
                op,
            ),
            Call::GetTrafficCounters(wanted) => {
                counters::traffic_counters(&mut env, wanted, &state.counter_base)
            }
            Call::ArcStartup { pid, uid } => {
                guest_service::arc_startup(&mut env, guests, gs, pid, uid, client, op)
            }
            Call::ArcShutdown => Ok(guest_service::arc_shutdown(&mut env, guests, op)),
            Call::ArcVmStartup { cid, uid } => {
                guest_service::arcvm_startup(&mut env, guests, gs, cid, uid, client, op)
            }
            Call::ArcVmShutdown { cid } => {
                Ok(guest_service::arcvm_shutdown(&mut env, guests, cid, op))
            }
            Call::TerminaVmStartup { cid, caller } => guest_service::termina_startup(
                &mut env,
                guests,
                gs,
                vm_call(caller, lifelines, client, op),
                cid,
            ),
            Call::TerminaVmShutdown { cid, caller } => guest_service::vm_shutdown(
                &mut env,
                guests.vms,
                vm_call(caller, lifelines, client, op),
                guests::VmKind::Termina,
                u64::from(cid),
            )
            .map(|()| patchpanel_proto::TerminaVmShutdownResponse {}.encode_to_vec()),
            Call::ParallelsVmStartup {
                id,
                subnet_index,
                caller,
            } => guest_service::parallels_startup(
                &mut env,
                guests,
                gs,
                vm_call(caller, lifelines, client, op),
                id,
                subnet_index,
            ),
            Call::ParallelsVmShutdown { id, caller } => guest_service::vm_shutdown(
                &mut env,
                guests.vms,
                vm_call(caller, lifelines, client, op),
                guests::VmKind::Parallels,
                id,
            )
            .map(|()| patchpanel_proto::PluginVmShutdownResponse {}.encode_to_vec()),
            Call::ConfigureNetwork(spec) => network_service::configure(
                &mut env,
                &mut state.networks,
                !settings.manage_uplink_routing,
                *spec,
                op,
            ),
            Call::SetVpnLockdown(enable) => {
                vpn_service::set_lockdown(&mut env, &mut state.vpn_lockdown, enable, client, op)
            }
            Call::BruschettaVmStartup { id, caller } => {
                guest_service::bruschetta_or_borealis_startup(
                    &mut env,
                    guests,
                    gs,
                    vm_call(caller, lifelines, client, op),
                    guests::VmKind::Bruschetta,
                    id,
                )
            }
            Call::BorealisVmStartup { id, caller } => {
                guest_service::bruschetta_or_borealis_startup(
                    &mut env,
                    guests,
                    gs,
                    vm_call(caller, lifelines, client, op),
                    guests::VmKind::Borealis,
                    u64::from(id),
                )
            }
            Call::BruschettaVmShutdown { id, caller } => guest_service::vm_shutdown(
                &mut env,
                guests.vms,
                vm_call(caller, lifelines, client, op),
                guests::VmKind::Bruschetta,
                id,
            )
            .map(|()| patchpanel_proto::BruschettaVmShutdownResponse {}.encode_to_vec()),
            Call::BorealisVmShutdown { id, caller } => guest_service::vm_shutdown(
                &mut env,
                guests.vms,
                vm_call(caller, lifelines, client, op),
                guests::VmKind::Borealis,
                u64::from(id),
            )
            .map(|()| patchpanel_proto::BorealisVmShutdownResponse {}.encode_to_vec()),
            Call::SetDnsRedirectionRule(rule) => {
                let view = GuestView {
                    namespaces: &state.namespaces,
                    arc: state.arc.as_ref(),
                    vms: &state.vms,
                };
                dns_service::set(
                    &mut env,
                    &mut state.dns_redirections,
                    &view,
                    lifelines,
                    rule,
                    client,
                    op,
                )
            }
            Call::AndroidInteractiveState(on) => {
                Ok(chrome_service::interactive(&mut state.chrome, on, client))
            }
            Call::WifiMulticastLock(held) => Ok(chrome_service::multicast_lock(
                &mut state.chrome,
                held,
                client,
            )),
            Call::SocketConnectionEvent { arc_vpn, event } => {
                chrome_service::socket_event(&mut env, state.arc.as_ref(), arc_vpn, &event, client)
            }
            Call::SetFeatureFlag { flag, enabled } => Ok(chrome_service::set_feature_flag(
                &mut state.chrome,
                flag,
                enabled,
                client,
            )),
            Call::TagSocket { .. } => unreachable!("served above"),
        }
    }

    /// Lifelines that fired in one wake-up: their namespaces go together;
    /// DNS redirection rules and users' VMs go one by one.
    fn on_lifelines(&mut self, link: &mut dyn HelperLink, tokens: Vec<Token>) {
        let mut ids = Vec::new();
        let mut dns_rules = Vec::new();
        let mut vms = Vec::new();
        for token in tokens {
            match self.lifelines.fired(token) {
                Some(Guarded::Namespace(id)) => ids.push(id),
                Some(Guarded::DnsRule(id)) => dns_rules.push(id),
                Some(Guarded::Vm { kind, id, process }) => vms.push((kind, id, process)),
                None => {}
            }
        }
        let mut env = Env::new(link, &mut self.addrs, &self.uplinks, &mut self.effects);
        for id in dns_rules {
            dns_service::remove(
                &mut env,
                &mut self.state.dns_redirections,
                id,
                "its lifeline closed",
            );
        }
        for (kind, id, process) in vms {
            guest_service::vm_owner_exited(
                &mut env,
                &mut self.state.vms,
                &mut self.lifelines,
                kind,
                id,
                process,
            );
        }
        if ids.is_empty() {
            return;
        }
        namespace_service::disconnect(
            &mut env,
            &mut self.state.namespaces,
            &mut self.lifelines,
            &ids,
            "the client's lifeline closed",
        );
    }

    /// The uplinks changed: the view follows always; the datapath (uplink
    /// routing, pinned namespaces, ARC's devices) once it is up.
    fn on_uplinks(&mut self, link: &mut dyn HelperLink, events: Vec<UplinkEvent>) {
        for event in &events {
            info!("uplink {event}");
            let before = self.uplinks.clone();
            self.uplinks.apply(event);
            if self.serving() {
                let mut env = Env::new(link, &mut self.addrs, &self.uplinks, &mut self.effects);
                lifecycle::follow_uplink(
                    &mut env,
                    &mut self.state.namespaces,
                    &before,
                    event,
                    self.settings.manage_uplink_routing,
                );
            }
        }
        if self.serving() {
            let mut env = Env::new(link, &mut self.addrs, &self.uplinks, &mut self.effects);
            guest_service::arc_follow_uplinks(
                &mut env,
                &mut self.state.arc,
                &mut self.state.arc_bridges,
            );
        }
    }

    fn on_helper(&mut self, link: &mut dyn HelperLink, event: HelperEvent) -> anyhow::Result<Flow> {
        match event {
            HelperEvent::Up(Process::DatapathWriter) if self.phase == Phase::Starting => {
                if self.settings.cleanup_only {
                    let mut env = Env::new(link, &mut self.addrs, &self.uplinks, &mut self.effects);
                    lifecycle::clean_up(&mut env, &mut self.state, &self.store)?;
                    self.phase = Phase::Stopping;
                    info!("cleanup done");
                    return Ok(Flow::Exit);
                }
                self.writer_up_at = Some(Instant::now());
                let mut env = Env::new(link, &mut self.addrs, &self.uplinks, &mut self.effects);
                let firewall = lifecycle::start(
                    &mut env,
                    &mut self.state,
                    &self.store,
                    &mut self.lifelines,
                    &Setup {
                        layout: &self.settings.layout,
                        port_policy: &self.settings.port_policy,
                        manage_uplink_routing: self.settings.manage_uplink_routing,
                        dns_proxy_loopback: self.settings.dns_proxy_loopback,
                    },
                )?;
                // A respawned writer sets the firewall up again before
                // anything else.
                link.record_replay(Process::DatapathWriter, "firewall", firewall, Vec::new());
                self.phase = Phase::DatapathUp;
                self.datapath_up_at = Some(Instant::now());
            }
            HelperEvent::Up(_) => {}
            HelperEvent::Lost(Process::DatapathWriter) => {
                self.ndproxy.on_writer_lost();
                self.neighbors.on_writer_lost();
                if self.serving() {
                    self.host_firewall.on_writer_lost(Instant::now());
                }
            }
            HelperEvent::Lost(_) => {}
            HelperEvent::Event(_, HelperNews::NeighborDetected { ifindex, addr }) => {
                if self.serving() {
                    self.ndproxy
                        .on_neighbor_detected(&self.uplinks, ifindex, addr);
                }
            }
            HelperEvent::Event(_, HelperNews::FirewallChanged(change)) => {
                // Until the datapath is up, its own setup takes care.
                if self.serving() {
                    self.host_firewall.on_change(change, Instant::now());
                }
            }
            HelperEvent::Answer {
                process: Process::DatapathWriter,
                id,
                result,
            } if self.ndproxy.owns_request(id) => self.ndproxy.on_routes_applied(result),
            HelperEvent::Answer {
                process: Process::DatapathWriter,
                id,
                result,
            } if self.neighbors.owns(id) => self.neighbors.on_answer(id, result),
            HelperEvent::Answer {
                process: Process::DatapathWriter,
                id,
                result,
            } if self.host_firewall.owns(id) => self.host_firewall.on_answer(
                id,
                result,
                &mut self.state,
                &self.uplinks,
                &self.settings.port_policy,
                link,
            ),
            HelperEvent::Answer {
                process,
                id,
                result: Err(e),
            } => warn!("{} failed request {id}: {e}", process.executable()),
            HelperEvent::Answer { .. } => {}
        }
        Ok(Flow::Continue)
    }
}

/// A VM call as the guest service takes it.
fn vm_call<'a>(
    caller: guest_service::VmCaller,
    lifelines: &'a mut LifelineWatcher,
    client: &'a str,
    op: u64,
) -> guest_service::VmStart<'a> {
    guest_service::VmStart {
        caller,
        lifelines,
        client,
        op,
    }
}

/// Saves the state if it changed; a failure is logged (the next event
/// tries again).
fn save(store: &StateFile, state: &State) {
    if let Err(e) = store.save_if_changed(state) {
        error!(
            "cannot save {}: {e}; a restart would not know what to clean up",
            store.path().display()
        );
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;
    use std::os::fd::OwnedFd;

    use patchpanel_ipc::{FirewallChange, IfName, Reply, Request};
    use patchpanel_proto::network_device_changed_signal::Event as DeviceEvent;
    use patchpanel_proto::{NeighborReachabilityEventSignal, NetworkDeviceChangedSignal};
    use patchpanel_uplinks::{Technology, Uplink};

    use super::*;
    use crate::env::FakeDatapath;
    use crate::namespace_service::Connect;
    use crate::namespaces;

    /// Answers and signals in the order they went out.
    #[derive(Default)]
    struct RecordingBus {
        log: Vec<String>,
    }

    impl Bus for RecordingBus {
        fn reply(&mut self, call: &dbus::Message, result: Result<Vec<u8>, CallError>) {
            let method = call.member().map(|m| m.to_string()).unwrap_or_default();
            self.log.push(match result {
                Ok(_) => format!("reply {method} ok"),
                Err(e) => format!("reply {method} error {e}"),
            });
        }

        fn device_changed(&mut self, signal: NetworkDeviceChangedSignal) {
            let device = signal.device.map(|d| d.ifname).unwrap_or_default();
            let event = if signal.event == DeviceEvent::DeviceAdded as i32 {
                "added"
            } else {
                "removed"
            };
            self.log.push(format!("signal {device} {event}"));
        }

        fn neighbor_reachability(&mut self, signal: NeighborReachabilityEventSignal) {
            self.log.push(format!(
                "neighbor {} {} {}",
                signal.ifindex, signal.ip_addr, signal.r#type
            ));
        }

        fn network_configuration_changed(&mut self) {
            self.log.push("signal network configuration changed".into());
        }
    }

    fn eth0() -> Uplink {
        Uplink {
            name: IfName::new("eth0").unwrap(),
            ifindex: 2,
            up: true,
            ipv4: vec![(Ipv4Addr::new(192, 0, 2, 10), 24)],
            ipv6: vec![],
            gateway4: Some(Ipv4Addr::new(192, 0, 2, 1)),
            technology: Technology::Ethernet,
        }
    }

    struct World {
        daemon: Daemon,
        link: FakeDatapath,
        bus: RecordingBus,
        poll: mio::Poll,
        _dir: tempfile::TempDir,
    }

    impl World {
        /// A daemon whose datapath is up, with eth0 as the default uplink,
        /// its state in `dir` (or, without one, where it cannot be saved).
        fn new(writable: bool) -> World {
            let dir = tempfile::tempdir().expect("tempdir");
            let store = if writable {
                StateFile::new(dir.path())
            } else {
                StateFile::new(&dir.path().join("missing"))
            };
            let poll = mio::Poll::new().expect("poll");
            let lifelines =
                LifelineWatcher::new(poll.registry().try_clone().expect("registry"), 100);
            let mut uplinks = UplinkView::default();
            uplinks.apply(&UplinkEvent::Added(eth0()));
            uplinks.apply(&UplinkEvent::DefaultChanged(Some(eth0().name)));
            let settings = Settings {
                cleanup_only: false,
                manage_uplink_routing: false,
                port_policy: PortPolicy::with_defaults(0),
                layout: Default::default(),
                adb: AdbPolicy {
                    allowed: false,
                    max_connections: 4,
                },
                namespaces: namespace_service::Settings {
                    netns_prefix: "pp-".into(),
                    namespaces_per_uid: 8,
                },
                guests: guest_service::Settings {
                    netns_prefix: "pp-".into(),
                    vm_user: true,
                    vm_owners: Default::default(),
                    adb_allowed: false,
                },
                neighbor_probe_interval: Duration::from_secs(60),
                dns_proxy_loopback: false,
                guest_dhcp: None,
            };
            let daemon = Daemon::new(settings, store, AddressManager::new(), uplinks, lifelines);
            let mut w = World {
                daemon,
                link: FakeDatapath::default(),
                bus: RecordingBus::default(),
                poll,
                _dir: dir,
            };
            w.event(Event::Helper(HelperEvent::Up(Process::DatapathWriter)));
            assert_eq!(w.daemon.phase(), Phase::DatapathUp);
            w
        }

        fn event(&mut self, event: Event) {
            let flow = self
                .daemon
                .handle(&mut self.link, &mut self.bus, event)
                .expect("handled");
            assert_eq!(flow, Flow::Continue);
        }

        fn call(&mut self, member: &str, call: Result<Call, CallError>) {
            let message = dbus::Message::new_method_call(
                "org.chromium.PatchPanel",
                "/org/chromium/PatchPanel",
                "org.chromium.PatchPanel",
                member,
            )
            .expect("message");
            self.event(Event::Call(Incoming {
                message,
                method: member.to_string(),
                client: ":1.5".into(),
                op: 1,
                call,
            }));
        }

        fn mcast_starts(&self) -> usize {
            self.link
                .helper_requests
                .iter()
                .filter(|(_, r)| matches!(r, Request::McastStart(_)))
                .count()
        }

        fn connect(&mut self) -> OwnedFd {
            let (keep, lifeline) = crate::lifeline::test_pipe();
            let request = namespaces::parse_request(&patchpanel_proto::ConnectNamespaceRequest {
                pid: -1,
                ..Default::default()
            })
            .expect("request");
            self.call(
                "ConnectNamespace",
                Ok(Call::ConnectNamespace(Connect {
                    request,
                    lifeline,
                    client: ":1.5".into(),
                    uid: 1000,
                    op: 1,
                })),
            );
            keep
        }
    }

    /// Every kind of event, each once.
    fn every_kind(w: &mut World) -> Vec<(&'static str, Event)> {
        let keep = w.connect();
        drop(keep);
        let mut events = mio::Events::with_capacity(8);
        w.poll
            .poll(&mut events, Some(std::time::Duration::from_secs(5)))
            .expect("poll");
        let fired: Vec<Token> = events.iter().map(|e| e.token()).collect();
        assert_eq!(fired.len(), 1, "the closed lifeline fired");
        let message = |member: &str| {
            dbus::Message::new_method_call(
                "org.chromium.PatchPanel",
                "/org/chromium/PatchPanel",
                "org.chromium.PatchPanel",
                member,
            )
            .expect("message")
        };
        let incoming = |member: &str, call| {
            Event::Call(Incoming {
                message: message(member),
                method: member.to_string(),
                client: ":1.5".into(),
                op: 2,
                call,
            })
        };
        vec![
            (
                "a call",
                incoming(
                    "NotifyAndroidInteractiveState",
                    Ok(Call::AndroidInteractiveState(false)),
                ),
            ),
            (
                "a refused call",
                incoming(
                    "GetDevices",
                    Err(CallError::InvalidArgument("malformed".into())),
                ),
            ),
            ("a lifeline", Event::Lifelines(fired)),
            (
                "an uplink",
                Event::Uplinks(vec![UplinkEvent::Changed(eth0())]),
            ),
            (
                "a helper up",
                Event::Helper(HelperEvent::Up(Process::McastForwarder)),
            ),
            (
                "a helper lost",
                Event::Helper(HelperEvent::Lost(Process::NdProxy)),
            ),
            (
                "a neighbour",
                Event::Helper(HelperEvent::Event(
                    Process::NdProxy,
                    HelperNews::NeighborDetected {
                        ifindex: 99,
                        addr: [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
                    },
                )),
            ),
            (
                "a firewall change",
                Event::Helper(HelperEvent::Event(
                    Process::DatapathWriter,
                    HelperNews::FirewallChanged(FirewallChange {
                        by: "nft (pid 1)".into(),
                        ours: false,
                        overrun: false,
                        lost_counters: Vec::new(),
                    }),
                )),
            ),
            (
                "an answer",
                Event::Helper(HelperEvent::Answer {
                    process: Process::DatapathWriter,
                    id: 12345,
                    result: Ok(Reply::Done),
                }),
            ),
            (
                "timers",
                Event::Timers(Instant::now() + std::time::Duration::from_secs(1)),
            ),
            ("firewalld", Event::FirewalldReloaded),
            ("neighbours", Event::Neighbors(vec![NeighborEvent::Overrun])),
        ]
    }

    #[test]
    fn every_event_kind_ends_in_reconcile_and_one_save() {
        let mut w = World::new(true);
        w.call(
            "TerminaVmStartup",
            Ok(Call::TerminaVmStartup {
                cid: 7,
                caller: guest_service::VmCaller { uid: 0, user: None },
            }),
        );
        let events = every_kind(&mut w);
        for (what, event) in events {
            // The forwarder forgets what it told its helper, and the state
            // changes: only the tail can notice either.
            w.daemon.mcast = McastForwarding::default();
            w.daemon.state.next_namespace_id += 1;
            let (starts, writes) = (w.mcast_starts(), w.daemon.state_writes());
            w.event(event);
            assert_eq!(
                w.mcast_starts(),
                starts + 1,
                "after {what}: the multicast forwarder was reconciled"
            );
            assert_eq!(
                w.daemon.state_writes(),
                writes + 1,
                "after {what}: the state was saved once"
            );
        }
        // With nothing changed, nothing is written.
        let writes = w.daemon.state_writes();
        w.call(
            "NotifyAndroidInteractiveState",
            Ok(Call::AndroidInteractiveState(false)),
        );
        assert_eq!(w.daemon.state_writes(), writes);
        // A call that only reads runs no tail at all (it is linear in the
        // guests): the forwarder is not reconciled, nothing is saved.
        w.daemon.mcast = McastForwarding::default();
        w.daemon.state.next_namespace_id += 1;
        let (starts, writes) = (w.mcast_starts(), w.daemon.state_writes());
        w.call("GetDevices", Ok(Call::GetDevices));
        assert_eq!(
            (w.mcast_starts(), w.daemon.state_writes()),
            (starts, writes)
        );
    }

    #[test]
    fn signals_go_out_before_the_reply_and_after_the_state_is_saved() {
        let mut w = World::new(true);
        let writes = w.daemon.state_writes();
        w.call(
            "TerminaVmStartup",
            Ok(Call::TerminaVmStartup {
                cid: 7,
                caller: guest_service::VmCaller { uid: 0, user: None },
            }),
        );
        let tap = w.daemon.state.vms[0].tap.to_string();
        assert_eq!(
            w.bus.log,
            [
                format!("signal {tap} added"),
                "reply TerminaVmStartup ok".to_string()
            ]
        );
        assert_eq!(w.daemon.state_writes(), writes + 1);
        assert_eq!(w.mcast_starts(), 1, "the new TAP is forwarded");
        let saved = std::fs::read_to_string(w.daemon.store.path()).expect("saved");
        assert!(saved.contains(&tap), "the VM is on disk before the reply");
    }

    #[test]
    fn neighbour_signals_follow_configured_networks_and_go_out_before_the_reply() {
        use patchpanel_proto::configure_network_request::{self as area, NetworkTechnology};
        use patchpanel_rtnl::neigh::Neighbor;

        let mut w = World::new(true);
        let request = patchpanel_proto::ConfigureNetworkRequest {
            ifindex: 2,
            ifname: "eth0".into(),
            area: area::AREA_IPV4_ADDRESS | area::AREA_IPV4_ROUTE,
            network_config: Some(patchpanel_proto::NetworkConfig {
                ipv4_address: Some(patchpanel_proto::IPAddrCIDR {
                    addr: vec![192, 0, 2, 10],
                    prefix_len: 24,
                }),
                ipv4_gateway: Some(vec![192, 0, 2, 1]),
                ..Default::default()
            }),
            technology: NetworkTechnology::Ethernet as i32,
            priority: None,
            session_id: 1,
        };
        let spec = crate::network_config::parse(&request).expect("valid");
        w.call(
            "ConfigureNetwork",
            Ok(Call::ConfigureNetwork(Box::new(spec))),
        );
        assert_eq!(w.daemon.neighbors.watched(), 1);
        let probes = w
            .link
            .plan_labels()
            .iter()
            .filter(|l| l.starts_with("probe"))
            .count();
        assert_eq!(probes, 1, "the gateway is probed when first watched");
        assert!(w.daemon.deadline().is_some(), "and again later");

        let gateway = |state| {
            Event::Neighbors(vec![NeighborEvent::New(Neighbor {
                ifindex: 2,
                addr: "192.0.2.1".parse().expect("test value"),
                mac: Some([2, 0, 0, 0, 0, 1]),
                state,
                proxy: false,
                router: false,
            })])
        };
        w.event(gateway(libc::NUD_REACHABLE));
        w.event(gateway(libc::NUD_REACHABLE));
        w.event(gateway(libc::NUD_FAILED));
        w.call("GetDevices", Ok(Call::GetDevices));
        assert_eq!(
            w.bus.log,
            [
                "reply ConfigureNetwork ok",
                "neighbor 2 192.0.2.1 2",
                "neighbor 2 192.0.2.1 1",
                "reply GetDevices ok",
            ]
        );
    }

    #[test]
    fn a_namespace_whose_state_cannot_be_saved_is_refused_and_leaves_nothing() {
        let mut w = World::new(false);
        let _keep = w.connect();
        assert_eq!(w.bus.log.len(), 1);
        assert!(
            w.bus.log[0].contains("error") && w.bus.log[0].contains("nothing was changed"),
            "{:?}",
            w.bus.log
        );
        assert!(w.daemon.state.namespaces.is_empty());
        assert_eq!(w.daemon.lifelines.watched(), 0);
        assert!(w.daemon.addrs.allocations().is_empty());
        assert!(
            !w.link
                .plan_labels()
                .iter()
                .any(|l| l.starts_with("ConnectNamespace")),
            "the kernel was not touched"
        );
    }

    #[test]
    fn a_namespace_the_writer_refuses_is_taken_off_the_disk_again() {
        let mut w = World::new(true);
        w.link
            .fail_next(CallError::Failed("create veth: file exists".into()));
        let _keep = w.connect();
        assert!(w.bus.log[0].contains("error"), "{:?}", w.bus.log);
        assert!(w.daemon.state.namespaces.is_empty());
        assert_eq!(w.daemon.lifelines.watched(), 0);
        assert!(w.daemon.addrs.allocations().is_empty());
        let saved: State =
            serde_json::from_str(&std::fs::read_to_string(w.daemon.store.path()).expect("saved"))
                .expect("state");
        assert!(saved.namespaces.is_empty(), "recorded, then taken back");
        assert_eq!(saved.next_namespace_id, 1, "its id is not reused");
    }

    #[test]
    fn a_stop_takes_everything_down_and_leaves_no_state_file() {
        let mut w = World::new(true);
        w.call(
            "TerminaVmStartup",
            Ok(Call::TerminaVmStartup {
                cid: 7,
                caller: guest_service::VmCaller { uid: 0, user: None },
            }),
        );
        let _keep = w.connect();
        assert!(w.daemon.store.path().exists());
        w.event(Event::Stop);
        assert_eq!(w.daemon.phase(), Phase::Stopping);
        assert!(w.daemon.state.vms.is_empty());
        assert!(w.daemon.state.namespaces.is_empty());
        assert!(!w.daemon.store.path().exists(), "not saved after the stop");
        w.call("GetDevices", Ok(Call::GetDevices));
        assert!(
            w.bus
                .log
                .last()
                .is_some_and(|l| l.contains("still starting")),
            "{:?}",
            w.bus.log
        );
    }
}
