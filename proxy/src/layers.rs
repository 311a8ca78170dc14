//! The decision: Layer 1 (the caller allow-list), Layer 2 (RBAC, Cedar),
//! Layer 3 (Entra tokens), Layers 4a and 4b (risk and tags), and the
//! pipeline that runs 2 to 4 on one snapshot of the policy, then the
//! external AuthZEN PDP (`pdp`).

pub mod allowlist;
pub mod governance;
pub mod oauth;
pub mod pdp;
pub mod pipeline;
pub mod rbac;
