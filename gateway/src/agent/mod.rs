//! The SVID agent: turns a bootstrap token into an X.509-SVID, keeps it in a state directory,
//! renews it before it expires, refreshes the trust bundle and the revocation list, and publishes
//! each new credential to the TLS configs (through `Credentials` and `SharedBundles`) and to
//! watchers (through `tokio::sync::watch`). Until the first SVID exists there is no `Agent`, so
//! handshakes that need one fail.

mod check;
mod enroll;
mod http;
mod keys;
pub mod pinned;
mod refresh;
mod run;
pub mod schedule;
pub mod state;
pub mod url;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use meshgate_identity::api::RevocationList;
use meshgate_identity::bundle::certs_from_pem;
use meshgate_identity::svid::{SvidError, verify_chain};
use meshgate_identity::tls::{self, ALPN_HTTP11, Credentials};
use meshgate_identity::verifier::{BundleSource as _, SharedBundles, SpiffeServerVerifier};
use meshgate_identity::{BundleSet, SpiffeId, SvidInfo, TrustBundle};
use rustls::ClientConfig;
use rustls::client::ResolvesClientCert;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::sign::CertifiedKey;
use tokio::sync::watch;

pub use keys::KeyType;
pub use state::Enrollment;
pub use url::CaUrl;

use crate::error::Error;

/// The agent of one workload identity, holding a valid SVID.
pub struct Agent {
    dir: PathBuf,
    enrollment: Enrollment,
    svid: Svid,
    bundle: TrustBundle,
    revocations: Arc<RevocationList>,
    published: Published,
}

/// An SVID the agent holds: the chain (leaf first), what the leaf says, and the key, ready for
/// rustls.
#[derive(Clone)]
pub struct Svid {
    pub chain: Vec<CertificateDer<'static>>,
    pub info: SvidInfo,
    pub key: Arc<CertifiedKey>,
}

/// Where new credentials go the moment the agent has them.
struct Published {
    credentials: Arc<Credentials>,
    bundles: Arc<SharedBundles>,
    svid: watch::Sender<Arc<CertifiedKey>>,
    revocations: watch::Sender<Arc<RevocationList>>,
}

impl Agent {
    /// Reuses the SVID kept in `dir` after a restart, if it is still valid now.
    pub fn load(dir: &Path) -> Result<Self, Error> {
        Self::load_at(dir, UnixTime::now())
    }

    /// `load` at a given time. The SVID is verified against the stored bundle, its SPIFFE ID
    /// against `state.json`, and the key against the SVID.
    pub fn load_at(dir: &Path, now: UnixTime) -> Result<Self, Error> {
        let files = state::read(dir)?;
        let bad = |file: &str, reason: String| Error::BadState {
            path: dir.join(file),
            reason,
        };
        let td = files.enrollment.spiffe_id.trust_domain();
        let mut bundle = TrustBundle::from_pem(td, &files.bundle_pem)
            .map_err(|e| bad(state::BUNDLE_FILE, e.to_string()))?;
        bundle.sequence = files.bundle_sequence;
        let chain = certs_from_pem(&files.svid_pem).map_err(|e| bad(state::SVID_FILE, e))?;
        let verified =
            verify_chain(&chain, &BundleSet::single(bundle.clone()), now).map_err(|error| {
                match error {
                    SvidError::Expired { not_after, .. } => Error::SvidExpired { not_after },
                    error => Error::StoredSvidInvalid { error },
                }
            })?;
        if verified.info.spiffe_id != files.enrollment.spiffe_id {
            return Err(bad(
                state::SVID_FILE,
                format!(
                    "the SVID is for {}, but state.json names {}",
                    verified.info.spiffe_id, files.enrollment.spiffe_id
                ),
            ));
        }
        let key = tls::certified_key_from_pem(&files.svid_pem, &files.key_pem).map_err(|e| {
            bad(
                state::KEY_FILE,
                format!("{e}; key.pem must be the key of svid.pem (enroll again if a write was interrupted)"),
            )
        })?;
        let svid = Svid {
            chain,
            info: verified.info,
            key,
        };
        // The last list accepted: revoked peers stay refused while the CA is unreachable.
        let revocations = state::read_revocations(dir)?;
        tracing::info!(spiffe_id = %svid.info.spiffe_id, serial = %svid.info.serial, "reusing the stored SVID");
        Ok(Self::assemble(
            dir,
            files.enrollment,
            svid,
            bundle,
            revocations,
        ))
    }

    fn assemble(
        dir: &Path,
        enrollment: Enrollment,
        svid: Svid,
        bundle: TrustBundle,
        revocations: RevocationList,
    ) -> Self {
        let revocations = Arc::new(revocations);
        let published = Published {
            credentials: Arc::new(Credentials::new(svid.key.clone())),
            bundles: Arc::new(SharedBundles::new(BundleSet::single(bundle.clone()))),
            svid: watch::Sender::new(svid.key.clone()),
            revocations: watch::Sender::new(revocations.clone()),
        };
        Self {
            dir: dir.to_owned(),
            enrollment,
            svid,
            bundle,
            revocations,
            published,
        }
    }

    pub fn svid(&self) -> &Svid {
        &self.svid
    }

    pub fn spiffe_id(&self) -> &SpiffeId {
        &self.enrollment.spiffe_id
    }

    /// The trust bundle of our own trust domain, as last accepted.
    pub fn bundle(&self) -> &TrustBundle {
        &self.bundle
    }

    pub fn enrollment(&self) -> &Enrollment {
        &self.enrollment
    }

    pub fn state_dir(&self) -> &Path {
        &self.dir
    }

    /// The revocation list as last fetched, or as saved in `revocations.json` by an earlier run
    /// (empty before the first fetch).
    pub fn revocation_list(&self) -> Arc<RevocationList> {
        self.revocations.clone()
    }

    /// The credentials to hand to `identity::tls::{server_config, client_config}`; the agent
    /// swaps each new SVID in, so new handshakes use it and live connections keep theirs.
    pub fn credentials(&self) -> Arc<Credentials> {
        self.published.credentials.clone()
    }

    /// The bundle set to hand to the SPIFFE verifiers; the agent replaces its own trust domain's
    /// bundle in it and leaves any other trust domain's alone.
    pub fn shared_bundles(&self) -> Arc<SharedBundles> {
        self.published.bundles.clone()
    }

    /// Sees every new SVID.
    pub fn subscribe(&self) -> watch::Receiver<Arc<CertifiedKey>> {
        self.published.svid.subscribe()
    }

    /// Sees every new revocation list.
    pub fn subscribe_revocations(&self) -> watch::Receiver<Arc<RevocationList>> {
        self.published.revocations.subscribe()
    }

    fn publish_svid(&self) {
        self.published.credentials.replace(self.svid.key.clone());
        self.published.svid.send_replace(self.svid.key.clone());
    }

    fn publish_bundle(&self) {
        let mut set = BundleSet::clone(&self.published.bundles.bundles());
        set.insert(self.bundle.clone());
        self.published.bundles.replace(set);
    }

    fn publish_revocations(&self) {
        self.published
            .revocations
            .send_replace(self.revocations.clone());
    }

    /// A client config for calls to our CA once enrolled: the server must be
    /// `spiffe://<td>/meshgate/ca` under the current bundle; with `mtls`, we present our SVID.
    fn ca_config(&self, mtls: bool) -> Result<Arc<ClientConfig>, Error> {
        let ca_id = pinned::ca_id(&self.enrollment.spiffe_id.trust_domain())?;
        let verifier = SpiffeServerVerifier::new(self.published.bundles.clone(), ca_id);
        let certs = mtls.then(|| self.published.credentials.clone() as Arc<dyn ResolvesClientCert>);
        Ok(Arc::new(tls::client_config(
            Arc::new(verifier),
            certs,
            &[ALPN_HTTP11],
        )?))
    }
}

impl fmt::Debug for Agent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Agent")
            .field("dir", &self.dir)
            .field("enrollment", &self.enrollment)
            .field("svid", &self.svid)
            .field("bundle_sequence", &self.bundle.sequence)
            .field("revocations_sequence", &self.revocations.sequence)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for Svid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Svid")
            .field("info", &self.info)
            .field("chain_length", &self.chain.len())
            .finish_non_exhaustive()
    }
}
