//! The `meshgate` command line: parses arguments, calls the crates, maps errors to exit codes.
//! No logic of its own lives here.

#![forbid(unsafe_code)]

// `println!` and `print!` for every command: output to a closed pipe (`meshgate ... | head -1`)
// ends the program quietly instead of panicking. Defined before the modules so that it shadows
// the standard macros in all of them.
macro_rules! println {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!(std::io::stdout(), $($arg)*) {
            $crate::exit::stdout_failed(&e)
        }
    }};
}

macro_rules! print {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = write!(std::io::stdout(), $($arg)*) {
            $crate::exit::stdout_failed(&e)
        }
    }};
}

// mimalloc: about 5% fewer instructions per proxied request on the outbound gateway and 7% on
// the inbound one than glibc's malloc (callgrind; docs/profiles/gateway-2026-11-27.md), at
// the same idle RSS (built without transparent huge pages).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod cmd;
mod exit;
mod logging;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "meshgate",
    version,
    about = "Service-identity mesh: SPIFFE CA, mTLS gateways, identity policy"
)]
struct Cli {
    /// How logs (the gateway's access log among them) are written to stderr: `text` for people,
    /// `json` (one object per line) for log pipelines. Levels come from MESHGATE_LOG.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "text",
        env = "MESHGATE_LOG_FORMAT"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Certificate authority: init, issue, bundle, list.
    #[command(subcommand)]
    Ca(cmd::ca::CaCommand),
    /// Work with X.509-SVID files.
    #[command(subcommand)]
    Svid(cmd::svid::SvidCommand),
    /// Identity policies: check and explain.
    #[command(subcommand)]
    Policy(cmd::policy::PolicyCommand),
    /// The gateway: mTLS inbound/outbound listeners with identity policy.
    Gateway(cmd::gateway::GatewayArgs),
    /// Audit logs: verify hash chains, export merged logs.
    #[command(subcommand)]
    Audit(cmd::audit::AuditCommand),
    /// Run the demo: a three-service bank on 127.0.0.1 with an embedded CA and the example policies.
    Demo,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // clap prints help and version itself; usage errors exit 2 as documented.
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(exit::BAD_INPUT)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    logging::init(cli.log_format);
    let result = match cli.command {
        Command::Ca(c) => cmd::ca::run(c),
        Command::Svid(c) => cmd::svid::run(c),
        Command::Policy(c) => cmd::policy::run(c),
        Command::Gateway(c) => cmd::gateway::run(c),
        Command::Audit(c) => cmd::audit::run(c),
        Command::Demo => cmd::demo::run(),
    };
    logging::flush();
    exit::finish(result)
}
