//! The gateway's audit log (`[audit] path`): typed events handed to the audit crate's writer
//! thread without ever waiting for it. A full queue costs the event, never the request: the
//! audit sink counts what it could not queue and writes a `gap` record with the count, and the
//! `audit_dropped` metric shows it. Events name identities, methods and paths, never a body or
//! a header value. The log is signed (checkpoints) with the gateway's current SVID and rotated
//! by `[audit] max_file_bytes` / `max_file_age`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use meshgate_audit::{
    Action, AuditEvent, AuditSink, AuditWriter, CheckpointPolicy, CheckpointSigner, Component,
    LogOptions, Outcome, Rotation, SystemClock,
};
use meshgate_identity::SpiffeId;

use crate::config::AuditLog;
use crate::error::Error;
use crate::metrics::{DroppedLabels, Metrics};

/// Events that may wait for the writer thread; beyond that they are counted in a gap record.
const QUEUE: usize = 4096;

/// Longest path written into a subject; longer ones are cut (on a char boundary) and marked.
const MAX_PATH: usize = 1024;

/// The actor of an event whose peer presented no identity we could read.
const ANONYMOUS: &str = "anonymous";

#[derive(Debug)]
pub(crate) struct Audit {
    sink: AuditSink,
    log_allows: bool,
    own_id: SpiffeId,
    metrics: Arc<Metrics>,
    /// Set once the writer has failed and that was logged, so the log is not flooded.
    failure_logged: AtomicBool,
}

/// One inbound request's decision, as the audit log tells it.
#[derive(Debug)]
pub(crate) struct RequestEvent<'a> {
    pub peer: &'a SpiffeId,
    pub source: SocketAddr,
    pub method: &'a str,
    /// The normalized path the policy saw (the raw one when it could not be normalized).
    pub path: &'a str,
    /// `allow`, `dry_run`, `deny`, `rate_limited` or `invalid`.
    pub decision: &'static str,
    pub rule: Option<&'a str>,
    pub file: Option<&'a str>,
    pub status: u16,
}

/// One TCP-mode connection's decision, as the audit log tells it.
#[derive(Debug)]
pub(crate) struct ConnectionEvent<'a> {
    pub peer: &'a SpiffeId,
    pub source: SocketAddr,
    /// `allow`, `dry_run` or `deny`.
    pub decision: &'static str,
    /// `connect`, or `policy_reload` when a reload closed a live connection.
    pub when: &'static str,
    pub rule: Option<&'a str>,
    pub file: Option<&'a str>,
}

impl Audit {
    /// Opens (or creates) the log, repairing a torn tail left by a crash, and starts its writer
    /// thread.
    pub(crate) fn open(
        config: &AuditLog,
        own_id: &SpiffeId,
        signer: Arc<dyn CheckpointSigner>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, Error> {
        let rotation = Rotation {
            max_bytes: config.max_file_bytes,
            max_age: config.max_file_age,
        };
        // Checkpoints are signed with the gateway's current SVID, swapped on renewal.
        let options = LogOptions::new()
            .signed(signer, CheckpointPolicy::default())
            .rotation(rotation);
        let (writer, report) =
            AuditWriter::open_with(&config.path, Component::Gateway, SystemClock, options)?;
        if let Some(recovery) = report.recovered {
            tracing::warn!(
                path = %config.path.display(),
                "the audit log had a torn final line after a crash; cut off and recorded: {recovery:?}"
            );
        }
        let sink = AuditSink::spawn(writer, QUEUE)?;
        Ok(Self {
            sink,
            log_allows: config.log_allows,
            own_id: own_id.clone(),
            metrics,
            failure_logged: AtomicBool::new(false),
        })
    }

    /// A request decision: every refusal, a dry-run's would-be denial, and allows when the
    /// config asks for them.
    pub(crate) fn request(&self, r: &RequestEvent<'_>) {
        let (action, outcome, reason) = match r.decision {
            "allow" if !self.log_allows => return,
            "allow" => (Action::RequestAllow, Outcome::Success, "policy"),
            "dry_run" => (
                Action::RequestAllow,
                Outcome::Success,
                "dry_run: the policy would deny this request",
            ),
            "rate_limited" => (Action::RequestDeny, Outcome::Denied, "rate_limited"),
            "invalid" => (Action::RequestDeny, Outcome::Denied, "bad_request"),
            _ => (Action::RequestDeny, Outcome::Denied, "policy"),
        };
        let subject = format!("{} {} {}", self.own_id, r.method, cut(r.path));
        let mut event = AuditEvent::new(
            Component::Gateway,
            r.peer.as_str(),
            action,
            subject,
            outcome,
        )
        .with_reason(reason)
        .with_source(r.source.to_string())
        .with_trust_domain(r.peer.trust_domain_str())
        .with_detail("direction", "inbound")
        .with_detail("decision", r.decision)
        .with_detail("status", r.status);
        if let Some(rule) = r.rule {
            event = event.with_detail("rule", rule);
        }
        if let Some(file) = r.file {
            event = event.with_detail("file", file);
        }
        self.record(event);
    }

    /// A TCP-mode connection's decision: every refusal, a dry-run's would-be denial, and allows
    /// when the config asks for them.
    pub(crate) fn connection(&self, c: &ConnectionEvent<'_>) {
        let (action, outcome, reason) = match (c.decision, c.when) {
            ("allow", _) if !self.log_allows => return,
            ("allow", _) => (Action::ConnectionAllow, Outcome::Success, "policy"),
            ("dry_run", _) => (
                Action::ConnectionAllow,
                Outcome::Success,
                "dry_run: the policy would deny this connection",
            ),
            (_, "policy_reload") => (Action::ConnectionDeny, Outcome::Denied, "policy_reload"),
            _ => (Action::ConnectionDeny, Outcome::Denied, "policy"),
        };
        let mut event = AuditEvent::new(
            Component::Gateway,
            c.peer.as_str(),
            action,
            format!("{} tcp", self.own_id),
            outcome,
        )
        .with_reason(reason)
        .with_source(c.source.to_string())
        .with_trust_domain(c.peer.trust_domain_str())
        .with_detail("direction", "inbound")
        .with_detail("decision", c.decision);
        if let Some(rule) = c.rule {
            event = event.with_detail("rule", rule);
        }
        if let Some(file) = c.file {
            event = event.with_detail("file", file);
        }
        self.record(event);
    }

    /// A peer refused at the TLS handshake (inbound), or a peer gateway we refused to speak to
    /// (outbound). `peer` is its identity when it was read (a revoked SVID).
    pub(crate) fn peer_reject(
        &self,
        direction: &'static str,
        peer: Option<&SpiffeId>,
        subject: &str,
        source: &str,
        reason: &'static str,
    ) {
        let actor = peer.map_or(ANONYMOUS, SpiffeId::as_str);
        let trust_domain = peer.map_or_else(
            || self.own_id.trust_domain_str(),
            SpiffeId::trust_domain_str,
        );
        let event = AuditEvent::new(
            Component::Gateway,
            actor,
            Action::PeerReject,
            subject,
            Outcome::Denied,
        )
        .with_reason(reason)
        .with_source(source)
        .with_trust_domain(trust_domain)
        .with_detail("direction", direction);
        self.record(event);
    }

    /// A policy reload: `Ok` with the number of files, or the errors (one a line,
    /// `file:line:column` first) when the old policy stayed in force.
    pub(crate) fn policy_reload(&self, trigger: &str, files: usize, result: Result<(), &str>) {
        let (outcome, reason, errors) = match result {
            Ok(()) => (Outcome::Success, "reloaded".to_owned(), 0),
            Err(errors) => (
                Outcome::Failure,
                format!(
                    "the previous policy stays in force: {}",
                    cut(errors.lines().next().unwrap_or_default())
                ),
                errors.lines().count(),
            ),
        };
        let event = AuditEvent::new(
            Component::Gateway,
            self.own_id.as_str(),
            Action::PolicyReload,
            format!("{} policy", self.own_id),
            outcome,
        )
        .with_reason(reason)
        .with_trust_domain(self.own_id.trust_domain_str())
        .with_detail("trigger", trigger)
        .with_detail("files", files)
        .with_detail("errors", errors);
        self.record(event);
    }

    /// Waits (on a blocking thread) until every event queued so far is on disk.
    pub(crate) async fn flush(self: &Arc<Self>) -> Result<(), Error> {
        let audit = self.clone();
        tokio::task::spawn_blocking(move || audit.sink.flush())
            .await
            .map_err(|_| Error::Audit(meshgate_audit::AuditError::Closed))??;
        Ok(())
    }

    /// Queues without waiting; what cannot be queued is counted, here and in the log's gap
    /// record.
    fn record(&self, event: AuditEvent) {
        match self.sink.try_record(event) {
            Ok(true) => {}
            Ok(false) => self.dropped("queue_full"),
            Err(e) => {
                self.dropped("writer_failed");
                if !self.failure_logged.swap(true, Ordering::Relaxed) {
                    tracing::error!("the audit log is not being written: {e}");
                }
            }
        }
    }

    fn dropped(&self, reason: &'static str) {
        self.metrics
            .audit_dropped
            .get_or_create(&DroppedLabels { reason })
            .inc();
    }
}

/// `path` cut to at most `MAX_PATH` bytes on a char boundary, marked when cut.
fn cut(path: &str) -> String {
    if path.len() <= MAX_PATH {
        return path.to_owned();
    }
    let mut end = MAX_PATH;
    while !path.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", path.get(..end).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_paths_are_cut_on_a_char_boundary() {
        assert_eq!(cut("/v1/charges"), "/v1/charges");
        let long = "é".repeat(MAX_PATH);
        let c = cut(&long);
        assert!(c.ends_with("...") && c.len() <= MAX_PATH + 3, "{}", c.len());
    }
}
