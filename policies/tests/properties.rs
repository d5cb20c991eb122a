//! Property tests of the decision function over random policy sets and requests: a matching deny
//! always wins, no matching rule means deny, dry-run never denies on its own account, and the
//! decision depends neither on the order of files nor on the order of rules.

// Test helpers are test code too; clippy.toml's in-tests allowances only reach #[test] fns.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use meshgate_identity::SpiffeId;
use meshgate_policy::{Effect, Mode, PolicyFile, PolicySet, Request, Rule, Scope};
use proptest::prelude::*;

const IDS: &[&str] = &[
    "spiffe://bank.example/ns/shop/sa/web",
    "spiffe://bank.example/ns/shop/sa/checkout",
    "spiffe://bank.example/ns/payments/sa/api",
    "spiffe://bank.example/ns/ledger/sa/api",
    "spiffe://bank.example/ns/ledger/sa/db",
    "spiffe://other.example/ns/shop/sa/web",
];
const ID_PATTERNS: &[&str] = &[
    "spiffe://bank.example/ns/shop/**",
    "spiffe://bank.example/ns/ledger/**",
    "spiffe://bank.example/ns/*/sa/api",
    "spiffe://bank.example/**",
    "spiffe://other.example/**",
];
const METHODS: &[&str] = &["GET", "POST", "DELETE"];
const PATHS: &[&str] = &["/", "/v1/a", "/v1/a/1", "/v1/b", "/admin", "/admin/x"];
const PATH_PATTERNS: &[&str] = &["/v1/a", "/v1/a/*", "/v1/**", "/admin/**", "/**", "/"];
const HOSTS: &[&str] = &["a.bank.example", "b.bank.example"];
const HOST_PATTERNS: &[&str] = &["a.bank.example", "*.bank.example"];
const PORTS: &[u16] = &[443, 8443];

#[derive(Debug, Clone)]
struct RuleSpec {
    deny: bool,
    from: Option<Vec<String>>,
    from_not: Option<Vec<String>>,
    to: Option<Vec<String>>,
    methods: Option<Vec<String>>,
    paths: Option<Vec<String>>,
    paths_not: Option<Vec<String>>,
    hosts: Option<Vec<String>>,
    ports: Option<Vec<u16>>,
}

#[derive(Debug, Clone)]
struct FileSpec {
    name: String,
    service: Option<(String, bool)>,
    rules: Vec<RuleSpec>,
}

fn pick(from: &'static [&'static str]) -> impl Strategy<Value = String> {
    prop::sample::select(from).prop_map(str::to_owned)
}

fn some_of(from: &'static [&'static str]) -> impl Strategy<Value = Option<Vec<String>>> {
    prop::option::weighted(0.4, prop::collection::vec(pick(from), 1..3))
}

fn id_patterns() -> impl Strategy<Value = Option<Vec<String>>> {
    let one = prop_oneof![pick(IDS), pick(ID_PATTERNS)];
    prop::option::weighted(0.5, prop::collection::vec(one, 1..3))
}

fn rule(mesh: bool) -> impl Strategy<Value = RuleSpec> {
    let to = if mesh {
        id_patterns().boxed()
    } else {
        Just(None).boxed()
    };
    let ports = prop::option::weighted(
        0.15,
        prop::collection::vec(prop::sample::select(PORTS), 1..3),
    );
    (
        any::<bool>(),
        id_patterns(),
        prop::option::weighted(
            0.2,
            prop::collection::vec(prop_oneof![pick(IDS), pick(ID_PATTERNS)], 1..3),
        ),
        to,
        some_of(METHODS),
        some_of(PATH_PATTERNS),
        prop::option::weighted(0.15, prop::collection::vec(pick(PATH_PATTERNS), 1..3)),
        prop::option::weighted(0.15, prop::collection::vec(pick(HOST_PATTERNS), 1..3)),
        ports,
    )
        .prop_map(
            |(deny, from, from_not, to, methods, paths, paths_not, hosts, ports)| RuleSpec {
                deny,
                from,
                from_not,
                to,
                methods,
                paths,
                paths_not,
                hosts,
                ports,
            },
        )
}

fn files() -> impl Strategy<Value = Vec<FileSpec>> {
    let mesh = prop::collection::vec(prop::collection::vec(rule(true), 0..5), 0..3);
    // Each of the first four IDs may have a service file, in enforce or dry-run mode.
    let services = prop::collection::vec(
        prop::option::of((any::<bool>(), prop::collection::vec(rule(false), 0..6))),
        4,
    );
    (mesh, services).prop_map(|(mesh, services)| {
        let mut out: Vec<FileSpec> = mesh
            .into_iter()
            .enumerate()
            .map(|(i, rules)| FileSpec {
                name: format!("mesh{i}.toml"),
                service: None,
                rules,
            })
            .collect();
        for (i, s) in services.into_iter().enumerate() {
            if let Some((dry_run, rules)) = s {
                let service = (IDS[i].to_owned(), dry_run);
                out.push(FileSpec {
                    name: format!("service{i}.toml"),
                    service: Some(service),
                    rules,
                });
            }
        }
        out
    })
}

#[derive(Debug, Clone)]
struct RequestSpec {
    from: &'static str,
    to: &'static str,
    http: Option<(&'static str, &'static str)>,
    host: Option<&'static str>,
    port: Option<u16>,
}

fn request() -> impl Strategy<Value = RequestSpec> {
    (
        prop::sample::select(IDS),
        prop::sample::select(&IDS[..5]),
        prop::option::weighted(
            0.8,
            (prop::sample::select(METHODS), prop::sample::select(PATHS)),
        ),
        prop::option::of(prop::sample::select(HOSTS)),
        prop::option::of(prop::sample::select(PORTS)),
    )
        .prop_map(|(from, to, http, host, port)| RequestSpec {
            from,
            to,
            http,
            host,
            port,
        })
}

fn list<T: std::fmt::Debug>(key: &str, values: &Option<Vec<T>>) -> String {
    // Debug of a string or integer is valid TOML for these values.
    values
        .as_ref()
        .map(|v| format!("{key} = {v:?}\n"))
        .unwrap_or_default()
}

/// Renders a file; `order` permutes its rules.
fn render(file: &FileSpec, order: &[usize]) -> String {
    let mut text = String::new();
    if let Some((service, dry_run)) = &file.service {
        let mode = if *dry_run { "dry-run" } else { "enforce" };
        text.push_str(&format!("service = \"{service}\"\nmode = \"{mode}\"\n"));
    }
    for &i in order {
        let r = &file.rules[i];
        text.push_str(if r.deny {
            "\n[[deny]]\n"
        } else {
            "\n[[allow]]\n"
        });
        text.push_str(&format!("name = \"r{i}\"\n"));
        text.push_str(&list("from", &r.from));
        text.push_str(&list("from_not", &r.from_not));
        text.push_str(&list("to", &r.to));
        text.push_str(&list("methods", &r.methods));
        text.push_str(&list("paths", &r.paths));
        text.push_str(&list("paths_not", &r.paths_not));
        text.push_str(&list("hosts", &r.hosts));
        text.push_str(&list("ports", &r.ports));
    }
    text
}

/// A deterministic Fisher-Yates shuffle of 0..n.
fn permutation(n: usize, seed: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    let mut state = seed | 1;
    for i in (1..n).rev() {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        order.swap(i, (state >> 33) as usize % (i + 1));
    }
    order
}

fn compile(files: &[FileSpec], seed: u64) -> PolicySet {
    let file_order = permutation(files.len(), seed);
    let parsed = file_order.iter().enumerate().map(|(k, &i)| {
        let f = &files[i];
        let text = render(
            f,
            &permutation(f.rules.len(), seed.rotate_left(k as u32 + 7)),
        );
        PolicyFile::parse(&f.name, &text).unwrap_or_else(|e| panic!("{e}\n{text}"))
    });
    PolicySet::compile(parsed).unwrap()
}

type Outcome = (Effect, Option<String>, Option<String>, bool);

fn decide(set: &PolicySet, r: &RequestSpec) -> Outcome {
    let (from, to) = (
        SpiffeId::parse(r.from).unwrap(),
        SpiffeId::parse(r.to).unwrap(),
    );
    let request = Request {
        from: &from,
        to: &to,
        method: r.http.map(|h| h.0),
        path: r.http.map(|h| h.1),
        host: r.host,
        port: r.port,
    };
    let d = set.evaluate(&request);
    (
        d.effect,
        d.rule_name().map(str::to_owned),
        d.file.map(str::to_owned),
        d.dry_run,
    )
}

/// The rules that match, by scanning them all (no index).
fn matching<'s>(set: &'s PolicySet, r: &RequestSpec) -> Vec<&'s Rule> {
    let (from, to) = (
        SpiffeId::parse(r.from).unwrap(),
        SpiffeId::parse(r.to).unwrap(),
    );
    let request = Request {
        from: &from,
        to: &to,
        method: r.http.map(|h| h.0),
        path: r.http.map(|h| h.1),
        host: r.host,
        port: r.port,
    };
    set.rules()
        .iter()
        .filter(|rule| rule.matches(&request))
        .collect()
}

fn dry_run_file(set: &PolicySet, name: &str) -> bool {
    set.files()
        .iter()
        .any(|f| f.name() == name && f.mode() == Mode::DryRun)
}

fn target_is_dry_run(set: &PolicySet, to: &str) -> bool {
    set.files()
        .iter()
        .any(|f| f.service() == Some(to) && f.mode() == Mode::DryRun)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn a_matching_deny_always_wins(files in files(), req in request()) {
        let set = compile(&files, 0);
        let enforced_deny = matching(&set, &req)
            .into_iter()
            .any(|r| r.effect() == Effect::Deny && (r.scope() == Scope::Mesh || !dry_run_file(&set, r.file())));
        let (effect, ..) = decide(&set, &req);
        if enforced_deny {
            prop_assert_eq!(effect, Effect::Deny);
        }
    }

    #[test]
    fn no_matching_rule_means_deny(files in files(), req in request()) {
        let set = compile(&files, 0);
        if matching(&set, &req).is_empty() {
            let (effect, rule, _, dry_run) = decide(&set, &req);
            prop_assert_eq!(rule, None);
            if target_is_dry_run(&set, req.to) {
                prop_assert_eq!((effect, dry_run), (Effect::Allow, true));
            } else {
                prop_assert_eq!((effect, dry_run), (Effect::Deny, false));
            }
        }
    }

    #[test]
    fn dry_run_never_denies(files in files(), req in request()) {
        // Without mesh-wide files, a dry-run service is never denied anything.
        let services_only: Vec<FileSpec> = files.into_iter().filter(|f| f.service.is_some()).collect();
        let set = compile(&services_only, 0);
        let (effect, rule, file, dry_run) = decide(&set, &req);
        if target_is_dry_run(&set, req.to) {
            prop_assert_eq!(effect, Effect::Allow);
            let deciding = |r: &&Rule| Some(r.name()) == rule.as_deref() && Some(r.file()) == file.as_deref();
            let would_deny = rule.is_none() || set.rules().iter().find(deciding).is_some_and(|r| r.effect() == Effect::Deny);
            prop_assert_eq!(dry_run, would_deny);
        } else {
            prop_assert!(!dry_run);
        }
    }

    #[test]
    fn dry_run_denies_only_by_a_mesh_wide_rule(files in files(), req in request()) {
        let set = compile(&files, 0);
        let (effect, _, file, _) = decide(&set, &req);
        if target_is_dry_run(&set, req.to) && effect == Effect::Deny {
            prop_assert!(file.as_deref().is_some_and(|f| f.starts_with("mesh")), "{:?}", file);
        }
    }

    #[test]
    fn the_decision_does_not_depend_on_order(files in files(), req in request(), seed in any::<u64>()) {
        let one = decide(&compile(&files, 0), &req);
        let two = decide(&compile(&files, seed), &req);
        prop_assert_eq!(one, two);
    }

    #[test]
    fn the_index_agrees_with_a_full_scan(files in files(), req in request()) {
        let set = compile(&files, 0);
        let hits = matching(&set, &req);
        let deny = |enforced: bool| hits.iter().any(|r| {
            r.effect() == Effect::Deny && ((r.scope() == Scope::Mesh || !dry_run_file(&set, r.file())) == enforced)
        });
        let expected = if deny(true) {
            (Effect::Deny, false)
        } else if deny(false) {
            (Effect::Allow, true)
        } else if hits.iter().any(|r| r.effect() == Effect::Allow) {
            (Effect::Allow, false)
        } else {
            (if target_is_dry_run(&set, req.to) { Effect::Allow } else { Effect::Deny }, target_is_dry_run(&set, req.to))
        };
        let (effect, rule, file, dry_run) = decide(&set, &req);
        prop_assert_eq!((effect, dry_run), expected);
        // The reported rule is the first matching one in the set's canonical order.
        let first = hits.first().map(|r| (r.name().to_owned(), r.file().to_owned()));
        prop_assert_eq!(rule.zip(file.clone()), first.clone());
        if first.is_none() {
            let service_file = set.files().iter().find(|f| f.service() == Some(req.to)).map(|f| f.name().to_owned());
            prop_assert_eq!(file, service_file);
        }
    }
}
