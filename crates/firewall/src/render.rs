//! Batches as `iptables-restore --noflush` input.
//!
//! The text is the contract (unit tests compare it exactly), so rendering is
//! deterministic: tables in [`Table::ALL`] order, changes in the order given,
//! matches in the order given, the comment just before the target, numbers
//! in lower-case hex (marks) or decimal (ports, uids, class ids).
//!
//! What a `--noflush` batch must never contain (measured, DESIGN §7): a
//! `:chain - [0:0]` line for a chain that may exist (it flushes it). New
//! chains are `-N`, which fails the batch if the chain exists. Only
//! [`FirewallBackend::setup`](crate::backend::FirewallBackend::setup) uses
//! `:chain` lines, for the static chains it rewrites on purpose.

use std::fmt::Write as _;
use std::net::IpAddr;

use crate::model::{Batch, Change, CtStates, Family, Match, Rule, Table, Target, TcpFlags};

/// The whole restore input for `family`: one `*table` … `COMMIT` block per
/// table that has changes. Empty when there is nothing to do.
pub fn render(batch: &Batch, family: Family) -> String {
    Table::ALL
        .into_iter()
        .filter_map(|table| render_table(batch.changes(family), table))
        .collect()
}

/// The block for one table, or `None` if `changes` has none for it.
pub fn render_table(changes: &[Change], table: Table) -> Option<String> {
    let lines: Vec<String> = changes
        .iter()
        .filter(|c| c.table() == table)
        .flat_map(change_lines)
        .collect();
    if lines.is_empty() {
        return None;
    }
    Some(table_block(table, &lines))
}

/// `*table`, the lines, `COMMIT`, each newline-terminated.
pub(crate) fn table_block(table: Table, lines: &[String]) -> String {
    let mut text = format!("*{}\n", table.name());
    for line in lines {
        text.push_str(line);
        text.push('\n');
    }
    text.push_str("COMMIT\n");
    text
}

/// The restore lines of one change (one line, two for DeleteChain).
pub fn change_lines(change: &Change) -> Vec<String> {
    match change {
        Change::NewChain { chain, .. } => vec![format!("-N {chain}")],
        Change::DeleteChain { chain, .. } => vec![format!("-F {chain}"), format!("-X {chain}")],
        Change::FlushChain { chain, .. } => vec![format!("-F {chain}")],
        Change::Append { chain, rule, .. } => vec![command_line(format!("-A {chain}"), rule)],
        Change::Insert {
            chain,
            position,
            rule,
            ..
        } => vec![command_line(format!("-I {chain} {position}"), rule)],
        Change::Delete { chain, rule, .. } => vec![command_line(format!("-D {chain}"), rule)],
    }
}

/// `command` (e.g. `-A chain`) followed by the rule's specification.
pub(crate) fn command_line(command: String, rule: &Rule) -> String {
    let spec = rule_spec(rule);
    let mut line = command;
    if !spec.is_empty() {
        line.push(' ');
        line.push_str(&spec);
    }
    line
}

/// The rule's specification: everything after `-A <chain> `.
pub fn rule_spec(rule: &Rule) -> String {
    let mut words: Vec<String> = rule.matches.iter().map(match_text).collect();
    if let Some(comment) = &rule.comment {
        words.push(format!("-m comment --comment {}", comment.as_str()));
    }
    let target = target_text(&rule.target);
    if !target.is_empty() {
        words.push(target);
    }
    words.join(" ")
}

fn not(negate: bool) -> &'static str {
    if negate {
        "! "
    } else {
        ""
    }
}

fn match_text(m: &Match) -> String {
    match m {
        Match::InInterface(i) | Match::OutInterface(i) => {
            let flag = if matches!(m, Match::InInterface(_)) {
                "-i"
            } else {
                "-o"
            };
            let plus = if i.wildcard { "+" } else { "" };
            format!("{}{flag} {}{plus}", not(i.negate), i.name)
        }
        Match::Source(a) => format!("{}-s {}", not(a.negate), a.cidr),
        Match::Destination(a) => format!("{}-d {}", not(a.negate), a.cidr),
        Match::Protocol(p) => format!("-p {}", p.name()),
        Match::SourcePort(p) => format!("--sport {p}"),
        Match::DestinationPort(p) => format!("--dport {p}"),
        Match::TcpFlags(f) => format!(
            "{}--tcp-flags {} {}",
            not(f.negate),
            tcp_flags_text(f.mask),
            tcp_flags_text(f.set)
        ),
        Match::Mark(mm) => format!(
            "-m mark {}--mark {:#x}/{:#x}",
            not(mm.negate),
            mm.value,
            mm.mask
        ),
        Match::ConnState(s) => format!(
            "-m conntrack {}--ctstate {}",
            not(s.negate),
            ct_states_text(s.states)
        ),
        Match::SocketNoWildcard => "-m socket --nowildcard".to_string(),
        Match::UidOwner { uid, negate } => format!("-m owner {}--uid-owner {uid}", not(*negate)),
        Match::Cgroup { classid } => format!("-m cgroup --cgroup {classid}"),
    }
}

fn names_text(bits: u8, names: &[(u8, &str)]) -> String {
    let parts: Vec<&str> = names
        .iter()
        .filter(|(bit, _)| bits & bit != 0)
        .map(|(_, name)| *name)
        .collect();
    if parts.is_empty() {
        "NONE".to_string()
    } else {
        parts.join(",")
    }
}

fn tcp_flags_text(flags: TcpFlags) -> String {
    names_text(flags.0, &TcpFlags::NAMES)
}

fn ct_states_text(states: CtStates) -> String {
    names_text(states.0, &CtStates::NAMES)
}

/// The `-j ...` part of a rule (empty for [`Target::Count`]).
/// A target as iptables writes it (`-j MARK --set-xmark 0x1/0xff`).
impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&target_text(self))
    }
}

/// A change as `iptables-restore` lines, joined by ` / `.
impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&change_lines(self).join(" / "))
    }
}

pub fn target_text(target: &Target) -> String {
    match target {
        Target::Accept => "-j ACCEPT".to_string(),
        Target::Drop => "-j DROP".to_string(),
        Target::Reject => "-j REJECT".to_string(),
        Target::Return => "-j RETURN".to_string(),
        Target::Jump(chain) => format!("-j {chain}"),
        Target::SetMark { value, mask } => format!("-j MARK --set-mark {value:#x}/{mask:#x}"),
        Target::SetXmark { value, mask } => format!("-j MARK --set-xmark {value:#x}/{mask:#x}"),
        Target::ConnmarkRestore { mask } => format!("-j CONNMARK --restore-mark --mask {mask:#x}"),
        Target::ConnmarkRestoreMasks { nfmask, ctmask } => {
            format!("-j CONNMARK --restore-mark --nfmask {nfmask:#x} --ctmask {ctmask:#x}")
        }
        Target::ConnmarkSave { mask } => format!("-j CONNMARK --save-mark --mask {mask:#x}"),
        Target::ConnmarkSet { value, mask } => {
            format!("-j CONNMARK --set-mark {value:#x}/{mask:#x}")
        }
        Target::Masquerade => "-j MASQUERADE".to_string(),
        Target::Dnat { addr, port } => {
            let mut text = String::from("-j DNAT --to-destination ");
            match (addr, port) {
                (IpAddr::V6(a), Some(p)) => {
                    let _ = write!(text, "[{a}]:{p}");
                }
                (a, Some(p)) => {
                    let _ = write!(text, "{a}:{p}");
                }
                (a, None) => {
                    let _ = write!(text, "{a}");
                }
            }
            text
        }
        Target::Count => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use patchpanel_names::IfName;

    use super::*;
    use crate::model::{
        AddrMatch, Cidr, Comment, CtStateMatch, IfMatch, OwnedChain, Protocol, TcpFlagsMatch,
    };

    fn chain(name: &str) -> OwnedChain {
        OwnedChain::new(name).unwrap()
    }

    fn ifname(name: &str) -> IfName {
        IfName::new(name).unwrap()
    }

    #[test]
    fn every_match_and_target_renders_as_iptables_expects() {
        let rule = Rule::new(Target::Return)
            .with(Match::Source(AddrMatch {
                cidr: Cidr::new(IpAddr::V4(Ipv4Addr::new(100, 115, 92, 0)), 23).unwrap(),
                negate: true,
            }))
            .with(Match::dst(Cidr::host(IpAddr::V4(Ipv4Addr::new(
                10, 0, 0, 1,
            )))))
            .with(Match::InInterface(IfMatch {
                name: ifname("wwan"),
                wildcard: true,
                negate: false,
            }))
            .with(Match::OutInterface(IfMatch {
                name: ifname("eth0"),
                wildcard: false,
                negate: true,
            }))
            .with(Match::Protocol(Protocol::Tcp))
            .with(Match::SourcePort(1024))
            .with(Match::DestinationPort(53))
            .with(Match::TcpFlags(TcpFlagsMatch {
                mask: TcpFlags::FIN.union(TcpFlags::PSH),
                set: TcpFlags::FIN.union(TcpFlags::PSH),
                negate: false,
            }))
            .with(Match::not_mark(0, 0x3f00))
            .with(Match::ConnState(CtStateMatch {
                states: CtStates::ESTABLISHED.union(CtStates::RELATED),
                negate: false,
            }))
            .with(Match::SocketNoWildcard)
            .with(Match::UidOwner {
                uid: 1000,
                negate: true,
            })
            .with(Match::Cgroup { classid: 0x10001 })
            .commented(Comment::new("patchpanel").unwrap());
        assert_eq!(
            rule_spec(&rule),
            "! -s 100.115.92.0/23 -d 10.0.0.1/32 -i wwan+ ! -o eth0 -p tcp --sport 1024 \
             --dport 53 --tcp-flags FIN,PSH FIN,PSH -m mark ! --mark 0x0/0x3f00 \
             -m conntrack --ctstate RELATED,ESTABLISHED -m socket --nowildcard \
             -m owner ! --uid-owner 1000 -m cgroup --cgroup 65537 \
             -m comment --comment patchpanel -j RETURN"
        );
    }

    #[test]
    fn targets_render_with_their_options() {
        let cases = [
            (Target::Accept, "-j ACCEPT"),
            (Target::Drop, "-j DROP"),
            (Target::Reject, "-j REJECT"),
            (Target::Jump(chain("apply_vpn_mark")), "-j apply_vpn_mark"),
            (
                Target::SetMark {
                    value: 0x1,
                    mask: 0x1,
                },
                "-j MARK --set-mark 0x1/0x1",
            ),
            (
                Target::SetXmark {
                    value: 0x100,
                    mask: 0x3f00,
                },
                "-j MARK --set-xmark 0x100/0x3f00",
            ),
            (
                Target::ConnmarkRestore { mask: 0x3f00 },
                "-j CONNMARK --restore-mark --mask 0x3f00",
            ),
            (
                Target::ConnmarkRestoreMasks {
                    nfmask: 0xffff0000,
                    ctmask: 0xffff0000,
                },
                "-j CONNMARK --restore-mark --nfmask 0xffff0000 --ctmask 0xffff0000",
            ),
            (
                Target::ConnmarkSave { mask: 0x3f00 },
                "-j CONNMARK --save-mark --mask 0x3f00",
            ),
            (
                Target::ConnmarkSet {
                    value: 0x3ea0000,
                    mask: 0xffff0000,
                },
                "-j CONNMARK --set-mark 0x3ea0000/0xffff0000",
            ),
            (Target::Masquerade, "-j MASQUERADE"),
            (
                Target::Dnat {
                    addr: IpAddr::V4(Ipv4Addr::new(100, 115, 92, 2)),
                    port: None,
                },
                "-j DNAT --to-destination 100.115.92.2",
            ),
            (
                Target::Dnat {
                    addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
                    port: Some(5555),
                },
                "-j DNAT --to-destination 127.0.0.1:5555",
            ),
            (
                Target::Dnat {
                    addr: IpAddr::V6(Ipv6Addr::LOCALHOST),
                    port: Some(80),
                },
                "-j DNAT --to-destination [::1]:80",
            ),
            (Target::Count, ""),
        ];
        for (target, text) in cases {
            assert_eq!(target_text(&target), text);
        }
    }

    #[test]
    fn a_batch_renders_one_block_per_table_in_fixed_order() {
        let mut batch = Batch::new();
        let fwd = chain("guest_forward");
        let pre = chain("PREROUTING_arc_ns0");
        batch.ipv4.push(Change::Append {
            table: Table::Filter,
            chain: fwd.clone(),
            rule: Rule::new(Target::Accept).with(Match::iif(&ifname("arc_ns0"))),
        });
        batch.ipv4.push(Change::NewChain {
            table: Table::Mangle,
            chain: pre.clone(),
        });
        batch.ipv4.push(Change::Insert {
            table: Table::Filter,
            chain: fwd.clone(),
            position: 1,
            rule: Rule::new(Target::Drop),
        });
        batch.ipv4.push(Change::Delete {
            table: Table::Filter,
            chain: fwd,
            rule: Rule::new(Target::Count),
        });
        batch.ipv4.push(Change::DeleteChain {
            table: Table::Mangle,
            chain: pre,
        });
        assert_eq!(
            render(&batch, Family::V4),
            "*filter\n\
             -A guest_forward -i arc_ns0 -j ACCEPT\n\
             -I guest_forward 1 -j DROP\n\
             -D guest_forward\n\
             COMMIT\n\
             *mangle\n\
             -N PREROUTING_arc_ns0\n\
             -F PREROUTING_arc_ns0\n\
             -X PREROUTING_arc_ns0\n\
             COMMIT\n"
        );
        assert_eq!(render(&batch, Family::V6), "");
    }
}

/// A rendered rule spec as `iptables-save` spells it back: `MARK` and
/// `CONNMARK --set-mark v/m` as `--set-xmark v/m` (the same with `v`
/// inside `m`, which validation ensures), `CONNMARK --save-mark`/
/// `--restore-mark --mask M` as `--nfmask M --ctmask M`. Dumps of either
/// backend then read the same.
pub fn saved_form(spec: &str) -> String {
    let words = saved_order(spec);
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    let mut out: Vec<String> = Vec::with_capacity(words.len() + 2);
    let mut target = "";
    let mut i = 0;
    while i < words.len() {
        let w = words[i];
        if i > 0 && words[i - 1] == "-j" {
            target = w;
        }
        match (target, w) {
            ("MARK" | "CONNMARK", "--set-mark") => out.push("--set-xmark".into()),
            ("CONNMARK", "--mask") if i + 1 < words.len() => {
                out.push("--nfmask".into());
                out.push(words[i + 1].into());
                out.push("--ctmask".into());
                out.push(words[i + 1].into());
                i += 1;
            }
            _ => out.push(w.into()),
        }
        i += 1;
    }
    out.join(" ")
}

/// The words of `spec` in iptables-save's order: `-s`, `-d`, `-i`, `-o`,
/// `-p` (each with its `!`), then `-m tcp`/`-m udp` before the port and
/// flag options, then the rest as rendered.
fn saved_order(spec: &str) -> Vec<String> {
    let words: Vec<&str> = spec.split_whitespace().collect();
    let mut basic: [Vec<&str>; 5] = Default::default();
    let mut ports: Vec<&str> = Vec::new();
    let mut rest: Vec<&str> = Vec::new();
    let mut proto = None;
    let mut i = 0;
    while i < words.len() {
        let negated = words[i] == "!" && i + 1 < words.len();
        let opt = if negated { words[i + 1] } else { words[i] };
        let start = i;
        let slot = match opt {
            "-s" => Some(0),
            "-d" => Some(1),
            "-i" => Some(2),
            "-o" => Some(3),
            "-p" => Some(4),
            _ => None,
        };
        let arity = match opt {
            "--tcp-flags" => 2,
            "-s" | "-d" | "-i" | "-o" | "-p" | "--sport" | "--dport" => 1,
            _ => 0,
        };
        let end = (i + usize::from(negated) + 1 + arity).min(words.len());
        if opt == "-p" {
            proto = words.get(end - 1).copied();
        }
        if let Some(slot) = slot {
            basic[slot].extend_from_slice(&words[start..end]);
            i = end;
        } else if arity > 0 {
            ports.extend_from_slice(&words[start..end]);
            i = end;
        } else {
            rest.push(words[i]);
            i += 1;
        }
    }
    let mut out: Vec<String> = basic.concat().into_iter().map(String::from).collect();
    if !ports.is_empty() {
        if let Some(p) = proto {
            out.push("-m".into());
            out.push(p.into());
        }
        out.extend(ports.into_iter().map(String::from));
    }
    out.extend(rest.into_iter().map(String::from));
    out
}

#[cfg(test)]
mod saved_form_tests {
    use super::saved_form;

    #[test]
    fn marks_and_connmarks_read_as_iptables_save_prints_them() {
        assert_eq!(
            saved_form("-j MARK --set-mark 0x1/0x1"),
            "-j MARK --set-xmark 0x1/0x1"
        );
        assert_eq!(
            saved_form("-i eth0 -j CONNMARK --restore-mark --mask 0x3f00"),
            "-i eth0 -j CONNMARK --restore-mark --nfmask 0x3f00 --ctmask 0x3f00"
        );
        assert_eq!(
            saved_form("-j CONNMARK --set-mark 0x3ea0000/0xffff0000"),
            "-j CONNMARK --set-xmark 0x3ea0000/0xffff0000"
        );
        assert_eq!(
            saved_form("-p tcp --dport 9090 -i eth0 -j ACCEPT"),
            "-i eth0 -p tcp -m tcp --dport 9090 -j ACCEPT"
        );
        assert_eq!(
            saved_form("-i eth0 ! -d 10.0.0.1/32 -p udp --sport 53 -m mark --mark 0x1/0x1 -j DROP"),
            "! -d 10.0.0.1/32 -i eth0 -p udp -m udp --sport 53 -m mark --mark 0x1/0x1 -j DROP"
        );
        // A mark match is left alone.
        assert_eq!(
            saved_form("-m mark --mark 0x1/0x1 -j MASQUERADE"),
            "-m mark --mark 0x1/0x1 -j MASQUERADE"
        );
    }

    #[test]
    fn sources_come_before_destinations() {
        assert_eq!(
            saved_form("-d 10.0.0.0/8 -s 100.115.92.0/23 -j ACCEPT"),
            "-s 100.115.92.0/23 -d 10.0.0.0/8 -j ACCEPT"
        );
    }

    #[test]
    fn the_output_interface_comes_before_the_protocol() {
        assert_eq!(
            saved_form("-p tcp -o eth0 --dport 80 -j ACCEPT"),
            "-o eth0 -p tcp -m tcp --dport 80 -j ACCEPT"
        );
    }

    #[test]
    fn tcp_flags_follow_the_protocol_with_its_match() {
        assert_eq!(
            saved_form("-p tcp --tcp-flags SYN,RST SYN -j DROP"),
            "-p tcp -m tcp --tcp-flags SYN,RST SYN -j DROP"
        );
    }

    #[test]
    fn a_protocol_without_port_or_flag_options_gets_no_match_module() {
        assert_eq!(saved_form("-p tcp -j ACCEPT"), "-p tcp -j ACCEPT");
    }

    #[test]
    fn a_leading_negation_stays_with_its_option() {
        assert_eq!(
            saved_form("! -s 10.0.0.0/8 -j ACCEPT"),
            "! -s 10.0.0.0/8 -j ACCEPT"
        );
    }

    #[test]
    fn a_trailing_negation_is_kept_as_a_word() {
        assert_eq!(saved_form("-j ACCEPT !"), "-j ACCEPT !");
    }

    #[test]
    fn a_connmark_mask_without_a_value_is_kept_as_is() {
        assert_eq!(
            saved_form("-j CONNMARK --save-mark --mask"),
            "-j CONNMARK --save-mark --mask"
        );
    }
}
