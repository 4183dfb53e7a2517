//! `NeighborReachabilityEvent` (reference upstream-clients §3.7): for every
//! Ethernet or Wi-Fi network shill configured (`ConfigureNetwork`; not
//! Cellular, not VPN), the gateways and the on-link DNS servers are watched
//! in the kernel neighbour table of that link. An entry that becomes
//! `NUD_FAILED` is reported as FAILED, one that becomes `NUD_REACHABLE` as
//! REACHABLE, once per transition: never two of the same type in a row for
//! one (ifindex, address).
//!
//! The table is followed through `RTMGRP_NEIGH` notifications, which the
//! loop reads from an unprivileged rtnetlink socket
//! ([`patchpanel_rtnl::neigh::NeighborMonitor`]) and hands over as
//! [`crate::dispatch::Event::Neighbors`]. Nothing polls the table: every
//! probe interval (60 s, as upstream's `kActiveProbeInterval`) and once when
//! an address starts being watched, the writer is asked to probe each
//! watched neighbour ([`Step::ProbeNeighbor`]: a valid entry is set to
//! `NUD_PROBE`, an address without one is resolved), and the kernel's
//! answer shows as notifications. A lost notification (an overrun) makes
//! every watched neighbour be probed at once, which brings its state back.
//!
//! The watch set is recomputed from the configured networks in the
//! dispatcher's tail after every event; an address that stops being
//! watched is forgotten, with the last event reported for it.

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use patchpanel_ipc::datapath::{ApplyMode, Plan, Step, UplinkRef};
use patchpanel_ipc::{HelperError, Reply, Request};
use patchpanel_proto::neighbor_reachability_event_signal::{EventType, Role};
use patchpanel_proto::NeighborReachabilityEventSignal;
use patchpanel_rtnl::neigh::NeighborEvent;
use patchpanel_sandbox::Process;

use crate::env::HelperLink;
use crate::network_config::{network_of, NetworkSpec, Technology};
use crate::network_service::ConfiguredNetworks;

/// How often watched neighbours are probed (upstream's
/// `kActiveProbeInterval`); `neighbor_probe_seconds` in the configuration
/// changes it (for tests).
pub const DEFAULT_PROBE_INTERVAL: Duration = Duration::from_secs(60);

/// Most probes in one plan sent to the writer.
const PROBES_PER_PLAN: usize = 64;

/// One watched neighbour: the link's index and the address.
pub type Key = (u32, IpAddr);

/// What the configured networks want watched: the link and the role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    pub link: UplinkRef,
    pub role: Role,
}

/// Whether `addr` is on the link of `spec`: in the prefix of one of its
/// addresses of that family, or IPv6 link-local. DNS servers elsewhere are
/// reached through the gateway and have no neighbour entry of their own.
fn on_link(spec: &NetworkSpec, addr: IpAddr) -> bool {
    match addr {
        IpAddr::V4(_) => spec
            .ipv4_address
            .is_some_and(|(a, len)| network_of(IpAddr::V4(a), len) == network_of(addr, len)),
        IpAddr::V6(v6) => {
            (v6.segments()[0] & 0xffc0) == 0xfe80
                || spec
                    .ipv6_addresses
                    .iter()
                    .any(|(a, len)| network_of(IpAddr::V6(*a), *len) == network_of(addr, *len))
        }
    }
}

fn with_role(old: Option<Role>, add: Role) -> Role {
    match old {
        None => add,
        Some(r) if r == add => r,
        Some(_) => Role::GatewayAndDnsServer,
    }
}

/// The neighbours to watch: per Ethernet or Wi-Fi network, from the
/// latest request shill sent for it (each carries the whole config), its
/// gateways and its on-link DNS servers; an address that is both is
/// `GATEWAY_AND_DNS_SERVER`.
pub fn watch_set(networks: &ConfiguredNetworks) -> BTreeMap<Key, Wanted> {
    let mut wanted = BTreeMap::new();
    for specs in networks.requests.values() {
        let Some(spec) = specs.last() else {
            continue;
        };
        if !matches!(spec.technology, Technology::Ethernet | Technology::Wifi) {
            continue;
        }
        let gateways = [
            spec.ipv4_gateway.map(IpAddr::V4),
            spec.ipv6_gateway.map(IpAddr::V6),
        ];
        let dns = spec.dns_servers.iter().filter(|a| on_link(spec, **a));
        let roles = gateways
            .into_iter()
            .flatten()
            .map(|a| (a, Role::Gateway))
            .chain(dns.map(|a| (*a, Role::DnsServer)));
        for (addr, role) in roles {
            let key = (spec.link.ifindex, addr);
            let old = wanted.get(&key).map(|w: &Wanted| w.role);
            wanted.insert(
                key,
                Wanted {
                    link: spec.link.clone(),
                    role: with_role(old, role),
                },
            );
        }
    }
    wanted
}

/// The event a neighbour's new `NUD_*` state makes, given the last one
/// reported for it: FAILED on `NUD_FAILED`, REACHABLE on `NUD_REACHABLE`,
/// never the same twice in a row; nothing for the states in between.
pub fn transition(last: Option<EventType>, state: u16) -> Option<EventType> {
    let now = if state & libc::NUD_FAILED != 0 {
        EventType::Failed
    } else if state & libc::NUD_REACHABLE != 0 {
        EventType::Reachable
    } else {
        return None;
    };
    (last != Some(now)).then_some(now)
}

#[derive(Debug)]
struct Watched {
    link: UplinkRef,
    role: Role,
    /// The last event reported.
    last: Option<EventType>,
}

/// See the module documentation.
#[derive(Debug)]
pub struct NeighborWatch {
    interval: Duration,
    watched: BTreeMap<Key, Watched>,
    /// When every watched neighbour is probed next.
    next_probe: Option<Instant>,
    /// Probe plans sent and not answered yet.
    in_flight: HashSet<u64>,
    /// Signals for the tail to emit.
    signals: Vec<NeighborReachabilityEventSignal>,
}

impl NeighborWatch {
    pub fn new(interval: Duration) -> NeighborWatch {
        NeighborWatch {
            interval: interval.max(Duration::from_secs(1)),
            watched: BTreeMap::new(),
            next_probe: None,
            in_flight: HashSet::new(),
            signals: Vec::new(),
        }
    }

    /// When the next probe round is due.
    pub fn deadline(&self) -> Option<Instant> {
        self.next_probe
    }

    /// How many neighbours are watched.
    pub fn watched(&self) -> usize {
        self.watched.len()
    }

    /// Follows the configured networks: new addresses are probed at once,
    /// addresses no longer wanted are forgotten.
    pub fn reconcile(
        &mut self,
        networks: &ConfiguredNetworks,
        link: &mut dyn HelperLink,
        now: Instant,
    ) {
        let mut wanted = watch_set(networks);
        self.watched.retain(|key, w| match wanted.remove(key) {
            Some(want) => {
                w.link = want.link;
                w.role = want.role;
                true
            }
            None => {
                info!(
                    "neighbour {} on {} #{} no longer watched",
                    key.1, w.link.name, key.0
                );
                false
            }
        });
        let mut new = Vec::new();
        for (key, want) in wanted {
            info!(
                "watching neighbour {} on {} #{} ({})",
                key.1,
                want.link.name,
                key.0,
                want.role.as_str_name()
            );
            new.push(key);
            self.watched.insert(
                key,
                Watched {
                    link: want.link,
                    role: want.role,
                    last: None,
                },
            );
        }
        if self.watched.is_empty() {
            self.next_probe = None;
            return;
        }
        if self.next_probe.is_none() {
            self.next_probe = Some(now + self.interval);
        }
        if !new.is_empty() {
            self.probe(&new, link, "newly watched");
        }
    }

    /// The probe round, if due.
    pub fn on_timers(&mut self, now: Instant, link: &mut dyn HelperLink) {
        let Some(due) = self.next_probe else {
            return;
        };
        if due > now {
            return;
        }
        self.next_probe = Some(now + self.interval);
        let all: Vec<Key> = self.watched.keys().copied().collect();
        self.probe(&all, link, "periodic");
    }

    /// Neighbour table notifications.
    pub fn on_events(&mut self, events: Vec<NeighborEvent>, link: &mut dyn HelperLink) {
        let mut overrun = false;
        for event in events {
            let n = match event {
                NeighborEvent::New(n) => n,
                // A deleted entry is no news: the next use or probe
                // resolves it again and says how that went.
                NeighborEvent::Del(_) => continue,
                NeighborEvent::Overrun => {
                    overrun = true;
                    continue;
                }
            };
            if n.proxy {
                continue;
            }
            let Some(w) = self.watched.get_mut(&(n.ifindex, n.addr)) else {
                continue;
            };
            let Some(event) = transition(w.last, n.state) else {
                continue;
            };
            w.last = Some(event);
            info!(
                "neighbour {} ({}) on {} #{}: {}",
                n.addr,
                w.role.as_str_name(),
                w.link.name,
                n.ifindex,
                event.as_str_name()
            );
            self.signals.push(NeighborReachabilityEventSignal {
                ifindex: n.ifindex as i32,
                ip_addr: n.addr.to_string(),
                role: w.role as i32,
                r#type: event as i32,
            });
        }
        if overrun && !self.watched.is_empty() {
            warn!("neighbour notifications were lost; probing every watched neighbour again");
            let all: Vec<Key> = self.watched.keys().copied().collect();
            self.probe(&all, link, "after lost notifications");
        }
    }

    /// The signals to emit, in order.
    pub fn take_signals(&mut self) -> Vec<NeighborReachabilityEventSignal> {
        std::mem::take(&mut self.signals)
    }

    pub fn owns(&self, id: u64) -> bool {
        self.in_flight.contains(&id)
    }

    /// The writer's answer to a probe plan. A probe that failed (the link
    /// went away meanwhile) is retried by the next round, if still wanted.
    pub fn on_answer(&mut self, id: u64, result: Result<Reply, HelperError>) {
        self.in_flight.remove(&id);
        match result {
            Ok(Reply::Applied(report)) => {
                for failure in report.failures {
                    debug!("neighbour probe: {failure}");
                }
            }
            Ok(other) => warn!("neighbour probe: the writer answered {other:?}"),
            Err(e) => warn!("neighbour probe: {e}"),
        }
    }

    /// The writer died: its unanswered probes never will be.
    pub fn on_writer_lost(&mut self) {
        self.in_flight.clear();
    }

    fn probe(&mut self, keys: &[Key], link: &mut dyn HelperLink, why: &str) {
        let steps: Vec<Step> = keys
            .iter()
            .filter_map(|key| {
                self.watched.get(key).map(|w| Step::ProbeNeighbor {
                    link: w.link.clone(),
                    addr: key.1,
                })
            })
            .collect();
        for chunk in steps.chunks(PROBES_PER_PLAN) {
            let plan = Plan {
                label: format!("probe {} neighbour(s), {why}", chunk.len()),
                mode: ApplyMode::BestEffort,
                steps: chunk.to_vec(),
            };
            match link.send(Process::DatapathWriter, Request::Apply(plan)) {
                Ok(id) => {
                    self.in_flight.insert(id);
                }
                // The next round tries again.
                Err(e) => warn!("cannot send neighbour probes to the writer: {e:?}"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::env::FakeDatapath;
    use patchpanel_proto::configure_network_request::{self as area, NetworkTechnology};
    use patchpanel_proto::{ConfigureNetworkRequest, IPAddrCIDR, NetworkConfig};
    use patchpanel_rtnl::neigh::Neighbor;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn bytes(s: &str) -> Vec<u8> {
        match ip(s) {
            IpAddr::V4(a) => a.octets().to_vec(),
            IpAddr::V6(a) => a.octets().to_vec(),
        }
    }

    fn spec(ifindex: i32, technology: NetworkTechnology, dns: &[&str]) -> NetworkSpec {
        crate::network_config::parse(&ConfigureNetworkRequest {
            ifindex,
            ifname: format!("eth{ifindex}"),
            area: area::AREA_ALL,
            network_config: Some(NetworkConfig {
                ipv4_address: Some(IPAddrCIDR {
                    addr: bytes("192.0.2.2"),
                    prefix_len: 24,
                }),
                ipv4_gateway: Some(bytes("192.0.2.1")),
                ipv6_addresses: vec![IPAddrCIDR {
                    addr: bytes("2001:db8::2"),
                    prefix_len: 64,
                }],
                ipv6_gateway: Some(bytes("fe80::1")),
                dns_servers: dns.iter().map(|d| bytes(d)).collect(),
                ..Default::default()
            }),
            technology: technology as i32,
            priority: None,
            session_id: 1,
        })
        .expect("valid")
    }

    fn networks(specs: Vec<NetworkSpec>) -> ConfiguredNetworks {
        let mut n = ConfiguredNetworks::default();
        for s in specs {
            n.requests.entry(s.link.ifindex).or_default().push(s);
        }
        n
    }

    fn roles(n: &ConfiguredNetworks) -> Vec<(u32, String, Role)> {
        watch_set(n)
            .into_iter()
            .map(|((i, a), w)| (i, a.to_string(), w.role))
            .collect()
    }

    #[test]
    fn gateways_and_on_link_dns_servers_of_ethernet_and_wifi_are_watched() {
        let n = networks(vec![
            spec(
                2,
                NetworkTechnology::Ethernet,
                &[
                    "192.0.2.1",
                    "192.0.2.53",
                    "8.8.8.8",
                    "2001:db8::53",
                    "fe80::53",
                ],
            ),
            spec(3, NetworkTechnology::Wifi, &[]),
            spec(4, NetworkTechnology::Cellular, &["192.0.2.53"]),
            spec(5, NetworkTechnology::Vpn, &["192.0.2.53"]),
        ]);
        assert_eq!(
            roles(&n),
            vec![
                (2, "192.0.2.1".into(), Role::GatewayAndDnsServer),
                (2, "192.0.2.53".into(), Role::DnsServer),
                (2, "2001:db8::53".into(), Role::DnsServer),
                (2, "fe80::1".into(), Role::Gateway),
                (2, "fe80::53".into(), Role::DnsServer),
                (3, "192.0.2.1".into(), Role::Gateway),
                (3, "fe80::1".into(), Role::Gateway),
            ]
        );
    }

    #[test]
    fn the_latest_request_of_a_network_counts() {
        let first = spec(2, NetworkTechnology::Ethernet, &["192.0.2.53"]);
        let mut later = spec(2, NetworkTechnology::Ethernet, &[]);
        later.ipv6_gateway = None;
        later.area = area::AREA_MTU;
        let n = networks(vec![first, later]);
        assert_eq!(roles(&n), vec![(2, "192.0.2.1".into(), Role::Gateway)]);
    }

    #[test]
    fn transitions_report_failed_and_reachable_once_each() {
        use EventType::{Failed, Reachable};
        let (r, f) = (libc::NUD_REACHABLE, libc::NUD_FAILED);
        assert_eq!(transition(None, r), Some(Reachable));
        assert_eq!(transition(None, f), Some(Failed));
        assert_eq!(transition(Some(Reachable), r), None);
        assert_eq!(transition(Some(Reachable), f), Some(Failed));
        assert_eq!(transition(Some(Failed), f), None);
        assert_eq!(transition(Some(Failed), r), Some(Reachable));
        for between in [
            libc::NUD_STALE,
            libc::NUD_DELAY,
            libc::NUD_PROBE,
            libc::NUD_INCOMPLETE,
            libc::NUD_NONE,
        ] {
            assert_eq!(transition(None, between), None, "{between}");
            assert_eq!(transition(Some(Failed), between), None, "{between}");
        }
    }

    fn entry(ifindex: u32, addr: &str, state: u16) -> NeighborEvent {
        NeighborEvent::New(Neighbor {
            ifindex,
            addr: ip(addr),
            mac: Some([2, 0, 0, 0, 0, 1]),
            state,
            proxy: false,
            router: false,
        })
    }

    fn probes(link: &FakeDatapath) -> Vec<String> {
        link.requests
            .iter()
            .filter_map(|r| match r {
                Request::Apply(plan) => Some(plan),
                _ => None,
            })
            .flat_map(|plan| plan.steps.iter())
            .filter_map(|s| match s {
                Step::ProbeNeighbor { link, addr } => Some(format!("{} {addr}", link.name)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn one_signal_per_transition_probes_at_start_and_every_interval() {
        let mut watch = NeighborWatch::new(Duration::from_secs(60));
        let mut link = FakeDatapath::default();
        let mut s = spec(2, NetworkTechnology::Ethernet, &["192.0.2.1"]);
        s.ipv6_gateway = None;
        let n = networks(vec![s]);
        let t0 = Instant::now();
        watch.reconcile(&n, &mut link, t0);
        assert_eq!(
            probes(&link),
            ["eth2 192.0.2.1"],
            "probed when first watched"
        );
        assert_eq!(watch.deadline(), Some(t0 + Duration::from_secs(60)));
        watch.reconcile(&n, &mut link, t0);
        assert_eq!(probes(&link).len(), 1, "not again by the next tail");

        let states = [
            libc::NUD_INCOMPLETE,
            libc::NUD_REACHABLE,
            libc::NUD_STALE,
            libc::NUD_PROBE,
            libc::NUD_REACHABLE,
            libc::NUD_PROBE,
            libc::NUD_FAILED,
            libc::NUD_INCOMPLETE,
            libc::NUD_FAILED,
            libc::NUD_REACHABLE,
        ];
        for state in states {
            watch.on_events(vec![entry(2, "192.0.2.1", state)], &mut link);
        }
        // Other links and addresses, and deletions, are not watched.
        watch.on_events(
            vec![
                entry(3, "192.0.2.1", libc::NUD_FAILED),
                entry(2, "192.0.2.9", libc::NUD_FAILED),
            ],
            &mut link,
        );
        let got: Vec<(String, i32, i32)> = watch
            .take_signals()
            .into_iter()
            .map(|s| (s.ip_addr, s.role, s.r#type))
            .collect();
        let g = Role::GatewayAndDnsServer as i32;
        assert_eq!(
            got,
            vec![
                ("192.0.2.1".into(), g, EventType::Reachable as i32),
                ("192.0.2.1".into(), g, EventType::Failed as i32),
                ("192.0.2.1".into(), g, EventType::Reachable as i32),
            ]
        );

        watch.on_timers(t0 + Duration::from_secs(59), &mut link);
        assert_eq!(probes(&link).len(), 1, "not due yet");
        watch.on_timers(t0 + Duration::from_secs(60), &mut link);
        assert_eq!(probes(&link).len(), 2, "the periodic round");
        assert_eq!(watch.deadline(), Some(t0 + Duration::from_secs(120)));

        watch.on_events(vec![NeighborEvent::Overrun], &mut link);
        assert_eq!(probes(&link).len(), 3, "an overrun probes again");
    }

    #[test]
    fn an_address_no_longer_watched_is_forgotten_with_its_state() {
        let mut watch = NeighborWatch::new(Duration::from_secs(60));
        let mut link = FakeDatapath::default();
        let n = networks(vec![spec(2, NetworkTechnology::Ethernet, &[])]);
        let now = Instant::now();
        watch.reconcile(&n, &mut link, now);
        assert_eq!(watch.watched(), 2);
        watch.on_events(vec![entry(2, "192.0.2.1", libc::NUD_REACHABLE)], &mut link);
        assert_eq!(watch.take_signals().len(), 1);

        watch.reconcile(&ConfiguredNetworks::default(), &mut link, now);
        assert_eq!(watch.watched(), 0);
        assert_eq!(watch.deadline(), None);
        watch.on_events(vec![entry(2, "192.0.2.1", libc::NUD_FAILED)], &mut link);
        assert!(watch.take_signals().is_empty());

        // Watched again: a fresh start, so REACHABLE is news again.
        watch.reconcile(&n, &mut link, now);
        watch.on_events(vec![entry(2, "192.0.2.1", libc::NUD_REACHABLE)], &mut link);
        assert_eq!(watch.take_signals().len(), 1);
        assert_eq!(
            probes(&link).len(),
            4,
            "probed each time it was newly watched"
        );
    }

    #[test]
    fn answers_are_recognised_and_forgotten() {
        let mut watch = NeighborWatch::new(Duration::from_secs(60));
        let mut link = FakeDatapath::default();
        let n = networks(vec![spec(2, NetworkTechnology::Ethernet, &[])]);
        watch.reconcile(&n, &mut link, Instant::now());
        let id = *watch.in_flight.iter().next().expect("a probe in flight");
        assert!(watch.owns(id));
        watch.on_answer(
            id,
            Ok(Reply::Applied(patchpanel_ipc::datapath::PlanReport {
                replaced_sysctls: vec![],
                failures: vec!["gone".into()],
            })),
        );
        assert!(!watch.owns(id));
    }
}
