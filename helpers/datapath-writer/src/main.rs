//! `patchpanel-datapath-writer`: the only process that changes kernel network
//! state (links, addresses, routes, rules, firewall), on typed requests from
//! the manager. In this revision it answers the common requests only; the
//! datapath operations arrive with the ConnectNamespace work.

use std::process::ExitCode;

use patchpanel_helper_runtime::NoService;
use patchpanel_sandbox::Process;

fn main() -> ExitCode {
    patchpanel_helper_runtime::run(Process::DatapathWriter, NoService)
}
