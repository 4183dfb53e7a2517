//! Following the host's rule set (issue: the host's firewall changes after
//! start: Docker, ufw, `systemctl restart nftables`, firewalld): the
//! writer subscribes to nf_tables' notifications, tells its own
//! transactions (its pid, or a tool it ran) from everybody else's, and
//! tells the manager about the others in one event per wake-up. The
//! manager waits for the burst to end, then asks for a check
//! ([`patchpanel_ipc::Request::CheckFirewall`]) and, if patchpanel's
//! firewall was touched, rebuilds it from its state.

use log::{debug, warn};
use patchpanel_firewall::nft::coexist::is_patchpanel_table;
use patchpanel_firewall::nft::monitor::{Monitor, Object, Op, Transaction};
use patchpanel_firewall::FirewallChoice;
use patchpanel_ipc::FirewallChange;

/// The subscription and who "we" are.
#[derive(Debug)]
pub struct FirewallWatch {
    monitor: Monitor,
    own_pid: u32,
}

impl FirewallWatch {
    pub fn open() -> std::io::Result<FirewallWatch> {
        Ok(FirewallWatch {
            monitor: Monitor::open()?,
            own_pid: std::process::id(),
        })
    }

    pub fn fd(&self) -> std::os::fd::RawFd {
        self.monitor.fd()
    }

    /// Reads what arrived; one change to report, if another program made
    /// any.
    pub fn read(&mut self, backend: Option<FirewallChoice>) -> Option<FirewallChange> {
        let events = match self.monitor.read() {
            Ok(e) => e,
            Err(e) => {
                warn!("nf_tables notifications: {e}");
                return None;
            }
        };
        let own_pid = self.own_pid;
        let own = move |pid: Option<u32>| {
            pid.is_some_and(|p| p == own_pid || patchpanel_firewall::iptables::spawned_recently(p))
        };
        let change = assess(&events.transactions, own, backend, events.overrun);
        if let Some(c) = &change {
            debug!(
                "host firewall changed by {} (ours touched: {}, overrun: {})",
                c.by, c.ours, c.overrun
            );
        }
        change
    }
}

/// iptables-nft's tables, where the iptables backend keeps its chains.
const IPTABLES_TABLES: [&str; 3] = ["filter", "nat", "mangle"];

/// Whether a notice definitely changed what the iptables backend made:
/// one of its tables went, or one of its chains (by name) changed.
fn touches_iptables_backend(t: &Transaction) -> bool {
    t.notices.iter().any(|n| {
        let family_ok = n.family == 2 || n.family == 10;
        family_ok
            && IPTABLES_TABLES.contains(&n.table.as_str())
            && match n.object {
                Object::Table => n.op == Op::Delete,
                Object::Chain | Object::Rule => n
                    .chain
                    .as_deref()
                    .is_some_and(patchpanel_firewall::model::is_owned_chain_name),
                _ => false,
            }
    })
}

/// The change to report for these transactions: those `own` did not
/// commit. `ours` when they touched patchpanel's tables (nftables
/// backend) or chains (iptables backend); a change to a built-in chain
/// that holds the iptables backend's hook is caught by the check that
/// follows every change.
pub fn assess(
    transactions: &[Transaction],
    own: impl Fn(Option<u32>) -> bool,
    backend: Option<FirewallChoice>,
    overrun: bool,
) -> Option<FirewallChange> {
    let foreign: Vec<&Transaction> = transactions.iter().filter(|t| !own(t.pid)).collect();
    if foreign.is_empty() && !overrun {
        return None;
    }
    let ours = foreign.iter().any(|t| match backend {
        Some(FirewallChoice::Iptables) => touches_iptables_backend(t),
        _ => t.touches(is_patchpanel_table),
    });
    let mut by: Vec<String> = foreign.iter().take(3).map(|t| t.describe()).collect();
    if foreign.len() > 3 {
        by.push(format!("and {} more transaction(s)", foreign.len() - 3));
    }
    if overrun {
        by.push("notifications overran: some changes are not known".into());
    }
    Some(FirewallChange {
        by: by.join("; "),
        ours,
        overrun,
        // The accounting chains of the backend in use: with the nftables
        // backend, `rx_*` chains in iptables' mangle table are another
        // program's (or leftovers the start swept).
        lost_counters: foreign
            .iter()
            .flat_map(|t| match backend {
                Some(FirewallChoice::Iptables) => t.lost_iptables_counters.iter(),
                _ => t.lost_counters.iter(),
            })
            .cloned()
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use patchpanel_firewall::nft::monitor::Notice;

    fn transaction(pid: u32, table: &str, object: Object, chain: Option<&str>) -> Transaction {
        Transaction {
            pid: Some(pid),
            process: "nft".into(),
            notices: vec![Notice {
                op: Op::Delete,
                object,
                family: 2,
                table: table.into(),
                chain: chain.map(str::to_string),
            }],
            lost_counters: Vec::new(),
            lost_iptables_counters: Vec::new(),
        }
    }

    #[test]
    fn our_own_transactions_are_not_reported() {
        let t = [transaction(7, "patchpanel_nat", Object::Table, None)];
        assert_eq!(assess(&t, |p| p == Some(7), None, false), None);
    }

    #[test]
    fn another_programs_change_to_our_tables_asks_for_a_rebuild() {
        let t = [transaction(9, "patchpanel_nat", Object::Table, None)];
        let c =
            assess(&t, |p| p == Some(7), Some(FirewallChoice::Nftables), false).expect("reported");
        assert!(c.ours);
        assert!(
            c.by.starts_with("nft (pid 9): delete table ip patchpanel_nat"),
            "{}",
            c.by
        );
    }

    #[test]
    fn another_programs_change_elsewhere_is_reported_but_not_ours() {
        let t = [transaction(9, "filter", Object::Chain, Some("DOCKER"))];
        let c = assess(&t, |_| false, Some(FirewallChoice::Nftables), false).expect("reported");
        assert!(!c.ours);
    }

    #[test]
    fn with_the_iptables_backend_its_chains_in_iptables_tables_are_ours() {
        let mine = [transaction(
            9,
            "filter",
            Object::Rule,
            Some("guest_forward"),
        )];
        let theirs = [transaction(
            9,
            "filter",
            Object::Rule,
            Some("ufw-user-input"),
        )];
        let gone = [transaction(9, "nat", Object::Table, None)];
        let ipt = Some(FirewallChoice::Iptables);
        assert!(assess(&mine, |_| false, ipt, false).expect("mine").ours);
        assert!(!assess(&theirs, |_| false, ipt, false).expect("theirs").ours);
        assert!(assess(&gone, |_| false, ipt, false).expect("gone").ours);
    }

    #[test]
    fn the_lost_counts_are_those_of_the_backend_in_use() {
        use patchpanel_firewall::counters::{CounterSample, Direction};
        let sample = |packets| CounterSample {
            family: patchpanel_firewall::Family::V4,
            direction: Direction::Rx,
            ifname: "eth0".into(),
            source: None,
            packets,
            bytes: packets * 100,
        };
        let mut t = transaction(9, "mangle", Object::Rule, Some("rx_eth0"));
        t.lost_counters = vec![sample(1)];
        t.lost_iptables_counters = vec![sample(2)];
        let t = [t];
        let lost = |backend| {
            assess(&t, |_| false, backend, false)
                .expect("reported")
                .lost_counters
        };
        assert_eq!(lost(Some(FirewallChoice::Iptables)), vec![sample(2)]);
        assert_eq!(lost(Some(FirewallChoice::Nftables)), vec![sample(1)]);
    }

    #[test]
    fn an_overrun_is_reported_even_without_a_transaction() {
        let c = assess(&[], |_| false, None, true).expect("reported");
        assert!(c.overrun && !c.ours);
    }
}
