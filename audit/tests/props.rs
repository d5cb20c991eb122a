#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // test code
//! Properties: any event text survives the round trip and the independent hash recipe, and any
//! one changed byte anywhere in a log is caught.

mod common;

use common::{fixed_time, recompute_chain, write_log};
use meshgate_audit::{
    Action, AuditEvent, AuditWriter, Component, Outcome, read_records, verify_file,
};
use proptest::prelude::*;

fn any_event() -> impl Strategy<Value = AuditEvent> {
    (
        any::<String>(),
        any::<String>(),
        proptest::option::of(any::<String>()),
        proptest::collection::btree_map(any::<String>(), any::<i64>(), 0..4),
        prop_oneof![
            Just(Outcome::Success),
            Just(Outcome::Failure),
            Just(Outcome::Denied)
        ],
    )
        .prop_map(|(actor, subject, reason, details, outcome)| {
            let mut event = AuditEvent::new(
                Component::Gateway,
                actor,
                Action::TokenUse,
                subject,
                outcome,
            );
            event.reason = reason;
            event.details = details.into_iter().map(|(k, v)| (k, v.into())).collect();
            event
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn any_event_text_round_trips_and_recomputes(events in proptest::collection::vec(any_event(), 1..8)) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let (mut writer, _) = AuditWriter::open_with_clock(&path, Component::Gateway, fixed_time).unwrap();
        for event in &events {
            writer.append(event).unwrap();
        }
        writer.sync().unwrap();
        drop(writer);
        let summary = verify_file(&path).unwrap();
        prop_assert_eq!(summary.last_seq, events.len() as u64);
        prop_assert_eq!(recompute_chain(&path), summary.head_hash.to_hex());
        let read: Vec<AuditEvent> = read_records(&path).unwrap().map(|r| r.unwrap().event).collect();
        prop_assert_eq!(read, events);
    }

    #[test]
    fn any_changed_byte_is_caught(at in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        write_log(&path, 4);
        let mut bytes = std::fs::read(&path).unwrap();
        let i = at.index(bytes.len());
        prop_assume!(bytes[i] != byte);
        bytes[i] = byte;
        std::fs::write(&path, &bytes).unwrap();
        prop_assert!(verify_file(&path).is_err());
    }
}
