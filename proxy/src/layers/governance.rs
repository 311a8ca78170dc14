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
        let mut map = self.risk.write().unwrap_or_else(PoisonError::into_inner);
        match level {
            Some(level) => map.insert(caller.to_string(), level),
            None => map.remove(caller.as_str()),
        };
        drop(map);
        self.changes.bump();
    }

    pub fn risk(&self, caller: &SpiffeId) -> Option<RiskLevel> {
        self.risk.read().unwrap_or_else(PoisonError::into_inner).get(caller.as_str()).copied()
    }

    /// Sets (or with `None` removes) the pushed tag of `caller`.
    pub fn set_tag(&self, caller: &SpiffeId, tag: Option<String>) {
        let mut map = self.tags.write().unwrap_or_else(PoisonError::into_inner);
        match tag {
            Some(tag) => map.insert(caller.to_string(), tag),
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
