//! Facts the layers need from outside the sidecar (signing keys now; risk
//! and tags later), fetched in the background and served from memory so the
//! request path never waits on a remote call when the caches are warm.

pub(crate) mod entra_token;
pub(crate) mod graph;
pub mod http;
pub mod jwks;
