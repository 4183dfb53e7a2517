//! The forwarder at rate, driven directly (no mcastd process) between real
//! kernel sockets in three network namespaces:
//!
//! ```text
//!  lan                        middle                        guest
//!  up0 192.168.50.1/24 === upl 192.168.50.2  dn 10.77.0.1/24 === g0 10.77.0.2/24
//!                                [Forwarder]
//! ```
//!
//! What `tests/tests/mcastd.rs` does not see from outside: more datagrams
//! than one `recvmmsg` batch, forwarded whole, once each and in order; one
//! socket's backlog handled a bounded number of batches at a time while
//! another socket's datagram goes first; and the kernel's drops of a full
//! receive buffer counted, so that what was sent equals what was received
//! plus what overflowed.
//!
//! Needs root (namespaces, `ip`); skipped otherwise.

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use mio::{Events, Poll};
use patchpanel_mcast::forwarder::MAX_BATCHES_PER_WAKE;
use patchpanel_mcast::packet::{MDNS_PORT, MDNS_V4};
use patchpanel_mcast::socket::{self, Family, BATCH};
use patchpanel_mcast::{Forwarder, Pair, Protocols, Stats};

const GUEST: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
const UPLINK: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 2);

fn root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        eprintln!("skipped: needs root (network namespaces)");
    }
    euid == 0
}

fn run(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .expect("run a command");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A named network namespace, deleted on drop.
struct Ns(String);

impl Ns {
    fn new(tag: &str) -> Ns {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "ppmc-{}-{}-{tag}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        run(&["ip", "netns", "add", &name]);
        let ns = Ns(name);
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    fn ip(&self, args: &[&str]) {
        let mut argv = vec!["ip", "-n", &self.0];
        argv.extend_from_slice(args);
        run(&argv);
    }

    /// Runs `f` on a thread inside the namespace (sockets made there stay
    /// there).
    fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|s| {
            s.spawn(|| {
                enter(self);
                f()
            })
            .join()
            .expect("thread")
        })
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn enter(ns: &Ns) {
    let f = File::open(format!("/run/netns/{}", ns.0)).expect("open the namespace");
    // SAFETY: setns on a namespace fd we own, for the calling thread only.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
}

struct World {
    lan: Ns,
    mid: Ns,
    guest: Ns,
}

impl World {
    fn new() -> World {
        let w = World {
            lan: Ns::new("lan"),
            mid: Ns::new("mid"),
            guest: Ns::new("guest"),
        };
        w.mid.ip(&[
            "link", "add", "upl", "type", "veth", "peer", "name", "up0", "netns", &w.lan.0,
        ]);
        w.mid.ip(&[
            "link", "add", "dn", "type", "veth", "peer", "name", "g0", "netns", &w.guest.0,
        ]);
        w.mid.ip(&["addr", "add", "192.168.50.2/24", "dev", "upl"]);
        w.mid.ip(&["addr", "add", "10.77.0.1/24", "dev", "dn"]);
        w.lan.ip(&["addr", "add", "192.168.50.1/24", "dev", "up0"]);
        w.guest.ip(&["addr", "add", "10.77.0.2/24", "dev", "g0"]);
        w.mid.ip(&["link", "set", "upl", "up"]);
        w.mid.ip(&["link", "set", "dn", "up"]);
        w.lan.ip(&["link", "set", "up0", "up"]);
        w.guest.ip(&["link", "set", "g0", "up"]);
        w
    }

    /// An mDNS peer on `link` of `ns`: port 5353, in the group, pinned to
    /// the link, a 4 MiB receive buffer (or what rmem_max allows), reads
    /// time out after 200 ms.
    fn peer(ns: &Ns, link: &str) -> UdpSocket {
        let fd = ns.run(|| {
            let ifindex = socket::ifindex(link).expect("link");
            socket::udp(
                Family::V4,
                link,
                ifindex,
                MDNS_PORT,
                Some(MDNS_V4.into()),
                255,
            )
            .expect("peer socket")
        });
        socket::set_receive_buffer(fd.as_raw_fd(), 4 << 20).expect("SO_RCVBUF");
        let s = UdpSocket::from(fd);
        s.set_nonblocking(false).expect("blocking");
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        s
    }

    /// The forwarder (in the middle), mDNS only, upl <-> dn.
    fn forwarder(&self, poll: &Poll, receive_buffer: Option<usize>) -> Forwarder {
        self.mid.run(|| {
            let protocols = Protocols {
                mdns: true,
                ssdp: false,
                broadcast: false,
            };
            let mut f = Forwarder::new(poll.registry(), 1, protocols).expect("forwarder");
            if let Some(bytes) = receive_buffer {
                f.set_receive_buffer(bytes);
            }
            f.start(Pair {
                uplink: "upl".into(),
                downlink: "dn".into(),
                uplink_ipv4: None,
                inbound: true,
                outbound: true,
            })
            .expect("start");
            f
        })
    }
}

/// An mDNS response: one A record, `h<n>.local` -> `address`.
fn response(n: usize, address: Ipv4Addr) -> Vec<u8> {
    let mut m = vec![0, 0, 0x84, 0, 0, 0, 0, 1, 0, 0, 0, 0];
    let label = format!("h{n}");
    m.push(label.len() as u8);
    m.extend_from_slice(label.as_bytes());
    m.extend_from_slice(b"\x05local\x00");
    m.extend_from_slice(&[0, 1, 0x80, 1, 0, 0, 0, 120, 0, 4]);
    m.extend_from_slice(&address.octets());
    m
}

/// The number and address of a [`response`].
fn parse(m: &[u8]) -> Option<(usize, Ipv4Addr)> {
    let len = usize::from(*m.get(12)?);
    let label = std::str::from_utf8(m.get(13..13 + len)?).ok()?;
    let n = label.strip_prefix('h')?.parse().ok()?;
    let a: [u8; 4] = m.get(m.len() - 4..)?.try_into().ok()?;
    Some((n, Ipv4Addr::from(a)))
}

/// Sends to the group (the peer is pinned to its link).
fn send(peer: &UdpSocket, messages: impl Iterator<Item = Vec<u8>>) {
    let to = SocketAddr::new(MDNS_V4.into(), MDNS_PORT);
    for m in messages {
        peer.send_to(&m, to).expect("send");
    }
}

/// Everything `peer` gets until it has been quiet for 200 ms.
fn drain(peer: &UdpSocket) -> Vec<Vec<u8>> {
    let mut got = Vec::new();
    let mut buf = vec![0u8; 9000];
    while let Ok((len, _)) = peer.recv_from(&mut buf) {
        got.push(buf[..len].to_vec());
    }
    got
}

/// A forwarder between the LAN and a guest (`receive_buffer` as
/// [`World::forwarder`] takes it) and a peer on each side. Destructure it
/// with `_world` first: the namespaces go last.
struct Rig {
    _world: World,
    poll: Poll,
    f: Forwarder,
    lan: UdpSocket,
    guest: UdpSocket,
}

impl Rig {
    fn new(receive_buffer: Option<usize>) -> Rig {
        let world = World::new();
        let poll = Poll::new().expect("poll");
        let f = world.forwarder(&poll, receive_buffer);
        let lan = World::peer(&world.lan, "up0");
        let guest = World::peer(&world.guest, "g0");
        Rig {
            _world: world,
            poll,
            f,
            lan,
            guest,
        }
    }
}

/// Polls and hands every event to the forwarder until nothing happened
/// for 200 ms.
fn pump(poll: &mut Poll, f: &mut Forwarder) {
    let mut events = Events::with_capacity(64);
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        poll.poll(&mut events, Some(Duration::from_millis(200)))
            .expect("poll");
        if events.is_empty() {
            return;
        }
        for e in events.iter() {
            f.ready(e.token());
        }
    }
}

#[test]
fn many_batches_of_answers_reach_the_lan_whole_once_in_order_and_rewritten() {
    if !root() {
        return;
    }
    let Rig {
        _world,
        mut poll,
        mut f,
        lan,
        guest,
    } = Rig::new(None);
    let total = 2000;
    // In chunks that any receive buffer holds, the forwarder reading in
    // between.
    for chunk in (0..total).collect::<Vec<_>>().chunks(100) {
        send(&guest, chunk.iter().map(|&n| response(n, GUEST)));
        pump(&mut poll, &mut f);
    }
    let got: Vec<(usize, Ipv4Addr)> = drain(&lan).iter().filter_map(|m| parse(m)).collect();

    let stats = f.stats();
    assert_eq!(stats.receive_overflows, 0, "{stats}");
    assert_eq!(got.len(), total, "{stats}");
    assert!(
        got.iter().map(|(n, _)| *n).eq(0..total),
        "in order, once each"
    );
    assert!(got.iter().all(|(_, a)| *a == UPLINK), "all rewritten");
    assert_eq!(
        (stats.received, stats.sent, stats.rewritten),
        (total as u64, total as u64, total as u64),
        "{stats}"
    );
}

#[test]
fn a_backlog_is_read_a_few_batches_at_a_time_and_another_socket_goes_in_between() {
    if !root() {
        return;
    }
    let Rig {
        _world,
        mut poll,
        mut f,
        lan,
        guest,
    } = Rig::new(None);
    let per_wake = BATCH * MAX_BATCHES_PER_WAKE;
    let backlog = per_wake + 40;
    send(&guest, (0..backlog).map(|n| response(n, GUEST)));
    send(
        &lan,
        std::iter::once(response(100_000, Ipv4Addr::new(192, 168, 50, 1))),
    );
    std::thread::sleep(Duration::from_millis(100));

    // One round of events: both sockets are ready; the guest's is read
    // for MAX_BATCHES_PER_WAKE batches only, the LAN's datagram goes
    // through in the same round.
    let mut events = Events::with_capacity(64);
    poll.poll(&mut events, Some(Duration::from_secs(1)))
        .expect("poll");
    let tokens: Vec<_> = events.iter().map(|e| e.token()).collect();
    assert_eq!(tokens.len(), 2, "{tokens:?}");
    for t in &tokens {
        f.ready(*t);
    }
    assert_eq!(f.stats().received, per_wake as u64 + 1, "{}", f.stats());
    let to_guest: Vec<_> = drain(&guest).iter().filter_map(|m| parse(m)).collect();
    assert_eq!(to_guest, [(100_000, Ipv4Addr::new(192, 168, 50, 1))]);

    // The rest comes as the guest's socket is reported again.
    pump(&mut poll, &mut f);
    let stats = f.stats();
    assert_eq!(stats.received, backlog as u64 + 1, "{stats}");
    let to_lan: Vec<usize> = drain(&lan)
        .iter()
        .filter_map(|m| parse(m))
        .map(|(n, _)| n)
        .collect();
    assert!(to_lan.into_iter().eq(0..backlog), "in order, once each");
}

#[test]
fn what_a_full_receive_buffer_drops_is_counted() {
    if !root() {
        return;
    }
    // The smallest buffer the kernel allows: a few datagrams.
    let Rig {
        _world,
        mut poll,
        mut f,
        lan,
        guest,
    } = Rig::new(Some(1));
    let total = 500;
    send(&guest, (0..total).map(|n| response(n, GUEST)));
    std::thread::sleep(Duration::from_millis(100));
    pump(&mut poll, &mut f);
    let arrived = drain(&lan).len() as u64;

    let stats: Stats = f.stats();
    assert!(stats.receive_overflows > 0, "{stats}");
    assert_eq!(
        stats.received + stats.receive_overflows,
        total as u64,
        "{stats}"
    );
    assert_eq!(stats.sent, stats.received, "{stats}");
    assert_eq!(arrived, stats.sent, "{stats}");
    assert!(
        stats.to_string().contains(&format!(
            "receive buffer overflows {}",
            stats.receive_overflows
        )),
        "{stats}"
    );
}
