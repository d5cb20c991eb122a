//! The demo's calls: what each one sends, through which gateway, what it should come to, and
//! what it came to according to the gateways themselves (the receiving gateway's access log for
//! decisions, its handshake-failure metric for TLS refusals).

use std::time::Duration;

use anyhow::Context as _;
use meshgate_identity::SpiffeId;
use meshgate_policy::{Effect, PolicyFile, PolicySet, Request};

use super::capture::{AccessLog, AccessRecord, handshake_failures, new_failures};
use super::intruders::{Intruder, Intruders};
use super::mesh::{self, Bank, PAYMENTS, POLICIES, SHOP, Service};
use super::net::{self, Reply};

/// One line of the table.
#[derive(Debug)]
pub struct Row {
    pub what: &'static str,
    pub from: &'static str,
    pub to: &'static str,
    pub request: String,
    pub result: String,
    pub rule: String,
    pub as_expected: bool,
    /// What the call should have come to, in words.
    pub expected: String,
}

#[derive(Debug, Clone, Copy)]
enum Svc {
    Shop,
    Payments,
    Ledger,
}

/// How a call is made.
#[derive(Debug, Clone, Copy)]
enum Via {
    /// The `app`'s plain HTTP call into its own gateway's outbound route.
    Route(Svc, &'static str),
    /// mTLS straight to the target's inbound listener, as someone outside the mesh.
    Direct(Intruder),
}

#[derive(Debug, Clone, Copy)]
enum Expect {
    Allow(&'static str),
    /// Let through by a dry-run policy; the rule that would have decided, if any.
    DryRun(Option<&'static str>),
    Deny(&'static str),
    /// Refused at the target's TLS handshake, counted with this reason.
    TlsRefused(&'static str),
    /// The caller's gateway refuses a server that is not the route's expected peer.
    WrongPeer,
}

struct Call {
    what: &'static str,
    from: &'static str,
    /// The identity the request carries, if it has a valid one.
    from_id: &'static str,
    to: Svc,
    method: &'static str,
    path: &'static str,
    via: Via,
    expect: Expect,
}

const CALLS: [Call; 12] = [
    call(
        "checkout charges a card",
        "shop",
        SHOP,
        Svc::Payments,
        "POST",
        "/v1/charges",
        Via::Route(Svc::Shop, "payments"),
        Expect::Allow("checkout charges cards"),
    ),
    call(
        "checkout reads a charge",
        "shop",
        SHOP,
        Svc::Payments,
        "GET",
        "/v1/charges/ch_1",
        Via::Route(Svc::Shop, "payments"),
        Expect::Allow("checkout reads charges"),
    ),
    call(
        "checkout asks for a refund",
        "shop",
        SHOP,
        Svc::Payments,
        "POST",
        "/v1/refunds/r_1",
        Via::Route(Svc::Shop, "payments"),
        Expect::Deny("the shop never refunds"),
    ),
    call(
        "checkout probes the admin API",
        "shop",
        SHOP,
        Svc::Payments,
        "GET",
        "/admin/users",
        Via::Route(Svc::Shop, "payments"),
        Expect::Deny("admin endpoints are for ops"),
    ),
    call(
        "payments posts a ledger entry",
        "payments",
        PAYMENTS,
        Svc::Ledger,
        "POST",
        "/v1/entries",
        Via::Route(Svc::Payments, "ledger"),
        Expect::Allow("payments posts entries"),
    ),
    call(
        "payments reads a balance",
        "payments",
        PAYMENTS,
        Svc::Ledger,
        "GET",
        "/v1/accounts/a_1/balance",
        Via::Route(Svc::Payments, "ledger"),
        Expect::Allow("payments reads balances"),
    ),
    call(
        "payments deletes entries (ledger in dry-run)",
        "payments",
        PAYMENTS,
        Svc::Ledger,
        "DELETE",
        "/v1/entries",
        Via::Route(Svc::Payments, "ledger"),
        Expect::DryRun(None),
    ),
    call(
        "stolen shop identity reads the ledger",
        "shop",
        SHOP,
        Svc::Ledger,
        "GET",
        "/v1/accounts/a_1/balance",
        Via::Route(Svc::Shop, "ledger"),
        Expect::Deny("only payments calls the ledger"),
    ),
    call(
        "stolen shop key used straight at the ledger",
        "shop key",
        SHOP,
        Svc::Ledger,
        "POST",
        "/v1/entries",
        Via::Direct(Intruder::StolenShopKey),
        Expect::Deny("only payments calls the ledger"),
    ),
    call(
        "foreign CA mints a payments SVID",
        "foreign CA",
        PAYMENTS,
        Svc::Ledger,
        "POST",
        "/v1/entries",
        Via::Direct(Intruder::ForeignCa),
        Expect::TlsRefused("untrusted"),
    ),
    call(
        "expired shop SVID",
        "shop (old)",
        SHOP,
        Svc::Payments,
        "POST",
        "/v1/charges",
        Via::Direct(Intruder::ExpiredShop),
        Expect::TlsRefused("expired"),
    ),
    call(
        "ledger poses as payments (misrouted)",
        "shop",
        SHOP,
        Svc::Payments,
        "POST",
        "/v1/charges",
        Via::Route(Svc::Shop, "payments-misrouted"),
        Expect::WrongPeer,
    ),
];

#[expect(
    clippy::too_many_arguments,
    reason = "one table row per call, read as a row"
)]
const fn call(
    what: &'static str,
    from: &'static str,
    from_id: &'static str,
    to: Svc,
    method: &'static str,
    path: &'static str,
    via: Via,
    expect: Expect,
) -> Call {
    Call {
        what,
        from,
        from_id,
        to,
        method,
        path,
        via,
        expect,
    }
}

/// Makes every call in order and describes how each ended.
pub async fn run_all(bank: &Bank, log: &AccessLog) -> anyhow::Result<Vec<Row>> {
    let policies = compile_policies()?;
    let intruders = Intruders::new(bank)?;
    let mut rows = Vec::with_capacity(CALLS.len());
    for call in &CALLS {
        rows.push(make(bank, log, &policies, &intruders, call).await?);
    }
    Ok(rows)
}

async fn make(
    bank: &Bank,
    log: &AccessLog,
    policies: &PolicySet,
    intruders: &Intruders,
    call: &Call,
) -> anyhow::Result<Row> {
    let to = service(bank, call.to);
    let before = handshake_failures(bank).await;
    let _ = log.take();
    let reply = match call.via {
        Via::Route(app, route) => {
            let addr = service(bank, app)
                .gateway
                .outbound_addr(route)
                .with_context(|| format!("no outbound route {route}"))?;
            let host = format!("{}.bank.example", to.name);
            net::app_call(addr, &host, call.method, call.path).await
        }
        Via::Direct(who) => {
            let tls = intruders.tls(who, &to.id)?;
            net::direct_call(mesh::inbound(to)?, tls, call.method, call.path).await
        }
    };
    let logged = log
        .take()
        .into_iter()
        .rev()
        .find(|r| r.get("direction") == Some("inbound"));
    // A refusal at TLS is counted just after the alert is sent: give the counter a moment.
    let mut refused = Vec::new();
    for _ in 0..20 {
        refused = new_failures(&before, &handshake_failures(bank).await);
        if !refused.is_empty() || !matches!(call.expect, Expect::TlsRefused(_) | Expect::WrongPeer)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (result, rule, ok) = judge(call, to, &reply, logged.as_ref(), &refused, policies)?;
    Ok(Row {
        what: call.what,
        from: call.from,
        to: to.name,
        request: format!("{} {}", call.method, call.path),
        result,
        rule,
        as_expected: ok,
        expected: expected(call.expect),
    })
}

/// The result text, the deciding-rule text, and whether the call ended as expected.
fn judge(
    call: &Call,
    to: &Service,
    reply: &Reply,
    logged: Option<&AccessRecord>,
    refused: &[(String, String, String)],
    policies: &PolicySet,
) -> anyhow::Result<(String, String, bool)> {
    let answer = match reply {
        Reply::Http(a) => a,
        Reply::Refused { alert, error } => {
            let counted: Vec<String> = refused
                .iter()
                .map(|(gw, dir, reason)| format!("{gw} gateway counted {dir} {reason}"))
                .collect();
            let client = match alert {
                Some(alert) => format!("client got alert {alert}"),
                None => format!("client: {error}"),
            };
            let ok = matches!(call.expect, Expect::TlsRefused(reason)
                if refused.iter().any(|(gw, dir, r)| gw == to.name && dir == "inbound" && r == reason));
            let rule = format!("{}; {client}", none_if_empty(&counted.join(", ")));
            return Ok(("refused at TLS".into(), rule, ok));
        }
    };
    if answer.status == 502 {
        let ok = matches!(call.expect, Expect::WrongPeer)
            && refused
                .iter()
                .any(|(_, dir, r)| dir == "outbound" && r == "unexpected_peer")
            && String::from_utf8_lossy(&answer.body).contains(&format!("expected {}", to.id));
        let rule = "shop gateway: the server is not the expected SPIFFE ID (unexpected_peer)";
        return Ok(("refused at TLS (502)".into(), rule.into(), ok));
    }

    // The rule as the receiving gateway logged it, or else the policy engine's explain.
    let (decision, rule, source) =
        match logged.and_then(|r| Some((r.get("decision")?, r.get("rule")?))) {
            Some((decision, rule)) => (
                decision.to_owned(),
                (rule != "-").then(|| rule.to_owned()),
                "",
            ),
            None => {
                let from = SpiffeId::parse(call.from_id)?;
                let d = policies.evaluate(&Request::http(&from, &to.id, call.method, call.path));
                let decision = match (d.effect, d.dry_run) {
                    (Effect::Deny, _) => "deny",
                    (Effect::Allow, true) => "dry_run",
                    (Effect::Allow, false) => "allow",
                };
                (
                    decision.to_owned(),
                    d.rule_name().map(str::to_owned),
                    " [explain]",
                )
            }
        };
    let rule_text = match &rule {
        Some(name) => format!("\"{name}\" ({}){source}", rule_file(policies, name)),
        None => format!("no rule matched: default deny{source}"),
    };
    let result = match (answer.status, decision.as_str()) {
        (200, "dry_run") => "allowed (200, dry-run)".to_owned(),
        (200, _) => "allowed (200)".to_owned(),
        (403, _) => "denied (403)".to_owned(),
        (status, _) => format!("HTTP {status}"),
    };
    let body = String::from_utf8_lossy(&answer.body);
    // The service saw the caller's identity, put there by its own gateway.
    let delivered = serde_json::from_slice::<serde_json::Value>(&answer.body)
        .ok()
        .is_some_and(|v| {
            let field = |k: &str| v.get(k).and_then(serde_json::Value::as_str);
            field("service") == Some(to.name)
                && field("xfcc").is_some_and(|x| x.ends_with(&format!(";URI={}", call.from_id)))
        });
    let ok = match call.expect {
        Expect::Allow(want) => {
            answer.status == 200
                && decision == "allow"
                && rule.as_deref() == Some(want)
                && delivered
        }
        Expect::DryRun(want) => {
            answer.status == 200 && decision == "dry_run" && rule.as_deref() == want && delivered
        }
        // A denial names no rule to the caller.
        Expect::Deny(want) => {
            answer.status == 403 && rule.as_deref() == Some(want) && !body.contains(want)
        }
        Expect::TlsRefused(_) | Expect::WrongPeer => false,
    };
    Ok((result, rule_text, ok))
}

fn expected(e: Expect) -> String {
    match e {
        Expect::Allow(rule) => format!("expected allowed by \"{rule}\""),
        Expect::DryRun(Some(rule)) => format!("expected dry-run by \"{rule}\""),
        Expect::DryRun(None) => "expected let through by dry-run, no rule matching".into(),
        Expect::Deny(rule) => format!("expected denied by \"{rule}\""),
        Expect::TlsRefused(reason) => format!("expected refused at TLS ({reason})"),
        Expect::WrongPeer => "expected the caller's gateway to refuse the server".into(),
    }
}

fn none_if_empty(s: &str) -> &str {
    if s.is_empty() {
        "no gateway counted it"
    } else {
        s
    }
}

fn service(bank: &Bank, s: Svc) -> &Service {
    match s {
        Svc::Shop => &bank.shop,
        Svc::Payments => &bank.payments,
        Svc::Ledger => &bank.ledger,
    }
}

fn compile_policies() -> anyhow::Result<PolicySet> {
    let files = POLICIES
        .iter()
        .map(|(name, text)| PolicyFile::parse(name, text))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("example policies: {e}"))?;
    PolicySet::compile(files).map_err(|e| anyhow::anyhow!("example policies: {e}"))
}

/// The file that holds the rule named `name`.
fn rule_file<'a>(policies: &'a PolicySet, name: &str) -> &'a str {
    policies
        .rules()
        .iter()
        .find(|r| r.name() == name)
        .map_or("?", |r| r.file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_call_names_a_known_rule() {
        let policies = compile_policies().unwrap();
        for call in &CALLS {
            let rule = match call.expect {
                Expect::Allow(r) | Expect::Deny(r) | Expect::DryRun(Some(r)) => r,
                _ => continue,
            };
            assert_ne!(rule_file(&policies, rule), "?", "{rule}");
        }
    }
}
