//! `patchpanel-ndproxy`: the RFC 4389 neighbour discovery proxy between
//! uplinks and guests. In this revision it answers the common requests only;
//! proxying arrives with the IPv6 work.

use std::process::ExitCode;

use patchpanel_helper_runtime::NoService;
use patchpanel_sandbox::Process;

fn main() -> ExitCode {
    patchpanel_helper_runtime::run(Process::NdProxy, NoService)
}
