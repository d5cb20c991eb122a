//! Mints roots, intermediates and leaves with rcgen at test time, with one knob per X.509-SVID
//! rule so that each conformance test can break exactly one rule and keep the rest valid.

// Each test file includes this module and uses a different part of it.
#![allow(dead_code)]

use std::time::Duration as StdDuration;

use meshgate_identity::{BundleSet, TrustBundle, TrustDomain};
use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
    PublicKeyData, SanType, SignatureAlgorithm,
};
use rustls_pki_types::{CertificateDer, UnixTime};
use time::{Duration, OffsetDateTime};

/// A private-enterprise OID nobody assigns meaning to: a verifier cannot know it.
pub const UNKNOWN_EXT_OID: &[u64] = &[1, 3, 6, 1, 4, 1, 99999, 1];
const KEY_USAGE_OID: &[u64] = &[2, 5, 29, 15];
/// DER NULL, the smallest valid extension value.
const DER_NULL: &[u8] = &[0x05, 0x00];

pub fn now() -> UnixTime {
    at(OffsetDateTime::now_utc())
}

pub fn at(t: OffsetDateTime) -> UnixTime {
    let secs = u64::try_from(t.unix_timestamp()).expect("time after 1970");
    UnixTime::since_unix_epoch(StdDuration::from_secs(secs))
}

/// The knobs of a signing (CA) certificate. `Default` is a valid X.509-SVID signing certificate.
#[derive(Debug, Clone)]
pub struct CaSpec {
    pub is_ca: bool,
    pub key_usages: Vec<KeyUsagePurpose>,
    /// An extension of `UNKNOWN_EXT_OID`, critical (`Some(true)`) or not.
    pub unknown_ext: Option<bool>,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

impl Default for CaSpec {
    fn default() -> Self {
        let now = OffsetDateTime::now_utc();
        Self {
            is_ca: true,
            key_usages: vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign],
            unknown_ext: None,
            not_before: now - Duration::days(1),
            not_after: now + Duration::days(1),
        }
    }
}

/// The knobs of a leaf. `Leaf::new` is a valid X.509-SVID leaf.
#[derive(Debug, Clone)]
pub struct Leaf {
    pub uris: Vec<String>,
    pub is_ca: bool,
    pub key_usages: Vec<KeyUsagePurpose>,
    pub ku_critical: bool,
    pub ekus: Vec<ExtendedKeyUsagePurpose>,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    /// An extension of `UNKNOWN_EXT_OID`, critical (`Some(true)`) or not.
    pub unknown_ext: Option<bool>,
    /// Extensions written as given, after all others (for duplicates and broken encodings).
    pub extra: Vec<CustomExtension>,
}

impl Leaf {
    pub fn new(id: &str) -> Self {
        let now = OffsetDateTime::now_utc();
        Self {
            uris: vec![id.to_owned()],
            is_ca: false,
            key_usages: vec![KeyUsagePurpose::DigitalSignature],
            ku_critical: true,
            ekus: vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
            not_before: now - Duration::hours(1),
            not_after: now + Duration::hours(1),
            unknown_ext: None,
            extra: vec![],
        }
    }
}

/// A signing certificate with its key, able to sign intermediates and leaves.
#[derive(Debug)]
pub struct Ca {
    pub der: CertificateDer<'static>,
    params: CertificateParams,
    key: KeyPair,
}

impl Ca {
    /// A self-signed root of `td` whose URI SAN is the trust domain ID, with a P-256 key.
    pub fn root(td: &str) -> Self {
        Self::root_with(td, &PKCS_ECDSA_P256_SHA256, &CaSpec::default())
    }

    pub fn root_with(td: &str, alg: &'static SignatureAlgorithm, spec: &CaSpec) -> Self {
        let key = KeyPair::generate_for(alg).expect("key generation");
        let mut params = ca_params(&format!("{td} root"), spec, None);
        params.subject_alt_names = vec![uri_san(&format!("spiffe://{td}"))];
        let der = params
            .self_signed(&key)
            .expect("self-signed root")
            .der()
            .clone();
        Self { der, params, key }
    }

    /// A valid intermediate under this CA, pathLen 0.
    pub fn intermediate(&self) -> Self {
        self.intermediate_with(&CaSpec::default())
    }

    pub fn intermediate_with(&self, spec: &CaSpec) -> Self {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("key generation");
        let params = ca_params("intermediate", spec, Some(0));
        let der = params
            .signed_by(&key, &self.issuer())
            .expect("sign intermediate")
            .der()
            .clone();
        Self { der, params, key }
    }

    pub fn leaf(&self, spec: &Leaf) -> CertificateDer<'static> {
        self.leaf_with_key(spec).0
    }

    /// The leaf and its private key (PKCS#8 PEM), for building rustls credentials.
    pub fn leaf_with_key(&self, spec: &Leaf) -> (CertificateDer<'static>, String) {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("key generation");
        let mut params = CertificateParams::default();
        params.distinguished_name = common_name("leaf");
        params.subject_alt_names = spec.uris.iter().map(|u| uri_san(u)).collect();
        params.is_ca = if spec.is_ca {
            IsCa::Ca(BasicConstraints::Unconstrained)
        } else {
            IsCa::ExplicitNoCa
        };
        set_key_usage(&mut params, &spec.key_usages, spec.ku_critical);
        params.extended_key_usages = spec.ekus.clone();
        params.not_before = spec.not_before;
        params.not_after = spec.not_after;
        if let Some(critical) = spec.unknown_ext {
            params.custom_extensions.push(unknown_extension(critical));
        }
        params.custom_extensions.extend(spec.extra.iter().cloned());
        let der = params
            .signed_by(&key, &self.issuer())
            .expect("sign leaf")
            .der()
            .clone();
        (der, key.serialize_pem())
    }

    /// A CA certificate for a public key this module has no private key for (an RSA or P-521
    /// key, which ring cannot generate). Only its SPKI matters: bundles do not check a root's
    /// signature, so this CA signing it is good enough.
    pub fn ca_for_public_key(&self, public_key: &impl PublicKeyData) -> CertificateDer<'static> {
        let params = ca_params("foreign-key root", &CaSpec::default(), None);
        params
            .signed_by(public_key, &self.issuer())
            .expect("sign")
            .der()
            .clone()
    }

    fn issuer(&self) -> Issuer<'_, &KeyPair> {
        Issuer::from_params(&self.params, &self.key)
    }
}

/// The usual test PKI: root of `td` and one intermediate under it.
#[derive(Debug)]
pub struct Pki {
    pub td: String,
    pub root: Ca,
    pub intermediate: Ca,
}

impl Pki {
    pub fn new(td: &str) -> Self {
        let root = Ca::root(td);
        let intermediate = root.intermediate();
        Self {
            td: td.to_owned(),
            root,
            intermediate,
        }
    }

    /// `[leaf, intermediate]`, leaf first, as a peer presents it.
    pub fn chain(&self, leaf: &Leaf) -> Vec<CertificateDer<'static>> {
        vec![self.intermediate.leaf(leaf), self.intermediate.der.clone()]
    }

    /// A bundle set holding only this PKI's root, as the bundle of its trust domain.
    pub fn bundles(&self) -> BundleSet {
        BundleSet::single(bundle(&self.td, &self.root))
    }
}

/// The bundle of `td` with `root` as its only root.
pub fn bundle(td: &str, root: &Ca) -> TrustBundle {
    let td = TrustDomain::parse(td).expect("trust domain");
    TrustBundle::new(td, vec![root.der.clone()]).expect("bundle")
}

fn ca_params(name: &str, spec: &CaSpec, path_len: Option<u8>) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = common_name(name);
    params.is_ca = match (spec.is_ca, path_len) {
        (false, _) => IsCa::ExplicitNoCa,
        (true, Some(n)) => IsCa::Ca(BasicConstraints::Constrained(n)),
        (true, None) => IsCa::Ca(BasicConstraints::Unconstrained),
    };
    set_key_usage(&mut params, &spec.key_usages, true);
    params.not_before = spec.not_before;
    params.not_after = spec.not_after;
    if let Some(critical) = spec.unknown_ext {
        params.custom_extensions.push(unknown_extension(critical));
    }
    params
}

fn common_name(name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    dn
}

fn uri_san(uri: &str) -> SanType {
    SanType::URI(uri.try_into().expect("URI SAN is IA5"))
}

fn unknown_extension(critical: bool) -> CustomExtension {
    extension(UNKNOWN_EXT_OID, DER_NULL.to_vec(), critical)
}

pub fn extension(oid: &[u64], content: Vec<u8>, critical: bool) -> CustomExtension {
    let mut ext = CustomExtension::from_oid_content(oid, content);
    ext.set_criticality(critical);
    ext
}

/// rcgen always marks key usage critical, so a non-critical one is written as a custom extension.
fn set_key_usage(params: &mut CertificateParams, usages: &[KeyUsagePurpose], critical: bool) {
    if critical || usages.is_empty() {
        params.key_usages = usages.to_vec();
        return;
    }
    let mut ext = CustomExtension::from_oid_content(KEY_USAGE_OID, key_usage_der(usages));
    ext.set_criticality(false);
    params.custom_extensions.push(ext);
}

/// The KeyUsage BIT STRING in DER: named bits, trailing zero bits dropped (X.690 11.2.2).
pub fn key_usage_der(usages: &[KeyUsagePurpose]) -> Vec<u8> {
    let bits: Vec<usize> = usages
        .iter()
        .map(|u| match u {
            KeyUsagePurpose::DigitalSignature => 0,
            KeyUsagePurpose::ContentCommitment => 1,
            KeyUsagePurpose::KeyEncipherment => 2,
            KeyUsagePurpose::DataEncipherment => 3,
            KeyUsagePurpose::KeyAgreement => 4,
            KeyUsagePurpose::KeyCertSign => 5,
            KeyUsagePurpose::CrlSign => 6,
            KeyUsagePurpose::EncipherOnly => 7,
            KeyUsagePurpose::DecipherOnly => 8,
        })
        .collect();
    let Some(&highest) = bits.iter().max() else {
        return vec![0x03, 0x01, 0x00];
    };
    let mut bytes = vec![0u8; highest / 8 + 1];
    for bit in bits {
        bytes[bit / 8] |= 0x80 >> (bit % 8);
    }
    let unused = u8::try_from(bytes.len() * 8 - (highest + 1)).expect("fewer than 8");
    let len = u8::try_from(bytes.len() + 1).expect("short");
    let mut der = vec![0x03, len, unused];
    der.extend(bytes);
    der
}
