//! rtnetlink bytes as the uplink monitor and the dumps read them
//! (`patchpanel_rtnl::fuzz`): a notification datagram decoded into
//! events (links, addresses, routes), and a dump reply through the link,
//! address, route, rule, neighbour and ack parsers. The first byte picks.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&which, buf)) = data.split_first() else {
        return;
    };
    if which & 1 == 0 {
        let _ = patchpanel_rtnl::fuzz::decode_datagram(buf);
    } else {
        let _ = patchpanel_rtnl::fuzz::parse_dump(buf);
    }
});
