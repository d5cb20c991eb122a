//! `meshgate ca serve | token | revoke | rotate`: the CA's online and operator commands.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use meshgate_audit::{Action, AuditEvent, Component, Outcome};
use meshgate_ca::Authority;
use meshgate_ca::audit_log::append_once;
use meshgate_ca::server::{ServeConfig, start};
use meshgate_identity::{Serial, SpiffeId};
use time::OffsetDateTime;

use super::ca::ca_err;
use super::{parse_duration_arg, parse_spiffe_id, rfc3339};
use crate::exit::bad_input;

#[derive(Debug, Args)]
pub struct ServeArgs {
    #[arg(long)]
    dir: PathBuf,
    /// Address of the enrollment API.
    #[arg(long, default_value = "127.0.0.1:8443", value_parser = parse_socket_addr)]
    listen: SocketAddr,
    /// Address of /healthz and /metrics; must be a loopback address.
    #[arg(long, default_value = "127.0.0.1:9443", value_parser = parse_socket_addr)]
    admin: SocketAddr,
    /// Lifetime of the SVIDs minted on enrollment and renewal (10s to 24h); agents renew at
    /// half-life.
    #[arg(long, default_value = "1h", value_parser = super::parse_duration_arg)]
    svid_ttl: Duration,
    /// Enrollments per second per client address.
    #[arg(long, default_value = "1")]
    enroll_rate: NonZeroU32,
    #[arg(long, default_value = "10")]
    enroll_burst: NonZeroU32,
    /// Signing requests (renewals) per second per client address.
    #[arg(long, default_value = "500")]
    sign_rate: NonZeroU32,
    #[arg(long, default_value = "500")]
    sign_burst: NonZeroU32,
    #[arg(long, default_value = "1024")]
    max_connections: usize,
    /// Connections one client address (IPv6: one /64) may hold at once.
    #[arg(long, default_value = "32")]
    max_connections_per_ip: usize,
    /// Rotate the audit log's file once it holds this many bytes.
    #[arg(long, value_name = "BYTES")]
    audit_max_file_bytes: Option<u64>,
    /// Rotate the audit log's file once its first record is this old (e.g. 1d).
    #[arg(long, value_name = "DURATION", value_parser = super::parse_duration_arg)]
    audit_max_file_age: Option<std::time::Duration>,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a bootstrap token; prints the token and nothing else.
    Create {
        #[arg(long)]
        dir: PathBuf,
        /// The SPIFFE ID the token enrolls.
        #[arg(long, value_parser = parse_spiffe_id)]
        spiffe_id: SpiffeId,
        /// Lifetime (at most 7d).
        #[arg(long, default_value = "15m", value_parser = parse_duration_arg)]
        ttl: Duration,
        /// How many enrollments it pays for.
        #[arg(long, default_value = "1")]
        uses: u32,
        /// The CA's URL as workloads reach it.
        #[arg(long, default_value = "https://127.0.0.1:8443")]
        ca_url: String,
    },
    /// List tokens (never their secrets).
    List {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token by its id (from `token list`).
    Revoke {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        id: i64,
    },
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["serial", "spiffe_id"])))]
pub struct RevokeArgs {
    #[arg(long)]
    dir: PathBuf,
    /// Serial number in hex, as `ca list` shows it.
    #[arg(long)]
    serial: Option<String>,
    /// Revoke every unexpired SVID of this ID.
    #[arg(long, value_parser = parse_spiffe_id)]
    spiffe_id: Option<SpiffeId>,
    #[arg(long)]
    reason: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum RotateCommand {
    /// Step 1: a new root enters the bundle (signs nothing yet).
    Prepare {
        #[arg(long)]
        dir: PathBuf,
    },
    /// Step 2: the new root's intermediate signs from now on.
    Activate {
        #[arg(long)]
        dir: PathBuf,
    },
    /// Step 3: the old root leaves the bundle (refused until 24h after activate without --force).
    Retire {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        force: bool,
    },
    /// Show the phase and what each root still signs.
    Status {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

pub fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    if !args.admin.ip().is_loopback() {
        return Err(bad_input(format!(
            "--admin {} is not a loopback address; the admin endpoints must stay on 127.0.0.1 or ::1",
            args.admin
        )));
    }
    if args.audit_max_file_bytes.is_some_and(|b| b < 64 * 1024) {
        return Err(bad_input(format!(
            "--audit-max-file-bytes {} is below 64 KiB; a checkpoint alone takes a few KiB, give e.g. 104857600",
            args.audit_max_file_bytes.unwrap_or_default()
        )));
    }
    if args
        .audit_max_file_age
        .is_some_and(|d| d < std::time::Duration::from_secs(60))
    {
        return Err(bad_input(
            "--audit-max-file-age is under a minute; rotate at most once a minute, give e.g. 1d",
        ));
    }
    let cfg = ServeConfig {
        listen: args.listen,
        admin: args.admin,
        max_connections: args.max_connections,
        max_connections_per_ip: args.max_connections_per_ip,
        enroll_per_second: args.enroll_rate,
        enroll_burst: args.enroll_burst,
        sign_per_second: args.sign_rate,
        sign_burst: args.sign_burst,
        svid_ttl: args.svid_ttl,
        audit_rotation: meshgate_audit::Rotation {
            max_bytes: args.audit_max_file_bytes,
            max_age: args.audit_max_file_age,
        },
        ..ServeConfig::default()
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let server = start(&args.dir, cfg).await.map_err(ca_err)?;
        println!(
            "meshgate CA serving https://{} (admin http://{})",
            server.addr, server.admin_addr
        );
        wait_for_signal().await?;
        server.shutdown().await;
        Ok(ExitCode::SUCCESS)
    })
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("cannot watch SIGINT")?,
        _ = term.recv() => {}
    }
    Ok(())
}

pub fn token(cmd: TokenCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        TokenCommand::Create {
            dir,
            spiffe_id,
            ttl,
            uses,
            ca_url,
        } => {
            check_ca_url(&ca_url)?;
            let mut ca = Authority::open(&dir).map_err(ca_err)?;
            let now = OffsetDateTime::now_utc();
            let (token, record) = ca
                .create_token(&spiffe_id, ttl, uses, &operator(), &ca_url, now)
                .map_err(ca_err)?;
            audit(&dir, &ca, Action::TokenCreate, spiffe_id.as_str(), |e| {
                e.with_detail("token_id", record.id)
                    .with_detail("uses", uses)
                    .with_detail("expires_at", record.expires_at)
            })?;
            println!("{}", token.reveal());
            Ok(ExitCode::SUCCESS)
        }
        TokenCommand::List { dir, json } => {
            let ca = Authority::open(&dir).map_err(ca_err)?;
            let tokens = ca.list_tokens().map_err(ca_err)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&tokens)?);
                return Ok(ExitCode::SUCCESS);
            }
            let now = OffsetDateTime::now_utc().unix_timestamp();
            println!(
                "{:<5} {:<9} {:<5} {:<22} SPIFFE ID",
                "ID", "STATE", "USES", "EXPIRES"
            );
            for t in &tokens {
                let state = if t.revoked_at.is_some() {
                    "revoked"
                } else if t.uses_left == 0 {
                    "spent"
                } else if t.expires_at <= now {
                    "expired"
                } else {
                    "active"
                };
                println!(
                    "{:<5} {:<9} {:<5} {:<22} {}",
                    t.id,
                    state,
                    t.uses_left,
                    rfc3339(t.expires_at),
                    t.spiffe_id
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        TokenCommand::Revoke { dir, id } => {
            let mut ca = Authority::open(&dir).map_err(ca_err)?;
            if !ca
                .revoke_token(id, OffsetDateTime::now_utc())
                .map_err(ca_err)?
            {
                return Err(bad_input(format!(
                    "no active token with id {id}; see `ca token list`"
                )));
            }
            audit(
                &dir,
                &ca,
                Action::TokenRevoke,
                &format!("token {id}"),
                |e| e.with_detail("token_id", id),
            )?;
            println!("revoked token {id}");
            Ok(ExitCode::SUCCESS)
        }
    }
}

pub fn revoke(args: RevokeArgs) -> anyhow::Result<ExitCode> {
    let mut ca = Authority::open(&args.dir).map_err(ca_err)?;
    let now = OffsetDateTime::now_utc();
    let reason = args.reason.as_deref();
    let revoked = match (&args.serial, &args.spiffe_id) {
        (Some(hex), _) => {
            let serial = Serial::parse_hex(hex)
                .ok_or_else(|| {
                    bad_input(format!(
                        "--serial {hex:?} is not a serial number; give it in hex as `ca list` shows it (1 to 40 hex digits)"
                    ))
                })?;
            ca.revoke_serial(&serial, reason, now).map_err(ca_err)?
        }
        (None, Some(id)) => ca.revoke_spiffe_id(id, reason, now).map_err(ca_err)?,
        (None, None) => return Err(bad_input("give --serial or --spiffe-id")),
    };
    for r in &revoked {
        audit(
            &args.dir,
            &ca,
            Action::SvidRevoke,
            r.spiffe_id.as_str(),
            |e| {
                let e = e.with_detail("serial", r.serial.to_string());
                match reason {
                    Some(text) => e.with_reason(text),
                    None => e,
                }
            },
        )?;
        println!("revoked {} (serial {})", r.spiffe_id, r.serial);
    }
    if revoked.is_empty() {
        println!("already revoked; nothing changed");
    }
    Ok(ExitCode::SUCCESS)
}

pub fn rotate(cmd: RotateCommand) -> anyhow::Result<ExitCode> {
    let now = OffsetDateTime::now_utc();
    match cmd {
        RotateCommand::Prepare { dir } => {
            let mut ca = Authority::open(&dir).map_err(ca_err)?;
            let root = ca.rotate_prepare(now).map_err(ca_err)?;
            audit(
                &dir,
                &ca,
                Action::RotatePrepare,
                &format!("root {}", root.serial),
                |e| e.with_detail("root_sha256", root.sha256.clone()),
            )?;
            println!(
                "prepared new root {} (SHA-256 {}); it is in the bundle and signs nothing yet",
                root.serial, root.sha256
            );
            println!(
                "next: wait until every gateway has refreshed its bundle, then `meshgate ca rotate activate`"
            );
        }
        RotateCommand::Activate { dir } => {
            let mut ca = Authority::open(&dir).map_err(ca_err)?;
            ca.rotate_activate(now).map_err(ca_err)?;
            audit(&dir, &ca, Action::RotateActivate, "root", |e| {
                e.with_detail("root_sha256", ca.root_sha256())
            })?;
            println!(
                "activated: the new root's intermediate signs from now on; the old root stays in the bundle"
            );
            println!(
                "next: `meshgate ca rotate retire` once the longest leaf lifetime (24h) has passed"
            );
        }
        RotateCommand::Retire { dir, force } => {
            let mut ca = Authority::open(&dir).map_err(ca_err)?;
            ca.rotate_retire(now, force).map_err(ca_err)?;
            audit(&dir, &ca, Action::RotateRetire, "root", |e| {
                e.with_detail("forced", force)
            })?;
            println!("retired: the old root left the bundle");
        }
        RotateCommand::Status { dir, json } => {
            let ca = Authority::open(&dir).map_err(ca_err)?;
            let status = ca.rotation_status(now).map_err(ca_err)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
                return Ok(ExitCode::SUCCESS);
            }
            println!("phase:           {:?}", status.phase);
            println!("bundle sequence: {}", status.bundle_sequence);
            if let Some(t) = status.retire_allowed_at {
                println!("retire allowed:  from {}", rfc3339(t));
            }
            println!(
                "{:<34} {:<9} {:<12} {:<22} SHA-256",
                "ROOT SERIAL", "STATE", "LIVE LEAVES", "NOT AFTER"
            );
            for r in &status.roots {
                println!(
                    "{:<34} {:<9} {:<12} {:<22} {}",
                    r.serial,
                    r.state.as_str(),
                    r.live_leaves,
                    rfc3339(r.not_after),
                    r.sha256
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Appends an operator action to the CA's audit log.
fn audit(
    dir: &Path,
    ca: &Authority,
    action: Action,
    subject: &str,
    extra: impl FnOnce(AuditEvent) -> AuditEvent,
) -> anyhow::Result<()> {
    let event = AuditEvent::new(
        Component::Cli,
        operator(),
        action,
        subject,
        Outcome::Success,
    )
    .with_trust_domain(ca.trust_domain().to_string());
    append_once(dir, extra(event)).map_err(|e| anyhow::anyhow!("the change is done, but {e}"))
}

/// `operator:<login>` of whoever runs the command.
pub(super) fn operator() -> String {
    use std::os::unix::fs::MetadataExt as _;
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .ok()
        .filter(|u| !u.is_empty())
        .or_else(|| {
            std::fs::metadata("/proc/self")
                .ok()
                .map(|m| format!("uid-{}", m.uid()))
        })
        .unwrap_or_else(|| "unknown".into());
    format!("operator:{user}")
}

/// clap parser for `--listen` and `--admin`: an IP address and a port, said with an example.
fn parse_socket_addr(s: &str) -> Result<SocketAddr, String> {
    s.parse().map_err(|_| {
        format!(
            "{:?} is not an IP address and port; expected e.g. 127.0.0.1:8443 or [::1]:8443 (port 0 to 65535)",
            s.chars().take(64).collect::<String>()
        )
    })
}

fn check_ca_url(url: &str) -> anyhow::Result<()> {
    let rest = url
        .strip_prefix("https://")
        .ok_or_else(|| bad_input(format!("--ca-url {url:?} must start with https://")))?;
    let host_port = rest.trim_end_matches('/');
    if host_port.is_empty() || host_port.contains('/') || !host_port.contains(':') {
        return Err(bad_input(format!(
            "--ca-url {url:?} must be https://HOST:PORT"
        )));
    }
    Ok(())
}
