//! The policy files of the inbound listener, kept compiled and reloaded when a file changes
//! (polled every 2 s) and on SIGHUP. A set that fails to parse or compile leaves the previous one
//! in force, and each error is logged with its `file:line:column`.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use meshgate_policy::{PolicyErrors, PolicyFile, PolicySet};
use tokio::sync::watch;

use crate::audit::Audit;
use crate::error::Error;
use crate::metrics::{Metrics, OutcomeLabels};

/// How often the files' modification times are looked at.
pub const POLL_INTERVAL: Duration = Duration::from_secs(2);

/// The policy set in force, replaced atomically: a request decides with the set it read.
#[derive(Debug)]
pub struct PolicyStore {
    files: Vec<PathBuf>,
    current: RwLock<Arc<PolicySet>>,
    /// What the files looked like when last read.
    stamps: Mutex<Vec<Stamp>>,
    /// Bumped after each successful reload, so that TCP-mode connections, decided once at
    /// connect, are decided again under the new set.
    generation: watch::Sender<u64>,
}

/// A file's modification time and length; `None` when it could not be read.
type Stamp = Option<(SystemTime, u64)>;

impl PolicyStore {
    /// Reads and compiles every file; any error is fatal here, at start.
    pub fn load(files: Vec<PathBuf>) -> Result<Self, Error> {
        let stamps = stamps(&files);
        let set = compile(&files)?;
        Ok(Self {
            files,
            current: RwLock::new(Arc::new(set)),
            stamps: Mutex::new(stamps),
            generation: watch::Sender::new(0),
        })
    }

    pub fn current(&self) -> Arc<PolicySet> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Reads every file again. On any error the set in force stays, and the error says where.
    pub fn reload(&self) -> Result<(), Error> {
        let fresh = stamps(&self.files);
        *self.stamps.lock().unwrap_or_else(PoisonError::into_inner) = fresh;
        let set = compile(&self.files)?;
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(set);
        self.generation.send_modify(|g| *g = g.wrapping_add(1));
        Ok(())
    }

    /// Changes each time a reload puts a new set in force.
    pub(crate) fn changes(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// True when a file's modification time or length is not what it was at the last read.
    fn changed(&self) -> bool {
        let now = stamps(&self.files);
        *self.stamps.lock().unwrap_or_else(PoisonError::into_inner) != now
    }

    /// `reload`, logged, counted and audited.
    pub(crate) fn reload_logged(&self, metrics: &Metrics, audit: Option<&Audit>, why: &str) {
        let files = self.files.len();
        let outcome = match self.reload() {
            Ok(()) => {
                tracing::info!(trigger = why, files, "policy reloaded");
                if let Some(audit) = audit {
                    audit.policy_reload(why, files, Ok(()));
                }
                "ok"
            }
            Err(e) => {
                let errors = match e {
                    Error::Policy(errors) => errors,
                    other => other.to_string(),
                };
                for line in errors.lines() {
                    tracing::error!(
                        trigger = why,
                        "policy reload failed, previous policy stays in force: {line}"
                    );
                }
                if let Some(audit) = audit {
                    audit.policy_reload(why, files, Err(&errors));
                }
                "error"
            }
        };
        metrics
            .policy_reloads
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }
}

/// Reloads on file changes and on SIGHUP until `stop` turns true.
pub(crate) async fn watch_files(
    store: Arc<PolicyStore>,
    metrics: Arc<Metrics>,
    audit: Option<Arc<Audit>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut hangup = hangup_signal();
    let mut tick = tokio::time::interval(POLL_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let trigger = tokio::select! {
            _ = tick.tick() => "file change",
            () = next_hangup(&mut hangup) => "SIGHUP",
            _ = stop.changed() => return,
        };
        if trigger == "SIGHUP" || store.changed() {
            store.reload_logged(&metrics, audit.as_deref(), trigger);
        }
    }
}

#[cfg(unix)]
type Hangup = Option<tokio::signal::unix::Signal>;
#[cfg(not(unix))]
type Hangup = ();

#[cfg(unix)]
fn hangup_signal() -> Hangup {
    use tokio::signal::unix::{SignalKind, signal};
    signal(SignalKind::hangup())
        .inspect_err(|e| tracing::warn!("SIGHUP will not reload the policy: {e}"))
        .ok()
}

#[cfg(unix)]
async fn next_hangup(hangup: &mut Hangup) {
    if let Some(signal) = hangup
        && signal.recv().await.is_some()
    {
        return;
    }
    std::future::pending().await
}

#[cfg(not(unix))]
fn hangup_signal() -> Hangup {}

#[cfg(not(unix))]
async fn next_hangup(_: &mut Hangup) {
    std::future::pending().await
}

fn stamps(files: &[PathBuf]) -> Vec<Stamp> {
    files
        .iter()
        .map(|f| {
            std::fs::metadata(f)
                .ok()
                .and_then(|m| Some((m.modified().ok()?, m.len())))
        })
        .collect()
}

/// Reads, parses and compiles; every error is reported, one a line, `file:line:column` first.
fn compile(files: &[PathBuf]) -> Result<PolicySet, Error> {
    let mut parsed = Vec::with_capacity(files.len());
    let mut errors: Vec<String> = Vec::new();
    for path in files {
        let name = path.display().to_string();
        match std::fs::read(path) {
            Ok(bytes) => match PolicyFile::parse_bytes(&name, &bytes) {
                Ok(file) => parsed.push(file),
                Err(e) => errors.extend(lines(&e)),
            },
            Err(e) => errors.push(format!("{name}: cannot read: {e}")),
        }
    }
    if !errors.is_empty() {
        return Err(Error::Policy(errors.join("\n")));
    }
    PolicySet::compile(parsed).map_err(|e| Error::Policy(lines(&e).join("\n")))
}

fn lines(errors: &PolicyErrors) -> Vec<String> {
    errors.iter().map(ToString::to_string).collect()
}
