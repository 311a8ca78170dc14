//! `a2a-sidecar check`: load and validate everything, print a summary.

use std::fmt::Write as _;

use certs::source::FilesSource;

use crate::config::{Config, IdentityConfig};

/// A human summary of a valid config, or the first problem found in the
/// material it points at (SVID files, dev CA).
pub fn summarize(config: &Config) -> Result<String, String> {
    let mut out = String::new();
    let _ = writeln!(out, "config: {} is valid", config.path.display());
    match &config.identity {
        IdentityConfig::WorkloadApi { endpoint } => {
            let _ = writeln!(out, "identity: workload_api at {endpoint} (not contacted by check)");
        }
        IdentityConfig::Files(files) => {
            let identity = FilesSource::new(files.clone())
                .load_now()
                .map_err(|e| format!("`{}`: `identity.files`: {e}", config.path.display()))?;
            let svid = identity.svid();
            let _ = writeln!(
                out,
                "identity: files, {} (serial {}, expires {}), trust domains: {}",
                svid.id(),
                svid.serial(),
                humantime_utc(svid.not_after()),
                identity.bundles().trust_domains().map(|td| td.to_string()).collect::<Vec<_>>().join(", ")
            );
        }
        IdentityConfig::Dev { ca_dir, id, ttl } => {
            #[cfg(feature = "dev")]
            certs::dev::DevCa::load(ca_dir)
                .map_err(|e| format!("`{}`: `identity.dev.ca_dir`: {e}", config.path.display()))?;
            let _ = writeln!(out, "identity: dev CA {} issuing {id} every {ttl:?}", ca_dir.display());
        }
    }
    out.push_str(&policy(config)?);
    if let Some(jwt) = &config.jwt {
        let _ = writeln!(
            out,
            "jwt: {} issuer(s), leeway {:?}{}{}",
            jwt.entra.iter().count() + jwt.issuers.len(),
            jwt.leeway,
            if jwt.allow_unbound_tokens { ", unbound tokens allowed" } else { "" },
            if jwt.require_bound_tokens { ", certificate-bound tokens required" } else { "" }
        );
        if let Some(entra) = &jwt.entra {
            let _ = writeln!(
                out,
                "  entra: tenant {} at {}, audiences [{}]",
                entra.tenant_id,
                entra.authority,
                entra.audiences.join(", ")
            );
        }
        for issuer in &jwt.issuers {
            let algorithms: Vec<String> = issuer.algorithms.iter().map(|a| format!("{a:?}")).collect();
            let _ = writeln!(
                out,
                "  {}: {} ({}), audiences [{}], agent claim {}, roles from {}",
                issuer.name,
                issuer.issuer,
                algorithms.join(", "),
                issuer.audiences.join(", "),
                issuer.agent_claims.join(" then "),
                issuer.roles_claim
            );
        }
    }
    if let Some(inbound) = &config.inbound {
        let _ = writeln!(
            out,
            "inbound: {} -> http://{} ({} allowed caller patterns)",
            inbound.listen,
            inbound.upstream,
            inbound.allowed_callers.len()
        );
    }
    if let Some(outbound) = &config.outbound {
        let _ = writeln!(out, "outbound: {} ({} routes)", outbound.listen, outbound.routes.len());
    }
    let threads = config.runtime.worker_threads.map_or("one per CPU".to_owned(), |n| n.to_string());
    let _ = writeln!(out, "runtime: worker_threads {threads}");
    let _ = writeln!(out, "telemetry: {} ({:?} logs)", config.telemetry.listen, config.telemetry.log_format);
    Ok(out)
}

/// RFC 3339-ish UTC time for humans, without another dependency.
fn humantime_utc(t: std::time::SystemTime) -> String {
    let secs = t.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default();
    format!("@{secs} (unix)")
}

/// Builds the policy (parse, enrich, validate, compile) and summarizes it.
/// `run` calls this before starting: a bad policy is a configuration error.
pub fn policy(config: &Config) -> Result<String, String> {
    let mut out = String::new();
    if let Some(policy) = &config.policy {
        let (engine, _) = crate::layers::rbac::load(policy, config.env.as_ref(), config.jwt.as_ref())
            .map_err(|e| format!("policy: {e}"))?;
        let doc = engine.doc();
        let rules: usize = doc.entries.iter().map(|e| e.rules.len()).sum();
        let _ = writeln!(
            out,
            "policy: {} (version {}, trust domain {}, default {:?}): {} caller entries, {rules} rules, {} native Cedar policies, mode {:?}",
            policy.file.display(),
            doc.version,
            doc.trust_domain,
            doc.default_action,
            doc.entries.len(),
            engine.native_ids().len(),
            policy.mode,
        );
    }
    Ok(out)
}
