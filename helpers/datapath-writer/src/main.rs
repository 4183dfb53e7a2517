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
mod netns;
mod owned;

use std::os::fd::OwnedFd;
use std::process::ExitCode;

use patchpanel_helper_runtime::Service;
use patchpanel_ipc::{HelperError, Reply, Request};
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
            } => self
                .remove_owned(keep_links, keep_netns, *keep_accounting)
                .map(Reply::Applied),
            _ => return None,
        })
    }
}

fn main() -> ExitCode {
    patchpanel_helper_runtime::run(Process::DatapathWriter, Writer::default())
}
