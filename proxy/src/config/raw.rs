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
    pub inbound: Option<RawInbound>,
    pub outbound: Option<RawOutbound>,
    pub policy: Option<RawPolicyConfig>,
    pub jwt: Option<RawJwt>,
    pub risk: Option<RawRisk>,
    pub tags: Option<RawTags>,
    pub entra: Option<RawEntra>,
    #[serde(default)]
    pub audit: RawAudit,
    pub mgmt: Option<RawMgmt>,
    #[serde(default)]
    pub limits: RawLimits,
    pub authzen: Option<RawAuthzen>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAuthzen {
    pub pdp: Option<RawPdp>,
    pub listen: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPdp {
    pub url: Option<String>,
    pub timeout: Option<String>,
    pub cache_ttl: Option<String>,
    pub cache_size: Option<u64>,
    pub fail_open: Option<bool>,
    pub rules: Option<String>,
    pub server_id: Option<String>,
    pub key_env: Option<String>,
    pub entra_token: Option<RawEntraToken>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    pub max_connections: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMgmt {
    pub listen: Option<String>,
    #[serde(default)]
    pub keys: Vec<RawKey>,
    pub state_file: Option<PathBuf>,
    pub tls: Option<RawMgmtTls>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMgmtTls {
    #[serde(default)]
    pub allowed_callers: Vec<String>,
    /// `{pattern: admin|viewer}`: an allowed SVID matching it needs no key.
    #[serde(default)]
    pub roles: std::collections::BTreeMap<String, String>,
    /// Callers (patterns) that act for a signed-in person (the console).
    #[serde(default)]
    pub consoles: Vec<String>,
    /// On a loopback address: plain HTTP (with a key) is served too.
    pub loopback_plain: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKey {
    pub name: String,
    pub role: String,
    pub sha256: Option<String>,
    pub env: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAudit {
    pub ring: Option<usize>,
    pub file: Option<PathBuf>,
    pub stdout: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEntra {
    pub client_id: Option<String>,
    pub tenant_id: Option<String>,
    pub authority: Option<String>,
    pub graph_endpoint: Option<String>,
    pub federated_token_file: Option<PathBuf>,
    pub use_jwt_svid: Option<bool>,
    pub jwt_svid_audience: Option<String>,
    /// Parsed only to refuse it with a clear message.
    pub client_secret: Option<serde::de::IgnoredAny>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRisk {
    pub source: Option<String>,
    pub blocked_levels: Option<Vec<String>>,
    pub refresh: Option<String>,
    pub on_unavailable: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTags {
    pub source: Option<String>,
    pub attribute_set: Option<String>,
    pub attribute: Option<String>,
    pub ttl: Option<String>,
    pub on_unavailable: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawJwt {
    pub tenant_id: Option<String>,
    pub audiences: Option<Vec<String>>,
    pub authority: Option<String>,
    pub leeway: Option<String>,
    pub allow_unbound_tokens: Option<bool>,
    pub require_bound_tokens: Option<bool>,
    pub refresh: Option<String>,
    pub refetch_interval: Option<String>,
    #[serde(default)]
    pub issuers: Vec<RawIssuer>,
}

/// `jwt.issuers[]`: an OpenID Connect issuer other than Entra.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIssuer {
    pub name: Option<String>,
    pub issuer: Option<String>,
    pub jwks_uri: Option<String>,
    pub audiences: Option<Vec<String>>,
    pub algorithms: Option<Vec<String>>,
    pub agent_claim: Option<String>,
    pub roles_claim: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPolicyConfig {
    pub file: Option<PathBuf>,
    #[serde(default)]
    pub cedar: Vec<PathBuf>,
    pub mode: Option<String>,
    pub case_insensitive_paths: Option<bool>,
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
    pub drain_timeout: Option<String>,
    pub shutdown_delay: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTelemetry {
    pub listen: Option<String>,
    pub log_format: Option<String>,
    pub otlp_endpoint: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawInbound {
    pub listen: Option<String>,
    pub upstream: Option<String>,
    pub header_timeout: Option<String>,
    pub handshake_timeout: Option<String>,
    pub idle_timeout: Option<String>,
    pub max_header_bytes: Option<String>,
    pub tls_resumption: Option<bool>,
    pub allow_semicolons: Option<bool>,
    pub allow_underscore_headers: Option<bool>,
    pub upgrades: Option<Vec<String>>,
    #[serde(default)]
    pub allowed_callers: Vec<String>,
    pub upstream_connect_timeout: Option<String>,
    pub upstream_response_timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOutbound {
    pub listen: Option<String>,
    pub allow_non_loopback: Option<bool>,
    pub header_timeout: Option<String>,
    pub idle_timeout: Option<String>,
    pub max_header_bytes: Option<String>,
    pub connect_timeout: Option<String>,
    pub response_timeout: Option<String>,
    #[serde(default)]
    pub routes: Vec<RawRoute>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub name: String,
    #[serde(rename = "match")]
    pub match_: Option<RawRouteMatch>,
    pub upstream: String,
    pub server_id: String,
    pub entra_token: Option<RawEntraToken>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEntraToken {
    pub scope: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRouteMatch {
    pub path_prefix: String,
}
