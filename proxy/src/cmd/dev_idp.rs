//! A dev stand-in for Entra ID's token-validation endpoints: OIDC discovery
//! and a JWKS over HTTP, key rotation and an outage switch at run time, and
//! Entra-shaped v1/v2 access tokens signed by its current key. Its keys live
//! in a directory so `a2a-sidecar dev token` signs what `dev idp` serves.
//!
//! Routes: `GET /{tenant}/v2.0/.well-known/openid-configuration`,
//! `GET /{tenant}/discovery/v2.0/keys`, `POST /{tenant}/oauth2/v2.0/token`
//! (client credentials with a federated client assertion, verified against
//! the trusted assertion keys), the Graph routes
//! `GET /v1.0/identityProtection/riskyServicePrincipals/{id}` and
//! `GET /v1.0/servicePrincipals/{id}`, and admin routes
//! `POST /admin/rotate[?drop_old=true]`, `POST /admin/jwks/{down,up}`,
//! `POST /admin/graph/{ok,down,throttled,slow}`,
//! `PUT|DELETE /admin/graph/risk/{oid}` (`{"riskLevel","riskState"}`),
//! `PUT /admin/graph/attributes/{oid}` (`{"set","attribute","value"}`),
//! `PUT /admin/apps/{client_id}` (`{"oid","roles"}`), `POST /admin/trust`
//! (a JWKS whose keys may sign client assertions), `POST /admin/trust-issuer`
//! (an issuer URL: its OIDC discovery names the JWKS, refetched when an
//! assertion names an unknown key, e.g. SPIRE's OIDC discovery provider),
//! `GET /admin/stats`. For the operator console's sign-in: the authorization
//! code flow with PKCE for two dev users ([`signin`]).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use certs::dev::{DevError, JwtKey};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};

use crate::dataplane::body::Body;
use crate::facts::http::form_decode;
use serde_json::{Value, json};

pub mod issuer;
pub mod signin;

const KEY_FILE: &str = "idp_key.pem";
const URL_FILE: &str = "idp_url";

/// What to put in a token.
#[derive(Debug, Clone)]
pub struct TokenSpec {
    pub tenant: String,
    pub audiences: Vec<String>,
    /// `azp` (v2) or `appid` (v1).
    pub client_id: String,
    /// The service principal object ID.
    pub oid: String,
    pub roles: Vec<String>,
    pub ttl: Duration,
    pub v1: bool,
    /// RFC 8705: binds the token to the certificate with this `x5t#S256`.
    pub cnf_x5t: Option<String>,
}

/// How the Graph emulator behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GraphMode {
    Ok,
    /// 503 for every Graph call.
    Down,
    /// 429 with `Retry-After: 1`.
    Throttled,
    /// Answers after 3 s.
    Slow,
}

/// An app registration: who its tokens say the caller is.
#[derive(Debug, Clone)]
pub struct AppRegistration {
    pub oid: String,
    pub roles: Vec<String>,
}

#[derive(Default)]
struct GraphState {
    /// By service principal object ID: (`riskLevel`, `riskState`).
    risk: std::collections::HashMap<String, (String, String)>,
    /// By object ID: `customSecurityAttributes`.
    attributes: std::collections::HashMap<String, Value>,
}

pub struct DevIdp {
    dir: PathBuf,
    apps: RwLock<std::collections::HashMap<String, AppRegistration>>,
    assertion_keys: RwLock<policy::jwt::KeySet>,
    /// Issuers whose keys (OIDC discovery, then its JWKS) sign trusted client
    /// assertions, as an Entra federated credential names one: fetched when
    /// an assertion names a key not seen yet, so a rotated key is followed.
    assertion_issuers: RwLock<Vec<Arc<crate::facts::jwks::Jwks>>>,
    /// The key ID of every client assertion accepted, in order.
    accepted_kids: RwLock<Vec<String>>,
    /// Authorization codes of console sign-ins.
    codes: signin::Codes,
    graph: RwLock<GraphState>,
    graph_mode: RwLock<GraphMode>,
    graph_requests: AtomicU64,
    /// Published keys; the last one signs.
    keys: RwLock<Vec<Arc<JwtKey>>>,
    base_url: RwLock<String>,
    jwks_down: AtomicBool,
    jwks_fetches: AtomicU64,
    /// While true, JWKS requests are counted, then wait (tests of concurrent fetches).
    jwks_held: tokio::sync::watch::Sender<bool>,
    /// The token endpoint's `expires_in` (tests set hostile values).
    expires_in: RwLock<Value>,
    /// Token requests for these scopes wait until released (tests of slow exchanges).
    held_scopes: RwLock<std::collections::HashSet<String>>,
    released: tokio::sync::Notify,
    /// Token requests waiting in a held scope now.
    waiting: AtomicU64,
    /// What discovery says `jwks_uri` is, instead of this IdP's own.
    jwks_uri: RwLock<Option<String>>,
}

impl DevIdp {
    /// Loads the signing key from `dir`, creating one on first use.
    pub fn open(dir: &Path) -> Result<Arc<Self>, DevError> {
        let io = |source| DevError::Io { path: dir.into(), source };
        std::fs::create_dir_all(dir).map_err(io)?;
        let path = dir.join(KEY_FILE);
        let key = match std::fs::read_to_string(&path) {
            Ok(pem) => JwtKey::from_pem(pem)?,
            Err(_) => {
                let key = JwtKey::generate()?;
                write_secret(&path, key.pem())?;
                key
            }
        };
        let base_url =
            std::fs::read_to_string(dir.join(URL_FILE)).unwrap_or_else(|_| "https://login.microsoftonline.com".into());
        Ok(Arc::new(Self {
            dir: dir.into(),
            apps: RwLock::default(),
            assertion_keys: RwLock::default(),
            assertion_issuers: RwLock::default(),
            accepted_kids: RwLock::default(),
            codes: signin::Codes::default(),
            graph: RwLock::default(),
            graph_mode: RwLock::new(GraphMode::Ok),
            graph_requests: AtomicU64::new(0),
            keys: RwLock::new(vec![Arc::new(key)]),
            base_url: RwLock::new(base_url.trim().to_owned()),
            jwks_down: AtomicBool::new(false),
            jwks_fetches: AtomicU64::new(0),
            jwks_held: tokio::sync::watch::Sender::new(false),
            expires_in: RwLock::new(json!(3600)),
            held_scopes: RwLock::default(),
            released: tokio::sync::Notify::new(),
            waiting: AtomicU64::new(0),
            jwks_uri: RwLock::new(None),
        }))
    }

    /// The authority tokens are issued under (`http://127.0.0.1:PORT` once serving).
    pub fn authority(&self) -> String {
        self.base_url.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// The signing key (`open` and `rotate` always leave one).
    pub fn current_key(&self) -> Option<Arc<JwtKey>> {
        self.keys.read().unwrap_or_else(PoisonError::into_inner).last().cloned()
    }

    /// A new signing key; the old one stays published unless `drop_old`.
    pub fn rotate(&self, drop_old: bool) -> Result<String, DevError> {
        let key = JwtKey::generate()?;
        write_secret(&self.dir.join(KEY_FILE), key.pem())?;
        let kid = key.kid().to_owned();
        let mut keys = self.keys.write().unwrap_or_else(PoisonError::into_inner);
        if drop_old {
            keys.clear();
        }
        keys.push(Arc::new(key));
        Ok(kid)
    }

    /// Registers an app: tokens issued to `client_id` carry `oid` and `roles`.
    pub fn register_app(&self, client_id: &str, registration: AppRegistration) {
        self.apps.write().unwrap_or_else(PoisonError::into_inner).insert(client_id.to_owned(), registration);
    }

    /// Trusts client assertions signed by these keys: a JWKS document (the
    /// dev CA's JWT bundle, a Kubernetes issuer's keys) or a SPIFFE bundle
    /// (SPIRE's `bundle show -format spiffe`), of which only the JWT-SVID
    /// keys (`"use": "jwt-svid"`) count.
    pub fn trust_assertion_keys(&self, jwks: &[u8]) -> Result<(), String> {
        let mut doc: Value = serde_json::from_slice(jwks).map_err(|e| format!("not a JWKS document: {e}"))?;
        if let Some(keys) = doc.get_mut("keys").and_then(Value::as_array_mut) {
            keys.retain(|k| k.get("use").and_then(Value::as_str) != Some("x509-svid"));
            for key in keys.iter_mut().filter(|k| k.get("use").and_then(Value::as_str) == Some("jwt-svid")) {
                key["use"] = json!("sig");
            }
        }
        let keys = policy::jwt::KeySet::from_jwks(doc.to_string().as_bytes())?;
        self.assertion_keys.write().unwrap_or_else(PoisonError::into_inner).extend(keys);
        Ok(())
    }

    /// Trusts client assertions signed by the keys `issuer` publishes (its
    /// `/.well-known/openid-configuration` names its JWKS), refetched when an
    /// assertion names an unknown key: SPIRE's OIDC discovery provider in
    /// front of a trust domain whose JWT keys rotate.
    pub fn trust_assertion_issuer(&self, issuer: &str) -> Result<(), String> {
        let settings = crate::facts::jwks::JwksSettings {
            name: Arc::from(issuer),
            at: crate::facts::jwks::KeysAt::Discovery {
                url: format!("{}/.well-known/openid-configuration", issuer.trim_end_matches('/')),
                issuer: None,
            },
            refresh: Duration::from_secs(300),
            refetch_interval: Duration::from_secs(1),
        };
        let client = crate::facts::http::HttpClient::new().map_err(|e| e.to_string())?;
        let metrics = Arc::new(crate::observe::metrics::Metrics::new().map_err(|e| e.to_string())?);
        let jwks = crate::facts::jwks::Jwks::new(settings, client, metrics);
        self.assertion_issuers.write().unwrap_or_else(PoisonError::into_inner).push(jwks);
        Ok(())
    }

    /// The key ID of each client assertion accepted so far, in order.
    pub fn accepted_assertion_kids(&self) -> Vec<String> {
        self.accepted_kids.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Sets what Graph says of a service principal's risk (`None` = 404).
    pub fn set_graph_risk(&self, oid: &str, risk: Option<(&str, &str)>) {
        let mut graph = self.graph.write().unwrap_or_else(PoisonError::into_inner);
        match risk {
            Some((level, state)) => graph.risk.insert(oid.to_owned(), (level.to_owned(), state.to_owned())),
            None => graph.risk.remove(oid),
        };
    }

    /// What Graph says of a service principal's risk: (`riskLevel`, `riskState`), or `None` (404).
    pub fn graph_risk(&self, oid: &str) -> Option<(String, String)> {
        self.graph.read().unwrap_or_else(PoisonError::into_inner).risk.get(oid).cloned()
    }

    /// A service principal's custom security attribute, if it has one.
    pub fn graph_attribute(&self, oid: &str, set: &str, attribute: &str) -> Option<String> {
        let graph = self.graph.read().unwrap_or_else(PoisonError::into_inner);
        graph.attributes.get(oid)?.get(set)?.get(attribute)?.as_str().map(str::to_owned)
    }

    /// The signing keys as the tenant's JWKS document serves them.
    pub fn jwks(&self) -> Value {
        let keys = self.keys.read().unwrap_or_else(PoisonError::into_inner).clone();
        let jwks: Vec<Value> = keys.iter().filter_map(|k| serde_json::to_value(k.jwk().ok()?).ok()).collect();
        json!({ "keys": jwks })
    }

    /// Sets a service principal's custom security attribute.
    pub fn set_graph_attribute(&self, oid: &str, set: &str, attribute: &str, value: &str) {
        let mut graph = self.graph.write().unwrap_or_else(PoisonError::into_inner);
        let attrs = graph.attributes.entry(oid.to_owned()).or_insert_with(|| json!({}));
        if let Some(map) = attrs.as_object_mut() {
            let entry = map
                .entry(set.to_owned())
                .or_insert_with(|| json!({"@odata.type": "#microsoft.graph.customSecurityAttributeValue"}));
            if let Some(set) = entry.as_object_mut() {
                set.insert(attribute.to_owned(), json!(value));
            }
        }
    }

    pub fn set_graph_mode(&self, mode: GraphMode) {
        *self.graph_mode.write().unwrap_or_else(PoisonError::into_inner) = mode;
    }

    /// How many Graph calls arrived.
    pub fn graph_requests(&self) -> u64 {
        self.graph_requests.load(Ordering::SeqCst)
    }

    /// While down, discovery and the JWKS answer 503.
    pub fn set_jwks_down(&self, down: bool) {
        self.jwks_down.store(down, Ordering::SeqCst);
    }

    /// While held, each JWKS request is counted, then waits for the release.
    pub fn hold_jwks(&self, held: bool) {
        self.jwks_held.send_replace(held);
    }

    /// How many times the JWKS was asked for (served, or held).
    pub fn jwks_fetches(&self) -> u64 {
        self.jwks_fetches.load(Ordering::SeqCst)
    }

    /// What the token endpoint answers as `expires_in` (a number, a string, anything).
    pub fn set_token_expires_in(&self, value: Value) {
        *self.expires_in.write().unwrap_or_else(PoisonError::into_inner) = value;
    }

    /// Holds (or releases) token requests for `scope` until released.
    pub fn hold_scope(&self, scope: &str, held: bool) {
        let mut scopes = self.held_scopes.write().unwrap_or_else(PoisonError::into_inner);
        if held {
            scopes.insert(scope.to_owned());
        } else {
            scopes.remove(scope);
            self.released.notify_waiters();
        }
    }

    /// Makes discovery point `jwks_uri` at `uri` (`None`: this IdP's own keys).
    pub fn set_jwks_uri(&self, uri: Option<String>) {
        *self.jwks_uri.write().unwrap_or_else(PoisonError::into_inner) = uri;
    }

    /// How many token requests wait in a held scope now.
    pub fn held_requests(&self) -> u64 {
        self.waiting.load(Ordering::SeqCst)
    }

    /// Waits while token requests for `scope` are held.
    async fn wait_unless_held(&self, scope: &str) {
        let mut counted = false;
        loop {
            let released = self.released.notified();
            if !self.held_scopes.read().unwrap_or_else(PoisonError::into_inner).contains(scope) {
                break;
            }
            if !counted {
                self.waiting.fetch_add(1, Ordering::SeqCst);
                counted = true;
            }
            released.await;
        }
        if counted {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// The claims of an Entra access token per `spec` (v1 or v2 shape).
    pub fn claims(&self, spec: &TokenSpec) -> Value {
        let now = policy::jwt::unix_now();
        let aud = match spec.audiences.as_slice() {
            [one] => json!(one),
            many => json!(many),
        };
        let mut claims = json!({
            "aud": aud,
            "iat": now,
            "nbf": now,
            "exp": now + spec.ttl.as_secs(),
            "tid": spec.tenant,
            "oid": spec.oid,
            "sub": spec.oid,
            "roles": spec.roles,
        });
        if let Some(map) = claims.as_object_mut() {
            if let Some(x5t) = &spec.cnf_x5t {
                map.insert("cnf".into(), json!({ "x5t#S256": x5t }));
            }
            if spec.v1 {
                map.insert("iss".into(), json!(format!("https://sts.windows.net/{}/", spec.tenant)));
                map.insert("appid".into(), json!(spec.client_id));
                map.insert("ver".into(), json!("1.0"));
            } else {
                map.insert("iss".into(), json!(format!("{}/{}/v2.0", self.authority(), spec.tenant)));
                map.insert("azp".into(), json!(spec.client_id));
                map.insert("ver".into(), json!("2.0"));
            }
        }
        claims
    }

    /// A signed token per `spec`.
    pub fn token(&self, spec: &TokenSpec) -> Result<String, DevError> {
        self.current_key().ok_or_else(|| DevError::Serve("no signing key".into()))?.sign(&self.claims(spec))
    }

    /// Records where it serves (tokens' issuer, and the directory for `dev token`).
    pub fn set_address(&self, addr: SocketAddr) -> Result<(), DevError> {
        self.set_url(&format!("http://{addr}"))
    }

    /// Records the base URL clients reach it at (when that is not its listen address).
    pub fn set_url(&self, url: &str) -> Result<(), DevError> {
        std::fs::write(self.dir.join(URL_FILE), url)
            .map_err(|source| DevError::Io { path: self.dir.clone(), source })?;
        *self.base_url.write().unwrap_or_else(PoisonError::into_inner) = url.to_owned();
        Ok(())
    }

    /// Serves on `listener` until the task is dropped.
    pub async fn serve(self: Arc<Self>, listener: tokio::net::TcpListener) {
        serve_dev(listener, "dev idp", move |req| self.clone().handle(req)).await;
    }

    async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<Body> {
        let path = req.uri().path().to_owned();
        if path.starts_with("/v1.0/") {
            return self.graph(&req, &path).await;
        }
        if path.starts_with("/admin/") && matches!(*req.method(), Method::PUT | Method::DELETE)
            || path == "/admin/trust"
        {
            let method = req.method().clone();
            let body =
                http_body_util::BodyExt::collect(req.into_body()).await.map(|b| b.to_bytes()).unwrap_or_default();
            return self.admin_state(&method, &path, &body);
        }
        if req.method() == Method::POST && path.ends_with("/oauth2/v2.0/token") {
            let tenant = path.trim_start_matches('/').split('/').next().unwrap_or_default().to_owned();
            let body =
                http_body_util::BodyExt::collect(req.into_body()).await.map(|b| b.to_bytes()).unwrap_or_default();
            let scope = form_decode(&String::from_utf8_lossy(&body)).remove("scope").unwrap_or_default();
            self.wait_unless_held(&scope).await;
            return self.token_endpoint(&tenant, &body).await;
        }
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let down = self.jwks_down.load(Ordering::SeqCst);
        match (req.method(), segments.as_slice()) {
            (&Method::GET, [tenant, "v2.0", ".well-known", "openid-configuration"]) if !down => {
                let base = self.authority();
                json_response(
                    StatusCode::OK,
                    &json!({
                        "issuer": format!("{base}/{tenant}/v2.0"),
                        "jwks_uri": self.jwks_uri.read().unwrap_or_else(PoisonError::into_inner).clone()
                            .unwrap_or_else(|| format!("{base}/{tenant}/discovery/v2.0/keys")),
                        "token_endpoint": format!("{base}/{tenant}/oauth2/v2.0/token"),
                        "authorization_endpoint": format!("{base}/{tenant}/oauth2/v2.0/authorize"),
                        "code_challenge_methods_supported": ["S256"],
                        "id_token_signing_alg_values_supported": ["RS256"],
                    }),
                )
            }
            (&Method::GET, [_, "discovery", "v2.0", "keys"]) if !down => {
                self.jwks_fetches.fetch_add(1, Ordering::SeqCst);
                let _ = self.jwks_held.subscribe().wait_for(|held| !held).await;
                json_response(StatusCode::OK, &self.jwks())
            }
            (&Method::GET, [_, "v2.0", ".well-known", "openid-configuration"] | [_, "discovery", "v2.0", "keys"]) => {
                json_response(StatusCode::SERVICE_UNAVAILABLE, &json!({"error": "temporarily_unavailable"}))
            }
            (&Method::POST, ["admin", "rotate"]) => {
                let drop_old = req.uri().query().is_some_and(|q| q.contains("drop_old=true"));
                match self.rotate(drop_old) {
                    Ok(kid) => json_response(StatusCode::OK, &json!({ "kid": kid })),
                    Err(e) => json_response(StatusCode::INTERNAL_SERVER_ERROR, &json!({ "error": e.to_string() })),
                }
            }
            (&Method::POST, ["admin", "graph", mode]) => {
                let mode = match *mode {
                    "down" => GraphMode::Down,
                    "throttled" => GraphMode::Throttled,
                    "slow" => GraphMode::Slow,
                    _ => GraphMode::Ok,
                };
                self.set_graph_mode(mode);
                json_response(StatusCode::OK, &json!({ "graph": format!("{mode:?}") }))
            }
            (&Method::POST, ["admin", "jwks", state @ ("down" | "up")]) => {
                self.set_jwks_down(*state == "down");
                json_response(StatusCode::OK, &json!({ "jwks": state }))
            }
            (&Method::GET, [tenant, "oauth2", "v2.0", "authorize"]) => {
                match self.codes.authorize(tenant, req.uri().query().unwrap_or_default()) {
                    signin::Authorize::Choose(page) => {
                        let mut response = Response::new(crate::dataplane::body::full(page));
                        let html = hyper::header::HeaderValue::from_static("text/html; charset=utf-8");
                        response.headers_mut().insert(hyper::header::CONTENT_TYPE, html);
                        response
                    }
                    signin::Authorize::Redirect(location) => {
                        let mut response = Response::new(crate::dataplane::body::full(""));
                        *response.status_mut() = StatusCode::FOUND;
                        if let Ok(location) = hyper::header::HeaderValue::from_str(&location) {
                            response.headers_mut().insert(hyper::header::LOCATION, location);
                        }
                        response
                    }
                    signin::Authorize::Refused(why) => json_response(
                        StatusCode::BAD_REQUEST,
                        &json!({"error": "invalid_request", "error_description": why}),
                    ),
                }
            }
            (&Method::GET, ["admin", "stats"]) => {
                let kid = self.current_key().map(|k| k.kid().to_owned());
                json_response(StatusCode::OK, &json!({ "jwks_fetches": self.jwks_fetches(), "kid": kid }))
            }
            _ => json_response(StatusCode::NOT_FOUND, &json!({"error": "not_found"})),
        }
    }
}

impl DevIdp {
    /// Client credentials with a federated assertion: the assertion must be
    /// an RS256 JWT from a trusted key for `api://AzureADTokenExchange`.
    async fn token_endpoint(&self, tenant: &str, body: &[u8]) -> Response<Body> {
        let form = form_decode(&String::from_utf8_lossy(body));
        let field = |k: &str| form.get(k).map(String::as_str).unwrap_or_default();
        let error = |code: &str| json_response(StatusCode::BAD_REQUEST, &json!({ "error": code }));
        if field("grant_type") == "authorization_code" {
            return self.code_exchange(tenant, &form);
        }
        if field("grant_type") != "client_credentials"
            || field("client_assertion_type") != "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
        {
            return error("unsupported_grant_type");
        }
        if form.contains_key("client_secret") {
            return error("invalid_client");
        }
        if !self.assertion_valid(field("client_assertion")).await {
            return json_response(StatusCode::UNAUTHORIZED, &json!({ "error": "invalid_client" }));
        }
        let Some(app) = self.apps.read().unwrap_or_else(PoisonError::into_inner).get(field("client_id")).cloned()
        else {
            return error("unauthorized_client");
        };
        let audience = field("scope").trim_end_matches("/.default").to_owned();
        let spec = TokenSpec {
            tenant: tenant.to_owned(),
            audiences: vec![audience],
            client_id: field("client_id").to_owned(),
            oid: app.oid,
            roles: app.roles,
            ttl: Duration::from_secs(3600),
            v1: false,
            cnf_x5t: None,
        };
        match self.token(&spec) {
            Ok(token) => json_response(
                StatusCode::OK,
                &json!({
                    "access_token": token,
                    "token_type": "Bearer",
                    "expires_in": self.expires_in.read().unwrap_or_else(PoisonError::into_inner).clone(),
                }),
            ),
            Err(_) => json_response(StatusCode::INTERNAL_SERVER_ERROR, &json!({ "error": "server_error" })),
        }
    }

    /// A console sign-in's code for an ID token (see [`signin`]).
    fn code_exchange(&self, tenant: &str, form: &std::collections::HashMap<String, String>) -> Response<Body> {
        let mut claims = match self.codes.exchange(tenant, form) {
            Ok(claims) => claims,
            Err(code) => return json_response(StatusCode::BAD_REQUEST, &json!({ "error": code })),
        };
        let now = policy::jwt::unix_now();
        if let Some(map) = claims.as_object_mut() {
            map.insert("iss".into(), json!(format!("{}/{tenant}/v2.0", self.authority())));
            map.insert("iat".into(), json!(now));
            map.insert("exp".into(), json!(now + 3600));
        }
        let signed =
            self.current_key().ok_or_else(|| DevError::Serve("no signing key".into())).and_then(|k| k.sign(&claims));
        match signed {
            Ok(id_token) => json_response(
                StatusCode::OK,
                &json!({"id_token": id_token, "token_type": "Bearer", "expires_in": 3600, "scope": "openid"}),
            ),
            Err(_) => json_response(StatusCode::INTERNAL_SERVER_ERROR, &json!({ "error": "server_error" })),
        }
    }

    /// Run-time state for people driving `dev idp` over HTTP.
    fn admin_state(&self, method: &Method, path: &str, body: &[u8]) -> Response<Body> {
        let json: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        let text = |k: &str| json.get(k).and_then(Value::as_str).map(str::to_owned);
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let ok = || json_response(StatusCode::OK, &json!({"ok": true}));
        let bad = |why: &str| json_response(StatusCode::BAD_REQUEST, &json!({"error": why}));
        match (method, segments.as_slice()) {
            (&Method::DELETE, ["admin", "graph", "risk", oid]) => {
                self.set_graph_risk(oid, None);
                ok()
            }
            (&Method::PUT, ["admin", "graph", "risk", oid]) => match (text("riskLevel"), text("riskState")) {
                (Some(level), Some(state)) => {
                    self.set_graph_risk(oid, Some((&level, &state)));
                    ok()
                }
                _ => bad("need riskLevel and riskState"),
            },
            (&Method::PUT, ["admin", "graph", "attributes", oid]) => {
                match (text("set"), text("attribute"), text("value")) {
                    (Some(set), Some(attribute), Some(value)) => {
                        self.set_graph_attribute(oid, &set, &attribute, &value);
                        ok()
                    }
                    _ => bad("need set, attribute and value"),
                }
            }
            (&Method::PUT, ["admin", "apps", client_id]) => {
                let roles = json
                    .get("roles")
                    .and_then(Value::as_array)
                    .map_or_else(Vec::new, |r| r.iter().filter_map(Value::as_str).map(str::to_owned).collect());
                match text("oid") {
                    Some(oid) => {
                        self.register_app(client_id, AppRegistration { oid, roles });
                        ok()
                    }
                    None => bad("need oid"),
                }
            }
            (&Method::POST, ["admin", "trust"]) => match self.trust_assertion_keys(body) {
                Ok(()) => ok(),
                Err(e) => bad(&e),
            },
            (&Method::POST, ["admin", "trust-issuer"]) => {
                match std::str::from_utf8(body)
                    .map_err(|e| e.to_string())
                    .and_then(|i| self.trust_assertion_issuer(i.trim()))
                {
                    Ok(()) => ok(),
                    Err(e) => bad(&e),
                }
            }
            _ => json_response(StatusCode::NOT_FOUND, &json!({"error": "not_found"})),
        }
    }

    /// Signed by a trusted key (pushed, or an issuer's), for Entra's
    /// token-exchange audience, not expired, with a subject.
    async fn assertion_valid(&self, assertion: &str) -> bool {
        let Ok(header) = jsonwebtoken::decode_header(assertion) else { return false };
        let Some(kid) = header.kid else { return false };
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
        validation.set_audience(&["api://AzureADTokenExchange"]);
        validation.set_required_spec_claims(&["exp", "aud", "sub"]);
        let verifies = |key: &jsonwebtoken::DecodingKey| {
            let valid = jsonwebtoken::decode::<Value>(assertion, key, &validation).is_ok();
            if valid {
                self.accepted_kids.write().unwrap_or_else(PoisonError::into_inner).push(kid.clone());
            }
            valid
        };
        if let Some(key) = self.assertion_keys.read().unwrap_or_else(PoisonError::into_inner).get(&kid) {
            return verifies(key);
        }
        let issuers = self.assertion_issuers.read().unwrap_or_else(PoisonError::into_inner).clone();
        for issuer in issuers {
            let keys = match issuer.keys().filter(|k| k.contains(&kid)) {
                Some(keys) => Some(keys),
                None => issuer.refetch_for(&kid).await,
            };
            if let Some(key) = keys.as_ref().and_then(|k| k.get(&kid)) {
                return verifies(key);
            }
        }
        false
    }

    /// The Graph emulator: needs a token this IdP issued for Graph.
    async fn graph(&self, req: &Request<Incoming>, path: &str) -> Response<Body> {
        self.graph_requests.fetch_add(1, Ordering::SeqCst);
        let mode = *self.graph_mode.read().unwrap_or_else(PoisonError::into_inner);
        match mode {
            GraphMode::Down => {
                return json_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &json!({"error": {"code": "serviceUnavailable"}}),
                );
            }
            GraphMode::Throttled => {
                let mut r =
                    json_response(StatusCode::TOO_MANY_REQUESTS, &json!({"error": {"code": "TooManyRequests"}}));
                r.headers_mut().insert(hyper::header::RETRY_AFTER, hyper::header::HeaderValue::from_static("1"));
                return r;
            }
            GraphMode::Slow => tokio::time::sleep(Duration::from_secs(3)).await,
            GraphMode::Ok => {}
        }
        if !self.graph_token_valid(req.headers()) {
            return json_response(StatusCode::UNAUTHORIZED, &json!({"error": {"code": "InvalidAuthenticationToken"}}));
        }
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let graph = self.graph.read().unwrap_or_else(PoisonError::into_inner);
        match segments.as_slice() {
            ["v1.0", "identityProtection", "riskyServicePrincipals", id] => match graph.risk.get(*id) {
                Some((level, state)) => {
                    json_response(StatusCode::OK, &json!({"id": id, "riskLevel": level, "riskState": state}))
                }
                None => json_response(StatusCode::NOT_FOUND, &json!({"error": {"code": "Request_ResourceNotFound"}})),
            },
            ["v1.0", "servicePrincipals", id] => {
                let attrs = graph.attributes.get(*id).cloned().unwrap_or_else(|| json!({}));
                json_response(StatusCode::OK, &json!({"id": id, "customSecurityAttributes": attrs}))
            }
            _ => json_response(StatusCode::NOT_FOUND, &json!({"error": {"code": "BadRequest"}})),
        }
    }

    fn graph_token_valid(&self, headers: &hyper::HeaderMap) -> bool {
        let Some(token) = headers
            .get(hyper::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
        else {
            return false;
        };
        let Ok(header) = jsonwebtoken::decode_header(token) else { return false };
        let keys = self.keys.read().unwrap_or_else(PoisonError::into_inner).clone();
        let Some(key) = keys.iter().find(|k| header.kid.as_deref() == Some(k.kid())) else { return false };
        let Ok(jwk) = key.jwk() else { return false };
        let Ok(decoding) = jsonwebtoken::DecodingKey::from_jwk(&jwk) else { return false };
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
        validation.set_audience(&["https://graph.microsoft.com".to_owned(), self.graph_audience()]);
        jsonwebtoken::decode::<Value>(token, &decoding, &validation).is_ok()
    }

    /// Tokens for the Graph emulator carry its own URL as audience, like
    /// Entra's tokens for `https://graph.microsoft.com/.default`.
    fn graph_audience(&self) -> String {
        self.authority()
    }
}

fn json_response(status: StatusCode, body: &Value) -> Response<Body> {
    let mut response = Response::new(crate::dataplane::body::full(body.to_string()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("application/json"));
    response
}

fn write_secret(path: &Path, contents: &str) -> Result<(), DevError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| DevError::Io { path: path.into(), source };
    let mut file =
        std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path).map_err(io)?;
    file.write_all(contents.as_bytes()).map_err(io)
}

/// Serves a dev emulator's `handle` on `listener` (HTTP/1.1, the local
/// listeners' limits) until the task is dropped.
pub async fn serve_dev<H, F>(listener: tokio::net::TcpListener, name: &'static str, handle: H)
where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: std::future::Future<Output = Response<Body>> + Send + 'static,
{
    use crate::dataplane::server::{Listener, serve_http1};
    let (_never, shutdown) = tokio::sync::watch::channel(false);
    let listener = Listener::new(listener, name, crate::config::LOCAL_MAX_CONNECTIONS, None);
    let limits = crate::config::HttpLimits { idle_timeout: Duration::from_secs(60), ..crate::config::LOCAL_LIMITS };
    serve_http1(listener, limits, shutdown, Duration::from_secs(1), move |req, _| handle(req)).await;
}

/// Starts a dev IdP on 127.0.0.1:0 (tests, the demo).
pub async fn start(dir: &Path) -> anyhow::Result<(Arc<DevIdp>, SocketAddr, tokio::task::JoinHandle<()>)> {
    let idp = DevIdp::open(dir)?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    idp.set_address(addr)?;
    let task = tokio::spawn(idp.clone().serve(listener));
    Ok((idp, addr, task))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trusts_the_jwt_keys_of_a_spiffe_bundle() {
        let dir = tempfile::tempdir().unwrap();
        let idp = DevIdp::open(dir.path()).unwrap();
        let key = JwtKey::generate().unwrap();
        let mut jwk = serde_json::to_value(key.jwk().unwrap()).unwrap();
        jwk["use"] = json!("jwt-svid");
        let x509 = json!({"use": "x509-svid", "kty": "EC", "crv": "P-256", "x": "AA", "y": "AA", "x5c": ["AA"]});
        let bundle = json!({"keys": [x509, jwk], "spiffe_sequence": 1});
        idp.trust_assertion_keys(bundle.to_string().as_bytes()).unwrap();
        let trusted = idp.assertion_keys.read().unwrap();
        assert!(trusted.contains(key.kid()));
        assert_eq!(trusted.len(), 1);
    }
}
