#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // test code
//! Crash recovery: a torn final line is cut off when the log is reopened, the cut is recorded,
//! and the chain goes on.

mod common;

use std::io::Write;
use std::path::Path;

use common::{event, lines, recompute_chain, write_log};
use meshgate_audit::{
    Action, AuditWriter, Component, Damage, Outcome, SYSTEM_ACTOR, read_records, verify_file,
};

fn append_raw(path: &Path, bytes: &[u8]) {
    let mut file = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    file.write_all(bytes).unwrap();
}

/// Reopens a log whose tail was damaged by `damage_tail`, and checks the recovery.
fn recovers(damage_tail: impl FnOnce(&Path), expected: Damage) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    write_log(&path, 10);
    let good_len = std::fs::metadata(&path).unwrap().len();
    damage_tail(&path);
    let damaged_len = std::fs::metadata(&path).unwrap().len();
    assert_eq!(
        verify_file(&path).unwrap_err().chain().unwrap().kind,
        expected
    );

    let (mut writer, report) = AuditWriter::open(&path, Component::Ca).unwrap();
    let recovery = report.recovered.unwrap();
    assert_eq!(recovery.damage, expected);
    assert_eq!(recovery.bytes_dropped, damaged_len - good_len);
    assert_eq!((recovery.last_good_seq, recovery.recorded_at), (10, 11));
    assert_eq!(report.records, 10);
    assert_eq!(writer.append(&event(12)).unwrap(), 12);
    writer.sync().unwrap();
    drop(writer);

    assert_eq!(verify_file(&path).unwrap().last_seq, 12);
    recompute_chain(&path);
    let recovered = read_records(&path).unwrap().nth(10).unwrap().unwrap();
    assert_eq!(recovered.event.action, Action::LogRecovered);
    assert_eq!(recovered.event.outcome, Outcome::Success);
    assert_eq!(recovered.event.actor, SYSTEM_ACTOR);
    assert_eq!(
        recovered.event.details["bytes_dropped"],
        damaged_len - good_len
    );
    assert_eq!(recovered.event.details["last_good_seq"], 10);
    assert_eq!(recovered.event.details["damage"], expected.code());
}

#[test]
fn half_a_line_without_newline_is_cut_off() {
    recovers(
        |path| {
            let line = lines(path)[3].clone();
            append_raw(path, &line.as_bytes()[..line.len() / 2]);
        },
        Damage::Truncated,
    );
}

#[test]
fn a_whole_record_missing_only_its_newline_is_cut_off() {
    recovers(
        |path| append_raw(path, next_record(path).as_bytes()),
        Damage::Truncated,
    );
}

/// The record the writer would append next to the log at `path`, without its newline.
fn next_record(path: &Path) -> String {
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("copy.jsonl");
    std::fs::copy(path, &copy).unwrap();
    let (mut writer, _) = AuditWriter::open(&copy, Component::Ca).unwrap();
    writer.append(&event(11)).unwrap();
    writer.sync().unwrap();
    drop(writer);
    lines(&copy).pop().unwrap()
}

#[test]
fn a_final_line_of_garbage_with_newline_is_cut_off() {
    recovers(
        |path| append_raw(path, b"{\"seq\":11,\"ti\xffme\n"),
        Damage::Malformed,
    );
}

#[test]
fn zeros_left_by_a_power_loss_are_cut_off() {
    recovers(|path| append_raw(path, &[0; 4096]), Damage::Truncated);
}

#[test]
fn a_final_record_whose_hash_does_not_match_is_cut_off() {
    recovers(
        |path| {
            let eleventh = next_record(path).replace("success", "failure");
            append_raw(path, format!("{eleventh}\n").as_bytes());
        },
        Damage::Edited,
    );
}

#[test]
fn an_empty_file_opens_as_an_empty_chain() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    std::fs::write(&path, b"").unwrap();
    let (writer, report) = AuditWriter::open(&path, Component::Gateway).unwrap();
    assert!(!report.created);
    assert_eq!((report.records, report.recovered), (0, None));
    assert_eq!(writer.last_seq(), 0);
    assert_eq!(verify_file(&path).unwrap().records, 0);
}

#[test]
fn a_lone_torn_first_line_leaves_a_chain_that_starts_with_the_recovery() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    std::fs::write(&path, b"{\"seq\":1,\"time\"").unwrap();
    let (writer, report) = AuditWriter::open(&path, Component::Ca).unwrap();
    let recovery = report.recovered.unwrap();
    assert_eq!(
        (
            recovery.last_good_seq,
            recovery.recorded_at,
            recovery.bytes_dropped
        ),
        (0, 1, 15)
    );
    drop(writer);
    assert_eq!(verify_file(&path).unwrap().last_seq, 1);
    recompute_chain(&path);
}

/// A device is not a log: opening one is refused at once, where reading /dev/zero "to its end"
/// would never return.
#[cfg(target_os = "linux")]
#[test]
fn a_path_that_is_not_a_regular_file_is_refused() {
    for path in ["/dev/zero", "/dev/full"] {
        let err = AuditWriter::open(path, Component::Ca).unwrap_err();
        let text = err.to_string();
        assert!(text.contains(path), "{text}");
        assert!(text.contains("not a regular file"), "{text}");
    }
    let dir = tempfile::tempdir().unwrap();
    let err = AuditWriter::open(dir.path(), Component::Ca).unwrap_err();
    assert!(
        err.to_string().contains(&dir.path().display().to_string()),
        "{err}"
    );
}
