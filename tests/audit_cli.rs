//! `meshgate audit export --format ocsf` as a user runs it: a CA's real audit log (written by
//! `ca init`, `ca token create|revoke`, `ca revoke`, `ca rotate prepare`) merged with a
//! gateway's log, exported to OCSF 1.8 and read back: one event per record, tied to its record
//! by hash, counted per class in the manifest, and valid against the OCSF schema in
//! `../shared/ocsf-schema-1.8.0` when it is there.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // test code

// The audit crate's schema checker, shared rather than copied.
#[path = "../audit/tests/ocsf_support/schema.rs"]
#[allow(dead_code)]
mod schema;

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::process::{Command, Output};

use meshgate_audit::{Action, AuditEvent, AuditWriter, Component, Outcome, read_records};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_meshgate");
const WEB: &str = "spiffe://bank.example/ns/shop/sa/web";
const API: &str = "spiffe://bank.example/ns/shop/sa/api";

#[test]
fn a_real_log_exports_to_ocsf_with_counts_in_the_manifest() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = tmp.path().join("ca");
    let ca_log = ca.join("audit.jsonl");
    let gw_log = tmp.path().join("gw.jsonl");
    ca_log_by_the_cli(&ca);
    gateway_log(&gw_log);

    let out = tmp.path().join("period.ocsf.jsonl");
    let o = meshgate(&[
        "audit",
        "export",
        "--log",
        s(&ca_log),
        "--log",
        s(&gw_log),
        "--format",
        "ocsf",
        "--out",
        s(&out),
    ]);
    assert_ok(&o);
    let text = fs::read_to_string(&out).unwrap();
    let events: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();

    // One event per record, each naming its record by hash and its log by name.
    let mut hashes: BTreeMap<String, String> = BTreeMap::new();
    for log in [&ca_log, &gw_log] {
        for r in read_records(log).unwrap() {
            hashes.insert(r.unwrap().hash.to_hex(), s(log).to_owned());
        }
    }
    assert_eq!(events.len(), hashes.len());
    let mut per_class: BTreeMap<u64, u64> = BTreeMap::new();
    for e in &events {
        let hash = e["unmapped"]["hash"].as_str().unwrap();
        assert_eq!(e["metadata"]["uid"], hash);
        assert_eq!(e["metadata"]["log_source"], hashes[hash].as_str());
        assert_eq!(e["metadata"]["version"], "1.8.0");
        let class = e["class_uid"].as_u64().unwrap();
        assert_eq!(
            e["type_uid"],
            class * 100 + e["activity_id"].as_u64().unwrap()
        );
        *per_class.entry(class).or_default() += 1;
    }
    let codes: Vec<&str> = events
        .iter()
        .map(|e| e["metadata"]["event_code"].as_str().unwrap())
        .collect();
    for code in [
        "ca_init",
        "token_create",
        "token_revoke",
        "svid_revoke",
        "rotate_prepare",
    ] {
        assert!(codes.contains(&code), "{code} missing from {codes:?}");
    }
    let revoke = events
        .iter()
        .find(|e| e["metadata"]["event_code"] == "svid_revoke")
        .unwrap();
    assert_eq!(revoke["class_uid"], 6003);
    assert_eq!(revoke["activity_id"], 3);
    assert_eq!(
        revoke["actor"]["user"]["type_id"], 2,
        "an operator is an admin"
    );
    assert_eq!(revoke["status_detail"], "key compromise");
    let deny = events
        .iter()
        .find(|e| e["metadata"]["event_code"] == "request_deny")
        .unwrap();
    assert_eq!(deny["class_uid"], 4002);
    assert_eq!(deny["metadata"]["profiles"][0], "security_control");
    assert_eq!(deny["action_id"], 2);

    let manifest: Value =
        serde_json::from_str(&fs::read_to_string(format!("{}.manifest.json", s(&out))).unwrap())
            .unwrap();
    assert_eq!(manifest["format"], "ocsf");
    assert_eq!(manifest["exported"]["records"], events.len());
    let counted: BTreeMap<u64, u64> = manifest["ocsf"]["classes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["events"] != 0)
        .map(|c| {
            (
                c["class_uid"].as_u64().unwrap(),
                c["events"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(counted, per_class);
    assert_eq!(
        per_class.keys().copied().collect::<Vec<_>>(),
        [3002, 4002, 6003, 6008]
    );

    match schema::locate() {
        Ok(dir) => {
            let schema = schema::Schema::load(&dir);
            for e in &events {
                assert_eq!(schema.check(e), Vec::<String>::new(), "{e}");
            }
        }
        Err(looked) => eprintln!(
            "SKIPPED the schema check: OCSF schema not found at {looked:?} (set MESHGATE_OCSF_SCHEMA)"
        ),
    }

    // Without --out the same events go to stdout.
    let o = meshgate(&[
        "audit",
        "export",
        "--log",
        s(&ca_log),
        "--log",
        s(&gw_log),
        "--format",
        "ocsf",
    ]);
    assert_ok(&o);
    assert_eq!(String::from_utf8(o.stdout).unwrap(), text);
}

#[test]
fn an_unknown_format_names_the_accepted_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("gw.jsonl");
    gateway_log(&log);
    let o = meshgate(&["audit", "export", "--log", s(&log), "--format", "xml"]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("accepted: jsonl, csv, ocsf"), "{err}");
}

/// A CA's audit log, written by the CLI commands an operator runs.
fn ca_log_by_the_cli(ca: &Path) {
    let dir = s(ca);
    assert_ok(&meshgate(&[
        "ca",
        "init",
        "--dir",
        dir,
        "--trust-domain",
        "bank.example",
    ]));
    assert_ok(&meshgate(&[
        "ca",
        "token",
        "create",
        "--dir",
        dir,
        "--spiffe-id",
        WEB,
    ]));
    assert_ok(&meshgate(&[
        "ca", "token", "revoke", "--dir", dir, "--id", "1",
    ]));
    let svid = ca.parent().unwrap().join("svid");
    assert_ok(&meshgate(&[
        "ca",
        "issue",
        "--dir",
        dir,
        "--spiffe-id",
        WEB,
        "--out",
        s(&svid),
    ]));
    assert_ok(&meshgate(&[
        "ca",
        "revoke",
        "--dir",
        dir,
        "--spiffe-id",
        WEB,
        "--reason",
        "key compromise",
    ]));
    assert_ok(&meshgate(&["ca", "rotate", "prepare", "--dir", dir]));
}

/// A gateway's log as its audit sink writes it: a denial, a dry run's would-be denial, a peer
/// refused at the handshake, and a gap.
fn gateway_log(path: &Path) {
    let (mut writer, _) = AuditWriter::open(path, Component::Gateway).unwrap();
    let request = |action, outcome, decision: &str, status: u16| {
        AuditEvent::new(
            Component::Gateway,
            WEB,
            action,
            format!("{API} GET /admin"),
            outcome,
        )
        .with_reason(decision)
        .with_source("127.0.0.1:50123")
        .with_trust_domain("bank.example")
        .with_detail("direction", "inbound")
        .with_detail("decision", decision)
        .with_detail("status", status)
    };
    let events = [
        request(Action::RequestDeny, Outcome::Denied, "deny", 403),
        request(Action::RequestAllow, Outcome::Success, "dry_run", 200),
        AuditEvent::new(
            Component::Gateway,
            "anonymous",
            Action::PeerReject,
            API,
            Outcome::Denied,
        )
        .with_reason("no_certificate")
        .with_source("127.0.0.1:50124")
        .with_detail("direction", "inbound"),
        AuditEvent::new(
            Component::Gateway,
            "system",
            Action::Gap,
            s(path),
            Outcome::Failure,
        )
        .with_reason("the audit queue was full; these events were not written")
        .with_detail("count", 3),
    ];
    for e in &events {
        writer.append(e).unwrap();
    }
    writer.sync().unwrap();
}

fn meshgate(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().expect("run meshgate")
}

#[track_caller]
fn assert_ok(o: &Output) {
    assert!(
        o.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}
