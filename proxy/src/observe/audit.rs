//! The audit trail (DESIGN 1.6): one event per decision, admin mutation,
//! policy reload and (aggregated) refused handshake, with a monotonically
//! increasing `seq`. Sinks: an in-memory ring, JSON lines to a file and/or
//! stdout (each written by its own task), and live subscribers, each with a
//! bounded queue ([`subscribers`]) — a slow sink or subscriber loses events
//! (counted when lost, and a subscriber learns how many); nobody slows the
//! data path.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use serde::Serialize;
use tokio::sync::mpsc;

pub use crate::observe::labels::{Decision, Direction};
use crate::observe::metrics::Metrics;
use crate::observe::trace::TraceIds;
use crate::observe::trace::otlp::{Span, SpanQueue};
use policy::{Layer, Reason};

mod subscribers;

pub use subscribers::{Next, STALL_LIMIT, Subscription};

/// What the audit event says about the token. Never the token itself.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct JwtAudit {
    pub present: bool,
    pub valid: bool,
    /// The configured name of the issuer that signed it (`entra`, ...).
    pub issuer: Option<Arc<str>>,
    /// The agent claim (`azp`/`appid` for Entra, the issuer's `agent_claim`).
    pub azp: Option<Arc<str>>,
    pub roles: Arc<[String]>,
    /// RFC 8705: bound to (and presented with) the caller's certificate.
    pub bound: bool,
    pub error: Option<String>,
}

/// `reason`: a decision's, or what an admin event records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AuditReason {
    Decision(Reason),
    /// A `/mgmt` mutation.
    #[default]
    AdminChange,
    /// A policy reload, accepted or refused.
    PolicyReloaded,
    PolicyRejected,
}

impl AuditReason {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Decision(reason) => reason.as_str(),
            Self::AdminChange => "admin_change",
            Self::PolicyReloaded => "policy_reloaded",
            Self::PolicyRejected => "policy_rejected",
        }
    }
}

impl From<Reason> for AuditReason {
    fn from(reason: Reason) -> Self {
        Self::Decision(reason)
    }
}

impl Serialize for AuditReason {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// One audit event (DESIGN 1.6).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Event {
    pub seq: u64,
    /// RFC 3339, formatted only when the event is written or sent.
    pub timestamp: Timestamp,
    pub direction: Direction,
    pub request_id: Option<String>,
    /// Shared with the connection (inbound) that computed it once.
    pub caller_spiffe_id: Option<Arc<str>>,
    /// Shared with the listener that computed it once (inbound).
    pub target: Option<Arc<str>>,
    /// A standard method is a constant (no copy per request).
    #[serde(serialize_with = "method_name")]
    pub method: Option<hyper::Method>,
    pub path: Option<String>,
    pub decision: Decision,
    pub layer: Layer,
    pub reason: AuditReason,
    pub policy_ids: Arc<[String]>,
    pub status: u16,
    pub latency_us: u64,
    pub jwt: JwtAudit,
    pub risk_level: Option<&'static str>,
    pub caller_tag: Option<String>,
    pub policy_version: Option<Arc<str>>,
    /// The caller's policy entry name (bounded; for per-caller counters).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub caller_policy: Option<Arc<str>>,
    /// Inbound: the `X-Request-Id` the authenticated caller sent (its
    /// sidecar's own id for the call), so both sides' events of one call join.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer_request_id: Option<String>,
    /// Inbound: the external AuthZEN PDP's part when it was asked
    /// (`decision`, `cached`, and `error` / `context` when there are).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pdp: Option<crate::layers::pdp::PdpAudit>,
    /// Data plane: this hop's W3C trace context (`trace_id`, `span_id`,
    /// `parent_span_id` when the client's trace was continued).
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub trace: Option<TraceIds>,
    /// Mgmt mutations: which key (by name, never the key).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    /// A refused handshake: the ID an unverified certificate claims (anyone
    /// can claim any ID, so it is never `caller_spiffe_id`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub claimed_spiffe_id: Option<Arc<str>>,
    /// A refused handshake: the peer's address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer_addr: Option<std::net::IpAddr>,
    /// A refused handshake: similar refusals folded into this event since
    /// the previous one (same source and reason, or over the global budget).
    #[serde(skip_serializing_if = "is_zero")]
    pub suppressed: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

fn method_name<S: serde::Serializer>(method: &Option<hyper::Method>, serializer: S) -> Result<S::Ok, S::Error> {
    match method {
        Some(method) => serializer.serialize_str(method.as_str()),
        None => serializer.serialize_none(),
    }
}

/// When an event was recorded; serialized as RFC 3339 UTC with milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timestamp(pub SystemTime);

impl Default for Timestamp {
    fn default() -> Self {
        Self(SystemTime::UNIX_EPOCH)
    }
}

impl Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&rfc3339(self.0))
    }
}

/// Decision counters for `GET /mgmt/metrics`.
#[derive(Debug, Default)]
struct Counters {
    total: u64,
    allowed: u64,
    denied: u64,
    per_caller: std::collections::BTreeMap<String, [u64; 3]>,
}

pub struct AuditHub {
    seq: AtomicU64,
    counters: Mutex<Counters>,
    ring: Mutex<VecDeque<Arc<Event>>>,
    capacity: usize,
    live: Arc<subscribers::Subscribers>,
    /// The JSON-lines writers (file, stdout).
    sinks: Vec<mpsc::Sender<Arc<Event>>>,
    /// OTLP span export (`telemetry.otlp_endpoint`): sampled data-plane events.
    spans: Option<SpanQueue>,
    metrics: Arc<Metrics>,
}

/// Where a JSON-lines sink writes: an opened file or the process's stdout.
pub type SinkWriter = Box<dyn tokio::io::AsyncWrite + Send + Unpin>;

/// Events a JSON-lines sink may fall behind by before it loses some.
const SINK_QUEUE: usize = 4096;

impl AuditHub {
    /// `sinks`: each gets every event as a JSON line, from a background task
    /// of its own (started here); `spans`: each sampled data-plane event as a span.
    pub fn new(
        capacity: usize,
        sinks: Vec<(String, SinkWriter)>,
        spans: Option<SpanQueue>,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        let sinks = sinks
            .into_iter()
            .map(|(name, writer)| {
                let (tx, rx) = mpsc::channel(SINK_QUEUE);
                tokio::spawn(write_lines(name, writer, rx, metrics.clone()));
                tx
            })
            .collect();
        Arc::new(Self {
            seq: AtomicU64::new(0),
            counters: Mutex::default(),
            ring: Mutex::new(VecDeque::new()),
            capacity: capacity.max(1),
            live: subscribers::Subscribers::new(metrics.audit_subscribers.clone()),
            sinks,
            spans,
            metrics,
        })
    }

    /// Stamps `event` with the next `seq` and the time, and delivers it.
    pub fn record(&self, mut event: Event) -> u64 {
        let seq = self.seq.fetch_add(1, Ordering::SeqCst) + 1;
        event.seq = seq;
        event.timestamp = Timestamp(SystemTime::now());
        if event.direction != Direction::Mgmt {
            let mut c = self.counters.lock().unwrap_or_else(PoisonError::into_inner);
            let allowed = event.decision != Decision::Deny;
            c.total += 1;
            if allowed {
                c.allowed += 1
            } else {
                c.denied += 1
            }
            let caller = event.caller_policy.as_deref().unwrap_or("unknown");
            let counts = [1, u64::from(allowed), u64::from(!allowed)];
            // One look-up for a known caller; the name is only copied the first time.
            match c.per_caller.get_mut(caller) {
                Some(known) => known.iter_mut().zip(counts).for_each(|(n, add)| *n += add),
                None => _ = c.per_caller.insert(caller.to_owned(), counts),
            }
        }
        let event = Arc::new(event);
        {
            let mut ring = self.ring.lock().unwrap_or_else(PoisonError::into_inner);
            if ring.len() == self.capacity {
                ring.pop_front();
            }
            ring.push_back(event.clone());
        }
        self.live.send(&event, &self.metrics);
        // The span is built only when there is an exporter to take it.
        if let Some(spans) = &self.spans
            && let Some(span) = span_of(&event)
        {
            spans.offer(span);
        }
        for sink in &self.sinks {
            if sink.try_send(event.clone()).is_err() {
                self.metrics.audit_dropped.inc();
            }
        }
        seq
    }

    /// Newest first, filtered.
    pub fn recent(&self, limit: usize, caller: Option<&str>, decision: Option<Decision>) -> Vec<Arc<Event>> {
        let ring = self.ring.lock().unwrap_or_else(PoisonError::into_inner);
        ring.iter()
            .rev()
            .filter(|e| caller.is_none_or(|c| e.caller_spiffe_id.as_deref() == Some(c)))
            .filter(|e| decision.is_none_or(|d| e.decision == d))
            .take(limit)
            .cloned()
            .collect()
    }

    /// The `seq` of the last event recorded (0 before the first).
    pub fn last_seq(&self) -> u64 {
        self.seq.load(Ordering::SeqCst)
    }

    /// Events after `seq` still in the ring (for `Last-Event-ID`), oldest first.
    pub fn since(&self, seq: u64) -> Vec<Arc<Event>> {
        let ring = self.ring.lock().unwrap_or_else(PoisonError::into_inner);
        ring.iter().filter(|e| e.seq > seq).cloned().collect()
    }

    /// `{total_requests, total_allowed, total_denied, per_caller}` (by policy entry name).
    pub fn counters(&self) -> serde_json::Value {
        let c = self.counters.lock().unwrap_or_else(PoisonError::into_inner);
        let per_caller: serde_json::Map<String, serde_json::Value> = c
            .per_caller
            .iter()
            .map(|(k, [t, a, d])| (k.clone(), serde_json::json!({"total": t, "allowed": a, "denied": d})))
            .collect();
        serde_json::json!({"total_requests": c.total, "total_allowed": c.allowed, "total_denied": c.denied, "per_caller": per_caller})
    }

    /// A live subscription to every event recorded from now on.
    pub fn subscribe(&self) -> Subscription {
        self.live.add()
    }
}

/// A data-plane event with a trace as an OTLP span (see [`Span`]).
fn span_of(event: &Event) -> Option<Span> {
    let ids = event.trace.filter(|t| t.sampled)?;
    let end = event.timestamp.0;
    let span = Span {
        ids,
        server: match event.direction {
            Direction::Inbound => true,
            Direction::Outbound => false,
            Direction::Mgmt => return None,
        },
        start: end.checked_sub(std::time::Duration::from_micros(event.latency_us)).unwrap_or(end),
        end,
        method: Span::method_name(event.method.as_ref()),
        status: event.status,
        decision: event.decision.as_str(),
        layer: event.layer.as_str(),
        reason: event.reason.as_str(),
        shadow: event.decision == Decision::ShadowDeny,
        strings: Vec::with_capacity(5),
    };
    Some(
        span.with("url.path", event.path.as_deref())
            .with("a2a.caller.spiffe_id", event.caller_spiffe_id.as_deref())
            .with("a2a.target", event.target.as_deref())
            .with("a2a.request_id", event.request_id.as_deref())
            .with("a2a.caller.policy", event.caller_policy.as_deref()),
    )
}

/// Writes each event as one JSON line, flushing whenever it has caught up.
/// A failing sink (a full disk, a closed stdout) is logged when it starts
/// and when it recovers, not once per event; its lost events are counted.
async fn write_lines(name: String, mut writer: SinkWriter, mut rx: mpsc::Receiver<Arc<Event>>, metrics: Arc<Metrics>) {
    use tokio::io::AsyncWriteExt;
    let mut failing = false;
    while let Some(event) = rx.recv().await {
        let Ok(mut line) = serde_json::to_vec(event.as_ref()) else { continue };
        line.push(b'\n');
        let mut written = writer.write_all(&line).await;
        if written.is_ok() && rx.is_empty() {
            written = writer.flush().await;
        }
        match written {
            Err(e) => {
                metrics.audit_dropped.inc();
                if !failing {
                    tracing::error!(sink = %name, error = %e, "audit write failed; events are lost until it recovers");
                }
                failing = true;
            }
            Ok(()) if failing => {
                tracing::info!(sink = %name, "audit writes recovered");
                failing = false;
            }
            Ok(()) => {}
        }
    }
}

/// RFC 3339 UTC with milliseconds (`2026-11-26T08:00:00.123Z`).
pub fn rfc3339(t: SystemTime) -> String {
    const FORMAT: &[time::format_description::BorrowedFormatItem<'_>] =
        time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");
    // Saturating at both ends: before 1970 reads as the epoch, after 9999 as its last instant
    // (an expiry comes from a certificate, so it must not be able to panic the formatter).
    let since_epoch = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    time::Duration::try_from(since_epoch)
        .ok()
        .and_then(|d| time::OffsetDateTime::UNIX_EPOCH.checked_add(d))
        .and_then(|at| at.format(FORMAT).ok())
        .unwrap_or_else(|| String::from("9999-12-31T23:59:59.999Z"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sink whose every write fails (a closed stdout, a full disk).
    struct Broken;

    impl tokio::io::AsyncWrite for Broken {
        fn poll_write(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            _: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            std::task::Poll::Ready(Err(std::io::Error::other("closed")))
        }

        fn poll_flush(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }

        fn poll_shutdown(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn a_failing_sink_loses_events_countably_and_the_rest_goes_on() {
        let metrics = Arc::new(Metrics::new().unwrap());
        let hub = AuditHub::new(10, vec![("broken".into(), Box::new(Broken))], None, metrics.clone());
        for _ in 0..3 {
            hub.record(Event { direction: Direction::Inbound, ..Event::default() });
        }
        let lost = || async { (metrics.audit_dropped.get() >= 3).then_some(()) };
        certs::dev::eventually(std::time::Duration::from_secs(10), "three lost events counted", lost).await;
        assert_eq!(metrics.audit_dropped.get(), 3);
        assert_eq!(hub.recent(10, None, None).len(), 3, "the ring still has every event");
    }

    #[test]
    fn counters_add_up_per_caller_policy() {
        let metrics = Arc::new(Metrics::new().unwrap());
        let hub = AuditHub::new(10, Vec::new(), None, metrics);
        let event = |caller: Option<&str>, decision| Event {
            direction: Direction::Inbound,
            caller_policy: caller.map(Arc::from),
            decision,
            ..Event::default()
        };
        for (caller, decision) in [
            (Some("a"), Decision::Allow),
            (Some("a"), Decision::Deny),
            (Some("a"), Decision::ShadowDeny),
            (Some("b"), Decision::Deny),
            (None, Decision::Deny),
        ] {
            hub.record(event(caller, decision));
        }
        hub.record(Event { direction: Direction::Mgmt, ..event(Some("a"), Decision::Deny) });
        assert_eq!(
            hub.counters(),
            serde_json::json!({"total_requests": 5, "total_allowed": 2, "total_denied": 3, "per_caller": {
                "a": {"total": 3, "allowed": 2, "denied": 1},
                "b": {"total": 1, "allowed": 0, "denied": 1},
                "unknown": {"total": 1, "allowed": 0, "denied": 1},
            }}),
            "a shadow deny went through: allowed; mgmt events are not requests"
        );
    }

    #[test]
    fn rfc3339_dates() {
        use std::time::Duration;
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_680_000_123);
        assert_eq!(rfc3339(t), "2026-11-26T08:00:00.123Z");
        let leap = SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00.000Z");
        let far = SystemTime::UNIX_EPOCH + Duration::from_secs(400_000_000_000);
        assert_eq!(rfc3339(far), "9999-12-31T23:59:59.999Z");
    }
}
