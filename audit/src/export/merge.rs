//! The k-way merge of several logs into one time-ordered stream, holding one record per log.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use time::OffsetDateTime;

use super::stream::LogStream;
use crate::{AuditError, LogFiles};

/// Yields the logs' records earliest first. Ties go to the log named first; within a log, file
/// order is kept even where its clock stepped back (a log is never reordered).
#[derive(Debug)]
pub(crate) struct Merge {
    streams: Vec<LogStream>,
    /// The time of each log's current record, and the log's index.
    heap: BinaryHeap<Reverse<(OffsetDateTime, usize)>>,
    /// The log whose current record was handed out last; it moves on at the next call.
    pending: Option<usize>,
}

impl Merge {
    /// Opens every log (all before reading any, so a missing file fails early) and reads the
    /// first record of each.
    pub(crate) fn open(logs: &[LogFiles], allow_damaged: bool) -> Result<Self, AuditError> {
        let streams = logs
            .iter()
            .map(|log| LogStream::open(log, allow_damaged))
            .collect::<Result<Vec<_>, _>>()?;
        let mut merge = Self {
            heap: BinaryHeap::with_capacity(streams.len()),
            streams,
            pending: None,
        };
        for i in 0..merge.streams.len() {
            merge.advance(i)?;
        }
        Ok(merge)
    }

    /// The index of the log whose current record comes next; `None` when all logs are done.
    /// Read the record with [`Merge::stream`].
    pub(crate) fn next(&mut self) -> Result<Option<usize>, AuditError> {
        if let Some(i) = self.pending.take() {
            self.advance(i)?;
        }
        let next = self.heap.pop().map(|Reverse((_, i))| i);
        self.pending = next;
        Ok(next)
    }

    pub(crate) fn stream(&self, i: usize) -> Option<&LogStream> {
        self.streams.get(i)
    }

    /// The logs, in the order given, once the merge is done.
    pub(crate) fn into_streams(self) -> Vec<LogStream> {
        self.streams
    }

    fn advance(&mut self, i: usize) -> Result<(), AuditError> {
        let Some(stream) = self.streams.get_mut(i) else {
            return Err(AuditError::Internal(
                "merge advanced a log it does not hold",
            ));
        };
        if let Some(record) = stream.advance()? {
            self.heap.push(Reverse((record.time, i)));
        }
        Ok(())
    }
}
