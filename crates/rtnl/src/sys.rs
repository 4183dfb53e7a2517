//! Thin wrappers around the system calls this crate needs that `std` lacks
//! (setns, unshare, mount, umount2, fstat), plus the "do this in another
//! network namespace" helper built on them.
//!
//! This is the only module with `unsafe`. Each wrapper passes pointers that
//! live for the duration of the call and returns `io::Error` from errno.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::error::{Result, RtnlError};

/// `setns(fd, nstype)` for the calling thread only.
pub(crate) fn setns(fd: BorrowedFd<'_>, nstype: libc::c_int) -> io::Result<()> {
    // SAFETY: setns takes a file descriptor (valid for the borrow) and an
    // integer; it reads no memory of ours.
    let rc = unsafe { libc::setns(fd.as_raw_fd(), nstype) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `unshare(flags)` for the calling thread.
pub(crate) fn unshare(flags: libc::c_int) -> io::Result<()> {
    // SAFETY: unshare takes only an integer flag set.
    let rc = unsafe { libc::unshare(flags) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `mount(source, target, fstype, flags, NULL)`.
pub(crate) fn mount(
    source: Option<&CStr>,
    target: &CStr,
    fstype: Option<&CStr>,
    flags: libc::c_ulong,
) -> io::Result<()> {
    let src = source.map_or(std::ptr::null(), CStr::as_ptr);
    let fst = fstype.map_or(std::ptr::null(), CStr::as_ptr);
    // SAFETY: every pointer is either NULL (allowed by mount(2) for source,
    // fstype and data with these flags) or a NUL-terminated string borrowed
    // for the duration of the call.
    let rc = unsafe { libc::mount(src, target.as_ptr(), fst, flags, std::ptr::null()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `umount2(target, flags)`.
pub(crate) fn umount2(target: &CStr, flags: libc::c_int) -> io::Result<()> {
    // SAFETY: target is a NUL-terminated string borrowed for the call.
    let rc = unsafe { libc::umount2(target.as_ptr(), flags) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `(st_dev, st_ino)` of an open file.
pub(crate) fn fstat_id(fd: BorrowedFd<'_>) -> io::Result<(u64, u64)> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: st points to writable memory of the size fstat expects; the fd
    // is valid for the borrow.
    let rc = unsafe { libc::fstat(fd.as_raw_fd(), st.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fstat returned 0, so it filled the whole struct.
    let st = unsafe { st.assume_init() };
    Ok((st.st_dev, st.st_ino))
}

/// A path as a C string (paths with interior NUL bytes are refused).
pub(crate) fn cpath(path: &Path) -> Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| RtnlError::invalid("path", path.display().to_string(), "contains a NUL byte"))
}

/// Runs `f` on a short-lived thread that first joins the network namespace
/// `ns`. The calling thread never changes namespace; whatever `f` opens
/// (netlink sockets, /proc/sys/net files) stays bound to `ns` after the
/// thread exits.
pub(crate) fn in_netns<T, F>(ns: BorrowedFd<'_>, op: &str, f: F) -> Result<T>
where
    T: Send,
    F: FnOnce() -> Result<T> + Send,
{
    run_on_thread(op, move || {
        setns(ns, libc::CLONE_NEWNET)
            .map_err(|e| RtnlError::sys(format!("{op}: setns(CLONE_NEWNET)"), e))?;
        f()
    })
}

/// Runs `f` on a fresh scoped thread and returns its result; a panic in `f`
/// is resumed on the caller.
pub(crate) fn run_on_thread<T, F>(op: &str, f: F) -> Result<T>
where
    T: Send,
    F: FnOnce() -> Result<T> + Send,
{
    std::thread::scope(|s| {
        let handle = std::thread::Builder::new()
            .name("rtnl-netns".into())
            .spawn_scoped(s, f)
            .map_err(|e| RtnlError::sys(format!("{op}: spawn thread"), e))?;
        match handle.join() {
            Ok(r) => r,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}
