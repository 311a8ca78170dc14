//! a2a-sidecar end to end: the binary's CLI contract, and the app running
//! in-process against real sockets (Workload API over gRPC on a Unix socket,
//! telemetry over HTTP on 127.0.0.1:0).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "tests fail loudly")]

mod sidecar {
    pub mod cli;
    pub mod support;
    pub mod telemetry;
}
