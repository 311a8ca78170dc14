//! Compiles SPIFFE's `workload.proto` for the dev Workload API server
//! (feature `dev` only; the `spiffe` crate's generated code is client-only).
//! protoc comes from `protoc-bin-vendored`: no system protoc is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/workload.proto");
    #[cfg(feature = "dev")]
    {
        use std::path::PathBuf;
        let mut config = tonic_prost_build::Config::new();
        config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
        tonic_prost_build::configure().build_client(false).compile_with_config(
            config,
            &[PathBuf::from("proto/workload.proto")],
            &[PathBuf::from("proto"), protoc_bin_vendored::include_path()?],
        )?;
    }
    Ok(())
}
