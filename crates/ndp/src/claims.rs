//! Which guest holds which address: the bookkeeping behind the proxy's
//! rule that a guest may use (and have routed and advertised on the
//! uplink) only an address that no one else holds.
//!
//! A claim starts when a downlink first shows an address (a DAD probe for
//! it, an NS or RS from it, an NA for it) and the proxy's checks pass
//! ([`crate::proxy`] owns those, since they need the host's addresses,
//! prefixes and neighbours). It is *tentative* for [`DAD_WAIT`]: the
//! proxy probes the uplink the way duplicate address detection would, and
//! an answer from the LAN revokes it. After the wait it is *confirmed* and
//! reported; from then on the first claimer keeps it, as the first node to
//! finish DAD keeps its address. A claim ends when its downlink stops
//! being proxied or goes away, or when it has been idle for
//! [`CLAIM_IDLE`] and its downlink needs room.
//!
//! Each downlink may hold at most [`MAX_CLAIMS_PER_DOWNLINK`] claims and
//! start new ones at a bounded rate ([`CLAIM_BURST`], then one per
//! [`CLAIM_REFILL`]), so a guest that makes up addresses costs a bounded
//! number of routes and probes however fast it sends. Everything here is
//! pure: the caller passes the time.

use std::collections::HashMap;
use std::fmt;
use std::net::Ipv6Addr;
use std::time::{Duration, Instant};

/// How long a new claim stays tentative: the time a LAN owner of the
/// address has to answer the probe. Shorter than the guest's own DAD
/// (one second by default), so a guest that just finished DAD finds its
/// address confirmed.
pub const DAD_WAIT: Duration = Duration::from_millis(500);
/// At most this many addresses per downlink (SLAAC, temporary and ULA
/// addresses of a few guests behind one link).
pub const MAX_CLAIMS_PER_DOWNLINK: usize = 64;
/// New claims a downlink may start at once.
pub const CLAIM_BURST: u32 = 16;
/// After the burst, one new claim per this interval.
pub const CLAIM_REFILL: Duration = Duration::from_secs(1);
/// A claim not seen for this long may give its place to a new one when its
/// downlink is full (temporary addresses rotate).
pub const CLAIM_IDLE: Duration = Duration::from_secs(600);
/// How often the same confirmed address is reported again while it is in
/// use. The manager de-duplicates; repeating now and then lets it recover
/// from a lost event or a failed route install.
pub const REPORT_INTERVAL: Duration = Duration::from_secs(30);

/// Why a guest may not use an address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Refusal {
    /// Neither global, unique local nor link-local unicast.
    NotUnicast,
    /// One of the host's own addresses.
    HostAddress,
    /// Outside every on-link prefix of the downlink's uplink(s).
    OffLink,
    /// A neighbour on the uplink has it (the kernel resolved it, a packet
    /// came from it, or it answered the probe).
    UplinkNeighbor,
    /// Another downlink claimed it first.
    OtherGuest,
    /// The downlink holds [`MAX_CLAIMS_PER_DOWNLINK`] claims, none idle.
    Full,
    /// The downlink started new claims too fast.
    RateLimited,
}

impl Refusal {
    /// Every reason, in counter order.
    pub const ALL: [Refusal; 7] = [
        Refusal::NotUnicast,
        Refusal::HostAddress,
        Refusal::OffLink,
        Refusal::UplinkNeighbor,
        Refusal::OtherGuest,
        Refusal::Full,
        Refusal::RateLimited,
    ];

    fn index(self) -> usize {
        self as usize
    }

    /// A short name for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::NotUnicast => "not unicast",
            Refusal::HostAddress => "host address",
            Refusal::OffLink => "off-link",
            Refusal::UplinkNeighbor => "uplink neighbour",
            Refusal::OtherGuest => "other guest's",
            Refusal::Full => "downlink full",
            Refusal::RateLimited => "rate limited",
        }
    }
}

/// How many packets were refused, per reason (monotonic).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Refusals([u64; 7]);

impl Refusals {
    /// Counts one refusal.
    pub fn count(&mut self, why: Refusal) {
        self.0[why.index()] = self.0[why.index()].saturating_add(1);
    }

    /// The count for one reason.
    pub fn get(&self, why: Refusal) -> u64 {
        self.0[why.index()]
    }

    /// All reasons together.
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    /// What was counted since `earlier`.
    pub fn since(&self, earlier: &Refusals) -> Refusals {
        let mut out = Refusals::default();
        for (i, (now, then)) in self.0.iter().zip(earlier.0.iter()).enumerate() {
            out.0[i] = now.saturating_sub(*then);
        }
        out
    }
}

impl fmt::Display for Refusals {
    /// `off-link 3, rate limited 12` (reasons with a zero count left out).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for why in Refusal::ALL {
            let n = self.get(why);
            if n == 0 {
                continue;
            }
            if !first {
                f.write_str(", ")?;
            }
            first = false;
            write!(f, "{} {n}", why.as_str())?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Tentative { since: Instant },
    Confirmed,
}

#[derive(Debug, Clone, Copy)]
struct Claim {
    downlink: u32,
    phase: Phase,
    last_seen: Instant,
    last_report: Option<Instant>,
}

/// Who holds an address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    /// Downlink `0` probes for it.
    Tentative(u32),
    /// Downlink `0` holds it.
    Confirmed(u32),
}

impl Owner {
    /// The downlink, whatever the phase.
    pub fn downlink(self) -> u32 {
        match self {
            Owner::Tentative(d) | Owner::Confirmed(d) => d,
        }
    }
}

/// A token bucket: [`CLAIM_BURST`] tokens, one more per [`CLAIM_REFILL`].
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: u32,
    refilled: Instant,
}

impl Bucket {
    fn full(now: Instant) -> Bucket {
        Bucket {
            tokens: CLAIM_BURST,
            refilled: now,
        }
    }

    fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.refilled);
        let earned = elapsed.as_nanos() / CLAIM_REFILL.as_nanos();
        if earned > 0 {
            let earned = u32::try_from(earned).unwrap_or(u32::MAX);
            self.tokens = self.tokens.saturating_add(earned).min(CLAIM_BURST);
            // Keep the fraction of an interval already earned.
            self.refilled = if self.tokens == CLAIM_BURST {
                now
            } else {
                self.refilled + CLAIM_REFILL * earned
            };
        }
        if self.tokens == 0 {
            return false;
        }
        self.tokens -= 1;
        true
    }
}

/// The claim table. See the module documentation.
#[derive(Debug, Default)]
pub struct Claims {
    by_addr: HashMap<Ipv6Addr, Claim>,
    buckets: HashMap<u32, Bucket>,
}

impl Claims {
    /// Who holds `addr`, if anyone.
    pub fn owner(&self, addr: &Ipv6Addr) -> Option<Owner> {
        self.by_addr.get(addr).map(|c| match c.phase {
            Phase::Tentative { .. } => Owner::Tentative(c.downlink),
            Phase::Confirmed => Owner::Confirmed(c.downlink),
        })
    }

    /// How many addresses `downlink` holds (tentative ones included).
    pub fn count(&self, downlink: u32) -> usize {
        self.by_addr
            .values()
            .filter(|c| c.downlink == downlink)
            .count()
    }

    /// Starts a tentative claim of `addr` (which nobody holds) for
    /// `downlink`, if the downlink has room and budget. Room is made by
    /// dropping its longest-idle claim when that one is idle for
    /// [`CLAIM_IDLE`]; the budget is spent only when the claim is made.
    pub fn begin(&mut self, downlink: u32, addr: Ipv6Addr, now: Instant) -> Result<(), Refusal> {
        debug_assert!(!self.by_addr.contains_key(&addr));
        if self.count(downlink) >= MAX_CLAIMS_PER_DOWNLINK {
            let idlest = self
                .by_addr
                .iter()
                .filter(|(_, c)| c.downlink == downlink)
                .min_by_key(|(_, c)| c.last_seen)
                .map(|(a, c)| (*a, c.last_seen));
            match idlest {
                Some((old, seen)) if now.saturating_duration_since(seen) >= CLAIM_IDLE => {
                    self.by_addr.remove(&old);
                }
                _ => return Err(Refusal::Full),
            }
        }
        let bucket = self
            .buckets
            .entry(downlink)
            .or_insert_with(|| Bucket::full(now));
        if !bucket.take(now) {
            return Err(Refusal::RateLimited);
        }
        self.by_addr.insert(
            addr,
            Claim {
                downlink,
                phase: Phase::Tentative { since: now },
                last_seen: now,
                last_report: None,
            },
        );
        Ok(())
    }

    /// The holder used `addr` again; `true` when a confirmed claim is due
    /// to be reported again.
    pub fn seen(&mut self, addr: &Ipv6Addr, now: Instant) -> bool {
        let Some(c) = self.by_addr.get_mut(addr) else {
            return false;
        };
        c.last_seen = now;
        if c.phase != Phase::Confirmed {
            return false;
        }
        let due = c
            .last_report
            .is_none_or(|t| now.saturating_duration_since(t) >= REPORT_INTERVAL);
        if due {
            c.last_report = Some(now);
        }
        due
    }

    /// Tentative claims whose wait is over, as (downlink, address).
    pub fn due(&self, now: Instant) -> Vec<(u32, Ipv6Addr)> {
        let mut due: Vec<_> = self
            .by_addr
            .iter()
            .filter_map(|(a, c)| match c.phase {
                Phase::Tentative { since } if now.saturating_duration_since(since) >= DAD_WAIT => {
                    Some((c.downlink, *a))
                }
                _ => None,
            })
            .collect();
        due.sort();
        due
    }

    /// When the next tentative claim's wait ends.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.by_addr
            .values()
            .filter_map(|c| match c.phase {
                Phase::Tentative { since } => Some(since + DAD_WAIT),
                Phase::Confirmed => None,
            })
            .min()
    }

    /// Confirms a tentative claim (reported now); `false` if there was none.
    pub fn confirm(&mut self, addr: &Ipv6Addr, now: Instant) -> bool {
        match self.by_addr.get_mut(addr) {
            Some(c) if matches!(c.phase, Phase::Tentative { .. }) => {
                c.phase = Phase::Confirmed;
                c.last_report = Some(now);
                true
            }
            _ => false,
        }
    }

    /// Drops the claim of `addr`, if tentative: someone on the LAN has it.
    /// A confirmed claim stays (the first claimer keeps its address).
    pub fn revoke_tentative(&mut self, addr: &Ipv6Addr) -> bool {
        if self
            .by_addr
            .get(addr)
            .is_some_and(|c| matches!(c.phase, Phase::Tentative { .. }))
        {
            self.by_addr.remove(addr);
            return true;
        }
        false
    }

    /// Ends every claim of `downlink` and forgets its budget.
    pub fn forget_downlink(&mut self, downlink: u32) {
        self.by_addr.retain(|_, c| c.downlink != downlink);
        self.buckets.remove(&downlink);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D1: u32 = 3;
    const D2: u32 = 4;

    fn addr(i: u32) -> Ipv6Addr {
        Ipv6Addr::from(0x2001_0db8_0001_0000_0000_0000_0000_0000u128 + u128::from(i))
    }

    #[test]
    fn a_new_claim_is_tentative_until_confirmed() {
        let t0 = Instant::now();
        let mut c = Claims::default();
        c.begin(D1, addr(1), t0).unwrap();
        assert_eq!(c.owner(&addr(1)), Some(Owner::Tentative(D1)));
        assert!(c.due(t0).is_empty());
        assert_eq!(c.next_deadline(), Some(t0 + DAD_WAIT));
        assert_eq!(c.due(t0 + DAD_WAIT), vec![(D1, addr(1))]);
        assert!(c.confirm(&addr(1), t0 + DAD_WAIT));
        assert_eq!(c.owner(&addr(1)), Some(Owner::Confirmed(D1)));
        assert_eq!(c.next_deadline(), None);
    }

    #[test]
    fn a_burst_of_new_claims_is_rate_limited_then_refilled() {
        let t0 = Instant::now();
        let mut c = Claims::default();
        for i in 0..CLAIM_BURST {
            assert_eq!(c.begin(D1, addr(i), t0), Ok(()));
        }
        assert_eq!(c.begin(D1, addr(100), t0), Err(Refusal::RateLimited));
        assert_eq!(
            c.begin(D1, addr(100), t0 + CLAIM_REFILL / 2),
            Err(Refusal::RateLimited)
        );
        assert_eq!(c.begin(D1, addr(100), t0 + CLAIM_REFILL), Ok(()));
        assert_eq!(
            c.begin(D1, addr(101), t0 + CLAIM_REFILL),
            Err(Refusal::RateLimited)
        );
    }

    #[test]
    fn each_downlink_has_its_own_budget() {
        let t0 = Instant::now();
        let mut c = Claims::default();
        for i in 0..CLAIM_BURST {
            c.begin(D1, addr(i), t0).unwrap();
        }
        assert_eq!(c.begin(D2, addr(100), t0), Ok(()));
    }

    #[test]
    fn a_downlink_holds_at_most_the_cap() {
        let t0 = Instant::now();
        let mut c = Claims::default();
        let mut t = t0;
        let mut made = 0;
        for i in 0..(MAX_CLAIMS_PER_DOWNLINK as u32 * 2) {
            t += CLAIM_REFILL;
            if c.begin(D1, addr(i), t).is_ok() {
                made += 1;
            }
        }
        assert_eq!(made, MAX_CLAIMS_PER_DOWNLINK);
        assert_eq!(c.count(D1), MAX_CLAIMS_PER_DOWNLINK);
        assert_eq!(
            c.begin(D1, addr(9999), t + CLAIM_REFILL),
            Err(Refusal::Full)
        );
    }

    #[test]
    fn a_full_downlink_gives_the_place_of_its_idlest_claim_after_the_idle_time() {
        let t0 = Instant::now();
        let mut c = Claims::default();
        let mut t = t0;
        for i in 0..MAX_CLAIMS_PER_DOWNLINK as u32 {
            t += CLAIM_REFILL;
            c.begin(D1, addr(i), t).unwrap();
        }
        // Everything but addr(0) is in use.
        let later = t0 + CLAIM_IDLE + CLAIM_REFILL;
        for i in 1..MAX_CLAIMS_PER_DOWNLINK as u32 {
            c.seen(&addr(i), later);
        }
        assert_eq!(c.begin(D1, addr(500), later), Ok(()));
        assert_eq!(c.owner(&addr(0)), None, "the idle claim made room");
        assert_eq!(c.count(D1), MAX_CLAIMS_PER_DOWNLINK);
    }

    #[test]
    fn a_confirmed_claim_is_reported_again_only_after_the_interval() {
        let t0 = Instant::now();
        let mut c = Claims::default();
        c.begin(D1, addr(1), t0).unwrap();
        assert!(!c.seen(&addr(1), t0), "tentative claims are not reported");
        c.confirm(&addr(1), t0 + DAD_WAIT);
        assert!(!c.seen(&addr(1), t0 + DAD_WAIT + Duration::from_secs(1)));
        assert!(c.seen(&addr(1), t0 + DAD_WAIT + REPORT_INTERVAL));
    }

    #[test]
    fn only_tentative_claims_are_revoked() {
        let t0 = Instant::now();
        let mut c = Claims::default();
        c.begin(D1, addr(1), t0).unwrap();
        c.begin(D1, addr(2), t0).unwrap();
        c.confirm(&addr(2), t0 + DAD_WAIT);
        assert!(c.revoke_tentative(&addr(1)));
        assert!(!c.revoke_tentative(&addr(2)));
        assert_eq!(c.owner(&addr(1)), None);
        assert_eq!(c.owner(&addr(2)), Some(Owner::Confirmed(D1)));
    }

    #[test]
    fn forgetting_a_downlink_ends_its_claims_and_restores_its_budget() {
        let t0 = Instant::now();
        let mut c = Claims::default();
        for i in 0..CLAIM_BURST {
            c.begin(D1, addr(i), t0).unwrap();
        }
        c.begin(D2, addr(100), t0).unwrap();
        c.forget_downlink(D1);
        assert_eq!(c.count(D1), 0);
        assert_eq!(c.owner(&addr(100)), Some(Owner::Tentative(D2)));
        assert_eq!(c.begin(D1, addr(1), t0), Ok(()));
    }

    #[test]
    fn refusals_are_counted_and_printed_by_reason() {
        let mut r = Refusals::default();
        r.count(Refusal::OffLink);
        let before = r;
        r.count(Refusal::RateLimited);
        r.count(Refusal::RateLimited);
        assert_eq!(r.total(), 3);
        assert_eq!(r.to_string(), "off-link 1, rate limited 2");
        assert_eq!(r.since(&before).to_string(), "rate limited 2");
    }
}
