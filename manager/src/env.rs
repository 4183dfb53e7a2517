//! What a service reaches the world through: the datapath transport (one
//! method, [`Datapath::call`], so that a recording fake stands in for the
//! writer in unit tests), the address allocator, the uplinks (read only),
//! the sysctls the writer replaced and the signals to emit. It holds no
//! service's state: a service gets `&mut` to its own part of the state
//! beside an `Env`.

use std::collections::BTreeMap;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::rc::Rc;

use patchpanel_addr::AddressManager;
use patchpanel_ipc::datapath::{Netns, Plan, PlanReport, Sysctl};
use patchpanel_ipc::{Reply, Request};
use patchpanel_proto::network_device_changed_signal::Event as DeviceEvent;
use patchpanel_proto::{NetworkDevice, NetworkDeviceChangedSignal};
use patchpanel_sandbox::Process;

use crate::error::CallError;
use crate::guests::{ArcGuest, VmGuest};
use crate::helpers::{Helpers, SendError};
use crate::namespaces::ConnectedNamespace;
use crate::uplinks::UplinkView;

static OPERATION_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// A fresh id that ties together the log lines of one operation.
pub fn next_operation() -> u64 {
    OPERATION_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// The datapath writer, as services see it.
pub trait Datapath {
    /// Sends one request to the writer and waits for its answer.
    fn call(&mut self, request: Request, fds: &[BorrowedFd<'_>]) -> Result<Reply, CallError>;
}

impl Datapath for Helpers {
    fn call(&mut self, request: Request, fds: &[BorrowedFd<'_>]) -> Result<Reply, CallError> {
        Helpers::call(self, Process::DatapathWriter, request, fds)
    }
}

/// The helpers as the forwarder services and the dispatcher use them:
/// requests to any helper, requests sent without waiting, and the replay
/// log a respawned helper gets. The writer part of it is a [`Datapath`].
pub trait HelperLink: Datapath {
    fn call_helper(
        &mut self,
        helper: Process,
        request: Request,
        fds: &[BorrowedFd<'_>],
    ) -> Result<Reply, CallError>;
    fn send(&mut self, helper: Process, request: Request) -> Result<u64, SendError>;
    /// Like [`HelperLink::send`], but waits for room in a full channel
    /// (requests that must follow each other with nothing in between).
    fn send_waiting(&mut self, helper: Process, request: Request) -> Result<u64, SendError>;
    fn record_replay(
        &mut self,
        helper: Process,
        key: &str,
        request: Request,
        fds: Vec<Rc<OwnedFd>>,
    );
    fn forget_replay(&mut self, helper: Process, key: &str);
}

impl HelperLink for Helpers {
    fn call_helper(
        &mut self,
        helper: Process,
        request: Request,
        fds: &[BorrowedFd<'_>],
    ) -> Result<Reply, CallError> {
        Helpers::call(self, helper, request, fds)
    }

    fn send(&mut self, helper: Process, request: Request) -> Result<u64, SendError> {
        Helpers::send(self, helper, request)
    }

    fn send_waiting(&mut self, helper: Process, request: Request) -> Result<u64, SendError> {
        Helpers::send_waiting(self, helper, request)
    }

    fn record_replay(
        &mut self,
        helper: Process,
        key: &str,
        request: Request,
        fds: Vec<Rc<OwnedFd>>,
    ) {
        Helpers::record_replay_with_fds(self, helper, key, request, fds)
    }

    fn forget_replay(&mut self, helper: Process, key: &str) {
        Helpers::forget_replay(self, helper, key)
    }
}

/// What an event left to do once it is handled: signals to emit and the
/// sysctl values the writer replaced (to restore at stop).
#[derive(Debug, Default)]
pub struct Effects {
    pub signals: Vec<NetworkDeviceChangedSignal>,
    /// `NetworkConfigurationChanged` is due (ARC's DNS proxies changed).
    pub network_configuration_changed: bool,
    pub replaced_sysctls: Vec<(Netns, Sysctl, String)>,
}

/// See the module documentation.
pub struct Env<'a> {
    datapath: &'a mut dyn Datapath,
    pub addrs: &'a mut AddressManager,
    pub uplinks: &'a UplinkView,
    effects: &'a mut Effects,
}

impl std::fmt::Debug for Env<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Env").finish_non_exhaustive()
    }
}

impl<'a> Env<'a> {
    pub fn new(
        datapath: &'a mut dyn Datapath,
        addrs: &'a mut AddressManager,
        uplinks: &'a UplinkView,
        effects: &'a mut Effects,
    ) -> Env<'a> {
        Env {
            datapath,
            addrs,
            uplinks,
            effects,
        }
    }

    /// Sends a plan to the writer and waits for its report. The sysctl
    /// values it replaced are kept, to be restored at stop; a TAP's
    /// `route_localnet` dies with the TAP and is not.
    pub fn apply(&mut self, plan: Plan, fds: &[BorrowedFd<'_>]) -> Result<PlanReport, CallError> {
        let label = plan.label.clone();
        match self.datapath.call(Request::Apply(plan), fds)? {
            Reply::Applied(report) => {
                for (netns, sysctl, old) in &report.replaced_sysctls {
                    if matches!(sysctl, Sysctl::RouteLocalnet(_)) {
                        continue;
                    }
                    self.effects.replaced_sysctls.push((
                        netns.clone(),
                        sysctl.clone(),
                        old.clone(),
                    ));
                }
                Ok(report)
            }
            other => Err(CallError::Failed(format!(
                "{label}: the writer answered {other:?}"
            ))),
        }
    }

    /// The sysctl values replaced so far (by [`Env::apply`]), taken out of
    /// the ledger.
    pub fn take_replaced_sysctls(&mut self) -> Vec<(Netns, Sysctl, String)> {
        std::mem::take(&mut self.effects.replaced_sysctls)
    }

    /// Any other request to the writer.
    pub fn call(&mut self, request: Request) -> Result<Reply, CallError> {
        self.datapath.call(request, &[])
    }

    /// Queues one `NetworkConfigurationChanged` for after the event.
    pub fn network_configuration_changed(&mut self) {
        self.effects.network_configuration_changed = true;
    }

    /// Queues a `NetworkDeviceChanged` for after the event.
    pub fn emit(&mut self, device: NetworkDevice, event: DeviceEvent) {
        self.effects.signals.push(NetworkDeviceChangedSignal {
            device: Some(device),
            event: event as i32,
        });
    }
}

/// The guests as the forwarders see them: read only.
#[derive(Debug, Clone, Copy)]
pub struct GuestView<'a> {
    pub namespaces: &'a BTreeMap<u32, ConnectedNamespace>,
    pub arc: Option<&'a ArcGuest>,
    pub vms: &'a [VmGuest],
}

/// A recording [`HelperLink`] for unit tests: answers each writer request
/// with the next scripted reply (or an empty report), and keeps every
/// request; the other helpers answer `Done`.
#[cfg(test)]
#[derive(Debug, Default)]
pub struct FakeDatapath {
    pub requests: Vec<Request>,
    pub replies: std::collections::VecDeque<Result<Reply, CallError>>,
    /// Requests to the other helpers (called or sent), in order.
    pub helper_requests: Vec<(Process, Request)>,
    /// Replay keys recorded, per helper.
    pub replay: std::collections::HashSet<(Process, String)>,
    next_id: u64,
}

#[cfg(test)]
impl FakeDatapath {
    /// The plans sent, by label.
    pub fn plan_labels(&self) -> Vec<String> {
        self.requests
            .iter()
            .filter_map(|r| match r {
                Request::Apply(p) => Some(p.label.clone()),
                _ => None,
            })
            .collect()
    }

    /// Makes the next request fail with `error`.
    pub fn fail_next(&mut self, error: CallError) {
        self.replies.push_back(Err(error));
    }
}

#[cfg(test)]
impl Datapath for FakeDatapath {
    fn call(&mut self, request: Request, _fds: &[BorrowedFd<'_>]) -> Result<Reply, CallError> {
        self.requests.push(request);
        self.replies.pop_front().unwrap_or_else(|| {
            Ok(Reply::Applied(PlanReport {
                replaced_sysctls: Vec::new(),
                failures: Vec::new(),
            }))
        })
    }
}

#[cfg(test)]
impl HelperLink for FakeDatapath {
    fn call_helper(
        &mut self,
        helper: Process,
        request: Request,
        fds: &[BorrowedFd<'_>],
    ) -> Result<Reply, CallError> {
        if helper == Process::DatapathWriter {
            return Datapath::call(self, request, fds);
        }
        self.helper_requests.push((helper, request));
        Ok(Reply::Done)
    }

    fn send(&mut self, helper: Process, request: Request) -> Result<u64, SendError> {
        if helper == Process::DatapathWriter {
            self.requests.push(request);
        } else {
            self.helper_requests.push((helper, request));
        }
        self.next_id += 1;
        Ok(self.next_id)
    }

    fn send_waiting(&mut self, helper: Process, request: Request) -> Result<u64, SendError> {
        HelperLink::send(self, helper, request)
    }

    fn record_replay(
        &mut self,
        helper: Process,
        key: &str,
        _request: Request,
        _fds: Vec<Rc<OwnedFd>>,
    ) {
        self.replay.insert((helper, key.to_string()));
    }

    fn forget_replay(&mut self, helper: Process, key: &str) {
        self.replay.remove(&(helper, key.to_string()));
    }
}

/// When this process started (its first call: `main` makes it), for the
/// start-up timeline in the log.
pub fn process_start() -> std::time::Instant {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    *START.get_or_init(std::time::Instant::now)
}
