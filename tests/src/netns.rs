//! A named network namespace that lives exactly as long as a test.
//!
//! Names are `ppt-<test pid>-<n>`, so parallel tests (one process each under
//! nextest, or threads under `cargo test`) never collide, and a namespace left
//! behind by a crashed run can be recognised and replaced.

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context, Result};

use crate::command::{output, run_ok};

/// Where `ip netns` keeps its bind mounts.
pub const NETNS_RUN_DIR: &str = "/run/netns";

static NEXT_INDEX: AtomicU32 = AtomicU32::new(0);

/// A network namespace created with `ip netns add` and deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates a fresh namespace and brings its `lo` up.
    pub fn new() -> Result<Self> {
        let index = NEXT_INDEX.fetch_add(1, Ordering::SeqCst);
        let name = format!("ppt-{}-{index}", std::process::id());
        let path = PathBuf::from(NETNS_RUN_DIR).join(&name);
        if path.exists() {
            // Left behind by an earlier run whose pid was reused: ours by name.
            run_ok(Command::new("ip").args(["netns", "delete", &name]))
                .with_context(|| format!("cannot remove stale netns {name}"))?;
        }
        run_ok(Command::new("ip").args(["netns", "add", &name]))?;
        // From here on, Drop deletes it even if the rest fails.
        let netns = Self { name };
        run_ok(Command::new("ip").args(["-n", &netns.name, "link", "set", "lo", "up"]))?;
        Ok(netns)
    }

    /// The namespace's name as `ip netns` knows it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/<name>`, for `nsenter --net=`.
    pub fn path(&self) -> PathBuf {
        PathBuf::from(NETNS_RUN_DIR).join(&self.name)
    }

    /// The nsfs inode of the namespace, equal to the inode of
    /// `/proc/<pid>/ns/net` for every process inside it.
    pub fn inode(&self) -> Result<u64> {
        let path = self.path();
        let meta =
            std::fs::metadata(&path).with_context(|| format!("cannot stat {}", path.display()))?;
        Ok(meta.ino())
    }

    /// Runs a tool inside the namespace with `ip netns exec` and returns its
    /// output whatever the exit status. Fine for tools such as `ip` or
    /// `iptables-save`; the daemon itself is started with `nsenter --net=`
    /// (see [`crate::Daemon`]) because `ip netns exec` adds a private mount
    /// namespace that would hide the namespaces the daemon creates.
    pub fn exec(&self, argv: &[&str]) -> Result<Output> {
        output(
            Command::new("ip")
                .args(["netns", "exec", &self.name])
                .args(argv),
        )
    }

    /// Like [`Netns::exec`], but fails unless the tool exits 0; returns stdout.
    pub fn exec_ok(&self, argv: &[&str]) -> Result<String> {
        let out = run_ok(
            Command::new("ip")
                .args(["netns", "exec", &self.name])
                .args(argv),
        )?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `iptables-save` (`ip6tables-save` when `v6`), of one table if given,
    /// followed, when the tests run against the nftables backend, by
    /// patchpanel's own nf_tables tables in the same form (`-A chain spec`,
    /// read back from each rule's comment by `nft`). Host rules and
    /// patchpanel's rules are then checked the same way with either
    /// backend.
    pub fn firewall_save(&self, v6: bool, table: Option<&str>) -> Result<String> {
        let tool = if v6 {
            "ip6tables-save"
        } else {
            "iptables-save"
        };
        let mut argv = vec![tool];
        if let Some(t) = table {
            argv.extend(["-t", t]);
        }
        let mut text = self.exec_ok(&argv)?;
        if crate::daemon::firewall_backend() == "nftables" {
            let family = if v6 { "ip6" } else { "ip" };
            for t in ["filter", "nat", "mangle"] {
                if table.is_some_and(|want| want != t) {
                    continue;
                }
                let name = format!("patchpanel_{t}");
                let Ok(listing) = self.exec_ok(&["nft", "list", "table", family, &name]) else {
                    continue; // no such table
                };
                text.push_str(&nft_as_save(&listing, family, t));
            }
        }
        Ok(text)
    }
}

/// `text` (iptables-save output) without the marker chain the iptables
/// backend leaves in a table it made while that table holds the kept
/// accounting chains (`patchpanel_created`, see the firewall layout): what
/// remains must hold nothing of patchpanel's.
pub fn without_table_marker(text: &str) -> String {
    text.lines()
        .filter(|l| !l.contains(patchpanel_firewall::layout::TABLE_MARKER))
        .map(|l| format!("{l}\n"))
        .collect()
}

/// `nft list table` output of one of patchpanel's tables as
/// `iptables-save` lines. A port set's lookup rule (comment `@set`) stands
/// for the rules that are the set's elements (each element's comment),
/// sorted.
pub fn nft_as_save(listing: &str, family: &str, table: &str) -> String {
    // No `*table`/`COMMIT` of its own: the lines read as part of the
    // iptables table before them, and a table left with nothing of ours
    // leaves nothing here.
    let mut out = format!("# nf_tables {family} {table}\n");
    let mut elements: std::collections::HashMap<String, Vec<String>> = Default::default();
    let mut set: Option<String> = None;
    let mut chain = None;
    for line in listing.lines() {
        let l = line.trim();
        if let Some(rest) = l.strip_prefix("set ").or_else(|| l.strip_prefix("map ")) {
            set = rest.strip_suffix(" {").map(str::to_string);
            continue;
        }
        if let Some(s) = &set {
            if l == "}" {
                set = None;
                continue;
            }
            let mut rest = l;
            while let Some(i) = rest.find("comment \"") {
                let after = &rest[i + 9..];
                let end = after.find('"').unwrap_or(after.len());
                elements
                    .entry(s.clone())
                    .or_default()
                    .push(after[..end].to_string());
                rest = &after[end..];
            }
            continue;
        }
        if let Some(rest) = l.strip_prefix("chain ") {
            chain = rest.strip_suffix(" {").map(str::to_string);
            if let Some(c) = &chain {
                out.push_str(&format!(":{c} - [0:0]\n"));
            }
            continue;
        }
        let Some(c) = &chain else { continue };
        if l == "}" {
            chain = None;
            continue;
        }
        if l.is_empty() || l.starts_with("type ") {
            continue;
        }
        match l.rfind(" comment \"") {
            Some(i) => {
                let spec = l[i + 10..].trim_end_matches('"');
                if let Some(name) = spec.strip_prefix('@') {
                    let mut specs = elements.get(name).cloned().unwrap_or_default();
                    specs.sort();
                    for spec in specs {
                        let spec = patchpanel_firewall::render::saved_form(&spec);
                        out.push_str(&format!("-A {c} {spec}\n"));
                    }
                    continue;
                }
                let spec = patchpanel_firewall::render::saved_form(spec);
                out.push_str(&format!("-A {c} {spec}\n"));
            }
            None if l == "counter" || l.starts_with("counter packets") => {
                out.push_str(&format!("-A {c}\n"));
            }
            None => out.push_str(&format!("-A {c} # {l}\n")),
        }
    }
    out
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(err) = run_ok(Command::new("ip").args(["netns", "delete", &self.name])) {
            eprintln!("harness: cannot delete netns {}: {err:#}", self.name);
        }
    }
}

/// Deletes every named namespace whose name starts with `prefix` (what a daemon
/// with that `netns_prefix` may have left behind). Returns the deleted names and
/// the errors met on the way; keeps going after an error.
pub fn delete_netns_with_prefix(prefix: &str) -> (Vec<String>, Vec<String>) {
    let mut deleted = Vec::new();
    let mut errors = Vec::new();
    if prefix.is_empty() {
        errors.push("refusing to delete netns with an empty prefix".to_string());
        return (deleted, errors);
    }
    let entries = match std::fs::read_dir(NETNS_RUN_DIR) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return (deleted, errors),
        Err(err) => {
            errors.push(format!("cannot list {NETNS_RUN_DIR}: {err}"));
            return (deleted, errors);
        }
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with(prefix) {
            continue;
        }
        match run_ok(Command::new("ip").args(["netns", "delete", &name])) {
            Ok(_) => deleted.push(name),
            Err(err) => errors.push(format!("{err:#}")),
        }
    }
    (deleted, errors)
}
