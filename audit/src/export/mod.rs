//! Export: merges several logs into one stream in time order, filtered by time, as JSON Lines,
//! CSV or OCSF events, verifying each log's chain as it is read; memory stays constant whatever
//! the logs' size (one record per log, plus a small output buffer).
//!
//! JSON Lines export copies each record's line byte for byte, so every exported record still
//! verifies with the hash recipe; which log a record came from, and where each log's chain
//! starts and ends, are in the manifest ([`ExportReport::manifest`]), not in the records. OCSF
//! export turns each record into one OCSF 1.8 event that carries the record's `seq`, `prev` and
//! `hash`, and the manifest counts the events of each class.

mod csv;
mod jsonl;
mod manifest;
mod merge;
mod ocsf;
mod stream;

use std::io::Write;
use std::path::{Path, PathBuf};

use ring::digest;
use time::OffsetDateTime;

use self::merge::Merge;
pub use self::ocsf::{OCSF_VERSION, OcsfClass, OcsfClassCount};
use crate::{AuditError, ChainError, ChainHash, Record};

/// The columns of a CSV export, in order: the source log, then the record's fields.
pub const CSV_COLUMNS: [&str; 15] = csv::HEADER;

/// Output is handed to the writer in chunks of about this size.
const CHUNK: usize = 64 * 1024;

/// What an export writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ExportFormat {
    /// The records' lines exactly as in their logs, one per line.
    Jsonl,
    /// RFC 4180 CSV with a header row ([`CSV_COLUMNS`]).
    Csv,
    /// OCSF 1.8 events, one JSON object per line, one event per record.
    Ocsf,
}

impl ExportFormat {
    /// The name on the command line and in the manifest.
    pub fn name(self) -> &'static str {
        match self {
            Self::Jsonl => "jsonl",
            Self::Csv => "csv",
            Self::Ocsf => "ocsf",
        }
    }
}

/// How to export: the format, the time window, and whether damaged logs may be exported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExportOptions {
    format: ExportFormat,
    since: Option<OffsetDateTime>,
    until: Option<OffsetDateTime>,
    allow_damaged: bool,
}

impl ExportOptions {
    /// Every record of every log, in `format`; a damaged log fails the export.
    pub fn new(format: ExportFormat) -> Self {
        Self {
            format,
            since: None,
            until: None,
            allow_damaged: false,
        }
    }

    /// Only records written at or after `t`.
    #[must_use]
    pub fn since(mut self, t: OffsetDateTime) -> Self {
        self.since = Some(t);
        self
    }

    /// Only records written before `t` (so consecutive windows never share a record).
    #[must_use]
    pub fn until(mut self, t: OffsetDateTime) -> Self {
        self.until = Some(t);
        self
    }

    /// With `true`, a damaged log does not fail the export: the records that are whole on their
    /// own are exported, the lines that are not are skipped, and the report names the damage.
    #[must_use]
    pub fn allow_damaged(mut self, allow: bool) -> Self {
        self.allow_damaged = allow;
        self
    }

    fn covers(&self, t: OffsetDateTime) -> bool {
        self.since.is_none_or(|since| t >= since) && self.until.is_none_or(|until| t < until)
    }
}

/// What an export read and wrote: the content of its manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ExportReport {
    pub format: ExportFormat,
    pub since: Option<OffsetDateTime>,
    pub until: Option<OffsetDateTime>,
    /// One per log, in the order given.
    pub inputs: Vec<InputReport>,
    /// Records written.
    pub exported: u64,
    /// The earliest and latest time among the records written.
    pub first_time: Option<OffsetDateTime>,
    pub last_time: Option<OffsetDateTime>,
    /// Bytes written, and their SHA-256 (lowercase hex), header row included.
    pub output_bytes: u64,
    pub output_sha256: String,
    /// For an OCSF export, the events written of each class (every class, zeros too); they
    /// add up to `exported`. Empty for the other formats.
    pub ocsf_classes: Vec<OcsfClassCount>,
}

/// One log as the export read it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct InputReport {
    pub path: PathBuf,
    /// Records read (when damaged: those whole on their own).
    pub records: u64,
    pub first_seq: u64,
    pub last_seq: u64,
    /// The last record's hash: the chain head when `damage` is `None`.
    pub head: ChainHash,
    /// The first damage, as [`crate::verify_file`] names it; `None` when the chain verified.
    pub damage: Option<ChainError>,
    /// Lines that are not whole records, so were not exported.
    pub skipped_lines: u64,
    /// The part of this log that was written.
    pub exported: ExportedRange,
}

/// The records of one log that an export wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct ExportedRange {
    pub records: u64,
    /// 0 when none.
    pub first_seq: u64,
    pub last_seq: u64,
    /// The `prev` of the first record written: where the exported part hangs off the chain.
    pub first_prev: Option<ChainHash>,
    /// The `hash` of the last record written.
    pub last_hash: Option<ChainHash>,
    /// Whether the records written have consecutive seqs, so their chain links can be walked
    /// from `first_prev` to `last_hash`. False only when the log's clock stepped back across
    /// the window's edge, or the log is damaged.
    pub contiguous: bool,
}

impl ExportedRange {
    fn add(&mut self, record: &Record) {
        if self.records == 0 {
            self.first_seq = record.seq;
            self.first_prev = Some(record.prev);
            self.contiguous = true;
        } else if record.seq != self.last_seq.saturating_add(1) {
            self.contiguous = false;
        }
        self.records += 1;
        self.last_seq = record.seq;
        self.last_hash = Some(record.hash);
    }
}

/// Merges the records of `logs` in time order into `out` (named `out_name` in errors). A
/// log's rotated files (`X.<seq>`) given with `X` are read as one log, in chain order.
///
/// Each log is verified as it is read. A damaged log ends the export with
/// [`AuditError::Chain`] naming the log, the seq and the kind, unless damage is allowed (see
/// [`ExportOptions::allow_damaged`]); what was written to `out` before that is incomplete.
/// A log that cannot be opened or read fails the export either way.
pub fn export<P: AsRef<Path>, W: Write>(
    logs: &[P],
    options: &ExportOptions,
    out: W,
    out_name: &Path,
) -> Result<ExportReport, AuditError> {
    // A rotated log's files (`X.<seq>` with `X`) are read as one log, in chain order.
    let paths: Vec<PathBuf> = logs.iter().map(|p| p.as_ref().to_owned()).collect();
    let logs = crate::group_files(&paths);
    let mut merge = Merge::open(&logs, options.allow_damaged)?;
    let names: Vec<String> = logs.iter().map(|l| l.log.display().to_string()).collect();
    let mut out = Output::new(out, out_name);
    let mut ranges = vec![ExportedRange::default(); logs.len()];
    let mut window: Option<(OffsetDateTime, OffsetDateTime)> = None;
    let mut exported = 0u64;
    let mut ocsf_classes = if options.format == ExportFormat::Ocsf {
        ocsf::zero_counts()
    } else {
        Vec::new()
    };
    let mut buf = Vec::with_capacity(CHUNK * 2);
    if options.format == ExportFormat::Csv {
        csv::write_header(&mut buf);
    }
    while let Some(i) = merge.next()? {
        let missing = AuditError::Internal("the merge named a log it does not hold");
        let (Some(stream), Some(range), Some(name)) =
            (merge.stream(i), ranges.get_mut(i), names.get(i))
        else {
            return Err(missing);
        };
        let Some(record) = stream.current() else {
            return Err(missing);
        };
        if !options.covers(record.time) {
            continue;
        }
        match options.format {
            ExportFormat::Jsonl => jsonl::write_record(&mut buf, stream.line()),
            ExportFormat::Csv => csv::write_record(&mut buf, name, record)?,
            ExportFormat::Ocsf => {
                let class = ocsf::write_record(&mut buf, name, record)?;
                let Some(count) = ocsf_classes.iter_mut().find(|c| c.class == class) else {
                    return Err(AuditError::Internal("an OCSF class has no count"));
                };
                count.events += 1;
            }
        }
        range.add(record);
        exported += 1;
        window = Some(match window {
            None => (record.time, record.time),
            Some((first, last)) => (first.min(record.time), last.max(record.time)),
        });
        if buf.len() >= CHUNK {
            out.write(&buf)?;
            buf.clear();
        }
    }
    out.write(&buf)?;
    let (output_bytes, output_sha256) = out.finish()?;
    let inputs = merge
        .into_streams()
        .iter()
        .zip(ranges)
        .map(|(stream, exported)| {
            let state = stream.state();
            InputReport {
                path: stream.path().to_owned(),
                records: state.records,
                first_seq: state.first_seq,
                last_seq: state.last_seq,
                head: state.head,
                damage: state.damage,
                skipped_lines: state.skipped_lines,
                exported,
            }
        })
        .collect();
    Ok(ExportReport {
        format: options.format,
        since: options.since,
        until: options.until,
        inputs,
        exported,
        first_time: window.map(|(first, _)| first),
        last_time: window.map(|(_, last)| last),
        output_bytes,
        output_sha256,
        ocsf_classes,
    })
}

/// The export's destination: counts and hashes what it writes, and names it in errors.
struct Output<'a, W> {
    inner: W,
    name: &'a Path,
    sha: digest::Context,
    bytes: u64,
}

impl<'a, W: Write> Output<'a, W> {
    fn new(inner: W, name: &'a Path) -> Self {
        Self {
            inner,
            name,
            sha: digest::Context::new(&digest::SHA256),
            bytes: 0,
        }
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), AuditError> {
        self.sha.update(bytes);
        self.bytes = self.bytes.saturating_add(bytes.len() as u64);
        self.inner.write_all(bytes).map_err(|e| self.error(e))
    }

    /// Flushes, and returns the byte count and the SHA-256 in hex.
    fn finish(mut self) -> Result<(u64, String), AuditError> {
        self.inner.flush().map_err(|e| self.error(e))?;
        Ok((self.bytes, hex::encode(self.sha.finish())))
    }

    fn error(&self, source: std::io::Error) -> AuditError {
        AuditError::Io {
            path: self.name.to_owned(),
            op: "write",
            source,
        }
    }
}
