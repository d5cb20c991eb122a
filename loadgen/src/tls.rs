//! The client side of every connection: the SVID and key it presents, and the server it expects.
//! The config comes from the identity crate's one TLS module, so it is what a gateway uses: TLS
//! 1.3, ring, no resumption (every handshake is a full one with certificates both ways).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use meshgate_identity::tls::{ALPN_HTTP11, Credentials, certified_key_from_pem, client_config};
use meshgate_identity::verifier::{SharedBundles, SpiffeServerVerifier};
use meshgate_identity::{BundleSet, SpiffeId, TrustBundle};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// A server to connect to, and how.
#[derive(Clone)]
pub struct Target {
    addr: SocketAddr,
    server_name: ServerName<'static>,
    connector: TlsConnector,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("addr", &self.addr)
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl Target {
    /// Presents the SVID in `cert` (leaf first, then its chain) with `key`, and accepts only a
    /// server whose SVID is `server_id` and chains to the roots in `bundle`. nginx and HAProxy
    /// present SVIDs from the same CA, so the same check (the gateway's own server verifier)
    /// applies to every target and costs the client the same. `server_name` is sent as SNI
    /// only; without it none is sent.
    pub fn from_files(
        addr: SocketAddr,
        cert: &Path,
        key: &Path,
        bundle: &Path,
        server_id: SpiffeId,
        server_name: Option<&str>,
    ) -> anyhow::Result<Self> {
        let read = |p: &Path| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
        let key = certified_key_from_pem(&read(cert)?, &read(key)?)
            .with_context(|| format!("loading {} and {}", cert.display(), key.display()))?;
        let roots = TrustBundle::from_pem(server_id.trust_domain(), &read(bundle)?)
            .with_context(|| format!("loading {}", bundle.display()))?;
        let bundles = Arc::new(SharedBundles::new(BundleSet::single(roots)));
        let verifier = Arc::new(SpiffeServerVerifier::new(bundles, server_id));
        let config = client_config(
            verifier,
            Some(Arc::new(Credentials::new(key))),
            &[ALPN_HTTP11],
        )?;
        let server_name = match server_name {
            Some(name) => ServerName::try_from(name.to_owned())
                .with_context(|| format!("--server-name {name:?} is not a DNS name"))?,
            // An IP address: rustls sends no SNI for it.
            None => ServerName::IpAddress(addr.ip().into()),
        };
        Ok(Self {
            addr,
            server_name,
            connector: TlsConnector::from(Arc::new(config)),
        })
    }

    /// A new TCP connection and a full mTLS handshake (from the client's side: the server may
    /// still reject our certificate after this returns).
    pub async fn connect(&self) -> std::io::Result<TlsStream<TcpStream>> {
        let tcp = TcpStream::connect(self.addr).await?;
        tcp.set_nodelay(true)?;
        self.connector.connect(self.server_name.clone(), tcp).await
    }
}
