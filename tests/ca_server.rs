#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // test code

//! The CA server (`meshgate ca serve`) end to end on 127.0.0.1: enrollment with bootstrap tokens
//! (the agent and a raw client), token reuse under concurrency, renewal over mTLS, and the
//! revocation list.

mod support;

use std::time::Duration;

use meshgate_gateway::agent::state::KEY_FILE;
use meshgate_gateway::{Agent, KeyType};
use meshgate_identity::Serial;
use meshgate_identity::api::{BootstrapToken, RevocationList, TOKEN_SECRET_BYTES};
use meshgate_identity::svid::{check_leaf, parse_cert};
use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::pem::PemObject as _;
use support::ca_client::{CaHarness, csr_pem, get, issued_for, metric, pinned_config, post, send};
use time::OffsetDateTime;
use tokio::task::JoinSet;

const ID: &str = "spiffe://bank.example/ns/shop/sa/checkout";
const OTHER: &str = "spiffe://bank.example/ns/payments/sa/api";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enroll_issues_an_svid_for_the_tokens_id_with_the_clients_key() {
    let mut h = CaHarness::start().await;
    let token = h.token(ID);
    let state = h.scratch("agent");
    let agent = Agent::enroll(&token, &state, KeyType::default())
        .await
        .unwrap();
    assert_eq!(agent.spiffe_id().as_str(), ID);
    assert_eq!(agent.svid().info.spiffe_id.as_str(), ID);

    // The key was made on the client and never sent: the leaf certifies the key in its state
    // directory.
    let key_pem = std::fs::read(state.join(KEY_FILE)).unwrap();
    let key = PrivateKeyDer::from_pem_slice(&key_pem).unwrap();
    let signer = meshgate_identity::tls::provider()
        .key_provider
        .load_private_key(key)
        .unwrap();
    let client_spki = signer.public_key().unwrap();
    let leaf = parse_cert(&agent.svid().chain[0]).unwrap();
    assert_eq!(leaf.public_key().raw, client_spki.as_ref());
    // The CA recorded what it issued.
    let issued = h.cli.list().unwrap();
    assert!(
        issued
            .iter()
            .any(|c| c.serial == agent.svid().info.serial && c.spiffe_id.as_str() == ID)
    );

    let metrics = h.metrics().await;
    assert!(
        metric(
            &metrics,
            "meshgate_ca_enrollments_total{outcome=\"issued\"}"
        ) >= 1.0,
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spent_expired_and_revoked_tokens_get_one_and_the_same_refusal() {
    let mut h = CaHarness::start().await;
    let now = OffsetDateTime::now_utc();

    let spent = h.token(ID);
    let first = h.enroll(&spent, &csr_pem(ID)).await.unwrap();
    assert_eq!(first.status, 200, "{}", first.text());
    let again = h.enroll(&spent, &csr_pem(ID)).await.unwrap();

    // Created two hours ago with a 15 minute lifetime.
    let (expired, _) = h.token_at(ID, 1, now - Duration::from_secs(2 * 3600));
    let expired = h.enroll(&expired, &csr_pem(ID)).await.unwrap();

    let (revoked, token_id) = h.token_at(ID, 1, now);
    assert!(h.cli.revoke_token(token_id, now).unwrap());
    let revoked = h.enroll(&revoked, &csr_pem(ID)).await.unwrap();

    // A forged secret with genuine claims, and text that is not a token at all.
    let forged = BootstrapToken::new(spent.claims().clone(), [7; TOKEN_SECRET_BYTES]);
    let forged = h.enroll(&forged, &csr_pem(ID)).await.unwrap();
    let body = serde_json::json!({ "token": "mgt1.not-a-token", "csr": csr_pem(ID) });
    let raw = post("/v1/enroll", body.to_string().as_bytes());
    let malformed = send(h.addr(), pinned_config(&spent), &raw).await.unwrap();

    for r in [&again, &expired, &revoked, &forged, &malformed] {
        r.assert_error(401, "invalid_token");
        // Byte for byte the same answer: it tells an attacker nothing about why.
        assert_eq!(r.body, again.body);
    }
    // Only the first enrollment issued anything.
    assert_eq!(issued_for(&h, ID), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_csr_for_another_id_is_rejected_and_spends_the_token() {
    let mut h = CaHarness::start().await;
    let token = h.token(ID);
    let r = h.enroll(&token, &csr_pem(OTHER)).await.unwrap();
    r.assert_error(400, "csr_rejected");
    assert!(r.text().contains("spiffe-id-mismatch"), "{}", r.text());
    // A failed attempt with a valid secret still spends the token.
    let r = h.enroll(&token, &csr_pem(ID)).await.unwrap();
    r.assert_error(401, "invalid_token");
    assert_eq!(issued_for(&h, ID), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_enrollments_with_one_token_issue_exactly_once() {
    let mut h = CaHarness::start().await;
    let token = h.token(ID);
    let addr = h.addr();
    let config = pinned_config(&token);
    let body = |csr: String| {
        serde_json::json!({ "token": token.reveal(), "csr": csr })
            .to_string()
            .into_bytes()
    };
    let mut tasks = JoinSet::new();
    for _ in 0..50 {
        let raw = post("/v1/enroll", &body(csr_pem(ID)));
        let config = config.clone();
        tasks.spawn(async move { send(addr, config, &raw).await.unwrap() });
    }
    let (mut issued, mut refused) = (0, 0);
    while let Some(r) = tasks.join_next().await {
        let r = r.unwrap();
        match r.status {
            200 => issued += 1,
            _ => {
                r.assert_error(401, "invalid_token");
                refused += 1;
            }
        }
    }
    assert_eq!((issued, refused), (1, 49));
    assert_eq!(issued_for(&h, ID), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renew_over_mtls_issues_a_new_serial_for_the_same_id() {
    let mut h = CaHarness::start().await;
    let (creds, chain) = h.issue(ID, OffsetDateTime::now_utc(), Duration::from_secs(3600));
    let old = check_leaf(&chain[0]).unwrap();
    let r = h.renew(creds, &csr_pem(ID)).await.unwrap();
    let new = check_leaf(&r.svid_chain()[0]).unwrap();
    assert_eq!(new.spiffe_id.as_str(), ID);
    assert_ne!(new.serial, old.serial);
    let metrics = h.metrics().await;
    assert!(metric(&metrics, "meshgate_ca_renewals_total{outcome=\"issued\"}") >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renew_with_an_expired_svid_is_refused_in_the_handshake() {
    let mut h = CaHarness::start().await;
    let two_hours_ago = OffsetDateTime::now_utc() - Duration::from_secs(2 * 3600);
    let (expired, _) = h.issue(ID, two_hours_ago, Duration::from_secs(3600));
    let result = h.renew(expired, &csr_pem(ID)).await;
    let err = result.expect_err("an expired client SVID must not get an answer");
    assert!(err.to_string().contains("CertificateExpired"), "{err}");
    let metrics = h.metrics().await;
    assert!(
        metric(
            &metrics,
            "meshgate_ca_handshake_failures_total{reason=\"expired\"}"
        ) >= 1.0,
        "{metrics}"
    );
    assert_eq!(
        metric(&metrics, "meshgate_ca_renewals_total{outcome=\"issued\"}"),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renew_with_a_revoked_svid_or_for_another_id_is_refused() {
    let mut h = CaHarness::start().await;
    let now = OffsetDateTime::now_utc();
    let hour = Duration::from_secs(3600);

    let (revoked, chain) = h.issue(ID, now, hour);
    let serial = check_leaf(&chain[0]).unwrap().serial;
    h.cli.revoke_serial(&serial, Some("test"), now).unwrap();
    let r = h.renew(revoked, &csr_pem(ID)).await.unwrap();
    r.assert_error(403, "forbidden");

    let (valid, _) = h.issue(OTHER, now, hour);
    let r = h.renew(valid.clone(), &csr_pem(ID)).await.unwrap();
    r.assert_error(400, "csr_rejected");
    assert!(r.text().contains("spiffe-id-mismatch"), "{}", r.text());
    // The refusals left the caller able to renew its own ID.
    let r = h.renew(valid, &csr_pem(OTHER)).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocations_need_a_client_svid_and_list_revoked_serials() {
    let mut h = CaHarness::start().await;
    let now = OffsetDateTime::now_utc();
    let hour = Duration::from_secs(3600);
    let (_, chain) = h.issue(OTHER, now, hour);
    let serial: Serial = check_leaf(&chain[0]).unwrap().serial;
    h.cli.revoke_serial(&serial, None, now).unwrap();

    let r = send(h.addr(), h.ca_config(None), &get("/v1/revocations"))
        .await
        .unwrap();
    r.assert_error(401, "unauthenticated");

    let (creds, _) = h.issue(ID, now, hour);
    let r = send(h.addr(), h.ca_config(Some(creds)), &get("/v1/revocations"))
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let list: RevocationList = serde_json::from_slice(&r.body).unwrap();
    assert!(list.sequence >= 1);
    assert_eq!(list.revoked.len(), 1, "{list:?}");
    assert_eq!(list.revoked[0].serial, serial);
    assert_eq!(list.revoked[0].spiffe_id.as_str(), OTHER);
}
