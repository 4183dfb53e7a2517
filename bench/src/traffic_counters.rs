//! `GetTrafficCounters` with 1, 10 and 50 uplinks, against the naive read of
//! the same counters.
//!
//! The World's daemon has one uplink, `eth0`. More uplinks are veth pairs
//! `eth1`, `eth2`, ... in the daemon's namespace (an uplink by name prefix:
//! the daemon runs with `--uplinks=netlink`), their peers `up1`, `up2`, ...
//! in the upstream namespace, both ends up, without addresses; they carry no
//! traffic beyond the kernel's own IPv6 chatter. Before each series the
//! benchmark waits (off the clock) until both families' mangle tables hold
//! the jumps to every uplink's accounting chains `rx_<if>`/`tx_<if>`, then
//! until the uplinks' IPv6 link-local addresses are past duplicate address
//! detection and the daemon's log has been quiet for [`QUIET_PERIOD`]. At
//! the start it pings the upstream host once from the daemon's namespace,
//! so that `eth0` has something to count.
//!
//! patchpanel: `GetTrafficCounters` for all uplinks, from just before the
//! call to the answer. The first answer of each series must list `eth0`.
//!
//! Naive peer, in the same namespace, interleaved call by call: what
//! upstream patchpanel does, `iptables -w -t mangle -L -x -v -n`, then the
//! same with `ip6tables`, each output parsed for the `rx_`/`tx_` chains and
//! summed per (interface, mark, family), from the first spawn to the parsed
//! result. With the nftables backend the counters are in patchpanel's own
//! tables, which `iptables` does not see: the naive read is then `nft list
//! table ip patchpanel_mangle` and the same for `ip6`, parsed the same way.
//! The first result of each series must cover every uplink.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use patchpanel_client::Client;
use patchpanel_tests::world::{World, REMOTE_HOST};
use patchpanel_tests::Netns;

use crate::interrupt;
use crate::netns_thread::NetnsThread;
use crate::process::{argv, run_timed};

/// The uplink counts measured unless told otherwise.
pub const DEFAULT_UPLINKS: [usize; 3] = [1, 10, 50];
/// The most uplinks a run may ask for.
pub const MAX_UPLINKS: usize = 100;
/// How long the daemon may take to pick up new uplinks.
pub const UPLINK_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the daemon's log must stay unchanged before a series starts.
pub const QUIET_PERIOD: Duration = Duration::from_millis(500);

/// The uplink `index` (0 is the World's `eth0`).
pub fn uplink_name(index: usize) -> String {
    format!("eth{index}")
}

/// Latencies measured with one number of uplinks; `None` for a side not
/// asked for.
#[derive(Debug, Default)]
pub struct Stage {
    pub uplinks: usize,
    pub patchpanel: Option<Vec<Duration>>,
    pub naive: Option<Vec<Duration>>,
}

/// What the counter series measured, by ascending uplink count.
#[derive(Debug, Default)]
pub struct CounterSamples {
    pub stages: Vec<Stage>,
    /// `iptables -V` in the daemon's namespace: the cost of starting one
    /// `iptables` process that does not talk to the kernel (empty when the
    /// naive side was not asked for).
    pub process_start: Vec<Duration>,
}

/// For each count of `uplinks` (ascending, the first at least 1), adds
/// uplinks up to that count and measures `calls` reads after `warmup`
/// unmeasured ones, on patchpanel and/or the naive peer.
pub fn measure(
    world: &World,
    uplinks: &[usize],
    calls: usize,
    warmup: usize,
    patchpanel: bool,
    naive: bool,
) -> Result<CounterSamples> {
    check_uplink_counts(uplinks)?;
    let client = if patchpanel {
        Some(Client::connect_to(world.bus.address()).context("cannot connect to the bus")?)
    } else {
        None
    };
    let thread = if naive {
        Some(NetnsThread::enter(&world.netns.path())?)
    } else {
        None
    };
    world
        .netns
        .exec_ok(&["ping", "-c", "1", "-W", "3", REMOTE_HOST])
        .context("the daemon's namespace cannot reach the upstream host")?;

    let mut samples = CounterSamples::default();
    if let Some(thread) = &thread {
        let version = argv(&["iptables", "-V"]);
        for _ in 0..calls {
            interrupt::check()?;
            let command = version.clone();
            samples
                .process_start
                .push(thread.run(move || run_timed(&command))??.0);
        }
    }

    let mut present = 1;
    for &count in uplinks {
        interrupt::check()?;
        add_uplinks(world, present, count)?;
        present = count;
        wait_for_accounting(&world.netns, count)?;
        wait_for_quiet(world)?;
        let mut stage = Stage {
            uplinks: count,
            patchpanel: client.as_ref().map(|_| Vec::with_capacity(calls)),
            naive: thread.as_ref().map(|_| Vec::with_capacity(calls)),
        };
        for i in 0..warmup + calls {
            interrupt::check()?;
            let check = i == 0;
            if let Some(client) = &client {
                let elapsed = patchpanel_read(client, check)
                    .with_context(|| format!("GetTrafficCounters {i} with {count} uplinks"))?;
                if let Some(series) = stage.patchpanel.as_mut().filter(|_| i >= warmup) {
                    series.push(elapsed);
                }
            }
            if let Some(thread) = &thread {
                let (elapsed, counters) = thread
                    .run(naive_read)?
                    .with_context(|| format!("naive read {i} with {count} uplinks"))?;
                if check {
                    check_naive_covers(&counters, count)?;
                }
                if let Some(series) = stage.naive.as_mut().filter(|_| i >= warmup) {
                    series.push(elapsed);
                }
            }
        }
        samples.stages.push(stage);
    }
    Ok(samples)
}

/// Fails unless `uplinks` rises from at least 1 to at most [`MAX_UPLINKS`].
pub fn check_uplink_counts(uplinks: &[usize]) -> Result<()> {
    if uplinks.is_empty() {
        bail!("no uplink count to measure");
    }
    let mut previous = 0;
    for &count in uplinks {
        if count <= previous || count > MAX_UPLINKS {
            bail!(
                "uplink counts must rise, from at least 1 to at most {MAX_UPLINKS}: {}",
                uplinks
                    .iter()
                    .map(usize::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            );
        }
        previous = count;
    }
    Ok(())
}

/// One `GetTrafficCounters` for all uplinks; `check` requires `eth0` in the
/// answer (it carried a ping).
fn patchpanel_read(client: &Client, check: bool) -> Result<Duration> {
    let started = Instant::now();
    let counters = client
        .get_traffic_counters::<&str>(&[])
        .context("GetTrafficCounters failed")?;
    let elapsed = started.elapsed();
    if check && !counters.iter().any(|c| c.device == uplink_name(0)) {
        bail!("GetTrafficCounters does not list eth0, which carried a ping: {counters:?}");
    }
    Ok(elapsed)
}

/// Upstream's way: list mangle with counters in both families, parse, sum.
fn naive_read() -> Result<(Duration, Counters)> {
    if patchpanel_tests::daemon::firewall_backend() == "nftables" {
        return naive_nft_read();
    }
    let started = Instant::now();
    let mut counters = Counters::new();
    for (program, family) in [("iptables", Family::V4), ("ip6tables", Family::V6)] {
        let (_, listing) = run_timed(&argv(&[
            program, "-w", "-t", "mangle", "-L", "-x", "-v", "-n",
        ]))?;
        add_listing(&mut counters, &listing, family)
            .with_context(|| format!("cannot parse the output of {program} -L"))?;
    }
    Ok((started.elapsed(), counters))
}

/// The same with `nft`, for the nftables backend's tables.
fn naive_nft_read() -> Result<(Duration, Counters)> {
    let started = Instant::now();
    let mut counters = Counters::new();
    for (nft_family, family) in [("ip", Family::V4), ("ip6", Family::V6)] {
        let (_, listing) = run_timed(&argv(&[
            "nft",
            "list",
            "table",
            nft_family,
            "patchpanel_mangle",
        ]))?;
        add_nft_listing(&mut counters, &listing, family)
            .with_context(|| format!("cannot parse the output of nft list table {nft_family}"))?;
    }
    Ok((started.elapsed(), counters))
}

/// Parses `nft list table` output and adds the counters of the
/// `rx_<if>`/`tx_<if>` chains' rules to `counters`; the mark is the value
/// a `meta mark & MASK == VALUE` match compares with.
pub fn add_nft_listing(counters: &mut Counters, listing: &str, family: Family) -> Result<()> {
    let mut chain: Option<(bool, String)> = None;
    for line in listing.lines() {
        let l = line.trim();
        if let Some(name) = l.strip_prefix("chain ").and_then(|r| r.strip_suffix(" {")) {
            chain = if let Some(ifname) = name.strip_prefix("rx_") {
                Some((true, ifname.to_string()))
            } else {
                name.strip_prefix("tx_")
                    .map(|ifname| (false, ifname.to_string()))
            };
            continue;
        }
        if l == "}" {
            chain = None;
            continue;
        }
        let Some((rx, ifname)) = &chain else {
            continue;
        };
        let Some((_, rest)) = l.split_once("counter packets ") else {
            continue;
        };
        let mut words = rest.split_whitespace();
        let packets: u64 = words
            .next()
            .unwrap_or_default()
            .parse()
            .with_context(|| format!("packet count in {l:?}"))?;
        if words.next() != Some("bytes") {
            bail!("no byte count in {l:?}");
        }
        let bytes: u64 = words
            .next()
            .unwrap_or_default()
            .parse()
            .with_context(|| format!("byte count in {l:?}"))?;
        let mark = match l.split_once("meta mark & ") {
            Some((_, m)) => {
                let value = m
                    .split_once("== 0x")
                    .map(|(_, v)| v.split_whitespace().next().unwrap_or_default())
                    .unwrap_or_default();
                Some(u32::from_str_radix(value, 16).with_context(|| format!("mark in {l:?}"))?)
            }
            None => None,
        };
        let count = counters
            .entry(CounterKey {
                ifname: ifname.clone(),
                mark,
                family,
            })
            .or_default();
        if *rx {
            count.rx_packets += packets;
            count.rx_bytes += bytes;
        } else {
            count.tx_packets += packets;
            count.tx_bytes += bytes;
        }
    }
    Ok(())
}

/// The naive result must have read the chains of every uplink, and eth0
/// must have counted something.
fn check_naive_covers(counters: &Counters, uplinks: usize) -> Result<()> {
    let seen: BTreeSet<&str> = counters.keys().map(|k| k.ifname.as_str()).collect();
    let missing: Vec<String> = (0..uplinks)
        .map(uplink_name)
        .filter(|name| !seen.contains(name.as_str()))
        .collect();
    if !missing.is_empty() {
        bail!("the naive read found no accounting chains for {missing:?}");
    }
    let eth0_counted = counters
        .iter()
        .any(|(k, c)| k.ifname == uplink_name(0) && !c.is_zero());
    if !eth0_counted {
        bail!("the naive read counted nothing on eth0, which carried a ping");
    }
    Ok(())
}

/// Adds the uplinks `from..to` as veth pairs `eth<i>` <-> `up<i>`, both up.
fn add_uplinks(world: &World, from: usize, to: usize) -> Result<()> {
    if from >= to {
        return Ok(());
    }
    let upstream = world.internet.upstream.name();
    let mut daemon_side = String::new();
    let mut upstream_side = String::new();
    for i in from..to {
        daemon_side.push_str(&format!(
            "link add {} type veth peer name up{i} netns {upstream}\nlink set {} up\n",
            uplink_name(i),
            uplink_name(i)
        ));
        upstream_side.push_str(&format!("link set up{i} up\n"));
    }
    ip_batch(&world.netns, &daemon_side)?;
    ip_batch(&world.internet.upstream, &upstream_side)
}

/// `ip -n <netns> -batch -` with `commands` on stdin.
pub(crate) fn ip_batch(netns: &Netns, commands: &str) -> Result<()> {
    let mut child = Command::new("ip")
        .args(["-n", netns.name(), "-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot run ip -batch")?;
    let written = child
        .stdin
        .take()
        .context("no stdin for ip -batch")?
        .write_all(commands.as_bytes());
    let out = child
        .wait_with_output()
        .context("cannot wait for ip -batch")?;
    written.context("cannot write to ip -batch")?;
    if !out.status.success() {
        bail!(
            "ip -n {} -batch failed ({}): {}",
            netns.name(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Waits until both families' mangle tables jump to the accounting chains
/// of uplinks `0..uplinks`: the daemon has set them up.
fn wait_for_accounting(netns: &Netns, uplinks: usize) -> Result<()> {
    let started = Instant::now();
    loop {
        interrupt::check()?;
        let mut missing = Vec::new();
        for (save, v6) in [("iptables-save", false), ("ip6tables-save", true)] {
            let text = netns.firewall_save(v6, Some("mangle"))?;
            for i in 0..uplinks {
                let jump = format!("-j rx_{}", uplink_name(i));
                if !text.lines().any(|l| l.ends_with(&jump)) {
                    missing.push(format!("{save}: {}", uplink_name(i)));
                }
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        if started.elapsed() > UPLINK_TIMEOUT {
            bail!(
                "the daemon has not set up accounting for {} uplink(s) after {UPLINK_TIMEOUT:?}: {}",
                missing.len(),
                missing.join(", ")
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until the new uplinks have finished changing (IPv6 duplicate
/// address detection done, so no more address events are on their way) and
/// the daemon has stopped working through them (its log has not grown for
/// [`QUIET_PERIOD`]), so that the series does not measure the daemon busy
/// with the uplinks just added.
fn wait_for_quiet(world: &World) -> Result<()> {
    let started = Instant::now();
    let log = world.daemon.log_path();
    let mut last_size = None;
    let mut quiet_since = Instant::now();
    loop {
        interrupt::check()?;
        let tentative = world
            .netns
            .exec_ok(&["ip", "-6", "addr", "show", "tentative"])?;
        let size = std::fs::metadata(log)
            .with_context(|| format!("cannot stat {}", log.display()))?
            .len();
        if !tentative.trim().is_empty() || last_size != Some(size) {
            last_size = Some(size);
            quiet_since = Instant::now();
        } else if quiet_since.elapsed() >= QUIET_PERIOD {
            return Ok(());
        }
        if started.elapsed() > UPLINK_TIMEOUT {
            bail!("the daemon was still busy with the new uplinks after {UPLINK_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// IPv4 or IPv6.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Family {
    V4,
    V6,
}

/// What the naive peer sums by: interface, the source mark of the rule
/// (`None` for the catch-all rule of untagged traffic) and family.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct CounterKey {
    pub ifname: String,
    pub mark: Option<u32>,
    pub family: Family,
}

/// Received and sent packets and bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Count {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
}

impl Count {
    fn is_zero(&self) -> bool {
        self.rx_packets + self.rx_bytes + self.tx_packets + self.tx_bytes == 0
    }
}

/// The naive peer's result.
pub type Counters = BTreeMap<CounterKey, Count>;

/// Parses `iptables -L -x -v -n` output (either family) and adds the rules
/// of the `rx_<if>`/`tx_<if>` chains to `counters`. A rule line of such a
/// chain whose counts are not numbers is an error.
pub fn add_listing(counters: &mut Counters, listing: &str, family: Family) -> Result<()> {
    let mut chain: Option<(bool, String)> = None;
    for line in listing.lines() {
        let mut fields = line.split_whitespace();
        let Some(first) = fields.next() else {
            chain = None;
            continue;
        };
        if first == "Chain" {
            let name = fields.next().unwrap_or_default();
            chain = if let Some(ifname) = name.strip_prefix("rx_") {
                Some((true, ifname.to_string()))
            } else {
                name.strip_prefix("tx_")
                    .map(|ifname| (false, ifname.to_string()))
            };
            continue;
        }
        let Some((rx, ifname)) = &chain else {
            continue;
        };
        if first == "pkts" {
            continue;
        }
        let packets: u64 = first
            .parse()
            .with_context(|| format!("packet count in {line:?}"))?;
        let bytes: u64 = fields
            .next()
            .unwrap_or_default()
            .parse()
            .with_context(|| format!("byte count in {line:?}"))?;
        let mark = match line.split_once("mark match ") {
            Some((_, rest)) => {
                let value = rest
                    .split('/')
                    .next()
                    .unwrap_or_default()
                    .trim()
                    .trim_start_matches("0x");
                Some(u32::from_str_radix(value, 16).with_context(|| format!("mark in {line:?}"))?)
            }
            None => None,
        };
        let count = counters
            .entry(CounterKey {
                ifname: ifname.clone(),
                mark,
                family,
            })
            .or_default();
        if *rx {
            count.rx_packets += packets;
            count.rx_bytes += bytes;
        } else {
            count.tx_packets += packets;
            count.tx_bytes += bytes;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const V4: &str = "\
Chain PREROUTING (policy ACCEPT 12 packets, 1008 bytes)
    pkts      bytes target     prot opt in     out     source               destination
      12     1008 patchpanel_PREROUTING  0    --  *      *       0.0.0.0/0            0.0.0.0/0

Chain rx_eth0 (2 references)
    pkts      bytes target     prot opt in     out     source               destination
       3      252 RETURN     0    --  *      *       0.0.0.0/0            0.0.0.0/0            mark match 0x2000/0x3f00
       1       84            0    --  *      *       0.0.0.0/0            0.0.0.0/0

Chain tx_eth0 (1 references)
    pkts      bytes target     prot opt in     out     source               destination
       5      420 RETURN     0    --  *      *       0.0.0.0/0            0.0.0.0/0            mark match 0x2000/0x3f00
       0        0            0    --  *      *       0.0.0.0/0            0.0.0.0/0
";

    #[test]
    fn nft_listings_of_the_accounting_chains_are_summed_the_same_way() {
        let listing = "\
table ip patchpanel_mangle {
\tchain rx_eth0 {
\t\tmeta mark & 0x00003f00 == 0x00002000 counter packets 3 bytes 252 return comment \"-m mark --mark 0x2000/0x3f00 -j RETURN\"
\t\tcounter packets 1 bytes 84 comment \"\"
\t}

\tchain tx_eth0 {
\t\tmeta mark & 0x00003f00 == 0x00002000 counter packets 5 bytes 420 return
\t}

\tchain patchpanel_PREROUTING {
\t\tcounter packets 99 bytes 9999
\t}
}
";
        let mut c = Counters::new();
        add_nft_listing(&mut c, listing, Family::V4).unwrap();
        let key = |mark| CounterKey {
            ifname: "eth0".into(),
            mark,
            family: Family::V4,
        };
        assert_eq!(c.len(), 2);
        assert_eq!(
            c[&key(Some(0x2000))],
            Count {
                rx_packets: 3,
                rx_bytes: 252,
                tx_packets: 5,
                tx_bytes: 420
            }
        );
        assert_eq!(c[&key(None)].rx_packets, 1);
        let mut bad = Counters::new();
        assert!(add_nft_listing(
            &mut bad,
            "chain rx_eth0 {\n counter packets x bytes 1\n}\n",
            Family::V4
        )
        .is_err());
    }

    #[test]
    fn the_accounting_chains_are_summed_per_interface_mark_and_family() {
        let mut counters = Counters::new();

        add_listing(&mut counters, V4, Family::V4).expect("parses");

        let tagged = counters[&CounterKey {
            ifname: "eth0".into(),
            mark: Some(0x2000),
            family: Family::V4,
        }];
        assert_eq!(
            tagged,
            Count {
                rx_packets: 3,
                rx_bytes: 252,
                tx_packets: 5,
                tx_bytes: 420
            }
        );
        let untagged = counters[&CounterKey {
            ifname: "eth0".into(),
            mark: None,
            family: Family::V4,
        }];
        assert_eq!((untagged.rx_packets, untagged.tx_packets), (1, 0));
        assert_eq!(counters.len(), 2);
    }

    #[test]
    fn ip6tables_listings_without_an_opt_column_parse_too() {
        let listing = "\
Chain tx_eth1 (1 references)
    pkts      bytes target     prot opt in     out     source               destination
       2      152 RETURN     0        *      *       ::/0                 ::/0                 mark match 0x100/0x3f00
";
        let mut counters = Counters::new();

        add_listing(&mut counters, listing, Family::V6).expect("parses");

        let key = CounterKey {
            ifname: "eth1".into(),
            mark: Some(0x100),
            family: Family::V6,
        };
        assert_eq!(counters[&key].tx_bytes, 152);
    }

    #[test]
    fn garbled_counts_in_an_accounting_chain_are_an_error() {
        let listing = "Chain rx_eth0 (1 references)\n   x  y RETURN all\n";

        assert!(add_listing(&mut Counters::new(), listing, Family::V4).is_err());
    }

    #[test]
    fn uplink_counts_must_rise() {
        assert!(check_uplink_counts(&[1, 10, 50]).is_ok());
        assert!(check_uplink_counts(&[10, 1]).is_err());
        assert!(check_uplink_counts(&[0, 1]).is_err());
        assert!(check_uplink_counts(&[1, MAX_UPLINKS + 1]).is_err());
        assert!(check_uplink_counts(&[]).is_err());
    }
}
