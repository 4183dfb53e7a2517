//! Feeds arbitrary bytes to SSDP classification
//! (`patchpanel_mcast::packet::classify_ssdp`), which decides whether a
//! datagram from any LAN host or guest gets a session socket for unicast
//! answers. A search is exactly a datagram starting `M-SEARCH * HTTP/1.`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use patchpanel_mcast::packet::{classify_ssdp, Ssdp};

fuzz_target!(|data: &[u8]| {
    let kind = classify_ssdp(data);
    assert_eq!(kind == Ssdp::Search, data.starts_with(b"M-SEARCH * HTTP/1."));
});
