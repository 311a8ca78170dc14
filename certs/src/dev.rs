//! Development and test tooling (feature `dev`): a dev CA per trust domain and
//! a real SPIFFE Workload API server that stands in for a SPIRE agent.
//! Production images are built without this feature.

pub mod ca;
pub mod poll;
pub mod workload_api_server;

pub use ca::{DevCa, JwtKey, LeafSpec, write_svid_files};
pub use poll::eventually;
pub use workload_api_server::{WorkloadApiServer, WorkloadApiServerConfig};

/// Errors of the dev tooling.
#[derive(Debug, thiserror::Error)]
pub enum DevError {
    #[error("certificate generation: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("`{path}`: {source}")]
    Io { path: std::path::PathBuf, source: std::io::Error },
    #[error("`{0}` holds no dev CA (run `dev ca init` first)")]
    NotACa(std::path::PathBuf),
    #[error(transparent)]
    Material(#[from] crate::svid::MaterialError),
    #[error("jwt: {0}")]
    Jwt(#[from] jsonwebtoken::errors::Error),
    #[error("invalid SPIFFE ID: {0}")]
    Id(#[from] crate::spiffe_id::IdError),
    #[error("workload api server: {0}")]
    Serve(String),
}
