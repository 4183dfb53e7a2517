use serde::{Deserialize, Serialize};

use crate::datapath::{Plan, PlanReport, WriterConfig};
use crate::names::{IfName, NetnsName};

/// Which process is at the other end of a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Role {
    Manager,
    DatapathWriter,
    NdProxy,
    McastForwarder,
    AdbProxy,
    SocketService,
    DhcpServer,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Manager => "manager",
            Role::DatapathWriter => "datapath-writer",
            Role::NdProxy => "ndproxy",
            Role::McastForwarder => "mcast-forwarder",
            Role::AdbProxy => "adb-proxy",
            Role::SocketService => "socket-service",
            Role::DhcpServer => "dhcp-server",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// First message in each direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub protocol_version: u32,
    pub role: Role,
}

/// Correlates a [`Request`] with its answer. Unique per channel.
pub type RequestId = u64;

/// Everything the manager sends to a helper.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ManagerMessage {
    Hello(Hello),
    Request { id: RequestId, body: Request },
}

/// Everything a helper sends to the manager.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HelperMessage {
    Hello(Hello),
    Response {
        id: RequestId,
        result: Result<Reply, HelperError>,
    },
    Event(Event),
}

/// Operations a helper performs on the manager's behalf.
///
/// Every request is idempotent: the manager replays the requests that make
/// up a helper's state to a respawned instance, and the kernel state may
/// already hold their effect. Non-exhaustive so that a helper's loop keeps a
/// fallback arm for requests meant for other helpers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Request {
    /// Liveness check; answered with [`Reply::Pong`] carrying the same nonce.
    Ping { nonce: u64 },
    /// Sets the helper's log verbosity. Part of every helper's replayed state.
    SetLogLevel(LogLevel),
    /// Datapath writer: what it owns and where. Replayed; required before
    /// any other datapath request.
    ConfigureWriter(WriterConfig),
    /// Datapath writer: creates patchpanel's firewall chains and jumps if
    /// missing (idempotent), with the host-traffic tagging of the layout
    /// config. Replayed.
    SetupFirewall(patchpanel_firewall::LayoutConfig),
    /// Datapath writer: the accounting counters of these uplinks (all if
    /// empty), zero samples left out, in pages that fit one message:
    /// `offset` 0 reads the kernel's counters once, later offsets page
    /// through that same reading. Answered with [`Reply::Counters`].
    ReadCounters { ifnames: Vec<IfName>, offset: u32 },
    /// Datapath writer: applies one operation's steps. Fds (pidfds) ride
    /// beside the request. Answered with [`Reply::Applied`].
    Apply(Plan),
    /// Datapath writer: removes everything patchpanel owns (links, named
    /// namespaces, routes, rules, firewall chains and jumps) except the
    /// listed links and namespaces and, if `keep_accounting`, the traffic
    /// accounting chains. Links are deleted after the answer (the writer's
    /// reaper) unless `wait`: then the answer waits until they are gone
    /// (a stop or a cleanup, after which the writer exits). Answered with
    /// [`Reply::Applied`].
    RemoveOwned {
        keep_links: Vec<IfName>,
        keep_netns: Vec<NetnsName>,
        keep_accounting: bool,
        wait: bool,
    },
    /// ndproxy: relays RS from the downlink to the uplink, RA from the
    /// uplink to the downlink, and NS/NA both ways (and between downlinks
    /// of the same uplink); sets both links all-multicast while any pair
    /// uses them. Answered with [`Reply::Done`], also when already proxying.
    /// Replayed.
    NdProxyStart {
        uplink_ifindex: u32,
        downlink_ifindex: u32,
    },
    /// ndproxy: stops what [`Request::NdProxyStart`] started for this pair.
    /// Answered with [`Reply::Done`], also when the pair was not proxied or
    /// its links are gone.
    NdProxyStop {
        uplink_ifindex: u32,
        downlink_ifindex: u32,
    },
    /// mcast-forwarder: forwards mDNS and SSDP between the pair's links
    /// (IPv4 and IPv6, the directions the pair allows), rewriting A records
    /// of the guest's address in IPv4 mDNS answers to the uplink's. Replaces
    /// an earlier pair for the same downlink. Answered with
    /// [`Reply::Done`]. Replayed.
    McastStart(McastPair),
    /// mcast-forwarder: stops what [`Request::McastStart`] started for this
    /// downlink. Answered with [`Reply::Done`], also when nothing ran.
    McastStop { uplink: IfName, downlink: IfName },
    /// adb-proxy: accepts on the listening TCP socket passed beside the
    /// request (one fd; the helper cannot open it) and relays each
    /// connection to `target`, at most `max_connections` at once. Replaces
    /// an earlier listener. Answered with [`Reply::Done`]. Replayed, with
    /// the same socket, which the manager keeps open.
    AdbListen {
        target: AdbTarget,
        max_connections: u32,
    },
    /// adb-proxy: stops accepting and closes every relayed connection.
    /// Answered with [`Reply::Done`], also when nothing ran.
    AdbStop,
    /// Datapath writer: after the host's rule set changed, brings the
    /// narrow accepts in line with the other firewalls and reports what of
    /// patchpanel's layout is missing. Answered with
    /// [`Reply::FirewallChecked`].
    CheckFirewall,
    /// Datapath writer: one page of everything the daemon's state asks of
    /// the firewall (guests, port rules, uplinks' accounting and pinning).
    /// Pages accumulate until `last`; then what is left of patchpanel's
    /// firewall is replaced by the layout of the last `SetupFirewall` and
    /// all pages (with nftables, in one kernel transaction). Answered with
    /// [`Reply::Done`] for a page, [`Reply::Rebuilt`] for the last.
    RebuildFirewall {
        page: patchpanel_firewall::Batch,
        last: bool,
    },
    /// Socket service: the networks a `TagSocket` may name (their interface
    /// indexes), replacing the previous list. Answered with [`Reply::Done`].
    SocketNetworks(Vec<u32>),
    /// Socket service: sets the tag's bits in the mark of the one socket
    /// passed beside (`TagSocket` on `org.chromium.PatchPanel`). Answered
    /// with [`Reply::Done`]; `InvalidArgument` for a descriptor that is not
    /// a socket or a network that is not known.
    TagSocket(patchpanel_firewall::fwmark::SocketTag),
    /// Datapath writer: sets the masked bits of a tracked connection's
    /// conntrack mark (ctnetlink). Answered with
    /// [`Reply::ConnmarkUpdated`].
    UpdateConnmark(patchpanel_firewall::conntrack::MarkUpdate),
    /// dhcp-server: serves DHCP on `ifname` with `config`, replacing an
    /// earlier config of that link. Answered with [`Reply::Done`].
    /// Replayed.
    DhcpServe {
        ifname: IfName,
        config: patchpanel_dhcp::LinkConfig,
    },
    /// dhcp-server: stops serving `ifname`. Answered with [`Reply::Done`],
    /// also when it was not served.
    DhcpStop { ifname: IfName },
}

/// One guest link forwarded to one uplink by the mcast-forwarder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct McastPair {
    pub uplink: IfName,
    /// The uplink's IPv4 address that guest A records are rewritten to.
    pub uplink_ipv4: Option<[u8; 4]>,
    pub downlink: IfName,
    /// The guest's private IPv4 address (A records to rewrite).
    pub guest_ipv4: Option<[u8; 4]>,
    /// Uplink -> guest.
    pub inbound: bool,
    /// Guest -> uplink.
    pub outbound: bool,
}

/// Where the ADB relay sends connections: the ARC container's adbd over
/// TCP, ARCVM's over vsock, or a unix socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AdbTarget {
    Tcp(std::net::SocketAddr),
    Vsock { cid: u32, port: u32 },
    Unix(String),
}

/// Successful answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    Pong {
        nonce: u64,
    },
    Done,
    /// [`Request::UpdateConnmark`]: `found` is false when the kernel
    /// tracks no such connection (nothing changed).
    ConnmarkUpdated {
        found: bool,
    },
    Applied(PlanReport),
    /// One page of counter samples; `next` is the offset of the next page.
    Counters {
        samples: Vec<patchpanel_firewall::counters::CounterSample>,
        next: Option<u32>,
    },
    /// What [`Request::CheckFirewall`] found and did.
    FirewallChecked {
        /// Narrow accepts added or removed, and problems, for the log;
        /// empty when nothing changed.
        coexistence: String,
        /// Chains and hooks of the layout that are not there.
        missing: Vec<String>,
    },
    /// The firewall was rebuilt; the final counts of the accounting rules
    /// it replaced, to carry over.
    Rebuilt {
        carried: Vec<patchpanel_firewall::counters::CounterSample>,
    },
}

/// Why a helper refused or failed a request. Whose fault it was decides
/// the D-Bus error the manager answers with: only [`Self::InvalidArgument`]
/// is the caller's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum HelperError {
    /// The request is not one this helper handles.
    #[error("{helper} does not handle {request}")]
    Unsupported { helper: Role, request: String },
    /// A value that came from a D-Bus client is not acceptable (a pid in
    /// the host's namespace, one the caller does not own...).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The helper refuses what the manager asked (a name it chose is taken,
    /// an object is not patchpanel's, a request is malformed): the
    /// manager's mistake or the host's state, never the caller's.
    #[error("refused: {0}")]
    Refused(String),
    /// The kernel or a tool refused the operation; `errno` when there was
    /// one (a tool's failure has none).
    #[error("{operation} failed: {message}{}", errno.map(|e| format!(" (errno {e})")).unwrap_or_default())]
    Os {
        operation: String,
        errno: Option<i32>,
        message: String,
    },
}

/// Unprompted notifications from a helper.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    /// ndproxy saw a guest use a global or ULA address on a downlink.
    NeighborDetected { ifindex: u32, addr: [u8; 16] },
    /// Datapath writer: another program changed the host's rule set.
    FirewallChanged(FirewallChange),
}

/// What the datapath writer saw of another program's firewall change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FirewallChange {
    /// Who and what, for the log (`nft (pid 42): delete table ip
    /// patchpanel_nat, ... (34 objects)`).
    pub by: String,
    /// Patchpanel's own tables or chains were changed: rebuild.
    pub ours: bool,
    /// Notifications were lost: what changed is not known in full.
    pub overrun: bool,
    /// Final counts of patchpanel's accounting rules that were deleted.
    pub lost_counters: Vec<patchpanel_firewall::counters::CounterSample>,
}

/// Mirrors `log::LevelFilter` without depending on `log` here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

#[cfg(test)]
mod size_tests {
    use super::*;
    use patchpanel_firewall::counters::{CounterSample, Direction};
    use patchpanel_firewall::{Family, TrafficSource};

    #[test]
    fn a_full_page_of_counters_fits_one_message() {
        let sample = CounterSample {
            family: Family::V6,
            direction: Direction::Tx,
            ifname: "abcdefghijklmno".into(),
            source: Some(TrafficSource::WifiLohs),
            packets: u64::MAX,
            bytes: u64::MAX,
        };
        let reply = HelperMessage::Response {
            id: u64::MAX,
            result: Ok(Reply::Counters {
                samples: vec![sample; crate::COUNTERS_PER_PAGE],
                next: Some(u32::MAX),
            }),
        };
        let bytes = crate::encode(&reply).expect("encodes");
        assert!(bytes.len() < crate::MAX_MESSAGE_SIZE, "{}", bytes.len());
    }

    #[test]
    fn a_message_that_encodes_within_the_limit_also_decodes() {
        use crate::datapath::{ApplyMode, Netns, Plan, Step};
        use crate::IfName;
        // Small enums take several times their wire size once decoded;
        // the decoder's allocation limit must allow for that.
        let step = Step::DeleteLink {
            netns: Netns::Host,
            name: IfName::new("arc_ns12345").unwrap(),
        };
        let mut steps = Vec::new();
        loop {
            steps.extend(std::iter::repeat_n(step.clone(), 16));
            let msg = ManagerMessage::Request {
                id: 1,
                body: Request::Apply(Plan {
                    label: "big".into(),
                    mode: ApplyMode::BestEffort,
                    steps: steps.clone(),
                }),
            };
            match crate::encode(&msg) {
                Ok(bytes) => {
                    crate::decode::<ManagerMessage>(&bytes).unwrap_or_else(|e| {
                        panic!("{} bytes, {} steps: {e}", bytes.len(), steps.len())
                    });
                }
                Err(crate::CodecError::TooLarge(_)) => break,
                Err(e) => panic!("{e}"),
            }
        }
        assert!(steps.len() > 1000);
    }

    #[test]
    fn roles_are_named_as_their_processes() {
        let names = [
            Role::Manager,
            Role::DatapathWriter,
            Role::NdProxy,
            Role::McastForwarder,
            Role::AdbProxy,
            Role::SocketService,
            Role::DhcpServer,
        ]
        .map(Role::name);

        assert_eq!(
            names,
            [
                "manager",
                "datapath-writer",
                "ndproxy",
                "mcast-forwarder",
                "adb-proxy",
                "socket-service",
                "dhcp-server"
            ]
        );
    }

    #[test]
    fn a_role_displays_as_its_name() {
        assert_eq!(Role::NdProxy.to_string(), "ndproxy");
    }

    #[test]
    fn a_request_naming_a_namespace_round_trips() {
        let msg = ManagerMessage::Request {
            id: 2,
            body: Request::RemoveOwned {
                keep_links: vec![],
                keep_netns: vec![NetnsName::new("connected_netns_0").unwrap()],
                keep_accounting: true,
                wait: false,
            },
        };

        let bytes = crate::encode(&msg).expect("encodes");

        assert_eq!(
            crate::decode::<ManagerMessage>(&bytes).expect("decodes"),
            msg
        );
    }
}
