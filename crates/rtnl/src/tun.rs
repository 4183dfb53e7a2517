//! Persistent TAP devices for VMs, made through `/dev/net/tun`.
//!
//! Why it exists: crosvm opens a VM's TAP by name (it sets `IFF_VNET_HDR`
//! itself), so patchpanel must create the device beforehand, keep it alive
//! without holding a file descriptor (`TUNSETPERSIST`) and hand it to the
//! VM's user (`TUNSETOWNER`). rtnetlink cannot do that; the TUN ioctls can.
//! Everything else about the device (alias, MAC, addresses, up) is then set
//! with rtnetlink like any other link, and it is deleted with `RTM_DELLINK`.
//!
//! This is a thin wrapper: one `ioctl` per call, each with a `SAFETY`
//! comment. The device is created with `IFF_TUN_EXCL`, so an existing
//! device of the same name is never attached to (and so never taken over).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;

use crate::error::{Result, RtnlError};
use crate::validate_ifname;

/// The clone device of the TUN/TAP driver.
pub const TUN_DEVICE: &str = "/dev/net/tun";

/// `struct ifreq` as `TUNSETIFF` reads it: the name, then the flags in the
/// first bytes of the union; 40 bytes in all on every Linux ABI patchpanel
/// runs on.
#[repr(C)]
struct IfreqFlags {
    name: [libc::c_char; libc::IFNAMSIZ],
    flags: libc::c_short,
    _union_rest: [u8; 22],
}

/// The flags of a TAP patchpanel creates: Ethernet frames, no packet-info
/// header (crosvm expects none), and never attach to an existing device.
pub const TAP_FLAGS: libc::c_int = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_TUN_EXCL;

fn ioctl_value(file: &File, request: libc::c_ulong, value: libc::c_ulong) -> io::Result<()> {
    // SAFETY: TUNSETPERSIST and TUNSETOWNER take their argument by value
    // (an integer in the pointer slot); the kernel dereferences nothing.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), request, value) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Creates the persistent TAP `name`, owned by `owner_uid` when given.
///
/// Fails with `EBUSY` if a device of that name exists. On failure after the
/// device was made persistent, persistence is cleared again so that closing
/// the descriptor removes the device: nothing is left behind.
pub fn create_persistent_tap(name: &str, owner_uid: Option<u32>) -> Result<()> {
    let op = format!("create persistent tap {name}");
    let file = attach(name, TAP_FLAGS, &op)?;
    ioctl_value(&file, libc::TUNSETPERSIST, 1)
        .map_err(|e| RtnlError::sys(format!("{op}: TUNSETPERSIST"), e))?;
    if let Some(uid) = owner_uid {
        if let Err(e) = ioctl_value(&file, libc::TUNSETOWNER, libc::c_ulong::from(uid)) {
            // Not persistent any more: the device goes with the descriptor.
            let _ = ioctl_value(&file, libc::TUNSETPERSIST, 0);
            return Err(RtnlError::sys(format!("{op}: TUNSETOWNER {uid}"), e));
        }
    }
    Ok(())
}

/// Opens the TAP `name` (attaching to it if it exists: a persistent one,
/// which only its owner, its group or CAP_NET_ADMIN may open; creating a
/// non-persistent one if not) with `flags` (`IFF_TAP | IFF_NO_PI`, and
/// `IFF_VNET_HDR` as qemu and crosvm ask), as a VM's process does. The
/// device lives as long as the descriptor unless it is persistent.
pub fn open_tap(name: &str, flags: libc::c_int) -> Result<File> {
    attach(name, flags, &format!("open tap {name}"))
}

/// `/dev/net/tun` attached to the TAP `name` with `flags` (`TUNSETIFF`);
/// errors name `op`.
fn attach(name: &str, flags: libc::c_int, op: &str) -> Result<File> {
    validate_ifname(name)?;
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(TUN_DEVICE)
        .map_err(|e| RtnlError::sys(format!("{op}: open {TUN_DEVICE}"), e))?;
    let mut req = IfreqFlags {
        name: [0; libc::IFNAMSIZ],
        flags: flags as libc::c_short,
        _union_rest: [0; 22],
    };
    // validate_ifname bounds the name to 15 bytes: it fits with its NUL.
    for (dst, src) in req.name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    // SAFETY: TUNSETIFF reads (and may write back the name of) one `struct
    // ifreq`; `req` has its layout and size and outlives the call.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut req) };
    if rc < 0 {
        return Err(RtnlError::sys(
            format!("{op}: TUNSETIFF"),
            io::Error::last_os_error(),
        ));
    }
    Ok(file)
}

/// The name and flags of the TAP a descriptor is attached to (`TUNGETIFF`).
pub fn tap_of(file: &File) -> io::Result<(String, libc::c_int)> {
    let mut req = IfreqFlags {
        name: [0; libc::IFNAMSIZ],
        flags: 0,
        _union_rest: [0; 22],
    };
    // SAFETY: TUNGETIFF fills one `struct ifreq`, which `req` is.
    if unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNGETIFF, &mut req) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let name = req
        .name
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8 as char)
        .collect();
    Ok((name, libc::c_int::from(req.flags as u16)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// seccomp/datapath-writer.json allows exactly these request numbers.
    #[test]
    fn request_numbers_match_the_seccomp_policy() {
        let requests: [libc::c_ulong; 3] =
            [libc::TUNSETIFF, libc::TUNSETPERSIST, libc::TUNSETOWNER];
        assert_eq!(requests, [0x4004_54ca, 0x4004_54cb, 0x4004_54cc]);
    }

    #[test]
    fn the_request_has_the_size_of_struct_ifreq() {
        assert_eq!(std::mem::size_of::<IfreqFlags>(), 40);
        assert_eq!(std::mem::size_of::<libc::ifreq>(), 40);
    }

    #[test]
    fn tap_flags_ask_for_an_exclusive_tap_without_packet_info() {
        assert_eq!(TAP_FLAGS, 0x0002 | 0x1000 | 0x8000);
    }

    #[test]
    fn a_bad_name_is_refused_before_any_system_call() {
        assert!(matches!(
            create_persistent_tap("a/b", None),
            Err(RtnlError::Invalid { .. })
        ));
        assert!(matches!(
            create_persistent_tap("a234567890123456", None),
            Err(RtnlError::Invalid { .. })
        ));
    }
}
