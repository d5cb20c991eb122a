//! The mTLS hop to a peer gateway that both outbound modes share: TCP to the route's target, a
//! handshake that presents our SVID and requires the route's expected SPIFFE ID, the one ALPN
//! protocol of the route's mode, and a refusal when the revocation list names the peer's SVID.
//! What it refused is counted, logged and audited here; the caller only reports the refusal to
//! the app.

use std::sync::Arc;

use meshgate_identity::SpiffeId;
use meshgate_identity::api::RevocationList;
use meshgate_identity::svid::{SvidInfo, check_leaf};
use meshgate_identity::tls::client_config;
use meshgate_identity::verifier::SpiffeServerVerifier;
use rustls::client::ResolvesClientCert;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::config::Route;
use crate::error::Error;
use crate::listen::{Shared, handshake_detail, handshake_reason, is_revoked};
use crate::reply::Refusal;

const DIRECTION: &str = "outbound";

/// How one route reaches its peer gateway.
#[derive(Debug)]
pub(crate) struct Dialer {
    shared: Arc<Shared>,
    route: Route,
    alpn: &'static [u8],
    tls: Arc<rustls::ClientConfig>,
    server_name: ServerName<'static>,
}

/// An mTLS connection to the expected peer gateway, not revoked when it was made.
#[derive(Debug)]
pub(crate) struct Dialed {
    pub tls: TlsStream<TcpStream>,
    /// What the peer gateway's leaf says.
    pub peer: SvidInfo,
    /// The revocation list as of the check, marked seen: `listen::revoked` on it completes
    /// only for a newer list that names the peer.
    pub revocations: watch::Receiver<Arc<RevocationList>>,
}

impl Dialer {
    /// A dialer for `route` that offers only `alpn` and requires the peer to choose it.
    pub(crate) fn new(
        shared: Arc<Shared>,
        route: Route,
        alpn: &'static [u8],
    ) -> Result<Self, Error> {
        let verifier =
            SpiffeServerVerifier::new(shared.bundles.clone(), route.expected_peer.clone());
        let certs = shared.credentials.clone() as Arc<dyn ResolvesClientCert>;
        let tls = client_config(Arc::new(verifier), Some(certs), &[alpn])?;
        let server_name = route
            .target
            .server_name()
            .ok_or_else(|| Error::ConfigValue {
                key: format!("outbound {}: target", route.name),
                value: route.target.authority.clone(),
                reason: "the host is not a DNS name or an IP address".into(),
            })?;
        Ok(Self {
            shared,
            route,
            alpn,
            tls: Arc::new(tls),
            server_name,
        })
    }

    pub(crate) fn route(&self) -> &Route {
        &self.route
    }

    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Connects and authenticates the peer gateway; the caller bounds it with the connect
    /// timeout.
    pub(crate) async fn dial(&self) -> Result<Dialed, Refusal> {
        let target = &self.route.target;
        let tcp = TcpStream::connect((target.host.as_str(), target.port))
            .await
            .map_err(|e| {
                Refusal::BadGateway(format!(
                    "cannot connect to the peer gateway {}: {e}",
                    target.authority
                ))
            })?;
        let _ = tcp.set_nodelay(true);
        let tls = TlsConnector::from(self.tls.clone())
            .connect(self.server_name.clone(), tcp)
            .await
            .map_err(|e| {
                let reason = handshake_reason(&e);
                self.shared.metrics.handshake_failure(DIRECTION, reason);
                // We refused the peer gateway (not a network failure): audited. An ALPN
                // mismatch is the peer refusing our mode: logged, with its own reason.
                if !matches!(reason, "io" | "alert_received" | "alpn") {
                    self.reject(None, reason);
                }
                let e = handshake_detail(&e);
                tracing::warn!(route = %self.route.name, target = %target.authority, "mTLS to the peer gateway failed: {e}");
                Refusal::BadGateway(format!(
                    "mTLS with the peer gateway {} (expected {}) failed: {e}",
                    target.authority, self.route.expected_peer
                ))
            })?;
        let session = &tls.get_ref().1;
        if session.alpn_protocol() != Some(self.alpn) {
            // A server that ignores ALPN: it is not a meshgate inbound of this route's mode.
            self.shared.metrics.handshake_failure(DIRECTION, "alpn");
            self.reject(None, "alpn");
            tracing::warn!(route = %self.route.name, target = %target.authority, "the peer gateway did not choose ALPN {}", String::from_utf8_lossy(self.alpn));
            return Err(Refusal::BadGateway(format!(
                "the peer gateway {} did not agree to {}",
                target.authority,
                String::from_utf8_lossy(self.alpn)
            )));
        }
        // The verifier checked the chain; this reads what the leaf says.
        let Some(info) = session
            .peer_certificates()
            .and_then(<[_]>::first)
            .and_then(|leaf| check_leaf(leaf).ok())
        else {
            self.shared
                .metrics
                .handshake_failure(DIRECTION, "invalid_svid");
            self.reject(Some(&self.route.expected_peer), "invalid_svid");
            return Err(Refusal::BadGateway(format!(
                "the peer gateway {} presented an unreadable SVID",
                target.authority
            )));
        };
        let mut revocations = self.shared.revocations.clone();
        if is_revoked(&revocations.borrow_and_update(), &info.serial) {
            self.shared.metrics.handshake_failure(DIRECTION, "revoked");
            self.reject(Some(&info.spiffe_id), "revoked");
            tracing::warn!(route = %self.route.name, target = %target.authority, peer = %info.spiffe_id, serial = %info.serial, "refused the peer gateway: its SVID is revoked");
            return Err(Refusal::BadGateway(format!(
                "the peer gateway {} presented a revoked SVID",
                target.authority
            )));
        }
        tracing::debug!(route = %self.route.name, target = %target.authority, "connected to the peer gateway");
        Ok(Dialed {
            tls,
            peer: info,
            revocations,
        })
    }

    /// A peer gateway refused during or after the handshake, in the audit log.
    fn reject(&self, peer: Option<&SpiffeId>, reason: &'static str) {
        if let Some(audit) = &self.shared.audit {
            let subject = format!("route {} to {}", self.route.name, self.route.expected_peer);
            audit.peer_reject(
                DIRECTION,
                peer,
                &subject,
                &self.route.target.authority,
                reason,
            );
        }
    }
}
