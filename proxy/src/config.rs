//! Configuration: YAML (DESIGN 1.2) parsed into typed values.
//!
//! Parse, don't validate: [`raw::RawConfig`] mirrors the file and rejects
//! unknown fields; [`Config`] holds `SocketAddr`s, `Duration`s and SPIFFE
//! IDs, so nothing downstream re-checks strings. Every error names the file
//! and the field. Defaults are safe.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use certs::source::FilesConfig;
use certs::{SpiffeId, TrustDomain};

mod authzen;
mod console;
mod env;
mod inbound;
pub mod raw;
mod restart;
mod units;

pub use authzen::{AuthzenSection, BearerKey, PdpConfig, PdpRules};
pub use console::{ConsoleConfig, FleetSettings, OidcSettings, SidecarEntry};
pub use env::{Env, MapEnv, ProcessEnv};
pub use inbound::{HttpLimits, InboundConfig, OutboundConfig, RouteConfig, Upgrades};
pub use restart::HOT_FIELDS;
pub use units::{parse_duration, parse_size};

/// The shortest admin key accepted from the environment. Failed attempts
/// are slowed but a valid key always passes, so guessing is not: only the
/// key's strength stops it.
const MIN_KEY_BYTES: usize = 32;

/// Static secrets that are refused: the sidecar's Entra identity is federated.
const REFUSED_SECRETS: [&str; 2] = ["AZURE_CLIENT_SECRET", "GRAPH_CLIENT_SECRET"];

/// Why a configuration cannot be used. Each message names the file and field.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read `{path}`: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("`{path}`: {message}")]
    Yaml { path: PathBuf, message: String },
    #[error("`{path}`: `{field}`: {why}")]
    Invalid { path: PathBuf, field: String, why: String },
    #[error(
        "`{name}` is set: a2a-sidecar refuses static client secrets; use workload identity federation \
         (`entra.federated_token_file` / AZURE_FEDERATED_TOKEN_FILE)"
    )]
    SecretRefused { name: &'static str },
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub path: PathBuf,
    pub identity: IdentityConfig,
    pub runtime: RuntimeConfig,
    pub telemetry: TelemetryConfig,
    /// `None`: no inbound listener (an egress-only sidecar).
    pub inbound: Option<InboundConfig>,
    /// `None`: no outbound listener.
    pub outbound: Option<OutboundConfig>,
    /// Required with `inbound`.
    pub policy: Option<PolicyConfig>,
    /// Layer 3; required when a policy rule has `require_jwt`.
    pub jwt: Option<JwtSection>,
    /// Layer 4a.
    pub risk: RiskSection,
    /// Layer 4b.
    pub tags: TagsSection,
    /// The sidecar's own Entra identity (federated, no secret).
    pub entra: Option<EntraSection>,
    pub audit: AuditSection,
    /// The admin API; absent = none.
    pub mgmt: Option<MgmtSection>,
    pub limits: LimitsConfig,
    /// AuthZEN: an external PDP asked after Layers 2-4, and/or the PDP listener.
    pub authzen: AuthzenSection,
    /// The environment the config was read with; policy enrichment uses it on every reload.
    pub env: std::sync::Arc<dyn Env>,
}

/// Layer 2 sources and how they apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyConfig {
    /// The reference YAML.
    pub file: PathBuf,
    /// Native Cedar policies, validated against the same schema.
    pub cedar: Vec<PathBuf>,
    pub mode: PolicyMode,
    pub case_insensitive_paths: bool,
}

impl PolicyConfig {
    /// Every file the policy is read from: the reference YAML, then the native Cedar files.
    pub fn files(&self) -> impl Iterator<Item = &Path> {
        std::iter::once(self.file.as_path()).chain(self.cedar.iter().map(PathBuf::as_path))
    }
}

/// An admin API role, ordered by privilege (`Viewer < Admin`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Viewer,
    Admin,
}

impl Role {
    /// `admin` or `viewer`: the word in configs, in `X-A2A-Actor-Role` and on the console.
    pub fn parse(word: &str) -> Option<Self> {
        match word {
            "admin" => Some(Self::Admin),
            "viewer" => Some(Self::Viewer),
            _ => None,
        }
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Viewer => "viewer",
        }
    }
}

/// An admin key, kept as its SHA-256 only. `Debug` prints the name and role.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminKey {
    pub name: String,
    pub role: Role,
    pub sha256: [u8; 32],
}

impl std::fmt::Debug for AdminKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminKey").field("name", &self.name).field("role", &self.role).finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MgmtSection {
    pub listen: SocketAddr,
    pub keys: Vec<AdminKey>,
    /// Accepted mutations, written before the 200 and re-applied on start.
    pub state_file: PathBuf,
    /// With this the listener is mTLS and only these SVIDs may connect
    /// (required off loopback); a key is needed in addition, unless...
    pub tls_callers: Option<Vec<certs::IdPattern>>,
    /// ...the SVID matches one of these (`mgmt.tls.roles`), which grants the
    /// role (the least privileged of those that match).
    pub tls_roles: Vec<(certs::IdPattern, Role)>,
    /// `mgmt.tls.consoles`: callers that act for a signed-in person, named
    /// by `X-A2A-Actor` (recorded as the audit event's `actor`) with
    /// `X-A2A-Actor-Role` (the lower of it and the caller's own role applies).
    pub tls_consoles: Vec<certs::IdPattern>,
    /// `mgmt.tls.loopback_plain`: on a loopback address, a client that does
    /// not start TLS is served plain HTTP (a key required, as without `tls`).
    pub loopback_plain: bool,
}

/// The audit trail's sinks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditSection {
    /// Events kept in memory (for `/mgmt/audit` and stream resumption).
    pub ring: usize,
    /// JSON lines appended here.
    pub file: Option<PathBuf>,
    /// JSON lines on stdout too (logs go to stderr).
    pub stdout: bool,
}

/// Where the client assertion for the token exchange comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AssertionSource {
    /// A projected service-account token, re-read for every exchange (it rotates).
    File(PathBuf),
    /// A JWT-SVID from the Workload API for `audience`.
    JwtSvid { endpoint: String, audience: String },
}

/// How the sidecar obtains its own Entra tokens: client credentials with a
/// federated client assertion, never a stored secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntraSection {
    pub client_id: String,
    pub tenant_id: String,
    pub authority: String,
    pub graph_endpoint: String,
    pub assertion: AssertionSource,
}

/// Where a layer 4 fact comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FactSource {
    /// Pushed through the admin API (risk) or the policy's `ca.agent_tag` (tags).
    Local,
    Graph,
}

/// What a layer does when its facts cannot be had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnUnavailable {
    Deny,
    Allow,
}

impl OnUnavailable {
    /// The YAML value.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Deny => "deny",
            Self::Allow => "allow",
        }
    }
}

/// Layer 4a.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RiskSection {
    pub source: FactSource,
    pub blocked_levels: Vec<policy::RiskLevel>,
    pub refresh: Duration,
    pub on_unavailable: OnUnavailable,
}

/// Layer 4b.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagsSection {
    pub source: FactSource,
    pub attribute_set: String,
    pub attribute: String,
    pub ttl: Duration,
    pub on_unavailable: OnUnavailable,
}

/// Access-token validation (Layer 3): the Entra issuer and any others.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtSection {
    /// `None` when only `issuers` are configured.
    pub entra: Option<EntraIssuer>,
    pub issuers: Vec<IssuerSection>,
    pub leeway: Duration,
    pub allow_unbound_tokens: bool,
    /// RFC 8705 for every rule that requires a token and does not say otherwise.
    pub require_bound_tokens: bool,
    /// Background JWKS refresh.
    pub refresh: Duration,
    /// At most one JWKS fetch per this interval for unknown `kid`s.
    pub refetch_interval: Duration,
}

/// Entra: `jwt.tenant_id`, `jwt.audiences`, `jwt.authority`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntraIssuer {
    pub tenant_id: String,
    pub audiences: Vec<String>,
    /// No trailing slash; `https://`, or `http://` on loopback.
    pub authority: String,
}

/// `jwt.issuers[]`: any OpenID Connect issuer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuerSection {
    pub name: String,
    /// The exact `iss` of its tokens.
    pub issuer: String,
    /// An explicit JWKS URL; `None`: OpenID discovery at
    /// `{issuer}/.well-known/openid-configuration`.
    pub jwks_uri: Option<String>,
    pub audiences: Vec<String>,
    pub algorithms: Vec<jsonwebtoken::Algorithm>,
    pub agent_claims: Vec<String>,
    pub roles_claim: String,
}

impl JwtSection {
    /// Every issuer's rules, the Entra one first.
    pub fn issuer_configs(&self) -> Vec<policy::jwt::IssuerConfig> {
        let leeway = self.leeway.as_secs();
        let entra = self
            .entra
            .iter()
            .map(|e| policy::jwt::IssuerConfig::entra(&e.authority, &e.tenant_id, e.audiences.clone(), leeway));
        let others = self.issuers.iter().map(|i| policy::jwt::IssuerConfig {
            name: std::sync::Arc::from(i.name.as_str()),
            kind: policy::jwt::IssuerKind::Oidc,
            iss: vec![i.issuer.clone()],
            audiences: i.audiences.clone(),
            algorithms: i.algorithms.clone(),
            agent_claims: i.agent_claims.clone(),
            roles_claim: i.roles_claim.clone(),
            leeway_secs: leeway,
        });
        entra.chain(others).collect()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyMode {
    Enforce,
    /// Layers 2-4 log what they would deny and forward anyway.
    Shadow,
}

impl PolicyMode {
    /// The YAML value.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Enforce => "enforce",
            Self::Shadow => "shadow",
        }
    }
}

/// Where the SVID comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentityConfig {
    /// A SPIFFE Workload API endpoint (`unix:///...`).
    WorkloadApi {
        endpoint: String,
    },
    Files(FilesConfig),
    /// The in-process dev CA (feature `dev`).
    Dev {
        ca_dir: PathBuf,
        id: SpiffeId,
        ttl: Duration,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeConfig {
    /// `None` = one per CPU.
    pub worker_threads: Option<usize>,
    /// On SIGTERM, how long in-flight requests may take to finish.
    pub drain_timeout: Duration,
    /// On SIGTERM, how long to keep serving (new connections too) with
    /// `/readyz` failing, before the drain: endpoints stop routing here first.
    pub shutdown_delay: Duration,
}

/// Process-wide limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitsConfig {
    /// Connections each proxy listener (inbound, outbound) holds at once;
    /// more wait in the kernel's backlog until one closes.
    pub max_connections: usize,
}

/// Connections the local admin listeners (mgmt, telemetry) hold at once.
pub const LOCAL_MAX_CONNECTIONS: usize = 256;

/// The limits of the local listeners (mgmt, telemetry, the dev emulators).
/// Their clients are probes, scrapers and admin tools nearby: a request head
/// comes at once, and a connection that sends nothing frees its slot soon.
pub const LOCAL_LIMITS: HttpLimits = HttpLimits {
    header_timeout: Duration::from_secs(3),
    idle_timeout: Duration::from_secs(30),
    max_header_bytes: 32 * 1024,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Text,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TelemetryConfig {
    pub listen: SocketAddr,
    pub log_format: LogFormat,
    /// OTLP/HTTP traces URL (e.g. `https://collector:4318/v1/traces`), used as given.
    pub otlp_endpoint: Option<String>,
}

impl Config {
    /// Reads and validates `path`, with the process environment.
    pub fn load(path: &Path) -> Result<Self, Error> {
        Self::load_with_env(path, &ProcessEnv)
    }

    pub fn load_with_env(path: &Path, env: &dyn Env) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read { path: path.into(), source })?;
        Self::parse(path, &text, env)
    }

    /// Parses YAML `text`; `path` names the file in errors and anchors relative paths.
    pub fn parse(path: &Path, text: &str, env: &dyn Env) -> Result<Self, Error> {
        if let Some(name) = REFUSED_SECRETS.into_iter().find(|name| env.get(name).is_some()) {
            return Err(Error::SecretRefused { name });
        }
        let mut raw: raw::RawConfig = if text.trim().is_empty() {
            raw::RawConfig::default()
        } else {
            serde_norway::from_str(text).map_err(|e| Error::Yaml { path: path.into(), message: e.to_string() })?
        };
        let ctx = Ctx { path, base: path.parent().unwrap_or(Path::new(".")), env };
        let entra = ctx.entra(raw.entra.take(), raw.jwt.as_ref(), &raw.identity)?;
        let uses_graph = |source: &Option<String>| source.as_deref() == Some("graph");
        if entra.is_none() {
            let routes = raw.outbound.as_ref().map(|o| o.routes.as_slice()).unwrap_or_default();
            if let Some(i) = routes.iter().position(|r| r.entra_token.is_some()) {
                return Err(ctx.invalid(
                    &format!("outbound.routes[{i}].entra_token"),
                    "needs the `entra` section (the sidecar's own federated identity)",
                ));
            }
            if raw.authzen.as_ref().and_then(|a| a.pdp.as_ref()).is_some_and(|p| p.entra_token.is_some()) {
                return Err(ctx.invalid(
                    "authzen.pdp.entra_token",
                    "needs the `entra` section (the sidecar's own federated identity)",
                ));
            }
            if raw.risk.as_ref().is_some_and(|r| uses_graph(&r.source)) {
                return Err(ctx.invalid(
                    "risk.source",
                    "`graph` needs the `entra` section (the sidecar's own federated identity)",
                ));
            }
            if raw.tags.as_ref().is_some_and(|t| uses_graph(&t.source)) {
                return Err(ctx.invalid(
                    "tags.source",
                    "`graph` needs the `entra` section (the sidecar's own federated identity)",
                ));
            }
        }
        let mgmt = raw.mgmt.take().map(|m| ctx.mgmt(m)).transpose()?;
        let authzen = ctx.authzen(raw.authzen.take(), mgmt.as_ref(), raw.policy.is_some())?;
        Ok(Self {
            path: path.into(),
            identity: ctx.identity(raw.identity)?,
            runtime: ctx.runtime(raw.runtime)?,
            telemetry: ctx.telemetry(raw.telemetry)?,
            policy: ctx.policy(raw.policy, raw.inbound.is_some())?,
            jwt: raw.jwt.map(|j| ctx.jwt(j)).transpose()?,
            risk: ctx.risk(raw.risk.unwrap_or_default())?,
            tags: ctx.tags(raw.tags.unwrap_or_default())?,
            entra,
            inbound: raw.inbound.map(|i| ctx.inbound(i)).transpose()?,
            outbound: raw.outbound.map(|o| ctx.outbound(o)).transpose()?,
            audit: AuditSection {
                ring: match raw.audit.ring {
                    Some(0) => return Err(ctx.invalid("audit.ring", "must be at least 1")),
                    Some(n) => n,
                    None => 1000,
                },
                file: raw.audit.file.map(|f| ctx.resolve(f)),
                stdout: raw.audit.stdout.unwrap_or(false),
            },
            authzen,
            mgmt,
            limits: LimitsConfig {
                max_connections: match raw.limits.max_connections {
                    Some(0) => return Err(ctx.invalid("limits.max_connections", "must be at least 1")),
                    Some(n) => n,
                    None => 4096,
                },
            },
            env: env.snapshot(),
        })
    }
}

/// What the conversion from raw values needs to name and resolve things.
struct Ctx<'a> {
    path: &'a Path,
    base: &'a Path,
    env: &'a dyn Env,
}

impl Ctx<'_> {
    fn invalid(&self, field: &str, why: impl Into<String>) -> Error {
        Error::Invalid { path: self.path.into(), field: field.into(), why: why.into() }
    }

    fn duration(&self, field: &str, value: Option<&str>, default: Duration) -> Result<Duration, Error> {
        match value {
            None => Ok(default),
            Some(text) => parse_duration(text).map_err(|why| self.invalid(field, why)),
        }
    }

    /// [`Self::duration`] for a time that cannot be zero (a timeout, an interval).
    fn positive_duration(&self, field: &str, value: Option<&str>, default: Duration) -> Result<Duration, Error> {
        let duration = self.duration(field, value, default)?;
        if duration.is_zero() {
            return Err(self.invalid(field, "must be greater than zero"));
        }
        Ok(duration)
    }

    /// Relative paths in the file are relative to the file.
    fn resolve(&self, p: PathBuf) -> PathBuf {
        if p.is_absolute() { p } else { self.base.join(p) }
    }

    fn identity(&self, raw: raw::RawIdentity) -> Result<IdentityConfig, Error> {
        let source = raw.source.as_deref().unwrap_or("workload_api");
        let unused = |field: &str, set: bool| match set {
            true => Err(self.invalid(field, format!("not used with `identity.source: {source}`"))),
            false => Ok(()),
        };
        match source {
            "workload_api" => {
                unused("identity.files", raw.files.is_some())?;
                unused("identity.dev", raw.dev.is_some())?;
                let endpoint = raw.socket.or_else(|| self.env.get("SPIFFE_ENDPOINT_SOCKET")).ok_or_else(|| {
                    self.invalid(
                        "identity.socket",
                        "required (or set SPIFFE_ENDPOINT_SOCKET) with `source: workload_api`",
                    )
                })?;
                if !(endpoint.starts_with("unix:") || endpoint.starts_with("tcp:")) {
                    return Err(
                        self.invalid("identity.socket", format!("`{endpoint}` must start with `unix://` or `tcp://`"))
                    );
                }
                Ok(IdentityConfig::WorkloadApi { endpoint })
            }
            "files" => {
                unused("identity.socket", raw.socket.is_some())?;
                unused("identity.dev", raw.dev.is_some())?;
                let files = raw.files.ok_or_else(|| self.invalid("identity.files", "required with `source: files`"))?;
                self.files(files).map(IdentityConfig::Files)
            }
            "dev" => {
                unused("identity.socket", raw.socket.is_some())?;
                unused("identity.files", raw.files.is_some())?;
                if !cfg!(feature = "dev") {
                    return Err(self.invalid("identity.source", "`dev` needs a build with the `dev` feature"));
                }
                let dev = raw.dev.ok_or_else(|| self.invalid("identity.dev", "required with `source: dev`"))?;
                let id = dev.id.parse().map_err(|e| self.invalid("identity.dev.id", format!("`{}`: {e}", dev.id)))?;
                let ttl = self.duration("identity.dev.ttl", dev.ttl.as_deref(), Duration::from_secs(3600))?;
                Ok(IdentityConfig::Dev { ca_dir: self.resolve(dev.ca_dir), id, ttl })
            }
            other => Err(self.invalid("identity.source", format!("`{other}` is not one of workload_api, files, dev"))),
        }
    }

    fn files(&self, raw: raw::RawFiles) -> Result<FilesConfig, Error> {
        let federated_bundles = raw
            .federated_bundles
            .into_iter()
            .map(|(td, path)| {
                let field = format!("identity.files.federated_bundles.{td}");
                let td = TrustDomain::new(&td).map_err(|e| self.invalid(&field, e.to_string()))?;
                Ok((td, self.resolve(path)))
            })
            .collect::<Result<_, Error>>()?;
        let poll = self.positive_duration(
            "identity.files.poll_interval",
            raw.poll_interval.as_deref(),
            Duration::from_secs(1),
        )?;
        Ok(FilesConfig {
            cert: self.resolve(raw.cert),
            key: self.resolve(raw.key),
            bundle: self.resolve(raw.bundle),
            federated_bundles,
            poll_interval: poll,
        })
    }

    fn policy(&self, raw: Option<raw::RawPolicyConfig>, inbound: bool) -> Result<Option<PolicyConfig>, Error> {
        let Some(raw) = raw else {
            return match inbound {
                true => {
                    Err(self.invalid("policy.file", "required with `inbound`: every request is checked against it"))
                }
                false => Ok(None),
            };
        };
        let file = raw.file.ok_or_else(|| self.invalid("policy.file", "required (the reference policy YAML)"))?;
        let mode = match raw.mode.as_deref().unwrap_or("enforce") {
            "enforce" => PolicyMode::Enforce,
            "shadow" => PolicyMode::Shadow,
            other => return Err(self.invalid("policy.mode", format!("`{other}` is not one of enforce, shadow"))),
        };
        Ok(Some(PolicyConfig {
            file: self.resolve(file),
            cedar: raw.cedar.into_iter().map(|p| self.resolve(p)).collect(),
            mode,
            case_insensitive_paths: raw.case_insensitive_paths.unwrap_or(false),
        }))
    }

    fn jwt(&self, raw: raw::RawJwt) -> Result<JwtSection, Error> {
        // Entra is configured by `tenant_id` in the file, or (the reference's
        // deployments) by the environment when no other issuer is.
        let entra = if raw.tenant_id.is_some() || raw.issuers.is_empty() {
            Some(self.entra_issuer(raw.tenant_id, raw.audiences, raw.authority)?)
        } else {
            for (field, set) in [("jwt.audiences", raw.audiences.is_some()), ("jwt.authority", raw.authority.is_some())]
            {
                if set {
                    return Err(self.invalid(field, "is for the Entra issuer: set `jwt.tenant_id` too"));
                }
            }
            None
        };
        // Entra's own `iss` values (v2 and v1) are taken too.
        let entra_iss =
            entra.as_ref().map(|e| policy::jwt::IssuerConfig::entra(&e.authority, &e.tenant_id, vec![], 0).iss);
        let mut issuers: Vec<IssuerSection> = Vec::new();
        for (i, raw) in raw.issuers.into_iter().enumerate() {
            let issuer = self.issuer(i, raw)?;
            let clash = issuers.iter().any(|o| o.issuer == issuer.issuer)
                || entra_iss.as_ref().is_some_and(|iss| iss.contains(&issuer.issuer));
            if clash {
                return Err(self.invalid(&format!("jwt.issuers[{i}].issuer"), "is configured twice"));
            }
            // `entra` names the Entra issuer, configured or not.
            if issuers.iter().any(|o| o.name == issuer.name) || issuer.name == "entra" {
                return Err(self.invalid(&format!("jwt.issuers[{i}].name"), format!("`{}` is taken", issuer.name)));
            }
            issuers.push(issuer);
        }
        Ok(JwtSection {
            entra,
            issuers,
            leeway: self.duration("jwt.leeway", raw.leeway.as_deref(), Duration::from_secs(60))?,
            allow_unbound_tokens: raw.allow_unbound_tokens.unwrap_or(false),
            require_bound_tokens: raw.require_bound_tokens.unwrap_or(false),
            refresh: self.duration("jwt.refresh", raw.refresh.as_deref(), Duration::from_secs(3600))?,
            refetch_interval: self.duration(
                "jwt.refetch_interval",
                raw.refetch_interval.as_deref(),
                Duration::from_secs(300),
            )?,
        })
    }

    fn entra_issuer(
        &self,
        tenant_id: Option<String>,
        audiences: Option<Vec<String>>,
        authority: Option<String>,
    ) -> Result<EntraIssuer, Error> {
        let tenant_id =
            tenant_id.filter(|t| !t.is_empty()).or_else(|| self.env.get("AZURE_TENANT_ID")).ok_or_else(|| {
                self.invalid("jwt.tenant_id", "required (or set AZURE_TENANT_ID, or configure `jwt.issuers`)")
            })?;
        if !tenant_id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.')) {
            return Err(self.invalid("jwt.tenant_id", format!("`{tenant_id}` is not a tenant ID")));
        }
        let audiences = match audiences {
            Some(list) => list,
            None => self
                .env
                .get("ENTRA_OAUTH2_AUDIENCE")
                .map(|v| v.split(',').map(|a| a.trim().to_owned()).filter(|a| !a.is_empty()).collect())
                .unwrap_or_default(),
        };
        if audiences.is_empty() || audiences.iter().any(String::is_empty) {
            return Err(self.invalid(
                "jwt.audiences",
                "at least one non-empty audience is required (or set ENTRA_OAUTH2_AUDIENCE)",
            ));
        }
        let authority = authority.unwrap_or_else(|| "https://login.microsoftonline.com".into());
        identity_endpoint(&authority).map_err(|why| self.invalid("jwt.authority", why))?;
        Ok(EntraIssuer { tenant_id, audiences, authority: authority.trim_end_matches('/').to_owned() })
    }

    /// `jwt.issuers[i]`.
    fn issuer(&self, i: usize, raw: raw::RawIssuer) -> Result<IssuerSection, Error> {
        let field = |f: &str| format!("jwt.issuers[{i}].{f}");
        let issuer = raw.issuer.filter(|s| !s.is_empty()).ok_or_else(|| self.invalid(&field("issuer"), "required"))?;
        identity_endpoint(&issuer).map_err(|why| self.invalid(&field("issuer"), why))?;
        if let Some(uri) = &raw.jwks_uri {
            identity_endpoint(uri).map_err(|why| self.invalid(&field("jwks_uri"), why))?;
        }
        let audiences = raw.audiences.unwrap_or_default();
        if audiences.is_empty() || audiences.iter().any(String::is_empty) {
            return Err(self.invalid(&field("audiences"), "at least one non-empty audience is required"));
        }
        let algorithms = match raw.algorithms {
            None => vec![jsonwebtoken::Algorithm::RS256],
            Some(names) if names.is_empty() => {
                return Err(self.invalid(&field("algorithms"), "at least one algorithm is required"));
            }
            Some(names) => names
                .iter()
                .map(|name| {
                    name.parse().ok().filter(|alg| policy::jwt::ALGORITHMS.contains(alg)).ok_or_else(|| {
                        self.invalid(
                            &field("algorithms"),
                            format!("`{name}` is not one of RS256, PS256, ES256, EdDSA (never `none` or HMAC)"),
                        )
                    })
                })
                .collect::<Result<_, _>>()?,
        };
        let claim = |f: &str, value: Option<String>| -> Result<Option<String>, Error> {
            match value {
                Some(path) if path.is_empty() || path.split('.').any(str::is_empty) => {
                    Err(self.invalid(&field(f), format!("`{path}` is not a claim name or dotted path")))
                }
                other => Ok(other),
            }
        };
        let agent_claims = match claim("agent_claim", raw.agent_claim)? {
            Some(path) => vec![path],
            None => vec!["azp".into(), "client_id".into()],
        };
        let roles_claim = claim("roles_claim", raw.roles_claim)?.unwrap_or_else(|| "roles".into());
        let name = match raw.name {
            Some(name) if name.is_empty() || name.len() > 64 || name.chars().any(|c| c.is_control()) => {
                return Err(self.invalid(&field("name"), "must be 1 to 64 printable characters"));
            }
            Some(name) => name,
            None => issuer.clone(),
        };
        Ok(IssuerSection { name, issuer, jwks_uri: raw.jwks_uri, audiences, algorithms, agent_claims, roles_claim })
    }

    fn entra(
        &self,
        raw: Option<raw::RawEntra>,
        jwt: Option<&raw::RawJwt>,
        identity: &raw::RawIdentity,
    ) -> Result<Option<EntraSection>, Error> {
        let Some(raw) = raw else { return Ok(None) };
        if raw.client_secret.is_some() {
            return Err(self.invalid(
                "entra.client_secret",
                "static client secrets are refused: use `federated_token_file` or `use_jwt_svid`",
            ));
        }
        let client_id = raw
            .client_id
            .or_else(|| self.env.get("AZURE_CLIENT_ID"))
            .ok_or_else(|| self.invalid("entra.client_id", "required (or set AZURE_CLIENT_ID)"))?;
        let tenant_id = raw
            .tenant_id
            .or_else(|| jwt.and_then(|j| j.tenant_id.clone()))
            .or_else(|| self.env.get("AZURE_TENANT_ID"))
            .ok_or_else(|| self.invalid("entra.tenant_id", "required (or `jwt.tenant_id`, or AZURE_TENANT_ID)"))?;
        let authority = raw
            .authority
            .or_else(|| jwt.and_then(|j| j.authority.clone()))
            .unwrap_or_else(|| "https://login.microsoftonline.com".into());
        identity_endpoint(&authority).map_err(|why| self.invalid("entra.authority", why))?;
        let graph_endpoint = raw.graph_endpoint.unwrap_or_else(|| "https://graph.microsoft.com".into());
        identity_endpoint(&graph_endpoint).map_err(|why| self.invalid("entra.graph_endpoint", why))?;
        let file = raw.federated_token_file.or_else(|| self.env.get("AZURE_FEDERATED_TOKEN_FILE").map(PathBuf::from));
        let assertion = match (file, raw.use_jwt_svid.unwrap_or(false)) {
            (Some(_), true) => {
                return Err(
                    self.invalid("entra.use_jwt_svid", "set `federated_token_file` or `use_jwt_svid`, not both")
                );
            }
            (Some(file), false) => AssertionSource::File(self.resolve(file)),
            (None, true) => {
                let endpoint =
                    identity.socket.clone().or_else(|| self.env.get("SPIFFE_ENDPOINT_SOCKET")).ok_or_else(|| {
                        self.invalid("entra.use_jwt_svid", "needs the Workload API (`identity.socket`)")
                    })?;
                let audience = raw.jwt_svid_audience.unwrap_or_else(|| "api://AzureADTokenExchange".into());
                AssertionSource::JwtSvid { endpoint, audience }
            }
            (None, false) => {
                return Err(self.invalid(
                    "entra.federated_token_file",
                    "required (or AZURE_FEDERATED_TOKEN_FILE, or `use_jwt_svid: true`): identity is federated",
                ));
            }
        };
        Ok(Some(EntraSection {
            client_id,
            tenant_id,
            authority: authority.trim_end_matches('/').to_owned(),
            graph_endpoint: graph_endpoint.trim_end_matches('/').to_owned(),
            assertion,
        }))
    }

    fn mgmt(&self, raw: raw::RawMgmt) -> Result<MgmtSection, Error> {
        let text = raw.listen.as_deref().unwrap_or("127.0.0.1:9443");
        let listen: SocketAddr = text
            .parse()
            .map_err(|_| self.invalid("mgmt.listen", format!("`{text}` is not an address like 127.0.0.1:9443")))?;
        let pattern = |field: String, p: &str| {
            p.parse::<certs::IdPattern>().map_err(|e| self.invalid(&field, format!("`{p}`: {e}")))
        };
        let loopback_plain = raw.tls.as_ref().and_then(|t| t.loopback_plain).unwrap_or(false);
        if loopback_plain && !listen.ip().is_loopback() {
            return Err(self.invalid(
                "mgmt.tls.loopback_plain",
                format!("`{listen}` is not loopback: off loopback the admin listener is mTLS only"),
            ));
        }
        let (tls_callers, tls_roles, tls_consoles) = match raw.tls {
            None => (None, Vec::new(), Vec::new()),
            Some(tls) if tls.allowed_callers.is_empty() => {
                return Err(self.invalid("mgmt.tls.allowed_callers", "at least one admin client SPIFFE ID (pattern)"));
            }
            Some(tls) => {
                let callers = (tls.allowed_callers.iter().enumerate())
                    .map(|(i, p)| pattern(format!("mgmt.tls.allowed_callers[{i}]"), p))
                    .collect::<Result<Vec<_>, _>>()?;
                let mut roles = Vec::new();
                for (p, role) in &tls.roles {
                    let field = format!("mgmt.tls.roles.{p}");
                    let role = Role::parse(role)
                        .ok_or_else(|| self.invalid(&field, format!("`{role}` is not one of admin, viewer")))?;
                    roles.push((pattern(field, p)?, role));
                }
                let consoles = (tls.consoles.iter().enumerate())
                    .map(|(i, p)| pattern(format!("mgmt.tls.consoles[{i}]"), p))
                    .collect::<Result<Vec<_>, _>>()?;
                (Some(callers), roles, consoles)
            }
        };
        if !listen.ip().is_loopback() && tls_callers.is_none() {
            return Err(self.invalid(
                "mgmt.listen",
                format!(
                    "`{listen}` is not loopback: set `mgmt.tls.allowed_callers` so admin clients need an SVID (mTLS)"
                ),
            ));
        }
        if raw.keys.is_empty() {
            return Err(self.invalid("mgmt.keys", "at least one key is required, even on loopback"));
        }
        let mut keys = Vec::new();
        for (i, key) in raw.keys.into_iter().enumerate() {
            let field = |f: &str| format!("mgmt.keys[{i}].{f}");
            let role = Role::parse(&key.role)
                .ok_or_else(|| self.invalid(&field("role"), format!("`{}` is not one of admin, viewer", key.role)))?;
            let sha256 = match (key.sha256, key.env) {
                (Some(hex), None) => {
                    parse_sha256(&hex).ok_or_else(|| self.invalid(&field("sha256"), "must be 64 hex digits"))?
                }
                (None, Some(var)) => {
                    let value =
                        self.env.get(&var).ok_or_else(|| self.invalid(&field("env"), format!("`{var}` is not set")))?;
                    if value.len() < MIN_KEY_BYTES {
                        return Err(self.invalid(
                            &field("env"),
                            format!(
                                "`{var}` holds {} characters; an admin key needs at least {MIN_KEY_BYTES} \
                                 (use 32 random bytes, e.g. `openssl rand -hex 32`)",
                                value.len()
                            ),
                        ));
                    }
                    sha256(value.as_bytes())
                }
                _ => return Err(self.invalid(&field("sha256"), "set exactly one of `sha256` or `env`")),
            };
            if key.name.is_empty() {
                return Err(self.invalid(&field("name"), "is required (audit events name the key)"));
            }
            keys.push(AdminKey { name: key.name, role, sha256 });
        }
        let state_file = raw
            .state_file
            .ok_or_else(|| self.invalid("mgmt.state_file", "required: admin changes must survive restarts"))?;
        Ok(MgmtSection {
            listen,
            keys,
            state_file: self.resolve(state_file),
            tls_callers,
            tls_roles,
            tls_consoles,
            loopback_plain,
        })
    }

    fn on_unavailable(&self, field: &str, value: Option<&str>) -> Result<OnUnavailable, Error> {
        match value.unwrap_or("deny") {
            "deny" => Ok(OnUnavailable::Deny),
            "allow" => Ok(OnUnavailable::Allow),
            other => Err(self.invalid(field, format!("`{other}` is not one of deny, allow"))),
        }
    }

    fn risk(&self, raw: raw::RawRisk) -> Result<RiskSection, Error> {
        let source = match raw.source.as_deref().unwrap_or("mgmt") {
            "mgmt" => FactSource::Local,
            "graph" => FactSource::Graph,
            other => return Err(self.invalid("risk.source", format!("`{other}` is not one of mgmt, graph"))),
        };
        let blocked_levels = raw
            .blocked_levels
            .unwrap_or_else(|| vec!["high".into()])
            .iter()
            .map(|l| l.parse().map_err(|why| self.invalid("risk.blocked_levels", why)))
            .collect::<Result<_, _>>()?;
        Ok(RiskSection {
            source,
            blocked_levels,
            refresh: self.duration("risk.refresh", raw.refresh.as_deref(), Duration::from_secs(60))?,
            on_unavailable: self.on_unavailable("risk.on_unavailable", raw.on_unavailable.as_deref())?,
        })
    }

    fn tags(&self, raw: raw::RawTags) -> Result<TagsSection, Error> {
        let source = match raw.source.as_deref().unwrap_or("policy") {
            "policy" => FactSource::Local,
            "graph" => FactSource::Graph,
            other => return Err(self.invalid("tags.source", format!("`{other}` is not one of policy, graph"))),
        };
        Ok(TagsSection {
            source,
            attribute_set: raw.attribute_set.unwrap_or_else(|| "AgentIdentity".into()),
            attribute: raw.attribute.unwrap_or_else(|| "Department".into()),
            ttl: self.duration("tags.ttl", raw.ttl.as_deref(), Duration::from_secs(300))?,
            on_unavailable: self.on_unavailable("tags.on_unavailable", raw.on_unavailable.as_deref())?,
        })
    }

    fn runtime(&self, raw: raw::RawRuntime) -> Result<RuntimeConfig, Error> {
        if raw.worker_threads == Some(0) {
            return Err(self.invalid("runtime.worker_threads", "must be at least 1"));
        }
        let drain_timeout =
            self.duration("runtime.drain_timeout", raw.drain_timeout.as_deref(), Duration::from_secs(10))?;
        let shutdown_delay = self.duration("runtime.shutdown_delay", raw.shutdown_delay.as_deref(), Duration::ZERO)?;
        Ok(RuntimeConfig { worker_threads: raw.worker_threads, drain_timeout, shutdown_delay })
    }

    fn telemetry(&self, raw: raw::RawTelemetry) -> Result<TelemetryConfig, Error> {
        let listen = raw.listen.as_deref().unwrap_or("127.0.0.1:9090");
        let listen = listen.parse().map_err(|_| {
            self.invalid("telemetry.listen", format!("`{listen}` is not an address like 127.0.0.1:9090"))
        })?;
        let log_format = match raw.log_format.as_deref().unwrap_or("json") {
            "json" => LogFormat::Json,
            "text" => LogFormat::Text,
            other => return Err(self.invalid("telemetry.log_format", format!("`{other}` is not one of json, text"))),
        };
        let otlp_endpoint = match raw.otlp_endpoint {
            Some(url) => {
                identity_endpoint(&url).map_err(|why| self.invalid("telemetry.otlp_endpoint", why))?;
                // Either would be printed in the start-up log line: no secret goes there.
                let secretive = url
                    .parse::<hyper::Uri>()
                    .is_ok_and(|u| u.query().is_some() || u.authority().is_some_and(|a| a.as_str().contains('@')));
                if secretive {
                    return Err(self.invalid(
                        "telemetry.otlp_endpoint",
                        "credentials in the URL (user info or a query) are not accepted",
                    ));
                }
                Some(url)
            }
            None => None,
        };
        Ok(TelemetryConfig { listen, log_format, otlp_endpoint })
    }
}

/// SHA-256 (hex) of the files' contents, in order; `None` if one cannot be read.
pub fn fingerprint<'a>(files: impl IntoIterator<Item = &'a Path>) -> Option<String> {
    let contents = files.into_iter().map(std::fs::read).collect::<Result<Vec<_>, _>>().ok()?;
    Some(fingerprint_bytes(contents.iter().map(Vec::as_slice)))
}

/// [`fingerprint`] of contents already read.
pub fn fingerprint_bytes<'a>(contents: impl IntoIterator<Item = &'a [u8]>) -> String {
    let mut all = Vec::new();
    for bytes in contents {
        // Length-prefixed, so moving bytes from one file to the next changes the result.
        all.extend_from_slice(&(bytes.len() as u64).to_be_bytes());
        all.extend_from_slice(bytes);
    }
    sha256(&all).iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

fn parse_sha256(hex: &str) -> Option<[u8; 32]> {
    let bytes = hex.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks(2).enumerate() {
        let text = std::str::from_utf8(pair).ok()?;
        *out.get_mut(i)? = u8::from_str_radix(text, 16).ok()?;
    }
    Some(out)
}

/// `localhost` or a loopback address (IPv6 in brackets or not).
pub fn loopback_host(host: &str) -> bool {
    let ip = host.trim_start_matches('[').trim_end_matches(']').parse::<std::net::IpAddr>();
    host == "localhost" || ip.is_ok_and(|ip| ip.is_loopback())
}

/// Identity endpoints are `https://`; plain `http://` only on loopback
/// (tests, the demo).
pub fn identity_endpoint(url: &str) -> Result<(), String> {
    let uri: hyper::Uri = url.parse().map_err(|_| format!("`{url}` is not a URL"))?;
    let host = uri.host().ok_or_else(|| format!("`{url}` has no host"))?;
    match uri.scheme_str() {
        Some("https") => Ok(()),
        Some("http") => {
            if loopback_host(host) {
                Ok(())
            } else {
                Err(format!("`{url}` must be https:// (plain http:// is accepted on loopback only)"))
            }
        }
        _ => Err(format!("`{url}` must be https://")),
    }
}

#[cfg(test)]
mod tests;

impl Config {
    /// The effective configuration for the start-up log line: every setting
    /// an operator needs to see, and no secret (admin keys by name and role
    /// only, the environment not at all).
    pub fn summary(&self) -> serde_json::Value {
        use serde_json::json;
        let identity = match &self.identity {
            IdentityConfig::WorkloadApi { endpoint } => json!({"source": "workload_api", "socket": endpoint}),
            IdentityConfig::Files(files) => json!({"source": "files", "cert": files.cert}),
            IdentityConfig::Dev { id, .. } => json!({"source": "dev", "id": id.as_str()}),
        };
        let patterns = |ps: &[certs::IdPattern]| ps.iter().map(ToString::to_string).collect::<Vec<_>>();
        json!({
            "file": self.path,
            "identity": identity,
            "inbound": self.inbound.as_ref().map(|i| json!({
                "listen": i.listen.to_string(),
                "upstream": i.upstream.to_string(),
                "allowed_callers": patterns(&i.allowed_callers),
            })),
            "outbound": self.outbound.as_ref().map(|o| json!({
                "listen": o.listen.to_string(),
                "routes": o.routes.iter().map(|r| json!({
                    "name": r.name,
                    "upstream": r.upstream.to_string(),
                    "server_id": r.server_id.to_string(),
                    "entra_scope": r.entra_scope,
                })).collect::<Vec<_>>(),
            })),
            "policy": self.policy.as_ref().map(|p| json!({"file": p.file, "cedar": p.cedar, "mode": format!("{:?}", p.mode)})),
            "jwt": self.jwt.as_ref().map(|j| json!({
                "entra": j.entra.as_ref().map(|e| json!({"tenant_id": e.tenant_id, "audiences": e.audiences, "authority": e.authority})),
                "issuers": j.issuers.iter().map(|i| json!({"name": i.name, "issuer": i.issuer, "audiences": i.audiences})).collect::<Vec<_>>(),
                "require_bound_tokens": j.require_bound_tokens,
            })),
            "entra": self.entra.as_ref().map(|e| json!({"client_id": e.client_id, "graph_endpoint": e.graph_endpoint})),
            "risk": {"source": format!("{:?}", self.risk.source), "on_unavailable": format!("{:?}", self.risk.on_unavailable)},
            "tags": {"source": format!("{:?}", self.tags.source), "on_unavailable": format!("{:?}", self.tags.on_unavailable)},
            "mgmt": self.mgmt.as_ref().map(|m| json!({
                "listen": m.listen.to_string(),
                "mtls": m.tls_callers.as_deref().map(patterns),
                "keys": m.keys.iter().map(|k| json!({"name": k.name, "role": format!("{:?}", k.role)})).collect::<Vec<_>>(),
                "state_file": m.state_file,
            })),
            "audit": {"ring": self.audit.ring, "file": self.audit.file, "stdout": self.audit.stdout},
            "telemetry": {"listen": self.telemetry.listen.to_string(), "otlp_endpoint": self.telemetry.otlp_endpoint},
            "authzen": {
                "listen": self.authzen.listen.map(|a| a.to_string()),
                "pdp": self.authzen.pdp.as_ref().map(|p| json!({
                    "url": p.url,
                    "timeout_ms": p.timeout.as_millis() as u64,
                    "cache_ttl_s": p.cache_ttl.as_secs(),
                    "fail_open": p.fail_open,
                    "rules": format!("{:?}", p.rules),
                    "server_id": p.server_id.as_ref().map(ToString::to_string),
                    "key_env": p.bearer.as_ref().map(|b| b.env.clone()),
                })),
            },
        })
    }
}
