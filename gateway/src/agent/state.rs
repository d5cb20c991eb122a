//! The agent's state directory: `key.pem` (PKCS#8, 0600), `svid.pem` (leaf then intermediates),
//! `bundle.pem` (roots), `state.json` (where the CA is, how to recognize it, who we are) and
//! `revocations.json` (the last revocation list accepted, so that a restart while the CA is
//! unreachable still refuses revoked peers). Every file is written atomically, the key first.

use std::fs;
use std::io::{ErrorKind, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use meshgate_identity::SpiffeId;
use meshgate_identity::api::RevocationList;
use serde::{Deserialize, Serialize};

use super::keys::KeyType;
use super::url::CaUrl;
use crate::error::Error;

pub const KEY_FILE: &str = "key.pem";
pub const SVID_FILE: &str = "svid.pem";
pub const BUNDLE_FILE: &str = "bundle.pem";
pub const STATE_FILE: &str = "state.json";
pub const REVOCATIONS_FILE: &str = "revocations.json";

/// Longest file the agent reads back from its state directory.
const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// What the agent needs to talk to its CA again: the token's claims, minus the secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enrollment {
    pub ca_url: CaUrl,
    /// SHA-256 of the root the bootstrap token pinned.
    pub root_sha256: [u8; 32],
    pub spiffe_id: SpiffeId,
    pub key_type: KeyType,
}

impl Enrollment {
    /// Parses the pin as it appears in tokens and state files: 64 lowercase hex digits.
    pub fn parse_pin(hex_text: &str) -> Result<[u8; 32], Error> {
        if hex_text.len() != 64 || hex_text.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(Error::BadPin);
        }
        let mut pin = [0u8; 32];
        hex::decode_to_slice(hex_text, &mut pin).map_err(|_| Error::BadPin)?;
        Ok(pin)
    }
}

/// `state.json` as written on disk.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StateJson {
    ca_url: String,
    root_sha256: String,
    spiffe_id: SpiffeId,
    key_type: KeyType,
    /// `spiffe_sequence` of `bundle.pem`; 0 until the first bundle refresh.
    bundle_sequence: u64,
}

/// The files of a state directory, read back but not yet checked. No `Debug`: it holds the key.
pub(crate) struct StoredFiles {
    pub enrollment: Enrollment,
    pub bundle_sequence: u64,
    pub key_pem: Vec<u8>,
    pub svid_pem: Vec<u8>,
    pub bundle_pem: Vec<u8>,
}

/// Reads a state directory. A missing `state.json` is `Error::NoState`.
pub(crate) fn read(dir: &Path) -> Result<StoredFiles, Error> {
    let state_path = dir.join(STATE_FILE);
    let state_bytes = match read_file(&state_path) {
        Err(Error::Io { source, .. }) if source.kind() == ErrorKind::NotFound => {
            return Err(Error::NoState {
                dir: dir.to_owned(),
            });
        }
        other => other?,
    };
    let bad = |reason: String| Error::BadState {
        path: state_path.clone(),
        reason,
    };
    let state: StateJson = serde_json::from_slice(&state_bytes).map_err(|e| bad(e.to_string()))?;
    let enrollment = Enrollment {
        ca_url: CaUrl::parse(&state.ca_url).map_err(|e| bad(e.to_string()))?,
        root_sha256: Enrollment::parse_pin(&state.root_sha256).map_err(|e| bad(e.to_string()))?,
        spiffe_id: state.spiffe_id,
        key_type: state.key_type,
    };
    Ok(StoredFiles {
        enrollment,
        bundle_sequence: state.bundle_sequence,
        key_pem: read_file(&dir.join(KEY_FILE))?,
        svid_pem: read_file(&dir.join(SVID_FILE))?,
        bundle_pem: read_file(&dir.join(BUNDLE_FILE))?,
    })
}

/// Writes a full set of credentials: key, SVID, bundle, then the state that names them. A crash
/// in between leaves a key that does not match `svid.pem`, which `read` callers detect.
pub(crate) fn write_all(
    dir: &Path,
    key_pem: &[u8],
    svid_pem: &[u8],
    bundle_pem: &[u8],
    enrollment: &Enrollment,
    bundle_sequence: u64,
) -> Result<(), Error> {
    ensure_dir(dir)?;
    write_atomic(&dir.join(KEY_FILE), key_pem, 0o600)?;
    write_atomic(&dir.join(SVID_FILE), svid_pem, 0o644)?;
    write_bundle(dir, bundle_pem, enrollment, bundle_sequence)
}

/// Writes a new bundle and the state that records its sequence.
pub(crate) fn write_bundle(
    dir: &Path,
    bundle_pem: &[u8],
    enrollment: &Enrollment,
    bundle_sequence: u64,
) -> Result<(), Error> {
    write_atomic(&dir.join(BUNDLE_FILE), bundle_pem, 0o644)?;
    let state = StateJson {
        ca_url: enrollment.ca_url.to_string(),
        root_sha256: hex::encode(enrollment.root_sha256),
        spiffe_id: enrollment.spiffe_id.clone(),
        key_type: enrollment.key_type,
        bundle_sequence,
    };
    let mut json = serde_json::to_vec_pretty(&state).map_err(|e| Error::BadState {
        path: dir.join(STATE_FILE),
        reason: e.to_string(),
    })?;
    json.push(b'\n');
    write_atomic(&dir.join(STATE_FILE), &json, 0o644)
}

/// Saves the last accepted revocation list as `revocations.json`.
pub(crate) fn write_revocations(dir: &Path, list: &RevocationList) -> Result<(), Error> {
    let path = dir.join(REVOCATIONS_FILE);
    let mut json = serde_json::to_vec_pretty(list).map_err(|e| Error::BadState {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    json.push(b'\n');
    write_atomic(&path, &json, 0o644)
}

/// Removes `revocations.json`, if any.
pub(crate) fn clear_revocations(dir: &Path) -> Result<(), Error> {
    let path = dir.join(REVOCATIONS_FILE);
    match fs::remove_file(&path) {
        Err(e) if e.kind() != ErrorKind::NotFound => Err(Error::io(&path)(e)),
        _ => Ok(()),
    }
}

/// Reads `revocations.json`: a missing file is an empty list (no list fetched yet); one that
/// cannot be read or parsed is an error that names it.
pub(crate) fn read_revocations(dir: &Path) -> Result<RevocationList, Error> {
    let path = dir.join(REVOCATIONS_FILE);
    let bytes = match read_file(&path) {
        Err(Error::Io { source, .. }) if source.kind() == ErrorKind::NotFound => {
            return Ok(RevocationList::default());
        }
        other => other?,
    };
    serde_json::from_slice(&bytes).map_err(|e| Error::BadState {
        path,
        reason: e.to_string(),
    })
}

/// Creates the state directory (and its parents) with mode 0700 when it does not exist. An
/// existing directory is left as the operator made it.
fn ensure_dir(dir: &Path) -> Result<(), Error> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(Error::io(dir))
}

/// Writes a file atomically with `mode` from its first byte: a temp file in the same directory,
/// fsynced, renamed over `path`, then the directory fsynced so the rename survives a crash.
pub(crate) fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<(), Error> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    // A temp file left by a crash of an earlier process with the same pid.
    match fs::remove_file(&tmp) {
        Err(e) if e.kind() != ErrorKind::NotFound => return Err(Error::io(&tmp)(e)),
        _ => {}
    }
    let result = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
            .map_err(Error::io(&tmp))?;
        f.write_all(contents).map_err(Error::io(&tmp))?;
        f.sync_all().map_err(Error::io(&tmp))?;
        fs::rename(&tmp, path).map_err(Error::io(path))?;
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(Error::io(dir))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn read_file(path: &Path) -> Result<Vec<u8>, Error> {
    let len = fs::metadata(path).map_err(Error::io(path))?.len();
    if len > MAX_FILE_BYTES {
        return Err(Error::BadState {
            path: PathBuf::from(path),
            reason: format!("{len} bytes is too large for a state file"),
        });
    }
    fs::read(path).map_err(Error::io(path))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    fn enrollment() -> Enrollment {
        Enrollment {
            ca_url: CaUrl::parse("https://127.0.0.1:8443").unwrap(),
            root_sha256: [0xab; 32],
            spiffe_id: SpiffeId::parse("spiffe://bank.example/ns/shop/sa/checkout").unwrap(),
            key_type: KeyType::EcdsaP384,
        }
    }

    #[test]
    fn writes_with_modes_and_reads_back() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("new/state");
        write_all(&dir, b"KEY", b"SVID", b"BUNDLE", &enrollment(), 7).unwrap();
        let mode = |f: &str| fs::metadata(dir.join(f)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(KEY_FILE), 0o600);
        assert_eq!(mode(SVID_FILE), 0o644);
        assert_eq!(
            fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        let back = read(&dir).unwrap();
        assert_eq!(back.enrollment, enrollment());
        assert_eq!(back.bundle_sequence, 7);
        assert_eq!(
            (&back.key_pem[..], &back.svid_pem[..], &back.bundle_pem[..]),
            (&b"KEY"[..], &b"SVID"[..], &b"BUNDLE"[..])
        );
        let leftovers: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with('.'))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[test]
    fn missing_or_bad_state_is_named() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(matches!(read(tmp.path()), Err(Error::NoState { .. })));
        fs::write(tmp.path().join(STATE_FILE), b"{\"ca_url\": 1}").unwrap();
        let err = read(tmp.path()).err().unwrap();
        assert!(matches!(err, Error::BadState { .. }), "{err}");
    }

    #[test]
    fn revocations_are_saved_and_read_back() {
        use meshgate_identity::api::RevokedEntry;
        use meshgate_identity::svid::Serial;

        let tmp = tempfile::tempdir().unwrap();
        // Nothing saved yet: an empty list.
        assert_eq!(
            read_revocations(tmp.path()).unwrap(),
            RevocationList::default()
        );
        let list = RevocationList {
            sequence: 4,
            revoked: vec![RevokedEntry {
                serial: Serial::from_bytes(&[0x01, 0x02, 0x03]),
                spiffe_id: SpiffeId::parse("spiffe://bank.example/ns/shop/sa/web").unwrap(),
                at: 1_700_000_000,
            }],
        };
        write_revocations(tmp.path(), &list).unwrap();
        assert_eq!(read_revocations(tmp.path()).unwrap(), list);
        let mode = fs::metadata(tmp.path().join(REVOCATIONS_FILE))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o644);
        // A corrupt file is an error that names it.
        fs::write(tmp.path().join(REVOCATIONS_FILE), b"{\"sequence\": ").unwrap();
        let err = read_revocations(tmp.path()).err().unwrap();
        assert!(
            matches!(&err, Error::BadState { path, .. } if path.ends_with(REVOCATIONS_FILE)),
            "{err}"
        );
        assert!(err.to_string().contains(REVOCATIONS_FILE), "{err}");
    }

    #[test]
    fn pins_are_64_lowercase_hex() {
        assert_eq!(Enrollment::parse_pin(&"ab".repeat(32)).unwrap(), [0xab; 32]);
        for bad in [
            "",
            "ab",
            &"AB".repeat(32),
            &"zz".repeat(32),
            &"ab".repeat(33),
        ] {
            assert!(Enrollment::parse_pin(bad).is_err(), "{bad}");
        }
    }
}
