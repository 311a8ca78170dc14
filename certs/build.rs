//! Compiles SPIFFE's `workload.proto`: the client always (the Workload API
//! source reads its raw responses, so one bad federated bundle cannot fail a
//! whole update), the server for the dev Workload API (feature `dev`).
//! protoc comes from `protoc-bin-vendored`: no system protoc is needed.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/workload.proto");
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(std::env::var_os("CARGO_FEATURE_DEV").is_some())
        .compile_with_config(
            config,
            &[PathBuf::from("proto/workload.proto")],
            &[PathBuf::from("proto"), protoc_bin_vendored::include_path()?],
        )?;
    Ok(())
}
