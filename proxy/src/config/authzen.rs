//! `authzen`: the sidecar as an AuthZEN PEP (`authzen.pdp`, an external
//! decision after Layers 2-4) and as a PDP (`authzen.listen`).

use std::net::SocketAddr;
use std::time::Duration;

use super::{Ctx, Error, MgmtSection, identity_endpoint, raw};

/// The largest `authzen.pdp.cache_size` accepted.
const MAX_CACHE_SIZE: u64 = 10_000_000;

/// `authzen`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AuthzenSection {
    /// `authzen.pdp`: ask this PDP after Layers 2-4 allow.
    pub pdp: Option<PdpConfig>,
    /// `authzen.listen`: answer AuthZEN evaluations here (needs `mgmt`).
    pub listen: Option<SocketAddr>,
}

/// Which rules send the request to the PDP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PdpRules {
    All,
    /// Only rules with `ask_pdp: true`.
    Marked,
}

/// `authzen.pdp`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PdpConfig {
    /// The evaluation endpoint, e.g. `https://pdp.example/access/v1/evaluation`.
    pub url: String,
    pub timeout: Duration,
    /// Allow decisions are kept this long; zero: no cache.
    pub cache_ttl: Duration,
    pub cache_size: u64,
    pub fail_open: bool,
    pub rules: PdpRules,
    /// mTLS to the PDP with our SVID, its SPIFFE ID matching this.
    pub server_id: Option<certs::IdPattern>,
    /// The bearer token (`key_env`'s value).
    pub bearer: Option<BearerKey>,
    /// `entra_token.scope`: a bearer token the sidecar obtains by federation.
    pub entra_scope: Option<String>,
}

/// A bearer token read from the environment: `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct BearerKey {
    /// The variable's name (`authzen.pdp.key_env`), for logs.
    pub env: String,
    pub value: String,
}

impl std::fmt::Debug for BearerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BearerKey").field("env", &self.env).finish_non_exhaustive()
    }
}

impl Ctx<'_> {
    pub(super) fn authzen(
        &self,
        raw: Option<raw::RawAuthzen>,
        mgmt: Option<&MgmtSection>,
        has_policy: bool,
    ) -> Result<AuthzenSection, Error> {
        let Some(raw) = raw else { return Ok(AuthzenSection::default()) };
        let listen = match raw.listen.as_deref() {
            None => None,
            Some(text) => {
                let addr: SocketAddr = text.parse().map_err(|_| {
                    self.invalid("authzen.listen", format!("`{text}` is not an address like 127.0.0.1:9444"))
                })?;
                let Some(mgmt) = mgmt else {
                    return Err(self.invalid(
                        "authzen.listen",
                        "needs the `mgmt` section: its keys (and `mgmt.tls` off loopback) protect the PDP",
                    ));
                };
                if !has_policy {
                    return Err(
                        self.invalid("authzen.listen", "needs the `policy` section: it answers from the policy")
                    );
                }
                if !addr.ip().is_loopback() && mgmt.tls_callers.is_none() {
                    return Err(self.invalid(
                        "authzen.listen",
                        format!("`{addr}` is not loopback: set `mgmt.tls.allowed_callers` so callers need an SVID"),
                    ));
                }
                Some(addr)
            }
        };
        let pdp = raw.pdp.map(|p| self.pdp(p)).transpose()?;
        Ok(AuthzenSection { pdp, listen })
    }

    fn pdp(&self, raw: raw::RawPdp) -> Result<PdpConfig, Error> {
        let url = raw.url.ok_or_else(|| self.invalid("authzen.pdp.url", "required (the evaluation endpoint)"))?;
        identity_endpoint(&url).map_err(|why| self.invalid("authzen.pdp.url", why))?;
        let uri: hyper::Uri = url.parse().map_err(|_| self.invalid("authzen.pdp.url", "not a URL"))?;
        if uri.query().is_some() || uri.authority().is_some_and(|a| a.as_str().contains('@')) {
            return Err(self.invalid("authzen.pdp.url", "no user info and no query: use `key_env` for a credential"));
        }
        let timeout =
            self.positive_duration("authzen.pdp.timeout", raw.timeout.as_deref(), Duration::from_millis(250))?;
        let cache_ttl = self.duration("authzen.pdp.cache_ttl", raw.cache_ttl.as_deref(), Duration::from_secs(30))?;
        let cache_size = raw.cache_size.unwrap_or(10_000);
        if cache_size == 0 || cache_size > MAX_CACHE_SIZE {
            return Err(self.invalid("authzen.pdp.cache_size", format!("must be 1 to {MAX_CACHE_SIZE}")));
        }
        let rules = match raw.rules.as_deref().unwrap_or("all") {
            "all" => PdpRules::All,
            "marked" => PdpRules::Marked,
            other => return Err(self.invalid("authzen.pdp.rules", format!("`{other}` is not one of all, marked"))),
        };
        let server_id = match raw.server_id {
            Some(p) => Some(p.parse().map_err(|e| self.invalid("authzen.pdp.server_id", format!("`{p}`: {e}")))?),
            None => None,
        };
        let bearer = match raw.key_env {
            Some(env) => {
                let value = self
                    .env
                    .get(&env)
                    .ok_or_else(|| self.invalid("authzen.pdp.key_env", format!("`{env}` is not set")))?;
                if !value.bytes().all(|b| b.is_ascii_graphic()) {
                    return Err(self.invalid("authzen.pdp.key_env", format!("`{env}` is not a printable token")));
                }
                Some(BearerKey { env, value })
            }
            None => None,
        };
        let entra_scope = raw.entra_token.map(|t| t.scope);
        if entra_scope.as_ref().is_some_and(|s| s.is_empty() || s.chars().any(char::is_whitespace)) {
            return Err(self.invalid("authzen.pdp.entra_token.scope", "one scope such as `api://pdp/.default`"));
        }
        if entra_scope.is_some() && bearer.is_some() {
            return Err(self.invalid("authzen.pdp.entra_token", "one credential: `key_env` or `entra_token`, not both"));
        }
        if server_id.is_some() && uri.scheme_str() != Some("https") {
            return Err(self.invalid("authzen.pdp.server_id", "needs an https:// `url` (mTLS with our SVID)"));
        }
        Ok(PdpConfig {
            url,
            timeout,
            cache_ttl,
            cache_size,
            fail_open: raw.fail_open.unwrap_or(false),
            rules,
            server_id,
            bearer,
            entra_scope,
        })
    }
}
