#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // test code

//! Hostile input against the CA server (`meshgate ca serve`) on 127.0.0.1: garbage, oversize
//! bodies, bad CSRs, a foreign client certificate, a slowloris client and idle connections. After
//! each, a normal enrollment shows the server still serves.

mod support;

use std::time::Duration;

use meshgate_ca::server::ServeConfig;
use meshgate_identity::bundle::pem_encode;
use meshgate_identity::tls::provider;
use rustls::SignatureScheme;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use support::TestCa;
use support::ca_client::{
    CaHarness, STEP, connect, csr_pem, get, issued_for, metric, metric_sum, post, read_response,
    send, test_config,
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::time::{sleep, timeout};

const ID: &str = "spiffe://bank.example/ns/shop/sa/checkout";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_json_is_a_bad_request() {
    let mut h = CaHarness::start().await;
    let token = h.token(ID).reveal();
    let bodies: [Vec<u8>; 4] = [
        b"{not json".to_vec(),
        b"\xff\xfe\x00garbage".to_vec(),
        br#"{"token": 12, "csr": []}"#.to_vec(),
        // Unknown fields are refused, not ignored.
        format!(r#"{{"token": "{token}", "csr": "x", "admin": true}}"#).into_bytes(),
    ];
    for body in bodies {
        let r = send(h.addr(), h.ca_config(None), &post("/v1/enroll", &body))
            .await
            .unwrap();
        r.assert_error(400, "bad_request");
        assert!(!r.text().contains(&token), "the token is never echoed");
    }
    h.assert_serving().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_mebibyte_body_is_refused() {
    let mut h = CaHarness::start().await;
    let token = h.token(ID);
    let csr = "A".repeat(1 << 20);
    let body = serde_json::json!({ "token": token.reveal(), "csr": csr }).to_string();
    let declared = post("/v1/enroll", body.as_bytes());
    let mut chunked = b"POST /v1/enroll HTTP/1.1\r\nHost: ca\r\nTransfer-Encoding: chunked\r\n\
                        Connection: close\r\n\r\n"
        .to_vec();
    for part in body.as_bytes().chunks(16 * 1024) {
        chunked.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
        chunked.extend_from_slice(part);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");

    for raw in [declared, chunked] {
        let tls = connect(h.addr(), h.ca_config(None)).await.unwrap();
        let (mut rd, mut wr) = tokio::io::split(tls);
        // The server may answer and close before reading it all: write on the side.
        let writer = tokio::spawn(async move {
            let _ = wr.write_all(&raw).await;
            let _ = wr.flush().await;
            wr
        });
        match read_response(&mut rd).await {
            Ok(r) => r.assert_error(413, "payload_too_large"),
            // A closed connection is an acceptable refusal too; a timeout is not.
            Err(e) => assert_ne!(e.kind(), std::io::ErrorKind::TimedOut, "{e}"),
        }
        writer.abort();
    }
    // The body was never read as JSON: the token is unspent.
    let r = h.enroll(&token, &csr_pem(ID)).await;
    assert_eq!(r.unwrap().status, 200);
    h.assert_serving().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_headers_wrong_methods_and_unknown_paths_get_plain_refusals() {
    let mut h = CaHarness::start().await;
    let mut raw = b"POST /v1/enroll HTTP/1.1\r\nHost: ca\r\nX-Big: ".to_vec();
    raw.extend(std::iter::repeat_n(b'a', 64 * 1024));
    raw.extend_from_slice(b"\r\nContent-Length: 0\r\n\r\n");
    match send(h.addr(), h.ca_config(None), &raw).await {
        Ok(r) => assert_eq!(r.status, 431, "{}", r.text()),
        Err(e) => assert_ne!(e.kind(), std::io::ErrorKind::TimedOut, "{e}"),
    }
    let r = send(h.addr(), h.ca_config(None), &get("/v1/enroll"))
        .await
        .unwrap();
    r.assert_error(405, "method_not_allowed");
    let r = send(h.addr(), h.ca_config(None), &post("/v1/../admin", b"{}"))
        .await
        .unwrap();
    r.assert_error(404, "not_found");
    h.assert_serving().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_csr_that_is_not_a_csr_is_rejected() {
    let mut h = CaHarness::start().await;
    let junk_pem = pem_encode("CERTIFICATE REQUEST", b"\x30\x03\x02\x01\x00 not DER");
    for csr in ["not a csr", "", junk_pem.as_str()] {
        let token = h.token(ID);
        let r = h.enroll(&token, csr).await.unwrap();
        r.assert_error(400, "csr_rejected");
    }
    // The same on renewal.
    let (creds, _) = h.issue(
        ID,
        time::OffsetDateTime::now_utc(),
        Duration::from_secs(600),
    );
    let r = h.renew(creds, "not a csr").await.unwrap();
    r.assert_error(400, "csr_rejected");
    h.assert_serving().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_csr_asking_for_ca_true_is_rejected() {
    let mut h = CaHarness::start().await;
    let token = h.token(ID);
    let r = h.enroll(&token, &ca_csr_pem(ID)).await.unwrap();
    r.assert_error(400, "csr_rejected");
    assert!(r.text().contains("ca-requested"), "{}", r.text());
    assert_eq!(issued_for(&h, ID), 0);
    h.assert_serving().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_from_another_ca_is_refused() {
    let mut h = CaHarness::start().await;
    // Same trust domain, same SPIFFE ID, another CA's key.
    let mut rogue = TestCa::new("bank.example");
    let creds = rogue.svid(ID);
    match h.renew(creds, &csr_pem(ID)).await {
        Ok(r) => r.assert_error(401, "unauthenticated"),
        Err(e) => assert_ne!(e.kind(), std::io::ErrorKind::TimedOut, "{e}"),
    }
    let metrics = h.metrics().await;
    assert!(
        metric_sum(&metrics, "meshgate_ca_handshake_failures_total") >= 1.0,
        "{metrics}"
    );
    assert_eq!(
        metric(&metrics, "meshgate_ca_renewals_total{outcome=\"issued\"}"),
        0.0
    );
    h.assert_serving().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slowloris_client_is_cut_off_while_others_are_served() {
    let cfg = ServeConfig {
        header_read_timeout: Duration::from_secs(1),
        ..test_config()
    };
    let mut h = CaHarness::start_with(cfg).await;
    // A client that completes the handshake and then says nothing is cut off too.
    let mut silent = connect(h.addr(), h.ca_config(None)).await.unwrap();
    let tls = connect(h.addr(), h.ca_config(None)).await.unwrap();
    let (mut rd, mut wr) = tokio::io::split(tls);
    // One header byte every 300 ms; the head never ends.
    let slow = tokio::spawn(async move {
        let head = b"GET /v1/bundle HTTP/1.1\r\nHost: ca\r\nX-Slow: ";
        for b in head.iter().chain(std::iter::repeat(&b'a')).take(200) {
            if wr.write_all(&[*b]).await.is_err() || wr.flush().await.is_err() {
                return;
            }
            sleep(Duration::from_millis(300)).await;
        }
    });
    let cut_off = async {
        let mut seen = Vec::new();
        timeout(STEP, rd.read_to_end(&mut seen)).await
    };
    let (cut_off, ()) = tokio::join!(cut_off, async {
        // Meanwhile, a normal client is served.
        let token = h.token(ID);
        let r = h.enroll(&token, &csr_pem(ID)).await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
    });
    // EOF or a reset, but within the bound: the server closed the connection.
    assert!(cut_off.is_ok(), "the slow connection was not closed");
    slow.abort();
    let mut seen = Vec::new();
    let closed = timeout(STEP, silent.read_to_end(&mut seen)).await;
    assert!(closed.is_ok(), "the silent connection was not closed");
    assert!(seen.is_empty());
    h.assert_serving().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_beyond_the_limit_do_not_stop_the_server() {
    let cfg = ServeConfig {
        max_connections: 10,
        handshake_timeout: Duration::from_secs(1),
        ..test_config()
    };
    let mut h = CaHarness::start_with(cfg).await;
    let mut idle = Vec::new();
    for _ in 0..20 {
        let tcp = timeout(STEP, TcpStream::connect(h.addr())).await.unwrap();
        idle.push(tcp.unwrap());
    }
    assert_eq!(h.admin("/healthz").await.status, 200);
    // A normal request gets through once the handshake timeout frees slots; until then it is
    // refused at once (the connection is closed), never left hanging.
    let token = h.token(ID);
    let served = timeout(STEP, async {
        loop {
            match h.enroll(&token, &csr_pem(ID)).await {
                Ok(r) => return r,
                Err(e) => assert_ne!(e.kind(), std::io::ErrorKind::TimedOut, "{e}"),
            }
            sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("a normal request was never served");
    assert_eq!(served.status, 200, "{}", served.text());
    let metrics = h.metrics().await;
    let refused = metric(&metrics, "meshgate_ca_refused_connections_total");
    let timeouts = metric(
        &metrics,
        "meshgate_ca_handshake_failures_total{reason=\"timeout\"}",
    );
    assert!(refused >= 1.0 && timeouts >= 1.0, "{metrics}");
    drop(idle);
    h.assert_serving().await;
}

/// A PKCS#10 request for `id` that also asks for basicConstraints cA=true, signed with a fresh
/// P-256 key. Built by hand: rcgen refuses to put `is_ca` in a CSR, and the root package's tests
/// have no rcgen dependency anyway.
fn ca_csr_pem(id: &str) -> String {
    let key = meshgate_ca::KeyType::EcdsaP256.generate().unwrap();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let signing_key = provider().key_provider.load_private_key(key).unwrap();
    let spki = signing_key.public_key().unwrap().as_ref().to_vec();

    let oid = |bytes: &[u8]| tlv(0x06, bytes);
    let san = seq(&[
        &oid(&[0x55, 0x1d, 0x11]),
        &tlv(0x04, &seq(&[&tlv(0x86, id.as_bytes())])),
    ]);
    let basic_constraints = seq(&[
        &oid(&[0x55, 0x1d, 0x13]),
        &[0x01, 0x01, 0xff],                      // critical
        &tlv(0x04, &seq(&[&[0x01, 0x01, 0xff]])), // cA TRUE
    ]);
    let extension_request = seq(&[
        &oid(&[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x0e]),
        &tlv(0x31, &seq(&[&san, &basic_constraints])),
    ]);
    let info = seq(&[
        &[0x02, 0x01, 0x00], // version 0
        &[0x30, 0x00],       // empty subject
        &spki,
        &tlv(0xa0, &extension_request),
    ]);
    let signer = signing_key
        .choose_scheme(&[SignatureScheme::ECDSA_NISTP256_SHA256])
        .unwrap();
    let signature = signer.sign(&info).unwrap();
    let mut bits = vec![0x00];
    bits.extend_from_slice(&signature);
    let ecdsa_with_sha256 = seq(&[&oid(&[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02])]);
    let csr = seq(&[&info, &ecdsa_with_sha256, &tlv(0x03, &bits)]);
    pem_encode("CERTIFICATE REQUEST", &csr)
}

/// One DER TLV (definite length, up to 64 KiB).
fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let n = content.len();
    let mut out = vec![tag];
    match n {
        0..0x80 => out.push(n as u8),
        0x80..0x100 => out.extend_from_slice(&[0x81, n as u8]),
        _ => out.extend_from_slice(&[0x82, (n >> 8) as u8, n as u8]),
    }
    out.extend_from_slice(content);
    out
}

fn seq(parts: &[&[u8]]) -> Vec<u8> {
    tlv(0x30, &parts.concat())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_never_finishes_is_cut_off_and_one_address_cannot_take_every_slot() {
    let cfg = ServeConfig {
        body_timeout: Duration::from_secs(1),
        max_connections_per_ip: 3,
        handshake_timeout: Duration::from_secs(1),
        ..test_config()
    };
    let mut h = CaHarness::start_with(cfg).await;
    // Headers promise 60,000 bytes; one arrives. The header timeout does not apply any more, the
    // body timeout does: the server answers 400 and frees the slot.
    let mut slow = connect(h.addr(), h.ca_config(None)).await.unwrap();
    let head = "POST /v1/enroll HTTP/1.1\r\nHost: ca\r\nContent-Type: application/json\r\nContent-Length: 60000\r\n\r\n{";
    slow.write_all(head.as_bytes()).await.unwrap();
    slow.flush().await.unwrap();
    let mut answer = Vec::new();
    let _ = timeout(STEP, slow.read_to_end(&mut answer))
        .await
        .expect("the slow body was never cut off");
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert!(text.contains("took too long"), "{text}");

    // Three silent connections from 127.0.0.1 use up this address's share: a fourth is closed at
    // once instead of waiting, and once the handshake timeout frees them a request is served.
    let mut idle = Vec::new();
    for _ in 0..3 {
        idle.push(
            timeout(STEP, TcpStream::connect(h.addr()))
                .await
                .unwrap()
                .unwrap(),
        );
    }
    sleep(Duration::from_millis(200)).await;
    let refused = connect(h.addr(), h.ca_config(None)).await;
    assert!(
        refused.is_err(),
        "a fourth connection from one address was accepted"
    );
    let metrics = h.metrics().await;
    assert!(
        metric(&metrics, "meshgate_ca_refused_connections_total") >= 1.0,
        "{metrics}"
    );
    sleep(Duration::from_millis(1500)).await;
    drop(idle);
    h.assert_serving().await;
}
