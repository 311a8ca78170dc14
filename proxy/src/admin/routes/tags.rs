//! `GET/PUT /mgmt/agent-tags`: operator tag pushes (Layer 4b), which
//! always win over the configured source.

use certs::SpiffeId;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Context, json_body, merge, parse_id, persist, present, record, set_or_remove};
use crate::admin::{Reject, json_response};
use crate::config::FactSource;
use crate::dataplane::body::Body;

/// `PUT` body: the reference's; a `null` tag removes the push.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Put {
    spiffe_id: String,
    #[serde(default, deserialize_with = "present")]
    tag: Option<Option<String>>,
}

fn tag_source(ctx: &Context) -> &'static str {
    if ctx.governor.settings().tags.source == FactSource::Graph { "graph" } else { "policy" }
}

pub(super) fn all(ctx: &Context) -> Value {
    let tags = ctx.governor.pushes.tags();
    json!({"count": tags.len(), "tags": tags, "source": tag_source(ctx)})
}

pub(super) fn one(ctx: &Context, id: &str) -> Result<Response<Body>, Reject> {
    let id = parse_id(id)?;
    let tag = ctx.governor.pushes.tag(&id);
    Ok(json_response(
        StatusCode::OK,
        &json!({"spiffe_id": id.as_str(), "found": tag.is_some(), "tag": tag.unwrap_or_default(), "source": tag_source(ctx)}),
    ))
}

pub(super) async fn put(ctx: &Context, req: Request<Incoming>, actor: &str) -> Result<Response<Body>, Reject> {
    let (body, _) = json_body::<Put>(req).await?;
    let (id, tag) = push(body)?;
    let _changing = ctx.reloader.lock().await;
    persist(ctx, &format!("agent-tags:{actor}"), |s| set_or_remove(&mut s.tags, &id, tag.as_deref()))?;
    let previous = ctx.governor.pushes.tag(&id);
    ctx.governor.pushes.set_tag(&id, tag.clone());
    record(ctx, actor, "PUT", "/mgmt/agent-tags", 200);
    // The reference's PUT answer plus the GET shape.
    let mut body = all(ctx);
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

/// Who, and the tag pushed for them (`None`: the push is removed).
fn push(body: Put) -> Result<(SpiffeId, Option<String>), Reject> {
    let id = parse_id(&body.spiffe_id)?;
    let tag =
        body.tag.ok_or_else(|| Reject::with(StatusCode::BAD_REQUEST, "invalid_tag", "`tag` is a string or null"))?;
    Ok((id, tag))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(body: &str) -> Result<Option<String>, &'static str> {
        let body = super::super::decode::<Put>(body.as_bytes()).map_err(|r| r.code)?;
        push(body).map(|(_, tag)| tag).map_err(|r| r.code)
    }

    #[test]
    fn a_push_names_a_caller_and_a_tag_or_null() {
        let id = r#""spiffe_id": "spiffe://a.example/x""#;
        assert_eq!(put(&format!(r#"{{{id}, "tag": "finance"}}"#)), Ok(Some("finance".into())));
        assert_eq!(put(&format!(r#"{{{id}, "tag": ""}}"#)), Ok(Some(String::new())), "an empty tag is a tag");
        assert_eq!(put(&format!(r#"{{{id}, "tag": null}}"#)), Ok(None));
        assert_eq!(put(&format!("{{{id}}}")), Err("invalid_tag"));
        assert_eq!(put(&format!(r#"{{{id}, "tag": 7}}"#)), Err("invalid_request"));
        assert_eq!(put(r#"{"spiffe_id": "", "tag": "x"}"#), Err("invalid_spiffe_id"));
        assert_eq!(put(&format!(r#"{{{id}, "tag": "x", "source": "graph"}}"#)), Err("invalid_request"));
    }
}
