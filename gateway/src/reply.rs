//! The one place where a refused or failed request becomes an HTTP answer: a status and a JSON
//! body `{"error": "<stable code>", "message": "..."}`. A denial names no rule: which rule decided
//! is for the access log, not for the peer.

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt as _, Full};
use hyper::header::{CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use hyper::{Response, StatusCode};

/// The body type of every answer the gateway gives: a relayed body or one of its own.
pub type Body = BoxBody<Bytes, BoxError>;

/// Why a body failed: hyper's error for a relayed one, or the gateway's own (an idle stream).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why the gateway answers instead of the service.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refusal {
    /// The policy denied the request.
    Forbidden,
    /// The peer sent more requests than its rate limit allows; it may retry after this many
    /// seconds.
    RateLimited { retry_after_secs: u64 },
    /// The request cannot be decided safely (an unnormalizable path, an unreadable host).
    BadRequest(&'static str),
    /// The local service, or the peer gateway, could not be reached or failed mid-answer.
    BadGateway(String),
    /// Connecting to the next hop, or its answer, took too long.
    GatewayTimeout(String),
    /// The caller stopped sending its request body.
    RequestTimeout(&'static str),
}

impl Refusal {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Forbidden => StatusCode::FORBIDDEN,
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::BadGateway(_) => StatusCode::BAD_GATEWAY,
            Self::GatewayTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            Self::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
        }
    }

    /// The stable code in the body.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Forbidden => "forbidden",
            Self::RateLimited { .. } => "rate_limited",
            Self::BadRequest(_) => "bad_request",
            Self::BadGateway(_) => "bad_gateway",
            Self::GatewayTimeout(_) => "gateway_timeout",
            Self::RequestTimeout(_) => "request_timeout",
        }
    }

    pub(crate) fn message(&self) -> &str {
        match self {
            Self::Forbidden => {
                "the policy of this service does not allow this request from your identity"
            }
            Self::RateLimited { .. } => {
                "your identity has sent more requests than this service's rate limit allows; retry later"
            }
            Self::BadRequest(m) | Self::RequestTimeout(m) => m,
            Self::BadGateway(m) | Self::GatewayTimeout(m) => m,
        }
    }

    pub fn into_response(self) -> Response<Body> {
        let body = serde_json::json!({ "error": self.code(), "message": self.message() });
        let mut r = json_response(self.status(), body.to_string());
        if let Self::RateLimited { retry_after_secs } = self {
            r.headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(retry_after_secs));
        }
        r
    }
}

/// A response with a JSON body the gateway made itself.
pub fn json_response(status: StatusCode, json: String) -> Response<Body> {
    let mut r = Response::new(full(json));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// A body of the gateway's own.
pub fn full(content: impl Into<Bytes>) -> Body {
    Full::new(content.into())
        .map_err(|never: Infallible| match never {})
        .boxed()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test code

    use super::*;

    #[tokio::test]
    async fn a_denial_is_403_json_that_names_no_rule() {
        let r = Refusal::Forbidden.into_response();
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        assert_eq!(r.headers()[CONTENT_TYPE], "application/json");
        let body = r.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"], "forbidden");
        assert!(v["message"].as_str().unwrap().contains("does not allow"));
    }

    #[tokio::test]
    async fn over_the_rate_limit_is_429_json_with_retry_after() {
        let r = Refusal::RateLimited {
            retry_after_secs: 2,
        }
        .into_response();
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()[RETRY_AFTER], "2");
        let body = r.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"], "rate_limited");
    }
}
