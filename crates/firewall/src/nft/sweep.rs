//! The sweep of what the iptables backend left in iptables-nft's tables,
//! over netlink, for a writer that runs the nftables backend and starts
//! no process.

use super::inspect::prune_table;
use super::wire::{self, chain_attr, msg, rule_attr, MsgBuilder, NfSocket, Reply};
use super::{netlink_error, nfproto, Tx};
use crate::backend::FirewallError;
use crate::backend::{RemoveAllError, Removed, RemovedKind};
use crate::model::{Family, Table};

/// A rule of an iptables-nft table as the leftover sweep sees it.
pub(super) struct IptablesRule {
    chain: String,
    handle: u64,
    /// Its `-m comment --comment` (the xt match iptables-nft writes).
    comment: Option<String>,
    /// The chain it jumps or goes to.
    target: Option<String>,
}

pub(super) fn iptables_rule(r: &Reply) -> Option<IptablesRule> {
    let mut rule = IptablesRule {
        chain: wire::attr_str(&r.attrs, rule_attr::CHAIN)?,
        handle: wire::attr_be64(&r.attrs, rule_attr::HANDLE)?,
        comment: None,
        target: None,
    };
    let list = wire::attr(&r.attrs, rule_attr::EXPRESSIONS).unwrap_or(&[]);
    for (_, e) in wire::attrs(list) {
        let data = wire::attr(e, wire::NFTA_EXPR_DATA).unwrap_or(&[]);
        match wire::attr_str(e, wire::NFTA_EXPR_NAME).as_deref() {
            Some("match") if wire::attr_str(data, 1).as_deref() == Some("comment") => {
                let info = wire::attr(data, 3).unwrap_or(&[]);
                let end = info.iter().position(|&b| b == 0).unwrap_or(info.len());
                rule.comment = Some(String::from_utf8_lossy(&info[..end]).into_owned());
            }
            Some("immediate") => {
                let verdict = wire::attr(data, 2).and_then(|d| wire::attr(d, 2));
                rule.target = verdict.and_then(|v| wire::attr_str(v, 2)); // NFTA_VERDICT_CHAIN
            }
            _ => {}
        }
    }
    Some(rule)
}

/// Removes what the iptables backend leaves in iptables-nft's tables (its
/// hooks, its chains, what its start made there), over netlink: what
/// `IptablesRestore::remove_all(&|_| false)` does with `iptables-save` and
/// `iptables-restore`, for a writer that runs the nftables backend and
/// starts no process. A chain named like patchpanel's that a foreign rule
/// jumps to is left alone, as there.
pub fn remove_iptables_leftovers() -> Result<Vec<Removed>, RemoveAllError> {
    use crate::layout::{HOOK_COMMENT, MADE_HOOK, MADE_TABLE, TABLE_MARKER};
    let mut removed = Vec::new();
    let mut errors = Vec::new();
    let mut sock = match NfSocket::open() {
        Ok(s) => s,
        Err(e) => {
            return Err(RemoveAllError {
                removed,
                errors: vec![netlink_error("open an nf_tables socket", &e)],
            })
        }
    };
    for family in Family::ALL {
        let proto = nfproto(family);
        let chains = match sock.dump(msg::GETCHAIN, proto, &[]) {
            Ok(c) => c,
            Err(e) => {
                errors.push(netlink_error(format!("list {family} chains"), &e));
                continue;
            }
        };
        for table in Table::ALL {
            let tname = table.name();
            let ours: Vec<(String, bool)> = chains
                .iter()
                .filter(|c| wire::attr_str(&c.attrs, chain_attr::TABLE).as_deref() == Some(tname))
                .filter_map(|c| {
                    Some((
                        wire::attr_str(&c.attrs, chain_attr::NAME)?,
                        wire::attr(&c.attrs, chain_attr::HOOK).is_some(),
                    ))
                })
                .collect();
            if ours.is_empty() {
                continue;
            }
            let rules: Vec<IptablesRule> =
                match sock.dump(msg::GETRULE, proto, &[(rule_attr::TABLE, tname)]) {
                    Ok(r) => r.iter().filter_map(iptables_rule).collect(),
                    Err(e) => {
                        errors.push(netlink_error(format!("list {family} {tname} rules"), &e));
                        continue;
                    }
                };
            let is_base = |chain: &str| ours.iter().any(|(n, base)| n == chain && *base);
            let hook_comment = Some(HOOK_COMMENT.to_string());
            let hooks: Vec<&IptablesRule> = rules
                .iter()
                .filter(|r| is_base(&r.chain) && r.comment == hook_comment)
                .collect();
            // Chains a rule that is not patchpanel's jumps to, followed
            // through chains that are themselves such targets.
            let mut foreign: Vec<String> = Vec::new();
            loop {
                let before = foreign.len();
                for r in &rules {
                    let foreign_rule = if is_base(&r.chain) {
                        r.comment != hook_comment
                    } else {
                        !crate::model::is_owned_chain_name(&r.chain) || foreign.contains(&r.chain)
                    };
                    if let Some(t) = r.target.as_ref().filter(|_| foreign_rule) {
                        if !foreign.contains(t) {
                            foreign.push(t.clone());
                        }
                    }
                }
                if foreign.len() == before {
                    break;
                }
            }
            let owned: Vec<&str> = ours
                .iter()
                .filter(|(n, base)| !base && crate::model::is_owned_chain_name(n))
                .map(|(n, _)| n.as_str())
                .filter(|n| {
                    let keep = !crate::layout::is_catalog_chain(n) && foreign.iter().any(|f| f == n);
                    if keep {
                        log::warn!("{family} {table}: leaving chain {n} alone: a rule patchpanel does not own jumps to it");
                    }
                    !keep
                })
                .collect();
            if hooks.is_empty() && owned.is_empty() {
                continue;
            }
            let marks: Vec<&str> = rules
                .iter()
                .filter(|r| r.chain == TABLE_MARKER)
                .filter_map(|r| r.comment.as_deref())
                .collect();
            let made_table = marks.contains(&MADE_TABLE);
            let made_hooks: Vec<String> = marks
                .iter()
                .filter_map(|m| m.strip_prefix(MADE_HOOK))
                .map(str::to_string)
                .collect();
            let mut tx = Tx::new();
            for h in &hooks {
                tx.push(
                    &mut sock,
                    format!("{family} {tname}: delete hook in {}", h.chain),
                    |seq| {
                        let mut m = MsgBuilder::nft(msg::DELRULE, 0, seq, proto);
                        m.str(rule_attr::TABLE, tname);
                        m.str(rule_attr::CHAIN, &h.chain);
                        m.be64(rule_attr::HANDLE, h.handle);
                        m
                    },
                );
            }
            for c in &owned {
                tx.push(&mut sock, format!("{family} {tname}: -F {c}"), |seq| {
                    let mut m = MsgBuilder::nft(msg::DELRULE, 0, seq, proto);
                    m.str(rule_attr::TABLE, tname);
                    m.str(rule_attr::CHAIN, c);
                    m
                });
            }
            for c in &owned {
                tx.push(&mut sock, format!("{family} {tname}: -X {c}"), |seq| {
                    let mut m = MsgBuilder::nft(msg::DELCHAIN, 0, seq, proto);
                    m.str(chain_attr::TABLE, tname);
                    m.str(chain_attr::NAME, c);
                    m
                });
            }
            let last = tx.what.last().map(|(s, _)| *s).unwrap_or(0);
            let mut messages = tx.messages.clone();
            if let Some(m) = messages.last_mut() {
                let flags = u16::from_ne_bytes([m[6], m[7]]) | wire::NLM_F_ACK;
                m[6..8].copy_from_slice(&flags.to_ne_bytes());
            }
            match sock.transact(messages, last) {
                Ok(Ok(_)) => {
                    removed.extend(hooks.iter().map(|h| Removed {
                        family,
                        table,
                        what: RemovedKind::Hook {
                            builtin: h.chain.clone(),
                            spec: format!(
                                "-m comment --comment {HOOK_COMMENT} -j {}",
                                h.target.as_deref().unwrap_or("ACCEPT")
                            ),
                        },
                    }));
                    removed.extend(
                        owned
                            .iter()
                            .filter(|c| **c != TABLE_MARKER)
                            .map(|c| Removed {
                                family,
                                table,
                                what: RemovedKind::Chain {
                                    name: c.to_string(),
                                },
                            }),
                    );
                }
                Ok(Err(errs)) => {
                    let first = &errs[0];
                    errors.push(FirewallError::Transaction {
                        errno: first.errno,
                        message: std::io::Error::from_raw_os_error(first.errno).to_string(),
                        at: tx.describe(first.seq),
                        errors: errs.len(),
                    });
                    continue;
                }
                Err(e) => {
                    errors.push(netlink_error(format!("clean {family} {tname}"), &e));
                    continue;
                }
            }
            if !marks.is_empty() {
                match prune_table(family, tname, TABLE_MARKER, made_table, &made_hooks) {
                    Ok(p) if p.table => removed.push(Removed {
                        family,
                        table,
                        what: RemovedKind::Table,
                    }),
                    Ok(p) => removed.extend(p.base_chains.into_iter().map(|name| Removed {
                        family,
                        table,
                        what: RemovedKind::BaseChain { name },
                    })),
                    Err(e) => errors.push(e),
                }
            }
        }
    }
    if errors.is_empty() {
        Ok(removed)
    } else {
        Err(RemoveAllError { removed, errors })
    }
}
