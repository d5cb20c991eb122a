//! `meshgate ca ...`: the certificate authority's offline commands.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Subcommand, ValueEnum};
use meshgate_ca::keys::write_file_atomic;
use meshgate_ca::keys::write_secret_file;
use meshgate_ca::{Authority, CaError, KeyType};
use meshgate_identity::bundle::pem_encode;
use meshgate_identity::{SpiffeId, TrustDomain};
use time::OffsetDateTime;

use super::{parse_duration_arg, parse_spiffe_id, parse_trust_domain, rfc3339};
use crate::exit::bad_input;

#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Create a new CA (root and intermediate) in an empty directory.
    Init {
        /// Directory for the CA; must not exist or be empty.
        #[arg(long)]
        dir: PathBuf,
        /// Trust domain name, such as bank.example.
        #[arg(long, value_parser = parse_trust_domain)]
        trust_domain: TrustDomain,
        /// Key type of the CA's keys and of the keys `ca issue` makes.
        #[arg(long, value_enum, default_value = "ecdsa-p256")]
        key_type: KeyTypeArg,
    },
    /// Issue an X.509-SVID with a key made here; writes OUT/svid.pem, OUT/key.pem, OUT/bundle.pem.
    Issue {
        #[arg(long)]
        dir: PathBuf,
        /// The SPIFFE ID to issue, inside the CA's trust domain.
        #[arg(long, value_parser = parse_spiffe_id)]
        spiffe_id: SpiffeId,
        /// Lifetime, such as 1h or 15m (at most 24h).
        #[arg(long, default_value = "1h", value_parser = parse_duration_arg)]
        ttl: Duration,
        /// A DNS name to add as a SAN (for edge gateways); repeatable.
        #[arg(long = "dns")]
        dns: Vec<String>,
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
    },
    /// Print the trust bundle.
    Bundle {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, value_enum, default_value = "pem")]
        format: BundleFormat,
    },
    /// List the certificates this CA issued.
    List {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Serve the enrollment API (HTTPS, TLS 1.3) and the admin endpoints (loopback).
    Serve(super::ca_ops::ServeArgs),
    /// Bootstrap tokens: create, list, revoke.
    #[command(subcommand)]
    Token(super::ca_ops::TokenCommand),
    /// Revoke issued SVIDs by serial or by SPIFFE ID; they can no longer renew and are listed in
    /// /v1/revocations.
    Revoke(super::ca_ops::RevokeArgs),
    /// Root rotation in three steps: prepare, activate, retire; and status.
    #[command(subcommand)]
    Rotate(super::ca_ops::RotateCommand),
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum KeyTypeArg {
    EcdsaP256,
    EcdsaP384,
    Ed25519,
}

impl From<KeyTypeArg> for KeyType {
    fn from(k: KeyTypeArg) -> Self {
        match k {
            KeyTypeArg::EcdsaP256 => KeyType::EcdsaP256,
            KeyTypeArg::EcdsaP384 => KeyType::EcdsaP384,
            KeyTypeArg::Ed25519 => KeyType::Ed25519,
        }
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum BundleFormat {
    /// Roots as PEM.
    Pem,
    /// SPIFFE bundle (JWKS).
    Spiffe,
}

pub fn run(cmd: CaCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        CaCommand::Init {
            dir,
            trust_domain,
            key_type,
        } => init(&dir, trust_domain, key_type.into()),
        CaCommand::Issue {
            dir,
            spiffe_id,
            ttl,
            dns,
            out,
        } => issue(&dir, &spiffe_id, ttl, &dns, &out),
        CaCommand::Bundle { dir, format } => bundle(&dir, format),
        CaCommand::List { dir, json } => list(&dir, json),
        CaCommand::Serve(args) => super::ca_ops::serve(args),
        CaCommand::Token(c) => super::ca_ops::token(c),
        CaCommand::Revoke(args) => super::ca_ops::revoke(args),
        CaCommand::Rotate(c) => super::ca_ops::rotate(c),
    }
}

fn init(dir: &Path, td: TrustDomain, key_type: KeyType) -> anyhow::Result<ExitCode> {
    let report = Authority::init(dir, td, key_type, OffsetDateTime::now_utc()).map_err(ca_err)?;
    let event = meshgate_audit::AuditEvent::new(
        meshgate_audit::Component::Cli,
        super::ca_ops::operator(),
        meshgate_audit::Action::CaInit,
        report.trust_domain.id().as_str(),
        meshgate_audit::Outcome::Success,
    )
    .with_trust_domain(report.trust_domain.to_string())
    .with_detail("root_sha256", report.root_sha256.clone())
    .with_detail("key_type", report.key_type.name());
    meshgate_ca::audit_log::append_once(dir, event)
        .map_err(|e| anyhow::anyhow!("the CA is created, but {e}"))?;
    println!(
        "Created a CA for trust domain {} in {} ({} keys)",
        report.trust_domain,
        dir.display(),
        report.key_type
    );
    println!("root SHA-256 fingerprint: {}", report.root_sha256);
    println!(
        "root valid until:         {}",
        rfc3339(report.root_not_after)
    );
    println!(
        "intermediate valid until: {}",
        rfc3339(report.intermediate_not_after)
    );
    Ok(ExitCode::SUCCESS)
}

fn issue(
    dir: &Path,
    id: &SpiffeId,
    ttl: Duration,
    dns: &[String],
    out: &Path,
) -> anyhow::Result<ExitCode> {
    let mut ca = Authority::open(dir).map_err(ca_err)?;
    let (issued, key) = ca
        .issue_with_new_key(id, dns, ttl, OffsetDateTime::now_utc())
        .map_err(ca_err)?;
    let bundle = ca.bundle().map_err(ca_err)?;
    create_private_dir(out)?;
    let chain_pem: String = issued
        .chain
        .iter()
        .map(|c| pem_encode("CERTIFICATE", c))
        .collect();
    write_secret_file(&out.join("key.pem"), key.serialize_pem().as_bytes()).map_err(ca_err)?;
    write_file_atomic(&out.join("svid.pem"), chain_pem.as_bytes(), 0o644).map_err(ca_err)?;
    write_file_atomic(&out.join("bundle.pem"), bundle.to_pem().as_bytes(), 0o644)
        .map_err(ca_err)?;
    let r = &issued.record;
    println!(
        "Issued {} (serial {}), valid until {}",
        r.spiffe_id,
        r.serial,
        rfc3339(r.not_after)
    );
    println!(
        "wrote {0}/svid.pem, {0}/key.pem (mode 0600), {0}/bundle.pem",
        out.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn bundle(dir: &Path, format: BundleFormat) -> anyhow::Result<ExitCode> {
    let ca = Authority::open(dir).map_err(ca_err)?;
    let bundle = ca.bundle().map_err(ca_err)?;
    match format {
        BundleFormat::Pem => print!("{}", bundle.to_pem()),
        BundleFormat::Spiffe => println!("{}", bundle.to_jwks()?),
    }
    Ok(ExitCode::SUCCESS)
}

fn list(dir: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let ca = Authority::open(dir).map_err(ca_err)?;
    let issued = ca.list().map_err(ca_err)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&issued)?);
        return Ok(ExitCode::SUCCESS);
    }
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let revoked: std::collections::HashSet<_> = ca
        .revocation_list()
        .map_err(ca_err)?
        .revoked
        .into_iter()
        .map(|r| r.serial)
        .collect();
    println!(
        "{:<34} {:<22} {:<8} SPIFFE ID",
        "SERIAL", "NOT AFTER", "STATUS"
    );
    for c in &issued {
        let status = if revoked.contains(&c.serial) {
            "revoked"
        } else if c.not_after < now {
            "expired"
        } else {
            "valid"
        };
        println!(
            "{:<34} {:<22} {:<8} {}",
            c.serial,
            rfc3339(c.not_after),
            status,
            c.spiffe_id
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    if dir.exists() && !dir.is_dir() {
        return Err(bad_input(format!(
            "--out {} is not a directory; give a directory (created if missing) for svid.pem, key.pem and bundle.pem",
            dir.display()
        )));
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create output directory {}", dir.display()))
}

/// CA errors caused by the caller's input exit 2; the rest exit 1.
pub(super) fn ca_err(e: CaError) -> anyhow::Error {
    if e.is_bad_input() {
        bad_input(e.to_string())
    } else {
        anyhow::Error::new(e)
    }
}
