//! `meshgate audit ...`: check audit logs' hash chains, and export logs merged in time order
//! with a manifest that ties the export to the logs it came from.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use meshgate_audit::{AuditError, ChainError, Damage, ExportFormat, ExportOptions, ExportReport};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::exit::bad_input;

#[derive(Debug, clap::Subcommand)]
pub enum AuditCommand {
    /// Check audit logs' hash chains and checkpoints and name the first bad record of a
    /// damaged one.
    ///
    /// A log's rotated files (LOG.<seq>) and LOG are checked in seq order as one chain. Prints
    /// one line per log: "ok" with its record count, seq range, head hash and checkpoints, or
    /// the first bad record's seq, line and kind of damage. Exits 0 when every log is intact,
    /// 1 otherwise, 2 when a bundle is unusable or --signer is not a SPIFFE ID.
    Verify {
        /// Audit logs (JSON Lines), rotated files included (e.g. audit.jsonl.* audit.jsonl).
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Trust roots (PEM) to check checkpoint signatures against; repeat for several trust
        /// domains or the bundles before and after a root rotation.
        #[arg(long, value_name = "FILE")]
        bundle: Vec<PathBuf>,
        /// The SPIFFE ID every log given must be signed by (e.g.
        /// spiffe://example.org/meshgate/ca): a checkpoint by anyone else, or a log without
        /// checkpoints, is damage (unexpected_signer). Verify logs of different signers in
        /// separate runs.
        #[arg(
            long,
            visible_alias = "expect-signer",
            value_name = "ID",
            requires = "bundle"
        )]
        signer: Option<String>,
    },
    /// Merge logs in time order into JSON Lines, CSV or OCSF, with a manifest.
    ///
    /// Keeps a time window, and writes JSON Lines (each record's line byte for byte), CSV, or
    /// OCSF 1.8 events (one JSON object per line, one event per record, the record's seq, prev
    /// and hash under "unmapped"), plus a manifest (OUT.manifest.json): per log the records, seq
    /// range, chain head and verify result; for the export its count, time range and SHA-256,
    /// and for OCSF the events of each class. Each log is verified as it is read; a damaged one
    /// fails the export (exit 1).
    Export {
        /// Audit logs to merge (several components' logs, in any order).
        #[arg(long = "log", value_name = "FILE", required = true, num_args = 1..)]
        logs: Vec<PathBuf>,
        /// Keep records written at or after T (RFC 3339, e.g. 2026-11-27T15:00:00Z).
        #[arg(long, value_name = "T", value_parser = parse_time)]
        since: Option<OffsetDateTime>,
        /// Keep records written before T (RFC 3339); the window is [since, until).
        #[arg(long, value_name = "T", value_parser = parse_time)]
        until: Option<OffsetDateTime>,
        /// jsonl, csv or ocsf.
        #[arg(long, value_parser = parse_format)]
        format: ExportFormat,
        /// Write the export here (replaced only once complete) and the manifest to
        /// OUT.manifest.json; without it, the export goes to stdout and no manifest is written
        /// unless --manifest names one.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        /// Write the manifest here instead of OUT.manifest.json.
        #[arg(long, value_name = "FILE")]
        manifest: Option<PathBuf>,
        /// Export a damaged log's records that are whole on their own, skip its bad lines, and
        /// record the damage in the manifest (and on stderr) instead of failing.
        #[arg(long)]
        allow_damaged: bool,
    },
}

pub fn run(cmd: AuditCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        AuditCommand::Verify {
            files,
            bundle,
            signer,
        } => super::audit_verify::run(&files, &bundle, signer.as_deref()),
        AuditCommand::Export {
            logs,
            since,
            until,
            format,
            out,
            manifest,
            allow_damaged,
        } => {
            let mut options = ExportOptions::new(format).allow_damaged(allow_damaged);
            if let Some(t) = since {
                options = options.since(t);
            }
            if let Some(t) = until {
                options = options.until(t);
            }
            if let (Some(since), Some(until)) = (since, until)
                && since >= until
            {
                return Err(bad_input(format!(
                    "--since {} is not before --until {}; give a window that ends after it starts",
                    show_time(since),
                    show_time(until)
                )));
            }
            let manifest = manifest.or_else(|| out.as_deref().map(manifest_next_to));
            check_paths(&logs, out.as_deref(), manifest.as_deref())?;
            export(&logs, &options, out.as_deref(), manifest.as_deref())
        }
    }
}

fn export(
    logs: &[PathBuf],
    options: &ExportOptions,
    out: Option<&Path>,
    manifest: Option<&Path>,
) -> anyhow::Result<ExitCode> {
    let report = match out {
        None => meshgate_audit::export(logs, options, std::io::stdout().lock(), Path::new("-"))
            .map_err(|e| export_error(e, "the output on stdout is incomplete")),
        Some(out) => write_atomically(out, |file| {
            meshgate_audit::export(logs, options, file, out)
                .map_err(|e| export_error(e, &format!("{} was not written", out.display())))
        }),
    }?;
    warn_about_damage(&report);
    if let Some(path) = manifest {
        let output = out.map_or_else(|| "-".to_owned(), |p| p.display().to_string());
        let text = report.manifest(&output)?;
        write_atomically(path, |file| {
            file.write_all(text.as_bytes())
                .with_context(|| format!("{}: write", path.display()))
        })?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes `path` through a temporary file in its directory (mode 0600), synced and renamed into
/// place only when `write` succeeds, so a failed export leaves nothing that looks complete.
fn write_atomically<T>(
    path: &Path,
    write: impl FnOnce(&mut std::fs::File) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".meshgate-audit-")
        .tempfile_in(dir)
        .with_context(|| format!("cannot create a file in {}", dir.display()))?;
    let value = write(tmp.as_file_mut())?;
    tmp.as_file()
        .sync_all()
        .with_context(|| format!("{}: sync", path.display()))?;
    tmp.persist(path)
        .map_err(|e| e.error)
        .with_context(|| format!("{}: rename into place", path.display()))?;
    Ok(value)
}

/// A damaged log, in the words of `audit verify`, with what became of the export.
fn export_error(e: AuditError, what_became: &str) -> anyhow::Error {
    match e {
        AuditError::Chain { path, error } => anyhow::anyhow!(
            "{}: {}; {what_became} (--allow-damaged exports the whole records and notes the damage in the manifest)",
            path.display(),
            damage_line(&error)
        ),
        other => anyhow::Error::new(other),
    }
}

fn warn_about_damage(report: &ExportReport) {
    for input in &report.inputs {
        if let Some(error) = &input.damage {
            eprintln!(
                "warning: {}: {}; exported its {} whole records, skipped {} bad lines",
                input.path.display(),
                damage_line(error),
                input.records,
                input.skipped_lines
            );
        }
    }
}

/// `seq S (line L): <kind> — <what it means>`.
pub(super) fn damage_line(e: &ChainError) -> String {
    format!(
        "seq {} (line {}): {} — {}",
        e.seq,
        e.line,
        e.kind.code(),
        meaning(e.kind)
    )
}

fn meaning(kind: Damage) -> String {
    match kind {
        Damage::Edited => {
            "the record's hash does not match its content: it was changed after it was written"
        }
        Damage::Deleted => "sequence numbers skip from here: records were removed",
        Damage::Reordered => "this seq turns up after later ones: records were moved",
        Damage::Inserted => {
            "a repeated seq, or a record that does not link to the one before: a record was added or replaced"
        }
        Damage::Truncated => {
            "the final line has no newline: a write was cut short (a crash); the writer cuts it off when it next opens the log"
        }
        Damage::Malformed => {
            "the line is not an audit record (not JSON, a missing or unknown field, or too long)"
        }
        Damage::ForgedCheckpoint => {
            "this checkpoint does not hold together, or its signature or certificate chain does not verify"
        }
        Damage::TruncatedAfterCheckpoint => {
            "from this seq on no checkpoint signs the records although the last one promised one: the log was cut back or rewritten after its last good checkpoint"
        }
        Damage::CheckpointGap => {
            "from this seq on the records were not signed within the interval the checkpoint before them promised (or only a signing writer writes this record, where none ran): checkpoints are missing, or a later key re-signed older records"
        }
        Damage::TimeReversed => {
            "this record or checkpoint is dated more than 5 minutes before an earlier checkpoint, or a checkpoint before a record it signs"
        }
        Damage::UnexpectedSigner => {
            "this checkpoint is not signed by the identity --signer names (or the log has no checkpoint)"
        }
        Damage::Unsigned => {
            "the log has no checkpoint, so nothing signed vouches for it (a log written only by offline CLI commands has none; verify it without --bundle)"
        }
        other => return other.to_string(),
    }
    .to_owned()
}

/// `OUT.manifest.json`, next to OUT.
fn manifest_next_to(out: &Path) -> PathBuf {
    let mut name = out.as_os_str().to_owned();
    name.push(".manifest.json");
    PathBuf::from(name)
}

/// Refuses a log named twice, and an output or manifest that is one of the logs (it would be
/// replaced).
fn check_paths(
    logs: &[PathBuf],
    out: Option<&Path>,
    manifest: Option<&Path>,
) -> anyhow::Result<()> {
    let mut seen: Vec<(PathBuf, &Path)> = Vec::with_capacity(logs.len());
    for log in logs {
        // A log that cannot be resolved is reported when the export opens it.
        let Ok(real) = log.canonicalize() else {
            continue;
        };
        if let Some((_, first)) = seen.iter().find(|(r, _)| *r == real) {
            return Err(bad_input(format!(
                "--log {} and --log {} are the same file; name each log once",
                first.display(),
                log.display()
            )));
        }
        seen.push((real, log));
    }
    for (flag, path) in [("--out", out), ("--manifest", manifest)] {
        let Some(real) = path.and_then(|p| p.canonicalize().ok()) else {
            continue;
        };
        if let Some((_, log)) = seen.iter().find(|(r, _)| *r == real) {
            return Err(bad_input(format!(
                "{flag} {} is the log {}; write the export to a new file",
                real.display(),
                log.display()
            )));
        }
    }
    if let (Some(out), Some(manifest)) = (out, manifest)
        && out == manifest
    {
        return Err(bad_input(format!(
            "--manifest {} is also --out; give the manifest its own file",
            manifest.display()
        )));
    }
    Ok(())
}

/// clap parser for `--since`/`--until`.
fn parse_time(s: &str) -> Result<OffsetDateTime, String> {
    OffsetDateTime::parse(s, &Rfc3339).map_err(|_| {
        format!("{s:?} is not an RFC 3339 time; give one such as 2026-11-27T15:00:00Z")
    })
}

/// clap parser for `--format`.
fn parse_format(s: &str) -> Result<ExportFormat, String> {
    match s {
        "jsonl" => Ok(ExportFormat::Jsonl),
        "csv" => Ok(ExportFormat::Csv),
        "ocsf" => Ok(ExportFormat::Ocsf),
        _ => Err(format!(
            "{s:?} is not an export format; accepted: jsonl, csv, ocsf"
        )),
    }
}

fn show_time(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_else(|_| t.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_in_rfc_3339_only() {
        let t = parse_time("2026-11-27T15:00:00Z").unwrap();
        assert_eq!(t.unix_timestamp(), 1_795_791_600);
        assert_eq!(
            parse_time("2026-11-27T16:00:00+01:00").unwrap(),
            t,
            "offsets are honoured"
        );
        let err = parse_time("yesterday").unwrap_err();
        assert!(err.contains("\"yesterday\"") && err.contains("2026-11-27T15:00:00Z"));
        assert!(parse_time("2026-11-27").is_err());
    }

    #[test]
    fn formats_name_what_is_accepted() {
        assert_eq!(parse_format("csv"), Ok(ExportFormat::Csv));
        assert_eq!(parse_format("ocsf"), Ok(ExportFormat::Ocsf));
        assert_eq!(
            parse_format("xml").unwrap_err(),
            "\"xml\" is not an export format; accepted: jsonl, csv, ocsf"
        );
    }

    #[test]
    fn the_manifest_sits_next_to_the_output() {
        assert_eq!(
            manifest_next_to(Path::new("out/export.csv")),
            Path::new("out/export.csv.manifest.json")
        );
    }

    #[test]
    fn every_damage_kind_has_a_meaning() {
        let e = ChainError {
            seq: 5,
            line: 6,
            kind: Damage::Edited,
        };
        assert_eq!(
            damage_line(&e),
            "seq 5 (line 6): edited — the record's hash does not match its content: it was changed after it was written"
        );
    }
}
