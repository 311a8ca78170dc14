//! The YAML as written: strings and options, unknown fields rejected.
//! [`super::Config`] is built from this and checks every value.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub identity: RawIdentity,
    #[serde(default)]
    pub runtime: RawRuntime,
    #[serde(default)]
    pub telemetry: RawTelemetry,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIdentity {
    pub source: Option<String>,
    pub socket: Option<String>,
    pub files: Option<RawFiles>,
    pub dev: Option<RawDevIdentity>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub bundle: PathBuf,
    #[serde(default)]
    pub federated_bundles: BTreeMap<String, PathBuf>,
    pub poll_interval: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDevIdentity {
    pub ca_dir: PathBuf,
    pub id: String,
    pub ttl: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRuntime {
    pub worker_threads: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTelemetry {
    pub listen: Option<String>,
    pub log_format: Option<String>,
}
