//! Living beside the host's own firewall. netfilter runs every table's
//! base chain on a hook, and an accept binds only the base chain it is in:
//! a `policy drop` (Docker's iptables `FORWARD DROP`, ufw's `INPUT DROP`,
//! nftables.service's `inet filter`) or a final unconditional drop in
//! another table drops what patchpanel's chains accepted. Where one is
//! found at a hook patchpanel serves (filter input, forward, output), one
//! narrow rule at the top of that chain lets through what patchpanel
//! accepted (it carries [`ACCEPTED_MARK`](crate::fwmark::ACCEPTED_MARK))
//! and nothing else; where none is needed any more, it goes. The iptables
//! backend's accepts carry no mark: with it, such a chain is reported
//! instead ([`Remedy::ReportOnly`]), as nothing can let guest traffic
//! through it.
//!
//! The narrow accept carries patchpanel's comment: in iptables-nft's
//! `filter` tables as the xt `comment` match iptables-nft itself writes
//! (`iptables -S` shows `-m mark --mark 0x10/0x10 -m comment --comment
//! patchpanel -j ACCEPT`), elsewhere as the rule's userdata (`nft list`
//! shows `comment "patchpanel"`). Nothing else of another table is ever
//! changed.

use super::monitor::NFPROTO_INET;
use super::wire::{self, chain_attr, msg, rule_attr, MsgBuilder, NfSocket, Reply};
use super::{expr, netlink_error, spec_of_userdata, userdata};
use crate::backend::{FirewallError, Removed, RemovedKind};
use crate::layout::HOOK_COMMENT;
use crate::model::{Family, Table};

/// Hooks whose accepts patchpanel needs (`NF_INET_LOCAL_IN`, `FORWARD`,
/// `LOCAL_OUT`).
const HOOKS: [(u32, &str); 3] = [(1, "input"), (2, "forward"), (3, "output")];
/// patchpanel's filter chains run at this priority.
const OUR_PRIORITY: i32 = -1;
const NF_DROP: u32 = 0;

/// A base chain of another table, as coexistence sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct BaseChain {
    family: u8,
    table: String,
    name: String,
    hook: &'static str,
    priority: i32,
    policy_drop: bool,
}

impl BaseChain {
    fn describe(&self) -> String {
        format!(
            "{} {} {} (hook {}, priority {})",
            family_word(self.family),
            self.table,
            self.name,
            self.hook,
            self.priority
        )
    }

    /// iptables-nft's own tables, where the xt form is used.
    fn is_iptables(&self) -> bool {
        self.table == "filter"
            && (self.family == wire::NFPROTO_IPV4 || self.family == wire::NFPROTO_IPV6)
    }
}

fn family_word(family: u8) -> &'static str {
    match family {
        NFPROTO_INET => "inet",
        wire::NFPROTO_IPV4 => "ip",
        wire::NFPROTO_IPV6 => "ip6",
        _ => "?",
    }
}

/// What one pass changed and what it could not.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CoexistReport {
    /// "ip filter FORWARD (hook forward, priority 0): policy drop".
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub problems: Vec<String>,
}

impl CoexistReport {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.problems.is_empty()
    }
}

impl std::fmt::Display for CoexistReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        if !self.added.is_empty() {
            parts.push(format!("narrow accept added in {}", self.added.join("; ")));
        }
        if !self.removed.is_empty() {
            parts.push(format!(
                "narrow accept removed from {} (no longer dropping)",
                self.removed.join("; ")
            ));
        }
        if !self.problems.is_empty() {
            parts.push(self.problems.join("; "));
        }
        f.write_str(&parts.join("; "))
    }
}

/// What can be done about another table's base chain that drops what
/// patchpanel accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Remedy {
    /// patchpanel's accepts carry [`ACCEPTED_MARK`](crate::fwmark::ACCEPTED_MARK)
    /// (the nftables backend): a narrow accept on the mark lets them
    /// through.
    NarrowAccept,
    /// They do not (the iptables backend accepts with plain `-j ACCEPT`
    /// in iptables' own chains): a narrow accept elsewhere would let
    /// nothing through, so none is added (and any found is removed), and
    /// each such chain is reported as dropping guest traffic.
    ReportOnly,
}

/// Brings the narrow accepts in line with the host's rule set: one at the
/// top of every base chain (of a table `skip` does not name) that would
/// drop what patchpanel accepts, none elsewhere. For the nftables backend
/// `skip` names patchpanel's own tables; for the iptables backend also
/// iptables-nft's `filter` tables, where patchpanel's jump at position 1
/// accepts before any of their drops, and `remedy` is
/// [`Remedy::ReportOnly`].
pub fn reconcile(
    skip: &dyn Fn(u8, &str) -> bool,
    remedy: Remedy,
) -> Result<CoexistReport, FirewallError> {
    let mut sock = NfSocket::open().map_err(|e| netlink_error("open an nf_tables socket", &e))?;
    let mut report = CoexistReport::default();
    for chain in base_chains(&mut sock)? {
        if skip(chain.family, &chain.table) {
            continue;
        }
        let rules = match chain_rules(&mut sock, &chain) {
            Ok(r) => r,
            // Gone between the two dumps: the next change is announced.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
            Err(e) => {
                report
                    .problems
                    .push(format!("cannot read {}: {e}", chain.describe()));
                continue;
            }
        };
        let ours: Vec<u64> = rules
            .iter()
            .filter(|r| is_any_narrow_accept(r))
            .filter_map(|r| wire::attr_be64(&r.attrs, rule_attr::HANDLE))
            .collect();
        let why = if chain.policy_drop {
            Some("policy drop")
        } else if rules
            .iter()
            .any(|r| !is_any_narrow_accept(r) && drops_everything(r))
        {
            Some("an unconditional drop or reject")
        } else {
            None
        };
        if let (Some(why), Remedy::ReportOnly) = (why, remedy) {
            report.problems.push(format!(
                "{} has {why}: it drops the guest traffic and the port rules patchpanel accepts, as the iptables backend does not mark what it accepts for a narrow accept (firewall_backend = \"nftables\" does)",
                chain.describe()
            ));
        }
        let why = why.filter(|_| remedy == Remedy::NarrowAccept);
        match (why, ours.len()) {
            (Some(why), 0) => match add_narrow_accept(&mut sock, &chain) {
                Ok(()) => {
                    report.added.push(format!("{}: {why}", chain.describe()));
                    if chain.priority < OUR_PRIORITY {
                        report.problems.push(format!(
                            "{} runs before patchpanel's chains (priority {} < {OUR_PRIORITY}): it sees no accept mark yet, and drops guest traffic anyway",
                            chain.describe(),
                            chain.priority
                        ));
                    }
                }
                Err(e) => report.problems.push(format!(
                    "{} has {why}, and the narrow accept could not be added ({e}): guest traffic there will be dropped",
                    chain.describe()
                )),
            },
            (Some(_), 1) => {}
            (Some(_), _) => {
                for handle in &ours[1..] {
                    if let Err(e) = delete_rule(&mut sock, &chain, *handle) {
                        report.problems.push(format!("{}: {e}", chain.describe()));
                    }
                }
            }
            (None, 0) => {}
            (None, _) => {
                for handle in &ours {
                    if let Err(e) = delete_rule(&mut sock, &chain, *handle) {
                        report.problems.push(format!("{}: {e}", chain.describe()));
                    }
                }
                report.removed.push(chain.describe());
            }
        }
    }
    Ok(report)
}

/// Removes every narrow accept from every base chain (at stop).
pub(super) fn remove_narrow_accepts(sock: &mut NfSocket) -> Vec<Removed> {
    let mut removed = Vec::new();
    let chains = match base_chains(sock) {
        Ok(c) => c,
        Err(e) => {
            log::warn!("cannot list the base chains to remove the narrow accepts: {e}");
            return removed;
        }
    };
    for chain in chains {
        let rules = match chain_rules(sock, &chain) {
            Ok(r) => r,
            Err(_) => continue,
        };
        for r in rules.iter().filter(|r| is_any_narrow_accept(r)) {
            let Some(handle) = wire::attr_be64(&r.attrs, rule_attr::HANDLE) else {
                continue;
            };
            match delete_rule(sock, &chain, handle) {
                Ok(()) => {
                    let family = match chain.family {
                        wire::NFPROTO_IPV6 => Family::V6,
                        _ => Family::V4,
                    };
                    removed.push(Removed {
                        family,
                        table: Table::Filter,
                        what: RemovedKind::Hook {
                            builtin: format!(
                                "{} {} {}",
                                family_word(chain.family),
                                chain.table,
                                chain.name
                            ),
                            spec: format!(
                                "-m mark --mark {m:#x}/{m:#x} -m comment --comment patchpanel -j ACCEPT",
                                m = crate::fwmark::ACCEPTED_MARK
                            ),
                        },
                    });
                }
                Err(e) => log::warn!("{}: cannot remove the narrow accept: {e}", chain.describe()),
            }
        }
    }
    removed
}

/// Every filter base chain at a hook patchpanel serves, of every table of
/// the ip, ip6 and inet families.
fn base_chains(sock: &mut NfSocket) -> Result<Vec<BaseChain>, FirewallError> {
    let replies = sock
        .dump(msg::GETCHAIN, 0, &[])
        .map_err(|e| netlink_error("list the chains of every table", &e))?;
    let mut out = Vec::new();
    for r in &replies {
        if ![wire::NFPROTO_IPV4, wire::NFPROTO_IPV6, NFPROTO_INET].contains(&r.family) {
            continue;
        }
        let Some(hook) = wire::attr(&r.attrs, chain_attr::HOOK) else {
            continue;
        };
        if wire::attr_str(&r.attrs, chain_attr::TYPE).as_deref() != Some("filter") {
            continue;
        }
        let Some(hooknum) = wire::attr_be32(hook, chain_attr::HOOK_NUM) else {
            continue;
        };
        let Some(&(_, hook_name)) = HOOKS.iter().find(|(n, _)| *n == hooknum) else {
            continue;
        };
        let (Some(table), Some(name)) = (
            wire::attr_str(&r.attrs, chain_attr::TABLE),
            wire::attr_str(&r.attrs, chain_attr::NAME),
        ) else {
            continue;
        };
        out.push(BaseChain {
            family: r.family,
            table,
            name,
            hook: hook_name,
            priority: wire::attr_be32(hook, chain_attr::HOOK_PRIORITY).unwrap_or(0) as i32,
            policy_drop: wire::attr_be32(&r.attrs, chain_attr::POLICY) == Some(NF_DROP),
        });
    }
    Ok(out)
}

fn chain_rules(sock: &mut NfSocket, chain: &BaseChain) -> std::io::Result<Vec<Reply>> {
    sock.dump(
        msg::GETRULE,
        chain.family,
        &[
            (rule_attr::TABLE, chain.table.as_str()),
            (rule_attr::CHAIN, chain.name.as_str()),
        ],
    )
}

/// The expressions of a rule, by name with their data.
fn exprs(r: &Reply) -> Vec<(String, &[u8])> {
    let Some(list) = wire::attr(&r.attrs, rule_attr::EXPRESSIONS) else {
        return Vec::new();
    };
    wire::attrs(list)
        .map(|(_, e)| {
            (
                wire::attr_str(e, wire::NFTA_EXPR_NAME).unwrap_or_default(),
                wire::attr(e, wire::NFTA_EXPR_DATA).unwrap_or(&[]),
            )
        })
        .collect()
}

/// The verdict code of an `immediate` expression's data, if it is one.
fn verdict_code(data: &[u8]) -> Option<u32> {
    wire::attr(data, 2) // NFTA_IMMEDIATE_DATA
        .and_then(|d| wire::attr(d, 2)) // NFTA_DATA_VERDICT
        .and_then(|v| wire::attr_be32(v, 1)) // NFTA_VERDICT_CODE
}

/// The xt comment of a `match` expression, if it is the comment match.
fn xt_comment(data: &[u8]) -> Option<String> {
    if wire::attr_str(data, 1).as_deref() != Some("comment") {
        return None;
    }
    let info = wire::attr(data, 3).unwrap_or(&[]);
    let end = info.iter().position(|&b| b == 0).unwrap_or(info.len());
    Some(String::from_utf8_lossy(&info[..end]).into_owned())
}

/// Whether a rule is patchpanel's narrow accept, in either form: it
/// accepts, and its comment (xt or userdata) is patchpanel's.
pub(super) fn is_any_narrow_accept(r: &Reply) -> bool {
    let e = exprs(r);
    let accepts = e
        .iter()
        .any(|(n, d)| n == "immediate" && verdict_code(d) == Some(1));
    let xt = e
        .iter()
        .any(|(n, d)| n == "match" && xt_comment(d).as_deref() == Some(HOOK_COMMENT));
    let udata = wire::attr(&r.attrs, rule_attr::USERDATA)
        .and_then(spec_of_userdata)
        .is_some_and(|c| c == HOOK_COMMENT);
    // It compares the accept mark: a host rule of its own that happens to
    // carry the same comment is not taken for ours (and never deleted).
    let mark = crate::fwmark::ACCEPTED_MARK.to_ne_bytes();
    let compares_mark = e.iter().any(|(n, d)| {
        n == "cmp"
            && wire::attr(d, 3) // NFTA_CMP_DATA
                .and_then(|v| wire::attr(v, 1)) // NFTA_DATA_VALUE
                == Some(&mark[..])
    });
    accepts && compares_mark && (xt || udata)
}

/// The xt narrow accept only (what the iptables leftover sweep knows).
pub(super) fn is_narrow_accept(r: &Reply) -> bool {
    is_any_narrow_accept(r)
        && exprs(r)
            .iter()
            .any(|(n, d)| n == "match" && xt_comment(d).is_some())
}

/// Whether a rule drops or rejects every packet that reaches it: nothing
/// but counters, logs, limits and comments before a drop verdict or a
/// reject.
fn drops_everything(r: &Reply) -> bool {
    let e = exprs(r);
    let Some(((last, data), rest)) = e.split_last() else {
        return false;
    };
    let unconditional = rest.iter().all(|(n, d)| match n.as_str() {
        "counter" | "log" | "limit" => true,
        "match" => xt_comment(d).is_some(),
        _ => false,
    });
    let final_drop = match last.as_str() {
        "immediate" => verdict_code(data) == Some(NF_DROP),
        "reject" => true,
        // iptables-nft's `-j REJECT` through nft_compat.
        "target" => matches!(wire::attr_str(data, 1).as_deref(), Some("REJECT" | "DROP")),
        _ => false,
    };
    unconditional && final_drop
}

fn add_narrow_accept(sock: &mut NfSocket, chain: &BaseChain) -> Result<(), String> {
    let seq = sock.next_seq(1);
    // At the top of the chain (no NLM_F_APPEND).
    let mut m = MsgBuilder::nft(
        msg::NEWRULE,
        wire::NLM_F_CREATE | wire::NLM_F_ACK,
        seq,
        chain.family,
    );
    m.str(rule_attr::TABLE, &chain.table);
    m.str(rule_attr::CHAIN, &chain.name);
    let n = m.nest(rule_attr::EXPRESSIONS);
    if chain.is_iptables() {
        expr::compile_narrow_accept(&mut m, crate::fwmark::ACCEPTED_MARK, HOOK_COMMENT);
        m.end(n);
    } else {
        expr::compile_native_narrow_accept(&mut m, crate::fwmark::ACCEPTED_MARK);
        m.end(n);
        m.attr(rule_attr::USERDATA, &userdata(HOOK_COMMENT));
    }
    match sock.transact(vec![m.finish()], seq) {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(errors)) => Err(std::io::Error::from_raw_os_error(errors[0].errno).to_string()),
        Err(e) => Err(e.to_string()),
    }
}

fn delete_rule(sock: &mut NfSocket, chain: &BaseChain, handle: u64) -> Result<(), String> {
    let seq = sock.next_seq(1);
    let mut m = MsgBuilder::nft(msg::DELRULE, wire::NLM_F_ACK, seq, chain.family);
    m.str(rule_attr::TABLE, &chain.table);
    m.str(rule_attr::CHAIN, &chain.name);
    m.be64(rule_attr::HANDLE, handle);
    match sock.transact(vec![m.finish()], seq) {
        Ok(Ok(_)) => Ok(()),
        // Someone removed it first.
        Ok(Err(errors)) if errors[0].errno == libc::ENOENT => Ok(()),
        Ok(Err(errors)) => Err(std::io::Error::from_raw_os_error(errors[0].errno).to_string()),
        Err(e) => Err(e.to_string()),
    }
}

/// Whether `table` of `family` is one of patchpanel's own nf_tables tables.
pub fn is_patchpanel_table(family: u8, table: &str) -> bool {
    (family == wire::NFPROTO_IPV4 || family == wire::NFPROTO_IPV6)
        && Table::ALL.iter().any(|t| super::table_name(*t) == table)
}
