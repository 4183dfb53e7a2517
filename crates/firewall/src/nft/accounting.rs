//! The accounting chains' named counters ([`objects`]) as the backend
//! writes them: which counter a rule counts into, their deletion with
//! their rules and chains, the dump that reads them, and the rewrite of
//! accounting chains an earlier version wrote.

use super::*;

/// The named counter a rule of `chain` counts into: an accounting rule's
/// ([`objects`]); `None` for every other rule.
pub(super) fn accounting_counter(table: Table, chain: &str, rule: &Rule) -> Option<String> {
    if table == objects::TABLE && is_accounting_chain(chain) {
        counter_name(chain, rule)
    } else {
        None
    }
}

impl Nftables {
    /// Accounting chains an earlier version wrote count in a counter of
    /// each rule only, not also in named counters ([`objects`]): queues a
    /// rewrite of each such chain (present in `have`, without a named
    /// counter) into `tx`, its counters starting at what its rules counted
    /// (returned by (family, counter name), for the new rules' own).
    pub(super) fn migrate_accounting(
        &mut self,
        tx: &mut Tx,
        have: &HashMap<(Family, Table), Vec<DumpedChain>>,
        flushes: &mut Vec<(Family, Table, String)>,
        rules: &mut Vec<(Family, Table, String, Rule)>,
    ) -> Result<CarriedCounts, FirewallError> {
        let mut carried_by_name = HashMap::new();
        for family in Family::ALL {
            let accounting: Vec<&str> = have
                .get(&(family, objects::TABLE))
                .into_iter()
                .flatten()
                .filter(|c| !c.is_base && is_accounting_chain(&c.name))
                .map(|c| c.name.as_str())
                .collect();
            if accounting.is_empty() {
                continue;
            }
            let counters = self.counters(family)?;
            for chain in accounting {
                let prefix = format!("{chain}/");
                if counters.iter().any(|c| c.name.starts_with(&prefix)) {
                    continue;
                }
                let old = self.rules(family, objects::TABLE, Some(chain))?;
                // Not ours alone (another program's rule in it): rewritten
                // all the same, its counts lost.
                let samples = counters_of(family, &old).unwrap_or_else(|e| {
                    log::warn!(
                        "nf_tables: {family} accounting chain {chain}: {e}; its counts start again"
                    );
                    Vec::new()
                });
                log::info!(
                    "nf_tables: {family} accounting chain {chain} moves to named counters ({} counts carried)",
                    samples.len()
                );
                for rule in crate::counters::accounting_rules() {
                    let Some(name) = counter_name(chain, &rule) else {
                        continue;
                    };
                    let carried = samples
                        .iter()
                        .find(|s| crate::counters::counter_name_of_source(chain, s.source) == name)
                        .map_or((0, 0), |s| (s.packets, s.bytes));
                    tx.push(
                        &mut self.sock,
                        format!("{family} mangle: counter {name}"),
                        |seq| objects::new_counter(seq, family, &name, carried),
                    );
                    carried_by_name.insert((family, name), carried);
                    rules.push((family, objects::TABLE, chain.to_string(), rule));
                }
                flushes.push((family, objects::TABLE, chain.to_string()));
            }
        }
        Ok(carried_by_name)
    }

    /// Queues the deletion of named counter `name` unless `tx` deletes it
    /// already.
    pub(super) fn push_counter_delete(
        &mut self,
        tx: &mut Tx,
        family: Family,
        name: &str,
        what: &str,
    ) {
        if tx.deleted_counters.insert((family, name.to_string())) {
            tx.push(&mut self.sock, format!("{what} (counter {name})"), |seq| {
                objects::del_counter(seq, family, name)
            });
        }
    }

    /// The named counters of patchpanel's accounting table in `family`.
    pub(super) fn counters(
        &mut self,
        family: Family,
    ) -> Result<Vec<objects::Counter>, FirewallError> {
        self.counters_of_family(nfproto(family))
    }

    /// The same for an `nfgenmsg` family (`NFPROTO_UNSPEC`: every family's
    /// table of that name, in one dump).
    pub(super) fn counters_of_family(
        &mut self,
        proto: u8,
    ) -> Result<Vec<objects::Counter>, FirewallError> {
        match self
            .sock
            .dump(objects::msg::GETOBJ, proto, &objects::dump_filter())
        {
            Ok(replies) => Ok(replies.iter().filter_map(objects::parse_counter).collect()),
            // No table: no counters.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(Vec::new()),
            Err(e) => Err(netlink_error(format!("list counters (family {proto})"), &e)),
        }
    }

    /// Queues the deletion of the counters of accounting chain `chain`,
    /// which `tx` deletes (a flush leaves them: the same rules added again
    /// count on). Nothing for another chain.
    pub(super) fn push_chain_counters_delete(
        &mut self,
        tx: &mut Tx,
        family: Family,
        table: Table,
        chain: &str,
        what: &str,
    ) -> Result<(), FirewallError> {
        if table != objects::TABLE || !is_accounting_chain(chain) {
            return Ok(());
        }
        let prefix = format!("{chain}/");
        for c in self.counters(family)? {
            if c.name.starts_with(&prefix) {
                self.push_counter_delete(tx, family, &c.name, what);
            }
        }
        Ok(())
    }
}
