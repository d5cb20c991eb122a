//! WebSocket and gRPC through the gateways on 127.0.0.1 with real TLS.
//!
//! - WebSocket, east-west: an HTTP/1.1 app opens a WebSocket on its outbound route; the hop
//!   between the gateways is an HTTP/2 extended CONNECT; the service gets an HTTP/1.1 upgrade;
//!   bytes flow both ways once it answers 101.
//! - WebSocket, north-south: an mTLS client speaks HTTP/1.1 to the inbound listener directly,
//!   and its WebSocket is cut when its SVID is revoked.
//! - gRPC: an h2c client calls through outbound → inbound → an h2c service
//!   (`upstream_protocol = "h2c"`), and the trailers (`grpc-status`) come back.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // test code

mod kit;
mod mesh;

use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt as _, Full};
use hyper::{Request, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use kit::{CHECKOUT, Kit, PAYMENTS};
use mesh::{admin, metric};
use meshgate_ca::Authority;
use meshgate_gateway::config::{Limits, Target, UpstreamProtocol};
use meshgate_identity::SpiffeId;
use meshgate_identity::tls::{ALPN_HTTP11, client_config};
use meshgate_identity::verifier::SpiffeServerVerifier;
use rustls::client::ResolvesClientCert;
use rustls::pki_types::ServerName;
use time::OffsetDateTime;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

const LIMIT: Duration = Duration::from_secs(60);

/// RFC 6455's own example key and the accept value it must produce.
const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// A masked text frame "hello" from RFC 6455 §5.7.
const FRAME: &[u8] = &[
    0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
];

/// Sends a WebSocket opening for `path` and reads the answer's head (up to the blank line).
async fn open<S: AsyncRead + AsyncWrite + Unpin>(io: &mut S, path: &str) -> String {
    let head = format!(
        "GET {path} HTTP/1.1\r\nhost: payments.bank.example\r\nconnection: Upgrade\r\nupgrade: websocket\r\nsec-websocket-key: {KEY}\r\nsec-websocket-version: 13\r\n\r\n"
    );
    io.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let mut byte = [0u8; 1];
    while !answer.ends_with(b"\r\n\r\n") {
        let n = io.read(&mut byte).await.unwrap();
        assert_eq!(
            n,
            1,
            "closed mid-head: {}",
            String::from_utf8_lossy(&answer)
        );
        answer.push(byte[0]);
    }
    String::from_utf8(answer).unwrap().to_ascii_lowercase()
}

/// Sends a frame on an open WebSocket and reads the upstream's echo of it.
async fn echo<S: AsyncRead + AsyncWrite + Unpin>(io: &mut S) {
    for _ in 0..3 {
        io.write_all(FRAME).await.unwrap();
        let mut back = vec![0u8; FRAME.len()];
        io.read_exact(&mut back).await.unwrap();
        assert_eq!(back, FRAME);
    }
}

#[tokio::test]
async fn a_websocket_crosses_outbound_h2_and_inbound_to_the_service_and_back() {
    tokio::time::timeout(LIMIT, async {
        let kit = Kit::start().await;
        let upstream = Target::parse(&kit::websocket_echo().await.to_string()).unwrap();
        let payments = kit.payments(upstream, Limits::default(), None).await;
        let checkout = kit.client(CHECKOUT, &payments).await;

        let mut app = TcpStream::connect(checkout.to_payments()).await.unwrap();
        let head = open(&mut app, "/v1/chat").await;
        assert!(head.starts_with("http/1.1 101"), "{head}");
        assert!(head.contains("upgrade: websocket"), "{head}");
        assert!(
            head.contains(&format!(
                "sec-websocket-accept: {}",
                ACCEPT.to_ascii_lowercase()
            )),
            "{head}"
        );
        echo(&mut app).await;

        // A plain request still works beside it, on the same pooled HTTP/2 connection.
        let a = mesh::call(checkout.to_payments(), "GET", "/v1/charges", &[]).await;
        assert_eq!(a.status, StatusCode::OK);
        echo(&mut app).await;
        drop(app);

        // A denied opening is a 403, never an upgrade.
        let mut app = TcpStream::connect(checkout.to_payments()).await.unwrap();
        let head = open(&mut app, "/private/chat").await;
        assert!(head.starts_with("http/1.1 403"), "{head}");

        let (_, m) = admin(payments.gateway.admin, "/metrics").await;
        let h2 = "meshgate_gateway_inbound_connections_total{alpn=\"h2\"}";
        assert_eq!(
            metric(&m, h2),
            1.0,
            "the hop between gateways is HTTP/2: {m}"
        );
        let h1 = "meshgate_gateway_inbound_connections_total{alpn=\"http/1.1\"}";
        assert_eq!(metric(&m, h1), 0.0, "{m}");
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_websocket_reaches_an_h2c_service_as_an_extended_connect() {
    tokio::time::timeout(LIMIT, async {
        let kit = Kit::start().await;
        let upstream = Target::parse(&kit::websocket_echo_h2c().await.to_string())
            .unwrap()
            .with_protocol(UpstreamProtocol::H2c);
        let payments = kit.payments(upstream, Limits::default(), None).await;
        let checkout = kit.client(CHECKOUT, &payments).await;

        // The app speaks HTTP/1.1 with a key; the service speaks HTTP/2 with none: the
        // inbound gateway answers the app's key.
        let mut app = TcpStream::connect(checkout.to_payments()).await.unwrap();
        let head = open(&mut app, "/v1/chat").await;
        assert!(head.starts_with("http/1.1 101"), "{head}");
        assert!(head.contains("upgrade: websocket"), "{head}");
        assert!(
            head.contains(&format!(
                "sec-websocket-accept: {}",
                ACCEPT.to_ascii_lowercase()
            )),
            "{head}"
        );
        echo(&mut app).await;
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn an_idle_websocket_is_closed_after_the_idle_timeout() {
    tokio::time::timeout(LIMIT, async {
        let kit = Kit::start().await;
        let upstream = Target::parse(&kit::websocket_echo().await.to_string()).unwrap();
        let limits = Limits {
            idle_timeout: Duration::from_secs(2),
            ..Limits::default()
        };
        let payments = kit.payments(upstream, limits, None).await;
        let checkout = kit.client(CHECKOUT, &payments).await;
        let mut app = TcpStream::connect(checkout.to_payments()).await.unwrap();
        let head = open(&mut app, "/v1/chat").await;
        assert!(head.starts_with("http/1.1 101"), "{head}");
        // Traffic keeps it open past the timeout...
        for _ in 0..3 {
            echo(&mut app).await;
            tokio::time::sleep(Duration::from_millis(1000)).await;
        }
        echo(&mut app).await;
        // ...silence closes it.
        let mut buf = [0u8; 16];
        let end = tokio::time::timeout(Duration::from_secs(20), app.read(&mut buf))
            .await
            .expect("the idle WebSocket stayed open");
        assert!(matches!(end, Ok(0) | Err(_)), "{end:?}");
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_websocket_lives_until_its_peers_svid_expires_not_before() {
    tokio::time::timeout(Duration::from_secs(120), async {
        // 40 s SVIDs: the inbound stops taking requests on the client's connection 10 s before
        // the client's SVID expires (a GOAWAY), but its WebSocket runs until the expiry itself.
        let kit = Kit::start_with_svid_ttl(Duration::from_secs(40)).await;
        let upstream = Target::parse(&kit::websocket_echo().await.to_string()).unwrap();
        let payments = kit.payments(upstream, Limits::default(), None).await;
        let agent = kit.enroll(CHECKOUT).await;
        let not_after = agent.svid().info.not_after;
        let mut tls = mtls_client(&agent, payments.gateway.inbound.unwrap()).await;
        let head = open(&mut tls, "/v1/chat").await;
        assert!(head.starts_with("http/1.1 101"), "{head}");
        // Inside the last 10 s, past the wind-down: still open, still echoing.
        sleep_until_unix(not_after - 5).await;
        echo(&mut tls).await;
        // Cut at the expiry, and counted as such.
        let mut buf = [0u8; 16];
        let end = tokio::time::timeout(Duration::from_secs(30), tls.read(&mut buf))
            .await
            .expect("the WebSocket outlived its peer's SVID");
        assert!(matches!(end, Ok(0) | Err(_)), "{end:?}");
        let (_, m) = admin(payments.gateway.admin, "/metrics").await;
        let sample = "meshgate_gateway_peer_connections_closed_total{outcome=\"expired\"}";
        assert_eq!(metric(&m, sample), 1.0, "{m}");
    })
    .await
    .unwrap();
}

/// An mTLS connection to an inbound listener with `agent`'s SVID, speaking HTTP/1.1, as a
/// north-south client with its own SVID does.
async fn mtls_client(
    agent: &meshgate_gateway::Agent,
    inbound: std::net::SocketAddr,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let verifier =
        SpiffeServerVerifier::new(agent.shared_bundles(), SpiffeId::parse(PAYMENTS).unwrap());
    let certs = agent.credentials() as Arc<dyn ResolvesClientCert>;
    let tls = client_config(Arc::new(verifier), Some(certs), &[ALPN_HTTP11]).unwrap();
    let tcp = TcpStream::connect(inbound).await.unwrap();
    let name = ServerName::try_from("payments.bank.example").unwrap();
    TlsConnector::from(Arc::new(tls))
        .connect(name, tcp)
        .await
        .unwrap()
}

/// Sleeps until the wall clock reads `at` (unix seconds).
async fn sleep_until_unix(at: u64) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    tokio::time::sleep(Duration::from_secs(at.saturating_sub(now))).await;
}

#[tokio::test]
async fn a_websocket_opens_from_an_mtls_client_straight_to_the_inbound() {
    tokio::time::timeout(LIMIT, async {
        let kit = Kit::start().await;
        let upstream = Target::parse(&kit::websocket_echo().await.to_string()).unwrap();
        let payments = kit.payments(upstream, Limits::default(), None).await;
        // A north-south client with its own SVID, speaking HTTP/1.1 over mTLS.
        let agent = kit.enroll(CHECKOUT).await;
        let mut tls = mtls_client(&agent, payments.gateway.inbound.unwrap()).await;
        let head = open(&mut tls, "/v1/chat").await;
        assert!(head.starts_with("http/1.1 101"), "{head}");
        assert!(
            head.contains(&format!(
                "sec-websocket-accept: {}",
                ACCEPT.to_ascii_lowercase()
            )),
            "{head}"
        );
        echo(&mut tls).await;

        // No connection outlives its peer, a WebSocket included: revoked, it is cut.
        let mut cli = Authority::open(&kit.ca_dir).unwrap();
        cli.revoke_serial(
            &agent.svid().info.serial,
            Some("test"),
            OffsetDateTime::now_utc(),
        )
        .unwrap();
        let mut payments = payments;
        assert!(payments.agent.fetch_revocations().await.unwrap());
        let mut buf = [0u8; 16];
        let end = tokio::time::timeout(Duration::from_secs(20), tls.read(&mut buf))
            .await
            .expect("the revoked peer's WebSocket stayed open");
        assert!(matches!(end, Ok(0) | Err(_)), "{end:?}");
        let (_, m) = admin(payments.gateway.admin, "/metrics").await;
        let sample = "meshgate_gateway_peer_connections_closed_total{outcome=\"revoked\"}";
        assert_eq!(metric(&m, sample), 1.0, "{m}");
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_grpc_call_with_trailers_crosses_both_gateways_to_an_h2c_service() {
    tokio::time::timeout(LIMIT, async {
        let kit = Kit::start().await;
        let upstream = Target::parse(&kit::grpc_echo().await.to_string())
            .unwrap()
            .with_protocol(UpstreamProtocol::H2c);
        let payments = kit.payments(upstream, Limits::default(), None).await;
        let checkout = kit.client(CHECKOUT, &payments).await;

        // The app speaks h2c (prior knowledge) to its outbound listener, as gRPC clients do.
        let tcp = TcpStream::connect(checkout.to_payments()).await.unwrap();
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
                .await
                .unwrap();
        tokio::spawn(conn);
        for word in ["hello", "again"] {
            let message = kit::grpc_frame(word.as_bytes());
            let req = Request::builder()
                .method("POST")
                .uri("http://payments.bank.example/echo.Echo/Say")
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .body(Full::new(message.clone()))
                .unwrap();
            let response = sender.send_request(req).await.unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            assert_eq!(response.headers()["content-type"], "application/grpc");
            let collected = response.into_body().collect().await.unwrap();
            let trailers = collected
                .trailers()
                .cloned()
                .expect("no trailers came back");
            assert_eq!(trailers["grpc-status"], "0", "{trailers:?}");
            assert_eq!(trailers["grpc-message"], "echoed");
            assert_eq!(collected.to_bytes(), message);
        }
    })
    .await
    .unwrap();
}
