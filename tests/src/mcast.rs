//! Real mDNS, SSDP and broadcast peers for the forwarder's end-to-end
//! tests: small Python programs (see [`crate::traffic`]) that build and
//! parse DNS messages themselves, so the forwarder's parser is checked by
//! an independent one.
//!
//! Every program prints `listening` once its socket is ready (servers) and
//! one line per result; the test reads the lines.

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdout};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::traffic;

/// DNS message helpers shared by the programs below.
const DNS_PY: &str = r#"
import socket, struct, sys, select, time
def qname(n):
    return b''.join(bytes([len(p)]) + p.encode() for p in n.split('.')) + b'\0'
def query(n, qtype=1):
    return struct.pack('!6H', 0, 0, 1, 0, 0, 0) + qname(n) + struct.pack('!HH', qtype, 1)
def response(n, ip4, pad=0):
    rrs = [qname(n) + struct.pack('!HHIH', 1, 0x8001, 120, 4) + socket.inet_aton(ip4)]
    if pad:
        strings = b''
        while len(strings) < pad:
            chunk = min(255, pad - len(strings))
            strings += bytes([chunk]) + b'x' * chunk
        rrs.append(qname('pad.' + n) + struct.pack('!HHIH', 16, 0x8001, 120, len(strings)) + strings)
    return struct.pack('!6H', 0, 0x8400, 0, len(rrs), 0, 0) + b''.join(rrs)
def name_end(m, i):
    while True:
        l = m[i]
        if l == 0: return i + 1
        if l & 0xc0 == 0xc0: return i + 2
        i += 1 + l
def read_name(m, i, depth=0):
    labels = []
    while True:
        l = m[i]
        if l == 0: break
        if l & 0xc0 == 0xc0:
            labels.append(read_name(m, ((l & 0x3f) << 8) | m[i + 1], depth + 1)); break
        labels.append(m[i + 1:i + 1 + l].decode()); i += 1 + l
    return '.'.join(labels)
def parse(m):
    """(is_response, [qname], [(rrname, type, rdata)])"""
    flags, qd, an, ns, ar = struct.unpack('!5H', m[2:12])
    i = 12; qs = []
    for _ in range(qd):
        qs.append(read_name(m, i)); i = name_end(m, i) + 4
    rrs = []
    for _ in range(an + ns + ar):
        n = read_name(m, i); i = name_end(m, i)
        t, c, ttl, l = struct.unpack('!HHIH', m[i:i + 10]); i += 10
        rrs.append((n, t, m[i:i + l])); i += l
    return (flags & 0x8000 != 0, qs, rrs)
def a_records(m, n):
    return [socket.inet_ntoa(d) for (rn, t, d) in parse(m)[2] if t == 1 and rn == n]
def group_socket(family, group, port, ifname, bind_port=None):
    idx = socket.if_nametoindex(ifname)
    if family == 4:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, ifname.encode())
        s.bind(('', port if bind_port is None else bind_port))
        mreqn = socket.inet_aton(group) + socket.inet_aton('0.0.0.0') + struct.pack('@i', idx)
        if bind_port is None:
            s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreqn)
        s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, mreqn)
        s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 255)
        return s, (group, port)
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, ifname.encode())
    s.bind(('::', port if bind_port is None else bind_port))
    if bind_port is None:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, socket.inet_pton(socket.AF_INET6, group) + struct.pack('@I', idx))
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, idx)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
    return s, (group, port, 0, idx)
"#;

/// A child whose stdout lines arrive on a channel.
#[derive(Debug)]
pub struct Peer {
    child: Option<Child>,
    lines: mpsc::Receiver<String>,
}

impl Peer {
    fn spawn(netns: &str, script: &str, wait_listening: bool) -> Result<Peer> {
        let program = format!("{DNS_PY}\n{script}");
        let mut child = traffic::spawn(netns, &program)?;
        let stdout: ChildStdout = child.stdout.take().context("no stdout")?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let peer = Peer {
            child: Some(child),
            lines,
        };
        if wait_listening {
            let first = peer.line(Duration::from_secs(10));
            if first.as_deref() != Some("listening") {
                anyhow::bail!("the peer in {netns} did not start: {first:?}");
            }
        }
        Ok(peer)
    }

    /// The next line within `timeout`.
    pub fn line(&self, timeout: Duration) -> Option<String> {
        self.lines.recv_timeout(timeout).ok()
    }

    /// Waits for the program to exit and returns every line it printed.
    pub fn finish(self, timeout: Duration) -> Vec<String> {
        let mut out = Vec::new();
        while let Some(l) = self.line(timeout) {
            out.push(l);
        }
        out
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        if let Some(child) = self.child.take() {
            traffic::stop(child);
        }
    }
}

fn family_of(group: &str) -> u8 {
    if group.contains(':') {
        6
    } else {
        4
    }
}

/// An mDNS responder on `ifname` answering A queries for `name` with
/// `addr` (plus a TXT record of `pad` bytes): multicast to a 5353 querier,
/// unicast to a legacy one, as RFC 6762 §6.7 wants. Prints each query's
/// source.
pub fn mdns_responder(
    netns: &str,
    ifname: &str,
    group: &str,
    name: &str,
    addr: &str,
    pad: usize,
) -> Result<Peer> {
    let family = family_of(group);
    Peer::spawn(
        netns,
        &format!(
            "s, dst = group_socket({family}, '{group}', 5353, '{ifname}')\n\
             print('listening', flush=True)\n\
             while True:\n\
             \x20   m, src = s.recvfrom(65536)\n\
             \x20   try: is_resp, qs, _ = parse(m)\n\
             \x20   except Exception: continue\n\
             \x20   if is_resp or '{name}' not in qs: continue\n\
             \x20   print('query from', src[0], src[1], flush=True)\n\
             \x20   r = response('{name}', '{addr}', {pad})\n\
             \x20   s.sendto(r, dst if src[1] == 5353 else src)\n"
        ),
        true,
    )
}

/// Asks for `name`'s A record on `ifname` every half second for up to
/// `secs` seconds: from port 5353 (answers arrive by multicast) or, if
/// `legacy`, from an ephemeral port (answers arrive by unicast). Prints
/// `answer <source> <length> <A records...>` for each answer, then exits.
pub fn mdns_query(
    netns: &str,
    ifname: &str,
    group: &str,
    name: &str,
    legacy: bool,
    secs: u32,
) -> Result<Peer> {
    let family = family_of(group);
    let bind = if legacy { "0" } else { "None" };
    Peer::spawn(
        netns,
        &format!(
            "s, dst = group_socket({family}, '{group}', 5353, '{ifname}', {bind})\n\
             end = time.time() + {secs}; nxt = 0; got = 0\n\
             while time.time() < end and got == 0:\n\
             \x20   if time.time() >= nxt:\n\
             \x20       s.sendto(query('{name}'), dst); nxt = time.time() + 0.5\n\
             \x20   r, _, _ = select.select([s], [], [], 0.1)\n\
             \x20   if not r: continue\n\
             \x20   m, src = s.recvfrom(65536)\n\
             \x20   try: is_resp, _, records = parse(m)\n\
             \x20   except Exception: continue\n\
             \x20   if not is_resp: continue\n\
             \x20   if not any(rn == '{name}' for (rn, _, _) in records): continue\n\
             \x20   got = 1\n\
             \x20   print('answer', src[0], len(m), *a_records(m, '{name}'), flush=True)\n"
        ),
        false,
    )
}

/// An SSDP device on `ifname`: answers each M-SEARCH by unicast to the
/// searcher's address and port.
pub fn ssdp_device(netns: &str, ifname: &str, group: &str) -> Result<Peer> {
    let family = family_of(group);
    Peer::spawn(
        netns,
        &format!(
            "s, dst = group_socket({family}, '{group}', 1900, '{ifname}')\n\
             print('listening', flush=True)\n\
             while True:\n\
             \x20   m, src = s.recvfrom(65536)\n\
             \x20   if not m.startswith(b'M-SEARCH * HTTP/1.1'): continue\n\
             \x20   print('search from', src[0], src[1], flush=True)\n\
             \x20   s.sendto(b'HTTP/1.1 200 OK\\r\\nST: upnp:rootdevice\\r\\nUSN: uuid:test-device\\r\\n\\r\\n', src)\n"
        ),
        true,
    )
}

/// Sends an M-SEARCH from an ephemeral port every half second for up to
/// `secs` seconds; prints `reply <source> <USN line>` for the first answer.
pub fn ssdp_search(netns: &str, ifname: &str, group: &str, secs: u32) -> Result<Peer> {
    let family = family_of(group);
    Peer::spawn(
        netns,
        &format!(
            "s, dst = group_socket({family}, '{group}', 1900, '{ifname}', 0)\n\
             msg = b'M-SEARCH * HTTP/1.1\\r\\nHOST: 239.255.255.250:1900\\r\\nMAN: \"ssdp:discover\"\\r\\nMX: 1\\r\\nST: ssdp:all\\r\\n\\r\\n'\n\
             end = time.time() + {secs}; nxt = 0\n\
             while time.time() < end:\n\
             \x20   if time.time() >= nxt:\n\
             \x20       s.sendto(msg, dst); nxt = time.time() + 0.5\n\
             \x20   r, _, _ = select.select([s], [], [], 0.1)\n\
             \x20   if not r: continue\n\
             \x20   m, src = s.recvfrom(65536)\n\
             \x20   if m.startswith(b'HTTP/1.1 200 OK'):\n\
             \x20       usn = [l for l in m.split(b'\\r\\n') if l.startswith(b'USN:')]\n\
             \x20       print('reply', src[0], usn[0].decode() if usn else '-', flush=True); break\n"
        ),
        false,
    )
}

/// Receives UDP on `port` (every address, so broadcasts too) on `ifname`;
/// prints `got <source ip> <source port> <payload>` per datagram. The
/// kernel drops datagrams whose UDP checksum does not verify, so a line
/// means a valid checksum.
pub fn udp_sink(netns: &str, ifname: &str, port: u16) -> Result<Peer> {
    Peer::spawn(
        netns,
        &format!(
            "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
             s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
             s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b'{ifname}')\n\
             s.bind(('', {port}))\n\
             print('listening', flush=True)\n\
             while True:\n\
             \x20   m, src = s.recvfrom(65536)\n\
             \x20   print('got', src[0], src[1], m.decode(errors='replace'), flush=True)\n"
        ),
        true,
    )
}

/// Sends `payload` to `dst:port` with SO_BROADCAST from port `src_port` on
/// `ifname`, every 200 ms, `count` times.
pub fn udp_broadcast(
    netns: &str,
    ifname: &str,
    dst: &str,
    port: u16,
    src_port: u16,
    payload: &str,
    count: u32,
) -> Result<Peer> {
    Peer::spawn(
        netns,
        &format!(
            "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
             s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)\n\
             s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
             s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b'{ifname}')\n\
             s.bind(('', {src_port}))\n\
             for _ in range({count}):\n\
             \x20   s.sendto(b'{payload}', ('{dst}', {port})); time.sleep(0.2)\n\
             print('done', flush=True)\n"
        ),
        false,
    )
}
