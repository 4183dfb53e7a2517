//! The error a D-Bus call ends with, and whose fault it was: only what the
//! caller sent is `InvalidArgument`; patchpanel's own mistakes and the
//! kernel's refusals are `Failed`. Every module that refuses a call uses
//! it; none of them depends on the D-Bus adaptor for that.

use patchpanel_ipc::HelperError;

/// A failed call: the D-Bus error it becomes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallError {
    /// Bad input: `org.chromium.PatchPanel.Error.InvalidArgument`.
    InvalidArgument(String),
    /// Kernel or internal failure: `org.chromium.PatchPanel.Error.Failed`.
    Failed(String),
    /// A method of the interface this build does not serve:
    /// `org.freedesktop.DBus.Error.UnknownMethod`.
    Unsupported(String),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::InvalidArgument(m) | CallError::Failed(m) | CallError::Unsupported(m) => {
                f.write_str(m)
            }
        }
    }
}

/// A helper's refusal as the D-Bus error class: the writer says
/// `InvalidArgument` only for values that came from the caller (a pid, its
/// namespace); a name the manager chose that is taken, an object that is
/// not patchpanel's, a kernel failure are all `Failed`.
/// A teardown that cannot be computed is patchpanel's failure, not the
/// caller's.
impl From<patchpanel_firewall::InverseError> for CallError {
    fn from(e: patchpanel_firewall::InverseError) -> CallError {
        CallError::Failed(format!("cannot compute the teardown: {e}"))
    }
}

impl From<HelperError> for CallError {
    fn from(e: HelperError) -> CallError {
        match e {
            HelperError::InvalidArgument(m) => CallError::InvalidArgument(m),
            other => CallError::Failed(other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_callers_mistakes_are_invalid_arguments() {
        assert_eq!(
            CallError::from(HelperError::InvalidArgument(
                "pid 7 is in the host's namespace".into()
            )),
            CallError::InvalidArgument("pid 7 is in the host's namespace".into())
        );
        assert_eq!(
            CallError::from(HelperError::Refused(
                "interface arc_ns1 already exists".into()
            )),
            CallError::Failed("refused: interface arc_ns1 already exists".into())
        );
        assert_eq!(
            CallError::from(HelperError::Os {
                operation: "create veth".into(),
                errno: Some(17),
                message: "File exists".into()
            }),
            CallError::Failed("create veth failed: File exists (errno 17)".into())
        );
    }

    #[test]
    fn a_failure_without_an_errno_shows_none() {
        let e = CallError::from(HelperError::Os {
            operation: "iptables-nft-restore".into(),
            errno: None,
            message: "line 3 failed".into(),
        });
        assert_eq!(
            e,
            CallError::Failed("iptables-nft-restore failed: line 3 failed".into())
        );
    }
}
