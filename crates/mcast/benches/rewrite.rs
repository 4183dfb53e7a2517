//! CPU per message of the mDNS A-record rewrite, for the message shapes
//! that matter: a typical service announcement, the crafted answer of the
//! security review (finding 12: ~3,700 A records of the guest, each named
//! by one pointer to a 122-label name, 60 KB), and the costliest message
//! the rewrite still accepts. Prints a table; asserts nothing about time.
//!
//! `cargo bench -p patchpanel-mcast --bench rewrite`

use std::hint::black_box;
use std::net::Ipv4Addr;
use std::time::Duration;

use patchpanel_mcast::packet::rewrite_mdns_a_records;

const GUEST: Ipv4Addr = Ipv4Addr::new(100, 115, 92, 2);
const UPLINK: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 20);

/// A response: one A record named `labels` one-letter labels, then
/// `pointers` more A records of the guest whose names point at it.
fn pointer_bomb(labels: usize, pointers: usize) -> Vec<u8> {
    let answers = u16::try_from(1 + pointers).expect("count");
    let mut m = vec![0, 0, 0x84, 0, 0, 0];
    m.extend_from_slice(&answers.to_be_bytes());
    m.extend_from_slice(&[0, 0, 0, 0]);
    for _ in 0..labels {
        m.extend_from_slice(b"\x01x");
    }
    m.push(0);
    let record = |m: &mut Vec<u8>| {
        m.extend_from_slice(&[0, 1, 0x80, 1, 0, 0, 0, 120, 0, 4]);
        m.extend_from_slice(&GUEST.octets());
    };
    record(&mut m);
    for _ in 0..pointers {
        m.extend_from_slice(&[0xc0, 12]);
        record(&mut m);
    }
    m
}

/// A response of `records` A records of the guest, each named by its own
/// 127 one-letter labels, nothing compressed: the most labels per byte.
fn label_soup(records: usize) -> Vec<u8> {
    let answers = u16::try_from(records).expect("count");
    let mut m = vec![0, 0, 0x84, 0, 0, 0];
    m.extend_from_slice(&answers.to_be_bytes());
    m.extend_from_slice(&[0, 0, 0, 0]);
    for i in 0..records {
        for _ in 0..126 {
            m.extend_from_slice(b"\x01x");
        }
        m.extend_from_slice(&[1, b'a' + (i % 26) as u8, 0]);
        m.extend_from_slice(&[0, 1, 0x80, 1, 0, 0, 0, 120, 0, 4]);
        m.extend_from_slice(&GUEST.octets());
    }
    m
}

/// `_adb._tcp.local` PTR, SRV, TXT, A: what ARC announces.
fn announcement() -> Vec<u8> {
    let mut m = vec![0, 0, 0x84, 0, 0, 0, 0, 4, 0, 0, 0, 0];
    m.extend_from_slice(b"\x04_adb\x04_tcp\x05local\x00"); // 12
    m.extend_from_slice(&[0, 12, 0, 1, 0, 0, 0, 120, 0, 10]);
    m.extend_from_slice(b"\x07android\xc0\x0c"); // 39
    m.extend_from_slice(&[0xc0, 39, 0, 33, 0x80, 1, 0, 0, 0, 120, 0, 16]);
    m.extend_from_slice(&[0, 0, 0, 0, 0x15, 0xb3]);
    m.extend_from_slice(b"\x07android\xc0\x16");
    m.extend_from_slice(&[0xc0, 39, 0, 16, 0x80, 1, 0, 0, 0, 120, 0, 4]);
    m.extend_from_slice(b"\x03v=1");
    m.extend_from_slice(b"\x07android\xc0\x16");
    m.extend_from_slice(&[0, 1, 0x80, 1, 0, 0, 0, 120, 0, 4]);
    m.extend_from_slice(&GUEST.octets());
    m
}

fn cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec we own.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// CPU per call, over at least half a second of calls.
fn per_message(message: &[u8]) -> (Duration, String) {
    let outcome = format!("{:?}", rewrite_mdns_a_records(message, GUEST, UPLINK))
        .split([' ', '{'])
        .next()
        .unwrap_or_default()
        .to_string();
    let start = cpu_time();
    let mut calls = 0u32;
    while cpu_time() - start < Duration::from_millis(500) {
        for _ in 0..10 {
            black_box(rewrite_mdns_a_records(black_box(message), GUEST, UPLINK));
        }
        calls += 10;
    }
    ((cpu_time() - start) / calls, outcome)
}

fn main() {
    let cases = [
        ("announcement (PTR SRV TXT A)", announcement()),
        (
            "finding 12: 122 labels, 3,700 pointers",
            pointer_bomb(122, 3_700),
        ),
        ("127 labels, 540 pointers (9,000 B)", pointer_bomb(127, 540)),
        ("127 labels, 64 pointers", pointer_bomb(127, 64)),
        ("33 names of 127 labels, uncompressed", label_soup(33)),
    ];
    println!(
        "{:<42} {:>8} {:>12}  outcome",
        "message", "bytes", "CPU/message"
    );
    for (name, message) in cases {
        let (cpu, outcome) = per_message(&message);
        println!(
            "{name:<42} {:>8} {:>9.1} µs  {outcome}",
            message.len(),
            cpu.as_secs_f64() * 1e6
        );
    }
}
