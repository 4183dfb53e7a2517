//! The host's own firewall rules in a namespace, with everything of
//! patchpanel's taken out: for checking that patchpanel, while it follows
//! changes other programs make (issue 22), leaves theirs exactly as they
//! wrote them. Compare [`host_rules`] of the daemon's namespace with that
//! of a twin namespace without patchpanel where the same commands ran.

use anyhow::Result;
use patchpanel_firewall::layout::TABLE_MARKER;
use patchpanel_firewall::model::is_owned_chain_name;

use crate::Netns;

/// The iptables tables `iptables-save` shows; `nft` lists the rest.
const IPTABLES_TABLES: [&str; 5] = ["filter", "nat", "mangle", "raw", "security"];

/// `iptables-save`, `ip6tables-save` and `nft list table` of every other
/// table in `netns`, without counters and without patchpanel's objects:
/// its tables (`patchpanel_*`), its rules (comment `patchpanel`: the
/// narrow accepts and the iptables backend's hooks), its chains and the
/// jumps to them (iptables backend). An iptables table left with nothing
/// but accepting built-in chains reads as no table at all (the iptables
/// backend makes the tables it needs).
pub fn host_rules(netns: &Netns) -> Result<String> {
    let mut out = String::new();
    for tool in ["iptables-save", "ip6tables-save"] {
        out.push_str(&format!("## {tool}\n"));
        out.push_str(&host_save(&netns.exec_ok(&[tool])?));
    }
    for line in netns.exec_ok(&["nft", "list", "tables"])?.lines() {
        let mut words = line.split_whitespace();
        let (Some("table"), Some(family), Some(name)) = (words.next(), words.next(), words.next())
        else {
            continue;
        };
        if name.starts_with("patchpanel_")
            || (matches!(family, "ip" | "ip6") && IPTABLES_TABLES.contains(&name))
        {
            continue;
        }
        out.push_str(&format!("## nft {family} {name}\n"));
        out.push_str(&host_nft(
            &netns.exec_ok(&["nft", "list", "table", family, name])?,
        ));
    }
    Ok(out)
}

/// `iptables-save` text without comments, counters and patchpanel's
/// chains and rules.
pub fn host_save(text: &str) -> String {
    let mut out = String::new();
    let mut section: Vec<String> = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        if line.starts_with('*') {
            section = vec![line.to_string()];
            continue;
        }
        if line == "COMMIT" {
            let meaningful = section.iter().skip(1).any(|l| {
                !(l.starts_with(':') && l.ends_with(" ACCEPT") && is_builtin(&l[1..l.len() - 7]))
            });
            if meaningful {
                for l in &section {
                    out.push_str(l);
                    out.push('\n');
                }
                out.push_str("COMMIT\n");
            }
            section.clear();
            continue;
        }
        if let Some(decl) = line.strip_prefix(':') {
            let name = decl.split_whitespace().next().unwrap_or("");
            if is_ours(name) {
                continue;
            }
            // ":CHAIN POLICY [p:b]" -> ":CHAIN POLICY"
            let decl = decl.split(" [").next().unwrap_or(decl);
            section.push(format!(":{decl}"));
            continue;
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        let chain = words
            .iter()
            .position(|w| *w == "-A")
            .and_then(|i| words.get(i + 1));
        let target = words
            .iter()
            .position(|w| *w == "-j" || *w == "-g")
            .and_then(|i| words.get(i + 1));
        let commented = words
            .windows(2)
            .any(|w| w[0] == "--comment" && w[1].trim_matches('"') == "patchpanel");
        if commented || chain.is_some_and(|c| is_ours(c)) || target.is_some_and(|t| is_ours(t)) {
            continue;
        }
        section.push(line.to_string());
    }
    out
}

/// `nft list table` text without counts and without patchpanel's rules.
pub fn host_nft(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        if line.contains("comment \"patchpanel\"") {
            continue;
        }
        let mut words: Vec<&str> = Vec::new();
        let mut it = line.split_whitespace();
        while let Some(w) = it.next() {
            words.push(w);
            if w == "counter" {
                // "counter packets N bytes M" -> "counter"
                let rest: Vec<&str> = it.clone().take(4).collect();
                if rest.len() == 4 && rest[0] == "packets" && rest[2] == "bytes" {
                    it.nth(3);
                }
            }
        }
        out.push_str(&words.join(" "));
        out.push('\n');
    }
    out
}

fn is_builtin(name: &str) -> bool {
    matches!(
        name,
        "PREROUTING" | "INPUT" | "FORWARD" | "OUTPUT" | "POSTROUTING"
    )
}

fn is_ours(chain: &str) -> bool {
    chain == TABLE_MARKER || (!is_builtin(chain) && is_owned_chain_name(chain))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patchpanels_chains_hooks_and_narrow_accepts_are_left_out() {
        let save = "# Generated by iptables-nft-save\n\
                    *filter\n\
                    :INPUT DROP [12:345]\n\
                    :FORWARD ACCEPT [0:0]\n\
                    :OUTPUT ACCEPT [0:0]\n\
                    :guest_forward - [0:0]\n\
                    :ufw-user-input - [0:0]\n\
                    -A INPUT -m comment --comment patchpanel -j patchpanel_INPUT\n\
                    -A INPUT -m mark --mark 0x10/0x10 -m comment --comment patchpanel -j ACCEPT\n\
                    -A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n\
                    -A INPUT -j ufw-user-input\n\
                    -A FORWARD -j guest_forward\n\
                    -A guest_forward -i vmtap0 -j ACCEPT\n\
                    COMMIT\n";
        assert_eq!(
            host_save(save),
            "*filter\n:INPUT DROP\n:FORWARD ACCEPT\n:OUTPUT ACCEPT\n:ufw-user-input -\n\
             -A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n\
             -A INPUT -j ufw-user-input\nCOMMIT\n"
        );
    }

    #[test]
    fn a_table_with_only_accepting_builtins_reads_as_none() {
        let save = "*nat\n:PREROUTING ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n\
                    :patchpanel_POSTROUTING - [0:0]\n\
                    -A POSTROUTING -m comment --comment patchpanel -j patchpanel_POSTROUTING\n\
                    COMMIT\n";
        assert_eq!(host_save(save), "");
        let dropping = "*filter\n:INPUT DROP [0:0]\nCOMMIT\n";
        assert_eq!(host_save(dropping), "*filter\n:INPUT DROP\nCOMMIT\n");
    }

    #[test]
    fn nft_counts_and_narrow_accepts_are_left_out() {
        let listing = "table inet filter {\n\
                       \tchain input {\n\
                       \t\ttype filter hook input priority filter; policy drop;\n\
                       \t\tmeta mark & 0x00000010 == 0x00000010 accept comment \"patchpanel\"\n\
                       \t\tct state established,related counter packets 3 bytes 180 accept\n\
                       \t}\n\
                       }\n";
        assert_eq!(
            host_nft(listing),
            "table inet filter {\nchain input {\ntype filter hook input priority filter; policy drop;\n\
             ct state established,related counter accept\n}\n}\n"
        );
    }
}
