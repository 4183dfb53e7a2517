//! Where random bytes come from.
//!
//! Random MACs and ULA prefixes are the only non-deterministic choices in this
//! crate. Routing them through [`RandomSource`] lets tests and benchmarks
//! replay a fixed sequence while production reads the OS generator.

use std::fmt;

use crate::AddrError;

/// How many random draws an allocator makes before giving up on finding an
/// unused value. Collisions are astronomically unlikely with a real RNG, so
/// hitting this limit means the source is broken.
pub const MAX_RANDOM_ATTEMPTS: u32 = 64;

/// A source of random bytes.
pub trait RandomSource: fmt::Debug + Send {
    /// Fills `buf` entirely with random bytes.
    fn fill(&mut self, buf: &mut [u8]) -> Result<(), AddrError>;
}

/// The operating system's generator (`getrandom(2)` on Linux).
#[derive(Debug, Default, Clone, Copy)]
pub struct OsRandom;

impl RandomSource for OsRandom {
    fn fill(&mut self, buf: &mut [u8]) -> Result<(), AddrError> {
        getrandom::fill(buf).map_err(|e| AddrError::RandomUnavailable {
            reason: e.to_string(),
        })
    }
}

/// A deterministic generator (SplitMix64) for tests and benchmarks.
///
/// Not suitable where unpredictability matters; the same seed always yields
/// the same bytes.
#[derive(Debug, Clone)]
pub struct SeededRandom {
    state: u64,
}

impl SeededRandom {
    /// A generator whose output is fully determined by `seed`.
    pub const fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

impl RandomSource for SeededRandom {
    fn fill(&mut self, buf: &mut [u8]) -> Result<(), AddrError> {
        for chunk in buf.chunks_mut(8) {
            let bytes = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
        Ok(())
    }
}

/// Test-only source that plays back exactly the bytes it was given and then
/// fails, so a test can force collisions and prove the retry path.
#[cfg(test)]
#[derive(Debug, Default)]
pub(crate) struct ScriptedRandom {
    bytes: std::collections::VecDeque<u8>,
}

#[cfg(test)]
impl ScriptedRandom {
    pub(crate) fn new(chunks: &[&[u8]]) -> Self {
        Self {
            bytes: chunks.iter().flat_map(|c| c.iter().copied()).collect(),
        }
    }
}

#[cfg(test)]
impl RandomSource for ScriptedRandom {
    fn fill(&mut self, buf: &mut [u8]) -> Result<(), AddrError> {
        if self.bytes.len() < buf.len() {
            return Err(AddrError::RandomUnavailable {
                reason: "script exhausted".to_owned(),
            });
        }
        for b in buf.iter_mut() {
            *b = self.bytes.pop_front().unwrap_or_default();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_random_repeats_its_sequence_for_the_same_seed() {
        let (mut a, mut b) = (SeededRandom::new(7), SeededRandom::new(7));
        let (mut x, mut y) = ([0u8; 13], [0u8; 13]);

        a.fill(&mut x).expect("seeded fill");
        b.fill(&mut y).expect("seeded fill");

        assert_eq!(x, y);
    }

    #[test]
    fn os_random_fills_the_buffer() {
        let mut buf = [0u8; 32];

        OsRandom.fill(&mut buf).expect("getrandom works in tests");

        assert_ne!(buf, [0u8; 32]);
    }

    #[test]
    fn seeded_random_is_splitmix64() {
        // The first two outputs of the reference SplitMix64 for seed 0,
        // little-endian.
        let mut rng = SeededRandom::new(0);
        let mut buf = [0u8; 16];

        rng.fill(&mut buf).expect("seeded fill");

        let expected = [0xe220_a839_7b1d_cdaf_u64, 0x6e78_9e6a_a1b9_65f4];
        assert_eq!(buf[..8], expected[0].to_le_bytes());
        assert_eq!(buf[8..], expected[1].to_le_bytes());
    }

    #[test]
    fn seeded_random_fills_a_partial_last_chunk_from_a_fresh_draw() {
        let mut rng = SeededRandom::new(0);
        let mut buf = [0u8; 11];

        rng.fill(&mut buf).expect("seeded fill");

        assert_eq!(buf[8..], 0x6e78_9e6a_a1b9_65f4_u64.to_le_bytes()[..3]);
    }
}
