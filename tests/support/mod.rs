//! Test support: CAs made in temporary directories and SVIDs minted from them at test time.
//! No private key is ever committed.

#![allow(dead_code, clippy::expect_used)] // test code

pub mod ca_client;
pub mod plain;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use meshgate_ca::{Authority, KeyType};
use meshgate_identity::tls::certified_key;
use meshgate_identity::{BundleSet, SpiffeId, TrustDomain};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;
use tempfile::TempDir;
use time::OffsetDateTime;

/// A CA in a temporary directory.
pub struct TestCa {
    pub dir: TempDir,
    pub ca: Authority,
}

impl TestCa {
    pub fn new(trust_domain: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca_dir = dir.path().join("ca");
        let td = TrustDomain::parse(trust_domain).expect("trust domain");
        Authority::init(&ca_dir, td, KeyType::EcdsaP256, OffsetDateTime::now_utc())
            .expect("ca init");
        let ca = Authority::open(&ca_dir).expect("ca open");
        Self { dir, ca }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The bundle set holding this CA's bundle.
    pub fn bundles(&self) -> BundleSet {
        BundleSet::single(self.ca.bundle().expect("bundle"))
    }

    /// An SVID valid from now for an hour.
    pub fn svid(&mut self, id: &str) -> Arc<CertifiedKey> {
        self.svid_at(id, OffsetDateTime::now_utc(), Duration::from_secs(3600))
    }

    /// An SVID minted as if it were `now`, lasting `ttl` (past `now` gives an expired SVID).
    pub fn svid_at(&mut self, id: &str, now: OffsetDateTime, ttl: Duration) -> Arc<CertifiedKey> {
        let id = SpiffeId::parse(id).expect("spiffe id");
        let (issued, key) = self
            .ca
            .issue_with_new_key(&id, &[], ttl, now)
            .expect("issue");
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        certified_key(issued.chain, key).expect("certified key")
    }
}
