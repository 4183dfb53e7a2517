//! A run of equal-sized, contiguous subnets handed out by 1-based index.
//!
//! First-fit allocation makes a guest's addresses depend only on the order in
//! which guests start, so they are the same after every boot. Indices are
//! 1-based because index 0 means "no preference" on the wire.
//!
//! Allocations are tracked in a bitset (bit `i - 1` for index `i`), so a
//! first-fit search is one pass over `count / 64` words.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::{AddrError, Ipv4Subnet};

/// The largest number of subnets one pool may hold. Large enough for
/// benchmarks that configure hundreds of namespaces; the default layout uses
/// at most 32.
pub const MAX_SUBNETS: u32 = 32768;

/// One subnet taken from a [`SubnetPool`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Allocation {
    /// 1-based index of the subnet within its pool.
    pub index: u32,
    /// The subnet itself.
    pub subnet: Ipv4Subnet,
}

/// `count` consecutive subnets of one prefix length, starting at `first`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubnetPool {
    name: String,
    first: Ipv4Subnet,
    count: u32,
    taken: Vec<u64>,
    in_use: u32,
}

impl SubnetPool {
    /// A pool named `name` (used in errors) of `count` subnets of
    /// /`prefix_len`, the first based at `base`.
    ///
    /// Fails if `base` is not a network address, the prefix is longer than
    /// /30, `count` is 0 or above [`MAX_SUBNETS`], or the pool would run past
    /// the end of the IPv4 space.
    pub fn new(
        name: impl Into<String>,
        base: Ipv4Addr,
        prefix_len: u8,
        count: u32,
    ) -> Result<Self, AddrError> {
        let name = name.into();
        let first = Ipv4Subnet::new(base, prefix_len)?;
        if count == 0 || count > MAX_SUBNETS {
            return Err(AddrError::InvalidPoolSize {
                pool: name,
                count,
                max: MAX_SUBNETS,
            });
        }
        let end = u64::from(u32::from(base)) + u64::from(count) * first.size();
        if end > 1u64 << 32 {
            return Err(AddrError::PoolBeyondAddressSpace {
                pool: name,
                first,
                count,
            });
        }
        Ok(Self::from_parts(name, first, count))
    }

    /// Callers guarantee what [`new`](Self::new) checks.
    pub(crate) fn from_parts(name: String, first: Ipv4Subnet, count: u32) -> Self {
        let words = count.div_ceil(64) as usize;
        Self {
            name,
            first,
            count,
            taken: vec![0; words],
            in_use: 0,
        }
    }

    /// The name used in error messages.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The subnet with index 1.
    pub fn first_subnet(&self) -> Ipv4Subnet {
        self.first
    }

    /// How many subnets the pool holds.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// How many subnets are allocated.
    pub fn in_use(&self) -> u32 {
        self.in_use
    }

    /// How many subnets are free.
    pub fn available(&self) -> u32 {
        self.count - self.in_use
    }

    /// Half-open range `[start, end)` of the addresses the pool covers, as
    /// integers so that the end of the IPv4 space is representable.
    pub(crate) fn span(&self) -> (u64, u64) {
        let start = u64::from(u32::from(self.first.base()));
        (start, start + u64::from(self.count) * self.first.size())
    }

    /// Human-readable range, e.g. `100.115.92.128-100.115.92.191`.
    pub(crate) fn range_text(&self) -> String {
        let (start, end) = self.span();
        let (start, last) = (
            Ipv4Addr::from(u32::try_from(start).unwrap_or(u32::MAX)),
            Ipv4Addr::from(u32::try_from(end - 1).unwrap_or(u32::MAX)),
        );
        format!("{start}-{last}")
    }

    /// Whether the two pools share any address.
    pub fn overlaps(&self, other: &SubnetPool) -> bool {
        let (a_start, a_end) = self.span();
        let (b_start, b_end) = other.span();
        a_start < b_end && b_start < a_end
    }

    /// The subnet for `index`, allocated or not; `None` if out of range.
    pub fn subnet_at(&self, index: u32) -> Option<Ipv4Subnet> {
        if index == 0 || index > self.count {
            return None;
        }
        let offset = u64::from(index - 1) * self.first.size();
        // Fits: `new` checked that the whole pool lies below 2^32.
        let base = u32::try_from(u64::from(u32::from(self.first.base())) + offset).ok()?;
        Some(Ipv4Subnet::new_unchecked(
            Ipv4Addr::from(base),
            self.first.prefix_len(),
        ))
    }

    /// The index of the pool subnet equal to `subnet`, if there is one.
    pub fn index_of(&self, subnet: &Ipv4Subnet) -> Option<u32> {
        if subnet.prefix_len() != self.first.prefix_len() {
            return None;
        }
        let (start, end) = self.span();
        let base = u64::from(u32::from(subnet.base()));
        if base < start || base >= end {
            return None;
        }
        u32::try_from((base - start) / self.first.size() + 1).ok()
    }

    /// Whether `index` is currently allocated.
    pub fn is_allocated(&self, index: u32) -> bool {
        index != 0 && index <= self.count && self.bit(index)
    }

    /// Takes a subnet: the lowest free index when `index` is `None`, exactly
    /// `index` otherwise.
    pub fn allocate(&mut self, index: Option<u32>) -> Result<Allocation, AddrError> {
        let index = match index {
            Some(index) => {
                self.check_range(index)?;
                if self.bit(index) {
                    return Err(AddrError::IndexTaken {
                        pool: self.name.clone(),
                        index,
                    });
                }
                index
            }
            None => self.first_free().ok_or_else(|| AddrError::PoolExhausted {
                pool: self.name.clone(),
                count: self.count,
            })?,
        };
        self.take(index)
    }

    /// Marks `index` as allocated without searching, for rebuilding the pool
    /// from persisted allocations after a restart.
    pub fn mark_allocated(&mut self, index: u32) -> Result<Allocation, AddrError> {
        self.allocate(Some(index))
    }

    /// Returns `index` to the pool.
    pub fn release(&mut self, index: u32) -> Result<(), AddrError> {
        self.check_range(index)?;
        if !self.bit(index) {
            return Err(AddrError::IndexNotAllocated {
                pool: self.name.clone(),
                index,
            });
        }
        let (word, mask) = Self::slot(index);
        self.taken[word] &= !mask;
        self.in_use -= 1;
        Ok(())
    }

    /// Every allocated subnet, lowest index first.
    pub fn allocations(&self) -> impl Iterator<Item = Allocation> + '_ {
        (1..=self.count).filter_map(move |index| {
            if self.bit(index) {
                self.subnet_at(index)
                    .map(|subnet| Allocation { index, subnet })
            } else {
                None
            }
        })
    }

    fn check_range(&self, index: u32) -> Result<(), AddrError> {
        if index == 0 || index > self.count {
            return Err(AddrError::IndexOutOfRange {
                pool: self.name.clone(),
                index: i64::from(index),
                count: self.count,
            });
        }
        Ok(())
    }

    fn take(&mut self, index: u32) -> Result<Allocation, AddrError> {
        let subnet = self
            .subnet_at(index)
            .ok_or_else(|| AddrError::IndexOutOfRange {
                pool: self.name.clone(),
                index: i64::from(index),
                count: self.count,
            })?;
        let (word, mask) = Self::slot(index);
        self.taken[word] |= mask;
        self.in_use += 1;
        Ok(Allocation { index, subnet })
    }

    /// Word and bit mask for a 1-based index already checked to be in range.
    fn slot(index: u32) -> (usize, u64) {
        let bit = index - 1;
        ((bit / 64) as usize, 1u64 << (bit % 64))
    }

    fn bit(&self, index: u32) -> bool {
        let (word, mask) = Self::slot(index);
        self.taken.get(word).is_some_and(|w| w & mask != 0)
    }

    fn first_free(&self) -> Option<u32> {
        let (word, bits) = self
            .taken
            .iter()
            .enumerate()
            .find(|(_, bits)| **bits != u64::MAX)?;
        // Bits past `count` in the last word are never set, so the first
        // clear bit may be one of them: that means the pool is full.
        let bit = u32::try_from(word).ok()? * 64 + bits.trailing_ones();
        (bit < self.count).then_some(bit + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(count: u32) -> SubnetPool {
        SubnetPool::new("test", Ipv4Addr::new(100, 115, 92, 128), 30, count)
            .expect("valid test pool")
    }

    #[test]
    fn new_rejects_a_base_that_is_not_a_network_address() {
        let err = SubnetPool::new("test", Ipv4Addr::new(100, 115, 92, 130), 30, 4);

        assert!(matches!(err, Err(AddrError::NotNetworkAddress { .. })));
    }

    #[test]
    fn new_rejects_more_than_max_subnets() {
        let err = SubnetPool::new("test", Ipv4Addr::new(10, 0, 0, 0), 30, MAX_SUBNETS + 1);

        assert!(matches!(
            err,
            Err(AddrError::InvalidPoolSize { count, .. }) if count == MAX_SUBNETS + 1
        ));
    }

    #[test]
    fn new_rejects_an_empty_pool() {
        let err = SubnetPool::new("test", Ipv4Addr::new(10, 0, 0, 0), 30, 0);

        assert!(matches!(
            err,
            Err(AddrError::InvalidPoolSize { count: 0, .. })
        ));
    }

    #[test]
    fn new_rejects_a_pool_running_past_the_address_space() {
        let err = SubnetPool::new("test", Ipv4Addr::new(255, 255, 255, 0), 30, 65);

        assert!(matches!(err, Err(AddrError::PoolBeyondAddressSpace { .. })));
    }

    #[test]
    fn new_accepts_a_pool_ending_exactly_at_the_top_of_the_address_space() {
        let p = SubnetPool::new("test", Ipv4Addr::new(255, 255, 255, 0), 30, 64);

        assert!(p.is_ok());
    }

    #[test]
    fn allocate_without_index_is_first_fit() {
        let mut p = pool(4);

        let first = p.allocate(None).expect("free");
        let second = p.allocate(None).expect("free");

        assert_eq!((first.index, second.index), (1, 2));
        assert_eq!(second.subnet.to_string(), "100.115.92.132/30");
    }

    #[test]
    fn allocate_reuses_the_lowest_released_index() {
        let mut p = pool(4);
        for _ in 0..3 {
            p.allocate(None).expect("free");
        }
        p.release(2).expect("allocated");

        let again = p.allocate(None).expect("free");

        assert_eq!(again.index, 2);
    }

    #[test]
    fn allocate_reports_exhaustion_with_pool_name_and_count() {
        let mut p = pool(2);
        p.allocate(None).expect("free");
        p.allocate(None).expect("free");

        let err = p.allocate(None);

        assert_eq!(
            err,
            Err(AddrError::PoolExhausted {
                pool: "test".to_owned(),
                count: 2
            })
        );
    }

    #[test]
    fn allocate_rejects_explicit_index_zero() {
        let mut p = pool(4);

        let err = p.allocate(Some(0));

        assert!(matches!(
            err,
            Err(AddrError::IndexOutOfRange { index: 0, .. })
        ));
    }

    #[test]
    fn allocate_rejects_an_index_past_the_count() {
        let mut p = pool(4);

        let err = p.allocate(Some(5));

        assert!(matches!(
            err,
            Err(AddrError::IndexOutOfRange {
                index: 5,
                count: 4,
                ..
            })
        ));
    }

    #[test]
    fn allocate_rejects_an_index_already_taken() {
        let mut p = pool(4);
        p.allocate(Some(3)).expect("free");

        let err = p.allocate(Some(3));

        assert!(matches!(err, Err(AddrError::IndexTaken { index: 3, .. })));
    }

    #[test]
    fn first_fit_skips_explicitly_taken_indices() {
        let mut p = pool(4);
        p.allocate(Some(1)).expect("free");
        p.allocate(Some(2)).expect("free");

        let next = p.allocate(None).expect("free");

        assert_eq!(next.index, 3);
    }

    #[test]
    fn release_rejects_an_index_that_is_not_allocated() {
        let mut p = pool(4);

        let err = p.release(1);

        assert!(matches!(
            err,
            Err(AddrError::IndexNotAllocated { index: 1, .. })
        ));
    }

    #[test]
    fn large_pools_fill_every_index_across_word_boundaries() {
        let mut p = pool(130);

        let indices: Vec<u32> = (0..130)
            .map(|_| p.allocate(None).map(|a| a.index))
            .collect::<Result<_, _>>()
            .expect("130 free subnets");

        assert_eq!(indices, (1..=130).collect::<Vec<_>>());
        assert!(matches!(
            p.allocate(None),
            Err(AddrError::PoolExhausted { .. })
        ));
    }

    #[test]
    fn last_subnet_of_a_large_pool_has_the_expected_base() {
        let p = pool(128);

        let last = p.subnet_at(128).expect("in range");

        assert_eq!(last.to_string(), "100.115.94.124/30");
    }

    #[test]
    fn index_of_inverts_subnet_at() {
        let p = pool(16);
        let subnet = p.subnet_at(7).expect("in range");

        assert_eq!(p.index_of(&subnet), Some(7));
    }

    #[test]
    fn mark_allocated_makes_first_fit_skip_the_index() {
        let mut p = pool(4);
        p.mark_allocated(1).expect("free");

        let next = p.allocate(None).expect("free");

        assert_eq!(next.index, 2);
    }

    #[test]
    fn allocations_lists_taken_subnets_in_index_order() {
        let mut p = pool(8);
        p.allocate(Some(5)).expect("free");
        p.allocate(Some(2)).expect("free");

        let listed: Vec<u32> = p.allocations().map(|a| a.index).collect();

        assert_eq!(listed, vec![2, 5]);
    }

    #[test]
    fn a_pool_keeps_its_name_and_count() {
        let p = pool(4);

        assert_eq!((p.name(), p.count()), ("test", 4));
    }

    #[test]
    fn in_use_and_available_follow_allocate_and_release() {
        let mut p = pool(8);
        for _ in 0..3 {
            p.allocate(None).expect("free");
        }
        p.release(1).expect("allocated");

        assert_eq!((p.in_use(), p.available()), (2, 6));
    }

    #[test]
    fn range_text_runs_from_the_first_to_the_last_address() {
        assert_eq!(pool(4).range_text(), "100.115.92.128-100.115.92.143");
    }

    #[test]
    fn adjacent_pools_do_not_overlap_in_either_order() {
        let low = pool(4);
        let high = SubnetPool::new("high", Ipv4Addr::new(100, 115, 92, 144), 30, 4)
            .expect("valid test pool");

        assert_eq!((low.overlaps(&high), high.overlaps(&low)), (false, false));
    }

    #[test]
    fn pools_sharing_one_subnet_overlap_in_either_order() {
        let low = pool(4);
        let high = SubnetPool::new("high", Ipv4Addr::new(100, 115, 92, 140), 30, 4)
            .expect("valid test pool");

        assert_eq!((low.overlaps(&high), high.overlaps(&low)), (true, true));
    }

    #[test]
    fn subnet_at_index_zero_is_none() {
        assert_eq!(pool(4).subnet_at(0), None);
    }

    #[test]
    fn subnet_at_an_index_past_the_count_is_none() {
        assert_eq!(pool(4).subnet_at(5), None);
    }

    #[test]
    fn index_of_the_first_subnet_is_one() {
        let p = pool(4);

        assert_eq!(p.index_of(&p.first_subnet()), Some(1));
    }

    #[test]
    fn index_of_a_subnet_just_below_the_pool_is_none() {
        let below = Ipv4Subnet::new(Ipv4Addr::new(100, 115, 92, 124), 30).expect("valid");

        assert_eq!(pool(4).index_of(&below), None);
    }

    #[test]
    fn index_of_a_subnet_just_past_the_pool_is_none() {
        let past = Ipv4Subnet::new(Ipv4Addr::new(100, 115, 92, 144), 30).expect("valid");

        assert_eq!(pool(4).index_of(&past), None);
    }

    #[test]
    fn index_of_a_subnet_of_another_prefix_is_none() {
        let wider = Ipv4Subnet::new(Ipv4Addr::new(100, 115, 92, 128), 29).expect("valid");

        assert_eq!(pool(4).index_of(&wider), None);
    }

    #[test]
    fn is_allocated_reports_the_last_index_once_taken() {
        let mut p = pool(4);
        p.allocate(Some(4)).expect("free");

        assert_eq!((p.is_allocated(4), p.is_allocated(3)), (true, false));
    }

    #[test]
    fn is_allocated_is_false_for_index_zero_and_past_the_count() {
        let mut p = pool(64);
        for _ in 0..64 {
            p.allocate(None).expect("free");
        }

        assert_eq!((p.is_allocated(0), p.is_allocated(65)), (false, false));
    }
}
