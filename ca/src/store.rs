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

/// Where an authority is in its life. Roots: `Prepared` (in the bundle, signs nothing yet),
/// `Active` (in the bundle, its intermediate signs), `Retiring` (in the bundle, signs nothing:
/// its leaves live out their lifetime), `Retired` (out of the bundle). Intermediates: `Active`
/// (signs) or `Retired`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum AuthorityState {
    Prepared,
    Active,
    Retiring,
    Retired,
}

impl AuthorityState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Prepared => "prepared",
            Self::Active => "active",
            Self::Retiring => "retiring",
            Self::Retired => "retired",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::Prepared, Self::Active, Self::Retiring, Self::Retired]
            .into_iter()
            .find(|v| v.as_str() == s)
    }

    /// Whether a root in this state belongs in the trust bundle.
    pub fn in_bundle(self) -> bool {
        !matches!(self, Self::Retired)
    }
}

/// A bootstrap token as the CA keeps it: the SHA-256 of its secret, never the secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TokenRecord {
    pub id: i64,
    /// SHA-256 of the secret, lowercase hex.
    #[serde(skip)]
    pub secret_sha256: String,
    pub spiffe_id: SpiffeId,
    pub expires_at: i64,
    pub uses_left: u32,
    pub created_by: String,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
}

/// Why a token was not accepted. Only the audit log sees the difference; the client always
/// gets the same `invalid_token`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TokenRejection {
    Unknown,
    Expired,
    Spent,
    Revoked,
}

impl TokenRejection {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unknown => "unknown",
            Self::Expired => "expired",
            Self::Spent => "spent",
            Self::Revoked => "revoked",
        }
    }
}

/// How an enrollment transaction ended.
#[derive(Debug)]
#[non_exhaustive]
pub enum EnrollOutcome {
    /// The token paid for this certificate; both are committed.
    Issued(TokenRecord, IssuedCert),
    /// The token was not accepted; nothing changed.
    Rejected(TokenRejection),
    /// The token was valid and is now spent, but issuance failed (a bad CSR, say).
    Failed(TokenRecord, CaError),
}

impl TokenRecord {
    /// Why this token cannot pay for an issuance at `now`, if it cannot. The one rule, applied
    /// by the read before signing and again inside the transaction that spends the token.
    pub fn rejection(&self, now: i64) -> Option<TokenRejection> {
        if self.revoked_at.is_some() {
            Some(TokenRejection::Revoked)
        } else if self.expires_at <= now {
            Some(TokenRejection::Expired)
        } else if self.uses_left == 0 {
            Some(TokenRejection::Spent)
        } else {
            None
        }
    }
}

/// The writes of one issuance, applied with those of concurrent issuances in one transaction
/// (group commit, [`Store::commit_issuances`]).
#[derive(Debug)]
#[non_exhaustive]
pub enum IssuanceWrite {
    /// Spend one use of the token whose secret hashes to `secret_sha256`, checked again inside
    /// the transaction (known, unrevoked, unexpired at `now`, a use left), and record `issued`,
    /// the certificate minted for the token's SPIFFE ID. When minting failed (`issued` is the
    /// error: a bad CSR, say) a valid token is spent all the same.
    Enroll {
        secret_sha256: String,
        now: i64,
        issued: Result<IssuedCert, CaError>,
    },
    /// Record `cert`, renewed by the holder of `from`, unless `from` is revoked.
    Renew { cert: IssuedCert, from: Serial },
}

/// How one [`IssuanceWrite`] ended inside its batch's transaction.
#[derive(Debug)]
#[non_exhaustive]
#[expect(
    clippy::large_enum_variant,
    reason = "one per write, moved once from the writer thread to its request; boxing would only add an allocation"
)]
pub enum IssuanceOutcome {
    Enroll(EnrollOutcome),
    /// False (and nothing recorded) if the renewed SVID was revoked.
    Renew {
        recorded: bool,
    },
}

/// One revoked certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RevocationRecord {
    #[serde(serialize_with = "as_display")]
    pub serial: Serial,
    pub spiffe_id: SpiffeId,
    pub at: i64,
    pub reason: Option<String>,
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
    /// `bundle_sequence` and every authority, read from one snapshot, so that a served bundle's
    /// sequence always names its roots (`change_authorities` changes both in one transaction).
    fn bundle_state(&self) -> Result<(u64, Vec<AuthorityRecord>), CaError>;
    /// Records an issued certificate; the certificate may be handed out only after this returns.
    fn record_issued(&mut self, cert: &IssuedCert) -> Result<(), CaError>;
    /// Every issued certificate, oldest first.
    fn list_issued(&self) -> Result<Vec<IssuedCert>, CaError>;

    /// In one transaction: adds an authority (a new root or intermediate; its id is returned),
    /// changes the state of others, sets meta values, and bumps `state_version` so running
    /// servers reload.
    fn change_authorities(
        &mut self,
        new: Option<&AuthorityRecord>,
        states: &[(i64, AuthorityState)],
        meta: &[(&str, String)],
    ) -> Result<Option<i64>, CaError>;
    /// A meta value (rotation phase, timestamps, versions).
    fn meta_value(&self, key: &str) -> Result<Option<String>, CaError>;

    fn insert_token(&mut self, t: &TokenRecord) -> Result<i64, CaError>;
    fn list_tokens(&self) -> Result<Vec<TokenRecord>, CaError>;
    /// Revokes a token by id; false if there is no such token.
    fn revoke_token(&mut self, id: i64, now: i64) -> Result<bool, CaError>;
    /// The token whose secret hashes to `secret_sha256`, as a read sees it now.
    fn token_by_secret(&self, secret_sha256: &str) -> Result<Option<TokenRecord>, CaError>;
    /// Group commit: applies `writes` in order in one transaction, with one sync to disk for the
    /// lot, and returns one outcome per write, in order. Each write is checked against the state
    /// its predecessors in the batch left (two spends of one token: the second finds it spent)
    /// and runs under its own savepoint, so an error in one (its `Err` in the list) undoes only
    /// its own changes. `Err` for the whole: the transaction did not commit and nothing of the
    /// batch was written. A certificate may be handed out only after its write's outcome came
    /// back `Ok`.
    fn commit_issuances(
        &mut self,
        writes: Vec<IssuanceWrite>,
    ) -> Result<Vec<Result<IssuanceOutcome, CaError>>, CaError>;
    /// One write on its own: [`Store::commit_issuances`] with a batch of one, its outcome.
    fn commit_issuance(&mut self, write: IssuanceWrite) -> Result<IssuanceOutcome, CaError> {
        self.commit_issuances(vec![write])?
            .pop()
            .ok_or(CaError::Internal(
                "the datastore left out a write's outcome",
            ))?
    }
    /// After a [`Store::commit_issuances`] that failed or panicked: leaves the datastore able to
    /// commit the next batch (no transaction left open, a working connection), or says why not.
    fn recover_after_failed_commit(&mut self) -> Result<(), CaError> {
        Ok(())
    }

    /// Revokes the given serials (already revoked ones are skipped) and returns what was added.
    fn revoke(
        &mut self,
        serials: &[(Serial, SpiffeId)],
        now: i64,
        reason: Option<&str>,
    ) -> Result<Vec<RevocationRecord>, CaError>;
    /// Revokes `serial` and every SVID renewed from it (transitively), in one transaction.
    /// None if no such certificate was issued.
    fn revoke_lineage(
        &mut self,
        serial: &Serial,
        now: i64,
        reason: Option<&str>,
    ) -> Result<Option<Vec<RevocationRecord>>, CaError>;
    /// Revokes every unexpired SVID of `id`, in one transaction.
    fn revoke_spiffe_id(
        &mut self,
        id: &SpiffeId,
        now: i64,
        reason: Option<&str>,
    ) -> Result<Vec<RevocationRecord>, CaError>;
    fn is_revoked(&self, serial: &Serial) -> Result<bool, CaError>;
    /// Every revocation and the revocation sequence.
    fn revocations(&self) -> Result<(u64, Vec<RevocationRecord>), CaError>;
}

fn as_display<T: std::fmt::Display, S: serde::Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}
