//! a2a-sidecar: a SPIFFE mTLS sidecar that puts layered identity policy in
//! front of every agent-to-agent call. `main.rs` parses the command line;
//! everything else lives here so tests can run the app in-process.
//!
//! Where to find what (docs/DESIGN.md Part 2 has the long form):
//! - [`dataplane`]: the listeners and what crosses them (inbound, outbound,
//!   the forwarding core, serving, upstream pools, bodies, headers, denials);
//! - [`layers`]: the decision: the pipeline and one module per layer;
//! - [`facts`]: what the layers need from outside (JWKS, Graph, Entra
//!   tokens), fetched in the background;
//! - [`admin`]: `/mgmt`, its state file and reloads;
//! - `admin::authzen`: the AuthZEN PDP listener, served like `/mgmt` (the PEP side is `layers::pdp`);
//! - [`observe`]: audit, metrics, the telemetry listener, logging;
//! - [`cmd`]: the command line and the offline tools (check, explain,
//!   probe, dev, demo, the dev IdP);
//! - [`config`] the configuration, [`changes`] the "a decision input
//!   changed" signal, [`app`] the wiring.

/// `<crate version> (<commit>)`: what `--version` prints.
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (", env!("A2A_GIT_COMMIT"), ")");
/// The commit the binary was built from (`unknown` without git or `A2A_GIT_COMMIT`).
pub const COMMIT: &str = env!("A2A_GIT_COMMIT");

pub(crate) mod admin;
pub mod app;
pub(crate) mod changes;
pub mod cmd;
pub mod config;
pub mod console;
pub mod dataplane;
pub mod facts;
pub mod layers;
pub mod observe;
