//! The synchronous core of the audit log: opening a log (verifying its chain and cutting off a
//! torn tail left by a crash), appending records, and syncing them to disk.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::record::{encode_line, format_time};
use crate::verify::{Scan, VerifySummary, scan};
use crate::{
    Action, AuditError, AuditEvent, ChainHash, Clock, Component, Damage, Outcome, SystemClock,
};

/// The actor of the events this crate writes on its own (`log_recovered`).
pub const SYSTEM_ACTOR: &str = "system";

/// Appends records to one log file. Writers in several processes may share a file: each holds
/// the file's exclusive lock (flock) from the first append of a batch to `sync`, and catches up
/// with records another process appended (the CLI next to a running CA).
///
/// Appends are buffered; [`AuditWriter::sync`] makes them durable. After any failed write or
/// sync the writer stops (what reached the file is unknown) and every call returns
/// [`AuditError::Failed`]; reopening the log repairs a torn tail and continues the chain.
pub struct AuditWriter {
    path: PathBuf,
    file: BufWriter<File>,
    component: Component,
    clock: Box<dyn Clock>,
    next_seq: u64,
    head: ChainHash,
    failed: Option<String>,
    /// The file's length after our last sync: if it grew since, another process appended.
    written_len: u64,
    /// Whether we hold the file's exclusive lock (from the first append of a batch to `sync`).
    locked: bool,
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

impl AuditWriter {
    /// Opens the log at `path` for `component`, creating it if needed, with the system clock.
    /// See [`AuditWriter::open_with_clock`].
    pub fn open(
        path: impl AsRef<Path>,
        component: Component,
    ) -> Result<(Self, OpenReport), AuditError> {
        Self::open_with_clock(path, component, SystemClock)
    }

    /// Opens the log at `path`, creating it (mode 0600) if it does not exist.
    ///
    /// An existing log is read to the end and its whole chain verified. If only the final line
    /// is bad (no newline, not a record, or a hash that does not match) it is what a crash
    /// leaves: the file is cut back to the last good record, synced, and a `log_recovered`
    /// record (details `bytes_dropped`, `last_good_seq`, `damage`) is appended and synced.
    /// Damage before the final line is tampering, not a crash: nothing is changed and
    /// [`AuditError::Chain`] names the seq and the kind.
    ///
    /// `component` is the writer's own, used for the records this crate writes itself.
    pub fn open_with_clock(
        path: impl AsRef<Path>,
        component: Component,
        clock: impl Clock + 'static,
    ) -> Result<(Self, OpenReport), AuditError> {
        let path = path.as_ref();
        let (file, created) = open_file(path)?;
        // Other processes (the CLI next to a running CA) append to the same log: all writers
        // hold the file's exclusive lock while they read the tail and append.
        file.lock().map_err(AuditError::io(path, "lock"))?;
        let mut chain = VerifySummary {
            records: 0,
            first_seq: 0,
            last_seq: 0,
            head_hash: ChainHash::ZERO,
        };
        let mut torn = None;
        if !created {
            match scan(&file).map_err(AuditError::io(path, "read"))? {
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
        let written_len = file.metadata().map_err(AuditError::io(path, "stat"))?.len();
        let mut writer = Self {
            path: path.to_owned(),
            file: BufWriter::new(file),
            component,
            clock: Box::new(clock),
            next_seq: chain.last_seq.saturating_add(1),
            head: chain.head_hash,
            failed: None,
            written_len,
            locked: true,
        };
        let mut report = OpenReport {
            created,
            records: chain.records,
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
            let recorded_at = writer.append(&event)?;
            writer.sync()?;
            report.recovered = Some(Recovery {
                damage,
                bytes_dropped,
                last_good_seq: chain.last_seq,
                recorded_at,
            });
        }
        writer.unlock();
        Ok((writer, report))
    }

    /// Appends `event` as the next record (buffered; see [`AuditWriter::sync`]) and returns its
    /// seq. The record's time is the clock's now.
    pub fn append(&mut self, event: &AuditEvent) -> Result<u64, AuditError> {
        self.check()?;
        self.lock_and_catch_up()?;
        let seq = self.next_seq;
        if seq == u64::MAX {
            return Err(AuditError::Internal("audit sequence numbers exhausted"));
        }
        let time = format_time(self.clock.now())?;
        let (line, hash) = encode_line(seq, &time, event, &self.head)?;
        if let Err(e) = self.file.write_all(&line) {
            return Err(self.stop("write", e));
        }
        self.next_seq = seq.saturating_add(1);
        self.head = hash;
        Ok(seq)
    }

    /// Writes out the buffer and syncs the file's data to disk (`fdatasync`).
    pub fn sync(&mut self) -> Result<(), AuditError> {
        self.check()?;
        if let Err(e) = self.file.flush() {
            return Err(self.stop("write", e));
        }
        if let Err(e) = self.file.get_ref().sync_data() {
            return Err(self.stop("sync", e));
        }
        match self.file.get_ref().metadata() {
            Ok(m) => self.written_len = m.len(),
            Err(e) => return Err(self.stop("stat", e)),
        }
        self.unlock();
        Ok(())
    }

    /// Takes the file's lock for a batch; if another process appended since our last sync,
    /// re-reads and verifies the chain so the next record continues it.
    fn lock_and_catch_up(&mut self) -> Result<(), AuditError> {
        if self.locked {
            return Ok(());
        }
        if let Err(e) = self.file.get_ref().lock() {
            return Err(self.stop("lock", e));
        }
        self.locked = true;
        let len = match self.file.get_ref().metadata() {
            Ok(m) => m.len(),
            Err(e) => return Err(self.stop("stat", e)),
        };
        if len == self.written_len {
            return Ok(());
        }
        let reader = File::open(&self.path).map_err(AuditError::io(&self.path, "open"))?;
        match scan(reader).map_err(AuditError::io(&self.path, "read"))? {
            Scan::Sound(summary) => {
                self.next_seq = summary.last_seq.saturating_add(1);
                self.head = summary.head_hash;
                self.written_len = len;
                Ok(())
            }
            Scan::Damaged { error, .. } => {
                self.unlock();
                Err(AuditError::Chain {
                    path: self.path.clone(),
                    error,
                })
            }
        }
    }

    fn unlock(&mut self) {
        if self.locked {
            let _ = self.file.get_ref().unlock();
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

    /// The log file.
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
        self.failed = Some(error.to_string());
        error
    }
}

#[cfg(test)]
impl AuditWriter {
    /// A writer over an already open file, skipping the open-time checks (for failure tests).
    pub(crate) fn over(file: File, path: &Path) -> Self {
        Self {
            path: path.to_owned(),
            file: BufWriter::new(file),
            component: Component::Ca,
            clock: Box::new(SystemClock),
            next_seq: 1,
            head: ChainHash::ZERO,
            failed: None,
            written_len: 0,
            locked: false,
        }
    }
}

impl Drop for AuditWriter {
    /// Syncs what is buffered, best effort: call [`AuditWriter::sync`] to see errors.
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

/// Opens `path` for reading and appending; creates it (0600, and syncs the directory) if absent.
fn open_file(path: &Path) -> Result<(File, bool), AuditError> {
    let mut options = OpenOptions::new();
    options.read(true).append(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.clone().create_new(true).open(path) {
        Ok(file) => {
            sync_parent(path)?;
            Ok((file, true))
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            let file = options.open(path).map_err(AuditError::io(path, "open"))?;
            Ok((file, false))
        }
        Err(e) => Err(AuditError::io(path, "create")(e)),
    }
}

/// Makes a new file's directory entry durable.
fn sync_parent(path: &Path) -> Result<(), AuditError> {
    #[cfg(unix)]
    {
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(AuditError::io(dir, "sync directory"))?;
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}
