//! The gateway's configuration: one TOML file parsed from a `&str` into typed values, unknown
//! keys rejected, secure defaults, and every setting that weakens security spelled `dangerous_*`.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use meshgate_identity::SpiffeId;
use rustls::pki_types::ServerName;

use crate::agent::CaUrl;
use crate::error::Error;

mod raw;

/// `gateway run`'s configuration, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// This gateway's own SPIFFE ID: the service it fronts.
    pub spiffe_id: SpiffeId,
    /// Where the agent keeps key, SVID and bundle.
    pub state_dir: PathBuf,
    /// The CA; the bootstrap token names it too, and must agree.
    pub ca_url: Option<CaUrl>,
    pub inbound: Option<Inbound>,
    pub outbound: Vec<Route>,
    /// The admin listener (`/healthz`, `/readyz`, `/metrics`, `/v1/identity`).
    pub admin: SocketAddr,
    pub limits: Limits,
    /// The audit log (JSON Lines).
    pub audit_path: Option<PathBuf>,
}

/// The mTLS listener in front of the local service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inbound {
    pub listen: SocketAddr,
    /// The local service, spoken to in plain HTTP/1.1.
    pub upstream: Target,
    /// The policy files, decided as one set.
    pub policy: Vec<PathBuf>,
}

/// A plain HTTP listener on loopback for the local app, tunnelled over mTLS and HTTP/2 to the
/// gateway of another service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub name: String,
    pub listen: SocketAddr,
    pub target: Target,
    /// The SPIFFE ID the target gateway must present.
    pub expected_peer: SpiffeId,
}

/// `host:port` of a peer gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// As `TcpStream::connect` takes it (IPv6 without brackets).
    pub host: String,
    pub port: u16,
    /// As written: the `:authority` of requests when the app sent no Host.
    pub authority: String,
}

/// Limits on every listener. The defaults are those of a gateway facing hostile peers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Request head size (HTTP/1.1 read buffer; HTTP/2 header list).
    pub max_header_bytes: usize,
    pub header_read_timeout: Duration,
    pub handshake_timeout: Duration,
    /// A connection with no request in flight and no bytes moving for this long is closed.
    pub idle_timeout: Duration,
    /// Per listener.
    pub max_connections: usize,
    pub max_concurrent_streams: u32,
    /// Connecting to the upstream or to a peer gateway.
    pub connect_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_header_bytes: 16 * 1024,
            header_read_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            max_connections: 1024,
            max_concurrent_streams: 100,
            connect_timeout: Duration::from_secs(10),
        }
    }
}

/// Where the admin listener goes when the file does not say.
pub const DEFAULT_ADMIN: SocketAddr =
    SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 15000);

/// hyper's smallest read buffer; a smaller header limit would make it panic.
const MIN_HEADER_BYTES: usize = 8 * 1024;
const MAX_HEADER_BYTES: usize = 1024 * 1024;

impl Config {
    /// Parses and checks a config file's text. Relative paths stay relative: see `rebase`.
    pub fn parse(text: &str) -> Result<Self, Error> {
        let raw: raw::RawConfig = toml::from_str(text).map_err(|e| syntax_error(text, &e))?;
        raw.check()
    }

    /// Reads `path` and resolves the relative paths in it against the file's directory.
    pub fn load(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(Error::io(path))?;
        let config = Self::parse(&text).map_err(|e| match e {
            Error::Config(message) => Error::Config(format!("{}: {message}", path.display())),
            other => other,
        })?;
        let base = path.parent().unwrap_or_else(|| Path::new(""));
        Ok(config.rebase(base))
    }

    /// Makes every relative path relative to `base` instead.
    pub fn rebase(mut self, base: &Path) -> Self {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        fix(&mut self.state_dir);
        if let Some(inbound) = &mut self.inbound {
            inbound.policy.iter_mut().for_each(fix);
        }
        if let Some(audit) = &mut self.audit_path {
            fix(audit);
        }
        self
    }
}

impl Target {
    /// Parses `host:port` (`[v6]:port` for IPv6).
    pub fn parse(input: &str) -> Result<Self, &'static str> {
        let (host, port) = input
            .rsplit_once(':')
            .ok_or("expected host:port, such as payments.internal:8443")?;
        let port = port
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or("the port must be 1 to 65535")?;
        let host = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            Some(v6) => v6
                .parse::<std::net::Ipv6Addr>()
                .map_err(|_| "the bracketed host is not an IPv6 address")?
                .to_string(),
            None => host.to_ascii_lowercase(),
        };
        if host.is_empty() {
            return Err("the host is empty");
        }
        let target = Self {
            host,
            port,
            authority: input.to_owned(),
        };
        target
            .server_name()
            .ok_or("the host is not a DNS name or an IP address")?;
        Ok(target)
    }

    /// The name sent in SNI; the peer is authenticated by its SPIFFE ID, not by this name.
    pub fn server_name(&self) -> Option<ServerName<'static>> {
        ServerName::try_from(self.host.clone()).ok()
    }
}

/// A TOML or format error as one line: where it is and what is wrong.
fn syntax_error(text: &str, e: &toml::de::Error) -> Error {
    let message = e.message().trim();
    match e.span() {
        Some(span) => {
            let before = text.get(..span.start).unwrap_or(text);
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            Error::Config(format!("line {line}, column {column}: {message}"))
        }
        None => Error::Config(message.to_owned()),
    }
}

#[cfg(test)]
mod tests;
