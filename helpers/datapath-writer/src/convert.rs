//! The IPC's route and rule specs as rtnetlink objects: checked, and
//! marked with patchpanel's protocol number.

use patchpanel_ipc::datapath::{RouteKind, RouteSpec, RuleSpec, ROUTE_PROTOCOL};
use patchpanel_ipc::HelperError;

use crate::error::refused;

pub(crate) fn to_route(r: &RouteSpec) -> Result<patchpanel_rtnl::Route, HelperError> {
    let max = if r.dst.is_ipv4() { 32 } else { 128 };
    if r.prefix_len > max {
        return Err(refused(format!(
            "prefix length {} for {}",
            r.prefix_len, r.dst
        )));
    }
    if let Some(gw) = r.gateway {
        if gw.is_ipv4() != r.dst.is_ipv4() {
            return Err(refused(format!("gateway {gw} for {}", r.dst)));
        }
    }
    if r.kind != RouteKind::Unicast && (r.gateway.is_some() || r.dev.is_some()) {
        return Err(refused(format!(
            "a {:?} route to {}/{} has no gateway and no device",
            r.kind, r.dst, r.prefix_len
        )));
    }
    let mut route = patchpanel_rtnl::Route::new(r.dst, r.prefix_len);
    route.kind = match r.kind {
        RouteKind::Unicast => patchpanel_rtnl::RouteType::Unicast,
        RouteKind::Throw => patchpanel_rtnl::RouteType::Throw,
        RouteKind::Blackhole => patchpanel_rtnl::RouteType::Blackhole,
        RouteKind::Unreachable => patchpanel_rtnl::RouteType::Unreachable,
    };
    route.gateway = r.gateway;
    route.oif = r
        .dev
        .as_ref()
        .map(|d| patchpanel_rtnl::LinkRef::Name(d.to_string()));
    route.table = r.table;
    route.metric = r.metric;
    route.protocol = ROUTE_PROTOCOL;
    if r.kind == RouteKind::Unicast && r.gateway.is_none() && r.prefix_len > 0 {
        route.scope = patchpanel_rtnl::RouteScope::Link;
    }
    Ok(route)
}

pub(crate) fn to_rule(r: &RuleSpec) -> patchpanel_rtnl::Rule {
    patchpanel_rtnl::Rule {
        family: if r.ipv6 {
            patchpanel_rtnl::Family::V6
        } else {
            patchpanel_rtnl::Family::V4
        },
        priority: r.priority,
        fwmark: r.fwmark,
        iif: r.iif.as_ref().map(|i| i.to_string()),
        oif: r.oif.as_ref().map(|i| i.to_string()),
        src: r.src,
        dst: r.dst,
        table: r.table,
        suppress_prefixlen: r.suppress_prefixlen,
        protocol: ROUTE_PROTOCOL,
    }
}
