//! a2a-sidecar against the real SPIRE (v1.13.3, built from source by
//! `tools/spire/build.sh`): server and agent started per test on loopback
//! and Unix sockets in a temp dir; sidecars as processes, each from its own
//! copy of the binary so the agent's `unix:path` selectors tell them apart.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests fail loudly"
)]

mod spire {
    pub mod docs;
    pub mod federation;
    pub mod harness;
    pub mod identity;
    pub mod jwt_svid;
}
