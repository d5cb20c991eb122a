//! A two-gateway mesh on 127.0.0.1 for the data-plane tests: the real CA server (what
//! `meshgate ca serve` runs) mints the SVIDs through bootstrap tokens, `payments` fronts an echo
//! service under the example bank policies, and `shop` has an outbound route to `payments`.

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
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{HeaderMap, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use meshgate_ca::Authority;
use meshgate_ca::server::{RunningServer, ServeConfig, start as start_ca};
use meshgate_gateway::config::{Config, Inbound, Limits, Mode, Route, Target};
use meshgate_gateway::{Agent, KeyType, RunningGateway};
use meshgate_identity::{SpiffeId, TrustDomain};
use time::OffsetDateTime;
use tokio::net::{TcpListener, TcpStream};

pub const SHOP: &str = "spiffe://bank.example/ns/shop/sa/checkout";
pub const PAYMENTS: &str = "spiffe://bank.example/ns/payments/sa/api";
pub const LEDGER: &str = "spiffe://bank.example/ns/ledger/sa/api";

pub struct Mesh {
    pub dir: tempfile::TempDir,
    pub ca: RunningServer,
    pub ca_dir: PathBuf,
    pub policy_dir: PathBuf,
    pub echo: Echo,
    pub shop: RunningGateway,
    pub payments: RunningGateway,
    /// The agents, not running: a test drives them (renew, fetch revocations) by hand.
    pub shop_agent: Agent,
    pub payments_agent: Agent,
}

impl Mesh {
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca_dir = dir.path().join("ca");
        let now = OffsetDateTime::now_utc();
        let td = TrustDomain::parse("bank.example").unwrap();
        Authority::init(&ca_dir, td, meshgate_ca::KeyType::EcdsaP256, now).unwrap();
        let local = SocketAddr::from(([127, 0, 0, 1], 0));
        let ca = start_ca(
            &ca_dir,
            ServeConfig {
                listen: local,
                admin: local,
                ..ServeConfig::default()
            },
        )
        .await
        .unwrap();
        let url = format!("https://{}", ca.addr);
        let shop_agent = enroll(&ca_dir, &url, SHOP, &dir.path().join("shop")).await;
        let payments_agent = enroll(&ca_dir, &url, PAYMENTS, &dir.path().join("payments")).await;

        let policy_dir = dir.path().join("policies");
        std::fs::create_dir(&policy_dir).unwrap();
        let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/examples/bank");
        let mut policy = Vec::new();
        for name in ["mesh.toml", "payments.toml", "shop.toml", "ledger.toml"] {
            std::fs::copy(examples.join(name), policy_dir.join(name)).unwrap();
            policy.push(policy_dir.join(name));
        }

        let echo = Echo::start().await;
        let payments_config = Config {
            spiffe_id: SpiffeId::parse(PAYMENTS).unwrap(),
            state_dir: dir.path().join("payments"),
            ca_url: None,
            inbound: Some(Inbound {
                listen: local,
                upstream: Target::parse(&echo.addr.to_string()).unwrap(),
                policy,
                mode: Mode::Http,
                proxy_protocol: None,
            }),
            outbound: Vec::new(),
            admin: local,
            limits: Limits::default(),
            audit_path: None,
        };
        let payments = meshgate_gateway::start(&payments_config, &payments_agent)
            .await
            .unwrap();
        let shop_config = Config {
            spiffe_id: SpiffeId::parse(SHOP).unwrap(),
            state_dir: dir.path().join("shop"),
            ca_url: None,
            inbound: None,
            outbound: vec![
                Route {
                    name: "payments".into(),
                    listen: local,
                    target: Target::parse(&payments.inbound.unwrap().to_string()).unwrap(),
                    expected_peer: SpiffeId::parse(PAYMENTS).unwrap(),
                    mode: Mode::Http,
                },
                // Points at payments but expects the ledger: every handshake must fail.
                Route {
                    name: "ledger".into(),
                    listen: local,
                    target: Target::parse(&payments.inbound.unwrap().to_string()).unwrap(),
                    expected_peer: SpiffeId::parse(LEDGER).unwrap(),
                    mode: Mode::Http,
                },
            ],
            admin: local,
            limits: Limits::default(),
            audit_path: None,
        };
        let shop = meshgate_gateway::start(&shop_config, &shop_agent)
            .await
            .unwrap();
        Self {
            dir,
            ca,
            ca_dir,
            policy_dir,
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
}

async fn enroll(ca_dir: &Path, url: &str, id: &str, state: &Path) -> Agent {
    let mut cli = Authority::open(ca_dir).unwrap();
    let (token, _) = cli
        .create_token(
            &SpiffeId::parse(id).unwrap(),
            Duration::from_secs(900),
            1,
            "test",
            url,
            OffsetDateTime::now_utc(),
        )
        .unwrap();
    Agent::enroll(&token, state, KeyType::default())
        .await
        .unwrap()
}

/// The service behind payments: answers every request with what it saw, as JSON.
pub struct Echo {
    pub addr: SocketAddr,
    pub requests: Arc<AtomicUsize>,
}

impl Echo {
    async fn start() -> Self {
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
                        async move { Ok::<_, std::convert::Infallible>(echo(req)) }
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

fn echo(req: Request<Incoming>) -> Response<Full<Bytes>> {
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
        "version": format!("{:?}", req.version()),
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

/// One HTTP/1.1 request on a new plain connection, as the local app would send it.
pub async fn call(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)]) -> Answer {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "payments.bank.example");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(Bytes::from_static(b"{}"))).unwrap();
    let response = sender.send_request(req).await.unwrap();
    let (parts, body) = response.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

/// GET on an admin listener: status and body text.
pub async fn admin(addr: SocketAddr, path: &str) -> (StatusCode, String) {
    let a = call(addr, "GET", path, &[]).await;
    (a.status, String::from_utf8(a.body.to_vec()).unwrap())
}

/// The value of one sample line of a Prometheus text exposition, 0 when absent.
pub fn metric(text: &str, sample: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(sample).and_then(|v| v.strip_prefix(' ')))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

/// Polls `check` every 100 ms until it holds, for at most 15 s.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..150 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}");
}
