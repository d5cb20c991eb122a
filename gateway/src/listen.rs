//! What every listener shares: the accept loop with its connection limit, the hyper server
//! settings that carry the limits, and the state the listeners read (identity, metrics).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use meshgate_identity::SpiffeId;
use meshgate_identity::api::RevocationList;
use meshgate_identity::svid::{Serial, SvidError, SvidInfo, check_leaf};
use meshgate_identity::tls::Credentials;
use meshgate_identity::verifier::{BundleSource as _, PeerError, SharedBundles};
use rustls::sign::CertifiedKey;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};

use crate::audit::Audit;
use crate::config::Limits;
use crate::metrics::{DirectionLabels, Metrics};

/// What the listeners read: who we are, our credentials as the agent publishes them, limits.
#[derive(Debug)]
pub(crate) struct Shared {
    pub own_id: SpiffeId,
    pub limits: Limits,
    pub metrics: Arc<Metrics>,
    pub credentials: Arc<Credentials>,
    pub bundles: Arc<SharedBundles>,
    pub svid: watch::Receiver<Arc<CertifiedKey>>,
    pub revocations: watch::Receiver<Arc<RevocationList>>,
    /// The audit log, when the config has `[audit]`.
    pub audit: Option<Arc<Audit>>,
}

impl Shared {
    /// What our current SVID says, if it can be read.
    pub(crate) fn svid_info(&self) -> Option<SvidInfo> {
        let key = self.svid.borrow().clone();
        key.end_entity_cert()
            .ok()
            .and_then(|leaf| check_leaf(leaf).ok())
    }

    /// The `spiffe_sequence` of our own trust domain's bundle.
    pub(crate) fn bundle_sequence(&self) -> u64 {
        self.bundles
            .bundles()
            .get(&self.own_id.trust_domain())
            .map_or(0, |b| b.sequence)
    }
}

/// True when `serial` is in the list.
pub(crate) fn is_revoked(list: &RevocationList, serial: &Serial) -> bool {
    list.revoked.iter().any(|r| &r.serial == serial)
}

/// Accepts until `stop` turns true; each connection runs `handle` in its own task while it
/// holds one of `max_connections` slots. Over the limit, a connection is closed at once.
pub(crate) async fn accept_loop<F, Fut>(
    listener: TcpListener,
    direction: &'static str,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
    handle: F,
) where
    F: Fn(TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(shared.limits.max_connections));
    loop {
        let (tcp, addr) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(direction, "accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            shared
                .metrics
                .refused_connections
                .get_or_create(&DirectionLabels { direction })
                .inc();
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let task = handle(tcp, addr);
        tokio::spawn(async move {
            task.await;
            drop(permit);
        });
    }
}

/// An HTTP server builder (HTTP/1.1 and HTTP/2) with the limits applied.
pub(crate) fn http_server(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        // hyper refuses (panics on) a buffer under 8 KiB; the config already checked this.
        .max_buf_size(limits.max_header_bytes.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_concurrent_streams)
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10));
    builder
}

/// Completes at `not_after` (unix seconds).
pub(crate) async fn until(not_after: u64) {
    tokio::time::sleep(Duration::from_secs(not_after.saturating_sub(now_secs()))).await;
}

/// When a connection whose peer SVID ends at `not_after` stops taking new requests: a quarter of
/// the time it had left at `connected_at` (unix seconds) before that, at most 30 s. Requests in
/// flight then finish on it while new ones go to a connection with current SVIDs, so an expiry
/// never cuts a request that started in time.
pub(crate) fn wind_down_at(connected_at: u64, not_after: u64) -> u64 {
    let grace = (not_after.saturating_sub(connected_at) / 4).min(30);
    not_after.saturating_sub(grace)
}

pub(crate) fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Completes when a new revocation list names `serial`; never if the agent stops publishing.
pub(crate) async fn revoked(
    revocations: &mut watch::Receiver<Arc<RevocationList>>,
    serial: &Serial,
) {
    while revocations.changed().await.is_ok() {
        if is_revoked(&revocations.borrow_and_update(), serial) {
            return;
        }
    }
    std::future::pending().await
}

/// A short, stable reason for a failed handshake, for the metric.
pub(crate) fn handshake_reason(e: &std::io::Error) -> &'static str {
    use rustls::{CertificateError as C, Error as E};
    let Some(tls) = e.get_ref().and_then(|i| i.downcast_ref::<E>()) else {
        return "io";
    };
    match tls {
        E::NoCertificatesPresented => "no_certificate",
        E::InvalidCertificate(C::Expired) => "expired",
        E::InvalidCertificate(C::NotValidYet) => "not_yet_valid",
        E::InvalidCertificate(C::UnknownIssuer | C::BadSignature) => "untrusted",
        E::InvalidCertificate(C::Other(other)) => match other.0.downcast_ref::<PeerError>() {
            Some(PeerError::UnexpectedPeer { .. }) => "unexpected_peer",
            Some(PeerError::Svid(SvidError::Chain { .. } | SvidError::UnknownTrustDomain(_))) => {
                "untrusted"
            }
            _ => "invalid_svid",
        },
        E::InvalidCertificate(_) => "invalid_svid",
        // No common ALPN protocol: the peer runs the other mode (HTTP or TCP), or is no
        // gateway. Told apart from other alerts because it is a configuration mismatch.
        E::NoApplicationProtocol
        | E::AlertReceived(rustls::AlertDescription::NoApplicationProtocol) => "alpn",
        E::AlertReceived(_) => "alert_received",
        E::PeerIncompatible(_) | E::PeerMisbehaved(_) => "protocol",
        _ => "other",
    }
}

/// What went wrong in a handshake, in words (the SPIFFE verifiers' own message when they
/// refused the peer).
pub(crate) fn handshake_detail(e: &std::io::Error) -> String {
    if handshake_reason(e) == "alpn" {
        return format!(
            "{e}: no common ALPN protocol; an HTTP-mode and a TCP-mode gateway (mode = \"http\" or \"tcp\") never connect, check that the route's mode is the mode of the inbound it targets"
        );
    }
    let peer = e
        .get_ref()
        .and_then(|i| i.downcast_ref::<rustls::Error>())
        .and_then(|tls| match tls {
            rustls::Error::InvalidCertificate(rustls::CertificateError::Other(o)) => {
                o.0.downcast_ref::<PeerError>().map(ToString::to_string)
            }
            _ => None,
        });
    peer.unwrap_or_else(|| e.to_string())
}
