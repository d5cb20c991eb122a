//! meshgate's certificate authority: keys, the identity profile, CSR checks, issuance and the
//! datastore. The network API (`ca serve`) builds on this.

pub mod audit_log;
pub mod authority;
pub mod csr;
pub mod error;
pub mod group_commit;
pub mod keys;
pub mod profile;
pub mod revocation;
pub mod rotation;
pub mod server;
pub mod sqlite;
pub mod store;
pub mod tokens;

pub use authority::{Authority, InitReport, IssuedSvid};
pub use error::CaError;
pub use keys::KeyType;
pub use rotation::{Phase, RotationStatus};
pub use store::{IssuedCert, Store};
pub use tokens::EnrollError;
