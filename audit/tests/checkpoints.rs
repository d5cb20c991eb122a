#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // test code
//! Signed checkpoints: a signed log verifies with the bundle alone; each kind of tampering is
//! found and located; a forged checkpoint and records cut off after the last checkpoint show.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration as StdDuration;

use common::pki::{Pki, TestSigner};
use common::{event, fixed_time, lines, recompute_chain, write_lines};
use meshgate_audit::{
    AuditWriter, CheckpointFault, CheckpointPolicy, Component, Damage, LogOptions, LogReport,
    VerifyOptions, trust_roots_from_pem, verify_log,
};
use time::{Duration, OffsetDateTime};

const TD: &str = "example.org";
const CA_ID: &str = "spiffe://example.org/meshgate/ca";

/// A clock the test moves: `fixed_time()` plus the seconds in the cell.
fn clock(offset: &Arc<AtomicI64>) -> impl Fn() -> OffsetDateTime + Send + 'static {
    let offset = Arc::clone(offset);
    move || fixed_time() + Duration::seconds(offset.load(Ordering::SeqCst))
}

struct Setup {
    pki: Pki,
    signer: Arc<TestSigner>,
    _dir: tempfile::TempDir,
    path: PathBuf,
    offset: Arc<AtomicI64>,
}

fn setup() -> Setup {
    let pki = Pki::new(TD, fixed_time());
    let svid = pki.svid(
        CA_ID,
        fixed_time() - Duration::minutes(5),
        Duration::hours(2),
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    Setup {
        pki,
        signer: TestSigner::with(svid),
        _dir: dir,
        path,
        offset: Arc::new(AtomicI64::new(0)),
    }
}

impl Setup {
    fn writer(&self, every_records: u64) -> AuditWriter {
        let options = LogOptions::new().signed(
            self.signer.clone(),
            CheckpointPolicy::new(every_records, StdDuration::from_secs(60)),
        );
        AuditWriter::open_with(&self.path, Component::Ca, clock(&self.offset), options)
            .unwrap()
            .0
    }

    fn unsigned_writer(&self) -> AuditWriter {
        AuditWriter::open_with_clock(&self.path, Component::Ca, clock(&self.offset))
            .unwrap()
            .0
    }

    fn verify(&self) -> LogReport {
        verify_log(&[&self.path], &self.bundle()).unwrap()
    }

    fn bundle(&self) -> VerifyOptions {
        let roots = trust_roots_from_pem(&[self.pki.root_pem.as_bytes()]).unwrap();
        VerifyOptions::new().with_bundles(roots)
    }
}

fn actions(path: &Path) -> Vec<String> {
    lines(path)
        .iter()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["action"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect()
}

/// Recomputes `prev`, `hash`, checkpoints' `head_hash` (and with `renumber`, `seq`) of every
/// line: what someone who can write the file, but holds no key, does after changing it.
fn rechain(lines: &mut [String], renumber: bool) {
    let mut prev = "0".repeat(64);
    for (i, line) in lines.iter_mut().enumerate() {
        let mut text = line[..line.rfind(",\"hash\":\"").unwrap()].to_owned();
        let at = text.rfind(",\"prev\":\"").unwrap() + 9;
        text.replace_range(at..at + 64, &prev);
        // A checkpoint names the head it signs in its details too.
        if let Some(at) = text.find("\"head_hash\":\"") {
            text.replace_range(at + 13..at + 13 + 64, &prev);
        }
        if renumber {
            let end = text.find(',').unwrap();
            text.replace_range(..end, &format!("{{\"seq\":{}", i + 1));
        }
        let canonical = format!("{text}}}");
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(prev.as_bytes());
        ctx.update(canonical.as_bytes());
        let hash = hex::encode(ctx.finish());
        *line = format!("{text},\"hash\":\"{hash}\"}}");
        prev = hash;
    }
}

#[test]
fn a_signed_log_verifies_with_the_bundle_alone() {
    let s = setup();
    let mut w = s.writer(5);
    for i in 1..=12 {
        w.append(&event(i)).unwrap();
    }
    w.close().unwrap();
    // Open checkpoint 1, 2..6, checkpoint 7, 8..12, checkpoint 13, 14, 15, shutdown 16.
    let acts = actions(&s.path);
    assert_eq!(acts.len(), 16);
    for seq in [1, 7, 13, 16] {
        assert_eq!(acts[seq - 1], "checkpoint", "{acts:?}");
    }
    recompute_chain(&s.path);

    let report = s.verify();
    assert_eq!(report.damage, None);
    assert_eq!(report.checkpoints, 4);
    assert_eq!(report.signer.as_ref().unwrap().as_str(), CA_ID);
    assert_eq!(
        (report.last_checkpoint, report.unsigned_tail),
        (Some(16), 0)
    );
    assert!(report.signatures_checked);

    let unchecked = verify_log(&[&s.path], &VerifyOptions::new()).unwrap();
    assert_eq!(
        (unchecked.damage, unchecked.signatures_checked),
        (None, false)
    );

    // Reopening signs the head at once, so a later run's records never hang off a shutdown.
    let mut w = s.writer(5);
    w.append(&event(13)).unwrap();
    drop(w);
    assert_eq!(actions(&s.path)[16], "checkpoint");
    assert_eq!(s.verify().damage, None);
}

#[test]
fn each_kind_of_tampering_is_found_and_located_in_a_signed_log() {
    type Edit = fn(&mut Vec<String>);
    let cases: [(&str, Edit, u64, Damage); 5] = [
        (
            "edited",
            |l| l[3] = l[3].replace("workload/3", "workload/5"),
            4,
            Damage::Edited,
        ),
        ("deleted", |l| drop(l.remove(3)), 4, Damage::Deleted),
        ("reordered", |l| l.swap(2, 3), 3, Damage::Reordered),
        (
            "inserted",
            |l| l.insert(4, l[3].clone()),
            4,
            Damage::Inserted,
        ),
        (
            "checkpoint removed",
            |l| drop(l.remove(6)),
            7,
            Damage::Deleted,
        ),
    ];
    for (name, edit, seq, kind) in cases {
        let s = setup();
        let mut w = s.writer(5);
        for i in 1..=12 {
            w.append(&event(i)).unwrap();
        }
        w.close().unwrap();
        let mut all = lines(&s.path);
        edit(&mut all);
        write_lines(&s.path, &all);
        let damage = s
            .verify()
            .damage
            .unwrap_or_else(|| panic!("{name}: not found"));
        assert_eq!((damage.error.seq, damage.error.kind), (seq, kind), "{name}");
        assert_eq!(damage.file, s.path, "{name}");
    }
}

#[test]
fn a_checkpoint_with_a_bad_signature_is_forged_even_with_a_recomputed_chain() {
    let s = setup();
    let mut w = s.writer(5);
    for i in 1..=8 {
        w.append(&event(i)).unwrap();
    }
    w.close().unwrap();
    let mut all = lines(&s.path);
    // Flip one base64 character of the first checkpoint's signature, then rehash everything.
    let at = all[0].find("\"signature\":\"").unwrap() + 20;
    let flipped = if &all[0][at..=at] == "A" { "B" } else { "A" };
    all[0].replace_range(at..=at, flipped);
    rechain(&mut all, false);
    write_lines(&s.path, &all);

    // Without the bundle the structure holds: only signatures would show it.
    assert_eq!(
        verify_log(&[&s.path], &VerifyOptions::new())
            .unwrap()
            .damage,
        None
    );
    let damage = s.verify().damage.unwrap();
    assert_eq!((damage.error.seq, damage.error.line), (1, 1));
    assert_eq!(damage.error.kind, Damage::ForgedCheckpoint);
    assert_eq!(damage.checkpoint, Some(CheckpointFault::BadSignature));
}

#[test]
fn records_rewritten_after_a_checkpoint_break_the_next_signature() {
    let s = setup();
    let mut w = s.writer(5);
    for i in 1..=12 {
        w.append(&event(i)).unwrap();
    }
    w.close().unwrap();
    let mut all = lines(&s.path);
    all[7] = all[7].replace("workload/6", "workload/9");
    rechain(&mut all, false);
    write_lines(&s.path, &all);
    let damage = s.verify().damage.unwrap();
    assert_eq!(
        (damage.error.seq, damage.error.kind),
        (13, Damage::ForgedCheckpoint)
    );
    assert_eq!(damage.checkpoint, Some(CheckpointFault::BadSignature));
}

#[test]
fn a_checkpoint_from_another_trust_root_or_the_wrong_signer_is_forged() {
    // Another CA's root: the chain does not verify against the bundle given.
    let s = setup();
    let mut w = s.writer(3);
    for i in 1..=4 {
        w.append(&event(i)).unwrap();
    }
    w.close().unwrap();
    let other = Pki::new(TD, fixed_time());
    let roots = trust_roots_from_pem(&[other.root_pem.as_bytes()]).unwrap();
    let report = verify_log(&[&s.path], &VerifyOptions::new().with_bundles(roots)).unwrap();
    let damage = report.damage.unwrap();
    assert_eq!(
        (damage.error.seq, damage.error.kind),
        (1, Damage::ForgedCheckpoint)
    );
    assert!(
        matches!(damage.checkpoint, Some(CheckpointFault::Chain(_))),
        "{damage:?}"
    );
    // Both bundles (as across a root rotation): verifies.
    let both = trust_roots_from_pem(&[other.root_pem.as_bytes(), s.pki.root_pem.as_bytes()]);
    let report = verify_log(
        &[&s.path],
        &VerifyOptions::new().with_bundles(both.unwrap()),
    );
    assert_eq!(report.unwrap().damage, None);

    // A workload's SVID cannot sign the CA's log.
    let s = setup();
    *s.signer.0.lock().unwrap() = Some(s.pki.svid(
        "spiffe://example.org/ns/web",
        fixed_time() - Duration::minutes(5),
        Duration::hours(1),
    ));
    let mut w = s.writer(3);
    for i in 1..=4 {
        w.append(&event(i)).unwrap();
    }
    drop(w);
    let damage = s.verify().damage.unwrap();
    assert_eq!(
        (damage.error.seq, damage.error.kind),
        (1, Damage::ForgedCheckpoint)
    );
    assert!(
        matches!(damage.checkpoint, Some(CheckpointFault::WrongSigner { .. })),
        "{damage:?}"
    );
}

#[test]
fn an_expired_svid_signs_nothing_and_the_uncovered_tail_shows() {
    let s = setup();
    let mut w = s.writer(3);
    w.append(&event(1)).unwrap();
    // Three hours on, the SVID (two hours) has expired: no checkpoint is signed.
    s.offset.store(3 * 3600, Ordering::SeqCst);
    for i in 2..=6 {
        w.append(&event(i)).unwrap();
    }
    drop(w);
    assert_eq!(
        actions(&s.path)
            .iter()
            .filter(|a| *a == "checkpoint")
            .count(),
        1
    );
    let damage = s.verify().damage.unwrap();
    assert_eq!(
        (damage.error.seq, damage.error.kind),
        (2, Damage::TruncatedAfterCheckpoint)
    );
}

#[test]
fn records_cut_back_to_an_earlier_checkpoint_and_rewritten_are_truncated_after_it() {
    let s = setup();
    let mut w = s.writer(5);
    for i in 1..=20 {
        w.append(&event(i)).unwrap();
    }
    drop(w); // no shutdown checkpoint: as if still running
    // Drop every checkpoint after the first and renumber: the chain is whole again, and the
    // records after seq 1 outnumber the 5 the checkpoint promised.
    let mut all = lines(&s.path);
    let first_cp = all
        .iter()
        .position(|l| l.contains("\"checkpoint\""))
        .unwrap();
    let mut kept: Vec<String> = all.drain(..=first_cp).collect();
    kept.extend(all.into_iter().filter(|l| !l.contains("\"checkpoint\"")));
    rechain(&mut kept, true);
    write_lines(&s.path, &kept);
    let report = s.verify();
    let damage = report.damage.unwrap();
    assert_eq!(
        (damage.error.seq, damage.error.line, damage.error.kind),
        (2, 2, Damage::TruncatedAfterCheckpoint)
    );
    // Without the bundle only the chain is judged, and it holds.
    assert_eq!(
        verify_log(&[&s.path], &VerifyOptions::new())
            .unwrap()
            .damage,
        None
    );
}

#[test]
fn an_unsigned_tail_longer_than_the_promised_time_is_truncated_after_the_checkpoint() {
    let s = setup();
    let mut w = s.writer(1000);
    w.append(&event(1)).unwrap();
    s.offset.store(60, Ordering::SeqCst);
    w.append(&event(2)).unwrap(); // the interval has passed: a time checkpoint follows (seq 4)
    drop(w);
    assert_eq!(actions(&s.path)[3], "checkpoint");
    // Records appended later by a writer without a key, within the interval: fine.
    let mut u = s.unsigned_writer();
    u.append(&event(4)).unwrap();
    s.offset.store(100, Ordering::SeqCst);
    u.append(&event(5)).unwrap();
    drop(u);
    assert_eq!(s.verify().damage, None);
    assert_eq!(s.verify().unsigned_tail, 2);
    // Spanning longer than 60 s + 10 s + 10 %: a checkpoint was due and is missing.
    s.offset.store(180, Ordering::SeqCst);
    let mut u = s.unsigned_writer();
    u.append(&event(6)).unwrap();
    drop(u);
    let damage = s.verify().damage.unwrap();
    assert_eq!(
        (damage.error.seq, damage.error.kind),
        (5, Damage::TruncatedAfterCheckpoint)
    );
}

#[test]
fn records_after_a_clean_shutdown_are_unsigned_but_not_damage() {
    let s = setup();
    let mut w = s.writer(5);
    w.append(&event(1)).unwrap();
    w.close().unwrap();
    let mut u = s.unsigned_writer();
    for i in 2..=9 {
        s.offset
            .store(i64::try_from(i).unwrap() * 3600, Ordering::SeqCst);
        u.append(&event(i)).unwrap();
    }
    drop(u);
    let report = s.verify();
    assert_eq!(report.damage, None);
    assert_eq!((report.last_checkpoint, report.unsigned_tail), (Some(3), 8));
}

#[test]
fn an_idle_writer_signs_once_the_interval_has_passed() {
    let s = setup();
    let mut w = s.writer(1000);
    w.append(&event(1)).unwrap();
    w.sync().unwrap();
    w.checkpoint_if_due().unwrap();
    assert_eq!(actions(&s.path).len(), 2, "not due yet");
    s.offset.store(61, Ordering::SeqCst);
    w.checkpoint_if_due().unwrap();
    assert_eq!(actions(&s.path), ["checkpoint", "svid_issue", "checkpoint"]);
    // Nothing new since: nothing to sign.
    s.offset.store(200, Ordering::SeqCst);
    w.checkpoint_if_due().unwrap();
    assert_eq!(actions(&s.path).len(), 3);
    drop(w);
    assert_eq!(s.verify().damage, None);
}

#[test]
fn a_log_without_checkpoints_is_unsigned_only_with_a_bundle() {
    let s = setup();
    let mut u = s.unsigned_writer();
    u.append(&event(1)).unwrap();
    drop(u);
    assert_eq!(
        verify_log(&[&s.path], &VerifyOptions::new())
            .unwrap()
            .damage,
        None
    );
    let damage = s.verify().damage.unwrap();
    assert_eq!((damage.error.seq, damage.error.kind), (1, Damage::Unsigned));
}

#[test]
fn bundles_must_be_pem_roots_with_a_trust_domain() {
    assert!(trust_roots_from_pem(&[b"not pem"]).is_err());
    let s = setup();
    let leaf = s.pki.svid(CA_ID, fixed_time(), Duration::hours(1));
    let pem = meshgate_identity::bundle::pem_encode("CERTIFICATE", &leaf.cert[0]);
    let err = trust_roots_from_pem(&[pem.as_bytes()]).unwrap_err();
    assert!(err.to_string().contains("spiffe://<trust domain>"), "{err}");
}
