//! One external process, timed from spawn to exit, the way the naive peers
//! run `iptables`.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Runs `argv` (in the calling thread's network namespace), fails unless it
/// exits 0, and returns how long it took from spawn to exit and its stdout.
pub fn run_timed(argv: &[String]) -> Result<(Duration, String)> {
    let (program, args) = argv.split_first().context("empty command line")?;
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let out = cmd
        .output()
        .with_context(|| format!("cannot run `{}`", argv.join(" ")))?;
    let elapsed = started.elapsed();
    if !out.status.success() {
        bail!(
            "`{}` failed ({}): {}",
            argv.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok((elapsed, String::from_utf8_lossy(&out.stdout).into_owned()))
}

/// `argv` as owned strings.
pub fn argv(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|p| p.to_string()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stdout_is_returned() {
        let (_, out) = run_timed(&argv(&["echo", "hello"])).expect("echo");

        assert_eq!(out, "hello\n");
    }

    #[test]
    fn a_failing_process_is_an_error_naming_it() {
        let err = run_timed(&argv(&["false"])).expect_err("false fails");

        assert!(format!("{err:#}").contains("`false` failed"), "{err:#}");
    }
}
