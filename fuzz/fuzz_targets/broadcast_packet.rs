//! Feeds arbitrary bytes to the broadcast relay's packet parser
//! (`patchpanel_mcast::broadcast::parse`), which reads every IPv4 packet the
//! packet socket passes on the uplink and the guest links. Beyond "never
//! panics": what parses is rebuilt (`broadcast::build`) into a packet whose
//! IPv4 checksum verifies and which parses back to the same datagram, for
//! any destination the relay may pick.
#![no_main]

use std::net::Ipv4Addr;

use libfuzzer_sys::fuzz_target;
use patchpanel_mcast::broadcast::{build, ipv4_checksum, parse, Datagram};

fuzz_target!(|data: &[u8]| {
    let Ok(d) = parse(data) else { return };
    assert!(d.src_port >= 1024 && d.dst_port >= 1024);
    for dst in [d.dst, Ipv4Addr::BROADCAST, Ipv4Addr::new(100, 115, 92, 7)] {
        let copy = Datagram { dst, ..d };
        let p = build(&copy);
        assert_eq!(ipv4_checksum(&p[..20]), 0);
        assert_eq!(parse(&p), Ok(copy));
    }
});
