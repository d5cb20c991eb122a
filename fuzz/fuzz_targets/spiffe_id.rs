//! Fuzzes SPIFFE ID and trust domain parsing: any text is accepted or refused with a named rule,
//! never a panic; what is accepted obeys the spec's limits and parses again to itself.

#![no_main]

use libfuzzer_sys::fuzz_target;
use meshgate_identity::{SpiffeId, TrustDomain};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match SpiffeId::parse(text) {
        Ok(id) => {
            assert_eq!(id.as_str(), text);
            assert!(text.len() <= 2048, "an ID of {} bytes was accepted", text.len());
            assert!(id.trust_domain_str().len() <= 255);
            assert!(id.is_member_of(&id.trust_domain()));
            assert_eq!(SpiffeId::parse(id.as_str()).as_ref(), Ok(&id));
            assert_eq!(
                TrustDomain::parse(id.trust_domain_str()).as_ref(),
                Ok(&id.trust_domain())
            );
            let path = id.path();
            assert!(path.is_empty() || path.starts_with('/'));
            assert!(!path.ends_with('/'));
        }
        Err(e) => assert!(!e.rule().is_empty()),
    }
    match SpiffeId::parse_operator_input(text) {
        // Operator input is only ever more lenient about the trust domain's case.
        Ok(id) => assert_eq!(SpiffeId::parse(id.as_str()).as_ref(), Ok(&id)),
        Err(e) => assert!(!e.rule().is_empty()),
    }
    if let Ok(td) = TrustDomain::parse(text) {
        assert!(td.as_str().len() <= 255);
        assert_eq!(TrustDomain::parse(td.as_str()).as_ref(), Ok(&td));
    }
    let _ = TrustDomain::parse_operator_input(text);
});
