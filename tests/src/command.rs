//! Running external tools (`ip`, `dbus-send`, ...) with errors that show the
//! command line and what the tool printed.

use std::process::{Command, Output};

use anyhow::{bail, Context, Result};

/// The command line as a shell user would type it, for error messages.
pub(crate) fn describe(cmd: &Command) -> String {
    let mut parts = vec![cmd.get_program().to_string_lossy().into_owned()];
    parts.extend(cmd.get_args().map(|a| a.to_string_lossy().into_owned()));
    parts.join(" ")
}

/// Runs `cmd` to completion and returns its output, whatever its exit status.
pub(crate) fn output(cmd: &mut Command) -> Result<Output> {
    cmd.output()
        .with_context(|| format!("cannot run `{}`", describe(cmd)))
}

/// Runs `cmd` and fails unless it exits with status 0.
pub(crate) fn run_ok(cmd: &mut Command) -> Result<Output> {
    let out = output(cmd)?;
    if !out.status.success() {
        bail!(
            "`{}` failed ({}): {}{}",
            describe(cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }
    Ok(out)
}
