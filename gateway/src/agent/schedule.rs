//! When the agent acts, as pure functions of time: renew at 50% ± 5% of the SVID's lifetime, back
//! off exponentially after a failure but always try again before the SVID expires, and refresh
//! the bundle as often as the CA hints, within sane bounds.

use std::time::Duration;

/// First retry delay after a failed renewal.
pub const BACKOFF_BASE: Duration = Duration::from_secs(1);
/// Longest retry delay.
pub const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// Bundle and revocation refresh interval when the CA gives no hint.
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(300);
/// Bounds on the CA's refresh hint, so a CA cannot make the agent spin or go deaf.
pub const MIN_REFRESH: Duration = Duration::from_secs(5);
pub const MAX_REFRESH: Duration = Duration::from_secs(3600);

/// When to renew an SVID valid from `not_before` to `not_after` (unix seconds): at 45% to 55% of
/// its lifetime, picked by `random` so a fleet enrolled together does not renew together.
pub fn renew_at(not_before: u64, not_after: u64, random: u32) -> u64 {
    let lifetime = u128::from(not_after.saturating_sub(not_before));
    let permille = 450 + u128::from(random % 101);
    let offset = u64::try_from(lifetime * permille / 1000).unwrap_or(u64::MAX);
    not_before.saturating_add(offset)
}

/// How long to wait after the `failures`-th failure in a row (1 for the first), when the SVID has
/// `remaining` left: 1 s doubling to 60 s, but never more than half of what remains, so several
/// tries still happen before expiry. At least one second, so a failing CA is not hammered.
pub fn backoff(failures: u32, remaining: Duration) -> Duration {
    let exponent = failures.saturating_sub(1).min(16);
    let delay = BACKOFF_BASE
        .saturating_mul(1u32 << exponent)
        .min(BACKOFF_MAX);
    delay.min(remaining / 2).max(BACKOFF_BASE)
}

/// The refresh interval for a bundle's `spiffe_refresh_hint` (seconds).
pub fn refresh_interval(hint: Option<u64>) -> Duration {
    hint.map_or(DEFAULT_REFRESH, |s| {
        Duration::from_secs(s).clamp(MIN_REFRESH, MAX_REFRESH)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renews_between_45_and_55_percent_of_the_lifetime() {
        let (nb, na) = (1_000_000, 1_000_000 + 3600);
        assert_eq!(renew_at(nb, na, 0), nb + 1620);
        assert_eq!(renew_at(nb, na, 50), nb + 1800);
        assert_eq!(renew_at(nb, na, 100), nb + 1980);
        assert_eq!(renew_at(nb, na, 101), nb + 1620);
        for r in [0, 1, 7, 99, 12_345, u32::MAX] {
            let at = renew_at(nb, na, r);
            assert!((nb + 1620..=nb + 1980).contains(&at), "{r}: {at}");
        }
    }

    #[test]
    fn renewal_of_degenerate_validity_does_not_overflow() {
        assert_eq!(renew_at(100, 100, 3), 100);
        assert_eq!(renew_at(100, 50, 3), 100);
        assert!(renew_at(0, u64::MAX, 100) > u64::MAX / 2);
    }

    #[test]
    fn backoff_doubles_to_a_minute() {
        let plenty = Duration::from_secs(3600);
        let secs: Vec<u64> = (1..=9).map(|f| backoff(f, plenty).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(backoff(0, plenty), BACKOFF_BASE);
        assert_eq!(backoff(u32::MAX, plenty), BACKOFF_MAX);
    }

    #[test]
    fn backoff_retries_before_expiry() {
        assert_eq!(backoff(7, Duration::from_secs(50)), Duration::from_secs(25));
        assert_eq!(
            backoff(7, Duration::from_secs(3)),
            Duration::from_millis(1500)
        );
        assert_eq!(backoff(7, Duration::from_secs(1)), BACKOFF_BASE);
        assert_eq!(backoff(7, Duration::ZERO), BACKOFF_BASE);
    }

    #[test]
    fn refresh_follows_the_hint_within_bounds() {
        assert_eq!(refresh_interval(None), DEFAULT_REFRESH);
        assert_eq!(refresh_interval(Some(120)), Duration::from_secs(120));
        assert_eq!(refresh_interval(Some(0)), MIN_REFRESH);
        assert_eq!(refresh_interval(Some(u64::MAX)), MAX_REFRESH);
    }
}
