//! meshgate's gateway. So far its SVID agent: it turns a bootstrap token into an X.509-SVID, keeps
//! it on disk, renews it, and refreshes the trust bundle and the revocation list, publishing each
//! new credential to the TLS configs that `meshgate_identity::tls` builds.

#![forbid(unsafe_code)]

pub mod agent;
pub mod error;

pub use agent::{Agent, CaUrl, Enrollment, KeyType, Svid};
pub use error::Error;
