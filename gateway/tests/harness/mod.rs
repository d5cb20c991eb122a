//! A two-gateway mesh on 127.0.0.1 for the rotation, restart and hostile-input tests: the real
//! CA server mints SVIDs through bootstrap tokens, `payments` fronts an echo service under the
//! example bank policies, and `shop` has an outbound route to it. Gateways are configured from
//! TOML text, as `gateway run` reads it, so that a test can set any limit the file can.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // test code
#![allow(dead_code)] // each test file uses part of it

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{HeaderMap, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use meshgate_ca::Authority;
use meshgate_ca::server::{RunningServer, ServeConfig, start as start_ca};
use meshgate_gateway::{Agent, Config, KeyType, RunningGateway};
use meshgate_identity::api::BootstrapToken;
use meshgate_identity::tls::{ALPN_H2, client_config};
use meshgate_identity::verifier::SpiffeServerVerifier;
use meshgate_identity::{SpiffeId, TrustDomain};
use rustls::client::ResolvesClientCert;
use rustls::pki_types::ServerName;
use time::OffsetDateTime;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

pub const SHOP: &str = "spiffe://bank.example/ns/shop/sa/checkout";
pub const PAYMENTS: &str = "spiffe://bank.example/ns/payments/sa/api";

/// A CA directory and the CA server (`ca serve`) over it, on 127.0.0.1:0.
pub struct Ca {
    pub dir: tempfile::TempDir,
    pub ca_dir: PathBuf,
    pub server: RunningServer,
    pub url: String,
}

impl Ca {
    pub async fn start() -> Self {
        Self::start_with_svid_ttl(meshgate_ca::profile::LEAF_TTL).await
    }

    /// A CA server that mints SVIDs valid for `svid_ttl` (agents renew at half of it).
    pub async fn start_with_svid_ttl(svid_ttl: Duration) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca_dir = dir.path().join("ca");
        let td = TrustDomain::parse("bank.example").unwrap();
        Authority::init(
            &ca_dir,
            td,
            meshgate_ca::KeyType::EcdsaP256,
            OffsetDateTime::now_utc(),
        )
        .unwrap();
        let local = SocketAddr::from(([127, 0, 0, 1], 0));
        let server = start_ca(
            &ca_dir,
            ServeConfig {
                listen: local,
                admin: local,
                svid_ttl,
                ..ServeConfig::default()
            },
        )
        .await
        .unwrap();
        let url = format!("https://{}", server.addr);
        Self {
            dir,
            ca_dir,
            server,
            url,
        }
    }

    /// A one-use bootstrap token for `id`, as `ca token create` makes it.
    pub fn token(&self, id: &str) -> BootstrapToken {
        let (token, _) = Authority::open(&self.ca_dir)
            .unwrap()
            .create_token(
                &SpiffeId::parse(id).unwrap(),
                Duration::from_secs(900),
                1,
                "test",
                &self.url,
                OffsetDateTime::now_utc(),
            )
            .unwrap();
        token
    }

    /// A new agent for `id`, enrolled with a fresh token into `state`.
    pub async fn enroll(&self, id: &str, state: &Path) -> Agent {
        Agent::enroll(&self.token(id), state, KeyType::default())
            .await
            .unwrap()
    }

    /// The CA server's Prometheus text.
    pub async fn metrics(&self) -> String {
        admin(self.server.admin_addr, "/metrics").await.1
    }
}

/// Copies the example bank policies into `dir` and returns their paths.
pub fn bank_policies(dir: &Path) -> Vec<PathBuf> {
    std::fs::create_dir_all(dir).unwrap();
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/examples/bank");
    ["mesh.toml", "payments.toml", "shop.toml", "ledger.toml"]
        .iter()
        .map(|name| {
            std::fs::copy(examples.join(name), dir.join(name)).unwrap();
            dir.join(name)
        })
        .collect()
}

/// A TOML list of paths.
fn toml_paths(paths: &[PathBuf]) -> String {
    let quoted: Vec<String> = paths
        .iter()
        .map(|p| format!("{:?}", p.display().to_string()))
        .collect();
    format!("[{}]", quoted.join(", "))
}

/// The payments gateway's config: inbound in front of `upstream`, admin on 127.0.0.1:0, plus
/// `extra` TOML (a `[limits]` table, say).
pub fn payments_config(
    state: &Path,
    upstream: SocketAddr,
    policy: &[PathBuf],
    extra: &str,
) -> Config {
    Config::parse(&format!(
        r#"
spiffe_id = "{PAYMENTS}"
state_dir = {state:?}

[inbound]
listen = "127.0.0.1:0"
upstream = "http://{upstream}"
policy = {policy}

[admin]
listen = "127.0.0.1:0"

{extra}
"#,
        state = state.display().to_string(),
        policy = toml_paths(policy),
    ))
    .unwrap()
}

/// The shop gateway's config: one outbound route, `payments`, listening on `listen`, to the
/// payments inbound at `target`; admin on `admin`.
pub fn shop_config(
    state: &Path,
    listen: SocketAddr,
    target: SocketAddr,
    admin: SocketAddr,
) -> Config {
    Config::parse(&format!(
        r#"
spiffe_id = "{SHOP}"
state_dir = {state:?}

[[outbound]]
name = "payments"
listen = "{listen}"
target = "{target}"
expected_peer = "{PAYMENTS}"

[admin]
listen = "{admin}"
"#,
        state = state.display().to_string(),
    ))
    .unwrap()
}

/// Two gateways and the CA. The agents are not running: a test drives them (renew, refresh) by
/// hand.
pub struct Pair {
    pub ca: Ca,
    pub echo: Echo,
    pub shop: RunningGateway,
    pub payments: RunningGateway,
    pub shop_agent: Agent,
    pub payments_agent: Agent,
}

impl Pair {
    /// Starts the pair; `payments_extra` is added to the payments config (e.g. `[limits]`).
    pub async fn start(payments_extra: &str) -> Self {
        Self::start_on(Ca::start().await, payments_extra).await
    }

    /// The pair on a CA of the caller's.
    pub async fn start_on(ca: Ca, payments_extra: &str) -> Self {
        let root = ca.dir.path().to_owned();
        let shop_agent = ca.enroll(SHOP, &root.join("shop")).await;
        let payments_agent = ca.enroll(PAYMENTS, &root.join("payments")).await;
        let policy = bank_policies(&root.join("policies"));
        let echo = Echo::start().await;
        let config = payments_config(&root.join("payments"), echo.addr, &policy, payments_extra);
        let payments = meshgate_gateway::start(&config, &payments_agent)
            .await
            .unwrap();
        let local = SocketAddr::from(([127, 0, 0, 1], 0));
        let config = shop_config(&root.join("shop"), local, payments.inbound.unwrap(), local);
        let shop = meshgate_gateway::start(&config, &shop_agent).await.unwrap();
        Self {
            ca,
            echo,
            shop,
            payments,
            shop_agent,
            payments_agent,
        }
    }

    /// Where the shop app sends its calls to payments.
    pub fn shop_to_payments(&self) -> SocketAddr {
        self.shop.outbound_addr("payments").unwrap()
    }

    pub fn payments_inbound(&self) -> SocketAddr {
        self.payments.inbound.unwrap()
    }

    /// A TLS client config as the shop gateway's: shop's current credentials, payments expected,
    /// under shop's current bundle; both follow the shop agent's renewals and refreshes.
    pub fn shop_tls(&self, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
        tls_as(&self.shop_agent, PAYMENTS, alpn)
    }
}

/// A TLS client config with `agent`'s credentials that expects the server to be `expected`
/// under `agent`'s bundle; both follow the agent's renewals and refreshes.
pub fn tls_as(agent: &Agent, expected: &str, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let verifier =
        SpiffeServerVerifier::new(agent.shared_bundles(), SpiffeId::parse(expected).unwrap());
    let certs = agent.credentials() as Arc<dyn ResolvesClientCert>;
    Arc::new(client_config(Arc::new(verifier), Some(certs), alpn).unwrap())
}

/// A service answering every request with what it saw, as JSON.
pub struct Echo {
    pub addr: SocketAddr,
    pub requests: Arc<AtomicUsize>,
}

impl Echo {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(AtomicUsize::new(0));
        let count = requests.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let count = count.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        count.fetch_add(1, Ordering::SeqCst);
                        async move {
                            // Read the body, as a real service does (upstream_reuse.rs covers
                            // services that do not).
                            let answer = echo(&req);
                            let _ = req.into_body().collect().await;
                            Ok::<_, std::convert::Infallible>(answer)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
        Self { addr, requests }
    }

    pub fn count(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

fn echo(req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let mut headers = serde_json::Map::new();
    for name in req.headers().keys() {
        let values: Vec<_> = req
            .headers()
            .get_all(name)
            .iter()
            .map(|v| serde_json::Value::from(v.to_str().unwrap_or("<binary>")))
            .collect();
        headers.insert(name.as_str().to_owned(), values.into());
    }
    let body = serde_json::json!({
        "method": req.method().as_str(),
        "path": req.uri().path_and_query().map(|p| p.as_str()),
        "headers": headers,
    });
    Response::new(Full::new(Bytes::from(body.to_string())))
}

/// What the app got back.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }
}

/// One HTTP/1.1 request on a new plain connection, as the local app sends it; any failure to
/// get an answer is an `Err` that says where it failed.
pub async fn try_call(addr: SocketAddr, method: &str, path: &str) -> Result<Answer, String> {
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(conn);
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "payments.bank.example")
        .body(Full::new(Bytes::from_static(b"{}")))
        .map_err(|e| format!("request: {e}"))?;
    let response = sender
        .send_request(req)
        .await
        .map_err(|e| format!("send: {e}"))?;
    let (parts, body) = response.into_parts();
    let body = body
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?
        .to_bytes();
    Ok(Answer {
        status: parts.status,
        headers: parts.headers,
        body,
    })
}

pub async fn call(addr: SocketAddr, method: &str, path: &str) -> Answer {
    try_call(addr, method, path).await.unwrap()
}

/// Opens mTLS to `addr` with `tls`, the SNI naming payments.
pub async fn mtls(
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("payments.bank.example").unwrap();
    TlsConnector::from(tls).connect(name, tcp).await
}

/// One GET over a new mTLS connection (HTTP/2 by ALPN) to `addr`, as a peer gateway sends it.
/// Returns the answer and the server's certificate chain.
pub async fn h2_get(
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    path: &str,
) -> Result<(Answer, Vec<rustls::pki_types::CertificateDer<'static>>), String> {
    let stream = mtls(addr, tls).await.map_err(|e| format!("tls: {e}"))?;
    let (_, session) = stream.get_ref();
    if session.alpn_protocol() != Some(ALPN_H2) {
        return Err("ALPN did not choose h2".into());
    }
    let chain = session.peer_certificates().unwrap_or_default().to_vec();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(stream),
    )
    .await
    .map_err(|e| format!("h2 handshake: {e}"))?;
    tokio::spawn(conn);
    let req = Request::builder()
        .method("GET")
        .uri(format!("https://payments.bank.example{path}"))
        .body(Full::new(Bytes::new()))
        .map_err(|e| format!("request: {e}"))?;
    let response = sender
        .send_request(req)
        .await
        .map_err(|e| format!("send: {e}"))?;
    let (parts, body) = response.into_parts();
    let body = body
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?
        .to_bytes();
    Ok((
        Answer {
            status: parts.status,
            headers: parts.headers,
            body,
        },
        chain,
    ))
}

/// GET on an admin listener: status and body text.
pub async fn admin(addr: SocketAddr, path: &str) -> (StatusCode, String) {
    let a = call(addr, "GET", path).await;
    (a.status, String::from_utf8(a.body.to_vec()).unwrap())
}

/// The value of one sample line of a Prometheus text exposition, 0 when absent.
pub fn metric(text: &str, sample: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(sample).and_then(|v| v.strip_prefix(' ')))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

/// The sum of every sample whose line starts with `prefix` (a metric name and some labels).
pub fn metric_sum(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Polls `check` every 100 ms until it holds, for at most 30 s.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..300 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}");
}

/// A well-behaved app that keeps calling through an outbound route until stopped, and keeps
/// every answer that was not a 200.
pub struct Steady {
    stop: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<(usize, Vec<String>)>>,
}

impl Steady {
    /// `clients` loops of `POST /v1/charges` through `addr`, each call on a new connection.
    pub fn start(addr: SocketAddr, clients: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = (0..clients)
            .map(|_| {
                let stop = stop.clone();
                tokio::spawn(async move {
                    let (mut ok, mut failed) = (0, Vec::new());
                    while !stop.load(Ordering::SeqCst) {
                        match try_call(addr, "POST", "/v1/charges").await {
                            Ok(a) if a.status == StatusCode::OK => ok += 1,
                            Ok(a) => failed.push(format!("{}: {:?}", a.status, a.body)),
                            Err(e) => failed.push(e),
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    (ok, failed)
                })
            })
            .collect();
        Self { stop, tasks }
    }

    /// Stops the clients and returns how many calls succeeded and what the others got.
    pub async fn finish(self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        let (mut ok, mut failed) = (0, Vec::new());
        for task in self.tasks {
            let (o, f) = task.await.unwrap();
            ok += o;
            failed.extend(f);
        }
        (ok, failed)
    }
}

/// A free port on 127.0.0.1 (bound, then released), for a listener whose address must be known
/// before the gateway starts.
pub fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}
