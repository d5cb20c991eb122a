//! Compiling sets and deciding: the evaluation order, dry-run, the index and its edge cases.

use meshgate_identity::SpiffeId;

use super::*;

const SHOP: &str = "spiffe://bank.example/ns/shop/sa/checkout";
const PAYMENTS: &str = "spiffe://bank.example/ns/payments/sa/api";
const LEDGER: &str = "spiffe://bank.example/ns/ledger/sa/api";

fn id(s: &str) -> SpiffeId {
    SpiffeId::parse(s).unwrap()
}

fn set(files: &[(&str, &str)]) -> PolicySet {
    PolicySet::compile(
        files
            .iter()
            .map(|(name, text)| PolicyFile::parse(name, text).unwrap()),
    )
    .unwrap()
}

/// (effect, rule name, file, dry_run) of a decision on an HTTP request.
fn decide(
    set: &PolicySet,
    from: &str,
    to: &str,
    method: &str,
    path: &str,
) -> (Effect, Option<String>, Option<String>, bool) {
    let (from, to) = (id(from), id(to));
    let d = set.evaluate(&Request::http(&from, &to, method, path));
    (
        d.effect,
        d.rule_name().map(str::to_owned),
        d.file.map(str::to_owned),
        d.dry_run,
    )
}

fn payments_file(mode: &str) -> String {
    format!(
        r#"service = "{PAYMENTS}"
mode = "{mode}"

[[allow]]
name = "shop charges"
from = ["{SHOP}"]
methods = ["POST"]
paths = ["/v1/charges"]

[[allow]]
name = "shop namespace reads"
from = ["spiffe://bank.example/ns/shop/**"]
methods = ["GET"]

[[deny]]
name = "no refunds"
paths = ["/v1/refunds/**"]
"#
    )
}

const MESH: &str = r#"
[[deny]]
name = "only payments calls the ledger"
to = ["spiffe://bank.example/ns/ledger/sa/api"]
from_not = ["spiffe://bank.example/ns/payments/sa/api"]

[[deny]]
name = "no admin"
paths = ["/admin/**"]

[[allow]]
name = "metrics"
methods = ["GET"]
paths = ["/metrics"]
"#;

fn owned(
    e: Effect,
    rule: Option<&str>,
    file: Option<&str>,
    dry: bool,
) -> (Effect, Option<String>, Option<String>, bool) {
    (e, rule.map(str::to_owned), file.map(str::to_owned), dry)
}

#[test]
fn allow_deny_and_default() {
    let s = set(&[
        ("mesh.toml", MESH),
        ("payments.toml", &payments_file("enforce")),
    ]);
    let p = Some("payments.toml");
    assert_eq!(
        decide(&s, SHOP, PAYMENTS, "POST", "/v1/charges"),
        owned(Effect::Allow, Some("shop charges"), p, false)
    );
    assert_eq!(
        decide(&s, SHOP, PAYMENTS, "GET", "/v1/refunds/1"),
        owned(Effect::Deny, Some("no refunds"), p, false)
    );
    assert_eq!(
        decide(&s, SHOP, PAYMENTS, "DELETE", "/v1/charges"),
        owned(Effect::Deny, None, p, false)
    );
    assert_eq!(
        decide(&s, LEDGER, PAYMENTS, "GET", "/metrics"),
        owned(Effect::Allow, Some("metrics"), Some("mesh.toml"), false)
    );
    // A service without a file: only mesh-wide rules, then the default, with no file.
    assert_eq!(
        decide(&s, SHOP, SHOP, "POST", "/"),
        owned(Effect::Deny, None, None, false)
    );
}

#[test]
fn a_mesh_deny_beats_a_service_allow() {
    let s = set(&[
        ("mesh.toml", MESH),
        ("payments.toml", &payments_file("enforce")),
    ]);
    assert_eq!(
        decide(&s, SHOP, PAYMENTS, "GET", "/admin/x"),
        owned(Effect::Deny, Some("no admin"), Some("mesh.toml"), false)
    );
    let ledger = format!("service = \"{LEDGER}\"\n[[allow]]\nname = \"everyone\"\n");
    let s = set(&[("mesh.toml", MESH), ("ledger.toml", &ledger)]);
    let d = decide(&s, SHOP, LEDGER, "GET", "/");
    assert_eq!(
        d,
        owned(
            Effect::Deny,
            Some("only payments calls the ledger"),
            Some("mesh.toml"),
            false
        )
    );
    assert_eq!(
        decide(&s, PAYMENTS, LEDGER, "GET", "/"),
        owned(Effect::Allow, Some("everyone"), Some("ledger.toml"), false)
    );
}

#[test]
fn dry_run_relaxes_the_service_rules_and_default_only() {
    let s = set(&[
        ("mesh.toml", MESH),
        ("payments.toml", &payments_file("dry-run")),
    ]);
    let p = Some("payments.toml");
    assert_eq!(
        decide(&s, SHOP, PAYMENTS, "POST", "/v1/charges"),
        owned(Effect::Allow, Some("shop charges"), p, false)
    );
    assert_eq!(
        decide(&s, SHOP, PAYMENTS, "GET", "/v1/refunds/1"),
        owned(Effect::Allow, Some("no refunds"), p, true)
    );
    assert_eq!(
        decide(&s, SHOP, PAYMENTS, "DELETE", "/v1/charges"),
        owned(Effect::Allow, None, p, true)
    );
    // Mesh-wide denies are enforced whatever the service's mode.
    assert_eq!(
        decide(&s, SHOP, PAYMENTS, "GET", "/admin"),
        owned(Effect::Deny, Some("no admin"), Some("mesh.toml"), false)
    );
}

#[test]
fn tcp_decisions_fail_closed_on_http_conditions() {
    // The service's allows all name methods or paths: none can let a TCP connection in, and
    // its own deny on a path reads as an identity-only deny.
    let s = set(&[("payments.toml", &payments_file("enforce"))]);
    let (shop, payments) = (id(SHOP), id(PAYMENTS));
    let d = s.evaluate(&Request::tcp(&shop, &payments));
    assert_eq!(
        (d.effect, d.rule_name()),
        (Effect::Deny, Some("no refunds"))
    );
    let d = s.evaluate(&Request::http(&shop, &payments, "POST", "/v1/charges"));
    assert_eq!(
        (d.effect, d.rule_name()),
        (Effect::Allow, Some("shop charges"))
    );
    // An identity-only allow does, until a mesh-wide deny on paths reads, for a connection
    // that has no path, as the identity-only deny it then is: putting the service in TCP mode
    // does not step around the platform team's guardrail.
    let open =
        format!("service = \"{PAYMENTS}\"\n[[allow]]\nname = \"shop\"\nfrom = [\"{SHOP}\"]\n");
    let s = set(&[("payments.toml", &open)]);
    let d = s.evaluate(&Request::tcp(&shop, &payments));
    assert_eq!((d.effect, d.rule_name()), (Effect::Allow, Some("shop")));
    let s = set(&[("mesh.toml", MESH), ("payments.toml", &open)]);
    let d = s.evaluate(&Request::tcp(&shop, &payments));
    assert_eq!((d.effect, d.rule_name()), (Effect::Deny, Some("no admin")));
    // HTTP requests still meet the deny's path condition.
    let d = s.evaluate(&Request::http(&shop, &payments, "GET", "/v1/charges"));
    assert_eq!((d.effect, d.rule_name()), (Effect::Allow, Some("shop")));
}

#[test]
fn the_reported_rule_does_not_depend_on_order() {
    let a = "[[deny]]\nname = \"z\"\n[[deny]]\nname = \"a\"\n";
    let b = "[[deny]]\nname = \"m\"\n";
    let one = set(&[("a.toml", a), ("b.toml", b)]);
    let two = set(&[("b.toml", b), ("a.toml", a)]);
    for s in [&one, &two] {
        assert_eq!(
            decide(s, SHOP, PAYMENTS, "GET", "/"),
            owned(Effect::Deny, Some("a"), Some("a.toml"), false)
        );
    }
}

#[test]
fn rules_are_indexed_under_every_to_and_from() {
    let mesh = format!(
        r#"
[[allow]]
name = "two targets, two peers"
to = ["{PAYMENTS}", "{LEDGER}", "{LEDGER}"]
from = ["{SHOP}", "spiffe://bank.example/ns/ops/sa/cli"]

[[allow]]
name = "wildcard target"
to = ["spiffe://bank.example/ns/*/sa/db"]
from = ["{LEDGER}"]
"#
    );
    let s = set(&[("mesh.toml", &mesh)]);
    for to in [PAYMENTS, LEDGER] {
        for from in [SHOP, "spiffe://bank.example/ns/ops/sa/cli"] {
            assert_eq!(
                decide(&s, from, to, "GET", "/").1.as_deref(),
                Some("two targets, two peers")
            );
        }
        assert_eq!(decide(&s, PAYMENTS, to, "GET", "/").0, Effect::Deny);
    }
    assert_eq!(
        decide(&s, LEDGER, "spiffe://bank.example/ns/x/sa/db", "GET", "/")
            .1
            .as_deref(),
        Some("wildcard target")
    );
    assert_eq!(
        decide(&s, SHOP, "spiffe://bank.example/ns/x/sa/db", "GET", "/").0,
        Effect::Deny
    );
}

#[test]
fn two_files_for_one_service_are_refused() {
    let f = format!("service = \"{PAYMENTS}\"\n");
    let g = "service = \"spiffe://BANK.example/ns/payments/sa/api\"\n";
    let files = [
        PolicyFile::parse("b.toml", &f).unwrap(),
        PolicyFile::parse("a.toml", g).unwrap(),
    ];
    let err = PolicySet::compile(files).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "b.toml: service {PAYMENTS} already has a policy file, a.toml; a service has one file"
        )
    );
}

#[test]
fn one_file_given_twice_is_refused() {
    let f = PolicyFile::parse("a.toml", "").unwrap();
    let err = PolicySet::compile([f.clone(), f]).unwrap_err();
    assert_eq!(err.to_string(), "policy file \"a.toml\" is given twice");
}

#[test]
fn the_empty_set_denies() {
    let s = PolicySet::default();
    assert_eq!(
        decide(&s, SHOP, PAYMENTS, "GET", "/"),
        owned(Effect::Deny, None, None, false)
    );
    let s = PolicySet::compile([]).unwrap();
    assert!(s.rules().is_empty() && s.files().is_empty());
}

#[test]
fn file_infos() {
    let s = set(&[
        ("mesh.toml", MESH),
        ("payments.toml", &payments_file("dry-run")),
    ]);
    let infos: Vec<_> = s
        .files()
        .iter()
        .map(|f| (f.name(), f.service(), f.mode(), f.rule_count()))
        .collect();
    assert_eq!(
        infos,
        [
            ("mesh.toml", None, Mode::Enforce, 3),
            ("payments.toml", Some(PAYMENTS), Mode::DryRun, 3)
        ]
    );
    let order: Vec<_> = s.rules().iter().map(Rule::name).collect();
    assert_eq!(
        order,
        [
            "no admin",
            "only payments calls the ledger",
            "no refunds",
            "metrics",
            "shop charges",
            "shop namespace reads"
        ]
    );
}
