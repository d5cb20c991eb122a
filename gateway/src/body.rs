//! Request bodies on their way to the local service. A small body with a declared length is read
//! whole before it is forwarded, so that it leaves in the same write as the request head: a service
//! that answers without reading the body (a 401, a redirect) then still finds the body in its
//! buffer, drains it and keeps the connection alive. Streamed to it instead, the body could arrive
//! after the answer; the service would close the connection, and the next request that the
//! connection pool had already put on it would fail with a 502 (seen about once per 1,000 POSTs).
//! Larger or unsized bodies (uploads, gRPC streams) stream as they come, and so does a small one
//! when the listener's buffer budget is spent: peers that declare small bodies and trickle them
//! hold at most the budget, not connections × streams × 64 KiB.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::header::{CONTENT_LENGTH, HeaderMap};
use tokio::sync::Semaphore;

use crate::reply::{Body, BoxError, Refusal};

/// Bodies up to this size (declared by `content-length`) are read whole before forwarding.
pub(crate) const BUFFER_LIMIT: u32 = 64 * 1024;
/// Bytes of small bodies one listener holds at once, at most.
pub(crate) const BUFFER_BUDGET: usize = 32 * 1024 * 1024;

/// The bytes a listener may hold in buffered bodies.
pub(crate) fn budget() -> Arc<Semaphore> {
    Arc::new(Semaphore::new(BUFFER_BUDGET))
}

/// Set when the peer's body failed while it streamed to the service (a chunk size that is not
/// hex, a connection cut mid-body): the service is not at fault, so the answer is a 400, not a
/// 502.
#[derive(Debug, Clone, Default)]
pub(crate) struct PeerBodyFailed(Arc<AtomicBool>);

impl PeerBodyFailed {
    pub(crate) fn get(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    fn watch(&self, body: Incoming) -> Body {
        let flag = self.0.clone();
        body.map_err(move |e| -> BoxError {
            flag.store(true, Ordering::Relaxed);
            e.into()
        })
        .boxed()
    }
}

/// The request body as it goes to the service: whole if small, sized and within `budget`, else
/// streamed (its failures reported in `failed`). `timeout` bounds how long a client may take to
/// send a small body.
pub(crate) async fn for_upstream(
    headers: &HeaderMap,
    body: Incoming,
    timeout: Duration,
    budget: &Arc<Semaphore>,
    failed: &PeerBodyFailed,
) -> Result<Body, Refusal> {
    let Some(length) = small_and_sized(headers) else {
        return Ok(failed.watch(body));
    };
    let Ok(permit) = budget.clone().try_acquire_many_owned(length) else {
        return Ok(failed.watch(body));
    };
    match tokio::time::timeout(timeout, body.collect()).await {
        Ok(Ok(collected)) => {
            let trailers = collected.trailers().cloned();
            // The bytes count against the budget until hyper has sent and dropped them.
            let whole = Full::new(collected.to_bytes())
                .map_err(|never| match never {})
                .map_frame(move |frame| {
                    let _held = &permit;
                    frame
                });
            Ok(match trailers {
                Some(t) => whole.with_trailers(async move { Some(Ok(t)) }).boxed(),
                None => whole.boxed(),
            })
        }
        Ok(Err(_)) => Err(Refusal::BadRequest("the request body ended early")),
        Err(_) => Err(Refusal::BadRequest(
            "the request body took too long to arrive",
        )),
    }
}

/// A `content-length` no larger than [`BUFFER_LIMIT`]. hyper has already refused requests whose
/// length headers disagree, and holds the body to the declared length.
fn small_and_sized(headers: &HeaderMap) -> Option<u32> {
    headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u32>().ok())
        .filter(|n| *n <= BUFFER_LIMIT)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test code

    use super::*;

    fn with_length(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(CONTENT_LENGTH, value.parse().unwrap());
        h
    }

    #[test]
    fn only_small_declared_bodies_are_buffered() {
        assert_eq!(small_and_sized(&with_length("0")), Some(0));
        assert_eq!(small_and_sized(&with_length("65536")), Some(65536));
        assert_eq!(small_and_sized(&with_length("65537")), None);
        assert_eq!(small_and_sized(&with_length("99999999999")), None);
        assert_eq!(small_and_sized(&with_length("-1")), None);
        assert_eq!(small_and_sized(&with_length("lots")), None);
        assert_eq!(small_and_sized(&HeaderMap::new()), None);
    }

    #[test]
    fn the_budget_is_held_while_a_buffered_body_lives() {
        let budget = budget();
        let permit = budget.clone().try_acquire_many_owned(BUFFER_LIMIT).unwrap();
        assert_eq!(
            budget.available_permits(),
            BUFFER_BUDGET - BUFFER_LIMIT as usize
        );
        let body = Full::new(bytes::Bytes::from_static(b"x")).map_frame(move |f| {
            let _held = &permit;
            f
        });
        drop(body);
        assert_eq!(budget.available_permits(), BUFFER_BUDGET);
    }
}
