//! The last accepted revocation list survives a restart: `Agent::load` publishes it before the
//! CA is reached again, so revoked peers stay refused while the CA is unreachable.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // test code

mod support;

use meshgate_gateway::agent::state::REVOCATIONS_FILE;
use meshgate_gateway::{Agent, Error, KeyType};
use meshgate_identity::api::{RevocationList, RevokedEntry};
use support::{FakeCa, ID, Presents};

#[tokio::test]
async fn the_revocation_list_is_kept_across_a_restart() {
    let ca = FakeCa::start(Presents::CaSvid).await;
    let dir = tempfile::tempdir().unwrap();
    let mut agent = Agent::enroll(&ca.token(ID), dir.path(), KeyType::default())
        .await
        .unwrap();
    // Before any fetch: no file, an empty list after a restart.
    assert!(!dir.path().join(REVOCATIONS_FILE).exists());
    assert_eq!(
        *Agent::load(dir.path()).unwrap().revocation_list(),
        RevocationList::default()
    );
    let list = RevocationList {
        sequence: 5,
        revoked: vec![RevokedEntry {
            serial: meshgate_identity::svid::Serial::from_bytes(&[0x0a, 0x0b]),
            spiffe_id: meshgate_identity::SpiffeId::parse("spiffe://bank.example/ns/shop/sa/web")
                .unwrap(),
            at: 1_700_000_000,
        }],
    };
    ca.revoke(list.clone());
    assert!(agent.fetch_revocations().await.unwrap());
    drop(ca); // the CA is gone
    let restarted = Agent::load(dir.path()).unwrap();
    assert_eq!(*restarted.revocation_list(), list);
    assert_eq!(**restarted.subscribe_revocations().borrow(), list);
    // A corrupt file stops the restart and names the file.
    std::fs::write(dir.path().join(REVOCATIONS_FILE), b"not json").unwrap();
    let err = Agent::load(dir.path()).err().unwrap();
    assert!(matches!(err, Error::BadState { .. }), "{err}");
    assert!(err.to_string().contains(REVOCATIONS_FILE), "{err}");
}
