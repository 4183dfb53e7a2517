//! Polling with a deadline: the daemon's reactions are asynchronous, so tests
//! wait for a condition rather than sleeping a fixed time.

use std::time::{Duration, Instant};

/// How often conditions are re-checked.
pub const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Calls `check` every [`POLL_INTERVAL`] until it returns `Some`, or until
/// `timeout` has passed (then `None`). `check` runs at least once, and once more
/// after the deadline so a slow last check is not lost.
pub fn poll_until<T>(timeout: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}
