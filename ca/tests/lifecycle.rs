//! The CA's online operations on a real datastore: tokens spent atomically with issuance,
//! renewal and revocation, intermediate renewal, and root rotation step by step.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // test code

use std::time::Duration;

use meshgate_ca::csr::make_csr;
use meshgate_ca::store::TokenRejection;
use meshgate_ca::{Authority, CaError, EnrollError, KeyType, Phase};
use meshgate_identity::svid::verify_chain;
use meshgate_identity::{BundleSet, SpiffeId, SvidError, TrustDomain};
use rustls_pki_types::UnixTime;
use time::OffsetDateTime;

const SHOP: &str = "spiffe://bank.example/ns/shop/sa/checkout";
const URL: &str = "https://127.0.0.1:8443";

fn new_ca() -> (tempfile::TempDir, Authority) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ca");
    Authority::init(
        &dir,
        TrustDomain::parse("bank.example").unwrap(),
        KeyType::EcdsaP256,
        now(),
    )
    .unwrap();
    let ca = Authority::open(&dir).unwrap();
    (tmp, ca)
}

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

fn id(s: &str) -> SpiffeId {
    SpiffeId::parse(s).unwrap()
}

fn csr_for(s: &str) -> Vec<u8> {
    make_csr(&id(s), &KeyType::EcdsaP256.generate().unwrap()).unwrap()
}

fn unix(t: OffsetDateTime) -> UnixTime {
    UnixTime::since_unix_epoch(Duration::from_secs(
        u64::try_from(t.unix_timestamp()).unwrap(),
    ))
}

#[test]
fn a_token_pays_for_exactly_one_svid() {
    let (_tmp, mut ca) = new_ca();
    let (token, rec) = ca
        .create_token(
            &id(SHOP),
            Duration::from_secs(900),
            1,
            "operator:test",
            URL,
            now(),
        )
        .unwrap();
    assert_eq!(token.claims().root_sha256, ca.root_sha256());
    assert_eq!(hex::encode(token.secret_sha256()), rec.secret_sha256);
    let (spent, issued) = ca.enroll(&token, &csr_for(SHOP), now()).unwrap();
    assert_eq!(spent.uses_left, 0);
    assert_eq!(issued.record.spiffe_id.as_str(), SHOP);
    assert!(
        ca.list()
            .unwrap()
            .iter()
            .any(|c| c.serial == issued.record.serial)
    );
    // The same token again.
    match ca.enroll(&token, &csr_for(SHOP), now()) {
        Err(EnrollError::Token(TokenRejection::Spent)) => {}
        other => panic!("second use: {other:?}"),
    }
}

#[test]
fn expired_revoked_and_unknown_tokens_are_rejected_without_spending() {
    let (_tmp, mut ca) = new_ca();
    let two_hours_ago = now() - Duration::from_secs(7200);
    let (expired, _) = ca
        .create_token(
            &id(SHOP),
            Duration::from_secs(900),
            1,
            "t",
            URL,
            two_hours_ago,
        )
        .unwrap();
    assert!(matches!(
        ca.enroll(&expired, &csr_for(SHOP), now()),
        Err(EnrollError::Token(TokenRejection::Expired))
    ));

    let (revoked, rec) = ca
        .create_token(&id(SHOP), Duration::from_secs(900), 1, "t", URL, now())
        .unwrap();
    assert!(ca.revoke_token(rec.id, now()).unwrap());
    assert!(matches!(
        ca.enroll(&revoked, &csr_for(SHOP), now()),
        Err(EnrollError::Token(TokenRejection::Revoked))
    ));

    // A token of another CA (unknown secret).
    let (_tmp2, mut other) = new_ca();
    let (foreign, _) = other
        .create_token(&id(SHOP), Duration::from_secs(900), 1, "t", URL, now())
        .unwrap();
    assert!(matches!(
        ca.enroll(&foreign, &csr_for(SHOP), now()),
        Err(EnrollError::Token(TokenRejection::Unknown))
    ));
    assert!(ca.list().unwrap().is_empty());
}

#[test]
fn a_csr_for_another_id_spends_the_token_and_issues_nothing() {
    let (_tmp, mut ca) = new_ca();
    let (token, _) = ca
        .create_token(&id(SHOP), Duration::from_secs(900), 1, "t", URL, now())
        .unwrap();
    match ca.enroll(
        &token,
        &csr_for("spiffe://bank.example/ns/ledger/sa/api"),
        now(),
    ) {
        Err(EnrollError::Spent(spent)) => {
            let (t, e) = *spent;
            assert!(
                matches!(
                    e,
                    CaError::BadCsr {
                        rule: "spiffe-id-mismatch",
                        ..
                    }
                ),
                "{e}"
            );
            assert_eq!(t.uses_left, 0);
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        ca.enroll(&token, &csr_for(SHOP), now()),
        Err(EnrollError::Token(TokenRejection::Spent))
    ));
    assert!(ca.list().unwrap().is_empty());
}

#[test]
fn token_limits_are_enforced() {
    let (_tmp, mut ca) = new_ca();
    let week_and_a_day = Duration::from_secs(8 * 86_400);
    assert!(matches!(
        ca.create_token(&id(SHOP), week_and_a_day, 1, "t", URL, now()),
        Err(CaError::BadTtl { .. })
    ));
    assert!(matches!(
        ca.create_token(&id(SHOP), Duration::from_secs(60), 0, "t", URL, now()),
        Err(CaError::BadUses(0))
    ));
    let ca_id = id("spiffe://bank.example/meshgate/ca");
    assert!(matches!(
        ca.create_token(&ca_id, Duration::from_secs(60), 1, "t", URL, now()),
        Err(CaError::ReservedId(_))
    ));
    let foreign = id("spiffe://other.example/a");
    assert!(matches!(
        ca.create_token(&foreign, Duration::from_secs(60), 1, "t", URL, now()),
        Err(CaError::ForeignTrustDomain(..))
    ));
    let (token, _) = ca
        .create_token(&id(SHOP), Duration::from_secs(60), 3, "t", URL, now())
        .unwrap();
    for _ in 0..3 {
        ca.enroll(&token, &csr_for(SHOP), now()).unwrap();
    }
    assert!(matches!(
        ca.enroll(&token, &csr_for(SHOP), now()),
        Err(EnrollError::Token(TokenRejection::Spent))
    ));
}

#[test]
fn fifty_concurrent_enrollments_with_one_token_issue_exactly_one_svid() {
    let (tmp, mut ca) = new_ca();
    let (token, _) = ca
        .create_token(&id(SHOP), Duration::from_secs(900), 1, "t", URL, now())
        .unwrap();
    let dir = tmp.path().join("ca");
    // Each thread opens the CA itself, as separate processes would: only SQLite serializes them.
    let handles: Vec<_> = (0..50)
        .map(|_| {
            let (dir, token) = (dir.clone(), token.clone());
            std::thread::spawn(move || {
                let mut ca = Authority::open(&dir).unwrap();
                ca.enroll(&token, &csr_for(SHOP), now()).is_ok()
            })
        })
        .collect();
    let wins = handles
        .into_iter()
        .map(|h| h.join().unwrap())
        .filter(|ok| *ok)
        .count();
    assert_eq!(wins, 1);
    assert_eq!(ca.list().unwrap().len(), 1);
}

#[test]
fn renew_works_until_revoked_and_only_for_the_callers_own_id() {
    let (_tmp, mut ca) = new_ca();
    let (first, first_key) = ca
        .issue_with_new_key(&id(SHOP), &[], Duration::from_secs(3600), now())
        .unwrap();
    let serial = first.record.serial.clone();
    let renewed = ca.renew(&first.chain, &csr_for(SHOP), now()).unwrap();
    assert_eq!(renewed.record.spiffe_id.as_str(), SHOP);
    assert_ne!(renewed.record.serial, serial);
    let err = ca
        .renew(
            &first.chain,
            &csr_for("spiffe://bank.example/ns/ledger/sa/api"),
            now(),
        )
        .unwrap_err();
    assert!(
        matches!(
            err,
            CaError::BadCsr {
                rule: "spiffe-id-mismatch",
                ..
            }
        ),
        "{err}"
    );
    // The same key again is not a renewal.
    let same_key = make_csr(&id(SHOP), &first_key).unwrap();
    let err = ca.renew(&first.chain, &same_key, now()).unwrap_err();
    assert!(
        matches!(
            err,
            CaError::BadCsr {
                rule: "fresh-key",
                ..
            }
        ),
        "{err}"
    );

    let revoked = ca
        .revoke_spiffe_id(&id(SHOP), Some("key leaked"), now())
        .unwrap();
    assert_eq!(revoked.len(), 2, "both unexpired SVIDs of the ID");
    let err = ca.renew(&first.chain, &csr_for(SHOP), now()).unwrap_err();
    assert!(matches!(err, CaError::Revoked(_)), "{err}");
    let list = ca.revocation_list().unwrap();
    assert_eq!(list.sequence, 1);
    assert!(list.revoked.iter().any(|r| r.serial == serial));
    // Revoking again changes nothing and does not bump the sequence.
    assert!(ca.revoke_serial(&serial, None, now()).unwrap().is_empty());
    assert_eq!(ca.revocation_list().unwrap().sequence, 1);
}

#[test]
fn revoking_a_serial_also_revokes_what_was_renewed_from_it() {
    let (_tmp, mut ca) = new_ca();
    let (stolen, _) = ca
        .issue_with_new_key(&id(SHOP), &[], Duration::from_secs(3600), now())
        .unwrap();
    // The thief renews twice in a chain; the owner renews separately from a fresh enrollment.
    let child = ca.renew(&stolen.chain, &csr_for(SHOP), now()).unwrap();
    let grandchild = ca.renew(&child.chain, &csr_for(SHOP), now()).unwrap();
    let (owner, _) = ca
        .issue_with_new_key(&id(SHOP), &[], Duration::from_secs(3600), now())
        .unwrap();
    let revoked = ca
        .revoke_serial(&stolen.record.serial, Some("stolen"), now())
        .unwrap();
    let serials: Vec<_> = revoked.iter().map(|r| r.serial.clone()).collect();
    assert_eq!(serials.len(), 3, "{serials:?}");
    assert!(serials.contains(&grandchild.record.serial));
    assert!(!serials.contains(&owner.record.serial));
    for chain in [&stolen.chain, &child.chain, &grandchild.chain] {
        assert!(matches!(
            ca.renew(chain, &csr_for(SHOP), now()),
            Err(CaError::Revoked(_))
        ));
    }
    ca.renew(&owner.chain, &csr_for(SHOP), now()).unwrap();
}

#[test]
fn renew_rechecks_the_callers_chain_at_renewal_time() {
    let (_tmp, mut ca) = new_ca();
    // Expired by the time of the request.
    let two_hours_ago = now() - Duration::from_secs(7200);
    let (old, _) = ca
        .issue_with_new_key(&id(SHOP), &[], Duration::from_secs(3600), two_hours_ago)
        .unwrap();
    let err = ca.renew(&old.chain, &csr_for(SHOP), now()).unwrap_err();
    assert!(matches!(err, CaError::PeerRejected(_)), "{err}");
    // A chain from another CA with the same trust domain name.
    let (_tmp2, mut other) = new_ca();
    let (foreign, _) = other
        .issue_with_new_key(&id(SHOP), &[], Duration::from_secs(3600), now())
        .unwrap();
    let err = ca.renew(&foreign.chain, &csr_for(SHOP), now()).unwrap_err();
    assert!(matches!(err, CaError::PeerRejected(_)), "{err}");
}

#[test]
fn the_intermediate_renews_itself_at_half_life() {
    let (_tmp, mut ca) = new_ca();
    assert!(!ca.renew_intermediate_if_due(now()).unwrap());
    let (before, _) = ca
        .issue_with_new_key(&id(SHOP), &[], Duration::from_secs(3600), now())
        .unwrap();
    let four_days = now() + Duration::from_secs(4 * 86_400);
    assert!(ca.renew_intermediate_if_due(four_days).unwrap());
    let (after, _) = ca
        .issue_with_new_key(&id(SHOP), &[], Duration::from_secs(3600), four_days)
        .unwrap();
    assert_ne!(before.chain[1], after.chain[1], "a new intermediate signs");
    // Both verify against the unchanged bundle, each at its own time.
    let bundles = BundleSet::single(ca.bundle().unwrap());
    verify_chain(&before.chain, &bundles, unix(now())).unwrap();
    verify_chain(&after.chain, &bundles, unix(four_days)).unwrap();
}

#[test]
fn root_rotation_keeps_old_and_new_svids_valid_until_retire() {
    let (_tmp, mut ca) = new_ca();
    let t0 = now();
    let (old, _) = ca
        .issue_with_new_key(&id(SHOP), &[], Duration::from_secs(3600), t0)
        .unwrap();
    let seq0 = ca.bundle().unwrap().sequence;

    let prepared = ca.rotate_prepare(t0).unwrap();
    assert_eq!(ca.phase().unwrap(), Phase::Prepared);
    let b1 = ca.bundle().unwrap();
    assert_eq!(b1.roots().len(), 2);
    assert_eq!(b1.sequence, seq0 + 1);
    verify_chain(&old.chain, &BundleSet::single(b1), unix(t0)).unwrap();
    // Still signed under the old root until activate.
    let (still_old, _) = ca
        .issue_with_new_key(&id(SHOP), &[], Duration::from_secs(3600), t0)
        .unwrap();
    assert_eq!(still_old.chain[1], old.chain[1]);
    assert!(
        ca.rotate_retire(t0, true).is_err(),
        "retire before activate is refused"
    );

    ca.rotate_activate(t0).unwrap();
    assert_eq!(ca.root_sha256(), prepared.sha256);
    let (new, _) = ca
        .issue_with_new_key(&id(SHOP), &[], Duration::from_secs(3600), t0)
        .unwrap();
    let b2 = BundleSet::single(ca.bundle().unwrap());
    verify_chain(&old.chain, &b2, unix(t0)).unwrap();
    verify_chain(&new.chain, &b2, unix(t0)).unwrap();
    assert_eq!(ca.bundle().unwrap().sequence, seq0 + 2);

    // Retire is refused until the longest leaf lifetime has passed, unless forced.
    let err = ca
        .rotate_retire(t0 + Duration::from_secs(3600), false)
        .unwrap_err();
    assert!(err.to_string().contains("--force"), "{err}");
    let status = ca.rotation_status(t0).unwrap();
    assert_eq!(status.phase, Phase::Activated);
    assert!(
        status.roots.iter().any(|r| r.live_leaves >= 2),
        "{status:?}"
    );
    ca.rotate_retire(t0 + Duration::from_secs(25 * 3600), false)
        .unwrap();
    let b3 = ca.bundle().unwrap();
    assert_eq!(b3.roots().len(), 1);
    assert_eq!(b3.sequence, seq0 + 3);
    let b3 = BundleSet::single(b3);
    verify_chain(&new.chain, &b3, unix(t0)).unwrap();
    let err = verify_chain(&old.chain, &b3, unix(t0)).unwrap_err();
    assert!(matches!(err, SvidError::Chain { .. }), "{err}");
    assert_eq!(ca.phase().unwrap(), Phase::Steady);
}

#[test]
fn a_second_process_sees_cli_changes_on_reload() {
    let (tmp, mut server_view) = new_ca();
    let mut cli = Authority::open(&tmp.path().join("ca")).unwrap();
    cli.rotate_prepare(now()).unwrap();
    cli.rotate_activate(now()).unwrap();
    assert!(server_view.reload_if_changed().unwrap());
    assert_eq!(server_view.root_sha256(), cli.root_sha256());
    assert!(!server_view.reload_if_changed().unwrap());
}
