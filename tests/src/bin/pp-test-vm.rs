//! `pp-test-vm HOST_NETNS HOST_TAP GUEST_NETNS GUEST_IFNAME`: the network
//! side of a fake VM for end-to-end tests.
//!
//! It does what crosvm does with a VM's TAP — opens the persistent TAP
//! patchpanel made, by name, in the daemon's namespace — and instead of a
//! virtio device it relays every frame to and from a second TAP,
//! `GUEST_IFNAME`, that it creates in the guest namespace. A real kernel
//! stack then answers on the guest side. Prints `ready` once both TAPs are
//! open; exits when its parent dies (PDEATHSIG) or is killed.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::process::ExitCode;

fn enter(netns: &str) -> std::io::Result<()> {
    let f = File::open(netns)?;
    // SAFETY: setns with a namespace fd valid for the call; this process
    // is single-threaded, so the whole process moves.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Opens (or, if missing, creates) the TAP `name` in the current
/// namespace, without packet info, as crosvm would (minus vnet headers).
fn open_tap(name: &str) -> std::io::Result<File> {
    patchpanel_rtnl::tun::open_tap(name, libc::IFF_TAP | libc::IFF_NO_PI)
        .map_err(|e| std::io::Error::other(e.to_string()))
}

fn relay(a: &mut File, b: &mut File) -> std::io::Result<()> {
    let mut buf = vec![0u8; 65536];
    loop {
        let mut fds = [
            libc::pollfd {
                fd: a.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: b.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: two valid pollfds, no timeout.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        for (i, pfd) in fds.iter().enumerate() {
            if pfd.revents & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) != 0 {
                return Err(std::io::Error::other(format!("tap {i} closed")));
            }
            if pfd.revents & libc::POLLIN == 0 {
                continue;
            }
            let (from, to): (&mut File, &mut File) = if i == 0 {
                (&mut *a, &mut *b)
            } else {
                (&mut *b, &mut *a)
            };
            let len = from.read(&mut buf)?;
            // A frame the other side refuses (down, no carrier) is dropped,
            // as a wire would.
            let _ = to.write(&buf[..len]);
        }
    }
}

fn run(args: &[String]) -> std::io::Result<()> {
    let [host_netns, host_tap, guest_netns, guest_ifname] = args else {
        return Err(std::io::Error::other(
            "usage: pp-test-vm HOST_NETNS HOST_TAP GUEST_NETNS GUEST_IFNAME",
        ));
    };
    // SAFETY: prctl with integer arguments only.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    enter(host_netns)?;
    let mut host =
        open_tap(host_tap).map_err(|e| std::io::Error::other(format!("open {host_tap}: {e}")))?;
    enter(guest_netns)?;
    let mut guest = open_tap(guest_ifname)
        .map_err(|e| std::io::Error::other(format!("create {guest_ifname}: {e}")))?;
    println!("ready");
    std::io::stdout().flush()?;
    relay(&mut host, &mut guest)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pp-test-vm: {e}");
            ExitCode::FAILURE
        }
    }
}
