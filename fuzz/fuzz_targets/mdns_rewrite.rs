//! Feeds arbitrary bytes to the mDNS A-record rewrite
//! (`patchpanel_mcast::packet::rewrite_mdns_a_records`), which runs on
//! every IPv4 mDNS message a guest sends towards the LAN. Beyond "never
//! panics": a rewritten message parses again, holds no A record of the
//! guest any more and at least `count` of the uplink.
#![no_main]

use std::net::Ipv4Addr;

use libfuzzer_sys::fuzz_target;
use patchpanel_mcast::packet::{is_legacy_mdns_query, rewrite_mdns_a_records, Rewrite};
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
    if let Rewrite::Rewritten { bytes, count } = rewrite_mdns_a_records(data, GUEST, UPLINK) {
        assert!(count > 0);
        let again = Packet::parse(&bytes).expect("a rewritten message parses");
        assert_eq!(a_records(&again, GUEST), 0);
        assert!(a_records(&again, UPLINK) >= count);
    }
});
