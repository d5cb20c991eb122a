//! rustls certificate verifiers that apply the X.509-SVID checks. Authentication only: the
//! client verifier accepts any valid SVID of a known trust domain (policy decides later); the
//! server verifier also requires the server's SPIFFE ID to be the expected one, not a DNS name.

use std::fmt;
use std::sync::{Arc, RwLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{WebPkiSupportedAlgorithms, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, SignatureScheme,
};

use crate::bundle::{BundleSet, TrustBundle};
use crate::spiffe_id::SpiffeId;
use crate::svid::{SvidError, VerifiedSvid, verify_svid};

/// Where verifiers read the current trust bundles from. The agent swaps new bundles in; every new
/// handshake sees the latest set.
pub trait BundleSource: fmt::Debug + Send + Sync {
    fn bundles(&self) -> Arc<BundleSet>;
}

/// A bundle set that can be replaced atomically while handshakes read it.
#[derive(Debug, Default)]
pub struct SharedBundles(RwLock<Arc<BundleSet>>);

impl SharedBundles {
    pub fn new(set: BundleSet) -> Self {
        Self(RwLock::new(Arc::new(set)))
    }

    /// Replaces the set; handshakes that already started keep the one they read.
    pub fn replace(&self, set: BundleSet) {
        let mut guard = self
            .0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *guard = Arc::new(set);
    }
}

impl BundleSource for SharedBundles {
    fn bundles(&self) -> Arc<BundleSet> {
        self.0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// The peer's identity failed a check: the error the verifiers hand to rustls.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PeerError {
    #[error("peer SVID rejected ({rule}): {error}", rule = .0.rule(), error = .0)]
    Svid(SvidError),
    #[error("peer is {got}, expected {expected}")]
    UnexpectedPeer { expected: SpiffeId, got: SpiffeId },
    /// Enrollment: none of the certificates the server sent is the root the token pins.
    #[error("none of the certificates the server sent is the pinned root")]
    PinnedRootNotSent,
}

/// Verifies client certificates (server side): a valid X.509-SVID of a known trust domain.
#[derive(Debug)]
pub struct SpiffeClientVerifier {
    bundles: Arc<dyn BundleSource>,
    algorithms: WebPkiSupportedAlgorithms,
    mandatory: bool,
}

impl SpiffeClientVerifier {
    /// A verifier that requires a client certificate.
    pub fn new(bundles: Arc<dyn BundleSource>) -> Self {
        Self {
            bundles,
            algorithms: crate::tls::algorithms(),
            mandatory: true,
        }
    }

    /// A verifier for listeners where a certificate is optional (the CA's enrollment endpoint),
    /// but checked in full when one is sent.
    pub fn optional(bundles: Arc<dyn BundleSource>) -> Self {
        Self {
            mandatory: false,
            ..Self::new(bundles)
        }
    }
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        verify(&self.bundles.bundles(), end_entity, intermediates, now)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("TLS 1.2 is not supported".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Verifies server certificates (client side): a valid X.509-SVID whose SPIFFE ID is the expected
/// one. The TLS server name is not used.
#[derive(Debug)]
pub struct SpiffeServerVerifier {
    trust: ServerTrust,
    expected: SpiffeId,
    algorithms: WebPkiSupportedAlgorithms,
}

/// Where a server verifier finds the roots of the expected peer's trust domain.
#[derive(Debug)]
enum ServerTrust {
    /// The current bundles (a running workload).
    Bundles(Arc<dyn BundleSource>),
    /// A new workload's enrollment, before it holds any bundle: the bootstrap token pins the
    /// SHA-256 of the CA's root, and the CA sends its chain with the root. That root is trusted
    /// because its hash matches; it still has to pass as a signing certificate.
    PinnedRoot([u8; 32]),
}

impl SpiffeServerVerifier {
    pub fn new(bundles: Arc<dyn BundleSource>, expected: SpiffeId) -> Self {
        Self {
            trust: ServerTrust::Bundles(bundles),
            expected,
            algorithms: crate::tls::algorithms(),
        }
    }

    /// For enrollment: trusts only the root whose DER has SHA-256 `root_sha256`, found among the
    /// certificates the server sends, for `expected`'s trust domain.
    pub fn pinned_root(root_sha256: [u8; 32], expected: SpiffeId) -> Self {
        Self {
            trust: ServerTrust::PinnedRoot(root_sha256),
            expected,
            algorithms: crate::tls::algorithms(),
        }
    }

    fn bundles(&self, presented: &[CertificateDer<'_>]) -> Result<Arc<BundleSet>, rustls::Error> {
        let pin = match &self.trust {
            ServerTrust::Bundles(source) => return Ok(source.bundles()),
            ServerTrust::PinnedRoot(pin) => pin,
        };
        let root = presented
            .iter()
            .find(|c| crate::svid::sha256_of(c) == *pin)
            .ok_or_else(|| other(PeerError::PinnedRootNotSent))?;
        let td = self.expected.trust_domain();
        let bundle =
            TrustBundle::new(td.clone(), vec![root.clone().into_owned()]).map_err(|e| {
                other(PeerError::Svid(SvidError::Chain {
                    trust_domain: td.to_string(),
                    reason: format!("the pinned root is not a usable root: {e}"),
                }))
            })?;
        Ok(Arc::new(BundleSet::single(bundle)))
    }
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let bundles = self.bundles(intermediates)?;
        let verified = verify(&bundles, end_entity, intermediates, now)?;
        // Authorization only after the cryptographic verification succeeded.
        if verified.info.spiffe_id != self.expected {
            return Err(other(PeerError::UnexpectedPeer {
                expected: self.expected.clone(),
                got: verified.info.spiffe_id,
            }));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("TLS 1.2 is not supported".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The SPIFFE ID of a peer whose certificate a verifier of this module has accepted.
pub fn peer_spiffe_id(
    peer_certificates: Option<&[CertificateDer<'_>]>,
) -> Result<SpiffeId, SvidError> {
    let leaf = peer_certificates
        .and_then(<[_]>::first)
        .ok_or(SvidError::NoCertificate)?;
    crate::svid::spiffe_id_of(leaf)
}

fn verify(
    bundles: &BundleSet,
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    now: UnixTime,
) -> Result<VerifiedSvid, rustls::Error> {
    verify_svid(end_entity, intermediates, bundles, now).map_err(|e| match e {
        // Keep the standard alerts for expiry, so peers see certificate_expired.
        SvidError::Expired { .. } => rustls::Error::InvalidCertificate(CertificateError::Expired),
        SvidError::NotYetValid { .. } => {
            rustls::Error::InvalidCertificate(CertificateError::NotValidYet)
        }
        other_error => other(PeerError::Svid(other_error)),
    })
}

fn other(e: PeerError) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(e))))
}
