//! Feeds arbitrary bytes to the ND proxy's packet path: the parser and
//! rewriter (`patchpanel_ndp::packet`) and the forwarding engine
//! (`patchpanel_ndp::proxy`), which run on every packet any host on an
//! uplink or any guest may send.
//!
//! The first input byte picks the receiving link (uplink or downlink), the
//! packet type the socket reported and whether the checksum is final; the
//! rest is the IPv6 packet. Beyond "never panics":
//! * whatever parses can be rewritten, and the rewrite is as long as the
//!   input, parses again as the same ND type with the same target, and
//!   carries a valid checksum;
//! * an RA's rewrite has the Proxy flag and goes to ff02::1;
//! * every copy the engine sends is such a rewrite, to a link other than
//!   the one it came from; nothing is sent for input that does not parse.
#![no_main]

use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use patchpanel_ndp::packet::{NdPacket, NdType, Rewrite, ALL_NODES, RA_FLAG_PROXY};
use patchpanel_ndp::proxy::{Proxy, Received};

const UP: u32 = 2;
const DOWN: u32 = 3;
const DOWN2: u32 = 4;
const MAC: [u8; 6] = [0x02, 0xaa, 0xbb, 0xcc, 0xdd, 0xee];

fn check_rewrite(input: &NdPacket<'_>, out: &[u8], rewrite: &Rewrite) {
    assert_eq!(
        out.len(),
        input.as_bytes().len(),
        "rewrite changed the length"
    );
    let again = NdPacket::parse(out).expect("a rewritten packet must parse");
    assert_eq!(again.nd_type(), input.nd_type());
    assert_eq!(again.target(), input.target());
    assert_eq!(again.source(), input.source());
    again
        .verify_checksum()
        .expect("a rewritten packet must carry a valid checksum");
    if let Some(dst) = rewrite.destination {
        assert_eq!(again.destination(), dst);
    }
    if input.nd_type() == NdType::RouterAdvertisement {
        assert_eq!(out[45] & RA_FLAG_PROXY, RA_FLAG_PROXY);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, packet)) = data.split_first() else {
        return;
    };

    // The packet module alone.
    let parsed = NdPacket::parse(packet);
    if let Ok(nd) = &parsed {
        let _ = nd.verify_checksum();
        let _ = nd.options().count();
        for destination in [None, Some(ALL_NODES)] {
            let rewrite = Rewrite {
                mac: MAC,
                destination,
            };
            let mut out = Vec::new();
            nd.rewrite(&rewrite, &mut out);
            check_rewrite(nd, &out, &rewrite);
        }
    }

    // The engine, with two downlinks on one uplink.
    let mut proxy = Proxy::new();
    proxy.start(UP, DOWN).expect("pair");
    proxy.start(UP, DOWN2).expect("pair");
    for (index, last) in [(UP, 1u8), (DOWN, 2), (DOWN2, 3)] {
        proxy.set_link_mac(index, Some([2, 0, 0, 0, 0, last]));
    }
    let ifindex = [UP, DOWN, DOWN2, 9][usize::from(selector & 3)];
    let rx = Received {
        ifindex,
        pkttype: (selector >> 2) & 7,
        src_mac: (selector & 0x20 != 0).then_some([2, 1, 1, 1, 1, 1]),
        vlan_id: (selector & 0x40 != 0).then_some(u16::from(selector)),
        checksum_ready: selector & 0x80 == 0,
        packet,
    };
    let outcome = proxy.handle(&rx, Instant::now());
    match &parsed {
        Err(_) => assert!(outcome.sends.is_empty(), "sent an unparseable packet"),
        Ok(nd) => {
            for out in &outcome.sends {
                assert_ne!(out.ifindex, ifindex, "relayed back to its own link");
                let rewrite = Rewrite {
                    mac: [0; 6],
                    destination: (nd.nd_type() == NdType::RouterAdvertisement).then_some(ALL_NODES),
                };
                check_rewrite(nd, &out.packet, &rewrite);
            }
        }
    }
    if let Some(guest) = outcome.learned {
        assert!(
            guest.ifindex == DOWN || guest.ifindex == DOWN2,
            "learned a guest on {}",
            guest.ifindex
        );
    }
});
