//! Trust bundles: the roots of one trust domain, read and written as PEM or as a SPIFFE bundle
//! (JWKS), and the per-trust-domain set that verifiers consult. Bundles are never pooled.

use std::collections::BTreeMap;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::TrustAnchor;
use rustls_pki_types::pem::PemObject;
use serde::{Deserialize, Serialize};
use x509_parser::oid_registry::{OID_EC_P256, OID_NIST_EC_P384, OID_NIST_EC_P521};
use x509_parser::public_key::PublicKey;

use crate::spiffe_id::TrustDomain;
use crate::svid::{self, SvidError};

/// The `use` value of X.509-SVID roots in a SPIFFE bundle.
pub const USE_X509_SVID: &str = "x509-svid";
/// The `use` value of JWT-SVID keys, which meshgate reads past (it issues no JWT-SVIDs).
pub const USE_JWT_SVID: &str = "jwt-svid";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BundleError {
    #[error("bundle has no certificates; expected at least one root")]
    Empty,
    #[error("bundle PEM is unreadable: {0}")]
    Pem(String),
    #[error("bundle root #{index} is not a usable root: {error}")]
    BadRoot { index: usize, error: SvidError },
    #[error("bundle JSON is not a SPIFFE bundle: {0}")]
    Json(String),
    #[error("bundle key #{index}: {reason}")]
    BadKey { index: usize, reason: String },
}

/// The roots of one trust domain, with the SPIFFE bundle sequence number and refresh hint.
#[derive(Debug, Clone)]
pub struct TrustBundle {
    trust_domain: TrustDomain,
    roots: Vec<CertificateDer<'static>>,
    anchors: Vec<TrustAnchor<'static>>,
    /// `spiffe_sequence`: bumped by the CA on every change.
    pub sequence: u64,
    /// `spiffe_refresh_hint` in seconds: how often consumers should refresh.
    pub refresh_hint: Option<u64>,
}

impl TrustBundle {
    /// A bundle of the given roots; each must be a signing (CA) certificate.
    pub fn new(
        trust_domain: TrustDomain,
        roots: Vec<CertificateDer<'static>>,
    ) -> Result<Self, BundleError> {
        if roots.is_empty() {
            return Err(BundleError::Empty);
        }
        let mut anchors = Vec::with_capacity(roots.len());
        for (index, der) in roots.iter().enumerate() {
            svid::check_signing_cert(der).map_err(|error| BundleError::BadRoot { index, error })?;
            let anchor =
                webpki::anchor_from_trusted_cert(der).map_err(|e| BundleError::BadRoot {
                    index,
                    error: SvidError::Malformed(e.to_string()),
                })?;
            anchors.push(anchor.to_owned());
        }
        Ok(Self {
            trust_domain,
            roots,
            anchors,
            sequence: 0,
            refresh_hint: None,
        })
    }

    /// Reads roots from PEM text (one or more CERTIFICATE blocks).
    pub fn from_pem(trust_domain: TrustDomain, pem: &[u8]) -> Result<Self, BundleError> {
        let roots = certs_from_pem(pem).map_err(BundleError::Pem)?;
        Self::new(trust_domain, roots)
    }

    /// The roots as concatenated PEM blocks.
    pub fn to_pem(&self) -> String {
        self.roots
            .iter()
            .map(|c| pem_encode("CERTIFICATE", c))
            .collect()
    }

    /// Reads a SPIFFE bundle (JWKS). Keys whose `use` is `jwt-svid` are skipped.
    pub fn from_jwks(trust_domain: TrustDomain, json: &[u8]) -> Result<Self, BundleError> {
        let doc: JwksDoc =
            serde_json::from_slice(json).map_err(|e| BundleError::Json(e.to_string()))?;
        let mut roots = Vec::new();
        for (index, key) in doc.keys.iter().enumerate() {
            let bad = |reason: &str| BundleError::BadKey {
                index,
                reason: reason.to_owned(),
            };
            match key.use_.as_deref() {
                Some(USE_X509_SVID) => {}
                Some(USE_JWT_SVID) => continue,
                Some(_) | None => {
                    return Err(bad("`use` must be \"x509-svid\" or \"jwt-svid\""));
                }
            }
            if key.kid.is_some() {
                return Err(bad("an x509-svid key must not have a `kid`"));
            }
            let [b64] = key.x5c.as_deref().unwrap_or_default() else {
                return Err(bad(
                    "an x509-svid key must have exactly one `x5c` certificate",
                ));
            };
            let der = STANDARD
                .decode(b64)
                .map_err(|_| bad("`x5c` is not standard base64"))?;
            let params = jwk_params(&der).map_err(|e| BundleError::BadKey {
                index,
                reason: e.to_string(),
            })?;
            if params.kty != key.kty || params.crv.is_some() && params.crv != key.crv {
                return Err(bad("`kty`/`crv` do not match the key in `x5c`"));
            }
            roots.push(CertificateDer::from(der));
        }
        let mut bundle = Self::new(trust_domain, roots)?;
        bundle.sequence = doc.spiffe_sequence.unwrap_or(0);
        bundle.refresh_hint = doc.spiffe_refresh_hint;
        Ok(bundle)
    }

    /// Writes the SPIFFE bundle (JWKS) form.
    pub fn to_jwks(&self) -> Result<String, BundleError> {
        let mut keys = Vec::with_capacity(self.roots.len());
        for (index, der) in self.roots.iter().enumerate() {
            let p = jwk_params(der).map_err(|e| BundleError::BadKey {
                index,
                reason: e.to_string(),
            })?;
            keys.push(Jwk {
                use_: Some(USE_X509_SVID.to_owned()),
                kty: p.kty,
                crv: p.crv,
                x: p.x,
                y: p.y,
                n: p.n,
                e: p.e,
                kid: None,
                x5c: Some(vec![STANDARD.encode(der)]),
            });
        }
        let doc = JwksDoc {
            keys,
            spiffe_sequence: Some(self.sequence),
            spiffe_refresh_hint: self.refresh_hint,
        };
        serde_json::to_string_pretty(&doc).map_err(|e| BundleError::Json(e.to_string()))
    }

    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }

    pub(crate) fn anchors(&self) -> &[TrustAnchor<'static>] {
        &self.anchors
    }
}

/// One bundle per trust domain. A certificate is only ever checked against its own domain's.
#[derive(Debug, Clone, Default)]
pub struct BundleSet {
    bundles: BTreeMap<TrustDomain, Arc<TrustBundle>>,
}

impl BundleSet {
    pub fn new() -> Self {
        Self::default()
    }

    /// A set holding one bundle.
    pub fn single(bundle: TrustBundle) -> Self {
        let mut set = Self::new();
        set.insert(bundle);
        set
    }

    /// Adds or replaces the bundle of the bundle's trust domain.
    pub fn insert(&mut self, bundle: TrustBundle) {
        self.bundles
            .insert(bundle.trust_domain.clone(), Arc::new(bundle));
    }

    pub fn get(&self, td: &TrustDomain) -> Option<&TrustBundle> {
        self.bundles.get(td).map(Arc::as_ref)
    }

    pub(crate) fn get_str(&self, td: &str) -> Option<&TrustBundle> {
        self.bundles
            .iter()
            .find(|(k, _)| k.as_str() == td)
            .map(|(_, v)| v.as_ref())
    }

    pub fn iter(&self) -> impl Iterator<Item = &TrustBundle> {
        self.bundles.values().map(Arc::as_ref)
    }
}

/// Reads every CERTIFICATE block of a PEM text; anything else in it is an error.
pub fn certs_from_pem(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    if certs.is_empty() {
        return Err("no CERTIFICATE block found".to_owned());
    }
    Ok(certs)
}

/// Encodes DER as one PEM block with the given label.
pub fn pem_encode(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

#[derive(Debug, Serialize, Deserialize)]
struct JwksDoc {
    keys: Vec<Jwk>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    spiffe_sequence: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    spiffe_refresh_hint: Option<u64>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Jwk {
    #[serde(rename = "use", default)]
    use_: Option<String>,
    kty: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    crv: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    x: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    y: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    n: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    e: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    kid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    x5c: Option<Vec<String>>,
}

/// The JWK public key parameters (RFC 7518 section 6) of a certificate's key.
struct JwkParams {
    kty: String,
    crv: Option<String>,
    x: Option<String>,
    y: Option<String>,
    n: Option<String>,
    e: Option<String>,
}

fn jwk_params(der: &[u8]) -> Result<JwkParams, SvidError> {
    let cert = svid::parse_cert(der)?;
    let spki = cert.public_key();
    let key = spki
        .parsed()
        .map_err(|e| SvidError::Malformed(e.to_string()))?;
    let b64 = |b: &[u8]| Some(URL_SAFE_NO_PAD.encode(b));
    let none = JwkParams {
        kty: String::new(),
        crv: None,
        x: None,
        y: None,
        n: None,
        e: None,
    };
    match key {
        PublicKey::EC(point) => {
            let data = point.data();
            // The SPKI parameters name the curve; the point's size does not (x509-parser's
            // key_size() is 528 for P-521, and other 256-bit curves are not P-256).
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok());
            let (crv, len) = match curve {
                Some(oid) if oid == OID_EC_P256 => ("P-256", 32),
                Some(oid) if oid == OID_NIST_EC_P384 => ("P-384", 48),
                Some(oid) if oid == OID_NIST_EC_P521 => ("P-521", 66),
                _ => {
                    return Err(SvidError::Malformed(
                        "EC key on an unsupported curve".into(),
                    ));
                }
            };
            let (x, y) = match data.split_first() {
                Some((4, xy)) if xy.len() == 2 * len => xy.split_at(len),
                _ => return Err(SvidError::Malformed("EC point is not uncompressed".into())),
            };
            Ok(JwkParams {
                kty: "EC".into(),
                crv: Some(crv.into()),
                x: b64(x),
                y: b64(y),
                ..none
            })
        }
        PublicKey::RSA(rsa) => {
            // DER integers may carry a leading 0x00; JWK wants minimal octets (RFC 7518 6.3.1).
            let unsigned = |b: &[u8]| b64(b.get(b.iter().take_while(|x| **x == 0).count()..)?);
            Ok(JwkParams {
                kty: "RSA".into(),
                n: unsigned(rsa.modulus),
                e: unsigned(rsa.exponent),
                ..none
            })
        }
        PublicKey::Unknown(raw)
            if spki.algorithm.algorithm == x509_parser::oid_registry::OID_SIG_ED25519 =>
        {
            Ok(JwkParams {
                kty: "OKP".into(),
                crv: Some("Ed25519".into()),
                x: b64(raw),
                ..none
            })
        }
        _ => Err(SvidError::Malformed("unsupported public key type".into())),
    }
}
