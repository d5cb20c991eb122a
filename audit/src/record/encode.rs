//! A record's bytes, fast: the caller's thread encodes an event's body by hand, and the writer
//! thread only frames it with seq, time and prev, hashes it, and appends it to one buffer per
//! batch.

use serde::Serialize;

#[cfg(test)]
use super::WireOut;
use super::{ChainHash, HASH_KEY, HASH_SUFFIX_LEN, MAX_LINE_BYTES};
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
    let hash = encode_line_into(&mut line, seq, time, Middle::Event(event), prev)?;
    Ok((line, hash))
}

/// An event's encoded middle, `,"component":` through the end of `details`: all of the
/// canonical JSON but `seq`, `time` and `prev`. The sink encodes it on the caller's thread, so
/// the one writer thread only frames, hashes and writes.
#[derive(Debug)]
pub(crate) struct Body(Vec<u8>);

/// The bytes a line adds to its body at most: `{"seq":` + 20 digits + `,"time":"…"` (27) before,
/// `,"prev":"<64 hex>"}` after, and `,"hash":"<64 hex>"}` + newline for the `}`.
const FRAME_MAX: usize = 7 + 20 + 8 + 29 + 75 + 75;

/// Encodes an event's body, refusing one whose line could exceed [`MAX_LINE_BYTES`] whatever
/// its seq and time.
pub(crate) fn encode_body(e: &AuditEvent) -> Result<Body, AuditError> {
    let mut out = Vec::with_capacity(384);
    write_body(&mut out, e)?;
    let len = out.len() + FRAME_MAX;
    if len > MAX_LINE_BYTES {
        return Err(AuditError::TooLarge {
            len,
            max: MAX_LINE_BYTES,
        });
    }
    Ok(Body(out))
}

/// What goes between `time` and `prev`: an event to encode now, or a body encoded already.
#[derive(Clone, Copy)]
pub(crate) enum Middle<'a> {
    Event(&'a AuditEvent),
    Body(&'a Body),
}

/// Appends one record's line (newline included) to `out` and returns its hash; on error `out`
/// is left as it was. The writer encodes a whole batch into one buffer this way.
pub(crate) fn encode_line_into(
    out: &mut Vec<u8>,
    seq: u64,
    time: &str,
    middle: Middle<'_>,
    prev: &ChainHash,
) -> Result<ChainHash, AuditError> {
    let start = out.len();
    let result = encode_at(out, start, seq, time, middle, prev);
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
    middle: Middle<'_>,
    prev: &ChainHash,
) -> Result<ChainHash, AuditError> {
    out.extend_from_slice(b"{\"seq\":");
    std::io::Write::write_fmt(out, format_args!("{seq}"))
        .map_err(|_| AuditError::Internal("an audit record did not serialize"))?;
    out.extend_from_slice(b",\"time\":");
    json_str(out, time)?;
    match middle {
        Middle::Event(e) => write_body(out, e)?,
        Middle::Body(body) => out.extend_from_slice(&body.0),
    }
    out.extend_from_slice(b",\"prev\":\"");
    out.extend_from_slice(&prev.hex_digits());
    out.extend_from_slice(b"\"}");
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

/// Writes an event's body exactly as `serde_json` writes those fields of [`WireOut`], by hand:
/// strings that need no escaping (nearly all) are copied whole; anything else goes through
/// `serde_json`.
fn write_body(out: &mut Vec<u8>, e: &AuditEvent) -> Result<(), AuditError> {
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
    out.push(b'}');
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
            let (line, _) =
                encode_line(12_345, "2026-11-27T14:21:22.123456Z", &e, &ChainHash::ZERO).unwrap();
            let text = String::from_utf8(line).unwrap();
            let ours = format!("{}}}", &text[..text.rfind(",\"hash\":\"").unwrap()]);
            // The body encoded apart frames into the same line.
            let body = encode_body(&e).unwrap();
            let mut framed = Vec::new();
            encode_line_into(
                &mut framed,
                12_345,
                "2026-11-27T14:21:22.123456Z",
                Middle::Body(&body),
                &ChainHash::ZERO,
            )
            .unwrap();
            assert_eq!(String::from_utf8(framed).unwrap(), text);
            let wire = WireOut::new(
                12_345,
                "2026-11-27T14:21:22.123456Z",
                &e,
                &ChainHash::ZERO,
                None,
            );
            assert_eq!(ours, serde_json::to_string(&wire).unwrap());
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
        // The body is refused exactly when the line at the longest seq and time would be.
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
            assert_eq!(encode_body(&e).is_ok(), fits, "{len}");
        }
        let quotes = event().with_detail("q", "\"".repeat(33_000));
        assert!(encode_body(&quotes).is_err(), "escapes count double");
    }
}
