//! ADB over TCP to ARC: bulk throughput, the relay's CPU per GB and the
//! connection setup latency through `patchpaneld`'s adb-proxy helper, next
//! to `socat` relaying the same way from the same place and to the kernel
//! forwarding the connection itself (the limit), on one topology in one
//! run:
//!
//! ```text
//!  upstream (LAN) netns      daemon netns                     ARC container netns
//!  client  ----------> eth0 192.0.2.2 :5555 adb-proxy ---> arc0 100.115.92.2:5555 server
//!                                     :5556 socat     ---> arc0 100.115.92.2:5555 server
//!                                     :5557 (nothing: auto DNAT) -> eth0 100.115.92.6:5557 server
//! ```
//!
//! * [`Path::Patchpanel`]: the real daemon with `adb_allowed = true` and
//!   ARC (a [`FakeContainer`]) started with `ArcStartup`: port 5555 of the
//!   daemon's namespace, relayed by the adb-proxy helper to ARC's adbd
//!   address.
//! * [`Path::Socat`]: `socat TCP-LISTEN:5556,fork,reuseaddr
//!   TCP:100.115.92.2:5555` in the daemon's namespace (socat's defaults:
//!   one forked process per connection, 8 KiB buffer).
//! * [`Path::Direct`]: nothing listens on 5557 in the daemon's namespace,
//!   so patchpanel's automatic inbound DNAT sends the connection to ARC's
//!   eth0 address: the kernel forwards it, no process copies a byte.
//!
//! The server in ARC and the client upstream are threads of this process
//! whose sockets were made inside those namespaces ([`NetnsThread`]); they
//! speak a three-command protocol (see [`Server`]) that a transparent relay
//! passes through.
//!
//! Series, for each path:
//! * *upload* (client -> ARC, `adb push`): connect, send [`Params::bytes`],
//!   half-close; until the server's byte count arrives (every byte was
//!   received in ARC). *download* (ARC -> client, `adb pull`): connect, ask
//!   for the bytes; until EOF after all of them. [`Params::rounds`] of each,
//!   the paths' order rotated every round.
//! * *CPU*: the relay process's utime+stime (+cutime+cstime, and those of
//!   live children, for socat's forks) from `/proc/<pid>/stat` before and
//!   after each transfer; the direct path has no relay process.
//! * *connect*: connect, one 32-byte request, its 32-byte answer;
//!   [`Params::connections`] per path, interleaved connection by
//!   connection after [`Params::warmup`] unmeasured ones each; after each,
//!   untimed, until the server has finished the connection (and socat has
//!   reaped its fork), so that no connection's teardown overlaps the next.
//! * *whole path CPU* ([`Bulk::path_cpu`], on stderr): the relay's CPU plus
//!   this process's (the client and server threads, with the softirq work
//!   their system calls run inline) plus the `ksoftirqd` threads', per
//!   transfer: what the path costs the machine, whoever runs it, without
//!   other processes' load. When the two CPUs are the limit, the ratio of
//!   two paths' throughputs is at most the inverse ratio of these.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use patchpanel_client::Client;
use patchpanel_tests::procfs::all_stats;
use patchpanel_tests::vm::FakeContainer;
use patchpanel_tests::world::{World, UPLINK_ADDR};
use patchpanel_tests::{DaemonOptions, Helper};
use tempfile::TempDir;

use crate::interrupt;
use crate::netns_thread::NetnsThread;
use crate::world::in_world;

/// adbd's port in ARC, and the relay's on the host.
pub const ADB_PORT: u16 = 5555;
/// socat's port on the host.
pub const SOCAT_PORT: u16 = 5556;
/// The port nothing on the host listens on: DNATed to ARC.
pub const DIRECT_PORT: u16 = 5557;
/// ARC's adbd address (arc0), where both relays connect.
pub const ARC0_ADDR: &str = "100.115.92.2";
/// ARC's gateway on the World's `eth0` bridge, for the DNATed replies.
pub const ARC_ETH0_GATEWAY: &str = "100.115.92.5";
/// The daemon's configuration: ADB on, room for every connection.
pub const ADB_CONFIG: &str = "adb_allowed = true\nadb_max_connections = 64\n";
/// The socat binary (Debian's package).
pub const SOCAT: &str = "/usr/bin/socat";
/// Bytes per read and write on the client and the server.
pub const CHUNK: usize = 256 * 1024;
/// The request and answer of a connect series.
pub const PING_LEN: usize = 32;
/// How long the paths may take to answer after setup.
pub const READY_TIMEOUT: Duration = Duration::from_secs(15);
/// Read/write timeout of every socket of the benchmark.
pub const IO_TIMEOUT: Duration = Duration::from_secs(60);
/// How long socat may take to reap its forks after a transfer.
pub const REAP_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the ARC server may take to finish a connection after its
/// client has its answer.
pub const SETTLE_TIMEOUT: Duration = Duration::from_secs(5);

const UPLOAD: u8 = b'U';
const DOWNLOAD: u8 = b'D';
const PING: u8 = b'P';

/// One way from the client to the server in ARC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    Patchpanel,
    Socat,
    Direct,
}

impl Path {
    pub const ALL: [Path; 3] = [Path::Patchpanel, Path::Socat, Path::Direct];

    pub fn name(self) -> &'static str {
        match self {
            Path::Patchpanel => "patchpanel",
            Path::Socat => "socat",
            Path::Direct => "direct",
        }
    }

    /// The port the client connects to at [`UPLINK_ADDR`].
    pub fn port(self) -> u16 {
        match self {
            Path::Patchpanel => ADB_PORT,
            Path::Socat => SOCAT_PORT,
            Path::Direct => DIRECT_PORT,
        }
    }
}

/// A bulk transfer's direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Client -> ARC.
    Upload,
    /// ARC -> client.
    Download,
}

impl Direction {
    pub const ALL: [Direction; 2] = [Direction::Upload, Direction::Download];

    pub fn name(self) -> &'static str {
        match self {
            Direction::Upload => "upload",
            Direction::Download => "download",
        }
    }
}

/// What to measure.
#[derive(Debug, Clone, Copy)]
pub struct Params {
    /// Bytes per bulk transfer.
    pub bytes: u64,
    /// Bulk transfers per path and direction.
    pub rounds: usize,
    /// Measured connections per path.
    pub connections: usize,
    /// Unmeasured connections per path first.
    pub warmup: usize,
    /// The paths to measure.
    pub paths: &'static [Path],
}

/// The bulk transfers of one path in one direction.
#[derive(Debug, Default, Clone)]
pub struct Bulk {
    /// Wall time of each transfer of [`Params::bytes`].
    pub times: Vec<Duration>,
    /// The relay's CPU time over all of them; `None` for the direct path.
    pub cpu: Option<Duration>,
    /// The whole path's CPU time over all of them: the relay's, this
    /// process's (client and server threads) and the `ksoftirqd` threads'.
    pub path_cpu: Duration,
}

/// One path's numbers.
#[derive(Debug, Default, Clone)]
pub struct PathSamples {
    pub upload: Bulk,
    pub download: Bulk,
    /// Connect + one request/answer.
    pub connect: Vec<Duration>,
}

impl PathSamples {
    pub fn bulk(&self, direction: Direction) -> &Bulk {
        match direction {
            Direction::Upload => &self.upload,
            Direction::Download => &self.download,
        }
    }

    fn bulk_mut(&mut self, direction: Direction) -> &mut Bulk {
        match direction {
            Direction::Upload => &mut self.upload,
            Direction::Download => &mut self.download,
        }
    }
}

/// Everything measured.
#[derive(Debug, Default)]
pub struct AdbSamples {
    /// One entry per measured path, in [`Path::ALL`] order.
    pub paths: Vec<(Path, PathSamples)>,
    /// The bytes of each bulk transfer.
    pub bytes: u64,
    /// What the daemon's shutdown at the end found wrong (the numbers
    /// stand, but the run failed).
    pub cleanup_problems: Vec<String>,
}

impl AdbSamples {
    pub fn get(&self, path: Path) -> Option<&PathSamples> {
        self.paths.iter().find(|(p, _)| *p == path).map(|(_, s)| s)
    }
}

/// Builds the topology around a fresh daemon, measures, tears it down.
pub fn measure(params: Params) -> Result<AdbSamples> {
    if params.bytes == 0 || params.rounds == 0 || params.paths.is_empty() {
        bail!("nothing to measure");
    }
    if params.paths.contains(&Path::Socat) && !std::path::Path::new(SOCAT).is_file() {
        bail!(
            "{SOCAT} does not exist (install the Debian package `socat`, or run scripts/bootstrap)"
        );
    }
    interrupt::check()?;
    let options = DaemonOptions {
        extra_config: ADB_CONFIG.into(),
        ..Default::default()
    };
    let (mut samples, problem) = in_world(options, |world| measure_in(world, params))?;
    samples.cleanup_problems.extend(problem);
    eprint!("{}", render_path_cpu(&samples));
    Ok(samples)
}

fn measure_in(world: &World, params: Params) -> Result<AdbSamples> {
    // Locals drop in reverse order, also on an early return: the client
    // and the relays go before the server, the container last (its
    // namespace with it).
    let arc = FakeContainer::start().context("cannot start the ARC container")?;
    Client::connect_to(world.bus.address())
        .context("cannot connect to the daemon")?
        .arc_startup(arc.pid())
        .context("ArcStartup failed")?;
    arc.bring_up("arc0", None)?;
    arc.bring_up("eth0", Some(ARC_ETH0_GATEWAY))?;
    let server = Server::start(&PathBuf::from(format!("/proc/{}/ns/net", arc.pid())))?;
    let socat = if params.paths.contains(&Path::Socat) {
        Some(Socat::start(world)?)
    } else {
        None
    };
    let client = NetnsThread::enter(&world.internet.upstream.path())?;
    let relay = world
        .daemon
        .tree()
        .context("cannot read the daemon's process tree")?
        .helper(Helper::AdbProxy);
    let relay_cpu = |path: Path| -> Result<Option<Duration>> {
        match path {
            Path::Patchpanel => process_cpu(relay, false).map(Some),
            Path::Socat => match &socat {
                Some(socat) => socat.cpu().map(Some),
                None => Ok(None),
            },
            Path::Direct => Ok(None),
        }
    };

    for &path in params.paths {
        wait_ready(&client, path).with_context(|| {
            let log = socat.as_ref().map(Socat::log).unwrap_or_default();
            format!("the {} path does not answer{log}", path.name())
        })?;
    }

    let mut samples = AdbSamples {
        paths: params
            .paths
            .iter()
            .map(|&p| (p, PathSamples::default()))
            .collect(),
        bytes: params.bytes,
        cleanup_problems: Vec::new(),
    };
    for round in 0..params.rounds {
        for i in 0..params.paths.len() {
            let (path, path_samples) = &mut samples.paths[(i + round) % params.paths.len()];
            for direction in Direction::ALL {
                interrupt::check()?;
                if let Some(socat) = &socat {
                    socat.wait_reaped()?;
                }
                let before = relay_cpu(*path)?;
                let shared_before = shared_cpu()?;
                let bytes = params.bytes;
                let port = path.port();
                let elapsed = client
                    .run(move || transfer(port, direction, bytes))?
                    .with_context(|| format!("{} {} failed", path.name(), direction.name()))?;
                if *path == Path::Socat {
                    if let Some(socat) = &socat {
                        socat.wait_reaped()?;
                    }
                }
                let after = relay_cpu(*path)?;
                let shared_after = shared_cpu()?;
                let bulk = path_samples.bulk_mut(direction);
                bulk.times.push(elapsed);
                bulk.path_cpu += shared_after.saturating_sub(shared_before);
                if let (Some(before), Some(after)) = (before, after) {
                    let spent = after.saturating_sub(before);
                    bulk.cpu = Some(bulk.cpu.unwrap_or_default() + spent);
                    bulk.path_cpu += spent;
                }
            }
        }
    }

    for i in 0..params.warmup + params.connections {
        for (path, path_samples) in samples.paths.iter_mut() {
            interrupt::check()?;
            let port = path.port();
            let elapsed = client
                .run(move || ping(port))?
                .with_context(|| format!("{} connect #{i} failed", path.name()))?;
            if i >= params.warmup {
                path_samples.connect.push(elapsed);
            }
            // Each connection starts on a quiet machine: the last one's
            // teardown (the server's thread, socat's fork, the relay's
            // close) is over, whichever path it took.
            server.wait_idle()?;
            if *path == Path::Socat {
                if let Some(socat) = &socat {
                    socat.wait_reaped()?;
                }
            }
        }
    }
    drop(client);
    drop(socat);
    server.stop();
    drop(arc);
    Ok(samples)
}

/// The CPU time of this process (every thread: the client's and the
/// server's) and of the `ksoftirqd` threads (network work the kernel
/// deferred to them): the part of a path's cost outside its relay.
fn shared_cpu() -> Result<Duration> {
    let mut total = process_cpu(std::process::id(), false)?;
    for stat in all_stats()? {
        if stat.comm.starts_with("ksoftirqd/") {
            // A thread that cannot be read counts nothing.
            total += process_cpu(stat.pid, false).unwrap_or_default();
        }
    }
    Ok(total)
}

/// The whole-path CPU block printed on stderr after the run: s/GB per path
/// and direction, and what the CPUs allow relative to the direct path.
pub fn render_path_cpu(samples: &AdbSamples) -> String {
    let per_gb = |bulk: &Bulk| {
        (!bulk.times.is_empty())
            .then(|| cpu_per_gb(bulk.path_cpu, samples.bytes * bulk.times.len() as u64))
            .flatten()
    };
    let mut out = String::from(
        "whole path CPU s/GB (relay + this benchmark's client and server threads + ksoftirqd)\n",
    );
    for (path, s) in &samples.paths {
        let cell = |d: Direction| match per_gb(s.bulk(d)) {
            Some(v) => format!("{v:8.3}"),
            None => format!("{:>8}", "n/a"),
        };
        out += &format!(
            "  {:<12} upload {}  download {}\n",
            path.name(),
            cell(Direction::Upload),
            cell(Direction::Download)
        );
    }
    if let (Some(pp), Some(direct)) = (samples.get(Path::Patchpanel), samples.get(Path::Direct)) {
        let bound = |d: Direction| match (per_gb(direct.bulk(d)), per_gb(pp.bulk(d))) {
            (Some(direct), Some(pp)) if pp > 0.0 => format!("{:.2}", direct / pp),
            _ => "n/a".into(),
        };
        out += &format!(
            "  CPU-bound ceiling of patchpanel/direct (direct's s/GB / patchpanel's): upload {} ; download {}\n",
            bound(Direction::Upload),
            bound(Direction::Download)
        );
    }
    out
}

/// Polls `path` with pings until one is answered.
fn wait_ready(client: &NetnsThread, path: Path) -> Result<()> {
    let started = Instant::now();
    loop {
        interrupt::check()?;
        let port = path.port();
        match client.run(move || ping(port))? {
            Ok(_) => return Ok(()),
            Err(err) if started.elapsed() > READY_TIMEOUT => {
                return Err(err.context(format!("nothing answered within {READY_TIMEOUT:?}")))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

fn connect(port: u16) -> Result<TcpStream> {
    let addr: std::net::Ipv4Addr = UPLINK_ADDR.parse().context("bad uplink address")?;
    let addr = SocketAddr::V4(SocketAddrV4::new(addr, port));
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .with_context(|| format!("cannot connect to {addr}"))?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(stream)
}

/// One bulk transfer through `port`, timed from before the connect.
fn transfer(port: u16, direction: Direction, bytes: u64) -> Result<Duration> {
    let chunk = vec![0x5au8; CHUNK];
    let started = Instant::now();
    let mut stream = connect(port)?;
    match direction {
        Direction::Upload => {
            stream.write_all(&[UPLOAD])?;
            write_bytes(&mut stream, &chunk, bytes).context("cannot send")?;
            stream.shutdown(Shutdown::Write)?;
            let mut count = [0u8; 8];
            stream
                .read_exact(&mut count)
                .context("no byte count from the server")?;
            let elapsed = started.elapsed();
            let count = u64::from_be_bytes(count);
            if count != bytes {
                bail!("the server received {count} bytes, not {bytes}");
            }
            Ok(elapsed)
        }
        Direction::Download => {
            let mut request = [DOWNLOAD; 9];
            request[1..].copy_from_slice(&bytes.to_be_bytes());
            stream.write_all(&request)?;
            let mut buf = chunk;
            let received = read_to_eof(&mut stream, &mut buf).context("cannot receive")?;
            let elapsed = started.elapsed();
            if received != bytes {
                bail!("received {received} bytes, not {bytes}");
            }
            Ok(elapsed)
        }
    }
}

/// Connect, one request, its answer; timed from before the connect.
fn ping(port: u16) -> Result<Duration> {
    let mut request = [0x42u8; PING_LEN];
    request[0] = PING;
    let started = Instant::now();
    let mut stream = connect(port)?;
    stream.write_all(&request)?;
    let mut answer = [0u8; PING_LEN];
    stream
        .read_exact(&mut answer)
        .context("no answer to the request")?;
    let elapsed = started.elapsed();
    if answer != request {
        bail!("the answer differs from the request");
    }
    Ok(elapsed)
}

fn write_bytes(stream: &mut TcpStream, chunk: &[u8], bytes: u64) -> std::io::Result<()> {
    let mut left = bytes;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        stream.write_all(&chunk[..n])?;
        left -= n as u64;
    }
    Ok(())
}

fn read_to_eof(stream: &mut TcpStream, buf: &mut [u8]) -> std::io::Result<u64> {
    let mut total = 0u64;
    loop {
        match stream.read(buf) {
            Ok(0) => return Ok(total),
            Ok(n) => total += n as u64,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// adbd's stand-in in ARC: listeners on 0.0.0.0:[`ADB_PORT`] (the relays'
/// target) and 0.0.0.0:[`DIRECT_PORT`] (the DNAT's), one thread per
/// connection. The first byte of a connection says what it wants:
/// `U` (then bytes to EOF: answered with their count, 8 bytes big endian),
/// `D` + a count (8 bytes big endian: that many bytes, then EOF) or `P` +
/// 31 bytes (echoed, then EOF awaited).
#[derive(Debug)]
pub struct Server {
    listeners: Vec<Arc<TcpListener>>,
    threads: Vec<JoinHandle<()>>,
    /// Connections accepted and not yet finished.
    open: Arc<AtomicUsize>,
}

impl Server {
    /// Listens inside the network namespace at `netns`.
    pub fn start(netns: &std::path::Path) -> Result<Server> {
        let inside = NetnsThread::enter(netns)?;
        let mut listeners = Vec::new();
        for port in [ADB_PORT, DIRECT_PORT] {
            let listener = inside
                .run(move || TcpListener::bind(("0.0.0.0", port)))?
                .with_context(|| format!("cannot listen on port {port} in ARC"))?;
            listeners.push(Arc::new(listener));
        }
        drop(inside);
        let mut threads = Vec::new();
        let open = Arc::new(AtomicUsize::new(0));
        for listener in &listeners {
            let listener = Arc::clone(listener);
            let open = Arc::clone(&open);
            threads.push(
                std::thread::Builder::new()
                    .name("bench-arc-accept".into())
                    .spawn(move || accept_loop(&listener, &open))
                    .context("cannot start a thread")?,
            );
        }
        Ok(Server {
            listeners,
            threads,
            open,
        })
    }

    /// Waits until every connection the server accepted has finished (its
    /// thread saw EOF and closed), so that the next measurement does not
    /// share the CPUs with the last one's teardown.
    pub fn wait_idle(&self) -> Result<()> {
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        while self.open.load(Ordering::SeqCst) > 0 {
            if Instant::now() > deadline {
                bail!("the ARC server still has connections open after {SETTLE_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        Ok(())
    }

    /// Closes the listeners and joins their threads (connections still
    /// open end with their clients).
    pub fn stop(mut self) {
        self.shut_down();
    }

    fn shut_down(&mut self) {
        for listener in &self.listeners {
            // SAFETY: shutdown on a socket we hold open; on a listening TCP
            // socket it wakes the blocked accept, which fails with EINVAL.
            unsafe { libc::shutdown(listener.as_raw_fd(), libc::SHUT_RDWR) };
        }
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shut_down();
    }
}

fn accept_loop(listener: &TcpListener, open: &Arc<AtomicUsize>) {
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                open.fetch_add(1, Ordering::SeqCst);
                let finished = Arc::clone(open);
                let spawned = std::thread::Builder::new()
                    .name("bench-arc-conn".into())
                    .spawn(move || {
                        if let Err(err) = serve(stream) {
                            eprintln!("bench-adb: ARC server: {err:#}");
                        }
                        finished.fetch_sub(1, Ordering::SeqCst);
                    });
                if spawned.is_err() {
                    open.fetch_sub(1, Ordering::SeqCst);
                    eprintln!("bench-adb: ARC server: cannot start a thread");
                }
            }
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
            // EINVAL after the shutdown in Server::stop.
            Err(_) => return,
        }
    }
}

fn serve(mut stream: TcpStream) -> Result<()> {
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut command = [0u8; 1];
    if stream.read(&mut command)? == 0 {
        return Ok(()); // a port probe
    }
    match command[0] {
        UPLOAD => {
            let mut buf = vec![0u8; CHUNK];
            let count = read_to_eof(&mut stream, &mut buf)?;
            stream.write_all(&count.to_be_bytes())?;
        }
        DOWNLOAD => {
            let mut count = [0u8; 8];
            stream.read_exact(&mut count)?;
            let chunk = vec![0xa5u8; CHUNK];
            write_bytes(&mut stream, &chunk, u64::from_be_bytes(count))?;
        }
        PING => {
            let mut request = [PING; PING_LEN];
            stream.read_exact(&mut request[1..])?;
            stream.write_all(&request)?;
            let mut rest = [0u8; 64];
            read_to_eof(&mut stream, &mut rest)?;
        }
        other => bail!("unknown command byte {other:#04x}"),
    }
    Ok(())
}

/// `socat TCP-LISTEN:5556,fork,reuseaddr TCP:100.115.92.2:5555` in the
/// daemon's namespace (`nsenter` execs it: the child is socat). SIGTERM on
/// drop, SIGKILL if it has not exited 5 s later.
#[derive(Debug)]
struct Socat {
    child: Child,
    log: PathBuf,
    _dir: TempDir,
}

impl Socat {
    fn start(world: &World) -> Result<Socat> {
        let dir = tempfile::Builder::new()
            .prefix("pp-bench-adb-")
            .tempdir()
            .context("cannot create a directory")?;
        let log = dir.path().join("socat.log");
        let out = File::create(&log).with_context(|| format!("cannot create {}", log.display()))?;
        let child = Command::new("nsenter")
            .arg(format!("--net={}", world.netns.path().display()))
            .arg("--")
            .args([
                SOCAT,
                &format!("TCP-LISTEN:{SOCAT_PORT},fork,reuseaddr"),
                &format!("TCP:{ARC0_ADDR}:{ADB_PORT}"),
            ])
            .stdin(Stdio::null())
            .stdout(out.try_clone().context("cannot duplicate the log file")?)
            .stderr(out)
            .spawn()
            .context("cannot start socat")?;
        Ok(Socat {
            child,
            log,
            _dir: dir,
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// socat's CPU time: its own, its reaped forks' and its live forks'.
    fn cpu(&self) -> Result<Duration> {
        let mut total = process_cpu(self.pid(), true)?;
        for child in forks(self.pid())? {
            // A fork that exits meanwhile is in the parent's cutime later.
            total += process_cpu(child, true).unwrap_or_default();
        }
        Ok(total)
    }

    /// Waits until every fork has exited and been reaped (its CPU time is
    /// then in socat's cutime/cstime).
    fn wait_reaped(&self) -> Result<()> {
        let deadline = Instant::now() + REAP_TIMEOUT;
        while !forks(self.pid())?.is_empty() {
            if Instant::now() > deadline {
                bail!("socat's forks did not exit within {REAP_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        Ok(())
    }

    /// socat's log, for error messages.
    fn log(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        if text.trim().is_empty() {
            String::new()
        } else {
            format!("; socat said: {}", text.trim())
        }
    }
}

impl Drop for Socat {
    fn drop(&mut self) {
        // socat reaps its forks; once it is gone they would be left to
        // init. So its forks go first: they exit with their connections,
        // and any still open (after an error) are told to stop.
        if let Ok(None) = self.child.try_wait() {
            if self.wait_reaped().is_err() {
                for fork in forks(self.pid()).unwrap_or_default() {
                    if let Ok(pid) = i32::try_from(fork) {
                        // SAFETY: kill takes integers only; the pid is a
                        // child of our unreaped child, so not yet reused.
                        unsafe { libc::kill(pid, libc::SIGTERM) };
                    }
                }
                if let Err(err) = self.wait_reaped() {
                    eprintln!("bench: {err:#}");
                }
            }
        }
        if let Ok(None) = self.child.try_wait() {
            if let Ok(pid) = i32::try_from(self.child.id()) {
                // SAFETY: kill takes integers only; the pid is our unreaped
                // child.
                unsafe { libc::kill(pid, libc::SIGTERM) };
            }
            let deadline = Instant::now() + Duration::from_secs(5);
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if matches!(self.child.try_wait(), Ok(None)) {
                eprintln!("bench: socat ignored SIGTERM; killing it");
                let _ = self.child.kill();
            }
        }
        let _ = self.child.wait();
    }
}

/// The children of `pid`, zombies included.
fn forks(pid: u32) -> Result<Vec<u32>> {
    Ok(all_stats()?
        .into_iter()
        .filter(|s| s.ppid == pid)
        .map(|s| s.pid)
        .collect())
}

/// `pid`'s utime+stime from `/proc/<pid>/stat` (plus cutime+cstime, its
/// reaped children's, when `with_children`).
pub fn process_cpu(pid: u32, with_children: bool) -> Result<Duration> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    let ticks = cpu_ticks(&text, with_children).with_context(|| format!("cannot parse {path}"))?;
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if per_second <= 0 {
        bail!("sysconf(_SC_CLK_TCK) failed");
    }
    Ok(Duration::from_secs_f64(ticks as f64 / per_second as f64))
}

/// Fields 14 and 15 (utime, stime), and 16 and 17 (cutime, cstime) when
/// `with_children`, of a `/proc/<pid>/stat` line, in clock ticks. comm
/// may hold spaces and parentheses: fields are counted from the last `)`.
pub fn cpu_ticks(stat: &str, with_children: bool) -> Result<u64> {
    let close = stat.rfind(')').context("no ')' in the stat line")?;
    // Field 3 (state) is the first after comm.
    let rest: Vec<&str> = stat[close + 1..].split_whitespace().collect();
    let fields = if with_children { 14..=17 } else { 14..=15 };
    let mut total = 0u64;
    for field in fields {
        let value = rest
            .get(field - 3)
            .with_context(|| format!("no field {field}"))?;
        let value: i64 = value
            .parse()
            .with_context(|| format!("field {field} is not a number"))?;
        total += value.max(0) as u64;
    }
    Ok(total)
}

/// Gbit/s of `bytes` in `time`.
pub fn gbit_per_second(bytes: u64, time: Duration) -> Option<f64> {
    (!time.is_zero()).then(|| bytes as f64 * 8.0 / 1e9 / time.as_secs_f64())
}

/// CPU seconds per GB (10^9 bytes) relayed.
pub fn cpu_per_gb(cpu: Duration, bytes: u64) -> Option<f64> {
    (bytes > 0).then(|| cpu.as_secs_f64() / (bytes as f64 / 1e9))
}

/// The median (lower middle, as [`crate::stats`]) of `values`.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = (sorted.len() * 50).div_ceil(100);
    sorted.get(rank.max(1) - 1).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "4242 (socat (x) y) S 1 4242 4242 0 -1 4194560 120 0 0 0 \
                        250 130 7 3 20 0 1 0 12345 10000 200 18446744073709551615";

    #[test]
    fn cpu_ticks_are_utime_and_stime() {
        assert_eq!(cpu_ticks(STAT, false).expect("parse"), 380);
    }

    #[test]
    fn cpu_ticks_with_children_add_cutime_and_cstime() {
        assert_eq!(cpu_ticks(STAT, true).expect("parse"), 390);
    }

    #[test]
    fn a_truncated_stat_line_is_an_error() {
        assert!(cpu_ticks("1 (x) S 0 1", false).is_err());
    }

    #[test]
    fn a_gibibyte_in_a_second_is_8_59_gbit_per_second() {
        let rate = gbit_per_second(1 << 30, Duration::from_secs(1)).expect("rate");

        assert!((rate - 8.589_934_592).abs() < 1e-9, "{rate}");
    }

    #[test]
    fn cpu_per_gb_scales_to_a_billion_bytes() {
        let per_gb = cpu_per_gb(Duration::from_millis(250), 500_000_000).expect("ratio");

        assert!((per_gb - 0.5).abs() < 1e-12, "{per_gb}");
    }

    #[test]
    fn median_of_an_even_series_is_the_lower_middle() {
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.0));
        assert_eq!(median(&[]), None);
    }

    #[test]
    fn this_process_has_a_cpu_time() {
        process_cpu(std::process::id(), true).expect("own stat");
    }
}
