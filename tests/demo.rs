//! `meshgate demo` end to end: it must exit 0, with calls allowed and denied by the rules the
//! gateways report, the stolen shop identity denied at the ledger by the mesh-wide guardrail,
//! forged and expired credentials refused at the handshake, and every audit chain verified.

use std::process::Command;

#[test]
fn demo_runs_and_every_call_ends_as_expected() {
    let out = Command::new(env!("CARGO_BIN_EXE_meshgate"))
        .arg("demo")
        .current_dir(std::env::temp_dir())
        .output()
        .expect("run demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let row = |what: &str| {
        stdout
            .lines()
            .find(|l| l.contains(what))
            .unwrap_or_else(|| panic!("no row {what:?}:\n{stdout}"))
    };
    let charge = row("checkout charges a card");
    assert!(charge.contains("allowed (200)"), "{charge}");
    assert!(
        charge.contains("\"checkout charges cards\" (payments.toml)"),
        "{charge}"
    );
    let refund = row("checkout asks for a refund");
    assert!(refund.contains("denied (403)"), "{refund}");
    assert!(refund.contains("\"the shop never refunds\""), "{refund}");
    assert!(row("payments deletes entries").contains("allowed (200, dry-run)"));
    for stolen in [
        "stolen shop identity reads the ledger",
        "stolen shop key used straight at the ledger",
    ] {
        let line = row(stolen);
        assert!(line.contains("denied (403)"), "{line}");
        assert!(
            line.contains("\"only payments calls the ledger\" (mesh.toml)"),
            "{line}"
        );
    }
    let foreign = row("foreign CA mints a payments SVID");
    assert!(foreign.contains("refused at TLS"), "{foreign}");
    assert!(foreign.contains("counted inbound untrusted"), "{foreign}");
    let expired = row("expired shop SVID");
    assert!(expired.contains("refused at TLS"), "{expired}");
    assert!(expired.contains("counted inbound expired"), "{expired}");
    assert!(row("ledger poses as payments").contains("not the expected SPIFFE ID"));
    assert!(!stdout.contains("UNEXPECTED"), "{stdout}");

    let ca_audit = row("ca/audit.jsonl");
    assert!(ca_audit.contains("hash chain verified"), "{ca_audit}");
    assert!(ca_audit.contains("token_use 3"), "{ca_audit}");
    assert!(!stdout.contains("VERIFY FAILED"), "{stdout}");
    assert!(
        stdout.contains("All 12 calls ended as expected"),
        "{stdout}"
    );
}
