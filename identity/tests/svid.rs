//! X.509-SVID leaf profile conformance: for every leaf rule of the spec a passing and a failing
//! case, each failure asserting the rule it names. Signing certificates, chains and validity
//! windows are in `svid_chain.rs`. Certificates are minted at test time by `support`.

// Test helpers are test code too; clippy.toml's in-tests allowances only reach #[test] fns.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use meshgate_identity::svid::{check_leaf, verify_chain, verify_svid};
use meshgate_identity::{BundleSet, IdError, SvidError};
use rcgen::{ExtendedKeyUsagePurpose as Eku, KeyUsagePurpose as Ku};
use support::{Ca, Leaf, Pki, at, bundle, extension, now};

const TD: &str = "a.example";
const ID: &str = "spiffe://a.example/ns/payments/sa/api";
const SAN_OID: &[u64] = &[2, 5, 29, 17];

/// Mints `spec` under a fresh PKI of `TD` and checks it both ways. The leaf profile is part of
/// full verification, so `check_leaf` and `verify_chain` must reject with the same error.
fn rejected(spec: &Leaf) -> SvidError {
    let pki = Pki::new(TD);
    let chain = pki.chain(spec);
    let direct = check_leaf(&chain[0]).unwrap_err();
    let verified = verify_chain(&chain, &pki.bundles(), now()).unwrap_err();
    assert_eq!(direct, verified);
    direct
}

fn accepted(spec: &Leaf) {
    let pki = Pki::new(TD);
    let chain = pki.chain(spec);
    let info = check_leaf(&chain[0]).unwrap();
    let verified = verify_chain(&chain, &pki.bundles(), now()).unwrap();
    assert_eq!(verified.info, info);
}

#[test]
fn valid_leaf_passes_profile_and_chain() {
    let pki = Pki::new(TD);
    let spec = Leaf::new(ID);
    let chain = pki.chain(&spec);
    let info = check_leaf(&chain[0]).unwrap();
    assert_eq!(info.spiffe_id.as_str(), ID);
    assert_eq!(info.not_before, at(spec.not_before).as_secs());
    assert_eq!(info.not_after, at(spec.not_after).as_secs());

    let verified = verify_chain(&chain, &pki.bundles(), now()).unwrap();
    assert_eq!(verified.info, info);
    let split = verify_svid(&chain[0], &chain[1..], &pki.bundles(), now()).unwrap();
    assert_eq!(split, verified);
}

#[test]
fn leaf_signed_by_the_root_directly_verifies() {
    let root = Ca::root(TD);
    let leaf = root.leaf(&Leaf::new(ID));
    let set = BundleSet::single(bundle(TD, &root));
    verify_chain(&[leaf], &set, now()).unwrap();
}

#[test]
fn no_uri_san_is_rejected() {
    let err = rejected(&Leaf {
        uris: vec![],
        ..Leaf::new(ID)
    });
    assert!(matches!(err, SvidError::NoUriSan), "{err:?}");
    assert_eq!(err.rule(), "one-uri-san");
}

#[test]
fn two_uri_sans_are_rejected() {
    let uris = vec![ID.to_owned(), "spiffe://a.example/other".to_owned()];
    let err = rejected(&Leaf {
        uris,
        ..Leaf::new(ID)
    });
    assert!(matches!(err, SvidError::MultipleUriSans(2)), "{err:?}");
    assert_eq!(err.rule(), "one-uri-san");
}

#[test]
fn uppercase_trust_domain_in_uri_san_is_rejected() {
    // Certificates get the strict parse: no lowercasing as for operator input.
    let err = rejected(&Leaf::new("spiffe://Example.org/a"));
    assert!(
        matches!(
            err,
            SvidError::InvalidSpiffeId(IdError::TrustDomainNotLowercase { .. })
        ),
        "{err:?}"
    );
    assert_eq!(err.rule(), "trust-domain-lowercase");
}

#[test]
fn non_spiffe_uri_san_is_rejected() {
    let err = rejected(&Leaf::new("https://a.example/x"));
    assert!(
        matches!(err, SvidError::InvalidSpiffeId(IdError::Scheme { .. })),
        "{err:?}"
    );
    assert_eq!(err.rule(), "scheme");
}

#[test]
fn leaf_id_without_path_is_rejected() {
    let err = rejected(&Leaf::new("spiffe://a.example"));
    assert!(matches!(&err, SvidError::LeafIdWithoutPath(id) if id == "spiffe://a.example"));
    assert_eq!(err.rule(), "leaf-id-path");
}

#[test]
fn leaf_with_ca_true_is_rejected() {
    let err = rejected(&Leaf {
        is_ca: true,
        ..Leaf::new(ID)
    });
    assert!(matches!(err, SvidError::LeafIsCa), "{err:?}");
    assert_eq!(err.rule(), "leaf-ca-false");
}

#[test]
fn leaf_without_key_usage_is_rejected() {
    let err = rejected(&Leaf {
        key_usages: vec![],
        ..Leaf::new(ID)
    });
    assert!(matches!(err, SvidError::KeyUsageMissing), "{err:?}");
    assert_eq!(err.rule(), "key-usage-present");
}

#[test]
fn non_critical_key_usage_is_rejected() {
    let spec = Leaf {
        ku_critical: false,
        ..Leaf::new(ID)
    };
    // The hand-written extension must carry digitalSignature, or the test would pass for the
    // wrong reason.
    let der = Pki::new(TD).intermediate.leaf(&spec);
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    let ku = cert.key_usage().unwrap().unwrap();
    assert!(!ku.critical);
    assert!(ku.value.digital_signature() && !ku.value.key_cert_sign());

    let err = rejected(&spec);
    assert!(matches!(err, SvidError::KeyUsageNotCritical), "{err:?}");
    assert_eq!(err.rule(), "key-usage-critical");
}

#[test]
fn leaf_without_digital_signature_is_rejected() {
    let err = rejected(&Leaf {
        key_usages: vec![Ku::KeyEncipherment],
        ..Leaf::new(ID)
    });
    assert!(
        matches!(err, SvidError::LeafWithoutDigitalSignature),
        "{err:?}"
    );
    assert_eq!(err.rule(), "leaf-digital-signature");
}

#[test]
fn leaf_with_other_usages_besides_digital_signature_passes() {
    // keyEncipherment and keyAgreement are allowed in a leaf; only the CA bits are not.
    let usages = vec![Ku::DigitalSignature, Ku::KeyEncipherment, Ku::KeyAgreement];
    accepted(&Leaf {
        key_usages: usages,
        ..Leaf::new(ID)
    });
}

#[test]
fn leaf_with_key_cert_sign_is_rejected() {
    let usages = vec![Ku::DigitalSignature, Ku::KeyCertSign];
    let err = rejected(&Leaf {
        key_usages: usages,
        ..Leaf::new(ID)
    });
    assert!(matches!(err, SvidError::LeafWithKeyCertSign), "{err:?}");
    assert_eq!(err.rule(), "leaf-no-key-cert-sign");
}

#[test]
fn leaf_with_crl_sign_is_rejected() {
    let usages = vec![Ku::DigitalSignature, Ku::CrlSign];
    let err = rejected(&Leaf {
        key_usages: usages,
        ..Leaf::new(ID)
    });
    assert!(matches!(err, SvidError::LeafWithCrlSign), "{err:?}");
    assert_eq!(err.rule(), "leaf-no-crl-sign");
}

#[test]
fn eku_with_server_auth_only_is_rejected() {
    let err = rejected(&Leaf {
        ekus: vec![Eku::ServerAuth],
        ..Leaf::new(ID)
    });
    assert!(
        matches!(err, SvidError::EkuIncomplete("clientAuth")),
        "{err:?}"
    );
    assert_eq!(err.rule(), "eku-server-and-client");
}

#[test]
fn eku_with_client_auth_only_is_rejected() {
    let err = rejected(&Leaf {
        ekus: vec![Eku::ClientAuth],
        ..Leaf::new(ID)
    });
    assert!(
        matches!(err, SvidError::EkuIncomplete("serverAuth")),
        "{err:?}"
    );
    assert_eq!(err.rule(), "eku-server-and-client");
}

#[test]
fn eku_with_neither_purpose_is_rejected() {
    let err = rejected(&Leaf {
        ekus: vec![Eku::CodeSigning],
        ..Leaf::new(ID)
    });
    assert!(matches!(err, SvidError::EkuIncomplete(_)), "{err:?}");
    assert_eq!(err.rule(), "eku-server-and-client");
}

#[test]
fn leaf_without_eku_passes() {
    accepted(&Leaf {
        ekus: vec![],
        ..Leaf::new(ID)
    });
}

#[test]
fn unknown_critical_extension_in_leaf_is_rejected() {
    let err = rejected(&Leaf {
        unknown_ext: Some(true),
        ..Leaf::new(ID)
    });
    assert!(
        matches!(&err, SvidError::UnknownCriticalExtension(oid) if oid == "1.3.6.1.4.1.99999.1"),
        "{err:?}"
    );
    assert_eq!(err.rule(), "unknown-critical-extension");
}

#[test]
fn unknown_non_critical_extension_in_leaf_passes() {
    accepted(&Leaf {
        unknown_ext: Some(false),
        ..Leaf::new(ID)
    });
}

/// A subjectAltName value (GeneralNames) holding one URI, for extensions written by hand.
fn san_value(uri: &str) -> Vec<u8> {
    let len = |n: usize| u8::try_from(n).unwrap();
    let mut name = vec![0x86, len(uri.len())];
    name.extend(uri.as_bytes());
    [vec![0x30, len(name.len())], name].concat()
}

#[test]
fn duplicate_subject_alt_name_extension_is_rejected() {
    // A second SAN extension smuggles in a second ID that another parser might pick instead.
    let second = extension(SAN_OID, san_value("spiffe://a.example/evil"), false);
    let err = rejected(&Leaf {
        extra: vec![second],
        ..Leaf::new(ID)
    });
    assert!(matches!(err, SvidError::BadExtension(_)), "{err:?}");
    assert_eq!(err.rule(), "malformed-extension");
}

#[test]
fn unreadable_subject_alt_name_is_rejected() {
    let broken = extension(SAN_OID, vec![0x05, 0x00], false);
    let err = rejected(&Leaf {
        uris: vec![],
        extra: vec![broken],
        ..Leaf::new(ID)
    });
    assert!(matches!(err, SvidError::BadExtension(_)), "{err:?}");
    assert_eq!(err.rule(), "malformed-extension");
}

#[test]
fn hand_written_subject_alt_name_is_read_like_rcgen_s() {
    // Guards the two tests above: the same bytes as the only SAN make a valid SVID.
    let san = extension(SAN_OID, san_value(ID), false);
    accepted(&Leaf {
        uris: vec![],
        extra: vec![san],
        ..Leaf::new(ID)
    });
}
