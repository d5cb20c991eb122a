#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // test code
//! A sound log: written through the sink, recomputed independently, reopened, read back, and
//! checked for hidden fields.

mod common;

use std::collections::BTreeSet;

use common::{event, fixed_time, lines, recompute_chain, write_log};
use meshgate_audit::{
    Action, AuditEvent, AuditSink, AuditWriter, ChainHash, Component, Outcome, read_records,
    verify_file,
};

#[test]
fn a_thousand_events_through_the_sink_form_a_chain_anyone_can_recompute() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let (writer, report) = AuditWriter::open(&path, Component::Ca).unwrap();
    assert!(report.created);
    let sink = AuditSink::spawn(writer, 64).unwrap();
    for i in 1..=1000 {
        sink.record(event(i)).unwrap();
    }
    sink.flush().unwrap();

    let summary = verify_file(&path).unwrap();
    assert_eq!(summary.records, 1000);
    assert_eq!((summary.first_seq, summary.last_seq), (1, 1000));
    assert_eq!(recompute_chain(&path), summary.head_hash.to_hex());
    sink.shutdown().unwrap();
}

#[test]
fn reopening_continues_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    write_log(&path, 1000);
    let head = verify_file(&path).unwrap().head_hash;

    let (mut writer, report) = AuditWriter::open(&path, Component::Ca).unwrap();
    assert!(!report.created);
    assert_eq!(report.records, 1000);
    assert_eq!(report.recovered, None);
    assert_eq!((writer.last_seq(), writer.head()), (1000, head));
    assert_eq!(writer.append(&event(1001)).unwrap(), 1001);
    writer.sync().unwrap();
    drop(writer);

    let last = read_records(&path).unwrap().last().unwrap().unwrap();
    assert_eq!((last.seq, last.prev), (1001, head));
    assert_eq!(verify_file(&path).unwrap().last_seq, 1001);
    recompute_chain(&path);
}

#[test]
fn record_durable_returns_after_the_record_is_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let (writer, _) = AuditWriter::open(&path, Component::Ca).unwrap();
    let sink = AuditSink::spawn(writer, 16).unwrap();
    for i in 1..=3 {
        sink.record(event(i)).unwrap();
    }
    let seq = sink.record_durable(event(4)).unwrap();
    assert_eq!(seq, 4);
    // No flush, no shutdown: the record must already be in the file.
    let summary = verify_file(&path).unwrap();
    assert_eq!(summary.last_seq, 4);
    let last = read_records(&path).unwrap().last().unwrap().unwrap();
    assert_eq!(last.event, event(4));
}

#[test]
fn eight_threads_share_one_sink_without_gaps() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let (writer, _) = AuditWriter::open(&path, Component::Gateway).unwrap();
    let sink = AuditSink::spawn(writer, 32).unwrap();
    std::thread::scope(|s| {
        for t in 0..8u64 {
            let sink = &sink;
            s.spawn(move || {
                for i in 0..500 {
                    if i % 100 == 99 {
                        sink.record_durable(event(t * 1000 + i)).unwrap();
                    } else {
                        sink.record(event(t * 1000 + i)).unwrap();
                    }
                }
            });
        }
    });
    sink.shutdown().unwrap();

    let seqs: Vec<u64> = read_records(&path)
        .unwrap()
        .map(|r| r.unwrap().seq)
        .collect();
    assert_eq!(seqs, (1..=4000).collect::<Vec<_>>());
    assert_eq!(verify_file(&path).unwrap().last_seq, 4000);
    let subjects: BTreeSet<String> = read_records(&path)
        .unwrap()
        .map(|r| r.unwrap().event.subject)
        .collect();
    assert_eq!(subjects.len(), 4000, "every event written once");
}

#[test]
fn dropping_the_sink_drains_and_syncs() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let (writer, _) = AuditWriter::open(&path, Component::Ca).unwrap();
    let sink = AuditSink::spawn(writer, 4).unwrap();
    for i in 1..=100 {
        sink.record(event(i)).unwrap();
    }
    drop(sink);
    assert_eq!(verify_file(&path).unwrap().last_seq, 100);
}

#[test]
fn a_record_has_exactly_the_documented_fields_and_nothing_hidden() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let (mut writer, _) = AuditWriter::open_with_clock(&path, Component::Ca, fixed_time).unwrap();
    let secret = "s3cr3t-token-AAAAAAAAAAAAAAAA";
    let plain = AuditEvent::new(
        Component::Ca,
        "anonymous",
        Action::TokenReject,
        "token:7f3a",
        Outcome::Denied,
    )
    .with_reason("token_unknown");
    writer.append(&plain).unwrap();
    writer
        .append(&plain.clone().with_detail("leaked", secret))
        .unwrap();
    writer.sync().unwrap();

    let lines = lines(&path);
    let order: Vec<String> = {
        // serde_json keeps no key order in a Value; read the order off the line itself.
        let mut keys = Vec::new();
        let mut rest = lines[0].as_str();
        for key in [
            "seq",
            "time",
            "component",
            "actor",
            "action",
            "subject",
            "outcome",
            "reason",
            "source",
            "request_id",
            "trust_domain",
            "details",
            "prev",
            "hash",
        ] {
            let at = rest.find(&format!("\"{key}\":")).unwrap();
            rest = &rest[at..];
            keys.push(key.to_owned());
        }
        keys
    };
    let value: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
    let keys: Vec<String> = value.as_object().unwrap().keys().cloned().collect();
    let mut sorted_order = order.clone();
    sorted_order.sort();
    assert_eq!(keys, sorted_order, "exactly the documented fields");
    assert!(!lines[0].contains(secret), "nothing the event did not hold");
    assert!(
        lines[1].contains(secret),
        "the test would see the secret if it were there"
    );

    let prefix = "{\"seq\":1,\"time\":\"2026-11-27T14:21:22.123456Z\",\"component\":\"ca\",\
        \"actor\":\"anonymous\",\"action\":\"token_reject\",\"subject\":\"token:7f3a\",\
        \"outcome\":\"denied\",\"reason\":\"token_unknown\",\"source\":null,\"request_id\":null,\
        \"trust_domain\":null,\"details\":{},\"prev\":\"";
    assert!(lines[0].starts_with(prefix), "{}", lines[0]);
    assert_eq!(value["prev"], ChainHash::ZERO.to_hex());
}

#[test]
fn records_read_back_equal_what_was_written() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    write_log(&path, 10);
    let records: Vec<_> = read_records(&path).unwrap().map(Result::unwrap).collect();
    assert_eq!(records.len(), 10);
    for (i, (record, line)) in records.iter().zip(lines(&path)).enumerate() {
        assert_eq!(record.event, event(i as u64 + 1));
        assert_eq!(
            record.time,
            fixed_time().replace_nanosecond(123_456_000).unwrap()
        );
        assert_eq!(serde_json::to_string(record).unwrap(), line);
    }
}

#[cfg(unix)]
#[test]
fn a_new_log_is_private_to_its_owner() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    AuditWriter::open(&path, Component::Ca).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn an_oversized_event_is_refused_before_it_is_queued() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let (writer, _) = AuditWriter::open(&path, Component::Ca).unwrap();
    let sink = AuditSink::spawn(writer, 4).unwrap();
    let big = event(1).with_detail("blob", "x".repeat(meshgate_audit::MAX_LINE_BYTES));
    let err = sink.record(big).unwrap_err();
    assert!(
        matches!(err, meshgate_audit::AuditError::TooLarge { .. }),
        "{err}"
    );
    assert_eq!(
        sink.record_durable(event(2)).unwrap(),
        1,
        "the sink goes on"
    );
}

#[test]
fn two_writers_on_one_file_continue_one_chain() {
    // Like the CLI appending while `ca serve` holds the log open: each batch takes the file's
    // lock and catches up with what the other appended.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let (mut server, _) = meshgate_audit::AuditWriter::open(&path, Component::Ca).unwrap();
    let ev = |n: u32| {
        meshgate_audit::AuditEvent::new(
            Component::Ca,
            "anonymous",
            Action::SvidIssue,
            format!("s{n}"),
            Outcome::Success,
        )
    };
    server.append(&ev(1)).unwrap();
    server.sync().unwrap();
    let (mut cli, _) = meshgate_audit::AuditWriter::open(&path, Component::Cli).unwrap();
    assert_eq!(cli.append(&ev(2)).unwrap(), 2);
    cli.sync().unwrap();
    drop(cli);
    assert_eq!(
        server.append(&ev(3)).unwrap(),
        3,
        "the server continues after the CLI's record"
    );
    server.sync().unwrap();
    let summary = meshgate_audit::verify_file(&path).unwrap();
    assert_eq!(summary.last_seq, 3);
}
