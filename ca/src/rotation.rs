//! CA key rotation. The intermediate renews itself at half-life; the root rotates in three
//! operator steps (prepare, activate, retire), each bumping the bundle's `spiffe_sequence`, so
//! that gateways trust the new root before anything is signed under it and keep trusting the old
//! one until every leaf signed under it has expired.

use std::time::Duration;

use rcgen::{CertificateParams, Issuer, KeyPair};
use rustls_pki_types::CertificateDer;
use serde::Serialize;
use time::OffsetDateTime;

use crate::authority::{Authority, record};
use crate::error::CaError;
use crate::keys::{read_key_file, write_secret_file};
use crate::profile;
use crate::store::{AuthorityKind, AuthorityRecord, AuthorityState, Store as _};

/// Where a root rotation stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Phase {
    /// One active root; nothing in progress.
    Steady,
    /// A new root is in the bundle but signs nothing yet.
    Prepared,
    /// The new root signs; the old one stays in the bundle until `retire`.
    Activated,
}

/// What `ca rotate status` reports.
#[derive(Debug, Clone, Serialize)]
pub struct RotationStatus {
    pub phase: Phase,
    pub bundle_sequence: u64,
    pub activated_at: Option<i64>,
    /// When `retire` is allowed without `--force`: activation plus the longest leaf lifetime.
    pub retire_allowed_at: Option<i64>,
    pub roots: Vec<RootStatus>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RootStatus {
    pub serial: String,
    pub state: AuthorityState,
    pub sha256: String,
    pub not_after: i64,
    /// Leaves signed under this root that have not expired yet.
    pub live_leaves: usize,
}

impl Authority {
    /// Renews the signing intermediate once it is past half its life, under the same root.
    /// Returns true when it made a new one.
    pub fn renew_intermediate_if_due(&mut self, now: OffsetDateTime) -> Result<bool, CaError> {
        let cur = &self.signer.intermediate;
        let half = cur.not_before + (cur.not_after - cur.not_before) / 2;
        if now.unix_timestamp() < half {
            return Ok(false);
        }
        let root = self.signer.root.clone();
        let (new, _) = self.new_intermediate(&root, now)?;
        let retire = [(self.signer.intermediate.id, AuthorityState::Retired)];
        self.store.change_authorities(Some(&new), &retire, &[])?;
        self.reload_if_changed()?;
        Ok(true)
    }

    /// Step 1: a new root enters the bundle; it signs nothing yet.
    pub fn rotate_prepare(&mut self, now: OffsetDateTime) -> Result<RootStatus, CaError> {
        self.require_phase(Phase::Steady, "prepare")?;
        let key = self.meta.key_type.generate()?;
        let params = profile::root_params(&self.meta.trust_domain, now, profile::ROOT_TTL)?;
        let cert = params.self_signed(&key)?;
        meshgate_identity::svid::check_signing_cert(cert.der())?;
        let mut rec = record(0, AuthorityKind::Root, cert.der(), None)?;
        rec.state = AuthorityState::Prepared;
        write_secret_file(
            &self.dir.join(&rec.key_file),
            key.serialize_pem().as_bytes(),
        )?;
        let meta = [
            (
                "bundle_sequence",
                (self.meta.bundle_sequence + 1).to_string(),
            ),
            ("rotation_phase", "prepared".to_owned()),
        ];
        self.store.change_authorities(Some(&rec), &[], &meta)?;
        self.reload_if_changed()?;
        self.root_status(&rec, now)
    }

    /// Step 2: a new intermediate under the new root signs from now on; the old root stays in
    /// the bundle, retiring, until its leaves have expired.
    pub fn rotate_activate(&mut self, now: OffsetDateTime) -> Result<(), CaError> {
        self.require_phase(Phase::Prepared, "activate")?;
        let all = self.store.authorities()?;
        let prepared = all
            .iter()
            .find(|a| a.kind == AuthorityKind::Root && a.state == AuthorityState::Prepared)
            .ok_or(CaError::NoActiveAuthority("prepared root"))?
            .clone();
        let (new, _) = self.new_intermediate(&prepared, now)?;
        let mut states = vec![(prepared.id, AuthorityState::Active)];
        for a in &all {
            match (a.kind, a.state) {
                (AuthorityKind::Root, AuthorityState::Active) => {
                    states.push((a.id, AuthorityState::Retiring))
                }
                (AuthorityKind::Intermediate, AuthorityState::Active) => {
                    states.push((a.id, AuthorityState::Retired))
                }
                _ => {}
            }
        }
        let meta = [
            (
                "bundle_sequence",
                (self.meta.bundle_sequence + 1).to_string(),
            ),
            ("rotation_phase", "activated".to_owned()),
            ("activated_at", now.unix_timestamp().to_string()),
        ];
        self.store.change_authorities(Some(&new), &states, &meta)?;
        self.reload_if_changed()?;
        Ok(())
    }

    /// Step 3: the old root leaves the bundle. Refused until the longest leaf lifetime has passed
    /// since `activate` (so no live leaf loses its trust anchor), unless `force`.
    pub fn rotate_retire(&mut self, now: OffsetDateTime, force: bool) -> Result<(), CaError> {
        self.require_phase(Phase::Activated, "retire")?;
        let allowed_at = self.activated_at()?.unwrap_or(0) + as_secs(profile::MAX_LEAF_TTL);
        if now.unix_timestamp() < allowed_at && !force {
            return Err(CaError::Rotation(format!(
                "retire refused: leaves signed under the old root may be valid until {allowed_at} \
                 (unix seconds; activation plus the 24h maximum leaf lifetime); retry then, or pass \
                 --force to cut them off now"
            )));
        }
        let states: Vec<_> = self
            .store
            .authorities()?
            .into_iter()
            .filter(|a| a.kind == AuthorityKind::Root && a.state == AuthorityState::Retiring)
            .map(|a| (a.id, AuthorityState::Retired))
            .collect();
        let meta = [
            (
                "bundle_sequence",
                (self.meta.bundle_sequence + 1).to_string(),
            ),
            ("rotation_phase", "steady".to_owned()),
        ];
        self.store.change_authorities(None, &states, &meta)?;
        self.reload_if_changed()?;
        Ok(())
    }

    /// The rotation phase and every root with what it still signs.
    pub fn rotation_status(&self, now: OffsetDateTime) -> Result<RotationStatus, CaError> {
        let activated_at = self.activated_at()?;
        let phase = self.phase()?;
        let roots = self
            .store
            .authorities()?
            .iter()
            .filter(|a| a.kind == AuthorityKind::Root)
            .map(|a| self.root_status(a, now))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(RotationStatus {
            phase,
            bundle_sequence: self.meta.bundle_sequence,
            activated_at,
            retire_allowed_at: match phase {
                Phase::Activated => activated_at.map(|t| t + as_secs(profile::MAX_LEAF_TTL)),
                _ => None,
            },
            roots,
        })
    }

    pub fn phase(&self) -> Result<Phase, CaError> {
        Ok(match self.store.meta_value("rotation_phase")?.as_deref() {
            Some("prepared") => Phase::Prepared,
            Some("activated") => Phase::Activated,
            _ => Phase::Steady,
        })
    }

    fn activated_at(&self) -> Result<Option<i64>, CaError> {
        Ok(self
            .store
            .meta_value("activated_at")?
            .and_then(|v| v.parse().ok()))
    }

    fn require_phase(&self, want: Phase, step: &str) -> Result<(), CaError> {
        let phase = self.phase()?;
        if phase != want {
            let hint = match phase {
                Phase::Steady => "run `ca rotate prepare` first",
                Phase::Prepared => "the next step is `ca rotate activate`",
                Phase::Activated => "the next step is `ca rotate retire`",
            };
            return Err(CaError::Rotation(format!(
                "cannot {step}: the rotation phase is {phase:?}; {hint}"
            )));
        }
        Ok(())
    }

    /// Mints an intermediate under `root` (its key read from the CA directory), writes its key,
    /// and returns the record to insert.
    fn new_intermediate(
        &self,
        root: &AuthorityRecord,
        now: OffsetDateTime,
    ) -> Result<(AuthorityRecord, KeyPair), CaError> {
        let root_key = read_key_file(&self.dir.join(&root.key_file))?;
        let root_der = CertificateDer::from(root.cert_der.clone());
        let issuer = Issuer::from_ca_cert_der(&root_der, &root_key)?;
        let cap = OffsetDateTime::from_unix_timestamp(root.not_after).map_err(|e| {
            CaError::BadCaCert {
                what: "root".into(),
                reason: e.to_string(),
            }
        })?;
        let params: CertificateParams = profile::intermediate_params(
            &self.meta.trust_domain,
            now,
            profile::INTERMEDIATE_TTL,
            cap,
        )?;
        let key = self.meta.key_type.generate()?;
        let cert = params.signed_by(&key, &issuer)?;
        meshgate_identity::svid::check_signing_cert(cert.der())?;
        let rec = record(0, AuthorityKind::Intermediate, cert.der(), Some(root.id))?;
        write_secret_file(
            &self.dir.join(&rec.key_file),
            key.serialize_pem().as_bytes(),
        )?;
        Ok((rec, key))
    }

    fn root_status(
        &self,
        root: &AuthorityRecord,
        now: OffsetDateTime,
    ) -> Result<RootStatus, CaError> {
        let all = self.store.authorities()?;
        let under: Vec<String> = all
            .iter()
            .filter(|a| a.kind == AuthorityKind::Intermediate && a.parent == Some(root.id))
            .map(|a| a.serial.to_string())
            .collect();
        let now = now.unix_timestamp();
        let live_leaves = self
            .store
            .list_issued()?
            .iter()
            .filter(|c| c.not_after > now && under.contains(&c.issuer.to_string()))
            .count();
        Ok(RootStatus {
            serial: root.serial.to_string(),
            state: root.state,
            sha256: hex::encode(meshgate_identity::svid::sha256_of(&root.cert_der)),
            not_after: root.not_after,
            live_leaves,
        })
    }
}

fn as_secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}
