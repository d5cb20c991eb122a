//! Fuzzes the X.509-SVID checks on arbitrary DER: the leaf profile, the signing-certificate
//! profile, the summary read for display, and the full chain check. Never a panic; an accepted
//! leaf carries exactly what the profile demands.
//!
//! The input is one or more certificates: two length bytes (big endian) give the leaf's length,
//! the rest is one intermediate.

#![no_main]

use libfuzzer_sys::fuzz_target;
use meshgate_identity::BundleSet;
use meshgate_identity::svid::{
    check_leaf, check_signing_cert, public_key_der, spiffe_id_of, summarize, verify_chain,
};
use rustls_pki_types::{CertificateDer, UnixTime};

fuzz_target!(|data: &[u8]| {
    let (leaf, rest) = match data {
        [hi, lo, rest @ ..] => {
            let n = usize::from(u16::from_be_bytes([*hi, *lo])).min(rest.len());
            rest.split_at(n)
        }
        _ => (data, &[][..]),
    };
    for der in [data, leaf, rest] {
        if let Ok(info) = check_leaf(der) {
            assert!(!info.spiffe_id.path().is_empty());
            assert_eq!(spiffe_id_of(der).as_ref(), Ok(&info.spiffe_id));
            let summary = summarize(der).expect("a checked leaf can be summarized");
            assert_eq!(summary.uri_sans, vec![info.spiffe_id.to_string()]);
        }
        let _ = check_signing_cert(der);
        let _ = summarize(der);
        let _ = public_key_der(der);
    }
    let chain = [
        CertificateDer::from(leaf.to_vec()),
        CertificateDer::from(rest.to_vec()),
    ];
    // No bundle: whatever the certificates say, nothing chains.
    let now = UnixTime::since_unix_epoch(std::time::Duration::from_secs(1_790_000_000));
    assert!(verify_chain(&chain, &BundleSet::new(), now).is_err());
    assert!(verify_chain(&chain[..1], &BundleSet::new(), now).is_err());
});
