//! `meshgate-loadgen`: the command line over the library. Results go to stdout as one JSON
//! line (and `ready N` for `idle`); diagnostics go to stderr.

#![forbid(unsafe_code)]

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use meshgate_identity::SpiffeId;
use meshgate_loadgen::{Target, hold_idle, run_handshakes};

/// Benchmark load for loopback servers that verify client certificates (TLS 1.3, mTLS).
#[derive(Debug, Parser)]
#[command(name = "meshgate-loadgen", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Opens new connections with full mTLS handshakes (no resumption) for --duration and
    /// prints {"handshakes_per_sec", "handshakes", "errors", "seconds"}.
    Handshake {
        #[command(flatten)]
        target: TargetArgs,
        /// Connections in flight at once.
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        /// How long to keep opening connections: 10s, 1m.
        #[arg(long, default_value = "10s", value_parser = duration)]
        duration: Duration,
    },
    /// Opens --connections mTLS connections, prints `ready N` once they are open, keeps them
    /// idle for --hold, then prints {"opened", "errors", "closed_by_peer"} and exits.
    Idle {
        #[command(flatten)]
        target: TargetArgs,
        #[arg(long)]
        connections: usize,
        /// Handshakes in flight at once while opening.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        #[arg(long, default_value = "10s", value_parser = duration)]
        hold: Duration,
    },
}

#[derive(Debug, clap::Args)]
struct TargetArgs {
    /// The server, on loopback: 127.0.0.1:PORT.
    #[arg(long)]
    addr: SocketAddr,
    /// Our SVID: the leaf and its chain, PEM.
    #[arg(long, value_name = "FILE")]
    cert: PathBuf,
    /// Our private key, PEM.
    #[arg(long, value_name = "FILE")]
    key: PathBuf,
    /// The roots the server's SVID must chain to, PEM.
    #[arg(long, value_name = "FILE")]
    ca: PathBuf,
    /// The SPIFFE ID the server's SVID must carry.
    #[arg(long, value_name = "ID")]
    server_id: SpiffeId,
    /// SNI to send (none by default).
    #[arg(long, value_name = "NAME")]
    server_name: Option<String>,
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("meshgate-loadgen: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Command::Handshake {
            target,
            concurrency,
            duration,
        } => {
            let target = target.load()?;
            let report = runtime.block_on(run_handshakes(&target, concurrency, duration));
            if let Some(e) = &report.first_error {
                eprintln!("meshgate-loadgen: first error: {e}");
            }
            println!("{}", report.to_json());
        }
        Command::Idle {
            target,
            connections,
            concurrency,
            hold,
        } => {
            let target = target.load()?;
            let report =
                runtime.block_on(hold_idle(&target, connections, concurrency, hold, |n| {
                    println!("ready {n}");
                    let _ = std::io::stdout().flush();
                }));
            if let Some(e) = &report.first_error {
                eprintln!("meshgate-loadgen: first error: {e}");
            }
            println!("{}", report.to_json());
        }
    }
    Ok(())
}

impl TargetArgs {
    fn load(&self) -> anyhow::Result<Target> {
        anyhow::ensure!(
            self.addr.ip().is_loopback(),
            "--addr {}: this tool targets loopback addresses only (127.0.0.1)",
            self.addr
        );
        Target::from_files(
            self.addr,
            &self.cert,
            &self.key,
            &self.ca,
            self.server_id.clone(),
            self.server_name.as_deref(),
        )
    }
}

fn duration(text: &str) -> Result<Duration, String> {
    meshgate_identity::parse_duration(text).map_err(|e| e.to_string())
}
