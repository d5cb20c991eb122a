//! The `meshgate` binary as a user runs it: CA init and issue, cross-checked by independent
//! verifiers (openssl, py-spiffe), and bad input answered with exit code 2 and a clear message.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // test code

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_meshgate");
const ID: &str = "spiffe://bank.example/ns/shop/sa/checkout";

fn meshgate(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().expect("run meshgate")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[track_caller]
fn assert_ok(o: &Output) {
    assert!(
        o.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        stdout(o),
        stderr(o)
    );
}

#[track_caller]
fn assert_exit(o: &Output, code: i32, stderr_has: &str) {
    assert_eq!(
        o.status.code(),
        Some(code),
        "stdout: {}\nstderr: {}",
        stdout(o),
        stderr(o)
    );
    let err = stderr(o);
    assert!(
        err.contains(stderr_has),
        "stderr should contain {stderr_has:?}: {err}"
    );
    assert!(!err.contains("panicked"), "panic: {err}");
}

/// `ca init` then `ca issue` into a temp dir; returns (tempdir, ca dir, out dir).
fn ca_with_svid() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let ca = tmp.path().join("ca");
    let out = tmp.path().join("out");
    assert_ok(&meshgate(&[
        "ca",
        "init",
        "--dir",
        s(&ca),
        "--trust-domain",
        "bank.example",
    ]));
    assert_ok(&meshgate(&[
        "ca",
        "issue",
        "--dir",
        s(&ca),
        "--spiffe-id",
        ID,
        "--out",
        s(&out),
    ]));
    (tmp, ca, out)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn mode(p: &Path) -> u32 {
    fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// Splits a PEM chain into its blocks.
fn pem_blocks(pem: &str) -> Vec<String> {
    pem.split_inclusive("-----END CERTIFICATE-----\n")
        .filter(|b| b.contains("BEGIN"))
        .map(str::to_owned)
        .collect()
}

#[test]
fn init_prints_fingerprint_and_keeps_keys_private() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = tmp.path().join("ca");
    let o = meshgate(&[
        "ca",
        "init",
        "--dir",
        s(&ca),
        "--trust-domain",
        "Bank.Example",
    ]);
    assert_ok(&o);
    let out = stdout(&o);
    assert!(out.contains("trust domain bank.example"), "{out}");
    let fp = out
        .lines()
        .find_map(|l| l.strip_prefix("root SHA-256 fingerprint: "))
        .unwrap();
    assert_eq!(fp.len(), 64);
    // The fingerprint is the SHA-256 of the root in the bundle, as openssl computes it.
    let bundle = meshgate(&["ca", "bundle", "--dir", s(&ca)]);
    assert_ok(&bundle);
    let bundle_file = tmp.path().join("bundle.pem");
    fs::write(&bundle_file, stdout(&bundle)).unwrap();
    let ossl = Command::new("openssl")
        .args([
            "x509",
            "-in",
            s(&bundle_file),
            "-noout",
            "-fingerprint",
            "-sha256",
        ])
        .output()
        .expect("openssl must be installed");
    let ossl_fp = stdout(&ossl)
        .trim()
        .rsplit('=')
        .next()
        .unwrap()
        .replace(':', "")
        .to_lowercase();
    assert_eq!(ossl_fp, fp);
    assert_eq!(mode(&ca), 0o700);
    assert_eq!(mode(&ca.join("ca.db")), 0o600);
    let keys: Vec<_> = fs::read_dir(ca.join("keys"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(keys.len(), 2);
    for k in keys {
        assert_eq!(mode(&k), 0o600, "{}", k.display());
    }
}

#[test]
fn issued_svid_passes_openssl_verify_with_intermediate_untrusted() {
    let (_tmp, _ca, out) = ca_with_svid();
    let chain = fs::read_to_string(out.join("svid.pem")).unwrap();
    let blocks = pem_blocks(&chain);
    assert_eq!(blocks.len(), 2, "svid.pem holds leaf then intermediate");
    let leaf = out.join("leaf.pem");
    let inter = out.join("intermediate.pem");
    fs::write(&leaf, &blocks[0]).unwrap();
    fs::write(&inter, &blocks[1]).unwrap();
    let o = Command::new("openssl")
        .args([
            "verify",
            "-x509_strict",
            "-CAfile",
            s(&out.join("bundle.pem")),
            "-untrusted",
            s(&inter),
            s(&leaf),
        ])
        .output()
        .expect("openssl must be installed");
    assert!(
        o.status.success(),
        "openssl verify: {}{}",
        stdout(&o),
        stderr(&o)
    );
    assert!(stdout(&o).contains(": OK"));
    // And openssl rejects it against a foreign bundle, so the check above can fail.
    let (_tmp2, _ca2, out2) = ca_with_svid();
    let o = Command::new("openssl")
        .args([
            "verify",
            "-CAfile",
            s(&out2.join("bundle.pem")),
            "-untrusted",
            s(&inter),
            s(&leaf),
        ])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert_eq!(mode(&out.join("key.pem")), 0o600);
    assert!(
        fs::read_to_string(out.join("key.pem"))
            .unwrap()
            .starts_with("-----BEGIN PRIVATE KEY-----")
    );
}

#[test]
fn issued_svid_loads_in_py_spiffe() {
    let (_tmp, _ca, out) = ca_with_svid();
    // scripts/test.sh points MESHGATE_PYTHON at a virtualenv with py-spiffe installed.
    let python = std::env::var("MESHGATE_PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let script = "import sys\n\
        from spiffe import X509Svid\n\
        from cryptography.hazmat.primitives.serialization import Encoding\n\
        s = X509Svid.load(sys.argv[1], sys.argv[2], Encoding.PEM)\n\
        print(s.spiffe_id, len(s.cert_chain))\n";
    let o = Command::new(&python)
        .args([
            "-c",
            script,
            s(&out.join("svid.pem")),
            s(&out.join("key.pem")),
        ])
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run {python}: {e}; run the tests through scripts/test.sh")
        });
    assert!(
        o.status.success(),
        "py-spiffe rejected the SVID (is py-spiffe installed? run scripts/test.sh): {}",
        stderr(&o)
    );
    assert_eq!(stdout(&o).trim(), format!("{ID} 2"));
}

#[test]
fn inspect_reports_id_and_verdict_and_list_shows_the_serial() {
    let (_tmp, ca, out) = ca_with_svid();
    let o = meshgate(&[
        "svid",
        "inspect",
        s(&out.join("svid.pem")),
        "--bundle",
        s(&out.join("bundle.pem")),
        "--json",
    ]);
    assert_ok(&o);
    let report: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(report["spiffe_id"], ID);
    assert_eq!(report["valid"], true);
    assert_eq!(report["chain_checked"], true);
    let serial = report["serial"].as_str().unwrap().to_owned();

    let list = meshgate(&["ca", "list", "--dir", s(&ca), "--json"]);
    assert_ok(&list);
    let list: serde_json::Value = serde_json::from_str(&stdout(&list)).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["serial"], serial.as_str());
    assert_eq!(list[0]["spiffe_id"], ID);
    assert_eq!(list[0]["sha256"], report["sha256"]);

    // Against another CA's bundle the verdict is invalid, exit 1, naming the chain rule.
    let (_tmp2, _ca2, out2) = ca_with_svid();
    let o = meshgate(&[
        "svid",
        "inspect",
        s(&out.join("svid.pem")),
        "--bundle",
        s(&out2.join("bundle.pem")),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stdout(&o).contains("INVALID, rule chain"), "{}", stdout(&o));
}

#[test]
fn bundle_in_spiffe_format_follows_the_bundle_spec() {
    let (_tmp, ca, _out) = ca_with_svid();
    let o = meshgate(&["ca", "bundle", "--dir", s(&ca), "--format", "spiffe"]);
    assert_ok(&o);
    let doc: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let keys = doc["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0]["use"], "x509-svid");
    assert_eq!(keys[0]["kty"], "EC");
    assert_eq!(keys[0]["crv"], "P-256");
    assert_eq!(keys[0]["x5c"].as_array().unwrap().len(), 1);
    assert!(keys[0].get("kid").is_none());
    assert_eq!(doc["spiffe_sequence"], 1);
    assert_eq!(doc["spiffe_refresh_hint"], 300);
}

#[test]
fn invalid_spiffe_id_exits_2_naming_the_rule() {
    let (_tmp, ca, out) = ca_with_svid();
    for (id, rule) in [
        ("spiffe://bank.example/a/", "trailing-slash"),
        ("spiffe://bank.example//a", "empty-segment"),
        ("spiffe://bank.example/a%20b", "percent-encoding"),
        ("spiffe://bank.example:8443/a", "port"),
        ("https://bank.example/a", "scheme"),
    ] {
        let o = meshgate(&[
            "ca",
            "issue",
            "--dir",
            s(&ca),
            "--spiffe-id",
            id,
            "--out",
            s(&out),
        ]);
        assert_exit(&o, 2, rule);
    }
    // A valid ID outside the CA's trust domain, and a workload ID without a path.
    let o = meshgate(&[
        "ca",
        "issue",
        "--dir",
        s(&ca),
        "--spiffe-id",
        "spiffe://other.example/a",
        "--out",
        s(&out),
    ]);
    assert_exit(&o, 2, "only inside its own trust domain");
    let o = meshgate(&[
        "ca",
        "issue",
        "--dir",
        s(&ca),
        "--spiffe-id",
        "spiffe://bank.example",
        "--out",
        s(&out),
    ]);
    assert_exit(&o, 2, "non-empty path");
    let o = meshgate(&[
        "ca",
        "issue",
        "--dir",
        s(&ca),
        "--spiffe-id",
        ID,
        "--ttl",
        "48h",
        "--out",
        s(&out),
    ]);
    assert_exit(&o, 2, "TTL 2d is out of range");
    // The server's SVID lifetime has the same bounds, checked before anything listens.
    let o = meshgate(&[
        "ca",
        "serve",
        "--dir",
        s(&ca),
        "--listen",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
        "--svid-ttl",
        "5s",
    ]);
    assert_exit(&o, 2, "TTL 5s is out of range; accepted: 10s to 1d");
    let o = meshgate(&[
        "ca",
        "issue",
        "--dir",
        s(&ca),
        "--spiffe-id",
        ID,
        "--ttl",
        "1 hour",
        "--out",
        s(&out),
    ]);
    assert_exit(&o, 2, "not a duration");
}

#[test]
fn invalid_trust_domain_exits_2_naming_the_rule() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = tmp.path().join("ca");
    for (td, rule) in [
        ("bank example", "trust-domain-characters"),
        ("u@bank.example", "userinfo"),
        ("", "empty"),
    ] {
        let o = meshgate(&["ca", "init", "--dir", s(&ca), "--trust-domain", td]);
        assert_exit(&o, 2, rule);
    }
    assert!(!ca.exists(), "a refused init creates nothing");
}

#[test]
fn init_over_an_existing_ca_fails_and_changes_nothing() {
    let (_tmp, ca, _out) = ca_with_svid();
    let before = snapshot(&ca);
    let o = meshgate(&[
        "ca",
        "init",
        "--dir",
        s(&ca),
        "--trust-domain",
        "bank.example",
    ]);
    assert_exit(&o, 2, "refuses");
    assert_eq!(snapshot(&ca), before);
    // No staging directory is left next to it either.
    let siblings: Vec<_> = fs::read_dir(ca.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(
        siblings
            .iter()
            .all(|n| !n.to_string_lossy().contains(".init-")),
        "{siblings:?}"
    );
}

fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push((p.clone(), fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn corrupt_or_truncated_files_are_clear_errors() {
    let (_tmp, ca, out) = ca_with_svid();

    // A corrupt intermediate key: issuing fails at run time and names the file.
    let key = fs::read_dir(ca.join("keys"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("intermediate-")
        })
        .unwrap();
    let good_key = fs::read(&key).unwrap();
    fs::write(&key, &good_key[..good_key.len() / 2]).unwrap();
    let o = meshgate(&[
        "ca",
        "issue",
        "--dir",
        s(&ca),
        "--spiffe-id",
        ID,
        "--out",
        s(&out),
    ]);
    assert_exit(&o, 1, "is unreadable or corrupt");
    assert!(
        !stderr(&o).contains("PRIVATE KEY"),
        "no key material is echoed"
    );
    fs::write(&key, b"not a key at all").unwrap();
    let o = meshgate(&[
        "ca",
        "issue",
        "--dir",
        s(&ca),
        "--spiffe-id",
        ID,
        "--out",
        s(&out),
    ]);
    assert_exit(&o, 1, "is unreadable or corrupt");

    // A truncated certificate file, and a PEM block with garbage inside.
    let svid = out.join("svid.pem");
    let text = fs::read_to_string(&svid).unwrap();
    fs::write(&svid, &text[..text.len() / 3]).unwrap();
    let o = meshgate(&["svid", "inspect", s(&svid)]);
    assert_exit(&o, 2, "not a PEM certificate file");
    fs::write(
        &svid,
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let o = meshgate(&["svid", "inspect", s(&svid)]);
    assert_exit(&o, 2, "not valid DER X.509");
    let o = meshgate(&["svid", "inspect", s(&out.join("missing.pem"))]);
    assert_exit(&o, 1, "cannot read");

    // A directory that is not a CA, and a corrupt datastore.
    let o = meshgate(&["ca", "list", "--dir", s(&out)]);
    assert_exit(&o, 2, "not a meshgate CA directory");
    fs::write(
        ca.join("ca.db"),
        b"garbage garbage garbage garbage garbage garbage garbage",
    )
    .unwrap();
    let o = meshgate(&["ca", "list", "--dir", s(&ca)]);
    assert_exit(&o, 1, "datastore");
}

#[test]
fn gateway_run_reads_the_readme_config_and_names_bad_values() {
    // The full example of README.md, as a user would copy it.
    let readme = fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let example = readme
        .split("```toml\n")
        .nth(1)
        .unwrap()
        .split("```")
        .next()
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("gateway.toml");
    fs::write(&config, example).unwrap();
    fs::create_dir(tmp.path().join("policies")).unwrap();
    for f in ["payments.toml", "mesh.toml"] {
        let src = concat!(env!("CARGO_MANIFEST_DIR"), "/policies/examples/bank/");
        fs::copy(format!("{src}{f}"), tmp.path().join("policies").join(f)).unwrap();
    }
    // The config is valid: the gateway gets as far as asking for a token (no state yet).
    let o = meshgate(&["gateway", "run", "--config", s(&config)]);
    assert_exit(&o, 2, "--bootstrap-token");
    // A bad value is named with its key.
    fs::write(
        &config,
        example.replace("max_connections = 1024", "max_connections = 0"),
    )
    .unwrap();
    let o = meshgate(&["gateway", "run", "--config", s(&config)]);
    assert_exit(&o, 2, "max_connections");
    // A malformed token exits 2 without echoing it.
    fs::write(&config, example).unwrap();
    let o = meshgate(&[
        "gateway",
        "run",
        "--config",
        s(&config),
        "--bootstrap-token",
        "mgt1.not-a-token.x",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(!stderr(&o).contains("not-a-token"), "{}", stderr(&o));

    // The TCP-mode example, and the route snippet after it appended to the full example.
    let blocks: Vec<&str> = readme
        .split("```toml\n")
        .skip(1)
        .map(|b| b.split("```").next().unwrap())
        .collect();
    let tcp = blocks
        .iter()
        .find(|b| b.contains("mode = \"tcp\"") && b.contains("[inbound]"))
        .unwrap();
    fs::write(
        tmp.path().join("policies/ledger-db.toml"),
        "service = \"spiffe://bank.example/ns/ledger/sa/db\"\n[[allow]]\nname = \"the ledger\"\nfrom = [\"spiffe://bank.example/ns/ledger/sa/api\"]\n",
    )
    .unwrap();
    fs::write(&config, tcp).unwrap();
    let o = meshgate(&["gateway", "run", "--config", s(&config)]);
    assert_exit(&o, 2, "--bootstrap-token");
    let route = blocks
        .iter()
        .find(|b| b.starts_with("[[outbound]]") && b.contains("mode = \"tcp\""))
        .unwrap();
    fs::write(&config, format!("{example}{route}")).unwrap();
    let o = meshgate(&["gateway", "run", "--config", s(&config)]);
    assert_exit(&o, 2, "--bootstrap-token");
}

#[test]
fn a_closed_stdout_ends_quietly_not_with_a_panic() {
    let tmp = tempfile::tempdir().unwrap();
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let o = Command::new(BIN)
        .args(["ca", "init", "--trust-domain", "example.org", "--dir"])
        .arg(tmp.path().join("ca"))
        .stdout(writer)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(!stderr(&o).contains("panicked"), "{}", stderr(&o));
    // The work was done before the output was lost.
    assert!(tmp.path().join("ca").join("ca.db").exists());
}

#[test]
fn gateway_run_refuses_zero_worker_threads() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("gateway.toml");
    for n in ["0", "many"] {
        let o = meshgate(&[
            "gateway",
            "run",
            "--config",
            s(&config),
            "--worker-threads",
            n,
        ]);
        assert_exit(&o, 2, "--worker-threads");
        assert!(stderr(&o).contains("at least 1"), "{}", stderr(&o));
    }
    // The environment variable is checked the same way.
    let o = Command::new(BIN)
        .args(["gateway", "run", "--config", s(&config)])
        .env("MESHGATE_WORKER_THREADS", "0")
        .output()
        .unwrap();
    assert_exit(&o, 2, "MESHGATE_WORKER_THREADS");
}
