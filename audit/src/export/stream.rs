//! One log read for export: its raw lines, each parsed and its chain links checked as it
//! streams by, so an export verifies what it copies in the same pass and in constant memory.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use crate::record::{LineFault, parse_line};
use crate::{
    AuditError, ChainError, ChainHash, Damage, LogFiles, MAX_LINE_BYTES, Record, VerifyOptions,
    verify_log,
};

/// Read buffer per log: big enough for throughput, small enough to merge many logs.
const READ_BUFFER: usize = 64 * 1024;

/// A log being read record by record, with the chain checked as it goes.
#[derive(Debug)]
pub(crate) struct LogStream {
    /// The log's name (its active file).
    path: PathBuf,
    /// Its files in chain order (rotated files, then the active file).
    files: Vec<PathBuf>,
    reader: BufReader<File>,
    /// The files after the one being read, opened already.
    rest: std::vec::IntoIter<File>,
    allow_damaged: bool,
    /// The current line's bytes, newline excluded (what JSON Lines export copies).
    line: Vec<u8>,
    line_no: u64,
    current: Option<Record>,
    state: ChainState,
}

/// What has been read of one log so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ChainState {
    /// Well-formed records read (after damage, those that still parse on their own).
    pub(crate) records: u64,
    pub(crate) first_seq: u64,
    pub(crate) last_seq: u64,
    /// The hash of the last record read: the chain head while `damage` is `None`.
    pub(crate) head: ChainHash,
    /// The first damage, as `verify_file` names it.
    pub(crate) damage: Option<ChainError>,
    /// Lines that are not well-formed records (not exported).
    pub(crate) skipped_lines: u64,
}

/// How a line ended.
enum LineEnd {
    Newline,
    /// The end of the file came first: a write cut short.
    Unterminated,
    /// Longer than [`MAX_LINE_BYTES`]; only its start is kept.
    Oversized,
}

impl LogStream {
    /// Opens every file of the log (so a missing one fails before anything is read); they are
    /// read in order as one chain.
    pub(crate) fn open(log: &LogFiles, allow_damaged: bool) -> Result<Self, AuditError> {
        let mut files = log
            .files
            .iter()
            .map(|path| File::open(path).map_err(AuditError::io(path, "open")))
            .collect::<Result<Vec<_>, _>>()?
            .into_iter();
        let first = files
            .next()
            .ok_or(AuditError::Internal("a log without files"))?;
        Ok(Self {
            path: log.log.clone(),
            files: log.files.clone(),
            reader: BufReader::with_capacity(READ_BUFFER, first),
            rest: files,
            allow_damaged,
            line: Vec::new(),
            line_no: 0,
            current: None,
            state: ChainState {
                records: 0,
                first_seq: 0,
                last_seq: 0,
                head: ChainHash::ZERO,
                damage: None,
                skipped_lines: 0,
            },
        })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The record last read, if the log is not finished.
    pub(crate) fn current(&self) -> Option<&Record> {
        self.current.as_ref()
    }

    /// The current record's line exactly as in the file, newline excluded.
    pub(crate) fn line(&self) -> &[u8] {
        &self.line
    }

    pub(crate) fn state(&self) -> &ChainState {
        &self.state
    }

    /// Moves to the next well-formed record; `None` at the end of the log.
    ///
    /// The first damage is recorded; unless damage is allowed it also ends the read with
    /// [`AuditError::Chain`]. With damage allowed, lines that are not records are skipped and
    /// records that parse on their own are still returned.
    pub(crate) fn advance(&mut self) -> Result<Option<&Record>, AuditError> {
        self.current = None;
        loop {
            let Some(end) = self.read_line()? else {
                return Ok(None);
            };
            self.line_no += 1;
            let parsed = match end {
                LineEnd::Unterminated => Err(Damage::Truncated),
                LineEnd::Oversized => Err(Damage::Malformed),
                LineEnd::Newline => parse_line(&self.line).map_err(|fault| match fault {
                    LineFault::Malformed => Damage::Malformed,
                    LineFault::Edited => Damage::Edited,
                }),
            };
            let expected = self.state.last_seq.saturating_add(1);
            match parsed {
                Ok(record) => {
                    if self.state.damage.is_none()
                        && let Some(kind) = link_fault(&self.state, &record)
                    {
                        let seq = if kind == Damage::Deleted {
                            expected
                        } else {
                            record.seq
                        };
                        self.damaged(kind, seq)?;
                    }
                    let state = &mut self.state;
                    state.records += 1;
                    if state.first_seq == 0 {
                        state.first_seq = record.seq;
                    }
                    state.last_seq = record.seq;
                    state.head = record.hash;
                    let record: &Record = self.current.insert(record);
                    return Ok(Some(record));
                }
                Err(kind) => {
                    self.state.skipped_lines += 1;
                    if self.state.damage.is_none() {
                        self.damaged(kind, expected)?;
                    }
                }
            }
        }
    }

    /// Records the first damage. `verify_log` names it, so export and `audit verify` agree on
    /// the kind and seq (it tells a reorder from a deletion by reading on); the finding made
    /// here stands only if the files changed since.
    fn damaged(&mut self, kind: Damage, seq: u64) -> Result<(), AuditError> {
        let found = verify_log(&self.files, &VerifyOptions::new())?.damage;
        let error = match found {
            Some(damage) => damage.error,
            None => ChainError {
                seq,
                line: self.line_no,
                kind,
            },
        };
        self.state.damage = Some(error);
        if self.allow_damaged {
            Ok(())
        } else {
            Err(AuditError::Chain {
                path: self.path.clone(),
                error,
            })
        }
    }

    /// Reads the next line into `self.line`, keeping at most [`MAX_LINE_BYTES`] of it (newline
    /// included) in memory, going on into the log's next file at the end of one; `None` at the
    /// end of the last.
    fn read_line(&mut self) -> Result<Option<LineEnd>, AuditError> {
        let read_error = |path: &Path| {
            let path = path.to_owned();
            move |source| AuditError::Io {
                path,
                op: "read",
                source,
            }
        };
        self.line.clear();
        let limit = MAX_LINE_BYTES as u64;
        let n = loop {
            let n = (&mut self.reader)
                .take(limit)
                .read_until(b'\n', &mut self.line)
                .map_err(read_error(&self.path))?;
            if n > 0 {
                break n;
            }
            let Some(next) = self.rest.next() else {
                return Ok(None);
            };
            self.reader = BufReader::with_capacity(READ_BUFFER, next);
        };
        if self.line.last() == Some(&b'\n') {
            self.line.pop();
            return Ok(Some(LineEnd::Newline));
        }
        if (n as u64) < limit {
            return Ok(Some(LineEnd::Unterminated));
        }
        skip_rest_of_line(&mut self.reader)
            .map(Some)
            .map_err(read_error(&self.path))
    }
}

/// Whether `record` fails to continue the chain in `state`, and how it looks from here.
fn link_fault(state: &ChainState, record: &Record) -> Option<Damage> {
    let expected = state.last_seq.saturating_add(1);
    if record.seq > expected {
        Some(Damage::Deleted)
    } else if record.seq < expected || record.prev != state.head {
        Some(Damage::Inserted)
    } else {
        None
    }
}

/// Consumes the rest of an overlong line without keeping it.
fn skip_rest_of_line(reader: &mut impl BufRead) -> io::Result<LineEnd> {
    loop {
        let available = match reader.fill_buf() {
            Ok(available) => available,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if available.is_empty() {
            return Ok(LineEnd::Unterminated);
        }
        match available.iter().position(|&b| b == b'\n') {
            Some(i) => {
                reader.consume(i + 1);
                return Ok(LineEnd::Oversized);
            }
            None => {
                let len = available.len();
                reader.consume(len);
            }
        }
    }
}
