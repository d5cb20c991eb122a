#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // test code
//! Export: several logs merged in time order, filtered by a time window, written as JSON Lines
//! (byte for byte) or CSV (RFC 4180, read back here by an independent reader), each log verified
//! as it streams, and a manifest that ties the export to its logs.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering};

use common::{event, fixed_time, lines, write_lines, write_log};
use meshgate_audit::{
    Action, AuditError, AuditEvent, AuditWriter, CSV_COLUMNS, Component, Damage, ExportFormat,
    ExportOptions, ExportReport, Outcome, export, verify_file,
};
use ring::digest;
use time::{Duration, OffsetDateTime};

/// A log of `events`, the k-th (from 0) stamped `start + k * step_us` microseconds.
fn write_timed(path: &Path, start: OffsetDateTime, step_us: i64, events: &[AuditEvent]) {
    let tick = AtomicI64::new(0);
    let clock =
        move || start + Duration::microseconds(tick.fetch_add(1, Ordering::Relaxed) * step_us);
    let (mut writer, _) = AuditWriter::open_with_clock(path, Component::Gateway, clock).unwrap();
    for e in events {
        writer.append(e).unwrap();
    }
    writer.sync().unwrap();
}

fn run(logs: &[&Path], options: ExportOptions) -> (ExportReport, Vec<u8>) {
    let mut out = Vec::new();
    let report = export(logs, &options, &mut out, Path::new("out")).unwrap();
    (report, out)
}

fn jsonl() -> ExportOptions {
    ExportOptions::new(ExportFormat::Jsonl)
}

fn time_of(line: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    v["time"].as_str().unwrap().to_owned()
}

#[test]
fn one_log_exports_byte_for_byte_and_the_manifest_matches() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ca.jsonl");
    write_log(&path, 50);
    let (report, out) = run(&[&path], jsonl());
    assert_eq!(out, std::fs::read(&path).unwrap());

    let summary = verify_file(&path).unwrap();
    let input = &report.inputs[0];
    assert_eq!(
        (input.records, input.first_seq, input.last_seq),
        (50, 1, 50)
    );
    assert_eq!(input.head, summary.head_hash);
    assert_eq!(input.damage, None);
    assert_eq!(report.exported, 50);
    assert_eq!(report.output_bytes, out.len() as u64);
    assert_eq!(
        report.output_sha256,
        hex::encode(digest::digest(&digest::SHA256, &out))
    );

    let manifest: serde_json::Value =
        serde_json::from_str(&report.manifest("ca-export.jsonl").unwrap()).unwrap();
    assert_eq!(manifest["format"], "jsonl");
    assert_eq!(manifest["output"], "ca-export.jsonl");
    assert_eq!(manifest["output_sha256"], report.output_sha256.as_str());
    assert_eq!(manifest["exported"]["records"], 50);
    assert_eq!(
        manifest["exported"]["first_time"],
        "2026-11-27T14:21:22.123456Z"
    );
    let m = &manifest["inputs"][0];
    assert_eq!(m["log"], path.display().to_string());
    assert_eq!(m["verify"], "ok");
    assert_eq!(m["damage"], serde_json::Value::Null);
    assert_eq!(m["head"], summary.head_hash.to_hex());
    assert_eq!(m["exported"]["first_prev"], "0".repeat(64));
    assert_eq!(m["exported"]["last_hash"], summary.head_hash.to_hex());
    assert_eq!(m["exported"]["contiguous"], true);
}

#[test]
fn two_logs_with_interleaved_times_merge_in_time_order() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.jsonl"), dir.path().join("b.jsonl"));
    let events: Vec<_> = (1..=30).map(event).collect();
    // a: every 10 µs from 0; b: every 15 µs from 5, so the logs interleave unevenly and
    // meet at equal times (30, 60, ...).
    write_timed(&a, fixed_time(), 10, &events);
    write_timed(
        &b,
        fixed_time() + Duration::microseconds(5),
        15,
        &events[..20],
    );

    let (report, out) = run(&[&a, &b], jsonl());
    let text = String::from_utf8(out).unwrap();
    let merged: Vec<&str> = text.lines().collect();
    assert_eq!(merged.len(), 50);
    assert_eq!(report.exported, 50);
    let times: Vec<String> = merged.iter().map(|l| time_of(l)).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");

    // Every line is one of the logs' lines, byte for byte, and each log's order is kept.
    let (la, lb) = (lines(&a), lines(&b));
    let from_a: Vec<&str> = merged
        .iter()
        .copied()
        .filter(|l| la.iter().any(|x| x == l))
        .collect();
    let from_b: Vec<&str> = merged
        .iter()
        .copied()
        .filter(|l| lb.iter().any(|x| x == l))
        .collect();
    assert_eq!(from_a, la.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(from_b, lb.iter().map(String::as_str).collect::<Vec<_>>());

    // At equal times the log named first goes first.
    let tie = merged
        .iter()
        .position(|l| time_of(l).ends_with(".123476Z"))
        .unwrap();
    assert!(la.iter().any(|x| x == merged[tie]));
    assert!(lb.iter().any(|x| x == merged[tie + 1]));
    assert_eq!(time_of(merged[tie + 1]), time_of(merged[tie]));
}

#[test]
fn since_is_inclusive_and_until_exclusive() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gw.jsonl");
    let events: Vec<_> = (1..=100).map(event).collect();
    // Records hold microseconds: start on one so the window's edges fall exactly on records.
    let start = fixed_time().replace_nanosecond(123_456_000).unwrap();
    write_timed(&path, start, 1_000_000, &events); // one record a second
    let at = |k: i64| start + Duration::seconds(k);

    let (report, out) = run(&[&path], jsonl().since(at(10)).until(at(20)));
    let text = String::from_utf8(out).unwrap();
    let seqs: Vec<u64> = text
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["seq"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(seqs, (11..=20).collect::<Vec<_>>());
    assert_eq!(report.exported, 10);
    assert_eq!(
        (report.first_time, report.last_time),
        (Some(at(10)), Some(at(19)))
    );
    let input = &report.inputs[0];
    assert_eq!(input.records, 100, "the whole log is read and verified");
    assert_eq!(
        (input.exported.first_seq, input.exported.last_seq),
        (11, 20)
    );
    assert!(input.exported.contiguous);

    let (report, _) = run(&[&path], jsonl().since(at(95)));
    assert_eq!(report.exported, 5);
    let (report, _) = run(&[&path], jsonl().until(at(3)));
    assert_eq!(report.exported, 3);
    let (report, out) = run(&[&path], jsonl().since(at(200)));
    assert_eq!((report.exported, out.len()), (0, 0));
    assert_eq!(report.first_time, None);
}

#[test]
fn csv_survives_commas_quotes_and_newlines() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gw.jsonl");
    let tricky = [
        "plain",
        "comma, inside",
        "say \"hi\"",
        "two\nlines",
        "cr\r\nlf",
        "\"",
        ",",
        "",
        " spaced ",
        "ünïcødé ✓",
    ];
    let events: Vec<AuditEvent> = tricky
        .iter()
        .map(|t| {
            AuditEvent::new(
                Component::Gateway,
                format!("spiffe://example.org/{t}"),
                Action::RequestDeny,
                *t,
                Outcome::Denied,
            )
            .with_reason(*t)
            .with_detail("path", *t)
            .with_detail("n", 1)
        })
        .collect();
    write_timed(&path, fixed_time(), 1, &events);

    let (report, out) = run(&[&path], ExportOptions::new(ExportFormat::Csv));
    assert_eq!(report.exported, tricky.len() as u64);
    let rows = read_csv(std::str::from_utf8(&out).unwrap());
    let header: Vec<Option<String>> = CSV_COLUMNS.iter().map(|c| Some((*c).to_owned())).collect();
    assert_eq!(rows[0], header);
    assert_eq!(rows.len(), tricky.len() + 1);
    let col = |name: &str| CSV_COLUMNS.iter().position(|c| *c == name).unwrap();
    let records: Vec<_> = meshgate_audit::read_records(&path)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    for ((row, t), record) in rows[1..].iter().zip(tricky).zip(&records) {
        let field = |name: &str| row[col(name)].as_deref();
        assert_eq!(field("log"), Some(path.display().to_string().as_str()));
        assert_eq!(field("seq"), Some(record.seq.to_string().as_str()));
        assert_eq!(field("subject"), Some(t));
        assert_eq!(
            field("reason"),
            Some(t),
            "an empty string stays \"\", not null"
        );
        assert_eq!(
            field("actor"),
            Some(format!("spiffe://example.org/{t}").as_str())
        );
        assert_eq!(field("action"), Some("request_deny"));
        assert_eq!(field("outcome"), Some("denied"));
        assert_eq!(field("component"), Some("gateway"));
        assert_eq!(field("source"), None, "null is an empty, unquoted field");
        assert_eq!(field("hash"), Some(record.hash.to_hex().as_str()));
        assert_eq!(field("prev"), Some(record.prev.to_hex().as_str()));
        let details: serde_json::Value = serde_json::from_str(field("details").unwrap()).unwrap();
        assert_eq!(details, serde_json::json!({"n": 1, "path": t}));
        assert!(!field("details").unwrap().contains(": "), "compact JSON");
    }
}

#[test]
fn a_tampered_log_fails_the_export_naming_the_log_and_seq() {
    let dir = tempfile::tempdir().unwrap();
    let (good, bad) = (dir.path().join("good.jsonl"), dir.path().join("bad.jsonl"));
    write_log(&good, 20);
    write_log(&bad, 20);
    let mut all = lines(&bad);
    all[6] = all[6].replace("workload/7", "workload/8");
    write_lines(&bad, &all);

    let mut out = Vec::new();
    let err = export(&[&good, &bad], &jsonl(), &mut out, Path::new("out")).unwrap_err();
    let AuditError::Chain { path, error } = &err else {
        panic!("{err}")
    };
    assert_eq!(path, &bad);
    assert_eq!((error.seq, error.line, error.kind), (7, 7, Damage::Edited));
    assert!(err.to_string().contains("seq 7"), "{err}");

    // Allowed: the bad line is skipped, the rest exported, the damage reported.
    let (report, out) = run(&[&good, &bad], jsonl().allow_damaged(true));
    assert_eq!(report.exported, 39);
    assert_eq!(String::from_utf8(out).unwrap().lines().count(), 39);
    assert_eq!(report.inputs[0].damage, None);
    let input = &report.inputs[1];
    assert_eq!(
        input.damage.map(|e| (e.seq, e.kind)),
        Some((7, Damage::Edited))
    );
    assert_eq!((input.records, input.skipped_lines), (19, 1));
    assert!(!input.exported.contiguous);
    let manifest: serde_json::Value = serde_json::from_str(&report.manifest("-").unwrap()).unwrap();
    assert_eq!(manifest["inputs"][1]["verify"], "damaged");
    assert_eq!(manifest["inputs"][1]["damage"]["seq"], 7);
    assert_eq!(manifest["inputs"][1]["damage"]["kind"], "edited");
}

#[test]
fn export_names_damage_as_verify_does() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ca.jsonl");
    type Edit = fn(&mut Vec<String>);
    let cases: [(&str, Edit, u64, Damage); 3] = [
        ("deleted", |l| drop(l.remove(4)), 5, Damage::Deleted),
        ("reordered", |l| l.swap(4, 5), 5, Damage::Reordered),
        (
            "inserted",
            |l| l.insert(3, l[3].clone()),
            4,
            Damage::Inserted,
        ),
    ];
    for (name, edit, seq, kind) in cases {
        std::fs::remove_file(&path).ok();
        write_log(&path, 10);
        let mut all = lines(&path);
        edit(&mut all);
        write_lines(&path, &all);
        let expected = *verify_file(&path).unwrap_err().chain().unwrap();
        assert_eq!((expected.seq, expected.kind), (seq, kind), "{name}");
        let err = export(&[&path], &jsonl(), std::io::sink(), Path::new("-")).unwrap_err();
        assert_eq!(err.chain(), Some(&expected), "{name}");
    }
}

#[test]
fn a_missing_log_fails_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.jsonl");
    write_log(&good, 3);
    let mut out = Vec::new();
    let err = export(
        &[good, dir.path().join("absent.jsonl")],
        &jsonl().allow_damaged(true),
        &mut out,
        Path::new("out"),
    )
    .unwrap_err();
    assert!(matches!(err, AuditError::Io { op: "open", .. }), "{err}");
    assert!(err.to_string().contains("absent.jsonl"), "{err}");
    assert!(out.is_empty());
}

#[test]
fn two_hundred_thousand_records_stream_through() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.jsonl"), dir.path().join("b.jsonl"));
    for (path, offset) in [(&a, 0), (&b, 1)] {
        let tick = AtomicI64::new(offset);
        let clock =
            move || fixed_time() + Duration::microseconds(tick.fetch_add(2, Ordering::Relaxed));
        let (mut writer, _) = AuditWriter::open_with_clock(path, Component::Ca, clock).unwrap();
        for i in 1..=100_000 {
            writer.append(&event(i)).unwrap();
        }
        writer.sync().unwrap();
    }
    let mut counter = Counter::default();
    let report = export(
        &[a.clone(), b.clone()],
        &jsonl(),
        &mut counter,
        Path::new("-"),
    )
    .unwrap();
    assert_eq!(report.exported, 200_000);
    assert_eq!(counter.lines, 200_000);
    let size = std::fs::metadata(&a).unwrap().len() + std::fs::metadata(&b).unwrap().len();
    assert_eq!(report.output_bytes, size);
    assert_eq!(report.inputs[1].head, verify_file(&b).unwrap().head_hash);
}

/// Counts lines written without keeping them.
#[derive(Default)]
struct Counter {
    lines: u64,
}

impl std::io::Write for Counter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.lines += buf.iter().filter(|&&b| b == b'\n').count() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A minimal RFC 4180 reader, independent of the writer: CRLF between records, quoted fields
/// with doubled quotes. An unquoted empty field is `None`, a quoted one `Some("")`.
fn read_csv(text: &str) -> Vec<Vec<Option<String>>> {
    let mut rows = Vec::new();
    let mut row = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        let mut field = String::new();
        let quoted = chars.peek() == Some(&'"');
        if quoted {
            chars.next();
            loop {
                match chars.next().expect("unterminated quoted field") {
                    '"' if chars.peek() == Some(&'"') => {
                        chars.next();
                        field.push('"');
                    }
                    '"' => break,
                    c => field.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ',' || c == '\r' {
                    break;
                }
                assert!(c != '"' && c != '\n', "bare {c:?} in an unquoted field");
                field.push(c);
                chars.next();
            }
        }
        row.push((quoted || !field.is_empty()).then_some(field));
        match chars.next() {
            Some(',') => {}
            Some('\r') => {
                assert_eq!(chars.next(), Some('\n'), "CR without LF");
                rows.push(std::mem::take(&mut row));
                if chars.peek().is_none() {
                    return rows;
                }
            }
            None => panic!("the last record has no CRLF"),
            Some(c) => panic!("{c:?} after a field"),
        }
    }
}
