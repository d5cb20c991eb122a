//! Bootstrap tokens: created by the operator, stored as the SHA-256 of their secret, and spent
//! atomically with the issuance they pay for.

use std::time::Duration;

use meshgate_identity::SpiffeId;
use meshgate_identity::api::{BootstrapToken, TOKEN_SECRET_BYTES, TokenClaims};
use ring::rand::SecureRandom as _;
use time::OffsetDateTime;

use crate::authority::{Authority, IssuedSvid, Minter};
use crate::error::CaError;
use crate::store::{
    EnrollOutcome, IssuanceOutcome, IssuanceWrite, Store, TokenRecord, TokenRejection,
};

/// Default token lifetime.
pub const TOKEN_TTL: Duration = Duration::from_secs(15 * 60);
/// Longest token lifetime.
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(7 * 86_400);

/// Why an enrollment failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EnrollError {
    /// The token was not accepted; nothing was spent.
    #[error("token rejected ({})", .0.as_str())]
    Token(TokenRejection),
    /// The token was valid and is spent, but the request failed (a bad CSR, say).
    #[error("{}", .0.1)]
    Spent(Box<(TokenRecord, CaError)>),
    /// The CA failed.
    #[error(transparent)]
    Ca(#[from] CaError),
}

impl Authority {
    /// Creates a token for `id`: returns the token (the only time its secret exists outside the
    /// caller's hands) and its stored record.
    pub fn create_token(
        &mut self,
        id: &SpiffeId,
        ttl: Duration,
        uses: u32,
        created_by: &str,
        ca_url: &str,
        now: OffsetDateTime,
    ) -> Result<(BootstrapToken, TokenRecord), CaError> {
        self.check_issuable(id)?;
        if ttl.is_zero() || ttl > MAX_TOKEN_TTL {
            return Err(CaError::BadTtl {
                requested: meshgate_identity::duration::format_duration(ttl),
                min: "1s".into(),
                max: meshgate_identity::duration::format_duration(MAX_TOKEN_TTL),
            });
        }
        if uses == 0 {
            return Err(CaError::BadUses(uses));
        }
        let mut secret = [0u8; TOKEN_SECRET_BYTES];
        ring::rand::SystemRandom::new()
            .fill(&mut secret)
            .map_err(|_| CaError::Random)?;
        let expires_at = (now + ttl).unix_timestamp();
        let token = BootstrapToken::new(
            TokenClaims {
                ca_url: ca_url.to_owned(),
                root_sha256: self.root_sha256(),
                spiffe_id: id.clone(),
                expires_at,
            },
            secret,
        );
        let mut record = TokenRecord {
            id: 0,
            secret_sha256: hex::encode(token.secret_sha256()),
            spiffe_id: id.clone(),
            expires_at,
            uses_left: uses,
            created_by: created_by.to_owned(),
            created_at: now.unix_timestamp(),
            revoked_at: None,
        };
        record.id = self.store.insert_token(&record)?;
        Ok((token, record))
    }

    pub fn list_tokens(&self) -> Result<Vec<TokenRecord>, CaError> {
        self.store.list_tokens()
    }

    /// Revokes a token by its id; false if there was none (or it was already revoked).
    pub fn revoke_token(&mut self, id: i64, now: OffsetDateTime) -> Result<bool, CaError> {
        self.store.revoke_token(id, now.unix_timestamp())
    }

    /// Enrollment: the token (found by its secret's hash; the claims the client sent are not
    /// trusted) pays for one SVID for the token's SPIFFE ID, signed from `csr_der`. One store
    /// transaction spends the token and records the certificate.
    pub fn enroll(
        &mut self,
        token: &BootstrapToken,
        csr_der: &[u8],
        now: OffsetDateTime,
    ) -> Result<(TokenRecord, IssuedSvid), EnrollError> {
        let pending = self.start_enroll(token, now)?;
        let (write, minted) = pending.mint(csr_der);
        let outcome = self.store.commit_issuance(write)?;
        finish_enroll(outcome, minted)
    }

    /// The first step of an enrollment, a read: the token must be usable now. What it returns
    /// signs without the CA (the server does that outside its lock) and yields the write that
    /// spends the token, checked again when it commits.
    pub(crate) fn start_enroll(
        &self,
        token: &BootstrapToken,
        now: OffsetDateTime,
    ) -> Result<PendingEnroll, EnrollError> {
        start_enroll_in(&self.store, self.minter(), token, now)
    }
}

/// As [`Authority::start_enroll`], with the token read through `store` (a connection of its
/// own, without the CA's lock) and signing with `minter`.
pub(crate) fn start_enroll_in(
    store: &impl Store,
    minter: Minter,
    token: &BootstrapToken,
    now: OffsetDateTime,
) -> Result<PendingEnroll, EnrollError> {
    let secret_sha256 = hex::encode(token.secret_sha256());
    let Some(record) = store.token_by_secret(&secret_sha256)? else {
        return Err(EnrollError::Token(TokenRejection::Unknown));
    };
    if let Some(r) = record.rejection(now.unix_timestamp()) {
        return Err(EnrollError::Token(r));
    }
    Ok(PendingEnroll {
        secret_sha256,
        spiffe_id: record.spiffe_id,
        minter,
        now,
    })
}

/// An enrollment whose token was usable when read: signs the CSR (no I/O, no lock).
#[derive(Debug)]
pub(crate) struct PendingEnroll {
    secret_sha256: String,
    spiffe_id: SpiffeId,
    minter: Minter,
    now: OffsetDateTime,
}

impl PendingEnroll {
    /// Checks the CSR against the token's SPIFFE ID and signs it: the write that spends the
    /// token and records the certificate (or, for a CSR that fails, spends the token all the
    /// same), and the certificate, which may be handed out once that write has committed.
    pub(crate) fn mint(self, csr_der: &[u8]) -> (IssuanceWrite, Option<IssuedSvid>) {
        let minted = self.minter.mint(csr_der, &self.spiffe_id, self.now);
        let (issued, minted) = match minted {
            Ok(svid) => (Ok(svid.record.clone()), Some(svid)),
            Err(e) => (Err(e), None),
        };
        let write = IssuanceWrite::Enroll {
            secret_sha256: self.secret_sha256,
            now: self.now.unix_timestamp(),
            issued,
        };
        (write, minted)
    }
}

/// The answer to an enrollment once its write has committed.
pub(crate) fn finish_enroll(
    outcome: IssuanceOutcome,
    minted: Option<IssuedSvid>,
) -> Result<(TokenRecord, IssuedSvid), EnrollError> {
    match outcome {
        IssuanceOutcome::Enroll(EnrollOutcome::Issued(t, cert)) => {
            let issued = minted
                .filter(|m| m.record == cert)
                .ok_or(CaError::Internal("issuance produced no certificate"))?;
            Ok((t, issued))
        }
        IssuanceOutcome::Enroll(EnrollOutcome::Rejected(r)) => Err(EnrollError::Token(r)),
        IssuanceOutcome::Enroll(EnrollOutcome::Failed(t, e)) => {
            Err(EnrollError::Spent(Box::new((t, e))))
        }
        IssuanceOutcome::Renew { .. } => {
            Err(CaError::Internal("an enrollment came back as a renewal").into())
        }
    }
}
