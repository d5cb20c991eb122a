//! meshgate's identity layer: SPIFFE IDs, X.509-SVID profile checks, trust bundles, the rustls
//! verifiers and the one module that builds every rustls config.
//!
//! Pure: no async runtime, no sockets, no files, no clock. Time is always a parameter.

pub mod api;
pub mod bundle;
pub mod duration;
pub mod spiffe_id;
pub mod svid;
pub mod tls;
pub mod verifier;

pub use bundle::{BundleError, BundleSet, TrustBundle};
pub use duration::{DurationError, parse_duration};
pub use spiffe_id::{IdError, SpiffeId, TrustDomain};
pub use svid::{Serial, SvidError, SvidInfo, VerifiedSvid};

/// Every error of this crate, grouped by what the input was.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A SPIFFE ID or trust domain broke a rule of the SPIFFE-ID spec.
    #[error(transparent)]
    Id(#[from] IdError),
    /// A certificate or chain broke a rule of the X.509-SVID spec, or failed verification.
    #[error(transparent)]
    Svid(#[from] SvidError),
    /// A trust bundle could not be read.
    #[error(transparent)]
    Bundle(#[from] BundleError),
    /// Credentials or settings could not be turned into a TLS config (our side's fault).
    #[error("TLS configuration: {0}")]
    Tls(String),
}
