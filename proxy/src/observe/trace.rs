//! W3C Trace Context (<https://www.w3.org/TR/trace-context/>): each request
//! through a proxy listener is one span. A valid `traceparent` from the
//! client (outbound: the local app; inbound: the authenticated peer sidecar)
//! is continued, with a fresh span ID for this hop, and the upstream gets
//! `traceparent: 00-<trace id>-<our span id>-<flags>`; without one (or with
//! one that does not parse, or with two) a new trace starts. The IDs go into
//! the audit event (`trace_id`, `span_id`, `parent_span_id`) and the request's
//! log lines, and, when `telemetry.otlp_endpoint` is set, the sampled spans
//! are exported ([`otlp`]). Trace data is for operators, not a security
//! record: a client chooses its trace and whether it is sampled; the audit
//! trail records every request either way.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use hyper::HeaderMap;
use hyper::header::{HeaderName, HeaderValue};
use serde::Serialize;

pub mod otlp;

pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// A 16-byte trace ID, never all zeros.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceId(pub [u8; 16]);

/// An 8-byte span ID, never all zeros.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SpanId(pub [u8; 8]);

/// This hop's place in a trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct TraceIds {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    /// The client's span, when the trace was continued.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent_span_id: Option<SpanId>,
    /// The `sampled` flag (ours when a trace starts here: set).
    #[serde(skip)]
    pub sampled: bool,
}

impl TraceIds {
    /// The `traceparent` this hop sends upstream: the same trace, our span as the parent.
    pub fn traceparent(&self) -> HeaderValue {
        // Every request sends one: written in place, without the formatting machinery.
        let mut text = *b"00-00000000000000000000000000000000-0000000000000000-00";
        if let Some(trace_id) = text.get_mut(3..35) {
            hex_into(trace_id, &self.trace_id.0);
        }
        if let Some(span_id) = text.get_mut(36..52) {
            hex_into(span_id, &self.span_id.0);
        }
        if self.sampled
            && let Some(flag) = text.last_mut()
        {
            *flag = b'1';
        }
        // Hex digits and dashes only: always a valid header value.
        HeaderValue::from_bytes(&text).unwrap_or_else(|_| HeaderValue::from_static(""))
    }

    /// Sets `traceparent` on the upstream request; a `tracestate` stays only
    /// when the client's trace was continued (the spec drops it with the trace).
    pub fn stamp(&self, headers: &mut HeaderMap) {
        if self.parent_span_id.is_none() {
            headers.remove(&TRACESTATE);
        }
        headers.insert(TRACEPARENT.clone(), self.traceparent());
    }
}

/// Writes `bytes` into `out` as lowercase hex, two digits per byte (as far
/// as `out` reaches): for the IDs every request carries, a plain loop
/// instead of the formatting machinery.
pub(crate) fn hex_into(out: &mut [u8], bytes: &[u8]) {
    fn digit(n: u8) -> u8 {
        if n < 10 { b'0' + n } else { b'a' - 10 + n }
    }
    for (pair, byte) in out.chunks_exact_mut(2).zip(bytes) {
        if let [high, low] = pair {
            *high = digit(byte >> 4);
            *low = digit(byte & 0xf);
        }
    }
}

/// Mints span IDs (and trace IDs for new traces): a keyed PRF (SipHash-1-3
/// with a random 128-bit key, std's `RandomState`) of a counter, so IDs are
/// unique in practice and cannot be predicted from the ones a peer has seen,
/// without a random draw per request.
#[derive(Debug)]
pub struct Tracer {
    key: std::collections::hash_map::RandomState,
    counter: AtomicU64,
}

impl Default for Tracer {
    fn default() -> Self {
        Self::new()
    }
}

impl Tracer {
    pub fn new() -> Self {
        Self { key: std::collections::hash_map::RandomState::new(), counter: AtomicU64::new(0) }
    }

    /// 64 pseudo-random bits, never zero.
    fn next(&self) -> u64 {
        use std::hash::BuildHasher;
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        self.key.hash_one(n).max(1)
    }

    fn span_id(&self) -> SpanId {
        SpanId(self.next().to_be_bytes())
    }

    /// This hop's IDs: the client's trace continued, or a new one.
    pub fn hop(&self, headers: &HeaderMap) -> TraceIds {
        let span_id = self.span_id();
        match parse_traceparent(headers) {
            Some((trace_id, parent, sampled)) => TraceIds { trace_id, span_id, parent_span_id: Some(parent), sampled },
            None => {
                let mut id = [0u8; 16];
                id[..8].copy_from_slice(&self.next().to_be_bytes());
                id[8..].copy_from_slice(&self.next().to_be_bytes());
                TraceIds { trace_id: TraceId(id), span_id, parent_span_id: None, sampled: true }
            }
        }
    }
}

/// The client's `traceparent`: exactly one header; version `00` exactly as
/// specified, or a later version (not `ff`) whose first four fields parse
/// (anything after them must follow a `-`); lowercase hex; IDs not all
/// zeros. Anything else starts a new trace.
fn parse_traceparent(headers: &HeaderMap) -> Option<(TraceId, SpanId, bool)> {
    let mut values = headers.get_all(&TRACEPARENT).iter();
    let (Some(value), None) = (values.next(), values.next()) else { return None };
    let mut fields = value.to_str().ok()?.splitn(5, '-');
    let [version] = hex::<1>(fields.next()?)?;
    let trace = hex::<16>(fields.next()?)?;
    let parent = hex::<8>(fields.next()?)?;
    let [flags] = hex::<1>(fields.next()?)?;
    let more = fields.next().is_some();
    if version == 0xff || (version == 0 && more) || trace == [0; 16] || parent == [0; 8] {
        return None;
    }
    Some((TraceId(trace), SpanId(parent), flags & 1 == 1))
}

/// `N` bytes from exactly `2N` lowercase hex digits.
fn hex<const N: usize>(text: &str) -> Option<[u8; N]> {
    if text.len() != 2 * N {
        return None;
    }
    let mut digits = text.bytes().map(|d| match d {
        b'0'..=b'9' => Some(d - b'0'),
        b'a'..=b'f' => Some(d - b'a' + 10),
        _ => None,
    });
    let mut out = [0u8; N];
    for byte in &mut out {
        *byte = digits.next()?? << 4 | digits.next()??;
    }
    Some(out)
}

fn write_hex(f: &mut fmt::Formatter<'_>, bytes: &[u8]) -> fmt::Result {
    bytes.iter().try_for_each(|b| write!(f, "{b:02x}"))
}

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}

impl fmt::Display for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}

impl fmt::Debug for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Debug for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Serialize for TraceId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl Serialize for SpanId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(TRACEPARENT.clone(), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_traceparent_is_continued_with_a_new_span() {
        let tracer = Tracer::new();
        let ids = tracer.hop(&headers(&[PARENT]));
        assert_eq!(ids.trace_id.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(ids.parent_span_id.map(|s| s.to_string()).as_deref(), Some("00f067aa0ba902b7"));
        assert_ne!(ids.span_id.to_string(), "00f067aa0ba902b7");
        assert!(ids.sampled);
        let sent = ids.traceparent();
        assert_eq!(sent.to_str().unwrap(), format!("00-4bf92f3577b34da6a3ce929d0e0e4736-{}-01", ids.span_id));
        // The next hop parses what we send.
        let next = tracer.hop(&headers(&[sent.to_str().unwrap()]));
        assert_eq!((next.trace_id, next.parent_span_id), (ids.trace_id, Some(ids.span_id)));
        // Not sampled stays not sampled.
        let unsampled = tracer.hop(&headers(&["00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"]));
        assert!(!unsampled.sampled && unsampled.traceparent().to_str().unwrap().ends_with("-00"));
    }

    #[test]
    fn anything_else_starts_a_new_trace() {
        let tracer = Tracer::new();
        for bad in [
            "",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", // upper case
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01", // zero trace
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", // zero parent
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", // forbidden version
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra", // v00 with more
            "00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01", // dashes moved
            "00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01",
            "0g-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
        ] {
            let ids = tracer.hop(&headers(&[bad]));
            assert!(ids.parent_span_id.is_none(), "{bad:?} was continued");
            assert_ne!(ids.trace_id.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736", "{bad:?}");
            assert!(ids.sampled);
        }
        // Two headers: which one is the client's? Neither.
        assert!(tracer.hop(&headers(&[PARENT, PARENT])).parent_span_id.is_none());
        // A later version with extra fields is read by its first four.
        let later = tracer.hop(&headers(&["01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-ever"]));
        assert_eq!(later.trace_id.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
    }

    #[test]
    fn ids_are_distinct_and_never_zero() {
        let tracer = Tracer::new();
        let ids: std::collections::HashSet<_> =
            (0..10_000).map(|_| tracer.hop(&HeaderMap::new())).map(|i| (i.trace_id, i.span_id)).collect();
        assert_eq!(ids.len(), 10_000);
        // The header written in place says what the IDs' own text says.
        for (trace, span) in ids.iter().take(100) {
            let hop = TraceIds { trace_id: *trace, span_id: *span, parent_span_id: None, sampled: true };
            assert_eq!(hop.traceparent().to_str().unwrap(), format!("00-{trace}-{span}-01"));
        }
        assert!(ids.iter().all(|(t, s)| t.0 != [0; 16] && s.0 != [0; 8]));
        let traces: std::collections::HashSet<_> = ids.iter().map(|(t, _)| *t).collect();
        assert_eq!(traces.len(), 10_000);
    }

    #[test]
    fn a_new_trace_drops_the_clients_tracestate_a_continued_one_keeps_it() {
        let tracer = Tracer::new();
        let mut h = headers(&["garbage"]);
        h.insert(TRACESTATE.clone(), HeaderValue::from_static("vendor=x"));
        tracer.hop(&h).stamp(&mut h);
        assert!(!h.contains_key(&TRACESTATE));
        let mut h = headers(&[PARENT]);
        h.insert(TRACESTATE.clone(), HeaderValue::from_static("vendor=x"));
        tracer.hop(&h).stamp(&mut h);
        assert!(h.contains_key(&TRACESTATE));
    }
}
