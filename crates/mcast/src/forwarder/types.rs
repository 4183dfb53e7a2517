//! What the forwarder is told and what it tells: protocols, pairs, errors
//! and counters.

use super::*;

/// mDNS or SSDP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Mdns,
    Ssdp,
}

impl Protocol {
    pub fn port(self) -> u16 {
        match self {
            Protocol::Mdns => MDNS_PORT,
            Protocol::Ssdp => SSDP_PORT,
        }
    }

    pub fn group(self, family: Family) -> IpAddr {
        match (self, family) {
            (Protocol::Mdns, Family::V4) => MDNS_V4.into(),
            (Protocol::Mdns, Family::V6) => MDNS_V6.into(),
            (Protocol::Ssdp, Family::V4) => SSDP_V4.into(),
            (Protocol::Ssdp, Family::V6) => SSDP_V6.into(),
        }
    }

    /// 255 for mDNS (RFC 6762 §11), 2 for SSDP (UDA 1.1 §1.1.2).
    pub(super) fn ttl(self) -> u8 {
        match self {
            Protocol::Mdns => 255,
            Protocol::Ssdp => 2,
        }
    }

    pub(super) fn name(self) -> &'static str {
        match self {
            Protocol::Mdns => "mDNS",
            Protocol::Ssdp => "SSDP",
        }
    }
}

/// What a forwarder relays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Protocols {
    pub mdns: bool,
    pub ssdp: bool,
    pub broadcast: bool,
}

impl Protocols {
    pub const ALL: Protocols = Protocols {
        mdns: true,
        ssdp: true,
        broadcast: true,
    };

    pub(super) fn multicast(self) -> impl Iterator<Item = Protocol> {
        [(self.mdns, Protocol::Mdns), (self.ssdp, Protocol::Ssdp)]
            .into_iter()
            .filter_map(|(on, p)| on.then_some(p))
    }
}

/// One uplink-downlink pair and its directions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pair {
    pub uplink: String,
    pub downlink: String,
    /// The uplink's IPv4 address for the A-record rewrite; None: read it
    /// from the link for every rewrite.
    pub uplink_ipv4: Option<Ipv4Addr>,
    /// Uplink -> downlink.
    pub inbound: bool,
    /// Downlink -> uplink (and to the other guests).
    pub outbound: bool,
}

/// What went wrong starting a pair.
#[derive(Debug, thiserror::Error)]
pub enum ForwarderError {
    #[error("no link named {0:?}")]
    NoSuchLink(String),
    #[error("{0}")]
    Pair(String),
    #[error("{what}: {source}")]
    Os {
        what: String,
        #[source]
        source: io::Error,
    },
}

impl ForwarderError {
    pub fn errno(&self) -> Option<i32> {
        match self {
            ForwarderError::Os { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

/// Counters since start; [`Forwarder::stats`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Datagrams received on any socket.
    pub received: u64,
    /// Copies sent.
    pub sent: u64,
    /// mDNS responses whose A records were rewritten.
    pub rewritten: u64,
    /// mDNS messages from guests that did not parse (forwarded unchanged).
    pub unparsable: u64,
    /// IPv4 mDNS messages from guests longer than RFC 6762 allows (not
    /// forwarded to the LAN).
    pub mdns_too_long: u64,
    /// IPv4 mDNS messages from guests over their downlink's budget (not
    /// forwarded to the LAN).
    pub mdns_over_budget: u64,
    /// Datagrams longer than the buffer (dropped, not forwarded cut).
    pub truncated: u64,
    /// Copies of our own sends that came back (dropped).
    pub echoes: u64,
    /// Broadcasts not relayed: invalid, fragments, system ports, not ours.
    pub broadcast_ignored: u64,
    /// Session sockets opened for queries that expect a unicast answer.
    pub sessions: u64,
    /// Unicast answers relayed back to the querier.
    pub unicast_replies: u64,
    /// Sends that failed.
    pub send_errors: u64,
    /// Datagrams the kernel dropped before the forwarder could read them:
    /// a socket's receive buffer was full (the forwarder fell behind).
    pub receive_overflows: u64,
    /// Datagrams received with nowhere to go: from a downlink whose pair
    /// is not outbound, or an uplink none of whose pairs is inbound.
    pub unrouted: u64,
}

impl std::fmt::Display for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "received {}, sent {}, rewritten {}, unparsable {}, mDNS too long {}, \
             mDNS over budget {}, truncated {}, echoes {}, broadcasts ignored {}, sessions {}, \
             unicast replies {}, send errors {}, receive buffer overflows {}, \
             nowhere to go {}",
            self.received,
            self.sent,
            self.rewritten,
            self.unparsable,
            self.mdns_too_long,
            self.mdns_over_budget,
            self.truncated,
            self.echoes,
            self.broadcast_ignored,
            self.sessions,
            self.unicast_replies,
            self.send_errors,
            self.receive_overflows,
            self.unrouted
        )
    }
}
