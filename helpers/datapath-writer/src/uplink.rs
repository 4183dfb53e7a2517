//! `ConfigureNetwork`'s steps on uplinks: links patchpanel does not own
//! (shill's), so the ownership rules of [`crate::owned`] are narrowed, not
//! relaxed:
//!
//! * the link is named by index and name, and both must be the same link
//!   (not `lo`, not one of patchpanel's own links);
//! * addresses: the writer remembers what it added to each uplink and
//!   removes only that; an address that was there before is left alone,
//!   also when a plan lists it;
//! * routes: only in the uplink's own table (ifindex + 1000), out of that
//!   link or nowhere, tagged with patchpanel's protocol; others' routes are
//!   neither replaced nor removed;
//! * MTU: the first value patchpanel replaced is remembered and put back
//!   by `ClearUplink`.
//!
//! The memory lives in the writer process: after a writer restart, a clear
//! removes routes and rules (the kernel keeps their protocol tag) but no
//! addresses, and leaves the MTU as it is: it errs towards leaving shill's
//! configuration alone.

use std::collections::HashMap;
use std::net::IpAddr;

use patchpanel_ipc::datapath::{
    broadcast, RouteSpec, UplinkAddress, UplinkRef, LINK_ALIAS, MAX_UPLINK_ITEMS, ROUTE_PROTOCOL,
};
use patchpanel_ipc::HelperError;
use patchpanel_rtnl::{Family, Link, Route, Rtnl};

use crate::convert::to_route;
use crate::error::{os_error, refused};
use crate::owned::{effective_metric, replaced_route};

/// What patchpanel did to one uplink.
#[derive(Debug, Default)]
pub(crate) struct UplinkMemory {
    /// The name the link had (a link renamed or replaced under the same
    /// index starts a fresh memory).
    name: String,
    /// Addresses patchpanel added that were not there before.
    addresses: Vec<(IpAddr, u8)>,
    /// The MTU before patchpanel's first change.
    original_mtu: Option<u32>,
}

/// The uplinks patchpanel touched, by ifindex.
#[derive(Debug, Default)]
pub(crate) struct Uplinks {
    by_index: HashMap<u32, UplinkMemory>,
}

impl Uplinks {
    fn entry(&mut self, link: &UplinkRef) -> &mut UplinkMemory {
        let m = self.by_index.entry(link.ifindex).or_default();
        if m.name != link.name.as_str() {
            *m = UplinkMemory {
                name: link.name.to_string(),
                ..UplinkMemory::default()
            };
        }
        m
    }

    fn forget(&mut self, link: &UplinkRef) {
        self.by_index.remove(&link.ifindex);
    }

    /// The addresses of one family patchpanel added to `link`.
    fn ours(&mut self, link: &UplinkRef, ipv6: bool) -> Vec<(IpAddr, u8)> {
        self.entry(link)
            .addresses
            .iter()
            .filter(|(a, _)| a.is_ipv6() == ipv6)
            .copied()
            .collect()
    }

    fn remember(&mut self, link: &UplinkRef, addr: (IpAddr, u8)) {
        let m = self.entry(link);
        if !m.addresses.contains(&addr) {
            m.addresses.push(addr);
        }
    }

    fn unremember(&mut self, link: &UplinkRef, addr: (IpAddr, u8)) {
        self.entry(link).addresses.retain(|a| *a != addr);
    }
}

/// The link `link` names: it must exist with that index and name, and be
/// neither `lo` nor one of patchpanel's own. The index and the name come
/// from the D-Bus caller (shill), so a mismatch is its mistake:
/// `InvalidArgument`.
pub(crate) fn check_uplink(rtnl: &Rtnl, link: &UplinkRef) -> Result<Link, HelperError> {
    find_uplink(rtnl, link)?.ok_or_else(|| {
        HelperError::InvalidArgument(format!(
            "no link named {} (ifindex {})",
            link.name, link.ifindex
        ))
    })
}

/// Like [`check_uplink`], but a link that is gone is `None`.
fn find_uplink(rtnl: &Rtnl, link: &UplinkRef) -> Result<Option<Link>, HelperError> {
    let name = link.name.as_str();
    if name == "lo" {
        return Err(HelperError::InvalidArgument("lo is not an uplink".into()));
    }
    let Some(found) = rtnl
        .link(name)
        .map_err(|e| os_error(format!("look up {name}"), &e))?
    else {
        return Ok(None);
    };
    if found.index != link.ifindex {
        return Err(HelperError::InvalidArgument(format!(
            "{name} has index {}, not {}",
            found.index, link.ifindex
        )));
    }
    if found.alias.as_deref() == Some(LINK_ALIAS) {
        return Err(HelperError::InvalidArgument(format!(
            "{name} is patchpanel's own link, not an uplink"
        )));
    }
    Ok(Some(found))
}

fn check_address(link: &UplinkRef, ipv6: bool, a: &UplinkAddress) -> Result<(), HelperError> {
    let max = if ipv6 { 128 } else { 32 };
    if a.addr.is_ipv6() != ipv6 {
        return Err(refused(format!(
            "{} in a sync of {} addresses of {}",
            a.addr,
            if ipv6 { "IPv6" } else { "IPv4" },
            link.name
        )));
    }
    if a.prefix_len == 0 || a.prefix_len > max {
        return Err(refused(format!(
            "prefix length {} for {}",
            a.prefix_len, a.addr
        )));
    }
    if a.addr.is_unspecified() || a.addr.is_multicast() || a.addr.is_loopback() {
        return Err(refused(format!("{} is not a unicast address", a.addr)));
    }
    if ipv6 && a.broadcast.is_some() {
        return Err(refused(format!("IPv6 address {} has no broadcast", a.addr)));
    }
    Ok(())
}

/// The broadcast address an IPv4 address is added with.
fn broadcast_of(a: &UplinkAddress) -> Option<std::net::Ipv4Addr> {
    match a.addr {
        IpAddr::V4(v4) if a.prefix_len < 31 => {
            Some(a.broadcast.unwrap_or(broadcast(v4, a.prefix_len)))
        }
        _ => None,
    }
}

/// What a sync of addresses did, to undo it.
#[derive(Debug, Default)]
pub(crate) struct AddressChange {
    pub added: Vec<(IpAddr, u8)>,
    pub removed: Vec<UplinkAddress>,
}

/// `SyncUplinkAddresses`. On an error, what it changed is put back first.
pub(crate) fn sync_addresses(
    rtnl: &Rtnl,
    memory: &mut Uplinks,
    link: &UplinkRef,
    ipv6: bool,
    addrs: &[UplinkAddress],
) -> Result<AddressChange, HelperError> {
    if addrs.len() > MAX_UPLINK_ITEMS {
        return Err(refused(format!(
            "{} addresses for {} (at most {MAX_UPLINK_ITEMS})",
            addrs.len(),
            link.name
        )));
    }
    for a in addrs {
        check_address(link, ipv6, a)?;
    }
    check_uplink(rtnl, link)?;
    let mut change = AddressChange::default();
    let result = (|| {
        for (addr, len) in memory.ours(link, ipv6) {
            if addrs.iter().any(|a| a.addr == addr && a.prefix_len == len) {
                continue;
            }
            rtnl.delete_address(link.name.as_str(), addr, len)
                .map_err(|e| os_error(format!("delete {addr}/{len} from {}", link.name), &e))?;
            memory.unremember(link, (addr, len));
            change.removed.push(UplinkAddress {
                addr,
                prefix_len: len,
                broadcast: None,
            });
        }
        for a in addrs {
            let added = rtnl
                .add_address(link.name.as_str(), a.addr, a.prefix_len, broadcast_of(a))
                .map_err(|e| {
                    os_error(
                        format!("add {}/{} to {}", a.addr, a.prefix_len, link.name),
                        &e,
                    )
                })?;
            if added {
                memory.remember(link, (a.addr, a.prefix_len));
                change.added.push((a.addr, a.prefix_len));
            }
        }
        Ok(())
    })();
    match result {
        Ok(()) => Ok(change),
        Err(e) => {
            let _ = undo_addresses(rtnl, memory, link, &change);
            Err(e)
        }
    }
}

/// Reverses an [`AddressChange`].
pub(crate) fn undo_addresses(
    rtnl: &Rtnl,
    memory: &mut Uplinks,
    link: &UplinkRef,
    change: &AddressChange,
) -> Result<(), HelperError> {
    let mut first_error = None;
    for &(addr, len) in change.added.iter().rev() {
        match rtnl.delete_address(link.name.as_str(), addr, len) {
            Ok(_) => memory.unremember(link, (addr, len)),
            Err(e) => {
                first_error.get_or_insert(os_error(format!("delete {addr}/{len}"), &e));
            }
        }
    }
    for a in &change.removed {
        match rtnl.add_address(link.name.as_str(), a.addr, a.prefix_len, broadcast_of(a)) {
            Ok(_) => memory.remember(link, (a.addr, a.prefix_len)),
            Err(e) => {
                first_error.get_or_insert(os_error(format!("re-add {}", a.addr), &e));
            }
        }
    }
    first_error.map_or(Ok(()), Err)
}

fn family(ipv6: bool) -> Family {
    if ipv6 {
        Family::V6
    } else {
        Family::V4
    }
}

/// Patchpanel's routes of one family in `table`.
fn our_routes(rtnl: &Rtnl, table: u32, ipv6: bool) -> Result<Vec<Route>, HelperError> {
    Ok(rtnl
        .routes(family(ipv6), Some(table))
        .map_err(|e| os_error(format!("list table {table}"), &e))?
        .into_iter()
        .filter(|r| r.protocol == ROUTE_PROTOCOL)
        .collect())
}

fn same_route(a: &Route, b: &Route) -> bool {
    a.dst == b.dst
        && a.prefix_len == b.prefix_len
        && a.gateway == b.gateway
        && a.kind == b.kind
        && effective_metric(a) == effective_metric(b)
}

/// `SyncUplinkRoutes`: returns patchpanel's routes of that family the
/// table held before, for the undo. On an error, those are put back first.
pub(crate) fn sync_routes(
    rtnl: &Rtnl,
    link: &UplinkRef,
    ipv6: bool,
    routes: &[RouteSpec],
) -> Result<Vec<Route>, HelperError> {
    let table = link.table();
    if routes.len() > 4 * MAX_UPLINK_ITEMS {
        return Err(refused(format!(
            "{} routes for {} (at most {})",
            routes.len(),
            link.name,
            4 * MAX_UPLINK_ITEMS
        )));
    }
    let mut wanted = Vec::new();
    for r in routes {
        if r.table != table {
            return Err(refused(format!(
                "route for table {} in a sync of {}'s table {table}",
                r.table, link.name
            )));
        }
        if r.dst.is_ipv6() != ipv6 {
            return Err(refused(format!("route to {} in the wrong family", r.dst)));
        }
        match (&r.dev, r.kind) {
            (Some(d), _) if d != &link.name => {
                return Err(refused(format!(
                    "route to {}/{} out of {d} in {}'s table",
                    r.dst, r.prefix_len, link.name
                )))
            }
            (None, patchpanel_ipc::datapath::RouteKind::Unicast) => {
                return Err(refused(format!(
                    "unicast route to {}/{} in {}'s table names no device",
                    r.dst, r.prefix_len, link.name
                )))
            }
            _ => {}
        }
        let route = to_route(r)?;
        // A route that is not patchpanel's is never replaced.
        replaced_route(rtnl, &route)?;
        wanted.push(route);
    }
    check_uplink(rtnl, link)?;
    let previous = our_routes(rtnl, table, ipv6)?;
    let result = (|| {
        let index = link.ifindex;
        for r in &previous {
            let kept = wanted.iter().any(|w| {
                same_route(w, r)
                    && match &r.oif {
                        Some(patchpanel_rtnl::LinkRef::Index(i)) => *i == index,
                        _ => true,
                    }
            });
            if !kept {
                rtnl.delete_route(r)
                    .map_err(|e| os_error(format!("delete route in table {table}"), &e))?;
            }
        }
        for w in &wanted {
            rtnl.add_route(w)
                .map_err(|e| os_error(format!("add route to table {table}"), &e))?;
        }
        Ok(())
    })();
    match result {
        Ok(()) => Ok(previous),
        Err(e) => {
            let _ = restore_routes(rtnl, table, ipv6, &previous);
            Err(e)
        }
    }
}

/// Puts patchpanel's routes of one family in `table` back to `previous`.
pub(crate) fn restore_routes(
    rtnl: &Rtnl,
    table: u32,
    ipv6: bool,
    previous: &[Route],
) -> Result<(), HelperError> {
    for r in our_routes(rtnl, table, ipv6)? {
        if !previous.iter().any(|p| same_route(p, &r)) {
            rtnl.delete_route(&r)
                .map_err(|e| os_error(format!("delete route in table {table}"), &e))?;
        }
    }
    for p in previous {
        rtnl.add_route(p)
            .map_err(|e| os_error(format!("restore a route in table {table}"), &e))?;
    }
    Ok(())
}

/// `SetUplinkMtu`: returns the MTU it replaced and whether it was the
/// first change patchpanel made (the undo then forgets the original).
pub(crate) fn set_mtu(
    rtnl: &Rtnl,
    memory: &mut Uplinks,
    link: &UplinkRef,
    mtu: u32,
) -> Result<(u32, bool), HelperError> {
    if !(68..=65535).contains(&mtu) {
        return Err(refused(format!("MTU {mtu} for {} (68..=65535)", link.name)));
    }
    let found = check_uplink(rtnl, link)?;
    if found.mtu != mtu {
        rtnl.set_mtu(link.name.as_str(), mtu)
            .map_err(|e| os_error(format!("set the MTU of {} to {mtu}", link.name), &e))?;
    }
    let m = memory.entry(link);
    let first = m.original_mtu.is_none();
    m.original_mtu.get_or_insert(found.mtu);
    Ok((found.mtu, first))
}

/// Undoes [`set_mtu`].
pub(crate) fn undo_mtu(
    rtnl: &Rtnl,
    memory: &mut Uplinks,
    link: &UplinkRef,
    mtu: u32,
    first: bool,
) -> Result<(), HelperError> {
    check_uplink(rtnl, link)?;
    rtnl.set_mtu(link.name.as_str(), mtu)
        .map_err(|e| os_error(format!("set the MTU of {} to {mtu}", link.name), &e))?;
    if first {
        memory.entry(link).original_mtu = None;
    }
    Ok(())
}

/// `ClearUplink`. A link that is gone still has its table's routes and
/// rules removed (they outlive it); a link whose name now has another
/// index is refused.
pub(crate) fn clear(
    rtnl: &Rtnl,
    memory: &mut Uplinks,
    link: &UplinkRef,
) -> Result<Vec<String>, HelperError> {
    let present = find_uplink(rtnl, link)?;
    let mut failures = Vec::new();
    let table = link.table();
    if present.is_some() {
        let m = memory.entry(link);
        let addresses = std::mem::take(&mut m.addresses);
        let mtu = m.original_mtu.take();
        for (addr, len) in addresses {
            if let Err(e) = rtnl.delete_address(link.name.as_str(), addr, len) {
                failures.push(os_error(format!("delete {addr}/{len}"), &e).to_string());
            }
        }
        if let Some(mtu) = mtu {
            if let Err(e) = rtnl.set_mtu(link.name.as_str(), mtu) {
                failures.push(os_error(format!("restore the MTU {mtu}"), &e).to_string());
            }
        }
    }
    memory.forget(link);
    for ipv6 in [false, true] {
        match our_routes(rtnl, table, ipv6) {
            Ok(routes) => {
                for r in routes {
                    if let Err(e) = rtnl.delete_route(&r) {
                        failures.push(
                            os_error(format!("delete route in table {table}"), &e).to_string(),
                        );
                    }
                }
            }
            Err(e) => failures.push(e.to_string()),
        }
        match rtnl.rules(family(ipv6)) {
            Ok(rules) => {
                let name = Some(link.name.to_string());
                for r in rules.iter().filter(|r| {
                    r.protocol == ROUTE_PROTOCOL
                        && (r.table == table || r.iif == name || r.oif == name)
                }) {
                    if let Err(e) = rtnl.delete_rule(r) {
                        failures.push(os_error(format!("delete rule {r:?}"), &e).to_string());
                    }
                }
            }
            Err(e) => failures.push(os_error("list rules", &e).to_string()),
        }
    }
    Ok(failures)
}

/// `ProbeNeighbor`: the address must be unicast and the link one of
/// shill's (see [`check_uplink`]). A link that is gone is refused like any
/// other wrong link: the manager's view was stale.
pub(crate) fn probe_neighbor(
    rtnl: &Rtnl,
    link: &UplinkRef,
    addr: IpAddr,
) -> Result<patchpanel_rtnl::neigh::Probe, HelperError> {
    let broadcast = addr == IpAddr::V4(std::net::Ipv4Addr::BROADCAST);
    let mapped = matches!(addr, IpAddr::V6(a) if a.to_ipv4_mapped().is_some());
    if addr.is_unspecified() || addr.is_multicast() || addr.is_loopback() || broadcast || mapped {
        return Err(refused(format!(
            "{addr} is not a unicast neighbour address"
        )));
    }
    check_uplink(rtnl, link)?;
    rtnl.probe_neighbor(addr, link.ifindex)
        .map_err(|e| os_error(format!("probe neighbour {addr} on {}", link.name), &e))
}
