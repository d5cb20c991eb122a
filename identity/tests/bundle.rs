//! Trust bundle conformance: PEM and SPIFFE bundle (JWKS) reading and writing, the SPIFFE Trust
//! Domain and Bundle spec's rules for `x509-svid` keys, and per-trust-domain bundle sets.

// Test helpers are test code too; clippy.toml's in-tests allowances only reach #[test] fns.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use meshgate_identity::{BundleError, BundleSet, SvidError, TrustBundle, TrustDomain};
use rcgen::{PKCS_ECDSA_P256_SHA256, PKCS_ECDSA_P384_SHA384, PKCS_ED25519, PKCS_RSA_SHA256};
use rcgen::{PublicKeyData, SignatureAlgorithm};
use rustls_pki_types::CertificateDer;
use serde_json::{Value, json};
use support::{Ca, CaSpec, Leaf};

fn td(name: &str) -> TrustDomain {
    TrustDomain::parse(name).unwrap()
}

fn pem_of(certs: &[&CertificateDer<'_>]) -> String {
    certs
        .iter()
        .map(|c| {
            format!(
                "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
                STANDARD.encode(c)
            )
        })
        .collect()
}

fn b64url(value: &Value) -> Vec<u8> {
    URL_SAFE_NO_PAD.decode(value.as_str().unwrap()).unwrap()
}

/// The raw subjectPublicKey bits: 04||x||y for EC, the 32-byte key for Ed25519.
fn public_key_bits(der: &[u8]) -> Vec<u8> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
    cert.public_key().subject_public_key.data.to_vec()
}

#[test]
fn pem_round_trip_keeps_every_root_in_order() {
    let (a, b) = (Ca::root("a.example"), Ca::root("a.example"));
    let bundle =
        TrustBundle::from_pem(td("a.example"), pem_of(&[&a.der, &b.der]).as_bytes()).unwrap();
    assert_eq!(bundle.roots(), [a.der.clone(), b.der.clone()]);
    assert_eq!(bundle.trust_domain().as_str(), "a.example");

    let again = TrustBundle::from_pem(td("a.example"), bundle.to_pem().as_bytes()).unwrap();
    assert_eq!(again.roots(), bundle.roots());
    assert_eq!(again.to_pem(), bundle.to_pem());
}

#[test]
fn unreadable_pem_is_rejected() {
    let err = TrustBundle::from_pem(
        td("a.example"),
        b"-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n",
    )
    .unwrap_err();
    assert!(matches!(err, BundleError::Pem(_)), "{err:?}");
    let err =
        TrustBundle::from_pem(td("a.example"), b"-----BEGIN CERTIFICATE-----\nAAAA\n").unwrap_err();
    assert!(matches!(err, BundleError::Pem(_)), "{err:?}");
}

#[test]
fn pem_of_something_that_is_not_a_certificate_is_a_bad_root() {
    let root = Ca::root("a.example");
    let garbage = CertificateDer::from(b"hello".to_vec());
    let err = TrustBundle::from_pem(td("a.example"), pem_of(&[&root.der, &garbage]).as_bytes())
        .unwrap_err();
    assert!(
        matches!(
            err,
            BundleError::BadRoot {
                index: 1,
                error: SvidError::Malformed(_)
            }
        ),
        "{err:?}"
    );
}

#[test]
fn a_bundle_needs_at_least_one_root() {
    let err = TrustBundle::new(td("a.example"), vec![]).unwrap_err();
    assert_eq!(err, BundleError::Empty);
    // Text without a CERTIFICATE block is refused too, as unreadable.
    for text in [&b""[..], b"no pem here\n"] {
        let err = TrustBundle::from_pem(td("a.example"), text).unwrap_err();
        assert!(matches!(err, BundleError::Pem(_)), "{err:?}");
    }
}

#[test]
fn a_leaf_is_not_a_root() {
    let root = Ca::root("a.example");
    let leaf = root.leaf(&Leaf::new("spiffe://a.example/x"));
    let err = TrustBundle::new(td("a.example"), vec![root.der.clone(), leaf]).unwrap_err();
    assert!(
        matches!(
            err,
            BundleError::BadRoot {
                index: 1,
                error: SvidError::SigningCertNotCa
            }
        ),
        "{err:?}"
    );
}

#[test]
fn a_root_without_key_cert_sign_is_rejected() {
    let spec = CaSpec {
        key_usages: vec![rcgen::KeyUsagePurpose::CrlSign],
        ..CaSpec::default()
    };
    let root = Ca::root_with("a.example", &PKCS_ECDSA_P256_SHA256, &spec);
    let err = TrustBundle::new(td("a.example"), vec![root.der]).unwrap_err();
    assert!(
        matches!(
            err,
            BundleError::BadRoot {
                index: 0,
                error: SvidError::SigningCertWithoutKeyCertSign
            }
        ),
        "{err:?}"
    );
}

fn root_with(alg: &'static SignatureAlgorithm) -> Ca {
    Ca::root_with("a.example", alg, &CaSpec::default())
}

fn jwks_of(
    roots: Vec<CertificateDer<'static>>,
    sequence: u64,
    refresh_hint: Option<u64>,
) -> String {
    let mut bundle = TrustBundle::new(td("a.example"), roots).unwrap();
    bundle.sequence = sequence;
    bundle.refresh_hint = refresh_hint;
    bundle.to_jwks().unwrap()
}

#[test]
fn jwks_round_trip_keeps_roots_sequence_and_refresh_hint() {
    let roots = vec![
        root_with(&PKCS_ECDSA_P256_SHA256).der,
        root_with(&PKCS_ED25519).der,
    ];
    let json = jwks_of(roots.clone(), 42, Some(300));
    let back = TrustBundle::from_jwks(td("a.example"), json.as_bytes()).unwrap();
    assert_eq!(back.roots(), roots);
    assert_eq!(back.sequence, 42);
    assert_eq!(back.refresh_hint, Some(300));

    let doc: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(doc["spiffe_sequence"], 42);
    assert_eq!(doc["spiffe_refresh_hint"], 300);
    let without_hint = jwks_of(roots, 0, None);
    let back = TrustBundle::from_jwks(td("a.example"), without_hint.as_bytes()).unwrap();
    assert_eq!(back.refresh_hint, None);
}

#[test]
fn jwks_keys_follow_the_x509_svid_key_profile() {
    let roots = [
        root_with(&PKCS_ECDSA_P256_SHA256),
        root_with(&PKCS_ECDSA_P384_SHA384),
        root_with(&PKCS_ED25519),
    ];
    let json = jwks_of(roots.iter().map(|r| r.der.clone()).collect(), 1, None);
    let doc: Value = serde_json::from_str(&json).unwrap();
    let keys = doc["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 3);
    for (key, root) in keys.iter().zip(&roots) {
        assert_eq!(key["use"], "x509-svid");
        assert!(key.get("kid").is_none(), "{key}");
        let x5c = key["x5c"].as_array().unwrap();
        assert_eq!(x5c.len(), 1);
        // x5c is standard base64 (RFC 7517 4.7), not base64url.
        assert_eq!(
            STANDARD.decode(x5c[0].as_str().unwrap()).unwrap(),
            root.der.to_vec()
        );
    }

    for (key, (root, crv, len)) in keys
        .iter()
        .zip([(&roots[0], "P-256", 32), (&roots[1], "P-384", 48)])
    {
        assert_eq!(key["kty"], "EC");
        assert_eq!(key["crv"], crv);
        let (x, y) = (b64url(&key["x"]), b64url(&key["y"]));
        assert_eq!((x.len(), y.len()), (len, len));
        assert_eq!(public_key_bits(&root.der), [&[4u8][..], &x, &y].concat());
    }

    let okp = &keys[2];
    assert_eq!(okp["kty"], "OKP");
    assert_eq!(okp["crv"], "Ed25519");
    assert_eq!(b64url(&okp["x"]), public_key_bits(&roots[2].der));
    assert!(okp.get("y").is_none(), "{okp}");
}

/// A public key given as raw subjectPublicKey bits, for key types ring cannot generate.
struct RawKey {
    bits: Vec<u8>,
    alg: &'static SignatureAlgorithm,
}

impl PublicKeyData for RawKey {
    fn der_bytes(&self) -> &[u8] {
        &self.bits
    }
    fn algorithm(&self) -> &'static SignatureAlgorithm {
        self.alg
    }
}

#[test]
fn rsa_jwk_has_minimal_big_endian_n_and_e() {
    // A 2048-bit modulus with its top bit set: DER adds a 0x00 byte, which JWK must not keep
    // (RFC 7518 6.3.1.1: "the minimum number of octets").
    let modulus: Vec<u8> = (0..256u32)
        .map(|i| if i == 0 { 0xC1 } else { (i * 7) as u8 | 1 })
        .collect();
    let mut bits = vec![0x30, 0x82, 0x01, 0x0A, 0x02, 0x82, 0x01, 0x01, 0x00];
    bits.extend(&modulus);
    bits.extend([0x02, 0x03, 0x01, 0x00, 0x01]);
    let cert = Ca::root("a.example").ca_for_public_key(&RawKey {
        bits,
        alg: &PKCS_RSA_SHA256,
    });

    let doc: Value = serde_json::from_str(&jwks_of(vec![cert.clone()], 1, None)).unwrap();
    let key = &doc["keys"][0];
    assert_eq!(key["kty"], "RSA");
    assert_eq!(b64url(&key["n"]), modulus);
    assert_eq!(key["e"], "AQAB");
    assert!(key.get("crv").is_none(), "{key}");
    let back = TrustBundle::from_jwks(td("a.example"), doc.to_string().as_bytes()).unwrap();
    assert_eq!(back.roots(), [cert]);
}

#[test]
fn p521_jwk_has_66_byte_coordinates() {
    // ring cannot make P-521 keys, so write a P-384-labelled point of P-521 size and relabel the
    // curve: secp384r1 and secp521r1 OIDs differ only in their last byte.
    let point: Vec<u8> = [&[4u8][..], &[0x11; 66], &[0x22; 66]].concat();
    let cert = Ca::root("a.example").ca_for_public_key(&RawKey {
        bits: point.clone(),
        alg: &PKCS_ECDSA_P384_SHA384,
    });
    let (secp384r1, secp521r1) = (
        [0x06, 0x05, 0x2B, 0x81, 0x04, 0x00, 0x22],
        [0x06, 0x05, 0x2B, 0x81, 0x04, 0x00, 0x23],
    );
    let mut der = cert.to_vec();
    let at = der.windows(7).position(|w| w == secp384r1).unwrap();
    der[at..at + 7].copy_from_slice(&secp521r1);

    let doc: Value =
        serde_json::from_str(&jwks_of(vec![CertificateDer::from(der)], 1, None)).unwrap();
    let key = &doc["keys"][0];
    assert_eq!(key["kty"], "EC");
    assert_eq!(key["crv"], "P-521");
    assert_eq!(b64url(&key["x"]), [0x11; 66]);
    assert_eq!(b64url(&key["y"]), [0x22; 66]);
}

/// A valid one-key SPIFFE bundle, changed by `edit` (on its only key).
fn edited(edit: impl FnOnce(&mut Value)) -> String {
    let mut doc: Value = serde_json::from_str(&jwks_of(
        vec![root_with(&PKCS_ECDSA_P256_SHA256).der],
        1,
        None,
    ))
    .unwrap();
    edit(&mut doc["keys"][0]);
    doc.to_string()
}

fn bad_key(json: &str) -> String {
    let err = TrustBundle::from_jwks(td("a.example"), json.as_bytes()).unwrap_err();
    match err {
        BundleError::BadKey { index: 0, reason } => reason,
        other => panic!("expected BadKey for key 0, got {other:?}"),
    }
}

#[test]
fn jwks_reading_enforces_the_x509_svid_key_rules() {
    // The unedited document reads, so each rejection below is the edit's doing.
    TrustBundle::from_jwks(td("a.example"), edited(|_| {}).as_bytes()).unwrap();

    assert!(bad_key(&edited(|k| k["kid"] = json!("k1"))).contains("kid"));
    let two = edited(|k| {
        let first = k["x5c"][0].clone();
        k["x5c"] = json!([first.clone(), first]);
    });
    assert!(bad_key(&two).contains("x5c"));
    assert!(bad_key(&edited(|k| k["x5c"] = json!([]))).contains("x5c"));
    assert!(
        bad_key(&edited(|k| {
            k.as_object_mut().unwrap().remove("x5c");
        }))
        .contains("x5c")
    );
    assert!(bad_key(&edited(|k| k["use"] = json!("sig"))).contains("use"));
    assert!(
        bad_key(&edited(|k| {
            k.as_object_mut().unwrap().remove("use");
        }))
        .contains("use")
    );
    assert!(bad_key(&edited(|k| k["kty"] = json!("RSA"))).contains("kty"));
    assert!(bad_key(&edited(|k| k["crv"] = json!("P-384"))).contains("crv"));
    bad_key(&edited(|k| k["x5c"] = json!(["not base64!"])));
}

#[test]
fn jwks_reading_skips_jwt_svid_keys() {
    let root = root_with(&PKCS_ECDSA_P256_SHA256);
    let mut doc: Value = serde_json::from_str(&jwks_of(vec![root.der.clone()], 5, None)).unwrap();
    let jwt_key = json!({
        "use": "jwt-svid", "kty": "EC", "crv": "P-256", "kid": "jwt-1", "x": "AA", "y": "AA"
    });
    doc["keys"]
        .as_array_mut()
        .unwrap()
        .insert(0, jwt_key.clone());
    let bundle = TrustBundle::from_jwks(td("a.example"), doc.to_string().as_bytes()).unwrap();
    assert_eq!(bundle.roots(), [root.der]);
    assert_eq!(bundle.sequence, 5);

    // A bundle of JWT keys only has no X.509 roots at all.
    let only_jwt = json!({"keys": [jwt_key]}).to_string();
    let err = TrustBundle::from_jwks(td("a.example"), only_jwt.as_bytes()).unwrap_err();
    assert_eq!(err, BundleError::Empty);
}

#[test]
fn jwks_that_is_not_a_spiffe_bundle_is_rejected() {
    for text in ["", "[]", "{}", "{\"keys\": 3}", "not json"] {
        let err = TrustBundle::from_jwks(td("a.example"), text.as_bytes()).unwrap_err();
        assert!(matches!(err, BundleError::Json(_)), "{text:?}: {err:?}");
    }
}

#[test]
fn jwks_root_must_still_be_a_signing_certificate() {
    let root = Ca::root("a.example");
    let leaf = root.leaf(&Leaf::new("spiffe://a.example/x"));
    let json = edited(|k| k["x5c"] = json!([STANDARD.encode(&leaf)]));
    let err = TrustBundle::from_jwks(td("a.example"), json.as_bytes()).unwrap_err();
    assert!(
        matches!(
            err,
            BundleError::BadRoot {
                index: 0,
                error: SvidError::SigningCertNotCa
            }
        ),
        "{err:?}"
    );
}

#[test]
fn bundle_set_holds_one_bundle_per_trust_domain() {
    let (a1, a2, b) = (
        Ca::root("a.example"),
        Ca::root("a.example"),
        Ca::root("b.example"),
    );
    let mut set = BundleSet::new();
    set.insert(TrustBundle::new(td("a.example"), vec![a1.der.clone()]).unwrap());
    set.insert(TrustBundle::new(td("b.example"), vec![b.der.clone()]).unwrap());
    assert_eq!(set.get(&td("a.example")).unwrap().roots(), [a1.der]);
    assert_eq!(
        set.get(&td("b.example")).unwrap().roots(),
        std::slice::from_ref(&b.der)
    );
    assert!(set.get(&td("c.example")).is_none());
    assert!(set.get(&td("example")).is_none());

    // Inserting for a domain replaces its bundle; roots of the two are never merged.
    set.insert(TrustBundle::new(td("a.example"), vec![a2.der.clone()]).unwrap());
    assert_eq!(set.get(&td("a.example")).unwrap().roots(), [a2.der]);
    assert_eq!(set.get(&td("b.example")).unwrap().roots(), [b.der]);
    assert_eq!(set.iter().count(), 2);
}
