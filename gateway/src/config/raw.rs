//! The config file as written (serde, unknown keys rejected), and its checks into the typed
//! `Config`: each error names the key and the value at fault and says what would be accepted.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::Duration;

use meshgate_identity::SpiffeId;
use meshgate_policy::IdPattern;
use serde::Deserialize;

use super::{
    AuditLog, Config, DEFAULT_ADMIN, Inbound, Limits, MAX_HEADER_BYTES, MIN_HEADER_BYTES, Mode,
    ProxyProtocol, RateLimit, Route, Target, UpstreamProtocol,
};
use crate::agent::CaUrl;
use crate::error::Error;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    spiffe_id: String,
    state_dir: PathBuf,
    ca: Option<RawCa>,
    inbound: Option<RawInbound>,
    #[serde(default)]
    outbound: Vec<RawRoute>,
    admin: Option<RawAdmin>,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    rate_limit: Vec<RawRateLimit>,
    audit: Option<RawAudit>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCa {
    url: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInbound {
    listen: String,
    /// `http://host:port` in HTTP mode, `host:port` in TCP mode.
    upstream: String,
    policy: Vec<PathBuf>,
    /// `"http"` (default) or `"tcp"`.
    mode: Option<String>,
    /// HTTP mode: `"http1"` (default) or `"h2c"`.
    upstream_protocol: Option<String>,
    /// TCP mode: `"v2"`, or absent for none.
    proxy_protocol: Option<String>,
    /// Lets the upstream be another machine, reached in plain text.
    #[serde(default)]
    dangerous_remote_upstream: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    name: String,
    listen: String,
    target: String,
    expected_peer: String,
    /// `"http"` (default) or `"tcp"`; must match the target's inbound.
    mode: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    listen: String,
    /// Lets the admin listener bind a non-loopback address.
    #[serde(default)]
    dangerous_allow_remote: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_header_bytes: Option<usize>,
    header_read_timeout: Option<String>,
    handshake_timeout: Option<String>,
    idle_timeout: Option<String>,
    max_connections: Option<usize>,
    max_concurrent_streams: Option<u32>,
    connect_timeout: Option<String>,
    response_timeout: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAudit {
    path: PathBuf,
    #[serde(default)]
    log_allows: bool,
    /// Rotate the file once it holds this many bytes.
    max_file_bytes: Option<u64>,
    /// Rotate the file once its first record is this old (`1d`, `12h`).
    max_file_age: Option<String>,
}

impl RawAudit {
    fn check(self) -> Result<AuditLog, Error> {
        if self
            .max_file_bytes
            .is_some_and(|b| b < MIN_AUDIT_FILE_BYTES)
        {
            return Err(bad(
                "audit.max_file_bytes",
                self.max_file_bytes.unwrap_or_default().to_string(),
                format!(
                    "a file smaller than {MIN_AUDIT_FILE_BYTES} bytes would rotate after every few records"
                ),
            ));
        }
        let max_age = match &self.max_file_age {
            None => None,
            Some(text) => {
                let d = meshgate_identity::parse_duration(text)
                    .map_err(|e| bad("audit.max_file_age", text, e.to_string()))?;
                if d < Duration::from_secs(60) {
                    return Err(bad(
                        "audit.max_file_age",
                        text,
                        "rotate at most once a minute (give e.g. 1h or 1d)",
                    ));
                }
                Some(d)
            }
        };
        Ok(AuditLog {
            path: self.path,
            log_allows: self.log_allows,
            max_file_bytes: self.max_file_bytes,
            max_file_age: max_age,
        })
    }
}

/// Below this a size limit is a typo (a checkpoint alone takes a few KiB).
const MIN_AUDIT_FILE_BYTES: u64 = 64 * 1024;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRateLimit {
    peer: String,
    rate: u32,
    /// Defaults to `rate`: one second's worth of requests at once.
    burst: Option<u32>,
}

/// A rate above this is a typo rather than a limit.
const MAX_RATE: u32 = 1_000_000;

fn bad(key: impl Into<String>, value: impl Into<String>, reason: impl Into<String>) -> Error {
    Error::ConfigValue {
        key: key.into(),
        value: value.into(),
        reason: reason.into(),
    }
}

impl RawConfig {
    pub(super) fn check(self) -> Result<Config, Error> {
        let spiffe_id = workload_id("spiffe_id", &self.spiffe_id)?;
        let ca_url = match self.ca {
            Some(ca) => {
                Some(CaUrl::parse(&ca.url).map_err(|e| bad("ca.url", &ca.url, e.to_string()))?)
            }
            None => None,
        };
        let inbound = self.inbound.map(RawInbound::check).transpose()?;
        let mut outbound: Vec<Route> = Vec::with_capacity(self.outbound.len());
        for (i, raw) in self.outbound.into_iter().enumerate() {
            let route = raw.check(i)?;
            if outbound.iter().any(|r| r.name == route.name) {
                return Err(bad(
                    format!("outbound[{i}].name"),
                    &route.name,
                    "another route has this name",
                ));
            }
            let taken = outbound
                .iter()
                .any(|r| r.listen == route.listen && route.listen.port() != 0)
                || inbound.as_ref().is_some_and(|ib| ib.listen == route.listen);
            if taken {
                return Err(bad(
                    format!("outbound[{i}].listen"),
                    route.listen.to_string(),
                    "another listener has this address",
                ));
            }
            outbound.push(route);
        }
        if inbound.is_none() && outbound.is_empty() {
            return Err(Error::Config(
                "the config has neither [inbound] nor [[outbound]]; a gateway needs at least one listener".into(),
            ));
        }
        let admin = match self.admin {
            Some(a) => {
                let addr = socket_addr("admin.listen", &a.listen)?;
                if !addr.ip().is_loopback() && !a.dangerous_allow_remote {
                    return Err(bad(
                        "admin.listen",
                        &a.listen,
                        "the admin listener must be on loopback (set admin.dangerous_allow_remote = true to expose metrics and identity to the network)",
                    ));
                }
                addr
            }
            None => DEFAULT_ADMIN,
        };
        // Two listeners on one port would fail at bind time, after enrollment: say so here.
        let admin_taken = admin.port() != 0
            && (inbound.as_ref().is_some_and(|ib| ib.listen == admin)
                || outbound.iter().any(|r| r.listen == admin));
        if admin_taken {
            return Err(bad(
                "admin.listen",
                admin.to_string(),
                "another listener has this address",
            ));
        }
        let mut limits = self.limits.check()?;
        for (i, raw) in self.rate_limit.into_iter().enumerate() {
            limits.rate_limits.push(raw.check(i)?);
        }
        if inbound.is_none() && !limits.rate_limits.is_empty() {
            return Err(Error::Config(
                "[[rate_limit]] limits requests on the inbound listener, but the config has no [inbound]".into(),
            ));
        }
        if inbound.as_ref().is_some_and(|ib| ib.mode == Mode::Tcp) && !limits.rate_limits.is_empty()
        {
            return Err(Error::Config(
                "[[rate_limit]] limits HTTP requests, and an inbound in mode \"tcp\" has none; limit its connections with limits.max_connections".into(),
            ));
        }
        Ok(Config {
            spiffe_id,
            state_dir: self.state_dir,
            ca_url,
            inbound,
            outbound,
            admin,
            limits,
            audit_path: self.audit.map(RawAudit::check).transpose()?,
        })
    }
}

impl RawInbound {
    fn check(self) -> Result<Inbound, Error> {
        let listen = socket_addr("inbound.listen", &self.listen)?;
        let mode = mode("inbound.mode", self.mode.as_deref())?;
        let protocol = match (mode, self.upstream_protocol.as_deref()) {
            (_, None) | (Mode::Http, Some("http1")) => UpstreamProtocol::Http1,
            (Mode::Http, Some("h2c")) => UpstreamProtocol::H2c,
            (Mode::Http, Some(other)) => {
                return Err(bad(
                    "inbound.upstream_protocol",
                    other,
                    "expected \"http1\" (HTTP/1.1) or \"h2c\" (HTTP/2 with prior knowledge, for gRPC)",
                ));
            }
            (_, Some(other)) => {
                return Err(bad(
                    "inbound.upstream_protocol",
                    other,
                    "in mode \"tcp\" the service gets the connection's bytes as they are; remove upstream_protocol",
                ));
            }
        };
        let proxy_protocol = match (mode, self.proxy_protocol.as_deref()) {
            (_, None) => None,
            (Mode::Tcp, Some("v2")) => Some(ProxyProtocol::V2),
            (Mode::Tcp, Some(other)) => {
                return Err(bad(
                    "inbound.proxy_protocol",
                    other,
                    "expected \"v2\" (HAProxy's binary PROXY protocol), or no proxy_protocol",
                ));
            }
            (_, Some(other)) => {
                return Err(bad(
                    "inbound.proxy_protocol",
                    other,
                    "only an inbound in mode \"tcp\" sends a PROXY header; in HTTP mode the peer's identity is in x-forwarded-client-cert",
                ));
            }
        };
        let upstream =
            upstream(&self.upstream, mode, self.dangerous_remote_upstream)?.with_protocol(protocol);
        if self.policy.is_empty() {
            return Err(bad(
                "inbound.policy",
                "[]",
                "list at least one policy file; with none, every request would be denied",
            ));
        }
        Ok(Inbound {
            listen,
            upstream,
            policy: self.policy,
            mode,
            proxy_protocol,
        })
    }
}

impl RawRoute {
    fn check(self, i: usize) -> Result<Route, Error> {
        let key = |k: &str| format!("outbound[{i}].{k}");
        if self.name.is_empty()
            || !self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return Err(bad(
                key("name"),
                &self.name,
                "a route name is letters, digits, '-', '_' and '.'",
            ));
        }
        let listen = socket_addr(&key("listen"), &self.listen)?;
        if !listen.ip().is_loopback() {
            return Err(bad(
                key("listen"),
                &self.listen,
                "an outbound listener must be on loopback: whoever reaches it speaks with this gateway's identity",
            ));
        }
        let target =
            Target::parse(&self.target).map_err(|r| bad(key("target"), &self.target, r))?;
        let expected_peer = workload_id(&key("expected_peer"), &self.expected_peer)?;
        let mode = mode(&key("mode"), self.mode.as_deref())?;
        Ok(Route {
            name: self.name,
            listen,
            target,
            expected_peer,
            mode,
        })
    }
}

impl RawRateLimit {
    fn check(self, i: usize) -> Result<RateLimit, Error> {
        let key = |k: &str| format!("rate_limit[{i}].{k}");
        let peer = IdPattern::parse(&self.peer).map_err(|r| bad(key("peer"), &self.peer, r))?;
        let positive = |k: &str, n: u32| {
            NonZeroU32::new(n)
                .filter(|n| n.get() <= MAX_RATE)
                .ok_or_else(|| bad(key(k), n.to_string(), format!("expected 1 to {MAX_RATE}")))
        };
        let rate = positive("rate", self.rate)?;
        let burst = positive("burst", self.burst.unwrap_or(self.rate))?;
        Ok(RateLimit { peer, rate, burst })
    }
}

impl RawLimits {
    fn check(self) -> Result<Limits, Error> {
        let d = Limits::default();
        let header = self.max_header_bytes.unwrap_or(d.max_header_bytes);
        if !(MIN_HEADER_BYTES..=MAX_HEADER_BYTES).contains(&header) {
            return Err(bad(
                "limits.max_header_bytes",
                header.to_string(),
                format!("expected {MIN_HEADER_BYTES} to {MAX_HEADER_BYTES}"),
            ));
        }
        let max_connections = self.max_connections.unwrap_or(d.max_connections);
        if max_connections == 0 {
            return Err(bad("limits.max_connections", "0", "expected at least 1"));
        }
        let streams = self
            .max_concurrent_streams
            .unwrap_or(d.max_concurrent_streams);
        if streams == 0 {
            return Err(bad(
                "limits.max_concurrent_streams",
                "0",
                "expected at least 1",
            ));
        }
        Ok(Limits {
            max_header_bytes: header,
            header_read_timeout: duration(
                "limits.header_read_timeout",
                self.header_read_timeout,
                d.header_read_timeout,
            )?,
            handshake_timeout: duration(
                "limits.handshake_timeout",
                self.handshake_timeout,
                d.handshake_timeout,
            )?,
            idle_timeout: duration("limits.idle_timeout", self.idle_timeout, d.idle_timeout)?,
            max_connections,
            max_concurrent_streams: streams,
            connect_timeout: duration(
                "limits.connect_timeout",
                self.connect_timeout,
                d.connect_timeout,
            )?,
            response_timeout: duration(
                "limits.response_timeout",
                self.response_timeout,
                d.response_timeout,
            )?,
            rate_limits: Vec::new(),
        })
    }
}

fn workload_id(key: &str, value: &str) -> Result<SpiffeId, Error> {
    let id = SpiffeId::parse_operator_input(value).map_err(|e| bad(key, value, e.to_string()))?;
    id.require_path()
        .map_err(|e| bad(key, value, e.to_string()))?;
    Ok(id)
}

fn socket_addr(key: &str, value: &str) -> Result<SocketAddr, Error> {
    value.parse().map_err(|_| {
        bad(
            key,
            value,
            "expected an IP address and a port, such as 127.0.0.1:15001 or [::1]:15001",
        )
    })
}

fn duration(key: &str, value: Option<String>, default: Duration) -> Result<Duration, Error> {
    let Some(text) = value else {
        return Ok(default);
    };
    let d = meshgate_identity::parse_duration(&text).map_err(|e| bad(key, &text, e.to_string()))?;
    if d.is_zero() {
        return Err(bad(
            key,
            &text,
            "a timeout of zero would end every wait at once; expected a duration such as 10s or 5m",
        ));
    }
    if d > MAX_TIMEOUT {
        // Far larger values would overflow the clock arithmetic of the timers (a panic at the
        // first connection).
        return Err(bad(key, &text, "expected at most 30d"));
    }
    Ok(d)
}

/// The longest any `[limits]` timeout may be.
const MAX_TIMEOUT: Duration = Duration::from_secs(30 * 86_400);

fn mode(key: &str, value: Option<&str>) -> Result<Mode, Error> {
    match value {
        None | Some("http") => Ok(Mode::Http),
        Some("tcp") => Ok(Mode::Tcp),
        Some(other) => Err(bad(
            key,
            other,
            "expected \"http\" (requests decided one by one) or \"tcp\" (connections decided at connect)",
        )),
    }
}

/// `http://127.0.0.1:PORT` in HTTP mode, `127.0.0.1:PORT` in TCP mode (or `localhost`, or
/// `[::1]`); another host only with the dangerous knob, since the hop to it is plain text.
fn upstream(value: &str, mode: Mode, remote_ok: bool) -> Result<Target, Error> {
    let key = "inbound.upstream";
    let authority = match mode {
        Mode::Tcp => {
            if value.contains("://") {
                return Err(bad(
                    key,
                    value,
                    "in mode \"tcp\" the upstream is host:port, such as 127.0.0.1:5432 (no scheme)",
                ));
            }
            value
        }
        _ => {
            let rest = value.strip_prefix("http://").ok_or_else(|| {
                bad(
                    key,
                    value,
                    "expected http://127.0.0.1:PORT (plain HTTP/1.1 or h2c to the local service)",
                )
            })?;
            rest.strip_suffix('/').unwrap_or(rest)
        }
    };
    let target = Target::parse(authority).map_err(|r| bad(key, value, r))?;
    if authority.contains(['/', '?', '#', '@', '%']) {
        return Err(bad(key, value, "expected only a scheme, a host and a port"));
    }
    let local = target.host == "localhost"
        || target
            .host
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if !local && !remote_ok {
        return Err(bad(
            key,
            value,
            "the upstream must be on loopback: the hop to it is not encrypted (set inbound.dangerous_remote_upstream = true to allow it)",
        ));
    }
    Ok(target)
}
