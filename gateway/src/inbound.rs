//! The inbound listener: mTLS with a client SVID required, HTTP/1.1 or HTTP/2 by ALPN, a policy
//! decision per request by the peer's SPIFFE ID, and on allow a plain HTTP/1.1 hop to the local
//! service with the peer's identity in `x-forwarded-client-cert`. A connection is closed when its
//! peer's SVID expires or is revoked.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper::header::{HOST, HeaderValue};
use hyper::service::service_fn;
use hyper::{Request, Response, Uri, Version};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use meshgate_identity::SpiffeId;
use meshgate_identity::svid::{Serial, check_leaf};
use meshgate_identity::tls::{ALPN_H2, ALPN_HTTP11, server_config};
use meshgate_identity::verifier::SpiffeClientVerifier;
use meshgate_policy::{Effect, PolicySet};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::config::{Inbound as InboundConfig, Target};
use crate::conn::Activity;
use crate::error::Error;
use crate::headers::{set_xfcc, strip_hop_by_hop};
use crate::listen::{
    Shared, accept_loop, handshake_detail, handshake_reason, http_server, is_revoked, revoked,
    until,
};
use crate::metrics::{AlpnLabels, OpenConnection, OutcomeLabels};
use crate::path::normalize;
use crate::policy::PolicyStore;
use crate::reply::{Body, Refusal};

const DIRECTION: &str = "inbound";

/// The inbound side of one gateway.
#[derive(Debug)]
pub(crate) struct Inbound {
    shared: Arc<Shared>,
    policies: Arc<PolicyStore>,
    upstream: Target,
    client: Client<HttpConnector, Incoming>,
    tls: Arc<rustls::ServerConfig>,
}

/// The authenticated peer of a connection, read once from its verified leaf.
#[derive(Debug)]
struct Peer {
    id: SpiffeId,
    serial: Serial,
    not_after: u64,
    sha256: [u8; 32],
}

impl Inbound {
    pub(crate) fn new(
        shared: Arc<Shared>,
        config: &InboundConfig,
        policies: Arc<PolicyStore>,
    ) -> Result<Self, Error> {
        let verifier = Arc::new(SpiffeClientVerifier::new(shared.bundles.clone()));
        let tls = server_config(
            shared.credentials.clone(),
            verifier,
            &[ALPN_H2, ALPN_HTTP11],
        )?;
        let upstream = config.upstream.clone();
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(shared.limits.connect_timeout));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(shared.limits.idle_timeout)
            .build(connector);
        Ok(Self {
            shared,
            policies,
            upstream,
            client,
            tls: Arc::new(tls),
        })
    }
}

pub(crate) async fn serve(
    listener: TcpListener,
    inbound: Arc<Inbound>,
    stop: watch::Receiver<bool>,
) {
    let shared = inbound.shared.clone();
    accept_loop(listener, DIRECTION, shared, stop, move |tcp, addr| {
        connection(tcp, addr, inbound.clone())
    })
    .await;
}

async fn connection(tcp: TcpStream, addr: SocketAddr, inbound: Arc<Inbound>) {
    let shared = &inbound.shared;
    let metrics = &shared.metrics;
    let _open = OpenConnection::new(metrics, DIRECTION);
    let limits = &shared.limits;
    let tls = match tokio::time::timeout(
        limits.handshake_timeout,
        TlsAcceptor::from(inbound.tls.clone()).accept(tcp),
    )
    .await
    {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            metrics.handshake_failure(DIRECTION, handshake_reason(&e));
            tracing::debug!(%addr, "inbound TLS handshake failed: {}", handshake_detail(&e));
            return;
        }
        Err(_) => {
            metrics.handshake_failure(DIRECTION, "timeout");
            return;
        }
    };
    let session = &tls.get_ref().1;
    // The verifier checked the chain; this reads what the leaf says.
    let Some(info) = session
        .peer_certificates()
        .and_then(<[_]>::first)
        .and_then(|leaf| check_leaf(leaf).ok())
    else {
        metrics.handshake_failure(DIRECTION, "invalid_svid");
        return;
    };
    let peer = Arc::new(Peer {
        id: info.spiffe_id,
        serial: info.serial,
        not_after: info.not_after,
        sha256: info.sha256,
    });
    let mut revocations = shared.revocations.clone();
    if is_revoked(&revocations.borrow_and_update(), &peer.serial) {
        metrics.handshake_failure(DIRECTION, "revoked");
        tracing::info!(%addr, peer = %peer.id, serial = %peer.serial, "refused a revoked SVID");
        return;
    }
    let h2 = session.alpn_protocol() == Some(ALPN_H2);
    let alpn = if h2 { "h2" } else { "http/1.1" };
    metrics
        .inbound_connections
        .get_or_create(&AlpnLabels { alpn })
        .inc();

    let activity = Activity::new();
    let io = TokioIo::new(tls);
    let service = {
        let (inbound, peer, activity) = (inbound.clone(), peer.clone(), activity.clone());
        service_fn(move |req| handle(inbound.clone(), peer.clone(), activity.clone(), req))
    };
    let builder = http_server(limits);
    // ALPN already chose the protocol; no sniffing of the first bytes.
    let builder = if h2 {
        builder.http2_only()
    } else {
        builder.http1_only()
    };
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    let closed = tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(%addr, peer = %peer.id, "inbound connection ended: {e}");
            }
            None
        }
        () = activity.idle(limits.idle_timeout) => {
            // GOAWAY first, so that a request crossing it is known to be unprocessed.
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(limits.header_read_timeout, conn.as_mut()).await;
            None
        }
        () = until(peer.not_after) => Some("expired"),
        () = revoked(&mut revocations, &peer.serial) => Some("revoked"),
    };
    if let Some(outcome) = closed {
        metrics
            .closed_peers
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
        tracing::info!(%addr, peer = %peer.id, serial = %peer.serial, "closed the connection: the peer's SVID is {outcome}");
    }
}

/// What became of one request, for the access log and the metrics.
struct Outcome {
    response: Response<Body>,
    decision: &'static str,
    rule: Option<String>,
}

async fn handle(
    inbound: Arc<Inbound>,
    peer: Arc<Peer>,
    activity: Arc<Activity>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let _busy = activity.begin();
    let start = Instant::now();
    let method = req.method().clone();
    let raw_path = req.uri().path().to_owned();
    let outcome = decide(&inbound, &peer, req).await;
    let status = outcome.response.status().as_u16();
    let elapsed = start.elapsed();
    inbound
        .shared
        .metrics
        .request(DIRECTION, outcome.decision, status, elapsed.as_secs_f64());
    tracing::info!(
        target: "meshgate::access",
        direction = DIRECTION,
        peer = %peer.id,
        method = %method,
        path = %raw_path,
        status,
        decision = outcome.decision,
        rule = outcome.rule.as_deref().unwrap_or("-"),
        duration_ms = elapsed.as_secs_f64() * 1000.0,
        "request"
    );
    Ok(outcome.response)
}

async fn decide(inbound: &Inbound, peer: &Peer, req: Request<Incoming>) -> Outcome {
    let refused = |refusal: Refusal, decision| Outcome {
        response: refusal.into_response(),
        decision,
        rule: None,
    };
    let path = match normalize(req.uri().path()) {
        Ok(p) => p,
        Err(e) => return refused(Refusal::BadRequest(e.message()), "invalid"),
    };
    // HTTP/2 carries the host in :authority, HTTP/1.1 in Host.
    let host = match (req.uri().authority(), req.headers().get(HOST)) {
        (Some(a), _) => Some(a.as_str().to_owned()),
        (None, Some(h)) => match h.to_str() {
            Ok(h) => Some(h.to_owned()),
            Err(_) => {
                return refused(
                    Refusal::BadRequest("the Host header is not ASCII"),
                    "invalid",
                );
            }
        },
        (None, None) => None,
    };
    let set: Arc<PolicySet> = inbound.policies.current();
    let own = &inbound.shared.own_id;
    let mut request = meshgate_policy::Request::http(&peer.id, own, req.method().as_str(), &path)
        .with_port(inbound.upstream.port);
    if let Some(h) = &host {
        request = request.with_host(h);
    }
    let decision = set.evaluate(&request);
    let rule = decision.rule.map(|r| r.name().to_owned());
    let label = match (decision.effect, decision.dry_run) {
        (Effect::Deny, _) => {
            return Outcome {
                response: Refusal::Forbidden.into_response(),
                decision: "deny",
                rule,
            };
        }
        (Effect::Allow, true) => {
            tracing::warn!(
                peer = %peer.id,
                method = %req.method(),
                path,
                rule = rule.as_deref().unwrap_or("default deny"),
                file = decision.file.unwrap_or("-"),
                "dry-run: the policy would deny this request; letting it through"
            );
            "dry_run"
        }
        (Effect::Allow, false) => "allow",
    };
    drop(set);
    let query = req
        .uri()
        .query()
        .map(|q| format!("?{q}"))
        .unwrap_or_default();
    let response = forward(inbound, peer, req, &path, &query, host).await;
    Outcome {
        response,
        decision: label,
        rule,
    }
}

/// The hop to the local service: HTTP/1.1, hop-by-hop headers removed, XFCC set, the path the
/// policy saw.
async fn forward(
    inbound: &Inbound,
    peer: &Peer,
    req: Request<Incoming>,
    path: &str,
    query: &str,
    host: Option<String>,
) -> Response<Body> {
    let (mut parts, body) = req.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    set_xfcc(
        &mut parts.headers,
        &inbound.shared.own_id,
        &peer.id,
        &peer.sha256,
    );
    if !parts.headers.contains_key(HOST)
        && let Some(value) = host.and_then(|h| HeaderValue::from_str(&h).ok())
    {
        parts.headers.insert(HOST, value);
    }
    let uri = format!("http://{}{path}{query}", inbound.upstream.authority);
    parts.uri = match uri.parse::<Uri>() {
        Ok(uri) => uri,
        Err(_) => {
            return Refusal::BadRequest("the request target cannot be forwarded").into_response();
        }
    };
    parts.version = Version::HTTP_11;
    match inbound
        .client
        .request(Request::from_parts(parts, body))
        .await
    {
        Ok(response) => {
            let (mut parts, body) = response.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            Response::from_parts(parts, body.boxed())
        }
        Err(e) => {
            tracing::warn!(upstream = %inbound.upstream.authority, "the local service failed: {e:?}");
            Refusal::BadGateway("the service behind this gateway did not answer".into())
                .into_response()
        }
    }
}
