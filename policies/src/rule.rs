//! A compiled rule, the request it is matched against, and how the two meet.

use meshgate_identity::SpiffeId;

use crate::pattern::{HostPattern, IdPattern, PathPattern};

/// What a rule does when it matches, and what a decision is.
// Not `#[non_exhaustive]`: a caller must handle both outcomes, with no catch-all arm that could
// silently turn a future variant into an allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Effect {
    Allow,
    Deny,
}

/// Which kind of file a rule comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Scope {
    /// A mesh-wide file (no `service`), owned by the platform team.
    Mesh,
    /// A service's own file, owned by its team.
    Service,
}

/// One request or connection to decide, borrowed from the caller.
///
/// `method`, `path`, `host` and `port` are `None` when the request does not carry them: all four
/// are `None` for a TCP connection-level decision. `path` must already be normalized by the
/// caller (dot segments removed, slashes merged, unreserved percent-encodings decoded), as the
/// gateway does; a query after '?' is ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request<'a> {
    /// The authenticated peer.
    pub from: &'a SpiffeId,
    /// The service the gateway protects.
    pub to: &'a SpiffeId,
    pub method: Option<&'a str>,
    pub path: Option<&'a str>,
    pub host: Option<&'a str>,
    pub port: Option<u16>,
}

/// A rule of a policy file, compiled. A service file's rules carry that service as their `to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub(crate) name: Box<str>,
    pub(crate) file: Box<str>,
    pub(crate) line: u32,
    pub(crate) effect: Effect,
    pub(crate) scope: Scope,
    /// The file's mode is dry-run (service files only).
    pub(crate) dry_run: bool,
    pub(crate) from: Option<Box<[IdPattern]>>,
    pub(crate) from_not: Option<Box<[IdPattern]>>,
    pub(crate) to: Option<Box<[IdPattern]>>,
    pub(crate) methods: Option<Box<[Box<str>]>>,
    pub(crate) paths: Option<Box<[PathPattern]>>,
    pub(crate) paths_not: Option<Box<[PathPattern]>>,
    pub(crate) hosts: Option<Box<[HostPattern]>>,
    pub(crate) ports: Option<Box<[u16]>>,
}

impl<'a> Request<'a> {
    /// A TCP connection-level decision: identities only.
    pub fn tcp(from: &'a SpiffeId, to: &'a SpiffeId) -> Self {
        Self {
            from,
            to,
            method: None,
            path: None,
            host: None,
            port: None,
        }
    }

    /// An HTTP request.
    pub fn http(from: &'a SpiffeId, to: &'a SpiffeId, method: &'a str, path: &'a str) -> Self {
        Self {
            from,
            to,
            method: Some(method),
            path: Some(path),
            host: None,
            port: None,
        }
    }

    #[must_use]
    pub fn with_host(self, host: &'a str) -> Self {
        Self {
            host: Some(host),
            ..self
        }
    }

    #[must_use]
    pub fn with_port(self, port: u16) -> Self {
        Self {
            port: Some(port),
            ..self
        }
    }
}

impl Rule {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The name of the file the rule is in, as given to [`crate::PolicyFile::parse`].
    pub fn file(&self) -> &str {
        &self.file
    }

    /// The line of the rule's `name` in its file.
    pub fn line(&self) -> u32 {
        self.line
    }

    pub fn effect(&self) -> Effect {
        self.effect
    }

    pub fn scope(&self) -> Scope {
        self.scope
    }

    /// Whether every condition of the rule holds for `request`.
    ///
    /// Absent fields match anything. A condition on an attribute the request does not carry
    /// (a TCP connection has no method, path or host) fails closed, as in Istio: in an allow
    /// rule it never holds, so the allow cannot let the request in; in a deny rule it is left
    /// out, so the deny applies on its remaining conditions. A service team therefore cannot
    /// step around a mesh-wide `paths = ["/admin/**"]` deny by putting its service in TCP mode:
    /// for a TCP connection that deny reads as an identity-only deny.
    pub fn matches(&self, request: &Request<'_>) -> bool {
        let absent = self.effect == Effect::Deny;
        any_id(self.to.as_deref(), request.to)
            && any_id(self.from.as_deref(), request.from)
            && !self
                .from_not
                .as_deref()
                .is_some_and(|not| not.iter().any(|p| p.matches(request.from)))
            && condition(
                self.methods.as_deref(),
                request.method,
                absent,
                |m, method| &**m == method,
            )
            && condition(self.ports.as_deref(), request.port, absent, |p, port| {
                *p == port
            })
            && condition(self.hosts.as_deref(), request.host, absent, |p, host| {
                p.matches(host)
            })
            && condition(self.paths.as_deref(), request.path, absent, |p, path| {
                p.matches(path)
            })
            && negative(self.paths_not.as_deref(), request.path, absent)
    }
}

/// An absent list matches any ID; a present one needs one pattern to match.
fn any_id(patterns: Option<&[IdPattern]>, id: &SpiffeId) -> bool {
    patterns.is_none_or(|ps| ps.iter().any(|p| p.matches(id)))
}

/// A positive attribute condition: one of `list` must match `value`; `absent` is the answer
/// when the request does not carry the attribute.
fn condition<P, V: Copy>(
    list: Option<&[P]>,
    value: Option<V>,
    absent: bool,
    hit: impl Fn(&P, V) -> bool,
) -> bool {
    match (list, value) {
        (None, _) => true,
        (Some(list), Some(v)) => list.iter().any(|p| hit(p, v)),
        (Some(_), None) => absent,
    }
}

/// `paths_not`: none of `list` may match the path; `absent` when there is no path.
fn negative(list: Option<&[PathPattern]>, path: Option<&str>, absent: bool) -> bool {
    match (list, path) {
        (None, _) => true,
        (Some(list), Some(p)) => !list.iter().any(|pattern| pattern.matches(p)),
        (Some(_), None) => absent,
    }
}
