//! The data plane: the inbound and outbound listeners and everything a
//! request crosses on its way to the app or to a peer sidecar.

pub(crate) mod body;
pub(crate) mod connections;
pub mod deny;
pub(crate) mod forward;
pub mod headers;
pub(crate) mod inbound;
pub(crate) mod outbound;
pub(crate) mod refusals;
pub(crate) mod request_id;
pub(crate) mod server;
pub mod upstream;
