//! Certificate signing requests: parsed, their self-signature verified, their one URI SAN and
//! key type checked. The CA applies its own profile; requested extensions are not copied.

use meshgate_identity::SpiffeId;
use rcgen::SubjectPublicKeyInfo;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_SIG_ED25519,
};
use x509_parser::prelude::FromDer;

use crate::error::CaError;
use crate::keys::KeyType;

/// A CSR that passed every check: its key, its key type and the SPIFFE ID it asks for.
#[derive(Debug)]
pub struct CheckedCsr {
    pub spiffe_id: SpiffeId,
    pub key_type: KeyType,
    pub(crate) public_key: SubjectPublicKeyInfo,
    /// The request's SubjectPublicKeyInfo, DER.
    pub spki_der: Vec<u8>,
}

/// Parses and checks a DER CSR. `expected` is the one SPIFFE ID the caller may ask for.
pub fn check_csr(der: &[u8], expected: &SpiffeId) -> Result<CheckedCsr, CaError> {
    let bad = |rule: &'static str, detail: String| CaError::BadCsr { rule, detail };
    let (rest, csr) = X509CertificationRequest::from_der(der)
        .map_err(|e| bad("malformed", format!("not a DER PKCS#10 request: {e}")))?;
    if !rest.is_empty() {
        return Err(bad(
            "malformed",
            format!("{} bytes after the request", rest.len()),
        ));
    }
    csr.verify_signature().map_err(|e| {
        bad(
            "self-signature",
            format!("the request's signature does not verify: {e}"),
        )
    })?;

    let mut uris = Vec::new();
    for ext in csr.requested_extensions().into_iter().flatten() {
        match ext {
            ParsedExtension::SubjectAlternativeName(san) => {
                for name in &san.general_names {
                    if let GeneralName::URI(u) = name {
                        uris.push(*u);
                    }
                }
            }
            ParsedExtension::BasicConstraints(bc) if bc.ca => {
                return Err(bad(
                    "ca-requested",
                    "the request asks for cA=true; the CA issues only leaf SVIDs".into(),
                ));
            }
            // Any other requested extension is ignored: the CA's profile decides.
            _ => {}
        }
    }
    let spiffe_id = match uris.as_slice() {
        [one] => SpiffeId::parse(one).map_err(|e| bad("spiffe-id", e.to_string()))?,
        [] => return Err(bad("one-uri-san", "the request has no URI SAN".into())),
        many => {
            return Err(bad(
                "one-uri-san",
                format!(
                    "the request has {} URI SANs; exactly one is allowed",
                    many.len()
                ),
            ));
        }
    };
    if &spiffe_id != expected {
        return Err(bad(
            "spiffe-id-mismatch",
            format!("the request asks for {spiffe_id}, but only {expected} may be issued"),
        ));
    }

    let spki = &csr.certification_request_info.subject_pki;
    let alg = &spki.algorithm.algorithm;
    let key_type = if *alg == OID_SIG_ED25519 {
        KeyType::Ed25519
    } else if *alg == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok());
        match curve {
            Some(c) if c == OID_EC_P256 => KeyType::EcdsaP256,
            Some(c) if c == OID_NIST_EC_P384 => KeyType::EcdsaP384,
            _ => {
                return Err(bad(
                    "key-type",
                    "EC key on an unsupported curve; accepted: P-256, P-384".into(),
                ));
            }
        }
    } else {
        return Err(bad(
            "key-type",
            format!(
                "key algorithm {alg} is not accepted; accepted: ecdsa-p256, ecdsa-p384, ed25519"
            ),
        ));
    };
    let public_key = SubjectPublicKeyInfo::from_der(spki.raw)
        .map_err(|e| bad("key-type", format!("unreadable public key: {e}")))?;
    Ok(CheckedCsr {
        spiffe_id,
        key_type,
        public_key,
        spki_der: spki.raw.to_vec(),
    })
}

/// Makes a CSR for `id` with `key`: what an agent sends, and what `ca issue` uses internally.
pub fn make_csr(id: &SpiffeId, key: &rcgen::KeyPair) -> Result<Vec<u8>, CaError> {
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.subject_alt_names = vec![rcgen::SanType::URI(id.as_str().try_into()?)];
    Ok(params.serialize_request(key)?.der().to_vec())
}
