//! The enrollment API's wire types (shared by the CA server and the agent, so neither depends on
//! the other) and the bootstrap token format:
//!
//! ```text
//! mgt1.<base64url(JSON {ca_url, root_sha256, spiffe_id, expires_at})>.<base64url(32 random bytes)>
//! ```
//!
//! The secret part never appears in `Debug` or `Display`; only `BootstrapToken::reveal` shows it.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

use crate::spiffe_id::SpiffeId;
use crate::svid::Serial;

pub const PATH_ENROLL: &str = "/v1/enroll";
pub const PATH_RENEW: &str = "/v1/renew";
pub const PATH_BUNDLE: &str = "/v1/bundle";
pub const PATH_BUNDLE_PEM: &str = "/v1/bundle.pem";
pub const PATH_REVOCATIONS: &str = "/v1/revocations";
/// Largest request body the CA reads.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// The SPIFFE ID path the CA serves under, in its own trust domain.
pub const CA_ID_PATH: &str = "/meshgate/ca";

/// Bytes of randomness in a token's secret.
pub const TOKEN_SECRET_BYTES: usize = 32;
const TOKEN_PREFIX: &str = "mgt1";
/// Longest token text accepted, so a hostile value costs little to reject.
const MAX_TOKEN_CHARS: usize = 4096;

/// `POST /v1/enroll`. `Debug` hides the token.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollRequest {
    pub token: String,
    /// PKCS#10 CSR in PEM.
    pub csr: String,
}

impl fmt::Debug for EnrollRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnrollRequest")
            .field("token", &"<redacted>")
            .field("csr", &self.csr)
            .finish()
    }
}

/// `POST /v1/renew` (over mTLS with the current SVID).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenewRequest {
    pub csr: String,
}

/// The answer to enroll and renew.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SvidResponse {
    /// Leaf then intermediate, PEM.
    pub svid: String,
    /// The trust domain's roots, PEM.
    pub bundle: String,
    /// The leaf's notAfter, unix seconds.
    pub expires_at: i64,
}

/// `GET /v1/revocations`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevocationList {
    /// Bumped on every new revocation.
    pub sequence: u64,
    pub revoked: Vec<RevokedEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevokedEntry {
    pub serial: Serial,
    pub spiffe_id: SpiffeId,
    /// When it was revoked, unix seconds.
    pub at: i64,
}

/// Every error answer: `{"error": "<stable code>", "message": "..."}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorResponse {
    pub error: ErrorCode,
    pub message: String,
}

/// Stable error codes of the enrollment API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorCode {
    /// Every token failure (unknown, spent, expired, revoked, malformed): one answer that tells
    /// an attacker nothing.
    InvalidToken,
    /// The body is not the expected JSON.
    BadRequest,
    /// The CSR failed a check.
    CsrRejected,
    /// The call needs a client SVID and none was presented.
    Unauthenticated,
    /// The client SVID is revoked or the request is not allowed for it.
    Forbidden,
    NotFound,
    MethodNotAllowed,
    PayloadTooLarge,
    RateLimited,
    /// The CA failed; nothing about the caller.
    Internal,
    /// The CA is overloaded (its datastore's queue is full); retry later. Nothing was spent.
    Unavailable,
}

impl ErrorCode {
    /// The HTTP status of this error.
    pub fn status(self) -> u16 {
        match self {
            Self::InvalidToken | Self::Unauthenticated => 401,
            Self::BadRequest | Self::CsrRejected => 400,
            Self::Forbidden => 403,
            Self::NotFound => 404,
            Self::MethodNotAllowed => 405,
            Self::PayloadTooLarge => 413,
            Self::RateLimited => 429,
            Self::Internal => 500,
            Self::Unavailable => 503,
        }
    }
}

/// What a token tells the new workload: where the CA is, how to recognize it, who it will be.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenClaims {
    pub ca_url: String,
    /// SHA-256 of the root certificate DER, lowercase hex.
    pub root_sha256: String,
    pub spiffe_id: SpiffeId,
    /// Unix seconds.
    pub expires_at: i64,
}

/// A bootstrap token. The secret is hidden from `Debug` and `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct BootstrapToken {
    claims: TokenClaims,
    secret: [u8; TOKEN_SECRET_BYTES],
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    #[error("not a meshgate bootstrap token; expected mgt1.<claims>.<secret>")]
    Format,
    #[error("bootstrap token claims are unreadable: {0}")]
    Claims(String),
    #[error("bootstrap token secret must be {TOKEN_SECRET_BYTES} bytes of base64url")]
    Secret,
}

impl BootstrapToken {
    pub fn new(claims: TokenClaims, secret: [u8; TOKEN_SECRET_BYTES]) -> Self {
        Self { claims, secret }
    }

    /// Parses token text. The error never includes the text.
    pub fn parse(text: &str) -> Result<Self, TokenError> {
        let text = text.trim();
        if text.len() > MAX_TOKEN_CHARS {
            return Err(TokenError::Format);
        }
        let mut parts = text.split('.');
        let (Some(TOKEN_PREFIX), Some(claims), Some(secret), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Format);
        };
        let claims_json = URL_SAFE_NO_PAD
            .decode(claims)
            .map_err(|_| TokenError::Claims("not base64url".into()))?;
        let claims: TokenClaims =
            serde_json::from_slice(&claims_json).map_err(|e| TokenError::Claims(e.to_string()))?;
        let secret: [u8; TOKEN_SECRET_BYTES] = URL_SAFE_NO_PAD
            .decode(secret)
            .ok()
            .and_then(|s| s.try_into().ok())
            .ok_or(TokenError::Secret)?;
        Ok(Self { claims, secret })
    }

    pub fn claims(&self) -> &TokenClaims {
        &self.claims
    }

    /// SHA-256 of the secret: the only form the CA stores.
    pub fn secret_sha256(&self) -> [u8; 32] {
        crate::svid::sha256_of(&self.secret)
    }

    /// The full token text, secret included: for handing to the operator, nowhere else.
    pub fn reveal(&self) -> String {
        let claims = serde_json::to_vec(&self.claims).unwrap_or_default();
        format!(
            "{TOKEN_PREFIX}.{}.{}",
            URL_SAFE_NO_PAD.encode(claims),
            URL_SAFE_NO_PAD.encode(self.secret)
        )
    }
}

impl fmt::Debug for BootstrapToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BootstrapToken")
            .field("claims", &self.claims)
            .field("secret", &"<redacted>")
            .finish()
    }
}

impl Serialize for Serial {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Serial {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Serial::parse_hex(&text).ok_or_else(|| serde::de::Error::custom("serial is not hex"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token() -> BootstrapToken {
        BootstrapToken::new(
            TokenClaims {
                ca_url: "https://127.0.0.1:8443".into(),
                root_sha256: "ab".repeat(32),
                spiffe_id: SpiffeId::parse("spiffe://bank.example/ns/shop/sa/checkout").unwrap(),
                expires_at: 1_800_000_000,
            },
            [7u8; TOKEN_SECRET_BYTES],
        )
    }

    #[test]
    fn round_trips_and_hides_the_secret() {
        let t = token();
        let text = t.reveal();
        assert!(text.starts_with("mgt1."));
        assert_eq!(BootstrapToken::parse(&text).unwrap(), t);
        let secret_b64 = text.rsplit('.').next().unwrap();
        assert!(!format!("{t:?}").contains(secret_b64));
        assert_eq!(
            t.secret_sha256(),
            crate::svid::sha256_of(&[7u8; TOKEN_SECRET_BYTES])
        );
    }

    #[test]
    fn rejects_malformed_tokens_without_echoing_them() {
        let good = token().reveal();
        let (head, _) = good.rsplit_once('.').unwrap();
        for bad in [
            String::new(),
            "mgt2.a.b".into(),
            "mgt1.a".into(),
            format!("{good}.x"),
            format!("{head}.c2hvcnQ"),
            "mgt1.!!!.AAAA".into(),
            "x".repeat(10_000),
        ] {
            let err = BootstrapToken::parse(&bad).unwrap_err();
            assert!(bad.is_empty() || !err.to_string().contains(&bad), "{err}");
        }
    }

    #[test]
    fn error_codes_are_stable_snake_case() {
        let e = ErrorResponse {
            error: ErrorCode::InvalidToken,
            message: "m".into(),
        };
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"error":"invalid_token","message":"m"}"#
        );
        assert_eq!(ErrorCode::InvalidToken.status(), 401);
        assert_eq!(ErrorCode::PayloadTooLarge.status(), 413);
    }
}
