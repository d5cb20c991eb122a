//! The one module that builds every rustls config of meshgate: TLS 1.3 only, the ring provider,
//! the SPIFFE verifiers, no session resumption and no 0-RTT (a resumed session skips the
//! certificate checks, so it could outlive the peer's SVID, its revocation or a policy change).

use std::sync::{Arc, RwLock};

use rustls::client::danger::ServerCertVerifier;
use rustls::client::{ResolvesClientCert, Resumption};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, NoServerSessionStorage, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, ServerConfig, SignatureScheme};

use crate::Error;
use crate::verifier::SpiffeClientVerifier;

/// ALPN protocol ids.
pub const ALPN_H2: &[u8] = b"h2";
pub const ALPN_HTTP11: &[u8] = b"http/1.1";
/// A gateway's TCP-mode hop: raw bytes after the handshake. It is offered alone, and an HTTP
/// listener never offers it, so a TCP-mode client and an HTTP-mode server (or the reverse) fail
/// the handshake with `no_application_protocol` instead of one reading the other's bytes as its
/// own protocol.
pub const ALPN_TCP: &[u8] = b"meshgate-tcp/1";

/// The crypto provider of every config: ring.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Signature algorithms for handshake signatures (ring).
pub(crate) fn algorithms() -> WebPkiSupportedAlgorithms {
    rustls::crypto::ring::default_provider().signature_verification_algorithms
}

/// A server config that requires (or, for `SpiffeClientVerifier::optional`, accepts) a client
/// SVID and presents the credentials of `certs`.
pub fn server_config(
    certs: Arc<dyn ResolvesServerCert>,
    client_verifier: Arc<SpiffeClientVerifier>,
    alpn: &[&[u8]],
) -> Result<ServerConfig, Error> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_err)?
        .with_client_cert_verifier(client_verifier)
        .with_cert_resolver(certs);
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    config.max_early_data_size = 0;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// A client config that checks the server with `server_verifier` (a `SpiffeServerVerifier`, or
/// the enrollment verifier that pins the CA's root) and presents the credentials of `certs` when
/// the server asks (None for a client without an SVID yet).
pub fn client_config(
    server_verifier: Arc<dyn ServerCertVerifier>,
    certs: Option<Arc<dyn ResolvesClientCert>>,
    alpn: &[&[u8]],
) -> Result<ClientConfig, Error> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_err)?
        .dangerous()
        .with_custom_certificate_verifier(server_verifier);
    let mut config = match certs {
        Some(certs) => builder.with_client_cert_resolver(certs),
        None => builder.with_no_client_auth(),
    };
    config.resumption = Resumption::disabled();
    config.enable_early_data = false;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// An SVID and its private key, loaded into rustls.
pub fn certified_key(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<CertifiedKey>, Error> {
    if chain.is_empty() {
        return Err(Error::Tls("the SVID chain is empty".into()));
    }
    CertifiedKey::from_der(chain, key, &provider())
        .map(Arc::new)
        .map_err(tls_err)
}

/// `certified_key` from PEM: the chain (leaf first) and a PKCS#8 (or SEC1) private key.
pub fn certified_key_from_pem(
    chain_pem: &[u8],
    key_pem: &[u8],
) -> Result<Arc<CertifiedKey>, Error> {
    let chain = crate::bundle::certs_from_pem(chain_pem)
        .map_err(|e| Error::Tls(format!("SVID file: {e}")))?;
    let key =
        PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| Error::Tls(format!("key file: {e}")))?;
    certified_key(chain, key)
}

/// The credentials a gateway presents, replaced atomically on rotation. Until the first SVID is
/// set, server handshakes fail and clients present no certificate.
#[derive(Debug, Default)]
pub struct Credentials(RwLock<Option<Arc<CertifiedKey>>>);

impl Credentials {
    pub fn new(key: Arc<CertifiedKey>) -> Self {
        Self(RwLock::new(Some(key)))
    }

    /// Swaps in new credentials; connections already established keep theirs.
    pub fn replace(&self, key: Arc<CertifiedKey>) {
        *self
            .0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(key);
    }

    pub fn current(&self) -> Option<Arc<CertifiedKey>> {
        self.0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

impl ResolvesServerCert for Credentials {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current()
    }
}

impl ResolvesClientCert for Credentials {
    fn resolve(
        &self,
        _hints: &[&[u8]],
        sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.current()
            .filter(|k| k.key.choose_scheme(sigschemes).is_some())
    }

    fn has_certs(&self) -> bool {
        self.current().is_some()
    }
}

fn tls_err(e: rustls::Error) -> Error {
    Error::Tls(e.to_string())
}
