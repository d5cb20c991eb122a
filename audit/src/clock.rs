//! The clock seam: where a writer gets the time it stamps on records, so tests can fix it.

use time::OffsetDateTime;

/// A source of the current time.
pub trait Clock: Send {
    /// Now. Any offset is fine; records are written in UTC.
    fn now(&self) -> OffsetDateTime;
}

/// The system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }
}

/// Any `Fn() -> OffsetDateTime` is a clock (handy in tests).
impl<F: Fn() -> OffsetDateTime + Send> Clock for F {
    fn now(&self) -> OffsetDateTime {
        self()
    }
}
