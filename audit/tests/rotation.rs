#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // test code
//! Rotation: files rotate by size or age, the chain goes on across files, a missing file shows
//! as deleted records, and a writer in another process follows a rotation.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration as StdDuration;

use common::event;
use common::fixed_time;
use common::pki::{Pki, TestSigner};
use meshgate_audit::{
    AuditError, AuditSink, AuditWriter, CheckpointPolicy, Component, Damage, LogOptions, Rotation,
    VerifyOptions, group_files, trust_roots_from_pem, verify_log,
};
use time::Duration;

const CA_ID: &str = "spiffe://example.org/meshgate/ca";

struct Log {
    dir: tempfile::TempDir,
    path: PathBuf,
    pki: Pki,
    signer: Arc<TestSigner>,
    offset: Arc<AtomicI64>,
}

fn log() -> Log {
    let pki = Pki::new("example.org", fixed_time());
    let signer = TestSigner::with(pki.svid(CA_ID, fixed_time(), Duration::hours(3)));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    Log {
        dir,
        path,
        pki,
        signer,
        offset: Arc::new(AtomicI64::new(60)),
    }
}

impl Log {
    fn writer(&self, rotation: Rotation) -> AuditWriter {
        let offset = Arc::clone(&self.offset);
        let clock = move || fixed_time() + Duration::seconds(offset.load(Ordering::SeqCst));
        let options = LogOptions::new()
            .signed(
                self.signer.clone(),
                CheckpointPolicy::new(10, StdDuration::from_secs(60)),
            )
            .rotation(rotation);
        AuditWriter::open_with(&self.path, Component::Ca, clock, options)
            .unwrap()
            .0
    }

    /// Every file of the log, in chain order.
    fn files(&self) -> Vec<PathBuf> {
        let mut all: Vec<PathBuf> = std::fs::read_dir(self.dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        all.sort();
        let groups = group_files(&all);
        assert_eq!(groups.len(), 1, "{groups:?}");
        groups.into_iter().next().unwrap().files
    }

    fn verify(&self, files: &[PathBuf]) -> meshgate_audit::LogReport {
        let roots = trust_roots_from_pem(&[self.pki.root_pem.as_bytes()]).unwrap();
        verify_log(files, &VerifyOptions::new().with_bundles(roots)).unwrap()
    }
}

fn last_line(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap();
    serde_json::from_str(text.lines().last().unwrap()).unwrap()
}

fn bytes(n: u64) -> Rotation {
    Rotation {
        max_bytes: Some(n),
        max_age: None,
    }
}

#[test]
fn files_rotate_by_size_and_the_chain_goes_on_across_them() {
    let log = log();
    let mut w = log.writer(bytes(6000));
    for i in 1..=60 {
        w.append(&event(i)).unwrap();
    }
    w.close().unwrap();
    let files = log.files();
    assert!(files.len() >= 3, "{files:?}");
    for rotated in &files[..files.len() - 1] {
        let last = last_line(rotated);
        assert_eq!(last["action"], "checkpoint", "{}", rotated.display());
        assert_eq!(last["details"]["trigger"], "rotation");
        // Named by its first seq.
        let first: serde_json::Value = serde_json::from_str(
            std::fs::read_to_string(rotated)
                .unwrap()
                .lines()
                .next()
                .unwrap(),
        )
        .unwrap();
        assert_eq!(
            rotated,
            &meshgate_audit::rotated_name(&log.path, first["seq"].as_u64().unwrap())
        );
    }
    let report = log.verify(&files);
    assert_eq!(report.damage, None);
    assert_eq!(report.chain.first_seq, 1);
    assert!(report.chain.records > 60);

    // A reopened writer goes on in the active file.
    let before = report.chain.last_seq;
    let mut w = log.writer(bytes(6000));
    w.append(&event(61)).unwrap();
    w.close().unwrap();
    let report = log.verify(&log.files());
    assert_eq!(report.damage, None);
    assert!(report.chain.last_seq > before);

    // Without its first file the log does not start the chain; without a middle file, records
    // are missing from that file's first seq.
    let files = log.files();
    let damage = log.verify(&files[1..]).damage.unwrap();
    assert_eq!((damage.error.seq, damage.error.kind), (1, Damage::Deleted));
    let mut gap = files.clone();
    let missing = gap.remove(1);
    let first_missing: serde_json::Value = serde_json::from_str(
        std::fs::read_to_string(&missing)
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    let damage = log.verify(&gap).damage.unwrap();
    assert_eq!(
        (damage.error.seq, damage.error.kind),
        (first_missing["seq"].as_u64().unwrap(), Damage::Deleted)
    );
    assert_eq!(damage.file, files[2]);
}

#[test]
fn files_rotate_by_age() {
    let log = log();
    let rotation = Rotation {
        max_bytes: None,
        max_age: Some(StdDuration::from_secs(3600)),
    };
    let mut w = log.writer(rotation);
    w.append(&event(1)).unwrap();
    // The interval (60 s) passes: the sink's writer thread would sign within about a second.
    log.offset.store(121, Ordering::SeqCst);
    w.checkpoint_if_due().unwrap();
    log.offset.store(1800, Ordering::SeqCst);
    w.append(&event(2)).unwrap();
    assert_eq!(log.files().len(), 1);
    log.offset.store(3700, Ordering::SeqCst);
    w.append(&event(3)).unwrap();
    w.close().unwrap();
    assert_eq!(log.files().len(), 2);
    assert_eq!(log.verify(&log.files()).damage, None);
}

#[test]
fn a_writer_that_crashed_between_rename_and_create_goes_on_from_the_rotated_file() {
    let log = log();
    let mut w = log.writer(Rotation::never());
    for i in 1..=5 {
        w.append(&event(i)).unwrap();
    }
    drop(w);
    std::fs::rename(&log.path, meshgate_audit::rotated_name(&log.path, 1)).unwrap();
    let mut w = log.writer(Rotation::never());
    w.append(&event(6)).unwrap();
    w.close().unwrap();
    let report = log.verify(&log.files());
    assert_eq!(report.damage, None);
    assert_eq!(log.files().len(), 2);
}

#[test]
fn a_writer_in_another_process_follows_a_rotation() {
    // Two writers on one path hold separate open files, as two processes do (on one host: one
    // clock).
    let log = log();
    let mut rotating = log.writer(bytes(5000));
    let offset = Arc::clone(&log.offset);
    let clock = move || fixed_time() + Duration::seconds(offset.load(Ordering::SeqCst));
    let (mut cli, _) = AuditWriter::open_with_clock(&log.path, Component::Ca, clock).unwrap();
    for i in 1..=40 {
        rotating.append(&event(i)).unwrap();
        rotating.sync().unwrap();
        if i % 3 == 0 {
            cli.append(&event(1000 + i)).unwrap();
            cli.sync().unwrap();
        }
    }
    drop(cli);
    rotating.close().unwrap();
    let files = log.files();
    assert!(files.len() >= 3, "{files:?}");
    let report = log.verify(&files);
    assert_eq!(report.damage, None);
    let cli_records = files
        .iter()
        .flat_map(|f| {
            std::fs::read_to_string(f)
                .unwrap()
                .lines()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .filter(|l| l.contains("workload/10") && !l.contains("workload/10\""))
        .count();
    assert_eq!(cli_records, 13);
}

#[test]
fn a_signed_sink_checkpoints_while_idle_and_at_shutdown() {
    let log = log();
    let sink = AuditSink::spawn(log.writer(Rotation::never()), 16).unwrap();
    sink.record(event(1)).unwrap();
    sink.flush().unwrap();
    // The interval passes; the writer thread, idle, signs within about a second.
    log.offset.store(125, Ordering::SeqCst);
    let deadline = std::time::Instant::now() + StdDuration::from_secs(20);
    while last_line(&log.path)["action"] != "checkpoint" {
        assert!(
            std::time::Instant::now() < deadline,
            "no checkpoint while idle"
        );
        std::thread::sleep(StdDuration::from_millis(50));
    }
    assert_eq!(last_line(&log.path)["details"]["trigger"], "time");
    sink.record(event(2)).unwrap();
    sink.shutdown().unwrap();
    assert_eq!(last_line(&log.path)["details"]["trigger"], "shutdown");
    assert_eq!(log.verify(&log.files()).damage, None);
}

#[test]
fn export_reads_a_rotated_log_as_one_log() {
    let log = log();
    let mut w = log.writer(bytes(6000));
    for i in 1..=40 {
        w.append(&event(i)).unwrap();
    }
    w.close().unwrap();
    let mut files = log.files();
    assert!(files.len() >= 2);
    files.reverse();
    let mut out = Vec::new();
    let options = meshgate_audit::ExportOptions::new(meshgate_audit::ExportFormat::Jsonl);
    let report = meshgate_audit::export(&files, &options, &mut out, Path::new("out")).unwrap();
    let total = log.verify(&log.files()).chain.records;
    assert_eq!(report.inputs.len(), 1);
    let input = &report.inputs[0];
    assert_eq!((&input.path, input.damage), (&log.path, None));
    assert_eq!((input.records, report.exported), (total, total));
    assert!(input.exported.contiguous);
    assert_eq!(out.iter().filter(|b| **b == b'\n').count() as u64, total);
}

#[test]
fn a_writer_does_not_follow_into_a_file_that_does_not_continue_its_chain() {
    let log = log();
    let mut w = log.writer(Rotation::never());
    for i in 1..=3 {
        w.append(&event(i)).unwrap();
    }
    w.sync().unwrap();
    // Someone moves the file away as a rotation would, and puts a file that starts another
    // chain in its place.
    let rotated = meshgate_audit::rotated_name(&log.path, 1);
    std::fs::rename(&log.path, &rotated).unwrap();
    let text = std::fs::read_to_string(&rotated).unwrap();
    let other: String = text.lines().take(2).map(|l| format!("{l}\n")).collect();
    std::fs::write(&log.path, &other).unwrap();
    let err = w.append(&event(4)).unwrap_err();
    assert!(matches!(err, AuditError::Chain { .. }), "{err}");
    assert!(w.failure().is_some());
    assert!(w.close().is_err());
    assert_eq!(std::fs::read_to_string(&log.path).unwrap(), other);
}

#[test]
fn a_log_whose_active_file_does_not_go_on_from_the_rotated_one_is_not_opened() {
    let log = log();
    let mut w = log.writer(bytes(6000));
    for i in 1..=30 {
        w.append(&event(i)).unwrap();
    }
    w.close().unwrap();
    let files = log.files();
    assert!(files.len() >= 2, "{files:?}");
    // The newest rotated file loses its last record (its rotation checkpoint).
    let newest = &files[files.len() - 2];
    let text = std::fs::read_to_string(newest).unwrap();
    let kept: Vec<&str> = text.lines().collect();
    let last_seq = last_line(newest)["seq"].as_u64().unwrap();
    let cut: String = kept[..kept.len() - 1]
        .iter()
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(newest, cut).unwrap();
    let options = LogOptions::new().signed(
        log.signer.clone(),
        CheckpointPolicy::new(10, StdDuration::from_secs(60)),
    );
    let err = AuditWriter::open_with(&log.path, Component::Ca, fixed_time, options).unwrap_err();
    let chain = err.chain().copied().unwrap();
    assert_eq!(
        (chain.seq, chain.kind),
        (last_seq, Damage::Deleted),
        "{err}"
    );
}
