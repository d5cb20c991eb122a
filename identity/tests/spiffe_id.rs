//! SPIFFE-ID conformance: one failing case per rule (`IdError` variant), each asserting the variant
//! and its rule name, plus the inputs the spec allows, and properties of the parser.

// Test helpers are test code too; clippy.toml's in-tests allowances only reach #[test] fns.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use meshgate_identity::spiffe_id::{MAX_ID_BYTES, MAX_TRUST_DOMAIN_BYTES};
use meshgate_identity::{IdError, SpiffeId, TrustDomain};
use proptest::prelude::*;

/// Parses strictly and returns the error, which must name `rule`.
fn rejected(input: &str, rule: &str) -> IdError {
    let err = SpiffeId::parse(input).unwrap_err();
    assert_eq!(err.rule(), rule, "{input:?} -> {err:?}");
    err
}

fn id_of_len(len: usize) -> String {
    let head = "spiffe://td/";
    format!("{head}{}", "a".repeat(len - head.len()))
}

#[test]
fn empty_input() {
    assert!(matches!(rejected("", "empty"), IdError::Empty));
}

#[test]
fn longer_than_2048_bytes() {
    let input = id_of_len(MAX_ID_BYTES + 1);
    assert_eq!(input.len(), 2049);
    let err = rejected(&input, "max-length");
    assert!(matches!(err, IdError::TooLong { len: 2049, .. }), "{err:?}");
    // The error message shows a cut-short input, not all 2049 bytes.
    assert!(err.to_string().len() < 400, "{err}");
}

#[test]
fn exactly_2048_bytes_passes() {
    let input = id_of_len(MAX_ID_BYTES);
    assert_eq!(SpiffeId::parse(&input).unwrap().as_str().len(), 2048);
}

#[test]
fn control_characters() {
    for input in [
        "spiffe://td/a\n",
        "spiffe://td/a\r\n",
        "spiffe://td/\ta",
        "spiffe://td/a\0",
        "spiffe://td/a\u{7f}",
        "spiffe://t\u{85}d/a",
    ] {
        assert!(matches!(
            rejected(input, "control-character"),
            IdError::ControlCharacter { .. }
        ));
    }
    // Debug escapes the newline, so a log line stays one line.
    let err = rejected("spiffe://td/a\n", "control-character");
    assert!(!err.to_string().contains('\n'), "{err}");
}

#[test]
fn scheme_must_be_lowercase_spiffe() {
    for input in [
        "SPIFFE://td/a",
        "Spiffe://td/a",
        "http://td/a",
        "https://td/a",
        "spiffe:/td/a",
        "spiffe:td/a",
        "td/a",
        "//td/a",
        " spiffe://td/a",
    ] {
        assert!(
            matches!(rejected(input, "scheme"), IdError::Scheme { .. }),
            "{input:?}"
        );
    }
}

#[test]
fn empty_trust_domain() {
    for input in ["spiffe://", "spiffe:///a"] {
        assert!(matches!(
            rejected(input, "empty-trust-domain"),
            IdError::EmptyTrustDomain { .. }
        ));
    }
}

#[test]
fn userinfo() {
    for input in ["spiffe://u@td/a", "spiffe://u:p@td/a", "spiffe://@td"] {
        assert!(
            matches!(rejected(input, "userinfo"), IdError::Userinfo { .. }),
            "{input:?}"
        );
    }
}

#[test]
fn port() {
    for input in ["spiffe://td:8080/a", "spiffe://td:/a", "spiffe://td:443"] {
        assert!(
            matches!(rejected(input, "port"), IdError::Port { .. }),
            "{input:?}"
        );
    }
}

#[test]
fn trust_domain_must_be_lowercase() {
    let err = rejected("spiffe://Example.org/a", "trust-domain-lowercase");
    assert!(
        matches!(err, IdError::TrustDomainNotLowercase { .. }),
        "{err:?}"
    );
}

#[test]
fn trust_domain_characters() {
    for input in [
        "spiffe://ex!ample/a",
        "spiffe://ex ample/a",
        "spiffe://exämple/a",
        "spiffe://[td]/a",
        "spiffe://td+x/a",
    ] {
        let err = rejected(input, "trust-domain-characters");
        assert!(
            matches!(err, IdError::TrustDomainCharacters { .. }),
            "{input:?}"
        );
    }
}

#[test]
fn trust_domain_of_255_bytes_passes_and_256_fails() {
    let td = "a".repeat(MAX_TRUST_DOMAIN_BYTES);
    let id = SpiffeId::parse(&format!("spiffe://{td}/x")).unwrap();
    assert_eq!(id.trust_domain_str(), td);
    assert_eq!(TrustDomain::parse(&td).unwrap().as_str(), td);

    let long = "a".repeat(MAX_TRUST_DOMAIN_BYTES + 1);
    let err = rejected(&format!("spiffe://{long}/x"), "trust-domain-max-length");
    assert!(matches!(err, IdError::TrustDomainTooLong { .. }), "{err:?}");
    let err = TrustDomain::parse(&long).unwrap_err();
    assert!(matches!(err, IdError::TrustDomainTooLong { .. }), "{err:?}");
}

#[test]
fn percent_encoding() {
    for input in ["spiffe://td/a%20b", "spiffe://td/%41", "spiffe://t%64/a"] {
        let err = rejected(input, "percent-encoding");
        assert!(matches!(err, IdError::PercentEncoding { .. }), "{input:?}");
    }
}

#[test]
fn query() {
    for input in ["spiffe://td/a?x", "spiffe://td?x", "spiffe://td/a?"] {
        assert!(
            matches!(rejected(input, "query"), IdError::Query { .. }),
            "{input:?}"
        );
    }
}

#[test]
fn fragment() {
    for input in ["spiffe://td/a#x", "spiffe://td#x", "spiffe://td/a#"] {
        assert!(
            matches!(rejected(input, "fragment"), IdError::Fragment { .. }),
            "{input:?}"
        );
    }
}

#[test]
fn path_characters() {
    for input in [
        "spiffe://td/a b",
        "spiffe://td/a*",
        "spiffe://td/é",
        "spiffe://td/a+b",
        "spiffe://td/a~b",
        "spiffe://td/a:b",
        "spiffe://td/a@b",
        "spiffe://td/a\\b",
    ] {
        let err = rejected(input, "path-characters");
        assert!(matches!(err, IdError::PathCharacters { .. }), "{input:?}");
    }
}

#[test]
fn empty_segment() {
    for input in ["spiffe://td//a", "spiffe://td/a//b", "spiffe://td///"] {
        let err = rejected(input, "empty-segment");
        assert!(matches!(err, IdError::EmptySegment { .. }), "{input:?}");
    }
}

#[test]
fn dot_segments() {
    for input in [
        "spiffe://td/./a",
        "spiffe://td/../a",
        "spiffe://td/a/.",
        "spiffe://td/a/..",
        "spiffe://td/a/./b",
    ] {
        assert!(
            matches!(rejected(input, "dot-segment"), IdError::DotSegment { .. }),
            "{input:?}"
        );
    }
}

#[test]
fn trailing_slash() {
    for input in ["spiffe://td/a/", "spiffe://td/", "spiffe://td/a/b/"] {
        let err = rejected(input, "trailing-slash");
        assert!(matches!(err, IdError::TrailingSlash { .. }), "{input:?}");
    }
}

#[test]
fn workload_id_needs_a_path() {
    let err = SpiffeId::parse_workload("spiffe://td").unwrap_err();
    assert!(matches!(err, IdError::MissingPath { .. }), "{err:?}");
    assert_eq!(err.rule(), "missing-path");
    let td_id = SpiffeId::parse("spiffe://td").unwrap();
    assert_eq!(td_id.require_path().unwrap_err().rule(), "missing-path");
    SpiffeId::parse_workload("spiffe://td/a")
        .unwrap()
        .require_path()
        .unwrap();
}

#[test]
fn trust_domain_id_passes() {
    let id = SpiffeId::parse("spiffe://td").unwrap();
    assert_eq!(id.trust_domain_str(), "td");
    assert_eq!(id.path(), "");
    assert_eq!(id.trust_domain().id(), id);
}

#[test]
fn every_allowed_character_passes() {
    let path = "/ABCDEFGHIJKLMNOPQRSTUVWXYZ/abcdefghijklmnopqrstuvwxyz/0123456789/.-_";
    let input = format!("spiffe://a-b_c.0123456789abcdefghijklmnopqrstuvwxyz{path}");
    let id = SpiffeId::parse(&input).unwrap();
    assert_eq!(id.as_str(), input);
    assert_eq!(id.path(), path);
    assert_eq!(
        id.trust_domain_str(),
        "a-b_c.0123456789abcdefghijklmnopqrstuvwxyz"
    );
}

#[test]
fn segments_that_only_look_like_dot_segments_pass() {
    for input in [
        "spiffe://td/..a",
        "spiffe://td/a.",
        "spiffe://td/...",
        "spiffe://td/.a/a..",
        "spiffe://td/.hidden",
    ] {
        assert_eq!(SpiffeId::parse(input).unwrap().as_str(), input);
    }
}

#[test]
fn operator_input_lowercases_the_trust_domain_only() {
    let id = SpiffeId::parse_operator_input("spiffe://Bank.Example/Path").unwrap();
    assert_eq!(id.as_str(), "spiffe://bank.example/Path");
    assert_eq!(id.trust_domain_str(), "bank.example");
    assert_eq!(
        SpiffeId::parse_operator_input("SPIFFE://BANK.EXAMPLE")
            .unwrap()
            .as_str(),
        "spiffe://bank.example"
    );
    // Every other rule still applies.
    let err = SpiffeId::parse_operator_input("spiffe://Bank.Example/a/").unwrap_err();
    assert_eq!(err.rule(), "trailing-slash");
    let err = SpiffeId::parse_operator_input("spiffe://Bank.Example/a%20b").unwrap_err();
    assert_eq!(err.rule(), "percent-encoding");
    let err = SpiffeId::parse_operator_input("Bank.Example/a").unwrap_err();
    assert_eq!(err.rule(), "scheme");
}

#[test]
fn trust_domain_parse() {
    assert_eq!(
        TrustDomain::parse("bank.example").unwrap().as_str(),
        "bank.example"
    );
    assert_eq!(
        TrustDomain::parse("spiffe://bank.example")
            .unwrap()
            .as_str(),
        "bank.example"
    );
    assert_eq!(
        TrustDomain::parse("bank.example").unwrap().id().as_str(),
        "spiffe://bank.example"
    );
    assert_eq!(
        TrustDomain::parse("spiffe://bank.example/a")
            .unwrap_err()
            .rule(),
        "trust-domain-path"
    );
    assert_eq!(TrustDomain::parse("").unwrap_err().rule(), "empty");
    assert_eq!(
        TrustDomain::parse("Bank.example").unwrap_err().rule(),
        "trust-domain-lowercase"
    );
    assert_eq!(
        TrustDomain::parse("bank.example:8443").unwrap_err().rule(),
        "port"
    );
    assert_eq!(
        TrustDomain::parse("bank.example\n").unwrap_err().rule(),
        "control-character"
    );
    assert_eq!(
        TrustDomain::parse("bank/example").unwrap_err().rule(),
        "trust-domain-characters"
    );
    assert_eq!(
        TrustDomain::parse_operator_input("Bank.Example")
            .unwrap()
            .as_str(),
        "bank.example"
    );
}

#[test]
fn membership_compares_the_whole_trust_domain() {
    let id = SpiffeId::parse("spiffe://bank.example/a").unwrap();
    assert!(id.is_member_of(&TrustDomain::parse("bank.example").unwrap()));
    assert!(!id.is_member_of(&TrustDomain::parse("bank.exampl").unwrap()));
    assert!(!id.is_member_of(&TrustDomain::parse("example").unwrap()));
}

#[test]
fn serde_round_trip_and_strict_deserialization() {
    let id = SpiffeId::parse("spiffe://bank.example/ns/Payments").unwrap();
    let json = serde_json::to_string(&id).unwrap();
    assert_eq!(json, "\"spiffe://bank.example/ns/Payments\"");
    assert_eq!(serde_json::from_str::<SpiffeId>(&json).unwrap(), id);

    let td = TrustDomain::parse("bank.example").unwrap();
    let json = serde_json::to_string(&td).unwrap();
    assert_eq!(json, "\"bank.example\"");
    assert_eq!(serde_json::from_str::<TrustDomain>(&json).unwrap(), td);

    // Deserialization is the strict parse: config files go through parse_operator_input instead.
    assert!(serde_json::from_str::<SpiffeId>("\"spiffe://Example.org/a\"").is_err());
    assert!(serde_json::from_str::<SpiffeId>("\"spiffe://td/a/\"").is_err());
    assert!(serde_json::from_str::<TrustDomain>("\"Bank.example\"").is_err());
}

fn segment() -> impl Strategy<Value = String> {
    "[A-Za-z0-9._-]{1,12}".prop_filter("dot segment", |s| s != "." && s != "..")
}

fn trust_domain() -> impl Strategy<Value = String> {
    "[a-z0-9._-]{1,40}"
}

/// IDs near the rules' edges: mostly valid ones, ones with rule-breaking characters mixed in,
/// and ones with a broken scheme, so that both outcomes of every check are reached.
fn near_id() -> impl Strategy<Value = String> {
    prop_oneof![
        "spiffe://[a-z0-9._-]{1,10}(/[a-zA-Z0-9._-]{1,6}){0,4}",
        "spiffe://[a-zA-Z0-9.:@_%-]{0,10}(/[a-zA-Z0-9.?#% _-]{0,6}){0,4}/?",
        "(spiffe|SPIFFE|http)?:?/?/?[a-zA-Z0-9._-]{0,8}(/[a-zA-Z0-9._-]{0,6}){0,3}",
    ]
}

proptest! {
    #[test]
    fn valid_ids_parse_and_split(
        td in trust_domain(),
        segments in prop::collection::vec(segment(), 0..8),
    ) {
        let path: String = segments.iter().map(|s| format!("/{s}")).collect();
        let input = format!("spiffe://{td}{path}");
        let id = SpiffeId::parse(&input).unwrap();
        prop_assert_eq!(id.as_str(), input.as_str());
        prop_assert_eq!(id.trust_domain_str(), td.as_str());
        prop_assert_eq!(id.trust_domain(), TrustDomain::parse(&td).unwrap());
        prop_assert_eq!(id.path(), path.as_str());
        prop_assert_eq!(id.to_string(), input.clone());
        // Operator input may shout the trust domain; the result is the same ID.
        let shouted = format!("spiffe://{}{path}", td.to_ascii_uppercase());
        prop_assert_eq!(SpiffeId::parse_operator_input(&shouted).unwrap(), id);
    }

    #[test]
    fn parsers_never_panic_on_any_string(input in ".*") {
        let _ = SpiffeId::parse(&input);
        let _ = SpiffeId::parse_operator_input(&input);
        let _ = TrustDomain::parse(&input);
        let _ = TrustDomain::parse_operator_input(&input);
    }

    #[test]
    fn parsers_never_panic_on_any_bytes(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
        let mut input = b"spiffe://".to_vec();
        input.extend(bytes);
        let input = String::from_utf8_lossy(&input);
        let _ = SpiffeId::parse(&input);
        let _ = SpiffeId::parse_operator_input(&input);
        let _ = TrustDomain::parse(&input);
        let _ = TrustDomain::parse_operator_input(&input);
    }

    #[test]
    fn whatever_parses_reparses_to_an_equal_value(input in prop_oneof![near_id(), ".*"]) {
        if let Ok(id) = SpiffeId::parse(&input) {
            prop_assert_eq!(id.as_str(), input.as_str());
            prop_assert_eq!(SpiffeId::parse(id.as_str()).unwrap(), id.clone());
            let json = serde_json::to_string(&id).unwrap();
            prop_assert_eq!(serde_json::from_str::<SpiffeId>(&json).unwrap(), id);
        }
        if let Ok(id) = SpiffeId::parse_operator_input(&input) {
            // Normalized operator input is valid certificate input.
            prop_assert_eq!(SpiffeId::parse(id.as_str()).unwrap(), id);
        }
        if let Ok(td) = TrustDomain::parse(&input) {
            prop_assert_eq!(TrustDomain::parse(td.as_str()).unwrap(), td);
        }
    }
}
