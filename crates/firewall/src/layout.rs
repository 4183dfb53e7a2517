//! The chains patchpanel owns and how they hang off the built-in chains.
//!
//! Patchpanel touches a built-in chain in exactly one way: one rule at
//! position 1, `-m comment --comment patchpanel -j patchpanel_<BUILTIN>`
//! (a "hook"). Everything else lives in chains it owns:
//!
//! * **root chains** `patchpanel_<BUILTIN>`, one per hooked built-in chain
//!   and table;
//! * **named chains** whose names are a contract with upstream tools
//!   (`ingress_port_firewall`, `apply_auto_dnat_to_arc`, `skip_apply_vpn_mark`…);
//! * **per-interface chains** `PREROUTING_<if>`, `POSTROUTING_<if>`,
//!   `rx_<if>`, `tx_<if>`, `egress_<if>`, created by per-operation batches.
//!
//! A chain in the layout is either *static* — its whole content is fixed by
//! the layout and rewritten by every setup (an atomic flush-and-refill) — or
//! *dynamic* — created by setup when missing, never flushed by it, filled by
//! per-operation batches. Where static rules must come before dynamic ones
//! (a root chain), the static chain ends in a jump to a dynamic one.
//!
//! Left out on purpose (ChromeOS-only; wrong on a generic host): default
//! DROP policies, the ssh/ICMP/loopback INPUT accepts, the blanket
//! `ESTABLISHED,RELATED` FORWARD accept (return traffic is accepted per
//! guest interface instead), `drop_guest_ipv4_prefix` and
//! `drop_guest_invalid_ipv4` (they name ChromeOS interface prefixes), QoS
//! and tethering chains. Marking the host's own traffic (mangle OUTPUT) is
//! optional: see [`LayoutConfig::local_traffic`].

use serde::{Deserialize, Serialize};

use crate::fwmark::{self, TrafficSource};
use crate::model::{
    BuiltinChain, Change, Comment, Family, IfMatch, Match, OwnedChain, Protocol, Rule, Table,
    Target, ValidationError,
};
use patchpanel_names::IfName;

/// The comment on patchpanel's jumps from built-in chains.
pub const HOOK_COMMENT: &str = "patchpanel";

use crate::catalog::ROOT_CHAINS;
pub use crate::catalog::{
    is_catalog_chain, ACCEPT_EGRESS_TO_DNS_PROXY, APPLY_AUTO_DNAT_TO_ARC,
    APPLY_AUTO_DNAT_TO_CROSTINI, APPLY_AUTO_DNAT_TO_PARALLELS, APPLY_LOCAL_SOURCE_MARK,
    APPLY_VPN_MARK, CATALOG, DROP_FORWARD_TO_BRUSCHETTA, DROP_OUTPUT_TO_BRUSCHETTA,
    EGRESS_PORT_FIREWALL, GUEST_FORWARD, INGRESS_PORT_FIREWALL, INGRESS_PORT_FORWARDING, MADE_HOOK,
    MADE_TABLE, REDIRECT_DEFAULT_DNS, REDIRECT_USER_DNS, RESTORE_ROUTING_MARK, RESTORE_SOURCE_MARK,
    ROOT_CHAIN_PREFIX, SKIP_APPLY_VPN_MARK, TABLE_MARKER, VPN_ACCEPT, VPN_EGRESS_FILTERS,
    VPN_LOCKDOWN,
};

/// The root chain for built-in chain `builtin` (same name in every table).
pub fn root_chain(builtin: BuiltinChain) -> OwnedChain {
    let name = match builtin {
        BuiltinChain::Prerouting => ROOT_CHAINS[0],
        BuiltinChain::Input => ROOT_CHAINS[1],
        BuiltinChain::Forward => ROOT_CHAINS[2],
        BuiltinChain::Output => ROOT_CHAINS[3],
        BuiltinChain::Postrouting => ROOT_CHAINS[4],
    };
    OwnedChain::from_catalog(name)
}

/// A named chain from the catalog.
pub fn named(name: &'static str) -> OwnedChain {
    OwnedChain::from_catalog(name)
}

/// The hook rule: `-m comment --comment patchpanel -j <root>`.
pub fn hook_rule(root: &OwnedChain) -> Rule {
    Rule::new(Target::Jump(root.clone())).commented(hook_comment())
}

pub(crate) fn hook_comment() -> Comment {
    // The constant satisfies Comment's rules; the catalog tests check it.
    Comment::new(HOOK_COMMENT).unwrap_or_else(|_| unreachable!("HOOK_COMMENT is a valid comment"))
}

/// What a chain holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChainContent {
    /// Exactly these rules; setup rewrites the chain every time.
    Static(Vec<Rule>),
    /// Created if missing, otherwise left alone; filled by operations.
    Dynamic,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainSpec {
    pub chain: OwnedChain,
    pub content: ChainContent,
}

/// A jump from a built-in chain to a root chain, at position 1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hook {
    pub builtin: BuiltinChain,
    pub root: OwnedChain,
}

/// One table of one family.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableLayout {
    pub family: Family,
    pub table: Table,
    /// Created in this order (dynamic chains before the static rules that
    /// jump to them: setup creates every chain before adding any rule).
    pub chains: Vec<ChainSpec>,
    pub hooks: Vec<Hook>,
}

impl TableLayout {
    fn new(family: Family, table: Table) -> TableLayout {
        TableLayout {
            family,
            table,
            chains: Vec::new(),
            hooks: Vec::new(),
        }
    }

    fn dynamic(&mut self, name: &'static str) {
        self.chains.push(ChainSpec {
            chain: named(name),
            content: ChainContent::Dynamic,
        });
    }

    fn fixed(&mut self, chain: OwnedChain, rules: Vec<Rule>) {
        self.chains.push(ChainSpec {
            chain,
            content: ChainContent::Static(rules),
        });
    }

    /// Hooks `builtin` to its root chain, which holds `content`.
    fn hook(&mut self, builtin: BuiltinChain, content: ChainContent) {
        let root = root_chain(builtin);
        self.chains.push(ChainSpec {
            chain: root.clone(),
            content,
        });
        self.hooks.push(Hook { builtin, root });
    }

    /// Checks hooks against the table's built-in chains, every static rule,
    /// and that every jump lands on a chain of this table layout.
    pub fn validate(&self) -> Result<(), ValidationError> {
        for hook in &self.hooks {
            if !self.table.has_builtin(hook.builtin) {
                return Err(ValidationError::ChainName {
                    name: hook.builtin.name().to_string(),
                    reason: "not a built-in chain of this table",
                });
            }
        }
        let known = |c: &OwnedChain| self.chains.iter().any(|s| &s.chain == c);
        for spec in &self.chains {
            if let ChainContent::Static(rules) = &spec.content {
                for rule in rules {
                    let change = Change::Append {
                        table: self.table,
                        chain: spec.chain.clone(),
                        rule: rule.clone(),
                    };
                    change.validate(self.family)?;
                    if let Target::Jump(to) = &rule.target {
                        if !known(to) {
                            return Err(ValidationError::ChainName {
                                name: to.to_string(),
                                reason: "jump target missing from the layout",
                            });
                        }
                    }
                }
            }
        }
        for hook in &self.hooks {
            if !known(&hook.root) {
                return Err(ValidationError::ChainName {
                    name: hook.root.to_string(),
                    reason: "hooked root chain missing from the layout",
                });
            }
        }
        Ok(())
    }
}

/// Marking of the host's own traffic (upstream `apply_local_source_mark`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalTraffic {
    /// uid → source, in rule order (e.g. chronos → Chrome). Each also gets
    /// the route-on-VPN intent, as upstream does for all of them.
    pub uid_sources: Vec<(u32, TrafficSource)>,
    /// cgroup class id of update_engine (upstream 0x10001), if any.
    pub update_engine_cgroup: Option<u32>,
}

/// What the layout depends on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayoutConfig {
    /// Hook mangle OUTPUT to tag the host's own traffic with its source,
    /// restore the pinned uplink of established host connections and apply
    /// VPN marks (upstream §4.3). Off by default on a generic host: it
    /// rewrites fwmark bits of every local packet, which other software
    /// (WireGuard, kube-proxy, Tailscale) may use.
    pub local_traffic: Option<LocalTraffic>,
    /// Prefixes of the guest links whose DHCPv4 requests to the host are
    /// accepted at INPUT (`-i <prefix>+ -p udp --sport 68 --dport 67`):
    /// patchpanel's DHCP server serves them (`guest_dhcp`), and a host
    /// firewall that drops INPUT (ufw) would drop the requests. Empty: none.
    #[serde(default)]
    pub guest_dhcp: Vec<IfName>,
}

/// Every chain and hook patchpanel owns, per family and table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layout {
    pub tables: Vec<TableLayout>,
}

impl Default for Layout {
    fn default() -> Layout {
        Layout::new(&LayoutConfig::default())
    }
}

impl Layout {
    pub fn new(config: &LayoutConfig) -> Layout {
        let mut tables = Vec::new();
        for family in Family::ALL {
            for table in Table::ALL {
                tables.push(match table {
                    Table::Mangle => mangle(family, config),
                    Table::Nat => nat(family),
                    Table::Filter => filter(family, config),
                });
            }
        }
        Layout { tables }
    }

    /// The table layouts of `family`, in [`Table::ALL`] order.
    pub fn tables(&self, family: Family) -> impl Iterator<Item = &TableLayout> {
        self.tables.iter().filter(move |t| t.family == family)
    }

    pub fn validate(&self) -> Result<(), ValidationError> {
        self.tables.iter().try_for_each(TableLayout::validate)
    }
}

fn jump(name: &'static str) -> Rule {
    Rule::new(Target::Jump(named(name)))
}

fn mangle(family: Family, config: &LayoutConfig) -> TableLayout {
    let mut t = TableLayout::new(family, Table::Mangle);
    t.dynamic(SKIP_APPLY_VPN_MARK);
    t.dynamic(APPLY_VPN_MARK);
    for (name, mask) in [
        (RESTORE_ROUTING_MARK, fwmark::ROUTING_MASK),
        (RESTORE_SOURCE_MARK, fwmark::SOURCE_MASK),
    ] {
        t.fixed(
            named(name),
            vec![Rule::new(Target::ConnmarkRestore { mask })],
        );
    }
    // Per-interface jumps: PREROUTING_<if>, connmark restore per uplink,
    // rx_<if> and tx_<if> accounting, POSTROUTING_<if>.
    t.hook(BuiltinChain::Prerouting, ChainContent::Dynamic);
    t.hook(BuiltinChain::Input, ChainContent::Dynamic);
    t.hook(BuiltinChain::Forward, ChainContent::Dynamic);
    t.hook(BuiltinChain::Postrouting, ChainContent::Dynamic);
    if let Some(local) = &config.local_traffic {
        t.fixed(
            named(APPLY_LOCAL_SOURCE_MARK),
            local_source_mark_rules(local),
        );
        let output = vec![
            jump(APPLY_LOCAL_SOURCE_MARK),
            // Established host connections stay on the uplink they started on.
            Rule::new(Target::ConnmarkRestoreMasks {
                nfmask: fwmark::ROUTING_MASK,
                ctmask: fwmark::ROUTING_MASK,
            })
            .with(Match::mark(0, fwmark::ROUTING_MASK)),
            jump(SKIP_APPLY_VPN_MARK),
            jump(APPLY_VPN_MARK).with(Match::mark(fwmark::ROUTE_ON_VPN, fwmark::VPN_MASK)),
        ];
        t.hook(BuiltinChain::Output, ChainContent::Static(output));
    }
    t
}

/// `apply_local_source_mark` (upstream §4.3): keep an existing source tag;
/// tag by uid (and give those uids the route-on-VPN intent); tag
/// update_engine by cgroup; everything else is SYSTEM.
fn local_source_mark_rules(local: &LocalTraffic) -> Vec<Rule> {
    let mut rules = vec![Rule::new(Target::Return).with(Match::not_mark(0, fwmark::SOURCE_MASK))];
    for (uid, source) in &local.uid_sources {
        rules.push(
            Rule::new(Target::SetXmark {
                value: source.fwmark(),
                mask: fwmark::SOURCE_MASK,
            })
            .with(Match::UidOwner {
                uid: *uid,
                negate: false,
            }),
        );
    }
    for (uid, _) in &local.uid_sources {
        rules.push(
            Rule::new(Target::SetMark {
                value: fwmark::ROUTE_ON_VPN,
                mask: fwmark::VPN_MASK,
            })
            .with(Match::mark(0, fwmark::VPN_MASK))
            .with(Match::UidOwner {
                uid: *uid,
                negate: false,
            }),
        );
    }
    if let Some(classid) = local.update_engine_cgroup {
        rules.push(
            Rule::new(Target::SetXmark {
                value: TrafficSource::UpdateEngine.fwmark(),
                mask: fwmark::SOURCE_MASK,
            })
            .with(Match::Cgroup { classid }),
        );
    }
    rules.push(
        Rule::new(Target::SetXmark {
            value: TrafficSource::System.fwmark(),
            mask: fwmark::SOURCE_MASK,
        })
        .with(Match::mark(0, fwmark::SOURCE_MASK)),
    );
    rules
}

fn nat(family: Family) -> TableLayout {
    let mut t = TableLayout::new(family, Table::Nat);
    t.dynamic(REDIRECT_DEFAULT_DNS);
    t.dynamic(REDIRECT_USER_DNS);
    let mut prerouting = vec![jump(REDIRECT_DEFAULT_DNS)];
    if family == Family::V4 {
        // Explicit port forwards win over the automatic DNAT to guests.
        for name in [
            INGRESS_PORT_FORWARDING,
            APPLY_AUTO_DNAT_TO_ARC,
            APPLY_AUTO_DNAT_TO_CROSTINI,
            APPLY_AUTO_DNAT_TO_PARALLELS,
        ] {
            t.dynamic(name);
            prerouting.push(jump(name));
        }
    }
    t.hook(BuiltinChain::Prerouting, ChainContent::Static(prerouting));
    // The user's own DNS queries (they carry the route-on-VPN bit) meet
    // dns-proxy's USER and EXCLUDE_DESTINATION rules.
    t.hook(
        BuiltinChain::Output,
        ChainContent::Static(vec![
            jump(REDIRECT_USER_DNS).with(Match::mark(fwmark::ROUTE_ON_VPN, fwmark::VPN_MASK))
        ]),
    );
    // The legacy SNAT bit set in PREROUTING_<if> (IPv6 only ever gets it
    // for namespaces with static addresses). Then host traffic that asked
    // for the VPN: its source address was chosen before `apply_vpn_mark`
    // re-routed it into the VPN (upstream masquerades `-o <vpn>`; without
    // a VPN this rewrites the source to the one it already has).
    t.hook(
        BuiltinChain::Postrouting,
        ChainContent::Static(vec![
            Rule::new(Target::Masquerade).with(Match::mark(fwmark::SNAT_MARK, fwmark::SNAT_MARK)),
            Rule::new(Target::Masquerade).with(Match::mark(fwmark::ROUTE_ON_VPN, fwmark::VPN_MASK)),
        ]),
    );
    t
}

/// DHCPv4 requests from guests on links named `prefix`*.
fn dhcp_accept(prefix: &IfName) -> Rule {
    Rule::new(Target::Accept)
        .with(Match::InInterface(IfMatch {
            name: prefix.clone(),
            wildcard: true,
            negate: false,
        }))
        .with(Match::Protocol(Protocol::Udp))
        .with(Match::SourcePort(68))
        .with(Match::DestinationPort(67))
}

fn filter(family: Family, config: &LayoutConfig) -> TableLayout {
    let mut t = TableLayout::new(family, Table::Filter);
    for name in [
        INGRESS_PORT_FIREWALL,
        EGRESS_PORT_FIREWALL,
        VPN_ACCEPT,
        VPN_LOCKDOWN,
        GUEST_FORWARD,
        DROP_FORWARD_TO_BRUSCHETTA,
        DROP_OUTPUT_TO_BRUSCHETTA,
        ACCEPT_EGRESS_TO_DNS_PROXY,
    ] {
        t.dynamic(name);
    }
    t.fixed(
        named(VPN_EGRESS_FILTERS),
        vec![jump(VPN_ACCEPT), jump(VPN_LOCKDOWN)],
    );
    let mut input = vec![jump(INGRESS_PORT_FIREWALL)];
    if family == Family::V4 {
        input.extend(config.guest_dhcp.iter().map(dhcp_accept));
    }
    t.hook(BuiltinChain::Input, ChainContent::Static(input));
    t.hook(
        BuiltinChain::Forward,
        ChainContent::Static(vec![
            // Queries to a DNS proxy pass whatever lockdown says.
            jump(ACCEPT_EGRESS_TO_DNS_PROXY),
            jump(VPN_EGRESS_FILTERS),
            // Before the guests' accepts: another guest's `-i` accept
            // must not open an isolated guest.
            jump(DROP_FORWARD_TO_BRUSCHETTA),
            jump(GUEST_FORWARD),
        ]),
    );
    t.hook(
        BuiltinChain::Output,
        ChainContent::Static(vec![
            jump(ACCEPT_EGRESS_TO_DNS_PROXY),
            jump(VPN_EGRESS_FILTERS),
            jump(DROP_OUTPUT_TO_BRUSCHETTA),
            jump(EGRESS_PORT_FIREWALL),
        ]),
    );
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::is_owned_chain_name;
    use crate::render::command_line;

    #[test]
    fn every_catalog_name_is_a_valid_owned_chain() {
        for name in CATALOG {
            assert!(is_owned_chain_name(name), "{name}");
        }
        assert!(Comment::new(HOOK_COMMENT).is_ok());
    }

    #[test]
    fn default_and_local_traffic_layouts_validate() {
        Layout::default().validate().unwrap();
        let config = LayoutConfig {
            local_traffic: Some(LocalTraffic {
                uid_sources: vec![(1000, TrafficSource::Chrome), (216, TrafficSource::User)],
                update_engine_cgroup: Some(0x10001),
            }),
            guest_dhcp: vec![],
        };
        Layout::new(&config).validate().unwrap();
    }

    #[test]
    fn the_default_layout_never_hooks_mangle_output() {
        let layout = Layout::default();
        for t in &layout.tables {
            if t.table == Table::Mangle {
                assert!(!t.hooks.iter().any(|h| h.builtin == BuiltinChain::Output));
            }
        }
    }

    fn static_lines(layout: &Layout, family: Family, table: Table) -> Vec<String> {
        let t = layout.tables(family).find(|t| t.table == table).unwrap();
        let mut lines = Vec::new();
        for spec in &t.chains {
            if let ChainContent::Static(rules) = &spec.content {
                for rule in rules {
                    lines.push(command_line(format!("-A {}", spec.chain), rule));
                }
            }
        }
        lines
    }

    #[test]
    fn static_nat_rules_match_upstream_shapes() {
        let layout = Layout::default();
        assert_eq!(
            static_lines(&layout, Family::V4, Table::Nat),
            [
                "-A patchpanel_PREROUTING -j redirect_default_dns",
                "-A patchpanel_PREROUTING -j ingress_port_forwarding",
                "-A patchpanel_PREROUTING -j apply_auto_dnat_to_arc",
                "-A patchpanel_PREROUTING -j apply_auto_dnat_to_crostini",
                "-A patchpanel_PREROUTING -j apply_auto_dnat_to_parallels",
                "-A patchpanel_OUTPUT -m mark --mark 0x8000/0xc000 -j redirect_user_dns",
                "-A patchpanel_POSTROUTING -m mark --mark 0x1/0x1 -j MASQUERADE",
                "-A patchpanel_POSTROUTING -m mark --mark 0x8000/0xc000 -j MASQUERADE",
            ]
        );
        assert_eq!(
            static_lines(&layout, Family::V6, Table::Nat),
            [
                "-A patchpanel_PREROUTING -j redirect_default_dns",
                "-A patchpanel_OUTPUT -m mark --mark 0x8000/0xc000 -j redirect_user_dns",
                "-A patchpanel_POSTROUTING -m mark --mark 0x1/0x1 -j MASQUERADE",
                "-A patchpanel_POSTROUTING -m mark --mark 0x8000/0xc000 -j MASQUERADE",
            ]
        );
    }

    #[test]
    fn static_filter_rules_only_jump_to_patchpanel_chains() {
        assert_eq!(
            static_lines(&Layout::default(), Family::V4, Table::Filter),
            [
                "-A vpn_egress_filters -j vpn_accept",
                "-A vpn_egress_filters -j vpn_lockdown",
                "-A patchpanel_INPUT -j ingress_port_firewall",
                "-A patchpanel_FORWARD -j accept_egress_to_dns_proxy",
                "-A patchpanel_FORWARD -j vpn_egress_filters",
                "-A patchpanel_FORWARD -j drop_forward_to_bruschetta",
                "-A patchpanel_FORWARD -j guest_forward",
                "-A patchpanel_OUTPUT -j accept_egress_to_dns_proxy",
                "-A patchpanel_OUTPUT -j vpn_egress_filters",
                "-A patchpanel_OUTPUT -j drop_output_to_bruschetta",
                "-A patchpanel_OUTPUT -j egress_port_firewall",
            ]
        );
    }

    #[test]
    fn guest_dhcp_requests_are_accepted_at_input_on_the_guest_prefixes_ipv4_only() {
        let config = LayoutConfig {
            local_traffic: None,
            guest_dhcp: vec![
                IfName::new("vmtap").unwrap(),
                IfName::new("arc_ns").unwrap(),
            ],
        };
        let layout = Layout::new(&config);
        layout.validate().unwrap();
        let input = |family| -> Vec<String> {
            static_lines(&layout, family, Table::Filter)
                .into_iter()
                .filter(|l| l.starts_with("-A patchpanel_INPUT"))
                .collect()
        };
        assert_eq!(
            input(Family::V4),
            [
                "-A patchpanel_INPUT -j ingress_port_firewall",
                "-A patchpanel_INPUT -i vmtap+ -p udp --sport 68 --dport 67 -j ACCEPT",
                "-A patchpanel_INPUT -i arc_ns+ -p udp --sport 68 --dport 67 -j ACCEPT",
            ]
        );
        assert_eq!(
            input(Family::V6),
            ["-A patchpanel_INPUT -j ingress_port_firewall"]
        );
    }

    #[test]
    fn local_traffic_marking_follows_upstream_apply_local_source_mark() {
        let config = LayoutConfig {
            local_traffic: Some(LocalTraffic {
                uid_sources: vec![(1000, TrafficSource::Chrome)],
                update_engine_cgroup: Some(0x10001),
            }),
            guest_dhcp: vec![],
        };
        assert_eq!(
            static_lines(&Layout::new(&config), Family::V4, Table::Mangle),
            [
                "-A restore_routing_mark -j CONNMARK --restore-mark --mask 0xffff0000",
                "-A restore_source_mark -j CONNMARK --restore-mark --mask 0x3f00",
                "-A apply_local_source_mark -m mark ! --mark 0x0/0x3f00 -j RETURN",
                "-A apply_local_source_mark -m owner --uid-owner 1000 -j MARK --set-xmark 0x100/0x3f00",
                "-A apply_local_source_mark -m mark --mark 0x0/0xc000 -m owner --uid-owner 1000 -j MARK --set-mark 0x8000/0xc000",
                "-A apply_local_source_mark -m cgroup --cgroup 65537 -j MARK --set-xmark 0x300/0x3f00",
                "-A apply_local_source_mark -m mark --mark 0x0/0x3f00 -j MARK --set-xmark 0x400/0x3f00",
                "-A patchpanel_OUTPUT -j apply_local_source_mark",
                "-A patchpanel_OUTPUT -m mark --mark 0x0/0xffff0000 -j CONNMARK --restore-mark --nfmask 0xffff0000 --ctmask 0xffff0000",
                "-A patchpanel_OUTPUT -j skip_apply_vpn_mark",
                "-A patchpanel_OUTPUT -m mark --mark 0x8000/0xc000 -j apply_vpn_mark",
            ]
        );
    }

    fn filter_v4(chains: Vec<ChainSpec>, hooks: Vec<Hook>) -> TableLayout {
        TableLayout {
            family: Family::V4,
            table: Table::Filter,
            chains,
            hooks,
        }
    }

    fn dynamic_chain(name: &'static str) -> ChainSpec {
        ChainSpec {
            chain: named(name),
            content: ChainContent::Dynamic,
        }
    }

    #[test]
    fn a_table_layout_whose_jumps_and_hooks_land_inside_it_validates() {
        let t = filter_v4(
            vec![
                dynamic_chain(GUEST_FORWARD),
                ChainSpec {
                    chain: root_chain(BuiltinChain::Forward),
                    content: ChainContent::Static(vec![jump(GUEST_FORWARD)]),
                },
            ],
            vec![Hook {
                builtin: BuiltinChain::Forward,
                root: root_chain(BuiltinChain::Forward),
            }],
        );

        assert_eq!(t.validate(), Ok(()));
    }

    #[test]
    fn a_hook_on_a_chain_the_table_lacks_is_refused() {
        let mut layout = Layout::default();
        let filter = layout
            .tables
            .iter_mut()
            .find(|t| t.table == Table::Filter)
            .unwrap();
        filter.hook(BuiltinChain::Prerouting, ChainContent::Dynamic);

        let err = layout.validate().unwrap_err();

        assert_eq!(
            err,
            ValidationError::ChainName {
                name: "PREROUTING".into(),
                reason: "not a built-in chain of this table"
            }
        );
    }

    #[test]
    fn a_jump_to_a_chain_missing_from_the_layout_is_refused() {
        let mut layout = Layout::default();
        let filter = layout
            .tables
            .iter_mut()
            .find(|t| t.table == Table::Filter)
            .unwrap();
        filter.fixed(named(VPN_ACCEPT), vec![jump(DROP_OUTPUT_TO_BRUSCHETTA)]);
        filter
            .chains
            .retain(|s| s.chain != named(DROP_OUTPUT_TO_BRUSCHETTA));

        let err = layout.validate().unwrap_err();

        assert_eq!(
            err,
            ValidationError::ChainName {
                name: DROP_OUTPUT_TO_BRUSCHETTA.into(),
                reason: "jump target missing from the layout"
            }
        );
    }

    #[test]
    fn a_static_rule_that_fails_validation_fails_the_layout() {
        let t = filter_v4(
            vec![ChainSpec {
                chain: named(GUEST_FORWARD),
                content: ChainContent::Static(vec![Rule::new(Target::Masquerade)]),
            }],
            vec![],
        );

        assert!(matches!(
            t.validate(),
            Err(ValidationError::TargetNotInTable { .. })
        ));
    }

    #[test]
    fn a_hooked_root_chain_missing_from_the_layout_is_refused() {
        let t = filter_v4(
            vec![dynamic_chain(GUEST_FORWARD)],
            vec![Hook {
                builtin: BuiltinChain::Forward,
                root: root_chain(BuiltinChain::Forward),
            }],
        );

        assert_eq!(
            t.validate(),
            Err(ValidationError::ChainName {
                name: "patchpanel_FORWARD".into(),
                reason: "hooked root chain missing from the layout"
            })
        );
    }
}
