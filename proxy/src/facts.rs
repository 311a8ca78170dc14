//! Facts from outside the sidecar: the IdP's signing keys (JWKS), Graph's
//! risk and custom security attributes, and the sidecar's own Entra tokens.
//! Fetchers only: what a fact means for a request is decided in `layers`.
//! Fetched in the background and served from memory, so the request path
//! never waits on a remote call when the caches are warm.

pub(crate) mod entra_token;
pub(crate) mod graph;
pub mod http;
pub mod jwks;
