//! The inbound listener in TCP mode (`[inbound] mode = "tcp"`): mTLS with a client SVID
//! required and ALPN `meshgate-tcp/1`, one policy decision per connection at connect, then the
//! connection's bytes copied to and from the local service, after a PROXY protocol v2 header
//! when configured. A denied connection is closed right after the handshake and the service
//! never sees it.
//!
//! The decision asks about the peer's identity and the service's port only. A rule with
//! `methods`, `paths`, `paths_not` or `hosts` never matches a TCP connection (see
//! `meshgate_policy::Rule::matches`): such an allow cannot let a connection in, and such a deny
//! does not refuse one, so deny a peer of a TCP service with identity conditions.
//!
//! A live connection is closed when its peer's SVID expires or is revoked, when a policy reload
//! denies its peer, and when no byte has moved for the idle timeout.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use meshgate_identity::tls::{ALPN_TCP, server_config};
use meshgate_identity::verifier::SpiffeClientVerifier;
use meshgate_policy::Effect;
use tokio::io::AsyncWriteExt as _;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::audit::ConnectionEvent;
use crate::config::{Inbound as InboundConfig, ProxyProtocol, Target};
use crate::error::Error;
use crate::listen::{Shared, accept_loop, revoked, until};
use crate::metrics::{AlpnLabels, DirectionLabels, OpenConnection, OutcomeLabels};
use crate::peer::{self, Accepted, Peer};
use crate::policy::PolicyStore;
use crate::proxy_header;
use crate::tcp::{Spliced, splice};

const DIRECTION: &str = "inbound";

/// The inbound side of a TCP-mode gateway.
#[derive(Debug)]
pub(crate) struct TcpInbound {
    shared: Arc<Shared>,
    policies: Arc<PolicyStore>,
    upstream: Target,
    proxy_protocol: Option<ProxyProtocol>,
    tls: Arc<rustls::ServerConfig>,
}

/// The policy's answer for one peer.
struct Verdict {
    /// `allow`, `dry_run` or `deny`.
    decision: &'static str,
    rule: Option<String>,
    file: Option<String>,
}

impl TcpInbound {
    pub(crate) fn new(
        shared: Arc<Shared>,
        config: &InboundConfig,
        policies: Arc<PolicyStore>,
    ) -> Result<Self, Error> {
        let verifier = Arc::new(SpiffeClientVerifier::new(shared.bundles.clone()));
        let tls = server_config(shared.credentials.clone(), verifier, &[ALPN_TCP])?;
        Ok(Self {
            shared,
            policies,
            upstream: config.upstream.clone(),
            proxy_protocol: config.proxy_protocol,
            tls: Arc::new(tls),
        })
    }

    /// What the policy in force says about `peer` opening a connection.
    fn decide(&self, peer: &Peer) -> Verdict {
        let set = self.policies.current();
        let request = meshgate_policy::Request::tcp(&peer.id, &self.shared.own_id)
            .with_port(self.upstream.port);
        let decision = set.evaluate(&request);
        let label = match (decision.effect, decision.dry_run) {
            (Effect::Deny, _) => "deny",
            (Effect::Allow, true) => "dry_run",
            (Effect::Allow, false) => "allow",
        };
        Verdict {
            decision: label,
            rule: decision.rule.map(|r| r.name().to_owned()),
            file: decision.file.map(str::to_owned),
        }
    }

    /// Audits a decision about `peer`, made at connect or after a policy reload.
    fn audit(&self, peer: &Peer, verdict: &Verdict, when: &'static str) {
        if let Some(audit) = &self.shared.audit {
            audit.connection(&ConnectionEvent {
                peer: &peer.id,
                source: peer.addr,
                decision: verdict.decision,
                when,
                rule: verdict.rule.as_deref(),
                file: verdict.file.as_deref(),
            });
        }
    }

    /// Completes when a policy reload after `changes` was taken denies `peer`; never while the
    /// policy allows it.
    async fn withdrawn(&self, peer: &Peer, mut changes: watch::Receiver<u64>) {
        while changes.changed().await.is_ok() {
            let verdict = self.decide(peer);
            if verdict.decision == "deny" {
                self.audit(peer, &verdict, "policy_reload");
                tracing::info!(addr = %peer.addr, peer = %peer.id, rule = verdict.rule.as_deref().unwrap_or("default deny"), "closing a TCP connection: the reloaded policy denies its peer");
                return;
            }
        }
        std::future::pending().await
    }

    /// Connects to the local service and writes the PROXY header when configured; `None` (and
    /// a warning) when the service cannot be reached.
    async fn open_upstream(&self, peer: &Peer, local: Option<SocketAddr>) -> Option<TcpStream> {
        let target = &self.upstream;
        let timeout = self.shared.limits.connect_timeout;
        let open = async {
            let mut tcp = TcpStream::connect((target.host.as_str(), target.port)).await?;
            let _ = tcp.set_nodelay(true);
            if let Some(ProxyProtocol::V2) = self.proxy_protocol {
                // Without our own address the header would lie; the socket always has one.
                let local = local.ok_or_else(|| std::io::Error::other("no local address"))?;
                let header = proxy_header::v2(peer.addr, local, &peer.id, &peer.sha256)?;
                tcp.write_all(&header).await?;
            }
            Ok::<_, std::io::Error>(tcp)
        };
        match tokio::time::timeout(timeout, open).await {
            Ok(Ok(tcp)) => Some(tcp),
            Ok(Err(e)) => {
                tracing::warn!(upstream = %target.authority, peer = %peer.id, "cannot open the TCP connection to the local service: {e}");
                None
            }
            Err(_) => {
                tracing::warn!(upstream = %target.authority, peer = %peer.id, "the local service did not accept the TCP connection within the connect timeout");
                None
            }
        }
    }
}

pub(crate) async fn serve(
    listener: TcpListener,
    inbound: Arc<TcpInbound>,
    stop: watch::Receiver<bool>,
) {
    let shared = inbound.shared.clone();
    accept_loop(listener, DIRECTION, shared, stop, move |tcp, addr| {
        connection(tcp, addr, inbound.clone())
    })
    .await;
}

async fn connection(tcp: TcpStream, addr: SocketAddr, inbound: Arc<TcpInbound>) {
    let shared = &inbound.shared;
    let metrics = &shared.metrics;
    let _open = OpenConnection::new(metrics, DIRECTION);
    // Where the peer reached us: the PROXY header's destination.
    let local = tcp.local_addr().ok();
    let Some(Accepted {
        mut tls,
        peer,
        mut revocations,
    }) = peer::accept(tcp, addr, shared, inbound.tls.clone(), DIRECTION).await
    else {
        return;
    };
    // rustls accepts a client that offers no ALPN at all; that is not a TCP-mode gateway.
    if tls.get_ref().1.alpn_protocol() != Some(ALPN_TCP) {
        metrics.handshake_failure(DIRECTION, "alpn");
        tracing::info!(%addr, peer = %peer.id, "refused a client that did not ask for ALPN meshgate-tcp/1: this inbound is in TCP mode");
        peer::reject(shared, DIRECTION, addr, Some(&peer.id), "alpn");
        return;
    }
    metrics
        .inbound_connections
        .get_or_create(&AlpnLabels {
            alpn: "meshgate-tcp/1",
        })
        .inc();
    let start = Instant::now();
    // Taken before the decision, so that a reload right after it is not missed.
    let changes = inbound.policies.changes();
    let verdict = inbound.decide(&peer);
    metrics.tcp_connection(DIRECTION, peer.id.as_str(), verdict.decision);
    inbound.audit(&peer, &verdict, "connect");
    let log = |end: &str, spliced: Option<Spliced>| {
        let (from_client, to_client) = spliced.map_or((0, 0), |s| (s.from_client, s.to_client));
        tracing::info!(
            target: "meshgate::access",
            direction = DIRECTION,
            peer = %peer.id,
            source = %addr,
            decision = verdict.decision,
            rule = verdict.rule.as_deref().unwrap_or("-"),
            bytes_from_client = from_client,
            bytes_to_client = to_client,
            end,
            duration_ms = crate::metrics::millis(start.elapsed()),
            "connection"
        );
    };
    match verdict.decision {
        "deny" => {
            // close_notify, so the caller sees a clean end rather than a network failure.
            let _ = tokio::time::timeout(shared.limits.handshake_timeout, tls.shutdown()).await;
            log("denied", None);
            return;
        }
        "dry_run" => tracing::warn!(
            %addr,
            peer = %peer.id,
            rule = verdict.rule.as_deref().unwrap_or("default deny"),
            file = verdict.file.as_deref().unwrap_or("-"),
            "dry-run: the policy would deny this connection; letting it through"
        ),
        _ => {}
    }
    let Some(upstream) = inbound.open_upstream(&peer, local).await else {
        metrics
            .tcp_connect_failures
            .get_or_create(&DirectionLabels {
                direction: DIRECTION,
            })
            .inc();
        log("upstream_failed", None);
        return;
    };
    let cut = async {
        tokio::select! {
            () = until(peer.not_after) => "expired",
            () = revoked(&mut revocations, &peer.serial) => "revoked",
            () = inbound.withdrawn(&peer, changes) => "policy",
        }
    };
    let spliced = splice(tls, upstream, shared.limits.idle_timeout, cut).await;
    metrics.tcp_bytes(
        DIRECTION,
        peer.id.as_str(),
        spliced.from_client,
        spliced.to_client,
    );
    if matches!(spliced.end, "expired" | "revoked" | "policy") {
        metrics
            .closed_peers
            .get_or_create(&OutcomeLabels {
                outcome: spliced.end,
            })
            .inc();
        tracing::info!(%addr, peer = %peer.id, serial = %peer.serial, "closed a TCP connection: {}", spliced.end);
    }
    log(spliced.end, Some(spliced));
}
