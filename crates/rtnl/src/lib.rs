//! A small synchronous rtnetlink library for patchpanel's datapath.
//!
//! Why it exists: the privileged datapath writer must create veth pairs and
//! bridges, set addresses, routes and policy rules, in the host namespace and
//! in guest namespaces; the unprivileged manager must read the same state and
//! follow changes. Both want blocking, one-request-at-a-time calls that say
//! exactly what failed (operation, input, errno), not an async runtime.
//!
//! What it owns:
//! * [`Rtnl`]: one `NETLINK_ROUTE` socket bound to one network namespace
//!   (made by a brief `setns` on a helper thread, never on the caller's
//!   thread), with typed requests for [links](Link), [addresses](AddressInfo),
//!   [routes](Route) and [rules](Rule). Every request is acked by the kernel;
//!   "already so" answers (EEXIST on add, ENODEV/ESRCH/ENOENT/EADDRNOTAVAIL on
//!   delete) come back as `Ok(false)` so callers can be idempotent.
//! * [`RtnlMonitor`]: a non-blocking multicast socket for link, address and
//!   route changes, with kernel-side overruns surfaced as
//!   [`RtnlEvent::Overrun`] so the caller re-dumps instead of drifting.
//! * [`netns`]: named network namespaces (`ip netns add/attach/delete`).
//! * [`sysctl`]: `/proc/sys/net` reads and writes in any namespace.
//! * [`tun`]: persistent TAP devices for VMs (`/dev/net/tun` ioctls).
//!
//! Messages are built and parsed with `neli`'s typed structures; only the
//! outer framing of received datagrams is read by hand (see `wire`).
//! Nothing here reads `/sys/class/net`: it shows the namespace sysfs was
//! mounted in, not the socket's.

mod address;
mod error;
mod link;
mod monitor;
pub mod neigh;
pub mod netns;
mod route;
mod rule;
mod socket;
mod sys;
pub mod sysctl;
pub mod tun;
mod wire;

pub use address::AddressInfo;
pub use error::{Result, RtnlError};
pub use link::Link;
pub use monitor::{MonitorGroups, RtnlEvent, RtnlMonitor};
pub use route::{LinkRef, Route, RouteScope, RouteType, RT_TABLE_MAIN};
pub use rule::Rule;
pub use socket::Rtnl;

/// Entry points for the fuzz targets (`fuzz/`): the parsers every byte
/// the kernel sends goes through, called as the monitor and the dumps call
/// them. Not for other use.
#[doc(hidden)]
pub mod fuzz {
    /// A notification datagram, as the uplink monitor decodes it.
    pub fn decode_datagram(buf: &[u8]) -> Vec<crate::RtnlEvent> {
        let mut events = Vec::new();
        crate::monitor::decode_datagram(buf, &mut events);
        events
    }

    /// A dump reply: every message through the parser of its type, and
    /// status messages through the ack parser. Returns how many parsed.
    pub fn parse_dump(buf: &[u8]) -> usize {
        let Ok(msgs) = crate::wire::split_messages(buf) else {
            return 0;
        };
        let mut parsed = 0;
        for m in msgs {
            let ok = match m.ty {
                libc::RTM_NEWLINK | libc::RTM_DELLINK => crate::link::parse_link(m.payload).is_ok(),
                libc::RTM_NEWADDR | libc::RTM_DELADDR => {
                    crate::address::parse_address(m.payload).is_ok()
                }
                libc::RTM_NEWROUTE | libc::RTM_DELROUTE => {
                    crate::route::parse_route(m.payload).is_ok()
                }
                libc::RTM_NEWRULE | libc::RTM_DELRULE => crate::rule::parse_rule(m.payload).is_ok(),
                libc::RTM_NEWNEIGH | libc::RTM_DELNEIGH => {
                    crate::neigh::parse_neighbor(m.payload).is_ok()
                }
                ty => crate::wire::parse_status(ty, m.flags, m.payload).is_ok(),
            };
            parsed += usize::from(ok);
        }
        parsed
    }
}

use std::net::IpAddr;

/// An IP address family, for dumps and rules that carry no address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    /// IPv4 (`AF_INET`).
    V4,
    /// IPv6 (`AF_INET6`).
    V6,
}

impl Family {
    /// The family of an address.
    pub fn of(addr: &IpAddr) -> Family {
        match addr {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    /// The `AF_*` constant.
    pub fn af(self) -> u8 {
        match self {
            Family::V4 => libc::AF_INET as u8,
            Family::V6 => libc::AF_INET6 as u8,
        }
    }

    /// The longest prefix of this family (32 or 128).
    pub fn max_prefix_len(self) -> u8 {
        match self {
            Family::V4 => 32,
            Family::V6 => 128,
        }
    }

    pub(crate) fn from_af(af: u8) -> Option<Family> {
        match i32::from(af) {
            libc::AF_INET => Some(Family::V4),
            libc::AF_INET6 => Some(Family::V6),
            _ => None,
        }
    }
}

/// Longest interface name the kernel accepts (`IFNAMSIZ - 1`).
pub const MAX_IFNAME_LEN: usize = 15;
/// Longest interface alias the kernel accepts (`IFALIASZ - 1`).
pub const MAX_ALIAS_LEN: usize = 255;

/// Checks an interface name the way the kernel's `dev_valid_name` does, so a
/// bad name fails here with the name in the message rather than as EINVAL.
pub fn validate_ifname(name: &str) -> Result<()> {
    let reason = if name.is_empty() {
        Some("empty")
    } else if name.len() > MAX_IFNAME_LEN {
        Some("longer than 15 bytes")
    } else if name == "." || name == ".." {
        Some("is . or ..")
    } else if name
        .chars()
        .any(|c| c == '/' || c == ':' || c == '\0' || c.is_whitespace())
    {
        Some("contains '/', ':', NUL or whitespace")
    } else {
        None
    };
    match reason {
        Some(r) => Err(RtnlError::invalid("interface name", name, r)),
        None => Ok(()),
    }
}

pub(crate) fn validate_alias(alias: &str) -> Result<()> {
    if alias.len() > MAX_ALIAS_LEN {
        return Err(RtnlError::invalid(
            "interface alias",
            alias,
            "longer than 255 bytes",
        ));
    }
    if alias.contains('\0') {
        return Err(RtnlError::invalid("interface alias", alias, "contains NUL"));
    }
    Ok(())
}

pub(crate) fn validate_prefix(what: &'static str, addr: &IpAddr, prefix_len: u8) -> Result<()> {
    let max = Family::of(addr).max_prefix_len();
    if prefix_len > max {
        return Err(RtnlError::invalid(
            what,
            format!("{addr}/{prefix_len}"),
            format!("prefix length above {max}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seed(name: &str) -> Vec<u8> {
        let path = format!(
            "{}/../../fuzz/seeds/uplink_netlink/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        bytes[1..].to_vec() // the first byte picks the parser in the target
    }

    /// The fuzz seeds (real kernel replies, `fuzz/make-seeds.py`) reach the
    /// parsers: every message of each dump parses, and the notifications
    /// decode into events.
    #[test]
    fn the_fuzz_seeds_are_kernel_replies_the_parsers_understand() {
        for name in [
            "dump-links",
            "dump-addrs",
            "dump-routes4",
            "dump-routes6",
            "dump-rules",
            "dump-neigh",
        ] {
            let buf = seed(name);
            let total = wire::split_messages(&buf).unwrap().len();
            assert!(total >= 2, "{name}: {total} messages");
            assert_eq!(fuzz::parse_dump(&buf), total, "{name}");
        }
        let dir = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../fuzz/seeds/uplink_netlink"
        );
        let events: usize = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("event-"))
            .map(|n| fuzz::decode_datagram(&seed(&n)).len())
            .sum();
        assert!(events >= 5, "{events} events");
    }

    #[test]
    fn ifname_validation_accepts_kernel_names() {
        for ok in ["eth0", "vmtap0", "arc_ns0", "veth.1-x", "a23456789012345"] {
            validate_ifname(ok).unwrap();
        }
    }

    #[test]
    fn ifname_validation_rejects_what_the_kernel_rejects() {
        for bad in ["", ".", "..", "a/b", "a:b", "a b", "a234567890123456"] {
            assert!(validate_ifname(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn prefix_validation_is_per_family() {
        let v4: IpAddr = "10.0.0.0".parse().unwrap();
        let v6: IpAddr = "fd00::".parse().unwrap();
        assert!(validate_prefix("route", &v4, 32).is_ok());
        assert!(validate_prefix("route", &v4, 33).is_err());
        assert!(validate_prefix("route", &v6, 128).is_ok());
        assert!(validate_prefix("route", &v6, 129).is_err());
    }
}
