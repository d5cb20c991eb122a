//! Fuzzes reading a trust bundle from PEM: never a panic; what is read writes back out as PEM
//! that reads to the same roots.

#![no_main]

use libfuzzer_sys::fuzz_target;
use meshgate_identity::{TrustBundle, TrustDomain};

fuzz_target!(|data: &[u8]| {
    let Ok(td) = TrustDomain::parse("bank.example") else {
        return;
    };
    let _ = meshgate_identity::bundle::certs_from_pem(data);
    if let Ok(bundle) = TrustBundle::from_pem(td.clone(), data) {
        assert!(!bundle.roots().is_empty(), "an empty bundle was accepted");
        let again = TrustBundle::from_pem(td, bundle.to_pem().as_bytes())
            .expect("a bundle's own PEM reads back");
        assert_eq!(again.roots(), bundle.roots());
    }
});
