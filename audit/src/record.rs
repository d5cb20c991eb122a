//! The record on disk: an event with its seq, time and chain links, and the exact bytes of its
//! JSON line (see the crate docs for the format and the hash input).

use std::collections::BTreeMap;
use std::fmt;

use ring::digest;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use time::format_description::well_known::Rfc3339;
use time::{OffsetDateTime, UtcOffset};

use crate::{Action, AuditError, AuditEvent, Component, Outcome};

/// The longest line, newline included, a log may hold. Longer events are refused when written
/// and longer lines are malformed when read, so readers run in constant memory.
pub const MAX_LINE_BYTES: usize = 64 * 1024;

/// The end of every line: `,"hash":"` + 64 hex digits + `"}` (newline not counted).
const HASH_SUFFIX_LEN: usize = 75;
const HASH_KEY: &[u8] = b",\"hash\":\"";

/// One written audit record: the event plus its place in the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Position in the chain, from 1.
    pub seq: u64,
    /// When the record was written, UTC, to the microsecond.
    pub time: OffsetDateTime,
    /// What happened.
    pub event: AuditEvent,
    /// The `hash` of the record before (all zeros for the first record of a chain).
    pub prev: ChainHash,
    /// SHA-256 over `prev` (as hex) and this record's canonical JSON.
    pub hash: ChainHash,
}

/// A SHA-256 value of the chain, written as 64 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChainHash([u8; 32]);

impl ChainHash {
    /// The `prev` of the first record of a chain.
    pub const ZERO: Self = Self([0; 32]);

    /// The hash of a record: SHA-256 over `prev`'s 64 hex digits followed by `canonical`, the
    /// record's JSON line without its `hash` field.
    pub fn of(prev: &Self, canonical: &[u8]) -> Self {
        let mut ctx = digest::Context::new(&digest::SHA256);
        ctx.update(&prev.hex_digits());
        ctx.update(canonical);
        let mut out = [0; 32];
        out.copy_from_slice(ctx.finish().as_ref());
        Self(out)
    }

    /// Parses exactly 64 lowercase hex digits (the only spelling a record may use).
    pub fn from_hex(s: &str) -> Option<Self> {
        let lower = |b: &u8| b.is_ascii_digit() || (b'a'..=b'f').contains(b);
        if s.len() != 64 || !s.as_bytes().iter().all(lower) {
            return None;
        }
        let mut out = [0; 32];
        hex::decode_to_slice(s, &mut out).ok()?;
        Some(Self(out))
    }

    /// The 64 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        String::from_utf8_lossy(&self.hex_digits()).into_owned()
    }

    /// The 64 lowercase hex digits as ASCII bytes, on the stack: every record writes and hashes
    /// two of these, so the writer's hot path allocates none.
    pub(crate) fn hex_digits(&self) -> [u8; 64] {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut out = [0u8; 64];
        for (pair, byte) in out.chunks_exact_mut(2).zip(self.0) {
            if let [hi, lo] = pair {
                *hi = *DIGITS.get(usize::from(byte >> 4)).unwrap_or(&b'0');
                *lo = *DIGITS.get(usize::from(byte & 0x0f)).unwrap_or(&b'0');
            }
        }
        out
    }

    /// The 32 raw bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for ChainHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(std::str::from_utf8(&self.hex_digits()).map_err(|_| fmt::Error)?)
    }
}

impl fmt::Debug for ChainHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChainHash({self})")
    }
}

impl Serialize for ChainHash {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let digits = self.hex_digits();
        s.serialize_str(std::str::from_utf8(&digits).map_err(serde::ser::Error::custom)?)
    }
}

impl<'de> Deserialize<'de> for ChainHash {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::from_hex(&s)
            .ok_or_else(|| serde::de::Error::custom("expected 64 lowercase hex digits"))
    }
}

impl Serialize for Record {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let time = format_time(self.time).map_err(serde::ser::Error::custom)?;
        WireOut::new(self.seq, &time, &self.event, &self.prev, Some(&self.hash)).serialize(s)
    }
}

/// Why a line is not a good record on its own (chain links are checked elsewhere).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LineFault {
    Malformed,
    Edited,
}

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

/// Whether any byte is `"`, `\` or a control character. Checked 16 bytes at a time without
/// branches inside a block, which the compiler turns into vector compares.
fn needs_escape(bytes: &[u8]) -> bool {
    let bad = |b: u8| (b < 0x20) | (b == b'"') | (b == b'\\');
    let mut blocks = bytes.chunks_exact(16);
    for block in &mut blocks {
        if block.iter().fold(false, |any, &b| any | bad(b)) {
            return true;
        }
    }
    blocks.remainder().iter().any(|&b| bad(b))
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

/// Parses one line (without its newline) and checks its own hash against its content.
pub(crate) fn parse_line(line: &[u8]) -> Result<Record, LineFault> {
    let split = line
        .len()
        .checked_sub(HASH_SUFFIX_LEN)
        .ok_or(LineFault::Malformed)?;
    let (head, tail) = line.split_at_checked(split).ok_or(LineFault::Malformed)?;
    if !tail.starts_with(HASH_KEY) || !tail.ends_with(b"\"}") {
        return Err(LineFault::Malformed);
    }
    let wire: WireIn = serde_json::from_slice(line).map_err(|_| LineFault::Malformed)?;
    let time = parse_time(&wire.time).ok_or(LineFault::Malformed)?;
    if wire.seq == 0 || wire.seq == u64::MAX {
        return Err(LineFault::Malformed);
    }
    let mut canonical = Vec::with_capacity(head.len() + 1);
    canonical.extend_from_slice(head);
    canonical.push(b'}');
    if ChainHash::of(&wire.prev, &canonical) != wire.hash {
        return Err(LineFault::Edited);
    }
    Ok(Record {
        seq: wire.seq,
        time,
        event: AuditEvent {
            component: wire.component,
            actor: wire.actor,
            action: wire.action,
            subject: wire.subject,
            outcome: wire.outcome,
            reason: wire.reason,
            source: wire.source,
            request_id: wire.request_id,
            trust_domain: wire.trust_domain,
            details: wire.details,
        },
        prev: wire.prev,
        hash: wire.hash,
    })
}

/// `t` in UTC, cut to the microsecond, as `YYYY-MM-DDTHH:MM:SS.ffffffZ`.
pub(crate) fn format_time(t: OffsetDateTime) -> Result<String, AuditError> {
    let Some(t) = t
        .checked_to_offset(UtcOffset::UTC)
        .filter(|t| (0..=9999).contains(&t.year()))
    else {
        return Err(AuditError::BadTime(t.to_string()));
    };
    Ok(format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.microsecond()
    ))
}

/// Parses a time only in the exact spelling [`format_time`] writes.
fn parse_time(s: &str) -> Option<OffsetDateTime> {
    let t = OffsetDateTime::parse(s, &Rfc3339).ok()?;
    (format_time(t).ok()? == s).then_some(t)
}

/// The record as written, field order = wire order; `hash: None` gives the canonical JSON.
#[derive(Serialize)]
struct WireOut<'a> {
    seq: u64,
    time: &'a str,
    component: Component,
    actor: &'a str,
    action: Action,
    subject: &'a str,
    outcome: Outcome,
    reason: Option<&'a str>,
    source: Option<&'a str>,
    request_id: Option<&'a str>,
    trust_domain: Option<&'a str>,
    details: &'a BTreeMap<String, serde_json::Value>,
    prev: &'a ChainHash,
    #[serde(skip_serializing_if = "Option::is_none")]
    hash: Option<&'a ChainHash>,
}

impl<'a> WireOut<'a> {
    fn new(
        seq: u64,
        time: &'a str,
        e: &'a AuditEvent,
        prev: &'a ChainHash,
        hash: Option<&'a ChainHash>,
    ) -> Self {
        Self {
            seq,
            time,
            component: e.component,
            actor: &e.actor,
            action: e.action,
            subject: &e.subject,
            outcome: e.outcome,
            reason: e.reason.as_deref(),
            source: e.source.as_deref(),
            request_id: e.request_id.as_deref(),
            trust_domain: e.trust_domain.as_deref(),
            details: &e.details,
            prev,
            hash,
        }
    }
}

/// The record as read: every field required (`null` allowed for the optional ones), no others.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WireIn {
    seq: u64,
    time: String,
    component: Component,
    actor: String,
    action: Action,
    subject: String,
    outcome: Outcome,
    #[serde(deserialize_with = "present")]
    reason: Option<String>,
    #[serde(deserialize_with = "present")]
    source: Option<String>,
    #[serde(deserialize_with = "present")]
    request_id: Option<String>,
    #[serde(deserialize_with = "present")]
    trust_domain: Option<String>,
    details: BTreeMap<String, serde_json::Value>,
    prev: ChainHash,
    hash: ChainHash,
}

/// Deserializes an `Option` that must be present (serde lets a plain `Option` field go missing).
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    Option::<T>::deserialize(d)
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
    fn encoded_line_parses_back_and_reserializes_to_the_same_bytes() {
        let (line, hash) =
            encode_line(7, "2026-11-27T14:21:22.123456Z", &event(), &ChainHash::ZERO).unwrap();
        let text = std::str::from_utf8(&line).unwrap();
        let body = text.strip_suffix('\n').unwrap();
        let record = parse_line(body.as_bytes()).unwrap();
        assert_eq!(record.seq, 7);
        assert_eq!(record.hash, hash);
        assert_eq!(record.event, event());
        assert_eq!(serde_json::to_string(&record).unwrap(), body);
    }

    #[test]
    fn a_missing_optional_field_is_malformed() {
        let (line, _) =
            encode_line(1, "2026-11-27T14:21:22.123456Z", &event(), &ChainHash::ZERO).unwrap();
        let text = String::from_utf8(line)
            .unwrap()
            .replace("\"reason\":null,", "");
        assert_eq!(
            parse_line(text.trim_end().as_bytes()),
            Err(LineFault::Malformed)
        );
    }

    #[test]
    fn an_unknown_field_or_a_second_hash_is_malformed() {
        let (line, _) =
            encode_line(1, "2026-11-27T14:21:22.123456Z", &event(), &ChainHash::ZERO).unwrap();
        let text = String::from_utf8(line).unwrap();
        let extra = text.replace("{\"seq\"", "{\"x\":1,\"seq\"");
        assert_eq!(
            parse_line(extra.trim_end().as_bytes()),
            Err(LineFault::Malformed)
        );
        let twice = text.replace("{\"seq\":1,", "{\"seq\":1,\"hash\":\"00\",");
        assert_eq!(
            parse_line(twice.trim_end().as_bytes()),
            Err(LineFault::Malformed)
        );
    }

    #[test]
    fn time_is_utc_to_the_microsecond_and_parsed_only_in_that_spelling() {
        let t = OffsetDateTime::parse("2026-11-27T15:21:22.1234567+01:00", &Rfc3339).unwrap();
        assert_eq!(format_time(t).unwrap(), "2026-11-27T14:21:22.123456Z");
        assert!(parse_time("2026-11-27T14:21:22.123456Z").is_some());
        assert!(parse_time("2026-11-27T14:21:22.123Z").is_none());
        assert!(parse_time("2026-11-27T15:21:22.123456+01:00").is_none());
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

    #[test]
    fn chain_hash_hex_is_strict() {
        let h = ChainHash::of(&ChainHash::ZERO, b"{}");
        assert_eq!(ChainHash::from_hex(&h.to_hex()), Some(h));
        assert_eq!(ChainHash::from_hex(&h.to_hex().to_uppercase()), None);
        assert_eq!(ChainHash::from_hex("00"), None);
        assert_eq!(ChainHash::ZERO.to_hex(), "0".repeat(64));
    }
}
