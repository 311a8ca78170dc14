//! The `/mgmt` routes and their JSON shapes (the reference prototype's),
//! one module per resource; what they share (the audit record of a
//! mutation, the state file, typed bodies) is here.

use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwapOption;
use certs::{IdentityWatch, SpiffeId};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::state::StateFile;
use super::{Caller, Reject, json_response, read_body};
use crate::admin::reload::{ReloadError, Reloader};
use crate::dataplane::body::Body;
use crate::layers::allowlist::AllowList;
use crate::layers::governance::Governor;
use crate::layers::oauth::Oauth;
use crate::layers::rbac::PolicyStore;
use crate::observe::audit::{AuditHub, AuditReason, Decision, Direction, Event};
use crate::observe::metrics::Metrics;

mod audit;
mod explain;
mod governance;
mod health;
mod mtls;
mod oauth;
mod policy;
mod risk;
mod tags;

/// JSON bodies (`PUT` of the allow-list, risk, tags) are at most this large.
const MAX_JSON_BYTES: usize = 64 * 1024;

/// What the routes read and change.
pub struct Context {
    pub allowlist: Arc<AllowList>,
    pub governor: Arc<Governor>,
    pub policy: Option<Arc<PolicyStore>>,
    pub oauth: Arc<ArcSwapOption<Oauth>>,
    /// The external AuthZEN PDP (`authzen.pdp`).
    pub pdp: Arc<ArcSwapOption<crate::layers::pdp::Pdp>>,
    pub audit: Arc<AuditHub>,
    pub identity: IdentityWatch,
    pub metrics: Arc<Metrics>,
    pub state: Arc<StateFile>,
    pub reloader: Arc<Reloader>,
    pub started: Instant,
    /// Turns true at shutdown: audit streams end then (a stream never
    /// ends by itself, and would hold the drain to its timeout).
    pub shutdown: tokio::sync::watch::Receiver<bool>,
    /// Set at SIGTERM (`runtime.shutdown_delay`): unhealthy from then on.
    pub terminating: Arc<std::sync::atomic::AtomicBool>,
    /// `GET /mgmt/explain` calls allowed (Layer 4 may ask Graph).
    pub explain_budget: Arc<crate::dataplane::server::TokenBucket>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Health,
    Explain,
    Policy,
    MtlsPolicy,
    AgentRisk,
    AgentTags,
    OauthStatus,
    CaPolicyEffective,
    Metrics,
    Audit,
    AuditStream,
    Reload,
}

impl Route {
    pub fn find(path: &str) -> Option<Self> {
        Some(match path.trim_end_matches('/') {
            "/mgmt/health" => Self::Health,
            "/mgmt/policy" => Self::Policy,
            "/mgmt/mtls-policy" => Self::MtlsPolicy,
            "/mgmt/agent-risk" => Self::AgentRisk,
            "/mgmt/agent-tags" => Self::AgentTags,
            "/mgmt/oauth-status" => Self::OauthStatus,
            "/mgmt/ca-policy-effective" => Self::CaPolicyEffective,
            "/mgmt/metrics" => Self::Metrics,
            "/mgmt/audit" => Self::Audit,
            "/mgmt/audit/stream" => Self::AuditStream,
            "/mgmt/reload" => Self::Reload,
            "/mgmt/explain" => Self::Explain,
            _ => return None,
        })
    }

    pub fn methods(self) -> &'static [Method] {
        match self {
            Self::Policy | Self::MtlsPolicy | Self::AgentRisk | Self::AgentTags => &[Method::GET, Method::PUT],
            Self::Reload => &[Method::POST],
            _ => &[Method::GET],
        }
    }

    /// `health` needs no key.
    pub fn open(self) -> bool {
        self == Self::Health
    }
}

/// `connection` closes the caller's connection (for a stalled audit stream).
pub async fn dispatch(
    ctx: &Context,
    route: Route,
    req: Request<Incoming>,
    caller: Option<Caller>,
    connection: tokio_util::sync::CancellationToken,
) -> Response<Body> {
    let actor = caller.map(|c| c.name).unwrap_or_default();
    let put = req.method() == Method::PUT;
    match route {
        Route::Health => health::health(ctx),
        Route::Policy if put => policy::put(ctx, req, &actor).await.unwrap_or_else(Reject::into_response),
        Route::Policy => policy::get(ctx),
        Route::MtlsPolicy if put => mtls::put(ctx, req, &actor).await.unwrap_or_else(Reject::into_response),
        Route::MtlsPolicy => mtls::get(ctx),
        Route::AgentRisk if put => risk::put(ctx, req, &actor).await.unwrap_or_else(Reject::into_response),
        Route::AgentRisk => match query_param(&req, "spiffe_id") {
            Some(id) => risk::one(ctx, &id).unwrap_or_else(Reject::into_response),
            None => json_response(StatusCode::OK, &risk::all(ctx)),
        },
        Route::AgentTags if put => tags::put(ctx, req, &actor).await.unwrap_or_else(Reject::into_response),
        Route::AgentTags => match query_param(&req, "spiffe_id") {
            Some(id) => tags::one(ctx, &id).unwrap_or_else(Reject::into_response),
            None => json_response(StatusCode::OK, &tags::all(ctx)),
        },
        Route::OauthStatus => oauth::status(ctx),
        Route::CaPolicyEffective => governance::effective(ctx),
        Route::Metrics => json_response(StatusCode::OK, &ctx.audit.counters()),
        Route::Audit => audit::query(ctx, &req).unwrap_or_else(Reject::into_response),
        Route::AuditStream => super::stream::stream(ctx, &req, connection),
        Route::Reload => reload(ctx, &actor).await,
        Route::Explain => explain::explain(ctx, &req).await.unwrap_or_else(Reject::into_response),
    }
}

/// `POST /mgmt/reload`: all of the config file, or nothing. 409 names the
/// fields only a restart can change; 400 says why the file does not load.
async fn reload(ctx: &Context, actor: &str) -> Response<Body> {
    let (status, body) = match ctx.reloader.reload().await {
        Ok(()) => (StatusCode::OK, json!({"status": "reloaded"})),
        Err(e) => {
            let message = e.to_string();
            match e {
                ReloadError::RestartRequired(fields) => {
                    (StatusCode::CONFLICT, json!({"error": "restart_required", "message": message, "fields": fields}))
                }
                ReloadError::Invalid(_) => {
                    (StatusCode::BAD_REQUEST, json!({"error": "reload_failed", "message": message}))
                }
                ReloadError::State(_) => {
                    (StatusCode::INTERNAL_SERVER_ERROR, json!({"error": "state_write_failed", "message": message}))
                }
            }
        }
    };
    if status == StatusCode::OK {
        record(ctx, actor, "POST", "/mgmt/reload", 200);
    } else {
        tracing::warn!(status = status.as_u16(), body = %body, "reload refused; nothing changed");
    }
    json_response(status, &body)
}

/// Every mutation is itself an audit event, naming the key (never the key).
/// An applied admin change: audited, and the most recent change from now on
/// (a config-file edit the watcher has not applied yet no longer overrides it).
fn record(ctx: &Context, actor: &str, method: &str, path: &str, status: u16) {
    ctx.reloader.supersede_config_file();
    ctx.audit.record(Event {
        direction: Direction::Mgmt,
        method: method.parse().ok(),
        path: Some(path.into()),
        decision: Decision::Allow,
        reason: AuditReason::AdminChange,
        status,
        actor: Some(actor.into()),
        ..Event::default()
    });
}

/// With an allow-list or policy override, what the config and policy files
/// held at the time: files edited later, even while the sidecar is down, are
/// the more recent change at the next start.
fn record_files(ctx: &Context, state: &mut super::state::State) {
    (state.config_sha256, state.policy_sha256) =
        super::state::file_fingerprints(&ctx.reloader.config_path, ctx.reloader.applied().policy.as_ref());
}

/// Writes a change to the state file before it takes effect: 500 if it cannot.
fn persist(ctx: &Context, change: &str, apply: impl FnOnce(&mut super::state::State)) -> Result<(), Reject> {
    ctx.state
        .update(change, apply)
        .map_err(|e| Reject::with(StatusCode::INTERNAL_SERVER_ERROR, "state_write_failed", e))
}

/// A push per caller in the state file: set, or removed by `None`.
fn set_or_remove(map: &mut std::collections::BTreeMap<String, String>, id: &SpiffeId, value: Option<&str>) {
    match value {
        Some(value) => map.insert(id.to_string(), value.to_owned()),
        None => map.remove(id.as_str()),
    };
}

/// A `PUT` body of shape `T` (unknown fields refused, naming them), and
/// whether `?force=true` was given. Not JSON: 400 `invalid_json`; JSON of
/// another shape: 400 `invalid_request`.
async fn json_body<T: DeserializeOwned>(req: Request<Incoming>) -> Result<(T, bool), Reject> {
    let force = req.uri().query().is_some_and(|q| q.split('&').any(|p| p == "force=true"));
    let body = read_body(req, MAX_JSON_BYTES)
        .await
        .ok_or_else(|| Reject::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"))?;
    Ok((decode(&body)?, force))
}

fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, Reject> {
    // serde fills a struct from an array by position too (`["spiffe://..",
    // "high"]`); a body is an object with named fields, nothing else.
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    if first.is_some_and(|b| *b != b'{') && serde_json::from_slice::<serde::de::IgnoredAny>(body).is_ok() {
        return Err(Reject::with(StatusCode::BAD_REQUEST, "invalid_request", "the body is a JSON object"));
    }
    serde_json::from_slice(body).map_err(|e| {
        let code = if e.classify() == serde_json::error::Category::Data { "invalid_request" } else { "invalid_json" };
        Reject::with(StatusCode::BAD_REQUEST, code, e.to_string())
    })
}

/// For a field where `null` means something (remove): absent is `None`,
/// `null` is `Some(None)`.
fn present<'de, D: serde::Deserializer<'de>, T: serde::Deserialize<'de>>(d: D) -> Result<Option<Option<T>>, D::Error> {
    <Option<T> as serde::Deserialize>::deserialize(d).map(Some)
}

/// A SPIFFE ID from the admin client: 400 `invalid_spiffe_id` naming it.
fn parse_id(text: &str) -> Result<SpiffeId, Reject> {
    text.parse().map_err(|e| Reject::with(StatusCode::BAD_REQUEST, "invalid_spiffe_id", format!("`{text}`: {e}")))
}

/// Adds the fields of `extra` (an object) to `body` (an object).
fn merge(body: &mut Value, extra: Value) {
    if let (Value::Object(body), Value::Object(extra)) = (body, extra) {
        body.extend(extra);
    }
}

/// The first value of `name` in the query string, percent-decoded.
fn query_param(req: &Request<Incoming>, name: &str) -> Option<String> {
    req.uri()
        .query()?
        .split('&')
        .filter_map(|p| p.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| percent_encoding::percent_decode_str(v).decode_utf8_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Shape {
        name: String,
        #[serde(default, deserialize_with = "present")]
        value: Option<Option<String>>,
    }

    #[test]
    fn bodies_are_typed_and_strict() {
        let err = |body: &str| decode::<Shape>(body.as_bytes()).unwrap_err();
        assert_eq!(err("{").code, "invalid_json");
        assert_eq!(err("[]").code, "invalid_request");
        assert_eq!(err(r#"["a", "x"]"#).code, "invalid_request", "fields by position");
        assert_eq!(err(r#""a""#).code, "invalid_request");
        assert_eq!(err("[").code, "invalid_json");
        assert_eq!(err(r#"{"name": "a", "name": "b"}"#).code, "invalid_request", "a duplicate field");
        let unknown = err(r#"{"name": "a", "nmae": "b"}"#);
        assert_eq!(unknown.code, "invalid_request");
        assert!(unknown.message.as_deref().unwrap().contains("unknown field `nmae`"), "{unknown:?}");
        assert!(err(r#"{"value": "x"}"#).message.unwrap().contains("missing field `name`"));
        let shape = |body: &str| {
            let shape = decode::<Shape>(body.as_bytes()).unwrap();
            assert_eq!(shape.name, "a");
            shape.value
        };
        assert_eq!(shape(r#"{"name": "a"}"#), None, "absent");
        assert_eq!(shape(r#"{"name": "a", "value": null}"#), Some(None), "null");
        assert_eq!(shape(r#"{"name": "a", "value": "v"}"#), Some(Some("v".into())));
    }
}
