//! What a call can fail with.
//!
//! Callers act differently on a refusal by the server (their request was
//! wrong, or the server could not do it) than on a missing daemon or a broken
//! bus, so the D-Bus error names are translated into variants here, once.

use std::time::Duration;

use patchpanel_proto::names;

/// D-Bus error names the bus itself uses for "nobody owns that name".
const SERVICE_UNKNOWN: &[&str] = &[
    "org.freedesktop.DBus.Error.ServiceUnknown",
    "org.freedesktop.DBus.Error.NameHasNoOwner",
];
/// D-Bus error names for a call that got no answer in time.
const NO_REPLY: &[&str] = &[
    "org.freedesktop.DBus.Error.NoReply",
    "org.freedesktop.DBus.Error.Timeout",
    "org.freedesktop.DBus.Error.TimedOut",
];
/// D-Bus error name for a method the service does not have.
const UNKNOWN_METHOD: &str = "org.freedesktop.DBus.Error.UnknownMethod";
/// D-Bus error name the bus answers when its policy forbids the call.
const ACCESS_DENIED: &str = "org.freedesktop.DBus.Error.AccessDenied";

/// A failed call to patchpanel.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The bus could not be reached.
    #[error("cannot connect to the system bus{}: {message}", address_suffix(.address))]
    Connect {
        /// `DBUS_SYSTEM_BUS_ADDRESS` or the explicit address, if any.
        address: Option<String>,
        /// What libdbus said.
        message: String,
    },
    /// The server refused the request as invalid
    /// (`org.chromium.PatchPanel.Error.InvalidArgument`); retrying the same
    /// request fails again. Displays as the server's message.
    #[error("{0}")]
    InvalidArgument(String),
    /// The server could not carry out a valid request
    /// (`org.chromium.PatchPanel.Error.Failed`, or an empty response from the
    /// original patchpanel, which fails that way). Displays as the server's
    /// message.
    #[error("{0}")]
    Failed(String),
    /// Nobody owns `org.chromium.PatchPanel`: patchpaneld is not running.
    #[error(
        "patchpaneld is not running ({} has no owner on the bus)",
        names::SERVICE
    )]
    ServiceUnknown,
    /// The bus policy does not let this caller send the call (the bus
    /// answered `org.freedesktop.DBus.Error.AccessDenied`; the daemon never
    /// saw it).
    #[error("the bus policy does not allow this user to call {method}: {message}")]
    AccessDenied {
        /// The D-Bus method called.
        method: String,
        /// The bus's message.
        message: String,
    },
    /// The service does not implement the method (an older daemon).
    #[error("the service does not implement {method}: {message}")]
    UnknownMethod {
        /// The D-Bus method called.
        method: String,
        /// The bus's or the service's message.
        message: String,
    },
    /// No answer within the client's timeout.
    #[error("{method} got no answer within {timeout:?}: {message}")]
    Timeout {
        /// The D-Bus method called.
        method: String,
        /// The client's timeout.
        timeout: Duration,
        /// libdbus's message.
        message: String,
    },
    /// Any other D-Bus error.
    #[error("{method}: D-Bus error {name}: {message}")]
    DBus {
        /// The D-Bus method called, or what the client was doing.
        method: String,
        /// The D-Bus error name.
        name: String,
        /// Its message.
        message: String,
    },
    /// The reply (or signal) did not carry one byte array.
    #[error("unexpected {what} arguments: {reason}")]
    UnexpectedArguments {
        /// `"<method> reply"` or `"<signal> signal"`.
        what: String,
        /// What was wrong with them.
        reason: String,
    },
    /// The reply's bytes are not the expected protobuf message.
    #[error("cannot decode {message}: {source}")]
    Decode {
        /// Short name of the expected message type.
        message: &'static str,
        /// What prost found wrong.
        source: prost::DecodeError,
    },
    /// `method` is not a valid D-Bus member name.
    #[error("invalid D-Bus method name {0:?}")]
    InvalidMethodName(String),
    /// The lifeline pipe could not be created.
    #[error("cannot create the lifeline pipe: {0}")]
    Pipe(#[source] std::io::Error),
}

impl Error {
    /// Translates the error reply (or libdbus failure) of a call to `method`.
    pub(crate) fn from_call(method: &str, timeout: Duration, err: &dbus::Error) -> Self {
        let name = err.name().unwrap_or_default();
        let message = err.message().unwrap_or_default().to_string();
        match name {
            names::ERROR_INVALID_ARGUMENT => Self::InvalidArgument(message),
            names::ERROR_FAILED => Self::Failed(message),
            _ if SERVICE_UNKNOWN.contains(&name) => Self::ServiceUnknown,
            _ if NO_REPLY.contains(&name) => Self::Timeout {
                method: method.to_string(),
                timeout,
                message,
            },
            ACCESS_DENIED => Self::AccessDenied {
                method: method.to_string(),
                message,
            },
            UNKNOWN_METHOD => Self::UnknownMethod {
                method: method.to_string(),
                message,
            },
            _ => Self::DBus {
                method: method.to_string(),
                name: name.to_string(),
                message,
            },
        }
    }

    /// `true` when the server answered and refused (`InvalidArgument` or
    /// `Failed`), as opposed to the call not reaching it.
    pub fn is_server_refusal(&self) -> bool {
        matches!(self, Self::InvalidArgument(_) | Self::Failed(_))
    }
}

fn address_suffix(address: &Option<String>) -> String {
    address
        .as_deref()
        .map(|a| format!(" at {a}"))
        .unwrap_or_default()
}

/// `T`'s name without its module path, for decode errors.
pub(crate) fn short_type_name<T>() -> &'static str {
    let full = std::any::type_name::<T>();
    full.rsplit("::").next().unwrap_or(full)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dbus_error(name: &str, message: &str) -> dbus::Error {
        dbus::Error::new_custom(name, message)
    }

    fn translate(name: &str, message: &str) -> Error {
        Error::from_call(
            "ConnectNamespace",
            Duration::from_secs(3),
            &dbus_error(name, message),
        )
    }

    #[test]
    fn invalid_argument_error_keeps_the_server_message() {
        let err = translate(names::ERROR_INVALID_ARGUMENT, "ConnectNamespace: bad pid");

        assert!(matches!(&err, Error::InvalidArgument(m) if m == "ConnectNamespace: bad pid"));
        assert_eq!(err.to_string(), "ConnectNamespace: bad pid");
        assert!(err.is_server_refusal());
    }

    #[test]
    fn failed_error_keeps_the_server_message() {
        let err = translate(names::ERROR_FAILED, "pool exhausted");

        assert!(matches!(&err, Error::Failed(m) if m == "pool exhausted"));
        assert!(err.is_server_refusal());
    }

    #[test]
    fn service_unknown_means_the_daemon_is_not_running() {
        let err = translate(
            "org.freedesktop.DBus.Error.ServiceUnknown",
            "The name is not activatable",
        );

        assert!(matches!(err, Error::ServiceUnknown));
        assert!(!err.is_server_refusal());
        assert!(err.to_string().contains("not running"), "{err}");
    }

    #[test]
    fn no_reply_is_a_timeout_naming_the_method() {
        let err = translate("org.freedesktop.DBus.Error.NoReply", "no reply");

        assert!(matches!(&err, Error::Timeout { method, .. } if method == "ConnectNamespace"));
        assert!(err.to_string().contains("3s"), "{err}");
    }

    #[test]
    fn unknown_method_names_the_method() {
        let err = translate(UNKNOWN_METHOD, "No such method");

        assert!(
            matches!(&err, Error::UnknownMethod { method, .. } if method == "ConnectNamespace")
        );
    }

    #[test]
    fn access_denied_names_the_method_and_is_not_a_server_refusal() {
        let err = translate(ACCESS_DENIED, "policy says no");

        assert!(matches!(
            &err,
            Error::AccessDenied { method, message }
                if method == "ConnectNamespace" && message == "policy says no"
        ));
        assert!(!err.is_server_refusal());
        assert!(err.to_string().contains("bus policy"), "{err}");
    }

    #[test]
    fn other_dbus_errors_keep_name_and_message() {
        let err = translate("org.freedesktop.DBus.Error.LimitsExceeded", "too many");

        assert!(matches!(
            &err,
            Error::DBus { name, message, .. }
                if name == "org.freedesktop.DBus.Error.LimitsExceeded" && message == "too many"
        ));
        assert!(!err.is_server_refusal());
    }

    #[test]
    fn connect_error_names_the_address() {
        let err = Error::Connect {
            address: Some("unix:path=/nowhere".into()),
            message: "No such file or directory".into(),
        };

        assert_eq!(
            err.to_string(),
            "cannot connect to the system bus at unix:path=/nowhere: No such file or directory"
        );
    }
}
