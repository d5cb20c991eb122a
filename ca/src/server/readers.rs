//! Datastore connections for the reads that start an enrollment or a renewal (is the token
//! usable, is the caller revoked, is the signing state current), so those reads take neither
//! the CA's lock nor a trip to the blocking pool. They run on the runtime's threads: in WAL
//! mode a reader does not wait for the writer or for a checkpoint, and each read sees the last
//! committed state; the token table and the meta row stay in the connection's page cache. A
//! reader never waits for a lock either (no busy timeout): where SQLite would make it wait
//! (recovering a WAL after a crash), the read fails at once and the request takes the slow
//! path, on the blocking pool.

use std::path::PathBuf;
use std::sync::Mutex;

use crate::error::CaError;
use crate::sqlite::SqliteStore;

/// Connections kept open between requests.
const MAX_IDLE: usize = 8;

#[derive(Debug)]
pub(crate) struct Readers {
    path: PathBuf,
    idle: Mutex<Vec<SqliteStore>>,
}

impl Readers {
    /// Opens `n` connections (at most [`MAX_IDLE`]) up front: reads never wait on one another
    /// (a connection is taken and given back with no await between), so as many as the threads
    /// that read at once is enough, and a burst of first requests opens none.
    pub(crate) fn open(path: PathBuf, n: usize) -> Result<Self, CaError> {
        let idle = (0..n.clamp(1, MAX_IDLE))
            .map(|_| SqliteStore::open_reader(&path))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            path,
            idle: Mutex::new(idle),
        })
    }

    /// Runs `f` on an idle connection, or on a new one opened on the blocking pool (after a
    /// failed read closed one, or with more threads reading than connections). A connection
    /// whose read failed is closed rather than kept.
    pub(crate) async fn with<T>(
        &self,
        f: impl FnOnce(&SqliteStore) -> Result<T, CaError>,
    ) -> Result<T, CaError> {
        let idle = self.lock().pop();
        let store = match idle {
            Some(store) => store,
            None => {
                let path = self.path.clone();
                tokio::task::spawn_blocking(move || SqliteStore::open_reader(&path))
                    .await
                    .map_err(|_| CaError::Internal("opening a datastore reader failed"))??
            }
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
