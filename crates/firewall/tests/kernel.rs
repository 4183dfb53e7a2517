//! Kernel tests of the iptables-nft-restore backend (root only).
//!
//! Each test runs in a thread that first moves itself into a fresh network
//! namespace (`unshare(CLONE_NEWNET)`); the iptables tools it spawns inherit
//! that namespace. The host's root namespace is never touched. Each test
//! loads a fixture of "host" rules (a DROP rule in INPUT, a custom chain,
//! Docker's FORWARD DROP policy, a MASQUERADE, in both families and all three
//! tables) and asserts the real rule set with `iptables-save`.

#![allow(clippy::unwrap_used)] // test helpers: a failure is a test failure

use std::net::Ipv4Addr;

use patchpanel_firewall::counters;
use patchpanel_firewall::guest::{self, Mode, Namespace};
use patchpanel_firewall::model::{Family, Match, Rule, Table, Target};
use patchpanel_firewall::ports::{self, Forwarding, PortProtocol};
use patchpanel_firewall::save::{normalize, parse};
use patchpanel_firewall::{
    Batch, BuiltinChain, Change, FirewallBackend, FirewallError, IptablesRestore, Layout,
    OwnedChain, TrafficSource,
};
use patchpanel_names::IfName;

mod common;

use common::{in_fresh_netns, run};

fn restore(family: Family, text: &str) {
    let program = match family {
        Family::V4 => "/usr/sbin/iptables-nft-restore",
        Family::V6 => "/usr/sbin/ip6tables-nft-restore",
    };
    run(program, &["--noflush", "-w"], Some(text));
}

fn iptables(family: Family, args: &[&str]) {
    let program = match family {
        Family::V4 => "/usr/sbin/iptables-nft",
        Family::V6 => "/usr/sbin/ip6tables-nft",
    };
    let mut all = vec!["-w"];
    all.extend_from_slice(args);
    run(program, &all, None);
}

const HOST_V4: &str = "\
*filter
:HOSTCHAIN - [0:0]
-A INPUT -s 10.9.9.9/32 -j DROP
-A FORWARD -j HOSTCHAIN
-A HOSTCHAIN -p tcp -m tcp --dport 22 -j ACCEPT
-A HOSTCHAIN -j RETURN
COMMIT
*nat
-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE
COMMIT
*mangle
-A PREROUTING -i eth9 -j MARK --set-xmark 0x5/0xff
COMMIT
";

const HOST_V6: &str = "\
*filter
-A INPUT -s 2001:db8::9/128 -j DROP
COMMIT
*nat
-A POSTROUTING -s fd00:17::/64 -j MASQUERADE
COMMIT
*mangle
-A OUTPUT -o eth9 -j ACCEPT
COMMIT
";

/// Loads the host fixture; FORWARD policy DROP in both families (Docker).
fn load_host_fixture() {
    restore(Family::V4, HOST_V4);
    restore(Family::V6, HOST_V6);
    iptables(Family::V4, &["-P", "FORWARD", "DROP"]);
    iptables(Family::V6, &["-P", "FORWARD", "DROP"]);
}

/// Both families' rule sets, without comments and counters.
fn snapshot(fw: &mut IptablesRestore) -> String {
    let v4 = normalize(&fw.dump(Family::V4).unwrap());
    let v6 = normalize(&fw.dump(Family::V6).unwrap());
    format!("## IPv4\n{v4}## IPv6\n{v6}")
}

/// Every `:BUILTIN POLICY` line of a snapshot.
fn policies(snapshot: &str) -> Vec<String> {
    snapshot
        .lines()
        .filter(|l| l.starts_with(':') && !l.ends_with(" -"))
        .map(str::to_string)
        .collect()
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

/// For every hooked built-in chain: exactly one rule with patchpanel's
/// comment, and it is the first rule.
fn assert_one_hook_first(fw: &mut IptablesRestore, layout: &Layout) {
    for family in Family::ALL {
        let tables = parse(&fw.dump(family).unwrap());
        for want in layout.tables(family) {
            let have = tables
                .iter()
                .find(|t| t.name == want.table.name())
                .unwrap_or_else(|| panic!("{family} {} missing", want.table));
            for hook in &want.hooks {
                let hooks = have.hooks_in(hook.builtin);
                assert_eq!(
                    hooks,
                    vec![(
                        0,
                        format!("-m comment --comment patchpanel -j {}", hook.root).as_str()
                    )],
                    "{family} {} {}",
                    want.table,
                    hook.builtin
                );
            }
        }
    }
}

#[test]
fn setup_apply_inverse_and_remove_all_leave_the_host_rules_exactly_as_they_were() {
    in_fresh_netns(|| {
        load_host_fixture();
        let mut fw = IptablesRestore::new().unwrap();
        let before = snapshot(&mut fw);
        let layout = Layout::default();

        fw.setup(&layout).unwrap();
        let after_setup = snapshot(&mut fw);
        assert_eq!(policies(&after_setup), policies(&before));
        assert!(after_setup.contains(":FORWARD DROP\n"));
        assert_one_hook_first(&mut fw, &layout);

        let batch = guest::connected_namespace(&namespace());
        fw.apply(&batch).unwrap();
        let applied = snapshot(&mut fw);
        for line in [
            "-A guest_forward -o arc_ns0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
            "-A guest_forward -i arc_ns0 -j ACCEPT",
            "-A PREROUTING_arc_ns0 -j MARK --set-xmark 0x1/0x1",
            "-A PREROUTING_arc_ns0 -j MARK --set-xmark 0x400/0x3f00",
            "-A PREROUTING_arc_ns0 -j restore_routing_mark",
            "-A restore_routing_mark -j CONNMARK --restore-mark --nfmask 0xffff0000 --ctmask 0xffff0000",
            "-A patchpanel_PREROUTING -i arc_ns0 -j PREROUTING_arc_ns0",
            "-A skip_apply_vpn_mark -o arc_ns0 -j ACCEPT",
        ] {
            // Once per family.
            assert_eq!(applied.matches(&format!("{line}\n")).count(), 2, "{line}\n{applied}");
        }

        fw.apply(&batch.inverse().unwrap()).unwrap();
        assert_eq!(snapshot(&mut fw), after_setup);

        let removed = fw.remove_all(&|_| false).unwrap();
        assert!(!removed.is_empty());
        assert_eq!(snapshot(&mut fw), before);
    });
}

#[test]
fn setup_twice_changes_nothing_and_keeps_one_hook_at_position_one() {
    in_fresh_netns(|| {
        load_host_fixture();
        let mut fw = IptablesRestore::new().unwrap();
        let layout = Layout::default();
        let first = fw.setup(&layout).unwrap();
        assert!(!first.created.is_empty());
        assert!(!first.hooks_fixed.is_empty());
        // Dynamic content must survive a second setup.
        fw.apply(&guest::connected_namespace(&namespace())).unwrap();
        let once = snapshot(&mut fw);

        let second = fw.setup(&layout).unwrap();
        assert_eq!(second.created, vec![]);
        assert_eq!(second.hooks_fixed, vec![]);
        assert_eq!(snapshot(&mut fw), once);
        assert_one_hook_first(&mut fw, &layout);
    });
}

#[test]
fn setup_moves_a_displaced_hook_back_to_position_one_and_drops_duplicates() {
    in_fresh_netns(|| {
        load_host_fixture();
        let mut fw = IptablesRestore::new().unwrap();
        let layout = Layout::default();
        fw.setup(&layout).unwrap();
        // Another firewall inserts ahead of us; something appends a copy.
        iptables(
            Family::V4,
            &["-I", "INPUT", "1", "-s", "10.8.8.8", "-j", "DROP"],
        );
        iptables(
            Family::V6,
            &[
                "-A",
                "FORWARD",
                "-m",
                "comment",
                "--comment",
                "patchpanel",
                "-j",
                "patchpanel_FORWARD",
            ],
        );

        let report = fw.setup(&layout).unwrap();
        assert_eq!(
            report.hooks_fixed,
            vec![
                (Family::V4, Table::Filter, BuiltinChain::Input),
                (Family::V6, Table::Filter, BuiltinChain::Forward)
            ]
        );
        assert_one_hook_first(&mut fw, &layout);
        let v4 = fw.dump(Family::V4).unwrap();
        assert!(v4.contains("-A INPUT -s 10.8.8.8/32 -j DROP\n"), "{v4}");
    });
}

#[test]
fn a_batch_with_a_failing_line_leaves_nothing_applied_and_names_the_line() {
    in_fresh_netns(|| {
        load_host_fixture();
        let mut fw = IptablesRestore::new().unwrap();
        fw.setup(&Layout::default()).unwrap();
        let before = snapshot(&mut fw);

        // IPv4 filter and mangle and IPv6 filter succeed; IPv6 mangle then
        // fails on a rule that does not exist.
        let mut batch = guest::connected_namespace(&namespace());
        let missing = Rule::new(Target::Accept).with(Match::oif(&ifname("nosuch0")));
        batch.ipv6.push(Change::Delete {
            table: Table::Mangle,
            chain: OwnedChain::new("skip_apply_vpn_mark").unwrap(),
            rule: missing,
        });
        let err = fw.apply(&batch).unwrap_err();

        match &err {
            FirewallError::Restore {
                family,
                table,
                failed_lines,
                ..
            } => {
                assert_eq!((*family, *table), (Family::V6, Table::Mangle));
                assert_eq!(failed_lines.len(), 1, "{err}");
                assert!(
                    failed_lines[0].ends_with(": -D skip_apply_vpn_mark -o nosuch0 -j ACCEPT"),
                    "{err}"
                );
            }
            other => panic!("unexpected error: {other}"),
        }
        assert_eq!(snapshot(&mut fw), before);
    });
}

#[test]
fn creating_a_chain_that_exists_fails_instead_of_flushing_it() {
    in_fresh_netns(|| {
        load_host_fixture();
        let mut fw = IptablesRestore::new().unwrap();
        fw.setup(&Layout::default()).unwrap();
        let batch = guest::connected_namespace(&namespace());
        fw.apply(&batch).unwrap();
        let before = snapshot(&mut fw);

        let err = fw.apply(&batch).unwrap_err().to_string();
        assert!(err.contains("-N PREROUTING_arc_ns0"), "{err}");
        assert_eq!(snapshot(&mut fw), before);
    });
}

#[test]
fn remove_all_cleans_partial_leftovers_and_keeps_accounting_chains() {
    in_fresh_netns(|| {
        load_host_fixture();
        let mut fw = IptablesRestore::new().unwrap();
        let before = snapshot(&mut fw);
        // What a crash in the middle of a setup could leave: a hooked root
        // chain in one table, an unhooked per-interface chain, a chain in
        // the other family, and an accounting chain with its jump.
        restore(
            Family::V4,
            "*nat\n\
             -N patchpanel_POSTROUTING\n\
             -A patchpanel_POSTROUTING -m mark --mark 0x1/0x1 -j MASQUERADE\n\
             -I POSTROUTING 1 -m comment --comment patchpanel -j patchpanel_POSTROUTING\n\
             COMMIT\n\
             *mangle\n\
             -N PREROUTING_veth9\n\
             -A PREROUTING_veth9 -j MARK --set-mark 0x1/0x1\n\
             -N rx_eth0\n\
             -A rx_eth0 -m mark --mark 0x100/0x3f00 -j RETURN\n\
             -A rx_eth0\n\
             -N patchpanel_INPUT\n\
             -A patchpanel_INPUT -i eth0 -j rx_eth0\n\
             COMMIT\n",
        );
        restore(Family::V6, "*filter\n-N guest_forward\nCOMMIT\n");

        let keep = |name: &str| name.starts_with("rx_") || name.starts_with("tx_");
        let removed = fw.remove_all(&keep).unwrap();
        let names: Vec<String> = removed.iter().map(ToString::to_string).collect();
        assert_eq!(names.len(), 5, "{names:#?}");

        let v4 = fw.dump(Family::V4).unwrap();
        assert!(
            v4.contains("-A rx_eth0 -m mark --mark 0x100/0x3f00 -j RETURN\n"),
            "{v4}"
        );
        iptables(Family::V4, &["-t", "mangle", "-F", "rx_eth0"]);
        iptables(Family::V4, &["-t", "mangle", "-X", "rx_eth0"]);
        assert_eq!(snapshot(&mut fw), before);
    });
}

#[test]
fn remove_all_keeps_going_after_an_error_and_reports_it() {
    in_fresh_netns(|| {
        load_host_fixture();
        let mut fw = IptablesRestore::new().unwrap();
        fw.setup(&Layout::default()).unwrap();
        // A host rule (no patchpanel comment, so never ours to delete)
        // jumps into one of our chains: that chain cannot be deleted.
        iptables(Family::V4, &["-A", "OUTPUT", "-j", "egress_port_firewall"]);

        let err = fw.remove_all(&|_| false).unwrap_err();
        assert_eq!(err.errors.len(), 1, "{err}");
        assert!(
            err.errors[0].to_string().contains("egress_port_firewall"),
            "{err}"
        );
        // Everything else went: IPv6 entirely, other IPv4 chains and hooks.
        let v6 = normalize(&fw.dump(Family::V6).unwrap());
        assert!(!v6.contains("patchpanel"), "{v6}");
        let v4 = normalize(&fw.dump(Family::V4).unwrap());
        assert!(!v4.contains("patchpanel"), "{v4}");
        assert!(!v4.contains("guest_forward"), "{v4}");
        assert!(v4.contains(":egress_port_firewall -\n"), "{v4}");
        assert!(v4.contains("-A OUTPUT -j egress_port_firewall\n"), "{v4}");
    });
}

#[test]
fn uplink_pinning_applies_and_reverts_exactly() {
    in_fresh_netns(|| {
        load_host_fixture();
        let mut fw = IptablesRestore::new().unwrap();
        fw.setup(&Layout::default()).unwrap();
        let before = snapshot(&mut fw);
        let batch = guest::uplink_pinning(&ifname("eth0"), 1002);
        fw.apply(&batch).unwrap();
        let v4 = fw.dump(Family::V4).unwrap();
        assert!(
            v4.contains("-A POSTROUTING_eth0 -j CONNMARK --set-xmark 0x3ea0000/0xffff0000\n"),
            "{v4}"
        );
        fw.apply(&guest::uplink_pinning_teardown(&ifname("eth0"), 1002).expect("invertible"))
            .unwrap();
        assert_eq!(snapshot(&mut fw), before);
    });
}

#[test]
fn an_invalid_batch_is_refused_before_anything_runs() {
    in_fresh_netns(|| {
        let mut fw = IptablesRestore::new().unwrap();
        let mut batch = Batch::new();
        batch.ipv4.push(Change::Append {
            table: Table::Filter,
            chain: OwnedChain::new("guest_forward").unwrap(),
            rule: Rule::new(Target::Masquerade),
        });
        let err = fw.apply(&batch).unwrap_err();
        assert!(matches!(err, FirewallError::Invalid(_)), "{err}");
    });
}

#[test]
fn inspect_reports_a_foreign_nftables_drop_chain_but_not_iptables_policies() {
    in_fresh_netns(|| {
        load_host_fixture();
        run(
            "/usr/sbin/nft",
            &["-f", "-"],
            Some(
                "table inet hostfw {\n\
               chain fwd_chain { type filter hook forward priority 0; policy drop; }\n\
               chain in_chain { type filter hook input priority 0; policy accept;\n\
                 tcp dport 22 accept\n\
                 counter reject\n\
               }\n\
               chain out_chain { type filter hook output priority 0; policy accept;\n\
                 counter reject\n\
                 tcp dport 22 accept\n\
               }\n\
             }\n",
            ),
        );
        let (conflicts, errors) = patchpanel_firewall::conflicts::inspect();
        assert!(errors.is_empty(), "{errors:?}");
        let drops: Vec<String> = conflicts
            .iter()
            .filter(|c| {
                matches!(
                    c,
                    patchpanel_firewall::conflicts::Conflict::DropChain { .. }
                )
            })
            .map(ToString::to_string)
            .collect();
        // Read over netlink: the policy, and a final reject (not the
        // output chain: guest traffic does not cross it, and its reject is
        // not last).
        assert_eq!(drops.len(), 2, "{drops:?}");
        assert!(
            drops[0].contains("'inet hostfw fwd_chain' (hook forward) has policy drop"),
            "{drops:?}"
        );
        assert!(
            drops[1].contains("'inet hostfw in_chain' (hook input) has a final rule"),
            "{drops:?}"
        );
    });
}

#[test]
fn port_rules_and_accounting_apply_and_accounting_survives_remove_all() {
    in_fresh_netns(|| {
        load_host_fixture();
        let mut fw = IptablesRestore::new().unwrap();
        let before = snapshot(&mut fw);
        fw.setup(&Layout::default()).unwrap();
        let eth0 = ifname("eth0");
        let mut batch = ports::access(PortProtocol::Tcp, 5555, Some(&eth0)).unwrap();
        batch.extend(ports::lockdown(PortProtocol::Udp, 8080, 1000).unwrap());
        batch.extend(
            ports::forwarding(&Forwarding {
                proto: PortProtocol::Tcp,
                ifname: eth0.clone(),
                input_dst: None,
                input_port: 8022,
                dst: Ipv4Addr::new(100, 115, 92, 6),
                dst_port: 22,
            })
            .unwrap(),
        );
        assert!(!fw
            .list_chains(Family::V4, Table::Mangle)
            .unwrap()
            .contains(&"rx_eth0".to_string()));
        batch.extend(counters::accounting_chains(&eth0));
        batch.extend(counters::accounting_jumps(&eth0));
        fw.apply(&batch).unwrap();
        let v4 = fw.dump(Family::V4).unwrap();
        for line in [
            "-A ingress_port_firewall -i eth0 -p tcp -m tcp --dport 5555 -j ACCEPT",
            "-A ingress_port_forwarding -i eth0 -p tcp -m tcp --dport 8022 -j DNAT --to-destination 100.115.92.6:22",
            "-A patchpanel_FORWARD -i eth0 -j rx_eth0",
            "-A rx_eth0 -m mark --mark 0x2400/0x3f00 -j RETURN",
            "-A tx_eth0",
        ] {
            assert!(v4.contains(&format!("{line}\n")), "{line}\n{v4}");
        }
        assert!(fw
            .list_chains(Family::V6, Table::Mangle)
            .unwrap()
            .contains(&"tx_eth0".to_string()));

        fw.remove_all(&counters::is_accounting_chain).unwrap();
        for family in Family::ALL {
            let mut kept = fw.list_chains(family, Table::Mangle).unwrap();
            kept.sort();
            assert_eq!(kept, ["rx_eth0", "tx_eth0"], "{family}");
        }
        // The kept chains still count; a restart creates only the jumps.
        fw.setup(&Layout::default()).unwrap();
        fw.apply(&counters::accounting_jumps(&eth0)).unwrap();
        fw.remove_all(&|_| false).unwrap();
        assert_eq!(snapshot(&mut fw), before);
    });
}

#[test]
fn remove_all_leaves_a_foreign_chain_that_only_looks_like_ours() {
    in_fresh_netns(|| {
        load_host_fixture();
        // firewalld's iptables backend names chains like our per-interface
        // ones.
        restore(
            Family::V4,
            "*mangle\n\
             -N PREROUTING_direct\n\
             -A PREROUTING_direct -i eth9 -j MARK --set-mark 0x7/0xff\n\
             -A PREROUTING -j PREROUTING_direct\n\
             COMMIT\n",
        );
        let mut fw = IptablesRestore::new().unwrap();
        let before = snapshot(&mut fw);
        fw.setup(&Layout::default()).unwrap();
        fw.apply(&guest::connected_namespace(&namespace())).unwrap();
        fw.remove_all(&|_| false).unwrap();
        assert_eq!(snapshot(&mut fw), before);
    });
}

/// `nft list ruleset`, counters aside.
fn nft_ruleset() -> String {
    run("nft", &["list", "ruleset"], None)
        .lines()
        .map(|l| match l.find("counter packets ") {
            // "counter packets 3 bytes 252 ..." -> "counter ..."
            Some(i) => {
                let rest: Vec<&str> = l[i..].split(' ').skip(5).collect();
                format!("{}counter {}", &l[..i], rest.join(" "))
            }
            None => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn tables_and_base_chains_patchpanels_start_created_are_removed_at_stop() {
    in_fresh_netns(|| {
        // The host uses iptables for a filter table only (both families).
        iptables(Family::V4, &["-P", "FORWARD", "DROP"]);
        iptables(
            Family::V6,
            &["-A", "INPUT", "-s", "2001:db8::9", "-j", "DROP"],
        );
        let before = nft_ruleset();
        assert!(!before.contains("table ip6 nat") && !before.contains("table ip mangle"));
        let mut fw = IptablesRestore::new().unwrap();
        let eth0 = ifname("eth0");
        for round in 0..2 {
            fw.setup(&Layout::default()).unwrap();
            let running = nft_ruleset();
            assert!(
                running.contains("table ip6 nat"),
                "round {round}:\n{running}"
            );
            assert!(running.contains("chain patchpanel_created"), "{running}");
            let mut batch = guest::connected_namespace(&namespace());
            if round == 0 {
                // Kept across the stop, as the manager keeps them.
                batch.extend(counters::accounting_chains(&eth0));
            }
            batch.extend(counters::accounting_jumps(&eth0));
            fw.apply(&batch).unwrap();
            // A clean stop keeps the accounting chains: their tables stay,
            // without the base chains iptables-nft made (no hook is left).
            fw.remove_all(&counters::is_accounting_chain).unwrap();
            let stopped = nft_ruleset();
            for gone in ["table ip6 nat", "table ip nat"] {
                assert!(!stopped.contains(gone), "round {round}: {gone}\n{stopped}");
            }
            for family in ["ip", "ip6"] {
                let mangle = run("nft", &["list", "table", family, "mangle"], None);
                assert!(!mangle.contains(" hook "), "{mangle}");
                assert!(mangle.contains("chain rx_eth0"), "{mangle}");
            }
        }
        // The host's own filter tables are as they were, hooks and all.
        fw.remove_all(&|_| false).unwrap();
        assert_eq!(nft_ruleset(), before);
    });
}

#[test]
fn the_nftables_backend_sweeps_what_the_iptables_backend_left_over_netlink() {
    in_fresh_netns(|| {
        load_host_fixture();
        let before = nft_ruleset();
        let mut fw = IptablesRestore::new().unwrap();
        fw.setup(&Layout::default()).unwrap();
        let eth0 = ifname("eth0");
        let mut batch = guest::connected_namespace(&namespace());
        batch.extend(counters::accounting_chains(&eth0));
        batch.extend(counters::accounting_jumps(&eth0));
        batch.extend(ports::access(PortProtocol::Tcp, 5555, Some(&eth0)).unwrap());
        fw.apply(&batch).unwrap();
        // A crash: nothing removed. The successor runs nftables.
        let removed = patchpanel_firewall::nft::remove_iptables_leftovers().unwrap();
        assert!(
            removed.iter().any(|r| r.to_string().contains("hook")),
            "{removed:?}"
        );
        assert_eq!(nft_ruleset(), before);
        // Nothing left: a second sweep finds nothing.
        assert!(patchpanel_firewall::nft::remove_iptables_leftovers()
            .unwrap()
            .is_empty());
    });
}

#[test]
fn the_sweep_removes_the_tables_the_iptables_backend_made() {
    in_fresh_netns(|| {
        let mut fw = IptablesRestore::new().unwrap();
        fw.setup(&Layout::default()).unwrap();
        fw.apply(&guest::connected_namespace(&namespace())).unwrap();
        let removed = patchpanel_firewall::nft::remove_iptables_leftovers().unwrap();
        assert!(
            removed
                .iter()
                .any(|r| matches!(r.what, patchpanel_firewall::backend::RemovedKind::Table)),
            "{removed:?}"
        );
        assert_eq!(nft_ruleset(), "");
    });
}

#[test]
fn a_flush_of_the_mangle_table_announces_the_final_counts_of_the_accounting_rules() {
    in_fresh_netns(|| {
        run("ip", &["link", "set", "lo", "up"], None);
        let mut fw = IptablesRestore::new().unwrap();
        fw.setup(&Layout::default()).unwrap();
        let lo = ifname("lo");
        let mut batch = counters::accounting_chains(&lo);
        batch.extend(counters::accounting_jumps(&lo));
        fw.apply(&batch).unwrap();
        run("ping", &["-c", "3", "-i", "0.2", "-q", "127.0.0.1"], None);
        let counted: u64 = fw
            .read_counters()
            .unwrap()
            .iter()
            .filter(|s| s.family == Family::V4 && s.direction == counters::Direction::Rx)
            .map(|s| s.packets)
            .sum();
        assert!(counted >= 6, "{counted}");
        let mut monitor = patchpanel_firewall::nft::monitor::Monitor::open().unwrap();

        // netfilter-persistent restores a mangle table without --noflush.
        run(
            "/usr/sbin/iptables-nft-restore",
            &["-w"],
            Some("*mangle\n:PREROUTING ACCEPT [0:0]\nCOMMIT\n"),
        );

        let events = monitor.read().unwrap();
        let lost: Vec<_> = events
            .transactions
            .iter()
            .flat_map(|t| t.lost_iptables_counters.iter())
            .collect();
        let rx: u64 = lost
            .iter()
            .filter(|s| s.family == Family::V4 && s.direction == counters::Direction::Rx)
            .map(|s| s.packets)
            .sum();
        assert_eq!(rx, counted, "{lost:?}");
        assert!(
            lost.iter().all(|s| s.ifname == "lo"),
            "only the accounting chains: {lost:?}"
        );
        fw.remove_all(&|_| false).unwrap();
    });
}
