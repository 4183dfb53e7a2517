//! `patchpanel-mcast-forwarder`: mDNS, SSDP and IPv4 broadcast forwarding
//! between uplinks and guests, as a sandboxed helper (CAP_NET_RAW only, for
//! device-pinned and raw sockets).
//!
//! The manager says which (uplink, downlink) pairs to forward
//! ([`Request::McastStart`], [`Request::McastStop`], both idempotent so they
//! are replayed to a respawned helper); [`patchpanel_mcast::Forwarder`]
//! does the rest in the runtime's one event loop. Sockets are opened as
//! pairs arrive, under the seccomp filter (its socket rule admits AF_INET,
//! AF_INET6 and, for broadcast, AF_PACKET).

use std::net::Ipv4Addr;
use std::os::fd::OwnedFd;
use std::process::ExitCode;

use log::info;
use mio::{Registry, Token};
use patchpanel_helper_runtime::Service;
use patchpanel_ipc::{Event, HelperError, McastPair, Reply, Request};
use patchpanel_mcast::{Forwarder, ForwarderError, Pair, Protocols};
use patchpanel_sandbox::Process;

/// The forwarder's tokens start here (0 is the manager channel).
const FIRST_TOKEN: usize = 1;

#[derive(Debug, Default)]
struct McastForwarder {
    forwarder: Option<Forwarder>,
}

fn pair(p: &McastPair) -> Pair {
    Pair {
        uplink: p.uplink.as_str().to_string(),
        downlink: p.downlink.as_str().to_string(),
        uplink_ipv4: p.uplink_ipv4.map(Ipv4Addr::from),
        inbound: p.inbound,
        outbound: p.outbound,
    }
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

impl Service for McastForwarder {
    fn handle(
        &mut self,
        request: &Request,
        _fds: Vec<OwnedFd>,
    ) -> Option<Result<Reply, HelperError>> {
        if !matches!(request, Request::McastStart(_) | Request::McastStop { .. }) {
            return None;
        }
        let Some(forwarder) = self.forwarder.as_mut() else {
            return Some(Err(HelperError::Os {
                operation: "mcast".into(),
                errno: None,
                message: "the forwarder is not running".into(),
            }));
        };
        Some(match request {
            Request::McastStart(p) => forwarder
                .start(pair(p))
                .map(|()| Reply::Done)
                .map_err(|e| helper_error(format!("forward {} - {}", p.uplink, p.downlink), e)),
            Request::McastStop { uplink, downlink } => {
                if forwarder
                    .pairs()
                    .get(downlink.as_str())
                    .is_some_and(|p| p.uplink == uplink.as_str())
                {
                    forwarder.stop(downlink.as_str());
                }
                Ok(Reply::Done)
            }
            _ => return None,
        })
    }

    fn start(&mut self, registry: &Registry) -> Result<(), String> {
        let forwarder = Forwarder::new(registry, FIRST_TOKEN, Protocols::ALL)
            .map_err(|e| format!("multicast forwarder: {e}"))?;
        self.forwarder = Some(forwarder);
        Ok(())
    }

    fn ready(&mut self, token: Token) -> Result<Vec<Event>, String> {
        if let Some(forwarder) = self.forwarder.as_mut() {
            forwarder.ready(token);
        }
        Ok(Vec::new())
    }
}

impl Drop for McastForwarder {
    fn drop(&mut self) {
        if let Some(f) = &self.forwarder {
            info!("multicast forwarder: {}", f.stats());
        }
    }
}

fn main() -> ExitCode {
    patchpanel_helper_runtime::run(Process::McastForwarder, McastForwarder::default())
}
