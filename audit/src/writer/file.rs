//! The log file itself: creating it safely, knowing whether a path still names the file we
//! hold (another process may have rotated it), and reading it through our own descriptor.

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::path::Path;

use crate::AuditError;

/// Opens `path` for reading and appending; creates it (0600, and syncs the directory) if absent.
pub(super) fn open_file(path: &Path) -> Result<(File, bool), AuditError> {
    let mut options = OpenOptions::new();
    options.read(true).append(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.clone().create_new(true).open(path) {
        Ok(file) => {
            sync_parent(path)?;
            Ok((file, true))
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            let file = options.open(path).map_err(AuditError::io(path, "open"))?;
            Ok((file, false))
        }
        Err(e) => Err(AuditError::io(path, "create")(e)),
    }
}

/// Opens `path` and takes its lock, making sure the file locked is still the one `path` names:
/// a writer in another process may have rotated it away while we waited for the lock.
pub(super) fn open_locked(path: &Path) -> Result<(File, bool), AuditError> {
    let mut tries = 0;
    loop {
        let (file, created) = open_file(path)?;
        // A device or a pipe would be read to its end when opened (it has none: /dev/zero
        // never stops) and takes no fsync: a log is a regular file.
        if !file
            .metadata()
            .map_err(AuditError::io(path, "stat"))?
            .is_file()
        {
            return Err(AuditError::Io {
                path: path.to_owned(),
                op: "open",
                source: io::Error::other("not a regular file; give the path of a file"),
            });
        }
        file.lock().map_err(AuditError::io(path, "lock"))?;
        if is_at(&file, path).map_err(AuditError::io(path, "stat"))? {
            return Ok((file, created));
        }
        tries += 1;
        if tries >= 8 {
            return Err(AuditError::Io {
                path: path.to_owned(),
                op: "open",
                source: io::Error::other("the file keeps being replaced while it is opened"),
            });
        }
    }
}

/// Whether `path` names `file` (same device and inode); false when `path` is gone.
pub(super) fn is_at(file: &File, path: &Path) -> io::Result<bool> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let held = file.metadata()?;
        match std::fs::metadata(path) {
            Ok(named) => Ok(held.dev() == named.dev() && held.ino() == named.ino()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (file, path);
        Ok(true)
    }
}

/// Makes a directory entry (a new or renamed file) durable.
pub(super) fn sync_parent(path: &Path) -> Result<(), AuditError> {
    #[cfg(unix)]
    {
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(AuditError::io(dir, "sync directory"))?;
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

/// Reads a file from its start through a descriptor we hold, without moving the descriptor's
/// offset (an append-mode descriptor; the path may name another file by now).
pub(super) struct ReadAt<'a> {
    file: &'a File,
    pos: u64,
}

impl<'a> ReadAt<'a> {
    pub(super) fn new(file: &'a File) -> Self {
        Self::from(file, 0)
    }

    /// Reads on from byte `pos`.
    pub(super) fn from(file: &'a File, pos: u64) -> Self {
        Self { file, pos }
    }
}

/// The bytes `from..to` of `file` (a line: the caller keeps the range short).
pub(super) fn read_range(file: &File, from: u64, to: u64) -> io::Result<Vec<u8>> {
    let len = usize::try_from(to.saturating_sub(from))
        .map_err(|_| io::Error::other("range too long to read"))?;
    let mut buf = vec![0; len];
    ReadAt::from(file, from).read_exact(&mut buf)?;
    Ok(buf)
}

/// The file's last line without its newline, read from its end: `None` when the file is
/// empty, does not end in a newline, or its last line is longer than a record may be.
pub(super) fn last_line(file: &File) -> io::Result<Option<Vec<u8>>> {
    let len = file.metadata()?.len();
    // The longest line, newline included, and the newline of the line before it.
    let from = len.saturating_sub(crate::MAX_LINE_BYTES as u64 + 1);
    let mut buf = read_range(file, from, len)?;
    if buf.pop() != Some(b'\n') {
        return Ok(None);
    }
    Ok(match buf.iter().rposition(|b| *b == b'\n') {
        Some(i) => Some(buf.split_off(i.saturating_add(1))),
        None if from == 0 => Some(buf),
        None => None,
    })
}

impl Read for ReadAt<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        #[cfg(unix)]
        let n = std::os::unix::fs::FileExt::read_at(self.file, buf, self.pos)?;
        #[cfg(not(unix))]
        let n = {
            use std::io::{Seek, SeekFrom};
            let mut f = self.file;
            f.seek(SeekFrom::Start(self.pos))?;
            f.read(buf)?
        };
        self.pos = self.pos.saturating_add(n as u64);
        Ok(n)
    }
}
