//! The gateway data plane end to end on 127.0.0.1 with real TLS: shop app → shop outbound
//! (HTTP/1.1) → payments inbound (mTLS, HTTP/2) → policy → payments service (HTTP/1.1), with the
//! example bank policies; refusals at TLS; policy reload; revocation.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // test code

mod mesh;

use std::sync::Arc;
use std::time::Duration;

use hyper::StatusCode;
use mesh::{Mesh, PAYMENTS, SHOP, admin, call, eventually, metric};
use meshgate_ca::{Authority, KeyType as CaKeyType};
use meshgate_identity::tls::{ALPN_H2, Credentials, certified_key, client_config};
use meshgate_identity::verifier::SpiffeServerVerifier;
use meshgate_identity::{SpiffeId, TrustDomain};
use rustls::client::ResolvesClientCert;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use time::OffsetDateTime;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

const LIMIT: Duration = Duration::from_secs(60);

#[tokio::test]
async fn shop_calls_payments_over_h2_and_payments_sees_shops_identity() {
    tokio::time::timeout(LIMIT, async {
        let mesh = Mesh::start().await;
        let forged = "By=spiffe://bank.example/ns/payments/sa/api;URI=spiffe://bank.example/ns/support/sa/agent";
        let a = call(
            mesh.shop_to_payments(),
            "POST",
            "/v1/charges?amount=5",
            &[
                ("x-forwarded-client-cert", forged),
                ("connection", "x-secret"),
                ("x-secret", "hop-by-hop"),
                ("x-request-id", "r1"),
            ],
        )
        .await;
        assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
        let seen = a.json();
        assert_eq!(seen["method"], "POST");
        assert_eq!(seen["path"], "/v1/charges?amount=5");
        assert_eq!(seen["version"], "HTTP/1.1");
        let headers = &seen["headers"];
        let xfcc = headers["x-forwarded-client-cert"].as_array().unwrap();
        assert_eq!(xfcc.len(), 1, "the forged XFCC must not reach the service: {xfcc:?}");
        let hash = hex::encode(mesh.shop_agent.svid().info.sha256);
        assert_eq!(xfcc[0], format!("By={PAYMENTS};Hash={hash};URI={SHOP}"));
        assert!(headers.get("x-secret").is_none(), "{headers}");
        assert_eq!(headers["x-request-id"][0], "r1");
        assert_eq!(headers["host"][0], "payments.bank.example");

        // The hop between the gateways was HTTP/2, chosen by ALPN.
        let (status, metrics) = admin(mesh.payments.admin, "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        let h2 = "meshgate_gateway_inbound_connections_total{alpn=\"h2\"}";
        assert_eq!(metric(&metrics, h2), 1.0, "{metrics}");
        let h1 = "meshgate_gateway_inbound_connections_total{alpn=\"http/1.1\"}";
        assert_eq!(metric(&metrics, h1), 0.0, "{metrics}");

        // A second call reuses the pooled connection.
        let again = call(mesh.shop_to_payments(), "GET", "/v1/charges/ch_1", &[]).await;
        assert_eq!(again.status, StatusCode::OK);
        let (_, metrics) = admin(mesh.payments.admin, "/metrics").await;
        assert_eq!(metric(&metrics, h2), 1.0, "{metrics}");
        let allowed = format!("meshgate_gateway_requests_total{{direction=\"inbound\",peer=\"{SHOP}\",decision=\"allow\",status=\"200\"}}");
        assert_eq!(metric(&metrics, &allowed), 2.0, "{metrics}");
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_denied_request_is_403_json_naming_no_rule_and_never_reaches_the_service() {
    tokio::time::timeout(LIMIT, async {
        let mesh = Mesh::start().await;
        for (method, path) in [
            ("POST", "/v1/refunds/x"),       // payments.toml: "the shop never refunds"
            ("DELETE", "/v1/charges/ch_1"),  // no rule: the default denies
            ("GET", "/v1/charges/../../admin/users"), // normalized to /admin/users: mesh.toml
            ("GET", "/v1/%63harges//ch_1/../../../admin"),
        ] {
            let a = call(mesh.shop_to_payments(), method, path, &[]).await;
            assert_eq!(a.status, StatusCode::FORBIDDEN, "{method} {path}: {:?}", a.body);
            let body = a.json();
            assert_eq!(body["error"], "forbidden");
            let text = String::from_utf8_lossy(&a.body).to_string();
            for secret in ["refunds", "admin endpoints", "rule", "payments.toml"] {
                assert!(!text.contains(secret), "{text}");
            }
        }
        assert_eq!(mesh.echo.count(), 0);
        let bad = call(mesh.shop_to_payments(), "GET", "/v1/charges/a%2Fb", &[]).await;
        assert_eq!(bad.status, StatusCode::BAD_REQUEST);
        assert_eq!(bad.json()["error"], "bad_request");

        let (_, metrics) = admin(mesh.payments.admin, "/metrics").await;
        let denied = format!("meshgate_gateway_requests_total{{direction=\"inbound\",peer=\"{SHOP}\",decision=\"deny\",status=\"403\"}}");
        assert_eq!(metric(&metrics, &denied), 4.0, "{metrics}");
    })
    .await
    .unwrap();
}

/// An mTLS connection to the payments inbound with `certs` as the client certificate (none
/// when `None`), HTTP/2 by ALPN; `None` when the handshake fails.
async fn h2_tls(
    mesh: &Mesh,
    certs: Option<Arc<dyn ResolvesClientCert>>,
) -> Option<tokio_rustls::client::TlsStream<TcpStream>> {
    let verifier = SpiffeServerVerifier::new(
        mesh.payments_agent.shared_bundles(),
        SpiffeId::parse(PAYMENTS).unwrap(),
    );
    let config = client_config(Arc::new(verifier), certs, &[ALPN_H2]).unwrap();
    let tcp = TcpStream::connect(mesh.payments.inbound.unwrap())
        .await
        .unwrap();
    let name = ServerName::try_from("payments.bank.example").unwrap();
    // TLS 1.3: the client may finish its side before the server has judged its certificate.
    TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .ok()
}

/// The client preface and an empty SETTINGS frame.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0";

/// Connects with `certs`, sends an HTTP/2 preface and says whether any byte of an answer came
/// back.
async fn tls_client_gets_an_answer(
    mesh: &Mesh,
    certs: Option<Arc<dyn ResolvesClientCert>>,
) -> bool {
    let Some(mut tls) = h2_tls(mesh, certs).await else {
        return false;
    };
    if tls.write_all(PREFACE).await.is_err() {
        return false;
    }
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(Duration::from_secs(10), tls.read(&mut buf)).await,
        Ok(Ok(n)) if n > 0
    )
}

/// A HEADERS frame (END_STREAM, END_HEADERS) on `stream` for GET /v1/charges/ch_1 with
/// `extra` as literal header fields, HPACK-encoded by hand so that nothing refuses them before
/// the gateway does.
fn headers_frame(stream: u32, extra: &[(&str, &str)]) -> Vec<u8> {
    let literal = |block: &mut Vec<u8>, name: &str, value: &str| {
        // Literal without indexing, new name (RFC 7541 §6.2.2); short strings, no Huffman.
        block.push(0x00);
        block.push(u8::try_from(name.len()).unwrap());
        block.extend_from_slice(name.as_bytes());
        block.push(u8::try_from(value.len()).unwrap());
        block.extend_from_slice(value.as_bytes());
    };
    // :method GET and :scheme https from the static table.
    let mut block = vec![0x82, 0x87];
    literal(&mut block, ":path", "/v1/charges/ch_1");
    literal(&mut block, ":authority", "payments.bank.example");
    for (name, value) in extra {
        literal(&mut block, name, value);
    }
    let len = u32::try_from(block.len()).unwrap().to_be_bytes();
    let mut frame = vec![len[1], len[2], len[3], 0x1, 0x5];
    frame.extend_from_slice(&stream.to_be_bytes());
    frame.extend_from_slice(&block);
    frame
}

/// Reads frames until one for `stream` comes: `Ok(())` for its HEADERS (an answer),
/// `Err(code)` for its RST_STREAM.
async fn answer_on<S: tokio::io::AsyncRead + Unpin>(tls: &mut S, stream: u32) -> Result<(), u32> {
    loop {
        let mut head = [0u8; 9];
        tls.read_exact(&mut head).await.unwrap();
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let mut payload = vec![0u8; len];
        tls.read_exact(&mut payload).await.unwrap();
        let id = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        match head[3] {
            0x7 => panic!("GOAWAY: the connection was ended"),
            0x1 if id == stream => return Ok(()),
            0x3 if id == stream => {
                return Err(u32::from_be_bytes(payload[..4].try_into().unwrap()));
            }
            _ => {}
        }
    }
}

#[tokio::test]
async fn hop_by_hop_headers_over_http2_are_refused_before_the_service() {
    tokio::time::timeout(LIMIT, async {
        let mesh = Mesh::start().await;
        let shop = mesh.shop_agent.credentials() as Arc<dyn ResolvesClientCert>;
        let mut tls = h2_tls(&mesh, Some(shop)).await.unwrap();
        tls.write_all(PREFACE).await.unwrap();
        // The same request without them is answered: the frames are well made.
        tls.write_all(&headers_frame(1, &[])).await.unwrap();
        assert_eq!(answer_on(&mut tls, 1).await, Ok(()));
        let served = mesh.echo.count();
        assert_eq!(served, 1);
        // HTTP/2 has no hop-by-hop headers (RFC 9113 §8.2.2), so the gateways leave such a
        // message's headers as they came (`strip_hop_by_hop_from`): each of these must be
        // refused with PROTOCOL_ERROR, on its own stream, and reach nothing.
        let hop_by_hop = [
            ("connection", "x-forwarded-client-cert"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("te", "gzip"),
        ];
        for (stream, header) in (3..).step_by(2).zip(hop_by_hop) {
            tls.write_all(&headers_frame(stream, &[header]))
                .await
                .unwrap();
            assert_eq!(answer_on(&mut tls, stream).await, Err(0x1), "{header:?}");
        }
        // `te: trailers` is the one allowed; the connection still serves.
        tls.write_all(&headers_frame(15, &[("te", "trailers")]))
            .await
            .unwrap();
        assert_eq!(answer_on(&mut tls, 15).await, Ok(()));
        assert_eq!(mesh.echo.count(), served + 1);
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn clients_without_an_svid_of_our_ca_are_refused_at_tls_and_others_still_served() {
    tokio::time::timeout(LIMIT, async {
        let mesh = Mesh::start().await;
        // The same harness with the shop's own SVID gets an answer (the server's SETTINGS).
        let shop = mesh.shop_agent.credentials() as Arc<dyn ResolvesClientCert>;
        assert!(tls_client_gets_an_answer(&mesh, Some(shop)).await);

        assert!(!tls_client_gets_an_answer(&mesh, None).await);

        // A foreign CA that calls its trust domain bank.example too.
        let foreign_dir = mesh.dir.path().join("foreign-ca");
        let now = OffsetDateTime::now_utc();
        let td = TrustDomain::parse("bank.example").unwrap();
        Authority::init(&foreign_dir, td, CaKeyType::EcdsaP256, now).unwrap();
        let mut foreign = Authority::open(&foreign_dir).unwrap();
        let (issued, key) = foreign
            .issue_with_new_key(
                &SpiffeId::parse(SHOP).unwrap(),
                &[],
                Duration::from_secs(600),
                now,
            )
            .unwrap();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let creds = Credentials::new(certified_key(issued.chain, key).unwrap());
        assert!(!tls_client_gets_an_answer(&mesh, Some(Arc::new(creds))).await);

        // Our own CA's SVID for the shop, expired ten seconds ago.
        let mut ours = Authority::open(&mesh.ca_dir).unwrap();
        let (issued, key) = ours
            .issue_with_new_key(
                &SpiffeId::parse(SHOP).unwrap(),
                &[],
                Duration::from_secs(10),
                now - Duration::from_secs(20),
            )
            .unwrap();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let creds = Credentials::new(certified_key(issued.chain, key).unwrap());
        assert!(!tls_client_gets_an_answer(&mesh, Some(Arc::new(creds))).await);

        let (_, metrics) = admin(mesh.payments.admin, "/metrics").await;
        let failures: f64 = metrics
            .lines()
            .filter(|l| {
                l.starts_with("meshgate_gateway_handshake_failures_total{direction=\"inbound\"")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        assert_eq!(failures, 3.0, "{metrics}");
        for reason in ["no_certificate", "untrusted", "expired"] {
            let sample = format!(
                "meshgate_gateway_handshake_failures_total{{direction=\"inbound\",reason=\"{reason}\"}}"
            );
            assert_eq!(metric(&metrics, &sample), 1.0, "{metrics}");
        }

        // The gateway keeps serving.
        let a = call(mesh.shop_to_payments(), "POST", "/v1/charges", &[]).await;
        assert_eq!(a.status, StatusCode::OK);
        let (status, _) = admin(mesh.payments.admin, "/readyz").await;
        assert_eq!(status, StatusCode::OK);
        let (status, identity) = admin(mesh.payments.admin, "/v1/identity").await;
        assert_eq!(status, StatusCode::OK);
        let identity: serde_json::Value = serde_json::from_str(&identity).unwrap();
        assert_eq!(identity["spiffe_id"], PAYMENTS);
        assert_eq!(
            identity["serial"],
            mesh.payments_agent.svid().info.serial.to_string()
        );
        assert_eq!(
            identity["expires_at"],
            mesh.payments_agent.svid().info.not_after
        );
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_broken_policy_file_keeps_the_old_policy_and_a_good_one_takes_over() {
    tokio::time::timeout(LIMIT, async {
        let mesh = Mesh::start().await;
        let payments_file = mesh.policy_dir.join("payments.toml");
        let original = std::fs::read_to_string(&payments_file).unwrap();
        let charge = || call(mesh.shop_to_payments(), "POST", "/v1/charges", &[]);
        let refund = || call(mesh.shop_to_payments(), "POST", "/v1/refunds/x", &[]);
        assert_eq!(charge().await.status, StatusCode::OK);
        assert_eq!(refund().await.status, StatusCode::FORBIDDEN);

        std::fs::write(
            &payments_file,
            original.replace("methods = [\"POST\"]", "methods = [post]"),
        )
        .unwrap();
        mesh.payments.reload_policies();
        let reloads = |outcome: &'static str| {
            let admin_addr = mesh.payments.admin;
            async move {
                let (_, m) = admin(admin_addr, "/metrics").await;
                metric(
                    &m,
                    &format!("meshgate_gateway_policy_reloads_total{{outcome=\"{outcome}\"}}"),
                )
            }
        };
        assert!(reloads("error").await >= 1.0);
        assert_eq!(
            charge().await.status,
            StatusCode::OK,
            "the old policy stays"
        );
        assert_eq!(refund().await.status, StatusCode::FORBIDDEN);

        // A valid change is picked up by the file watcher, without a signal.
        let support_may_refund = original
            .replace("spiffe://bank.example/ns/support/sa/*", SHOP)
            .replace(
                "from = [\"spiffe://bank.example/ns/shop/**\"]",
                "from = [\"spiffe://bank.example/ns/nobody/**\"]",
            );
        std::fs::write(&payments_file, support_may_refund).unwrap();
        eventually("the policy reload", || async { reloads("ok").await >= 1.0 }).await;
        assert_eq!(refund().await.status, StatusCode::OK);
        assert_eq!(charge().await.status, StatusCode::OK);
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_revoked_peer_is_cut_off() {
    tokio::time::timeout(LIMIT, async {
        let mut mesh = Mesh::start().await;
        assert_eq!(
            call(mesh.shop_to_payments(), "POST", "/v1/charges", &[])
                .await
                .status,
            StatusCode::OK
        );
        let mut cli = Authority::open(&mesh.ca_dir).unwrap();
        cli.revoke_serial(
            &mesh.shop_agent.svid().info.serial,
            Some("test"),
            OffsetDateTime::now_utc(),
        )
        .unwrap();
        assert!(mesh.payments_agent.fetch_revocations().await.unwrap());
        // The pooled connection is closed, and a new one is refused after its handshake.
        let admin_addr = mesh.payments.admin;
        eventually("the revoked peer's connection to close", || async move {
            let (_, m) = admin(admin_addr, "/metrics").await;
            metric(
                &m,
                "meshgate_gateway_peer_connections_closed_total{outcome=\"revoked\"}",
            ) >= 1.0
        })
        .await;
        let a = call(mesh.shop_to_payments(), "POST", "/v1/charges", &[]).await;
        assert_eq!(a.status, StatusCode::BAD_GATEWAY, "{:?}", a.body);
        let (_, m) = admin(admin_addr, "/metrics").await;
        let revoked =
            "meshgate_gateway_handshake_failures_total{direction=\"inbound\",reason=\"revoked\"}";
        assert!(metric(&m, revoked) >= 1.0, "{m}");
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_peer_gateway_with_another_identity_is_not_spoken_to() {
    tokio::time::timeout(LIMIT, async {
        let mesh = Mesh::start().await;
        let ledger = mesh.shop.outbound_addr("ledger").unwrap();
        let a = call(ledger, "POST", "/v1/entries", &[]).await;
        assert_eq!(a.status, StatusCode::BAD_GATEWAY, "{:?}", a.body);
        let body = a.json();
        assert_eq!(body["error"], "bad_gateway");
        assert!(body["message"].as_str().unwrap().contains(PAYMENTS), "{body}");
        assert_eq!(mesh.echo.count(), 0);
        let (_, m) = admin(mesh.shop.admin, "/metrics").await;
        let sample = "meshgate_gateway_handshake_failures_total{direction=\"outbound\",reason=\"unexpected_peer\"}";
        assert_eq!(metric(&m, sample), 1.0, "{m}");
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn an_oversized_request_head_is_refused_and_the_listener_keeps_serving() {
    tokio::time::timeout(LIMIT, async {
        let mesh = Mesh::start().await;
        let huge = "x".repeat(64 * 1024);
        let mut tcp = TcpStream::connect(mesh.shop_to_payments()).await.unwrap();
        let head = format!("GET /v1/charges/ch_1 HTTP/1.1\r\nhost: p\r\nx-big: {huge}\r\n\r\n");
        // The gateway may close before it has read everything; the answer is what counts.
        let _ = tcp.write_all(head.as_bytes()).await;
        let mut answer = Vec::new();
        let _ = tcp.read_to_end(&mut answer).await;
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
        assert_eq!(mesh.echo.count(), 0);
        let a = call(mesh.shop_to_payments(), "GET", "/v1/charges/ch_1", &[]).await;
        assert_eq!(a.status, StatusCode::OK);
    })
    .await
    .unwrap();
}
