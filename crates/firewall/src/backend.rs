//! What a firewall backend does, independent of the tool behind it.
//!
//! The datapath writer holds one backend. `setup` (at start, idempotent)
//! creates the layout's chains and hooks; `apply` applies one operation's
//! [`Batch`] all-or-nothing; `remove_all` takes patchpanel's state out of
//! the kernel, whatever part of it exists; `dump` is for diagnostics and
//! tests.

use std::fmt;
use std::path::PathBuf;

use crate::layout::Layout;
use crate::model::{Batch, BuiltinChain, Family, InverseError, OwnedChain, Table, ValidationError};

/// Which backend the datapath writer uses (`firewall_backend` in the
/// configuration).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum FirewallChoice {
    /// nf_tables if the kernel answers, else iptables (logged).
    #[default]
    Auto,
    Nftables,
    Iptables,
}

impl FirewallChoice {
    pub fn parse(s: &str) -> Option<FirewallChoice> {
        match s {
            "auto" => Some(FirewallChoice::Auto),
            "nftables" => Some(FirewallChoice::Nftables),
            "iptables" => Some(FirewallChoice::Iptables),
            _ => None,
        }
    }
}

pub trait FirewallBackend {
    /// Creates the layout's missing dynamic chains, rewrites its static
    /// chains, and leaves exactly one hook at position 1 of each hooked
    /// built-in chain. Never changes a policy or a rule without
    /// patchpanel's comment in a built-in chain. Safe to call again.
    fn setup(&mut self, layout: &Layout) -> Result<SetupReport, FirewallError>;

    /// Validates and applies `batch`. On failure, undoes what it applied
    /// and returns the error (naming the failing line).
    fn apply(&mut self, batch: &Batch) -> Result<(), FirewallError>;

    /// Removes patchpanel's hooks and chains in both families, except the
    /// chains `keep` names (accounting chains persist across restarts).
    /// Works on partial state; keeps going after an error and reports all.
    fn remove_all(&mut self, keep: &dyn Fn(&str) -> bool) -> Result<Vec<Removed>, RemoveAllError>;

    /// The user-defined chains of one table (to create persistent chains,
    /// such as accounting chains, only when they are missing).
    fn list_chains(&mut self, family: Family, table: Table) -> Result<Vec<String>, FirewallError>;

    /// The totals of every accounting rule (`rx_*`/`tx_*`), both families.
    /// A dump that cannot be parsed is an error, never zeros.
    fn read_counters(&mut self) -> Result<Vec<crate::counters::CounterSample>, FirewallError>;
    /// The whole rule set of `family`, in `iptables-save` format.
    fn dump(&mut self, family: Family) -> Result<String, FirewallError>;

    /// The chains and hooks of `layout` that are not in the kernel (after
    /// another program changed the rule set), as `ip filter chain
    /// guest_forward` / `ip6 nat hook POSTROUTING -> patchpanel_POSTROUTING`.
    fn missing(&mut self, layout: &Layout) -> Result<Vec<String>, FirewallError> {
        let mut missing = Vec::new();
        for family in Family::ALL {
            let dump = self.dump(family)?;
            for want in layout.tables.iter().filter(|t| t.family == family) {
                let have = self.list_chains(family, want.table)?;
                for spec in &want.chains {
                    if !have.iter().any(|c| c == spec.chain.as_str()) {
                        missing.push(format!(
                            "{family} {} chain {}",
                            want.table,
                            spec.chain.as_str()
                        ));
                    }
                }
                let section = save_section(&dump, want.table);
                for hook in &want.hooks {
                    let start = format!("-A {} ", hook.builtin.name());
                    let jump = format!(" -j {}", hook.root.as_str());
                    let hooked = section
                        .lines()
                        .any(|l| l.starts_with(&start) && l.ends_with(&jump));
                    if !hooked {
                        missing.push(format!(
                            "{family} {} hook {} -> {}",
                            want.table,
                            hook.builtin.name(),
                            hook.root.as_str()
                        ));
                    }
                }
            }
        }
        Ok(missing)
    }

    /// Replaces whatever is left of patchpanel's firewall (after someone
    /// else flushed or edited it) with `layout` and then `batch`, which
    /// holds everything the daemon's state asks for (accounting chains
    /// included). Returns the final counts of the accounting rules it
    /// removed, so that the daemon can carry them over.
    ///
    /// This default removes, sets up and applies in steps (the iptables
    /// backend: one `iptables-nft-restore` per table and step); the
    /// nftables backend does all of it in one kernel transaction.
    fn rebuild(
        &mut self,
        layout: &Layout,
        batch: &Batch,
    ) -> Result<Vec<crate::counters::CounterSample>, FirewallError> {
        let carried = self.read_counters().unwrap_or_default();
        if let Err(e) = self.remove_all(&|_| false) {
            log::warn!("rebuild: removing what was left: {e}");
        }
        self.setup(layout)?;
        for page in batch.pages(crate::model::MAX_CHANGES_PER_FAMILY) {
            self.apply(&page)?;
        }
        Ok(carried)
    }
}

/// The lines of `table`'s section (`*nat` ... `COMMIT`) of an
/// `iptables-save` text.
fn save_section(dump: &str, table: Table) -> String {
    let header = format!("*{table}");
    let mut out = String::new();
    let mut inside = false;
    for line in dump.lines() {
        if line.starts_with('*') {
            inside = line == header;
            continue;
        }
        if inside {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// What `setup` changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SetupReport {
    /// Dynamic chains that did not exist.
    pub created: Vec<(Family, Table, OwnedChain)>,
    /// Static chains written (every setup rewrites them).
    pub rewritten: Vec<(Family, Table, OwnedChain)>,
    /// Built-in chains whose hook was missing, misplaced or duplicated.
    pub hooks_fixed: Vec<(Family, Table, BuiltinChain)>,
}

/// One thing `remove_all` removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Removed {
    pub family: Family,
    pub table: Table,
    pub what: RemovedKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RemovedKind {
    /// A hook (`-m comment --comment patchpanel` rule) in a built-in chain.
    Hook { builtin: String, spec: String },
    /// A chain (flushed and deleted).
    Chain { name: String },
    /// An iptables-nft table patchpanel's start created, deleted once it
    /// was empty again.
    Table,
    /// A base chain iptables-nft made for one of patchpanel's hooks in a
    /// table of the host's.
    BaseChain { name: String },
}

impl fmt::Display for Removed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.what {
            RemovedKind::Hook { builtin, spec } => {
                write!(
                    f,
                    "{} {} hook: -A {builtin} {spec}",
                    self.family, self.table
                )
            }
            RemovedKind::Chain { name } => {
                write!(f, "{} {} chain {name}", self.family, self.table)
            }
            RemovedKind::BaseChain { name } => {
                write!(
                    f,
                    "{} {} base chain {name} (created by patchpanel)",
                    self.family, self.table
                )
            }
            RemovedKind::Table => {
                write!(
                    f,
                    "{} {} table (created by patchpanel)",
                    self.family, self.table
                )
            }
        }
    }
}

/// A firewall operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    #[error("invalid firewall change: {0}")]
    Invalid(#[from] ValidationError),
    #[error("{tool} not found in {searched:?}")]
    ToolNotFound {
        tool: &'static str,
        searched: Vec<PathBuf>,
    },
    #[error("cannot run {program}: {source}")]
    Spawn {
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{program} ({family} {table}) failed ({status}){}: {stderr}", failed_lines_text(.failed_lines))]
    Restore {
        program: PathBuf,
        family: Family,
        table: Table,
        status: String,
        /// The input lines the tool reported, as `line N: <text>`.
        failed_lines: Vec<String>,
        stderr: String,
    },
    #[error("{program} -t {table} failed ({status}): {stderr}")]
    Save {
        program: PathBuf,
        table: String,
        status: String,
        stderr: String,
    },
    #[error("{cause}; undoing the part already applied also failed: {}", join(.rollback))]
    Rollback {
        cause: Box<FirewallError>,
        rollback: Vec<FirewallError>,
    },
    #[error(transparent)]
    NoInverse(#[from] InverseError),
    #[error("{operation}: {message}")]
    Netlink {
        operation: String,
        errno: i32,
        message: String,
    },
    #[error("nf_tables refused the transaction ({message}, {errors} error(s)) at {at}; nothing was applied")]
    Transaction {
        errno: i32,
        message: String,
        /// The change the kernel named first.
        at: String,
        errors: usize,
    },
    #[error("no matching rule to delete: {what}")]
    NoSuchRule { what: String },
    #[error("not supported by the nftables backend: {what}")]
    Unsupported { what: String },
    #[error("nf_tables accounting rules: {source}")]
    NftCounters {
        #[source]
        source: crate::counters::CounterParseError,
    },
    #[error("{program}: {source}")]
    Counters {
        program: PathBuf,
        #[source]
        source: crate::counters::CounterParseError,
    },
}

impl FirewallError {
    /// The kernel's errno, when the kernel refused (a tool's failure has
    /// none: it says why in its output).
    pub fn errno(&self) -> Option<i32> {
        match self {
            FirewallError::Netlink { errno, .. } | FirewallError::Transaction { errno, .. } => {
                Some(*errno)
            }
            FirewallError::Spawn { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

fn failed_lines_text(lines: &[String]) -> String {
    if lines.is_empty() {
        String::new()
    } else {
        format!(" at {}", lines.join("; "))
    }
}

fn join(errors: &[FirewallError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// `remove_all` met errors; it still removed `removed`.
#[derive(Debug, thiserror::Error)]
#[error("{} error(s) removing patchpanel's firewall state (removed {} objects): {}", .errors.len(), .removed.len(), join(.errors))]
pub struct RemoveAllError {
    pub removed: Vec<Removed>,
    pub errors: Vec<FirewallError>,
}
