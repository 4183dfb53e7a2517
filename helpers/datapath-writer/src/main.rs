//! `patchpanel-datapath-writer`: the only process that changes kernel network
//! state (namespaces, links, addresses, routes, rules, sysctls, firewall),
//! on typed plans from the manager.
//!
//! It trusts nothing it is sent: every name is re-validated on decode
//! (`IfName`, `NetnsName`), every removal is checked against what
//! patchpanel owns ([`owned`]), and pids arrive pinned by pidfds
//! ([`netns`]). Atomic plans are undone step by step when one step fails
//! ([`apply`]).

mod apply;
mod cleanup;
mod convert;
mod error;
mod firewall_watch;
mod netns;
mod owned;
mod reaper;
mod uplink;

use std::os::fd::OwnedFd;
use std::process::ExitCode;

use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};
use patchpanel_helper_runtime::Service;
use patchpanel_ipc::{Event, HelperError, Reply, Request};
use patchpanel_sandbox::Process;

use crate::apply::Writer;

impl Service for Writer {
    fn handle(
        &mut self,
        request: &Request,
        fds: Vec<OwnedFd>,
    ) -> Option<Result<Reply, HelperError>> {
        Some(match request {
            Request::ConfigureWriter(config) => {
                self.configure(config.clone()).map(|()| Reply::Done)
            }
            Request::SetupFirewall(config) => self.setup_firewall(config).map(|()| Reply::Done),
            Request::ReadCounters { ifnames, offset } => self
                .read_counters(ifnames, *offset)
                .map(|(samples, next)| Reply::Counters { samples, next }),
            Request::Apply(plan) => self.apply(plan, fds).map(Reply::Applied),
            Request::RemoveOwned {
                keep_links,
                keep_netns,
                keep_accounting,
                wait,
            } => self
                .remove_owned(keep_links, keep_netns, *keep_accounting, *wait)
                .map(Reply::Applied),
            Request::CheckFirewall => {
                self.check_firewall()
                    .map(|(coexistence, missing)| Reply::FirewallChecked {
                        coexistence,
                        missing,
                    })
            }
            Request::UpdateConnmark(update) => {
                if let Err(e) = update.check() {
                    return Some(Err(HelperError::Refused(e)));
                }
                patchpanel_firewall::conntrack::update_mark(update)
                    .map(|found| Reply::ConnmarkUpdated { found })
                    .map_err(|e| HelperError::Os {
                        operation: format!("update the conntrack mark of {}", update.flow),
                        errno: e.raw_os_error(),
                        message: e.to_string(),
                    })
            }
            Request::RebuildFirewall { page, last } => {
                self.rebuild_firewall(page, *last)
                    .map(|carried| match carried {
                        Some(carried) => Reply::Rebuilt { carried },
                        None => Reply::Done,
                    })
            }
            _ => return None,
        })
    }

    fn start(&mut self, registry: &Registry) -> Result<(), String> {
        // Opened before the seccomp filter; a kernel without nf_tables
        // notifications leaves the writer without them, not broken.
        match firewall_watch::FirewallWatch::open() {
            Ok(watch) => {
                registry
                    .register(&mut SourceFd(&watch.fd()), RULESET, Interest::READABLE)
                    .map_err(|e| format!("epoll: {e}"))?;
                self.watch = Some(watch);
            }
            Err(e) => log::warn!(
                "cannot follow nf_tables notifications ({e}): changes other programs make to the rule set will not be seen"
            ),
        }
        Ok(())
    }

    fn ready(&mut self, token: Token) -> Result<Vec<Event>, String> {
        if token != RULESET {
            return Ok(Vec::new());
        }
        let kind = self.firewall_kind;
        Ok(self
            .watch
            .as_mut()
            .and_then(|w| w.read(kind))
            .map(Event::FirewallChanged)
            .into_iter()
            .collect())
    }
}

/// The token of the nf_tables notification socket (0 is the manager's).
const RULESET: Token = Token(1);

fn main() -> ExitCode {
    patchpanel_helper_runtime::run(Process::DatapathWriter, Writer::default())
}
