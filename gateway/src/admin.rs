//! The admin listener, plain HTTP on loopback: `/healthz`, `/readyz` (200 only while the SVID is
//! valid), `/metrics` (Prometheus text) and `/v1/identity` (who this gateway is right now).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::listen::{Shared, accept_loop};
use crate::reply::{Body, full, json_response};

pub(crate) async fn serve(listener: TcpListener, shared: Arc<Shared>, stop: watch::Receiver<bool>) {
    let state = shared.clone();
    accept_loop(listener, "admin", shared, stop, move |tcp, _| {
        let shared = state.clone();
        let timeout = shared.limits.header_read_timeout;
        async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(answer(&shared, &req)) }
            });
            let _ = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(timeout)
                .serve_connection(TokioIo::new(tcp), service)
                .await;
        }
    })
    .await;
}

fn answer(shared: &Shared, req: &Request<Incoming>) -> Response<Body> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n");
    }
    match req.uri().path() {
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" => match valid_until(shared) {
            Some(_) => text(StatusCode::OK, "ready\n"),
            None => text(StatusCode::SERVICE_UNAVAILABLE, "no valid SVID\n"),
        },
        "/metrics" => {
            if let Some(info) = shared.svid_info() {
                shared
                    .metrics
                    .svid_expiry
                    .set(i64::try_from(info.not_after).unwrap_or(i64::MAX));
            }
            let sequence = i64::try_from(shared.bundle_sequence()).unwrap_or(i64::MAX);
            shared.metrics.bundle_sequence.set(sequence);
            let mut r = Response::new(full(shared.metrics.render()));
            r.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            r
        }
        "/v1/identity" => match shared.svid_info() {
            Some(info) => {
                let body = serde_json::json!({
                    "spiffe_id": info.spiffe_id.as_str(),
                    "serial": info.serial.to_string(),
                    "expires_at": info.not_after,
                    "valid": valid_until(shared).is_some(),
                    "bundle_sequence": shared.bundle_sequence(),
                });
                json_response(StatusCode::OK, body.to_string())
            }
            None => text(StatusCode::SERVICE_UNAVAILABLE, "no SVID\n"),
        },
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// The SVID's notAfter when it is valid now.
fn valid_until(shared: &Shared) -> Option<u64> {
    let info = shared.svid_info()?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?.as_secs();
    (info.not_before <= now && now < info.not_after).then_some(info.not_after)
}

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}
