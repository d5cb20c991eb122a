//! The CA server's Prometheus metrics, served on the admin listener.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RequestLabels {
    pub path: String,
    pub code: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct OutcomeLabels {
    pub outcome: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ReasonLabels {
    pub reason: String,
}

#[derive(Debug, Default)]
pub(crate) struct Metrics {
    pub requests: Family<RequestLabels, Counter>,
    pub enrollments: Family<OutcomeLabels, Counter>,
    pub renewals: Family<OutcomeLabels, Counter>,
    pub rate_limited: Family<OutcomeLabels, Counter>,
    pub handshake_failures: Family<ReasonLabels, Counter>,
    pub refused_connections: Counter,
    pub open_connections: Gauge,
    pub intermediate_expiry: Gauge,
    pub own_svid_expiry: Gauge,
    pub bundle_sequence: Gauge,
    /// Group commits of issuances, and the writes they carried: writes over commits is the
    /// average batch.
    pub store_commits: Counter,
    pub store_commit_writes: Counter,
}

impl Metrics {
    pub(crate) fn registry(&self) -> Registry {
        let mut r = Registry::with_prefix("meshgate_ca");
        r.register(
            "requests",
            "API requests by path and status",
            self.requests.clone(),
        );
        r.register(
            "enrollments",
            "Enrollments by outcome",
            self.enrollments.clone(),
        );
        r.register("renewals", "Renewals by outcome", self.renewals.clone());
        r.register(
            "rate_limited",
            "Requests refused by a rate limit",
            self.rate_limited.clone(),
        );
        r.register(
            "handshake_failures",
            "TLS handshakes that failed, by reason",
            self.handshake_failures.clone(),
        );
        r.register(
            "refused_connections",
            "Connections closed at once because the connection limit was reached",
            self.refused_connections.clone(),
        );
        r.register(
            "open_connections",
            "Open client connections",
            self.open_connections.clone(),
        );
        r.register(
            "intermediate_expiry_seconds",
            "notAfter of the signing intermediate, unix seconds",
            self.intermediate_expiry.clone(),
        );
        r.register(
            "own_svid_expiry_seconds",
            "notAfter of the CA's own TLS SVID, unix seconds",
            self.own_svid_expiry.clone(),
        );
        r.register(
            "store_commits",
            "Datastore transactions (each one sync to disk) that committed issuances",
            self.store_commits.clone(),
        );
        r.register(
            "store_commit_writes",
            "Issuance writes (enrollments, renewals) committed in those transactions",
            self.store_commit_writes.clone(),
        );
        r.register(
            "bundle_sequence",
            "spiffe_sequence of the trust bundle",
            self.bundle_sequence.clone(),
        );
        r
    }

    pub(crate) fn request(&self, path: &str, code: u16) {
        self.requests
            .get_or_create(&RequestLabels {
                path: path.to_owned(),
                code: code.to_string(),
            })
            .inc();
    }

    pub(crate) fn outcome(family: &Family<OutcomeLabels, Counter>, outcome: &str) {
        family
            .get_or_create(&OutcomeLabels {
                outcome: outcome.to_owned(),
            })
            .inc();
    }
}

/// The text exposition of the registry.
pub(crate) fn render(metrics: &Metrics) -> String {
    let mut out = String::new();
    if prometheus_client::encoding::text::encode(&mut out, &metrics.registry()).is_err() {
        out.clear();
    }
    out
}
