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

use self::file::{ReadAt, is_at, last_line, open_locked, read_range};
use self::upkeep::Checkpointing;
use crate::checkpoint::{CheckpointPolicy, CheckpointSigner, Trigger};
use crate::record::{Body, Middle, encode_line_into, format_time, parse_line};
use crate::rotation::{Rotation, newest_rotated};
use crate::verify::{LineReader, Scan, Start, VerifySummary, check_line, scan};
use crate::{
    Action, AuditError, AuditEvent, ChainError, ChainHash, Clock, Component, Damage, Outcome,
    Record, SystemClock,
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
/// A writer only ever goes on from its own head: what another process appended must continue
/// it (the next seq, linked to the head), and is read from where the writer left off. A file
/// that got shorter, whose last record the writer knows is gone from its place, or that holds
/// records that do not continue the chain was rewritten behind the writer's back: it stops
/// with [`AuditError::Chain`] (and [`AuditError::Failed`] after that) rather than sign a head
/// it cannot vouch for.
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
    /// Where the line of the last record (seq `next_seq - 1`, hash `head`) starts in the
    /// current file; `None` while the file holds none (the head is in a rotated file, or the
    /// log is empty).
    last_at: Option<u64>,
    /// Records (lines) in the current file as far as we know.
    file_records: u64,
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
        let mut last_at = None;
        let mut torn = None;
        if !created {
            match scan(ReadAt::new(&file), Start::Anywhere).map_err(AuditError::io(path, "read"))? {
                Scan::Sound {
                    summary,
                    last_at: at,
                } => {
                    chain = summary;
                    last_at = at;
                }
                Scan::Damaged {
                    error,
                    offset,
                    is_final: true,
                    before,
                    before_last_at,
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
                    last_at = before_last_at;
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
        let first = (records > 0).then(|| first_record(&file)).flatten();
        let file_first = match chain.first_seq {
            0 => None,
            seq => Some((
                seq,
                first
                    .as_ref()
                    .map_or(OffsetDateTime::UNIX_EPOCH, |r| r.time),
            )),
        };
        if chain.records == 0 {
            chain = rotated_head(path)?;
        } else if chain.first_seq > 1 {
            continues_rotated(path, first.as_ref())?;
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
            last_at,
            file_records: records,
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
    /// seq. The record's time is the clock's now. May write a checkpoint that is due (records
    /// another process appended count too) and rotate the file first, and write a checkpoint
    /// after the record.
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
        // Records another process appended may have filled the interval already.
        self.checkpoint_if_full(now)?;
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
        let at = self.file_len.saturating_add(self.buf.len() as u64);
        self.head = encode_line_into(&mut self.buf, seq, &time, middle, &self.head)?;
        self.next_seq = seq.saturating_add(1);
        self.last_at = Some(at);
        self.file_records = self.file_records.saturating_add(1);
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

    /// Reads what another process appended to our file since we last wrote or read it, from
    /// where we left off (O(new bytes)); it must go on from our head. A file that got shorter,
    /// whose last record we know is no longer where it was, or whose new records do not
    /// continue our chain was rewritten behind our back: the writer stops rather than sign it.
    /// A torn final line (a writer in another process crashed mid-write) is refused without
    /// stopping: nothing is adopted, and the next writer to open the log cuts it off.
    fn catch_up(&mut self) -> Result<(), AuditError> {
        let len = match self.file.metadata() {
            Ok(m) => m.len(),
            Err(e) => return Err(self.stop("stat", e)),
        };
        if len == self.file_len {
            return Ok(());
        }
        if len < self.file_len {
            let error = self.at_head(Damage::Deleted);
            return Err(self.broken(
                error,
                "the file is shorter than what this writer wrote or read: it was cut back",
            ));
        }
        if let Some(at) = self.last_at {
            match self.still_holds_head(at) {
                Ok(true) => {}
                Ok(false) => {
                    let error = self.at_head(Damage::Edited);
                    return Err(self.broken(
                        error,
                        "the last record this writer wrote or read is no longer where it was",
                    ));
                }
                Err(e) => return Err(self.stop("read", e)),
            }
        }
        let found = continuation(
            &self.file,
            self.file_len,
            (self.next_seq, self.head),
            self.file_records,
        );
        match found {
            Ok(Continuation::Continues(c)) => {
                if c.records > 0 {
                    self.next_seq = c.next_seq;
                    self.head = c.head;
                    self.last_at = c.last_at;
                    self.file_records = self.file_records.saturating_add(c.records);
                    if self.file_first.is_none() {
                        self.file_first = c.first;
                    }
                }
                self.file_len = c.end;
                Ok(())
            }
            Ok(Continuation::Torn(error)) => {
                self.unlock();
                Err(AuditError::Chain {
                    path: self.path.clone(),
                    error,
                })
            }
            Ok(Continuation::Broken(error)) => Err(self.broken(
                error,
                "what was appended does not continue this writer's chain",
            )),
            Err(e) => Err(self.stop("read", e)),
        }
    }

    /// Whether the line at `at` (to the end we know) is still our last record.
    fn still_holds_head(&self, at: u64) -> io::Result<bool> {
        if self.file_len.saturating_sub(at) > crate::MAX_LINE_BYTES as u64 {
            return Ok(false);
        }
        let mut line = read_range(&self.file, at, self.file_len)?;
        if line.pop() != Some(b'\n') || line.contains(&b'\n') {
            return Ok(false);
        }
        Ok(parse_line(&line).is_ok_and(|r| r.seq == self.last_seq() && r.hash == self.head))
    }

    /// Damage of `kind` at our last record.
    fn at_head(&self, kind: Damage) -> ChainError {
        ChainError {
            seq: self.last_seq(),
            line: self.file_records,
            kind,
        }
    }

    /// Stops the writer: the file no longer continues what it wrote or read, so nothing it
    /// appends (above all no checkpoint) may go on from there.
    fn broken(&mut self, error: ChainError, why: &str) -> AuditError {
        let error = AuditError::Chain {
            path: self.path.clone(),
            error,
        };
        self.fail(format!(
            "{error} ({why}); this writer stopped and signs nothing more"
        ));
        error
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

/// The chain head a new or empty file goes on from: the newest rotated file's, if any. That
/// file must be sound and start at the seq its name gives.
fn rotated_head(path: &Path) -> Result<VerifySummary, AuditError> {
    let Some((named, rotated)) = newest_rotated(path).map_err(AuditError::io(path, "list"))? else {
        return Ok(VerifySummary::EMPTY);
    };
    let file = File::open(&rotated).map_err(AuditError::io(&rotated, "open"))?;
    match scan(file, Start::Anywhere).map_err(AuditError::io(&rotated, "read"))? {
        Scan::Sound { summary, .. } if summary.records > 0 && summary.first_seq == named => {
            Ok(summary)
        }
        Scan::Sound { summary, .. } => Err(AuditError::Chain {
            path: rotated,
            error: ChainError {
                seq: named,
                line: 1,
                kind: if summary.records > 0 && summary.first_seq < named {
                    Damage::Inserted
                } else {
                    Damage::Deleted
                },
            },
        }),
        Scan::Damaged { error, .. } => Err(AuditError::Chain {
            path: rotated,
            error,
        }),
    }
}

/// A file whose first record is not seq 1 must go on from the newest rotated file's last
/// record, when there is a rotated file (retention may have removed them all).
fn continues_rotated(path: &Path, first: Option<&Record>) -> Result<(), AuditError> {
    let Some((_, rotated)) = newest_rotated(path).map_err(AuditError::io(path, "list"))? else {
        return Ok(());
    };
    let file = File::open(&rotated).map_err(AuditError::io(&rotated, "open"))?;
    let last = last_line(&file)
        .map_err(AuditError::io(&rotated, "read"))?
        .and_then(|line| parse_line(&line).ok());
    let (seq, kind) = match (last, first) {
        (Some(last), Some(first))
            if first.seq == last.seq.saturating_add(1) && first.prev == last.hash =>
        {
            return Ok(());
        }
        (Some(last), Some(first)) if first.seq > last.seq.saturating_add(1) => {
            (last.seq.saturating_add(1), Damage::Deleted)
        }
        (_, first) => (first.map_or(1, |f| f.seq), Damage::Inserted),
    };
    Err(AuditError::Chain {
        path: path.to_owned(),
        error: ChainError { seq, line: 1, kind },
    })
}

/// The file's first record (its time is the file's age, for rotation).
fn first_record(file: &File) -> Option<Record> {
    let mut lines = LineReader::new(ReadAt::new(file));
    lines.next_line().ok().flatten()?;
    parse_line(&lines.buf).ok()
}

/// What follows byte `from` of a file, read on from a chain head.
enum Continuation {
    /// Whole records that go on from the head (none, when nothing follows).
    Continues(Continued),
    /// Only the final line is bad (cut short, not a record, or its hash does not match): what
    /// a writer that crashed mid-write leaves.
    Torn(ChainError),
    /// A record that does not go on from the head, or damage before the final line.
    Broken(ChainError),
}

struct Continued {
    records: u64,
    next_seq: u64,
    head: ChainHash,
    /// Where the last whole record ends.
    end: u64,
    /// Where the last record's line starts.
    last_at: Option<u64>,
    /// The first record's seq and time.
    first: Option<(u64, OffsetDateTime)>,
}

/// Reads `file` from byte `from` on: each record must have the next seq and link to the one
/// before, the first to `(next_seq, head)`. `lines_before` numbers the lines in errors.
fn continuation(
    file: &File,
    from: u64,
    (next_seq, head): (u64, ChainHash),
    lines_before: u64,
) -> io::Result<Continuation> {
    let mut lines = LineReader::new(ReadAt::from(file, from));
    let mut c = Continued {
        records: 0,
        next_seq,
        head,
        end: from,
        last_at: None,
        first: None,
    };
    let mut line = lines_before;
    while let Some(meta) = lines.next_line()? {
        line = line.saturating_add(1);
        let record = match check_line(&lines.buf, meta) {
            Ok(record) => record,
            Err(kind) => {
                let error = ChainError {
                    seq: c.next_seq,
                    line,
                    kind,
                };
                return Ok(if lines.next_line()?.is_none() {
                    Continuation::Torn(error)
                } else {
                    Continuation::Broken(error)
                });
            }
        };
        if record.seq != c.next_seq || record.prev != c.head {
            let (seq, kind) = if record.seq > c.next_seq {
                (c.next_seq, Damage::Deleted)
            } else {
                (record.seq, Damage::Inserted)
            };
            return Ok(Continuation::Broken(ChainError { seq, line, kind }));
        }
        c.first.get_or_insert((record.seq, record.time));
        c.last_at = Some(c.end);
        c.end = c.end.saturating_add(meta.len_on_disk());
        c.next_seq = record.seq.saturating_add(1);
        c.head = record.hash;
        c.records = c.records.saturating_add(1);
    }
    Ok(Continuation::Continues(c))
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
            last_at: None,
            file_records: 0,
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
