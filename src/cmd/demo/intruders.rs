//! The intruders of the demo: someone holding the shop's stolen key files, someone with a CA of
//! their own, and someone with an expired SVID. Each calls an inbound listener directly.

use std::sync::Arc;
use std::time::Duration;

use meshgate_ca::Authority;
use meshgate_gateway::agent::state::{KEY_FILE, SVID_FILE};
use meshgate_identity::tls::{ALPN_H2, Credentials, certified_key, certified_key_from_pem};
use meshgate_identity::verifier::{SharedBundles, SpiffeServerVerifier};
use meshgate_identity::{BundleSet, SpiffeId, TrustDomain};
use rustls::client::ResolvesClientCert;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;

use super::mesh::{self, Bank, PAYMENTS, SHOP};

/// Someone outside the mesh with credentials of some kind.
#[derive(Debug, Clone, Copy)]
pub enum Intruder {
    /// shop's key.pem and svid.pem, copied off the shop's disk.
    StolenShopKey,
    /// A CA of its own that calls itself bank.example and mints a payments SVID.
    ForeignCa,
    /// A shop SVID from two hours ago, expired for an hour.
    ExpiredShop,
}

/// The intruders' credentials.
pub struct Intruders {
    bundles: Arc<SharedBundles>,
    stolen: Arc<CertifiedKey>,
    foreign: Arc<CertifiedKey>,
    expired: Arc<CertifiedKey>,
}

impl Intruders {
    pub fn new(bank: &Bank) -> anyhow::Result<Self> {
        let mut ca = Authority::open(&bank.ca_dir)?;
        // The bundle is public: anyone can check who the server is.
        let bundles = Arc::new(SharedBundles::new(BundleSet::single(ca.bundle()?)));

        let state = &bank.shop.config.state_dir;
        let stolen = certified_key_from_pem(
            &std::fs::read(state.join(SVID_FILE))?,
            &std::fs::read(state.join(KEY_FILE))?,
        )?;

        let now = mesh::now();
        let rogue_dir = bank.dir.path().join("foreign-ca");
        let td = TrustDomain::parse(mesh::TRUST_DOMAIN)?;
        Authority::init(&rogue_dir, td, meshgate_ca::KeyType::EcdsaP256, now)?;
        let foreign = mint(&mut Authority::open(&rogue_dir)?, PAYMENTS, now)?;
        let expired = mint(&mut ca, SHOP, now - Duration::from_secs(2 * 3600))?;
        Ok(Self {
            bundles,
            stolen,
            foreign,
            expired,
        })
    }

    /// A client config that presents `who`'s certificate and expects the server to be `to`.
    pub fn tls(&self, who: Intruder, to: &SpiffeId) -> anyhow::Result<Arc<rustls::ClientConfig>> {
        let key = match who {
            Intruder::StolenShopKey => &self.stolen,
            Intruder::ForeignCa => &self.foreign,
            Intruder::ExpiredShop => &self.expired,
        };
        let verifier = SpiffeServerVerifier::new(self.bundles.clone(), to.clone());
        let certs = Arc::new(Credentials::new(key.clone())) as Arc<dyn ResolvesClientCert>;
        let config =
            meshgate_identity::tls::client_config(Arc::new(verifier), Some(certs), &[ALPN_H2])?;
        Ok(Arc::new(config))
    }
}

/// A one-hour SVID for `id` from `ca`, issued as of `at`.
fn mint(
    ca: &mut Authority,
    id: &str,
    at: time::OffsetDateTime,
) -> anyhow::Result<Arc<CertifiedKey>> {
    let (issued, key) =
        ca.issue_with_new_key(&SpiffeId::parse(id)?, &[], Duration::from_secs(3600), at)?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    Ok(certified_key(issued.chain, key)?)
}
