//! Running one helper binary on its own, as root, inside a test namespace, with
//! one end of a fresh `SOCK_SEQPACKET` socketpair as its IPC fd: the way the
//! spawner hands it over, minus the privilege drop. Used to prove that a helper's
//! own seccomp filter kills a forbidden call.

use std::fs::File;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};
use tempfile::TempDir;

use crate::bins::bin_path;
use crate::command::describe;
use crate::daemon::init_environment;
use crate::netns::Netns;
use crate::tree::Helper;

/// The fd number the helper is told to use for IPC.
pub const IPC_FD: RawFd = 3;

/// A helper started directly by the test; killed on drop.
#[derive(Debug)]
pub struct DirectHelper {
    helper: Helper,
    child: Child,
    exit: Option<ExitStatus>,
    /// The test's end of the socketpair; `None` once closed.
    ipc: Option<OwnedFd>,
    log_path: PathBuf,
    _dir: TempDir,
}

impl DirectHelper {
    /// Runs `nsenter --net=<netns> -- <helper> --ipc-fd 3 --log-to-stderr
    /// <extra_args>` with the other end of a new socketpair on fd 3.
    pub fn spawn(netns: &Netns, helper: Helper, extra_args: &[&str]) -> Result<Self> {
        let binary = bin_path(helper.executable())?;
        let (ours, theirs) = seqpacket_pair()?;
        let dir = tempfile::Builder::new()
            .prefix("ppt-helper-")
            .tempdir()
            .context("cannot create the helper's directory")?;
        let log_path = dir.path().join(format!("{}.log", helper.executable()));
        let log = File::create(&log_path)
            .with_context(|| format!("cannot create {}", log_path.display()))?;
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", netns.path().display()))
            .arg("--")
            .arg(binary)
            .arg("--ipc-fd")
            .arg(IPC_FD.to_string())
            .arg("--log-to-stderr")
            .args(extra_args)
            .env_clear()
            .envs(init_environment())
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("cannot duplicate the log file")?)
            .stderr(log);
        let theirs_raw = theirs.as_raw_fd();
        // SAFETY: the closure runs between fork and exec and only calls dup2(2)
        // and fcntl(2), which are async-signal-safe; it allocates nothing.
        unsafe {
            cmd.pre_exec(move || move_fd_to(theirs_raw, IPC_FD));
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start `{}`", describe(&cmd)))?;
        // Our copy of the helper's end must go, or the helper never sees EOF.
        drop(theirs);
        Ok(Self {
            helper,
            child,
            exit: None,
            ipc: Some(ours),
            log_path,
            _dir: dir,
        })
    }

    pub fn helper(&self) -> Helper {
        self.helper
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The test's end of the IPC socketpair, while it is open.
    pub fn ipc(&self) -> Option<BorrowedFd<'_>> {
        use std::os::fd::AsFd;
        self.ipc.as_ref().map(|fd| fd.as_fd())
    }

    /// Closes the test's end: the helper reads EOF (peer death).
    pub fn close_ipc(&mut self) {
        self.ipc = None;
    }

    /// The exit status if the helper has exited (reaping it).
    pub fn try_exit_status(&mut self) -> Result<Option<ExitStatus>> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait().context("cannot poll the helper")?;
        }
        Ok(self.exit)
    }

    /// Waits up to `timeout` for the helper to exit; `None` if still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<Option<ExitStatus>> {
        crate::wait::poll_until_ok(timeout, || self.try_exit_status())
    }

    /// What the helper printed so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_else(|err| format!("(no log: {err})"))
    }
}

impl Drop for DirectHelper {
    fn drop(&mut self) {
        if matches!(self.try_exit_status(), Ok(None)) {
            if let Err(err) = self.child.kill() {
                eprintln!("harness: cannot kill {}: {err}", self.helper);
            }
            if let Err(err) = self.child.wait() {
                eprintln!("harness: cannot reap {}: {err}", self.helper);
            }
        }
        if std::thread::panicking() {
            eprintln!(
                "----- {} log -----\n{}\n----- end of {} log -----",
                self.helper,
                self.log(),
                self.helper
            );
        }
    }
}

/// A `SOCK_SEQPACKET | SOCK_CLOEXEC` socketpair.
fn seqpacket_pair() -> Result<(OwnedFd, OwnedFd)> {
    let mut fds = [-1; 2];
    // SAFETY: `fds` is a valid array of two ints for the kernel to fill.
    let rc = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("socketpair(SOCK_SEQPACKET)");
    }
    // SAFETY: socketpair succeeded, so both fds are open and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// In the child between fork and exec: makes `from` available as `to` without
/// close-on-exec. Async-signal-safe.
fn move_fd_to(from: RawFd, to: RawFd) -> std::io::Result<()> {
    if from == to {
        // dup2 onto itself keeps FD_CLOEXEC: clear it by hand.
        // SAFETY: fcntl on an fd we own, with integer arguments only.
        if unsafe { libc::fcntl(to, libc::F_SETFD, 0) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        return Ok(());
    }
    // SAFETY: dup2 with integer arguments; the new fd has FD_CLOEXEC cleared.
    if unsafe { libc::dup2(from, to) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
