//! `GET /mgmt/oauth-status`: Layer 3's configuration and its JWKS.

use hyper::{Response, StatusCode};
use serde_json::json;

use super::Context;
use crate::admin::json_response;
use crate::dataplane::body::Body;
use crate::observe::audit::rfc3339;

pub(super) fn status(ctx: &Context) -> Response<Body> {
    let oauth = ctx.oauth.load_full();
    let jwt = ctx.reloader.applied().jwt.clone();
    let issuers: Vec<_> = oauth
        .as_ref()
        .map(|o| {
            o.issuers()
                .iter()
                .map(|i| {
                    let keys = i.jwks.keys();
                    let status = i.jwks.status();
                    json!({
                        "name": i.config.name.as_ref(),
                        "issuer": i.config.iss,
                        "audiences": i.config.audiences,
                        "algorithms": i.config.algorithms.iter().map(|a| format!("{a:?}")).collect::<Vec<_>>(),
                        "jwks_cached": keys.is_some(),
                        "key_count": keys.map_or(0, |k| k.len()),
                        "last_jwks_refresh": status.last_refresh.map(rfc3339),
                        "last_error": status.last_error.clone(),
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    // The reference's fields describe the first issuer (Entra when configured).
    let first = oauth.as_ref().and_then(|o| o.issuers().first());
    let keys = first.and_then(|i| i.jwks.keys());
    let status = first.map(|i| i.jwks.status());
    let entra = jwt.as_ref().and_then(|j| j.entra.clone());
    let audiences = first.map(|i| i.config.audiences.clone()).unwrap_or_default();
    json_response(
        StatusCode::OK,
        &json!({
            "config_loaded": oauth.is_some(),
            "jwks_cached": keys.is_some(),
            "last_jwks_refresh": status.as_ref().and_then(|s| s.last_refresh).map(rfc3339),
            "last_error": status.and_then(|s| s.last_error.clone()),
            "key_count": keys.map_or(0, |k| k.len()),
            "tenant_id": entra.map(|e| e.tenant_id),
            "audience": audiences.first(),
            "audiences": audiences,
            "require_bound_tokens": jwt.as_ref().is_some_and(|j| j.require_bound_tokens),
            "issuers": issuers,
        }),
    )
}
