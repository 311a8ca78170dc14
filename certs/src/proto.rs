//! SPIFFE's `workload.proto`, compiled by `build.rs` (client always, server
//! with the `dev` feature).

#![allow(clippy::all, clippy::pedantic, clippy::unwrap_used, clippy::expect_used, reason = "generated code")]

tonic::include_proto!("_");
