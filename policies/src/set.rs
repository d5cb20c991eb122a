//! The compiled `PolicySet`: all files' rules in one canonical order, indexed by the service
//! called and the calling peer, and the decision function that runs on every request.

use std::collections::HashMap;

use crate::error::{PolicyError, PolicyErrors};
use crate::file::{Mode, PolicyFile};
use crate::rule::{Effect, Request, Rule, Scope};

/// Every policy file of a mesh (or of one gateway), compiled for fast decisions.
///
/// The decision does not depend on the order of files or of rules: rules are kept sorted by
/// (deny before allow, mesh-wide before service, file name, rule name), and the first rule in
/// that order that matches decides. The empty set denies everything.
#[derive(Debug, Clone, Default)]
pub struct PolicySet {
    rules: Box<[Rule]>,
    files: Box<[FileInfo]>,
    /// Rules whose `to` is one exact ID, and service files, keyed by that ID.
    by_to: HashMap<Box<str>, Target>,
    /// Mesh-wide rules with no `to` or a wildcard `to`.
    any_to: Bucket,
}

/// The outcome of [`PolicySet::evaluate`], borrowed from the set: no allocation per decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Decision<'p> {
    /// What the gateway must do.
    pub effect: Effect,
    /// The deciding rule; `None` when no rule matched and the default deny decided.
    pub rule: Option<&'p Rule>,
    /// The deciding rule's file; for the default deny, the service's file if it has one.
    pub file: Option<&'p str>,
    /// Dry-run turned a deny into this allow: `rule` (or the default, when `rule` is `None`)
    /// would have denied. Log it; the gateway lets the request through.
    pub dry_run: bool,
}

/// A policy file as the set remembers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileInfo {
    name: Box<str>,
    service: Option<Box<str>>,
    mode: Mode,
    rules: usize,
}

#[derive(Debug, Clone, Default)]
struct Target {
    /// The index in `files` of the service's own file, if it has one.
    service_file: Option<usize>,
    bucket: Bucket,
}

/// Rule indexes (into `PolicySet::rules`, ascending), split by whether `from` is exact.
#[derive(Debug, Clone, Default)]
struct Bucket {
    by_from: HashMap<Box<str>, Vec<usize>>,
    any_from: Vec<usize>,
}

impl PolicySet {
    /// Compiles parsed files. Errors when two files protect the same service, or when two
    /// files have the same name.
    pub fn compile(files: impl IntoIterator<Item = PolicyFile>) -> Result<Self, PolicyErrors> {
        let mut files: Vec<PolicyFile> = files.into_iter().collect();
        files.sort_by(|a, b| a.name().cmp(b.name()));
        let mut errors = Vec::new();
        let mut services: HashMap<&str, &str> = HashMap::new();
        for pair in files.windows(2) {
            if let [a, b] = pair
                && a.name() == b.name()
            {
                errors.push(PolicyError::DuplicateFile {
                    file: a.name().to_owned(),
                });
            }
        }
        for f in &files {
            let Some(service) = f.service() else { continue };
            if let Some(first) = services.insert(service.as_str(), f.name()) {
                errors.push(PolicyError::DuplicateService {
                    service: service.to_string(),
                    first: first.to_owned(),
                    second: f.name().to_owned(),
                });
            }
        }
        if !errors.is_empty() {
            return Err(PolicyErrors::new(errors));
        }
        let infos: Box<[FileInfo]> = files
            .iter()
            .map(|f| FileInfo {
                name: f.name().into(),
                service: f.service().map(|s| s.as_str().into()),
                mode: f.mode(),
                rules: f.rules().len(),
            })
            .collect();
        let mut rules: Vec<Rule> = files.into_iter().flat_map(PolicyFile::into_rules).collect();
        rules.sort_by(|a, b| rank(a).cmp(&rank(b)));
        let mut set = Self {
            rules: Box::default(),
            files: infos,
            by_to: HashMap::new(),
            any_to: Bucket::default(),
        };
        for (i, f) in set.files.iter().enumerate() {
            if let Some(service) = &f.service {
                set.by_to.entry(service.clone()).or_default().service_file = Some(i);
            }
        }
        for (i, rule) in rules.iter().enumerate() {
            set.index(i, rule);
        }
        set.rules = rules.into_boxed_slice();
        Ok(set)
    }

    /// Decides one request. Any matching deny denies; else any matching allow allows; else the
    /// default denies. A service file in dry-run turns its own denies and the default deny into
    /// allows marked `dry_run`; mesh-wide denies are always enforced.
    pub fn evaluate(&self, request: &Request<'_>) -> Decision<'_> {
        let target = self.by_to.get(request.to.as_str());
        let mut best = usize::MAX;
        if let Some(t) = target {
            best = t.bucket.first_match(&self.rules, request, best);
        }
        best = self.any_to.first_match(&self.rules, request, best);
        let service_file = target
            .and_then(|t| t.service_file)
            .and_then(|i| self.files.get(i));
        match self.rules.get(best) {
            Some(rule) => {
                let relaxed =
                    rule.effect == Effect::Deny && rule.scope == Scope::Service && rule.dry_run;
                Decision {
                    effect: if relaxed { Effect::Allow } else { rule.effect },
                    rule: Some(rule),
                    file: Some(&rule.file),
                    dry_run: relaxed,
                }
            }
            None => {
                let dry_run = service_file.is_some_and(|f| f.mode == Mode::DryRun);
                Decision {
                    effect: if dry_run { Effect::Allow } else { Effect::Deny },
                    rule: None,
                    file: service_file.map(|f| &*f.name),
                    dry_run,
                }
            }
        }
    }

    /// Every rule, in the canonical order in which they are tried.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// The files, sorted by name.
    pub fn files(&self) -> &[FileInfo] {
        &self.files
    }

    /// Indexes rule `i` under its exact `to` IDs (or as any `to`), then its exact `from` IDs
    /// (or as any `from`). Rules are indexed in ascending order, so every list stays sorted.
    fn index(&mut self, i: usize, rule: &Rule) {
        let exact_to = rule
            .to
            .as_deref()
            .and_then(|ps| ps.iter().map(|p| p.exact()).collect::<Option<Vec<_>>>());
        match exact_to {
            Some(ids) => {
                for id in ids {
                    self.by_to.entry(id.into()).or_default().bucket.add(i, rule);
                }
            }
            None => self.any_to.add(i, rule),
        }
    }
}

impl<'p> Decision<'p> {
    /// The deciding rule's name, if a rule decided.
    pub fn rule_name(&self) -> Option<&'p str> {
        self.rule.map(Rule::name)
    }

    pub fn is_allowed(&self) -> bool {
        self.effect == Effect::Allow
    }
}

impl FileInfo {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The service the file protects, or `None` for a mesh-wide file.
    pub fn service(&self) -> Option<&str> {
        self.service.as_deref()
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// How many rules the file has.
    pub fn rule_count(&self) -> usize {
        self.rules
    }
}

impl Bucket {
    fn add(&mut self, i: usize, rule: &Rule) {
        let exact_from = rule
            .from
            .as_deref()
            .and_then(|ps| ps.iter().map(|p| p.exact()).collect::<Option<Vec<_>>>());
        match exact_from {
            Some(ids) => {
                for id in ids {
                    push_once(self.by_from.entry(id.into()).or_default(), i);
                }
            }
            None => push_once(&mut self.any_from, i),
        }
    }

    /// The lowest index below `best` of a rule in this bucket that matches, else `best`.
    fn first_match(&self, rules: &[Rule], request: &Request<'_>, best: usize) -> usize {
        let mut best = best;
        if !self.by_from.is_empty()
            && let Some(list) = self.by_from.get(request.from.as_str())
        {
            best = first_in(list, rules, request, best);
        }
        first_in(&self.any_from, rules, request, best)
    }
}

fn first_in(list: &[usize], rules: &[Rule], request: &Request<'_>, best: usize) -> usize {
    for &i in list {
        if i >= best {
            break;
        }
        if rules.get(i).is_some_and(|r| r.matches(request)) {
            return i;
        }
    }
    best
}

fn push_once(list: &mut Vec<usize>, i: usize) {
    if list.last() != Some(&i) {
        list.push(i);
    }
}

/// The canonical order: denies first, mesh-wide before service, then file and rule name
/// (unique together, since names are unique within a file and file names within a set).
fn rank(rule: &Rule) -> (bool, bool, &str, &str) {
    (
        rule.effect == Effect::Allow,
        rule.scope == Scope::Service,
        &rule.file,
        &rule.name,
    )
}

#[cfg(test)]
#[path = "set_tests.rs"]
mod tests;
