//! a2a-sidecar decisions: pure and synchronous (no tokio, no I/O).
//!
//! - [`path`]: the canonical form a request path is judged and forwarded in.
//! - [`decision`]: the `layer` + `reason` outcome every request ends with.
//! - [`reference`]: the reference prototype's policy YAML, enriched and validated.
//! - [`risk`]: a caller's risk level (Layer 4a).
//! - [`compile`] + [`engine`]: that YAML compiled to Cedar, plus native Cedar
//!   policies, evaluated per caller (Layer 2).
//! - [`hashed`]: the hot caches' table, keyed by a hash whose hits are checked.

pub mod compile;
pub mod decision;
pub mod engine;
pub mod hashed;
pub mod jwt;
pub mod path;
pub mod reference;
pub mod risk;

pub use compile::CompileOptions;
pub use decision::{Decision, Layer, Reason};
pub use engine::{PolicyEngine, PolicyError, Source, Verdict};
pub use path::{CanonicalPath, PathError, PathOptions};
pub use reference::PolicyDoc;
pub use risk::RiskLevel;
