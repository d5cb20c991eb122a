//! An outbound route: a plain HTTP listener on loopback for the local app, and one pooled mTLS
//! connection to the target gateway, whose SPIFFE ID must be the expected peer. Whatever the app
//! speaks, the hop between gateways is HTTP/2; the answer goes back to the app in its protocol.
//! An app's HTTP/1.1 WebSocket opening crosses as an extended CONNECT (RFC 8441).
//! A peer gateway whose SVID is on the agent's revocation list is refused after the handshake,
//! and a pooled connection is closed as soon as a new list names its peer.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper::client::conn::http2::{self, SendRequest};
use hyper::header::HOST;
use hyper::http::uri::{Authority, PathAndQuery, Scheme};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode, Uri, Version};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use meshgate_identity::api::RevocationList;
use meshgate_identity::svid::Serial;
use meshgate_identity::tls::ALPN_H2;
use rustls::sign::CertifiedKey;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Mutex, watch};

use crate::config::Route;
use crate::conn::Activity;
use crate::dial::{Dialed, Dialer};
use crate::error::Error;
use crate::headers::{XFCC, strip_hop_by_hop_from};
use crate::listen::{
    Shared, accept_loop, http_server, is_revoked, now_secs, revoked, until, wind_down_at,
};
use crate::metrics::{OpenConnection, RequestCounters};
use crate::reply::{Body, Refusal, full};
use crate::stream::{self, Watched};
use crate::upgrade::{self, Opening, Tunnels, websocket_opening};

const DIRECTION: &str = "outbound";

/// One route and its pooled connection to the peer gateway.
#[derive(Debug)]
pub(crate) struct Outbound {
    shared: Arc<Shared>,
    route: Route,
    dialer: Dialer,
    pool: Mutex<Option<Pooled>>,
    /// The request metrics of this route, labelled with the expected peer.
    requests: RequestCounters,
}

/// The HTTP/2 connection to the peer gateway. New requests go to it until its peer's SVID nears
/// expiry or is revoked, or until our own SVID is renewed (the peer closes a connection when the
/// client SVID it saw expires); then a new connection takes them, and requests in flight finish
/// on this one, which closes once its last stream ends.
#[derive(Debug)]
struct Pooled {
    sender: SendRequest<Watched>,
    peer_not_after: u64,
    peer_serial: Serial,
    /// When the connection stops taking new requests (see `wind_down_at`).
    retire_at: u64,
    /// The credentials we presented: a connection made with older ones is retired.
    own: Option<Arc<CertifiedKey>>,
}

impl Pooled {
    fn usable(&self, own: Option<&Arc<CertifiedKey>>, revocations: &RevocationList) -> bool {
        let same_own = match (&self.own, own) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            _ => false,
        };
        !self.sender.is_closed()
            && same_own
            && now_secs() < self.retire_at
            && !is_revoked(revocations, &self.peer_serial)
    }
}

impl Outbound {
    pub(crate) fn new(shared: Arc<Shared>, route: Route) -> Result<Self, Error> {
        let dialer = Dialer::new(shared.clone(), route.clone(), ALPN_H2)?;
        Ok(Self {
            shared,
            requests: RequestCounters::new(DIRECTION, route.expected_peer.to_string()),
            route,
            dialer,
            pool: Mutex::new(None),
        })
    }

    /// The pooled connection, or a new one when there is none, it closed, or its peer's SVID
    /// expired, with that SVID's notAfter. Holding the lock while connecting keeps it to one
    /// connection per route.
    async fn sender(&self) -> Result<(SendRequest<Watched>, u64), Refusal> {
        let mut pool = self.pool.lock().await;
        let own = self.shared.credentials.current();
        if let Some(p) = pool.as_ref()
            && p.usable(own.as_ref(), &self.shared.revocations.borrow())
        {
            return Ok((p.sender.clone(), p.peer_not_after));
        }
        *pool = None;
        // Boxed: the TLS and HTTP/2 handshakes' state is large and needed once per connection;
        // inline, it would make every request's future (which hyper moves) that large.
        let connect = Box::pin(self.connect());
        let pooled = tokio::time::timeout(self.shared.limits.connect_timeout, connect)
            .await
            .map_err(|_| {
                Refusal::GatewayTimeout(format!(
                    "no connection to the peer gateway {} within the connect timeout",
                    self.route.target.authority
                ))
            })??;
        let sender = (pooled.sender.clone(), pooled.peer_not_after);
        *pool = Some(pooled);
        Ok(sender)
    }

    async fn forget(&self) {
        *self.pool.lock().await = None;
    }

    async fn connect(&self) -> Result<Pooled, Refusal> {
        // Read before the handshake: if a renewal lands during it, the connection is retired at
        // the next request, which costs a reconnection and nothing else.
        let own = self.shared.credentials.current();
        let connected_at = now_secs();
        let Dialed {
            tls,
            peer,
            mut revocations,
        } = self.dialer.dial().await?;
        let (peer_not_after, peer_serial) = (peer.not_after, peer.serial);
        let max_header = u32::try_from(self.shared.limits.max_header_bytes).unwrap_or(u32::MAX);
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .max_header_list_size(max_header)
            .keep_alive_interval(std::time::Duration::from_secs(30))
            .keep_alive_timeout(std::time::Duration::from_secs(10))
            // Boxed: hyper's HTTP/2 client spawns two small futures per request whose type is
            // an enum that can also hold the whole connection, I/O included; with the TLS
            // stream behind a pointer each spawn copies less (about 1,000 fewer instructions
            // per request under callgrind; docs/profiles).
            .handshake(TokioIo::new(Box::pin(tls)))
            .await
            .map_err(|e| {
                Refusal::BadGateway(format!("HTTP/2 with the peer gateway failed: {e}"))
            })?;
        let route = self.route.name.clone();
        let serial = peer_serial.clone();
        tokio::spawn(async move {
            // Dropping the connection closes it and every stream on it, tunnels included; the
            // pool sees the sender closed and connects anew.
            tokio::select! {
                r = conn => if let Err(e) = r {
                    tracing::debug!(%route, "connection to the peer gateway ended: {e}");
                },
                () = revoked(&mut revocations, &serial) => {
                    tracing::info!(%route, %serial, "closed the connection to the peer gateway: its SVID is revoked");
                }
                // New requests left it at `retire_at`; a stream still open now (a long gRPC
                // stream, a WebSocket) ends with the peer's SVID, as on every other connection.
                () = until(peer_not_after) => {
                    tracing::info!(%route, %serial, "closed the connection to the peer gateway: its SVID expired");
                }
            }
        });
        Ok(Pooled {
            sender,
            peer_not_after,
            peer_serial,
            retire_at: wind_down_at(connected_at, peer_not_after),
            own,
        })
    }
}

pub(crate) async fn serve(
    listener: TcpListener,
    outbound: Arc<Outbound>,
    stop: watch::Receiver<bool>,
) {
    let shared = outbound.shared.clone();
    accept_loop(listener, DIRECTION, shared, stop, move |tcp, addr| {
        connection(tcp, addr, outbound.clone())
    })
    .await;
}

async fn connection(tcp: TcpStream, addr: SocketAddr, outbound: Arc<Outbound>) {
    let _open = OpenConnection::new(&outbound.shared.metrics, DIRECTION);
    let activity = Activity::new();
    let tunnels = Tunnels::new();
    let io = TokioIo::new(tcp);
    let service = {
        let (outbound, activity, tunnels) = (outbound.clone(), activity.clone(), tunnels.clone());
        service_fn(move |req| handle(outbound.clone(), activity.clone(), tunnels.clone(), req))
    };
    let limits = &outbound.shared.limits;
    let builder = http_server(limits);
    let conn = builder.serve_connection_with_upgrades(io, service);
    tokio::pin!(conn);
    // A WebSocket outlives the HTTP/1.1 server of its connection: wait for it too.
    let served = async {
        let r = conn.as_mut().await;
        tunnels.finish().await;
        r
    };
    tokio::select! {
        r = served => if let Err(e) = r {
            tracing::debug!(%addr, route = %outbound.route.name, "outbound connection ended: {e}");
        },
        () = activity.idle(limits.idle_timeout) => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(limits.header_read_timeout, conn.as_mut()).await;
        }
    }
}

async fn handle(
    outbound: Arc<Outbound>,
    activity: Arc<Activity>,
    tunnels: Arc<Tunnels>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let _busy = activity.begin();
    let start = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let response = match relay(&outbound, &activity, &tunnels, req).await {
        Ok(r) => r,
        Err(refusal) => refusal.into_response(),
    };
    let status = response.status().as_u16();
    let elapsed = start.elapsed();
    outbound
        .shared
        .metrics
        .request(&outbound.requests, "none", status, elapsed.as_secs_f64());
    tracing::info!(
        target: "meshgate::access",
        direction = DIRECTION,
        route = %outbound.route.name,
        peer = %outbound.route.expected_peer,
        method = %method,
        path,
        status,
        decision = "-",
        rule = "-",
        duration_ms = crate::metrics::millis(elapsed),
        "request"
    );
    Ok(response)
}

/// Rewrites the app's request for the hop to the peer gateway and sends it as HTTP/2; an
/// HTTP/1.1 WebSocket opening goes as an extended CONNECT (RFC 8441).
async fn relay(
    outbound: &Outbound,
    activity: &Arc<Activity>,
    tunnels: &Tunnels,
    mut req: Request<Incoming>,
) -> Result<Response<Body>, Refusal> {
    let opening = websocket_opening(&req).filter(|o| *o == Opening::Http1);
    let app_upgrade = opening.map(|_| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    // The app's Host becomes :authority, so the peer's policy can match on it.
    let authority = match (parts.uri.authority().cloned(), parts.headers.get(HOST)) {
        (Some(a), _) => a,
        (None, Some(h)) => Authority::try_from(h.as_bytes())
            .map_err(|_| Refusal::BadRequest("the Host header is not a valid authority"))?,
        (None, None) => Authority::try_from(outbound.route.target.authority.as_str())
            .map_err(|_| Refusal::BadRequest("the route's target is not a valid authority"))?,
    };
    strip_hop_by_hop_from(parts.version, &mut parts.headers);
    // Only the receiving gateway may say who the caller is.
    parts.headers.remove(XFCC);
    parts.headers.remove(HOST);
    // The app's path and query, moved rather than copied and parsed again.
    let mut target = std::mem::take(&mut parts.uri).into_parts();
    target.scheme = Some(Scheme::HTTPS);
    target.authority = Some(authority);
    if target.path_and_query.is_none() {
        target.path_and_query = Some(PathAndQuery::from_static("/"));
    }
    parts.uri = Uri::from_parts(target)
        .map_err(|_| Refusal::BadRequest("the request target cannot be forwarded"))?;
    parts.version = Version::HTTP_2;
    if app_upgrade.is_some() {
        parts.method = Method::CONNECT;
        parts
            .extensions
            .insert(hyper::ext::Protocol::from_static(upgrade::WEBSOCKET));
    }
    let limits = &outbound.shared.limits;
    let (body, sent) = Watched::request(
        body.map_err(Into::into).boxed(),
        limits.idle_timeout,
        activity.clone(),
    );
    let mut request = Request::from_parts(parts, body);
    // One retry on a fresh connection when the pooled one was gone before the request left.
    for attempt in 0..2 {
        let (mut sender, peer_not_after) = outbound.sender().await?;
        // Pinned here, so that `answer` holds a pointer to it rather than a second copy.
        let sending = std::pin::pin!(sender.try_send_request(request));
        let answer = stream::answer(
            sending,
            sent.clone(),
            limits.response_timeout,
            activity.timers(),
        )
        .await;
        let Some(answer) = answer else {
            // Dropping the request resets its stream; the connection stays pooled.
            tracing::warn!(route = %outbound.route.name, "the peer gateway did not answer within limits.response_timeout");
            return Err(Refusal::GatewayTimeout(format!(
                "the peer gateway {} did not answer within {}s (limits.response_timeout)",
                outbound.route.target.authority,
                limits.response_timeout.as_secs()
            )));
        };
        match answer {
            Ok(mut response) => {
                let tunnel = match &app_upgrade {
                    Some(_) if response.status() == StatusCode::OK => {
                        Some(hyper::upgrade::on(&mut response))
                    }
                    _ => None,
                };
                let (mut parts, body) = response.into_parts();
                strip_hop_by_hop_from(parts.version, &mut parts.headers);
                if let (Some(peer), Some(app)) = (tunnel, app_upgrade) {
                    // The peer gateway's 200 to the CONNECT is the service's 101 to the app.
                    parts.status = StatusCode::SWITCHING_PROTOCOLS;
                    upgrade::switching(&mut parts.headers);
                    // It ends when the peer gateway's SVID does, like the pooled connection.
                    let busy = activity.begin();
                    tunnels.splice(app, peer, busy, limits.idle_timeout, Some(peer_not_after));
                    return Ok(Response::from_parts(parts, full(bytes::Bytes::new())));
                }
                let body = Watched::response(
                    body.map_err(Into::into).boxed(),
                    limits.idle_timeout,
                    activity.clone(),
                );
                return Ok(Response::from_parts(parts, body.boxed()));
            }
            Err(e) if stream::went_idle(e.error()) => {
                tracing::info!(route = %outbound.route.name, "the app stopped sending its request body");
                return Err(stream::STALLED_BODY);
            }
            Err(mut e) => {
                let error = e.error().to_string();
                let unsent = e.take_message();
                if sender.is_closed() || unsent.is_some() {
                    outbound.forget().await;
                }
                match unsent {
                    Some(unsent) if attempt == 0 => request = unsent,
                    _ => {
                        tracing::warn!(route = %outbound.route.name, "request to the peer gateway failed: {error}");
                        return Err(Refusal::BadGateway(format!(
                            "the peer gateway {} failed: {error}",
                            outbound.route.target.authority
                        )));
                    }
                }
            }
        }
    }
    Err(Refusal::BadGateway(
        "the peer gateway could not be reached".into(),
    ))
}
