//! SPIFFE identity for a2a-sidecar.
//!
//! - [`SpiffeId`], [`TrustDomain`] and [`IdPattern`]: parsed per the SPIFFE spec.
//! - [`source`]: X509-SVIDs from the Workload API, PEM files or the dev CA,
//!   published on a `watch` channel ([`IdentityWatch`]) as they rotate.
//! - [`crypto`]: the process's one crypto provider (aws-lc-rs).
//! - [`tls`]: rustls resolvers and verifiers that serve the current SVID and
//!   check peers by SPIFFE ID against their own trust domain's bundle.
//! - [`dev`] (feature `dev`): a dev CA and a real Workload API server.

pub mod crypto;
pub mod pattern;
pub(crate) mod proto;
pub mod rotation;
pub mod source;
pub mod spiffe_id;
pub mod svid;
pub mod tls;
pub(crate) mod verified;
pub mod x509;

#[cfg(feature = "dev")]
pub mod dev;

pub use pattern::{IdPattern, PatternError};
pub use rotation::{IdentityState, IdentityWatch, RejectedBundle, SourceStatus};
pub use spiffe_id::{IdError, SpiffeId, TrustDomain};
pub use svid::{Bundle, BundleSet, Identity, MaterialError, Svid};
