//! The CA's audit log, `<ca dir>/audit.jsonl`: a batched, hash-chained writer. Issuance events
//! are written durably (fsynced) before the certificate is handed out; a full queue makes the CA
//! wait rather than drop an event. The server signs checkpoints with its own SVID.

use std::path::Path;
use std::sync::{Arc, Mutex};

use meshgate_audit::{
    AuditError, AuditEvent, AuditSink, AuditWriter, CheckpointPolicy, CheckpointSigner, Component,
    Durable, LogOptions, Queued, Rotation, SystemClock,
};

use crate::error::CaError;

/// The audit log's file name inside a CA directory.
pub const AUDIT_FILE: &str = "audit.jsonl";

/// How many events may wait for the writer thread before callers block.
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

    /// Writes `events` in order and resolves once the last one is on disk, without holding a
    /// thread while the batch syncs. Only a full queue sends the rest to the blocking pool, to
    /// wait for room there, in the same order.
    pub async fn record_durable_async(
        self: &Arc<Self>,
        events: Vec<AuditEvent>,
    ) -> Result<(), CaError> {
        if events.is_empty() {
            return Ok(());
        }
        // Every event reports; the writer thread answers them in order, so when the last one
        // is answered the others have been. One refused on its own (the writer goes on) fails
        // the whole call all the same.
        let (tx, synced) = tokio::sync::oneshot::channel();
        let mut tx = Some(tx);
        let refused: Arc<Mutex<Option<AuditError>>> = Arc::default();
        let last = events.len() - 1;
        let mut queue = events.into_iter().enumerate().map(|(i, event)| {
            let refused = Arc::clone(&refused);
            let durable: Durable = match if i == last { tx.take() } else { None } {
                Some(tx) => Box::new(move |result: Result<u64, AuditError>| {
                    let earlier = refused
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .take();
                    let _ = tx.send(match earlier {
                        Some(e) => Err(e),
                        None => result,
                    });
                }),
                None => Box::new(move |result: Result<u64, AuditError>| {
                    if let Err(e) = result {
                        refused
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .get_or_insert(e);
                    }
                }),
            };
            (event, durable)
        });
        while let Some((event, durable)) = queue.next() {
            match self
                .sink
                .try_record_then(event, durable)
                .map_err(audit_err)?
            {
                Queued::Yes => {}
                Queued::Full(first) => {
                    let rest: Vec<_> = std::iter::once(*first).chain(queue).collect();
                    let audit = Arc::clone(self);
                    tokio::task::spawn_blocking(move || {
                        rest.into_iter().try_for_each(|(event, durable)| {
                            audit.sink.record_then(event, durable).map_err(audit_err)
                        })
                    })
                    .await
                    .map_err(|_| CaError::Internal("the audit write task failed"))??;
                    break;
                }
            }
        }
        synced
            .await
            .map_err(|_| CaError::Audit("the audit writer stopped".into()))?
            .map(|_| ())
            .map_err(audit_err)
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
