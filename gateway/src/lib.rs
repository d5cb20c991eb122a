//! meshgate's gateway: the SVID agent (it turns a bootstrap token into an X.509-SVID, keeps it on
//! disk, renews it, and refreshes the trust bundle and the revocation list), and the data plane
//! that uses it: the mTLS inbound listener that asks the policy about every request (or, in TCP
//! mode, every connection), the loopback outbound routes that carry the local app's calls to peer
//! gateways over HTTP/2 (or its TCP connections, one mTLS connection each), and the admin
//! listener.

#![forbid(unsafe_code)]

mod admin;
pub mod agent;
mod audit;
mod body;
pub mod config;
mod conn;
mod dial;
pub mod error;
mod gateway;
mod headers;
mod inbound;
mod inbound_tcp;
mod listen;
mod metrics;
mod outbound;
mod outbound_tcp;
pub mod path;
mod peer;
mod policy;
pub mod proxy_header;
mod ratelimit;
pub mod reply;
mod stream;
mod tcp;
mod upgrade;
mod upstream;

pub use agent::{Agent, CaUrl, Enrollment, KeyType, Svid};
pub use config::Config;
pub use error::Error;
pub use gateway::{RunningGateway, run, start};
pub use policy::PolicyStore;
