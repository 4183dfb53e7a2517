//! The manager's event loop: one mio `Poll` over the signalfd, the spawner
//! socket, the D-Bus connection, the uplink source, the neighbour monitor,
//! one channel per helper and the lifelines. It turns what woke it into a
//! [`crate::dispatch::Event`] for the [`Daemon`]; supervision is
//! [`Helpers`]'s. No service is reached from here.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Instant;

use anyhow::{anyhow, bail, Context as _};
use log::{debug, info, warn};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use patchpanel_addr::AddressManager;
use patchpanel_ipc::Channel;
use patchpanel_proto::{NeighborReachabilityEventSignal, NetworkDeviceChangedSignal};
use patchpanel_rtnl::neigh::NeighborMonitor;
use patchpanel_uplinks::UplinkSource;

use crate::dbus_service::{Bus, DbusService};
use crate::dispatch::{Daemon, Event, Flow, Phase, Settings};
use crate::error::CallError;
use crate::helpers::{Helpers, HelpersConfig};
use crate::lifeline::LifelineWatcher;
use crate::spawner;
use crate::state::StateFile;
use crate::uplinks::UplinkView;

const SIGNALS: Token = Token(0);
const SPAWNER: Token = Token(1);
const DBUS: Token = Token(2);
const UPLINKS_BASE: usize = 3;
const UPLINKS_MAX: usize = 4;
const NEIGHBORS: Token = Token(8);
const HELPER_BASE: usize = 10;
const LIFELINE_BASE: usize = 1000;

/// What a token stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Signals,
    Spawner,
    Bus,
    Uplinks,
    Neighbors,
    Helper(usize),
    Lifeline(Token),
    Unknown(Token),
}

/// Everything the loop is built from.
pub struct Startup {
    pub signals: OwnedFd,
    pub spawner: Channel,
    pub spawner_pid: libc::pid_t,
    pub dbus: Option<DbusService>,
    pub uplink_source: Option<Box<dyn UplinkSource>>,
    /// The neighbour table's notifications (`NeighborReachabilityEvent`).
    pub neighbor_monitor: Option<NeighborMonitor>,
    pub store: StateFile,
    pub addrs: AddressManager,
    pub helpers: HelpersConfig,
    pub settings: Settings,
}

impl std::fmt::Debug for Startup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Startup")
            .field("spawner_pid", &self.spawner_pid)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

pub struct Manager {
    poll: Poll,
    signals: OwnedFd,
    dbus: Option<DbusService>,
    uplink_source: Option<Box<dyn UplinkSource>>,
    neighbor_monitor: Option<NeighborMonitor>,
    helpers: Helpers,
    daemon: Daemon,
}

impl std::fmt::Debug for Manager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Manager")
            .field("phase", &self.daemon.phase())
            .finish_non_exhaustive()
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

/// Where answers go when there is no bus (`--cleanup`): nowhere.
struct NoBus;

impl Bus for NoBus {
    fn reply(&mut self, _call: &dbus::Message, _result: Result<Vec<u8>, CallError>) {}
    fn device_changed(&mut self, _signal: NetworkDeviceChangedSignal) {}
    fn neighbor_reachability(&mut self, _signal: NeighborReachabilityEventSignal) {}
    fn network_configuration_changed(&mut self) {}
}

enum Exit {
    Clean,
    Failed(anyhow::Error),
}

impl Manager {
    pub fn new(startup: Startup) -> anyhow::Result<Manager> {
        let Startup {
            signals,
            spawner,
            spawner_pid,
            dbus,
            mut uplink_source,
            neighbor_monitor,
            store,
            addrs,
            helpers,
            settings,
        } = startup;
        let poll = Poll::new().context("epoll")?;
        spawner.set_nonblocking(true)?;
        let registry = poll.registry();
        registry.register(
            &mut SourceFd(&signals.as_raw_fd()),
            SIGNALS,
            Interest::READABLE,
        )?;
        registry.register(
            &mut SourceFd(&spawner.as_raw_fd()),
            SPAWNER,
            Interest::READABLE,
        )?;
        if let Some(dbus) = &dbus {
            registry.register(&mut SourceFd(&dbus.fd()), DBUS, Interest::READABLE)?;
        }
        if let Some(monitor) = &neighbor_monitor {
            registry.register(
                &mut SourceFd(&monitor.as_raw_fd()),
                NEIGHBORS,
                Interest::READABLE,
            )?;
        }
        let mut uplinks = UplinkView::default();
        if let Some(source) = uplink_source.as_mut() {
            for (i, fd) in source.fds().into_iter().take(UPLINKS_MAX).enumerate() {
                registry.register(
                    &mut SourceFd(&fd),
                    Token(UPLINKS_BASE + i),
                    Interest::READABLE,
                )?;
            }
            // The first read reports every uplink present as Added.
            for event in source.process().context("reading the uplinks")? {
                uplinks.apply(&event);
            }
            info!("uplinks at start: [{}]", uplinks.names().join(", "));
        }
        let helpers = Helpers::new(
            registry.try_clone().context("epoll")?,
            HELPER_BASE,
            spawner,
            spawner_pid,
            helpers,
        );
        let lifelines = LifelineWatcher::new(registry.try_clone().context("epoll")?, LIFELINE_BASE);
        let daemon = Daemon::new(settings, store, addrs, uplinks, lifelines);
        Ok(Manager {
            poll,
            signals,
            dbus,
            uplink_source,
            neighbor_monitor,
            helpers,
            daemon,
        })
    }

    /// Runs until SIGTERM/SIGINT (Ok) or a fatal failure (Err). A panic
    /// is not caught: it ends the process with the state file in place,
    /// and the next run re-adopts what this one set up (a handler half-way
    /// through a change must not keep serving on half-changed state).
    pub fn run(mut self) -> anyhow::Result<()> {
        let result = self.event_loop();
        if let Err(e) = self.handle(Event::Stop) {
            warn!("stopping: {e:#}");
        }
        let Manager { helpers, .. } = self;
        helpers.shutdown();
        match result {
            Exit::Clean => Ok(()),
            Exit::Failed(e) => Err(e),
        }
    }

    fn source(&self, token: Token) -> Source {
        match token {
            SIGNALS => Source::Signals,
            SPAWNER => Source::Spawner,
            DBUS => Source::Bus,
            NEIGHBORS => Source::Neighbors,
            Token(t) if (UPLINKS_BASE..UPLINKS_BASE + UPLINKS_MAX).contains(&t) => Source::Uplinks,
            t => match self.helpers.slot_of(t) {
                Some(i) => Source::Helper(i),
                None if self.daemon.owns_lifeline(t) => Source::Lifeline(t),
                None => Source::Unknown(t),
            },
        }
    }

    fn event_loop(&mut self) -> Exit {
        match self.serve() {
            Ok(()) => Exit::Clean,
            Err(e) => Exit::Failed(e),
        }
    }

    /// The loop proper: returns Ok when asked to stop or when `--cleanup`
    /// is done.
    fn serve(&mut self) -> anyhow::Result<()> {
        let mut events = Events::with_capacity(64);
        loop {
            let now = Instant::now();
            self.helpers.on_timers(now)?;
            if self.after_helpers()? == Flow::Exit {
                return Ok(());
            }
            if self.daemon.deadline().is_some_and(|d| d <= now) {
                self.handle(Event::Timers(now))?;
            }
            let timeout = [self.helpers.next_deadline(), self.daemon.deadline()]
                .into_iter()
                .flatten()
                .min()
                .map(|d| d.saturating_duration_since(Instant::now()));
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                bail!("epoll_wait: {e}");
            }
            let mut fired = Vec::new();
            let sources: Vec<Source> = events.iter().map(|e| self.source(e.token())).collect();
            for source in sources {
                match source {
                    Source::Signals => {
                        if self.on_signals()? {
                            return Ok(());
                        }
                    }
                    Source::Spawner => self.helpers.on_spawner()?,
                    Source::Bus => self.on_bus()?,
                    Source::Uplinks => self.on_uplinks()?,
                    Source::Neighbors => self.on_neighbors()?,
                    Source::Helper(i) => self.helpers.on_readable(i)?,
                    Source::Lifeline(t) => fired.push(t),
                    Source::Unknown(Token(t)) => warn!("event for unknown token {t}"),
                }
                if self.after_helpers()? == Flow::Exit {
                    return Ok(());
                }
            }
            if !fired.is_empty() {
                self.handle(Event::Lifelines(fired))?;
            }
            if self.after_helpers()? == Flow::Exit {
                return Ok(());
            }
        }
    }

    /// One event through the daemon, with the bus (or nowhere) for its
    /// answers and signals.
    fn handle(&mut self, event: Event) -> anyhow::Result<Flow> {
        let Manager {
            dbus,
            helpers,
            daemon,
            ..
        } = self;
        let flow = match dbus {
            Some(bus) => daemon.handle(helpers, bus, event)?,
            None => daemon.handle(helpers, &mut NoBus, event)?,
        };
        if let Some(fatal) = helpers.take_fatal() {
            return Err(fatal);
        }
        Ok(flow)
    }

    /// Hands the daemon what the helpers said (directly or while a call
    /// waited), until nothing is left; then claims the bus name once
    /// everything is up.
    fn after_helpers(&mut self) -> anyhow::Result<Flow> {
        if let Some(fatal) = self.helpers.take_fatal() {
            return Err(fatal);
        }
        loop {
            let queued = self.helpers.take_queued();
            if queued.is_empty() {
                break;
            }
            for event in queued {
                if self.handle(Event::Helper(event))? == Flow::Exit {
                    return Ok(Flow::Exit);
                }
            }
        }
        if self.daemon.phase() == Phase::DatapathUp && self.helpers.all_up() {
            if let Some(dbus) = &self.dbus {
                dbus.request_name()?;
            }
            self.daemon.mark_ready();
            // request_name blocked on the bus; whatever arrived meanwhile
            // is buffered in libdbus and will not wake mio again.
            self.on_bus()?;
        }
        Ok(Flow::Continue)
    }

    /// Reads the bus and serves every queued call, until nothing is left.
    /// A call may make a blocking bus round trip (a caller's uid), during
    /// which libdbus queues later calls internally: the socket is then
    /// empty and edge-triggered epoll would not wake us for them, so the
    /// queue is drained again after every batch.
    fn on_bus(&mut self) -> anyhow::Result<()> {
        loop {
            let Some(dbus) = self.dbus.as_mut() else {
                return Ok(());
            };
            dbus.dispatch()?;
            let reloaded = dbus.take_firewalld_reloaded();
            let calls = dbus.take_calls(self.daemon.port_policy());
            if reloaded {
                self.handle(Event::FirewalldReloaded)?;
            }
            if calls.is_empty() {
                return Ok(());
            }
            for call in calls {
                self.handle(Event::Call(call))?;
            }
        }
    }

    fn on_uplinks(&mut self) -> anyhow::Result<()> {
        let Some(source) = self.uplink_source.as_mut() else {
            return Ok(());
        };
        match source.process() {
            Ok(events) if events.is_empty() => Ok(()),
            Ok(events) => self.handle(Event::Uplinks(events)).map(|_| ()),
            Err(e) => {
                warn!("uplinks ({}): {e}", source.name());
                Ok(())
            }
        }
    }

    fn on_neighbors(&mut self) -> anyhow::Result<()> {
        let Some(monitor) = self.neighbor_monitor.as_mut() else {
            return Ok(());
        };
        match monitor.read_events() {
            Ok(events) if events.is_empty() => Ok(()),
            Ok(events) => self.handle(Event::Neighbors(events)).map(|_| ()),
            Err(e) => {
                warn!("neighbour monitor: {e}");
                Ok(())
            }
        }
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
                    let spawner_pid = self.helpers.spawner_pid();
                    let mut status = 0;
                    // SAFETY: waitpid on our only child, with a valid out pointer.
                    let pid = unsafe { libc::waitpid(spawner_pid, &mut status, libc::WNOHANG) };
                    if pid == spawner_pid {
                        return Err(anyhow!(
                            "the spawner (pid {pid}) {}; cannot supervise helpers any more",
                            spawner::describe_status(status)
                        ));
                    }
                }
                other => debug!("ignoring signal {other}"),
            }
        }
        Ok(stop)
    }
}
