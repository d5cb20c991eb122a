//! The synchronous core of the audit log: opening a log (verifying its chain, cutting off a
//! torn tail left by a crash, going on from a rotated file), appending records, and syncing
//! them to disk. Checkpoints and rotation are in `upkeep`.

mod file;
mod upkeep;

use std::fmt;
use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use time::OffsetDateTime;

use self::file::{ReadAt, is_at, open_locked};
use self::upkeep::Checkpointing;
use crate::checkpoint::{CheckpointPolicy, CheckpointSigner, Trigger};
use crate::record::{Body, Middle, encode_line_into, format_time};
use crate::rotation::{Rotation, newest_rotated};
use crate::verify::{Scan, Start, VerifySummary, scan};
use crate::{
    Action, AuditError, AuditEvent, ChainHash, Clock, Component, Damage, Outcome, SystemClock,
};

/// The actor of the events this crate writes on its own (`log_recovered`, `gap`).
pub const SYSTEM_ACTOR: &str = "system";

/// Encoded records are handed to the kernel once this many bytes are waiting.
const WRITE_CHUNK: usize = 1 << 20;

/// Appends records to one log file. Writers in several processes may share a file: each holds
/// the file's exclusive lock (flock) from the first append of a batch until the batch is
/// written out, catches up with records another process appended (the CLI next to a running
/// CA), and follows the file when another process rotated it.
///
/// Appends are buffered; [`AuditWriter::sync`] makes them durable. After any failed write or
/// sync the writer stops (what reached the file is unknown) and every call returns
/// [`AuditError::Failed`]; reopening the log repairs a torn tail and continues the chain.
///
/// With a [`CheckpointSigner`] (see [`LogOptions`]) the writer signs the chain head: when it
/// opens the log, every N records or T seconds, before it rotates a file, and at
/// [`AuditWriter::close`].
pub struct AuditWriter {
    path: PathBuf,
    file: Arc<File>,
    /// Encoded records not yet handed to the kernel.
    buf: Vec<u8>,
    component: Component,
    clock: Box<dyn Clock>,
    next_seq: u64,
    head: ChainHash,
    failed: Option<String>,
    /// The file's length as far as we know: if it grew past this, another process appended.
    file_len: u64,
    /// Whether we hold the file's exclusive lock (from the first append of a batch to its
    /// write-out).
    locked: bool,
    /// The seq of the current file's first record (0 while it has none), and its time.
    file_first: Option<(u64, OffsetDateTime)>,
    rotation: Rotation,
    checkpoints: Option<Checkpointing>,
}

/// What [`AuditWriter::open`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenReport {
    /// The file did not exist and was created (mode 0600).
    pub created: bool,
    /// Whole, verified records found in the file.
    pub records: u64,
    /// Set when a torn final line was cut off.
    pub recovered: Option<Recovery>,
}

/// A torn final line that [`AuditWriter::open`] cut off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recovery {
    /// What was wrong with the final line (`Truncated`, `Malformed` or `Edited`).
    pub damage: Damage,
    /// Bytes cut off the end of the file.
    pub bytes_dropped: u64,
    /// The seq of the last whole record kept (0 if none).
    pub last_good_seq: u64,
    /// The seq of the `log_recovered` record written about it.
    pub recorded_at: u64,
}

/// How a writer signs and rotates its log. The default does neither.
#[derive(Clone, Default)]
pub struct LogOptions {
    signer: Option<Arc<dyn CheckpointSigner>>,
    checkpoints: CheckpointPolicy,
    rotation: Rotation,
}

impl LogOptions {
    /// No checkpoints, no rotation.
    pub fn new() -> Self {
        Self::default()
    }

    /// Signs checkpoints with the signer's current key, as often as `policy` says.
    #[must_use]
    pub fn signed(mut self, signer: Arc<dyn CheckpointSigner>, policy: CheckpointPolicy) -> Self {
        self.signer = Some(signer);
        self.checkpoints = policy;
        self
    }

    /// Rotates files by size or age.
    #[must_use]
    pub fn rotation(mut self, rotation: Rotation) -> Self {
        self.rotation = rotation;
        self
    }
}

impl fmt::Debug for LogOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogOptions")
            .field("signed", &self.signer.is_some())
            .field("checkpoints", &self.checkpoints)
            .field("rotation", &self.rotation)
            .finish()
    }
}

impl AuditWriter {
    /// Opens the log at `path` for `component`, creating it if needed, with the system clock.
    /// See [`AuditWriter::open_with_clock`].
    pub fn open(
        path: impl AsRef<Path>,
        component: Component,
    ) -> Result<(Self, OpenReport), AuditError> {
        Self::open_with(path, component, SystemClock, LogOptions::new())
    }

    /// [`AuditWriter::open_with`] without checkpoints or rotation.
    pub fn open_with_clock(
        path: impl AsRef<Path>,
        component: Component,
        clock: impl Clock + 'static,
    ) -> Result<(Self, OpenReport), AuditError> {
        Self::open_with(path, component, clock, LogOptions::new())
    }

    /// Opens the log at `path`, creating it (mode 0600) if it does not exist. A new or empty
    /// file whose log was rotated goes on from the newest rotated file (`<path>.<seq>`).
    ///
    /// An existing log is read to the end and its whole chain verified (from its first record:
    /// a file may continue a rotated one). If only the final line is bad (no newline, not a
    /// record, or a hash that does not match) it is what a crash leaves: the file is cut back
    /// to the last good record, synced, and a `log_recovered` record (details `bytes_dropped`,
    /// `last_good_seq`, `damage`) is appended and synced. Damage before the final line is
    /// tampering, not a crash: nothing is changed and [`AuditError::Chain`] names the seq and
    /// the kind. With a signer, an `open` checkpoint signs the head found (seq 0 for a new log).
    ///
    /// `component` is the writer's own, used for the records this crate writes itself.
    pub fn open_with(
        path: impl AsRef<Path>,
        component: Component,
        clock: impl Clock + 'static,
        options: LogOptions,
    ) -> Result<(Self, OpenReport), AuditError> {
        let path = path.as_ref();
        // Other processes (the CLI next to a running CA) append to the same log: all writers
        // hold the file's exclusive lock while they read the tail and append.
        let (file, created) = open_locked(path)?;
        let mut chain = VerifySummary::EMPTY;
        let mut torn = None;
        if !created {
            match scan(ReadAt::new(&file), Start::Anywhere).map_err(AuditError::io(path, "read"))? {
                Scan::Sound(summary) => chain = summary,
                Scan::Damaged {
                    error,
                    offset,
                    is_final: true,
                    before,
                } if matches!(
                    error.kind,
                    Damage::Truncated | Damage::Malformed | Damage::Edited
                ) =>
                {
                    let len = file.metadata().map_err(AuditError::io(path, "stat"))?.len();
                    file.set_len(offset)
                        .map_err(AuditError::io(path, "truncate"))?;
                    file.sync_all().map_err(AuditError::io(path, "sync"))?;
                    chain = before;
                    torn = Some((error.kind, len.saturating_sub(offset)));
                }
                Scan::Damaged { error, .. } => {
                    return Err(AuditError::Chain {
                        path: path.to_owned(),
                        error,
                    });
                }
            }
        }
        let records = chain.records;
        let file_first = match chain.first_seq {
            0 => None,
            seq => Some((seq, first_time(&file).unwrap_or(OffsetDateTime::UNIX_EPOCH))),
        };
        if chain.records == 0 {
            chain = rotated_head(path)?;
        }
        let file_len = file.metadata().map_err(AuditError::io(path, "stat"))?.len();
        // The clock is read only when a record is written or checkpoints are counted: tests
        // drive writers with clocks that tick per call.
        let checkpoints = options.signer.map(|signer| {
            Checkpointing::new(signer, options.checkpoints, chain.last_seq, clock.now())
        });
        let mut writer = Self {
            path: path.to_owned(),
            file: Arc::new(file),
            buf: Vec::with_capacity(WRITE_CHUNK + crate::MAX_LINE_BYTES),
            component,
            clock: Box::new(clock),
            next_seq: chain.last_seq.saturating_add(1),
            head: chain.head_hash,
            failed: None,
            file_len,
            locked: true,
            file_first,
            rotation: options.rotation,
            checkpoints,
        };
        let mut report = OpenReport {
            created,
            records,
            recovered: None,
        };
        if let Some((damage, bytes_dropped)) = torn {
            let event = AuditEvent::new(
                component,
                SYSTEM_ACTOR,
                Action::LogRecovered,
                path.display().to_string(),
                Outcome::Success,
            )
            .with_reason(format!("cut off a torn final line: {damage}"))
            .with_detail("bytes_dropped", bytes_dropped)
            .with_detail("last_good_seq", chain.last_seq)
            .with_detail("damage", damage.code());
            let now = writer.clock.now();
            let recorded_at = writer.append_at(Middle::Event(&event), now)?;
            report.recovered = Some(Recovery {
                damage,
                bytes_dropped,
                last_good_seq: chain.last_seq,
                recorded_at,
            });
        }
        // Every run starts with a checkpoint, a new log too (it signs the empty head, seq 0):
        // the log's first promise of an interval, so a signed log is never without one.
        if writer.checkpoints.is_some() {
            let now = writer.clock.now();
            writer.write_checkpoint(Trigger::Open, now)?;
        }
        writer.sync()?;
        Ok((writer, report))
    }

    /// Appends `event` as the next record (buffered; see [`AuditWriter::sync`]) and returns its
    /// seq. The record's time is the clock's now. May rotate the file first, and write a
    /// checkpoint after the record.
    pub fn append(&mut self, event: &AuditEvent) -> Result<u64, AuditError> {
        self.append_middle(Middle::Event(event))
    }

    /// [`AuditWriter::append`] for an event whose body the caller's thread encoded.
    pub(crate) fn append_body(&mut self, body: &Body) -> Result<u64, AuditError> {
        self.append_middle(Middle::Body(body))
    }

    fn append_middle(&mut self, middle: Middle<'_>) -> Result<u64, AuditError> {
        self.check()?;
        self.lock_and_catch_up()?;
        let now = self.clock.now();
        self.rotate_if_due(now)?;
        let seq = self.append_at(middle, now)?;
        self.checkpoint_if_counted(now)?;
        Ok(seq)
    }

    /// Encodes one record at `now` into the buffer; writes the buffer out when it is full.
    fn append_at(&mut self, middle: Middle<'_>, now: OffsetDateTime) -> Result<u64, AuditError> {
        let seq = self.next_seq;
        if seq == u64::MAX {
            return Err(AuditError::Internal("audit sequence numbers exhausted"));
        }
        let time = format_time(now)?;
        self.head = encode_line_into(&mut self.buf, seq, &time, middle, &self.head)?;
        self.next_seq = seq.saturating_add(1);
        self.file_first.get_or_insert((seq, now));
        if self.buf.len() >= WRITE_CHUNK {
            self.write_buf()?;
        }
        Ok(seq)
    }

    /// Writes out the buffer and syncs the file's data to disk (`fdatasync`).
    pub fn sync(&mut self) -> Result<(), AuditError> {
        let file = self.write_out()?;
        if let Err(e) = file.sync_data() {
            return Err(self.stop("sync", e));
        }
        Ok(())
    }

    /// Hands what is buffered to the kernel and releases the lock, without waiting for the
    /// disk; returns the file to sync. The sink syncs it on another thread while this one
    /// encodes the next batch.
    pub(crate) fn write_out(&mut self) -> Result<Arc<File>, AuditError> {
        self.check()?;
        self.write_buf()?;
        self.unlock();
        Ok(Arc::clone(&self.file))
    }

    fn write_buf(&mut self) -> Result<(), AuditError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        if let Err(e) = (&*self.file).write_all(&self.buf) {
            self.buf.clear();
            return Err(self.stop("write", e));
        }
        self.file_len = self.file_len.saturating_add(self.buf.len() as u64);
        self.buf.clear();
        Ok(())
    }

    /// Takes the file's lock for a batch. If another process rotated the file, follows it; if
    /// another process appended since our last write, re-reads and verifies the chain so the
    /// next record continues it.
    fn lock_and_catch_up(&mut self) -> Result<(), AuditError> {
        if self.locked {
            return Ok(());
        }
        if let Err(e) = self.file.lock() {
            return Err(self.stop("lock", e));
        }
        self.locked = true;
        match is_at(&self.file, &self.path) {
            Ok(true) => {}
            Ok(false) => {
                self.catch_up()?;
                return self.follow_rotation();
            }
            Err(e) => return Err(self.stop("stat", e)),
        }
        self.catch_up()
    }

    /// Re-reads our file if it grew past what we wrote.
    fn catch_up(&mut self) -> Result<(), AuditError> {
        let len = match self.file.metadata() {
            Ok(m) => m.len(),
            Err(e) => return Err(self.stop("stat", e)),
        };
        if len == self.file_len {
            return Ok(());
        }
        match scan(ReadAt::new(&self.file), Start::Anywhere) {
            Ok(Scan::Sound(summary)) => {
                if summary.records > 0 {
                    self.next_seq = summary.last_seq.saturating_add(1);
                    self.head = summary.head_hash;
                    if self.file_first.is_none() {
                        let first = first_time(&self.file).unwrap_or(OffsetDateTime::UNIX_EPOCH);
                        self.file_first = Some((summary.first_seq, first));
                    }
                }
                self.file_len = len;
                Ok(())
            }
            Ok(Scan::Damaged { error, .. }) => {
                self.unlock();
                Err(AuditError::Chain {
                    path: self.path.clone(),
                    error,
                })
            }
            Err(e) => Err(self.stop("read", e)),
        }
    }

    fn unlock(&mut self) {
        if self.locked {
            let _ = self.file.unlock();
            self.locked = false;
        }
    }

    /// The seq of the last record appended (0 for an empty log).
    pub fn last_seq(&self) -> u64 {
        self.next_seq.saturating_sub(1)
    }

    /// The hash of the last record appended ([`ChainHash::ZERO`] for an empty log).
    pub fn head(&self) -> ChainHash {
        self.head
    }

    /// The log file (the active one; rotated files are beside it).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The component this writer writes for.
    pub fn component(&self) -> Component {
        self.component
    }

    /// Why the writer stopped, if it did.
    pub fn failure(&self) -> Option<&str> {
        self.failed.as_deref()
    }

    fn check(&self) -> Result<(), AuditError> {
        match &self.failed {
            Some(cause) => Err(AuditError::Failed {
                cause: cause.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Stops the writer after an I/O failure and returns the error.
    fn stop(&mut self, op: &'static str, source: io::Error) -> AuditError {
        let error = AuditError::io(&self.path, op)(source);
        self.fail(error.to_string());
        error
    }

    /// Stops the writer: a failure found elsewhere (the sink's sync thread).
    pub(crate) fn fail(&mut self, cause: String) {
        self.failed.get_or_insert(cause);
        self.buf.clear();
        self.unlock();
    }
}

/// The chain head a new or empty file goes on from: the newest rotated file's, if any.
fn rotated_head(path: &Path) -> Result<VerifySummary, AuditError> {
    let Some(rotated) = newest_rotated(path).map_err(AuditError::io(path, "list"))? else {
        return Ok(VerifySummary::EMPTY);
    };
    let file = File::open(&rotated).map_err(AuditError::io(&rotated, "open"))?;
    match scan(file, Start::Anywhere).map_err(AuditError::io(&rotated, "read"))? {
        Scan::Sound(summary) => Ok(summary),
        Scan::Damaged { error, .. } => Err(AuditError::Chain {
            path: rotated,
            error,
        }),
    }
}

/// The time of the file's first record (for rotation by age).
fn first_time(file: &File) -> Option<OffsetDateTime> {
    let mut lines = crate::verify::LineReader::new(ReadAt::new(file));
    lines.next_line().ok().flatten()?;
    crate::record::parse_line(&lines.buf).ok().map(|r| r.time)
}

#[cfg(test)]
impl AuditWriter {
    /// A writer over an already open file, skipping the open-time checks (for failure tests).
    pub(crate) fn over(file: File, path: &Path) -> Self {
        Self {
            path: path.to_owned(),
            file: Arc::new(file),
            buf: Vec::new(),
            component: Component::Ca,
            clock: Box::new(SystemClock),
            next_seq: 1,
            head: ChainHash::ZERO,
            failed: None,
            file_len: 0,
            locked: false,
            file_first: None,
            rotation: Rotation::never(),
            checkpoints: None,
        }
    }
}

impl Drop for AuditWriter {
    /// Syncs what is buffered, best effort: call [`AuditWriter::sync`] or
    /// [`AuditWriter::close`] to see errors.
    fn drop(&mut self) {
        if self.failed.is_none()
            && let Err(e) = self.sync()
        {
            tracing::error!(error = %e, "audit log not synced on close");
        }
    }
}

impl fmt::Debug for AuditWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditWriter")
            .field("path", &self.path)
            .field("component", &self.component)
            .field("next_seq", &self.next_seq)
            .field("head", &self.head)
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}
