//! `GET/PUT /mgmt/agent-risk`: operator risk pushes (Layer 4a), which
//! always win over the configured source.

use certs::SpiffeId;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use policy::RiskLevel;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Context, json_body, merge, parse_id, persist, present, record, set_or_remove};
use crate::admin::{Reject, json_response};
use crate::dataplane::body::Body;

/// `PUT` body: the reference's; a `null` level removes the push.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Put {
    spiffe_id: String,
    #[serde(default, deserialize_with = "present")]
    risk_level: Option<Option<String>>,
}

/// The level a caller without a push is reported at (the reference's `default_level`).
const DEFAULT_RISK: &str = "low";

pub(super) fn all(ctx: &Context) -> Value {
    let risks: serde_json::Map<String, Value> =
        ctx.governor.pushes.risks().into_iter().map(|(k, v)| (k, json!(v.as_str()))).collect();
    json!({"count": risks.len(), "risks": risks, "default_level": DEFAULT_RISK})
}

pub(super) fn one(ctx: &Context, id: &str) -> Result<Response<Body>, Reject> {
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

pub(super) async fn put(ctx: &Context, req: Request<Incoming>, actor: &str) -> Result<Response<Body>, Reject> {
    let (body, _) = json_body::<Put>(req).await?;
    let (id, level) = push(body)?;
    let _changing = ctx.reloader.lock().await;
    persist(ctx, &format!("agent-risk:{actor}"), |s| set_or_remove(&mut s.risks, &id, level.map(RiskLevel::as_str)))?;
    let previous = ctx.governor.pushes.risk(&id);
    ctx.governor.pushes.set_risk(&id, level);
    record(ctx, actor, "PUT", "/mgmt/agent-risk", 200);
    // The reference's PUT answer plus the GET shape.
    let mut body = all(ctx);
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

/// Who, and the level pushed for them (`None`: the push is removed).
fn push(body: Put) -> Result<(SpiffeId, Option<RiskLevel>), Reject> {
    let id = parse_id(&body.spiffe_id)?;
    let invalid =
        || Reject::with(StatusCode::BAD_REQUEST, "invalid_risk_level", "`risk_level` is low, medium, high or null");
    let level = match body.risk_level.ok_or_else(invalid)? {
        None => None,
        // `none` is Graph's word for "not at risk", not an operator's push.
        Some(text) => Some(text.parse::<RiskLevel>().ok().filter(|l| *l != RiskLevel::None).ok_or_else(invalid)?),
    };
    Ok((id, level))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(body: &str) -> Result<Option<RiskLevel>, &'static str> {
        let body = super::super::decode::<Put>(body.as_bytes()).map_err(|r| r.code)?;
        push(body).map(|(_, level)| level).map_err(|r| r.code)
    }

    #[test]
    fn a_push_names_a_caller_and_a_level_or_null() {
        let id = r#""spiffe_id": "spiffe://a.example/x""#;
        assert_eq!(put(&format!(r#"{{{id}, "risk_level": "high"}}"#)), Ok(Some(RiskLevel::High)));
        assert_eq!(put(&format!(r#"{{{id}, "risk_level": null}}"#)), Ok(None), "null removes the push");
        for bad in [r#""none""#, r#""HIGH""#, r#""extreme""#] {
            assert_eq!(put(&format!(r#"{{{id}, "risk_level": {bad}}}"#)), Err("invalid_risk_level"), "{bad}");
        }
        assert_eq!(put(&format!("{{{id}}}")), Err("invalid_risk_level"), "absent is not null");
        assert_eq!(put(&format!(r#"{{{id}, "risk_level": 3}}"#)), Err("invalid_request"));
        assert_eq!(put(r#"{"spiffe_id": "not-an-id", "risk_level": "low"}"#), Err("invalid_spiffe_id"));
        assert_eq!(put(&format!(r#"{{{id}, "risk_level": "low", "reason": "x"}}"#)), Err("invalid_request"));
    }
}
