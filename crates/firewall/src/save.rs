//! Reading `iptables-save` output: which chains exist, which rules each
//! holds, which of them are patchpanel's hooks.

use std::collections::BTreeSet;

use crate::layout::HOOK_COMMENT;
use crate::model::{is_owned_chain_name, BuiltinChain};

/// One `*table` block of `iptables-save` output.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SavedTable {
    pub name: String,
    pub chains: Vec<SavedChain>,
    /// In save order (per chain, that is rule position order).
    pub rules: Vec<SavedRule>,
}

/// A `:name POLICY [p:b]` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedChain {
    pub name: String,
    /// `None` for a user chain (`-`).
    pub policy: Option<String>,
}

/// A `-A chain spec` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedRule {
    pub chain: String,
    /// Everything after `-A <chain> ` (may be empty).
    pub spec: String,
}

impl SavedTable {
    pub fn has_chain(&self, name: &str) -> bool {
        self.chains.iter().any(|c| c.name == name)
    }

    /// The rules of `chain`, in position order.
    pub fn rules_of<'a>(&'a self, chain: &'a str) -> impl Iterator<Item = &'a SavedRule> + 'a {
        self.rules.iter().filter(move |r| r.chain == chain)
    }

    /// Patchpanel's hooks in `builtin`: (0-based position, spec).
    pub fn hooks_in(&self, builtin: BuiltinChain) -> Vec<(usize, &str)> {
        self.rules_of(builtin.name())
            .enumerate()
            .filter(|(_, r)| has_hook_comment(&r.spec))
            .map(|(i, r)| (i, r.spec.as_str()))
            .collect()
    }
}

impl SavedTable {
    /// Chains jumped to (`-j`/`-g`) by rules patchpanel does not own: rules
    /// in built-in chains without its comment, in chains whose names are
    /// not patchpanel's, and (transitively) in chains such rules jump to.
    pub fn foreign_jump_targets(&self) -> BTreeSet<&str> {
        let mut foreign: BTreeSet<&str> = BTreeSet::new();
        loop {
            let before = foreign.len();
            for rule in &self.rules {
                let foreign_rule = if BuiltinChain::from_name(&rule.chain).is_some() {
                    !has_hook_comment(&rule.spec)
                } else {
                    !is_owned_chain_name(&rule.chain) || foreign.contains(rule.chain.as_str())
                };
                if foreign_rule {
                    if let Some(target) = jump_target(&rule.spec) {
                        foreign.insert(target);
                    }
                }
            }
            if foreign.len() == before {
                return foreign;
            }
        }
    }
}

/// The chain a rule spec jumps or goes to, if any.
pub fn jump_target(spec: &str) -> Option<&str> {
    let mut words = spec.split_whitespace();
    while let Some(w) = words.next() {
        if w == "-j" || w == "-g" || w == "--jump" || w == "--goto" {
            return words.next();
        }
    }
    None
}

/// Parses `iptables-save` output (any number of tables).
pub fn parse(text: &str) -> Vec<SavedTable> {
    let mut tables = Vec::new();
    let mut current: Option<SavedTable> = None;
    for line in text.lines() {
        let line = line.trim_end();
        if let Some(name) = line.strip_prefix('*') {
            if let Some(t) = current.take() {
                tables.push(t);
            }
            current = Some(SavedTable {
                name: name.to_string(),
                ..SavedTable::default()
            });
        } else if line == "COMMIT" {
            if let Some(t) = current.take() {
                tables.push(t);
            }
        } else if let Some(rest) = line.strip_prefix(':') {
            if let Some(t) = current.as_mut() {
                let mut words = rest.split_whitespace();
                if let Some(name) = words.next() {
                    let policy = words.next().filter(|p| *p != "-").map(str::to_string);
                    t.chains.push(SavedChain {
                        name: name.to_string(),
                        policy,
                    });
                }
            }
        } else if let Some(rest) = line.strip_prefix("-A ") {
            if let Some(t) = current.as_mut() {
                let (chain, spec) = rest.split_once(' ').unwrap_or((rest, ""));
                t.rules.push(SavedRule {
                    chain: chain.to_string(),
                    spec: spec.to_string(),
                });
            }
        }
    }
    if let Some(t) = current {
        tables.push(t);
    }
    tables
}

/// Whether a rule spec carries `-m comment --comment patchpanel` (quoted or
/// not).
pub fn has_hook_comment(spec: &str) -> bool {
    let words: Vec<&str> = spec.split_whitespace().collect();
    words.windows(2).any(|w| {
        w[0] == "--comment" && (w[1] == HOOK_COMMENT || w[1].trim_matches('"') == HOOK_COMMENT)
    })
}

/// Save output without `#` lines and with every `[packets:bytes]` counter
/// removed: two dumps of the same rule set compare equal.
pub fn normalize(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let line = match (line.starts_with(':'), line.rfind(" [")) {
            (true, Some(i)) if line.ends_with(']') => &line[..i],
            _ => line,
        };
        out.push_str(line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const DUMP: &str = "\
# Generated by iptables-nft-save v1.8.9 (nf_tables) on Fri Nov 27 03:29:06 2026
*mangle
:PREROUTING ACCEPT [12:3400]
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:foo - [0:0]
-A PREROUTING -s 10.9.9.9/32 -j DROP
-A PREROUTING -m comment --comment patchpanel -j patchpanel_PREROUTING
-A PREROUTING -m comment --comment \"patchpanel\" -j patchpanel_PREROUTING
-A foo
COMMIT
# Completed on Fri Nov 27 03:29:06 2026
*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
COMMIT
";

    #[test]
    fn parse_reads_tables_chains_policies_and_rules() {
        let tables = parse(DUMP);
        assert_eq!(tables.len(), 2);
        let mangle = &tables[0];
        assert_eq!(mangle.name, "mangle");
        assert!(mangle.has_chain("foo"));
        assert_eq!(mangle.chains[0].policy.as_deref(), Some("ACCEPT"));
        assert_eq!(mangle.chains[5].policy, None);
        assert_eq!(mangle.rules_of("foo").next().unwrap().spec, "");
        assert_eq!(tables[1].chains[1].policy.as_deref(), Some("DROP"));
    }

    #[test]
    fn hooks_are_found_by_comment_with_their_positions() {
        let tables = parse(DUMP);
        let hooks = tables[0].hooks_in(BuiltinChain::Prerouting);
        assert_eq!(hooks.len(), 2);
        assert_eq!(hooks[0].0, 1);
        assert_eq!(
            hooks[0].1,
            "-m comment --comment patchpanel -j patchpanel_PREROUTING"
        );
        assert_eq!(hooks[1].0, 2);
        assert!(!has_hook_comment("-m comment --comment patchpanel2 -j X"));
    }

    #[test]
    fn foreign_jump_targets_ignore_patchpanel_rules() {
        let text = "*mangle\n:PREROUTING ACCEPT [0:0]\n:PREROUTING_direct - [0:0]\n\
                    :patchpanel_PREROUTING - [0:0]\n:PREROUTING_eth0 - [0:0]\n\
                    -A PREROUTING -m comment --comment patchpanel -j patchpanel_PREROUTING\n\
                    -A PREROUTING -j PREROUTING_direct\n\
                    -A patchpanel_PREROUTING -i eth0 -j PREROUTING_eth0\n\
                    -A PREROUTING_direct -g PREROUTING_ZONES\n\
                    -A PREROUTING_ZONES -j HOSTCHAIN\nCOMMIT\n";
        let tables = parse(text);
        let targets: Vec<&str> = tables[0].foreign_jump_targets().into_iter().collect();
        assert_eq!(
            targets,
            ["HOSTCHAIN", "PREROUTING_ZONES", "PREROUTING_direct"]
        );
        assert_eq!(jump_target("-i eth0 -j ACCEPT"), Some("ACCEPT"));
        assert_eq!(jump_target("-m mark --mark 0x1/0x1"), None);
    }

    #[test]
    fn normalize_drops_comments_and_counters() {
        let text = normalize(DUMP);
        assert!(text.starts_with("*mangle\n:PREROUTING ACCEPT\n"));
        assert!(!text.contains('#'));
        assert!(!text.contains("[0:0]"));
        assert!(text.contains(":foo -\n"));
    }
}
