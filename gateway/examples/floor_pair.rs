//! The least a proxy pair on meshgate's required stack does per request, to measure against
//! (not shipped; docs/profiles/gateway-2026-11-27.md, "The floor of the stack").
//!
//!     cargo run --release -p meshgate-gateway --example floor_pair -- init DIR
//!     floor_pair inbound DIR LISTEN SERVICE     # HTTP/2 over mTLS in, HTTP/1.1 out
//!     floor_pair outbound DIR LISTEN INBOUND    # HTTP/1.1 in, HTTP/2 over mTLS out
//!     floor_pair outbound DIR LISTEN INBOUND http1   # the same with HTTP/1.1 over mTLS out
//!     floor_pair outbound DIR LISTEN INBOUND h2xN    # N HTTP/2 connections to the inbound
//!     floor_pair inbound DIR LISTEN SERVICE h2direct    # HTTP/2 on `h2` itself, not hyper
//!     floor_pair outbound DIR LISTEN INBOUND h2direct   # (both sides, for the same hop)
//!     floor_pair outbound DIR LISTEN INBOUND h2flushK   # h2direct, flushed every K requests
//!
//! The same path as a meshgate pair (plain HTTP/1.1 → outbound → one HTTP/2 connection over
//! TLS 1.3 with client certificates verified both ways → inbound → a keep-alive HTTP/1.1 pool
//! → service), on the same crates (tokio on one thread, hyper, tokio-rustls with ring), and
//! nothing else: no SPIFFE ID or policy check, no access log, no metrics, no timeouts, no
//! header rules, no limits, no renewal, no audit; mimalloc, as the `meshgate` binary. The
//! service's answer is read whole before it is forwarded (the benchmark's answers are a few
//! bytes). What this pair reaches on a machine bounds what a gateway of meshgate's design (one
//! HTTP/2 connection between the pair through hyper, one thread a side) can reach there.
//!
//! With `http1`, the outbound opens one TLS connection to the inbound per caller's connection
//! and sends HTTP/1.1 over it, as the nginx and HAProxy pairs do; the inbound takes either (by
//! ALPN). On the development machine that variant was slower than HTTP/2 between the pair and
//! spent more CPU per request (docs/profiles/gateway-2026-11-27.md), so the benchmark runs the
//! HTTP/2 one. `h2xN`, `h2direct` and `h2flushK` are the other designs the profile measured (its
//! section "Other designs measured as floors"): N HTTP/2 connections between the pair, each
//! caller's connection keeping to one of them in turn, and the hop on `h2`'s own client and
//! server, without hyper's task and channel per request; `h2flushK` also drives that hop's
//! connection from every K-th request, so that a batch's first requests leave before the rest
//! are read. More connections were slower; `h2` directly was within about a tenth of the hyper
//! floor at 32 connections; flushing earlier cost more CPU than the overlap gave back.
//!
//! `init` mints a CA and two leaf certificates with rcgen (P-256, as the SVIDs) into DIR;
//! nothing is committed. Every address must be on 127.0.0.1.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper::http::uri::{Authority, Scheme};
use hyper::service::service_fn;
use hyper::{Request, Response, Uri};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, SanType};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

type Error = Box<dyn std::error::Error + Send + Sync>;

// As in the `meshgate` binary.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A request that could not be forwarded (a concrete type: hyper's services want one).
#[derive(Debug)]
struct Failed(String);

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Failed {}

fn failed(e: impl std::fmt::Display) -> Failed {
    Failed(e.to_string())
}

const USAGE: &str = "usage: floor_pair init DIR | inbound DIR LISTEN SERVICE [h2direct] \
     | outbound DIR LISTEN INBOUND [http1 | h2xN | h2direct | h2flushK]";
const SERVER_NAME: &str = "inbound.floor.example";

fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match args.as_slice() {
        ["init", dir] => init(Path::new(dir)),
        ["inbound", dir, listen, service] => {
            let (listen, service) = (loopback(listen)?, loopback(service)?);
            rt.block_on(inbound(Path::new(dir), listen, service, false))
        }
        ["inbound", dir, listen, service, "h2direct"] => {
            let (listen, service) = (loopback(listen)?, loopback(service)?);
            rt.block_on(inbound(Path::new(dir), listen, service, true))
        }
        ["outbound", dir, listen, peer, "h2direct"] => {
            let (listen, peer) = (loopback(listen)?, loopback(peer)?);
            rt.block_on(outbound_h2direct(Path::new(dir), listen, peer, 0))
        }
        ["outbound", dir, listen, peer, k] if k.starts_with("h2flush") => {
            let (listen, peer) = (loopback(listen)?, loopback(peer)?);
            let k = numbered(k, "h2flush", 1024)?;
            rt.block_on(outbound_h2direct(Path::new(dir), listen, peer, k))
        }
        ["outbound", dir, listen, peer] => {
            let (listen, peer) = (loopback(listen)?, loopback(peer)?);
            rt.block_on(outbound(Path::new(dir), listen, peer, 1))
        }
        ["outbound", dir, listen, peer, n] if n.starts_with("h2x") => {
            let (listen, peer) = (loopback(listen)?, loopback(peer)?);
            let n = numbered(n, "h2x", 64)?;
            rt.block_on(outbound(Path::new(dir), listen, peer, n))
        }
        ["outbound", dir, listen, peer, "http1"] => {
            let (listen, peer) = (loopback(listen)?, loopback(peer)?);
            rt.block_on(outbound_http1(Path::new(dir), listen, peer))
        }
        _ => Err(USAGE.into()),
    }
}

/// The N of an option `PREFIX<N>`, from 1 to `max`.
fn numbered(arg: &str, prefix: &str, max: usize) -> Result<usize, Error> {
    arg.strip_prefix(prefix)
        .and_then(|n| n.parse().ok())
        .filter(|n| (1..=max).contains(n))
        .ok_or_else(|| format!("{arg:?}: expected {prefix}1 to {prefix}{max}").into())
}

fn loopback(addr: &str) -> Result<SocketAddr, Error> {
    let parsed: SocketAddr = addr
        .parse()
        .map_err(|_| format!("{addr:?}: expected 127.0.0.1:PORT"))?;
    if !parsed.ip().is_loopback() {
        return Err(format!("{addr:?}: only 127.0.0.1 addresses are accepted").into());
    }
    Ok(parsed)
}

/// A CA and two leaves (the inbound's with its DNS name, the outbound's), PEM files in `dir`.
fn init(dir: &Path) -> Result<(), Error> {
    std::fs::create_dir_all(dir)?;
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::default();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "floor_pair CA");
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = rcgen::Issuer::new(ca, ca_key);
    std::fs::write(dir.join("ca.pem"), ca_cert.pem())?;
    for (name, san) in [
        ("inbound", SanType::DnsName(SERVER_NAME.try_into()?)),
        (
            "outbound",
            SanType::URI("spiffe://floor.example/outbound".try_into()?),
        ),
    ] {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![san];
        let cert = params.signed_by(&key, &issuer)?;
        std::fs::write(dir.join(format!("{name}.pem")), cert.pem())?;
        std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem())?;
    }
    Ok(())
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn load(
    dir: &Path,
    name: &str,
) -> Result<
    (
        RootCertStore,
        Vec<CertificateDer<'static>>,
        PrivateKeyDer<'static>,
    ),
    Error,
> {
    let mut roots = RootCertStore::empty();
    roots.add(CertificateDer::from_pem_file(dir.join("ca.pem"))?)?;
    let chain = vec![CertificateDer::from_pem_file(
        dir.join(format!("{name}.pem")),
    )?];
    let key = PrivateKeyDer::from_pem_file(dir.join(format!("{name}.key")))?;
    Ok((roots, chain, key))
}

async fn inbound(
    dir: &Path,
    listen: SocketAddr,
    service: SocketAddr,
    h2direct: bool,
) -> Result<(), Error> {
    let (roots, chain, key) = load(dir, "inbound")?;
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider()).build()?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config.send_tls13_tickets = 0;
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let pool = Arc::new(Pool {
        service,
        idle: Mutex::new(Vec::new()),
    });
    let direct_pool: Arc<Pool<Full<Bytes>>> = Arc::new(Pool {
        service,
        idle: Mutex::new(Vec::new()),
    });
    let listener = TcpListener::bind(listen).await?;
    eprintln!("floor_pair inbound on {listen}, service {service}");
    loop {
        let (tcp, _) = listener.accept().await?;
        tcp.set_nodelay(true)?;
        let (acceptor, pool) = (acceptor.clone(), pool.clone());
        let direct_pool = direct_pool.clone();
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
            if h2 && h2direct {
                let _ = serve_h2direct(tls, direct_pool).await;
                return;
            }
            let svc = service_fn(move |req| {
                let pool = pool.clone();
                async move { pool.forward(req).await }
            });
            if h2 {
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            } else {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            }
        });
    }
}

/// Keep-alive HTTP/1.1 connections to the service, most recently used first.
struct Pool<B> {
    service: SocketAddr,
    idle: Mutex<Vec<http1::SendRequest<B>>>,
}

impl<B> Pool<B>
where
    B: hyper::body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    async fn forward(&self, mut req: Request<B>) -> Result<Response<Full<Bytes>>, Failed> {
        let mut sender = loop {
            let idle = self.idle.lock().map_err(failed)?.pop();
            match idle {
                Some(s) if s.is_ready() => break s,
                Some(_) => continue,
                None => {
                    let tcp = TcpStream::connect(self.service).await.map_err(failed)?;
                    tcp.set_nodelay(true).map_err(failed)?;
                    let (s, conn) = http1::handshake(TokioIo::new(tcp)).await.map_err(failed)?;
                    tokio::spawn(conn);
                    break s;
                }
            }
        };
        // HTTP/1.1 wants a path and a Host; HTTP/2 gave :authority.
        if let Some(a) = req.uri().authority().cloned()
            && !req.headers().contains_key(hyper::header::HOST)
        {
            let host = a.as_str().parse().map_err(failed)?;
            req.headers_mut().insert(hyper::header::HOST, host);
        }
        *req.uri_mut() = req
            .uri()
            .path_and_query()
            .map_or_else(|| Uri::from_static("/"), |p| Uri::from(p.clone()));
        *req.version_mut() = hyper::Version::HTTP_11;
        let response = sender.send_request(req).await.map_err(failed)?;
        let (parts, body) = response.into_parts();
        let body = body.collect().await.map_err(failed)?.to_bytes();
        self.idle.lock().map_err(failed)?.push(sender);
        Ok(Response::from_parts(parts, Full::new(body)))
    }
}

/// Whole body of an `h2` stream, its flow-control capacity given back as it arrives.
async fn read_h2_body(body: &mut h2::RecvStream) -> Result<Bytes, h2::Error> {
    let mut whole = bytes::BytesMut::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        let _ = body.flow_control().release_capacity(chunk.len());
        whole.extend_from_slice(&chunk);
    }
    Ok(whole.freeze())
}

/// The inbound's HTTP/2 side on `h2` directly, without hyper: a task per stream that forwards
/// to the service and answers.
async fn serve_h2direct<T>(tls: T, pool: Arc<Pool<Full<Bytes>>>) -> Result<(), Error>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut conn = h2::server::handshake(tls).await?;
    while let Some(accepted) = conn.accept().await {
        let (req, mut respond) = accepted?;
        let pool = pool.clone();
        tokio::spawn(async move {
            let (parts, mut body) = req.into_parts();
            let answer = match read_h2_body(&mut body).await {
                Ok(whole) => pool
                    .forward(Request::from_parts(parts, Full::new(whole)))
                    .await
                    .ok(),
                Err(_) => None,
            };
            let Some(answer) = answer else {
                respond.send_reset(h2::Reason::INTERNAL_ERROR);
                return;
            };
            let (mut parts, body) = answer.into_parts();
            // HTTP/2 carries no connection-specific fields (hyper drops them itself).
            for name in ["connection", "keep-alive", "transfer-encoding", "upgrade"] {
                parts.headers.remove(name);
            }
            let Ok(body) = body.collect().await.map(|b| b.to_bytes());
            let empty = body.is_empty();
            if let Ok(mut stream) = respond.send_response(Response::from_parts(parts, ()), empty)
                && !empty
            {
                let _ = stream.send_data(body, true);
            }
        });
    }
    Ok(())
}

/// The outbound side on `h2` directly, without hyper's HTTP/2 client (no task or channel per
/// request): each request drives its own stream, one task drives the connection.
async fn outbound_h2direct(
    dir: &Path,
    listen: SocketAddr,
    peer: SocketAddr,
    flush_every: usize,
) -> Result<(), Error> {
    let connector = TlsConnector::from(Arc::new(client_config(dir, b"h2")?));
    let (client, conn) = h2::client::handshake(dial(&connector, peer).await?).await?;
    let driver = Arc::new(Driver {
        conn: Mutex::new(conn),
        waker: Mutex::new(None),
        sent: std::sync::atomic::AtomicUsize::new(0),
        every: flush_every,
        ended: std::sync::atomic::AtomicBool::new(false),
    });
    let task = driver.clone();
    tokio::spawn(std::future::poll_fn(move |cx| task.poll_task(cx)));
    let authority = Authority::from_static(SERVER_NAME);
    let listener = TcpListener::bind(listen).await?;
    eprintln!("floor_pair outbound (h2 directly) on {listen}, inbound {peer}");
    loop {
        let (tcp, _) = listener.accept().await?;
        tcp.set_nodelay(true)?;
        let (client, authority) = (client.clone(), authority.clone());
        let driver = driver.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |mut req: Request<Incoming>| {
                let client = client.clone();
                let authority = authority.clone();
                let driver = driver.clone();
                async move {
                    to_peer(&mut req, authority)?;
                    let (head, body) = req.into_parts();
                    let whole = body.collect().await.map_err(failed)?.to_bytes();
                    let mut client = client.ready().await.map_err(failed)?;
                    let empty = whole.is_empty();
                    let (response, mut stream) = client
                        .send_request(Request::from_parts(head, ()), empty)
                        .map_err(failed)?;
                    if !empty {
                        stream.send_data(whole, true).map_err(failed)?;
                    }
                    driver.nudge();
                    let (head, mut body) = response.await.map_err(failed)?.into_parts();
                    let whole = read_h2_body(&mut body).await.map_err(failed)?;
                    Ok::<_, Failed>(Response::from_parts(head, Full::new(whole)))
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        });
    }
}

type H2Client = h2::client::Connection<tokio_rustls::client::TlsStream<TcpStream>, Bytes>;

/// The outbound's `h2` connection, driven by a task of its own and, with `every` > 0, also by
/// every `every`-th request right after it is queued, so that the first requests of a batch
/// leave before the rest are read (with the connection task's waker, which keeps its wake-ups).
struct Driver {
    conn: Mutex<H2Client>,
    waker: Mutex<Option<std::task::Waker>>,
    sent: std::sync::atomic::AtomicUsize,
    every: usize,
    /// The connection's future has completed: it is not polled again.
    ended: std::sync::atomic::AtomicBool,
}

impl Driver {
    fn poll_task(&self, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        if let Ok(mut waker) = self.waker.lock()
            && !waker.as_ref().is_some_and(|w| w.will_wake(cx.waker()))
        {
            *waker = Some(cx.waker().clone());
        }
        self.poll_conn(cx)
    }

    fn poll_conn(&self, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        use std::sync::atomic::Ordering::Relaxed;
        if self.ended.load(Relaxed) {
            return std::task::Poll::Ready(());
        }
        let Ok(mut conn) = self.conn.lock() else {
            return std::task::Poll::Ready(());
        };
        let polled = std::pin::Pin::new(&mut *conn).poll(cx).map(|_| ());
        if polled.is_ready() {
            self.ended.store(true, Relaxed);
        }
        polled
    }

    fn nudge(&self) {
        use std::sync::atomic::Ordering::Relaxed;
        if self.every == 0 || !(self.sent.fetch_add(1, Relaxed) + 1).is_multiple_of(self.every) {
            return;
        }
        let Some(waker) = self.waker.lock().ok().and_then(|w| w.clone()) else {
            return;
        };
        // Polled with the connection task's waker, which thus keeps its wake-ups; if this
        // poll ends the connection, that task is woken and sees it ended.
        if self
            .poll_conn(&mut std::task::Context::from_waker(&waker))
            .is_ready()
        {
            waker.wake();
        }
    }
}

/// A TLS connection to the inbound at `peer`.
async fn dial(
    connector: &TlsConnector,
    peer: SocketAddr,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, Error> {
    let tcp = TcpStream::connect(peer).await?;
    tcp.set_nodelay(true)?;
    Ok(connector
        .connect(ServerName::try_from(SERVER_NAME)?, tcp)
        .await?)
}

/// A caller's HTTP/1.1 request made an HTTP/2 one for the inbound: an absolute URI, no `Host`.
fn to_peer<B>(req: &mut Request<B>, authority: Authority) -> Result<(), Failed> {
    let mut parts = std::mem::take(req.uri_mut()).into_parts();
    parts.scheme = Some(Scheme::HTTPS);
    parts.authority = Some(authority);
    *req.uri_mut() = Uri::from_parts(parts).map_err(failed)?;
    *req.version_mut() = hyper::Version::HTTP_2;
    req.headers_mut().remove(hyper::header::HOST);
    Ok(())
}

/// The outbound's TLS 1.3 client config: its certificate, the CA as the only root, `alpn`, no
/// resumption.
fn client_config(dir: &Path, alpn: &[u8]) -> Result<ClientConfig, Error> {
    let (roots, chain, key) = load(dir, "outbound")?;
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)?;
    config.alpn_protocols = vec![alpn.to_vec()];
    config.resumption = rustls::client::Resumption::disabled();
    Ok(config)
}

async fn outbound(
    dir: &Path,
    listen: SocketAddr,
    peer: SocketAddr,
    connections: usize,
) -> Result<(), Error> {
    let connector = TlsConnector::from(Arc::new(client_config(dir, b"h2")?));
    let mut senders = Vec::with_capacity(connections);
    for _ in 0..connections {
        let tls = dial(&connector, peer).await?;
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .handshake(TokioIo::new(Box::pin(tls)))
            .await?;
        tokio::spawn(conn);
        senders.push(sender);
    }
    let authority = Authority::from_static(SERVER_NAME);
    let listener = TcpListener::bind(listen).await?;
    eprintln!(
        "floor_pair outbound on {listen}, inbound {peer}, {connections} HTTP/2 connection(s)"
    );
    // Each caller's connection keeps to one of the HTTP/2 connections, in turn.
    for sender in senders.iter().cycle() {
        let (tcp, _) = listener.accept().await?;
        tcp.set_nodelay(true)?;
        let sender = sender.clone();
        let authority = authority.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |mut req: Request<Incoming>| {
                let mut sender = sender.clone();
                let authority = authority.clone();
                async move {
                    to_peer(&mut req, authority)?;
                    sender.send_request(req).await.map_err(failed)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        });
    }
    Ok(())
}

/// The outbound side with HTTP/1.1 between the gateways, as the nginx and HAProxy pairs do: each
/// caller's connection gets a TLS connection of its own to the inbound, opened at its first
/// request and kept for the next ones.
async fn outbound_http1(dir: &Path, listen: SocketAddr, peer: SocketAddr) -> Result<(), Error> {
    let connector = TlsConnector::from(Arc::new(client_config(dir, b"http/1.1")?));
    let listener = TcpListener::bind(listen).await?;
    eprintln!("floor_pair outbound (HTTP/1.1 between the pair) on {listen}, inbound {peer}");
    loop {
        let (tcp, _) = listener.accept().await?;
        tcp.set_nodelay(true)?;
        let connector = connector.clone();
        let upstream: Arc<tokio::sync::Mutex<Option<http1::SendRequest<Incoming>>>> =
            Arc::default();
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<Incoming>| {
                let (connector, upstream) = (connector.clone(), upstream.clone());
                async move {
                    let mut slot = upstream.lock().await;
                    if slot.as_ref().is_none_or(|s| !s.is_ready()) {
                        let tls = dial(&connector, peer).await.map_err(failed)?;
                        let (s, conn) = http1::handshake(TokioIo::new(Box::pin(tls)))
                            .await
                            .map_err(failed)?;
                        tokio::spawn(conn);
                        *slot = Some(s);
                    }
                    let Some(sender) = slot.as_mut() else {
                        return Err(failed("no connection to the inbound"));
                    };
                    let response = sender.send_request(req).await.map_err(failed)?;
                    let (parts, body) = response.into_parts();
                    let body = body.collect().await.map_err(failed)?.to_bytes();
                    Ok::<_, Failed>(Response::from_parts(parts, Full::new(body)))
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        });
    }
}
