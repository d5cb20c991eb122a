//! Verifying one log as a whole: its files in chain order (a rotation set) as one hash chain,
//! and its checkpoints: their structure always; with a trust bundle also their certificate
//! chains and signatures, and the intervals they promised, between every two checkpoints as
//! after the last one.

use std::fs::File;
use std::path::{Path, PathBuf};

use meshgate_identity::{BundleSet, SpiffeId};
use time::{Duration, OffsetDateTime};

use crate::checkpoint::{CheckpointFault, Trigger, check_structure, check_with_bundle};
use crate::verify::{ChainVerifier, LineReader, Start};
use crate::{Action, AuditError, ChainError, Component, Damage, Record, VerifySummary};

/// Seconds granted past a checkpoint's promised interval before its absence counts: the
/// writer looks once a second, and a batch or a slow disk may hold it up (plus 10 % of the
/// interval).
const TIME_SLACK_SECS: u64 = 10;

/// How far a record's time may lie before the latest checkpoint's, or a checkpoint's before
/// a record it covers: the writers stamp records with the wall clock, which NTP may step back.
pub const CLOCK_STEP_SECS: i64 = 300;

/// How to verify: with trust roots, checkpoints are checked cryptographically.
#[derive(Debug, Clone, Default)]
pub struct VerifyOptions {
    bundles: Option<BundleSet>,
    signer: Option<SpiffeId>,
}

impl VerifyOptions {
    /// Chain and checkpoint structure only; signatures are not checked.
    pub fn new() -> Self {
        Self::default()
    }

    /// Checks every checkpoint's certificate chain (against the bundle of its trust domain, at
    /// the checkpoint's time) and signature, and the intervals the checkpoints promised.
    #[must_use]
    pub fn with_bundles(mut self, bundles: BundleSet) -> Self {
        self.bundles = Some(bundles);
        self
    }

    /// Every checkpoint must be signed by `signer`: another signer is
    /// [`Damage::UnexpectedSigner`], and so is a log with records and no checkpoint.
    #[must_use]
    pub fn expect_signer(mut self, signer: SpiffeId) -> Self {
        self.signer = Some(signer);
        self
    }
}

/// What [`verify_log`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LogReport {
    /// The chain up to the end, or up to the damage.
    pub chain: VerifySummary,
    /// Checkpoints that passed (all of them when there is no damage).
    pub checkpoints: u64,
    /// Who signed them (one identity per log).
    pub signer: Option<SpiffeId>,
    /// The last good checkpoint's seq.
    pub last_checkpoint: Option<u64>,
    /// Records after the last checkpoint (all records when there is none): not signed yet.
    pub unsigned_tail: u64,
    /// With a bundle: records that an `open` checkpoint covers although no signing writer
    /// promised anything for them: offline writers' records (the CLI's, `log_recovered`)
    /// written while no signing writer ran (before the first checkpoint, after a `shutdown`
    /// checkpoint, or after a writer crashed). Nothing bounds how many there are.
    pub offline_records: u64,
    /// Whether signatures were checked (a bundle was given).
    pub signatures_checked: bool,
    /// The first damage, if any.
    pub damage: Option<LogDamage>,
}

/// The first damage of a log: the file it is in, where, and for a forged checkpoint why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogDamage {
    pub file: PathBuf,
    pub error: ChainError,
    pub checkpoint: Option<CheckpointFault>,
}

/// Verifies the files of one log, given in chain order (see [`crate::group_files`]), as one
/// chain: the first must start it at seq 1, each next file must go on where the one before
/// ends, so a missing file shows as deleted records.
///
/// Checkpoints are always checked for structure (they sign the record before them, their
/// signer is their actor and may sign a log of their component, one signer per log, and the
/// expected one when [`VerifyOptions::expect_signer`] names it). With a bundle also their
/// chains and signatures, and the promises they carry (docs/audit.md, "Intervals"):
///
/// - between two checkpoints, and before the first, the records are no more and span no
///   longer than the checkpoint before them promised (`every_records`; `every_seconds` + 10 s +
///   10 %, up to the checkpoint that follows): else [`Damage::CheckpointGap`]. Where no
///   signing writer ran (before the first checkpoint, after a `shutdown` one) only offline
///   writers' records (`cli`, `log_recovered`) may come before an `open` checkpoint; after a
///   writer that crashed, its unsigned records within its promise and then those;
/// - no record is dated more than [`CLOCK_STEP_SECS`] before a checkpoint before it, and no
///   checkpoint more than that before a record it covers: else [`Damage::TimeReversed`];
/// - after the last checkpoint, unless it was written at a clean shutdown, the same promise:
///   else [`Damage::TruncatedAfterCheckpoint`]; a log of records without any checkpoint is
///   [`Damage::Unsigned`].
///
/// I/O errors are errors; damage is in the report.
pub fn verify_log<P: AsRef<Path>>(
    files: &[P],
    options: &VerifyOptions,
) -> Result<LogReport, AuditError> {
    let mut chain = ChainVerifier::new(Start::Genesis);
    let bundles = options.bundles.as_ref();
    let mut seen = Seen {
        signatures_checked: bundles.is_some(),
        expected: options.signer.clone(),
        ..Seen::default()
    };
    let path_of = |i: usize| {
        files
            .get(i)
            .map(|p| p.as_ref().to_owned())
            .unwrap_or_default()
    };
    for (i, path) in files.iter().enumerate() {
        let path = path.as_ref();
        if i > 0 {
            chain.next_file();
        }
        let file = File::open(path).map_err(AuditError::io(path, "open"))?;
        let mut lines = LineReader::new(file);
        while let Some(meta) = lines.next_line().map_err(AuditError::io(path, "read"))? {
            let record = match chain.feed(&lines.buf, meta) {
                Ok(record) => record,
                Err((file, error)) => {
                    return Ok(seen.report(chain.summary(), path_of(file), error, None));
                }
            };
            let at = At::of(&record, chain.position());
            let found = if record.event.action == Action::Checkpoint {
                seen.checkpoint(&record, at, bundles)
            } else {
                seen.record(&record, at)
            };
            if let Err(Found { kind, at, fault }) = found {
                let (file, error) = chain.damage_at(kind, at.seq, (at.file, at.line));
                let fault = (error.kind == kind).then_some(fault).flatten();
                return Ok(seen.report(chain.summary(), path_of(file), error, fault));
            }
        }
    }
    let before = chain.summary();
    let summary = match chain.finish() {
        Ok(summary) => summary,
        Err((file, error)) => return Ok(seen.report(before, path_of(file), error, None)),
    };
    let mut report = seen.report_sound(summary);
    if let Some(Found { kind, at, .. }) = seen.at_end() {
        report.damage = Some(LogDamage {
            file: path_of(at.file),
            error: ChainError {
                seq: at.seq,
                line: at.line,
                kind,
            },
            checkpoint: None,
        });
    }
    Ok(report)
}

/// A record's place: its seq, and the index of its file and its line there.
#[derive(Debug, Clone, Copy)]
struct At {
    seq: u64,
    file: usize,
    line: u64,
}

impl At {
    fn of(record: &Record, (file, line): (usize, u64)) -> Self {
        Self {
            seq: record.seq,
            file,
            line,
        }
    }
}

/// Damage found by the checkpoint checks.
#[derive(Debug)]
struct Found {
    kind: Damage,
    at: At,
    fault: Option<CheckpointFault>,
}

impl Found {
    fn at(kind: Damage, at: At) -> Self {
        Self {
            kind,
            at,
            fault: None,
        }
    }
}

/// A checkpoint, as far as the intervals go.
#[derive(Debug, Clone, Copy)]
struct Promise {
    time: OffsetDateTime,
    trigger: Trigger,
    every_records: u64,
    every_seconds: u64,
}

impl Promise {
    /// How long the records between two checkpoints may span: the interval + 10 s + 10 %.
    fn span(&self) -> Duration {
        let secs = self
            .every_seconds
            .saturating_add(TIME_SLACK_SECS)
            .saturating_add(self.every_seconds / 10);
        Duration::seconds(i64::try_from(secs).unwrap_or(i64::MAX))
    }

    /// Whether records from `first` (the first of a run) to `latest` (the latest time among
    /// them), the earliest of them dated `earliest`, fit in the promised interval. The wall
    /// clock may step back by [`CLOCK_STEP_SECS`] within a run.
    fn fits(
        &self,
        first: OffsetDateTime,
        earliest: OffsetDateTime,
        latest: OffsetDateTime,
    ) -> bool {
        latest - first <= self.span()
            && latest - earliest <= self.span() + Duration::seconds(CLOCK_STEP_SECS)
    }

    /// The stricter of two promises.
    fn tightest(&self, other: &Self) -> Self {
        Self {
            every_records: self.every_records.min(other.every_records),
            every_seconds: self.every_seconds.min(other.every_seconds),
            ..*self
        }
    }

    /// Whether a signing writer was running after this checkpoint (it promised the next one).
    fn binds(&self) -> bool {
        self.trigger != Trigger::Shutdown
    }
}

/// Records of writers that hold no key and promise nothing: the offline CLI's (component
/// `cli`), and `log_recovered`, which whoever opens a log after a crash writes first.
fn is_offline(record: &Record) -> bool {
    record.event.component == Component::Cli || record.event.action == Action::LogRecovered
}

/// The records since the last checkpoint (or the log's start), summed up for each way the
/// segment may end, in constant memory.
#[derive(Debug)]
struct Segment {
    /// The checkpoint before (`None` at the log's start).
    prev: Option<Promise>,
    records: u64,
    first: Option<At>,
    first_time: Option<OffsetDateTime>,
    /// Records that count against a promise: all but offline writers'.
    counted: u64,
    earliest: Option<OffsetDateTime>,
    latest: Option<OffsetDateTime>,
    /// The first record that is not an offline writer's, and from it on: the records that
    /// count, and the earliest time (a writer that opened without a key, see `close`).
    online: Option<At>,
    online_time: Option<OffsetDateTime>,
    /// The offline writers' records before it.
    before_online: u64,
    online_counted: u64,
    online_earliest: Option<OffsetDateTime>,
    /// After a writer that crashed: the longest run of records from the segment's start that
    /// keeps its promise (at most `every_records` that count, spanning at most the interval).
    crashed: Run,
    /// The first record after that run that is not an offline writer's.
    crashed_online: Option<At>,
}

#[derive(Debug, Default, Clone, Copy)]
struct Run {
    ended: bool,
    records: u64,
    counted: u64,
    first: Option<OffsetDateTime>,
    earliest: Option<OffsetDateTime>,
    latest: Option<OffsetDateTime>,
}

fn earlier(a: Option<OffsetDateTime>, t: OffsetDateTime) -> OffsetDateTime {
    a.map_or(t, |a| a.min(t))
}

fn later(a: Option<OffsetDateTime>, t: OffsetDateTime) -> OffsetDateTime {
    a.map_or(t, |a| a.max(t))
}

impl Segment {
    fn new(prev: Option<Promise>) -> Self {
        Self {
            prev,
            records: 0,
            first: None,
            first_time: None,
            counted: 0,
            earliest: None,
            latest: None,
            online: None,
            online_time: None,
            before_online: 0,
            online_counted: 0,
            online_earliest: None,
            crashed: Run::default(),
            crashed_online: None,
        }
    }

    fn feed(&mut self, record: &Record, at: At) {
        let offline = is_offline(record);
        let counts = u64::from(!offline);
        let t = record.time;
        self.records += 1;
        self.first.get_or_insert(at);
        self.first_time.get_or_insert(t);
        self.counted += counts;
        self.earliest = Some(earlier(self.earliest, t));
        self.latest = Some(later(self.latest, t));
        if !offline && self.online.is_none() {
            self.online = Some(at);
            self.online_time = Some(t);
            self.before_online = self.records - 1;
        }
        if self.online.is_some() {
            self.online_counted += counts;
            self.online_earliest = Some(earlier(self.online_earliest, t));
        }
        if let Some(prev) = self.prev.filter(Promise::binds) {
            let run = &mut self.crashed;
            if !run.ended {
                let first = run.first.unwrap_or(t);
                let (earliest, latest) = (earlier(run.earliest, t), later(run.latest, t));
                if run.counted + counts <= prev.every_records && prev.fits(first, earliest, latest)
                {
                    run.records += 1;
                    run.counted += counts;
                    run.first = Some(first);
                    run.earliest = Some(earliest);
                    run.latest = Some(latest);
                } else {
                    run.ended = true;
                }
            }
            if run.ended && !offline && self.crashed_online.is_none() {
                self.crashed_online = Some(at);
            }
        }
    }

    /// The checkpoint `next` ends the segment: did its records keep the promises? Returns the
    /// records it accepts only as offline writers' (covered by an `open` checkpoint).
    fn close(&self, next: &Promise) -> Result<u64, At> {
        let Some(first) = self.first else {
            return Ok(0);
        };
        let open = next.trigger == Trigger::Open;
        match self.prev.filter(Promise::binds) {
            // A signing writer ran and promised the next checkpoint.
            Some(_) if open => {
                // It crashed (no `shutdown`): its records within its promise, then only offline
                // writers' until the next writer opened the log.
                match self.crashed_online {
                    Some(at) => Err(at),
                    None => Ok(self.records - self.crashed.records),
                }
            }
            Some(prev) => {
                let late = match (self.first_time, self.earliest) {
                    (Some(first), Some(earliest)) => !prev.fits(first, earliest, next.time),
                    _ => false,
                };
                if self.counted > prev.every_records || late {
                    Err(first)
                } else {
                    Ok(0)
                }
            }
            // No signing writer ran (the log's start, or after a clean shutdown): offline
            // writers' records, until a signing writer opens the log...
            None if open => match self.online {
                Some(at) => Err(at),
                None => Ok(self.records),
            },
            // ... or it opened without a key (no SVID yet, or an expired one): its records
            // keep the promise of its first checkpoint (no looser than the one its shutdown
            // checkpoint made: the checkpoint that judges them must not choose its own
            // interval freely).
            None => match self.online {
                None => Ok(self.records),
                Some(at) => {
                    let promise = self.prev.map_or(*next, |shutdown| next.tightest(&shutdown));
                    let late = match (self.online_time, self.online_earliest) {
                        (Some(first), Some(earliest)) => !promise.fits(first, earliest, next.time),
                        _ => false,
                    };
                    if self.online_counted > promise.every_records || late {
                        Err(at)
                    } else {
                        Ok(self.before_online)
                    }
                }
            },
        }
    }

    /// The segment is the log's tail (no checkpoint follows).
    fn tail(&self, checked: bool, expected: bool) -> Option<Found> {
        let first = self.first?;
        match self.prev {
            None if checked => Some(Found::at(Damage::Unsigned, first)),
            None if expected => Some(Found::at(Damage::UnexpectedSigner, first)),
            None => None,
            // After a clean shutdown nobody promised anything: records there come from
            // writers without a key (the CLI next to a stopped CA); a signing writer opens
            // with a checkpoint.
            Some(prev) if !prev.binds() || !checked => None,
            Some(prev) => {
                let late = match (self.first_time, self.earliest, self.latest) {
                    (Some(t), Some(earliest), Some(latest)) => !prev.fits(t, earliest, latest),
                    _ => false,
                };
                (self.counted > prev.every_records || late)
                    .then(|| Found::at(Damage::TruncatedAfterCheckpoint, first))
            }
        }
    }
}

/// What has been read so far: the checkpoints, and the segment since the last one.
#[derive(Debug)]
struct Seen {
    checkpoints: u64,
    signer: Option<SpiffeId>,
    expected: Option<SpiffeId>,
    last_seq: Option<u64>,
    /// The latest checkpoint time so far: no record may be dated much before it.
    latest_checkpoint: Option<OffsetDateTime>,
    segment: Segment,
    offline_records: u64,
    signatures_checked: bool,
}

impl Default for Seen {
    fn default() -> Self {
        Self {
            checkpoints: 0,
            signer: None,
            expected: None,
            last_seq: None,
            latest_checkpoint: None,
            segment: Segment::new(None),
            offline_records: 0,
            signatures_checked: false,
        }
    }
}

impl Seen {
    /// Whether a record dated `t` lies before the latest checkpoint by more than a clock step.
    fn before_checkpoints(&self, t: OffsetDateTime) -> bool {
        self.latest_checkpoint
            .is_some_and(|c| c - t > Duration::seconds(CLOCK_STEP_SECS))
    }

    fn record(&mut self, record: &Record, at: At) -> Result<(), Found> {
        if self.signatures_checked && self.before_checkpoints(record.time) {
            return Err(Found::at(Damage::TimeReversed, at));
        }
        self.segment.feed(record, at);
        Ok(())
    }

    fn checkpoint(
        &mut self,
        record: &Record,
        at: At,
        bundles: Option<&BundleSet>,
    ) -> Result<(), Found> {
        let forged = |fault| Found {
            kind: Damage::ForgedCheckpoint,
            at,
            fault: Some(fault),
        };
        let signed = check_structure(record).map_err(forged)?;
        if let Some(first) = &self.signer
            && *first != signed.signer
        {
            return Err(forged(CheckpointFault::SignerChanged {
                signer: signed.signer.to_string(),
                first: first.to_string(),
            }));
        }
        if let Some(expected) = &self.expected
            && *expected != signed.signer
        {
            return Err(Found {
                kind: Damage::UnexpectedSigner,
                at,
                fault: Some(CheckpointFault::UnexpectedSigner {
                    signer: signed.signer.to_string(),
                    expected: expected.to_string(),
                }),
            });
        }
        let next = Promise {
            time: record.time,
            trigger: signed.trigger,
            every_records: signed.every_records,
            every_seconds: signed.every_seconds,
        };
        if let Some(bundles) = bundles {
            check_with_bundle(&signed, record, bundles).map_err(forged)?;
            self.check_times(&next, at)?;
            self.offline_records += self
                .segment
                .close(&next)
                .map_err(|first| Found::at(Damage::CheckpointGap, first))?;
        }
        self.checkpoints += 1;
        self.last_seq = Some(record.seq);
        self.latest_checkpoint = Some(later(self.latest_checkpoint, record.time));
        self.signer.get_or_insert(signed.signer);
        self.segment = Segment::new(Some(next));
        Ok(())
    }

    /// The checkpoint `next` (at `at`) is not dated much before an earlier checkpoint or a
    /// record it covers.
    fn check_times(&self, next: &Promise, at: At) -> Result<(), Found> {
        let before_records = self
            .segment
            .latest
            .is_some_and(|t| t - next.time > Duration::seconds(CLOCK_STEP_SECS));
        if self.before_checkpoints(next.time) || before_records {
            return Err(Found::at(Damage::TimeReversed, at));
        }
        Ok(())
    }

    /// At the end of the log: the tail after the last checkpoint.
    fn at_end(&self) -> Option<Found> {
        self.segment
            .tail(self.signatures_checked, self.expected.is_some())
    }

    fn report(
        &self,
        chain: VerifySummary,
        file: PathBuf,
        error: ChainError,
        checkpoint: Option<CheckpointFault>,
    ) -> LogReport {
        let mut report = self.report_sound(chain);
        report.damage = Some(LogDamage {
            file,
            error,
            checkpoint,
        });
        report
    }

    fn report_sound(&self, chain: VerifySummary) -> LogReport {
        LogReport {
            chain,
            checkpoints: self.checkpoints,
            signer: self.signer.clone(),
            last_checkpoint: self.last_seq,
            unsigned_tail: if self.last_seq.is_some() {
                self.segment.records
            } else {
                chain.records
            },
            offline_records: self.offline_records,
            signatures_checked: self.signatures_checked,
            damage: None,
        }
    }
}
