//! Enrollment: a key made here, a CSR for the token's SPIFFE ID, `POST /v1/enroll` to the CA the
//! token pins, and the answer checked before anything is written. The token text goes into the
//! request body and nowhere else: not into a log, not into an error.

use std::path::Path;
use std::sync::Arc;

use meshgate_identity::api::{
    BootstrapToken, EnrollRequest, PATH_ENROLL, RevocationList, SvidResponse,
};
use meshgate_identity::tls::{self, ALPN_HTTP11};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer, UnixTime};

use super::check::{chain_pem, check_answer};
use super::keys::{self, KeyType};
use super::pinned::enroll_verifier;
use super::state::{self, Enrollment};
use super::url::CaUrl;
use super::{Agent, Svid, http};
use crate::error::Error;

impl Agent {
    /// Enrolls with the CA named by `token` and keeps the new SVID in `dir` (created with mode
    /// 0700 if missing): `key.pem` (0600), `svid.pem`, `bundle.pem`, `state.json`.
    pub async fn enroll(
        token: &BootstrapToken,
        dir: &Path,
        key_type: KeyType,
    ) -> Result<Self, Error> {
        let result = Self::enroll_inner(token, dir, key_type).await;
        result.map_err(|e| withhold_token(e, token))
    }

    /// Reuses the SVID in `dir` when it is still valid (and, with a token, for the token's SPIFFE
    /// ID); otherwise enrolls with `token`. What `gateway run` does at start.
    pub async fn load_or_enroll(
        dir: &Path,
        token: Option<&BootstrapToken>,
        key_type: KeyType,
    ) -> Result<Self, Error> {
        let loaded = Self::load(dir);
        let Some(token) = token else {
            return loaded;
        };
        match loaded {
            Ok(agent) if agent.spiffe_id() == &token.claims().spiffe_id => return Ok(agent),
            Ok(agent) => tracing::info!(
                stored = %agent.spiffe_id(),
                token = %token.claims().spiffe_id,
                "the bootstrap token names another SPIFFE ID; enrolling"
            ),
            Err(e @ Error::Io { .. }) => return Err(e),
            Err(e) => tracing::info!(reason = %e, "no reusable SVID; enrolling"),
        }
        Self::enroll(token, dir, key_type).await
    }

    async fn enroll_inner(
        token: &BootstrapToken,
        dir: &Path,
        key_type: KeyType,
    ) -> Result<Self, Error> {
        let claims = token.claims();
        let enrollment = Enrollment {
            ca_url: CaUrl::parse(&claims.ca_url)?,
            root_sha256: Enrollment::parse_pin(&claims.root_sha256)?,
            spiffe_id: claims.spiffe_id.clone(),
            key_type,
        };
        enrollment
            .spiffe_id
            .require_path()
            .map_err(Error::BadTokenId)?;
        let now = i64::try_from(UnixTime::now().as_secs()).unwrap_or(i64::MAX);
        if claims.expires_at <= now {
            return Err(Error::TokenExpired {
                expires_at: claims.expires_at,
            });
        }

        let key = keys::generate(key_type)?;
        let csr = keys::csr_pem(&enrollment.spiffe_id, &key)?;
        let verifier =
            enroll_verifier(enrollment.root_sha256, &enrollment.spiffe_id.trust_domain())?;
        let config = Arc::new(tls::client_config(
            Arc::new(verifier),
            None,
            &[ALPN_HTTP11],
        )?);
        let request = EnrollRequest {
            token: token.reveal(),
            csr,
        };
        let answer: SvidResponse =
            http::post_json(&enrollment.ca_url, config, PATH_ENROLL, &request).await?;
        drop(request);

        let checked = check_answer(
            &answer,
            &enrollment.spiffe_id,
            &key,
            Some(&enrollment.root_sha256),
            UnixTime::now(),
        )?;
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let certified = tls::certified_key(checked.chain.clone(), key_der)?;
        let bundle = checked.bundle;
        state::write_all(
            dir,
            key.serialize_pem().as_bytes(),
            chain_pem(&checked.chain).as_bytes(),
            bundle.to_pem().as_bytes(),
            &enrollment,
            bundle.sequence,
        )?;
        let svid = Svid {
            chain: checked.chain,
            info: checked.info,
            key: certified,
        };
        tracing::info!(
            spiffe_id = %svid.info.spiffe_id,
            serial = %svid.info.serial,
            not_after = svid.info.not_after,
            "enrolled"
        );
        // A list kept from an earlier enrollment may come from another CA, whose sequence
        // numbers would hide this one's: start empty; the first refresh fetches the list.
        state::clear_revocations(dir)?;
        Ok(Self::assemble(
            dir,
            enrollment,
            svid,
            bundle,
            RevocationList::default(),
        ))
    }
}

/// The CA (or whoever answered) could echo the token back, and a cut-short message could carry
/// part of it; such an error is replaced whole.
fn withhold_token(e: Error, token: &BootstrapToken) -> Error {
    let shown = format!("{e} {e:?}");
    if mentions_token(&shown, &token.reveal()) {
        return Error::BadAnswer(
            "the answer repeated the bootstrap token, so it is not shown".into(),
        );
    }
    e
}

/// Shortest run of token characters that counts as showing (part of) the token.
const TOKEN_WINDOW: usize = 12;

/// True when `text` holds the token's prefix or any `TOKEN_WINDOW` characters of its claims or
/// secret.
fn mentions_token(text: &str, token_text: &str) -> bool {
    if text.contains("mgt1.") {
        return true;
    }
    token_text.split('.').skip(1).any(|part| {
        part.as_bytes()
            .windows(TOKEN_WINDOW)
            .any(|w| std::str::from_utf8(w).is_ok_and(|w| text.contains(w)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_whole_or_partial_tokens() {
        let token = "mgt1.eyJjYV91cmwiOiJodHRwczovLzEyNy4wLjAuMTo.c2VjcmV0LXNlY3JldC1zZWNyZXQ";
        assert!(mentions_token(&format!("bad token {token}!"), token));
        assert!(mentions_token("…LzEyNy4wLjAu…", token));
        assert!(mentions_token("x c2VjcmV0LXNl", token));
        assert!(!mentions_token(
            "the token is not valid (invalid_token)",
            token
        ));
        assert!(!mentions_token("c2VjcmV0LXN", token));
    }
}
