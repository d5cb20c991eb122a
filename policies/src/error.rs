//! The crate's one error type: what is wrong in a policy file or a set of files, and where
//! (`file:line:column`, with the offending value).

use std::fmt;

/// A place in a policy file: the file's name as given to the parser, then the 1-based line and
/// column (counted in characters) of the offending value.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Location {
    pub file: String,
    pub line: u32,
    pub column: u32,
}

/// Something wrong in policy files. Every variant is the fault of whoever wrote the files.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// Not TOML, or TOML that does not fit the format: an unknown key, a wrong type, a missing
    /// or repeated key. The message is the TOML parser's.
    #[error("{at}: {message}")]
    Toml { at: Location, message: String },
    /// Bytes that are not UTF-8, located at the first bad one.
    #[error("{at}: the file is not UTF-8 text; a policy file is UTF-8 TOML")]
    NotUtf8 { at: Location },
    #[error("{at}: {value:?} is not a valid SPIFFE ID pattern: {reason}")]
    IdPattern {
        at: Location,
        value: String,
        reason: String,
    },
    #[error("{at}: {value:?} is not a valid service SPIFFE ID: {reason}")]
    ServiceId {
        at: Location,
        value: String,
        reason: String,
    },
    #[error("{at}: {value:?} is not a valid path pattern: {reason}")]
    PathPattern {
        at: Location,
        value: String,
        reason: &'static str,
    },
    #[error("{at}: {value:?} is not a valid host pattern: {reason}")]
    HostPattern {
        at: Location,
        value: String,
        reason: &'static str,
    },
    #[error(
        "{at}: {value:?} is not an HTTP method; expected an uppercase token such as \"GET\" or \"POST\""
    )]
    Method { at: Location, value: String },
    #[error("{at}: {value} is not a port; expected a number from 1 to 65535")]
    Port { at: Location, value: i64 },
    #[error("{at}: {value:?} is not a mode; expected \"enforce\" or \"dry-run\"")]
    Mode { at: Location, value: String },
    #[error(
        "{at}: `mode` needs `service`: only a service file has a mode; mesh-wide rules are always enforced"
    )]
    ModeWithoutService { at: Location },
    #[error(
        "{at}: `{field}` is an empty list, which no request could match; list at least one value, or leave `{field}` out to match any"
    )]
    EmptyList { at: Location, field: &'static str },
    #[error("{at}: {value:?} is not a valid rule name: {reason}")]
    RuleName {
        at: Location,
        value: String,
        reason: &'static str,
    },
    #[error(
        "{at}: rule name {name:?} is already used at {first}; rule names are unique within a file"
    )]
    DuplicateRuleName {
        at: Location,
        name: String,
        first: Location,
    },
    #[error(
        "{at}: `to` is not allowed in the service file of {service}, whose rules all protect that service; put rules with `to` in a mesh-wide file (one without `service`)"
    )]
    ToInServiceFile { at: Location, service: String },
    #[error(
        "{second}: service {service} already has a policy file, {first}; a service has one file"
    )]
    DuplicateService {
        service: String,
        first: String,
        second: String,
    },
    #[error("policy file {file:?} is given twice")]
    DuplicateFile { file: String },
}

impl PolicyError {
    /// Where the error is, when it is at one place in one file.
    pub fn location(&self) -> Option<&Location> {
        match self {
            Self::Toml { at, .. }
            | Self::NotUtf8 { at }
            | Self::IdPattern { at, .. }
            | Self::ServiceId { at, .. }
            | Self::PathPattern { at, .. }
            | Self::HostPattern { at, .. }
            | Self::Method { at, .. }
            | Self::Port { at, .. }
            | Self::Mode { at, .. }
            | Self::ModeWithoutService { at }
            | Self::EmptyList { at, .. }
            | Self::RuleName { at, .. }
            | Self::DuplicateRuleName { at, .. }
            | Self::ToInServiceFile { at, .. } => Some(at),
            Self::DuplicateService { .. } | Self::DuplicateFile { .. } => None,
        }
    }
}

/// Every error found in one parse or one compile, in the order of the text. Never empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyErrors(Vec<PolicyError>);

impl PolicyErrors {
    pub fn as_slice(&self) -> &[PolicyError] {
        &self.0
    }

    pub fn iter(&self) -> std::slice::Iter<'_, PolicyError> {
        self.0.iter()
    }

    pub fn into_vec(self) -> Vec<PolicyError> {
        self.0
    }

    /// Wraps a list that the caller knows to be non-empty.
    pub(crate) fn new(errors: Vec<PolicyError>) -> Self {
        Self(errors)
    }
}

impl fmt::Display for PolicyErrors {
    /// One error a line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for PolicyErrors {}

impl IntoIterator for PolicyErrors {
    type Item = PolicyError;
    type IntoIter = std::vec::IntoIter<PolicyError>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl<'a> IntoIterator for &'a PolicyErrors {
    type Item = &'a PolicyError;
    type IntoIter = std::slice::Iter<'a, PolicyError>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl From<PolicyError> for PolicyErrors {
    fn from(e: PolicyError) -> Self {
        Self(vec![e])
    }
}

impl Location {
    /// The location of byte `offset` of `text` in file `file`. An offset past the end or inside
    /// a character is moved back to the nearest character start.
    pub(crate) fn at(file: &str, text: &str, offset: usize) -> Self {
        LineIndex::new(text).locate(file, text, offset)
    }
}

/// Where each line of a text starts, so that locating an offset costs a binary search and a
/// walk along one line instead of a scan from the start of the file: a file of thousands of
/// rules asks for a location per list element.
pub(crate) struct LineIndex {
    starts: Vec<usize>,
}

impl LineIndex {
    pub(crate) fn new(text: &str) -> Self {
        let starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Self { starts }
    }

    /// As [`Location::at`], for the `text` this index was made from.
    pub(crate) fn locate(&self, file: &str, text: &str, offset: usize) -> Location {
        let mut end = offset.min(text.len());
        while !text.is_char_boundary(end) {
            end = end.saturating_sub(1);
        }
        // The number of line starts at or before `end` is the 1-based line number.
        let line = self.starts.partition_point(|&s| s <= end).max(1);
        let line_start = line
            .checked_sub(1)
            .and_then(|i| self.starts.get(i))
            .copied()
            .unwrap_or(0);
        let column = text
            .get(line_start..end)
            .unwrap_or_default()
            .chars()
            .count()
            + 1;
        Location {
            file: file.to_owned(),
            line: to_u32(line),
            column: to_u32(column),
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.column)
    }
}

fn to_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn location_counts_lines_and_characters() {
        let text = "a = 1\nné = \"x\"\n";
        let at = Location::at("f.toml", text, text.find('=').unwrap());
        assert_eq!(at.to_string(), "f.toml:1:3");
        let second = text.rfind('=').unwrap();
        assert_eq!(
            Location::at("f.toml", text, second).to_string(),
            "f.toml:2:4"
        );
        // Inside a multi-byte character, and past the end: no panic, a nearby place.
        let inside = text.find('é').unwrap() + 1;
        assert_eq!(
            Location::at("f.toml", text, inside).to_string(),
            "f.toml:2:2"
        );
        assert_eq!(Location::at("f.toml", text, 999).to_string(), "f.toml:3:1");
    }
}
