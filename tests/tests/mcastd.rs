//! `mcastd`, the standalone multicast forwarder, against real kernels in
//! four namespaces:
//!
//! ```text
//!  upstream                     middle                      guests
//!  up0 192.168.50.1/24 === mid-up 192.168.50.2   mid-dn  === g0 10.77.0.2/24   (guest)
//!                               [mcastd]         mid-dn2 === g1 10.77.1.2/24   (guest2)
//! ```
//!
//! The middle has no route between the guests and upstream: everything the
//! peers see crossed `mcastd`. The peers are independent Python programs
//! ([`patchpanel_tests::mcast`]) that build and parse DNS themselves.
//! Every test makes and removes its own namespaces and processes.

use std::time::Duration;

use anyhow::Result;
use patchpanel_tests::mcast::{self, Peer};
use patchpanel_tests::{bin_path, poll_until, Netns, Spawned};

/// Time for an answer that crosses the forwarder (the queriers retry
/// every half second).
const ANSWER_SECS: u32 = 10;
const LINE: Duration = Duration::from_secs(15);

struct World {
    mcastd: Option<Spawned>,
    up: Netns,
    mid: Netns,
    guest: Netns,
    guest2: Netns,
    dir: tempfile::TempDir,
}

fn ip(ns: &Netns, args: &[&str]) -> Result<String> {
    let mut argv = vec!["ip"];
    argv.extend_from_slice(args);
    ns.exec_ok(&argv)
}

fn veth(
    a: &Netns,
    a_name: &str,
    a_addr: &str,
    b: &Netns,
    b_name: &str,
    b_addr: &str,
) -> Result<()> {
    ip(
        a,
        &[
            "link",
            "add",
            a_name,
            "type",
            "veth",
            "peer",
            "name",
            b_name,
            "netns",
            b.name(),
        ],
    )?;
    ip(a, &["addr", "add", a_addr, "brd", "+", "dev", a_name])?;
    ip(b, &["addr", "add", b_addr, "brd", "+", "dev", b_name])?;
    ip(a, &["link", "set", a_name, "up"])?;
    ip(b, &["link", "set", b_name, "up"])?;
    Ok(())
}

impl World {
    fn new() -> Result<World> {
        let world = World {
            mcastd: None,
            up: Netns::new()?,
            mid: Netns::new()?,
            guest: Netns::new()?,
            guest2: Netns::new()?,
            dir: tempfile::Builder::new().prefix("ppt-mcastd-").tempdir()?,
        };
        for ns in [&world.up, &world.mid, &world.guest, &world.guest2] {
            // Link-local IPv6 addresses usable at once.
            ns.exec_ok(&["sysctl", "-qw", "net.ipv6.conf.default.accept_dad=0"])?;
            ns.exec_ok(&["sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0"])?;
        }
        veth(
            &world.up,
            "up0",
            "192.168.50.1/24",
            &world.mid,
            "mid-up",
            "192.168.50.2/24",
        )?;
        veth(
            &world.mid,
            "mid-dn",
            "10.77.0.1/24",
            &world.guest,
            "g0",
            "10.77.0.2/24",
        )?;
        veth(
            &world.mid,
            "mid-dn2",
            "10.77.1.1/24",
            &world.guest2,
            "g1",
            "10.77.1.2/24",
        )?;
        Ok(world)
    }

    fn start(mut self, args: &[&str]) -> Result<World> {
        let mut argv = vec![
            bin_path("mcastd")?.display().to_string(),
            "--log-to-stderr".into(),
            "--log-level".into(),
            "debug".into(),
        ];
        argv.extend(args.iter().map(|s| s.to_string()));
        let log = self.dir.path().join("mcastd.log");
        let mut d = Spawned::start("mcastd", &self.mid, &argv, log)?;
        let ready = poll_until(Duration::from_secs(10), || {
            d.log().contains("mcastd: ").then_some(())
        });
        if ready.is_none() {
            anyhow::bail!("mcastd did not start: {:?} {}", d.try_exit(), d.log());
        }
        self.mcastd = Some(d);
        Ok(self)
    }

    fn log(&self) -> String {
        self.mcastd.as_ref().map_or_else(String::new, |d| d.log())
    }
}

fn started() -> World {
    World::new()
        .and_then(|w| {
            w.start(&[
                "--mdns",
                "--ssdp",
                "--broadcast",
                "mid-up",
                "mid-dn",
                "mid-dn2",
            ])
        })
        .expect("world")
}

/// The first answer line of a query, split into words.
fn answer(q: Peer, w: &World) -> Vec<String> {
    let line = q
        .line(LINE)
        .unwrap_or_else(|| panic!("no answer; mcastd log:\n{}", w.log()));
    line.split_whitespace().map(String::from).collect()
}

#[test]
fn a_guest_answer_reaches_the_lan_with_the_uplink_address_in_its_a_record() {
    let w = started();
    let _responder = mcast::mdns_responder(
        w.guest.name(),
        "g0",
        "224.0.0.251",
        "guest.local",
        "10.77.0.2",
        0,
    )
    .expect("responder");
    let q = mcast::mdns_query(
        w.up.name(),
        "up0",
        "224.0.0.251",
        "guest.local",
        false,
        ANSWER_SECS,
    )
    .expect("query");
    let a = answer(q, &w);
    // Sent by the middle, A record rewritten from 10.77.0.2.
    assert_eq!(a[0], "answer");
    assert_eq!(a[1], "192.168.50.2", "{a:?}");
    assert_eq!(a[3..], ["192.168.50.2"], "{a:?}");
    assert!(
        w.log()
            .contains("rewrote 1 A records 10.77.0.2 -> 192.168.50.2"),
        "{}",
        w.log()
    );
}

#[test]
fn a_legacy_unicast_query_from_the_lan_gets_its_unicast_answer() {
    let w = started();
    let responder = mcast::mdns_responder(
        w.guest.name(),
        "g0",
        "224.0.0.251",
        "guest.local",
        "10.77.0.2",
        0,
    )
    .expect("responder");
    let q = mcast::mdns_query(
        w.up.name(),
        "up0",
        "224.0.0.251",
        "guest.local",
        true,
        ANSWER_SECS,
    )
    .expect("query");
    let a = answer(q, &w);
    assert_eq!(a[3..], ["192.168.50.2"], "{a:?}");
    // The guest saw the query from the middle's guest-side address, on a
    // port other than 5353, and answered it by unicast.
    let seen = responder.line(LINE).expect("query seen");
    assert!(
        seen.starts_with("query from 10.77.0.1 ") && !seen.ends_with(" 5353"),
        "{seen}"
    );
}

#[test]
fn an_upstream_responder_is_resolvable_from_a_guest_over_ipv4_and_ipv6() {
    let w = started();
    let _v4 = mcast::mdns_responder(
        w.up.name(),
        "up0",
        "224.0.0.251",
        "printer.local",
        "192.168.50.1",
        0,
    )
    .expect("v4");
    let _v6 = mcast::mdns_responder(
        w.up.name(),
        "up0",
        "ff02::fb",
        "printer.local",
        "192.168.50.1",
        0,
    )
    .expect("v6");
    for group in ["224.0.0.251", "ff02::fb"] {
        let q = mcast::mdns_query(
            w.guest.name(),
            "g0",
            group,
            "printer.local",
            false,
            ANSWER_SECS,
        )
        .expect("query");
        let a = answer(q, &w);
        // Answers towards guests are not rewritten.
        assert_eq!(a[3..], ["192.168.50.1"], "{group}: {a:?}");
        if group == "ff02::fb" {
            assert!(a[1].starts_with("fe80::"), "{a:?}");
        }
    }
}

#[test]
fn a_guest_answers_over_ipv6_unchanged() {
    let w = started();
    let _r = mcast::mdns_responder(
        w.guest.name(),
        "g0",
        "ff02::fb",
        "guest.local",
        "10.77.0.2",
        0,
    )
    .expect("responder");
    let q = mcast::mdns_query(
        w.up.name(),
        "up0",
        "ff02::fb",
        "guest.local",
        false,
        ANSWER_SECS,
    )
    .expect("query");
    let a = answer(q, &w);
    assert_eq!(a[3..], ["10.77.0.2"], "{a:?}");
}

#[test]
fn guests_resolve_each_other_without_rewriting() {
    let w = started();
    let _r = mcast::mdns_responder(
        w.guest2.name(),
        "g1",
        "224.0.0.251",
        "other.local",
        "10.77.1.2",
        0,
    )
    .expect("responder");
    let q = mcast::mdns_query(
        w.guest.name(),
        "g0",
        "224.0.0.251",
        "other.local",
        false,
        ANSWER_SECS,
    )
    .expect("query");
    let a = answer(q, &w);
    assert_eq!(a[3..], ["10.77.1.2"], "{a:?}");
}

/// The TXT padding that makes the responder's answer for `big.local`
/// exactly `message_len` bytes: 12 of header, 25 of A record, 25 of TXT
/// record before its strings, then the strings, which the responder
/// (`response()` in `patchpanel_tests::mcast`) grows by up to 256 bytes at
/// a time until they are at least `pad` long.
fn big_local_pad(message_len: usize) -> usize {
    let strings_len = |pad: usize| {
        let mut len = 0;
        while len < pad {
            len += 1 + (pad - len).min(255);
        }
        len
    };
    (0..message_len)
        .find(|&pad| 62 + strings_len(pad) == message_len)
        .expect("a padding of that length")
}

#[test]
fn an_answer_as_long_as_rfc_6762_allows_arrives_whole_and_rewritten() {
    let w = started();
    let _r = mcast::mdns_responder(
        w.guest.name(),
        "g0",
        "224.0.0.251",
        "big.local",
        "10.77.0.2",
        big_local_pad(8972),
    )
    .expect("responder");
    let q = mcast::mdns_query(
        w.up.name(),
        "up0",
        "224.0.0.251",
        "big.local",
        false,
        ANSWER_SECS,
    )
    .expect("query");
    let a = answer(q, &w);
    assert_eq!(a[2], "8972", "{a:?}");
    assert_eq!(a[3..], ["192.168.50.2"], "{a:?}");
}

#[test]
fn a_guest_answer_longer_than_rfc_6762_allows_is_dropped_and_logged() {
    // 9000 bytes with the IPv4 and UDP headers, RFC 6762 §17: one more
    // byte and the forwarder does not spend time on it.
    let w = started();
    let _r = mcast::mdns_responder(
        w.guest.name(),
        "g0",
        "224.0.0.251",
        "big.local",
        "10.77.0.2",
        big_local_pad(8973),
    )
    .expect("responder");
    let q =
        mcast::mdns_query(w.up.name(), "up0", "224.0.0.251", "big.local", false, 3).expect("query");
    assert_eq!(q.finish(Duration::from_secs(6)), Vec::<String>::new());
    assert!(
        w.log().contains("mid-dn: dropped a 8973-byte mDNS message"),
        "{}",
        w.log()
    );
}

/// Sends `count` mDNS answers of `len` bytes (`flood.local` A `addr`,
/// padded with TXT) from port 5353 on `ifname`, as fast as it can.
fn mdns_flood(ns: &Netns, ifname: &str, addr: &str, len: usize, count: usize) {
    let script = format!(
        "import socket, struct\n\
         def qname(n): return b''.join(bytes([len(p)]) + p.encode() for p in n.split('.')) + b'\\0'\n\
         a = qname('flood.local') + struct.pack('!HHIH', 1, 0x8001, 120, 4) + socket.inet_aton('{addr}')\n\
         head = struct.pack('!6H', 0, 0x8400, 0, 2, 0, 0)\n\
         pad = {len} - len(head) - len(a) - len(qname('pad.local')) - 10\n\
         strings = b''\n\
         while len(strings) < pad:\n\
         \x20   c = min(255, pad - len(strings) - 1); strings += bytes([c]) + b'x' * c\n\
         txt = qname('pad.local') + struct.pack('!HHIH', 16, 0x8001, 120, pad) + strings\n\
         m = head + a + txt\n\
         assert len(m) == {len}, len(m)\n\
         s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
         s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b'{ifname}')\n\
         s.bind(('', 5353))\n\
         s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 255)\n\
         for i in range({count}): s.sendto(m, ('224.0.0.251', 5353))\n"
    );
    let out = ns
        .exec(&["/usr/bin/python3", "-c", &script])
        .expect("python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_guest_over_its_mdns_budget_is_dropped_and_the_other_guest_still_answers() {
    // A budget of 9000 bytes a second: a burst of one longest message. 20
    // of them sent at once are over it whether mcastd reads them as they
    // come or (on a busy machine) several at a time later. The default
    // budget (8 MiB/s) is unit-tested: a flood big enough to exceed it
    // would also overflow the socket's receive buffer, which then decides
    // what gets through.
    let w = World::new()
        .and_then(|w| {
            w.start(&[
                "--mdns",
                "--mdns-budget",
                "9000",
                "mid-up",
                "mid-dn",
                "mid-dn2",
            ])
        })
        .expect("world");
    mdns_flood(&w.guest, "g0", "10.77.0.2", 8972, 20);
    let dropped = poll_until(Duration::from_secs(10), || {
        w.log()
            .contains("mid-dn: mDNS to the LAN over 9000 bytes/s: dropped")
            .then_some(())
    });
    assert!(dropped.is_some(), "{}", w.log());

    // The budget is per downlink: the other guest's answer still goes out,
    // rewritten.
    let _r = mcast::mdns_responder(
        w.guest2.name(),
        "g1",
        "224.0.0.251",
        "other.local",
        "10.77.1.2",
        0,
    )
    .expect("responder");
    let q = mcast::mdns_query(
        w.up.name(),
        "up0",
        "224.0.0.251",
        "other.local",
        false,
        ANSWER_SECS,
    )
    .expect("query");
    assert_eq!(answer(q, &w)[3..], ["192.168.50.2"]);
    // And the flooding guest's own budget comes back.
    let _g = mcast::mdns_responder(
        w.guest.name(),
        "g0",
        "224.0.0.251",
        "guest.local",
        "10.77.0.2",
        0,
    )
    .expect("responder");
    let q = mcast::mdns_query(
        w.up.name(),
        "up0",
        "224.0.0.251",
        "guest.local",
        false,
        ANSWER_SECS,
    )
    .expect("query");
    assert_eq!(answer(q, &w)[3..], ["192.168.50.2"]);
}

#[test]
fn an_ssdp_search_from_a_guest_gets_the_upstream_devices_unicast_reply() {
    let w = started();
    let device = mcast::ssdp_device(w.up.name(), "up0", "239.255.255.250").expect("device");
    let s =
        mcast::ssdp_search(w.guest.name(), "g0", "239.255.255.250", ANSWER_SECS).expect("search");
    let line = s
        .line(LINE)
        .unwrap_or_else(|| panic!("no reply; {}", w.log()));
    // Relayed by the middle from its guest-side address; the device's own
    // address travels in the reply's LOCATION, as UPnP wants.
    assert_eq!(line, "reply 10.77.0.1 USN: uuid:test-device");
    let seen = device.line(LINE).expect("search seen");
    assert!(seen.starts_with("search from 192.168.50.2 "), "{seen}");
}

fn wait_for(peer: &Peer, want: &str, w: &World) {
    let found = poll_until(LINE, || {
        peer.line(Duration::from_millis(200)).filter(|l| l == want)
    });
    assert!(found.is_some(), "no {want:?}; mcastd log:\n{}", w.log());
}

#[test]
fn lan_broadcasts_reach_both_guests_with_valid_checksums_and_guest_broadcasts_reach_the_lan() {
    let w = started();
    let g0 = mcast::udp_sink(w.guest.name(), "g0", 4445).expect("sink");
    let g1 = mcast::udp_sink(w.guest2.name(), "g1", 4445).expect("sink");
    let lan = mcast::udp_sink(w.up.name(), "up0", 4446).expect("sink");
    let _a = mcast::udp_broadcast(
        w.up.name(),
        "up0",
        "255.255.255.255",
        4445,
        40000,
        "limited",
        10,
    )
    .expect("send");
    // A sink line means the kernel verified the UDP checksum.
    wait_for(&g0, "got 192.168.50.1 40000 limited", &w);
    wait_for(&g1, "got 192.168.50.1 40000 limited", &w);
    // Directed: the destination (and so the checksum) differs per guest.
    let _d = mcast::udp_broadcast(
        w.up.name(),
        "up0",
        "192.168.50.255",
        4445,
        40002,
        "directed",
        10,
    )
    .expect("send");
    wait_for(&g0, "got 192.168.50.1 40002 directed", &w);
    wait_for(&g1, "got 192.168.50.1 40002 directed", &w);
    // From a guest: NATed to the middle's uplink address, port kept.
    let _g = mcast::udp_broadcast(
        w.guest.name(),
        "g0",
        "10.77.0.255",
        4446,
        40001,
        "from-guest",
        10,
    )
    .expect("send");
    wait_for(&lan, "got 192.168.50.2 40001 from-guest", &w);
}

#[test]
fn system_ports_are_not_relayed() {
    let w = started();
    let g0 = mcast::udp_sink(w.guest.name(), "g0", 1000).expect("sink");
    let marker = mcast::udp_sink(w.guest.name(), "g0", 4447).expect("sink");
    let _s = mcast::udp_broadcast(w.up.name(), "up0", "255.255.255.255", 1000, 40000, "low", 5)
        .expect("send");
    let _m = mcast::udp_broadcast(
        w.up.name(),
        "up0",
        "255.255.255.255",
        4447,
        40000,
        "high",
        5,
    )
    .expect("send");
    wait_for(&marker, "got 192.168.50.1 40000 high", &w);
    assert_eq!(g0.line(Duration::from_secs(1)), None);
}

#[test]
fn inbound_only_forwards_nothing_from_the_guests() {
    let w = World::new()
        .and_then(|w| w.start(&["--mdns", "--inbound-only", "mid-up", "mid-dn"]))
        .expect("world");
    let _r = mcast::mdns_responder(
        w.guest.name(),
        "g0",
        "224.0.0.251",
        "guest.local",
        "10.77.0.2",
        0,
    )
    .expect("responder");
    let q = mcast::mdns_query(w.up.name(), "up0", "224.0.0.251", "guest.local", false, 3)
        .expect("query");
    assert_eq!(q.finish(Duration::from_secs(6)), Vec::<String>::new());
}

#[test]
fn mcastd_waits_for_a_downlink_that_appears_later() {
    let w = World::new().expect("world");
    ip(&w.mid, &["link", "set", "mid-dn2", "name", "late0"]).ok();
    let argv = ["--mdns", "--wait-secs", "30", "mid-up", "later0"];
    let mut argv_s = vec![
        bin_path("mcastd").expect("bin").display().to_string(),
        "--log-to-stderr".into(),
    ];
    argv_s.extend(argv.iter().map(|s| s.to_string()));
    let d =
        Spawned::start("mcastd", &w.mid, &argv_s, w.dir.path().join("late.log")).expect("start");
    poll_until(Duration::from_secs(10), || {
        d.log().contains("waiting for later0").then_some(())
    })
    .unwrap_or_else(|| panic!("not waiting: {}", d.log()));
    ip(&w.mid, &["link", "set", "late0", "name", "later0"]).expect("rename");
    poll_until(Duration::from_secs(10), || {
        d.log().contains("mcastd: ").then_some(())
    })
    .unwrap_or_else(|| panic!("did not start: {}", d.log()));
    let _r = mcast::mdns_responder(
        w.guest2.name(),
        "g1",
        "224.0.0.251",
        "late.local",
        "10.77.1.2",
        0,
    )
    .expect("responder");
    let q = mcast::mdns_query(
        w.up.name(),
        "up0",
        "224.0.0.251",
        "late.local",
        false,
        ANSWER_SECS,
    )
    .expect("query");
    let line = q
        .line(LINE)
        .unwrap_or_else(|| panic!("no answer: {}", d.log()));
    assert!(line.ends_with(" 192.168.50.2"), "{line}");
}
