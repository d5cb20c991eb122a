//! X.509-SVID checks, rule by rule as the X509-SVID spec says, and chain verification against
//! the trust bundle of the leaf's own trust domain only.

use std::fmt;

use rustls_pki_types::{CertificateDer, SignatureVerificationAlgorithm, UnixTime};
use webpki::{EndEntityCert, KeyUsage};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::oid_registry::{
    OID_X509_EXT_AUTHORITY_KEY_IDENTIFIER, OID_X509_EXT_BASIC_CONSTRAINTS,
    OID_X509_EXT_EXTENDED_KEY_USAGE, OID_X509_EXT_KEY_USAGE, OID_X509_EXT_NAME_CONSTRAINTS,
    OID_X509_EXT_SUBJECT_ALT_NAME, OID_X509_EXT_SUBJECT_KEY_IDENTIFIER,
};
use x509_parser::prelude::FromDer;

use crate::bundle::BundleSet;
use crate::spiffe_id::{IdError, SpiffeId};

/// A broken X.509-SVID rule, or a failed verification. Each variant names its rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SvidError {
    #[error("no certificate was presented")]
    NoCertificate,
    #[error("certificate is not valid DER X.509: {0}")]
    Malformed(String),
    #[error("certificate has no URI SAN; an X.509-SVID has exactly one, its SPIFFE ID")]
    NoUriSan,
    #[error("certificate has {0} URI SANs; an X.509-SVID has exactly one")]
    MultipleUriSans(usize),
    #[error("certificate URI SAN is not a valid SPIFFE ID: {0}")]
    InvalidSpiffeId(IdError),
    #[error("leaf SPIFFE ID {0} has no path; a leaf SVID's ID must have a non-empty path")]
    LeafIdWithoutPath(String),
    #[error("leaf certificate has cA=true; a leaf SVID must have cA=false")]
    LeafIsCa,
    #[error("certificate has no key usage extension; an X.509-SVID must have one")]
    KeyUsageMissing,
    #[error("key usage extension is not marked critical; the X509-SVID spec requires it to be")]
    KeyUsageNotCritical,
    #[error("leaf key usage lacks digitalSignature")]
    LeafWithoutDigitalSignature,
    #[error("leaf key usage has keyCertSign; a leaf SVID must not")]
    LeafWithKeyCertSign,
    #[error("leaf key usage has cRLSign; a leaf SVID must not")]
    LeafWithCrlSign,
    #[error(
        "leaf extended key usage lacks {0}; when present it must have both serverAuth and clientAuth"
    )]
    EkuIncomplete(&'static str),
    #[error("signing certificate has cA=false or no basic constraints; it must have cA=true")]
    SigningCertNotCa,
    #[error("signing certificate key usage lacks keyCertSign")]
    SigningCertWithoutKeyCertSign,
    #[error("certificate has an unknown critical extension {0}")]
    UnknownCriticalExtension(String),
    #[error("certificate extension could not be read: {0}")]
    BadExtension(String),
    #[error("certificate expired at {not_after} (unix seconds), checked at {now}")]
    Expired { not_after: u64, now: u64 },
    #[error("certificate is not valid before {not_before} (unix seconds), checked at {now}")]
    NotYetValid { not_before: u64, now: u64 },
    #[error(
        "no trust bundle for trust domain {0:?}; an SVID is checked only against its own trust domain's bundle"
    )]
    UnknownTrustDomain(String),
    #[error("certificate chain does not verify against the bundle of {trust_domain:?}: {reason}")]
    Chain {
        trust_domain: String,
        reason: String,
    },
}

impl SvidError {
    /// The stable name of the rule that was broken.
    pub fn rule(&self) -> &'static str {
        match self {
            Self::NoCertificate => "no-certificate",
            Self::Malformed(_) => "malformed",
            Self::NoUriSan => "one-uri-san",
            Self::MultipleUriSans(_) => "one-uri-san",
            Self::InvalidSpiffeId(e) => e.rule(),
            Self::LeafIdWithoutPath(_) => "leaf-id-path",
            Self::LeafIsCa => "leaf-ca-false",
            Self::KeyUsageMissing => "key-usage-present",
            Self::KeyUsageNotCritical => "key-usage-critical",
            Self::LeafWithoutDigitalSignature => "leaf-digital-signature",
            Self::LeafWithKeyCertSign => "leaf-no-key-cert-sign",
            Self::LeafWithCrlSign => "leaf-no-crl-sign",
            Self::EkuIncomplete(_) => "eku-server-and-client",
            Self::SigningCertNotCa => "signing-ca-true",
            Self::SigningCertWithoutKeyCertSign => "signing-key-cert-sign",
            Self::UnknownCriticalExtension(_) => "unknown-critical-extension",
            Self::BadExtension(_) => "malformed-extension",
            Self::Expired { .. } => "expired",
            Self::NotYetValid { .. } => "not-yet-valid",
            Self::UnknownTrustDomain(_) => "trust-domain-bundle",
            Self::Chain { .. } => "chain",
        }
    }
}

/// A certificate serial number: big-endian bytes without leading zeros, shown as lowercase hex.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Serial(Vec<u8>);

impl Serial {
    pub fn from_bytes(bytes: &[u8]) -> Self {
        let start = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
        Self(bytes.get(start..).unwrap_or_default().to_vec())
    }

    /// Parses hex, with or without ':' separators (as `openssl x509 -serial` or a browser shows).
    pub fn parse_hex(input: &str) -> Option<Self> {
        let digits: String = input.chars().filter(|c| *c != ':').collect();
        let digits = digits.strip_prefix("0x").unwrap_or(&digits);
        if digits.is_empty() || digits.len() > 40 {
            return None;
        }
        let padded = if digits.len() % 2 == 1 {
            format!("0{digits}")
        } else {
            digits.to_owned()
        };
        hex::decode(padded).ok().map(|b| Self::from_bytes(&b))
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Display for Serial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.pad("00");
        }
        f.pad(&hex::encode(&self.0))
    }
}

impl fmt::Debug for Serial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Serial({self})")
    }
}

/// What a leaf SVID says about itself, once its profile has been checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SvidInfo {
    pub spiffe_id: SpiffeId,
    pub serial: Serial,
    /// notBefore, in seconds since the Unix epoch.
    pub not_before: u64,
    /// notAfter, in seconds since the Unix epoch.
    pub not_after: u64,
    pub dns_names: Vec<String>,
    /// SHA-256 of the certificate's DER.
    pub sha256: [u8; 32],
}

/// A leaf SVID whose profile, validity window and chain to its trust domain's bundle all passed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedSvid {
    pub info: SvidInfo,
}

/// Checks a leaf certificate against the X.509-SVID leaf profile. No time, no chain.
pub fn check_leaf(der: &[u8]) -> Result<SvidInfo, SvidError> {
    let cert = parse_cert(der)?;
    let spiffe_id = single_spiffe_id(&cert)?;
    if spiffe_id.path().is_empty() {
        return Err(SvidError::LeafIdWithoutPath(spiffe_id.to_string()));
    }
    check_critical_extensions(&cert)?;
    if is_ca(&cert)? {
        return Err(SvidError::LeafIsCa);
    }
    let ku = key_usage(&cert)?;
    if !ku.digital_signature() {
        return Err(SvidError::LeafWithoutDigitalSignature);
    }
    if ku.key_cert_sign() {
        return Err(SvidError::LeafWithKeyCertSign);
    }
    if ku.crl_sign() {
        return Err(SvidError::LeafWithCrlSign);
    }
    if let Some(eku) = cert.extended_key_usage().map_err(bad_ext)? {
        if !eku.value.server_auth {
            return Err(SvidError::EkuIncomplete("serverAuth"));
        }
        if !eku.value.client_auth {
            return Err(SvidError::EkuIncomplete("clientAuth"));
        }
    }
    let dns_names = cert
        .subject_alternative_name()
        .map_err(bad_ext)?
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::DNSName(d) => Some((*d).to_owned()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    let validity = cert.validity();
    Ok(SvidInfo {
        spiffe_id,
        serial: Serial::from_bytes(cert.raw_serial()),
        not_before: unix_secs(validity.not_before.timestamp()),
        not_after: unix_secs(validity.not_after.timestamp()),
        dns_names,
        sha256: sha256_of(der),
    })
}

/// Checks a signing (CA) certificate: cA=true, critical key usage with keyCertSign, no unknown
/// critical extension.
pub fn check_signing_cert(der: &[u8]) -> Result<(), SvidError> {
    let cert = parse_cert(der)?;
    check_critical_extensions(&cert)?;
    if !is_ca(&cert)? {
        return Err(SvidError::SigningCertNotCa);
    }
    if !key_usage(&cert)?.key_cert_sign() {
        return Err(SvidError::SigningCertWithoutKeyCertSign);
    }
    Ok(())
}

/// `verify_svid` for a chain given as one slice, leaf first.
pub fn verify_chain(
    chain: &[CertificateDer<'_>],
    bundles: &BundleSet,
    now: UnixTime,
) -> Result<VerifiedSvid, SvidError> {
    let (leaf, intermediates) = chain.split_first().ok_or(SvidError::NoCertificate)?;
    verify_svid(leaf, intermediates, bundles, now)
}

/// The full X.509-SVID check: leaf profile, signing certificate profile for every intermediate,
/// validity window at `now`, and a chain to a root in the bundle of the leaf's own trust domain.
pub fn verify_svid(
    leaf: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    bundles: &BundleSet,
    now: UnixTime,
) -> Result<VerifiedSvid, SvidError> {
    let info = check_leaf(leaf)?;
    for der in intermediates {
        check_signing_cert(der)?;
    }
    let now_secs = now.as_secs();
    if now_secs < info.not_before {
        return Err(SvidError::NotYetValid {
            not_before: info.not_before,
            now: now_secs,
        });
    }
    if now_secs > info.not_after {
        return Err(SvidError::Expired {
            not_after: info.not_after,
            now: now_secs,
        });
    }
    let td = info.spiffe_id.trust_domain_str();
    let bundle = bundles
        .get_str(td)
        .ok_or_else(|| SvidError::UnknownTrustDomain(td.to_owned()))?;
    let chain_err = |reason: String| SvidError::Chain {
        trust_domain: td.to_owned(),
        reason,
    };
    let ee = EndEntityCert::try_from(leaf).map_err(|e| chain_err(e.to_string()))?;
    // The EKU (when present) was already checked for both purposes above; webpki re-checks one.
    ee.verify_for_usage(
        SIGNATURE_ALGORITHMS,
        bundle.anchors(),
        intermediates,
        now,
        KeyUsage::client_auth(),
        None,
        None,
    )
    .map_err(|e| match e {
        webpki::Error::CertExpired { .. } => {
            chain_err("a certificate in the chain has expired".into())
        }
        other => chain_err(other.to_string()),
    })?;
    Ok(VerifiedSvid { info })
}

/// The SPIFFE ID of a leaf certificate, with only the URI SAN rules checked. For reading the ID of
/// a peer that has already been verified.
pub fn spiffe_id_of(der: &[u8]) -> Result<SpiffeId, SvidError> {
    single_spiffe_id(&parse_cert(der)?)
}

/// The SubjectPublicKeyInfo (DER) of a certificate.
pub fn public_key_der(der: &[u8]) -> Result<Vec<u8>, SvidError> {
    Ok(parse_cert(der)?.public_key().raw.to_vec())
}

/// What a certificate says about itself, read without judging it: for display.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertSummary {
    pub uri_sans: Vec<String>,
    pub serial: Serial,
    pub not_before: u64,
    pub not_after: u64,
    pub sha256: [u8; 32],
}

/// Reads the URI SANs, serial and validity of a certificate, checking nothing else.
pub fn summarize(der: &[u8]) -> Result<CertSummary, SvidError> {
    let cert = parse_cert(der)?;
    let uri_sans = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::URI(u) => Some((*u).to_owned()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    let validity = cert.validity();
    Ok(CertSummary {
        uri_sans,
        serial: Serial::from_bytes(cert.raw_serial()),
        not_before: unix_secs(validity.not_before.timestamp()),
        not_after: unix_secs(validity.not_after.timestamp()),
        sha256: sha256_of(der),
    })
}

/// Signature algorithms accepted in certificate chains (ring).
pub(crate) static SIGNATURE_ALGORITHMS: &[&dyn SignatureVerificationAlgorithm] = &[
    webpki::ring::ECDSA_P256_SHA256,
    webpki::ring::ECDSA_P256_SHA384,
    webpki::ring::ECDSA_P384_SHA256,
    webpki::ring::ECDSA_P384_SHA384,
    webpki::ring::ED25519,
    webpki::ring::RSA_PKCS1_2048_8192_SHA256,
    webpki::ring::RSA_PKCS1_2048_8192_SHA384,
    webpki::ring::RSA_PKCS1_2048_8192_SHA512,
    webpki::ring::RSA_PSS_2048_8192_SHA256_LEGACY_KEY,
    webpki::ring::RSA_PSS_2048_8192_SHA384_LEGACY_KEY,
    webpki::ring::RSA_PSS_2048_8192_SHA512_LEGACY_KEY,
];

pub fn parse_cert(der: &[u8]) -> Result<X509Certificate<'_>, SvidError> {
    let (rest, cert) =
        X509Certificate::from_der(der).map_err(|e| SvidError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(SvidError::Malformed(format!(
            "{} bytes after the certificate",
            rest.len()
        )));
    }
    Ok(cert)
}

pub fn sha256_of(der: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

fn single_spiffe_id(cert: &X509Certificate<'_>) -> Result<SpiffeId, SvidError> {
    let san = cert
        .subject_alternative_name()
        .map_err(bad_ext)?
        .ok_or(SvidError::NoUriSan)?;
    let uris: Vec<&str> = san
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::URI(u) => Some(*u),
            _ => None,
        })
        .collect();
    match uris.as_slice() {
        [] => Err(SvidError::NoUriSan),
        [one] => SpiffeId::parse(one).map_err(SvidError::InvalidSpiffeId),
        many => Err(SvidError::MultipleUriSans(many.len())),
    }
}

fn is_ca(cert: &X509Certificate<'_>) -> Result<bool, SvidError> {
    Ok(cert
        .basic_constraints()
        .map_err(bad_ext)?
        .is_some_and(|bc| bc.value.ca))
}

fn key_usage(cert: &X509Certificate<'_>) -> Result<x509_parser::extensions::KeyUsage, SvidError> {
    let ku = cert
        .key_usage()
        .map_err(bad_ext)?
        .ok_or(SvidError::KeyUsageMissing)?;
    if !ku.critical {
        return Err(SvidError::KeyUsageNotCritical);
    }
    Ok(*ku.value)
}

/// Extensions whose meaning we (or webpki) enforce; any other critical extension is rejected.
fn check_critical_extensions(cert: &X509Certificate<'_>) -> Result<(), SvidError> {
    let known = [
        OID_X509_EXT_BASIC_CONSTRAINTS,
        OID_X509_EXT_KEY_USAGE,
        OID_X509_EXT_EXTENDED_KEY_USAGE,
        OID_X509_EXT_SUBJECT_ALT_NAME,
        OID_X509_EXT_NAME_CONSTRAINTS,
        OID_X509_EXT_SUBJECT_KEY_IDENTIFIER,
        OID_X509_EXT_AUTHORITY_KEY_IDENTIFIER,
    ];
    for ext in cert.extensions() {
        if ext.critical && !known.contains(&ext.oid) {
            return Err(SvidError::UnknownCriticalExtension(ext.oid.to_id_string()));
        }
    }
    Ok(())
}

fn bad_ext(e: x509_parser::error::X509Error) -> SvidError {
    SvidError::BadExtension(e.to_string())
}

fn unix_secs(t: i64) -> u64 {
    u64::try_from(t).unwrap_or(0)
}
