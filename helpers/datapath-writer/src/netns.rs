//! Turning a pinned pid into its network namespace, with the checks that
//! keep a client from redirecting patchpanel at the host's own namespace.

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;

use patchpanel_ipc::HelperError;

use crate::error::io_error;

/// Device and inode: what identifies a namespace.
fn ns_id(file: &std::fs::File) -> std::io::Result<(u64, u64)> {
    let m = file.metadata()?;
    Ok((m.dev(), m.ino()))
}

fn open_ns(path: &str) -> std::io::Result<std::fs::File> {
    std::fs::File::open(path)
}

/// The pid a pidfd refers to, from `/proc/self/fdinfo` (`Pid:` line; -1
/// once the process has been reaped).
fn pid_of_pidfd(pidfd: &OwnedFd) -> Option<i32> {
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", pidfd.as_raw_fd())).ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix("Pid:"))
        .and_then(|v| v.trim().parse().ok())
}

fn alive(pidfd: &OwnedFd) -> bool {
    let mut p = libc::pollfd {
        fd: pidfd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, zero timeout.
    let n = unsafe { libc::poll(&mut p, 1, 0) };
    n == 0
}

/// The host's (initial) network namespace: that of pid 1 and that of
/// kthreadd (pid 2; kernel threads live in the initial namespace). Some
/// init systems cannot be inspected even with CAP_SYS_PTRACE, so either
/// answer is enough; neither is an error.
fn host_namespaces() -> Result<Vec<(u64, u64)>, HelperError> {
    let mut ids = Vec::new();
    let mut errors = Vec::new();
    for pid in [1, 2] {
        let path = format!("/proc/{pid}/ns/net");
        if pid == 2
            && !std::fs::read_to_string("/proc/2/comm").is_ok_and(|c| c.trim() == "kthreadd")
        {
            continue;
        }
        match open_ns(&path).and_then(|f| ns_id(&f)) {
            Ok(id) => ids.push(id),
            Err(e) => errors.push(format!("{path}: {e}")),
        }
    }
    if ids.is_empty() {
        return Err(HelperError::Os {
            operation: "identify the host's network namespace".into(),
            errno: None,
            message: errors.join("; "),
        });
    }
    Ok(ids)
}

// linux/nsfs.h: _IO(0xb7, 0x1) and _IO(0xb7, 0x4).
const NS_GET_USERNS: libc::c_ulong = 0xb701;
const NS_GET_OWNER_UID: libc::c_ulong = 0xb704;

/// The user namespace that owns the namespace `ns` (NS_GET_USERNS).
fn owning_userns(ns: &std::fs::File) -> std::io::Result<std::fs::File> {
    // SAFETY: NS_GET_USERNS takes no argument and returns a new descriptor
    // (or -1); `ns` is an open namespace file.
    let fd = unsafe { libc::ioctl(ns.as_raw_fd(), NS_GET_USERNS as _) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor to us alone.
    Ok(unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) })
}

/// The uid that created the user namespace `userns` (NS_GET_OWNER_UID).
fn userns_owner(userns: &std::fs::File) -> std::io::Result<u32> {
    let mut uid: libc::uid_t = 0;
    // SAFETY: NS_GET_OWNER_UID writes one uid_t through the pointer, which
    // points at a local of that type.
    let rc = unsafe { libc::ioctl(userns.as_raw_fd(), NS_GET_OWNER_UID as _, &mut uid) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(uid)
}

/// Refuses the network namespace `ns` unless a user namespace other than
/// the writer's own owns it, created by `uid`: a namespace that user could
/// have made without privileges. One made by root and handed to the user
/// (systemd's `PrivateNetwork=` with `User=`) belongs to the initial user
/// namespace and is refused: connecting it would undo the confinement.
fn check_owner(pid: i32, ns: &std::fs::File, uid: u32) -> Result<(), HelperError> {
    let userns = owning_userns(ns).map_err(|e| io_error("NS_GET_USERNS", &e))?;
    let own = open_ns("/proc/self/ns/user")
        .and_then(|f| ns_id(&f))
        .map_err(|e| io_error("open /proc/self/ns/user", &e))?;
    let id = ns_id(&userns).map_err(|e| io_error("stat user namespace", &e))?;
    if id == own {
        return Err(HelperError::InvalidArgument(format!(
            "pid {pid}'s network namespace belongs to the host's user namespace, not to one of uid {uid}: only root may connect it"
        )));
    }
    let owner = userns_owner(&userns).map_err(|e| io_error("NS_GET_OWNER_UID", &e))?;
    if owner != uid {
        return Err(HelperError::InvalidArgument(format!(
            "pid {pid}'s network namespace belongs to a user namespace of uid {owner}, not of the caller (uid {uid})"
        )));
    }
    Ok(())
}

/// Opens the network namespace of `pid`, which `pidfd` pins. Refuses a
/// pidfd for another process, a process that exited (its pid may have been
/// reused), the namespaces of pid 1 and of patchpanel itself and, with
/// `owner_uid`, a namespace that user could not have made (see
/// [`check_owner`]).
pub fn namespace_of_pinned(
    pid: i32,
    pidfd: &OwnedFd,
    owner_uid: Option<u32>,
) -> Result<OwnedFd, HelperError> {
    let invalid = |m: String| HelperError::InvalidArgument(m);
    match pid_of_pidfd(pidfd) {
        Some(p) if p == pid => {}
        Some(p) if p <= 0 => return Err(invalid(format!("process {pid} has exited"))),
        Some(p) => {
            return Err(invalid(format!(
                "the pidfd sent for pid {pid} refers to pid {p}"
            )))
        }
        None => {
            return Err(invalid(format!(
                "the descriptor sent for pid {pid} is not a pidfd"
            )))
        }
    }
    let ns = open_ns(&format!("/proc/{pid}/ns/net")).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            invalid(format!("process {pid} has exited"))
        } else {
            io_error(format!("open /proc/{pid}/ns/net"), &e)
        }
    })?;
    // The namespace we opened belongs to the pinned process only if it was
    // still alive after the open.
    if !alive(pidfd) {
        return Err(invalid(format!("process {pid} exited during the request")));
    }
    let id = ns_id(&ns).map_err(|e| io_error("stat namespace", &e))?;
    if host_namespaces()?.contains(&id) {
        return Err(invalid(format!(
            "pid {pid} is in the host's network namespace (that of pid 1)"
        )));
    }
    let own = open_ns("/proc/self/ns/net")
        .and_then(|f| ns_id(&f))
        .map_err(|e| io_error("open /proc/self/ns/net", &e))?;
    if id == own {
        return Err(invalid(format!(
            "pid {pid} is in patchpanel's own network namespace"
        )));
    }
    if let Some(uid) = owner_uid {
        check_owner(pid, &ns, uid)?;
    }
    Ok(OwnedFd::from(ns))
}
