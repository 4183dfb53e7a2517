//! What patchpanel owns, and removing it: links with its alias, namespaces
//! with its prefix, routes and rules with its protocol number, its
//! firewall chains and jumps. Nothing else is ever removed.

use patchpanel_ipc::datapath::{RouteSpec, LINK_ALIAS, ROUTE_PROTOCOL};
use patchpanel_ipc::{HelperError, IfName};
use patchpanel_rtnl::{Route, Rtnl};

use crate::convert::to_route;
use crate::error::os_error;

/// Deletes `name` if it is patchpanel's; a missing link is not an error.
pub fn delete_owned_link(rtnl: &Rtnl, name: &IfName) -> Result<(), HelperError> {
    if owned_link_to_delete(rtnl, name)?.is_some() {
        rtnl.delete_link(name.as_str())
            .map_err(|e| os_error(format!("delete {name}"), &e))?;
    }
    Ok(())
}

/// The link `name` if it exists and may be deleted (it is patchpanel's);
/// `None` if there is none (already gone: nothing to do); refused if it is
/// someone else's.
pub fn owned_link_to_delete(
    rtnl: &Rtnl,
    name: &IfName,
) -> Result<Option<patchpanel_rtnl::Link>, HelperError> {
    let link = rtnl
        .link(name.as_str())
        .map_err(|e| os_error(format!("look up {name}"), &e))?;
    let Some(link) = link else {
        return Ok(None);
    };
    if link.alias.as_deref() != Some(LINK_ALIAS) {
        return Err(HelperError::Refused(format!(
            "refusing to delete {name}: it was not created by patchpanel (alias {:?})",
            link.alias.unwrap_or_default()
        )));
    }
    Ok(Some(link))
}

/// The link `name`, which must exist and be patchpanel's.
pub fn expect_owned_link(rtnl: &Rtnl, name: &IfName) -> Result<patchpanel_rtnl::Link, HelperError> {
    let link = rtnl
        .link(name.as_str())
        .map_err(|e| os_error(format!("look up {name}"), &e))?
        .ok_or_else(|| HelperError::Os {
            operation: format!("look up {name}"),
            errno: Some(libc::ENODEV),
            message: format!("no link named {name}"),
        })?;
    if link.alias.as_deref() != Some(LINK_ALIAS) {
        return Err(HelperError::Refused(format!(
            "{name} was not created by patchpanel (alias {:?})",
            link.alias.unwrap_or_default()
        )));
    }
    Ok(link)
}

/// The metric the kernel gives a route added without one.
pub(crate) fn effective_metric(r: &Route) -> u32 {
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
        return Err(HelperError::Refused(format!(
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
        return Err(HelperError::Refused(format!(
            "table {table} is not an uplink table (1000 and above)"
        )));
    }
    let mut wanted = Vec::new();
    for r in routes {
        if r.table != table {
            return Err(HelperError::Refused(format!(
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
