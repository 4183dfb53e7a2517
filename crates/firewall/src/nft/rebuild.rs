//! [`FirewallBackend::rebuild`](crate::backend::FirewallBackend::rebuild)
//! as one nf_tables transaction: patchpanel's six tables deleted and made
//! again with the layout and a batch, nothing in between visible to a
//! packet.

use std::collections::HashMap;

use super::*;

impl Nftables {
    /// [`FirewallBackend::rebuild`] as one nf_tables transaction: delete
    /// what is left of patchpanel's six tables, create them again with
    /// `layout` (chains, hooks, static rules, port sets), then every change
    /// of `batch`. Nothing in between is ever visible to a packet, and a
    /// refusal leaves the kernel as it was.
    pub(super) fn rebuild_in_one_transaction(
        &mut self,
        layout: &Layout,
        batch: &Batch,
    ) -> Result<Vec<CounterSample>, FirewallError> {
        layout.validate()?;
        batch.validate_changes()?;
        let mut present = Vec::new();
        for family in Family::ALL {
            let names = table_names(family)?;
            for table in Table::ALL {
                if names.iter().any(|n| n == table_name(table)) {
                    present.push((family, table));
                }
            }
        }
        // What the accounting rules counted so far (the tables may be
        // partly there: someone deleted a chain or a hook only).
        let carried = if present.is_empty() {
            Vec::new()
        } else {
            self.read_counters().unwrap_or_default()
        };
        let mut tx = Tx::new();
        for &(family, table) in &present {
            tx.push(
                &mut self.sock,
                format!("{family} delete table {}", table_name(table)),
                |seq| {
                    let mut m = MsgBuilder::nft(msg::DELTABLE, 0, seq, nfproto(family));
                    m.str(table_attr::NAME, table_name(table));
                    m
                },
            );
        }
        self.ensure_tables(&mut tx);
        let mut sim: HashMap<ChainKey, Vec<Entry>> = HashMap::new();
        let mut fresh_sets = Vec::new();
        for want in &layout.tables {
            let (family, table) = (want.family, want.table);
            let proto = nfproto(family);
            let tname = table_name(table);
            for spec in &want.chains {
                let name = spec.chain.as_str().to_string();
                tx.push(
                    &mut self.sock,
                    format!("{family} {table}: -N {name}"),
                    |seq| {
                        let mut m = MsgBuilder::nft(msg::NEWCHAIN, wire::NLM_F_CREATE, seq, proto);
                        m.str(chain_attr::TABLE, tname);
                        m.str(chain_attr::NAME, &name);
                        m
                    },
                );
                sim.insert((family, table, name), Vec::new());
            }
            for spec in &want.chains {
                if let ChainContent::Static(content) = &spec.content {
                    let name = spec.chain.as_str();
                    for rule in content {
                        self.push_new_rule(&mut tx, &mut sim, family, table, name, rule)?;
                    }
                }
            }
            for hook in &want.hooks {
                tx.push_base_chain(&mut self.sock, family, table, hook.builtin);
                let name = hook.builtin.name();
                sim.insert((family, table, name.to_string()), Vec::new());
                let jump = hook_rule(&hook.root);
                self.push_new_rule(&mut tx, &mut sim, family, table, name, &jump)?;
            }
            for set in sets::of_layout(want) {
                let set_id = tx.push_port_set(&mut self.sock, family, set);
                let rule_id = tx.next_id;
                tx.next_id += 1;
                tx.push(
                    &mut self.sock,
                    format!("{family} {table}: -A {} {}", set.chain, set.lookup_spec()),
                    |seq| {
                        let mut m = sets::lookup_rule(seq, family, set, Some(set_id), true);
                        m.be32(rule_attr::ID, rule_id);
                        m
                    },
                );
                // Not echoed (no NLM_F_ECHO): its chain is read back
                // from the kernel when next needed.
                if let Some(entries) = sim.get_mut(&(family, table, set.chain.to_string())) {
                    entries.push(Entry {
                        handle: None,
                        id: Some(rule_id),
                        spec: set.lookup_spec(),
                    });
                }
                fresh_sets.push((family, set.name));
            }
        }
        // The transaction's view of the port sets: empty, just made.
        self.sets.clear();
        for key in fresh_sets {
            self.sets.insert(key, HashMap::new());
        }
        self.cache.clear();
        for family in Family::ALL {
            for table in Table::ALL {
                for change in batch.changes(family).iter().filter(|c| c.table() == table) {
                    let key = (family, table, change.chain().as_str().to_string());
                    if !matches!(change, Change::NewChain { .. }) && !sim.contains_key(&key) {
                        return Err(FirewallError::Unsupported {
                            what: format!(
                                "rebuild: {family} {table}: {} names a chain that is neither in the layout nor made by the batch",
                                change_lines(change).join(" ")
                            ),
                        });
                    }
                    self.add_change(&mut tx, &mut sim, family, change)?;
                }
            }
        }
        let result = self.commit(tx, sim);
        if result.is_err() {
            // Nothing changed in the kernel; what was cached is unknown now.
            self.cache.clear();
            self.sets.clear();
        }
        result.map(|()| carried)
    }

    /// Appends `rule` to a chain made in this transaction (with an id, so
    /// that later positions can name it).
    fn push_new_rule(
        &mut self,
        tx: &mut Tx,
        sim: &mut HashMap<ChainKey, Vec<Entry>>,
        family: Family,
        table: Table,
        chain: &str,
        rule: &Rule,
    ) -> Result<(), FirewallError> {
        let spec = rule_spec(rule);
        let id = tx.next_id;
        tx.next_id += 1;
        tx.try_push(
            &mut self.sock,
            format!("{family} {table}: -A {chain} {spec}"),
            |seq| {
                let mut m = Self::rule_message(
                    seq,
                    family,
                    table,
                    chain,
                    wire::NLM_F_CREATE | wire::NLM_F_APPEND | wire::NLM_F_ECHO,
                    rule,
                    (0, 0),
                )?;
                m.be32(rule_attr::ID, id);
                Ok(m)
            },
        )?;
        let key = (family, table, chain.to_string());
        tx.new_rules.push((key.clone(), id));
        sim.entry(key).or_default().push(Entry {
            handle: None,
            id: Some(id),
            spec,
        });
        Ok(())
    }
}
