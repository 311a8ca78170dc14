//! The reference prototype's policy YAML as written (versions 4.x and 5.x).
//! Unknown fields are errors; every field the reference reads is here.

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPolicy {
    pub version: Option<String>,
    pub trust_domain: Option<String>,
    pub default_action: Option<String>,
    #[serde(default)]
    pub admin_governance: Option<RawGovernance>,
    #[serde(default)]
    pub policies: Vec<RawEntry>,
    #[serde(default)]
    pub federated_policies: Vec<RawEntry>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGovernance {
    #[serde(default)]
    pub enabled: bool,
    #[serde(default)]
    pub target_agent_tag: String,
    pub risk_enforcement: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEntry {
    #[serde(default)]
    pub spiffe_id: String,
    #[serde(default)]
    pub spiffe_id_prefix: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub entra_agent_id: String,
    #[serde(default)]
    pub entra_app_id: String,
    /// The calling agent's ID in any issuer's tokens (its agent-id claim).
    #[serde(default)]
    pub agent_id: String,
    /// The token issuers (configured names) this caller's tokens may come from; empty: any.
    #[serde(default)]
    pub issuers: Vec<String>,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub ca: RawCa,
    #[serde(default)]
    pub rules: Vec<RawRule>,
    /// Federated entries only: the caller's own trust domain.
    #[serde(default)]
    pub trust_domain: String,
    /// The reference rejects this too ("not yet supported"); parsed to say so.
    #[serde(default)]
    pub jwt_only: bool,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCa {
    pub agent_state: Option<String>,
    #[serde(default)]
    pub agent_tag: String,
    #[serde(default)]
    pub skip_target_tag_check: bool,
    /// Deprecated in the reference (ignored there too); accepted so old files load.
    #[serde(default)]
    pub blocked_risk_levels: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    #[serde(default)]
    pub path: String,
    #[serde(default)]
    pub methods: Vec<String>,
    #[serde(default)]
    pub action: String,
    #[serde(default)]
    pub require_jwt: bool,
    #[serde(default)]
    pub required_roles: Vec<String>,
    #[serde(default)]
    pub required_tags: BTreeMap<String, String>,
    /// RFC 8705; unset: `jwt.require_bound_tokens`.
    #[serde(default)]
    pub require_bound_token: Option<bool>,
    /// With `authzen.pdp.rules: marked`, only these rules ask the external PDP.
    #[serde(default)]
    pub ask_pdp: bool,
}
