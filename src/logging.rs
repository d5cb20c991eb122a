//! Logs on stderr, with the gateway's access-log lines written in batches.
//!
//! A line per request written on its own costs a `write(2)` per request, as much as forwarding
//! the request itself. Access-log lines (target `meshgate::access`) are therefore gathered in
//! memory while the gateway is busy and written together when its runtime has nothing left to do
//! (tokio's `on_thread_park`), when 64 KiB have gathered, before any other log line (so the order
//! on stderr is the order of the events), and at exit. An idle gateway writes a request's line as
//! soon as the request is done, as before; a busy one writes one batch per burst of work. Lines
//! not yet written are lost only if the process is killed in the middle of a burst (SIGKILL, an
//! abort), as with Envoy's buffered access log, which flushes every 10 s by default.
//!
//! Batching is on only where a runtime calls [`flush`] when it parks (the gateway command); every
//! other command writes each line as it comes.

use std::io::{IsTerminal as _, Write};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use tracing_subscriber::fmt::MakeWriter;

use crate::LogFormat;

/// The target of access-log events (see `meshgate_gateway`'s inbound and outbound handlers).
const ACCESS_TARGET: &str = "meshgate::access";
/// Pending lines are written once they reach this size even if the runtime never parks.
const MAX_PENDING: usize = 64 * 1024;

/// Access-log lines not yet written.
static PENDING: Mutex<Vec<u8>> = Mutex::new(Vec::new());
/// Whether access-log lines may wait in [`PENDING`] (see [`enable_batching`]).
static BATCHING: AtomicBool = AtomicBool::new(false);

/// Sets up the global subscriber: levels from MESHGATE_LOG (default: warnings and the access
/// log), text or JSON lines on stderr.
pub(crate) fn init(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("MESHGATE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,meshgate::access=info"));
    // Colours only for a person at a terminal (and never under NO_COLOR): files and journald
    // get plain lines.
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_timer(CachedTime)
        .with_writer(Stderr);
    match format {
        LogFormat::Text => logs.init(),
        // Fields at the top level (not under "fields"), so a pipeline reads `peer`, `status`,
        // `decision`, `rule` and `duration_ms` of an access-log line directly.
        LogFormat::Json => logs
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
    }
}

/// Lets access-log lines wait until [`flush`]. Only for a process whose runtime calls [`flush`]
/// whenever it parks, and [`flush`] again before it exits.
pub(crate) fn enable_batching() {
    BATCHING.store(true, Ordering::Release);
}

/// Writes the access-log lines gathered so far.
pub(crate) fn flush() {
    let mut pending = lock();
    write_out(&mut pending);
}

fn lock() -> std::sync::MutexGuard<'static, Vec<u8>> {
    // A panic while holding the lock leaves at worst a partial line; logging goes on.
    PENDING
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Writes `pending` to stderr and empties it. Errors are ignored, as tracing's own stderr writer
/// does: there is nowhere else to report them.
fn write_out(pending: &mut Vec<u8>) {
    if !pending.is_empty() {
        let _ = std::io::stderr().lock().write_all(pending);
        pending.clear();
    }
}

/// The `MakeWriter` of the subscriber: access-log lines to [`PENDING`] while batching, every
/// other line straight to stderr after what is pending.
#[derive(Debug, Clone, Copy)]
struct Stderr;

impl<'a> MakeWriter<'a> for Stderr {
    type Writer = Line;

    fn make_writer(&'a self) -> Line {
        Line { batched: false }
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> Line {
        Line {
            batched: meta.target() == ACCESS_TARGET && BATCHING.load(Ordering::Acquire),
        }
    }
}

/// The writer of one event (tracing's fmt layer formats the line and writes it whole).
#[derive(Debug)]
struct Line {
    batched: bool,
}

impl Write for Line {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.write_all(buf)?;
        Ok(buf.len())
    }

    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        let mut pending = lock();
        if self.batched {
            pending.extend_from_slice(buf);
            if pending.len() >= MAX_PENDING {
                write_out(&mut pending);
            }
            Ok(())
        } else {
            // What was logged before this line is written before it; the lock keeps a line
            // from another thread from coming between.
            write_out(&mut pending);
            std::io::stderr().lock().write_all(buf)
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// tracing-subscriber's `SystemTime` format (RFC 3339, UTC, microseconds), with the date and
/// time of day made once per second instead of once per line.
#[derive(Debug, Clone, Copy, Default)]
struct CachedTime;

thread_local! {
    /// The last second formatted on this thread, and its text up to the seconds.
    static SECOND: std::cell::RefCell<(u64, String)> = const { std::cell::RefCell::new((u64::MAX, String::new())) };
}

impl tracing_subscriber::fmt::time::FormatTime for CachedTime {
    fn format_time(&self, w: &mut tracing_subscriber::fmt::format::Writer<'_>) -> std::fmt::Result {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let secs = now.as_secs();
        SECOND.with(|cached| {
            let mut cached = cached.borrow_mut();
            if cached.0 != secs {
                let text = i64::try_from(secs)
                    .ok()
                    .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
                    .map(|t| {
                        format!(
                            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
                            t.year(),
                            u8::from(t.month()),
                            t.day(),
                            t.hour(),
                            t.minute(),
                            t.second()
                        )
                    })
                    .unwrap_or_else(|| "<unknown time>".to_owned());
                *cached = (secs, text);
            }
            write!(w, "{}.{:06}Z", cached.1, now.subsec_micros())
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test code

    use super::*;

    fn format(timer: &impl tracing_subscriber::fmt::time::FormatTime) -> String {
        let mut s = String::new();
        timer
            .format_time(&mut tracing_subscriber::fmt::format::Writer::new(&mut s))
            .unwrap();
        s
    }

    #[test]
    fn cached_time_reads_as_tracing_s_own() {
        // Both read the clock; compare up to the seconds, retrying across a second boundary.
        for _ in 0..3 {
            let ours = format(&CachedTime);
            let theirs = format(&tracing_subscriber::fmt::time::SystemTime);
            assert_eq!(ours.len(), theirs.len(), "{ours} vs {theirs}");
            assert!(ours.ends_with('Z'), "{ours}");
            if ours[..19] == theirs[..19] {
                // The same format: digits where tracing has digits.
                let shape = |s: &str| s.chars().map(|c| c.is_ascii_digit()).collect::<Vec<_>>();
                assert_eq!(shape(&ours), shape(&theirs));
                return;
            }
        }
        panic!("the two timers never agreed on the second");
    }
}
