//! Rotated files: when a log file grows past its size or age limit the writer renames it to
//! `<name>.<first seq, 20 digits>` (e.g. `audit.jsonl.00000000000000000001`) and goes on in a new
//! `<name>` whose first record continues the chain. Zero-padded seqs sort by name, so
//! `audit.jsonl.* audit.jsonl` lists a log's files in chain order.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// The width of the seq in a rotated file's name: every u64 fits.
const SEQ_DIGITS: usize = 20;

/// When a writer starts a new file. `None` limits never rotate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rotation {
    /// Rotate before a record would be appended to a file that already holds this many bytes.
    pub max_bytes: Option<u64>,
    /// Rotate before a record would be appended to a file whose first record is this old.
    pub max_age: Option<Duration>,
}

impl Rotation {
    /// Never rotates.
    pub fn never() -> Self {
        Self::default()
    }
}

/// The name `path` gets when it is rotated away, its first record having `first_seq`.
pub fn rotated_name(path: &Path, first_seq: u64) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{first_seq:0SEQ_DIGITS$}"));
    PathBuf::from(name)
}

/// One log as files in chain order: its rotated files by seq, then the active file (when it
/// was given).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogFiles {
    /// The active file's path, which names the log.
    pub log: PathBuf,
    pub files: Vec<PathBuf>,
}

/// Groups paths into logs: `X.<20 digits>` belongs with `X`; each log's files are ordered by
/// seq with `X` itself last. Logs come in the order their first file was given.
pub fn group_files(paths: &[PathBuf]) -> Vec<LogFiles> {
    // Each file with its seq (None for the active file).
    type Files = Vec<(Option<u64>, PathBuf)>;
    let mut logs: Vec<(PathBuf, Files)> = Vec::new();
    for path in paths {
        let (log, seq) = match split_rotated(path) {
            Some((log, seq)) => (log, Some(seq)),
            None => (path.clone(), None),
        };
        match logs.iter_mut().find(|(l, _)| *l == log) {
            Some((_, files)) => files.push((seq, path.clone())),
            None => logs.push((log, vec![(seq, path.clone())])),
        }
    }
    logs.into_iter()
        .map(|(log, mut files)| {
            // None (the active file) sorts after every seq.
            files.sort_by_key(|(seq, _)| seq.map_or((1, 0), |s| (0, s)));
            LogFiles {
                log,
                files: files.into_iter().map(|(_, p)| p).collect(),
            }
        })
        .collect()
}

/// `X.<20 digits>` → (`X`, seq).
fn split_rotated(path: &Path) -> Option<(PathBuf, u64)> {
    let name = path.file_name()?.to_str()?;
    let (base, digits) = name.rsplit_once('.')?;
    if base.is_empty() || digits.len() != SEQ_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let seq = digits.parse().ok()?;
    Some((path.with_file_name(base), seq))
}

/// The newest rotated file of the log at `path`, if any, with the first seq its name gives:
/// where a new active file continues.
pub(crate) fn newest_rotated(path: &Path) -> std::io::Result<Option<(u64, PathBuf)>> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut newest: Option<(u64, PathBuf)> = None;
    for entry in std::fs::read_dir(dir)? {
        let candidate = dir.join(entry?.file_name());
        if let Some((log, seq)) = split_rotated(&candidate)
            && log.file_name() == path.file_name()
            && newest.as_ref().is_none_or(|(s, _)| seq > *s)
        {
            newest = Some((seq, candidate));
        }
    }
    Ok(newest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotated_names_sort_in_chain_order_and_group_with_their_log() {
        let a = rotated_name(Path::new("d/audit.jsonl"), 1);
        assert_eq!(a, Path::new("d/audit.jsonl.00000000000000000001"));
        let b = rotated_name(Path::new("d/audit.jsonl"), 1001);
        let active = PathBuf::from("d/audit.jsonl");
        let other = PathBuf::from("gw.jsonl");
        let groups = group_files(&[active.clone(), other.clone(), b.clone(), a.clone()]);
        assert_eq!(
            groups,
            [
                LogFiles {
                    log: active.clone(),
                    files: vec![a, b, active],
                },
                LogFiles {
                    log: other.clone(),
                    files: vec![other],
                },
            ]
        );
        assert_eq!(split_rotated(Path::new("audit.jsonl.123")), None);
    }
}
