//! `audit verify` and `audit export` on files that are not a clean audit log: a megabyte on one
//! line, bytes that are not UTF-8, a JSON array where a record goes, a last line cut short, two
//! records with one seq, random bytes, a directory, /dev/null. Verify names the first bad
//! record by seq and line and exits 1 (the log is damaged, the input was readable); export
//! refuses to write a partial export; neither panics nor buffers the megabyte line.

use std::path::{Path, PathBuf};

use meshgate_audit::{Action, AuditEvent, AuditWriter, Component, Outcome};

use super::common::{assert_no_panic, assert_refused, meshgate, s, stdout};

/// A gateway log of five records; returns the temp dir and the log's path.
fn log() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("gw.jsonl");
    let (mut writer, _) = AuditWriter::open(&path, Component::Gateway).unwrap();
    for i in 0..5 {
        let e = AuditEvent::new(
            Component::Gateway,
            "spiffe://bank.example/ns/shop/sa/checkout",
            Action::RequestDeny,
            format!("spiffe://bank.example/ns/payments/sa/api GET /v1/{i}"),
            Outcome::Denied,
        )
        .with_reason("deny");
        writer.append(&e).unwrap();
    }
    writer.sync().unwrap();
    drop(writer);
    (tmp, path)
}

fn lines(path: &Path) -> Vec<Vec<u8>> {
    std::fs::read(path)
        .unwrap()
        .split_inclusive(|b| *b == b'\n')
        .map(<[u8]>::to_vec)
        .collect()
}

fn write_lines(path: &Path, lines: &[Vec<u8>]) {
    std::fs::write(path, lines.concat()).unwrap();
}

/// `audit verify` found damage at `seq`/`line` and said `kind`.
#[track_caller]
fn verify_finds(path: &Path, needles: &[&str]) {
    let o = meshgate(&["audit", "verify", s(path)]);
    assert_no_panic(&o);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    let text = format!("{}{}", stdout(&o), super::common::stderr(&o));
    assert!(text.contains(s(path)), "{text}");
    for n in needles {
        assert!(text.contains(n), "{n:?}: {text}");
    }
    assert!(
        text.len() < 64 * 1024,
        "the answer quotes the bad line: {} bytes",
        text.len()
    );
}

/// `audit export` refuses the log (exit 1) and writes no export file.
#[track_caller]
fn export_refuses(path: &Path) {
    let out = path.with_extension("export.jsonl");
    let o = meshgate(&[
        "audit",
        "export",
        "--log",
        s(path),
        "--format",
        "jsonl",
        "--out",
        s(&out),
    ]);
    assert_refused(&o, 1, &[s(path)]);
    assert!(
        !out.exists(),
        "a partial export was left at {}",
        out.display()
    );
}

#[test]
fn a_one_megabyte_line_is_named_without_being_quoted() {
    let (_tmp, path) = log();
    let mut l = lines(&path);
    let mut huge = b"{\"seq\":3,\"x\":\"".to_vec();
    huge.extend(std::iter::repeat_n(b'A', 1 << 20));
    huge.extend_from_slice(b"\"}\n");
    l[2] = huge;
    write_lines(&path, &l);
    verify_finds(&path, &["seq 3", "line 3"]);
    export_refuses(&path);
}

#[test]
fn a_line_that_is_not_utf8_is_named() {
    let (_tmp, path) = log();
    let mut l = lines(&path);
    let pos = l[1].iter().position(|b| *b == b'G').unwrap();
    l[1][pos] = 0xff;
    write_lines(&path, &l);
    verify_finds(&path, &["seq 2", "line 2"]);
    export_refuses(&path);
}

#[test]
fn a_json_array_where_a_record_goes_is_named() {
    let (_tmp, path) = log();
    let mut l = lines(&path);
    l[1] = b"[1, 2, 3, {\"seq\": 2}]\n".to_vec();
    write_lines(&path, &l);
    verify_finds(&path, &["seq 2", "line 2"]);
    export_refuses(&path);
}

#[test]
fn a_last_line_cut_short_is_named() {
    let (_tmp, path) = log();
    let mut l = lines(&path);
    let last = l.len() - 1;
    let cut = l[last].len() / 2;
    l[last].truncate(cut);
    write_lines(&path, &l);
    verify_finds(&path, &["seq 5", "line 5"]);
    export_refuses(&path);
}

#[test]
fn a_seq_used_twice_with_different_records_is_named() {
    let (_tmp, path) = log();
    let mut l = lines(&path);
    // Record 4's text with record 3's seq, so seq 3 appears twice.
    let fourth = String::from_utf8(l[3].clone())
        .unwrap()
        .replacen("\"seq\":4", "\"seq\":3", 1);
    assert_ne!(fourth.as_bytes(), l[3].as_slice(), "the edit applies");
    l[3] = fourth.into_bytes();
    write_lines(&path, &l);
    verify_finds(&path, &["line 4"]);
    export_refuses(&path);
}

#[test]
fn random_bytes_a_directory_and_dev_null_are_not_logs() {
    let (tmp, path) = log();
    // Deterministic noise with newlines and NULs in it.
    let noise: Vec<u8> = (0..200_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&path, &noise).unwrap();
    verify_finds(&path, &["line 1"]);
    export_refuses(&path);

    // A directory: named, exit 1, no panic.
    let o = meshgate(&["audit", "verify", s(tmp.path())]);
    assert_refused(&o, 1, &[s(tmp.path())]);
    // /dev/null reads as an empty log: nothing to verify, nothing wrong.
    let o = meshgate(&["audit", "verify", "/dev/null"]);
    assert_no_panic(&o);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    assert!(stdout(&o).contains("0 records"), "{}", stdout(&o));
}
