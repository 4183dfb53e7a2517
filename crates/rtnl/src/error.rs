//! The one error type of this crate.
//!
//! Every variant names the operation and its input (`"add address
//! 10.0.0.1/24 on eth0"`), so a log line says what was attempted without the
//! caller adding context, and carries the errno when there is one so callers
//! can decide (for example) that `ENODEV` during teardown is fine.

use std::io;

/// What went wrong, with which input.
#[derive(Debug, thiserror::Error)]
pub enum RtnlError {
    /// A system call made by this crate failed (socket, setns, mount, open...).
    #[error("{op}: {source}")]
    Sys {
        /// What was being done, with its input.
        op: String,
        /// The error from the system call; `raw_os_error()` has the errno.
        #[source]
        source: io::Error,
    },
    /// The kernel answered a netlink request with an error.
    #[error("{op}: {}{}", io::Error::from_raw_os_error(*errno), fmt_ext(message))]
    Kernel {
        /// The request, with its input.
        op: String,
        /// Positive errno from the netlink ack.
        errno: i32,
        /// The kernel's extended-ack message, when it sent one.
        message: Option<String>,
    },
    /// A kernel reply could not be parsed.
    #[error("{op}: malformed netlink reply: {detail}")]
    Malformed {
        /// The request or event being parsed.
        op: String,
        /// What was wrong with it.
        detail: String,
    },
    /// A request could not be encoded (should not happen with validated input).
    #[error("{op}: cannot encode request: {detail}")]
    Encode {
        /// The request, with its input.
        op: String,
        /// What the encoder said.
        detail: String,
    },
    /// A name lookup found no such link.
    #[error("{op}: no link named {name:?}")]
    NoSuchLink {
        /// The operation that needed the link.
        op: String,
        /// The missing link's name.
        name: String,
    },
    /// The caller passed something this crate refuses (bad name, key, family mix).
    #[error("invalid {what} {value:?}: {reason}")]
    Invalid {
        /// What kind of input (interface name, sysctl key, route...).
        what: &'static str,
        /// The input as given.
        value: String,
        /// Why it was refused.
        reason: String,
    },
}

fn fmt_ext(message: &Option<String>) -> String {
    match message {
        Some(m) if !m.is_empty() => format!(": {m}"),
        _ => String::new(),
    }
}

impl RtnlError {
    /// The errno behind this error, when there is one (`NoSuchLink` is `ENODEV`).
    pub fn errno(&self) -> Option<i32> {
        match self {
            RtnlError::Sys { source, .. } => source.raw_os_error(),
            RtnlError::Kernel { errno, .. } => Some(*errno),
            RtnlError::NoSuchLink { .. } => Some(libc::ENODEV),
            RtnlError::Malformed { .. } | RtnlError::Encode { .. } | RtnlError::Invalid { .. } => {
                None
            }
        }
    }

    pub(crate) fn sys(op: impl Into<String>, source: io::Error) -> Self {
        RtnlError::Sys {
            op: op.into(),
            source,
        }
    }

    pub(crate) fn invalid(
        what: &'static str,
        value: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        RtnlError::Invalid {
            what,
            value: value.into(),
            reason: reason.into(),
        }
    }
}

/// Result alias for this crate.
pub type Result<T, E = RtnlError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_error_names_the_operation_the_errno_and_the_kernel_message() {
        let e = RtnlError::Kernel {
            op: "create veth a/b".into(),
            errno: libc::EEXIST,
            message: Some("link exists".into()),
        };
        let text = e.to_string();
        assert!(text.starts_with("create veth a/b: "), "{text}");
        assert!(text.contains("(os error 17)"), "{text}");
        assert!(text.ends_with(": link exists"), "{text}");
        assert_eq!(e.errno(), Some(libc::EEXIST));
    }

    #[test]
    fn missing_link_reports_enodev() {
        let e = RtnlError::NoSuchLink {
            op: "set eth9 up".into(),
            name: "eth9".into(),
        };
        assert_eq!(e.errno(), Some(libc::ENODEV));
    }
}
