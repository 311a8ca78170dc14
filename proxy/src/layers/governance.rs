//! Layers 4a and 4b: the caller's risk level and tag. Values pushed by an
//! operator (the `/mgmt` API) always win over the configured source (an
//! operator's quarantine must not be overridden); the policy's `ca` fields
//! supply the rest.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};

use certs::SpiffeId;
use policy::Reason;
use policy::RiskLevel;
use policy::jwt::Claims;
use policy::reference::{Entry, Governance, Rule};

use crate::changes::Changes;
use crate::config::{FactSource, OnUnavailable, RiskSection, TagsSection};
use crate::facts::graph::Graph;

/// What Layers 4a and 4b found (for the audit event) and their verdict.
#[derive(Debug)]
pub struct Findings {
    /// The audit's `risk_level`: a level, or `unknown`; `None` when 4a did not run.
    pub risk_level: Option<&'static str>,
    /// The caller's tag, when 4b looked it up.
    pub caller_tag: Option<String>,
    pub verdict: Result<(), Reason>,
}

/// Operator pushes, by caller SPIFFE ID. Each one is a change open
/// streams are judged again for.
#[derive(Debug, Default)]
pub struct Pushes {
    risk: RwLock<HashMap<String, RiskLevel>>,
    tags: RwLock<HashMap<String, String>>,
    changes: Changes,
}

impl Pushes {
    /// Sets (or with `None` removes) the pushed risk level of `caller`.
    pub fn set_risk(&self, caller: &SpiffeId, level: Option<RiskLevel>) {
        self.set(&self.risk, caller, level);
    }

    pub fn risk(&self, caller: &SpiffeId) -> Option<RiskLevel> {
        self.risk.read().unwrap_or_else(PoisonError::into_inner).get(caller.as_str()).copied()
    }

    /// Sets (or with `None` removes) the pushed tag of `caller`.
    pub fn set_tag(&self, caller: &SpiffeId, tag: Option<String>) {
        self.set(&self.tags, caller, tag);
    }

    /// One push (or its removal), then the change signal for open streams.
    fn set<T>(&self, map: &RwLock<HashMap<String, T>>, caller: &SpiffeId, value: Option<T>) {
        let mut map = map.write().unwrap_or_else(PoisonError::into_inner);
        match value {
            Some(value) => map.insert(caller.to_string(), value),
            None => map.remove(caller.as_str()),
        };
        drop(map);
        self.changes.bump();
    }

    pub fn tag(&self, caller: &SpiffeId) -> Option<String> {
        self.tags.read().unwrap_or_else(PoisonError::into_inner).get(caller.as_str()).cloned()
    }

    pub fn risks(&self) -> HashMap<String, RiskLevel> {
        self.risk.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    pub fn tags(&self) -> HashMap<String, String> {
        self.tags.read().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

/// The `risk` and `tags` sections in force (a reload may change them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub risk: RiskSection,
    pub tags: TagsSection,
}

/// Where facts with `source: graph` come from.
pub enum GraphFacts {
    /// Microsoft Graph, cached and refreshed in the background.
    Live(Arc<Graph>),
    /// Stated by whoever asks (`explain` has no network): what Graph would
    /// answer for the caller; `None` is unknown.
    Stated { risk: Option<RiskLevel>, tag: Option<String> },
}

/// Layers 4a and 4b for one request, after Layers 2 and 3 allowed it.
pub struct Governor {
    pub pushes: Pushes,
    settings: arc_swap::ArcSwap<Settings>,
    /// Present when a source is `graph`.
    graph: Option<GraphFacts>,
    changes: Changes,
}

impl Governor {
    /// `changes` is signalled on every push and settings change.
    pub fn new(risk: RiskSection, tags: TagsSection, graph: Option<GraphFacts>, changes: Changes) -> Self {
        let settings = arc_swap::ArcSwap::from_pointee(Settings { risk, tags });
        let pushes = Pushes { changes: changes.clone(), ..Pushes::default() };
        Self { pushes, settings, graph, changes }
    }

    /// The settings in force: one snapshot per use.
    pub fn settings(&self) -> Arc<Settings> {
        self.settings.load_full()
    }

    /// Applies reloaded `risk` and `tags` sections (their sources stay: a
    /// change of source needs a restart, see `Config::restart_required`).
    pub fn configure(&self, risk: RiskSection, tags: TagsSection) {
        self.settings.store(Arc::new(Settings { risk, tags }));
        self.changes.bump();
    }

    /// How fresh the Graph risk and tag facts are (`None` without Graph).
    pub fn graph_freshness(&self) -> Option<(crate::facts::graph::Freshness, crate::facts::graph::Freshness)> {
        match &self.graph {
            Some(GraphFacts::Live(graph)) => Some(graph.freshness()),
            _ => None,
        }
    }

    /// The caller's risk level: a push, else the source (`mgmt`: `low`;
    /// `graph`: the agent's service principal). `None` = unknown.
    pub async fn risk_of(&self, caller: &SpiffeId, entry: &Entry) -> Option<RiskLevel> {
        if let Some(pushed) = self.pushes.risk(caller) {
            return Some(pushed);
        }
        let source = self.settings.load().risk.source;
        match (source, &self.graph, entry.entra_agent_id.as_deref()) {
            (FactSource::Local, _, _) => Some(RiskLevel::Low),
            (FactSource::Graph, Some(GraphFacts::Live(graph)), Some(oid)) => graph.risk(oid).await.ok(),
            (FactSource::Graph, Some(GraphFacts::Stated { risk, .. }), _) => *risk,
            (FactSource::Graph, _, _) => None,
        }
    }

    /// The caller's tag: a push, else the source (`policy`: `ca.agent_tag`;
    /// `graph`: the custom security attribute). `None` = unknown.
    pub async fn tag_of(&self, caller: &SpiffeId, entry: &Entry) -> Option<String> {
        if let Some(pushed) = self.pushes.tag(caller) {
            return Some(pushed);
        }
        let source = self.settings.load().tags.source;
        match (source, &self.graph, entry.entra_agent_id.as_deref()) {
            (FactSource::Local, _, _) => Some(entry.ca.agent_tag.clone()),
            (FactSource::Graph, Some(GraphFacts::Live(graph)), Some(oid)) => graph.tag(oid).await.ok(),
            (FactSource::Graph, Some(GraphFacts::Stated { tag, .. }), _) => tag.clone(),
            (FactSource::Graph, _, _) => None,
        }
    }

    /// 4a then 4b, and what they found. Agent state and the target tag apply when
    /// `admin_governance.enabled` (as in the reference); blocked risk levels
    /// and a rule's `required_tags` always apply.
    pub async fn check(
        &self,
        governance: &Governance,
        caller: &SpiffeId,
        entry: &Entry,
        rule: Option<&Rule>,
        claims: Option<&Claims>,
    ) -> Findings {
        let mut found = Findings { risk_level: None, caller_tag: None, verdict: Ok(()) };
        found.verdict = self.judge(governance, caller, entry, rule, claims, &mut found).await;
        found
    }

    async fn judge(
        &self,
        governance: &Governance,
        caller: &SpiffeId,
        entry: &Entry,
        rule: Option<&Rule>,
        claims: Option<&Claims>,
        found: &mut Findings,
    ) -> Result<(), Reason> {
        if governance.enabled && entry.ca.disabled {
            return Err(Reason::AgentDisabled);
        }
        let settings = self.settings();
        let risk = self.risk_of(caller, entry).await;
        found.risk_level = Some(risk.map_or("unknown", RiskLevel::as_str));
        match risk {
            Some(level) if settings.risk.blocked_levels.contains(&level) => return Err(Reason::HighRiskAgentBlocked),
            Some(_) => {}
            None if settings.risk.on_unavailable == OnUnavailable::Deny => return Err(Reason::RiskUnavailable),
            None => tracing::warn!(caller = %caller, "risk unknown; allowed by risk.on_unavailable: allow"),
        }
        if governance.enabled && !entry.ca.skip_target_tag_check {
            let tag = self.tag_of(caller, entry).await;
            let verdict = match &tag {
                Some(tag) if tag.is_empty() || *tag != governance.target_agent_tag => Err(Reason::AgentTagMismatch),
                Some(_) => Ok(()),
                None if settings.tags.on_unavailable == OnUnavailable::Deny => Err(Reason::TagsUnavailable),
                None => {
                    tracing::warn!(caller = %caller, "tag unknown; allowed by tags.on_unavailable: allow");
                    Ok(())
                }
            };
            found.caller_tag = tag;
            verdict?;
        }
        let required = rule.map(|r| &r.required_tags).filter(|t| !t.is_empty());
        if let Some(required) = required {
            let matched = claims.is_some_and(|c| required.iter().all(|(k, v)| c.strings.get(k) == Some(v)));
            if !matched {
                return Err(Reason::MissingRequiredTag);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use futures_util::FutureExt;
    use policy::reference::{Action, Ca, Methods, RulePath, Selector};

    use super::*;

    const CALLER: &str = "spiffe://a.example/reader";

    fn entry(ca: Ca) -> Entry {
        Entry {
            name: "reader".into(),
            selector: Selector::Exact(CALLER.parse().unwrap()),
            federated: false,
            trust_domain: "a.example".parse().unwrap(),
            entra_agent_id: Some("00000000-0000-4000-8000-0000000000a1".into()),
            entra_app_id: None,
            agent_id: None,
            issuers: Vec::new(),
            description: String::new(),
            ca,
            rules: Vec::new(),
        }
    }

    fn governance(enabled: bool) -> Governance {
        Governance { enabled, target_agent_tag: "finance".into(), risk_enforcement: String::new() }
    }

    /// Both facts from Graph (stated, as `explain` does), with the given
    /// answers and what to do when Graph has none.
    fn governor(risk: Option<RiskLevel>, tag: Option<&str>, on_unavailable: OnUnavailable) -> Governor {
        let risk_section = RiskSection {
            source: FactSource::Graph,
            blocked_levels: vec![RiskLevel::High],
            refresh: Duration::from_secs(60),
            on_unavailable,
        };
        let tags = TagsSection {
            source: FactSource::Graph,
            attribute_set: "set".into(),
            attribute: "tag".into(),
            ttl: Duration::from_secs(60),
            on_unavailable,
        };
        let stated = GraphFacts::Stated { risk, tag: tag.map(str::to_owned) };
        Governor::new(risk_section, tags, Some(stated), Changes::default())
    }

    fn check(
        governor: &Governor,
        governance: &Governance,
        entry: &Entry,
        rule: Option<&Rule>,
        claims: Option<&Claims>,
    ) -> Findings {
        let caller: SpiffeId = CALLER.parse().unwrap();
        governor.check(governance, &caller, entry, rule, claims).now_or_never().expect("stated facts need no network")
    }

    #[test]
    fn graph_facts_decide_and_an_operator_push_wins_over_them() {
        let enabled = governance(true);
        let agent = entry(Ca::default());
        let calm = governor(Some(RiskLevel::None), Some("finance"), OnUnavailable::Deny);
        let found = check(&calm, &enabled, &agent, None, None);
        assert_eq!(
            (found.verdict, found.risk_level, found.caller_tag.as_deref()),
            (Ok(()), Some("none"), Some("finance"))
        );

        let risky = governor(Some(RiskLevel::High), Some("finance"), OnUnavailable::Deny);
        let found = check(&risky, &enabled, &agent, None, None);
        assert_eq!((found.verdict, found.caller_tag), (Err(Reason::HighRiskAgentBlocked), None), "4b not reached");
        let caller = CALLER.parse().unwrap();
        risky.pushes.set_risk(&caller, Some(RiskLevel::Low));
        assert_eq!(check(&risky, &enabled, &agent, None, None).verdict, Ok(()), "the push wins");

        calm.pushes.set_tag(&caller, Some(String::new()));
        assert_eq!(
            check(&calm, &enabled, &agent, None, None).verdict,
            Err(Reason::AgentTagMismatch),
            "an empty tag never matches"
        );
    }

    #[test]
    fn unknown_facts_follow_on_unavailable() {
        let enabled = governance(true);
        let agent = entry(Ca::default());
        let strict = governor(None, Some("finance"), OnUnavailable::Deny);
        let found = check(&strict, &enabled, &agent, None, None);
        assert_eq!((found.verdict, found.risk_level), (Err(Reason::RiskUnavailable), Some("unknown")));
        let no_tag = governor(Some(RiskLevel::Low), None, OnUnavailable::Deny);
        assert_eq!(check(&no_tag, &enabled, &agent, None, None).verdict, Err(Reason::TagsUnavailable));
        let lenient = governor(None, None, OnUnavailable::Allow);
        assert_eq!(check(&lenient, &enabled, &agent, None, None).verdict, Ok(()));
    }

    #[test]
    fn agent_state_and_target_tag_apply_only_under_admin_governance() {
        let stranger = governor(Some(RiskLevel::Low), Some("marketing"), OnUnavailable::Deny);
        let disabled = entry(Ca { disabled: true, ..Ca::default() });
        assert_eq!(check(&stranger, &governance(true), &disabled, None, None).verdict, Err(Reason::AgentDisabled));
        assert_eq!(check(&stranger, &governance(false), &disabled, None, None).verdict, Ok(()));
        let skips = entry(Ca { skip_target_tag_check: true, ..Ca::default() });
        assert_eq!(check(&stranger, &governance(true), &skips, None, None).verdict, Ok(()));
        // Blocked levels apply whatever `admin_governance` says.
        let risky = governor(Some(RiskLevel::High), Some("finance"), OnUnavailable::Deny);
        assert_eq!(check(&risky, &governance(false), &skips, None, None).verdict, Err(Reason::HighRiskAgentBlocked));
    }

    #[test]
    fn a_rules_required_tags_must_all_be_claims_of_the_token() {
        let calm = governor(Some(RiskLevel::Low), Some("finance"), OnUnavailable::Deny);
        let agent = entry(Ca::default());
        let rule = Rule {
            path: RulePath::Any,
            methods: Methods::Any,
            action: Action::Allow,
            require_jwt: true,
            required_roles: Vec::new(),
            required_tags: BTreeMap::from([("dept".into(), "finance".into()), ("tier".into(), "gold".into())]),
            require_bound_token: None,
            ask_pdp: false,
        };
        let claims = |pairs: &[(&str, &str)]| Claims {
            issuer: Arc::from("entra"),
            entra: true,
            cnf: Default::default(),
            kid: "k".into(),
            exp: 0,
            oid: None,
            client_id: None,
            roles: Arc::new([]),
            strings: pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        };
        let on = governance(false);
        let both = claims(&[("dept", "finance"), ("tier", "gold")]);
        assert_eq!(check(&calm, &on, &agent, Some(&rule), Some(&both)).verdict, Ok(()));
        let one = claims(&[("dept", "finance"), ("tier", "silver")]);
        assert_eq!(check(&calm, &on, &agent, Some(&rule), Some(&one)).verdict, Err(Reason::MissingRequiredTag));
        assert_eq!(
            check(&calm, &on, &agent, Some(&rule), None).verdict,
            Err(Reason::MissingRequiredTag),
            "no token, no tags"
        );
    }
}
