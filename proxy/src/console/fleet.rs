//! The sidecars the console fronts: one mTLS client each (our SVID; theirs
//! must name exactly the configured ID), a poller that asks every sidecar's
//! `/mgmt/health` with bounded concurrency and a timeout per sidecar (a down
//! or slow one shows as such and never holds the others up), and calls made
//! on a signed-in person's behalf (`X-A2A-Actor`, `X-A2A-Actor-Role`).

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use bytes::Bytes;
use certs::IdentityWatch;
use futures_util::StreamExt;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Method, StatusCode};
use serde::Serialize;
use serde_json::Value;

use super::oidc::Person;
use crate::config::{FleetSettings, SidecarEntry};

/// Largest `/mgmt` answer read (a policy is at most 256 KiB).
const MAX_ANSWER: usize = 1024 * 1024;

struct Member {
    entry: SidecarEntry,
    client: crate::facts::http::SpiffeClient,
}

/// A sidecar as the last poll saw it.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub name: String,
    pub mgmt: String,
    pub spiffe_id: String,
    /// `up` (healthy), `unhealthy` (answers, not healthy), `down` (no answer, an error or the timeout).
    pub state: &'static str,
    pub error: Option<String>,
    pub latency_ms: u64,
    /// Its `/mgmt/health` body.
    pub health: Option<Value>,
    /// Unix seconds.
    pub checked_at: u64,
}

/// An answer from a sidecar.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
}

#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("no sidecar is named `{0}`")]
    Unknown(String),
    #[error("{0} did not answer within {1:?}")]
    Timeout(String, Duration),
    #[error("{0}: {1}")]
    Transport(String, String),
}

pub struct Fleet {
    members: Vec<Arc<Member>>,
    settings: FleetSettings,
    snapshot: ArcSwap<Vec<Status>>,
}

impl Fleet {
    pub fn new(
        entries: &[SidecarEntry],
        identity: IdentityWatch,
        settings: FleetSettings,
    ) -> anyhow::Result<Arc<Self>> {
        let mut members = Vec::new();
        for entry in entries {
            let expected: certs::IdPattern = entry.spiffe_id.to_string().parse()?;
            let client = crate::facts::http::spiffe_client(identity.clone(), expected)?;
            members.push(Arc::new(Member { entry: entry.clone(), client }));
        }
        let snapshot = members
            .iter()
            .map(|m| Status {
                name: m.entry.name.clone(),
                mgmt: m.entry.mgmt.clone(),
                spiffe_id: m.entry.spiffe_id.to_string(),
                state: "down",
                error: Some("not polled yet".into()),
                latency_ms: 0,
                health: None,
                checked_at: 0,
            })
            .collect();
        Ok(Arc::new(Self { members, settings, snapshot: ArcSwap::from_pointee(snapshot) }))
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// The name of the sidecar at `index` (configuration order).
    pub fn name(&self, index: usize) -> &str {
        self.members.get(index).map_or("", |m| m.entry.name.as_str())
    }

    /// A long-lived GET (an event stream) on the sidecar at `index`: the
    /// answer's head within the timeout, then its body as it comes.
    pub async fn stream(
        &self,
        index: usize,
        path: &str,
        last_event_id: Option<u64>,
    ) -> Result<hyper::body::Incoming, FleetError> {
        let member = self.members.get(index).ok_or_else(|| FleetError::Unknown(index.to_string()))?;
        let name = &member.entry.name;
        let transport = |e: String| FleetError::Transport(name.clone(), e);
        let mut request = hyper::Request::get(format!("{}{path}", member.entry.mgmt));
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id.to_string());
        }
        let request = request.body(Full::new(Bytes::new())).map_err(|e| transport(e.to_string()))?;
        let response = tokio::time::timeout(self.settings.timeout, member.client.request(request))
            .await
            .map_err(|_| FleetError::Timeout(name.clone(), self.settings.timeout))?
            .map_err(|e| transport(error_chain(&e)))?;
        if !response.status().is_success() {
            return Err(transport(format!("{path} answered {}", response.status())));
        }
        Ok(response.into_body())
    }

    /// The last poll's view, in configuration order.
    pub fn snapshot(&self) -> Arc<Vec<Status>> {
        self.snapshot.load_full()
    }

    /// Polls every `poll_interval` until the task is dropped.
    pub async fn poll_forever(self: Arc<Self>) {
        loop {
            self.poll_once().await;
            tokio::time::sleep(self.settings.poll_interval).await;
        }
    }

    /// Asks every sidecar's health, `concurrency` at a time.
    pub async fn poll_once(&self) {
        let statuses: Vec<Status> = futures_util::stream::iter(self.members.iter().cloned())
            .map(|member| async move { self.status_of(&member).await })
            .buffered(self.settings.concurrency)
            .collect()
            .await;
        self.snapshot.store(Arc::new(statuses));
    }

    async fn status_of(&self, member: &Member) -> Status {
        let started = Instant::now();
        let answer = self.send(member, Method::GET, "/mgmt/health", None, None).await;
        let (state, error, health) = match answer {
            Ok(answer) => {
                let health: Option<Value> = serde_json::from_slice(&answer.body).ok();
                let healthy = health.as_ref().and_then(|h| h.get("status")).and_then(Value::as_str) == Some("healthy");
                match (answer.status, healthy) {
                    (StatusCode::OK, true) => ("up", None, health),
                    (status, _) if status.is_success() || status == StatusCode::SERVICE_UNAVAILABLE => {
                        ("unhealthy", None, health)
                    }
                    (status, _) => ("down", Some(format!("/mgmt/health answered {status}")), health),
                }
            }
            Err(e) => ("down", Some(e.to_string()), None),
        };
        Status {
            name: member.entry.name.clone(),
            mgmt: member.entry.mgmt.clone(),
            spiffe_id: member.entry.spiffe_id.to_string(),
            state,
            error,
            latency_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            health,
            checked_at: SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
        }
    }

    /// `method path` on the sidecar named `name`, for `person` when given.
    pub async fn call(
        &self,
        name: &str,
        method: Method,
        path: &str,
        body: Option<(Bytes, Vec<(&'static str, String)>)>,
        person: Option<&Person>,
    ) -> Result<Answer, FleetError> {
        let member =
            self.members.iter().find(|m| m.entry.name == name).ok_or_else(|| FleetError::Unknown(name.into()))?;
        self.send(member, method, path, body, person).await
    }

    /// The same call on every sidecar, `concurrency` at a time.
    pub async fn call_all(
        &self,
        method: Method,
        path: &str,
        body: Bytes,
        person: &Person,
    ) -> Vec<(String, Result<Answer, FleetError>)> {
        futures_util::stream::iter(self.members.iter().cloned())
            .map(|member| {
                let (method, body) = (method.clone(), body.clone());
                async move {
                    let answer = self.send(&member, method, path, Some((body, Vec::new())), Some(person)).await;
                    (member.entry.name.clone(), answer)
                }
            })
            .buffered(self.settings.concurrency)
            .collect()
            .await
    }

    async fn send(
        &self,
        member: &Member,
        method: Method,
        path: &str,
        body: Option<(Bytes, Vec<(&'static str, String)>)>,
        person: Option<&Person>,
    ) -> Result<Answer, FleetError> {
        let name = &member.entry.name;
        let transport = |e: String| FleetError::Transport(name.clone(), e);
        let mut request = hyper::Request::builder().method(method).uri(format!("{}{path}", member.entry.mgmt));
        let (body, headers) = body.unwrap_or_default();
        if !body.is_empty() {
            request = request.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        for (header, value) in headers {
            request = request.header(header, value);
        }
        if let Some(person) = person {
            let role = person.role.as_str();
            request = request.header("x-a2a-actor", person.name.as_str()).header("x-a2a-actor-role", role);
        }
        let request = request.body(Full::new(body)).map_err(|e| transport(e.to_string()))?;
        let exchange = async {
            let response = member.client.request(request).await.map_err(|e| transport(error_chain(&e)))?;
            let (parts, body) = response.into_parts();
            let body = Limited::new(body, MAX_ANSWER).collect().await.map_err(|e| transport(e.to_string()))?.to_bytes();
            Ok(Answer { status: parts.status, headers: parts.headers, body })
        };
        tokio::time::timeout(self.settings.timeout, exchange)
            .await
            .map_err(|_| FleetError::Timeout(name.clone(), self.settings.timeout))?
    }
}

/// An error and its causes, on one line (hyper's own says only "client error (Connect)").
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
