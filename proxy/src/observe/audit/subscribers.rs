//! Live subscribers of the audit trail (`/mgmt/audit/stream`): each has a
//! bounded queue of its own. An event that does not fit is lost for that
//! subscriber and counted at once (`a2a_audit_dropped_total`), whether or
//! not the subscriber ever reads again; the subscriber learns how many with
//! its next event. One whose queue stays full past [`STALL_LIMIT`] is cut.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::Event;
use crate::observe::metrics::Metrics;

/// Events a subscriber may fall behind by before it loses some.
const QUEUE: usize = 1024;
/// A subscriber that takes nothing for this long is disconnected.
pub const STALL_LIMIT: Duration = Duration::from_secs(10);

/// The hub's side of one subscriber.
struct Subscriber {
    id: u64,
    tx: mpsc::Sender<Arc<Event>>,
    shared: Arc<Shared>,
    /// Since when its queue has been full.
    full_since: Option<Instant>,
}

/// What the hub and the subscriber both see.
#[derive(Debug, Default)]
struct Shared {
    lost: AtomicU64,
    /// The hub cut it for staying behind.
    cut: AtomicBool,
}

pub(super) struct Subscribers {
    list: Mutex<Vec<Subscriber>>,
    /// `list.len()`, read without the lock on every event.
    count: AtomicUsize,
    next_id: AtomicU64,
    /// `a2a_audit_subscribers`.
    gauge: prometheus::IntGauge,
}

/// The subscriber's side; leaving the hub when dropped.
pub struct Subscription {
    id: u64,
    hub: Arc<Subscribers>,
    rx: mpsc::Receiver<Arc<Event>>,
    shared: Arc<Shared>,
    /// An event held back while its preceding loss is reported.
    held: Option<Arc<Event>>,
}

/// What a subscription yields next.
#[derive(Debug)]
pub enum Next {
    Event(Arc<Event>),
    /// This many events were lost before the next one.
    Dropped(u64),
    /// Cut for staying behind; this many were lost at the end.
    Cut(u64),
    /// The hub is gone.
    Closed,
}

impl Subscribers {
    pub(super) fn new(gauge: prometheus::IntGauge) -> Arc<Self> {
        Arc::new(Self { list: Mutex::default(), count: AtomicUsize::new(0), next_id: AtomicU64::new(0), gauge })
    }

    pub(super) fn add(self: &Arc<Self>) -> Subscription {
        let (tx, rx) = mpsc::channel(QUEUE);
        let shared = Arc::new(Shared::default());
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.change(|list| list.push(Subscriber { id, tx, shared: shared.clone(), full_since: None }));
        Subscription { id, hub: self.clone(), rx, shared, held: None }
    }

    /// Offers `event` to every subscriber, counting what does not fit.
    pub(super) fn send(&self, event: &Arc<Event>, metrics: &Metrics) {
        if self.count.load(Ordering::Acquire) == 0 {
            return;
        }
        let now = Instant::now();
        self.change(|list| {
            list.retain_mut(|s| match s.tx.try_send(event.clone()) {
                Ok(()) => {
                    s.full_since = None;
                    true
                }
                Err(mpsc::error::TrySendError::Full(_)) => {
                    s.shared.lost.fetch_add(1, Ordering::AcqRel);
                    metrics.audit_dropped.inc();
                    let since = *s.full_since.get_or_insert(now);
                    let stalled = now.duration_since(since) >= STALL_LIMIT;
                    if stalled {
                        tracing::warn!("audit subscriber stayed behind for {STALL_LIMIT:?}: disconnected");
                        s.shared.cut.store(true, Ordering::Release);
                    }
                    !stalled
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            });
        });
    }

    fn change(&self, edit: impl FnOnce(&mut Vec<Subscriber>)) {
        let mut list = self.list.lock().unwrap_or_else(PoisonError::into_inner);
        edit(&mut list);
        self.count.store(list.len(), Ordering::Release);
        self.gauge.set(i64::try_from(list.len()).unwrap_or(i64::MAX));
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let id = self.id;
        self.hub.change(|list| list.retain(|s| s.id != id));
    }
}

impl Subscription {
    /// The next thing to tell the subscriber: a loss is reported before the
    /// event that follows it.
    pub async fn next(&mut self) -> Next {
        if let Some(event) = self.held.take() {
            return Next::Event(event);
        }
        match self.rx.recv().await {
            Some(event) => match self.shared.lost.swap(0, Ordering::AcqRel) {
                0 => Next::Event(event),
                lost => {
                    self.held = Some(event);
                    Next::Dropped(lost)
                }
            },
            None if self.shared.cut.load(Ordering::Acquire) => Next::Cut(self.shared.lost.swap(0, Ordering::AcqRel)),
            None => Next::Closed,
        }
    }

    /// Events lost and not yet reported.
    pub fn take_lost(&self) -> u64 {
        self.shared.lost.swap(0, Ordering::AcqRel)
    }

    /// Events queued for this subscriber and not yet taken (lost if it is cut now).
    pub fn queued(&self) -> u64 {
        u64::try_from(self.rx.len() + usize::from(self.held.is_some())).unwrap_or(u64::MAX)
    }
}
