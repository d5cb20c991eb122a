//! Request bodies on their way to the local service. A small body with a declared length is read
//! whole before it is forwarded, so that it leaves in the same write as the request head: a service
//! that answers without reading the body (a 401, a redirect) then still finds the body in its
//! buffer, drains it and keeps the connection alive. Streamed to it instead, the body could arrive
//! after the answer; the service would close the connection, and the next request that the
//! connection pool had already put on it would fail with a 502 (seen about once per 1,000 POSTs).
//! Larger or unsized bodies (uploads, gRPC streams) stream as they come.

use std::time::Duration;

use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::header::{CONTENT_LENGTH, HeaderMap};

use crate::reply::{Body, Refusal};

/// Bodies up to this size (declared by `content-length`) are read whole before forwarding.
pub(crate) const BUFFER_LIMIT: u64 = 64 * 1024;

/// The request body as it goes to the service: whole if small and sized, else streamed.
/// `timeout` bounds how long a client may take to send a small body.
pub(crate) async fn for_upstream(
    headers: &HeaderMap,
    body: Incoming,
    timeout: Duration,
) -> Result<Body, Refusal> {
    if !small_and_sized(headers) {
        return Ok(body.boxed());
    }
    match tokio::time::timeout(timeout, body.collect()).await {
        Ok(Ok(collected)) => {
            let trailers = collected.trailers().cloned();
            let whole = Full::new(collected.to_bytes()).map_err(|never| match never {});
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
fn small_and_sized(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .is_some_and(|n| n <= BUFFER_LIMIT)
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
        assert!(small_and_sized(&with_length("0")));
        assert!(small_and_sized(&with_length("65536")));
        assert!(!small_and_sized(&with_length("65537")));
        assert!(!small_and_sized(&with_length("-1")));
        assert!(!small_and_sized(&with_length("lots")));
        assert!(!small_and_sized(&HeaderMap::new()));
    }
}
