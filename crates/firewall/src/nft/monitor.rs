//! Following the host's rule set live: nf_tables announces every committed
//! transaction to the `NFNLGRP_NFTABLES` multicast group, object by object
//! (tables, chains, rules, sets, elements), and closes each with a
//! `NEWGEN` message naming the process that committed it. The monitor
//! groups the notifications by transaction, so the writer can tell its own
//! changes from everybody else's (Docker, ufw, firewalld, `nft -f`,
//! `iptables-restore`) without polling and without running `nft monitor`.
//!
//! A deleted rule is announced with its expressions as they were, counters
//! included: the final counts of patchpanel's accounting rules survive a
//! `flush ruleset` that way ([`Transaction::lost_counters`]). (Each also
//! counts into a named counter, read by `GetTrafficCounters`; a deleted
//! named counter is announced without its counts.)

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use super::wire::{self, msg, rule_attr, Reply};
use super::{counters_of, family_of, parse_rule};
use crate::counters::{is_accounting_chain, CounterSample};
use crate::model::Family;

/// `NFNLGRP_NFTABLES` (linux/netfilter/nfnetlink.h).
const NFNLGRP_NFTABLES: u32 = 7;
/// nf_tables message types beyond those the backend writes.
const NEWSET: u16 = 9;
const DELSET: u16 = 11;
const NEWSETELEM: u16 = 12;
const DELSETELEM: u16 = 14;
const NEWGEN: u16 = 15;
const NEWOBJ: u16 = 18;
const DELOBJ: u16 = 20;
const NEWFLOWTABLE: u16 = 22;
const DELFLOWTABLE: u16 = 24;
/// `NFTA_GEN_PROC_PID`, `NFTA_GEN_PROC_NAME`.
const GEN_PROC_PID: u16 = 2;
const GEN_PROC_NAME: u16 = 3;
/// Every object message names its table in attribute 1
/// (`NFTA_TABLE_NAME`, `NFTA_CHAIN_TABLE`, `NFTA_RULE_TABLE`, ...).
const ATTR_TABLE: u16 = 1;
/// `NFTA_CHAIN_NAME` and `NFTA_RULE_CHAIN`.
const CHAIN_NAME: u16 = 3;
const RULE_CHAIN: u16 = 2;
/// `NFPROTO_INET`: tables of both families (nftables.service, firewalld).
pub const NFPROTO_INET: u8 = 1;

/// What happened to one object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    New,
    Delete,
}

/// The kind of object a notification is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Object {
    Table,
    Chain,
    Rule,
    Set,
    Element,
    Other,
}

/// One object of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    pub op: Op,
    pub object: Object,
    /// `nfgenmsg` family (`NFPROTO_IPV4`, `NFPROTO_IPV6`, `NFPROTO_INET`...).
    pub family: u8,
    pub table: String,
    /// For chains and rules.
    pub chain: Option<String>,
}

/// The notices of one committed transaction.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Transaction {
    /// Who committed it (`NFTA_GEN_PROC_PID`), when the kernel said.
    pub pid: Option<u32>,
    /// Its command name (`NFTA_GEN_PROC_NAME`).
    pub process: String,
    pub notices: Vec<Notice>,
    /// Final counts of deleted rules of patchpanel's accounting chains.
    pub lost_counters: Vec<CounterSample>,
    /// The same for accounting chains in iptables-nft's `mangle` tables,
    /// where the iptables backend keeps them: patchpanel's with that
    /// backend, another program's with the nftables backend.
    pub lost_iptables_counters: Vec<CounterSample>,
}

impl Transaction {
    /// Whether any object of the transaction is in a table `ours` accepts
    /// (by family and table name).
    pub fn touches(&self, ours: impl Fn(u8, &str) -> bool) -> bool {
        self.notices.iter().any(|n| ours(n.family, &n.table))
    }

    /// A one-line summary for logs: `nft (pid 42): delete table ip
    /// patchpanel_nat, ... (12 objects)`.
    pub fn describe(&self) -> String {
        let who = match self.pid {
            Some(pid) if self.process.is_empty() => format!("pid {pid}"),
            Some(pid) => format!("{} (pid {pid})", self.process),
            None => "an unknown process".to_string(),
        };
        let mut what: Vec<String> = Vec::new();
        // Whole tables first: `delete table ip nat` says more than the
        // thousand rules that went with it.
        let rank = |n: &&Notice| match n.object {
            Object::Table => 0,
            Object::Chain => 1,
            Object::Set => 2,
            Object::Rule => 3,
            Object::Element | Object::Other => 4,
        };
        let mut notices: Vec<&Notice> = self.notices.iter().collect();
        notices.sort_by_key(rank);
        for n in notices {
            let line = format!(
                "{} {} {} {}{}",
                match n.op {
                    Op::New => "add",
                    Op::Delete => "delete",
                },
                match n.object {
                    Object::Table => "table",
                    Object::Chain => "chain",
                    Object::Rule => "rule in",
                    Object::Set => "set in",
                    Object::Element => "element in",
                    Object::Other => "object in",
                },
                family_word(n.family),
                n.table,
                n.chain
                    .as_ref()
                    .map(|c| format!(" {c}"))
                    .unwrap_or_default()
            );
            if !what.contains(&line) {
                what.push(line);
            }
            if what.len() == 3 {
                break;
            }
        }
        format!(
            "{who}: {}{} ({} object{})",
            what.join(", "),
            if self.notices.len() > what.len() {
                ", ..."
            } else {
                ""
            },
            self.notices.len(),
            if self.notices.len() == 1 { "" } else { "s" }
        )
    }
}

fn family_word(family: u8) -> &'static str {
    match family {
        NFPROTO_INET => "inet",
        wire::NFPROTO_IPV4 => "ip",
        wire::NFPROTO_IPV6 => "ip6",
        0 => "",
        3 => "arp",
        5 => "netdev",
        7 => "bridge",
        _ => "?",
    }
}

/// Notices that arrived since the last complete transaction.
#[derive(Debug, Default)]
pub struct Assembler {
    pending: Transaction,
}

impl Assembler {
    /// Feeds one datagram of notifications; returns the transactions it
    /// completed. Malformed input is skipped, never trusted.
    pub fn feed(&mut self, datagram: &[u8]) -> Vec<Transaction> {
        let Ok(messages) = wire::split_messages(datagram) else {
            return Vec::new();
        };
        let mut done = Vec::new();
        for (ty, seq, payload) in messages {
            let Some(reply) = Reply::from_message(ty, seq, &payload) else {
                continue;
            };
            let Some(kind) = reply.nft_type() else {
                continue;
            };
            if kind == NEWGEN {
                let mut t = std::mem::take(&mut self.pending);
                t.pid = wire::attr_be32(&reply.attrs, GEN_PROC_PID);
                t.process = wire::attr_str(&reply.attrs, GEN_PROC_NAME).unwrap_or_default();
                done.push(t);
                continue;
            }
            let (op, object) = match kind {
                msg::NEWTABLE => (Op::New, Object::Table),
                msg::DELTABLE => (Op::Delete, Object::Table),
                msg::NEWCHAIN => (Op::New, Object::Chain),
                msg::DELCHAIN => (Op::Delete, Object::Chain),
                msg::NEWRULE => (Op::New, Object::Rule),
                msg::DELRULE => (Op::Delete, Object::Rule),
                NEWSET => (Op::New, Object::Set),
                DELSET => (Op::Delete, Object::Set),
                NEWSETELEM => (Op::New, Object::Element),
                DELSETELEM => (Op::Delete, Object::Element),
                NEWOBJ | NEWFLOWTABLE => (Op::New, Object::Other),
                DELOBJ | DELFLOWTABLE => (Op::Delete, Object::Other),
                _ => continue,
            };
            let Some(table) = wire::attr_str(&reply.attrs, ATTR_TABLE) else {
                continue;
            };
            let chain = match object {
                Object::Chain => wire::attr_str(&reply.attrs, CHAIN_NAME),
                Object::Rule => wire::attr_str(&reply.attrs, RULE_CHAIN),
                _ => None,
            };
            if (op, object) == (Op::Delete, Object::Rule) {
                self.keep_counts(&reply);
            }
            // A flush of a big table announces thousands of rules; the
            // first of each (op, object, table, chain) says enough.
            if self.pending.notices.len() < MAX_NOTICES {
                self.pending.notices.push(Notice {
                    op,
                    object,
                    family: reply.family,
                    table,
                    chain,
                });
            }
        }
        done
    }

    fn keep_counts(&mut self, reply: &Reply) {
        let Some(rule) = parse_rule(reply) else {
            self.pending
                .lost_iptables_counters
                .extend(iptables_accounting_counts(reply));
            return;
        };
        if !is_accounting_chain(&rule.chain) || rule.counter.is_none() {
            return;
        }
        let family: Family = rule.family;
        if let Ok(samples) = counters_of(family, std::slice::from_ref(&rule)) {
            self.pending.lost_counters.extend(samples);
        }
    }
}

/// The final counts of a deleted rule of an accounting chain in
/// iptables-nft's `mangle` table, as the iptables backend writes them:
/// `-m mark --mark V/M -j RETURN` (the mark match in nf_tables' own
/// expressions, or xt's `mark` match of older iptables-nft) with a counter,
/// or a counter alone. Anything else yields nothing.
fn iptables_accounting_counts(reply: &Reply) -> Vec<CounterSample> {
    let Some(family) = family_of(reply.family) else {
        return Vec::new();
    };
    let Some(chain) = wire::attr_str(&reply.attrs, RULE_CHAIN) else {
        return Vec::new();
    };
    if wire::attr_str(&reply.attrs, ATTR_TABLE).as_deref() != Some("mangle")
        || !is_accounting_chain(&chain)
    {
        return Vec::new();
    }
    let Some((spec, (packets, bytes))) = iptables_accounting_rule(reply) else {
        return Vec::new();
    };
    let text = format!("[{packets}:{bytes}] -A {chain} {spec}\n");
    crate::counters::parse_counters(&text, family).unwrap_or_default()
}

/// The iptables spec and the counts of an accounting rule, read from its
/// expressions.
fn iptables_accounting_rule(reply: &Reply) -> Option<(String, (u64, u64))> {
    const META_KEY: u16 = 2;
    const META_MARK: u32 = 3;
    const BITWISE_MASK: u16 = 4;
    const BITWISE_XOR: u16 = 5;
    const CMP_OP: u16 = 2;
    const CMP_DATA: u16 = 3;
    const CMP_EQ: u32 = 0;
    const DATA_VALUE: u16 = 1;
    const MATCH_NAME: u16 = 1;
    const MATCH_INFO: u16 = 3;
    const NFT_RETURN: u32 = -5i32 as u32;
    let value = |data: &[u8], ty: u16| -> Option<u32> {
        let bytes = wire::attr(wire::attr(data, ty)?, DATA_VALUE)?;
        Some(u32::from_ne_bytes(bytes.try_into().ok()?))
    };
    let list = wire::attr(&reply.attrs, rule_attr::EXPRESSIONS)?;
    let (mut mark, mut mask, mut counts, mut returns) = (None, None, None, false);
    let mut loaded = false;
    for (_, e) in wire::attrs(list) {
        let data = wire::attr(e, wire::NFTA_EXPR_DATA).unwrap_or(&[]);
        match wire::attr_str(e, wire::NFTA_EXPR_NAME)?.as_str() {
            "meta" if wire::attr_be32(data, META_KEY) == Some(META_MARK) => loaded = true,
            "bitwise" if loaded && value(data, BITWISE_XOR) == Some(0) => {
                mask = Some(value(data, BITWISE_MASK)?);
            }
            "cmp" if loaded && wire::attr_be32(data, CMP_OP) == Some(CMP_EQ) => {
                mark = Some(value(data, CMP_DATA)?);
            }
            "match" if wire::attr_str(data, MATCH_NAME).as_deref() == Some("mark") => {
                // struct xt_mark_mtinfo1 { u32 mark, mask; u8 invert; }
                let info = wire::attr(data, MATCH_INFO)?;
                let word = |at: usize| {
                    info.get(at..at + 4)
                        .and_then(|b| b.try_into().ok())
                        .map(u32::from_ne_bytes)
                };
                if info.get(8).copied().unwrap_or(1) != 0 {
                    return None;
                }
                mark = Some(word(0)?);
                mask = Some(word(4)?);
            }
            "counter" => {
                counts = Some((
                    wire::attr_be64(data, 2).unwrap_or(0),
                    wire::attr_be64(data, 1).unwrap_or(0),
                ));
            }
            "immediate" => {
                let code = wire::attr(data, 2)
                    .and_then(|d| wire::attr(d, 2))
                    .and_then(|v| wire::attr_be32(v, 1));
                if code != Some(NFT_RETURN) {
                    return None;
                }
                returns = true;
            }
            _ => return None,
        }
    }
    let counts = counts?;
    match (mark, mask, returns) {
        (Some(mark), Some(mask), true) => Some((
            format!("-m mark --mark {mark:#x}/{mask:#x} -j RETURN"),
            counts,
        )),
        (None, None, false) if !loaded => Some((String::new(), counts)),
        _ => None,
    }
}

/// Most notices kept per transaction (the counters of deleted accounting
/// rules are kept whatever their number).
const MAX_NOTICES: usize = 4096;

/// The subscription: a netlink socket in `NFNLGRP_NFTABLES`.
#[derive(Debug)]
pub struct Monitor {
    fd: OwnedFd,
    buf: Vec<u8>,
    assembler: Assembler,
}

/// What one read found.
#[derive(Debug, Default)]
pub struct Events {
    pub transactions: Vec<Transaction>,
    /// The socket overflowed: notifications were lost, so what changed is
    /// not known in full.
    pub overrun: bool,
}

impl Monitor {
    /// Subscribes (in the calling thread's network namespace). The socket
    /// is non-blocking; register [`Monitor::fd`] for readability.
    pub fn open() -> io::Result<Monitor> {
        // SAFETY: plain socket(2); the result is checked.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                libc::NETLINK_NETFILTER,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // A `flush ruleset` of a big host announces every rule: room for a
        // burst (SO_RCVBUFFORCE goes past rmem_max with CAP_NET_ADMIN).
        let size: libc::c_int = 16 << 20;
        for opt in [libc::SO_RCVBUFFORCE, libc::SO_RCVBUF] {
            // SAFETY: `size` is a valid c_int for the call.
            let rc = unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    opt,
                    (&size as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            if rc == 0 {
                break;
            }
        }
        // SAFETY: sockaddr_nl is plain data.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        addr.nl_groups = 1 << (NFNLGRP_NFTABLES - 1);
        // SAFETY: addr is a valid sockaddr_nl for the call.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Monitor {
            fd,
            buf: vec![0u8; 1 << 16],
            assembler: Assembler::default(),
        })
    }

    /// The descriptor to poll.
    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Reads every queued notification (edge-triggered callers: until
    /// empty).
    pub fn read(&mut self) -> io::Result<Events> {
        let mut events = Events::default();
        loop {
            // SAFETY: buf has buf.len() writable bytes.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    self.buf.as_mut_ptr().cast(),
                    self.buf.len(),
                    libc::MSG_TRUNC,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::EINTR) => continue,
                    Some(libc::EAGAIN) => return Ok(events),
                    Some(libc::ENOBUFS) => {
                        // What was half-assembled may be missing pieces.
                        self.assembler = Assembler::default();
                        events.overrun = true;
                        continue;
                    }
                    _ => return Err(e),
                }
            }
            let n = n as usize;
            if n > self.buf.len() {
                // Truncated: grow for the next one; this one is lost.
                self.buf.resize(n.next_power_of_two(), 0);
                self.assembler = Assembler::default();
                events.overrun = true;
                continue;
            }
            events
                .transactions
                .extend(self.assembler.feed(&self.buf[..n]));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nft::wire::MsgBuilder;

    fn object(ty: u16, family: u8, table: &str, chain: Option<&str>) -> Vec<u8> {
        let mut m = MsgBuilder::nft(ty, 0, 0, family);
        m.str(ATTR_TABLE, table);
        if let Some(c) = chain {
            m.str(
                if ty == msg::DELRULE || ty == msg::NEWRULE {
                    RULE_CHAIN
                } else {
                    CHAIN_NAME
                },
                c,
            );
        }
        m.finish()
    }

    fn gen(pid: u32, name: &str) -> Vec<u8> {
        let mut m = MsgBuilder::nft(NEWGEN, 0, 0, 0);
        m.be32(1, 77);
        m.be32(GEN_PROC_PID, pid);
        m.str(GEN_PROC_NAME, name);
        m.finish()
    }

    #[test]
    fn notices_are_grouped_by_transaction_with_the_committing_process() {
        let mut a = Assembler::default();
        let mut datagram = object(msg::DELTABLE, wire::NFPROTO_IPV4, "patchpanel_nat", None);
        datagram.extend(object(msg::DELCHAIN, NFPROTO_INET, "filter", Some("input")));
        datagram.extend(gen(42, "nft"));
        datagram.extend(object(
            msg::NEWRULE,
            wire::NFPROTO_IPV6,
            "filter",
            Some("FORWARD"),
        ));
        let done = a.feed(&datagram);
        assert_eq!(done.len(), 1);
        let t = &done[0];
        assert_eq!((t.pid, t.process.as_str()), (Some(42), "nft"));
        assert_eq!(t.notices.len(), 2);
        assert!(t.touches(
            |family, table| family == wire::NFPROTO_IPV4 && table.starts_with("patchpanel_")
        ));
        assert!(!t.touches(|_, table| table == "nat"));
        assert_eq!(
            t.describe(),
            "nft (pid 42): delete table ip patchpanel_nat, delete chain inet filter input (2 objects)"
        );
        // The rule waits for its transaction's end.
        let done = a.feed(&gen(7, "iptables-nft-re"));
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].notices[0].chain.as_deref(), Some("FORWARD"));
        assert_eq!(done[0].notices[0].op, Op::New);
    }

    fn expr(m: &mut MsgBuilder, name: &str, data: impl FnOnce(&mut MsgBuilder)) {
        let e = m.nest(wire::NFTA_LIST_ELEM);
        m.str(wire::NFTA_EXPR_NAME, name);
        let d = m.nest(wire::NFTA_EXPR_DATA);
        data(m);
        m.end(d);
        m.end(e);
    }

    fn value(m: &mut MsgBuilder, ty: u16, v: u32) {
        let n = m.nest(ty);
        m.attr(1, &v.to_ne_bytes());
        m.end(n);
    }

    /// A rule of `table`/`chain` deleted with final counts, as iptables-nft
    /// writes the iptables backend's accounting rules: `-m mark --mark
    /// mark/0x3f00 -j RETURN` (native expressions) or, without a mark, a
    /// counter alone.
    fn deleted_rule(table: &str, chain: &str, mark: Option<u32>, counts: (u64, u64)) -> Vec<u8> {
        let mut m = MsgBuilder::nft(msg::DELRULE, 0, 0, wire::NFPROTO_IPV4);
        m.str(ATTR_TABLE, table);
        m.str(RULE_CHAIN, chain);
        m.be64(rule_attr::HANDLE, 9);
        let list = m.nest(rule_attr::EXPRESSIONS);
        if let Some(mark) = mark {
            expr(&mut m, "meta", |m| {
                m.be32(2, 3); // NFTA_META_KEY: mark
                m.be32(1, 1); // NFTA_META_DREG
            });
            expr(&mut m, "bitwise", |m| {
                m.be32(1, 1);
                m.be32(2, 1);
                m.be32(3, 4);
                value(m, 4, 0x3f00);
                value(m, 5, 0);
            });
            expr(&mut m, "cmp", |m| {
                m.be32(1, 1);
                m.be32(2, 0); // NFT_CMP_EQ
                value(m, 3, mark);
            });
        }
        expr(&mut m, "counter", |m| {
            m.be64(1, counts.1);
            m.be64(2, counts.0);
        });
        if mark.is_some() {
            expr(&mut m, "immediate", |m| {
                m.be32(1, 0);
                let d = m.nest(2);
                let v = m.nest(2);
                m.be32(1, -5i32 as u32); // NFT_RETURN
                m.end(v);
                m.end(d);
            });
        }
        m.end(list);
        m.finish()
    }

    #[test]
    fn the_final_counts_of_the_iptables_backends_accounting_rules_are_kept_apart() {
        let mut a = Assembler::default();
        let mut datagram = deleted_rule("mangle", "rx_eth0", Some(0x2000), (7, 700));
        datagram.extend(deleted_rule("mangle", "rx_eth0", None, (3, 300)));
        // Not an accounting chain, not iptables' mangle table.
        datagram.extend(deleted_rule("mangle", "PREROUTING", None, (1, 1)));
        datagram.extend(deleted_rule("filter", "tx_eth0", None, (1, 1)));
        datagram.extend(gen(42, "iptables-nft-re"));
        let done = a.feed(&datagram);
        assert_eq!(done.len(), 1);
        let lost = &done[0].lost_iptables_counters;
        assert_eq!(lost.len(), 2, "{lost:?}");
        assert_eq!(
            lost[0].source,
            crate::fwmark::TrafficSource::from_fwmark(0x2000)
        );
        assert_eq!((lost[0].packets, lost[0].bytes), (7, 700));
        assert_eq!(lost[0].ifname, "eth0");
        assert_eq!((lost[1].source, lost[1].packets), (None, 3));
        assert!(
            done[0].lost_counters.is_empty(),
            "not the nftables backend's"
        );
    }

    #[test]
    fn a_truncated_or_corrupted_deleted_rule_is_read_without_panicking() {
        let mut datagram = deleted_rule("mangle", "rx_eth0", Some(0x2000), (7, 700));
        datagram.extend(gen(42, "iptables-nft-re"));
        for len in 0..datagram.len() {
            let _ = Assembler::default().feed(&datagram[..len]);
        }
        for at in 0..datagram.len() {
            for byte in [0x00, 0x01, 0x7f, 0xff] {
                let mut bad = datagram.clone();
                bad[at] = byte;
                let _ = Assembler::default().feed(&bad);
            }
        }
    }

    #[test]
    fn garbage_is_skipped() {
        let mut a = Assembler::default();
        assert!(a.feed(&[1, 2, 3]).is_empty());
        assert!(a.feed(&[0xff; 64]).is_empty());
        // A message without a table names nothing.
        let mut m = MsgBuilder::nft(msg::DELCHAIN, 0, 0, wire::NFPROTO_IPV4).finish();
        m.extend(gen(1, "x"));
        let done = a.feed(&m);
        assert_eq!(done.len(), 1);
        assert!(done[0].notices.is_empty());
    }
}
