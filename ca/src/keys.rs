//! Key types, key generation, and private key files (PKCS#8 PEM, mode 0600, written atomically).

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;

use rcgen::{KeyPair, SignatureAlgorithm};
use serde::{Deserialize, Serialize};

use crate::error::CaError;

/// The key types the CA creates and accepts in CSRs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum KeyType {
    #[default]
    EcdsaP256,
    EcdsaP384,
    Ed25519,
}

impl KeyType {
    pub const ALL: [KeyType; 3] = [Self::EcdsaP256, Self::EcdsaP384, Self::Ed25519];

    pub fn name(self) -> &'static str {
        match self {
            Self::EcdsaP256 => "ecdsa-p256",
            Self::EcdsaP384 => "ecdsa-p384",
            Self::Ed25519 => "ed25519",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == s)
    }

    pub(crate) fn algorithm(self) -> &'static SignatureAlgorithm {
        match self {
            Self::EcdsaP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            Self::EcdsaP384 => &rcgen::PKCS_ECDSA_P384_SHA384,
            Self::Ed25519 => &rcgen::PKCS_ED25519,
        }
    }

    /// A new key pair of this type, made on this machine.
    pub fn generate(self) -> Result<KeyPair, CaError> {
        Ok(KeyPair::generate_for(self.algorithm())?)
    }
}

impl std::fmt::Display for KeyType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Reads a PKCS#8 PEM private key file.
pub fn read_key_file(path: &Path) -> Result<KeyPair, CaError> {
    let pem = fs::read_to_string(path).map_err(|e| CaError::BadKeyFile {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    KeyPair::from_pem(&pem).map_err(|e| CaError::BadKeyFile {
        path: path.to_owned(),
        reason: format!("not a PKCS#8 private key PEM ({e})"),
    })
}

/// Writes a secret file with mode 0600 from the first byte on, atomically: a temp file in the
/// same directory, fsynced, then renamed over `path`.
pub fn write_secret_file(path: &Path, contents: &[u8]) -> Result<(), CaError> {
    write_file_atomic(path, contents, 0o600)
}

/// Writes a file atomically with the given mode (temp file, fsync, rename, fsync of the directory).
pub fn write_file_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<(), CaError> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
            .map_err(CaError::io(&tmp))?;
        f.write_all(contents).map_err(CaError::io(&tmp))?;
        f.sync_all().map_err(CaError::io(&tmp))?;
        fs::rename(&tmp, path).map_err(CaError::io(path))?;
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(CaError::io(dir))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}
