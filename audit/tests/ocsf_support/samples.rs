//! Audit events as meshgate writes them, every action with every outcome, to export as OCSF;
//! and the way to list every variant of an enum from its serde names.

use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering};

use meshgate_audit::{
    Action, AuditEvent, AuditWriter, Component, ExportFormat, ExportOptions, Outcome, export,
};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use time::{Duration, OffsetDateTime};

pub const TD: &str = "bank.example";
pub const GATEWAY: &str = "spiffe://bank.example/ns/shop/sa/api";
pub const PEER: &str = "spiffe://bank.example/ns/shop/sa/web";

/// The events a log may hold for `action` and `outcome`: as the components write them, then
/// bare (no source, reason or details), then odd (values of the wrong kind, unparsable text).
pub fn shapes(action: Action, outcome: Outcome) -> Vec<AuditEvent> {
    let mut out: Vec<AuditEvent> = typical(action)
        .into_iter()
        .map(|mut e| {
            e.outcome = outcome;
            e
        })
        .collect();
    out.push(AuditEvent::new(
        Component::Ca,
        "anonymous",
        action,
        "",
        outcome,
    ));
    out.push(
        AuditEvent::new(
            Component::Gateway,
            "operator:",
            action,
            "spiffe://x GET",
            outcome,
        )
        .with_source("not an address")
        .with_request_id("req-1")
        .with_reason("")
        .with_detail("status", "abc")
        .with_detail("decision", 5)
        .with_detail("count", "many")
        .with_detail("serial", json!({"a": 1}))
        .with_detail("token_id", Value::Null)
        .with_detail("direction", "outbound")
        .with_detail("rule", 7),
    );
    out
}

/// `action` as meshgate writes it (docs/audit.md's catalog), with its usual outcome; an action
/// this list does not know yet still gets a plain event.
pub fn typical(action: Action) -> Vec<AuditEvent> {
    let outcome = match action {
        Action::TokenReject
        | Action::RenewReject
        | Action::PeerReject
        | Action::RequestDeny
        | Action::ConnectionDeny => Outcome::Denied,
        Action::Gap => Outcome::Failure,
        _ => Outcome::Success,
    };
    let ev = |component, actor: &str, subject: &str| {
        AuditEvent::new(component, actor, action, subject, outcome).with_trust_domain(TD)
    };
    let root = "9f2c55e1".repeat(8);
    match action {
        Action::CaInit => vec![
            ev(Component::Cli, "operator:alice", "spiffe://bank.example")
                .with_detail("root_sha256", root)
                .with_detail("key_type", "ecdsa-p256"),
        ],
        Action::TokenCreate => vec![
            ev(Component::Cli, "operator:alice", PEER)
                .with_detail("token_id", 7)
                .with_detail("uses", 1)
                .with_detail("expires_at", 1_795_790_000),
        ],
        Action::TokenUse => vec![
            ev(Component::Ca, "anonymous", PEER)
                .with_source("10.0.0.7:51234")
                .with_detail("token_id", 7)
                .with_detail("uses_left", 0),
        ],
        Action::TokenReject => vec![
            ev(Component::Ca, "anonymous", "token")
                .with_source("10.0.0.7:51234")
                .with_reason("unknown_token"),
        ],
        Action::TokenRevoke => {
            vec![ev(Component::Cli, "operator:alice", "token").with_detail("token_id", 7)]
        }
        Action::SvidIssue => vec![
            ev(Component::Ca, PEER, PEER)
                .with_source("10.0.0.7:51234")
                .with_detail("serial", "0a1b2c3d")
                .with_detail("not_after", 1_795_792_882)
                .with_detail("token_id", 7),
        ],
        Action::SvidRenew => vec![
            ev(Component::Ca, PEER, PEER)
                .with_source("[2001:db8::7]:51234")
                .with_detail("serial", "0a1b2c3e")
                .with_detail("not_after", 1_795_792_882),
        ],
        Action::SvidRevoke => vec![
            ev(Component::Cli, "operator:alice", PEER)
                .with_detail("serial", "0a1b2c3d")
                .with_reason("key compromise"),
        ],
        Action::RenewReject => vec![
            ev(Component::Ca, PEER, PEER)
                .with_source("10.0.0.7:51234")
                .with_reason("revoked")
                .with_detail("serial", "0a1b2c3d"),
        ],
        Action::RotatePrepare | Action::RotateActivate => {
            vec![ev(Component::Cli, "operator:alice", "root").with_detail("root_sha256", root)]
        }
        Action::RotateRetire => {
            vec![ev(Component::Cli, "operator:alice", "root").with_detail("forced", false)]
        }
        Action::IntermediateRenew => vec![ev(Component::Ca, "ca", "intermediate")],
        Action::LogRecovered => vec![
            ev(
                Component::Gateway,
                "system",
                "/var/lib/meshgate/audit.jsonl",
            )
            .with_reason("cut off a torn final line: final line truncated (no newline)")
            .with_detail("bytes_dropped", 211)
            .with_detail("last_good_seq", 41)
            .with_detail("damage", "truncated"),
        ],
        Action::Gap => vec![
            ev(
                Component::Gateway,
                "system",
                "/var/lib/meshgate/audit.jsonl",
            )
            .with_reason("the audit queue was full; these events were not written")
            .with_detail("count", 12),
        ],
        Action::RequestDeny => vec![
            request(action, "GET", "/admin", "deny", 403),
            request(action, "POST", "/pay", "rate_limited", 429),
            request(action, "BREW", "/pot with spaces", "invalid", 400),
        ],
        Action::RequestAllow => vec![
            request(action, "PATCH", "/cart", "allow", 200),
            request(action, "PROPFIND", "/dav", "dry_run", 207),
        ],
        Action::ConnectionDeny => vec![
            connection(action, "policy", Outcome::Denied),
            connection(action, "policy_reload", Outcome::Denied),
        ],
        Action::ConnectionAllow => vec![
            connection(action, "policy", Outcome::Success),
            connection(
                action,
                "dry_run: the policy would deny this connection",
                Outcome::Success,
            ),
        ],
        Action::Checkpoint => vec![
            ev(Component::Gateway, GATEWAY, "chain")
                .with_detail("version", 1)
                .with_detail("head_seq", 1000)
                .with_detail("head_hash", "ab".repeat(32))
                .with_detail("trigger", "records")
                .with_detail("every_records", 1000)
                .with_detail("every_seconds", 60)
                .with_detail("alg", "ecdsa_p256_sha256")
                .with_detail("signature", "MEUCIQ==")
                .with_detail("certs", vec!["MIIB", "MIIC"]),
        ],
        Action::PeerReject => vec![
            ev(Component::Gateway, "anonymous", GATEWAY)
                .with_source("[::1]:40000")
                .with_reason("no_certificate")
                .with_detail("direction", "inbound"),
            ev(Component::Gateway, PEER, &format!("route pay to {PEER}"))
                .with_source("payments.internal:9443")
                .with_reason("revoked")
                .with_detail("direction", "outbound"),
        ],
        Action::PolicyReload => vec![
            ev(Component::Gateway, GATEWAY, &format!("{GATEWAY} policy"))
                .with_reason("reloaded")
                .with_detail("trigger", "sighup")
                .with_detail("files", 2)
                .with_detail("errors", 0),
        ],
        _ => vec![ev(Component::Ca, "system", "unknown")],
    }
}

/// A TCP-mode gateway's connection record, as `gateway/src/audit.rs` writes it.
pub fn connection(action: Action, reason: &str, outcome: Outcome) -> AuditEvent {
    AuditEvent::new(
        Component::Gateway,
        PEER,
        action,
        format!("{GATEWAY} tcp"),
        outcome,
    )
    .with_reason(reason)
    .with_source("10.0.0.7:51234")
    .with_trust_domain(TD)
    .with_detail("direction", "inbound")
    .with_detail("decision", "deny")
    .with_detail("rule", "only ledger reaches the db")
}

/// A gateway's request record, as `gateway/src/audit.rs` writes it.
pub fn request(
    action: Action,
    method: &str,
    path: &str,
    decision: &str,
    status: u16,
) -> AuditEvent {
    let outcome = if action == Action::RequestAllow {
        Outcome::Success
    } else {
        Outcome::Denied
    };
    AuditEvent::new(
        Component::Gateway,
        PEER,
        action,
        format!("{GATEWAY} {method} {path}"),
        outcome,
    )
    .with_reason(decision)
    .with_source("10.0.0.7:51234")
    .with_request_id("3f2a9c")
    .with_trust_domain(TD)
    .with_detail("direction", "inbound")
    .with_detail("decision", decision)
    .with_detail("status", status)
    .with_detail("rule", "web-reads")
    .with_detail("file", "policies/api.toml")
}

/// Writes `events` to a log, one microsecond apart, and exports it as OCSF: the lines and the
/// manifest.
pub fn export_ocsf(events: &[AuditEvent]) -> (Vec<String>, Value) {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.jsonl");
    let start = OffsetDateTime::from_unix_timestamp(1_795_789_282).unwrap();
    let tick = AtomicI64::new(0);
    let clock = move || start + Duration::microseconds(tick.fetch_add(1, Ordering::Relaxed));
    let (mut writer, _) = AuditWriter::open_with_clock(&log, Component::Ca, clock).unwrap();
    for e in events {
        writer.append(e).unwrap();
    }
    writer.sync().unwrap();
    let mut out = Vec::new();
    let options = ExportOptions::new(ExportFormat::Ocsf);
    let report = export(&[&log], &options, &mut out, Path::new("out")).unwrap();
    let manifest = serde_json::from_str(&report.manifest("out").unwrap()).unwrap();
    let text = String::from_utf8(out).unwrap();
    (text.lines().map(str::to_owned).collect(), manifest)
}

/// Every variant of a unit enum, from its serde names: a deserializer that asks for an enum
/// hears the list of variant names, so nothing here needs updating when a variant is added.
pub fn variants<T: DeserializeOwned>() -> Vec<T> {
    let mut names = VariantNames(None);
    let _ = T::deserialize(&mut names);
    let names = names.0.expect("a unit enum");
    names
        .iter()
        .map(|name| serde_json::from_value(json!(name)).unwrap())
        .collect()
}

struct VariantNames(Option<&'static [&'static str]>);

#[derive(Debug)]
struct Stop;

impl std::fmt::Display for Stop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("only the variant names were wanted")
    }
}

impl std::error::Error for Stop {}

impl serde::de::Error for Stop {
    fn custom<M: std::fmt::Display>(_: M) -> Self {
        Self
    }
}

impl<'de> serde::Deserializer<'de> for &mut VariantNames {
    type Error = Stop;

    fn deserialize_any<V: serde::de::Visitor<'de>>(self, _: V) -> Result<V::Value, Stop> {
        Err(Stop)
    }

    fn deserialize_enum<V: serde::de::Visitor<'de>>(
        self,
        _name: &'static str,
        variants: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, Stop> {
        self.0 = Some(variants);
        Err(Stop)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map struct identifier
        ignored_any
    }
}
