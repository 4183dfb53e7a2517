//! Pure functions over forwarded payloads: the mDNS A-record rewrite that
//! carries a guest's answers across the host's IPv4 SNAT, and SSDP message
//! classification. Bytes in, bytes out; golden-tested and fuzzed.

use std::net::Ipv4Addr;

use simple_dns::rdata::{RData, A};
use simple_dns::{Packet, PacketFlag, ResourceRecord, RCODE};

/// mDNS: RFC 6762.
pub const MDNS_PORT: u16 = 5353;
pub const MDNS_V4: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 251);
pub const MDNS_V6: std::net::Ipv6Addr = std::net::Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 0xfb);
/// SSDP: UPnP Device Architecture 1.1 §1.
pub const SSDP_PORT: u16 = 1900;
pub const SSDP_V4: Ipv4Addr = Ipv4Addr::new(239, 255, 255, 250);
pub const SSDP_V6: std::net::Ipv6Addr = std::net::Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 0xc);

/// What [`rewrite_mdns_a_records`] did with a message.
#[derive(Debug, PartialEq, Eq)]
pub enum Rewrite {
    /// `count` A records (in any section) carried the guest's address and
    /// now carry the uplink's; the message was re-encoded.
    Rewritten { bytes: Vec<u8>, count: usize },
    /// A valid message with nothing to rewrite (a query, an error response
    /// or no A record of the guest): forward it unchanged.
    Unchanged,
    /// Not a DNS message simple-dns can parse (or re-encode): forward it
    /// unchanged and count it.
    Unparsable,
}

/// In an mDNS response (QR=1, RCODE=0) leaving a guest, replaces the
/// guest's private address with the uplink's in every A record of every
/// section, so a LAN peer connects to the host (whose DNAT carries the
/// connection to the guest). Other records, names, TTLs and the
/// cache-flush bits are kept; the message is re-encoded with name
/// compression only when something changed. No size limit (upstream
/// skipped messages over 512 bytes and leaked the private address).
pub fn rewrite_mdns_a_records(message: &[u8], guest: Ipv4Addr, uplink: Ipv4Addr) -> Rewrite {
    let Ok(mut packet) = Packet::parse(message) else {
        return Rewrite::Unparsable;
    };
    if !packet.has_flags(PacketFlag::RESPONSE) || packet.rcode() != RCODE::NoError {
        return Rewrite::Unchanged;
    }
    let guest = u32::from(guest);
    let mut count = 0;
    let mut patch = |records: &mut Vec<ResourceRecord>| {
        for record in records.iter_mut() {
            if let RData::A(A { address }) = &mut record.rdata {
                if *address == guest {
                    *address = u32::from(uplink);
                    count += 1;
                }
            }
        }
    };
    patch(&mut packet.answers);
    patch(&mut packet.name_servers);
    patch(&mut packet.additional_records);
    if count == 0 {
        return Rewrite::Unchanged;
    }
    match packet.build_bytes_vec_compressed() {
        Ok(bytes) => Rewrite::Rewritten { bytes, count },
        Err(_) => Rewrite::Unparsable,
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
    use simple_dns::rdata::{AAAA, PTR, SRV, TXT};
    use simple_dns::{Name, Question, CLASS, TYPE};

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
