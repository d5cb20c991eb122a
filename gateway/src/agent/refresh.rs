//! Calls to the CA once enrolled, each over TLS that authenticates the CA as
//! `spiffe://<td>/meshgate/ca` under the current bundle: renewal (mTLS with the current SVID, a
//! fresh key each time), the trust bundle, and the revocation list.

use std::sync::Arc;

use meshgate_identity::api::{
    PATH_BUNDLE, PATH_RENEW, PATH_REVOCATIONS, RenewRequest, RevocationList, SvidResponse,
};
use meshgate_identity::svid::verify_chain;
use meshgate_identity::tls;
use meshgate_identity::{BundleSet, TrustBundle};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer, UnixTime};

use super::check::{chain_pem, check_answer, contains_root};
use super::{Agent, Svid, http, keys, state};
use crate::error::Error;

impl Agent {
    /// Renews the SVID: a fresh key, a CSR for the same SPIFFE ID, `POST /v1/renew` over mTLS
    /// with the current SVID. On success the new SVID is on disk and published.
    pub async fn renew(&mut self) -> Result<(), Error> {
        let not_after = self.svid.info.not_after;
        if UnixTime::now().as_secs() > not_after {
            return Err(Error::SvidExpired { not_after });
        }
        let id = self.enrollment.spiffe_id.clone();
        let key = keys::generate(self.enrollment.key_type)?;
        let request = RenewRequest {
            csr: keys::csr_pem(&id, &key)?,
        };
        let answer: SvidResponse = http::post_json(
            &self.enrollment.ca_url,
            self.ca_config(true)?,
            PATH_RENEW,
            &request,
        )
        .await?;
        let now = UnixTime::now();
        let checked = check_answer(&answer, &id, &key, None, now)?;
        // Our bundle carries a sequence number the PEM answer lacks: keep it while it verifies the
        // new SVID; if it does not, the CA has rotated and the answer's roots are the newer ones.
        let bundle = if verifies(&self.bundle, &checked.chain, now) {
            self.bundle.clone()
        } else {
            let mut b = checked.bundle;
            b.sequence = self.bundle.sequence;
            b.refresh_hint = self.bundle.refresh_hint;
            b
        };
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let certified = tls::certified_key(checked.chain.clone(), key_der)?;
        state::write_all(
            &self.dir,
            key.serialize_pem().as_bytes(),
            chain_pem(&checked.chain).as_bytes(),
            bundle.to_pem().as_bytes(),
            &self.enrollment,
            bundle.sequence,
        )?;
        self.svid = Svid {
            chain: checked.chain,
            info: checked.info,
            key: certified,
        };
        self.bundle = bundle;
        self.publish_svid();
        self.publish_bundle();
        tracing::info!(
            spiffe_id = %self.svid.info.spiffe_id,
            serial = %self.svid.info.serial,
            not_after = self.svid.info.not_after,
            "renewed"
        );
        Ok(())
    }

    /// Fetches the SPIFFE bundle. Returns whether it replaced ours. A bundle with a lower
    /// sequence is ignored (a lagging CA replica); one that neither verifies our SVID nor holds
    /// the root our token pinned is refused, so a rotation can add and retire roots but nothing
    /// can swap the whole trust domain out from under us.
    pub async fn fetch_bundle(&mut self) -> Result<bool, Error> {
        let body =
            http::get_bytes(&self.enrollment.ca_url, self.ca_config(false)?, PATH_BUNDLE).await?;
        let td = self.enrollment.spiffe_id.trust_domain();
        let new = TrustBundle::from_jwks(td, &body)
            .map_err(|e| Error::BadAnswer(format!("bundle: {e}")))?;
        if new.sequence < self.bundle.sequence {
            tracing::debug!(
                ours = self.bundle.sequence,
                theirs = new.sequence,
                "ignoring an older bundle"
            );
            return Ok(false);
        }
        if !verifies(&new, &self.svid.chain, UnixTime::now())
            && !contains_root(&new, &self.enrollment.root_sha256)
        {
            return Err(Error::rejected(
                "bundle-continuity",
                format!(
                    "bundle sequence {} neither verifies this agent's SVID nor contains the pinned root",
                    new.sequence
                ),
            ));
        }
        if new.sequence == self.bundle.sequence
            && new.roots() == self.bundle.roots()
            && new.refresh_hint == self.bundle.refresh_hint
        {
            return Ok(false);
        }
        state::write_bundle(
            &self.dir,
            new.to_pem().as_bytes(),
            &self.enrollment,
            new.sequence,
        )?;
        tracing::info!(
            sequence = new.sequence,
            roots = new.roots().len(),
            "new trust bundle"
        );
        self.bundle = new;
        self.publish_bundle();
        Ok(true)
    }

    /// Fetches the revocation list over mTLS. Returns whether it replaced ours; an older list
    /// (lower sequence) is ignored.
    pub async fn fetch_revocations(&mut self) -> Result<bool, Error> {
        let list: RevocationList = http::get_json(
            &self.enrollment.ca_url,
            self.ca_config(true)?,
            PATH_REVOCATIONS,
        )
        .await?;
        if list.sequence < self.revocations.sequence || list == *self.revocations {
            return Ok(false);
        }
        if list
            .revoked
            .iter()
            .any(|r| r.serial == self.svid.info.serial)
        {
            tracing::error!(
                serial = %self.svid.info.serial,
                "this agent's own SVID is revoked; the CA will refuse to renew it"
            );
        }
        // Saved before it is published: a restart never knows less than the listeners did.
        state::write_revocations(&self.dir, &list)?;
        self.revocations = Arc::new(list);
        self.publish_revocations();
        Ok(true)
    }
}

fn verifies(
    bundle: &TrustBundle,
    chain: &[rustls::pki_types::CertificateDer<'_>],
    now: UnixTime,
) -> bool {
    verify_chain(chain, &BundleSet::single(bundle.clone()), now).is_ok()
}
