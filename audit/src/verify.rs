//! Reading a log back: streaming records line by line, and checking the hash chain end to end
//! in constant memory.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use crate::record::{LineFault, parse_line};
use crate::{AuditError, ChainError, ChainHash, Damage, MAX_LINE_BYTES, Record};

/// What a sound chain holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifySummary {
    /// How many records the file holds.
    pub records: u64,
    /// The first record's seq (0 for an empty file).
    pub first_seq: u64,
    /// The last record's seq (0 for an empty file); the next record gets `last_seq + 1`.
    pub last_seq: u64,
    /// The last record's hash ([`ChainHash::ZERO`] for an empty file); the next record's `prev`.
    pub head_hash: ChainHash,
}

impl VerifySummary {
    /// No records.
    pub const EMPTY: Self = Self {
        records: 0,
        first_seq: 0,
        last_seq: 0,
        head_hash: ChainHash::ZERO,
    };
}

/// Checks the whole chain of the log at `path`: every record's own hash, and that each record
/// links to the one before with the next seq.
///
/// Stops at the first damage and returns [`AuditError::Chain`]; [`AuditError::chain`] gives the
/// seq, line and [`Damage`]. A deleted record is reported at the first missing seq. The log
/// must start the chain (seq 1); checkpoints are not looked at, and records cut off the end on
/// a line boundary do not show: [`verify_logs`](crate::verify_logs) checks rotation sets and
/// checkpoints.
pub fn verify_file(path: impl AsRef<Path>) -> Result<VerifySummary, AuditError> {
    let path = path.as_ref();
    let file = File::open(path).map_err(AuditError::io(path, "open"))?;
    match scan(file, Start::Genesis).map_err(AuditError::io(path, "read"))? {
        Scan::Sound { summary, .. } => Ok(summary),
        Scan::Damaged { error, .. } => Err(AuditError::Chain {
            path: path.to_owned(),
            error,
        }),
    }
}

/// Streams the records of the log at `path`, one line at a time (constant memory).
///
/// Each record's own hash is checked, the links between records are not: use [`verify_file`]
/// for that. A bad line yields an [`AuditError::Chain`] item and reading goes on; an I/O error
/// ends the iteration.
pub fn read_records(path: impl AsRef<Path>) -> Result<Records, AuditError> {
    let path = path.as_ref();
    let file = File::open(path).map_err(AuditError::io(path, "open"))?;
    Ok(Records {
        path: path.to_owned(),
        lines: LineReader::new(file),
        line: 0,
        last_seq: 0,
        done: false,
    })
}

/// The iterator of [`read_records`].
#[derive(Debug)]
pub struct Records {
    path: PathBuf,
    lines: LineReader<File>,
    line: u64,
    last_seq: u64,
    done: bool,
}

impl Iterator for Records {
    type Item = Result<Record, AuditError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let meta = match self.lines.next_line() {
            Ok(Some(meta)) => meta,
            Ok(None) => return None,
            Err(e) => {
                self.done = true;
                return Some(Err(AuditError::io(&self.path, "read")(e)));
            }
        };
        self.line += 1;
        let damage = |kind| {
            let error = ChainError {
                seq: self.last_seq.saturating_add(1),
                line: self.line,
                kind,
            };
            Some(Err(AuditError::Chain {
                path: self.path.clone(),
                error,
            }))
        };
        match check_line(&self.lines.buf, meta) {
            Ok(record) => {
                self.last_seq = record.seq;
                Some(Ok(record))
            }
            Err(kind) => damage(kind),
        }
    }
}

/// Where a chain must start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Start {
    /// At seq 1 with a zero `prev`: a whole log, or the first file of a rotation set.
    Genesis,
    /// Wherever the first record says: a file that continues a rotated one. The writer
    /// continues such a file; `audit verify`, given the files in order, checks the links
    /// between them.
    Anywhere,
}

/// How a scan of a whole log ended.
pub(crate) enum Scan {
    Sound {
        summary: VerifySummary,
        /// Where the last record's line starts (`None` for a file without records).
        last_at: Option<u64>,
    },
    Damaged {
        error: ChainError,
        /// Where the damaged line starts.
        offset: u64,
        /// True when nothing follows the damaged line.
        is_final: bool,
        /// The chain up to the last record accepted before the damage.
        before: VerifySummary,
        /// Where the line of the last record accepted before the damage starts.
        before_last_at: Option<u64>,
    },
}

/// Reads and checks a whole log.
pub(crate) fn scan(r: impl Read, start: Start) -> io::Result<Scan> {
    let mut lines = LineReader::new(r);
    let mut chain = ChainVerifier::new(start);
    let mut offset = 0u64;
    let mut last_at = None;
    while let Some(meta) = lines.next_line()? {
        let before = chain.summary();
        if let Err((_, error)) = chain.feed(&lines.buf, meta) {
            let is_final = lines.next_line()?.is_none();
            return Ok(Scan::Damaged {
                error,
                offset,
                is_final,
                before,
                before_last_at: last_at,
            });
        }
        last_at = Some(offset);
        offset = offset.saturating_add(meta.len_on_disk);
    }
    let before = chain.summary();
    match chain.finish() {
        Ok(summary) => Ok(Scan::Sound { summary, last_at }),
        Err((_, error)) => Ok(Scan::Damaged {
            error,
            offset,
            is_final: false,
            before,
            before_last_at: last_at,
        }),
    }
}

/// The chain check, fed one line at a time, over one file or several files in order (a
/// rotation set: the chain goes on from file to file; line numbers restart in each).
///
/// A seq gap is held back until it is clear whether a skipped seq turns up later (`Reordered`)
/// or never does (`Deleted`); any other damage found meanwhile reports the gap as `Deleted`,
/// since it comes first. Damage comes with the index of the file it is in.
#[derive(Debug)]
pub(crate) struct ChainVerifier {
    expected: u64,
    head: ChainHash,
    records: u64,
    first_seq: u64,
    file: usize,
    line: u64,
    gap: Option<Gap>,
    start: Start,
}

/// Seqs `start..end` were skipped at `line` of file `file`.
#[derive(Debug, Clone, Copy)]
struct Gap {
    start: u64,
    end: u64,
    file: usize,
    line: u64,
}

impl ChainVerifier {
    pub(crate) fn new(start: Start) -> Self {
        Self {
            expected: 1,
            head: ChainHash::ZERO,
            records: 0,
            first_seq: 0,
            file: 0,
            line: 0,
            gap: None,
            start,
        }
    }

    /// The next lines come from the next file of the set.
    pub(crate) fn next_file(&mut self) {
        self.file += 1;
        self.line = 0;
    }

    /// The current file's index and line number.
    pub(crate) fn position(&self) -> (usize, u64) {
        (self.file, self.line)
    }

    /// Checks one line; returns its record when the chain accepts it.
    pub(crate) fn feed(
        &mut self,
        buf: &[u8],
        meta: LineMeta,
    ) -> Result<Record, (usize, ChainError)> {
        self.line += 1;
        let record = match check_line(buf, meta) {
            Ok(record) => record,
            Err(kind) => return Err(self.damage(kind, self.expected)),
        };
        if self.records == 0 && self.start == Start::Anywhere {
            self.expected = record.seq;
            self.head = record.prev;
        }
        if record.seq == self.expected {
            if record.prev != self.head {
                return Err(self.damage(Damage::Inserted, record.seq));
            }
        } else if record.seq > self.expected {
            if self.gap.is_some() {
                return Err(self.damage(Damage::Deleted, record.seq));
            }
            self.gap = Some(Gap {
                start: self.expected,
                end: record.seq,
                file: self.file,
                line: self.line,
            });
        } else {
            let kind = match self.gap {
                Some(gap) if (gap.start..gap.end).contains(&record.seq) => Damage::Reordered,
                _ => Damage::Inserted,
            };
            return Err(self.damage(kind, record.seq));
        }
        self.records += 1;
        if self.first_seq == 0 {
            self.first_seq = record.seq;
        }
        self.expected = record.seq.saturating_add(1);
        self.head = record.hash;
        Ok(record)
    }

    pub(crate) fn finish(self) -> Result<VerifySummary, (usize, ChainError)> {
        match self.gap {
            Some(gap) => Err((
                gap.file,
                ChainError {
                    seq: gap.start,
                    line: gap.line,
                    kind: Damage::Deleted,
                },
            )),
            None => Ok(self.summary()),
        }
    }

    /// The damage to report, with its file: a held-back gap comes first, unless this damage
    /// explains it. For damage found by other checks (checkpoints) at the current line.
    pub(crate) fn damage(&self, kind: Damage, seq: u64) -> (usize, ChainError) {
        self.damage_at(kind, seq, (self.file, self.line))
    }

    /// [`ChainVerifier::damage`] for damage at an earlier line (`(file, line)`): a held-back
    /// gap still comes first.
    pub(crate) fn damage_at(
        &self,
        kind: Damage,
        seq: u64,
        (file, line): (usize, u64),
    ) -> (usize, ChainError) {
        match self.gap {
            Some(gap) if kind != Damage::Reordered => (
                gap.file,
                ChainError {
                    seq: gap.start,
                    line: gap.line,
                    kind: Damage::Deleted,
                },
            ),
            _ => (file, ChainError { seq, line, kind }),
        }
    }

    pub(crate) fn summary(&self) -> VerifySummary {
        VerifySummary {
            records: self.records,
            first_seq: self.first_seq,
            last_seq: self.expected.saturating_sub(1),
            head_hash: self.head,
        }
    }
}

/// Checks one line on its own: complete, short enough, a record whose hash matches.
pub(crate) fn check_line(buf: &[u8], meta: LineMeta) -> Result<Record, Damage> {
    if !meta.terminated {
        return Err(Damage::Truncated);
    }
    if meta.oversized {
        return Err(Damage::Malformed);
    }
    parse_line(buf).map_err(|fault| match fault {
        LineFault::Malformed => Damage::Malformed,
        LineFault::Edited => Damage::Edited,
    })
}

/// One line as read: its bytes are in the reader's buffer, newline excluded.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LineMeta {
    /// Bytes the line takes in the file, newline included.
    len_on_disk: u64,
    /// Whether the line ends in a newline (only the last line of a file can lack one).
    terminated: bool,
    /// Longer than [`MAX_LINE_BYTES`]; the buffer holds only its start.
    oversized: bool,
}

/// Splits a byte stream into lines, keeping at most [`MAX_LINE_BYTES`] of any line in memory.
#[derive(Debug)]
pub(crate) struct LineReader<R> {
    inner: BufReader<R>,
    pub(crate) buf: Vec<u8>,
}

/// Read buffer: large reads for throughput when a whole log is scanned.
const READ_BUFFER: usize = 64 * 1024;

impl LineMeta {
    /// Bytes the line takes in the file, newline included.
    pub(crate) fn len_on_disk(&self) -> u64 {
        self.len_on_disk
    }
}

impl<R: Read> LineReader<R> {
    pub(crate) fn new(inner: R) -> Self {
        Self {
            inner: BufReader::with_capacity(READ_BUFFER, inner),
            buf: Vec::new(),
        }
    }

    /// Reads the next line into `self.buf`; `None` at the end of the stream.
    pub(crate) fn next_line(&mut self) -> io::Result<Option<LineMeta>> {
        self.buf.clear();
        let mut meta = LineMeta {
            len_on_disk: 0,
            terminated: false,
            oversized: false,
        };
        loop {
            let available = match self.inner.fill_buf() {
                Ok(available) => available,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if available.is_empty() {
                break;
            }
            let newline = available.iter().position(|&b| b == b'\n');
            let (chunk, used) = match newline {
                Some(i) => (available.get(..i).unwrap_or_default(), i + 1),
                None => (available, available.len()),
            };
            // Room for the content only: the newline takes the last byte of the limit.
            if self.buf.len() + chunk.len() < MAX_LINE_BYTES {
                self.buf.extend_from_slice(chunk);
            } else {
                meta.oversized = true;
            }
            self.inner.consume(used);
            meta.len_on_disk = meta.len_on_disk.saturating_add(used as u64);
            if newline.is_some() {
                meta.terminated = true;
                break;
            }
        }
        Ok((meta.len_on_disk > 0).then_some(meta))
    }
}
