//! `meshgate audit verify` as an auditor runs it: a CA log signed with the CA's own SVID (every
//! key type) and rotated, verified with the bundle alone; damage and forged checkpoints exit 1
//! with the seq and kind; an unusable bundle exits 2.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // test code

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;

use meshgate_audit::{
    Action, AuditEvent, AuditWriter, CheckpointPolicy, Component, LogOptions, Outcome, Rotation,
    SystemClock,
};
use meshgate_ca::authority::Authority;
use meshgate_ca::keys::KeyType;
use meshgate_identity::TrustDomain;
use meshgate_identity::tls::{Credentials, certified_key};
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use time::OffsetDateTime;

const BIN: &str = env!("CARGO_BIN_EXE_meshgate");
const CA_ID: &str = "spiffe://bank.example/meshgate/ca";

fn meshgate(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().expect("run meshgate")
}

fn out(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A CA (`key_type`) in a temp dir, its roots in `bundle.pem`, and a rotated audit log signed
/// with the CA's own SVID: returns the temp dir, the log's files in chain order, the bundle.
fn signed_log(key_type: KeyType) -> (tempfile::TempDir, Vec<PathBuf>, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ca");
    let now = OffsetDateTime::now_utc();
    Authority::init(
        &dir,
        TrustDomain::parse("bank.example").unwrap(),
        key_type,
        now,
    )
    .unwrap();
    let mut ca = Authority::open(&dir).unwrap();
    let (own, key) = ca.own_svid(now).unwrap();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let creds = Arc::new(Credentials::new(certified_key(own.chain, key).unwrap()));
    let bundle = tmp.path().join("bundle.pem");
    std::fs::write(&bundle, ca.bundle().unwrap().to_pem()).unwrap();

    let log = tmp.path().join("audit.jsonl");
    let options = LogOptions::new()
        .signed(creds, CheckpointPolicy::new(4, Duration::from_secs(60)))
        .rotation(Rotation {
            max_bytes: Some(8000),
            max_age: None,
        });
    let (mut writer, _) =
        AuditWriter::open_with(&log, Component::Ca, SystemClock, options).unwrap();
    for i in 0..20 {
        let event = AuditEvent::new(
            Component::Ca,
            "operator:alice",
            Action::TokenCreate,
            format!("spiffe://bank.example/ns/app/sa/s{i}"),
            Outcome::Success,
        )
        .with_trust_domain("bank.example");
        writer.append(&event).unwrap();
    }
    writer.close().unwrap();
    let mut files: Vec<PathBuf> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("audit.jsonl")
        })
        .collect();
    files.sort();
    // Chain order: the rotated files by seq, then the active file.
    let files = meshgate_audit::group_files(&files).remove(0).files;
    assert!(files.len() >= 2, "the log should have rotated: {files:?}");
    (tmp, files, bundle)
}

fn args<'a>(files: &'a [PathBuf], extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["audit", "verify"];
    args.extend_from_slice(extra);
    args.extend(files.iter().map(|p| p.to_str().unwrap()));
    args
}

#[test]
fn a_signed_rotated_log_verifies_with_the_bundle_for_every_key_type() {
    for key_type in KeyType::ALL {
        let (_tmp, files, bundle) = signed_log(key_type);
        // Given in any order, a log's files are checked in chain order.
        let mut shuffled = files.clone();
        shuffled.reverse();
        let o = meshgate(&args(&shuffled, &["--bundle", bundle.to_str().unwrap()]));
        assert_eq!(o.status.code(), Some(0), "{key_type:?}: {}", out(&o));
        let text = String::from_utf8_lossy(&o.stdout);
        assert!(
            text.contains(&format!("({} files): ok", files.len())),
            "{key_type:?}: {text}"
        );
        assert!(text.contains(&format!("signed by {CA_ID}")), "{text}");
        assert!(
            text.contains("0 records after it are not signed yet"),
            "{text}"
        );
    }
}

#[test]
fn without_a_bundle_the_output_says_signatures_were_not_checked() {
    let (_tmp, files, _) = signed_log(KeyType::EcdsaP256);
    let o = meshgate(&args(&files, &[]));
    assert_eq!(o.status.code(), Some(0), "{}", out(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("signatures not checked (no --bundle)"),
        "{}",
        out(&o)
    );
}

#[test]
fn another_cas_bundle_makes_the_first_checkpoint_forged() {
    let (_tmp, files, _) = signed_log(KeyType::EcdsaP256);
    let (_other_tmp, _, other_bundle) = signed_log(KeyType::EcdsaP256);
    let o = meshgate(&args(&files, &["--bundle", other_bundle.to_str().unwrap()]));
    assert_eq!(o.status.code(), Some(1), "{}", out(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("seq 1 (line 1): forged_checkpoint"), "{text}");
    assert!(text.contains("certificate chain does not verify"), "{text}");
}

#[test]
fn an_edited_record_and_a_missing_file_are_named() {
    let (_tmp, files, bundle) = signed_log(KeyType::EcdsaP256);
    let bundle = bundle.to_str().unwrap();
    let missing: Vec<PathBuf> = [files[0].clone()]
        .into_iter()
        .chain(files[2..].iter().cloned())
        .collect();
    if files.len() > 2 {
        let o = meshgate(&args(&missing, &["--bundle", bundle]));
        assert_eq!(o.status.code(), Some(1), "{}", out(&o));
        assert!(
            String::from_utf8_lossy(&o.stdout).contains(": deleted"),
            "{}",
            out(&o)
        );
    }
    edit(&files[0], 2, "s0\"", "s9\"");
    let o = meshgate(&args(&files, &["--bundle", bundle]));
    assert_eq!(o.status.code(), Some(1), "{}", out(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains(&format!("{}: seq 2 (line 2): edited", files[0].display())),
        "{text}"
    );
}

#[test]
fn an_unusable_bundle_is_bad_input() {
    let (tmp, files, _) = signed_log(KeyType::EcdsaP256);
    let junk = tmp.path().join("junk.pem");
    std::fs::write(&junk, "not a certificate").unwrap();
    for bundle in [junk.to_str().unwrap(), "/nonexistent/bundle.pem"] {
        let o = meshgate(&args(&files, &["--bundle", bundle]));
        assert_eq!(o.status.code(), Some(2), "{}", out(&o));
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("--bundle"),
            "{}",
            out(&o)
        );
    }
}

/// Replaces `from` by `to` in line `line` (1-based) of `path`.
fn edit(path: &Path, line: usize, from: &str, to: &str) {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    assert!(lines[line - 1].contains(from), "{}", lines[line - 1]);
    lines[line - 1] = lines[line - 1].replace(from, to);
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

/// The auditor's script in `scripts/` checks the same checkpoints with Python's `cryptography`
/// (an independent X.509 verifier and ECDSA/Ed25519 implementation), and refuses a bad one.
#[test]
fn an_independent_verifier_accepts_every_checkpoint_and_refuses_a_forged_one() {
    // scripts/test.sh points MESHGATE_PYTHON at a virtualenv with `cryptography` (via py-spiffe).
    let python = std::env::var("MESHGATE_PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/audit_checkpoints.py");
    let run = |bundle: &Path, files: &[PathBuf]| {
        Command::new(&python)
            .arg(script)
            .arg(bundle)
            .args(files)
            .output()
            .unwrap_or_else(|e| {
                panic!("cannot run {python}: {e}; run the tests through scripts/test.sh")
            })
    };
    for key_type in KeyType::ALL {
        let (_tmp, files, bundle) = signed_log(key_type);
        let o = run(&bundle, &files);
        assert_eq!(o.status.code(), Some(0), "{key_type:?}: {}", out(&o));
        let text = String::from_utf8_lossy(&o.stdout);
        assert!(
            text.contains(&format!("checkpoint signed by {CA_ID}: ok")),
            "{text}"
        );

        let text = std::fs::read_to_string(&files[0]).unwrap();
        let at = text.find("\"signature\":\"").unwrap() + 13;
        let flipped = if &text[at..=at] == "A" { "B" } else { "A" };
        let mut forged = text.clone();
        forged.replace_range(at..=at, flipped);
        std::fs::write(&files[0], forged).unwrap();
        let o = run(&bundle, &files);
        assert_eq!(o.status.code(), Some(1), "{key_type:?}: {}", out(&o));
        assert!(
            String::from_utf8_lossy(&o.stdout).contains("forged checkpoint"),
            "{}",
            out(&o)
        );
    }
}

#[test]
fn the_auditor_pins_the_expected_signer() {
    let (_tmp, files, bundle) = signed_log(KeyType::EcdsaP256);
    let bundle = bundle.to_str().unwrap();
    let o = meshgate(&args(&files, &["--bundle", bundle, "--signer", CA_ID]));
    assert_eq!(o.status.code(), Some(0), "{}", out(&o));
    let o = meshgate(&args(
        &files,
        &[
            "--bundle",
            bundle,
            "--expect-signer",
            "spiffe://bank.example/ns/app/sa/web",
        ],
    ));
    assert_eq!(o.status.code(), Some(1), "{}", out(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("seq 1 (line 1): unexpected_signer"), "{text}");
    assert!(
        text.contains(&format!(
            "signed by {CA_ID}, not by spiffe://bank.example/ns/app/sa/web as expected"
        )),
        "{text}"
    );
    // Pinning a signer means nothing without checking signatures; a signer must be an ID.
    let o = meshgate(&args(&files, &["--signer", CA_ID]));
    assert_eq!(o.status.code(), Some(2), "{}", out(&o));
    let o = meshgate(&args(&files, &["--bundle", bundle, "--signer", "ca"]));
    assert_eq!(o.status.code(), Some(2), "{}", out(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("--signer"),
        "{}",
        out(&o)
    );
}
