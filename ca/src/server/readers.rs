//! Datastore connections for the reads that start an enrollment or a renewal (is the token
//! usable, is the caller revoked, is the signing state current), so those reads take neither
//! the CA's lock nor a trip to the blocking pool. They run on the runtime's threads: in WAL
//! mode a reader does not wait for the writer or for a checkpoint, and each read sees the last
//! committed state; the token table and the meta row stay in the connection's page cache.

use std::path::PathBuf;
use std::sync::Mutex;

use crate::error::CaError;
use crate::sqlite::SqliteStore;

/// Connections kept open between requests; more are opened while more requests read at once,
/// and closed again after.
const MAX_IDLE: usize = 8;

#[derive(Debug)]
pub(crate) struct Readers {
    path: PathBuf,
    idle: Mutex<Vec<SqliteStore>>,
}

impl Readers {
    pub(crate) fn new(path: PathBuf) -> Self {
        Self {
            path,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// Runs `f` on an idle connection, or a new one. A connection whose read failed is closed
    /// rather than kept.
    pub(crate) fn with<T>(
        &self,
        f: impl FnOnce(&SqliteStore) -> Result<T, CaError>,
    ) -> Result<T, CaError> {
        let idle = self.lock().pop();
        let store = match idle {
            Some(store) => store,
            None => SqliteStore::open(&self.path)?,
        };
        let result = f(&store);
        if result.is_ok() {
            let mut idle = self.lock();
            if idle.len() < MAX_IDLE {
                idle.push(store);
            }
        }
        result
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<SqliteStore>> {
        self.idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
