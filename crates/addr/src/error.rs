//! The one error type of this crate. Each variant names the pool, index or
//! address involved so that a D-Bus reply or a log line can say exactly what
//! was refused without the caller adding context.

use std::net::Ipv4Addr;

use crate::{GuestPool, Ipv4Subnet, Ipv6Subnet};

/// Why an address could not be parsed, configured, allocated or released.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddrError {
    /// A guest subnet needs room for a network, host, guest and broadcast
    /// address, so its prefix can be at most /30.
    #[error(
        "prefix length /{prefix_len} is invalid for a guest subnet: it must be at most /{max}"
    )]
    InvalidPrefixLength { prefix_len: u8, max: u8 },

    /// The base address has host bits set for the given prefix.
    #[error("{base}/{prefix_len} is not a network address: host bits are set")]
    NotNetworkAddress { base: Ipv4Addr, prefix_len: u8 },

    /// Text that should have been `a.b.c.d/n`, `x::y/n` or `aa:bb:cc:dd:ee:ff`.
    #[error("cannot parse {input:?} as {expected}")]
    Parse {
        input: String,
        expected: &'static str,
    },

    /// Pools hold between one and [`crate::MAX_SUBNETS`] subnets.
    #[error("pool {pool} asks for {count} subnets; it must hold between 1 and {max}")]
    InvalidPoolSize { pool: String, count: u32, max: u32 },

    /// The pool's last subnet would lie past 255.255.255.255.
    #[error("pool {pool} starting at {first} with {count} subnets runs past the end of the IPv4 address space")]
    PoolBeyondAddressSpace {
        pool: String,
        first: Ipv4Subnet,
        count: u32,
    },

    /// Two configured pools share addresses.
    #[error("pool {first} ({first_range}) overlaps pool {second} ({second_range})")]
    PoolsOverlap {
        first: GuestPool,
        first_range: String,
        second: GuestPool,
        second_range: String,
    },

    /// Every subnet of the pool is in use.
    #[error("pool {pool} is exhausted: all {count} subnets are in use")]
    PoolExhausted { pool: String, count: u32 },

    /// Indices are 1-based; 0, negative values and values above the pool's
    /// count are refused. `index` is wide enough to report what was asked.
    #[error("subnet index {index} is out of range for pool {pool}: valid indices are 1..={count}")]
    IndexOutOfRange {
        pool: String,
        index: i64,
        count: u32,
    },

    /// An explicit index was requested (or re-adopted) twice.
    #[error("subnet index {index} of pool {pool} is already in use")]
    IndexTaken { pool: String, index: u32 },

    /// A release for an index that is not allocated: a double release or a
    /// record from another layout.
    #[error("subnet index {index} of pool {pool} is not allocated")]
    IndexNotAllocated { pool: String, index: u32 },

    /// Only Parallels VMs choose their subnet index; every other pool is
    /// first-fit so its addresses stay deterministic.
    #[error("pool {pool} does not accept an explicit subnet index (asked for {index}); only {only} does")]
    ExplicitIndexNotSupported {
        pool: GuestPool,
        index: u32,
        only: GuestPool,
    },

    /// A persisted allocation no longer matches the configured layout, e.g.
    /// the pool was reconfigured between runs.
    #[error("recorded subnet {recorded} for index {index} of pool {pool} does not match the configured subnet {expected}")]
    AdoptedSubnetMismatch {
        pool: GuestPool,
        index: u32,
        recorded: Ipv4Subnet,
        expected: Ipv4Subnet,
    },

    /// An IPv6 prefix length above 128.
    #[error("prefix length /{prefix_len} is invalid for IPv6")]
    InvalidIpv6PrefixLength { prefix_len: u8 },

    /// The IPv6 base address has bits set past its prefix.
    #[error("{subnet_text} is not an IPv6 network address: host bits are set")]
    NotIpv6NetworkAddress { subnet_text: String },

    /// The subnet is not a /64 inside `fd00::/8`.
    #[error("{subnet} is not a /64 inside fd00::/8")]
    NotUlaSubnet { subnet: Ipv6Subnet },

    /// The /64 is reserved (DNS proxy) or already handed out.
    #[error("IPv6 subnet {subnet} is reserved or already allocated")]
    Ipv6SubnetTaken { subnet: Ipv6Subnet },

    /// The /64 was never allocated here, or was already released.
    #[error("IPv6 subnet {subnet} is not allocated")]
    Ipv6SubnetNotAllocated { subnet: Ipv6Subnet },

    /// The address is outside the subnet, is its base address, or was already
    /// given out.
    #[error("address {addr} cannot be used in {subnet}: it is outside it, its base address, or already given out")]
    Ipv6AddressUnusable {
        subnet: Ipv6Subnet,
        addr: std::net::Ipv6Addr,
    },

    /// Random draws kept colliding; with a working RNG this does not happen,
    /// so it points at a broken or exhausted [`crate::RandomSource`].
    #[error("gave up finding an unused {what} after {attempts} random draws")]
    RandomRetriesExhausted { what: &'static str, attempts: u32 },

    /// The random source itself failed.
    #[error("random source failed: {reason}")]
    RandomUnavailable { reason: String },
}
