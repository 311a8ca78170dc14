//! `GET/PUT /mgmt/policy`: the policy as the reference's JSON, and a new
//! one as YAML (validated, persisted, then installed; `If-Match` honoured).

use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode};
use serde_json::{Value, json};

use super::{Context, persist, record};
use crate::admin::{MAX_POLICY_BYTES, Reject, error, json_response, read_body};
use crate::dataplane::body::Body;
use crate::observe::audit::rfc3339;

fn etag(generation: u64) -> String {
    format!("\"{generation}\"")
}

pub(super) fn get(ctx: &Context) -> Response<Body> {
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
    // Only when set, so policies without them read back as before.
    if let Some(id) = &e.agent_id {
        entry.insert("agent_id".into(), json!(id));
    }
    if !e.issuers.is_empty() {
        entry.insert("issuers".into(), json!(e.issuers));
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
            let mut rule = json!({
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
            });
            // Only when set, so policies without AuthZEN read back as before.
            if let Some(fields) = rule.as_object_mut() {
                if r.ask_pdp {
                    fields.insert("ask_pdp".into(), json!(true));
                }
                if let Some(bound) = r.require_bound_token {
                    fields.insert("require_bound_token".into(), json!(bound));
                }
            }
            rule
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

pub(super) async fn put(ctx: &Context, req: Request<Incoming>, actor: &str) -> Result<Response<Body>, Reject> {
    let Some(store) = &ctx.policy else {
        return Err(Reject::new(StatusCode::NOT_FOUND, "no_policy"));
    };
    let if_match = req.headers().get(header::IF_MATCH).and_then(|v| v.to_str().ok()).map(str::to_owned);
    // `?dry_run=true`: validated exactly as a real PUT (this sidecar's environment
    // and `jwt` settings), then nothing is changed, persisted or audited.
    let dry_run = super::query_param(&req, "dry_run").as_deref() == Some("true");
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
        if !dry_run {
            store.rejected(&format!("policy:{actor}"), &e);
        }
        Reject::with(StatusCode::BAD_REQUEST, "invalid_policy", e.to_string())
    })?;
    if dry_run {
        let doc = engine.doc();
        let rules: usize = doc.entries.iter().map(|e| e.rules.len()).sum();
        let answer = json!({"status": "valid", "version": doc.version, "entries": doc.entries.len(), "rules": rules});
        return Ok(json_response(StatusCode::OK, &answer));
    }
    // One look at the files: what the state file records and what the watcher takes as seen.
    let (config_sha256, policy_sha256) =
        crate::admin::state::file_fingerprints(&ctx.reloader.config_path, applied.policy.as_ref());
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
