//! Exit statuses scripts can act on (docs/cli.md): which failure an error
//! is, read from the client error somewhere in its chain.

use patchpanel_client::Error as ClientError;

/// The command did what was asked.
pub const OK: u8 = 0;
/// The daemon refused or failed the request, or anything else went wrong.
pub const FAILED: u8 = 1;
/// The command line is wrong (clap exits with this itself).
pub const USAGE: u8 = 2;
/// patchpaneld is not on the bus, or the bus cannot be reached.
pub const NOT_RUNNING: u8 = 3;
/// The bus policy does not let this user make the call.
pub const ACCESS_DENIED: u8 = 4;

/// The exit status for `err`.
pub fn code_for(err: &anyhow::Error) -> u8 {
    let client = err
        .chain()
        .find_map(|cause| cause.downcast_ref::<ClientError>());
    match client {
        Some(ClientError::ServiceUnknown | ClientError::Connect { .. }) => NOT_RUNNING,
        Some(ClientError::AccessDenied { .. }) => ACCESS_DENIED,
        _ => FAILED,
    }
}

#[cfg(test)]
mod tests {
    use anyhow::Context;

    use super::*;

    fn wrapped(err: ClientError) -> anyhow::Error {
        Err::<(), _>(err)
            .context("cannot list the guest devices")
            .unwrap_err()
    }

    #[test]
    fn a_missing_daemon_or_bus_is_three() {
        assert_eq!(code_for(&wrapped(ClientError::ServiceUnknown)), NOT_RUNNING);
        let connect = ClientError::Connect {
            address: None,
            message: "No such file or directory".into(),
        };
        assert_eq!(code_for(&wrapped(connect)), NOT_RUNNING);
    }

    #[test]
    fn a_bus_policy_refusal_is_four() {
        let err = ClientError::AccessDenied {
            method: "GetDevices".into(),
            message: "denied".into(),
        };

        assert_eq!(code_for(&wrapped(err)), ACCESS_DENIED);
    }

    #[test]
    fn a_server_refusal_or_anything_else_is_one() {
        assert_eq!(code_for(&wrapped(ClientError::Failed("no".into()))), FAILED);
        assert_eq!(
            code_for(&wrapped(ClientError::InvalidArgument("bad".into()))),
            FAILED
        );
        assert_eq!(code_for(&anyhow::anyhow!("cannot write to stdout")), FAILED);
    }

    #[test]
    fn usage_is_clap_s_own_code() {
        use clap::Parser;
        let err = crate::args::Cli::try_parse_from(["patchpanel", "nonsense"]).unwrap_err();

        assert_eq!(err.exit_code(), i32::from(USAGE));
        assert_eq!(OK, 0);
    }
}
