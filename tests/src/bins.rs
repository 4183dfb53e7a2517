//! Where the built binaries are: `PATCHPANEL_BIN_DIR` if set, otherwise the cargo
//! target directory this test executable was built into.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// The environment variable that overrides the binary directory.
pub const BIN_DIR_ENV: &str = "PATCHPANEL_BIN_DIR";

/// The directory holding `patchpaneld` and the helper binaries.
///
/// Fails with a hint when `patchpaneld` is not there: `cargo nextest run` and
/// `cargo test` build the test targets, not the workspace's other binaries.
pub fn bin_dir() -> Result<PathBuf> {
    let dir = match std::env::var_os(BIN_DIR_ENV) {
        Some(dir) => PathBuf::from(dir),
        None => {
            let exe = std::env::current_exe().context("cannot find the test executable")?;
            // target/debug/deps/<test>-<hash> -> target/debug
            let parent = exe.parent().unwrap_or(Path::new("/"));
            if parent.file_name().is_some_and(|n| n == "deps") {
                parent.parent().unwrap_or(parent).to_path_buf()
            } else {
                parent.to_path_buf()
            }
        }
    };
    check_bin_dir(dir)
}

/// `dir` if it holds `patchpaneld`, otherwise an error saying how to build it.
pub fn check_bin_dir(dir: PathBuf) -> Result<PathBuf> {
    let daemon = dir.join("patchpaneld");
    if !daemon.is_file() {
        bail!(
            "{} does not exist: run `cargo build --workspace --bins` first \
             (or set {BIN_DIR_ENV} to the directory holding the built binaries)",
            daemon.display()
        );
    }
    Ok(dir)
}

/// The path of the built binary `name`, which must exist.
pub fn bin_path(name: &str) -> Result<PathBuf> {
    let path = bin_dir()?.join(name);
    if !path.is_file() {
        bail!(
            "{} does not exist: run `cargo build --workspace --bins` first",
            path.display()
        );
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_without_the_daemon_gives_the_build_command() {
        let empty = tempfile::tempdir().expect("tempdir");
        let err = check_bin_dir(empty.path().to_path_buf()).expect_err("must fail");
        assert!(
            format!("{err:#}").contains("cargo build --workspace --bins"),
            "{err:#}"
        );
    }
}
