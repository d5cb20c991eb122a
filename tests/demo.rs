//! `meshgate demo` end to end: it must exit 0, with the stolen shop identity denied at the ledger
//! by the mesh-wide guardrail and the forged credentials refused at the handshake.

use std::process::Command;

#[test]
fn demo_runs_and_every_call_ends_as_expected() {
    let out = Command::new(env!("CARGO_BIN_EXE_meshgate"))
        .arg("demo")
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
    assert!(row("stolen shop identity reads the ledger").contains("denied (403)"));
    assert!(
        row("stolen shop identity reads the ledger").contains("only payments calls the ledger")
    );
    assert!(row("checkout charges a card").contains("allowed"));
    assert!(row("expired shop SVID").contains("refused at TLS"));
    assert!(row("rogue CA mints a payments SVID").contains("refused at TLS"));
    assert!(row("ledger poses as payments").contains("not the expected SPIFFE ID"));
    assert!(!stdout.contains("UNEXPECTED"));
}
