//! A small HTTPS client for the enrollment API: one request per connection, HTTP/1.1 over TLS 1.3,
//! a timeout on each step, and a cap on the answer's size. Errors name the CA and the step, never
//! the request body (it may hold a bootstrap token).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::header::{ACCEPT, CONTENT_TYPE, HOST};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use meshgate_identity::api::ErrorResponse;
use rustls::{CertificateError, ClientConfig, OtherError};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_rustls::TlsConnector;

use super::url::CaUrl;
use crate::error::Error;
use meshgate_identity::verifier::PeerError;

/// Time allowed for each of: the TCP connect, the TLS handshake, the whole answer.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest answer read from the CA.
pub const MAX_ANSWER_BYTES: usize = 1024 * 1024;
/// Longest part of a CA error message that is shown.
const MAX_MESSAGE_CHARS: usize = 300;

/// GET `path` and read a JSON answer.
pub(crate) async fn get_json<T: DeserializeOwned>(
    url: &CaUrl,
    config: Arc<ClientConfig>,
    path: &str,
) -> Result<T, Error> {
    let body = exchange(url, config, Method::GET, path, None).await?;
    parse(&body)
}

/// GET `path` and return the raw answer.
pub(crate) async fn get_bytes(
    url: &CaUrl,
    config: Arc<ClientConfig>,
    path: &str,
) -> Result<Bytes, Error> {
    exchange(url, config, Method::GET, path, None).await
}

/// POST a JSON body to `path` and read a JSON answer.
pub(crate) async fn post_json<B: Serialize, T: DeserializeOwned>(
    url: &CaUrl,
    config: Arc<ClientConfig>,
    path: &str,
    body: &B,
) -> Result<T, Error> {
    let body = serde_json::to_vec(body).map_err(|e| Error::Key(format!("request body: {e}")))?;
    let answer = exchange(url, config, Method::POST, path, Some(body)).await?;
    parse(&answer)
}

fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, Error> {
    serde_json::from_slice(body).map_err(|e| Error::BadAnswer(format!("unexpected JSON: {e}")))
}

async fn exchange(
    url: &CaUrl,
    config: Arc<ClientConfig>,
    method: Method,
    path: &str,
    body: Option<Vec<u8>>,
) -> Result<Bytes, Error> {
    let ca = url.to_string();
    let timed_out = |stage| Error::Timeout {
        ca: ca.clone(),
        stage,
        seconds: STEP_TIMEOUT.as_secs(),
    };
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header(HOST, url.authority())
        .header(ACCEPT, "application/json")
        .header(CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .map_err(|e| Error::Http {
            ca: ca.clone(),
            reason: e.to_string(),
        })?;
    let tcp = timeout(STEP_TIMEOUT, TcpStream::connect((url.host(), url.port())))
        .await
        .map_err(|_| timed_out("connect"))?
        .map_err(|source| Error::Connect {
            ca: ca.clone(),
            source,
        })?;
    // The request's head and body may leave in two writes: the second must not wait for the
    // CA's delayed ACK of the first (Nagle).
    let _ = tcp.set_nodelay(true);
    let tls = timeout(
        STEP_TIMEOUT,
        TlsConnector::from(config).connect(url.server_name(), tcp),
    )
    .await
    .map_err(|_| timed_out("TLS handshake"))?
    .map_err(|e| handshake_error(&ca, &e))?;

    let http_err = |e: hyper::Error| Error::Http {
        ca: ca.clone(),
        reason: chain_text(&e),
    };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(http_err)?;
    // The connection task ends with the exchange: one request per connection.
    let conn = tokio::spawn(conn);
    let answer = timeout(STEP_TIMEOUT, async {
        let response = sender.send_request(request).await.map_err(http_err)?;
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await
            .map_err(|e| Error::Http {
                ca: ca.clone(),
                reason: format!("reading the answer: {e}"),
            })?
            .to_bytes();
        Ok::<_, Error>((status, body))
    })
    .await;
    conn.abort();
    let (status, body) = answer.map_err(|_| timed_out("answer"))??;
    if status.is_success() {
        return Ok(body);
    }
    Err(refusal(status.as_u16(), &body))
}

/// The CA's error answer as an error. Its message is cut short and stripped of control characters.
fn refusal(status: u16, body: &[u8]) -> Error {
    match serde_json::from_slice::<ErrorResponse>(body) {
        Ok(e) => Error::Refused {
            status,
            code: serde_json::to_value(e.error)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default(),
            message: printable(&e.message),
        },
        Err(_) => Error::Refused {
            status,
            code: "no error code".into(),
            message: "the answer is not a meshgate error".into(),
        },
    }
}

fn printable(text: &str) -> String {
    let mut out: String = text
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_MESSAGE_CHARS)
        .collect();
    if text.chars().count() > MAX_MESSAGE_CHARS {
        out.push('…');
    }
    out
}

/// Turns a failed handshake into an error that says why, as plainly as rustls allows.
fn handshake_error(ca: &str, e: &std::io::Error) -> Error {
    let tls = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    if let Some(rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(inner)))) = tls
    {
        if let Some(PeerError::PinnedRootNotSent) = inner.downcast_ref::<PeerError>() {
            return Error::PinnedRootNotSent { ca: ca.to_owned() };
        }
        return Error::Handshake {
            ca: ca.to_owned(),
            reason: format!("the CA's certificate was rejected: {inner}"),
        };
    }
    Error::Handshake {
        ca: ca.to_owned(),
        reason: e.to_string(),
    }
}

fn chain_text(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_keep_the_code_and_a_clean_message() {
        let body = br#"{"error":"invalid_token","message":"bad\ntoken"}"#;
        let e = refusal(401, body);
        assert_eq!(
            e.to_string(),
            "the CA refused the request (HTTP 401, invalid_token): badtoken"
        );
        assert_eq!(
            e.refusal_code(),
            Some(meshgate_identity::api::ErrorCode::InvalidToken)
        );
        let e = refusal(502, b"<html>");
        assert!(e.to_string().contains("HTTP 502"), "{e}");
        let long = format!(r#"{{"error":"internal","message":"{}"}}"#, "x".repeat(5000));
        assert!(refusal(500, long.as_bytes()).to_string().len() < 500);
    }
}
