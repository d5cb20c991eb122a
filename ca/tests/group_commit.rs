#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // test code

//! The SQLite datastore's group commit: the writes of several issuances in one transaction, each
//! checked against what the writes before it in the batch left, each undone alone if it fails.

use meshgate_ca::CaError;
use meshgate_ca::group_commit::{self, GroupCommit, Pending};
use meshgate_ca::sqlite::SqliteStore;
use meshgate_ca::store::{
    EnrollOutcome, IssuanceOutcome, IssuanceWrite, IssuedCert, Store as _, TokenRecord,
    TokenRejection,
};
use meshgate_identity::{Serial, SpiffeId};

const NOW: i64 = 1_800_000_000;

fn id(n: u32) -> SpiffeId {
    SpiffeId::parse(&format!("spiffe://bank.example/ns/w/sa/w{n}")).unwrap()
}

/// A single-use token for workload `n`, stored; returns its secret's hash.
fn token(store: &mut SqliteStore, n: u32) -> String {
    let hash = format!("{n:064x}");
    store
        .insert_token(&TokenRecord {
            id: 0,
            secret_sha256: hash.clone(),
            spiffe_id: id(n),
            expires_at: NOW + 900,
            uses_left: 1,
            created_by: "test".into(),
            created_at: NOW,
            revoked_at: None,
        })
        .unwrap();
    hash
}

fn cert(serial: u8, n: u32) -> IssuedCert {
    IssuedCert {
        serial: Serial::from_bytes(&[serial]),
        spiffe_id: id(n),
        sha256: format!("{serial:064x}"),
        not_before: NOW - 30,
        not_after: NOW + 3600,
        issuer: Serial::from_bytes(&[0xee]),
        dns_names: Vec::new(),
        issued_at: NOW,
    }
}

fn enroll(hash: &str, issued: Result<IssuedCert, CaError>) -> IssuanceWrite {
    IssuanceWrite::Enroll {
        secret_sha256: hash.to_owned(),
        now: NOW,
        issued,
    }
}

fn open() -> (tempfile::TempDir, SqliteStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("ca.db")).unwrap();
    (dir, store)
}

fn uses_left(store: &SqliteStore, n: u32) -> u32 {
    store
        .list_tokens()
        .unwrap()
        .into_iter()
        .find(|t| t.spiffe_id == id(n))
        .unwrap()
        .uses_left
}

#[test]
fn two_uses_of_one_single_use_token_in_one_batch_issue_exactly_once() {
    let (_dir, mut store) = open();
    let hash = token(&mut store, 1);
    let outcomes = store
        .commit_issuances(vec![
            enroll(&hash, Ok(cert(1, 1))),
            enroll(&hash, Ok(cert(2, 1))),
        ])
        .unwrap();
    let outcomes: Vec<_> = outcomes.into_iter().map(Result::unwrap).collect();
    assert!(
        matches!(
            &outcomes[0],
            IssuanceOutcome::Enroll(EnrollOutcome::Issued(t, c)) if t.uses_left == 0 && c.serial == cert(1, 1).serial
        ),
        "{outcomes:?}"
    );
    assert!(
        matches!(
            &outcomes[1],
            IssuanceOutcome::Enroll(EnrollOutcome::Rejected(TokenRejection::Spent))
        ),
        "{outcomes:?}"
    );
    let issued = store.list_issued().unwrap();
    assert_eq!(issued.len(), 1);
    assert_eq!(issued[0].serial, cert(1, 1).serial);
    assert_eq!(uses_left(&store, 1), 0);
}

#[test]
fn a_write_that_fails_is_undone_alone_and_the_rest_of_its_batch_commits() {
    let (_dir, mut store) = open();
    let (a, b, c) = (
        token(&mut store, 1),
        token(&mut store, 2),
        token(&mut store, 3),
    );
    let outcomes = store
        .commit_issuances(vec![
            enroll(&a, Ok(cert(1, 1))),
            // The same serial again: the insert fails, so this token must stay unspent.
            enroll(&b, Ok(cert(1, 2))),
            enroll(&c, Ok(cert(3, 3))),
        ])
        .unwrap();
    assert!(matches!(
        outcomes[0],
        Ok(IssuanceOutcome::Enroll(EnrollOutcome::Issued(..)))
    ));
    assert!(
        matches!(outcomes[1], Err(CaError::Store(_))),
        "{outcomes:?}"
    );
    assert!(matches!(
        outcomes[2],
        Ok(IssuanceOutcome::Enroll(EnrollOutcome::Issued(..)))
    ));
    assert_eq!(
        (
            uses_left(&store, 1),
            uses_left(&store, 2),
            uses_left(&store, 3)
        ),
        (0, 1, 0)
    );
    let serials: Vec<_> = store
        .list_issued()
        .unwrap()
        .into_iter()
        .map(|c| c.serial)
        .collect();
    assert_eq!(serials, [cert(1, 1).serial, cert(3, 3).serial]);
}

#[test]
fn a_failed_issuance_still_spends_its_token_and_unknown_or_expired_tokens_change_nothing() {
    let (_dir, mut store) = open();
    let hash = token(&mut store, 1);
    let bad_csr = CaError::BadCsr {
        rule: "signature",
        detail: "test".into(),
    };
    let mut expired = enroll(&token(&mut store, 2), Ok(cert(2, 2)));
    if let IssuanceWrite::Enroll { now, .. } = &mut expired {
        *now = NOW + 901;
    }
    let outcomes = store
        .commit_issuances(vec![
            enroll(&hash, Err(bad_csr)),
            enroll(&hash, Ok(cert(1, 1))),
            enroll(&format!("{:064x}", 99), Ok(cert(9, 1))),
            expired,
        ])
        .unwrap();
    let outcomes: Vec<_> = outcomes.into_iter().map(Result::unwrap).collect();
    assert!(
        matches!(
            &outcomes[0],
            IssuanceOutcome::Enroll(EnrollOutcome::Failed(_, CaError::BadCsr { .. }))
        ),
        "{outcomes:?}"
    );
    for (i, why) in [
        (1, TokenRejection::Spent),
        (2, TokenRejection::Unknown),
        (3, TokenRejection::Expired),
    ] {
        assert!(
            matches!(&outcomes[i], IssuanceOutcome::Enroll(EnrollOutcome::Rejected(r)) if *r == why),
            "{i}: {outcomes:?}"
        );
    }
    assert!(store.list_issued().unwrap().is_empty());
    assert_eq!((uses_left(&store, 1), uses_left(&store, 2)), (0, 1));
}

#[test]
fn a_renewal_from_a_revoked_serial_is_refused_inside_the_batch() {
    let (_dir, mut store) = open();
    let hash = token(&mut store, 1);
    let first = cert(1, 1);
    store
        .commit_issuances(vec![enroll(&hash, Ok(first.clone()))])
        .unwrap();
    store
        .revoke(&[(first.serial.clone(), id(1))], NOW, Some("test"))
        .unwrap();
    let renew = |serial| IssuanceWrite::Renew {
        cert: cert(serial, 1),
        from: first.serial.clone(),
    };
    let outcomes = store.commit_issuances(vec![renew(2)]).unwrap();
    assert!(matches!(
        outcomes[..],
        [Ok(IssuanceOutcome::Renew { recorded: false })]
    ));
    assert_eq!(store.list_issued().unwrap().len(), 1);
}

/// The real writer thread on its own connection to a fresh database, with a token for workload
/// 1 stored by another connection; `batches` receives the size of each committed batch.
fn writer() -> (
    tempfile::TempDir,
    SqliteStore,
    GroupCommit,
    std::sync::mpsc::Receiver<usize>,
) {
    let (dir, store) = open();
    let (sizes, batches) = std::sync::mpsc::channel();
    let gc = GroupCommit::spawn(
        SqliteStore::open(&dir.path().join("ca.db")).unwrap(),
        group_commit::QUEUE,
        group_commit::MAX_BATCH,
        Box::new(move |n| {
            let _ = sizes.send(n);
        }),
    )
    .unwrap();
    (dir, store, gc, batches)
}

/// Another connection to the same file that holds the write lock until it is committed.
fn hold_write_lock(dir: &tempfile::TempDir) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open(dir.path().join("ca.db")).unwrap();
    conn.execute_batch("BEGIN IMMEDIATE").unwrap();
    conn
}

fn outcome(p: Pending) -> IssuanceOutcome {
    p.blocking_recv().unwrap().unwrap()
}

#[test]
fn concurrent_uses_of_one_single_use_token_held_behind_a_lock_issue_exactly_once() {
    let (dir, mut store, gc, batches) = writer();
    let hash = token(&mut store, 1);
    let lock = hold_write_lock(&dir);
    let pending: Vec<Pending> = (1..=8)
        .map(|serial| gc.submit(enroll(&hash, Ok(cert(serial, 1)))).unwrap())
        .collect();
    // Nothing can commit while the other connection holds the write lock.
    assert!(batches.try_recv().is_err());
    lock.execute_batch("COMMIT").unwrap();
    let outcomes: Vec<IssuanceOutcome> = pending.into_iter().map(outcome).collect();
    let issued = outcomes
        .iter()
        .filter(|o| matches!(o, IssuanceOutcome::Enroll(EnrollOutcome::Issued(..))))
        .count();
    let spent = outcomes
        .iter()
        .filter(|o| {
            matches!(
                o,
                IssuanceOutcome::Enroll(EnrollOutcome::Rejected(TokenRejection::Spent))
            )
        })
        .count();
    assert_eq!((issued, spent), (1, 7), "{outcomes:?}");
    assert_eq!(store.list_issued().unwrap().len(), 1);
    assert_eq!(uses_left(&store, 1), 0);
    // The first batch may have been taken before the rest were queued; everything queued
    // behind the lock then goes into the one batch after it.
    drop(gc);
    let sizes: Vec<usize> = batches.iter().collect();
    assert_eq!(sizes.iter().sum::<usize>(), 8, "{sizes:?}");
    assert!(sizes.len() <= 2, "{sizes:?}");
}

#[test]
fn a_token_revoked_after_the_pre_check_and_before_its_write_is_refused_inside_the_batch() {
    let (dir, mut store, gc, _batches) = writer();
    let hash = token(&mut store, 1);
    // The request's pre-check (on the server's other connection) finds the token good.
    let read = store.token_by_secret(&hash).unwrap().unwrap();
    assert_eq!(read.rejection(NOW), None);
    // The write is queued, then the token is revoked (as by `ca token revoke`) before the
    // writer can begin its transaction.
    let lock = hold_write_lock(&dir);
    let pending = gc.submit(enroll(&hash, Ok(cert(1, 1)))).unwrap();
    lock.execute(
        "UPDATE tokens SET revoked_at = ?1 WHERE id = ?2",
        rusqlite::params![NOW, read.id],
    )
    .unwrap();
    lock.execute_batch("COMMIT").unwrap();
    let o = outcome(pending);
    assert!(
        matches!(
            o,
            IssuanceOutcome::Enroll(EnrollOutcome::Rejected(TokenRejection::Revoked))
        ),
        "{o:?}"
    );
    assert!(store.list_issued().unwrap().is_empty());
    assert_eq!(uses_left(&store, 1), 1);
}
