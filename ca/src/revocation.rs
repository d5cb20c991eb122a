//! Revocation and renewal: a revoked SVID is listed in `/v1/revocations` and can never renew.

use meshgate_identity::api::{RevocationList, RevokedEntry};
use meshgate_identity::{Serial, SpiffeId};
use time::OffsetDateTime;

use crate::authority::{Authority, IssuedSvid};
use crate::csr::check_csr;
use crate::error::CaError;
use crate::profile;
use crate::store::{RevocationRecord, Store as _};

impl Authority {
    /// Revokes one issued certificate by serial.
    pub fn revoke_serial(
        &mut self,
        serial: &Serial,
        reason: Option<&str>,
        now: OffsetDateTime,
    ) -> Result<Vec<RevocationRecord>, CaError> {
        let cert = self
            .store
            .list_issued()?
            .into_iter()
            .find(|c| &c.serial == serial)
            .ok_or_else(|| CaError::NothingToRevoke(format!("serial {serial}")))?;
        self.store.revoke(
            &[(cert.serial, cert.spiffe_id)],
            now.unix_timestamp(),
            reason,
        )
    }

    /// Revokes every unexpired certificate issued for `id`.
    pub fn revoke_spiffe_id(
        &mut self,
        id: &SpiffeId,
        reason: Option<&str>,
        now: OffsetDateTime,
    ) -> Result<Vec<RevocationRecord>, CaError> {
        let t = now.unix_timestamp();
        let serials: Vec<_> = self
            .store
            .list_issued()?
            .into_iter()
            .filter(|c| &c.spiffe_id == id && c.not_after > t)
            .map(|c| (c.serial, c.spiffe_id))
            .collect();
        if serials.is_empty() {
            return Err(CaError::NothingToRevoke(format!(
                "an unexpired SVID for {id}"
            )));
        }
        self.store.revoke(&serials, t, reason)
    }

    /// The revocation list served at `/v1/revocations`.
    pub fn revocation_list(&self) -> Result<RevocationList, CaError> {
        let (sequence, records) = self.store.revocations()?;
        Ok(RevocationList {
            sequence,
            revoked: records
                .into_iter()
                .map(|r| RevokedEntry {
                    serial: r.serial,
                    spiffe_id: r.spiffe_id,
                    at: r.at,
                })
                .collect(),
        })
    }

    pub fn is_revoked(&self, serial: &Serial) -> Result<bool, CaError> {
        self.store.is_revoked(serial)
    }

    /// Renewal for a caller authenticated by its current SVID (`peer_id`, `peer_serial`): a
    /// fresh SVID for the same ID from a CSR with a new key. Refused when the caller's SVID is
    /// revoked, when the CSR asks for another ID, and for the CA's own ID.
    pub fn renew(
        &mut self,
        peer_id: &SpiffeId,
        peer_serial: &Serial,
        csr_der: &[u8],
        now: OffsetDateTime,
    ) -> Result<IssuedSvid, CaError> {
        self.check_issuable(peer_id)?;
        if self.store.is_revoked(peer_serial)? {
            return Err(CaError::Revoked(peer_serial.to_string()));
        }
        let csr = check_csr(csr_der, peer_id)?;
        let issued = self.signer.mint(&csr, &[], profile::LEAF_TTL, now)?;
        self.store.record_issued(&issued.record)?;
        Ok(issued)
    }
}
