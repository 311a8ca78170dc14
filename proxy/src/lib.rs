//! a2a-sidecar: a SPIFFE mTLS sidecar that puts layered identity policy in
//! front of every agent-to-agent call. `main.rs` parses the command line;
//! everything else lives here so tests can run the app in-process.

pub mod app;
pub mod check;
pub mod cli;
pub mod config;
#[cfg(feature = "dev")]
pub mod dev;
pub mod logging;
pub mod metrics;
pub mod probe;
pub mod server;
pub mod telemetry;
