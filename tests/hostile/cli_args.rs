//! Hostile command-line arguments: durations, SPIFFE IDs, directories, serials, addresses and
//! token text that are not what the command takes. Each exits 2 with a message that names the
//! value (or the flag) and what would be accepted; none panics, and token text is never echoed.

use std::os::unix::ffi::OsStrExt as _;

use super::common::{CliCa, ID, assert_no_panic, assert_not_echoed, assert_refused, meshgate, s};

fn issue_with_ttl(ca: &CliCa, ttl: &str) -> std::process::Output {
    let out = ca.path("out");
    meshgate(&[
        "ca",
        "issue",
        "--dir",
        s(&ca.dir),
        "--spiffe-id",
        ID,
        &format!("--ttl={ttl}"),
        "--out",
        s(&out),
    ])
}

#[test]
fn ttl_zero_negative_huge_and_unitless_are_refused_naming_the_range() {
    let ca = CliCa::new();
    let o = issue_with_ttl(&ca, "0s");
    assert_refused(&o, 2, &["0s", "out of range", "10s"]);
    let o = issue_with_ttl(&ca, "-1h");
    assert_refused(&o, 2, &["-1h", "not a duration"]);
    let o = issue_with_ttl(&ca, "99999999999999999999999d");
    assert_refused(
        &o,
        2,
        &["99999999999999999999999d", "too large", "such as 90s"],
    );
    let o = issue_with_ttl(&ca, "18446744073709551615d");
    assert_refused(&o, 2, &["18446744073709551615d", "too large"]);
    // Ten thousand digits: our message quotes 32 characters of them (clap's own prefix
    // repeats the argument once, whole).
    let long = format!("{}s", "9".repeat(10_000));
    let o = issue_with_ttl(&ca, &long);
    assert_refused(&o, 2, &["too large"]);
    assert_eq!(super::common::stderr(&o).matches(&long).count(), 1);
    let o = issue_with_ttl(&ca, "1x");
    assert_refused(&o, 2, &["1x", "not a duration"]);
    let o = issue_with_ttl(&ca, "");
    assert_refused(&o, 2, &["--ttl"]);
    // Nothing was issued by any of them.
    assert!(!ca.path("out").join("svid.pem").exists());
}

#[test]
fn token_ttl_and_uses_out_of_range_are_refused() {
    let ca = CliCa::new();
    let create = |extra: &[&str]| {
        let mut args = vec![
            "ca",
            "token",
            "create",
            "--dir",
            s(&ca.dir),
            "--spiffe-id",
            ID,
        ];
        args.extend_from_slice(extra);
        meshgate(&args)
    };
    let o = create(&["--ttl", "8d"]);
    assert_refused(&o, 2, &["8d", "7d"]);
    assert!(o.stdout.is_empty(), "no token printed");
    let o = create(&["--ttl", "0s"]);
    assert_refused(&o, 2, &["0s"]);
    assert!(o.stdout.is_empty(), "no token printed");
    let o = create(&["--uses", "0"]);
    assert_refused(&o, 2, &["uses"]);
    assert!(o.stdout.is_empty(), "no token printed");
    let o = create(&["--uses=-1"]);
    assert_refused(&o, 2, &["--uses"]);
    let o = create(&["--uses", "99999999999"]);
    assert_refused(&o, 2, &["--uses", "99999999999"]);
}

#[test]
fn spiffe_ids_with_control_characters_are_refused_and_not_written_raw() {
    let ca = CliCa::new();
    for id in [
        "spiffe://bank.example/ns/shop\n/sa/x",
        "spiffe://bank.example/ns/\x1b[31mred",
        "spiffe://bank.\texample/ns/a",
    ] {
        let o = meshgate(&[
            "ca",
            "token",
            "create",
            "--dir",
            s(&ca.dir),
            "--spiffe-id",
            id,
        ]);
        assert_refused(&o, 2, &["--spiffe-id", "rule"]);
        // A control character reaches the terminal only escaped.
        let err = super::common::stderr(&o);
        assert!(!err.contains('\x1b'), "{err:?}");
        assert!(o.stdout.is_empty());
    }
}

#[test]
fn a_spiffe_id_over_2048_bytes_or_not_utf8_is_refused() {
    let ca = CliCa::new();
    let long = format!("spiffe://bank.example/{}", "a".repeat(3000));
    let o = meshgate(&[
        "ca",
        "token",
        "create",
        "--dir",
        s(&ca.dir),
        "--spiffe-id",
        &long,
    ]);
    assert_refused(&o, 2, &["2048"]);
    let o = meshgate(&[
        std::ffi::OsStr::new("ca"),
        "token".as_ref(),
        "create".as_ref(),
        "--dir".as_ref(),
        ca.dir.as_os_str(),
        "--spiffe-id".as_ref(),
        std::ffi::OsStr::from_bytes(b"spiffe://bank.example/\xff\xfe"),
    ]);
    assert_refused(&o, 2, &["--spiffe-id", "UTF-8"]);
}

#[test]
fn a_dir_that_is_a_file_is_not_a_ca_directory() {
    let ca = CliCa::new();
    let file = ca.path("plain-file");
    std::fs::write(&file, "not a CA").unwrap();
    for args in [
        vec!["ca", "list", "--dir", s(&file)],
        vec!["ca", "bundle", "--dir", s(&file)],
        vec![
            "ca",
            "token",
            "create",
            "--dir",
            s(&file),
            "--spiffe-id",
            ID,
        ],
        vec!["ca", "rotate", "status", "--dir", s(&file)],
    ] {
        let o = meshgate(&args);
        assert_refused(&o, 2, &[s(&file), "not a meshgate CA directory"]);
    }
    // `ca init` over a file refuses and leaves the file alone.
    let o = meshgate(&[
        "ca",
        "init",
        "--dir",
        s(&file),
        "--trust-domain",
        "bank.example",
    ]);
    assert_refused(&o, 2, &[s(&file)]);
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "not a CA");
    // `svid renew` in a file instead of a state directory.
    let o = meshgate(&["svid", "renew", "--dir", s(&file)]);
    assert_refused(&o, 2, &[s(&file)]);
}

#[test]
fn an_issue_out_that_is_a_file_is_named() {
    let ca = CliCa::new();
    let file = ca.path("out-file");
    std::fs::write(&file, "keep me").unwrap();
    let o = meshgate(&[
        "ca",
        "issue",
        "--dir",
        s(&ca.dir),
        "--spiffe-id",
        ID,
        "--out",
        s(&file),
    ]);
    assert_refused(&o, 2, &[s(&file), "--out"]);
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");
}

#[test]
fn garbage_token_text_is_refused_without_being_echoed() {
    let ca = CliCa::new();
    let out = ca.path("fetched");
    let garbage = format!(
        "mgt1.{}.{}",
        "Zm9v".repeat(40),
        "c2VjcmV0LXNlY3JldA".repeat(3)
    );
    // A well-formed token whose secret part is replaced: the claims are readable but the
    // secret must still never be printed.
    let real = ca.token();
    let (head, _) = real.rsplit_once('.').unwrap();
    let forged_secret = "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVowMTIzNDU";
    let forged = format!("{head}.{forged_secret}");
    for token in [garbage.as_str(), "\u{1}\u{7f}garbage", &"x".repeat(100_000)] {
        let o = meshgate(&["svid", "fetch", "--token", token, "--out", s(&out)]);
        assert_refused(&o, 2, &["--token"]);
        if token.len() > 4 {
            assert_not_echoed(&o, &token[5..]);
        }
    }
    // The forged token is well-formed: fetch gets as far as the CA (nothing listens on the
    // default URL in this test), fails, and prints neither the secret nor the token.
    let o = meshgate(&["svid", "fetch", "--token", &forged, "--out", s(&out)]);
    assert_no_panic(&o);
    assert_ne!(o.status.code(), Some(0));
    assert_not_echoed(&o, forged_secret);
    assert_not_echoed(&o, &real);
    assert!(!out.join("key.pem").exists());
}

#[test]
fn a_token_file_of_garbage_a_directory_or_nothing_is_refused_without_echo() {
    let ca = CliCa::new();
    let cfg = ca.path("gateway.toml");
    std::fs::write(
        &cfg,
        "spiffe_id = \"spiffe://bank.example/ns/shop/sa/checkout\"\nstate_dir = \"state\"\n\
         [[outbound]]\nname = \"p\"\nlisten = \"127.0.0.1:0\"\ntarget = \"127.0.0.1:1\"\n\
         expected_peer = \"spiffe://bank.example/ns/payments/sa/api\"\n",
    )
    .unwrap();
    let secretish = "s3cr3t-b00tstrap-material-do-not-print";
    let token_file = ca.path("token.txt");
    std::fs::write(&token_file, format!("mgt1.{secretish}.{secretish}\n")).unwrap();
    let empty = ca.path("empty.txt");
    std::fs::write(&empty, "").unwrap();
    for file in [
        token_file.as_path(),
        empty.as_path(),
        ca.tmp.path(),
        std::path::Path::new("/dev/null"),
    ] {
        let o = meshgate(&[
            "gateway",
            "run",
            "--config",
            s(&cfg),
            "--bootstrap-token-file",
            s(file),
        ]);
        assert_refused(&o, 2, &["--bootstrap-token-file", s(file)]);
        assert_not_echoed(&o, secretish);
    }
}

#[test]
fn serials_addresses_and_urls_that_do_not_parse_are_named() {
    let ca = CliCa::new();
    let dir = s(&ca.dir);
    let o = meshgate(&["ca", "revoke", "--dir", dir, "--serial", "zz-not-hex"]);
    assert_refused(&o, 2, &["--serial", "zz-not-hex", "hex"]);
    let o = meshgate(&["ca", "revoke", "--dir", dir, "--serial", &"f".repeat(4096)]);
    assert_refused(&o, 2, &["--serial"]);
    for listen in [
        "127.0.0.1:70000",
        "localhost",
        "localhost:8443",
        "127.0.0.1",
    ] {
        let o = meshgate(&["ca", "serve", "--dir", dir, "--listen", listen]);
        assert_refused(&o, 2, &["--listen", listen, "e.g. 127.0.0.1:8443"]);
    }
    let o = meshgate(&[
        "ca",
        "serve",
        "--dir",
        dir,
        "--listen",
        "127.0.0.1:0",
        "--admin",
        "0.0.0.0:0",
    ]);
    assert_refused(&o, 2, &["--admin", "0.0.0.0:0", "loopback"]);
    for url in [
        "http://127.0.0.1:8443",
        "https://ca.example",
        "ftp://x:1",
        "https://ca:1/path",
    ] {
        let o = meshgate(&[
            "ca",
            "token",
            "create",
            "--dir",
            dir,
            "--spiffe-id",
            ID,
            "--ca-url",
            url,
        ]);
        assert_refused(&o, 2, &["--ca-url", url]);
        assert!(o.stdout.is_empty(), "no token printed");
    }
    let o = meshgate(&["ca", "token", "revoke", "--dir", dir, "--id", "424242"]);
    assert_refused(&o, 2, &["424242"]);
}

#[test]
fn audit_and_policy_flags_that_do_not_parse_are_named() {
    let ca = CliCa::new();
    let log = ca.dir.join("audit.jsonl");
    let o = meshgate(&[
        "audit",
        "export",
        "--log",
        s(&log),
        "--format",
        "jsonl",
        "--since",
        "yesterday",
    ]);
    assert_refused(&o, 2, &["--since", "yesterday"]);
    let o = meshgate(&[
        "audit",
        "verify",
        s(&log),
        "--bundle",
        s(&log),
        "--signer",
        "not-an-id",
    ]);
    assert_refused(&o, 2, &["--bundle"]);
    let policy = ca.path("p.toml");
    std::fs::write(&policy, "").unwrap();
    let o = meshgate(&[
        "policy",
        "explain",
        "--policy",
        s(&policy),
        "--from",
        ID,
        "--to",
        "spiffe://bank.example/ns/a",
        "--method",
        "GET",
        "--path",
        "no-slash",
    ]);
    assert_refused(&o, 2, &["--path", "no-slash", "'/'"]);
    let o = meshgate(&[
        "policy",
        "explain",
        "--policy",
        s(&policy),
        "--from",
        "spiffe://bank.example/a/../b",
        "--to",
        ID,
    ]);
    assert_refused(&o, 2, &["--from", "rule"]);
    let o = meshgate(&[
        "policy",
        "explain",
        "--policy",
        s(&policy),
        "--from",
        ID,
        "--to",
        ID,
        "--port",
        "70000",
    ]);
    assert_refused(&o, 2, &["--port", "70000"]);
}
