//! Decisions per second of `PolicySet::evaluate` for 10, 100 and 1,000 rules, in two shapes:
//! `mesh` spreads the rules over many service files plus mesh-wide guardrails (the usual case);
//! `one-service` puts them all in one service file, a tenth with wildcard peers.
//!
//! Run: `cargo bench -p meshgate-policy -- --warm-up-time 1 --measurement-time 3`

#![expect(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    reason = "benchmark setup with fixed, known-good input"
)]

use std::fmt::Write as _;
use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use meshgate_identity::SpiffeId;
use meshgate_policy::{PolicyFile, PolicySet, Request};

const TD: &str = "spiffe://bank.example";

fn service(i: usize) -> String {
    format!("{TD}/ns/svc{i}/sa/api")
}

fn client(i: usize) -> String {
    format!("{TD}/ns/team{i}/sa/client")
}

/// `n` rules: a tenth (at least two) mesh-wide guardrails, the rest ten to a service file.
fn mesh_shape(n: usize) -> Vec<(String, String)> {
    let guardrails = (n / 10).max(2);
    let mut mesh = String::from(
        "[[deny]]\nname = \"admin is for ops\"\npaths = [\"/admin/**\"]\nfrom_not = [\"spiffe://bank.example/ns/ops/**\"]\n",
    );
    for g in 1..guardrails {
        let _ = write!(
            mesh,
            "\n[[deny]]\nname = \"guard {g}\"\nto = [\"{}\"]\nfrom_not = [\"{TD}/ns/svc{g}/**\", \"{}\"]\n",
            service(g),
            client(g)
        );
    }
    let mut files = vec![("mesh.toml".to_owned(), mesh)];
    let services = (n - guardrails).div_ceil(10);
    let mut left = n - guardrails;
    for s in 0..services {
        let mut text = format!("service = \"{}\"\n", service(s));
        for r in 0..left.min(10) {
            let from = if r == 9 {
                format!("{TD}/ns/team{}/**", s + r)
            } else {
                client(s + r)
            };
            let _ = write!(
                text,
                "\n[[allow]]\nname = \"r{r}\"\nfrom = [\"{from}\"]\nmethods = [\"GET\", \"POST\"]\npaths = [\"/v1/res{r}\", \"/v1/res{r}/*\"]\n"
            );
        }
        left -= left.min(10);
        files.push((format!("svc{s}.toml"), text));
    }
    files
}

/// `n` rules in one service file: nine in ten name one exact peer, one in ten a namespace.
fn one_service_shape(n: usize) -> Vec<(String, String)> {
    let mut text = format!("service = \"{}\"\n", service(0));
    for r in 0..n {
        let from = if r % 10 == 9 {
            format!("{TD}/ns/team{r}/**")
        } else {
            client(r)
        };
        let kind = if r % 7 == 6 { "deny" } else { "allow" };
        let _ = write!(
            text,
            "\n[[{kind}]]\nname = \"r{r}\"\nfrom = [\"{from}\"]\nmethods = [\"GET\", \"POST\"]\npaths = [\"/v1/res{r}/**\"]\n"
        );
    }
    vec![("svc0.toml".to_owned(), text)]
}

fn compile(files: &[(String, String)]) -> PolicySet {
    PolicySet::compile(
        files
            .iter()
            .map(|(name, text)| PolicyFile::parse(name, text).unwrap()),
    )
    .unwrap()
}

/// A mix of requests: allowed, denied by default, denied by a guardrail, unknown peers.
fn requests(n: usize) -> Vec<(SpiffeId, SpiffeId, &'static str, String)> {
    let services = n.div_ceil(10).max(1);
    (0..64)
        .map(|k| {
            let s = k % services;
            let r = k % 10;
            let from = match k % 4 {
                0 | 1 => client(s + r),
                2 => client(1000 + k),
                _ => format!("{TD}/ns/ops/sa/admin"),
            };
            let path = if k % 8 == 7 {
                "/admin/x".to_owned()
            } else {
                format!("/v1/res{r}/{k}")
            };
            let method = if k % 3 == 0 { "DELETE" } else { "GET" };
            (
                SpiffeId::parse(&from).unwrap(),
                SpiffeId::parse(&service(s)).unwrap(),
                method,
                path,
            )
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    for (shape, build) in [
        ("mesh", mesh_shape as fn(usize) -> _),
        ("one-service", one_service_shape),
    ] {
        let mut group = c.benchmark_group(format!("evaluate/{shape}"));
        group.throughput(Throughput::Elements(1));
        for n in [10, 100, 1000] {
            let set = compile(&build(n));
            assert_eq!(set.rules().len(), n);
            let reqs = requests(n);
            let mut i = 0;
            group.bench_function(format!("{n} rules"), |b| {
                b.iter(|| {
                    let (from, to, method, path) = &reqs[i % reqs.len()];
                    i += 1;
                    black_box(set.evaluate(black_box(&Request::http(from, to, method, path))))
                });
            });
        }
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
