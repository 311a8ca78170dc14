//! a2a-sidecar decisions: pure and synchronous (no tokio, no I/O).
//!
//! - [`path`]: the canonical form a request path is judged and forwarded in.

pub mod path;

pub use path::{CanonicalPath, PathError, PathOptions};
