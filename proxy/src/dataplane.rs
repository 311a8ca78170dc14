//! The data plane: the inbound and outbound listeners and everything a
//! request crosses on its way to the app or to a peer sidecar.

pub mod body;
pub mod connections;
pub mod deny;
pub mod forward;
pub mod headers;
pub mod inbound;
pub mod outbound;
pub mod refusals;
pub mod request_id;
pub mod server;
pub mod upstream;
