//! `meshgate svid fetch` and `meshgate svid renew`: the agent's enrollment and one renewal, for
//! workloads without a gateway (cron, scripts). The token text never appears in any output.

use std::path::Path;
use std::process::ExitCode;

use meshgate_gateway::agent::state::{BUNDLE_FILE, KEY_FILE, SVID_FILE};
use meshgate_gateway::{Agent, KeyType};
use meshgate_identity::api::BootstrapToken;

use super::rfc3339;
use crate::exit::bad_input;

/// `meshgate svid fetch --token T --out DIR`: enrolls and writes DIR/svid.pem, key.pem (0600),
/// bundle.pem, plus state.json for `svid renew`.
pub fn fetch(token_text: &str, out: &Path) -> anyhow::Result<ExitCode> {
    // TokenError never includes the text it was given.
    let token =
        BootstrapToken::parse(token_text).map_err(|e| bad_input(format!("--token: {e}")))?;
    let agent = runtime()?
        .block_on(Agent::enroll(&token, out, KeyType::default()))
        .map_err(agent_error)?;
    print_svid("enrolled", &agent, out);
    Ok(ExitCode::SUCCESS)
}

/// `meshgate svid renew --dir DIR`: one renewal over mTLS with the SVID in DIR.
pub fn renew(dir: &Path) -> anyhow::Result<ExitCode> {
    if !dir.is_dir() {
        return Err(bad_input(format!(
            "--dir {} is not a directory; give the directory `svid fetch --out` wrote",
            dir.display()
        )));
    }
    let mut agent = Agent::load(dir).map_err(agent_error)?;
    runtime()?.block_on(agent.renew()).map_err(agent_error)?;
    print_svid("renewed", &agent, dir);
    Ok(ExitCode::SUCCESS)
}

fn print_svid(what: &str, agent: &Agent, dir: &Path) {
    let info = &agent.svid().info;
    println!("{what} {}", info.spiffe_id);
    println!("serial:      {}", info.serial);
    println!(
        "not after:   {}",
        rfc3339(i64::try_from(info.not_after).unwrap_or(i64::MAX))
    );
    for file in [SVID_FILE, KEY_FILE, BUNDLE_FILE] {
        println!("wrote:       {}", dir.join(file).display());
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// Bad token claims or a directory without state.json are the caller's fault (exit 2).
fn agent_error(e: meshgate_gateway::Error) -> anyhow::Error {
    if e.is_bad_input() {
        bad_input(e.to_string())
    } else {
        anyhow::Error::new(e)
    }
}
