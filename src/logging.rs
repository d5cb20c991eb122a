//! Logs on stderr, with the gateway's access-log lines written in batches.
//!
//! A line written on its own costs a `write(2)` per request, one of the five or so system calls
//! a gateway makes per request it forwards. Access-log lines (target `meshgate::access`) are therefore gathered in
//! memory while the gateway is busy and written together when its runtime has nothing left to do
//! (tokio's `on_thread_park`), every second in any case, when 64 KiB have gathered, before any
//! other log line (so the order on stderr is the order of the events), before a panic's message,
//! and at exit. An idle gateway writes a request's line as soon as the request is done, as
//! before; a busy one writes one batch per burst of work. Lines not yet written are lost only if
//! the process is killed by a signal it does not handle (SIGKILL, SIGQUIT) or aborts, at most the
//! last second's, as with Envoy's buffered access log (which flushes every 10 s by default).
//!
//! Batching is on only where a runtime calls [`flush`] when it parks (the gateway command); every
//! other command writes each line as it comes.

use std::fmt::Write as _;
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
        LogFormat::Text => logs.event_format(Text::new(CachedTime)).init(),
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
/// whenever it parks, runs [`flush_every`], and calls [`flush`] again before it exits. A panic
/// writes what is pending before its message.
pub(crate) fn enable_batching() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        // `try_lock`: the panic may have come while this thread held the lock.
        if let Ok(mut pending) = PENDING.try_lock() {
            write_out(&mut pending);
        }
        previous(info);
    }));
    BATCHING.store(true, Ordering::Release);
}

/// Flushes every `period`, so that a runtime that never runs out of work (a tunnel copying at
/// line rate on a single thread) still writes its access lines at most `period` late.
pub(crate) async fn flush_every(period: std::time::Duration) {
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        flush();
    }
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

/// The text format, with a fast path for access-log lines.
///
/// tracing-subscriber's `Full` format spends most of an access line on `core::fmt` machinery and
/// on escaping each string field character by character (about 11,000 instructions per line,
/// a fifth of the outbound side's work per request; docs/profiles). An access event outside any
/// span, written without colours, is formatted here instead, byte for byte as `Full` writes it
/// (a test compares the two); every other event, and any field this path does not handle, goes
/// to `Full` itself.
#[derive(Debug)]
struct Text<T> {
    full: tracing_subscriber::fmt::format::Format<tracing_subscriber::fmt::format::Full, T>,
    timer: T,
}

impl<T: tracing_subscriber::fmt::time::FormatTime + Clone> Text<T> {
    fn new(timer: T) -> Self {
        Self {
            full: tracing_subscriber::fmt::format::Format::default().with_timer(timer.clone()),
            timer,
        }
    }
}

// Only with the default field formatter, the one whose output the fast path reproduces.
impl<S, T> tracing_subscriber::fmt::FormatEvent<S, tracing_subscriber::fmt::format::DefaultFields>
    for Text<T>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    T: tracing_subscriber::fmt::time::FormatTime,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<
            '_,
            S,
            tracing_subscriber::fmt::format::DefaultFields,
        >,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let meta = event.metadata();
        if meta.target() == ACCESS_TARGET
            && !writer.has_ansi_escapes()
            && ctx.event_scope().is_none()
        {
            let mut line = String::with_capacity(256);
            let mut fields = PlainFields {
                line: &mut line,
                first: true,
                unhandled: false,
            };
            event.record(&mut fields);
            if !fields.unhandled {
                // `Full` without colours: "<time> <level, 5 wide> <target>: <fields>\n".
                // As `Full` does: a timer that fails leaves a marker, not a lost line.
                if self.timer.format_time(&mut writer).is_err() {
                    writer.write_str("<unknown time>")?;
                }
                // " {level:>5} {target}: {line}\n", without core::fmt.
                let level = meta.level().as_str();
                writer.write_str(&"      "[..6_usize.saturating_sub(level.len()).max(1)])?;
                for part in [level, " ", meta.target(), ": ", &line, "\n"] {
                    writer.write_str(part)?;
                }
                return Ok(());
            }
        }
        self.full.format_event(ctx, writer, event)
    }
}

/// Writes fields as tracing-subscriber's `DefaultVisitor` (0.3) does without colours: `log.*`
/// fields left out, the rest separated by one space, `message` bare, others `name=<Debug of the
/// value>`; strings that Debug would print unchanged between quotes are copied without going
/// through `core::fmt`. Sets `unhandled` for what it leaves to `DefaultVisitor`: a message that
/// is not printable ASCII without quotes or backslashes (which `DefaultVisitor` may escape),
/// errors, byte strings.
struct PlainFields<'a> {
    line: &'a mut String,
    first: bool,
    unhandled: bool,
}

/// Printable ASCII other than `"` and `\`: what `Debug` of a `str` copies unchanged.
fn plain(value: &str) -> bool {
    value
        .bytes()
        .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
}

impl PlainFields<'_> {
    /// The separator and `name=`; `None` for a field `DefaultVisitor` leaves out.
    fn start(&mut self, field: &tracing::field::Field) -> Option<()> {
        let name = field.name();
        if name.starts_with("log.") {
            return None;
        }
        if self.first {
            self.first = false;
        } else {
            self.line.push(' ');
        }
        self.line.push_str(name.strip_prefix("r#").unwrap_or(name));
        self.line.push('=');
        Some(())
    }
}

impl tracing::field::Visit for PlainFields<'_> {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() == "message" {
            if plain(value) {
                if !self.first {
                    self.line.push(' ');
                }
                self.first = false;
                self.line.push_str(value);
            } else {
                self.unhandled = true;
            }
        } else if self.start(field).is_some() {
            if plain(value) {
                self.line.push('"');
                self.line.push_str(value);
                self.line.push('"');
            } else {
                let _ = write!(self.line, "{value:?}");
            }
        }
    }

    // Debug of an integer or a bool is its plain text; written without going through core::fmt.
    fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
        if self.start(field).is_some() {
            self.line.push_str(itoa::Buffer::new().format(value));
        }
    }

    fn record_i64(&mut self, field: &tracing::field::Field, value: i64) {
        if self.start(field).is_some() {
            self.line.push_str(itoa::Buffer::new().format(value));
        }
    }

    fn record_bool(&mut self, field: &tracing::field::Field, value: bool) {
        if self.start(field).is_some() {
            self.line.push_str(if value { "true" } else { "false" });
        }
    }

    // A duration in milliseconds to the microsecond (`duration_ms`) is written from its digits;
    // any other float goes through `core::fmt`.
    fn record_f64(&mut self, field: &tracing::field::Field, value: f64) {
        if self.start(field).is_some() && !push_thousandths(self.line, value) {
            let _ = write!(self.line, "{value:?}");
        }
    }

    fn record_error(
        &mut self,
        _field: &tracing::field::Field,
        _value: &(dyn std::error::Error + 'static),
    ) {
        self.unhandled = true;
    }

    fn record_bytes(&mut self, _field: &tracing::field::Field, _value: &[u8]) {
        self.unhandled = true;
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            // tracing's macros pass the message as `format_args!`, whose Debug is its text.
            if !self.first {
                self.line.push(' ');
            }
            self.first = false;
            let at = self.line.len();
            let _ = write!(self.line, "{value:?}");
            if !self.line.get(at..).is_some_and(plain) {
                self.unhandled = true;
            }
        } else if self.start(field).is_some() {
            let _ = write!(self.line, "{value:?}");
        }
    }
}

/// Writes `value` as `Debug` of an `f64` would, if it is a whole number of thousandths below
/// 10^9 (what `duration_ms` holds: microseconds / 1000); returns false, writing nothing,
/// otherwise.
///
/// For such a value, the closest `f64` to n/1000, `Debug` writes the shortest decimal that reads
/// back as the same `f64`, in positional notation (it switches to exponents only below 10^-4 or
/// from 10^16 on): n/1000 itself with its trailing zeros dropped, and `.0` when it is whole. No
/// shorter decimal reads back as it, since any other decimal with at most three places is at
/// least 0.001 away, and below 10^9 the gap between two `f64` is under 10^-6.
fn push_thousandths(line: &mut String, value: f64) -> bool {
    if !(value.is_sign_positive() && value < 1e9) {
        return false;
    }
    let scaled = (value * 1000.0).round();
    if scaled / 1000.0 != value {
        return false;
    }
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "a whole number from 0 to 10^12"
    )]
    let n = scaled as u64;
    line.push_str(itoa::Buffer::new().format(n / 1000));
    line.push('.');
    let mut fraction = n % 1000;
    if fraction == 0 {
        line.push('0');
    } else {
        // Three places, less the trailing zeros; the leading ones stay (5 → "005").
        let mut places = 3;
        while fraction.is_multiple_of(10) {
            fraction /= 10;
            places -= 1;
        }
        let mut digits = itoa::Buffer::new();
        let digits = digits.format(fraction);
        for _ in digits.len()..places {
            line.push('0');
        }
        line.push_str(digits);
    }
    true
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
        let uncached = tracing_subscriber::fmt::time::SystemTime;
        // Before 1970 or after 9999, or while this thread's locals are being torn down:
        // tracing's own timer, whatever it writes.
        let Ok(now) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) else {
            return uncached.format_time(w);
        };
        let secs = now.as_secs();
        let cached = SECOND.try_with(|cached| {
            let mut cached = cached.borrow_mut();
            if cached.0 != secs {
                let text = i64::try_from(secs)
                    .ok()
                    .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
                    .filter(|t| t.year() <= 9999)
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
                    })?;
                *cached = (secs, text);
            }
            let tail = micros_tail(now.subsec_micros());
            let tail = std::str::from_utf8(&tail).unwrap_or(".000000Z");
            Some(w.write_str(&cached.1).and_then(|()| w.write_str(tail)))
        });
        match cached {
            Ok(Some(written)) => written,
            _ => uncached.format_time(w),
        }
    }
}

/// `.<micros, 6 digits>Z`, as `format!(".{micros:06}Z")` writes it for micros below 10^6,
/// without core::fmt.
fn micros_tail(mut micros: u32) -> [u8; 8] {
    let mut tail = *b".000000Z";
    for digit in tail[1..7].iter_mut().rev() {
        *digit = b'0' + u8::try_from(micros % 10).unwrap_or(0);
        micros /= 10;
    }
    tail
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

    /// A timer that always writes the same text, so two runs can be compared byte for byte.
    #[derive(Debug, Clone, Copy)]
    struct FixedTime;

    impl tracing_subscriber::fmt::time::FormatTime for FixedTime {
        fn format_time(
            &self,
            w: &mut tracing_subscriber::fmt::format::Writer<'_>,
        ) -> std::fmt::Result {
            w.write_str("2026-11-27T00:00:00.000000Z")
        }
    }

    #[derive(Debug, Clone, Default)]
    struct Captured(std::sync::Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[derive(Debug)]
    struct Failure;

    impl std::fmt::Display for Failure {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("it failed")
        }
    }

    impl std::error::Error for Failure {}

    /// Access events of every shape the gateway writes, and some it does not.
    fn events() {
        let peer = "spiffe://bank.example/ns/shop/sa/checkout";
        tracing::info!(
            target: "meshgate::access",
            direction = "inbound",
            peer = %peer,
            method = %"GET",
            path = %"/v1/charges",
            status = 200_u16,
            decision = "allow",
            rule = "shop calls the benchmark path",
            duration_ms = 0.195_f64,
            "request"
        );
        tracing::info!(
            target: "meshgate::access",
            direction = "outbound",
            route = "payments",
            path = "/a b\"c\\d\te\u{7}\u{1b}[31m é\u{9b}",
            status = 403_u64,
            bytes = -3_i64,
            whole = 2.0_f64,
            big = 1e21_f64,
            zero = 0.0_f64,
            thousandth = 0.001_f64,
            half = 12.5_f64,
            large = 123_456.789_f64,
            inexact = 0.1_f64 + 0.2_f64,
            tiny = 1e-7_f64,
            negative_zero = -0.0_f64,
            not_a_number = f64::NAN,
            infinite = f64::INFINITY,
            upgraded = true,
            closed = false,
            least = i64::MIN,
            most = u64::MAX,
            r#type = "http",
            list = ?[1, 2],
            "request"
        );
        tracing::info!(target: "meshgate::access", status = 1_u8);
        tracing::info!(target: "meshgate::access", status = 1_u8, "{}", "formatted message");
        tracing::info!(target: "meshgate::access", "a message with\u{1b}[31m an escape");
        tracing::info!(target: "meshgate::access", error = &Failure as &(dyn std::error::Error + 'static), "request");
        tracing::warn!(target: "meshgate::access", status = 2_u8, "request");
        tracing::error!(target: "meshgate::access", status = 3_u8, "request");
        tracing::warn!(peer = "x", "not an access line");
    }

    fn formatted(ours: bool) -> String {
        let out = Captured::default();
        let writer = {
            let out = out.clone();
            move || out.clone()
        };
        let logs = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_timer(FixedTime)
            .with_writer(writer);
        if ours {
            tracing::subscriber::with_default(
                logs.event_format(Text::new(FixedTime)).finish(),
                events,
            );
        } else {
            tracing::subscriber::with_default(logs.finish(), events);
        }
        let bytes = out.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn access_lines_are_byte_for_byte_those_of_tracing_s_full_format() {
        let ours = formatted(true);
        let theirs = formatted(false);
        assert_eq!(ours.lines().count(), 9, "{ours}");
        assert!(
            ours.starts_with("2026-11-27T00:00:00.000000Z  INFO meshgate::access: request direction=\"inbound\" peer=spiffe://bank.example/ns/shop/sa/checkout method=GET path=/v1/charges status=200 decision=\"allow\" rule=\"shop calls the benchmark path\" duration_ms=0.195\n"),
            "{ours}"
        );
        assert_eq!(ours, theirs);
    }

    #[test]
    fn thousandths_are_written_as_debug_writes_them() {
        let debug = |v: f64| format!("{v:?}");
        let ours = |v: f64| {
            let mut line = String::new();
            push_thousandths(&mut line, v).then_some(line)
        };
        // Every duration up to 100 ms, then a spread of larger ones up to the bound.
        let mut micros: Vec<u64> = (0..100_000).collect();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..100_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            micros.push(x % 1_000_000_000_000);
        }
        micros.extend([999_999_999_999, 1_000_000, 1_000_000_000]);
        for m in micros {
            #[expect(clippy::cast_precision_loss, reason = "below 2^53: exact")]
            let v = m as f64 / 1000.0;
            assert_eq!(ours(v), Some(debug(v)), "{m} µs");
        }
        // Not thousandths, or out of range: left to core::fmt.
        for v in [
            0.1 + 0.2,
            1e-7,
            0.000_5,
            -0.0,
            -1.5,
            1e9,
            1e21,
            f64::NAN,
            f64::INFINITY,
            f64::MIN_POSITIVE,
        ] {
            assert_eq!(ours(v), None, "{v:?}");
        }
    }

    #[test]
    fn the_microseconds_are_written_as_core_fmt_writes_them() {
        for micros in (0..1_000_000).step_by(7).chain([0, 9, 10, 999_999]) {
            let tail = micros_tail(micros);
            assert_eq!(
                std::str::from_utf8(&tail).unwrap(),
                format!(".{micros:06}Z")
            );
        }
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
