//! Every pattern form, valid and not, and how each matches.

use super::*;

fn id(s: &str) -> SpiffeId {
    SpiffeId::parse(s).unwrap()
}

fn id_matches(pattern: &str, candidate: &str) -> bool {
    IdPattern::parse(pattern).unwrap().matches(&id(candidate))
}

fn path_matches(pattern: &str, path: &str) -> bool {
    PathPattern::parse(pattern).unwrap().matches(path)
}

fn host_matches(pattern: &str, host: &str) -> bool {
    HostPattern::parse(pattern).unwrap().matches(host)
}

#[test]
fn exact_id_matches_only_itself() {
    let p = "spiffe://bank.example/ns/payments/sa/api";
    assert!(id_matches(p, p));
    assert!(!id_matches(p, "spiffe://bank.example/ns/payments/sa/api2"));
    assert!(!id_matches(p, "spiffe://bank.example/ns/payments/sa"));
    assert!(!id_matches(p, "spiffe://bank.example/ns/payments/sa/api/x"));
    assert!(!id_matches(p, "spiffe://other.example/ns/payments/sa/api"));
    assert_eq!(IdPattern::parse(p).unwrap().exact(), Some(p));
}

#[test]
fn exact_id_trust_domain_is_lowercased_path_is_not() {
    let p = IdPattern::parse("spiffe://Bank.Example/ns/Pay").unwrap();
    assert_eq!(p.exact(), Some("spiffe://bank.example/ns/Pay"));
    assert!(p.matches(&id("spiffe://bank.example/ns/Pay")));
    assert!(!p.matches(&id("spiffe://bank.example/ns/pay")));
}

#[test]
fn star_matches_exactly_one_segment() {
    let p = "spiffe://bank.example/ns/*/sa/api";
    assert!(id_matches(p, "spiffe://bank.example/ns/shop/sa/api"));
    assert!(id_matches(p, "spiffe://bank.example/ns/ledger/sa/api"));
    assert!(!id_matches(p, "spiffe://bank.example/ns/a/b/sa/api"));
    assert!(!id_matches(p, "spiffe://bank.example/ns/sa/api"));
    assert!(IdPattern::parse(p).unwrap().exact().is_none());
    let last = "spiffe://bank.example/ns/shop/sa/*";
    assert!(id_matches(last, "spiffe://bank.example/ns/shop/sa/web"));
    assert!(!id_matches(last, "spiffe://bank.example/ns/shop/sa"));
    assert!(!id_matches(last, "spiffe://bank.example/ns/shop/sa/web/x"));
}

#[test]
fn double_star_matches_the_rest() {
    let p = "spiffe://bank.example/ns/ledger/**";
    assert!(id_matches(p, "spiffe://bank.example/ns/ledger/sa/api"));
    assert!(id_matches(
        p,
        "spiffe://bank.example/ns/ledger/sa/db/replica"
    ));
    assert!(id_matches(p, "spiffe://bank.example/ns/ledger"));
    assert!(!id_matches(p, "spiffe://bank.example/ns/ledgerx/sa/api"));
    assert!(!id_matches(p, "spiffe://bank.example/ns"));
    let all = "spiffe://bank.example/**";
    assert!(id_matches(all, "spiffe://bank.example/anything/at/all"));
    assert!(!id_matches(all, "spiffe://bank.example.evil/x"));
}

#[test]
fn trust_domain_is_literal() {
    assert!(!id_matches(
        "spiffe://bank.example/**",
        "spiffe://other.example/ns/x"
    ));
    let err = IdPattern::parse("spiffe://*/ns/x").unwrap_err();
    assert!(err.contains("trust domain is literal"), "{err}");
    assert!(IdPattern::parse("spiffe://*.bank.example/ns/x").is_err());
}

#[test]
fn invalid_id_patterns_are_rejected_with_a_reason() {
    let cases = [
        ("spiffe://bank.example/ns/**/sa", "last segment"),
        ("spiffe://bank.example/ns/pay*/sa", "whole segment"),
        ("spiffe://bank.example/ns/***", "whole segment"),
        ("spiffe://bank.example", "trust domain, not a workload"),
        ("spiffe://bank.example/", "trailing"),
        ("spiffe://bank.example/ns//x", "empty path segment"),
        ("spiffe://bank.example/ns/*/", "trailing-slash"),
        ("spiffe://bank.example/ns/../x", "'..'"),
        ("spiffe://bank.example/ns/a b", "path segment character"),
        ("spiffe://bank.example/ns/*/a b", "path-characters"),
        ("https://bank.example/ns/x", "scheme"),
        ("", "empty"),
        ("spiffe://bank.example:443/ns/x", "port"),
        ("spiffe://bank.example/ns/x?y", "query"),
    ];
    for (input, expected) in cases {
        let err = IdPattern::parse(input).unwrap_err();
        assert!(err.contains(expected), "{input:?}: {err}");
    }
}

#[test]
fn path_patterns_match_by_segment() {
    assert!(path_matches("/v1/charges", "/v1/charges"));
    assert!(!path_matches("/v1/charges", "/v1/charges/"));
    assert!(!path_matches("/v1/charges", "/v1/chargesx"));
    assert!(!path_matches("/v1/charges", "/v1"));
    assert!(path_matches("/v1/charges/*", "/v1/charges/ch_1"));
    assert!(!path_matches("/v1/charges/*", "/v1/charges/"));
    assert!(!path_matches("/v1/charges/*", "/v1/charges"));
    assert!(!path_matches("/v1/charges/*", "/v1/charges/ch_1/capture"));
    assert!(path_matches(
        "/v1/charges/*/capture",
        "/v1/charges/ch_1/capture"
    ));
    assert!(path_matches("/admin/**", "/admin"));
    assert!(path_matches("/admin/**", "/admin/"));
    assert!(path_matches("/admin/**", "/admin/users/1"));
    assert!(!path_matches("/admin/**", "/administrator"));
    assert!(path_matches("/**", "/"));
    assert!(path_matches("/**", "/anything/at/all"));
    assert!(path_matches("/", "/"));
    assert!(!path_matches("/", "/x"));
    assert!(path_matches("/v1/", "/v1/"));
    assert!(!path_matches("/v1/", "/v1"));
}

#[test]
fn path_query_is_ignored_and_odd_paths_match_nothing() {
    assert!(path_matches("/v1/charges", "/v1/charges?limit=10"));
    assert!(path_matches("/v1/charges", "/v1/charges#top"));
    assert!(!path_matches("/**", "*"));
    assert!(!path_matches("/**", "http://bank.example/"));
    assert!(!path_matches("/**", ""));
}

#[test]
fn invalid_path_patterns_are_rejected_with_a_reason() {
    let cases = [
        ("v1/charges", "starts with '/'"),
        ("", "starts with '/'"),
        ("/v1/**/x", "last segment"),
        ("/v1/char*", "whole segment"),
        ("/v1//x", "empty segment"),
        ("/v1/../admin", "'..'"),
        ("/v1/./x", "'.'"),
        ("/v1/x?y=1", "query"),
        ("/v1/x#y", "fragment"),
        ("/v1/a b", "RFC 3986"),
        ("/v1/%zz", "two hex digits"),
        ("/v1/%4", "two hex digits"),
    ];
    for (input, expected) in cases {
        let err = PathPattern::parse(input).unwrap_err();
        assert!(err.contains(expected), "{input:?}: {err}");
    }
    assert!(PathPattern::parse("/v1/%41~:@!$&'()+,;=").is_ok());
}

#[test]
fn host_patterns() {
    assert!(host_matches("api.bank.example", "api.bank.example"));
    assert!(host_matches("API.bank.example", "api.BANK.example"));
    assert!(host_matches("api.bank.example", "api.bank.example:8443"));
    assert!(host_matches("api.bank.example", "api.bank.example."));
    assert!(!host_matches("api.bank.example", "xapi.bank.example"));
    assert!(host_matches("*.bank.example", "api.bank.example"));
    assert!(host_matches("*.bank.example", "a.b.bank.example"));
    assert!(!host_matches("*.bank.example", "bank.example"));
    assert!(!host_matches("*.bank.example", ".bank.example"));
    assert!(!host_matches("*.bank.example", "evilbank.example"));
    assert!(host_matches("[::1]", "[::1]:443"));
    assert!(host_matches("127.0.0.1", "127.0.0.1:80"));
    for bad in [
        "",
        "*",
        "api.*.example",
        "a..b",
        "api.bank.example:443",
        "bank example",
        "*bank.example",
    ] {
        assert!(HostPattern::parse(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn methods_are_uppercase_tokens() {
    for good in ["GET", "POST", "PROPFIND", "M-SEARCH"] {
        assert!(is_method(good), "{good}");
    }
    for bad in ["", "get", "Post", "GET POST", "GET\n", "(GET)"] {
        assert!(!is_method(bad), "{bad:?}");
    }
}
