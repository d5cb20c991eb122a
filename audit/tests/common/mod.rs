//! Helpers shared by the audit integration tests: events, a fixed clock, raw line editing, and
//! an independent recomputation of the chain.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    dead_code
)] // test code

pub mod pki;

use std::path::Path;

use meshgate_audit::{Action, AuditEvent, AuditWriter, Component, Outcome};
use ring::digest;
use time::OffsetDateTime;

/// 2026-11-27T14:21:22.123456Z
pub fn fixed_time() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(1_795_789_282_123_456_789).unwrap()
}

pub fn event(i: u64) -> AuditEvent {
    AuditEvent::new(
        Component::Ca,
        "spiffe://example.org/admin",
        Action::SvidIssue,
        format!("spiffe://example.org/workload/{i}"),
        Outcome::Success,
    )
    .with_trust_domain("example.org")
    .with_detail("serial", format!("{i:08x}"))
}

/// A log of `n` records written straight through an `AuditWriter` with the fixed clock.
pub fn write_log(path: &Path, n: u64) {
    let (mut writer, _) = AuditWriter::open_with_clock(path, Component::Ca, fixed_time).unwrap();
    for i in 1..=n {
        writer.append(&event(i)).unwrap();
    }
    writer.sync().unwrap();
}

/// The file's lines, newline excluded.
pub fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

pub fn write_lines(path: &Path, lines: &[String]) {
    let mut text = lines.join("\n");
    text.push('\n');
    std::fs::write(path, text).unwrap();
}

/// Recomputes every hash with ring, from the documented recipe only; returns the head hash.
pub fn recompute_chain(path: &Path) -> String {
    let mut prev = "0".repeat(64);
    for (i, line) in lines(path).iter().enumerate() {
        let value: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(value["seq"], i as u64 + 1);
        assert_eq!(value["prev"], prev.as_str(), "prev of record {}", i + 1);
        let cut = line.rfind(",\"hash\":\"").unwrap();
        let canonical = format!("{}}}", &line[..cut]);
        let mut ctx = digest::Context::new(&digest::SHA256);
        ctx.update(prev.as_bytes());
        ctx.update(canonical.as_bytes());
        let hash = hex::encode(ctx.finish());
        assert_eq!(value["hash"], hash.as_str(), "hash of record {}", i + 1);
        prev = hash;
    }
    prev
}
