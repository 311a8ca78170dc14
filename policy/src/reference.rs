//! The reference prototype's RBAC YAML: parsed, enriched from the
//! environment exactly as the reference's deployments relied on, then
//! validated into a [`PolicyDoc`] whose every value is checked.
//!
//! Enrichment (entry `name` upper-cased, each non-alphanumeric as `_`):
//! `ENTRA_ID_<NAME>` sets `entra_agent_id` and `AGENT_ID_<NAME>` sets
//! `agent_id` (all entries), `SPIFFE_PREFIX_<NAME>`
//! sets a domestic entry's `spiffe_id_prefix` (as the reference did), and
//! `SPIFFE_ID_<NAME>` sets an exact `spiffe_id` (domestic or federated; an
//! addition, since the reference had no way to fill federated placeholders).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use certs::{SpiffeId, TrustDomain};

pub mod raw;
mod validate;

pub use raw::RawPolicy;
pub use validate::is_guid;

/// One problem found in a policy file: which entry, which field, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// `policies[2] (budget-approval)`, `federated_policies[0] (google-budget-reader)` or `document`.
    pub entry: String,
    pub field: String,
    pub why: String,
}

/// Why a policy file cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    #[error("policy YAML: {0}")]
    Yaml(String),
    #[error("{}", display_problems(.0))]
    Invalid(Vec<Problem>),
}

fn display_problems(problems: &[Problem]) -> String {
    let lines: Vec<String> = problems.iter().map(ToString::to_string).collect();
    format!("{} problem(s):\n  {}", problems.len(), lines.join("\n  "))
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} `{}`: {}", self.entry, self.field, self.why)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Allow,
    Deny,
}

/// `admin_governance` (layer 4; carried for the later layers).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Governance {
    pub enabled: bool,
    pub target_agent_tag: String,
    pub risk_enforcement: String,
}

/// How an entry selects callers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    Exact(SpiffeId),
    /// Matches the ID itself or anything below it (`==` or prefix + `/`);
    /// stored without a trailing `/`.
    Prefix(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Ca {
    pub disabled: bool,
    pub agent_tag: String,
    pub skip_target_tag_check: bool,
}

/// A rule path: exact, trailing `/*` (which also matches the bare prefix), or `/*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RulePath {
    Any,
    Exact(String),
    /// The prefix without its `/*` (`/admin` for `/admin/*`).
    Under(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Methods {
    Any,
    /// Upper case.
    Listed(Vec<String>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub path: RulePath,
    pub methods: Methods,
    pub action: Action,
    pub require_jwt: bool,
    pub required_roles: Vec<String>,
    pub required_tags: BTreeMap<String, String>,
    /// RFC 8705: the token must be bound to the caller's certificate;
    /// `None` leaves it to the sidecar's `jwt.require_bound_tokens`.
    pub require_bound_token: Option<bool>,
    /// `ask_pdp: true`: with `authzen.pdp.rules: marked`, the external PDP is asked.
    pub ask_pdp: bool,
}

/// One caller policy (domestic or federated).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Shared with the audit events of the requests it decides, like `entra_agent_id`.
    pub name: Arc<str>,
    pub selector: Selector,
    pub federated: bool,
    pub trust_domain: TrustDomain,
    /// The agent's service principal object ID (`oid`), when known.
    pub entra_agent_id: Option<Arc<str>>,
    /// Its client ID (`azp` / `appid`), when known.
    pub entra_app_id: Option<String>,
    /// Its ID in any issuer's agent-id claim (`azp`, `client_id`, ...).
    pub agent_id: Option<Arc<str>>,
    /// The configured token issuers (by name) its tokens may come from; empty: any.
    pub issuers: Vec<Arc<str>>,
    pub description: String,
    pub ca: Ca,
    pub rules: Vec<Rule>,
}

/// A validated policy document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyDoc {
    pub version: String,
    pub trust_domain: TrustDomain,
    pub default_action: Action,
    pub governance: Governance,
    /// Domestic entries first, then federated, in file order.
    pub entries: Vec<Entry>,
}

impl Selector {
    pub fn matches(&self, id: &SpiffeId) -> bool {
        match self {
            Self::Exact(exact) => exact == id,
            Self::Prefix(prefix) => {
                let id = id.as_str();
                id == prefix || id.strip_prefix(prefix.as_str()).is_some_and(|rest| rest.starts_with('/'))
            }
        }
    }
}

impl RulePath {
    /// Matches a canonical path (trailing slash already ignored).
    pub fn matches(&self, path: &str) -> bool {
        match self {
            Self::Any => true,
            Self::Exact(exact) => exact == path,
            Self::Under(prefix) => {
                path == prefix || path.strip_prefix(prefix.as_str()).is_some_and(|rest| rest.starts_with('/'))
            }
        }
    }
}

impl Methods {
    pub fn matches(&self, method: &str) -> bool {
        match self {
            Self::Any => true,
            Self::Listed(methods) => methods.iter().any(|m| m.eq_ignore_ascii_case(method)),
        }
    }
}

impl Rule {
    pub fn matches(&self, method: &str, path: &str) -> bool {
        self.methods.matches(method) && self.path.matches(path)
    }
}

/// The environment variable suffix for an entry name: upper case, every
/// non-alphanumeric character as `_` (`budget-report` -> `BUDGET_REPORT`).
pub fn env_name(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_uppercase() } else { '_' }).collect()
}

impl PolicyDoc {
    /// Parses, enriches with `env`, and validates a reference policy file.
    pub fn from_yaml(yaml: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Self, ReferenceError> {
        let mut raw: RawPolicy = serde_norway::from_str(yaml).map_err(|e| ReferenceError::Yaml(e.to_string()))?;
        enrich(&mut raw, env);
        validate::validate(raw).map_err(ReferenceError::Invalid)
    }

    /// The entry for `caller`, if any (entries never overlap, so at most one matches).
    pub fn entry_for(&self, caller: &SpiffeId) -> Option<(usize, &Entry)> {
        self.entries.iter().enumerate().find(|(_, e)| e.selector.matches(caller))
    }
}

/// Applies the deployment environment to the raw entries.
pub fn enrich(raw: &mut RawPolicy, env: &dyn Fn(&str) -> Option<String>) {
    let get = |prefix: &str, name: &str| env(&format!("{prefix}{}", env_name(name))).filter(|v| !v.is_empty());
    let domestic = raw.policies.iter_mut().map(|e| (e, false));
    let federated = raw.federated_policies.iter_mut().map(|e| (e, true));
    for (entry, is_federated) in domestic.chain(federated) {
        if entry.name.is_empty() {
            continue;
        }
        if let Some(v) = get("ENTRA_ID_", &entry.name) {
            entry.entra_agent_id = v;
        }
        if let Some(v) = get("AGENT_ID_", &entry.name) {
            entry.agent_id = v;
        }
        if let Some(v) = get("SPIFFE_ID_", &entry.name) {
            entry.spiffe_id = v;
            entry.spiffe_id_prefix.clear();
        } else if let Some(v) = get("SPIFFE_PREFIX_", &entry.name).filter(|_| !is_federated) {
            entry.spiffe_id_prefix = v;
            entry.spiffe_id.clear();
        }
    }
}

#[cfg(test)]
mod tests;
