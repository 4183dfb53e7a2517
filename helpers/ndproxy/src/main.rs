//! `patchpanel-ndproxy`: the RFC 4389 neighbour discovery proxy between
//! uplinks and guests, as a sandboxed helper (CAP_NET_RAW only).
//!
//! The manager says which (uplink, downlink) pairs to proxy
//! ([`Request::NdProxyStart`], [`Request::NdProxyStop`], both idempotent so
//! they can be replayed to a respawned helper); the helper relays RS, RA,
//! NS and NA between them with [`patchpanel_ndp::Forwarder`] and reports
//! every guest address a downlink may use (see `patchpanel_ndp::proxy` for
//! the rule: inside the uplink's on-link prefixes, nobody else's, bounded
//! and rate-limited per downlink) as [`Event::NeighborDetected`], so the
//! manager can have the writer install a /128 route. The helper changes no
//! routes, addresses or sysctls; its sockets are opened before its seccomp
//! filter is installed.

use std::os::fd::OwnedFd;
use std::process::ExitCode;
use std::time::Instant;

use mio::{Registry, Token};
use patchpanel_helper_runtime::Service;
use patchpanel_ipc::{Event, HelperError, Reply, Request};
use patchpanel_ndp::{Forwarder, ForwarderError, Notice, Tokens};
use patchpanel_sandbox::Process;

/// Tokens of the forwarder's sockets (0 is the manager channel).
const TOKENS: Tokens = Tokens {
    packets: Token(1),
    links: Token(2),
    neighbors: Token(3),
};

/// The helper's state: the forwarder, once the runtime has started it.
#[derive(Debug, Default)]
struct NdProxy {
    forwarder: Option<Forwarder>,
}

fn helper_error(operation: String, e: ForwarderError) -> HelperError {
    match e {
        ForwarderError::NoSuchLink(_) | ForwarderError::Pair(_) => {
            HelperError::Refused(format!("{operation}: {e}"))
        }
        e => HelperError::Os {
            operation,
            errno: e.errno(),
            message: e.to_string(),
        },
    }
}

impl Service for NdProxy {
    fn handle(
        &mut self,
        request: &Request,
        _fds: Vec<OwnedFd>,
    ) -> Option<Result<Reply, HelperError>> {
        let (uplink, downlink, start) = match *request {
            Request::NdProxyStart {
                uplink_ifindex,
                downlink_ifindex,
            } => (uplink_ifindex, downlink_ifindex, true),
            Request::NdProxyStop {
                uplink_ifindex,
                downlink_ifindex,
            } => (uplink_ifindex, downlink_ifindex, false),
            _ => return None,
        };
        let Some(forwarder) = self.forwarder.as_mut() else {
            return Some(Err(HelperError::Os {
                operation: "ndproxy".into(),
                errno: None,
                message: "the proxy is not running".into(),
            }));
        };
        Some(if start {
            forwarder
                .start(uplink, downlink)
                .map(|_| Reply::Done)
                .map_err(|e| helper_error(format!("start ND proxy #{uplink} -> #{downlink}"), e))
        } else {
            forwarder.stop(uplink, downlink);
            Ok(Reply::Done)
        })
    }

    fn start(&mut self, registry: &Registry) -> Result<(), String> {
        let mut forwarder = Forwarder::open().map_err(|e| format!("ND proxy: {e}"))?;
        forwarder
            .register(registry, TOKENS)
            .map_err(|e| format!("epoll: {e}"))?;
        self.forwarder = Some(forwarder);
        Ok(())
    }

    fn ready(&mut self, token: Token) -> Result<Vec<Event>, String> {
        let Some(forwarder) = self.forwarder.as_mut() else {
            return Ok(Vec::new());
        };
        let notices = forwarder
            .ready(token)
            .map_err(|e| format!("ND proxy: {e}"))?;
        Ok(events(notices))
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.forwarder.as_ref().and_then(Forwarder::next_deadline)
    }

    fn tick(&mut self, now: Instant) -> Result<Vec<Event>, String> {
        Ok(self
            .forwarder
            .as_mut()
            .map(|f| events(f.tick(now)))
            .unwrap_or_default())
    }
}

/// The notices the manager hears about: guest addresses.
fn events(notices: Vec<Notice>) -> Vec<Event> {
    notices
        .into_iter()
        .filter_map(|n| match n {
            Notice::Guest(g) => Some(Event::NeighborDetected {
                ifindex: g.ifindex,
                addr: g.addr.octets(),
            }),
            Notice::LinkAdded { .. } | Notice::LinkRemoved { .. } => None,
        })
        .collect()
}

fn main() -> ExitCode {
    patchpanel_helper_runtime::run(Process::NdProxy, NdProxy::default())
}
