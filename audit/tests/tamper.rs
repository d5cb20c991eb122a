#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // test code
//! Tampering: an edited, deleted, reordered or inserted record before the end of the log is
//! named by seq and kind, and `open` refuses to touch the file (records missing before a
//! file's first record are verify's finding, not the writer's).

mod common;

use std::path::{Path, PathBuf};

use common::{lines, write_lines, write_log};
use meshgate_audit::{AuditError, AuditWriter, ChainError, Component, Damage, verify_file};

/// A 10-record log with `edit` applied to its lines.
fn tampered(edit: impl FnOnce(&mut Vec<String>)) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    write_log(&path, 10);
    let mut all = lines(&path);
    edit(&mut all);
    write_lines(&path, &all);
    (dir, path)
}

/// Both `verify_file` and `open` report `expected`, and `open` leaves the file alone.
fn refused(path: &Path, expected: ChainError) {
    assert_eq!(verify_file(path).unwrap_err().chain(), Some(&expected));
    let before = std::fs::read(path).unwrap();
    let err = AuditWriter::open(path, Component::Ca).unwrap_err();
    assert!(matches!(err, AuditError::Chain { .. }), "{err}");
    assert_eq!(err.chain(), Some(&expected));
    assert!(
        err.to_string().contains(&format!("seq {}", expected.seq)),
        "{err}"
    );
    assert_eq!(
        std::fs::read(path).unwrap(),
        before,
        "open must not repair tampering"
    );
}

#[test]
fn an_edited_field_is_named_edited_at_its_seq() {
    let (_dir, path) = tampered(|l| l[4] = l[4].replace("workload/5", "workload/6"));
    refused(
        &path,
        ChainError {
            seq: 5,
            line: 5,
            kind: Damage::Edited,
        },
    );
}

#[test]
fn an_edited_record_with_a_recomputed_hash_breaks_the_next_link() {
    // Rewrite record 5 and its own hash correctly: the next record still names the old hash.
    let (_dir, path) = tampered(|l| {
        let edited = l[4].replace("workload/5", "workload/6");
        let cut = edited.rfind(",\"hash\":\"").unwrap();
        let canonical = format!("{}}}", &edited[..cut]);
        let prev: serde_json::Value = serde_json::from_str(&l[3]).unwrap();
        let prev = prev["hash"].as_str().unwrap().to_owned();
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(prev.as_bytes());
        ctx.update(canonical.as_bytes());
        l[4] = format!(
            "{},\"hash\":\"{}\"}}",
            &edited[..cut],
            hex::encode(ctx.finish())
        );
    });
    refused(
        &path,
        ChainError {
            seq: 6,
            line: 6,
            kind: Damage::Inserted,
        },
    );
}

#[test]
fn a_deleted_record_is_named_deleted_at_the_first_missing_seq() {
    let (_dir, path) = tampered(|l| {
        l.remove(4);
    });
    refused(
        &path,
        ChainError {
            seq: 5,
            line: 5,
            kind: Damage::Deleted,
        },
    );
}

#[test]
fn several_deleted_records_are_named_at_the_first_missing_seq() {
    let (_dir, path) = tampered(|l| {
        l.drain(2..6);
    });
    refused(
        &path,
        ChainError {
            seq: 3,
            line: 3,
            kind: Damage::Deleted,
        },
    );
}

#[test]
fn swapped_records_are_named_reordered() {
    let (_dir, path) = tampered(|l| l.swap(4, 5));
    refused(
        &path,
        ChainError {
            seq: 5,
            line: 6,
            kind: Damage::Reordered,
        },
    );
}

#[test]
fn a_record_moved_far_down_is_named_reordered() {
    let (_dir, path) = tampered(|l| {
        let moved = l.remove(2);
        l.insert(7, moved);
    });
    refused(
        &path,
        ChainError {
            seq: 3,
            line: 8,
            kind: Damage::Reordered,
        },
    );
}

#[test]
fn a_duplicated_record_is_named_inserted() {
    let (_dir, path) = tampered(|l| {
        let copy = l[4].clone();
        l.insert(5, copy);
    });
    refused(
        &path,
        ChainError {
            seq: 5,
            line: 6,
            kind: Damage::Inserted,
        },
    );
}

#[test]
fn a_record_from_another_chain_is_named_inserted() {
    let other = tempfile::tempdir().unwrap();
    let other_path = other.path().join("other.jsonl");
    let (mut writer, _) = AuditWriter::open(&other_path, Component::Gateway).unwrap();
    for i in 1..=5 {
        writer.append(&common::event(100 + i)).unwrap();
    }
    writer.sync().unwrap();
    let foreign = lines(&other_path)[4].clone();
    let (_dir, path) = tampered(|l| l[4] = foreign);
    refused(
        &path,
        ChainError {
            seq: 5,
            line: 5,
            kind: Damage::Inserted,
        },
    );
}

#[test]
fn a_broken_line_in_the_middle_is_named_malformed() {
    let (_dir, path) = tampered(|l| l[2] = "not json".to_owned());
    refused(
        &path,
        ChainError {
            seq: 3,
            line: 3,
            kind: Damage::Malformed,
        },
    );
}

#[test]
fn a_missing_field_is_named_malformed() {
    let (_dir, path) = tampered(|l| l[2] = l[2].replace("\"source\":null,", ""));
    refused(
        &path,
        ChainError {
            seq: 3,
            line: 3,
            kind: Damage::Malformed,
        },
    );
}

#[test]
fn an_empty_line_in_the_middle_is_named_malformed() {
    let (_dir, path) = tampered(|l| l.insert(3, String::new()));
    refused(
        &path,
        ChainError {
            seq: 4,
            line: 4,
            kind: Damage::Malformed,
        },
    );
}

#[test]
fn a_first_record_that_does_not_start_the_chain_is_named() {
    let (_dir, path) = tampered(|l| {
        l.remove(0);
    });
    assert_eq!(
        verify_file(&path).unwrap_err().chain(),
        Some(&ChainError {
            seq: 1,
            line: 1,
            kind: Damage::Deleted,
        })
    );
    // The writer goes on from a file's first record wherever it starts (a rotated log's
    // active file starts mid-chain); whether the log starts at seq 1 is verify's check.
    let (writer, report) = AuditWriter::open(&path, Component::Ca).unwrap();
    assert_eq!((report.records, writer.last_seq()), (9, 10));
}

#[test]
fn read_records_reports_a_bad_line_and_goes_on() {
    let (_dir, path) = tampered(|l| l[4] = l[4].replace("workload/5", "workload/6"));
    let items: Vec<_> = meshgate_audit::read_records(&path).unwrap().collect();
    assert_eq!(items.len(), 10);
    let err = items[4].as_ref().unwrap_err();
    assert_eq!(
        err.chain(),
        Some(&ChainError {
            seq: 5,
            line: 5,
            kind: Damage::Edited
        })
    );
    assert_eq!(items[5].as_ref().unwrap().seq, 6);
}
