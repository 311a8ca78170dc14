//! `GET /mgmt/explain?caller=&method=&path=`: which layer would allow or
//! deny that request, judged by this running sidecar's own allow-list,
//! policy and Layer 4 facts with the same code as `a2a-sidecar explain` and
//! the data plane (no token: a rule that requires one says `jwt_missing`).
//! Nothing is changed and nothing is sent to the app; Layer 4 may look the
//! caller up in Graph as the data plane would, so explanations are limited
//! to 5 a second (burst 20) across callers (429 with `Retry-After`).

use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use serde_json::json;

use super::{Context, query_param};
use crate::admin::explain::{Parts, PdpPart, Question, Verdict, explain_with};
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
    // An origin-form path, as the data plane sees one after hyper: no query, no fragment, visible ASCII.
    if !path.starts_with('/') || path.bytes().any(|b| !b.is_ascii_graphic() || b == b'?' || b == b'#') {
        return Err(Reject::with(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            "`path`: an origin-form path without a query",
        ));
    }
    // Layer 4 may ask Graph for the caller: a viewer in a loop must not become Graph's load.
    if !ctx.explain_budget.take() {
        let mut reject = Reject::new(StatusCode::TOO_MANY_REQUESTS, "too_many_requests");
        reject.retry_after = Some(1);
        return Err(reject);
    }
    let Some(policy) = &ctx.policy else {
        return Err(Reject::new(StatusCode::NOT_FOUND, "no_policy"));
    };
    let applied = ctx.reloader.applied();
    let inbound = applied.inbound.as_ref();
    let (oauth, pdp) = (ctx.oauth.load_full(), ctx.pdp.load_full());
    let parts = Parts {
        allowlist: &ctx.allowlist,
        policy,
        governor: &ctx.governor,
        oauth: oauth.as_deref(),
        configured: inbound.map_or(&[][..], |i| &i.allowed_callers[..]),
        options: inbound.map(|i| i.path_options).unwrap_or_default(),
        pdp: match pdp.as_deref() {
            Some(pdp) => PdpPart::Live(pdp),
            None => PdpPart::NotConfigured,
        },
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
