//! a2a-sidecar: a SPIFFE mTLS sidecar that puts layered identity policy in
//! front of every agent-to-agent call. `main.rs` parses the command line;
//! everything else lives here so tests can run the app in-process.

pub mod allowlist;
pub mod app;
pub mod audit;
pub mod body;
pub mod changes;
pub mod check;
pub mod cli;
pub mod config;
pub mod connections;
#[cfg(feature = "dev")]
pub mod demo;
pub mod deny;
#[cfg(feature = "dev")]
pub mod dev;
#[cfg(feature = "dev")]
pub mod dev_idp;
pub mod explain;
pub mod facts;
pub mod headers;
pub mod inbound;
pub mod logging;
pub mod metrics;
pub mod mgmt;
pub mod oauth;
pub mod outbound;
pub mod pipeline;
pub mod policy_store;
pub mod probe;
pub mod refusals;
pub mod reload;
pub mod request_id;
pub mod server;
pub mod telemetry;
pub mod upstream;
