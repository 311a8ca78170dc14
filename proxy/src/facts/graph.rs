//! Microsoft Graph look-ups for Layers 4a/4b: a service principal's risk
//! (`identityProtection/riskyServicePrincipals`) and its custom security
//! attribute (the tag). Keyed by the policy's `entra_agent_id` only, never a
//! value the caller chose; cached with a TTL (concurrent misses share one
//! call); failures are not cached.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use serde_json::Value;

use super::entra_token::EntraTokens;
use super::http::{FetchError, HttpClient};
use crate::observe::metrics::Metrics;
use policy::RiskLevel;

/// A look-up that takes longer counts as unavailable.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, thiserror::Error)]
pub enum GraphError {
    #[error("no Graph token: {0}")]
    Token(String),
    #[error("graph: {0}")]
    Fetch(String),
    #[error("graph: timed out")]
    Timeout,
    #[error("graph: the answer does not say")]
    Unknown,
    #[error("graph: `entra_agent_id` is not an object ID")]
    NotAnObjectId,
}

/// How fresh one kind of Graph fact is (for `/mgmt/health`).
#[derive(Debug, Clone, Default)]
pub struct Freshness {
    pub last_success: Option<SystemTime>,
    /// The last failure, if it came after the last success.
    pub last_error: Option<String>,
}

pub struct Graph {
    endpoint: String,
    /// Of the risk and the tag look-ups.
    freshness: Mutex<(Freshness, Freshness)>,
    tokens: Arc<EntraTokens>,
    http: HttpClient,
    risk: moka::future::Cache<String, RiskLevel>,
    tags: moka::future::Cache<String, String>,
    /// The last tag seen per agent (beyond the TTL): a changed one is a
    /// change open streams are judged again for.
    last_tags: moka::sync::Cache<String, String>,
    attribute_set: String,
    attribute: String,
    metrics: Arc<Metrics>,
    /// Signalled when a refresh finds a caller's risk changed.
    changes: crate::changes::Changes,
}

impl Graph {
    pub fn new(
        endpoint: &str,
        tokens: Arc<EntraTokens>,
        http: HttpClient,
        (risk_ttl, tags_ttl): (Duration, Duration),
        (attribute_set, attribute): (String, String),
        metrics: Arc<Metrics>,
        changes: crate::changes::Changes,
    ) -> Self {
        Self {
            endpoint: endpoint.trim_end_matches('/').to_owned(),
            freshness: Mutex::default(),
            tokens,
            http,
            // Refreshed in the background every `risk.refresh`; an entry outlives three
            // failed refreshes before the risk counts as unknown.
            risk: moka::future::Cache::builder().max_capacity(10_000).time_to_live(risk_ttl * 3).build(),
            tags: moka::future::Cache::builder().max_capacity(10_000).time_to_live(tags_ttl).build(),
            last_tags: moka::sync::Cache::new(10_000),
            attribute_set,
            attribute,
            metrics,
            changes,
        }
    }

    /// The risk of the service principal `oid` (`None` level when not at risk).
    pub async fn risk(&self, oid: &str) -> Result<RiskLevel, Arc<GraphError>> {
        let url = self.url("identityProtection/riskyServicePrincipals", oid, "")?;
        // The look-up is boxed: a cold path, kept out of every request's future.
        self.risk.try_get_with(oid.to_owned(), async { Box::pin(self.lookup("risk", &url, parse_risk)).await }).await
    }

    /// `{endpoint}/v1.0/{collection}/{oid}{query}`. The policy validates
    /// `entra_agent_id` as a GUID; checked and encoded here as well, so no
    /// value can ever reach another Graph path or query.
    fn url(&self, collection: &str, oid: &str, query: &str) -> Result<String, Arc<GraphError>> {
        if !policy::reference::is_guid(oid) {
            return Err(Arc::new(GraphError::NotAnObjectId));
        }
        const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC.remove(b'-');
        let oid = percent_encoding::utf8_percent_encode(oid, SEGMENT);
        Ok(format!("{}/v1.0/{collection}/{oid}{query}", self.endpoint))
    }

    /// Re-reads the risk of every cached agent every `interval`, so warm
    /// requests never wait on Graph; a failed refresh keeps the last value.
    pub async fn refresh_risk_forever(self: Arc<Self>, interval: Duration) {
        loop {
            tokio::time::sleep(interval).await;
            let oids: Vec<String> = self.risk.iter().map(|(oid, _)| oid.as_ref().clone()).collect();
            for oid in oids {
                let Ok(url) = self.url("identityProtection/riskyServicePrincipals", &oid, "") else { continue };
                if let Ok(level) = self.lookup("risk", &url, parse_risk).await {
                    let changed = self.risk.get(&oid).await != Some(level);
                    self.risk.insert(oid, level).await;
                    if changed {
                        self.changes.bump();
                    }
                }
            }
        }
    }

    /// Re-reads the tag of every agent seen every `interval`: a tag changed
    /// in Entra is a change open streams are judged again for, even for a
    /// caller that sends nothing new (its stream would otherwise never
    /// trigger a look-up). A failed look-up keeps the last value.
    pub async fn refresh_tags_forever(self: Arc<Self>, interval: Duration) {
        loop {
            tokio::time::sleep(interval).await;
            self.refresh_tags().await;
        }
    }

    /// One pass of [`Self::refresh_tags_forever`].
    pub async fn refresh_tags(&self) {
        let oids: Vec<String> = self.last_tags.iter().map(|(oid, _)| oid.as_ref().clone()).collect();
        for oid in oids {
            let Ok(url) = self.url("servicePrincipals", &oid, "?$select=customSecurityAttributes") else { continue };
            let (set, attribute) = (self.attribute_set.as_str(), self.attribute.as_str());
            let Ok(tag) = self.lookup("tags", &url, |body| parse_tag(body, set, attribute)).await else { continue };
            if self.last_tags.get(&oid).is_some_and(|last| last != tag) {
                self.tags.insert(oid.clone(), tag.clone()).await;
                self.changes.bump();
            }
            self.last_tags.insert(oid, tag);
        }
    }

    /// The tag (custom security attribute) of the service principal `oid`.
    pub async fn tag(&self, oid: &str) -> Result<String, Arc<GraphError>> {
        let url = self.url("servicePrincipals", oid, "?$select=customSecurityAttributes")?;
        let (set, attribute) = (self.attribute_set.as_str(), self.attribute.as_str());
        self.tags
            .try_get_with(oid.to_owned(), async {
                // Boxed: a cold path, kept out of every request's future.
                let tag = Box::pin(self.lookup("tags", &url, |body| parse_tag(body, set, attribute))).await?;
                if self.last_tags.get(oid).is_some_and(|last| last != tag) {
                    self.changes.bump();
                }
                self.last_tags.insert(oid.to_owned(), tag.clone());
                Ok(tag)
            })
            .await
    }

    /// Freshness of the risk and the tag look-ups.
    pub fn freshness(&self) -> (Freshness, Freshness) {
        self.freshness.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    async fn lookup<T>(
        &self,
        api: &'static str,
        url: &str,
        parse: impl Fn(Option<&[u8]>) -> Result<T, GraphError>,
    ) -> Result<T, GraphError> {
        let scope = format!("{}/.default", self.endpoint);
        let attempt = async {
            let token = self.tokens.token(&scope).await.map_err(|e| GraphError::Token(e.to_string()))?;
            match self.http.get_with_token(url, &token).await {
                Ok(body) => parse(Some(&body)),
                Err(FetchError::Status(404)) => parse(None),
                Err(e) => Err(GraphError::Fetch(e.to_string())),
            }
        };
        let result = tokio::time::timeout(LOOKUP_TIMEOUT, attempt).await.unwrap_or(Err(GraphError::Timeout));
        self.metrics.graph_request(api, if result.is_ok() { "ok" } else { "error" });
        {
            let mut freshness = self.freshness.lock().unwrap_or_else(PoisonError::into_inner);
            let f = if api == "tags" { &mut freshness.1 } else { &mut freshness.0 };
            match &result {
                Ok(_) => *f = Freshness { last_success: Some(SystemTime::now()), last_error: None },
                Err(e) => f.last_error = Some(e.to_string()),
            }
        }
        if let Err(e) = &result {
            tracing::warn!(api, error = %e, "graph look-up failed");
        }
        result
    }
}

/// `riskyServicePrincipals/{id}`: a bare object or `{"value": [...]}`; 404
/// (or nothing) = not at risk; `hidden` = unknown; dismissed, remediated or
/// confirmed safe = not at risk.
fn parse_risk(body: Option<&[u8]>) -> Result<RiskLevel, GraphError> {
    let Some(body) = body else { return Ok(RiskLevel::None) };
    let json: Value = serde_json::from_slice(body).map_err(|_| GraphError::Unknown)?;
    let item = match json.get("value") {
        Some(Value::Array(items)) => match items.first() {
            Some(item) => item.clone(),
            None => return Ok(RiskLevel::None),
        },
        _ => json,
    };
    let state = item.get("riskState").and_then(Value::as_str).unwrap_or_default();
    if matches!(state, "dismissed" | "remediated" | "confirmedSafe" | "none") {
        return Ok(RiskLevel::None);
    }
    // `hidden` and anything Graph adds later are unknown.
    let level = item.get("riskLevel").and_then(Value::as_str).ok_or(GraphError::Unknown)?;
    level.parse().map_err(|_| GraphError::Unknown)
}

/// `customSecurityAttributes.<set>.<attribute>`; `@odata.type` keys are
/// metadata; a missing value is unknown.
fn parse_tag(body: Option<&[u8]>, set: &str, attribute: &str) -> Result<String, GraphError> {
    let json: Value = serde_json::from_slice(body.ok_or(GraphError::Unknown)?).map_err(|_| GraphError::Unknown)?;
    json.get("customSecurityAttributes")
        .and_then(|c| c.get(set))
        .and_then(|s| s.get(attribute))
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or(GraphError::Unknown)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn risk_answers() {
        let parse = |s: &str| parse_risk(Some(s.as_bytes())).ok();
        assert_eq!(parse_risk(None).ok(), Some(RiskLevel::None));
        assert_eq!(parse(r#"{"riskLevel":"high","riskState":"atRisk"}"#), Some(RiskLevel::High));
        assert_eq!(parse(r#"{"value":[{"riskLevel":"medium","riskState":"atRisk"}]}"#), Some(RiskLevel::Medium));
        assert_eq!(parse(r#"{"value":[]}"#), Some(RiskLevel::None));
        assert_eq!(parse(r#"{"riskLevel":"high","riskState":"dismissed"}"#), Some(RiskLevel::None));
        assert_eq!(parse(r#"{"riskLevel":"high","riskState":"confirmedSafe"}"#), Some(RiskLevel::None));
        assert_eq!(parse(r#"{"riskLevel":"hidden","riskState":"atRisk"}"#), None);
        assert_eq!(parse("not json"), None);
    }

    #[test]
    fn tag_answers() {
        let body = r##"{"customSecurityAttributes":{"AgentIdentity":{"@odata.type":"#microsoft.graph.customSecurityAttributeValue","Department":"finance"}}}"##;
        assert_eq!(parse_tag(Some(body.as_bytes()), "AgentIdentity", "Department").ok().as_deref(), Some("finance"));
        assert!(parse_tag(Some(br#"{"customSecurityAttributes":{}}"#), "AgentIdentity", "Department").is_err());
        assert!(parse_tag(None, "AgentIdentity", "Department").is_err());
    }

    #[test]
    fn only_object_ids_reach_a_graph_url() {
        let graph = Graph::new(
            "https://graph.example",
            EntraTokens::new(
                &crate::config::EntraSection {
                    client_id: "c".into(),
                    tenant_id: "t".into(),
                    authority: "https://login.example".into(),
                    graph_endpoint: "https://graph.example".into(),
                    assertion: crate::config::AssertionSource::File("token".into()),
                },
                HttpClient::new().unwrap(),
            ),
            HttpClient::new().unwrap(),
            (Duration::from_secs(60), Duration::from_secs(60)),
            ("AgentIdentity".into(), "Department".into()),
            Arc::new(Metrics::new().unwrap()),
            crate::changes::Changes::default(),
        );
        let oid = "00000000-0000-4000-8000-0000000000a1";
        assert_eq!(
            graph.url("servicePrincipals", oid, "?$select=x").unwrap(),
            format!("https://graph.example/v1.0/servicePrincipals/{oid}?$select=x")
        );
        for hostile in ["../users/x", "a?$select=b", "x/y", "", "00000000-0000-4000-8000-0000000000a1/../x"] {
            assert!(graph.url("servicePrincipals", hostile, "").is_err(), "{hostile}");
        }
    }

    /// A tag changed in Entra is a change (open streams are judged again),
    /// found by the background refresh even when no request asks for it.
    #[cfg(feature = "dev")]
    #[tokio::test]
    async fn a_changed_tag_is_a_change() {
        use certs::dev::JwtKey;
        use serde_json::json;
        let dir = tempfile::tempdir().unwrap();
        let (idp, _, _task) = crate::cmd::dev_idp::start(&dir.path().join("idp")).await.unwrap();
        let key = JwtKey::generate().unwrap();
        idp.trust_assertion_keys(json!({"keys": [key.jwk().unwrap()]}).to_string().as_bytes()).unwrap();
        idp.register_app("backend", crate::cmd::dev_idp::AppRegistration { oid: "b".into(), roles: vec![] });
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        let claims =
            json!({"iss": "https://k8s.example", "sub": "sa", "aud": ["api://AzureADTokenExchange"], "exp": now + 600});
        std::fs::write(dir.path().join("token"), key.sign(&claims).unwrap()).unwrap();
        let section = crate::config::EntraSection {
            client_id: "backend".into(),
            tenant_id: "t".into(),
            authority: idp.authority(),
            graph_endpoint: idp.authority(),
            assertion: crate::config::AssertionSource::File(dir.path().join("token")),
        };
        let changes = crate::changes::Changes::default();
        let graph = Graph::new(
            &idp.authority(),
            EntraTokens::new(&section, HttpClient::new().unwrap()),
            HttpClient::new().unwrap(),
            (Duration::from_secs(60), Duration::from_secs(3600)),
            ("AgentIdentity".into(), "Department".into()),
            Arc::new(Metrics::new().unwrap()),
            changes.clone(),
        );
        let oid = "00000000-0000-4000-8000-0000000000a1";
        idp.set_graph_attribute(oid, "AgentIdentity", "Department", "finance");
        assert_eq!(graph.tag(oid).await.unwrap(), "finance");
        graph.refresh_tags().await;
        assert_eq!(changes.generation(), 0, "an unchanged tag is no change");
        idp.set_graph_attribute(oid, "AgentIdentity", "Department", "marketing");
        graph.refresh_tags().await;
        assert_eq!(changes.generation(), 1);
        assert_eq!(graph.tag(oid).await.unwrap(), "marketing", "the cache follows the refresh, not its TTL");
    }
}
