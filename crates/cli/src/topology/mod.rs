//! `patchpanel topology`: the guests patchpaneld reports (GetDevices) placed
//! under the uplinks they use, with what the kernel shows for each: links,
//! addresses, routes, ip rules, fwmarks and the iptables chains that serve
//! it.
//!
//! [`gather`] does the reading (D-Bus, then [`kernel::read`]);
//! [`assemble`] turns what was read into a [`Topology`] without side
//! effects, and [`render`] prints it as a tree or a Graphviz graph (JSON is
//! the struct itself).

pub mod kernel;
pub mod render;

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use anyhow::{Context, Result};
use patchpanel_client::Client;
use patchpanel_firewall::fwmark::{
    TrafficSource, QOS_MASK, ROUTING_MASK, SNAT_MARK, SOURCE_MASK, VPN_MASK,
};
use patchpanel_proto::NetworkDevice;
use serde::Serialize;

use crate::output::DeviceJson;
use kernel::{Family, FwRule, IpLink, IpRoute, IpRule, KernelState};

/// `topology --json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Topology {
    /// The uplink of the default route in the main table, if any.
    pub default_uplink: Option<String>,
    pub uplinks: Vec<Uplink>,
    pub guests: Vec<Guest>,
    /// Whether iptables could be read (chains and fwmarks are empty if not).
    pub firewall_read: bool,
    /// What could not be read, and why.
    pub notes: Vec<String>,
}

/// A link as the kernel shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Link {
    pub ifname: String,
    pub ifindex: u32,
    pub kind: Option<String>,
    pub state: Option<String>,
    pub mac: Option<String>,
    pub master: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Uplink {
    pub ifname: String,
    /// `None` when the kernel has no such link (a stale `phys_ifname`).
    pub link: Option<Link>,
    pub addresses: Vec<String>,
    pub routes: Vec<Route>,
    pub rules: Vec<Rule>,
    pub fwmarks: Vec<Fwmark>,
    pub chains: Vec<Chain>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Guest {
    /// What GetDevices said, as in `devices --json`.
    pub device: DeviceJson,
    /// The uplink its traffic uses: its `phys_ifname` if that is an uplink,
    /// otherwise the default uplink.
    pub uplink: Option<String>,
    /// Whether it follows the default network rather than a pinned uplink.
    pub follows_default: bool,
    pub link: Option<Link>,
    /// Links enslaved to the device (an ARC bridge's veth or TAP).
    pub members: Vec<Link>,
    pub addresses: Vec<String>,
    pub routes: Vec<Route>,
    pub fwmarks: Vec<Fwmark>,
    pub chains: Vec<Chain>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Route {
    pub family: String,
    pub dst: String,
    pub gateway: Option<String>,
    pub dev: String,
    pub table: String,
    pub protocol: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rule {
    pub family: String,
    pub priority: u32,
    /// `from 192.0.2.2`, `fwmark 0x3ea0000/0xffff0000`, `iif eth0`... or
    /// `all`.
    pub selector: String,
    pub table: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Fwmark {
    /// `mark` (MARK on the packet) or `connmark` (CONNMARK on the
    /// connection).
    pub kind: String,
    pub value: String,
    pub mask: String,
    /// What the bits mean: `source CrostiniVm`, `routing table 1002`...
    pub meaning: String,
    /// `table/chain` of the rule that sets it.
    pub chain: String,
    pub families: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Chain {
    pub table: String,
    pub chain: String,
    pub families: Vec<String>,
}

/// Asks patchpaneld for its devices and reads this namespace's kernel state.
pub fn gather(client: &Client) -> Result<Topology> {
    let devices = client
        .get_devices()
        .context("cannot list the guest devices")?;
    Ok(assemble(&devices, &kernel::read()))
}

/// Route types that every address adds by itself; left out as noise.
const NOISE_ROUTE_TYPES: &[&str] = &["local", "broadcast", "multicast", "anycast"];
/// Tables every interface's routes may be in; not specific to an uplink.
const SHARED_TABLES: &[&str] = &["main", "local", "default"];

/// Places the devices under their uplinks, with the kernel's view of each.
pub fn assemble(devices: &[NetworkDevice], kernel: &KernelState) -> Topology {
    let links: BTreeMap<&str, &IpLink> = kernel
        .links
        .iter()
        .map(|l| (l.ifname.as_str(), l))
        .collect();
    let device_names: BTreeSet<&str> = devices.iter().map(|d| d.ifname.as_str()).collect();
    let is_guest_link = |name: &str| {
        device_names.contains(name)
            || links
                .get(name)
                .and_then(|l| l.master.as_deref())
                .is_some_and(|m| device_names.contains(m))
    };

    let default_uplink = kernel
        .routes
        .iter()
        .filter(|(f, r)| *f == Family::V4 && r.dst == "default" && in_main(r))
        .min_by_key(|(_, r)| r.metric.unwrap_or(0))
        .and_then(|(_, r)| r.dev.clone())
        .filter(|dev| !is_guest_link(dev));

    let mut uplink_names: BTreeSet<String> = kernel
        .routes
        .iter()
        .filter(|(_, r)| r.dst == "default")
        .filter_map(|(_, r)| r.dev.clone())
        .filter(|dev| dev != "lo" && !is_guest_link(dev))
        .collect();
    uplink_names.extend(
        devices
            .iter()
            .map(|d| d.phys_ifname.clone())
            .filter(|p| !p.is_empty() && !is_guest_link(p)),
    );

    let uplinks = uplink_names
        .iter()
        .map(|name| {
            let routes = routes_of(kernel, &[name.as_str()]);
            let tables: BTreeSet<&str> = routes
                .iter()
                .map(|r| r.table.as_str())
                .filter(|t| !SHARED_TABLES.contains(t))
                .collect();
            let rules = kernel
                .rules
                .iter()
                .filter(|(_, r)| {
                    r.iif.as_deref() == Some(name)
                        || r.oif.as_deref() == Some(name)
                        || r.table.as_deref().is_some_and(|t| tables.contains(t))
                })
                .map(|(f, r)| rule(*f, r))
                .collect();
            let (chains, fwmarks) = firewall_of(kernel, name);
            Uplink {
                ifname: name.clone(),
                link: links.get(name.as_str()).map(|l| link(l)),
                addresses: addresses_of(kernel, name),
                routes,
                rules,
                fwmarks,
                chains,
            }
        })
        .collect();

    let guests = devices
        .iter()
        .map(|device| {
            let name = device.ifname.as_str();
            let pinned = Some(device.phys_ifname.as_str())
                .filter(|p| !p.is_empty() && uplink_names.contains(*p));
            let members: Vec<Link> = kernel
                .links
                .iter()
                .filter(|l| l.master.as_deref() == Some(name))
                .map(link)
                .collect();
            let mut devs = vec![name];
            devs.extend(members.iter().map(|m| m.ifname.as_str()));
            let (chains, fwmarks) = firewall_of(kernel, name);
            Guest {
                device: DeviceJson::from(device),
                uplink: pinned
                    .map(str::to_string)
                    .or_else(|| default_uplink.clone()),
                follows_default: pinned.is_none(),
                link: links.get(name).map(|l| link(l)),
                routes: routes_of(kernel, &devs),
                members,
                addresses: addresses_of(kernel, name),
                fwmarks,
                chains,
            }
        })
        .collect();

    Topology {
        default_uplink,
        uplinks,
        guests,
        firewall_read: kernel.firewall.is_some(),
        notes: kernel.notes.clone(),
    }
}

fn in_main(route: &IpRoute) -> bool {
    route.table.as_deref().is_none_or(|t| t == "main")
}

fn link(l: &IpLink) -> Link {
    Link {
        ifname: l.ifname.clone(),
        ifindex: l.ifindex,
        kind: l.kind().map(str::to_string),
        state: l.operstate.clone(),
        mac: l.address.clone(),
        master: l.master.clone(),
    }
}

fn addresses_of(kernel: &KernelState, ifname: &str) -> Vec<String> {
    kernel
        .addrs
        .iter()
        .filter(|a| a.ifname == ifname)
        .flat_map(|a| &a.addr_info)
        .filter(|i| i.scope.as_deref() != Some("link"))
        .filter_map(|i| Some(format!("{}/{}", i.local.as_deref()?, i.prefixlen?)))
        .collect()
}

fn routes_of(kernel: &KernelState, devs: &[&str]) -> Vec<Route> {
    kernel
        .routes
        .iter()
        .filter(|(_, r)| r.dev.as_deref().is_some_and(|d| devs.contains(&d)))
        .filter(|(_, r)| {
            r.kind
                .as_deref()
                .is_none_or(|k| !NOISE_ROUTE_TYPES.contains(&k))
        })
        .filter(|(_, r)| r.dst != "fe80::/64")
        .map(|(f, r)| Route {
            family: f.name().into(),
            dst: r.dst.clone(),
            gateway: r.gateway.clone(),
            dev: r.dev.clone().unwrap_or_default(),
            table: r.table.clone().unwrap_or_else(|| "main".into()),
            protocol: r.protocol.clone(),
        })
        .collect()
}

fn rule(family: Family, r: &IpRule) -> Rule {
    let mut parts = Vec::new();
    if let Some(src) = r.src.as_deref().filter(|s| *s != "all") {
        parts.push(match r.srclen {
            Some(len) => format!("from {src}/{len}"),
            None => format!("from {src}"),
        });
    }
    if let Some(mark) = &r.fwmark {
        parts.push(match &r.fwmask {
            Some(mask) => format!("fwmark {mark}/{mask}"),
            None => format!("fwmark {mark}"),
        });
    }
    if let Some(iif) = &r.iif {
        parts.push(format!("iif {iif}"));
    }
    if let Some(oif) = &r.oif {
        parts.push(format!("oif {oif}"));
    }
    Rule {
        family: family.name().into(),
        priority: r.priority,
        selector: if parts.is_empty() {
            "all".into()
        } else {
            parts.join(" ")
        },
        table: r.table.clone().unwrap_or_else(|| "main".into()),
    }
}

/// The chains that serve `ifname` and the marks they set: every chain with
/// a rule matching it (`-i`/`-o`), and the user chains such rules jump to,
/// followed through rules that match no other interface.
fn firewall_of(kernel: &KernelState, ifname: &str) -> (Vec<Chain>, Vec<Fwmark>) {
    let Some(fw) = &kernel.firewall else {
        return (Vec::new(), Vec::new());
    };
    let mut serving: Vec<&FwRule> = fw
        .rules
        .iter()
        .filter(|r| r.matches_interface(ifname))
        .collect();
    let mut seen: BTreeSet<(Family, &str, &str)> = BTreeSet::new();
    let mut queue: VecDeque<(Family, &str, &str)> =
        serving.iter().filter_map(|r| jump(fw, r)).collect();
    while let Some(key) = queue.pop_front() {
        if !seen.insert(key) {
            continue;
        }
        let (family, table, chain) = key;
        for rule in fw.rules.iter().filter(|r| {
            r.family == family
                && r.table == table
                && r.chain == chain
                && !r.matches_other_interface(ifname)
        }) {
            serving.push(rule);
            if let Some(next) = jump(fw, rule) {
                queue.push_back(next);
            }
        }
    }

    let mut chains: BTreeMap<(String, String), BTreeSet<Family>> = BTreeMap::new();
    for rule in &serving {
        chains
            .entry((rule.table.clone(), rule.chain.clone()))
            .or_default()
            .insert(rule.family);
    }
    // Chains jumped to count even when they are empty (yet).
    for (family, table, chain) in &seen {
        chains
            .entry((table.to_string(), chain.to_string()))
            .or_default()
            .insert(*family);
    }
    let chains = chains
        .into_iter()
        .map(|((table, chain), families)| Chain {
            table,
            chain,
            families: families.iter().map(|f| f.name().to_string()).collect(),
        })
        .collect();

    let mut marks: Vec<Fwmark> = Vec::new();
    for rule in &serving {
        let Some(mark) = mark_set_by(rule) else {
            continue;
        };
        match marks.iter_mut().find(|m| {
            m.kind == mark.kind
                && m.value == mark.value
                && m.mask == mark.mask
                && m.chain == mark.chain
        }) {
            Some(known) => {
                let family = rule.family.name().to_string();
                if !known.families.contains(&family) {
                    known.families.push(family);
                }
            }
            None => marks.push(mark),
        }
    }
    (chains, marks)
}

/// The user chain `rule` jumps to (`-j`/`-g`), if it is one.
fn jump<'a>(fw: &kernel::Firewall, rule: &'a FwRule) -> Option<(Family, &'a str, &'a str)> {
    let target = rule.value_of("-j").or_else(|| rule.value_of("-g"))?;
    fw.is_chain(rule.family, &rule.table, target).then_some((
        rule.family,
        rule.table.as_str(),
        target,
    ))
}

/// The mark a `MARK`/`CONNMARK --set-xmark`/`--set-mark` rule sets.
fn mark_set_by(rule: &FwRule) -> Option<Fwmark> {
    let kind = match rule.value_of("-j")? {
        "MARK" => "mark",
        "CONNMARK" => "connmark",
        _ => return None,
    };
    let set = rule
        .value_of("--set-xmark")
        .or_else(|| rule.value_of("--set-mark"))?;
    let (value, mask) = set.split_once('/').unwrap_or((set, "0xffffffff"));
    let (v, m) = (parse_hex(value)?, parse_hex(mask)?);
    Some(Fwmark {
        kind: kind.into(),
        value: format!("{v:#x}"),
        mask: format!("{m:#x}"),
        meaning: mark_meaning(v, m),
        chain: format!("{}/{}", rule.table, rule.chain),
        families: vec![rule.family.name().into()],
    })
}

fn parse_hex(text: &str) -> Option<u32> {
    match text.strip_prefix("0x") {
        Some(hex) => u32::from_str_radix(hex, 16).ok(),
        None => text.parse().ok(),
    }
}

/// The meaning of `value/mask` in patchpanel's fwmark layout.
pub fn mark_meaning(value: u32, mask: u32) -> String {
    match mask {
        SOURCE_MASK => TrafficSource::from_fwmark(value)
            .map_or_else(|| "unknown source".into(), |s| format!("source {s:?}")),
        ROUTING_MASK => format!("routing table {}", value >> 16),
        VPN_MASK => match value {
            0x8000 => "route on VPN".into(),
            0x4000 => "bypass VPN".into(),
            _ => "default VPN routing".into(),
        },
        QOS_MASK => "QoS category".into(),
        SNAT_MARK => "masquerade (legacy SNAT bit)".into(),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests;
