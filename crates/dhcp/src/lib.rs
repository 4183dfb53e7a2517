//! A DHCPv4 server for one guest link (RFC 2131), pure: a request's bytes
//! in, a reply's bytes (and where to send them) or the reason it was
//! dropped out. The helper (`helpers/dhcp-server`) owns the sockets.
//!
//! A guest link has exactly one address to give: the one the daemon
//! allocated for that guest (the guest end of the TAP's /30, or of the
//! namespace's veth). The server never hands out anything else:
//!
//! * DISCOVER: an OFFER of that address, with the router (the host end),
//!   the DNS servers, the MTU and the lease time;
//! * REQUEST (selecting, init-reboot, renewing, rebinding): an ACK when it
//!   asks for that address, a NAK when it asks for any other (whoever
//!   asks); a REQUEST that names another server is not ours;
//! * RELEASE and DECLINE end the lease; INFORM gets the options without an
//!   address.
//!
//! The address is bound to the first client (hardware address) that takes
//! it, for as long as its lease runs: another client on the same link
//! (a second VM behind the TAP, a spoofed hardware address) is dropped and
//! counted until the lease expires or is released. Malformed, oversized,
//! relayed and non-request packets are dropped and counted; nothing here
//! panics on any input (`fuzz/fuzz_targets/dhcp_server.rs`).
//!
//! The same policy serves a tethered or local-only network once it learns
//! more than one address (a pool instead of [`LinkConfig::client`]); see
//! docs/architecture.md.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

pub use dhcproto::v4::{DhcpOption, MessageType, Opcode, OptionCode};
use dhcproto::v4::{Flags, HType, Message};
use dhcproto::{Decodable, Decoder, Encodable, Encoder};
use serde::{Deserialize, Serialize};

/// The largest request taken: an Ethernet frame's payload. RFC 2131's
/// minimum is 576 octets; anything above 1500 did not come from a guest on
/// one link.
pub const MAX_REQUEST: usize = 1500;

/// The client's port.
pub const CLIENT_PORT: u16 = 68;
/// The server's port.
pub const SERVER_PORT: u16 = 67;

/// What a link's one client gets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkConfig {
    /// The host's address on the link: the server identifier and router.
    pub server: Ipv4Addr,
    /// The one address this link gives.
    pub client: Ipv4Addr,
    pub prefix_len: u8,
    /// DNS servers to announce (option 6); may be empty.
    pub dns: Vec<Ipv4Addr>,
    /// MTU to announce (option 26), if not the default.
    pub mtu: Option<u16>,
    pub lease_secs: u32,
}

impl LinkConfig {
    /// Why the config cannot serve, if it cannot: both addresses in one
    /// subnet of 1..=30 bits, distinct, neither the network nor the
    /// broadcast address; a lease of at least a minute.
    pub fn check(&self) -> Result<(), String> {
        if !(1..=30).contains(&self.prefix_len) {
            return Err(format!("prefix length {} (1-30)", self.prefix_len));
        }
        let mask = self.mask();
        let net = |a: Ipv4Addr| u32::from(a) & u32::from(mask);
        if net(self.server) != net(self.client) {
            return Err(format!(
                "{} and {} are not in one /{}",
                self.server, self.client, self.prefix_len
            ));
        }
        for a in [self.server, self.client] {
            if a == self.network() || a == self.broadcast() {
                return Err(format!("{a} is the network or broadcast address"));
            }
        }
        if self.server == self.client {
            return Err(format!("server and client are both {}", self.client));
        }
        if self.lease_secs < 60 {
            return Err(format!("lease of {} s (at least 60)", self.lease_secs));
        }
        Ok(())
    }

    pub fn mask(&self) -> Ipv4Addr {
        Ipv4Addr::from(
            u32::MAX
                .checked_shl(32 - u32::from(self.prefix_len))
                .unwrap_or(0),
        )
    }

    fn network(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.client) & u32::from(self.mask()))
    }

    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.client) | !u32::from(self.mask()))
    }
}

/// Why a packet got no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum DropReason {
    /// Longer than [`MAX_REQUEST`].
    Oversized,
    /// Not a DHCP message.
    Malformed,
    /// A reply, or a request that is not Ethernet with a 6-byte address.
    NotARequest,
    /// It came through a relay (`giaddr`): guests are on the link.
    Relayed,
    /// No or an unknown message type, or one servers do not answer.
    UnknownType,
    /// A REQUEST or RELEASE meant for another server.
    OtherServer,
    /// The link's address is leased to another hardware address.
    OtherClient,
}

impl DropReason {
    pub const ALL: [DropReason; 7] = [
        DropReason::Oversized,
        DropReason::Malformed,
        DropReason::NotARequest,
        DropReason::Relayed,
        DropReason::UnknownType,
        DropReason::OtherServer,
        DropReason::OtherClient,
    ];

    pub fn name(self) -> &'static str {
        match self {
            DropReason::Oversized => "oversized",
            DropReason::Malformed => "malformed",
            DropReason::NotARequest => "not a request",
            DropReason::Relayed => "relayed",
            DropReason::UnknownType => "unknown type",
            DropReason::OtherServer => "for another server",
            DropReason::OtherClient => "another client",
        }
    }
}

/// Where a reply goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    /// 255.255.255.255:68 on the link (the client has no address yet, or
    /// asked for broadcast).
    Broadcast,
    /// The client's own address, port 68 (it is renewing).
    Unicast(Ipv4Addr),
}

/// What to do with one packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Reply {
        bytes: Vec<u8>,
        to: Destination,
        kind: MessageType,
    },
    /// Handled, nothing to send (RELEASE, DECLINE).
    Done,
    Dropped(DropReason),
}

/// The hardware address holding the lease, and until when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Lease {
    mac: [u8; 6],
    until: Instant,
}

/// One link's server state.
#[derive(Debug, Clone)]
pub struct Server {
    config: LinkConfig,
    lease: Option<Lease>,
}

impl Server {
    pub fn new(config: LinkConfig) -> Server {
        Server {
            config,
            lease: None,
        }
    }

    pub fn config(&self) -> &LinkConfig {
        &self.config
    }

    /// Replaces the config (the daemon's view changed: DNS servers, MTU);
    /// a lease on the same client address stays.
    pub fn reconfigure(&mut self, config: LinkConfig) {
        if config.client != self.config.client {
            self.lease = None;
        }
        self.config = config;
    }

    /// The hardware address holding the lease at `now`, if any.
    pub fn leased_to(&self, now: Instant) -> Option<[u8; 6]> {
        self.lease.filter(|l| l.until > now).map(|l| l.mac)
    }

    /// Answers one request.
    pub fn handle(&mut self, packet: &[u8], now: Instant) -> Outcome {
        if packet.len() > MAX_REQUEST {
            return Outcome::Dropped(DropReason::Oversized);
        }
        if !options_are_safe(packet) {
            return Outcome::Dropped(DropReason::Malformed);
        }
        let Ok(msg) = Message::decode(&mut Decoder::new(packet)) else {
            return Outcome::Dropped(DropReason::Malformed);
        };
        if msg.opcode() != Opcode::BootRequest || msg.htype() != HType::Eth || msg.hlen() != 6 {
            return Outcome::Dropped(DropReason::NotARequest);
        }
        if !msg.giaddr().is_unspecified() {
            return Outcome::Dropped(DropReason::Relayed);
        }
        let Some(mac) = msg
            .chaddr()
            .get(..6)
            .and_then(|m| <[u8; 6]>::try_from(m).ok())
        else {
            return Outcome::Dropped(DropReason::NotARequest);
        };
        let Some(kind) = msg.opts().msg_type() else {
            return Outcome::Dropped(DropReason::UnknownType);
        };
        let ours = match msg.opts().get(OptionCode::ServerIdentifier) {
            Some(DhcpOption::ServerIdentifier(id)) => Some(*id == self.config.server),
            _ => None,
        };
        let free_for = |lease: Option<Lease>| match lease {
            Some(l) if l.until > now => l.mac == mac,
            _ => true,
        };
        match kind {
            MessageType::Discover => {
                if !free_for(self.lease) {
                    return Outcome::Dropped(DropReason::OtherClient);
                }
                self.reply(&msg, MessageType::Offer, Some(self.config.client))
            }
            MessageType::Request => {
                if ours == Some(false) {
                    // The client chose another server's offer.
                    return Outcome::Dropped(DropReason::OtherServer);
                }
                let asked = match msg.opts().get(OptionCode::RequestedIpAddress) {
                    Some(DhcpOption::RequestedIpAddress(a)) => *a,
                    _ => msg.ciaddr(),
                };
                // Any other address is wrong on this link, whoever asks
                // (another guest's, one from a previous network).
                if asked != self.config.client {
                    return self.reply(&msg, MessageType::Nak, None);
                }
                if !free_for(self.lease) {
                    return Outcome::Dropped(DropReason::OtherClient);
                }
                self.lease = Some(Lease {
                    mac,
                    until: now + Duration::from_secs(u64::from(self.config.lease_secs)),
                });
                self.reply(&msg, MessageType::Ack, Some(self.config.client))
            }
            MessageType::Release | MessageType::Decline => {
                if ours == Some(false) {
                    return Outcome::Dropped(DropReason::OtherServer);
                }
                if self.lease.is_some_and(|l| l.mac == mac) {
                    self.lease = None;
                }
                Outcome::Done
            }
            MessageType::Inform => self.reply(&msg, MessageType::Ack, None),
            _ => Outcome::Dropped(DropReason::UnknownType),
        }
    }

    /// A reply of `kind` to `req`; `yiaddr` for OFFER and ACK of an
    /// address, none for NAK and an INFORM's ACK.
    fn reply(&self, req: &Message, kind: MessageType, yiaddr: Option<Ipv4Addr>) -> Outcome {
        let c = &self.config;
        let mut msg = Message::new_with_id(
            req.xid(),
            if kind == MessageType::Nak {
                Ipv4Addr::UNSPECIFIED
            } else {
                req.ciaddr()
            },
            yiaddr.unwrap_or(Ipv4Addr::UNSPECIFIED),
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            req.chaddr(),
        );
        msg.set_opcode(Opcode::BootReply)
            .set_htype(HType::Eth)
            .set_flags(req.flags());
        let opts = msg.opts_mut();
        opts.insert(DhcpOption::MessageType(kind));
        opts.insert(DhcpOption::ServerIdentifier(c.server));
        if kind != MessageType::Nak {
            opts.insert(DhcpOption::SubnetMask(c.mask()));
            opts.insert(DhcpOption::BroadcastAddr(c.broadcast()));
            opts.insert(DhcpOption::Router(vec![c.server]));
            if !c.dns.is_empty() {
                opts.insert(DhcpOption::DomainNameServer(c.dns.clone()));
            }
            if let Some(mtu) = c.mtu {
                opts.insert(DhcpOption::InterfaceMtu(mtu));
            }
            if yiaddr.is_some() {
                opts.insert(DhcpOption::AddressLeaseTime(c.lease_secs));
                opts.insert(DhcpOption::Renewal(c.lease_secs / 2));
                opts.insert(DhcpOption::Rebinding(c.lease_secs / 8 * 7));
            }
        }
        let mut bytes = Vec::with_capacity(300);
        if msg.encode(&mut Encoder::new(&mut bytes)).is_err() {
            // Only our own options are in it; cannot happen, but never
            // panic in the server.
            return Outcome::Dropped(DropReason::Malformed);
        }
        // RFC 2131 4.1: a client with an address (renewing, INFORM) gets a
        // unicast, unless it asked for broadcast; a NAK always broadcasts.
        let to = match req.ciaddr() {
            a if !a.is_unspecified() && kind != MessageType::Nak && !req.flags().broadcast() => {
                Destination::Unicast(a)
            }
            _ => Destination::Broadcast,
        };
        Outcome::Reply { bytes, to, kind }
    }
}

/// Whether `packet`'s options may go to `dhcproto`'s decoder. It asserts
/// (debug builds) or unwraps (all builds: a classless route's prefix
/// length over 32) on some malformed options; none of those belongs in a
/// client's request, so a request carrying one is malformed here, as is one
/// whose options run past its end or overload `sname`/`file` (option 52,
/// which this server does not read), or that lacks the magic cookie.
fn options_are_safe(packet: &[u8]) -> bool {
    const OPTIONS: usize = 240;
    // A DHCP message has the magic cookie (`dhcproto` does not check it:
    // it reads options from whatever follows).
    if packet.len() < OPTIONS || packet[236..OPTIONS] != [99, 130, 83, 99] {
        return false;
    }
    let mut i = OPTIONS;
    while let Some(&code) = packet.get(i) {
        match code {
            0 => {
                i += 1;
                continue;
            }
            255 => return true,
            _ => {}
        }
        let Some(&len) = packet.get(i + 1) else {
            return false;
        };
        let len = usize::from(len);
        if i + 2 + len > packet.len() {
            return false;
        }
        let fine = match code {
            // Overload; classless static routes (RFC 3442 and Microsoft's);
            // bulk leasequery (a relay's, RFC 6926).
            52 | 121 | 249 | 151..=158 => false,
            // The client FQDN starts with three octets (flags, two rcodes);
            // rapid commit carries nothing; the client network interface
            // identifier is three octets.
            81 => len >= 3,
            80 => len == 0,
            94 => len == 3,
            _ => true,
        };
        if !fine {
            return false;
        }
        i += 2 + len;
    }
    true
}

/// A client's message, for tests and the benchmark: `kind` from `mac`,
/// asking for `requested` (option 50) of `server` (option 54), with
/// `ciaddr`.
pub fn client_message(
    kind: MessageType,
    xid: u32,
    mac: [u8; 6],
    ciaddr: Ipv4Addr,
    requested: Option<Ipv4Addr>,
    server: Option<Ipv4Addr>,
) -> Vec<u8> {
    let mut msg = Message::new_with_id(
        xid,
        ciaddr,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        &mac,
    );
    msg.set_flags(Flags::default());
    msg.opts_mut().insert(DhcpOption::MessageType(kind));
    if let Some(r) = requested {
        msg.opts_mut().insert(DhcpOption::RequestedIpAddress(r));
    }
    if let Some(s) = server {
        msg.opts_mut().insert(DhcpOption::ServerIdentifier(s));
    }
    let mut bytes = Vec::new();
    msg.encode(&mut Encoder::new(&mut bytes))
        .expect("a client message encodes");
    bytes
}

/// The type, `yiaddr` and options of a reply, for tests.
pub fn parse_reply(bytes: &[u8]) -> Option<(MessageType, Ipv4Addr, Message)> {
    let msg = Message::decode(&mut Decoder::new(bytes)).ok()?;
    Some((msg.opts().msg_type()?, msg.yiaddr(), msg))
}

#[cfg(test)]
mod tests;
