//! `GET /mgmt/oauth-status`: Layer 3's configuration and its JWKS.

use hyper::{Response, StatusCode};
use serde_json::json;

use super::Context;
use crate::admin::json_response;
use crate::dataplane::body::Body;
use crate::observe::audit::rfc3339;

pub(super) fn status(ctx: &Context) -> Response<Body> {
    let oauth = ctx.oauth.load_full();
    let keys = oauth.as_ref().and_then(|o| o.jwks().keys());
    let status = oauth.as_ref().map(|o| o.jwks().status());
    let jwt = ctx.reloader.applied().jwt.clone();
    let audiences = jwt.as_ref().map(|j| j.audiences.clone()).unwrap_or_default();
    json_response(
        StatusCode::OK,
        &json!({
            "config_loaded": oauth.is_some(),
            "jwks_cached": keys.is_some(),
            "last_jwks_refresh": status.as_ref().and_then(|s| s.last_refresh).map(rfc3339),
            "last_error": status.and_then(|s| s.last_error.clone()),
            "key_count": keys.map_or(0, |k| k.len()),
            "tenant_id": jwt.as_ref().map(|j| j.tenant_id.clone()),
            "audience": audiences.first(),
            "audiences": audiences,
        }),
    )
}
