//! Inbound port forwards one at a time: patchpaneld's `ModifyPortRule`
//! against the naive way, one `iptables` process per rule.
//!
//! Rule `i` (0-based) forwards TCP port `20000 + i` arriving on `eth0` to
//! `100.115.92.130:(80 + i)`, inside the default `forwarding_targets`
//! (100.115.92.0/23). patchpanel turns each call into one
//! `iptables-nft-restore` batch: the DNAT inserted at position 1 of nat
//! `ingress_port_forwarding` and the matching ACCEPT appended to filter
//! `guest_forward`. The naive peer runs the same two rules as two `iptables
//! -w` processes, as upstream does: `-t nat -I ingress_port_forwarding 1
//! ...` and `-A FORWARD ...`, in a fresh namespace where only
//! `ingress_port_forwarding` (and its jump from PREROUTING) was created
//! beforehand. Deletion mirrors creation (`-D` with the same specs).
//!
//! The two sides are interleaved: rule `i` on patchpanel, then rule `i` on
//! the naive peer, then rule `i + 1`, so that a slow moment of the machine
//! hits both at the same position. Each step is timed from just before the
//! call (the first spawn) to the answer (the last exit). Every call must
//! succeed, and the rule counts in both namespaces are checked after the
//! creates and after the deletes (off the clock).

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use patchpanel_client::proto::modify_port_rule_request::{Operation, Protocol, RuleType};
use patchpanel_client::proto::ModifyPortRuleRequest;
use patchpanel_client::Client;
use patchpanel_tests::world::World;
use patchpanel_tests::Netns;

use crate::interrupt;
use crate::netns_thread::NetnsThread;
use crate::process::{argv, run_timed};
use crate::stats::{millis, Summary};

/// How many rules a run creates unless told otherwise.
pub const DEFAULT_RULES: usize = 1000;
/// The most a run may create (input ports stay below 65536).
pub const MAX_RULES: usize = 10_000;
/// Rule `i` forwards this port plus `i`.
pub const FIRST_INPUT_PORT: u16 = 20_000;
/// The port of the warm-up rule, created and deleted before the series.
pub const WARMUP_INPUT_PORT: u16 = FIRST_INPUT_PORT - 1;
/// Rule `i` forwards to this port plus `i`.
pub const FIRST_TARGET_PORT: u16 = 80;
/// Every rule forwards to this guest address.
pub const TARGET: Ipv4Addr = Ipv4Addr::new(100, 115, 92, 130);
/// Where the forwarded connections arrive (the World's uplink).
pub const INPUT_IFNAME: &str = "eth0";
/// patchpanel's nat chain for the forwards, which the naive peer recreates.
pub const NAT_CHAIN: &str = "ingress_port_forwarding";
/// How many samples the first and last windows hold; the middle one holds
/// this many on each side of its rule.
pub const WINDOW: usize = 10;
/// A progress line on stderr every this many rules, with the p50 of the
/// rules since the previous one.
pub const PROGRESS_EVERY: usize = 100;

/// Create or delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Create,
    Delete,
}

/// One forward: which port goes where.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forward {
    pub input_port: u16,
    pub dst_port: u16,
}

impl Forward {
    /// Rule `index` of the series (0-based).
    pub fn nth(index: usize) -> Result<Forward> {
        let offset = u16::try_from(index)
            .ok()
            .filter(|&i| usize::from(i) < MAX_RULES)
            .with_context(|| format!("rule {index} is beyond the {MAX_RULES} the ports allow"))?;
        Ok(Forward {
            input_port: FIRST_INPUT_PORT + offset,
            dst_port: FIRST_TARGET_PORT + offset,
        })
    }

    /// The rule created and deleted before the series, to warm both sides.
    pub fn warmup() -> Forward {
        Forward {
            input_port: WARMUP_INPUT_PORT,
            dst_port: FIRST_TARGET_PORT,
        }
    }

    /// The `ModifyPortRule` request for it.
    pub fn request(&self, op: Op) -> ModifyPortRuleRequest {
        ModifyPortRuleRequest {
            op: match op {
                Op::Create => Operation::Create,
                Op::Delete => Operation::Delete,
            } as i32,
            r#type: RuleType::Forwarding as i32,
            proto: Protocol::Tcp as i32,
            input_ifname: INPUT_IFNAME.into(),
            input_dst_ip: String::new(),
            input_dst_port: u32::from(self.input_port),
            dst_ip: TARGET.to_string(),
            dst_port: u32::from(self.dst_port),
        }
    }

    /// The naive peer's two `iptables` command lines for it: the DNAT
    /// (inserted at the top of [`NAT_CHAIN`], or deleted) and the ACCEPT
    /// (appended to FORWARD, or deleted). The rule specs are the ones
    /// patchpanel renders.
    pub fn naive_commands(&self, op: Op) -> [Vec<String>; 2] {
        let input_port = self.input_port.to_string();
        let dst_port = self.dst_port.to_string();
        let to = format!("{TARGET}:{}", self.dst_port);
        let dst = format!("{TARGET}/32");
        let mut dnat = argv(&["iptables", "-w", "-t", "nat"]);
        let mut accept = argv(&["iptables", "-w", "-t", "filter"]);
        match op {
            Op::Create => {
                dnat.extend(argv(&["-I", NAT_CHAIN, "1"]));
                accept.extend(argv(&["-A", "FORWARD"]));
            }
            Op::Delete => {
                dnat.extend(argv(&["-D", NAT_CHAIN]));
                accept.extend(argv(&["-D", "FORWARD"]));
            }
        }
        dnat.extend(argv(&[
            "-i",
            INPUT_IFNAME,
            "-p",
            "tcp",
            "--dport",
            &input_port,
            "-j",
            "DNAT",
            "--to-destination",
            &to,
        ]));
        accept.extend(argv(&[
            "-i",
            INPUT_IFNAME,
            "-p",
            "tcp",
            "-d",
            &dst,
            "--dport",
            &dst_port,
            "-j",
            "ACCEPT",
        ]));
        [dnat, accept]
    }
}

/// The samples around one position of the series: `first..=last` (1-based
/// rule numbers), named after `position`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub position: usize,
    pub first: usize,
    pub last: usize,
}

impl Window {
    /// `#500 (490-510)`.
    pub fn label(&self) -> String {
        format!("#{} ({}-{})", self.position, self.first, self.last)
    }

    /// `#500`.
    pub fn short_label(&self) -> String {
        format!("#{}", self.position)
    }

    /// The samples of the window; `None` when the series is too short.
    pub fn of<'a>(&self, samples: &'a [Duration]) -> Option<&'a [Duration]> {
        samples.get(self.first.checked_sub(1)?..self.last)
    }
}

/// The windows of a series of `rules`: the first [`WINDOW`] rules, the
/// middle rule with [`WINDOW`] on each side, the last [`WINDOW`] rules. For
/// 1000: `#1 (1-10)`, `#500 (490-510)`, `#1000 (991-1000)`.
pub fn windows(rules: usize) -> [Window; 3] {
    let rules = rules.max(1);
    let middle = (rules / 2).max(1);
    [
        Window {
            position: 1,
            first: 1,
            last: WINDOW.min(rules),
        },
        Window {
            position: middle,
            first: middle.saturating_sub(WINDOW).max(1),
            last: (middle + WINDOW).min(rules),
        },
        Window {
            position: rules,
            first: rules.saturating_sub(WINDOW - 1).max(1),
            last: rules,
        },
    ]
}

/// Per-call latencies of one side, in rule order.
#[derive(Debug, Default)]
pub struct SideSamples {
    pub create: Vec<Duration>,
    pub delete: Vec<Duration>,
}

/// What the port-rule series measured; `None` for a side not asked for.
#[derive(Debug, Default)]
pub struct PortRuleSamples {
    pub rules: usize,
    pub patchpanel: Option<SideSamples>,
    pub naive: Option<SideSamples>,
}

/// patchpaneld, through its D-Bus API.
struct Patchpanel<'w> {
    world: &'w World,
    client: Client,
}

impl Patchpanel<'_> {
    fn apply(&self, forward: Forward, op: Op) -> Result<Duration> {
        let request = forward.request(op);
        let started = Instant::now();
        self.client
            .modify_port_rule(&request)
            .with_context(|| format!("ModifyPortRule {op:?} {forward:?} failed"))?;
        Ok(started.elapsed())
    }

    fn count(&self) -> Result<RuleCount> {
        RuleCount::in_netns(&self.world.netns, "guest_forward")
    }
}

/// The naive peer: a fresh namespace and a thread inside it that runs
/// `iptables`. Fields drop in order: the thread leaves the namespace before
/// the namespace is deleted.
#[derive(Debug)]
pub struct Naive {
    thread: NetnsThread,
    netns: Netns,
}

impl Naive {
    /// A fresh namespace with [`NAT_CHAIN`] created and jumped to from
    /// PREROUTING, as patchpanel's layout has it.
    pub fn new() -> Result<Naive> {
        let netns = Netns::new().context("cannot create the naive peer's namespace")?;
        let thread = NetnsThread::enter(&netns.path())?;
        let naive = Naive { thread, netns };
        for command in [
            argv(&["iptables", "-w", "-t", "nat", "-N", NAT_CHAIN]),
            argv(&[
                "iptables",
                "-w",
                "-t",
                "nat",
                "-A",
                "PREROUTING",
                "-j",
                NAT_CHAIN,
            ]),
        ] {
            naive.thread.run(move || run_timed(&command))??;
        }
        Ok(naive)
    }

    fn apply(&self, forward: Forward, op: Op) -> Result<Duration> {
        let commands = forward.naive_commands(op);
        self.thread
            .run(move || -> Result<Duration> {
                let started = Instant::now();
                for command in &commands {
                    run_timed(command)?;
                }
                Ok(started.elapsed())
            })?
            .with_context(|| format!("naive {op:?} of {forward:?} failed"))
    }

    fn count(&self) -> Result<RuleCount> {
        RuleCount::in_netns(&self.netns, "FORWARD")
    }
}

/// How many of the benchmark's forwards a namespace holds: DNATs to
/// [`TARGET`] in [`NAT_CHAIN`], ACCEPTs of [`TARGET`] in the filter chain
/// the side appends to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RuleCount {
    dnat: usize,
    accept: usize,
}

impl RuleCount {
    fn in_netns(netns: &Netns, accept_chain: &str) -> Result<RuleCount> {
        let nat = netns.firewall_save(false, Some("nat"))?;
        let filter = netns.firewall_save(false, Some("filter"))?;
        Ok(RuleCount {
            dnat: count_rules(&nat, NAT_CHAIN, &format!("--to-destination {TARGET}:")),
            accept: count_rules(&filter, accept_chain, &format!("-d {TARGET}/32")),
        })
    }

    fn expect(self, baseline: RuleCount, added: usize, side: &str, when: &str) -> Result<()> {
        let want = RuleCount {
            dnat: baseline.dnat + added,
            accept: baseline.accept + added,
        };
        if self != want {
            bail!("{side} {when}: {self:?} forwarding rules in the kernel, expected {want:?}");
        }
        Ok(())
    }
}

/// Rules of `chain` in `iptables-save` output that contain `needle`.
pub fn count_rules(save: &str, chain: &str, needle: &str) -> usize {
    let prefix = format!("-A {chain} ");
    save.lines()
        .filter(|l| l.starts_with(&prefix) && l.contains(needle))
        .count()
}

/// Creates `rules` forwards one call at a time, then deletes them in the
/// same order, on patchpanel (in `world`) and/or the naive peer, after
/// `warmup` unmeasured create/delete pairs of a separate rule.
pub fn measure(
    world: &World,
    rules: usize,
    warmup: usize,
    patchpanel: bool,
    naive: bool,
) -> Result<PortRuleSamples> {
    if rules == 0 || rules > MAX_RULES {
        bail!("the series holds 1 to {MAX_RULES} rules, not {rules}");
    }
    let pp = if patchpanel {
        let mut client =
            Client::connect_to(world.bus.address()).context("cannot connect to the bus")?;
        // The defaults would do; a slow moment of the machine should not
        // void a 1000-call series.
        client.set_timeout(Duration::from_secs(60));
        Some(Patchpanel { world, client })
    } else {
        None
    };
    let nv = if naive { Some(Naive::new()?) } else { None };
    let baselines = (
        pp.as_ref().map(Patchpanel::count).transpose()?,
        nv.as_ref().map(Naive::count).transpose()?,
    );

    for _ in 0..warmup {
        for op in [Op::Create, Op::Delete] {
            interrupt::check()?;
            if let Some(pp) = &pp {
                pp.apply(Forward::warmup(), op)?;
            }
            if let Some(nv) = &nv {
                nv.apply(Forward::warmup(), op)?;
            }
        }
    }

    let mut samples = PortRuleSamples {
        rules,
        patchpanel: pp.as_ref().map(|_| SideSamples::default()),
        naive: nv.as_ref().map(|_| SideSamples::default()),
    };
    for op in [Op::Create, Op::Delete] {
        let started = Instant::now();
        for index in 0..rules {
            interrupt::check()?;
            let forward = Forward::nth(index)?;
            if let (Some(pp), Some(s)) = (&pp, samples.patchpanel.as_mut()) {
                let elapsed = pp
                    .apply(forward, op)
                    .with_context(|| format!("patchpanel, rule {} of {rules}", index + 1))?;
                series(s, op).push(elapsed);
            }
            if let (Some(nv), Some(s)) = (&nv, samples.naive.as_mut()) {
                let elapsed = nv
                    .apply(forward, op)
                    .with_context(|| format!("naive peer, rule {} of {rules}", index + 1))?;
                series(s, op).push(elapsed);
            }
            if (index + 1) % PROGRESS_EVERY == 0 || index + 1 == rules {
                eprintln!(
                    "  {op:?}: {} of {rules} rules ({:.1} s); p50 of the last {}: patchpanel {}, naive {}",
                    index + 1,
                    started.elapsed().as_secs_f64(),
                    (index % PROGRESS_EVERY) + 1,
                    recent_p50(samples.patchpanel.as_ref(), op),
                    recent_p50(samples.naive.as_ref(), op),
                );
            }
        }
        let added = match op {
            Op::Create => rules,
            Op::Delete => 0,
        };
        let when = format!("after the {op:?} series");
        if let (Some(pp), Some(baseline)) = (&pp, baselines.0) {
            pp.count()?.expect(baseline, added, "patchpanel", &when)?;
        }
        if let (Some(nv), Some(baseline)) = (&nv, baselines.1) {
            nv.count()?.expect(baseline, added, "naive peer", &when)?;
        }
    }
    Ok(samples)
}

/// The p50 of the last [`PROGRESS_EVERY`] (or fewer) samples of a series,
/// for the progress lines: how the cost moves along the series, in more
/// detail than the three windows of the table.
fn recent_p50(side: Option<&SideSamples>, op: Op) -> String {
    let samples = match (side, op) {
        (Some(side), Op::Create) => &side.create[..],
        (Some(side), Op::Delete) => &side.delete[..],
        (None, _) => &[],
    };
    let recent = samples.len().saturating_sub(1) % PROGRESS_EVERY + 1;
    Summary::of(&samples[samples.len().saturating_sub(recent)..])
        .map_or_else(|| "n/a".to_string(), |s| format!("{:.2} ms", millis(s.p50)))
}

fn series(side: &mut SideSamples, op: Op) -> &mut Vec<Duration> {
    match op {
        Op::Create => &mut side.create,
        Op::Delete => &mut side.delete,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_of_a_thousand_rules_are_the_issues() {
        let [first, middle, last] = windows(1000);

        assert_eq!(first.label(), "#1 (1-10)");
        assert_eq!(middle.label(), "#500 (490-510)");
        assert_eq!(last.label(), "#1000 (991-1000)");
    }

    #[test]
    fn windows_pick_their_samples_one_based() {
        let samples: Vec<Duration> = (1..=1000).map(Duration::from_millis).collect();
        let [first, middle, last] = windows(1000);

        let middle = middle.of(&samples).expect("in range");
        assert_eq!(middle.len(), 21);
        assert_eq!(middle[0], Duration::from_millis(490));
        assert_eq!(middle[20], Duration::from_millis(510));
        assert_eq!(first.of(&samples).expect("in range").len(), 10);
        assert_eq!(
            last.of(&samples).expect("in range")[9],
            Duration::from_millis(1000)
        );
    }

    #[test]
    fn windows_of_a_short_series_stay_inside_it() {
        let [first, middle, last] = windows(5);

        assert_eq!((first.first, first.last), (1, 5));
        assert_eq!((middle.first, middle.last), (1, 5));
        assert_eq!((last.first, last.last), (1, 5));
    }

    #[test]
    fn a_series_too_short_for_a_window_has_no_samples_there() {
        let [_, _, last] = windows(1000);

        assert!(last.of(&[Duration::ZERO; 10]).is_none());
    }

    #[test]
    fn rule_n_forwards_its_own_port_to_the_guest() {
        let forward = Forward::nth(999).expect("in range");
        let request = forward.request(Op::Create);

        assert_eq!(request.input_dst_port, 20_999);
        assert_eq!(request.dst_port, 1079);
        assert_eq!(request.dst_ip, "100.115.92.130");
        assert_eq!(request.input_ifname, "eth0");
        assert_eq!(request.op, Operation::Create as i32);
        assert_eq!(request.r#type, RuleType::Forwarding as i32);
        assert!(Forward::nth(MAX_RULES).is_err());
    }

    #[test]
    fn the_naive_commands_are_patchpanels_rules() {
        let forward = Forward::nth(0).expect("in range");
        let [dnat, accept] = forward.naive_commands(Op::Create);

        assert_eq!(
            dnat.join(" "),
            "iptables -w -t nat -I ingress_port_forwarding 1 -i eth0 -p tcp --dport 20000 \
             -j DNAT --to-destination 100.115.92.130:80"
        );
        assert_eq!(
            accept.join(" "),
            "iptables -w -t filter -A FORWARD -i eth0 -p tcp -d 100.115.92.130/32 --dport 80 \
             -j ACCEPT"
        );
        let [dnat, accept] = forward.naive_commands(Op::Delete);
        assert!(dnat
            .join(" ")
            .starts_with("iptables -w -t nat -D ingress_port_forwarding -i eth0"));
        assert!(accept
            .join(" ")
            .starts_with("iptables -w -t filter -D FORWARD -i eth0"));
    }

    #[test]
    fn rule_counts_look_at_one_chain_only() {
        let save = "*nat\n\
            -A PREROUTING -j ingress_port_forwarding\n\
            -A ingress_port_forwarding -i eth0 -p tcp -m tcp --dport 20001 -j DNAT --to-destination 100.115.92.130:81\n\
            -A ingress_port_forwarding -i eth0 -p tcp -m tcp --dport 20000 -j DNAT --to-destination 100.115.92.130:80\n\
            -A other -j DNAT --to-destination 100.115.92.130:80\n\
            COMMIT\n";

        assert_eq!(
            count_rules(save, NAT_CHAIN, "--to-destination 100.115.92.130:"),
            2
        );
    }
}
