//! Applying a plan: each step, its undo, and rollback of an atomic plan.

use std::collections::HashMap;
use std::net::IpAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;

use log::{debug, info, warn};
use patchpanel_firewall::{Batch, FirewallBackend, FirewallChoice, IptablesRestore, Nftables};
use patchpanel_ipc::datapath::{
    broadcast, ApplyMode, Netns, Plan, PlanReport, RouteSpec, Step, Sysctl, UplinkRef,
    WriterConfig, LINK_ALIAS,
};
use patchpanel_ipc::{HelperError, IfName, NetnsName};
use patchpanel_rtnl::Rtnl;

use crate::convert::{to_route, to_rule};
use crate::error::{firewall_error, os_error, refused};
use crate::{netns, owned};

/// The writer's state: configuration and one rtnetlink socket per
/// namespace it touched.
#[derive(Default)]
pub struct Writer {
    pub(crate) config: Option<WriterConfig>,
    pub(crate) firewall: Option<Box<dyn FirewallBackend + Send>>,
    /// Which backend `firewall` is.
    pub(crate) firewall_kind: Option<FirewallChoice>,
    pub(crate) host: Option<Rtnl>,
    sockets: HashMap<NetnsName, Rtnl>,
    /// The last counter reading, paged out by `read_counters`.
    counters: Vec<patchpanel_firewall::counters::CounterSample>,
    /// The layout of the last `SetupFirewall`, for checks and rebuilds.
    layout: Option<patchpanel_firewall::Layout>,
    /// The pages of a `RebuildFirewall` received so far.
    rebuild: Batch,
    /// nf_tables notifications: other programs' changes.
    pub(crate) watch: Option<crate::firewall_watch::FirewallWatch>,
    /// What `ConfigureNetwork` steps did to uplinks (addresses added, the
    /// MTU found), so that a clear removes only that.
    uplinks: crate::uplink::Uplinks,
    /// Deletes the daemon's namespace's links off the request path.
    pub(crate) reaper: crate::reaper::Reaper,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer")
            .field("config", &self.config)
            .field("namespaces", &self.sockets.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// How to reverse one applied step.
#[derive(Debug)]
enum Undo {
    Step(Step),
    DeleteAddress {
        netns: Netns,
        link: IfName,
        addr: IpAddr,
        prefix_len: u8,
    },
    /// Puts a link's up and multicast flags back as they were.
    RestoreLink {
        netns: Netns,
        link: IfName,
        up: bool,
        multicast: bool,
    },
    /// Puts back the route of ours that an added route replaced.
    RestoreRoute {
        netns: Netns,
        route: patchpanel_rtnl::Route,
    },
    Firewall(Batch),
    UplinkAddresses {
        link: UplinkRef,
        change: crate::uplink::AddressChange,
    },
    UplinkRoutes {
        link: UplinkRef,
        ipv6: bool,
        previous: Vec<patchpanel_rtnl::Route>,
    },
    UplinkMtu {
        link: UplinkRef,
        mtu: u32,
        first: bool,
    },
    Nothing,
}

/// Opens the configured backend; `Auto` takes nf_tables when the kernel
/// answers and says why when it falls back.
fn open_backend(
    choice: FirewallChoice,
) -> Result<(FirewallChoice, Box<dyn FirewallBackend + Send>), String> {
    let nft = || -> Result<(FirewallChoice, Box<dyn FirewallBackend + Send>), String> {
        let fw = Nftables::new().map_err(|e| e.to_string())?;
        info!("firewall backend: nftables (patchpanel's own nf_tables tables over netlink)");
        Ok((FirewallChoice::Nftables, Box::new(fw)))
    };
    let ipt = || -> Result<(FirewallChoice, Box<dyn FirewallBackend + Send>), String> {
        let fw = IptablesRestore::new().map_err(|e| e.to_string())?;
        info!("firewall backend: iptables (iptables-nft-restore, one process per table)");
        Ok((FirewallChoice::Iptables, Box::new(fw)))
    };
    match choice {
        FirewallChoice::Nftables => nft(),
        FirewallChoice::Iptables => ipt(),
        FirewallChoice::Auto => match Nftables::available() {
            Ok(()) => nft(),
            Err(why) => {
                warn!("firewall backend: iptables, because {why}");
                ipt()
            }
        },
    }
}

impl Writer {
    pub fn configure(&mut self, config: WriterConfig) -> Result<(), HelperError> {
        if !config.netns_dir.starts_with('/') {
            return Err(refused(format!(
                "netns_dir {:?} is not absolute",
                config.netns_dir
            )));
        }
        NetnsName::new(&config.netns_prefix).map_err(|e| refused(format!("netns prefix: {e}")))?;
        info!(
            "configured: namespaces {}/{}*",
            config.netns_dir, config.netns_prefix
        );
        self.config = Some(config);
        Ok(())
    }

    pub(crate) fn config(&self) -> Result<&WriterConfig, HelperError> {
        self.config
            .as_ref()
            .ok_or_else(|| refused("the writer has not been configured"))
    }

    pub(crate) fn netns_dir(&self) -> Result<PathBuf, HelperError> {
        Ok(PathBuf::from(&self.config()?.netns_dir))
    }

    /// The firewall backend, chosen on first use from the configuration.
    pub(crate) fn firewall(&mut self) -> Result<&mut (dyn FirewallBackend + Send), HelperError> {
        if self.firewall.is_none() {
            let choice = self.config.as_ref().map(|c| c.firewall).unwrap_or_default();
            let (kind, fw) = open_backend(choice).map_err(|e| HelperError::Os {
                operation: "firewall backend".into(),
                errno: None,
                message: e,
            })?;
            if kind == FirewallChoice::Nftables {
                // Nothing to run from now on: netlink only.
                match patchpanel_sandbox::stop_running_tools() {
                    Ok(()) => info!(
                        "nftables backend: the writer runs no tools; exec forbidden, ambient capabilities dropped ({})",
                        patchpanel_sandbox::describe_current_caps()
                    ),
                    Err(e) => warn!("nftables backend: cannot drop what running tools needs: {e}"),
                }
            }
            self.firewall = Some(fw);
            self.firewall_kind = Some(kind);
        }
        match self.firewall.as_deref_mut() {
            Some(fw) => Ok(fw),
            None => Err(refused("no firewall backend")),
        }
    }

    /// The nftables backend when iptables is in use, if it can be opened:
    /// its leftovers (from before a change of `firewall_backend`) are
    /// removed at start. (With nftables in use, the iptables leftovers are
    /// swept over netlink: see `remove_owned`.)
    pub(crate) fn other_firewall(&mut self) -> Option<Box<dyn FirewallBackend + Send>> {
        match self.firewall_kind? {
            FirewallChoice::Nftables => None,
            _ => Nftables::new()
                .ok()
                .map(|b| Box::new(b) as Box<dyn FirewallBackend + Send>),
        }
    }

    pub fn setup_firewall(
        &mut self,
        config: &patchpanel_firewall::LayoutConfig,
    ) -> Result<(), HelperError> {
        let layout = patchpanel_firewall::Layout::new(config);
        layout
            .validate()
            .map_err(|e| refused(format!("firewall layout: {e}")))?;
        let report = self
            .firewall()?
            .setup(&layout)
            .map_err(|e| firewall_error("firewall setup", &e))?;
        info!(
            "firewall ready: {} chain(s) created, {} rewritten, {} hook(s) fixed",
            report.created.len(),
            report.rewritten.len(),
            report.hooks_fixed.len()
        );
        debug!("firewall setup: {report:?}");
        for warning in patchpanel_firewall::conflicts::warnings() {
            warn!("{warning}");
        }
        self.layout = Some(layout);
        Ok(())
    }

    fn layout(&self) -> Result<&patchpanel_firewall::Layout, HelperError> {
        self.layout
            .as_ref()
            .ok_or_else(|| refused("the firewall has not been set up"))
    }

    /// After another program changed the rule set: the narrow accepts
    /// follow the other firewalls, and what of the layout is missing is
    /// reported (the manager rebuilds if anything is).
    pub fn check_firewall(&mut self) -> Result<(String, Vec<String>), HelperError> {
        let layout = self.layout()?.clone();
        let iptables = self.firewall_kind == Some(FirewallChoice::Iptables);
        let skip = move |family: u8, table: &str| {
            patchpanel_firewall::nft::coexist::is_patchpanel_table(family, table)
                // The iptables backend's hook accepts inside iptables'
                // own filter chains, before their drops.
                || (iptables && table == "filter" && (family == 2 || family == 10))
        };
        // The iptables backend's accepts carry no mark for a narrow accept
        // in another table to let through.
        let remedy = if iptables {
            patchpanel_firewall::nft::coexist::Remedy::ReportOnly
        } else {
            patchpanel_firewall::nft::coexist::Remedy::NarrowAccept
        };
        let coexistence = match patchpanel_firewall::nft::coexist::reconcile(&skip, remedy) {
            Ok(report) => report.to_string(),
            Err(e) => format!("cannot read the other firewalls: {e}"),
        };
        let missing = self
            .firewall()?
            .missing(&layout)
            .map_err(|e| firewall_error("check the firewall", &e))?;
        Ok((coexistence, missing))
    }

    /// One page of a rebuild; the last one replaces the firewall.
    pub fn rebuild_firewall(
        &mut self,
        page: &Batch,
        last: bool,
    ) -> Result<Option<Vec<patchpanel_firewall::counters::CounterSample>>, HelperError> {
        if let Err(e) = page.validate() {
            // The rebuild is off: its earlier pages must not join the next.
            self.rebuild = Batch::default();
            return Err(refused(format!("rebuild page: {e}")));
        }
        self.rebuild.extend(page.clone());
        if !last {
            return Ok(None);
        }
        let batch = std::mem::take(&mut self.rebuild);
        let layout = self.layout()?.clone();
        let started = std::time::Instant::now();
        let carried = self
            .firewall()?
            .rebuild(&layout, &batch)
            .map_err(|e| firewall_error("rebuild the firewall", &e))?;
        info!(
            "firewall rebuilt: the layout and {} change(s) in {:.1?}",
            batch.changes(patchpanel_firewall::Family::V4).len()
                + batch.changes(patchpanel_firewall::Family::V6).len(),
            started.elapsed()
        );
        Ok(Some(carried))
    }

    /// Non-zero accounting counters of `ifnames` (every uplink if empty),
    /// one page from `offset`; offset 0 takes a fresh reading.
    pub fn read_counters(
        &mut self,
        ifnames: &[IfName],
        offset: u32,
    ) -> Result<
        (
            Vec<patchpanel_firewall::counters::CounterSample>,
            Option<u32>,
        ),
        HelperError,
    > {
        if offset == 0 {
            let samples = self
                .firewall()?
                .read_counters()
                .map_err(|e| firewall_error("read counters", &e))?;
            self.counters = samples
                .into_iter()
                .filter(|s| s.packets != 0 || s.bytes != 0)
                .filter(|s| ifnames.is_empty() || ifnames.iter().any(|i| i.as_str() == s.ifname))
                .collect();
        }
        let start = (offset as usize).min(self.counters.len());
        let end = (start + patchpanel_ipc::COUNTERS_PER_PAGE).min(self.counters.len());
        let next = (end < self.counters.len()).then_some(end as u32);
        Ok((self.counters[start..end].to_vec(), next))
    }

    /// The rtnetlink socket of a namespace, opened on first use.
    pub(crate) fn rtnl(&mut self, ns: &Netns) -> Result<&Rtnl, HelperError> {
        match ns {
            Netns::Host => {
                if self.host.is_none() {
                    self.host = Some(Rtnl::new().map_err(|e| os_error("rtnetlink socket", &e))?);
                }
                self.host
                    .as_ref()
                    .ok_or_else(|| refused("no rtnetlink socket"))
            }
            Netns::Named(name) => {
                if !self.sockets.contains_key(name) {
                    let fd = self.open_netns(name)?;
                    let sock = Rtnl::in_netns(fd.as_fd())
                        .map_err(|e| os_error(format!("rtnetlink socket in {name}"), &e))?;
                    self.sockets.insert(name.clone(), sock);
                }
                self.sockets
                    .get(name)
                    .ok_or_else(|| refused("no rtnetlink socket"))
            }
        }
    }

    /// The daemon's namespace's socket and the uplink memory, together.
    fn host_rtnl_and_uplinks(
        &mut self,
    ) -> Result<(&Rtnl, &mut crate::uplink::Uplinks), HelperError> {
        self.rtnl(&Netns::Host)?;
        match self.host.as_ref() {
            Some(rtnl) => Ok((rtnl, &mut self.uplinks)),
            None => Err(refused("no rtnetlink socket")),
        }
    }

    pub(crate) fn forget_netns(&mut self, name: &NetnsName) {
        self.sockets.remove(name);
    }

    /// An fd for one of our named namespaces.
    pub(crate) fn open_netns(&self, name: &NetnsName) -> Result<OwnedFd, HelperError> {
        self.check_owned_netns(name)?;
        let dir = self.netns_dir()?;
        patchpanel_rtnl::netns::open_named(&dir, name.as_str())
            .map_err(|e| os_error(format!("open namespace {name}"), &e))
    }

    pub(crate) fn netns_fd(&self, ns: &Netns) -> Result<Option<OwnedFd>, HelperError> {
        match ns {
            Netns::Host => Ok(None),
            Netns::Named(name) => Ok(Some(self.open_netns(name)?)),
        }
    }

    pub(crate) fn check_owned_netns(&self, name: &NetnsName) -> Result<(), HelperError> {
        let prefix = &self.config()?.netns_prefix;
        if !name.as_str().starts_with(prefix.as_str()) {
            return Err(refused(format!(
                "namespace {name} is not patchpanel's (names start with {prefix:?})"
            )));
        }
        Ok(())
    }

    /// Applies `plan`. Atomic: the first failure undoes what was done and
    /// is returned. Best effort: every step runs; failures are listed.
    pub fn apply(&mut self, plan: &Plan, fds: Vec<OwnedFd>) -> Result<PlanReport, HelperError> {
        self.config()?;
        let report = PlanReport {
            replaced_sysctls: Vec::new(),
            failures: Vec::new(),
        };
        self.reaper.hold();
        let result = self.apply_steps(plan, &fds, report);
        self.reaper.release(self.host.as_ref());
        result
    }

    fn apply_steps(
        &mut self,
        plan: &Plan,
        fds: &[OwnedFd],
        mut report: PlanReport,
    ) -> Result<PlanReport, HelperError> {
        let mut undo: Vec<Undo> = Vec::new();
        debug!("plan {:?}: {} steps", plan.label, plan.steps.len());
        for (i, step) in plan.steps.iter().enumerate() {
            let started = std::time::Instant::now();
            let result = self.step(step, fds, &mut report);
            debug!(
                "plan {:?} step {} ({}) took {:.1?}",
                plan.label,
                i + 1,
                step_name(step),
                started.elapsed()
            );
            match result {
                Ok(u) => undo.push(u),
                Err(e) => match plan.mode {
                    ApplyMode::BestEffort => {
                        report.failures.push(format!("step {}: {e}", i + 1));
                    }
                    ApplyMode::Atomic => {
                        let failures = self.rollback(undo);
                        warn!(
                            "plan {:?}: step {} ({}) failed: {e}; rolled back {}",
                            plan.label,
                            i + 1,
                            step_name(step),
                            if failures.is_empty() {
                                "cleanly".to_string()
                            } else {
                                format!("with errors: {}", failures.join("; "))
                            }
                        );
                        return Err(e);
                    }
                },
            }
        }
        Ok(report)
    }

    fn rollback(&mut self, undo: Vec<Undo>) -> Vec<String> {
        let mut failures = Vec::new();
        let mut scratch = PlanReport {
            replaced_sysctls: Vec::new(),
            failures: Vec::new(),
        };
        for u in undo.into_iter().rev() {
            let result = match u {
                Undo::Nothing => Ok(()),
                Undo::Step(step) => self.step(&step, &[], &mut scratch).map(|_| ()),
                Undo::DeleteAddress {
                    netns,
                    link,
                    addr,
                    prefix_len,
                } => self.rtnl(&netns).and_then(|r| {
                    r.delete_address(link.as_str(), addr, prefix_len)
                        .map(|_| ())
                        .map_err(|e| os_error(format!("delete address {addr} from {link}"), &e))
                }),
                Undo::RestoreLink {
                    netns,
                    link,
                    up,
                    multicast,
                } => self.rtnl(&netns).and_then(|r| {
                    r.set_up(link.as_str(), up)
                        .map_err(|e| os_error(format!("set {link} up={up}"), &e))?;
                    r.set_multicast(link.as_str(), multicast)
                        .map_err(|e| os_error(format!("set multicast on {link}"), &e))
                }),
                Undo::RestoreRoute { netns, route } => self.rtnl(&netns).and_then(|r| {
                    r.add_route(&route)
                        .map_err(|e| os_error("restore a replaced route", &e))
                }),
                Undo::Firewall(batch) => self.firewall().and_then(|fw| {
                    fw.apply(&batch)
                        .map_err(|e| firewall_error("firewall undo", &e))
                }),
                Undo::UplinkAddresses { link, change } => {
                    self.host_rtnl_and_uplinks().and_then(|(rtnl, uplinks)| {
                        crate::uplink::undo_addresses(rtnl, uplinks, &link, &change)
                    })
                }
                Undo::UplinkRoutes {
                    link,
                    ipv6,
                    previous,
                } => self.rtnl(&Netns::Host).and_then(|rtnl| {
                    crate::uplink::restore_routes(rtnl, link.table(), ipv6, &previous)
                }),
                Undo::UplinkMtu { link, mtu, first } => {
                    self.host_rtnl_and_uplinks().and_then(|(rtnl, uplinks)| {
                        crate::uplink::undo_mtu(rtnl, uplinks, &link, mtu, first)
                    })
                }
            };
            if let Err(e) = result {
                failures.push(e.to_string());
            }
        }
        failures
    }

    fn step(
        &mut self,
        step: &Step,
        fds: &[OwnedFd],
        report: &mut PlanReport,
    ) -> Result<Undo, HelperError> {
        match step {
            Step::CreateNetns { name } => {
                self.check_owned_netns(name)?;
                let dir = self.netns_dir()?;
                patchpanel_rtnl::netns::create_named(&dir, name.as_str())
                    .map_err(|e| os_error(format!("create namespace {name}"), &e))?;
                Ok(Undo::Step(Step::DeleteNetns { name: name.clone() }))
            }
            Step::AttachNetns {
                name,
                pid,
                pidfd,
                owner_uid,
            } => {
                self.check_owned_netns(name)?;
                let pidfd = fds
                    .get(usize::from(*pidfd))
                    .ok_or_else(|| refused(format!("no pidfd #{pidfd} beside the request")))?;
                let ns = netns::namespace_of_pinned(*pid, pidfd, *owner_uid)?;
                let dir = self.netns_dir()?;
                patchpanel_rtnl::netns::attach_named(&dir, name.as_str(), ns.as_fd())
                    .map_err(|e| os_error(format!("attach pid {pid} as {name}"), &e))?;
                Ok(Undo::Step(Step::DeleteNetns { name: name.clone() }))
            }
            Step::DeleteNetns { name } => {
                self.check_owned_netns(name)?;
                self.forget_netns(name);
                let dir = self.netns_dir()?;
                patchpanel_rtnl::netns::delete_named(&dir, name.as_str())
                    .map_err(|e| os_error(format!("delete namespace {name}"), &e))?;
                Ok(Undo::Nothing)
            }
            Step::CreateVeth {
                host,
                peer,
                peer_netns,
                host_mac,
                peer_mac,
            } => {
                let peer_fd = self.netns_fd(peer_netns)?;
                self.wait_for_name(host)?;
                if self
                    .rtnl(&Netns::Host)?
                    .link(host.as_str())
                    .map_err(|e| os_error(format!("look up {host}"), &e))?
                    .is_some()
                {
                    return Err(refused(format!("interface {host} already exists")));
                }
                let create = |rtnl: &Rtnl| {
                    rtnl.create_veth(
                        host.as_str(),
                        peer.as_str(),
                        peer_fd.as_ref().map(|f| f.as_fd()),
                        LINK_ALIAS,
                    )
                };
                let mut created = create(self.rtnl(&Netns::Host)?);
                if created
                    .as_ref()
                    .is_err_and(|e| e.errno() == Some(libc::EEXIST))
                    && self.reaper.busy()
                {
                    // The peer's name may be that of a pair still being
                    // deleted in the same namespace: once it is gone, again.
                    self.reaper.drain(self.host.as_ref(), crate::reaper::WAIT);
                    created = create(self.rtnl(&Netns::Host)?);
                }
                created.map_err(|e| os_error(format!("create veth {host} <-> {peer}"), &e))?;
                let undo = Undo::Step(Step::DeleteLink {
                    netns: Netns::Host,
                    name: host.clone(),
                });
                let macs = self
                    .rtnl(&Netns::Host)?
                    .set_mac(host.as_str(), *host_mac)
                    .map_err(|e| os_error(format!("set MAC of {host}"), &e))
                    .and_then(|()| {
                        self.rtnl(peer_netns)?
                            .set_mac(peer.as_str(), *peer_mac)
                            .map_err(|e| os_error(format!("set MAC of {peer}"), &e))
                    });
                if let Err(e) = macs {
                    let _ = self.rollback(vec![undo]);
                    return Err(e);
                }
                Ok(undo)
            }
            Step::DeleteLink {
                netns: Netns::Host,
                name,
            } => {
                let rtnl = self.rtnl(&Netns::Host)?;
                if let Some(link) = owned::owned_link_to_delete(rtnl, name)? {
                    // The checks are done; the kernel's part goes on
                    // without us (see crate::reaper).
                    let rtnl = self
                        .host
                        .as_ref()
                        .ok_or_else(|| refused("no rtnetlink socket"))?;
                    self.reaper.delete(rtnl, &link);
                }
                Ok(Undo::Nothing)
            }
            Step::DeleteLink { netns, name } => {
                owned::delete_owned_link(self.rtnl(netns)?, name)?;
                Ok(Undo::Nothing)
            }
            Step::AddAddress {
                netns,
                link,
                addr,
                prefix_len,
            } => {
                let brd = match addr {
                    IpAddr::V4(a) if *prefix_len < 31 => Some(broadcast(*a, *prefix_len)),
                    _ => None,
                };
                let added = self
                    .rtnl(netns)?
                    .add_address(link.as_str(), *addr, *prefix_len, brd)
                    .map_err(|e| os_error(format!("add {addr}/{prefix_len} to {link}"), &e))?;
                if !added {
                    // It was there before this plan: not ours to undo.
                    return Ok(Undo::Nothing);
                }
                Ok(Undo::DeleteAddress {
                    netns: netns.clone(),
                    link: link.clone(),
                    addr: *addr,
                    prefix_len: *prefix_len,
                })
            }
            Step::DeleteAddress {
                netns,
                link,
                addr,
                prefix_len,
            } => {
                let rtnl = self.rtnl(netns)?;
                // Never another program's link: the loopback (the DNS
                // proxies' addresses) or one patchpanel made.
                if link.as_str() != "lo" {
                    owned::expect_owned_link(rtnl, link)?;
                }
                rtnl.delete_address(link.as_str(), *addr, *prefix_len)
                    .map_err(|e| os_error(format!("delete {addr}/{prefix_len} from {link}"), &e))?;
                Ok(Undo::Nothing)
            }
            Step::LinkUp {
                netns,
                link,
                multicast,
            } => {
                let rtnl = self.rtnl(netns)?;
                let before = rtnl
                    .link(link.as_str())
                    .map_err(|e| os_error(format!("look up {link}"), &e))?
                    .ok_or_else(|| HelperError::Os {
                        operation: format!("set {link} up"),
                        errno: Some(libc::ENODEV),
                        message: format!("no link named {link}"),
                    })?;
                rtnl.set_multicast(link.as_str(), *multicast)
                    .map_err(|e| os_error(format!("set multicast on {link}"), &e))?;
                if let Err(e) = rtnl.set_up(link.as_str(), true) {
                    let _ = rtnl.set_multicast(link.as_str(), before.multicast);
                    return Err(os_error(format!("set {link} up"), &e));
                }
                Ok(Undo::RestoreLink {
                    netns: netns.clone(),
                    link: link.clone(),
                    up: before.up,
                    multicast: before.multicast,
                })
            }
            Step::AddRoute { netns, route } => {
                let r = to_route(route)?;
                let rtnl = self.rtnl(netns)?;
                let replaced = owned::replaced_route(rtnl, &r)?;
                rtnl.add_route(&r)
                    .map_err(|e| os_error(format!("add route {}", describe_route(route)), &e))?;
                Ok(match replaced {
                    Some(old) => Undo::RestoreRoute {
                        netns: netns.clone(),
                        route: old,
                    },
                    None => Undo::Step(Step::DeleteRoute {
                        netns: netns.clone(),
                        route: route.clone(),
                    }),
                })
            }
            Step::DeleteRoute { netns, route } => {
                let r = to_route(route)?;
                self.rtnl(netns)?
                    .delete_route(&r)
                    .map_err(|e| os_error(format!("delete route {}", describe_route(route)), &e))?;
                Ok(Undo::Nothing)
            }
            Step::AddRule(rule) => {
                let r = to_rule(rule);
                let added = self
                    .rtnl(&Netns::Host)?
                    .add_rule(&r)
                    .map_err(|e| os_error(format!("add rule {rule:?}"), &e))?;
                // An identical rule of ours was there before this plan.
                Ok(if added {
                    Undo::Step(Step::DeleteRule(rule.clone()))
                } else {
                    Undo::Nothing
                })
            }
            Step::DeleteRule(rule) => {
                let r = to_rule(rule);
                self.rtnl(&Netns::Host)?
                    .delete_rule(&r)
                    .map_err(|e| os_error(format!("delete rule {rule:?}"), &e))?;
                Ok(Undo::Nothing)
            }
            Step::SetSysctl {
                netns,
                sysctl,
                value,
            } => {
                validate_sysctl_value(sysctl, value)?;
                let fd = self.netns_fd(netns)?;
                let key = sysctl.key();
                let ns = fd.as_ref().map(|f| f.as_fd());
                let old = patchpanel_rtnl::sysctl::read(ns, &key)
                    .map_err(|e| os_error(format!("read {key}"), &e))?;
                let old = old.trim().to_string();
                if old != *value {
                    patchpanel_rtnl::sysctl::write(ns, &key, value)
                        .map_err(|e| os_error(format!("write {key}={value}"), &e))?;
                }
                report
                    .replaced_sysctls
                    .push((netns.clone(), sysctl.clone(), old.clone()));
                Ok(Undo::Step(Step::SetSysctl {
                    netns: netns.clone(),
                    sysctl: sysctl.clone(),
                    value: old,
                }))
            }
            Step::SyncTable { table, routes } => {
                owned::sync_table(self.rtnl(&Netns::Host)?, *table, routes)?;
                Ok(Undo::Nothing)
            }
            Step::AwaitLinksGone { names, timeout_ms } => {
                let deadline = std::time::Instant::now()
                    + std::time::Duration::from_millis(u64::from((*timeout_ms).min(5_000)));
                let rtnl = self.rtnl(&Netns::Host)?;
                let mut left: Vec<&IfName> = names.iter().collect();
                loop {
                    let mut still = Vec::new();
                    for name in left {
                        match rtnl.link(name.as_str()) {
                            Ok(None) => {}
                            Ok(Some(_)) => still.push(name),
                            Err(e) => return Err(os_error(format!("look up {name}"), &e)),
                        }
                    }
                    left = still;
                    if left.is_empty() || std::time::Instant::now() >= deadline {
                        break;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                if !left.is_empty() {
                    debug!("still present after {timeout_ms} ms: {left:?}");
                }
                Ok(Undo::Nothing)
            }
            Step::EnsureAccounting(ifname) => {
                let fw = self.firewall()?;
                let chain = patchpanel_firewall::counters::rx_chain(ifname);
                let full = patchpanel_firewall::counters::accounting_chains(ifname);
                let mut missing = patchpanel_firewall::Batch::new();
                for family in patchpanel_firewall::Family::ALL {
                    let have = fw
                        .list_chains(family, patchpanel_firewall::Table::Mangle)
                        .map_err(|e| firewall_error("list accounting chains", &e))?;
                    if !have.iter().any(|c| c == chain.as_str()) {
                        missing
                            .changes_mut(family)
                            .extend(full.changes(family).iter().cloned());
                    }
                }
                if !missing.is_empty() {
                    fw.apply(&missing)
                        .map_err(|e| firewall_error("create accounting chains", &e))?;
                }
                Ok(Undo::Nothing)
            }
            Step::CreateTap { name, mac, user } => self.create_tap(name, *mac, *user),
            Step::CreateBridge { name } => {
                self.wait_for_name(name)?;
                let rtnl = self.rtnl(&Netns::Host)?;
                if rtnl
                    .link(name.as_str())
                    .map_err(|e| os_error(format!("look up {name}"), &e))?
                    .is_some()
                {
                    return Err(refused(format!("interface {name} already exists")));
                }
                rtnl.create_bridge(name.as_str(), LINK_ALIAS)
                    .map_err(|e| os_error(format!("create bridge {name}"), &e))?;
                Ok(Undo::Step(Step::DeleteLink {
                    netns: Netns::Host,
                    name: name.clone(),
                }))
            }
            Step::SetMaster { link, master } => self.set_master(link, master.as_ref()),
            Step::ExpectLink { netns, name } => {
                owned::expect_owned_link(self.rtnl(netns)?, name)?;
                Ok(Undo::Nothing)
            }
            Step::SyncUplinkAddresses { link, ipv6, addrs } => {
                let (rtnl, uplinks) = self.host_rtnl_and_uplinks()?;
                let change = crate::uplink::sync_addresses(rtnl, uplinks, link, *ipv6, addrs)?;
                Ok(Undo::UplinkAddresses {
                    link: link.clone(),
                    change,
                })
            }
            Step::SyncUplinkRoutes { link, ipv6, routes } => {
                let previous =
                    crate::uplink::sync_routes(self.rtnl(&Netns::Host)?, link, *ipv6, routes)?;
                Ok(Undo::UplinkRoutes {
                    link: link.clone(),
                    ipv6: *ipv6,
                    previous,
                })
            }
            Step::SetUplinkMtu { link, mtu } => {
                let (rtnl, uplinks) = self.host_rtnl_and_uplinks()?;
                let (old, first) = crate::uplink::set_mtu(rtnl, uplinks, link, *mtu)?;
                Ok(Undo::UplinkMtu {
                    link: link.clone(),
                    mtu: old,
                    first,
                })
            }
            Step::ClearUplink { link } => {
                let (rtnl, uplinks) = self.host_rtnl_and_uplinks()?;
                let failures = crate::uplink::clear(rtnl, uplinks, link)?;
                if failures.is_empty() {
                    Ok(Undo::Nothing)
                } else {
                    Err(HelperError::Os {
                        operation: format!("clear {}", link.name),
                        errno: None,
                        message: failures.join("; "),
                    })
                }
            }
            Step::ProbeNeighbor { link, addr } => {
                crate::uplink::probe_neighbor(self.rtnl(&Netns::Host)?, link, *addr)?;
                Ok(Undo::Nothing)
            }
            Step::Firewall(batch) => {
                batch
                    .validate()
                    .map_err(|e| refused(format!("firewall batch: {e}")))?;
                if batch.is_empty() {
                    return Ok(Undo::Nothing);
                }
                let inverse = batch
                    .inverse()
                    .map_err(|e| refused(format!("firewall batch has no inverse: {e}")))?;
                self.firewall()?
                    .apply(batch)
                    .map_err(|e| firewall_error("firewall", &e))?;
                Ok(Undo::Firewall(inverse))
            }
        }
    }
}

impl Writer {
    /// A link of the daemon's namespace named `name` that is being deleted
    /// (see [`crate::reaper`]) and still listed is waited for: its name is
    /// about to be free. (The kernel unlists a link early in its deletion;
    /// once unlisted the name can be taken again at once.)
    fn wait_for_name(&mut self, name: &IfName) -> Result<(), HelperError> {
        if !self.reaper.is_pending(name.as_str()) {
            return Ok(());
        }
        let listed = self
            .rtnl(&Netns::Host)?
            .link(name.as_str())
            .map_err(|e| os_error(format!("look up {name}"), &e))?
            .is_some();
        if listed && !self.reaper.wait_for(self.host.as_ref(), name.as_str()) {
            return Err(refused(format!(
                "interface {name} is still being deleted after {:?}",
                crate::reaper::WAIT
            )));
        }
        Ok(())
    }

    /// A persistent TAP owned by the configured VM user (or by `user`, one
    /// of the configured owners of their own VMs), then its alias and MAC;
    /// deleted again if those cannot be set.
    fn create_tap(
        &mut self,
        name: &IfName,
        mac: [u8; 6],
        user: Option<u32>,
    ) -> Result<Undo, HelperError> {
        let config = self.config()?;
        let owner = match user {
            None => config.tap_owner_uid.ok_or_else(|| {
                refused(format!(
                    "cannot create {name}: no VM user is configured to own TAPs"
                ))
            })?,
            Some(uid) if uid != 0 && config.user_tap_owners.contains(&uid) => uid,
            Some(uid) => {
                return Err(refused(format!(
                    "cannot create {name} for uid {uid}: not one of the users allowed to own a VM's TAP"
                )))
            }
        };
        self.wait_for_name(name)?;
        let rtnl = self.rtnl(&Netns::Host)?;
        if rtnl
            .link(name.as_str())
            .map_err(|e| os_error(format!("look up {name}"), &e))?
            .is_some()
        {
            return Err(refused(format!("interface {name} already exists")));
        }
        patchpanel_rtnl::tun::create_persistent_tap(name.as_str(), Some(owner))
            .map_err(|e| os_error(format!("create tap {name}"), &e))?;
        let labelled = rtnl
            .set_alias(name.as_str(), LINK_ALIAS)
            .and_then(|()| rtnl.set_mac(name.as_str(), mac));
        if let Err(e) = labelled {
            // Not marked as ours yet: removed by name, right away.
            let _ = rtnl.delete_link(name.as_str());
            return Err(os_error(format!("label tap {name}"), &e));
        }
        Ok(Undo::Step(Step::DeleteLink {
            netns: Netns::Host,
            name: name.clone(),
        }))
    }

    /// Enslaves `link` to `master` (or frees it); both must be ours and the
    /// master a bridge. The undo puts the previous master back.
    fn set_master(&mut self, link: &IfName, master: Option<&IfName>) -> Result<Undo, HelperError> {
        let rtnl = self.rtnl(&Netns::Host)?;
        let before = owned::expect_owned_link(rtnl, link)?;
        if let Some(m) = master {
            let bridge = owned::expect_owned_link(rtnl, m)?;
            if bridge.kind.as_deref() != Some("bridge") {
                return Err(refused(format!("{m} is not a bridge")));
            }
        }
        let previous = match before.master {
            None => None,
            Some(index) => rtnl
                .links()
                .map_err(|e| os_error("list links", &e))?
                .into_iter()
                .find(|l| l.index == index)
                .and_then(|l| IfName::new(&l.name).ok()),
        };
        rtnl.set_master(link.as_str(), master.map(|m| m.as_str()))
            .map_err(|e| {
                os_error(
                    format!(
                        "set master of {link} to {}",
                        master.map_or("none", |m| m.as_str())
                    ),
                    &e,
                )
            })?;
        Ok(Undo::Step(Step::SetMaster {
            link: link.clone(),
            master: previous,
        }))
    }
}

fn step_name(step: &Step) -> &'static str {
    match step {
        Step::CreateNetns { .. } => "create namespace",
        Step::AttachNetns { .. } => "attach namespace",
        Step::DeleteNetns { .. } => "delete namespace",
        Step::CreateVeth { .. } => "create veth",
        Step::DeleteLink { .. } => "delete link",
        Step::AddAddress { .. } => "add address",
        Step::DeleteAddress { .. } => "delete address",
        Step::LinkUp { .. } => "link up",
        Step::AddRoute { .. } => "add route",
        Step::DeleteRoute { .. } => "delete route",
        Step::AddRule(_) => "add rule",
        Step::DeleteRule(_) => "delete rule",
        Step::SetSysctl { .. } => "set sysctl",
        Step::SyncTable { .. } => "sync table",
        Step::Firewall(_) => "firewall",
        Step::EnsureAccounting(_) => "accounting chains",
        Step::AwaitLinksGone { .. } => "await links gone",
        Step::CreateTap { .. } => "create tap",
        Step::CreateBridge { .. } => "create bridge",
        Step::SetMaster { .. } => "set master",
        Step::ExpectLink { .. } => "expect link",
        Step::SyncUplinkAddresses { .. } => "uplink addresses",
        Step::SyncUplinkRoutes { .. } => "uplink routes",
        Step::SetUplinkMtu { .. } => "uplink mtu",
        Step::ClearUplink { .. } => "clear uplink",
        Step::ProbeNeighbor { .. } => "probe neighbour",
    }
}

/// Sysctl values are small integers; anything else is refused.
fn validate_sysctl_value(sysctl: &Sysctl, value: &str) -> Result<(), HelperError> {
    let ok = !value.is_empty()
        && value.len() <= 6
        && value
            .strip_prefix('-')
            .unwrap_or(value)
            .bytes()
            .all(|b| b.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(refused(format!(
            "{} = {value:?}: only small integers are written",
            sysctl.key()
        )))
    }
}

fn describe_route(r: &RouteSpec) -> String {
    format!(
        "{}/{}{}{} table {}",
        r.dst,
        r.prefix_len,
        r.gateway.map(|g| format!(" via {g}")).unwrap_or_default(),
        r.dev
            .as_ref()
            .map(|d| format!(" dev {d}"))
            .unwrap_or_default(),
        r.table
    )
}
