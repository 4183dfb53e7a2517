//! The native nf_tables backend: patchpanel's own tables, one netlink
//! transaction per operation, no process spawned.
//!
//! Each iptables table of the model is an nf_tables table of patchpanel's
//! in both families: `ip patchpanel_filter`, `ip patchpanel_nat`,
//! `ip patchpanel_mangle` and the same three in `ip6`. Chains keep their
//! model names. A hook is a base chain named after the built-in chain
//! (`FORWARD`...) at iptables' hook and priority, whose one rule jumps to
//! the root chain (`patchpanel_FORWARD`); the built-in chains of
//! iptables-nft are never touched. A whole [`Batch`] (both families, all
//! tables) is one transaction: the kernel applies all of it or nothing.
//!
//! Every rule carries its iptables spec (`-i eth0 -j ACCEPT`) as its
//! comment (nft's userdata), so `nft list` shows what each rule means,
//! `Delete` finds its rule, and counters and dumps read back in the same
//! words as the iptables backend. Rule handles of the chains an operation
//! deletes from are cached (learned from the kernel's echo of each new
//! rule), so deleting the 1000th rule costs what deleting the first does.
//!
//! Port rules (ACCESS, FORWARDING) are not rules here but elements of sets
//! and maps looked up by one rule each ([`sets`]): the kernel copies and
//! validates a whole chain at every commit that changes its rules, so a
//! chain of 1000 rules made the 1000th cost 15 times the first.

mod accounting;
pub mod coexist;
mod dump;
pub mod expr;
mod inspect;
pub mod monitor;
pub mod objects;
mod rebuild;
pub mod sets;
mod sweep;
pub mod wire;

pub use dump::{fuzz_replies, DumpedChain, DumpedRule};
pub use inspect::{base_chain_names, prune_table, table_names, Pruned};
pub use sweep::remove_iptables_leftovers;

use accounting::accounting_counter;
use coexist::{is_narrow_accept, remove_narrow_accepts};
use dump::{counters_of, parse_rule};
use sweep::iptables_rule;

use std::collections::{HashMap, HashSet, VecDeque};

use crate::backend::{
    FirewallBackend, FirewallError, RemoveAllError, Removed, RemovedKind, SetupReport,
};
use crate::counters::{counter_name, is_accounting_chain, CounterSample};
use crate::layout::{hook_rule, ChainContent, Layout};
use crate::model::{Batch, BuiltinChain, Change, Family, Rule, Table};
use crate::render::{change_lines, rule_spec, saved_form};
use wire::{chain_attr, msg, rule_attr, table_attr, MsgBuilder, NfSocket, Reply};

/// The nf_tables table holding one model table of one family.
pub fn table_name(table: Table) -> &'static str {
    match table {
        Table::Filter => "patchpanel_filter",
        Table::Nat => "patchpanel_nat",
        Table::Mangle => "patchpanel_mangle",
    }
}

fn nfproto(family: Family) -> u8 {
    match family {
        Family::V4 => wire::NFPROTO_IPV4,
        Family::V6 => wire::NFPROTO_IPV6,
    }
}

fn family_of(nfproto: u8) -> Option<Family> {
    match nfproto {
        wire::NFPROTO_IPV4 => Some(Family::V4),
        wire::NFPROTO_IPV6 => Some(Family::V6),
        _ => None,
    }
}

fn table_of(name: &str) -> Option<Table> {
    Table::ALL.into_iter().find(|t| table_name(*t) == name)
}

/// Hook number, priority and chain type of a built-in chain, as
/// iptables-nft registers it.
fn base_chain(table: Table, builtin: BuiltinChain) -> (u32, i32, &'static str) {
    let hook = match builtin {
        BuiltinChain::Prerouting => 0,
        BuiltinChain::Input => 1,
        BuiltinChain::Forward => 2,
        BuiltinChain::Output => 3,
        BuiltinChain::Postrouting => 4,
    };
    match table {
        // Just before iptables' filter chains, so that what patchpanel
        // accepts carries ACCEPTED_MARK when they see it.
        Table::Filter => (hook, -1, "filter"),
        // Marks set in OUTPUT re-route the packet, as in iptables' mangle.
        Table::Mangle if builtin == BuiltinChain::Output => (hook, -150, "route"),
        Table::Mangle => (hook, -150, "filter"),
        Table::Nat => match builtin {
            BuiltinChain::Prerouting | BuiltinChain::Output => (hook, -100, "nat"),
            _ => (hook, 100, "nat"),
        },
    }
}

/// The most a comment (userdata) holds: the kernel's 256 bytes less the
/// TLV header and the NUL.
const MAX_SPEC_LEN: usize = 253;
const UDATA_COMMENT: u8 = 0;

fn userdata(spec: &str) -> Vec<u8> {
    let mut u = Vec::with_capacity(spec.len() + 3);
    u.push(UDATA_COMMENT);
    u.push((spec.len() + 1) as u8);
    u.extend_from_slice(spec.as_bytes());
    u.push(0);
    u
}

fn spec_of_userdata(u: &[u8]) -> Option<String> {
    let mut rest = u;
    while rest.len() >= 2 {
        let (ty, len) = (rest[0], usize::from(rest[1]));
        let value = rest.get(2..2 + len)?;
        if ty == UDATA_COMMENT {
            let end = value.iter().position(|&b| b == 0).unwrap_or(value.len());
            return Some(String::from_utf8_lossy(&value[..end]).into_owned());
        }
        rest = &rest[2 + len..];
    }
    None
}

type ChainKey = (Family, Table, String);

/// A rule of a chain whose content is known: its handle once the kernel
/// gave one, else its id in the transaction being built.
#[derive(Debug, Clone)]
struct Entry {
    handle: Option<u64>,
    id: Option<u32>,
    spec: String,
}

/// The messages of one transaction and what each one does (for errors).
struct Tx {
    messages: Vec<Vec<u8>>,
    /// (sequence number, description) of each message.
    what: Vec<(u32, String)>,
    /// Each echoed NEWRULE message's chain and rule id, in order (to match
    /// the echoes).
    new_rules: Vec<(ChainKey, u32)>,
    /// Chains this transaction deletes.
    deleted: Vec<ChainKey>,
    /// Port set elements as they will be after it (`None`: removed).
    elements: HashMap<ElementKey, Option<sets::Element>>,
    /// Named counters it deletes.
    deleted_counters: HashSet<(Family, String)>,
    next_id: u32,
}

/// Counts carried into new accounting counters, by (family, counter name).
type CarriedCounts = HashMap<(Family, String), (u64, u64)>;

/// A port set of one family.
type SetKey = (Family, &'static str);
/// One element of a port set.
type ElementKey = (Family, &'static str, Vec<u8>);

impl Tx {
    fn new() -> Tx {
        Tx {
            messages: Vec::new(),
            what: Vec::new(),
            new_rules: Vec::new(),
            deleted: Vec::new(),
            elements: HashMap::new(),
            deleted_counters: HashSet::new(),
            next_id: 1,
        }
    }

    fn push(
        &mut self,
        sock: &mut NfSocket,
        what: impl Into<String>,
        build: impl FnOnce(u32) -> MsgBuilder,
    ) {
        let seq = sock.next_seq(1);
        self.messages.push(build(seq).finish());
        self.what.push((seq, what.into()));
    }

    /// Queues the creation of patchpanel's base chain for `builtin` in
    /// `table` (policy accept, its hook and priority).
    fn push_base_chain(
        &mut self,
        sock: &mut NfSocket,
        family: Family,
        table: Table,
        builtin: BuiltinChain,
    ) {
        let (proto, tname, name) = (nfproto(family), table_name(table), builtin.name());
        let (hooknum, priority, kind) = base_chain(table, builtin);
        self.push(
            sock,
            format!("{family} {table}: base chain {name}"),
            |seq| {
                let mut m = MsgBuilder::nft(msg::NEWCHAIN, wire::NLM_F_CREATE, seq, proto);
                m.str(chain_attr::TABLE, tname);
                m.str(chain_attr::NAME, name);
                let h = m.nest(chain_attr::HOOK);
                m.be32(chain_attr::HOOK_NUM, hooknum);
                m.be32(chain_attr::HOOK_PRIORITY, priority as u32);
                m.end(h);
                m.be32(chain_attr::POLICY, 1); // NF_ACCEPT
                m.str(chain_attr::TYPE, kind);
                m
            },
        );
    }

    /// Queues the creation of port set `set`; returns its id in this
    /// transaction.
    fn push_port_set(&mut self, sock: &mut NfSocket, family: Family, set: &sets::PortSet) -> u32 {
        let id = self.next_id;
        self.next_id += 1;
        self.push(
            sock,
            format!("{family} {}: set {}", set.table, set.name),
            |seq| sets::new_set(seq, family, set, id),
        );
        id
    }

    fn try_push(
        &mut self,
        sock: &mut NfSocket,
        what: impl Into<String>,
        build: impl FnOnce(u32) -> Result<MsgBuilder, FirewallError>,
    ) -> Result<(), FirewallError> {
        let seq = sock.next_seq(1);
        self.messages.push(build(seq)?.finish());
        self.what.push((seq, what.into()));
        Ok(())
    }

    fn describe(&self, seq: u32) -> String {
        self.what
            .iter()
            .find(|(s, _)| *s == seq)
            .map(|(_, w)| w.clone())
            .unwrap_or_else(|| format!("message {seq}"))
    }
}

/// The nf_tables backend.
pub struct Nftables {
    sock: NfSocket,
    /// Chains whose rules (handles and specs) are known.
    cache: HashMap<ChainKey, Vec<Entry>>,
    /// Port sets whose elements are known.
    sets: HashMap<SetKey, HashMap<Vec<u8>, sets::Element>>,
}

impl std::fmt::Debug for Nftables {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Nftables")
            .field("cached_chains", &self.cache.len())
            .field("cached_sets", &self.sets.len())
            .finish()
    }
}

fn netlink_error(operation: impl Into<String>, e: &std::io::Error) -> FirewallError {
    FirewallError::Netlink {
        operation: operation.into(),
        errno: e.raw_os_error().unwrap_or(0),
        message: e.to_string(),
    }
}

impl Nftables {
    pub fn new() -> Result<Nftables, FirewallError> {
        let sock = NfSocket::open().map_err(|e| netlink_error("open an nf_tables socket", &e))?;
        Ok(Nftables {
            sock,
            cache: HashMap::new(),
            sets: HashMap::new(),
        })
    }

    /// Whether this kernel has nf_tables (a dump of tables answers).
    pub fn available() -> Result<(), String> {
        let mut sock = NfSocket::open().map_err(|e| format!("netlink socket: {e}"))?;
        sock.dump(msg::GETTABLE, wire::NFPROTO_IPV4, &[])
            .map(|_| ())
            .map_err(|e| format!("nf_tables does not answer: {e}"))
    }

    /// Every chain of patchpanel's tables in `family`.
    pub fn chains(&mut self, family: Family) -> Result<Vec<DumpedChain>, FirewallError> {
        let replies = self
            .sock
            .dump(msg::GETCHAIN, nfproto(family), &[])
            .map_err(|e| netlink_error(format!("list {family} chains"), &e))?;
        Ok(replies
            .iter()
            .filter_map(|r| {
                let table = table_of(&wire::attr_str(&r.attrs, chain_attr::TABLE)?)?;
                Some(DumpedChain {
                    family,
                    table,
                    name: wire::attr_str(&r.attrs, chain_attr::NAME)?,
                    is_base: wire::attr(&r.attrs, chain_attr::HOOK).is_some(),
                })
            })
            .collect())
    }

    /// Every rule of one of patchpanel's tables (or one chain of it).
    pub fn rules(
        &mut self,
        family: Family,
        table: Table,
        chain: Option<&str>,
    ) -> Result<Vec<DumpedRule>, FirewallError> {
        let mut filter = vec![(rule_attr::TABLE, table_name(table))];
        if let Some(chain) = chain {
            filter.push((rule_attr::CHAIN, chain));
        }
        match self.sock.dump(msg::GETRULE, nfproto(family), &filter) {
            Ok(replies) => Ok(replies.iter().filter_map(parse_rule).collect()),
            // The table or chain does not exist: no rules.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(Vec::new()),
            Err(e) => Err(netlink_error(
                format!("list {family} {} rules", table_name(table)),
                &e,
            )),
        }
    }

    /// Loads the rules of `key` into the cache if they are not there.
    fn load(&mut self, key: &ChainKey) -> Result<(), FirewallError> {
        if self.cache.contains_key(key) {
            return Ok(());
        }
        let rules = self.rules(key.0, key.1, Some(&key.2))?;
        let entries = rules
            .into_iter()
            .filter(|r| r.chain == key.2)
            .map(|r| Entry {
                handle: Some(r.handle),
                id: None,
                spec: r.spec,
            })
            .collect();
        self.cache.insert(key.clone(), entries);
        Ok(())
    }

    /// The elements of a port set, read from the kernel.
    fn set_elements(
        &mut self,
        family: Family,
        set: &sets::PortSet,
    ) -> Result<Vec<(Vec<u8>, sets::Element)>, FirewallError> {
        let replies = self
            .sock
            .dump(
                sets::msg::GETSETELEM,
                nfproto(family),
                &sets::dump_filter(set),
            )
            .map_err(|e| netlink_error(format!("list {family} set {}", set.name), &e))?;
        Ok(replies.iter().flat_map(sets::parse_elements).collect())
    }

    /// Adds the messages of a port set element change. Ok(false): a
    /// removal of an element that is not there, to be tried as a rule (the
    /// caller reports it missing if it is not one either).
    fn add_element(
        &mut self,
        tx: &mut Tx,
        family: Family,
        change: &sets::ElementChange,
        what: &str,
    ) -> Result<bool, FirewallError> {
        let set = change.set;
        if !self.sets.contains_key(&(family, set.name)) {
            let known = self.set_elements(family, set)?.into_iter().collect();
            self.sets.insert((family, set.name), known);
        }
        let key: ElementKey = (family, set.name, change.key.clone());
        let current = match tx.elements.get(&key) {
            Some(pending) => pending.clone(),
            None => self.sets[&(family, set.name)].get(&change.key).cloned(),
        };
        let count = match (&current, change.add) {
            (None, true) => 1,
            (Some(e), true) if e.data != change.data => {
                return Err(FirewallError::Unsupported {
                    what: format!("{what}: {} already has this key, for {}", set.name, e.spec),
                })
            }
            (Some(e), true) => e.count + 1,
            (None, false) => return Ok(false),
            (Some(e), false) if e.data != change.data => return Ok(false),
            (Some(e), false) => e.count - 1,
        };
        if current.is_some() {
            tx.push(
                &mut self.sock,
                format!("{what} (set {})", set.name),
                |seq| sets::del_elem(seq, family, set, &change.key),
            );
        }
        let after = (count > 0).then(|| sets::Element {
            data: change.data.clone(),
            spec: current.map_or_else(|| change.spec.clone(), |e| e.spec),
            count,
        });
        if let Some(e) = &after {
            tx.push(
                &mut self.sock,
                format!("{what} (set {})", set.name),
                |seq| sets::new_elem(seq, family, set, &change.key, e),
            );
        }
        tx.elements.insert(key, after);
        Ok(true)
    }

    /// `NEWRULE` of `rule`, its spec as comment; an accounting rule's
    /// counter starts at `start` (packets, bytes).
    fn rule_message(
        seq: u32,
        family: Family,
        table: Table,
        chain: &str,
        flags: u16,
        rule: &Rule,
        start: (u64, u64),
    ) -> Result<MsgBuilder, FirewallError> {
        let spec = rule_spec(rule);
        let mut m = MsgBuilder::nft(msg::NEWRULE, flags, seq, nfproto(family));
        m.str(rule_attr::TABLE, table_name(table));
        m.str(rule_attr::CHAIN, chain);
        let n = m.nest(rule_attr::EXPRESSIONS);
        let counter = accounting_counter(table, chain, rule);
        let accounting = counter
            .as_deref()
            .map(|name| expr::Accounting { name, start });
        expr::compile(&mut m, rule, family, table, accounting).map_err(|e| {
            FirewallError::Unsupported {
                what: e.to_string(),
            }
        })?;
        m.end(n);
        if !spec.is_empty() {
            m.attr(rule_attr::USERDATA, &userdata(&spec));
        }
        Ok(m)
    }

    /// Adds the messages of one change; keeps `sim` (the known chains'
    /// contents as they will be after the transaction) up to date.
    fn add_change(
        &mut self,
        tx: &mut Tx,
        sim: &mut HashMap<ChainKey, Vec<Entry>>,
        family: Family,
        change: &Change,
    ) -> Result<(), FirewallError> {
        let table = change.table();
        let chain = change.chain().as_str().to_string();
        let key: ChainKey = (family, table, chain.clone());
        let what = format!("{family} {}: {}", table, change_lines(change).join(" "));
        if let Some(element) = sets::classify(family, change) {
            if self.add_element(tx, family, &element, &what)? {
                return Ok(());
            }
        }
        let proto = nfproto(family);
        let tname = table_name(table);
        // Every chain this transaction touches has a known content, so
        // positions and deletions refer to what the kernel will hold.
        if !matches!(change, Change::NewChain { .. }) && !sim.contains_key(&key) {
            self.load(&key)?;
            sim.insert(key.clone(), self.cache[&key].clone());
        }
        match change {
            Change::NewChain { .. } => {
                tx.push(&mut self.sock, what, |seq| {
                    let mut m = MsgBuilder::nft(
                        msg::NEWCHAIN,
                        wire::NLM_F_CREATE | wire::NLM_F_EXCL,
                        seq,
                        proto,
                    );
                    m.str(chain_attr::TABLE, tname);
                    m.str(chain_attr::NAME, &chain);
                    m
                });
                sim.insert(key, Vec::new());
            }
            Change::DeleteChain { .. } => {
                tx.push(&mut self.sock, what.clone(), |seq| {
                    let mut m = MsgBuilder::nft(msg::DELCHAIN, 0, seq, proto);
                    m.str(chain_attr::TABLE, tname);
                    m.str(chain_attr::NAME, &chain);
                    m
                });
                sim.remove(&key);
                tx.deleted.push(key);
                self.push_chain_counters_delete(tx, family, table, &chain, &what)?;
            }
            Change::FlushChain { .. } => {
                tx.push(&mut self.sock, what, |seq| {
                    let mut m = MsgBuilder::nft(msg::DELRULE, 0, seq, proto);
                    m.str(rule_attr::TABLE, tname);
                    m.str(rule_attr::CHAIN, &chain);
                    m
                });
                sim.insert(key, Vec::new());
            }
            Change::Append { rule, .. } | Change::Insert { rule, .. } => {
                let spec = rule_spec(rule);
                if spec.len() > MAX_SPEC_LEN {
                    return Err(FirewallError::Unsupported {
                        what: format!("a rule longer than {MAX_SPEC_LEN} bytes: {spec}"),
                    });
                }
                let position = match change {
                    Change::Insert { position, .. } => Some(*position as usize),
                    _ => None,
                };
                let id = tx.next_id;
                tx.next_id += 1;
                // Where it goes: appended, first, or after a known rule.
                let mut flags = wire::NLM_F_CREATE | wire::NLM_F_ECHO;
                let mut after: Option<(Option<u64>, Option<u32>)> = None;
                let mut index = None;
                match position {
                    None => flags |= wire::NLM_F_APPEND,
                    Some(1) => index = Some(0),
                    Some(p) => {
                        let entries = &sim[&key];
                        if p - 1 > entries.len() {
                            return Err(FirewallError::Unsupported {
                                what: format!(
                                    "{what}: index of insertion too big ({} rules)",
                                    entries.len()
                                ),
                            });
                        }
                        let prev = &entries[p - 2];
                        after = Some((prev.handle, prev.id));
                        flags |= wire::NLM_F_APPEND;
                        index = Some(p - 1);
                    }
                }
                if let Some(name) = accounting_counter(table, &chain, rule) {
                    tx.deleted_counters.remove(&(family, name.clone()));
                    tx.push(&mut self.sock, format!("{what} (its counter)"), |seq| {
                        objects::new_counter(seq, family, &name, (0, 0))
                    });
                }
                tx.try_push(&mut self.sock, what, |seq| {
                    let mut m =
                        Self::rule_message(seq, family, table, &chain, flags, rule, (0, 0))?;
                    m.be32(rule_attr::ID, id);
                    match after {
                        Some((Some(handle), _)) => {
                            m.be64(rule_attr::POSITION, handle);
                        }
                        Some((None, Some(pid))) => {
                            m.be32(rule_attr::POSITION_ID, pid);
                        }
                        _ => {}
                    }
                    Ok(m)
                })?;
                tx.new_rules.push((key.clone(), id));
                if let Some(entries) = sim.get_mut(&key) {
                    let entry = Entry {
                        handle: None,
                        id: Some(id),
                        spec,
                    };
                    match index {
                        Some(i) => entries.insert(i, entry),
                        None => entries.push(entry),
                    }
                }
            }
            Change::Delete { rule, .. } => {
                let spec = rule_spec(rule);
                let entries = sim
                    .get_mut(&key)
                    .unwrap_or_else(|| unreachable!("inserted above"));
                let Some(at) = entries.iter().position(|e| e.spec == spec) else {
                    return Err(FirewallError::NoSuchRule { what });
                };
                let entry = entries.remove(at);
                // Its counter goes with the last rule counting into it.
                let counter = accounting_counter(table, &chain, rule)
                    .filter(|_| !entries.iter().any(|e| e.spec == spec));
                tx.push(&mut self.sock, what.clone(), |seq| {
                    let mut m = MsgBuilder::nft(msg::DELRULE, 0, seq, proto);
                    m.str(rule_attr::TABLE, tname);
                    m.str(rule_attr::CHAIN, &chain);
                    match (entry.handle, entry.id) {
                        (Some(h), _) => {
                            m.be64(rule_attr::HANDLE, h);
                        }
                        (None, Some(id)) => {
                            m.be32(rule_attr::ID, id);
                        }
                        (None, None) => unreachable!("an entry has a handle or an id"),
                    }
                    m
                });
                if let Some(name) = counter {
                    self.push_counter_delete(tx, family, &name, &what);
                }
            }
        }
        Ok(())
    }

    /// Commits `tx`; on success stores `sim` with the handles the kernel
    /// echoed.
    fn commit(
        &mut self,
        tx: Tx,
        mut sim: HashMap<ChainKey, Vec<Entry>>,
    ) -> Result<(), FirewallError> {
        if tx.messages.is_empty() {
            return Ok(());
        }
        let last_seq = tx.what.last().map(|(s, _)| *s).unwrap_or(0);
        let mut messages = tx.messages.clone();
        // The last message asks for the ack that ends the wait.
        if let Some(last) = messages.last_mut() {
            let flags = u16::from_ne_bytes([last[6], last[7]]) | wire::NLM_F_ACK;
            last[6..8].copy_from_slice(&flags.to_ne_bytes());
        }
        let started = std::time::Instant::now();
        let result = self
            .sock
            .transact(messages, last_seq)
            .map_err(|e| netlink_error("nf_tables transaction", &e))?;
        log::debug!(
            "nf_tables transaction of {} messages ({:.1?})",
            tx.messages.len(),
            started.elapsed()
        );
        match result {
            Ok(echoes) => {
                for ((family, set, key), element) in tx.elements {
                    let Some(known) = self.sets.get_mut(&(family, set)) else {
                        continue;
                    };
                    match element {
                        Some(e) => known.insert(key, e),
                        None => known.remove(&key),
                    };
                }
                // Echoed new rules come in transaction order.
                let mut pending: HashMap<ChainKey, VecDeque<u32>> = HashMap::new();
                for (key, id) in &tx.new_rules {
                    pending.entry(key.clone()).or_default().push_back(*id);
                }
                for key in &tx.deleted {
                    self.cache.remove(key);
                }
                let mut handles: HashMap<u32, u64> = HashMap::new();
                for r in echoes.iter().filter(|r| r.nft_type() == Some(msg::NEWRULE)) {
                    if let Some(d) = parse_rule(r) {
                        let key = (d.family, d.table, d.chain);
                        if let Some(id) = pending.get_mut(&key).and_then(VecDeque::pop_front) {
                            handles.insert(id, d.handle);
                        }
                    }
                }
                for (key, mut entries) in sim.drain() {
                    let complete = entries.iter_mut().all(|e| {
                        if e.handle.is_none() {
                            e.handle = e.id.and_then(|id| handles.get(&id).copied());
                        }
                        e.id = None;
                        e.handle.is_some()
                    });
                    if complete {
                        self.cache.insert(key, entries);
                    } else {
                        self.cache.remove(&key);
                    }
                }
                Ok(())
            }
            Err(errors) => {
                let first = &errors[0];
                Err(FirewallError::Transaction {
                    errno: first.errno,
                    message: std::io::Error::from_raw_os_error(first.errno).to_string(),
                    at: tx.describe(first.seq),
                    errors: errors.len(),
                })
            }
        }
    }

    fn try_apply(&mut self, batch: &Batch) -> Result<(), FirewallError> {
        let mut tx = Tx::new();
        let mut sim: HashMap<ChainKey, Vec<Entry>> = HashMap::new();
        for family in Family::ALL {
            for table in Table::ALL {
                for change in batch.changes(family).iter().filter(|c| c.table() == table) {
                    self.add_change(&mut tx, &mut sim, family, change)?;
                }
            }
        }
        // Chains this transaction changes but whose content is not known
        // any more: forget them.
        for (key, _) in &tx.new_rules {
            if !sim.contains_key(key) {
                self.cache.remove(key);
            }
        }
        self.commit(tx, sim)
    }

    fn ensure_tables(&mut self, tx: &mut Tx) {
        for family in Family::ALL {
            for table in Table::ALL {
                let proto = nfproto(family);
                tx.push(
                    &mut self.sock,
                    format!("{family} table {}", table_name(table)),
                    |seq| {
                        let mut m = MsgBuilder::nft(msg::NEWTABLE, wire::NLM_F_CREATE, seq, proto);
                        m.str(table_attr::NAME, table_name(table));
                        m
                    },
                );
            }
        }
    }
}

impl FirewallBackend for Nftables {
    fn setup(&mut self, layout: &Layout) -> Result<SetupReport, FirewallError> {
        layout.validate()?;
        let mut report = SetupReport::default();
        let mut have: HashMap<(Family, Table), Vec<DumpedChain>> = HashMap::new();
        for family in Family::ALL {
            for c in self.chains(family)? {
                have.entry((c.family, c.table)).or_default().push(c);
            }
        }
        let mut tx = Tx::new();
        self.ensure_tables(&mut tx);
        let mut rules: Vec<(Family, Table, String, Rule)> = Vec::new();
        let mut flushes: Vec<(Family, Table, String)> = Vec::new();
        // Port sets: (family, set, its id in this transaction, whether its
        // chain was there before).
        let mut lookups: Vec<(Family, &sets::PortSet, u32, bool)> = Vec::new();
        for want in &layout.tables {
            let (family, table) = (want.family, want.table);
            let existing = have.get(&(family, table)).cloned().unwrap_or_default();
            let exists = |name: &str| existing.iter().any(|c| c.name == name);
            let proto = nfproto(family);
            let tname = table_name(table);
            for spec in &want.chains {
                let name = spec.chain.as_str().to_string();
                if !exists(&name) {
                    tx.push(
                        &mut self.sock,
                        format!("{family} {table}: -N {name}"),
                        |seq| {
                            let mut m =
                                MsgBuilder::nft(msg::NEWCHAIN, wire::NLM_F_CREATE, seq, proto);
                            m.str(chain_attr::TABLE, tname);
                            m.str(chain_attr::NAME, &name);
                            m
                        },
                    );
                }
                match &spec.content {
                    ChainContent::Dynamic => {
                        if !exists(&name) {
                            report.created.push((family, table, spec.chain.clone()));
                        }
                    }
                    ChainContent::Static(content) => {
                        flushes.push((family, table, name.clone()));
                        for r in content {
                            rules.push((family, table, name.clone(), r.clone()));
                        }
                        report.rewritten.push((family, table, spec.chain.clone()));
                    }
                }
            }
            for hook in &want.hooks {
                let name = hook.builtin.name();
                let jump = hook_rule(&hook.root);
                let right = exists(name) && {
                    let current = self.rules(family, table, Some(name))?;
                    current.len() == 1 && current[0].spec == rule_spec(&jump)
                };
                if right {
                    continue;
                }
                if !exists(name) {
                    tx.push_base_chain(&mut self.sock, family, table, hook.builtin);
                }
                flushes.push((family, table, name.to_string()));
                rules.push((family, table, name.to_string(), jump));
                report.hooks_fixed.push((family, table, hook.builtin));
            }
            for set in sets::of_layout(want) {
                let id = tx.push_port_set(&mut self.sock, family, set);
                lookups.push((family, set, id, exists(set.chain)));
            }
        }
        let carried = self.migrate_accounting(&mut tx, &have, &mut flushes, &mut rules)?;
        for (family, table, chain) in &flushes {
            let proto = nfproto(*family);
            tx.push(
                &mut self.sock,
                format!("{family} {table}: -F {chain}"),
                |seq| {
                    let mut m = MsgBuilder::nft(msg::DELRULE, 0, seq, proto);
                    m.str(rule_attr::TABLE, table_name(*table));
                    m.str(rule_attr::CHAIN, chain);
                    m
                },
            );
        }
        for (family, table, chain, rule) in &rules {
            let spec = rule_spec(rule);
            let start = accounting_counter(*table, chain, rule)
                .and_then(|name| carried.get(&(*family, name)).copied())
                .unwrap_or_default();
            tx.try_push(
                &mut self.sock,
                format!("{family} {table}: -A {chain} {spec}"),
                |seq| {
                    Self::rule_message(
                        seq,
                        *family,
                        *table,
                        chain,
                        wire::NLM_F_CREATE | wire::NLM_F_APPEND,
                        rule,
                        start,
                    )
                },
            )?;
        }
        // A lookup rule goes last in a chain created now, first in one that
        // lacks it (so in reverse order there).
        let mut missing = Vec::new();
        for &(family, set, id, existed) in &lookups {
            if !existed {
                tx.push(
                    &mut self.sock,
                    format!(
                        "{family} {}: -A {} {}",
                        set.table,
                        set.chain,
                        set.lookup_spec()
                    ),
                    |seq| sets::lookup_rule(seq, family, set, Some(id), true),
                );
                continue;
            }
            let spec = set.lookup_spec();
            if !self
                .rules(family, set.table, Some(set.chain))?
                .iter()
                .any(|r| r.spec == spec)
            {
                missing.push((family, set, id));
            }
        }
        for (family, set, id) in missing.into_iter().rev() {
            tx.push(
                &mut self.sock,
                format!(
                    "{family} {}: -I {} 1 {}",
                    set.table,
                    set.chain,
                    set.lookup_spec()
                ),
                |seq| sets::lookup_rule(seq, family, set, Some(id), false),
            );
            self.cache
                .remove(&(family, set.table, set.chain.to_string()));
        }
        for (family, table, chain) in &flushes {
            self.cache.remove(&(*family, *table, chain.clone()));
        }
        self.sets.clear();
        self.commit(tx, HashMap::new())?;
        match coexist::reconcile(&coexist::is_patchpanel_table, coexist::Remedy::NarrowAccept) {
            Ok(r) if r.is_empty() => {}
            Ok(r) => log::info!("living with the host's firewall: {r}"),
            Err(e) => log::warn!("cannot read the host's firewall to live with it: {e}"),
        }
        Ok(report)
    }

    fn rebuild(
        &mut self,
        layout: &Layout,
        batch: &Batch,
    ) -> Result<Vec<CounterSample>, FirewallError> {
        self.rebuild_in_one_transaction(layout, batch)
    }

    fn apply(&mut self, batch: &Batch) -> Result<(), FirewallError> {
        batch.validate()?;
        match self.try_apply(batch) {
            Ok(()) => Ok(()),
            Err(e @ (FirewallError::Transaction { .. } | FirewallError::NoSuchRule { .. }))
                if !self.cache.is_empty() || !self.sets.is_empty() =>
            {
                // A handle we held may be stale (someone else changed our
                // chains): read them again and try once more.
                log::warn!("nf_tables: {e}; re-reading patchpanel's chains and retrying once");
                self.cache.clear();
                self.sets.clear();
                self.try_apply(batch)
            }
            Err(e) => Err(e),
        }
    }

    fn remove_all(&mut self, keep: &dyn Fn(&str) -> bool) -> Result<Vec<Removed>, RemoveAllError> {
        self.cache.clear();
        self.sets.clear();
        let mut removed = remove_narrow_accepts(&mut self.sock);
        let mut errors = Vec::new();
        // Per table: the messages and what they remove.
        let mut parts: Vec<(Tx, Vec<Removed>)> = Vec::new();
        for family in Family::ALL {
            let chains = match self.chains(family) {
                Ok(c) => c,
                Err(e) => {
                    errors.push(e);
                    continue;
                }
            };
            // One listing of the family's tables, not one per table.
            let existing: Vec<String> = match self.sock.dump(msg::GETTABLE, nfproto(family), &[]) {
                Ok(replies) => replies
                    .iter()
                    .filter_map(|r| wire::attr_str(&r.attrs, table_attr::NAME))
                    .collect(),
                Err(e) => {
                    errors.push(netlink_error(format!("list {family} tables"), &e));
                    continue;
                }
            };
            // (table, name) of the family's sets.
            let existing_sets: Vec<(String, String)> =
                match self.sock.dump(sets::msg::GETSET, nfproto(family), &[]) {
                    Ok(replies) => replies
                        .iter()
                        .filter_map(|r| {
                            Some((
                                wire::attr_str(&r.attrs, 1)?, // NFTA_SET_TABLE
                                wire::attr_str(&r.attrs, 2)?, // NFTA_SET_NAME
                            ))
                        })
                        .collect(),
                    Err(e) => {
                        errors.push(netlink_error(format!("list {family} sets"), &e));
                        continue;
                    }
                };
            for table in Table::ALL {
                let ours: Vec<&DumpedChain> = chains.iter().filter(|c| c.table == table).collect();
                if !existing.iter().any(|t| t == table_name(table)) {
                    continue;
                }
                let proto = nfproto(family);
                let tname = table_name(table);
                let mut tx = Tx::new();
                let mut what = Vec::new();
                for c in &ours {
                    what.push(Removed {
                        family,
                        table,
                        what: if c.is_base {
                            RemovedKind::Hook {
                                builtin: c.name.clone(),
                                spec: format!("-j patchpanel_{}", c.name),
                            }
                        } else {
                            RemovedKind::Chain {
                                name: c.name.clone(),
                            }
                        },
                    });
                }
                let kept: Vec<&&DumpedChain> = ours
                    .iter()
                    .filter(|c| !c.is_base && keep(&c.name))
                    .collect();
                if kept.is_empty() {
                    tx.push(
                        &mut self.sock,
                        format!("{family} delete table {tname}"),
                        |seq| {
                            let mut m = MsgBuilder::nft(msg::DELTABLE, 0, seq, proto);
                            m.str(table_attr::NAME, tname);
                            m
                        },
                    );
                } else {
                    what.retain(|r| !matches!(&r.what, RemovedKind::Chain { name } if keep(name)));
                    for c in &ours {
                        if kept.iter().any(|k| k.name == c.name) {
                            continue;
                        }
                        tx.push(
                            &mut self.sock,
                            format!("{family} {tname}: -F {}", c.name),
                            |seq| {
                                let mut m = MsgBuilder::nft(msg::DELRULE, 0, seq, proto);
                                m.str(rule_attr::TABLE, tname);
                                m.str(rule_attr::CHAIN, &c.name);
                                m
                            },
                        );
                    }
                    // The port sets, unreferenced once their chains are
                    // flushed.
                    for set in sets::PORT_SETS.iter().filter(|s| {
                        s.table == table
                            && s.families.contains(&family)
                            && existing_sets.iter().any(|(t, n)| t == tname && n == s.name)
                    }) {
                        tx.push(
                            &mut self.sock,
                            format!("{family} {tname}: delete set {}", set.name),
                            |seq| sets::del_set(seq, family, set),
                        );
                    }
                    for c in &ours {
                        if kept.iter().any(|k| k.name == c.name) {
                            continue;
                        }
                        tx.push(
                            &mut self.sock,
                            format!("{family} {tname}: -X {}", c.name),
                            |seq| {
                                let mut m = MsgBuilder::nft(msg::DELCHAIN, 0, seq, proto);
                                m.str(chain_attr::TABLE, tname);
                                m.str(chain_attr::NAME, &c.name);
                                m
                            },
                        );
                    }
                }
                parts.push((tx, what));
            }
        }
        // Everything in one transaction; if that fails, table by table.
        let mut all = Tx::new();
        for (tx, _) in &parts {
            all.messages.extend(tx.messages.iter().cloned());
            all.what.extend(tx.what.iter().cloned());
        }
        match self.commit(all, HashMap::new()) {
            Ok(()) => removed.extend(parts.into_iter().flat_map(|(_, w)| w)),
            Err(e) => {
                log::warn!("nf_tables: removing patchpanel's tables in one transaction failed ({e}); table by table");
                for (tx, what) in parts {
                    match self.commit(tx, HashMap::new()) {
                        Ok(()) => removed.extend(what),
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

    fn list_chains(&mut self, family: Family, table: Table) -> Result<Vec<String>, FirewallError> {
        Ok(self
            .chains(family)?
            .into_iter()
            .filter(|c| c.table == table && !c.is_base)
            .map(|c| c.name)
            .collect())
    }

    /// One dump of the accounting tables' named counters, both families
    /// at once ([`objects`]): neither the chains nor any rule is listed.
    fn read_counters(&mut self) -> Result<Vec<CounterSample>, FirewallError> {
        let counters = self.counters_of_family(libc::NFPROTO_UNSPEC as u8)?;
        objects::samples_of(&counters).map_err(|source| FirewallError::NftCounters { source })
    }

    fn dump(&mut self, family: Family) -> Result<String, FirewallError> {
        let chains = self.chains(family)?;
        let mut out = String::new();
        for table in Table::ALL {
            let ours: Vec<&DumpedChain> = chains.iter().filter(|c| c.table == table).collect();
            if ours.is_empty() {
                continue;
            }
            out.push_str(&format!(
                "# nf_tables table {} {}\n*{table}\n",
                family_word(family),
                table_name(table)
            ));
            for c in &ours {
                let policy = if c.is_base { "ACCEPT" } else { "-" };
                out.push_str(&format!(":{} {policy} [0:0]\n", c.name));
            }
            for r in self.rules(family, table, None)? {
                // A port set's lookup: its elements, as the rules they are
                // (sorted: a set has no order).
                if let Some(set) = sets::by_lookup_spec(&r.spec) {
                    let mut lines = Vec::new();
                    for (_, e) in self.set_elements(family, set)? {
                        for _ in 0..e.count {
                            lines.push(format!("-A {} {}\n", r.chain, saved_form(&e.spec)));
                        }
                    }
                    lines.sort();
                    out.extend(lines);
                    continue;
                }
                if r.spec.is_empty() {
                    out.push_str(&format!("-A {}\n", r.chain));
                } else {
                    out.push_str(&format!("-A {} {}\n", r.chain, saved_form(&r.spec)));
                }
            }
            out.push_str("COMMIT\n");
        }
        Ok(out)
    }
}

fn family_word(family: Family) -> &'static str {
    match family {
        Family::V4 => "ip",
        Family::V6 => "ip6",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seed(name: &str) -> Vec<u8> {
        let path = format!(
            "{}/../../fuzz/seeds/nft_netlink/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    /// The fuzz seeds (real kernel dumps, `fuzz/make-seeds.py`) reach the
    /// parsers: rules with their counters and comments, the counter
    /// samples of the accounting chains, set elements.
    #[test]
    fn the_fuzz_seeds_are_kernel_replies_the_parsers_understand() {
        let all = seed("dump-rules-all");
        let messages = wire::split_messages(&all).unwrap();
        let rules: Vec<DumpedRule> = messages
            .iter()
            .filter_map(|(ty, seq, p)| Reply::from_message(*ty, *seq, p))
            .filter_map(|r| parse_rule(&r))
            .collect();
        let counted: Vec<_> = rules
            .iter()
            .filter(|r| r.chain == "rx_eth0" && r.family == Family::V4)
            .collect();
        assert_eq!(counted.len(), 3, "{rules:#?}");
        assert_eq!(counted[0].counter, Some((12, 3456)));
        assert_eq!(counted[0].spec, "-m mark --mark 0x100/0x3f00 -j RETURN");
        let samples = counters_of(Family::V4, &rules).unwrap();
        assert!(!samples.is_empty());
        assert!(fuzz_replies(&all) > rules.len());
        assert!(fuzz_replies(&seed("dump-set-elems")) >= 2);
    }

    #[test]
    fn userdata_is_an_nft_comment_and_reads_back() {
        let u = userdata("-i eth0 -j ACCEPT");
        assert_eq!(u[0], 0);
        assert_eq!(usize::from(u[1]), "-i eth0 -j ACCEPT".len() + 1);
        assert_eq!(spec_of_userdata(&u).as_deref(), Some("-i eth0 -j ACCEPT"));
        assert_eq!(spec_of_userdata(&[0, 200, 1]), None);
    }

    #[test]
    fn base_chains_sit_where_iptables_puts_them() {
        assert_eq!(
            base_chain(Table::Nat, BuiltinChain::Prerouting),
            (0, -100, "nat")
        );
        assert_eq!(
            base_chain(Table::Nat, BuiltinChain::Postrouting),
            (4, 100, "nat")
        );
        assert_eq!(
            base_chain(Table::Mangle, BuiltinChain::Output),
            (3, -150, "route")
        );
        assert_eq!(
            base_chain(Table::Filter, BuiltinChain::Forward),
            (2, -1, "filter")
        );
    }
}
