//! What patchpanel owns, and removing it: links with its alias, namespaces
//! with its prefix, routes and rules with its protocol number, its
//! firewall chains and jumps. Nothing else is ever removed.

use std::collections::HashSet;

use log::info;
use patchpanel_firewall::FirewallChoice;
use patchpanel_ipc::datapath::{PlanReport, RouteSpec, LINK_ALIAS, ROUTE_PROTOCOL};
use patchpanel_ipc::{HelperError, IfName, NetnsName};
use patchpanel_rtnl::{Route, Rtnl};

use crate::apply::{io_error, os_error, to_route, Writer};

/// Deletes `name` if it is patchpanel's; a missing link is not an error.
pub fn delete_owned_link(rtnl: &Rtnl, name: &IfName) -> Result<(), HelperError> {
    let link = rtnl
        .link(name.as_str())
        .map_err(|e| os_error(format!("look up {name}"), &e))?;
    let Some(link) = link else {
        return Ok(());
    };
    if link.alias.as_deref() != Some(LINK_ALIAS) {
        return Err(HelperError::InvalidArgument(format!(
            "refusing to delete {name}: it was not created by patchpanel (alias {:?})",
            link.alias.unwrap_or_default()
        )));
    }
    rtnl.delete_link(name.as_str())
        .map_err(|e| os_error(format!("delete {name}"), &e))?;
    Ok(())
}

/// The link `name`, which must exist and be patchpanel's.
pub fn expect_owned_link(rtnl: &Rtnl, name: &IfName) -> Result<patchpanel_rtnl::Link, HelperError> {
    let link = rtnl
        .link(name.as_str())
        .map_err(|e| os_error(format!("look up {name}"), &e))?
        .ok_or_else(|| HelperError::Os {
            operation: format!("look up {name}"),
            errno: libc::ENODEV,
            message: format!("no link named {name}"),
        })?;
    if link.alias.as_deref() != Some(LINK_ALIAS) {
        return Err(HelperError::InvalidArgument(format!(
            "{name} was not created by patchpanel (alias {:?})",
            link.alias.unwrap_or_default()
        )));
    }
    Ok(link)
}

/// The metric the kernel gives a route added without one.
fn effective_metric(r: &Route) -> u32 {
    match (r.family(), r.metric) {
        // IP6_RT_PRIO_USER
        (patchpanel_rtnl::Family::V6, None | Some(0)) => 1024,
        (_, m) => m.unwrap_or(0),
    }
}

/// The route that adding `route` would replace (routes are added with
/// `NLM_F_REPLACE`: same table, destination and metric), so that its undo
/// can put it back. A route that is not patchpanel's is never replaced:
/// that is refused.
pub fn replaced_route(rtnl: &Rtnl, route: &Route) -> Result<Option<Route>, HelperError> {
    let existing = rtnl
        .routes(route.family(), Some(route.table))
        .map_err(|e| os_error(format!("list table {}", route.table), &e))?;
    let Some(old) = existing.into_iter().find(|r| {
        r.dst == route.dst
            && r.prefix_len == route.prefix_len
            && effective_metric(r) == effective_metric(route)
    }) else {
        return Ok(None);
    };
    if old.protocol != ROUTE_PROTOCOL {
        return Err(HelperError::InvalidArgument(format!(
            "refusing to replace the route to {}/{} in table {}: it is not patchpanel's \
             (protocol {})",
            old.dst, old.prefix_len, old.table, old.protocol
        )));
    }
    Ok(Some(old))
}

/// Makes table `table` hold exactly `routes` among patchpanel's routes.
pub fn sync_table(rtnl: &Rtnl, table: u32, routes: &[RouteSpec]) -> Result<(), HelperError> {
    if table < 1000 {
        return Err(HelperError::InvalidArgument(format!(
            "table {table} is not an uplink table (1000 and above)"
        )));
    }
    let mut wanted = Vec::new();
    for r in routes {
        if r.table != table {
            return Err(HelperError::InvalidArgument(format!(
                "route for table {} in a sync of table {table}",
                r.table
            )));
        }
        let route = to_route(r)?;
        // Checked before anything changes.
        replaced_route(rtnl, &route)?;
        wanted.push(route);
    }
    for family in [patchpanel_rtnl::Family::V4, patchpanel_rtnl::Family::V6] {
        let existing = rtnl
            .routes(family, Some(table))
            .map_err(|e| os_error(format!("list table {table}"), &e))?;
        for r in existing.iter().filter(|r| r.protocol == ROUTE_PROTOCOL) {
            let keep = wanted
                .iter()
                .any(|w| w.dst == r.dst && w.prefix_len == r.prefix_len && w.gateway == r.gateway);
            if !keep {
                rtnl.delete_route(r)
                    .map_err(|e| os_error(format!("delete route in table {table}"), &e))?;
            }
        }
    }
    for w in &wanted {
        rtnl.add_route(w)
            .map_err(|e| os_error(format!("add route to table {table}"), &e))?;
    }
    Ok(())
}

impl Writer {
    /// Removes everything patchpanel owns but what the caller keeps.
    /// Keeps going after errors and reports them all.
    pub fn remove_owned(
        &mut self,
        keep_links: &[IfName],
        keep_netns: &[NetnsName],
        keep_accounting: bool,
    ) -> Result<PlanReport, HelperError> {
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
        let keep: HashSet<&str> = keep_links.iter().map(|l| l.as_str()).collect();
        let host = self.rtnl(&patchpanel_ipc::datapath::Netns::Host)?;
        match host.links() {
            Ok(links) => {
                for link in links {
                    if link.alias.as_deref() == Some(LINK_ALIAS)
                        && !keep.contains(link.name.as_str())
                    {
                        match host.delete_link(&link.name) {
                            Ok(_) => removed.push(format!("link {}", link.name)),
                            Err(e) => failures
                                .push(os_error(format!("delete {}", link.name), &e).to_string()),
                        }
                    }
                }
            }
            Err(e) => failures.push(os_error("list links", &e).to_string()),
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
        if !removed.is_empty() {
            info!("removed leftovers: {}", removed.join(", "));
        }
        Ok(PlanReport {
            replaced_sysctls: Vec::new(),
            failures,
        })
    }
}
