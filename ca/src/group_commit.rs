//! Group commit for the server's issuance writes. One writer thread owns a datastore connection;
//! requests hand it their writes over a bounded queue and wait. It takes everything queued (up
//! to [`MAX_BATCH`]), applies it in one transaction with one sync to disk, and only then answers
//! each request with its own outcome: while one batch syncs the next one gathers, so the number
//! of syncs per second, not per issuance, is what the disk bounds.
//!
//! With an audit log, the events each committed write calls for go to the log as one batch
//! straight from the writer thread, and a requester is answered only once its events are on
//! disk too: one handoff per batch, where each request handing its own events over cost a
//! wake-up of two more threads and a sync of the log for every few requests. While the log's
//! queue is full the writer thread waits for room: the commits wait with it, and nothing is
//! dropped.

use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};

use meshgate_audit::AuditEvent;
use tokio::sync::oneshot;

use crate::audit_log::CaAudit;
use crate::error::CaError;
use crate::store::{IssuanceOutcome, IssuanceWrite, Store};

/// What the writer thread needs of a datastore: every [`Store`] has it.
pub trait CommitIssuances: Send {
    /// As [`Store::commit_issuances`].
    fn commit_batch(
        &mut self,
        writes: Vec<IssuanceWrite>,
    ) -> Result<Vec<Result<IssuanceOutcome, CaError>>, CaError>;
    /// As [`Store::recover_after_failed_commit`].
    fn recover(&mut self) -> Result<(), CaError> {
        Ok(())
    }
}

impl<S: Store> CommitIssuances for S {
    fn commit_batch(
        &mut self,
        writes: Vec<IssuanceWrite>,
    ) -> Result<Vec<Result<IssuanceOutcome, CaError>>, CaError> {
        self.commit_issuances(writes)
    }

    fn recover(&mut self) -> Result<(), CaError> {
        self.recover_after_failed_commit()
    }
}

/// The most writes in one transaction. Larger batches save little more once a batch's sync
/// costs less than its statements, and keep the latency of the first write in it bounded.
pub const MAX_BATCH: usize = 512;

/// Writes that may wait for the writer thread. Beyond that the server answers 503 rather than
/// holding more requests in memory; at the default connection cap (1024, one request in
/// flight per HTTP/1.1 connection) it is never reached.
pub const QUEUE: usize = 4096;

/// A handle to the writer thread. Dropping it lets the thread finish the writes queued, hand
/// their events to the audit log, and end; the drop waits for that, so a server that stops
/// leaves nothing of its issuances unwritten.
#[derive(Debug)]
pub struct GroupCommit {
    tx: Option<SyncSender<Job>>,
    capacity: usize,
    /// Whether the writer has an audit log: [`GroupCommit::commit_audited`] needs one.
    audited: bool,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for GroupCommit {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("the CA's group commit thread panicked");
        }
    }
}

struct Job {
    write: IssuanceWrite,
    audit: Option<AuditOf>,
    reply: oneshot::Sender<Result<IssuanceOutcome, CaError>>,
}

/// The audit events a write's outcome calls for once it has committed (none for an outcome
/// its requester records itself, such as a refused token).
pub type AuditOf = Box<dyn FnOnce(&IssuanceOutcome) -> Vec<AuditEvent> + Send>;

type Reply = oneshot::Sender<Result<IssuanceOutcome, CaError>>;

/// What a batch is committed with: how many writes went into each transaction, for metrics.
pub type OnBatch = Box<dyn Fn(usize) + Send>;

impl GroupCommit {
    /// Starts the writer thread on `store` (a connection of its own), with a queue of `queue`
    /// writes and transactions of at most `max_batch`.
    pub fn spawn<S: CommitIssuances + 'static>(
        store: S,
        queue: usize,
        max_batch: usize,
        on_batch: OnBatch,
    ) -> Result<Self, CaError> {
        Self::spawn_with(store, queue, max_batch, on_batch, None)
    }

    /// As [`GroupCommit::spawn`], writing the events of each committed batch to `audit`
    /// before answering its requesters (see [`GroupCommit::commit_audited`]).
    pub fn spawn_audited<S: CommitIssuances + 'static>(
        store: S,
        queue: usize,
        max_batch: usize,
        on_batch: OnBatch,
        audit: Arc<CaAudit>,
    ) -> Result<Self, CaError> {
        Self::spawn_with(store, queue, max_batch, on_batch, Some(audit))
    }

    fn spawn_with<S: CommitIssuances + 'static>(
        store: S,
        queue: usize,
        max_batch: usize,
        on_batch: OnBatch,
        audit: Option<Arc<CaAudit>>,
    ) -> Result<Self, CaError> {
        let capacity = queue.max(1);
        let (tx, rx) = sync_channel(capacity);
        let audited = audit.is_some();
        let writer = Writer {
            max_batch: max_batch.max(1),
            on_batch,
            audit,
        };
        let thread = std::thread::Builder::new()
            .name("meshgate-ca-commit".into())
            .spawn(move || run(store, &rx, &writer))
            .map_err(|e| CaError::Io {
                path: "the CA's group commit thread".into(),
                source: e,
            })?;
        Ok(Self {
            tx: Some(tx),
            capacity,
            audited,
            thread: Some(thread),
        })
    }

    /// Queues `write` and waits until the transaction holding it is on disk and the events
    /// `audit` makes of its outcome are in the audit log, on disk too; [`CaError::Audit`] if
    /// they could not be written. [`CaError::Overloaded`] at once, with nothing written, when
    /// the queue is full; refused, with nothing written, by a writer spawned without a log.
    pub async fn commit_audited(
        &self,
        write: IssuanceWrite,
        audit: AuditOf,
    ) -> Result<IssuanceOutcome, CaError> {
        self.queue(write, Some(audit))?
            .await
            .map_err(|_| CaError::Internal("the CA's group commit thread has stopped"))?
    }

    /// Queues `write` without waiting: the receiver gets its outcome once its batch committed.
    pub fn submit(&self, write: IssuanceWrite) -> Result<Pending, CaError> {
        self.queue(write, None)
    }

    fn queue(&self, write: IssuanceWrite, audit: Option<AuditOf>) -> Result<Pending, CaError> {
        if audit.is_some() && !self.audited {
            return Err(CaError::Internal(
                "an audited write was sent to a group commit without an audit log",
            ));
        }
        let tx = self.tx.as_ref().ok_or(CaError::Internal(
            "the CA's group commit thread has stopped",
        ))?;
        let (reply, done) = oneshot::channel();
        match tx.try_send(Job {
            write,
            audit,
            reply,
        }) {
            Ok(()) => Ok(done),
            Err(TrySendError::Full(_)) => Err(CaError::Overloaded {
                queue: self.capacity,
            }),
            Err(TrySendError::Disconnected(_)) => Err(CaError::Internal(
                "the CA's group commit thread has stopped",
            )),
        }
    }
}

/// The outcome of a queued write, once its batch has committed.
pub type Pending = oneshot::Receiver<Result<IssuanceOutcome, CaError>>;

/// What the writer thread works with besides its datastore.
struct Writer {
    max_batch: usize,
    on_batch: OnBatch,
    audit: Option<Arc<CaAudit>>,
}

/// The writer thread: one batch per wake-up until every sender is gone.
fn run<S: CommitIssuances>(mut store: S, rx: &Receiver<Job>, writer: &Writer) {
    // Without this thread every later issuance would fail, and nothing would say so.
    let _abort = AbortIfUnwinding;
    let max_batch = writer.max_batch;
    let mut writes = Vec::with_capacity(max_batch);
    let mut jobs = Vec::with_capacity(max_batch);
    while let Ok(first) = rx.recv() {
        writes.push(first.write);
        jobs.push((first.reply, first.audit));
        while writes.len() < max_batch {
            match rx.try_recv() {
                Ok(job) => {
                    writes.push(job.write);
                    jobs.push((job.reply, job.audit));
                }
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        }
        let n = writes.len();
        let batch = std::mem::take(&mut writes);
        // A panic fails its own batch only; the connection is repaired below like after any
        // failed commit. `store` is not used again before that repair.
        let committed =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| store.commit_batch(batch)))
                .unwrap_or(Err(CaError::Internal("the datastore panicked in a commit")));
        match committed {
            Ok(outcomes) if outcomes.len() == n => {
                (writer.on_batch)(n);
                answer_committed(jobs.drain(..).zip(outcomes), writer.audit.as_deref());
            }
            Ok(_) => {
                tracing::error!("a group commit of {n} issuances answered out of step");
                fail_all(&mut jobs, "the datastore answered a batch out of step");
                recover(&mut store);
            }
            Err(e) => {
                // Nothing of the batch was written: every request in it fails, none is answered
                // with a certificate.
                tracing::error!("a group commit of {n} issuances failed: {e}");
                fail_all(&mut jobs, "the datastore failed to commit");
                recover(&mut store);
            }
        }
    }
}

/// Answers the requesters of a committed batch: at once without an audit log or events to
/// write; else from the audit log's thread once the batch's events are on disk.
fn answer_committed(
    batch: impl Iterator<Item = ((Reply, Option<AuditOf>), Result<IssuanceOutcome, CaError>)>,
    audit: Option<&CaAudit>,
) {
    let mut events = Vec::new();
    let mut answers = Vec::new();
    for ((reply, audit_of), outcome) in batch {
        let audited = match (&outcome, audit_of) {
            (Ok(o), Some(audit_of)) if audit.is_some() => {
                // A panic here fails this write alone; the thread and the batch go on.
                match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| audit_of(o))) {
                    Ok(made) => {
                        let audited = !made.is_empty();
                        events.extend(made);
                        audited
                    }
                    Err(_) => {
                        tracing::error!("making the audit events of an issuance panicked");
                        let _ = reply.send(Err(CaError::Internal(
                            "the audit events of an issuance could not be made",
                        )));
                        continue;
                    }
                }
            }
            _ => false,
        };
        answers.push(Answer {
            reply,
            outcome,
            audited,
        });
    }
    let Some(audit) = audit.filter(|_| !events.is_empty()) else {
        answer_all(answers, &Ok(()));
        return;
    };
    // Taken by whichever comes first: the log's answer, or the failure to queue the events.
    let waiting = Arc::new(Mutex::new(Some(answers)));
    let on_disk = Arc::clone(&waiting);
    let queued = audit.record_all_then(
        events,
        Box::new(move |result| {
            if let Some(answers) = take(&on_disk) {
                answer_all(answers, &result);
            }
        }),
    );
    if let Err(e) = queued
        && let Some(answers) = take(&waiting)
    {
        answer_all(answers, &Err(e));
    }
}

/// A committed write's requester, its outcome, and whether that outcome has audit events.
struct Answer {
    reply: Reply,
    outcome: Result<IssuanceOutcome, CaError>,
    audited: bool,
}

fn answer_all(answers: Vec<Answer>, audit: &Result<(), CaError>) {
    for a in answers {
        let outcome = match audit {
            // Committed, but its audit record is not on disk: the requester must not hand out
            // what it paid for.
            Err(CaError::Audit(why)) if a.audited => Err(CaError::Audit(why.clone())),
            Err(e) if a.audited => Err(CaError::Audit(e.to_string())),
            _ => a.outcome,
        };
        // A requester that went away (its connection closed) needs no answer; what it paid
        // for is committed all the same, like any answer lost in transit.
        let _ = a.reply.send(outcome);
    }
}

fn take(waiting: &Mutex<Option<Vec<Answer>>>) -> Option<Vec<Answer>> {
    waiting
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take()
}

/// After a failed batch: the next one must not find a transaction left open or a broken
/// connection. If the repair fails too, the next batch fails and tries it again.
fn recover<S: CommitIssuances>(store: &mut S) {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| store.recover())) {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::error!("the CA's group commit could not repair its datastore: {e}"),
        Err(_) => tracing::error!("the CA's group commit panicked repairing its datastore"),
    }
}

/// Held by the writer thread: if it unwinds anyway (outside a commit), requests would queue
/// for a thread that is gone and every issuance fail from then on. Stopping the process hands
/// the CA to its supervisor to restart instead of leaving it up and unable to issue.
struct AbortIfUnwinding;

impl Drop for AbortIfUnwinding {
    fn drop(&mut self) {
        if std::thread::panicking() {
            tracing::error!("the CA's group commit thread panicked: stopping the process");
            std::process::abort();
        }
    }
}

fn fail_all(jobs: &mut Vec<(Reply, Option<AuditOf>)>, why: &'static str) {
    for (reply, _) in jobs.drain(..) {
        let _ = reply.send(Err(CaError::Internal(why)));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc::{Receiver, Sender, channel};

    use meshgate_identity::{Serial, SpiffeId};

    use super::*;
    use crate::store::IssuedCert;

    /// A datastore that holds each batch until the test lets it go, and says how many writes
    /// each batch holds and when it is asked to recover. Renewals of even serials are "recorded".
    struct Gate {
        entered: Sender<usize>,
        release: Receiver<Release>,
        recovered: Sender<()>,
    }

    enum Release {
        Commit,
        Fail,
        Panic,
    }

    impl CommitIssuances for Gate {
        fn commit_batch(
            &mut self,
            writes: Vec<IssuanceWrite>,
        ) -> Result<Vec<Result<IssuanceOutcome, CaError>>, CaError> {
            self.entered.send(writes.len()).unwrap();
            match self.release.recv().unwrap() {
                Release::Commit => {}
                Release::Fail => return Err(CaError::Internal("disk full")),
                Release::Panic => panic!("a bug in the datastore"),
            }
            Ok(writes
                .into_iter()
                .map(|w| match w {
                    IssuanceWrite::Renew { from, .. } => Ok(IssuanceOutcome::Renew {
                        recorded: from.to_string().ends_with(['0', '2', '4', '6', '8']),
                    }),
                    IssuanceWrite::Enroll { .. } => Err(CaError::Internal("not in this test")),
                })
                .collect())
        }

        fn recover(&mut self) -> Result<(), CaError> {
            self.recovered.send(()).unwrap();
            Ok(())
        }
    }

    fn renewal(n: u8) -> IssuanceWrite {
        let serial = Serial::from_bytes(&[n]);
        IssuanceWrite::Renew {
            cert: IssuedCert {
                serial: serial.clone(),
                spiffe_id: SpiffeId::parse("spiffe://test.example/w").unwrap(),
                sha256: String::new(),
                not_before: 0,
                not_after: 1,
                issuer: serial.clone(),
                dns_names: Vec::new(),
                issued_at: 0,
            },
            from: serial,
        }
    }

    struct Started {
        gc: GroupCommit,
        batches: Receiver<usize>,
        release: Sender<Release>,
        recovered: Receiver<()>,
    }

    fn start(queue: usize, max_batch: usize) -> Started {
        start_with(queue, max_batch, None)
    }

    fn start_with(queue: usize, max_batch: usize, audit: Option<Arc<CaAudit>>) -> Started {
        let (entered, batches) = channel();
        let (release, gate) = channel();
        let (recovered_tx, recovered) = channel();
        let gate = Gate {
            entered,
            release: gate,
            recovered: recovered_tx,
        };
        let gc = GroupCommit::spawn_with(gate, queue, max_batch, Box::new(|_| {}), audit).unwrap();
        Started {
            gc,
            batches,
            release,
            recovered,
        }
    }

    fn recorded(p: Pending) -> bool {
        match p.blocking_recv().unwrap().unwrap() {
            IssuanceOutcome::Renew { recorded } => recorded,
            IssuanceOutcome::Enroll(o) => panic!("{o:?}"),
        }
    }

    #[test]
    fn writes_queued_during_a_commit_go_into_the_next_batch_and_each_gets_its_own_outcome() {
        let Started {
            gc,
            batches,
            release,
            ..
        } = start(4, 3);
        let first = gc.submit(renewal(1)).unwrap();
        assert_eq!(batches.recv().unwrap(), 1);
        // While the first batch commits, four more wait: the queue is full.
        let waiting: Vec<_> = (2..=5).map(|n| gc.submit(renewal(n)).unwrap()).collect();
        assert!(matches!(
            gc.submit(renewal(6)),
            Err(CaError::Overloaded { queue: 4 })
        ));
        release.send(Release::Commit).unwrap();
        assert!(!recorded(first));
        // The next batch takes what waited, up to the largest batch; the rest goes next.
        assert_eq!(batches.recv().unwrap(), 3);
        release.send(Release::Commit).unwrap();
        assert_eq!(batches.recv().unwrap(), 1);
        release.send(Release::Commit).unwrap();
        let outcomes: Vec<bool> = waiting.into_iter().map(recorded).collect();
        assert_eq!(outcomes, [true, false, true, false]);
    }

    #[test]
    fn a_batch_that_fails_to_commit_fails_each_of_its_writes_and_the_next_batch_commits() {
        let Started {
            gc,
            batches,
            release,
            recovered,
        } = start(8, 8);
        let first = gc.submit(renewal(2)).unwrap();
        assert_eq!(batches.recv().unwrap(), 1);
        let second = gc.submit(renewal(4)).unwrap();
        let third = gc.submit(renewal(6)).unwrap();
        release.send(Release::Commit).unwrap();
        assert!(recorded(first));
        assert_eq!(batches.recv().unwrap(), 2);
        release.send(Release::Fail).unwrap();
        for p in [second, third] {
            assert!(matches!(
                p.blocking_recv().unwrap(),
                Err(CaError::Internal(_))
            ));
        }
        recovered.recv().unwrap();
        let fourth = gc.submit(renewal(8)).unwrap();
        assert_eq!(batches.recv().unwrap(), 1);
        release.send(Release::Commit).unwrap();
        assert!(recorded(fourth));
    }

    #[test]
    fn a_batch_whose_datastore_panics_fails_only_its_own_writes_and_the_next_batch_commits() {
        let Started {
            gc,
            batches,
            release,
            recovered,
        } = start(8, 8);
        let first = gc.submit(renewal(2)).unwrap();
        assert_eq!(batches.recv().unwrap(), 1);
        let second = gc.submit(renewal(4)).unwrap();
        let third = gc.submit(renewal(6)).unwrap();
        release.send(Release::Panic).unwrap();
        // An error, not a hang and not a closed channel: the thread is still there.
        assert!(matches!(
            first.blocking_recv().unwrap(),
            Err(CaError::Internal(_))
        ));
        recovered.recv().unwrap();
        assert_eq!(batches.recv().unwrap(), 2);
        release.send(Release::Commit).unwrap();
        assert!(recorded(second));
        assert!(recorded(third));
        let fourth = gc.submit(renewal(8)).unwrap();
        assert_eq!(batches.recv().unwrap(), 1);
        release.send(Release::Commit).unwrap();
        assert!(recorded(fourth));
    }

    fn audited_start(audit: CaAudit) -> Started {
        start_with(8, 8, Some(Arc::new(audit)))
    }

    /// One event per recorded renewal, naming the serial it renewed from.
    fn audit_of(n: u8) -> Option<AuditOf> {
        Some(Box::new(move |outcome: &IssuanceOutcome| match outcome {
            IssuanceOutcome::Renew { recorded: true } => vec![meshgate_audit::AuditEvent::new(
                meshgate_audit::Component::Ca,
                "spiffe://test.example/w",
                meshgate_audit::Action::SvidRenew,
                format!("renewal {n}"),
                meshgate_audit::Outcome::Success,
            )],
            _ => Vec::new(),
        }))
    }

    #[test]
    fn a_committed_write_is_answered_once_its_audit_events_are_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let Started {
            gc,
            batches,
            release,
            ..
        } = audited_start(CaAudit::unsigned(&path).unwrap());
        let first = gc.queue(renewal(2), audit_of(2)).unwrap();
        assert_eq!(batches.recv().unwrap(), 1);
        let (second, third) = (
            gc.queue(renewal(4), audit_of(4)).unwrap(),
            gc.queue(renewal(5), audit_of(5)).unwrap(),
        );
        release.send(Release::Commit).unwrap();
        assert!(recorded(first));
        let log = std::fs::read_to_string(&path).unwrap();
        assert!(log.contains("renewal 2"), "{log}");
        assert!(!log.contains("renewal 4"), "{log}");
        // The next batch: one write with an event, one whose outcome has none.
        assert_eq!(batches.recv().unwrap(), 2);
        release.send(Release::Commit).unwrap();
        assert!(recorded(second));
        assert!(!recorded(third));
        let log = std::fs::read_to_string(&path).unwrap();
        assert!(log.contains("renewal 4"), "{log}");
        assert!(!log.contains("renewal 5"), "{log}");
        assert_eq!(meshgate_audit::verify_file(&path).unwrap().records, 2);
    }

    /// What the log's answer does to each requester of a batch: a failure to write the events
    /// fails exactly the writes that had events, with the log's error.
    #[test]
    fn a_failed_audit_write_fails_the_writes_whose_events_it_held_and_no_other() {
        let mut receivers = Vec::new();
        let answers = [(true, 2), (false, 3), (false, 4)]
            .into_iter()
            .map(|(audited, n)| {
                let (reply, rx) = oneshot::channel();
                receivers.push(rx);
                let recorded = n % 2 == 0;
                Answer {
                    reply,
                    outcome: Ok(IssuanceOutcome::Renew { recorded }),
                    audited,
                }
            })
            .collect();
        answer_all(answers, &Err(CaError::Audit("disk full".into())));
        let got: Vec<_> = receivers
            .into_iter()
            .map(|rx| rx.blocking_recv().unwrap())
            .collect();
        assert!(matches!(&got[0], Err(CaError::Audit(why)) if why == "disk full"));
        assert!(matches!(
            got[1],
            Ok(IssuanceOutcome::Renew { recorded: false })
        ));
        assert!(matches!(
            got[2],
            Ok(IssuanceOutcome::Renew { recorded: true })
        ));
    }
}
