//! Keeping the helpers alive.
//!
//! The decisions are pure and unit-tested here: how long to wait before the
//! next respawn, when to give up, and which requests rebuild a new helper's
//! state ([`ReplayLog`]). The manager's event loop carries them out.

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

/// Counts a helper's consecutive failures and decides when to respawn it.
#[derive(Debug, Clone, Default)]
pub struct RespawnPolicy {
    failures: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    RespawnAfter(Duration),
    GiveUp { attempts: usize },
}

impl RespawnPolicy {
    /// Called when the helper died after running for `uptime`.
    pub fn on_exit(&mut self, uptime: Duration) -> Verdict {
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

    pub fn failures(&self) -> usize {
        self.failures
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

/// When the next health ping is due and when an unanswered one is overdue.
pub const PING_INTERVAL: Duration = Duration::from_secs(10);
pub const PING_TIMEOUT: Duration = Duration::from_secs(10);

/// Tracks the one outstanding ping of a helper.
#[derive(Debug, Clone, Default)]
pub struct Liveness {
    outstanding: Option<(u64, Instant)>,
    next_due: Option<Instant>,
}

impl Liveness {
    pub fn started(&mut self, now: Instant) {
        self.outstanding = None;
        self.next_due = Some(now + PING_INTERVAL);
    }

    pub fn stopped(&mut self) {
        self.outstanding = None;
        self.next_due = None;
    }

    /// Returns a nonce to send if a ping is due.
    pub fn due(&mut self, now: Instant, nonce: u64) -> Option<u64> {
        if self.outstanding.is_none() && self.next_due.is_some_and(|d| now >= d) {
            self.outstanding = Some((nonce, now));
            return Some(nonce);
        }
        None
    }

    pub fn pong(&mut self, nonce: u64, now: Instant) -> bool {
        if self.outstanding.is_some_and(|(n, _)| n == nonce) {
            self.outstanding = None;
            self.next_due = Some(now + PING_INTERVAL);
            return true;
        }
        false
    }

    pub fn is_hung(&self, now: Instant) -> bool {
        self.outstanding
            .is_some_and(|(_, sent)| now.duration_since(sent) >= PING_TIMEOUT)
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        match self.outstanding {
            Some((_, sent)) => Some(sent + PING_TIMEOUT),
            None => self.next_due,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use patchpanel_ipc::LogLevel;

    #[test]
    fn first_respawn_is_immediate() {
        let mut p = RespawnPolicy::default();
        assert_eq!(
            p.on_exit(Duration::from_secs(1)),
            Verdict::RespawnAfter(Duration::ZERO)
        );
    }

    #[test]
    fn quick_failures_back_off_then_give_up() {
        let mut p = RespawnPolicy::default();
        let got: Vec<_> = (0..7).map(|_| p.on_exit(Duration::ZERO)).collect();
        let mut want: Vec<_> = BACKOFF.iter().map(|d| Verdict::RespawnAfter(*d)).collect();
        want.push(Verdict::GiveUp { attempts: 6 });
        assert_eq!(got, want);
    }

    #[test]
    fn a_stable_run_resets_the_backoff() {
        let mut p = RespawnPolicy::default();
        for _ in 0..4 {
            p.on_exit(Duration::ZERO);
        }
        assert_eq!(
            p.on_exit(STABLE_AFTER),
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
    fn unanswered_ping_marks_the_helper_hung() {
        let t0 = Instant::now();
        let mut l = Liveness::default();
        l.started(t0);
        assert_eq!(l.due(t0, 1), None);
        assert_eq!(l.due(t0 + PING_INTERVAL, 1), Some(1));
        assert!(!l.is_hung(t0 + PING_INTERVAL));
        assert!(l.is_hung(t0 + PING_INTERVAL + PING_TIMEOUT));
    }

    #[test]
    fn answered_ping_schedules_the_next() {
        let t0 = Instant::now();
        let mut l = Liveness::default();
        l.started(t0);
        let t1 = t0 + PING_INTERVAL;
        assert_eq!(l.due(t1, 9), Some(9));
        assert!(!l.pong(8, t1), "wrong nonce accepted");
        assert!(l.pong(9, t1));
        assert_eq!(l.next_deadline(), Some(t1 + PING_INTERVAL));
    }
}
