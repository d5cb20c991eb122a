//! The inbound gateway decides and forwards on one host: a request naming two (two `Host`
//! headers, or a `Host` that differs from the absolute-form target or `:authority`) is refused
//! with 400, and the service sees exactly the host the policy saw.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // test code

mod harness;

use bytes::Bytes;
use harness::{Pair, mtls};
use http_body_util::{BodyExt as _, Full};
use hyper::{Request, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use meshgate_identity::tls::{ALPN_H2, ALPN_HTTP11};
use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// One raw HTTP/1.1 request head over mTLS as shop; the status and the body.
async fn raw_http11(pair: &Pair, head: &str) -> (u16, Value) {
    let mut stream = mtls(pair.payments_inbound(), pair.shop_tls(&[ALPN_HTTP11]))
        .await
        .unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out).await;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status: u16 = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {text:?}"));
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
    // The echo answers with a Content-Length body; the gateway's refusals too.
    let body = serde_json::from_str(body).unwrap_or(Value::Null);
    (status, body)
}

fn hosts(echo: &Value) -> Vec<String> {
    echo["headers"]["host"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn http11_host_confusion_is_refused_and_one_host_is_forwarded() {
    let pair = Pair::start("").await;
    let refused = [
        // Absolute-form target and a different Host: the smuggling case.
        "GET http://public.example/v1/charges/c1 HTTP/1.1\r\nHost: admin.example\r\nConnection: close\r\n\r\n",
        // Two Host headers.
        "GET /v1/charges/c1 HTTP/1.1\r\nHost: public.example\r\nHost: admin.example\r\nConnection: close\r\n\r\n",
        // Two identical ones too.
        "GET /v1/charges/c1 HTTP/1.1\r\nHost: public.example\r\nHost: public.example\r\nConnection: close\r\n\r\n",
    ];
    let before = pair.echo.count();
    for head in refused {
        let (status, body) = raw_http11(&pair, head).await;
        // hyper itself may refuse some of these before the gateway sees them; never a 200.
        assert_eq!(status, 400, "{head:?}: {body}");
        if body != Value::Null {
            assert_eq!(body["error"], "bad_request", "{head:?}");
        }
    }
    assert_eq!(
        pair.echo.count(),
        before,
        "nothing refused reached the service"
    );

    // Absolute form with the same Host (case and default port aside): forwarded, one Host.
    let (status, echo) = raw_http11(
        &pair,
        "GET http://Public.Example/v1/charges/c1 HTTP/1.1\r\nHost: public.example:80\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200, "{echo}");
    assert_eq!(hosts(&echo), ["Public.Example"]);

    // Origin form: the Host header is the host.
    let (status, echo) = raw_http11(
        &pair,
        "GET /v1/charges/c1 HTTP/1.1\r\nHost: public.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200, "{echo}");
    assert_eq!(hosts(&echo), ["public.example"]);
}

/// One GET over h2 as shop with `:authority` from `uri` and these `host` headers.
async fn h2_get(pair: &Pair, uri: &str, host_headers: &[&str]) -> (StatusCode, Bytes) {
    let stream = mtls(pair.payments_inbound(), pair.shop_tls(&[ALPN_H2]))
        .await
        .unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut req = Request::builder().method("GET").uri(uri);
    for h in host_headers {
        req = req.header("host", *h);
    }
    let response = sender
        .send_request(req.body(Full::new(Bytes::new())).unwrap())
        .await
        .unwrap();
    let status = response.status();
    (
        status,
        response.into_body().collect().await.unwrap().to_bytes(),
    )
}

#[tokio::test]
async fn h2_authority_and_host_must_agree() {
    let pair = Pair::start("").await;
    let before = pair.echo.count();
    let (status, body) = h2_get(
        &pair,
        "https://public.example/v1/charges/c1",
        &["admin.example"],
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body:?}");
    let json: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["error"], "bad_request");
    let (status, _) = h2_get(
        &pair,
        "https://public.example/v1/charges/c1",
        &["public.example", "admin.example"],
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(pair.echo.count(), before);

    // :authority alone: the service sees it as Host.
    let (status, body) = h2_get(&pair, "https://public.example/v1/charges/c1", &[]).await;
    assert_eq!(status, StatusCode::OK, "{body:?}");
    let echo: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(hosts(&echo), ["public.example"]);
    // A matching Host (default port aside): one Host, the authority.
    let (status, body) = h2_get(
        &pair,
        "https://public.example/v1/charges/c1",
        &["PUBLIC.example:443"],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body:?}");
    let echo: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(hosts(&echo), ["public.example"]);
}
