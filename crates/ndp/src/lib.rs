//! The IPv6 neighbour discovery proxy (RFC 4389) that gives guests
//! addresses in their host's uplink /64 without DHCPv6 prefix delegation:
//! Router Solicitations and Advertisements are relayed between the uplink
//! and the guests' links so guests run SLAAC on the uplink's prefix, and
//! Neighbor Solicitations and Advertisements are relayed both ways so
//! on-link resolution works across the host, which routes between the
//! links with one /128 route per guest address.
//!
//! Layers, from pure to effectful:
//! * [`packet`]: parsing, validation and rewriting of RS/RA/NS/NA (byte
//!   slices in, bytes out; golden-tested and fuzzed);
//! * [`bpf`]: the socket filter passing only those packets;
//! * [`proxy`]: the forwarding rules and which addresses a guest may use,
//!   as a state machine fed with packets, netlink state and the time;
//! * [`claims`]: who holds which address, with a bound and a rate limit
//!   per downlink;
//! * [`socket`] and [`forwarder`]: the `AF_PACKET` socket, the netlink
//!   caches and the glue, used by the `patchpanel-ndproxy` helper and by
//!   the standalone `ndproxyd`.
//!
//! What the proxy does not do: change routes, addresses or sysctls. The
//! helper reports learned guests to the manager; `ndproxyd` (root, no
//! manager) installs the routes itself.

pub mod bpf;
pub mod claims;
pub mod forwarder;
pub mod packet;
pub mod proxy;
pub mod socket;

pub use claims::{Refusal, Refusals};
pub use forwarder::{Forwarder, ForwarderError, Notice, Tokens};
pub use packet::{NdError, NdPacket, NdType, Rewrite};
pub use proxy::{Guest, PairError, Proxy};
