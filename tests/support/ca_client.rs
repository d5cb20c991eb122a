//! The CA server (`meshgate ca serve`) in process on 127.0.0.1, and a raw client for it: TCP, TLS
//! through `meshgate_identity::tls::client_config`, then raw HTTP/1.1 bytes, so a test can send
//! garbage, oversize bodies or slow headers and read exactly what came back. Every network step
//! is bounded by `STEP`.

#![allow(dead_code, clippy::expect_used)] // test code; each test binary uses a part

use std::io;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use meshgate_ca::server::{RunningServer, ServeConfig, start};
use meshgate_ca::{Authority, KeyType as CaKeyType};
use meshgate_identity::api::BootstrapToken;
use meshgate_identity::bundle::{certs_from_pem, pem_encode};
use meshgate_identity::tls::{ALPN_HTTP11, Credentials, certified_key, client_config};
use meshgate_identity::verifier::{SharedBundles, SpiffeServerVerifier};
use meshgate_identity::{BundleSet, SpiffeId, TrustBundle, TrustDomain};
use rustls::ClientConfig;
use rustls::client::ResolvesClientCert;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::sign::CertifiedKey;
use tempfile::TempDir;
use time::OffsetDateTime;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

pub const TD: &str = "bank.example";
pub const CA_ID: &str = "spiffe://bank.example/meshgate/ca";
/// Bound on each network step: connect, handshake, the whole answer.
pub const STEP: Duration = Duration::from_secs(10);
/// Largest answer read.
const MAX_ANSWER: usize = 1 << 20;

/// A server config for tests: loopback, ephemeral ports, rate limits out of the way, and CLI
/// changes picked up within 200 ms.
pub fn test_config() -> ServeConfig {
    let many = NonZeroU32::new(100_000).expect("nonzero");
    let local = SocketAddr::from(([127, 0, 0, 1], 0));
    ServeConfig {
        listen: local,
        admin: local,
        enroll_per_second: many,
        enroll_burst: many,
        sign_per_second: many,
        sign_burst: many,
        maintenance_interval: Duration::from_millis(200),
        // Every test client comes from 127.0.0.1.
        max_connections_per_ip: 1024,
        ..ServeConfig::default()
    }
}

/// A CA directory, the server running on it, and the operator's CLI on the same directory.
pub struct CaHarness {
    tmp: TempDir,
    pub dir: PathBuf,
    pub server: RunningServer,
    /// A second `Authority::open` of the directory, as `ca token create` or `ca revoke` would do.
    pub cli: Authority,
}

impl CaHarness {
    pub async fn start() -> Self {
        Self::start_with(test_config()).await
    }

    pub async fn start_with(cfg: ServeConfig) -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("ca");
        let td = TrustDomain::parse(TD).expect("trust domain");
        Authority::init(&dir, td, CaKeyType::EcdsaP256, OffsetDateTime::now_utc())
            .expect("ca init");
        let server = start(&dir, cfg).await.expect("ca serve");
        let cli = Authority::open(&dir).expect("ca open");
        Self {
            tmp,
            dir,
            server,
            cli,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.addr
    }

    pub fn url(&self) -> String {
        format!("https://{}", self.server.addr)
    }

    /// A path in the test's temporary directory (for agent state).
    pub fn scratch(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    /// A token for `id` created as if at `now`, lasting 15 minutes, and its datastore id.
    pub fn token_at(&mut self, id: &str, uses: u32, now: OffsetDateTime) -> (BootstrapToken, i64) {
        let id = SpiffeId::parse(id).expect("spiffe id");
        let url = self.url();
        let (token, record) = self
            .cli
            .create_token(&id, Duration::from_secs(900), uses, "test", &url, now)
            .expect("create token");
        (token, record.id)
    }

    /// A fresh single-use token for `id`.
    pub fn token(&mut self, id: &str) -> BootstrapToken {
        self.token_at(id, 1, OffsetDateTime::now_utc()).0
    }

    /// An SVID for `id` minted by the CLI as if at `now`, lasting `ttl`, and its chain.
    pub fn issue(
        &mut self,
        id: &str,
        now: OffsetDateTime,
        ttl: Duration,
    ) -> (Arc<CertifiedKey>, Vec<CertificateDer<'static>>) {
        let id = SpiffeId::parse(id).expect("spiffe id");
        let (issued, key) = self
            .cli
            .issue_with_new_key(&id, &[], ttl, now)
            .expect("issue");
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let chain = issued.chain.clone();
        (
            certified_key(issued.chain, key).expect("certified key"),
            chain,
        )
    }

    /// The trust bundle as the datastore holds it now.
    pub fn bundle(&self) -> TrustBundle {
        self.cli.bundle().expect("bundle")
    }

    /// A client config that authenticates the server as the CA under the current bundle and,
    /// with `creds`, presents an SVID.
    pub fn ca_config(&self, creds: Option<Arc<CertifiedKey>>) -> Arc<ClientConfig> {
        ca_client_config(self.bundle(), creds)
    }

    /// POST /v1/enroll over server-authenticated TLS, pinning the root the token names.
    pub async fn enroll(&self, token: &BootstrapToken, csr: &str) -> io::Result<Response> {
        let body = serde_json::json!({ "token": token.reveal(), "csr": csr }).to_string();
        send(
            self.addr(),
            pinned_config(token),
            &post("/v1/enroll", body.as_bytes()),
        )
        .await
    }

    /// POST /v1/renew over mTLS with `creds`.
    pub async fn renew(&self, creds: Arc<CertifiedKey>, csr: &str) -> io::Result<Response> {
        let body = serde_json::json!({ "csr": csr }).to_string();
        send(
            self.addr(),
            self.ca_config(Some(creds)),
            &post("/v1/renew", body.as_bytes()),
        )
        .await
    }

    /// GET /v1/bundle, parsed.
    pub async fn served_bundle(&self) -> TrustBundle {
        let r = send(self.addr(), self.ca_config(None), &get("/v1/bundle"))
            .await
            .expect("GET /v1/bundle");
        assert_eq!(r.status, 200, "{}", r.text());
        let td = TrustDomain::parse(TD).expect("trust domain");
        TrustBundle::from_jwks(td, &r.body).expect("bundle JWKS")
    }

    /// GET on the admin listener (plain HTTP, loopback).
    pub async fn admin(&self, path: &str) -> Response {
        let mut tcp = timeout(STEP, TcpStream::connect(self.server.admin_addr))
            .await
            .expect("admin connect timed out")
            .expect("admin connect");
        tcp.write_all(&get(path)).await.expect("admin write");
        read_response(&mut tcp).await.expect("admin answer")
    }

    pub async fn metrics(&self) -> String {
        let r = self.admin("/metrics").await;
        assert_eq!(r.status, 200);
        r.text()
    }

    /// The server still serves: /healthz answers, a fresh token enrolls, and the metrics count
    /// the issued enrollment.
    pub async fn assert_serving(&mut self) {
        assert_eq!(self.admin("/healthz").await.status, 200);
        let id = "spiffe://bank.example/ns/probe/sa/normal";
        let token = self.token(id);
        let r = self
            .enroll(&token, &csr_pem(id))
            .await
            .expect("a normal enrollment");
        assert_eq!(r.status, 200, "{}", r.text());
        let metrics = self.metrics().await;
        assert!(
            metric(
                &metrics,
                "meshgate_ca_enrollments_total{outcome=\"issued\"}"
            ) >= 1.0,
            "{metrics}"
        );
    }
}

/// How many SVIDs the datastore records for `id` (the list also holds the CA's own TLS SVIDs).
pub fn issued_for(h: &CaHarness, id: &str) -> usize {
    let list = h.cli.list().expect("list");
    list.iter().filter(|c| c.spiffe_id.as_str() == id).count()
}

/// A CSR (PEM) for `id` with a key made here.
pub fn csr_pem(id: &str) -> String {
    let id = SpiffeId::parse(id).expect("spiffe id");
    let key = CaKeyType::EcdsaP256.generate().expect("key");
    let der = meshgate_ca::csr::make_csr(&id, &key).expect("csr");
    pem_encode("CERTIFICATE REQUEST", &der)
}

/// The enrollment client config: the server must send the root the token pins.
pub fn pinned_config(token: &BootstrapToken) -> Arc<ClientConfig> {
    let claims = token.claims();
    let mut pin = [0u8; 32];
    hex::decode_to_slice(&claims.root_sha256, &mut pin).expect("pin");
    let verifier =
        meshgate_gateway::agent::pinned::enroll_verifier(pin, &claims.spiffe_id.trust_domain())
            .expect("pinned verifier");
    Arc::new(client_config(Arc::new(verifier), None, &[ALPN_HTTP11]).expect("client config"))
}

/// A client config expecting `spiffe://bank.example/meshgate/ca` under `bundle`.
pub fn ca_client_config(
    bundle: TrustBundle,
    creds: Option<Arc<CertifiedKey>>,
) -> Arc<ClientConfig> {
    let bundles = Arc::new(SharedBundles::new(BundleSet::single(bundle)));
    let ca_id = SpiffeId::parse(CA_ID).expect("ca id");
    let verifier = SpiffeServerVerifier::new(bundles, ca_id);
    let certs = creds.map(|c| Arc::new(Credentials::new(c)) as Arc<dyn ResolvesClientCert>);
    Arc::new(client_config(Arc::new(verifier), certs, &[ALPN_HTTP11]).expect("client config"))
}

/// TCP then TLS to `addr`.
pub async fn connect(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
) -> io::Result<TlsStream<TcpStream>> {
    let tcp = timeout(STEP, TcpStream::connect(addr))
        .await
        .map_err(|_| timed_out("connect"))??;
    let name = ServerName::IpAddress(addr.ip().into());
    timeout(STEP, TlsConnector::from(config).connect(name, tcp))
        .await
        .map_err(|_| timed_out("TLS handshake"))?
}

/// Connects, writes `raw` as is, and reads one answer.
pub async fn send(addr: SocketAddr, config: Arc<ClientConfig>, raw: &[u8]) -> io::Result<Response> {
    let mut tls = connect(addr, config).await?;
    timeout(STEP, tls.write_all(raw))
        .await
        .map_err(|_| timed_out("write"))??;
    read_response(&mut tls).await
}

/// A POST with a JSON content type, a Content-Length, and `Connection: close`.
pub fn post(path: &str, body: &[u8]) -> Vec<u8> {
    let mut raw = format!(
        "POST {path} HTTP/1.1\r\nHost: ca\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    raw.extend_from_slice(body);
    raw
}

pub fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: ca\r\nConnection: close\r\n\r\n").into_bytes()
}

/// An HTTP answer: the status and the body.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Response {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("answer {} is not JSON ({e}): {}", self.status, self.text()))
    }

    /// The stable error code of an error answer.
    pub fn code(&self) -> String {
        self.json()["error"].as_str().unwrap_or_default().to_owned()
    }

    /// Asserts an error answer with this status and code.
    pub fn assert_error(&self, status: u16, code: &str) {
        assert_eq!(
            (self.status, self.code().as_str()),
            (status, code),
            "{}",
            self.text()
        );
    }

    /// The SVID chain of an enroll or renew answer.
    pub fn svid_chain(&self) -> Vec<CertificateDer<'static>> {
        assert_eq!(self.status, 200, "{}", self.text());
        let svid = self.json()["svid"].as_str().unwrap_or_default().to_owned();
        certs_from_pem(svid.as_bytes()).expect("svid PEM")
    }
}

/// Reads one HTTP/1.1 answer: the head, then Content-Length bytes (or up to EOF without one).
pub async fn read_response<S: AsyncRead + Unpin>(s: &mut S) -> io::Result<Response> {
    timeout(STEP, read_response_inner(s))
        .await
        .map_err(|_| timed_out("answer"))?
}

async fn read_response_inner<S: AsyncRead + Unpin>(s: &mut S) -> io::Result<Response> {
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_owned());
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > MAX_ANSWER {
            return Err(bad("answer head too long"));
        }
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("connection closed after {} bytes", buf.len()),
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| bad("no status line"))?;
    let length: Option<usize> = lines.find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse().ok())
            .flatten()
    });
    let mut body = buf.split_off(head_end);
    match length {
        Some(n) if n > MAX_ANSWER => return Err(bad("answer too long")),
        Some(n) => {
            while body.len() < n {
                let got = s.read(&mut chunk).await?;
                if got == 0 {
                    return Err(bad("answer body cut short"));
                }
                body.extend_from_slice(&chunk[..got]);
            }
            body.truncate(n);
        }
        None => {
            // Read to the end; a close without close_notify still ends the answer.
            loop {
                match s.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(got) => body.extend_from_slice(&chunk[..got]),
                }
                if body.len() > MAX_ANSWER {
                    return Err(bad("answer too long"));
                }
            }
        }
    }
    Ok(Response { status, body })
}

/// The value of one sample in Prometheus text (`name{labels}` exactly), 0 if absent.
pub fn metric(text: &str, sample: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' '))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

/// Sum of every sample of a family whose name (with labels) starts with `prefix`.
pub fn metric_sum(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Polls `check` every 50 ms until it returns `Some`, for at most `STEP`.
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let result = timeout(STEP, async {
        loop {
            if let Some(v) = check().await {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    result.unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

fn timed_out(step: &str) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, format!("{step} timed out"))
}
