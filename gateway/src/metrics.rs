//! The gateway's Prometheus metrics, served in text form on the admin listener.

use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RequestLabels {
    pub direction: &'static str,
    /// The authenticated client for inbound requests, the expected server for outbound ones.
    /// Bounded by the identities the trust bundles vouch for: an unauthenticated client never
    /// reaches a request.
    pub peer: Arc<String>,
    pub decision: &'static str,
    pub status: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct DirectionLabels {
    pub direction: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ReasonLabels {
    pub direction: &'static str,
    pub reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct AlpnLabels {
    pub alpn: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct OutcomeLabels {
    pub outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct PeerLabels {
    pub peer: String,
}

/// A TCP-mode connection: the peer is the caller's SPIFFE ID inbound, the route's expected
/// peer outbound; the decision is the policy's inbound, `none` outbound (as for requests).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct TcpLabels {
    pub direction: &'static str,
    pub peer: String,
    pub decision: &'static str,
}

/// `flow` is `client_to_server` (from the side that connected: the peer gateway inbound, the
/// app outbound) or `server_to_client`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct BytesLabels {
    pub direction: &'static str,
    pub peer: String,
    pub flow: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct DroppedLabels {
    pub reason: &'static str,
}

type Durations = Family<DirectionLabels, Histogram, fn() -> Histogram>;

#[derive(Debug)]
pub(crate) struct Metrics {
    pub requests: Family<RequestLabels, Counter>,
    pub request_duration: Durations,
    pub handshake_failures: Family<ReasonLabels, Counter>,
    pub refused_connections: Family<DirectionLabels, Counter>,
    pub open_connections: Family<DirectionLabels, Gauge>,
    pub inbound_connections: Family<AlpnLabels, Counter>,
    pub closed_peers: Family<OutcomeLabels, Counter>,
    pub policy_reloads: Family<OutcomeLabels, Counter>,
    pub rate_limited: Family<PeerLabels, Counter>,
    pub audit_dropped: Family<DroppedLabels, Counter>,
    pub tcp_connections: Family<TcpLabels, Counter>,
    pub tcp_bytes: Family<BytesLabels, Counter>,
    pub tcp_connect_failures: Family<DirectionLabels, Counter>,
    pub svid_expiry: Gauge,
    pub bundle_sequence: Gauge,
}

/// The request metrics of one peer in one direction (a connection's peer inbound, a route's
/// expected peer outbound). Each (decision, status) counter is looked up in its family once and
/// then kept, so that counting a request hashes no labels (docs/profiles).
#[derive(Debug)]
pub(crate) struct RequestCounters {
    direction: &'static str,
    peer: Arc<String>,
    /// At most [`RequestCounters::KEPT`]; a pair past that is looked up each time.
    kept: Mutex<Vec<(&'static str, u16, Counter)>>,
    duration: OnceLock<Histogram>,
}

impl RequestCounters {
    const KEPT: usize = 16;

    pub(crate) fn new(direction: &'static str, peer: String) -> Self {
        Self {
            direction,
            peer: Arc::new(peer),
            kept: Mutex::default(),
            duration: OnceLock::new(),
        }
    }

    fn counter(&self, metrics: &Metrics, decision: &'static str, status: u16) -> Counter {
        // A poisoned list is still a list of counters: nothing is half-written in it.
        let mut kept = self.kept.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((_, _, counter)) = kept.iter().find(|(d, s, _)| *s == status && *d == decision)
        {
            return counter.clone();
        }
        let counter = metrics
            .requests
            .get_or_create(&RequestLabels {
                direction: self.direction,
                peer: self.peer.clone(),
                decision,
                status,
            })
            .clone();
        if kept.len() < Self::KEPT {
            kept.push((decision, status, counter.clone()));
        }
        counter
    }
}

fn duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            requests: Family::default(),
            request_duration: Family::new_with_constructor(duration_histogram),
            handshake_failures: Family::default(),
            refused_connections: Family::default(),
            open_connections: Family::default(),
            inbound_connections: Family::default(),
            closed_peers: Family::default(),
            policy_reloads: Family::default(),
            rate_limited: Family::default(),
            audit_dropped: Family::default(),
            tcp_connections: Family::default(),
            tcp_bytes: Family::default(),
            tcp_connect_failures: Family::default(),
            svid_expiry: Gauge::default(),
            bundle_sequence: Gauge::default(),
        }
    }
}

impl Metrics {
    fn registry(&self) -> Registry {
        let mut r = Registry::with_prefix("meshgate_gateway");
        r.register(
            "requests",
            "Requests by direction, peer SPIFFE ID, policy decision and status",
            self.requests.clone(),
        );
        r.register(
            "request_duration_seconds",
            "Request duration until the response head, by direction",
            self.request_duration.clone(),
        );
        r.register(
            "handshake_failures",
            "TLS handshakes that failed, by direction and reason",
            self.handshake_failures.clone(),
        );
        r.register(
            "refused_connections",
            "Connections closed at once because the listener's connection limit was reached",
            self.refused_connections.clone(),
        );
        r.register(
            "open_connections",
            "Open connections by direction",
            self.open_connections.clone(),
        );
        r.register(
            "inbound_connections",
            "Accepted inbound mTLS connections by negotiated ALPN protocol",
            self.inbound_connections.clone(),
        );
        r.register(
            "peer_connections_closed",
            "Inbound connections closed because the peer's SVID expired or was revoked, or (TCP mode) a policy reload denied it",
            self.closed_peers.clone(),
        );
        r.register(
            "policy_reloads",
            "Policy reloads by outcome",
            self.policy_reloads.clone(),
        );
        r.register(
            "rate_limited",
            "Inbound requests refused with 429 because the peer was over its rate limit, by peer SPIFFE ID",
            self.rate_limited.clone(),
        );
        r.register(
            "audit_dropped",
            "Audit events not written: queue_full (the log records the gap and its count) or writer_failed",
            self.audit_dropped.clone(),
        );
        r.register(
            "tcp_connections",
            "TCP-mode connections by direction, peer SPIFFE ID and policy decision (none outbound)",
            self.tcp_connections.clone(),
        );
        r.register(
            "tcp_bytes",
            "Bytes carried by TCP-mode connections, by direction, peer SPIFFE ID and flow",
            self.tcp_bytes.clone(),
        );
        r.register(
            "tcp_connect_failures",
            "TCP-mode connections dropped because the next hop (the local service inbound, the peer gateway outbound) could not be reached",
            self.tcp_connect_failures.clone(),
        );
        r.register(
            "svid_expiry_seconds",
            "notAfter of the gateway's SVID, unix seconds",
            self.svid_expiry.clone(),
        );
        r.register(
            "bundle_sequence",
            "spiffe_sequence of the gateway's own trust bundle",
            self.bundle_sequence.clone(),
        );
        r
    }

    /// Counts one request of `counters`' peer and direction, and observes its duration.
    pub(crate) fn request(
        &self,
        counters: &RequestCounters,
        decision: &'static str,
        status: u16,
        seconds: f64,
    ) {
        counters.counter(self, decision, status).inc();
        counters
            .duration
            .get_or_init(|| {
                self.request_duration
                    .get_or_create(&DirectionLabels {
                        direction: counters.direction,
                    })
                    .clone()
            })
            .observe(seconds);
    }

    /// A TCP-mode connection's decision (at connect) and, once it ends, its bytes.
    pub(crate) fn tcp_connection(
        &self,
        direction: &'static str,
        peer: &str,
        decision: &'static str,
    ) {
        self.tcp_connections
            .get_or_create(&TcpLabels {
                direction,
                peer: peer.to_owned(),
                decision,
            })
            .inc();
    }

    pub(crate) fn tcp_bytes(
        &self,
        direction: &'static str,
        peer: &str,
        from_client: u64,
        to_client: u64,
    ) {
        for (flow, bytes) in [
            ("client_to_server", from_client),
            ("server_to_client", to_client),
        ] {
            self.tcp_bytes
                .get_or_create(&BytesLabels {
                    direction,
                    peer: peer.to_owned(),
                    flow,
                })
                .inc_by(bytes);
        }
    }

    pub(crate) fn handshake_failure(&self, direction: &'static str, reason: &'static str) {
        self.handshake_failures
            .get_or_create(&ReasonLabels { direction, reason })
            .inc();
    }

    pub(crate) fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry()).is_err() {
            out.clear();
        }
        out
    }
}

/// A gauge of open connections, decremented when dropped.
#[derive(Debug)]
pub(crate) struct OpenConnection(Gauge);

impl OpenConnection {
    pub(crate) fn new(metrics: &Metrics, direction: &'static str) -> Self {
        let gauge = metrics
            .open_connections
            .get_or_create(&DirectionLabels { direction })
            .clone();
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// A duration in milliseconds with microsecond resolution, for the access log: whole
/// microseconds divided once print as short decimals (`0.753`, not `0.7532730000000001`).
pub(crate) fn millis(d: std::time::Duration) -> f64 {
    // Exact below 2^53 µs (285 years).
    #[expect(clippy::cast_precision_loss, reason = "exact for any real duration")]
    let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX) as f64;
    micros / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_counters_count_in_the_families_the_admin_listener_renders() {
        let metrics = Metrics::default();
        let a = RequestCounters::new("inbound", "spiffe://example.org/a".into());
        // Another connection of the same peer shares the series.
        let a_again = RequestCounters::new("inbound", "spiffe://example.org/a".into());
        for _ in 0..3 {
            metrics.request(&a, "allow", 200, 0.001);
        }
        metrics.request(&a_again, "allow", 200, 0.001);
        metrics.request(&a, "deny", 403, 0.001);
        // More pairs than are kept: those past the limit are still counted.
        for status in 500..(500 + 2 * RequestCounters::KEPT as u16) {
            metrics.request(&a, "allow", status, 0.001);
            metrics.request(&a, "allow", status, 0.001);
        }
        let text = metrics.render();
        let has = |line: &str| text.lines().any(|l| l == line);
        let series = |decision: &str, status: u16| {
            format!(
                "meshgate_gateway_requests_total{{direction=\"inbound\",peer=\"spiffe://example.org/a\",decision=\"{decision}\",status=\"{status}\"}}"
            )
        };
        assert!(has(&format!("{} 4", series("allow", 200))), "{text}");
        assert!(has(&format!("{} 1", series("deny", 403))), "{text}");
        for status in 500..(500 + 2 * RequestCounters::KEPT as u16) {
            assert!(has(&format!("{} 2", series("allow", status))), "{text}");
        }
        let total = 5 + 4 * RequestCounters::KEPT;
        assert!(
            has(&format!(
                "meshgate_gateway_request_duration_seconds_count{{direction=\"inbound\"}} {total}"
            )),
            "{text}"
        );
    }
}
