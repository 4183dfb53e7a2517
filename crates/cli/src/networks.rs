//! `patchpanel networks`: the networks patchpaneld configured for shill
//! (`ConfigureNetwork`) or built itself (netlink mode), read from the kernel
//! of the namespace this command runs in: each routing table ifindex+1000
//! that patchpanel's ip rules or routes (protocol 157) use, with its link,
//! MTU, addresses, routes and rules; which VPN is the default network (the
//! table the route-on-VPN rule at 32764 looks up); and whether VPN lockdown
//! is on (the REJECT in `vpn_lockdown`; needs root to read the firewall).

use serde::Serialize;

use crate::topology::kernel::{Family, KernelState};

/// Routing tables of networks are ifindex + this.
const TABLE_OFFSET: u32 = 1000;
/// The route-on-VPN rule's priority.
const ROUTE_ON_VPN_PRIORITY: u32 = 32764;

/// `networks --json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Networks {
    pub networks: Vec<Network>,
    /// The link whose table the route-on-VPN rule looks up.
    pub default_vpn: Option<String>,
    /// `None` when the firewall could not be read.
    pub vpn_lockdown: Option<bool>,
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Network {
    /// The link, or `#<ifindex>` when it is gone.
    pub ifname: String,
    pub ifindex: u32,
    pub table: u32,
    pub mtu: Option<u32>,
    pub addresses: Vec<String>,
    pub routes: Vec<String>,
    pub rules: Vec<String>,
}

fn family(f: Family) -> &'static str {
    match f {
        Family::V4 => "-4",
        Family::V6 => "-6",
    }
}

/// What `kernel` shows of patchpanel's networks.
pub fn assemble(kernel: &KernelState) -> Networks {
    let ours = |p: &Option<String>| p.as_deref() == Some("157");
    let table_of = |t: &Option<String>| {
        t.as_deref()
            .and_then(|t| t.parse::<u32>().ok())
            .filter(|t| *t > TABLE_OFFSET && *t <= TABLE_OFFSET + u32::from(u16::MAX))
    };
    let mut tables: Vec<u32> = kernel
        .rules
        .iter()
        .filter(|(_, r)| ours(&r.protocol))
        .filter_map(|(_, r)| table_of(&r.table))
        .chain(
            kernel
                .routes
                .iter()
                .filter(|(_, r)| ours(&r.protocol))
                .filter_map(|(_, r)| table_of(&r.table)),
        )
        .collect();
    tables.sort_unstable();
    tables.dedup();
    let mut out = Networks::default();
    for table in tables {
        let ifindex = table - TABLE_OFFSET;
        let link = kernel.links.iter().find(|l| l.ifindex == ifindex);
        let ifname = link.map_or_else(|| format!("#{ifindex}"), |l| l.ifname.clone());
        let addresses = kernel
            .addrs
            .iter()
            .filter(|a| a.ifname == ifname)
            .flat_map(|a| &a.addr_info)
            .filter(|i| i.scope.as_deref() != Some("link"))
            .filter_map(|i| Some(format!("{}/{}", i.local.as_deref()?, i.prefixlen?)))
            .collect();
        let routes = kernel
            .routes
            .iter()
            .filter(|(_, r)| table_of(&r.table) == Some(table))
            .map(|(f, r)| {
                let mut text = format!("{} ", family(*f));
                if let Some(kind) = r.kind.as_deref().filter(|k| *k != "unicast") {
                    text.push_str(kind);
                    text.push(' ');
                }
                text.push_str(&r.dst);
                if let Some(gw) = &r.gateway {
                    text.push_str(&format!(" via {gw}"));
                }
                if let Some(dev) = &r.dev {
                    text.push_str(&format!(" dev {dev}"));
                }
                text
            })
            .collect();
        let rules = kernel
            .rules
            .iter()
            .filter(|(_, r)| ours(&r.protocol) && table_of(&r.table) == Some(table))
            .map(|(f, r)| {
                let mut text = format!("{} {}:", family(*f), r.priority);
                match (&r.src, r.srclen) {
                    (Some(src), Some(len)) if src != "all" => {
                        text.push_str(&format!(" from {src}/{len}"))
                    }
                    (Some(src), None) if src != "all" => text.push_str(&format!(" from {src}")),
                    _ => {}
                }
                if let Some(mark) = &r.fwmark {
                    text.push_str(&format!(" fwmark {mark}"));
                    if let Some(mask) = &r.fwmask {
                        text.push_str(&format!("/{mask}"));
                    }
                }
                if let Some(iif) = &r.iif {
                    text.push_str(&format!(" iif {iif}"));
                }
                if let Some(oif) = &r.oif {
                    text.push_str(&format!(" oif {oif}"));
                }
                text
            })
            .collect();
        if kernel.rules.iter().any(|(_, r)| {
            ours(&r.protocol)
                && r.priority == ROUTE_ON_VPN_PRIORITY
                && table_of(&r.table) == Some(table)
        }) {
            out.default_vpn = Some(ifname.clone());
        }
        out.networks.push(Network {
            mtu: link.and_then(|l| l.mtu),
            ifname,
            ifindex,
            table,
            addresses,
            routes,
            rules,
        });
    }
    out.vpn_lockdown = kernel.firewall.as_ref().map(|fw| {
        fw.rules
            .iter()
            .any(|r| r.chain == "vpn_lockdown" && r.value_of("-j") == Some("REJECT"))
    });
    out.notes = kernel.notes.clone();
    out
}

/// The text form.
pub fn render(n: &Networks) -> String {
    let mut out = String::new();
    if n.networks.is_empty() {
        out.push_str("no network configured by patchpanel in this namespace\n");
    }
    for net in &n.networks {
        out.push_str(&format!(
            "{} #{}  table {}{}{}\n",
            net.ifname,
            net.ifindex,
            net.table,
            net.mtu.map(|m| format!("  mtu {m}")).unwrap_or_default(),
            if n.default_vpn.as_deref() == Some(net.ifname.as_str()) {
                "  (default VPN)"
            } else {
                ""
            }
        ));
        if !net.addresses.is_empty() {
            out.push_str(&format!("  addresses: {}\n", net.addresses.join(", ")));
        }
        for r in &net.routes {
            out.push_str(&format!("  route {r}\n"));
        }
        for r in &net.rules {
            out.push_str(&format!("  rule {r}\n"));
        }
    }
    out.push_str(&format!(
        "default VPN: {}\nVPN lockdown: {}\n",
        n.default_vpn.as_deref().unwrap_or("none"),
        match n.vpn_lockdown {
            Some(true) => "on",
            Some(false) => "off",
            None => "unknown (the firewall needs root to read)",
        }
    ));
    for note in &n.notes {
        out.push_str(&format!("note: {note}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::kernel::{Firewall, FwRule, IpAddrInfo, IpAddrs, IpLink, IpRoute, IpRule};

    fn rule(priority: u32, table: &str, fwmark: Option<(&str, &str)>) -> IpRule {
        IpRule {
            priority,
            src: Some("all".into()),
            fwmark: fwmark.map(|(m, _)| m.to_string()),
            fwmask: fwmark.map(|(_, m)| m.to_string()),
            table: Some(table.into()),
            protocol: Some("157".into()),
            ..Default::default()
        }
    }

    fn kernel(lockdown: bool) -> KernelState {
        KernelState {
            links: vec![
                IpLink {
                    ifname: "eth0".into(),
                    ifindex: 2,
                    mtu: Some(1400),
                    ..Default::default()
                },
                IpLink {
                    ifname: "vpn0".into(),
                    ifindex: 9,
                    mtu: Some(1500),
                    ..Default::default()
                },
            ],
            addrs: vec![IpAddrs {
                ifname: "eth0".into(),
                addr_info: vec![IpAddrInfo {
                    family: "inet".into(),
                    local: Some("192.0.2.2".into()),
                    prefixlen: Some(24),
                    scope: Some("global".into()),
                }],
            }],
            routes: vec![(
                Family::V4,
                IpRoute {
                    dst: "default".into(),
                    gateway: Some("192.0.2.1".into()),
                    dev: Some("eth0".into()),
                    table: Some("1002".into()),
                    protocol: Some("157".into()),
                    ..Default::default()
                },
            )],
            rules: vec![
                (
                    Family::V4,
                    rule(1010, "1002", Some(("0x3ea0000", "0xffff0000"))),
                ),
                (Family::V4, rule(32765, "1002", None)),
                (Family::V4, rule(32764, "1009", Some(("0x8000", "0xc000")))),
                // Not patchpanel's: ignored.
                (
                    Family::V4,
                    IpRule {
                        priority: 100,
                        table: Some("1005".into()),
                        ..Default::default()
                    },
                ),
            ],
            firewall: Some(Firewall {
                rules: lockdown
                    .then(|| FwRule {
                        family: Family::V4,
                        table: "filter".into(),
                        chain: "vpn_lockdown".into(),
                        args: "-m mark --mark 0x8000/0xc000 -j REJECT"
                            .split(' ')
                            .map(String::from)
                            .collect(),
                    })
                    .into_iter()
                    .collect(),
                chains: Vec::new(),
            }),
            notes: Vec::new(),
        }
    }

    #[test]
    fn networks_are_the_tables_patchpanel_s_rules_and_routes_use() {
        let n = assemble(&kernel(true));
        let names: Vec<(&str, u32)> = n
            .networks
            .iter()
            .map(|n| (n.ifname.as_str(), n.table))
            .collect();
        assert_eq!(names, [("eth0", 1002), ("vpn0", 1009)]);
        let eth0 = &n.networks[0];
        assert_eq!(eth0.mtu, Some(1400));
        assert_eq!(eth0.addresses, ["192.0.2.2/24"]);
        assert_eq!(eth0.routes, ["-4 default via 192.0.2.1 dev eth0"]);
        assert_eq!(
            eth0.rules,
            ["-4 1010: fwmark 0x3ea0000/0xffff0000", "-4 32765:"]
        );
        assert_eq!(n.default_vpn.as_deref(), Some("vpn0"));
        assert_eq!(n.vpn_lockdown, Some(true));
        let text = render(&n);
        assert!(
            text.contains("vpn0 #9  table 1009  mtu 1500  (default VPN)"),
            "{text}"
        );
        assert!(text.contains("VPN lockdown: on"), "{text}");
    }

    #[test]
    fn lockdown_off_and_unknown_are_told_apart() {
        assert_eq!(assemble(&kernel(false)).vpn_lockdown, Some(false));
        let mut k = kernel(false);
        k.firewall = None;
        let n = assemble(&k);
        assert_eq!(n.vpn_lockdown, None);
        assert!(render(&n).contains("unknown"));
    }
}
