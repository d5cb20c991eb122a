//! The agent against the real CA server (`meshgate_ca::server`, what `meshgate ca serve` runs) on
//! 127.0.0.1: enroll with a token the CA minted, renew, refresh, and be refused once revoked.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // test code

use std::net::SocketAddr;
use std::time::Duration;

use meshgate_ca::server::{ServeConfig, start};
use meshgate_ca::{Authority, KeyType as CaKeyType};
use meshgate_gateway::{Agent, KeyType};
use meshgate_identity::api::ErrorCode;
use meshgate_identity::{SpiffeId, TrustDomain};
use time::OffsetDateTime;

const ID: &str = "spiffe://bank.example/ns/shop/sa/checkout";

#[tokio::test]
async fn enroll_renew_refresh_and_revocation_with_the_real_ca() {
    let tmp = tempfile::tempdir().unwrap();
    let ca_dir = tmp.path().join("ca");
    let now = OffsetDateTime::now_utc();
    let td = TrustDomain::parse("bank.example").unwrap();
    Authority::init(&ca_dir, td, CaKeyType::EcdsaP256, now).unwrap();
    let local = SocketAddr::from(([127, 0, 0, 1], 0));
    let cfg = ServeConfig {
        listen: local,
        admin: local,
        ..ServeConfig::default()
    };
    let server = start(&ca_dir, cfg).await.unwrap();
    // The operator's CLI works on the same directory, as `ca token create` would.
    let mut cli = Authority::open(&ca_dir).unwrap();
    let id = SpiffeId::parse(ID).unwrap();
    let url = format!("https://{}", server.addr);
    let (token, _) = cli
        .create_token(&id, Duration::from_secs(900), 1, "test", &url, now)
        .unwrap();

    let state = tmp.path().join("agent");
    let mut agent = Agent::enroll(&token, &state, KeyType::default())
        .await
        .unwrap();
    assert_eq!(agent.spiffe_id(), &id);
    // The token is spent: a second enrollment is refused with the one stable code.
    let err = Agent::enroll(&token, &tmp.path().join("again"), KeyType::default())
        .await
        .unwrap_err();
    assert_eq!(err.refusal_code(), Some(ErrorCode::InvalidToken), "{err}");
    assert!(!err.to_string().contains(&token.reveal()));

    let first = agent.svid().info.serial.clone();
    agent.renew().await.unwrap();
    assert_ne!(agent.svid().info.serial, first);
    agent.fetch_bundle().await.unwrap();
    assert!(agent.bundle().sequence >= 1);
    agent.fetch_revocations().await.unwrap();
    assert!(agent.revocation_list().revoked.is_empty());

    cli.revoke_serial(
        &agent.svid().info.serial,
        Some("test"),
        OffsetDateTime::now_utc(),
    )
    .unwrap();
    assert!(agent.fetch_revocations().await.unwrap());
    let revoked = agent.revocation_list();
    assert!(
        revoked
            .revoked
            .iter()
            .any(|r| r.serial == agent.svid().info.serial)
    );
    let err = agent.renew().await.unwrap_err();
    assert_eq!(err.refusal_code(), Some(ErrorCode::Forbidden), "{err}");
    server.shutdown().await;
}
