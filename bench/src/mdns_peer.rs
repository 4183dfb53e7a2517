//! The mDNS peers of `bench-mcast`: the well-formed IPv4 mDNS messages they
//! send (a question for `<name>.local`, a response with one A record for
//! it), what they read back from a received message, and a socket on one
//! link of another namespace that speaks them.
//!
//! The messages are built by hand, byte by byte, so that the load
//! generator spends its time in `sendto`, not in a DNS library; received
//! messages are parsed with `simple-dns`, since a reflector re-encodes
//! what it relays (avahi aggregates records and compresses names).
//!
//! The socket is the forwarder's own kind ([`patchpanel_mcast::socket::udp`]:
//! bound to port 5353, pinned to the link, member of 224.0.0.251 there,
//! multicast TTL 255 as RFC 6762 §11 wants, loopback off), made by a short
//! thread inside the namespace; it stays in that namespace, usable from any
//! thread.

use std::fs::File;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::{AsFd, AsRawFd};
use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use patchpanel_mcast::socket::{self, Family};
use simple_dns::rdata::RData;
use simple_dns::{Packet, PacketFlag};

use crate::link_probe::{setns_net, LinkProbe};

/// The mDNS IPv4 group and port.
pub const GROUP: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 251);
pub const PORT: u16 = 5353;
/// The TTL of the A records sent (RFC 6762 §10: 120 s for host records).
pub const RECORD_TTL: u32 = 120;
/// The receive buffer of every peer socket, so that a peer is not where
/// packets are lost (set with `SO_RCVBUFFORCE`, we are root).
pub const RECEIVE_BUFFER: usize = 8 << 20;

/// DNS TYPE A and CLASS IN; the top bit of the class is mDNS's
/// cache-flush bit (RFC 6762 §10.2), set on unique records such as a
/// host's A record.
const TYPE_A: u16 = 1;
const CLASS_IN: u16 = 1;
const CACHE_FLUSH: u16 = 0x8000;
/// Flags of a response: QR (response) and AA (authoritative), as RFC
/// 6762 §18 wants for every mDNS response.
const FLAGS_RESPONSE: u16 = 0x8400;

/// `<name>.local` as DNS labels, no compression.
fn push_name(out: &mut Vec<u8>, name: &str) {
    for label in name.split('.').filter(|l| !l.is_empty()) {
        // Our names are short ASCII; a longer label would be cut, not sent
        // malformed.
        let bytes = &label.as_bytes()[..label.len().min(63)];
        out.push(bytes.len() as u8);
        out.extend_from_slice(bytes);
    }
    out.push(0);
}

fn header(flags: u16, questions: u16, answers: u16) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(&0u16.to_be_bytes()); // id 0 (RFC 6762 §18.1)
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&questions.to_be_bytes());
    out.extend_from_slice(&answers.to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]); // no authority, no additional
    out
}

/// An mDNS query with one question: `name` A IN, multicast answer wanted
/// (QM).
pub fn query(name: &str) -> Vec<u8> {
    let mut out = header(0, 1, 0);
    push_name(&mut out, name);
    out.extend_from_slice(&TYPE_A.to_be_bytes());
    out.extend_from_slice(&CLASS_IN.to_be_bytes());
    out
}

/// An mDNS response with one answer: `name` A `address`, cache-flush,
/// TTL [`RECORD_TTL`].
pub fn response(name: &str, address: Ipv4Addr) -> Vec<u8> {
    let mut out = header(FLAGS_RESPONSE, 0, 1);
    push_name(&mut out, name);
    out.extend_from_slice(&TYPE_A.to_be_bytes());
    out.extend_from_slice(&(CLASS_IN | CACHE_FLUSH).to_be_bytes());
    out.extend_from_slice(&RECORD_TTL.to_be_bytes());
    out.extend_from_slice(&4u16.to_be_bytes());
    out.extend_from_slice(&address.octets());
    out
}

/// What the benchmark reads from a received mDNS message.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Message {
    /// QR set.
    pub is_response: bool,
    /// The names asked for (type A questions), lower case, without the
    /// trailing dot.
    pub questions: Vec<String>,
    /// The A records in any section: name (as above) and address.
    pub a_records: Vec<(String, Ipv4Addr)>,
}

/// Parses a received datagram; `None` when it is not DNS.
pub fn parse(datagram: &[u8]) -> Option<Message> {
    let packet = Packet::parse(datagram).ok()?;
    let name = |n: &simple_dns::Name| n.to_string().trim_end_matches('.').to_ascii_lowercase();
    let mut message = Message {
        is_response: packet.has_flags(PacketFlag::RESPONSE),
        ..Message::default()
    };
    for q in &packet.questions {
        if q.qtype == simple_dns::QTYPE::TYPE(simple_dns::TYPE::A) {
            message.questions.push(name(&q.qname));
        }
    }
    for record in packet
        .answers
        .iter()
        .chain(&packet.additional_records)
        .chain(&packet.name_servers)
    {
        if let RData::A(a) = &record.rdata {
            message
                .a_records
                .push((name(&record.name), Ipv4Addr::from(a.address)));
        }
    }
    Some(message)
}

/// `<tag><n>.local`: the name of the `n`th record of a series.
pub fn numbered_name(tag: &str, n: u64) -> String {
    format!("{tag}{n}.local")
}

/// The `n` of a [`numbered_name`] with `tag`, if `name` is one.
pub fn name_number(tag: &str, name: &str) -> Option<u64> {
    name.strip_prefix(tag)?.strip_suffix(".local")?.parse().ok()
}

/// A UDP socket on port 5353 of one link inside another namespace.
#[derive(Debug)]
pub struct MdnsSocket {
    socket: UdpSocket,
    link: String,
}

impl MdnsSocket {
    /// A socket on `link` inside the namespace bound at `netns`.
    pub fn open(netns: &Path, link: &str) -> Result<MdnsSocket> {
        let ifindex = LinkProbe::in_netns(netns)?
            .ifindex(link)?
            .with_context(|| format!("no link {link} in {}", netns.display()))?;
        let path = netns.to_path_buf();
        let name = link.to_string();
        let fd = std::thread::spawn(move || -> io::Result<std::os::fd::OwnedFd> {
            let ns = File::open(&path)?;
            // Only this thread moves; it ends right after.
            setns_net(ns.as_fd())?;
            socket::udp(Family::V4, &name, ifindex, PORT, Some(GROUP.into()), 255)
        })
        .join()
        .map_err(|_| anyhow!("the thread entering {} panicked", netns.display()))?
        .with_context(|| {
            format!(
                "cannot open an mDNS socket on {link} in {}",
                netns.display()
            )
        })?;
        force_receive_buffer(fd.as_raw_fd(), RECEIVE_BUFFER)
            .context("cannot set SO_RCVBUFFORCE")?;
        let socket = UdpSocket::from(fd);
        socket
            .set_nonblocking(false)
            .context("cannot make the socket blocking")?;
        Ok(MdnsSocket {
            socket,
            link: link.to_string(),
        })
    }

    /// Sends `message` to the group on the socket's link.
    pub fn send(&self, message: &[u8]) -> io::Result<()> {
        self.socket
            .send_to(message, SocketAddr::from((GROUP, PORT)))
            .map(|_| ())
    }

    /// Waits up to `timeout` for a datagram; its length and sender, or
    /// `None` on timeout.
    pub fn recv(&self, buf: &mut [u8], timeout: Duration) -> Result<Option<(usize, SocketAddr)>> {
        // A zero timeout means "block forever" to SO_RCVTIMEO.
        let timeout = timeout.max(Duration::from_micros(1));
        self.socket
            .set_read_timeout(Some(timeout))
            .context("cannot set SO_RCVTIMEO")?;
        match self.socket.recv_from(buf) {
            Ok(got) => Ok(Some(got)),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                Ok(None)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(None),
            Err(e) => Err(e).with_context(|| format!("recv on {}", self.link)),
        }
    }

    /// Throws away whatever is queued.
    pub fn drain(&self) -> Result<usize> {
        let mut buf = [0u8; 9000];
        let mut n = 0;
        self.socket
            .set_nonblocking(true)
            .context("cannot make the socket non-blocking")?;
        let result = loop {
            match self.socket.recv_from(&mut buf) {
                Ok(_) => n += 1,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break Ok(n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Err(e).with_context(|| format!("recv on {}", self.link)),
            }
        };
        self.socket
            .set_nonblocking(false)
            .context("cannot make the socket blocking")?;
        result
    }

    /// The link the socket is pinned to.
    pub fn link(&self) -> &str {
        &self.link
    }
}

fn force_receive_buffer(fd: i32, bytes: usize) -> Result<()> {
    let value = libc::c_int::try_from(bytes).context("buffer size")?;
    // SAFETY: `value` is a live c_int and the length passed is its size;
    // setsockopt touches nothing else.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        bail!("{}", io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_query_is_one_qm_question_for_the_name() {
        let bytes = query("q7.local");

        assert_eq!(
            bytes,
            [
                0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, // id, flags, 1 question
                2, b'q', b'7', 5, b'l', b'o', b'c', b'a', b'l', 0, // q7.local
                0, 1, 0, 1, // A, IN, QM
            ]
        );
    }

    #[test]
    fn a_response_is_one_authoritative_cache_flush_a_record() {
        let bytes = response("h12.local", Ipv4Addr::new(10, 77, 0, 2));

        assert_eq!(
            bytes,
            [
                0, 0, 0x84, 0, 0, 0, 0, 1, 0, 0, 0, 0, // QR|AA, 1 answer
                3, b'h', b'1', b'2', 5, b'l', b'o', b'c', b'a', b'l', 0, // h12.local
                0, 1, 0x80, 1, 0, 0, 0, 120, 0, 4, // A, flush|IN, 120 s, 4 bytes
                10, 77, 0, 2,
            ]
        );
    }

    #[test]
    fn what_we_build_parses_back() {
        let q = parse(&query("q1.local")).expect("query parses");
        let r = parse(&response("H2.local", Ipv4Addr::new(192, 0, 2, 9))).expect("response parses");

        assert!(!q.is_response);
        assert_eq!(q.questions, ["q1.local"]);
        assert!(r.is_response);
        assert_eq!(
            r.a_records,
            [("h2.local".to_string(), Ipv4Addr::new(192, 0, 2, 9))]
        );
    }

    #[test]
    fn a_compressed_response_with_two_records_gives_both() {
        // As a reflector aggregates: h1.local, then h2 with a pointer to
        // "local" at offset 15.
        let bytes = [
            0, 0, 0x84, 0, 0, 0, 0, 2, 0, 0, 0, 0, // 2 answers
            2, b'h', b'1', 5, b'l', b'o', b'c', b'a', b'l', 0, // h1.local at 12
            0, 1, 0x80, 1, 0, 0, 0, 120, 0, 4, 10, 0, 0, 1, // A 10.0.0.1
            2, b'h', b'2', 0xc0, 15, // h2 + pointer to "local"
            0, 1, 0x80, 1, 0, 0, 0, 120, 0, 4, 10, 0, 0, 2, // A 10.0.0.2
        ];

        let m = parse(&bytes).expect("parses");

        assert_eq!(
            m.a_records,
            [
                ("h1.local".to_string(), Ipv4Addr::new(10, 0, 0, 1)),
                ("h2.local".to_string(), Ipv4Addr::new(10, 0, 0, 2)),
            ]
        );
    }

    #[test]
    fn a_truncated_message_is_not_dns() {
        let bytes = response("h1.local", Ipv4Addr::LOCALHOST);

        assert_eq!(parse(&bytes[..bytes.len() - 3]), None);
        assert_eq!(parse(b"hello"), None);
    }

    #[test]
    fn numbered_names_round_trip_and_other_names_do_not_match() {
        let name = numbered_name("h", 4711);

        assert_eq!(name, "h4711.local");
        assert_eq!(name_number("h", &name), Some(4711));
        assert_eq!(name_number("q", &name), None);
        assert_eq!(name_number("h", "hx.local"), None);
        assert_eq!(name_number("h", "h1.lan"), None);
    }
}
