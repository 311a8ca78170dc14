//! The `/mgmt` routes and their JSON shapes (the reference prototype's).

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use arc_swap::ArcSwapOption;
use certs::{IdPattern, IdentityWatch, SpiffeId};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};

use super::state::StateFile;
use super::{Caller, MAX_POLICY_BYTES, Reject, error, json_response, read_body};
use crate::admin::reload::{ReloadError, Reloader};
use crate::config::FactSource;
use crate::dataplane::body::Body;
use crate::facts::graph::Freshness;
use crate::layers::allowlist::AllowList;
use crate::layers::governance::Governor;
use crate::layers::oauth::Oauth;
use crate::layers::rbac::PolicyStore;
use crate::observe::audit::{AuditHub, AuditReason, Decision, Direction, Event, rfc3339};
use crate::observe::metrics::Metrics;
use policy::RiskLevel;

/// What the routes read and change.
pub struct Context {
    pub allowlist: Arc<AllowList>,
    pub governor: Arc<Governor>,
    pub policy: Option<Arc<PolicyStore>>,
    pub oauth: Arc<ArcSwapOption<Oauth>>,
    pub audit: Arc<AuditHub>,
    pub identity: IdentityWatch,
    pub metrics: Arc<Metrics>,
    pub state: Arc<StateFile>,
    pub reloader: Arc<Reloader>,
    pub started: Instant,
    /// Turns true at shutdown: audit streams end then (a stream never
    /// ends by itself, and would hold the drain to its timeout).
    pub shutdown: tokio::sync::watch::Receiver<bool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Health,
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
        Route::Health => health(ctx),
        Route::Policy if put => put_policy(ctx, req, &actor).await.unwrap_or_else(Reject::into_response),
        Route::Policy => get_policy(ctx),
        Route::MtlsPolicy if put => put_mtls(ctx, req, &actor).await.unwrap_or_else(Reject::into_response),
        Route::MtlsPolicy => mtls(ctx),
        Route::AgentRisk if put => put_risk(ctx, req, &actor).await.unwrap_or_else(Reject::into_response),
        Route::AgentRisk => match query_param(&req, "spiffe_id") {
            Some(id) => one_risk(ctx, &id).unwrap_or_else(Reject::into_response),
            None => json_response(StatusCode::OK, &risks_json(ctx)),
        },
        Route::AgentTags if put => put_tag(ctx, req, &actor).await.unwrap_or_else(Reject::into_response),
        Route::AgentTags => match query_param(&req, "spiffe_id") {
            Some(id) => one_tag(ctx, &id).unwrap_or_else(Reject::into_response),
            None => json_response(StatusCode::OK, &tags_json(ctx)),
        },
        Route::OauthStatus => oauth_status(ctx),
        Route::CaPolicyEffective => ca_effective(ctx),
        Route::Metrics => json_response(StatusCode::OK, &ctx.audit.counters()),
        Route::Audit => audit(ctx, &req).unwrap_or_else(Reject::into_response),
        Route::AuditStream => super::stream::stream(ctx, &req, connection),
        Route::Reload => reload(ctx, &actor).await,
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
fn record(ctx: &Context, actor: &str, method: &str, path: &str, status: u16) {
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

fn health(ctx: &Context) -> Response<Body> {
    let current = ctx.identity.current();
    let expiry = current.as_ref().map(|i| i.svid().not_after());
    let ttl = expiry.and_then(|e| e.duration_since(SystemTime::now()).ok()).map(|d| d.as_secs());
    let status = ctx.identity.status();
    // The same truth as `/readyz` (a configured policy is always loaded: a bad one refuses to start).
    let not_ready = crate::observe::telemetry::not_ready_reason(&ctx.identity);
    let loaded = ctx.policy.as_ref().map(|p| p.current());
    let graph = ctx.governor.graph_freshness();
    let governance = ctx.governor.settings();
    json_response(
        StatusCode::OK,
        &json!({
            "status": if not_ready.is_none() { "healthy" } else { "unhealthy" },
            "reason": not_ready,
            "policy_version": loaded.as_ref().map(|l| l.label.clone()),
            // Layers 2-4 enforce, or (shadow) only log what they would deny.
            "enforcement_mode": loaded.as_ref().map(|l| l.mode.as_str()),
            "policy_loaded_at": loaded.as_ref().map(|l| rfc3339(l.loaded_at)),
            "uptime_seconds": ctx.started.elapsed().as_secs(),
            "spire_agent_connected": status.connected,
            // Federated bundles left out of the last update (the rest was used).
            "rejected_bundles": status.rejected_bundles.iter()
                .map(|r| json!({"trust_domain": r.trust_domain, "error": r.error}))
                .collect::<Vec<_>>(),
            "svid_expiry": expiry.map(rfc3339),
            "svid_ttl_seconds": ttl,
            "risk_enforcement_control_supported": true,
            "entra_risk_enforcement_supported": governance.risk.source == FactSource::Graph,
            "jwks": ctx.oauth.load_full().map(|o| {
                let s = o.jwks().status();
                json!({"last_refresh": s.last_refresh.map(rfc3339), "last_error": s.last_error})
            }),
            "risk": freshness(governance.risk.source, "mgmt", graph.as_ref().map(|(risk, _)| risk)),
            "tags": freshness(governance.tags.source, "policy", graph.as_ref().map(|(_, tags)| tags)),
        }),
    )
}

/// A fact's source and, from Graph, when it last answered; local facts
/// (pushes, the policy file) are always current.
fn freshness(source: FactSource, local: &str, graph: Option<&Freshness>) -> Value {
    match (source, graph) {
        (FactSource::Graph, Some(f)) => {
            let mut state = graph_state(Some(f));
            merge(&mut state, json!({"source": "graph"}));
            state
        }
        _ => json!({"source": local}),
    }
}

/// When Graph last answered a look-up, how long ago, and the failure since
/// then, if any (all `null` for a local source).
fn graph_state(graph: Option<&Freshness>) -> Value {
    let last_success = graph.and_then(|f| f.last_success);
    json!({
        "last_success": last_success.map(rfc3339),
        "age_seconds": last_success.map(|at| SystemTime::now().duration_since(at).unwrap_or_default().as_secs()),
        "last_error": graph.and_then(|f| f.last_error.as_deref()),
    })
}

fn etag(generation: u64) -> String {
    format!("\"{generation}\"")
}

fn get_policy(ctx: &Context) -> Response<Body> {
    let Some(store) = &ctx.policy else { return error(StatusCode::NOT_FOUND, "no_policy") };
    let loaded = store.current();
    let body = json!({
        "policy": policy_json(loaded.engine.doc()),
        "loaded_at": rfc3339(loaded.loaded_at),
        "generation": loaded.generation,
    });
    let mut response = json_response(StatusCode::OK, &body);
    if let Ok(v) = HeaderValue::from_str(&etag(loaded.generation)) {
        response.headers_mut().insert(header::ETAG, v);
    }
    response
}

/// The effective policy (after environment enrichment) in the reference
/// YAML's own shape and field names, so a client of the reference reads it
/// as it reads the file.
fn policy_json(doc: &policy::reference::PolicyDoc) -> Value {
    let (federated, domestic): (Vec<_>, Vec<_>) = doc.entries.iter().partition(|e| e.federated);
    json!({
        "version": doc.version,
        "trust_domain": doc.trust_domain.as_str(),
        "default_action": action_str(doc.default_action),
        "admin_governance": {
            "enabled": doc.governance.enabled,
            "target_agent_tag": doc.governance.target_agent_tag,
            "risk_enforcement": doc.governance.risk_enforcement,
        },
        "policies": domestic.into_iter().map(entry_json).collect::<Vec<_>>(),
        "federated_policies": federated.into_iter().map(entry_json).collect::<Vec<_>>(),
    })
}

fn entry_json(e: &policy::reference::Entry) -> Value {
    use policy::reference::{Methods, RulePath, Selector};
    let mut entry = serde_json::Map::new();
    entry.insert("name".into(), json!(e.name));
    match &e.selector {
        Selector::Exact(id) => entry.insert("spiffe_id".into(), json!(id.as_str())),
        Selector::Prefix(prefix) => entry.insert("spiffe_id_prefix".into(), json!(prefix)),
    };
    if e.federated {
        entry.insert("trust_domain".into(), json!(e.trust_domain.as_str()));
    }
    if let Some(id) = &e.entra_agent_id {
        entry.insert("entra_agent_id".into(), json!(id));
    }
    if let Some(id) = &e.entra_app_id {
        entry.insert("entra_app_id".into(), json!(id));
    }
    entry.insert("description".into(), json!(e.description));
    entry.insert(
        "ca".into(),
        json!({
            "agent_state": if e.ca.disabled { "disabled" } else { "enabled" },
            "agent_tag": e.ca.agent_tag,
            "skip_target_tag_check": e.ca.skip_target_tag_check,
        }),
    );
    let rules: Vec<Value> = e
        .rules
        .iter()
        .map(|r| {
            json!({
                "path": match &r.path {
                    RulePath::Any => "/*".to_owned(),
                    RulePath::Exact(path) => path.clone(),
                    RulePath::Under(prefix) => format!("{prefix}/*"),
                },
                "methods": match &r.methods {
                    Methods::Any => vec!["*".to_owned()],
                    Methods::Listed(methods) => methods.clone(),
                },
                "action": action_str(r.action),
                "require_jwt": r.require_jwt,
                "required_roles": r.required_roles,
                "required_tags": r.required_tags,
            })
        })
        .collect();
    entry.insert("rules".into(), json!(rules));
    Value::Object(entry)
}

fn action_str(action: policy::reference::Action) -> &'static str {
    match action {
        policy::reference::Action::Allow => "allow",
        policy::reference::Action::Deny => "deny",
    }
}

async fn put_policy(ctx: &Context, req: Request<Incoming>, actor: &str) -> Result<Response<Body>, Reject> {
    let Some(store) = &ctx.policy else {
        return Err(Reject::new(StatusCode::NOT_FOUND, "no_policy"));
    };
    let if_match = req.headers().get(header::IF_MATCH).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let body = read_body(req, MAX_POLICY_BYTES)
        .await
        .ok_or_else(|| Reject::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"))?;
    let yaml = String::from_utf8(body.to_vec())
        .map_err(|_| Reject::with(StatusCode::BAD_REQUEST, "invalid_policy", "the body is not UTF-8"))?;
    let _changing = ctx.reloader.lock().await;
    if let Some(expected) = if_match
        && expected != "*"
        && expected != etag(store.current().generation)
    {
        return Err(Reject::new(StatusCode::PRECONDITION_FAILED, "precondition_failed"));
    }
    let applied = ctx.reloader.applied();
    let Some(config) = applied.policy.clone() else {
        return Err(Reject::new(StatusCode::NOT_FOUND, "no_policy"));
    };
    let built = crate::layers::rbac::build_yaml(
        yaml.clone(),
        "PUT /mgmt/policy",
        config,
        ctx.reloader.env.clone(),
        applied.jwt.clone(),
    )
    .await;
    let engine = built.map_err(|e| {
        store.rejected(&format!("policy:{actor}"), &e);
        Reject::with(StatusCode::BAD_REQUEST, "invalid_policy", e.to_string())
    })?;
    // One look at the files: what the state file records and what the watcher takes as seen.
    let (config_sha256, policy_sha256) =
        super::state::file_fingerprints(&ctx.reloader.config_path, applied.policy.as_ref());
    let seen = policy_sha256.clone();
    persist(ctx, &format!("policy:{actor}"), |s| {
        s.policy_yaml = Some(yaml);
        (s.config_sha256, s.policy_sha256) = (config_sha256, policy_sha256);
    })?;
    let old_version = store.current().engine.doc().version.clone();
    let Some(loaded) = ctx.reloader.install_admin_policy(engine, format!("policy:{actor}"), seen) else {
        return Err(Reject::new(StatusCode::NOT_FOUND, "no_policy"));
    };
    record(ctx, actor, "PUT", "/mgmt/policy", 200);
    let mut response = json_response(
        StatusCode::OK,
        &json!({
            "status": "updated",
            "old_version": old_version,
            "new_version": loaded.engine.doc().version,
            "loaded_at": rfc3339(loaded.loaded_at),
            "generation": loaded.generation,
        }),
    );
    if let Ok(v) = HeaderValue::from_str(&etag(loaded.generation)) {
        response.headers_mut().insert(header::ETAG, v);
    }
    Ok(response)
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

fn mtls(ctx: &Context) -> Response<Body> {
    let ids: Vec<String> = ctx.allowlist.patterns().iter().map(ToString::to_string).collect();
    json_response(StatusCode::OK, &json!({"mode": "allowlist", "count": ids.len(), "allowed_ids": ids}))
}

async fn json_body(req: Request<Incoming>) -> Result<(Value, bool), Reject> {
    let force = req.uri().query().is_some_and(|q| q.split('&').any(|p| p == "force=true"));
    let body = read_body(req, 64 * 1024)
        .await
        .ok_or_else(|| Reject::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"))?;
    let value = serde_json::from_slice(&body)
        .map_err(|e| Reject::with(StatusCode::BAD_REQUEST, "invalid_json", e.to_string()))?;
    Ok((value, force))
}

async fn put_mtls(ctx: &Context, req: Request<Incoming>, actor: &str) -> Result<Response<Body>, Reject> {
    let (body, force) = json_body(req).await?;
    let _changing = ctx.reloader.lock().await;
    let list = body
        .get("allowed_ids")
        .and_then(Value::as_array)
        .ok_or_else(|| Reject::with(StatusCode::BAD_REQUEST, "invalid_request", "`allowed_ids` must be a list"))?;
    let patterns = list
        .iter()
        .map(|item| {
            let text = item.as_str().unwrap_or_default();
            text.parse::<IdPattern>()
                .map_err(|e| Reject::with(StatusCode::BAD_REQUEST, "invalid_spiffe_id", format!("`{text}`: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if patterns.is_empty() && !force {
        return Err(Reject::with(
            StatusCode::BAD_REQUEST,
            "empty_allowlist",
            "an empty list refuses every caller: add ?force=true",
        ));
    }
    let ids: Vec<String> = patterns.iter().map(ToString::to_string).collect();
    let old: Vec<String> = ctx.allowlist.patterns().iter().map(ToString::to_string).collect();
    persist(ctx, &format!("mtls-policy:{actor}"), |s| {
        s.allowed_ids = Some(ids.clone());
        record_files(ctx, s);
    })?;
    ctx.allowlist.replace(patterns);
    record(ctx, actor, "PUT", "/mgmt/mtls-policy", 200);
    // The reference's PUT answer (old/new lists) plus the GET shape.
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "status": "updated",
            "old_allowed_ids": old, "old_count": old.len(),
            "new_allowed_ids": ids, "new_count": ids.len(),
            "mode": "allowlist", "allowed_ids": ids, "count": ids.len(),
        }),
    ))
}

/// The level a caller without a push is reported at (the reference's `default_level`).
const DEFAULT_RISK: &str = "low";

fn risks_json(ctx: &Context) -> Value {
    let risks: serde_json::Map<String, Value> =
        ctx.governor.pushes.risks().into_iter().map(|(k, v)| (k, json!(v.as_str()))).collect();
    json!({"count": risks.len(), "risks": risks, "default_level": DEFAULT_RISK})
}

fn one_risk(ctx: &Context, id: &str) -> Result<Response<Body>, Reject> {
    let id = parse_id(id)?;
    let level = ctx.governor.pushes.risk(&id);
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "spiffe_id": id.as_str(),
            "risk_level": level.map_or(DEFAULT_RISK, RiskLevel::as_str),
            "pushed": level.is_some(),
        }),
    ))
}

/// The `spiffe_id` of a PUT body.
fn caller_id(body: &Value) -> Result<SpiffeId, Reject> {
    parse_id(body.get("spiffe_id").and_then(Value::as_str).unwrap_or_default())
}

/// A SPIFFE ID from the admin client: 400 `invalid_spiffe_id` naming it.
fn parse_id(text: &str) -> Result<SpiffeId, Reject> {
    text.parse().map_err(|e| Reject::with(StatusCode::BAD_REQUEST, "invalid_spiffe_id", format!("`{text}`: {e}")))
}

async fn put_risk(ctx: &Context, req: Request<Incoming>, actor: &str) -> Result<Response<Body>, Reject> {
    let (body, _) = json_body(req).await?;
    let _changing = ctx.reloader.lock().await;
    let id = caller_id(&body)?;
    let level = match body.get("risk_level") {
        Some(Value::Null) => None,
        Some(Value::String(s)) if matches!(s.as_str(), "low" | "medium" | "high") => s.parse::<RiskLevel>().ok(),
        _ => {
            return Err(Reject::with(
                StatusCode::BAD_REQUEST,
                "invalid_risk_level",
                "`risk_level` is low, medium, high or null",
            ));
        }
    };
    persist(ctx, &format!("agent-risk:{actor}"), |s| set_or_remove(&mut s.risks, &id, level.map(RiskLevel::as_str)))?;
    let previous = ctx.governor.pushes.risk(&id);
    ctx.governor.pushes.set_risk(&id, level);
    record(ctx, actor, "PUT", "/mgmt/agent-risk", 200);
    // The reference's PUT answer plus the GET shape.
    let mut body = risks_json(ctx);
    merge(
        &mut body,
        json!({
            "status": "updated",
            "spiffe_id": id.as_str(),
            "risk_level": level.map(RiskLevel::as_str),
            "previous_level": previous.map_or(DEFAULT_RISK, RiskLevel::as_str),
        }),
    );
    Ok(json_response(StatusCode::OK, &body))
}

/// Adds the fields of `extra` (an object) to `body` (an object).
fn merge(body: &mut Value, extra: Value) {
    if let (Value::Object(body), Value::Object(extra)) = (body, extra) {
        body.extend(extra);
    }
}

fn tag_source(ctx: &Context) -> &'static str {
    if ctx.governor.settings().tags.source == FactSource::Graph { "graph" } else { "policy" }
}

fn tags_json(ctx: &Context) -> Value {
    let tags = ctx.governor.pushes.tags();
    json!({"count": tags.len(), "tags": tags, "source": tag_source(ctx)})
}

fn one_tag(ctx: &Context, id: &str) -> Result<Response<Body>, Reject> {
    let id = parse_id(id)?;
    let tag = ctx.governor.pushes.tag(&id);
    Ok(json_response(
        StatusCode::OK,
        &json!({"spiffe_id": id.as_str(), "found": tag.is_some(), "tag": tag.unwrap_or_default(), "source": tag_source(ctx)}),
    ))
}

async fn put_tag(ctx: &Context, req: Request<Incoming>, actor: &str) -> Result<Response<Body>, Reject> {
    let (body, _) = json_body(req).await?;
    let _changing = ctx.reloader.lock().await;
    let id = caller_id(&body)?;
    let tag = match body.get("tag") {
        Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        _ => return Err(Reject::with(StatusCode::BAD_REQUEST, "invalid_tag", "`tag` is a string or null")),
    };
    persist(ctx, &format!("agent-tags:{actor}"), |s| set_or_remove(&mut s.tags, &id, tag.as_deref()))?;
    let previous = ctx.governor.pushes.tag(&id);
    ctx.governor.pushes.set_tag(&id, tag.clone());
    record(ctx, actor, "PUT", "/mgmt/agent-tags", 200);
    // The reference's PUT answer plus the GET shape.
    let mut body = tags_json(ctx);
    merge(
        &mut body,
        json!({
            "status": "updated",
            "spiffe_id": id.as_str(),
            "tag": tag,
            "previous_tag": previous.unwrap_or_default(),
        }),
    );
    Ok(json_response(StatusCode::OK, &body))
}

fn oauth_status(ctx: &Context) -> Response<Body> {
    let oauth = ctx.oauth.load_full();
    let keys = oauth.as_ref().and_then(|o| o.jwks().keys());
    let status = oauth.as_ref().map(|o| o.jwks().status());
    let jwt = ctx.reloader.applied().jwt.clone();
    let audiences = jwt.as_ref().map(|j| j.audiences.clone()).unwrap_or_default();
    json_response(
        StatusCode::OK,
        &json!({
            "config_loaded": oauth.is_some(),
            "jwks_cached": keys.is_some(),
            "last_jwks_refresh": status.as_ref().and_then(|s| s.last_refresh).map(rfc3339),
            "last_error": status.and_then(|s| s.last_error.clone()),
            "key_count": keys.map_or(0, |k| k.len()),
            "tenant_id": jwt.as_ref().map(|j| j.tenant_id.clone()),
            "audience": audiences.first(),
            "audiences": audiences,
        }),
    )
}

fn ca_effective(ctx: &Context) -> Response<Body> {
    let g = ctx.governor.settings();
    let source =
        |s: FactSource, local: &str| if s == FactSource::Graph { "graph".to_owned() } else { local.to_owned() };
    let doc = ctx.policy.as_ref().map(|p| p.current());
    let graph = ctx.governor.graph_freshness();
    let from_graph = |s: FactSource, f: Option<&Freshness>| graph_state(f.filter(|_| s == FactSource::Graph));
    let mut risk = json!({
        "source": source(g.risk.source, "mgmt"),
        "blocked_levels": g.risk.blocked_levels.iter().map(|l| l.as_str()).collect::<Vec<_>>(),
        "on_unavailable": g.risk.on_unavailable.as_str(),
        "pushed": ctx.governor.pushes.risks().len(),
    });
    merge(&mut risk, from_graph(g.risk.source, graph.as_ref().map(|(risk, _)| risk)));
    let mut tags = json!({
        "source": source(g.tags.source, "policy"),
        "on_unavailable": g.tags.on_unavailable.as_str(),
        "pushed": ctx.governor.pushes.tags().len(),
    });
    merge(&mut tags, from_graph(g.tags.source, graph.as_ref().map(|(_, tags)| tags)));
    json_response(
        StatusCode::OK,
        &json!({
            // The reference portal reads these four.
            "source": "ca_policy_cache",
            "enabled": doc.as_ref().is_some_and(|d| d.engine.doc().governance.enabled),
            "ready": doc.is_some(),
            "blocked_risk_levels": g.risk.blocked_levels.iter().map(|l| l.as_str()).collect::<Vec<_>>(),
            "governance_enabled": doc.as_ref().map(|d| d.engine.doc().governance.enabled),
            "target_agent_tag": doc.as_ref().map(|d| d.engine.doc().governance.target_agent_tag.clone()),
            "risk": risk,
            "tags": tags,
            "state_last_change": ctx.state.get().last_change,
            "state_last_change_at": ctx.state.get().last_change_at,
        }),
    )
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

/// `?limit=` (default 100, at most 10 000), `?spiffe_id=`, `?decision=`; a
/// malformed filter is a 400, not a silently different answer.
fn audit(ctx: &Context, req: &Request<Incoming>) -> Result<Response<Body>, Reject> {
    let bad = |message: &str| Reject::with(StatusCode::BAD_REQUEST, "invalid_query", message);
    let limit = match query_param(req, "limit") {
        None => 100,
        Some(l) => l.parse::<usize>().map_err(|_| bad("`limit` is a non-negative integer"))?.min(10_000),
    };
    let decision = match query_param(req, "decision") {
        None => None,
        Some(d) => Some(d.parse::<Decision>().map_err(|()| bad("`decision` is allow, deny or shadow_deny"))?),
    };
    let spiffe_id = query_param(req, "spiffe_id");
    let entries = ctx.audit.recent(limit, spiffe_id.as_deref(), decision);
    Ok(json_response(StatusCode::OK, &json!({"count": entries.len(), "entries": entries})))
}
