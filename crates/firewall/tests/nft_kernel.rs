//! Kernel tests of the native nf_tables backend (root only).
//!
//! Each test runs in a thread that first moves itself into a fresh network
//! namespace (`unshare(CLONE_NEWNET)`); the backend's netlink socket and
//! the `nft`/`ping` processes it spawns live there. The host's root
//! namespace is never touched. What the kernel holds is read back with
//! `nft`, an independent tool.

#![allow(clippy::unwrap_used)] // test helpers: a failure is a test failure

use std::net::Ipv4Addr;

use patchpanel_firewall::counters;
use patchpanel_firewall::guest::{self, Mode, Namespace};
use patchpanel_firewall::layout::{LayoutConfig, LocalTraffic};
use patchpanel_firewall::model::{Family, Match, Rule, Table, Target};
use patchpanel_firewall::ports::{self, Forwarding, PortProtocol};
use patchpanel_firewall::{
    Batch, Change, FirewallBackend, FirewallError, Layout, Nftables, OwnedChain, TrafficSource,
};
use patchpanel_names::IfName;

mod common;

use common::{in_fresh_netns, run};

/// The whole rule set as `nft` prints it, handles and counters aside.
fn ruleset() -> String {
    run("nft", &["list", "ruleset"], None)
        .lines()
        .map(|l| {
            // A named counter's "packets 3 bytes 252" -> "packets bytes".
            if l.trim_start().starts_with("packets ") {
                return "packets bytes".to_string();
            }
            // "counter packets 3 bytes 252" -> "counter"
            match l.find("counter packets") {
                Some(i) => {
                    let rest = &l[i..];
                    let end = rest.find(" bytes ").map(|j| {
                        let after = &rest[j + 7..];
                        j + 7 + after.find(' ').unwrap_or(after.len())
                    });
                    format!("{}counter{}", &l[..i], &rest[end.unwrap_or(rest.len())..])
                }
                None => l.to_string(),
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A host that already has iptables-nft rules and a foreign nft table.
fn load_host_fixture() {
    run(
        "iptables-nft-restore",
        &["--noflush", "-w"],
        Some("*filter\n:FORWARD DROP [0:0]\n-A INPUT -s 10.9.9.9/32 -j DROP\nCOMMIT\n*nat\n-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE\nCOMMIT\n"),
    );
    run(
        "nft",
        &["-f", "-"],
        Some("table inet host {\n chain input {\n  type filter hook input priority 10; policy accept;\n  tcp dport 22 accept\n }\n}\n"),
    );
}

fn ifname(name: &str) -> IfName {
    IfName::new(name).unwrap()
}

fn namespace() -> Namespace {
    Namespace {
        host_ifname: ifname("arc_ns0"),
        host_ipv4: Ipv4Addr::new(100, 115, 92, 129),
        peer_ipv4: Ipv4Addr::new(100, 115, 92, 130),
        ipv6: Some((
            "fd00:1:2:3::1".parse().unwrap(),
            "fd00:1:2:3::2".parse().unwrap(),
        )),
        source: TrafficSource::System,
        mode: Mode::System,
    }
}

fn local_layout() -> Layout {
    Layout::new(&LayoutConfig {
        local_traffic: Some(LocalTraffic {
            uid_sources: vec![(1000, TrafficSource::User)],
            update_engine_cgroup: Some(0x10001),
        }),
        guest_dhcp: vec![IfName::new("vmtap").expect("prefix")],
    })
}

#[test]
fn setup_apply_inverse_and_remove_all_leave_the_ruleset_exactly_as_found() {
    in_fresh_netns(|| {
        load_host_fixture();
        let before = ruleset();
        let mut fw = Nftables::new().unwrap();
        let layout = local_layout();
        let report = fw.setup(&layout).unwrap();
        assert!(!report.created.is_empty());
        let after_setup = ruleset();
        for t in [
            "ip patchpanel_filter",
            "ip6 patchpanel_nat",
            "ip6 patchpanel_mangle",
        ] {
            assert!(
                after_setup.contains(&format!("table {t} {{")),
                "{t}\n{after_setup}"
            );
        }
        assert!(
            after_setup.contains("type filter hook forward priority filter - 1; policy accept;"),
            "{after_setup}"
        );
        assert!(after_setup.contains("type route hook output priority mangle; policy accept;"));
        // The host's own rules are untouched.
        assert!(after_setup.contains("tcp dport 22 accept"));

        let batch = guest::connected_namespace(&namespace());
        fw.apply(&batch).unwrap();
        let v4 = fw.dump(Family::V4).unwrap();
        for line in [
            "-A guest_forward -o arc_ns0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
            "-A guest_forward -i arc_ns0 -j ACCEPT",
            "-A PREROUTING_arc_ns0 -j MARK --set-xmark 0x1/0x1",
            "-A PREROUTING_arc_ns0 -j restore_routing_mark",
            "-A restore_routing_mark -j CONNMARK --restore-mark --nfmask 0xffff0000 --ctmask 0xffff0000",
            "-A patchpanel_PREROUTING -i arc_ns0 -j PREROUTING_arc_ns0",
        ] {
            assert!(
                v4.contains(&format!("{line}\n")),
                "{line}\n{v4}\n{}",
                ruleset()
            );
        }
        // nft itself reads the rules back as what they mean: the guest's
        // ingress accept is an element of `guest_in`, looked up by one rule.
        let applied = ruleset();
        for line in [
            "iifname @guest_in meta mark set meta mark | 0x00000010 accept",
            "elements = { \"arc_ns0\" comment \"-i arc_ns0 -j ACCEPT\" }",
        ] {
            assert!(applied.contains(line), "{line}\n{applied}");
        }
        // Docker's FORWARD DROP gets the narrow accept at its top, written
        // over netlink exactly as iptables-nft writes it.
        let saved = run("iptables-save", &["-t", "filter"], None);
        assert!(
            saved.contains(
                "-A FORWARD -m mark --mark 0x10/0x10 -m comment --comment patchpanel -j ACCEPT\n"
            ),
            "{saved}"
        );
        assert!(
            applied
                .contains("policy drop;\n\t\tmeta mark & 0x00000010 == 0x00000010  counter accept"),
            "{applied}"
        );
        // Its reply accept and its VPN exemption are elements too.
        for line in [
            "ct state established,related oifname @guest_out meta mark set meta mark | 0x00000010 accept",
            "elements = { \"arc_ns0\" comment \"-o arc_ns0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\" }",
            "oifname @vpn_skip_out accept",
            "elements = { \"arc_ns0\" comment \"-o arc_ns0 -j ACCEPT\" }",
        ] {
            assert!(applied.contains(line), "{line}\n{applied}");
        }

        fw.apply(&batch.inverse().unwrap()).unwrap();
        assert_eq!(ruleset(), after_setup);

        let removed = fw.remove_all(&|_| false).unwrap();
        assert!(!removed.is_empty());
        assert_eq!(ruleset(), before);
    });
}

#[test]
fn setup_twice_changes_nothing() {
    in_fresh_netns(|| {
        let mut fw = Nftables::new().unwrap();
        let layout = local_layout();
        fw.setup(&layout).unwrap();
        let once = ruleset();
        let report = fw.setup(&layout).unwrap();
        assert!(report.created.is_empty(), "{report:?}");
        assert!(report.hooks_fixed.is_empty(), "{report:?}");
        assert_eq!(ruleset(), once);
        // A hook someone flushed is put back.
        run(
            "nft",
            &["flush", "chain", "ip", "patchpanel_filter", "FORWARD"],
            None,
        );
        let report = fw.setup(&layout).unwrap();
        assert_eq!(report.hooks_fixed.len(), 1, "{report:?}");
        assert_eq!(ruleset(), once);
        fw.remove_all(&|_| false).unwrap();
    });
}

#[test]
fn a_batch_the_kernel_refuses_halfway_leaves_the_ruleset_identical() {
    in_fresh_netns(|| {
        let mut fw = Nftables::new().unwrap();
        fw.setup(&Layout::default()).unwrap();
        let before = ruleset();
        let mut batch = guest::connected_namespace(&namespace());
        // Valid to the model, refused by the kernel: the chain is missing.
        batch.push(
            Family::V6,
            Change::Append {
                table: Table::Filter,
                chain: OwnedChain::new("egress_nosuch0").unwrap(),
                rule: Rule::new(Target::Drop),
            },
        );
        let err = fw.apply(&batch).unwrap_err();
        assert!(matches!(err, FirewallError::Transaction { .. }), "{err}");
        assert!(err.to_string().contains("egress_nosuch0"), "{err}");
        assert_eq!(ruleset(), before);
        // Deleting a rule that is not there is refused before anything is sent.
        let mut batch = Batch::new();
        batch.push(
            Family::V4,
            Change::Delete {
                table: Table::Filter,
                chain: OwnedChain::new("guest_forward").unwrap(),
                rule: Rule::new(Target::Accept).with(Match::iif(&ifname("nope0"))),
            },
        );
        let err = fw.apply(&batch).unwrap_err();
        assert!(matches!(err, FirewallError::NoSuchRule { .. }), "{err}");
        assert_eq!(ruleset(), before);
        fw.remove_all(&|_| false).unwrap();
    });
}

#[test]
fn a_thousand_port_rules_add_and_delete_in_any_order() {
    in_fresh_netns(|| {
        let mut fw = Nftables::new().unwrap();
        fw.setup(&Layout::default()).unwrap();
        let before = ruleset();
        let eth0 = ifname("eth0");
        let mut batches = Vec::new();
        for port in 1000..2000u16 {
            let b = ports::access(PortProtocol::Tcp, port, Some(&eth0)).unwrap();
            fw.apply(&b).unwrap();
            batches.push(b);
        }
        let v4 = fw.dump(Family::V4).unwrap();
        assert_eq!(v4.matches("-A ingress_port_firewall ").count(), 1000);
        // Every other one from the middle out, then the rest.
        let (odd, even): (Vec<_>, Vec<_>) =
            batches.iter().enumerate().partition(|(i, _)| i % 2 == 1);
        for (_, b) in odd.iter().rev().chain(even.iter()) {
            fw.apply(&b.inverse().unwrap()).unwrap();
        }
        assert_eq!(ruleset(), before);
        fw.remove_all(&|_| false).unwrap();
    });
}

#[test]
fn inserted_rules_land_where_iptables_would_put_them() {
    in_fresh_netns(|| {
        let mut fw = Nftables::new().unwrap();
        fw.setup(&Layout::default()).unwrap();
        let chain = OwnedChain::new("ingress_port_firewall").unwrap();
        // Drops: accepts of this shape are port set elements, not rules.
        let rule = |port| {
            Rule::new(Target::Drop)
                .with(Match::Protocol(patchpanel_firewall::model::Protocol::Tcp))
                .with(Match::DestinationPort(port))
        };
        let mut batch = Batch::new();
        for (position, port) in [(1, 10), (1, 20), (2, 30), (4, 40)] {
            batch.push(
                Family::V4,
                Change::Insert {
                    table: Table::Filter,
                    chain: chain.clone(),
                    position,
                    rule: rule(port),
                },
            );
        }
        fw.apply(&batch).unwrap();
        // In another transaction, against handles from the echo.
        let mut batch = Batch::new();
        batch.push(
            Family::V4,
            Change::Insert {
                table: Table::Filter,
                chain: chain.clone(),
                position: 3,
                rule: rule(50),
            },
        );
        fw.apply(&batch).unwrap();
        let v4 = fw.dump(Family::V4).unwrap();
        let ports: Vec<&str> = v4
            .lines()
            .filter(|l| l.starts_with("-A ingress_port_firewall"))
            .map(|l| {
                l.rsplit("--dport ")
                    .next()
                    .unwrap()
                    .split(' ')
                    .next()
                    .unwrap()
            })
            .collect();
        assert_eq!(ports, ["20", "30", "50", "10", "40"]);
        fw.remove_all(&|_| false).unwrap();
    });
}

#[test]
fn port_rules_and_accounting_count_real_packets_and_accounting_survives_remove_all() {
    in_fresh_netns(|| {
        run("ip", &["link", "set", "lo", "up"], None);
        let mut fw = Nftables::new().unwrap();
        fw.setup(&Layout::default()).unwrap();
        let lo = ifname("lo");
        let mut batch = ports::forwarding(&Forwarding {
            proto: PortProtocol::Tcp,
            ifname: ifname("eth0"),
            input_dst: None,
            input_port: 8022,
            dst: Ipv4Addr::new(100, 115, 92, 6),
            dst_port: 22,
        })
        .unwrap();
        batch.extend(counters::accounting_chains(&lo));
        batch.extend(counters::accounting_jumps(&lo));
        fw.apply(&batch).unwrap();
        // An element of the forward map, read back as the rule it is.
        assert!(ruleset().contains(": 100.115.92.6 . 22"), "{}", ruleset());
        let v4 = fw.dump(Family::V4).unwrap();
        assert!(v4.contains(
            "-A ingress_port_forwarding -i eth0 -p tcp -m tcp --dport 8022 -j DNAT --to-destination 100.115.92.6:22\n"
        ));
        run("ping", &["-c", "3", "-i", "0.2", "-q", "127.0.0.1"], None);
        let samples = fw.read_counters().unwrap();
        let rx: u64 = samples
            .iter()
            .filter(|s| {
                s.family == Family::V4 && s.direction == counters::Direction::Rx && s.ifname == "lo"
            })
            .map(|s| s.packets)
            .sum();
        assert!(
            rx >= 6,
            "3 echo requests and 3 replies come in on lo: {samples:?}"
        );
        fw.remove_all(&counters::is_accounting_chain).unwrap();
        for family in Family::ALL {
            let mut kept = fw.list_chains(family, Table::Mangle).unwrap();
            kept.sort();
            assert_eq!(kept, ["rx_lo", "tx_lo"], "{family}");
        }
        // A restart creates only the jumps, and counting goes on.
        fw.setup(&Layout::default()).unwrap();
        fw.apply(&counters::accounting_jumps(&lo)).unwrap();
        let again: u64 = fw
            .read_counters()
            .unwrap()
            .iter()
            .filter(|s| s.family == Family::V4 && s.direction == counters::Direction::Rx)
            .map(|s| s.packets)
            .sum();
        assert!(again >= rx);
        fw.remove_all(&|_| false).unwrap();
        assert_eq!(ruleset(), "");
    });
}

/// The named counters of `ip patchpanel_mangle` as `nft` lists them:
/// (name, packets, bytes).
fn named_counters() -> Vec<(String, u64, u64)> {
    let text = run(
        "nft",
        &["list", "counters", "table", "ip", "patchpanel_mangle"],
        None,
    );
    let mut out = Vec::new();
    let mut name = None;
    for line in text.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("counter ") {
            name = rest
                .strip_suffix(" {")
                .map(|n| n.trim_matches('"').to_string());
        } else if let (Some(n), Some(rest)) = (&name, line.strip_prefix("packets ")) {
            let words: Vec<&str> = rest.split_whitespace().collect();
            out.push((
                n.clone(),
                words[0].parse().unwrap(),
                words[2].parse().unwrap(),
            ));
            name = None;
        }
    }
    out.sort();
    out
}

#[test]
fn accounting_rules_count_into_named_counters_that_go_with_their_rules() {
    in_fresh_netns(|| {
        run("ip", &["link", "set", "lo", "up"], None);
        let lo = ifname("lo");
        let mut fw = Nftables::new().unwrap();
        fw.setup(&Layout::default()).unwrap();
        let mut batch = counters::accounting_chains(&lo);
        batch.extend(counters::accounting_jumps(&lo));
        fw.apply(&batch).unwrap();
        // 15 per chain: one per source and one for the rest.
        let names: Vec<String> = named_counters().into_iter().map(|c| c.0).collect();
        assert_eq!(names.len(), 30, "{names:?}");
        assert!(names.contains(&"rx_lo/0x400".to_string()), "{names:?}");
        assert!(names.contains(&"tx_lo/any".to_string()), "{names:?}");
        let mangle = run(
            "nft",
            &["list", "chain", "ip", "patchpanel_mangle", "rx_lo"],
            None,
        );
        assert!(
            mangle.contains(
                "meta mark & 0x00003f00 == 0x00000400 counter packets 0 bytes 0 counter name \"rx_lo/0x400\" return"
            ),
            "{mangle}"
        );
        // Untagged traffic (ping's) is counted by the last rule's counter.
        run("ping", &["-c", "3", "-i", "0.2", "-q", "127.0.0.1"], None);
        let any = named_counters()
            .into_iter()
            .find(|c| c.0 == "rx_lo/any")
            .unwrap();
        assert!(any.1 >= 6, "{any:?}");
        let samples = fw.read_counters().unwrap();
        let read = samples
            .iter()
            .find(|s| {
                s.family == Family::V4
                    && s.direction == counters::Direction::Rx
                    && s.source.is_none()
            })
            .unwrap();
        assert!(
            read.packets >= any.1 && read.bytes >= any.2,
            "{read:?} vs {any:?}"
        );
        // 2 families x 2 chains x 15.
        assert_eq!(samples.len(), 60, "{samples:?}");
        // The chain flushed and filled again: its counters count on.
        let rx = counters::rx_chain(&lo);
        let mut refill = Batch::new();
        refill.changes_mut(Family::V4).push(Change::FlushChain {
            table: Table::Mangle,
            chain: rx.clone(),
        });
        for rule in counters::accounting_rules() {
            refill.changes_mut(Family::V4).push(Change::Append {
                table: Table::Mangle,
                chain: rx.clone(),
                rule,
            });
        }
        fw.apply(&refill).unwrap();
        let kept = named_counters()
            .into_iter()
            .find(|c| c.0 == "rx_lo/any")
            .unwrap();
        assert!(kept.1 >= any.1, "{kept:?} after {any:?}");
        // The inverse (rules deleted, chains deleted) takes the counters.
        fw.apply(&counters::accounting_jumps(&lo).inverse().unwrap())
            .unwrap();
        fw.apply(&counters::accounting_chains(&lo).inverse().unwrap())
            .unwrap();
        assert_eq!(named_counters(), []);
        assert_eq!(fw.read_counters().unwrap(), []);
        fw.remove_all(&|_| false).unwrap();
        assert_eq!(ruleset(), "");
    });
}

#[test]
fn an_earlier_writers_accounting_chain_moves_to_named_counters_with_its_counts() {
    in_fresh_netns(|| {
        let mut fw = Nftables::new().unwrap();
        fw.setup(&Layout::default()).unwrap();
        // What an earlier version wrote: a counter in each rule.
        run(
            "nft",
            &[
                "-f",
                "-",
            ],
            Some(
                "add chain ip patchpanel_mangle rx_lo\n\
                 add rule ip patchpanel_mangle rx_lo meta mark & 0x3f00 == 0x400 counter packets 5 bytes 500 return comment \"-m mark --mark 0x400/0x3f00 -j RETURN\"\n\
                 add rule ip patchpanel_mangle rx_lo counter packets 2 bytes 120\n",
            ),
        );
        fw.setup(&Layout::default()).unwrap();
        let counted: Vec<(String, u64, u64)> =
            named_counters().into_iter().filter(|c| c.1 > 0).collect();
        assert_eq!(
            counted,
            [
                ("rx_lo/0x400".to_string(), 5, 500),
                ("rx_lo/any".to_string(), 2, 120)
            ]
        );
        // The rules' own counters start there too.
        let chain = run(
            "nft",
            &["list", "chain", "ip", "patchpanel_mangle", "rx_lo"],
            None,
        );
        for line in [
            "counter packets 5 bytes 500 counter name \"rx_lo/0x400\" return",
            "counter packets 2 bytes 120 counter name \"rx_lo/any\"",
        ] {
            assert!(chain.contains(line), "{line}\n{chain}");
        }
        let v4 = fw.dump(Family::V4).unwrap();
        let rx: Vec<&str> = v4.lines().filter(|l| l.starts_with("-A rx_lo")).collect();
        assert_eq!(rx.len(), 15, "{v4}");
        assert_eq!(rx[3], "-A rx_lo -m mark --mark 0x400/0x3f00 -j RETURN");
        assert_eq!(rx[14], "-A rx_lo");
        let system = fw
            .read_counters()
            .unwrap()
            .into_iter()
            .find(|s| s.source == Some(TrafficSource::System))
            .unwrap();
        assert_eq!((system.packets, system.bytes), (5, 500));
        // Once moved, a setup leaves it alone.
        let moved = ruleset();
        fw.setup(&Layout::default()).unwrap();
        assert_eq!(ruleset(), moved);
        fw.remove_all(&|_| false).unwrap();
    });
}

/// Compares `nft list table <family> <table>` with a golden file
/// (`PATCHPANEL_BLESS=1` rewrites it).
fn assert_golden(family: &str, table: &str, file: &str) {
    let text = run("nft", &["list", "table", family, table], None);
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(file);
    if std::env::var_os("PATCHPANEL_BLESS").is_some() {
        std::fs::write(&path, &text).unwrap();
    }
    let want = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(
        text,
        want,
        "nft list table {family} {table} differs from {}",
        path.display()
    );
}

/// `nft -j list table` as pretty JSON, without what varies between
/// machines and runs (nft's version, object handles).
fn table_json(family: &str, table: &str) -> String {
    fn strip(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(o) => {
                o.remove("handle");
                o.values_mut().for_each(strip);
            }
            serde_json::Value::Array(a) => a.iter_mut().for_each(strip),
            _ => {}
        }
    }
    let text = run("nft", &["-j", "list", "table", family, table], None);
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    if let Some(items) = v["nftables"].as_array_mut() {
        items.retain(|i| i.get("metainfo").is_none());
    }
    strip(&mut v);
    serde_json::to_string_pretty(&v).unwrap() + "\n"
}

fn assert_golden_json(family: &str, table: &str, file: &str) {
    let text = table_json(family, table);
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(file);
    if std::env::var_os("PATCHPANEL_BLESS").is_some() {
        std::fs::write(&path, &text).unwrap();
    }
    let want = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(
        text,
        want,
        "nft -j list table {family} {table} differs from {}",
        path.display()
    );
}

#[test]
fn the_nat_and_filter_tables_are_exactly_the_golden_ones_after_a_forward_and_an_access_rule() {
    in_fresh_netns(|| {
        let mut fw = Nftables::new().unwrap();
        fw.setup(&Layout::default()).unwrap();
        let eth0 = ifname("eth0");
        let mut batch = ports::forwarding(&Forwarding {
            proto: PortProtocol::Tcp,
            ifname: eth0.clone(),
            input_dst: None,
            input_port: 8022,
            dst: Ipv4Addr::new(100, 115, 92, 6),
            dst_port: 22,
        })
        .unwrap();
        batch.extend(ports::access(PortProtocol::Udp, 5353, Some(&eth0)).unwrap());
        fw.apply(&batch).unwrap();
        assert_golden("ip", "patchpanel_nat", "ip_patchpanel_nat.nft");
        assert_golden("ip6", "patchpanel_filter", "ip6_patchpanel_filter.nft");
        // The same as nft's JSON, every expression spelled out.
        assert_golden_json("ip", "patchpanel_nat", "ip_patchpanel_nat.json");
        assert_golden_json("ip", "patchpanel_filter", "ip_patchpanel_filter.json");
        fw.remove_all(&|_| false).unwrap();
    });
}

#[test]
fn a_guest_that_comes_back_after_its_teardown_gets_fresh_chains_and_goes_cleanly() {
    in_fresh_netns(|| {
        let mut fw = Nftables::new().unwrap();
        fw.setup(&Layout::default()).unwrap();
        let empty = ruleset();
        let batch = guest::connected_namespace(&namespace());
        for _ in 0..3 {
            fw.apply(&batch).unwrap();
            fw.apply(&batch.inverse().unwrap()).unwrap();
            assert_eq!(ruleset(), empty);
        }
        // A rule someone else deleted behind our back: the delete fails
        // once on the stale handle, the chains are read again, and the
        // teardown completes.
        fw.apply(&batch).unwrap();
        run(
            "nft",
            &[
                "flush",
                "chain",
                "ip",
                "patchpanel_mangle",
                "PREROUTING_arc_ns0",
            ],
            None,
        );
        let err = fw.apply(&batch.inverse().unwrap()).unwrap_err();
        assert!(matches!(err, FirewallError::NoSuchRule { .. }), "{err}");
        fw.remove_all(&|_| false).unwrap();
    });
}

#[test]
fn two_forwards_to_one_guest_port_share_an_accept_until_both_are_gone_even_across_a_writer_restart()
{
    in_fresh_netns(|| {
        let mut fw = Nftables::new().unwrap();
        fw.setup(&Layout::default()).unwrap();
        let before = ruleset();
        let forward = |input_port| {
            ports::forwarding(&Forwarding {
                proto: PortProtocol::Tcp,
                ifname: ifname("eth0"),
                input_dst: None,
                input_port,
                dst: Ipv4Addr::new(100, 115, 92, 6),
                dst_port: 22,
            })
            .unwrap()
        };
        let accept =
            "-A guest_forward -d 100.115.92.6/32 -i eth0 -p tcp -m tcp --dport 22 -j ACCEPT";
        let accepts = |fw: &mut Nftables| {
            fw.dump(Family::V4)
                .unwrap()
                .lines()
                .filter(|l| *l == accept)
                .count()
        };
        fw.apply(&forward(8022)).unwrap();
        fw.apply(&forward(2222)).unwrap();
        assert_eq!(accepts(&mut fw), 2, "{}", fw.dump(Family::V4).unwrap());
        // A respawned writer knows nothing but what the kernel holds.
        let mut fw = Nftables::new().unwrap();
        fw.setup(&Layout::default()).unwrap();
        fw.apply(&forward(8022).inverse().unwrap()).unwrap();
        assert_eq!(accepts(&mut fw), 1);
        assert!(!fw.dump(Family::V4).unwrap().contains("--dport 8022"));
        // Deleting it twice: the second time there is nothing to delete.
        let err = fw.apply(&forward(8022).inverse().unwrap()).unwrap_err();
        assert!(matches!(err, FirewallError::NoSuchRule { .. }), "{err}");
        fw.apply(&forward(2222).inverse().unwrap()).unwrap();
        assert_eq!(accepts(&mut fw), 0);
        assert_eq!(ruleset(), before);
        fw.remove_all(&|_| false).unwrap();
    });
}

#[test]
fn a_port_forward_to_a_taken_key_is_refused_and_changes_nothing() {
    in_fresh_netns(|| {
        let mut fw = Nftables::new().unwrap();
        fw.setup(&Layout::default()).unwrap();
        let forward = |dst_port| {
            ports::forwarding(&Forwarding {
                proto: PortProtocol::Udp,
                ifname: ifname("eth0"),
                input_dst: Some(Ipv4Addr::new(192, 0, 2, 10)),
                input_port: 5000,
                dst: Ipv4Addr::new(100, 115, 92, 6),
                dst_port,
            })
            .unwrap()
        };
        fw.apply(&forward(5000)).unwrap();
        let before = ruleset();
        let err = fw.apply(&forward(6000)).unwrap_err();
        assert!(err.to_string().contains("port_forward_dst"), "{err}");
        assert_eq!(ruleset(), before);
        fw.apply(&forward(5000).inverse().unwrap()).unwrap();
        fw.remove_all(&|_| false).unwrap();
    });
}

/// Everything a daemon with one uplink, one namespace, an ACCESS and a
/// FORWARDING rule has in its firewall, as one batch.
fn daemon_state(lo: &IfName) -> Batch {
    let mut batch = counters::accounting_chains(lo);
    batch.extend(guest::uplink_pinning(lo, 1001));
    batch.extend(counters::accounting_jumps(lo));
    batch.extend(guest::connected_namespace(&namespace()));
    batch.extend(ports::access(PortProtocol::Tcp, 9292, Some(&ifname("eth0"))).unwrap());
    batch.extend(
        ports::forwarding(&Forwarding {
            proto: PortProtocol::Tcp,
            ifname: ifname("eth0"),
            input_dst: None,
            input_port: 8022,
            dst: Ipv4Addr::new(100, 115, 92, 130),
            dst_port: 22,
        })
        .unwrap(),
    );
    batch
}

/// The ruleset without the foreign tables (they must not change).
fn patchpanel_tables() -> String {
    let all = ruleset();
    let mut out = String::new();
    let mut keep = false;
    for line in all.lines() {
        if line.starts_with("table ") {
            keep = line.contains(" patchpanel_");
        }
        if keep {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

#[test]
fn a_rebuild_after_a_flush_restores_exactly_what_setup_and_the_batches_made() {
    in_fresh_netns(|| {
        run("ip", &["link", "set", "lo", "up"], None);
        let lo = ifname("lo");
        let layout = local_layout();
        let mut fw = Nftables::new().unwrap();
        fw.setup(&layout).unwrap();
        fw.apply(&daemon_state(&lo)).unwrap();
        let built = patchpanel_tables();
        assert!(built.contains("table ip patchpanel_nat"), "{built}");

        // nftables.service: flush ruleset, then the host's own tables.
        run("nft", &["flush", "ruleset"], None);
        load_host_fixture();
        let host = ruleset();
        let carried = fw.rebuild(&layout, &daemon_state(&lo)).unwrap();
        assert!(carried.is_empty(), "nothing of ours was left: {carried:?}");
        assert_eq!(patchpanel_tables(), built);
        // The host's own tables are as it loaded them.
        let now = ruleset();
        for line in host.lines() {
            assert!(now.contains(line), "{line:?} lost:\n{now}");
        }
        // The cache learned the new handles: a delete works.
        let mut undo = ports::access(PortProtocol::Tcp, 9292, Some(&ifname("eth0"))).unwrap();
        undo = undo.inverse().unwrap();
        fw.apply(&undo).unwrap();
        assert!(!patchpanel_tables().contains("9292"));
    });
}

#[test]
fn a_rebuild_over_partly_deleted_tables_replaces_them_and_carries_the_counts() {
    in_fresh_netns(|| {
        run("ip", &["link", "set", "lo", "up"], None);
        let lo = ifname("lo");
        let layout = Layout::default();
        let mut fw = Nftables::new().unwrap();
        fw.setup(&layout).unwrap();
        fw.apply(&daemon_state(&lo)).unwrap();
        let built = patchpanel_tables();
        run("ping", &["-c", "2", "-i", "0.2", "-q", "127.0.0.1"], None);
        // Someone deletes one chain of ours and a hook.
        run(
            "nft",
            &["flush", "chain", "ip", "patchpanel_filter", "FORWARD"],
            None,
        );
        run("nft", &["delete", "table", "ip6", "patchpanel_nat"], None);
        let carried = fw.rebuild(&layout, &daemon_state(&lo)).unwrap();
        let rx: u64 = carried
            .iter()
            .filter(|s| s.family == Family::V4 && s.direction == counters::Direction::Rx)
            .map(|s| s.packets)
            .sum();
        assert!(rx >= 4, "the counts so far come back: {carried:?}");
        assert_eq!(patchpanel_tables(), built);
    });
}

#[test]
fn a_rebuild_the_kernel_refuses_changes_nothing() {
    in_fresh_netns(|| {
        let lo = ifname("lo");
        let layout = Layout::default();
        let mut fw = Nftables::new().unwrap();
        fw.setup(&layout).unwrap();
        fw.apply(&daemon_state(&lo)).unwrap();
        run("nft", &["delete", "table", "ip", "patchpanel_mangle"], None);
        let before = ruleset();
        // A batch that names a chain twice: NewChain refuses an existing one.
        let mut bad = daemon_state(&lo);
        bad.extend(counters::accounting_chains(&lo));
        assert!(fw.rebuild(&layout, &bad).is_err());
        assert_eq!(ruleset(), before);
        // And a good one still goes through after it.
        fw.rebuild(&layout, &daemon_state(&lo)).unwrap();
        assert!(patchpanel_tables().contains("table ip patchpanel_mangle"));
    });
}

fn reconcile() -> patchpanel_firewall::nft::coexist::CoexistReport {
    patchpanel_firewall::nft::coexist::reconcile(
        &patchpanel_firewall::nft::coexist::is_patchpanel_table,
        patchpanel_firewall::nft::coexist::Remedy::NarrowAccept,
    )
    .unwrap()
}

#[test]
fn a_drop_policy_set_after_start_gets_the_narrow_accept_and_loses_it_when_lifted() {
    in_fresh_netns(|| {
        let mut fw = Nftables::new().unwrap();
        fw.setup(&Layout::default()).unwrap();
        assert!(reconcile().is_empty(), "nothing drops yet");
        // Docker starts.
        run("iptables", &["-P", "FORWARD", "DROP"], None);
        let r = reconcile();
        assert_eq!(r.added.len(), 1, "{r}");
        assert!(
            r.added[0].starts_with("ip filter FORWARD (hook forward, priority 0): policy drop"),
            "{r}"
        );
        let saved = run("iptables-save", &["-t", "filter"], None);
        assert!(
            saved.contains(
                "-A FORWARD -m mark --mark 0x10/0x10 -m comment --comment patchpanel -j ACCEPT\n"
            ),
            "{saved}"
        );
        assert!(reconcile().is_empty(), "a second pass changes nothing");
        // Docker stops.
        run("iptables", &["-P", "FORWARD", "ACCEPT"], None);
        let r = reconcile();
        assert_eq!(r.removed.len(), 1, "{r}");
        assert!(!run("iptables-save", &["-t", "filter"], None).contains("patchpanel"));
    });
}

#[test]
fn native_tables_that_drop_get_a_native_narrow_accept_and_stop_removes_it() {
    in_fresh_netns(|| {
        let mut fw = Nftables::new().unwrap();
        fw.setup(&Layout::default()).unwrap();
        // nftables.service's inet filter with policy drop, and a table that
        // ends its forward chain in an unconditional reject.
        run(
            "nft",
            &["-f", "-"],
            Some("table inet filter {\n chain input {\n  type filter hook input priority 0; policy drop;\n  ct state established,related accept\n }\n}\ntable ip ufwish {\n chain early_forward {\n  type filter hook forward priority 5; policy accept;\n  ip saddr 10.0.0.1 accept\n  counter reject\n }\n chain pre {\n  type filter hook prerouting priority 0; policy drop;\n }\n}\n"),
        );
        let r = reconcile();
        assert_eq!(r.added.len(), 2, "{r}");
        let rs = ruleset();
        assert!(
            rs.contains("policy drop;\n\t\tmeta mark & 0x00000010 == 0x00000010 counter accept comment \"patchpanel\"\n\t\tct state established,related accept"),
            "{rs}"
        );
        assert!(
            rs.contains("policy accept;\n\t\tmeta mark & 0x00000010 == 0x00000010 counter accept comment \"patchpanel\"\n\t\tip saddr 10.0.0.1 accept"),
            "{rs}"
        );
        // prerouting is not a hook patchpanel's accepts need.
        assert!(!rs.contains("policy drop;\n\t\tmeta mark & 0x00000010 == 0x00000010 counter accept comment \"patchpanel\"\n\t}\n\n\tchain pre"), "{rs}");
        fw.remove_all(&|_| false).unwrap();
        assert!(!ruleset().contains("patchpanel"), "{}", ruleset());
    });
}

#[test]
fn with_accepts_that_carry_no_mark_a_drop_elsewhere_is_reported_and_gets_no_narrow_accept() {
    use patchpanel_firewall::nft::coexist::{is_patchpanel_table, reconcile, Remedy};
    in_fresh_netns(|| {
        // nftables.service's inet filter, as the iptables backend meets it:
        // its accepts are in iptables' own filter tables (skipped here).
        run(
            "nft",
            &["-f", "-"],
            Some("table inet filter {\n chain forward {\n  type filter hook forward priority 0; policy drop;\n }\n}\n"),
        );
        let r = reconcile(&is_patchpanel_table, Remedy::ReportOnly).unwrap();
        assert!(r.added.is_empty(), "{r}");
        assert_eq!(r.problems.len(), 1, "{r}");
        assert!(
            r.problems[0].starts_with("inet filter forward (hook forward, priority 0) has policy drop: it drops the guest traffic"),
            "{r}"
        );
        assert!(!ruleset().contains("patchpanel"), "{}", ruleset());
        // One left by the nftables backend goes: it lets nothing through.
        reconcile(&is_patchpanel_table, Remedy::NarrowAccept).unwrap();
        assert!(
            ruleset().contains("comment \"patchpanel\""),
            "{}",
            ruleset()
        );
        reconcile(&is_patchpanel_table, Remedy::ReportOnly).unwrap();
        assert!(!ruleset().contains("patchpanel"), "{}", ruleset());
    });
}

#[test]
fn a_drop_chain_that_runs_before_patchpanels_is_reported() {
    in_fresh_netns(|| {
        let mut fw = Nftables::new().unwrap();
        fw.setup(&Layout::default()).unwrap();
        run(
            "nft",
            &["-f", "-"],
            Some("table inet early {\n chain early_forward {\n  type filter hook forward priority -200; policy drop;\n }\n}\n"),
        );
        let r = reconcile();
        assert_eq!(r.added.len(), 1, "{r}");
        assert!(
            r.problems
                .iter()
                .any(|p| p.contains("runs before patchpanel's chains")),
            "{r}"
        );
        fw.remove_all(&|_| false).unwrap();
    });
}

#[test]
fn what_another_program_deleted_is_reported_missing() {
    in_fresh_netns(|| {
        let layout = Layout::default();
        let mut fw = Nftables::new().unwrap();
        fw.setup(&layout).unwrap();
        assert_eq!(fw.missing(&layout).unwrap(), Vec::<String>::new());
        run(
            "nft",
            &["delete", "chain", "ip", "patchpanel_filter", "FORWARD"],
            None,
        );
        // No rule may jump to a chain that goes.
        run("nft", &["flush", "table", "ip", "patchpanel_filter"], None);
        run(
            "nft",
            &[
                "delete",
                "chain",
                "ip",
                "patchpanel_filter",
                "guest_forward",
            ],
            None,
        );
        let missing = fw.missing(&layout).unwrap();
        assert!(
            missing.contains(&"IPv4 filter chain guest_forward".to_string()),
            "{missing:?}"
        );
        assert!(
            missing.contains(&"IPv4 filter hook FORWARD -> patchpanel_FORWARD".to_string()),
            "{missing:?}"
        );
        run("nft", &["flush", "ruleset"], None);
        assert!(fw.missing(&layout).unwrap().len() > 20);
    });
}

#[test]
fn a_host_rule_with_patchpanels_comment_but_no_mark_is_never_taken_for_ours() {
    in_fresh_netns(|| {
        let mut fw = Nftables::new().unwrap();
        fw.setup(&Layout::default()).unwrap();
        run(
            "nft",
            &["-f", "-"],
            Some("table inet mine {\n chain input {\n  type filter hook input priority 0; policy accept;\n  tcp dport 22 accept comment \"patchpanel\"\n }\n}\n"),
        );
        fw.remove_all(&|_| false).unwrap();
        assert!(
            ruleset().contains("tcp dport 22 accept comment \"patchpanel\""),
            "{}",
            ruleset()
        );
    });
}
