//! Revocation and renewal: a revoked SVID is listed in `/v1/revocations` and can never renew.

use std::time::Duration;

use meshgate_identity::api::{RevocationList, RevokedEntry};
use meshgate_identity::svid::{public_key_der, verify_chain};
use meshgate_identity::{BundleSet, Serial, SpiffeId};
use rustls_pki_types::{CertificateDer, UnixTime};
use time::OffsetDateTime;

use crate::authority::{Authority, IssuedSvid, Minter};
use crate::csr::check_csr;
use crate::error::CaError;
use crate::store::{IssuanceOutcome, IssuanceWrite, RevocationRecord, Store as _};

impl Authority {
    /// Revokes one issued certificate by serial, and every SVID renewed from it, so that a
    /// stolen SVID's holder cannot keep a renewed copy.
    pub fn revoke_serial(
        &mut self,
        serial: &Serial,
        reason: Option<&str>,
        now: OffsetDateTime,
    ) -> Result<Vec<RevocationRecord>, CaError> {
        self.store
            .revoke_lineage(serial, now.unix_timestamp(), reason)?
            .ok_or_else(|| CaError::NothingToRevoke(format!("serial {serial}")))
    }

    /// Revokes every unexpired certificate issued for `id`.
    pub fn revoke_spiffe_id(
        &mut self,
        id: &SpiffeId,
        reason: Option<&str>,
        now: OffsetDateTime,
    ) -> Result<Vec<RevocationRecord>, CaError> {
        let added = self
            .store
            .revoke_spiffe_id(id, now.unix_timestamp(), reason)?;
        if added.is_empty() && !self.store.list_issued()?.iter().any(|c| &c.spiffe_id == id) {
            return Err(CaError::NothingToRevoke(format!(
                "an unexpired SVID for {id}"
            )));
        }
        Ok(added)
    }

    /// The revocation list served at `/v1/revocations` (entries of expired certificates left out).
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

    /// Renewal for a caller that presented `peer_chain` over mTLS. The chain is verified again
    /// here against the current bundle at `now` (a connection may outlive the handshake's view),
    /// the caller's own ID is the only one it may renew, the CSR must carry a fresh key, and the
    /// revocation check and the record of the new SVID are one transaction.
    pub fn renew(
        &mut self,
        peer_chain: &[CertificateDer<'_>],
        csr_der: &[u8],
        now: OffsetDateTime,
    ) -> Result<IssuedSvid, CaError> {
        let pending = self.start_renew()?;
        let peer = pending.verify_peer(peer_chain, now)?;
        if self.store.is_revoked(&peer.serial)? {
            return Err(CaError::Revoked(peer.serial.to_string()));
        }
        let (write, minted) = pending.mint(peer_chain, &peer, csr_der, now)?;
        let outcome = self.store.commit_issuance(write)?;
        finish_renew(outcome, minted, &peer.serial)
    }

    /// The first step of a renewal, a read: the bundle to verify the caller against and the
    /// signer. What it returns verifies and signs without the CA (the server does that outside
    /// its lock) and yields the write that records the renewal, with the revocation check.
    pub(crate) fn start_renew(&self) -> Result<PendingRenew, CaError> {
        Ok(PendingRenew::new(
            BundleSet::single(self.bundle()?),
            self.minter(),
        ))
    }
}

/// A renewal's caller, as its chain verified.
#[derive(Debug, Clone)]
pub(crate) struct RenewingPeer {
    pub(crate) id: SpiffeId,
    pub(crate) serial: Serial,
}

/// A renewal in progress: verifies the caller and signs (no I/O, no lock).
#[derive(Debug)]
pub(crate) struct PendingRenew {
    bundles: BundleSet,
    minter: Minter,
}

impl PendingRenew {
    /// A renewal that verifies its caller against `bundles` and signs with `minter`.
    pub(crate) fn new(bundles: BundleSet, minter: Minter) -> Self {
        Self { bundles, minter }
    }

    /// Verifies the caller's chain at `now`; its ID must be one this CA issues.
    pub(crate) fn verify_peer(
        &self,
        peer_chain: &[CertificateDer<'_>],
        now: OffsetDateTime,
    ) -> Result<RenewingPeer, CaError> {
        let secs = u64::try_from(now.unix_timestamp()).unwrap_or(0);
        let verified = verify_chain(
            peer_chain,
            &self.bundles,
            UnixTime::since_unix_epoch(Duration::from_secs(secs)),
        )
        .map_err(|e| CaError::PeerRejected(e.to_string()))?;
        let (id, serial) = (verified.info.spiffe_id, verified.info.serial);
        self.minter.check_issuable(&id)?;
        Ok(RenewingPeer { id, serial })
    }

    /// Checks the CSR (the caller's ID, a fresh key) and signs it: the write that records the
    /// renewal unless the caller's SVID is revoked by then, and the certificate, which may be
    /// handed out once that write has committed.
    pub(crate) fn mint(
        &self,
        peer_chain: &[CertificateDer<'_>],
        peer: &RenewingPeer,
        csr_der: &[u8],
        now: OffsetDateTime,
    ) -> Result<(IssuanceWrite, IssuedSvid), CaError> {
        let csr = check_csr(csr_der, &peer.id)?;
        let leaf = peer_chain
            .first()
            .ok_or(CaError::Internal("empty peer chain"))?;
        if public_key_der(leaf).map_err(CaError::SelfCheck)? == csr.spki_der {
            return Err(CaError::BadCsr {
                rule: "fresh-key",
                detail: "the request reuses the current SVID's key; renew with a new key".into(),
            });
        }
        let issued = self.minter.mint_checked(&csr, now)?;
        let write = IssuanceWrite::Renew {
            cert: issued.record.clone(),
            from: peer.serial.clone(),
        };
        Ok((write, issued))
    }
}

/// The answer to a renewal once its write has committed.
pub(crate) fn finish_renew(
    outcome: IssuanceOutcome,
    minted: IssuedSvid,
    from: &Serial,
) -> Result<IssuedSvid, CaError> {
    match outcome {
        IssuanceOutcome::Renew { recorded: true } => Ok(minted),
        IssuanceOutcome::Renew { recorded: false } => Err(CaError::Revoked(from.to_string())),
        IssuanceOutcome::Enroll(_) => {
            Err(CaError::Internal("a renewal came back as an enrollment"))
        }
    }
}
