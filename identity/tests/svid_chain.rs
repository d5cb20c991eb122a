//! X.509-SVID conformance beyond the leaf profile: signing (CA) certificate rules, chains that
//! must end at a root of the leaf's own trust domain, validity windows judged at the given time,
//! and inputs that are not certificates at all. Each failure asserts the rule it names.

// Test helpers are test code too; clippy.toml's in-tests allowances only reach #[test] fns.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use meshgate_identity::svid::{check_leaf, check_signing_cert, verify_chain};
use meshgate_identity::{BundleSet, SvidError};
use rcgen::KeyUsagePurpose as Ku;
use rustls_pki_types::CertificateDer;
use support::{Ca, CaSpec, Leaf, Pki, at, bundle, now};
use time::{Duration, OffsetDateTime};

const TD: &str = "a.example";
const ID: &str = "spiffe://a.example/ns/payments/sa/api";

/// A chain `[leaf, intermediate]` whose intermediate is minted from `spec`, with its bundles.
fn chain_with_intermediate(spec: &CaSpec) -> (Vec<CertificateDer<'static>>, BundleSet) {
    let root = Ca::root(TD);
    let intermediate = root.intermediate_with(spec);
    let chain = vec![intermediate.leaf(&Leaf::new(ID)), intermediate.der.clone()];
    (chain, BundleSet::single(bundle(TD, &root)))
}

/// The intermediate rule must hold on its own and during full verification.
fn intermediate_rejected(spec: &CaSpec) -> SvidError {
    let (chain, set) = chain_with_intermediate(spec);
    let direct = check_signing_cert(&chain[1]).unwrap_err();
    let verified = verify_chain(&chain, &set, now()).unwrap_err();
    assert_eq!(direct, verified);
    direct
}

#[test]
fn valid_signing_certificates_pass() {
    let pki = Pki::new(TD);
    check_signing_cert(&pki.root.der).unwrap();
    check_signing_cert(&pki.intermediate.der).unwrap();
}

#[test]
fn unknown_critical_extension_in_intermediate_is_rejected() {
    let err = intermediate_rejected(&CaSpec {
        unknown_ext: Some(true),
        ..CaSpec::default()
    });
    assert!(
        matches!(err, SvidError::UnknownCriticalExtension(_)),
        "{err:?}"
    );
    assert_eq!(err.rule(), "unknown-critical-extension");
}

#[test]
fn intermediate_without_key_cert_sign_is_rejected() {
    let err = intermediate_rejected(&CaSpec {
        key_usages: vec![Ku::CrlSign],
        ..CaSpec::default()
    });
    assert!(
        matches!(err, SvidError::SigningCertWithoutKeyCertSign),
        "{err:?}"
    );
    assert_eq!(err.rule(), "signing-key-cert-sign");
}

#[test]
fn intermediate_with_ca_false_is_rejected() {
    let err = intermediate_rejected(&CaSpec {
        is_ca: false,
        ..CaSpec::default()
    });
    assert!(matches!(err, SvidError::SigningCertNotCa), "{err:?}");
    assert_eq!(err.rule(), "signing-ca-true");
}

#[test]
fn leaf_is_not_a_signing_certificate() {
    let err = check_signing_cert(&Pki::new(TD).intermediate.leaf(&Leaf::new(ID))).unwrap_err();
    assert!(matches!(err, SvidError::SigningCertNotCa), "{err:?}");
    assert_eq!(err.rule(), "signing-ca-true");
}

#[test]
fn expired_intermediate_fails_the_chain() {
    // Only the leaf's window is ours to check; webpki checks every other certificate's.
    let past = OffsetDateTime::now_utc() - Duration::days(2);
    let spec = CaSpec {
        not_before: past,
        not_after: past + Duration::hours(1),
        ..CaSpec::default()
    };
    let (chain, set) = chain_with_intermediate(&spec);
    let err = verify_chain(&chain, &set, now()).unwrap_err();
    assert!(matches!(&err, SvidError::Chain { trust_domain, .. } if trust_domain == TD));
    assert_eq!(err.rule(), "chain");
}

#[test]
fn chain_to_a_root_of_another_trust_domain_is_rejected() {
    let root_a = Ca::root("a.example");
    let root_b = Ca::root("b.example");
    let intermediate_b = root_b.intermediate();
    let mut set = BundleSet::new();
    set.insert(bundle("a.example", &root_a));
    set.insert(bundle("b.example", &root_b));

    // The same intermediate chains a b.example leaf fine: only the bundle choice differs.
    let own = vec![
        intermediate_b.leaf(&Leaf::new("spiffe://b.example/x")),
        intermediate_b.der.clone(),
    ];
    verify_chain(&own, &set, now()).unwrap();

    let foreign = vec![
        intermediate_b.leaf(&Leaf::new("spiffe://a.example/x")),
        intermediate_b.der.clone(),
    ];
    let err = verify_chain(&foreign, &set, now()).unwrap_err();
    assert!(matches!(&err, SvidError::Chain { trust_domain, .. } if trust_domain == "a.example"));
    assert_eq!(err.rule(), "chain");
}

#[test]
fn chain_to_a_foreign_ca_with_the_same_trust_domain_name_is_rejected() {
    // Same subject names as the trusted root, different key: only the signature tells them apart.
    let trusted = Pki::new(TD);
    let impostor = Pki::new(TD);
    let chain = impostor.chain(&Leaf::new(ID));
    let err = verify_chain(&chain, &trusted.bundles(), now()).unwrap_err();
    assert!(matches!(&err, SvidError::Chain { trust_domain, .. } if trust_domain == TD));
    assert_eq!(err.rule(), "chain");
}

#[test]
fn chain_missing_its_intermediate_is_rejected() {
    let pki = Pki::new(TD);
    let chain = pki.chain(&Leaf::new(ID));
    let err = verify_chain(&chain[..1], &pki.bundles(), now()).unwrap_err();
    assert!(matches!(err, SvidError::Chain { .. }), "{err:?}");
    assert_eq!(err.rule(), "chain");
}

#[test]
fn leaf_of_a_trust_domain_without_bundle_is_rejected() {
    let pki = Pki::new("c.example");
    let chain = pki.chain(&Leaf::new("spiffe://c.example/x"));
    // A set that holds some other domain's bundle, but not c.example's.
    let set = BundleSet::single(bundle(TD, &Ca::root(TD)));
    let err = verify_chain(&chain, &set, now()).unwrap_err();
    assert!(
        matches!(&err, SvidError::UnknownTrustDomain(td) if td == "c.example"),
        "{err:?}"
    );
    assert_eq!(err.rule(), "trust-domain-bundle");
}

#[test]
fn expired_leaf_is_rejected() {
    let past = OffsetDateTime::now_utc() - Duration::hours(3);
    let spec = Leaf {
        not_before: past,
        not_after: past + Duration::hours(1),
        ..Leaf::new(ID)
    };
    let pki = Pki::new(TD);
    let chain = pki.chain(&spec);
    // The profile alone has no clock: the leaf is a well-formed SVID.
    check_leaf(&chain[0]).unwrap();
    let err = verify_chain(&chain, &pki.bundles(), now()).unwrap_err();
    let expected_not_after = at(spec.not_after).as_secs();
    assert!(
        matches!(err, SvidError::Expired { not_after, .. } if not_after == expected_not_after),
        "{err:?}"
    );
    assert_eq!(err.rule(), "expired");
}

#[test]
fn not_yet_valid_leaf_is_rejected() {
    let future = OffsetDateTime::now_utc() + Duration::hours(2);
    let spec = Leaf {
        not_before: future,
        not_after: future + Duration::hours(1),
        ..Leaf::new(ID)
    };
    let pki = Pki::new(TD);
    let chain = pki.chain(&spec);
    check_leaf(&chain[0]).unwrap();
    let err = verify_chain(&chain, &pki.bundles(), now()).unwrap_err();
    assert!(matches!(err, SvidError::NotYetValid { .. }), "{err:?}");
    assert_eq!(err.rule(), "not-yet-valid");
}

#[test]
fn validity_is_judged_at_the_given_time_not_the_clock() {
    let pki = Pki::new(TD);
    let spec = Leaf::new(ID);
    let chain = pki.chain(&spec);
    let set = pki.bundles();
    let after = verify_chain(&chain, &set, at(spec.not_after + Duration::minutes(1))).unwrap_err();
    assert!(matches!(after, SvidError::Expired { .. }), "{after:?}");
    let before =
        verify_chain(&chain, &set, at(spec.not_before - Duration::minutes(1))).unwrap_err();
    assert!(
        matches!(before, SvidError::NotYetValid { .. }),
        "{before:?}"
    );
}

#[test]
fn garbage_der_is_malformed() {
    let garbage = CertificateDer::from(b"not a certificate".to_vec());
    for err in [
        check_leaf(&garbage).unwrap_err(),
        check_signing_cert(&garbage).unwrap_err(),
        verify_chain(
            std::slice::from_ref(&garbage),
            &Pki::new(TD).bundles(),
            now(),
        )
        .unwrap_err(),
    ] {
        assert!(matches!(err, SvidError::Malformed(_)), "{err:?}");
        assert_eq!(err.rule(), "malformed");
    }
}

#[test]
fn trailing_bytes_after_the_certificate_are_malformed() {
    let mut der = Pki::new(TD).intermediate.leaf(&Leaf::new(ID)).to_vec();
    der.push(0);
    let err = check_leaf(&der).unwrap_err();
    assert!(matches!(err, SvidError::Malformed(_)), "{err:?}");
    assert_eq!(err.rule(), "malformed");
}

#[test]
fn empty_chain_has_no_certificate() {
    let err = verify_chain(&[], &Pki::new(TD).bundles(), now()).unwrap_err();
    assert!(matches!(err, SvidError::NoCertificate), "{err:?}");
    assert_eq!(err.rule(), "no-certificate");
}
