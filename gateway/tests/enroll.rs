//! Enrollment against a CA on 127.0.0.1 over real TLS: the happy path, and every way the agent
//! must refuse a server or an answer before it writes or trusts anything.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // test code

mod support;

use std::os::unix::fs::PermissionsExt as _;

use meshgate_gateway::agent::state::{BUNDLE_FILE, KEY_FILE, STATE_FILE, SVID_FILE};
use meshgate_gateway::{Agent, Error, KeyType};
use meshgate_identity::api::{BootstrapToken, ErrorCode};
use meshgate_identity::bundle::certs_from_pem;
use meshgate_identity::svid::{parse_cert, sha256_of};
use support::{FakeCa, ID, Mode, Presents, no_file_contains};

/// The token text and its secret part: neither may show in an error, a file or a log.
fn assert_no_token(token: &BootstrapToken, text: &str) {
    let full = token.reveal();
    let secret = full.rsplit('.').next().unwrap();
    assert!(!text.contains(&full), "token leaked: {text}");
    assert!(!text.contains(secret), "token secret leaked: {text}");
    assert!(!text.contains("mgt1."), "token prefix leaked: {text}");
    for part in full.split('.').skip(1) {
        for w in part.as_bytes().windows(12) {
            let w = std::str::from_utf8(w).unwrap();
            assert!(!text.contains(w), "part of the token leaked: {text}");
        }
    }
}

fn assert_err_has_no_token(token: &BootstrapToken, err: &Error) {
    assert_no_token(token, &err.to_string());
    assert_no_token(token, &format!("{err:?}"));
}

#[tokio::test]
async fn enrolls_and_keeps_key_svid_bundle_and_state() {
    let ca = FakeCa::start(Presents::CaSvid).await;
    let token = ca.token(ID);
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("agent");

    let agent = Agent::enroll(&token, &state, KeyType::default())
        .await
        .unwrap();

    assert_eq!(agent.spiffe_id().as_str(), ID);
    assert_eq!(ca.requests(), 1);
    let mode = |f: &str| {
        std::fs::metadata(state.join(f))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode(KEY_FILE), 0o600);
    assert_eq!(
        std::fs::metadata(&state).unwrap().permissions().mode() & 0o777,
        0o700
    );
    for f in [SVID_FILE, BUNDLE_FILE, STATE_FILE] {
        assert!(state.join(f).is_file(), "{f}");
    }
    // The key was made here: key.pem's public key is the leaf's.
    let key =
        rcgen::KeyPair::from_pem(&std::fs::read_to_string(state.join(KEY_FILE)).unwrap()).unwrap();
    let chain = certs_from_pem(&std::fs::read(state.join(SVID_FILE)).unwrap()).unwrap();
    assert_eq!(chain.len(), 2, "leaf and intermediate");
    let leaf = parse_cert(&chain[0]).unwrap();
    assert_eq!(
        leaf.public_key().subject_public_key.data.as_ref(),
        key.public_key_raw()
    );
    assert_eq!(agent.svid().chain, chain);
    // The bundle holds the pinned root; state.json names the CA and the pin, not the token.
    let roots = certs_from_pem(&std::fs::read(state.join(BUNDLE_FILE)).unwrap()).unwrap();
    assert!(
        roots
            .iter()
            .any(|r| hex::encode(sha256_of(r)) == ca.root_sha256)
    );
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(state.join(STATE_FILE)).unwrap()).unwrap();
    assert_eq!(json["ca_url"], ca.url.as_str());
    assert_eq!(json["root_sha256"], ca.root_sha256.as_str());
    assert_eq!(json["spiffe_id"], ID);
    assert_eq!(json["key_type"], "ecdsa-p256");
    assert!(no_file_contains(&state, &token.reveal()));
    assert_no_token(&token, &format!("{agent:?}"));
    // What the TLS configs will present is the new SVID.
    assert_eq!(agent.credentials().current().unwrap().cert, chain);
}

#[tokio::test]
async fn every_key_type_enrolls() {
    let ca = FakeCa::start(Presents::CaSvid).await;
    for kt in KeyType::ALL {
        let dir = tempfile::tempdir().unwrap();
        let agent = Agent::enroll(&ca.token(ID), dir.path(), kt).await.unwrap();
        assert_eq!(agent.enrollment().key_type, kt);
    }
}

#[tokio::test]
async fn a_wrong_pin_fails_before_the_token_is_sent() {
    let ca = FakeCa::start(Presents::CaSvid).await;
    let other = FakeCa::start(Presents::CaSvid).await;
    let dir = tempfile::tempdir().unwrap();
    // A pin that matches nothing, and the pin of another CA's real root.
    for pin in ["00".repeat(32), other.root_sha256.clone()] {
        let token = ca.token_with(ID, &pin, 900);
        let err = Agent::enroll(&token, dir.path(), KeyType::default())
            .await
            .unwrap_err();
        assert!(matches!(err, Error::PinnedRootNotSent { .. }), "{err}");
        assert!(err.to_string().contains(&ca.url), "{err}");
        assert_err_has_no_token(&token, &err);
    }
    assert_eq!(
        ca.requests(),
        0,
        "the server must never see a request, so never the token"
    );
    assert!(
        std::fs::read_dir(dir.path()).unwrap().next().is_none(),
        "nothing written"
    );
}

#[tokio::test]
async fn a_server_that_is_not_the_ca_is_refused() {
    let ca = FakeCa::start(Presents::OtherId).await;
    let token = ca.token(ID);
    let dir = tempfile::tempdir().unwrap();
    let err = Agent::enroll(&token, dir.path(), KeyType::default())
        .await
        .unwrap_err();
    let Error::Handshake { reason, .. } = &err else {
        panic!("expected a handshake error, got {err}");
    };
    assert!(
        reason.contains("spiffe://bank.example/meshgate/ca"),
        "{reason}"
    );
    assert!(
        reason.contains("spiffe://bank.example/ns/evil/sa/impostor"),
        "{reason}"
    );
    assert_err_has_no_token(&token, &err);
    assert_eq!(ca.requests(), 0);
}

#[tokio::test]
async fn an_answer_for_another_id_or_key_is_refused_and_nothing_is_written() {
    let ca = FakeCa::start(Presents::CaSvid).await;
    for (mode, rule) in [(Mode::WrongId, "spiffe-id"), (Mode::WrongKey, "public-key")] {
        ca.set_mode(mode);
        let token = ca.token(ID);
        let dir = tempfile::tempdir().unwrap();
        let err = Agent::enroll(&token, dir.path(), KeyType::default())
            .await
            .unwrap_err();
        assert!(
            matches!(&err, Error::AnswerRejected { rule: r, .. } if *r == rule),
            "{err}"
        );
        assert_err_has_no_token(&token, &err);
        assert!(
            std::fs::read_dir(dir.path()).unwrap().next().is_none(),
            "nothing written"
        );
    }
}

#[tokio::test]
async fn an_answer_whose_bundle_lacks_the_pinned_root_is_refused() {
    let ca = FakeCa::start(Presents::CaSvid).await;
    let other = FakeCa::start(Presents::CaSvid).await;
    ca.set_mode(Mode::ForeignBundle {
        pem: other.bundle_pem.clone(),
        jwks: other.bundle_jwks.clone(),
    });
    let token = ca.token(ID);
    let dir = tempfile::tempdir().unwrap();
    let err = Agent::enroll(&token, dir.path(), KeyType::default())
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            Error::AnswerRejected {
                rule: "pinned-root",
                ..
            }
        ),
        "{err}"
    );
    assert_err_has_no_token(&token, &err);
}

#[tokio::test]
async fn refusals_never_carry_the_token() {
    let ca = FakeCa::start(Presents::CaSvid).await;
    let dir = tempfile::tempdir().unwrap();
    // A token the CA does not know: the stable code, the CA's message.
    let unknown = BootstrapToken::new(ca.token(ID).claims().clone(), [0xee; 32]);
    let err = Agent::enroll(&unknown, dir.path(), KeyType::default())
        .await
        .unwrap_err();
    assert_eq!(err.refusal_code(), Some(ErrorCode::InvalidToken), "{err}");
    assert_err_has_no_token(&unknown, &err);
    // A CA that echoes the token: the message is withheld whole.
    ca.set_mode(Mode::EchoToken);
    let token = ca.token(ID);
    let err = Agent::enroll(&token, dir.path(), KeyType::default())
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("repeated the bootstrap token"),
        "{err}"
    );
    assert_err_has_no_token(&token, &err);
}

#[tokio::test]
async fn bad_token_claims_fail_locally() {
    let ca = FakeCa::start(Presents::CaSvid).await;
    let dir = tempfile::tempdir().unwrap();
    let expired = ca.token_with(ID, &ca.root_sha256.clone(), -5);
    let err = Agent::enroll(&expired, dir.path(), KeyType::default())
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::TokenExpired { .. }) && err.is_bad_input(),
        "{err}"
    );
    assert_err_has_no_token(&expired, &err);
    let bad_pin = ca.token_with(ID, "not-hex", 900);
    let err = Agent::enroll(&bad_pin, dir.path(), KeyType::default())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::BadPin), "{err}");
    assert_eq!(ca.requests(), 0);
}
