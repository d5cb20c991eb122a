//! Checking a checkpoint record: first that it holds together (without any trust), then, with
//! a trust bundle, that its certificate chain was valid at the checkpoint's time and that the
//! signature over the chain head verifies.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use meshgate_identity::bundle::certs_from_pem;
use meshgate_identity::svid::{self, verify_chain};
use meshgate_identity::{BundleSet, SpiffeId, TrustBundle};
use ring::signature::{self, UnparsedPublicKey, VerificationAlgorithm};
use rustls_pki_types::{CertificateDer, UnixTime};

use super::{Claim, MAX_EVERY_SECONDS, SUBJECT, Trigger, VERSION, message};
use crate::record::format_time;
use crate::{AuditError, Component, Outcome, Record};

/// The path of the CA's own SPIFFE ID, the only signer of a CA's log.
const CA_SIGNER_PATH: &str = "/meshgate/ca";

/// The details keys of a checkpoint, all required, no others.
const KEYS: [&str; 9] = [
    "alg",
    "certs",
    "every_records",
    "every_seconds",
    "head_hash",
    "head_seq",
    "signature",
    "trigger",
    "version",
];

/// Why a checkpoint is not genuine.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CheckpointFault {
    #[error("its details are not a checkpoint's: {0}")]
    Malformed(String),
    #[error("it signs seq {claimed}, not the record before it")]
    WrongHead { claimed: u64 },
    #[error("its signer {signer} is not its actor {actor}, or not in its trust domain")]
    SignerMismatch { signer: String, actor: String },
    #[error("{signer} cannot sign a {component} log")]
    WrongSigner { signer: String, component: String },
    #[error("signed by {signer}, but earlier checkpoints of this log by {first}")]
    SignerChanged { signer: String, first: String },
    #[error("signed by {signer}, not by {expected} as expected")]
    UnexpectedSigner { signer: String, expected: String },
    #[error("its certificate chain does not verify at the checkpoint's time: {0}")]
    Chain(String),
    #[error("the signature does not verify with the signer's key")]
    BadSignature,
}

/// A checkpoint that holds together; its signature is not checked yet.
#[derive(Debug)]
pub(crate) struct Signed {
    pub signer: SpiffeId,
    pub trigger: Trigger,
    pub every_records: u64,
    pub every_seconds: u64,
    alg: &'static dyn VerificationAlgorithm,
    signature: Vec<u8>,
    certs: Vec<CertificateDer<'static>>,
    message: Vec<u8>,
}

/// Checks what can be checked without trusting anything: the details' shape, that it signs the
/// record before it, and that its signer is its actor and may sign a log of its component.
pub(crate) fn check_structure(record: &Record) -> Result<Signed, CheckpointFault> {
    let d = &record.event.details;
    let malformed = |what: &str| CheckpointFault::Malformed(what.to_owned());
    if d.len() != KEYS.len() || !KEYS.iter().all(|k| d.contains_key(*k)) {
        return Err(malformed(&format!("expected exactly the keys {KEYS:?}")));
    }
    let number = |k: &str| d.get(k).and_then(serde_json::Value::as_u64);
    let text = |k: &str| d.get(k).and_then(serde_json::Value::as_str);
    if number("version") != Some(VERSION) {
        return Err(malformed("version is not 1"));
    }
    let head_seq = number("head_seq").ok_or_else(|| malformed("head_seq"))?;
    if head_seq.checked_add(1) != Some(record.seq)
        || text("head_hash") != Some(record.prev.to_hex().as_str())
    {
        return Err(CheckpointFault::WrongHead { claimed: head_seq });
    }
    let trigger = text("trigger")
        .and_then(Trigger::parse)
        .ok_or_else(|| malformed("trigger"))?;
    let every_records = number("every_records")
        .filter(|n| *n > 0)
        .ok_or_else(|| malformed("every_records"))?;
    let every_seconds = number("every_seconds")
        .filter(|n| (1..=MAX_EVERY_SECONDS).contains(n))
        .ok_or_else(|| malformed("every_seconds (from 1 to 3600)"))?;
    let alg: &'static dyn VerificationAlgorithm = match text("alg") {
        Some("ecdsa_p256_sha256") => &signature::ECDSA_P256_SHA256_ASN1,
        Some("ecdsa_p384_sha384") => &signature::ECDSA_P384_SHA384_ASN1,
        Some("ed25519") => &signature::ED25519,
        _ => return Err(malformed("alg")),
    };
    let signature = text("signature")
        .and_then(|s| STANDARD.decode(s).ok())
        .ok_or_else(|| malformed("signature is not base64"))?;
    let certs = d
        .get("certs")
        .and_then(serde_json::Value::as_array)
        .filter(|a| !a.is_empty())
        .ok_or_else(|| malformed("certs"))?
        .iter()
        .map(|c| c.as_str().and_then(|s| STANDARD.decode(s).ok()))
        .map(|der| der.map(CertificateDer::from))
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| malformed("certs are not base64 DER"))?;
    let leaf = certs.first().ok_or_else(|| malformed("certs"))?;
    let signer = svid::spiffe_id_of(leaf).map_err(|e| malformed(&e.to_string()))?;
    let e = &record.event;
    if e.actor != signer.as_str()
        || e.trust_domain.as_deref() != Some(signer.trust_domain_str())
        || e.subject != SUBJECT
        || e.outcome != Outcome::Success
    {
        return Err(CheckpointFault::SignerMismatch {
            signer: signer.to_string(),
            actor: e.actor.clone(),
        });
    }
    let plausible = match e.component {
        Component::Ca => signer.path() == CA_SIGNER_PATH,
        Component::Gateway => signer.path() != CA_SIGNER_PATH,
        Component::Cli => false,
    };
    if !plausible {
        return Err(CheckpointFault::WrongSigner {
            signer: signer.to_string(),
            component: format!("{:?}", e.component).to_lowercase(),
        });
    }
    let time = format_time(record.time).map_err(|e| malformed(&e.to_string()))?;
    let message = message(&Claim {
        component: e.component,
        signer: signer.as_str(),
        time: &time,
        head_seq,
        head_hash: record.prev,
        every_records,
        every_seconds,
        trigger,
    });
    Ok(Signed {
        signer,
        trigger,
        every_records,
        every_seconds,
        alg,
        signature,
        certs,
        message,
    })
}

/// Checks the chain against the bundle of the signer's trust domain at the checkpoint's time
/// (SVIDs live an hour: "now" would reject every old checkpoint), then the signature.
pub(crate) fn check_with_bundle(
    signed: &Signed,
    record: &Record,
    bundles: &BundleSet,
) -> Result<(), CheckpointFault> {
    let secs = u64::try_from(record.time.unix_timestamp()).unwrap_or(0);
    let at = UnixTime::since_unix_epoch(std::time::Duration::from_secs(secs));
    verify_chain(&signed.certs, bundles, at).map_err(|e| CheckpointFault::Chain(e.to_string()))?;
    let leaf = signed.certs.first().ok_or(CheckpointFault::BadSignature)?;
    let cert = svid::parse_cert(leaf).map_err(|e| CheckpointFault::Chain(e.to_string()))?;
    let key = cert.public_key().subject_public_key.data.as_ref();
    UnparsedPublicKey::new(signed.alg, key)
        .verify(&signed.message, &signed.signature)
        .map_err(|_| CheckpointFault::BadSignature)
}

/// Reads trust roots from PEM texts (each one or more CERTIFICATE blocks) into one bundle per
/// trust domain, named by each root's `spiffe://<td>` URI SAN. Several texts (an old and a new
/// bundle across a root rotation, or several trust domains) are merged; duplicates are dropped.
pub fn trust_roots_from_pem(texts: &[&[u8]]) -> Result<BundleSet, AuditError> {
    let mut by_td: BTreeMap<String, (SpiffeId, Vec<CertificateDer<'static>>)> = BTreeMap::new();
    for (i, text) in texts.iter().enumerate() {
        let certs = certs_from_pem(text)
            .map_err(|e| AuditError::Bundle(format!("bundle #{}: {e}", i + 1)))?;
        for der in certs {
            let uris = svid::summarize(&der)
                .map_err(|e| AuditError::Bundle(format!("bundle #{}: {e}", i + 1)))?
                .uri_sans;
            let id = match uris.as_slice() {
                [one] => SpiffeId::parse(one).ok().filter(|id| id.path().is_empty()),
                _ => None,
            }
            .ok_or_else(|| {
                AuditError::Bundle(format!(
                    "bundle #{}: a root without exactly one spiffe://<trust domain> URI SAN; give the roots `meshgate ca bundle` prints",
                    i + 1
                ))
            })?;
            let entry = by_td
                .entry(id.trust_domain_str().to_owned())
                .or_insert_with(|| (id.clone(), Vec::new()));
            if !entry.1.contains(&der) {
                entry.1.push(der);
            }
        }
    }
    let mut set = BundleSet::new();
    for (td, (id, roots)) in by_td {
        let bundle = TrustBundle::new(id.trust_domain(), roots)
            .map_err(|e| AuditError::Bundle(format!("roots of {td}: {e}")))?;
        set.insert(bundle);
    }
    Ok(set)
}
