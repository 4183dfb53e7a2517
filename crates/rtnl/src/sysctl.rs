//! Network sysctls (`/proc/sys/net/...`) in any network namespace.
//!
//! patchpanel turns on forwarding, proxy NDP and per-interface IPv6 settings,
//! on the host and inside guest namespaces. `/proc/sys/net` shows the
//! namespace of the thread that *opens* the file, so for another namespace
//! the open happens on a short-lived thread that has joined it; reads and
//! writes through the open file then act on that namespace.
//!
//! Keys are restricted to `net/...` and checked component by component, so a
//! key from configuration or IPC can never reach `/proc/sys/kernel` or
//! escape `/proc/sys` with `..`.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::BorrowedFd;
use std::path::PathBuf;

use crate::error::{Result, RtnlError};
use crate::sys;

/// Checks a key such as `net/ipv4/ip_forward` or
/// `net/ipv6/conf/eth0/accept_ra`: first component `net`, every component
/// non-empty, not `.` or `..`, and made of `[A-Za-z0-9_.-]`.
pub fn validate_key(key: &str) -> Result<()> {
    let bad = |reason: &str| Err(RtnlError::invalid("sysctl key", key, reason));
    let mut parts = key.split('/');
    if parts.next() != Some("net") {
        return bad("must start with net/");
    }
    let mut n = 0;
    for part in parts {
        n += 1;
        if part.is_empty() {
            return bad("has an empty component");
        }
        if part == "." || part == ".." {
            return bad("has a . or .. component");
        }
        if !part
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-')
        {
            return bad("has a character outside [A-Za-z0-9_.-]");
        }
    }
    if n == 0 {
        return bad("names no setting under net/");
    }
    Ok(())
}

fn path_of(key: &str) -> Result<PathBuf> {
    validate_key(key)?;
    Ok(PathBuf::from("/proc/sys").join(key))
}

fn open(ns: Option<BorrowedFd<'_>>, key: &str, write: bool) -> Result<File> {
    let path = path_of(key)?;
    let what = if write { "write" } else { "read" };
    let op = format!("open sysctl {key} for {what}");
    let do_open = || {
        OpenOptions::new()
            .read(!write)
            .write(write)
            .open(&path)
            .map_err(|e| RtnlError::sys(op.clone(), e))
    };
    match ns {
        Some(ns) => sys::in_netns(ns, &op, do_open),
        None => do_open(),
    }
}

/// Writes `value` to the sysctl `key` in namespace `ns` (the calling
/// thread's namespace with `None`).
pub fn write(ns: Option<BorrowedFd<'_>>, key: &str, value: &str) -> Result<()> {
    if value.contains('\0') {
        return Err(RtnlError::invalid("sysctl value", value, "contains NUL"));
    }
    let mut f = open(ns, key, true)?;
    f.write_all(value.as_bytes())
        .map_err(|e| RtnlError::sys(format!("write {value:?} to sysctl {key}"), e))
}

/// Reads the sysctl `key` in namespace `ns`, without the trailing newline.
pub fn read(ns: Option<BorrowedFd<'_>>, key: &str) -> Result<String> {
    let mut f = open(ns, key, false)?;
    let mut s = String::new();
    f.read_to_string(&mut s)
        .map_err(|e| RtnlError::sys(format!("read sysctl {key}"), e))?;
    Ok(s.trim_end_matches('\n').to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn net_keys_are_accepted() {
        for ok in [
            "net/ipv4/ip_forward",
            "net/ipv6/conf/eth0/accept_ra",
            "net/ipv6/conf/eth0.100/proxy_ndp",
            "net/ipv4/conf/arc-br0/rp_filter",
        ] {
            validate_key(ok).unwrap();
        }
    }

    #[test]
    fn keys_outside_net_or_with_traversal_are_refused() {
        for bad in [
            "../../kernel/x",
            "net/../kernel/core_pattern",
            "net/ipv4/../../kernel/x",
            "kernel/core_pattern",
            "/net/ipv4/ip_forward",
            "net//ip_forward",
            "net/ipv4/ip_forward/",
            "net",
            "net/",
            "net/./ipv4",
            "net/ipv4/ip forward",
            "net/ipv4/ip_forward\n",
            "netx/ipv4",
        ] {
            assert!(validate_key(bad).is_err(), "{bad:?} accepted");
        }
    }
}
