//! The forwarder's loop guard: what it sent on which link in the last
//! [`ECHO_WINDOW`], so that a copy coming back (a reflector elsewhere
//! sending ours back) is dropped. Pure: the caller passes the time.
//!
//! A datagram is remembered by a 64-bit digest of its bytes, keyed at
//! random per forwarder (SipHash of std's `RandomState`), so a guest cannot
//! craft datagrams whose digests collide in the table; the table then uses
//! the digest as its hash as it is, instead of hashing it a second time.
//! The memory is bounded: at most [`ECHO_CAPACITY`] datagrams, the oldest
//! forgotten first when more are sent within the window (only above
//! [`ECHO_CAPACITY`] datagrams a second does the window shrink), so that a
//! flood neither grows it without end nor allocates once it has reached
//! its high-water mark.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::time::{Duration, Instant};

/// How long a datagram we sent on a link is remembered as ours.
pub const ECHO_WINDOW: Duration = Duration::from_secs(1);
/// At most this many datagrams are remembered.
pub const ECHO_CAPACITY: usize = 32 * 1024;

/// A datagram sent on a link: (ifindex, digest).
type Key = (u32, u64);

/// Hashes a [`Key`] by mixing its words, which are random already.
#[derive(Debug, Default, Clone, Copy)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }

    fn write_u64(&mut self, n: u64) {
        // FxHash's step: a rotation, an xor and a multiplication.
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

/// See the module comment.
#[derive(Debug)]
pub struct EchoMemory {
    keys: RandomState,
    sent: HashMap<Key, Instant, BuildHasherDefault<KeyHasher>>,
    order: VecDeque<(Instant, Key)>,
    capacity: usize,
}

impl Default for EchoMemory {
    fn default() -> EchoMemory {
        EchoMemory::with_capacity(ECHO_CAPACITY)
    }
}

impl EchoMemory {
    pub fn with_capacity(capacity: usize) -> EchoMemory {
        EchoMemory {
            keys: RandomState::new(),
            sent: HashMap::default(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    /// The digest of a datagram's bytes.
    pub fn digest(&self, bytes: &[u8]) -> u64 {
        self.keys.hash_one(bytes)
    }

    /// Whether a datagram of this digest was sent on `ifindex` within the
    /// window before `now`.
    pub fn contains(&self, ifindex: u32, digest: u64, now: Instant) -> bool {
        if self.sent.is_empty() {
            return false;
        }
        self.sent
            .get(&(ifindex, digest))
            .is_some_and(|at| now.saturating_duration_since(*at) < ECHO_WINDOW)
    }

    /// Remembers a datagram sent on `ifindex` at `now`.
    pub fn remember(&mut self, ifindex: u32, digest: u64, now: Instant) {
        if self.order.len() >= self.capacity {
            self.forget_oldest();
        }
        let key = (ifindex, digest);
        self.sent.insert(key, now);
        self.order.push_back((now, key));
    }

    /// Forgets what was sent a window or more before `now`.
    pub fn expire(&mut self, now: Instant) {
        while let Some(&(at, _)) = self.order.front() {
            if now.saturating_duration_since(at) < ECHO_WINDOW {
                break;
            }
            self.forget_oldest();
        }
    }

    /// How many datagrams are remembered.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    fn forget_oldest(&mut self) {
        if let Some((at, key)) = self.order.pop_front() {
            // A datagram sent again since is remembered from then.
            if self.sent.get(&key) == Some(&at) {
                self.sent.remove(&key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_datagram_sent_on_a_link_is_an_echo_there_for_the_window_only() {
        let t0 = Instant::now();
        let mut m = EchoMemory::default();
        let d = m.digest(b"answer");
        m.remember(3, d, t0);
        assert!(m.contains(3, d, t0 + Duration::from_millis(999)));
        assert!(!m.contains(4, d, t0), "another link");
        assert!(!m.contains(3, m.digest(b"other"), t0));
        assert!(!m.contains(3, d, t0 + ECHO_WINDOW));
        m.expire(t0 + ECHO_WINDOW);
        assert!(m.is_empty());
    }

    #[test]
    fn the_same_bytes_have_the_same_digest_and_other_bytes_another() {
        let m = EchoMemory::default();
        assert_eq!(m.digest(b"x"), m.digest(b"x"));
        assert_ne!(m.digest(b"x"), m.digest(b"y"));
    }

    #[test]
    fn sending_again_restarts_the_window_of_a_datagram() {
        let t0 = Instant::now();
        let mut m = EchoMemory::default();
        let d = m.digest(b"again");
        m.remember(1, d, t0);
        m.remember(1, d, t0 + Duration::from_millis(800));
        m.expire(t0 + Duration::from_millis(1200));
        assert!(m.contains(1, d, t0 + Duration::from_millis(1200)));
        assert_eq!(m.len(), 1);
    }

    #[test]
    fn beyond_its_capacity_the_oldest_is_forgotten_first() {
        let t0 = Instant::now();
        let mut m = EchoMemory::with_capacity(3);
        let digests: Vec<u64> = (0u8..5).map(|i| m.digest(&[i])).collect();
        for &d in &digests {
            m.remember(1, d, t0);
        }
        assert_eq!(m.len(), 3);
        assert!(!m.contains(1, digests[0], t0));
        assert!(!m.contains(1, digests[1], t0));
        assert!(digests[2..].iter().all(|&d| m.contains(1, d, t0)));
    }
}
