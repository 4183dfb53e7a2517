//! Feeds arbitrary bytes to the mDNS A-record rewrite
//! (`patchpanel_mcast::packet::rewrite_mdns_a_records`), which runs on
//! every IPv4 mDNS message a guest sends towards the LAN. Beyond "never
//! panics": the rewrite patches in place, so a rewritten message is the
//! input with exactly `count` four-byte addresses changed from the guest's
//! to the uplink's and nothing else; when a DNS library (simple-dns) reads
//! the input, those are all of its A records of the guest, and what it
//! reads of the output (if anything) holds none any more.
#![no_main]

use std::net::Ipv4Addr;

use libfuzzer_sys::fuzz_target;
use patchpanel_mcast::packet::{
    is_legacy_mdns_query, rewrite_mdns_a_records, Rewrite, MAX_MDNS_MESSAGE,
};
use simple_dns::rdata::RData;
use simple_dns::Packet;

const GUEST: Ipv4Addr = Ipv4Addr::new(100, 115, 92, 2);
const UPLINK: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 20);

fn a_records(p: &Packet<'_>, addr: Ipv4Addr) -> usize {
    p.answers
        .iter()
        .chain(&p.name_servers)
        .chain(&p.additional_records)
        .filter(|r| matches!(&r.rdata, RData::A(a) if a.address == u32::from(addr)))
        .count()
}

fuzz_target!(|data: &[u8]| {
    let _ = is_legacy_mdns_query(data, 40000);
    match rewrite_mdns_a_records(data, GUEST, UPLINK) {
        Rewrite::Rewritten { bytes, count } => {
            assert!(count > 0);
            assert_eq!(bytes.len(), data.len());
            // Every octet of the two addresses differs, so a changed byte
            // starts a patched address.
            let mut patched = 0;
            let mut i = 0;
            while i < data.len() {
                if bytes[i] == data[i] {
                    i += 1;
                    continue;
                }
                assert_eq!(data[i..i + 4], GUEST.octets());
                assert_eq!(bytes[i..i + 4], UPLINK.octets());
                patched += 1;
                i += 4;
            }
            assert_eq!(patched, count);
            if let Ok(before) = Packet::parse(data) {
                assert_eq!(a_records(&before, GUEST), count);
                if let Ok(after) = Packet::parse(&bytes) {
                    assert_eq!(a_records(&after, GUEST), 0);
                    assert!(a_records(&after, UPLINK) >= count);
                }
            }
        }
        Rewrite::TooLong { len } => {
            assert_eq!(len, data.len());
            assert!(len > MAX_MDNS_MESSAGE);
        }
        Rewrite::Unchanged | Rewrite::Unparsable => {}
    }
});
