//! `GET /mgmt/audit`: the ring, newest first, filtered.

use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use serde_json::json;

use super::{Context, query_param};
use crate::admin::{Reject, json_response};
use crate::dataplane::body::Body;
use crate::observe::audit::Decision;

/// `?limit=` (default 100, at most 10 000), `?spiffe_id=`, `?decision=`; a
/// malformed filter is a 400, not a silently different answer.
pub(super) fn query(ctx: &Context, req: &Request<Incoming>) -> Result<Response<Body>, Reject> {
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
