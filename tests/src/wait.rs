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

/// Like [`poll_until`] for a fallible check: stops at the first error.
/// `Ok(None)` when the deadline passed without a value.
pub fn poll_until_ok<T, E>(
    timeout: Duration,
    mut check: impl FnMut() -> Result<Option<T>, E>,
) -> Result<Option<T>, E> {
    let mut error = None;
    let value = poll_until(timeout, || match check() {
        Ok(value) => value.map(Ok),
        Err(err) => {
            error = Some(err);
            Some(Err(()))
        }
    });
    match (error, value) {
        (Some(err), _) => Err(err),
        (None, Some(Ok(v))) => Ok(Some(v)),
        (None, _) => Ok(None),
    }
}
