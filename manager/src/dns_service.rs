//! `SetDnsRedirectionRule` (dns-proxy; reference upstream-clients §3.3):
//! each rule sends some DNS queries to a dns-proxy instance
//! ([`patchpanel_firewall::dns`] says which, per type) for exactly as long
//! as the caller's lifeline is open.
//!
//! A rule is one firewall transaction each way. It is kept in the state
//! with the process that asked for it (pid and start time, from the bus):
//! after a crash restart the lifeline died with the old manager, so a
//! successor re-adopts the rules whose process still runs and watches that
//! process (a pidfd) instead; a rule whose process is gone is not put back.
//! A rebuild of the firewall puts every rule back.
//!
//! ARC rules also name the proxy ARC's Android uses: `GetDevices` shows
//! their addresses on that ARC device (`dns_proxy_ipv4_addr`,
//! `dns_proxy_ipv6_addr`) and `NetworkConfigurationChanged` tells Chrome
//! when they change.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::OwnedFd;

use log::{info, warn};
use patchpanel_firewall::dns::{redirection, DnsRule, Redirect};
use patchpanel_firewall::Batch;
use patchpanel_ipc::datapath::{ApplyMode, Plan, Step};
use patchpanel_ipc::IfName;
use patchpanel_proto::set_dns_redirection_rule_request::RuleType;
use patchpanel_proto::{SetDnsRedirectionRuleRequest, SetDnsRedirectionRuleResponse};
use prost::Message as _;
use serde::{Deserialize, Serialize};

use crate::env::{Env, GuestView};
use crate::error::CallError;
use crate::lifeline::{Guarded, LifelineWatcher};
pub use crate::pids::Owner;

/// The system and default DNS proxies' IPv6 addresses on `lo` (upstream's
/// `kDnsProxySystemIPv6Address`, `kDnsProxyDefaultIPv6Address`), for
/// dns-proxy's root-namespace mode; their IPv4 ones, 127.0.0.2 and
/// 127.0.0.3, are in `lo`'s 127/8 already.
pub const LOOPBACK_PROXIES: [Ipv6Addr; 2] = [
    Ipv6Addr::new(0xfd64, 0xffff, 0, 0, 0, 0, 0, 2),
    Ipv6Addr::new(0xfd64, 0xffff, 0, 0, 0, 0, 0, 3),
];

/// Adds (`add`) or removes the proxies' addresses on the host's `lo`;
/// best effort: a host without IPv6 on `lo` logs and goes on.
pub fn loopback_plan(add: bool) -> Plan {
    let lo = IfName::new("lo").expect("a valid name");
    Plan {
        label: format!("DNS proxy addresses {} lo", if add { "on" } else { "off" }),
        mode: ApplyMode::BestEffort,
        steps: LOOPBACK_PROXIES
            .iter()
            .map(|a| {
                let (netns, link, addr, prefix_len) = (
                    patchpanel_ipc::datapath::Netns::Host,
                    lo.clone(),
                    IpAddr::V6(*a),
                    128,
                );
                if add {
                    Step::AddAddress {
                        netns,
                        link,
                        addr,
                        prefix_len,
                    }
                } else {
                    Step::DeleteAddress {
                        netns,
                        link,
                        addr,
                        prefix_len,
                    }
                }
            })
            .collect(),
    }
}

/// At most this many rules at once (dns-proxy asks for a handful: two per
/// proxy and guest).
pub const MAX_RULES: usize = 512;
/// At most this many name servers in one request.
pub const MAX_NAMESERVERS: usize = 16;

fn invalid(message: impl Into<String>) -> CallError {
    CallError::InvalidArgument(format!("SetDnsRedirectionRule: {}", message.into()))
}

/// A request checked without state: the rule, the name servers it names
/// (kept for logs and `patchpanel status`; the original's datapath does
/// not use them either) and the proxy namespace's host interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub rule: DnsRule,
    pub nameservers: Vec<IpAddr>,
    pub host_ifname: Option<IfName>,
}

fn ifname(field: &str, text: &str) -> Result<IfName, CallError> {
    IfName::new(text).map_err(|e| invalid(format!("{field} {text:?}: {e}")))
}

/// Decodes and checks `req`: a known type; a proxy address that parses and
/// can be a destination (not unspecified, multicast or broadcast; a guest's
/// queries cannot be sent to the host's loopback); the input interface the
/// type needs, as a valid name; name servers that parse, of the proxy's
/// family.
pub fn parse(req: &SetDnsRedirectionRuleRequest) -> Result<Request, CallError> {
    let kind = RuleType::try_from(req.r#type)
        .ok()
        .filter(|t| *t != RuleType::InvalidRuleType)
        .ok_or_else(|| invalid(format!("unknown rule type {}", req.r#type)))?;
    if req.proxy_address.is_empty() {
        return Err(invalid("proxy_address is required"));
    }
    let proxy: IpAddr = req.proxy_address.parse().map_err(|_| {
        invalid(format!(
            "proxy_address {:?} is not an IP address",
            req.proxy_address
        ))
    })?;
    let bad = match proxy {
        IpAddr::V4(a) => a.is_unspecified() || a.is_multicast() || a.is_broadcast(),
        IpAddr::V6(a) => a.is_unspecified() || a.is_multicast(),
    };
    if bad {
        return Err(invalid(format!(
            "proxy_address {proxy} cannot be a destination"
        )));
    }
    let input = |what: &str| -> Result<IfName, CallError> {
        if req.input_ifname.is_empty() {
            return Err(invalid(format!(
                "input_ifname is required for {what} rules"
            )));
        }
        ifname("input_ifname", &req.input_ifname)
    };
    let redirect = match kind {
        RuleType::Default => Redirect::Default {
            ifname: input("DEFAULT")?,
        },
        RuleType::Arc => Redirect::Arc {
            ifname: input("ARC")?,
        },
        RuleType::User => Redirect::User,
        RuleType::ExcludeDestination => Redirect::ExcludeDestination,
        RuleType::InvalidRuleType => unreachable!("refused above"),
    };
    if matches!(redirect, Redirect::User | Redirect::ExcludeDestination)
        && !req.input_ifname.is_empty()
    {
        // Not used by these types, but never let a malformed name through.
        ifname("input_ifname", &req.input_ifname)?;
    }
    if matches!(redirect, Redirect::Default { .. } | Redirect::Arc { .. }) && proxy.is_loopback() {
        return Err(invalid(format!(
            "proxy_address {proxy} is the host's loopback, which a guest cannot reach"
        )));
    }
    if req.nameservers.len() > MAX_NAMESERVERS {
        return Err(invalid(format!(
            "{} name servers (at most {MAX_NAMESERVERS})",
            req.nameservers.len()
        )));
    }
    let mut nameservers = Vec::with_capacity(req.nameservers.len());
    for text in &req.nameservers {
        let ns: IpAddr = text
            .parse()
            .map_err(|_| invalid(format!("name server {text:?} is not an IP address")))?;
        if ns.is_ipv4() != proxy.is_ipv4() {
            return Err(invalid(format!(
                "name server {ns} is not of the proxy's family ({proxy})"
            )));
        }
        nameservers.push(ns);
    }
    let host_ifname = match req.host_ifname.as_str() {
        "" => None,
        name => Some(ifname("host_ifname", name)?),
    };
    Ok(Request {
        rule: DnsRule { redirect, proxy },
        nameservers,
        host_ifname,
    })
}

/// One active rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Redirection {
    pub id: u32,
    pub rule: DnsRule,
    pub nameservers: Vec<IpAddr>,
    pub host_ifname: Option<IfName>,
    /// Bus name of the caller, for logs.
    pub client: String,
    /// Who asked, to re-adopt the rule after a restart (`None`: the bus
    /// did not say; such a rule is not re-adopted).
    pub owner: Option<Owner>,
}

/// The active rules, by id.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsRedirections {
    pub rules: BTreeMap<u32, Redirection>,
    pub next_id: u32,
}

impl DnsRedirections {
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The proxies ARC's device `ifname` uses: the latest ARC rule of each
    /// family.
    /// The IPv4 DNS proxy of each guest link with a DEFAULT rule (the
    /// latest rule wins), for the name server DHCP announces there.
    pub fn guest_proxies(&self) -> BTreeMap<IfName, Ipv4Addr> {
        let mut proxies = BTreeMap::new();
        for r in self.rules.values() {
            if let (Redirect::Default { ifname }, IpAddr::V4(proxy)) =
                (&r.rule.redirect, r.rule.proxy)
            {
                proxies.insert(ifname.clone(), proxy);
            }
        }
        proxies
    }

    pub fn arc_proxies(&self, ifname: &str) -> (Option<Ipv4Addr>, Option<Ipv6Addr>) {
        let mut v4 = None;
        let mut v6 = None;
        for r in self.rules.values() {
            if let Redirect::Arc { ifname: i } = &r.rule.redirect {
                if i.as_str() == ifname {
                    match r.rule.proxy {
                        IpAddr::V4(a) => v4 = Some(a),
                        IpAddr::V6(a) => v6 = Some(a),
                    }
                }
            }
        }
        (v4, v6)
    }

    /// Every rule's changes, in id order (a firewall rebuild).
    pub fn batch(&self) -> Batch {
        let mut batch = Batch::new();
        for r in self.rules.values() {
            batch.extend(redirection(&r.rule));
        }
        batch
    }
}

/// What the D-Bus adaptor hands over.
#[derive(Debug)]
pub struct SetRule {
    pub request: Request,
    pub lifeline: OwnedFd,
    pub owner: Option<Owner>,
}

fn plan(label: String, batch: Batch) -> Plan {
    Plan {
        label,
        mode: ApplyMode::Atomic,
        steps: vec![Step::Firewall(batch)],
    }
}

/// The interface a DEFAULT or ARC rule names must be a guest's: a VM's TAP
/// or a connected namespace's host end (DEFAULT), an ARC device (ARC).
fn check_guest(rule: &DnsRule, guests: &GuestView<'_>) -> Result<(), CallError> {
    match &rule.redirect {
        Redirect::Default { ifname } => {
            let known = guests.vms.iter().any(|vm| vm.tap == *ifname)
                || guests
                    .namespaces
                    .values()
                    .any(|ns| ns.host_ifname == *ifname);
            if !known {
                return Err(invalid(format!(
                    "input_ifname {ifname} is not a guest's interface (a VM's TAP or a connected namespace)"
                )));
            }
        }
        Redirect::Arc { ifname } => {
            let known = guests.arc.is_some_and(|arc| {
                arc.devices
                    .values()
                    .any(|d| d.uplink.is_some() && d.bridge == *ifname)
            });
            if !known {
                return Err(invalid(format!(
                    "input_ifname {ifname} is not one of ARC's devices"
                )));
            }
        }
        Redirect::User | Redirect::ExcludeDestination => {}
    }
    Ok(())
}

/// Serves one `SetDnsRedirectionRule`: checks the interface against the
/// guests, applies the rule, watches the lifeline, records it. Nothing
/// stays applied or watched on error.
pub fn set(
    env: &mut Env<'_>,
    redirections: &mut DnsRedirections,
    guests: &GuestView<'_>,
    lifelines: &mut LifelineWatcher,
    call: SetRule,
    client: &str,
    op: u64,
) -> Result<Vec<u8>, CallError> {
    let SetRule {
        request,
        lifeline,
        owner,
    } = call;
    if redirections.rules.len() >= MAX_RULES {
        return Err(CallError::Failed(format!(
            "SetDnsRedirectionRule: {MAX_RULES} rules are active already"
        )));
    }
    check_guest(&request.rule, guests)?;
    let id = redirections.next_id;
    let batch = redirection(&request.rule);
    env.apply(
        plan(format!("DNS redirection {id} op {op}"), batch.clone()),
        &[],
    )?;
    if let Err(e) = lifelines.watch(lifeline, Guarded::DnsRule(id)) {
        undo(env, &batch, id, "its lifeline cannot be watched");
        return Err(CallError::Failed(format!(
            "SetDnsRedirectionRule: cannot watch the lifeline: {e}"
        )));
    }
    redirections.next_id = id.wrapping_add(1);
    info!(
        "DNS redirection {id} on (op {op} from {client}): {}{}",
        request.rule,
        if request.nameservers.is_empty() {
            String::new()
        } else {
            format!(
                ", name servers {}",
                request
                    .nameservers
                    .iter()
                    .map(IpAddr::to_string)
                    .collect::<Vec<_>>()
                    .join(" ")
            )
        }
    );
    if matches!(request.rule.redirect, Redirect::Arc { .. }) {
        env.network_configuration_changed();
    }
    redirections.rules.insert(
        id,
        Redirection {
            id,
            rule: request.rule,
            nameservers: request.nameservers,
            host_ifname: request.host_ifname,
            client: client.to_string(),
            owner,
        },
    );
    Ok(SetDnsRedirectionRuleResponse { success: true }.encode_to_vec())
}

fn undo(env: &mut Env<'_>, batch: &Batch, id: u32, why: &str) {
    let removed = batch
        .inverse()
        .map_err(CallError::from)
        .and_then(|inverse| {
            env.apply(
                plan(format!("DNS redirection {id} off: {why}"), inverse),
                &[],
            )
        });
    if let Err(e) = removed {
        warn!("DNS redirection {id}: cannot remove it ({why}): {e}");
    }
}

/// Removes rule `id` (its lifeline closed or its process exited).
pub fn remove(env: &mut Env<'_>, redirections: &mut DnsRedirections, id: u32, why: &str) {
    let Some(r) = redirections.rules.remove(&id) else {
        return;
    };
    undo(env, &redirection(&r.rule), id, why);
    info!("DNS redirection {id} off ({why}): {}", r.rule);
    if matches!(r.rule.redirect, Redirect::Arc { .. }) {
        env.network_configuration_changed();
    }
}

/// Rules whose guest is gone (its VM stopped, its namespace released, its
/// ARC device removed) go with it: dns-proxy drops them only when it sees
/// the device go, and until then a rule naming `vmtap0` would apply to the
/// next VM given that TAP. Their lifelines stay watched; when they close
/// there is nothing left to remove.
pub fn forget_gone_guests(
    env: &mut Env<'_>,
    redirections: &mut DnsRedirections,
    guests: &GuestView<'_>,
) {
    let gone: Vec<u32> = redirections
        .rules
        .values()
        .filter(|r| check_guest(&r.rule, guests).is_err())
        .map(|r| r.id)
        .collect();
    for id in gone {
        remove(env, redirections, id, "its guest is gone");
    }
}

/// After a restart: the previous run's rules whose process still runs are
/// applied again and watched through that process; the others are not
/// (their lifelines died with the old manager, and the process that held
/// them is gone).
pub fn readopt(
    env: &mut Env<'_>,
    redirections: &mut DnsRedirections,
    previous: &DnsRedirections,
    lifelines: &mut LifelineWatcher,
) {
    redirections.next_id = previous.next_id;
    for r in previous.rules.values() {
        let Some(pidfd) = r.owner.as_ref().and_then(Owner::pin) else {
            info!(
                "DNS redirection {} ({}) not re-adopted: the process that asked for it is gone",
                r.id, r.rule
            );
            continue;
        };
        let batch = redirection(&r.rule);
        if let Err(e) = env.apply(
            plan(format!("re-adopt DNS redirection {}", r.id), batch.clone()),
            &[],
        ) {
            warn!(
                "DNS redirection {} ({}) could not be re-applied: {e}",
                r.id, r.rule
            );
            continue;
        }
        if let Err(e) = lifelines.watch(pidfd, Guarded::DnsRule(r.id)) {
            undo(env, &batch, r.id, "its process cannot be watched");
            warn!(
                "DNS redirection {} not re-adopted: cannot watch its process: {e}",
                r.id
            );
            continue;
        }
        info!(
            "DNS redirection {} re-adopted: {} (until process {} exits)",
            r.id,
            r.rule,
            r.owner.map_or(0, |o| o.pid)
        );
        if matches!(r.rule.redirect, Redirect::Arc { .. }) {
            env.network_configuration_changed();
        }
        redirections.rules.insert(r.id, r.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(
        t: RuleType,
        ifname: &str,
        proxy: &str,
        ns: &[&str],
    ) -> SetDnsRedirectionRuleRequest {
        SetDnsRedirectionRuleRequest {
            r#type: t as i32,
            input_ifname: ifname.into(),
            proxy_address: proxy.into(),
            nameservers: ns.iter().map(|s| s.to_string()).collect(),
            host_ifname: String::new(),
        }
    }

    fn refused(req: &SetDnsRedirectionRuleRequest) -> String {
        match parse(req) {
            Err(CallError::InvalidArgument(m)) => m,
            other => panic!("{req:?} gave {other:?}"),
        }
    }

    #[test]
    fn every_type_parses() {
        let d = parse(&request(RuleType::Default, "vmtap0", "100.115.92.130", &[])).unwrap();
        assert_eq!(
            d.rule.redirect,
            Redirect::Default {
                ifname: IfName::new("vmtap0").unwrap()
            }
        );
        let u = parse(&request(
            RuleType::User,
            "",
            "fd64::2",
            &["2001:4860:4860::8888"],
        ))
        .unwrap();
        assert_eq!(u.rule.redirect, Redirect::User);
        assert_eq!(
            u.nameservers,
            ["2001:4860:4860::8888".parse::<IpAddr>().unwrap()]
        );
        let e = parse(&request(RuleType::ExcludeDestination, "", "127.0.0.2", &[])).unwrap();
        assert_eq!(e.rule.redirect, Redirect::ExcludeDestination);
        let a = parse(&request(
            RuleType::Arc,
            "arc_eth0",
            "100.115.92.138",
            &["8.8.8.8"],
        ))
        .unwrap();
        assert!(matches!(a.rule.redirect, Redirect::Arc { .. }));
    }

    #[test]
    fn bad_requests_are_refused_with_the_reason() {
        let mut r = request(RuleType::Default, "vmtap0", "100.115.92.130", &[]);
        r.r#type = 0;
        assert!(refused(&r).contains("rule type 0"));
        r.r#type = 9;
        assert!(refused(&r).contains("rule type 9"));
        assert!(
            refused(&request(RuleType::Default, "", "100.115.92.130", &[])).contains("required")
        );
        assert!(refused(&request(
            RuleType::Arc,
            "eth0 -j ACCEPT",
            "100.115.92.130",
            &[]
        ))
        .contains("input_ifname"));
        assert!(refused(&request(RuleType::User, "", "", &[])).contains("required"));
        assert!(refused(&request(RuleType::User, "", "dns.google", &[])).contains("not an IP"));
        assert!(refused(&request(RuleType::User, "", "0.0.0.0", &[])).contains("destination"));
        assert!(refused(&request(RuleType::User, "", "ff02::fb", &[])).contains("destination"));
        assert!(
            refused(&request(RuleType::Default, "vmtap0", "127.0.0.3", &[])).contains("loopback")
        );
        assert!(
            refused(&request(RuleType::User, "", "100.115.92.130", &["8.8.8"])).contains("8.8.8")
        );
        assert!(refused(&request(
            RuleType::User,
            "",
            "100.115.92.130",
            &["2001:db8::1"]
        ))
        .contains("family"));
        let many: Vec<String> = (0..=MAX_NAMESERVERS)
            .map(|i| format!("10.0.0.{i}"))
            .collect();
        let refs: Vec<&str> = many.iter().map(String::as_str).collect();
        assert!(refused(&request(RuleType::User, "", "100.115.92.130", &refs)).contains("at most"));
        let mut h = request(RuleType::User, "", "100.115.92.130", &[]);
        h.host_ifname = "a/b".into();
        assert!(refused(&h).contains("host_ifname"));
        let mut i = request(RuleType::User, "x;y", "100.115.92.130", &[]);
        i.input_ifname = "x y".into();
        assert!(refused(&i).contains("input_ifname"));
    }

    /// A rule as `set` records it, without an owner.
    fn redirection(id: u32, redirect: Redirect, proxy: &str) -> Redirection {
        Redirection {
            id,
            rule: DnsRule {
                redirect,
                proxy: proxy.parse().unwrap(),
            },
            nameservers: vec![],
            host_ifname: None,
            client: ":1.1".into(),
            owner: None,
        }
    }

    #[test]
    fn arc_proxies_are_the_latest_of_each_family() {
        let mut d = DnsRedirections::default();
        for (id, proxy) in [(0, "100.115.92.130"), (1, "fd64::3"), (2, "100.115.92.134")] {
            let arc = Redirect::Arc {
                ifname: IfName::new("arc_eth0").unwrap(),
            };
            d.rules.insert(id, redirection(id, arc, proxy));
        }
        assert_eq!(
            d.arc_proxies("arc_eth0"),
            (
                Some(Ipv4Addr::new(100, 115, 92, 134)),
                Some("fd64::3".parse().unwrap())
            )
        );
        assert_eq!(d.arc_proxies("arc_wlan0"), (None, None));
    }

    #[test]
    fn guest_proxies_are_the_latest_ipv4_default_rule_per_link() {
        let mut d = DnsRedirections::default();
        let rules = [
            (
                0,
                Redirect::Default {
                    ifname: IfName::new("vmtap0").unwrap(),
                },
                "100.115.92.130",
            ),
            (
                1,
                Redirect::Default {
                    ifname: IfName::new("vmtap0").unwrap(),
                },
                "fd64::3",
            ),
            (
                2,
                Redirect::Default {
                    ifname: IfName::new("vmtap0").unwrap(),
                },
                "100.115.92.134",
            ),
            (
                3,
                Redirect::Arc {
                    ifname: IfName::new("arc_eth0").unwrap(),
                },
                "100.115.92.138",
            ),
            (4, Redirect::User, "100.115.92.142"),
        ];
        for (id, redirect, proxy) in rules {
            d.rules.insert(id, redirection(id, redirect, proxy));
        }
        assert_eq!(
            d.guest_proxies(),
            [(
                IfName::new("vmtap0").unwrap(),
                Ipv4Addr::new(100, 115, 92, 134)
            )]
            .into()
        );
    }
}
