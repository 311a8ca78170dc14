//! Open inbound connections and upgraded streams, by caller, so that
//! removing a caller from the allow-list closes what it already has open.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use certs::SpiffeId;
use tokio_util::sync::CancellationToken;

use crate::allowlist::AllowList;

#[derive(Debug, Default)]
pub struct Connections {
    next_id: AtomicU64,
    open: Mutex<HashMap<u64, (SpiffeId, CancellationToken)>>,
}

/// One registered connection or stream; unregisters on drop.
#[derive(Debug)]
pub struct Registration {
    id: u64,
    registry: Arc<Connections>,
    /// Cancelled when the peer may no longer be served.
    pub closed: CancellationToken,
}

impl Connections {
    pub fn register(self: &Arc<Self>, peer: SpiffeId) -> Registration {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let closed = CancellationToken::new();
        self.open.lock().unwrap_or_else(PoisonError::into_inner).insert(id, (peer, closed.clone()));
        Registration { id, registry: self.clone(), closed }
    }

    /// Closes every connection whose peer `allowlist` no longer allows.
    pub fn close_disallowed(&self, allowlist: &AllowList) -> usize {
        let open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let mut closed = 0;
        for (peer, token) in open.values() {
            if !allowlist.allows(peer) && !token.is_cancelled() {
                tracing::info!(caller = %peer, "caller removed from the allow-list: closing its connection");
                token.cancel();
                closed += 1;
            }
        }
        closed
    }

    pub fn len(&self) -> usize {
        self.open.lock().unwrap_or_else(PoisonError::into_inner).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.registry.open.lock().unwrap_or_else(PoisonError::into_inner).remove(&self.id);
    }
}

/// Re-checks open connections after every allow-list change.
pub async fn enforce(connections: Arc<Connections>, allowlist: Arc<AllowList>) {
    let mut changes = allowlist.subscribe();
    while changes.changed().await.is_ok() {
        connections.close_disallowed(&allowlist);
    }
}
