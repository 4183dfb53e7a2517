//! The names of the chains patchpanel owns: a leaf that the model (which
//! checks names), the layout (which builds the chains) and both backends
//! read, so that none of them depends on another for a list of names.

/// Prefix of the root chains (`patchpanel_FORWARD`...).
pub const ROOT_CHAIN_PREFIX: &str = "patchpanel_";

// Named chains. The upstream names are a contract (shill, dns-proxy and
// tests expect them); `guest_forward` is ours.
pub const APPLY_LOCAL_SOURCE_MARK: &str = "apply_local_source_mark";
pub const SKIP_APPLY_VPN_MARK: &str = "skip_apply_vpn_mark";
pub const APPLY_VPN_MARK: &str = "apply_vpn_mark";
pub const REDIRECT_DEFAULT_DNS: &str = "redirect_default_dns";
pub const REDIRECT_USER_DNS: &str = "redirect_user_dns";
pub const INGRESS_PORT_FORWARDING: &str = "ingress_port_forwarding";
pub const APPLY_AUTO_DNAT_TO_ARC: &str = "apply_auto_dnat_to_arc";
pub const APPLY_AUTO_DNAT_TO_CROSTINI: &str = "apply_auto_dnat_to_crostini";
pub const APPLY_AUTO_DNAT_TO_PARALLELS: &str = "apply_auto_dnat_to_parallels";
pub const INGRESS_PORT_FIREWALL: &str = "ingress_port_firewall";
pub const EGRESS_PORT_FIREWALL: &str = "egress_port_firewall";
pub const VPN_EGRESS_FILTERS: &str = "vpn_egress_filters";
pub const VPN_ACCEPT: &str = "vpn_accept";
pub const VPN_LOCKDOWN: &str = "vpn_lockdown";
pub const DROP_FORWARD_TO_BRUSCHETTA: &str = "drop_forward_to_bruschetta";
pub const DROP_OUTPUT_TO_BRUSCHETTA: &str = "drop_output_to_bruschetta";
/// filter: what may always reach a DNS proxy (before the VPN filters).
pub const ACCEPT_EGRESS_TO_DNS_PROXY: &str = "accept_egress_to_dns_proxy";
/// filter: per-guest forwarding accepts (upstream appends them to FORWARD).
pub const GUEST_FORWARD: &str = "guest_forward";
/// mangle: `CONNMARK --restore-mark` of the routing tag, which every
/// `PREROUTING_<if>` jumps to instead of carrying the target itself.
/// Ours: the target is nft_compat's xt `CONNMARK`, and adding one waits for
/// the destruction of every rule deleted before (an RCU grace period, ~15
/// ms after a guest's teardown); a jump to a chain made at start does not.
pub const RESTORE_ROUTING_MARK: &str = "restore_routing_mark";
/// mangle: `CONNMARK --restore-mark` of the source tag, likewise (pinned
/// guests).
pub const RESTORE_SOURCE_MARK: &str = "restore_source_mark";
/// A chain no rule jumps to, which the iptables backend adds to an
/// iptables-nft table when its start makes something there: its rules'
/// comments ([`MADE_TABLE`], [`MADE_HOOK`]`<chain>`) say what, so that the
/// stop (of this run or of a crash successor) removes exactly that.
pub const TABLE_MARKER: &str = "patchpanel_created";
/// The marker comment of a table patchpanel's start made.
pub const MADE_TABLE: &str = "made_table";
/// The marker comment prefix of a base chain patchpanel's start made.
pub const MADE_HOOK: &str = "made_hook_";

pub(crate) const ROOT_CHAINS: [&str; 5] = [
    "patchpanel_PREROUTING",
    "patchpanel_INPUT",
    "patchpanel_FORWARD",
    "patchpanel_OUTPUT",
    "patchpanel_POSTROUTING",
];

/// Every fixed chain name patchpanel owns (all tables, both families).
pub const CATALOG: [&str; 26] = [
    ROOT_CHAINS[0],
    ROOT_CHAINS[1],
    ROOT_CHAINS[2],
    ROOT_CHAINS[3],
    ROOT_CHAINS[4],
    APPLY_LOCAL_SOURCE_MARK,
    SKIP_APPLY_VPN_MARK,
    APPLY_VPN_MARK,
    REDIRECT_DEFAULT_DNS,
    REDIRECT_USER_DNS,
    INGRESS_PORT_FORWARDING,
    APPLY_AUTO_DNAT_TO_ARC,
    APPLY_AUTO_DNAT_TO_CROSTINI,
    APPLY_AUTO_DNAT_TO_PARALLELS,
    INGRESS_PORT_FIREWALL,
    EGRESS_PORT_FIREWALL,
    VPN_EGRESS_FILTERS,
    VPN_ACCEPT,
    VPN_LOCKDOWN,
    DROP_FORWARD_TO_BRUSCHETTA,
    DROP_OUTPUT_TO_BRUSCHETTA,
    ACCEPT_EGRESS_TO_DNS_PROXY,
    GUEST_FORWARD,
    RESTORE_ROUTING_MARK,
    RESTORE_SOURCE_MARK,
    TABLE_MARKER,
];

/// Whether `name` is one of the fixed names in [`CATALOG`].
pub fn is_catalog_chain(name: &str) -> bool {
    CATALOG.contains(&name)
}
