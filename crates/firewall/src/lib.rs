//! Patchpanel's firewall: typed changes, their rendering, the backend that
//! applies them, the chain layout, and the rules policy asks for.
//!
//! The manager (unprivileged) turns policy into a [`Batch`] of typed
//! [`Change`]s with the pure functions of [`guest`]; the batch crosses the
//! IPC boundary; the datapath writer (privileged) re-validates it
//! ([`Batch::validate`]) and applies it through a [`FirewallBackend`]
//! ([`IptablesRestore`]), all or nothing. Rollback is the generated inverse
//! batch ([`Batch::inverse`]).
//!
//! Modules:
//! * [`model`]: the vocabulary (families, tables, chains, matches, targets,
//!   rules, changes, batches) and its validation;
//! * [`render`]: batches as `iptables-restore --noflush` text;
//! * [`backend`] and [`iptables`]: the backend trait and the
//!   `iptables-nft-restore` implementation;
//! * [`save`]: reading `iptables-save` output;
//! * [`catalog`]: the names of the chains patchpanel owns;
//! * [`layout`]: the chains patchpanel owns and its hooks in built-in chains;
//! * [`fwmark`]: the fwmark bit layout and traffic sources;
//! * [`guest`]: per-guest and per-uplink rules;
//! * [`auto_dnat`]: unsolicited inbound traffic on an uplink sent to a guest
//!   (ARC);
//! * [`dns`]: SetDnsRedirectionRule's redirections to dns-proxy;
//! * [`ports`]: ModifyPortRule's access, lockdown and forwarding rules;
//! * [`counters`]: traffic accounting chains and their jumps;
//! * [`conntrack`]: a connection's conntrack mark, over ctnetlink;
//! * [`conflicts`]: warnings about other firewalls that would drop guest
//!   traffic.

pub mod auto_dnat;
pub mod backend;
pub mod catalog;
pub mod conflicts;
pub mod conntrack;
pub mod counters;
pub mod dns;
pub mod fwmark;
pub mod guest;
pub mod iptables;
pub mod layout;
pub mod model;
pub mod nft;
pub mod ports;
pub mod render;
pub mod save;
pub mod vpn;

pub use backend::{
    FirewallBackend, FirewallChoice, FirewallError, RemoveAllError, Removed, SetupReport,
};
pub use fwmark::TrafficSource;
pub use iptables::{IptablesRestore, ToolPaths};
pub use layout::{Layout, LayoutConfig};
pub use model::{
    Batch, BuiltinChain, Chain, Change, Cidr, Family, InverseError, Match, OwnedChain, Rule, Table,
    Target, ValidationError,
};
pub use nft::Nftables;
