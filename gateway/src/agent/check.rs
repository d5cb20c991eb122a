//! Checks of what the CA hands back, before anything is written or used: the SVID names us, holds
//! the key we made, and verifies as an X.509-SVID against the bundle that came with it.

use meshgate_identity::api::SvidResponse;
use meshgate_identity::bundle::{certs_from_pem, pem_encode};
use meshgate_identity::svid::{parse_cert, sha256_of, verify_chain};
use meshgate_identity::{BundleSet, SpiffeId, SvidInfo, TrustBundle};
use rcgen::KeyPair;
use rustls::pki_types::{CertificateDer, UnixTime};

use crate::error::Error;

/// An SVID answer that passed every check.
#[derive(Debug)]
pub(crate) struct CheckedAnswer {
    pub chain: Vec<CertificateDer<'static>>,
    pub info: SvidInfo,
    /// The roots that came with the answer.
    pub bundle: TrustBundle,
}

/// Checks an enroll or renew answer for `expected`, made for `key`. With `pin`, the bundle must
/// contain that root (enrollment: the token's word is all we trust yet).
pub(crate) fn check_answer(
    answer: &SvidResponse,
    expected: &SpiffeId,
    key: &KeyPair,
    pin: Option<&[u8; 32]>,
    now: UnixTime,
) -> Result<CheckedAnswer, Error> {
    let chain = certs_from_pem(answer.svid.as_bytes())
        .map_err(|e| Error::BadAnswer(format!("`svid` is not PEM certificates: {e}")))?;
    let bundle = TrustBundle::from_pem(expected.trust_domain(), answer.bundle.as_bytes())
        .map_err(|e| Error::BadAnswer(format!("`bundle`: {e}")))?;
    if pin.is_some_and(|pin| !contains_root(&bundle, pin)) {
        return Err(Error::rejected(
            "pinned-root",
            "the bundle does not contain the root the bootstrap token pins",
        ));
    }
    let verified = verify_chain(&chain, &BundleSet::single(bundle.clone()), now)
        .map_err(|e| Error::rejected(e.rule(), e.to_string()))?;
    if &verified.info.spiffe_id != expected {
        return Err(Error::rejected(
            "spiffe-id",
            format!(
                "the SVID is for {}, but {expected} was asked for",
                verified.info.spiffe_id
            ),
        ));
    }
    let leaf = chain
        .first()
        .ok_or_else(|| Error::BadAnswer("`svid` is empty".into()))?;
    if !holds_key(leaf, key)? {
        return Err(Error::rejected(
            "public-key",
            "the SVID's public key is not the one this agent made and sent in its CSR",
        ));
    }
    Ok(CheckedAnswer {
        chain,
        info: verified.info,
        bundle,
    })
}

/// True when the bundle holds the root whose SHA-256 is `pin`.
pub(crate) fn contains_root(bundle: &TrustBundle, pin: &[u8; 32]) -> bool {
    bundle.roots().iter().any(|r| sha256_of(r) == *pin)
}

/// True when the certificate's public key is `key`'s.
pub(crate) fn holds_key(cert: &CertificateDer<'_>, key: &KeyPair) -> Result<bool, Error> {
    let cert = parse_cert(cert).map_err(|e| Error::BadAnswer(e.to_string()))?;
    Ok(cert.public_key().subject_public_key.data.as_ref() == key.public_key_raw())
}

/// A chain as PEM, leaf first.
pub(crate) fn chain_pem(chain: &[CertificateDer<'_>]) -> String {
    chain.iter().map(|c| pem_encode("CERTIFICATE", c)).collect()
}
