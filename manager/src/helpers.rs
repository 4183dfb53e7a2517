//! The helpers as the manager sees them: one slot per sandboxed helper
//! (its channel, pid, lifecycle, replay log, liveness and the requests in
//! flight), the spawner that starts them, and the transport requests go
//! through.
//!
//! Supervision decisions are [`crate::supervisor`]'s; this module carries
//! them out. A call ([`Helpers::call`]) blocks the manager's loop until
//! its answer arrives; whatever else a helper sends meanwhile (events,
//! answers to requests sent without waiting) is queued and handed to the
//! loop afterwards ([`Helpers::take_queued`]), never dispatched inside
//! the call: no handler ever runs in the middle of another one.

use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use log::{debug, error, info, warn};
use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};
use patchpanel_helper_runtime::role_of;
use patchpanel_ipc::datapath::WriterConfig;
use patchpanel_ipc::{
    Channel, ChannelError, Event, Hello, HelperError, HelperMessage, LogLevel, ManagerMessage,
    Reply, Request, Role, PROTOCOL_VERSION,
};
use patchpanel_sandbox::Process;

use crate::error::CallError;
use crate::spawner::{self, SpawnerEvent, SpawnerRequest};
use crate::supervisor::{Liveness, ReplayLog, RespawnPolicy, Stage, Verdict};

/// How long a call waits for its answer, after which the helper counts as
/// hung. Longer than [`crate::supervisor::REQUEST_DEADLINE`] for the
/// requests answered later: a call may be one big plan (a stop or the
/// release of a thousand namespaces at once takes seconds).
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

fn pid_text(pid: Option<i32>) -> String {
    pid.map(|p| p.to_string())
        .unwrap_or_else(|| "unknown".into())
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
    /// Requests sent without waiting whose answer goes back to the loop.
    unawaited: Vec<u64>,
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

    fn is_up(&self) -> bool {
        matches!(self.phase, Phase::Up { .. })
    }

    fn send(&mut self, request: Request, fds: &[BorrowedFd<'_>]) -> Result<u64, ChannelError> {
        let id = self.next_id;
        self.next_id += 1;
        let what = request_label(&request);
        let channel = self.channel().ok_or(ChannelError::Closed)?;
        channel.send(&ManagerMessage::Request { id, body: request }, fds)?;
        self.pending.insert(id, what);
        self.liveness.sent(id, Instant::now());
        Ok(id)
    }
}

/// A short description of a request for logs (plans can be long).
fn request_label(request: &Request) -> String {
    match request {
        Request::Apply(plan) => format!("plan {:?} ({} steps)", plan.label, plan.steps.len()),
        other => format!("{other:?}"),
    }
}

/// Why [`Helpers::send`] sent nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendError {
    /// The helper is not up, or its channel is full: try again later.
    Busy,
    /// The request cannot be sent at all (too large to encode).
    Failed(String),
}

/// What the loop acts on after the helpers were read or supervised.
#[derive(Debug)]
pub enum HelperEvent {
    /// A helper said Hello and was sent its replay log.
    Up(Process),
    /// A helper went down (it will be respawned).
    Lost(Process),
    /// A helper's unprompted event.
    Event(Process, Event),
    /// The answer to a request sent with [`Helpers::send`].
    Answer {
        process: Process,
        id: u64,
        result: Result<Reply, HelperError>,
    },
}

/// How the helpers are started.
#[derive(Debug, Clone)]
pub struct HelpersConfig {
    pub spawn_flags: u32,
    pub log_level: LogLevel,
    pub writer: WriterConfig,
}

/// See the module documentation.
#[derive(Debug)]
pub struct Helpers {
    registry: Registry,
    token_base: usize,
    spawner: Channel,
    spawner_pid: libc::pid_t,
    spawn_flags: u32,
    slots: Vec<Slot>,
    /// Messages that arrived during a call, for the loop.
    queued: VecDeque<HelperEvent>,
    /// A give-up decided in the middle of a call, for the loop to act on.
    fatal: Option<anyhow::Error>,
}

impl Helpers {
    /// One slot per helper, each due to start now; helper `i`'s channel
    /// is registered under token `token_base + i`.
    pub fn new(
        registry: Registry,
        token_base: usize,
        spawner: Channel,
        spawner_pid: libc::pid_t,
        config: HelpersConfig,
    ) -> Helpers {
        let now = Instant::now();
        let slots = Process::HELPERS
            .iter()
            .map(|&process| {
                let mut replay = ReplayLog::default();
                replay.record("log-level", Request::SetLogLevel(config.log_level));
                if process == Process::DatapathWriter {
                    // SetupFirewall joins the replay once the first start
                    // has removed the previous run's leftovers.
                    replay.record("config", Request::ConfigureWriter(config.writer.clone()));
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
                    unawaited: Vec::new(),
                    stage: Stage::Starting,
                    replay_until: None,
                }
            })
            .collect();
        Helpers {
            registry,
            token_base,
            spawner,
            spawner_pid,
            spawn_flags: config.spawn_flags,
            slots,
            queued: VecDeque::new(),
            fatal: None,
        }
    }

    /// The spawner's socket, to register with the loop.
    pub fn spawner_fd(&self) -> std::os::fd::RawFd {
        self.spawner.as_raw_fd()
    }

    pub fn spawner_pid(&self) -> libc::pid_t {
        self.spawner_pid
    }

    /// The slot a token belongs to, if any.
    pub fn slot_of(&self, token: Token) -> Option<usize> {
        let i = token.0.checked_sub(self.token_base)?;
        (i < self.slots.len()).then_some(i)
    }

    fn index(&self, p: Process) -> Result<usize, CallError> {
        self.slots
            .iter()
            .position(|s| s.process == p)
            .ok_or_else(|| CallError::Failed(format!("{} is not a helper", p.executable())))
    }

    /// Whether every helper is up.
    pub fn all_up(&self) -> bool {
        self.slots.iter().all(Slot::is_up)
    }

    /// The next instant a timer is due.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.slots
            .iter()
            .filter_map(|s| match s.phase {
                Phase::Down { respawn_at } => Some(respawn_at),
                Phase::Up { .. } => s.liveness.next_deadline(),
                Phase::Starting { .. } => None,
            })
            .min()
    }

    /// Respawns what is due and kills hung helpers (a request unanswered
    /// past its deadline).
    pub fn on_timers(&mut self, now: Instant) -> anyhow::Result<()> {
        for i in 0..self.slots.len() {
            match self.slots[i].phase {
                Phase::Down { respawn_at } if now >= respawn_at => self.start(i)?,
                Phase::Up { .. } => {
                    if let Some(id) = self.slots[i].liveness.overdue(now) {
                        self.kill_hung(i, id, crate::supervisor::REQUEST_DEADLINE)?;
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Helper `i` left request `id` unanswered past its deadline: the
    /// spawner kills it; its exit then respawns it with its replay log.
    fn kill_hung(&mut self, i: usize, id: u64, waited: Duration) -> anyhow::Result<()> {
        let slot = &mut self.slots[i];
        error!(
            "{} (pid {}) has not answered {} for {:?}; killing it",
            slot.process.executable(),
            pid_text(slot.pid),
            slot.pending.get(&id).map_or_else(
                || format!("request {id}"),
                |w| format!("request {id} ({w})")
            ),
            waited
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
        Ok(())
    }

    /// Reads the spawner's reports (pids, exits, failed spawns).
    pub fn on_spawner(&mut self) -> anyhow::Result<()> {
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
                    let i = self.index(helper).map_err(|e| anyhow!("{e}"))?;
                    self.slots[i].pid = Some(pid);
                    info!("{} started as pid {pid}", helper.executable());
                }
                SpawnerEvent::SpawnFailed { helper, errno } => {
                    let i = self.index(helper).map_err(|e| anyhow!("{e}"))?;
                    self.down(
                        i,
                        &format!("spawn failed: {}", std::io::Error::from_raw_os_error(errno)),
                    )?;
                }
                SpawnerEvent::Exited {
                    helper,
                    pid,
                    status,
                } => {
                    let i = self.index(helper).map_err(|e| anyhow!("{e}"))?;
                    let reason = spawner::describe_status(status);
                    if self.slots[i].pid == Some(pid)
                        && !matches!(self.slots[i].phase, Phase::Down { .. })
                    {
                        self.down(i, &reason)?;
                    } else {
                        debug!("{} (old pid {pid}) {reason}", helper.executable());
                    }
                }
            }
        }
    }

    /// Drains helper `i`'s channel into events for the loop.
    pub fn on_readable(&mut self, i: usize) -> anyhow::Result<()> {
        loop {
            let Some(channel) = self.slots[i].channel() else {
                return Ok(());
            };
            let received = match channel.recv::<HelperMessage>() {
                Ok(r) => r,
                Err(ChannelError::WouldBlock) => return Ok(()),
                Err(ChannelError::Closed) => return self.down(i, "closed its channel"),
                Err(e) if e.is_fatal() => return self.down(i, &format!("channel error: {e}")),
                Err(e) => {
                    warn!(
                        "{}: dropped a bad message: {e}",
                        self.slots[i].process.executable()
                    );
                    continue;
                }
            };
            self.receive(i, received.msg)?;
        }
    }

    /// What the loop has to act on, oldest first.
    pub fn take_queued(&mut self) -> Vec<HelperEvent> {
        self.queued.drain(..).collect()
    }

    /// Handles one message: Hellos, pongs and answers nobody waits for
    /// here; events and awaited-later answers are queued.
    fn receive(&mut self, i: usize, msg: HelperMessage) -> anyhow::Result<()> {
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
                let what = slot.pending.remove(&id);
                slot.liveness.answered(id);
                if let Some(pos) = slot.unawaited.iter().position(|&u| u == id) {
                    slot.unawaited.swap_remove(pos);
                    self.queued.push_back(HelperEvent::Answer {
                        process: slot.process,
                        id,
                        result,
                    });
                    return Ok(());
                }
                match result {
                    Ok(_) => {}
                    Err(e) => warn!(
                        "{} failed {}: {e}",
                        slot.process.executable(),
                        what.unwrap_or_else(|| format!("unknown request {id}"))
                    ),
                }
            }
            HelperMessage::Event(event) => {
                let process = self.slots[i].process;
                self.queued.push_back(HelperEvent::Event(process, event));
            }
        }
        Ok(())
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
        slot.liveness.stopped();
        let replay: Vec<_> = slot.replay.entries().cloned().collect();
        let count = replay.len();
        for entry in replay {
            let fds: Vec<_> = entry.fds.iter().map(|f| f.as_fd()).collect();
            match slot.send(entry.request, &fds) {
                Ok(id) => slot.replay_until = Some(id),
                Err(e) => return self.down(i, &format!("replay failed: {e}")),
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
        self.queued.push_back(HelperEvent::Up(process));
        Ok(())
    }

    fn start(&mut self, i: usize) -> anyhow::Result<()> {
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
                flags: self.spawn_flags,
            },
            Some(theirs.as_fd()),
        )
        .map_err(|e| anyhow!("spawner socket: {e}"))?;
        drop(theirs);
        self.registry.register(
            &mut SourceFd(&ours.as_raw_fd()),
            Token(self.token_base + i),
            Interest::READABLE,
        )?;
        let slot = &mut self.slots[i];
        slot.phase = Phase::Starting { channel: ours };
        slot.pid = None;
        slot.started_at = Instant::now();
        slot.pending.clear();
        slot.liveness.stopped();
        slot.unawaited.clear();
        slot.stage = Stage::Starting;
        slot.replay_until = None;
        debug!("asked the spawner for {}", process.executable());
        Ok(())
    }

    /// Helper `i` died or misbehaved: respawn it later, or give up (an
    /// error: the manager exits so that init restarts the tree).
    fn down(&mut self, i: usize, reason: &str) -> anyhow::Result<()> {
        let slot = &mut self.slots[i];
        if let Some(channel) = slot.channel() {
            let _ = self
                .registry
                .deregister(&mut SourceFd(&channel.as_raw_fd()));
        }
        slot.liveness.stopped();
        let in_flight = slot.pending.len();
        slot.pending.clear();
        slot.unawaited.clear();
        let uptime = slot.started_at.elapsed();
        let stage = slot.stage;
        let verdict = slot.policy.on_exit(uptime, stage);
        self.queued.push_back(HelperEvent::Lost(slot.process));
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

    /// Sends `request` without waiting; its answer comes back to the loop
    /// as [`HelperEvent::Answer`]. Never blocks: a full channel is
    /// [`SendError::Busy`].
    pub fn send(&mut self, process: Process, request: Request) -> Result<u64, SendError> {
        let i = self
            .index(process)
            .map_err(|e| SendError::Failed(e.to_string()))?;
        if !self.slots[i].is_up() {
            return Err(SendError::Busy);
        }
        match self.slots[i].send(request, &[]) {
            Ok(id) => {
                self.slots[i].unawaited.push(id);
                Ok(id)
            }
            Err(ChannelError::WouldBlock) => Err(SendError::Busy),
            Err(e) if !e.is_fatal() => Err(SendError::Failed(format!(
                "cannot send to {}: {e}",
                process.executable()
            ))),
            Err(e) => {
                self.down_in_call(i, &format!("send failed: {e}"));
                Err(SendError::Busy)
            }
        }
    }

    /// Like [`Helpers::send`], but a full channel is waited out (for up to
    /// the call timeout) instead of refused: for requests that must follow
    /// each other with nothing in between.
    pub fn send_waiting(&mut self, process: Process, request: Request) -> Result<u64, SendError> {
        let i = self
            .index(process)
            .map_err(|e| SendError::Failed(e.to_string()))?;
        let deadline = Instant::now() + CALL_TIMEOUT;
        loop {
            if !self.slots[i].is_up() {
                return Err(SendError::Busy);
            }
            match self.slots[i].send(request.clone(), &[]) {
                Ok(id) => {
                    self.slots[i].unawaited.push(id);
                    return Ok(id);
                }
                Err(ChannelError::WouldBlock) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    let Some(channel) = self.slots[i].channel() else {
                        return Err(SendError::Busy);
                    };
                    if left.is_zero() {
                        return Err(SendError::Failed(format!(
                            "{} took nothing for {CALL_TIMEOUT:?}",
                            process.executable()
                        )));
                    }
                    wait_writable(channel, left);
                }
                Err(e) if !e.is_fatal() => {
                    return Err(SendError::Failed(format!(
                        "cannot send to {}: {e}",
                        process.executable()
                    )))
                }
                Err(e) => {
                    self.down_in_call(i, &format!("send failed: {e}"));
                    return Err(SendError::Busy);
                }
            }
        }
    }

    /// Sends `request` and waits for its answer. Anything else the helper
    /// sends meanwhile is queued for the loop.
    pub fn call(
        &mut self,
        process: Process,
        request: Request,
        fds: &[BorrowedFd<'_>],
    ) -> Result<Reply, CallError> {
        let i = self.index(process)?;
        let name = process.executable();
        if !self.slots[i].is_up() {
            return Err(CallError::Failed(format!(
                "{name} is not running (it is being restarted); try again"
            )));
        }
        let id = match self.slots[i].send(request, fds) {
            Ok(id) => id,
            // Nothing was sent (the request does not fit in a packet): the
            // helper is fine. This used to restart it, so that a caller
            // could have the writer killed and replayed at will.
            Err(e) if !e.is_fatal() => {
                return Err(CallError::Failed(format!("cannot send to {name}: {e}")));
            }
            Err(e) => {
                self.down_in_call(i, &format!("send failed: {e}"));
                return Err(CallError::Failed(format!("{name} is unreachable: {e}")));
            }
        };
        let deadline = Instant::now() + CALL_TIMEOUT;
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
                        if let Err(e) = self.kill_hung(i, id, CALL_TIMEOUT) {
                            self.fatal.get_or_insert(e);
                        }
                        self.slots[i].pending.remove(&id);
                        return Err(CallError::Failed(format!(
                            "{name} did not answer within {CALL_TIMEOUT:?}; it is being restarted"
                        )));
                    }
                    wait_readable(channel, left);
                    continue;
                }
                Err(ChannelError::Closed) => {
                    self.down_in_call(i, "closed its channel");
                    return Err(CallError::Failed(format!(
                        "{name} exited during the request"
                    )));
                }
                Err(e) if e.is_fatal() => {
                    self.down_in_call(i, &format!("channel error: {e}"));
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
                    self.slots[i].liveness.answered(id);
                    return result.map_err(CallError::from);
                }
                other => {
                    if let Err(e) = self.receive(i, other) {
                        warn!("{name}: {e:#}");
                    }
                }
            }
        }
    }

    /// A helper died in the middle of a call (or a send). Giving up on it
    /// (the tree exits) is the loop's business: the decision waits for
    /// [`Helpers::take_fatal`].
    fn down_in_call(&mut self, i: usize, reason: &str) {
        if let Err(fatal) = self.down(i, reason) {
            self.fatal.get_or_insert(fatal);
        }
    }

    /// A give-up decided during a call, if any: the loop exits with it.
    pub fn take_fatal(&mut self) -> Option<anyhow::Error> {
        self.fatal.take()
    }

    /// Adds a request to what a respawned helper is told after its Hello.
    pub fn record_replay(&mut self, p: Process, key: &str, request: Request) {
        if let Ok(i) = self.index(p) {
            self.slots[i].replay.record(key, request);
        }
    }

    /// Like [`Helpers::record_replay`], with descriptors sent beside it.
    pub fn record_replay_with_fds(
        &mut self,
        p: Process,
        key: &str,
        request: Request,
        fds: Vec<Rc<OwnedFd>>,
    ) {
        if let Ok(i) = self.index(p) {
            self.slots[i].replay.record_with_fds(key, request, fds);
        }
    }

    /// Removes a request from a helper's replay log.
    pub fn forget_replay(&mut self, p: Process, key: &str) {
        if let Ok(i) = self.index(p) {
            self.slots[i].replay.forget(key);
        }
    }

    /// Closes every helper channel (helpers exit on EOF), then the
    /// spawner's socket, and waits for the spawner to reap them all.
    pub fn shutdown(self) {
        let Helpers {
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
    wait_for(channel, libc::POLLIN, timeout)
}

/// Waits until `channel` has room or `timeout` passes.
fn wait_writable(channel: &Channel, timeout: Duration) {
    wait_for(channel, libc::POLLOUT, timeout)
}

fn wait_for(channel: &Channel, events: libc::c_short, timeout: Duration) {
    let mut p = libc::pollfd {
        fd: channel.as_raw_fd(),
        events,
        revents: 0,
    };
    let ms = i32::try_from(timeout.as_millis())
        .unwrap_or(i32::MAX)
        .max(1);
    // SAFETY: one valid pollfd.
    unsafe { libc::poll(&mut p, 1, ms) };
}
