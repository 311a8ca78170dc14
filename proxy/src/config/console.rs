//! `a2a-sidecar console --config console.yaml`: the operator console's
//! configuration. Unknown fields are an error; every error names the field.
//!
//! ```yaml
//! listen: 127.0.0.1:9700
//! url: https://console.example.com        # where browsers reach it (the sign-in redirect)
//! identity: {socket: unix:///spiffe-workload-api/spire-agent.sock}   # its SVID, for mTLS to the sidecars
//! oidc:
//!   issuer: https://login.microsoftonline.com/<tenant>/v2.0
//!   client_id: <the console's app registration>
//!   roles_claim: roles                  # or groups; a dotted path reaches into objects
//!   admin: [Console.Admin]              # claim values that make an admin...
//!   viewer: [Console.Viewer]            # ...and a viewer; anyone else is refused
//! session_ttl: 8h
//! fleet: {concurrency: 16, timeout: 2s, poll_interval: 5s}
//! sidecars:
//!   - {name: budget-backend, mgmt: https://10.0.0.12:9443, spiffe_id: spiffe://td/ests/bp/b1/aid/budget-backend}
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::{Ctx, Error, IdentityConfig, ProcessEnv, identity_endpoint, raw};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConsole {
    listen: Option<String>,
    url: Option<String>,
    #[serde(default)]
    identity: raw::RawIdentity,
    oidc: Option<RawOidc>,
    session_ttl: Option<String>,
    #[serde(default)]
    fleet: RawFleet,
    #[serde(default)]
    sidecars: Vec<RawSidecar>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOidc {
    issuer: Option<String>,
    client_id: Option<String>,
    roles_claim: Option<String>,
    #[serde(default)]
    admin: Vec<String>,
    #[serde(default)]
    viewer: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFleet {
    concurrency: Option<usize>,
    timeout: Option<String>,
    poll_interval: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSidecar {
    name: Option<String>,
    mgmt: Option<String>,
    spiffe_id: Option<String>,
}

/// The validated console configuration.
#[derive(Debug, Clone)]
pub struct ConsoleConfig {
    pub path: PathBuf,
    pub listen: SocketAddr,
    /// No trailing slash; the sign-in redirect is `{url}/callback`. Default:
    /// `http://<the bound listen address>`.
    pub url: Option<String>,
    pub identity: IdentityConfig,
    pub oidc: OidcSettings,
    pub session_ttl: Duration,
    pub fleet: FleetSettings,
    pub sidecars: Vec<SidecarEntry>,
}

/// The sign-in: OpenID Connect authorization code with PKCE, a public client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OidcSettings {
    /// No trailing slash; discovery is `{issuer}/.well-known/openid-configuration`.
    pub issuer: String,
    pub client_id: String,
    /// Where the roles are: a claim name, or a dotted path (`realm_access.roles`).
    pub roles_claim: String,
    pub admin: Vec<String>,
    pub viewer: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FleetSettings {
    /// Sidecars asked at once.
    pub concurrency: usize,
    /// Per sidecar and request.
    pub timeout: Duration,
    pub poll_interval: Duration,
}

/// One sidecar the console fronts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SidecarEntry {
    pub name: String,
    /// `https://host:port` of its mTLS `/mgmt` listener, no trailing slash.
    pub mgmt: String,
    /// Its SVID must name exactly this.
    pub spiffe_id: certs::SpiffeId,
}

impl ConsoleConfig {
    pub fn load(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read { path: path.into(), source })?;
        let raw: RawConsole =
            serde_norway::from_str(&text).map_err(|e| Error::Yaml { path: path.into(), message: e.to_string() })?;
        let ctx = Ctx { path, base: path.parent().unwrap_or(Path::new(".")), env: &ProcessEnv };
        let text = raw.listen.as_deref().unwrap_or("127.0.0.1:9700");
        let listen: SocketAddr = text
            .parse()
            .map_err(|_| ctx.invalid("listen", format!("`{text}` is not an address like 127.0.0.1:9700")))?;
        if let Some(url) = &raw.url {
            identity_endpoint(url).map_err(|why| ctx.invalid("url", why))?;
        }
        let oidc = raw.oidc.ok_or_else(|| ctx.invalid("oidc", "required: operators sign in"))?;
        let issuer = oidc.issuer.ok_or_else(|| ctx.invalid("oidc.issuer", "required"))?;
        identity_endpoint(&issuer).map_err(|why| ctx.invalid("oidc.issuer", why))?;
        let client_id =
            oidc.client_id.filter(|c| !c.is_empty()).ok_or_else(|| ctx.invalid("oidc.client_id", "required"))?;
        if oidc.admin.is_empty() && oidc.viewer.is_empty() {
            return Err(ctx.invalid("oidc.admin", "name the claim values of admins (and `oidc.viewer` of viewers)"));
        }
        let fleet = FleetSettings {
            concurrency: match raw.fleet.concurrency {
                Some(0) => return Err(ctx.invalid("fleet.concurrency", "must be at least 1")),
                Some(n) => n,
                None => 16,
            },
            timeout: ctx.duration("fleet.timeout", raw.fleet.timeout.as_deref(), Duration::from_secs(2))?,
            poll_interval: ctx.duration(
                "fleet.poll_interval",
                raw.fleet.poll_interval.as_deref(),
                Duration::from_secs(5),
            )?,
        };
        let mut sidecars: Vec<SidecarEntry> = Vec::new();
        for (i, s) in raw.sidecars.into_iter().enumerate() {
            let field = |f: &str| format!("sidecars[{i}].{f}");
            let name = s.name.filter(|n| !n.is_empty()).ok_or_else(|| ctx.invalid(&field("name"), "required"))?;
            if sidecars.iter().any(|other| other.name == name) {
                return Err(ctx.invalid(&field("name"), format!("`{name}` is listed twice")));
            }
            let mgmt = s.mgmt.ok_or_else(|| ctx.invalid(&field("mgmt"), "required"))?;
            let uri: hyper::Uri =
                mgmt.parse().map_err(|_| ctx.invalid(&field("mgmt"), format!("`{mgmt}` is not a URL")))?;
            if uri.scheme_str() != Some("https") || uri.host().is_none() || !matches!(uri.path(), "" | "/") {
                return Err(ctx
                    .invalid(&field("mgmt"), format!("`{mgmt}` must be https://host:port (its mTLS /mgmt listener)")));
            }
            let id = s.spiffe_id.ok_or_else(|| ctx.invalid(&field("spiffe_id"), "required: its SVID is checked"))?;
            let spiffe_id = id.parse().map_err(|e| ctx.invalid(&field("spiffe_id"), format!("`{id}`: {e}")))?;
            sidecars.push(SidecarEntry { name, mgmt: mgmt.trim_end_matches('/').to_owned(), spiffe_id });
        }
        Ok(Self {
            path: path.into(),
            listen,
            url: raw.url.map(|u| u.trim_end_matches('/').to_owned()),
            identity: ctx.identity(raw.identity)?,
            oidc: OidcSettings {
                issuer: issuer.trim_end_matches('/').to_owned(),
                client_id,
                roles_claim: oidc.roles_claim.unwrap_or_else(|| "roles".into()),
                admin: oidc.admin,
                viewer: oidc.viewer,
            },
            session_ttl: ctx.duration("session_ttl", raw.session_ttl.as_deref(), Duration::from_secs(8 * 3600))?,
            fleet,
            sidecars,
        })
    }
}
