//! The agent's private keys and CSRs. Every key is made here, on the machine that uses it, and
//! never leaves it: the CA only ever sees a CSR.

use std::fmt;

use meshgate_identity::SpiffeId;
use rcgen::{CertificateParams, DistinguishedName, KeyPair, SanType, SignatureAlgorithm};
use serde::{Deserialize, Serialize};

use crate::error::Error;

/// The key types the agent makes (the ones the CA accepts in CSRs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum KeyType {
    #[default]
    EcdsaP256,
    EcdsaP384,
    Ed25519,
}

impl KeyType {
    pub const ALL: [KeyType; 3] = [Self::EcdsaP256, Self::EcdsaP384, Self::Ed25519];

    pub fn name(self) -> &'static str {
        match self {
            Self::EcdsaP256 => "ecdsa-p256",
            Self::EcdsaP384 => "ecdsa-p384",
            Self::Ed25519 => "ed25519",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == s)
    }

    fn algorithm(self) -> &'static SignatureAlgorithm {
        match self {
            Self::EcdsaP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            Self::EcdsaP384 => &rcgen::PKCS_ECDSA_P384_SHA384,
            Self::Ed25519 => &rcgen::PKCS_ED25519,
        }
    }
}

impl fmt::Display for KeyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A fresh key pair of the given type.
pub(crate) fn generate(key_type: KeyType) -> Result<KeyPair, Error> {
    KeyPair::generate_for(key_type.algorithm()).map_err(key_err)
}

/// A PEM CSR for `id` signed by `key`: one URI SAN, an empty subject, nothing else. The CA applies
/// its own profile, so asking for more would be ignored anyway.
pub(crate) fn csr_pem(id: &SpiffeId, key: &KeyPair) -> Result<String, Error> {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    let uri = id.as_str().try_into().map_err(key_err)?;
    params.subject_alt_names = vec![SanType::URI(uri)];
    params
        .serialize_request(key)
        .and_then(|csr| csr.pem())
        .map_err(key_err)
}

fn key_err(e: rcgen::Error) -> Error {
    Error::Key(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_type_names_round_trip() {
        for k in KeyType::ALL {
            assert_eq!(KeyType::parse(k.name()), Some(k));
            assert_eq!(
                serde_json::to_string(&k).unwrap(),
                format!("\"{}\"", k.name())
            );
        }
        assert_eq!(KeyType::parse("rsa"), None);
        assert_eq!(KeyType::default(), KeyType::EcdsaP256);
    }

    #[test]
    fn makes_a_pem_csr_for_every_key_type() {
        let id = SpiffeId::parse("spiffe://bank.example/ns/shop/sa/checkout").unwrap();
        for k in KeyType::ALL {
            let key = generate(k).unwrap();
            let pem = csr_pem(&id, &key).unwrap();
            assert!(
                pem.starts_with("-----BEGIN CERTIFICATE REQUEST-----"),
                "{pem}"
            );
        }
    }
}
