//! Trust roots and SVIDs minted at test time (rcgen, the CA's profile): no committed keys.

use std::sync::Arc;

use meshgate_audit::CheckpointSigner;
use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use time::{Duration, OffsetDateTime};

/// A root and an intermediate for one trust domain.
pub struct Pki {
    pub root_pem: String,
    intermediate_der: CertificateDer<'static>,
    intermediate: Issuer<'static, KeyPair>,
}

impl Pki {
    /// Valid a year either side of `at`.
    pub fn new(td: &str, at: OffsetDateTime) -> Self {
        let root_key = KeyPair::generate().unwrap();
        let mut root = ca_params(td, "root", at);
        root.is_ca = IsCa::Ca(BasicConstraints::Constrained(1));
        let root_cert = root.self_signed(&root_key).unwrap();
        let root_issuer = Issuer::new(root, root_key);
        let inter_key = KeyPair::generate().unwrap();
        let mut inter = ca_params(td, "intermediate", at);
        inter.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        inter.use_authority_key_identifier_extension = true;
        let inter_cert = inter.signed_by(&inter_key, &root_issuer).unwrap();
        Self {
            root_pem: root_cert.pem(),
            intermediate_der: inter_cert.der().clone(),
            intermediate: Issuer::new(inter, inter_key),
        }
    }

    /// An SVID for `id` valid from `from` for `lifetime`, chain = leaf + intermediate.
    pub fn svid(&self, id: &str, from: OffsetDateTime, lifetime: Duration) -> Arc<CertifiedKey> {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "meshgate");
        p.distinguished_name = dn;
        p.subject_alt_names = vec![SanType::URI(id.try_into().unwrap())];
        p.is_ca = IsCa::NoCa;
        let mut bc = CustomExtension::from_oid_content(&[2, 5, 29, 19], vec![0x30, 0x00]);
        bc.set_criticality(true);
        p.custom_extensions.push(bc);
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        p.use_authority_key_identifier_extension = true;
        p.not_before = from;
        p.not_after = from + lifetime;
        let cert = p.signed_by(&key, &self.intermediate).unwrap();
        let chain = vec![cert.der().clone(), self.intermediate_der.clone()];
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        meshgate_identity::tls::certified_key(chain, key).unwrap()
    }
}

fn ca_params(td: &str, role: &str, at: OffsetDateTime) -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("test {role} CA for {td}"));
    p.distinguished_name = dn;
    p.subject_alt_names = vec![SanType::URI(format!("spiffe://{td}").try_into().unwrap())];
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p.not_before = at - Duration::days(365);
    p.not_after = at + Duration::days(365);
    p
}

/// A signer whose key the test sets (or leaves empty).
#[derive(Debug, Default)]
pub struct TestSigner(pub std::sync::Mutex<Option<Arc<CertifiedKey>>>);

impl TestSigner {
    pub fn with(key: Arc<CertifiedKey>) -> Arc<Self> {
        Arc::new(Self(std::sync::Mutex::new(Some(key))))
    }
}

impl CheckpointSigner for TestSigner {
    fn current_key(&self) -> Option<Arc<CertifiedKey>> {
        self.0.lock().unwrap().clone()
    }
}
