//! `bench-mcast` in a tiny form against the kernel: its peers talk mDNS
//! over a veth, and each setup relays every round trip and every record at
//! a rate far below what any of them sustains, so a broken topology, peer
//! or forwarder start fails here rather than in a long benchmark run.
//! Needs root, like the harness's kernel tests; the mcastd case needs the
//! built binaries (`cargo build --workspace --bins`), the avahi case the
//! Debian package `avahi-daemon` (skipped, saying so, without it).

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use patchpanel_bench::mcast::{self, Direction, Offered, Params, Setup};
use patchpanel_bench::mdns_peer::{self, MdnsSocket};
use patchpanel_tests::Netns;

fn tiny(setups: Vec<Setup>) -> Params {
    Params {
        setups,
        probes: 20,
        warmup: 2,
        offered: vec![Offered::PerSecond(1000)],
        rate_time: Duration::from_millis(300),
        directions: Direction::ALL.to_vec(),
        show_logs: false,
    }
}

/// Every round trip answered, every record of every series delivered.
fn assert_all_relayed(params: &Params) {
    let results = mcast::measure(params).expect("measure");

    for (setup, result) in results {
        let samples = result.unwrap_or_else(|e| panic!("{}: {e:#}", setup.name()));
        assert_eq!(samples.lost, 0, "{}", setup.name());
        assert_eq!(samples.round_trip.len(), params.probes, "{}", setup.name());
        assert_eq!(samples.rates.len(), 2, "{}", setup.name());
        for rate in &samples.rates {
            assert!(rate.sent >= 250, "{}: {rate:?}", setup.name());
            assert_eq!(rate.received, rate.sent, "{}: {rate:?}", setup.name());
        }
    }
}

#[test]
fn a_response_sent_on_one_end_of_a_veth_arrives_parsed_on_the_other() {
    let a = Netns::new().expect("netns a");
    let b = Netns::new().expect("netns b");
    a.exec_ok(&[
        "ip",
        "link",
        "add",
        "m0",
        "type",
        "veth",
        "peer",
        "name",
        "m1",
        "netns",
        b.name(),
    ])
    .expect("veth");
    a.exec_ok(&["ip", "addr", "add", "192.0.2.1/24", "dev", "m0"])
        .expect("addr a");
    b.exec_ok(&["ip", "addr", "add", "192.0.2.2/24", "dev", "m1"])
        .expect("addr b");
    a.exec_ok(&["ip", "link", "set", "m0", "up"]).expect("up a");
    b.exec_ok(&["ip", "link", "set", "m1", "up"]).expect("up b");
    let sender = MdnsSocket::open(&a.path(), "m0").expect("socket a");
    let receiver = MdnsSocket::open(&b.path(), "m1").expect("socket b");

    // Sent again every half second: the first ones may go out before the
    // fresh veth pair has carrier (and be dropped), under a loaded CI.
    let mut buf = [0u8; 1500];
    let mut got = None;
    for _ in 0..20 {
        sender
            .send(&mdns_peer::response(
                "h1.local",
                Ipv4Addr::new(192, 0, 2, 1),
            ))
            .expect("send");
        got = receiver
            .recv(&mut buf, Duration::from_millis(500))
            .expect("recv");
        if got.is_some() {
            break;
        }
    }
    let (len, from) = got.expect("a datagram within 10 s");

    let message = mdns_peer::parse(&buf[..len]).expect("mDNS");
    assert!(message.is_response);
    assert_eq!(
        message.a_records,
        [("h1.local".to_string(), Ipv4Addr::new(192, 0, 2, 1))]
    );
    assert_eq!(from.to_string(), "192.0.2.1:5353");
}

#[test]
fn the_direct_path_answers_every_round_trip_and_delivers_every_record() {
    assert_all_relayed(&tiny(vec![Setup::Direct]));
}

#[test]
fn mcastd_and_avahi_relay_every_round_trip_and_every_record_at_a_low_rate() {
    let mut setups = vec![Setup::Mcastd];
    if Path::new(mcast::AVAHI_DAEMON).is_file() {
        setups.push(Setup::Avahi);
    } else {
        eprintln!(
            "skipping avahi: {} is not installed (scripts/bootstrap installs it)",
            mcast::AVAHI_DAEMON
        );
    }

    assert_all_relayed(&tiny(setups));
}
