//! What a writer does besides appending: signed checkpoints when they are due, rotating the
//! file by size or age, following a rotation another process made, and closing cleanly.

use std::sync::Arc;

use time::OffsetDateTime;

use super::AuditWriter;
use super::file::{open_locked, sync_parent};
use crate::checkpoint::{self, CheckpointPolicy, CheckpointSigner, Trigger};
use crate::rotation::rotated_name;
use crate::{AuditError, record::format_time};

/// After a failed signing attempt (no key yet, an expired SVID) the writer tries again no
/// sooner than this, so a missing key costs nothing per record.
const RETRY_SECS: i64 = 1;

/// A writer's checkpoint state.
pub(super) struct Checkpointing {
    signer: Arc<dyn CheckpointSigner>,
    policy: CheckpointPolicy,
    /// The seq of the last checkpoint (or of the head when the writer started counting).
    last_seq: u64,
    last_time: OffsetDateTime,
    /// No signing attempt before this (after a failure).
    retry_at: Option<OffsetDateTime>,
}

impl Checkpointing {
    pub(super) fn new(
        signer: Arc<dyn CheckpointSigner>,
        policy: CheckpointPolicy,
        head_seq: u64,
        now: OffsetDateTime,
    ) -> Self {
        Self {
            signer,
            policy,
            last_seq: head_seq,
            last_time: now,
            retry_at: None,
        }
    }

    fn time_due(&self, now: OffsetDateTime) -> bool {
        now - self.last_time >= self.policy.every()
    }
}

impl AuditWriter {
    /// After an append: a checkpoint when `every_records` records have come since the last one,
    /// or `every_seconds` have passed.
    pub(super) fn checkpoint_if_counted(&mut self, now: OffsetDateTime) -> Result<(), AuditError> {
        let last_seq = self.last_seq();
        let Some(cp) = &self.checkpoints else {
            return Ok(());
        };
        let pending = last_seq.saturating_sub(cp.last_seq);
        let trigger = if pending >= cp.policy.every_records() {
            Trigger::Records
        } else if pending > 0 && cp.time_due(now) {
            Trigger::Time
        } else {
            return Ok(());
        };
        self.write_checkpoint(trigger, now)
    }

    /// Before an append: a checkpoint when the records since the last one (another process
    /// appended some) already number `every_records`, so that ours does not overrun the
    /// promise.
    pub(super) fn checkpoint_if_full(&mut self, now: OffsetDateTime) -> Result<(), AuditError> {
        let last_seq = self.last_seq();
        match &self.checkpoints {
            Some(cp) if last_seq.saturating_sub(cp.last_seq) >= cp.policy.every_records() => {
                self.write_checkpoint(Trigger::Records, now)
            }
            _ => Ok(()),
        }
    }

    /// For a writer that may sit idle (the sink calls this about once a second): when the
    /// checkpoint interval has passed and records were written since the last checkpoint, by
    /// us or by another process, signs the head and syncs.
    pub fn checkpoint_if_due(&mut self) -> Result<(), AuditError> {
        self.check()?;
        if self.checkpoints.is_none() {
            return Ok(());
        }
        let now = self.clock.now();
        let last_seq = self.last_seq();
        let Some(cp) = &self.checkpoints else {
            return Ok(());
        };
        if !cp.time_due(now) {
            return Ok(());
        }
        let ours = last_seq > cp.last_seq;
        let theirs = match self.file.metadata() {
            Ok(m) => m.len() != self.file_len,
            Err(e) => return Err(self.stop("stat", e)),
        };
        if !ours && !theirs {
            return Ok(());
        }
        self.lock_and_catch_up()?;
        let pending = self
            .checkpoints
            .as_ref()
            .is_some_and(|cp| self.last_seq() > cp.last_seq);
        if pending {
            self.write_checkpoint(Trigger::Time, now)?;
        }
        self.sync()
    }

    /// Appends a checkpoint of the current head, signed now. When it cannot be signed (no key,
    /// an expired SVID) that is logged and the records stay uncovered until a later one.
    pub(super) fn write_checkpoint(
        &mut self,
        trigger: Trigger,
        now: OffsetDateTime,
    ) -> Result<(), AuditError> {
        let Some(cp) = &self.checkpoints else {
            return Ok(());
        };
        if cp.retry_at.is_some_and(|t| now < t) {
            return Ok(());
        }
        let (signer, policy) = (Arc::clone(&cp.signer), cp.policy);
        let time = format_time(now)?;
        let head = (self.last_seq(), self.head);
        let signed = checkpoint::sign(&*signer, self.component, &policy, trigger, &time, now, head);
        match signed {
            Ok(event) => {
                let seq = self.append_at(crate::record::Middle::Event(&event), now)?;
                if let Some(cp) = &mut self.checkpoints {
                    cp.last_seq = seq;
                    cp.last_time = now;
                    cp.retry_at = None;
                }
            }
            Err(failure) => {
                if let Some(cp) = &mut self.checkpoints {
                    if cp.retry_at.is_none() {
                        tracing::warn!(
                            path = %self.path.display(),
                            "audit checkpoint not signed ({failure}); the next one will cover these records"
                        );
                    }
                    cp.retry_at = Some(now + time::Duration::seconds(RETRY_SECS));
                }
            }
        }
        Ok(())
    }

    /// Before an append: rotates a file that holds records and is too big or too old.
    pub(super) fn rotate_if_due(&mut self, now: OffsetDateTime) -> Result<(), AuditError> {
        let Some((first_seq, first_time)) = self.file_first else {
            return Ok(());
        };
        let size = self.file_len.saturating_add(self.buf.len() as u64);
        let too_big = self.rotation.max_bytes.is_some_and(|max| size >= max);
        let too_old = self
            .rotation
            .max_age
            .is_some_and(|age| now - first_time >= age);
        if !too_big && !too_old {
            return Ok(());
        }
        self.rotate(first_seq, now)
    }

    /// Closes the file with a `rotation` checkpoint, syncs it, renames it to
    /// `<path>.<first seq>` and goes on in a new file at `path`. The lock is held throughout, so
    /// a writer in another process waits and then follows.
    fn rotate(&mut self, first_seq: u64, now: OffsetDateTime) -> Result<(), AuditError> {
        if self.checkpoints.is_some() {
            self.write_checkpoint(Trigger::Rotation, now)?;
        }
        self.write_buf()?;
        if let Err(e) = self.file.sync_data() {
            return Err(self.stop("sync", e));
        }
        let rotated = rotated_name(&self.path, first_seq);
        if rotated.exists() {
            let e = std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!("{} exists already", rotated.display()),
            );
            return Err(self.stop("rotate", e));
        }
        if let Err(e) = std::fs::rename(&self.path, &rotated) {
            return Err(self.stop("rotate", e));
        }
        if let Err(e) = sync_parent(&self.path) {
            self.fail(e.to_string());
            return Err(e);
        }
        self.follow_rotation()
    }

    /// Moves to the file now at `path` (we rotated ours, or another process did), keeping the
    /// lock. Records another process wrote to it already must continue our chain (the new file
    /// goes on from the rotated one's last record); if they do not, the writer stops.
    pub(super) fn follow_rotation(&mut self) -> Result<(), AuditError> {
        let (file, _) = match open_locked(&self.path) {
            Ok(opened) => opened,
            Err(e) => {
                self.fail(e.to_string());
                return Err(e);
            }
        };
        let old = std::mem::replace(&mut self.file, Arc::new(file));
        let _ = old.unlock();
        self.file_len = 0;
        self.file_first = None;
        self.last_at = None;
        self.file_records = 0;
        self.catch_up()
    }

    /// Closes the log cleanly: with a signer, a `shutdown` checkpoint signs the final head;
    /// then everything is synced. Returns what went wrong, which dropping the writer cannot.
    pub fn close(mut self) -> Result<(), AuditError> {
        self.check()?;
        if self.checkpoints.is_some() && self.last_seq() > 0 {
            self.lock_and_catch_up()?;
            let now = self.clock.now();
            self.write_checkpoint(Trigger::Shutdown, now)?;
        }
        self.sync()
    }
}
