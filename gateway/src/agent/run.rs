//! The agent's loop: renew on schedule (with backoff after failures), refresh the bundle and the
//! revocation list every refresh interval, stop on shutdown or when the SVID has expired.

use std::future::Future;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::Agent;
use super::schedule::{backoff, refresh_interval, renew_at};
use crate::error::Error;

/// Longest single sleep, so a suspended machine or a clock step is noticed soon after.
const MAX_SLEEP: Duration = Duration::from_secs(30);

impl Agent {
    /// Runs until `shutdown` completes (Ok) or the SVID expires without a successful renewal
    /// (`Error::SvidExpired`: the workload needs a new bootstrap token). The bundle and the
    /// revocation list are refreshed at once, then every refresh interval.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
        let mut shutdown = std::pin::pin!(shutdown);
        let mut renew_failures = 0u32;
        let mut refresh_failures = 0u32;
        let mut next_renew = self.scheduled_renewal();
        let mut next_refresh = now_secs();
        loop {
            let now = now_secs();
            let not_after = self.svid.info.not_after;
            if now > not_after {
                return Err(Error::SvidExpired { not_after });
            }
            let wake = next_renew.min(next_refresh);
            let nap = Duration::from_secs(wake.saturating_sub(now)).min(MAX_SLEEP);
            tokio::select! {
                () = &mut shutdown => return Ok(()),
                () = tokio::time::sleep(nap) => {}
            }
            let now = now_secs();
            if now >= next_refresh {
                let refreshed = self.refresh().await;
                // The hint of the bundle just fetched: an enrolled agent's first bundle (PEM, from
                // the enrollment answer) carries none.
                let interval = refresh_interval(self.bundle.refresh_hint);
                next_refresh = match refreshed {
                    Ok(()) => {
                        refresh_failures = 0;
                        now.saturating_add(interval.as_secs())
                    }
                    Err(e) => {
                        refresh_failures = refresh_failures.saturating_add(1);
                        let delay = backoff(refresh_failures, interval.saturating_mul(2));
                        tracing::warn!(error = %e, retry_in_s = delay.as_secs(), "refresh failed");
                        now.saturating_add(delay.as_secs())
                    }
                };
            }
            let now = now_secs();
            if now >= next_renew {
                next_renew = match self.renew().await {
                    Ok(()) => {
                        renew_failures = 0;
                        self.scheduled_renewal()
                    }
                    Err(e) => {
                        renew_failures = renew_failures.saturating_add(1);
                        let remaining =
                            Duration::from_secs(self.svid.info.not_after.saturating_sub(now));
                        let delay = backoff(renew_failures, remaining);
                        tracing::warn!(error = %e, retry_in_s = delay.as_secs(), "renewal failed");
                        now.saturating_add(delay.as_secs())
                    }
                };
            }
        }
    }

    /// Bundle first: a rotation's new root must be known before the revocation call's handshake.
    async fn refresh(&mut self) -> Result<(), Error> {
        let bundle = self.fetch_bundle().await;
        let revocations = self.fetch_revocations().await;
        bundle.and(revocations).map(|_| ())
    }

    fn scheduled_renewal(&self) -> u64 {
        let info = &self.svid.info;
        renew_at(info.not_before, info.not_after, jitter())
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A random number for the renewal jitter; the middle of the window if the RNG fails.
fn jitter() -> u32 {
    ring::rand::generate::<[u8; 4]>(&ring::rand::SystemRandom::new())
        .map_or(50, |r| u32::from_le_bytes(r.expose()))
}
