//! Hostile clients of the CA server (`ca serve`) on 127.0.0.1, beyond tests/ca_hostile.rs:
//! protocol-level abuse (HTTP/1.0 without Host, thousands of headers, a 100 KB URI, chunked
//! framing that lies or never ends, smuggling headers), bodies that are JSON only in name
//! (form-encoded, duplicate keys, nesting past serde's limit), tokens that are garbage or
//! forged, CSRs that are DER, a private key, or thousands of extensions, and TLS that is not
//! what the CA speaks (TLS 1.2 only, plain HTTP, h2 only, TLS to the admin port, client
//! certificates our own intermediate signed for another trust domain or two IDs, the
//! intermediate itself). After each, a normal enrollment still succeeds.

use std::sync::Arc;
use std::time::Duration;

use meshgate_ca::server::ServeConfig;
use meshgate_identity::bundle::pem_encode;
use meshgate_identity::tls::{ALPN_H2, client_config};
use meshgate_identity::verifier::{SharedBundles, SpiffeServerVerifier};
use meshgate_identity::{BundleSet, SpiffeId};
use time::OffsetDateTime;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::wire::{
    assert_protocol_version_alert, intermediate_as_leaf, raw_exchange, signed_by_our_intermediate,
    tls12_client_hello,
};
use crate::support::ca_client::{
    CA_ID, CaHarness, Response, STEP, connect, csr_pem, get, post, read_response, send, test_config,
};

const ID: &str = "spiffe://bank.example/ns/shop/sa/checkout";

/// Sends `raw` over TLS and returns the answer, or None when the server closed instead.
async fn exchange(h: &CaHarness, raw: Vec<u8>) -> Option<Response> {
    let tls = connect(h.addr(), h.ca_config(None)).await.unwrap();
    let (mut rd, mut wr) = tokio::io::split(tls);
    let writer = tokio::spawn(async move {
        let _ = wr.write_all(&raw).await;
        let _ = wr.flush().await;
        wr
    });
    let r = match read_response(&mut rd).await {
        Ok(r) => Some(r),
        Err(e) => {
            assert_ne!(e.kind(), std::io::ErrorKind::TimedOut, "{e}");
            None
        }
    };
    writer.abort();
    r
}

fn enroll_body(token: &str, csr: &str) -> Vec<u8> {
    serde_json::json!({ "token": token, "csr": csr })
        .to_string()
        .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http10_without_host_is_answered_and_the_server_goes_on() {
    let mut h = CaHarness::start().await;
    let r = exchange(&h, b"GET /v1/bundle.pem HTTP/1.0\r\n\r\n".to_vec()).await;
    let r = r.expect("an answer to HTTP/1.0");
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains("BEGIN CERTIFICATE"));
    // An absolute-form URI for another host, and a request line of garbage.
    let r = exchange(&h, b"GET http://evil.example/v1/bundle.pem HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n".to_vec()).await;
    if let Some(r) = r {
        assert!(matches!(r.status, 200 | 400 | 404), "{}", r.status);
    }
    let r = exchange(&h, b"\x00\x01\x02 / HTTP/9.9\r\n\r\n".to_vec()).await;
    if let Some(r) = r {
        assert_eq!(r.status, 400, "{}", r.text());
    }
    h.assert_serving().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_headers_and_a_100_kb_uri_are_refused() {
    let mut h = CaHarness::start().await;
    let mut many = b"GET /v1/bundle HTTP/1.1\r\nHost: ca\r\n".to_vec();
    for i in 0..5000 {
        many.extend_from_slice(format!("x-h{i}: v\r\n").as_bytes());
    }
    many.extend_from_slice(b"\r\n");
    if let Some(r) = exchange(&h, many).await {
        assert_eq!(r.status, 431, "{}", r.text());
    }
    let uri = format!(
        "GET /v1/bundle?{} HTTP/1.1\r\nHost: ca\r\n\r\n",
        "a".repeat(100 * 1024)
    );
    if let Some(r) = exchange(&h, uri.into_bytes()).await {
        assert!(matches!(r.status, 414 | 431 | 400), "{}", r.status);
    }
    h.assert_serving().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_bodies_that_lie_or_never_end_are_cut_off() {
    let cfg = ServeConfig {
        body_timeout: Duration::from_secs(1),
        ..test_config()
    };
    let mut h = CaHarness::start_with(cfg).await;
    let token = h.token(ID);
    // A chunk size that is not hex, and a chunk longer than it says.
    for chunks in [&b"zz\r\n{}\r\n0\r\n\r\n"[..], b"2\r\n{}{}{}\r\n0\r\n\r\n"] {
        let mut raw = b"POST /v1/enroll HTTP/1.1\r\nHost: ca\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".to_vec();
        raw.extend_from_slice(chunks);
        if let Some(r) = exchange(&h, raw).await {
            r.assert_error(400, "bad_request");
        }
    }
    // Chunks of one byte every 200 ms, with no last chunk: the body timeout ends it.
    let mut tls = connect(h.addr(), h.ca_config(None)).await.unwrap();
    tls.write_all(b"POST /v1/enroll HTTP/1.1\r\nHost: ca\r\nTransfer-Encoding: chunked\r\n\r\n")
        .await
        .unwrap();
    let (mut rd, mut wr) = tokio::io::split(tls);
    let trickle = tokio::spawn(async move {
        for _ in 0..100 {
            if wr.write_all(b"1\r\n \r\n").await.is_err() || wr.flush().await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(STEP, rd.read_to_end(&mut answer))
        .await
        .expect("the endless chunked body was never cut off");
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert!(text.contains("took too long"), "{text}");
    trickle.abort();
    // None of it spent the token.
    let r = h.enroll(&token, &csr_pem(ID)).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    h.assert_serving().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_length_with_transfer_encoding_takes_the_chunked_framing() {
    let mut h = CaHarness::start().await;
    let token = h.token(ID);
    // Content-Length promises the whole enrollment; the chunked framing (which wins, RFC 9112
    // 6.3) ends the body at once. The request is judged on the empty body, never on the bytes
    // Content-Length pointed at: 400, and the token in those bytes is not spent.
    let body = enroll_body(&token.reveal(), &csr_pem(ID));
    let mut raw = format!(
        "POST /v1/enroll HTTP/1.1\r\nHost: ca\r\nContent-Length: {}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n0\r\n\r\n",
        body.len()
    )
    .into_bytes();
    raw.extend_from_slice(&body);
    let r = exchange(&h, raw).await.expect("an answer");
    r.assert_error(400, "bad_request");
    // Two Content-Length headers that disagree: a protocol error.
    let raw = b"POST /v1/enroll HTTP/1.1\r\nHost: ca\r\nContent-Length: 2\r\nContent-Length: 40\r\nConnection: close\r\n\r\n{}";
    if let Some(r) = exchange(&h, raw.to_vec()).await {
        assert_eq!(r.status, 400, "{}", r.text());
    }
    let r = h.enroll(&token, &csr_pem(ID)).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    h.assert_serving().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_form_encoded_body_duplicate_keys_and_deep_nesting_are_bad_requests() {
    let mut h = CaHarness::start().await;
    let token = h.token(ID).reveal();
    let csr = csr_pem(ID);
    let form = format!("token={token}&csr=x").into_bytes();
    let mut raw = format!(
        "POST /v1/enroll HTTP/1.1\r\nHost: ca\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        form.len()
    )
    .into_bytes();
    raw.extend_from_slice(&form);
    let r = exchange(&h, raw).await.expect("an answer");
    r.assert_error(400, "bad_request");
    assert!(!r.text().contains(&token));
    // The same key twice: refused as a whole, not "the last one wins".
    let dup = format!(r#"{{"token": "{token}", "token": "mgt1.other.x", "csr": {csr:?}}}"#);
    let r = send(
        h.addr(),
        h.ca_config(None),
        &post("/v1/enroll", dup.as_bytes()),
    )
    .await
    .unwrap();
    r.assert_error(400, "bad_request");
    assert!(r.text().contains("line 1"), "{}", r.text());
    assert!(!r.text().contains(&token));
    // Nesting far past serde_json's recursion limit.
    let deep = format!(
        r#"{{"token": {}1{}, "csr": "x"}}"#,
        "[".repeat(20_000),
        "]".repeat(20_000)
    );
    let r = exchange(&h, post("/v1/enroll", deep.as_bytes()))
        .await
        .expect("an answer");
    r.assert_error(400, "bad_request");
    h.assert_serving().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_forged_tokens_get_the_one_refusal_and_are_not_echoed() {
    let mut h = CaHarness::start().await;
    let csr = csr_pem(ID);
    let real = h.token(ID).reveal();
    let (head, secret) = real.rsplit_once('.').unwrap();
    let forged_secret: String = secret.chars().rev().collect();
    let forged = format!("{head}.{forged_secret}");
    let garbage = format!("mgt1.{}", "\u{1F4A3}garbage\u{0}".repeat(1000));
    let mut messages = Vec::new();
    for token in [
        forged.as_str(),
        garbage.as_str(),
        "",
        "mgt1..",
        &"A".repeat(60_000),
    ] {
        let r = send(
            h.addr(),
            h.ca_config(None),
            &post("/v1/enroll", &enroll_body(token, &csr)),
        )
        .await
        .unwrap();
        if token.len() > 60_000 {
            // With the CSR, the body is over 64 KiB.
            r.assert_error(413, "payload_too_large");
            continue;
        }
        r.assert_error(401, "invalid_token");
        assert!(!r.text().contains(&forged_secret) && !r.text().contains("garbage"));
        messages.push(r.text());
    }
    messages.dedup();
    assert_eq!(
        messages.len(),
        1,
        "every token failure reads the same: {messages:?}"
    );
    assert!(
        !h.cli
            .list()
            .unwrap()
            .iter()
            .any(|c| c.spiffe_id.as_str() == ID)
    );
    h.assert_serving().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_der_csr_and_a_private_key_are_named_and_thousands_of_extensions_are_dropped() {
    let mut h = CaHarness::start().await;
    let pem = csr_pem(ID);
    // The API takes PEM; base64 DER without the armour is named as not PEM.
    let der_b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let key = meshgate_ca::KeyType::EcdsaP256
        .generate()
        .unwrap()
        .serialize_pem();
    let key_body = key.lines().nth(1).unwrap().to_owned();
    let (creds, _) = h.issue(ID, OffsetDateTime::now_utc(), Duration::from_secs(600));
    for csr in [der_b64.as_str(), key.as_str()] {
        let token = h.token(ID);
        let r = h.enroll(&token, csr).await.unwrap();
        r.assert_error(400, "csr_rejected");
        assert!(r.text().contains("PEM"), "{}", r.text());
        assert!(!r.text().contains(&key_body), "{}", r.text());
        let r = h.renew(creds.clone(), csr).await.unwrap();
        r.assert_error(400, "csr_rejected");
        assert!(r.text().contains("PEM"), "{}", r.text());
        assert!(!r.text().contains(&key_body), "{}", r.text());
    }
    // A CERTIFICATE REQUEST block holding 2500 private extensions (under the 64 KiB body
    // limit): the CA takes only the key and the ID from a CSR, so it issues the plain SVID
    // profile, carrying none of them.
    let csr = many_extensions_csr(2500);
    let token = h.token(ID);
    let enrolled = h.enroll(&token, &csr).await.unwrap();
    let renewed = h.renew(creds, &csr).await.unwrap();
    for r in [enrolled, renewed] {
        let chain = r.svid_chain();
        meshgate_identity::svid::check_leaf(&chain[0]).unwrap();
        assert!(
            chain[0].len() < 2048,
            "the leaf carries {} bytes",
            chain[0].len()
        );
    }
    h.assert_serving().await;
}

/// A PKCS#10 CSR for `ID` whose extension request holds `n` copies of a private extension,
/// signed by a fresh key.
fn many_extensions_csr(n: usize) -> String {
    let key = meshgate_ca::KeyType::EcdsaP256.generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.subject_alt_names = vec![rcgen::SanType::URI(ID.try_into().unwrap())];
    for i in 0..n {
        params
            .custom_extensions
            .push(rcgen::CustomExtension::from_oid_content(
                &[1, 3, 6, 1, 4, 1, 99999, u64::try_from(i).unwrap()],
                vec![0x05, 0x00],
            ));
    }
    let csr = params.serialize_request(&key).unwrap();
    pem_encode("CERTIFICATE REQUEST", csr.der())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls12_only_plain_http_and_h2_only_are_refused_at_the_handshake() {
    let mut h = CaHarness::start().await;
    let answer = raw_exchange(h.addr(), &tls12_client_hello()).await;
    assert_protocol_version_alert(&answer);
    let answer = raw_exchange(h.addr(), &get("/v1/bundle")).await;
    assert!(
        !String::from_utf8_lossy(&answer).contains("HTTP/1."),
        "plain HTTP was served on the TLS port"
    );
    // A client that speaks only h2: the CA speaks http/1.1 only, so ALPN fails.
    let bundles = Arc::new(SharedBundles::new(BundleSet::single(h.bundle())));
    let verifier = SpiffeServerVerifier::new(bundles, SpiffeId::parse(CA_ID).unwrap());
    let h2_only = Arc::new(client_config(Arc::new(verifier), None, &[ALPN_H2]).unwrap());
    match send(h.addr(), h2_only, &get("/v1/bundle")).await {
        Err(e) => assert_ne!(e.kind(), std::io::ErrorKind::TimedOut, "{e}"),
        Ok(r) => panic!("an h2-only client was answered: {}", r.status),
    }
    h.assert_serving().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_to_the_admin_port_is_refused_and_the_admin_port_goes_on() {
    let mut h = CaHarness::start().await;
    let answer = raw_exchange(h.server.admin_addr, &tls12_client_hello()).await;
    let text = String::from_utf8_lossy(&answer);
    assert!(
        answer.is_empty() || text.starts_with("HTTP/1.1 400"),
        "{text}"
    );
    assert_eq!(h.admin("/healthz").await.status, 200);
    h.assert_serving().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_our_intermediate_signed_against_the_rules_are_refused() {
    let mut h = CaHarness::start().await;
    let (_, chain) = h.issue(ID, OffsetDateTime::now_utc(), Duration::from_secs(600));
    let intermediate = chain[1].clone();
    let rogues = [
        signed_by_our_intermediate(
            &h.dir,
            &intermediate,
            &["spiffe://evil.example/ns/shop/sa/checkout"],
        ),
        signed_by_our_intermediate(
            &h.dir,
            &intermediate,
            &[ID, "spiffe://bank.example/ns/admin/sa/root"],
        ),
        intermediate_as_leaf(&h.dir, &intermediate),
    ];
    for creds in rogues {
        match h.renew(creds.clone(), &csr_pem(ID)).await {
            Ok(r) => r.assert_error(401, "unauthenticated"),
            Err(e) => assert_ne!(e.kind(), std::io::ErrorKind::TimedOut, "{e}"),
        }
        match send(h.addr(), h.ca_config(Some(creds)), &get("/v1/revocations")).await {
            Ok(r) => r.assert_error(401, "unauthenticated"),
            Err(e) => assert_ne!(e.kind(), std::io::ErrorKind::TimedOut, "{e}"),
        }
    }
    assert_eq!(
        crate::support::ca_client::metric(
            &h.metrics().await,
            "meshgate_ca_renewals_total{outcome=\"issued\"}"
        ),
        0.0
    );
    h.assert_serving().await;
}
