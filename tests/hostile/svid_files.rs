//! `svid inspect` on files that are not an SVID chain, and `--bundle` files that are not a trust
//! bundle: DER instead of PEM, nothing at all, a private key (made here), a JWKS that breaks the
//! SPIFFE bundle rules. Each is exit 2 naming the file and what it should hold; a key is never
//! echoed.

use std::path::Path;

use super::common::{CliCa, assert_refused, meshgate, s, stderr, stdout};

fn inspect(file: &Path, bundle: Option<&Path>) -> std::process::Output {
    let mut args = vec!["svid", "inspect", s(file)];
    if let Some(b) = bundle {
        args.extend(["--bundle", s(b)]);
    }
    meshgate(&args)
}

/// The first PEM block's DER.
fn first_der(pem: &str) -> Vec<u8> {
    meshgate_identity::bundle::certs_from_pem(pem.as_bytes()).unwrap()[0].to_vec()
}

fn key_pem() -> String {
    meshgate_ca::KeyType::EcdsaP256
        .generate()
        .unwrap()
        .serialize_pem()
}

#[test]
fn inspect_of_der_empty_and_dev_null_names_the_file_and_wants_pem() {
    let ca = CliCa::new();
    let out = ca.issue();
    let der = ca.path("svid.der");
    std::fs::write(
        &der,
        first_der(&std::fs::read_to_string(out.join("svid.pem")).unwrap()),
    )
    .unwrap();
    let empty = ca.path("empty.pem");
    std::fs::write(&empty, "").unwrap();
    for file in [der.as_path(), empty.as_path(), Path::new("/dev/null")] {
        let o = inspect(file, None);
        assert_refused(
            &o,
            2,
            &[s(file), "not a PEM certificate file", "CERTIFICATE"],
        );
    }
    // A directory is not a file to read.
    let o = inspect(ca.tmp.path(), None);
    assert_refused(&o, 1, &[s(ca.tmp.path()), "cannot read"]);
}

#[test]
fn inspect_of_a_private_key_refuses_without_echoing_it() {
    let ca = CliCa::new();
    let key = ca.path("key.pem");
    let pem = key_pem();
    std::fs::write(&key, &pem).unwrap();
    let o = inspect(&key, None);
    assert_refused(&o, 2, &[s(&key), "no CERTIFICATE block"]);
    let body: String = pem.lines().nth(1).unwrap().to_owned();
    assert!(!stderr(&o).contains(&body) && !stdout(&o).contains(&body));
    assert!(!stderr(&o).contains("PRIVATE KEY"), "{}", stderr(&o));
    // The same key where the bundle goes.
    let out = ca.issue();
    let o = inspect(&out.join("svid.pem"), Some(&key));
    assert_refused(&o, 2, &[s(&key)]);
    assert!(!stderr(&o).contains(&body) && !stderr(&o).contains("PRIVATE KEY"));
}

#[test]
fn a_bundle_with_only_a_non_certificate_block_or_nothing_is_refused() {
    let ca = CliCa::new();
    let out = ca.issue();
    let svid = out.join("svid.pem");
    let other = ca.path("other.pem");
    std::fs::write(
        &other,
        "-----BEGIN X509 CRL-----\nMAA=\n-----END X509 CRL-----\n",
    )
    .unwrap();
    let empty = ca.path("empty-bundle.pem");
    std::fs::write(&empty, "").unwrap();
    let json_empty = ca.path("empty.json");
    std::fs::write(&json_empty, "{\"keys\": []}").unwrap();
    for bundle in [other.as_path(), empty.as_path(), Path::new("/dev/null")] {
        let o = inspect(&svid, Some(bundle));
        assert_refused(&o, 2, &[s(bundle), "CERTIFICATE"]);
    }
    let o = inspect(&svid, Some(&json_empty));
    assert_refused(&o, 2, &[s(&json_empty)]);
}

#[test]
fn a_jwks_that_breaks_the_spiffe_bundle_rules_names_the_key_and_the_rule() {
    let ca = CliCa::new();
    let out = ca.issue();
    let svid = out.join("svid.pem");
    let o = meshgate(&["ca", "bundle", "--dir", s(&ca.dir), "--format", "spiffe"]);
    assert_eq!(o.status.code(), Some(0));
    let good: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let x5c = good["keys"][0]["x5c"][0].as_str().unwrap().to_owned();
    let edit = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut doc = good.clone();
        f(&mut doc);
        doc.to_string()
    };
    let cases = [
        (
            edit(&|d| d["keys"][0]["x5c"] = serde_json::json!([x5c.clone(), x5c.clone()])),
            "exactly one `x5c`",
        ),
        (
            edit(&|d| d["keys"][0]["x5c"] = serde_json::json!(["%%% not base64 %%%"])),
            "not standard base64",
        ),
        (
            edit(&|d| d["keys"][0]["use"] = serde_json::json!("sig")),
            "`use` must be",
        ),
        (
            edit(&|d| d["keys"][0]["x5c"] = serde_json::json!(["AAAA"])),
            "key #0",
        ),
        ("{\"keys\": {}}".to_owned(), "not a SPIFFE bundle"),
        ("[1, 2, 3]".to_owned(), ""),
        (
            format!("{{\"keys\": [{}]}}", "[".repeat(10_000)),
            "not a SPIFFE bundle",
        ),
    ];
    for (i, (text, needle)) in cases.iter().enumerate() {
        let bundle = ca.path(&format!("bundle-{i}.json"));
        std::fs::write(&bundle, text).unwrap();
        let o = inspect(&svid, Some(&bundle));
        assert_refused(&o, 2, &[s(&bundle), needle]);
    }
    // The unedited document verifies: the refusals above were for the edits.
    let bundle = ca.path("good.json");
    std::fs::write(&bundle, good.to_string()).unwrap();
    let o = inspect(&svid, Some(&bundle));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}
