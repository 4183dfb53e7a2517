//! `patchpanel-adb-proxy`: relays inbound ADB connections to ARC's adbd
//! (DESIGN §8). It holds no capability and opens no listening socket: the
//! manager hands it the socket on [`Request::AdbListen`] (and again after a
//! respawn, from its replay log) and closes it when ARC stops.

mod relay;

use std::os::fd::OwnedFd;
use std::process::ExitCode;

use mio::{Registry, Token};
use patchpanel_helper_runtime::Service;
use patchpanel_ipc::{Event, HelperError, Reply, Request};
use patchpanel_sandbox::Process;

#[derive(Debug, Default)]
struct AdbProxy {
    relay: Option<relay::Relay>,
}

impl Service for AdbProxy {
    fn handle(
        &mut self,
        request: &Request,
        mut fds: Vec<OwnedFd>,
    ) -> Option<Result<Reply, HelperError>> {
        let relay = match request {
            Request::AdbListen { .. } | Request::AdbStop => self.relay.as_mut()?,
            _ => return None,
        };
        Some(match request {
            Request::AdbListen {
                target,
                max_connections,
            } => {
                if fds.len() != 1 || *max_connections == 0 {
                    return Some(Err(HelperError::Refused(format!(
                        "AdbListen takes one listening socket and a limit above 0 (got {} fds, limit {max_connections})",
                        fds.len()
                    ))));
                }
                let listener = fds.remove(0);
                relay
                    .listen(listener, target.clone(), *max_connections)
                    .map(|_| Reply::Done)
                    .map_err(|e| HelperError::Os {
                        operation: "listen for ADB".into(),
                        errno: e.raw_os_error(),
                        message: e.to_string(),
                    })
            }
            _ => {
                relay.stop();
                Ok(Reply::Done)
            }
        })
    }

    fn start(&mut self, registry: &Registry) -> Result<(), String> {
        let registry = registry.try_clone().map_err(|e| format!("epoll: {e}"))?;
        self.relay = Some(relay::Relay::new(registry));
        Ok(())
    }

    fn ready(&mut self, token: Token) -> Result<Vec<Event>, String> {
        if let Some(relay) = self.relay.as_mut() {
            relay.ready(token);
        }
        Ok(Vec::new())
    }
}

fn main() -> ExitCode {
    patchpanel_helper_runtime::run(Process::AdbProxy, AdbProxy::default())
}
