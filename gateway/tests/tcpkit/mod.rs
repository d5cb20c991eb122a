//! What the TCP-mode tests share: payments' inbound in TCP mode in front of a TCP echo service
//! (with a PROXY v2 reader when asked), client gateways with one route to it, and direct mTLS
//! clients. SVIDs come from `kit`'s CA server.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // test code
#![allow(dead_code)] // each test file uses part of it

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use meshgate_gateway::config::{
    AuditLog, Config, Inbound, Limits, Mode, ProxyProtocol, Route, Target,
};
use meshgate_gateway::{Agent, RunningGateway};
use meshgate_identity::SpiffeId;
use meshgate_identity::tls::client_config;
use meshgate_identity::verifier::SpiffeServerVerifier;
use rustls::client::ResolvesClientCert;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::kit::{Kit, PAYMENTS};
use crate::mesh::admin;

const LOCAL: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 0);

/// Payments' policy for its TCP service. HTTP conditions fail closed for a connection: the
/// `methods` allow cannot let support in (the default deny refuses it), and the `paths` deny
/// reads as an identity-only deny of the ledger.
pub const TCP_POLICY: &str = r#"
service = "spiffe://bank.example/ns/payments/sa/api"

[[allow]]
name = "the shop opens connections"
from = ["spiffe://bank.example/ns/shop/**"]

[[allow]]
name = "support may GET"
from = ["spiffe://bank.example/ns/support/**"]
methods = ["GET"]

[[deny]]
name = "the ledger reads nothing private"
from = ["spiffe://bank.example/ns/ledger/**"]
paths = ["/private/**"]
"#;

/// A TCP echo service that counts the connections it accepts and, when asked, reads a PROXY v2
/// header first and hands it to the test.
pub struct Upstream {
    pub addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    pub headers: mpsc::UnboundedReceiver<Vec<u8>>,
}

impl Upstream {
    pub async fn start(proxy: bool) -> Self {
        let listener = TcpListener::bind(LOCAL).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let (tx, headers) = mpsc::unbounded_channel();
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let tx = tx.clone();
                tokio::spawn(async move {
                    if proxy {
                        let mut head = [0u8; 16];
                        tcp.read_exact(&mut head).await.unwrap();
                        let len = usize::from(u16::from_be_bytes([head[14], head[15]]));
                        let mut rest = vec![0u8; len];
                        tcp.read_exact(&mut rest).await.unwrap();
                        let _ = tx.send([&head[..], &rest].concat());
                    }
                    let (mut r, mut w) = tcp.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        Self {
            addr,
            accepted,
            headers,
        }
    }

    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

/// Payments in TCP mode in front of `upstream`, with [`TCP_POLICY`].
pub struct Payments {
    pub gateway: RunningGateway,
    pub agent: Agent,
    pub policy: PathBuf,
}

pub async fn payments(
    kit: &Kit,
    upstream: SocketAddr,
    proxy_protocol: Option<ProxyProtocol>,
    audit: Option<AuditLog>,
) -> Payments {
    let policy = kit.dir.path().join("payments-tcp-policy.toml");
    std::fs::write(&policy, TCP_POLICY).unwrap();
    let agent = kit.enroll(PAYMENTS).await;
    let config = Config {
        spiffe_id: SpiffeId::parse(PAYMENTS).unwrap(),
        state_dir: kit.state_dir(PAYMENTS),
        ca_url: None,
        inbound: Some(Inbound {
            listen: LOCAL,
            upstream: Target::parse(&upstream.to_string()).unwrap(),
            policy: vec![policy.clone()],
            mode: Mode::Tcp,
            proxy_protocol,
        }),
        outbound: Vec::new(),
        admin: LOCAL,
        limits: Limits::default(),
        audit_path: audit,
    };
    let gateway = meshgate_gateway::start(&config, &agent).await.unwrap();
    Payments {
        gateway,
        agent,
        policy,
    }
}

/// A gateway for `id` with one route, `payments`, in `mode`, to `target`.
pub async fn client(
    kit: &Kit,
    id: &str,
    target: SocketAddr,
    mode: Mode,
) -> (RunningGateway, Agent) {
    let agent = kit.enroll(id).await;
    let config = Config {
        spiffe_id: SpiffeId::parse(id).unwrap(),
        state_dir: kit.state_dir(id),
        ca_url: None,
        inbound: None,
        outbound: vec![Route {
            name: "payments".into(),
            listen: LOCAL,
            target: Target::parse(&target.to_string()).unwrap(),
            expected_peer: SpiffeId::parse(PAYMENTS).unwrap(),
            mode,
        }],
        admin: LOCAL,
        limits: Limits::default(),
        audit_path: None,
    };
    let gateway = meshgate_gateway::start(&config, &agent).await.unwrap();
    (gateway, agent)
}

/// Writes `data` on `tcp` and reads as many bytes back.
pub async fn echo_round_trip(tcp: &mut TcpStream, data: &[u8]) -> Vec<u8> {
    let (mut r, mut w) = tcp.split();
    let write = async {
        w.write_all(data).await.unwrap();
    };
    let mut back = vec![0u8; data.len()];
    let read = async {
        r.read_exact(&mut back).await.unwrap();
    };
    tokio::join!(write, read);
    back
}

/// True when the stream ends (EOF or an error) without a byte, within 20 s.
pub async fn closed<S: tokio::io::AsyncRead + Unpin>(stream: &mut S) -> bool {
    let mut buf = [0u8; 64];
    match tokio::time::timeout(Duration::from_secs(20), stream.read(&mut buf)).await {
        Ok(Ok(0) | Err(_)) => true,
        Ok(Ok(n)) => panic!("got {n} bytes: {:?}", &buf[..n]),
        Err(_) => false,
    }
}

/// A direct mTLS connection to `inbound` that offers `alpn` and presents `certs`; `None` when
/// the handshake failed on our side.
pub async fn direct(
    agent: &Agent,
    inbound: SocketAddr,
    certs: Option<Arc<dyn ResolvesClientCert>>,
    alpn: &[&[u8]],
) -> (
    SocketAddr,
    Option<tokio_rustls::client::TlsStream<TcpStream>>,
) {
    let verifier =
        SpiffeServerVerifier::new(agent.shared_bundles(), SpiffeId::parse(PAYMENTS).unwrap());
    let config = client_config(Arc::new(verifier), certs, alpn).unwrap();
    let tcp = TcpStream::connect(inbound).await.unwrap();
    let local = tcp.local_addr().unwrap();
    let name = ServerName::try_from("payments.bank.example").unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .ok();
    (local, tls)
}

pub async fn metrics(gateway: &RunningGateway) -> String {
    admin(gateway.admin, "/metrics").await.1
}
