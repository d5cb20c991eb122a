//! A record's bytes, fast: the writer encodes each line by hand into one buffer per batch, and
//! the request path bounds an event's size without encoding it.

use serde::Serialize;

use super::{ChainHash, HASH_KEY, HASH_SUFFIX_LEN, MAX_LINE_BYTES, WireOut};
use crate::{AuditError, AuditEvent};

/// Encodes one record: returns its line (newline included) and its hash.
#[cfg(test)]
pub(crate) fn encode_line(
    seq: u64,
    time: &str,
    event: &AuditEvent,
    prev: &ChainHash,
) -> Result<(Vec<u8>, ChainHash), AuditError> {
    let mut line = Vec::with_capacity(512);
    let hash = encode_line_into(&mut line, seq, time, event, prev)?;
    Ok((line, hash))
}

/// Appends one record's line (newline included) to `out` and returns its hash; on error `out`
/// is left as it was. The writer encodes a whole batch into one buffer this way.
pub(crate) fn encode_line_into(
    out: &mut Vec<u8>,
    seq: u64,
    time: &str,
    event: &AuditEvent,
    prev: &ChainHash,
) -> Result<ChainHash, AuditError> {
    let start = out.len();
    let result = encode_at(out, start, seq, time, event, prev);
    if result.is_err() {
        out.truncate(start);
    }
    result
}

fn encode_at(
    out: &mut Vec<u8>,
    start: usize,
    seq: u64,
    time: &str,
    event: &AuditEvent,
    prev: &ChainHash,
) -> Result<ChainHash, AuditError> {
    write_canonical(out, seq, time, event, prev)?;
    let canonical = out.get(start..).unwrap_or_default();
    let len = canonical.len() + HASH_SUFFIX_LEN;
    if len > MAX_LINE_BYTES {
        return Err(AuditError::TooLarge {
            len,
            max: MAX_LINE_BYTES,
        });
    }
    let hash = ChainHash::of(prev, canonical);
    if out.pop() != Some(b'}') {
        return Err(AuditError::Internal("a record's JSON does not end in '}'"));
    }
    out.extend_from_slice(HASH_KEY);
    out.extend_from_slice(&hash.hex_digits());
    out.extend_from_slice(b"\"}\n");
    Ok(hash)
}

/// Writes the canonical JSON exactly as `serde_json` writes [`WireOut`] without a hash, by
/// hand: strings that need no escaping (nearly all) are copied whole, which halves the
/// writer's cost per record; anything else goes through `serde_json`.
fn write_canonical(
    out: &mut Vec<u8>,
    seq: u64,
    time: &str,
    e: &AuditEvent,
    prev: &ChainHash,
) -> Result<(), AuditError> {
    out.extend_from_slice(b"{\"seq\":");
    std::io::Write::write_fmt(out, format_args!("{seq}"))
        .map_err(|_| AuditError::Internal("an audit record did not serialize"))?;
    out.extend_from_slice(b",\"time\":");
    json_str(out, time)?;
    out.extend_from_slice(b",\"component\":");
    json(out, &e.component)?;
    out.extend_from_slice(b",\"actor\":");
    json_str(out, &e.actor)?;
    out.extend_from_slice(b",\"action\":");
    json(out, &e.action)?;
    out.extend_from_slice(b",\"subject\":");
    json_str(out, &e.subject)?;
    out.extend_from_slice(b",\"outcome\":");
    json(out, &e.outcome)?;
    for (key, value) in [
        (&b",\"reason\":"[..], &e.reason),
        (b",\"source\":", &e.source),
        (b",\"request_id\":", &e.request_id),
        (b",\"trust_domain\":", &e.trust_domain),
    ] {
        out.extend_from_slice(key);
        match value {
            Some(v) => json_str(out, v)?,
            None => out.extend_from_slice(b"null"),
        }
    }
    out.extend_from_slice(b",\"details\":{");
    for (i, (key, value)) in e.details.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        json_str(out, key)?;
        out.push(b':');
        match value {
            serde_json::Value::String(s) => json_str(out, s)?,
            other => json(out, other)?,
        }
    }
    out.extend_from_slice(b"},\"prev\":\"");
    out.extend_from_slice(&prev.hex_digits());
    out.extend_from_slice(b"\"}");
    Ok(())
}

/// A JSON string: copied whole when no byte needs an escape (`serde_json` escapes only `"`,
/// `\` and control characters), else written by `serde_json`.
fn json_str(out: &mut Vec<u8>, s: &str) -> Result<(), AuditError> {
    if needs_escape(s.as_bytes()) {
        return json(out, s);
    }
    out.push(b'"');
    out.extend_from_slice(s.as_bytes());
    out.push(b'"');
    Ok(())
}

/// Whether any byte is `"`, `\\` or a control character, eight bytes at a time (SWAR: most
/// strings here are short, so word tricks beat vector loops that only start at 16 bytes).
fn needs_escape(bytes: &[u8]) -> bool {
    let mut words = bytes.chunks_exact(8);
    for word in &mut words {
        let mut w = [0u8; 8];
        w.copy_from_slice(word);
        if word_needs_escape(u64::from_le_bytes(w)) {
            return true;
        }
    }
    // The tail, padded with a byte that needs no escape.
    let mut w = [b'a'; 8];
    for (dst, src) in w.iter_mut().zip(words.remainder()) {
        *dst = *src;
    }
    word_needs_escape(u64::from_le_bytes(w))
}

/// Exact for every byte value: a byte of 0x80 or more never matches (it needs no escape).
fn word_needs_escape(x: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let has_zero = |v: u64| v.wrapping_sub(ONES) & !v & HIGHS != 0;
    // Bytes below 0x20: the classic "has less than n" test, exact for n <= 128.
    let below_space = x.wrapping_sub(ONES * 0x20) & !x & HIGHS != 0;
    below_space || has_zero(x ^ (ONES * u64::from(b'"'))) || has_zero(x ^ (ONES * u64::from(b'\\')))
}

fn json<T: Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) -> Result<(), AuditError> {
    serde_json::to_writer(&mut *out, value)
        .map_err(|_| AuditError::Internal("an audit record did not serialize"))
}

/// Refuses an event whose record could exceed [`MAX_LINE_BYTES`], whatever its seq and time.
/// Callers pay this once per event on the request path, so a cheap upper bound settles the
/// usual small event; only a large one is serialized (counted, not kept or hashed).
pub(crate) fn check_size(event: &AuditEvent) -> Result<(), AuditError> {
    const LONGEST_TIME: &str = "0000-00-00T00:00:00.000000Z";
    if size_bound(event) <= MAX_LINE_BYTES {
        return Ok(());
    }
    let mut counter = Counter(0);
    let wire = WireOut::new(u64::MAX - 1, LONGEST_TIME, event, &ChainHash::ZERO, None);
    serde_json::to_writer(&mut counter, &wire)
        .map_err(|_| AuditError::Internal("an audit record did not serialize"))?;
    // The line is the canonical JSON less its `}`, plus the hash suffix and the newline.
    let len = counter.0 + HASH_SUFFIX_LEN;
    if len > MAX_LINE_BYTES {
        return Err(AuditError::TooLarge {
            len,
            max: MAX_LINE_BYTES,
        });
    }
    Ok(())
}

/// More bytes than the event's line can take: every string byte counted as a six-byte
/// `\u00XX` escape, every number at its longest, the fixed fields at their longest.
fn size_bound(event: &AuditEvent) -> usize {
    /// seq, time, the enums, the keys, `prev` and `hash`, with room to spare.
    const FIXED: usize = 512;
    let text = |s: &str| s.len().saturating_mul(6).saturating_add(2);
    let opt = |s: &Option<String>| s.as_deref().map_or(4, text);
    [
        text(&event.actor),
        text(&event.subject),
        opt(&event.reason),
        opt(&event.source),
        opt(&event.request_id),
        opt(&event.trust_domain),
        event
            .details
            .iter()
            .map(|(k, v)| text(k).saturating_add(value_bound(v)).saturating_add(2))
            .fold(2, usize::saturating_add),
    ]
    .into_iter()
    .fold(FIXED, usize::saturating_add)
}

fn value_bound(v: &serde_json::Value) -> usize {
    use serde_json::Value;
    let text = |s: &str| s.len().saturating_mul(6).saturating_add(2);
    match v {
        Value::Null | Value::Bool(_) => 5,
        // The longest f64 or u64 in serde_json's spelling is under 32 bytes.
        Value::Number(_) => 32,
        Value::String(s) => text(s),
        Value::Array(a) => a
            .iter()
            .map(|v| value_bound(v).saturating_add(1))
            .fold(2, usize::saturating_add),
        Value::Object(o) => o
            .iter()
            .map(|(k, v)| text(k).saturating_add(value_bound(v)).saturating_add(2))
            .fold(2, usize::saturating_add),
    }
}

/// A writer that only counts.
struct Counter(usize);

impl std::io::Write for Counter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Action, Component, Outcome};

    fn event() -> AuditEvent {
        AuditEvent::new(
            Component::Ca,
            "spiffe://example.org/admin",
            Action::SvidIssue,
            "spiffe://example.org/web",
            Outcome::Success,
        )
        .with_detail("serial", "0a1b")
    }

    #[test]
    fn the_hand_written_encoding_is_serde_json_s() {
        let tricky = event()
            .with_reason("quote \" backslash \\ newline \n tab \t nul \u{0} del \u{7f} é 🦀")
            .with_source("10.0.0.1:443")
            .with_detail("n", 42)
            .with_detail("f", -1.5)
            .with_detail(
                "list",
                serde_json::json!(["a\"b", 1, null, {"k": "v\u{1}"}]),
            )
            .with_detail("ctl\u{2}key", true);
        for e in [event(), tricky] {
            let mut ours = Vec::new();
            write_canonical(
                &mut ours,
                12_345,
                "2026-11-27T14:21:22.123456Z",
                &e,
                &ChainHash::ZERO,
            )
            .unwrap();
            let wire = WireOut::new(
                12_345,
                "2026-11-27T14:21:22.123456Z",
                &e,
                &ChainHash::ZERO,
                None,
            );
            assert_eq!(
                String::from_utf8(ours).unwrap(),
                serde_json::to_string(&wire).unwrap()
            );
        }
    }

    #[test]
    fn the_escape_check_is_exact_for_every_byte_at_every_position() {
        for b in 0..=255u8 {
            let expected = b < 0x20 || b == b'"' || b == b'\\';
            for len in 1..=17 {
                for at in 0..len {
                    let mut bytes = vec![b'x'; len];
                    bytes[at] = b;
                    assert_eq!(
                        needs_escape(&bytes),
                        expected,
                        "byte {b:#x} at {at} of {len}"
                    );
                }
            }
        }
        assert!(!needs_escape(b""));
        assert!(!needs_escape("é🦀\u{7f}".as_bytes()));
    }

    #[test]
    fn the_size_check_refuses_exactly_the_lines_that_are_too_long() {
        // Around the limit the bound defers to an exact count.
        for len in [60_000, 65_000, 65_100, 65_200, 66_000] {
            let e = event().with_detail("blob", "x".repeat(len));
            let (line, _) = encode_line(
                u64::MAX - 1,
                "0000-00-00T00:00:00.000000Z",
                &e,
                &ChainHash::ZERO,
            )
            .map_or((Vec::new(), ChainHash::ZERO), |ok| ok);
            let fits = !line.is_empty();
            assert_eq!(check_size(&e).is_ok(), fits, "{len}");
        }
        let quotes = event().with_detail("q", "\"".repeat(33_000));
        assert!(check_size(&quotes).is_err(), "escapes count double");
    }
}
