//! `a2a-sidecar explain`: which layer allows or denies a request and why,
//! from the configuration alone (no network, no running sidecar).

use std::fmt::Write as _;

use certs::SpiffeId;
use policy::{CanonicalPath, PathOptions};

use crate::config::Config;

/// The verdict of every layer for one request, as printable text, and
/// whether the request would be forwarded.
pub fn explain(
    config: &Config,
    caller: &str,
    method: &str,
    path: &str,
    token: Option<(&str, &std::path::Path)>,
) -> Result<(String, bool), String> {
    let mut out = String::new();
    let caller: SpiffeId = caller.parse().map_err(|e| format!("--caller `{caller}`: {e}"))?;
    let _ = writeln!(out, "request  {method} {path} from {caller}");

    let inbound = config.inbound.as_ref().ok_or("the config has no `inbound` section: nothing to explain")?;
    let allowed = inbound.allowed_callers.iter().enumerate().find(|(_, p)| p.matches(&caller));
    let verdict = |out: &mut String, layer: &str, allow: bool, detail: &str| {
        let _ = writeln!(out, "{layer:<9}{:<6}{detail}", if allow { "allow" } else { "DENY" });
    };
    match allowed {
        Some((i, pattern)) => {
            verdict(&mut out, "mtls", true, &format!("matches inbound.allowed_callers[{i}] `{pattern}`"))
        }
        None => {
            verdict(
                &mut out,
                "mtls",
                false,
                "not_allowed: no inbound.allowed_callers pattern matches (refused at the handshake)",
            );
            return Ok((out, false));
        }
    }

    let options = PathOptions { allow_semicolons: inbound.path_options.allow_semicolons };
    let canonical = match CanonicalPath::parse(path, options) {
        Ok(c) => c,
        Err(e) => {
            verdict(&mut out, "http", false, &format!("bad_path: {e}"));
            return Ok((out, false));
        }
    };
    verdict(
        &mut out,
        "http",
        true,
        &format!("canonical path `{}`, forwarded as `{}`", canonical.for_matching(), canonical.encoded()),
    );

    let policy = config.policy.as_ref().ok_or("`policy` is required with `inbound`")?;
    let (engine, _) =
        crate::layers::rbac::load(policy, config.env.as_ref(), config.jwt.as_ref()).map_err(|e| e.to_string())?;
    let v = engine.decide(policy::engine::Request { caller: &caller, method, path: canonical.for_matching() });
    let entry = v.entry.and_then(|i| engine.doc().entries.get(i));
    let ids = v.decision.policy_ids.join(", ");
    let who = entry.map_or_else(|| "no caller entry".to_owned(), |e| format!("entry `{}`", e.name));
    verdict(&mut out, "rbac", v.decision.allow, &format!("{} ({who}; policy ids: [{ids}])", v.decision.reason));
    if !v.decision.allow {
        return Ok((out, false));
    }
    let rule = entry.zip(v.rule).and_then(|(e, r)| e.rules.get(r));
    match (rule, entry, token) {
        (Some(r), Some(entry), Some((token, jwks))) if r.require_jwt => {
            let (allow, detail) = check_token(config, entry, r, token, jwks)?;
            verdict(&mut out, "oauth", allow, &detail);
            Ok((out, allow))
        }
        (Some(r), _, _) if r.require_jwt => {
            let roles = if r.required_roles.is_empty() { "none".into() } else { r.required_roles.join(", ") };
            verdict(
                &mut out,
                "oauth",
                false,
                &format!("jwt_required: the rule requires a bearer JWT (roles: {roles}) bound to this caller"),
            );
            Ok((out, false))
        }
        _ => {
            verdict(&mut out, "oauth", true, "no JWT required by the matched rule");
            Ok((out, true))
        }
    }
}

/// Layer 3 offline: the token against a JWKS file and the `jwt` section.
fn check_token(
    config: &Config,
    entry: &policy::reference::Entry,
    rule: &policy::reference::Rule,
    token: &str,
    jwks: &std::path::Path,
) -> Result<(bool, String), String> {
    let jwt = config.jwt.as_ref().ok_or("--token needs a `jwt` section in the config")?;
    let keys = std::fs::read(jwks).map_err(|e| format!("--jwks `{}`: {e}", jwks.display()))?;
    let keys = policy::jwt::KeySet::from_jwks(&keys).map_err(|e| format!("--jwks `{}`: {e}", jwks.display()))?;
    let settings =
        policy::jwt::JwtConfig::new(&jwt.authority, &jwt.tenant_id, jwt.audiences.clone(), jwt.leeway.as_secs());
    let now =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default();
    let claims = match policy::jwt::verify(token, &keys, &settings, now) {
        Ok(Some(claims)) => claims,
        Ok(None) => return Ok((false, "jwt_invalid: the token's kid is not in the JWKS file".into())),
        Err(e) => return Ok((false, e.to_string())),
    };
    let bound = policy::jwt::bound_to(&claims, entry.entra_agent_id.as_deref(), entry.entra_app_id.as_deref());
    if bound == Some(false) || (bound.is_none() && !jwt.allow_unbound_tokens) {
        return Ok((false, "jwt_caller_mismatch: the token is not the caller's (oid / azp)".into()));
    }
    if !policy::jwt::has_roles(&claims, &rule.required_roles) {
        return Ok((
            false,
            format!("insufficient_roles: needs {:?}, token has {:?}", rule.required_roles, claims.roles),
        ));
    }
    Ok((true, format!("valid token (kid {}, roles {:?})", claims.kid, claims.roles)))
}
