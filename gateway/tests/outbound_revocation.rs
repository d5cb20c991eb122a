//! The outbound side checks revocation too: once the agent's revocation list names the peer
//! gateway's SVID, the pooled connection to it is dropped and a new one is refused after its
//! handshake.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // test code

mod mesh;

use std::time::Duration;

use hyper::StatusCode;
use mesh::{Mesh, admin, call, eventually, metric};
use meshgate_ca::Authority;
use time::OffsetDateTime;

#[tokio::test]
async fn a_revoked_peer_gateway_is_refused_by_the_caller() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let mut mesh = Mesh::start().await;
        let charge = || call(mesh.shop_to_payments(), "POST", "/v1/charges", &[]);
        assert_eq!(charge().await.status, StatusCode::OK);
        let served = mesh.echo.count();
        let mut cli = Authority::open(&mesh.ca_dir).unwrap();
        cli.revoke_serial(
            &mesh.payments_agent.svid().info.serial,
            Some("test"),
            OffsetDateTime::now_utc(),
        )
        .unwrap();
        // Only the caller learns of it: payments itself keeps serving whoever reaches it.
        assert!(mesh.shop_agent.fetch_revocations().await.unwrap());
        let answer = call(mesh.shop_to_payments(), "POST", "/v1/charges", &[]).await;
        assert_eq!(answer.status, StatusCode::BAD_GATEWAY, "{:?}", answer.body);
        assert_eq!(answer.json()["error"], "bad_gateway");
        assert_eq!(mesh.echo.count(), served, "nothing reached the revoked peer");
        let shop_admin = mesh.shop.admin;
        eventually("the refusal to be counted", || async move {
            let (_, m) = admin(shop_admin, "/metrics").await;
            metric(
                &m,
                "meshgate_gateway_handshake_failures_total{direction=\"outbound\",reason=\"revoked\"}",
            ) >= 1.0
        })
        .await;
    })
    .await
    .unwrap();
}
