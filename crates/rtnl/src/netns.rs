//! Named network namespaces, as `ip netns add/attach/delete` make them.
//!
//! patchpanel's ConnectNamespace and its tests need namespaces that outlive
//! the thread that made them and that other tools (`ip -n NAME`) can find: a
//! namespace is kept alive by bind-mounting its nsfs file onto
//! `<dir>/<name>` (normally `/run/netns`). The directory is made a shared
//! mount first, exactly as iproute2 does, so the bind mounts propagate to
//! other mount namespaces that later join; unlike iproute2, it is never
//! created here and must belong to root. The `dir` parameter exists so
//! tests can use a private directory. All of this needs CAP_SYS_ADMIN.
//!
//! Namespaces are created on a short-lived helper thread (`unshare` there);
//! the calling thread never changes namespace.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::error::{Result, RtnlError};
use crate::sys;

/// Where iproute2 keeps named network namespaces.
pub const DEFAULT_NETNS_DIR: &str = "/run/netns";

/// This thread's own network namespace file.
const THREAD_SELF_NET: &str = "/proc/thread-self/ns/net";

/// Checks a namespace name: it becomes one path component under `dir`.
pub fn validate_name(name: &str) -> Result<()> {
    let reason = if name.is_empty() {
        Some("empty")
    } else if name == "." || name == ".." {
        Some("is . or ..")
    } else if name.contains('/') || name.contains('\0') {
        Some("contains '/' or NUL")
    } else if name.len() > 255 {
        Some("longer than 255 bytes")
    } else {
        None
    };
    match reason {
        Some(r) => Err(RtnlError::invalid("netns name", name, r)),
        None => Ok(()),
    }
}

fn ns_path(dir: &Path, name: &str) -> Result<PathBuf> {
    validate_name(name)?;
    Ok(dir.join(name))
}

/// Makes `dir` a shared mount point (iproute2's `netns_add`: make it
/// shared; if it is not a mount point yet (EINVAL), bind-mount it on itself
/// and try again).
///
/// `dir` must exist already and belong to root: it is never created here.
/// Root tools trust the namespaces in it (`/run/netns`), and patchpanel's
/// writer, which calls this, runs as an unprivileged user, so a directory
/// made here would be that user's. patchpaneld creates it at start, as root.
fn ensure_shared_dir(dir: &Path) -> Result<()> {
    let meta = std::fs::metadata(dir).map_err(|e| {
        RtnlError::sys(
            format!(
                "the namespace directory {} (never created here)",
                dir.display()
            ),
            e,
        )
    })?;
    if !meta.is_dir() {
        return Err(RtnlError::invalid(
            "namespace directory",
            dir.display().to_string(),
            "not a directory",
        ));
    }
    if meta.uid() != 0 {
        return Err(RtnlError::invalid(
            "namespace directory",
            dir.display().to_string(),
            format!("owned by uid {}, not root", meta.uid()),
        ));
    }
    let c = sys::cpath(dir)?;
    let none = CString::new("none").map_err(|_| RtnlError::invalid("fstype", "none", "NUL"))?;
    let mut bound = false;
    loop {
        match sys::mount(Some(c""), &c, Some(&none), libc::MS_SHARED | libc::MS_REC) {
            Ok(()) => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) && !bound => {
                sys::mount(Some(&c), &c, Some(&none), libc::MS_BIND | libc::MS_REC).map_err(
                    |e| RtnlError::sys(format!("bind-mount {} on itself", dir.display()), e),
                )?;
                bound = true;
            }
            Err(e) => {
                return Err(RtnlError::sys(
                    format!("make {} a shared mount", dir.display()),
                    e,
                ))
            }
        }
    }
}

/// Creates the empty mount-point file (refusing an existing one) and runs
/// `bind` to mount a namespace on it, removing the file again on failure.
fn create_and_bind(path: &Path, op: &str, bind: impl FnOnce(&CString) -> Result<()>) -> Result<()> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o000)
        .open(path)
        .map_err(|e| RtnlError::sys(format!("{op}: create {}", path.display()), e))?;
    let c = sys::cpath(path)?;
    if let Err(e) = bind(&c) {
        let _ = std::fs::remove_file(path);
        return Err(e);
    }
    Ok(())
}

/// `ip netns add`: creates a new, empty network namespace kept alive by a
/// bind mount at `dir/name`, and returns an fd of it.
pub fn create_named(dir: &Path, name: &str) -> Result<OwnedFd> {
    let path = ns_path(dir, name)?;
    let op = format!("create netns {}", path.display());
    ensure_shared_dir(dir)?;
    create_and_bind(&path, &op, |target| {
        sys::run_on_thread(&op, || {
            sys::unshare(libc::CLONE_NEWNET)
                .map_err(|e| RtnlError::sys(format!("{op}: unshare(CLONE_NEWNET)"), e))?;
            bind_thread_netns(&op, target)
        })
    })?;
    open_named(dir, name)
}

/// `ip netns attach`: gives the existing namespace `ns` (for example opened
/// from `/proc/<pid>/ns/net`) the name `dir/name`.
pub fn attach_named(dir: &Path, name: &str, ns: BorrowedFd<'_>) -> Result<()> {
    let path = ns_path(dir, name)?;
    let op = format!("attach netns {}", path.display());
    ensure_shared_dir(dir)?;
    // Joining `ns` on a helper thread (rather than bind-mounting
    // /proc/self/fd/N) also checks that `ns` really is a network namespace.
    create_and_bind(&path, &op, |target| {
        sys::in_netns(ns, &op, || bind_thread_netns(&op, target))
    })
}

fn bind_thread_netns(op: &str, target: &CString) -> Result<()> {
    let src = CString::new(THREAD_SELF_NET)
        .map_err(|_| RtnlError::invalid("path", THREAD_SELF_NET, "NUL"))?;
    sys::mount(Some(&src), target, None, libc::MS_BIND)
        .map_err(|e| RtnlError::sys(format!("{op}: bind-mount {THREAD_SELF_NET}"), e))
}

/// `ip netns delete`: detaches the bind mount and removes `dir/name`.
/// `Ok(false)` if there was no such namespace file. The namespace itself
/// lives on while processes or fds still hold it.
pub fn delete_named(dir: &Path, name: &str) -> Result<bool> {
    let path = ns_path(dir, name)?;
    let c = sys::cpath(&path)?;
    match sys::umount2(&c, libc::MNT_DETACH) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(false),
        // Not a mount point: a file left by an interrupted create. Remove it.
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
        Err(e) => {
            return Err(RtnlError::sys(
                format!("delete netns {}: umount", path.display()),
                e,
            ))
        }
    }
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(RtnlError::sys(
            format!("delete netns {}: unlink", path.display()),
            e,
        )),
    }
}

/// Opens the named namespace `dir/name`.
pub fn open_named(dir: &Path, name: &str) -> Result<OwnedFd> {
    let path = ns_path(dir, name)?;
    let f = File::open(&path)
        .map_err(|e| RtnlError::sys(format!("open netns {}", path.display()), e))?;
    Ok(OwnedFd::from(f))
}

/// Opens the calling thread's network namespace.
pub fn open_current() -> Result<OwnedFd> {
    let f = File::open(THREAD_SELF_NET)
        .map_err(|e| RtnlError::sys(format!("open {THREAD_SELF_NET}"), e))?;
    Ok(OwnedFd::from(f))
}

/// A namespace's identity, `(st_dev, st_ino)` of its nsfs file: two fds
/// refer to the same namespace exactly when these are equal.
pub fn ns_id(fd: BorrowedFd<'_>) -> Result<(u64, u64)> {
    sys::fstat_id(fd).map_err(|e| RtnlError::sys("fstat netns fd", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_are_not_one_path_component_are_refused() {
        for bad in ["", ".", "..", "a/b", "/x", "a\0b"] {
            assert!(validate_name(bad).is_err(), "{bad:?} accepted");
        }
        for ok in ["arc_ns", "pp-test.1", "..."] {
            validate_name(ok).unwrap();
        }
    }

    /// A path under the temporary directory nobody has made yet.
    fn unused_path(tag: &str) -> PathBuf {
        std::env::temp_dir().join(format!("pp-rtnl-{tag}-{}", std::process::id()))
    }

    #[test]
    fn a_missing_namespace_directory_is_not_created() {
        let dir = unused_path("missing");
        let err = create_named(&dir, "x").unwrap_err();
        assert!(err.to_string().contains("never created here"), "{err}");
        assert!(!dir.exists());
    }

    #[test]
    fn a_namespace_directory_that_is_not_root_s_is_refused() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: needs root to give a directory away");
            return;
        }
        let dir = unused_path("not-root");
        std::fs::create_dir(&dir).unwrap();
        std::os::unix::fs::chown(&dir, Some(65534), None).unwrap();
        let err = create_named(&dir, "x").unwrap_err();
        let entries = std::fs::read_dir(&dir).unwrap().count();
        std::fs::remove_dir(&dir).unwrap();
        assert!(
            err.to_string().contains("owned by uid 65534, not root"),
            "{err}"
        );
        assert_eq!(entries, 0);
    }
}
