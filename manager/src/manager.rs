//! The manager's event loop: one mio `Poll` over the signalfd, the spawner
//! socket, the D-Bus connection and one channel per helper.

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use log::{debug, error, info, warn};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use patchpanel_helper_runtime::role_of;
use patchpanel_ipc::{
    Channel, ChannelError, Hello, HelperMessage, LogLevel, ManagerMessage, Reply, Request, Role,
    PROTOCOL_VERSION,
};
use patchpanel_sandbox::Process;

use patchpanel_addr::AddressManager;
use patchpanel_ipc::datapath::WriterConfig;
use patchpanel_uplinks::UplinkSource;

use crate::dbus_service::DbusService;
use crate::error::CallError;
use crate::lifeline::LifelineWatcher;
use crate::spawner::{self, SpawnerEvent, SpawnerRequest};
use crate::state::{State, StateFile};
use crate::supervisor::{Liveness, ReplayLog, RespawnPolicy, Stage, Verdict};
use crate::uplinks::UplinkView;

const SIGNALS: Token = Token(0);
const SPAWNER: Token = Token(1);
const DBUS: Token = Token(2);
const UPLINKS_BASE: usize = 3;
const UPLINKS_MAX: usize = 4;
const HELPER_BASE: usize = 10;
const LIFELINE_BASE: usize = 1000;
/// How long a D-Bus call waits for the writer before giving up.
const WRITER_TIMEOUT: Duration = Duration::from_secs(30);

fn pid_text(pid: Option<i32>) -> String {
    pid.map(|p| p.to_string())
        .unwrap_or_else(|| "unknown".into())
}

fn helper_token(i: usize) -> Token {
    Token(HELPER_BASE + i)
}

/// Lifecycle of one helper slot.
#[derive(Debug)]
enum Phase {
    /// Asked the spawner; waiting for the helper's Hello.
    Starting {
        channel: Channel,
    },
    Up {
        channel: Channel,
    },
    /// Dead; respawn at the instant.
    Down {
        respawn_at: Instant,
    },
}

#[derive(Debug)]
struct Slot {
    process: Process,
    phase: Phase,
    pid: Option<i32>,
    started_at: Instant,
    policy: RespawnPolicy,
    replay: ReplayLog,
    liveness: Liveness,
    next_id: u64,
    /// Requests awaiting an answer: id -> what it was for (for logs).
    pending: HashMap<u64, String>,
    /// How far the current instance got (see [`Stage`]).
    stage: Stage,
    /// The id of the last replayed request, until it is answered.
    replay_until: Option<u64>,
}

impl Slot {
    fn channel(&self) -> Option<&Channel> {
        match &self.phase {
            Phase::Starting { channel } | Phase::Up { channel } => Some(channel),
            Phase::Down { .. } => None,
        }
    }

    fn send(&mut self, request: Request) -> Result<u64, ChannelError> {
        self.send_with_fds(request, &[])
    }

    fn send_with_fds(
        &mut self,
        request: Request,
        fds: &[std::os::fd::BorrowedFd<'_>],
    ) -> Result<u64, ChannelError> {
        let id = self.next_id;
        self.next_id += 1;
        let what = request_label(&request);
        let channel = self.channel().ok_or(ChannelError::Closed)?;
        channel.send(&ManagerMessage::Request { id, body: request }, fds)?;
        self.pending.insert(id, what);
        Ok(id)
    }
}

/// Why [`Manager::send_helper`] sent nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SendError {
    /// The helper is not up, or its channel is full: try again later.
    Busy,
    /// The request cannot be sent at all (too large to encode).
    Failed(String),
}

/// A short description of a request for logs (plans can be long).
fn request_label(request: &Request) -> String {
    match request {
        Request::Apply(plan) => format!("plan {:?} ({} steps)", plan.label, plan.steps.len()),
        other => format!("{other:?}"),
    }
}

/// Startup options the loop needs.
#[derive(Debug, Clone)]
pub struct Options {
    pub spawn_flags: u32,
    pub log_level: LogLevel,
    pub netns_prefix: String,
    pub writer: WriterConfig,
    /// `--cleanup`: remove everything owned, then exit.
    pub cleanup_only: bool,
    /// Netlink mode: patchpanel builds the per-uplink routing tables and
    /// rules that shill would otherwise own.
    pub manage_uplink_routing: bool,
    pub port_policy: crate::port_rules::PortPolicy,
    pub layout: patchpanel_firewall::LayoutConfig,
    pub adb: crate::adb_service::AdbPolicy,
    /// Connected namespaces one non-root uid may hold at once.
    pub namespaces_per_uid: u32,
}

pub struct Manager {
    pub(crate) poll: Poll,
    signals: OwnedFd,
    spawner: Channel,
    spawner_pid: libc::pid_t,
    pub(crate) dbus: Option<DbusService>,
    slots: Vec<Slot>,
    pub(crate) options: Options,
    ready: bool,
    nonce: u64,
    pub(crate) state: State,
    pub(crate) state_file: StateFile,
    pub(crate) addrs: AddressManager,
    pub(crate) uplinks: UplinkView,
    uplink_source: Option<Box<dyn UplinkSource>>,
    pub(crate) lifelines: LifelineWatcher,
    pub(crate) datapath_ready: bool,
    pub(crate) ndproxy: crate::ndproxy_service::NdProxyState,
    pub(crate) adb: crate::adb_service::AdbRelay,
    pub(crate) mcast: crate::mcast_service::McastForwarding,
    datapath_started: bool,
    cleanup_done: bool,
    /// Other programs' changes to the rule set, waiting for their check.
    pub(crate) host_firewall: crate::host_firewall::Follower,
}

impl std::fmt::Debug for Manager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Manager")
            .field("spawner_pid", &self.spawner_pid)
            .field("ready", &self.ready)
            .finish()
    }
}

/// Blocks SIGTERM, SIGINT and SIGCHLD and returns a signalfd for them.
/// Called before forking the spawner, which resets its own mask.
pub fn signal_fd() -> std::io::Result<OwnedFd> {
    // SAFETY: sigset operations on a local set; signalfd returns a new fd.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGTERM, libc::SIGINT, libc::SIGCHLD] {
            libc::sigaddset(&mut set, s);
        }
        if libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let fd = libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(OwnedFd::from_raw_fd(fd))
    }
}

enum Exit {
    Clean,
    Failed(anyhow::Error),
}

impl Manager {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        signals: OwnedFd,
        spawner: Channel,
        spawner_pid: libc::pid_t,
        dbus: Option<DbusService>,
        uplink_source: Option<Box<dyn UplinkSource>>,
        state_file: StateFile,
        addrs: AddressManager,
        options: Options,
    ) -> anyhow::Result<Manager> {
        let poll = Poll::new().context("epoll")?;
        spawner.set_nonblocking(true)?;
        poll.registry().register(
            &mut SourceFd(&signals.as_raw_fd()),
            SIGNALS,
            Interest::READABLE,
        )?;
        poll.registry().register(
            &mut SourceFd(&spawner.as_raw_fd()),
            SPAWNER,
            Interest::READABLE,
        )?;
        if let Some(dbus) = &dbus {
            poll.registry()
                .register(&mut SourceFd(&dbus.fd()), DBUS, Interest::READABLE)?;
        }
        if let Some(source) = &uplink_source {
            for (i, fd) in source.fds().into_iter().take(UPLINKS_MAX).enumerate() {
                poll.registry().register(
                    &mut SourceFd(&fd),
                    Token(UPLINKS_BASE + i),
                    Interest::READABLE,
                )?;
            }
        }
        let mut uplinks = UplinkView::default();
        let mut uplink_source = uplink_source;
        if let Some(source) = uplink_source.as_mut() {
            // The first read reports every uplink present as Added.
            for event in source.process().context("reading the uplinks")? {
                uplinks.apply(&event);
            }
            info!("uplinks at start: [{}]", uplinks.names().join(", "));
        }
        let now = Instant::now();
        let slots = Process::HELPERS
            .iter()
            .map(|&process| {
                let mut replay = ReplayLog::default();
                replay.record("log-level", Request::SetLogLevel(options.log_level));
                if process == Process::DatapathWriter {
                    // SetupFirewall joins the replay once the first start
                    // has removed the previous run's leftovers.
                    replay.record("config", Request::ConfigureWriter(options.writer.clone()));
                }
                Slot {
                    process,
                    phase: Phase::Down { respawn_at: now },
                    pid: None,
                    started_at: now,
                    policy: RespawnPolicy::default(),
                    replay,
                    liveness: Liveness::default(),
                    next_id: 1,
                    pending: HashMap::new(),
                    stage: Stage::Starting,
                    replay_until: None,
                }
            })
            .collect();
        let adb = crate::adb_service::AdbRelay::new(options.adb);
        Ok(Manager {
            adb,
            poll,
            signals,
            spawner,
            spawner_pid,
            dbus,
            slots,
            options,
            ready: false,
            nonce: 1,
            state: State::default(),
            state_file,
            addrs,
            uplinks,
            uplink_source,
            lifelines: LifelineWatcher::new(LIFELINE_BASE),
            datapath_ready: false,
            ndproxy: Default::default(),
            mcast: Default::default(),
            datapath_started: false,
            cleanup_done: false,
            host_firewall: Default::default(),
        })
    }

    /// Runs until SIGTERM/SIGINT (Ok) or a fatal failure (Err).
    pub fn run(mut self) -> anyhow::Result<()> {
        let result = self.event_loop();
        self.stop_datapath();
        self.shutdown();
        match result {
            Exit::Clean => Ok(()),
            Exit::Failed(e) => Err(e),
        }
    }

    fn event_loop(&mut self) -> Exit {
        let mut events = Events::with_capacity(64);
        let mut fired = Vec::new();
        loop {
            let now = Instant::now();
            if let Err(e) = self.on_timers(now) {
                return Exit::Failed(e);
            }
            let timeout = self
                .next_deadline()
                .map(|d| d.saturating_duration_since(Instant::now()));
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Exit::Failed(anyhow!("epoll_wait: {e}"));
            }
            for event in events.iter() {
                let step = match event.token() {
                    SIGNALS => match self.on_signals() {
                        Ok(true) => return Exit::Clean,
                        Ok(false) => Ok(()),
                        Err(e) => Err(e),
                    },
                    SPAWNER => self.on_spawner(),
                    DBUS => self.on_dbus(),
                    Token(t) if (UPLINKS_BASE..UPLINKS_BASE + UPLINKS_MAX).contains(&t) => {
                        self.on_uplinks();
                        Ok(())
                    }
                    Token(t) if t >= HELPER_BASE && t < HELPER_BASE + self.slots.len() => {
                        self.on_helper(t - HELPER_BASE)
                    }
                    t if self.lifelines.owns(t) => {
                        fired.push(t);
                        Ok(())
                    }
                    Token(t) => {
                        warn!("event for unknown token {t}");
                        Ok(())
                    }
                };
                if let Err(e) = step {
                    return Exit::Failed(e);
                }
            }
            if !fired.is_empty() {
                self.on_lifelines(std::mem::take(&mut fired));
            }
            // Guest routes queued by this round's events go to the writer
            // now, without waiting for its answer.
            self.flush_guest_routes();
            if self.options.cleanup_only && self.cleanup_done {
                return Exit::Clean;
            }
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.slots
            .iter()
            .filter_map(|s| match s.phase {
                Phase::Down { respawn_at } => Some(respawn_at),
                Phase::Up { .. } => s.liveness.next_deadline(),
                Phase::Starting { .. } => None,
            })
            .chain(self.host_firewall.deadline())
            .min()
    }

    fn on_timers(&mut self, now: Instant) -> anyhow::Result<()> {
        if let Some(pending) = self.host_firewall.take_due(now) {
            self.follow_host_firewall(pending);
        }
        for i in 0..self.slots.len() {
            match self.slots[i].phase {
                Phase::Down { respawn_at } if now >= respawn_at => self.start_helper(i)?,
                Phase::Up { .. } => {
                    let slot = &mut self.slots[i];
                    if slot.liveness.is_hung(now) {
                        error!(
                            "{} (pid {}) has not answered a ping for {:?}; killing it",
                            slot.process.executable(),
                            pid_text(slot.pid),
                            crate::supervisor::PING_TIMEOUT
                        );
                        slot.liveness.stopped();
                        if let Some(pid) = slot.pid {
                            spawner::send_request(
                                &self.spawner,
                                SpawnerRequest::Kill {
                                    helper: slot.process,
                                    pid,
                                },
                                None,
                            )
                            .map_err(|e| anyhow!("spawner socket: {e}"))?;
                        }
                    } else if let Some(nonce) = slot.liveness.due(now, self.nonce) {
                        self.nonce += 1;
                        if let Err(e) = slot.send(Request::Ping { nonce }) {
                            debug!("ping to {}: {e}", slot.process.executable());
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Returns true when asked to stop.
    fn on_signals(&mut self) -> anyhow::Result<bool> {
        let mut stop = false;
        loop {
            // SAFETY: signalfd_siginfo is plain data; read fills it or fails.
            let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
            let size = std::mem::size_of::<libc::signalfd_siginfo>();
            // SAFETY: reading at most `size` bytes into `info`.
            let n = unsafe {
                libc::read(
                    self.signals.as_raw_fd(),
                    (&mut info as *mut libc::signalfd_siginfo).cast(),
                    size,
                )
            };
            if n != size as isize {
                break;
            }
            match info.ssi_signo as i32 {
                libc::SIGTERM | libc::SIGINT => {
                    info!("signal {} received; shutting down", info.ssi_signo);
                    stop = true;
                }
                libc::SIGCHLD => {
                    let mut status = 0;
                    // SAFETY: waitpid on our only child, with a valid out pointer.
                    let pid =
                        unsafe { libc::waitpid(self.spawner_pid, &mut status, libc::WNOHANG) };
                    if pid == self.spawner_pid {
                        bail!(
                            "the spawner (pid {pid}) {}; cannot supervise helpers any more",
                            spawner::describe_status(status)
                        );
                    }
                }
                other => debug!("ignoring signal {other}"),
            }
        }
        Ok(stop)
    }

    fn on_spawner(&mut self) -> anyhow::Result<()> {
        loop {
            let (bytes, _fds) = match self.spawner.recv_raw() {
                Ok(p) => p,
                Err(ChannelError::WouldBlock) => return Ok(()),
                Err(ChannelError::Closed) => bail!("the spawner closed its socket"),
                Err(e) => bail!("spawner socket: {e}"),
            };
            let Some(event) = SpawnerEvent::decode(&bytes) else {
                warn!("ignored a malformed {}-byte spawner event", bytes.len());
                continue;
            };
            match event {
                SpawnerEvent::Spawned { helper, pid } => {
                    let slot = self.slot_mut(helper);
                    slot.pid = Some(pid);
                    info!("{} started as pid {pid}", helper.executable());
                }
                SpawnerEvent::SpawnFailed { helper, errno } => {
                    let i = self.slot_index(helper);
                    self.helper_down(
                        i,
                        &format!("spawn failed: {}", std::io::Error::from_raw_os_error(errno)),
                    )?;
                }
                SpawnerEvent::Exited {
                    helper,
                    pid,
                    status,
                } => {
                    let i = self.slot_index(helper);
                    let reason = spawner::describe_status(status);
                    if self.slots[i].pid == Some(pid)
                        && !matches!(self.slots[i].phase, Phase::Down { .. })
                    {
                        self.helper_down(i, &reason)?;
                    } else {
                        debug!("{} (old pid {pid}) {reason}", helper.executable());
                    }
                }
            }
        }
    }

    fn on_helper(&mut self, i: usize) -> anyhow::Result<()> {
        loop {
            let Some(channel) = self.slots[i].channel() else {
                return Ok(());
            };
            let received = match channel.recv::<HelperMessage>() {
                Ok(r) => r,
                Err(ChannelError::WouldBlock) => return Ok(()),
                Err(ChannelError::Closed) => return self.helper_down(i, "closed its channel"),
                Err(e) if e.is_fatal() => {
                    return self.helper_down(i, &format!("channel error: {e}"))
                }
                Err(e) => {
                    warn!(
                        "{}: dropped a bad message: {e}",
                        self.slots[i].process.executable()
                    );
                    continue;
                }
            };
            self.on_helper_message(i, received.msg)?;
        }
    }

    fn on_helper_message(&mut self, i: usize, msg: HelperMessage) -> anyhow::Result<()> {
        match msg {
            HelperMessage::Hello(hello) => self.on_hello(i, hello)?,
            HelperMessage::Response { id, result } => {
                let slot = &mut self.slots[i];
                if slot.replay_until.is_some_and(|last| id >= last) {
                    slot.replay_until = None;
                    slot.stage = Stage::Serving;
                    debug!(
                        "{} (pid {}) answered its replay; serving",
                        slot.process.executable(),
                        pid_text(slot.pid)
                    );
                }
                if slot.process == Process::DatapathWriter && self.ndproxy.owns_request(id) {
                    slot.pending.remove(&id);
                    self.on_guest_routes_applied(result);
                    return Ok(());
                }
                let slot = &mut self.slots[i];
                let what = slot.pending.remove(&id);
                match (result, what) {
                    (Ok(Reply::Pong { nonce }), _) => {
                        slot.liveness.pong(nonce, Instant::now());
                    }
                    (Ok(_), _) => {}
                    (Err(e), what) => warn!(
                        "{} failed {}: {e}",
                        slot.process.executable(),
                        what.unwrap_or_else(|| format!("unknown request {id}"))
                    ),
                }
            }
            HelperMessage::Event(event) => match event {
                patchpanel_ipc::Event::NeighborDetected { ifindex, addr } => {
                    self.on_neighbor_detected(ifindex, addr)
                }
                patchpanel_ipc::Event::FirewallChanged(change) => {
                    // Until the datapath is up, its own setup takes care.
                    if self.datapath_ready {
                        self.host_firewall.on_change(change, Instant::now());
                    }
                }
            },
        }
        Ok(())
    }

    /// Sends `request` to a helper without waiting for the answer, which
    /// [`Manager::on_helper_message`] hands to whoever owns the returned
    /// id. Never blocks: a full channel is [`SendError::Busy`].
    pub(crate) fn send_helper(
        &mut self,
        process: Process,
        request: Request,
    ) -> Result<u64, SendError> {
        let i = self.slot_index(process);
        if !matches!(self.slots[i].phase, Phase::Up { .. }) {
            return Err(SendError::Busy);
        }
        match self.slots[i].send(request) {
            Ok(id) => Ok(id),
            Err(ChannelError::WouldBlock) => Err(SendError::Busy),
            Err(e) if !e.is_fatal() => Err(SendError::Failed(format!(
                "cannot send to {}: {e}",
                process.executable()
            ))),
            Err(e) => {
                let _ = self.helper_down(i, &format!("send failed: {e}"));
                Err(SendError::Busy)
            }
        }
    }

    /// Sends `request` to a helper and waits for its answer, handling
    /// whatever else the helper sends meanwhile. The D-Bus loop is blocked
    /// for the duration: writer operations are short, and serializing them
    /// keeps state changes in order.
    pub(crate) fn call_helper(
        &mut self,
        process: Process,
        request: Request,
        fds: &[std::os::fd::BorrowedFd<'_>],
    ) -> Result<Reply, CallError> {
        let i = self.slot_index(process);
        let name = process.executable();
        if !matches!(self.slots[i].phase, Phase::Up { .. }) {
            return Err(CallError::Failed(format!(
                "{name} is not running (it is being restarted); try again"
            )));
        }
        let id = match self.slots[i].send_with_fds(request, fds) {
            Ok(id) => id,
            // Nothing was sent (the request does not fit in a packet): the
            // helper is fine. This used to restart it, so that a caller
            // could have the writer killed and replayed at will.
            Err(e) if !e.is_fatal() => {
                return Err(CallError::Failed(format!("cannot send to {name}: {e}")));
            }
            Err(e) => {
                let _ = self.helper_down(i, &format!("send failed: {e}"));
                return Err(CallError::Failed(format!("{name} is unreachable: {e}")));
            }
        };
        let deadline = Instant::now() + WRITER_TIMEOUT;
        loop {
            let Some(channel) = self.slots[i].channel() else {
                return Err(CallError::Failed(format!(
                    "{name} exited during the request"
                )));
            };
            let received = match channel.recv::<HelperMessage>() {
                Ok(r) => r,
                Err(ChannelError::WouldBlock) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        self.slots[i].pending.remove(&id);
                        return Err(CallError::Failed(format!(
                            "{name} did not answer within {WRITER_TIMEOUT:?}"
                        )));
                    }
                    wait_readable(channel, left);
                    continue;
                }
                Err(ChannelError::Closed) => {
                    let _ = self.helper_down(i, "closed its channel");
                    return Err(CallError::Failed(format!(
                        "{name} exited during the request"
                    )));
                }
                Err(e) if e.is_fatal() => {
                    let _ = self.helper_down(i, &format!("channel error: {e}"));
                    return Err(CallError::Failed(format!("{name}: {e}")));
                }
                Err(e) => {
                    warn!("{name}: dropped a bad message: {e}");
                    continue;
                }
            };
            match received.msg {
                HelperMessage::Response { id: got, result } if got == id => {
                    self.slots[i].pending.remove(&id);
                    return result.map_err(CallError::from);
                }
                other => {
                    if let Err(e) = self.on_helper_message(i, other) {
                        warn!("{name}: {e:#}");
                    }
                }
            }
        }
    }

    fn on_uplinks(&mut self) {
        let Some(source) = self.uplink_source.as_mut() else {
            return;
        };
        match source.process() {
            Ok(events) if events.is_empty() => {}
            Ok(events) => self.on_uplink_events(events),
            Err(e) => warn!("uplinks ({}): {e}", source.name()),
        }
    }

    fn on_hello(&mut self, i: usize, hello: Hello) -> anyhow::Result<()> {
        let process = self.slots[i].process;
        let expected = role_of(process);
        if hello.protocol_version != PROTOCOL_VERSION || hello.role != expected {
            // Nothing good comes from respawning the same binary: stop.
            bail!(
                "{} greeted as {} protocol {}; expected {} protocol {PROTOCOL_VERSION} (mismatched installation?)",
                process.executable(),
                hello.role,
                hello.protocol_version,
                expected
            );
        }
        let slot = &mut self.slots[i];
        let Phase::Starting { channel } = std::mem::replace(
            &mut slot.phase,
            Phase::Down {
                respawn_at: Instant::now(),
            },
        ) else {
            bail!("{} sent a second Hello", process.executable());
        };
        slot.phase = Phase::Up { channel };
        slot.liveness.started(Instant::now());
        let replay: Vec<_> = slot.replay.entries().cloned().collect();
        let count = replay.len();
        for entry in replay {
            let fds: Vec<_> = entry.fds.iter().map(|f| f.as_fd()).collect();
            match slot.send_with_fds(entry.request, &fds) {
                Ok(id) => slot.replay_until = Some(id),
                Err(e) => return self.helper_down(i, &format!("replay failed: {e}")),
            }
        }
        if slot.replay_until.is_none() {
            slot.stage = Stage::Serving;
        }
        info!(
            "{} (pid {}) is up; replayed {count} request(s)",
            process.executable(),
            pid_text(self.slots[i].pid)
        );
        if process == Process::DatapathWriter && !self.datapath_started {
            self.datapath_started = true;
            self.start_datapath()?;
            if self.options.cleanup_only {
                info!("cleanup done");
                self.cleanup_done = true;
                return Ok(());
            }
        }
        if !self.ready
            && self.datapath_ready
            && self
                .slots
                .iter()
                .all(|s| matches!(s.phase, Phase::Up { .. }))
        {
            if let Some(dbus) = &self.dbus {
                dbus.request_name()?;
            }
            self.ready = true;
            // request_name blocked on the bus; whatever arrived meanwhile is
            // buffered in libdbus and will not wake mio again.
            self.on_dbus()?;
        }
        Ok(())
    }

    fn start_helper(&mut self, i: usize) -> anyhow::Result<()> {
        let (ours, theirs) = Channel::pair().context("socketpair")?;
        ours.set_nonblocking(true)?;
        ours.send(
            &ManagerMessage::Hello(Hello {
                protocol_version: PROTOCOL_VERSION,
                role: Role::Manager,
            }),
            &[],
        )
        .map_err(|e| anyhow!("hello: {e}"))?;
        let process = self.slots[i].process;
        spawner::send_request(
            &self.spawner,
            SpawnerRequest::Spawn {
                helper: process,
                flags: self.options.spawn_flags,
            },
            Some(theirs.as_fd()),
        )
        .map_err(|e| anyhow!("spawner socket: {e}"))?;
        drop(theirs);
        self.poll.registry().register(
            &mut SourceFd(&ours.as_raw_fd()),
            helper_token(i),
            Interest::READABLE,
        )?;
        let slot = &mut self.slots[i];
        slot.phase = Phase::Starting { channel: ours };
        slot.pid = None;
        slot.started_at = Instant::now();
        slot.pending.clear();
        slot.stage = Stage::Starting;
        slot.replay_until = None;
        debug!("asked the spawner for {}", process.executable());
        Ok(())
    }

    fn helper_down(&mut self, i: usize, reason: &str) -> anyhow::Result<()> {
        let registry = self.poll.registry();
        let slot = &mut self.slots[i];
        if let Some(channel) = slot.channel() {
            let _ = registry.deregister(&mut SourceFd(&channel.as_raw_fd()));
        }
        slot.liveness.stopped();
        let in_flight = slot.pending.len();
        slot.pending.clear();
        let uptime = slot.started_at.elapsed();
        let stage = slot.stage;
        let verdict = slot.policy.on_exit(uptime, stage);
        if slot.process == Process::DatapathWriter {
            self.on_writer_lost();
        }
        let slot = &mut self.slots[i];
        match verdict {
            Verdict::RespawnAfter(delay) => {
                let count = match stage {
                    Stage::Starting => format!(
                        "failed start {} of {}",
                        slot.policy.failures(),
                        crate::supervisor::BACKOFF.len()
                    ),
                    Stage::Serving => format!(
                        "crash {} while serving; not counted towards giving up",
                        slot.policy.crashes()
                    ),
                };
                warn!(
                    "{} (pid {}) {reason} after {:.1?}; {in_flight} request(s) lost; respawning in {delay:?} ({count})",
                    slot.process.executable(),
                    pid_text(slot.pid),
                    uptime,
                );
                slot.phase = Phase::Down {
                    respawn_at: Instant::now() + delay,
                };
                Ok(())
            }
            Verdict::GiveUp { attempts } => {
                slot.phase = Phase::Down {
                    respawn_at: Instant::now() + Duration::from_secs(3600),
                };
                bail!(
                    "giving up on {}: it failed {attempts} times in a row before serving (last: {reason}); exiting so that init restarts the whole tree",
                    slot.process.executable()
                )
            }
        }
    }

    /// Adds a request to what a respawned helper is told after its Hello.
    pub(crate) fn record_replay(&mut self, p: Process, key: &str, request: Request) {
        self.slot_mut(p).replay.record(key, request);
    }

    /// Like [`Manager::record_replay`], with descriptors sent beside it.
    pub(crate) fn record_replay_with_fds(
        &mut self,
        p: Process,
        key: &str,
        request: Request,
        fds: Vec<std::rc::Rc<OwnedFd>>,
    ) {
        self.slot_mut(p).replay.record_with_fds(key, request, fds);
    }

    /// Removes a request from a helper's replay log.
    pub(crate) fn forget_replay(&mut self, p: Process, key: &str) {
        self.slot_mut(p).replay.forget(key);
    }

    fn slot_index(&self, p: Process) -> usize {
        self.slots
            .iter()
            .position(|s| s.process == p)
            .unwrap_or_default()
    }

    fn slot_mut(&mut self, p: Process) -> &mut Slot {
        let i = self.slot_index(p);
        &mut self.slots[i]
    }

    /// Closes every helper channel (helpers exit on EOF), then the spawner's
    /// socket, and waits for the spawner to reap them all.
    fn shutdown(self) {
        let Manager {
            slots,
            spawner,
            spawner_pid,
            ..
        } = self;
        drop(slots);
        drop(spawner);
        let deadline = Instant::now() + Duration::from_secs(6);
        while Instant::now() < deadline {
            let mut status = 0;
            // SAFETY: waitpid on our only child with a valid out pointer.
            let pid = unsafe { libc::waitpid(spawner_pid, &mut status, libc::WNOHANG) };
            if pid == spawner_pid || pid < 0 {
                info!("helpers and spawner stopped");
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        warn!("the spawner did not exit within 6 s");
    }
}

/// Waits until `channel` is readable or `timeout` passes.
fn wait_readable(channel: &Channel, timeout: Duration) {
    let mut p = libc::pollfd {
        fd: channel.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = i32::try_from(timeout.as_millis())
        .unwrap_or(i32::MAX)
        .max(1);
    // SAFETY: one valid pollfd.
    unsafe { libc::poll(&mut p, 1, ms) };
}
