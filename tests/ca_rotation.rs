#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // test code

//! A root rotation while the CA server (`meshgate ca serve`) runs on 127.0.0.1: the operator's
//! CLI (a second `Authority::open` of the directory) steps through prepare, activate and retire;
//! the server picks each step up; an enrolled agent keeps renewing throughout, and each SVID
//! verifies against the served bundle exactly as long as its root is in it.

mod support;

use std::collections::BTreeMap;
use std::sync::Mutex;

use meshgate_gateway::{Agent, KeyType};
use meshgate_identity::svid::verify_chain;
use meshgate_identity::{BundleSet, TrustBundle, TrustDomain};
use rustls::pki_types::{CertificateDer, UnixTime};
use support::ca_client::{CaHarness, TD, connect, eventually};
use time::OffsetDateTime;

const ID: &str = "spiffe://bank.example/ns/shop/sa/checkout";

fn verifies(chain: &[CertificateDer<'_>], bundle: &TrustBundle) -> bool {
    verify_chain(chain, &BundleSet::single(bundle.clone()), UnixTime::now()).is_ok()
}

fn only(root: &CertificateDer<'static>) -> TrustBundle {
    TrustBundle::new(TrustDomain::parse(TD).unwrap(), vec![root.clone()]).unwrap()
}

/// Every served bundle seen, by `spiffe_sequence`: one sequence must always name the same roots.
type Seen = Mutex<BTreeMap<u64, Vec<CertificateDer<'static>>>>;

/// Waits until the served bundle passes `check`, checking each one seen against `seen`.
async fn served_bundle_where(
    h: &CaHarness,
    seen: &Seen,
    what: &str,
    check: impl Fn(&TrustBundle) -> bool,
) -> TrustBundle {
    eventually(what, || async {
        let b = h.served_bundle().await;
        let mut seen = seen.lock().unwrap();
        let roots = seen.entry(b.sequence).or_insert_with(|| b.roots().to_vec());
        assert!(
            roots.as_slice() == b.roots(),
            "the served bundle changed its roots ({} then {}) without a new spiffe_sequence ({})",
            roots.len(),
            b.roots().len(),
            b.sequence
        );
        check(&b).then_some(b)
    })
    .await
}

/// Waits until the server's own TLS chain ends in `root`: it has picked up the CLI's activation
/// and signs under that root.
async fn server_signs_under(h: &CaHarness, root: &CertificateDer<'static>) {
    eventually("the server to sign under the new root", || async {
        let tls = connect(h.addr(), h.ca_config(None)).await.ok()?;
        let chain = tls.get_ref().1.peer_certificates()?;
        (chain.last()? == root).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_root_rotation_keeps_renewal_working_and_retires_the_old_root() {
    let mut h = CaHarness::start().await;
    let token = h.token(ID);
    let mut agent = Agent::enroll(&token, &h.scratch("agent"), KeyType::default())
        .await
        .unwrap();
    let old_svid = agent.svid().chain.clone();
    let seen = Seen::default();
    let start = served_bundle_where(&h, &seen, "the initial bundle", |_| true).await;
    assert_eq!(start.roots().len(), 1);
    let old_root = start.roots()[0].clone();
    assert!(verifies(&old_svid, &start));

    // Step 1: the new root enters the bundle and signs nothing yet.
    h.cli.rotate_prepare(OffsetDateTime::now_utc()).unwrap();
    let prepared = served_bundle_where(&h, &seen, "the prepared root in the served bundle", |b| {
        b.roots().len() == 2 && b.sequence > start.sequence
    })
    .await;
    let new_root = prepared
        .roots()
        .iter()
        .find(|r| **r != old_root)
        .unwrap()
        .clone();
    // The gateway picks the step up by refreshing its bundle.
    assert!(agent.fetch_bundle().await.unwrap());
    assert_eq!(agent.bundle().roots().len(), 2);

    // Step 2: a new intermediate under the new root signs from now on.
    h.cli.rotate_activate(OffsetDateTime::now_utc()).unwrap();
    let activated_sequence = h.bundle().sequence;
    let activated = served_bundle_where(&h, &seen, "the activation in the served bundle", |b| {
        b.sequence == activated_sequence
    })
    .await;
    assert_eq!(activated.roots().len(), 2);
    server_signs_under(&h, &new_root).await;
    agent.renew().await.unwrap();
    let new_svid = agent.svid().chain.clone();
    assert_ne!(new_svid[0], old_svid[0]);
    assert!(
        verifies(&new_svid, &only(&new_root)),
        "new SVID under the new root"
    );
    assert!(!verifies(&new_svid, &only(&old_root)));
    // Both generations verify against what the server serves now.
    let current = served_bundle_where(&h, &seen, "the bundle", |_| true).await;
    assert!(
        verifies(&old_svid, &current),
        "old SVID during the rotation"
    );
    assert!(
        verifies(&new_svid, &current),
        "new SVID during the rotation"
    );

    // Step 3: once the longest leaf lifetime has passed, the old root leaves the bundle.
    let later = OffsetDateTime::now_utc() + std::time::Duration::from_secs(25 * 3600);
    h.cli.rotate_retire(later, false).unwrap();
    let retired = served_bundle_where(&h, &seen, "the old root to leave the served bundle", |b| {
        b.roots().len() == 1 && b.sequence > activated_sequence
    })
    .await;
    assert_eq!(retired.roots()[0], new_root);
    assert!(!verifies(&old_svid, &retired), "old SVID after retire");
    assert!(verifies(&new_svid, &retired), "new SVID after retire");

    // The agent follows and keeps renewing under the new root.
    assert!(agent.fetch_bundle().await.unwrap());
    assert_eq!(agent.bundle().roots(), retired.roots());
    agent.renew().await.unwrap();
    assert!(verifies(&agent.svid().chain, &retired));
}

/// A CLI rotation that a running server has not picked up yet (its maintenance runs once an
/// hour here): the datastore's bundle no longer holds the root the server's loaded
/// intermediate chains to, so an enrollment is refused with 503 before its token is spent,
/// and renewal likewise, rather than answered with an SVID that the bundle sent beside it
/// does not verify.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issuance_waits_for_the_server_to_load_a_rotation_and_spends_nothing_meanwhile() {
    use support::ca_client::{csr_pem, issued_for, test_config};
    let mut cfg = test_config();
    cfg.maintenance_interval = std::time::Duration::from_secs(3600);
    let mut h = CaHarness::start_with(cfg).await;
    let token = h.token(ID);
    let agent_token = h.token(ID);
    let mut agent = Agent::enroll(&agent_token, &h.scratch("agent"), KeyType::default())
        .await
        .unwrap();

    let now = OffsetDateTime::now_utc();
    h.cli.rotate_prepare(now).unwrap();
    h.cli.rotate_activate(now).unwrap();
    // Enrollment and renewal still work while the loaded root is in the bundle.
    agent.renew().await.unwrap();
    h.cli
        .rotate_retire(now + std::time::Duration::from_secs(25 * 3600), true)
        .unwrap();
    let issued_before = issued_for(&h, ID);

    let refused = h.enroll(&token, &csr_pem(ID)).await.unwrap();
    refused.assert_error(503, "unavailable");
    assert!(refused.text().contains("retry"), "{}", refused.text());
    let err = agent.renew().await.unwrap_err();
    assert!(err.to_string().contains("503"), "{err}");
    assert_eq!(issued_for(&h, ID), issued_before, "nothing was issued");
    let tokens = h.cli.list_tokens().unwrap();
    let unspent = tokens
        .iter()
        .filter(|t| t.uses_left == 1 && t.spiffe_id.as_str() == ID)
        .count();
    assert_eq!(unspent, 1, "the refused enrollment's token is still usable");
}
