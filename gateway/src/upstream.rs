//! The inbound's connections to its local service, for requests that are not WebSocket openings
//! (those get a connection of their own, in `upgrade`).
//!
//! - **HTTP/1.1**: a pool of idle keep-alive connections, the most recently used first. A
//!   connection goes back to the pool when the service's answer has been read to its end (an
//!   answer given up halfway closes its connection, the only way HTTP/1.1 has to drop the rest);
//!   one idle for `limits.idle_timeout` is closed. A request sent on a pooled connection that
//!   the service had closed meanwhile, and that therefore never left, goes on a new connection.
//! - **h2c** (HTTP/2 with prior knowledge): one multiplexed connection, made by one request
//!   while the others wait for it, made anew once closed, and let go after `idle_timeout`
//!   without a request (streams still open on it finish first).
//!
//! One target, so no pool key to hash, and no task per request to watch for idleness: the
//! per-request cost of hyper-util's general-purpose client (docs/profiles).

use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper::client::conn::{http1, http2};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;

use crate::config::{Target, UpstreamProtocol};
use crate::reply::Refusal;
use crate::stream::Watched;

/// Why a request did not get the service's answer.
#[derive(Debug)]
pub(crate) enum UpstreamError {
    /// No connection: the answer to give the caller.
    Connect(Refusal),
    /// The exchange failed on a connection (the request body's own failure among the causes).
    Http(hyper::Error),
}

/// The local service, as the inbound reaches it.
#[derive(Debug)]
pub(crate) struct Upstream {
    target: Target,
    connect_timeout: Duration,
    idle_timeout: Duration,
    pool: Arc<Pool>,
}

#[derive(Debug, Default)]
struct Pool {
    /// Idle HTTP/1.1 connections, the oldest first.
    idle: Mutex<Vec<Idle>>,
    /// The h2c connection, once made, and when it last took a request. Held across the
    /// connect, so that a burst of requests makes one connection.
    h2c: tokio::sync::Mutex<Option<(http2::SendRequest<Watched>, Instant)>>,
}

#[derive(Debug)]
struct Idle {
    sender: http1::SendRequest<Watched>,
    since: Instant,
}

impl Pool {
    fn idle(&self) -> std::sync::MutexGuard<'_, Vec<Idle>> {
        // The list is consistent after any push or pop: a panic elsewhere cannot leave it torn.
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The most recently used pooled connection that is free now, if any. Closed ones, and
    /// those idle too long, are dropped on the way; busy ones (still sending a request body the
    /// service answered before reading, or not yet past their last answer) stay for later.
    fn checkout(&self, idle_timeout: Duration) -> Option<http1::SendRequest<Watched>> {
        let mut idle = self.idle();
        expire(&mut idle, idle_timeout);
        let mut busy = Vec::new();
        let mut free = None;
        while let Some(entry) = idle.pop() {
            if entry.sender.is_closed() {
                continue;
            }
            if entry.sender.is_ready() {
                free = Some(entry.sender);
                break;
            }
            busy.push(entry);
        }
        // Back in place: the list stays oldest first.
        idle.extend(busy.into_iter().rev());
        free
    }

    fn checkin(&self, sender: http1::SendRequest<Watched>) {
        if !sender.is_closed() {
            self.idle().push(Idle {
                sender,
                since: Instant::now(),
            });
        }
    }
}

/// Drops (closes) the connections idle for `idle_timeout` or more: the front of the list, which
/// is oldest first. Closed ones further back are left to `checkout` and the sweeper.
fn expire(idle: &mut Vec<Idle>, idle_timeout: Duration) {
    let fresh = idle
        .iter()
        .position(|i| i.since.elapsed() < idle_timeout)
        .unwrap_or(idle.len());
    idle.drain(..fresh);
}

impl Upstream {
    pub(crate) fn new(target: Target, connect_timeout: Duration, idle_timeout: Duration) -> Self {
        Self {
            target,
            connect_timeout,
            idle_timeout,
            pool: Arc::default(),
        }
    }

    pub(crate) fn target(&self) -> &Target {
        &self.target
    }

    /// Closes idle connections as they pass `idle_timeout`, until the upstream is dropped. Runs
    /// on the caller's runtime.
    pub(crate) fn spawn_sweeper(&self) {
        let pool = Arc::downgrade(&self.pool);
        let idle_timeout = self.idle_timeout;
        tokio::spawn(sweep(pool, idle_timeout));
    }

    /// Sends `req` (its URI in origin form, `/path?query`; its `Host` set) and returns the
    /// answer's head; the body streams from the connection.
    pub(crate) async fn send(
        &self,
        req: Request<Watched>,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        match self.target.protocol {
            UpstreamProtocol::H2c => self.send_h2c(req).await,
            UpstreamProtocol::Http1 => self.send_http1(req).await,
        }
    }

    async fn send_http1(
        &self,
        mut req: Request<Watched>,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        loop {
            let (mut sender, pooled) = match self.pool.checkout(self.idle_timeout) {
                Some(sender) => (sender, true),
                None => {
                    // Boxed: connecting is rare, and its state (the TCP connect and hyper's
                    // handshake) would otherwise be part of every request's future.
                    let mut sender = Box::pin(self.connect_http1()).await?;
                    sender.ready().await.map_err(UpstreamError::Http)?;
                    (sender, false)
                }
            };
            match sender.try_send_request(req).await {
                Ok(response) => {
                    let pool = Arc::downgrade(&self.pool);
                    return Ok(response.map(|body| UpstreamBody::http1(body, sender, pool)));
                }
                Err(mut e) => match e.take_message() {
                    // Never sent: the pooled connection closed (or got busy) under it. Another.
                    Some(unsent) if pooled => req = unsent,
                    _ => return Err(UpstreamError::Http(e.into_error())),
                },
            }
        }
    }

    async fn send_h2c(
        &self,
        req: Request<Watched>,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        let mut req = req;
        // One retry at most: a request refused unsent by a connection that closed under it
        // goes on a new one; the new one's refusal is final.
        for _ in 0..2 {
            let mut sender = {
                let mut slot = self.pool.h2c.lock().await;
                match slot.as_mut() {
                    Some((sender, used)) if !sender.is_closed() => {
                        *used = Instant::now();
                        sender.clone()
                    }
                    _ => {
                        // Boxed, as for HTTP/1.1: rare, and large.
                        let sender = Box::pin(self.connect_h2c()).await?;
                        *slot = Some((sender.clone(), Instant::now()));
                        sender
                    }
                }
            };
            match sender.try_send_request(req).await {
                Ok(response) => return Ok(response.map(UpstreamBody::h2c)),
                Err(mut e) => match e.take_message() {
                    Some(unsent) => {
                        req = unsent;
                        let mut slot = self.pool.h2c.lock().await;
                        if slot.as_ref().is_some_and(|(s, _)| s.is_closed()) {
                            *slot = None;
                        }
                    }
                    None => return Err(UpstreamError::Http(e.into_error())),
                },
            }
        }
        Err(UpstreamError::Connect(not_answered()))
    }

    async fn connect_http1(&self) -> Result<http1::SendRequest<Watched>, UpstreamError> {
        let tcp = connect(&self.target, self.connect_timeout)
            .await
            .map_err(UpstreamError::Connect)?;
        let (sender, conn) = http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(UpstreamError::Http)?;
        spawn_connection(&self.target, "pooled HTTP/1.1", conn);
        Ok(sender)
    }

    async fn connect_h2c(&self) -> Result<http2::SendRequest<Watched>, UpstreamError> {
        let tcp = connect(&self.target, self.connect_timeout)
            .await
            .map_err(UpstreamError::Connect)?;
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake(TokioIo::new(tcp))
            .await
            .map_err(UpstreamError::Http)?;
        spawn_connection(&self.target, "h2c", conn);
        Ok(sender)
    }
}

async fn sweep(pool: Weak<Pool>, idle_timeout: Duration) {
    // Often enough that no connection stays much past its timeout; no busier than once a second.
    let every = (idle_timeout / 4).max(Duration::from_secs(1));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(pool) = pool.upgrade() else {
            return;
        };
        {
            let mut idle = pool.idle();
            expire(&mut idle, idle_timeout);
            idle.retain(|i| !i.sender.is_closed());
        }
        let mut h2c = pool.h2c.lock().await;
        if h2c
            .as_ref()
            .is_some_and(|(s, used)| s.is_closed() || used.elapsed() >= idle_timeout)
        {
            *h2c = None;
        }
    }
}

/// Drives a connection to the local service (`kind`, for the log: pooled, h2c, WebSocket) for as
/// long as it lives.
pub(crate) fn spawn_connection<F>(target: &Target, kind: &'static str, conn: F)
where
    F: std::future::Future<Output = Result<(), hyper::Error>> + Send + 'static,
{
    let authority = target.authority.clone();
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(upstream = %authority, "{kind} connection to the local service ended: {e}");
        }
    });
}

/// A TCP connection to the service, with Nagle off (requests and answers are small and
/// latency-bound), within `connect_timeout`; on failure, the answer to give the caller.
pub(crate) async fn connect(
    target: &Target,
    connect_timeout: Duration,
) -> Result<TcpStream, Refusal> {
    let tcp = tokio::time::timeout(
        connect_timeout,
        TcpStream::connect((target.host.as_str(), target.port)),
    )
    .await
    .map_err(|_| {
        Refusal::GatewayTimeout("the service behind this gateway did not accept in time".into())
    })?
    .map_err(|e| {
        tracing::warn!(upstream = %target.authority, "cannot connect to the local service: {e}");
        not_answered()
    })?;
    let _ = tcp.set_nodelay(true);
    Ok(tcp)
}

pub(crate) fn not_answered() -> Refusal {
    Refusal::BadGateway("the service behind this gateway did not answer".into())
}

/// The body of the service's answer. An HTTP/1.1 connection goes back to the pool once the
/// body has been read to its end, at the latest when the body is dropped.
#[derive(Debug)]
pub(crate) struct UpstreamBody {
    inner: Incoming,
    /// The HTTP/1.1 connection it came on, until it goes back.
    home: Option<(http1::SendRequest<Watched>, Weak<Pool>)>,
}

impl UpstreamBody {
    fn http1(inner: Incoming, sender: http1::SendRequest<Watched>, pool: Weak<Pool>) -> Self {
        let mut body = Self {
            inner,
            home: Some((sender, pool)),
        };
        // An answer with no body (204, 304, a HEAD's) is already read.
        body.check_in_if_ended();
        body
    }

    fn h2c(inner: Incoming) -> Self {
        Self { inner, home: None }
    }

    fn check_in_if_ended(&mut self) {
        if self.inner.is_end_stream() {
            self.check_in();
        }
    }

    /// Back to the pool. hyper hands it no new request before both directions of this
    /// exchange are done (`checkout` takes only a free connection).
    fn check_in(&mut self) {
        if let Some((sender, pool)) = self.home.take()
            && let Some(pool) = pool.upgrade()
        {
            pool.checkin(sender);
        }
    }
}

impl HttpBody for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(_))) => self.check_in_if_ended(),
            // The end of a chunked answer (or of one without a length), which `is_end_stream`
            // does not report.
            Poll::Ready(None) => self.check_in(),
            // A failed answer leaves its connection unusable: dropped with the body.
            Poll::Ready(Some(Err(_))) => self.home = None,
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        // Read to its end, possibly without the last poll: the connection is reusable. Otherwise
        // dropping the sender closes it once hyper has given up the unread rest.
        self.check_in_if_ended();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)] // test code

    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::BodyExt as _;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::TcpListener;

    use super::*;
    use crate::conn::Activity;
    use crate::reply::full;

    /// How the test service answers each request on a connection.
    #[derive(Clone, Copy)]
    enum Answer {
        /// `200 ok`, keep-alive.
        Ok,
        /// `200 ok`, then the connection is closed without a `Connection: close`.
        OkThenClose,
        /// `204`, keep-alive.
        NoContent,
        /// Half of a 10-byte body, then nothing.
        Half,
        /// `200 ok` in chunked encoding, keep-alive.
        Chunked,
        /// `200 ok` to the first request; the second is read and the connection closed
        /// without an answer.
        OkThenSilence,
    }

    #[derive(Default)]
    struct Seen {
        connections: AtomicUsize,
        /// Connections the gateway closed (end of file while waiting for a request).
        closed_by_client: AtomicUsize,
        requests: AtomicUsize,
    }

    /// A plain HTTP/1.1 service on 127.0.0.1 that answers every request with `answer`.
    async fn service(answer: Answer) -> (Target, Arc<Seen>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Seen::default());
        let counts = seen.clone();
        tokio::spawn(async move {
            loop {
                let (mut tcp, _) = listener.accept().await.unwrap();
                counts.connections.fetch_add(1, Ordering::SeqCst);
                let counts = counts.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    loop {
                        let mut chunk = [0u8; 4096];
                        let n = tcp.read(&mut chunk).await.unwrap_or(0);
                        if n == 0 {
                            counts.closed_by_client.fetch_add(1, Ordering::SeqCst);
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            buf.drain(..end + 4);
                            let nth = counts.requests.fetch_add(1, Ordering::SeqCst);
                            if matches!(answer, Answer::OkThenSilence) && nth > 0 {
                                return;
                            }
                            let reply: &[u8] = match answer {
                                Answer::Chunked => {
                                    b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"
                                }
                                Answer::Ok | Answer::OkThenClose | Answer::OkThenSilence => {
                                    b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
                                }
                                Answer::NoContent => b"HTTP/1.1 204 No Content\r\n\r\n",
                                Answer::Half => {
                                    b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhalf."
                                }
                            };
                            tcp.write_all(reply).await.unwrap();
                            if matches!(answer, Answer::OkThenClose) {
                                return;
                            }
                        }
                    }
                });
            }
        });
        let target = Target {
            host: "127.0.0.1".into(),
            port,
            authority: format!("127.0.0.1:{port}"),
            protocol: UpstreamProtocol::Http1,
        };
        (target, seen)
    }

    fn get(target: &Target) -> Request<Watched> {
        let (body, _sent) = Watched::request(full(""), Duration::from_secs(5), Activity::new());
        Request::builder()
            .uri("/x")
            .header(hyper::header::HOST, &target.authority)
            .body(body)
            .unwrap()
    }

    async fn read_whole(upstream: &Upstream) -> (u16, Bytes) {
        let response = upstream.send(get(upstream.target())).await.unwrap();
        let status = response.status().as_u16();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, body)
    }

    /// Waits (bounded) until `f` holds, for what another task does next.
    async fn eventually(f: impl Fn() -> bool) -> bool {
        for _ in 0..200 {
            if f() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        f()
    }

    fn upstream(target: Target, idle: Duration) -> Upstream {
        Upstream::new(target, Duration::from_secs(5), idle)
    }

    /// `n` requests one after another to a service answering `200 ok` as `answer` says, each
    /// answer checked and read whole; what the service saw.
    async fn ok_answers(answer: Answer, n: usize) -> Arc<Seen> {
        let (target, seen) = service(answer).await;
        let upstream = upstream(target, Duration::from_secs(60));
        for _ in 0..n {
            assert_eq!(
                read_whole(&upstream).await,
                (200, Bytes::from_static(b"ok"))
            );
        }
        seen
    }

    #[tokio::test]
    async fn answers_read_whole_leave_their_connection_for_the_next_request() {
        let seen = ok_answers(Answer::Ok, 5).await;
        assert_eq!(seen.requests.load(Ordering::SeqCst), 5);
        assert_eq!(seen.connections.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn an_answer_without_a_body_leaves_its_connection_too() {
        let (target, seen) = service(Answer::NoContent).await;
        let upstream = upstream(target, Duration::from_secs(60));
        for _ in 0..3 {
            assert_eq!(read_whole(&upstream).await.0, 204);
        }
        assert_eq!(seen.connections.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn concurrent_requests_get_a_connection_each_and_then_share_them() {
        let (target, seen) = service(Answer::Ok).await;
        let upstream = upstream(target, Duration::from_secs(60));
        let (a, b) = tokio::join!(
            upstream.send(get(upstream.target())),
            upstream.send(get(upstream.target()))
        );
        // Both heads in hand, neither body read: two connections.
        for response in [a.unwrap(), b.unwrap()] {
            response.into_body().collect().await.unwrap();
        }
        for _ in 0..4 {
            read_whole(&upstream).await;
        }
        assert_eq!(seen.connections.load(Ordering::SeqCst), 2);
        assert_eq!(seen.requests.load(Ordering::SeqCst), 6);
    }

    #[tokio::test]
    async fn a_connection_the_service_closed_is_replaced_and_nothing_fails() {
        let seen = ok_answers(Answer::OkThenClose, 4).await;
        assert_eq!(seen.requests.load(Ordering::SeqCst), 4);
        assert_eq!(seen.connections.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn an_answer_dropped_halfway_closes_its_connection() {
        let (target, seen) = service(Answer::Half).await;
        let upstream = upstream(target.clone(), Duration::from_secs(60));
        let response = upstream.send(get(&target)).await.unwrap();
        let mut body = response.into_body();
        let first = body.frame().await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap(), Bytes::from_static(b"half."));
        drop(body);
        // The unread rest cannot be skipped on HTTP/1.1: the connection is closed, not pooled.
        assert!(eventually(|| seen.closed_by_client.load(Ordering::SeqCst) == 1).await);
        let response = upstream.send(get(&target)).await.unwrap();
        drop(response);
        assert_eq!(seen.connections.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_connection_idle_past_the_timeout_is_closed_not_reused() {
        let (target, seen) = service(Answer::Ok).await;
        let upstream = upstream(target, Duration::from_millis(50));
        read_whole(&upstream).await;
        assert_eq!(upstream.pool.idle().len(), 1);
        tokio::time::sleep(Duration::from_millis(120)).await;
        assert_eq!(seen.closed_by_client.load(Ordering::SeqCst), 0);
        read_whole(&upstream).await;
        assert_eq!(seen.connections.load(Ordering::SeqCst), 2);
        assert!(eventually(|| seen.closed_by_client.load(Ordering::SeqCst) == 1).await);
    }

    #[tokio::test]
    async fn the_sweeper_closes_idle_connections_without_traffic() {
        let (target, seen) = service(Answer::Ok).await;
        let upstream = upstream(target, Duration::from_millis(50));
        upstream.spawn_sweeper();
        read_whole(&upstream).await;
        assert_eq!(upstream.pool.idle().len(), 1);
        // The sweeper looks once a second at most; `eventually` waits up to two.
        assert!(eventually(|| seen.closed_by_client.load(Ordering::SeqCst) == 1).await);
        assert_eq!(upstream.pool.idle().len(), 0);
    }

    /// A request body that never ends.
    struct Endless;

    impl HttpBody for Endless {
        type Data = Bytes;
        type Error = crate::reply::BoxError;

        fn poll_frame(
            self: std::pin::Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            Poll::Pending
        }
    }

    #[tokio::test]
    async fn a_connection_still_sending_an_upload_is_not_waited_on() {
        // The service answers at the head, before the body; the upload goes on. The answer is
        // read whole, but the connection is not free until the upload ends: the next request
        // must take another connection rather than wait behind it.
        let (target, seen) = service(Answer::Ok).await;
        let upstream = upstream(target.clone(), Duration::from_secs(60));
        let (body, _sent) = Watched::request(
            http_body_util::BodyExt::boxed(Endless),
            Duration::from_secs(60),
            Activity::new(),
        );
        let upload = Request::builder()
            .method("POST")
            .uri("/upload")
            .header(hyper::header::HOST, &target.authority)
            .body(body)
            .unwrap();
        let response = upstream.send(upload).await.unwrap();
        assert_eq!(
            response.into_body().collect().await.unwrap().to_bytes(),
            "ok"
        );
        let next = tokio::time::timeout(Duration::from_secs(10), read_whole(&upstream)).await;
        assert_eq!(next.unwrap(), (200, Bytes::from_static(b"ok")));
        assert_eq!(seen.connections.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn chunked_answers_read_whole_leave_their_connection_too() {
        let seen = ok_answers(Answer::Chunked, 5).await;
        assert_eq!(seen.connections.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_request_the_service_read_and_left_unanswered_is_not_sent_again() {
        let (target, seen) = service(Answer::OkThenSilence).await;
        let upstream = upstream(target.clone(), Duration::from_secs(60));
        read_whole(&upstream).await;
        // Pooled and free: the second request goes on it, is read, and the service hangs up.
        match upstream.send(get(&target)).await {
            Err(UpstreamError::Http(e)) => assert!(e.is_incomplete_message(), "{e:?}"),
            other => panic!("expected the exchange to fail, got {other:?}"),
        }
        // It reached the service once: not retried on a new connection.
        assert_eq!(seen.requests.load(Ordering::SeqCst), 2);
        assert_eq!(seen.connections.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_burst_of_h2c_requests_shares_one_connection() {
        use hyper::server::conn::http2 as server;
        use hyper_util::rt::TokioExecutor;

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let connections = Arc::new(AtomicUsize::new(0));
        let counted = connections.clone();
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                counted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(server::Builder::new(TokioExecutor::new()).serve_connection(
                    TokioIo::new(tcp),
                    hyper::service::service_fn(|_req| async {
                        Ok::<_, std::convert::Infallible>(Response::new(full("ok")))
                    }),
                ));
            }
        });
        let target = Target {
            host: "127.0.0.1".into(),
            port,
            authority: format!("127.0.0.1:{port}"),
            protocol: UpstreamProtocol::H2c,
        };
        let upstream = Arc::new(upstream(target.clone(), Duration::from_secs(60)));
        let mut burst = tokio::task::JoinSet::new();
        for _ in 0..20 {
            let (upstream, authority) = (upstream.clone(), target.authority.clone());
            burst.spawn(async move {
                let (body, _sent) =
                    Watched::request(full(""), Duration::from_secs(5), Activity::new());
                let request = Request::builder()
                    .uri(format!("http://{authority}/x"))
                    .version(hyper::Version::HTTP_2)
                    .body(body)
                    .unwrap();
                let response = upstream.send(request).await.unwrap();
                response.into_body().collect().await.unwrap().to_bytes()
            });
        }
        for body in burst.join_all().await {
            assert_eq!(body, "ok");
        }
        assert_eq!(connections.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_service_that_is_not_listening_is_a_bad_gateway() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let target = Target {
            host: "127.0.0.1".into(),
            port,
            authority: format!("127.0.0.1:{port}"),
            protocol: UpstreamProtocol::Http1,
        };
        let upstream = upstream(target.clone(), Duration::from_secs(60));
        match upstream.send(get(&target)).await {
            Err(UpstreamError::Connect(refusal)) => {
                assert_eq!(refusal.into_response().status(), 502);
            }
            other => panic!("expected a refused connection, got {other:?}"),
        }
    }
}
