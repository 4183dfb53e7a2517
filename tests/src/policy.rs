//! The project's bus policy (`upstart/org.chromium.PatchPanel.conf`) as a
//! test bus runs it, and callers that run as the users it names.
//!
//! The ChromeOS callers (chronos, shill, devbroker, ...) do not exist on a
//! test host, so the policy is loaded as a copy in which each is renamed
//! `pp-<name>`, a user made by `scripts/bootstrap`; `root`, `patchpaneld`,
//! `crosvm` and the `patchpanel` group keep their names.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// The ChromeOS callers named in the policy and the test users standing in
/// for them.
pub const STAND_INS: &[(&str, &str)] = &[
    ("chronos", "pp-chronos"),
    ("shill", "pp-shill"),
    ("devbroker", "pp-devbroker"),
    ("system-proxy", "pp-system-proxy"),
    ("dns-proxy", "pp-dns-proxy"),
    ("dns-proxy-system", "pp-dns-proxy-system"),
    ("dns-proxy-user", "pp-dns-proxy-user"),
];

/// A member of the `patchpanel` group (and of no other listed role).
pub const GROUP_MEMBER: &str = "pp-client";

/// The policy file in the tree.
pub fn policy_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../upstart/org.chromium.PatchPanel.conf")
}

/// The socket service's policy file in the tree.
pub fn socket_service_policy_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../upstart/org.chromium.SocketService.conf")
}

/// The policy with each ChromeOS caller renamed to its stand-in.
pub fn policy_for_test_users(original: &str) -> String {
    let mut text = original.to_string();
    for (name, stand_in) in STAND_INS {
        text = text.replace(&format!("user=\"{name}\""), &format!("user=\"{stand_in}\""));
    }
    text
}

/// Every `user="..."` value in a policy text.
pub fn policy_users(text: &str) -> BTreeSet<String> {
    text.split("user=\"")
        .skip(1)
        .filter_map(|rest| rest.split_once('"').map(|(name, _)| name.to_string()))
        .collect()
}

/// Writes the renamed copy into `dir` and returns its path. Fails if the
/// policy names a user with no stand-in.
pub fn write_test_policy(dir: &Path) -> Result<PathBuf> {
    write_renamed(&policy_path(), dir)
}

/// Like [`write_test_policy`], for the socket service's policy.
pub fn write_test_socket_service_policy(dir: &Path) -> Result<PathBuf> {
    write_renamed(&socket_service_policy_path(), dir)
}

fn write_renamed(source: &Path, dir: &Path) -> Result<PathBuf> {
    let original = std::fs::read_to_string(source)
        .with_context(|| format!("read the policy {}", source.display()))?;
    let copy = policy_for_test_users(&original);
    let known: BTreeSet<String> = ["root", "patchpaneld", "crosvm"]
        .iter()
        .map(|s| s.to_string())
        .chain(STAND_INS.iter().map(|(_, s)| s.to_string()))
        .collect();
    let unknown: Vec<_> = policy_users(&copy).difference(&known).cloned().collect();
    if !unknown.is_empty() {
        bail!("the policy names users the tests have no stand-in for: {unknown:?}");
    }
    let name = source.file_name().context("policy file name")?;
    let path = dir.join(name);
    std::fs::write(&path, copy).with_context(|| format!("write {}", path.display()))?;
    Ok(path)
}

/// `user`'s primary group, failing with a hint when the user is missing.
pub fn primary_group(user: &str) -> Result<String> {
    let out = Command::new("id")
        .args(["-g", user])
        .output()
        .context("run id")?;
    if !out.status.success() {
        bail!("user {user} does not exist: run scripts/bootstrap (it creates the test users)");
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// A command that runs `program` as `user` with its groups (setpriv), in a
/// clean environment that reaches the bus at `bus_address`.
pub fn command_as(user: &str, bus_address: &str, program: &str) -> Result<Command> {
    let group = primary_group(user)?;
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid", user, "--regid", &group, "--init-groups", "--"])
        .arg(program)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("DBUS_SYSTEM_BUS_ADDRESS", bus_address);
    Ok(cmd)
}
