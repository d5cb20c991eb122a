//! A mesh built to order for the tests of rate limits, audit, WebSocket and gRPC: the real CA
//! server mints every SVID through bootstrap tokens, `payments` fronts an upstream of the test's
//! choice with the test's policy and config, and any number of client gateways (shop checkout,
//! shop web, support...) each have an outbound route to payments. The request helpers of
//! `mesh` are reused.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // test code
#![allow(dead_code)] // each test file uses part of it

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::header::{CONNECTION, HeaderValue, UPGRADE};
use hyper::service::service_fn;
use hyper::{HeaderMap, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use meshgate_ca::Authority;
use meshgate_ca::server::{RunningServer, ServeConfig, start as start_ca};
use meshgate_gateway::config::{AuditLog, Config, Inbound, Limits, Mode, Route, Target};
use meshgate_gateway::{Agent, KeyType, RunningGateway};
use meshgate_identity::{SpiffeId, TrustDomain};
use time::OffsetDateTime;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;

pub const PAYMENTS: &str = "spiffe://bank.example/ns/payments/sa/api";
pub const CHECKOUT: &str = "spiffe://bank.example/ns/shop/sa/checkout";
pub const WEB: &str = "spiffe://bank.example/ns/shop/sa/web";
pub const SUPPORT: &str = "spiffe://bank.example/ns/support/sa/agent";

/// Payments' policy in these tests: the shop and support may call anything but `/private/**`.
pub const POLICY: &str = r#"
service = "spiffe://bank.example/ns/payments/sa/api"

[[allow]]
name = "shop and support call payments"
from = ["spiffe://bank.example/ns/shop/**", "spiffe://bank.example/ns/support/**"]

[[deny]]
name = "nobody reads private"
paths = ["/private/**"]
"#;

const LOCAL: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 0);

pub struct Kit {
    pub dir: tempfile::TempDir,
    pub ca: RunningServer,
    pub ca_dir: PathBuf,
    url: String,
}

/// The payments gateway and what a test needs of it.
pub struct Payments {
    pub gateway: RunningGateway,
    pub agent: Agent,
    pub policy: PathBuf,
}

/// A client gateway with one outbound route, `payments`.
pub struct Client {
    pub gateway: RunningGateway,
    pub agent: Agent,
}

impl Client {
    /// Where this client's app sends its calls to payments.
    pub fn to_payments(&self) -> SocketAddr {
        self.gateway.outbound_addr("payments").unwrap()
    }
}

impl Kit {
    pub async fn start() -> Self {
        Self::start_with_svid_ttl(meshgate_ca::profile::LEAF_TTL).await
    }

    /// A kit whose CA mints SVIDs valid for `svid_ttl`.
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
        let ca = start_ca(
            &ca_dir,
            ServeConfig {
                listen: LOCAL,
                admin: LOCAL,
                svid_ttl,
                ..ServeConfig::default()
            },
        )
        .await
        .unwrap();
        let url = format!("https://{}", ca.addr);
        Self {
            dir,
            ca,
            ca_dir,
            url,
        }
    }

    pub fn state_dir(&self, id: &str) -> PathBuf {
        self.dir.path().join(id.rsplit('/').next().unwrap())
    }

    pub async fn enroll(&self, id: &str) -> Agent {
        let mut cli = Authority::open(&self.ca_dir).unwrap();
        let (token, _) = cli
            .create_token(
                &SpiffeId::parse(id).unwrap(),
                Duration::from_secs(900),
                1,
                "test",
                &self.url,
                OffsetDateTime::now_utc(),
            )
            .unwrap();
        Agent::enroll(&token, &self.state_dir(id), KeyType::default())
            .await
            .unwrap()
    }

    /// Starts payments in front of `upstream` with [`POLICY`], `limits` and `audit`.
    pub async fn payments(
        &self,
        upstream: Target,
        limits: Limits,
        audit: Option<AuditLog>,
    ) -> Payments {
        let policy = self.dir.path().join("payments-policy.toml");
        std::fs::write(&policy, POLICY).unwrap();
        let agent = self.enroll(PAYMENTS).await;
        let config = Config {
            spiffe_id: SpiffeId::parse(PAYMENTS).unwrap(),
            state_dir: self.state_dir(PAYMENTS),
            ca_url: None,
            inbound: Some(Inbound {
                listen: LOCAL,
                upstream,
                policy: vec![policy.clone()],
                mode: Mode::Http,
                proxy_protocol: None,
            }),
            outbound: Vec::new(),
            admin: LOCAL,
            limits,
            audit_path: audit,
        };
        let gateway = meshgate_gateway::start(&config, &agent).await.unwrap();
        Payments {
            gateway,
            agent,
            policy,
        }
    }

    /// Starts a gateway for `id` with one outbound route to `payments`.
    pub async fn client(&self, id: &str, payments: &Payments) -> Client {
        self.client_with(id, payments, Limits::default()).await
    }

    /// [`Kit::client`] with `limits`.
    pub async fn client_with(&self, id: &str, payments: &Payments, limits: Limits) -> Client {
        let agent = self.enroll(id).await;
        let config = Config {
            spiffe_id: SpiffeId::parse(id).unwrap(),
            state_dir: self.state_dir(id),
            ca_url: None,
            inbound: None,
            outbound: vec![Route {
                name: "payments".into(),
                listen: LOCAL,
                target: Target::parse(&payments.gateway.inbound.unwrap().to_string()).unwrap(),
                expected_peer: SpiffeId::parse(PAYMENTS).unwrap(),
                mode: Mode::Http,
            }],
            admin: LOCAL,
            limits,
            audit_path: None,
        };
        let gateway = meshgate_gateway::start(&config, &agent).await.unwrap();
        Client { gateway, agent }
    }
}

/// Serves every connection accepted on a new 127.0.0.1 listener with `serve`.
async fn spawn_server<F, Fut>(serve: F) -> SocketAddr
where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(serve(tcp));
        }
    });
    addr
}

/// An HTTP/1.1 upstream that answers `200 ok` to plain requests and accepts WebSocket
/// upgrades (a real `Sec-WebSocket-Accept`), then echoes every byte it gets on the upgraded
/// connection.
pub async fn websocket_echo() -> SocketAddr {
    spawn_server(|tcp| async move {
        let service = service_fn(|mut req: Request<Incoming>| async move {
            let upgrade = req
                .headers()
                .get(UPGRADE)
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
            let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
                let body = if upgrade { "upgrade without key" } else { "ok" };
                return Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body))));
            };
            let on_upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                let upgraded = on_upgrade.await.unwrap();
                let mut io = TokioIo::new(upgraded);
                let mut buf = [0u8; 1024];
                loop {
                    match io.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if io.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
            let mut r = Response::new(Full::new(Bytes::new()));
            *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            let h = r.headers_mut();
            h.insert(UPGRADE, HeaderValue::from_static("websocket"));
            h.insert(CONNECTION, HeaderValue::from_static("upgrade"));
            h.insert(
                "sec-websocket-accept",
                HeaderValue::from_str(&websocket_accept(key.as_bytes())).unwrap(),
            );
            Ok(r)
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(tcp), service)
            .with_upgrades()
            .await;
    })
    .await
}

/// An h2c upstream (HTTP/2 with prior knowledge) that accepts WebSockets as RFC 8441 extended
/// CONNECTs (it announces SETTINGS_ENABLE_CONNECT_PROTOCOL), answers 200 and echoes every byte;
/// a CONNECT carrying a `sec-websocket-key` (an HTTP/1.1 leftover) gets 400.
pub async fn websocket_echo_h2c() -> SocketAddr {
    spawn_server(|tcp| async move {
        let service = service_fn(|mut req: Request<Incoming>| async move {
            let websocket = req.method() == hyper::Method::CONNECT
                && req
                    .extensions()
                    .get::<hyper::ext::Protocol>()
                    .is_some_and(|p| p.as_str() == "websocket");
            let mut r = Response::new(Full::new(Bytes::new()));
            if !websocket || req.headers().contains_key("sec-websocket-key") {
                *r.status_mut() = StatusCode::BAD_REQUEST;
                return Ok::<_, Infallible>(r);
            }
            let on_upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                let mut io = TokioIo::new(on_upgrade.await.unwrap());
                let mut buf = [0u8; 1024];
                loop {
                    match io.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if io.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
            Ok(r)
        });
        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .enable_connect_protocol()
            .serve_connection(TokioIo::new(tcp), service)
            .await;
    })
    .await
}

/// RFC 6455 §4.2.2: base64(SHA-1(key + GUID)).
pub fn websocket_accept(key: &[u8]) -> String {
    let mut input = key.to_vec();
    input.extend_from_slice(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    let digest = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, &input);
    base64::engine::general_purpose::STANDARD.encode(digest.as_ref())
}

/// A gRPC-like upstream over h2c (HTTP/2 with prior knowledge): answers a POST with
/// `content-type: application/grpc` with the request's message echoed back and the trailers
/// `grpc-status: 0`, `grpc-message: echoed`; anything else gets `grpc-status: 12`.
pub async fn grpc_echo() -> SocketAddr {
    spawn_server(|tcp| async move {
        let service = service_fn(|req: Request<Incoming>| async move {
            let grpc = req
                .headers()
                .get("content-type")
                .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
            let te = req.headers().get("te").cloned();
            let message = req.into_body().collect().await.unwrap().to_bytes();
            let mut trailers = HeaderMap::new();
            let status = if grpc && te.is_some_and(|v| v == "trailers") {
                "0"
            } else {
                "12"
            };
            trailers.insert("grpc-status", HeaderValue::from_static(status));
            trailers.insert("grpc-message", HeaderValue::from_static("echoed"));
            let body = Full::new(message)
                .map_err(|never: Infallible| match never {})
                .with_trailers(async move { Some(Ok::<_, Infallible>(trailers)) });
            let mut r = Response::new(body);
            r.headers_mut()
                .insert("content-type", HeaderValue::from_static("application/grpc"));
            Ok::<_, Infallible>(r)
        });
        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .serve_connection(TokioIo::new(tcp), service)
            .await;
    })
    .await
}

/// A gRPC message frame: no compression, 4-byte big-endian length, the message.
pub fn grpc_frame(message: &[u8]) -> Bytes {
    let mut out = vec![0u8];
    out.extend_from_slice(&u32::try_from(message.len()).unwrap().to_be_bytes());
    out.extend_from_slice(message);
    Bytes::from(out)
}

/// The audit log's path for a test.
pub fn audit_file(kit: &Kit) -> PathBuf {
    kit.dir.path().join("payments-audit.jsonl")
}

/// Every record of an audit log, as JSON values.
pub fn audit_records(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}
