//! Machine-readable snapshots of a namespace's kernel state, for "nothing
//! changed" assertions: links, addresses, routes of every table and both
//! families, ip rules, the whole nftables ruleset (`nft -j`), and, when the
//! tests run against the iptables backend, `iptables-save` and
//! `ip6tables-save`; plus the named namespaces a daemon may create.
//!
//! Everything that moves on its own is normalised away: packet and byte
//! counters, address lifetimes, timestamps in the `*-save` comments. What
//! is left must be equal before and after a test that is not supposed to
//! change anything.

use std::collections::BTreeSet;
use std::fmt;

use anyhow::{Context, Result};
use serde_json::Value;

use crate::daemon::firewall_backend;
use crate::netns::{Netns, NETNS_RUN_DIR};

/// The commands of a snapshot, run inside the namespace with `ip netns exec`.
const JSON_COMMANDS: &[&[&str]] = &[
    &["ip", "-j", "link", "show"],
    &["ip", "-j", "addr", "show"],
    &["ip", "-j", "route", "show", "table", "all"],
    &["ip", "-j", "-6", "route", "show", "table", "all"],
    &["ip", "-j", "rule", "show"],
    &["ip", "-j", "-6", "rule", "show"],
    &["nft", "-j", "list", "ruleset"],
];

/// Object keys whose values change without anyone changing the state.
/// (`tentative` is an IPv6 address during duplicate address detection.)
const VOLATILE_KEYS: &[&str] = &[
    "valid_life_time",
    "preferred_life_time",
    "tentative",
    "stats",
    "stats64",
];

/// One snapshot: a normalised text per command, in a fixed order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelState {
    sections: Vec<(String, String)>,
}

impl KernelState {
    /// Snapshots `netns`, and the named namespaces under `/run/netns`
    /// whose names start with `netns_prefix` (a daemon's; empty: none).
    pub fn take(netns: &Netns, netns_prefix: &str) -> Result<KernelState> {
        let mut sections = Vec::new();
        for argv in JSON_COMMANDS {
            let text = netns.exec_ok(argv)?;
            let mut value: Value = serde_json::from_str(&text)
                .with_context(|| format!("`{}` printed no JSON: {text:?}", argv.join(" ")))?;
            normalise(&mut value);
            sections.push((argv.join(" "), one_object_per_line(&value)));
        }
        if firewall_backend() == "iptables" {
            for tool in ["iptables-save", "ip6tables-save"] {
                let text = netns.exec_ok(&[tool])?;
                sections.push((tool.to_string(), normalise_save(&text)));
            }
        }
        if !netns_prefix.is_empty() {
            sections.push((
                format!("{NETNS_RUN_DIR}/{netns_prefix}*"),
                named_netns(netns_prefix)?.join("\n"),
            ));
        }
        Ok(KernelState { sections })
    }

    /// Like [`KernelState::take`], once no address of the namespace is
    /// tentative any more (IPv6 duplicate address detection adds local
    /// routes when it completes, a second or two after a link comes up),
    /// waiting up to `timeout` for that.
    pub fn take_settled(
        netns: &Netns,
        netns_prefix: &str,
        timeout: std::time::Duration,
    ) -> Result<KernelState> {
        let mut last = String::new();
        let settled = crate::wait::poll_until(timeout, || {
            match netns.exec_ok(&["ip", "-j", "addr", "show"]) {
                Ok(text) if !text.contains("\"tentative\"") => Some(Ok(())),
                Ok(text) => {
                    last = text;
                    None
                }
                Err(err) => Some(Err(err)),
            }
        });
        match settled {
            Some(result) => result?,
            None => anyhow::bail!("addresses still tentative after {timeout:?}: {last}"),
        }
        KernelState::take(netns, netns_prefix)
    }

    /// What differs from `earlier`, section by section; `None` if nothing.
    pub fn diff(&self, earlier: &KernelState) -> Option<StateDiff> {
        let mut changes = Vec::new();
        for ((name, now), (_, then)) in self.sections.iter().zip(&earlier.sections) {
            if now == then {
                continue;
            }
            let now_lines: BTreeSet<&str> = now.lines().collect();
            let then_lines: BTreeSet<&str> = then.lines().collect();
            changes.push(SectionDiff {
                section: name.clone(),
                gone: then_lines
                    .difference(&now_lines)
                    .map(|s| s.to_string())
                    .collect(),
                new: now_lines
                    .difference(&then_lines)
                    .map(|s| s.to_string())
                    .collect(),
                // Same lines in another order (a rule moved).
                reordered: now_lines == then_lines,
            });
        }
        (!changes.is_empty()).then_some(StateDiff(changes))
    }

    /// The normalised text of the section whose command is `name`.
    pub fn section(&self, name: &str) -> Option<&str> {
        self.sections
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, text)| text.as_str())
    }
}

/// The differences between two snapshots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateDiff(Vec<SectionDiff>);

#[derive(Debug, Clone, PartialEq, Eq)]
struct SectionDiff {
    section: String,
    gone: Vec<String>,
    new: Vec<String>,
    reordered: bool,
}

impl fmt::Display for StateDiff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for change in &self.0 {
            writeln!(f, "## {}", change.section)?;
            if change.reordered {
                writeln!(f, "   (same lines, another order)")?;
            }
            for line in &change.gone {
                writeln!(f, "-  {}", line.trim())?;
            }
            for line in &change.new {
                writeln!(f, "+  {}", line.trim())?;
            }
        }
        Ok(())
    }
}

/// Panics with the differences if `after` is not `before`.
pub fn assert_unchanged(before: &KernelState, after: &KernelState, what: &str) {
    if let Some(diff) = after.diff(before) {
        panic!("kernel state changed by {what}:\n{diff}");
    }
}

/// The list of objects `ip -j` prints (or the `nftables` list of `nft
/// -j`) as compact JSON, one object a line, so that a difference reads as
/// whole links, routes, rules and chains.
fn one_object_per_line(value: &Value) -> String {
    let items = match value {
        Value::Array(items) => items,
        Value::Object(map) => match map.get("nftables") {
            Some(Value::Array(items)) => items,
            _ => return format!("{value}\n"),
        },
        _ => return format!("{value}\n"),
    };
    items.iter().map(|item| format!("{item}\n")).collect()
}

/// Zeroes every counter and drops volatile keys, recursively.
fn normalise(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for key in VOLATILE_KEYS {
                map.remove(*key);
            }
            for (key, v) in map.iter_mut() {
                if key == "packets" || key == "bytes" {
                    *v = Value::from(0);
                } else {
                    normalise(v);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(normalise),
        _ => {}
    }
}

/// `*-save` output without its comment lines (timestamps) and with chain
/// counters `[packets:bytes]` removed.
fn normalise_save(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let line = match (line.starts_with(':'), line.find(" [")) {
            (true, Some(i)) => &line[..i],
            _ => line,
        };
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// The names under `/run/netns` starting with `prefix`, sorted.
fn named_netns(prefix: &str) -> Result<Vec<String>> {
    let mut names = Vec::new();
    let entries = match std::fs::read_dir(NETNS_RUN_DIR) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(names),
        Err(err) => return Err(err).with_context(|| format!("cannot list {NETNS_RUN_DIR}")),
    };
    for entry in entries {
        let name = entry
            .with_context(|| format!("cannot list {NETNS_RUN_DIR}"))?
            .file_name()
            .to_string_lossy()
            .into_owned();
        if name.starts_with(prefix) {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_zeroed_at_any_depth() {
        let mut v: Value = serde_json::from_str(
            r#"{"nftables":[{"rule":{"expr":[{"counter":{"packets":5,"bytes":300}}]}}]}"#,
        )
        .unwrap();
        normalise(&mut v);
        assert_eq!(
            v.to_string(),
            r#"{"nftables":[{"rule":{"expr":[{"counter":{"bytes":0,"packets":0}}]}}]}"#
        );
    }

    #[test]
    fn address_lifetimes_are_dropped() {
        let mut v: Value = serde_json::from_str(
            r#"[{"addr_info":[{"local":"fe80::1","valid_life_time":4294967295,"preferred_life_time":10}]}]"#,
        )
        .unwrap();
        normalise(&mut v);
        assert_eq!(v.to_string(), r#"[{"addr_info":[{"local":"fe80::1"}]}]"#);
    }

    #[test]
    fn objects_are_listed_one_a_line() {
        let v: Value =
            serde_json::from_str(r#"{"nftables":[{"table":{"name":"a"}},{"chain":{"name":"b"}}]}"#)
                .unwrap();
        assert_eq!(
            one_object_per_line(&v),
            "{\"table\":{\"name\":\"a\"}}\n{\"chain\":{\"name\":\"b\"}}\n"
        );
        let v: Value = serde_json::from_str(r#"[{"ifname":"lo"},{"ifname":"eth0"}]"#).unwrap();
        assert_eq!(
            one_object_per_line(&v),
            "{\"ifname\":\"lo\"}\n{\"ifname\":\"eth0\"}\n"
        );
    }

    #[test]
    fn save_output_loses_comments_and_chain_counters() {
        let text = "# Generated by iptables-save v1.8.9 on Sun\n*filter\n:INPUT ACCEPT [12:345]\n\
                    -A INPUT -i lo -j ACCEPT\nCOMMIT\n# Completed on Sun\n";
        assert_eq!(
            normalise_save(text),
            "*filter\n:INPUT ACCEPT\n-A INPUT -i lo -j ACCEPT\nCOMMIT\n"
        );
    }
}
