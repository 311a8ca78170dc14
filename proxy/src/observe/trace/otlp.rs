//! OTLP/HTTP span export (`telemetry.otlp_endpoint`): each sampled data-plane
//! decision becomes one [`Span`], batched (up to [`MAX_BATCH`] spans or
//! [`LINGER`]) and POSTed as OTLP JSON (`application/json`, the OTLP/HTTP
//! encoding every OpenTelemetry Collector accepts) by a background task.
//! The data path only offers a span to a bounded queue: when the queue is
//! full or the collector is down, spans are dropped and counted
//! (`a2a_spans_total{result}`), requests never wait. A span is a small owned
//! record with every peer-chosen string cut to [`MAX_ATTRIBUTE`] bytes, so
//! the queue's memory is bounded (about [`QUEUE`] x 2 KiB) whatever peers send.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::facts::http::HttpClient;
use crate::observe::metrics::Metrics;
use crate::observe::trace::TraceIds;

/// Spans waiting for export before new ones are dropped.
pub const QUEUE: usize = 2048;
/// Spans per export request (a few hundred KiB of JSON).
pub const MAX_BATCH: usize = 256;
/// How long a span waits for others to share its export request.
pub const LINGER: Duration = Duration::from_secs(1);
/// Longest string attribute (a path, a Host), in bytes.
pub const MAX_ATTRIBUTE: usize = 512;
/// The longest pause between export attempts while the collector fails.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// One request as a span: SERVER (inbound: the caller's request) or CLIENT
/// (outbound: the call to the peer), from its head to its response head.
#[derive(Debug, Clone)]
pub struct Span {
    pub ids: TraceIds,
    pub server: bool,
    pub start: SystemTime,
    pub end: SystemTime,
    /// `_OTHER` for a method that is not a standard one (as OpenTelemetry asks).
    pub method: &'static str,
    pub status: u16,
    pub decision: &'static str,
    pub layer: &'static str,
    pub reason: &'static str,
    pub shadow: bool,
    /// `(key, value)`, values already cut to [`MAX_ATTRIBUTE`].
    pub strings: Vec<(&'static str, Box<str>)>,
}

impl Span {
    /// A string attribute, cut to [`MAX_ATTRIBUTE`] bytes (at a character boundary).
    pub fn with(mut self, key: &'static str, value: Option<&str>) -> Self {
        if let Some(value) = value {
            let mut end = value.len().min(MAX_ATTRIBUTE);
            while !value.is_char_boundary(end) {
                end -= 1;
            }
            self.strings.push((key, value[..end].into()));
        }
        self
    }

    /// The span's name and `http.request.method`: the method if standard, else `_OTHER`.
    pub fn method_name(method: Option<&hyper::Method>) -> &'static str {
        use hyper::Method;
        let Some(method) = method else { return "_OTHER" };
        [
            Method::GET,
            Method::HEAD,
            Method::POST,
            Method::PUT,
            Method::DELETE,
            Method::CONNECT,
            Method::OPTIONS,
            Method::TRACE,
            Method::PATCH,
        ]
        .iter()
        .find(|m| *m == method)
        .map_or("_OTHER", |m| m.as_str())
    }

    fn to_json(&self) -> Value {
        let mut attributes = vec![
            string("http.request.method", self.method),
            json!({"key": "http.response.status_code", "value": {"intValue": self.status.to_string()}}),
            string("a2a.decision", self.decision),
            string("a2a.layer", self.layer),
            string("a2a.reason", self.reason),
        ];
        attributes.extend(self.strings.iter().map(|(k, v)| string(k, v)));
        if self.shadow {
            attributes.push(string("a2a.shadow", "true"));
        }
        // STATUS_CODE_ERROR for a server-side failure; a policy deny is the sidecar working.
        let status = if self.status >= 500 { json!({"code": 2, "message": self.reason}) } else { json!({}) };
        let mut span = json!({
            "traceId": self.ids.trace_id.to_string(),
            "spanId": self.ids.span_id.to_string(),
            "name": format!("{} {}", if self.server { "inbound" } else { "outbound" }, self.method),
            "kind": if self.server { 2 } else { 3 },
            "startTimeUnixNano": nanos(self.start).to_string(),
            "endTimeUnixNano": nanos(self.end).to_string(),
            "attributes": attributes,
            "status": status,
        });
        if let (Some(parent), Some(fields)) = (self.ids.parent_span_id, span.as_object_mut()) {
            fields.insert("parentSpanId".into(), Value::String(parent.to_string()));
        }
        span
    }
}

/// The data path's handle: offers spans to the exporter task.
#[derive(Clone)]
pub struct SpanQueue {
    tx: mpsc::Sender<Span>,
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
        tokio::spawn(export(endpoint, client, rx, resource(), metrics.clone()));
        Self { tx, metrics }
    }

    /// Queues `span` if it is sampled; drops it (counted) when the queue is full.
    pub fn offer(&self, span: Span) {
        if span.ids.sampled && self.tx.try_send(span).is_err() {
            self.metrics.spans("dropped", 1);
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
    mut rx: mpsc::Receiver<Span>,
    resource: Value,
    metrics: Arc<Metrics>,
) {
    let mut backoff = Duration::ZERO;
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + LINGER;
        while batch.len() < MAX_BATCH {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(span)) => batch.push(span),
                Ok(None) | Err(_) => break,
            }
        }
        let n = batch.len() as u64;
        let body = json!({"resourceSpans": [{
            "resource": resource,
            "scopeSpans": [{
                "scope": {"name": "a2a-sidecar", "version": env!("CARGO_PKG_VERSION")},
                "spans": batch.iter().map(Span::to_json).collect::<Vec<_>>(),
            }],
        }]});
        drop(batch);
        let Ok(body) = serde_json::to_vec(&body) else { continue };
        match client.post_json(&endpoint, body.into()).await {
            Ok(_) => {
                metrics.spans("exported", n);
                if !backoff.is_zero() {
                    tracing::info!("span export recovered");
                    backoff = Duration::ZERO;
                }
            }
            Err(e) => {
                metrics.spans("failed", n);
                if backoff.is_zero() {
                    tracing::warn!(error = %e, "span export to telemetry.otlp_endpoint failed; spans are dropped until it recovers");
                }
                // A failing collector is not hammered: wait 1 s, doubling to 30 s, while
                // new spans queue (and past the queue's size, are dropped and counted).
                backoff = (backoff * 2).clamp(Duration::from_secs(1), MAX_BACKOFF);
                tokio::time::sleep(backoff).await;
            }
        }
    }
}

fn string(key: &str, value: &str) -> Value {
    json!({"key": key, "value": {"stringValue": value}})
}

fn nanos(t: SystemTime) -> u128 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::trace::Tracer;

    fn span() -> Span {
        let now = SystemTime::now();
        Span {
            ids: Tracer::new().hop(&hyper::HeaderMap::new()),
            server: true,
            start: now,
            end: now,
            method: "GET",
            status: 200,
            decision: "allow",
            layer: "none",
            reason: "allowed",
            shadow: false,
            strings: Vec::new(),
        }
    }

    #[test]
    fn peer_chosen_strings_are_cut_at_a_character_boundary() {
        let long = "é".repeat(MAX_ATTRIBUTE); // 2 bytes each
        let span = span().with("url.path", Some(&long)).with("a2a.target", None);
        assert_eq!(span.strings.len(), 1);
        let (_, value) = &span.strings[0];
        assert!(value.len() <= MAX_ATTRIBUTE && value.len() >= MAX_ATTRIBUTE - 1, "{}", value.len());
        assert!(long.starts_with(value.as_ref()));
    }

    #[test]
    fn a_method_outside_the_standard_ones_is_other() {
        let custom = hyper::Method::from_bytes(b"X-ANYTHING-THE-CALLER-LIKES").unwrap();
        assert_eq!(Span::method_name(Some(&custom)), "_OTHER");
        assert_eq!(Span::method_name(Some(&hyper::Method::PATCH)), "PATCH");
        assert_eq!(Span::method_name(None), "_OTHER");
    }

    #[test]
    fn the_json_is_otlp_shaped() {
        let span = span().with("url.path", Some("/x"));
        let json = span.to_json();
        assert_eq!(json["kind"], 2);
        assert_eq!(json["name"], "inbound GET");
        assert_eq!(json["traceId"].as_str().unwrap().len(), 32);
        assert_eq!(json["spanId"].as_str().unwrap().len(), 16);
        assert!(json.get("parentSpanId").is_none());
        assert!(json["startTimeUnixNano"].is_string());
    }
}
