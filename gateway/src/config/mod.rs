//! The gateway's configuration: one TOML file parsed from a `&str` into typed values, unknown
//! keys rejected, secure defaults, and every setting that weakens security spelled `dangerous_*`.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::Duration;

use meshgate_identity::SpiffeId;
use meshgate_policy::IdPattern;
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
    /// The audit log (`[audit]`): where, and whether allowed requests are recorded too.
    pub audit_path: Option<AuditLog>,
}

/// `[audit]`: the gateway's hash-chained JSON Lines audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditLog {
    pub path: PathBuf,
    /// Records allowed requests as well as denied ones (`log_allows`, default false).
    pub log_allows: bool,
    /// Rotates the file once it holds this many bytes (`max_file_bytes`, default none).
    pub max_file_bytes: Option<u64>,
    /// Rotates the file once its first record is this old (`max_file_age`, default none).
    pub max_file_age: Option<Duration>,
}

impl AuditLog {
    /// A log at `path` that records denials (and every other event) but not allowed requests,
    /// and is never rotated.
    pub fn at(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            log_allows: false,
            max_file_bytes: None,
            max_file_age: None,
        }
    }
}

/// The mTLS listener in front of the local service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inbound {
    pub listen: SocketAddr,
    /// The local service: in HTTP mode spoken to in plain HTTP/1.1 or h2c
    /// (`upstream.protocol`), in TCP mode given the connection's bytes.
    pub upstream: Target,
    /// The policy files, decided as one set.
    pub policy: Vec<PathBuf>,
    /// HTTP requests decided one by one, or TCP connections decided at connect.
    pub mode: Mode,
    /// TCP mode only: the header written to the local service before the peer's bytes, so that
    /// it learns the peer's address and SPIFFE ID (HTTP mode says so in XFCC instead).
    pub proxy_protocol: Option<ProxyProtocol>,
}

/// A loopback listener for the local app, tunnelled over mTLS to the gateway of another
/// service: HTTP requests over one pooled HTTP/2 connection, or (TCP mode) each TCP connection
/// over an mTLS connection of its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub name: String,
    pub listen: SocketAddr,
    pub target: Target,
    /// The SPIFFE ID the target gateway must present.
    pub expected_peer: SpiffeId,
    /// Must be the mode of the target gateway's inbound: the two modes offer different ALPN
    /// protocols, so a mismatch fails the handshake.
    pub mode: Mode,
}

/// What a listener carries (`mode`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Mode {
    /// HTTP requests, each decided by the policy (`"http"`, the default).
    #[default]
    Http,
    /// TCP connections (`"tcp"`): the policy decides once, at connect, on the peer's identity;
    /// then bytes are copied both ways until either side closes.
    Tcp,
}

/// The PROXY protocol header a TCP-mode inbound sends to its local service (`proxy_protocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProxyProtocol {
    /// HAProxy's binary version 2 (`"v2"`), with the peer's SPIFFE ID in a TLV.
    V2,
}

/// `host:port` of a peer gateway, or of the inbound's local service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// As `TcpStream::connect` takes it (IPv6 without brackets).
    pub host: String,
    pub port: u16,
    /// As written: the `:authority` of requests when the app sent no Host.
    pub authority: String,
    /// How the inbound speaks to its local service (`inbound.upstream_protocol`). Only the
    /// inbound's upstream reads it: the hop between gateways is always HTTP/2 over mTLS.
    pub protocol: UpstreamProtocol,
}

/// The plain-text protocol of the hop from the inbound listener to the local service.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum UpstreamProtocol {
    /// HTTP/1.1 (`"http1"`, the default). WebSocket upgrades pass; gRPC cannot (no trailers).
    #[default]
    Http1,
    /// HTTP/2 with prior knowledge over plain TCP (`"h2c"`), for gRPC services.
    H2c,
}

/// One `[[rate_limit]]` entry: the peers whose SPIFFE ID matches `peer` may send `rate`
/// requests per second each, with bursts of up to `burst`. Each matching peer has its own
/// bucket; the first matching entry decides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimit {
    /// The same pattern syntax as policies: exact, `*` for one segment, `**` for the rest.
    pub peer: IdPattern,
    /// Requests per second, sustained.
    pub rate: NonZeroU32,
    /// Requests that may arrive at once after a quiet spell.
    pub burst: NonZeroU32,
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
    /// How long the next hop (the local service, or the peer gateway of an outbound route) may
    /// take to send the head of its answer once the request, body included, has been sent; over
    /// it the caller gets a 504. Streams have no total limit: their bodies fail only after
    /// `idle_timeout` without a frame.
    pub response_timeout: Duration,
    /// Per-peer request rates on the inbound listener (`[[rate_limit]]`), in config order;
    /// none by default.
    pub rate_limits: Vec<RateLimit>,
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
            response_timeout: DEFAULT_RESPONSE_TIMEOUT,
            rate_limits: Vec::new(),
        }
    }
}

/// Envoy's default route timeout. Unlike Envoy's, ours ends when the answer's head arrives, so
/// streams and long downloads are not cut by it; a service that takes longer to start
/// answering (long polling) needs `limits.response_timeout` raised.
pub const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(15);

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
    /// A file that cannot be read or is not UTF-8 is the caller's fault (bad input), as is
    /// anything wrong inside it.
    pub fn load(path: &Path) -> Result<Self, Error> {
        let bytes = std::fs::read(path).map_err(|e| {
            Error::Config(format!(
                "cannot read {}: {e}; give --config the gateway's TOML file",
                path.display()
            ))
        })?;
        let text = std::str::from_utf8(&bytes).map_err(|e| {
            let valid = bytes.get(..e.valid_up_to()).unwrap_or_default();
            let line = valid.iter().filter(|&&b| b == b'\n').count() + 1;
            let column = valid.rsplit(|&b| b == b'\n').next().map_or(0, |l| {
                std::str::from_utf8(l).map_or(l.len(), |s| s.chars().count())
            }) + 1;
            Error::Config(format!(
                "{}: line {line}, column {column}: the file is not UTF-8 text; a config file is UTF-8 TOML",
                path.display()
            ))
        })?;
        let config = Self::parse(text).map_err(|e| match e {
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
            fix(&mut audit.path);
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
            protocol: UpstreamProtocol::default(),
        };
        target
            .server_name()
            .ok_or("the host is not a DNS name or an IP address")?;
        Ok(target)
    }

    /// The same target, spoken to in `protocol`.
    #[must_use]
    pub fn with_protocol(mut self, protocol: UpstreamProtocol) -> Self {
        self.protocol = protocol;
        self
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
