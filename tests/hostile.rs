#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // test code

//! The hostile-input suite: for every surface a user or a peer reaches (the CA API, the
//! gateway's inbound and admin listeners, gateway config and policy files, audit logs, the
//! command line), input that is malformed, oversized, mis-framed or forged. Each case checks
//! the clear refusal (exit 2 or the API's error code, naming the value at fault, never a panic,
//! never a secret echoed) and, for servers, that a well-behaved client is served after it.
//! docs/hostile-inputs.md lists every case, these and the older ones elsewhere.

mod support;

mod hostile {
    pub mod common;
    pub mod wire;

    mod audit_files;
    mod ca_api;
    mod cli_args;
    mod config_files;
    mod gateway_inbound;
    mod svid_files;
}
