//! The gateway's one error type, grouped by who is at fault: the operator's input and files, the
//! CA (the peer), our own SVID's state, or our side. No variant ever carries a token or a key.
//! Errors of a request in flight are not here: the listeners answer those on the wire
//! (`crate::reply`).

use std::path::PathBuf;

use meshgate_identity::api::ErrorCode;
use meshgate_identity::{IdError, SvidError};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    // --- the operator's input: the token's claims, the state directory ---
    #[error("CA URL {url:?} is not usable: {reason}; expected https://host:port")]
    BadCaUrl { url: String, reason: &'static str },
    #[error(
        "the bootstrap token's root_sha256 is not 64 lowercase hex digits; it must be the SHA-256 of the CA's root"
    )]
    BadPin,
    #[error("the bootstrap token's SPIFFE ID is not a workload ID: {0}")]
    BadTokenId(IdError),
    #[error(
        "the bootstrap token expired at {expires_at} (unix seconds); ask the CA operator for a new one"
    )]
    TokenExpired { expires_at: i64 },
    #[error(
        "{} has no state.json; only a directory written by `svid fetch` or a gateway's agent can be reused or renewed",
        dir.display()
    )]
    NoState { dir: PathBuf },
    #[error("{}: {reason}", path.display())]
    BadState { path: PathBuf, reason: String },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },

    // --- the operator's config and policy files ---
    #[error("config: {0}")]
    Config(String),
    #[error("config: `{key}` = {value:?} is not valid: {reason}")]
    ConfigValue {
        key: String,
        value: String,
        reason: String,
    },
    #[error("policy files not loaded:\n{0}")]
    Policy(String),
    #[error("the bootstrap token is for {token}, but the config's spiffe_id is {config}")]
    TokenIdMismatch { token: String, config: String },
    #[error("the bootstrap token names the CA {token}, but the config's ca.url is {config}")]
    TokenCaMismatch { token: String, config: String },
    #[error(
        "the SVID in the state directory is for {stored}, but the config's spiffe_id is {config}; enroll with a bootstrap token for {config}"
    )]
    StoredIdMismatch { stored: String, config: String },
    #[error("audit log: {0}")]
    Audit(#[from] meshgate_audit::AuditError),
    #[error("cannot listen on {addr} ({listener}): {source}")]
    Listen {
        listener: String,
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },

    // --- the CA, or whoever answered in its place ---
    #[error("cannot connect to the CA at {ca}: {source}")]
    Connect { ca: String, source: std::io::Error },
    #[error("TLS handshake with the CA at {ca} failed: {reason}")]
    Handshake { ca: String, reason: String },
    #[error(
        "the server at {ca} is not the CA the bootstrap token names: none of the certificates it sent is the pinned root"
    )]
    PinnedRootNotSent { ca: String },
    #[error("no answer from the CA at {ca} within {seconds} s ({stage})")]
    Timeout {
        ca: String,
        stage: &'static str,
        seconds: u64,
    },
    #[error("HTTP exchange with the CA at {ca} failed: {reason}")]
    Http { ca: String, reason: String },
    #[error("the CA refused the request (HTTP {status}, {code}): {message}")]
    Refused {
        status: u16,
        /// The stable error code, when the answer carried one.
        code: String,
        message: String,
    },
    #[error("the CA's answer is malformed: {0}")]
    BadAnswer(String),
    #[error("the CA's answer was rejected ({rule}): {detail}")]
    AnswerRejected { rule: &'static str, detail: String },

    // --- our own SVID ---
    #[error(
        "the SVID expired at {not_after} (unix seconds); renewal needs a valid SVID, so enroll again with a new bootstrap token"
    )]
    SvidExpired { not_after: u64 },
    #[error("the stored SVID is not valid ({rule}): {error}", rule = .error.rule())]
    StoredSvidInvalid { error: SvidError },

    // --- our side ---
    #[error("key or CSR generation failed: {0}")]
    Key(String),
    #[error(transparent)]
    Identity(#[from] meshgate_identity::Error),
}

impl Error {
    /// True when the error is the caller's fault (bad input, exit code 2), not a run-time failure.
    pub fn is_bad_input(&self) -> bool {
        matches!(
            self,
            Self::BadCaUrl { .. }
                | Self::BadPin
                | Self::BadTokenId(_)
                | Self::TokenExpired { .. }
                | Self::NoState { .. }
                | Self::Config(_)
                | Self::ConfigValue { .. }
                | Self::Policy(_)
                | Self::TokenIdMismatch { .. }
                | Self::TokenCaMismatch { .. }
                | Self::StoredIdMismatch { .. }
        )
    }

    /// The CA's stable error code, when the CA answered with one.
    pub fn refusal_code(&self) -> Option<ErrorCode> {
        match self {
            Self::Refused { code, .. } => {
                serde_json::from_value(serde_json::Value::String(code.clone())).ok()
            }
            _ => None,
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { path, source }
    }

    pub(crate) fn rejected(rule: &'static str, detail: impl Into<String>) -> Self {
        Self::AnswerRejected {
            rule,
            detail: detail.into(),
        }
    }
}
