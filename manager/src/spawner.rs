//! The spawner: a root child of `patchpaneld` that starts helpers.
//!
//! It keeps only SETUID, SETGID, SETPCAP and the capabilities it hands out,
//! installs no seccomp filter (filters are inherited by every child), and
//! accepts nothing but fixed-size [`SpawnerRequest`]s: the manager names a
//! helper by number and passes its end of the helper's socket pair; the
//! spawner builds the command line itself from that number. It reports every
//! child's pid and exit status back as [`SpawnerEvent`]s. It exits when the
//! manager's socket closes (and dies with the manager through PDEATHSIG).

use std::collections::HashMap;
use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};

use log::{error, info, warn};
use patchpanel_ipc::Channel;
use patchpanel_sandbox::{Process, SeccompMode, User};

const MAGIC: u32 = 0x5050_5350; // "PPSP"

/// Flags of a spawn request.
pub const FLAG_SECCOMP_LOG: u32 = 1 << 0;
pub const FLAG_LOG_TO_STDERR: u32 = 1 << 1;

/// A request from the manager: 20 bytes on the wire, plus exactly one
/// descriptor for `Spawn`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpawnerRequest {
    /// Start `helper` with the passed socket as its IPC channel.
    Spawn { helper: Process, flags: u32 },
    /// Kill a hung helper; honoured only for a live child of that kind.
    Kill { helper: Process, pid: i32 },
}

/// What the spawner reports: 20 bytes on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpawnerEvent {
    Spawned {
        helper: Process,
        pid: i32,
    },
    SpawnFailed {
        helper: Process,
        errno: i32,
    },
    /// `status` as returned by waitpid.
    Exited {
        helper: Process,
        pid: i32,
        status: i32,
    },
}

pub const WIRE_LEN: usize = 20;

fn helper_index(p: Process) -> u32 {
    Process::HELPERS
        .iter()
        .position(|h| *h == p)
        .map(|i| i as u32)
        .unwrap_or(u32::MAX)
}

fn helper_at(i: u32) -> Option<Process> {
    Process::HELPERS.get(i as usize).copied()
}

fn words(w: [u32; 5]) -> [u8; WIRE_LEN] {
    let mut b = [0u8; WIRE_LEN];
    for (i, x) in w.iter().enumerate() {
        b[i * 4..i * 4 + 4].copy_from_slice(&x.to_le_bytes());
    }
    b
}

fn unwords(b: &[u8]) -> Option<[u32; 5]> {
    if b.len() != WIRE_LEN {
        return None;
    }
    let mut w = [0u32; 5];
    for (i, x) in w.iter_mut().enumerate() {
        *x = u32::from_le_bytes(b[i * 4..i * 4 + 4].try_into().ok()?);
    }
    (w[0] == MAGIC).then_some(w)
}

impl SpawnerRequest {
    pub fn encode(self) -> [u8; WIRE_LEN] {
        match self {
            SpawnerRequest::Spawn { helper, flags } => {
                words([MAGIC, 1, helper_index(helper), flags, 0])
            }
            SpawnerRequest::Kill { helper, pid } => {
                words([MAGIC, 2, helper_index(helper), 0, pid as u32])
            }
        }
    }

    pub fn decode(b: &[u8]) -> Option<SpawnerRequest> {
        let w = unwords(b)?;
        let helper = helper_at(w[2])?;
        match w[1] {
            1 if w[3] & !(FLAG_SECCOMP_LOG | FLAG_LOG_TO_STDERR) == 0 && w[4] == 0 => {
                Some(SpawnerRequest::Spawn {
                    helper,
                    flags: w[3],
                })
            }
            2 if w[3] == 0 && (w[4] as i32) > 0 => Some(SpawnerRequest::Kill {
                helper,
                pid: w[4] as i32,
            }),
            _ => None,
        }
    }
}

impl SpawnerEvent {
    pub fn encode(self) -> [u8; WIRE_LEN] {
        match self {
            SpawnerEvent::Spawned { helper, pid } => {
                words([MAGIC, 1, helper_index(helper), pid as u32, 0])
            }
            SpawnerEvent::SpawnFailed { helper, errno } => {
                words([MAGIC, 2, helper_index(helper), 0, errno as u32])
            }
            SpawnerEvent::Exited {
                helper,
                pid,
                status,
            } => words([MAGIC, 3, helper_index(helper), pid as u32, status as u32]),
        }
    }

    pub fn decode(b: &[u8]) -> Option<SpawnerEvent> {
        let w = unwords(b)?;
        let helper = helper_at(w[2])?;
        match w[1] {
            1 => Some(SpawnerEvent::Spawned {
                helper,
                pid: w[3] as i32,
            }),
            2 => Some(SpawnerEvent::SpawnFailed {
                helper,
                errno: w[4] as i32,
            }),
            3 => Some(SpawnerEvent::Exited {
                helper,
                pid: w[3] as i32,
                status: w[4] as i32,
            }),
            _ => None,
        }
    }
}

/// Describes a waitpid status for logs ("exited with 1", "killed by SIGSYS").
pub fn describe_status(status: i32) -> String {
    if libc::WIFEXITED(status) {
        format!("exited with status {}", libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        let sig = libc::WTERMSIG(status);
        let name = match sig {
            libc::SIGSYS => "SIGSYS (seccomp violation)".to_string(),
            libc::SIGKILL => "SIGKILL".to_string(),
            libc::SIGSEGV => "SIGSEGV".to_string(),
            libc::SIGABRT => "SIGABRT".to_string(),
            libc::SIGTERM => "SIGTERM".to_string(),
            n => format!("signal {n}"),
        };
        format!("killed by {name}")
    } else {
        format!("wait status {status:#x}")
    }
}

/// Everything the spawner needs, prepared by the root phase before fork.
#[derive(Debug)]
pub struct SpawnerSetup {
    pub user: User,
    /// Pre-opened helper executables (O_PATH), indexed like `Process::HELPERS`.
    pub executables: Vec<OwnedFd>,
    pub manager_pid: libc::pid_t,
}

/// Runs the spawner; never returns.
pub fn run(setup: SpawnerSetup, channel: Channel) -> ! {
    patchpanel_sandbox::set_process_name("pp-spawner");
    let code = match serve(&setup, &channel) {
        Ok(()) => 0,
        Err(e) => {
            error!(target: "spawner", "{e}");
            1
        }
    };
    // SAFETY: _exit skips the parent's atexit handlers and buffers, which a
    // forked child must not run.
    unsafe { libc::_exit(code) }
}

fn serve(setup: &SpawnerSetup, channel: &Channel) -> Result<(), String> {
    // Its own session: a terminal's ^C reaches the manager, which shuts the
    // tree down in order, not every process at once.
    // SAFETY: setsid has no preconditions.
    unsafe { libc::setsid() };
    patchpanel_sandbox::enter_spawner_sandbox().map_err(|e| format!("sandbox: {e}"))?;
    patchpanel_sandbox::die_with_parent(setup.manager_pid).map_err(|e| e.to_string())?;
    let sigchld = sigchld_fd().map_err(|e| format!("signalfd: {e}"))?;
    let mut children: HashMap<i32, Process> = HashMap::new();
    let mut manager_gone = false;
    let mut deadline: Option<std::time::Instant> = None;
    loop {
        let mut pfds = [
            libc::pollfd {
                fd: channel.as_raw_fd(),
                events: if manager_gone { 0 } else { libc::POLLIN },
                revents: 0,
            },
            libc::pollfd {
                fd: sigchld.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        let timeout = match deadline {
            Some(d) => d
                .saturating_duration_since(std::time::Instant::now())
                .as_millis()
                .min(i32::MAX as u128) as i32,
            None => -1,
        };
        // SAFETY: `pfds` is a valid array of two pollfds.
        let n = unsafe { libc::poll(pfds.as_mut_ptr(), 2, timeout) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return Err(format!("poll: {e}"));
        }
        if pfds[1].revents != 0 {
            drain_signalfd(&sigchld);
            reap(
                &mut children,
                if manager_gone { None } else { Some(channel) },
            );
        }
        if !manager_gone && pfds[0].revents != 0 {
            match channel.recv_raw() {
                Ok((bytes, fds)) => handle(setup, channel, &mut children, &bytes, fds),
                Err(patchpanel_ipc::ChannelError::Closed) => {
                    info!(target: "spawner", "manager closed its socket; stopping {} helper(s)", children.len());
                    manager_gone = true;
                    deadline = Some(std::time::Instant::now() + std::time::Duration::from_secs(2));
                }
                Err(e) if e.is_fatal() => return Err(format!("manager socket: {e}")),
                Err(e) => warn!(target: "spawner", "ignored a malformed request: {e}"),
            }
        }
        if manager_gone {
            if children.is_empty() {
                return Ok(());
            }
            if deadline.is_some_and(|d| std::time::Instant::now() >= d) {
                for (pid, helper) in &children {
                    warn!(target: "spawner", "{} (pid {pid}) did not exit; killing it", helper.executable());
                    kill_child(*pid);
                }
                deadline = Some(std::time::Instant::now() + std::time::Duration::from_secs(2));
            }
        }
    }
}

fn handle(
    setup: &SpawnerSetup,
    channel: &Channel,
    children: &mut HashMap<i32, Process>,
    bytes: &[u8],
    fds: Vec<OwnedFd>,
) {
    let Some(request) = SpawnerRequest::decode(bytes) else {
        warn!(target: "spawner", "ignored a malformed {}-byte request", bytes.len());
        return;
    };
    let event = match request {
        SpawnerRequest::Spawn { helper, flags } => {
            let mut fds = fds;
            if fds.len() != 1 {
                warn!(target: "spawner", "spawn of {} came with {} descriptors, not 1", helper.executable(), fds.len());
                return;
            }
            let Some(ipc) = fds.pop() else { return };
            match spawn(setup, helper, flags, &ipc) {
                Ok(pid) => {
                    children.insert(pid, helper);
                    SpawnerEvent::Spawned { helper, pid }
                }
                Err(e) => {
                    error!(target: "spawner", "cannot start {}: {e}", helper.executable());
                    SpawnerEvent::SpawnFailed {
                        helper,
                        errno: e.raw_os_error().unwrap_or(libc::EIO),
                    }
                }
            }
        }
        SpawnerRequest::Kill { helper, pid } => {
            if children.get(&pid) == Some(&helper) {
                warn!(target: "spawner", "killing {} (pid {pid}) on the manager's request", helper.executable());
                kill_child(pid);
            } else {
                warn!(target: "spawner", "refused to kill pid {pid}: not a live {}", helper.executable());
            }
            return;
        }
    };
    if let Err(e) = channel.send_raw(&event.encode(), &[]) {
        warn!(target: "spawner", "cannot report to the manager: {e}");
    }
}

fn reap(children: &mut HashMap<i32, Process>, channel: Option<&Channel>) {
    loop {
        let mut status = 0;
        // SAFETY: `status` is a valid out pointer.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid <= 0 {
            return;
        }
        let Some(helper) = children.remove(&pid) else {
            continue;
        };
        info!(target: "spawner", "{} (pid {pid}) {}", helper.executable(), describe_status(status));
        if let Some(channel) = channel {
            let event = SpawnerEvent::Exited {
                helper,
                pid,
                status,
            };
            match channel.send_raw(&event.encode(), &[]) {
                // The manager is shutting down; it no longer wants reports.
                Ok(()) | Err(patchpanel_ipc::ChannelError::Closed) => {}
                Err(e) => warn!(target: "spawner", "cannot report to the manager: {e}"),
            }
        }
    }
}

/// SIGKILLs one of our children (not yet reaped, so the pid is still ours).
fn kill_child(pid: i32) {
    // SAFETY: kill with the pid of a child we have not reaped.
    if unsafe { libc::kill(pid, libc::SIGKILL) } < 0 {
        error!(target: "spawner", "cannot kill pid {pid}: {}", io::Error::last_os_error());
    }
}

fn sigchld_fd() -> io::Result<OwnedFd> {
    // SAFETY: sigset operations on a local set; signalfd returns a new fd.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGCHLD);
        if libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) < 0 {
            return Err(io::Error::last_os_error());
        }
        let fd = libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(std::os::fd::FromRawFd::from_raw_fd(fd))
    }
}

fn drain_signalfd(fd: &OwnedFd) {
    let mut buf = [0u8; 128 * 8];
    // SAFETY: reading into a local buffer of the stated length.
    while unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) } > 0 {}
}

fn cstring(s: &str) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in argument"))
}

/// Forks and execs one helper. Everything the child needs is prepared before
/// `fork`, so the child only makes system calls.
fn spawn(setup: &SpawnerSetup, helper: Process, flags: u32, ipc: &OwnedFd) -> io::Result<i32> {
    let index = helper_index(helper) as usize;
    let exe = setup
        .executables
        .get(index)
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no executable"))?;
    let seccomp = if flags & FLAG_SECCOMP_LOG != 0 {
        SeccompMode::Log
    } else {
        SeccompMode::Enforce
    };
    let mut argv = vec![
        cstring(helper.executable())?,
        cstring("--ipc-fd")?,
        cstring("3")?,
        cstring(&format!("--seccomp={}", seccomp.as_str()))?,
    ];
    if flags & FLAG_LOG_TO_STDERR != 0 {
        argv.push(cstring("--log-to-stderr")?);
    }
    let mut envp = vec![cstring("PATH=/usr/sbin:/usr/bin:/sbin:/bin")?];
    // The socket service has a bus connection of its own: the same bus as
    // the manager's (a private one in tests).
    if helper == Process::SocketService {
        if let Ok(address) = std::env::var("DBUS_SYSTEM_BUS_ADDRESS") {
            envp.push(cstring(&format!("DBUS_SYSTEM_BUS_ADDRESS={address}"))?);
        }
    }
    let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_ptrs.push(std::ptr::null());
    let mut envp_ptrs: Vec<*const libc::c_char> = envp.iter().map(|a| a.as_ptr()).collect();
    envp_ptrs.push(std::ptr::null());
    // SAFETY: getpid has no preconditions.
    let spawner_pid = unsafe { libc::getpid() };

    // SAFETY: the spawner is single-threaded, so the child may run anything
    // async-signal-safe; it only makes system calls and then execs or exits.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid > 0 {
        return Ok(pid);
    }
    // Child.
    let step = child_setup(
        helper,
        &setup.user,
        spawner_pid,
        ipc.as_raw_fd(),
        exe.as_raw_fd(),
        &argv_ptrs,
        &envp_ptrs,
    );
    let msg = format!(
        "pp-spawner: cannot start {}: {step}: {}\n",
        helper.executable(),
        io::Error::last_os_error()
    );
    // SAFETY: write to stderr, then _exit without running the parent's handlers.
    unsafe {
        libc::write(2, msg.as_ptr().cast(), msg.len());
        libc::_exit(127)
    }
}

/// Returns only on failure, naming the step that failed.
fn child_setup(
    helper: Process,
    user: &User,
    spawner_pid: libc::pid_t,
    ipc: RawFd,
    exe: RawFd,
    argv: &[*const libc::c_char],
    envp: &[*const libc::c_char],
) -> String {
    // SAFETY: plain system calls on descriptors and sets we own; argv/envp
    // are NULL-terminated arrays of pointers into live CStrings.
    let exe = unsafe {
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        if libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut()) < 0 {
            return "sigprocmask".into();
        }
        libc::setsid();
        // The executable's descriptor may sit where the IPC socket must go.
        let exe = libc::fcntl(exe, libc::F_DUPFD_CLOEXEC, 4);
        if exe < 0 {
            return "dup executable".into();
        }
        if ipc == 3 {
            if libc::fcntl(3, libc::F_SETFD, 0) < 0 {
                return "fcntl".into();
            }
        } else if libc::dup2(ipc, 3) < 0 {
            return "dup2".into();
        }
        exe
    };
    if let Err(e) = patchpanel_sandbox::enter_helper_sandbox(helper, user, spawner_pid) {
        return format!("sandbox ({e})");
    }
    // SAFETY: as above; close_range marks every descriptor above the IPC
    // socket close-on-exec (the executable's fd included, which execveat
    // still uses before the exec completes).
    unsafe {
        if libc::syscall(
            libc::SYS_close_range,
            4u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        ) < 0
        {
            return "close_range".into();
        }
        libc::syscall(
            libc::SYS_execveat,
            exe,
            c"".as_ptr(),
            argv.as_ptr(),
            envp.as_ptr(),
            libc::AT_EMPTY_PATH,
        );
    }
    "execveat".into()
}

/// Manager side: sends a request with optional descriptor.
pub fn send_request(
    channel: &Channel,
    request: SpawnerRequest,
    fd: Option<BorrowedFd<'_>>,
) -> Result<(), patchpanel_ipc::ChannelError> {
    let fds: Vec<BorrowedFd<'_>> = fd.into_iter().collect();
    channel.send_raw(&request.encode(), &fds)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip() {
        for r in [
            SpawnerRequest::Spawn {
                helper: Process::NdProxy,
                flags: FLAG_SECCOMP_LOG | FLAG_LOG_TO_STDERR,
            },
            SpawnerRequest::Kill {
                helper: Process::AdbProxy,
                pid: 4242,
            },
        ] {
            assert_eq!(SpawnerRequest::decode(&r.encode()), Some(r));
        }
    }

    #[test]
    fn events_round_trip() {
        for e in [
            SpawnerEvent::Spawned {
                helper: Process::DatapathWriter,
                pid: 77,
            },
            SpawnerEvent::SpawnFailed {
                helper: Process::McastForwarder,
                errno: 2,
            },
            SpawnerEvent::Exited {
                helper: Process::NdProxy,
                pid: 78,
                status: 31,
            },
        ] {
            assert_eq!(SpawnerEvent::decode(&e.encode()), Some(e));
        }
    }

    #[test]
    fn request_of_the_wrong_size_is_refused() {
        let mut b = SpawnerRequest::Spawn {
            helper: Process::NdProxy,
            flags: 0,
        }
        .encode()
        .to_vec();
        b.push(0);
        assert_eq!(SpawnerRequest::decode(&b), None);
        assert_eq!(SpawnerRequest::decode(&b[..WIRE_LEN - 1]), None);
    }

    #[test]
    fn request_naming_no_helper_is_refused() {
        let past_the_last = Process::HELPERS.len() as u32;
        let b = words([MAGIC, 1, past_the_last, 0, 0]);
        assert_eq!(SpawnerRequest::decode(&b), None);
        let last = words([MAGIC, 1, past_the_last - 1, 0, 0]);
        assert!(SpawnerRequest::decode(&last).is_some());
    }

    #[test]
    fn request_with_unknown_flags_is_refused() {
        let b = words([MAGIC, 1, 0, 1 << 9, 0]);
        assert_eq!(SpawnerRequest::decode(&b), None);
    }

    #[test]
    fn kill_of_pid_zero_or_negative_is_refused() {
        assert_eq!(SpawnerRequest::decode(&words([MAGIC, 2, 0, 0, 0])), None);
        assert_eq!(
            SpawnerRequest::decode(&words([MAGIC, 2, 0, 0, (-1i32) as u32])),
            None
        );
    }

    #[test]
    fn wrong_magic_is_refused() {
        assert_eq!(SpawnerRequest::decode(&words([0, 1, 0, 0, 0])), None);
    }

    #[test]
    fn sigsys_is_named_in_the_status() {
        // A wait status for "killed by signal 31".
        assert!(describe_status(libc::SIGSYS).contains("SIGSYS"));
        assert_eq!(describe_status(1 << 8), "exited with status 1");
    }
}
