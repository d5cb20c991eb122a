//! How a new workload recognizes its CA before it holds any bundle: the bootstrap token pins the
//! SHA-256 of the CA's root, the CA sends its whole chain (root included), and identity's server
//! verifier in its pinned-root mode accepts the server only if that chain holds the pinned root,
//! verifies to it as an X.509-SVID, and names the CA (`spiffe://<td>/meshgate/ca`).

use meshgate_identity::api::CA_ID_PATH;
use meshgate_identity::verifier::SpiffeServerVerifier;
use meshgate_identity::{SpiffeId, TrustDomain};

use crate::error::Error;

/// The verifier of the enrollment connection to the CA of `trust_domain`.
pub fn enroll_verifier(
    pin: [u8; 32],
    trust_domain: &TrustDomain,
) -> Result<SpiffeServerVerifier, Error> {
    Ok(SpiffeServerVerifier::pinned_root(pin, ca_id(trust_domain)?))
}

/// The SPIFFE ID the CA of `td` serves with.
pub fn ca_id(td: &TrustDomain) -> Result<SpiffeId, Error> {
    SpiffeId::parse(&format!("spiffe://{td}{CA_ID_PATH}")).map_err(Error::BadTokenId)
}
