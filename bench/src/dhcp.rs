//! DHCP for guests: how fast a client gets its lease from patchpanel's
//! dhcp-server (`guest_dhcp = true`, serving a connected namespace's veth)
//! and from dnsmasq (Debian's, configured the same way: one address, the
//! router, one DNS server, an hour's lease, on a veth pair of its own), in
//! the same run, from the same client code.
//!
//! The client sits in the guest's namespace with a UDP socket on port 68
//! pinned to its link: DISCOVER -> OFFER and REQUEST -> ACK round trips
//! (one hardware address, as a VM that restarts), then, for a few seconds,
//! whole exchanges back to back (leases per second). The targets:
//! at most 0.5x dnsmasq's latency, at least 2x its rate.

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use patchpanel_client::Client;
use patchpanel_dhcp::{client_message, parse_reply, MessageType};
use patchpanel_proto::{ipv4_from_net_u32, ConnectNamespaceRequest};
use patchpanel_tests::world::World;
use patchpanel_tests::{DaemonOptions, Netns};

use crate::interrupt;
use crate::netns_thread::NetnsThread;
use crate::report::{self, Row};
use crate::world::in_world;

const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x0d, 0x1c, 0x90];
const DNS: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 53);
/// How long one reply may take before the exchange counts as lost.
const REPLY_TIMEOUT: Duration = Duration::from_secs(1);

/// One server's numbers.
#[derive(Debug, Default)]
pub struct Series {
    pub discover: Vec<Duration>,
    pub request: Vec<Duration>,
    /// Whole exchanges (DISCOVER..ACK) per second, back to back.
    pub rate: f64,
    pub lost: usize,
}

#[derive(Debug, Default)]
pub struct Samples {
    pub patchpanel: Series,
    pub dnsmasq: Series,
}

/// A client socket in a guest's namespace.
struct DhcpClient {
    socket: UdpSocket,
    xid: u32,
}

fn set(fd: i32, level: i32, name: i32, value: &[u8]) -> std::io::Result<()> {
    // SAFETY: `value` is valid for its length during the call.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            value.as_ptr().cast(),
            value.len() as libc::socklen_t,
        )
    };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

impl DhcpClient {
    /// Port 68 on `ifname` inside the namespace at `netns`.
    fn open(netns: &std::path::Path, ifname: &str) -> Result<DhcpClient> {
        let ifname = ifname.to_string();
        let thread = NetnsThread::enter(netns)?;
        let socket = thread.run(move || -> Result<UdpSocket> {
            let socket = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68))
                .context("bind port 68")?;
            let fd = socket.as_raw_fd();
            set(
                fd,
                libc::SOL_SOCKET,
                libc::SO_BROADCAST,
                &1i32.to_ne_bytes(),
            )?;
            set(
                fd,
                libc::SOL_SOCKET,
                libc::SO_BINDTODEVICE,
                ifname.as_bytes(),
            )?;
            socket.set_read_timeout(Some(REPLY_TIMEOUT))?;
            Ok(socket)
        })??;
        Ok(DhcpClient { socket, xid: 1 })
    }

    /// Sends `request` (with the next xid) and waits for its answer of
    /// `want`: the round trip and the answer's yiaddr and server id.
    fn exchange(
        &mut self,
        kind: MessageType,
        requested: Option<(Ipv4Addr, Ipv4Addr)>,
        want: MessageType,
    ) -> Result<Option<(Duration, Ipv4Addr, Ipv4Addr)>> {
        self.xid = self.xid.wrapping_add(1);
        let xid = self.xid;
        let mut bytes = client_message(
            kind,
            xid,
            MAC,
            Ipv4Addr::UNSPECIFIED,
            requested.map(|r| r.0),
            requested.map(|r| r.1),
        );
        // The BROADCAST flag (RFC 2131 4.1): this client has a plain UDP
        // socket and no address yet, so a reply unicast to the offered
        // address (dnsmasq's default) would not reach it.
        bytes[10] |= 0x80;
        let started = Instant::now();
        self.socket
            .send_to(&bytes, SocketAddrV4::new(Ipv4Addr::BROADCAST, 67))
            .context("send")?;
        let mut buf = [0u8; 1500];
        loop {
            let len = match self.socket.recv(&mut buf) {
                Ok(len) => len,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return Ok(None)
                }
                Err(e) => return Err(e).context("receive"),
            };
            let elapsed = started.elapsed();
            let Some((got, yiaddr, msg)) = parse_reply(&buf[..len]) else {
                continue;
            };
            if msg.xid() != xid || got != want {
                continue;
            }
            let server = match msg.opts().get(dhcproto_server_id()) {
                Some(patchpanel_dhcp::DhcpOption::ServerIdentifier(s)) => *s,
                _ => Ipv4Addr::UNSPECIFIED,
            };
            return Ok(Some((elapsed, yiaddr, server)));
        }
    }

    /// One DORA: the two round trips, or `None` if a reply was lost.
    fn lease(&mut self) -> Result<Option<(Duration, Duration)>> {
        let Some((offer, addr, server)) =
            self.exchange(MessageType::Discover, None, MessageType::Offer)?
        else {
            return Ok(None);
        };
        let Some((ack, _, _)) =
            self.exchange(MessageType::Request, Some((addr, server)), MessageType::Ack)?
        else {
            return Ok(None);
        };
        Ok(Some((offer, ack)))
    }
}

fn dhcproto_server_id() -> patchpanel_dhcp::OptionCode {
    patchpanel_dhcp::OptionCode::ServerIdentifier
}

fn run_series(client: &mut DhcpClient, exchanges: usize, rate_for: Duration) -> Result<Series> {
    let mut s = Series::default();
    // Warm up: ARP, caches, the first lease.
    for _ in 0..5 {
        client.lease()?;
    }
    for _ in 0..exchanges {
        interrupt::check()?;
        match client.lease()? {
            Some((offer, ack)) => {
                s.discover.push(offer);
                s.request.push(ack);
            }
            None => s.lost += 1,
        }
    }
    let started = Instant::now();
    let mut done = 0u64;
    while started.elapsed() < rate_for {
        interrupt::check()?;
        match client.lease()? {
            Some(_) => done += 1,
            None => s.lost += 1,
        }
    }
    s.rate = done as f64 / started.elapsed().as_secs_f64();
    Ok(s)
}

/// dnsmasq on `dm0` in `server_ns`, serving 10.77.0.2 to a client behind
/// the veth `dm1` in `client_ns`, as patchpanel serves its guests.
fn dnsmasq(server_ns: &Netns, client_ns: &Netns, dir: &std::path::Path) -> Result<Child> {
    let ip = |ns: &Netns, argv: &[&str]| ns.exec_ok(argv).map(|_| ());
    ip(
        server_ns,
        &[
            "ip",
            "link",
            "add",
            "dm0",
            "type",
            "veth",
            "peer",
            "name",
            "dm1",
            "netns",
            client_ns.name(),
        ],
    )?;
    ip(
        server_ns,
        &["ip", "addr", "add", "10.77.0.1/30", "dev", "dm0"],
    )?;
    ip(server_ns, &["ip", "link", "set", "dm0", "up"])?;
    ip(client_ns, &["ip", "link", "set", "dm1", "up"])?;
    ip(client_ns, &["ip", "link", "set", "lo", "up"])?;
    let child = Command::new("ip")
        .args(["netns", "exec", server_ns.name(), "dnsmasq"])
        .args([
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--port=0",
            "--interface=dm0",
            "--bind-interfaces",
            "--user=root",
            "--dhcp-authoritative",
            "--dhcp-range=10.77.0.2,10.77.0.2,255.255.255.252,1h",
            "--dhcp-option=option:router,10.77.0.1",
            &format!("--dhcp-option=option:dns-server,{DNS}"),
            "--log-facility=/dev/null",
        ])
        .arg(format!("--dhcp-leasefile={}", dir.join("leases").display()))
        .arg(format!("--pid-file={}", dir.join("pid").display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot start dnsmasq (apt install dnsmasq-base)")?;
    std::thread::sleep(Duration::from_millis(300));
    Ok(child)
}

pub fn measure(exchanges: usize, rate_secs: u64) -> Result<Samples> {
    let options = DaemonOptions {
        extra_config: format!("guest_dhcp = true\nguest_dns = [\"{DNS}\"]\n"),
        ..Default::default()
    };
    let (samples, problem) = in_world(options, |world| measure_in(world, exchanges, rate_secs))?;
    if let Some(problem) = problem {
        eprintln!("bench-dhcp: the daemon's teardown: {problem}");
    }
    Ok(samples)
}

fn measure_in(world: &World, exchanges: usize, rate_secs: u64) -> Result<Samples> {
    let rate_for = Duration::from_secs(rate_secs);
    let c = Client::connect_to(world.bus.address())?;
    let (ns, _lifeline) = c.connect_namespace(&ConnectNamespaceRequest {
        pid: -1,
        ..Default::default()
    })?;
    let netns = std::path::PathBuf::from("/run/netns").join(&ns.netns_name);
    let expected = ipv4_from_net_u32(ns.peer_ipv4_address);
    let mut client = DhcpClient::open(&netns, &ns.peer_ifname)?;
    let patchpanel = run_series(&mut client, exchanges, rate_for)?;
    let Some((_, got, _)) = client.exchange(MessageType::Discover, None, MessageType::Offer)?
    else {
        bail!("patchpanel's dhcp-server stopped answering");
    };
    if got != expected {
        bail!("patchpanel offered {got}, not the namespace's {expected}");
    }
    drop(client);

    let dir = tempfile::tempdir()?;
    let client_ns = Netns::new()?;
    let mut server = dnsmasq(&world.netns, &client_ns, dir.path())?;
    let result = (|| {
        let mut client = DhcpClient::open(&client_ns.path(), "dm1")?;
        run_series(&mut client, exchanges, rate_for)
    })();
    let _ = server.kill();
    let _ = server.wait();
    let mut dnsmasq = result.context("dnsmasq series")?;
    if dnsmasq.discover.is_empty() {
        let mut err = String::new();
        if let Some(mut e) = server.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut e, &mut err);
        }
        dnsmasq.rate = 0.0;
        bail!(
            "dnsmasq answered nothing ({} exchanges lost): {err}",
            dnsmasq.lost
        );
    }
    Ok(Samples {
        patchpanel,
        dnsmasq,
    })
}

pub fn render(s: &Samples) -> String {
    let rows = [
        Row::new("patchpanel DISCOVER->OFFER", Some(&s.patchpanel.discover)),
        Row::new("dnsmasq    DISCOVER->OFFER", Some(&s.dnsmasq.discover)),
        Row::new("patchpanel REQUEST->ACK", Some(&s.patchpanel.request)),
        Row::new("dnsmasq    REQUEST->ACK", Some(&s.dnsmasq.request)),
    ];
    let mut out = report::table_micros(&rows);
    let p = |v: &[Duration], pct| {
        crate::stats::Summary::of(v).map(|s| if pct == 50 { s.p50 } else { s.p99 })
    };
    for (what, ours, theirs) in [
        (
            "DISCOVER->OFFER",
            &s.patchpanel.discover,
            &s.dnsmasq.discover,
        ),
        ("REQUEST->ACK", &s.patchpanel.request, &s.dnsmasq.request),
    ] {
        for pct in [50, 99] {
            if let (Some(a), Some(b)) = (p(ours, pct), p(theirs, pct)) {
                let ratio = a.as_secs_f64() / b.as_secs_f64();
                out.push_str(&format!(
                    "{what} p{pct}: patchpanel/dnsmasq {ratio:.2}x (target <= 0.5x): {}\n",
                    if ratio <= 0.5 { "met" } else { "NOT met" }
                ));
            }
        }
    }
    let ratio = s.patchpanel.rate / s.dnsmasq.rate.max(f64::MIN_POSITIVE);
    out.push_str(&format!(
        "leases/s back to back: patchpanel {:.0}, dnsmasq {:.0}: {ratio:.2}x (target >= 2x): {}\n",
        s.patchpanel.rate,
        s.dnsmasq.rate,
        if ratio >= 2.0 { "met" } else { "NOT met" }
    ));
    out.push_str(&format!(
        "lost exchanges: patchpanel {}, dnsmasq {}\n",
        s.patchpanel.lost, s.dnsmasq.lost
    ));
    out
}
