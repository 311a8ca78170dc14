//! The external decision (AuthZEN Authorization API 1.0, the sidecar as a
//! PEP): after Layers 2-4 allow, `authzen.pdp` is asked. `"decision": true`
//! allows, `false` denies (`pdp_denied`); anything else (a timeout, a
//! connect error, a non-2xx status, a redirect, a body that is not a JSON
//! object with a boolean `decision`, one over 64 KiB) is `pdp_unavailable`,
//! unless `fail_open`. Allows are cached for `cache_ttl`, keyed by a SHA-256
//! of every field of the request sent (claims included), computed without
//! building it: the body is only built on a miss. Concurrent misses for one
//! key share one call.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use bytes::Bytes;
use certs::{IdentityWatch, SpiffeId};
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{self, HeaderValue};
use policy::Reason;
use serde::Serialize;
use serde_json::{Value, json};

use crate::config::{PdpConfig, PdpRules};
use crate::facts::entra_token::EntraTokens;
use crate::facts::http::HttpClient;
use crate::observe::metrics::Metrics;

#[cfg(test)]
mod tests;

/// Answers larger than this are `pdp_unavailable`.
pub const MAX_ANSWER_BYTES: usize = 64 * 1024;
/// The answer's `context` goes into the audit event only up to this size (serialized).
const MAX_AUDIT_CONTEXT: usize = 512;

/// Why the PDP gave no usable answer (`pdp_unavailable`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    Timeout,
    Connect,
    Status,
    TooLarge,
    BadAnswer,
    /// We have no SVID yet: the resource's `target` is unknown.
    NoIdentity,
    /// `entra_token`: the sidecar could not obtain its token for the PDP.
    Token,
}

/// A usable answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub decision: bool,
    /// The answer's `context` if small (peer-controlled: for the audit event only).
    pub context: Option<Value>,
}

/// What the audit event's `pdp` object says.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct PdpAudit {
    /// `None` when the PDP gave no usable answer.
    pub decision: Option<bool>,
    pub cached: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'static str>,
    /// `fail_open` let a failed call through.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub failed_open: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub context: Option<Value>,
}

/// What the PDP is asked about one request.
#[derive(Debug, Clone)]
pub struct Question<'a> {
    pub caller: &'a SpiffeId,
    pub agent_id: Option<&'a str>,
    pub method: &'a str,
    /// The canonical path.
    pub path: &'a str,
    /// The validated token's claims, when one was: sent in the
    /// issuer-independent form of [`policy::jwt::normalized`]...
    pub claims: Option<&'a policy::jwt::Claims>,
    /// ...with the string claims the matched rule's `required_tags` name.
    pub tag_claims: Option<&'a std::collections::BTreeMap<String, String>>,
    pub request_id: Option<&'a str>,
}

/// The live PDP client (`None` without `authzen.pdp`), and what rebuilding it needs.
#[derive(Clone)]
pub struct PdpSlot {
    pub current: Arc<arc_swap::ArcSwapOption<Pdp>>,
    identity: IdentityWatch,
    metrics: Arc<Metrics>,
    /// The sidecar's Entra tokens, for `entra_token`.
    tokens: Option<Arc<EntraTokens>>,
}

impl PdpSlot {
    pub fn new(
        config: Option<&PdpConfig>,
        identity: IdentityWatch,
        metrics: Arc<Metrics>,
        tokens: Option<Arc<EntraTokens>>,
    ) -> anyhow::Result<Self> {
        let slot = Self { current: Arc::default(), identity, metrics, tokens };
        slot.current.store(slot.build(config)?);
        Ok(slot)
    }

    /// A new client with an empty cache for `config` (a reload validates with this, then stores it).
    pub fn build(&self, config: Option<&PdpConfig>) -> anyhow::Result<Option<Arc<Pdp>>> {
        let new = |c| Pdp::new(c, self.identity.clone(), self.metrics.clone(), self.tokens.clone());
        config.map(|c| new(c).map(Arc::new)).transpose()
    }
}

enum Transport {
    /// WebPKI roots (and `SSL_CERT_FILE`), `HTTPS_PROXY`: like the identity endpoints.
    Web(HttpClient),
    /// mTLS with our SVID; the PDP's SPIFFE ID must match `server_id`.
    Spiffe(crate::facts::http::SpiffeClient),
}

/// The PEP's client for `authzen.pdp`.
pub struct Pdp {
    config: PdpConfig,
    uri: hyper::Uri,
    transport: Transport,
    bearer: Option<HeaderValue>,
    /// With `entra_token`: where the bearer token comes from.
    tokens: Option<Arc<EntraTokens>>,
    /// Allow answers only; `None` with `cache_ttl: 0s`.
    cache: Option<moka::future::Cache<[u8; 32], Arc<Answer>>>,
    identity: IdentityWatch,
    metrics: Arc<Metrics>,
}

impl Pdp {
    pub fn new(
        config: &PdpConfig,
        identity: IdentityWatch,
        metrics: Arc<Metrics>,
        tokens: Option<Arc<EntraTokens>>,
    ) -> anyhow::Result<Self> {
        let uri: hyper::Uri = config.url.parse()?;
        let tokens = match (&config.entra_scope, tokens) {
            (None, _) => None,
            (Some(_), Some(tokens)) => Some(tokens),
            (Some(_), None) => anyhow::bail!("authzen.pdp.entra_token needs the `entra` section"),
        };
        let transport = match &config.server_id {
            Some(expected) => Transport::Spiffe(crate::facts::http::spiffe_client(identity.clone(), expected.clone())?),
            None => Transport::Web(HttpClient::new()?),
        };
        let bearer = match &config.bearer {
            Some(key) => {
                let mut value = HeaderValue::from_str(&format!("Bearer {}", key.value))?;
                value.set_sensitive(true);
                Some(value)
            }
            None => None,
        };
        let cache = (!config.cache_ttl.is_zero()).then(|| {
            moka::future::Cache::builder().max_capacity(config.cache_size).time_to_live(config.cache_ttl).build()
        });
        if config.fail_open {
            tracing::warn!(
                url = %config.url,
                "authzen.pdp.fail_open is true: when the PDP cannot answer, requests are ALLOWED \
                 (counted as a2a_pdp_requests_total{{result=\"error\"}})"
            );
        }
        Ok(Self { config: config.clone(), uri, transport, bearer, tokens, cache, identity, metrics })
    }

    pub fn config(&self) -> &PdpConfig {
        &self.config
    }

    /// Whether a request that a `rule` allowed goes to the PDP.
    pub fn applies(&self, rule: Option<&policy::reference::Rule>) -> bool {
        match self.config.rules {
            PdpRules::All => true,
            PdpRules::Marked => rule.is_some_and(|r| r.ask_pdp),
        }
    }

    /// Asks (or finds in the cache); `Err` is the denial, after `fail_open`.
    pub async fn decide(&self, question: Question<'_>, audit: &mut PdpAudit) -> Result<(), Reason> {
        let outcome = self.ask(question, audit).await;
        match outcome {
            Ok(answer) => {
                audit.decision = Some(answer.decision);
                audit.context.clone_from(&answer.context);
                if answer.decision { Ok(()) } else { Err(Reason::PdpDenied) }
            }
            Err(failure) => {
                audit.error = Some(failure.as_str());
                if self.config.fail_open {
                    audit.failed_open = true;
                    tracing::warn!(error = failure.as_str(), "authzen.pdp failed; allowed (fail_open)");
                    Ok(())
                } else {
                    Err(Reason::PdpUnavailable)
                }
            }
        }
    }

    /// The answer, from the cache, a call in flight for the same request, or a call of our own.
    async fn ask(&self, question: Question<'_>, audit: &mut PdpAudit) -> Result<Arc<Answer>, Failure> {
        let identity = self.identity.current().ok_or(Failure::NoIdentity)?;
        let target = identity.svid().id().as_str();
        let Some((cache, key)) = self.cache.as_ref().zip(cache_key(&question, target)) else {
            let body = Bytes::from(request_body(&question, target).to_string());
            let answer = Box::pin(self.call(body, question.request_id)).await;
            self.count(answer.as_ref().map(|a| a.decision));
            return answer.map(Arc::new);
        };
        // The warm path: no request built, no call.
        if let Some(answer) = cache.get(&key).await {
            audit.cached = true;
            self.metrics.authzen.pdp_request("cached");
            return Ok(answer);
        }
        let called = AtomicBool::new(false);
        let request_id = question.request_id;
        let found = cache
            .try_get_with(key, async {
                called.store(true, Ordering::Relaxed);
                let body = Bytes::from(request_body(&question, target).to_string());
                // Boxed: the call is the cold path, kept out of every request's future.
                let answer = Box::pin(self.call(body, request_id)).await;
                self.count(answer.as_ref().map(|a| a.decision));
                match answer {
                    // Only an allow is kept; a deny reaches the waiters as an "error".
                    Ok(answer) if answer.decision => Ok(Arc::new(answer)),
                    Ok(answer) => Err(Ok(answer)),
                    Err(failure) => Err(Err(failure)),
                }
            })
            .await;
        let ours = called.load(Ordering::Relaxed);
        audit.cached = !ours;
        match found {
            Ok(answer) => {
                if !ours {
                    self.metrics.authzen.pdp_request("cached");
                }
                Ok(answer)
            }
            Err(shared) => {
                let outcome = match shared.as_ref() {
                    Ok(deny) => Ok(Arc::new(deny.clone())),
                    Err(failure) => Err(*failure),
                };
                if !ours {
                    self.count(outcome.as_ref().map(|a| a.decision));
                }
                outcome
            }
        }
    }

    fn count(&self, outcome: Result<bool, &Failure>) {
        self.metrics.authzen.pdp_request(match outcome {
            Ok(true) => "allow",
            Ok(false) => "deny",
            Err(_) => "error",
        });
    }

    /// One call, bounded by `timeout` from connect to the last byte of the answer.
    async fn call(&self, body: Bytes, request_id: Option<&str>) -> Result<Answer, Failure> {
        let started = Instant::now();
        let mut request = hyper::Request::post(self.uri.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::ACCEPT, "application/json");
        if let Some(id) = request_id.and_then(|id| HeaderValue::from_str(id).ok()) {
            request = request.header("x-request-id", id);
        }
        if let Some(bearer) = &self.bearer {
            request = request.header(header::AUTHORIZATION, bearer.clone());
        }
        let exchange = async {
            // The federated token is part of the call: it too is bounded by `timeout`.
            if let (Some(tokens), Some(scope)) = (&self.tokens, &self.config.entra_scope) {
                let token = tokens.token(scope).await.map_err(|e| {
                    tracing::warn!(error = %e, "authzen.pdp: no Entra token for the PDP");
                    Failure::Token
                })?;
                let mut value = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| Failure::Token)?;
                value.set_sensitive(true);
                request = request.header(header::AUTHORIZATION, value);
            }
            let request = request.body(Full::new(body)).map_err(|_| Failure::Connect)?;
            let response = match &self.transport {
                Transport::Web(client) => client.raw(request).await,
                Transport::Spiffe(client) => client.request(request).await,
            };
            let response = response.map_err(|e| {
                tracing::debug!(error = %crate::dataplane::upstream::DisplayChain(&e), "authzen.pdp: no answer");
                Failure::Connect
            })?;
            let status = response.status();
            let body = Limited::new(response.into_body(), MAX_ANSWER_BYTES).collect().await;
            let body = body.map(|b| b.to_bytes()).map_err(|_| Failure::TooLarge)?;
            classify(status.as_u16(), &body)
        };
        let result = tokio::time::timeout(self.config.timeout, exchange).await.unwrap_or(Err(Failure::Timeout));
        self.metrics.authzen.pdp_request_duration_seconds.observe(started.elapsed().as_secs_f64());
        result
    }
}

impl Failure {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::Connect => "connect",
            Self::Status => "status",
            Self::TooLarge => "too_large",
            Self::BadAnswer => "bad_answer",
            Self::NoIdentity => "no_identity",
            Self::Token => "token",
        }
    }
}

/// The AuthZEN 1.0 evaluation request for `question`; `target` is our own SPIFFE ID.
pub fn request_body(question: &Question<'_>, target: &str) -> Value {
    let mut subject = json!({"type": "spiffe_id", "id": question.caller.as_str()});
    if let (Some(agent), Some(fields)) = (question.agent_id, subject.as_object_mut()) {
        fields.insert("properties".into(), json!({"agent_id": agent}));
    }
    let context = match question.claims {
        Some(claims) => {
            let tags = question.tag_claims.into_iter().flat_map(|t| t.keys().map(String::as_str));
            json!({ "claims": policy::jwt::normalized(claims, tags) })
        }
        None => json!({}),
    };
    json!({
        "subject": subject,
        "action": {"name": question.method},
        "resource": {"type": "http_path", "id": question.path, "properties": {"target": target}},
        "context": context,
    })
}

/// The cache key of the request [`request_body`] builds: a SHA-256 over
/// every field it depends on, each length-prefixed (optional ones and lists
/// marked), so that no two different requests share a key, whatever the
/// caller puts in its claims. `None` (never in practice): do not cache.
pub fn cache_key(question: &Question<'_>, target: &str) -> Option<[u8; 32]> {
    struct Key(aws_lc_rs::digest::Context);
    impl Key {
        fn count(&mut self, n: usize) {
            self.0.update(&(n as u64).to_be_bytes());
        }
        fn field(&mut self, value: Option<&str>) {
            match value {
                None => self.0.update(&[0]),
                Some(value) => {
                    self.0.update(&[1]);
                    self.count(value.len());
                    self.0.update(value.as_bytes());
                }
            }
        }
    }
    let mut key = Key(aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256));
    key.field(Some(question.caller.as_str()));
    key.field(question.agent_id);
    key.field(Some(question.method));
    key.field(Some(question.path));
    key.field(Some(target));
    match question.claims {
        None => key.field(None),
        Some(claims) => {
            key.field(Some("claims"));
            key.field(claims.strings.get("iss").map(String::as_str));
            key.field(claims.client_id.as_deref());
            key.field(claims.oid.as_deref().filter(|_| claims.entra));
            key.count(claims.roles.len());
            for role in claims.roles.iter() {
                key.field(Some(role));
            }
            key.field(match &claims.cnf {
                policy::jwt::CertBinding::X5tS256(x5t) => Some(x5t),
                _ => None,
            });
            key.count(question.tag_claims.map_or(0, std::collections::BTreeMap::len));
            for name in question.tag_claims.into_iter().flat_map(|t| t.keys()) {
                key.field(Some(name));
                key.field(claims.strings.get(name).map(String::as_str));
            }
        }
    }
    <[u8; 32]>::try_from(key.0.finish().as_ref()).ok()
}

/// What an answer means: a 2xx JSON object whose `decision` is a boolean.
/// A redirect is never followed (it is not a 2xx).
pub fn classify(status: u16, body: &[u8]) -> Result<Answer, Failure> {
    if !(200..300).contains(&status) {
        return Err(Failure::Status);
    }
    if body.len() > MAX_ANSWER_BYTES {
        return Err(Failure::TooLarge);
    }
    let value: Value = serde_json::from_slice(body).map_err(|_| Failure::BadAnswer)?;
    let decision = value.get("decision").and_then(Value::as_bool).ok_or(Failure::BadAnswer)?;
    let context =
        value.get("context").filter(|c| c.is_object()).filter(|c| c.to_string().len() <= MAX_AUDIT_CONTEXT).cloned();
    Ok(Answer { decision, context })
}
