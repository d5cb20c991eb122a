//! The inbound mTLS handshake both inbound modes share: within the handshake timeout, with a
//! client SVID required and checked by identity's verifier, then the leaf read into a `Peer` and
//! refused when the revocation list names it. Every refusal is counted, and audited unless the
//! client merely went away.

use std::net::SocketAddr;
use std::sync::Arc;

use hyper::header::HeaderValue;
use meshgate_identity::SpiffeId;
use meshgate_identity::api::RevocationList;
use meshgate_identity::svid::{Serial, check_leaf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::headers::xfcc_value;
use crate::listen::{Shared, handshake_detail, handshake_reason, is_revoked};
use crate::metrics::RequestCounters;

/// The authenticated peer of a connection, read once from its verified leaf.
#[derive(Debug)]
pub(crate) struct Peer {
    pub id: SpiffeId,
    pub addr: SocketAddr,
    pub serial: Serial,
    pub not_after: u64,
    pub sha256: [u8; 32],
    /// This connection's request metrics, labelled with `id`.
    pub requests: RequestCounters,
    /// The `x-forwarded-client-cert` value the inbound side sets on this peer's requests.
    pub xfcc: Option<HeaderValue>,
}

/// A connection whose peer passed the handshake and is not revoked.
#[derive(Debug)]
pub(crate) struct Accepted {
    pub tls: TlsStream<TcpStream>,
    pub peer: Arc<Peer>,
    /// The revocation list as of the check, marked seen: `listen::revoked` on it completes
    /// only for a newer list that names the peer.
    pub revocations: watch::Receiver<Arc<RevocationList>>,
}

/// Runs the server side of the handshake on `tcp` with `config`; `None` when the peer was
/// refused or went away (already counted, logged and audited).
pub(crate) async fn accept(
    tcp: TcpStream,
    addr: SocketAddr,
    shared: &Shared,
    config: Arc<rustls::ServerConfig>,
    direction: &'static str,
) -> Option<Accepted> {
    let metrics = &shared.metrics;
    let tls = match tokio::time::timeout(
        shared.limits.handshake_timeout,
        TlsAcceptor::from(config).accept(tcp),
    )
    .await
    {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            let reason = handshake_reason(&e);
            metrics.handshake_failure(direction, reason);
            tracing::debug!(%addr, "{direction} TLS handshake failed: {}", handshake_detail(&e));
            // A client that went away or aborted is not a refusal; the rest are audited.
            if !matches!(reason, "io" | "alert_received") {
                reject(shared, direction, addr, None, reason);
            }
            return None;
        }
        Err(_) => {
            metrics.handshake_failure(direction, "timeout");
            return None;
        }
    };
    let session = &tls.get_ref().1;
    // The verifier checked the chain; this reads what the leaf says.
    let Some(info) = session
        .peer_certificates()
        .and_then(<[_]>::first)
        .and_then(|leaf| check_leaf(leaf).ok())
    else {
        metrics.handshake_failure(direction, "invalid_svid");
        reject(shared, direction, addr, None, "invalid_svid");
        return None;
    };
    let peer = Arc::new(Peer {
        requests: RequestCounters::new(direction, info.spiffe_id.to_string()),
        xfcc: xfcc_value(&shared.own_id, &info.spiffe_id, &info.sha256),
        id: info.spiffe_id,
        addr,
        serial: info.serial,
        not_after: info.not_after,
        sha256: info.sha256,
    });
    let mut revocations = shared.revocations.clone();
    if is_revoked(&revocations.borrow_and_update(), &peer.serial) {
        metrics.handshake_failure(direction, "revoked");
        tracing::info!(%addr, peer = %peer.id, serial = %peer.serial, "refused a revoked SVID");
        reject(shared, direction, addr, Some(&peer.id), "revoked");
        return None;
    }
    Some(Accepted {
        tls,
        peer,
        revocations,
    })
}

/// A peer refused at (or right after) the handshake, in the audit log.
pub(crate) fn reject(
    shared: &Shared,
    direction: &'static str,
    addr: SocketAddr,
    peer: Option<&SpiffeId>,
    reason: &'static str,
) {
    if let Some(audit) = &shared.audit {
        let source = addr.to_string();
        audit.peer_reject(direction, peer, shared.own_id.as_str(), &source, reason);
    }
}
