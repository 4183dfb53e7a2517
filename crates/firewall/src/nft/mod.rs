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

pub mod expr;
pub mod sets;
pub mod wire;

use std::collections::{HashMap, VecDeque};

use crate::backend::{
    FirewallBackend, FirewallError, RemoveAllError, Removed, RemovedKind, SetupReport,
};
use crate::counters::{is_accounting_chain, CounterSample};
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

/// A rule as read back: its handle, spec and counter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DumpedRule {
    pub family: Family,
    pub table: Table,
    pub chain: String,
    pub handle: u64,
    pub spec: String,
    pub counter: Option<(u64, u64)>,
}

/// A chain as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DumpedChain {
    pub family: Family,
    pub table: Table,
    pub name: String,
    pub is_base: bool,
}

/// The counter samples of a family's dumped mangle rules: those of the
/// accounting chains, read by the parser of `iptables-save -c` lines
/// (each rule's comment is its iptables spec).
fn counters_of(family: Family, rules: &[DumpedRule]) -> Result<Vec<CounterSample>, FirewallError> {
    let mut text = String::new();
    for r in rules {
        if !is_accounting_chain(&r.chain) {
            continue;
        }
        let (p, b) = r.counter.unwrap_or((0, 0));
        text.push_str(&format!("[{p}:{b}] -A {} {}\n", r.chain, r.spec));
    }
    crate::counters::parse_counters(&text, family)
        .map_err(|source| FirewallError::NftCounters { source })
}

/// Entry point for the fuzz targets (`fuzz/`): a datagram from nf_tables
/// through every parser of dump replies and echoes the backend has (rules,
/// their counters, set elements, the narrow accept and iptables' rules).
/// Returns how many messages one of them understood. Not for other use.
#[doc(hidden)]
pub fn fuzz_replies(buf: &[u8]) -> usize {
    let Ok(messages) = wire::split_messages(buf) else {
        return 0;
    };
    let replies: Vec<Reply> = messages
        .iter()
        .filter_map(|(ty, seq, payload)| Reply::from_message(*ty, *seq, payload))
        .collect();
    let mut understood = 0;
    let mut rules = Vec::new();
    for r in &replies {
        let _ = r.nft_type();
        if let Some(rule) = parse_rule(r) {
            rules.push(rule);
            understood += 1;
        }
        understood += sets::parse_elements(r).len();
        understood += usize::from(is_narrow_accept(r));
        understood += usize::from(iptables_rule(r).is_some());
    }
    for family in Family::ALL {
        let mine: Vec<DumpedRule> = rules
            .iter()
            .filter(|r| r.family == family)
            .cloned()
            .collect();
        if let Ok(samples) = counters_of(family, &mine) {
            understood += samples.len();
        }
    }
    understood
}

fn parse_rule(r: &Reply) -> Option<DumpedRule> {
    let family = family_of(r.family)?;
    let table = table_of(&wire::attr_str(&r.attrs, rule_attr::TABLE)?)?;
    let chain = wire::attr_str(&r.attrs, rule_attr::CHAIN)?;
    let handle = wire::attr_be64(&r.attrs, rule_attr::HANDLE)?;
    let spec = wire::attr(&r.attrs, rule_attr::USERDATA)
        .and_then(spec_of_userdata)
        .unwrap_or_default();
    let mut counter = None;
    if let Some(list) = wire::attr(&r.attrs, rule_attr::EXPRESSIONS) {
        for (_, e) in wire::attrs(list) {
            if wire::attr_str(e, wire::NFTA_EXPR_NAME).as_deref() == Some("counter") {
                let data = wire::attr(e, wire::NFTA_EXPR_DATA).unwrap_or(&[]);
                let bytes = wire::attr_be64(data, 1).unwrap_or(0);
                let packets = wire::attr_be64(data, 2).unwrap_or(0);
                counter = Some((packets, bytes));
            }
        }
    }
    Some(DumpedRule {
        family,
        table,
        chain,
        handle,
        spec,
        counter,
    })
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
    /// Each NEWRULE message's chain, in order (to match the echoes).
    new_rules: Vec<ChainKey>,
    /// Chains this transaction deletes.
    deleted: Vec<ChainKey>,
    /// Port set elements as they will be after it (`None`: removed).
    elements: HashMap<ElementKey, Option<sets::Element>>,
    next_id: u32,
}

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

    fn rule_message(
        seq: u32,
        family: Family,
        table: Table,
        chain: &str,
        flags: u16,
        rule: &Rule,
        spec: &str,
    ) -> Result<MsgBuilder, FirewallError> {
        let mut m = MsgBuilder::nft(msg::NEWRULE, flags, seq, nfproto(family));
        m.str(rule_attr::TABLE, table_name(table));
        m.str(rule_attr::CHAIN, chain);
        let n = m.nest(rule_attr::EXPRESSIONS);
        expr::compile(&mut m, rule, family, table, is_accounting_chain(chain)).map_err(|e| {
            FirewallError::Unsupported {
                what: e.to_string(),
            }
        })?;
        m.end(n);
        if !spec.is_empty() {
            m.attr(rule_attr::USERDATA, &userdata(spec));
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
                tx.push(&mut self.sock, what, |seq| {
                    let mut m = MsgBuilder::nft(msg::DELCHAIN, 0, seq, proto);
                    m.str(chain_attr::TABLE, tname);
                    m.str(chain_attr::NAME, &chain);
                    m
                });
                sim.remove(&key);
                tx.deleted.push(key);
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
                tx.try_push(&mut self.sock, what, |seq| {
                    let mut m = Self::rule_message(seq, family, table, &chain, flags, rule, &spec)?;
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
                tx.new_rules.push(key.clone());
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
                tx.push(&mut self.sock, what, |seq| {
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
                for (id, key) in (1..).zip(tx.new_rules.iter()) {
                    pending.entry(key.clone()).or_default().push_back(id);
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
        for key in &tx.new_rules {
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
                    let (hooknum, priority, kind) = base_chain(table, hook.builtin);
                    tx.push(
                        &mut self.sock,
                        format!("{family} {table}: base chain {name}"),
                        |seq| {
                            let mut m =
                                MsgBuilder::nft(msg::NEWCHAIN, wire::NLM_F_CREATE, seq, proto);
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
                flushes.push((family, table, name.to_string()));
                rules.push((family, table, name.to_string(), jump));
                report.hooks_fixed.push((family, table, hook.builtin));
            }
            for set in sets::PORT_SETS.iter().filter(|s| {
                s.table == table
                    && s.families.contains(&family)
                    && want.chains.iter().any(|c| c.chain.as_str() == s.chain)
            }) {
                let id = tx.next_id;
                tx.next_id += 1;
                tx.push(
                    &mut self.sock,
                    format!("{family} {table}: set {}", set.name),
                    |seq| sets::new_set(seq, family, set, id),
                );
                lookups.push((family, set, id, exists(set.chain)));
            }
        }
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
                        &spec,
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
        self.coexist_with_iptables_policies();
        Ok(report)
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

    fn read_counters(&mut self) -> Result<Vec<CounterSample>, FirewallError> {
        let mut samples = Vec::new();
        for family in Family::ALL {
            let rules = self.rules(family, Table::Mangle, None)?;
            samples.extend(counters_of(family, &rules)?);
        }
        Ok(samples)
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

impl Nftables {
    /// iptables' own filter chains with a DROP policy (Docker sets
    /// `FORWARD DROP`) drop what patchpanel's chains accepted: an accept
    /// binds only its own base chain. Where one is found, one narrow rule
    /// at its top lets through what patchpanel accepted
    /// ([`ACCEPTED_MARK`](crate::fwmark::ACCEPTED_MARK)); it carries
    /// patchpanel's comment, so the iptables cleanup removes it. Run at
    /// setup only: a policy set later is not seen until the next start.
    fn coexist_with_iptables_policies(&mut self) {
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
fn is_narrow_accept(r: &Reply) -> bool {
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
fn remove_narrow_accepts(sock: &mut NfSocket) -> Vec<Removed> {
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

/// A rule of an iptables-nft table as the leftover sweep sees it.
struct IptablesRule {
    chain: String,
    handle: u64,
    /// Its `-m comment --comment` (the xt match iptables-nft writes).
    comment: Option<String>,
    /// The chain it jumps or goes to.
    target: Option<String>,
}

fn iptables_rule(r: &Reply) -> Option<IptablesRule> {
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
