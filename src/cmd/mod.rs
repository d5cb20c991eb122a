//! One module per command group of the CLI, and the argument parsers they share.

pub mod audit;
pub mod audit_verify;
pub mod ca;
pub mod ca_ops;
pub mod demo;
pub mod gateway;
pub mod policy;
pub mod svid;
pub mod svid_agent;

use std::time::Duration;

use meshgate_identity::{SpiffeId, TrustDomain};

/// clap parser for `--spiffe-id`: operator input, so the trust domain may be uppercase.
pub fn parse_spiffe_id(s: &str) -> Result<SpiffeId, String> {
    SpiffeId::parse_operator_input(s).map_err(|e| format!("{e} (rule: {})", e.rule()))
}

/// clap parser for `--trust-domain`.
pub fn parse_trust_domain(s: &str) -> Result<TrustDomain, String> {
    TrustDomain::parse_operator_input(s).map_err(|e| format!("{e} (rule: {})", e.rule()))
}

/// clap parser for durations such as `90s`, `15m`, `1h`, `7d`.
pub fn parse_duration_arg(s: &str) -> Result<Duration, String> {
    meshgate_identity::parse_duration(s).map_err(|e| e.to_string())
}

/// Unix seconds as RFC 3339 UTC.
pub fn rfc3339(secs: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("@{secs}"))
}
