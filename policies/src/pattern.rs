//! The patterns a rule is made of (SPIFFE IDs, HTTP paths, hosts, methods), checked when parsed
//! and matched without allocating.

use meshgate_identity::SpiffeId;

/// A SPIFFE ID pattern: exact, or with `*` for one path segment and `**` (last segment only) for
/// the rest. The trust domain is literal. Public so that other parts of the mesh (the gateway's
/// rate limits) match identities exactly as policies do.
///
/// ```
/// use meshgate_identity::SpiffeId;
/// use meshgate_policy::IdPattern;
///
/// let shop = IdPattern::parse("spiffe://bank.example/ns/shop/**")?;
/// assert!(shop.matches(&SpiffeId::parse("spiffe://bank.example/ns/shop/sa/checkout")?));
/// assert!(!shop.matches(&SpiffeId::parse("spiffe://bank.example/ns/ledger/sa/api")?));
/// assert_eq!(shop.as_str(), "spiffe://bank.example/ns/shop/**");
/// assert!(IdPattern::parse("spiffe://bank.example/ns/**/x").is_err());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdPattern {
    /// The pattern in normal form (trust domain lowercased); for an exact pattern, the ID itself.
    text: Box<str>,
    wild: Option<WildId>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct WildId {
    trust_domain: Box<str>,
    segments: Box<[Segment]>,
}

/// An HTTP path pattern: starts with '/', `*` for one segment, `**` (last only) for the rest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PathPattern {
    segments: Box<[Segment]>,
}

/// A host pattern: an exact name, or `*.suffix` for any name that ends with `.suffix`.
/// Compared without regard to ASCII case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HostPattern {
    Exact(Box<str>),
    /// The suffix with its leading dot, such as `.bank.example`.
    Suffix(Box<str>),
}

/// One '/'-separated segment of an ID or path pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(Box<str>),
    /// `*`: exactly one non-empty segment.
    One,
    /// `**`: the rest, zero or more segments.
    Rest,
}

const SCHEME: &str = "spiffe://";

impl IdPattern {
    /// Parses a pattern. The error is the reason, to be wrapped with the value's location.
    pub fn parse(input: &str) -> Result<Self, String> {
        let has_scheme = input
            .get(..SCHEME.len())
            .is_some_and(|s| s.eq_ignore_ascii_case(SCHEME));
        let rest = input.get(SCHEME.len()..).filter(|_| has_scheme);
        let Some(rest) = rest else {
            return Err(SpiffeId::parse_operator_input(input).err().map_or_else(
                || "expected spiffe://<trust-domain>/<path>".to_owned(),
                |e| e.to_string(),
            ));
        };
        let (trust_domain, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        if trust_domain.contains('*') {
            return Err(
                "the trust domain is literal; `*` and `**` stand only for path segments".into(),
            );
        }
        if path.is_empty() {
            return Err(format!(
                "it names a trust domain, not a workload; write \"spiffe://{trust_domain}/**\" to match every workload of the trust domain"
            ));
        }
        let segments = parse_segments(path.get(1..).unwrap_or_default())?;
        let wild = segments.iter().any(|s| !matches!(s, Segment::Literal(_)));
        // The SPIFFE ID rules are checked by parsing the pattern with each wildcard replaced by
        // a plain segment, so patterns and IDs can never disagree about what is valid.
        let mut probe = format!("{SCHEME}{trust_domain}");
        for s in segments.iter() {
            probe.push('/');
            probe.push_str(match s {
                Segment::Literal(l) => l,
                Segment::One | Segment::Rest => "x",
            });
        }
        let id = SpiffeId::parse_operator_input(&probe).map_err(|e| {
            if wild {
                format!("it breaks the SPIFFE ID rule \"{}\"", e.rule())
            } else {
                e.to_string()
            }
        })?;
        if !wild {
            return Ok(Self {
                text: id.as_str().into(),
                wild: None,
            });
        }
        let text = format!("{SCHEME}{}{path}", id.trust_domain_str()).into_boxed_str();
        let trust_domain = id.trust_domain_str().into();
        Ok(Self {
            text,
            wild: Some(WildId {
                trust_domain,
                segments,
            }),
        })
    }

    /// The pattern in normal form (the trust domain lowercased).
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The ID, when the pattern has no wildcard.
    pub fn exact(&self) -> Option<&str> {
        if self.wild.is_none() {
            Some(&self.text)
        } else {
            None
        }
    }

    /// True when `id` is the pattern's ID, or fits its wildcards.
    pub fn matches(&self, id: &SpiffeId) -> bool {
        match &self.wild {
            None => id.as_str() == &*self.text,
            Some(w) => {
                id.trust_domain_str() == &*w.trust_domain && match_segments(&w.segments, id.path())
            }
        }
    }
}

impl std::fmt::Display for IdPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl PathPattern {
    pub(crate) fn parse(input: &str) -> Result<Self, &'static str> {
        let Some(rest) = input.strip_prefix('/') else {
            return Err("a path pattern starts with '/'");
        };
        if input.contains(['?', '#']) {
            return Err(
                "the query and the fragment are not part of the path; patterns match the path alone",
            );
        }
        let segments = parse_segments(rest)?;
        let last = segments.len().saturating_sub(1);
        for (i, s) in segments.iter().enumerate() {
            let Segment::Literal(l) = s else { continue };
            if l.is_empty() && i != last {
                return Err("it has an empty segment ('//')");
            }
            if &**l == "." || &**l == ".." {
                return Err(
                    "it has a '.' or '..' segment, which a normalized request path never has",
                );
            }
            if !is_path_segment(l) {
                return Err(
                    "it has a character that RFC 3986 does not allow in a path, or a '%' not followed by two hex digits",
                );
            }
        }
        Ok(Self { segments })
    }

    /// Matches a request path; a query (`?...`) is ignored. A path that does not start with '/'
    /// (the `*` of `OPTIONS *`, an absolute URI) matches no pattern.
    pub(crate) fn matches(&self, path: &str) -> bool {
        let path = path.split_once(['?', '#']).map_or(path, |(p, _)| p);
        path.starts_with('/') && match_segments(&self.segments, path)
    }
}

impl HostPattern {
    pub(crate) fn parse(input: &str) -> Result<Self, &'static str> {
        let lower = input.to_ascii_lowercase();
        let (suffix, name) = match lower.strip_prefix("*.") {
            Some(name) => (true, name),
            None => (false, lower.as_str()),
        };
        if name.contains('*') {
            return Err("`*` may only be the first label, as in \"*.bank.example\"");
        }
        if !is_host_name(name) {
            return Err(
                "expected a DNS name or IP address: labels of letters, digits, '-' and '_' separated by dots, at most 253 bytes, without a port",
            );
        }
        Ok(if suffix {
            Self::Suffix(format!(".{name}").into())
        } else {
            Self::Exact(name.into())
        })
    }

    /// Matches a request's host (Host header, `:authority` or SNI). A port (`:8443`) and a final
    /// dot are ignored, so neither can slip a request past a deny rule.
    pub(crate) fn matches(&self, host: &str) -> bool {
        let host = strip_port(host);
        let host = host.strip_suffix('.').unwrap_or(host);
        match self {
            Self::Exact(name) => host.eq_ignore_ascii_case(name),
            Self::Suffix(suffix) => {
                host.len() > suffix.len()
                    && host
                        .get(host.len() - suffix.len()..)
                        .is_some_and(|tail| tail.eq_ignore_ascii_case(suffix))
            }
        }
    }
}

/// Checks an HTTP method of a rule: an RFC 9110 token without lowercase letters.
pub(crate) fn is_method(input: &str) -> bool {
    const TCHAR_PUNCT: &[u8] = b"!#$%&'*+-.^_`|~";
    !input.is_empty()
        && input.len() <= 32
        && input
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || TCHAR_PUNCT.contains(&b))
}

/// Splits the part of a pattern after its first '/' into segments and checks the wildcards.
fn parse_segments(rest: &str) -> Result<Box<[Segment]>, &'static str> {
    let parts: Vec<&str> = rest.split('/').collect();
    let last = parts.len().saturating_sub(1);
    parts
        .iter()
        .enumerate()
        .map(|(i, part)| match *part {
            "*" => Ok(Segment::One),
            "**" if i == last => Ok(Segment::Rest),
            "**" => Err("`**` may only be the last segment"),
            p if p.contains('*') => {
                Err("`*` must be a whole segment: `*` for one segment, `**` for the rest")
            }
            p => Ok(Segment::Literal(p.into())),
        })
        .collect()
}

/// Matches '/'-separated segments. `path` is "" (no segments) or starts with '/'.
fn match_segments(pattern: &[Segment], path: &str) -> bool {
    let mut rest = path.strip_prefix('/');
    for segment in pattern {
        if *segment == Segment::Rest {
            return true;
        }
        let Some(current) = rest else { return false };
        let (head, tail) = match current.split_once('/') {
            Some((head, tail)) => (head, Some(tail)),
            None => (current, None),
        };
        let ok = match segment {
            Segment::Literal(l) => head == &**l,
            Segment::One => !head.is_empty(),
            Segment::Rest => true,
        };
        if !ok {
            return false;
        }
        rest = tail;
    }
    rest.is_none()
}

/// RFC 3986 `pchar`s, '*' excepted (it is the wildcard).
fn is_path_segment(segment: &str) -> bool {
    const ALLOWED: &[u8] = b"-._~!$&'()+,;=:@";
    let bytes = segment.as_bytes();
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hex = |at: usize| bytes.get(at).is_some_and(u8::is_ascii_hexdigit);
            if !(hex(i + 1) && hex(i + 2)) {
                return false;
            }
            i += 3;
            continue;
        }
        if !(b.is_ascii_alphanumeric() || ALLOWED.contains(&b)) {
            return false;
        }
        i += 1;
    }
    true
}

fn is_host_name(name: &str) -> bool {
    if let Some(inner) = name.strip_prefix('[').and_then(|n| n.strip_suffix(']')) {
        // An IPv6 literal, as it appears in a Host header.
        return !inner.is_empty()
            && inner
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.');
    }
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        })
}

/// Drops a `:port` from `host:port` and `[v6]:port`.
fn strip_port(host: &str) -> &str {
    match host.rsplit_once(':') {
        Some((name, port))
            if !port.is_empty()
                && port.bytes().all(|b| b.is_ascii_digit())
                && (!name.contains(':') || name.ends_with(']')) =>
        {
            name
        }
        _ => host,
    }
}

#[cfg(test)]
#[path = "pattern_tests.rs"]
mod tests;
