//! OTLP/HTTP span export (`telemetry.otlp_endpoint`): each sampled data-plane
//! decision becomes one span, batched (up to [`MAX_BATCH`] spans or
//! [`LINGER`]) and POSTed as OTLP JSON (`application/json`, the OTLP/HTTP
//! encoding every OpenTelemetry Collector accepts) by a background task.
//! The data path only offers a span to a bounded queue: when the queue is
//! full or the collector is down, spans are dropped and counted
//! (`a2a_spans_total{result}`), requests never wait.

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::facts::http::HttpClient;
use crate::observe::audit::{Decision, Direction, Event};
use crate::observe::metrics::Metrics;

/// Spans waiting for export before new ones are dropped.
pub const QUEUE: usize = 8192;
/// Spans per export request.
pub const MAX_BATCH: usize = 512;
/// How long a span waits for others to share its export request.
pub const LINGER: Duration = Duration::from_secs(1);

/// The data path's handle: offers spans to the exporter task.
#[derive(Clone)]
pub struct SpanQueue {
    tx: mpsc::Sender<Arc<Event>>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for SpanQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpanQueue").field("queued", &(QUEUE - self.tx.capacity())).finish()
    }
}

impl SpanQueue {
    /// Starts the exporter task, which POSTs to `endpoint` with `client`.
    pub fn start(endpoint: String, client: HttpClient, metrics: Arc<Metrics>) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        let resource = resource();
        tokio::spawn(export(endpoint, client, rx, resource, metrics.clone()));
        Self { tx, metrics }
    }

    /// A data-plane event with a sampled trace becomes a span; others are ignored.
    pub fn offer(&self, event: &Arc<Event>) {
        if event.trace.is_some_and(|t| t.sampled) && event.direction != Direction::Mgmt {
            if self.tx.try_send(event.clone()).is_err() {
                self.metrics.spans("dropped", 1);
            }
        }
    }
}

/// `service.name` (`OTEL_SERVICE_NAME`, else `a2a-sidecar`) and the version.
fn resource() -> Value {
    let name = std::env::var("OTEL_SERVICE_NAME").ok().filter(|n| !n.is_empty());
    json!({"attributes": [
        string("service.name", name.as_deref().unwrap_or("a2a-sidecar")),
        string("service.version", env!("CARGO_PKG_VERSION")),
    ]})
}

async fn export(
    endpoint: String,
    client: HttpClient,
    mut rx: mpsc::Receiver<Arc<Event>>,
    resource: Value,
    metrics: Arc<Metrics>,
) {
    let mut failing = false;
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + LINGER;
        while batch.len() < MAX_BATCH {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(event)) => batch.push(event),
                Ok(None) | Err(_) => break,
            }
        }
        let n = batch.len() as u64;
        let body = json!({"resourceSpans": [{
            "resource": resource,
            "scopeSpans": [{
                "scope": {"name": "a2a-sidecar", "version": env!("CARGO_PKG_VERSION")},
                "spans": batch.iter().map(|e| span(e)).collect::<Vec<_>>(),
            }],
        }]});
        let Ok(body) = serde_json::to_vec(&body) else { continue };
        match client.post_json(&endpoint, body.into()).await {
            Ok(_) => {
                metrics.spans("exported", n);
                if failing {
                    tracing::info!("span export recovered");
                    failing = false;
                }
            }
            Err(e) => {
                metrics.spans("failed", n);
                if !failing {
                    tracing::warn!(error = %e, "span export to telemetry.otlp_endpoint failed; spans are dropped until it recovers");
                    failing = true;
                }
            }
        }
    }
}

fn string(key: &str, value: &str) -> Value {
    json!({"key": key, "value": {"stringValue": value}})
}

fn int(key: &str, value: u64) -> Value {
    // OTLP JSON: 64-bit integers as decimal strings.
    json!({"key": key, "value": {"intValue": value.to_string()}})
}

fn nanos(t: std::time::SystemTime) -> u128 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
}

/// One event as an OTLP span: SERVER (inbound: the caller's request) or
/// CLIENT (outbound: the call to the peer), from the request head to the
/// response head, with the decision's attributes.
pub fn span(e: &Event) -> Value {
    let Some(trace) = e.trace else { return Value::Null };
    let end = e.timestamp.0;
    let start = end.checked_sub(Duration::from_micros(e.latency_us)).unwrap_or(end);
    let method = e.method.as_ref().map(|m| m.as_str()).unwrap_or("-");
    let (name, kind) = match e.direction {
        Direction::Inbound => (format!("inbound {method}"), 2),
        _ => (format!("outbound {method}"), 3),
    };
    let mut attributes = vec![
        string("http.request.method", method),
        int("http.response.status_code", u64::from(e.status)),
        string("a2a.decision", e.decision.as_str()),
        string("a2a.layer", e.layer.as_str()),
        string("a2a.reason", e.reason.as_str()),
    ];
    if let Some(path) = &e.path {
        attributes.push(string("url.path", path));
    }
    if let Some(caller) = &e.caller_spiffe_id {
        attributes.push(string("a2a.caller.spiffe_id", caller));
    }
    if let Some(target) = &e.target {
        attributes.push(string("a2a.target", target));
    }
    if let Some(id) = &e.request_id {
        attributes.push(string("a2a.request_id", id));
    }
    if let Some(policy) = &e.caller_policy {
        attributes.push(string("a2a.caller.policy", policy));
    }
    // STATUS_CODE_ERROR for a server-side failure; a policy deny is the sidecar working.
    let status = if e.status >= 500 { json!({"code": 2, "message": e.reason.as_str()}) } else { json!({}) };
    let mut span = json!({
        "traceId": trace.trace_id.to_string(),
        "spanId": trace.span_id.to_string(),
        "name": name,
        "kind": kind,
        "startTimeUnixNano": nanos(start).to_string(),
        "endTimeUnixNano": nanos(end).to_string(),
        "attributes": attributes,
        "status": status,
    });
    if let Some(parent) = trace.parent_span_id {
        span["parentSpanId"] = Value::String(parent.to_string());
    }
    if e.decision == Decision::ShadowDeny {
        span["attributes"].as_array_mut().map(|a| a.push(string("a2a.shadow", "true")));
    }
    span
}
