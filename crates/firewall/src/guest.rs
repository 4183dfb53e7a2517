//! Rules for guests and uplinks, as pure functions from a description to a
//! [`Batch`] (upstream-core §4.5, §4.6, §4.9).
//!
//! A downstream interface (a guest's host-side veth or TAP) gets:
//! * filter `guest_forward`: its traffic out (`-i <if> -j ACCEPT`) and the
//!   way back in — all of it for open guests, only `RELATED,ESTABLISHED`
//!   for the others, so patchpanel never opens the host to new inbound
//!   connections it did not ask for;
//! * mangle `PREROUTING_<if>`, jumped to from `patchpanel_PREROUTING -i <if>`:
//!   the SNAT bit, the traffic source, and the routing mode's marks.
//!
//! Every teardown is the exact inverse of its setup ([`Batch::inverse`]), so
//! removing a guest deletes precisely the rules that adding it created.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use patchpanel_names::IfName;
use serde::{Deserialize, Serialize};

use crate::fwmark::{self, TrafficSource};
use crate::layout::{
    named, root_chain, APPLY_VPN_MARK, DROP_FORWARD_TO_BRUSCHETTA, DROP_OUTPUT_TO_BRUSCHETTA,
    GUEST_FORWARD, RESTORE_ROUTING_MARK, RESTORE_SOURCE_MARK, SKIP_APPLY_VPN_MARK,
};
use crate::model::{
    Batch, BuiltinChain, Change, Cidr, CtStateMatch, CtStates, Family, InterfaceChainPrefix,
    InverseError, Match, OwnedChain, Rule, Table, Target,
};

/// How a downstream interface's traffic finds its uplink (§4.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mode {
    /// Pinned to one uplink: routing table `table` (uplink ifindex + 1000),
    /// routing tag `table << 16`.
    Pinned { table: u32 },
    /// Follows the default physical network (no tag; the ip-rule catch-all
    /// decides), established connections keep their uplink.
    System,
    /// Follows the default logical network, VPN included.
    User,
}

/// Which forwarded traffic towards the guest is accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Inbound {
    /// Everything (upstream `-o <if> -j ACCEPT`): guests that serve inbound
    /// connections (ARC with its automatic DNAT).
    Open,
    /// Only replies and related traffic.
    ReturnOnly,
    /// Only replies; new connections dropped even from the host (Bruschetta).
    Isolated,
}

/// A namespace's point-to-point addresses: in [`Mode::User`], traffic from
/// the peer to the host side is accepted before VPN tagging.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerAddrs {
    pub host_ipv4: Ipv4Addr,
    pub peer_ipv4: Ipv4Addr,
    /// Static IPv6 (host, peer), if the namespace has them.
    pub ipv6: Option<(Ipv6Addr, Ipv6Addr)>,
}

/// A downstream interface and what its traffic is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Downstream {
    pub ifname: IfName,
    pub source: TrafficSource,
    pub mode: Mode,
    pub inbound: Inbound,
    /// Masquerade IPv6 too (namespaces with static IPv6; everything else
    /// gets global IPv6 from the uplink by ND proxy or RA).
    pub snat_ipv6: bool,
    /// `Some` for a namespace (User mode accepts peer → host), `None` for a
    /// VM or container (User mode jumps to `skip_apply_vpn_mark`).
    pub peer: Option<PeerAddrs>,
}

/// `PREROUTING_<if>`.
pub fn prerouting_chain(ifname: &IfName) -> OwnedChain {
    OwnedChain::interface_chain(InterfaceChainPrefix::Prerouting, ifname)
}

/// `POSTROUTING_<if>`.
pub fn postrouting_chain(ifname: &IfName) -> OwnedChain {
    OwnedChain::interface_chain(InterfaceChainPrefix::Postrouting, ifname)
}

/// A jump to a named chain: `restore_*_mark` carry the CONNMARK restores
/// (see [`RESTORE_ROUTING_MARK`] for why they are not in `PREROUTING_<if>`).
fn jump(name: &'static str) -> Rule {
    Rule::new(Target::Jump(named(name)))
}

fn set_mark(value: u32, mask: u32) -> Rule {
    Rule::new(Target::SetMark { value, mask })
}

/// The rules of `PREROUTING_<if>` for `family`.
fn prerouting_rules(d: &Downstream, family: Family) -> Vec<Rule> {
    let source = d.source.fwmark();
    let mut rules = Vec::new();
    if family == Family::V4 || d.snat_ipv6 {
        rules.push(set_mark(fwmark::SNAT_MARK, fwmark::SNAT_MARK));
    }
    rules.push(set_mark(source, fwmark::SOURCE_MASK));
    match d.mode {
        Mode::Pinned { table } => {
            rules.push(set_mark(fwmark::routing_tag(table), fwmark::ROUTING_MASK));
            // A source saved in the connection (replies to a connection
            // another source opened) overrides this interface's source.
            rules.push(jump(RESTORE_SOURCE_MARK));
            rules.push(Rule::new(Target::Return).with(Match::not_mark(0, fwmark::SOURCE_MASK)));
            rules.push(set_mark(source, fwmark::SOURCE_MASK));
        }
        Mode::System => rules.push(jump(RESTORE_ROUTING_MARK)),
        Mode::User => {
            rules.push(jump(RESTORE_ROUTING_MARK));
            match (&d.peer, family) {
                (Some(p), Family::V4) => rules.push(
                    Rule::new(Target::Accept)
                        .with(Match::src(Cidr::host(IpAddr::V4(p.peer_ipv4))))
                        .with(Match::dst(Cidr::host(IpAddr::V4(p.host_ipv4)))),
                ),
                (Some(p), Family::V6) => {
                    if let Some((host, peer)) = p.ipv6 {
                        rules.push(
                            Rule::new(Target::Accept)
                                .with(Match::src(Cidr::host(IpAddr::V6(peer))))
                                .with(Match::dst(Cidr::host(IpAddr::V6(host)))),
                        );
                    }
                }
                (None, _) => {
                    rules.push(Rule::new(Target::Jump(named(SKIP_APPLY_VPN_MARK))));
                }
            }
            rules.push(set_mark(fwmark::ROUTE_ON_VPN, fwmark::VPN_MASK));
            rules.push(Rule::new(Target::Jump(named(APPLY_VPN_MARK))));
        }
    }
    rules
}

fn append(table: Table, chain: OwnedChain, rule: Rule) -> Change {
    Change::Append { table, chain, rule }
}

fn return_traffic(ifname: &IfName) -> Rule {
    Rule::new(Target::Accept)
        .with(Match::oif(ifname))
        .with(Match::ctstate(
            CtStates::RELATED.union(CtStates::ESTABLISHED),
        ))
}

/// The changes that add downstream interface `d`, both families.
pub fn downstream(d: &Downstream) -> Batch {
    let chain = prerouting_chain(&d.ifname);
    let forward = named(GUEST_FORWARD);
    let mut batch = Batch::new();
    for family in Family::ALL {
        let changes = batch.changes_mut(family);
        changes.push(append(
            Table::Filter,
            forward.clone(),
            match d.inbound {
                Inbound::Open => Rule::new(Target::Accept).with(Match::oif(&d.ifname)),
                Inbound::ReturnOnly | Inbound::Isolated => return_traffic(&d.ifname),
            },
        ));
        changes.push(append(
            Table::Filter,
            forward.clone(),
            Rule::new(Target::Accept).with(Match::iif(&d.ifname)),
        ));
        if d.inbound == Inbound::Isolated {
            // Anything but replies and related traffic, from the host or
            // forwarded from anywhere (the LAN, other guests: the chain
            // runs before `guest_forward`, whose `-i <other guest>`
            // accepts would let them through), in both families.
            for chain in [DROP_FORWARD_TO_BRUSCHETTA, DROP_OUTPUT_TO_BRUSCHETTA] {
                changes.push(append(
                    Table::Filter,
                    named(chain),
                    Rule::new(Target::Drop)
                        .with(Match::oif(&d.ifname))
                        .with(Match::ConnState(CtStateMatch {
                            states: CtStates::RELATED.union(CtStates::ESTABLISHED),
                            negate: true,
                        })),
                ));
            }
        }
        changes.push(Change::NewChain {
            table: Table::Mangle,
            chain: chain.clone(),
        });
        for rule in prerouting_rules(d, family) {
            changes.push(append(Table::Mangle, chain.clone(), rule));
        }
        // Hooked last: traffic enters the chain only once it is complete.
        changes.push(append(
            Table::Mangle,
            root_chain(BuiltinChain::Prerouting),
            Rule::new(Target::Jump(chain.clone())).with(Match::iif(&d.ifname)),
        ));
    }
    batch
}

/// The changes that remove downstream interface `d`: the inverse of
/// [`downstream`].
pub fn downstream_teardown(d: &Downstream) -> Result<Batch, InverseError> {
    downstream(d).inverse()
}

/// A ConnectNamespace client's namespace (§4.9), as the manager knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Namespace {
    /// The host side of the veth pair (`arc_ns<N>`).
    pub host_ifname: IfName,
    pub host_ipv4: Ipv4Addr,
    pub peer_ipv4: Ipv4Addr,
    /// Static IPv6 (host, peer), if the client asked for it.
    pub ipv6: Option<(Ipv6Addr, Ipv6Addr)>,
    pub source: TrafficSource,
    pub mode: Mode,
}

impl Namespace {
    /// The namespace as a downstream interface: replies only inbound.
    pub fn downstream(&self) -> Downstream {
        Downstream {
            ifname: self.host_ifname.clone(),
            source: self.source,
            mode: self.mode,
            inbound: Inbound::ReturnOnly,
            snat_ipv6: self.ipv6.is_some(),
            peer: Some(PeerAddrs {
                host_ipv4: self.host_ipv4,
                peer_ipv4: self.peer_ipv4,
                ipv6: self.ipv6,
            }),
        }
    }
}

/// The changes that connect namespace `ns`: `skip_apply_vpn_mark -o <if>
/// -j ACCEPT` (replies from the host to the namespace are not VPN-tagged),
/// then the downstream rules.
pub fn connected_namespace(ns: &Namespace) -> Batch {
    let mut batch = Batch::new();
    batch.push_dual(append(
        Table::Mangle,
        named(SKIP_APPLY_VPN_MARK),
        Rule::new(Target::Accept).with(Match::oif(&ns.host_ifname)),
    ));
    batch.extend(downstream(&ns.downstream()));
    batch
}

/// The inverse of [`connected_namespace`].
pub fn connected_namespace_teardown(ns: &Namespace) -> Result<Batch, InverseError> {
    connected_namespace(ns).inverse()
}

/// Connection pinning for uplink `uplink` with routing table `table`
/// (§4.6): connections leaving through it remember its routing tag and
/// their source (`POSTROUTING_<uplink>`), and replies coming in get the
/// source back (for rx accounting). Both families.
pub fn uplink_pinning(uplink: &IfName, table: u32) -> Batch {
    let chain = postrouting_chain(uplink);
    let mut batch = Batch::new();
    batch.push_dual(Change::NewChain {
        table: Table::Mangle,
        chain: chain.clone(),
    });
    batch.push_dual(append(
        Table::Mangle,
        chain.clone(),
        Rule::new(Target::ConnmarkSet {
            value: fwmark::routing_tag(table),
            mask: fwmark::ROUTING_MASK,
        }),
    ));
    batch.push_dual(append(
        Table::Mangle,
        chain.clone(),
        Rule::new(Target::ConnmarkSave {
            mask: fwmark::SOURCE_MASK,
        }),
    ));
    batch.push_dual(append(
        Table::Mangle,
        root_chain(BuiltinChain::Postrouting),
        Rule::new(Target::Jump(chain)).with(Match::oif(uplink)),
    ));
    batch.push_dual(append(
        Table::Mangle,
        root_chain(BuiltinChain::Prerouting),
        Rule::new(Target::ConnmarkRestore {
            mask: fwmark::SOURCE_MASK,
        })
        .with(Match::iif(uplink)),
    ));
    batch
}

/// The inverse of [`uplink_pinning`].
pub fn uplink_pinning_teardown(uplink: &IfName, table: u32) -> Result<Batch, InverseError> {
    uplink_pinning(uplink, table).inverse()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::render;

    fn ifname(name: &str) -> IfName {
        IfName::new(name).unwrap()
    }

    fn namespace(mode: Mode, ipv6: bool) -> Namespace {
        Namespace {
            host_ifname: ifname("arc_ns0"),
            host_ipv4: Ipv4Addr::new(100, 115, 92, 129),
            peer_ipv4: Ipv4Addr::new(100, 115, 92, 130),
            ipv6: ipv6.then(|| {
                (
                    "fd00:1:2:3::1".parse().unwrap(),
                    "fd00:1:2:3::2".parse().unwrap(),
                )
            }),
            source: TrafficSource::System,
            mode,
        }
    }

    const FILTER_NS: &str = "\
*filter
-A guest_forward -o arc_ns0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A guest_forward -i arc_ns0 -j ACCEPT
COMMIT
";

    #[test]
    fn connect_namespace_as_system_renders_exactly() {
        let batch = connected_namespace(&namespace(Mode::System, false));
        batch.validate().unwrap();
        assert_eq!(
            render(&batch, Family::V4),
            format!(
                "{FILTER_NS}\
*mangle
-A skip_apply_vpn_mark -o arc_ns0 -j ACCEPT
-N PREROUTING_arc_ns0
-A PREROUTING_arc_ns0 -j MARK --set-mark 0x1/0x1
-A PREROUTING_arc_ns0 -j MARK --set-mark 0x400/0x3f00
-A PREROUTING_arc_ns0 -j restore_routing_mark
-A patchpanel_PREROUTING -i arc_ns0 -j PREROUTING_arc_ns0
COMMIT
"
            )
        );
        // Without static IPv6 the namespace's IPv6 is not masqueraded.
        assert_eq!(
            render(&batch, Family::V6),
            format!(
                "{FILTER_NS}\
*mangle
-A skip_apply_vpn_mark -o arc_ns0 -j ACCEPT
-N PREROUTING_arc_ns0
-A PREROUTING_arc_ns0 -j MARK --set-mark 0x400/0x3f00
-A PREROUTING_arc_ns0 -j restore_routing_mark
-A patchpanel_PREROUTING -i arc_ns0 -j PREROUTING_arc_ns0
COMMIT
"
            )
        );
    }

    #[test]
    fn connect_namespace_pinned_to_an_uplink_renders_exactly() {
        // eth0 with ifindex 2: table 1002, tag 0x3ea0000.
        let batch = connected_namespace(&namespace(Mode::Pinned { table: 1002 }, false));
        batch.validate().unwrap();
        assert_eq!(
            render(&batch, Family::V4),
            format!(
                "{FILTER_NS}\
*mangle
-A skip_apply_vpn_mark -o arc_ns0 -j ACCEPT
-N PREROUTING_arc_ns0
-A PREROUTING_arc_ns0 -j MARK --set-mark 0x1/0x1
-A PREROUTING_arc_ns0 -j MARK --set-mark 0x400/0x3f00
-A PREROUTING_arc_ns0 -j MARK --set-mark 0x3ea0000/0xffff0000
-A PREROUTING_arc_ns0 -j restore_source_mark
-A PREROUTING_arc_ns0 -m mark ! --mark 0x0/0x3f00 -j RETURN
-A PREROUTING_arc_ns0 -j MARK --set-mark 0x400/0x3f00
-A patchpanel_PREROUTING -i arc_ns0 -j PREROUTING_arc_ns0
COMMIT
"
            )
        );
    }

    #[test]
    fn connect_namespace_as_user_with_static_ipv6_renders_exactly() {
        let batch = connected_namespace(&namespace(Mode::User, true));
        batch.validate().unwrap();
        assert_eq!(
            render(&batch, Family::V4),
            format!(
                "{FILTER_NS}\
*mangle
-A skip_apply_vpn_mark -o arc_ns0 -j ACCEPT
-N PREROUTING_arc_ns0
-A PREROUTING_arc_ns0 -j MARK --set-mark 0x1/0x1
-A PREROUTING_arc_ns0 -j MARK --set-mark 0x400/0x3f00
-A PREROUTING_arc_ns0 -j restore_routing_mark
-A PREROUTING_arc_ns0 -s 100.115.92.130/32 -d 100.115.92.129/32 -j ACCEPT
-A PREROUTING_arc_ns0 -j MARK --set-mark 0x8000/0xc000
-A PREROUTING_arc_ns0 -j apply_vpn_mark
-A patchpanel_PREROUTING -i arc_ns0 -j PREROUTING_arc_ns0
COMMIT
"
            )
        );
        assert_eq!(
            render(&batch, Family::V6),
            format!(
                "{FILTER_NS}\
*mangle
-A skip_apply_vpn_mark -o arc_ns0 -j ACCEPT
-N PREROUTING_arc_ns0
-A PREROUTING_arc_ns0 -j MARK --set-mark 0x1/0x1
-A PREROUTING_arc_ns0 -j MARK --set-mark 0x400/0x3f00
-A PREROUTING_arc_ns0 -j restore_routing_mark
-A PREROUTING_arc_ns0 -s fd00:1:2:3::2/128 -d fd00:1:2:3::1/128 -j ACCEPT
-A PREROUTING_arc_ns0 -j MARK --set-mark 0x8000/0xc000
-A PREROUTING_arc_ns0 -j apply_vpn_mark
-A patchpanel_PREROUTING -i arc_ns0 -j PREROUTING_arc_ns0
COMMIT
"
            )
        );
    }

    #[test]
    fn connect_namespace_as_user_without_static_ipv6_has_no_ipv6_exemption() {
        let batch = connected_namespace(&namespace(Mode::User, false));
        let v6 = render(&batch, Family::V6);
        assert!(!v6.contains("-s "), "{v6}");
        assert!(!v6.contains("0x1/0x1"), "{v6}");
        assert!(
            v6.contains("-A PREROUTING_arc_ns0 -j apply_vpn_mark\n"),
            "{v6}"
        );
    }

    #[test]
    fn a_vm_as_user_jumps_to_skip_apply_vpn_mark_and_is_open_inbound() {
        let vm = Downstream {
            ifname: ifname("vmtap0"),
            source: TrafficSource::CrostiniVm,
            mode: Mode::User,
            inbound: Inbound::Open,
            snat_ipv6: false,
            peer: None,
        };
        let batch = downstream(&vm);
        batch.validate().unwrap();
        assert_eq!(
            render(&batch, Family::V4),
            "\
*filter
-A guest_forward -o vmtap0 -j ACCEPT
-A guest_forward -i vmtap0 -j ACCEPT
COMMIT
*mangle
-N PREROUTING_vmtap0
-A PREROUTING_vmtap0 -j MARK --set-mark 0x1/0x1
-A PREROUTING_vmtap0 -j MARK --set-mark 0x2100/0x3f00
-A PREROUTING_vmtap0 -j restore_routing_mark
-A PREROUTING_vmtap0 -j skip_apply_vpn_mark
-A PREROUTING_vmtap0 -j MARK --set-mark 0x8000/0xc000
-A PREROUTING_vmtap0 -j apply_vpn_mark
-A patchpanel_PREROUTING -i vmtap0 -j PREROUTING_vmtap0
COMMIT
"
        );
    }

    #[test]
    fn an_isolated_guest_gets_drops_for_new_inbound_connections() {
        let vm = Downstream {
            ifname: ifname("vmtap3"),
            source: TrafficSource::BruschettaVm,
            mode: Mode::User,
            inbound: Inbound::Isolated,
            snat_ipv6: false,
            peer: None,
        };
        let text = render(&downstream(&vm), Family::V4);
        assert!(text.starts_with(
            "\
*filter
-A guest_forward -o vmtap3 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A guest_forward -i vmtap3 -j ACCEPT
-A drop_forward_to_bruschetta -o vmtap3 -m conntrack ! --ctstate RELATED,ESTABLISHED -j DROP
-A drop_output_to_bruschetta -o vmtap3 -m conntrack ! --ctstate RELATED,ESTABLISHED -j DROP
COMMIT
"
        ));
    }

    #[test]
    fn teardown_deletes_exactly_what_setup_added_in_reverse() {
        let ns = namespace(Mode::User, true);
        let teardown = connected_namespace_teardown(&ns).expect("invertible");
        teardown.validate().unwrap();
        assert_eq!(
            render(&teardown, Family::V4),
            "\
*filter
-D guest_forward -i arc_ns0 -j ACCEPT
-D guest_forward -o arc_ns0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
COMMIT
*mangle
-D patchpanel_PREROUTING -i arc_ns0 -j PREROUTING_arc_ns0
-D PREROUTING_arc_ns0 -j apply_vpn_mark
-D PREROUTING_arc_ns0 -j MARK --set-mark 0x8000/0xc000
-D PREROUTING_arc_ns0 -s 100.115.92.130/32 -d 100.115.92.129/32 -j ACCEPT
-D PREROUTING_arc_ns0 -j restore_routing_mark
-D PREROUTING_arc_ns0 -j MARK --set-mark 0x400/0x3f00
-D PREROUTING_arc_ns0 -j MARK --set-mark 0x1/0x1
-F PREROUTING_arc_ns0
-X PREROUTING_arc_ns0
-D skip_apply_vpn_mark -o arc_ns0 -j ACCEPT
COMMIT
"
        );
    }

    #[test]
    fn setup_and_teardown_invert_each_other_in_every_mode() {
        for mode in [Mode::Pinned { table: 1003 }, Mode::System, Mode::User] {
            for ipv6 in [false, true] {
                let ns = namespace(mode, ipv6);
                let setup = connected_namespace(&ns);
                let teardown = connected_namespace_teardown(&ns).expect("invertible");
                assert_eq!(teardown.inverse().unwrap(), setup, "{mode:?} {ipv6}");
                assert_eq!(setup.inverse().unwrap(), teardown, "{mode:?} {ipv6}");
            }
        }
    }

    #[test]
    fn uplink_pinning_renders_exactly_and_inverts() {
        let eth0 = ifname("eth0");
        let batch = uplink_pinning(&eth0, 1002);
        batch.validate().unwrap();
        let expected = "\
*mangle
-N POSTROUTING_eth0
-A POSTROUTING_eth0 -j CONNMARK --set-mark 0x3ea0000/0xffff0000
-A POSTROUTING_eth0 -j CONNMARK --save-mark --mask 0x3f00
-A patchpanel_POSTROUTING -o eth0 -j POSTROUTING_eth0
-A patchpanel_PREROUTING -i eth0 -j CONNMARK --restore-mark --mask 0x3f00
COMMIT
";
        assert_eq!(render(&batch, Family::V4), expected);
        assert_eq!(render(&batch, Family::V6), expected);
        let teardown = uplink_pinning_teardown(&eth0, 1002).expect("invertible");
        assert_eq!(teardown.inverse().unwrap(), batch);
    }
}
