//! Warnings about other firewalls that would drop guest traffic.
//!
//! Patchpanel's hook at position 1 of the iptables built-in chains gets
//! guest traffic past DROP policies and rules in the iptables-nft tables
//! (Docker's FORWARD DROP, ufw). It cannot help against an nftables base
//! chain in another table: netfilter runs every table's base chain on the
//! same hook, and a drop in any of them is final. Nor can it stop firewalld
//! or ufw from rewriting the rule set later. At start the writer reports
//! these as warnings; it changes nothing. The rule set is read over netlink
//! (no `nft` process), into the shape of `nft -j list ruleset`.

use std::fmt;
use std::path::Path;

use serde_json::Value;

/// Hooks that guest traffic crosses: forwarded traffic, and input for
/// traffic from guests to the host (DNS, port rules).
const GUEST_HOOKS: [&str; 4] = ["prerouting", "input", "forward", "postrouting"];

/// Tables iptables-nft owns, where patchpanel's hooks come first.
const IPTABLES_TABLES: [&str; 5] = ["filter", "nat", "mangle", "raw", "security"];

/// Statements that do not restrict which packets a rule applies to.
const UNCONDITIONAL_STATEMENTS: [&str; 3] = ["counter", "log", "limit"];

/// Something on the host that may drop guest traffic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Conflict {
    /// An nftables base chain outside the iptables-nft tables that drops by
    /// policy, or whose last rule drops or rejects everything left.
    DropChain {
        family: String,
        table: String,
        chain: String,
        hook: String,
        /// "policy drop" or "ends in an unconditional drop/reject".
        why: &'static str,
    },
    /// firewalld is running.
    Firewalld,
    /// ufw is enabled.
    Ufw,
}

impl fmt::Display for Conflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Conflict::DropChain {
                family,
                table,
                chain,
                hook,
                why,
            } => write!(
                f,
                "nftables chain '{family} {table} {chain}' (hook {hook}) has {why}: it will drop \
                 guest traffic that patchpanel's iptables rules accept; allow patchpanel's \
                 interfaces there"
            ),
            Conflict::Firewalld => f.write_str(
                "firewalld is running: its nftables table drops forwarded traffic by default and \
                 a reload replaces it; patchpanel puts its narrow accept in firewalld's dropping \
                 chains and checks again after every reload (leave patchpanel's interfaces out of \
                 firewalld's trusted zone: it would also open the host itself to them)",
            ),
            Conflict::Ufw => f.write_str(
                "ufw is enabled: its default forward policy drops guest traffic not accepted by \
                 patchpanel's rules, and 'ufw reload' may reorder the built-in chains",
            ),
        }
    }
}

/// Why the rule set could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ConflictError {
    #[error("cannot read the nf_tables rule set: {0}")]
    Netlink(#[source] std::io::Error),
    #[error("unexpected nft JSON: {0}")]
    Json(String),
}

fn text<'a>(obj: &'a Value, key: &str) -> &'a str {
    obj.get(key).and_then(Value::as_str).unwrap_or("")
}

/// Whether a rule's statements drop or reject every packet that reaches it.
fn drops_everything(rule: &Value) -> bool {
    let Some(exprs) = rule.get("expr").and_then(Value::as_array) else {
        return false;
    };
    let mut verdict = false;
    for expr in exprs {
        let Some(obj) = expr.as_object() else {
            return false;
        };
        for key in obj.keys() {
            match key.as_str() {
                "drop" | "reject" => verdict = true,
                k if UNCONDITIONAL_STATEMENTS.contains(&k) => {}
                _ => return false,
            }
        }
    }
    verdict
}

/// The drop chains in `nft -j list ruleset` output that would affect guest
/// traffic (pure: unit-tested with fixtures).
pub fn drop_chains(json: &str) -> Result<Vec<Conflict>, ConflictError> {
    let root: Value = serde_json::from_str(json).map_err(|e| ConflictError::Json(e.to_string()))?;
    let items = root
        .get("nftables")
        .and_then(Value::as_array)
        .ok_or_else(|| ConflictError::Json("no \"nftables\" array".to_string()))?;

    let is_candidate = |chain: &Value| {
        let family = text(chain, "family");
        let table = text(chain, "table");
        let iptables_table = matches!(family, "ip" | "ip6") && IPTABLES_TABLES.contains(&table);
        matches!(family, "ip" | "ip6" | "inet")
            && !iptables_table
            && GUEST_HOOKS.contains(&text(chain, "hook"))
    };
    let key = |v: &Value, name_key: &str| {
        (
            text(v, "family").to_string(),
            text(v, "table").to_string(),
            text(v, name_key).to_string(),
        )
    };

    let mut conflicts = Vec::new();
    for item in items {
        let Some(chain) = item.get("chain") else {
            continue;
        };
        if !is_candidate(chain) {
            continue;
        }
        let id = key(chain, "name");
        let why = if text(chain, "policy") == "drop" {
            Some("policy drop")
        } else {
            // Rules are listed after their chain, in order.
            let last_rule = items
                .iter()
                .filter_map(|i| i.get("rule"))
                .rfind(|r| key(r, "chain") == id);
            last_rule
                .filter(|r| drops_everything(r))
                .map(|_| "a final rule that drops or rejects everything")
        };
        if let Some(why) = why {
            conflicts.push(Conflict::DropChain {
                family: id.0,
                table: id.1,
                chain: id.2,
                hook: text(chain, "hook").to_string(),
                why,
            });
        }
    }
    Ok(conflicts)
}

/// Whether a ufw configuration says it is enabled (`ENABLED=yes`).
pub fn ufw_enabled(conf: &str) -> bool {
    conf.lines().any(|line| {
        let line = line.trim();
        line.strip_prefix("ENABLED=")
            .map(|v| {
                v.trim_matches(|c| c == '"' || c == '\'')
                    .eq_ignore_ascii_case("yes")
            })
            .unwrap_or(false)
    })
}

/// Whether a process named `name` runs (by `/proc/<pid>/comm`).
fn process_running(name: &str) -> bool {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return false;
    };
    entries.flatten().any(|e| {
        e.file_name()
            .to_string_lossy()
            .bytes()
            .all(|b| b.is_ascii_digit())
            && std::fs::read_to_string(e.path().join("comm"))
                .map(|comm| comm.trim_end() == name)
                .unwrap_or(false)
    })
}

fn family_name(nfproto: u8) -> &'static str {
    match nfproto {
        1 => "inet",
        2 => "ip",
        3 => "arp",
        5 => "netdev",
        7 => "bridge",
        10 => "ip6",
        _ => "unknown",
    }
}

fn hook_name(hooknum: u32) -> &'static str {
    match hooknum {
        0 => "prerouting",
        1 => "input",
        2 => "forward",
        3 => "output",
        4 => "postrouting",
        5 => "ingress",
        _ => "unknown",
    }
}

/// One expression as `nft -j` names it, as far as [`drops_everything`]
/// cares: verdicts by name, every other expression by its own name.
fn expression(e: &[u8]) -> Value {
    use crate::nft::wire;
    let name = wire::attr_str(e, wire::NFTA_EXPR_NAME).unwrap_or_default();
    let data = wire::attr(e, wire::NFTA_EXPR_DATA).unwrap_or(&[]);
    let key = match name.as_str() {
        // NFTA_IMMEDIATE_DREG 0 is the verdict register.
        "immediate" if wire::attr_be32(data, 1) == Some(0) => {
            let code = wire::attr(data, 2) // NFTA_IMMEDIATE_DATA
                .and_then(|d| wire::attr(d, 2)) // NFTA_DATA_VERDICT
                .and_then(|v| wire::attr_be32(v, 1)) // NFTA_VERDICT_CODE
                .map(|c| c as i32);
            match code {
                Some(0) => "drop",
                Some(1) => "accept",
                Some(-1) => "continue",
                Some(-3) => "jump",
                Some(-4) => "goto",
                Some(-5) => "return",
                _ => "verdict",
            }
            .to_string()
        }
        _ => name,
    };
    serde_json::json!({ key: null })
}

/// The whole rule set (every family) over netlink, as the chains and
/// rules of `nft -j list ruleset`.
fn list_ruleset() -> Result<String, ConflictError> {
    use crate::nft::wire::{self, chain_attr, msg, rule_attr, NfSocket};
    let mut sock = NfSocket::open().map_err(ConflictError::Netlink)?;
    let mut items = Vec::new();
    for r in sock
        .dump(msg::GETCHAIN, 0, &[])
        .map_err(ConflictError::Netlink)?
    {
        let mut chain = serde_json::json!({
            "family": family_name(r.family),
            "table": wire::attr_str(&r.attrs, chain_attr::TABLE).unwrap_or_default(),
            "name": wire::attr_str(&r.attrs, chain_attr::NAME).unwrap_or_default(),
        });
        if let Some(hook) = wire::attr(&r.attrs, chain_attr::HOOK) {
            let num = wire::attr_be32(hook, chain_attr::HOOK_NUM).unwrap_or(u32::MAX);
            chain["hook"] = hook_name(num).into();
            let policy = wire::attr_be32(&r.attrs, chain_attr::POLICY);
            chain["policy"] = if policy == Some(0) { "drop" } else { "accept" }.into();
        }
        items.push(serde_json::json!({ "chain": chain }));
    }
    for r in sock
        .dump(msg::GETRULE, 0, &[])
        .map_err(ConflictError::Netlink)?
    {
        let exprs: Vec<Value> = wire::attr(&r.attrs, rule_attr::EXPRESSIONS)
            .map(|list| wire::attrs(list).map(|(_, e)| expression(e)).collect())
            .unwrap_or_default();
        items.push(serde_json::json!({ "rule": {
            "family": family_name(r.family),
            "table": wire::attr_str(&r.attrs, rule_attr::TABLE).unwrap_or_default(),
            "chain": wire::attr_str(&r.attrs, rule_attr::CHAIN).unwrap_or_default(),
            "expr": exprs,
        }}));
    }
    Ok(serde_json::json!({ "nftables": items }).to_string())
}

/// Inspects this machine (the calling thread's network namespace for the
/// rule set). Returns the conflicts found and, separately, what could not
/// be checked.
pub fn inspect() -> (Vec<Conflict>, Vec<ConflictError>) {
    let mut conflicts = Vec::new();
    let mut errors = Vec::new();
    match list_ruleset().and_then(|j| drop_chains(&j)) {
        Ok(found) => conflicts.extend(found),
        Err(e) => errors.push(e),
    }
    if Path::new("/run/firewalld").is_dir() || process_running("firewalld") {
        conflicts.push(Conflict::Firewalld);
    }
    if std::fs::read_to_string("/etc/ufw/ufw.conf").is_ok_and(|c| ufw_enabled(&c)) {
        conflicts.push(Conflict::Ufw);
    }
    (conflicts, errors)
}

/// [`inspect`] as human-readable warnings (what the writer logs at start).
pub fn warnings() -> Vec<String> {
    let (conflicts, errors) = inspect();
    conflicts
        .iter()
        .map(ToString::to_string)
        .chain(
            errors
                .iter()
                .map(|e| format!("cannot check for conflicting firewalls: {e}")),
        )
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A host with Docker (iptables-nft FORWARD DROP: handled by our hook),
    /// a firewalld-like inet table that drops forwarded traffic by policy
    /// and rejects input with a final rule, an output-only drop chain, and
    /// a NAT chain.
    const RULESET: &str = r#"{"nftables": [
      {"metainfo": {"version": "1.0.6", "json_schema_version": 1}},
      {"table": {"family": "ip", "name": "filter", "handle": 1}},
      {"chain": {"family": "ip", "table": "filter", "name": "FORWARD", "handle": 1,
                 "type": "filter", "hook": "forward", "prio": 0, "policy": "drop"}},
      {"table": {"family": "inet", "name": "firewalld", "handle": 2}},
      {"chain": {"family": "inet", "table": "firewalld", "name": "filter_FORWARD", "handle": 1,
                 "type": "filter", "hook": "forward", "prio": 10, "policy": "drop"}},
      {"chain": {"family": "inet", "table": "firewalld", "name": "filter_INPUT", "handle": 2,
                 "type": "filter", "hook": "input", "prio": 10, "policy": "accept"}},
      {"chain": {"family": "inet", "table": "firewalld", "name": "filter_IN_zone", "handle": 3}},
      {"rule": {"family": "inet", "table": "firewalld", "chain": "filter_INPUT", "handle": 4,
                "expr": [{"match": {"op": "in", "left": {"ct": {"key": "state"}},
                                    "right": "established"}}, {"accept": null}]}},
      {"rule": {"family": "inet", "table": "firewalld", "chain": "filter_INPUT", "handle": 5,
                "expr": [{"counter": {"packets": 0, "bytes": 0}},
                         {"reject": {"type": "icmpx", "expr": "admin-prohibited"}}]}},
      {"table": {"family": "ip", "name": "other", "handle": 3}},
      {"chain": {"family": "ip", "table": "other", "name": "out", "handle": 1,
                 "type": "filter", "hook": "output", "prio": 0, "policy": "drop"}},
      {"chain": {"family": "ip", "table": "other", "name": "post", "handle": 2,
                 "type": "nat", "hook": "postrouting", "prio": 100, "policy": "accept"}},
      {"rule": {"family": "ip", "table": "other", "chain": "post", "handle": 3,
                "expr": [{"match": {"op": "==", "left": {"meta": {"key": "oifname"}},
                                    "right": "eth0"}}, {"masquerade": null}]}}
    ]}"#;

    #[test]
    fn foreign_drop_chains_on_guest_hooks_are_reported() {
        let found = drop_chains(RULESET).unwrap();
        assert_eq!(
            found,
            vec![
                Conflict::DropChain {
                    family: "inet".into(),
                    table: "firewalld".into(),
                    chain: "filter_FORWARD".into(),
                    hook: "forward".into(),
                    why: "policy drop",
                },
                Conflict::DropChain {
                    family: "inet".into(),
                    table: "firewalld".into(),
                    chain: "filter_INPUT".into(),
                    hook: "input".into(),
                    why: "a final rule that drops or rejects everything",
                },
            ]
        );
        assert!(found[0].to_string().starts_with(
            "nftables chain 'inet firewalld filter_FORWARD' (hook forward) has policy drop"
        ));
    }

    #[test]
    fn an_empty_ruleset_has_no_conflicts() {
        let json = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}}]}"#;
        assert_eq!(drop_chains(json).unwrap(), vec![]);
    }

    #[test]
    fn a_conditional_drop_as_last_rule_is_not_a_conflict() {
        let json = r#"{"nftables": [
          {"chain": {"family": "inet", "table": "t", "name": "c", "hook": "forward",
                     "type": "filter", "policy": "accept"}},
          {"rule": {"family": "inet", "table": "t", "chain": "c",
                    "expr": [{"match": {"op": "==", "left": {"meta": {"key": "iifname"}},
                                        "right": "eth1"}}, {"drop": null}]}}
        ]}"#;
        assert_eq!(drop_chains(json).unwrap(), vec![]);
    }

    #[test]
    fn malformed_json_is_an_error_not_a_panic() {
        assert!(drop_chains("{").is_err());
        assert!(drop_chains(r#"{"other": []}"#).is_err());
    }

    #[test]
    fn ufw_enabled_reads_the_state_file() {
        assert!(ufw_enabled("# comment\nENABLED=yes\nLOGLEVEL=low\n"));
        assert!(ufw_enabled("ENABLED=\"yes\"\n"));
        assert!(!ufw_enabled("ENABLED=no\n"));
        assert!(!ufw_enabled(""));
    }
}
