//! Asks the kernel whether a network interface exists in another network
//! namespace, cheaply enough to poll every few hundred microseconds.
//!
//! A socket stays bound to the network namespace it was created in, so a
//! short-lived thread enters the namespace, creates a datagram socket and
//! exits; from then on `SIOCGIFINDEX` on that socket (what `if_nametoindex`
//! does) resolves names in that namespace, from any thread, without spawning
//! `ip` and without moving the caller.

use std::ffi::c_int;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};

/// A socket inside another network namespace.
#[derive(Debug)]
pub struct LinkProbe {
    socket: OwnedFd,
    netns: PathBuf,
}

impl LinkProbe {
    /// A probe for the namespace bound at `netns` (e.g. `/run/netns/x`).
    pub fn in_netns(netns: &Path) -> Result<LinkProbe> {
        let path = netns.to_path_buf();
        let socket = std::thread::spawn(move || -> io::Result<OwnedFd> {
            let ns = File::open(&path)?;
            // Only this thread moves; it ends right after.
            setns_net(ns.as_fd())?;
            udp_socket()
        })
        .join()
        .map_err(|_| anyhow!("the thread entering {} panicked", netns.display()))?
        .with_context(|| format!("cannot open a socket inside {}", netns.display()))?;
        Ok(LinkProbe {
            socket,
            netns: netns.to_path_buf(),
        })
    }

    /// The interface index of `name`, or `None` when no such interface exists.
    pub fn ifindex(&self, name: &str) -> Result<Option<u32>> {
        let request = IfReq::named(name)?;
        match ifindex_ioctl(self.socket.as_fd(), request) {
            Ok(index) => Ok(Some(index)),
            Err(err) if err.raw_os_error() == Some(libc::ENODEV) => Ok(None),
            Err(err) => Err(err)
                .with_context(|| format!("SIOCGIFINDEX {name} in {} failed", self.netns.display())),
        }
    }

    /// Whether an interface called `name` exists.
    pub fn exists(&self, name: &str) -> Result<bool> {
        Ok(self.ifindex(name)?.is_some())
    }
}

/// `struct ifreq` as `SIOCGIFINDEX` uses it: the name in, the index out. The
/// kernel copies the whole 40-byte struct both ways, hence the padding.
#[repr(C)]
struct IfReq {
    name: [libc::c_char; libc::IFNAMSIZ],
    index: c_int,
    _union_rest: [u8; 20],
}

impl IfReq {
    fn named(name: &str) -> Result<IfReq> {
        if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains('\0') {
            bail!("{name:?} is not a valid interface name");
        }
        let mut request = IfReq {
            name: [0; libc::IFNAMSIZ],
            index: 0,
            _union_rest: [0; 20],
        };
        for (dst, &src) in request.name.iter_mut().zip(name.as_bytes()) {
            *dst = src as libc::c_char;
        }
        Ok(request)
    }
}

const _: () = assert!(std::mem::size_of::<IfReq>() == 40);

/// Moves the calling thread (only it) into the network namespace `ns`.
pub(crate) fn setns_net(ns: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: setns takes a descriptor we hold open and a flag; it changes
    // only the calling thread's network namespace and touches no memory.
    let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn udp_socket() -> io::Result<OwnedFd> {
    // SAFETY: socket() takes plain integers and returns a new descriptor.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn ifindex_ioctl(socket: BorrowedFd<'_>, mut request: IfReq) -> io::Result<u32> {
    // SAFETY: SIOCGIFINDEX reads the NUL-terminated name from and writes the
    // index into the 40-byte struct ifreq we pass, which outlives the call.
    let rc = unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFINDEX, &mut request) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    u32::try_from(request.index)
        .map_err(|_| io::Error::other(format!("negative ifindex {}", request.index)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_interface_name_is_refused() {
        assert!(IfReq::named("").is_err());
    }

    #[test]
    fn a_sixteen_byte_interface_name_is_refused() {
        assert!(IfReq::named("abcdefghijklmnop").is_err());
    }

    #[test]
    fn the_name_is_nul_terminated_in_the_request() {
        let request = IfReq::named("arc_ns0").expect("valid");

        assert_eq!(request.name[6], b'0' as libc::c_char);
        assert_eq!(request.name[7], 0);
    }
}
