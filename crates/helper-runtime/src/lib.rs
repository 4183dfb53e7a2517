//! The skeleton every helper runs: parse the spawner's arguments, finish
//! the sandbox, install the seccomp filter, greet the manager, then serve
//! requests from one mio loop until the manager's end of the socket closes.
//!
//! A helper supplies a [`Service`] with its own requests, event sources and
//! timed work; the runtime answers `Ping` and `SetLogLevel` for all of them.
//! What the helper sends goes through an [`Outbox`]: a slow manager costs
//! dropped events (counted), never the helper's life.

use std::os::fd::{FromRawFd, OwnedFd};
use std::process::ExitCode;
use std::time::Instant;

use log::{debug, error, info, warn, LevelFilter};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Registry, Token};
use patchpanel_ipc::{
    Channel, ChannelError, Event, Hello, HelperError, HelperMessage, LogLevel, ManagerMessage,
    Reply, Request, Role, PROTOCOL_VERSION,
};
use patchpanel_sandbox::{Process, SeccompMode};

mod outbox;
pub use outbox::{Outbox, DROP_LOG_INTERVAL, MAX_QUEUED_RESPONSES};

/// The token of the manager channel; services use other tokens.
pub const CHANNEL: Token = Token(0);

/// What a helper adds to the common loop.
pub trait Service {
    /// Handles a request the runtime does not answer itself; `None` when the
    /// request is not one this helper serves (the runtime answers
    /// `Unsupported`).
    fn handle(
        &mut self,
        request: &Request,
        fds: Vec<OwnedFd>,
    ) -> Option<Result<Reply, HelperError>>;

    /// Opens the helper's own sockets and registers them with the loop
    /// under tokens other than [`CHANNEL`]. Called once, after the sandbox
    /// is finished and before the seccomp filter is installed, so it may
    /// make system calls the filter forbids. An error ends the helper.
    fn start(&mut self, _registry: &Registry) -> Result<(), String> {
        Ok(())
    }

    /// One of the sources registered by [`Service::start`] is ready
    /// (edge-triggered: drain it). Returns the events to send to the
    /// manager; an error ends the helper.
    fn ready(&mut self, _token: Token) -> Result<Vec<Event>, String> {
        Ok(Vec::new())
    }

    /// When [`Service::tick`] has work next; the loop waits no longer.
    fn next_deadline(&self) -> Option<Instant> {
        None
    }

    /// Timed work, called once [`Service::next_deadline`] has passed.
    /// Returns the events to send to the manager; an error ends the helper.
    fn tick(&mut self, _now: Instant) -> Result<Vec<Event>, String> {
        Ok(Vec::new())
    }
}

/// A helper with nothing beyond the common requests (yet).
#[derive(Debug, Default)]
pub struct NoService;

impl Service for NoService {
    fn handle(
        &mut self,
        _request: &Request,
        _fds: Vec<OwnedFd>,
    ) -> Option<Result<Reply, HelperError>> {
        None
    }
}

/// Command line given by the spawner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HelperArgs {
    pub ipc_fd: i32,
    pub seccomp: SeccompMode,
    pub log_to_stderr: bool,
    pub selftest_forbidden_syscall: bool,
}

impl HelperArgs {
    pub fn parse(args: impl IntoIterator<Item = String>) -> Result<HelperArgs, String> {
        let mut ipc_fd = None;
        let mut seccomp = SeccompMode::Enforce;
        let mut log_to_stderr = false;
        let mut selftest = false;
        let mut it = args.into_iter();
        while let Some(arg) = it.next() {
            let (flag, inline) = match arg.split_once('=') {
                Some((f, v)) => (f.to_string(), Some(v.to_string())),
                None => (arg.clone(), None),
            };
            let mut value = |name: &str| {
                inline
                    .clone()
                    .or_else(|| it.next())
                    .ok_or_else(|| format!("{name} needs a value"))
            };
            match flag.as_str() {
                "--ipc-fd" => {
                    let v = value("--ipc-fd")?;
                    let fd: i32 = v
                        .parse()
                        .map_err(|_| format!("--ipc-fd: {v:?} is not a descriptor number"))?;
                    if fd < 3 {
                        return Err(format!("--ipc-fd: {fd} is a standard stream"));
                    }
                    ipc_fd = Some(fd);
                }
                "--seccomp" => seccomp = value("--seccomp")?.parse()?,
                "--log-to-stderr" => log_to_stderr = true,
                "--selftest-forbidden-syscall" => selftest = true,
                other => return Err(format!("unknown argument {other:?}")),
            }
        }
        Ok(HelperArgs {
            ipc_fd: ipc_fd.ok_or("--ipc-fd is required")?,
            seccomp,
            log_to_stderr,
            selftest_forbidden_syscall: selftest,
        })
    }
}

pub fn role_of(process: Process) -> Role {
    match process {
        Process::Manager => Role::Manager,
        Process::DatapathWriter => Role::DatapathWriter,
        Process::NdProxy => Role::NdProxy,
        Process::McastForwarder => Role::McastForwarder,
        Process::AdbProxy => Role::AdbProxy,
        Process::SocketService => Role::SocketService,
        Process::DhcpServer => Role::DhcpServer,
    }
}

fn level_filter(level: LogLevel) -> LevelFilter {
    match level {
        LogLevel::Error => LevelFilter::Error,
        LogLevel::Warn => LevelFilter::Warn,
        LogLevel::Info => LevelFilter::Info,
        LogLevel::Debug => LevelFilter::Debug,
        LogLevel::Trace => LevelFilter::Trace,
    }
}

/// Entry point of every helper's `main`.
pub fn run<S: Service>(process: Process, service: S) -> ExitCode {
    let args = match HelperArgs::parse(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{}: {e}", process.executable());
            return ExitCode::from(2);
        }
    };
    patchpanel_logging::init(
        process.executable(),
        patchpanel_logging::Sink::choose(args.log_to_stderr),
        LevelFilter::Info,
    );
    patchpanel_sandbox::set_process_name(process.short_name());
    match serve(process, &args, service) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn serve<S: Service>(process: Process, args: &HelperArgs, mut service: S) -> Result<(), String> {
    let role = role_of(process);
    patchpanel_sandbox::finish_helper_sandbox(process).map_err(|e| format!("sandbox: {e}"))?;
    // SAFETY: the spawner placed our end of the socket pair at this number
    // and nothing else in this process owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(args.ipc_fd) };
    let channel = Channel::from_fd(fd).map_err(|e| format!("--ipc-fd {}: {e}", args.ipc_fd))?;
    channel
        .set_nonblocking(true)
        .map_err(|e| format!("ipc socket: {e}"))?;
    let mut poll = Poll::new().map_err(|e| format!("epoll: {e}"))?;
    poll.registry()
        .register(
            &mut SourceFd(&std::os::fd::AsRawFd::as_raw_fd(&channel)),
            CHANNEL,
            Interest::READABLE,
        )
        .map_err(|e| format!("epoll: {e}"))?;
    service.start(poll.registry())?;

    info!(
        "{} sandboxed: uid {} {} seccomp={}",
        role,
        // SAFETY: getuid has no preconditions.
        unsafe { libc::getuid() },
        patchpanel_sandbox::describe_current_caps(),
        args.seccomp.as_str()
    );
    patchpanel_logging::log_panics();
    patchpanel_sandbox::install_filter(process, args.seccomp)
        .map_err(|e| format!("seccomp filter: {e}"))?;
    if args.selftest_forbidden_syscall {
        warn!("self test: calling ptrace(PTRACE_TRACEME), which no policy allows");
        // SAFETY: PTRACE_TRACEME takes no pointers; the filter should kill us.
        let rc = unsafe { libc::ptrace(libc::PTRACE_TRACEME, 0, 0, 0) };
        warn!("self test: ptrace returned {rc}; the filter did not kill this process");
    }

    let mut outbox = Outbox::new(Instant::now());
    outbox.response(
        &channel,
        HelperMessage::Hello(Hello {
            protocol_version: PROTOCOL_VERSION,
            role,
        }),
    )?;
    let mut greeted = false;
    // Whether the channel is registered for writability (only while
    // responses wait for it).
    let mut want_writable = false;
    let mut events = Events::with_capacity(16);
    loop {
        let deadline = [service.next_deadline(), outbox.next_deadline()]
            .into_iter()
            .flatten()
            .min();
        let timeout = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        if let Err(e) = poll.poll(&mut events, timeout) {
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(format!("epoll_wait: {e}"));
        }
        outbox.flush(&channel)?;
        for event in events.iter() {
            if event.token() != CHANNEL {
                for e in service.ready(event.token())? {
                    outbox.event(&channel, e)?;
                }
                continue;
            }
            // Edge-triggered: drain until the socket is empty.
            loop {
                match channel.recv::<ManagerMessage>() {
                    Ok(received) => match received.msg {
                        ManagerMessage::Hello(hello) => {
                            if hello.protocol_version != PROTOCOL_VERSION
                                || hello.role != Role::Manager
                            {
                                return Err(format!(
                                    "manager speaks protocol {} as {}; we speak {}",
                                    hello.protocol_version, hello.role, PROTOCOL_VERSION
                                ));
                            }
                            greeted = true;
                        }
                        ManagerMessage::Request { id, body } => {
                            if !greeted {
                                return Err("request before the manager's Hello".into());
                            }
                            let result = match body {
                                Request::Ping { nonce } => Ok(Reply::Pong { nonce }),
                                Request::SetLogLevel(level) => {
                                    log::set_max_level(level_filter(level));
                                    debug!("log level set to {level:?}");
                                    Ok(Reply::Done)
                                }
                                other => {
                                    service.handle(&other, received.fds).unwrap_or_else(|| {
                                        Err(HelperError::Unsupported {
                                            helper: role,
                                            request: format!("{other:?}"),
                                        })
                                    })
                                }
                            };
                            if let Err(e) = &result {
                                warn!("request {id} failed: {e}");
                            }
                            outbox.response(&channel, HelperMessage::Response { id, result })?;
                        }
                    },
                    Err(ChannelError::WouldBlock) => break,
                    Err(ChannelError::Closed) => {
                        info!("manager closed the channel; exiting");
                        return Ok(());
                    }
                    Err(e) if !e.is_fatal() => warn!("dropped a bad message from the manager: {e}"),
                    Err(e) => return Err(format!("ipc: {e}")),
                }
            }
        }
        let now = Instant::now();
        if service.next_deadline().is_some_and(|d| now >= d) {
            for e in service.tick(now)? {
                outbox.event(&channel, e)?;
            }
        }
        outbox.log_drops(now);
        // Edge-triggered: ask to hear when the manager makes room, only
        // while something waits for it.
        let waiting = outbox.queued() > 0;
        if waiting != want_writable {
            let interest = if waiting {
                Interest::READABLE | Interest::WRITABLE
            } else {
                Interest::READABLE
            };
            poll.registry()
                .reregister(
                    &mut SourceFd(&std::os::fd::AsRawFd::as_raw_fd(&channel)),
                    CHANNEL,
                    interest,
                )
                .map_err(|e| format!("epoll: {e}"))?;
            want_writable = waiting;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Result<HelperArgs, String> {
        HelperArgs::parse(v.iter().map(|s| s.to_string()))
    }

    #[test]
    fn parses_the_spawner_command_line() {
        let a = args(&["--ipc-fd", "3", "--seccomp=log", "--log-to-stderr"]).expect("parse");
        assert_eq!(
            a,
            HelperArgs {
                ipc_fd: 3,
                seccomp: SeccompMode::Log,
                log_to_stderr: true,
                selftest_forbidden_syscall: false
            }
        );
    }

    #[test]
    fn ipc_fd_is_required() {
        assert!(args(&["--log-to-stderr"]).is_err());
    }

    #[test]
    fn standard_streams_are_not_an_ipc_fd() {
        assert!(args(&["--ipc-fd=1"]).is_err());
    }

    #[test]
    fn unknown_seccomp_mode_is_rejected() {
        assert!(args(&["--ipc-fd=3", "--seccomp=off"]).is_err());
    }

    #[test]
    fn unknown_argument_is_rejected() {
        assert!(args(&["--ipc-fd=3", "--frobnicate"]).is_err());
    }
}
