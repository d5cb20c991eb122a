//! `meshgate policy ...`: check policy files, and explain the decision for one request.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use meshgate_identity::SpiffeId;
use meshgate_policy::{
    Decision, Effect, Mode, PolicyErrors, PolicyFile, PolicySet, Request, Scope,
};
use serde::Serialize;

use super::parse_spiffe_id;
use crate::exit::{BAD_INPUT, bad_input};

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Parse and compile policy files; list every error as file:line:column. Exits 0 when all
    /// are valid, 2 otherwise.
    Check {
        /// Policy files (per-service and mesh-wide), checked together as one set.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Decide one request against policy files, and say which rule of which file decided and
    /// whether dry-run applied. Without --method and --path it is a TCP connection decision.
    Explain {
        /// Policy files (per-service and mesh-wide).
        #[arg(long = "policy", required = true, num_args = 1..)]
        policies: Vec<PathBuf>,
        /// The calling peer's SPIFFE ID.
        #[arg(long, value_parser = parse_spiffe_id)]
        from: SpiffeId,
        /// The called service's SPIFFE ID.
        #[arg(long, value_parser = parse_spiffe_id)]
        to: SpiffeId,
        /// HTTP method (uppercased).
        #[arg(long)]
        method: Option<String>,
        /// HTTP path, normalized, starting with '/'.
        #[arg(long)]
        path: Option<String>,
        /// Host (Host header or SNI).
        #[arg(long)]
        host: Option<String>,
        #[arg(long)]
        port: Option<u16>,
        #[arg(long)]
        json: bool,
    },
}

pub fn run(cmd: PolicyCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        PolicyCommand::Check { files } => check(&files),
        PolicyCommand::Explain {
            policies,
            from,
            to,
            method,
            path,
            host,
            port,
            json,
        } => {
            let method = method.map(|m| m.to_ascii_uppercase());
            if let Some(p) = path.as_deref().filter(|p| !p.starts_with('/')) {
                return Err(bad_input(format!(
                    "--path {p:?} does not start with '/'; give the request's path, such as /v1/charges"
                )));
            }
            let request = Request {
                from: &from,
                to: &to,
                method: method.as_deref(),
                path: path.as_deref(),
                host: host.as_deref(),
                port,
            };
            explain(&policies, &request, json)
        }
    }
}

fn check(paths: &[PathBuf]) -> anyhow::Result<ExitCode> {
    let (files, mut errors) = load(paths);
    if errors.is_empty() {
        match PolicySet::compile(files) {
            Ok(set) => {
                for f in set.files() {
                    let what = match (f.service(), f.mode()) {
                        (Some(service), Mode::DryRun) => format!("service {service}, dry-run"),
                        (Some(service), _) => format!("service {service}, enforce"),
                        (None, _) => "mesh-wide".to_owned(),
                    };
                    let rules = if f.rule_count() == 1 { "rule" } else { "rules" };
                    println!("{}: ok ({what}, {} {rules})", f.name(), f.rule_count());
                }
                return Ok(ExitCode::SUCCESS);
            }
            Err(e) => errors.extend(e.into_iter().map(|e| e.to_string())),
        }
    }
    for e in &errors {
        eprintln!("{e}");
    }
    let noun = if errors.len() == 1 { "error" } else { "errors" };
    let files = if paths.len() == 1 { "file" } else { "files" };
    eprintln!(
        "policy check: {} {noun} in {} {files}",
        errors.len(),
        paths.len()
    );
    Ok(ExitCode::from(BAD_INPUT))
}

/// Reads and parses every file; returns the good ones and one line per error.
fn load(paths: &[PathBuf]) -> (Vec<PolicyFile>, Vec<String>) {
    let mut files = Vec::new();
    let mut errors = Vec::new();
    for path in paths {
        let name = path.display().to_string();
        match std::fs::read(path) {
            Ok(bytes) => match PolicyFile::parse_bytes(&name, &bytes) {
                Ok(file) => files.push(file),
                Err(e) => errors.extend(e.into_iter().map(|e| e.to_string())),
            },
            Err(e) => errors.push(format!("{name}: cannot read the file: {e}")),
        }
    }
    (files, errors)
}

#[derive(Debug, Serialize)]
struct Explanation<'a> {
    decision: &'static str,
    dry_run: bool,
    rule: Option<&'a str>,
    file: Option<&'a str>,
    /// The line of the rule's name in its file.
    line: Option<u32>,
    /// What the deciding rule itself says; with `dry_run`, "deny" although the decision allows.
    rule_effect: Option<&'static str>,
    /// "mesh" or "service": which kind of file the rule is in.
    scope: Option<&'static str>,
    /// "rule" when a rule decided, "default" when none matched.
    reason: &'static str,
    /// The target service's own file is in dry-run mode.
    service_dry_run: bool,
    request: RequestOut<'a>,
}

#[derive(Debug, Serialize)]
struct RequestOut<'a> {
    from: &'a str,
    to: &'a str,
    method: Option<&'a str>,
    path: Option<&'a str>,
    host: Option<&'a str>,
    port: Option<u16>,
}

fn explain(paths: &[PathBuf], request: &Request<'_>, json: bool) -> anyhow::Result<ExitCode> {
    let (files, errors) = load(paths);
    let set = if errors.is_empty() {
        PolicySet::compile(files)
            .map_err(|e: PolicyErrors| e.into_iter().map(|e| e.to_string()).collect::<Vec<_>>())
    } else {
        Err(errors)
    };
    let set = match set {
        Ok(set) => set,
        Err(errors) => {
            for e in &errors {
                eprintln!("{e}");
            }
            return Ok(ExitCode::from(BAD_INPUT));
        }
    };
    let decision = set.evaluate(request);
    let service_dry_run = set
        .files()
        .iter()
        .any(|f| f.service() == Some(request.to.as_str()) && f.mode() == Mode::DryRun);
    let out = explanation(&decision, request, service_dry_run);
    if json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print!("{}", text(&out));
    }
    Ok(ExitCode::SUCCESS)
}

fn explanation<'a>(d: &Decision<'a>, r: &Request<'a>, service_dry_run: bool) -> Explanation<'a> {
    Explanation {
        decision: effect_name(d.effect),
        dry_run: d.dry_run,
        rule: d.rule_name(),
        file: d.file,
        line: d.rule.map(|rule| rule.line()),
        rule_effect: d.rule.map(|rule| effect_name(rule.effect())),
        scope: d.rule.map(|rule| {
            if rule.scope() == Scope::Mesh {
                "mesh"
            } else {
                "service"
            }
        }),
        reason: if d.rule.is_some() { "rule" } else { "default" },
        service_dry_run,
        request: RequestOut {
            from: r.from.as_str(),
            to: r.to.as_str(),
            method: r.method,
            path: r.path,
            host: r.host,
            port: r.port,
        },
    }
}

fn text(e: &Explanation<'_>) -> String {
    let r = &e.request;
    let mut what = [r.method, r.path]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(" ");
    if what.is_empty() {
        what = "(TCP connection)".to_owned();
    }
    if let Some(host) = r.host {
        what.push_str(&format!(" host {host}"));
    }
    if let Some(port) = r.port {
        what.push_str(&format!(" port {port}"));
    }
    let rule = match (e.rule, e.rule_effect, e.scope, e.line) {
        (Some(name), Some(effect), Some(scope), Some(line)) => {
            let scope = if scope == "mesh" {
                "mesh-wide"
            } else {
                "service"
            };
            format!("{name:?} ({effect} rule, {scope}, line {line})")
        }
        _ if e.dry_run => "none matched, so the default would deny".to_owned(),
        _ => "none matched, so the default denies".to_owned(),
    };
    let dry_run = match (e.dry_run, e.service_dry_run) {
        (true, _) => "yes: would be denied; allowed because the service's file is in dry-run mode",
        (false, true) if e.decision == "deny" => {
            "no: mesh-wide denies are enforced even when the service's file is in dry-run mode"
        }
        (false, true) => {
            "no (the service's file is in dry-run mode; this request is allowed anyway)"
        }
        (false, false) => "no",
    };
    format!(
        "request:  {} -> {}  {what}\ndecision: {}\nrule:     {rule}\nfile:     {}\ndry-run:  {dry_run}\n",
        r.from,
        r.to,
        e.decision,
        e.file.unwrap_or("none (the service has no policy file)"),
    )
}

fn effect_name(effect: Effect) -> &'static str {
    match effect {
        Effect::Allow => "allow",
        Effect::Deny => "deny",
    }
}
