//! `a2a-sidecar explain`: which layer allows or denies a request and why,
//! from the configuration alone (no network, no running sidecar).

use std::fmt::Write as _;

use certs::SpiffeId;
use policy::{CanonicalPath, PathOptions};

use crate::config::Config;

/// The verdict of every layer for one request, as printable text, and
/// whether the request would be forwarded.
pub fn explain(config: &Config, caller: &str, method: &str, path: &str) -> Result<(String, bool), String> {
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
    let engine =
        crate::policy_store::load(policy, config.env.as_ref(), config.jwt.as_ref()).map_err(|e| e.to_string())?;
    let v = engine.decide(policy::engine::Request { caller: &caller, method, path: canonical.for_matching() });
    let entry = v.entry.and_then(|i| engine.doc().entries.get(i));
    let ids = v.decision.policy_ids.join(", ");
    let who = entry.map_or_else(|| "no caller entry".to_owned(), |e| format!("entry `{}`", e.name));
    verdict(&mut out, "rbac", v.decision.allow, &format!("{} ({who}; policy ids: [{ids}])", v.decision.reason));
    if !v.decision.allow {
        return Ok((out, false));
    }
    let rule = entry.zip(v.rule).and_then(|(e, r)| e.rules.get(r));
    match rule {
        Some(r) if r.require_jwt => {
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
