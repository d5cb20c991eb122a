//! `SpiffeId` and `TrustDomain`: parsed once, rule by rule, as the SPIFFE-ID specification says.
//! A value of these types is always a valid, normalized SPIFFE ID or trust domain name.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The longest SPIFFE ID the specification allows, in bytes.
pub const MAX_ID_BYTES: usize = 2048;
/// The longest trust domain name the specification allows, in bytes.
pub const MAX_TRUST_DOMAIN_BYTES: usize = 255;

const SCHEME: &str = "spiffe://";

/// A SPIFFE ID rule that an input broke. Each variant names one rule of the SPIFFE-ID spec.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdError {
    #[error("SPIFFE ID is empty; expected spiffe://<trust-domain>/<path>")]
    Empty,
    #[error(
        "{value:?} is longer than {MAX_ID_BYTES} bytes ({len} bytes); a SPIFFE ID may be at most {MAX_ID_BYTES}"
    )]
    TooLong { value: Shown, len: usize },
    #[error("{value:?} contains a control character or newline; a SPIFFE ID may contain none")]
    ControlCharacter { value: Shown },
    #[error("{value:?} does not start with the scheme \"spiffe://\" (lowercase)")]
    Scheme { value: Shown },
    #[error("{value:?} has an empty trust domain; expected spiffe://<trust-domain>/...")]
    EmptyTrustDomain { value: Shown },
    #[error("{value:?} has userinfo ('@') in its authority; a SPIFFE ID has none")]
    Userinfo { value: Shown },
    #[error("{value:?} has a port (':') in its authority; a SPIFFE ID has none")]
    Port { value: Shown },
    #[error("{value:?} has uppercase letters in its trust domain; trust domains are lowercase")]
    TrustDomainNotLowercase { value: Shown },
    #[error(
        "{value:?} has a trust domain character other than lowercase letters, digits, '.', '-' and '_'"
    )]
    TrustDomainCharacters { value: Shown },
    #[error("{value:?} has a trust domain longer than {MAX_TRUST_DOMAIN_BYTES} bytes")]
    TrustDomainTooLong { value: Shown },
    #[error("{value:?} is percent-encoded ('%'); SPIFFE IDs do not allow percent-encoding")]
    PercentEncoding { value: Shown },
    #[error("{value:?} has a query ('?'); SPIFFE IDs do not allow one")]
    Query { value: Shown },
    #[error("{value:?} has a fragment ('#'); SPIFFE IDs do not allow one")]
    Fragment { value: Shown },
    #[error("{value:?} has a path segment character other than letters, digits, '.', '-' and '_'")]
    PathCharacters { value: Shown },
    #[error("{value:?} has an empty path segment ('//')")]
    EmptySegment { value: Shown },
    #[error("{value:?} has a '.' or '..' path segment")]
    DotSegment { value: Shown },
    #[error("{value:?} ends with a trailing slash")]
    TrailingSlash { value: Shown },
    #[error("{value:?} has a path; a trust domain is a name or spiffe://<name> with no path")]
    TrustDomainWithPath { value: Shown },
    #[error("{value:?} is a trust domain ID; a workload ID needs a non-empty path")]
    MissingPath { value: Shown },
}

impl IdError {
    /// The stable name of the rule that was broken, for logs, JSON output and tests.
    pub fn rule(&self) -> &'static str {
        match self {
            Self::Empty => "empty",
            Self::TooLong { .. } => "max-length",
            Self::ControlCharacter { .. } => "control-character",
            Self::Scheme { .. } => "scheme",
            Self::EmptyTrustDomain { .. } => "empty-trust-domain",
            Self::Userinfo { .. } => "userinfo",
            Self::Port { .. } => "port",
            Self::TrustDomainNotLowercase { .. } => "trust-domain-lowercase",
            Self::TrustDomainCharacters { .. } => "trust-domain-characters",
            Self::TrustDomainTooLong { .. } => "trust-domain-max-length",
            Self::PercentEncoding { .. } => "percent-encoding",
            Self::Query { .. } => "query",
            Self::Fragment { .. } => "fragment",
            Self::PathCharacters { .. } => "path-characters",
            Self::EmptySegment { .. } => "empty-segment",
            Self::DotSegment { .. } => "dot-segment",
            Self::TrailingSlash { .. } => "trailing-slash",
            Self::TrustDomainWithPath { .. } => "trust-domain-path",
            Self::MissingPath { .. } => "missing-path",
        }
    }
}

/// An input shown in an error message: printable, and cut short when long.
#[derive(Clone, PartialEq, Eq)]
pub struct Shown(String);

impl Shown {
    const MAX_CHARS: usize = 96;

    fn new(input: &str) -> Self {
        let mut out: String = input.chars().take(Self::MAX_CHARS).collect();
        if input.chars().nth(Self::MAX_CHARS).is_some() {
            out.push('…');
        }
        Self(out)
    }
}

impl fmt::Debug for Shown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Debug escapes control characters, so a newline shows as \n rather than breaking the line.
        fmt::Debug::fmt(&self.0, f)
    }
}

/// A SPIFFE trust domain name, such as `bank.example`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TrustDomain(String);

impl TrustDomain {
    /// Parses a trust domain name (`bank.example`) or a trust domain ID (`spiffe://bank.example`),
    /// strictly: uppercase is an error.
    pub fn parse(input: &str) -> Result<Self, IdError> {
        if input.starts_with(SCHEME) {
            let id = SpiffeId::parse(input)?;
            if !id.path().is_empty() {
                return Err(IdError::TrustDomainWithPath {
                    value: Shown::new(input),
                });
            }
            return Ok(id.trust_domain());
        }
        check_common(input)?;
        check_trust_domain(input, input)?;
        Ok(Self(input.to_owned()))
    }

    /// Parses operator input (a command line or a config file): the name is lowercased first.
    pub fn parse_operator_input(input: &str) -> Result<Self, IdError> {
        Self::parse(&lowercase_trust_domain(input))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The trust domain's own ID, `spiffe://<name>`.
    pub fn id(&self) -> SpiffeId {
        SpiffeId {
            td_len: self.0.len(),
            text: format!("{SCHEME}{}", self.0),
        }
    }
}

/// A SPIFFE ID, such as `spiffe://bank.example/ns/payments/sa/api`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    text: String,
    /// Length of the trust domain name, which starts right after the scheme.
    td_len: usize,
}

impl SpiffeId {
    /// Parses a SPIFFE ID strictly, as it must appear in a certificate.
    pub fn parse(input: &str) -> Result<Self, IdError> {
        check_common(input)?;
        if input.len() > MAX_ID_BYTES {
            return Err(IdError::TooLong {
                value: Shown::new(input),
                len: input.len(),
            });
        }
        let Some(rest) = input.strip_prefix(SCHEME) else {
            return Err(IdError::Scheme {
                value: Shown::new(input),
            });
        };
        // A query or fragment ends the path in URI syntax, so look for them before splitting.
        if input.contains('?') {
            return Err(IdError::Query {
                value: Shown::new(input),
            });
        }
        if input.contains('#') {
            return Err(IdError::Fragment {
                value: Shown::new(input),
            });
        }
        if input.contains('%') {
            return Err(IdError::PercentEncoding {
                value: Shown::new(input),
            });
        }
        let (authority, path) = match rest.find('/') {
            Some(at) => rest.split_at(at),
            None => (rest, ""),
        };
        check_trust_domain(authority, input)?;
        check_path(path, input)?;
        Ok(Self {
            text: input.to_owned(),
            td_len: authority.len(),
        })
    }

    /// Parses operator input: the trust domain (not the path) may be given in uppercase.
    pub fn parse_operator_input(input: &str) -> Result<Self, IdError> {
        Self::parse(&lowercase_trust_domain(input))
    }

    /// Parses an ID that must name a workload, not a trust domain: the path must be non-empty.
    pub fn parse_workload(input: &str) -> Result<Self, IdError> {
        let id = Self::parse(input)?;
        id.require_path()?;
        Ok(id)
    }

    /// Errors unless the ID has a non-empty path (leaf SVIDs and workloads need one).
    pub fn require_path(&self) -> Result<(), IdError> {
        if self.path().is_empty() {
            return Err(IdError::MissingPath {
                value: Shown::new(&self.text),
            });
        }
        Ok(())
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn trust_domain(&self) -> TrustDomain {
        TrustDomain(self.trust_domain_str().to_owned())
    }

    pub fn trust_domain_str(&self) -> &str {
        self.text
            .get(SCHEME.len()..SCHEME.len() + self.td_len)
            .unwrap_or_default()
    }

    pub fn is_member_of(&self, td: &TrustDomain) -> bool {
        self.trust_domain_str() == td.as_str()
    }

    /// The path, starting with '/', or "" for a trust domain ID.
    pub fn path(&self) -> &str {
        self.text
            .get(SCHEME.len() + self.td_len..)
            .unwrap_or_default()
    }
}

fn check_common(input: &str) -> Result<(), IdError> {
    if input.is_empty() {
        return Err(IdError::Empty);
    }
    if input.chars().any(char::is_control) {
        return Err(IdError::ControlCharacter {
            value: Shown::new(input),
        });
    }
    Ok(())
}

fn check_trust_domain(td: &str, whole: &str) -> Result<(), IdError> {
    let shown = || Shown::new(whole);
    if td.is_empty() {
        return Err(IdError::EmptyTrustDomain { value: shown() });
    }
    if td.contains('@') {
        return Err(IdError::Userinfo { value: shown() });
    }
    if td.contains(':') {
        return Err(IdError::Port { value: shown() });
    }
    if td.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(IdError::TrustDomainNotLowercase { value: shown() });
    }
    let allowed =
        |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_');
    if !td.bytes().all(allowed) {
        return Err(IdError::TrustDomainCharacters { value: shown() });
    }
    if td.len() > MAX_TRUST_DOMAIN_BYTES {
        return Err(IdError::TrustDomainTooLong { value: shown() });
    }
    Ok(())
}

fn check_path(path: &str, whole: &str) -> Result<(), IdError> {
    if path.is_empty() {
        return Ok(());
    }
    let shown = || Shown::new(whole);
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    let last = segments.len().saturating_sub(1);
    for (i, segment) in segments.iter().enumerate() {
        if segment.is_empty() {
            return Err(if i == last {
                IdError::TrailingSlash { value: shown() }
            } else {
                IdError::EmptySegment { value: shown() }
            });
        }
        if *segment == "." || *segment == ".." {
            return Err(IdError::DotSegment { value: shown() });
        }
        let allowed = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_');
        if !segment.bytes().all(allowed) {
            return Err(IdError::PathCharacters { value: shown() });
        }
    }
    Ok(())
}

/// Lowercases the trust domain part of operator input and leaves the rest as it is.
fn lowercase_trust_domain(input: &str) -> String {
    let (scheme, rest) = match input.get(..SCHEME.len()) {
        Some(head) if head.eq_ignore_ascii_case(SCHEME) => {
            (SCHEME, input.get(SCHEME.len()..).unwrap_or(""))
        }
        _ => ("", input),
    };
    let cut = rest.find('/').unwrap_or(rest.len());
    let (td, path) = rest.split_at(cut);
    format!("{scheme}{}{path}", td.to_ascii_lowercase())
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.text)
    }
}

impl fmt::Debug for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpiffeId({})", self.text)
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.0)
    }
}

impl fmt::Debug for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TrustDomain({})", self.0)
    }
}

impl FromStr for SpiffeId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl FromStr for TrustDomain {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl Serialize for SpiffeId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for SpiffeId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

impl Serialize for TrustDomain {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for TrustDomain {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}
