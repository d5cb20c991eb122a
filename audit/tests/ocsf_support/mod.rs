//! Helpers for the OCSF export tests: a checker that reads the OCSF schema's own JSON, and the
//! audit events meshgate writes, as samples to export.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    dead_code
)] // test code

pub mod samples;
pub mod schema;
