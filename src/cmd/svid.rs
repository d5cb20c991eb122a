//! `meshgate svid ...`: work with X.509-SVID files.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Subcommand;
use meshgate_identity::bundle::certs_from_pem;
use meshgate_identity::svid::{SvidError, summarize, verify_chain};
use meshgate_identity::{BundleSet, SpiffeId, TrustBundle, TrustDomain};
use rustls_pki_types::{CertificateDer, UnixTime};
use serde::Serialize;

use super::rfc3339;
use crate::exit::bad_input;

#[derive(Debug, Subcommand)]
pub enum SvidCommand {
    /// Show an SVID's SPIFFE ID, serial and validity, and check it against the X.509-SVID rules
    /// (and its chain, with --bundle). Exits 0 when valid, 1 when not.
    Inspect {
        /// PEM file: the leaf SVID first, then any intermediates.
        file: PathBuf,
        /// Trust bundle (PEM roots, or a SPIFFE bundle JSON) to verify the chain against.
        #[arg(long)]
        bundle: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Enroll with a bootstrap token: OUT/svid.pem, key.pem (0600), bundle.pem, state.json.
    Fetch {
        /// The bootstrap token (or set MESHGATE_BOOTSTRAP_TOKEN).
        #[arg(
            long,
            value_name = "TOKEN",
            env = "MESHGATE_BOOTSTRAP_TOKEN",
            hide_env_values = true
        )]
        token: String,
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// Renew once over mTLS with the SVID in DIR (written by `svid fetch`).
    Renew {
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
    },
}

pub fn run(cmd: SvidCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        SvidCommand::Inspect { file, bundle, json } => inspect(&file, bundle.as_deref(), json),
        SvidCommand::Fetch { token, out } => super::svid_agent::fetch(&token, &out),
        SvidCommand::Renew { dir } => super::svid_agent::renew(&dir),
    }
}

#[derive(Debug, Serialize)]
struct Report {
    file: String,
    spiffe_id: Option<String>,
    uri_sans: Vec<String>,
    serial: String,
    not_before: String,
    not_after: String,
    sha256: String,
    chain_length: usize,
    /// Whether the chain was checked against a bundle (only with --bundle).
    chain_checked: bool,
    valid: bool,
    rule: Option<&'static str>,
    error: Option<String>,
}

fn inspect(file: &Path, bundle_file: Option<&Path>, json: bool) -> anyhow::Result<ExitCode> {
    let chain = read_certs(file)?;
    let Some(leaf) = chain.first() else {
        return Err(bad_input(format!("{}: no certificate", file.display())));
    };
    let summary = summarize(leaf).map_err(|e| bad_input(format!("{}: {e}", file.display())))?;
    let leaf_id = match summary.uri_sans.as_slice() {
        [one] => SpiffeId::parse(one).ok(),
        _ => None,
    };
    let verdict: Result<(), SvidError> = match bundle_file {
        Some(path) => {
            let bundles = read_bundle(path, leaf_id.as_ref().map(SpiffeId::trust_domain))?;
            verify_chain(&chain, &bundles, UnixTime::now()).map(|_| ())
        }
        None => profile_only(&chain),
    };
    let report = Report {
        file: file.display().to_string(),
        spiffe_id: leaf_id.map(|id| id.to_string()),
        uri_sans: summary.uri_sans,
        serial: summary.serial.to_string(),
        not_before: rfc3339(i64::try_from(summary.not_before).unwrap_or(0)),
        not_after: rfc3339(i64::try_from(summary.not_after).unwrap_or(i64::MAX)),
        sha256: hex::encode(summary.sha256),
        chain_length: chain.len(),
        chain_checked: bundle_file.is_some(),
        valid: verdict.is_ok(),
        rule: verdict.as_ref().err().map(SvidError::rule),
        error: verdict.as_ref().err().map(ToString::to_string),
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
    }
    Ok(if report.valid {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(crate::exit::FAILURE)
    })
}

/// Without a bundle: the leaf profile, each intermediate's signing profile and the validity window.
fn profile_only(chain: &[CertificateDer<'_>]) -> Result<(), SvidError> {
    let (leaf, rest) = chain.split_first().ok_or(SvidError::NoCertificate)?;
    let info = meshgate_identity::svid::check_leaf(leaf)?;
    for der in rest {
        meshgate_identity::svid::check_signing_cert(der)?;
    }
    let now = UnixTime::now().as_secs();
    if now < info.not_before {
        return Err(SvidError::NotYetValid {
            not_before: info.not_before,
            now,
        });
    }
    if now > info.not_after {
        return Err(SvidError::Expired {
            not_after: info.not_after,
            now,
        });
    }
    Ok(())
}

fn print_report(r: &Report) {
    println!("file:        {}", r.file);
    println!(
        "SPIFFE ID:   {}",
        r.spiffe_id.as_deref().unwrap_or("(none)")
    );
    if r.uri_sans.len() > 1 {
        println!("URI SANs:    {}", r.uri_sans.join(", "));
    }
    println!("serial:      {}", r.serial);
    println!("not before:  {}", r.not_before);
    println!("not after:   {}", r.not_after);
    println!("SHA-256:     {}", r.sha256);
    println!("chain:       {} certificate(s)", r.chain_length);
    let scope = if r.chain_checked {
        "profile, validity and chain to the trust domain's bundle"
    } else {
        "profile and validity only; pass --bundle to verify the chain"
    };
    match (&r.rule, &r.error) {
        (Some(rule), Some(err)) => println!("verdict:     INVALID, rule {rule}: {err}"),
        _ => println!("verdict:     valid ({scope})"),
    }
}

fn read_certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    certs_from_pem(&bytes).map_err(|e| {
        bad_input(format!(
            "{}: not a PEM certificate file: {e}",
            path.display()
        ))
    })
}

/// Reads a bundle file (PEM or SPIFFE JSON). Roots that carry a SPIFFE trust domain ID belong to
/// that trust domain; roots without one are taken as the leaf's trust domain, which the operator
/// vouched for by naming the file.
fn read_bundle(path: &Path, leaf_td: Option<TrustDomain>) -> anyhow::Result<BundleSet> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let bad = |e: &dyn std::fmt::Display| bad_input(format!("{}: {e}", path.display()));
    let fallback = leaf_td.clone();
    let is_json = bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
    let roots = if is_json {
        let td = fallback.ok_or_else(|| {
            bad(&"a SPIFFE bundle needs a leaf with a SPIFFE ID to name its trust domain")
        })?;
        TrustBundle::from_jwks(td, &bytes)
            .map_err(|e| bad(&e))?
            .roots()
            .to_vec()
    } else {
        certs_from_pem(&bytes).map_err(|e| bad(&e))?
    };
    let mut by_td: std::collections::BTreeMap<TrustDomain, Vec<CertificateDer<'static>>> =
        Default::default();
    for root in roots {
        let td = summarize(&root)
            .ok()
            .and_then(|s| s.uri_sans.iter().find_map(|u| TrustDomain::parse(u).ok()))
            .or_else(|| leaf_td.clone());
        if let Some(td) = td {
            by_td.entry(td).or_default().push(root);
        }
    }
    let mut set = BundleSet::new();
    for (td, roots) in by_td {
        set.insert(TrustBundle::new(td, roots).map_err(|e| bad(&e))?);
    }
    Ok(set)
}
