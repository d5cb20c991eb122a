//! WebSocket through the gateways. An app opens a WebSocket with an HTTP/1.1 `Upgrade:
//! websocket` request; between gateways, which speak HTTP/2, the same opening is an extended
//! CONNECT (RFC 8441, `:protocol websocket`); the local service again gets an HTTP/1.1 upgrade.
//! A service behind an h2c upstream gets an extended CONNECT too (it must allow it with
//! SETTINGS_ENABLE_CONNECT_PROTOCOL), and the gateway answers the key an HTTP/1.1 client sent.
//! Once the service accepts, each gateway splices the two upgraded streams byte for byte, until
//! either side closes, no byte moves for the idle timeout, or the peer's SVID ends.
//! Only `websocket` is carried: any other `Upgrade` (`h2c` above all, the classic way past a
//! proxy's checks) stays a hop-by-hop header and is removed.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper::header::{CONNECTION, HeaderMap, HeaderValue, UPGRADE};
use hyper::http::Extensions;
use hyper::http::request::Parts;
use hyper::upgrade::OnUpgrade;
use hyper::{Method, Request, Response, StatusCode, Uri, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::sync::Notify;
use tokio::task::JoinSet;

use crate::config::{Limits, Target, UpstreamProtocol};
use crate::conn::{Activity, InFlight};
use crate::headers::strip_hop_by_hop;
use crate::listen::until;
use crate::reply::{Body, Refusal, full};
use crate::tcp::splice;
use crate::upstream::{connect, not_answered, spawn_connection};

pub(crate) const WEBSOCKET: &str = "websocket";

/// Headers of the WebSocket handshake that travel end to end (`Upgrade` and `Connection` are
/// hop-by-hop and rewritten at each hop).
const SEC_WEBSOCKET_KEY: &str = "sec-websocket-key";
const SEC_WEBSOCKET_VERSION: &str = "sec-websocket-version";
const SEC_WEBSOCKET_ACCEPT: &str = "sec-websocket-accept";

/// How a request asks for a WebSocket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Opening {
    /// HTTP/1.1 `GET` with `Connection: upgrade` and `Upgrade: websocket`.
    Http1,
    /// HTTP/2 `CONNECT` with `:protocol websocket` (RFC 8441).
    ExtendedConnect,
}

/// The WebSocket opening `req` makes, if it makes one.
pub(crate) fn websocket_opening<B>(req: &Request<B>) -> Option<Opening> {
    if req.method() == Method::CONNECT {
        let protocol = req.extensions().get::<hyper::ext::Protocol>()?;
        return protocol
            .as_str()
            .eq_ignore_ascii_case(WEBSOCKET)
            .then_some(Opening::ExtendedConnect);
    }
    let h = req.headers();
    let connection_upgrade = h
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    let websocket = h
        .get_all(UPGRADE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim().eq_ignore_ascii_case(WEBSOCKET));
    (req.version() == Version::HTTP_11
        && req.method() == Method::GET
        && connection_upgrade
        && websocket)
        .then_some(Opening::Http1)
}

/// Makes `headers` (already stripped of hop-by-hop headers) those of an HTTP/1.1 WebSocket
/// opening. An extended CONNECT has no key (RFC 8441 §5); the service's handshake needs one.
pub(crate) fn http1_opening(headers: &mut HeaderMap) {
    headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(UPGRADE, HeaderValue::from_static(WEBSOCKET));
    if !headers.contains_key(SEC_WEBSOCKET_KEY)
        && let Some(key) = random_key()
    {
        headers.insert(SEC_WEBSOCKET_KEY, key);
    }
    if !headers.contains_key(SEC_WEBSOCKET_VERSION) {
        headers.insert(SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
    }
}

/// The `Connection` and `Upgrade` headers of a 101 answer.
pub(crate) fn switching(headers: &mut HeaderMap) {
    headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(UPGRADE, HeaderValue::from_static(WEBSOCKET));
}

fn random_key() -> Option<HeaderValue> {
    let mut nonce = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut nonce).ok()?;
    let key = base64::engine::general_purpose::STANDARD.encode(nonce);
    HeaderValue::from_str(&key).ok()
}

/// The inbound's hop for a WebSocket opening the policy allowed: an HTTP/1.1 upgrade (or, to an
/// h2c service, an extended CONNECT) to the local service at `target` (path and query); when the
/// service accepts, the peer gets 101 (HTTP/1.1) or 200 (extended CONNECT) and the two upgraded
/// streams are spliced on the connection's task. `parts` are the request's, hop-by-hop headers
/// already removed and XFCC set.
#[expect(
    clippy::too_many_arguments,
    reason = "one call site; the pieces come from the listener, the request and its connection"
)]
pub(crate) async fn to_upstream(
    upstream: &Target,
    limits: &Limits,
    mut parts: Parts,
    target: &str,
    opening: Opening,
    client: OnUpgrade,
    tunnels: &Tunnels,
    activity: &Arc<Activity>,
) -> Response<Body> {
    let h2c = upstream.protocol == UpstreamProtocol::H2c;
    parts.extensions = Extensions::new();
    let uri = if h2c {
        // HTTP/2 needs the scheme and authority as well as the path.
        format!("http://{}{target}", upstream.authority)
    } else {
        target.to_owned()
    };
    parts.uri = match uri.parse::<Uri>() {
        Ok(uri) => uri,
        Err(_) => {
            return Refusal::BadRequest("the request target cannot be forwarded").into_response();
        }
    };
    // Kept to answer an HTTP/1.1 client when the service speaks HTTP/2 (which uses no key).
    let key = parts.headers.get(SEC_WEBSOCKET_KEY).cloned();
    if h2c {
        parts.method = Method::CONNECT;
        parts.version = Version::HTTP_2;
        parts
            .extensions
            .insert(hyper::ext::Protocol::from_static(WEBSOCKET));
        parts.headers.remove(SEC_WEBSOCKET_KEY);
    } else {
        parts.method = Method::GET;
        parts.version = Version::HTTP_11;
        http1_opening(&mut parts.headers);
    }
    let request = Request::from_parts(parts, full(Bytes::new()));
    let opened = match upstream.protocol {
        UpstreamProtocol::H2c => open_upstream_h2c(upstream, limits, request).await,
        _ => open_upstream(upstream, limits, request).await,
    };
    let mut response = match opened {
        Ok(r) => r,
        Err(refusal) => return refusal.into_response(),
    };
    let accepted = if h2c {
        response.status() == StatusCode::OK
    } else {
        response.status() == StatusCode::SWITCHING_PROTOCOLS
    };
    let spliced = accepted.then(|| hyper::upgrade::on(&mut response));
    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    let Some(service) = spliced else {
        // The service said no (or something else): its answer goes back as it is.
        return Response::from_parts(parts, body.map_err(Into::into).boxed());
    };
    if h2c && let Some(accept) = key.as_ref().and_then(|k| websocket_accept(k.as_bytes())) {
        parts.headers.insert(SEC_WEBSOCKET_ACCEPT, accept);
    }
    match opening {
        Opening::Http1 => {
            parts.status = StatusCode::SWITCHING_PROTOCOLS;
            switching(&mut parts.headers);
        }
        Opening::ExtendedConnect => parts.status = StatusCode::OK,
    }
    // The connection's task cuts it when the peer's SVID expires or is revoked.
    tunnels.splice(client, service, activity.begin(), limits.idle_timeout, None);
    Response::from_parts(parts, full(Bytes::new()))
}

/// RFC 6455 §4.2.2: base64(SHA-1(key + GUID)), the answer to an HTTP/1.1 client's key.
fn websocket_accept(key: &[u8]) -> Option<HeaderValue> {
    let mut input = key.to_vec();
    input.extend_from_slice(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    let digest = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, &input);
    HeaderValue::from_str(&base64::engine::general_purpose::STANDARD.encode(digest.as_ref())).ok()
}

/// Sends an extended CONNECT to an h2c service on an HTTP/2 connection of its own (prior
/// knowledge) and returns its answer; the connection lives as long as the tunnel.
async fn open_upstream_h2c(
    upstream: &Target,
    limits: &Limits,
    req: Request<Body>,
) -> Result<Response<Incoming>, Refusal> {
    let tcp = connect(upstream, limits.connect_timeout).await?;
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .map_err(|_| not_answered())?;
    spawn_connection(upstream, "WebSocket", conn);
    answered_in_time(upstream, limits, sender.send_request(req))
        .await?
        .map_err(|e| {
            tracing::warn!(upstream = %upstream.authority, "the local service failed a WebSocket opening (does it enable extended CONNECT?): {e}");
            not_answered()
        })
}

/// Sends an HTTP/1.1 WebSocket opening to the local service on a connection of its own (an
/// upgraded connection is never pooled) and returns its answer.
async fn open_upstream(
    upstream: &Target,
    limits: &Limits,
    req: Request<Body>,
) -> Result<Response<Incoming>, Refusal> {
    let tcp = connect(upstream, limits.connect_timeout).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|_| not_answered())?;
    spawn_connection(upstream, "WebSocket", conn.with_upgrades());
    answered_in_time(upstream, limits, sender.send_request(req))
        .await?
        .map_err(|e| {
            tracing::warn!(upstream = %upstream.authority, "the local service failed a WebSocket opening: {e}");
            not_answered()
        })
}

/// The service's answer to an opening (whose body is empty, so the clock starts at once) within
/// the response timeout; dropping the request on time-out closes its connection.
async fn answered_in_time<T>(
    upstream: &Target,
    limits: &Limits,
    answer: impl std::future::Future<Output = T>,
) -> Result<T, Refusal> {
    tokio::time::timeout(limits.response_timeout, answer)
        .await
        .map_err(|_| {
            tracing::warn!(upstream = %upstream.authority, "the local service did not answer a WebSocket opening within limits.response_timeout");
            response_timed_out(limits)
        })
}

/// The 504 for a next hop that did not start its answer within the response timeout.
pub(crate) fn response_timed_out(limits: &Limits) -> Refusal {
    Refusal::GatewayTimeout(format!(
        "the service behind this gateway did not answer within {}s (limits.response_timeout)",
        limits.response_timeout.as_secs()
    ))
}

/// The spliced streams of one connection. A connection's task waits for them before it ends,
/// so that its slot, its gauge and its peer's expiry and revocation watch cover them too;
/// dropping the `Tunnels` (when the connection is cut) aborts them. Waiting (`finish`) owns
/// nothing: a wait given up, as when an expiring connection stops serving new requests, leaves
/// the tunnels running.
#[derive(Debug, Default)]
pub(crate) struct Tunnels {
    set: Mutex<JoinSet<()>>,
    open: Arc<Open>,
}

/// How many tunnels of a connection are running, and a wake-up when one ends.
#[derive(Debug, Default)]
struct Open {
    count: AtomicUsize,
    ended: Notify,
}

/// Counts a tunnel as open for as long as its task lives (aborted included).
struct Counted(Arc<Open>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.count.fetch_sub(1, Ordering::SeqCst);
        self.0.ended.notify_waiters();
    }
}

impl Tunnels {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Splices `client` and `upstream` once both are upgraded, on a task of this connection,
    /// until either side closes, no byte moves for `idle_timeout`, or `not_after` (unix seconds)
    /// passes; `busy` keeps the connection from counting as idle meanwhile.
    pub(crate) fn splice(
        &self,
        client: OnUpgrade,
        upstream: OnUpgrade,
        busy: InFlight,
        idle_timeout: Duration,
        not_after: Option<u64>,
    ) {
        self.open.count.fetch_add(1, Ordering::SeqCst);
        let counted = Counted(self.open.clone());
        let tunnel = async move {
            let _open = counted;
            let _busy = busy;
            let (client, upstream) = match tokio::join!(client, upstream) {
                (Ok(c), Ok(u)) => (c, u),
                (Err(e), _) | (_, Err(e)) => {
                    tracing::debug!("a WebSocket upgrade did not complete: {e}");
                    return;
                }
            };
            let expiry = async move {
                match not_after {
                    Some(at) => until(at).await,
                    None => std::future::pending().await,
                }
                "expired"
            };
            let spliced = splice(
                TokioIo::new(client),
                TokioIo::new(upstream),
                idle_timeout,
                expiry,
            )
            .await;
            tracing::debug!(
                up = spliced.from_client,
                down = spliced.to_client,
                end = spliced.end,
                "WebSocket ended"
            );
        };
        let mut set = self.set.lock().unwrap_or_else(PoisonError::into_inner);
        // Results of tunnels that ended are dropped here, so a long connection keeps none.
        while set.try_join_next().is_some() {}
        set.spawn(tunnel);
    }

    /// Completes when every tunnel of the connection has ended.
    pub(crate) async fn finish(&self) {
        loop {
            let ended = self.open.ended.notified();
            tokio::pin!(ended);
            // Registered before the count is read, so an end in between is not missed.
            ended.as_mut().enable();
            if self.open.count.load(Ordering::SeqCst) == 0 {
                return;
            }
            ended.await;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test code

    use super::*;

    fn request(method: Method, headers: &[(&'static str, &'static str)]) -> Request<()> {
        let mut r = Request::builder().method(method).uri("/ws");
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        r.body(()).unwrap()
    }

    #[test]
    fn only_a_websocket_opening_is_one() {
        let ws = [
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "WebSocket"),
        ];
        assert_eq!(
            websocket_opening(&request(Method::GET, &ws)),
            Some(Opening::Http1)
        );
        assert_eq!(websocket_opening(&request(Method::POST, &ws)), None);
        let h2c = [("connection", "upgrade"), ("upgrade", "h2c")];
        assert_eq!(websocket_opening(&request(Method::GET, &h2c)), None);
        let no_connection = [("upgrade", "websocket")];
        assert_eq!(
            websocket_opening(&request(Method::GET, &no_connection)),
            None
        );

        let mut connect = request(Method::CONNECT, &[]);
        assert_eq!(websocket_opening(&connect), None);
        connect
            .extensions_mut()
            .insert(hyper::ext::Protocol::from_static("websocket"));
        assert_eq!(websocket_opening(&connect), Some(Opening::ExtendedConnect));
    }

    #[test]
    fn an_opening_without_a_key_gets_one() {
        let mut h = HeaderMap::new();
        http1_opening(&mut h);
        assert_eq!(h[UPGRADE], WEBSOCKET);
        assert_eq!(h[SEC_WEBSOCKET_VERSION], "13");
        let key = h[SEC_WEBSOCKET_KEY].to_str().unwrap();
        assert_eq!(
            base64::engine::general_purpose::STANDARD
                .decode(key)
                .unwrap()
                .len(),
            16
        );
        let mut kept = HeaderMap::new();
        kept.insert(SEC_WEBSOCKET_KEY, HeaderValue::from_static("abc"));
        http1_opening(&mut kept);
        assert_eq!(kept[SEC_WEBSOCKET_KEY], "abc");
    }
}
