//! Per-connection bookkeeping for the idle timeout: a connection is idle when no request has been
//! in flight for the whole timeout. Request handlers hold an `InFlight` guard while they work.
//! On HTTP connections bytes alone do not count: HTTP/2 keep-alive pings would keep a connection
//! busy forever; body frames of a request or answer do (a long stream is not idle). A TCP-mode
//! connection has no requests, so there its bytes are what counts.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::stream::Timers;

/// When a connection last did something, and how many requests it has in flight.
#[derive(Debug)]
pub(crate) struct Activity {
    start: Instant,
    /// Milliseconds since `start` of the last request's start or end.
    last: AtomicU64,
    in_flight: AtomicUsize,
    /// The response timers its requests reuse.
    timers: Timers,
}

impl Activity {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            start: Instant::now(),
            last: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            timers: Timers::default(),
        })
    }

    fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(ms, Ordering::Relaxed);
    }

    /// Bytes moved on a TCP-mode connection, or a body frame on an HTTP stream: it is not idle
    /// now.
    pub(crate) fn bytes_moved(&self) {
        self.touch();
    }

    /// The timers this connection's requests wait on for an answer (see [`Timers`]).
    pub(crate) fn timers(&self) -> &Timers {
        &self.timers
    }

    /// Marks a request in flight until the guard is dropped.
    pub(crate) fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.touch();
        InFlight(self.clone())
    }

    /// Completes once the connection has been idle for `timeout`.
    pub(crate) async fn idle(&self, timeout: Duration) {
        loop {
            let last = self.start + Duration::from_millis(self.last.load(Ordering::Relaxed));
            let deadline = last + timeout;
            if Instant::now() >= deadline && self.in_flight.load(Ordering::Relaxed) == 0 {
                return;
            }
            // A busy connection is looked at again a timeout later; an idle one at its deadline.
            let wake = deadline.max(Instant::now() + timeout / 4);
            tokio::time::sleep_until(wake).await;
        }
    }
}

/// A request in flight on a connection.
#[derive(Debug)]
pub(crate) struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn idle_waits_for_requests_in_flight() {
        let activity = Activity::new();
        let guard = activity.begin();
        let idle = activity.idle(Duration::from_millis(20));
        tokio::pin!(idle);
        // With a request in flight the connection is never idle.
        let was_idle = tokio::select! {
            () = &mut idle => true,
            () = tokio::time::sleep(Duration::from_millis(200)) => false,
        };
        assert!(!was_idle, "idle while a request was in flight");
        drop(guard);
        idle.await;
    }
}
