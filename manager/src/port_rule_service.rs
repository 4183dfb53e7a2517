//! ModifyPortRule as the daemon runs it: the policy is
//! [`crate::port_rules`]'s; this module applies the batch through the
//! [`Env`], records the change in the port rule journal, and takes a
//! change back that cannot be recorded. After a crash the previous run's
//! rules are applied again.

use log::{error, info, warn};
use patchpanel_ipc::datapath::{ApplyMode, Plan, Step};
use prost::Message as _;

use crate::env::Env;
use crate::error::CallError;
use crate::port_rules::{batch, check_limits, conflict, PortOp, PortPolicy, PortRule};
use crate::state::{PortRuleChange, StateFile};

fn invalid(message: impl Into<String>) -> CallError {
    CallError::InvalidArgument(message.into())
}

/// `ModifyPortRule` as the daemon runs it: checks against the active
/// `rules`, applies the batch, and records the change in the journal; a
/// change that cannot be recorded is taken back (unrecorded, a rule would
/// outlive a crash unknown, or a deleted one come back).
pub fn modify(
    env: &mut Env<'_>,
    rules: &mut Vec<PortRule>,
    journal: &StateFile,
    policy: &PortPolicy,
    op: PortOp,
    client: &str,
    op_id: u64,
) -> Result<Vec<u8>, CallError> {
    let (rule, batch, create) = match op {
        PortOp::Create(rule) => {
            if let Some(why) = conflict(rules, &rule) {
                return Err(invalid(format!("ModifyPortRule: {why}")));
            }
            check_limits(rules, &rule, policy)?;
            let batch = batch(&rule, policy)?;
            (rule, batch, true)
        }
        PortOp::Delete(rule) => {
            if !rules.contains(&rule) {
                return Err(invalid("ModifyPortRule: no such rule to delete"));
            }
            let batch = batch(&rule, policy)?
                .inverse()
                .map_err(|e| CallError::Failed(format!("ModifyPortRule: {e}")))?;
            (rule, batch, false)
        }
    };
    let undo = batch
        .inverse()
        .map_err(|e| CallError::Failed(format!("ModifyPortRule: {e}")))?;
    let plan = |label: String, batch| Plan {
        label,
        mode: ApplyMode::Atomic,
        steps: vec![Step::Firewall(batch)],
    };
    env.apply(plan(format!("ModifyPortRule op {op_id}"), batch), &[])?;
    let change = if create {
        rules.push(rule.clone());
        PortRuleChange::Added
    } else {
        rules.retain(|r| *r != rule);
        PortRuleChange::Removed
    };
    if let Err(e) = journal.record_port_rule(change, &rule, rules) {
        if create {
            rules.retain(|r| *r != rule);
        } else {
            rules.push(rule.clone());
        }
        let undone = env.apply(plan(format!("ModifyPortRule op {op_id}: undo"), undo), &[]);
        if let Err(u) = &undone {
            error!("ModifyPortRule op {op_id}: cannot undo the unrecorded change: {u}");
        }
        let journal = journal.journal_path().display();
        return Err(CallError::Failed(if undone.is_ok() {
            format!(
                "ModifyPortRule: cannot record the change in {journal}: {e}; nothing was changed"
            )
        } else {
            format!("ModifyPortRule: cannot record the change in {journal}: {e}, and cannot undo it in the kernel")
        }));
    }
    info!(
        "ModifyPortRule op {op_id} from {client}: {} {rule}",
        if create { "created" } else { "deleted" }
    );
    Ok(patchpanel_proto::ModifyPortRuleResponse { success: true }.encode_to_vec())
}

/// A crash restart: the previous run's port rules are still wanted
/// (permission_broker holds them), so they are applied again.
pub fn readopt(
    env: &mut Env<'_>,
    rules: &mut Vec<PortRule>,
    previous: &[PortRule],
    policy: &PortPolicy,
) {
    for rule in previous {
        let result = batch(rule, policy).and_then(|batch| {
            env.apply(
                Plan {
                    label: format!("re-adopt port rule {rule}"),
                    mode: ApplyMode::Atomic,
                    steps: vec![Step::Firewall(batch)],
                },
                &[],
            )
        });
        match result {
            Ok(_) => rules.push(rule.clone()),
            Err(e) => warn!("port rule {rule} from the previous run not re-applied: {e}"),
        }
    }
    if !previous.is_empty() {
        info!(
            "re-applied {} of {} port rule(s) of the previous run",
            rules.len(),
            previous.len()
        );
    }
}

#[cfg(test)]
mod tests {
    use patchpanel_addr::AddressManager;
    use patchpanel_firewall::ports::PortProtocol;
    use patchpanel_ipc::Request;

    use super::*;
    use crate::env::{Effects, FakeDatapath};
    use crate::uplinks::UplinkView;

    fn policy() -> PortPolicy {
        PortPolicy::with_defaults(1000)
    }

    fn a_rule(port: u16) -> PortRule {
        PortRule::Access {
            proto: PortProtocol::Tcp,
            port,
            ifname: None,
        }
    }

    #[test]
    fn a_change_the_journal_cannot_record_is_undone_in_the_kernel() {
        let mut datapath = FakeDatapath::default();
        let mut addrs = AddressManager::new();
        let uplinks = UplinkView::default();
        let mut effects = Effects::default();
        let mut env = Env::new(&mut datapath, &mut addrs, &uplinks, &mut effects);
        // A journal in a directory that does not exist cannot be written.
        let journal = StateFile::new(std::path::Path::new("/nonexistent/pp-state"));
        let mut rules = Vec::new();
        let e = modify(
            &mut env,
            &mut rules,
            &journal,
            &policy(),
            PortOp::Create(a_rule(9292)),
            ":1.4",
            5,
        )
        .unwrap_err();
        assert!(
            matches!(&e, CallError::Failed(m) if m.contains("nothing was changed")),
            "{e:?}"
        );
        assert!(rules.is_empty(), "the rule is not active");
        assert_eq!(
            datapath.plan_labels(),
            ["ModifyPortRule op 5", "ModifyPortRule op 5: undo"]
        );
        let (Request::Apply(apply), Request::Apply(undo)) =
            (&datapath.requests[0], &datapath.requests[1])
        else {
            panic!("{:?}", datapath.requests);
        };
        let (Step::Firewall(a), Step::Firewall(u)) = (&apply.steps[0], &undo.steps[0]) else {
            panic!("firewall steps");
        };
        assert_eq!(&a.inverse().unwrap(), u, "the undo is the change's inverse");
    }

    #[test]
    fn a_refused_batch_leaves_the_active_rules_as_they_were() {
        let mut datapath = FakeDatapath::default();
        datapath.fail_next(CallError::Failed("nf_tables refused".into()));
        let mut addrs = AddressManager::new();
        let uplinks = UplinkView::default();
        let mut effects = Effects::default();
        let mut env = Env::new(&mut datapath, &mut addrs, &uplinks, &mut effects);
        let dir = tempfile::tempdir().expect("tempdir");
        let journal = StateFile::new(dir.path());
        let mut rules = vec![a_rule(1)];
        let e = modify(
            &mut env,
            &mut rules,
            &journal,
            &policy(),
            PortOp::Create(a_rule(2)),
            ":1.4",
            6,
        );
        assert!(e.is_err());
        assert_eq!(rules, vec![a_rule(1)]);
        assert!(!journal.journal_path().exists(), "nothing recorded");
    }
}
