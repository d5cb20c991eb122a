//! CSV export (RFC 4180): a header row, then one row per record, CRLF line ends; a field is
//! quoted when it holds a comma, a quote, CR or LF, and quotes inside are doubled.

use serde::Serialize;

use crate::record::format_time;
use crate::{AuditError, Record};

/// The columns: the log the record came from, then the record's fields in wire order.
pub(crate) const HEADER: [&str; 15] = [
    "log",
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
];

/// Appends the header row.
pub(crate) fn write_header(buf: &mut Vec<u8>) {
    for (i, name) in HEADER.iter().enumerate() {
        if i > 0 {
            buf.push(b',');
        }
        buf.extend_from_slice(name.as_bytes());
    }
    buf.extend_from_slice(b"\r\n");
}

/// Appends one record's row. A `null` is an empty field and an empty string is `""`, so the
/// two stay apart; `details` is its compact JSON (keys sorted) in one field.
pub(crate) fn write_record(
    buf: &mut Vec<u8>,
    log: &str,
    record: &Record,
) -> Result<(), AuditError> {
    let e = &record.event;
    let details = serde_json::to_string(&e.details)
        .map_err(|_| AuditError::Internal("an event's details did not serialize"))?;
    let fields = [
        Some(log),
        Some(&record.seq.to_string()),
        Some(&format_time(record.time)?),
        Some(&name(&e.component)?),
        Some(&e.actor),
        Some(&name(&e.action)?),
        Some(&e.subject),
        Some(&name(&e.outcome)?),
        e.reason.as_deref(),
        e.source.as_deref(),
        e.request_id.as_deref(),
        e.trust_domain.as_deref(),
        Some(&details),
        Some(&record.prev.to_hex()),
        Some(&record.hash.to_hex()),
    ];
    for (i, field) in fields.iter().enumerate() {
        if i > 0 {
            buf.push(b',');
        }
        if let Some(text) = field {
            write_field(buf, text);
        }
    }
    buf.extend_from_slice(b"\r\n");
    Ok(())
}

/// One field: bare when that is unambiguous, else quoted with inner quotes doubled.
fn write_field(buf: &mut Vec<u8>, text: &str) {
    let needs_quotes = text.is_empty()
        || text
            .bytes()
            .any(|b| matches!(b, b',' | b'"' | b'\r' | b'\n'));
    if !needs_quotes {
        buf.extend_from_slice(text.as_bytes());
        return;
    }
    buf.push(b'"');
    for b in text.bytes() {
        if b == b'"' {
            buf.push(b'"');
        }
        buf.push(b);
    }
    buf.push(b'"');
}

/// The wire name of a unit enum value (`svid_issue`, `gateway`, `denied`).
pub(super) fn name(value: &impl Serialize) -> Result<String, AuditError> {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => Ok(s),
        _ => Err(AuditError::Internal("an enum did not serialize to a name")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(text: &str) -> String {
        let mut buf = Vec::new();
        write_field(&mut buf, text);
        String::from_utf8(buf).unwrap()
    }

    #[test]
    fn fields_are_quoted_only_when_needed_and_quotes_doubled() {
        assert_eq!(field("plain text"), "plain text");
        assert_eq!(field("a,b"), "\"a,b\"");
        assert_eq!(field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(field("two\nlines"), "\"two\nlines\"");
        assert_eq!(field("cr\rhere"), "\"cr\rhere\"");
        assert_eq!(field(""), "\"\"");
        assert_eq!(field("é ✓"), "é ✓");
    }
}
