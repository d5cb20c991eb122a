//! The audit crate's one error type, and the damage a chain check can find.

use std::path::PathBuf;

/// Every error of this crate, grouped by who is at fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuditError {
    // --- the log on disk (someone changed it, or it is not an audit log): the operator must look ---
    /// The hash chain is broken before its final line; nothing was repaired.
    #[error("{path}: {error}; tampering is not a crash, so the log was left as it is")]
    Chain { path: PathBuf, error: ChainError },

    // --- the caller's input ---
    /// A trust bundle given to verify checkpoints is unusable.
    #[error("{0}")]
    Bundle(String),
    /// The event's record would be longer than [`crate::MAX_LINE_BYTES`].
    #[error("audit record of {len} bytes is longer than the {max}-byte limit; keep details small")]
    TooLarge { len: usize, max: usize },

    // --- the environment and our side ---
    /// Reading, writing or syncing the log failed.
    #[error("{path}: {op}: {source}")]
    Io {
        path: PathBuf,
        op: &'static str,
        source: std::io::Error,
    },
    /// The clock gave a time RFC 3339 cannot express (a year outside 0000-9999).
    #[error("the clock gave {0}, which an audit record cannot hold")]
    BadTime(String),
    /// An earlier write failed, so what reached the file is unknown and this writer stopped;
    /// reopening the log cuts off a torn tail and continues the chain.
    #[error("audit writer stopped after an earlier failure ({cause}); reopen the log")]
    Failed { cause: String },
    /// The sink's writer thread is gone.
    #[error("audit sink is closed")]
    Closed,
    /// A bug in this crate.
    #[error("internal error: {0}")]
    Internal(&'static str),
}

impl AuditError {
    pub(crate) fn io(
        path: impl Into<PathBuf>,
        op: &'static str,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { path, op, source }
    }

    /// The chain damage behind this error, if that is what it is.
    pub fn chain(&self) -> Option<&ChainError> {
        match self {
            Self::Chain { error, .. } => Some(error),
            _ => None,
        }
    }
}

/// Where a log's hash chain is broken, and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("audit chain broken at seq {seq} (line {line}): {kind}")]
pub struct ChainError {
    /// The sequence number the damage is at; see [`Damage`] for which one each kind names.
    pub seq: u64,
    /// The 1-based line of the file where the damage was found.
    pub line: u64,
    /// What is wrong.
    pub kind: Damage,
}

/// What is wrong with a log's chain.
///
/// `seq` in [`ChainError`] names: for `Edited`, `Truncated` and `Malformed`, the seq the damaged
/// line should hold (one after the last good record); for `Deleted`, the first missing seq; for
/// `Reordered`, the seq that turns up late; for `Inserted`, the seq the extra record claims;
/// for `ForgedCheckpoint` and `UnexpectedSigner`, the checkpoint's own seq (for
/// `UnexpectedSigner` in a log without checkpoints, the first seq); for
/// `TruncatedAfterCheckpoint`, the first seq after the last checkpoint (the first record no
/// signature covers); for `CheckpointGap`, the first record the promise does not admit (the
/// first record after the checkpoint whose promise was broken, or the first record that only
/// a signing writer can have written where none ran); for `TimeReversed`, the record or
/// checkpoint dated too early; for `Unsigned`, the first seq.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Damage {
    /// A record's hash does not match its content.
    #[error("record edited (its hash does not match its content)")]
    Edited,
    /// Sequence numbers skip: records are missing.
    #[error("record deleted (sequence numbers skip)")]
    Deleted,
    /// A skipped sequence number turns up later: records were moved.
    #[error("records reordered (a sequence number goes backwards)")]
    Reordered,
    /// A sequence number repeats, or a well-formed record does not link to the one before it.
    #[error("record inserted (a duplicate sequence number, or a link to the wrong record)")]
    Inserted,
    /// The final line has no newline: a write was cut short.
    #[error("final line truncated (no newline)")]
    Truncated,
    /// A line is not a well-formed audit record (not JSON, a missing or unknown field, too long).
    #[error("malformed line (not an audit record)")]
    Malformed,
    /// A checkpoint does not hold together, or (with a trust bundle) its certificate chain or
    /// signature does not verify.
    #[error("forged checkpoint")]
    ForgedCheckpoint,
    /// With a trust bundle: the records after the last checkpoint are more, or span longer,
    /// than the interval that checkpoint promised, so checkpoints that were due are missing.
    #[error("truncated after the last checkpoint (a checkpoint that was due is missing)")]
    TruncatedAfterCheckpoint,
    /// With a trust bundle: a log with records and not one checkpoint.
    #[error("unsigned (no checkpoint)")]
    Unsigned,
    /// With a trust bundle: between two checkpoints (or before the first) the records are
    /// more, or were signed later, than the checkpoint before them promised, or records that
    /// only a signing writer writes stand where no signing writer ran: checkpoints that were
    /// due are missing, or the records were signed long after they were written.
    #[error("checkpoint gap (records not signed within the promised interval)")]
    CheckpointGap,
    /// With a trust bundle: a record dated more than a clock step before an earlier
    /// checkpoint, or a checkpoint dated that much before a record it covers.
    #[error("time reversed (dated before an earlier checkpoint or a record it covers)")]
    TimeReversed,
    /// A checkpoint signed by another identity than the one the verifier expects (or no
    /// checkpoint at all).
    #[error("unexpected signer")]
    UnexpectedSigner,
}

impl Damage {
    /// A stable snake_case name, for records and machine-readable output.
    pub fn code(self) -> &'static str {
        match self {
            Self::Edited => "edited",
            Self::Deleted => "deleted",
            Self::Reordered => "reordered",
            Self::Inserted => "inserted",
            Self::Truncated => "truncated",
            Self::Malformed => "malformed",
            Self::ForgedCheckpoint => "forged_checkpoint",
            Self::TruncatedAfterCheckpoint => "truncated_after_checkpoint",
            Self::Unsigned => "unsigned",
            Self::CheckpointGap => "checkpoint_gap",
            Self::TimeReversed => "time_reversed",
            Self::UnexpectedSigner => "unexpected_signer",
        }
    }
}
