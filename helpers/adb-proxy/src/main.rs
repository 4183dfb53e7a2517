//! `patchpanel-adb-proxy`: relays inbound ADB connections to ARC. In this
//! revision it answers the common requests only; relaying arrives with its
//! own issue.

use std::process::ExitCode;

use patchpanel_helper_runtime::NoService;
use patchpanel_sandbox::Process;

fn main() -> ExitCode {
    patchpanel_helper_runtime::run(Process::AdbProxy, NoService)
}
