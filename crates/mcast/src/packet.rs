//! Pure functions over forwarded payloads: the mDNS A-record rewrite that
//! carries a guest's answers across the host's IPv4 SNAT, and SSDP message
//! classification. Bytes in, bytes out; golden-tested and fuzzed.

use std::net::Ipv4Addr;

/// mDNS: RFC 6762.
pub const MDNS_PORT: u16 = 5353;
pub const MDNS_V4: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 251);
pub const MDNS_V6: std::net::Ipv6Addr = std::net::Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 0xfb);
/// SSDP: UPnP Device Architecture 1.1 §1.
pub const SSDP_PORT: u16 = 1900;
pub const SSDP_V4: Ipv4Addr = Ipv4Addr::new(239, 255, 255, 250);
pub const SSDP_V6: std::net::Ipv6Addr = std::net::Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 0xc);

/// The longest mDNS message the rewrite looks at. RFC 6762 §17: a
/// multicast DNS packet, IP and UDP headers included, must not exceed
/// 9000 bytes; over IPv4 (a 20-byte header, 8 of UDP) that leaves 8972 for
/// the message. A longer one breaks the RFC, so the forwarder drops it
/// instead of spending time on it (or leaking the guest's address
/// unrewritten). Ordinary answers fit in one Ethernet frame.
pub const MAX_MDNS_MESSAGE: usize = 9000 - 20 - 8;

/// What [`rewrite_mdns_a_records`] did with a message.
#[derive(Debug, PartialEq, Eq)]
pub enum Rewrite {
    /// `count` A records (in any section) carried the guest's address and
    /// now carry the uplink's. `bytes` is the message with those four-byte
    /// addresses replaced, nothing else changed.
    Rewritten { bytes: Vec<u8>, count: usize },
    /// A valid message with nothing to rewrite (a query, an error response
    /// or no A record of the guest): forward it unchanged.
    Unchanged,
    /// Not a well-formed DNS message: forward it unchanged and count it.
    Unparsable,
    /// Longer than [`MAX_MDNS_MESSAGE`]: not looked at; the forwarder drops
    /// it and counts it.
    TooLong { len: usize },
}

/// In an mDNS response (QR=1, RCODE=0) leaving a guest, replaces the
/// guest's private address with the uplink's in every A record of every
/// section, so a LAN peer connects to the host (whose DNAT carries the
/// connection to the guest). Everything else is kept byte for byte. No
/// limit below [`MAX_MDNS_MESSAGE`] (upstream skipped messages over 512
/// bytes and leaked the private address).
///
/// The message is patched in place, never decoded: one pass over its
/// records that skips names without expanding their compression pointers
/// (whether a name is valid is learned once per offset, [`Names`]). So the
/// time is linear in the length whatever the message holds; decoding every
/// name, as a DNS library does, made one crafted 60 KB answer (3,700
/// records named by one pointer to a 122-label name) cost milliseconds.
pub fn rewrite_mdns_a_records(message: &[u8], guest: Ipv4Addr, uplink: Ipv4Addr) -> Rewrite {
    let mut bytes = Vec::new();
    match Rewriter::default().rewrite_into(message, guest, uplink, &mut bytes) {
        Rewritten::Rewritten { count } => Rewrite::Rewritten { bytes, count },
        Rewritten::Unchanged => Rewrite::Unchanged,
        Rewritten::Unparsable => Rewrite::Unparsable,
        Rewritten::TooLong { len } => Rewrite::TooLong { len },
    }
}

/// What [`Rewriter::rewrite_into`] did; [`Rewrite`] without the bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rewritten {
    /// `count` A records were patched; the output buffer holds the message.
    Rewritten { count: usize },
    /// As [`Rewrite::Unchanged`]; the output buffer is left alone.
    Unchanged,
    /// As [`Rewrite::Unparsable`]; the output buffer is left alone.
    Unparsable,
    /// As [`Rewrite::TooLong`]; the output buffer is left alone.
    TooLong { len: usize },
}

/// [`rewrite_mdns_a_records`] with its working memory kept from one
/// message to the next, so that the forwarder's hot path allocates
/// nothing once the longest message seen has been seen.
#[derive(Debug, Default)]
pub struct Rewriter {
    /// [`Names::expanded`], one entry per byte of the message.
    expanded: Vec<u16>,
    /// [`Names::path`].
    path: Vec<usize>,
    /// The offsets of the addresses to patch.
    addresses: Vec<usize>,
}

impl Rewriter {
    /// [`rewrite_mdns_a_records`]: on [`Rewritten::Rewritten`], `out` is
    /// cleared and holds the patched message; otherwise it is untouched.
    pub fn rewrite_into(
        &mut self,
        message: &[u8],
        guest: Ipv4Addr,
        uplink: Ipv4Addr,
        out: &mut Vec<u8>,
    ) -> Rewritten {
        if message.len() > MAX_MDNS_MESSAGE {
            return Rewritten::TooLong { len: message.len() };
        }
        let Some(header) = message.get(..HEADER_LEN) else {
            return Rewritten::Unparsable;
        };
        // QR (bit 7 of byte 2) set: a response; RCODE (low 4 bits of byte 3).
        if header[2] & 0x80 == 0 || header[3] & 0x0f != 0 {
            return Rewritten::Unchanged;
        }
        let mut names = Names::new(message, &mut self.expanded, &mut self.path);
        if a_record_addresses(message, guest.octets(), &mut names, &mut self.addresses).is_err() {
            return Rewritten::Unparsable;
        }
        if self.addresses.is_empty() {
            return Rewritten::Unchanged;
        }
        out.clear();
        out.extend_from_slice(message);
        for at in &self.addresses {
            out[*at..*at + 4].copy_from_slice(&uplink.octets());
        }
        Rewritten::Rewritten {
            count: self.addresses.len(),
        }
    }
}

const HEADER_LEN: usize = 12;
/// RFC 1035 §3.1: a name is at most 255 bytes on the wire.
const MAX_NAME_LEN: usize = 255;
const TYPE_A: u16 = 1;

/// A message that is not well-formed DNS.
#[derive(Debug, PartialEq, Eq)]
struct Malformed;

/// Fills `addresses` with the offsets of the rdata of every A record
/// holding `guest`, after a check of the whole message: every question and
/// record present, every name valid, no A record of one to three bytes.
fn a_record_addresses(
    message: &[u8],
    guest: [u8; 4],
    names: &mut Names<'_>,
    addresses: &mut Vec<usize>,
) -> Result<(), Malformed> {
    addresses.clear();
    let header = message.get(..HEADER_LEN).ok_or(Malformed)?;
    let count = |i: usize| usize::from(u16::from_be_bytes([header[i], header[i + 1]]));
    let questions = count(4);
    let records = count(6) + count(8) + count(10);
    let mut at = HEADER_LEN;
    for _ in 0..questions {
        at = names.skip(at)?;
        at = fixed(message, at, 4)?.1;
    }
    for _ in 0..records {
        at = names.skip(at)?;
        let (fields, rdata) = fixed(message, at, 10)?;
        let rtype = u16::from_be_bytes([fields[0], fields[1]]);
        let rdlen = usize::from(u16::from_be_bytes([fields[8], fields[9]]));
        let (data, next) = fixed(message, rdata, rdlen)?;
        // Four bytes, by RFC 1035, or none (RFC 2136 §2.5.2, an empty
        // record). A longer one is malformed, but readers take its first
        // four (simple-dns does): patch those too, so that they do not
        // read the guest's address.
        if rtype == TYPE_A && rdlen != 0 {
            if rdlen < 4 {
                return Err(Malformed);
            }
            if data[..4] == guest {
                addresses.push(rdata);
            }
        }
        at = next;
    }
    // A name that runs through an address (a pointer into an A record's
    // data) would read differently once it is patched: leave such a
    // message alone.
    if addresses.iter().any(|&at| names.walked(at..at + 4)) {
        return Err(Malformed);
    }
    Ok(())
}

/// `len` bytes at `at`, and the offset after them.
fn fixed(message: &[u8], at: usize, len: usize) -> Result<(&[u8], usize), Malformed> {
    let end = at.checked_add(len).ok_or(Malformed)?;
    Ok((message.get(at..end).ok_or(Malformed)?, end))
}

/// The names of one message (RFC 1035 §3.1, §4.1.4): labels of 1 to 63
/// bytes, ending in a zero byte or in a compression pointer to an earlier
/// offset, at most 255 bytes once expanded. Rules as strict as the
/// decoder's (simple-dns), so what it refuses is refused here too.
///
/// Where a pointer leads is checked once per offset: `expanded[o]` keeps
/// the expanded length of the name that starts at `o` (0: not known yet),
/// so a thousand pointers to one long name cost a thousand lookups, not a
/// thousand walks of the name.
#[derive(Debug)]
struct Names<'a> {
    message: &'a [u8],
    expanded: &'a mut Vec<u16>,
    /// The offsets of the walk under way (kept to reuse its allocation).
    path: &'a mut Vec<usize>,
}

/// `expanded[o]` of an offset whose walk is under way: reaching it again
/// is a loop.
const WALKING: u16 = u16::MAX;

impl<'a> Names<'a> {
    /// The names of `message`, in the memory of `expanded` and `path`
    /// (whatever they held is cleared).
    fn new(message: &'a [u8], expanded: &'a mut Vec<u16>, path: &'a mut Vec<usize>) -> Names<'a> {
        expanded.clear();
        expanded.resize(message.len(), 0);
        Names {
            message,
            expanded,
            path,
        }
    }

    /// Whether a name walked so far has a label, pointer or end in `range`.
    fn walked(&self, range: std::ops::Range<usize>) -> bool {
        self.expanded[range].iter().any(|&len| len != 0)
    }

    /// Checks the name at `at`; returns the offset after it.
    fn skip(&mut self, at: usize) -> Result<usize, Malformed> {
        self.expanded_len(at)?;
        let mut at = at;
        loop {
            let len = *self.message.get(at).ok_or(Malformed)?;
            match len {
                0 => return Ok(at + 1),
                0xc0..=0xff => return Ok(at + 2),
                _ => at += 1 + usize::from(len),
            }
        }
    }

    /// The expanded length of the name at `start` (its zero byte included).
    fn expanded_len(&mut self, start: usize) -> Result<usize, Malformed> {
        // Walk to the end of the name or to an offset already known,
        // marking the way, then fill in the lengths backwards.
        let mut path = std::mem::take(self.path);
        path.clear();
        let result = self.walk(start, &mut path);
        *self.path = path;
        result
    }

    fn walk(&mut self, start: usize, path: &mut Vec<usize>) -> Result<usize, Malformed> {
        let mut at = start;
        let mut tail = loop {
            match self.expanded.get(at).copied().ok_or(Malformed)? {
                0 => {}
                WALKING => return Err(Malformed),
                known => break usize::from(known),
            }
            self.expanded[at] = WALKING;
            path.push(at);
            let len = self.message[at];
            match len {
                0 => break 0,
                1..=63 => at += 1 + usize::from(len),
                0xc0..=0xff => {
                    let low = *self.message.get(at + 1).ok_or(Malformed)?;
                    let target = usize::from(len & 0x3f) << 8 | usize::from(low);
                    // Only backwards (simple-dns refuses the others too).
                    if target >= at {
                        return Err(Malformed);
                    }
                    at = target;
                }
                // 64..=191: the reserved label types of RFC 6891 §5.
                _ => return Err(Malformed),
            }
        };
        for &at in path.iter().rev() {
            tail += match self.message[at] {
                0 => 1,
                len @ 1..=63 => 1 + usize::from(len),
                _ => 0,
            };
            if tail > MAX_NAME_LEN {
                return Err(Malformed);
            }
            // 1..=255: neither 0 (unknown) nor WALKING.
            self.expanded[at] = tail as u16;
        }
        Ok(tail)
    }
}

/// The kinds of SSDP message (UDA 1.1 §1.2, §1.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ssdp {
    /// `M-SEARCH * HTTP/1.1`: answered by unicast to the sender's port.
    Search,
    /// `NOTIFY * HTTP/1.1`: an advertisement (alive, byebye, update).
    Notify,
    /// `HTTP/1.1 200 OK`: a search response (unicast).
    Response,
    /// Anything else (still forwarded; the forwarder is not a validator).
    Other,
}

/// Classifies an SSDP datagram by its start line (method names are
/// case-sensitive in HTTP; leading whitespace is not allowed).
pub fn classify_ssdp(payload: &[u8]) -> Ssdp {
    let line_end = payload
        .iter()
        .position(|&b| b == b'\r' || b == b'\n')
        .unwrap_or(payload.len());
    let line = &payload[..line_end];
    let mut words = line.split(|&b| b == b' ');
    match (words.next(), words.next(), words.next()) {
        (Some(b"M-SEARCH"), Some(b"*"), Some(v)) if v.starts_with(b"HTTP/1.") => Ssdp::Search,
        (Some(b"NOTIFY"), Some(b"*"), Some(v)) if v.starts_with(b"HTTP/1.") => Ssdp::Notify,
        (Some(v), Some(b"200"), _) if v.starts_with(b"HTTP/1.") => Ssdp::Response,
        _ => Ssdp::Other,
    }
}

/// Whether an mDNS datagram from `source_port` is a legacy unicast query
/// (RFC 6762 §6.7: a resolver not on port 5353 expects a unicast answer to
/// its own port).
pub fn is_legacy_mdns_query(message: &[u8], source_port: u16) -> bool {
    source_port != MDNS_PORT
        && message.len() >= 12
        // QR (bit 7 of byte 2) clear: a query.
        && message[2] & 0x80 == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use simple_dns::rdata::{RData, A, AAAA, PTR, SRV, TXT};
    use simple_dns::{Name, Packet, PacketFlag, Question, ResourceRecord, CLASS, TYPE};

    const GUEST: Ipv4Addr = Ipv4Addr::new(100, 115, 92, 2);
    const UPLINK: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 20);
    const OTHER: Ipv4Addr = Ipv4Addr::new(100, 115, 92, 6);

    fn record(name: &str, rdata: RData<'static>) -> ResourceRecord<'static> {
        let mut r = ResourceRecord::new(
            Name::new_unchecked(name).into_owned(),
            CLASS::IN,
            120,
            rdata,
        );
        r.cache_flush = true;
        r
    }

    fn a(addr: Ipv4Addr) -> RData<'static> {
        RData::A(A {
            address: u32::from(addr),
        })
    }

    /// A typical service announcement: PTR, SRV, TXT, A, AAAA across the
    /// answer and additional sections, with compressed names.
    fn announcement(ip: Ipv4Addr) -> Vec<u8> {
        let mut p = Packet::new_reply(0);
        p.set_flags(PacketFlag::AUTHORITATIVE_ANSWER);
        p.answers.push(record(
            "_adb._tcp.local",
            RData::PTR(PTR(
                Name::new_unchecked("android._adb._tcp.local").into_owned()
            )),
        ));
        p.answers.push(record("android.local", a(ip)));
        p.additional_records.push(record(
            "android._adb._tcp.local",
            RData::SRV(SRV {
                priority: 0,
                weight: 0,
                port: 5555,
                target: Name::new_unchecked("android.local").into_owned(),
            }),
        ));
        let mut txt = TXT::new();
        txt.add_string("v=1").expect("txt");
        p.additional_records.push(record(
            "android._adb._tcp.local",
            RData::TXT(txt.into_owned()),
        ));
        p.additional_records.push(record("android.local", a(OTHER)));
        p.additional_records.push(record("android.local", a(ip)));
        p.additional_records.push(record(
            "android.local",
            RData::AAAA(AAAA {
                address: 0x2001_0db8_0000_0000_0000_0000_0000_0002,
            }),
        ));
        p.build_bytes_vec_compressed().expect("encode")
    }

    #[test]
    fn every_a_record_of_the_guest_in_every_section_gets_the_uplink_address() {
        let Rewrite::Rewritten { bytes, count } =
            rewrite_mdns_a_records(&announcement(GUEST), GUEST, UPLINK)
        else {
            panic!("not rewritten");
        };
        assert_eq!(count, 2);
        // The same message as if the guest had announced the uplink's
        // address, except the other guest's record, which stays.
        let got = Packet::parse(&bytes).expect("parses");
        let want_bytes = announcement(UPLINK);
        let want = Packet::parse(&want_bytes).expect("parses");
        assert_eq!(format!("{got:?}"), format!("{want:?}"));
        assert!(got.additional_records.iter().any(|r| r.rdata == a(OTHER)));
        assert!(got.answers.iter().all(|r| r.cache_flush));
    }

    #[test]
    fn a_golden_compressed_response_is_patched_in_place() {
        // Response, one answer: "a.local" A 100.115.92.2, then a second A
        // whose name is a compression pointer to offset 12.
        let mut msg = vec![0, 0, 0x84, 0, 0, 0, 0, 2, 0, 0, 0, 0];
        msg.extend_from_slice(b"\x01a\x05local\x00");
        msg.extend_from_slice(&[0, 1, 0x80, 1, 0, 0, 0, 120, 0, 4, 100, 115, 92, 2]);
        msg.extend_from_slice(&[0xc0, 12, 0, 1, 0x80, 1, 0, 0, 0, 120, 0, 4, 100, 115, 92, 2]);
        let Rewrite::Rewritten { bytes, count } = rewrite_mdns_a_records(&msg, GUEST, UPLINK)
        else {
            panic!("not rewritten");
        };
        assert_eq!(count, 2);
        let mut want = msg.clone();
        want[31..35].copy_from_slice(&UPLINK.octets());
        want[47..51].copy_from_slice(&UPLINK.octets());
        assert_eq!(bytes, want);
    }

    #[test]
    fn a_large_response_is_rewritten_too() {
        let mut p = Packet::new_reply(0);
        for i in 0..200 {
            p.answers.push(record(
                &format!("host{i}.local"),
                a(if i % 2 == 0 { GUEST } else { OTHER }),
            ));
        }
        let msg = p.build_bytes_vec_compressed().expect("encode");
        assert!(msg.len() > 512);
        let Rewrite::Rewritten { count, .. } = rewrite_mdns_a_records(&msg, GUEST, UPLINK) else {
            panic!("not rewritten");
        };
        assert_eq!(count, 100);
    }

    #[test]
    fn queries_errors_and_foreign_answers_are_left_alone() {
        let mut q = Packet::new_query(0);
        q.questions.push(Question::new(
            Name::new_unchecked("android.local"),
            TYPE::A.into(),
            CLASS::IN.into(),
            false,
        ));
        let q = q.build_bytes_vec_compressed().expect("encode");
        assert_eq!(
            rewrite_mdns_a_records(&q, GUEST, UPLINK),
            Rewrite::Unchanged
        );
        assert_eq!(
            rewrite_mdns_a_records(&announcement(OTHER), GUEST, UPLINK),
            Rewrite::Unchanged
        );
        let mut err = announcement(GUEST);
        err[3] |= 3; // RCODE NXDOMAIN
        assert_eq!(
            rewrite_mdns_a_records(&err, GUEST, UPLINK),
            Rewrite::Unchanged
        );
    }

    #[test]
    fn the_rfc_limit_is_9000_bytes_less_the_ipv4_and_udp_headers() {
        assert_eq!(MAX_MDNS_MESSAGE, 8972);
    }

    #[test]
    fn a_query_carrying_the_guest_s_a_record_is_left_alone() {
        // QR clear: a query (with a known answer, as RFC 6762 §7.1 allows);
        // only responses are rewritten.
        let mut msg = announcement(GUEST);
        msg[2] &= !0x80;
        assert_eq!(
            rewrite_mdns_a_records(&msg, GUEST, UPLINK),
            Rewrite::Unchanged
        );
    }

    #[test]
    fn other_record_types_holding_the_guest_s_bytes_are_not_a_records() {
        // One TXT record whose data is the guest's four address bytes.
        let mut msg = vec![0, 0, 0x84, 0, 0, 0, 0, 1, 0, 0, 0, 0];
        msg.extend_from_slice(b"\x01a\x05local\x00");
        msg.extend_from_slice(&[0, 16, 0x80, 1, 0, 0, 0, 120, 0, 4]);
        msg.extend_from_slice(&GUEST.octets());
        assert_eq!(
            rewrite_mdns_a_records(&msg, GUEST, UPLINK),
            Rewrite::Unchanged
        );
    }

    #[test]
    fn section_counts_are_read_big_endian_from_their_own_two_bytes() {
        // 256 answers announced (0x0100) and one present: unparsable. Read
        // from the wrong bytes, the count would be 1 (or 0).
        let mut msg = vec![0, 0, 0x84, 0, 0, 0, 1, 0, 0, 0, 0, 0];
        msg.extend_from_slice(b"\x01a\x05local\x00");
        msg.extend_from_slice(&[0, 1, 0x80, 1, 0, 0, 0, 120, 0, 4]);
        msg.extend_from_slice(&GUEST.octets());
        assert_eq!(
            rewrite_mdns_a_records(&msg, GUEST, UPLINK),
            Rewrite::Unparsable
        );
    }

    #[test]
    fn a_response_that_repeats_its_question_is_read_section_by_section() {
        // One question, then one answer: each count from its own two bytes
        // (read one byte off, the question would be taken for a record).
        let mut msg = vec![0, 0, 0x84, 0, 0, 1, 0, 1, 0, 0, 0, 0];
        msg.extend_from_slice(b"\x01a\x05local\x00");
        msg.extend_from_slice(&[0, 1, 0, 1]);
        msg.extend_from_slice(&[0xc0, 12, 0, 1, 0x80, 1, 0, 0, 0, 120, 0, 4]);
        msg.extend_from_slice(&GUEST.octets());
        let Rewrite::Rewritten { bytes, count } = rewrite_mdns_a_records(&msg, GUEST, UPLINK)
        else {
            panic!("not rewritten");
        };
        assert_eq!(count, 1);
        assert_eq!(&bytes[bytes.len() - 4..], UPLINK.octets());
    }

    #[test]
    fn a_pointer_past_offset_255_is_followed() {
        // Padding in a first record's data puts the second name past 255;
        // a later record points back to it (high bits of the pointer set).
        let mut msg = vec![0, 0, 0x84, 0, 0, 0, 0, 3, 0, 0, 0, 0];
        msg.extend_from_slice(b"\x03pad\x05local\x00");
        msg.extend_from_slice(&[0, 16, 0x80, 1, 0, 0, 0, 120, 1, 0]);
        msg.extend_from_slice(&[b'x'; 256]);
        let name_at = msg.len();
        assert!(name_at > 255);
        msg.extend_from_slice(b"\x01a\x05local\x00");
        msg.extend_from_slice(&[0, 1, 0x80, 1, 0, 0, 0, 120, 0, 4]);
        msg.extend_from_slice(&GUEST.octets());
        msg.extend_from_slice(&[0xc0 | (name_at >> 8) as u8, name_at as u8]);
        msg.extend_from_slice(&[0, 1, 0x80, 1, 0, 0, 0, 120, 0, 4]);
        msg.extend_from_slice(&GUEST.octets());
        let Rewrite::Rewritten { count, .. } = rewrite_mdns_a_records(&msg, GUEST, UPLINK) else {
            panic!("not rewritten");
        };
        assert_eq!(count, 2);
    }

    #[test]
    fn garbage_and_truncated_messages_are_unparsable() {
        let msg = announcement(GUEST);
        for len in [0, 5, 11, msg.len() - 3] {
            assert_eq!(
                rewrite_mdns_a_records(&msg[..len], GUEST, UPLINK),
                Rewrite::Unparsable,
                "length {len}"
            );
        }
        // A compression pointer to itself.
        let mut looped = vec![0, 0, 0x84, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0xc0, 12];
        looped.extend_from_slice(&[0, 1, 0, 1, 0, 0, 0, 1, 0, 4, 1, 2, 3, 4]);
        assert_eq!(
            rewrite_mdns_a_records(&looped, GUEST, UPLINK),
            Rewrite::Unparsable
        );
    }

    #[test]
    fn one_rewriter_reused_gives_what_a_fresh_rewrite_gives_message_after_message() {
        let long = announcement(GUEST);
        let mut looped = vec![0, 0, 0x84, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0xc0, 12];
        looped.extend_from_slice(&[0, 1, 0, 1, 0, 0, 0, 1, 0, 4, 1, 2, 3, 4]);
        let mut short = Packet::new_reply(0);
        short.answers.push(record("a.local", a(GUEST)));
        let short = short.build_bytes_vec_compressed().expect("encode");
        let messages = [
            long.clone(),
            short.clone(),
            looped,
            long[..long.len() - 3].to_vec(),
            announcement(OTHER),
            short,
            long,
            vec![0; MAX_MDNS_MESSAGE + 1],
        ];
        let mut rewriter = Rewriter::default();
        let mut out = Vec::new();
        for m in &messages {
            let fresh = rewrite_mdns_a_records(m, GUEST, UPLINK);
            let reused = rewriter.rewrite_into(m, GUEST, UPLINK, &mut out);
            match (fresh, reused) {
                (Rewrite::Rewritten { bytes, count }, Rewritten::Rewritten { count: c }) => {
                    assert_eq!((&bytes, count), (&out, c));
                }
                (Rewrite::Unchanged, Rewritten::Unchanged)
                | (Rewrite::Unparsable, Rewritten::Unparsable) => {}
                (Rewrite::TooLong { len }, Rewritten::TooLong { len: l }) => assert_eq!(len, l),
                (fresh, reused) => panic!("{fresh:?} != {reused:?}"),
            }
        }
    }

    /// A response whose first answer is `name_labels` one-letter labels,
    /// A `GUEST`, followed by `pointers` more A records of the guest, each
    /// named by a pointer to that name: the shape of the review's crafted
    /// answer (finding 12).
    fn pointer_bomb(name_labels: usize, pointers: usize) -> Vec<u8> {
        let answers = u16::try_from(1 + pointers).expect("count");
        let mut m = vec![0, 0, 0x84, 0, 0, 0];
        m.extend_from_slice(&answers.to_be_bytes());
        m.extend_from_slice(&[0, 0, 0, 0]);
        for _ in 0..name_labels {
            m.extend_from_slice(b"\x01x");
        }
        m.push(0);
        let a_record = |m: &mut Vec<u8>| {
            m.extend_from_slice(&[0, 1, 0x80, 1, 0, 0, 0, 120, 0, 4]);
            m.extend_from_slice(&GUEST.octets());
        };
        a_record(&mut m);
        for _ in 0..pointers {
            m.extend_from_slice(&[0xc0, 12]);
            a_record(&mut m);
        }
        m
    }

    /// A response with one A record of the guest named by `name` (wire form).
    fn answer_named(name: &[u8]) -> Vec<u8> {
        let mut m = vec![0, 0, 0x84, 0, 0, 0, 0, 1, 0, 0, 0, 0];
        m.extend_from_slice(name);
        m.extend_from_slice(&[0, 1, 0x80, 1, 0, 0, 0, 120, 0, 4]);
        m.extend_from_slice(&GUEST.octets());
        m
    }

    #[test]
    fn the_crafted_60_kb_answer_of_the_review_is_too_long_to_look_at() {
        // ~3,700 A records of the guest named by one pointer to a 122-label
        // name: 59,471 bytes, beyond RFC 6762's 9000-byte packets.
        let msg = pointer_bomb(122, 3_700);
        assert_eq!(
            rewrite_mdns_a_records(&msg, GUEST, UPLINK),
            Rewrite::TooLong { len: msg.len() }
        );
    }

    #[test]
    fn the_same_shape_at_the_largest_length_allowed_is_patched_in_place() {
        let pointers = (MAX_MDNS_MESSAGE - 12 - 255 - 14) / 16;
        let msg = pointer_bomb(127, pointers);
        assert!(msg.len() <= MAX_MDNS_MESSAGE && msg.len() > MAX_MDNS_MESSAGE - 16);
        let Rewrite::Rewritten { bytes, count } = rewrite_mdns_a_records(&msg, GUEST, UPLINK)
        else {
            panic!("not rewritten");
        };
        assert_eq!(count, pointers + 1);
        // Byte for byte the message the guest would have sent with the
        // uplink's address.
        let mut want = msg.clone();
        let mut at = 12 + 255 + 10;
        while at < want.len() {
            want[at..at + 4].copy_from_slice(&UPLINK.octets());
            at += 16;
        }
        assert_eq!(bytes, want);
        let parsed = Packet::parse(&bytes).expect("parses");
        assert_eq!(parsed.answers.len(), pointers + 1);
        assert!(parsed.answers.iter().all(|r| r.rdata == a(UPLINK)));
    }

    #[test]
    fn one_byte_over_the_rfc_limit_is_too_long() {
        let mut msg = announcement(GUEST);
        msg.resize(MAX_MDNS_MESSAGE, 0);
        assert!(matches!(
            rewrite_mdns_a_records(&msg, GUEST, UPLINK),
            Rewrite::Rewritten { .. }
        ));
        msg.push(0);
        assert_eq!(
            rewrite_mdns_a_records(&msg, GUEST, UPLINK),
            Rewrite::TooLong {
                len: MAX_MDNS_MESSAGE + 1
            }
        );
    }

    #[test]
    fn a_name_of_255_bytes_is_valid_and_one_of_257_is_not() {
        // 127 one-letter labels and the zero byte: 255 bytes.
        let mut longest = b"\x01x".repeat(127);
        longest.push(0);
        assert!(matches!(
            rewrite_mdns_a_records(&answer_named(&longest), GUEST, UPLINK),
            Rewrite::Rewritten { count: 1, .. }
        ));
        let mut too_long = b"\x01x".repeat(128);
        too_long.push(0);
        assert_eq!(
            rewrite_mdns_a_records(&answer_named(&too_long), GUEST, UPLINK),
            Rewrite::Unparsable
        );
        // 256 bytes (a two-letter label among the one-letter ones): the
        // zero byte at the end counts too.
        let mut one_over = b"\x02xx".to_vec();
        one_over.extend_from_slice(&b"\x01x".repeat(126));
        one_over.push(0);
        assert_eq!(one_over.len(), 256);
        assert_eq!(
            rewrite_mdns_a_records(&answer_named(&one_over), GUEST, UPLINK),
            Rewrite::Unparsable
        );
        // The same length reached through a pointer counts the same.
        let mut msg = answer_named(&longest);
        msg[7] = 2;
        msg.extend_from_slice(b"\x01y\xc0\x0c");
        msg.extend_from_slice(&[0, 1, 0x80, 1, 0, 0, 0, 120, 0, 4]);
        msg.extend_from_slice(&GUEST.octets());
        assert!(Packet::parse(&msg).is_err());
        assert_eq!(
            rewrite_mdns_a_records(&msg, GUEST, UPLINK),
            Rewrite::Unparsable
        );
    }

    #[test]
    fn pointers_that_loop_go_forward_or_leave_the_message_are_unparsable() {
        // "a" then a pointer back to "a": an endless name.
        let looped = answer_named(b"\x01a\xc0\x0c");
        // A pointer to an offset after itself (16: inside the record).
        let forward = answer_named(b"\xc0\x10");
        // Past the end, and cut in half.
        let outside = answer_named(b"\xc0\xff");
        let mut cut = vec![0, 0, 0x84, 0, 0, 0, 0, 1, 0, 0, 0, 0];
        cut.push(0xc0);
        // The reserved label types 0x40 and 0x80 (RFC 6891 §5).
        let extended = answer_named(b"\x41a\x00");
        let reserved = answer_named(b"\x81a\x00");
        for (what, msg) in [
            ("loop", looped),
            ("forward", forward),
            ("outside", outside),
            ("cut", cut),
            ("0x40", extended),
            ("0x80", reserved),
        ] {
            assert!(Packet::parse(&msg).is_err(), "{what}");
            assert_eq!(
                rewrite_mdns_a_records(&msg, GUEST, UPLINK),
                Rewrite::Unparsable,
                "{what}"
            );
        }
    }

    #[test]
    fn an_a_record_shorter_than_four_bytes_is_unparsable() {
        let mut msg = answer_named(b"\x01a\x00");
        // rdlength 3, one byte fewer.
        let rdlen = msg.len() - 5;
        msg[rdlen] = 3;
        msg.pop();
        assert_eq!(
            rewrite_mdns_a_records(&msg, GUEST, UPLINK),
            Rewrite::Unparsable
        );
    }

    #[test]
    fn a_longer_a_record_has_its_first_four_bytes_patched_as_readers_take_them() {
        let mut msg = answer_named(b"\x01a\x00");
        let rdlen = msg.len() - 5;
        msg[rdlen] = 6;
        msg.extend_from_slice(&[7, 7]);
        let Rewrite::Rewritten { bytes, count: 1 } = rewrite_mdns_a_records(&msg, GUEST, UPLINK)
        else {
            panic!("not rewritten");
        };
        let mut want = msg.clone();
        want[rdlen + 1..rdlen + 5].copy_from_slice(&UPLINK.octets());
        assert_eq!(bytes, want);
    }

    #[test]
    fn a_name_that_runs_through_an_address_leaves_the_message_alone() {
        // The second record's name points at the last byte of the first
        // one's address (2: a two-byte label, then the next record's
        // bytes...). Patching 2 into 20 would change that name.
        let mut msg = answer_named(b"\x00");
        msg[7] = 2;
        let last_octet = u8::try_from(msg.len() - 1).expect("offset");
        msg.extend_from_slice(&[0xc0, last_octet]);
        msg.extend_from_slice(&[0, 16, 0x80, 1, 0, 0, 0, 120, 0, 0]);
        assert_eq!(
            rewrite_mdns_a_records(&msg, GUEST, UPLINK),
            Rewrite::Unparsable
        );
    }

    #[test]
    fn a_pointer_into_an_earlier_record_s_data_is_followed() {
        // What encoders do: the SRV's owner name points into the PTR's
        // data ("android" + pointer to "_adb._tcp.local").
        let msg = announcement(GUEST);
        let ptr_data = msg
            .windows(8)
            .position(|w| w == b"\x07android")
            .expect("the PTR's data");
        assert!(msg
            .windows(2)
            .any(|w| w == [0xc0, u8::try_from(ptr_data).expect("offset")]));
        assert!(matches!(
            rewrite_mdns_a_records(&msg, GUEST, UPLINK),
            Rewrite::Rewritten { count: 2, .. }
        ));
    }

    #[test]
    fn ssdp_start_lines() {
        let search = b"M-SEARCH * HTTP/1.1\r\nHOST: 239.255.255.250:1900\r\nMAN: \"ssdp:discover\"\r\nMX: 1\r\nST: ssdp:all\r\n\r\n";
        assert_eq!(classify_ssdp(search), Ssdp::Search);
        assert_eq!(
            classify_ssdp(b"NOTIFY * HTTP/1.1\r\nNTS: ssdp:alive\r\n\r\n"),
            Ssdp::Notify
        );
        assert_eq!(
            classify_ssdp(b"HTTP/1.1 200 OK\r\nST: upnp:rootdevice\r\n\r\n"),
            Ssdp::Response
        );
        for other in [
            &b""[..],
            b"m-search * HTTP/1.1\r\n",
            b" M-SEARCH * HTTP/1.1",
            b"M-SEARCH",
            b"\xff\xfe",
        ] {
            assert_eq!(classify_ssdp(other), Ssdp::Other, "{other:?}");
        }
    }

    #[test]
    fn legacy_queries_are_queries_from_another_port() {
        let q = [0u8, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        assert!(is_legacy_mdns_query(&q, 40000));
        assert!(!is_legacy_mdns_query(&q, MDNS_PORT));
        let mut r = q;
        r[2] = 0x84;
        assert!(!is_legacy_mdns_query(&r, 40000));
        assert!(!is_legacy_mdns_query(&q[..11], 40000));
    }

    #[test]
    fn an_ssdp_start_line_ends_at_the_first_line_feed() {
        assert_eq!(classify_ssdp(b"HTTP/1.1\nServer: 200 OK\r\n"), Ssdp::Other);
    }

    #[test]
    fn an_ssdp_start_line_ends_at_the_first_carriage_return() {
        assert_eq!(classify_ssdp(b"HTTP/1.1\rServer: 200 OK\r\n"), Ssdp::Other);
    }

    #[test]
    fn a_search_in_another_protocol_is_other() {
        assert_eq!(classify_ssdp(b"M-SEARCH * RTSP/1.0\r\n"), Ssdp::Other);
    }

    #[test]
    fn a_notify_in_another_protocol_is_other() {
        assert_eq!(classify_ssdp(b"NOTIFY * SIP/2.0\r\n"), Ssdp::Other);
    }

    #[test]
    fn a_200_response_in_another_protocol_is_other() {
        assert_eq!(classify_ssdp(b"SIP/2.0 200 OK\r\n"), Ssdp::Other);
    }
}
