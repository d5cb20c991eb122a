//! The datastore seam: what the CA keeps durably. SQLite is the embedded default (`sqlite.rs`);
//! a shared database for CA replicas can implement the same trait.

use meshgate_identity::{Serial, SpiffeId, TrustDomain};
use serde::Serialize;

use crate::error::CaError;
use crate::keys::KeyType;

/// What the CA is: its trust domain and key type. Written once by `ca init`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaMeta {
    pub trust_domain: TrustDomain,
    pub key_type: KeyType,
    /// The SPIFFE bundle `spiffe_sequence`, bumped on every change of the roots.
    pub bundle_sequence: u64,
}

/// A root or intermediate of this CA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorityRecord {
    pub id: i64,
    pub kind: AuthorityKind,
    pub serial: Serial,
    pub cert_der: Vec<u8>,
    /// Path of the private key file, relative to the CA directory.
    pub key_file: String,
    /// The id of the root that signed an intermediate.
    pub parent: Option<i64>,
    pub not_before: i64,
    pub not_after: i64,
    pub state: AuthorityState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum AuthorityKind {
    Root,
    Intermediate,
}

/// Where an authority is in its life: `Active` signs (intermediates) or anchors (roots).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum AuthorityState {
    Active,
    Retired,
}

/// One leaf certificate the CA issued.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IssuedCert {
    #[serde(serialize_with = "as_display")]
    pub serial: Serial,
    pub spiffe_id: SpiffeId,
    /// SHA-256 of the certificate DER, lowercase hex.
    pub sha256: String,
    pub not_before: i64,
    pub not_after: i64,
    /// Serial of the intermediate that signed it.
    #[serde(serialize_with = "as_display")]
    pub issuer: Serial,
    pub dns_names: Vec<String>,
    /// When it was issued, unix seconds.
    pub issued_at: i64,
}

/// The CA's durable state.
pub trait Store: Send {
    /// Writes the CA's identity and its first root and intermediate, in one transaction.
    fn initialize(
        &mut self,
        meta: &CaMeta,
        root: &AuthorityRecord,
        intermediate: &AuthorityRecord,
    ) -> Result<(), CaError>;
    fn meta(&self) -> Result<CaMeta, CaError>;
    fn authorities(&self) -> Result<Vec<AuthorityRecord>, CaError>;
    /// Records an issued certificate; the certificate may be handed out only after this returns.
    fn record_issued(&mut self, cert: &IssuedCert) -> Result<(), CaError>;
    /// Every issued certificate, oldest first.
    fn list_issued(&self) -> Result<Vec<IssuedCert>, CaError>;
}

fn as_display<T: std::fmt::Display, S: serde::Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}
