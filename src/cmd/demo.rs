//! `meshgate demo`: a three-service bank on 127.0.0.1. An embedded CA server enrolls shop,
//! payments and ledger, each an echo service behind its own gateway under the example bank
//! policies; real HTTP calls go through the gateways' outbound listeners (and, for the
//! intruders, straight at an inbound one). Prints what each gateway allowed and denied, by which
//! rule, then checks the audit chains. Exits 0 only if every call ended as expected.

mod calls;
mod capture;
mod intruders;
mod mesh;
mod net;

use std::process::ExitCode;

use anyhow::Context as _;
use meshgate_audit::{VerifyOptions, read_records, verify_log};

use calls::Row;
use capture::AccessLog;
use mesh::Bank;

pub fn run() -> anyhow::Result<ExitCode> {
    // One thread: the demo's access-log capture is the thread's default subscriber, and every
    // gateway task runs on this thread.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let log = AccessLog::default();
    let subscriber = capture::subscriber(log.clone());
    tracing::subscriber::with_default(subscriber, || runtime.block_on(demo(&log)))
}

async fn demo(log: &AccessLog) -> anyhow::Result<ExitCode> {
    let bank = Bank::start().await?;
    print_bank(&bank)?;

    let rows = calls::run_all(&bank, log).await?;
    print_table(&rows);
    let surprises = rows.iter().filter(|r| !r.as_expected).count();

    // Stop everything first so that every audit record is on disk.
    let (dir, ca_dir) = bank.shutdown().await?;
    println!(
        "\nAudit logs (hash chains and checkpoint signatures checked with the CA's bundle, as `meshgate audit verify --bundle` does):"
    );
    let bundle = meshgate_ca::authority::Authority::open(&ca_dir)?
        .bundle()?
        .to_pem();
    let roots = meshgate_audit::trust_roots_from_pem(&[bundle.as_bytes()])?;
    let options = VerifyOptions::new().with_bundles(roots);
    let mut broken = 0;
    let ca_log = ca_dir.join(meshgate_ca::audit_log::AUDIT_FILE);
    if !check_audit("CA", &ca_log, dir.path(), &options)? {
        broken += 1;
    }
    for name in ["shop", "payments", "ledger"] {
        let path = dir.path().join(name).join("audit.jsonl");
        if !path.exists() {
            println!(
                "  {:<12} wrote no audit log (this build has none)",
                format!("{name} gw")
            );
        } else if !check_audit(&format!("{name} gw"), &path, dir.path(), &options)? {
            broken += 1;
        }
    }

    println!();
    if surprises == 0 && broken == 0 {
        println!(
            "All {} calls ended as expected, and every audit chain is intact.",
            rows.len()
        );
        println!(
            "A stolen shop identity reaches payments' checkout API and nothing else: the ledger's \
             gateway denies it by the mesh-wide rule \"only payments calls the ledger\"."
        );
        Ok(ExitCode::SUCCESS)
    } else {
        println!("{surprises} call(s) ended unexpectedly; {broken} audit log(s) failed to verify.");
        Ok(ExitCode::from(crate::exit::FAILURE))
    }
}

fn print_bank(bank: &Bank) -> anyhow::Result<()> {
    println!("meshgate demo: a bank of three services on 127.0.0.1, each behind its own gateway\n");
    println!(
        "  CA        {}  trust domain {}, SQLite in {}",
        bank.ca_url,
        mesh::TRUST_DOMAIN,
        bank.ca_dir.display()
    );
    println!("            root SHA-256 {}", bank.root_sha256);
    for s in bank.services() {
        let routes: Vec<String> = s
            .gateway
            .outbound
            .iter()
            .map(|(name, addr)| format!("{name} {addr}"))
            .collect();
        println!(
            "  {:<9} {}  serial {}",
            s.name,
            s.id,
            short_serial(&s.serial)
        );
        println!(
            "            gateway inbound {} (mTLS) -> echo app; outbound: {}",
            mesh::inbound(s)?,
            if routes.is_empty() {
                "none".to_owned()
            } else {
                routes.join(", ")
            }
        );
    }
    println!(
        "  policies  mesh.toml (mesh-wide guardrails) + each service's own file, from \
         policies/examples/bank; ledger.toml is in dry-run\n"
    );
    Ok(())
}

fn print_table(rows: &[Row]) {
    let head = [
        "#",
        "call",
        "from",
        "to",
        "request",
        "result",
        "deciding rule",
    ];
    let cells: Vec<[String; 7]> = rows
        .iter()
        .enumerate()
        .map(|(i, r)| {
            [
                (i + 1).to_string(),
                r.what.to_owned(),
                r.from.to_owned(),
                r.to.to_owned(),
                r.request.clone(),
                r.result.clone(),
                if r.as_expected {
                    r.rule.clone()
                } else {
                    format!("{}   <-- UNEXPECTED: {}", r.rule, r.expected)
                },
            ]
        })
        .collect();
    let mut widths = head.map(str::len);
    for row in &cells {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cols: [&str; 7]| {
        let mut out = String::new();
        for (i, (cell, w)) in cols.iter().zip(widths).enumerate() {
            if i + 1 == cols.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  "));
            }
        }
        println!("{}", out.trim_end());
    };
    line(head);
    for row in &cells {
        line(row.each_ref().map(String::as_str));
    }
    println!(
        "\nresult: the HTTP status the calling app got, or the TLS refusal. deciding rule: the rule \
         the receiving gateway logged for the request (its access log), with the file that holds \
         it; [explain] marks a rule taken from the policy engine's explain of the same request \
         when the gateway logged none; for a TLS refusal, the reason the gateway counted in its \
         handshake-failure metric and the alert the client received."
    );
}

/// Verifies one audit log and prints its size, what it holds, and the verdict.
fn check_audit(
    label: &str,
    path: &std::path::Path,
    base: &std::path::Path,
    options: &VerifyOptions,
) -> anyhow::Result<bool> {
    let shown = path
        .strip_prefix(base)
        .unwrap_or(path)
        .display()
        .to_string();
    let report = verify_log(&[path], options)?;
    match report.damage {
        None => {
            let summary = report.chain;
            let mut actions = std::collections::BTreeMap::<String, usize>::new();
            for record in read_records(path)? {
                let record = record?;
                let action = serde_json::to_value(record.event.action)?
                    .as_str()
                    .unwrap_or("?")
                    .to_owned();
                *actions.entry(action).or_default() += 1;
            }
            let tally: Vec<String> = actions.iter().map(|(a, n)| format!("{a} {n}")).collect();
            let signer = report
                .signer
                .map_or_else(|| "nobody".to_owned(), |s| s.to_string());
            println!(
                "  {label:<12} {shown}: {} record{}, hash chain verified, {} checkpoint{} signed by {signer} ({})",
                summary.records,
                if summary.records == 1 { "" } else { "s" },
                report.checkpoints,
                if report.checkpoints == 1 { "" } else { "s" },
                tally.join(", ")
            );
            Ok(true)
        }
        Some(damage) => {
            println!(
                "  {label:<12} {shown}: VERIFY FAILED: seq {} (line {}): {}",
                damage.error.seq,
                damage.error.line,
                damage.error.kind.code()
            );
            Ok(false)
        }
    }
}

fn short_serial(serial: &str) -> &str {
    serial.get(..16).unwrap_or(serial)
}
