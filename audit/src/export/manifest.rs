//! The manifest of an export: for each log, what was read and whether its chain verified; for
//! the output, what was written and its SHA-256. It lets an auditor tie an export to its logs.

use serde::Serialize;
use time::OffsetDateTime;

use super::{ExportFormat, ExportReport, ExportedRange, InputReport, OCSF_VERSION};
use crate::record::format_time;
use crate::{AuditError, ChainError, ChainHash};

/// The manifest's own format version; bumped when a field changes meaning.
const MANIFEST_VERSION: u32 = 1;

impl ExportReport {
    /// The manifest as pretty JSON with a final newline. `output` names the export file as the
    /// reader should find it (the manifest sits next to it). Times are written like records'.
    pub fn manifest(&self, output: &str) -> Result<String, AuditError> {
        let manifest = Manifest {
            manifest_version: MANIFEST_VERSION,
            generator: concat!("meshgate-audit ", env!("CARGO_PKG_VERSION")),
            format: self.format.name(),
            output,
            output_bytes: self.output_bytes,
            output_sha256: &self.output_sha256,
            since: time_opt(self.since)?,
            until: time_opt(self.until)?,
            exported: Exported {
                records: self.exported,
                first_time: time_opt(self.first_time)?,
                last_time: time_opt(self.last_time)?,
            },
            ocsf: (self.format == ExportFormat::Ocsf).then(|| Ocsf {
                version: OCSF_VERSION,
                classes: self
                    .ocsf_classes
                    .iter()
                    .map(|c| OcsfClassOut {
                        class_uid: c.class.uid(),
                        class_name: c.class.name(),
                        events: c.events,
                    })
                    .collect(),
            }),
            inputs: self.inputs.iter().map(Input::new).collect(),
        };
        let mut text = serde_json::to_string_pretty(&manifest)
            .map_err(|_| AuditError::Internal("the export manifest did not serialize"))?;
        text.push('\n');
        Ok(text)
    }
}

#[derive(Serialize)]
struct Manifest<'a> {
    manifest_version: u32,
    generator: &'static str,
    format: &'static str,
    output: &'a str,
    output_bytes: u64,
    output_sha256: &'a str,
    /// The window: `since` inclusive, `until` exclusive; `null` for open.
    since: Option<String>,
    until: Option<String>,
    exported: Exported,
    /// Only for an OCSF export.
    #[serde(skip_serializing_if = "Option::is_none")]
    ocsf: Option<Ocsf>,
    inputs: Vec<Input<'a>>,
}

/// The OCSF version and the events written of each class (every class, zeros too), so that an
/// auditor sees that the classes add up to the records exported: none was left out.
#[derive(Serialize)]
struct Ocsf {
    version: &'static str,
    classes: Vec<OcsfClassOut>,
}

#[derive(Serialize)]
struct OcsfClassOut {
    class_uid: u32,
    class_name: &'static str,
    events: u64,
}

#[derive(Serialize)]
struct Exported {
    records: u64,
    first_time: Option<String>,
    last_time: Option<String>,
}

#[derive(Serialize)]
struct Input<'a> {
    log: String,
    /// `ok` or `damaged`.
    verify: &'static str,
    damage: Option<DamageOut>,
    records: u64,
    first_seq: u64,
    last_seq: u64,
    head: &'a ChainHash,
    skipped_lines: u64,
    exported: Range<'a>,
}

#[derive(Serialize)]
struct DamageOut {
    seq: u64,
    line: u64,
    kind: &'static str,
    message: String,
}

#[derive(Serialize)]
struct Range<'a> {
    records: u64,
    first_seq: u64,
    last_seq: u64,
    first_prev: Option<&'a ChainHash>,
    last_hash: Option<&'a ChainHash>,
    contiguous: bool,
}

impl<'a> Input<'a> {
    fn new(input: &'a InputReport) -> Self {
        let ExportedRange {
            records,
            first_seq,
            last_seq,
            ref first_prev,
            ref last_hash,
            contiguous,
        } = input.exported;
        Self {
            log: input.path.display().to_string(),
            verify: if input.damage.is_some() {
                "damaged"
            } else {
                "ok"
            },
            damage: input.damage.map(|e: ChainError| DamageOut {
                seq: e.seq,
                line: e.line,
                kind: e.kind.code(),
                message: e.kind.to_string(),
            }),
            records: input.records,
            first_seq: input.first_seq,
            last_seq: input.last_seq,
            head: &input.head,
            skipped_lines: input.skipped_lines,
            exported: Range {
                records,
                first_seq,
                last_seq,
                first_prev: first_prev.as_ref(),
                last_hash: last_hash.as_ref(),
                contiguous,
            },
        }
    }
}

fn time_opt(t: Option<OffsetDateTime>) -> Result<Option<String>, AuditError> {
    t.map(format_time).transpose()
}
