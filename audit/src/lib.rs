//! meshgate's audit log: typed events appended to a hash-chained JSON Lines file, so that an
//! edited, removed, reordered or inserted record shows.
//!
//! Servers hand events to an [`AuditSink`] (a bounded queue in front of one writer thread that
//! appends in batches and syncs once per batch); tools use the [`AuditWriter`] directly;
//! auditors use [`verify_file`] and [`read_records`]. A record never holds a token, a key or a
//! request body.
//!
//! # The file
//!
//! One record per line, each a compact JSON object (serde_json, no spaces) ending in `\n`, with
//! exactly these fields in this order:
//!
//! | field | value |
//! |---|---|
//! | `seq` | 1 for the first record, then +1 per record |
//! | `time` | when written: UTC, RFC 3339, exactly six fractional digits, `Z` |
//! | `component` | `ca`, `gateway`, `cli` |
//! | `actor` | a SPIFFE ID, `operator:<user>`, `anonymous`, or `system` (this crate) |
//! | `action` | snake_case, e.g. `svid_issue`, `token_reject`, `log_recovered` |
//! | `subject` | what was acted on |
//! | `outcome` | `success`, `failure`, `denied` |
//! | `reason`, `source`, `request_id`, `trust_domain` | a string or `null` (always present) |
//! | `details` | an object, keys sorted |
//! | `prev` | the previous record's `hash`; 64 `0`s for the first record |
//! | `hash` | see below |
//!
//! ```text
//! {"seq":1,"time":"2026-11-27T14:21:22.123456Z","component":"ca","actor":"operator:alice","action":"ca_init","subject":"spiffe://example.org","outcome":"success","reason":null,"source":null,"request_id":null,"trust_domain":"example.org","details":{},"prev":"0000000000000000000000000000000000000000000000000000000000000000","hash":"…"}
//! ```
//!
//! # The hash
//!
//! `hash` = lowercase hex of SHA-256 over the ASCII bytes of `prev` (its 64 hex digits)
//! followed by the record's canonical JSON: the line exactly as written but without its
//! `hash` field, i.e. the line minus its trailing `,"hash":"<64 hex>"}` plus a closing `}`.
//! (`hash` is always last, so cutting bytes is exact; no JSON re-encoding is needed.)
//! Recomputing a whole chain:
//!
//! ```python
//! import hashlib, json
//! prev = "0" * 64
//! for raw in open("audit.jsonl", "rb"):
//!     line = raw.rstrip(b"\n")
//!     rec = json.loads(line)
//!     canonical = line[: line.rindex(b',"hash":"')] + b"}"
//!     assert rec["prev"] == prev, rec["seq"]
//!     assert hashlib.sha256(rec["prev"].encode() + canonical).hexdigest() == rec["hash"], rec["seq"]
//!     prev = rec["hash"]
//! ```
//!
//! The chain shows changes to records; signed checkpoints (see `docs/audit.md`) sign the chain
//! head with the component's SVID key, so that a log verifies against the trust bundle alone
//! and records cut off after the signed part show. Files rotate by size or age, the chain
//! going on from file to file.

#![forbid(unsafe_code)]

mod checkpoint;
mod clock;
mod error;
mod event;
mod export;
mod record;
mod rotation;
mod sink;
mod verify;
mod verify_logs;
mod writer;

pub use checkpoint::{
    CheckpointFault, CheckpointPolicy, CheckpointSigner, MAX_EVERY_SECONDS, Trigger,
    trust_roots_from_pem,
};
pub use clock::{Clock, SystemClock};
pub use error::{AuditError, ChainError, Damage};
pub use event::{Action, AuditEvent, Component, Outcome};
pub use export::{
    CSV_COLUMNS, ExportFormat, ExportOptions, ExportReport, ExportedRange, InputReport,
    OCSF_VERSION, OcsfClass, OcsfClassCount, export,
};
pub use record::{ChainHash, MAX_LINE_BYTES, Record};
pub use rotation::{LogFiles, Rotation, group_files, rotated_name};
pub use sink::{AuditSink, Durable, MAX_BATCH};
pub use verify::{Records, VerifySummary, read_records, verify_file};
pub use verify_logs::{CLOCK_STEP_SECS, LogDamage, LogReport, VerifyOptions, verify_log};
pub use writer::{AuditWriter, LogOptions, OpenReport, Recovery, SYSTEM_ACTOR};
