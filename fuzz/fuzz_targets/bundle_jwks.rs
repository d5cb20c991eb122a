//! Fuzzes reading a SPIFFE bundle (JWKS): never a panic; what is read writes back out as a JWKS
//! that reads to the same roots.

#![no_main]

use libfuzzer_sys::fuzz_target;
use meshgate_identity::{TrustBundle, TrustDomain};

fuzz_target!(|data: &[u8]| {
    let Ok(td) = TrustDomain::parse("bank.example") else {
        return;
    };
    if let Ok(bundle) = TrustBundle::from_jwks(td.clone(), data) {
        assert!(!bundle.roots().is_empty(), "an empty bundle was accepted");
        let json = bundle.to_jwks().expect("a bundle that was read can be written");
        let again =
            TrustBundle::from_jwks(td, json.as_bytes()).expect("a bundle's own JWKS reads back");
        assert_eq!(again.roots(), bundle.roots());
    }
});
