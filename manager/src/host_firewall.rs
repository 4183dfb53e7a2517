//! Living with a host firewall that changes under us (Docker starting,
//! `ufw enable`, `systemctl restart nftables`, a firewalld reload,
//! `iptables-restore` without `--noflush`). Pure: what the firewall should
//! hold given the daemon's state, how it is cut into IPC pages, and when
//! to check and rebuild after another program's change.
//!
//! The writer reports each wake-up's worth of other programs' nf_tables
//! transactions ([`FirewallChange`]). A burst (firewalld and
//! `iptables-restore` commit many) is waited out: the check runs once the
//! rule set was quiet for [`QUIET`], at most [`MAX_WAIT`] after the first
//! change. A rebuild that another program keeps undoing is not fought in
//! a loop: from the [`FLAP_COUNT`]th rebuild within [`FLAP_WINDOW`] on,
//! each waits a backoff that doubles up to [`MAX_BACKOFF`].

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use patchpanel_firewall::counters::CounterSample;
use patchpanel_firewall::{Batch, Family};
use patchpanel_ipc::FirewallChange;

use crate::port_rules::PortPolicy;
use crate::state::State;
use crate::uplinks::UplinkView;

/// How long the rule set must be quiet before the check.
pub const QUIET: Duration = Duration::from_millis(20);
/// The longest a check waits after the first change of a burst.
pub const MAX_WAIT: Duration = Duration::from_millis(100);
/// This many rebuilds within [`FLAP_WINDOW`] mean a peer fights us: a
/// program that undoes each rebuild as soon as it sees it makes several a
/// second, while an administrator's changes (or Docker's) come seconds
/// apart.
pub const FLAP_COUNT: usize = 5;
pub const FLAP_WINDOW: Duration = Duration::from_secs(3);
/// The first backoff, doubled each time up to [`MAX_BACKOFF`].
pub const FIRST_BACKOFF: Duration = Duration::from_secs(1);
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// Everything the daemon's state asks of the firewall, beyond the layout:
/// each uplink's accounting chains and pinning, ARC, the VMs, the
/// connected namespaces, the port rules, in the order a start would add
/// them.
pub fn desired(state: &State, uplinks: &UplinkView, policy: &PortPolicy) -> Batch {
    let mut batch = Batch::new();
    for u in uplinks.all() {
        batch.extend(patchpanel_firewall::counters::accounting_chains(&u.name));
        batch.extend(crate::routing::pinning(u));
    }
    if let Some(arc) = &state.arc {
        batch.extend(crate::guests::arc_firewall(arc));
    }
    for vm in &state.vms {
        batch.extend(crate::guests::vm_firewall(vm));
    }
    for ns in state.namespaces.values() {
        batch.extend(crate::namespaces::namespace_firewall(ns));
    }
    if let Some((vpn, table)) = state.networks.default_vpn() {
        batch.extend(patchpanel_firewall::vpn::routing(&vpn, table));
        if let Some(arc) = &state.arc {
            batch.extend(crate::vpn_service::arc_vpn_batch(&arc.arc0.bridge, table));
        }
    }
    if state.vpn_lockdown {
        batch.extend(patchpanel_firewall::vpn::lockdown());
    }
    batch.extend(state.dns_redirections.batch());
    for rule in &state.port_rules {
        match crate::port_rules::batch(rule, policy) {
            Ok(b) => batch.extend(b),
            // It was valid when it was made; say so rather than drop it
            // silently.
            Err(e) => log::warn!("port rule {rule} left out of the rebuild: {e}"),
        }
    }
    batch
}

/// `batch` cut into pages whose encoded size stays under `max_bytes`, each
/// family's changes in order.
pub fn pages(batch: &Batch, max_bytes: usize) -> Vec<Batch> {
    let mut pages = vec![Batch::new()];
    let mut size = 0;
    for family in Family::ALL {
        for change in batch.changes(family) {
            let len = patchpanel_ipc::encode(change).map_or(max_bytes, |b| b.len());
            let full = size + len > max_bytes
                || pages.last().is_some_and(|p| {
                    p.changes(family).len() >= patchpanel_firewall::model::MAX_CHANGES_PER_FAMILY
                });
            if full && size > 0 {
                pages.push(Batch::new());
                size = 0;
            }
            if let Some(page) = pages.last_mut() {
                page.push(family, change.clone());
            }
            size += len;
        }
    }
    pages
}

/// Adds `samples` to the carried totals, key by key.
pub fn carry(base: &mut Vec<CounterSample>, samples: &[CounterSample]) {
    for s in samples {
        match base.iter_mut().find(|b| {
            b.family == s.family
                && b.direction == s.direction
                && b.ifname == s.ifname
                && b.source == s.source
        }) {
            Some(b) => {
                b.packets = b.packets.saturating_add(s.packets);
                b.bytes = b.bytes.saturating_add(s.bytes);
            }
            None => base.push(s.clone()),
        }
    }
}

/// Changes seen and not yet checked.
#[derive(Debug, Clone, Default)]
pub struct Pending {
    pub first: Option<Instant>,
    pub last: Option<Instant>,
    /// Patchpanel's own tables or chains were touched.
    pub ours: bool,
    pub overrun: bool,
    /// Who changed what, for the log.
    pub by: Vec<String>,
    pub lost_counters: Vec<CounterSample>,
}

/// The decisions; the manager's loop carries them out.
#[derive(Debug, Default)]
pub struct Follower {
    pending: Option<Pending>,
    /// When rebuilds happened, within the flap window.
    rebuilds: VecDeque<Instant>,
    backoff: Option<Duration>,
    not_before: Option<Instant>,
}

impl Follower {
    /// Another program changed the rule set.
    pub fn on_change(&mut self, change: FirewallChange, now: Instant) {
        let p = self.pending.get_or_insert_with(Pending::default);
        p.first.get_or_insert(now);
        p.last = Some(now);
        p.ours |= change.ours;
        p.overrun |= change.overrun;
        if p.by.len() < 8 && !p.by.contains(&change.by) {
            p.by.push(change.by);
        }
        p.lost_counters.extend(change.lost_counters);
    }

    /// Asks for a check without a change notification (firewalld said it
    /// reloaded). The hint is named in the check's log line even when the
    /// burst's list of changers is full.
    pub fn on_hint(&mut self, what: &str, now: Instant) {
        self.on_change(
            FirewallChange {
                by: what.to_string(),
                ours: false,
                overrun: false,
                lost_counters: Vec::new(),
            },
            now,
        );
        if let Some(p) = self.pending.as_mut() {
            if !p.by.iter().any(|b| b == what) {
                p.by.push(what.to_string());
            }
        }
    }

    /// When the pending check is due, if one is.
    pub fn deadline(&self) -> Option<Instant> {
        let p = self.pending.as_ref()?;
        let (first, last) = (p.first?, p.last?);
        let due = (last + QUIET).min(first + MAX_WAIT);
        Some(match self.not_before {
            Some(t) if t > due => t,
            _ => due,
        })
    }

    /// The pending changes, once due.
    pub fn take_due(&mut self, now: Instant) -> Option<Pending> {
        if self.deadline()? > now {
            return None;
        }
        self.pending.take()
    }

    /// The counts lost with changes that needed no rebuild are carried
    /// all the same; a rebuild was done at `now`. Returns the backoff that
    /// starts now, if the peer is flapping.
    pub fn rebuilt(&mut self, now: Instant) -> Option<Duration> {
        while self
            .rebuilds
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) > FLAP_WINDOW)
        {
            self.rebuilds.pop_front();
        }
        if self.rebuilds.is_empty() {
            // A quiet spell ends any backoff.
            self.backoff = None;
        }
        self.rebuilds.push_back(now);
        if self.rebuilds.len() < FLAP_COUNT {
            self.not_before = None;
            return None;
        }
        let next = match self.backoff {
            None => FIRST_BACKOFF,
            Some(b) => (b * 2).min(MAX_BACKOFF),
        };
        self.backoff = Some(next);
        self.not_before = Some(now + next);
        Some(next)
    }

    /// Rebuilds within the flap window, for the log.
    pub fn recent_rebuilds(&self) -> usize {
        self.rebuilds.len()
    }

    /// Whether a backoff is in force.
    pub fn backing_off(&self, now: Instant) -> bool {
        self.not_before.is_some_and(|t| t > now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use patchpanel_firewall::counters::Direction;

    fn change(ours: bool) -> FirewallChange {
        FirewallChange {
            by: "nft (pid 9): delete table ip patchpanel_nat (1 object)".into(),
            ours,
            overrun: false,
            lost_counters: Vec::new(),
        }
    }

    #[test]
    fn a_burst_is_checked_once_after_it_goes_quiet() {
        let mut f = Follower::default();
        let t0 = Instant::now();
        assert_eq!(f.deadline(), None);
        f.on_change(change(false), t0);
        f.on_change(change(true), t0 + Duration::from_millis(10));
        assert_eq!(f.deadline(), Some(t0 + Duration::from_millis(30)));
        assert!(f.take_due(t0 + Duration::from_millis(29)).is_none());
        let p = f.take_due(t0 + Duration::from_millis(30)).expect("due");
        assert!(p.ours, "one change touched ours");
        assert_eq!(p.by.len(), 1, "the same description once");
        assert_eq!(f.deadline(), None);
    }

    #[test]
    fn a_hint_is_named_even_after_many_changers() {
        let mut f = Follower::default();
        let t0 = Instant::now();
        for pid in 0..20 {
            f.on_change(
                FirewallChange {
                    by: format!("nft (pid {pid}): add rule"),
                    ..change(false)
                },
                t0,
            );
        }
        f.on_hint("firewalld reloaded", t0);
        let p = f.take_due(t0 + MAX_WAIT).expect("due");
        assert!(p.by.iter().any(|b| b == "firewalld reloaded"), "{:?}", p.by);
    }

    #[test]
    fn a_long_burst_is_checked_at_most_max_wait_after_it_began() {
        let mut f = Follower::default();
        let t0 = Instant::now();
        for ms in (0..500).step_by(10) {
            f.on_change(change(false), t0 + Duration::from_millis(ms));
        }
        assert_eq!(f.deadline(), Some(t0 + MAX_WAIT));
    }

    #[test]
    fn a_peer_that_keeps_undoing_us_gets_a_doubling_backoff() {
        let mut f = Follower::default();
        let t0 = Instant::now();
        let step = FLAP_WINDOW / (FLAP_COUNT as u32 * 2);
        let mut t = t0;
        for _ in 1..FLAP_COUNT {
            assert_eq!(f.rebuilt(t), None);
            t += step;
        }
        assert_eq!(f.rebuilt(t), Some(FIRST_BACKOFF));
        assert!(f.backing_off(t));
        // A change during the backoff waits for its end.
        f.on_change(change(true), t);
        assert_eq!(f.deadline(), Some(t + FIRST_BACKOFF));
        t += FIRST_BACKOFF;
        assert_eq!(f.rebuilt(t), Some(FIRST_BACKOFF * 2));
        let mut last = None;
        for _ in 0..10 {
            t += step;
            last = f.rebuilt(t);
        }
        assert_eq!(last, Some(MAX_BACKOFF));
    }

    #[test]
    fn changes_seconds_apart_are_never_taken_for_a_fight() {
        let mut f = Follower::default();
        let t0 = Instant::now();
        for i in 0..100 {
            let gap = FLAP_WINDOW / (FLAP_COUNT as u32 - 1) + Duration::from_millis(1);
            let t = t0 + gap * i;
            assert_eq!(f.rebuilt(t), None, "rebuild {i}");
        }
    }

    #[test]
    fn a_quiet_spell_ends_the_backoff() {
        let mut f = Follower::default();
        let t0 = Instant::now();
        for i in 0..FLAP_COUNT as u32 {
            f.rebuilt(t0 + Duration::from_millis(100) * i);
        }
        assert!(f.backing_off(t0 + Duration::from_millis(100) * FLAP_COUNT as u32));
        let later = t0 + FLAP_WINDOW * 3 + MAX_BACKOFF;
        assert_eq!(f.rebuilt(later), None);
        assert!(!f.backing_off(later));
    }

    fn sample(ifname: &str, packets: u64) -> CounterSample {
        CounterSample {
            family: Family::V4,
            direction: Direction::Rx,
            ifname: ifname.into(),
            source: None,
            packets,
            bytes: packets * 100,
        }
    }

    #[test]
    fn carried_counts_add_up_per_key() {
        let mut base = vec![sample("eth0", 5)];
        carry(&mut base, &[sample("eth0", 2), sample("wlan0", 1)]);
        assert_eq!(base, vec![sample("eth0", 7), sample("wlan0", 1)]);
    }

    #[test]
    fn pages_stay_under_the_size_and_keep_the_order() {
        let mut batch = Batch::new();
        for i in 0..300u16 {
            batch.extend(
                patchpanel_firewall::ports::access(
                    patchpanel_firewall::ports::PortProtocol::Tcp,
                    1000 + i,
                    None,
                )
                .expect("rule"),
            );
        }
        let pages = pages(&batch, 4096);
        assert!(pages.len() > 2, "{}", pages.len());
        let mut again = Batch::new();
        for p in &pages {
            let bytes: usize = Family::ALL
                .iter()
                .flat_map(|f| p.changes(*f))
                .map(|c| patchpanel_ipc::encode(c).expect("encodes").len())
                .sum();
            assert!(bytes <= 4096, "{bytes}");
            again.extend(p.clone());
        }
        assert_eq!(again, batch);
    }
}
