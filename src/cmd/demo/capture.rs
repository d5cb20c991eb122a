//! What the gateways themselves report, for the table: a tracing layer that keeps the fields of
//! every `meshgate::access` event (decision and deciding rule), and the handshake-failure
//! counters of each admin listener's `/metrics` (why a TLS handshake was refused).

use std::collections::BTreeMap;
use std::fmt;
use std::io::IsTerminal as _;
use std::sync::{Arc, Mutex, PoisonError};

use tracing::field::{Field, Visit};

use super::mesh::Bank;
use super::net::{self, Reply};
use tracing_subscriber::filter::{EnvFilter, Targets};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt as _};

/// The access log's tracing target (see the gateway's inbound and outbound listeners).
const TARGET: &str = "meshgate::access";

/// Access-log events seen since the last `take`.
#[derive(Debug, Clone, Default)]
pub struct AccessLog(Arc<Mutex<Vec<AccessRecord>>>);

/// One access-log line: its fields as text.
#[derive(Debug, Clone, Default)]
pub struct AccessRecord(BTreeMap<String, String>);

impl AccessRecord {
    pub fn get(&self, field: &str) -> Option<&str> {
        self.0.get(field).map(String::as_str)
    }
}

impl AccessLog {
    /// The events since the last call, oldest first.
    pub fn take(&self) -> Vec<AccessRecord> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// The demo's subscriber: diagnostics to stderr as `MESHGATE_LOG` says (errors by default: the
/// demo provokes warnings on purpose, a dry-run denial and a misrouted call, and its table
/// reports them; `MESHGATE_LOG=warn` shows them too), and every access-log event into `log`.
pub fn subscriber(log: AccessLog) -> impl tracing::Subscriber + Send + Sync {
    let filter =
        EnvFilter::try_from_env("MESHGATE_LOG").unwrap_or_else(|_| EnvFilter::new("error"));
    let access = Targets::new().with_target(TARGET, tracing::Level::INFO);
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_ansi(ansi)
                .with_writer(std::io::stderr)
                .with_filter(filter),
        )
        .with(log.with_filter(access))
}

impl<S: tracing::Subscriber> Layer<S> for AccessLog {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        if event.metadata().target() != TARGET {
            return;
        }
        let mut fields = Fields::default();
        event.record(&mut fields);
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(AccessRecord(fields.0));
    }
}

#[derive(Default)]
struct Fields(BTreeMap<String, String>);

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
}

/// Handshake failures counted by the gateways: (gateway, direction, reason) → count.
pub type Failures = BTreeMap<(String, String, String), f64>;

/// Every gateway's handshake-failure counters: (gateway, direction, reason) → count.
pub async fn handshake_failures(bank: &Bank) -> Failures {
    let mut all = BTreeMap::new();
    for s in bank.services() {
        let Reply::Http(answer) =
            net::app_call(s.gateway.admin, "localhost", "GET", "/metrics").await
        else {
            continue;
        };
        let text = String::from_utf8_lossy(&answer.body);
        for line in text.lines() {
            let Some(rest) = line.strip_prefix("meshgate_gateway_handshake_failures_total{") else {
                continue;
            };
            let Some((labels, value)) = rest.split_once("} ") else {
                continue;
            };
            let label = |k: &str| {
                labels
                    .split(',')
                    .find_map(|kv| kv.strip_prefix(&format!("{k}=\"")))
                    .map(|v| v.trim_end_matches('"').to_owned())
                    .unwrap_or_default()
            };
            let value = value.trim().parse::<f64>().unwrap_or(0.0);
            all.insert(
                (s.name.to_owned(), label("direction"), label("reason")),
                value,
            );
        }
    }
    all
}

pub fn new_failures(before: &Failures, after: &Failures) -> Vec<(String, String, String)> {
    after
        .iter()
        .filter(|(k, v)| **v > before.get(*k).copied().unwrap_or(0.0))
        .map(|(k, _)| k.clone())
        .collect()
}
