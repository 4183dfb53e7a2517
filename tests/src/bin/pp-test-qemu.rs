//! `pp-test-qemu -netdev tap,...,fd=N|ifname=NAME [-pp-guest-fd M]
//! [-pp-exit CODE] [other qemu arguments]`: a stand-in for qemu in the
//! tests of `patchpanel vm run`.
//!
//! It takes its TAP as qemu does: the descriptor `fd=N` it inherited, or the
//! TAP `ifname=NAME` opened by name with virtio-net headers (which only the
//! TAP's owner, or CAP_NET_ADMIN, may do). It checks that the descriptor is
//! a TAP (TUNGETIFF), prints `ready <tap> <pid>`, and relays frames between
//! the TAP and the guest's TAP `M` (an inherited descriptor of a TAP in a
//! guest namespace, without headers), where a real kernel stack answers as
//! the VM would. It exits with CODE (default 0) when its stdin closes.
//! Other arguments are ignored, as qemu's devices would be.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::process::ExitCode;

/// The value of `key=` in a comma-separated option string.
fn option<'a>(opts: &'a str, key: &str) -> Option<&'a str> {
    opts.split(',')
        .find_map(|o| o.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
}

fn open_by_name(name: &str) -> std::io::Result<File> {
    patchpanel_rtnl::tun::open_tap(name, libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR)
        .map_err(|e| std::io::Error::other(e.to_string()))
}

/// The TAP's name and whether frames carry a virtio-net header.
fn describe(tap: &File) -> std::io::Result<(String, bool)> {
    let (name, flags) = patchpanel_rtnl::tun::tap_of(tap)?;
    Ok((name, flags & libc::IFF_VNET_HDR != 0))
}

/// The size of a virtio-net header on this TAP.
fn header_len(tap: &File) -> std::io::Result<usize> {
    let mut len: libc::c_int = 0;
    // SAFETY: TUNGETVNETHDRSZ writes one int.
    if unsafe { libc::ioctl(tap.as_raw_fd(), libc::TUNGETVNETHDRSZ, &mut len) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(usize::try_from(len).unwrap_or(10))
}

/// Relays until stdin closes (or, without a guest, just waits for that).
fn relay(tap: &mut File, header: usize, guest: Option<&mut File>) -> std::io::Result<()> {
    let mut buf = vec![0u8; 65536 + 16];
    let mut guest = guest;
    loop {
        let mut fds = vec![
            libc::pollfd {
                fd: 0,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: tap.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        if let Some(g) = guest.as_ref() {
            fds.push(libc::pollfd {
                fd: g.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            });
        }
        // SAFETY: valid pollfds, no timeout.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if fds[0].revents != 0 {
            let mut byte = [0u8; 64];
            // SAFETY: read into a live buffer from stdin.
            let got = unsafe { libc::read(0, byte.as_mut_ptr().cast(), byte.len()) };
            if got <= 0 {
                return Ok(());
            }
        }
        if fds[1].revents != 0 {
            match tap.read(&mut buf) {
                Ok(len) if len > header => {
                    if let Some(g) = guest.as_mut() {
                        let _ = g.write(&buf[header..len]);
                    }
                }
                Ok(_) => {}
                // The TAP was deleted under us: wait for stdin alone.
                Err(_) => return wait_for_stdin(),
            }
        }
        if fds.len() > 2 && fds[2].revents & libc::POLLIN != 0 {
            if let Some(g) = guest.as_mut() {
                let len = g.read(&mut buf[header..])?;
                buf[..header].fill(0);
                let _ = tap.write(&buf[..header + len]);
            }
        }
    }
}

fn wait_for_stdin() -> std::io::Result<()> {
    let mut sink = Vec::new();
    std::io::stdin().read_to_end(&mut sink).map(|_| ())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut netdev = None;
    let mut guest_fd = None;
    let mut code = 0u8;
    let mut i = 0;
    while i < args.len() {
        let value = args.get(i + 1).cloned().unwrap_or_default();
        match args[i].as_str() {
            "-netdev" => netdev = Some(value),
            "-pp-guest-fd" => guest_fd = value.parse::<i32>().ok(),
            "-pp-exit" => code = value.parse().unwrap_or(1),
            _ => {
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    let Some(netdev) = netdev.filter(|n| n.starts_with("tap,")) else {
        eprintln!("pp-test-qemu: no -netdev tap,...");
        return ExitCode::from(2);
    };
    let tap = match (option(&netdev, "fd"), option(&netdev, "ifname")) {
        (Some(fd), _) => match fd.parse::<i32>() {
            // SAFETY: qemu's contract: fd=N names a descriptor inherited
            // for it, which it then owns.
            Ok(fd) if fd >= 0 => Ok(unsafe { File::from_raw_fd(fd) }),
            _ => Err(std::io::Error::other(format!("bad fd={fd}"))),
        },
        (None, Some(name)) => open_by_name(name),
        (None, None) => Err(std::io::Error::other("neither fd= nor ifname=")),
    };
    let mut tap = match tap.and_then(|t| describe(&t).map(|d| (t, d))) {
        Ok((t, (name, vnet))) => {
            let header = if vnet {
                header_len(&t).unwrap_or(10)
            } else {
                0
            };
            println!("ready {name} {}", std::process::id());
            let _ = std::io::stdout().flush();
            (t, header)
        }
        Err(e) => {
            eprintln!("pp-test-qemu: cannot use the TAP of {netdev}: {e}");
            return ExitCode::from(3);
        }
    };
    // SAFETY: the test passes `M` inherited for this process to own.
    let mut guest = guest_fd.map(|fd| unsafe { File::from_raw_fd(fd) });
    if let Err(e) = relay(&mut tap.0, tap.1, guest.as_mut()) {
        eprintln!("pp-test-qemu: relay: {e}");
        return ExitCode::from(4);
    }
    ExitCode::from(code)
}
