//! Pinning a client-supplied pid.
//!
//! A pid is only a number: by the time the writer acts on it the process
//! may have exited and the number been reused. A pidfd pins the process;
//! every check made through the pid number is confirmed afterwards by
//! asking the pidfd whether that process is still alive, so the checks
//! applied to the process the pidfd names.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::error::CallError;

/// Opens a pidfd for `pid`, refusing pid 1, pids that do not exist,
/// thread ids and, for a non-root caller, processes that are not wholly
/// the caller's: all four of real, effective, saved and filesystem uid
/// must be the caller's (a setuid-root program the caller started has
/// effective uid 0 and is refused). Whose network namespace it is, is
/// checked by the writer (`AttachNetns { owner_uid }`), which may open it.
pub fn pin(pid: i32, caller_uid: u32) -> Result<OwnedFd, CallError> {
    if pid == 1 {
        return Err(CallError::InvalidArgument(
            "pid 1 is the host's init; its network namespace is the host's".into(),
        ));
    }
    if pid <= 0 {
        return Err(CallError::InvalidArgument(format!(
            "pid {pid} is not a process id (use -1 for a new namespace)"
        )));
    }
    let pidfd = match open(pid) {
        Ok(fd) => fd,
        Err(e) => {
            // pidfd_open refuses a thread that does not lead its group (with
            // EINVAL, or ENOENT since Linux 6.9).
            if let Some(tgid) = thread_group(pid).filter(|&tgid| tgid != pid) {
                return Err(CallError::InvalidArgument(format!(
                    "pid {pid} is a thread of process {tgid}, not a process"
                )));
            }
            return Err(match e.raw_os_error() {
                Some(libc::ESRCH) | Some(libc::ENOENT) => {
                    CallError::InvalidArgument(format!("no process with pid {pid}"))
                }
                Some(libc::EINVAL) => {
                    CallError::InvalidArgument(format!("pid {pid} is not a process"))
                }
                _ => CallError::Failed(format!("cannot pin pid {pid}: {e}")),
            });
        }
    };
    // SAFETY: getpid has no preconditions.
    if pid == unsafe { libc::getpid() } {
        return Err(CallError::InvalidArgument(format!(
            "pid {pid} is patchpanel itself"
        )));
    }
    if caller_uid != 0 {
        let uids = process_uids(pid)
            .ok_or_else(|| CallError::InvalidArgument(format!("no process with pid {pid}")))?;
        if let Some(other) = uids.iter().find(|&&u| u != caller_uid) {
            return Err(CallError::InvalidArgument(if uids[0] != caller_uid {
                format!(
                    "pid {pid} belongs to uid {}, not to the caller (uid {caller_uid})",
                    uids[0]
                )
            } else {
                format!(
                    "pid {pid} runs with uid {other} as well as the caller's (uid {caller_uid}): only root may connect a process with other privileges"
                )
            }));
        }
    }
    if !is_alive(&pidfd) {
        return Err(CallError::InvalidArgument(format!(
            "process {pid} exited during the request"
        )));
    }
    Ok(pidfd)
}

/// A pidfd for `pid` (pidfd_open(2)), no questions asked.
pub fn open(pid: i32) -> std::io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: pidfd_open returned a new descriptor that we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// The real, effective, saved and filesystem uids of `pid`, from
/// `/proc/<pid>/status` (world-readable).
fn process_uids(pid: i32) -> Option<[u32; 4]> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_uids(&status)
}

/// The four numbers of the `Uid:` line of a `status` file.
fn parse_uids(status: &str) -> Option<[u32; 4]> {
    let line = status.lines().find_map(|l| l.strip_prefix("Uid:"))?;
    let mut uids = [0u32; 4];
    let mut fields = line.split_whitespace();
    for uid in &mut uids {
        *uid = fields.next()?.parse().ok()?;
    }
    Some(uids)
}

/// The thread group (process) a task id belongs to.
fn thread_group(tid: i32) -> Option<i32> {
    let status = std::fs::read_to_string(format!("/proc/{tid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Tgid:"))
        .and_then(|v| v.trim().parse().ok())
}

/// A process as it was when it asked for something that lives as long as
/// it does: its pid and its start time (clock ticks after boot,
/// `/proc/<pid>/stat` field 22), which a reused pid does not share. Kept in
/// the state file, so that a successor can find the same process again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Owner {
    pub pid: u32,
    pub start_time: u64,
}

impl Owner {
    /// `pid` as it runs now; `None` if it is gone (or unreadable).
    pub fn of(pid: u32) -> Option<Owner> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        Some(Owner {
            pid,
            start_time: start_time(&stat)?,
        })
    }

    /// A pidfd for this process if it still runs (same pid, same start
    /// time), else `None`.
    pub fn pin(&self) -> Option<OwnedFd> {
        let pidfd = open(i32::try_from(self.pid).ok()?).ok()?;
        // Read after the pidfd is open: a pid reused before it would show
        // another start time; after it, the pidfd names the process we read.
        (Owner::of(self.pid).as_ref() == Some(self) && is_alive(&pidfd)).then_some(pidfd)
    }
}

/// Field 22 of a `stat` line; the command name (field 2) may hold spaces
/// and parentheses, so fields are counted after its last `)`.
fn start_time(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// A pidfd polls readable once its process has exited.
pub fn is_alive(pidfd: &OwnedFd) -> bool {
    let mut p = libc::pollfd {
        fd: pidfd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, zero timeout.
    let n = unsafe { libc::poll(&mut p, 1, 0) };
    n == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_is_field_22_even_with_parentheses_in_the_name() {
        let stat =
            "4242 (a) b (c)) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        assert_eq!(start_time(stat), Some(987654));
        let me = Owner::of(std::process::id()).expect("this process");
        assert!(me.start_time > 0);
        assert!(me.pin().is_some());
        assert!(Owner {
            start_time: me.start_time + 1,
            ..me
        }
        .pin()
        .is_none());
    }

    #[test]
    fn pid_1_is_refused() {
        assert!(matches!(pin(1, 0), Err(CallError::InvalidArgument(m)) if m.contains("init")));
    }

    #[test]
    fn nonsense_pids_are_refused() {
        for pid in [0, -2, i32::MIN] {
            assert!(
                matches!(pin(pid, 0), Err(CallError::InvalidArgument(_))),
                "{pid}"
            );
        }
    }

    #[test]
    fn a_pid_that_does_not_exist_is_refused() {
        // pid_max is at most 2^22; this one cannot exist.
        let e = pin(i32::MAX, 0).unwrap_err();
        assert_eq!(
            e,
            CallError::InvalidArgument(format!("no process with pid {}", i32::MAX))
        );
    }

    #[test]
    fn a_live_child_is_pinned_and_its_exit_is_seen() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pidfd = pin(child.id() as i32, 0).unwrap();
        assert!(is_alive(&pidfd));
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(!is_alive(&pidfd));
    }

    #[test]
    fn the_four_uids_are_read_from_the_status_file() {
        let status = "Name:\tx\nUid:\t1000\t0\t1000\t0\nGid:\t1\t1\t1\t1\n";
        assert_eq!(parse_uids(status), Some([1000, 0, 1000, 0]));
        assert_eq!(parse_uids("Uid:\t1000\t1000\n"), None, "too few fields");
        assert_eq!(parse_uids("Name:\tx\n"), None);
    }

    #[test]
    fn a_thread_id_is_refused_as_bad_input() {
        let (tx, rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
        let t = std::thread::spawn(move || {
            // SAFETY: gettid has no preconditions.
            tx.send(unsafe { libc::gettid() }).unwrap();
            let _ = stop_rx.recv();
        });
        let tid = rx.recv().unwrap();
        let e = pin(tid, 0).unwrap_err();
        stop_tx.send(()).unwrap();
        t.join().unwrap();
        // SAFETY: getpid has no preconditions.
        let me = unsafe { libc::getpid() };
        assert_eq!(
            e,
            CallError::InvalidArgument(format!(
                "pid {tid} is a thread of process {me}, not a process"
            ))
        );
    }

    #[test]
    fn a_non_root_caller_cannot_pin_another_users_process() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        // SAFETY: getuid has no preconditions.
        let me = unsafe { libc::getuid() };
        let other = if me == 0 { 4242 } else { me + 1 };
        let e = pin(child.id() as i32, other).unwrap_err();
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(matches!(e, CallError::InvalidArgument(m) if m.contains("belongs to uid")));
    }
}
