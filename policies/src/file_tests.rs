//! Parsing policy files: every field, and every kind of malformed file with its location.

use super::*;
use crate::rule::Request;

const PAYMENTS: &str = "spiffe://bank.example/ns/payments/sa/api";
const CHECKOUT: &str = "spiffe://bank.example/ns/shop/sa/checkout";

/// The errors of a file that must not parse, one string each.
fn errors(text: &str) -> Vec<String> {
    PolicyFile::parse("p.toml", text)
        .unwrap_err()
        .iter()
        .map(ToString::to_string)
        .collect()
}

/// The only error of a file that must not parse.
fn error(text: &str) -> String {
    let all = errors(text);
    assert_eq!(all.len(), 1, "{all:#?}");
    all.into_iter().next().unwrap()
}

fn service_file(rule_body: &str) -> String {
    format!("service = \"{PAYMENTS}\"\n\n[[allow]]\nname = \"r\"\n{rule_body}\n")
}

fn id(s: &str) -> SpiffeId {
    SpiffeId::parse(s).unwrap()
}

#[test]
fn a_service_file_with_every_field() {
    let text = service_file(
        r#"from = ["spiffe://bank.example/ns/shop/**"]
from_not = ["spiffe://bank.example/ns/shop/sa/web"]
methods = ["POST"]
paths = ["/v1/charges/**"]
paths_not = ["/v1/charges/internal/**"]
hosts = ["*.bank.example"]
ports = [8443]"#,
    );
    let file = PolicyFile::parse("p.toml", &text).unwrap();
    assert_eq!(file.name(), "p.toml");
    assert_eq!(file.service().map(SpiffeId::as_str), Some(PAYMENTS));
    assert_eq!(file.mode(), Mode::Enforce);
    let [rule] = file.rules() else {
        panic!("one rule")
    };
    assert_eq!(
        (
            rule.name(),
            rule.file(),
            rule.line(),
            rule.effect(),
            rule.scope()
        ),
        ("r", "p.toml", 4, Effect::Allow, Scope::Service)
    );

    let (checkout, payments, web) = (
        id(CHECKOUT),
        id(PAYMENTS),
        id("spiffe://bank.example/ns/shop/sa/web"),
    );
    let ok = Request::http(&checkout, &payments, "POST", "/v1/charges/1")
        .with_host("api.bank.example")
        .with_port(8443);
    assert!(rule.matches(&ok));
    // Each field, broken alone, stops the match.
    assert!(!rule.matches(&Request { from: &web, ..ok }), "from_not");
    assert!(
        !rule.matches(&Request {
            from: &id("spiffe://bank.example/ns/ops/sa/x"),
            ..ok
        }),
        "from"
    );
    assert!(
        !rule.matches(&Request {
            to: &checkout,
            ..ok
        }),
        "implicit to"
    );
    assert!(
        !rule.matches(&Request {
            method: Some("GET"),
            ..ok
        }),
        "methods"
    );
    assert!(
        !rule.matches(&Request {
            path: Some("/v2/charges"),
            ..ok
        }),
        "paths"
    );
    assert!(
        !rule.matches(&Request {
            path: Some("/v1/charges/internal/x"),
            ..ok
        }),
        "paths_not"
    );
    assert!(
        !rule.matches(&Request {
            host: Some("bank.example"),
            ..ok
        }),
        "hosts"
    );
    assert!(
        !rule.matches(&Request {
            port: Some(443),
            ..ok
        }),
        "ports"
    );
    // An attribute the request does not carry fails its condition.
    assert!(!rule.matches(&Request { method: None, ..ok }));
    assert!(!rule.matches(&Request { path: None, ..ok }));
    assert!(!rule.matches(&Request { host: None, ..ok }));
    assert!(!rule.matches(&Request { port: None, ..ok }));
    assert!(!rule.matches(&Request::tcp(&checkout, &payments)));
}

#[test]
fn a_rule_without_conditions_matches_any_peer_and_tcp() {
    let file = PolicyFile::parse("p.toml", &service_file("")).unwrap();
    let [rule] = file.rules() else {
        panic!("one rule")
    };
    let (anyone, payments) = (id("spiffe://other.example/x"), id(PAYMENTS));
    assert!(rule.matches(&Request::tcp(&anyone, &payments)));
    assert!(rule.matches(&Request::http(&anyone, &payments, "GET", "/")));
    assert!(
        !rule.matches(&Request::tcp(&anyone, &anyone)),
        "a service file's rules protect its service only"
    );
}

#[test]
fn a_mesh_file_with_to_and_both_rule_kinds() {
    let text = r#"
[[deny]]
name = "ledger db"
to = ["spiffe://bank.example/ns/ledger/sa/db"]
from_not = ["spiffe://bank.example/ns/ledger/**"]

[[allow]]
name = "metrics"
methods = ["GET"]
paths = ["/metrics"]
"#;
    let file = PolicyFile::parse("mesh.toml", text).unwrap();
    assert!(file.service().is_none());
    let names: Vec<_> = file
        .rules()
        .iter()
        .map(|r| (r.name(), r.effect(), r.scope()))
        .collect();
    assert_eq!(
        names,
        [
            ("metrics", Effect::Allow, Scope::Mesh),
            ("ledger db", Effect::Deny, Scope::Mesh)
        ]
    );
    let (api, db, other) = (
        id("spiffe://bank.example/ns/ledger/sa/api"),
        id("spiffe://bank.example/ns/ledger/sa/db"),
        id(CHECKOUT),
    );
    let deny = &file.rules()[1];
    assert!(deny.matches(&Request::tcp(&other, &db)));
    assert!(!deny.matches(&Request::tcp(&api, &db)));
    assert!(!deny.matches(&Request::tcp(&other, &api)));
    let metrics = &file.rules()[0];
    assert!(
        metrics.matches(&Request::http(&other, &api, "GET", "/metrics")),
        "no `to` means every service"
    );
}

#[test]
fn modes() {
    let dry = PolicyFile::parse(
        "p.toml",
        &format!("service = \"{PAYMENTS}\"\nmode = \"dry-run\"\n"),
    )
    .unwrap();
    assert_eq!(dry.mode(), Mode::DryRun);
    assert!(dry.rules().is_empty());
    let enforce = PolicyFile::parse(
        "p.toml",
        &format!("service = \"{PAYMENTS}\"\nmode = \"enforce\"\n"),
    )
    .unwrap();
    assert_eq!(enforce.mode(), Mode::Enforce);
    assert_eq!(
        error(&format!("service = \"{PAYMENTS}\"\nmode = \"audit\"\n")),
        "p.toml:2:8: \"audit\" is not a mode; expected \"enforce\" or \"dry-run\""
    );
    assert!(error("mode = \"dry-run\"\n").starts_with("p.toml:1:8: `mode` needs `service`"));
}

#[test]
fn an_empty_file_is_an_empty_mesh_file() {
    let file = PolicyFile::parse("empty.toml", "# nothing yet\n").unwrap();
    assert!(file.service().is_none() && file.rules().is_empty());
}

#[test]
fn bad_toml_is_located() {
    assert_eq!(
        error("service = \"spiffe://bank.example/x\n"),
        "p.toml:1:35: invalid basic string, expected `\"`"
    );
    assert!(error("[[allow]\nname = \"x\"\n").starts_with("p.toml:1:"));
    assert_eq!(
        error("service = 1\n"),
        "p.toml:1:11: invalid type: integer `1`, expected a string"
    );
    assert!(
        error("[allow]\nname = \"x\"\n")
            .starts_with("p.toml:1:1: invalid type: map, expected a sequence")
    );
    assert!(error("ports = 1\n").starts_with("p.toml:1:1: unknown field `ports`"));
    assert_eq!(
        error("[[allow]]\nfrom = [\"spiffe://a/b\"]\n"),
        "p.toml:1:1: missing field `name`"
    );
    assert_eq!(
        error("[[allow]]\nname = \"a\"\nname = \"b\"\n"),
        "p.toml:3:1: duplicate key"
    );
}

#[test]
fn unknown_keys_are_located() {
    assert_eq!(
        error(&service_file("form = [\"spiffe://bank.example/x\"]")),
        "p.toml:5:1: unknown field `form`, expected one of `name`, `from`, `from_not`, `to`, `methods`, `paths`, `paths_not`, `hosts`, `ports`"
    );
    assert!(error("servce = \"x\"\n").starts_with("p.toml:1:1: unknown field `servce`"));
}

#[test]
fn invalid_ids_are_located_with_the_value() {
    let e = error(&service_file(
        "from = [\"spiffe://bank.example/ok\", \"spiffe://Bank Example/x\"]",
    ));
    assert!(
        e.starts_with("p.toml:5:37: \"spiffe://Bank Example/x\" is not a valid SPIFFE ID pattern"),
        "{e}"
    );
    let e = error("service = \"spiffe://bank.example\"\n");
    assert!(
        e.starts_with("p.toml:1:11: \"spiffe://bank.example\" is not a valid service SPIFFE ID"),
        "{e}"
    );
    let e = error("service = \"spiffe://bank.example/ns/*/sa/api\"\n");
    assert!(e.starts_with("p.toml:1:11: "), "{e}");
}

#[test]
fn double_star_in_the_middle_is_located() {
    assert_eq!(
        error(&service_file(
            "from = [\"spiffe://bank.example/ns/**/sa/api\"]"
        )),
        "p.toml:5:9: \"spiffe://bank.example/ns/**/sa/api\" is not a valid SPIFFE ID pattern: `**` may only be the last segment"
    );
    assert_eq!(
        error(&service_file("paths = [\"/v1/**/x\"]")),
        "p.toml:5:10: \"/v1/**/x\" is not a valid path pattern: `**` may only be the last segment"
    );
}

#[test]
fn empty_lists_are_located() {
    assert_eq!(
        error(&service_file("from = []")),
        "p.toml:5:8: `from` is an empty list, which no request could match; list at least one value, or leave `from` out to match any"
    );
    for field in [
        "from_not",
        "methods",
        "paths",
        "paths_not",
        "hosts",
        "ports",
    ] {
        let e = error(&service_file(&format!("{field} = []")));
        assert!(e.contains(&format!("`{field}` is an empty list")), "{e}");
    }
    assert!(error("[[deny]]\nname = \"d\"\nto = []\n").contains("`to` is an empty list"));
}

#[test]
fn duplicate_rule_names_are_located() {
    let text =
        format!("service = \"{PAYMENTS}\"\n[[allow]]\nname = \"a\"\n[[deny]]\nname = \"a\"\n");
    assert_eq!(
        error(&text),
        "p.toml:5:8: rule name \"a\" is already used at p.toml:3:8; rule names are unique within a file"
    );
}

#[test]
fn bad_rule_names() {
    assert!(error(&service_file("").replace("\"r\"", "\"  \"")).contains("not blank"));
    assert!(error(&service_file("").replace("\"r\"", "\"a\\nb\"")).contains("control characters"));
    assert!(
        error(&service_file("").replace("\"r\"", &format!("\"{}\"", "x".repeat(201))))
            .contains("at most 200")
    );
}

#[test]
fn other_fields_are_checked() {
    assert_eq!(
        error(&service_file("methods = [\"GET\", \"post\"]")),
        "p.toml:5:19: \"post\" is not an HTTP method; expected an uppercase token such as \"GET\" or \"POST\""
    );
    assert_eq!(
        error(&service_file("ports = [0]")),
        "p.toml:5:10: 0 is not a port; expected a number from 1 to 65535"
    );
    assert!(error(&service_file("ports = [65536]")).contains("65536 is not a port"));
    assert!(error(&service_file("ports = [-1]")).contains("-1 is not a port"));
    assert!(
        error(&service_file("hosts = [\"api.*.example\"]"))
            .starts_with("p.toml:5:10: \"api.*.example\" is not a valid host pattern")
    );
    assert!(
        error(&service_file("paths = [\"v1\"]"))
            .starts_with("p.toml:5:10: \"v1\" is not a valid path pattern")
    );
    assert!(error(&service_file("paths_not = [\"/a/../b\"]")).contains("'..'"));
}

#[test]
fn to_is_refused_in_a_service_file() {
    let e = error(&service_file(
        "to = [\"spiffe://bank.example/ns/ledger/sa/api\"]",
    ));
    assert!(
        e.starts_with(&format!(
            "p.toml:5:6: `to` is not allowed in the service file of {PAYMENTS}"
        )),
        "{e}"
    );
}

#[test]
fn every_error_of_a_file_is_reported_in_text_order() {
    let text = format!(
        "service = \"{PAYMENTS}\"\nmode = \"x\"\n[[allow]]\nname = \"a\"\nfrom = []\nmethods = [\"get\"]\n[[allow]]\nname = \"a\"\n"
    );
    let all = errors(&text);
    let places: Vec<_> = all
        .iter()
        .map(|e| e.split(": ").next().unwrap().to_owned())
        .collect();
    assert_eq!(
        places,
        ["p.toml:2:8", "p.toml:5:8", "p.toml:6:12", "p.toml:8:8"],
        "{all:#?}"
    );
}

#[test]
fn errors_carry_structured_locations() {
    let errs = PolicyFile::parse("dir/p.toml", &service_file("from = []")).unwrap_err();
    let at = errs.iter().next().unwrap().location().unwrap();
    assert_eq!((at.file.as_str(), at.line, at.column), ("dir/p.toml", 5, 8));
}

#[test]
fn bytes_that_are_not_utf8_are_located_at_the_first_bad_one() {
    let mut bytes = service_file("").into_bytes();
    bytes.extend_from_slice(b"# caf\xe9\n");
    let errs = PolicyFile::parse_bytes("p.toml", &bytes).unwrap_err();
    let e = errs.iter().next().unwrap();
    assert!(matches!(e, PolicyError::NotUtf8 { .. }), "{e}");
    assert_eq!(
        e.to_string(),
        "p.toml:6:6: the file is not UTF-8 text; a policy file is UTF-8 TOML"
    );
    assert!(PolicyFile::parse_bytes("p.toml", service_file("").as_bytes()).is_ok());
}

#[test]
fn rules_far_down_a_long_file_are_located_by_their_own_line() {
    let mut text = format!("service = \"{PAYMENTS}\"\n");
    for i in 0..3000 {
        text.push_str(&format!(
            "[[allow]]\nname = \"r{i}\"\nfrom = [\"{CHECKOUT}\"]\n"
        ));
    }
    let file = PolicyFile::parse("p.toml", &text).unwrap();
    assert_eq!(file.rules().len(), 3000);
    assert_eq!(file.rules()[2999].line(), 2 + 3 * 2999 + 1);
    text.push_str("[[allow]]\nname = \"r0\"\n");
    assert_eq!(
        error(&text),
        "p.toml:9003:8: rule name \"r0\" is already used at p.toml:3:8; rule names are unique within a file"
    );
}

#[test]
fn http_conditions_fail_closed_for_a_tcp_connection() {
    let text = r#"
[[allow]]
name = "reads"
methods = ["GET"]
paths = ["/v1/**"]
paths_not = ["/v1/secret"]
hosts = ["payments.bank.example"]

[[deny]]
name = "writes"
methods = ["POST"]
paths = ["/admin/**"]
paths_not = ["/admin/health"]
hosts = ["admin.bank.example"]
"#;
    let file = PolicyFile::parse("mesh.toml", text).unwrap();
    let [allow, deny] = file.rules() else {
        panic!("two rules")
    };
    let (peer, service) = (id(CHECKOUT), id(PAYMENTS));
    let tcp = Request::tcp(&peer, &service);
    // An allow never lets in what it cannot see; a deny applies on what it can.
    assert!(!allow.matches(&tcp));
    assert!(deny.matches(&tcp));
    // HTTP requests meet every condition as before.
    let get = Request::http(&peer, &service, "GET", "/v1/a");
    assert!(allow.matches(&Request {
        host: Some("payments.bank.example"),
        ..get
    }));
    assert!(!deny.matches(&Request {
        host: Some("admin.bank.example"),
        ..get
    }));
    let post = Request::http(&peer, &service, "POST", "/admin/x");
    assert!(deny.matches(&Request {
        host: Some("admin.bank.example"),
        ..post
    }));
    // An HTTP request without a host: the deny's host condition is left out, the allow's fails.
    assert!(deny.matches(&post));
    assert!(!allow.matches(&get));
}
