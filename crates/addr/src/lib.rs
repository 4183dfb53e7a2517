//! Address bookkeeping for patchpanel guests.
//!
//! Every guest network patchpanel builds (ARC, Crostini/Termina, LXD
//! containers, Parallels, ConnectNamespace) needs an IPv4 subnet, MAC
//! addresses and sometimes a private IPv6 /64. This crate owns the decision of
//! *which* addresses those are, and nothing else: it never touches the kernel,
//! files or the network, so the service layer can ask it for addresses, record
//! the answers in its state file, and rebuild it from that file after a
//! restart.
//!
//! * [`Ipv4Subnet`] / [`SubnetPool`]: a run of equal-sized subnets handed out
//!   first-fit by 1-based index, so addresses are deterministic for a fixed
//!   start order.
//! * [`AddressManager`]: the guest pools of the fixed 100.115.92.0/23 layout
//!   ([`GuestPool`]), overridable per pool and checked for overlaps, plus the
//!   MAC and IPv6 ULA allocators.
//! * [`MacGenerator`]: random locally administered MACs and the stable
//!   `42:37:05:13:17:<index>` family used by ARCVM.
//! * [`UlaAllocator`]: random /64s inside `fd00::/8` for ConnectNamespace.
//!
//! Allocations are plain, serialisable records rather than RAII handles: their
//! lifetime is the service's business (a state file outlives the process), and
//! the service returns them explicitly on teardown.
//!
//! Randomness comes through the small [`RandomSource`] trait so tests and
//! benchmarks can replay a fixed sequence; production uses [`OsRandom`].

mod error;
mod ipv4;
mod ipv6;
mod mac;
mod manager;
mod pool;
mod random;

pub use error::AddrError;
pub use ipv4::{Ipv4Subnet, GUEST_ADDRESS_SPACE, MAX_GUEST_PREFIX_LEN};
pub use ipv6::{Ipv6Subnet, UlaAllocator, DNS_PROXY_ULA_SUBNET, ULA_SPACE, ULA_SUBNET_PREFIX_LEN};
pub use mac::{MacAddr, MacGenerator, STABLE_MAC_PREFIX};
pub use manager::{AddressManager, GuestPool, GuestSubnet, PoolConfig};
pub use pool::{Allocation, SubnetPool, MAX_SUBNETS};
pub use random::{OsRandom, RandomSource, SeededRandom, MAX_RANDOM_ATTEMPTS};
