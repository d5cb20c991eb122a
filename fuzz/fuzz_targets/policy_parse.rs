//! Fuzzes the policy parser: any text must either parse or fail with located errors, never
//! panic; what parses must compile and decide without panicking.

#![no_main]

use libfuzzer_sys::fuzz_target;
use meshgate_identity::SpiffeId;
use meshgate_policy::{PolicyFile, PolicySet, Request};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let file = match PolicyFile::parse("fuzz.toml", text) {
        Ok(file) => file,
        Err(errors) => {
            for e in &errors {
                // Every error of a single file points into that file.
                assert!(
                    e.location()
                        .is_some_and(|at| at.file == "fuzz.toml" && at.line >= 1 && at.column >= 1),
                    "{e}"
                );
            }
            return;
        }
    };
    let to = file.service().cloned();
    let Ok(set) = PolicySet::compile([file]) else {
        return;
    };
    let (Ok(from), Ok(other)) = (
        SpiffeId::parse("spiffe://bank.example/ns/shop/sa/checkout"),
        SpiffeId::parse("spiffe://bank.example/ns/payments/sa/api"),
    ) else {
        return;
    };
    let to = to.unwrap_or(other);
    for request in [
        Request::tcp(&from, &to),
        Request::http(&from, &to, "POST", "/v1/charges/1?x=y")
            .with_host("api.bank.example:443")
            .with_port(443),
    ] {
        let decision = set.evaluate(&request);
        assert!(decision.rule.is_none_or(|r| r.matches(&request)));
    }
});
