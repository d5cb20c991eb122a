//! Hostile input on the inbound (mTLS) listener: oversized request heads, slowloris, ten
//! thousand handshakes without a client certificate, and HTTP/2 rapid reset. Each attack runs
//! while a well-behaved app keeps calling shop → payments through the same listener, and each
//! test checks that every one of its calls got a 200 and that the gateway is healthy after.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // test code

mod harness;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use harness::{Pair, Steady, admin, call, eventually, metric, metric_sum, mtls};
use hyper::StatusCode;
use meshgate_identity::tls::{ALPN_H2, ALPN_HTTP11};
use rustls::DigitallySignedStruct;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const LIMIT: Duration = Duration::from_secs(300);
const HANDSHAKE_FAILURES: &str = "meshgate_gateway_handshake_failures_total{direction=\"inbound\"";
const OPEN_INBOUND: &str = "meshgate_gateway_open_connections{direction=\"inbound\"}";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn oversized_request_heads_get_431_and_others_are_served() {
    tokio::time::timeout(LIMIT, async {
        let pair = Pair::start("").await;
        let steady = Steady::start(pair.shop_to_payments(), 2);
        let huge = "x".repeat(64 * 1024);

        // HTTP/1.1 (ALPN http/1.1), a 64 KiB header against the 16 KiB default limit.
        for _ in 0..20 {
            let mut tls = mtls(pair.payments_inbound(), pair.shop_tls(&[ALPN_HTTP11]))
                .await
                .unwrap();
            let head = format!("GET /v1/charges/ch_1 HTTP/1.1\r\nhost: p\r\nx-big: {huge}\r\n\r\n");
            // The gateway may answer and close before it has read everything.
            let _ = tls.write_all(head.as_bytes()).await;
            let mut answer = Vec::new();
            let _ = tls.read_to_end(&mut answer).await;
            let answer = String::from_utf8_lossy(&answer);
            assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
        }

        // HTTP/2: a header list over the limit gets a 431 and the connection goes on; one many
        // times over it ends the connection (GOAWAY).
        let tls = mtls(pair.payments_inbound(), pair.shop_tls(&[ALPN_H2]))
            .await
            .unwrap();
        let (client, conn) = h2::client::handshake(tls).await.unwrap();
        let conn = tokio::spawn(conn);
        let mut client = client.ready().await.unwrap();
        let request = |header: &str| {
            hyper::Request::get("https://payments.bank.example/v1/charges/ch_1")
                .header("x-big", header)
                .body(())
                .unwrap()
        };
        let over = "x".repeat(20 * 1024);
        for _ in 0..20 {
            let (response, _) = client.send_request(request(&over), true).unwrap();
            let response = response.await.unwrap();
            assert_eq!(
                response.status(),
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
            );
            client = client.ready().await.unwrap();
        }
        let (response, _) = client.send_request(request(&huge), true).unwrap();
        let err = response.await.unwrap_err();
        assert!(err.is_go_away(), "{err}");
        assert!(conn.await.unwrap().is_err());

        let (ok, failed) = steady.finish().await;
        assert!(failed.is_empty(), "{failed:?}");
        assert!(ok > 0);
        assert_healthy(&pair).await;
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slowloris_connections_are_closed_by_the_header_read_timeout() {
    tokio::time::timeout(LIMIT, async {
        let pair = Pair::start("[limits]\nheader_read_timeout = \"1s\"").await;
        let steady = Steady::start(pair.shop_to_payments(), 2);
        // 20 connections at once, each sending its request head one byte every 300 ms. Each
        // stops after 100 bytes (30 s) if the gateway has not closed it by then.
        let slow: Vec<_> = (0..20)
            .map(|_| {
                let tls = pair.shop_tls(&[ALPN_HTTP11]);
                let addr = pair.payments_inbound();
                tokio::spawn(async move {
                    let stream = mtls(addr, tls).await.unwrap();
                    let (mut read, mut write) = tokio::io::split(stream);
                    let closed = Arc::new(AtomicBool::new(false));
                    let reader = {
                        let closed = closed.clone();
                        tokio::spawn(async move {
                            let mut answer = Vec::new();
                            let _ = read.read_to_end(&mut answer).await;
                            closed.store(true, Ordering::SeqCst);
                            answer
                        })
                    };
                    let head = b"GET /v1/charges/ch_1 HTTP/1.1\r\nhost: payments\r\nx-slow: ";
                    let mut sent = 0;
                    for byte in head.iter().chain(std::iter::repeat(&b'a')).take(100) {
                        if closed.load(Ordering::SeqCst) || write.write_all(&[*byte]).await.is_err()
                        {
                            break;
                        }
                        sent += 1;
                        tokio::time::sleep(Duration::from_millis(300)).await;
                    }
                    // The gateway closes; the reader then ends.
                    let answer = reader.await.unwrap();
                    (sent, String::from_utf8_lossy(&answer).to_string())
                })
            })
            .collect();
        for task in slow {
            let (sent, answer) = task.await.unwrap();
            assert!(
                sent < 100,
                "a slowloris connection stayed open for {sent} bytes"
            );
            assert!(!answer.contains(" 200 "), "{answer}");
        }
        let (ok, failed) = steady.finish().await;
        assert!(failed.is_empty(), "{failed:?}");
        assert!(ok > 0);
        assert_healthy(&pair).await;
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_thousand_handshakes_without_a_certificate_are_refused_and_counted() {
    const HANDSHAKES: usize = 10_000;
    const CONCURRENCY: usize = 50;
    tokio::time::timeout(LIMIT, async {
        let pair = Pair::start("").await;
        let (_, before) = admin(pair.payments.admin, "/metrics").await;
        let failures_before = metric_sum(&before, HANDSHAKE_FAILURES);
        let steady = Steady::start(pair.shop_to_payments(), 2);
        let health = HealthWatch::start(pair.payments.admin);

        // A client with no certificate, which (being an attacker) does not check the server's.
        let tls = Arc::new(attacker_tls());
        let answered = Arc::new(AtomicUsize::new(0));
        let workers: Vec<_> = (0..CONCURRENCY)
            .map(|_| {
                let (tls, answered) = (tls.clone(), answered.clone());
                let addr = pair.payments_inbound();
                tokio::spawn(async move {
                    for _ in 0..HANDSHAKES / CONCURRENCY {
                        // TLS 1.3: the client may finish before the server has judged its
                        // (missing) certificate; the server's alert or close is the refusal.
                        let Ok(mut stream) = mtls(addr, tls.clone()).await else {
                            continue;
                        };
                        let _ = stream.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await;
                        let mut buf = [0u8; 64];
                        if matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {
                            answered.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                })
            })
            .collect();
        for w in workers {
            w.await.unwrap();
        }
        assert_eq!(answered.load(Ordering::SeqCst), 0, "no client without a certificate is served");

        let admin_addr = pair.payments.admin;
        let no_cert = "meshgate_gateway_handshake_failures_total{direction=\"inbound\",reason=\"no_certificate\"}";
        let floor = (HANDSHAKES * 99 / 100) as f64;
        eventually("the refusals to be counted", || async move {
            let (_, m) = admin(admin_addr, "/metrics").await;
            metric(&m, no_cert) >= floor
        })
        .await;
        let (_, after) = admin(admin_addr, "/metrics").await;
        let grew = metric_sum(&after, HANDSHAKE_FAILURES) - failures_before;
        assert!(
            (floor..=HANDSHAKES as f64).contains(&grew),
            "handshake failures grew by {grew}:\n{after}"
        );

        let (ok, failed) = steady.finish().await;
        assert!(failed.is_empty(), "{failed:?}");
        assert!(ok > 0);
        assert_eq!(health.finish().await, 0, "/healthz failed during the flood");
        assert_healthy(&pair).await;
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn http2_rapid_reset_is_bounded_and_others_are_served() {
    const STREAMS: usize = 10_000;
    /// New connections the attacker may open when the gateway sends it away.
    const CONNECTIONS: usize = 1_000;
    tokio::time::timeout(LIMIT, async {
        let pair = Pair::start("").await;
        let steady = Steady::start(pair.shop_to_payments(), 2);
        let health = HealthWatch::start(pair.payments.admin);

        // A peer with a valid SVID (shop's: a compromised service) opens streams and resets
        // each at once, reconnecting whenever the gateway ends the connection.
        let tls = pair.shop_tls(&[ALPN_H2]);
        let (mut reset, mut connections) = (0, 0);
        while reset < STREAMS && connections < CONNECTIONS {
            connections += 1;
            let Ok(stream) = mtls(pair.payments_inbound(), tls.clone()).await else {
                continue;
            };
            let Ok((client, conn)) = h2::client::handshake(stream).await else {
                continue;
            };
            let conn = tokio::spawn(conn);
            let mut client = client;
            while reset < STREAMS {
                match tokio::time::timeout(Duration::from_secs(5), client.ready()).await {
                    Ok(Ok(ready)) => client = ready,
                    _ => break,
                }
                let request = hyper::Request::get("https://payments.bank.example/v1/charges/ch_1")
                    .body(())
                    .unwrap();
                let Ok((response, mut body)) = client.send_request(request, false) else {
                    break;
                };
                body.send_reset(h2::Reason::CANCEL);
                drop(response);
                reset += 1;
            }
            conn.abort();
        }
        println!("{reset} streams reset over {connections} connections");
        assert_eq!(reset, STREAMS, "the attack ran to its end");

        let (ok, failed) = steady.finish().await;
        assert!(failed.is_empty(), "{failed:?}");
        assert!(ok > 0);
        assert_eq!(
            health.finish().await,
            0,
            "/healthz failed during the attack"
        );
        assert_healthy(&pair).await;
    })
    .await
    .unwrap();
}

/// TLS 1.3, ALPN h2, no client certificate, and any server certificate accepted.
fn attacker_tls() -> rustls::ClientConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnything(provider)))
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    config
}

#[derive(Debug)]
struct AcceptAnything(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAnything {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// After an attack: healthy, ready, serving, and holding no connection but the shop's pooled one.
async fn assert_healthy(pair: &Pair) {
    for path in ["/healthz", "/readyz"] {
        let (status, body) = admin(pair.payments.admin, path).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
    }
    let a = call(pair.shop_to_payments(), "POST", "/v1/charges").await;
    assert_eq!(a.status, StatusCode::OK);
    let admin_addr = pair.payments.admin;
    eventually("the attack's connections to close", || async move {
        let (_, m) = admin(admin_addr, "/metrics").await;
        metric(&m, OPEN_INBOUND) <= 1.0
    })
    .await;
}

/// Polls `/healthz` every 100 ms until finished; counts the polls that did not get a 200.
struct HealthWatch {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<usize>,
}

impl HealthWatch {
    fn start(admin: std::net::SocketAddr) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let task = {
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut failed = 0;
                while !stop.load(Ordering::SeqCst) {
                    match harness::try_call(admin, "GET", "/healthz").await {
                        Ok(a) if a.status == StatusCode::OK => {}
                        _ => failed += 1,
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                failed
            })
        };
        Self { stop, task }
    }

    async fn finish(self) -> usize {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.unwrap()
    }
}
