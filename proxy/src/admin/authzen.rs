//! The sidecar as an AuthZEN PDP (Authorization API 1.0) on
//! `authzen.listen`: `POST /access/v1/evaluation`, `POST
//! /access/v1/evaluations` and `GET /.well-known/authzen-configuration`,
//! answered with the data plane's own code (Layer 1's allow-list, the
//! canonical path, [`pipeline::evaluate`]) on the live policy. The listener
//! is protected like `/mgmt` (see [`crate::admin::Mgmt::serve_authzen`]).

use std::sync::Arc;

use arc_swap::ArcSwapOption;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{HeaderMap, Method, Request, Response, StatusCode};
use policy::{Layer, PathOptions, Reason};
use serde_json::{Value, json};

use crate::dataplane::body::Body;
use crate::dataplane::headers::X_REQUEST_ID;
use crate::dataplane::inbound::request_target;
use crate::dataplane::request_id::RequestIds;
use crate::layers::allowlist::AllowList;
use crate::layers::governance::Governor;
use crate::layers::oauth::Oauth;
use crate::layers::pipeline::{self, RequestFacts, Trace};
use crate::layers::rbac::PolicyStore;
use crate::observe::metrics::Metrics;

pub mod model;
#[cfg(test)]
mod tests;

use model::{BadRequest, Query};

/// Request bodies are at most this large (413 beyond).
pub const MAX_BODY_BYTES: usize = 256 * 1024;

/// The routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Evaluation,
    Evaluations,
    Metadata,
}

impl Route {
    pub fn find(path: &str) -> Option<Self> {
        match path {
            "/access/v1/evaluation" => Some(Self::Evaluation),
            "/access/v1/evaluations" => Some(Self::Evaluations),
            "/.well-known/authzen-configuration" => Some(Self::Metadata),
            _ => None,
        }
    }

    pub fn method(self) -> Method {
        match self {
            Self::Evaluation | Self::Evaluations => Method::POST,
            Self::Metadata => Method::GET,
        }
    }

    /// The `Allow` header of a 405.
    pub fn allow(self) -> HeaderValue {
        HeaderValue::from_static(match self {
            Self::Evaluation | Self::Evaluations => "POST",
            Self::Metadata => "GET",
        })
    }
}

/// What the evaluations read: the data plane's own decision state.
pub struct Service {
    pub allowlist: Arc<AllowList>,
    pub policy: Arc<PolicyStore>,
    pub oauth: Arc<ArcSwapOption<Oauth>>,
    pub governor: Arc<Governor>,
    /// `inbound.allow_semicolons` (and the default canonicalisation).
    pub options: PathOptions,
    pub metrics: Arc<Metrics>,
    pub ids: RequestIds,
    /// `http(s)://<authzen.listen>`, for the metadata.
    pub base_url: String,
}

/// One evaluation's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub decision: bool,
    pub reason: Reason,
    pub policy_ids: Arc<[String]>,
    /// A deny that `policy.mode: shadow` lets through (the data plane forwards it).
    pub shadow: Option<Reason>,
}

impl Outcome {
    fn denied(reason: Reason) -> Self {
        Self { decision: false, reason, policy_ids: Arc::default(), shadow: None }
    }

    /// `{"decision", "context": {"layer", "reason", "policy_ids"}}`.
    pub fn to_json(&self) -> Value {
        let layer = if self.decision { Layer::None } else { self.reason.layer() };
        let mut context =
            json!({"layer": layer.as_str(), "reason": self.reason.as_str(), "policy_ids": &*self.policy_ids});
        if let (Some(shadow), Some(fields)) = (self.shadow, context.as_object_mut()) {
            fields.insert("shadow_deny".into(), json!(shadow.as_str()));
        }
        json!({"decision": self.decision, "context": context})
    }
}

impl Service {
    /// One request on an authenticated connection (the route and method already checked).
    pub async fn handle(&self, route: Route, req: Request<Incoming>) -> Response<Body> {
        let request_id = crate::dataplane::forward::peer_request_id(req.headers()).unwrap_or_else(|| self.ids.next());
        let mut response = match route {
            Route::Metadata => self.metadata(),
            Route::Evaluation | Route::Evaluations => self.evaluate(route, req, &request_id).await,
        };
        if let Ok(value) = HeaderValue::from_str(&request_id) {
            response.headers_mut().insert(X_REQUEST_ID, value);
        }
        response
    }

    fn metadata(&self) -> Response<Body> {
        let base = &self.base_url;
        crate::admin::json_response(
            StatusCode::OK,
            &json!({
                "policy_decision_point": base,
                "access_evaluation_endpoint": format!("{base}/access/v1/evaluation"),
                "access_evaluations_endpoint": format!("{base}/access/v1/evaluations"),
            }),
        )
    }

    async fn evaluate(&self, route: Route, req: Request<Incoming>, request_id: &str) -> Response<Body> {
        if let Some(refused) = wrong_content_type(req.headers()) {
            return refused;
        }
        let Some(body) = crate::admin::read_body(req, MAX_BODY_BYTES).await else {
            let message = format!("the body is larger than {MAX_BODY_BYTES} bytes");
            return crate::admin::error_message(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", &message);
        };
        let answer = match route {
            Route::Evaluations => self.batch(&body, request_id).await,
            Route::Evaluation | Route::Metadata => match model::single(&body) {
                Ok(query) => Ok(self.decide(&query).await.to_json()),
                Err(bad) => Err(bad),
            },
        };
        match answer {
            Ok(answer) => crate::admin::json_response(StatusCode::OK, &answer),
            Err(BadRequest { field, message }) => {
                tracing::debug!(request_id, field, message, "authzen: malformed request");
                let value = json!({"error": "invalid_request", "field": field, "message": message});
                crate::admin::json_response(StatusCode::BAD_REQUEST, &value)
            }
        }
    }

    async fn batch(&self, body: &[u8], request_id: &str) -> Result<Value, BadRequest> {
        let batch = model::batch(body)?;
        let Some(queries) = batch.queries else {
            // No `evaluations`: the spec's single evaluation, in the single evaluation's shape.
            let query =
                batch.single.ok_or_else(|| BadRequest { field: "subject".into(), message: "required".into() })?;
            return Ok(self.decide(&query).await.to_json());
        };
        let mut answers = Vec::with_capacity(queries.len());
        for query in &queries {
            let outcome = self.decide(query).await;
            answers.push(outcome.to_json());
            if batch.semantic.stops_after(outcome.decision) {
                break;
            }
        }
        tracing::debug!(request_id, asked = queries.len(), answered = answers.len(), "authzen: batch evaluated");
        Ok(json!({"evaluations": answers}))
    }

    /// The data plane's decision for `query`. Layer 3 judges the claims a
    /// PEP validated (`context.claims`); without them a rule that requires
    /// a token answers `jwt_required`, as the data plane does without one.
    pub async fn decide(&self, query: &Query) -> Outcome {
        let outcome = self.judge(query).await;
        self.metrics.authzen.evaluation(outcome.decision);
        tracing::debug!(
            caller = %query.caller, method = %query.method, path = query.path,
            decision = outcome.decision, reason = %outcome.reason, "authzen: evaluated"
        );
        outcome
    }

    async fn judge(&self, query: &Query) -> Outcome {
        if !self.allowlist.allows(&query.caller) {
            return Outcome::denied(Reason::NotAllowed);
        }
        let path = match request_target(&query.method, &query.path, self.options) {
            Ok(path) => path,
            Err(reason) => return Outcome::denied(reason),
        };
        let loaded = self.policy.current();
        let oauth = self.oauth.load_full();
        let headers = HeaderMap::new();
        let facts = RequestFacts {
            caller: &query.caller,
            method: query.method.as_str(),
            path: &path,
            headers: &headers,
            // No connection: a certificate binding in the claims is not compared.
            leaf_sha256: None,
            asserted: query.claims.as_deref(),
            request_id: None,
        };
        let mut trace = Trace::default();
        // The external PDP (`authzen.pdp`) is not asked: this answers for the policy the sidecar holds.
        let result = pipeline::evaluate(&loaded, oauth.as_deref(), &self.governor, None, facts, None, &mut trace).await;
        match result {
            Ok(()) => Outcome { decision: true, reason: Reason::Allowed, policy_ids: trace.policy_ids, shadow: None },
            Err(denial) => match pipeline::apply_mode(loaded.mode, denial.reason) {
                // Shadow mode: the data plane forwards it, saying what it would have denied.
                Ok(shadow) => Outcome {
                    decision: true,
                    reason: Reason::Allowed,
                    policy_ids: denial.policy_ids,
                    shadow: Some(shadow),
                },
                Err(reason) => Outcome { decision: false, reason, policy_ids: denial.policy_ids, shadow: None },
            },
        }
    }
}

/// 415 for a `Content-Type` other than JSON (none at all is read as JSON).
fn wrong_content_type(headers: &HeaderMap) -> Option<Response<Body>> {
    let value = headers.get(header::CONTENT_TYPE)?;
    let essence = value.to_str().ok().and_then(|v| v.split(';').next()).map(str::trim);
    match essence {
        Some(t) if t.eq_ignore_ascii_case("application/json") => None,
        _ => Some(crate::admin::error_message(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "Content-Type: application/json",
        )),
    }
}
