//! a2a-sidecar end to end: the binary's CLI contract, and sidecars running
//! in-process against real sockets (Workload API over gRPC on Unix sockets,
//! mTLS and HTTP on 127.0.0.1:0, a real upstream app).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests fail loudly"
)]

mod sidecar {
    pub mod app;
    pub mod authzen;
    pub mod browser;
    pub mod cli;
    pub mod compat;
    pub mod console;
    pub mod dataplane;
    pub mod demo;
    pub mod docs;
    pub mod federation;
    pub mod governance;
    pub mod handshakes;
    pub mod hostile;
    pub mod issuers;
    pub mod jwt;
    pub mod layout;
    pub mod mesh;
    pub mod mgmt;
    pub mod outbound;
    pub mod rbac;
    pub mod reload;
    pub mod signals;
    pub mod streams;
    pub mod support;
    pub mod telemetry;
    pub mod traces;
    pub mod upgrades;
}
