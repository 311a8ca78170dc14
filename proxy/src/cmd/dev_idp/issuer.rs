//! Dev stand-ins for OpenID Connect issuers other than Entra, with the
//! claim shapes of two common ones, so Layer 3's `jwt.issuers[]` is tested
//! against what those IdPs send:
//!
//! - [`Shape::Keycloak`]: issuer `{base}/realms/agents`, keys at
//!   `{issuer}/protocol/openid-connect/certs`, the client in `azp`, roles in
//!   `realm_access.roles`, a space-separated `scope`.
//! - [`Shape::Auth0`]: issuer `{base}/` (with its trailing slash), keys at
//!   `{base}/.well-known/jwks.json`, `sub` = `{client}@clients`, the client
//!   in `azp` and in a namespaced custom claim
//!   `https://a2a.example/agent_id`, roles in `permissions`.
//!
//! Each serves its OIDC discovery document and JWKS; it can rotate its key,
//! go down, and count JWKS fetches.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use certs::dev::{DevError, JwtKey};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use jsonwebtoken::Algorithm;
use serde_json::{Value, json};

use crate::dataplane::body::Body;

/// The namespaced claim the Auth0-shaped issuer names the agent with.
pub const AUTH0_AGENT_CLAIM: &str = "https://a2a.example/agent_id";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    Keycloak,
    Auth0,
}

/// One token to issue.
#[derive(Debug, Clone)]
pub struct IssuerToken<'a> {
    pub audience: &'a str,
    /// The client (agent) the token is for.
    pub agent: &'a str,
    pub roles: &'a [&'a str],
    pub ttl: Duration,
    /// RFC 8705 `cnf.x5t#S256`.
    pub cnf_x5t: Option<&'a str>,
}

pub struct DevIssuer {
    shape: Shape,
    base: String,
    alg: Algorithm,
    /// Published keys; the last one signs.
    keys: RwLock<Vec<Arc<JwtKey>>>,
    down: AtomicBool,
    fetches: AtomicU64,
}

impl DevIssuer {
    /// The `iss` of its tokens.
    pub fn issuer(&self) -> String {
        match self.shape {
            Shape::Keycloak => format!("{}/realms/agents", self.base),
            Shape::Auth0 => format!("{}/", self.base),
        }
    }

    pub fn jwks_uri(&self) -> String {
        match self.shape {
            Shape::Keycloak => format!("{}/protocol/openid-connect/certs", self.issuer()),
            Shape::Auth0 => format!("{}/.well-known/jwks.json", self.base),
        }
    }

    fn discovery_path(&self) -> String {
        match self.shape {
            Shape::Keycloak => "/realms/agents/.well-known/openid-configuration".into(),
            Shape::Auth0 => "/.well-known/openid-configuration".into(),
        }
    }

    /// The key that signs now.
    pub fn key(&self) -> Option<Arc<JwtKey>> {
        self.keys.read().unwrap_or_else(PoisonError::into_inner).last().cloned()
    }

    /// A new signing key, published next to the old ones; returns its `kid`.
    pub fn rotate(&self) -> Result<String, DevError> {
        let key = Arc::new(JwtKey::generate_for(self.alg)?);
        let kid = key.kid().to_owned();
        self.keys.write().unwrap_or_else(PoisonError::into_inner).push(key);
        Ok(kid)
    }

    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    pub fn jwks_fetches(&self) -> u64 {
        self.fetches.load(Ordering::SeqCst)
    }

    /// The claims this IdP's access token for `token` carries.
    pub fn claims(&self, token: &IssuerToken<'_>) -> Value {
        let now = policy::jwt::unix_now();
        let mut claims = match self.shape {
            Shape::Keycloak => json!({
                "iss": self.issuer(), "aud": token.audience, "azp": token.agent, "sub": format!("service-account-{}", token.agent),
                "typ": "Bearer", "scope": "profile email", "realm_access": {"roles": token.roles},
                "preferred_username": format!("service-account-{}", token.agent),
            }),
            Shape::Auth0 => json!({
                "iss": self.issuer(), "aud": [token.audience], "azp": token.agent, "sub": format!("{}@clients", token.agent),
                "gty": "client-credentials", "scope": token.roles.join(" "), "permissions": token.roles,
                AUTH0_AGENT_CLAIM: token.agent,
            }),
        };
        if let Some(map) = claims.as_object_mut() {
            map.insert("iat".into(), json!(now));
            map.insert("nbf".into(), json!(now));
            map.insert("exp".into(), json!(now + token.ttl.as_secs()));
            if let Some(x5t) = token.cnf_x5t {
                map.insert("cnf".into(), json!({ "x5t#S256": x5t }));
            }
        }
        claims
    }

    /// A signed access token.
    pub fn token(&self, token: &IssuerToken<'_>) -> Result<String, DevError> {
        self.key().ok_or_else(|| DevError::Serve("no signing key".into()))?.sign(&self.claims(token))
    }

    /// The JWKS it publishes.
    pub fn jwks(&self) -> Value {
        let keys = self.keys.read().unwrap_or_else(PoisonError::into_inner);
        json!({"keys": keys.iter().filter_map(|k| serde_json::to_value(k.jwk().ok()?).ok()).collect::<Vec<_>>()})
    }

    async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<Body> {
        let path = req.uri().path().to_owned();
        let reply = |status: StatusCode, body: Value| {
            let mut response = Response::new(crate::dataplane::body::full(body.to_string()));
            *response.status_mut() = status;
            response
        };
        if self.down.load(Ordering::SeqCst) {
            return reply(StatusCode::SERVICE_UNAVAILABLE, json!({"error": "down"}));
        }
        if path == self.discovery_path() {
            let issuer = self.issuer();
            return reply(
                StatusCode::OK,
                json!({"issuer": issuer, "jwks_uri": self.jwks_uri(), "token_endpoint": format!("{}/oauth/token", self.base)}),
            );
        }
        if self.jwks_uri().strip_prefix(self.base.as_str()) == Some(path.as_str()) {
            self.fetches.fetch_add(1, Ordering::SeqCst);
            return reply(StatusCode::OK, self.jwks());
        }
        reply(StatusCode::NOT_FOUND, json!({"error": "not_found"}))
    }
}

/// Starts an issuer of `shape` signing with `alg` on 127.0.0.1:0.
pub async fn start(
    shape: Shape,
    alg: Algorithm,
) -> anyhow::Result<(Arc<DevIssuer>, SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let issuer = Arc::new(DevIssuer {
        shape,
        base: format!("http://{addr}"),
        alg,
        keys: RwLock::new(vec![Arc::new(JwtKey::generate_for(alg)?)]),
        down: AtomicBool::new(false),
        fetches: AtomicU64::new(0),
    });
    let served = issuer.clone();
    let task =
        tokio::spawn(crate::cmd::dev_idp::serve_dev(listener, "dev issuer", move |req| served.clone().handle(req)));
    Ok((issuer, addr, task))
}
