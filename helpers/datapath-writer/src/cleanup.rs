//! Removing everything patchpanel owns (at start, at stop, and for
//! `--cleanup`), with the ownership checks of [`crate::owned`]. Keeps
//! going after an error and reports every one.
//!
//! On shill's links (`ConfigureNetwork`), that is the routes of their
//! tables and the ip rules (protocol 157); their addresses and MTU stay:
//! a writer that did not add them cannot tell them from shill's, and shill
//! keeps using the link.

use std::collections::HashSet;

use log::info;
use patchpanel_firewall::FirewallChoice;
use patchpanel_ipc::datapath::{PlanReport, LINK_ALIAS, ROUTE_PROTOCOL};
use patchpanel_ipc::{HelperError, IfName, NetnsName};

use crate::apply::Writer;
use crate::error::{io_error, os_error};

/// How long a stop's or a cleanup's removal waits for the links it
/// deleted to be gone (below the manager's 30 s deadline for a call).
const STOP_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

impl Writer {
    /// Removes everything patchpanel owns but what the caller keeps.
    /// Keeps going after errors and reports them all.
    pub fn remove_owned(
        &mut self,
        keep_links: &[IfName],
        keep_netns: &[NetnsName],
        keep_accounting: bool,
        wait: bool,
    ) -> Result<PlanReport, HelperError> {
        let started = std::time::Instant::now();
        let mut failures = Vec::new();
        let mut removed = Vec::new();
        // Firewall first, so no rule points at a vanishing interface.
        let keep_chain = move |chain: &str| {
            keep_accounting && (chain.starts_with("rx_") || chain.starts_with("tx_"))
        };
        match self.firewall() {
            Ok(fw) => match fw.remove_all(&keep_chain) {
                Ok(r) => removed.extend(r.iter().map(|r| r.to_string())),
                Err(e) => failures.push(format!("firewall cleanup: {e}")),
            },
            Err(e) => failures.push(e.to_string()),
        }
        // Leftovers of the other backend (the configuration changed, or a
        // predecessor used it): all of it goes, accounting included.
        // With nftables in use, that is done over netlink (no iptables
        // process: the writer then starts none at all).
        if self.firewall_kind == Some(FirewallChoice::Nftables) {
            match patchpanel_firewall::nft::remove_iptables_leftovers() {
                Ok(r) => removed.extend(r.iter().map(|r| format!("{r} (other firewall backend)"))),
                Err(e) => failures.push(format!("firewall cleanup of the other backend: {e}")),
            }
        } else if let Some(mut other) = self.other_firewall() {
            match other.remove_all(&|_| false) {
                Ok(r) => removed.extend(r.iter().map(|r| format!("{r} (other firewall backend)"))),
                Err(e) => failures.push(format!("firewall cleanup of the other backend: {e}")),
            }
        }
        let firewall_done = started.elapsed();
        let dir = self.netns_dir()?;
        let prefix = self.config()?.netns_prefix.clone();
        let keep_ns: HashSet<&str> = keep_netns.iter().map(|n| n.as_str()).collect();
        match std::fs::read_dir(&dir) {
            Ok(entries) => {
                for entry in entries.flatten() {
                    let name = entry.file_name().to_string_lossy().into_owned();
                    if !name.starts_with(&prefix) || keep_ns.contains(name.as_str()) {
                        continue;
                    }
                    let Ok(ns) = NetnsName::new(&name) else {
                        continue;
                    };
                    self.forget_netns(&ns);
                    match patchpanel_rtnl::netns::delete_named(&dir, &name) {
                        Ok(_) => removed.push(format!("namespace {name}")),
                        Err(e) => failures
                            .push(os_error(format!("delete namespace {name}"), &e).to_string()),
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => failures.push(io_error(format!("list {}", dir.display()), &e).to_string()),
        }
        let netns_done = started.elapsed();
        let keep: HashSet<&str> = keep_links.iter().map(|l| l.as_str()).collect();
        self.rtnl(&patchpanel_ipc::datapath::Netns::Host)?;
        let host = self
            .host
            .as_ref()
            .ok_or_else(|| HelperError::Refused("no rtnetlink socket".into()))?;
        // The namespaces went first: the kernel destroys their veth pairs
        // on its own, many per grace period, much faster than deleting each
        // host end (tens of milliseconds each, measured: 100 of them took
        // 3 s). What is still listed goes to the reaper, off this request:
        // the kernel may well be first (the reaper's delete then finds no
        // such link), and nothing here needs those names back.
        let links: Vec<patchpanel_rtnl::Link> = match host.links() {
            Ok(links) => links
                .into_iter()
                .filter(|l| {
                    l.alias.as_deref() == Some(LINK_ALIAS) && !keep.contains(l.name.as_str())
                })
                .collect(),
            Err(e) => {
                failures.push(os_error("list links", &e).to_string());
                Vec::new()
            }
        };
        for link in links {
            self.reaper.delete(host, &link);
            removed.push(format!("link {}", link.name));
        }
        for family in [patchpanel_rtnl::Family::V4, patchpanel_rtnl::Family::V6] {
            match host.rules(family) {
                Ok(rules) => {
                    for r in rules.iter().filter(|r| r.protocol == ROUTE_PROTOCOL) {
                        if let Err(e) = host.delete_rule(r) {
                            failures.push(os_error(format!("delete rule {r:?}"), &e).to_string());
                        } else {
                            removed.push(format!("rule {} table {}", r.priority, r.table));
                        }
                    }
                }
                Err(e) => failures.push(os_error("list rules", &e).to_string()),
            }
            match host.routes(family, None) {
                Ok(routes) => {
                    for r in routes.iter().filter(|r| r.protocol == ROUTE_PROTOCOL) {
                        if let Err(e) = host.delete_route(r) {
                            failures.push(os_error("delete route", &e).to_string());
                        } else {
                            removed.push(format!(
                                "route {}/{} table {}",
                                r.dst, r.prefix_len, r.table
                            ));
                        }
                    }
                }
                Err(e) => failures.push(os_error("list routes", &e).to_string()),
            }
        }
        if wait && !self.reaper.drain(self.host.as_ref(), STOP_WAIT) {
            failures.push(format!("links still being deleted after {STOP_WAIT:?}"));
        }
        let links_done = started.elapsed();
        if !removed.is_empty() {
            info!(
                "removed leftovers in {:.1?} (firewall {firewall_done:.1?}, namespaces {:.1?}, links, rules and routes {:.1?}): {}",
                started.elapsed(),
                netns_done - firewall_done,
                links_done - netns_done,
                removed.join(", ")
            );
        }
        Ok(PlanReport {
            replaced_sysctls: Vec::new(),
            failures,
        })
    }
}
