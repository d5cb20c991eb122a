//! The load generator behind `scripts/bench.sh`: full mTLS handshakes per second against any TLS
//! 1.3 server that verifies client certificates (a gateway inbound, nginx, HAProxy), and many
//! idle mTLS connections held open for memory measurements. Loopback benchmarking only.

#![forbid(unsafe_code)]

pub mod handshake;
pub mod idle;
pub mod tls;

pub use handshake::{HandshakeReport, run_handshakes};
pub use idle::{IdleReport, hold_idle};
pub use tls::Target;
