//! The inbound listener: mTLS with a client SVID required, HTTP/1.1 or HTTP/2 by ALPN, the
//! peer's rate limit, a policy decision per request by the peer's SPIFFE ID, and on allow a plain
//! HTTP/1.1 (or h2c) hop to the local service with the peer's identity in
//! `x-forwarded-client-cert`. WebSocket openings (HTTP/1.1 upgrade or HTTP/2 extended CONNECT)
//! become spliced tunnels. Refusals, and allows when asked, go to the audit log. A connection,
//! tunnels included, is closed when its peer's SVID expires or is revoked.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper::header::{HOST, HeaderValue};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, Uri, Version};
use hyper_util::rt::TokioIo;
use meshgate_identity::tls::{ALPN_H2, ALPN_HTTP11, server_config};
use meshgate_identity::verifier::SpiffeClientVerifier;
use meshgate_policy::{Effect, PolicySet};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::audit::RequestEvent;
use crate::body;
use crate::config::{Inbound as InboundConfig, UpstreamProtocol};
use crate::conn::Activity;
use crate::error::Error;
use crate::headers::{set_xfcc, strip_hop_by_hop_from};
use crate::listen::{Shared, accept_loop, http_server, now_secs, revoked, until, wind_down_at};
use crate::metrics::{AlpnLabels, OpenConnection, OutcomeLabels, PeerLabels};
use crate::path::normalize;
use crate::peer::{self, Accepted, Peer};
use crate::policy::PolicyStore;
use crate::ratelimit::RateLimits;
use crate::reply::{Body, Refusal};
use crate::stream::{self, Watched};
use crate::upgrade::{self, Opening, Tunnels, response_timed_out, websocket_opening};
use crate::upstream::{self, Upstream, UpstreamError};

const DIRECTION: &str = "inbound";

/// The inbound side of one gateway.
#[derive(Debug)]
pub(crate) struct Inbound {
    shared: Arc<Shared>,
    policies: Arc<PolicyStore>,
    rate_limits: Arc<RateLimits>,
    upstream: Upstream,
    tls: Arc<rustls::ServerConfig>,
    /// Bytes of small request bodies held before forwarding (see `body`).
    body_budget: Arc<tokio::sync::Semaphore>,
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
        let upstream = Upstream::new(
            config.upstream.clone(),
            shared.limits.connect_timeout,
            shared.limits.idle_timeout,
        );
        let rate_limits = Arc::new(RateLimits::new(&shared.limits.rate_limits));
        Ok(Self {
            shared,
            policies,
            rate_limits,
            upstream,
            tls: Arc::new(tls),
            body_budget: body::budget(),
        })
    }

    /// The per-peer buckets, for the task that sweeps out quiet peers.
    pub(crate) fn rate_limits(&self) -> Arc<RateLimits> {
        self.rate_limits.clone()
    }
}

pub(crate) async fn serve(
    listener: TcpListener,
    inbound: Arc<Inbound>,
    stop: watch::Receiver<bool>,
) {
    let shared = inbound.shared.clone();
    inbound.upstream.spawn_sweeper();
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
    let Some(Accepted {
        tls,
        peer,
        mut revocations,
    }) = peer::accept(tcp, addr, shared, inbound.tls.clone(), DIRECTION).await
    else {
        return;
    };
    let session = &tls.get_ref().1;
    let h2 = session.alpn_protocol() == Some(ALPN_H2);
    let alpn = if h2 { "h2" } else { "http/1.1" };
    metrics
        .inbound_connections
        .get_or_create(&AlpnLabels { alpn })
        .inc();

    let connected_at = now_secs();
    let activity = Activity::new();
    let tunnels = Tunnels::new();
    let io = TokioIo::new(tls);
    let service = {
        let (inbound, peer) = (inbound.clone(), peer.clone());
        let (activity, tunnels) = (activity.clone(), tunnels.clone());
        service_fn(move |req| {
            let context = Context {
                peer: peer.clone(),
                activity: activity.clone(),
                tunnels: tunnels.clone(),
            };
            // Boxed: hyper moves the future of each request into its stream task; a pointer is
            // cheaper to move than the whole request state (profiled: docs/profiles).
            Box::pin(handle(inbound.clone(), context, req))
        })
    };
    let mut builder = http_server(limits);
    // WebSocket over HTTP/2 (RFC 8441): how the peer gateways carry it.
    builder.http2().enable_connect_protocol();
    // ALPN already chose the protocol; no sniffing of the first bytes.
    let builder = if h2 {
        builder.http2_only()
    } else {
        builder.http1_only()
    };
    let conn = builder.serve_connection_with_upgrades(io, service);
    tokio::pin!(conn);
    // An upgraded HTTP/1.1 connection's server ends at the upgrade; its tunnel is still this
    // connection, under the same expiry and revocation watch.
    let served = async {
        let r = conn.as_mut().await;
        tunnels.finish().await;
        r
    };
    let closed = tokio::select! {
        r = served => {
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
        () = until(wind_down_at(connected_at, peer.not_after)) => {
            // The peer's SVID is about to expire: GOAWAY, so that its client moves new requests
            // to a connection with its renewed SVID while those in flight finish here.
            conn.as_mut().graceful_shutdown();
            let drained = async {
                let _ = conn.as_mut().await;
                tunnels.finish().await;
            };
            tokio::select! {
                () = drained => None,
                () = until(peer.not_after) => Some("expired"),
                () = revoked(&mut revocations, &peer.serial) => Some("revoked"),
            }
        }
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

/// What a request handler knows of its connection.
struct Context {
    peer: Arc<Peer>,
    activity: Arc<Activity>,
    tunnels: Arc<Tunnels>,
}

/// What became of one request, for the access log, the metrics and the audit log.
struct Outcome {
    response: Response<Body>,
    decision: &'static str,
    rule: Option<String>,
    /// The policy file of the deciding rule.
    file: Option<String>,
    /// The normalized path, once known.
    path: Option<String>,
}

async fn handle(
    inbound: Arc<Inbound>,
    context: Context,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let _busy = context.activity.begin();
    let peer = &context.peer;
    let start = Instant::now();
    let method = req.method().clone();
    let raw_path = req.uri().path().to_owned();
    let outcome = decide(&inbound, &context, req).await;
    let status = outcome.response.status().as_u16();
    let elapsed = start.elapsed();
    inbound.shared.metrics.request(
        &peer.requests,
        outcome.decision,
        status,
        elapsed.as_secs_f64(),
    );
    if let Some(audit) = &inbound.shared.audit {
        audit.request(&RequestEvent {
            peer: &peer.id,
            source: peer.addr,
            method: method.as_str(),
            path: outcome.path.as_deref().unwrap_or(&raw_path),
            decision: outcome.decision,
            rule: outcome.rule.as_deref(),
            file: outcome.file.as_deref(),
            status,
        });
    }
    tracing::info!(
        target: "meshgate::access",
        direction = DIRECTION,
        peer = %peer.id,
        method = %method,
        // Quoted and escaped (Debug), as on the outbound side: a path may hold any UTF-8,
        // C1 controls and line separators included.
        path = raw_path.as_str(),
        status,
        decision = outcome.decision,
        rule = outcome.rule.as_deref().unwrap_or("-"),
        duration_ms = crate::metrics::millis(elapsed),
        "request"
    );
    Ok(outcome.response)
}

async fn decide(inbound: &Inbound, context: &Context, req: Request<Incoming>) -> Outcome {
    let peer = &context.peer;
    let refused = |refusal: Refusal, decision| Outcome {
        response: refusal.into_response(),
        decision,
        rule: None,
        file: None,
        path: None,
    };
    // Before anything else is spent on the request: the peer is known, its allowance is not.
    if let Err(limited) = inbound.rate_limits.check(&peer.id) {
        inbound
            .shared
            .metrics
            .rate_limited
            .get_or_create(&PeerLabels {
                peer: peer.id.to_string(),
            })
            .inc();
        let wait = limited.retry_after;
        let retry_after_secs = (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1);
        return refused(Refusal::RateLimited { retry_after_secs }, "rate_limited");
    }
    let path = match normalize(req.uri().path()) {
        Ok(p) => p,
        Err(e) => return refused(Refusal::BadRequest(e.message()), "invalid"),
    };
    let host = match request_host(&req) {
        Ok(h) => h,
        Err(message) => return refused(Refusal::BadRequest(message), "invalid"),
    };
    let opening = websocket_opening(&req);
    // A WebSocket is opened with GET in HTTP/1.1 and CONNECT in HTTP/2; the policy sees one
    // method for both, the one a rule for WebSocket paths names.
    let method = match opening {
        Some(Opening::ExtendedConnect) => Method::GET.as_str(),
        _ => req.method().as_str(),
    };
    let set: Arc<PolicySet> = inbound.policies.current();
    let own = &inbound.shared.own_id;
    let mut request = meshgate_policy::Request::http(&peer.id, own, method, &path)
        .with_port(inbound.upstream.target().port);
    if let Some(h) = &host {
        request = request.with_host(h);
    }
    let decision = set.evaluate(&request);
    let rule = decision.rule.map(|r| r.name().to_owned());
    let file = decision.file.map(str::to_owned);
    let label = match (decision.effect, decision.dry_run) {
        (Effect::Deny, _) => {
            return Outcome {
                response: Refusal::Forbidden.into_response(),
                decision: "deny",
                rule,
                file,
                path: Some(path),
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
    let response = forward(inbound, context, req, &path, &query, host, opening).await;
    Outcome {
        response,
        decision: label,
        rule,
        file,
        path: Some(path),
    }
}

/// The host the policy decides on, and the only one the service will see. HTTP/2 carries it in
/// `:authority`, HTTP/1.1 in `Host` (or in an absolute-form target). A request that names two
/// hosts (two `Host` headers, or a `Host` that differs from the URI authority) is refused: the
/// policy would read one and a name-based service route by the other. The comparison ignores
/// ASCII case and the scheme's default port.
fn request_host<B>(req: &Request<B>) -> Result<Option<String>, &'static str> {
    let mut headers = req.headers().get_all(HOST).iter();
    let header = headers.next();
    if headers.next().is_some() {
        return Err("the request has more than one Host header");
    }
    let header = header
        .map(|h| h.to_str().map_err(|_| "the Host header is not ASCII"))
        .transpose()?;
    let authority = req.uri().authority().map(|a| a.as_str());
    if authority.is_some_and(|a| a.contains('@')) {
        return Err("the request target has user information");
    }
    match (authority, header) {
        (Some(a), Some(h)) => {
            let default_port = match req.uri().scheme_str() {
                Some("http") => Some("80"),
                Some("https") => Some("443"),
                _ => None,
            };
            if same_host(a, h, default_port) {
                Ok(Some(a.to_owned()))
            } else {
                Err("the Host header differs from the request target's authority")
            }
        }
        (Some(a), None) => Ok(Some(a.to_owned())),
        (None, Some(h)) => Ok(Some(h.to_owned())),
        (None, None) => Ok(None),
    }
}

/// `a` and `b` name the same host and port, ignoring ASCII case and `default_port`.
fn same_host(a: &str, b: &str, default_port: Option<&str>) -> bool {
    let strip = |s: &str| -> String {
        let s = s.trim().to_ascii_lowercase();
        match default_port.and_then(|p| s.strip_suffix(&format!(":{p}")).map(str::to_owned)) {
            Some(bare) => bare,
            None => s,
        }
    };
    strip(a) == strip(b)
}

/// The hop to the local service: HTTP/1.1, hop-by-hop headers removed, XFCC set, the path the
/// policy saw.
async fn forward(
    inbound: &Inbound,
    context: &Context,
    mut req: Request<Incoming>,
    path: &str,
    query: &str,
    host: Option<String>,
    opening: Option<Opening>,
) -> Response<Body> {
    let peer = &context.peer;
    let client_upgrade = opening.map(|_| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    strip_hop_by_hop_from(parts.version, &mut parts.headers);
    set_xfcc(&mut parts.headers, peer.xfcc.as_ref());
    // The service routes on exactly the host the policy saw: no other `Host` survives.
    parts.headers.remove(HOST);
    if let Some(h) = host {
        match HeaderValue::from_str(&h) {
            Ok(value) => {
                parts.headers.insert(HOST, value);
            }
            Err(_) => {
                return Refusal::BadRequest("the host cannot be forwarded").into_response();
            }
        }
    }
    if let (Some(opening), Some(client)) = (opening, client_upgrade) {
        let target = format!("{path}{query}");
        let limits = &inbound.shared.limits;
        // Boxed: the upgrade's state is large and rare; inline, every request would carry it.
        return Box::pin(upgrade::to_upstream(
            inbound.upstream.target(),
            limits,
            parts,
            &target,
            opening,
            client,
            &context.tunnels,
            &context.activity,
        ))
        .await;
    }
    let target = inbound.upstream.target();
    // HTTP/1.1 takes the origin form (`/path?query`) and the host from `Host`; HTTP/2 takes
    // the scheme and authority as pseudo-headers, from an absolute URI.
    let (uri, version) = match target.protocol {
        UpstreamProtocol::H2c => (
            format!("http://{}{path}{query}", target.authority),
            Version::HTTP_2,
        ),
        UpstreamProtocol::Http1 => (format!("{path}{query}"), Version::HTTP_11),
    };
    parts.uri = match uri.parse::<Uri>() {
        Ok(uri) => uri,
        Err(_) => {
            return Refusal::BadRequest("the request target cannot be forwarded").into_response();
        }
    };
    parts.version = version;
    if version == Version::HTTP_11 && !parts.headers.contains_key(HOST) {
        // HTTP/1.1 requires a Host; a request that named none goes to the service's authority.
        match HeaderValue::from_str(&target.authority) {
            Ok(value) => {
                parts.headers.insert(HOST, value);
            }
            Err(_) => return upstream::not_answered().into_response(),
        }
    }
    let limits = &inbound.shared.limits;
    let failed = body::PeerBodyFailed::default();
    let body = match body::for_upstream(
        &parts.headers,
        body,
        limits.header_read_timeout,
        &inbound.body_budget,
        &failed,
    )
    .await
    {
        Ok(body) => body,
        Err(refusal) => return refusal.into_response(),
    };
    let (body, sent) = Watched::request(body, limits.idle_timeout, context.activity.clone());
    // Pinned here, so that `answer` holds a pointer to it rather than a second copy.
    let request = std::pin::pin!(inbound.upstream.send(Request::from_parts(parts, body)));
    match stream::answer(
        request,
        sent,
        limits.response_timeout,
        context.activity.timers(),
    )
    .await
    {
        Some(Ok(response)) => {
            let (mut parts, body) = response.into_parts();
            strip_hop_by_hop_from(parts.version, &mut parts.headers);
            let body = Watched::response(
                body.map_err(Into::into).boxed(),
                limits.idle_timeout,
                context.activity.clone(),
            );
            Response::from_parts(parts, body.boxed())
        }
        Some(Err(UpstreamError::Connect(refusal))) => refusal.into_response(),
        Some(Err(UpstreamError::Http(e))) if stream::went_idle(&e) => {
            tracing::info!(peer = %peer.id, "the peer stopped sending its request body");
            stream::STALLED_BODY.into_response()
        }
        Some(Err(UpstreamError::Http(_))) if failed.get() => {
            Refusal::BadRequest("the request body could not be read").into_response()
        }
        Some(Err(UpstreamError::Http(e))) => {
            tracing::warn!(upstream = %target.authority, "the local service failed: {e:?}");
            upstream::not_answered().into_response()
        }
        None => {
            tracing::warn!(upstream = %target.authority, peer = %peer.id, "the local service did not answer within limits.response_timeout");
            response_timed_out(limits).into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test code

    use super::*;

    fn req(uri: &str, hosts: &[&str]) -> Request<()> {
        let mut b = Request::builder().uri(uri);
        for h in hosts {
            b = b.header(HOST, *h);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn one_host_or_refused() {
        assert_eq!(
            request_host(&req("/x", &["a.example"])),
            Ok(Some("a.example".into()))
        );
        assert_eq!(
            request_host(&req("http://a.example/x", &[])),
            Ok(Some("a.example".into()))
        );
        assert_eq!(
            request_host(&req("http://a.example/x", &["A.Example:80"])),
            Ok(Some("a.example".into()))
        );
        assert_eq!(
            request_host(&req("https://a.example:443/x", &["a.example"])),
            Ok(Some("a.example:443".into()))
        );
        assert_eq!(request_host(&req("/x", &[])), Ok(None));
        assert!(request_host(&req("http://public.example/x", &["admin.example"])).is_err());
        assert!(request_host(&req("http://a.example:8080/x", &["a.example"])).is_err());
        assert!(request_host(&req("/x", &["a.example", "a.example"])).is_err());
        assert!(request_host(&req("/x", &["a.example", "b.example"])).is_err());
        assert!(request_host(&req("http://u@a.example/x", &["a.example"])).is_err());
    }
}
