//! Any datagram a guest could send to the DHCP server
//! (`patchpanel_dhcp::Server::handle`), twice, against a server whose link
//! has a lease: never panics; a reply is a well-formed BOOTREPLY that
//! offers or acks only the link's own address, and a NAK carries no
//! address.
#![no_main]

use std::net::Ipv4Addr;
use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use patchpanel_dhcp::{client_message, parse_reply, LinkConfig, MessageType, Outcome, Server};

const SERVER: Ipv4Addr = Ipv4Addr::new(100, 115, 92, 25);
const CLIENT: Ipv4Addr = Ipv4Addr::new(100, 115, 92, 26);

fuzz_target!(|data: &[u8]| {
    let mut server = Server::new(LinkConfig {
        server: SERVER,
        client: CLIENT,
        prefix_len: 30,
        dns: vec![Ipv4Addr::new(192, 0, 2, 53)],
        mtu: Some(1400),
        lease_secs: 3600,
    });
    let now = Instant::now();
    // Half of the runs with a client already holding the lease.
    if data.first().is_some_and(|b| b & 1 == 1) {
        let take = client_message(
            MessageType::Request,
            1,
            [2, 0, 0, 0, 0, 1],
            Ipv4Addr::UNSPECIFIED,
            Some(CLIENT),
            Some(SERVER),
        );
        server.handle(&take, now);
    }
    for _ in 0..2 {
        if let Outcome::Reply { bytes, kind, .. } = server.handle(data, now) {
            let (parsed, yiaddr, msg) = parse_reply(&bytes).expect("our reply parses");
            assert_eq!(parsed, kind);
            assert_eq!(msg.opcode(), dhcproto_opcode_reply());
            match kind {
                MessageType::Offer | MessageType::Ack => {
                    assert!(yiaddr == CLIENT || yiaddr.is_unspecified(), "{yiaddr}")
                }
                MessageType::Nak => assert!(yiaddr.is_unspecified()),
                other => panic!("replied {other:?}"),
            }
        }
    }
});

fn dhcproto_opcode_reply() -> patchpanel_dhcp::Opcode {
    patchpanel_dhcp::Opcode::BootReply
}
