//! The servers' front to the audit log: each event is encoded on the caller's thread and goes
//! over a bounded channel to one writer thread, which frames, hashes and appends them in
//! batches and syncs once per batch, off the request path; the sync of one batch overlaps the
//! writing of the next.

use std::fs::File;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{
    Receiver, RecvTimeoutError, SendError, SyncSender, TryRecvError, TrySendError, sync_channel,
};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::record::{Body, encode_body};
use crate::writer::SYSTEM_ACTOR;
use crate::{Action, AuditError, AuditEvent, AuditWriter, Outcome};

/// The most events the writer thread appends before it syncs: everything queued, up to this.
pub const MAX_BATCH: usize = 65_536;

/// How often an idle writer thread looks for a checkpoint that is due.
const TICK: Duration = Duration::from_secs(1);

/// A handle to the audit writer thread. Share it by reference (it is `Sync`) or in an `Arc`.
///
/// Nothing is dropped silently: when the queue is full, [`AuditSink::record`] blocks until the
/// writer thread catches up (backpressure), and [`AuditSink::try_record`], for callers that
/// must never wait (a gateway's request path), counts the event instead; the writer thread then
/// appends a `gap` record (details `count`) after its next batch, so the log says that, and how
/// many, events are missing there. If a write or sync fails the writer stops, the failure is
/// logged (`tracing`) and every later call returns [`AuditError::Failed`], so a caller learns
/// that events it handed over with `record` may be lost. Dropping the sink drains the queue,
/// syncs, closes the log (a `shutdown` checkpoint when the writer signs) and joins the thread;
/// [`AuditSink::shutdown`] does the same and returns the error. With a signer the writer
/// thread also writes the checkpoints that come due while no event arrives.
#[derive(Debug)]
pub struct AuditSink {
    tx: Option<SyncSender<Msg>>,
    thread: Option<JoinHandle<Result<(), AuditError>>>,
    failed: Arc<OnceLock<String>>,
    /// Events `try_record` could not queue since the last `gap` record.
    dropped: Arc<AtomicU64>,
    /// Batches synced so far.
    batches: Arc<AtomicU64>,
}

/// Called by the writer thread once an event is on disk (its seq) or cannot be. It runs on the
/// audit log's own threads: it must be quick and must not block or panic (hand the result to
/// a channel).
pub type Durable = Box<dyn FnOnce(Result<u64, AuditError>) + Send>;

enum Msg {
    Event {
        /// Encoded on the caller's thread: the writer thread only frames and hashes it.
        body: Body,
        action: Action,
        reply: Option<Durable>,
    },
    /// Several events for one caller, appended together (in order, into one batch) and
    /// answered once: with the last one's seq, or the first refusal.
    Events {
        bodies: Vec<(Body, Action)>,
        reply: Durable,
    },
    Flush(SyncSender<Result<(), AuditError>>),
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Event { action, reply, .. } => f
                .debug_struct("Event")
                .field("action", action)
                .field("durable", &reply.is_some())
                .finish_non_exhaustive(),
            Self::Events { bodies, .. } => f
                .debug_struct("Events")
                .field("count", &bodies.len())
                .finish_non_exhaustive(),
            Self::Flush(_) => f.write_str("Flush"),
        }
    }
}

impl AuditSink {
    /// Starts the writer thread with a queue of `capacity` events (at least 1).
    pub fn spawn(writer: AuditWriter, capacity: usize) -> Result<Self, AuditError> {
        let (tx, rx) = sync_channel(capacity.max(1));
        let failed = Arc::new(OnceLock::new());
        let dropped = Arc::new(AtomicU64::new(0));
        let batches = Arc::new(AtomicU64::new(0));
        let thread_failed = Arc::clone(&failed);
        let thread_dropped = Arc::clone(&dropped);
        let thread_batches = Arc::clone(&batches);
        let path = writer.path().to_owned();
        let thread = std::thread::Builder::new()
            .name("meshgate-audit".into())
            .spawn(move || run(writer, &rx, &thread_failed, &thread_dropped, thread_batches))
            .map_err(AuditError::io(path, "start the audit writer thread"))?;
        Ok(Self {
            tx: Some(tx),
            thread: Some(thread),
            failed,
            dropped,
            batches,
        })
    }

    /// Queues `event`; blocks while the queue is full. It is durable once a later
    /// [`AuditSink::flush`] returns `Ok` (or shortly after, when its batch is synced).
    pub fn record(&self, event: AuditEvent) -> Result<(), AuditError> {
        let (body, action) = (encode_body(&event)?, event.action);
        self.send(Msg::Event {
            body,
            action,
            reply: None,
        })
    }

    /// Queues `event` if the queue has room and returns `Ok(true)`; never blocks. When the queue
    /// is full the event is counted, not queued, and `Ok(false)` says so: the writer thread
    /// records the count in a `gap` record after its next batch. Errors are those of `record`.
    pub fn try_record(&self, event: AuditEvent) -> Result<bool, AuditError> {
        let (body, action) = (encode_body(&event)?, event.action);
        if let Some(cause) = self.failed.get() {
            return Err(AuditError::Failed {
                cause: cause.clone(),
            });
        }
        let tx = self.tx.as_ref().ok_or(AuditError::Closed)?;
        let msg = Msg::Event {
            body,
            action,
            reply: None,
        };
        match tx.try_send(msg) {
            Ok(()) => Ok(true),
            Err(TrySendError::Full(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                Ok(false)
            }
            Err(TrySendError::Disconnected(_)) => Err(AuditError::Closed),
        }
    }

    /// Queues `event` and waits until the batch holding it is synced to disk; returns its seq.
    /// For events that must not be acknowledged before they are in the log (issuance).
    pub fn record_durable(&self, event: AuditEvent) -> Result<u64, AuditError> {
        let (body, action) = (encode_body(&event)?, event.action);
        let (reply, done) = sync_channel(1);
        self.send(Msg::Event {
            body,
            action,
            reply: Some(Box::new(move |result| {
                let _ = reply.send(result);
            })),
        })?;
        done.recv().map_err(|_| AuditError::Closed)?
    }

    /// Queues `events` as one message (blocking while the queue is full), so that they go into
    /// the same batch, in order, and calls `durable` once, from the log's threads: with the
    /// last event's seq once all of them are on disk, or with the first error if any was
    /// refused (the others are still written). An event that cannot be encoded refuses the
    /// whole call here, with nothing queued and `durable` not called. No events: `durable` is
    /// called at once with seq 0.
    pub fn record_all_then(
        &self,
        events: &[AuditEvent],
        durable: Durable,
    ) -> Result<(), AuditError> {
        if events.is_empty() {
            durable(Ok(0));
            return Ok(());
        }
        let bodies = events
            .iter()
            .map(|event| Ok((encode_body(event)?, event.action)))
            .collect::<Result<Vec<_>, AuditError>>()?;
        self.send(Msg::Events {
            bodies,
            reply: durable,
        })
    }

    /// Waits until everything queued before this call is synced to disk.
    pub fn flush(&self) -> Result<(), AuditError> {
        let (reply, done) = sync_channel(1);
        self.send(Msg::Flush(reply))?;
        done.recv().map_err(|_| AuditError::Closed)?
    }

    /// How many batches have been synced (fdatasync) so far: events over batches is the
    /// average batch.
    pub fn batches_synced(&self) -> u64 {
        self.batches.load(Ordering::Relaxed)
    }

    /// Drains the queue, syncs, stops the thread, and returns the first error it met.
    pub fn shutdown(mut self) -> Result<(), AuditError> {
        self.stop()
    }

    fn send(&self, msg: Msg) -> Result<(), AuditError> {
        if let Some(cause) = self.failed.get() {
            return Err(AuditError::Failed {
                cause: cause.clone(),
            });
        }
        let tx = self.tx.as_ref().ok_or(AuditError::Closed)?;
        tx.send(msg).map_err(|_| AuditError::Closed)
    }

    fn stop(&mut self) -> Result<(), AuditError> {
        drop(self.tx.take());
        let Some(thread) = self.thread.take() else {
            return Ok(());
        };
        let result = thread
            .join()
            .map_err(|_| AuditError::Internal("the audit writer thread panicked"))?;
        match self.failed.get() {
            Some(cause) => Err(AuditError::Failed {
                cause: cause.clone(),
            }),
            None => result,
        }
    }
}

impl Drop for AuditSink {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            tracing::error!(error = %e, "audit sink closed with an error");
        }
    }
}

/// The writer thread: one batch per wake-up (everything queued, up to [`MAX_BATCH`]) until
/// every sender is gone, then a clean close. A second thread syncs each batch (fdatasync) and
/// answers its waiting callers while this one encodes and writes the next, so encoding
/// overlaps the disk's latency and batches grow while the disk is slow.
fn run(
    mut writer: AuditWriter,
    rx: &Receiver<Msg>,
    failed: &Arc<OnceLock<String>>,
    dropped: &AtomicU64,
    batches: Arc<AtomicU64>,
) -> Result<(), AuditError> {
    // One batch syncing and one waiting: more would only hold replies back.
    let (jobs, job_rx) = sync_channel::<SyncJob>(1);
    let syncer_failed = Arc::clone(failed);
    let path = writer.path().to_owned();
    let syncer = std::thread::Builder::new()
        .name("meshgate-audit-sync".into())
        .spawn(move || {
            while let Ok(job) = job_rx.recv() {
                sync_job(job, &syncer_failed, &path);
                batches.fetch_add(1, Ordering::Relaxed);
            }
        })
        .map_err(AuditError::io(writer.path(), "start the audit sync thread"))?;
    let mut batch = Vec::with_capacity(1024);
    loop {
        let first = match rx.recv_timeout(TICK) {
            Ok(msg) => msg,
            Err(RecvTimeoutError::Timeout) => {
                upkeep(&mut writer, failed);
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => break,
        };
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(msg) => batch.push(msg),
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        }
        if let Some(job) = write_batch(&mut writer, batch.drain(..), failed, dropped)
            && let Err(SendError(job)) = jobs.send(job)
        {
            // The sync thread is gone (it cannot be, short of a panic): sync here instead.
            sync_job(job, failed, writer.path());
        }
    }
    drop(jobs);
    if syncer.join().is_err() {
        return Err(AuditError::Internal("the audit sync thread panicked"));
    }
    // Events refused after the last batch still leave their mark.
    if let Some(job) = write_batch(&mut writer, std::iter::empty(), failed, dropped) {
        sync_job(job, failed, writer.path());
    }
    if failed.get().is_some() {
        return Ok(());
    }
    writer.close()
}

/// A written batch waiting for its sync, and the callers waiting for that.
struct SyncJob {
    file: Arc<File>,
    durable: Vec<(Durable, u64)>,
    flushes: Vec<SyncSender<Result<(), AuditError>>>,
    /// The batch's encoded events, freed by the sync thread while it waits for the disk rather
    /// than by the writer thread, whose time bounds throughput.
    spent: Vec<Body>,
}

/// Syncs a batch's file and answers its callers; a failed sync stops the sink.
fn sync_job(job: SyncJob, failed: &OnceLock<String>, path: &std::path::Path) {
    if failed.get().is_none()
        && let Err(e) = job.file.sync_data()
    {
        let error = AuditError::io(path, "sync")(e);
        tracing::error!(%error, "audit log sync failed");
        failed.get_or_init(|| error.to_string());
    }
    answer(job.durable, job.flushes, failed.get());
    drop(job.spent);
}

/// An idle moment: a checkpoint if one is due (the writer signs within its interval even when
/// no event comes).
fn upkeep(writer: &mut AuditWriter, failed: &OnceLock<String>) {
    if let Some(cause) = failed.get() {
        writer.fail(cause.clone());
        return;
    }
    if let Err(e) = writer.checkpoint_if_due() {
        tracing::error!(error = %e, "audit checkpoint failed");
        if let Some(cause) = writer.failure() {
            failed.get_or_init(|| cause.to_owned());
        }
    }
}

/// The `gap` record for `count` events that found the queue full.
fn gap(writer: &AuditWriter, count: u64) -> AuditEvent {
    AuditEvent::new(
        writer.component(),
        SYSTEM_ACTOR,
        Action::Gap,
        writer.path().display().to_string(),
        Outcome::Failure,
    )
    .with_reason("the audit queue was full; these events were not written")
    .with_detail("count", count)
}

/// Appends a batch and then, if events were refused for a full queue meanwhile, the `gap`
/// record that counts them: they are missing at about this place in the log (they were refused
/// while this batch was being taken or written). Hands the batch to the kernel and returns the
/// sync it needs; after a failure answers the callers at once and returns `None`.
fn write_batch(
    writer: &mut AuditWriter,
    batch: impl Iterator<Item = Msg>,
    failed: &OnceLock<String>,
    dropped: &AtomicU64,
) -> Option<SyncJob> {
    if let Some(cause) = failed.get()
        && writer.failure().is_none()
    {
        writer.fail(cause.clone());
    }
    let mut durable = Vec::new();
    let mut flushes = Vec::new();
    let mut spent = Vec::with_capacity(batch.size_hint().0);
    for msg in batch {
        match msg {
            Msg::Event {
                body,
                action,
                reply,
            } => {
                match writer.append_body(&body) {
                    Ok(seq) => durable.extend(reply.map(|reply| (reply, seq))),
                    Err(e) if writer.failure().is_none() => {
                        // This event alone is refused (e.g. the clock is out of range).
                        tracing::error!(error = %e, ?action, "audit event not written");
                        if let Some(reply) = reply {
                            reply(Err(e));
                        }
                    }
                    Err(e) => {
                        if failed.get().is_none() {
                            tracing::error!(error = %e, "audit writer failed");
                        }
                        durable.extend(reply.map(|reply| (reply, 0)));
                    }
                }
                spent.push(body);
            }
            Msg::Events { bodies, reply } => {
                let mut last = 0;
                let mut refused = None;
                for (body, action) in bodies {
                    match writer.append_body(&body) {
                        Ok(seq) => last = seq,
                        Err(e) if writer.failure().is_none() => {
                            // This event alone is refused (its time, its size): the caller
                            // hears of it, and the others are still written.
                            tracing::error!(error = %e, ?action, "audit event not written");
                            refused.get_or_insert(e);
                        }
                        Err(e) => {
                            if failed.get().is_none() {
                                tracing::error!(error = %e, "audit writer failed");
                            }
                        }
                    }
                    spent.push(body);
                }
                // After a writer failure the sync answers it with that failure.
                match refused {
                    Some(e) => reply(Err(e)),
                    None => durable.push((reply, last)),
                }
            }
            Msg::Flush(reply) => flushes.push(reply),
        }
    }
    if writer.failure().is_none() {
        let count = dropped.swap(0, Ordering::Relaxed);
        if count > 0 {
            let event = gap(writer, count);
            if let Err(e) = writer.append(&event) {
                tracing::error!(error = %e, count, "audit gap record not written");
                if writer.failure().is_none() {
                    // Refused alone (the clock): the next batch says it instead.
                    dropped.fetch_add(count, Ordering::Relaxed);
                }
            }
        }
    }
    let file = match writer.write_out() {
        Ok(file) => Some(file),
        Err(e) => {
            if failed.get().is_none() {
                tracing::error!(error = %e, "audit writer failed");
            }
            None
        }
    };
    if let Some(cause) = writer.failure() {
        failed.get_or_init(|| cause.to_owned());
    }
    match file {
        Some(file) if failed.get().is_none() => Some(SyncJob {
            file,
            durable,
            flushes,
            spent,
        }),
        _ => {
            answer(durable, flushes, failed.get());
            None
        }
    }
}

/// Answers the callers waiting for a batch: its seqs, or the failure that stopped the writer.
/// A caller that gave up waiting is gone; its reply has nowhere to go.
fn answer(
    durable: Vec<(Durable, u64)>,
    flushes: Vec<SyncSender<Result<(), AuditError>>>,
    failure: Option<&String>,
) {
    let error = || AuditError::Failed {
        cause: failure.cloned().unwrap_or_default(),
    };
    for (reply, seq) in durable {
        reply(if failure.is_some() {
            Err(error())
        } else {
            Ok(seq)
        });
    }
    for reply in flushes {
        let _ = reply.send(if failure.is_some() {
            Err(error())
        } else {
            Ok(())
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Action, Component, Outcome};

    fn event() -> AuditEvent {
        AuditEvent::new(
            Component::Ca,
            "anonymous",
            Action::TokenUse,
            "t",
            Outcome::Success,
        )
    }

    /// A sink with a queue of one whose writer thread, inside its first append, says so on
    /// `entered` and then waits for `go`: the queue fills deterministically.
    fn gated_sink(
        path: &std::path::Path,
        component: Component,
    ) -> (
        AuditSink,
        std::sync::mpsc::Receiver<()>,
        std::sync::mpsc::Sender<()>,
    ) {
        use std::sync::Mutex;
        use std::sync::mpsc::channel;
        let (entered_tx, entered) = channel::<()>();
        let (go, go_rx) = channel::<()>();
        let gate = Mutex::new(Some((entered_tx, go_rx)));
        let clock = move || {
            if let Some((entered, go)) = gate.lock().unwrap().take() {
                entered.send(()).unwrap();
                go.recv().unwrap();
            }
            time::OffsetDateTime::now_utc()
        };
        let (writer, _) = AuditWriter::open_with_clock(path, component, clock).unwrap();
        (AuditSink::spawn(writer, 1).unwrap(), entered, go)
    }

    /// A sink whose every write fails: /dev/full takes writes into no space.
    #[cfg(target_os = "linux")]
    fn full_sink() -> AuditSink {
        let path = std::path::Path::new("/dev/full");
        let file = std::fs::OpenOptions::new().append(true).open(path).unwrap();
        AuditSink::spawn(AuditWriter::over(file, path), 8).unwrap()
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_failed_write_reaches_every_caller_and_stops_the_sink() {
        let sink = full_sink();
        sink.record(event()).unwrap();
        let err = sink.record_durable(event()).unwrap_err();
        assert!(matches!(err, AuditError::Failed { .. }), "{err}");
        assert!(err.to_string().contains("/dev/full"), "{err}");
        assert!(matches!(
            sink.record(event()),
            Err(AuditError::Failed { .. })
        ));
        assert!(matches!(sink.flush(), Err(AuditError::Failed { .. })));
        assert!(matches!(sink.shutdown(), Err(AuditError::Failed { .. })));
    }

    /// A callback that hands its result to a channel, for tests.
    fn to_channel() -> (Durable, std::sync::mpsc::Receiver<Result<u64, AuditError>>) {
        let (tx, rx) = std::sync::mpsc::channel();
        (Box::new(move |result| tx.send(result).unwrap()), rx)
    }

    #[test]
    fn record_all_then_writes_the_events_in_order_in_one_batch_and_answers_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let (sink, entered, go) = gated_sink(&path, Component::Ca);
        let (first, first_done) = to_channel();
        sink.record_all_then(&[event().with_reason("before")], first)
            .unwrap();
        // The writer thread holds that one; the three below wait in the queue as one message.
        entered.recv().unwrap();
        let (all, all_done) = to_channel();
        let events = ["a", "b", "c"].map(|r| event().with_reason(r));
        sink.record_all_then(&events, all).unwrap();
        assert!(
            all_done.try_recv().is_err(),
            "answered before it was written"
        );
        go.send(()).unwrap();
        let before = first_done.recv().unwrap().unwrap();
        // Answered once, with the last event's seq.
        assert_eq!(all_done.recv().unwrap().unwrap(), before + 3);
        // The first event's batch, then the three together (the count follows the answers).
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while sink.batches_synced() < 2 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(sink.batches_synced(), 2);
        sink.shutdown().unwrap();
        let reasons: Vec<String> = std::fs::read_to_string(&path)
            .unwrap()
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                v["reason"].as_str().unwrap().to_owned()
            })
            .collect();
        assert_eq!(reasons, ["before", "a", "b", "c"]);
        assert_eq!(crate::verify_file(&path).unwrap().records, 4);
    }

    #[test]
    fn record_all_then_answers_nothing_to_write_at_once_and_a_refusal_with_its_error() {
        use std::sync::atomic::{AtomicI64, Ordering};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        // The clock stamps each appended record; armed with n, its n-th stamp from then on is
        // out of range (and the event refused alone).
        let countdown = Arc::new(AtomicI64::new(0));
        let clock_countdown = Arc::clone(&countdown);
        let clock = move || {
            let now = time::OffsetDateTime::now_utc();
            if clock_countdown.fetch_sub(1, Ordering::SeqCst) == 1 {
                now.replace_year(-1).unwrap()
            } else {
                now
            }
        };
        let (writer, _) = AuditWriter::open_with_clock(&path, Component::Ca, clock).unwrap();
        let sink = AuditSink::spawn(writer, 8).unwrap();
        let (none, none_done) = to_channel();
        sink.record_all_then(&[], none).unwrap();
        assert_eq!(none_done.try_recv().unwrap().unwrap(), 0);
        // The middle one of three is refused: the caller hears of it, the other two are written.
        countdown.store(2, Ordering::SeqCst);
        let (refused, refused_done) = to_channel();
        let events = ["a", "b", "c"].map(|r| event().with_reason(r));
        sink.record_all_then(&events, refused).unwrap();
        let err = refused_done.recv().unwrap().unwrap_err();
        assert!(matches!(err, AuditError::BadTime(_)), "{err}");
        // A refusal alone stops nothing: the next event follows them in the chain.
        let (fine, fine_done) = to_channel();
        sink.record_all_then(&[event().with_reason("d")], fine)
            .unwrap();
        assert_eq!(fine_done.recv().unwrap().unwrap(), 3);
        sink.shutdown().unwrap();
        let records: Vec<(u64, String)> = std::fs::read_to_string(&path)
            .unwrap()
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                (
                    v["seq"].as_u64().unwrap(),
                    v["reason"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        let expected = [(1, "a"), (2, "c"), (3, "d")].map(|(n, r)| (n, r.to_owned()));
        assert_eq!(records, expected);
        assert_eq!(crate::verify_file(&path).unwrap().records, 3);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn record_all_then_reports_a_failed_write() {
        let sink = full_sink();
        let (all, all_done) = to_channel();
        sink.record_all_then(&[event(), event()], all).unwrap();
        let err = all_done.recv().unwrap().unwrap_err();
        assert!(matches!(err, AuditError::Failed { .. }), "{err}");
        assert!(matches!(
            sink.record_all_then(&[event()], to_channel().0),
            Err(AuditError::Failed { .. })
        ));
    }

    #[test]
    fn events_refused_by_a_full_queue_leave_a_gap_record_with_their_count() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let (sink, entered, go) = gated_sink(&path, Component::Gateway);
        assert!(sink.try_record(event()).unwrap());
        entered.recv().unwrap();
        // The thread holds the first event; the queue takes one more and refuses the rest.
        assert!(sink.try_record(event()).unwrap());
        assert!(!sink.try_record(event()).unwrap());
        assert!(!sink.try_record(event()).unwrap());
        assert!(!sink.try_record(event()).unwrap());
        go.send(()).unwrap();
        sink.shutdown().unwrap();

        let summary = crate::verify_file(&path).unwrap();
        assert_eq!(summary.records, 3);
        let records: Vec<serde_json::Value> = std::fs::read_to_string(&path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let actions: Vec<&str> = records
            .iter()
            .map(|r| r["action"].as_str().unwrap())
            .collect();
        assert_eq!(actions, ["token_use", "gap", "token_use"]);
        let gap = &records[1];
        assert_eq!(gap["details"]["count"], 3);
        assert_eq!(gap["actor"], SYSTEM_ACTOR);
        assert_eq!(gap["component"], "gateway");
        assert_eq!(gap["outcome"], "failure");
    }

    #[test]
    fn a_gap_at_shutdown_is_still_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let (writer, _) = AuditWriter::open(&path, Component::Gateway).unwrap();
        let sink = AuditSink::spawn(writer, 1).unwrap();
        sink.record(event()).unwrap();
        sink.flush().unwrap();
        // Nothing is queued now; a count left over is written before the thread ends.
        sink.dropped.fetch_add(2, Ordering::Relaxed);
        sink.shutdown().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let last: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
        assert_eq!(last["action"], "gap");
        assert_eq!(last["details"]["count"], 2);
        assert_eq!(crate::verify_file(&path).unwrap().records, 2);
    }

    #[test]
    fn an_event_the_clock_cannot_stamp_is_refused_alone() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let broken = Arc::new(AtomicBool::new(true));
        let clock_broken = Arc::clone(&broken);
        let clock = move || {
            let now = time::OffsetDateTime::now_utc();
            if clock_broken.load(Ordering::SeqCst) {
                now.replace_year(-1).unwrap()
            } else {
                now
            }
        };
        let (writer, _) = AuditWriter::open_with_clock(&path, Component::Ca, clock).unwrap();
        let sink = AuditSink::spawn(writer, 8).unwrap();
        let err = sink.record_durable(event()).unwrap_err();
        assert!(matches!(err, AuditError::BadTime(_)), "{err}");
        broken.store(false, Ordering::SeqCst);
        assert_eq!(sink.record_durable(event()).unwrap(), 1);
        sink.shutdown().unwrap();
    }
}
