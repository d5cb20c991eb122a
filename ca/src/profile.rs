//! The identity profile of DESIGN.md as rcgen parameters: root, intermediate and leaf SVID.
//! Every certificate minted here is checked against the X.509-SVID rules before it is used.

use std::time::Duration;

use meshgate_identity::{SpiffeId, TrustDomain};
use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyUsagePurpose, SanType, SerialNumber,
};
use time::OffsetDateTime;

use crate::error::CaError;

/// Default root lifetime.
pub const ROOT_TTL: Duration = Duration::from_secs(365 * 86_400);
/// Default intermediate (signing CA) lifetime.
pub const INTERMEDIATE_TTL: Duration = Duration::from_secs(7 * 86_400);
/// Default leaf SVID lifetime.
pub const LEAF_TTL: Duration = Duration::from_secs(3600);
/// Longest leaf SVID lifetime.
pub const MAX_LEAF_TTL: Duration = Duration::from_secs(24 * 3600);
/// Shortest leaf SVID lifetime: agents renew at half-life, and certificate times have one-second
/// resolution, so below this renewals would be back to back.
pub const MIN_LEAF_TTL: Duration = Duration::from_secs(10);
/// How often consumers should refresh the bundle (`spiffe_refresh_hint`).
pub const BUNDLE_REFRESH_HINT: Duration = Duration::from_secs(300);
/// notBefore is backdated by this much to tolerate clock skew between machines.
pub const BACKDATE: Duration = Duration::from_secs(30);

/// Parameters of a self-signed root for `td`.
pub fn root_params(
    td: &TrustDomain,
    now: OffsetDateTime,
    ttl: Duration,
) -> Result<CertificateParams, CaError> {
    let mut p = ca_params(td, "root", now, ttl)?;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(1));
    Ok(p)
}

/// Parameters of an intermediate (signing CA) for `td`, ending no later than `cap` (its root's notAfter).
pub fn intermediate_params(
    td: &TrustDomain,
    now: OffsetDateTime,
    ttl: Duration,
    cap: OffsetDateTime,
) -> Result<CertificateParams, CaError> {
    let mut p = ca_params(td, "intermediate", now, ttl)?;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.not_after = p.not_after.min(cap);
    p.use_authority_key_identifier_extension = true;
    Ok(p)
}

/// Parameters of a leaf X.509-SVID, ending no later than `cap` (the intermediate's notAfter).
pub fn leaf_params(
    id: &SpiffeId,
    dns_names: &[String],
    now: OffsetDateTime,
    ttl: Duration,
    cap: OffsetDateTime,
) -> Result<CertificateParams, CaError> {
    check_leaf_ttl(ttl)?;
    let mut p = CertificateParams::default();
    p.serial_number = Some(random_serial()?);
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "meshgate");
    p.distinguished_name = dn;
    p.subject_alt_names = vec![SanType::URI(id.as_str().try_into()?)];
    for name in dns_names {
        let ia5 = name
            .as_str()
            .try_into()
            .map_err(|_| CaError::BadDnsName(name.clone()))?;
        p.subject_alt_names.push(SanType::DnsName(ia5));
    }
    // basicConstraints, critical, cA=false. DER forbids encoding the default cA=FALSE, so the
    // value is an empty SEQUENCE; rcgen's ExplicitNoCa writes the default and strict parsers
    // (Python's cryptography, and so py-spiffe) reject it.
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
    // Backdating widens the validity window that agents schedule renewal from (50% of it): for a
    // short-lived SVID it is cut to a tenth of the TTL, so renewal still falls after issuance.
    p.not_before = now - BACKDATE.min(ttl / 10);
    p.not_after = (now + ttl).min(cap);
    Ok(p)
}

/// A leaf TTL between [`MIN_LEAF_TTL`] and [`MAX_LEAF_TTL`].
pub fn check_leaf_ttl(ttl: Duration) -> Result<(), CaError> {
    if ttl < MIN_LEAF_TTL || ttl > MAX_LEAF_TTL {
        return Err(CaError::BadTtl {
            requested: meshgate_identity::duration::format_duration(ttl),
            min: meshgate_identity::duration::format_duration(MIN_LEAF_TTL),
            max: meshgate_identity::duration::format_duration(MAX_LEAF_TTL),
        });
    }
    Ok(())
}

/// Adds the subjectKeyIdentifier of `key` to leaf parameters (rcgen writes it only for CAs).
pub fn add_subject_key_identifier(p: &mut CertificateParams, key: &impl rcgen::PublicKeyData) {
    let id = p.key_identifier(key);
    // OCTET STRING: tag, short-form length (key identifiers are 20 bytes), bytes.
    let mut content = vec![0x04, u8::try_from(id.len()).unwrap_or(0)];
    content.extend_from_slice(&id);
    p.custom_extensions
        .push(CustomExtension::from_oid_content(&[2, 5, 29, 14], content));
}

fn ca_params(
    td: &TrustDomain,
    role: &str,
    now: OffsetDateTime,
    ttl: Duration,
) -> Result<CertificateParams, CaError> {
    let mut p = CertificateParams::default();
    p.serial_number = Some(random_serial()?);
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "meshgate");
    dn.push(DnType::CommonName, format!("meshgate {role} CA for {td}"));
    p.distinguished_name = dn;
    p.subject_alt_names = vec![SanType::URI(td.id().as_str().try_into()?)];
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p.not_before = now - BACKDATE;
    p.not_after = now + ttl;
    Ok(p)
}

/// A 128-bit random serial number (encoded as a positive DER INTEGER of at most 17 octets).
fn random_serial() -> Result<SerialNumber, CaError> {
    use ring::rand::SecureRandom as _;
    let mut bytes = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| CaError::Random)?;
    Ok(SerialNumber::from_slice(&bytes))
}
