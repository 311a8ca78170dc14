//! a2a-sidecar decisions: pure and synchronous (no tokio, no I/O).
//!
//! - [`path`]: the canonical form a request path is judged and forwarded in.
//! - [`decision`]: the `layer` + `reason` outcome every request ends with.

pub mod decision;
pub mod path;

pub use decision::{Decision, Layer, Reason};
pub use path::{CanonicalPath, PathError, PathOptions};
