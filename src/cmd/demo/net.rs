//! The demo's network ends: the echo service behind each gateway, the local apps' plain HTTP
//! calls into an outbound listener, and an intruder's direct mTLS call to an inbound listener.

use std::convert::Infallible;
use std::error::Error as StdError;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;

/// Longest wait for any one call.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// What came back from a call that got an HTTP answer.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: Bytes,
}

/// How a call ended.
#[derive(Debug)]
pub enum Reply {
    Http(Answer),
    /// The TLS handshake or the connection failed; the alert the client received, if any.
    Refused {
        alert: Option<String>,
        error: String,
    },
}

/// A service on 127.0.0.1:0 that answers every request with JSON naming itself, the request,
/// and the caller's identity as its gateway put it in `x-forwarded-client-cert`.
pub async fn echo(service: &'static str) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let answer = service_fn(move |req: Request<Incoming>| async move {
                    let xfcc = req
                        .headers()
                        .get("x-forwarded-client-cert")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("");
                    let body = serde_json::json!({
                        "service": service,
                        "method": req.method().as_str(),
                        "path": req.uri().path(),
                        "xfcc": xfcc,
                    });
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body.to_string()))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), answer)
                    .await;
            });
        }
    });
    Ok(addr)
}

/// A local app's call: plain HTTP/1.1 to its gateway's outbound listener at `addr`.
pub async fn app_call(addr: SocketAddr, host: &str, method: &str, path: &str) -> Reply {
    match tokio::time::timeout(CALL_TIMEOUT, plain(addr, host, method, path)).await {
        Ok(Ok(answer)) => Reply::Http(answer),
        Ok(Err(e)) => Reply::Refused {
            alert: None,
            error: format!("{e:#}"),
        },
        Err(_) => Reply::Refused {
            alert: None,
            error: "timed out".into(),
        },
    }
}

async fn plain(addr: SocketAddr, host: &str, method: &str, path: &str) -> anyhow::Result<Answer> {
    let tcp = TcpStream::connect(addr).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(conn);
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", host)
        .body(Full::new(Bytes::new()))?;
    let response = sender.send_request(req).await?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await?.to_bytes();
    Ok(Answer { status, body })
}

/// A call that skips every gateway on the caller's side: mTLS with `tls` straight to the
/// inbound listener at `addr`, HTTP/2 as gateways speak to each other.
pub async fn direct_call(
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    method: &str,
    path: &str,
) -> Reply {
    match tokio::time::timeout(CALL_TIMEOUT, h2(addr, tls, method, path)).await {
        Ok(reply) => reply,
        Err(_) => Reply::Refused {
            alert: None,
            error: "timed out".into(),
        },
    }
}

async fn h2(addr: SocketAddr, tls: Arc<rustls::ClientConfig>, method: &str, path: &str) -> Reply {
    let refused = |e: &(dyn StdError + 'static)| Reply::Refused {
        alert: alert(e),
        error: e.to_string(),
    };
    let tcp = match TcpStream::connect(addr).await {
        Ok(t) => t,
        Err(e) => return refused(&e),
    };
    let name = ServerName::IpAddress(addr.ip().into());
    // TLS 1.3: the client's side of the handshake ends before the server has judged the client
    // certificate, so a refusal shows on the first read, as an alert.
    let stream = match TlsConnector::from(tls).connect(name, tcp).await {
        Ok(s) => s,
        Err(e) => return refused(&e),
    };
    let (mut sender, conn) =
        match hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
        {
            Ok(x) => x,
            Err(e) => return refused(&e),
        };
    let conn = tokio::spawn(conn);
    let req = match Request::builder()
        .method(method)
        .uri(format!("https://{addr}{path}"))
        .body(Full::new(Bytes::new()))
    {
        Ok(r) => r,
        Err(e) => return refused(&e),
    };
    let response = match sender.send_request(req).await {
        Ok(r) => r,
        // The connection's own error carries the alert; the request's only says it closed.
        Err(e) => {
            return match conn.await {
                Ok(Err(conn_error)) => refused(&conn_error),
                _ => refused(&e),
            };
        }
    };
    let status = response.status().as_u16();
    match response.into_body().collect().await {
        Ok(body) => Reply::Http(Answer {
            status,
            body: body.to_bytes(),
        }),
        Err(e) => refused(&e),
    }
}

/// The TLS alert received, if `e` or one of its sources says so. (Read from the messages: the
/// HTTP/2 and I/O error layers between hyper and rustls do not all expose their sources.)
fn alert(e: &(dyn StdError + 'static)) -> Option<String> {
    const MARK: &str = "received fatal alert: ";
    let mut next = Some(e);
    while let Some(err) = next {
        let text = err.to_string();
        if let Some((_, rest)) = text.split_once(MARK) {
            return rest.split_whitespace().next().map(str::to_owned);
        }
        next = err.source();
    }
    None
}
