//! Writes a synthetic audit log for export and load tests (not shipped):
//!
//!     cargo run --release -p meshgate-audit --example gen_log -- PATH COUNT [START] [STEP_US]
//!
//! COUNT records through an `AuditWriter`, stamped START (RFC 3339, default
//! 2026-11-27T14:00:00Z) plus STEP_US microseconds (default 1000) per record.

use std::sync::atomic::{AtomicI64, Ordering};

use meshgate_audit::{Action, AuditEvent, AuditWriter, Component, Outcome};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

type Error = Box<dyn std::error::Error>;

fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(path), Some(count)) = (args.first(), args.get(1)) else {
        return Err("usage: gen_log PATH COUNT [START] [STEP_US]".into());
    };
    let count: u64 = count.parse()?;
    let start = match args.get(2) {
        Some(t) => OffsetDateTime::parse(t, &Rfc3339)?,
        None => OffsetDateTime::parse("2026-11-27T14:00:00Z", &Rfc3339)?,
    };
    let step: i64 = args.get(3).map_or(Ok(1000), |s| s.parse())?;
    let started = std::time::Instant::now();
    let written = write_log(path, count, start, step)?;
    eprintln!(
        "wrote {written} records to {path} in {:.2?}",
        started.elapsed()
    );
    Ok(())
}

fn write_log(path: &str, count: u64, start: OffsetDateTime, step_us: i64) -> Result<u64, Error> {
    let tick = AtomicI64::new(0);
    let clock = move || {
        let n = tick.fetch_add(1, Ordering::Relaxed);
        start + time::Duration::microseconds(n.saturating_mul(step_us))
    };
    let (mut writer, _) = AuditWriter::open_with_clock(path, Component::Gateway, clock)?;
    for i in 1..=count {
        writer.append(&event(i))?;
        if i % 1024 == 0 {
            writer.sync()?;
        }
    }
    writer.sync()?;
    Ok(count)
}

/// A mix of gateway decisions and CA operations, some with commas and quotes in their text.
fn event(i: u64) -> AuditEvent {
    let client = format!("spiffe://example.org/client/{}", i % 97);
    let e = match i % 4 {
        0 => AuditEvent::new(
            Component::Gateway,
            client,
            Action::RequestDeny,
            "spiffe://example.org/payments",
            Outcome::Denied,
        )
        .with_reason("no rule allows it, \"default deny\"")
        .with_detail("method", "POST")
        .with_detail("path", format!("/v1/charges/{i}")),
        1 => AuditEvent::new(
            Component::Gateway,
            client,
            Action::RequestAllow,
            "spiffe://example.org/payments",
            Outcome::Success,
        )
        .with_detail("rule", "clients-read"),
        2 => AuditEvent::new(
            Component::Ca,
            client,
            Action::SvidRenew,
            format!("serial {i:016x}"),
            Outcome::Success,
        ),
        _ => AuditEvent::new(
            Component::Gateway,
            "anonymous",
            Action::PeerReject,
            "spiffe://example.org/payments",
            Outcome::Denied,
        )
        .with_reason("certificate expired, renew it"),
    };
    e.with_source(format!("10.0.{}.{}:443", (i / 256) % 256, i % 256))
        .with_request_id(format!("req-{i:08}"))
        .with_trust_domain("example.org")
}
