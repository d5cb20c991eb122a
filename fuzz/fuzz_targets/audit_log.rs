//! Fuzzes reading an audit log: chain verification, record streaming, the rotation-set and
//! checkpoint check, and every export format, on arbitrary file contents. Never a panic; damage
//! is reported, and a log that verifies exports without `--allow-damaged`.

#![no_main]

use std::io::Write as _;
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use meshgate_audit::{
    ExportFormat, ExportOptions, VerifyOptions, export, read_records, verify_file, verify_log,
};

fuzz_target!(|data: &[u8]| {
    let Ok(dir) = tempfile::tempdir() else {
        return;
    };
    let path = dir.path().join("audit.jsonl");
    let Ok(mut file) = std::fs::File::create(&path) else {
        return;
    };
    if file.write_all(data).is_err() {
        return;
    }
    drop(file);

    let sound = verify_file(&path).is_ok();
    if let Ok(records) = read_records(&path) {
        for record in records.take(10_000) {
            let _ = record;
        }
    }
    let _ = verify_log(&[&path], &VerifyOptions::new());
    for format in [ExportFormat::Jsonl, ExportFormat::Csv, ExportFormat::Ocsf] {
        let strict = export(
            &[&path],
            &ExportOptions::new(format),
            std::io::sink(),
            Path::new("out"),
        );
        if sound {
            assert!(strict.is_ok(), "a sound log failed to export as {format:?}: {strict:?}");
        }
        let _ = export(
            &[&path],
            &ExportOptions::new(format).allow_damaged(true),
            std::io::sink(),
            Path::new("out"),
        );
    }
});
