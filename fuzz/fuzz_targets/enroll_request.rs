//! Fuzzes what the CA reads from an enrollment or renewal request before any token or key is
//! used: the JSON body, the PEM CSR inside it, and the CSR checks (DER parsing, self-signature,
//! the one SPIFFE ID it may ask for, key type, extensions). Never a panic; a CSR that passes asks
//! for exactly the expected ID.
//!
//! The first byte picks the form: 0 for a raw DER CSR, anything else for a JSON body.

#![no_main]

use libfuzzer_sys::fuzz_target;
use meshgate_ca::csr::check_csr;
use meshgate_identity::SpiffeId;
use meshgate_identity::api::{EnrollRequest, RenewRequest};
use rustls_pki_types::CertificateSigningRequestDer;
use rustls_pki_types::pem::PemObject;

fn check(der: &[u8]) {
    let Ok(expected) = SpiffeId::parse("spiffe://bank.example/ns/shop/sa/checkout") else {
        return;
    };
    if let Ok(csr) = check_csr(der, &expected) {
        assert_eq!(csr.spiffe_id, expected);
    }
}

fuzz_target!(|data: &[u8]| {
    match data.split_first() {
        Some((0, der)) => check(der),
        Some((_, json)) => {
            let csr = match (
                serde_json::from_slice::<EnrollRequest>(json),
                serde_json::from_slice::<RenewRequest>(json),
            ) {
                (Ok(enroll), _) => {
                    // Debug hides the token (a long one could not appear by chance).
                    if enroll.token.len() >= 16 && !enroll.csr.contains(&enroll.token) {
                        assert!(!format!("{enroll:?}").contains(&enroll.token));
                    }
                    enroll.csr
                }
                (_, Ok(renew)) => renew.csr,
                _ => return,
            };
            if let Ok(der) = CertificateSigningRequestDer::from_pem_slice(csr.as_bytes()) {
                check(der.as_ref());
            }
        }
        None => {}
    }
});
