//! `patchpanel-mcast-forwarder`: mDNS, SSDP and IPv4 broadcast forwarding
//! between uplinks and guests. In this revision it answers the common
//! requests only; forwarding arrives with its own issue.

use std::process::ExitCode;

use patchpanel_helper_runtime::NoService;
use patchpanel_sandbox::Process;

fn main() -> ExitCode {
    patchpanel_helper_runtime::run(Process::McastForwarder, NoService)
}
