//! The example policies of the three-service bank (examples/bank), as the README and the demo
//! use them: they parse, and they decide as documented.

// Test helpers are test code too; clippy.toml's in-tests allowances only reach #[test] fns.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use meshgate_identity::SpiffeId;
use meshgate_policy::{Effect, Mode, PolicyFile, PolicySet, Request};

const FILES: &[(&str, &str)] = &[
    (
        "examples/bank/mesh.toml",
        include_str!("../examples/bank/mesh.toml"),
    ),
    (
        "examples/bank/shop.toml",
        include_str!("../examples/bank/shop.toml"),
    ),
    (
        "examples/bank/payments.toml",
        include_str!("../examples/bank/payments.toml"),
    ),
    (
        "examples/bank/ledger.toml",
        include_str!("../examples/bank/ledger.toml"),
    ),
];

const WEB: &str = "spiffe://bank.example/ns/shop/sa/web";
const CHECKOUT: &str = "spiffe://bank.example/ns/shop/sa/checkout";
const PAYMENTS: &str = "spiffe://bank.example/ns/payments/sa/api";
const LEDGER: &str = "spiffe://bank.example/ns/ledger/sa/api";
const LEDGER_DB: &str = "spiffe://bank.example/ns/ledger/sa/db";

fn bank() -> PolicySet {
    PolicySet::compile(
        FILES
            .iter()
            .map(|(name, text)| PolicyFile::parse(name, text).unwrap()),
    )
    .unwrap()
}

fn http(
    set: &PolicySet,
    from: &str,
    to: &str,
    method: &str,
    path: &str,
) -> (Effect, Option<String>, Option<String>, bool) {
    let (from, to) = (SpiffeId::parse(from).unwrap(), SpiffeId::parse(to).unwrap());
    let d = set.evaluate(&Request::http(&from, &to, method, path));
    (
        d.effect,
        d.rule_name().map(str::to_owned),
        d.file.map(str::to_owned),
        d.dry_run,
    )
}

fn outcome(
    effect: Effect,
    rule: Option<&str>,
    file: &str,
    dry_run: bool,
) -> (Effect, Option<String>, Option<String>, bool) {
    (
        effect,
        rule.map(str::to_owned),
        Some(file.to_owned()),
        dry_run,
    )
}

#[test]
fn the_examples_parse_and_compile() {
    let set = bank();
    let files: Vec<_> = set
        .files()
        .iter()
        .map(|f| (f.name(), f.service(), f.mode()))
        .collect();
    assert_eq!(
        files,
        [
            ("examples/bank/ledger.toml", Some(LEDGER), Mode::DryRun),
            ("examples/bank/mesh.toml", None, Mode::Enforce),
            ("examples/bank/payments.toml", Some(PAYMENTS), Mode::Enforce),
            ("examples/bank/shop.toml", Some(CHECKOUT), Mode::Enforce),
        ]
    );
}

#[test]
fn shop_to_payments_to_ledger() {
    let set = bank();
    let (payments, ledger, mesh) = (
        "examples/bank/payments.toml",
        "examples/bank/ledger.toml",
        "examples/bank/mesh.toml",
    );
    assert_eq!(
        http(&set, WEB, CHECKOUT, "POST", "/v1/orders"),
        outcome(
            Effect::Allow,
            Some("storefront manages carts and orders"),
            "examples/bank/shop.toml",
            false
        )
    );
    assert_eq!(
        http(&set, CHECKOUT, PAYMENTS, "POST", "/v1/charges"),
        outcome(
            Effect::Allow,
            Some("checkout charges cards"),
            payments,
            false
        )
    );
    assert_eq!(
        http(&set, CHECKOUT, PAYMENTS, "POST", "/v1/charges/ch_1/capture"),
        outcome(
            Effect::Allow,
            Some("checkout charges cards"),
            payments,
            false
        )
    );
    assert_eq!(
        http(&set, CHECKOUT, PAYMENTS, "DELETE", "/v1/charges/ch_1"),
        outcome(Effect::Deny, None, payments, false)
    );
    assert_eq!(
        http(&set, CHECKOUT, PAYMENTS, "POST", "/v1/refunds"),
        outcome(
            Effect::Deny,
            Some("the shop never refunds"),
            payments,
            false
        )
    );
    assert_eq!(
        http(
            &set,
            "spiffe://bank.example/ns/support/sa/desk",
            PAYMENTS,
            "POST",
            "/v1/refunds"
        ),
        outcome(
            Effect::Allow,
            Some("support issues refunds"),
            payments,
            false
        )
    );
    assert_eq!(
        http(&set, PAYMENTS, LEDGER, "POST", "/v1/entries"),
        outcome(Effect::Allow, Some("payments posts entries"), ledger, false)
    );
    // The ledger file is in dry-run: what it would deny is let through and flagged...
    assert_eq!(
        http(&set, PAYMENTS, LEDGER, "DELETE", "/v1/entries/42"),
        outcome(Effect::Allow, None, ledger, true)
    );
    // ...but the mesh-wide guardrails are enforced.
    assert_eq!(
        http(&set, CHECKOUT, LEDGER, "POST", "/v1/entries"),
        outcome(
            Effect::Deny,
            Some("only payments calls the ledger"),
            mesh,
            false
        )
    );
    assert_eq!(
        http(&set, PAYMENTS, LEDGER, "GET", "/admin/accounts"),
        outcome(
            Effect::Deny,
            Some("admin endpoints are for ops"),
            mesh,
            false
        )
    );
    let (payments_id, db) = (
        SpiffeId::parse(PAYMENTS).unwrap(),
        SpiffeId::parse(LEDGER_DB).unwrap(),
    );
    let d = set.evaluate(&Request::tcp(&payments_id, &db));
    assert_eq!(
        (d.effect, d.rule_name()),
        (Effect::Deny, Some("only the ledger talks to its database"))
    );
}
