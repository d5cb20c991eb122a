//! `meshgate audit verify FILE... [--bundle F]... [--signer ID]`: each log (its rotated files
//! and active file grouped, in chain order) checked as one hash chain, its checkpoints'
//! structure always, and with trust bundles their signatures and the intervals they promised;
//! with `--signer`, who signed them.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use meshgate_audit::{
    Damage, LogReport, VerifyOptions, group_files, trust_roots_from_pem, verify_log,
};
use meshgate_identity::SpiffeId;

use super::audit::damage_line;
use crate::exit::{FAILURE, bad_input};

pub fn run(
    files: &[PathBuf],
    bundles: &[PathBuf],
    signer: Option<&str>,
) -> anyhow::Result<ExitCode> {
    let mut options = options(bundles)?;
    if let Some(signer) = signer {
        let id = SpiffeId::parse(signer).map_err(|e| {
            bad_input(format!(
                "--signer {signer}: {e}; give the SPIFFE ID that signs the logs (the CA's spiffe://<td>/meshgate/ca, a gateway's own ID)"
            ))
        })?;
        options = options.expect_signer(id);
    }
    let mut stdout = std::io::stdout().lock();
    let mut intact = true;
    for log in group_files(files) {
        let name = match log.files.len() {
            1 => log.log.display().to_string(),
            n => format!("{} ({n} files)", log.log.display()),
        };
        match verify_log(&log.files, &options) {
            Ok(report) => {
                intact &= report.damage.is_none();
                writeln!(stdout, "{name}: {}", describe(&report, log.files.len() > 1))?;
            }
            Err(e) => {
                intact = false;
                stdout.flush()?;
                eprintln!("error: {e}");
            }
        }
    }
    Ok(if intact {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(FAILURE)
    })
}

/// Reads every `--bundle` into one set of roots per trust domain (exit 2 when one is unusable).
fn options(bundles: &[PathBuf]) -> anyhow::Result<VerifyOptions> {
    if bundles.is_empty() {
        return Ok(VerifyOptions::new());
    }
    let mut texts = Vec::with_capacity(bundles.len());
    for path in bundles {
        let text = std::fs::read(path).map_err(|e| {
            bad_input(format!(
                "cannot read --bundle {}: {e}; give a PEM file of trust roots (`meshgate ca bundle --format pem`)",
                path.display()
            ))
        })?;
        texts.push(text);
    }
    let refs: Vec<&[u8]> = texts.iter().map(Vec::as_slice).collect();
    let roots = trust_roots_from_pem(&refs).map_err(|e| {
        bad_input(format!(
            "--bundle: {e}; give PEM files of trust roots (`meshgate ca bundle --format pem`)"
        ))
    })?;
    Ok(VerifyOptions::new().with_bundles(roots))
}

/// One line: `ok, …` with what was checked, or the first damage.
fn describe(r: &LogReport, several_files: bool) -> String {
    if let Some(damage) = &r.damage {
        let mut line = damage_line(&damage.error);
        if several_files {
            line = format!("{}: {line}", file_name(&damage.file));
        }
        if let Some(fault) = &damage.checkpoint {
            line.push_str(&format!(" ({fault})"));
        }
        if damage.error.kind == Damage::Deleted && damage.error.seq == 1 {
            line.push_str(
                " (the chain does not start at seq 1: if the log was rotated, give its older files LOG.<seq> too)",
            );
        }
        return line;
    }
    if r.chain.records == 0 {
        return "ok, 0 records (empty log)".to_owned();
    }
    let mut line = format!(
        "ok, {} records, seq {}..{}, head {}",
        r.chain.records, r.chain.first_seq, r.chain.last_seq, r.chain.head_hash
    );
    match (&r.signer, r.last_checkpoint, r.signatures_checked) {
        (Some(signer), Some(last), true) => {
            line.push_str(&format!(
                ", {} checkpoints signed by {signer}, the last at seq {last}; {} records after it are not signed yet",
                r.checkpoints, r.unsigned_tail
            ));
            if r.offline_records > 0 {
                line.push_str(&format!(
                    "; {} records written while no signing writer ran (offline CLI, log_recovered) were signed when the next one opened the log",
                    r.offline_records
                ));
            }
        }
        (_, _, false) => line.push_str(&format!(
            ", {} checkpoints; signatures not checked (no --bundle)",
            r.checkpoints
        )),
        _ => {}
    }
    line
}

fn file_name(path: &Path) -> String {
    path.display().to_string()
}
