//! The CA's audit log, `<ca dir>/audit.jsonl`: a batched, hash-chained writer. Issuance events
//! are written durably (fsynced) before the certificate is handed out; a full queue makes the CA
//! wait rather than drop an event. The server signs checkpoints with its own SVID.

use std::path::Path;
use std::sync::Arc;

use meshgate_audit::{
    AuditError, AuditEvent, AuditSink, AuditWriter, CheckpointPolicy, CheckpointSigner, Component,
    LogOptions, Rotation, SystemClock,
};

use crate::error::CaError;

/// The audit log's file name inside a CA directory.
pub const AUDIT_FILE: &str = "audit.jsonl";

/// How many messages may wait for the writer thread before callers block: an event each, or a
/// commit batch's events together (at most `group_commit::MAX_BATCH` writes' worth).
const QUEUE: usize = 4096;

#[derive(Debug)]
pub struct CaAudit {
    sink: AuditSink,
}

impl CaAudit {
    /// Opens (or creates) the log, repairing a torn tail left by a crash. Checkpoints are
    /// signed with `signer` (the CA's own SVID, `spiffe://<td>/meshgate/ca`, swapped on
    /// renewal); files rotate as `rotation` says.
    pub fn open(
        dir: &Path,
        signer: Arc<dyn CheckpointSigner>,
        rotation: Rotation,
    ) -> Result<Self, CaError> {
        let options = LogOptions::new()
            .signed(signer, CheckpointPolicy::default())
            .rotation(rotation);
        let (writer, report) =
            AuditWriter::open_with(dir.join(AUDIT_FILE), Component::Ca, SystemClock, options)
                .map_err(|e| CaError::Audit(e.to_string()))?;
        if report.recovered.is_some() {
            tracing::warn!("audit log had a torn tail after a crash; repaired: {report:?}");
        }
        let sink = AuditSink::spawn(writer, QUEUE).map_err(|e| CaError::Audit(e.to_string()))?;
        Ok(Self { sink })
    }

    /// Queues an event (blocking while the queue is full).
    pub fn record(&self, event: AuditEvent) {
        if let Err(e) = self.sink.record(event) {
            tracing::error!("audit write failed: {e}");
        }
    }

    /// Writes an event and waits until it is on disk.
    pub fn record_durable(&self, event: AuditEvent) -> Result<(), CaError> {
        self.sink
            .record_durable(event)
            .map(|_| ())
            .map_err(|e| CaError::Audit(e.to_string()))
    }

    /// Queues `events` in order, as one message (blocking while the queue is full), and calls
    /// `done` from the log's thread once the last is on disk, with the first failure of any of
    /// them. On an error here `done` is never called.
    pub fn record_all_then(
        &self,
        events: Vec<AuditEvent>,
        done: Box<dyn FnOnce(Result<(), CaError>) + Send>,
    ) -> Result<(), CaError> {
        // One message for the batch: its events land in one write and one sync, and the log's
        // thread is woken once for them.
        self.sink
            .record_all_then(
                &events,
                Box::new(move |result: Result<u64, AuditError>| {
                    done(result.map(|_| ()).map_err(audit_err));
                }),
            )
            .map_err(audit_err)
    }
}

#[cfg(test)]
impl CaAudit {
    /// An unsigned log at `path`, for tests of what writes to it.
    pub(crate) fn unsigned(path: &Path) -> Result<Self, CaError> {
        let (writer, _) = AuditWriter::open(path, Component::Ca).map_err(audit_err)?;
        let sink = AuditSink::spawn(writer, QUEUE).map_err(audit_err)?;
        Ok(Self { sink })
    }
}

fn audit_err(e: AuditError) -> CaError {
    CaError::Audit(e.to_string())
}

/// Appends one event from a short-lived CLI process and syncs it. Unsigned: the CLI holds no
/// SVID; a running (or the next) `ca serve` signs the head that covers it.
pub fn append_once(dir: &Path, event: AuditEvent) -> Result<(), CaError> {
    let (mut writer, _) = AuditWriter::open(dir.join(AUDIT_FILE), Component::Ca)
        .map_err(|e| CaError::Audit(e.to_string()))?;
    writer
        .append(&event)
        .map_err(|e| CaError::Audit(e.to_string()))?;
    writer.sync().map_err(|e| CaError::Audit(e.to_string()))
}
