//! A datagram from nf_tables through every parser of dump replies and
//! echoes the nftables backend has (`patchpanel_firewall::nft::
//! fuzz_replies`: message splitting, rules and their counters, set
//! elements, the narrow accept, iptables' own rules, the counter samples).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = patchpanel_firewall::nft::fuzz_replies(data);
});
