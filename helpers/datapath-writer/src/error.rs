//! The writer's errors: what failed, with the kernel's errno where it
//! gave one.

use patchpanel_ipc::HelperError;
use patchpanel_rtnl::RtnlError;

pub(crate) fn os_error(operation: impl Into<String>, e: &RtnlError) -> HelperError {
    HelperError::Os {
        operation: operation.into(),
        errno: e.errno().unwrap_or(0),
        message: e.to_string(),
    }
}

pub(crate) fn io_error(operation: impl Into<String>, e: &std::io::Error) -> HelperError {
    HelperError::Os {
        operation: operation.into(),
        errno: e.raw_os_error().unwrap_or(0),
        message: e.to_string(),
    }
}

pub(crate) fn firewall_error(what: &str, e: &patchpanel_firewall::FirewallError) -> HelperError {
    HelperError::Os {
        operation: what.into(),
        errno: 0,
        message: e.to_string(),
    }
}

pub(crate) fn invalid(msg: impl Into<String>) -> HelperError {
    HelperError::InvalidArgument(msg.into())
}
