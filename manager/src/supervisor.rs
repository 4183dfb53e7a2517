//! Keeping the helpers alive.
//!
//! The decisions are pure and unit-tested here: how long to wait before the
//! next respawn, when to give up, and which requests rebuild a new helper's
//! state ([`ReplayLog`]). The manager's event loop carries them out.
//!
//! A helper that dies is judged by how far it got ([`Stage`]):
//! * one that never served (the spawn failed, it exited before its Hello
//!   or before answering its replayed requests, or greeted with the wrong
//!   protocol) is *broken*: the installation or the host is wrong, and
//!   respawning the same binary will not help. Six such deaths in a row
//!   and the manager gives up and exits, so that init restarts the tree;
//! * one that had answered its replay and was serving, then died, *crashed*
//!   while working: most likely on input from outside (a guest's packets,
//!   a LAN's), which the next instance will not necessarily see again. It
//!   is respawned after a backoff capped at the last [`BACKOFF`] step, as
//!   often as it takes, and never makes the manager exit: taking every
//!   guest's network down would hand whoever feeds it bad input a way to
//!   do exactly that.

use std::os::fd::OwnedFd;
use std::rc::Rc;
use std::time::{Duration, Instant};

use patchpanel_ipc::Request;

/// Respawn delays after consecutive failures; the first respawn is immediate.
pub const BACKOFF: [Duration; 6] = [
    Duration::ZERO,
    Duration::from_millis(250),
    Duration::from_millis(500),
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(4),
];

/// A helper that stayed up this long is healthy again: its failure count resets.
pub const STABLE_AFTER: Duration = Duration::from_secs(30);

/// How far a helper instance got before it died.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Spawned, but it has not yet answered its replayed requests.
    Starting,
    /// Answered its replay: it was serving.
    Serving,
}

/// Counts a helper's consecutive failed starts and its crashes, and
/// decides when to respawn it.
#[derive(Debug, Clone, Default)]
pub struct RespawnPolicy {
    /// Deaths before serving, in a row.
    failures: usize,
    /// Deaths while serving, since the last stable run.
    crashes: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    RespawnAfter(Duration),
    GiveUp { attempts: usize },
}

impl RespawnPolicy {
    /// Called when the helper died after running for `uptime`, having got
    /// as far as `stage`.
    pub fn on_exit(&mut self, uptime: Duration, stage: Stage) -> Verdict {
        match stage {
            Stage::Starting => {
                if uptime >= STABLE_AFTER {
                    self.failures = 0;
                }
                let verdict = match BACKOFF.get(self.failures) {
                    Some(d) => Verdict::RespawnAfter(*d),
                    None => Verdict::GiveUp {
                        attempts: self.failures,
                    },
                };
                self.failures += 1;
                verdict
            }
            Stage::Serving => {
                // It started fine: the streak of failed starts is over.
                self.failures = 0;
                if uptime >= STABLE_AFTER {
                    self.crashes = 0;
                }
                let step = self.crashes.min(BACKOFF.len() - 1);
                self.crashes += 1;
                Verdict::RespawnAfter(BACKOFF[step])
            }
        }
    }

    /// Deaths before serving, in a row.
    pub fn failures(&self) -> usize {
        self.failures
    }

    /// Deaths while serving since the last stable run.
    pub fn crashes(&self) -> usize {
        self.crashes
    }
}

/// The idempotent requests that rebuild a helper's state, in order.
///
/// Every operation the manager sends that leaves state behind in a helper is
/// recorded here (keyed so a later request replaces an earlier one for the
/// same object) and sent again, in order, to a respawned instance. An
/// entry may hold descriptors that ride beside its request (the ADB
/// listener): the log keeps them open, so they outlive the helper.
#[derive(Debug, Clone, Default)]
pub struct ReplayLog {
    entries: Vec<(String, ReplayEntry)>,
}

/// One replayed request and the descriptors sent beside it.
#[derive(Debug, Clone)]
pub struct ReplayEntry {
    pub request: Request,
    pub fds: Vec<Rc<OwnedFd>>,
}

impl ReplayLog {
    /// Records `request` under `key`, replacing an earlier entry with that key.
    pub fn record(&mut self, key: impl Into<String>, request: Request) {
        self.record_with_fds(key, request, Vec::new());
    }

    /// Like [`ReplayLog::record`], with descriptors to send beside it.
    pub fn record_with_fds(
        &mut self,
        key: impl Into<String>,
        request: Request,
        fds: Vec<Rc<OwnedFd>>,
    ) {
        let key = key.into();
        let entry = ReplayEntry { request, fds };
        match self.entries.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = entry,
            None => self.entries.push((key, entry)),
        }
    }

    /// Drops the entry under `key` (the state it rebuilt is gone).
    pub fn forget(&mut self, key: &str) {
        self.entries.retain(|(k, _)| k != key);
    }

    pub fn entries(&self) -> impl Iterator<Item = &ReplayEntry> {
        self.entries.iter().map(|(_, e)| e)
    }
}

/// How long a request sent without waiting (its answer goes back to the
/// loop) may go unanswered before its helper counts as hung (and is killed,
/// then respawned with its replay log); a call the manager waits on has
/// its own, longer deadline (`helpers::CALL_TIMEOUT`). There is no periodic
/// ping: an idle tree never wakes up, and a helper is only asked to prove
/// it lives when it has work to do.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(20);

/// The requests of one helper instance still in flight, by id (ids grow
/// with time: the first is the oldest).
#[derive(Debug, Clone, Default)]
pub struct Liveness {
    in_flight: std::collections::BTreeMap<u64, Instant>,
}

impl Liveness {
    pub fn sent(&mut self, id: u64, now: Instant) {
        self.in_flight.insert(id, now);
    }

    pub fn answered(&mut self, id: u64) {
        self.in_flight.remove(&id);
    }

    /// The instance is gone (or being killed): nothing is in flight.
    pub fn stopped(&mut self) {
        self.in_flight.clear();
    }

    /// The oldest request unanswered for [`REQUEST_DEADLINE`], if any.
    pub fn overdue(&self, now: Instant) -> Option<u64> {
        let (&id, &sent) = self.in_flight.iter().next()?;
        (now.saturating_duration_since(sent) >= REQUEST_DEADLINE).then_some(id)
    }

    /// When the oldest request in flight becomes overdue; `None` when
    /// nothing is in flight (no timer at all).
    pub fn next_deadline(&self) -> Option<Instant> {
        self.in_flight
            .values()
            .next()
            .map(|&sent| sent + REQUEST_DEADLINE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use patchpanel_ipc::LogLevel;

    #[test]
    fn first_respawn_is_immediate() {
        for stage in [Stage::Starting, Stage::Serving] {
            let mut p = RespawnPolicy::default();
            assert_eq!(
                p.on_exit(Duration::from_secs(1), stage),
                Verdict::RespawnAfter(Duration::ZERO)
            );
        }
    }

    #[test]
    fn quick_failed_starts_back_off_then_give_up() {
        let mut p = RespawnPolicy::default();
        let got: Vec<_> = (0..7)
            .map(|_| p.on_exit(Duration::ZERO, Stage::Starting))
            .collect();
        let mut want: Vec<_> = BACKOFF.iter().map(|d| Verdict::RespawnAfter(*d)).collect();
        want.push(Verdict::GiveUp { attempts: 6 });
        assert_eq!(got, want);
    }

    #[test]
    fn a_stable_run_resets_the_backoff() {
        let mut p = RespawnPolicy::default();
        for _ in 0..4 {
            p.on_exit(Duration::ZERO, Stage::Starting);
        }
        assert_eq!(
            p.on_exit(STABLE_AFTER, Stage::Starting),
            Verdict::RespawnAfter(Duration::ZERO)
        );
    }

    #[test]
    fn crashes_while_serving_never_give_up_and_back_off_to_the_cap() {
        let mut p = RespawnPolicy::default();
        let got: Vec<_> = (0..20)
            .map(|_| p.on_exit(Duration::from_secs(1), Stage::Serving))
            .collect();
        assert!(got.iter().all(|v| matches!(v, Verdict::RespawnAfter(_))));
        assert_eq!(&got[..BACKOFF.len()], &BACKOFF.map(Verdict::RespawnAfter));
        let cap = Verdict::RespawnAfter(BACKOFF[BACKOFF.len() - 1]);
        assert!(got[BACKOFF.len()..].iter().all(|v| *v == cap));
    }

    #[test]
    fn a_crash_while_serving_ends_a_streak_of_failed_starts() {
        let mut p = RespawnPolicy::default();
        for _ in 0..5 {
            p.on_exit(Duration::ZERO, Stage::Starting);
        }
        p.on_exit(Duration::from_secs(1), Stage::Serving);
        assert_eq!(p.failures(), 0);
        assert_eq!(
            p.on_exit(Duration::ZERO, Stage::Starting),
            Verdict::RespawnAfter(Duration::ZERO),
            "the helper had started: this is a fresh streak"
        );
    }

    #[test]
    fn failed_starts_after_crashes_still_give_up() {
        let mut p = RespawnPolicy::default();
        for _ in 0..10 {
            p.on_exit(Duration::from_secs(1), Stage::Serving);
        }
        let last = (0..=BACKOFF.len())
            .map(|_| p.on_exit(Duration::ZERO, Stage::Starting))
            .last();
        assert_eq!(last, Some(Verdict::GiveUp { attempts: 6 }));
    }

    #[test]
    fn a_stable_serving_run_resets_the_crash_backoff() {
        let mut p = RespawnPolicy::default();
        for _ in 0..8 {
            p.on_exit(Duration::from_secs(1), Stage::Serving);
        }
        assert_eq!(
            p.on_exit(STABLE_AFTER, Stage::Serving),
            Verdict::RespawnAfter(Duration::ZERO)
        );
    }

    #[test]
    fn replay_keeps_order_and_replaces_by_key() {
        let mut log = ReplayLog::default();
        log.record("log-level", Request::SetLogLevel(LogLevel::Info));
        log.record("ping", Request::Ping { nonce: 1 });
        log.record("log-level", Request::SetLogLevel(LogLevel::Debug));
        let got: Vec<_> = log.entries().map(|e| e.request.clone()).collect();
        assert_eq!(
            got,
            vec![
                Request::SetLogLevel(LogLevel::Debug),
                Request::Ping { nonce: 1 }
            ]
        );
    }

    #[test]
    fn an_unanswered_request_marks_the_helper_hung_at_its_deadline() {
        let t0 = Instant::now();
        let mut l = Liveness::default();
        assert_eq!(l.next_deadline(), None, "idle: no timer");
        l.sent(7, t0);
        l.sent(8, t0 + Duration::from_secs(3));
        assert_eq!(l.next_deadline(), Some(t0 + REQUEST_DEADLINE));
        assert_eq!(
            l.overdue(t0 + REQUEST_DEADLINE - Duration::from_millis(1)),
            None
        );
        assert_eq!(l.overdue(t0 + REQUEST_DEADLINE), Some(7));
        // The oldest answered: the next one sets the deadline.
        l.answered(7);
        assert_eq!(
            l.next_deadline(),
            Some(t0 + Duration::from_secs(3) + REQUEST_DEADLINE)
        );
        assert_eq!(l.overdue(t0 + REQUEST_DEADLINE), None);
        l.answered(8);
        assert_eq!(l.next_deadline(), None);
        l.sent(9, t0);
        l.stopped();
        assert_eq!(l.overdue(t0 + REQUEST_DEADLINE * 2), None);
    }
}
