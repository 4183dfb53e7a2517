//! The guest address layout and the one object that hands addresses out.
//!
//! Each kind of guest draws its IPv4 subnet from its own pool so that
//! firewall rules and hard-coded addresses (the ARC guest is always
//! 100.115.92.2) stay predictable. The default layout packs every pool into
//! 100.115.92.0/23; pools can be reconfigured (a benchmark may want hundreds
//! of namespaces), and the manager refuses any layout whose pools overlap.
//!
//! The manager also owns the MAC and ULA bookkeeping and the random source
//! feeding them, so a service holds one object for every address decision.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};

use crate::{
    AddrError, Ipv4Subnet, Ipv6Subnet, MacAddr, MacGenerator, OsRandom, RandomSource, SubnetPool,
    UlaAllocator,
};

/// Which pool a guest's IPv4 subnet comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GuestPool {
    /// ARC management network (`arcbr0` / `arc0`).
    Arc0,
    /// ARC per-physical-device networks.
    ArcNet,
    /// Termina VMs (Crostini, Bruschetta, Borealis).
    TerminaVm,
    /// LXD containers once [`GuestPool::LxdContainer`] is full.
    LxdFallback,
    /// ConnectNamespace.
    Netns,
    /// The Crostini LXD container bridge.
    LxdContainer,
    /// Parallels VMs; the only pool that accepts an explicit index.
    ParallelsVm,
}

impl GuestPool {
    /// Every pool, in address order of the default layout.
    pub const ALL: [GuestPool; 7] = [
        GuestPool::Arc0,
        GuestPool::ArcNet,
        GuestPool::TerminaVm,
        GuestPool::LxdFallback,
        GuestPool::Netns,
        GuestPool::LxdContainer,
        GuestPool::ParallelsVm,
    ];

    /// Short name used in errors, logs and the serialised form.
    pub const fn name(self) -> &'static str {
        match self {
            GuestPool::Arc0 => "arc0",
            GuestPool::ArcNet => "arc-net",
            GuestPool::TerminaVm => "termina-vm",
            GuestPool::LxdFallback => "lxd-fallback",
            GuestPool::Netns => "netns",
            GuestPool::LxdContainer => "lxd-container",
            GuestPool::ParallelsVm => "parallels-vm",
        }
    }

    /// The pool's place in the default 100.115.92.0/23 layout.
    pub const fn default_config(self) -> PoolConfig {
        const fn cfg(c: u8, d: u8, prefix_len: u8, count: u32) -> PoolConfig {
            PoolConfig {
                base: Ipv4Addr::new(100, 115, c, d),
                prefix_len,
                count,
            }
        }
        match self {
            GuestPool::Arc0 => cfg(92, 0, 30, 1),
            GuestPool::ArcNet => cfg(92, 4, 30, 5),
            GuestPool::TerminaVm => cfg(92, 24, 30, 10),
            GuestPool::LxdFallback => cfg(92, 64, 28, 4),
            GuestPool::Netns => cfg(92, 128, 30, 16),
            GuestPool::LxdContainer => cfg(92, 192, 28, 4),
            GuestPool::ParallelsVm => cfg(93, 0, 29, 32),
        }
    }

    /// Whether callers may choose the subnet index. Only Parallels does: its
    /// VMs keep the index across runs. Everything else is first-fit.
    pub const fn accepts_explicit_index(self) -> bool {
        matches!(self, GuestPool::ParallelsVm)
    }

    /// Position in [`GuestPool::ALL`] and in the manager's pool array.
    const fn slot(self) -> usize {
        match self {
            GuestPool::Arc0 => 0,
            GuestPool::ArcNet => 1,
            GuestPool::TerminaVm => 2,
            GuestPool::LxdFallback => 3,
            GuestPool::Netns => 4,
            GuestPool::LxdContainer => 5,
            GuestPool::ParallelsVm => 6,
        }
    }
}

impl fmt::Display for GuestPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Where a pool lives: `count` subnets of /`prefix_len`, the first at `base`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolConfig {
    /// Network address of the pool's first subnet.
    pub base: Ipv4Addr,
    /// Prefix length of every subnet in the pool (at most 30).
    pub prefix_len: u8,
    /// Number of subnets (1 to [`crate::MAX_SUBNETS`]).
    pub count: u32,
}

/// An IPv4 subnet held by a guest: the record the service persists and hands
/// back on release or after a restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct GuestSubnet {
    /// The pool it was drawn from (for LXD containers this may be the
    /// fallback pool).
    pub pool: GuestPool,
    /// 1-based index within that pool.
    pub index: u32,
    /// The subnet itself.
    pub subnet: Ipv4Subnet,
}

impl GuestSubnet {
    /// Host-side address (offset 1).
    pub fn host(&self) -> Ipv4Addr {
        self.subnet.host()
    }

    /// Guest-side address (offset 2).
    pub fn guest(&self) -> Ipv4Addr {
        self.subnet.guest()
    }
}

/// Every address decision for guests: IPv4 pools, MACs and ULA subnets.
#[derive(Debug)]
pub struct AddressManager {
    /// Indexed by [`GuestPool::slot`].
    pools: [SubnetPool; 7],
    macs: MacGenerator,
    ula: UlaAllocator,
    rng: Box<dyn RandomSource>,
}

impl Default for AddressManager {
    fn default() -> Self {
        Self::new()
    }
}

impl AddressManager {
    /// The default layout, randomness from the OS.
    pub fn new() -> Self {
        Self {
            // The default configs are constants that the tests check against
            // `SubnetPool::new` and the overlap rule.
            pools: GuestPool::ALL.map(|pool| {
                let cfg = pool.default_config();
                SubnetPool::from_parts(
                    pool.name().to_owned(),
                    Ipv4Subnet::new_unchecked(cfg.base, cfg.prefix_len),
                    cfg.count,
                )
            }),
            macs: MacGenerator::new(),
            ula: UlaAllocator::new(),
            rng: Box::new(OsRandom),
        }
    }

    /// The default layout with some pools replaced. Fails if a replacement
    /// is invalid on its own or if any two pools overlap.
    pub fn with_overrides(
        overrides: impl IntoIterator<Item = (GuestPool, PoolConfig)>,
    ) -> Result<Self, AddrError> {
        let mut manager = Self::new();
        for (pool, cfg) in overrides {
            manager.pools[pool.slot()] =
                SubnetPool::new(pool.name(), cfg.base, cfg.prefix_len, cfg.count)?;
        }
        manager.check_no_overlap()?;
        Ok(manager)
    }

    /// Replaces the random source, e.g. with a [`crate::SeededRandom`] for
    /// reproducible tests and benchmarks.
    pub fn with_random_source(mut self, rng: Box<dyn RandomSource>) -> Self {
        self.rng = rng;
        self
    }

    fn check_no_overlap(&self) -> Result<(), AddrError> {
        for (i, &first) in GuestPool::ALL.iter().enumerate() {
            for &second in &GuestPool::ALL[i + 1..] {
                let (a, b) = (self.pool(first), self.pool(second));
                if a.overlaps(b) {
                    return Err(AddrError::PoolsOverlap {
                        first,
                        first_range: a.range_text(),
                        second,
                        second_range: b.range_text(),
                    });
                }
            }
        }
        Ok(())
    }

    /// The pool backing `pool`, for inspection.
    pub fn pool(&self, pool: GuestPool) -> &SubnetPool {
        &self.pools[pool.slot()]
    }

    fn pool_mut(&mut self, pool: GuestPool) -> &mut SubnetPool {
        &mut self.pools[pool.slot()]
    }

    /// The configuration `pool` was built from.
    pub fn pool_config(&self, pool: GuestPool) -> PoolConfig {
        let p = self.pool(pool);
        PoolConfig {
            base: p.first_subnet().base(),
            prefix_len: p.first_subnet().prefix_len(),
            count: p.count(),
        }
    }

    /// Turns an index as it arrives on the wire (signed, 0 meaning "no
    /// preference") into the typed request for
    /// [`allocate_ipv4`](Self::allocate_ipv4). Negative values and values
    /// above the pool's count are refused.
    pub fn requested_index(&self, pool: GuestPool, raw: i64) -> Result<Option<u32>, AddrError> {
        let p = self.pool(pool);
        if raw == 0 {
            return Ok(None);
        }
        match u32::try_from(raw) {
            Ok(index) if index <= p.count() => Ok(Some(index)),
            _ => Err(AddrError::IndexOutOfRange {
                pool: p.name().to_owned(),
                index: raw,
                count: p.count(),
            }),
        }
    }

    /// Takes an IPv4 subnet from `pool`: first-fit for `None`, exactly
    /// `index` for `Some` (Parallels only). An exhausted LXD container pool
    /// falls back to [`GuestPool::LxdFallback`]; the returned record names
    /// the pool actually used.
    pub fn allocate_ipv4(
        &mut self,
        pool: GuestPool,
        index: Option<u32>,
    ) -> Result<GuestSubnet, AddrError> {
        if let Some(index) = index {
            if !pool.accepts_explicit_index() {
                return Err(AddrError::ExplicitIndexNotSupported {
                    pool,
                    index,
                    only: GuestPool::ParallelsVm,
                });
            }
        }
        match self.allocate_from(pool, index) {
            Err(AddrError::PoolExhausted { pool: name, count })
                if pool == GuestPool::LxdContainer =>
            {
                let fallback = GuestPool::LxdFallback;
                self.allocate_from(fallback, None).map_err(|err| match err {
                    AddrError::PoolExhausted {
                        count: fallback_count,
                        ..
                    } => AddrError::PoolExhausted {
                        pool: format!("{name} (and its fallback {fallback})"),
                        count: count + fallback_count,
                    },
                    other => other,
                })
            }
            result => result,
        }
    }

    fn allocate_from(
        &mut self,
        pool: GuestPool,
        index: Option<u32>,
    ) -> Result<GuestSubnet, AddrError> {
        let a = self.pool_mut(pool).allocate(index)?;
        Ok(GuestSubnet {
            pool,
            index: a.index,
            subnet: a.subnet,
        })
    }

    /// Returns subnet `index` to `pool`.
    pub fn release_ipv4(&mut self, pool: GuestPool, index: u32) -> Result<(), AddrError> {
        self.pool_mut(pool).release(index)
    }

    /// Marks `index` of `pool` as taken, for any pool, when rebuilding state
    /// after a restart.
    pub fn mark_allocated(
        &mut self,
        pool: GuestPool,
        index: u32,
    ) -> Result<GuestSubnet, AddrError> {
        self.allocate_from(pool, Some(index))
    }

    /// Re-adopts a persisted record, refusing it if the configured layout
    /// now puts a different subnet at that index.
    pub fn adopt(&mut self, record: &GuestSubnet) -> Result<(), AddrError> {
        let expected = self.pool(record.pool).subnet_at(record.index);
        match expected {
            Some(expected) if expected != record.subnet => Err(AddrError::AdoptedSubnetMismatch {
                pool: record.pool,
                index: record.index,
                recorded: record.subnet,
                expected,
            }),
            _ => self.mark_allocated(record.pool, record.index).map(|_| ()),
        }
    }

    /// Re-adopts every record it can and returns an error for each one it
    /// could not, so one stale record does not strand the others.
    pub fn adopt_all<'a>(
        &mut self,
        records: impl IntoIterator<Item = &'a GuestSubnet>,
    ) -> Vec<AddrError> {
        records
            .into_iter()
            .filter_map(|record| self.adopt(record).err())
            .collect()
    }

    /// Every IPv4 subnet currently held, pool by pool.
    pub fn allocations(&self) -> Vec<GuestSubnet> {
        GuestPool::ALL
            .iter()
            .flat_map(|&pool| {
                self.pool(pool).allocations().map(move |a| GuestSubnet {
                    pool,
                    index: a.index,
                    subnet: a.subnet,
                })
            })
            .collect()
    }

    /// A random locally administered unicast MAC not handed out before.
    pub fn random_mac(&mut self) -> Result<MacAddr, AddrError> {
        self.macs.random(self.rng.as_mut())
    }

    /// The stable MAC `42:37:05:13:17:<index>`.
    pub const fn stable_mac(index: u8) -> MacAddr {
        MacGenerator::stable(index)
    }

    /// Forgets a random MAC whose interface is gone.
    pub fn forget_mac(&mut self, mac: &MacAddr) -> bool {
        self.macs.forget(mac)
    }

    /// Records a MAC from persisted state as issued.
    pub fn adopt_mac(&mut self, mac: MacAddr) -> bool {
        self.macs.mark_issued(mac)
    }

    /// A random /64 inside `fd00::/8` not already in use.
    pub fn allocate_ula_subnet(&mut self) -> Result<Ipv6Subnet, AddrError> {
        self.ula.allocate_subnet(self.rng.as_mut())
    }

    /// Returns a ULA /64 and every address given inside it.
    pub fn release_ula_subnet(&mut self, subnet: &Ipv6Subnet) -> Result<(), AddrError> {
        self.ula.release(subnet)
    }

    /// A random address in an allocated ULA /64, never its base address nor
    /// one already given.
    pub fn random_address_in(&mut self, subnet: &Ipv6Subnet) -> Result<Ipv6Addr, AddrError> {
        self.ula.random_address_in(subnet, self.rng.as_mut())
    }

    /// Records a persisted ULA /64 as in use.
    pub fn adopt_ula_subnet(&mut self, subnet: Ipv6Subnet) -> Result<(), AddrError> {
        self.ula.mark_allocated(subnet)
    }

    /// Records a persisted address inside an adopted ULA /64 as given.
    pub fn adopt_ula_address(
        &mut self,
        subnet: &Ipv6Subnet,
        addr: Ipv6Addr,
    ) -> Result<(), AddrError> {
        self.ula.mark_address_given(subnet, addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{SeededRandom, GUEST_ADDRESS_SPACE};

    fn manager() -> AddressManager {
        AddressManager::new().with_random_source(Box::new(SeededRandom::new(42)))
    }

    fn first(pool: GuestPool) -> GuestSubnet {
        manager()
            .allocate_ipv4(pool, None)
            .expect("default pool has room")
    }

    fn addr(s: &str) -> Ipv4Addr {
        s.parse().expect("valid test address")
    }

    #[test]
    fn default_layout_passes_the_checks_of_an_explicit_configuration() {
        let explicit = AddressManager::with_overrides(
            GuestPool::ALL.map(|pool| (pool, pool.default_config())),
        );

        assert!(explicit.is_ok());
    }

    #[test]
    fn default_layout_lies_inside_the_guest_address_space() {
        let m = manager();

        let outside: Vec<GuestPool> = GuestPool::ALL
            .into_iter()
            .filter(|&pool| {
                let p = m.pool(pool);
                let last = p.subnet_at(p.count()).map(|s| s.broadcast());
                !GUEST_ADDRESS_SPACE.contains(p.first_subnet().base())
                    || !last.is_some_and(|a| GUEST_ADDRESS_SPACE.contains(a))
            })
            .collect();

        assert_eq!(outside, vec![]);
    }

    #[test]
    fn first_arc0_subnet_puts_the_arc_guest_at_100_115_92_2() {
        let s = first(GuestPool::Arc0);

        assert_eq!(s.subnet.to_string(), "100.115.92.0/30");
        assert_eq!(
            (s.host(), s.guest()),
            (addr("100.115.92.1"), addr("100.115.92.2"))
        );
    }

    #[test]
    fn first_arc_net_subnet_is_100_115_92_4_30() {
        assert_eq!(
            first(GuestPool::ArcNet).subnet.to_string(),
            "100.115.92.4/30"
        );
    }

    #[test]
    fn first_termina_subnet_is_100_115_92_24_30() {
        assert_eq!(
            first(GuestPool::TerminaVm).subnet.to_string(),
            "100.115.92.24/30"
        );
    }

    #[test]
    fn first_lxd_fallback_subnet_is_100_115_92_64_28() {
        assert_eq!(
            first(GuestPool::LxdFallback).subnet.to_string(),
            "100.115.92.64/28"
        );
    }

    #[test]
    fn first_netns_subnet_is_100_115_92_128_with_host_129_and_guest_130() {
        let s = first(GuestPool::Netns);

        assert_eq!(s.subnet.to_string(), "100.115.92.128/30");
        assert_eq!(
            (s.host(), s.guest()),
            (addr("100.115.92.129"), addr("100.115.92.130"))
        );
    }

    #[test]
    fn first_lxd_container_subnet_is_100_115_92_192_28() {
        assert_eq!(
            first(GuestPool::LxdContainer).subnet.to_string(),
            "100.115.92.192/28"
        );
    }

    #[test]
    fn first_parallels_subnet_is_100_115_93_0_29() {
        assert_eq!(
            first(GuestPool::ParallelsVm).subnet.to_string(),
            "100.115.93.0/29"
        );
    }

    #[test]
    fn last_termina_subnet_ends_at_100_115_92_63() {
        let mut m = manager();
        let last = (0..10)
            .map(|_| m.allocate_ipv4(GuestPool::TerminaVm, None))
            .last()
            .and_then(Result::ok)
            .expect("ten termina subnets");

        assert_eq!(last.subnet.broadcast(), addr("100.115.92.63"));
    }

    #[test]
    fn netns_allocation_is_first_fit_after_release() {
        let mut m = manager();
        for _ in 0..3 {
            m.allocate_ipv4(GuestPool::Netns, None).expect("room");
        }
        m.release_ipv4(GuestPool::Netns, 1).expect("allocated");

        let again = m.allocate_ipv4(GuestPool::Netns, None).expect("room");

        assert_eq!(again.subnet.to_string(), "100.115.92.128/30");
    }

    #[test]
    fn exhaustion_error_message_names_the_pool() {
        let mut m = manager();
        m.allocate_ipv4(GuestPool::Arc0, None).expect("room");

        let err = m
            .allocate_ipv4(GuestPool::Arc0, None)
            .expect_err("arc0 holds one subnet");

        assert_eq!(
            err.to_string(),
            "pool arc0 is exhausted: all 1 subnets are in use"
        );
    }

    #[test]
    fn parallels_explicit_index_3_is_100_115_93_16_29() {
        let s = manager()
            .allocate_ipv4(GuestPool::ParallelsVm, Some(3))
            .expect("free");

        assert_eq!(
            (s.index, s.subnet.to_string()),
            (3, "100.115.93.16/29".to_owned())
        );
    }

    #[test]
    fn explicit_index_is_rejected_for_pools_other_than_parallels() {
        let err = manager().allocate_ipv4(GuestPool::TerminaVm, Some(1));

        assert!(matches!(
            err,
            Err(AddrError::ExplicitIndexNotSupported {
                pool: GuestPool::TerminaVm,
                ..
            })
        ));
    }

    #[test]
    fn parallels_rejects_explicit_index_zero() {
        let err = manager().allocate_ipv4(GuestPool::ParallelsVm, Some(0));

        assert!(matches!(
            err,
            Err(AddrError::IndexOutOfRange { index: 0, .. })
        ));
    }

    #[test]
    fn parallels_rejects_an_index_past_its_32_subnets() {
        let err = manager().allocate_ipv4(GuestPool::ParallelsVm, Some(33));

        assert!(matches!(
            err,
            Err(AddrError::IndexOutOfRange {
                index: 33,
                count: 32,
                ..
            })
        ));
    }

    #[test]
    fn requested_index_rejects_negative_values() {
        let err = manager().requested_index(GuestPool::ParallelsVm, -1);

        assert!(matches!(
            err,
            Err(AddrError::IndexOutOfRange { index: -1, .. })
        ));
    }

    #[test]
    fn requested_index_treats_zero_as_no_preference() {
        assert_eq!(
            manager().requested_index(GuestPool::ParallelsVm, 0),
            Ok(None)
        );
    }

    #[test]
    fn requested_index_rejects_values_past_the_pool_count() {
        let err = manager().requested_index(GuestPool::ParallelsVm, 33);

        assert!(matches!(
            err,
            Err(AddrError::IndexOutOfRange { index: 33, .. })
        ));
    }

    #[test]
    fn lxd_container_falls_back_when_its_pool_is_exhausted() {
        let mut m = manager();
        for _ in 0..4 {
            m.allocate_ipv4(GuestPool::LxdContainer, None)
                .expect("room");
        }

        let s = m
            .allocate_ipv4(GuestPool::LxdContainer, None)
            .expect("fallback has room");

        assert_eq!(s.pool, GuestPool::LxdFallback);
        assert_eq!(s.subnet.to_string(), "100.115.92.64/28");
    }

    #[test]
    fn lxd_exhaustion_names_both_pools() {
        let mut m = manager();
        for _ in 0..8 {
            m.allocate_ipv4(GuestPool::LxdContainer, None)
                .expect("room");
        }

        let err = m
            .allocate_ipv4(GuestPool::LxdContainer, None)
            .expect_err("both pools full");

        assert_eq!(
            err.to_string(),
            "pool lxd-container (and its fallback lxd-fallback) is exhausted: all 8 subnets are in use"
        );
    }

    #[test]
    fn overlapping_configuration_is_rejected() {
        let big_netns = PoolConfig {
            base: addr("100.115.92.128"),
            prefix_len: 30,
            count: 128,
        };

        let err = AddressManager::with_overrides([(GuestPool::Netns, big_netns)]);

        assert!(matches!(
            err,
            Err(AddrError::PoolsOverlap {
                first: GuestPool::Netns,
                second: GuestPool::LxdContainer,
                ..
            })
        ));
    }

    #[test]
    fn benchmark_can_move_netns_to_a_larger_free_range() {
        let big_netns = PoolConfig {
            base: addr("100.64.0.0"),
            prefix_len: 30,
            count: 1024,
        };
        let mut m =
            AddressManager::with_overrides([(GuestPool::Netns, big_netns)]).expect("no overlap");

        let last = (0..1024)
            .map(|_| m.allocate_ipv4(GuestPool::Netns, None))
            .last()
            .and_then(Result::ok)
            .expect("1024 subnets");

        assert_eq!(last.subnet.to_string(), "100.64.15.252/30");
    }

    #[test]
    fn invalid_override_is_rejected() {
        let bad = PoolConfig {
            base: addr("100.64.0.1"),
            prefix_len: 30,
            count: 4,
        };

        let err = AddressManager::with_overrides([(GuestPool::Netns, bad)]);

        assert!(matches!(err, Err(AddrError::NotNetworkAddress { .. })));
    }

    #[test]
    fn readoption_marks_indices_taken() {
        let mut m = manager();
        m.mark_allocated(GuestPool::Netns, 1).expect("free");
        m.mark_allocated(GuestPool::Netns, 2).expect("free");

        let next = m.allocate_ipv4(GuestPool::Netns, None).expect("room");

        assert_eq!(next.index, 3);
    }

    #[test]
    fn readoption_from_persisted_records_restores_every_allocation() {
        let mut before = manager();
        let held = vec![
            before.allocate_ipv4(GuestPool::Arc0, None).expect("room"),
            before
                .allocate_ipv4(GuestPool::ParallelsVm, Some(7))
                .expect("free"),
        ];
        let json = serde_json::to_string(&held).expect("serialise");
        let records: Vec<GuestSubnet> = serde_json::from_str(&json).expect("deserialise");
        let mut after = manager();

        let errors = after.adopt_all(&records);

        assert_eq!(errors, vec![]);
        assert_eq!(after.allocations(), held);
    }

    #[test]
    fn adopt_rejects_a_record_from_a_different_layout() {
        let mut m = manager();
        let stale = GuestSubnet {
            pool: GuestPool::Netns,
            index: 1,
            subnet: "100.115.92.132/30".parse().expect("valid"),
        };

        let err = m.adopt(&stale);

        assert!(matches!(err, Err(AddrError::AdoptedSubnetMismatch { .. })));
        assert!(!m.pool(GuestPool::Netns).is_allocated(1));
    }

    #[test]
    fn guest_subnet_serialises_with_readable_fields() {
        let s = first(GuestPool::Netns);

        let json = serde_json::to_string(&s).expect("serialise");

        assert_eq!(
            json,
            r#"{"pool":"netns","index":1,"subnet":"100.115.92.128/30"}"#
        );
    }

    #[test]
    fn stable_mac_for_arcvm_arc0_is_index_1() {
        assert_eq!(
            AddressManager::stable_mac(1).to_string(),
            "42:37:05:13:17:01"
        );
    }

    #[test]
    fn random_mac_has_local_bit_set_and_multicast_bit_clear() {
        let mac = manager().random_mac().expect("seeded source");

        assert!(mac.is_locally_administered());
        assert!(!mac.is_multicast());
    }

    #[test]
    fn ula_subnets_from_one_manager_never_repeat() {
        let mut m = manager();

        let subnets: std::collections::HashSet<Ipv6Subnet> = (0..256)
            .map(|_| m.allocate_ula_subnet())
            .collect::<Result<_, _>>()
            .expect("seeded source");

        assert_eq!(subnets.len(), 256);
    }

    #[test]
    fn ula_addresses_are_distinct_and_never_the_base() {
        let mut m = manager();
        let s = m.allocate_ula_subnet().expect("seeded source");

        let host = m.random_address_in(&s).expect("seeded source");
        let peer = m.random_address_in(&s).expect("seeded source");

        assert_ne!(host, peer);
        assert!(host != s.base() && peer != s.base());
    }

    fn ula(s: &str) -> Ipv6Subnet {
        s.parse().expect("valid test subnet")
    }

    fn ipv6(s: &str) -> Ipv6Addr {
        s.parse().expect("valid test address")
    }

    fn scripted(chunks: &[&[u8]]) -> AddressManager {
        AddressManager::new()
            .with_random_source(Box::new(crate::random::ScriptedRandom::new(chunks)))
    }

    #[test]
    fn managers_with_the_same_seed_draw_the_same_macs() {
        let (mut a, mut b) = (manager(), manager());

        assert_eq!(a.random_mac(), b.random_mac());
    }

    #[test]
    fn requested_index_accepts_the_last_parallels_index() {
        assert_eq!(
            manager().requested_index(GuestPool::ParallelsVm, 32),
            Ok(Some(32))
        );
    }

    #[test]
    fn adopt_mac_reports_whether_the_mac_was_new() {
        let mut m = manager();
        let mac = AddressManager::stable_mac(5);

        assert_eq!((m.adopt_mac(mac), m.adopt_mac(mac)), (true, false));
    }

    #[test]
    fn forget_mac_reports_whether_the_mac_was_known() {
        let mut m = manager();
        let mac = AddressManager::stable_mac(5);
        m.adopt_mac(mac);

        assert_eq!((m.forget_mac(&mac), m.forget_mac(&mac)), (true, false));
    }

    #[test]
    fn allocate_ula_subnet_never_returns_an_adopted_subnet() {
        let adopted: &[u8] = &[0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77];
        let other: &[u8] = &[0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07];
        let mut m = scripted(&[adopted, other]);
        m.adopt_ula_subnet(ula("fd11:2233:4455:6677::/64"))
            .expect("free");

        let s = m.allocate_ula_subnet().expect("script has bytes");

        assert_eq!(s, ula("fd01:203:405:607::/64"));
    }

    #[test]
    fn adopting_a_ula_subnet_twice_is_refused() {
        let mut m = manager();
        m.adopt_ula_subnet(ula("fd00:1::/64")).expect("free");

        let err = m.adopt_ula_subnet(ula("fd00:1::/64"));

        assert!(matches!(err, Err(AddrError::Ipv6SubnetTaken { .. })));
    }

    #[test]
    fn random_address_in_never_returns_an_adopted_address() {
        let mut two = [0u8; 16];
        two[15] = 2;
        let mut three = [0u8; 16];
        three[15] = 3;
        let mut m = scripted(&[&two, &three]);
        let s = ula("fd00:1::/64");
        m.adopt_ula_subnet(s).expect("free");
        m.adopt_ula_address(&s, ipv6("fd00:1::2"))
            .expect("new address");

        let addr = m.random_address_in(&s).expect("script has bytes");

        assert_eq!(addr, ipv6("fd00:1::3"));
    }

    #[test]
    fn adopting_a_ula_address_outside_its_subnet_is_refused() {
        let mut m = manager();
        let s = ula("fd00:1::/64");
        m.adopt_ula_subnet(s).expect("free");

        let err = m.adopt_ula_address(&s, ipv6("fd00:2::2"));

        assert!(matches!(err, Err(AddrError::Ipv6AddressUnusable { .. })));
    }

    #[test]
    fn adopting_a_ula_address_in_a_subnet_not_held_is_refused() {
        let err = manager().adopt_ula_address(&ula("fd00:1::/64"), ipv6("fd00:1::2"));

        assert!(matches!(err, Err(AddrError::Ipv6SubnetNotAllocated { .. })));
    }

    #[test]
    fn a_released_ula_subnet_can_be_adopted_again() {
        let mut m = manager();
        let s = m.allocate_ula_subnet().expect("seeded source");
        m.release_ula_subnet(&s).expect("allocated");

        let again = m.adopt_ula_subnet(s);

        assert_eq!(again, Ok(()));
    }

    #[test]
    fn releasing_a_ula_subnet_not_held_is_refused() {
        let err = manager().release_ula_subnet(&ula("fd00:1::/64"));

        assert!(matches!(err, Err(AddrError::Ipv6SubnetNotAllocated { .. })));
    }
}
