//! Write throughput: events per second through an `AuditSink` (a 4096-event queue, as the CA and
//! gateways use, in front of one writer thread that appends in batches of up to `MAX_BATCH` and
//! syncs once per batch with fdatasync) into a file on the disk under the target directory.
//! Each iteration records 10,000 events and then flushes, so every event counted is on disk.
//!
//! Run: `cargo bench -p meshgate-audit --bench write -- --warm-up-time 1 --measurement-time 3`
//! (and `--example throughput` for a longer run that also reports CPU per event and batch sizes).

#![expect(
    clippy::unwrap_used,
    reason = "benchmark setup with fixed, known-good input"
)]

use std::hint::black_box;
use std::path::PathBuf;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use meshgate_audit::{AuditSink, AuditWriter, Component};

#[path = "../examples/common/mod.rs"]
mod common;
use common::event;

/// Events per iteration.
const EVENTS: u64 = 10_000;
/// The queue the CA and gateways give their sinks.
const QUEUE: usize = 4096;
/// Events per sync in the writer benchmark.
const WRITER_BATCH: u64 = 1024;

/// A temporary directory on a real disk (the target directory), not a tmpfs where fsync is free.
fn bench_dir() -> tempfile::TempDir {
    let base =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| PathBuf::from("target"), PathBuf::from);
    std::fs::create_dir_all(&base).unwrap();
    tempfile::tempdir_in(base).unwrap()
}

fn sink(c: &mut Criterion) {
    let mut group = c.benchmark_group("audit_sink");
    group.throughput(Throughput::Elements(EVENTS));
    group.sample_size(10);

    for producers in [1_u64, 4] {
        let dir = bench_dir();
        let (writer, _) =
            AuditWriter::open(dir.path().join("audit.jsonl"), Component::Gateway).unwrap();
        let sink = AuditSink::spawn(writer, QUEUE).unwrap();
        group.bench_function(format!("record+flush/{producers}_producers"), |b| {
            b.iter(|| {
                std::thread::scope(|s| {
                    for p in 0..producers {
                        let sink = &sink;
                        s.spawn(move || {
                            for i in (p..EVENTS).step_by(producers as usize) {
                                sink.record(black_box(event(i))).unwrap();
                            }
                        });
                    }
                });
                sink.flush().unwrap();
            });
        });
        sink.shutdown().unwrap();
    }
    group.finish();
}

/// The same events appended by the caller's thread straight to an `AuditWriter`, synced every
/// 1,024 events (the sink's old batch cap, kept so runs compare across versions): the cost of
/// encoding, hashing and writing without the queue and thread hand-off.
fn writer(c: &mut Criterion) {
    let mut group = c.benchmark_group("audit_writer");
    group.throughput(Throughput::Elements(EVENTS));
    group.sample_size(10);
    let dir = bench_dir();
    let (mut writer, _) =
        AuditWriter::open(dir.path().join("audit.jsonl"), Component::Gateway).unwrap();
    group.bench_function("append+sync_per_batch", |b| {
        b.iter(|| {
            for i in 0..EVENTS {
                writer.append(&black_box(event(i))).unwrap();
                if (i + 1) % WRITER_BATCH == 0 {
                    writer.sync().unwrap();
                }
            }
            writer.sync().unwrap();
        });
    });
    group.finish();
}

criterion_group!(benches, sink, writer);
criterion_main!(benches);
