//! Hostile peers of a real gateway process (`meshgate gateway run`, enrolled with a token from
//! an in-process CA) on 127.0.0.1, beyond gateway/tests/hostile.rs: a TLS 1.2-only hello, plain
//! HTTP on the mTLS port, TLS on the admin port, client certificates our own intermediate
//! signed for another trust domain or two IDs or with cA=true, and malformed HTTP from a peer
//! with a valid SVID. After each, a well-behaved peer's request still gets a 200, and the
//! gateway's stderr never shows a panic.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use meshgate_identity::tls::{ALPN_HTTP11, Credentials, client_config};
use meshgate_identity::verifier::{SharedBundles, SpiffeServerVerifier};
use meshgate_identity::{BundleSet, SpiffeId};
use rustls::ClientConfig;
use rustls::client::ResolvesClientCert;
use rustls::sign::CertifiedKey;
use time::OffsetDateTime;

use super::common::BIN;
use super::wire::{
    assert_protocol_version_alert, intermediate_as_leaf, raw_exchange, signed_by_our_intermediate,
    tls12_client_hello,
};
use crate::support::ca_client::{CaHarness, Response, send};
use crate::support::plain::{free_port, get as admin_get, ok_service as service};

const PAYMENTS: &str = "spiffe://bank.example/ns/payments/sa/api";
const SHOP: &str = "spiffe://bank.example/ns/shop/sa/checkout";

/// The gateway process; killed on drop. Its stderr goes to a file read at the end.
struct Gateway {
    child: Child,
    stderr: std::path::PathBuf,
    inbound: SocketAddr,
    admin: SocketAddr,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Gateway {
    /// Still running, and no panic on stderr so far.
    fn assert_alive(&mut self) {
        assert!(
            self.child.try_wait().unwrap().is_none(),
            "the gateway exited: {}",
            self.log()
        );
        assert!(!self.log().contains("panicked"), "{}", self.log());
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

/// A CA, an echo service, and payments' gateway in front of it allowing shop.
struct Setup {
    ca: CaHarness,
    gw: Gateway,
    shop: Arc<CertifiedKey>,
    intermediate: rustls::pki_types::CertificateDer<'static>,
}

impl Setup {
    async fn start() -> Self {
        let mut ca = CaHarness::start().await;
        let token = ca.token(PAYMENTS);
        let dir = ca.scratch("gw");
        std::fs::create_dir_all(&dir).unwrap();
        let service = service().await;
        let (inbound, admin) = (free_port(), free_port());
        std::fs::write(
            dir.join("payments.toml"),
            format!("service = \"{PAYMENTS}\"\n[[allow]]\nname = \"shop\"\nfrom = [\"{SHOP}\"]\n"),
        )
        .unwrap();
        std::fs::write(
            dir.join("gateway.toml"),
            format!(
                "spiffe_id = \"{PAYMENTS}\"\nstate_dir = \"state\"\n[ca]\nurl = \"{url}\"\n\
                 [inbound]\nlisten = \"{inbound}\"\nupstream = \"http://{service}\"\n\
                 policy = [\"payments.toml\"]\n[admin]\nlisten = \"{admin}\"\n\
                 [limits]\nheader_read_timeout = \"2s\"\n",
                url = ca.url()
            ),
        )
        .unwrap();
        let stderr = dir.join("stderr.log");
        let child = Command::new(BIN)
            .args(["gateway", "run", "--config"])
            .arg(dir.join("gateway.toml"))
            .arg("--bootstrap-token")
            .arg(token.reveal())
            .env_remove("MESHGATE_LOG")
            .env_remove("MESHGATE_LOG_FORMAT")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        let gw = Gateway {
            child,
            stderr,
            inbound,
            admin,
        };
        let mut ready = false;
        for _ in 0..150 {
            if admin_get(admin, "/readyz")
                .await
                .is_some_and(|r| r.starts_with("HTTP/1.1 200"))
            {
                ready = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(ready, "the gateway never became ready: {}", gw.log());
        let (shop, chain) = ca.issue(SHOP, OffsetDateTime::now_utc(), Duration::from_secs(600));
        let intermediate = chain[1].clone();
        Self {
            ca,
            gw,
            shop,
            intermediate,
        }
    }

    /// A client config that expects payments' gateway and presents `creds`.
    fn tls(&self, creds: Arc<CertifiedKey>) -> Arc<ClientConfig> {
        let bundles = Arc::new(SharedBundles::new(BundleSet::single(self.ca.bundle())));
        let verifier = SpiffeServerVerifier::new(bundles, SpiffeId::parse(PAYMENTS).unwrap());
        let certs = Arc::new(Credentials::new(creds)) as Arc<dyn ResolvesClientCert>;
        Arc::new(client_config(Arc::new(verifier), Some(certs), &[ALPN_HTTP11]).unwrap())
    }

    async fn shop_sends(&self, raw: &[u8]) -> std::io::Result<Response> {
        send(self.gw.inbound, self.tls(self.shop.clone()), raw).await
    }

    /// The well-behaved peer is served, the gateway is healthy, and nothing panicked.
    async fn assert_serving(&mut self) {
        let r = self
            .shop_sends(b"GET /v1/charges HTTP/1.1\r\nHost: payments\r\nConnection: close\r\n\r\n")
            .await
            .expect("a normal request");
        assert_eq!(r.status, 200, "{}", r.text());
        let health = admin_get(self.gw.admin, "/healthz")
            .await
            .unwrap_or_default();
        assert!(health.starts_with("HTTP/1.1 200"), "{health}");
        self.gw.assert_alive();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls12_only_plain_http_and_tls_on_the_admin_port_are_refused() {
    let mut s = Setup::start().await;
    s.assert_serving().await;
    let answer = raw_exchange(s.gw.inbound, &tls12_client_hello()).await;
    assert_protocol_version_alert(&answer);
    let answer = raw_exchange(
        s.gw.inbound,
        b"GET /v1/charges HTTP/1.1\r\nHost: payments\r\n\r\n",
    )
    .await;
    assert!(
        !String::from_utf8_lossy(&answer).contains("HTTP/1."),
        "plain HTTP was served on the mTLS port"
    );
    let answer = raw_exchange(s.gw.admin, &tls12_client_hello()).await;
    let text = String::from_utf8_lossy(&answer);
    assert!(
        answer.is_empty() || text.starts_with("HTTP/1.1 400"),
        "{text}"
    );
    s.assert_serving().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_our_intermediate_signed_against_the_rules_are_refused() {
    let mut s = Setup::start().await;
    let dir = s.ca.dir.clone();
    let rogues = [
        (
            "another trust domain",
            signed_by_our_intermediate(
                &dir,
                &s.intermediate,
                &["spiffe://evil.example/ns/shop/sa/checkout"],
            ),
        ),
        (
            "two URI SANs",
            signed_by_our_intermediate(
                &dir,
                &s.intermediate,
                &[SHOP, "spiffe://bank.example/ns/admin/sa/root"],
            ),
        ),
        (
            "the intermediate as a leaf",
            intermediate_as_leaf(&dir, &s.intermediate),
        ),
    ];
    for (what, creds) in rogues {
        let raw = b"GET /v1/charges HTTP/1.1\r\nHost: payments\r\nConnection: close\r\n\r\n";
        match send(s.gw.inbound, s.tls(creds), raw).await {
            Ok(r) => panic!("{what}: served with {} {}", r.status, r.text()),
            Err(e) => assert_ne!(e.kind(), std::io::ErrorKind::TimedOut, "{what}: {e}"),
        }
    }
    let metrics = admin_get(s.gw.admin, "/metrics").await.unwrap();
    assert!(
        metrics.contains("meshgate_gateway_handshake_failures_total{direction=\"inbound\""),
        "{metrics}"
    );
    s.assert_serving().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_http_from_a_peer_with_a_valid_svid_is_answered_by_the_gateway() {
    let mut s = Setup::start().await;
    let cases: [&[u8]; 6] = [
        // HTTP/1.0 without Host.
        b"GET /v1/charges HTTP/1.0\r\n\r\n",
        // A request line of control bytes.
        b"\x00\x01\x02 /\x7f HTTP/1.1\r\nHost: payments\r\n\r\n",
        // Content-Length and Transfer-Encoding together.
        b"POST /v1/charges HTTP/1.1\r\nHost: payments\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n0\r\n\r\n",
        // A chunk size that is not hex.
        b"POST /v1/charges HTTP/1.1\r\nHost: payments\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
        // 5000 small headers.
        b"",
        // A header name with a space and a NUL in a value.
        b"GET /v1/charges HTTP/1.1\r\nHost: payments\r\nbad header: x\r\nx-v: a\0b\r\nConnection: close\r\n\r\n",
    ];
    // What each gets: hyper reads HTTP/1.0 without Host, and takes Transfer-Encoding over
    // Content-Length (RFC 9112 6.3), forwarding the empty chunked body; a broken chunk is the
    // peer's fault (400), never the service's (502).
    let expected = [200, 400, 200, 400, 431, 400];
    for (i, raw) in cases.iter().enumerate() {
        let raw = if raw.is_empty() {
            let mut many = b"GET /v1/charges HTTP/1.1\r\nHost: payments\r\n".to_vec();
            for i in 0..5000 {
                many.extend_from_slice(format!("x-h{i}: v\r\n").as_bytes());
            }
            many.extend_from_slice(b"\r\n");
            many
        } else {
            raw.to_vec()
        };
        let r = s
            .shop_sends(&raw)
            .await
            .unwrap_or_else(|e| panic!("case {i}: {e}"));
        assert_eq!(r.status, expected[i], "case {i}: {}", r.text());
    }
    s.assert_serving().await;
}
