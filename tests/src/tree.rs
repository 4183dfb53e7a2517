//! The daemon's process tree as the contract describes it: the manager (the
//! process the test started), one spawner child (`comm` = `pp-spawner`), and the
//! six helpers, children of the spawner, recognised by their exact `argv[0]`.

use std::collections::BTreeMap;
use std::fmt;

use anyhow::{bail, Result};

use crate::procfs::{all_stats, argv0};

/// `/proc/<pid>/comm` of the spawner.
pub const SPAWNER_COMM: &str = "pp-spawner";

/// The helper processes the spawner starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Helper {
    DatapathWriter,
    NdProxy,
    McastForwarder,
    AdbProxy,
    SocketService,
    DhcpServer,
}

impl Helper {
    /// Every helper, in a fixed order.
    pub const ALL: [Helper; 6] = [
        Helper::DatapathWriter,
        Helper::NdProxy,
        Helper::McastForwarder,
        Helper::AdbProxy,
        Helper::SocketService,
        Helper::DhcpServer,
    ];

    /// The executable's file name, which is also the process's exact `argv[0]`.
    pub const fn executable(self) -> &'static str {
        match self {
            Helper::DatapathWriter => "patchpanel-datapath-writer",
            Helper::NdProxy => "patchpanel-ndproxy",
            Helper::McastForwarder => "patchpanel-mcast-forwarder",
            Helper::AdbProxy => "patchpanel-adb-proxy",
            Helper::SocketService => "patchpanel-socket-service",
            Helper::DhcpServer => "patchpanel-dhcp-server",
        }
    }

    /// The helper whose `argv[0]` is exactly `argv0`.
    pub fn from_argv0(argv0: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|h| h.executable() == argv0)
    }
}

impl fmt::Display for Helper {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.executable())
    }
}

/// The pids of one complete daemon tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessTree {
    pub manager: u32,
    pub spawner: u32,
    pub helpers: BTreeMap<Helper, u32>,
    /// Children of the manager other than the spawner (expected: none).
    pub other_manager_children: Vec<u32>,
    /// Children of the spawner that are not one of the helpers (a fork that has
    /// not exec'd yet, or something unexpected), with their `argv[0]`.
    pub other_spawner_children: Vec<(u32, String)>,
}

impl ProcessTree {
    /// Reads the tree under `manager` from `/proc`. Fails unless there is exactly
    /// one spawner and exactly one process per helper.
    pub fn scan(manager: u32) -> Result<Self> {
        let stats = all_stats()?;
        let live_children = |ppid: u32| {
            stats
                .iter()
                .filter(move |s| s.ppid == ppid && s.state != 'Z')
                .collect::<Vec<_>>()
        };
        let manager_children = live_children(manager);
        let spawners: Vec<u32> = manager_children
            .iter()
            .filter(|s| s.comm == SPAWNER_COMM)
            .map(|s| s.pid)
            .collect();
        let spawner = match spawners.as_slice() {
            [spawner] => *spawner,
            [] => bail!(
                "manager {manager} has no child with comm {SPAWNER_COMM:?} (children: {:?})",
                manager_children
                    .iter()
                    .map(|s| (s.pid, &s.comm))
                    .collect::<Vec<_>>()
            ),
            many => bail!("manager {manager} has several spawners: {many:?}"),
        };
        let other_manager_children = manager_children
            .iter()
            .map(|s| s.pid)
            .filter(|pid| *pid != spawner)
            .collect();
        let mut helpers = BTreeMap::new();
        let mut other_spawner_children = Vec::new();
        for child in live_children(spawner) {
            // A child that exits while being read is simply not counted.
            let Ok(name) = argv0(child.pid) else { continue };
            match Helper::from_argv0(&name) {
                Some(helper) => {
                    if let Some(previous) = helpers.insert(helper, child.pid) {
                        bail!(
                            "two {helper} processes under spawner {spawner}: {previous} and {}",
                            child.pid
                        );
                    }
                }
                None => other_spawner_children.push((child.pid, name)),
            }
        }
        let missing: Vec<Helper> = Helper::ALL
            .into_iter()
            .filter(|h| !helpers.contains_key(h))
            .collect();
        if !missing.is_empty() {
            bail!(
                "spawner {spawner} lacks {missing:?}; its children are {helpers:?} and \
                 {other_spawner_children:?}"
            );
        }
        Ok(Self {
            manager,
            spawner,
            helpers,
            other_manager_children,
            other_spawner_children,
        })
    }

    /// The pid of `helper`.
    ///
    /// # Panics
    /// If `helpers` lacks it, which [`ProcessTree::scan`] never returns.
    pub fn helper(&self, helper: Helper) -> u32 {
        *self
            .helpers
            .get(&helper)
            .unwrap_or_else(|| panic!("{helper} is not in {self:?}"))
    }

    /// Spawner and helpers (not the manager).
    pub fn children_pids(&self) -> Vec<u32> {
        let mut pids = vec![self.spawner];
        pids.extend(self.helpers.values().copied());
        pids
    }
}
