//! Open inbound connections and long-lived streams, with what is needed to
//! judge them again: the caller's certificate chain for Layer 1 (allow-list,
//! bundles, expiry) and, for a stream, its request for layers 2-4. Whatever
//! is judged no longer allowed is cancelled: a connection is dropped, a
//! stream reset.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use certs::SpiffeId;
use hyper::Method;
use hyper::header::HeaderValue;
use policy::CanonicalPath;
use rustls::pki_types::CertificateDer;
use tokio_util::sync::CancellationToken;

/// A verified caller: one per connection, shared with its streams.
#[derive(Debug)]
pub struct Peer {
    pub id: SpiffeId,
    pub not_after: SystemTime,
    /// Leaf first, as presented at the handshake.
    pub chain: Vec<CertificateDer<'static>>,
}

/// What layers 2-4 need to judge a stream's request again.
#[derive(Debug, Clone)]
pub struct StreamRequest {
    /// The request's ID, for the audit event of a cut.
    pub request_id: String,
    pub method: Method,
    pub path: CanonicalPath,
    pub authorization: Option<HeaderValue>,
}

/// One registered connection or stream.
#[derive(Debug, Clone)]
pub struct Open {
    pub peer: Arc<Peer>,
    /// `None` for a connection (its requests are judged as they come).
    pub request: Option<Arc<StreamRequest>>,
    pub closed: CancellationToken,
}

#[derive(Debug, Default)]
pub struct Connections {
    next_id: AtomicU64,
    open: Mutex<HashMap<u64, Open>>,
}

/// A registration; unregisters on drop.
#[derive(Debug)]
pub struct Registration {
    id: u64,
    registry: Arc<Connections>,
    /// Cancelled when the peer (or this stream) may no longer be served.
    pub closed: CancellationToken,
}

impl Connections {
    /// Registers a connection of `peer`.
    pub fn connection(self: &Arc<Self>, peer: Arc<Peer>) -> Registration {
        self.register(peer, None)
    }

    /// Registers a long-lived stream (an upgraded tunnel, a streaming
    /// response). Whoever serves it also ends it at its deadline (the
    /// caller's certificate or token expiry).
    pub fn stream(self: &Arc<Self>, peer: Arc<Peer>, request: Arc<StreamRequest>) -> Registration {
        self.register(peer, Some(request))
    }

    fn register(self: &Arc<Self>, peer: Arc<Peer>, request: Option<Arc<StreamRequest>>) -> Registration {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let closed = CancellationToken::new();
        let open = Open { peer, request, closed: closed.clone() };
        self.open.lock().unwrap_or_else(PoisonError::into_inner).insert(id, open);
        Registration { id, registry: self.clone(), closed }
    }

    /// Everything open now, to judge again.
    pub fn snapshot(&self) -> Vec<Open> {
        self.open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .filter(|o| !o.closed.is_cancelled())
            .cloned()
            .collect()
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
        // Nothing is served under it any more: release whatever waits on it.
        self.closed.cancel();
    }
}
