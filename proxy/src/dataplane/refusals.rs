//! Refused handshakes in the audit trail, without letting a flood of them
//! evict the trail or forge it.
//!
//! A refused handshake never proves who the peer is: anyone can mint a
//! certificate naming any ID, and even a chain that verifies is judged
//! before the peer proves it holds the key (rustls checks the certificate
//! when it arrives, before CertificateVerify), so a replayed public SVID of
//! a real agent gets as far as `not_allowed`. The ID is therefore only ever
//! `claimed_spiffe_id`, never `caller_spiffe_id`. Refusals are aggregated
//! by source (`server::source_of`: an address, an IPv6 /64, all of loopback) and reason (one event per
//! window, the rest counted in the next one as `suppressed`), all of them
//! share a global budget of events per second, and each is logged at debug
//! level only: `a2a_tls_handshakes_total` counts every one.

use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use certs::SpiffeId;

use crate::dataplane::server::TokenBucket;
use crate::observe::audit::{AuditHub, Decision, Direction, Event};
use policy::Reason;

/// At most one event per source address and reason in this window.
const WINDOW: Duration = Duration::from_secs(10);
/// Refusal events per second across all sources, with this burst.
const RATE: f64 = 5.0;
const BURST: f64 = 20.0;
/// Sources tracked at once; a quiet one is forgotten after a minute.
const MAX_SOURCES: u64 = 4096;
const FORGET_AFTER: Duration = Duration::from_secs(60);

/// One source's refusals of one reason.
#[derive(Debug, Default)]
struct Window {
    emitted_at: Option<Instant>,
    /// Refusals since the last event.
    folded: u64,
}

pub struct Refusals {
    by_source: moka::sync::Cache<(IpAddr, Reason), Arc<Mutex<Window>>>,
    budget: TokenBucket,
    audit: Arc<AuditHub>,
}

/// One refused handshake.
#[derive(Debug, Clone, Copy)]
pub struct Refusal<'a> {
    pub source: IpAddr,
    pub reason: Reason,
    /// The ID the peer's certificate names, if it parsed (unproven).
    pub peer: Option<&'a SpiffeId>,
}

impl Refusals {
    pub fn new(audit: Arc<AuditHub>) -> Self {
        Self {
            by_source: moka::sync::Cache::builder().max_capacity(MAX_SOURCES).time_to_idle(FORGET_AFTER).build(),
            budget: TokenBucket::new(RATE, BURST),
            audit,
        }
    }

    /// Records `refusal`: an audit event if its source's window and the
    /// global budget allow, else it is counted into the next one.
    pub fn record(&self, refusal: Refusal<'_>) {
        let source = crate::dataplane::server::source_of(refusal.source);
        let window = self.by_source.get_with((source, refusal.reason), Arc::default);
        let suppressed = {
            let mut w = window.lock().unwrap_or_else(PoisonError::into_inner);
            if w.emitted_at.is_some_and(|at| at.elapsed() < WINDOW) || !self.budget.take() {
                w.folded += 1;
                return;
            }
            w.emitted_at = Some(Instant::now());
            std::mem::take(&mut w.folded)
        };
        tracing::info!(source = %refusal.source, reason = %refusal.reason, suppressed, "inbound handshake refused");
        self.audit.record(Event {
            direction: Direction::Inbound,
            claimed_spiffe_id: refusal.peer.map(|id| Arc::<str>::from(id.as_str())),
            peer_addr: Some(refusal.source),
            decision: Decision::Deny,
            layer: refusal.reason.layer(),
            reason: refusal.reason.into(),
            suppressed,
            ..Event::default()
        });
    }
}
