//! Raw YAML to [`PolicyDoc`]: every problem is collected, each naming the
//! entry, the field and why.

use std::sync::Arc;

use certs::{SpiffeId, TrustDomain};

use super::raw::{RawEntry, RawPolicy, RawRule};
use super::{Action, Ca, Entry, Governance, Methods, PolicyDoc, Problem, Rule, RulePath, Selector, env_name};
use crate::path::{CanonicalPath, PathOptions};

/// Rules in one entry (see the check in [`entry`]).
pub const MAX_RULES_PER_ENTRY: usize = 256;

const RISK_ENFORCEMENT: [&str; 4] = ["sts", "data_plane", "sts_and_data_plane", "off"];

struct Problems(Vec<Problem>);

impl Problems {
    fn add(&mut self, entry: &str, field: &str, why: impl Into<String>) {
        self.0.push(Problem { entry: entry.to_owned(), field: field.to_owned(), why: why.into() });
    }
}

pub(super) fn validate(raw: RawPolicy) -> Result<PolicyDoc, Vec<Problem>> {
    let mut p = Problems(Vec::new());
    let doc = "document";
    let version = raw.version.clone().unwrap_or_default();
    if version.is_empty() {
        p.add(doc, "version", "is required");
    }
    let trust_domain = match raw.trust_domain.as_deref() {
        None | Some("") => {
            p.add(doc, "trust_domain", "is required");
            None
        }
        Some(td) => TrustDomain::new(td).map_err(|e| p.add(doc, "trust_domain", format!("`{td}`: {e}"))).ok(),
    };
    let default_action = match raw.default_action.as_deref() {
        Some("allow") => Action::Allow,
        Some("deny") => Action::Deny,
        other => {
            p.add(doc, "default_action", format!("must be `allow` or `deny`, got `{}`", other.unwrap_or("")));
            Action::Deny
        }
    };
    let governance = governance(&mut p, raw.admin_governance.unwrap_or_default());
    if raw.policies.is_empty() {
        p.add(doc, "policies", "at least one entry is required");
    }

    let mut entries = Vec::new();
    for (i, e) in raw.policies.into_iter().enumerate() {
        let label = label("policies", i, &e.name);
        entries.extend(entry(&mut p, &label, e, false, trust_domain.as_ref()));
    }
    for (i, e) in raw.federated_policies.into_iter().enumerate() {
        let label = label("federated_policies", i, &e.name);
        entries.extend(entry(&mut p, &label, e, true, None));
    }
    check_unique(&mut p, &entries);

    match (p.0.is_empty(), trust_domain) {
        (true, Some(trust_domain)) => Ok(PolicyDoc { version, trust_domain, default_action, governance, entries }),
        _ => Err(p.0),
    }
}

fn label(list: &str, i: usize, name: &str) -> String {
    if name.is_empty() { format!("{list}[{i}]") } else { format!("{list}[{i}] ({name})") }
}

fn governance(p: &mut Problems, raw: super::raw::RawGovernance) -> Governance {
    let risk_enforcement = raw.risk_enforcement.unwrap_or_else(|| "sts".into());
    if !RISK_ENFORCEMENT.contains(&risk_enforcement.as_str()) {
        p.add(
            "admin_governance",
            "risk_enforcement",
            format!("`{risk_enforcement}` is not one of {}", RISK_ENFORCEMENT.join(", ")),
        );
    }
    Governance { enabled: raw.enabled, target_agent_tag: raw.target_agent_tag, risk_enforcement }
}

/// `8-4-4-4-12` hex digits: an Entra object or client ID.
pub fn is_guid(value: &str) -> bool {
    let groups: Vec<&str> = value.split('-').collect();
    groups.len() == 5
        && groups.iter().zip([8, 4, 4, 4, 12]).all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The first `<...>` in `value`: the reference's deploy-time placeholders.
fn placeholder(value: &str) -> Option<&str> {
    let rest = value.get(value.find('<')?..)?;
    let end = rest.find('>').map_or(rest.len(), |e| e + 1);
    rest.get(..end)
}

fn entry(p: &mut Problems, label: &str, e: RawEntry, federated: bool, doc_td: Option<&TrustDomain>) -> Option<Entry> {
    let before = p.0.len();
    if e.name.is_empty() {
        p.add(label, "name", "is required (it names the entry's policy IDs and environment variables)");
    }
    let env = env_name(&e.name);
    if e.jwt_only {
        p.add(label, "jwt_only", "is not supported: every caller is authenticated by its SVID");
    }
    let trust_domain = if federated {
        match TrustDomain::new(&e.trust_domain) {
            Ok(td) => Some(td),
            Err(_) if e.trust_domain.is_empty() => {
                p.add(label, "trust_domain", "is required for a federated entry");
                None
            }
            Err(err) => {
                p.add(label, "trust_domain", format!("`{}`: {err}", e.trust_domain));
                None
            }
        }
    } else {
        if !e.trust_domain.is_empty() {
            p.add(label, "trust_domain", "is only for federated_policies entries");
        }
        doc_td.cloned()
    };
    let selector = selector(p, label, &e, federated, &env, trust_domain.as_ref());
    let entra_agent_id = match placeholder(&e.entra_agent_id) {
        Some(ph) => {
            p.add(label, "entra_agent_id", format!("holds the placeholder `{ph}`: set ENTRA_ID_{env}"));
            None
        }
        // It keys Graph look-ups (a URL path segment) and binds tokens by `oid`.
        None if !e.entra_agent_id.is_empty() && !is_guid(&e.entra_agent_id) => {
            p.add(
                label,
                "entra_agent_id",
                format!(
                    "`{}` is not an Entra object ID (a GUID like 00000000-0000-0000-0000-000000000000)",
                    e.entra_agent_id
                ),
            );
            None
        }
        None => Some(e.entra_agent_id).filter(|v| !v.is_empty()).map(Arc::from),
    };
    let entra_app_id = Some(e.entra_app_id).filter(|v| !v.is_empty());
    let agent_id = match placeholder(&e.agent_id) {
        Some(ph) => {
            p.add(label, "agent_id", format!("holds the placeholder `{ph}`: set AGENT_ID_{env}"));
            None
        }
        // Compared with a token claim and shown in audit events.
        None if e.agent_id.len() > 256 || e.agent_id.chars().any(|c| c.is_control() || c.is_whitespace()) => {
            p.add(label, "agent_id", "must be at most 256 characters, without spaces or control characters");
            None
        }
        None => Some(e.agent_id).filter(|v| !v.is_empty()).map(Arc::from),
    };
    if e.issuers.iter().any(String::is_empty) {
        p.add(label, "issuers", "issuer names must not be empty");
    }
    let issuers = e.issuers.iter().map(|name| Arc::from(name.as_str())).collect();
    let disabled = match e.ca.agent_state.as_deref() {
        None | Some("" | "enabled") => false,
        Some("disabled") => true,
        Some(other) => {
            p.add(label, "ca.agent_state", format!("must be `enabled` or `disabled`, got `{other}`"));
            false
        }
    };
    let ca = Ca { disabled, agent_tag: e.ca.agent_tag, skip_target_tag_check: e.ca.skip_target_tag_check };
    if e.rules.len() > MAX_RULES_PER_ENTRY {
        // First-match-wins compiles rule `i` with the negation of every earlier
        // rule: the Cedar text grows with the square of the rule count.
        p.add(label, "rules", format!("{} rules; at most {MAX_RULES_PER_ENTRY} per entry", e.rules.len()));
        return None;
    }
    let rules: Vec<Rule> = e.rules.iter().enumerate().filter_map(|(j, r)| rule(p, label, j, r)).collect();
    if p.0.len() != before {
        return None;
    }
    Some(Entry {
        name: e.name.into(),
        selector: selector?,
        federated,
        trust_domain: trust_domain?,
        entra_agent_id,
        entra_app_id,
        agent_id,
        issuers,
        description: e.description,
        ca,
        rules,
    })
}

fn selector(
    p: &mut Problems,
    label: &str,
    e: &RawEntry,
    federated: bool,
    env: &str,
    td: Option<&TrustDomain>,
) -> Option<Selector> {
    let (field, value, exact) = match (e.spiffe_id.is_empty(), e.spiffe_id_prefix.is_empty()) {
        (false, false) => {
            p.add(label, "spiffe_id", "set `spiffe_id` or `spiffe_id_prefix`, not both");
            return None;
        }
        (true, true) => {
            p.add(label, "spiffe_id", "one of `spiffe_id` or `spiffe_id_prefix` is required");
            return None;
        }
        (false, true) => ("spiffe_id", e.spiffe_id.as_str(), true),
        (true, false) => ("spiffe_id_prefix", e.spiffe_id_prefix.as_str(), false),
    };
    if federated && !exact {
        p.add(label, field, "federated entries name one caller: use an exact `spiffe_id`");
        return None;
    }
    if let Some(ph) = placeholder(value) {
        let fix = if exact { format!("SPIFFE_ID_{env}") } else { format!("SPIFFE_PREFIX_{env}") };
        p.add(label, field, format!("holds the placeholder `{ph}`: set {fix} to the real ID"));
        return None;
    }
    let text = if exact { value } else { value.strip_suffix('/').unwrap_or(value) };
    let id: SpiffeId = match text.parse() {
        Ok(id) => id,
        Err(err) => {
            p.add(label, field, format!("`{value}` is not a SPIFFE ID: {err}"));
            return None;
        }
    };
    if let Some(td) = td
        && id.trust_domain_name() != td.as_str()
    {
        p.add(label, field, format!("`{value}` is outside the trust domain `{td}`"));
        return None;
    }
    Some(if exact { Selector::Exact(id) } else { Selector::Prefix(id.to_string()) })
}

fn rule(p: &mut Problems, label: &str, j: usize, r: &RawRule) -> Option<Rule> {
    let before = p.0.len();
    let field = |f: &str| format!("rules[{j}].{f}");
    let path = rule_path(&r.path).map_err(|why| p.add(label, &field("path"), why)).ok();
    if r.methods.is_empty() {
        p.add(label, &field("methods"), "at least one method is required (`*` for any)");
    }
    let mut listed = Vec::new();
    let mut any = false;
    for m in &r.methods {
        if m == "*" {
            any = true;
        } else if !m.is_empty() && m.bytes().all(|b| b.is_ascii_alphabetic()) {
            listed.push(m.to_ascii_uppercase());
        } else {
            p.add(label, &field("methods"), format!("`{m}` is not an HTTP method"));
        }
    }
    let action = match r.action.as_str() {
        "allow" => Action::Allow,
        "deny" => Action::Deny,
        other => {
            p.add(label, &field("action"), format!("must be `allow` or `deny`, got `{other}`"));
            Action::Deny
        }
    };
    if r.required_roles.iter().any(String::is_empty) {
        p.add(label, &field("required_roles"), "roles must not be empty");
    }
    if r.require_bound_token == Some(true) && !r.require_jwt {
        p.add(label, &field("require_bound_token"), "binds a token: it needs `require_jwt: true`");
    }
    if r.required_tags.keys().any(String::is_empty) {
        p.add(label, &field("required_tags"), "tag names must not be empty");
    }
    if p.0.len() != before {
        return None;
    }
    Some(Rule {
        path: path?,
        methods: if any { Methods::Any } else { Methods::Listed(listed) },
        action,
        require_jwt: r.require_jwt,
        required_roles: r.required_roles.clone(),
        required_tags: r.required_tags.clone(),
        require_bound_token: r.require_bound_token,
        ask_pdp: r.ask_pdp,
    })
}

/// Exact, trailing `/*`, or `/*`; otherwise already canonical, so that it
/// compares with canonical request paths.
fn rule_path(path: &str) -> Result<RulePath, String> {
    if path.is_empty() {
        return Err("is required".into());
    }
    if path == "/*" {
        return Ok(RulePath::Any);
    }
    let (base, under) = match path.strip_suffix("/*") {
        Some(base) => (base, true),
        None => (path, false),
    };
    if base.contains('*') {
        return Err(format!("`{path}`: `*` is only allowed as a whole trailing segment (`/admin/*`) or as `/*`"));
    }
    let canonical =
        CanonicalPath::parse(base, PathOptions { allow_semicolons: true }).map_err(|e| format!("`{path}`: {e}"))?;
    let canonical = canonical.for_matching();
    let written = if base.len() > 1 { base.strip_suffix('/').unwrap_or(base) } else { base };
    if canonical != written {
        return Err(format!("`{path}` is not in canonical form: write `{canonical}{}`", if under { "/*" } else { "" }));
    }
    Ok(match (under, canonical) {
        (true, "/") => RulePath::Any,
        (true, prefix) => RulePath::Under(prefix.to_owned()),
        (false, exact) => RulePath::Exact(exact.to_owned()),
    })
}

/// Names are unique; no two entries can select the same caller.
fn check_unique(p: &mut Problems, entries: &[Entry]) {
    let label = |e: &Entry| format!("{} ({})", if e.federated { "federated entry" } else { "entry" }, e.name);
    for (i, a) in entries.iter().enumerate() {
        for b in entries.iter().take(i) {
            if a.name == b.name {
                p.add(&label(a), "name", format!("`{}` is already used by an earlier entry", a.name));
            }
            if let Some(why) = overlap(a, b) {
                let field = match a.selector {
                    Selector::Exact(_) => "spiffe_id",
                    Selector::Prefix(_) => "spiffe_id_prefix",
                };
                let fix = match a.selector {
                    Selector::Exact(_) => format!("SPIFFE_ID_{}", env_name(&a.name)),
                    Selector::Prefix(_) => format!("SPIFFE_PREFIX_{}", env_name(&a.name)),
                };
                p.add(&label(a), field, format!("{why} `{}`; give each entry its own IDs (e.g. set {fix})", b.name));
            }
        }
    }
}

fn overlap(a: &Entry, b: &Entry) -> Option<&'static str> {
    use Selector::{Exact, Prefix};
    let under = |id: &str, prefix: &str| id.strip_prefix(prefix).is_some_and(|rest| rest.starts_with('/'));
    match (&a.selector, &b.selector) {
        (Exact(x), Exact(y)) if x == y => Some("selects the same SPIFFE ID as"),
        (Prefix(x), Prefix(y)) if x == y => Some("shares its prefix with"),
        (Exact(x), Prefix(y)) if under(x.as_str(), y) || x.as_str() == y => Some("is inside the prefix of"),
        (Prefix(x), Exact(y)) if under(y.as_str(), x) || y.as_str() == x => Some("covers the SPIFFE ID of"),
        (Prefix(x), Prefix(y)) if under(x, y) || under(y, x) => Some("overlaps the prefix of"),
        _ => None,
    }
}
