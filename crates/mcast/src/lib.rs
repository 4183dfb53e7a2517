//! mDNS, SSDP and IPv4 broadcast forwarding between an uplink and guest
//! links, for services and discovery protocols that do not cross a router.
//!
//! Layers, from pure to effectful:
//! * [`packet`]: the mDNS A-record rewrite that carries a guest's answers
//!   across the host's IPv4 SNAT, and SSDP classification (golden-tested,
//!   fuzzed);
//! * [`budget`]: the token bucket that bounds what one guest's mDNS may
//!   cost the forwarder;
//! * [`echo`]: the loop guard's bounded memory of what was sent where;
//! * [`broadcast`]: parsing and building the IPv4/UDP packets of the
//!   broadcast relay, checksums included (golden-tested, fuzzed);
//! * [`socket`]: the group, session and raw sockets;
//! * [`forwarder`]: the engine, used by the `patchpanel-mcast-forwarder`
//!   helper and the standalone `mcastd`.

pub mod broadcast;
pub mod budget;
pub mod echo;
pub mod forwarder;
pub mod packet;
pub mod socket;

pub use forwarder::{Forwarder, ForwarderError, Pair, Protocol, Protocols, Stats};
