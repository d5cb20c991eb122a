//! The CA's address as bootstrap tokens and state files carry it, parsed strictly: `https://`, a
//! host (DNS name, IPv4, or bracketed IPv6), an optional port (443), and no path but "/".

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use rustls::pki_types::{DnsName, ServerName};

use crate::error::Error;

const SCHEME: &str = "https://";
const DEFAULT_PORT: u16 = 443;
/// Longest URL accepted, so a hostile value costs little and shows whole in an error.
const MAX_URL_CHARS: usize = 300;

/// Where the CA listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaUrl {
    host: Host,
    port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Host {
    Dns(DnsName<'static>),
    Ip(IpAddr),
}

impl CaUrl {
    /// Parses `https://host[:port][/]`; anything else (another scheme, userinfo, a path, a query,
    /// a fragment, percent-encoding) is an error.
    pub fn parse(input: &str) -> Result<Self, Error> {
        let bad = |reason: &'static str| Error::BadCaUrl {
            url: input.chars().take(MAX_URL_CHARS).collect(),
            reason,
        };
        if input.len() > MAX_URL_CHARS {
            return Err(bad("it is too long"));
        }
        let rest = input
            .strip_prefix(SCHEME)
            .ok_or_else(|| bad("the scheme must be https"))?;
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if let Some(c) = authority
            .chars()
            .find(|c| matches!(c, '/' | '?' | '#' | '@' | '%' | '\\') || !c.is_ascii_graphic())
        {
            return Err(bad(match c {
                '/' => "it has a path; only \"/\" is allowed",
                '?' => "it has a query",
                '#' => "it has a fragment",
                '@' => "it has userinfo",
                '%' => "it is percent-encoded",
                _ => "it has a character that is not allowed in a host name",
            }));
        }
        let (host, port) = split_host_port(authority).ok_or_else(|| bad("the port is invalid"))?;
        let port = match port {
            None => DEFAULT_PORT,
            Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| bad("the port must be 1 to 65535"))?,
            Some(_) => return Err(bad("the port must be 1 to 65535")),
        };
        let host = if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            Host::Ip(IpAddr::V6(
                v6.parse::<Ipv6Addr>()
                    .map_err(|_| bad("the bracketed host is not an IPv6 address"))?,
            ))
        } else if let Ok(v4) = host.parse::<Ipv4Addr>() {
            Host::Ip(IpAddr::V4(v4))
        } else if host.is_empty() {
            return Err(bad("the host is empty"));
        } else {
            let name = DnsName::try_from(host.to_ascii_lowercase())
                .map_err(|_| bad("the host is not a valid DNS name or IP address"))?;
            Host::Dns(name)
        };
        Ok(Self { host, port })
    }

    /// The host as `TcpStream::connect` takes it (no brackets around IPv6).
    pub fn host(&self) -> String {
        match &self.host {
            Host::Dns(name) => name.as_ref().to_owned(),
            Host::Ip(ip) => ip.to_string(),
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The name sent in SNI. The CA is authenticated by its SPIFFE ID, not by this name.
    pub fn server_name(&self) -> ServerName<'static> {
        match &self.host {
            Host::Dns(name) => ServerName::DnsName(name.clone()),
            Host::Ip(ip) => ServerName::IpAddress((*ip).into()),
        }
    }

    /// `host:port` as the HTTP Host header carries it.
    pub fn authority(&self) -> String {
        match &self.host {
            Host::Ip(IpAddr::V6(ip)) => format!("[{ip}]:{}", self.port),
            _ => format!("{}:{}", self.host(), self.port),
        }
    }
}

impl fmt::Display for CaUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SCHEME}{}", self.authority())
    }
}

/// Splits `host[:port]`, where an IPv6 host is bracketed. None when the shape is wrong.
fn split_host_port(authority: &str) -> Option<(&str, Option<&str>)> {
    if authority.starts_with('[') {
        let close = authority.find(']')?;
        let (host, rest) = authority.split_at(close + 1);
        return match rest {
            "" => Some((host, None)),
            _ => Some((host, Some(rest.strip_prefix(':')?))),
        };
    }
    match authority.split_once(':') {
        None => Some((authority, None)),
        Some((_, port)) if port.contains(':') => None,
        Some((host, port)) => Some((host, Some(port))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_host_and_port_forms() {
        let u = CaUrl::parse("https://ca.bank.example:8443").unwrap();
        assert_eq!((u.host().as_str(), u.port()), ("ca.bank.example", 8443));
        assert_eq!(u.to_string(), "https://ca.bank.example:8443");
        let u = CaUrl::parse("https://CA.Bank.Example/").unwrap();
        assert_eq!(u.authority(), "ca.bank.example:443");
        let u = CaUrl::parse("https://127.0.0.1:1").unwrap();
        assert_eq!(u.host(), "127.0.0.1");
        let u = CaUrl::parse("https://[::1]:8443/").unwrap();
        assert_eq!(
            (u.host().as_str(), u.authority().as_str()),
            ("::1", "[::1]:8443")
        );
    }

    #[test]
    fn rejects_everything_else() {
        for bad in [
            "",
            "http://ca:8443",
            "HTTPS://ca:8443",
            "https://",
            "https://:8443",
            "https://ca:0",
            "https://ca:65536",
            "https://ca:+80",
            "https://ca:",
            "https://ca:80:81",
            "https://ca:8443/v1",
            "https://ca:8443//",
            "https://ca:8443?x=1",
            "https://ca:8443#f",
            "https://user@ca:8443",
            "https://c%61:8443",
            "https://ca x:8443",
            "https://ca\n:8443",
            "https://[::1",
            "https://[zz]:1",
            "https://[::1]8443",
            "https://::1:8443",
            "https://-ca-:8443",
        ] {
            let err = CaUrl::parse(bad).unwrap_err();
            assert!(matches!(err, Error::BadCaUrl { .. }), "{bad:?}: {err}");
        }
        assert!(CaUrl::parse(&format!("https://{}.example", "a".repeat(400))).is_err());
    }
}
