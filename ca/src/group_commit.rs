//! Group commit for the server's issuance writes. One writer thread owns a datastore connection;
//! requests hand it their writes over a bounded queue and wait. It takes everything queued (up
//! to [`MAX_BATCH`]), applies it in one transaction with one sync to disk, and only then answers
//! each request with its own outcome: while one batch syncs the next one gathers, so the number
//! of syncs per second, not per issuance, is what the disk bounds.

use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, TrySendError, sync_channel};

use tokio::sync::oneshot;

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

/// A handle to the writer thread. Dropping it (with every clone of its sender) lets the thread
/// finish the writes queued and end.
#[derive(Debug)]
pub struct GroupCommit {
    tx: SyncSender<Job>,
    capacity: usize,
}

struct Job {
    write: IssuanceWrite,
    reply: oneshot::Sender<Result<IssuanceOutcome, CaError>>,
}

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
        let capacity = queue.max(1);
        let (tx, rx) = sync_channel(capacity);
        std::thread::Builder::new()
            .name("meshgate-ca-commit".into())
            .spawn(move || run(store, &rx, max_batch.max(1), &on_batch))
            .map_err(|e| CaError::Io {
                path: "the CA's group commit thread".into(),
                source: e,
            })?;
        Ok(Self { tx, capacity })
    }

    /// Queues `write` and waits until the transaction holding it is on disk (or failed).
    /// [`CaError::Overloaded`] at once, with nothing written, when the queue is full.
    pub async fn commit(&self, write: IssuanceWrite) -> Result<IssuanceOutcome, CaError> {
        self.submit(write)?
            .await
            .map_err(|_| CaError::Internal("the CA's group commit thread has stopped"))?
    }

    /// Queues `write` without waiting: the receiver gets its outcome once its batch committed.
    pub fn submit(&self, write: IssuanceWrite) -> Result<Pending, CaError> {
        let (reply, done) = oneshot::channel();
        match self.tx.try_send(Job { write, reply }) {
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

/// The writer thread: one batch per wake-up until every sender is gone.
fn run<S: CommitIssuances>(mut store: S, rx: &Receiver<Job>, max_batch: usize, on_batch: &OnBatch) {
    // Without this thread every later issuance would fail, and nothing would say so.
    let _abort = AbortIfUnwinding;
    let mut writes = Vec::with_capacity(max_batch);
    let mut replies = Vec::with_capacity(max_batch);
    while let Ok(first) = rx.recv() {
        writes.push(first.write);
        replies.push(first.reply);
        while writes.len() < max_batch {
            match rx.try_recv() {
                Ok(job) => {
                    writes.push(job.write);
                    replies.push(job.reply);
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
                on_batch(n);
                for (reply, outcome) in replies.drain(..).zip(outcomes) {
                    // A requester that went away (its connection closed) needs no answer; what
                    // it paid for is committed all the same, like any answer lost in transit.
                    let _ = reply.send(outcome);
                }
            }
            Ok(_) => {
                tracing::error!("a group commit of {n} issuances answered out of step");
                fail_all(&mut replies, "the datastore answered a batch out of step");
                recover(&mut store);
            }
            Err(e) => {
                // Nothing of the batch was written: every request in it fails, none is answered
                // with a certificate.
                tracing::error!("a group commit of {n} issuances failed: {e}");
                fail_all(&mut replies, "the datastore failed to commit");
                recover(&mut store);
            }
        }
    }
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

fn fail_all(
    replies: &mut Vec<oneshot::Sender<Result<IssuanceOutcome, CaError>>>,
    why: &'static str,
) {
    for reply in replies.drain(..) {
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
        let (entered, batches) = channel();
        let (release, gate) = channel();
        let (recovered_tx, recovered) = channel();
        let gate = Gate {
            entered,
            release: gate,
            recovered: recovered_tx,
        };
        let gc = GroupCommit::spawn(gate, queue, max_batch, Box::new(|_| {})).unwrap();
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
}
