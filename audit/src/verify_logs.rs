//! Verifying one log as a whole: its files in chain order (a rotation set) as one hash chain,
//! and its checkpoints: their structure always; with a trust bundle also their certificate
//! chains and signatures, and whether the records after the last one are within the interval
//! it promised.

use std::fs::File;
use std::path::{Path, PathBuf};

use meshgate_identity::{BundleSet, SpiffeId};
use time::OffsetDateTime;

use crate::checkpoint::{CheckpointFault, Trigger, check_structure, check_with_bundle};
use crate::verify::{ChainVerifier, LineReader, Start};
use crate::{Action, AuditError, ChainError, Damage, Record, VerifySummary};

/// Seconds granted past a checkpoint's promised interval before its absence counts: the
/// writer looks once a second, and a batch or a slow disk may hold it up.
const TIME_SLACK_SECS: u64 = 10;

/// How to verify: with trust roots, checkpoints are checked cryptographically.
#[derive(Debug, Clone, Default)]
pub struct VerifyOptions {
    bundles: Option<BundleSet>,
}

impl VerifyOptions {
    /// Chain and checkpoint structure only; signatures are not checked.
    pub fn new() -> Self {
        Self::default()
    }

    /// Checks every checkpoint's certificate chain (against the bundle of its trust domain, at
    /// the checkpoint's time) and signature, and the records after the last checkpoint.
    #[must_use]
    pub fn with_bundles(mut self, bundles: BundleSet) -> Self {
        self.bundles = Some(bundles);
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
/// signer is their actor and may sign a log of their component, one signer per log). With a
/// bundle also their chains and signatures; and unless the last checkpoint was written at a
/// clean shutdown, the records after it must be no more than its `every_records` and span no
/// more than its `every_seconds` plus 10 s + 10 %: else checkpoints that were due are missing
/// (`TruncatedAfterCheckpoint`). With a bundle a log of records without any checkpoint is
/// `Unsigned`. I/O errors are errors; damage is in the report.
pub fn verify_log<P: AsRef<Path>>(
    files: &[P],
    options: &VerifyOptions,
) -> Result<LogReport, AuditError> {
    let mut chain = ChainVerifier::new(Start::Genesis);
    let bundles = options.bundles.as_ref();
    let mut seen = Seen {
        signatures_checked: bundles.is_some(),
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
            if record.event.action != Action::Checkpoint {
                seen.tail(&record, chain.position());
                continue;
            }
            if let Err(fault) = seen.checkpoint(&record, bundles) {
                let (file, error) = chain.damage(Damage::ForgedCheckpoint, record.seq);
                let fault = (error.kind == Damage::ForgedCheckpoint).then_some(fault);
                return Ok(seen.report(chain.summary(), path_of(file), error, fault));
            }
        }
    }
    let before = chain.summary();
    let summary = match chain.finish() {
        Ok(summary) => summary,
        Err((file, error)) => return Ok(seen.report(before, path_of(file), error, None)),
    };
    let mut report = seen.report_sound(summary, bundles.is_some());
    if bundles.is_some()
        && let Some((file, error)) = seen.tail_damage(&summary)
    {
        report.damage = Some(LogDamage {
            file: path_of(file),
            error,
            checkpoint: None,
        });
    }
    Ok(report)
}

/// What has been read so far: checkpoints, and the records after the last one.
#[derive(Debug, Default)]
struct Seen {
    checkpoints: u64,
    signer: Option<SpiffeId>,
    last: Option<Last>,
    tail: u64,
    /// The first record after the last checkpoint: seq, file, line, time.
    tail_first: Option<(u64, usize, u64, OffsetDateTime)>,
    tail_last_time: Option<OffsetDateTime>,
    signatures_checked: bool,
}

#[derive(Debug, Clone, Copy)]
struct Last {
    seq: u64,
    trigger: Trigger,
    every_records: u64,
    every_seconds: u64,
}

impl Seen {
    fn tail(&mut self, record: &Record, (file, line): (usize, u64)) {
        self.tail += 1;
        if self.tail_first.is_none() {
            self.tail_first = Some((record.seq, file, line, record.time));
        }
        self.tail_last_time = Some(record.time);
    }

    fn checkpoint(
        &mut self,
        record: &Record,
        bundles: Option<&BundleSet>,
    ) -> Result<(), CheckpointFault> {
        let signed = check_structure(record)?;
        if let Some(first) = &self.signer
            && *first != signed.signer
        {
            return Err(CheckpointFault::SignerChanged {
                signer: signed.signer.to_string(),
                first: first.to_string(),
            });
        }
        if let Some(bundles) = bundles {
            check_with_bundle(&signed, record, bundles)?;
        }
        self.checkpoints += 1;
        self.last = Some(Last {
            seq: record.seq,
            trigger: signed.trigger,
            every_records: signed.every_records,
            every_seconds: signed.every_seconds,
        });
        self.signer.get_or_insert(signed.signer);
        self.tail = 0;
        self.tail_first = None;
        self.tail_last_time = None;
        Ok(())
    }

    /// With a bundle: a missing checkpoint that was due, reported at the first uncovered record.
    fn tail_damage(&self, summary: &VerifySummary) -> Option<(usize, ChainError)> {
        let (seq, file, line, first_time) = self.tail_first?;
        let at = |kind| Some((file, ChainError { seq, line, kind }));
        let Some(last) = self.last else {
            return (summary.records > 0)
                .then_some(())
                .and_then(|()| at(Damage::Unsigned));
        };
        // After a clean shutdown nobody promised anything: records there come from writers
        // without a key (the CLI next to a stopped CA); a signing writer opens with a checkpoint.
        if last.trigger == Trigger::Shutdown {
            return None;
        }
        let span = self
            .tail_last_time
            .map_or(0, |t| (t - first_time).whole_seconds());
        let allowed = last
            .every_seconds
            .saturating_add(TIME_SLACK_SECS)
            .saturating_add(last.every_seconds / 10);
        let too_long = u64::try_from(span).is_ok_and(|s| s > allowed);
        (self.tail > last.every_records || too_long)
            .then_some(())
            .and_then(|()| at(Damage::TruncatedAfterCheckpoint))
    }

    fn report(
        &self,
        chain: VerifySummary,
        file: PathBuf,
        error: ChainError,
        checkpoint: Option<CheckpointFault>,
    ) -> LogReport {
        let mut report = self.report_sound(chain, self.signatures_checked);
        report.damage = Some(LogDamage {
            file,
            error,
            checkpoint,
        });
        report
    }

    fn report_sound(&self, chain: VerifySummary, signatures_checked: bool) -> LogReport {
        LogReport {
            chain,
            checkpoints: self.checkpoints,
            signer: self.signer.clone(),
            last_checkpoint: self.last.map(|l| l.seq),
            unsigned_tail: if self.last.is_some() {
                self.tail
            } else {
                chain.records
            },
            signatures_checked,
            damage: None,
        }
    }
}
