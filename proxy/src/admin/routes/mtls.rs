//! `GET/PUT /mgmt/mtls-policy`: Layer 1's allow-list, replaced at run time.

use certs::IdPattern;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use serde::Deserialize;
use serde_json::json;

use super::{Context, json_body, persist, record, record_files};
use crate::admin::{Reject, json_response};
use crate::dataplane::body::Body;

/// `PUT` body: the reference's.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Put {
    allowed_ids: Vec<String>,
}

pub(super) fn get(ctx: &Context) -> Response<Body> {
    let ids: Vec<String> = ctx.allowlist.patterns().iter().map(ToString::to_string).collect();
    json_response(StatusCode::OK, &json!({"mode": "allowlist", "count": ids.len(), "allowed_ids": ids}))
}

pub(super) async fn put(ctx: &Context, req: Request<Incoming>, actor: &str) -> Result<Response<Body>, Reject> {
    let (body, force) = json_body::<Put>(req).await?;
    let patterns = patterns(body, force)?;
    let _changing = ctx.reloader.lock().await;
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

/// The patterns of a `PUT`: each in `inbound.allowed_callers` syntax; an
/// empty list (it refuses every caller) only with `?force=true`.
fn patterns(body: Put, force: bool) -> Result<Vec<IdPattern>, Reject> {
    let patterns = body
        .allowed_ids
        .iter()
        .map(|text| {
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
    Ok(patterns)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(body: &str, force: bool) -> Result<Vec<String>, &'static str> {
        let body = super::super::decode::<Put>(body.as_bytes()).map_err(|r| r.code)?;
        patterns(body, force).map(|p| p.iter().map(ToString::to_string).collect()).map_err(|r| r.code)
    }

    #[test]
    fn a_new_allow_list_is_validated_whole() {
        let ok = put(r#"{"allowed_ids": ["spiffe://a.example/x", "spiffe://a.example/team/*"]}"#, false);
        assert_eq!(ok.unwrap().len(), 2);
        assert_eq!(
            put(r#"{"allowed_ids": ["spiffe://a.example/x", "https://nope"]}"#, false),
            Err("invalid_spiffe_id")
        );
        assert_eq!(put(r#"{"allowed_ids": []}"#, false), Err("empty_allowlist"));
        assert_eq!(put(r#"{"allowed_ids": []}"#, true), Ok(vec![]));
        assert_eq!(put(r#"{"allowed_ids": "spiffe://a.example/x"}"#, false), Err("invalid_request"));
        assert_eq!(put(r#"{"allowed_ids": [], "mode": "allowlist"}"#, true), Err("invalid_request"), "unknown field");
        assert_eq!(put(r#"{}"#, true), Err("invalid_request"), "missing field");
    }
}
