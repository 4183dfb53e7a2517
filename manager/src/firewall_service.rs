//! Following the host firewall as the daemon runs it. Once another
//! program's changes went quiet ([`Follower`]), the writer checks
//! patchpanel's firewall and brings the narrow accepts in line; a firewall
//! that was touched is rebuilt from the state, in IPC pages that the writer
//! applies together. One log line says what was found and done.
//!
//! Neither the check nor the rebuild blocks the loop: both are sent without
//! waiting and their answers come back as events, so D-Bus calls that do
//! not need the writer (GetDevices) are answered while it rebuilds. The
//! writer handles requests in order, so a plan sent after the rebuild's
//! pages applies after it, and the pages of one rebuild are sent together
//! (waiting for room in the channel if need be), so nothing comes between
//! them: what the rebuild was computed from is what it restores, and any
//! later change follows it.

use std::time::Instant;

use log::{info, warn};
use patchpanel_ipc::{HelperError, Reply, Request};
use patchpanel_sandbox::Process;

use crate::env::HelperLink;
use crate::helpers::SendError;
use crate::host_firewall::{self, Follower, Pending, FLAP_WINDOW};
use crate::port_rules::PortPolicy;
use crate::state::State;
use crate::uplinks::UplinkView;

/// Rebuild pages stay well under the IPC limit with their envelope.
const REBUILD_PAGE_BYTES: usize = 48 * 1024;

/// What was asked of the writer and not answered yet.
#[derive(Debug)]
enum InFlight {
    Check { id: u64, pending: Pending },
    Rebuild(Rebuild),
}

/// A rebuild sent, waiting for the writer.
#[derive(Debug)]
struct Rebuild {
    /// The pages before the last, answered `Done`.
    pages: Vec<u64>,
    last: u64,
    pending: Pending,
    coexistence: String,
    /// What was found missing, and what the state holds, for the log.
    lost: String,
    what: String,
    started: Instant,
}

/// The follower and what it asked the writer.
#[derive(Debug, Default)]
pub struct HostFirewall {
    follower: Follower,
    in_flight: Option<InFlight>,
}

impl HostFirewall {
    /// Another program changed the rule set.
    pub fn on_change(&mut self, change: patchpanel_ipc::FirewallChange, now: Instant) {
        self.follower.on_change(change, now);
    }

    /// A check asked for without a change notification.
    pub fn on_hint(&mut self, what: &str, now: Instant) {
        self.follower.on_hint(what, now);
    }

    /// When a check is due; none while one is under way (changes that come
    /// meanwhile wait for it).
    pub fn deadline(&self) -> Option<Instant> {
        match self.in_flight {
            Some(_) => None,
            None => self.follower.deadline(),
        }
    }

    /// Sends the check if one is due.
    pub fn on_timers(&mut self, now: Instant, link: &mut dyn HelperLink) {
        if self.in_flight.is_some() {
            return;
        }
        let Some(pending) = self.follower.take_due(now) else {
            return;
        };
        match link.send(Process::DatapathWriter, Request::CheckFirewall) {
            Ok(id) => self.in_flight = Some(InFlight::Check { id, pending }),
            Err(e) => {
                warn!(
                    "host firewall changed by {}, and patchpanel cannot check its own now ({}); trying again",
                    pending.by.join("; "),
                    describe(&e)
                );
                self.requeue(pending, now);
            }
        }
    }

    /// Whether the answer to request `id` is this service's.
    pub fn owns(&self, id: u64) -> bool {
        match &self.in_flight {
            Some(InFlight::Check { id: check, .. }) => *check == id,
            Some(InFlight::Rebuild(r)) => r.last == id || r.pages.contains(&id),
            None => false,
        }
    }

    /// The writer answered request `id` (one [`Self::owns`]). A rebuild is
    /// computed from `state` when the check asks for one; what the changes
    /// took from the counters joins `state.counter_base`.
    pub fn on_answer(
        &mut self,
        id: u64,
        result: Result<Reply, HelperError>,
        state: &mut State,
        uplinks: &UplinkView,
        policy: &PortPolicy,
        link: &mut dyn HelperLink,
    ) {
        match &mut self.in_flight {
            Some(InFlight::Check { id: check, .. }) if *check == id => {
                if let Some(InFlight::Check { pending, .. }) = self.in_flight.take() {
                    self.checked(pending, result, state, uplinks, policy, link);
                }
            }
            Some(InFlight::Rebuild(r)) if r.last != id => {
                r.pages.retain(|p| *p != id);
                if let Err(e) = &result {
                    warn!("host firewall: a rebuild page was refused: {e}");
                }
            }
            Some(InFlight::Rebuild(_)) => {
                if let Some(InFlight::Rebuild(rebuild)) = self.in_flight.take() {
                    self.rebuilt(rebuild, result, state);
                }
            }
            _ => {}
        }
    }

    /// The rebuild's last page was answered.
    fn rebuilt(&mut self, rebuild: Rebuild, result: Result<Reply, HelperError>, state: &mut State) {
        let Rebuild {
            pending,
            coexistence,
            lost,
            what,
            started,
            ..
        } = rebuild;
        let mut carried = pending.lost_counters;
        let outcome = match result {
            Ok(Reply::Rebuilt { carried: counts }) => {
                carried.extend(counts);
                format!(
                    "patchpanel's firewall was {lost}: rebuilt from the state ({what}) in {:.1?}",
                    started.elapsed()
                )
            }
            Ok(other) => format!(
                "patchpanel's firewall was {lost}, and the rebuild was answered {other:?}"
            ),
            Err(e) => format!(
                "patchpanel's firewall was {lost}, and the rebuild failed: {e}; guests may have lost their network until the next change or restart"
            ),
        };
        host_firewall::carry(&mut state.counter_base, &carried);
        let by = pending.by.join("; ");
        info!("host firewall changed by {by}: {coexistence}; {outcome}");
        if let Some(wait) = self.follower.rebuilt(Instant::now()) {
            warn!(
                "host firewall: another program keeps undoing patchpanel's firewall ({} rebuilds within {FLAP_WINDOW:?}; last by {by}); the next rebuild waits {wait:?}",
                self.follower.recent_rebuilds(),
            );
        }
    }

    /// The writer died with a check or rebuild in flight: its answer will
    /// never come. A check runs again once the new writer is up (its
    /// replayed setup restores the layout, not the guests' rules).
    pub fn on_writer_lost(&mut self, now: Instant) {
        if let Some(in_flight) = self.in_flight.take() {
            let pending = match in_flight {
                InFlight::Check { pending, .. } | InFlight::Rebuild(Rebuild { pending, .. }) => {
                    pending
                }
            };
            self.requeue(pending, now);
            self.follower.on_hint("the datapath writer's restart", now);
        }
    }

    /// Puts changes back for the next check.
    fn requeue(&mut self, pending: Pending, now: Instant) {
        for by in pending.by {
            self.follower.on_change(
                patchpanel_ipc::FirewallChange {
                    by,
                    ours: pending.ours,
                    overrun: pending.overrun,
                    lost_counters: Vec::new(),
                },
                now,
            );
        }
        if !pending.lost_counters.is_empty() {
            self.follower.on_change(
                patchpanel_ipc::FirewallChange {
                    by: "counters".into(),
                    ours: pending.ours,
                    overrun: pending.overrun,
                    lost_counters: pending.lost_counters,
                },
                now,
            );
        }
    }

    /// The check's answer: done, or a rebuild sent.
    fn checked(
        &mut self,
        pending: Pending,
        result: Result<Reply, HelperError>,
        state: &mut State,
        uplinks: &UplinkView,
        policy: &PortPolicy,
        link: &mut dyn HelperLink,
    ) {
        let by = pending.by.join("; ");
        let (coexistence, missing) = match result {
            Ok(Reply::FirewallChecked {
                coexistence,
                missing,
            }) => (coexistence, missing),
            Ok(other) => {
                warn!("host firewall changed by {by}; the check answered {other:?}");
                return;
            }
            Err(e) => {
                warn!("host firewall changed by {by}, and patchpanel cannot check its own: {e}");
                return;
            }
        };
        let coexistence = if coexistence.is_empty() {
            "no narrow accept changed".to_string()
        } else {
            coexistence
        };
        if !pending.ours && missing.is_empty() {
            host_firewall::carry(&mut state.counter_base, &pending.lost_counters);
            info!("host firewall changed by {by}: {coexistence}; patchpanel's firewall is intact");
            return;
        }
        let what = format!(
            "{} connected namespace(s), {} VM(s), ARC {}, {} port rule(s), {} uplink(s)",
            state.namespaces.len(),
            state.vms.len(),
            if state.arc.is_some() {
                "running"
            } else {
                "off"
            },
            state.port_rules.len(),
            uplinks.all().count()
        );
        let lost = if missing.is_empty() {
            "changed".to_string()
        } else {
            format!(
                "missing {}{}",
                missing
                    .iter()
                    .take(4)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", "),
                if missing.len() > 4 {
                    format!(" and {} more", missing.len() - 4)
                } else {
                    String::new()
                }
            )
        };
        let started = Instant::now();
        let batch = host_firewall::desired(state, uplinks, policy);
        let pages = host_firewall::pages(&batch, REBUILD_PAGE_BYTES);
        let count = pages.len();
        let mut ids = Vec::with_capacity(count);
        for (i, page) in pages.into_iter().enumerate() {
            let last = i + 1 == count;
            match link.send_waiting(
                Process::DatapathWriter,
                Request::RebuildFirewall { page, last },
            ) {
                Ok(id) => ids.push(id),
                Err(e) => {
                    // The writer is gone or the page cannot be sent: its
                    // restart brings a new check (see on_writer_lost).
                    warn!(
                        "host firewall changed by {by}: {coexistence}; patchpanel's firewall was {lost}, and the rebuild could not be sent (page {} of {count}: {})",
                        i + 1,
                        describe(&e)
                    );
                    self.requeue(pending, Instant::now());
                    return;
                }
            }
        }
        let Some(last) = ids.pop() else {
            warn!("host firewall changed by {by}: the rebuild has no pages");
            return;
        };
        self.in_flight = Some(InFlight::Rebuild(Rebuild {
            pages: ids,
            last,
            pending,
            coexistence,
            lost,
            what,
            started,
        }));
    }
}

fn describe(e: &SendError) -> String {
    match e {
        SendError::Busy => "the writer is restarting".into(),
        SendError::Failed(why) => why.clone(),
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use patchpanel_ipc::datapath::PlanReport;
    use patchpanel_ipc::{FirewallChange, IfName};
    use patchpanel_uplinks::{Technology, Uplink, UplinkEvent};

    use super::*;
    use crate::env::FakeDatapath;
    use crate::host_firewall::MAX_WAIT;

    fn uplinks() -> UplinkView {
        let mut v = UplinkView::default();
        v.apply(&UplinkEvent::Added(Uplink {
            name: IfName::new("eth0").unwrap(),
            ifindex: 2,
            up: true,
            ipv4: vec![(Ipv4Addr::new(192, 0, 2, 10), 24)],
            ipv6: vec![],
            gateway4: None,
            technology: Technology::Ethernet,
        }));
        v
    }

    fn change(ours: bool) -> FirewallChange {
        FirewallChange {
            by: "nft (pid 9): flush ruleset".into(),
            ours,
            overrun: false,
            lost_counters: Vec::new(),
        }
    }

    /// Hands `hf` the writer's answer to `id`, with a default state.
    fn answer(
        hf: &mut HostFirewall,
        link: &mut FakeDatapath,
        id: u64,
        result: Result<Reply, HelperError>,
    ) {
        let mut state = State::default();
        let policy = PortPolicy::with_defaults(0);
        hf.on_answer(id, result, &mut state, &uplinks(), &policy, link);
    }

    /// A follower that saw a change and sent its check: the check's id.
    fn checking(ours: bool) -> (HostFirewall, FakeDatapath, u64) {
        let mut hf = HostFirewall::default();
        let mut link = FakeDatapath::default();
        let t0 = Instant::now();
        hf.on_change(change(ours), t0);
        hf.on_timers(t0 + MAX_WAIT, &mut link);
        let (check, request) = sent(&link);
        assert_eq!(*request, Request::CheckFirewall);
        (hf, link, check)
    }

    /// The id of the last request sent to the writer without waiting.
    fn sent(link: &FakeDatapath) -> (u64, &Request) {
        let r = link.requests.last().expect("a request");
        (link.requests.len() as u64, r)
    }

    #[test]
    fn a_touched_firewall_is_checked_then_rebuilt_without_a_blocking_call() {
        let mut hf = HostFirewall::default();
        let mut link = FakeDatapath::default();
        let t0 = Instant::now();
        hf.on_change(change(true), t0);
        hf.on_timers(t0, &mut link);
        assert!(link.requests.is_empty(), "not due yet");
        hf.on_timers(t0 + MAX_WAIT, &mut link);
        let (check, request) = sent(&link);
        assert_eq!(*request, Request::CheckFirewall);
        assert!(hf.owns(check));
        assert_eq!(hf.deadline(), None, "no second check while one is out");
        answer(
            &mut hf,
            &mut link,
            check,
            Ok(Reply::FirewallChecked {
                coexistence: String::new(),
                missing: vec!["table ip patchpanel_nat".into()],
            }),
        );
        let (last, request) = sent(&link);
        assert!(
            matches!(request, Request::RebuildFirewall { last: true, page } if !page.is_empty()),
            "{request:?}"
        );
        assert!(hf.owns(last));
        answer(
            &mut hf,
            &mut link,
            last,
            Ok(Reply::Rebuilt {
                carried: Vec::new(),
            }),
        );
        assert!(!hf.owns(last));
        assert_eq!(link.requests.len(), 2, "check and one page: nothing waited");
    }

    #[test]
    fn an_intact_firewall_is_not_rebuilt() {
        let (mut hf, mut link, check) = checking(false);
        answer(
            &mut hf,
            &mut link,
            check,
            Ok(Reply::FirewallChecked {
                coexistence: String::new(),
                missing: Vec::new(),
            }),
        );
        assert_eq!(link.requests.len(), 1);
        assert!(hf.deadline().is_none());
    }

    #[test]
    fn a_writer_lost_during_a_check_brings_another_check() {
        let (mut hf, mut link, check) = checking(true);
        let t0 = Instant::now();
        hf.on_writer_lost(t0 + MAX_WAIT);
        assert!(!hf.owns(check), "its answer will never come");
        let due = hf.deadline().expect("checked again");
        hf.on_timers(due, &mut link);
        assert_eq!(link.requests.len(), 2);
        assert_eq!(link.requests[1], Request::CheckFirewall);
    }

    #[test]
    fn an_unrelated_answer_is_not_taken() {
        let (mut hf, mut link, check) = checking(true);
        assert!(!hf.owns(check + 100));
        answer(
            &mut hf,
            &mut link,
            check + 100,
            Ok(Reply::Applied(PlanReport {
                replaced_sysctls: Vec::new(),
                failures: Vec::new(),
            })),
        );
        assert!(hf.owns(check), "still waiting for its own answer");
    }
}
