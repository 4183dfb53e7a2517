//! Reading and pruning nf_tables tables by name: shared by both backends
//! (the iptables backend prunes the iptables-nft tables its start made).

use super::wire::{self, chain_attr, msg, rule_attr, table_attr, MsgBuilder, NfSocket};
use super::{netlink_error, nfproto};
use crate::backend::FirewallError;
use crate::model::Family;

/// The names of the nf_tables tables of `family` (iptables-nft's among
/// them: `iptables-save -t nat` prints a table that does not exist).
pub fn table_names(family: Family) -> Result<Vec<String>, FirewallError> {
    let mut sock = NfSocket::open().map_err(|e| netlink_error("open an nf_tables socket", &e))?;
    let replies = sock
        .dump(msg::GETTABLE, nfproto(family), &[])
        .map_err(|e| netlink_error(format!("list {family} tables"), &e))?;
    Ok(replies
        .iter()
        .filter_map(|r| wire::attr_str(&r.attrs, table_attr::NAME))
        .collect())
}

/// What [`prune_table`] took away.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Pruned {
    /// The whole table.
    pub table: bool,
    /// These idle base chains (when the table stays).
    pub base_chains: Vec<String>,
}

/// The base chains of the nf_tables table `name` of `family`.
pub fn base_chain_names(family: Family, name: &str) -> Result<Vec<String>, FirewallError> {
    let mut sock = NfSocket::open().map_err(|e| netlink_error("open an nf_tables socket", &e))?;
    let chains = sock
        .dump(msg::GETCHAIN, nfproto(family), &[])
        .map_err(|e| netlink_error(format!("list {family} chains"), &e))?;
    Ok(chains
        .iter()
        .filter(|c| wire::attr_str(&c.attrs, chain_attr::TABLE).as_deref() == Some(name))
        .filter(|c| wire::attr(&c.attrs, chain_attr::HOOK).is_some())
        .filter_map(|c| wire::attr_str(&c.attrs, chain_attr::NAME))
        .collect())
}

/// Prunes what patchpanel's start made in the nf_tables table `name` of
/// `family` (an iptables-nft table), as its empty-looking chain `marker`
/// records: the base chains in `made_hooks`, or, with `made_table`, every
/// base chain, go if they are idle (accept policy, no rule: iptables-nft
/// makes them again when it needs them); a made table goes whole, marker
/// and all, if nothing else is in it. The marker stays only when a made
/// table does (for the next stop).
pub fn prune_table(
    family: Family,
    name: &str,
    marker: &str,
    made_table: bool,
    made_hooks: &[String],
) -> Result<Pruned, FirewallError> {
    let mut sock = NfSocket::open().map_err(|e| netlink_error("open an nf_tables socket", &e))?;
    let proto = nfproto(family);
    let what = format!("{family} table {name}");
    let rules = match sock.dump(msg::GETRULE, proto, &[(rule_attr::TABLE, name)]) {
        Ok(r) => r,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(Pruned::default()),
        Err(e) => return Err(netlink_error(format!("list the rules of {what}"), &e)),
    };
    let used: Vec<String> = rules
        .iter()
        .filter_map(|r| wire::attr_str(&r.attrs, rule_attr::CHAIN))
        .filter(|c| c != marker)
        .collect();
    let chains = sock
        .dump(msg::GETCHAIN, proto, &[])
        .map_err(|e| netlink_error(format!("list {family} chains"), &e))?;
    let mut idle = Vec::new();
    let mut others = 0;
    let mut has_marker = false;
    for c in chains
        .iter()
        .filter(|c| wire::attr_str(&c.attrs, chain_attr::TABLE).as_deref() == Some(name))
    {
        let Some(chain) = wire::attr_str(&c.attrs, chain_attr::NAME) else {
            continue;
        };
        if chain == marker {
            has_marker = true;
            continue;
        }
        let is_idle = wire::attr(&c.attrs, chain_attr::HOOK).is_some()
            && wire::attr_be32(&c.attrs, chain_attr::POLICY) == Some(1) // NF_ACCEPT
            && !used.contains(&chain)
            && (made_table || made_hooks.contains(&chain));
        if is_idle {
            idle.push(chain);
        } else {
            others += 1;
        }
    }
    // (message type, chain) of each deletion; no chain: the table.
    let mut deletions: Vec<(u16, Option<&str>)> = Vec::new();
    let mut pruned = Pruned::default();
    if made_table && others == 0 {
        deletions.push((msg::DELTABLE, None));
        pruned.table = true;
    } else {
        deletions.extend(idle.iter().map(|c| (msg::DELCHAIN, Some(c.as_str()))));
        if has_marker && !made_table {
            deletions.push((msg::DELRULE, Some(marker)));
            deletions.push((msg::DELCHAIN, Some(marker)));
        }
        pruned.base_chains = idle.clone();
    }
    if deletions.is_empty() {
        return Ok(pruned);
    }
    let mut messages = Vec::new();
    let mut last = 0;
    for (i, (ty, chain)) in deletions.iter().enumerate() {
        last = sock.next_seq(1);
        let flags = if i + 1 == deletions.len() {
            wire::NLM_F_ACK
        } else {
            0
        };
        let mut m = MsgBuilder::nft(*ty, flags, last, proto);
        match chain {
            None => {
                m.str(table_attr::NAME, name);
            }
            Some(chain) if *ty == msg::DELRULE => {
                m.str(rule_attr::TABLE, name);
                m.str(rule_attr::CHAIN, chain);
            }
            Some(chain) => {
                m.str(chain_attr::TABLE, name);
                m.str(chain_attr::NAME, chain);
            }
        }
        messages.push(m.finish());
    }
    match sock.transact(messages, last) {
        Ok(Ok(_)) => Ok(pruned),
        Ok(Err(errors)) => Err(FirewallError::Transaction {
            errno: errors[0].errno,
            message: std::io::Error::from_raw_os_error(errors[0].errno).to_string(),
            at: format!("prune {what}"),
            errors: errors.len(),
        }),
        Err(e) => Err(netlink_error(format!("prune {what}"), &e)),
    }
}
