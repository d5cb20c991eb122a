//! The certificate authority of one trust domain, kept in a directory: `ca.db` (the datastore)
//! and `keys/` (private keys, mode 0600). Creates itself atomically, signs CSRs, renews its
//! intermediate at half-life, and answers with its trust bundle.

use std::cell::RefCell;
use std::fs;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use meshgate_identity::api::CA_ID_PATH;
use meshgate_identity::bundle::pem_encode;
use meshgate_identity::svid::{check_leaf, check_signing_cert};
use meshgate_identity::{Serial, SpiffeId, TrustBundle, TrustDomain};
use rcgen::{Issuer, KeyPair};
use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;

use crate::csr::{CheckedCsr, check_csr, make_csr};
use crate::error::CaError;
use crate::keys::{KeyType, read_key_file, write_secret_file};
use crate::profile;
use crate::sqlite::{DB_FILE, SqliteStore};
use crate::store::{AuthorityKind, AuthorityRecord, AuthorityState, CaMeta, IssuedCert, Store};

/// What `ca init` made.
#[derive(Debug, Clone)]
pub struct InitReport {
    pub trust_domain: TrustDomain,
    pub key_type: KeyType,
    /// SHA-256 of the root certificate DER, lowercase hex: what bootstrap tokens pin.
    pub root_sha256: String,
    pub root_not_after: i64,
    pub intermediate_not_after: i64,
}

/// A leaf SVID just issued: the chain (leaf, then intermediate) and its datastore record.
#[derive(Debug, Clone)]
pub struct IssuedSvid {
    pub chain: Vec<CertificateDer<'static>>,
    pub record: IssuedCert,
}

/// An opened CA directory, ready to sign.
#[derive(Debug)]
pub struct Authority {
    pub(crate) dir: PathBuf,
    pub(crate) store: SqliteStore,
    pub(crate) meta: CaMeta,
    /// Shared with the [`Minter`]s in flight, which sign outside the server's lock.
    pub(crate) signer: Arc<Signer>,
    /// The datastore's `state_version` when `signer` was loaded.
    state_version: u64,
    /// Lifetime of the SVIDs minted by enrollment and renewal.
    pub(crate) leaf_ttl: Duration,
    /// The last bundle read, with the `state_version` read before it: every change of the roots
    /// or the bundle sequence bumps that version, so one small read tells whether it is current.
    /// Every enrollment and renewal answer carries the bundle; reading and parsing every root
    /// for each cost more than signing the certificate.
    bundle_cache: RefCell<Option<(u64, TrustBundle)>>,
}

/// What an enrollment or a renewal needs to start without the CA's lock, as the datastore was at
/// one `state_version`: the signer, the bundle that goes with what it signs, and both as PEM,
/// encoded once rather than for every answer. Usable only while the datastore is still at that
/// version (every change of the roots, the intermediates or the bundle bumps it).
#[derive(Debug)]
pub(crate) struct IssuanceView {
    pub(crate) version: u64,
    pub(crate) minter: Minter,
    pub(crate) bundle: TrustBundle,
    pub(crate) bundle_pem: String,
    intermediate_pem: String,
}

impl IssuanceView {
    /// A chain this view's signer minted, as PEM.
    pub(crate) fn chain_pem(&self, chain: &[CertificateDer<'_>]) -> String {
        let intermediate = self.minter.signer.intermediate.cert_der.as_slice();
        chain
            .iter()
            .map(|c| {
                if c.as_ref() == intermediate {
                    self.intermediate_pem.clone()
                } else {
                    pem_encode("CERTIFICATE", c)
                }
            })
            .collect()
    }
}

/// The active intermediate, ready to sign with its key, and the root above it.
#[derive(Debug)]
pub(crate) struct Signer {
    pub(crate) intermediate: AuthorityRecord,
    /// The intermediate's name, key identifier and key, read from its certificate once when
    /// loaded rather than for every certificate it signs.
    issuer: Issuer<'static, KeyPair>,
    pub(crate) root: AuthorityRecord,
}

impl Authority {
    /// Creates a new CA in `dir`: a root and an intermediate, built in a temporary sibling
    /// directory and renamed into place, so a failure leaves nothing behind. Refuses a `dir`
    /// that exists and is not empty.
    pub fn init(
        dir: &Path,
        trust_domain: TrustDomain,
        key_type: KeyType,
        now: OffsetDateTime,
    ) -> Result<InitReport, CaError> {
        if dir_has_entries(dir)? {
            return Err(CaError::AlreadyExists(dir.to_owned()));
        }
        let parent = dir
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let staging = parent.join(format!(".{name}.init-{}", std::process::id()));
        let result = build_ca(&staging, &trust_domain, key_type, now).and_then(|report| {
            fs::rename(&staging, dir).map_err(CaError::io(dir))?;
            Ok(report)
        });
        if result.is_err() {
            let _ = fs::remove_dir_all(&staging);
        }
        result
    }

    /// Opens an existing CA directory.
    pub fn open(dir: &Path) -> Result<Self, CaError> {
        let db = dir.join(DB_FILE);
        if !db.is_file() {
            return Err(CaError::NotACa(dir.to_owned()));
        }
        let store = SqliteStore::open(&db)?;
        let meta = store.meta()?;
        let state_version = state_version(&store)?;
        let signer = load_signer(dir, &store)?;
        Ok(Self {
            dir: dir.to_owned(),
            store,
            meta,
            signer,
            state_version,
            leaf_ttl: profile::LEAF_TTL,
            bundle_cache: RefCell::new(None),
        })
    }

    /// Re-reads the signing state if another process (the CLI) changed it; true if it did.
    pub fn reload_if_changed(&mut self) -> Result<bool, CaError> {
        let version = state_version(&self.store)?;
        if version == self.state_version {
            return Ok(false);
        }
        self.meta = self.store.meta()?;
        self.signer = load_signer(&self.dir, &self.store)?;
        self.state_version = version;
        Ok(true)
    }

    /// Sets the lifetime of the SVIDs that enrollment and renewal mint (1 h unless set), within
    /// [`profile::MIN_LEAF_TTL`] and [`profile::MAX_LEAF_TTL`].
    pub fn set_leaf_ttl(&mut self, ttl: Duration) -> Result<(), CaError> {
        profile::check_leaf_ttl(ttl)?;
        self.leaf_ttl = ttl;
        // The refresh hint depends on it.
        self.bundle_cache.replace(None);
        Ok(())
    }

    pub fn trust_domain(&self) -> &TrustDomain {
        &self.meta.trust_domain
    }

    pub fn key_type(&self) -> KeyType {
        self.meta.key_type
    }

    /// The trust bundle: every root in it and its sequence number, as the datastore has them now
    /// (not as of the last reload, so that the sequence always matches the roots).
    pub fn bundle(&self) -> Result<TrustBundle, CaError> {
        // Read before the bundle: a change committed in between makes the next call read again.
        let version = state_version(&self.store)?;
        if let Some((v, bundle)) = &*self.bundle_cache.borrow()
            && *v == version
        {
            return Ok(bundle.clone());
        }
        let bundle = self.read_bundle()?;
        self.bundle_cache.replace(Some((version, bundle.clone())));
        Ok(bundle)
    }

    /// The signer and bundle of issuance as of the datastore's current version; `None` while the
    /// bundle no longer holds the signer's root (until the next reload).
    pub(crate) fn issuance_view(&self) -> Result<Option<IssuanceView>, CaError> {
        // Read before the bundle, which is at least this new: if the datastore is still at this
        // version when the view is used, the bundle is exactly what it holds.
        let version = state_version(&self.store)?;
        let bundle = match self.bundle_for_issuance() {
            Ok(bundle) => bundle,
            Err(CaError::Reloading) => return Ok(None),
            Err(e) => return Err(e),
        };
        Ok(Some(IssuanceView {
            version,
            minter: self.minter(),
            bundle_pem: bundle.to_pem(),
            bundle,
            intermediate_pem: pem_encode("CERTIFICATE", &self.signer.intermediate.cert_der),
        }))
    }

    /// The bundle to hand out with a certificate minted now. Between a rotation from the CLI
    /// and this process's next reload the datastore may no longer list the root the loaded
    /// signer chains to: refused then, before anything is spent, rather than answering with a
    /// bundle the new SVID does not verify against.
    pub(crate) fn bundle_for_issuance(&self) -> Result<TrustBundle, CaError> {
        let bundle = self.bundle()?;
        let root = self.signer.root.cert_der.as_slice();
        if bundle.roots().iter().any(|r| r.as_ref() == root) {
            Ok(bundle)
        } else {
            Err(CaError::Reloading)
        }
    }

    fn read_bundle(&self) -> Result<TrustBundle, CaError> {
        let (sequence, authorities) = self.store.bundle_state()?;
        let roots = authorities
            .into_iter()
            .filter(|a| a.kind == AuthorityKind::Root && a.state.in_bundle())
            .map(|a| CertificateDer::from(a.cert_der))
            .collect();
        let mut bundle = TrustBundle::new(self.meta.trust_domain.clone(), roots).map_err(|e| {
            CaError::BadCaCert {
                what: "bundle".into(),
                reason: e.to_string(),
            }
        })?;
        bundle.sequence = sequence;
        // Consumers refresh several times per SVID lifetime, so a rotation step reaches them all
        // well within the life of the SVIDs in flight (5 min for 1 h SVIDs).
        let hint = profile::BUNDLE_REFRESH_HINT.min(self.leaf_ttl / 6);
        bundle.refresh_hint = Some(hint.as_secs().max(1));
        Ok(bundle)
    }

    /// Signs a CSR for `id` after checking it, records the certificate, and only then returns it.
    pub fn sign_csr(
        &mut self,
        csr_der: &[u8],
        id: &SpiffeId,
        dns_names: &[String],
        ttl: Duration,
        now: OffsetDateTime,
    ) -> Result<IssuedSvid, CaError> {
        self.check_issuable(id)?;
        let csr = check_csr(csr_der, id)?;
        self.sign_checked(&csr, dns_names, ttl, now)
    }

    /// Issues an SVID for a key made here (`ca issue`): the key never leaves this machine's disk.
    pub fn issue_with_new_key(
        &mut self,
        id: &SpiffeId,
        dns_names: &[String],
        ttl: Duration,
        now: OffsetDateTime,
    ) -> Result<(IssuedSvid, KeyPair), CaError> {
        self.check_issuable(id)?;
        let key = self.meta.key_type.generate()?;
        let csr = make_csr(id, &key)?;
        let issued = self.sign_csr(&csr, id, dns_names, ttl, now)?;
        Ok((issued, key))
    }

    /// Every certificate this CA issued, oldest first.
    pub fn list(&self) -> Result<Vec<IssuedCert>, CaError> {
        self.store.list_issued()
    }

    /// Workload IDs only: inside the trust domain, with a path, and never the CA's own ID.
    pub(crate) fn check_issuable(&self, id: &SpiffeId) -> Result<(), CaError> {
        check_issuable(&self.meta.trust_domain, id)
    }

    /// What signs enrollments and renewals now, detached from the datastore: the server signs
    /// with it outside its lock, on every core, and commits what it signed in a group.
    pub(crate) fn minter(&self) -> Minter {
        Minter {
            signer: self.signer.clone(),
            trust_domain: self.meta.trust_domain.clone(),
            leaf_ttl: self.leaf_ttl,
        }
    }

    /// The CA's own ID, `spiffe://<td>/meshgate/ca`.
    pub fn ca_id(&self) -> Result<SpiffeId, CaError> {
        Ok(SpiffeId::parse(&format!(
            "{}{CA_ID_PATH}",
            self.meta.trust_domain.id()
        ))?)
    }

    /// An SVID for the CA's own TLS listener, with a key that never leaves memory. The chain ends
    /// with the root, so enrolling clients can match the root against their token's pin.
    pub fn own_svid(&mut self, now: OffsetDateTime) -> Result<(IssuedSvid, KeyPair), CaError> {
        let id = self.ca_id()?;
        let key = self.meta.key_type.generate()?;
        let csr = check_csr(&make_csr(&id, &key)?, &id)?;
        let mut issued = self.sign_checked(&csr, &[], profile::LEAF_TTL, now)?;
        issued
            .chain
            .push(CertificateDer::from(self.signer.root.cert_der.clone()));
        Ok((issued, key))
    }

    /// SHA-256 of the root above the signing intermediate, lowercase hex: what tokens pin.
    pub fn root_sha256(&self) -> String {
        hex::encode(meshgate_identity::svid::sha256_of(
            &self.signer.root.cert_der,
        ))
    }

    fn sign_checked(
        &mut self,
        csr: &CheckedCsr,
        dns_names: &[String],
        ttl: Duration,
        now: OffsetDateTime,
    ) -> Result<IssuedSvid, CaError> {
        let issued = self.signer.mint(csr, dns_names, ttl, now)?;
        self.store.record_issued(&issued.record)?;
        Ok(issued)
    }

    /// The CA directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// The active signer with the settings of enrollment and renewal: signs CSRs with no I/O and
/// no lock. What it signs must be committed (a [`crate::store::IssuanceWrite`]) before it is
/// handed out.
#[derive(Debug, Clone)]
pub(crate) struct Minter {
    signer: Arc<Signer>,
    trust_domain: TrustDomain,
    leaf_ttl: Duration,
}

impl Minter {
    /// Checks `csr_der` against `id` and signs it with the leaf profile.
    pub(crate) fn mint(
        &self,
        csr_der: &[u8],
        id: &SpiffeId,
        now: OffsetDateTime,
    ) -> Result<IssuedSvid, CaError> {
        let csr = check_csr(csr_der, id)?;
        self.mint_checked(&csr, now)
    }

    /// Signs a CSR already checked for its SPIFFE ID.
    pub(crate) fn mint_checked(
        &self,
        csr: &CheckedCsr,
        now: OffsetDateTime,
    ) -> Result<IssuedSvid, CaError> {
        self.signer.mint(csr, &[], self.leaf_ttl, now)
    }

    pub(crate) fn check_issuable(&self, id: &SpiffeId) -> Result<(), CaError> {
        check_issuable(&self.trust_domain, id)
    }
}

fn check_issuable(td: &TrustDomain, id: &SpiffeId) -> Result<(), CaError> {
    if !id.is_member_of(td) {
        return Err(CaError::ForeignTrustDomain(id.to_string(), td.to_string()));
    }
    id.require_path()?;
    if id.path() == CA_ID_PATH {
        return Err(CaError::ReservedId(id.to_string()));
    }
    Ok(())
}

fn build_ca(
    staging: &Path,
    td: &TrustDomain,
    key_type: KeyType,
    now: OffsetDateTime,
) -> Result<InitReport, CaError> {
    fs::DirBuilder::new()
        .mode(0o700)
        .create(staging)
        .map_err(CaError::io(staging))?;
    let keys = staging.join("keys");
    fs::DirBuilder::new()
        .mode(0o700)
        .create(&keys)
        .map_err(CaError::io(&keys))?;

    let root_key = key_type.generate()?;
    let root_params = profile::root_params(td, now, profile::ROOT_TTL)?;
    let root = root_params.self_signed(&root_key)?;
    check_signing_cert(root.der())?;

    let inter_key = key_type.generate()?;
    let inter_params =
        profile::intermediate_params(td, now, profile::INTERMEDIATE_TTL, root_params.not_after)?;
    let root_issuer = Issuer::new(root_params, &root_key);
    let inter = inter_params.signed_by(&inter_key, &root_issuer)?;
    check_signing_cert(inter.der())?;

    let root_rec = record(1, AuthorityKind::Root, root.der(), None)?;
    let inter_rec = record(2, AuthorityKind::Intermediate, inter.der(), Some(1))?;
    write_secret_file(
        &staging.join(&root_rec.key_file),
        root_key.serialize_pem().as_bytes(),
    )?;
    write_secret_file(
        &staging.join(&inter_rec.key_file),
        inter_key.serialize_pem().as_bytes(),
    )?;

    let meta = CaMeta {
        trust_domain: td.clone(),
        key_type,
        bundle_sequence: 1,
    };
    let db = staging.join(DB_FILE);
    // The datastore will hold token hashes: private to the CA's user from the first byte.
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&db)
        .map_err(CaError::io(&db))?;
    let mut store = SqliteStore::open(&db)?;
    store.initialize(&meta, &root_rec, &inter_rec)?;
    drop(store);
    fs::set_permissions(staging, fs::Permissions::from_mode(0o700))
        .map_err(CaError::io(staging))?;
    Ok(InitReport {
        trust_domain: td.clone(),
        key_type,
        root_sha256: hex::encode(meshgate_identity::svid::sha256_of(root.der())),
        root_not_after: root_rec.not_after,
        intermediate_not_after: inter_rec.not_after,
    })
}

pub(crate) fn record(
    id: i64,
    kind: AuthorityKind,
    der: &CertificateDer<'_>,
    parent: Option<i64>,
) -> Result<AuthorityRecord, CaError> {
    let cert = meshgate_identity::svid::parse_cert(der)?;
    let validity = cert.validity();
    let serial = Serial::from_bytes(cert.raw_serial());
    let role = match kind {
        AuthorityKind::Root => "root",
        AuthorityKind::Intermediate => "intermediate",
    };
    Ok(AuthorityRecord {
        id,
        kind,
        key_file: format!("keys/{role}-{serial}.key.pem"),
        serial,
        cert_der: der.to_vec(),
        parent,
        not_before: validity.not_before.timestamp(),
        not_after: validity.not_after.timestamp(),
        state: AuthorityState::Active,
    })
}

impl Signer {
    /// Signs a checked CSR with the CA's profile. Records nothing: the caller does, before
    /// handing the certificate out.
    pub(crate) fn mint(
        &self,
        csr: &CheckedCsr,
        dns_names: &[String],
        ttl: Duration,
        now: OffsetDateTime,
    ) -> Result<IssuedSvid, CaError> {
        let cap =
            OffsetDateTime::from_unix_timestamp(self.intermediate.not_after).map_err(|e| {
                CaError::BadCaCert {
                    what: "intermediate".into(),
                    reason: e.to_string(),
                }
            })?;
        if now >= cap {
            return Err(CaError::IntermediateExpired(self.intermediate.not_after));
        }
        let mut params = profile::leaf_params(&csr.spiffe_id, dns_names, now, ttl, cap)?;
        profile::add_subject_key_identifier(&mut params, &csr.public_key);
        let issuer_der = CertificateDer::from(self.intermediate.cert_der.clone());
        let cert = params.signed_by(&csr.public_key, &self.issuer)?;
        let info = check_leaf(cert.der())?;
        let record = IssuedCert {
            serial: info.serial,
            spiffe_id: info.spiffe_id,
            sha256: hex::encode(info.sha256),
            not_before: as_i64(info.not_before),
            not_after: as_i64(info.not_after),
            issuer: self.intermediate.serial.clone(),
            dns_names: info.dns_names,
            issued_at: now.unix_timestamp(),
        };
        Ok(IssuedSvid {
            chain: vec![cert.der().clone(), issuer_der],
            record,
        })
    }
}

fn load_signer(dir: &Path, store: &SqliteStore) -> Result<Arc<Signer>, CaError> {
    let intermediate = newest_active(store, AuthorityKind::Intermediate)?;
    let key = read_key_file(&dir.join(&intermediate.key_file))?;
    let issuer =
        Issuer::from_ca_cert_der(&CertificateDer::from(intermediate.cert_der.as_slice()), key)?;
    let root = store
        .authorities()?
        .into_iter()
        .find(|a| Some(a.id) == intermediate.parent)
        .ok_or(CaError::NoActiveAuthority(
            "root of the active intermediate",
        ))?;
    Ok(Arc::new(Signer {
        intermediate,
        issuer,
        root,
    }))
}

/// The datastore's `state_version`: bumped by every change of the roots, the intermediates or
/// the bundle.
pub(crate) fn state_version(store: &SqliteStore) -> Result<u64, CaError> {
    Ok(store
        .meta_value("state_version")?
        .and_then(|v| v.parse().ok())
        .unwrap_or(0))
}

pub(crate) fn newest_active(
    store: &SqliteStore,
    kind: AuthorityKind,
) -> Result<AuthorityRecord, CaError> {
    store
        .authorities()?
        .into_iter()
        .filter(|a| a.kind == kind && a.state == AuthorityState::Active)
        .max_by_key(|a| a.not_before)
        .ok_or(CaError::NoActiveAuthority(match kind {
            AuthorityKind::Root => "root",
            AuthorityKind::Intermediate => "intermediate",
        }))
}

fn dir_has_entries(dir: &Path) -> Result<bool, CaError> {
    match fs::read_dir(dir) {
        Ok(mut entries) => Ok(entries.next().is_some()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => Ok(true),
        Err(e) => Err(CaError::io(dir)(e)),
    }
}

pub(crate) fn as_i64(secs: u64) -> i64 {
    i64::try_from(secs).unwrap_or(i64::MAX)
}
