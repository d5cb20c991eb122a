#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // test code
//! Signed checkpoints: a signed log verifies with the bundle alone; each kind of tampering is
//! found and located; a forged checkpoint and records cut off after the last checkpoint show;
//! a later key cannot re-sign history written before it; a running writer never signs a file
//! rewritten behind its back.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration as StdDuration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use common::pki::{Pki, TestSigner};
use common::{event, fixed_time, lines, recompute_chain, write_lines};
use meshgate_audit::{
    Action, AuditError, AuditEvent, AuditSink, AuditWriter, CheckpointFault, CheckpointPolicy,
    Component, Damage, LogOptions, LogReport, Outcome, VerifyOptions, trust_roots_from_pem,
    verify_log,
};
use meshgate_identity::SpiffeId;
use rustls::SignatureScheme;
use rustls::sign::CertifiedKey;
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

    /// The signer's SVID lives two days instead of two hours (for runs days apart).
    fn long_lived(&self) {
        *self.signer.0.lock().unwrap() = Some(self.pki.svid(
            CA_ID,
            fixed_time() - Duration::minutes(5),
            Duration::days(2),
        ));
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

/// A record time as the writer writes it.
fn stamp(t: OffsetDateTime) -> String {
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.microsecond()
    )
}

/// Sets a line's `time`.
fn set_time(line: &mut String, t: OffsetDateTime) {
    let at = line.find("\"time\":\"").unwrap() + 8;
    line.replace_range(at..at + 27, &stamp(t));
}

/// What someone holding `key` (an SVID of the log's signer) does after rewriting the lines:
/// renumbers and rechains them, and replaces every checkpoint from seq `from` on by one it
/// signs itself, at the time the checkpoint line holds.
fn forge(lines: &mut [String], key: &CertifiedKey, from: usize) {
    let signer = key
        .key
        .choose_scheme(&[SignatureScheme::ECDSA_NISTP256_SHA256])
        .unwrap();
    let certs: Vec<String> = key.cert.iter().map(|c| STANDARD.encode(c)).collect();
    let certs = serde_json::to_string(&certs).unwrap();
    let mut prev = "0".repeat(64);
    for (i, line) in lines.iter_mut().enumerate() {
        let seq = i + 1;
        let value: serde_json::Value = serde_json::from_str(line).unwrap();
        let mut text = if seq >= from && value["action"] == "checkpoint" {
            let time = value["time"].as_str().unwrap();
            let d = &value["details"];
            let (records, seconds) = (&d["every_records"], &d["every_seconds"]);
            let trigger = d["trigger"].as_str().unwrap();
            let message = format!(
                "meshgate-audit-checkpoint-v1\ncomponent=ca\nsigner={CA_ID}\ntime={time}\nhead_seq={}\nhead_hash={prev}\nevery_records={records}\nevery_seconds={seconds}\ntrigger={trigger}\n",
                seq - 1
            );
            let signature = STANDARD.encode(signer.sign(message.as_bytes()).unwrap());
            format!(
                "{{\"seq\":{seq},\"time\":\"{time}\",\"component\":\"ca\",\"actor\":\"{CA_ID}\",\"action\":\"checkpoint\",\"subject\":\"chain\",\"outcome\":\"success\",\"reason\":null,\"source\":null,\"request_id\":null,\"trust_domain\":\"{TD}\",\"details\":{{\"alg\":\"ecdsa_p256_sha256\",\"certs\":{certs},\"every_records\":{records},\"every_seconds\":{seconds},\"head_hash\":\"{prev}\",\"head_seq\":{},\"signature\":\"{signature}\",\"trigger\":\"{trigger}\",\"version\":1}},\"prev\":\"{prev}\"",
                seq - 1
            )
        } else {
            let mut text = line[..line.rfind(",\"hash\":\"").unwrap()].to_owned();
            let at = text.rfind(",\"prev\":\"").unwrap() + 9;
            text.replace_range(at..at + 64, &prev);
            if let Some(at) = text.find("\"head_hash\":\"") {
                text.replace_range(at + 13..at + 13 + 64, &prev);
            }
            let end = text.find(',').unwrap();
            text.replace_range(..end, &format!("{{\"seq\":{seq}"));
            text
        };
        text.push('}');
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(prev.as_bytes());
        ctx.update(text.as_bytes());
        let hash = hex::encode(ctx.finish());
        text.pop();
        *line = format!("{text},\"hash\":\"{hash}\"}}");
        prev = hash;
    }
}

/// A genuine run: 40 records, 10 s apart, a checkpoint every 5; returns the lines.
fn genuine_run(s: &Setup) -> Vec<String> {
    let mut w = s.writer(5);
    for i in 1..=40 {
        s.offset.store(i as i64 * 10, Ordering::SeqCst);
        w.append(&event(i)).unwrap();
    }
    w.close().unwrap();
    assert_eq!(s.verify().damage, None);
    lines(&s.path)
}

/// An SVID of the CA's identity from 30 days after the genuine run, valid an hour.
fn later_key(s: &Setup) -> Arc<CertifiedKey> {
    let later = fixed_time() + Duration::days(30);
    s.pki
        .svid(CA_ID, later - Duration::minutes(1), Duration::hours(1))
}

#[test]
fn one_later_key_cannot_re_sign_all_history_with_one_checkpoint() {
    let s = setup();
    genuine_run(&s);
    // 30 days later the attacker holds only the key of a later SVID B (same identity).
    let b = later_key(&s);
    // Rewrite history: edit record 3's subject, drop every checkpoint, renumber, rechain.
    let mut ls: Vec<String> = lines(&s.path)
        .into_iter()
        .filter(|l| !l.contains("\"action\":\"checkpoint\""))
        .collect();
    ls[2] = ls[2].replace("workload/3\"", "workload/HIDDEN\"");
    rechain(&mut ls, true);
    write_lines(&s.path, &ls);
    // Re-sign with B: one checkpoint at the end, dated inside B's lifetime.
    s.offset.store(30 * 86400, Ordering::SeqCst);
    let opts = LogOptions::new().signed(
        TestSigner::with(b),
        CheckpointPolicy::new(5, StdDuration::from_secs(60)),
    );
    let (w, _) = AuditWriter::open_with(&s.path, Component::Ca, clock(&s.offset), opts).unwrap();
    drop(w);
    // Its `open` checkpoint covers 40 records that no offline writer wrote: the CA's own
    // records before the log's first checkpoint are a gap in the signing.
    let damage = s.verify().damage.unwrap();
    assert_eq!(
        (damage.error.seq, damage.error.line, damage.error.kind),
        (1, 1, Damage::CheckpointGap)
    );
}

#[test]
fn one_later_key_cannot_re_sign_history_at_the_promised_cadence() {
    let s = setup();
    let genuine = genuine_run(&s);
    let b = later_key(&s);
    let later = fixed_time() + Duration::days(30);
    // Edit record 3 (seq 4) and re-sign every checkpoint from the one after it (seq 7) with B,
    // each at the promised cadence and dated inside B's lifetime: every signature verifies.
    let mut ls = genuine.clone();
    ls[3] = ls[3].replace("workload/3\"", "workload/HIDDEN\"");
    for (i, line) in ls.iter_mut().enumerate().skip(6) {
        if line.contains("\"action\":\"checkpoint\"") {
            set_time(line, later + Duration::seconds(i as i64));
        }
    }
    forge(&mut ls, &b, 7);
    write_lines(&s.path, &ls);
    let report = s.verify();
    // The checkpoint at seq 7 signs records written 30 days before it.
    let damage = report.damage.unwrap();
    assert_eq!(
        (damage.error.seq, damage.error.kind),
        (2, Damage::CheckpointGap),
        "{damage:?}"
    );
    assert_eq!(
        report.checkpoints, 1,
        "only the genuine open checkpoint passed"
    );

    // Records dated back before the checkpoints that now precede them do not help either.
    let mut ls = genuine.clone();
    ls[3] = ls[3].replace("workload/3\"", "workload/HIDDEN\"");
    for (i, line) in ls.iter_mut().enumerate().skip(1) {
        if line.contains("\"action\":\"checkpoint\"") {
            set_time(line, later + Duration::seconds(i as i64));
        }
    }
    // ... its records after a forged checkpoint dated on day 30 are dated on day 0.
    forge(&mut ls, &b, 2);
    write_lines(&s.path, &ls);
    let damage = s.verify().damage.unwrap();
    assert_eq!(
        (damage.error.seq, damage.error.kind),
        (2, Damage::CheckpointGap)
    );

    // Nor does one checkpoint after no `open` one that promises the longest interval.
    let mut ls: Vec<String> = genuine
        .iter()
        .filter(|l| !l.contains("\"action\":\"checkpoint\""))
        .cloned()
        .collect();
    ls[2] = ls[2].replace("workload/3\"", "workload/HIDDEN\"");
    let mut last = genuine[genuine.len() - 1]
        .replace("\"every_seconds\":60", "\"every_seconds\":3600")
        .replace("\"trigger\":\"shutdown\"", "\"trigger\":\"time\"");
    set_time(&mut last, later);
    ls.push(last);
    forge(&mut ls, &b, 1);
    write_lines(&s.path, &ls);
    let damage = s.verify().damage.unwrap();
    assert_eq!(
        (damage.error.seq, damage.error.kind),
        (1, Damage::CheckpointGap)
    );
    // A longer promise than an hour is not a checkpoint the writer makes.
    let n = ls.len();
    ls[n - 1] = ls[n - 1].replace("\"every_seconds\":3600", "\"every_seconds\":86400");
    forge(&mut ls, &b, 1);
    write_lines(&s.path, &ls);
    let damage = s.verify().damage.unwrap();
    assert_eq!(
        (damage.error.seq, damage.error.kind),
        (n as u64, Damage::ForgedCheckpoint)
    );
    assert!(
        matches!(damage.checkpoint, Some(CheckpointFault::Malformed(_))),
        "{damage:?}"
    );

    // What B can still do (docs/audit.md, "What a stolen key can do"): cut the log back to a
    // genuine checkpoint and go on from there inside its own lifetime. Here the records after
    // the open checkpoint are rewritten, and dated 30 days later: the history they held is
    // gone without a trace in the log; only a head noted elsewhere shows it.
    let mut ls = genuine.clone();
    ls[3] = ls[3].replace("workload/3\"", "workload/HIDDEN\"");
    for (i, line) in ls.iter_mut().enumerate().skip(1) {
        set_time(line, later + Duration::seconds(i as i64));
    }
    forge(&mut ls, &b, 2);
    write_lines(&s.path, &ls);
    assert_eq!(s.verify().damage, None);
}

#[test]
fn a_running_writer_refuses_a_file_cut_back_and_rewritten_without_a_key() {
    // The file ends up shorter than the writer left it, or (more fabricated records) longer.
    for longer in [false, true] {
        let s = setup();
        let mut w = s.writer(5);
        for i in 1..=20 {
            w.append(&event(i)).unwrap();
        }
        w.sync().unwrap();
        let before = lines(&s.path);
        let first_cp = 7; // open cp at 1, records 2..6, cp at 7
        assert!(before[first_cp - 1].contains("\"action\":\"checkpoint\""));
        // No key: cut back to the first checkpoint (dropping later *signed* records and
        // checkpoints) and append a fabricated record, chained correctly.
        let mut ls: Vec<String> = before[..first_cp].to_vec();
        ls.push(before[1].replace("workload/1\"", "workload/FABRICATED\""));
        while longer && ls.len() < before.len() + 3 {
            ls.push(before[2].clone());
        }
        rechain(&mut ls, true);
        write_lines(&s.path, &ls);
        let forged = lines(&s.path);
        // The writer stops rather than go on from (and sign) a head it did not write.
        let err = w.append(&event(99)).unwrap_err();
        assert!(
            matches!(err, AuditError::Chain { .. }),
            "longer {longer}: {err}"
        );
        assert!(w.failure().is_some());
        assert!(matches!(
            w.append(&event(100)),
            Err(AuditError::Failed { .. })
        ));
        assert!(w.checkpoint_if_due().is_err());
        assert!(w.close().is_err());
        // Nothing was written: no checkpoint covers the fabricated records.
        assert_eq!(lines(&s.path), forged, "longer {longer}");
        assert_eq!(s.verify().last_checkpoint, Some(first_cp as u64));
    }
}

#[test]
fn a_running_writer_refuses_a_rewrite_that_keeps_the_length_and_appends() {
    // The file is rewritten in place (same length: the writer cannot tell yet), then a record
    // that continues the rewritten chain is appended: the writer's last record is not where it
    // was any more.
    let s = setup();
    let mut w = s.writer(5);
    for i in 1..=8 {
        w.append(&event(i)).unwrap();
    }
    w.sync().unwrap();
    let mut ls = lines(&s.path);
    let n = ls.len();
    ls[n - 1] = ls[n - 1].replace("workload/8\"", "workload/X\"");
    rechain(&mut ls, false);
    ls.push(ls[n - 1].clone());
    rechain(&mut ls, true);
    write_lines(&s.path, &ls);
    let err = w.append(&event(9)).unwrap_err();
    assert_eq!(err.chain().unwrap().kind, Damage::Edited, "{err}");
    assert!(w.failure().is_some());
}

#[test]
fn a_signed_sink_stops_when_its_file_is_rewritten() {
    let s = setup();
    let sink = AuditSink::spawn(s.writer(5), 16).unwrap();
    for i in 1..=8 {
        sink.record_durable(event(i)).unwrap();
    }
    let before = lines(&s.path);
    let mut ls: Vec<String> = before[..7].to_vec();
    ls.push(before[1].replace("workload/1\"", "workload/FABRICATED\""));
    rechain(&mut ls, true);
    write_lines(&s.path, &ls);
    // A durable write fails (the CA refuses to hand out the certificate), and so does every
    // later call: the sink stopped, as after a failed write.
    assert!(sink.record_durable(event(9)).is_err());
    assert!(matches!(
        sink.record(event(10)),
        Err(AuditError::Failed { .. })
    ));
    assert!(sink.shutdown().is_err());
    assert!(
        !lines(&s.path)
            .last()
            .unwrap()
            .contains("\"action\":\"checkpoint\"")
    );
}

#[test]
fn records_another_process_appends_are_read_on_from_where_the_writer_left_off() {
    let s = setup();
    let mut w = s.writer(1000);
    w.append(&event(1)).unwrap();
    w.sync().unwrap();
    let mut other = s.unsigned_writer();
    other.append(&event(2)).unwrap();
    other.sync().unwrap();
    w.append(&event(3)).unwrap();
    w.sync().unwrap();
    other.append(&event(4)).unwrap();
    drop(other);
    w.close().unwrap();
    assert_eq!(
        actions(&s.path),
        [
            "checkpoint",
            "svid_issue",
            "svid_issue",
            "svid_issue",
            "svid_issue",
            "checkpoint"
        ]
    );
    recompute_chain(&s.path);
    assert_eq!(s.verify().damage, None);
}

/// An event of the offline CLI (`ca token create`).
fn cli_event(i: u64) -> AuditEvent {
    AuditEvent::new(
        Component::Cli,
        "operator:alice",
        Action::TokenCreate,
        format!("spiffe://example.org/workload/{i}"),
        Outcome::Success,
    )
    .with_trust_domain(TD)
}

#[test]
fn offline_cli_records_are_covered_by_the_next_open_checkpoint_and_nothing_else_is() {
    let s = setup();
    s.long_lived();
    // `ca init` and `ca token create` before `ca serve` first starts, then after it stopped.
    let mut u = s.unsigned_writer();
    for i in 1..=3 {
        s.offset.store(i * 3600, Ordering::SeqCst);
        u.append(&cli_event(i as u64)).unwrap();
    }
    drop(u);
    let mut w = s.writer(5);
    w.append(&event(1)).unwrap();
    w.close().unwrap();
    let mut u = s.unsigned_writer();
    for i in 4..=10 {
        s.offset.store(i * 3600, Ordering::SeqCst);
        u.append(&cli_event(i as u64)).unwrap();
    }
    drop(u);
    let mut w = s.writer(5);
    w.append(&event(2)).unwrap();
    w.close().unwrap();
    let report = s.verify();
    assert_eq!(report.damage, None);
    assert_eq!(report.offline_records, 10);

    // A record only the CA itself writes (not the CLI), where no CA ran: the next `open`
    // checkpoint signs it, but no promise covers it.
    let mut u = s.unsigned_writer();
    u.append(&event(3)).unwrap();
    let odd = u.last_seq();
    drop(u);
    drop(s.writer(5));
    let damage = s.verify().damage.unwrap();
    assert_eq!(
        (damage.error.seq, damage.error.kind),
        (odd, Damage::CheckpointGap)
    );
}

#[test]
fn after_a_crash_the_unsigned_records_within_the_promise_and_offline_ones_are_covered() {
    let s = setup();
    s.long_lived();
    let mut w = s.writer(5);
    for i in 1..=3 {
        w.append(&event(i)).unwrap();
    }
    drop(w); // a crash: no shutdown checkpoint; records 2..4 are signed by nobody yet
    let mut u = s.unsigned_writer();
    s.offset.store(7200, Ordering::SeqCst);
    u.append(&cli_event(4)).unwrap();
    drop(u);
    s.offset.store(86400, Ordering::SeqCst);
    let mut w = s.writer(5);
    w.append(&event(5)).unwrap();
    w.close().unwrap();
    let report = s.verify();
    assert_eq!(report.damage, None);
    assert_eq!(report.offline_records, 1);

    // A crash tail longer than the promise: the writer would have signed it.
    let s = setup();
    let mut w = s.writer(5);
    w.append(&event(1)).unwrap();
    drop(w);
    let mut u = s.unsigned_writer();
    for i in 2..=7 {
        u.append(&event(i)).unwrap();
    }
    drop(u);
    drop(s.writer(5));
    // Records 2..6 may be the crashed writer's; 7 cannot be.
    let damage = s.verify().damage.unwrap();
    assert_eq!(
        (damage.error.seq, damage.error.kind),
        (7, Damage::CheckpointGap)
    );
}

#[test]
fn records_a_checkpoint_signs_long_after_they_were_written_are_a_gap_for_good() {
    // The SVID expires and a renewed one signs the records hours later: the tail showed it,
    // and so does the log once the renewed key has signed them.
    let s = setup();
    let mut w = s.writer(3);
    w.append(&event(1)).unwrap();
    s.offset.store(3 * 3600, Ordering::SeqCst);
    w.append(&event(2)).unwrap();
    *s.signer.0.lock().unwrap() = Some(s.pki.svid(
        CA_ID,
        fixed_time() + Duration::hours(3) - Duration::minutes(1),
        Duration::hours(1),
    ));
    // (After a failed attempt the writer tries again a second later.)
    s.offset.store(3 * 3600 + 5, Ordering::SeqCst);
    w.append(&event(3)).unwrap();
    w.close().unwrap();
    let damage = s.verify().damage.unwrap();
    assert_eq!(
        (damage.error.seq, damage.error.kind),
        (2, Damage::CheckpointGap)
    );
}

#[test]
fn a_record_dated_before_an_earlier_checkpoint_is_time_reversed() {
    let s = setup();
    s.offset.store(3600, Ordering::SeqCst);
    let mut w = s.writer(5);
    w.append(&event(1)).unwrap();
    // A clock step back within the tolerance is no damage ...
    s.offset.store(3600 - 200, Ordering::SeqCst);
    w.append(&event(2)).unwrap();
    w.sync().unwrap();
    assert_eq!(s.verify().damage, None);
    // ... one of more than five minutes is.
    s.offset.store(0, Ordering::SeqCst);
    w.append(&event(3)).unwrap();
    drop(w);
    let damage = s.verify().damage.unwrap();
    assert_eq!(
        (damage.error.seq, damage.error.kind),
        (4, Damage::TimeReversed)
    );
}

#[test]
fn an_auditor_can_pin_the_expected_signer() {
    let s = setup();
    let mut w = s.writer(5);
    w.append(&event(1)).unwrap();
    w.close().unwrap();
    let expected = SpiffeId::parse(CA_ID).unwrap();
    let report = verify_log(&[&s.path], &s.bundle().expect_signer(expected)).unwrap();
    assert_eq!(report.damage, None);
    let other = SpiffeId::parse("spiffe://example.org/meshgate/other").unwrap();
    let damage = verify_log(&[&s.path], &s.bundle().expect_signer(other))
        .unwrap()
        .damage
        .unwrap();
    assert_eq!(
        (damage.error.seq, damage.error.kind),
        (1, Damage::UnexpectedSigner)
    );
    assert!(
        matches!(
            damage.checkpoint,
            Some(CheckpointFault::UnexpectedSigner { .. })
        ),
        "{damage:?}"
    );
}

#[test]
fn a_torn_line_another_process_left_is_refused_until_the_next_open_repairs_it() {
    let s = setup();
    let mut w = s.writer(1000);
    w.append(&event(1)).unwrap();
    w.sync().unwrap();
    // Another writer crashed half way through a line.
    let half = lines(&s.path)[1].clone();
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&s.path)
        .unwrap();
    std::io::Write::write_all(&mut file, &half.as_bytes()[..half.len() / 2]).unwrap();
    drop(file);
    let err = w.append(&event(2)).unwrap_err();
    assert_eq!(err.chain().unwrap().kind, Damage::Truncated, "{err}");
    assert!(w.failure().is_none(), "a crash is not tampering");
    // The next writer to open the log (the CLI) cuts it off and records that; ours goes on.
    let mut u = s.unsigned_writer();
    u.append(&cli_event(3)).unwrap();
    drop(u);
    w.append(&event(4)).unwrap();
    w.close().unwrap();
    assert_eq!(
        actions(&s.path),
        [
            "checkpoint",
            "svid_issue",
            "log_recovered",
            "token_create",
            "svid_issue",
            "checkpoint"
        ]
    );
    assert_eq!(s.verify().damage, None);
}

#[test]
fn a_writer_that_opens_without_a_key_keeps_the_promise_of_its_first_checkpoint() {
    for (arrives, gap) in [(30, false), (3600, true)] {
        let s = setup();
        let key = s.signer.0.lock().unwrap().take(); // no SVID yet
        let mut u = s.unsigned_writer();
        u.append(&cli_event(1)).unwrap();
        drop(u);
        let mut w = s.writer(5); // no `open` checkpoint: nothing to sign with
        w.append(&event(1)).unwrap();
        s.offset.store(arrives, Ordering::SeqCst);
        *s.signer.0.lock().unwrap() = key;
        for i in 2..=5 {
            w.append(&event(i)).unwrap();
        }
        w.close().unwrap();
        let acts = actions(&s.path);
        assert_eq!(acts[0..3], ["token_create", "svid_issue", "svid_issue"]);
        assert!(acts[3..].contains(&"checkpoint".to_owned()), "{acts:?}");
        let report = s.verify();
        if gap {
            let damage = report.damage.unwrap();
            assert_eq!(
                (damage.error.seq, damage.error.kind),
                (2, Damage::CheckpointGap)
            );
        } else {
            assert_eq!(report.damage, None);
            assert_eq!(report.offline_records, 1);
        }
    }
}
