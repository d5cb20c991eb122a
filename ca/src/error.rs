//! The CA's one error type, grouped by who is at fault.

use std::path::PathBuf;

use meshgate_identity::{IdError, SvidError};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CaError {
    // --- the caller's input ---
    #[error(transparent)]
    InvalidId(#[from] IdError),
    #[error(
        "{0} is not in this CA's trust domain {1}; a CA issues only inside its own trust domain"
    )]
    ForeignTrustDomain(String, String),
    #[error("TTL {requested} is out of range; accepted: {min} to {max}")]
    BadTtl {
        requested: String,
        min: String,
        max: String,
    },
    #[error("DNS name {0:?} is not a valid DNS name")]
    BadDnsName(String),
    #[error("{0} is reserved for the CA's own TLS identity")]
    ReservedId(String),
    #[error("uses must be at least 1, got {0}")]
    BadUses(u32),
    #[error("no issued certificate matches {0}")]
    NothingToRevoke(String),
    #[error("{0}")]
    Rotation(String),
    #[error("the caller's SVID is not valid now: {0}")]
    PeerRejected(String),
    #[error("the caller's SVID (serial {0}) is revoked")]
    Revoked(String),
    #[error("certificate signing request rejected ({rule}): {detail}")]
    BadCsr { rule: &'static str, detail: String },

    // --- the CA directory and its files (operator's setup) ---
    #[error(
        "{0} already exists and is not an empty directory; `ca init` refuses to touch it (give a new or empty directory)"
    )]
    AlreadyExists(PathBuf),
    #[error("{0} is not a meshgate CA directory (no ca.db); run `meshgate ca init` first")]
    NotACa(PathBuf),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("key file {path} is unreadable or corrupt: {reason}")]
    BadKeyFile { path: PathBuf, reason: String },
    #[error("CA certificate {what} in the datastore is corrupt: {reason}")]
    BadCaCert { what: String, reason: String },
    #[error("no active {0} in the datastore")]
    NoActiveAuthority(&'static str),
    #[error(
        "the active intermediate expires at {0} (unix seconds); it signs nothing past its own notAfter"
    )]
    IntermediateExpired(i64),

    // --- our side ---
    #[error("TLS setup: {0}")]
    Tls(#[from] meshgate_identity::Error),
    #[error("datastore: {0}")]
    Store(#[from] rusqlite::Error),
    #[error("certificate generation: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("minted certificate failed its own profile check: {0}")]
    SelfCheck(#[from] SvidError),
    #[error("audit log: {0}")]
    Audit(String),
    #[error("internal error: {0}")]
    Internal(&'static str),
    #[error("the CA is overloaded: {queue} issuances already wait for the datastore; retry later")]
    Overloaded { queue: usize },
    #[error(
        "the CA's keys changed (a rotation) and this server has not loaded them yet; retry in a few seconds"
    )]
    Reloading,
    #[error("random number generator failed")]
    Random,
}

impl CaError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { path, source }
    }

    /// True when the error is the caller's fault (bad input), as opposed to a run-time failure.
    pub fn is_bad_input(&self) -> bool {
        matches!(
            self,
            Self::InvalidId(_)
                | Self::ForeignTrustDomain(..)
                | Self::BadTtl { .. }
                | Self::BadDnsName(_)
                | Self::BadCsr { .. }
                | Self::AlreadyExists(_)
                | Self::NotACa(_)
                | Self::ReservedId(_)
                | Self::BadUses(_)
                | Self::NothingToRevoke(_)
                | Self::Rotation(_)
        )
    }
}
