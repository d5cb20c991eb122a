//! Write throughput of an `AuditSink` (not shipped): events per second with batching and one
//! fdatasync per batch, and the CPU each event costs (which other load on the machine does
//! not change much, unlike the wall-clock rate).
//!
//!     cargo run --release -p meshgate-audit --example throughput -- [EVENTS] [PRODUCERS] [DIR]
//!
//! EVENTS (default 1,000,000) gateway-denial events (about 480 bytes each on disk) are recorded
//! by PRODUCERS threads (default 1) through a sink with the 4096-event queue the CA and
//! gateways use, then flushed, so every event counted is on disk. The log goes to a temporary
//! directory under DIR (default the cargo target directory: a real disk, not a tmpfs).

use std::path::PathBuf;
use std::time::Instant;

use meshgate_audit::{AuditSink, AuditWriter, Component, MAX_BATCH};

mod common;
use common::event;

type Error = Box<dyn std::error::Error>;

/// The queue the CA and gateways give their sinks.
const QUEUE: usize = 4096;

fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let events: u64 = args.first().map_or(Ok(1_000_000), |s| s.parse())?;
    let producers: u64 = args.get(1).map_or(Ok(1), |s| s.parse())?;
    let base = args.get(2).map_or_else(
        || {
            std::env::var_os("CARGO_TARGET_DIR")
                .map_or_else(|| PathBuf::from("target"), PathBuf::from)
        },
        PathBuf::from,
    );
    std::fs::create_dir_all(&base)?;
    let dir = tempfile::tempdir_in(&base)?;
    let (writer, _) = AuditWriter::open(dir.path().join("audit.jsonl"), Component::Gateway)?;
    let sink = AuditSink::spawn(writer, QUEUE)?;

    let cpu_before = cpu_seconds()?;
    let started = Instant::now();
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..producers)
            .map(|p| {
                let sink = &sink;
                s.spawn(move || {
                    for i in (p..events).step_by(usize::try_from(producers).unwrap_or(1)) {
                        sink.record(event(i))?;
                    }
                    Ok::<_, meshgate_audit::AuditError>(())
                })
            })
            .collect();
        handles.into_iter().try_for_each(|h| {
            h.join()
                .map_err(|_| "a producer panicked")?
                .map_err(Error::from)
        })
    })?;
    sink.flush()?;
    let wall = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds()? - cpu_before;
    let batches = sink.batches_synced().max(1);
    sink.shutdown()?;

    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    #[expect(clippy::cast_precision_loss, reason = "a report, not accounting")]
    let (rate, per_event_us, avg_batch) = (
        events as f64 / wall,
        cpu / events as f64 * 1e6,
        events as f64 / batches as f64,
    );
    println!(
        "{events} events, {producers} producer(s): {rate:.0} events/s on disk ({wall:.2} s), \
         {per_event_us:.2} µs CPU per event (all threads), {batches} fdatasyncs, \
         average batch {avg_batch:.0} (cap {MAX_BATCH}); load average {}",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    Ok(())
}

/// User plus system CPU time of this process so far (Linux, from /proc/self/stat).
fn cpu_seconds() -> Result<f64, Error> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    // Fields after the command name (which may hold spaces) start at the state, field 3.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15, i.e. 11 and 12 after the state; 100 ticks a second.
    #[expect(clippy::cast_precision_loss, reason = "seconds for a report")]
    Ok((ticks(11) + ticks(12)) as f64 / 100.0)
}
