//! `GET /mgmt/explain?caller=&method=&path=`: which layer would allow or
//! deny that request, judged by this running sidecar's own allow-list,
//! policy and Layer 4 facts with the same code as `a2a-sidecar explain` and
//! the data plane (no token: a rule that requires one says `jwt_missing`).
//! Nothing is changed and nothing is sent to the app.

use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use serde_json::json;

use super::{Context, query_param};
use crate::admin::explain::{Parts, Question, Verdict, explain_with};
use crate::admin::{Reject, json_response};
use crate::dataplane::body::Body;

pub(super) async fn explain(ctx: &Context, req: &Request<Incoming>) -> Result<Response<Body>, Reject> {
    let param = |name: &'static str| {
        query_param(req, name).filter(|v| !v.is_empty()).ok_or_else(|| {
            Reject::with(
                StatusCode::BAD_REQUEST,
                "invalid_query",
                format!("`{name}` is required (caller, method, path)"),
            )
        })
    };
    let (caller, method, path) = (param("caller")?, param("method")?, param("path")?);
    let Some(policy) = &ctx.policy else {
        return Err(Reject::new(StatusCode::NOT_FOUND, "no_policy"));
    };
    let applied = ctx.reloader.applied();
    let inbound = applied.inbound.as_ref();
    let oauth = ctx.oauth.load_full();
    let parts = Parts {
        allowlist: &ctx.allowlist,
        policy,
        governor: &ctx.governor,
        oauth: oauth.as_deref(),
        configured: inbound.map_or(&[][..], |i| &i.allowed_callers[..]),
        options: inbound.map(|i| i.path_options).unwrap_or_default(),
    };
    let question = Question { caller: &caller, method: &method, path: &path, ..Question::default() };
    let explanation = explain_with(parts, &question)
        .await
        .map_err(|why| Reject::with(StatusCode::BAD_REQUEST, "invalid_query", why.replace("--", "")))?;
    let (verdict, reason) = match explanation.verdict {
        Verdict::Forwarded => ("forwarded", policy::Reason::Allowed),
        Verdict::ShadowForwarded(reason) => ("shadow_forwarded", reason),
        Verdict::Denied(reason) => ("denied", reason),
    };
    let answer = json!({
        "verdict": verdict,
        "layer": reason.layer().as_str(),
        "reason": reason.as_str(),
        "status": if verdict == "denied" { crate::dataplane::deny::status_of(reason).0.as_u16() } else { 200 },
        "text": explanation.text,
    });
    Ok(json_response(StatusCode::OK, &answer))
}
