//! The typed vocabulary of firewall changes.
//!
//! The manager builds these values from policy; they cross the IPC boundary
//! (bincode, so only plain structs and externally tagged enums) and the
//! datapath writer re-checks them with [`Batch::validate`] before anything is
//! rendered. Names that end up as tokens of an `iptables-restore` line
//! ([`OwnedChain`], [`Comment`], `IfName`) are validated on construction and on
//! decode, so no value of these types can smuggle whitespace, a newline or a
//! leading `-` into a batch.

use std::fmt;
use std::net::IpAddr;

use patchpanel_names::IfName;
use serde::{Deserialize, Serialize};

/// Longest chain name iptables accepts (`XT_EXTENSION_MAXNAMELEN` - 1 minus
/// room iptables keeps; upstream's `kIptablesMaxChainLength`).
pub const MAX_CHAIN_NAME_LEN: usize = 28;

/// Longest rule comment patchpanel writes.
pub const MAX_COMMENT_LEN: usize = 64;

/// Most changes one batch may carry (a guest needs about 20).
pub const MAX_CHANGES_PER_FAMILY: usize = 4096;

/// Prefixes of the per-interface chains (`PREROUTING_<if>`, `rx_<if>`...):
/// after one of these, the rest of the name is an interface name and may
/// contain `-` and `.`.
pub const INTERFACE_CHAIN_PREFIXES: [&str; 5] =
    ["PREROUTING_", "POSTROUTING_", "rx_", "tx_", "egress_"];

/// The prefixes of per-interface chains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum InterfaceChainPrefix {
    /// `PREROUTING_<if>`: a downstream interface's marks (mangle).
    Prerouting,
    /// `POSTROUTING_<if>`: an uplink's connection pinning (mangle).
    Postrouting,
    /// `rx_<if>`: accounting of traffic received on an uplink (mangle).
    Rx,
    /// `tx_<if>`: accounting of traffic sent on an uplink (mangle).
    Tx,
    /// `egress_<if>`: IPv6 source prefix enforcement (filter).
    Egress,
}

impl InterfaceChainPrefix {
    pub fn as_str(self) -> &'static str {
        match self {
            InterfaceChainPrefix::Prerouting => INTERFACE_CHAIN_PREFIXES[0],
            InterfaceChainPrefix::Postrouting => INTERFACE_CHAIN_PREFIXES[1],
            InterfaceChainPrefix::Rx => INTERFACE_CHAIN_PREFIXES[2],
            InterfaceChainPrefix::Tx => INTERFACE_CHAIN_PREFIXES[3],
            InterfaceChainPrefix::Egress => INTERFACE_CHAIN_PREFIXES[4],
        }
    }
}

/// IP version: iptables and ip6tables are separate tools and rule sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub const ALL: [Family; 2] = [Family::V4, Family::V6];

    /// Whether `addr` belongs to this family.
    pub fn contains(self, addr: &IpAddr) -> bool {
        matches!(
            (self, addr),
            (Family::V4, IpAddr::V4(_)) | (Family::V6, IpAddr::V6(_))
        )
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        })
    }
}

/// The netfilter tables patchpanel uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Table {
    Mangle,
    Nat,
    Filter,
}

impl Table {
    /// The fixed order in which tables are rendered and applied. Filter
    /// first: a teardown stops forwarding a guest's traffic before it stops
    /// marking it for SNAT, so no unmasqueraded guest packet leaves; a
    /// setup runs before the guest's new link carries traffic.
    pub const ALL: [Table; 3] = [Table::Filter, Table::Nat, Table::Mangle];

    pub fn name(self) -> &'static str {
        match self {
            Table::Mangle => "mangle",
            Table::Nat => "nat",
            Table::Filter => "filter",
        }
    }

    /// The built-in chains this table has.
    pub fn builtin_chains(self) -> &'static [BuiltinChain] {
        use BuiltinChain::*;
        match self {
            Table::Mangle => &[Prerouting, Input, Forward, Output, Postrouting],
            Table::Nat => &[Prerouting, Input, Output, Postrouting],
            Table::Filter => &[Input, Forward, Output],
        }
    }

    pub fn has_builtin(self, chain: BuiltinChain) -> bool {
        self.builtin_chains().contains(&chain)
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A chain netfilter creates with the table (it has a policy).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum BuiltinChain {
    Prerouting,
    Input,
    Forward,
    Output,
    Postrouting,
}

impl BuiltinChain {
    pub const ALL: [BuiltinChain; 5] = [
        BuiltinChain::Prerouting,
        BuiltinChain::Input,
        BuiltinChain::Forward,
        BuiltinChain::Output,
        BuiltinChain::Postrouting,
    ];

    pub fn name(self) -> &'static str {
        match self {
            BuiltinChain::Prerouting => "PREROUTING",
            BuiltinChain::Input => "INPUT",
            BuiltinChain::Forward => "FORWARD",
            BuiltinChain::Output => "OUTPUT",
            BuiltinChain::Postrouting => "POSTROUTING",
        }
    }

    pub fn from_name(name: &str) -> Option<BuiltinChain> {
        BuiltinChain::ALL.into_iter().find(|c| c.name() == name)
    }
}

impl fmt::Display for BuiltinChain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A chain patchpanel owns: a name from the catalog in [`crate::catalog`]
/// (`[A-Za-z0-9_]` only) or a per-interface chain, one of
/// [`INTERFACE_CHAIN_PREFIXES`] followed by a valid interface name. Never a
/// built-in name; at most [`MAX_CHAIN_NAME_LEN`] bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct OwnedChain(String);

impl OwnedChain {
    pub fn new(name: &str) -> Result<OwnedChain, ValidationError> {
        check_owned_chain(name)?;
        Ok(OwnedChain(name.to_string()))
    }

    /// `<prefix><ifname>` for a prefix of [`INTERFACE_CHAIN_PREFIXES`]:
    /// always valid (the longest prefix, 12 bytes, plus a 15-byte interface
    /// name fits in 28).
    pub fn interface_chain(prefix: InterfaceChainPrefix, ifname: &IfName) -> OwnedChain {
        let name = format!("{}{ifname}", prefix.as_str());
        debug_assert!(is_owned_chain_name(&name), "{name}");
        OwnedChain(name)
    }

    /// A name from the static catalog (checked by the catalog's tests).
    pub(crate) fn from_catalog(name: &'static str) -> OwnedChain {
        debug_assert!(is_owned_chain_name(name), "{name} is not in the catalog");
        OwnedChain(name.to_string())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Whether `name` is a chain patchpanel owns (see [`OwnedChain`]). Used to
/// recognise leftovers in `iptables-save` output.
pub fn is_owned_chain_name(name: &str) -> bool {
    check_owned_chain(name).is_ok()
}

fn check_owned_chain(name: &str) -> Result<(), ValidationError> {
    let bad = |reason: &'static str| ValidationError::ChainName {
        name: name.escape_debug().to_string(),
        reason,
    };
    if name.is_empty() {
        return Err(bad("empty"));
    }
    if name.len() > MAX_CHAIN_NAME_LEN {
        return Err(bad("longer than 28 bytes"));
    }
    if BuiltinChain::from_name(name).is_some() {
        return Err(bad("a built-in chain is not owned by patchpanel"));
    }
    for prefix in INTERFACE_CHAIN_PREFIXES {
        if let Some(ifname) = name.strip_prefix(prefix) {
            if IfName::new(ifname).is_ok() {
                return Ok(());
            }
        }
    }
    if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(bad(
            "only letters, digits and '_' are allowed (plus '-' and '.' after an interface-chain prefix)",
        ));
    }
    if crate::catalog::is_catalog_chain(name) {
        Ok(())
    } else {
        Err(bad("not a chain patchpanel owns"))
    }
}

impl TryFrom<String> for OwnedChain {
    type Error = ValidationError;
    fn try_from(s: String) -> Result<OwnedChain, ValidationError> {
        check_owned_chain(&s)?;
        Ok(OwnedChain(s))
    }
}

impl From<OwnedChain> for String {
    fn from(c: OwnedChain) -> String {
        c.0
    }
}

impl fmt::Display for OwnedChain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Any chain: a built-in one or one of ours.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Chain {
    Builtin(BuiltinChain),
    Owned(OwnedChain),
}

impl fmt::Display for Chain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Chain::Builtin(c) => c.fmt(f),
            Chain::Owned(c) => c.fmt(f),
        }
    }
}

/// A rule comment: 1–64 bytes of `[A-Za-z0-9_.:-]`, not starting with `-`
/// (one token, never quoted).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Comment(String);

impl Comment {
    pub fn new(text: &str) -> Result<Comment, ValidationError> {
        let ok = !text.is_empty()
            && text.len() <= MAX_COMMENT_LEN
            && !text.starts_with('-')
            && text
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-'));
        if ok {
            Ok(Comment(text.to_string()))
        } else {
            Err(ValidationError::Comment {
                comment: text.escape_debug().to_string(),
            })
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Comment {
    type Error = ValidationError;
    fn try_from(s: String) -> Result<Comment, ValidationError> {
        Comment::new(&s)
    }
}

impl From<Comment> for String {
    fn from(c: Comment) -> String {
        c.0
    }
}

/// An address with a prefix length; host bits must be zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Cidr {
    addr: IpAddr,
    prefix_len: u8,
}

impl Cidr {
    pub fn new(addr: IpAddr, prefix_len: u8) -> Result<Cidr, ValidationError> {
        let cidr = Cidr { addr, prefix_len };
        cidr.check()?;
        Ok(cidr)
    }

    /// A single address (/32 or /128).
    pub fn host(addr: IpAddr) -> Cidr {
        let prefix_len = match addr {
            IpAddr::V4(_) => 32,
            IpAddr::V6(_) => 128,
        };
        Cidr { addr, prefix_len }
    }

    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    fn check(&self) -> Result<(), ValidationError> {
        let bad = |reason: &'static str| ValidationError::Cidr {
            cidr: self.to_string(),
            reason,
        };
        let host_bits_set = match self.addr {
            IpAddr::V4(a) => {
                if self.prefix_len > 32 {
                    return Err(bad("prefix longer than 32"));
                }
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix_len))
                    .unwrap_or(0);
                u32::from(a) & !mask != 0
            }
            IpAddr::V6(a) => {
                if self.prefix_len > 128 {
                    return Err(bad("prefix longer than 128"));
                }
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix_len))
                    .unwrap_or(0);
                u128::from(a) & !mask != 0
            }
        };
        if host_bits_set {
            return Err(bad("host bits set"));
        }
        Ok(())
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

/// `-i`/`-o`: an interface, or all names starting with it (`eth+`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct IfMatch {
    pub name: IfName,
    /// Match every interface whose name starts with `name` (`name+`).
    pub wildcard: bool,
    pub negate: bool,
}

/// `-s`/`-d`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AddrMatch {
    pub cidr: Cidr,
    pub negate: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Protocol {
    Tcp,
    Udp,
    Icmp,
    Icmpv6,
}

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Icmp => "icmp",
            Protocol::Icmpv6 => "icmpv6",
        }
    }
}

/// A set of TCP flags (bits as in the TCP header: FIN 0x01 ... URG 0x20).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TcpFlags(pub u8);

impl TcpFlags {
    pub const FIN: TcpFlags = TcpFlags(0x01);
    pub const SYN: TcpFlags = TcpFlags(0x02);
    pub const RST: TcpFlags = TcpFlags(0x04);
    pub const PSH: TcpFlags = TcpFlags(0x08);
    pub const ACK: TcpFlags = TcpFlags(0x10);
    pub const URG: TcpFlags = TcpFlags(0x20);
    /// Names in the order iptables prints them.
    pub const NAMES: [(u8, &'static str); 6] = [
        (0x01, "FIN"),
        (0x02, "SYN"),
        (0x04, "RST"),
        (0x08, "PSH"),
        (0x10, "ACK"),
        (0x20, "URG"),
    ];

    pub fn union(self, other: TcpFlags) -> TcpFlags {
        TcpFlags(self.0 | other.0)
    }
}

/// `--tcp-flags MASK SET`: of the flags in `mask`, exactly those in `set`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TcpFlagsMatch {
    pub mask: TcpFlags,
    pub set: TcpFlags,
    pub negate: bool,
}

/// `-m mark [!] --mark value/mask`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MarkMatch {
    pub value: u32,
    pub mask: u32,
    pub negate: bool,
}

/// A set of conntrack states (bits below).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CtStates(pub u8);

impl CtStates {
    pub const INVALID: CtStates = CtStates(0x01);
    pub const NEW: CtStates = CtStates(0x02);
    pub const RELATED: CtStates = CtStates(0x04);
    pub const ESTABLISHED: CtStates = CtStates(0x08);
    pub const UNTRACKED: CtStates = CtStates(0x10);
    /// Names in the order iptables prints them.
    pub const NAMES: [(u8, &'static str); 5] = [
        (0x01, "INVALID"),
        (0x02, "NEW"),
        (0x04, "RELATED"),
        (0x08, "ESTABLISHED"),
        (0x10, "UNTRACKED"),
    ];

    pub fn union(self, other: CtStates) -> CtStates {
        CtStates(self.0 | other.0)
    }
}

/// `-m conntrack [!] --ctstate STATES`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CtStateMatch {
    pub states: CtStates,
    pub negate: bool,
}

/// One match of a rule. Rendered in the order given.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Match {
    /// `[!] -i name[+]`
    InInterface(IfMatch),
    /// `[!] -o name[+]`
    OutInterface(IfMatch),
    /// `[!] -s cidr`
    Source(AddrMatch),
    /// `[!] -d cidr`
    Destination(AddrMatch),
    /// `-p proto`
    Protocol(Protocol),
    /// `--sport N` (needs an earlier tcp/udp protocol match)
    SourcePort(u16),
    /// `--dport N` (needs an earlier tcp/udp protocol match)
    DestinationPort(u16),
    /// `[!] --tcp-flags MASK SET` (needs an earlier tcp protocol match)
    TcpFlags(TcpFlagsMatch),
    /// `-m mark [!] --mark v/m`
    Mark(MarkMatch),
    /// `-m conntrack [!] --ctstate S`
    ConnState(CtStateMatch),
    /// `-m socket --nowildcard`
    SocketNoWildcard,
    /// `-m owner [!] --uid-owner UID`
    UidOwner { uid: u32, negate: bool },
    /// `-m cgroup --cgroup CLASSID`
    Cgroup { classid: u32 },
}

impl Match {
    /// `-i name`
    pub fn iif(name: &IfName) -> Match {
        Match::InInterface(IfMatch {
            name: name.clone(),
            wildcard: false,
            negate: false,
        })
    }

    /// `-o name`
    pub fn oif(name: &IfName) -> Match {
        Match::OutInterface(IfMatch {
            name: name.clone(),
            wildcard: false,
            negate: false,
        })
    }

    /// `-s cidr`
    pub fn src(cidr: Cidr) -> Match {
        Match::Source(AddrMatch {
            cidr,
            negate: false,
        })
    }

    /// `-d cidr`
    pub fn dst(cidr: Cidr) -> Match {
        Match::Destination(AddrMatch {
            cidr,
            negate: false,
        })
    }

    /// `-m mark --mark value/mask`
    pub fn mark(value: u32, mask: u32) -> Match {
        Match::Mark(MarkMatch {
            value,
            mask,
            negate: false,
        })
    }

    /// `-m mark ! --mark value/mask`
    pub fn not_mark(value: u32, mask: u32) -> Match {
        Match::Mark(MarkMatch {
            value,
            mask,
            negate: true,
        })
    }

    /// `-m conntrack --ctstate STATES`
    pub fn ctstate(states: CtStates) -> Match {
        Match::ConnState(CtStateMatch {
            states,
            negate: false,
        })
    }
}

/// What a matching packet does.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Target {
    Accept,
    Drop,
    /// `-j REJECT` (filter table only).
    Reject,
    Return,
    /// `-j <chain>`: only to a chain patchpanel owns.
    Jump(OwnedChain),
    /// `-j MARK --set-mark value/mask` (mangle).
    SetMark {
        value: u32,
        mask: u32,
    },
    /// `-j MARK --set-xmark value/mask` (mangle).
    SetXmark {
        value: u32,
        mask: u32,
    },
    /// `-j CONNMARK --restore-mark --mask M` (mangle).
    ConnmarkRestore {
        mask: u32,
    },
    /// `-j CONNMARK --restore-mark --nfmask N --ctmask C` (mangle).
    ConnmarkRestoreMasks {
        nfmask: u32,
        ctmask: u32,
    },
    /// `-j CONNMARK --save-mark --mask M` (mangle).
    ConnmarkSave {
        mask: u32,
    },
    /// `-j CONNMARK --set-mark value/mask` (mangle).
    ConnmarkSet {
        value: u32,
        mask: u32,
    },
    /// `-j MASQUERADE` (nat).
    Masquerade,
    /// `-j DNAT --to-destination addr[:port]` (nat; a port needs a tcp/udp
    /// protocol match).
    Dnat {
        addr: IpAddr,
        port: Option<u16>,
    },
    /// No target: the rule only counts packets (accounting chains).
    Count,
}

impl Target {
    fn allowed_in(&self, table: Table) -> bool {
        match self {
            Target::Accept | Target::Drop | Target::Return | Target::Jump(_) | Target::Count => {
                true
            }
            Target::Reject => table == Table::Filter,
            Target::SetMark { .. }
            | Target::SetXmark { .. }
            | Target::ConnmarkRestore { .. }
            | Target::ConnmarkRestoreMasks { .. }
            | Target::ConnmarkSave { .. }
            | Target::ConnmarkSet { .. } => table == Table::Mangle,
            Target::Masquerade | Target::Dnat { .. } => table == Table::Nat,
        }
    }
}

/// One rule: matches (in order), an optional comment, a target.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Rule {
    pub matches: Vec<Match>,
    pub target: Target,
    pub comment: Option<Comment>,
}

impl Rule {
    /// A rule that matches every packet.
    pub fn new(target: Target) -> Rule {
        Rule {
            matches: Vec::new(),
            target,
            comment: None,
        }
    }

    /// The rule with one more match.
    pub fn with(mut self, m: Match) -> Rule {
        self.matches.push(m);
        self
    }

    /// The rule with `comment`.
    pub fn commented(mut self, comment: Comment) -> Rule {
        self.comment = Some(comment);
        self
    }

    /// Checks the rule as it would be used in `table` of `family`.
    pub fn validate(&self, family: Family, table: Table) -> Result<(), ValidationError> {
        let mut protocol: Option<Protocol> = None;
        let mut seen_iif = false;
        let mut seen_oif = false;
        let mut seen_src = false;
        let mut seen_dst = false;
        let mut seen_sport = false;
        let mut seen_dport = false;
        for m in &self.matches {
            let dup = |seen: &mut bool, what: &'static str| {
                if std::mem::replace(seen, true) {
                    Err(ValidationError::DuplicateMatch { what })
                } else {
                    Ok(())
                }
            };
            match m {
                Match::InInterface(_) => dup(&mut seen_iif, "-i")?,
                Match::OutInterface(_) => dup(&mut seen_oif, "-o")?,
                Match::Source(a) | Match::Destination(a) => {
                    if matches!(m, Match::Source(_)) {
                        dup(&mut seen_src, "-s")?;
                    } else {
                        dup(&mut seen_dst, "-d")?;
                    }
                    a.cidr.check()?;
                    if !family.contains(&a.cidr.addr) {
                        return Err(ValidationError::FamilyMismatch {
                            family,
                            value: a.cidr.to_string(),
                        });
                    }
                }
                Match::Protocol(p) => {
                    if protocol.is_some() {
                        return Err(ValidationError::DuplicateMatch { what: "-p" });
                    }
                    let ok = match p {
                        Protocol::Icmp => family == Family::V4,
                        Protocol::Icmpv6 => family == Family::V6,
                        Protocol::Tcp | Protocol::Udp => true,
                    };
                    if !ok {
                        return Err(ValidationError::FamilyMismatch {
                            family,
                            value: p.name().to_string(),
                        });
                    }
                    protocol = Some(*p);
                }
                Match::SourcePort(port) | Match::DestinationPort(port) => {
                    let what = if matches!(m, Match::SourcePort(_)) {
                        dup(&mut seen_sport, "--sport")?;
                        "--sport"
                    } else {
                        dup(&mut seen_dport, "--dport")?;
                        "--dport"
                    };
                    if *port == 0 {
                        return Err(ValidationError::PortZero { what });
                    }
                    if !matches!(protocol, Some(Protocol::Tcp | Protocol::Udp)) {
                        return Err(ValidationError::NeedsProtocol {
                            what: format!("{what} {port}"),
                            needs: "an earlier -p tcp or -p udp",
                        });
                    }
                }
                Match::TcpFlags(f) => {
                    if protocol != Some(Protocol::Tcp) {
                        return Err(ValidationError::NeedsProtocol {
                            what: "--tcp-flags".to_string(),
                            needs: "an earlier -p tcp",
                        });
                    }
                    if f.mask.0 == 0 || f.mask.0 > 0x3f || f.set.0 & !f.mask.0 != 0 {
                        return Err(ValidationError::TcpFlags {
                            mask: f.mask.0,
                            set: f.set.0,
                        });
                    }
                }
                Match::Mark(mm) => check_value_in_mask("--mark", mm.value, mm.mask)?,
                Match::ConnState(s) => {
                    if s.states.0 == 0 || s.states.0 > 0x1f {
                        return Err(ValidationError::CtStates { bits: s.states.0 });
                    }
                }
                Match::SocketNoWildcard | Match::UidOwner { .. } | Match::Cgroup { .. } => {}
            }
        }
        if !self.target.allowed_in(table) {
            return Err(ValidationError::TargetNotInTable {
                target: Box::new(self.target.clone()),
                table,
            });
        }
        match &self.target {
            Target::SetMark { value, mask }
            | Target::SetXmark { value, mask }
            | Target::ConnmarkSet { value, mask } => check_value_in_mask("MARK", *value, *mask)?,
            Target::ConnmarkRestore { mask } | Target::ConnmarkSave { mask } => {
                check_value_in_mask("CONNMARK", 0, *mask)?
            }
            Target::ConnmarkRestoreMasks { nfmask, ctmask } => {
                check_value_in_mask("CONNMARK", 0, *nfmask)?;
                check_value_in_mask("CONNMARK", 0, *ctmask)?;
            }
            Target::Dnat { addr, port } => {
                if !family.contains(addr) {
                    return Err(ValidationError::FamilyMismatch {
                        family,
                        value: addr.to_string(),
                    });
                }
                if let Some(port) = port {
                    if *port == 0 {
                        return Err(ValidationError::PortZero {
                            what: "--to-destination",
                        });
                    }
                    if !matches!(protocol, Some(Protocol::Tcp | Protocol::Udp)) {
                        return Err(ValidationError::NeedsProtocol {
                            what: format!("DNAT to port {port}"),
                            needs: "a -p tcp or -p udp match",
                        });
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }
}

fn check_value_in_mask(what: &'static str, value: u32, mask: u32) -> Result<(), ValidationError> {
    if mask == 0 || value & !mask != 0 {
        return Err(ValidationError::MarkOutsideMask { what, value, mask });
    }
    Ok(())
}

/// One change to the rule set. Changes only ever name chains patchpanel
/// owns: the jumps from built-in chains are the backend's business
/// ([`crate::backend::FirewallBackend::setup`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Change {
    /// `-N chain`: fails if the chain exists (never `:chain`, which would
    /// flush an existing one).
    NewChain { table: Table, chain: OwnedChain },
    /// `-F chain` then `-X chain`.
    DeleteChain { table: Table, chain: OwnedChain },
    /// `-F chain`. Has no inverse.
    FlushChain { table: Table, chain: OwnedChain },
    /// `-A chain rule`
    Append {
        table: Table,
        chain: OwnedChain,
        rule: Rule,
    },
    /// `-I chain position rule` (position counts from 1).
    Insert {
        table: Table,
        chain: OwnedChain,
        position: u32,
        rule: Rule,
    },
    /// `-D chain rule`: deletes the first rule equal to `rule`.
    Delete {
        table: Table,
        chain: OwnedChain,
        rule: Rule,
    },
}

impl Change {
    pub fn table(&self) -> Table {
        match self {
            Change::NewChain { table, .. }
            | Change::DeleteChain { table, .. }
            | Change::FlushChain { table, .. }
            | Change::Append { table, .. }
            | Change::Insert { table, .. }
            | Change::Delete { table, .. } => *table,
        }
    }

    pub fn chain(&self) -> &OwnedChain {
        match self {
            Change::NewChain { chain, .. }
            | Change::DeleteChain { chain, .. }
            | Change::FlushChain { chain, .. }
            | Change::Append { chain, .. }
            | Change::Insert { chain, .. }
            | Change::Delete { chain, .. } => chain,
        }
    }

    pub fn validate(&self, family: Family) -> Result<(), ValidationError> {
        // The name was checked on construction or decode; checking again
        // costs nothing and keeps this function the single gate.
        check_owned_chain(self.chain().as_str())?;
        match self {
            Change::NewChain { .. } | Change::DeleteChain { .. } | Change::FlushChain { .. } => {
                Ok(())
            }
            Change::Insert { position: 0, .. } => {
                Err(ValidationError::InsertPosition { position: 0 })
            }
            Change::Append { table, rule, .. }
            | Change::Insert { table, rule, .. }
            | Change::Delete { table, rule, .. } => {
                if let Target::Jump(to) = &rule.target {
                    check_owned_chain(to.as_str())?;
                    if to == self.chain() {
                        return Err(ValidationError::SelfJump {
                            chain: to.to_string(),
                        });
                    }
                }
                rule.validate(family, *table)
            }
        }
    }

    /// The change that undoes this one, if there is one.
    pub fn inverse(&self) -> Result<Change, InverseError> {
        Ok(match self.clone() {
            Change::NewChain { table, chain } => Change::DeleteChain { table, chain },
            Change::DeleteChain { table, chain } => Change::NewChain { table, chain },
            Change::FlushChain { table, chain } => {
                return Err(InverseError::Flush {
                    table,
                    chain: chain.to_string(),
                })
            }
            Change::Append { table, chain, rule }
            | Change::Insert {
                table, chain, rule, ..
            } => Change::Delete { table, chain, rule },
            Change::Delete { table, chain, rule } => Change::Append { table, chain, rule },
        })
    }
}

/// The firewall changes of one operation, for both families. Each family's
/// list is applied in order, tables in [`Table::ALL`] order; the backend
/// applies all of it or (by applying the inverse of what it did) none.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Batch {
    pub ipv4: Vec<Change>,
    pub ipv6: Vec<Change>,
}

impl Batch {
    pub fn new() -> Batch {
        Batch::default()
    }

    pub fn changes(&self, family: Family) -> &[Change] {
        match family {
            Family::V4 => &self.ipv4,
            Family::V6 => &self.ipv6,
        }
    }

    pub fn changes_mut(&mut self, family: Family) -> &mut Vec<Change> {
        match family {
            Family::V4 => &mut self.ipv4,
            Family::V6 => &mut self.ipv6,
        }
    }

    /// Adds `change` to `family`'s list.
    pub fn push(&mut self, family: Family, change: Change) {
        self.changes_mut(family).push(change);
    }

    /// Adds `change` to both families.
    pub fn push_dual(&mut self, change: Change) {
        self.ipv4.push(change.clone());
        self.ipv6.push(change);
    }

    /// Appends `other`'s changes after this batch's.
    pub fn extend(&mut self, other: Batch) {
        self.ipv4.extend(other.ipv4);
        self.ipv6.extend(other.ipv6);
    }

    pub fn is_empty(&self) -> bool {
        self.ipv4.is_empty() && self.ipv6.is_empty()
    }

    /// The batch cut into batches of at most `max` changes per family, in
    /// order (the k-th of each family's changes stay together in page k).
    pub fn pages(&self, max: usize) -> Vec<Batch> {
        let max = max.max(1);
        let mut pages = Vec::new();
        let mut at = 0;
        while at < self.ipv4.len() || at < self.ipv6.len() {
            let take = |v: &[Change]| v.iter().skip(at).take(max).cloned().collect();
            pages.push(Batch {
                ipv4: take(&self.ipv4),
                ipv6: take(&self.ipv6),
            });
            at += max;
        }
        pages
    }

    /// Re-checks every change; the writer calls this on what it receives.
    pub fn validate(&self) -> Result<(), ValidationError> {
        for family in Family::ALL {
            let changes = self.changes(family);
            if changes.len() > MAX_CHANGES_PER_FAMILY {
                return Err(ValidationError::TooManyChanges {
                    family,
                    count: changes.len(),
                });
            }
        }
        self.validate_changes()
    }

    /// Re-checks every change, however many there are: for a batch put
    /// together by the writer from pages that each passed
    /// [`Batch::validate`] (a firewall rebuild).
    pub fn validate_changes(&self) -> Result<(), ValidationError> {
        for family in Family::ALL {
            let changes = self.changes(family);
            for (index, change) in changes.iter().enumerate() {
                change
                    .validate(family)
                    .map_err(|e| ValidationError::InChange {
                        family,
                        index,
                        change: Box::new(change.clone()),
                        source: Box::new(e),
                    })?;
            }
        }
        Ok(())
    }

    /// The batch that undoes this one: each family's changes reversed and
    /// inverted (Append/Insert ↔ Delete, NewChain ↔ DeleteChain). The
    /// inverse of a Delete appends (the position is not known); the inverse
    /// of DeleteChain creates an empty chain, exact when the batch deleted
    /// the chain's rules first, as every generated teardown does.
    pub fn inverse(&self) -> Result<Batch, InverseError> {
        let invert = |changes: &[Change]| -> Result<Vec<Change>, InverseError> {
            changes.iter().rev().map(Change::inverse).collect()
        };
        Ok(Batch {
            ipv4: invert(&self.ipv4)?,
            ipv6: invert(&self.ipv6)?,
        })
    }
}

/// Why a change was refused. Every variant names the offending value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    #[error("chain name {name:?}: {reason}")]
    ChainName { name: String, reason: &'static str },
    #[error(
        "comment {comment:?}: 1-64 bytes of letters, digits, '_', '.', ':', '-' (not leading)"
    )]
    Comment { comment: String },
    #[error("address {cidr}: {reason}")]
    Cidr { cidr: String, reason: &'static str },
    #[error("{value} does not belong in an {family} rule")]
    FamilyMismatch { family: Family, value: String },
    #[error("{what} 0 is not a port")]
    PortZero { what: &'static str },
    #[error("{what} needs {needs}")]
    NeedsProtocol { what: String, needs: &'static str },
    #[error("more than one {what} match in one rule")]
    DuplicateMatch { what: &'static str },
    #[error("--tcp-flags mask {mask:#x} set {set:#x}: mask must be non-empty and hold set")]
    TcpFlags { mask: u8, set: u8 },
    #[error("--ctstate bits {bits:#x}: must name at least one known state")]
    CtStates { bits: u8 },
    #[error("{what} value {value:#x} is not inside mask {mask:#x} (or the mask is 0)")]
    MarkOutsideMask {
        what: &'static str,
        value: u32,
        mask: u32,
    },
    /// (Displayed in iptables' words: `Display for Target` is in
    /// [`crate::render`].)
    #[error("target \"{target}\" is not allowed in table {table}")]
    TargetNotInTable { target: Box<Target>, table: Table },
    #[error("insert position {position}: positions count from 1")]
    InsertPosition { position: u32 },
    #[error("chain {chain} jumps to itself")]
    SelfJump { chain: String },
    #[error("{count} {family} changes in one batch (at most 4096)")]
    TooManyChanges { family: Family, count: usize },
    #[error("{family} change #{index} ({change}): {source}")]
    InChange {
        family: Family,
        index: usize,
        change: Box<Change>,
        source: Box<ValidationError>,
    },
}

/// A batch that cannot be undone.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InverseError {
    #[error("flushing chain {chain} in table {table} cannot be undone")]
    Flush { table: Table, chain: String },
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    fn chain(name: &str) -> OwnedChain {
        OwnedChain::new(name).unwrap()
    }

    fn ifname(name: &str) -> IfName {
        IfName::new(name).unwrap()
    }

    fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(a, b, c, d))
    }

    fn append(table: Table, name: &str, rule: Rule) -> Change {
        Change::Append {
            table,
            chain: chain(name),
            rule,
        }
    }

    #[test]
    fn pages_keep_each_family_in_order_and_never_exceed_the_size() {
        let rule = |n: u16| {
            append(
                Table::Filter,
                "vpn_accept",
                Rule::new(Target::Accept).with(Match::mark(u32::from(n), 0xffff)),
            )
        };
        let batch = Batch {
            ipv4: (1..=5).map(rule).collect(),
            ipv6: (1..=2).map(rule).collect(),
        };
        let pages = batch.pages(2);
        let sizes: Vec<(usize, usize)> =
            pages.iter().map(|p| (p.ipv4.len(), p.ipv6.len())).collect();
        assert_eq!(sizes, [(2, 2), (2, 0), (1, 0)]);
        let mut again = Batch::new();
        for p in pages {
            again.extend(p);
        }
        assert_eq!(again, batch);
        assert_eq!(batch.pages(100).len(), 1);
        assert_eq!(batch.pages(0).len(), 5, "a size of 0 counts as 1");
        assert!(Batch::new().pages(3).is_empty());
        let only_v6 = Batch {
            ipv4: Vec::new(),
            ipv6: (1..=3).map(rule).collect(),
        };
        assert_eq!(only_v6.pages(2).len(), 2);
    }

    fn invalid(family: Family, change: Change) -> ValidationError {
        let mut batch = Batch::new();
        batch.push(family, change);
        match batch.validate().unwrap_err() {
            ValidationError::InChange { source, .. } => *source,
            other => panic!("not wrapped: {other:?}"),
        }
    }

    #[test]
    fn owned_chains_accept_catalog_and_interface_chains_only() {
        for ok in [
            "guest_forward",
            "ingress_port_firewall",
            "PREROUTING_arc_ns0",
            "POSTROUTING_mbimmux0.1",
            "rx_eth-1",
            "tx_vpn",
            "egress_wlan0",
            "patchpanel_FORWARD",
        ] {
            assert!(OwnedChain::new(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "FORWARD",
            "PREROUTING",
            "DOCKER",
            "HOSTCHAIN",
            "guest-forward",
            "PREROUTING_",
            "PREROUTING_-x",
            "PREROUTING_a b",
            "rx_eth0\n-A",
            "POSTROUTING_abcdefghijklmnop",
        ] {
            assert!(OwnedChain::new(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_chain_name_over_28_bytes_is_refused_naming_it() {
        let err = OwnedChain::new("POSTROUTING_abcdefghijklmno_").unwrap_err();
        assert!(
            err.to_string().contains("POSTROUTING_abcdefghijklmno_"),
            "{err}"
        );
    }

    #[test]
    fn decoding_an_unowned_chain_name_fails() {
        let json = r#"{"NewChain":{"table":"Filter","chain":"DOCKER"}}"#;
        assert!(serde_json::from_str::<Change>(json).is_err());
        let json = r#"{"NewChain":{"table":"Filter","chain":"rx_eth0"}}"#;
        assert!(serde_json::from_str::<Change>(json).is_ok());
    }

    #[test]
    fn comments_are_single_safe_tokens() {
        assert!(Comment::new("patchpanel").is_ok());
        for bad in ["", "two words", "-x", "a\"b", &"x".repeat(65)] {
            assert!(Comment::new(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn cidrs_refuse_host_bits_and_long_prefixes() {
        assert!(Cidr::new(v4(100, 115, 92, 0), 23).is_ok());
        assert!(Cidr::new(v4(100, 115, 92, 1), 23).is_err());
        assert!(Cidr::new(v4(10, 0, 0, 1), 33).is_err());
        assert!(Cidr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0).is_ok());
        assert!(Cidr::new(IpAddr::V6("fd00::1".parse().unwrap()), 64).is_err());
    }

    #[test]
    fn an_ipv4_address_in_an_ipv6_rule_is_refused_naming_it() {
        let rule = Rule::new(Target::Accept).with(Match::src(Cidr::host(v4(10, 0, 0, 1))));
        let err = invalid(Family::V6, append(Table::Filter, "guest_forward", rule));
        assert_eq!(
            err,
            ValidationError::FamilyMismatch {
                family: Family::V6,
                value: "10.0.0.1/32".into()
            }
        );
    }

    #[test]
    fn icmp_protocols_must_match_the_family() {
        let icmp = Rule::new(Target::Accept).with(Match::Protocol(Protocol::Icmp));
        let icmpv6 = Rule::new(Target::Accept).with(Match::Protocol(Protocol::Icmpv6));
        assert!(append(Table::Filter, "guest_forward", icmp.clone())
            .validate(Family::V4)
            .is_ok());
        assert!(append(Table::Filter, "guest_forward", icmp)
            .validate(Family::V6)
            .is_err());
        assert!(append(Table::Filter, "guest_forward", icmpv6)
            .validate(Family::V4)
            .is_err());
    }

    #[test]
    fn ports_need_a_tcp_or_udp_match_before_them() {
        let rule = Rule::new(Target::Accept).with(Match::DestinationPort(53));
        assert!(matches!(
            invalid(
                Family::V4,
                append(Table::Filter, "ingress_port_firewall", rule)
            ),
            ValidationError::NeedsProtocol { .. }
        ));
        let rule = Rule::new(Target::Accept)
            .with(Match::Protocol(Protocol::Udp))
            .with(Match::DestinationPort(0));
        assert_eq!(
            invalid(
                Family::V4,
                append(Table::Filter, "ingress_port_firewall", rule)
            ),
            ValidationError::PortZero { what: "--dport" }
        );
    }

    #[test]
    fn targets_are_refused_outside_their_table() {
        let mark = Rule::new(Target::SetMark { value: 1, mask: 1 });
        let e = invalid(Family::V4, append(Table::Filter, "guest_forward", mark));
        assert_eq!(
            e,
            ValidationError::TargetNotInTable {
                target: Box::new(Target::SetMark { value: 1, mask: 1 }),
                table: Table::Filter
            }
        );
        assert_eq!(
            e.to_string(),
            "target \"-j MARK --set-mark 0x1/0x1\" is not allowed in table filter"
        );
        let masq = Rule::new(Target::Masquerade);
        assert!(append(Table::Mangle, "apply_vpn_mark", masq)
            .validate(Family::V4)
            .is_err());
        let reject = Rule::new(Target::Reject);
        assert!(append(Table::Nat, "redirect_user_dns", reject)
            .validate(Family::V4)
            .is_err());
    }

    #[test]
    fn a_mark_value_outside_its_mask_is_refused() {
        let rule = Rule::new(Target::Return).with(Match::mark(0x100, 0xff));
        assert_eq!(
            invalid(Family::V4, append(Table::Mangle, "apply_vpn_mark", rule)),
            ValidationError::MarkOutsideMask {
                what: "--mark",
                value: 0x100,
                mask: 0xff
            }
        );
    }

    #[test]
    fn dnat_needs_a_same_family_address_and_a_protocol_for_a_port() {
        let dnat = |addr, port| Rule::new(Target::Dnat { addr, port });
        assert!(append(
            Table::Nat,
            "ingress_port_forwarding",
            dnat(v4(1, 2, 3, 4), None)
        )
        .validate(Family::V4)
        .is_ok());
        assert!(append(
            Table::Nat,
            "ingress_port_forwarding",
            dnat(v4(1, 2, 3, 4), None)
        )
        .validate(Family::V6)
        .is_err());
        assert!(matches!(
            invalid(
                Family::V4,
                append(
                    Table::Nat,
                    "ingress_port_forwarding",
                    dnat(v4(1, 2, 3, 4), Some(80))
                )
            ),
            ValidationError::NeedsProtocol { .. }
        ));
    }

    #[test]
    fn duplicate_interface_matches_and_position_zero_are_refused() {
        let rule = Rule::new(Target::Accept)
            .with(Match::iif(&ifname("a")))
            .with(Match::iif(&ifname("b")));
        assert_eq!(
            invalid(Family::V4, append(Table::Filter, "guest_forward", rule)),
            ValidationError::DuplicateMatch { what: "-i" }
        );
        let insert = Change::Insert {
            table: Table::Filter,
            chain: chain("guest_forward"),
            position: 0,
            rule: Rule::new(Target::Accept),
        };
        assert_eq!(
            invalid(Family::V4, insert),
            ValidationError::InsertPosition { position: 0 }
        );
    }

    #[test]
    fn a_validation_error_names_the_change_and_its_line() {
        let mut batch = Batch::new();
        batch.ipv4.push(append(
            Table::Filter,
            "guest_forward",
            Rule::new(Target::Accept),
        ));
        batch.ipv4.push(append(
            Table::Filter,
            "guest_forward",
            Rule::new(Target::Jump(chain("guest_forward"))),
        ));
        let text = batch.validate().unwrap_err().to_string();
        assert_eq!(
            text,
            "IPv4 change #1 (-A guest_forward -j guest_forward): chain guest_forward jumps to itself"
        );
    }

    #[test]
    fn inverse_reverses_and_swaps_changes() {
        let jump = Rule::new(Target::Jump(chain("PREROUTING_eth0")));
        let mark = Rule::new(Target::SetMark { value: 1, mask: 1 });
        let mut batch = Batch::new();
        batch.ipv4 = vec![
            Change::NewChain {
                table: Table::Mangle,
                chain: chain("PREROUTING_eth0"),
            },
            append(Table::Mangle, "PREROUTING_eth0", mark.clone()),
            Change::Insert {
                table: Table::Mangle,
                chain: chain("patchpanel_PREROUTING"),
                position: 1,
                rule: jump.clone(),
            },
        ];
        let inverse = batch.inverse().unwrap();
        assert_eq!(
            inverse.ipv4,
            vec![
                Change::Delete {
                    table: Table::Mangle,
                    chain: chain("patchpanel_PREROUTING"),
                    rule: jump.clone(),
                },
                Change::Delete {
                    table: Table::Mangle,
                    chain: chain("PREROUTING_eth0"),
                    rule: mark,
                },
                Change::DeleteChain {
                    table: Table::Mangle,
                    chain: chain("PREROUTING_eth0"),
                },
            ]
        );
        assert!(inverse.ipv6.is_empty());
        // Insert came back as Append: the same rule set, the position lost.
        let back = inverse.inverse().unwrap();
        assert_eq!(back.ipv4[..2], batch.ipv4[..2]);
        assert_eq!(
            back.ipv4[2],
            append(Table::Mangle, "patchpanel_PREROUTING", jump)
        );
    }

    #[test]
    fn a_flush_has_no_inverse() {
        let mut batch = Batch::new();
        batch.ipv6.push(Change::FlushChain {
            table: Table::Filter,
            chain: chain("vpn_lockdown"),
        });
        assert_eq!(
            batch.inverse().unwrap_err().to_string(),
            "flushing chain vpn_lockdown in table filter cannot be undone"
        );
        assert!(batch.inverse().is_err());
    }

    #[test]
    fn a_batch_survives_bincode_like_the_ipc_codec_uses() {
        let config = bincode::config::standard().with_limit::<65536>();
        let mut batch = Batch::new();
        batch.push_dual(append(
            Table::Filter,
            "guest_forward",
            Rule::new(Target::Accept)
                .with(Match::oif(&ifname("arc_ns0")))
                .with(Match::ctstate(
                    CtStates::RELATED.union(CtStates::ESTABLISHED),
                )),
        ));
        batch.ipv4.push(append(
            Table::Nat,
            "ingress_port_forwarding",
            Rule::new(Target::Dnat {
                addr: v4(100, 115, 92, 6),
                port: Some(5555),
            })
            .with(Match::Protocol(Protocol::Tcp))
            .with(Match::DestinationPort(5555)),
        ));
        let bytes = bincode::serde::encode_to_vec(&batch, config).unwrap();
        let (back, _): (Batch, usize) = bincode::serde::decode_from_slice(&bytes, config).unwrap();
        assert_eq!(back, batch);
    }

    fn mangle_rule(target: Target) -> Change {
        append(Table::Mangle, "apply_vpn_mark", Rule::new(target))
    }

    fn tcp_flags_rule(mask: u8, set: u8) -> Change {
        append(
            Table::Filter,
            "guest_forward",
            Rule::new(Target::Drop)
                .with(Match::Protocol(Protocol::Tcp))
                .with(Match::TcpFlags(TcpFlagsMatch {
                    mask: TcpFlags(mask),
                    set: TcpFlags(set),
                    negate: false,
                })),
        )
    }

    fn ctstate_rule(bits: u8) -> Change {
        append(
            Table::Filter,
            "guest_forward",
            Rule::new(Target::Accept).with(Match::ctstate(CtStates(bits))),
        )
    }

    #[test]
    fn mark_targets_with_their_value_inside_the_mask_are_accepted() {
        for target in [
            Target::SetMark {
                value: 0x100,
                mask: 0x3f00,
            },
            Target::SetXmark {
                value: 0x100,
                mask: 0x3f00,
            },
            Target::ConnmarkSet {
                value: 0x100,
                mask: 0x3f00,
            },
            Target::ConnmarkRestore { mask: 0x3f00 },
            Target::ConnmarkSave { mask: 0x3f00 },
            Target::ConnmarkRestoreMasks {
                nfmask: 0x3f00,
                ctmask: 0x3f00,
            },
        ] {
            assert_eq!(
                mangle_rule(target.clone()).validate(Family::V4),
                Ok(()),
                "{target:?}"
            );
        }
    }

    #[test]
    fn mark_targets_with_a_value_outside_their_mask_are_refused() {
        for target in [
            Target::SetMark {
                value: 0x4000,
                mask: 0x3f00,
            },
            Target::SetXmark {
                value: 0x4000,
                mask: 0x3f00,
            },
            Target::ConnmarkSet {
                value: 0x4000,
                mask: 0x3f00,
            },
        ] {
            assert_eq!(
                invalid(Family::V4, mangle_rule(target.clone())),
                ValidationError::MarkOutsideMask {
                    what: "MARK",
                    value: 0x4000,
                    mask: 0x3f00
                },
                "{target:?}"
            );
        }
    }

    #[test]
    fn mark_targets_with_a_zero_mask_are_refused() {
        for target in [
            Target::SetMark { value: 0, mask: 0 },
            Target::SetXmark { value: 0, mask: 0 },
            Target::ConnmarkSet { value: 0, mask: 0 },
        ] {
            assert!(
                matches!(
                    invalid(Family::V4, mangle_rule(target.clone())),
                    ValidationError::MarkOutsideMask { mask: 0, .. }
                ),
                "{target:?}"
            );
        }
    }

    #[test]
    fn connmark_restore_and_save_with_a_zero_mask_are_refused() {
        for target in [
            Target::ConnmarkRestore { mask: 0 },
            Target::ConnmarkSave { mask: 0 },
        ] {
            assert_eq!(
                invalid(Family::V4, mangle_rule(target.clone())),
                ValidationError::MarkOutsideMask {
                    what: "CONNMARK",
                    value: 0,
                    mask: 0
                },
                "{target:?}"
            );
        }
    }

    #[test]
    fn connmark_restore_with_a_zero_nfmask_or_ctmask_is_refused() {
        for (nfmask, ctmask) in [(0, 0x3f00), (0x3f00, 0)] {
            let target = Target::ConnmarkRestoreMasks { nfmask, ctmask };
            assert!(
                matches!(
                    invalid(Family::V4, mangle_rule(target)),
                    ValidationError::MarkOutsideMask {
                        what: "CONNMARK",
                        mask: 0,
                        ..
                    }
                ),
                "nfmask {nfmask:#x} ctmask {ctmask:#x}"
            );
        }
    }

    #[test]
    fn tcp_flags_with_every_flag_in_the_mask_are_accepted() {
        assert_eq!(tcp_flags_rule(0x3f, 0x02).validate(Family::V4), Ok(()));
    }

    #[test]
    fn tcp_flags_without_a_tcp_protocol_match_are_refused() {
        let rule = Rule::new(Target::Drop)
            .with(Match::Protocol(Protocol::Udp))
            .with(Match::TcpFlags(TcpFlagsMatch {
                mask: TcpFlags(0x12),
                set: TcpFlags(0x02),
                negate: false,
            }));

        let err = invalid(Family::V4, append(Table::Filter, "guest_forward", rule));

        assert!(
            matches!(err, ValidationError::NeedsProtocol { .. }),
            "{err:?}"
        );
    }

    #[test]
    fn tcp_flags_with_an_empty_mask_are_refused() {
        assert_eq!(
            invalid(Family::V4, tcp_flags_rule(0, 0)),
            ValidationError::TcpFlags { mask: 0, set: 0 }
        );
    }

    #[test]
    fn tcp_flags_with_a_mask_beyond_urg_are_refused() {
        assert_eq!(
            invalid(Family::V4, tcp_flags_rule(0x40, 0x40)),
            ValidationError::TcpFlags {
                mask: 0x40,
                set: 0x40
            }
        );
    }

    #[test]
    fn tcp_flags_setting_a_flag_outside_the_mask_are_refused() {
        assert_eq!(
            invalid(Family::V4, tcp_flags_rule(0x12, 0x01)),
            ValidationError::TcpFlags {
                mask: 0x12,
                set: 0x01
            }
        );
    }

    #[test]
    fn a_ctstate_naming_every_known_state_is_accepted() {
        assert_eq!(ctstate_rule(0x1f).validate(Family::V4), Ok(()));
    }

    #[test]
    fn a_ctstate_naming_no_state_is_refused() {
        assert_eq!(
            invalid(Family::V4, ctstate_rule(0)),
            ValidationError::CtStates { bits: 0 }
        );
    }

    #[test]
    fn a_ctstate_naming_an_unknown_state_is_refused() {
        assert_eq!(
            invalid(Family::V4, ctstate_rule(0x20)),
            ValidationError::CtStates { bits: 0x20 }
        );
    }

    #[test]
    fn foreign_and_builtin_chain_names_are_not_owned() {
        for name in ["DOCKER", "INPUT", "ts-forward", "f2b-sshd"] {
            assert!(!is_owned_chain_name(name), "{name}");
        }
    }

    #[test]
    fn catalog_and_interface_chain_names_are_owned() {
        for name in ["guest_forward", "rx_eth0"] {
            assert!(is_owned_chain_name(name), "{name}");
        }
    }

    #[test]
    fn tables_have_only_their_own_builtin_chains() {
        assert_eq!(
            (
                Table::Filter.has_builtin(BuiltinChain::Prerouting),
                Table::Nat.has_builtin(BuiltinChain::Forward),
                Table::Mangle.has_builtin(BuiltinChain::Forward),
            ),
            (false, false, true)
        );
    }

    #[test]
    fn chains_display_as_their_iptables_names() {
        assert_eq!(
            (
                Chain::Builtin(BuiltinChain::Postrouting).to_string(),
                Chain::Owned(chain("rx_eth0")).to_string(),
            ),
            ("POSTROUTING".to_string(), "rx_eth0".to_string())
        );
    }

    #[test]
    fn a_comment_serializes_as_its_text() {
        let json = serde_json::to_string(&Comment::new("patchpanel").unwrap()).unwrap();

        assert_eq!(json, "\"patchpanel\"");
    }

    #[test]
    fn union_of_overlapping_tcp_flags_keeps_the_common_flags() {
        let syn_ack = TcpFlags::SYN.union(TcpFlags::ACK);

        assert_eq!(syn_ack.union(TcpFlags::ACK), TcpFlags(0x12));
    }

    #[test]
    fn union_of_overlapping_ctstates_keeps_the_common_states() {
        let new_est = CtStates::NEW.union(CtStates::ESTABLISHED);

        assert_eq!(new_est.union(CtStates::NEW), CtStates(0x0a));
    }

    #[test]
    fn a_batch_with_changes_in_one_family_only_is_not_empty() {
        let change = append(Table::Filter, "guest_forward", Rule::new(Target::Accept));
        let (mut v4_only, mut v6_only) = (Batch::new(), Batch::new());
        v4_only.push(Family::V4, change.clone());
        v6_only.push(Family::V6, change);

        assert_eq!((v4_only.is_empty(), v6_only.is_empty()), (false, false));
    }

    fn batch_of(count: usize) -> Batch {
        let change = append(Table::Filter, "guest_forward", Rule::new(Target::Accept));
        let mut batch = Batch::new();
        batch.ipv6 = vec![change; count];
        batch
    }

    #[test]
    fn a_batch_of_exactly_the_maximum_changes_is_accepted() {
        assert_eq!(batch_of(MAX_CHANGES_PER_FAMILY).validate(), Ok(()));
    }

    #[test]
    fn a_batch_one_change_over_the_maximum_is_refused() {
        assert_eq!(
            batch_of(MAX_CHANGES_PER_FAMILY + 1).validate(),
            Err(ValidationError::TooManyChanges {
                family: Family::V6,
                count: MAX_CHANGES_PER_FAMILY + 1
            })
        );
    }
}
