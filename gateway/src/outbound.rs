//! An outbound route: a plain HTTP listener on loopback for the local app, and one pooled mTLS
//! connection to the target gateway, whose SPIFFE ID must be the expected peer. Whatever the app
//! speaks, the hop between gateways is HTTP/2; the answer goes back to the app in its protocol.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper::client::conn::http2::{self, SendRequest};
use hyper::header::HOST;
use hyper::http::uri::Authority;
use hyper::service::service_fn;
use hyper::{Request, Response, Uri, Version};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use meshgate_identity::svid::check_leaf;
use meshgate_identity::tls::{ALPN_H2, client_config};
use meshgate_identity::verifier::SpiffeServerVerifier;
use rustls::client::ResolvesClientCert;
use rustls::pki_types::ServerName;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Mutex, watch};
use tokio_rustls::TlsConnector;

use crate::config::Route;
use crate::conn::Activity;
use crate::error::Error;
use crate::headers::{XFCC, strip_hop_by_hop};
use crate::listen::{Shared, accept_loop, handshake_detail, handshake_reason, http_server};
use crate::metrics::OpenConnection;
use crate::reply::{Body, Refusal};

const DIRECTION: &str = "outbound";

/// One route and its pooled connection to the peer gateway.
#[derive(Debug)]
pub(crate) struct Outbound {
    shared: Arc<Shared>,
    route: Route,
    tls: Arc<rustls::ClientConfig>,
    server_name: ServerName<'static>,
    pool: Mutex<Option<Pooled>>,
}

/// The HTTP/2 connection to the peer gateway, usable until its peer's SVID expires.
#[derive(Debug)]
struct Pooled {
    sender: SendRequest<Incoming>,
    peer_not_after: u64,
}

impl Outbound {
    pub(crate) fn new(shared: Arc<Shared>, route: Route) -> Result<Self, Error> {
        let verifier =
            SpiffeServerVerifier::new(shared.bundles.clone(), route.expected_peer.clone());
        let certs = shared.credentials.clone() as Arc<dyn ResolvesClientCert>;
        let tls = client_config(Arc::new(verifier), Some(certs), &[ALPN_H2])?;
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
            tls: Arc::new(tls),
            server_name,
            pool: Mutex::new(None),
        })
    }

    /// The pooled connection, or a new one when there is none, it closed, or its peer's SVID
    /// expired. Holding the lock while connecting keeps it to one connection per route.
    async fn sender(&self) -> Result<SendRequest<Incoming>, Refusal> {
        let mut pool = self.pool.lock().await;
        if let Some(p) = pool.as_ref()
            && !p.sender.is_closed()
            && now_secs() < p.peer_not_after
        {
            return Ok(p.sender.clone());
        }
        *pool = None;
        let pooled = tokio::time::timeout(self.shared.limits.connect_timeout, self.connect())
            .await
            .map_err(|_| {
                Refusal::GatewayTimeout(format!(
                    "no connection to the peer gateway {} within the connect timeout",
                    self.route.target.authority
                ))
            })??;
        let sender = pooled.sender.clone();
        *pool = Some(pooled);
        Ok(sender)
    }

    async fn forget(&self) {
        *self.pool.lock().await = None;
    }

    async fn connect(&self) -> Result<Pooled, Refusal> {
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
                self.shared.metrics.handshake_failure(DIRECTION, handshake_reason(&e));
                let e = handshake_detail(&e);
                tracing::warn!(route = %self.route.name, target = %target.authority, "mTLS to the peer gateway failed: {e}");
                Refusal::BadGateway(format!(
                    "mTLS with the peer gateway {} (expected {}) failed: {e}",
                    target.authority, self.route.expected_peer
                ))
            })?;
        let session = &tls.get_ref().1;
        if session.alpn_protocol() != Some(ALPN_H2) {
            return Err(Refusal::BadGateway(format!(
                "the peer gateway {} did not agree to HTTP/2",
                target.authority
            )));
        }
        let peer_not_after = session
            .peer_certificates()
            .and_then(<[_]>::first)
            .and_then(|leaf| check_leaf(leaf).ok())
            .map_or(0, |info| info.not_after);
        let max_header = u32::try_from(self.shared.limits.max_header_bytes).unwrap_or(u32::MAX);
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .max_header_list_size(max_header)
            .keep_alive_interval(std::time::Duration::from_secs(30))
            .keep_alive_timeout(std::time::Duration::from_secs(10))
            .handshake(TokioIo::new(tls))
            .await
            .map_err(|e| {
                Refusal::BadGateway(format!("HTTP/2 with the peer gateway failed: {e}"))
            })?;
        let route = self.route.name.clone();
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%route, "connection to the peer gateway ended: {e}");
            }
        });
        tracing::debug!(route = %self.route.name, target = %target.authority, "connected to the peer gateway");
        Ok(Pooled {
            sender,
            peer_not_after,
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
    let io = TokioIo::new(tcp);
    let service = {
        let (outbound, activity) = (outbound.clone(), activity.clone());
        service_fn(move |req| handle(outbound.clone(), activity.clone(), req))
    };
    let limits = &outbound.shared.limits;
    let builder = http_server(limits);
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => if let Err(e) = r {
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
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let _busy = activity.begin();
    let start = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let response = match relay(&outbound, req).await {
        Ok(r) => r,
        Err(refusal) => refusal.into_response(),
    };
    let status = response.status().as_u16();
    let elapsed = start.elapsed();
    outbound
        .shared
        .metrics
        .request(DIRECTION, "none", status, elapsed.as_secs_f64());
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
        duration_ms = elapsed.as_secs_f64() * 1000.0,
        "request"
    );
    Ok(response)
}

/// Rewrites the app's request for the hop to the peer gateway and sends it as HTTP/2.
async fn relay(outbound: &Outbound, req: Request<Incoming>) -> Result<Response<Body>, Refusal> {
    let (mut parts, body) = req.into_parts();
    // The app's Host becomes :authority, so the peer's policy can match on it.
    let authority = match (parts.uri.authority().cloned(), parts.headers.get(HOST)) {
        (Some(a), _) => a,
        (None, Some(h)) => Authority::try_from(h.as_bytes())
            .map_err(|_| Refusal::BadRequest("the Host header is not a valid authority"))?,
        (None, None) => Authority::try_from(outbound.route.target.authority.as_str())
            .map_err(|_| Refusal::BadRequest("the route's target is not a valid authority"))?,
    };
    strip_hop_by_hop(&mut parts.headers);
    // Only the receiving gateway may say who the caller is.
    parts.headers.remove(XFCC);
    parts.headers.remove(HOST);
    let path_and_query = parts
        .uri
        .path_and_query()
        .map_or("/", |pq| pq.as_str())
        .to_owned();
    parts.uri = Uri::builder()
        .scheme("https")
        .authority(authority)
        .path_and_query(path_and_query)
        .build()
        .map_err(|_| Refusal::BadRequest("the request target cannot be forwarded"))?;
    parts.version = Version::HTTP_2;
    let mut request = Request::from_parts(parts, body);
    // One retry on a fresh connection when the pooled one was gone before the request left.
    for attempt in 0..2 {
        let mut sender = outbound.sender().await?;
        match sender.try_send_request(request).await {
            Ok(response) => {
                let (mut parts, body) = response.into_parts();
                strip_hop_by_hop(&mut parts.headers);
                return Ok(Response::from_parts(parts, body.boxed()));
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

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
