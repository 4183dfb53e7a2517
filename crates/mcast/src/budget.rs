//! How much of the forwarder one guest may use: a token bucket per
//! downlink, charged the bytes of every IPv4 mDNS message the guest sends
//! towards the LAN (each goes through the A-record rewrite, whose time is
//! linear in the length). The forwarder is one event loop that every
//! guest's mDNS, SSDP and broadcasts share, so a guest that sends more
//! than its budget has its mDNS to the LAN dropped, and counted, instead of
//! delaying everyone else's. Pure: the caller passes the time.

use std::time::{Duration, Instant};

const NANOS_PER_SECOND: u128 = 1_000_000_000;

/// Bytes per second a downlink may send through the rewrite, sustained.
/// Normal mDNS is a few kilobytes a second; bench-mcast's 20,000
/// one-record answers a second are under 1 MB/s. The rewrite costs at most
/// about 2.5 ns a byte (the costliest shape in `benches/rewrite.rs`: names
/// of 127 one-letter labels), so one guest at this rate costs at most ~2%
/// of a CPU in it.
pub const REWRITE_BYTES_PER_SECOND: u64 = 8 << 20;
/// Bytes a downlink may send at once after a quiet spell: 1 MiB, more
/// than a hundred of the longest messages allowed.
pub const REWRITE_BURST_BYTES: u64 = 1 << 20;

/// What a downlink's IPv4 mDNS to the LAN may amount to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MdnsBudget {
    pub bytes_per_second: u64,
    pub burst_bytes: u64,
}

impl MdnsBudget {
    pub const DEFAULT: MdnsBudget = MdnsBudget {
        bytes_per_second: REWRITE_BYTES_PER_SECOND,
        burst_bytes: REWRITE_BURST_BYTES,
    };

    /// `bytes_per_second` sustained, with a burst of a second's worth but
    /// at most [`REWRITE_BURST_BYTES`], and never less than the longest
    /// message allowed (which could otherwise never pass).
    pub fn per_second(bytes_per_second: u64) -> MdnsBudget {
        let longest = crate::packet::MAX_MDNS_MESSAGE as u64;
        MdnsBudget {
            bytes_per_second,
            burst_bytes: bytes_per_second.min(REWRITE_BURST_BYTES).max(longest),
        }
    }

    /// A full bucket of this budget.
    pub fn bucket(self, now: Instant) -> TokenBucket {
        TokenBucket::full(self.burst_bytes, self.bytes_per_second, now)
    }
}

/// A token bucket: `capacity` tokens at most, `per_second` more every
/// second, starting full.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    capacity: u64,
    per_second: u64,
    tokens: u64,
    /// When the tokens were last brought up to date.
    last: Instant,
}

impl TokenBucket {
    pub fn full(capacity: u64, per_second: u64, now: Instant) -> TokenBucket {
        TokenBucket {
            capacity,
            per_second,
            tokens: capacity,
            last: now,
        }
    }

    /// Takes `cost` tokens if there are that many; otherwise takes none.
    pub fn take(&mut self, cost: u64, now: Instant) -> bool {
        self.refill(now);
        if cost > self.tokens {
            return false;
        }
        self.tokens -= cost;
        true
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_nanos();
        let earned = elapsed.saturating_mul(u128::from(self.per_second)) / NANOS_PER_SECOND;
        if earned == 0 {
            // Less than a token's worth of time: keep counting from `last`.
            return;
        }
        let room = self.capacity - self.tokens;
        match u64::try_from(earned) {
            Ok(earned) if earned < room => {
                self.tokens += earned;
                // Only the time those tokens took; the rest counts next time.
                let spent = u128::from(earned) * NANOS_PER_SECOND / u128::from(self.per_second);
                self.last += Duration::from_nanos(u64::try_from(spent).unwrap_or(u64::MAX));
            }
            _ => {
                self.tokens = self.capacity;
                self.last = now;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_full_bucket_gives_its_capacity_then_refuses() {
        let t0 = Instant::now();
        let mut b = TokenBucket::full(1000, 100, t0);
        assert!(b.take(600, t0));
        assert!(b.take(400, t0));
        assert!(!b.take(1, t0));
    }

    #[test]
    fn a_refused_take_takes_nothing() {
        let t0 = Instant::now();
        let mut b = TokenBucket::full(1000, 100, t0);
        assert!(b.take(900, t0));
        assert!(!b.take(101, t0));
        assert!(b.take(100, t0));
    }

    #[test]
    fn tokens_come_back_at_the_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::full(1000, 100, t0);
        assert!(b.take(1000, t0));
        assert!(!b.take(50, t0 + ms(490)));
        assert!(b.take(50, t0 + ms(500)));
        assert!(!b.take(1, t0 + ms(500)));
    }

    #[test]
    fn frequent_takes_do_not_lose_the_fractions() {
        // 100 tokens/s checked every 1 ms: each check earns 0.1 token,
        // which must add up rather than be rounded away.
        let t0 = Instant::now();
        let mut b = TokenBucket::full(100, 100, t0);
        assert!(b.take(100, t0));
        let mut got = 0;
        for i in 1..=1000 {
            if b.take(1, t0 + ms(i)) {
                got += 1;
            }
        }
        assert_eq!(got, 100);
    }

    #[test]
    fn the_bucket_never_holds_more_than_its_capacity() {
        let t0 = Instant::now();
        let mut b = TokenBucket::full(1000, 100, t0);
        let later = t0 + Duration::from_secs(3600);
        assert!(b.take(1000, later));
        assert!(!b.take(1, later));
    }

    #[test]
    fn the_rewrite_budget_lets_a_message_of_the_largest_size_through() {
        let t0 = Instant::now();
        let mut b = MdnsBudget::DEFAULT.bucket(t0);
        let largest = crate::packet::MAX_MDNS_MESSAGE as u64;
        let mut sent = 0;
        while b.take(largest, t0) {
            sent += 1;
        }
        assert!(sent >= 100, "{sent}");
        assert!(b.take(largest, t0 + Duration::from_millis(2)));
    }

    #[test]
    fn a_budget_of_a_few_bytes_a_second_still_lets_the_longest_message_through() {
        let largest = crate::packet::MAX_MDNS_MESSAGE as u64;
        assert_eq!(MdnsBudget::per_second(100).burst_bytes, largest);
        assert_eq!(
            MdnsBudget::per_second(100_000),
            MdnsBudget {
                bytes_per_second: 100_000,
                burst_bytes: 100_000
            }
        );
        assert_eq!(
            MdnsBudget::per_second(REWRITE_BYTES_PER_SECOND),
            MdnsBudget::DEFAULT
        );
    }
}
