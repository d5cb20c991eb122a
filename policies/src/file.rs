//! One policy file: TOML text parsed into a service's or the mesh's rules, with every error
//! located at file:line:column.

use std::collections::HashMap;

use meshgate_identity::SpiffeId;
use serde::Deserialize;
use toml::Spanned;

use crate::error::{LineIndex, Location, PolicyError, PolicyErrors};
use crate::pattern::{self, HostPattern, IdPattern, PathPattern};
use crate::rule::{Effect, Rule, Scope};

/// Whether a service file's decisions are enforced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Mode {
    #[default]
    Enforce,
    /// Report what the file's rules and the default deny would deny, and deny nothing for them.
    /// Mesh-wide denies are still enforced.
    DryRun,
}

/// A parsed policy file: a service file when it names a `service`, else a mesh-wide file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyFile {
    name: Box<str>,
    service: Option<SpiffeId>,
    mode: Mode,
    rules: Vec<Rule>,
}

impl PolicyFile {
    /// Parses the text of one file. `name` is how errors and decisions refer to the file
    /// (usually its path). Returns every error found, or the first TOML error if the text does
    /// not fit the format at all.
    pub fn parse(name: &str, text: &str) -> Result<Self, PolicyErrors> {
        let raw: RawFile = toml::from_str(text).map_err(|e| {
            let at = Location::at(name, text, e.span().map_or(0, |s| s.start));
            PolicyError::Toml {
                at,
                message: e.message().trim_end().to_owned(),
            }
        })?;
        let mut cx = Context {
            file: name,
            text,
            lines: LineIndex::new(text),
            errors: Vec::new(),
        };
        let file = cx.file_from(raw);
        if cx.errors.is_empty() {
            Ok(file)
        } else {
            Err(PolicyErrors::new(cx.errors))
        }
    }

    /// Parses a file's bytes as read from disk: as [`PolicyFile::parse`], after checking that
    /// they are UTF-8 (and saying where they stop being so).
    pub fn parse_bytes(name: &str, bytes: &[u8]) -> Result<Self, PolicyErrors> {
        match std::str::from_utf8(bytes) {
            Ok(text) => Self::parse(name, text),
            Err(e) => {
                let valid = bytes.get(..e.valid_up_to()).unwrap_or_default();
                let text = std::str::from_utf8(valid).unwrap_or_default();
                let at = Location::at(name, text, text.len());
                Err(PolicyError::NotUtf8 { at }.into())
            }
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The service whose file this is, or `None` for a mesh-wide file.
    pub fn service(&self) -> Option<&SpiffeId> {
        self.service.as_ref()
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The rules, allow rules first, each group in the order of the text.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    pub(crate) fn into_rules(self) -> Vec<Rule> {
        self.rules
    }
}

type List<T> = Option<Spanned<Vec<Spanned<T>>>>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    service: Option<Spanned<String>>,
    mode: Option<Spanned<String>>,
    #[serde(default)]
    allow: Vec<RawRule>,
    #[serde(default)]
    deny: Vec<RawRule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: Spanned<String>,
    from: List<String>,
    from_not: List<String>,
    to: List<String>,
    methods: List<String>,
    paths: List<String>,
    paths_not: List<String>,
    hosts: List<String>,
    ports: List<i64>,
}

/// The longest rule name, in characters.
const MAX_NAME_CHARS: usize = 200;

/// Collects errors while building a file, so one pass reports all of them.
struct Context<'a> {
    file: &'a str,
    text: &'a str,
    lines: LineIndex,
    errors: Vec<PolicyError>,
}

impl Context<'_> {
    fn at<T>(&self, spanned: &Spanned<T>) -> Location {
        self.lines
            .locate(self.file, self.text, spanned.span().start)
    }

    fn file_from(&mut self, raw: RawFile) -> PolicyFile {
        let service = raw.service.as_ref().and_then(|s| self.service(s));
        let mode = match &raw.mode {
            None => Mode::Enforce,
            Some(m) => {
                if raw.service.is_none() {
                    self.errors
                        .push(PolicyError::ModeWithoutService { at: self.at(m) });
                }
                match m.get_ref().as_str() {
                    "enforce" => Mode::Enforce,
                    "dry-run" => Mode::DryRun,
                    other => {
                        self.errors.push(PolicyError::Mode {
                            at: self.at(m),
                            value: other.to_owned(),
                        });
                        Mode::Enforce
                    }
                }
            }
        };
        let header = Header {
            scope: if raw.service.is_some() {
                Scope::Service
            } else {
                Scope::Mesh
            },
            service: service.as_ref(),
            dry_run: mode == Mode::DryRun,
        };
        let mut seen: HashMap<String, Location> = HashMap::new();
        let rules = (raw.allow.into_iter().map(|r| (Effect::Allow, r)))
            .chain(raw.deny.into_iter().map(|r| (Effect::Deny, r)))
            .map(|(effect, r)| self.rule(&header, effect, r, &mut seen))
            .collect();
        PolicyFile {
            name: self.file.into(),
            service,
            mode,
            rules,
        }
    }

    fn service(&mut self, s: &Spanned<String>) -> Option<SpiffeId> {
        let parsed = SpiffeId::parse_operator_input(s.get_ref())
            .and_then(|id| id.require_path().map(|()| id));
        parsed
            .map_err(|e| {
                let err = PolicyError::ServiceId {
                    at: self.at(s),
                    value: s.get_ref().clone(),
                    reason: e.to_string(),
                };
                self.errors.push(err);
            })
            .ok()
    }

    fn rule(
        &mut self,
        header: &Header<'_>,
        effect: Effect,
        raw: RawRule,
        seen: &mut HashMap<String, Location>,
    ) -> Rule {
        let name_at = self.at(&raw.name);
        let name = raw.name.into_inner();
        if let Some(reason) = name_problem(&name) {
            self.errors.push(PolicyError::RuleName {
                at: name_at.clone(),
                value: name.clone(),
                reason,
            });
        } else if let Some(first) = seen.get(&name) {
            let err = PolicyError::DuplicateRuleName {
                at: name_at.clone(),
                name: name.clone(),
                first: first.clone(),
            };
            self.errors.push(err);
        } else {
            seen.insert(name.clone(), name_at.clone());
        }
        let to = match (header.scope, &raw.to) {
            (Scope::Service, Some(to)) => {
                let service = header.service.map_or_else(String::new, |s| s.to_string());
                self.errors.push(PolicyError::ToInServiceFile {
                    at: self.at(to),
                    service,
                });
                None
            }
            (Scope::Service, None) => {
                let own = header
                    .service
                    .and_then(|s| IdPattern::parse(s.as_str()).ok());
                own.map(|p| vec![p].into_boxed_slice())
            }
            _ => self.list("to", raw.to, id_pattern),
        };
        Rule {
            name: name.into(),
            file: self.file.into(),
            line: name_at.line,
            effect,
            scope: header.scope,
            dry_run: header.dry_run,
            from: self.list("from", raw.from, id_pattern),
            from_not: self.list("from_not", raw.from_not, id_pattern),
            to,
            methods: self.list("methods", raw.methods, method),
            paths: self.list("paths", raw.paths, path_pattern),
            paths_not: self.list("paths_not", raw.paths_not, path_pattern),
            hosts: self.list("hosts", raw.hosts, host_pattern),
            ports: self.list("ports", raw.ports, port),
        }
    }

    /// Parses each element of a list field with `parse`, which builds the error from the
    /// element's location and value.
    fn list<T, U>(
        &mut self,
        field: &'static str,
        list: List<T>,
        parse: fn(Location, T) -> Result<U, PolicyError>,
    ) -> Option<Box<[U]>> {
        let list = list?;
        if list.get_ref().is_empty() {
            self.errors.push(PolicyError::EmptyList {
                at: self.at(&list),
                field,
            });
            return None;
        }
        let mut out = Vec::with_capacity(list.get_ref().len());
        for item in list.into_inner() {
            let at = self.at(&item);
            match parse(at, item.into_inner()) {
                Ok(v) => out.push(v),
                Err(e) => self.errors.push(e),
            }
        }
        Some(out.into_boxed_slice())
    }
}

/// What every rule of a file shares.
struct Header<'a> {
    scope: Scope,
    service: Option<&'a SpiffeId>,
    dry_run: bool,
}

fn id_pattern(at: Location, value: String) -> Result<IdPattern, PolicyError> {
    IdPattern::parse(&value).map_err(|reason| PolicyError::IdPattern { at, value, reason })
}

fn path_pattern(at: Location, value: String) -> Result<PathPattern, PolicyError> {
    PathPattern::parse(&value).map_err(|reason| PolicyError::PathPattern { at, value, reason })
}

fn host_pattern(at: Location, value: String) -> Result<HostPattern, PolicyError> {
    HostPattern::parse(&value).map_err(|reason| PolicyError::HostPattern { at, value, reason })
}

fn method(at: Location, value: String) -> Result<Box<str>, PolicyError> {
    if pattern::is_method(&value) {
        Ok(value.into())
    } else {
        Err(PolicyError::Method { at, value })
    }
}

fn port(at: Location, value: i64) -> Result<u16, PolicyError> {
    u16::try_from(value)
        .ok()
        .filter(|&p| p != 0)
        .ok_or(PolicyError::Port { at, value })
}

fn name_problem(name: &str) -> Option<&'static str> {
    if name.trim().is_empty() {
        Some("a rule needs a name that is not blank")
    } else if name.chars().any(char::is_control) {
        Some("a rule name may not contain control characters or newlines")
    } else if name.chars().nth(MAX_NAME_CHARS).is_some() {
        Some("a rule name may be at most 200 characters")
    } else {
        None
    }
}

#[cfg(test)]
#[path = "file_tests.rs"]
mod tests;
