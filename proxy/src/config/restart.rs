//! Which configuration changes a reload can apply, and which need a restart.
//!
//! A reload applies all of a new configuration or none of it: this names
//! every field whose change only a restart can apply, so the reload can be
//! refused as a whole. Each struct is destructured exhaustively: a field
//! added later does not compile here until someone decides which kind it is.

use super::{
    AuditSection, AuthzenSection, Config, EntraSection, HttpLimits, InboundConfig, JwtSection, LimitsConfig,
    MgmtSection, OutboundConfig, PolicyConfig, RiskSection, RuntimeConfig, TagsSection, TelemetryConfig,
};

/// What a reload applies at once (everything else needs a restart):
/// `inbound.allowed_callers`; all of `policy` (file, cedar, mode,
/// case_insensitive_paths); `jwt.audiences`, `jwt.leeway`,
/// `jwt.allow_unbound_tokens`, `jwt.require_bound_tokens`, and each
/// `jwt.issuers[]` entry's name, audiences, algorithms and claims;
/// `risk.blocked_levels`, `risk.on_unavailable`, `tags.on_unavailable`;
/// `mgmt.keys`; all of `authzen.pdp` (the PDP client and its cache are
/// rebuilt when it changes).
pub const HOT_FIELDS: &[&str] = &[
    "inbound.allowed_callers",
    "policy.file",
    "policy.cedar",
    "policy.mode",
    "policy.case_insensitive_paths",
    "jwt.audiences",
    "jwt.leeway",
    "jwt.allow_unbound_tokens",
    "jwt.require_bound_tokens",
    "jwt.issuers[].name",
    "jwt.issuers[].audiences",
    "jwt.issuers[].algorithms",
    "jwt.issuers[].agent_claim",
    "jwt.issuers[].roles_claim",
    "risk.blocked_levels",
    "risk.on_unavailable",
    "tags.on_unavailable",
    "mgmt.keys",
    "authzen.pdp",
];

/// Collects the names of changed restart-only fields.
struct Changes(Vec<String>);

impl Changes {
    fn check<T: PartialEq>(&mut self, field: &str, old: &T, new: &T) {
        if old != new {
            self.0.push(field.to_owned());
        }
    }

    /// A section present in one and absent in the other needs a restart as a
    /// whole; present in both, `each` compares its fields.
    fn section<T>(&mut self, name: &str, old: Option<&T>, new: Option<&T>, each: impl FnOnce(&mut Self, &T, &T)) {
        match (old, new) {
            (Some(old), Some(new)) => each(self, old, new),
            (None, None) => {}
            _ => self.0.push(name.to_owned()),
        }
    }
}

impl Config {
    /// The restart-only fields (see [`HOT_FIELDS`]) that differ between the
    /// running configuration (`self`) and `new`, by their YAML names.
    pub fn restart_required(&self, new: &Config) -> Vec<String> {
        let Config {
            path: _,
            env: _,
            identity,
            runtime,
            telemetry,
            inbound,
            outbound,
            policy,
            jwt,
            risk,
            tags,
            entra,
            audit,
            mgmt,
            limits,
            authzen,
        } = self;
        let mut c = Changes(Vec::new());
        c.check("identity", identity, &new.identity);
        runtime_fields(&mut c, runtime, &new.runtime);
        telemetry_fields(&mut c, telemetry, &new.telemetry);
        c.section("inbound", inbound.as_ref(), new.inbound.as_ref(), inbound_fields);
        c.section("outbound", outbound.as_ref(), new.outbound.as_ref(), outbound_fields);
        c.section("policy", policy.as_ref(), new.policy.as_ref(), policy_fields);
        c.section("jwt", jwt.as_ref(), new.jwt.as_ref(), jwt_fields);
        risk_fields(&mut c, risk, &new.risk);
        tags_fields(&mut c, tags, &new.tags);
        c.section("entra", entra.as_ref(), new.entra.as_ref(), entra_fields);
        audit_fields(&mut c, audit, &new.audit);
        c.section("mgmt", mgmt.as_ref(), new.mgmt.as_ref(), mgmt_fields);
        let LimitsConfig { max_connections } = limits;
        c.check("limits.max_connections", max_connections, &new.limits.max_connections);
        authzen_fields(&mut c, authzen, &new.authzen);
        c.0
    }
}

fn runtime_fields(c: &mut Changes, old: &RuntimeConfig, new: &RuntimeConfig) {
    let RuntimeConfig { worker_threads, drain_timeout, shutdown_delay } = old;
    c.check("runtime.worker_threads", worker_threads, &new.worker_threads);
    c.check("runtime.drain_timeout", drain_timeout, &new.drain_timeout);
    c.check("runtime.shutdown_delay", shutdown_delay, &new.shutdown_delay);
}

fn telemetry_fields(c: &mut Changes, old: &TelemetryConfig, new: &TelemetryConfig) {
    let TelemetryConfig { listen, log_format, otlp_endpoint } = old;
    c.check("telemetry.listen", listen, &new.listen);
    c.check("telemetry.log_format", log_format, &new.log_format);
    c.check("telemetry.otlp_endpoint", otlp_endpoint, &new.otlp_endpoint);
}

fn limits_fields(c: &mut Changes, section: &str, old: &HttpLimits, new: &HttpLimits) {
    let HttpLimits { header_timeout, idle_timeout, max_header_bytes } = old;
    c.check(&format!("{section}.header_timeout"), header_timeout, &new.header_timeout);
    c.check(&format!("{section}.idle_timeout"), idle_timeout, &new.idle_timeout);
    c.check(&format!("{section}.max_header_bytes"), max_header_bytes, &new.max_header_bytes);
}

fn inbound_fields(c: &mut Changes, old: &InboundConfig, new: &InboundConfig) {
    let InboundConfig {
        listen,
        upstream,
        limits,
        handshake_timeout,
        tls_resumption,
        path_options,
        allow_underscore_headers,
        upgrades,
        allowed_callers: _, // hot
        upstream_connect_timeout,
        upstream_response_timeout,
    } = old;
    c.check("inbound.listen", listen, &new.listen);
    c.check("inbound.upstream", upstream, &new.upstream);
    limits_fields(c, "inbound", limits, &new.limits);
    c.check("inbound.handshake_timeout", handshake_timeout, &new.handshake_timeout);
    c.check("inbound.tls_resumption", tls_resumption, &new.tls_resumption);
    c.check("inbound.allow_semicolons", path_options, &new.path_options);
    c.check("inbound.allow_underscore_headers", allow_underscore_headers, &new.allow_underscore_headers);
    c.check("inbound.upgrades", upgrades, &new.upgrades);
    c.check("inbound.upstream_connect_timeout", upstream_connect_timeout, &new.upstream_connect_timeout);
    c.check("inbound.upstream_response_timeout", upstream_response_timeout, &new.upstream_response_timeout);
}

fn outbound_fields(c: &mut Changes, old: &OutboundConfig, new: &OutboundConfig) {
    let OutboundConfig { listen, limits, connect_timeout, response_timeout, routes } = old;
    c.check("outbound.listen", listen, &new.listen);
    limits_fields(c, "outbound", limits, &new.limits);
    c.check("outbound.connect_timeout", connect_timeout, &new.connect_timeout);
    c.check("outbound.response_timeout", response_timeout, &new.response_timeout);
    c.check("outbound.routes", routes, &new.routes);
}

/// Every policy field is hot; the function exists so a new one is decided.
fn policy_fields(_: &mut Changes, old: &PolicyConfig, _: &PolicyConfig) {
    let PolicyConfig { file: _, cedar: _, mode: _, case_insensitive_paths: _ } = old;
}

fn jwt_fields(c: &mut Changes, old: &JwtSection, new: &JwtSection) {
    let JwtSection {
        entra,
        issuers,
        leeway: _,               // hot
        allow_unbound_tokens: _, // hot
        require_bound_tokens: _, // hot
        refresh,
        refetch_interval,
    } = old;
    // These choose and pace the signing-key providers, which run from the
    // start; an issuer's audiences, algorithms and claims are hot.
    let tenant = |e: &Option<super::EntraIssuer>| e.as_ref().map(|e| e.tenant_id.clone());
    let authority = |e: &Option<super::EntraIssuer>| e.as_ref().map(|e| e.authority.clone());
    c.check("jwt.tenant_id", &tenant(entra), &tenant(&new.entra));
    c.check("jwt.authority", &authority(entra), &authority(&new.entra));
    let keys = |list: &[super::IssuerSection]| -> Vec<(String, Option<String>)> {
        list.iter().map(|i| (i.issuer.clone(), i.jwks_uri.clone())).collect()
    };
    c.check("jwt.issuers", &keys(issuers), &keys(&new.issuers));
    c.check("jwt.refresh", refresh, &new.refresh);
    c.check("jwt.refetch_interval", refetch_interval, &new.refetch_interval);
}

fn risk_fields(c: &mut Changes, old: &RiskSection, new: &RiskSection) {
    let RiskSection { source, blocked_levels: _, refresh, on_unavailable: _ } = old;
    c.check("risk.source", source, &new.source);
    c.check("risk.refresh", refresh, &new.refresh);
}

fn tags_fields(c: &mut Changes, old: &TagsSection, new: &TagsSection) {
    let TagsSection { source, attribute_set, attribute, ttl, on_unavailable: _ } = old;
    c.check("tags.source", source, &new.source);
    c.check("tags.attribute_set", attribute_set, &new.attribute_set);
    c.check("tags.attribute", attribute, &new.attribute);
    c.check("tags.ttl", ttl, &new.ttl);
}

fn entra_fields(c: &mut Changes, old: &EntraSection, new: &EntraSection) {
    let EntraSection { client_id, tenant_id, authority, graph_endpoint, assertion } = old;
    c.check("entra.client_id", client_id, &new.client_id);
    c.check("entra.tenant_id", tenant_id, &new.tenant_id);
    c.check("entra.authority", authority, &new.authority);
    c.check("entra.graph_endpoint", graph_endpoint, &new.graph_endpoint);
    let field = match assertion {
        super::AssertionSource::File(_) => "entra.federated_token_file",
        super::AssertionSource::JwtSvid { .. } => "entra.use_jwt_svid",
    };
    c.check(field, assertion, &new.assertion);
}

fn audit_fields(c: &mut Changes, old: &AuditSection, new: &AuditSection) {
    let AuditSection { ring, file, stdout } = old;
    c.check("audit.ring", ring, &new.ring);
    c.check("audit.file", file, &new.file);
    c.check("audit.stdout", stdout, &new.stdout);
}

fn mgmt_fields(c: &mut Changes, old: &MgmtSection, new: &MgmtSection) {
    let MgmtSection { listen, keys: _, state_file, tls_callers, tls_roles, tls_consoles, loopback_plain } = old; // keys are hot
    c.check("mgmt.listen", listen, &new.listen);
    c.check("mgmt.state_file", state_file, &new.state_file);
    c.check("mgmt.tls.allowed_callers", tls_callers, &new.tls_callers);
    c.check("mgmt.tls.roles", tls_roles, &new.tls_roles);
    c.check("mgmt.tls.consoles", tls_consoles, &new.tls_consoles);
    c.check("mgmt.tls.loopback_plain", loopback_plain, &new.loopback_plain);
}

fn authzen_fields(c: &mut Changes, old: &AuthzenSection, new: &AuthzenSection) {
    let AuthzenSection { pdp: _, listen } = old; // pdp is hot
    c.check("authzen.listen", listen, &new.listen);
}
