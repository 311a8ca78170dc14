//! Identity end to end: the dev Workload API server with the `spiffe` crate's
//! client, rotation under live TLS traffic, federation, and the files source.
//! Real sockets only (127.0.0.1:0 and Unix sockets in a temp dir).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests and their helpers fail loudly"
)]

mod identity {
    pub mod federation;
    pub mod files;
    pub mod resumption;
    pub mod rotation;
    pub mod support;
    pub mod workload_api;
}
