//! Living beside the host's own firewall: an accept in patchpanel's
//! tables binds only their own base chains, so where another table drops
//! at the same hook (iptables' filter chains with policy DROP, as Docker
//! sets them) one narrow, marked accept at the top of that chain lets
//! through what patchpanel accepted.

use super::wire::{self, chain_attr, msg, rule_attr, MsgBuilder, NfSocket, Reply};
use super::{expr, nfproto, Nftables};
use crate::backend::{Removed, RemovedKind};
use crate::model::{Family, Table};

impl Nftables {
    /// iptables' own filter chains with a DROP policy (Docker sets
    /// `FORWARD DROP`) drop what patchpanel's chains accepted: an accept
    /// binds only its own base chain. Where one is found, one narrow rule
    /// at its top lets through what patchpanel accepted
    /// ([`ACCEPTED_MARK`](crate::fwmark::ACCEPTED_MARK)); it carries
    /// patchpanel's comment, so the iptables cleanup removes it. Run at
    /// setup only: a policy set later is not seen until the next start.
    pub(super) fn coexist_with_iptables_policies(&mut self) {
        for family in Family::ALL {
            let replies = match self.sock.dump(
                msg::GETCHAIN,
                nfproto(family),
                &[(chain_attr::TABLE, "filter")],
            ) {
                Ok(r) => r,
                Err(_) => continue, // no iptables filter table: nothing drops
            };
            for r in &replies {
                let Some(name) = wire::attr_str(&r.attrs, chain_attr::NAME) else {
                    continue;
                };
                if !["INPUT", "FORWARD", "OUTPUT"].contains(&name.as_str())
                    || wire::attr_be32(&r.attrs, chain_attr::POLICY) != Some(0)
                {
                    continue;
                }
                match narrow_accept(&mut self.sock, family, &name) {
                    Ok(true) => log::info!(
                        "{family} iptables filter {name} has policy DROP: added `-m mark --mark {m:#x}/{m:#x} -m comment --comment patchpanel -j ACCEPT` at its top so that what patchpanel accepts gets through",
                        m = crate::fwmark::ACCEPTED_MARK
                    ),
                    Ok(false) => {}
                    Err(e) => log::warn!(
                        "{family} iptables filter {name} has policy DROP and the accept for patchpanel's traffic could not be added ({e}): guest traffic there will be dropped"
                    ),
                }
            }
        }
    }
}

/// iptables-nft's built-in filter chains where a DROP policy gets a
/// narrow accept.
const NARROW_ACCEPT_CHAINS: [&str; 3] = ["INPUT", "FORWARD", "OUTPUT"];

/// Whether a rule of iptables-nft's filter table is a narrow accept: its
/// xt comment is patchpanel's and it accepts (patchpanel's own hooks of the
/// iptables backend jump instead).
pub(super) fn is_narrow_accept(r: &Reply) -> bool {
    let Some(list) = wire::attr(&r.attrs, rule_attr::EXPRESSIONS) else {
        return false;
    };
    let mut commented = false;
    let mut accepts = false;
    for (_, e) in wire::attrs(list) {
        let name = wire::attr_str(e, wire::NFTA_EXPR_NAME);
        let data = wire::attr(e, wire::NFTA_EXPR_DATA).unwrap_or(&[]);
        match name.as_deref() {
            Some("match") if wire::attr_str(data, 1).as_deref() == Some("comment") => {
                let info = wire::attr(data, 3).unwrap_or(&[]);
                let end = info.iter().position(|&b| b == 0).unwrap_or(info.len());
                commented = &info[..end] == crate::layout::HOOK_COMMENT.as_bytes();
            }
            Some("immediate") => {
                accepts = wire::attr(data, 2) // NFTA_IMMEDIATE_DATA
                    .and_then(|d| wire::attr(d, 2)) // NFTA_DATA_VERDICT
                    .and_then(|v| wire::attr_be32(v, 1)) // NFTA_VERDICT_CODE
                    == Some(1); // NF_ACCEPT
            }
            _ => {}
        }
    }
    commented && accepts
}

/// Handles of the narrow accepts in iptables-nft's filter `chain`.
fn narrow_accept_handles(
    sock: &mut NfSocket,
    family: Family,
    chain: &str,
) -> std::io::Result<Vec<u64>> {
    let filter = [(rule_attr::TABLE, "filter"), (rule_attr::CHAIN, chain)];
    let replies = match sock.dump(msg::GETRULE, nfproto(family), &filter) {
        Ok(r) => r,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    Ok(replies
        .iter()
        .filter(|r| is_narrow_accept(r))
        .filter_map(|r| wire::attr_be64(&r.attrs, rule_attr::HANDLE))
        .collect())
}

/// The narrow accept, as iptables-nft itself writes `-m mark --mark M/M -m
/// comment --comment patchpanel -j ACCEPT` (so `iptables -S` shows it so).
fn narrow_accept_message(seq: u32, family: Family, chain: &str) -> Vec<u8> {
    // At the top of the chain (no NLM_F_APPEND).
    let mut m = MsgBuilder::nft(
        msg::NEWRULE,
        wire::NLM_F_CREATE | wire::NLM_F_ACK,
        seq,
        nfproto(family),
    );
    m.str(rule_attr::TABLE, "filter");
    m.str(rule_attr::CHAIN, chain);
    let n = m.nest(rule_attr::EXPRESSIONS);
    expr::compile_narrow_accept(
        &mut m,
        crate::fwmark::ACCEPTED_MARK,
        crate::layout::HOOK_COMMENT,
    );
    m.end(n);
    m.finish()
}

/// Adds the narrow accept to iptables' filter `chain` unless it is there;
/// true if it was added. Over netlink, no process.
fn narrow_accept(sock: &mut NfSocket, family: Family, chain: &str) -> Result<bool, String> {
    if !narrow_accept_handles(sock, family, chain)
        .map_err(|e| e.to_string())?
        .is_empty()
    {
        return Ok(false);
    }
    let seq = sock.next_seq(1);
    let message = narrow_accept_message(seq, family, chain);
    match sock.transact(vec![message], seq) {
        Ok(Ok(_)) => Ok(true),
        Ok(Err(errors)) => Err(std::io::Error::from_raw_os_error(errors[0].errno).to_string()),
        Err(e) => Err(e.to_string()),
    }
}

/// Removes the narrow accepts from iptables' filter chains; what it
/// removed.
pub(super) fn remove_narrow_accepts(sock: &mut NfSocket) -> Vec<Removed> {
    let mut removed = Vec::new();
    for family in Family::ALL {
        for chain in NARROW_ACCEPT_CHAINS {
            let handles = match narrow_accept_handles(sock, family, chain) {
                Ok(h) => h,
                Err(e) => {
                    log::warn!("{family} iptables filter {chain}: cannot list its rules: {e}");
                    continue;
                }
            };
            for handle in handles {
                let seq = sock.next_seq(1);
                let mut m = MsgBuilder::nft(msg::DELRULE, wire::NLM_F_ACK, seq, nfproto(family));
                m.str(rule_attr::TABLE, "filter");
                m.str(rule_attr::CHAIN, chain);
                m.be64(rule_attr::HANDLE, handle);
                match sock.transact(vec![m.finish()], seq) {
                    Ok(Ok(_)) => removed.push(Removed {
                        family,
                        table: Table::Filter,
                        what: RemovedKind::Hook {
                            builtin: chain.to_string(),
                            spec: format!(
                                "-m mark --mark {m:#x}/{m:#x} -m comment --comment patchpanel -j ACCEPT",
                                m = crate::fwmark::ACCEPTED_MARK
                            ),
                        },
                    }),
                    Ok(Err(errors)) => log::warn!(
                        "{family} iptables filter {chain}: cannot remove the narrow accept: {}",
                        std::io::Error::from_raw_os_error(errors[0].errno)
                    ),
                    Err(e) => log::warn!(
                        "{family} iptables filter {chain}: cannot remove the narrow accept: {e}"
                    ),
                }
            }
        }
    }
    removed
}
