//! Rate limits by peer identity on the inbound listener: each `[[rate_limit]]` entry is a
//! keyed token bucket (governor's GCRA) with one bucket per peer SPIFFE ID, so a noisy peer
//! uses up its own allowance and nobody else's. The first entry whose pattern matches decides;
//! a peer that matches none is not limited.

use std::time::Duration;

use governor::clock::{Clock as _, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use meshgate_identity::SpiffeId;

use crate::config::RateLimit;

/// How often buckets of peers that have gone quiet are dropped.
pub(crate) const SWEEP_INTERVAL: Duration = Duration::from_secs(60);

/// Every entry of the config with its buckets.
#[derive(Debug)]
pub(crate) struct RateLimits {
    entries: Vec<Entry>,
    clock: DefaultClock,
}

#[derive(Debug)]
struct Entry {
    config: RateLimit,
    buckets: DefaultKeyedRateLimiter<SpiffeId>,
}

/// A request over its peer's limit, and when the peer may try again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limited {
    pub retry_after: Duration,
}

impl RateLimits {
    pub(crate) fn new(limits: &[RateLimit]) -> Self {
        let entries = limits
            .iter()
            .map(|config| Entry {
                buckets: RateLimiter::keyed(
                    Quota::per_second(config.rate).allow_burst(config.burst),
                ),
                config: config.clone(),
            })
            .collect();
        Self {
            entries,
            clock: DefaultClock::default(),
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Takes one request from `peer`'s bucket of the first matching entry.
    pub(crate) fn check(&self, peer: &SpiffeId) -> Result<(), Limited> {
        let Some(entry) = self.entries.iter().find(|e| e.config.peer.matches(peer)) else {
            return Ok(());
        };
        entry.buckets.check_key(peer).map_err(|not_until| Limited {
            retry_after: not_until.wait_time_from(self.clock.now()),
        })
    }

    /// Forgets the buckets that are full again, so that memory follows the peers that are
    /// active rather than every peer ever seen.
    pub(crate) fn sweep(&self) {
        for entry in &self.entries {
            entry.buckets.retain_recent();
            entry.buckets.shrink_to_fit();
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test code

    use std::num::NonZeroU32;

    use meshgate_policy::IdPattern;

    use super::*;

    fn limit(pattern: &str, rate: u32, burst: u32) -> RateLimit {
        RateLimit {
            peer: IdPattern::parse(pattern).unwrap(),
            rate: NonZeroU32::new(rate).unwrap(),
            burst: NonZeroU32::new(burst).unwrap(),
        }
    }

    fn id(s: &str) -> SpiffeId {
        SpiffeId::parse(s).unwrap()
    }

    #[test]
    fn each_peer_has_its_own_bucket_and_the_first_match_decides() {
        let limits = RateLimits::new(&[
            limit("spiffe://bank.example/ns/shop/sa/checkout", 1, 1),
            limit("spiffe://bank.example/ns/shop/**", 1, 2),
        ]);
        let checkout = id("spiffe://bank.example/ns/shop/sa/checkout");
        let web = id("spiffe://bank.example/ns/shop/sa/web");
        let other = id("spiffe://bank.example/ns/ledger/sa/api");
        // One a second with a burst of one: a quick series runs over. (Counted, not timed:
        // only a stall of seconds between two checks could let all through.)
        let over: Vec<Limited> = (0..10)
            .filter_map(|_| limits.check(&checkout).err())
            .collect();
        assert!(!over.is_empty());
        assert!(over.iter().all(|l| l.retry_after <= Duration::from_secs(1)));
        // web matches the second entry only, with a fresh bucket of its own.
        assert!(limits.check(&web).is_ok());
        assert!((0..10).any(|_| limits.check(&web).is_err()));
        // A peer no entry names is never limited.
        for _ in 0..100 {
            assert!(limits.check(&other).is_ok());
        }
        limits.sweep();
        assert!(!limits.is_empty());
    }
}
