//! AuthZEN 1.0 request shapes as the PDP reads them: an evaluation's
//! `subject`/`action`/`resource`/`context`, a batch whose top-level values
//! are the defaults each item of `evaluations` overrides, and
//! `options.evaluations_semantic`. Every refusal names the field.

use std::sync::Arc;

use certs::SpiffeId;
use serde_json::{Map, Value};

/// A batch holds at most this many evaluations.
pub const MAX_EVALUATIONS: usize = 1000;
/// `resource.id`: longer paths are refused (the data plane's request line
/// is bounded the same way).
pub const MAX_RESOURCE_ID: usize = 8 * 1024;
/// `context.claims`: members, `roles` entries, and the length of each string.
pub const MAX_CLAIMS: usize = 64;
pub const MAX_ROLES: usize = 256;
pub const MAX_CLAIM_BYTES: usize = 1024;

/// A malformed request: 400 with `{"error": "invalid_request", "field", "message"}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRequest {
    pub field: String,
    pub message: String,
}

impl BadRequest {
    fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self { field: field.into(), message: message.into() }
    }
}

/// What one evaluation asks, checked: who, which method, which path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    pub caller: SpiffeId,
    pub method: hyper::Method,
    /// `resource.id` as sent, without a query (the data plane judges the path only).
    pub path: String,
    /// `context.claims`: a validated token's claims, issuer-independent
    /// (`iss`, `azp`, `oid`, `roles`, `cnf`, tag claims), for Layer 3;
    /// shared by the items of a batch that inherit them.
    pub claims: Option<Arc<Map<String, Value>>>,
}

/// `options.evaluations_semantic`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Semantic {
    #[default]
    ExecuteAll,
    DenyOnFirstDeny,
    PermitOnFirstPermit,
}

impl Semantic {
    /// Whether the batch stops after an evaluation that decided `decision`.
    pub fn stops_after(self, decision: bool) -> bool {
        match self {
            Self::ExecuteAll => false,
            Self::DenyOnFirstDeny => !decision,
            Self::PermitOnFirstPermit => decision,
        }
    }
}

/// A batch request: each item's query (in order) and the semantic; `None`
/// items list when `evaluations` is absent or empty (a single evaluation then).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    pub queries: Option<Vec<Query>>,
    /// The top-level evaluation, when `evaluations` is absent or empty.
    pub single: Option<Query>,
    pub semantic: Semantic,
}

/// `POST /access/v1/evaluation`.
pub fn single(body: &[u8]) -> Result<Query, BadRequest> {
    let top = object(body)?;
    let claims = context_claims(top.get("context"), "context")?;
    query(&top, claims.as_ref(), None, "")
}

/// `POST /access/v1/evaluations`.
pub fn batch(body: &[u8]) -> Result<Batch, BadRequest> {
    let top = object(body)?;
    let semantic = semantic(&top)?;
    let items = match top.get("evaluations") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items.iter().collect(),
        Some(_) => return Err(BadRequest::new("evaluations", "must be an array")),
    };
    if items.len() > MAX_EVALUATIONS {
        return Err(BadRequest::new(
            "evaluations",
            format!("{} items: at most {MAX_EVALUATIONS} per request", items.len()),
        ));
    }
    // The defaults' claims are read once and shared: 1,000 items inheriting
    // them must not make 1,000 copies.
    let claims = context_claims(top.get("context"), "context")?;
    if items.is_empty() {
        return Ok(Batch { queries: None, single: Some(query(&top, claims.as_ref(), None, "")?), semantic });
    }
    let queries = items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let prefix = format!("evaluations[{i}].");
            let item = item.as_object().ok_or_else(|| BadRequest::new(format!("evaluations[{i}]"), "not an object"))?;
            query(&top, claims.as_ref(), Some(item), &prefix)
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Batch { queries: Some(queries), single: None, semantic })
}

fn object(body: &[u8]) -> Result<Map<String, Value>, BadRequest> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(top)) => Ok(top),
        Ok(_) => Err(BadRequest::new("", "the body must be a JSON object")),
        Err(e) => Err(BadRequest::new("", format!("not JSON: {e}"))),
    }
}

fn semantic(top: &Map<String, Value>) -> Result<Semantic, BadRequest> {
    let Some(options) = top.get("options") else { return Ok(Semantic::default()) };
    let options = options.as_object().ok_or_else(|| BadRequest::new("options", "must be an object"))?;
    match options.get("evaluations_semantic") {
        None => Ok(Semantic::default()),
        Some(Value::String(s)) if s == "execute_all" => Ok(Semantic::ExecuteAll),
        Some(Value::String(s)) if s == "deny_on_first_deny" => Ok(Semantic::DenyOnFirstDeny),
        Some(Value::String(s)) if s == "permit_on_first_permit" => Ok(Semantic::PermitOnFirstPermit),
        Some(_) => Err(BadRequest::new(
            "options.evaluations_semantic",
            "one of execute_all, deny_on_first_deny, permit_on_first_permit",
        )),
    }
}

/// One evaluation: `item`'s values where it has them, else the top level's
/// (`top_claims`: the top level's `context.claims`, already read).
fn query(
    top: &Map<String, Value>,
    top_claims: Option<&Arc<Map<String, Value>>>,
    item: Option<&Map<String, Value>>,
    prefix: &str,
) -> Result<Query, BadRequest> {
    let part = |name: &str| -> Result<(&Map<String, Value>, String), BadRequest> {
        let (value, field) = match item.and_then(|i| i.get(name)) {
            Some(value) => (Some(value), format!("{prefix}{name}")),
            None => (top.get(name), name.to_owned()),
        };
        match value {
            Some(Value::Object(fields)) => Ok((fields, field)),
            Some(_) => Err(BadRequest::new(field, "must be an object")),
            None => Err(BadRequest::new(field, "required")),
        }
    };
    let text = |fields: &Map<String, Value>, field: String, name: &str| -> Result<String, BadRequest> {
        match fields.get(name) {
            Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
            Some(_) => Err(BadRequest::new(format!("{field}.{name}"), "must be a non-empty string")),
            None => Err(BadRequest::new(format!("{field}.{name}"), "required")),
        }
    };
    let (subject, field) = part("subject")?;
    let id = text(subject, field.clone(), "id")?;
    let caller = id.parse().map_err(|e| BadRequest::new(format!("{field}.id"), format!("not a SPIFFE ID: {e}")))?;
    let (action, field) = part("action")?;
    let name = text(action, field.clone(), "name")?;
    let method = hyper::Method::from_bytes(name.as_bytes())
        .map_err(|_| BadRequest::new(format!("{field}.name"), "not an HTTP method"))?;
    let (resource, field) = part("resource")?;
    match resource.get("type") {
        None => {}
        Some(Value::String(t)) if t == "http_path" => {}
        Some(_) => return Err(BadRequest::new(format!("{field}.type"), "must be `http_path`")),
    }
    let id = text(resource, field.clone(), "id")?;
    if id.len() > MAX_RESOURCE_ID {
        return Err(BadRequest::new(format!("{field}.id"), format!("longer than {MAX_RESOURCE_ID} bytes")));
    }
    let path = id.split_once('?').map_or(id.as_str(), |(path, _)| path).to_owned();
    // `context` is optional; when given it must be an object, its `claims` too.
    let claims = match item.and_then(|i| i.get("context")) {
        Some(context) => context_claims(Some(context), &format!("{prefix}context"))?,
        None => top_claims.cloned(),
    };
    Ok(Query { caller, method, path, claims })
}

/// The `claims` of a `context` (named `field`), checked.
fn context_claims(context: Option<&Value>, field: &str) -> Result<Option<Arc<Map<String, Value>>>, BadRequest> {
    match context {
        None => Ok(None),
        Some(Value::Object(context)) => match context.get("claims") {
            None => Ok(None),
            // `{}`: no token, as without `claims`.
            Some(Value::Object(claims)) if claims.is_empty() => Ok(None),
            Some(Value::Object(claims)) => Ok(Some(Arc::new(asserted_claims(claims, &format!("{field}.claims"))?))),
            Some(_) => Err(BadRequest::new(format!("{field}.claims"), "must be an object")),
        },
        Some(_) => Err(BadRequest::new(field, "must be an object")),
    }
}

/// `context.claims`: `iss` a string (it picks the issuer), `azp` and `oid`
/// strings, `roles` an array of strings, `cnf` an object, when present; at
/// most [`MAX_CLAIMS`] claims, [`MAX_ROLES`] roles, strings of at most
/// [`MAX_CLAIM_BYTES`] (a token's claims are far smaller).
fn asserted_claims(claims: &Map<String, Value>, field: &str) -> Result<Map<String, Value>, BadRequest> {
    let named = |name: &str| format!("{field}.{name}");
    if claims.len() > MAX_CLAIMS {
        return Err(BadRequest::new(field, format!("{} claims: at most {MAX_CLAIMS}", claims.len())));
    }
    let too_long = |v: &Value| v.as_str().is_some_and(|s| s.len() > MAX_CLAIM_BYTES);
    for (name, value) in claims {
        let long = match value {
            Value::Array(items) => items.iter().any(too_long),
            Value::Object(fields) => fields.values().any(too_long),
            other => too_long(other),
        };
        if long || name.len() > MAX_CLAIM_BYTES {
            return Err(BadRequest::new(named(name), format!("strings of at most {MAX_CLAIM_BYTES} bytes")));
        }
    }
    if claims.get("roles").and_then(Value::as_array).is_some_and(|r| r.len() > MAX_ROLES) {
        return Err(BadRequest::new(named("roles"), format!("at most {MAX_ROLES} roles")));
    }
    if !claims.get("iss").is_some_and(Value::is_string) {
        return Err(BadRequest::new(named("iss"), "a string is required (it picks the issuer)"));
    }
    for name in ["azp", "oid"] {
        if claims.get(name).is_some_and(|v| !v.is_string()) {
            return Err(BadRequest::new(named(name), "must be a string"));
        }
    }
    let roles_ok = match claims.get("roles") {
        None => true,
        Some(Value::Array(roles)) => roles.iter().all(Value::is_string),
        Some(_) => false,
    };
    if !roles_ok {
        return Err(BadRequest::new(named("roles"), "must be an array of strings"));
    }
    if claims.get("cnf").is_some_and(|v| !v.is_object()) {
        return Err(BadRequest::new(named("cnf"), "must be an object"));
    }
    Ok(claims.clone())
}
