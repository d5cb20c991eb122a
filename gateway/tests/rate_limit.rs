//! Rate limits by peer identity, end to end: three client gateways call payments, whose
//! `[[rate_limit]]` gives each shop identity its own small bucket. The checkout peer runs over
//! its limit and gets 429 JSON; the web peer (same entry, its own bucket) and support (no entry)
//! keep being served. Counted, never timed.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // test code

mod kit;
mod mesh;

use std::num::NonZeroU32;
use std::time::Duration;

use hyper::StatusCode;
use kit::{CHECKOUT, Kit, SUPPORT, WEB};
use mesh::{admin, call, metric};
use meshgate_gateway::config::{Limits, RateLimit, Target};
use meshgate_policy::IdPattern;

const LIMIT: Duration = Duration::from_secs(60);

#[tokio::test]
async fn a_peer_over_its_limit_gets_429_while_other_peers_are_served() {
    tokio::time::timeout(LIMIT, async {
        let kit = Kit::start().await;
        let upstream = Target::parse(&kit::websocket_echo().await.to_string()).unwrap();
        let limits = Limits {
            rate_limits: vec![RateLimit {
                peer: IdPattern::parse("spiffe://bank.example/ns/shop/**").unwrap(),
                rate: NonZeroU32::new(1).unwrap(),
                burst: NonZeroU32::new(3).unwrap(),
            }],
            ..Limits::default()
        };
        let payments = kit.payments(upstream, limits, None).await;
        let checkout = kit.client(CHECKOUT, &payments).await;
        let web = kit.client(WEB, &payments).await;
        let support = kit.client(SUPPORT, &payments).await;

        // One a second with a burst of three: a quick series of twenty runs over.
        let mut statuses = Vec::new();
        let mut refusal = None;
        for _ in 0..20 {
            let a = call(checkout.to_payments(), "GET", "/v1/charges", &[]).await;
            if a.status == StatusCode::TOO_MANY_REQUESTS && refusal.is_none() {
                refusal = Some(a);
            } else {
                statuses.push(a.status);
            }
        }
        let refusal = refusal.expect("checkout never got a 429");
        assert_eq!(refusal.json()["error"], "rate_limited");
        assert!(refusal.headers.contains_key("retry-after"), "{:?}", refusal.headers);
        assert!(
            statuses.contains(&StatusCode::OK),
            "the burst let nothing through: {statuses:?}"
        );
        assert!(statuses.iter().all(|s| *s == StatusCode::OK || *s == StatusCode::TOO_MANY_REQUESTS));

        // web matches the same entry but has its own bucket: its first request passes, while
        // checkout is still limited.
        let a = call(web.to_payments(), "GET", "/v1/charges", &[]).await;
        assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
        // support matches no entry: never limited.
        for _ in 0..20 {
            let a = call(support.to_payments(), "GET", "/v1/charges", &[]).await;
            assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
        }

        let (_, m) = admin(payments.gateway.admin, "/metrics").await;
        let limited = format!("meshgate_gateway_rate_limited_total{{peer=\"{CHECKOUT}\"}}");
        assert!(metric(&m, &limited) >= 1.0, "{m}");
        let web_limited = format!("meshgate_gateway_rate_limited_total{{peer=\"{WEB}\"}}");
        assert_eq!(metric(&m, &web_limited), 0.0, "{m}");
        let sample = format!("meshgate_gateway_requests_total{{direction=\"inbound\",peer=\"{CHECKOUT}\",decision=\"rate_limited\",status=\"429\"}}");
        assert!(metric(&m, &sample) >= 1.0, "{m}");
    })
    .await
    .unwrap();
}
