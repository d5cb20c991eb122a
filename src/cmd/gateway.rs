//! `meshgate gateway run`: reads the config, takes the bootstrap token from the flag, a file or
//! `MESHGATE_BOOTSTRAP_TOKEN`, and runs the gateway until SIGINT or SIGTERM. The token text is
//! never printed, logged, or put into an error message.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use meshgate_gateway::Config;
use meshgate_identity::api::BootstrapToken;

use crate::exit::bad_input;

/// `meshgate gateway ...`
#[derive(Debug, clap::Args)]
pub struct GatewayArgs {
    #[command(subcommand)]
    command: GatewayCommand,
}

#[derive(Debug, clap::Subcommand)]
enum GatewayCommand {
    /// Run the gateway: enroll (or reuse the SVID in state_dir), then serve the inbound, outbound
    /// and admin listeners of the config until SIGINT or SIGTERM.
    Run(RunArgs),
}

#[derive(clap::Args)]
struct RunArgs {
    /// The gateway's TOML config file.
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
    /// A bootstrap token from `meshgate ca token create`; needed only when state_dir holds no
    /// valid SVID for the config's spiffe_id.
    #[arg(
        long,
        value_name = "TOKEN",
        env = "MESHGATE_BOOTSTRAP_TOKEN",
        hide_env_values = true
    )]
    bootstrap_token: Option<String>,
    /// A file holding the bootstrap token (keeps it out of the process list); takes precedence
    /// over --bootstrap-token and MESHGATE_BOOTSTRAP_TOKEN.
    #[arg(long, value_name = "FILE")]
    bootstrap_token_file: Option<PathBuf>,
    /// Threads that serve connections (Envoy's --concurrency); at least 1. Default: one per CPU.
    #[arg(long, value_name = "N", env = "MESHGATE_WORKER_THREADS")]
    worker_threads: Option<String>,
}

impl fmt::Debug for RunArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RunArgs")
            .field("config", &self.config)
            .field(
                "bootstrap_token",
                &self.bootstrap_token.as_ref().map(|_| "<redacted>"),
            )
            .field("bootstrap_token_file", &self.bootstrap_token_file)
            .field("worker_threads", &self.worker_threads)
            .finish()
    }
}

pub fn run(args: GatewayArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        GatewayCommand::Run(args) => run_gateway(args),
    }
}

fn run_gateway(args: RunArgs) -> anyhow::Result<ExitCode> {
    let worker_threads = args
        .worker_threads
        .as_deref()
        .map(parse_worker_threads)
        .transpose()?;
    let config = Config::load(&args.config).map_err(gateway_error)?;
    let token = match (&args.bootstrap_token_file, &args.bootstrap_token) {
        (Some(file), _) => Some(read_token_file(file)?),
        (None, Some(text)) => Some(parse_token(
            text,
            "--bootstrap-token (or MESHGATE_BOOTSTRAP_TOKEN)",
        )?),
        (None, None) => None,
    };
    let has_token = token.is_some();
    // One worker is a single-threaded runtime, as nginx's or HAProxy's one worker: no work
    // stealing, no wakeups of other threads.
    let mut builder = match worker_threads {
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        Some(n) => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n);
            b
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    // Access-log lines are written in batches, whenever the runtime runs out of work.
    crate::logging::enable_batching();
    builder.on_thread_park(crate::logging::flush);
    let runtime = builder.enable_all().build()?;
    runtime.spawn(crate::logging::flush_every(Duration::from_secs(1)));
    runtime
        .block_on(meshgate_gateway::run(config, token, shutdown_signal()))
        .map_err(|e| match e {
            meshgate_gateway::Error::NoState { .. } if !has_token => bad_input(format!(
                "{e}; to enroll, give --bootstrap-token, --bootstrap-token-file or MESHGATE_BOOTSTRAP_TOKEN"
            )),
            e => gateway_error(e),
        })?;
    Ok(ExitCode::SUCCESS)
}

/// `--worker-threads` (or MESHGATE_WORKER_THREADS): a whole number of at least 1. Parsed here
/// rather than by clap so that 0 gets a sentence that says what is accepted; tokio would panic.
fn parse_worker_threads(text: &str) -> anyhow::Result<usize> {
    match text.trim().parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(bad_input(format!(
            "--worker-threads (or MESHGATE_WORKER_THREADS) {text:?}: expected a whole number of threads, at least 1"
        ))),
    }
}

/// The error never includes the text it was given.
fn parse_token(text: &str, source: &str) -> anyhow::Result<BootstrapToken> {
    BootstrapToken::parse(text).map_err(|e| bad_input(format!("{source}: {e}")))
}

fn read_token_file(path: &Path) -> anyhow::Result<BootstrapToken> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| bad_input(format!("--bootstrap-token-file {}: {e}", path.display())))?;
    parse_token(&text, &format!("--bootstrap-token-file {}", path.display()))
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
    tracing::info!("shutting down");
}

/// Bad config, policy files or token claims are the caller's fault (exit 2).
fn gateway_error(e: meshgate_gateway::Error) -> anyhow::Error {
    if e.is_bad_input() {
        bad_input(e.to_string())
    } else {
        anyhow::Error::new(e)
    }
}
