//! After enrollment: reuse after a restart, renewal over mTLS, expiry, bundle and revocation
//! refresh, and the run loop's publishing, against a CA on 127.0.0.1 over real TLS.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // test code

mod support;

use std::path::Path;
use std::time::Duration;

use meshgate_gateway::agent::state::{KEY_FILE, STATE_FILE};
use meshgate_gateway::{Agent, Error, KeyType};
use meshgate_identity::api::{RevocationList, RevokedEntry};
use meshgate_identity::svid::parse_cert;
use meshgate_identity::verifier::BundleSource as _;
use rustls::pki_types::UnixTime;
use support::{FakeCa, ID, Mode, Presents};

async fn enrolled(ca: &FakeCa, dir: &Path) -> Agent {
    Agent::enroll(&ca.token(ID), dir, KeyType::default())
        .await
        .unwrap()
}

fn leaf_key(agent: &Agent) -> Vec<u8> {
    let leaf = parse_cert(&agent.svid().chain[0]).unwrap();
    leaf.public_key().subject_public_key.data.to_vec()
}

#[tokio::test]
async fn load_after_restart_reuses_the_svid() {
    let ca = FakeCa::start(Presents::CaSvid).await;
    let dir = tempfile::tempdir().unwrap();
    let first = enrolled(&ca, dir.path()).await;
    let serial = first.svid().info.serial.clone();
    drop(first);

    let again = Agent::load(dir.path()).unwrap();
    assert_eq!(again.svid().info.serial, serial);
    assert_eq!(again.spiffe_id().as_str(), ID);
    assert_eq!(ca.requests(), 1, "no second enrollment");

    // load_or_enroll with a token for the same ID also reuses it, and spends no token.
    let token = ca.token(ID);
    let reused = Agent::load_or_enroll(dir.path(), Some(&token), KeyType::default())
        .await
        .unwrap();
    assert_eq!(reused.svid().info.serial, serial);
    assert_eq!(ca.requests(), 1);
}

#[tokio::test]
async fn an_expired_svid_is_reported_as_expired() {
    let ca = FakeCa::start(Presents::CaSvid).await;
    let dir = tempfile::tempdir().unwrap();
    let agent = enrolled(&ca, dir.path()).await;
    let not_after = agent.svid().info.not_after;
    let later = UnixTime::since_unix_epoch(Duration::from_secs(not_after + 1));
    let err = Agent::load_at(dir.path(), later).unwrap_err();
    assert!(
        matches!(err, Error::SvidExpired { not_after: n } if n == not_after),
        "{err}"
    );
    assert!(err.to_string().contains("enroll again"), "{err}");
}

#[tokio::test]
async fn load_refuses_missing_state_and_a_key_that_is_not_the_svids() {
    let dir = tempfile::tempdir().unwrap();
    let err = Agent::load(dir.path()).unwrap_err();
    assert!(
        matches!(err, Error::NoState { .. }) && err.is_bad_input(),
        "{err}"
    );

    let ca = FakeCa::start(Presents::CaSvid).await;
    enrolled(&ca, dir.path()).await;
    let other = rcgen::KeyPair::generate().unwrap();
    std::fs::write(dir.path().join(KEY_FILE), other.serialize_pem()).unwrap();
    let err = Agent::load(dir.path()).unwrap_err();
    assert!(matches!(err, Error::BadState { .. }), "{err}");
    assert!(err.to_string().contains("key.pem"), "{err}");
}

#[tokio::test]
async fn renew_over_mtls_gives_a_new_serial_and_a_new_key() {
    let ca = FakeCa::start(Presents::CaSvid).await;
    let dir = tempfile::tempdir().unwrap();
    enrolled(&ca, dir.path()).await;
    // Renew from a restarted agent: the mTLS client certificate comes from disk.
    let mut agent = Agent::load(dir.path()).unwrap();
    let (old_serial, old_key) = (agent.svid().info.serial.clone(), leaf_key(&agent));
    let old_key_pem = std::fs::read(dir.path().join(KEY_FILE)).unwrap();
    let mut updates = agent.subscribe();
    let credentials = agent.credentials();

    agent.renew().await.unwrap();

    assert_ne!(agent.svid().info.serial, old_serial);
    assert_ne!(leaf_key(&agent), old_key);
    assert_eq!(agent.spiffe_id().as_str(), ID);
    assert_ne!(
        std::fs::read(dir.path().join(KEY_FILE)).unwrap(),
        old_key_pem
    );
    assert!(updates.has_changed().unwrap());
    assert_eq!(updates.borrow_and_update().cert, agent.svid().chain);
    assert_eq!(credentials.current().unwrap().cert, agent.svid().chain);
    // What was written is what a restart finds.
    let reloaded = Agent::load(dir.path()).unwrap();
    assert_eq!(reloaded.svid().info.serial, agent.svid().info.serial);
}

#[tokio::test]
async fn bundle_refresh_takes_newer_sequences_only() {
    let ca = FakeCa::start(Presents::CaSvid).await;
    let dir = tempfile::tempdir().unwrap();
    let mut agent = enrolled(&ca, dir.path()).await;
    assert_eq!(
        agent.bundle().sequence,
        0,
        "the enroll answer's PEM bundle has no sequence"
    );

    assert!(agent.fetch_bundle().await.unwrap(), "sequence 1 replaces 0");
    assert_eq!(agent.bundle().sequence, 1);
    assert_eq!(agent.bundle().refresh_hint, Some(300));
    let shared = agent.shared_bundles().bundles();
    assert_eq!(
        shared
            .get(&agent.spiffe_id().trust_domain())
            .unwrap()
            .sequence,
        1
    );
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join(STATE_FILE)).unwrap()).unwrap();
    assert_eq!(json["bundle_sequence"], 1);
    assert!(
        !agent.fetch_bundle().await.unwrap(),
        "same bundle again: no change"
    );
    assert_eq!(Agent::load(dir.path()).unwrap().bundle().sequence, 1);
}

#[tokio::test]
async fn a_bundle_that_would_swap_the_trust_domain_out_is_refused() {
    let ca = FakeCa::start(Presents::CaSvid).await;
    let other = FakeCa::start(Presents::CaSvid).await;
    let dir = tempfile::tempdir().unwrap();
    let mut agent = enrolled(&ca, dir.path()).await;
    ca.set_mode(Mode::ForeignBundle {
        pem: other.bundle_pem.clone(),
        jwks: other.bundle_jwks.clone(),
    });
    let err = agent.fetch_bundle().await.unwrap_err();
    assert!(
        matches!(
            &err,
            Error::AnswerRejected {
                rule: "bundle-continuity",
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(agent.bundle().sequence, 0, "the old bundle stays");
    assert_eq!(
        Agent::load(dir.path()).unwrap().bundle().roots(),
        agent.bundle().roots()
    );
}

#[tokio::test]
async fn revocations_are_fetched_over_mtls_and_published() {
    let ca = FakeCa::start(Presents::CaSvid).await;
    let dir = tempfile::tempdir().unwrap();
    let mut agent = enrolled(&ca, dir.path()).await;
    let mut rx = agent.subscribe_revocations();
    let list = RevocationList {
        sequence: 3,
        revoked: vec![RevokedEntry {
            serial: agent.svid().info.serial.clone(),
            spiffe_id: agent.spiffe_id().clone(),
            at: 1_700_000_000,
        }],
    };
    ca.revoke(list.clone());
    assert!(agent.fetch_revocations().await.unwrap());
    assert!(rx.has_changed().unwrap());
    assert_eq!(**rx.borrow_and_update(), list);
    // An older list (a lagging replica) does not replace a newer one.
    ca.revoke(RevocationList::default());
    assert!(!agent.fetch_revocations().await.unwrap());
    assert_eq!(*agent.revocation_list(), list);
}

#[tokio::test]
async fn run_refreshes_at_once_and_stops_on_shutdown() {
    let ca = FakeCa::start(Presents::CaSvid).await;
    let dir = tempfile::tempdir().unwrap();
    let agent = enrolled(&ca, dir.path()).await;
    let shared = agent.shared_bundles();
    let td = agent.spiffe_id().trust_domain();
    let mut revocations = agent.subscribe_revocations();
    ca.revoke(RevocationList {
        sequence: 1,
        revoked: Vec::new(),
    });
    let run = tokio::spawn(agent.run(async move {
        revocations.changed().await.unwrap();
    }));
    tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("the run loop stops on shutdown")
        .unwrap()
        .unwrap();
    assert_eq!(shared.bundles().get(&td).unwrap().sequence, 1);
}
