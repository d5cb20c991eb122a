#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // test code
//! OCSF export: each record becomes one OCSF 1.8 event in the class and activity of the mapping
//! table (docs/audit.md), tied back to its record by `seq`, `prev` and `hash`, and counted per
//! class in the manifest.
//!
//! The schema tests check the events against the OCSF 1.8.0 schema itself, read from
//! `../shared/ocsf-schema-1.8.0` next to the repository (or `MESHGATE_OCSF_SCHEMA`; see
//! `ocsf_support::schema`): every action of the catalog with every outcome, as the components
//! write it and in odd shapes. Actions and outcomes are listed from the types themselves, so a
//! new action is checked without editing this file. Without the schema those two tests print
//! "SKIPPED: OCSF schema not found at ..." and return.

mod ocsf_support;

use std::collections::BTreeMap;
use std::path::Path;

use meshgate_audit::{
    Action, AuditEvent, AuditWriter, Component, ExportFormat, ExportOptions, OcsfClass, Outcome,
    export, read_records,
};
use ocsf_support::samples::{GATEWAY, PEER, export_ocsf, request, shapes, typical, variants};
use ocsf_support::schema;
use ring::digest;
use serde_json::{Value, json};
use time::{Duration, OffsetDateTime};

#[test]
fn every_action_with_every_outcome_is_a_valid_ocsf_event() {
    let Some(schema) = schema::load_or_skip() else {
        return;
    };
    let actions: Vec<Action> = variants();
    let outcomes: Vec<Outcome> = variants();
    assert!(
        actions.len() >= 19 && outcomes.len() == 3,
        "{actions:?} {outcomes:?}"
    );
    let mut events = Vec::new();
    for &action in &actions {
        for &outcome in &outcomes {
            events.extend(shapes(action, outcome));
        }
    }
    let (lines, manifest) = export_ocsf(&events);
    assert_eq!(lines.len(), events.len(), "one OCSF event per record");

    let mut problems = Vec::new();
    let mut per_class = BTreeMap::<u64, u64>::new();
    for (event, line) in events.iter().zip(&lines) {
        let ocsf: Value = serde_json::from_str(line).unwrap();
        *per_class
            .entry(ocsf["class_uid"].as_u64().unwrap())
            .or_default() += 1;
        for problem in schema.check(&ocsf) {
            problems.push(format!(
                "{:?}/{:?} (actor {:?}, subject {:?}): {problem}\n  {line}",
                event.action, event.outcome, event.actor, event.subject
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "{} problems:\n{}",
        problems.len(),
        problems.join("\n")
    );

    // Every class the export can write is a class of the schema, and was written and counted.
    let classes = manifest["ocsf"]["classes"].as_array().unwrap();
    assert_eq!(classes.len(), OcsfClass::ALL.len());
    for class in classes {
        let uid = class["class_uid"].as_u64().unwrap();
        assert!(schema.class_by_uid(uid).is_some(), "{uid}");
        assert_eq!(
            class["events"].as_u64(),
            per_class.get(&uid).copied(),
            "{uid}"
        );
    }
    eprintln!(
        "checked {} OCSF events ({} actions x {} outcomes, several shapes each) against the schema; per class {per_class:?}",
        lines.len(),
        actions.len(),
        outcomes.len()
    );
}

#[test]
fn the_schema_check_finds_what_is_wrong() {
    let Some(schema) = schema::load_or_skip() else {
        return;
    };
    let events = [
        request(Action::RequestDeny, "GET", "/admin", "deny", 403),
        AuditEvent::new(
            Component::Ca,
            "anonymous",
            Action::TokenReject,
            "token",
            Outcome::Denied,
        )
        .with_source("10.0.0.7:51234")
        .with_reason("unknown_token"),
    ];
    let (lines, _) = export_ocsf(&events);
    let http: Value = serde_json::from_str(&lines[0]).unwrap();
    let auth: Value = serde_json::from_str(&lines[1]).unwrap();
    assert_eq!(schema.check(&http), Vec::<String>::new());
    assert_eq!(schema.check(&auth), Vec::<String>::new());

    // (a valid event, what breaks it, words of the problem the check must name)
    let cases: &[(&Value, Mutation, &str)] = &[
        (
            &http,
            |e| drop(e["metadata"].as_object_mut().unwrap().remove("product")),
            "metadata.product: required",
        ),
        (
            &http,
            |e| e["severity_id"] = json!(42),
            "severity_id: 42 is not in its enum",
        ),
        (&http, |e| e["type_uid"] = json!(400204), "type_uid"),
        (&http, |e| e["category_uid"] = json!(6), "category_uid"),
        (
            &http,
            |e| e["shoe_size"] = json!(42),
            "shoe_size: not an attribute",
        ),
        (
            &http,
            |e| e["metadata"]["profiles"] = json!([]),
            "action_id: not an attribute",
        ),
        (
            &http,
            |e| e["metadata"]["profiles"] = json!(["security_control", "incident"]),
            "incident does not apply",
        ),
        (
            &http,
            |e| e["disposition_id"] = json!(77),
            "disposition_id: 77 is not in its enum",
        ),
        (
            &http,
            |e| e["activity_name"] = json!("Fetch"),
            "activity_name: \"Fetch\", expected the caption \"Get\"",
        ),
        (
            &http,
            |e| e["http_response"] = json!({}),
            "http_response.code: required",
        ),
        (
            &http,
            |e| e["http_request"]["http_method"] = json!("BREW"),
            "http_method: BREW is not in its enum",
        ),
        (
            &http,
            |e| e["src_endpoint"]["ip"] = json!("nowhere"),
            "is not an IP address",
        ),
        (
            &http,
            |e| e["src_endpoint"]["port"] = json!(70000),
            "outside 0..=65535",
        ),
        (
            &http,
            |e| e["time"] = json!("yesterday"),
            "time: \"yesterday\" is not a timestamp_t",
        ),
        (
            &http,
            |e| {
                let e = e.as_object_mut().unwrap();
                e.remove("http_request");
                e.remove("http_response");
            },
            "needs at_least_one",
        ),
        (
            &auth,
            |e| drop(e.as_object_mut().unwrap().remove("user")),
            "user: required by authentication",
        ),
        (
            &auth,
            |e| e["user"]["type_id"] = json!(7),
            "user.type_id: 7 is not in its enum",
        ),
        (
            &auth,
            |e| drop(e["user"].as_object_mut().unwrap().remove("type")),
            "",
        ),
        (
            &auth,
            |e| drop(e["auth_protocol"].take()),
            "auth_protocol: missing, but its id is 99",
        ),
        (
            &auth,
            |e| e["service"] = json!({"version": "1"}),
            "service: service needs at_least_one",
        ),
    ];
    for &(valid, mutate, expected) in cases {
        let mut event = valid.clone();
        mutate(&mut event);
        let problems = schema.check(&event);
        if expected.is_empty() {
            assert_eq!(
                problems,
                Vec::<String>::new(),
                "a recommended sibling may be left out"
            );
        } else {
            assert!(
                problems.iter().any(|p| p.contains(expected)),
                "expected a problem with {expected:?}, got {problems:#?}"
            );
        }
    }
}

/// The mapping table of docs/audit.md, row by row: (action, class_uid, activity_id).
#[test]
fn each_action_lands_in_the_class_and_activity_of_the_table() {
    let table: &[(Action, u64, u64)] = &[
        (Action::CaInit, 6003, 1),
        (Action::TokenCreate, 6003, 1),
        (Action::TokenUse, 3002, 1),
        (Action::TokenReject, 3002, 1),
        (Action::TokenRevoke, 6003, 3),
        (Action::SvidIssue, 6003, 1),
        (Action::SvidRenew, 6003, 1),
        (Action::SvidRevoke, 6003, 3),
        (Action::RenewReject, 3002, 1),
        (Action::RotatePrepare, 6003, 1),
        (Action::RotateActivate, 6003, 3),
        (Action::RotateRetire, 6003, 4),
        (Action::IntermediateRenew, 6003, 1),
        (Action::LogRecovered, 6008, 1),
        (Action::Gap, 6008, 1),
        (Action::RequestDeny, 4002, 3),
        (Action::RequestAllow, 4002, 9),
        (Action::ConnectionDeny, 4001, 5),
        (Action::ConnectionAllow, 4001, 1),
        (Action::Checkpoint, 0, 99),
        (Action::PeerReject, 3002, 1),
        (Action::PolicyReload, 6003, 3),
    ];
    for action in variants::<Action>() {
        assert!(
            table.iter().any(|(a, _, _)| *a == action),
            "{action:?} has no row in the mapping table (docs/audit.md and this test)"
        );
    }
    let events: Vec<AuditEvent> = table
        .iter()
        .map(|&(a, _, _)| typical(a).remove(0))
        .collect();
    let (lines, _) = export_ocsf(&events);
    for (&(action, class_uid, activity_id), line) in table.iter().zip(&lines) {
        let e: Value = serde_json::from_str(line).unwrap();
        let name = serde_json::to_value(action).unwrap();
        assert_eq!(e["metadata"]["event_code"], name, "{line}");
        assert_eq!(
            (e["class_uid"].as_u64(), e["activity_id"].as_u64()),
            (Some(class_uid), Some(activity_id)),
            "{action:?}: {line}"
        );
        assert_eq!(e["type_uid"], class_uid * 100 + activity_id, "{line}");
        assert_eq!(e["category_uid"], class_uid / 1000, "{line}");
        assert_eq!(e["metadata"]["version"], "1.8.0");
        assert_eq!(e["metadata"]["product"]["name"], "meshgate");
    }
}

#[test]
fn request_decisions_are_http_activity_with_the_security_control_profile() {
    // (decision, action, action_id, disposition_id, status_id)
    let cases = [
        ("allow", Action::RequestAllow, 1, 1, 1),
        ("dry_run", Action::RequestAllow, 1, 15, 1),
        ("deny", Action::RequestDeny, 2, 26, 2),
        ("rate_limited", Action::RequestDeny, 2, 2, 2),
        ("invalid", Action::RequestDeny, 2, 25, 2),
    ];
    let events: Vec<AuditEvent> = cases
        .iter()
        .map(|&(decision, action, ..)| request(action, "POST", "/pay", decision, 403))
        .collect();
    let (lines, _) = export_ocsf(&events);
    for (&(decision, _, action_id, disposition_id, status_id), line) in cases.iter().zip(&lines) {
        let e: Value = serde_json::from_str(line).unwrap();
        assert_eq!(e["metadata"]["profiles"], json!(["security_control"]));
        assert_eq!(
            (&e["action_id"], &e["disposition_id"], &e["status_id"]),
            (&json!(action_id), &json!(disposition_id), &json!(status_id)),
            "{decision}: {line}"
        );
        assert_eq!(e["activity_id"], 6, "POST");
        assert_eq!(e["http_request"]["http_method"], "POST");
        assert_eq!(e["http_request"]["url"]["path"], "/pay");
        assert_eq!(e["http_request"]["uid"], "3f2a9c");
        assert_eq!(e["metadata"]["correlation_uid"], "3f2a9c");
        assert_eq!(e["http_response"]["code"], 403);
        assert_eq!(e["src_endpoint"]["ip"], "10.0.0.7");
        assert_eq!(e["src_endpoint"]["port"], 51234);
        assert_eq!(e["src_endpoint"]["owner"]["uid"], PEER);
        assert_eq!(e["dst_endpoint"]["svc_name"], GATEWAY);
        assert_eq!(e["policy"]["name"], "web-reads");
        assert_eq!(e["unmapped"]["details"]["file"], "policies/api.toml");
    }
}

#[test]
fn authentication_names_who_tried_and_from_where() {
    let events: Vec<AuditEvent> = [Action::TokenUse, Action::PeerReject]
        .into_iter()
        .flat_map(typical)
        .collect();
    let (lines, _) = export_ocsf(&events);
    let e: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // token_use: the anonymous caller enrolls as the token's SPIFFE ID.
    assert_eq!(e[0]["user"]["uid"], PEER);
    assert_eq!(e[0]["user"]["type_id"], 4);
    assert_eq!(e[0]["auth_protocol"], "join token");
    assert_eq!(e[0]["service"]["name"], "meshgate ca");
    assert_eq!(e[0]["src_endpoint"]["ip"], "10.0.0.7");
    // peer_reject inbound: an anonymous client; outbound: the peer gateway we dialled.
    assert_eq!(e[1]["user"]["name"], "anonymous");
    assert_eq!(e[1]["status_id"], 2);
    assert_eq!(e[1]["status_detail"], "no_certificate");
    assert_eq!(e[1]["service"]["name"], GATEWAY);
    assert_eq!(e[1]["src_endpoint"]["ip"], "::1");
    assert_eq!(e[2]["user"]["uid"], PEER);
    assert_eq!(e[2]["dst_endpoint"]["hostname"], "payments.internal");
    assert_eq!(e[2]["dst_endpoint"]["port"], 9443);
    assert_eq!(e[2].get("src_endpoint"), None);
}

#[test]
fn every_event_ties_back_to_its_record_and_the_manifest_counts_classes() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.jsonl");
    let gw = dir.path().join("gw.jsonl");
    let t0 = OffsetDateTime::from_unix_timestamp(1_795_789_282).unwrap();
    let issues: Vec<AuditEvent> = (0..4).flat_map(|_| typical(Action::SvidIssue)).collect();
    write_spaced(&ca, t0, &issues);
    write_spaced(
        &gw,
        t0 + Duration::milliseconds(500),
        &typical(Action::RequestDeny),
    );
    let options = ExportOptions::new(ExportFormat::Ocsf).until(t0 + Duration::seconds(3));
    let mut out = Vec::new();
    let report = export(&[&ca, &gw], &options, &mut out, Path::new("out")).unwrap();

    let records: Vec<(String, meshgate_audit::Record)> = [&ca, &gw]
        .iter()
        .flat_map(|log| {
            read_records(log)
                .unwrap()
                .map(|r| (log.display().to_string(), r.unwrap()))
        })
        .filter(|(_, r)| r.time < t0 + Duration::seconds(3))
        .collect();
    let text = String::from_utf8(out.clone()).unwrap();
    let events: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events.len() as u64, report.exported);
    assert_eq!(
        events.len(),
        records.len(),
        "every record in the window, once"
    );
    let mut last_time = 0;
    for e in &events {
        let hash = e["unmapped"]["hash"].as_str().unwrap();
        let (log, record) = records
            .iter()
            .find(|(_, r)| r.hash.to_hex() == hash)
            .unwrap_or_else(|| panic!("no record with hash {hash}"));
        assert_eq!(e["metadata"]["uid"], hash);
        assert_eq!(e["unmapped"]["seq"], record.seq);
        assert_eq!(e["unmapped"]["prev"], record.prev.to_hex());
        assert_eq!(e["metadata"]["log_source"], log.as_str());
        let ms = i64::try_from(record.time.unix_timestamp_nanos() / 1_000_000).unwrap();
        assert_eq!(e["time"], ms);
        let time = e["time"].as_i64().unwrap();
        assert!(time >= last_time, "events in time order");
        last_time = time;
    }

    let manifest: Value = serde_json::from_str(&report.manifest("out").unwrap()).unwrap();
    assert_eq!(manifest["format"], "ocsf");
    assert_eq!(manifest["ocsf"]["version"], "1.8.0");
    assert_eq!(
        manifest["output_sha256"],
        hex::encode(digest::digest(&digest::SHA256, &out))
    );
    let counts: BTreeMap<u64, u64> = manifest["ocsf"]["classes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["class_uid"].as_u64().unwrap(),
                c["events"].as_u64().unwrap(),
            )
        })
        .collect();
    let expected: BTreeMap<u64, u64> = [
        (0, 0),
        (3002, 0),
        (4001, 0),
        (4002, 3),
        (6003, 3),
        (6008, 0),
    ]
    .into();
    assert_eq!(counts, expected);
    assert_eq!(counts.values().sum::<u64>(), report.exported);

    let (jsonl, _) = {
        let mut out = Vec::new();
        let options = ExportOptions::new(ExportFormat::Jsonl);
        let report = export(&[&ca], &options, &mut out, Path::new("out")).unwrap();
        (report, out)
    };
    let manifest: Value = serde_json::from_str(&jsonl.manifest("out").unwrap()).unwrap();
    assert_eq!(
        manifest.get("ocsf"),
        None,
        "only an OCSF export counts classes"
    );
}

/// A change to a valid event.
type Mutation = fn(&mut Value);

/// A log of `events`, one second apart from `start`.
fn write_spaced(path: &Path, start: OffsetDateTime, events: &[AuditEvent]) {
    let tick = std::sync::atomic::AtomicI64::new(0);
    let clock =
        move || start + Duration::seconds(tick.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    let (mut writer, _) = AuditWriter::open_with_clock(path, Component::Ca, clock).unwrap();
    for e in events {
        writer.append(e).unwrap();
    }
    writer.sync().unwrap();
}
