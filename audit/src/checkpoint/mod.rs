//! Signed checkpoints: a record in the chain that signs the chain head (the record before it)
//! with the writing component's SVID key and carries the certificate chain, so that a log
//! verifies against the trust bundle alone and records cut off after the signed part show.
//!
//! The checkpoint record: action `checkpoint`, actor = the signer's SPIFFE ID, subject `chain`,
//! outcome `success`, trust_domain = the signer's, and `details`:
//!
//! | key | value |
//! |---|---|
//! | `version` | 1 |
//! | `head_seq`, `head_hash` | the seq and hash of the record before (the head it signs) |
//! | `trigger` | why it was written: `records`, `time`, `open`, `rotation`, `shutdown` |
//! | `every_records`, `every_seconds` | the interval the writer promises between checkpoints |
//! | `alg` | `ecdsa_p256_sha256`, `ecdsa_p384_sha384` or `ed25519` |
//! | `signature` | base64 (standard, padded) of the signature over [`message`] |
//! | `certs` | the signer's chain, base64 DER, leaf first, no root |

mod verify;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use rustls::SignatureScheme;
use rustls::sign::CertifiedKey;
use time::OffsetDateTime;

use crate::{Action, AuditEvent, ChainHash, Component, Outcome};

pub use verify::{CheckpointFault, trust_roots_from_pem};
pub(crate) use verify::{check_structure, check_with_bundle};

/// The first line of every signed message: what the signature is for and in which format.
const DOMAIN: &str = "meshgate-audit-checkpoint-v1";
/// The checkpoint format written today.
const VERSION: u64 = 1;
/// The subject of every checkpoint record.
pub(crate) const SUBJECT: &str = "chain";
/// The longest interval a checkpoint may promise: a longer one reads as forged (it would let
/// the checkpoint cover records written long before it was signed).
pub const MAX_EVERY_SECONDS: u64 = 3600;

/// Where a writer gets the key that signs its checkpoints: the component's current SVID
/// (`meshgate_identity::tls::Credentials` is one, and swaps in renewed SVIDs).
pub trait CheckpointSigner: Send + Sync {
    /// The current SVID chain (leaf first) and key; `None` while there is none (no checkpoint
    /// is written then; the next one covers the records since).
    fn current_key(&self) -> Option<Arc<CertifiedKey>>;
}

impl CheckpointSigner for meshgate_identity::tls::Credentials {
    fn current_key(&self) -> Option<Arc<CertifiedKey>> {
        self.current()
    }
}

/// How often a writer with a signer writes a checkpoint: after `every_records` records, or
/// once `every` has passed since the last checkpoint and records were written since,
/// whichever comes first; also when it opens the log, before it rotates a file, and when it
/// closes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckpointPolicy {
    every_records: u64,
    every_seconds: u64,
}

impl CheckpointPolicy {
    /// At least 1 record and 1 second (shorter values are raised to these), at most
    /// [`MAX_EVERY_SECONDS`] (longer ones are lowered to it).
    pub fn new(every_records: u64, every: Duration) -> Self {
        Self {
            every_records: every_records.max(1),
            every_seconds: every.as_secs().clamp(1, MAX_EVERY_SECONDS),
        }
    }

    pub fn every_records(&self) -> u64 {
        self.every_records
    }

    pub fn every(&self) -> Duration {
        Duration::from_secs(self.every_seconds)
    }
}

impl Default for CheckpointPolicy {
    /// Every 1,000 records or 60 seconds.
    fn default() -> Self {
        Self::new(1000, Duration::from_secs(60))
    }
}

/// Why a checkpoint was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Trigger {
    /// `every_records` records since the last checkpoint.
    Records,
    /// `every_seconds` passed since the last checkpoint, and records were written since.
    Time,
    /// The writer opened the log (a new log too: the head is then seq 0).
    Open,
    /// The file is full or old and is rotated after this record.
    Rotation,
    /// The writer is closing cleanly.
    Shutdown,
}

impl Trigger {
    pub fn code(self) -> &'static str {
        match self {
            Self::Records => "records",
            Self::Time => "time",
            Self::Open => "open",
            Self::Rotation => "rotation",
            Self::Shutdown => "shutdown",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Self> {
        [
            Self::Records,
            Self::Time,
            Self::Open,
            Self::Rotation,
            Self::Shutdown,
        ]
        .into_iter()
        .find(|t| t.code() == s)
    }
}

impl fmt::Display for Trigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// What a checkpoint signs. Every fact a verifier relies on is in the message, because the
/// last checkpoint's own record is not covered by any later signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Claim<'a> {
    pub component: Component,
    pub signer: &'a str,
    /// The checkpoint record's `time`, exactly as written.
    pub time: &'a str,
    pub head_seq: u64,
    pub head_hash: ChainHash,
    pub every_records: u64,
    pub every_seconds: u64,
    pub trigger: Trigger,
}

/// The signed bytes: `meshgate-audit-checkpoint-v1` then one `key=value` line per fact, each
/// ending in `\n`.
pub(crate) fn message(c: &Claim<'_>) -> Vec<u8> {
    let component = match c.component {
        Component::Ca => "ca",
        Component::Gateway => "gateway",
        Component::Cli => "cli",
    };
    format!(
        "{DOMAIN}\ncomponent={component}\nsigner={}\ntime={}\nhead_seq={}\nhead_hash={}\nevery_records={}\nevery_seconds={}\ntrigger={}\n",
        c.signer,
        c.time,
        c.head_seq,
        c.head_hash,
        c.every_records,
        c.every_seconds,
        c.trigger
    )
    .into_bytes()
}

/// Why no checkpoint could be signed (the writer logs it and tries again later).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SignFailure {
    NoKey,
    Unusable(String),
    Expired,
}

impl fmt::Display for SignFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoKey => f.write_str("no SVID yet"),
            Self::Unusable(why) => write!(f, "the SVID cannot sign: {why}"),
            Self::Expired => f.write_str("the SVID has expired; waiting for a renewed one"),
        }
    }
}

/// Builds the checkpoint event for `head` at `time` (the record's time string), signed with
/// the signer's current key.
pub(crate) fn sign(
    signer: &dyn CheckpointSigner,
    component: Component,
    policy: &CheckpointPolicy,
    trigger: Trigger,
    time: &str,
    now: OffsetDateTime,
    head: (u64, ChainHash),
) -> Result<AuditEvent, SignFailure> {
    let key = signer.current_key().ok_or(SignFailure::NoKey)?;
    let leaf = key
        .cert
        .first()
        .ok_or_else(|| SignFailure::Unusable("empty certificate chain".into()))?;
    let info = meshgate_identity::svid::check_leaf(leaf)
        .map_err(|e| SignFailure::Unusable(e.to_string()))?;
    let now_secs = u64::try_from(now.unix_timestamp()).unwrap_or(0);
    // A signature by an expired SVID would read as forged; better to leave the records
    // uncovered until the renewed SVID signs them all.
    if now_secs > info.not_after || now_secs < info.not_before {
        return Err(SignFailure::Expired);
    }
    let schemes = [
        SignatureScheme::ECDSA_NISTP256_SHA256,
        SignatureScheme::ECDSA_NISTP384_SHA384,
        SignatureScheme::ED25519,
    ];
    let signing = key
        .key
        .choose_scheme(&schemes)
        .ok_or_else(|| SignFailure::Unusable("not an ECDSA P-256/P-384 or Ed25519 key".into()))?;
    let alg = alg_name(signing.scheme())
        .ok_or_else(|| SignFailure::Unusable("unexpected signature scheme".into()))?;
    let signer_id = info.spiffe_id.as_str();
    let claim = Claim {
        component,
        signer: signer_id,
        time,
        head_seq: head.0,
        head_hash: head.1,
        every_records: policy.every_records,
        every_seconds: policy.every_seconds,
        trigger,
    };
    let signature = signing
        .sign(&message(&claim))
        .map_err(|e| SignFailure::Unusable(e.to_string()))?;
    // The root is in the verifier's bundle; a chain that ends in it (the CA's own SVID does,
    // for enrolling clients) would only add bytes.
    let certs: Vec<serde_json::Value> = key
        .cert
        .iter()
        .filter(|c| !is_self_signed(c))
        .map(|c| STANDARD.encode(c).into())
        .collect();
    let mut details = BTreeMap::new();
    details.insert("version".to_owned(), VERSION.into());
    details.insert("head_seq".to_owned(), head.0.into());
    details.insert("head_hash".to_owned(), head.1.to_hex().into());
    details.insert("trigger".to_owned(), trigger.code().into());
    details.insert("every_records".to_owned(), policy.every_records.into());
    details.insert("every_seconds".to_owned(), policy.every_seconds.into());
    details.insert("alg".to_owned(), alg.into());
    details.insert("signature".to_owned(), STANDARD.encode(signature).into());
    details.insert("certs".to_owned(), certs.into());
    let mut event = AuditEvent::new(
        component,
        signer_id,
        Action::Checkpoint,
        SUBJECT,
        Outcome::Success,
    )
    .with_trust_domain(info.spiffe_id.trust_domain_str());
    event.details = details;
    Ok(event)
}

/// The name of a signature scheme in a checkpoint's `alg`.
fn alg_name(scheme: SignatureScheme) -> Option<&'static str> {
    match scheme {
        SignatureScheme::ECDSA_NISTP256_SHA256 => Some("ecdsa_p256_sha256"),
        SignatureScheme::ECDSA_NISTP384_SHA384 => Some("ecdsa_p384_sha384"),
        SignatureScheme::ED25519 => Some("ed25519"),
        _ => None,
    }
}

fn is_self_signed(der: &[u8]) -> bool {
    meshgate_identity::svid::parse_cert(der)
        .is_ok_and(|c| c.subject().as_raw() == c.issuer().as_raw())
}
