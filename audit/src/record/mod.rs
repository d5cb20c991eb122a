//! The record on disk: an event with its seq, time and chain links, and the exact bytes of its
//! JSON line (see the crate docs for the format and the hash input).

use std::collections::BTreeMap;
use std::fmt;

use ring::digest;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use time::format_description::well_known::Rfc3339;
use time::{OffsetDateTime, UtcOffset};

use crate::{Action, AuditError, AuditEvent, Component, Outcome};

mod encode;

#[cfg(test)]
pub(crate) use encode::encode_line;
pub(crate) use encode::{Body, Middle, encode_body, encode_line_into};

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
    fn chain_hash_hex_is_strict() {
        let h = ChainHash::of(&ChainHash::ZERO, b"{}");
        assert_eq!(ChainHash::from_hex(&h.to_hex()), Some(h));
        assert_eq!(ChainHash::from_hex(&h.to_hex().to_uppercase()), None);
        assert_eq!(ChainHash::from_hex("00"), None);
        assert_eq!(ChainHash::ZERO.to_hex(), "0".repeat(64));
    }
}
