//! DNS redirection to dns-proxy (`SetDnsRedirectionRule`, reference
//! upstream-clients §3.3): what each rule type adds, in the family of its
//! proxy's address. The chains and their jumps are part of the layout:
//! nat `redirect_default_dns` (PREROUTING), nat `redirect_user_dns`
//! (OUTPUT, for packets carrying the route-on-VPN bit: the user's
//! traffic), filter `accept_egress_to_dns_proxy` (first in FORWARD and
//! OUTPUT, before the VPN filters, so lockdown never rejects a query to a
//! proxy) and mangle `skip_apply_vpn_mark`.
//!
//! | type | changes |
//! |---|---|
//! | DEFAULT (a guest's TAP) | DNAT udp+tcp/53 arriving on the TAP to the proxy; those queries skip VPN marking; forwarded queries to the proxy accepted |
//! | ARC (an ARC device) | forwarded queries from the device to the proxy accepted (ARC uses the proxy's address directly: `GetDevices`) |
//! | USER | DNAT of the user's udp+tcp/53 to the proxy; the user's DNS skips VPN marking; egress to the proxy accepted |
//! | EXCLUDE_DESTINATION | first in `redirect_user_dns`: the user's queries not aimed at the proxy are left alone; egress to the proxy accepted |
//!
//! Each rule is one [`Batch`]; its inverse removes exactly it. Two rules
//! that add the same rule each add their own copy, so removing one leaves
//! the other's working.

use std::net::IpAddr;

use patchpanel_names::IfName;
use serde::{Deserialize, Serialize};

use crate::catalog::{ACCEPT_EGRESS_TO_DNS_PROXY, REDIRECT_DEFAULT_DNS, REDIRECT_USER_DNS};
use crate::layout::{named, SKIP_APPLY_VPN_MARK};
use crate::model::{AddrMatch, Batch, Change, Cidr, Family, Match, Protocol, Rule, Table, Target};

/// The DNS port.
pub const DNS_PORT: u16 = 53;

/// What a rule redirects.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Redirect {
    /// Queries of a guest that follows the default network (Crostini,
    /// Parallels, Bruschetta, Borealis), arriving on its TAP.
    Default { ifname: IfName },
    /// An ARC device whose Android uses the proxy directly.
    Arc { ifname: IfName },
    /// The user's own queries (Chrome and the uids that follow the VPN).
    User,
    /// The user's queries not aimed at the proxy stay as they are.
    ExcludeDestination,
}

/// One rule: what, and the proxy's address (its family is the rule's).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DnsRule {
    pub redirect: Redirect,
    pub proxy: IpAddr,
}

impl DnsRule {
    pub fn family(&self) -> Family {
        match self.proxy {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }
}

impl std::fmt::Display for DnsRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.redirect {
            Redirect::Default { ifname } => write!(f, "DEFAULT {ifname} -> {}", self.proxy),
            Redirect::Arc { ifname } => write!(f, "ARC {ifname} -> {}", self.proxy),
            Redirect::User => write!(f, "USER -> {}", self.proxy),
            Redirect::ExcludeDestination => {
                write!(f, "EXCLUDE_DESTINATION not to {}", self.proxy)
            }
        }
    }
}

fn dns(protocol: Protocol) -> Vec<Match> {
    vec![Match::Protocol(protocol), Match::DestinationPort(DNS_PORT)]
}

fn with(rule: Rule, matches: Vec<Match>) -> Rule {
    matches.into_iter().fold(rule, Rule::with)
}

/// The changes that add `rule` (one family; its inverse removes it).
pub fn redirection(rule: &DnsRule) -> Batch {
    let proxy = Cidr::host(rule.proxy);
    let mut changes = Vec::new();
    let append = |table, chain: &'static str, rule| Change::Append {
        table,
        chain: named(chain),
        rule,
    };
    let accept_to_proxy = |iif: Option<&IfName>| {
        let mut r = Rule::new(Target::Accept);
        if let Some(i) = iif {
            r = r.with(Match::iif(i));
        }
        append(
            Table::Filter,
            ACCEPT_EGRESS_TO_DNS_PROXY,
            r.with(Match::dst(proxy)),
        )
    };
    let protocols = [Protocol::Udp, Protocol::Tcp];
    match &rule.redirect {
        Redirect::Default { ifname } => {
            for p in protocols {
                changes.push(append(
                    Table::Nat,
                    REDIRECT_DEFAULT_DNS,
                    with(
                        Rule::new(Target::Dnat {
                            addr: rule.proxy,
                            port: None,
                        })
                        .with(Match::iif(ifname)),
                        dns(p),
                    ),
                ));
            }
            for p in protocols {
                changes.push(append(
                    Table::Mangle,
                    SKIP_APPLY_VPN_MARK,
                    with(Rule::new(Target::Accept).with(Match::iif(ifname)), dns(p)),
                ));
            }
            changes.push(accept_to_proxy(Some(ifname)));
        }
        Redirect::Arc { ifname } => changes.push(accept_to_proxy(Some(ifname))),
        Redirect::User => {
            for p in protocols {
                changes.push(append(
                    Table::Mangle,
                    SKIP_APPLY_VPN_MARK,
                    with(Rule::new(Target::Accept), dns(p)),
                ));
            }
            for p in protocols {
                changes.push(append(
                    Table::Nat,
                    REDIRECT_USER_DNS,
                    with(
                        Rule::new(Target::Dnat {
                            addr: rule.proxy,
                            port: None,
                        }),
                        dns(p),
                    ),
                ));
            }
            changes.push(accept_to_proxy(None));
        }
        Redirect::ExcludeDestination => {
            for p in protocols {
                let not_proxy = Match::Destination(AddrMatch {
                    cidr: proxy,
                    negate: true,
                });
                changes.push(Change::Insert {
                    table: Table::Nat,
                    chain: named(REDIRECT_USER_DNS),
                    position: 1,
                    rule: Rule::new(Target::Return)
                        .with(Match::Protocol(p))
                        .with(not_proxy)
                        .with(Match::DestinationPort(DNS_PORT)),
                });
            }
            changes.push(accept_to_proxy(None));
        }
    }
    let mut batch = Batch::new();
    for c in changes {
        batch.push(rule.family(), c);
    }
    batch
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(batch: &Batch, family: Family) -> Vec<String> {
        batch
            .changes(family)
            .iter()
            .flat_map(|c| {
                c.validate(family).expect("valid");
                crate::render::change_lines(c)
            })
            .collect()
    }

    fn ifname(s: &str) -> IfName {
        IfName::new(s).unwrap()
    }

    #[test]
    fn default_redirects_the_guests_dns_to_the_proxy() {
        let rule = DnsRule {
            redirect: Redirect::Default {
                ifname: ifname("vmtap0"),
            },
            proxy: "100.115.92.130".parse().unwrap(),
        };
        let batch = redirection(&rule);
        assert!(batch.changes(Family::V6).is_empty());
        assert_eq!(
            lines(&batch, Family::V4),
            [
                "-A redirect_default_dns -i vmtap0 -p udp --dport 53 -j DNAT --to-destination 100.115.92.130",
                "-A redirect_default_dns -i vmtap0 -p tcp --dport 53 -j DNAT --to-destination 100.115.92.130",
                "-A skip_apply_vpn_mark -i vmtap0 -p udp --dport 53 -j ACCEPT",
                "-A skip_apply_vpn_mark -i vmtap0 -p tcp --dport 53 -j ACCEPT",
                "-A accept_egress_to_dns_proxy -i vmtap0 -d 100.115.92.130/32 -j ACCEPT",
            ]
        );
    }

    #[test]
    fn user_redirects_in_the_proxys_family_only() {
        let rule = DnsRule {
            redirect: Redirect::User,
            proxy: "fd64::2".parse().unwrap(),
        };
        let batch = redirection(&rule);
        assert!(batch.changes(Family::V4).is_empty());
        assert_eq!(
            lines(&batch, Family::V6),
            [
                "-A skip_apply_vpn_mark -p udp --dport 53 -j ACCEPT",
                "-A skip_apply_vpn_mark -p tcp --dport 53 -j ACCEPT",
                "-A redirect_user_dns -p udp --dport 53 -j DNAT --to-destination fd64::2",
                "-A redirect_user_dns -p tcp --dport 53 -j DNAT --to-destination fd64::2",
                "-A accept_egress_to_dns_proxy -d fd64::2/128 -j ACCEPT",
            ]
        );
    }

    #[test]
    fn exclude_destination_goes_first_and_arc_only_accepts() {
        let exclude = DnsRule {
            redirect: Redirect::ExcludeDestination,
            proxy: "100.115.92.134".parse().unwrap(),
        };
        assert_eq!(
            lines(&redirection(&exclude), Family::V4),
            [
                "-I redirect_user_dns 1 -p udp ! -d 100.115.92.134/32 --dport 53 -j RETURN",
                "-I redirect_user_dns 1 -p tcp ! -d 100.115.92.134/32 --dport 53 -j RETURN",
                "-A accept_egress_to_dns_proxy -d 100.115.92.134/32 -j ACCEPT",
            ]
        );
        let arc = DnsRule {
            redirect: Redirect::Arc {
                ifname: ifname("arc_eth0"),
            },
            proxy: "100.115.92.138".parse().unwrap(),
        };
        assert_eq!(
            lines(&redirection(&arc), Family::V4),
            ["-A accept_egress_to_dns_proxy -i arc_eth0 -d 100.115.92.138/32 -j ACCEPT"]
        );
    }

    #[test]
    fn every_rule_inverts() {
        for redirect in [
            Redirect::Default {
                ifname: ifname("vmtap1"),
            },
            Redirect::Arc {
                ifname: ifname("arc_wlan0"),
            },
            Redirect::User,
            Redirect::ExcludeDestination,
        ] {
            let rule = DnsRule {
                redirect,
                proxy: "100.115.92.130".parse().unwrap(),
            };
            let batch = redirection(&rule);
            let inverse = batch.inverse().expect("invertible");
            // Each added rule is deleted, last first.
            let added: Vec<_> = batch.ipv4.iter().rev().collect();
            assert_eq!(inverse.ipv4.len(), added.len(), "{rule}");
            for (undo, done) in inverse.ipv4.iter().zip(added) {
                match (undo, done) {
                    (
                        Change::Delete { chain, rule: r, .. },
                        Change::Append {
                            chain: c, rule: d, ..
                        }
                        | Change::Insert {
                            chain: c, rule: d, ..
                        },
                    ) => assert!(chain == c && r == d, "{rule}"),
                    other => panic!("{rule}: {other:?}"),
                }
            }
        }
    }
}
