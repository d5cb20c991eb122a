//! Hostile gateway config files (`gateway run --config`) and policy files (`policy check`, and
//! the policy a gateway loads): bytes that are not UTF-8, NUL bytes, a directory, a missing
//! file, ten megabytes, nesting deep enough to exhaust a recursive parser, addresses and ports
//! that cannot be, two listeners on one address, upstream schemes the gateway does not speak.
//! Each is refused before anything listens, naming the file and the key or place at fault.

use std::path::{Path, PathBuf};

use super::common::{assert_refused, meshgate, s, stderr};

const GOOD_POLICY: &str = "service = \"spiffe://bank.example/ns/payments/sa/api\"\n\
    [[allow]]\nname = \"shop\"\nfrom = [\"spiffe://bank.example/ns/shop/sa/checkout\"]\n";

/// A directory with a valid policy file `p.toml`.
fn dir() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("p.toml"), GOOD_POLICY).unwrap();
    tmp
}

/// A config for payments with an inbound and `extra` appended.
fn config(inbound_listen: &str, upstream: &str, extra: &str) -> String {
    format!(
        "spiffe_id = \"spiffe://bank.example/ns/payments/sa/api\"\nstate_dir = \"state\"\n\
         [inbound]\nlisten = \"{inbound_listen}\"\nupstream = \"{upstream}\"\npolicy = [\"p.toml\"]\n{extra}"
    )
}

fn run(dir: &Path, text: impl AsRef<[u8]>) -> std::process::Output {
    let path = dir.join("gateway.toml");
    std::fs::write(&path, text).unwrap();
    meshgate(&["gateway", "run", "--config", s(&path)])
}

fn cfg_path(dir: &Path) -> PathBuf {
    dir.join("gateway.toml")
}

#[test]
fn the_base_config_is_valid() {
    // Every case below differs from this one by the hostile part only.
    let tmp = dir();
    let o = run(
        tmp.path(),
        config("127.0.0.1:0", "http://127.0.0.1:8080", ""),
    );
    assert_refused(&o, 2, &["--bootstrap-token"]);
}

#[test]
fn a_config_that_is_not_utf8_or_holds_a_nul_is_refused_with_its_place() {
    let tmp = dir();
    let mut bytes = config("127.0.0.1:0", "http://127.0.0.1:8080", "").into_bytes();
    bytes.extend_from_slice(b"# caf\xe9 \xff\xfe\n");
    let o = run(tmp.path(), &bytes);
    assert_refused(
        &o,
        2,
        &[s(&cfg_path(tmp.path())), "UTF-8", "line 7, column 6"],
    );

    let text = config("127.0.0.1:0", "http://127.0.0.1:8080", "").replace("state\"", "st\0ate\"");
    let o = run(tmp.path(), text);
    assert_refused(&o, 2, &[s(&cfg_path(tmp.path())), "line 2"]);
}

#[test]
fn a_config_that_is_a_directory_or_missing_names_the_path() {
    let tmp = dir();
    let o = meshgate(&["gateway", "run", "--config", s(tmp.path())]);
    assert_refused(&o, 2, &[s(tmp.path()), "--config"]);
    let missing = tmp.path().join("nope.toml");
    let o = meshgate(&["gateway", "run", "--config", s(&missing)]);
    assert_refused(&o, 2, &[s(&missing), "--config"]);
    let o = meshgate(&["gateway", "run", "--config", "/dev/null"]);
    assert_refused(&o, 2, &["spiffe_id"]);
}

#[test]
fn deeply_nested_toml_is_refused_without_exhausting_the_stack() {
    let tmp = dir();
    for nested in [
        format!("x = {}{}\n", "[".repeat(100_000), "]".repeat(100_000)),
        format!("x = {}1{}\n", "{a = ".repeat(50_000), "}".repeat(50_000)),
        format!(
            "{}\n",
            (0..20_000)
                .map(|i| format!("[t{i}]"))
                .collect::<Vec<_>>()
                .join("\n")
        ),
    ] {
        let o = run(
            tmp.path(),
            config("127.0.0.1:0", "http://127.0.0.1:8080", &nested),
        );
        assert_refused(&o, 2, &[s(&cfg_path(tmp.path()))]);
        std::fs::write(tmp.path().join("deep.toml"), &nested).unwrap();
        let o = meshgate(&["policy", "check", s(&tmp.path().join("deep.toml"))]);
        assert_refused(&o, 2, &["deep.toml"]);
    }
}

#[test]
fn listen_addresses_and_ports_that_cannot_be_are_named() {
    let tmp = dir();
    for (listen, needle) in [
        ("127.0.0.1:70000", "inbound.listen"),
        ("127.0.0.1:-1", "inbound.listen"),
        ("localhost:8443", "inbound.listen"),
        ("127.0.0.1", "inbound.listen"),
        ("[::1]:99999", "inbound.listen"),
    ] {
        let o = run(tmp.path(), config(listen, "http://127.0.0.1:8080", ""));
        assert_refused(&o, 2, &[needle, listen, "such as 127.0.0.1:15001"]);
    }
    let admin = "[admin]\nlisten = \"192.0.2.1:15000\"\n";
    let o = run(
        tmp.path(),
        config("127.0.0.1:0", "http://127.0.0.1:8080", admin),
    );
    assert_refused(&o, 2, &["admin.listen", "192.0.2.1:15000", "loopback"]);
    let route = "[[outbound]]\nname = \"r\"\nlisten = \"0.0.0.0:15001\"\ntarget = \"p:1\"\n\
                 expected_peer = \"spiffe://bank.example/p\"\n";
    let o = run(
        tmp.path(),
        config("127.0.0.1:0", "http://127.0.0.1:8080", route),
    );
    assert_refused(&o, 2, &["outbound[0].listen", "0.0.0.0:15001", "loopback"]);
    let o = run(tmp.path(), config("127.0.0.1:0", "http://127.0.0.1:0", ""));
    assert_refused(&o, 2, &["inbound.upstream", "1 to 65535"]);
}

#[test]
fn two_listeners_on_one_address_are_refused_before_binding() {
    let tmp = dir();
    let route = |name: &str, listen: &str| {
        format!(
            "[[outbound]]\nname = \"{name}\"\nlisten = \"{listen}\"\ntarget = \"p:1\"\n\
             expected_peer = \"spiffe://bank.example/p\"\n"
        )
    };
    let two_routes = format!(
        "{}{}",
        route("a", "127.0.0.1:15101"),
        route("b", "127.0.0.1:15101")
    );
    let o = run(
        tmp.path(),
        config("127.0.0.1:15100", "http://127.0.0.1:8080", &two_routes),
    );
    assert_refused(
        &o,
        2,
        &["outbound[1].listen", "127.0.0.1:15101", "another listener"],
    );
    let o = run(
        tmp.path(),
        config(
            "127.0.0.1:15100",
            "http://127.0.0.1:8080",
            &route("a", "127.0.0.1:15100"),
        ),
    );
    assert_refused(
        &o,
        2,
        &["outbound[0].listen", "127.0.0.1:15100", "another listener"],
    );
    // The admin listener shares the ports too.
    let admin = "[admin]\nlisten = \"127.0.0.1:15100\"\n";
    let o = run(
        tmp.path(),
        config("127.0.0.1:15100", "http://127.0.0.1:8080", admin),
    );
    assert_refused(
        &o,
        2,
        &["admin.listen", "127.0.0.1:15100", "another listener"],
    );
    let admin_on_route = format!(
        "{}[admin]\nlisten = \"127.0.0.1:15101\"\n",
        route("a", "127.0.0.1:15101")
    );
    let o = run(
        tmp.path(),
        config("127.0.0.1:15100", "http://127.0.0.1:8080", &admin_on_route),
    );
    assert_refused(
        &o,
        2,
        &["admin.listen", "127.0.0.1:15101", "another listener"],
    );
}

#[test]
fn upstreams_with_a_scheme_or_parts_the_gateway_does_not_speak_are_named() {
    let tmp = dir();
    for upstream in [
        "unix:///run/payments.sock",
        "ftp://127.0.0.1:21",
        "ws://127.0.0.1:8080",
        "HTTP://127.0.0.1:8080",
        "http://user:pw@127.0.0.1:8080",
        "http://127.0.0.1:8080/api?x=1",
        "http://127.0.0.1",
        "http://",
    ] {
        let o = run(tmp.path(), config("127.0.0.1:0", upstream, ""));
        assert_refused(&o, 2, &["inbound.upstream", upstream]);
    }
    let ca = "[ca]\nurl = \"https://user@ca.example:8443\"\n";
    let o = run(
        tmp.path(),
        config("127.0.0.1:0", "http://127.0.0.1:8080", ca),
    );
    assert_refused(&o, 2, &["ca.url"]);
}

#[test]
fn a_policy_file_that_is_not_utf8_holds_a_nul_or_is_a_directory_is_named() {
    let tmp = dir();
    let bad = tmp.path().join("latin1.toml");
    let mut bytes = GOOD_POLICY.as_bytes().to_vec();
    bytes.extend_from_slice(b"# r\xe9sum\xe9\n");
    std::fs::write(&bad, &bytes).unwrap();
    let nul = tmp.path().join("nul.toml");
    std::fs::write(
        &nul,
        GOOD_POLICY.replace("name = \"shop\"", "name = \"sh\0op\""),
    )
    .unwrap();
    let directory = tmp.path().join("policies.d");
    std::fs::create_dir(&directory).unwrap();
    for (file, needles) in [
        (&bad, vec!["latin1.toml:5:4", "not UTF-8"]),
        (&nul, vec!["nul.toml:3:"]),
        (&directory, vec!["cannot read"]),
    ] {
        let o = meshgate(&["policy", "check", s(file)]);
        let mut all = vec![s(file)];
        all.extend(needles.iter().copied());
        assert_refused(&o, 2, &all);
        // The gateway refuses to start on it the same way.
        let o = run(
            tmp.path(),
            config("127.0.0.1:0", "http://127.0.0.1:8080", "")
                .replace("p.toml", file.file_name().unwrap().to_str().unwrap()),
        );
        assert_refused(&o, 2, &all);
    }
}

#[test]
fn a_ten_megabyte_policy_file_of_twenty_thousand_rules_is_read_in_one_pass() {
    // Locating each rule used to rescan the file from its start: 2000 rules took most of a
    // minute and this file would not finish. Now it is read once; no time is asserted.
    let tmp = dir();
    let big = tmp.path().join("big.toml");
    let mut text = String::from("service = \"spiffe://bank.example/ns/payments/sa/api\"\n");
    for i in 0..20_000 {
        text.push_str(&format!(
            "[[allow]]\nname = \"rule {i}\"\nfrom = [\"spiffe://bank.example/ns/shop/sa/c{i}\"]\n\
             methods = [\"GET\"]\npaths = [\"/v1/*/items\"]\n"
        ));
    }
    let pad = "# padding padding padding padding padding padding padding padding\n";
    text.push_str(&pad.repeat((10 * 1024 * 1024 - text.len()) / pad.len() + 1));
    assert!(text.len() >= 10 * 1024 * 1024);
    std::fs::write(&big, &text).unwrap();
    let o = meshgate(&["policy", "check", s(&big)]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(super::common::stdout(&o).contains("20000 rules"));
    // A rule at the end is located by line: the last one's duplicate is named with both.
    let dup = format!("{text}[[allow]]\nname = \"rule 19999\"\n");
    std::fs::write(&big, dup).unwrap();
    let o = meshgate(&["policy", "check", s(&big)]);
    assert_refused(&o, 2, &[s(&big), "rule 19999"]);
    // A ten-megabyte line of junk is one TOML error, not ten megabytes of message.
    std::fs::write(&big, format!("x = \"{}\"\n", "a".repeat(10 * 1024 * 1024))).unwrap();
    let o = meshgate(&["policy", "check", s(&big)]);
    assert_refused(&o, 2, &[s(&big), ":1:1"]);
    assert!(
        stderr(&o).len() < 4096,
        "{} bytes of error",
        stderr(&o).len()
    );
}
