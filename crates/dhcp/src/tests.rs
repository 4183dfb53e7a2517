use super::*;

const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
const OTHER: [u8; 6] = [0x52, 0x54, 0x00, 0xab, 0xcd, 0xef];
const SERVER: Ipv4Addr = Ipv4Addr::new(100, 115, 92, 25);
const CLIENT: Ipv4Addr = Ipv4Addr::new(100, 115, 92, 26);

fn config() -> LinkConfig {
    LinkConfig {
        server: SERVER,
        client: CLIENT,
        prefix_len: 30,
        dns: vec![Ipv4Addr::new(192, 0, 2, 53)],
        mtu: Some(1400),
        lease_secs: 3600,
    }
}

fn reply(outcome: Outcome) -> (MessageType, Ipv4Addr, Message, Destination) {
    match outcome {
        Outcome::Reply { bytes, to, kind } => {
            let (parsed, yiaddr, msg) = parse_reply(&bytes).expect("a reply parses");
            assert_eq!(parsed, kind);
            (kind, yiaddr, msg, to)
        }
        other => panic!("no reply: {other:?}"),
    }
}

fn discover(mac: [u8; 6]) -> Vec<u8> {
    client_message(
        MessageType::Discover,
        7,
        mac,
        Ipv4Addr::UNSPECIFIED,
        None,
        None,
    )
}

fn select(mac: [u8; 6], addr: Ipv4Addr) -> Vec<u8> {
    client_message(
        MessageType::Request,
        8,
        mac,
        Ipv4Addr::UNSPECIFIED,
        Some(addr),
        Some(SERVER),
    )
}

#[test]
fn discover_offers_the_links_address_with_every_option() {
    let mut s = Server::new(config());
    let now = Instant::now();
    let (kind, yiaddr, msg, to) = reply(s.handle(&discover(MAC), now));
    assert_eq!(
        (kind, yiaddr, to),
        (MessageType::Offer, CLIENT, Destination::Broadcast)
    );
    assert_eq!(msg.xid(), 7);
    assert_eq!(&msg.chaddr()[..6], &MAC);
    assert_eq!(msg.opcode(), Opcode::BootReply);
    let opts = msg.opts();
    assert_eq!(
        opts.get(OptionCode::SubnetMask),
        Some(&DhcpOption::SubnetMask(Ipv4Addr::new(255, 255, 255, 252)))
    );
    assert_eq!(
        opts.get(OptionCode::Router),
        Some(&DhcpOption::Router(vec![SERVER]))
    );
    assert_eq!(
        opts.get(OptionCode::DomainNameServer),
        Some(&DhcpOption::DomainNameServer(vec![Ipv4Addr::new(
            192, 0, 2, 53
        )]))
    );
    assert_eq!(
        opts.get(OptionCode::InterfaceMtu),
        Some(&DhcpOption::InterfaceMtu(1400))
    );
    assert_eq!(
        opts.get(OptionCode::AddressLeaseTime),
        Some(&DhcpOption::AddressLeaseTime(3600))
    );
    assert_eq!(
        opts.get(OptionCode::ServerIdentifier),
        Some(&DhcpOption::ServerIdentifier(SERVER))
    );
    // An offer binds nothing yet.
    assert_eq!(s.leased_to(now), None);
}

#[test]
fn a_request_for_the_address_is_acked_and_binds_the_lease() {
    let mut s = Server::new(config());
    let now = Instant::now();
    let (kind, yiaddr, _, _) = reply(s.handle(&select(MAC, CLIENT), now));
    assert_eq!((kind, yiaddr), (MessageType::Ack, CLIENT));
    assert_eq!(s.leased_to(now), Some(MAC));
    // A renewal (ciaddr set, no server id): acked by unicast.
    let renew = client_message(MessageType::Request, 9, MAC, CLIENT, None, None);
    let (kind, _, _, to) = reply(s.handle(&renew, now));
    assert_eq!((kind, to), (MessageType::Ack, Destination::Unicast(CLIENT)));
}

#[test]
fn another_address_is_naked_and_another_client_dropped() {
    let mut s = Server::new(config());
    let now = Instant::now();
    let (kind, yiaddr, msg, to) =
        reply(s.handle(&select(MAC, Ipv4Addr::new(100, 115, 92, 30)), now));
    assert_eq!(
        (kind, yiaddr, to),
        (
            MessageType::Nak,
            Ipv4Addr::UNSPECIFIED,
            Destination::Broadcast
        )
    );
    assert_eq!(msg.opts().get(OptionCode::Router), None);
    // Init-reboot for another guest's address: NAK.
    let reboot = client_message(
        MessageType::Request,
        3,
        MAC,
        Ipv4Addr::UNSPECIFIED,
        Some(Ipv4Addr::new(100, 115, 92, 30)),
        None,
    );
    assert_eq!(reply(s.handle(&reboot, now)).0, MessageType::Nak);
    // MAC takes the lease; OTHER (a second guest, a spoofed address) gets
    // nothing until it ends.
    reply(s.handle(&select(MAC, CLIENT), now));
    assert_eq!(
        s.handle(&discover(OTHER), now),
        Outcome::Dropped(DropReason::OtherClient)
    );
    assert_eq!(
        s.handle(&select(OTHER, CLIENT), now),
        Outcome::Dropped(DropReason::OtherClient)
    );
    // Another address from OTHER is still wrong here: NAK.
    assert_eq!(
        reply(s.handle(&select(OTHER, Ipv4Addr::new(100, 115, 92, 30)), now)).0,
        MessageType::Nak
    );
    // A RELEASE from OTHER does not end MAC's lease; MAC's does.
    let release = |mac| client_message(MessageType::Release, 4, mac, CLIENT, None, Some(SERVER));
    assert_eq!(s.handle(&release(OTHER), now), Outcome::Done);
    assert_eq!(s.leased_to(now), Some(MAC));
    assert_eq!(s.handle(&release(MAC), now), Outcome::Done);
    assert_eq!(s.leased_to(now), None);
    assert_eq!(reply(s.handle(&discover(OTHER), now)).0, MessageType::Offer);
}

#[test]
fn an_expired_lease_frees_the_address() {
    let mut s = Server::new(config());
    let now = Instant::now();
    reply(s.handle(&select(MAC, CLIENT), now));
    let later = now + Duration::from_secs(3601);
    assert_eq!(s.leased_to(later), None);
    assert_eq!(
        reply(s.handle(&select(OTHER, CLIENT), later)).0,
        MessageType::Ack
    );
}

#[test]
fn junk_is_dropped_and_counted_by_reason() {
    let mut s = Server::new(config());
    let now = Instant::now();
    assert_eq!(
        s.handle(&vec![0u8; MAX_REQUEST + 1], now),
        Outcome::Dropped(DropReason::Oversized)
    );
    assert_eq!(
        s.handle(&[1, 2, 3], now),
        Outcome::Dropped(DropReason::Malformed)
    );
    // A request for another server's offer.
    let elsewhere = client_message(
        MessageType::Request,
        1,
        MAC,
        Ipv4Addr::UNSPECIFIED,
        Some(CLIENT),
        Some(Ipv4Addr::new(10, 0, 0, 1)),
    );
    assert_eq!(
        s.handle(&elsewhere, now),
        Outcome::Dropped(DropReason::OtherServer)
    );
    // A reply (op 2) is not ours to answer.
    let mut offer = discover(MAC);
    offer[0] = 2;
    assert_eq!(
        s.handle(&offer, now),
        Outcome::Dropped(DropReason::NotARequest)
    );
    // Relayed.
    let mut relayed = discover(MAC);
    relayed[24..28].copy_from_slice(&[10, 0, 0, 1]);
    assert_eq!(
        s.handle(&relayed, now),
        Outcome::Dropped(DropReason::Relayed)
    );
    // A 16-byte hardware address.
    let mut long = discover(MAC);
    long[2] = 16;
    assert_eq!(
        s.handle(&long, now),
        Outcome::Dropped(DropReason::NotARequest)
    );
    // An OFFER sent to the server.
    let stray = client_message(
        MessageType::Offer,
        1,
        MAC,
        Ipv4Addr::UNSPECIFIED,
        None,
        None,
    );
    assert_eq!(
        s.handle(&stray, now),
        Outcome::Dropped(DropReason::UnknownType)
    );
}

#[test]
fn inform_gets_the_options_without_an_address() {
    let mut s = Server::new(config());
    let inform = client_message(MessageType::Inform, 5, MAC, CLIENT, None, None);
    let (kind, yiaddr, msg, to) = reply(s.handle(&inform, Instant::now()));
    assert_eq!(
        (kind, yiaddr, to),
        (
            MessageType::Ack,
            Ipv4Addr::UNSPECIFIED,
            Destination::Unicast(CLIENT)
        )
    );
    assert_eq!(msg.opts().get(OptionCode::AddressLeaseTime), None);
    assert!(msg.opts().get(OptionCode::Router).is_some());
}

#[test]
fn configs_are_checked() {
    assert!(config().check().is_ok());
    let bad = [
        LinkConfig {
            prefix_len: 31,
            ..config()
        },
        LinkConfig {
            client: Ipv4Addr::new(100, 115, 92, 30),
            ..config()
        },
        LinkConfig {
            client: Ipv4Addr::new(100, 115, 92, 27),
            ..config()
        },
        LinkConfig {
            client: SERVER,
            ..config()
        },
        LinkConfig {
            lease_secs: 10,
            ..config()
        },
    ];
    for c in bad {
        assert!(c.check().is_err(), "{c:?}");
    }
    assert_eq!(config().broadcast(), Ipv4Addr::new(100, 115, 92, 27));
}

#[test]
fn options_the_decoder_would_trip_on_are_malformed() {
    let mut s = Server::new(config());
    let now = Instant::now();
    let with_option = |code: u8, data: &[u8]| {
        let mut m = discover(MAC);
        let end = m.len() - 1; // the END option
        m.truncate(end);
        m.extend_from_slice(&[code, data.len() as u8]);
        m.extend_from_slice(data);
        m.push(255);
        m
    };
    for bad in [
        with_option(121, &[33, 10, 0, 0, 0, 1]),
        with_option(152, &[1, 2]),
        with_option(80, &[1]),
        with_option(94, &[1, 2]),
        with_option(52, &[3]),
        with_option(81, &[0, 0]),
    ] {
        assert_eq!(s.handle(&bad, now), Outcome::Dropped(DropReason::Malformed));
    }
    // An option that runs past the end.
    let mut cut = discover(MAC);
    cut.truncate(cut.len() - 1);
    cut.extend_from_slice(&[12, 200, b'x']);
    assert_eq!(s.handle(&cut, now), Outcome::Dropped(DropReason::Malformed));
    // No magic cookie (what the fuzzer found: the options were read anyway).
    let mut no_cookie = with_option(152, &[7]);
    no_cookie[236] = 0x13;
    assert_eq!(
        s.handle(&no_cookie, now),
        Outcome::Dropped(DropReason::Malformed)
    );
    // A well-formed one the server does not use is fine.
    assert_eq!(
        reply(s.handle(&with_option(12, b"vm"), now)).0,
        MessageType::Offer
    );
}
