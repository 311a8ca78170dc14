//! "Something a decision depends on changed": the policy or its mode, the
//! `jwt` settings, an operator's risk or tag push, the risk and tag
//! settings, a risk level Graph reports. Open streams are judged again on
//! each (see `Inbound::enforce`); the allow-list has a signal of its own.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::watch;

#[derive(Debug, Clone)]
pub struct Changes(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    tx: watch::Sender<u64>,
    /// The same generation, read on every request without a lock.
    generation: AtomicU64,
}

impl Default for Changes {
    fn default() -> Self {
        Self(Arc::new(Inner { tx: watch::Sender::new(0), generation: AtomicU64::new(0) }))
    }
}

impl Changes {
    pub fn bump(&self) {
        let next = self.0.generation.fetch_add(1, Ordering::AcqRel).wrapping_add(1);
        self.0.tx.send_replace(next);
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.0.tx.subscribe()
    }

    /// How many changes there have been.
    pub fn generation(&self) -> u64 {
        self.0.generation.load(Ordering::Acquire)
    }
}
