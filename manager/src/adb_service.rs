//! ADB over TCP to ARC (DESIGN §8): while ARC runs and ADB is allowed, port
//! 5555 on the host (IPv4 and IPv6) is relayed by the adb-proxy helper to
//! ARC's adbd: the container at its arc0 address, ARCVM over vsock to its
//! cid.
//!
//! The manager opens the listening socket itself (port 5555 needs no
//! capability, so the helper needs neither one nor `bind`/`listen` in its
//! filter) and keeps it while the relay should listen: the socket is in the
//! helper's replay log, so a respawned helper accepts from the same socket
//! and connections that queued meanwhile are not refused. When ARC stops or
//! ADB is not allowed, the socket is closed and the port with it.
//!
//! On a generic host "ADB is allowed" is the `adb_allowed` configuration
//! key; ChromeOS's signals (developer mode, ADB sideloading) are not read.

use std::net::{SocketAddr, SocketAddrV4};
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::rc::Rc;

use log::{info, warn};
use patchpanel_ipc::{AdbTarget, Request};
use patchpanel_sandbox::Process;

use crate::env::HelperLink;
use crate::guests::{ArcGuest, ArcKind};

pub use crate::guests::ADB_PORT;
/// The replay-log key of the relay's one request.
const REPLAY_KEY: &str = "adb";

/// When and how much the relay serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdbPolicy {
    pub allowed: bool,
    /// Concurrent relayed connections; the helper refuses more.
    pub max_connections: u32,
}

/// Where ADB connections should go now, if anywhere.
pub fn wanted_target(policy: &AdbPolicy, arc: Option<&ArcGuest>) -> Option<AdbTarget> {
    if !policy.allowed {
        return None;
    }
    let arc = arc?;
    Some(match arc.kind {
        ArcKind::Container { .. } => {
            let slot = arc.slots.get(arc.arc0.slot as usize)?;
            AdbTarget::Tcp(SocketAddr::V4(SocketAddrV4::new(
                slot.subnet.guest(),
                ADB_PORT,
            )))
        }
        ArcKind::Vm { cid } => AdbTarget::Vsock {
            cid,
            port: u32::from(ADB_PORT),
        },
    })
}

/// What to do to go from what is served to what is wanted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdbChange {
    Keep,
    Listen(AdbTarget),
    Stop,
}

/// The relay as the manager knows it.
#[derive(Debug)]
pub struct AdbRelay {
    pub policy: AdbPolicy,
    serving: Option<(AdbTarget, Rc<OwnedFd>)>,
}

impl AdbRelay {
    pub fn new(policy: AdbPolicy) -> AdbRelay {
        AdbRelay {
            policy,
            serving: None,
        }
    }

    pub fn change(&self, wanted: Option<AdbTarget>) -> AdbChange {
        match (&self.serving, wanted) {
            (None, None) => AdbChange::Keep,
            (Some(_), None) => AdbChange::Stop,
            (Some((now, _)), Some(w)) if *now == w => AdbChange::Keep,
            (_, Some(w)) => AdbChange::Listen(w),
        }
    }
}

/// A dual-stack, non-blocking TCP listener on `[::]:port` with
/// SO_REUSEADDR (a restarted daemon rebinds while old connections linger).
pub fn open_listener(port: u16) -> std::io::Result<OwnedFd> {
    // SAFETY: socket(2) with constant arguments; the result is checked and
    // owned at once.
    let fd = unsafe {
        libc::socket(
            libc::AF_INET6,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a new descriptor nobody else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    set_int_option(&socket, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
    // Dual stack whatever net.ipv6.bindv6only says.
    set_int_option(&socket, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 0)?;
    // SAFETY: an all-zero sockaddr_in6 is valid ([::]); fields set below.
    let mut addr: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
    addr.sin6_family = libc::AF_INET6 as libc::sa_family_t;
    addr.sin6_port = port.to_be();
    // SAFETY: addr is a valid sockaddr_in6 of the length given.
    let rc = unsafe {
        libc::bind(
            std::os::fd::AsRawFd::as_raw_fd(&socket),
            (&addr as *const libc::sockaddr_in6).cast(),
            std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: listen(2) on a socket we own.
    if unsafe { libc::listen(std::os::fd::AsRawFd::as_raw_fd(&socket), 16) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(socket)
}

fn set_int_option(socket: &OwnedFd, level: i32, name: i32, value: i32) -> std::io::Result<()> {
    // SAFETY: value is a live c_int of the length given.
    let rc = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(socket),
            level,
            name,
            (&value as *const i32).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

impl AdbRelay {
    /// Brings the relay in line with ARC and the policy: listens while ARC
    /// runs and ADB is allowed, closes the port otherwise.
    pub fn reconcile(&mut self, arc: Option<&ArcGuest>, link: &mut dyn HelperLink) {
        let wanted = wanted_target(&self.policy, arc);
        match self.change(wanted) {
            AdbChange::Keep => {}
            AdbChange::Stop => {
                link.forget_replay(Process::AdbProxy, REPLAY_KEY);
                self.serving = None;
                if let Err(e) = link.call_helper(Process::AdbProxy, Request::AdbStop, &[]) {
                    warn!("ADB relay: stop: {e:?} (the port is closed all the same)");
                }
                info!("ADB relay: ARC stopped or ADB is not allowed: port {ADB_PORT} closed");
            }
            AdbChange::Listen(target) => {
                let socket = match self.serving.take() {
                    Some((_, socket)) => socket,
                    None => match open_listener(ADB_PORT) {
                        Ok(s) => Rc::new(s),
                        Err(e) => {
                            warn!("ADB relay: cannot listen on port {ADB_PORT}: {e}; ADB to ARC is unavailable");
                            return;
                        }
                    },
                };
                let request = Request::AdbListen {
                    target: target.clone(),
                    max_connections: self.policy.max_connections,
                };
                // Recorded first: a helper that is restarting gets it on replay.
                link.record_replay(
                    Process::AdbProxy,
                    REPLAY_KEY,
                    request.clone(),
                    vec![socket.clone()],
                );
                self.serving = Some((target.clone(), socket.clone()));
                match link.call_helper(Process::AdbProxy, request, &[socket.as_fd()]) {
                    Ok(_) => info!(
                        "ADB relay: listening on port {ADB_PORT} (IPv4 and IPv6), relaying to {target:?}"
                    ),
                    Err(e) => warn!(
                        "ADB relay: the helper did not take the listener: {e:?}; it gets it again when it restarts"
                    ),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn policy(allowed: bool) -> AdbPolicy {
        AdbPolicy {
            allowed,
            max_connections: 8,
        }
    }

    fn arc(kind: ArcKind) -> ArcGuest {
        let mut addrs = patchpanel_addr::AddressManager::new();
        crate::guests::arc_allocate(kind, &mut addrs, &Default::default()).expect("ARC")
    }

    #[test]
    fn the_container_is_reached_at_its_arc0_address_and_arcvm_over_vsock() {
        let container = arc(ArcKind::Container {
            pid: 4242,
            netns: patchpanel_ipc::NetnsName::new("pp-arc_netns").expect("name"),
        });
        assert_eq!(
            wanted_target(&policy(true), Some(&container)),
            Some(AdbTarget::Tcp("100.115.92.2:5555".parse().expect("addr")))
        );
        let vm = arc(ArcKind::Vm { cid: 33 });
        assert_eq!(
            wanted_target(&policy(true), Some(&vm)),
            Some(AdbTarget::Vsock {
                cid: 33,
                port: 5555
            })
        );
        assert_eq!(wanted_target(&policy(false), Some(&vm)), None);
    }

    #[test]
    fn nothing_is_relayed_without_arc_or_when_adb_is_not_allowed() {
        assert_eq!(wanted_target(&policy(true), None), None);
        let relay = AdbRelay::new(policy(true));
        assert_eq!(relay.change(None), AdbChange::Keep);
    }

    #[test]
    fn a_new_target_starts_listening_and_the_same_target_is_kept() {
        let target = AdbTarget::Vsock {
            cid: 33,
            port: 5555,
        };
        let mut relay = AdbRelay::new(policy(true));
        assert_eq!(
            relay.change(Some(target.clone())),
            AdbChange::Listen(target.clone())
        );
        let socket = open_listener(0).expect("listener on an ephemeral port");
        relay.serving = Some((target.clone(), Rc::new(socket)));
        assert_eq!(relay.change(Some(target)), AdbChange::Keep);
        assert_eq!(
            relay.change(Some(AdbTarget::Vsock {
                cid: 34,
                port: 5555
            })),
            AdbChange::Listen(AdbTarget::Vsock {
                cid: 34,
                port: 5555
            })
        );
        assert_eq!(relay.change(None), AdbChange::Stop);
    }

    #[test]
    fn the_listener_is_dual_stack() {
        let socket = open_listener(0).expect("listener");
        let listener = std::net::TcpListener::from(socket);
        let port = listener.local_addr().expect("addr").port();
        std::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port)).expect("IPv4 connect");
    }
}
