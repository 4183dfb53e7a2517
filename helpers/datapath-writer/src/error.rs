//! The writer's errors: what failed, with the kernel's errno where it
//! gave one.

use patchpanel_ipc::HelperError;
use patchpanel_rtnl::RtnlError;

pub(crate) fn os_error(operation: impl Into<String>, e: &RtnlError) -> HelperError {
    HelperError::Os {
        operation: operation.into(),
        errno: e.errno(),
        message: e.to_string(),
    }
}

pub(crate) fn io_error(operation: impl Into<String>, e: &std::io::Error) -> HelperError {
    HelperError::Os {
        operation: operation.into(),
        errno: e.raw_os_error(),
        message: e.to_string(),
    }
}

pub(crate) fn firewall_error(what: &str, e: &patchpanel_firewall::FirewallError) -> HelperError {
    HelperError::Os {
        operation: what.into(),
        errno: e.errno(),
        message: e.to_string(),
    }
}

/// The manager asked for something the writer will not do (a name it
/// chose is taken, an object is not patchpanel's): not the D-Bus caller's
/// fault. Values that came from a caller are refused in [`crate::netns`].
pub(crate) fn refused(msg: impl Into<String>) -> HelperError {
    HelperError::Refused(msg.into())
}
