//! How a new workload recognizes its CA before it holds any bundle: the bootstrap token pins the
//! SHA-256 of the CA's root, the CA sends its whole chain (root included), and this verifier
//! accepts the server only if that chain holds the pinned root, verifies to it as an X.509-SVID,
//! and names the CA (`spiffe://<td>/meshgate/ca`).

use std::sync::Arc;

use meshgate_identity::api::CA_ID_PATH;
use meshgate_identity::svid::{SvidError, sha256_of, verify_svid};
use meshgate_identity::verifier::PeerError;
use meshgate_identity::{BundleSet, SpiffeId, TrustBundle, TrustDomain};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{WebPkiSupportedAlgorithms, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, OtherError, SignatureScheme};

use crate::error::Error;

/// Verifies the CA's server certificate against the root a bootstrap token pins.
#[derive(Debug)]
pub struct PinnedRootVerifier {
    pin: [u8; 32],
    trust_domain: TrustDomain,
    expected: SpiffeId,
    /// Named in the error when the pin is missing.
    ca: String,
    algorithms: WebPkiSupportedAlgorithms,
}

impl PinnedRootVerifier {
    /// `pin` is the SHA-256 of the root's DER; `ca` names the server in errors.
    pub fn new(pin: [u8; 32], trust_domain: TrustDomain, ca: String) -> Result<Self, Error> {
        Ok(Self {
            pin,
            expected: ca_id(&trust_domain)?,
            trust_domain,
            ca,
            algorithms: meshgate_identity::tls::provider().signature_verification_algorithms,
        })
    }
}

/// The SPIFFE ID the CA of `td` serves with.
pub fn ca_id(td: &TrustDomain) -> Result<SpiffeId, Error> {
    SpiffeId::parse(&format!("spiffe://{td}{CA_ID_PATH}")).map_err(Error::BadTokenId)
}

impl ServerCertVerifier for PinnedRootVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let root = intermediates
            .iter()
            .find(|c| sha256_of(c) == self.pin)
            .ok_or_else(|| {
                other(Error::PinnedRootNotSent {
                    ca: self.ca.clone(),
                })
            })?;
        // The hash match is what makes this root trusted; TrustBundle still checks it is a CA.
        let bundle = TrustBundle::new(self.trust_domain.clone(), vec![root.clone().into_owned()])
            .map_err(|e| {
            other(PeerError::Svid(SvidError::Chain {
                trust_domain: self.trust_domain.to_string(),
                reason: format!("the pinned root is not a usable root: {e}"),
            }))
        })?;
        let verified = verify_svid(end_entity, intermediates, &BundleSet::single(bundle), now)
            .map_err(|e| match e {
                SvidError::Expired { .. } => {
                    rustls::Error::InvalidCertificate(CertificateError::Expired)
                }
                SvidError::NotYetValid { .. } => {
                    rustls::Error::InvalidCertificate(CertificateError::NotValidYet)
                }
                e => other(PeerError::Svid(e)),
            })?;
        // Authorization only after the chain verified.
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

fn other(e: impl std::error::Error + Send + Sync + 'static) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(e))))
}
